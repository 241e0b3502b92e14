//! What a request on a command subject (`{prefix}.cmd.{type}.{shard}`)
//! asks for, read from its subject and headers: pure, no IO, so hostile
//! headers are tested (and fuzzed) without a server. The edge then checks
//! the entity's shard and runs it.

use async_nats::{HeaderMap, HeaderName};
use tessera_entities::Format;

use crate::contract;
use crate::error::InvokeError;
use crate::wire;

/// A parsed command request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandRequest {
    pub(crate) entity_type: String,
    pub(crate) shard: u32,
    pub(crate) entity_id: String,
    /// `None`: a state read (`Tessera-Read: state`).
    pub(crate) command: Option<String>,
    pub(crate) format: Format,
    pub(crate) idempotency_key: Option<String>,
}

/// A header's value, if present.
pub(crate) fn header<'a>(h: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    h.and_then(|h| h.get(name)).map(|v| v.as_str())
}

/// A header's value by a name from [`names`], if present.
pub(crate) fn named<'a>(h: Option<&'a HeaderMap>, name: &HeaderName) -> Option<&'a str> {
    h.and_then(|h| h.get(name.clone())).map(|v| v.as_str())
}

/// The header names the ingress reads and its replies carry, made once: a
/// name given as `&str` is validated and copied into a new allocation on
/// every lookup and every insert (none of ours is one of NATS's standard
/// names). Cloning one of these copies no bytes.
pub(crate) mod names {
    use async_nats::HeaderName;

    use crate::wire;

    pub(crate) static ENTITY: HeaderName = HeaderName::from_static(wire::ENTITY);
    pub(crate) static COMMAND: HeaderName = HeaderName::from_static(wire::COMMAND);
    pub(crate) static READ: HeaderName = HeaderName::from_static(wire::READ);
    pub(crate) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static(wire::IDEMPOTENCY_KEY);
    pub(crate) static CONTENT_TYPE: HeaderName = HeaderName::from_static(wire::CONTENT_TYPE);
    pub(crate) static ACCEPT: HeaderName = HeaderName::from_static(wire::ACCEPT);
    pub(crate) static STATUS: HeaderName = HeaderName::from_static(wire::STATUS);
    pub(crate) static SEQ: HeaderName = HeaderName::from_static(wire::SEQ);
    pub(crate) static INVOCATION_ID: HeaderName = HeaderName::from_static(wire::INVOCATION_ID);
    pub(crate) static DEDUPLICATED: HeaderName = HeaderName::from_static(wire::DEDUPLICATED);
}

/// The span for handling one NATS message with headers `h` (a `nats` span
/// with `op = name`), parented to the message's `traceparent` (with traces on; otherwise
/// `Span::none()`, which costs nothing). The handler is instrumented with
/// it directly, so that the message's headers need not be kept (or cloned)
/// beside the handler's future.
pub(crate) fn span(name: &'static str, h: Option<&HeaderMap>) -> tracing::Span {
    if !crate::telemetry::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("nats", op = name);
    let (parent, state) = (header(h, crate::telemetry::TRACEPARENT), header(h, crate::telemetry::TRACESTATE));
    crate::telemetry::set_remote_parent(&span, parent, state);
    span
}

/// Reads a command request; the error is what to answer.
pub(crate) fn parse_command(
    prefix: &str,
    subject: &str,
    h: Option<&HeaderMap>,
    payload_len: usize,
    max_body: usize,
) -> Result<CommandRequest, InvokeError> {
    let format = contract::content_format(named(h, &names::CONTENT_TYPE))?;
    let (entity_type, shard) = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(".cmd."))
        .and_then(|r| r.rsplit_once('.'))
        .and_then(|(t, s)| Some((t.to_owned(), s.parse::<u32>().ok()?)))
        .ok_or_else(|| InvokeError::Malformed(format!("subject {subject} is not {prefix}.cmd.TYPE.SHARD")))?;
    let entity_id =
        named(h, &names::ENTITY).ok_or_else(|| InvokeError::Malformed(format!("missing header {}", wire::ENTITY)))?;
    contract::entity_id(entity_id)?;
    let command = match named(h, &names::READ) {
        None => Some(
            named(h, &names::COMMAND)
                .ok_or_else(|| InvokeError::Malformed(format!("missing header {}", wire::COMMAND)))?
                .to_owned(),
        ),
        Some("state") => None,
        Some(other) => {
            return Err(InvokeError::Malformed(format!("{} must be `state`, not `{other}`", wire::READ)));
        }
    };
    if command.is_some() {
        contract::body_size(payload_len, max_body)?;
    }
    let idempotency_key = contract::idempotency_key(named(h, &names::IDEMPOTENCY_KEY))?;
    Ok(CommandRequest { entity_type, shard, entity_id: entity_id.to_owned(), command, format, idempotency_key })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    #[test]
    fn a_well_formed_request_and_each_missing_part() {
        let h = headers(&[("Tessera-Entity", "s:1"), ("Tessera-Command", "restock"), ("Idempotency-Key", "k-1")]);
        let r = parse_command("t", "t.cmd.stock.7", Some(&h), 10, 100).unwrap();
        assert_eq!((r.entity_type.as_str(), r.shard, r.entity_id.as_str()), ("stock", 7, "s:1"));
        assert_eq!((r.command.as_deref(), r.idempotency_key.as_deref()), (Some("restock"), Some("k-1")));
        for (subject, h, kind) in [
            ("t.cmd.stock", Some(headers(&[("Tessera-Entity", "a")])), "malformed"),
            ("t.cmd.stock.x", Some(headers(&[("Tessera-Entity", "a")])), "malformed"),
            ("u.cmd.stock.1", Some(headers(&[("Tessera-Entity", "a")])), "malformed"),
            ("t.cmd.stock.1", None, "malformed"),
            ("t.cmd.stock.1", Some(headers(&[("Tessera-Entity", "a")])), "malformed"),
            ("t.cmd.stock.1", Some(headers(&[("Tessera-Entity", "a"), ("Tessera-Read", "all")])), "malformed"),
            (
                "t.cmd.stock.1",
                Some(headers(&[("Tessera-Entity", "a"), ("Tessera-Command", "c"), ("Content-Type", "text/xml")])),
                "unsupported_media_type",
            ),
            ("t.cmd.stock.1", Some(headers(&[("Tessera-Entity", "a"), ("Tessera-Command", "c")])), "too_large"),
        ] {
            let e = parse_command("t", subject, h.as_ref(), 1000, 100).unwrap_err();
            assert_eq!(e.kind(), kind, "{subject} {h:?}: {e}");
        }
    }

    /// Cases per property: 3000 in the suite, `TESSERA_FUZZ_CASES` for long runs (docs/fuzzing.md).
    fn fuzz_cases() -> u32 {
        std::env::var("TESSERA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Any subject and any header values: a request or an error, never a panic.
        #[test]
        fn hostile_subjects_and_headers_are_an_error_or_a_request(
            subject in "[ -~]{0,40}",
            entity in proptest::option::of("\\PC{0,40}"),
            command in proptest::option::of("[ -~]{0,20}"),
            read in proptest::option::of("[a-z]{0,6}"),
            key in proptest::option::of("[ -~]{0,220}"),
            content_type in proptest::option::of("[ -~]{0,30}"),
            len in 0usize..5000,
        ) {
            let mut h = HeaderMap::new();
            for (name, value) in [
                (wire::ENTITY, entity), (wire::COMMAND, command), (wire::READ, read),
                (wire::IDEMPOTENCY_KEY, key), (wire::CONTENT_TYPE, content_type),
            ] {
                if let Some(v) = value { h.insert(name, v.as_str()); }
            }
            if let Ok(r) = parse_command("tessera", &subject, Some(&h), len, 1024) {
                prop_assert!(subject.starts_with("tessera.cmd."));
                prop_assert!(r.command.is_none() || len <= 1024);
                prop_assert!(r.idempotency_key.as_deref().is_none_or(contract::key_ok));
            }
        }
    }
}

//! The invocation contract: what every edge checks before anything runs —
//! HTTP, NATS request/reply, async calls (HTTP and JetStream), and commands
//! forwarded to a shard's owner — so the same bad input gets the same
//! error kind wherever it arrives. Entity types, commands and functions are
//! checked against the registry by the node (`unknown_*`, 404); the rest is
//! checked here.
//!
//! | input | rule | error |
//! |---|---|---|
//! | content type | absent, `application/json`, `application/msgpack` (`application/x-msgpack`); a form-encoded body (`curl -d`) is read as JSON | 415 `unsupported_media_type` |
//! | body | at most `max_body_bytes` | 413 `too_large` |
//! | idempotency key | 1–200 letters, digits, `-`, `_`, `:` (it names NATS subjects of async results) | 400 `malformed` |
//! | entity id | 1–1024 bytes of UTF-8, no control characters | 400 `malformed` |
//!
//! May import: `error`, the entities' `Format`. Nothing else.

use tessera_entities::Format;

use crate::error::InvokeError;

/// Longest idempotency key (and caller-given invocation id).
pub const MAX_KEY_LEN: usize = 200;
/// Longest entity id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

const FORM: &str = "application/x-www-form-urlencoded";

/// The body's format from its content type.
pub fn content_format(content_type: Option<&str>) -> Result<Format, InvokeError> {
    let Some(ct) = content_type.map(str::trim).filter(|c| !c.is_empty()) else { return Ok(Format::Json) };
    if ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(FORM)) {
        return Ok(Format::Json);
    }
    Format::from_content_type(ct).ok_or_else(|| InvokeError::UnsupportedMediaType(ct.to_owned()))
}

/// A body of `len` bytes fits the limit.
pub fn body_size(len: usize, limit: usize) -> Result<(), InvokeError> {
    if len > limit { Err(InvokeError::TooLarge { limit }) } else { Ok(()) }
}

/// True for keys the contract accepts (see [`idempotency_key`]).
pub fn key_ok(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b))
}

/// A caller-given idempotency key (or async invocation id), checked.
pub fn idempotency_key(key: Option<&str>) -> Result<Option<String>, InvokeError> {
    match key {
        None => Ok(None),
        Some(k) if key_ok(k) => Ok(Some(k.to_owned())),
        Some(k) => Err(InvokeError::Malformed(format!(
            "idempotency key `{}` must be 1-{MAX_KEY_LEN} letters, digits, `-`, `_` or `:`",
            k.escape_debug()
        ))),
    }
}

/// Keys starting with this are the runtime's own (deliveries of messages,
/// replies and function calls between entities: `tessera:{type}:{id}:{seq}`);
/// a client may not use them, or it could pre-empt a delivery.
pub const RESERVED_KEY_PREFIX: &str = "tessera:";

/// A key a client sent at the edge: [`idempotency_key`], and not in the
/// runtime's reserved namespace ([`RESERVED_KEY_PREFIX`]).
pub fn client_key(key: Option<&str>) -> Result<Option<String>, InvokeError> {
    let key = idempotency_key(key)?;
    if let Some(k) = &key
        && k.starts_with(RESERVED_KEY_PREFIX)
    {
        return Err(InvokeError::Malformed(format!(
            "idempotency key `{k}`: keys starting with `{RESERVED_KEY_PREFIX}` are reserved for the runtime's own deliveries"
        )));
    }
    Ok(key)
}

/// An entity id, checked.
pub fn entity_id(id: &str) -> Result<(), InvokeError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(InvokeError::Malformed(format!(
            "entity id `{}` must be 1-{MAX_ID_BYTES} bytes of UTF-8 without control characters",
            id.escape_debug()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let cases = [
            (None, Some(Format::Json)),
            (Some(""), Some(Format::Json)),
            (Some("application/json"), Some(Format::Json)),
            (Some("application/json; charset=utf-8"), Some(Format::Json)),
            (Some("application/x-www-form-urlencoded"), Some(Format::Json)),
            (Some("application/msgpack"), Some(Format::MsgPack)),
            (Some("text/plain"), None),
        ];
        for (ct, want) in cases {
            assert_eq!(content_format(ct).ok(), want, "{ct:?}");
        }
        assert_eq!(content_format(Some("text/plain")).unwrap_err().kind(), "unsupported_media_type");
    }

    #[test]
    fn keys_ids_and_sizes() {
        for ok in ["order-1001", "0190b7c2-1f3a-7e1d-9c1e-6f2b3a4c5d6e", "user:42:checkout", "a"] {
            assert_eq!(idempotency_key(Some(ok)).unwrap().as_deref(), Some(ok));
        }
        for bad in ["", "has space", "dots.split.subjects", "tab\t", &"k".repeat(201)] {
            assert_eq!(idempotency_key(Some(bad)).unwrap_err().kind(), "malformed", "{bad:?}");
        }
        assert_eq!(idempotency_key(None).unwrap(), None);
        for ok in ["store-7:sku-42", "ünïcödé/ok", &"x".repeat(1024)] {
            assert!(entity_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "new\nline", &"x".repeat(1025)] {
            assert_eq!(entity_id(bad).unwrap_err().kind(), "malformed");
        }
        assert!(body_size(10, 10).is_ok());
        assert!(matches!(body_size(11, 10), Err(InvokeError::TooLarge { limit: 10 })));
    }
}

//! The NATS wire contract (see docs/protocol.md): subjects, headers, status.

use tessera_entities::Format;

/// Entity id of a command.
pub const ENTITY: &str = "Tessera-Entity";
/// Command name.
pub const COMMAND: &str = "Tessera-Command";
/// On a command subject instead of [`COMMAND`]: `state` reads the entity's
/// live state on its owner (reply `{"seq", "state"}`).
pub const READ: &str = "Tessera-Read";
/// Caller-given idempotency key.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Body format: `application/json` (default) or `application/msgpack`.
pub const CONTENT_TYPE: &str = "Content-Type";
/// The reply's format when it differs from the request's (optional).
pub const ACCEPT: &str = "Accept";
/// The HTTP-equivalent status of a reply.
pub const STATUS: &str = "Tessera-Status";
/// The entity's last seq after a command.
pub const SEQ: &str = "Tessera-Seq";
/// The invocation id.
pub const INVOCATION_ID: &str = "Tessera-Invocation-Id";
/// `true` when a reply came from the idempotency window.
pub const DEDUPLICATED: &str = "Tessera-Deduplicated";
/// The error of a dead-lettered invocation.
pub const ERROR: &str = "Tessera-Error";
/// The caller's request id, kept in the result row of an async call.
pub const REQUEST_ID: &str = "Tessera-Request-Id";
/// JetStream's de-duplication header.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// Subject names under a prefix (default `tessera`).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }
    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `{p}.cmd.{type}.{shard}`: commands of one shard (request/reply).
    pub fn command(&self, entity_type: &str, shard: u32) -> String {
        format!("{}.cmd.{entity_type}.{shard}", self.prefix)
    }
    /// `{p}.call.{function}`: sync function calls (request/reply).
    pub fn call(&self, function: &str) -> String {
        format!("{}.call.{function}", self.prefix)
    }
    /// `{p}.invoke.{function}`: async function calls (JetStream).
    pub fn invoke(&self, function: &str) -> String {
        format!("{}.invoke.{function}", self.prefix)
    }
    /// `{p}.result.{id}`: results of async invocations (JetStream).
    pub fn result(&self, invocation_id: &str) -> String {
        format!("{}.result.{invocation_id}", self.prefix)
    }
    /// `{p}.metrics.{node}`: a node's load, once a second (JSON).
    pub fn metrics(&self, node: &str) -> String {
        format!("{}.metrics.{node}", self.prefix)
    }
    /// `{p}.dlq.{function}`: invocations that failed every delivery.
    pub fn dead_letter(&self, function: &str) -> String {
        format!("{}.dlq.{function}", self.prefix)
    }
    /// The stream of async invocations.
    pub fn invoke_stream(&self) -> String {
        format!("{}_INVOKE", self.stream_base())
    }
    /// The stream of results.
    pub fn result_stream(&self) -> String {
        format!("{}_RESULTS", self.stream_base())
    }
    /// The durable consumer every node pulls async invocations from.
    pub fn invoke_consumer(&self) -> String {
        format!("{}-invokers", self.prefix.replace('.', "-"))
    }
    fn stream_base(&self) -> String {
        self.prefix.to_ascii_uppercase().replace(['.', '-'], "_")
    }
}

/// The format named by a `Content-Type` header (absent: JSON).
pub fn format_of(content_type: Option<&str>) -> Option<Format> {
    match content_type {
        None | Some("") => Some(Format::Json),
        Some(ct) => Format::from_content_type(ct),
    }
}

/// True for ids usable as one NATS subject token.
pub fn subject_safe(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b))
}

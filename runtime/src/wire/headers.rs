//! Header names, the same on HTTP and NATS where both carry them.

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
/// HTTP: the caller's request id (kept in an async call's result row).
pub const X_REQUEST_ID: &str = "X-Request-Id";

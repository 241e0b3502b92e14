//! The errors an invocation can end with, each with its HTTP status (NATS
//! replies carry the same code in `Tessera-Status`).

use serde_json::json;
use tessera_entities::{CommandError, FunctionError, Rejection};
use tessera_journal::{AppendError, JournalError};

/// Why an invocation did not produce a reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// No entity type of that name is registered (404).
    #[error("unknown entity type `{0}`")]
    UnknownEntityType(String),
    /// The entity type has no such command (404).
    #[error("{0}")]
    UnknownCommand(String),
    /// No function of that name is registered (404).
    #[error("unknown function `{0}`")]
    UnknownFunction(String),
    /// The body does not decode (400).
    #[error("{0}")]
    Malformed(String),
    /// The content type is neither JSON nor MessagePack (415).
    #[error("unsupported content type `{0}`: use application/json or application/msgpack")]
    UnsupportedMediaType(String),
    /// The request reached a subject or node that does not serve this entity (421).
    #[error("misdirected: {0}")]
    Misdirected(String),
    /// The body is larger than the configured limit (413).
    #[error("body larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The handler refused the command (409). Nothing was persisted.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The entity's queue is full (429); retry after a pause.
    #[error("entity `{0}` is busy: its queue is full")]
    EntityBusy(String),
    /// The node or a dependency cannot take the invocation now (503); retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The entity's shard is moving between nodes, or this node no longer
    /// holds its lease (503). Nothing was persisted: retry (clients and
    /// forwarding nodes do, with backoff, within their deadline).
    #[error("shard moved: {0}")]
    ShardMoved(String),
    /// The invocation did not finish in time (504). Its outcome is unknown:
    /// retry with the same idempotency key.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The handler panicked (500). Nothing was persisted; the entity was reset.
    #[error("handler panicked: {0}")]
    HandlerPanicked(String),
    /// The entity's journal cannot be replayed by this code (500), e.g. it
    /// holds events of a newer schema version.
    #[error("cannot rebuild entity: {0}")]
    Replay(String),
    /// Anything else (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl InvokeError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownEntityType(_) | Self::UnknownCommand(_) | Self::UnknownFunction(_) => 404,
            Self::Malformed(_) => 400,
            Self::UnsupportedMediaType(_) => 415,
            Self::TooLarge { .. } => 413,
            Self::Misdirected(_) => 421,
            Self::Rejected(_) => 409,
            Self::EntityBusy(_) => 429,
            Self::Unavailable(_) | Self::ShardMoved(_) => 503,
            Self::Timeout(_) => 504,
            Self::HandlerPanicked(_) | Self::Replay(_) | Self::Internal(_) => 500,
        }
    }

    /// A stable name of the error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownEntityType(_) => "unknown_entity_type",
            Self::UnknownCommand(_) => "unknown_command",
            Self::UnknownFunction(_) => "unknown_function",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::TooLarge { .. } => "too_large",
            Self::Misdirected(_) => "misdirected",
            Self::Rejected(_) => "rejected",
            Self::EntityBusy(_) => "entity_busy",
            Self::Unavailable(_) => "unavailable",
            Self::ShardMoved(_) => "shard_moved",
            Self::Timeout(_) => "timeout",
            Self::HandlerPanicked(_) => "handler_panicked",
            Self::Replay(_) => "replay_failed",
            Self::Internal(_) => "internal",
        }
    }

    /// Seconds a caller should wait before retrying, for retryable errors.
    pub fn retry_after(&self) -> Option<u32> {
        matches!(self, Self::EntityBusy(_) | Self::Unavailable(_) | Self::ShardMoved(_)).then_some(1)
    }

    /// Rebuilds an error from its status and JSON body (as [`Self::to_json`]
    /// wrote it), e.g. a reply forwarded from another node.
    pub fn from_reply(status: u16, body: &serde_json::Value) -> Self {
        let e = &body["error"];
        let message = e["message"].as_str().unwrap_or_default();
        // The message repeats the variant's prefix; keep only the payload.
        let payload = message.split_once(": ").map_or(message, |(_, rest)| rest).to_owned();
        match (status, e["kind"].as_str().unwrap_or_default()) {
            (_, "unknown_entity_type") => Self::UnknownEntityType(
                payload.trim_start_matches("unknown entity type `").trim_end_matches('`').to_owned(),
            ),
            (_, "unknown_command") => Self::UnknownCommand(message.to_owned()),
            (_, "malformed") => Self::Malformed(message.to_owned()),
            (_, "misdirected") => Self::Misdirected(payload),
            (_, "too_large") => Self::TooLarge { limit: 0 },
            (_, "rejected") => {
                // The message reads `rejected: {code}: {message}`: keep the entity's own message.
                let code = e["code"].as_str().unwrap_or_default();
                let text = payload.strip_prefix(code).and_then(|m| m.strip_prefix(": ")).unwrap_or(&payload);
                let mut r = Rejection::new(code, text);
                if let Some(d) = e.get("details").filter(|d| !d.is_null()) {
                    r.details = Some(d.clone());
                }
                Self::Rejected(r)
            }
            (_, "entity_busy") => Self::EntityBusy(
                message
                    .strip_prefix("entity `")
                    .and_then(|m| m.strip_suffix("` is busy: its queue is full"))
                    .unwrap_or(&payload)
                    .to_owned(),
            ),
            (_, "shard_moved") => Self::ShardMoved(payload),
            (_, "timeout") => Self::Timeout(payload),
            (_, "handler_panicked") => Self::HandlerPanicked(payload),
            (_, "replay_failed") => Self::Replay(payload),
            (503, _) => Self::Unavailable(payload),
            (504, _) => Self::Timeout(payload),
            _ => Self::Internal(format!("status {status}: {message}")),
        }
    }

    /// The JSON error body: `{"error": {"kind", "message", ...}}`; a rejection
    /// adds its `code` and `details`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = json!({ "kind": self.kind(), "message": self.to_string(), "status": self.status() });
        if let Self::Rejected(r) = self {
            body["code"] = json!(r.code);
            if let Some(d) = &r.details {
                body["details"] = d.clone();
            }
        }
        json!({ "error": body })
    }
}

impl From<CommandError> for InvokeError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownCommand { .. } => Self::UnknownCommand(e.to_string()),
            _ => Self::Malformed(e.to_string()),
        }
    }
}

impl From<FunctionError> for InvokeError {
    fn from(e: FunctionError) -> Self {
        match e {
            FunctionError::Rejected(r) => Self::Rejected(r),
            FunctionError::Unavailable(m) => Self::Unavailable(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<JournalError> for InvokeError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Corrupt { .. } => Self::Replay(e.to_string()),
            _ => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<AppendError> for InvokeError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict { .. } => {
                Self::Unavailable(format!("{e}; the entity was reloaded, retry with the same idempotency key"))
            }
            AppendError::Fenced { .. } => Self::ShardMoved(format!("{e}; nothing was written")),
            AppendError::Journal(j) => j.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error forwarded from another node (its JSON body read back) is
    /// the error the owner raised: same kind, same message.
    #[test]
    fn errors_survive_the_round_trip_through_their_json() {
        let rejection = Rejection::new("insufficient_stock", "3 on hand, 5 asked").with_details(json!({"on_hand": 3}));
        for e in [
            InvokeError::Rejected(rejection),
            InvokeError::ShardMoved("moving".into()),
            InvokeError::EntityBusy("stock/a".into()),
            InvokeError::Timeout("slow".into()),
            InvokeError::Replay("stock/a: bad".into()),
        ] {
            let back = InvokeError::from_reply(e.status(), &e.to_json());
            assert_eq!(back, e);
            assert_eq!(back.to_string(), e.to_string());
        }
    }
}

//! The errors an invocation can end with, each with its HTTP status (NATS
//! replies carry the same code in `Tessera-Status`).
//!
//! May import: `wire` (the error body). Every layer returns it.

use tessera_entities::{CommandError, FunctionError, Rejection};
use tessera_journal::{AppendError, JournalError};

use crate::wire::ErrorBody;

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
    /// A feed read below what the retention kept.
    #[error("feed expired: {0}")]
    FeedExpired(String),
    /// An offset past the end of a feed.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// No projection of that name on the node.
    #[error("unknown projection `{0}`")]
    UnknownProjection(String),
    /// The entity was deleted (404): its commands and reads are refused
    /// until its journal is purged, after which the id starts afresh.
    #[error("entity deleted: {0}")]
    Deleted(String),
    /// There is no such entity to delete: nothing was ever written to it (404).
    #[error("entity not found: {0}")]
    EntityNotFound(String),
}

impl InvokeError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownEntityType(_)
            | Self::UnknownCommand(_)
            | Self::UnknownFunction(_)
            | Self::UnknownProjection(_)
            | Self::Deleted(_)
            | Self::EntityNotFound(_) => 404,
            Self::FeedExpired(_) => 410,
            Self::OutOfRange(_) => 416,
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
            Self::FeedExpired(_) => "feed_expired",
            Self::OutOfRange(_) => "out_of_range",
            Self::UnknownProjection(_) => "unknown_projection",
            Self::Deleted(_) => "entity_deleted",
            Self::EntityNotFound(_) => "entity_not_found",
        }
    }

    /// Seconds a caller should wait before retrying, for retryable errors.
    pub fn retry_after(&self) -> Option<u32> {
        matches!(self, Self::EntityBusy(_) | Self::Unavailable(_) | Self::ShardMoved(_)).then_some(1)
    }

    /// The variant's own part of the message (a rejection's message, the
    /// limit of `too_large`, the name of an unknown type).
    fn detail(&self) -> String {
        match self {
            Self::UnknownEntityType(s)
            | Self::UnknownCommand(s)
            | Self::UnknownFunction(s)
            | Self::Malformed(s)
            | Self::UnsupportedMediaType(s)
            | Self::Misdirected(s)
            | Self::EntityBusy(s)
            | Self::Unavailable(s)
            | Self::ShardMoved(s)
            | Self::Timeout(s)
            | Self::HandlerPanicked(s)
            | Self::Replay(s)
            | Self::Internal(s)
            | Self::FeedExpired(s)
            | Self::OutOfRange(s)
            | Self::UnknownProjection(s)
            | Self::Deleted(s)
            | Self::EntityNotFound(s) => s.clone(),
            Self::TooLarge { limit } => limit.to_string(),
            Self::Rejected(r) => r.message.clone(),
        }
    }

    /// The error body every edge answers with; a rejection adds its `code`
    /// and `details`.
    pub fn to_body(&self) -> ErrorBody {
        let mut b = ErrorBody::new(self.kind(), self.status(), self.to_string());
        b.error.detail = Some(self.detail());
        if let Self::Rejected(r) = self {
            b.error.code = Some(r.code.clone());
            b.error.details = r.details.clone();
        }
        b
    }

    /// Rebuilds an error from its status and body (as [`Self::to_body`]
    /// wrote it), e.g. a reply forwarded from another node: the same kind
    /// and message as where it was raised.
    pub fn from_body(status: u16, body: &ErrorBody) -> Self {
        let e = &body.error;
        // Bodies without `detail` (older nodes): the message after its prefix.
        let detail = e
            .detail
            .clone()
            .unwrap_or_else(|| e.message.split_once(": ").map_or(e.message.as_str(), |(_, rest)| rest).to_owned());
        match (status, e.kind.as_str()) {
            (_, "unknown_entity_type") => Self::UnknownEntityType(detail),
            (_, "unknown_command") => Self::UnknownCommand(detail),
            (_, "unknown_function") => Self::UnknownFunction(detail),
            (_, "malformed") => Self::Malformed(detail),
            (_, "unsupported_media_type") => Self::UnsupportedMediaType(detail),
            (_, "misdirected") => Self::Misdirected(detail),
            (_, "too_large") => Self::TooLarge { limit: detail.parse().unwrap_or(0) },
            (_, "rejected") => {
                let mut r = Rejection::new(e.code.clone().unwrap_or_default(), detail);
                r.details = e.details.clone().filter(|d| !d.is_null());
                Self::Rejected(r)
            }
            (_, "entity_busy") => Self::EntityBusy(detail),
            (_, "unavailable") => Self::Unavailable(detail),
            (_, "shard_moved") => Self::ShardMoved(detail),
            (_, "timeout") => Self::Timeout(detail),
            (_, "handler_panicked") => Self::HandlerPanicked(detail),
            (_, "replay_failed") => Self::Replay(detail),
            (_, "internal") => Self::Internal(detail),
            (_, "feed_expired") => Self::FeedExpired(detail),
            (_, "out_of_range") => Self::OutOfRange(detail),
            (_, "unknown_projection") => Self::UnknownProjection(detail),
            (_, "entity_deleted") => Self::Deleted(detail),
            (_, "entity_not_found") => Self::EntityNotFound(detail),
            (503, _) => Self::Unavailable(detail),
            (504, _) => Self::Timeout(detail),
            _ => Self::Internal(format!("status {status}: {}", e.message)),
        }
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
            JournalError::FeedExpired { .. } => Self::FeedExpired(e.to_string()),
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
        let rejection =
            Rejection::new("insufficient_stock", "3 on hand, 5 asked").with_details(serde_json::json!({"on_hand": 3}));
        for e in [
            InvokeError::Rejected(rejection),
            InvokeError::UnknownEntityType("stok".into()),
            InvokeError::UnknownCommand("stock has no command `x`".into()),
            InvokeError::Malformed("expected value at line 1".into()),
            InvokeError::TooLarge { limit: 1024 },
            InvokeError::ShardMoved("moving".into()),
            InvokeError::EntityBusy("stock/a".into()),
            InvokeError::Unavailable("journal: down".into()),
            InvokeError::Timeout("slow".into()),
            InvokeError::Replay("stock/a: bad".into()),
            InvokeError::Internal("oops".into()),
            InvokeError::FeedExpired("stock/3: offsets up to 9 expired".into()),
            InvokeError::OutOfRange("offset 99 is past the end".into()),
            InvokeError::UnknownProjection("nope".into()),
        ] {
            let back = InvokeError::from_body(e.status(), &e.to_body());
            assert_eq!(back, e);
            assert_eq!(back.to_string(), e.to_string());
        }
    }
}

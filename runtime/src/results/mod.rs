//! The durable result store: one row per invocation id (status, timing,
//! worker, a small body inline, TTL). Async invocations are answered from
//! here (`GET /v1/invocations/{id}`), and redelivered invocations check it so
//! a result is stored once.
//!
//! One [`ResultStore`] trait, backends [`MemoryResultStore`] and
//! [`LocalResultStore`] (fjall), [`ScyllaResultStore`] (the journal's
//! keyspace), and a [`conformance`] suite all pass.
//!
//! May import: the journal (the Scylla session) and the entities (codecs).
//! Not the node, not an edge.

pub mod conformance;
mod local;
mod memory;
mod scylla;

use serde::{Deserialize, Serialize};

pub use local::LocalResultStore;
pub use memory::MemoryResultStore;
pub use scylla::ScyllaResultStore;

/// Where an invocation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// Accepted, not started.
    Pending,
    /// Started (possibly retried).
    Running,
    /// Finished with a reply.
    Ok,
    /// Finished with an error (a rejection, a failure, dead-lettered).
    Error,
    /// Did not finish within its deadline.
    TimedOut,
}

impl ResultStatus {
    /// True for `ok`, `error` and `timed_out`: a final row is never replaced.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Ok | Self::Error | Self::TimedOut)
    }
}

/// One invocation's result row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationResult {
    /// The invocation id.
    pub invocation_id: String,
    /// What was invoked: `function:NAME` or `entity:TYPE/ID/COMMAND`.
    pub target: String,
    /// Where it is.
    pub status: ResultStatus,
    /// The HTTP-equivalent status code (0 while not final).
    pub status_code: u16,
    /// The caller's content type; the body is stored as MessagePack.
    pub content_type: String,
    /// The reply (MessagePack), when not larger than the inline limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Vec<u8>>,
    /// Size of the reply in bytes.
    pub body_size: u64,
    /// True when the reply was larger than the inline limit and not kept.
    pub truncated: bool,
    /// The error, for `error` and `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The node that ran it.
    pub node_id: String,
    /// The executor that ran it.
    pub executor_id: String,
    /// The caller's request id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// How many times it was delivered.
    pub attempts: u32,
    /// When it was accepted (ms since the epoch).
    pub accepted_ms: i64,
    /// When it last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<i64>,
    /// When the row expires.
    pub expires_ms: i64,
}

impl InvocationResult {
    /// A pending row.
    pub fn pending(invocation_id: &str, target: String, content_type: &str, now_ms: i64, ttl_ms: i64) -> Self {
        Self {
            invocation_id: invocation_id.to_owned(),
            target,
            status: ResultStatus::Pending,
            status_code: 0,
            content_type: content_type.to_owned(),
            body: None,
            body_size: 0,
            truncated: false,
            error: None,
            node_id: String::new(),
            executor_id: String::new(),
            request_id: None,
            attempts: 0,
            accepted_ms: now_ms,
            started_ms: None,
            completed_ms: None,
            expires_ms: now_ms.saturating_add(ttl_ms),
        }
    }

    /// Sets the reply, inline when it fits in `limit` bytes.
    pub fn set_body(&mut self, body: Vec<u8>, limit: usize) {
        self.body_size = body.len() as u64;
        self.truncated = body.len() > limit;
        self.body = (!self.truncated).then_some(body);
    }

    /// The row as JSON for the HTTP API (the body decoded from MessagePack).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            let body = self.body.as_deref().map(|b| tessera_entities::codec::msgpack_to_json(b).unwrap_or_default());
            obj.insert("body".into(), body.unwrap_or(serde_json::Value::Null));
        }
        v
    }
}

/// What a put did.
#[derive(Debug, Clone, PartialEq)]
pub enum PutOutcome {
    /// The row was written.
    Stored,
    /// A final row already existed and was kept (it is returned).
    AlreadyFinal(Box<InvocationResult>),
}

/// Why a result store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResultStoreError {
    /// The store could not be read or written.
    #[error("result store unavailable: {0}")]
    Unavailable(String),
    /// A stored row does not decode.
    #[error("corrupt result row {id}: {detail}")]
    Corrupt {
        /// The invocation id.
        id: String,
        /// What is wrong.
        detail: String,
    },
}

/// A store of invocation results keyed by invocation id.
#[async_trait::async_trait]
pub trait ResultStore: Send + Sync + 'static {
    /// Writes a row, unless a final row exists for the id (then it is kept).
    async fn put(&self, row: InvocationResult) -> Result<PutOutcome, ResultStoreError>;
    /// The row, if present and not expired at `now_ms`.
    async fn get(&self, invocation_id: &str, now_ms: i64) -> Result<Option<InvocationResult>, ResultStoreError>;
    /// Deletes rows expired at `now_ms`; returns how many.
    async fn purge_expired(&self, now_ms: i64) -> Result<u64, ResultStoreError>;
    /// What an embedded store holds in memory (the local store), for metrics.
    fn storage_stats(&self) -> Option<tessera_journal::StorageStats> {
        None
    }
}

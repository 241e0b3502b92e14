//! What the node core needs from the outside, as traits it owns (the way
//! `tessera_cluster::ShardHost` lets the cluster drive the runtime): the
//! edges implement them (`crate::nats` over NATS and JetStream), the
//! composition root (`crate::server`) plugs them in. The core never names
//! an edge.

use tessera_entities::Format;

use super::Invocation;
use crate::error::InvokeError;
use crate::results::InvocationResult;
use crate::shard::{CommandReply, StateView};

/// Reaches the node that owns a shard this node does not serve.
#[async_trait::async_trait]
pub trait Forwarder: Send + Sync + 'static {
    /// False while the owner cannot be reached at all (e.g. NATS is down):
    /// the command is then refused at once instead of waiting.
    fn reachable(&self) -> bool;
    /// Runs the command on the shard's owner (retrying while the shard moves).
    async fn command(&self, inv: Invocation) -> Result<CommandReply, InvokeError>;
    /// Reads the entity's live state on its owner.
    async fn state(&self, entity_type: &str, entity_id: &str) -> Result<StateView, InvokeError>;
    /// Runs a function on a node of the functions role (this node has not
    /// got it); the output is MessagePack. `Ok(None)`: no such node
    /// answered (nothing ran; the caller may wait and try again).
    async fn function(
        &self,
        name: &str,
        body: Vec<u8>,
        format: Format,
        invocation_id: &str,
    ) -> Result<Option<Vec<u8>>, InvokeError>;
}

/// Who owns each shard now, as the cluster's lease table shows it (the
/// cluster's watched view; the composition root plugs it in once the node
/// joined). Used to re-route a forwarded command whose owner changed while
/// it was in flight.
pub trait ShardDirectory: Send + Sync + 'static {
    /// The live holder of the unit's lease and its epoch, if any.
    fn owner(&self, entity_type: &str, shard: u32) -> Option<(String, u64)>;
}

/// An async function call handed to the queue: the queue delivers it (at
/// least once) to some node's `Node::run_async`.
#[derive(Debug, Clone)]
pub struct QueuedCall {
    /// The invocation id (also the queue's de-duplication key).
    pub id: String,
    /// The function.
    pub function: String,
    /// The input.
    pub body: Vec<u8>,
    /// The input's format.
    pub format: Format,
    /// The caller's request id, if any.
    pub request_id: Option<String>,
    /// With traces on: the caller's W3C `traceparent` (the run joins its trace).
    pub trace: Option<String>,
}

/// An async entity command handed to the queue: delivered (at least once,
/// in order per entity) to the owner's `Node::run_async_command`.
#[derive(Debug, Clone)]
pub struct QueuedCommand {
    /// The invocation id: the queue's de-duplication key and the command's idempotency key.
    pub id: String,
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// The command.
    pub command: String,
    /// The body.
    pub body: Vec<u8>,
    /// The body's format.
    pub format: Format,
    /// With traces on: the caller's W3C `traceparent` (the run joins its trace).
    pub trace: Option<String>,
}

/// Where async calls wait to run, and where their outcomes are announced.
#[async_trait::async_trait]
pub trait CallQueue: Send + Sync + 'static {
    /// Stores the call durably (or, in-process, hands it to the runner);
    /// returns once it will be delivered.
    async fn enqueue(&self, call: QueuedCall) -> Result<(), InvokeError>;
    /// Stores an async entity command durably (or hands it to the
    /// in-process runner); returns once it will be delivered.
    async fn enqueue_command(&self, cmd: QueuedCommand) -> Result<(), InvokeError>;
    /// Announces a final result row (e.g. publishes it for subscribers).
    async fn finished(&self, row: &InvocationResult);
    /// Sets aside a call that failed its last delivery.
    async fn dead_letter(&self, call: &QueuedCall, error: &InvokeError);
}

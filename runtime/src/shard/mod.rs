//! Shard actors: each hosts the active entities of one shard as virtual
//! actors — a small record, the state and a queue per entity — inside one
//! ractor actor. Three layers, each only using the next:
//!
//! - [`step`]: the decision for one command, a pure function (answer from
//!   the idempotency record, refuse, reset, append these events);
//! - [`machine`]: the shard's state machine — queues, activation,
//!   in-flight appends, passivation, hand-off — asking for IO as data;
//!   a hot entity's queued commands go in one append ([`batch`]);
//! - [`actor`]: the ractor glue that runs that IO in spawned tasks (the
//!   actor never awaits the journal) and feeds the outcomes back.
//!
//! May import: the journal, the entities, `envelope`, `error`, `metrics`,
//! the cluster's `Ownership` (the fence). Not the node, not an edge.

mod activation;
mod actor;
mod batch;
mod dedup;
mod machine;
mod step;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;
use tessera_entities::{DynCommand, DynEntity};
use tessera_journal::{AppendAck, EntityKey, Journal};

pub use activation::{Replay, replay};
pub(crate) use actor::ShardActor;
pub(crate) use batch::BatchLimits;
pub(crate) use dedup::DedupLimits;
pub(crate) use step::TimerFire;
pub(crate) use supervisor::{ShardRefs, ShardSupervisor};

use crate::error::InvokeError;
use crate::metrics::Metrics;

/// A command's successful outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReply {
    /// The reply, MessagePack.
    pub reply: Vec<u8>,
    /// The entity's last seq after the command.
    pub seq: u64,
    /// The invocation id.
    pub invocation_id: String,
    /// True when this is a retry answered from the idempotency window.
    pub deduplicated: bool,
}

/// An entity's current state, for inspection.
#[derive(Debug, Clone, PartialEq)]
pub struct StateView {
    /// The state as JSON.
    pub state: serde_json::Value,
    /// The seq of the last event applied.
    pub seq: u64,
    /// Its pending timers.
    pub timers: Vec<crate::flow::PendingTimer>,
}

/// Told (entity type, shard, whether the append held messages, timers or
/// calls) after an append committed.
pub(crate) type CommitHook = Arc<dyn Fn(&str, u32, bool) + Send + Sync>;

/// What every shard actor shares.
pub(crate) struct ShardContext {
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) metrics: Metrics,
    pub(crate) dedup: DedupLimits,
    /// How long keyed commands are remembered in the journal, per entity type.
    pub(crate) key_retention: Arc<dyn Fn(&str) -> Duration + Send + Sync>,
    pub(crate) entity_queue_limit: usize,
    /// How many queued commands of an entity go in one append.
    pub(crate) batch: BatchLimits,
    pub(crate) snapshot_every: u64,
    pub(crate) idle_timeout: Duration,
    pub(crate) shard_budget: usize,
    /// In a cluster: the lease table. Commands commit only while this node
    /// provably holds the shard's lease (checked before each append).
    pub(crate) fence: Option<Arc<tessera_cluster::Ownership>>,
    /// In a cluster: this node's id, recorded in each event's metadata.
    pub(crate) node_id: Option<String>,
    /// Told after each append that committed (entity type, shard): wakes
    /// the projections that follow the unit.
    pub(crate) on_commit: Option<CommitHook>,
}

pub(crate) struct CommandRequest {
    pub(crate) key: EntityKey,
    pub(crate) entity: Arc<dyn DynEntity>,
    pub(crate) command: DynCommand,
    pub(crate) invocation_id: String,
    /// The caller gave the id and may retry with it: remember the reply.
    pub(crate) retryable: bool,
    /// Set when this is a due timer's command.
    pub(crate) timer: Option<step::TimerFire>,
    pub(crate) span: tracing::Span,
    pub(crate) reply: RpcReplyPort<Result<CommandReply, InvokeError>>,
}

/// Delete an entity: append its tombstone (see `flow::records`).
pub(crate) struct DeleteRequest {
    pub(crate) key: EntityKey,
    pub(crate) entity: Arc<dyn DynEntity>,
    pub(crate) invocation_id: String,
    /// How long until its journal is purged.
    pub(crate) grace: Duration,
    /// `api` or `ttl`.
    pub(crate) reason: String,
    pub(crate) span: tracing::Span,
    pub(crate) reply: RpcReplyPort<Result<CommandReply, InvokeError>>,
}

/// Purge a deleted entity's journal, if its tombstone is still at `seq`
/// (a purge timer fired again after a purge finds nothing, or a new life).
pub(crate) struct PurgeRequest {
    pub(crate) key: EntityKey,
    pub(crate) entity: Arc<dyn DynEntity>,
    pub(crate) seq: u64,
    pub(crate) reply: RpcReplyPort<Result<bool, InvokeError>>,
}

pub(crate) struct StateRequest {
    pub(crate) key: EntityKey,
    pub(crate) entity: Arc<dyn DynEntity>,
    pub(crate) reply: RpcReplyPort<Result<StateView, InvokeError>>,
}

/// What became of an append.
pub(crate) enum Committed {
    /// The events are durable.
    Appended(AppendAck),
    /// The journal already held the idempotency key `key` (a retry that
    /// arrived after the in-memory window forgot it): nothing was written;
    /// this is that invocation's original reply, at the seq it committed at.
    Remembered { key: String, seq: u64, reply: Vec<u8> },
}

/// Messages of a shard actor.
pub(crate) enum ShardMsg {
    Command(CommandRequest),
    State(StateRequest),
    Delete(DeleteRequest),
    Purge(PurgeRequest),
    /// A purge finished (the entity may be activated again).
    Purged {
        key: EntityKey,
    },
    Activated {
        key: EntityKey,
        incarnation: u64,
        result: Result<activation::Rebuilt, InvokeError>,
    },
    Appended {
        key: EntityKey,
        incarnation: u64,
        result: Result<Committed, InvokeError>,
    },
    /// The journal's own answer to an append handed over with
    /// [`Journal::commit_then`] (sent from the journal's writer thread),
    /// before what `append` does after a commit: the commit hook, a
    /// duplicate's original reply.
    Journaled {
        key: EntityKey,
        incarnation: u64,
        result: Result<AppendAck, tessera_journal::AppendError>,
        flow: bool,
    },
    /// This node is handing off (or lost) an entity type's slice of the
    /// shard: refuse its new commands, passivate its idle entities (all of
    /// them when `force`), reply how many are still busy.
    Release {
        entity_type: String,
        force: bool,
        reply: RpcReplyPort<usize>,
    },
    /// This node just acquired the slice: forget anything cached for it and
    /// accept its commands again.
    Acquire {
        entity_type: String,
    },
    Tick,
}

#[cfg(test)]
mod tests;

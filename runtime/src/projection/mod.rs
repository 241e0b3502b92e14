//! Projections: read models and sinks that follow the shard feed.
//!
//! A [`Projection`] names the entity types it reads and gets their events
//! in batches, per feed unit (an entity type in a shard), in feed order,
//! with each event's offset and its key `(type, id, seq)`. The runtime runs
//! it on the unit's owner (every unit on a node outside a cluster), keeps
//! its checkpoint per (projection, unit) in the journal, moves it with the
//! lease and restarts it from the checkpoint after a crash: delivery is at
//! least once, so a sink deduplicates by [`FeedEvent::key`].
//!
//! A projection may also keep state *with* its checkpoint (`state` in
//! [`Projection::handle`]): the runtime writes the new state and the new
//! offset in one append, so that state counts every event exactly once.
//! [`View`] is the typed form of that.
//!
//! ```
//! use tessera_runtime::projection::{FeedEvent, View};
//!
//! /// Events per entity type, exactly once.
//! struct Count;
//! impl View for Count {
//!     type State = u64;
//!     fn name(&self) -> &str { "count" }
//!     fn entity_types(&self) -> Vec<String> { vec!["stock".into()] }
//!     fn apply(&self, state: &mut u64, _: &FeedEvent) { *state += 1 }
//! }
//! let _projection = tessera_runtime::projection::view(Count);
//! ```
//!
//! May import: the journal, `metrics`, the cluster's `Ownership`. Not the
//! node, not an edge.

mod checkpoint;
mod runner;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_entities::codec;
use tessera_journal::ShardEvent;

pub use checkpoint::{CHECKPOINT_TYPE, Checkpoint, Checkpoints};
pub(crate) use runner::{ProjectionSettings, Projections};
pub use runner::{UnitStatus, view_state};

/// One event of the feed, as a projection gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    /// Its offset in its unit's feed.
    pub offset: u64,
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// The shard.
    pub shard: u32,
    /// The event's seq in its entity's journal.
    pub seq: u64,
    /// The event's type name.
    pub event_type: String,
    /// The event's schema version.
    pub version: u32,
    /// When it was committed, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The event, MessagePack.
    pub payload: Vec<u8>,
    /// The runtime's metadata of the event (MessagePack `EventMeta`:
    /// invocation id, node, epoch, trace context).
    pub metadata: Vec<u8>,
}

impl FeedEvent {
    pub(crate) fn from_shard_event(e: ShardEvent, shard: u32) -> Self {
        Self {
            offset: e.offset,
            entity_type: e.entity.entity_type,
            entity_id: e.entity.entity_id,
            shard,
            seq: e.event.seq,
            event_type: e.event.type_name,
            version: e.event.version,
            timestamp_ms: e.event.timestamp_ms,
            payload: e.event.payload,
            metadata: e.event.metadata,
        }
    }

    /// The event's key, unique and stable across redeliveries:
    /// `type/id/seq` (what a sink deduplicates by).
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.entity_type, self.entity_id, self.seq)
    }

    /// The event decoded into its Rust type.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ProjectionError> {
        tessera_entities::codec::from_msgpack(&self.payload)
            .map_err(|e| ProjectionError::Failed(format!("event {} does not decode: {e}", self.key())))
    }

    /// The event as JSON.
    pub fn json(&self) -> serde_json::Value {
        codec::msgpack_to_json(&self.payload).unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }))
    }
}

/// A batch of one unit's events, in feed order.
#[derive(Debug)]
pub struct ProjectionBatch<'a> {
    /// The unit's entity type.
    pub entity_type: &'a str,
    /// The unit's shard.
    pub shard: u32,
    /// The events (at least one).
    pub events: &'a [FeedEvent],
}

/// Why a projection could not take a batch (it is retried with backoff,
/// from the same checkpoint).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The sink failed; the batch is delivered again.
    #[error("{0}")]
    Failed(String),
}

/// A read model or sink following the feed of some entity types.
#[async_trait::async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Its name: unique on a node, stable (its checkpoints are kept under it).
    fn name(&self) -> &str;
    /// The entity types whose events it gets.
    fn entity_types(&self) -> Vec<String>;
    /// True when it keeps state with its checkpoint (it can then be reset,
    /// not rewound to an offset).
    fn keeps_state(&self) -> bool {
        false
    }
    /// Takes one batch. `state` is what it stored with its checkpoint
    /// (`None` at first); what it leaves there is stored with the new
    /// checkpoint, in the same append. An error retries the batch.
    async fn handle(&self, batch: ProjectionBatch<'_>, state: &mut Option<Vec<u8>>) -> Result<(), ProjectionError>;
    /// The runtime's dispatcher only: it gets the runtime's records
    /// (messages, timers, calls) instead of the entities' events. A user
    /// projection never sees those records.
    #[doc(hidden)]
    fn reads_flow(&self) -> bool {
        false
    }
    /// This node starts running the unit, from a checkpoint that stored
    /// `state` (called again when the checkpoint is reloaded).
    #[doc(hidden)]
    fn started(&self, _entity_type: &str, _shard: u32, _state: Option<&[u8]>) {}
    /// This node stopped running the unit.
    #[doc(hidden)]
    fn stopped(&self, _entity_type: &str, _shard: u32) {}
    /// The dispatcher only: its state changed without an event (a purged
    /// entity left it); store the checkpoint soon.
    #[doc(hidden)]
    fn wants_checkpoint(&self, _entity_type: &str, _shard: u32) -> bool {
        false
    }
    /// The dispatcher only: it keeps its state decoded in memory (its
    /// `handle` leaves `state` empty) and encodes it when the checkpoint
    /// is stored.
    #[doc(hidden)]
    fn checkpoint_state(&self, _entity_type: &str, _shard: u32) -> Option<Vec<u8>> {
        None
    }
}

/// A read model kept with its checkpoint: every event counted exactly once.
pub trait View: Send + Sync + 'static {
    /// Its state per unit.
    type State: Serialize + DeserializeOwned + Default + Send;
    /// Its name.
    fn name(&self) -> &str;
    /// The entity types it reads.
    fn entity_types(&self) -> Vec<String>;
    /// Applies one event.
    fn apply(&self, state: &mut Self::State, event: &FeedEvent);
}

/// A [`View`] as a [`Projection`].
pub fn view<V: View>(v: V) -> Arc<dyn Projection> {
    Arc::new(ViewProjection(v))
}

struct ViewProjection<V>(V);

#[async_trait::async_trait]
impl<V: View> Projection for ViewProjection<V> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn entity_types(&self) -> Vec<String> {
        self.0.entity_types()
    }
    fn keeps_state(&self) -> bool {
        true
    }
    async fn handle(&self, batch: ProjectionBatch<'_>, state: &mut Option<Vec<u8>>) -> Result<(), ProjectionError> {
        let mut s: V::State = match state.as_deref() {
            None => V::State::default(),
            Some(b) => tessera_entities::codec::from_msgpack(b).map_err(|e| {
                ProjectionError::Failed(format!("stored state of `{}` does not decode: {e}", self.name()))
            })?,
        };
        for e in batch.events {
            self.0.apply(&mut s, e);
        }
        *state = Some(
            rmp_serde::to_vec_named(&s)
                .map_err(|e| ProjectionError::Failed(format!("state of `{}` does not encode: {e}", self.name())))?,
        );
        Ok(())
    }
}

//! Tessera's journal: one [`Journal`] trait for per-entity event logs with
//! optimistic concurrency, snapshots and a per-shard feed; backends
//! [`MemoryJournal`] (tests) and [`LocalJournal`] (embedded, fjall, group
//! commit); and a [`conformance`] suite every backend passes.
//!
//! The journal stores opaque bytes: it knows nothing of entity types.
//!
//! ```
//! use futures::TryStreamExt;
//! use tessera_journal::{EntityKey, Journal, MemoryJournal, NewEvent};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let journal = MemoryJournal::default();
//! let stock = EntityKey::new("stock", "store-1:sku-1");
//! let ev = NewEvent { type_name: "Restocked".into(), version: 1, payload: b"..".to_vec(), metadata: vec![] };
//! journal.append(&stock, 0, vec![ev.clone()]).await?;
//! assert!(journal.append(&stock, 0, vec![ev]).await.is_err()); // seq 1 is taken
//! let events: Vec<_> = journal.read(&stock, 1..=u64::MAX).try_collect().await?;
//! assert_eq!(events[0].seq, 1);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

pub mod conformance;
mod error;
pub mod fault;
mod journal;
pub mod local;
mod memory;
mod paging;
pub mod scylla;
pub mod shard;
mod types;

pub use error::{AppendError, JournalError, OpenError};
pub use journal::{AppendDone, EntityStream, EventStream, Journal, ShardStream, StorageStats};
pub use local::{Durability, LocalJournal};
pub use memory::MemoryJournal;
pub use scylla::ScyllaJournal;
pub use shard::{DEFAULT_SHARDS, shard_of, token};

/// Entity types the runtime keeps for itself (e.g. projection checkpoints)
/// start with this; the Scylla journal writes no feed for them.
pub const INTERNAL_TYPE_PREFIX: &str = "tessera.";

/// Whether an event of this type is one of the runtime's records (under
/// [`INTERNAL_TYPE_PREFIX`]), not an entity's own: what the journals' feed
/// entries mark and `Journal::internal_by_shard` reads in full.
pub fn is_internal_type(type_name: &str) -> bool {
    type_name.starts_with(INTERNAL_TYPE_PREFIX)
}
pub use types::{
    AppendAck, AppendRequest, EntityInfo, EntityKey, FeedBounds, IdempotencyKey, LeaseCheck, NewEvent, PersistedEvent,
    ShardEvent, Snapshot,
};

//! The `Journal` trait: what every backend offers.

use std::ops::RangeInclusive;

use futures::stream::BoxStream;

use crate::error::{AppendError, JournalError};
use crate::types::{
    AppendAck, AppendRequest, EntityInfo, EntityKey, FeedBounds, NewEvent, PersistedEvent, ShardEvent, Snapshot,
};

/// A stream of one entity's events, read page by page as it is polled.
pub type EventStream = BoxStream<'static, Result<PersistedEvent, JournalError>>;
/// A stream of a shard's feed, read page by page as it is polled.
pub type ShardStream = BoxStream<'static, Result<ShardEvent, JournalError>>;
/// A stream of the entities of one type.
pub type EntityStream = BoxStream<'static, Result<EntityInfo, JournalError>>;
/// Told the outcome of an append given to [`Journal::commit_then`], once,
/// on whichever thread finished it.
pub type AppendDone = Box<dyn FnOnce(Result<AppendAck, AppendError>) + Send>;

/// An append-only, per-entity event journal.
///
/// Guarantees every backend keeps (checked by the conformance suite in
/// [`crate::conformance`]):
/// - seqs of an entity start at 1 and have no gaps;
/// - an append whose `expected_seq` is not the entity's last seq fails with
///   [`AppendError::Conflict`] and writes nothing; an acknowledged event is
///   never overwritten;
/// - the events of one append, and a snapshot given with them, are written
///   all or nothing;
/// - a fenced append (one with [`AppendRequest::fence`]) commits only while
///   the entity's fence equals the writer's epoch, so once a new owner has
///   raised the fence ([`Journal::raise_fence`]) no write of an older owner
///   lands, however late it arrives; unfenced appends ignore the fence;
/// - an append with an idempotency key the entity already committed (within
///   the key's retention) fails with [`AppendError::Duplicate`] and writes
///   nothing, however many appends came since;
/// - the shard feed holds every committed event once, at an offset assigned
///   by the unit's owner to committed appends only: 1, 2, 3, … per unit
///   without gaps, per entity in seq order, never appearing at or below an
///   offset a reader has already been given;
/// - reads are streamed in pages, so replaying millions of events holds one
///   page in memory.
#[async_trait::async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Commits one append: its events after `expected_seq` (the entity's
    /// current last seq, 0 for a new entity), atomically with its snapshot
    /// when one is given, only while the entity's fence is the request's
    /// epoch when it has one.
    async fn commit(&self, entity: &EntityKey, request: AppendRequest) -> Result<AppendAck, AppendError>;

    /// [`Self::commit`] for a backend that finishes appends on a thread of
    /// its own (the local journal's writer): the append is handed over and
    /// `done` is told its outcome from there, sparing the caller a task and
    /// a channel per append. Same guarantees as `commit`: `done` is told
    /// `Ok` only once the append is durable. A backend that does not offer
    /// it (the default) hands both back untouched; use `commit` then.
    fn commit_then(
        &self,
        entity: &EntityKey,
        request: AppendRequest,
        done: AppendDone,
    ) -> Option<(AppendRequest, AppendDone)> {
        let _ = entity;
        Some((request, done))
    }

    /// Raises the entity's fence to `epoch`, the writer's lease epoch: from
    /// then on only appends fenced with `epoch` commit (older owners' late
    /// writes fail with [`AppendError::Fenced`]). Raising to the current
    /// epoch is a no-op; a lower epoch than the current fence fails with
    /// `Fenced` and changes nothing. Does not change the last seq.
    async fn raise_fence(&self, entity: &EntityKey, epoch: u64) -> Result<(), AppendError>;

    /// Appends `events` after `expected_seq`, atomically with `snapshot` when
    /// one is given (unfenced).
    async fn append_with_snapshot(
        &self,
        entity: &EntityKey,
        expected_seq: u64,
        events: Vec<NewEvent>,
        snapshot: Option<Snapshot>,
    ) -> Result<AppendAck, AppendError> {
        self.commit(entity, AppendRequest::new(expected_seq, events).with_snapshot(snapshot)).await
    }

    /// Appends `events` after `expected_seq`.
    async fn append(
        &self,
        entity: &EntityKey,
        expected_seq: u64,
        events: Vec<NewEvent>,
    ) -> Result<AppendAck, AppendError> {
        self.append_with_snapshot(entity, expected_seq, events, None).await
    }

    /// The events of `entity` with seq in `range`, in order. Deleted events are skipped.
    fn read(&self, entity: &EntityKey, range: RangeInclusive<u64>) -> EventStream;

    /// The entity's last seq (0 if it has no events).
    async fn last_seq(&self, entity: &EntityKey) -> Result<u64, JournalError>;

    /// Stores a snapshot, replacing an older one. Its seq must not be past the last seq.
    async fn save_snapshot(&self, entity: &EntityKey, snapshot: Snapshot) -> Result<(), JournalError>;

    /// The latest snapshot, if any.
    async fn load_snapshot(&self, entity: &EntityKey) -> Result<Option<Snapshot>, JournalError>;

    /// The feed of one entity type in one shard (the unit a node holds a
    /// lease on) after `after_offset` (0 for the start), in offset order, up
    /// to what is committed now. Poll again with the last offset to follow.
    /// Starting behind the retention fails with [`JournalError::FeedExpired`].
    fn events_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream;

    /// [`Self::events_by_shard`] for a reader of the runtime's own records
    /// only (types under [`crate::INTERNAL_TYPE_PREFIX`]): every entry comes,
    /// in order, but one whose event is an entity's own may come unread
    /// ([`PersistedEvent::unread`]: its offset, entity, seq and time), even
    /// if the event was deleted since. A backend whose feed says which
    /// entries are records skips reading the others.
    fn internal_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream {
        self.events_by_shard(entity_type, shard, after_offset)
    }

    /// The extent of a feed: what retention removed, and the last committed offset.
    async fn feed_bounds(&self, entity_type: &str, shard: u32) -> Result<FeedBounds, JournalError>;

    /// The lease of the unit was acquired under `epoch`: settle what earlier
    /// owners left unresolved in its feed, so that every committed event
    /// becomes visible without waiting for the new owner's first append
    /// (Scylla); a no-op where offsets are final at commit (local, memory).
    async fn open_feed(&self, entity_type: &str, shard: u32, epoch: u64) -> Result<(), JournalError> {
        let _ = (entity_type, shard, epoch);
        Ok(())
    }

    /// The seq at which the entity committed idempotency key `key` (the last
    /// event of that append), if it is still remembered.
    async fn find_key(&self, entity: &EntityKey, key: &str) -> Result<Option<u64>, JournalError>;

    /// Deletes the entity's events up to `seq` (clamped to its last seq). Seqs
    /// are never reused: later appends continue after the last seq.
    async fn delete_to(&self, entity: &EntityKey, seq: u64) -> Result<(), JournalError>;

    /// Removes everything the journal holds of the entity: its events, its
    /// snapshot, its idempotency keys, its fence, its entry in the entity
    /// list and its entries in the shard feed (later offsets are not
    /// renumbered: a feed reader skips the hole). Purging an entity the
    /// journal does not know is a no-op. The caller makes sure nothing is
    /// appended to the entity meanwhile (the runtime purges only an entity
    /// whose last event is its tombstone); afterwards the entity has no
    /// journal, and a new append starts it again at seq 1.
    async fn purge(&self, entity: &EntityKey) -> Result<(), JournalError>;

    /// The entities of a type that have a journal, ordered by id.
    fn entities(&self, entity_type: &str) -> EntityStream;

    /// The number of shards the feed is partitioned by.
    fn shards(&self) -> u32;

    /// What an embedded storage engine holds in memory now (the local
    /// journal); `None` for a journal that keeps its data elsewhere.
    fn storage_stats(&self) -> Option<StorageStats> {
        None
    }
}

/// Memory an embedded storage engine holds, for metrics and the soak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageStats {
    /// Bytes in memtables, active and sealed (written, not yet in a table file).
    pub write_buffer_bytes: u64,
    /// Bytes in the block cache.
    pub cache_bytes: u64,
    /// Sealed memtables waiting to be written to table files.
    pub outstanding_flushes: u64,
}

impl StorageStats {
    /// The figures of a fjall database.
    pub fn of_fjall(db: &fjall::Database) -> Self {
        Self {
            write_buffer_bytes: db.write_buffer_size(),
            cache_bytes: db.cache_size(),
            outstanding_flushes: db.outstanding_flushes() as u64,
        }
    }
}

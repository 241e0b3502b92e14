//! The records a journal stores: opaque payloads with the little metadata
//! every layer needs (sequence numbers, times, type names, versions).

use std::fmt;

/// Which entity a journal stream belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey {
    /// The entity type, e.g. `stock`.
    pub entity_type: String,
    /// The entity id, any UTF-8, e.g. `store-7:sku-42`.
    pub entity_id: String,
}

impl EntityKey {
    /// A key from its parts.
    pub fn new(entity_type: impl Into<String>, entity_id: impl Into<String>) -> Self {
        Self { entity_type: entity_type.into(), entity_id: entity_id.into() }
    }
    /// The entity's shard among `shards`.
    pub fn shard(&self, shards: u32) -> u32 {
        crate::shard::shard_of(&self.entity_type, &self.entity_id, shards)
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.entity_type, self.entity_id)
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event's type name.
    pub type_name: String,
    /// The event's schema version.
    pub version: u32,
    /// The event itself (opaque to the journal).
    pub payload: Vec<u8>,
    /// Runtime metadata (opaque to the journal): invocation id, reply.
    pub metadata: Vec<u8>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedEvent {
    /// Position in the entity's journal, from 1, without gaps.
    pub seq: u64,
    /// When the append that wrote it committed, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The event's type name.
    pub type_name: String,
    /// The event's schema version.
    pub version: u32,
    /// The event itself.
    pub payload: Vec<u8>,
    /// Runtime metadata.
    pub metadata: Vec<u8>,
}

impl PersistedEvent {
    /// An event known by its place only (see [`crate::Journal::internal_by_shard`]):
    /// empty type name, payload and metadata.
    pub fn unread(seq: u64, timestamp_ms: i64) -> Self {
        Self { seq, timestamp_ms, type_name: String::new(), version: 0, payload: Vec::new(), metadata: Vec::new() }
    }
}

/// An entity's state at some seq, to start replay from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The seq of the last event the state includes.
    pub seq: u64,
    /// The encoding's version (the runtime's and the entity's concern).
    pub version: u32,
    /// When it was taken, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The encoded state.
    pub payload: Vec<u8>,
}

/// One append: the events to write after `expected_seq`, optionally a
/// snapshot written atomically with them, and the writer's fencing epoch.
///
/// ```
/// use tessera_journal::{AppendRequest, NewEvent};
/// let ev = NewEvent { type_name: "Restocked".into(), version: 1, payload: vec![], metadata: vec![] };
/// let req = AppendRequest::new(4, vec![ev]).fenced(17);
/// assert_eq!((req.expected_seq, req.fence), (4, Some(17)));
/// ```
#[derive(Clone)]
pub struct AppendRequest {
    /// The entity's current last seq (0 for a new entity).
    pub expected_seq: u64,
    /// The events, at least one.
    pub events: Vec<NewEvent>,
    /// A snapshot written all-or-nothing with the events.
    pub snapshot: Option<Snapshot>,
    /// The writer's lease epoch: when set, the append commits only while the
    /// entity's fence (see [`crate::Journal::raise_fence`]) equals it.
    /// `None`: an unfenced writer (one node owns everything).
    pub fence: Option<u64>,
    /// The idempotency keys of the invocations in the append (one per
    /// invocation that carried one; a runtime that batches several commands
    /// of an entity into one append gives several): the append commits only
    /// if the entity has committed none of them within its retention (else
    /// [`crate::AppendError::Duplicate`] naming the first found, nothing
    /// written), and records each at its own seq.
    pub keys: Vec<IdempotencyKey>,
    /// The writer's lease, asked right before the commit is sent (after
    /// anything written ahead of it, such as a feed entry, is durable):
    /// `false` fails the append with [`crate::AppendError::Fenced`], nothing written.
    pub lease: Option<LeaseCheck>,
}

/// Whether the writer still holds its lease (see [`AppendRequest::lease`]).
pub type LeaseCheck = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("expected_seq", &self.expected_seq)
            .field("events", &self.events.len())
            .field("snapshot", &self.snapshot.as_ref().map(|s| s.seq))
            .field("fence", &self.fence)
            .field("keys", &self.keys)
            .field("lease", &self.lease.is_some())
            .finish()
    }
}

/// An idempotency key recorded with an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key (the invocation id the caller gave).
    pub key: String,
    /// How long it is remembered after the commit, ms.
    pub retain_ms: i64,
    /// The seq it is recorded at: the last event of its invocation (whose
    /// metadata holds the reply), within the append.
    pub seq: u64,
}

/// The extent of a shard's feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedBounds {
    /// Entries up to this offset were removed by retention (0: none).
    pub expired_to: u64,
    /// The last committed offset (0: none yet).
    pub last: u64,
}

impl AppendRequest {
    /// Events after `expected_seq`, no snapshot, unfenced.
    pub fn new(expected_seq: u64, events: Vec<NewEvent>) -> Self {
        Self { expected_seq, events, snapshot: None, fence: None, keys: Vec::new(), lease: None }
    }
    /// Asks `check` whether the lease is still held right before the commit.
    pub fn with_lease(mut self, check: LeaseCheck) -> Self {
        self.lease = Some(check);
        self
    }
    /// Whether the lease (if any) is still held.
    pub fn lease_held(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l())
    }
    /// Records (and checks) an idempotency key at the append's last event,
    /// remembered for `retain`. Call after the events are set.
    pub fn with_key(self, key: impl Into<String>, retain: std::time::Duration) -> Self {
        let seq = self.expected_seq + self.events.len() as u64;
        self.with_key_at(key, retain, seq)
    }
    /// Records (and checks) an idempotency key at `seq`, one of the append's
    /// events (the last of its invocation's), remembered for `retain`; keys
    /// are added in ascending seq order.
    pub fn with_key_at(mut self, key: impl Into<String>, retain: std::time::Duration, seq: u64) -> Self {
        let retain_ms = retain.as_millis().min(i64::MAX as u128) as i64;
        self.keys.push(IdempotencyKey { key: key.into(), retain_ms, seq });
        self
    }
    /// The keys are well formed: each at one of the append's seqs, in
    /// ascending seq order (so no seq twice), no key twice. Linear: it runs
    /// on the local journal's single writer thread.
    pub fn check_keys(&self) -> Result<(), crate::JournalError> {
        let invalid = |m: String| Err(crate::JournalError::Invalid(m));
        let mut after = self.expected_seq;
        let last = self.expected_seq + self.events.len() as u64;
        for k in &self.keys {
            if k.seq <= after || k.seq > last {
                return invalid(format!(
                    "idempotency key {:?} at seq {}: keys go in ascending seq order within the append ({}..={last})",
                    k.key,
                    k.seq,
                    self.expected_seq + 1
                ));
            }
            after = k.seq;
        }
        if self.keys.len() > 1 {
            let mut seen = std::collections::HashSet::with_capacity(self.keys.len());
            if let Some(k) = self.keys.iter().find(|k| !seen.insert(k.key.as_str())) {
                return invalid(format!("idempotency key {:?} appears twice in one append", k.key));
            }
        }
        Ok(())
    }
    /// Writes `snapshot` atomically with the events.
    pub fn with_snapshot(mut self, snapshot: Option<Snapshot>) -> Self {
        self.snapshot = snapshot;
        self
    }
    /// Commits only while the entity's fence is `epoch`.
    pub fn fenced(mut self, epoch: u64) -> Self {
        self.fence = Some(epoch);
        self
    }
    /// Sets or clears the fence.
    pub fn with_fence(mut self, epoch: Option<u64>) -> Self {
        self.fence = epoch;
        self
    }
}

/// A successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    /// The seq of the first event written.
    pub first_seq: u64,
    /// The seq of the last event written: the entity's new last seq.
    pub last_seq: u64,
    /// The commit time stored with the events.
    pub timestamp_ms: i64,
}

/// One entry of a shard's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEvent {
    /// Position in the unit's feed: assigned by the unit's owner to
    /// committed appends only, 1, 2, 3, … without gaps, per entity in seq
    /// order.
    pub offset: u64,
    /// The entity the event belongs to.
    pub entity: EntityKey,
    /// The event.
    pub event: PersistedEvent,
}

/// What the journal knows of one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityInfo {
    /// The entity's id.
    pub entity_id: String,
    /// Its last seq.
    pub last_seq: u64,
    /// Events up to this seq were deleted (0: none).
    pub deleted_to: u64,
}

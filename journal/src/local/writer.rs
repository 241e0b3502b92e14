//! The group-commit writer: one thread takes every queued write, validates
//! each append against the entities' last seqs, fences and idempotency
//! keys, writes all of them in one fjall batch with one durable commit, and
//! only then acknowledges them. After a commit that failed to reach the
//! disk it refuses writes with the cause until the disk takes writes again,
//! then reopens the store ([`super::store`]).
//!
//! The writer is also the single writer of the shard feeds: it assigns each
//! committed event the next offset of its shard in the same batch as the
//! event, so offsets are gapless per shard, in seq order per entity, and a
//! crash can lose neither an event nor its feed entry (they commit
//! together). Retention: a sweep every few seconds finds feed entries and
//! idempotency keys past their time on its own thread ([`super::sweep`]);
//! the writer removes them between group commits and records per shard the
//! last offset it removed (a reader behind it gets `FeedExpired`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use fjall::{Keyspace, PersistMode};
use tokio::sync::oneshot;

use super::format::{self, EntityMeta};
use super::meta_cache::{self, MetaCache};
use super::store::{self, Shared, Store};
use super::sweep::{Ask, Removal, Sweeper};
use crate::error::{AppendError, JournalError};
use crate::memory::now_ms;
use crate::types::{AppendAck, AppendRequest, EntityKey, IdempotencyKey, Snapshot};

/// Where an append's outcome goes: a channel its caller awaits, or a
/// completion called on the writer thread ([`crate::Journal::commit_then`]).
pub(crate) enum AppendReply {
    Channel(oneshot::Sender<Result<AppendAck, AppendError>>),
    Call(Completion),
}

impl AppendReply {
    pub(crate) fn call(done: crate::journal::AppendDone) -> Self {
        Self::Call(Completion(Some(done)))
    }

    pub(crate) fn send(self, result: Result<AppendAck, AppendError>) {
        match self {
            Self::Channel(tx) => drop(tx.send(result)),
            Self::Call(mut c) => {
                if let Some(done) = c.0.take() {
                    done(result)
                }
            }
        }
    }
}

/// A completion that is told `Closed` if it is dropped untold (a writer
/// gone with ops queued), as a dropped channel tells its receiver.
pub(crate) struct Completion(Option<crate::journal::AppendDone>);

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(Err(JournalError::Closed.into()))
        }
    }
}

/// A write queued for the writer thread.
pub(crate) enum Op {
    Append {
        key: EntityKey,
        request: AppendRequest,
        ack: AppendReply,
    },
    RaiseFence {
        key: EntityKey,
        epoch: u64,
        ack: oneshot::Sender<Result<(), AppendError>>,
    },
    Snapshot {
        key: EntityKey,
        snapshot: Snapshot,
        ack: oneshot::Sender<Result<(), JournalError>>,
    },
    DeleteTo {
        key: EntityKey,
        seq: u64,
        ack: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Removes the entity's rows; `feed` holds its feed entries' keys (read off the writer thread).
    Purge {
        key: EntityKey,
        feed: Vec<Vec<u8>>,
        ack: oneshot::Sender<Result<(), JournalError>>,
    },
}

impl Op {
    /// Answers the op with `err` without running it.
    pub(crate) fn fail(self, err: &JournalError) {
        match self {
            Self::Append { ack, .. } => ack.send(Err(err.clone().into())),
            Self::RaiseFence { ack, .. } => drop(ack.send(Err(err.clone().into()))),
            Self::Snapshot { ack, .. } | Self::DeleteTo { ack, .. } | Self::Purge { ack, .. } => {
                drop(ack.send(Err(err.clone())))
            }
        }
    }
}

/// Observations of each commit, for metrics.
pub type CommitObserver = Box<dyn Fn(usize, std::time::Duration) + Send + Sync>;

/// Most removals of expired rows in one batch between group commits (a
/// larger backlog goes on after the next group commit).
const EXPIRE_CHUNK: usize = 2_000;

/// A group commit at least this long is logged at debug, its time split
/// into building the batch and committing it (the write-ahead journal's
/// write and `fdatasync`, then the memtable inserts).
const SLOW_GROUP_COMMIT: Duration = Duration::from_millis(20);

/// How soon a writer with no writes looks again for a sweep's findings.
const SWEEP_POLL: Duration = Duration::from_millis(20);

/// How the writer is set up.
pub(crate) struct WriterOptions {
    pub(crate) durability: Option<PersistMode>,
    pub(crate) max_batch: usize,
    pub(crate) shards: u32,
    pub(crate) feed_retention: Duration,
    pub(crate) observer: Option<CommitObserver>,
}

/// A commit failed to reach the disk: writes are refused until a reopen.
struct Broken {
    cause: String,
    next_try: Instant,
}

/// How often a broken writer probes the disk.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// What the probe writes: room for fjall's recovery and a new journal file.
const PROBE_BYTES: usize = 4 << 20;

pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// The store writes go to (`None` only while broken, after a failed reopen).
    current: Option<Arc<Store>>,
    broken: Option<Broken>,
    o: WriterOptions,
    cache: MetaCache,
    /// The last offset assigned per feed unit (type × shard; loaded on first use).
    feed_last: HashMap<Vec<u8>, u64>,
    last_sweep: Instant,
    sweeper: Sweeper,
    /// Rows a sweep found past their time, not yet removed.
    expiring: VecDeque<Removal>,
}

enum Done {
    Append(AppendReply, AppendAck),
    Unit(oneshot::Sender<Result<(), JournalError>>),
    Fence(oneshot::Sender<Result<(), AppendError>>),
}

impl Done {
    fn ok(self) {
        match self {
            Self::Append(ack, a) => ack.send(Ok(a)),
            Self::Unit(ack) => drop(ack.send(Ok(()))),
            Self::Fence(ack) => drop(ack.send(Ok(()))),
        }
    }
    fn fail(self, err: &JournalError) {
        match self {
            Self::Append(ack, _) => ack.send(Err(err.clone().into())),
            Self::Unit(ack) => drop(ack.send(Err(err.clone()))),
            Self::Fence(ack) => drop(ack.send(Err(err.clone().into()))),
        }
    }
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, o: WriterOptions) -> Result<Self, JournalError> {
        let current = Some(shared.get()?);
        let (cache, feed_last) = (MetaCache::new(meta_cache::GENERATION), HashMap::new());
        let sweeper = Sweeper::start(shared.clone()).map_err(unavailable)?;
        let (last_sweep, expiring) = (Instant::now(), VecDeque::new());
        Ok(Self { shared, current, broken: None, o, cache, feed_last, last_sweep, sweeper, expiring })
    }

    /// The store to write to. Only called while not broken.
    fn s(&self) -> &Store {
        self.current.as_deref().expect("a writer that is not broken has a store")
    }

    /// A commit failed: refuse writes until the disk takes them again.
    fn broke(&mut self, e: &fjall::Error) -> JournalError {
        let cause = store::describe(e);
        tracing::error!(error = %e, "journal write failed ({cause}); writes are refused until the disk takes them again");
        self.broken = Some(Broken { cause: cause.clone(), next_try: Instant::now() + PROBE_EVERY });
        JournalError::Unavailable(format!(
            "journal write failed: {cause}; writes resume when the disk takes them again"
        ))
    }

    /// While broken: when the disk takes a write again, reopen the store.
    fn heal(&mut self) {
        let Some(b) = &mut self.broken else { return };
        if Instant::now() < b.next_try {
            return;
        }
        b.next_try = Instant::now() + PROBE_EVERY;
        if !store::accepts_writes(self.shared.dir(), PROBE_BYTES) {
            return;
        }
        match self.shared.reopen(self.current.take()) {
            Ok(s) => {
                self.current = Some(s);
                self.cache.clear();
                self.feed_last.clear();
                self.expiring.clear();
                let was = self.broken.take().map(|b| b.cause).unwrap_or_default();
                tracing::warn!(after = %was, "journal reopened: writes accepted again");
            }
            Err(e) => {
                tracing::warn!(error = %e, "journal reopen failed; retried in a second");
                if let Some(b) = &mut self.broken {
                    b.cause = format!("{} (reopen failed: {e})", b.cause);
                }
            }
        }
    }

    fn sweep_every(&self) -> Duration {
        (self.o.feed_retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    pub(crate) fn run(mut self, rx: Receiver<Op>) {
        let mut ops = Vec::with_capacity(self.o.max_batch);
        loop {
            let busy = self.sweeper.in_flight || !self.expiring.is_empty();
            match rx.recv_timeout(if busy { SWEEP_POLL } else { self.sweep_every() }) {
                Ok(first) => ops.push(first),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while !ops.is_empty() && ops.len() < self.o.max_batch {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.heal();
            if let Some(b) = &self.broken {
                let err = JournalError::Unavailable(format!(
                    "journal write failed earlier: {}; writes resume when the disk takes them again",
                    b.cause
                ));
                for op in ops.drain(..) {
                    op.fail(&err);
                }
                continue;
            }
            if !ops.is_empty() {
                self.commit_group(&mut ops);
            }
            self.retention();
        }
    }

    /// Between group commits: takes a sweep's findings, removes a chunk of
    /// them, and asks for the next sweep when the last one's are gone.
    fn retention(&mut self) {
        match self.sweeper.take() {
            Some(Ok(found)) => self.expiring.extend(found),
            Some(Err(e)) => tracing::warn!(error = %e, "journal retention sweep failed; retried on the next one"),
            None => {}
        }
        if self.broken.is_some() {
            return;
        }
        if !self.expiring.is_empty() {
            if let Err(e) = self.expire_some() {
                tracing::warn!(error = %e, "removing expired journal rows failed; retried on the next sweep");
                self.expiring.clear();
            }
        } else if !self.sweeper.in_flight && self.last_sweep.elapsed() >= self.sweep_every() {
            self.last_sweep = Instant::now();
            let now = now_ms();
            let cutoff = now.saturating_sub(self.o.feed_retention.as_millis().min(i64::MAX as u128) as i64);
            self.sweeper.ask(Ask { now, cutoff });
        }
    }

    /// The entity's meta: pending in this group, cached, or read (the index
    /// row, its last seq raised to the last event's: see [`EntityMeta`]).
    fn meta(
        &mut self,
        pending: &HashMap<Vec<u8>, EntityMeta>,
        key: &EntityKey,
        ikey: &[u8],
    ) -> Result<EntityMeta, JournalError> {
        if let Some(m) = pending.get(ikey).copied().or_else(|| self.cache.get(ikey)) {
            return Ok(m);
        }
        let mut m = match self.s().ks.index.get(ikey).map_err(unavailable)? {
            None => EntityMeta::default(),
            Some(v) => format::decode_meta(&v).map_err(|detail| JournalError::Corrupt {
                entity: key.to_string(),
                seq: 0,
                detail,
            })?,
        };
        let last = format::last_event_seq(&self.s().ks.events, &format::entity_prefix(key)).map_err(unavailable)?;
        m.last_seq = m.last_seq.max(last);
        self.cache.insert(ikey.to_vec(), m);
        Ok(m)
    }

    /// The last offset of a unit's feed: its last entry, or the last one
    /// retention removed when the feed is empty.
    fn feed_last(&mut self, unit: &[u8]) -> Result<u64, JournalError> {
        if let Some(l) = self.feed_last.get(unit) {
            return Ok(*l);
        }
        let meta = &self.s().ks.meta;
        let last = last_offset(&self.s().ks.feed, unit)?.max(expired_to(meta, unit)?).max(floor(meta, unit)?);
        self.feed_last.insert(unit.to_vec(), last);
        Ok(last)
    }

    /// The seq an entity committed a key at, when it is still remembered at `now`.
    fn remembered(&self, entity: &EntityKey, key: &str, now: i64) -> Result<Option<u64>, JournalError> {
        let Some(v) = self.s().ks.keys.get(format::key_key(entity, key)).map_err(unavailable)? else { return Ok(None) };
        let (seq, expires) = format::decode_key_record(&v).map_err(|detail| JournalError::Corrupt {
            entity: entity.to_string(),
            seq: 0,
            detail,
        })?;
        Ok((expires > now).then_some(seq))
    }

    /// The first of `keys` the entity committed and still remembers, with its seq.
    fn first_remembered(
        &self,
        entity: &EntityKey,
        keys: &[IdempotencyKey],
        now: i64,
    ) -> Result<Option<(String, u64)>, JournalError> {
        for k in keys {
            if let Some(seq) = self.remembered(entity, &k.key, now)? {
                return Ok(Some((k.key.clone(), seq)));
            }
        }
        Ok(None)
    }

    /// Writes every op it can into one batch, commits once, then acks.
    fn commit_group(&mut self, ops: &mut Vec<Op>) {
        let started = std::time::Instant::now();
        let mut batch = self.s().db.batch().durability(self.o.durability);
        let mut pending: HashMap<Vec<u8>, EntityMeta> = HashMap::new();
        let mut feed_pending: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut done: Vec<Done> = Vec::with_capacity(ops.len());
        let timestamp_ms = now_ms();
        let mut deferred = Vec::new();

        for op in ops.drain(..) {
            match op {
                Op::Append { key, request, ack } => {
                    let lease_held = request.lease_held();
                    if let Err(e) = request.check_keys() {
                        ack.send(Err(e.into()));
                        continue;
                    }
                    let AppendRequest { expected_seq: expected, events, snapshot, fence, keys: idem, .. } = request;
                    let ikey = format::index_key(&key);
                    let mut m = match self.meta(&pending, &key, &ikey) {
                        Ok(m) => m,
                        Err(e) => {
                            ack.send(Err(e.into()));
                            continue;
                        }
                    };
                    if events.is_empty() {
                        ack.send(Err(JournalError::Invalid("append of no events".into()).into()));
                        continue;
                    }
                    if let Some(epoch) = fence.filter(|e| *e != m.fence || !lease_held) {
                        ack.send(Err(AppendError::Fenced { entity: key.to_string(), epoch, current: m.fence }));
                        continue;
                    }
                    if m.last_seq != expected {
                        ack.send(Err(AppendError::Conflict { entity: key.to_string(), expected, actual: m.last_seq }));
                        continue;
                    }
                    // One append per entity is in a group at most (single
                    // writer per entity), so the committed index is the truth.
                    match self.first_remembered(&key, &idem, timestamp_ms) {
                        Ok(None) => {}
                        Ok(Some((k, seq))) => {
                            ack.send(Err(AppendError::Duplicate { entity: key.to_string(), key: k, seq }));
                            continue;
                        }
                        Err(e) => {
                            ack.send(Err(e.into()));
                            continue;
                        }
                    }
                    let last_seq = expected + events.len() as u64;
                    if let Some(s) = &snapshot {
                        if s.seq > last_seq {
                            let msg = format!("snapshot seq {} is past {last_seq}", s.seq);
                            ack.send(Err(JournalError::Invalid(msg).into()));
                            continue;
                        }
                        batch.insert(&self.s().ks.snapshots, ikey.clone(), format::encode_snapshot(s));
                    }
                    let prefix = format::entity_prefix(&key);
                    let unit = format::unit_prefix(&key.entity_type, key.shard(self.o.shards));
                    let mut offset = match feed_pending.get(&unit) {
                        Some(o) => *o,
                        None => match self.feed_last(&unit) {
                            Ok(0) => {
                                let mut mark = format::UNIT_MARK.to_vec();
                                mark.extend_from_slice(&unit);
                                batch.insert(&self.s().ks.meta, mark, Vec::<u8>::new());
                                0
                            }
                            Ok(o) => o,
                            Err(e) => {
                                ack.send(Err(e.into()));
                                continue;
                            }
                        },
                    };
                    for (i, e) in events.iter().enumerate() {
                        let seq = expected + 1 + i as u64;
                        let record =
                            format::encode_event(timestamp_ms, &e.type_name, e.version, &e.payload, &e.metadata);
                        batch.insert(&self.s().ks.events, format::event_key(&prefix, seq), record);
                        offset += 1;
                        let internal = crate::is_internal_type(&e.type_name);
                        let feed_ref = format::encode_feed_ref(&prefix, seq, timestamp_ms, internal);
                        batch.insert(&self.s().ks.feed, format::feed_key(&unit, offset), feed_ref);
                    }
                    feed_pending.insert(unit, offset);
                    for k in idem {
                        let kk = format::key_key(&key, &k.key);
                        let expires = timestamp_ms.saturating_add(k.retain_ms);
                        batch.insert(&self.s().ks.keys, kk.clone(), format::encode_key_record(k.seq, expires));
                        batch.insert(&self.s().ks.key_expiry, format::key_expiry(expires, &kk), Vec::<u8>::new());
                    }
                    m.last_seq = last_seq;
                    // The index row is written with the entity's first
                    // events only; later appends are found by their event
                    // keys (`EntityMeta`): one memtable insert fewer each.
                    if expected == 0 {
                        batch.insert(&self.s().ks.index, ikey.clone(), format::encode_meta(m));
                    }
                    pending.insert(ikey, m);
                    done.push(Done::Append(ack, AppendAck { first_seq: expected + 1, last_seq, timestamp_ms }));
                }
                Op::RaiseFence { key, epoch, ack } => {
                    let ikey = format::index_key(&key);
                    match self.meta(&pending, &key, &ikey) {
                        Err(e) => {
                            let _ = ack.send(Err(e.into()));
                        }
                        Ok(m) if m.fence > epoch => {
                            let _ =
                                ack.send(Err(AppendError::Fenced { entity: key.to_string(), epoch, current: m.fence }));
                        }
                        Ok(m) if m.fence == epoch => {
                            let _ = ack.send(Ok(()));
                        }
                        Ok(mut m) => {
                            m.fence = epoch;
                            batch.insert(&self.s().ks.index, ikey.clone(), format::encode_meta(m));
                            pending.insert(ikey, m);
                            done.push(Done::Fence(ack));
                        }
                    }
                }
                Op::Snapshot { key, snapshot, ack } => {
                    let ikey = format::index_key(&key);
                    match self.meta(&pending, &key, &ikey) {
                        Err(e) => {
                            let _ = ack.send(Err(e));
                        }
                        Ok(m) if snapshot.seq > m.last_seq => {
                            let msg = format!("snapshot seq {} is past last seq {}", snapshot.seq, m.last_seq);
                            let _ = ack.send(Err(JournalError::Invalid(msg)));
                        }
                        Ok(_) => {
                            batch.insert(&self.s().ks.snapshots, ikey, format::encode_snapshot(&snapshot));
                            done.push(Done::Unit(ack));
                        }
                    }
                }
                // A delete scans committed keys, so it runs after this batch commits.
                op @ (Op::DeleteTo { .. } | Op::Purge { .. }) => deferred.push(op),
            }
        }

        if !batch.is_empty() {
            let n = done.len();
            crate::fault::point("local.before_commit");
            let built = started.elapsed();
            match batch.commit() {
                Ok(()) => {
                    crate::fault::point("local.after_commit");
                    let took = started.elapsed();
                    if took >= SLOW_GROUP_COMMIT {
                        // Measured (BENCHMARKS.md, tenth session): when one is
                        // slow, it is the commit (the journal's fdatasync), not
                        // the building of the batch.
                        tracing::debug!(writes = n, build = ?built, commit = ?(took - built), "slow group commit");
                    }
                    self.cache.extend(pending);
                    self.feed_last.extend(feed_pending);
                    for d in done {
                        d.ok();
                    }
                    if let Some(obs) = &self.o.observer {
                        obs(n, took);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal commit failed; {n} writes rejected");
                    let err = self.broke(&e);
                    for d in done {
                        d.fail(&err);
                    }
                }
            }
        }
        for op in deferred {
            match op {
                Op::DeleteTo { key, seq, ack } => drop(ack.send(self.delete_to(&key, seq))),
                Op::Purge { key, feed, ack } => drop(ack.send(self.purge(&key, feed))),
                _ => {}
            }
        }
    }

    /// Removes up to [`EXPIRE_CHUNK`] expired rows in one batch, without an
    /// `fsync` of its own (the next group commit's makes it durable; one
    /// lost in a crash is found again by the next sweep). A unit's marker
    /// moves to the last offset removed; a key's record goes only while it
    /// still expires when its `key_expiry` entry says (it may have been
    /// remembered anew since the sweep read it).
    fn expire_some(&mut self) -> Result<(), JournalError> {
        let chunk: Vec<Removal> = self.expiring.drain(..EXPIRE_CHUNK.min(self.expiring.len())).collect();
        let ks = &self.s().ks;
        let mut batch = self.s().db.batch().durability(None);
        let mut marks: HashMap<Arc<[u8]>, u64> = HashMap::new();
        for r in chunk {
            match r {
                Removal::Feed { unit, key } => {
                    let m = marks.entry(unit).or_default();
                    *m = (*m).max(format::feed_offset(&key));
                    batch.remove(&ks.feed, key);
                }
                Removal::Key(k) => {
                    let (Some(at), Some(kk)) = (k.get(..8).and_then(format::decode_u64), k.get(8..)) else { continue };
                    let record = ks.keys.get(kk).map_err(unavailable)?;
                    let still = record.and_then(|v| format::decode_key_record(&v).ok()).map(|(_, e)| e.max(0) as u64);
                    if still == Some(at) {
                        batch.remove(&ks.keys, kk.to_vec());
                    }
                    batch.remove(&ks.key_expiry, k);
                }
            }
        }
        for (unit, to) in marks {
            batch.insert(&ks.meta, format::expired_key(&unit), to.to_be_bytes().to_vec());
        }
        if !batch.is_empty() {
            batch.commit().map_err(|e| self.broke(&e))?;
        }
        Ok(())
    }

    fn delete_to(&mut self, key: &EntityKey, seq: u64) -> Result<(), JournalError> {
        let ikey = format::index_key(key);
        let mut m = self.meta(&HashMap::new(), key, &ikey)?;
        let to = seq.min(m.last_seq);
        if to <= m.deleted_to {
            return Ok(());
        }
        let prefix = format::entity_prefix(key);
        let mut batch = self.s().db.batch().durability(self.o.durability);
        for item in
            self.s().ks.events.range(format::event_key(&prefix, m.deleted_to + 1)..=format::event_key(&prefix, to))
        {
            let k = item.key().map_err(unavailable)?;
            batch.remove(&self.s().ks.events, k);
        }
        m.deleted_to = to;
        batch.insert(&self.s().ks.index, ikey.clone(), format::encode_meta(m));
        batch.commit().map_err(|e| self.broke(&e))?;
        self.cache.insert(ikey, m);
        Ok(())
    }
}

impl Writer {
    /// Removes every row of the entity, and `feed` (its feed entries), in
    /// one batch; the unit's last offset is kept as its floor.
    fn purge(&mut self, key: &EntityKey, feed: Vec<Vec<u8>>) -> Result<(), JournalError> {
        let ikey = format::index_key(key);
        let prefix = format::entity_prefix(key);
        let unit = format::unit_prefix(&key.entity_type, key.shard(self.o.shards));
        let last = self.feed_last(&unit)?;
        let ks = &self.s().ks;
        let mut batch = self.s().db.batch().durability(self.o.durability);
        for item in ks.events.prefix(&prefix) {
            batch.remove(&ks.events, item.key().map_err(unavailable)?);
        }
        for item in ks.keys.prefix(&prefix) {
            let (k, v) = item.into_inner().map_err(unavailable)?;
            if let Ok((_, expires)) = format::decode_key_record(&v) {
                batch.remove(&ks.key_expiry, format::key_expiry(expires, &k));
            }
            batch.remove(&ks.keys, k);
        }
        batch.remove(&ks.index, ikey.clone());
        batch.remove(&ks.snapshots, ikey.clone());
        if !feed.is_empty() {
            batch.insert(&ks.meta, format::floor_key(&unit), last.to_be_bytes().to_vec());
        }
        for k in feed {
            batch.remove(&ks.feed, k);
        }
        batch.commit().map_err(|e| self.broke(&e))?;
        self.cache.remove(&ikey);
        Ok(())
    }
}

/// The unit's floor: its last offset when a purge removed entries (0: none).
pub(crate) fn floor(meta: &Keyspace, unit: &[u8]) -> Result<u64, JournalError> {
    Ok(meta.get(format::floor_key(unit)).map_err(unavailable)?.and_then(|v| format::decode_u64(&v)).unwrap_or(0))
}

/// The last offset of a unit's feed (0: empty).
pub(crate) fn last_offset(feed: &Keyspace, unit: &[u8]) -> Result<u64, JournalError> {
    let range = format::feed_key(unit, 0)..=format::feed_key(unit, u64::MAX);
    match feed.range(range).next_back() {
        Some(item) => Ok(format::feed_offset(&item.key().map_err(unavailable)?)),
        None => Ok(0),
    }
}

/// The last offset retention removed from a unit's feed (0: none).
pub(crate) fn expired_to(meta: &Keyspace, unit: &[u8]) -> Result<u64, JournalError> {
    Ok(meta.get(format::expired_key(unit)).map_err(unavailable)?.and_then(|v| format::decode_u64(&v)).unwrap_or(0))
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(e.to_string())
}

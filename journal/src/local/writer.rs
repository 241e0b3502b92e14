//! The group-commit writer: one thread takes every queued write, validates
//! each append against the entities' last seqs, fences and idempotency
//! keys, writes all of them in one fjall batch with one durable commit, and
//! only then acknowledges them.
//!
//! The writer is also the single writer of the shard feeds: it assigns each
//! committed event the next offset of its shard in the same batch as the
//! event, so offsets are gapless per shard, in seq order per entity, and a
//! crash can lose neither an event nor its feed entry (they commit
//! together). Retention: a sweep every few seconds removes feed entries and
//! idempotency keys past their time, and records per shard the last offset
//! it removed (a reader behind it gets `FeedExpired`).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, PersistMode};
use tokio::sync::oneshot;

use super::format::{self, EntityMeta};
use crate::error::{AppendError, JournalError};
use crate::memory::now_ms;
use crate::types::{AppendAck, AppendRequest, EntityKey, Snapshot};

/// A write queued for the writer thread.
pub(crate) enum Op {
    Append { key: EntityKey, request: AppendRequest, ack: oneshot::Sender<Result<AppendAck, AppendError>> },
    RaiseFence { key: EntityKey, epoch: u64, ack: oneshot::Sender<Result<(), AppendError>> },
    Snapshot { key: EntityKey, snapshot: Snapshot, ack: oneshot::Sender<Result<(), JournalError>> },
    DeleteTo { key: EntityKey, seq: u64, ack: oneshot::Sender<Result<(), JournalError>> },
}

/// Observations of each commit, for metrics.
pub type CommitObserver = Box<dyn Fn(usize, std::time::Duration) + Send + Sync>;

pub(crate) struct Keyspaces {
    pub(crate) events: Keyspace,
    pub(crate) index: Keyspace,
    pub(crate) snapshots: Keyspace,
    pub(crate) feed: Keyspace,
    pub(crate) meta: Keyspace,
    /// Idempotency keys: `[entity prefix][key]` → (seq, expires at).
    pub(crate) keys: Keyspace,
    /// `[expires at][entity prefix][key]` → (): the sweep's order.
    pub(crate) key_expiry: Keyspace,
}

const CACHE_LIMIT: usize = 1 << 20;
/// Most entries one sweep removes per shard (the rest go on the next sweep).
const SWEEP_LIMIT: usize = 10_000;

/// How the writer is set up.
pub(crate) struct WriterOptions {
    pub(crate) durability: Option<PersistMode>,
    pub(crate) max_batch: usize,
    pub(crate) shards: u32,
    pub(crate) feed_retention: Duration,
    pub(crate) observer: Option<CommitObserver>,
}

pub(crate) struct Writer {
    db: Database,
    ks: Keyspaces,
    o: WriterOptions,
    cache: HashMap<Vec<u8>, EntityMeta>,
    /// The last offset assigned per feed unit (type × shard; loaded on first use).
    feed_last: HashMap<Vec<u8>, u64>,
    last_sweep: Instant,
}

enum Done {
    Append(oneshot::Sender<Result<AppendAck, AppendError>>, AppendAck),
    Unit(oneshot::Sender<Result<(), JournalError>>),
    Fence(oneshot::Sender<Result<(), AppendError>>),
}

impl Done {
    fn ok(self) {
        match self {
            Self::Append(ack, a) => drop(ack.send(Ok(a))),
            Self::Unit(ack) => drop(ack.send(Ok(()))),
            Self::Fence(ack) => drop(ack.send(Ok(()))),
        }
    }
    fn fail(self, err: &JournalError) {
        match self {
            Self::Append(ack, _) => drop(ack.send(Err(err.clone().into()))),
            Self::Unit(ack) => drop(ack.send(Err(err.clone()))),
            Self::Fence(ack) => drop(ack.send(Err(err.clone().into()))),
        }
    }
}

impl Writer {
    pub(crate) fn new(db: Database, ks: Keyspaces, o: WriterOptions) -> Self {
        Self { db, ks, o, cache: HashMap::new(), feed_last: HashMap::new(), last_sweep: Instant::now() }
    }

    fn sweep_every(&self) -> Duration {
        (self.o.feed_retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    pub(crate) fn run(mut self, rx: Receiver<Op>) {
        let mut ops = Vec::with_capacity(self.o.max_batch);
        loop {
            match rx.recv_timeout(self.sweep_every()) {
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
            if !ops.is_empty() {
                self.commit_group(&mut ops);
            }
            if self.last_sweep.elapsed() >= self.sweep_every() {
                self.last_sweep = Instant::now();
                if let Err(e) = self.sweep(now_ms()) {
                    tracing::warn!(error = %e, "journal retention sweep failed; retried on the next one");
                }
            }
        }
    }

    fn meta(&mut self, pending: &HashMap<Vec<u8>, EntityMeta>, ikey: &[u8]) -> Result<EntityMeta, JournalError> {
        if let Some(m) = pending.get(ikey).or_else(|| self.cache.get(ikey)) {
            return Ok(*m);
        }
        let m = match self.ks.index.get(ikey).map_err(unavailable)? {
            None => EntityMeta::default(),
            Some(v) => format::decode_meta(&v).map_err(|detail| JournalError::Corrupt {
                entity: String::from_utf8_lossy(ikey).into_owned(),
                seq: 0,
                detail,
            })?,
        };
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(ikey.to_vec(), m);
        Ok(m)
    }

    /// The last offset of a unit's feed: its last entry, or the last one
    /// retention removed when the feed is empty.
    fn feed_last(&mut self, unit: &[u8]) -> Result<u64, JournalError> {
        if let Some(l) = self.feed_last.get(unit) {
            return Ok(*l);
        }
        let last = last_offset(&self.ks.feed, unit)?.max(expired_to(&self.ks.meta, unit)?);
        self.feed_last.insert(unit.to_vec(), last);
        Ok(last)
    }

    /// The seq an entity committed a key at, when it is still remembered at `now`.
    fn remembered(&self, entity: &EntityKey, key: &str, now: i64) -> Result<Option<u64>, JournalError> {
        let Some(v) = self.ks.keys.get(format::key_key(entity, key)).map_err(unavailable)? else { return Ok(None) };
        let (seq, expires) = format::decode_key_record(&v).map_err(|detail| JournalError::Corrupt {
            entity: entity.to_string(),
            seq: 0,
            detail,
        })?;
        Ok((expires > now).then_some(seq))
    }

    /// Writes every op it can into one batch, commits once, then acks.
    fn commit_group(&mut self, ops: &mut Vec<Op>) {
        let started = std::time::Instant::now();
        let mut batch = self.db.batch().durability(self.o.durability);
        let mut pending: HashMap<Vec<u8>, EntityMeta> = HashMap::new();
        let mut feed_pending: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut done: Vec<Done> = Vec::with_capacity(ops.len());
        let timestamp_ms = now_ms();
        let mut deferred = Vec::new();

        for op in ops.drain(..) {
            match op {
                Op::Append { key, request, ack } => {
                    let lease_held = request.lease_held();
                    let AppendRequest { expected_seq: expected, events, snapshot, fence, key: idem, .. } = request;
                    let ikey = format::index_key(&key);
                    let mut m = match self.meta(&pending, &ikey) {
                        Ok(m) => m,
                        Err(e) => {
                            let _ = ack.send(Err(e.into()));
                            continue;
                        }
                    };
                    if events.is_empty() {
                        let _ = ack.send(Err(JournalError::Invalid("append of no events".into()).into()));
                        continue;
                    }
                    if let Some(epoch) = fence.filter(|e| *e != m.fence || !lease_held) {
                        let _ = ack.send(Err(AppendError::Fenced { entity: key.to_string(), epoch, current: m.fence }));
                        continue;
                    }
                    if m.last_seq != expected {
                        let _ = ack.send(Err(AppendError::Conflict {
                            entity: key.to_string(),
                            expected,
                            actual: m.last_seq,
                        }));
                        continue;
                    }
                    // One append per entity is in a group at most (single
                    // writer per entity), so the committed index is the truth.
                    if let Some(k) = &idem {
                        match self.remembered(&key, &k.key, timestamp_ms) {
                            Ok(Some(seq)) => {
                                let e = AppendError::Duplicate { entity: key.to_string(), key: k.key.clone(), seq };
                                let _ = ack.send(Err(e));
                                continue;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                let _ = ack.send(Err(e.into()));
                                continue;
                            }
                        }
                    }
                    let last_seq = expected + events.len() as u64;
                    if let Some(s) = &snapshot {
                        if s.seq > last_seq {
                            let msg = format!("snapshot seq {} is past {last_seq}", s.seq);
                            let _ = ack.send(Err(JournalError::Invalid(msg).into()));
                            continue;
                        }
                        batch.insert(&self.ks.snapshots, ikey.clone(), format::encode_snapshot(s));
                    }
                    let prefix = format::entity_prefix(&key);
                    let unit = format::unit_prefix(&key.entity_type, key.shard(self.o.shards));
                    let mut offset = match feed_pending.get(&unit) {
                        Some(o) => *o,
                        None => match self.feed_last(&unit) {
                            Ok(0) => {
                                let mut mark = format::UNIT_MARK.to_vec();
                                mark.extend_from_slice(&unit);
                                batch.insert(&self.ks.meta, mark, Vec::<u8>::new());
                                0
                            }
                            Ok(o) => o,
                            Err(e) => {
                                let _ = ack.send(Err(e.into()));
                                continue;
                            }
                        },
                    };
                    for (i, e) in events.iter().enumerate() {
                        let seq = expected + 1 + i as u64;
                        let record =
                            format::encode_event(timestamp_ms, &e.type_name, e.version, &e.payload, &e.metadata);
                        batch.insert(&self.ks.events, format::event_key(&prefix, seq), record);
                        offset += 1;
                        let feed_ref = format::encode_feed_ref(&prefix, seq, timestamp_ms);
                        batch.insert(&self.ks.feed, format::feed_key(&unit, offset), feed_ref);
                    }
                    feed_pending.insert(unit, offset);
                    if let Some(k) = idem {
                        let kk = format::key_key(&key, &k.key);
                        let expires = timestamp_ms.saturating_add(k.retain_ms);
                        batch.insert(&self.ks.keys, kk.clone(), format::encode_key_record(last_seq, expires));
                        batch.insert(&self.ks.key_expiry, format::key_expiry(expires, &kk), Vec::<u8>::new());
                    }
                    m.last_seq = last_seq;
                    batch.insert(&self.ks.index, ikey.clone(), format::encode_meta(m));
                    pending.insert(ikey, m);
                    done.push(Done::Append(ack, AppendAck { first_seq: expected + 1, last_seq, timestamp_ms }));
                }
                Op::RaiseFence { key, epoch, ack } => {
                    let ikey = format::index_key(&key);
                    match self.meta(&pending, &ikey) {
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
                            batch.insert(&self.ks.index, ikey.clone(), format::encode_meta(m));
                            pending.insert(ikey, m);
                            done.push(Done::Fence(ack));
                        }
                    }
                }
                Op::Snapshot { key, snapshot, ack } => {
                    let ikey = format::index_key(&key);
                    match self.meta(&pending, &ikey) {
                        Err(e) => {
                            let _ = ack.send(Err(e));
                        }
                        Ok(m) if snapshot.seq > m.last_seq => {
                            let msg = format!("snapshot seq {} is past last seq {}", snapshot.seq, m.last_seq);
                            let _ = ack.send(Err(JournalError::Invalid(msg)));
                        }
                        Ok(_) => {
                            batch.insert(&self.ks.snapshots, ikey, format::encode_snapshot(&snapshot));
                            done.push(Done::Unit(ack));
                        }
                    }
                }
                // A delete scans committed keys, so it runs after this batch commits.
                op @ Op::DeleteTo { .. } => deferred.push(op),
            }
        }

        if !batch.is_empty() {
            let n = done.len();
            crate::fault::point("local.before_commit");
            match batch.commit() {
                Ok(()) => {
                    crate::fault::point("local.after_commit");
                    self.cache.extend(pending);
                    self.feed_last.extend(feed_pending);
                    for d in done {
                        d.ok();
                    }
                    if let Some(obs) = &self.o.observer {
                        obs(n, started.elapsed());
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal commit failed; {n} writes rejected");
                    let err = JournalError::Unavailable(format!("commit failed: {e}"));
                    for d in done {
                        d.fail(&err);
                    }
                }
            }
        }
        for op in deferred {
            if let Op::DeleteTo { key, seq, ack } = op {
                let _ = ack.send(self.delete_to(&key, seq));
            }
        }
    }

    /// Removes feed entries committed before `now - retention` (from the
    /// front of each shard's feed) and idempotency keys past their expiry.
    fn sweep(&mut self, now: i64) -> Result<(), JournalError> {
        let cutoff = now.saturating_sub(self.o.feed_retention.as_millis().min(i64::MAX as u128) as i64);
        let mut batch = self.db.batch().durability(self.o.durability);
        let units: Vec<Vec<u8>> = self
            .ks
            .meta
            .prefix(format::UNIT_MARK)
            .map(|item| item.key().map(|k| k[format::UNIT_MARK.len()..].to_vec()))
            .collect::<Result<_, _>>()
            .map_err(unavailable)?;
        for unit in units {
            let range = format::feed_key(&unit, 0)..=format::feed_key(&unit, u64::MAX);
            let mut removed = None;
            for item in self.ks.feed.range(range).take(SWEEP_LIMIT) {
                let (k, v) = item.into_inner().map_err(unavailable)?;
                let ts = format::decode_feed_ref(&v).map_or(0, |(_, _, ts)| ts);
                if ts >= cutoff {
                    break;
                }
                removed = Some(format::feed_offset(&k));
                batch.remove(&self.ks.feed, k);
            }
            if let Some(to) = removed {
                batch.insert(&self.ks.meta, format::expired_key(&unit), to.to_be_bytes().to_vec());
            }
        }
        let upto = format::key_expiry(now, &[]);
        for item in self.ks.key_expiry.range(..upto).take(SWEEP_LIMIT) {
            let k = item.key().map_err(unavailable)?;
            batch.remove(&self.ks.keys, k[8..].to_vec());
            batch.remove(&self.ks.key_expiry, k);
        }
        if !batch.is_empty() {
            batch.commit().map_err(unavailable)?;
        }
        Ok(())
    }

    fn delete_to(&mut self, key: &EntityKey, seq: u64) -> Result<(), JournalError> {
        let ikey = format::index_key(key);
        let mut m = self.meta(&HashMap::new(), &ikey)?;
        let to = seq.min(m.last_seq);
        if to <= m.deleted_to {
            return Ok(());
        }
        let prefix = format::entity_prefix(key);
        let mut batch = self.db.batch().durability(self.o.durability);
        for item in self.ks.events.range(format::event_key(&prefix, m.deleted_to + 1)..=format::event_key(&prefix, to))
        {
            let k = item.key().map_err(unavailable)?;
            batch.remove(&self.ks.events, k);
        }
        m.deleted_to = to;
        batch.insert(&self.ks.index, ikey.clone(), format::encode_meta(m));
        batch.commit().map_err(unavailable)?;
        self.cache.insert(ikey, m);
        Ok(())
    }
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

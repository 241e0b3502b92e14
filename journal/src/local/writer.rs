//! The group-commit writer: one thread takes every queued write, validates
//! each append against the entities' last seqs, writes all of them in one
//! fjall batch with one durable commit, and only then acknowledges them.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, TryRecvError};

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
}

pub(crate) const FEED_OFFSET_KEY: &[u8] = b"feed_offset";
const CACHE_LIMIT: usize = 1 << 20;

pub(crate) struct Writer {
    pub(crate) db: Database,
    pub(crate) ks: Keyspaces,
    pub(crate) durability: Option<PersistMode>,
    pub(crate) max_batch: usize,
    pub(crate) shards: u32,
    pub(crate) next_offset: u64,
    pub(crate) observer: Option<CommitObserver>,
    cache: HashMap<Vec<u8>, EntityMeta>,
}

enum Done {
    Append(oneshot::Sender<Result<AppendAck, AppendError>>, AppendAck),
    Unit(oneshot::Sender<Result<(), JournalError>>),
    Fence(oneshot::Sender<Result<(), AppendError>>),
}

impl Writer {
    pub(crate) fn new(
        db: Database,
        ks: Keyspaces,
        durability: Option<PersistMode>,
        max_batch: usize,
        shards: u32,
        next_offset: u64,
        observer: Option<CommitObserver>,
    ) -> Self {
        Self { db, ks, durability, max_batch, shards, next_offset, observer, cache: HashMap::new() }
    }

    pub(crate) fn run(mut self, rx: Receiver<Op>) {
        let mut ops = Vec::with_capacity(self.max_batch);
        while let Ok(first) = rx.recv() {
            ops.push(first);
            while ops.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit_group(&mut ops);
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

    /// Writes every op it can into one batch, commits once, then acks.
    fn commit_group(&mut self, ops: &mut Vec<Op>) {
        let started = std::time::Instant::now();
        let mut batch = self.db.batch().durability(self.durability);
        let mut pending: HashMap<Vec<u8>, EntityMeta> = HashMap::new();
        let mut done: Vec<Done> = Vec::with_capacity(ops.len());
        let offset_before = self.next_offset;
        let timestamp_ms = now_ms();
        let mut deferred = Vec::new();

        for op in ops.drain(..) {
            match op {
                Op::Append { key, request, ack } => {
                    let AppendRequest { expected_seq: expected, events, snapshot, fence } = request;
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
                    if let Some(epoch) = fence.filter(|e| *e != m.fence) {
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
                    let shard = key.shard(self.shards);
                    for (i, e) in events.iter().enumerate() {
                        let seq = expected + 1 + i as u64;
                        let record =
                            format::encode_event(timestamp_ms, &e.type_name, e.version, &e.payload, &e.metadata);
                        batch.insert(&self.ks.events, format::event_key(&prefix, seq), record);
                        self.next_offset += 1;
                        batch.insert(
                            &self.ks.feed,
                            format::feed_key(shard, self.next_offset),
                            format::encode_feed_ref(&prefix, seq),
                        );
                    }
                    m.last_seq = last_seq;
                    batch.insert(&self.ks.index, ikey.clone(), format::encode_meta(m));
                    pending.insert(ikey, m);
                    done.push(Done::Append(ack, AppendAck { first_seq: expected + 1, last_seq, timestamp_ms }));
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
                // A delete scans committed keys, so it runs after this batch commits.
                op @ Op::DeleteTo { .. } => deferred.push(op),
            }
        }

        if !batch.is_empty() {
            if self.next_offset != offset_before {
                batch.insert(&self.ks.meta, FEED_OFFSET_KEY, self.next_offset.to_be_bytes().to_vec());
            }
            let n = done.len();
            match batch.commit() {
                Ok(()) => {
                    self.cache.extend(pending);
                    for d in done {
                        match d {
                            Done::Append(ack, a) => {
                                let _ = ack.send(Ok(a));
                            }
                            Done::Unit(ack) => {
                                let _ = ack.send(Ok(()));
                            }
                            Done::Fence(ack) => {
                                let _ = ack.send(Ok(()));
                            }
                        }
                    }
                    if let Some(obs) = &self.observer {
                        obs(n, started.elapsed());
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal commit failed; {n} writes rejected");
                    self.next_offset = offset_before;
                    let err = JournalError::Unavailable(format!("commit failed: {e}"));
                    for d in done {
                        match d {
                            Done::Append(ack, _) => {
                                let _ = ack.send(Err(err.clone().into()));
                            }
                            Done::Unit(ack) => {
                                let _ = ack.send(Err(err.clone()));
                            }
                            Done::Fence(ack) => {
                                let _ = ack.send(Err(err.clone().into()));
                            }
                        }
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

    fn delete_to(&mut self, key: &EntityKey, seq: u64) -> Result<(), JournalError> {
        let ikey = format::index_key(key);
        let mut m = self.meta(&HashMap::new(), &ikey)?;
        let to = seq.min(m.last_seq);
        if to <= m.deleted_to {
            return Ok(());
        }
        let prefix = format::entity_prefix(key);
        let mut batch = self.db.batch().durability(self.durability);
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

pub(crate) fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(e.to_string())
}

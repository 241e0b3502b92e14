//! An in-memory journal for tests. Clones share the same store, so a "reopen"
//! is a clone.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};

use crate::error::{AppendError, JournalError};
use crate::journal::{EntityStream, EventStream, Journal, ShardStream};
use crate::paging::paged;
use crate::shard::DEFAULT_SHARDS;
use crate::types::{AppendAck, AppendRequest, EntityInfo, EntityKey, FeedBounds, PersistedEvent, ShardEvent, Snapshot};

const PAGE: usize = 1024;

#[derive(Default)]
struct Log {
    events: BTreeMap<u64, PersistedEvent>,
    last_seq: u64,
    deleted_to: u64,
    snapshot: Option<Snapshot>,
    fence: u64,
}

#[derive(Default)]
struct Store {
    logs: HashMap<EntityKey, Log>,
    /// (type, shard, offset) → (entity, seq, commit time).
    feed: BTreeMap<(String, u32, u64), (EntityKey, u64, i64)>,
    /// Per feed (type, shard): the last offset assigned, the last removed by retention.
    heads: HashMap<(String, u32), FeedBounds>,
    /// (entity, key) → (seq, expires at ms).
    keys: HashMap<(EntityKey, String), (u64, i64)>,
}

/// The in-memory journal.
#[derive(Clone)]
pub struct MemoryJournal {
    store: Arc<Mutex<Store>>,
    shards: u32,
    retention_ms: Option<i64>,
}

impl Default for MemoryJournal {
    fn default() -> Self {
        Self::new(DEFAULT_SHARDS)
    }
}

impl MemoryJournal {
    /// An empty journal whose feed has `shards` shards.
    pub fn new(shards: u32) -> Self {
        Self { store: Arc::default(), shards, retention_ms: None }
    }
    /// Feed entries older than `retention` are removed (on the next append).
    pub fn with_feed_retention(mut self, retention: std::time::Duration) -> Self {
        self.retention_ms = Some(retention.as_millis().min(i64::MAX as u128) as i64);
        self
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[async_trait::async_trait]
impl Journal for MemoryJournal {
    async fn commit(&self, entity: &EntityKey, request: AppendRequest) -> Result<AppendAck, AppendError> {
        let lease_held = request.lease_held();
        if request.events.is_empty() {
            return Err(JournalError::Invalid("append of no events".into()).into());
        }
        request.check_keys()?;
        let AppendRequest { expected_seq, events, snapshot, fence, keys, .. } = request;
        let timestamp_ms = now_ms();
        let mut store = self.lock();
        let store = &mut *store;
        for k in &keys {
            if let Some((seq, expires)) = store.keys.get(&(entity.clone(), k.key.clone()))
                && *expires > timestamp_ms
            {
                return Err(AppendError::Duplicate { entity: entity.to_string(), key: k.key.clone(), seq: *seq });
            }
        }
        let log = store.logs.entry(entity.clone()).or_default();
        if let Some(epoch) = fence.filter(|e| *e != log.fence || !lease_held) {
            return Err(AppendError::Fenced { entity: entity.to_string(), epoch, current: log.fence });
        }
        if log.last_seq != expected_seq {
            return Err(AppendError::Conflict {
                entity: entity.to_string(),
                expected: expected_seq,
                actual: log.last_seq,
            });
        }
        let last_seq = expected_seq + events.len() as u64;
        if let Some(s) = snapshot.as_ref().filter(|s| s.seq > last_seq) {
            return Err(JournalError::Invalid(format!("snapshot seq {} is past {last_seq}", s.seq)).into());
        }
        let shard = entity.shard(self.shards);
        let t = entity.entity_type.clone();
        let head = store.heads.entry((t.clone(), shard)).or_default();
        for (i, e) in events.into_iter().enumerate() {
            let seq = expected_seq + 1 + i as u64;
            log.events.insert(
                seq,
                PersistedEvent {
                    seq,
                    timestamp_ms,
                    type_name: e.type_name,
                    version: e.version,
                    payload: e.payload,
                    metadata: e.metadata,
                },
            );
            head.last += 1;
            store.feed.insert((t.clone(), shard, head.last), (entity.clone(), seq, timestamp_ms));
        }
        log.last_seq = last_seq;
        if snapshot.is_some() {
            log.snapshot = snapshot;
        }
        for k in keys {
            store.keys.insert((entity.clone(), k.key), (k.seq, timestamp_ms.saturating_add(k.retain_ms)));
        }
        if let Some(r) = self.retention_ms {
            let cutoff = timestamp_ms - r;
            let expired: Vec<(String, u32, u64)> =
                store.feed.iter().filter(|(_, (_, _, ts))| *ts < cutoff).map(|(k, _)| k.clone()).collect();
            for (t, shard, offset) in expired {
                store.feed.remove(&(t.clone(), shard, offset));
                let h = store.heads.entry((t, shard)).or_default();
                h.expired_to = h.expired_to.max(offset);
            }
        }
        Ok(AppendAck { first_seq: expected_seq + 1, last_seq, timestamp_ms })
    }

    async fn raise_fence(&self, entity: &EntityKey, epoch: u64) -> Result<(), AppendError> {
        let mut store = self.lock();
        let log = store.logs.entry(entity.clone()).or_default();
        if log.fence > epoch {
            return Err(AppendError::Fenced { entity: entity.to_string(), epoch, current: log.fence });
        }
        log.fence = epoch;
        Ok(())
    }

    fn read(&self, entity: &EntityKey, range: RangeInclusive<u64>) -> EventStream {
        let me = self.clone();
        let entity = entity.clone();
        let end = *range.end();
        paged(*range.start(), move |from: u64| {
            let page: Vec<PersistedEvent> = if from > end {
                Vec::new()
            } else {
                let store = me.lock();
                store
                    .logs
                    .get(&entity)
                    .map(|l| l.events.range(from..=end).take(PAGE).map(|(_, e)| e.clone()).collect())
                    .unwrap_or_default()
            };
            let next = (page.len() == PAGE).then(|| page.last().map(|e| e.seq + 1)).flatten();
            async move { Ok((page, next)) }
        })
        .boxed()
    }

    async fn last_seq(&self, entity: &EntityKey) -> Result<u64, JournalError> {
        Ok(self.lock().logs.get(entity).map_or(0, |l| l.last_seq))
    }

    async fn save_snapshot(&self, entity: &EntityKey, snapshot: Snapshot) -> Result<(), JournalError> {
        let mut store = self.lock();
        let log = store.logs.entry(entity.clone()).or_default();
        if snapshot.seq > log.last_seq {
            return Err(JournalError::Invalid(format!(
                "snapshot seq {} is past last seq {}",
                snapshot.seq, log.last_seq
            )));
        }
        log.snapshot = Some(snapshot);
        Ok(())
    }

    async fn load_snapshot(&self, entity: &EntityKey) -> Result<Option<Snapshot>, JournalError> {
        Ok(self.lock().logs.get(entity).and_then(|l| l.snapshot.clone()))
    }

    fn events_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream {
        let me = self.clone();
        let first = after_offset;
        let t = entity_type.to_owned();
        paged(after_offset, move |after: u64| {
            let store = me.lock();
            let expired_to = store.heads.get(&(t.clone(), shard)).map_or(0, |h| h.expired_to);
            if after == first && after < expired_to {
                let e = JournalError::FeedExpired { entity_type: t.clone(), shard, after, expired_to };
                return futures::future::ready(Err(e)).left_future();
            }
            let (mut page, mut last, mut scanned) = (Vec::new(), None, 0);
            let range = (t.clone(), shard, after + 1)..=(t.clone(), shard, u64::MAX);
            for ((_, _, offset), (entity, seq, _)) in store.feed.range(range).take(PAGE) {
                (last, scanned) = (Some(*offset), scanned + 1);
                if let Some(event) = store.logs.get(entity).and_then(|l| l.events.get(seq)) {
                    page.push(ShardEvent { offset: *offset, entity: entity.clone(), event: event.clone() });
                }
            }
            let next = last.filter(|_| scanned == PAGE);
            futures::future::ready(Ok((page, next))).right_future()
        })
        .boxed()
    }

    async fn feed_bounds(&self, entity_type: &str, shard: u32) -> Result<FeedBounds, JournalError> {
        Ok(self.lock().heads.get(&(entity_type.to_owned(), shard)).copied().unwrap_or_default())
    }

    async fn find_key(&self, entity: &EntityKey, key: &str) -> Result<Option<u64>, JournalError> {
        let store = self.lock();
        let hit = store.keys.get(&(entity.clone(), key.to_owned()));
        Ok(hit.filter(|(_, expires)| *expires > now_ms()).map(|(seq, _)| *seq))
    }

    async fn delete_to(&self, entity: &EntityKey, seq: u64) -> Result<(), JournalError> {
        let mut store = self.lock();
        if let Some(log) = store.logs.get_mut(entity) {
            let to = seq.min(log.last_seq);
            log.events = log.events.split_off(&(to + 1));
            log.deleted_to = log.deleted_to.max(to);
        }
        Ok(())
    }

    async fn purge(&self, entity: &EntityKey) -> Result<(), JournalError> {
        let mut store = self.lock();
        store.logs.remove(entity);
        store.keys.retain(|(e, _), _| e != entity);
        store.feed.retain(|_, (e, _, _)| e != entity);
        Ok(())
    }

    fn entities(&self, entity_type: &str) -> EntityStream {
        let store = self.lock();
        let mut list: Vec<EntityInfo> = store
            .logs
            .iter()
            .filter(|(k, l)| k.entity_type == entity_type && l.last_seq > 0)
            .map(|(k, l)| EntityInfo { entity_id: k.entity_id.clone(), last_seq: l.last_seq, deleted_to: l.deleted_to })
            .collect();
        list.sort_by(|a, b| a.entity_id.cmp(&b.entity_id));
        futures::stream::iter(list.into_iter().map(Ok)).boxed()
    }

    fn shards(&self) -> u32 {
        self.shards
    }
}

//! An in-memory journal for tests. Clones share the same store, so a "reopen"
//! is a clone.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::error::{AppendError, JournalError};
use crate::journal::{EntityStream, EventStream, Journal, ShardStream};
use crate::paging::paged;
use crate::shard::DEFAULT_SHARDS;
use crate::types::{AppendAck, AppendRequest, EntityInfo, EntityKey, PersistedEvent, ShardEvent, Snapshot};

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
    feed: BTreeMap<(u32, u64), (EntityKey, u64)>,
    next_offset: u64,
}

/// The in-memory journal.
#[derive(Clone)]
pub struct MemoryJournal {
    store: Arc<Mutex<Store>>,
    shards: u32,
}

impl Default for MemoryJournal {
    fn default() -> Self {
        Self::new(DEFAULT_SHARDS)
    }
}

impl MemoryJournal {
    /// An empty journal whose feed has `shards` shards.
    pub fn new(shards: u32) -> Self {
        Self { store: Arc::default(), shards }
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
        let AppendRequest { expected_seq, events, snapshot, fence } = request;
        if events.is_empty() {
            return Err(JournalError::Invalid("append of no events".into()).into());
        }
        let mut store = self.lock();
        let store = &mut *store;
        let log = store.logs.entry(entity.clone()).or_default();
        if let Some(epoch) = fence.filter(|e| *e != log.fence) {
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
        let timestamp_ms = now_ms();
        let shard = entity.shard(self.shards);
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
            store.next_offset += 1;
            store.feed.insert((shard, store.next_offset), (entity.clone(), seq));
        }
        log.last_seq = last_seq;
        if snapshot.is_some() {
            log.snapshot = snapshot;
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

    fn events_by_shard(&self, shard: u32, after_offset: u64) -> ShardStream {
        let me = self.clone();
        paged(after_offset, move |after: u64| {
            let store = me.lock();
            let mut page = Vec::new();
            let mut last = None;
            for ((_, offset), (entity, seq)) in store.feed.range((shard, after + 1)..=(shard, u64::MAX)).take(PAGE) {
                last = Some(*offset);
                if let Some(event) = store.logs.get(entity).and_then(|l| l.events.get(seq)) {
                    page.push(ShardEvent { offset: *offset, entity: entity.clone(), event: event.clone() });
                }
            }
            let next = last.filter(|_| page.len() == PAGE);
            async move { Ok((page, next)) }
        })
        .boxed()
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

//! An in-memory journal for tests and for nodes that keep nothing
//! (`journal.kind = "memory"`). Clones share the same store, so a "reopen"
//! is a clone.
//!
//! The store is split in stripes by shard (`shard % STRIPES`): an entity's
//! log and its unit's feed are in the same stripe, so every operation takes
//! one lock, and appends of entities in different stripes never wait for
//! each other (one global lock was a third of the CPU of a command, most of
//! it in the lock's futex under two threads).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::HashMap;

use futures::{FutureExt, StreamExt};

use crate::error::{AppendError, JournalError};
use crate::journal::{EntityStream, EventStream, Journal, ShardStream};
use crate::paging::paged;
use crate::shard::DEFAULT_SHARDS;
use crate::types::{AppendAck, AppendRequest, EntityInfo, EntityKey, FeedBounds, PersistedEvent, ShardEvent, Snapshot};

const PAGE: usize = 1024;
/// Lock stripes (a power of two no larger than the usual shard counts).
const STRIPES: u32 = 64;

#[derive(Default)]
struct Log {
    events: BTreeMap<u64, PersistedEvent>,
    last_seq: u64,
    deleted_to: u64,
    snapshot: Option<Snapshot>,
    fence: u64,
    /// Idempotency key → (seq, expires at ms).
    keys: HashMap<String, (u64, i64)>,
}

/// One unit's feed.
#[derive(Default)]
struct Feed {
    /// Offset → (entity, seq, commit time).
    entries: BTreeMap<u64, (EntityKey, u64, i64)>,
    /// The last offset assigned, the last removed by retention.
    bounds: FeedBounds,
}

/// The entities of some shards and those shards' feeds.
#[derive(Default)]
struct Stripe {
    logs: HashMap<EntityKey, Log>,
    /// By type, then shard.
    feeds: HashMap<String, HashMap<u32, Feed>>,
}

/// The in-memory journal.
#[derive(Clone)]
pub struct MemoryJournal {
    stripes: Arc<[Mutex<Stripe>]>,
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
        let stripes: Vec<Mutex<Stripe>> = (0..STRIPES).map(|_| Mutex::default()).collect();
        Self { stripes: stripes.into(), shards, retention_ms: None }
    }
    /// Feed entries older than `retention` are removed (on the unit's next append).
    pub fn with_feed_retention(mut self, retention: std::time::Duration) -> Self {
        self.retention_ms = Some(retention.as_millis().min(i64::MAX as u128) as i64);
        self
    }
    /// A unit's feed; with `internal_only`, an entity's own events come unread.
    fn feed(&self, entity_type: &str, shard: u32, after_offset: u64, internal_only: bool) -> ShardStream {
        let me = self.clone();
        let first = after_offset;
        let entity_type = entity_type.to_owned();
        paged(after_offset, move |after: u64| {
            let stripe = me.stripe(shard);
            let Some(feed) = stripe.feeds.get(&entity_type).and_then(|f| f.get(&shard)) else {
                return futures::future::ready(Ok((Vec::new(), None))).right_future();
            };
            let expired_to = feed.bounds.expired_to;
            if after == first && after < expired_to {
                let e = JournalError::FeedExpired { entity_type: entity_type.clone(), shard, after, expired_to };
                return futures::future::ready(Err(e)).left_future();
            }
            let (mut page, mut last, mut scanned) = (Vec::new(), None, 0);
            for (offset, (entity, seq, _)) in feed.entries.range(after + 1..).take(PAGE) {
                (last, scanned) = (Some(*offset), scanned + 1);
                if let Some(event) = stripe.logs.get(entity).and_then(|l| l.events.get(seq)) {
                    let event = if internal_only && !crate::is_internal_type(&event.type_name) {
                        PersistedEvent::unread(event.seq, event.timestamp_ms)
                    } else {
                        event.clone()
                    };
                    page.push(ShardEvent { offset: *offset, entity: entity.clone(), event });
                }
            }
            let next = last.filter(|_| scanned == PAGE);
            futures::future::ready(Ok((page, next))).right_future()
        })
        .boxed()
    }

    /// The stripe of a shard.
    fn stripe(&self, shard: u32) -> MutexGuard<'_, Stripe> {
        self.stripes[(shard % STRIPES) as usize].lock().unwrap_or_else(|p| p.into_inner())
    }
    /// The stripe of an entity, and its shard.
    fn stripe_of(&self, entity: &EntityKey) -> (MutexGuard<'_, Stripe>, u32) {
        let shard = entity.shard(self.shards);
        (self.stripe(shard), shard)
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
        let (mut stripe, shard) = self.stripe_of(entity);
        let Stripe { logs, feeds } = &mut *stripe;
        let log = match logs.get_mut(entity) {
            Some(log) => log,
            None => logs.entry(entity.clone()).or_default(),
        };
        for k in &keys {
            if let Some((seq, expires)) = log.keys.get(&k.key)
                && *expires > timestamp_ms
            {
                return Err(AppendError::Duplicate { entity: entity.to_string(), key: k.key.clone(), seq: *seq });
            }
        }
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
        let by_shard = match feeds.get_mut(entity.entity_type.as_str()) {
            Some(f) => f,
            None => feeds.entry(entity.entity_type.clone()).or_default(),
        };
        let feed = by_shard.entry(shard).or_default();
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
            feed.bounds.last += 1;
            feed.entries.insert(feed.bounds.last, (entity.clone(), seq, timestamp_ms));
        }
        log.last_seq = last_seq;
        if snapshot.is_some() {
            log.snapshot = snapshot;
        }
        for k in keys {
            log.keys.insert(k.key, (k.seq, timestamp_ms.saturating_add(k.retain_ms)));
        }
        if let Some(r) = self.retention_ms {
            let cutoff = timestamp_ms - r;
            while let Some(entry) = feed.entries.first_entry().filter(|e| e.get().2 < cutoff) {
                let (offset, _) = entry.remove_entry();
                feed.bounds.expired_to = feed.bounds.expired_to.max(offset);
            }
        }
        Ok(AppendAck { first_seq: expected_seq + 1, last_seq, timestamp_ms })
    }

    async fn raise_fence(&self, entity: &EntityKey, epoch: u64) -> Result<(), AppendError> {
        let (mut stripe, _) = self.stripe_of(entity);
        let log = stripe.logs.entry(entity.clone()).or_default();
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
                let (stripe, _) = me.stripe_of(&entity);
                stripe
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
        Ok(self.stripe_of(entity).0.logs.get(entity).map_or(0, |l| l.last_seq))
    }

    async fn save_snapshot(&self, entity: &EntityKey, snapshot: Snapshot) -> Result<(), JournalError> {
        let (mut stripe, _) = self.stripe_of(entity);
        let log = stripe.logs.entry(entity.clone()).or_default();
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
        Ok(self.stripe_of(entity).0.logs.get(entity).and_then(|l| l.snapshot.clone()))
    }

    fn events_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream {
        self.feed(entity_type, shard, after_offset, false)
    }

    fn internal_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream {
        self.feed(entity_type, shard, after_offset, true)
    }

    async fn feed_bounds(&self, entity_type: &str, shard: u32) -> Result<FeedBounds, JournalError> {
        let stripe = self.stripe(shard);
        Ok(stripe.feeds.get(entity_type).and_then(|f| f.get(&shard)).map(|f| f.bounds).unwrap_or_default())
    }

    async fn find_key(&self, entity: &EntityKey, key: &str) -> Result<Option<u64>, JournalError> {
        let (stripe, _) = self.stripe_of(entity);
        let hit = stripe.logs.get(entity).and_then(|l| l.keys.get(key));
        Ok(hit.filter(|(_, expires)| *expires > now_ms()).map(|(seq, _)| *seq))
    }

    async fn delete_to(&self, entity: &EntityKey, seq: u64) -> Result<(), JournalError> {
        let (mut stripe, _) = self.stripe_of(entity);
        if let Some(log) = stripe.logs.get_mut(entity) {
            let to = seq.min(log.last_seq);
            log.events = log.events.split_off(&(to + 1));
            log.deleted_to = log.deleted_to.max(to);
        }
        Ok(())
    }

    async fn purge(&self, entity: &EntityKey) -> Result<(), JournalError> {
        let (mut stripe, shard) = self.stripe_of(entity);
        stripe.logs.remove(entity);
        if let Some(feed) = stripe.feeds.get_mut(&entity.entity_type).and_then(|f| f.get_mut(&shard)) {
            feed.entries.retain(|_, (e, _, _)| e != entity);
        }
        Ok(())
    }

    fn entities(&self, entity_type: &str) -> EntityStream {
        let mut list: Vec<EntityInfo> = Vec::new();
        for stripe in self.stripes.iter() {
            let stripe = stripe.lock().unwrap_or_else(|p| p.into_inner());
            list.extend(stripe.logs.iter().filter(|(k, l)| k.entity_type == entity_type && l.last_seq > 0).map(
                |(k, l)| EntityInfo { entity_id: k.entity_id.clone(), last_seq: l.last_seq, deleted_to: l.deleted_to },
            ));
        }
        list.sort_by(|a, b| a.entity_id.cmp(&b.entity_id));
        futures::stream::iter(list.into_iter().map(Ok)).boxed()
    }

    fn shards(&self) -> u32 {
        self.shards
    }
}

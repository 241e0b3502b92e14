//! Rebuilding an entity from its journal: latest usable snapshot, then the
//! events after it, streamed page by page. [`replay`] is the public entry
//! point (the CLI's `journal state`, reads on nodes that do not own the
//! entity, time travel); activation uses [`rebuild`], which also restores
//! the idempotency window.

use std::sync::Arc;

use futures::StreamExt;
use tessera_entities::{DynEntity, DynState, StoredEvent};
use tessera_journal::{EntityKey, Journal};

use super::dedup::{DedupLimits, DedupWindow};
use crate::envelope::{DedupEntry, EventMeta, SNAPSHOT_FORMAT, SnapshotEnvelope};
use crate::error::InvokeError;
use crate::flow::{FlowRecord, Timers};

/// A rebuilt entity.
pub(crate) struct Rebuilt {
    pub(crate) state: DynState,
    pub(crate) seq: u64,
    pub(crate) dedup: DedupWindow,
    pub(crate) events_since_snapshot: u64,
    /// Its pending timers.
    pub(crate) timers: Timers,
}

/// Which state of an entity to rebuild from its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The latest state: the newest snapshot this code understands, then
    /// every event after it.
    Latest,
    /// The state right after event `seq` (or the last event before it),
    /// replayed from the first event without snapshots: time travel.
    AsOf(u64),
}

/// The state of `key` rebuilt from `journal` (see [`Replay`]), as JSON with
/// the seq of the last event applied. Fails with `replay_failed` when the
/// journal cannot be replayed by this code (a newer event version, events
/// deleted that no snapshot covers).
pub async fn replay(
    entity: &Arc<dyn DynEntity>,
    journal: &Arc<dyn Journal>,
    key: &EntityKey,
    which: Replay,
) -> Result<super::StateView, InvokeError> {
    let r = rebuild(entity, journal, key, which, DedupLimits { max_entries: 0, max_age_ms: 0 }).await?;
    Ok(super::StateView { state: entity.state_json(&r.state), seq: r.seq, timers: r.timers.to_list() })
}

/// Rebuilds `key` as [`Replay`] says, with its idempotency window bounded by `limits`.
pub(crate) async fn rebuild(
    entity: &Arc<dyn DynEntity>,
    journal: &Arc<dyn Journal>,
    key: &EntityKey,
    which: Replay,
    limits: DedupLimits,
) -> Result<Rebuilt, InvokeError> {
    let (to_seq, use_snapshot) = match which {
        Replay::Latest => (u64::MAX, true),
        Replay::AsOf(seq) => (seq, false),
    };
    let mut state = None;
    let mut seq = 0;
    let mut dedup = DedupWindow::default();
    let mut timers = Timers::default();
    let snap = if use_snapshot { journal.load_snapshot(key).await? } else { None };
    if let Some(snap) = snap
        && snap.seq <= to_seq
        && snap.version == SNAPSHOT_FORMAT
    {
        match tessera_entities::codec::from_msgpack::<SnapshotEnvelope>(&snap.payload) {
            Ok(env) if env.state_version == entity.state_version() => match entity.decode_state(&env.state) {
                Ok(s) => {
                    state = Some(s);
                    seq = snap.seq;
                    dedup = DedupWindow::from_entries(env.dedup);
                    timers = Timers::from_list(env.timers);
                }
                Err(e) => tracing::warn!(%key, error = %e, "snapshot does not decode; replaying from events"),
            },
            Ok(_) => tracing::info!(%key, "snapshot of another state version; replaying from events"),
            Err(e) => tracing::warn!(%key, error = %e, "snapshot envelope does not decode; replaying"),
        }
    }
    let state = state.unwrap_or_else(|| entity.initial_state());
    let mut r = Rebuilt { state, seq, dedup, events_since_snapshot: 0, timers };
    apply_events(entity, journal, key, to_seq, limits, &mut r).await?;
    if r.events_since_snapshot == 0 && to_seq == u64::MAX {
        // Nothing after the snapshot. Either the journal ends there, or the
        // events after it were deleted — or another node appended after our
        // read (a read on a node that does not own the entity races with
        // the owner's writes). Events up to the last seq answered now were
        // committed before the question, so a second read must see them;
        // only if it does not were they deleted.
        let last = journal.last_seq(key).await?;
        if last > r.seq {
            apply_events(entity, journal, key, last, limits, &mut r).await?;
            if r.events_since_snapshot == 0 {
                return Err(gap(key, r.seq, last + 1));
            }
        }
    }
    Ok(r)
}

/// Applies the events after `r.seq` up to `to_seq` to `r`; a gap (deleted
/// events no snapshot covers) is an error: the state would be a guess.
async fn apply_events(
    entity: &Arc<dyn DynEntity>,
    journal: &Arc<dyn Journal>,
    key: &EntityKey,
    to_seq: u64,
    limits: DedupLimits,
    r: &mut Rebuilt,
) -> Result<(), InvokeError> {
    let mut events = journal.read(key, r.seq + 1..=to_seq);
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if ev.seq != r.seq + 1 {
            return Err(gap(key, r.seq, ev.seq));
        }
        match FlowRecord::decode(&ev.type_name, &ev.payload) {
            // The runtime's own records: the timers are rebuilt, the state is not touched.
            Some(record) => {
                let record = record.map_err(|e| InvokeError::Replay(format!("{key} at seq {}: {e}", ev.seq)))?;
                r.timers.apply(ev.seq, &record);
            }
            None => {
                let stored =
                    StoredEvent { seq: ev.seq, type_name: &ev.type_name, version: ev.version, payload: &ev.payload };
                entity.apply_stored(&mut r.state, stored).map_err(|e| InvokeError::Replay(format!("{key}: {e}")))?;
            }
        }
        let meta = EventMeta::decode(&ev.metadata);
        if let Some(reply) = meta.reply {
            r.dedup.insert(DedupEntry { id: meta.invocation, seq: ev.seq, at_ms: ev.timestamp_ms, reply }, limits);
        }
        r.seq = ev.seq;
        r.events_since_snapshot += 1;
    }
    Ok(())
}

fn gap(key: &EntityKey, have: u64, next: u64) -> InvokeError {
    InvokeError::Replay(format!(
        "{key}: events {}..{} were deleted and no usable snapshot covers them",
        have + 1,
        next - 1
    ))
}

/// Encodes the snapshot envelope of an entity.
pub(crate) fn snapshot_payload(
    entity: &Arc<dyn DynEntity>,
    state: &DynState,
    dedup: &DedupWindow,
    timers: Vec<crate::flow::PendingTimer>,
) -> Result<Vec<u8>, InvokeError> {
    let state = entity.encode_state(state).map_err(|e| InvokeError::Internal(format!("state does not encode: {e}")))?;
    let env = SnapshotEnvelope { state_version: entity.state_version(), state, dedup: dedup.to_entries(), timers };
    rmp_serde::to_vec_named(&env).map_err(|e| InvokeError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::ops::RangeInclusive;
    use std::sync::atomic::{AtomicBool, Ordering};

    use serde::{Deserialize, Serialize};
    use tessera_entities::{Ctx, Effect, Entity, Registry, Rejection};
    use tessera_journal::{
        AppendAck, AppendError, AppendRequest, EntityStream, EventStream, JournalError, MemoryJournal, NewEvent,
        ShardStream, Snapshot,
    };

    use super::*;

    struct Counter;
    #[derive(Default, Serialize, Deserialize)]
    struct Count {
        n: u64,
    }
    #[derive(Deserialize)]
    enum Cmd {
        Get,
    }
    #[derive(Serialize, Deserialize)]
    enum Ev {
        Added,
    }
    impl Entity for Counter {
        const TYPE: &'static str = "counter";
        type State = Count;
        type Command = Cmd;
        type Event = Ev;
        type Reply = ();
        fn handle(&self, _: &Count, Cmd::Get: Cmd, _: &mut Ctx) -> Result<Effect<Ev, ()>, Rejection> {
            Ok(Effect::reply(()))
        }
        fn apply(&self, s: &mut Count, _: &Ev) {
            s.n += 1;
        }
    }

    fn added() -> NewEvent {
        let e = tessera_entities::event::encode_event::<Counter>(&Ev::Added).unwrap();
        NewEvent { type_name: e.type_name, version: e.version, payload: e.payload, metadata: vec![] }
    }

    /// A journal where another node appends right after a reader's event
    /// read and before its `last_seq` (the interleaving of a read on a
    /// node that does not own the entity, racing the owner's write).
    struct RacingWriter {
        inner: MemoryJournal,
        raced: AtomicBool,
    }

    #[async_trait::async_trait]
    impl Journal for RacingWriter {
        async fn commit(&self, e: &EntityKey, r: AppendRequest) -> Result<AppendAck, AppendError> {
            self.inner.commit(e, r).await
        }
        async fn raise_fence(&self, e: &EntityKey, epoch: u64) -> Result<(), AppendError> {
            self.inner.raise_fence(e, epoch).await
        }
        fn read(&self, e: &EntityKey, range: RangeInclusive<u64>) -> EventStream {
            self.inner.read(e, range)
        }
        async fn last_seq(&self, e: &EntityKey) -> Result<u64, JournalError> {
            if !self.raced.swap(true, Ordering::SeqCst) {
                let last = self.inner.last_seq(e).await?;
                self.inner.append(e, last, vec![added()]).await.map_err(|e| JournalError::Invalid(e.to_string()))?;
            }
            self.inner.last_seq(e).await
        }
        async fn save_snapshot(&self, e: &EntityKey, s: Snapshot) -> Result<(), JournalError> {
            self.inner.save_snapshot(e, s).await
        }
        async fn load_snapshot(&self, e: &EntityKey) -> Result<Option<Snapshot>, JournalError> {
            self.inner.load_snapshot(e).await
        }
        fn events_by_shard(&self, t: &str, shard: u32, after: u64) -> ShardStream {
            self.inner.events_by_shard(t, shard, after)
        }
        async fn feed_bounds(&self, t: &str, shard: u32) -> Result<tessera_journal::FeedBounds, JournalError> {
            self.inner.feed_bounds(t, shard).await
        }
        async fn open_feed(&self, t: &str, shard: u32, epoch: u64) -> Result<(), JournalError> {
            self.inner.open_feed(t, shard, epoch).await
        }
        async fn find_key(&self, e: &EntityKey, key: &str) -> Result<Option<u64>, JournalError> {
            self.inner.find_key(e, key).await
        }
        async fn delete_to(&self, e: &EntityKey, seq: u64) -> Result<(), JournalError> {
            self.inner.delete_to(e, seq).await
        }
        async fn purge(&self, e: &EntityKey) -> Result<(), JournalError> {
            self.inner.purge(e).await
        }
        fn entities(&self, t: &str) -> EntityStream {
            self.inner.entities(t)
        }
        fn shards(&self) -> u32 {
            self.inner.shards()
        }
    }

    fn counter() -> Arc<dyn DynEntity> {
        Registry::builder().entity(Counter).build().unwrap().entity("counter").unwrap().clone()
    }

    async fn snapshot_at_head(j: &MemoryJournal, key: &EntityKey, n: u64) {
        let entity = counter();
        let mut state = entity.initial_state();
        for i in 1..=n {
            j.append(key, i - 1, vec![added()]).await.unwrap();
            let stored = StoredEvent { seq: i, type_name: "Added", version: 1, payload: &added().payload };
            entity.apply_stored(&mut state, stored).unwrap();
        }
        let payload = snapshot_payload(&entity, &state, &DedupWindow::default(), Vec::new()).unwrap();
        j.save_snapshot(key, Snapshot { seq: n, version: SNAPSHOT_FORMAT, timestamp_ms: 0, payload }).await.unwrap();
    }

    const LIMITS: DedupLimits = DedupLimits { max_entries: 0, max_age_ms: 0 };

    #[tokio::test]
    async fn a_write_landing_between_the_read_and_last_seq_is_replayed_not_reported_as_a_gap() {
        let (inner, key) = (MemoryJournal::default(), EntityKey::new("counter", "c"));
        snapshot_at_head(&inner, &key, 100).await;
        let journal: Arc<dyn Journal> = Arc::new(RacingWriter { inner: inner.clone(), raced: AtomicBool::new(false) });
        let r = rebuild(&counter(), &journal, &key, Replay::Latest, LIMITS).await.expect("no false gap");
        assert_eq!(r.seq, 101, "the racing write is part of the state read");
        assert_eq!(counter().state_json(&r.state)["n"], 101);
    }

    #[tokio::test]
    async fn events_deleted_after_the_snapshot_are_still_a_gap() {
        let (j, key) = (MemoryJournal::default(), EntityKey::new("counter", "d"));
        snapshot_at_head(&j, &key, 10).await;
        j.append(&key, 10, vec![added(), added()]).await.unwrap();
        j.delete_to(&key, 12).await.unwrap();
        let journal: Arc<dyn Journal> = Arc::new(j);
        let e = rebuild(&counter(), &journal, &key, Replay::Latest, LIMITS).await.err().expect("a gap");
        assert!(e.to_string().contains("events 11..12 were deleted"), "{e}");
    }
}

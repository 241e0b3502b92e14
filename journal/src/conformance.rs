//! The conformance suite every [`Journal`] backend must pass.
//!
//! Each check is an async function taking a [`TestBackend`]; the
//! [`journal_conformance_tests!`](crate::journal_conformance_tests) macro
//! instantiates all of them as `#[tokio::test]`s for one backend:
//!
//! ```ignore
//! tessera_journal::journal_conformance_tests!(memory, tessera_journal::conformance::MemoryBackend::default());
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use futures::TryStreamExt;

use crate::error::{AppendError, JournalError};
use crate::journal::Journal;
use crate::memory::MemoryJournal;
use crate::types::{AppendRequest, EntityKey, NewEvent, PersistedEvent, ShardEvent, Snapshot};

/// A backend under test: opens a journal, and reopens the same store after
/// the test dropped every handle (a restart).
#[async_trait::async_trait]
pub trait TestBackend: Send {
    /// The journal (the first call creates an empty store).
    async fn open(&mut self) -> Arc<dyn Journal>;
    /// Opens the same store again; the caller dropped its handles first.
    async fn reopen(&mut self) -> Arc<dyn Journal> {
        self.open().await
    }
    /// A fresh store whose feed keeps entries only for `retention` (`None`:
    /// the backend cannot be configured so; the retention test is skipped).
    async fn open_with_feed_retention(&mut self, retention: std::time::Duration) -> Option<Arc<dyn Journal>> {
        let _ = retention;
        None
    }
}

/// The memory backend: "reopening" returns the same store.
#[derive(Default)]
pub struct MemoryBackend(Option<MemoryJournal>);

#[async_trait::async_trait]
impl TestBackend for MemoryBackend {
    async fn open(&mut self) -> Arc<dyn Journal> {
        Arc::new(self.0.get_or_insert_with(MemoryJournal::default).clone())
    }
    async fn open_with_feed_retention(&mut self, retention: std::time::Duration) -> Option<Arc<dyn Journal>> {
        Some(Arc::new(MemoryJournal::default().with_feed_retention(retention)))
    }
}

/// A test event with a recognisable payload.
pub fn event(n: u64) -> NewEvent {
    NewEvent {
        type_name: format!("Ev{}", n % 3),
        version: 1,
        payload: format!("payload-{n}").into_bytes(),
        metadata: format!("meta-{n}").into_bytes(),
    }
}

fn events(range: std::ops::RangeInclusive<u64>) -> Vec<NewEvent> {
    range.map(event).collect()
}

async fn read_all(j: &dyn Journal, e: &EntityKey, from: u64, to: u64) -> Vec<PersistedEvent> {
    j.read(e, from..=to).try_collect().await.expect("read")
}

fn key(id: &str) -> EntityKey {
    EntityKey::new("conf", id)
}

/// Appends come back in order, with seqs from 1, payloads and metadata intact.
pub async fn append_and_read_in_order(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let e = key("order");
    let a = j.append(&e, 0, events(1..=3)).await.expect("append");
    assert_eq!((a.first_seq, a.last_seq), (1, 3));
    let a = j.append(&e, 3, events(4..=4)).await.expect("append");
    assert_eq!((a.first_seq, a.last_seq), (4, 4));
    let got = read_all(&*j, &e, 1, u64::MAX).await;
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    for ev in &got {
        let want = event(ev.seq);
        assert_eq!(
            (&ev.type_name, ev.version, &ev.payload, &ev.metadata),
            (&want.type_name, 1, &want.payload, &want.metadata)
        );
        assert!(ev.timestamp_ms > 1_600_000_000_000, "timestamp is wall-clock ms");
    }
    assert_eq!(j.last_seq(&e).await.unwrap(), 4);
    assert_eq!(j.last_seq(&key("nobody")).await.unwrap(), 0);
}

/// A wrong `expected_seq` is a conflict that writes nothing.
pub async fn conflict_writes_nothing(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let e = key("conflict");
    j.append(&e, 0, events(1..=2)).await.unwrap();
    for wrong in [0, 1, 3, 10] {
        match j.append(&e, wrong, events(100..=101)).await {
            Err(AppendError::Conflict { expected, actual, .. }) => assert_eq!((expected, actual), (wrong, 2)),
            other => panic!("expected conflict, got {other:?}"),
        }
    }
    let got = read_all(&*j, &e, 1, u64::MAX).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].payload, event(2).payload, "acknowledged event not overwritten");
    assert!(j.append(&e, 2, vec![]).await.is_err(), "an empty append is refused");
}

/// Many writers racing on one entity: exactly one wins each seq.
pub async fn racing_writers_one_winner(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let e = key("race");
    for round in 0..5u64 {
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let (j, e) = (j.clone(), e.clone());
            tasks.push(tokio::spawn(async move { j.append(&e, round, vec![event(round * 100 + w)]).await }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(a) => {
                    wins += 1;
                    assert_eq!(a.last_seq, round + 1);
                }
                Err(AppendError::Conflict { .. }) => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    assert_eq!(read_all(&*j, &e, 1, u64::MAX).await.len(), 5);
}

/// Many entities appended concurrently (group commit) all land, in order.
pub async fn concurrent_entities(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let mut tasks = Vec::new();
    for n in 0..64 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            let e = key(&format!("many-{n}"));
            for seq in 0..20 {
                j.append(&e, seq, vec![event(seq + 1)]).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for n in 0..64 {
        let got = read_all(&*j, &key(&format!("many-{n}")), 1, u64::MAX).await;
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    }
}

/// Range reads return exactly the asked seqs, across page boundaries.
pub async fn ranges_and_paging(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let e = key("ranges");
    let mut seq = 0;
    while seq < 2500 {
        j.append(&e, seq, events(seq + 1..=seq + 500)).await.unwrap();
        seq += 500;
    }
    let seqs = |v: Vec<PersistedEvent>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(read_all(&*j, &e, 1, u64::MAX).await), (1..=2500).collect::<Vec<_>>());
    assert_eq!(seqs(read_all(&*j, &e, 1000, 2100).await), (1000..=2100).collect::<Vec<_>>());
    assert_eq!(seqs(read_all(&*j, &e, 7, 7).await), vec![7]);
    assert!(read_all(&*j, &e, 2501, 3000).await.is_empty());
    assert!(read_all(&*j, &e, 10, 9).await.is_empty());
    assert!(read_all(&*j, &key("empty"), 1, u64::MAX).await.is_empty());
    // Edges a caller may send (`GET …/events?from=0`, found by schemathesis):
    // seq 0 is before the first event, the widest range is every event.
    assert_eq!(seqs(read_all(&*j, &e, 0, u64::MAX).await).len(), 2500);
    assert_eq!(seqs(read_all(&*j, &e, 0, 0).await), Vec::<u64>::new());
    assert!(read_all(&*j, &e, u64::MAX, u64::MAX).await.is_empty());
    assert!(read_all(&*j, &e, u64::MAX, 0).await.is_empty());
}

/// Snapshots: none at first, latest wins, atomic with an append, never past the end.
pub async fn snapshots(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let e = key("snap");
    assert_eq!(j.load_snapshot(&e).await.unwrap(), None);
    j.append(&e, 0, events(1..=3)).await.unwrap();
    let s = |seq: u64| Snapshot { seq, version: 1, timestamp_ms: 5, payload: format!("state@{seq}").into_bytes() };
    j.save_snapshot(&e, s(2)).await.unwrap();
    assert_eq!(j.load_snapshot(&e).await.unwrap(), Some(s(2)));
    assert!(j.save_snapshot(&e, s(9)).await.is_err(), "snapshot past the last seq");
    j.append_with_snapshot(&e, 3, events(4..=5), Some(s(5))).await.unwrap();
    assert_eq!(j.load_snapshot(&e).await.unwrap(), Some(s(5)));
    // A conflicting append writes neither its events nor its snapshot.
    assert!(j.append_with_snapshot(&e, 3, events(6..=6), Some(s(4))).await.is_err());
    assert_eq!(j.load_snapshot(&e).await.unwrap(), Some(s(5)));
    assert_eq!(j.last_seq(&e).await.unwrap(), 5);
}

/// The feed of a type in a shard: every event once, offsets from 1 without
/// gaps, in commit order, resumable by offset; other types and shards apart.
pub async fn shard_feed(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let shards = j.shards();
    let a = key("feed-a");
    let shard = a.shard(shards);
    let other = same_shard(shards, shard, "feed-b", 1).remove(0);
    j.append(&a, 0, events(1..=2)).await.unwrap();
    j.append(&other, 0, events(1..=1)).await.unwrap();
    j.append(&a, 2, events(3..=3)).await.unwrap();
    let other_type = EntityKey::new("conf-other", other.entity_id.clone());
    j.append(&other_type, 0, events(1..=1)).await.unwrap();
    let feed = feed_of(&*j, "conf", shard, 0, 4).await;
    let got: Vec<_> = feed.iter().map(|f| (f.offset, f.entity.entity_id.clone(), f.event.seq)).collect();
    let (ai, oi) = (a.entity_id.clone(), other.entity_id.clone());
    assert_eq!(got, vec![(1, ai.clone(), 1), (2, ai.clone(), 2), (3, oi, 1), (4, ai.clone(), 3)]);
    assert_eq!(feed[3].event.payload, event(3).payload);
    let rest: Vec<_> = j.events_by_shard("conf", shard, 2).try_collect().await.unwrap();
    assert_eq!(rest.iter().map(|f| f.offset).collect::<Vec<_>>(), vec![3, 4], "resuming after an offset");
    let elsewhere: Vec<_> = j.events_by_shard("conf", (shard + 1) % shards, 0).try_collect().await.unwrap();
    assert!(elsewhere.iter().all(|f| f.entity != a));
    let typed = feed_of(&*j, "conf-other", other_type.shard(shards), 0, 1).await;
    assert_eq!(typed.iter().map(|f| (f.offset, &f.entity)).collect::<Vec<_>>(), vec![(1, &other_type)]);
    let bounds = j.feed_bounds("conf", shard).await.unwrap();
    assert_eq!((bounds.last, bounds.expired_to), (4, 0));
    assert_eq!(j.feed_bounds("conf", (shard + 7) % shards).await.unwrap().last, 0, "an empty feed");
}

/// The feed after `after`, read until it holds `n` entries (a backend may
/// make a commit visible to feed readers a few ms after acknowledging it).
async fn feed_of(
    j: &dyn Journal,
    entity_type: &str,
    shard: u32,
    after: u64,
    n: usize,
) -> Vec<crate::types::ShardEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let feed: Vec<_> = j.events_by_shard(entity_type, shard, after).try_collect().await.expect("feed");
        if feed.len() >= n || std::time::Instant::now() > deadline {
            return feed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `n` ids with prefix `p` whose entities fall in `shard`.
fn same_shard(shards: u32, shard: u32, p: &str, n: usize) -> Vec<EntityKey> {
    (0..).map(|i| key(&format!("{p}{i}"))).filter(|k| k.shard(shards) == shard).take(n).collect()
}

/// Many entities of one shard appending at once (group commits, in-flight
/// appends): the feed is still 1..=n without gaps, each entity's events in
/// seq order; after a restart offsets continue where they stopped.
pub async fn feed_offsets_are_gapless_under_concurrency_and_restarts(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let shard = key("gapless").shard(j.shards());
    let ids = same_shard(j.shards(), shard, "gapless-", 12);
    let mut tasks = Vec::new();
    for e in ids.clone() {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..6 {
                j.append(&e, seq, vec![event(seq + 1)]).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let check = |feed: &[crate::types::ShardEvent], n: u64| {
        assert_eq!(feed.iter().map(|f| f.offset).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "gapless");
        for e in &ids {
            let seqs: Vec<u64> = feed.iter().filter(|f| &f.entity == e).map(|f| f.event.seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{e}: seq order in the feed");
        }
    };
    check(&feed_of(&*j, "conf", shard, 0, 72).await, 72);
    drop(j);
    let j = b.reopen().await;
    j.append(&ids[0], 6, events(7..=8)).await.unwrap();
    check(&feed_of(&*j, "conf", shard, 0, 74).await, 74);
    assert_eq!(j.feed_bounds("conf", shard).await.unwrap().last, 74);
}

/// Appends that are refused — a conflict, a duplicate key, a stale fence —
/// take no offsets: the feed stays 1, 2, 3, ... around them, when the unit
/// passes to a new owner epoch, and after a restart.
pub async fn refused_appends_leave_no_hole_in_the_feed(b: &mut dyn TestBackend) {
    use std::time::Duration;
    let j = b.open().await;
    let shard = key("holes").shard(j.shards());
    let ids = same_shard(j.shards(), shard, "holes-", 3);
    let (a, c, d) = (&ids[0], &ids[1], &ids[2]);
    let day = Duration::from_secs(86_400);
    j.commit(a, AppendRequest::new(0, events(1..=2)).with_key("k1", day)).await.expect("append");
    assert!(matches!(j.append(a, 0, events(9..=9)).await, Err(AppendError::Conflict { .. })));
    assert!(matches!(
        j.commit(a, AppendRequest::new(2, events(9..=9)).with_key("k1", day)).await,
        Err(AppendError::Duplicate { .. })
    ));
    j.append(c, 0, events(1..=1)).await.expect("append");
    j.raise_fence(d, 5).await.expect("raise");
    assert!(matches!(
        j.commit(d, AppendRequest::new(0, events(1..=1)).fenced(3)).await,
        Err(AppendError::Fenced { .. })
    ));
    j.append(a, 2, events(3..=3)).await.expect("append");
    let offsets = |f: &[crate::types::ShardEvent]| f.iter().map(|e| e.offset).collect::<Vec<_>>();
    assert_eq!(offsets(&feed_of(&*j, "conf", shard, 0, 4).await), vec![1, 2, 3, 4], "no holes");
    // A new owner epoch takes the unit over: offsets go on from 5.
    j.open_feed("conf", shard, 7).await.expect("open under epoch 7");
    for e in [a, c, d] {
        j.raise_fence(e, 7).await.expect("raise");
    }
    j.commit(d, AppendRequest::new(0, events(1..=1)).fenced(7)).await.expect("fenced append");
    assert!(matches!(
        j.commit(c, AppendRequest::new(1, events(2..=2)).fenced(6)).await,
        Err(AppendError::Fenced { .. })
    ));
    j.commit(c, AppendRequest::new(1, events(2..=2)).fenced(7)).await.expect("fenced append");
    assert_eq!(offsets(&feed_of(&*j, "conf", shard, 0, 6).await), (1..=6).collect::<Vec<_>>());
    drop(j);
    let j = b.reopen().await;
    j.open_feed("conf", shard, 7).await.expect("reopen under epoch 7");
    j.commit(a, AppendRequest::new(3, events(4..=4)).fenced(7)).await.expect("append after reopen");
    let feed = feed_of(&*j, "conf", shard, 0, 7).await;
    assert_eq!(offsets(&feed), (1..=7).collect::<Vec<_>>());
    assert_eq!((&feed[6].entity, feed[6].event.seq), (a, 4));
}

/// A retried idempotency key is refused however many appends came since,
/// after a restart too, until its retention passes; a refused append
/// records no key.
pub async fn idempotency_keys_are_remembered_by_time_not_count(b: &mut dyn TestBackend) {
    use std::time::Duration;
    let j = b.open().await;
    let e = key("idem");
    let day = Duration::from_secs(86_400);
    j.commit(&e, AppendRequest::new(0, events(1..=1)).with_key("first", day)).await.unwrap();
    for seq in 1..150 {
        j.commit(&e, AppendRequest::new(seq, events(seq + 1..=seq + 1)).with_key(format!("k{seq}"), day))
            .await
            .unwrap();
    }
    match j.commit(&e, AppendRequest::new(150, events(999..=999)).with_key("first", day)).await {
        Err(AppendError::Duplicate { key, seq: 1, .. }) => assert_eq!(key, "first"),
        other => panic!("a retry of the first key after 149 newer ones is a duplicate, got {other:?}"),
    }
    assert_eq!(j.last_seq(&e).await.unwrap(), 150, "nothing written");
    assert_eq!(j.find_key(&e, "first").await.unwrap(), Some(1));
    assert_eq!(j.find_key(&e, "k149").await.unwrap(), Some(150));
    assert_eq!(j.find_key(&e, "never").await.unwrap(), None);
    assert_eq!(j.find_key(&key("idem-other"), "first").await.unwrap(), None, "keys are per entity");
    // A refused append (a conflict) records nothing.
    assert!(j.commit(&e, AppendRequest::new(3, events(1..=1)).with_key("refused", day)).await.is_err());
    assert_eq!(j.find_key(&e, "refused").await.unwrap(), None);
    // A key past its retention is forgotten.
    j.commit(&e, AppendRequest::new(150, events(151..=151)).with_key("brief", Duration::from_millis(1))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(j.find_key(&e, "brief").await.unwrap(), None);
    j.commit(&e, AppendRequest::new(151, events(152..=152)).with_key("brief", day)).await.expect("runs again");
    drop(j);
    let j = b.reopen().await;
    assert!(matches!(
        j.commit(&e, AppendRequest::new(152, events(1..=1)).with_key("first", day)).await,
        Err(AppendError::Duplicate { seq: 1, .. })
    ));
}

/// A key remembered anew after its record expired is remembered for its
/// new retention: a retention sweep that removes the old record's expiry
/// does not take the new record with it.
pub async fn a_key_remembered_anew_outlives_the_sweep_of_its_old_record(b: &mut dyn TestBackend) {
    use std::time::Duration;
    // A short feed retention makes the backends that sweep on a timer sweep often.
    let Some(j) = b.open_with_feed_retention(Duration::from_millis(500)).await else { return };
    let e = key("anew");
    let day = Duration::from_secs(86_400);
    j.commit(&e, AppendRequest::new(0, events(1..=1)).with_key("k", Duration::from_millis(1))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Expired, so it runs again and is remembered for a day from now; the
    // old record's expiry may not have been swept yet.
    j.commit(&e, AppendRequest::new(1, events(2..=2)).with_key("k", day)).await.expect("an expired key runs again");
    // Several sweeps later the key is still remembered.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(j.find_key(&e, "k").await.unwrap(), Some(2));
    match j.commit(&e, AppendRequest::new(2, events(3..=3)).with_key("k", day)).await {
        Err(AppendError::Duplicate { seq: 2, .. }) => {}
        other => panic!("a retry within the new retention is a duplicate, got {other:?}"),
    }
}

/// One append may carry several invocations' keys (a runtime batching an
/// entity's queued commands), each recorded at its own seq; a later append
/// with any of them is a duplicate naming that key's seq, and writes
/// nothing; malformed keys (outside the append, out of seq order, a seq
/// or a key twice) are refused.
pub async fn several_keys_in_one_append_each_at_its_seq(b: &mut dyn TestBackend) {
    use std::time::Duration;
    let j = b.open().await;
    let e = key("idem-batch");
    let day = Duration::from_secs(86_400);
    let batch =
        AppendRequest::new(0, events(1..=4)).with_key_at("a", day, 1).with_key_at("c", day, 3).with_key("d", day);
    j.commit(&e, batch).await.expect("append");
    assert_eq!(j.find_key(&e, "a").await.unwrap(), Some(1));
    assert_eq!(j.find_key(&e, "c").await.unwrap(), Some(3));
    assert_eq!(j.find_key(&e, "d").await.unwrap(), Some(4));
    let retry = AppendRequest::new(4, events(5..=6)).with_key_at("new", day, 5).with_key("c", day);
    match j.commit(&e, retry).await {
        Err(AppendError::Duplicate { key, seq: 3, .. }) => assert_eq!(key, "c"),
        other => panic!("a batch holding a committed key is a duplicate of it, got {other:?}"),
    }
    assert_eq!(j.last_seq(&e).await.unwrap(), 4, "nothing written");
    assert_eq!(j.find_key(&e, "new").await.unwrap(), None, "the refused batch recorded none of its keys");
    for bad in [
        AppendRequest::new(4, events(5..=5)).with_key_at("x", day, 9),
        AppendRequest::new(4, events(5..=6)).with_key_at("x", day, 5).with_key("x", day),
        AppendRequest::new(4, events(5..=6)).with_key_at("x", day, 6).with_key("y", day),
        AppendRequest::new(4, events(5..=6)).with_key("x", day).with_key_at("y", day, 5),
    ] {
        assert!(
            matches!(j.commit(&e, bad).await, Err(AppendError::Journal(JournalError::Invalid(_)))),
            "malformed keys are refused"
        );
    }
    assert_eq!(j.last_seq(&e).await.unwrap(), 4);
    drop(j);
    let j = b.reopen().await;
    assert!(matches!(
        j.commit(&e, AppendRequest::new(4, events(5..=5)).with_key("a", day)).await,
        Err(AppendError::Duplicate { seq: 1, .. })
    ));
}

/// A reader that fell behind the feed's retention gets `FeedExpired`, not a
/// silent skip; from the expired point on it reads on.
pub async fn a_reader_behind_retention_gets_an_error(b: &mut dyn TestBackend) {
    use std::time::Duration;
    let Some(j) = b.open_with_feed_retention(Duration::from_millis(500)).await else { return };
    let e = key("retained");
    let shard = e.shard(j.shards());
    j.append(&e, 0, events(1..=3)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let expired_to = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Appends drive the memory backend's expiry; the others sweep on a timer.
        let seq = j.last_seq(&e).await.unwrap();
        j.append(&e, seq, vec![event(seq + 1)]).await.unwrap();
        let b = j.feed_bounds("conf", shard).await.unwrap();
        if b.expired_to >= 3 {
            break b.expired_to;
        }
        assert!(std::time::Instant::now() < deadline, "entries never expired: {b:?}");
    };
    match j.events_by_shard("conf", shard, 0).try_collect::<Vec<_>>().await {
        Err(JournalError::FeedExpired { after: 0, expired_to: to, .. }) => assert!(to >= 3),
        other => panic!("behind retention: an error, got {other:?}"),
    }
    let rest: Vec<_> = j.events_by_shard("conf", shard, expired_to).try_collect().await.unwrap();
    assert!(rest.iter().all(|f| f.offset > expired_to));
}

/// A reader of the runtime's records gets every offset of the feed, and
/// each record in full; an entity's own events may come unread.
pub async fn internal_by_shard_has_every_offset_and_the_records_in_full(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let e = key("flow");
    let shard = e.shard(j.shards());
    let record = |n: u64| NewEvent {
        type_name: format!("{}send", crate::INTERNAL_TYPE_PREFIX),
        version: 1,
        payload: format!("record-{n}").into_bytes(),
        metadata: b"m".to_vec(),
    };
    j.append(&e, 0, vec![event(1), record(2), event(3)]).await.unwrap();
    j.append(&e, 3, vec![record(4)]).await.unwrap();
    // Once all four are visible (a backend may show a commit to feed
    // readers a few ms after acknowledging it), both reads see the same.
    let all = feed_of(&*j, "conf", shard, 0, 4).await;
    assert_eq!(all.len(), 4, "the feed holds both appends");
    let internal: Vec<_> = j.internal_by_shard("conf", shard, 0).try_collect().await.unwrap();
    let offsets = |f: &[ShardEvent]| f.iter().map(|f| (f.offset, f.entity.clone(), f.event.seq)).collect::<Vec<_>>();
    assert_eq!(offsets(&internal), offsets(&all), "every offset, entity and seq");
    for (i, a) in internal.iter().zip(&all) {
        if crate::is_internal_type(&a.event.type_name) {
            assert_eq!(i.event, a.event, "a record comes in full");
        } else {
            assert!(
                i.event == a.event || i.event == PersistedEvent::unread(a.event.seq, i.event.timestamp_ms),
                "an entity's event comes in full or unread: {:?}",
                i.event
            );
        }
    }
    let after: Vec<_> = j.internal_by_shard("conf", shard, all[1].offset).try_collect().await.unwrap();
    assert_eq!(offsets(&after), offsets(&all[2..]), "from an offset on");
}

/// `delete_to` removes a prefix; seqs are never reused.
pub async fn delete_prefix(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let e = key("delete");
    j.append(&e, 0, events(1..=10)).await.unwrap();
    j.delete_to(&e, 4).await.unwrap();
    let got = read_all(&*j, &e, 1, u64::MAX).await;
    assert_eq!(got.first().map(|e| e.seq), Some(5));
    assert_eq!(got.len(), 6);
    j.delete_to(&e, 100).await.unwrap();
    assert!(read_all(&*j, &e, 1, u64::MAX).await.is_empty());
    assert_eq!(j.last_seq(&e).await.unwrap(), 10, "last seq survives deletion");
    assert!(matches!(j.append(&e, 0, events(1..=1)).await, Err(AppendError::Conflict { actual: 10, .. })));
    j.append(&e, 10, events(11..=11)).await.unwrap();
    assert_eq!(read_all(&*j, &e, 1, u64::MAX).await.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![11]);
}

/// `purge` leaves nothing of the entity (events, snapshot, keys, listing,
/// feed entries) and nothing of any other entity is touched; the entity can
/// start again at seq 1, its new feed entries after every offset given out.
pub async fn purge_leaves_nothing_of_the_entity(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let day = std::time::Duration::from_secs(86_400);
    let (e, other) = (key("purged"), key("kept-beside-purged"));
    let entity_ids = |j: Arc<dyn Journal>| async move {
        let list: Vec<_> = j.entities("conf").try_collect().await.unwrap();
        list.into_iter().map(|i| i.entity_id).collect::<HashSet<_>>()
    };
    j.commit(&e, AppendRequest::new(0, events(1..=3)).with_key("k1", day)).await.unwrap();
    j.commit(&other, AppendRequest::new(0, events(1..=2)).with_key("k1", day)).await.unwrap();
    j.commit(&e, AppendRequest::new(3, events(4..=5)).with_key("k2", day)).await.unwrap();
    j.save_snapshot(&e, Snapshot { seq: 4, version: 1, timestamp_ms: 1, payload: b"s".to_vec() }).await.unwrap();
    let (shard, other_shard) = (e.shard(j.shards()), other.shard(j.shards()));
    let in_shard = 5 + if other_shard == shard { 2 } else { 0 };
    let last_offset = feed_of(&*j, "conf", shard, 0, in_shard).await.last().map(|f| f.offset).unwrap();

    j.purge(&e).await.unwrap();
    assert_eq!(j.last_seq(&e).await.unwrap(), 0);
    assert!(read_all(&*j, &e, 1, u64::MAX).await.is_empty());
    assert!(j.load_snapshot(&e).await.unwrap().is_none());
    assert_eq!(j.find_key(&e, "k1").await.unwrap(), None);
    assert_eq!(j.find_key(&e, "k2").await.unwrap(), None);
    assert!(!entity_ids(j.clone()).await.contains("purged"));
    let feed = feed_of(&*j, "conf", shard, 0, 0).await;
    assert!(feed.iter().all(|f| f.entity != e), "feed entries of the purged entity");
    // The other entity is untouched.
    assert_eq!(read_all(&*j, &other, 1, u64::MAX).await.len(), 2);
    assert_eq!(j.find_key(&other, "k1").await.unwrap(), Some(2));
    let feed = feed_of(&*j, "conf", other_shard, 0, 0).await;
    assert_eq!(feed.iter().filter(|f| f.entity == other).count(), 2);
    // Purging again, or an entity never written, changes nothing.
    j.purge(&e).await.unwrap();
    j.purge(&key("never-written")).await.unwrap();

    // A new life from seq 1; its feed entry comes after every offset given out.
    j.commit(&e, AppendRequest::new(0, events(9..=9)).with_key("k1", day)).await.expect("starts again at seq 1");
    assert_eq!(read_all(&*j, &e, 1, u64::MAX).await.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
    let feed = feed_of(&*j, "conf", shard, last_offset, 1).await;
    let mine: Vec<_> = feed.iter().filter(|f| f.entity == e).collect();
    assert_eq!(mine.len(), 1);
    assert!(mine[0].offset > last_offset, "offsets are never reused");
    drop(j);
    let j = b.reopen().await;
    assert_eq!(j.last_seq(&e).await.unwrap(), 1, "the purge and the new life survive a restart");
    assert_eq!(read_all(&*j, &other, 1, u64::MAX).await.len(), 2);
}

/// Listing the entities of a type, ordered by id, other types excluded.
pub async fn lists_entities(b: &mut dyn TestBackend) {
    let j = b.open().await;
    for id in ["c", "a", "b/ü"] {
        j.append(&EntityKey::new("listed", id), 0, events(1..=2)).await.unwrap();
    }
    j.append(&EntityKey::new("listed-not", "z"), 0, events(1..=1)).await.unwrap();
    let got: Vec<_> = j.entities("listed").try_collect().await.unwrap();
    assert_eq!(got.iter().map(|e| e.entity_id.as_str()).collect::<Vec<_>>(), vec!["a", "b/ü", "c"]);
    assert!(got.iter().all(|e| e.last_seq == 2));
    let none: Vec<_> = j.entities("nothing").try_collect().await.unwrap();
    assert!(none.is_empty());
}

/// Everything acknowledged is there after a restart, and appends continue.
pub async fn reopen_keeps_everything(b: &mut dyn TestBackend) {
    let e = key("reopen");
    let mut ids = HashSet::new();
    {
        let j = b.open().await;
        j.append(&e, 0, events(1..=3)).await.unwrap();
        let s = Snapshot { seq: 3, version: 1, timestamp_ms: 1, payload: b"s".to_vec() };
        j.save_snapshot(&e, s).await.unwrap();
        let feed = feed_of(&*j, "conf", e.shard(j.shards()), 0, 3).await;
        ids.extend(feed.iter().map(|f| f.offset));
    }
    let j = b.reopen().await;
    assert_eq!(j.last_seq(&e).await.unwrap(), 3);
    assert_eq!(read_all(&*j, &e, 1, u64::MAX).await.len(), 3);
    assert_eq!(j.load_snapshot(&e).await.unwrap().map(|s| s.seq), Some(3));
    assert!(matches!(j.append(&e, 0, events(1..=1)).await, Err(AppendError::Conflict { actual: 3, .. })));
    j.append(&e, 3, events(4..=4)).await.unwrap();
    let feed = feed_of(&*j, "conf", e.shard(j.shards()), 0, 4).await;
    let new: Vec<_> = feed.iter().filter(|f| !ids.contains(&f.offset)).collect();
    assert_eq!(new.len(), 1, "feed offsets are not reused after a restart");
    assert_eq!(new[0].event.seq, 4);
}

/// The fence: once a new owner raised it, an older owner's late write is
/// refused and writes nothing; a lower raise is refused; the new owner's
/// writes and unfenced writes go on; conflicts stay conflicts.
pub async fn fence_refuses_stale_writers(b: &mut dyn TestBackend) {
    let j = b.open().await;
    let e = key("fence");
    let fenced = |expected, events, epoch| AppendRequest::new(expected, events).fenced(epoch);
    match j.commit(&e, fenced(0, events(1..=1), 5)).await {
        Err(AppendError::Fenced { epoch: 5, current: 0, .. }) => {}
        other => panic!("a writer that never raised the fence is refused, got {other:?}"),
    }
    j.raise_fence(&e, 5).await.expect("raise");
    assert_eq!(j.last_seq(&e).await.unwrap(), 0, "a raise writes no event");
    j.commit(&e, fenced(0, events(1..=2), 5)).await.expect("the owner appends");
    j.raise_fence(&e, 5).await.expect("raising to the current epoch is a no-op");
    // A new owner takes over; the old owner's write arrives late.
    j.raise_fence(&e, 9).await.expect("raise");
    match j.commit(&e, fenced(2, events(3..=3), 5)).await {
        Err(AppendError::Fenced { epoch: 5, current: 9, .. }) => {}
        other => panic!("a stale owner's late write is fenced off, got {other:?}"),
    }
    assert_eq!(j.last_seq(&e).await.unwrap(), 2, "nothing was written");
    match j.raise_fence(&e, 7).await {
        Err(AppendError::Fenced { epoch: 7, current: 9, .. }) => {}
        other => panic!("a lower raise is refused, got {other:?}"),
    }
    j.commit(&e, fenced(2, events(3..=3), 9)).await.expect("the new owner appends");
    match j.commit(&e, fenced(2, events(4..=4), 9)).await {
        Err(AppendError::Conflict { expected: 2, actual: 3, .. }) => {}
        other => panic!("a wrong seq under the right fence is a conflict, got {other:?}"),
    }
    j.append(&e, 3, events(4..=4)).await.expect("unfenced appends ignore the fence");
    let got = read_all(&*j, &e, 1, u64::MAX).await;
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(got[2].payload, event(3).payload);
    // An entity fenced before its first event takes unfenced and fenced appends.
    let fresh = key("fence-fresh");
    j.raise_fence(&fresh, 3).await.expect("raise");
    assert!(read_all(&*j, &fresh, 1, u64::MAX).await.is_empty());
    j.append(&fresh, 0, events(1..=1)).await.expect("unfenced first append");
    j.commit(&fresh, fenced(1, events(2..=2), 3)).await.expect("fenced append");
    assert_eq!(j.last_seq(&fresh).await.unwrap(), 2);
}

/// A raised fence is durable: after a restart a stale epoch is still refused.
pub async fn fence_survives_reopen(b: &mut dyn TestBackend) {
    let e = key("fence-reopen");
    {
        let j = b.open().await;
        j.raise_fence(&e, 4).await.expect("raise");
        j.commit(&e, AppendRequest::new(0, events(1..=1)).fenced(4)).await.expect("append");
        j.raise_fence(&e, 6).await.expect("raise");
    }
    let j = b.reopen().await;
    assert!(matches!(
        j.commit(&e, AppendRequest::new(1, events(2..=2)).fenced(4)).await,
        Err(AppendError::Fenced { current: 6, .. })
    ));
    j.commit(&e, AppendRequest::new(1, events(2..=2)).fenced(6)).await.expect("append");
}

/// Commits through [`Journal::commit_then`], or through `commit` when the
/// backend hands the append back.
async fn commit_then(j: &dyn Journal, e: &EntityKey, request: AppendRequest) -> Result<crate::AppendAck, AppendError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = told.clone();
    let done: crate::AppendDone = Box::new(move |r| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = tx.send(r);
    });
    match j.commit_then(e, request, done) {
        Some((request, _)) => j.commit(e, request).await,
        None => {
            let r = rx.await.expect("done is told the outcome");
            assert_eq!(told.load(std::sync::atomic::Ordering::SeqCst), 1, "done is told once");
            r
        }
    }
}

/// An append handed over with `commit_then` is answered as `commit` answers
/// it — acknowledged once durable and readable, a conflict, a duplicate key,
/// a stale fence — and what it acknowledged is there after a reopen.
pub async fn commit_then_answers_as_commit_does(b: &mut dyn TestBackend) {
    let day = std::time::Duration::from_secs(86_400);
    let j = b.open().await;
    let e = key("then");
    let ack = commit_then(&*j, &e, AppendRequest::new(0, events(1..=2)).with_key("k1", day)).await.expect("append");
    assert_eq!((ack.first_seq, ack.last_seq), (1, 2));
    assert_eq!(read_all(&*j, &e, 1, 2).await.len(), 2, "readable once acknowledged");
    assert!(matches!(
        commit_then(&*j, &e, AppendRequest::new(1, events(3..=3))).await,
        Err(AppendError::Conflict { expected: 1, actual: 2, .. })
    ));
    assert!(matches!(
        commit_then(&*j, &e, AppendRequest::new(2, events(3..=3)).with_key("k1", day)).await,
        Err(AppendError::Duplicate { seq: 2, .. })
    ));
    j.raise_fence(&e, 5).await.expect("fence");
    assert!(matches!(
        commit_then(&*j, &e, AppendRequest::new(2, events(3..=3)).fenced(4)).await,
        Err(AppendError::Fenced { epoch: 4, current: 5, .. })
    ));
    let ack = commit_then(&*j, &e, AppendRequest::new(2, events(3..=3)).fenced(5)).await.expect("fenced append");
    assert_eq!(ack.last_seq, 3);
    drop(j);
    let j = b.reopen().await;
    assert_eq!(j.last_seq(&e).await.unwrap(), 3);
    let got = read_all(&*j, &e, 1, 3).await;
    assert_eq!(
        got.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        (1..=3).map(|n| event(n).payload).collect::<Vec<_>>()
    );
}

/// Instantiates the whole conformance suite as tests in module `$name`,
/// with a fresh backend from `$backend` for each test.
#[macro_export]
macro_rules! journal_conformance_tests {
    ($name:ident, $backend:expr) => {
        $crate::journal_conformance_tests!(@suite $name, $backend;
            append_and_read_in_order, conflict_writes_nothing, racing_writers_one_winner,
            concurrent_entities, ranges_and_paging, snapshots, shard_feed, delete_prefix,
            lists_entities, reopen_keeps_everything, fence_refuses_stale_writers, fence_survives_reopen,
            feed_offsets_are_gapless_under_concurrency_and_restarts, refused_appends_leave_no_hole_in_the_feed,
            idempotency_keys_are_remembered_by_time_not_count, several_keys_in_one_append_each_at_its_seq,
            a_reader_behind_retention_gets_an_error, internal_by_shard_has_every_offset_and_the_records_in_full,
            purge_leaves_nothing_of_the_entity, a_key_remembered_anew_outlives_the_sweep_of_its_old_record,
            commit_then_answers_as_commit_does);
    };
    (@suite $name:ident, $backend:expr; $($test:ident),*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let mut backend = $backend;
                    $crate::conformance::$test(&mut backend).await;
                }
            )*
        }
    };
}

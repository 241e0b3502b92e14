//! The conformance suite on every backend this crate ships.

use std::sync::Arc;

use tessera_journal::conformance::{MemoryBackend, TestBackend};
use tessera_journal::{Journal, LocalJournal};

/// A local journal in a temporary directory; reopening opens the same directory.
struct LocalBackend {
    dir: tempfile::TempDir,
    extra: Vec<tempfile::TempDir>,
}

impl LocalBackend {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir"), extra: Vec::new() }
    }
}

#[async_trait::async_trait]
impl TestBackend for LocalBackend {
    async fn open(&mut self) -> Arc<dyn Journal> {
        // A previous handle may still be closing on another thread: retry briefly.
        for _ in 0..50 {
            match LocalJournal::open(self.dir.path()) {
                Ok(j) => return Arc::new(j),
                Err(tessera_journal::OpenError::Locked { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("open: {e}"),
            }
        }
        panic!("journal stayed locked")
    }
    async fn open_with_feed_retention(&mut self, retention: std::time::Duration) -> Option<Arc<dyn Journal>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = LocalJournal::builder(dir.path()).feed_retention(retention).open().expect("open");
        self.extra.push(dir);
        Some(Arc::new(j))
    }
}

tessera_journal::journal_conformance_tests!(memory, MemoryBackend::default());
tessera_journal::journal_conformance_tests!(local, LocalBackend::new());

/// The local journal's own format: since version 2 an append writes no
/// index row after the entity's first; the last seq comes from the keys.
mod local_format {
    use futures::TryStreamExt;
    use tessera_journal::conformance::event;
    use tessera_journal::{AppendError, EntityKey, Journal, LocalJournal};

    /// Opens `dir`; a dropped handle may still be closing on another thread.
    async fn open(dir: &std::path::Path) -> LocalJournal {
        for _ in 0..100 {
            match LocalJournal::open(dir) {
                Ok(j) => return j,
                Err(tessera_journal::OpenError::Locked { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("open: {e}"),
            }
        }
        panic!("journal stayed locked")
    }

    async fn appends(j: &LocalJournal, e: &EntityKey, sizes: &[u64]) -> u64 {
        let mut last = j.last_seq(e).await.expect("last seq");
        for &n in sizes {
            let evs = (last + 1..=last + n).map(event).collect();
            last = j.append(e, last, evs).await.expect("append").last_seq;
        }
        last
    }

    async fn listed(j: &LocalJournal, entity_type: &str) -> Vec<(String, u64, u64)> {
        let list: Vec<_> = j.entities(entity_type).try_collect().await.expect("entities");
        list.into_iter().map(|i| (i.entity_id, i.last_seq, i.deleted_to)).collect()
    }

    /// The storage engine flushes and compacts while appends and reads go on
    /// (1 MiB memtables, ~30 MB written by eight tasks): every acknowledged
    /// event reads back, during the load and after a reopen. Guards the
    /// patched lsm-tree (third_party/README.md), which persists a tree's
    /// new version outside the lock that every write reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushes_and_compactions_under_load_keep_every_event() {
        use std::sync::Arc;
        use tessera_journal::{Durability, NewEvent};
        const TASKS: u64 = 8;
        const ENTITIES: u64 = 25;
        const ROUNDS: u64 = 60;
        const PER_APPEND: u64 = 4;
        fn ev(entity: &str, seq: u64) -> NewEvent {
            NewEvent {
                type_name: "Filled".into(),
                version: 1,
                payload: format!("{entity}/{seq}/{}", "x".repeat(600)).into_bytes(),
                metadata: Vec::new(),
            }
        }
        async fn check(j: &LocalJournal, e: &EntityKey, last: u64) {
            let got: Vec<_> = j.read(e, 1..=u64::MAX).try_collect().await.expect("read");
            assert_eq!(got.len() as u64, last, "{e:?}: events read back");
            for (i, r) in got.iter().enumerate() {
                assert_eq!(r.seq, i as u64 + 1);
                assert_eq!(r.payload, ev(&e.entity_id, r.seq).payload, "{e:?} #{}", r.seq);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(
            LocalJournal::builder(dir.path())
                .memtable_bytes(1 << 20)
                .durability(Durability::Buffered)
                .open()
                .expect("open"),
        );
        let before = LocalJournal::storage_versions(dir.path());
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let j = j.clone();
                tokio::spawn(async move {
                    for round in 0..ROUNDS {
                        for n in 0..ENTITIES {
                            let e = EntityKey::new("stock", format!("t{t}-e{n}"));
                            let last = round * PER_APPEND;
                            let evs = (last + 1..=last + PER_APPEND).map(|s| ev(&e.entity_id, s)).collect();
                            j.append(&e, last, evs).await.expect("append");
                            if (round + n) % 16 == 0 {
                                check(&j, &e, last + PER_APPEND).await;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let entities: Vec<_> = (0..TASKS)
            .flat_map(|t| (0..ENTITIES).map(move |n| EntityKey::new("stock", format!("t{t}-e{n}"))))
            .collect();
        for e in &entities {
            check(&j, e, ROUNDS * PER_APPEND).await;
        }
        j.flush().expect("flush");
        let after = LocalJournal::storage_versions(dir.path());
        assert!(
            after >= before + 20,
            "flushes and compactions changed the trees' versions only {} times",
            after - before
        );
        drop(j);
        let j = open(dir.path()).await;
        for e in &entities {
            check(&j, e, ROUNDS * PER_APPEND).await;
        }
    }

    /// Retention with a backlog larger than what the writer removes between
    /// two group commits: every expired entry goes, in chunks, the expired
    /// mark only ever moves forward, and the feed reads on after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retention_backlog_is_removed_in_chunks_and_the_mark_only_moves_forward() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let j = LocalJournal::builder(dir.path()).feed_retention(Duration::from_millis(300)).open().expect("open");
        let e = EntityKey::new("stock", "backlog");
        let shard = e.shard(j.shards());
        // 5 000 events in one unit: more than two removal chunks.
        let last = appends(&j, &e, &[500; 10]).await;
        assert_eq!(last, 5_000);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        loop {
            let b = j.feed_bounds("stock", shard).await.unwrap();
            assert!(b.expired_to >= seen, "the expired mark went back: {seen} -> {}", b.expired_to);
            seen = b.expired_to;
            if seen >= 5_000 {
                break;
            }
            assert!(Instant::now() < deadline, "the backlog was never removed: {b:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rest: Vec<_> = j.events_by_shard("stock", shard, seen).try_collect().await.unwrap();
        assert!(rest.is_empty(), "nothing after the last expired offset: {}", rest.len());
        // The events themselves stay (retention is the feed's, not the entity's).
        assert_eq!(j.last_seq(&e).await.unwrap(), 5_000);
        let next = j.append(&e, 5_000, vec![event(5_001)]).await.unwrap();
        assert_eq!(next.last_seq, 5_001);
        let after: Vec<_> = j.events_by_shard("stock", shard, seen).try_collect().await.unwrap();
        assert_eq!(after.iter().map(|f| f.offset).collect::<Vec<_>>(), vec![5_001], "offsets go on after the mark");
    }

    #[tokio::test]
    async fn an_entitys_last_seq_comes_back_from_its_events_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let e = EntityKey::new("stock", "s-1");
        {
            let j = open(dir.path()).await;
            assert_eq!(appends(&j, &e, &[1, 2, 3, 1]).await, 7);
            drop(j);
        }
        let j = open(dir.path()).await;
        assert_eq!(j.last_seq(&e).await.unwrap(), 7, "from the last event key, not the first append's row");
        assert_eq!(listed(&j, "stock").await, vec![("s-1".into(), 7, 0)]);
        let stale = j.append(&e, 1, vec![event(2)]).await;
        assert!(matches!(stale, Err(AppendError::Conflict { actual: 7, .. })), "{stale:?}");
        assert_eq!(appends(&j, &e, &[2]).await, 9);
    }

    #[tokio::test]
    async fn a_deleted_history_keeps_its_last_seq_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let e = EntityKey::new("stock", "s-2");
        {
            let j = open(dir.path()).await;
            appends(&j, &e, &[3, 3]).await;
            j.delete_to(&e, 6).await.expect("delete");
            drop(j);
        }
        let j = open(dir.path()).await;
        assert_eq!(j.last_seq(&e).await.unwrap(), 6, "no event left: the row the delete wrote");
        assert_eq!(listed(&j, "stock").await, vec![("s-2".into(), 6, 6)]);
        assert_eq!(appends(&j, &e, &[1]).await, 7);
        drop(j);
        let j = open(dir.path()).await;
        assert_eq!(j.last_seq(&e).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_version_1_directory_is_marked_version_2_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let e = EntityKey::new("stock", "s-3");
        {
            let j = open(dir.path()).await;
            appends(&j, &e, &[2]).await;
            drop(j);
        }
        let marker = dir.path().join(tessera_journal::local::MARKER_FILE);
        std::fs::write(&marker, br#"{"format":"tessera-local-journal","version":1}"#).unwrap();
        let j = open(dir.path()).await;
        let text = std::fs::read_to_string(&marker).unwrap();
        assert!(text.contains("\"version\": 2"), "upgraded: {text}");
        assert_eq!(appends(&j, &e, &[1]).await, 3);
    }

    #[tokio::test]
    async fn a_version_1_directory_held_open_by_another_is_not_marked() {
        let dir = tempfile::tempdir().unwrap();
        let holder = open(dir.path()).await;
        let marker = dir.path().join(tessera_journal::local::MARKER_FILE);
        std::fs::write(&marker, br#"{"format":"tessera-local-journal","version":1}"#).unwrap();
        let second = LocalJournal::open(dir.path());
        assert!(matches!(second, Err(tessera_journal::OpenError::Locked { .. })), "the holder keeps it");
        let text = std::fs::read_to_string(&marker).unwrap();
        assert!(text.contains("\"version\":1"), "an older build still running there keeps its marker: {text}");
        drop(holder);
    }
}

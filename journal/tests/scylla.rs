//! The Scylla backend against a real Cassandra 5 server (started by
//! `deploy/local/cassandra.sh` unless `TESSERA_SCYLLA_URL` names one): the
//! whole conformance suite, plus bucket crossing, the token function and a
//! streamed replay of a million events.

use std::sync::Arc;

use futures::TryStreamExt;
use tessera_journal::conformance::TestBackend;
use tessera_journal::scylla::MigrateOptions;
use tessera_journal::{AppendError, AppendRequest, EntityKey, Journal, NewEvent, ScyllaJournal};

use tessera_test_support::servers::{cassandra_script, scylla_server as server, unique_keyspace};

/// A fresh keyspace migrated with `bucket_size`.
async fn fresh(bucket_size: i64, options: &str) -> (ScyllaJournal, String) {
    let ks = unique_keyspace();
    let url = format!("{}/{ks}{options}", server());
    ScyllaJournal::migrate(&url, &MigrateOptions { bucket_size, ..MigrateOptions::default() }).await.expect("migrate");
    (ScyllaJournal::connect(&url, 1024).await.expect("connect"), url)
}

/// Held by the million-event load and by the TLS test while it starts a
/// second Cassandra: beside each other on two cores the JVM's startup
/// starved the shared server until every write of the load timed out (CI,
/// 2026-12-01). The rest of both tests runs beside the others.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct ScyllaBackend {
    url: Option<String>,
}

#[async_trait::async_trait]
impl TestBackend for ScyllaBackend {
    async fn open(&mut self) -> Arc<dyn Journal> {
        match &self.url {
            Some(url) => Arc::new(ScyllaJournal::connect(url, 1024).await.expect("reconnect")),
            None => {
                let (j, url) = fresh(1000, "").await;
                self.url = Some(url);
                Arc::new(j)
            }
        }
    }
}

tessera_journal::journal_conformance_tests!(scylla, ScyllaBackend { url: None });

fn ev(n: u64) -> NewEvent {
    NewEvent { type_name: "Ev".into(), version: 1, payload: format!("p{n}").into_bytes(), metadata: vec![] }
}

async fn seqs(j: &ScyllaJournal, e: &EntityKey) -> Vec<u64> {
    j.read(e, 1..=u64::MAX).map_ok(|e| e.seq).try_collect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_crossing_a_bucket_boundary_are_all_or_nothing() {
    let (j, url) = fresh(10, "").await;
    let e = EntityKey::new("cross", "a");
    j.append(&e, 0, (1..=8).map(ev).collect()).await.unwrap();
    // 9..=13 crosses the boundary at 10: one partition, one batch.
    j.append(&e, 8, (9..=13).map(ev).collect()).await.unwrap();
    assert_eq!(seqs(&j, &e).await, (1..=13).collect::<Vec<_>>());
    // A stale writer's crossing append is refused whole.
    assert!(matches!(j.append(&e, 8, (9..=12).map(ev).collect()).await, Err(AppendError::Conflict { actual: 13, .. })));
    // The next append opens bucket 1 (sealing bucket 0); a writer racing on bucket 0 now fails.
    j.append(&e, 13, vec![ev(14)]).await.unwrap();
    assert!(matches!(j.append(&e, 13, vec![ev(99)]).await, Err(AppendError::Conflict { actual: 14, .. })));
    for next in 15..=35 {
        j.append(&e, next - 1, vec![ev(next)]).await.unwrap();
    }
    assert_eq!(seqs(&j, &e).await, (1..=35).collect::<Vec<_>>());
    assert_eq!(j.read(&e, 9..=21).try_collect::<Vec<_>>().await.unwrap().len(), 13);
    // Too big for one partition: refused, nothing written.
    assert!(j.append(&e, 35, (36..=50).map(ev).collect()).await.is_err());
    assert_eq!(j.last_seq(&e).await.unwrap(), 35);
    // A fresh connection finds the head by walking the partitions.
    let j2 = ScyllaJournal::connect(&url, 1024).await.unwrap();
    assert_eq!(j2.last_seq(&e).await.unwrap(), 35);
    j2.append(&e, 35, vec![ev(36)]).await.unwrap();
    assert_eq!(seqs(&j2, &e).await, (1..=36).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_across_a_bucket_boundary_commit_each_seq_once() {
    let (j, _) = fresh(4, "").await;
    let e = EntityKey::new("race", "x");
    for round in 0..12u64 {
        let tasks: Vec<_> = (0..6)
            .map(|w| {
                let (j, e) = (j.clone(), e.clone());
                tokio::spawn(async move { j.append(&e, round, vec![ev(round * 10 + w)]).await })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => wins += 1,
                Err(AppendError::Conflict { .. }) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    assert_eq!(seqs(&j, &e).await, (1..=12).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_appends_cross_buckets_and_refuse_a_stale_owner_that_sealed_first() {
    let (j, _) = fresh(4, "").await;
    let e = EntityKey::new("fence", "x");
    let fenced = |expected, n: u64, epoch| AppendRequest::new(expected, vec![ev(n)]).fenced(epoch);
    j.raise_fence(&e, 10).await.unwrap();
    for n in 1..=6 {
        j.commit(&e, fenced(n - 1, n, 10)).await.expect("the owner appends across bucket 0 -> 1");
    }
    // Old owner (10) fills bucket 1 up to seq 7, then seals bucket 1 on its
    // way to bucket 2 and stalls before opening it (its seal, done by hand).
    j.commit(&e, fenced(6, 7, 10)).await.unwrap();
    let ks = j.config().keyspace.clone();
    let seal = format!(
        "UPDATE {ks}.events SET sealed = 2 WHERE entity_type = 'fence' AND entity_id = 'x' AND bucket = 1 IF last_seq = 7 AND fence = 10"
    );
    let r = j.session().query_unpaged(seal, ()).await.unwrap();
    let row = r.into_rows_result().unwrap().first_row::<::scylla::value::Row>().unwrap();
    assert_eq!(row.columns[0], Some(::scylla::value::CqlValue::Boolean(true)), "sealed: {row:?}");
    // A new owner (11) raises the fence: the head is sealed, so it opens bucket 2 empty.
    let j2 = ScyllaJournal::connect(&format!("{}/{ks}", server()), 1024).await.unwrap();
    j2.raise_fence(&e, 11).await.unwrap();
    assert_eq!(j2.last_seq(&e).await.unwrap(), 7);
    // The stalled owner resumes: it cannot open bucket 2 nor append anywhere.
    match j.commit(&e, fenced(7, 8, 10)).await {
        Err(AppendError::Fenced { epoch: 10, current: 11, .. }) => {}
        other => panic!("stale owner fenced off, got {other:?}"),
    }
    j2.commit(&e, fenced(7, 8, 11)).await.expect("the new owner appends");
    assert!(matches!(j.commit(&e, fenced(8, 9, 10)).await, Err(AppendError::Fenced { current: 11, .. })));
    assert!(matches!(j2.raise_fence(&e, 10).await, Err(AppendError::Fenced { current: 11, .. })));
    for n in 9..=13 {
        j2.commit(&e, fenced(n - 1, n, 11)).await.expect("on across buckets 2 -> 3");
    }
    assert_eq!(seqs(&j2, &e).await, (1..=13).collect::<Vec<_>>());
    let got: Vec<_> = j2.read(&e, 1..=u64::MAX).try_collect().await.unwrap();
    assert_eq!(got[7].payload, ev(8).payload, "seq 8 is the new owner's");
    // A node without a cluster (unfenced) still appends to the fenced entity.
    j.append(&e, 13, vec![ev(14)]).await.expect("unfenced append");
    assert_eq!(j2.last_seq(&e).await.unwrap(), 14);
}

/// The dispatcher reads only the runtime's records: a feed entry says
/// whether its event is one (schema 6), so the others' rows are not read;
/// an entry that does not say (written by schema 5, or by a successor for
/// an earlier owner's append) has its event read, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatchers_read_skips_the_entities_own_rows() {
    let (j, url) = fresh(1000, "").await;
    let ks = url.rsplit('/').next().unwrap().to_owned();
    let e = EntityKey::new("skip", "a");
    let shard = e.shard(j.shards());
    let record = NewEvent {
        type_name: format!("{}send", tessera_journal::INTERNAL_TYPE_PREFIX),
        version: 1,
        payload: b"r".to_vec(),
        metadata: vec![],
    };
    j.append(&e, 0, vec![ev(1), record.clone(), ev(3)]).await.unwrap();
    // The feed shows a commit once its watermark is written (a few ms).
    let mut all = Vec::new();
    for _ in 0..100 {
        all = j.events_by_shard("skip", shard, 0).try_collect::<Vec<_>>().await.unwrap();
        if all.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(all.len(), 3, "all three entries visible");

    let before = j.request_counts().feed_event_reads;
    let got: Vec<_> = j.internal_by_shard("skip", shard, 0).try_collect().await.unwrap();
    assert_eq!(j.request_counts().feed_event_reads - before, 1, "only the record's row is read");
    assert_eq!(got.iter().map(|g| g.offset).collect::<Vec<_>>(), all.iter().map(|a| a.offset).collect::<Vec<_>>());
    assert_eq!(got[1].event, all[1].event, "the record in full");
    assert_eq!(got[0].event.type_name, "", "an entity's event unread");
    assert_eq!((got[0].event.seq, got[2].event.seq), (1, 3));

    // An entry that does not say (as schema 5 wrote them): its event is read.
    let q = format!(
        "SELECT epoch FROM {ks}.feed WHERE entity_type = 'skip' AND shard = {shard} AND block = 0 AND offset = {}",
        all[0].offset
    );
    let (epoch,) =
        j.session().query_unpaged(q, ()).await.unwrap().into_rows_result().unwrap().first_row::<(i64,)>().unwrap();
    let unset = format!(
        "UPDATE {ks}.feed SET record = null WHERE entity_type = 'skip' AND shard = {shard} AND block = 0 AND offset = {} AND epoch = {epoch}",
        all[0].offset
    );
    j.session().query_unpaged(unset, ()).await.unwrap();
    let before = j.request_counts().feed_event_reads;
    let got: Vec<_> = j.internal_by_shard("skip", shard, 0).try_collect().await.unwrap();
    assert_eq!(j.request_counts().feed_event_reads - before, 2, "the unmarked entry's row and the record's");
    assert_eq!(got[0].event, all[0].event, "an unmarked entry's event comes in full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_of_an_older_schema_is_refused_until_migrated() {
    let ks = unique_keyspace();
    let url = format!("{}/{ks}", server());
    ScyllaJournal::migrate(&url, &MigrateOptions::default()).await.expect("migrate");
    let (j, e) = (ScyllaJournal::connect(&url, 1024).await.unwrap(), EntityKey::new("old", "a"));
    j.append(&e, 0, vec![ev(1)]).await.unwrap();
    // Pretend the keyspace was written by the previous release (schema 1).
    let set = format!("INSERT INTO {ks}.tessera_meta (key, value) VALUES ('schema_version', '1')");
    j.session().query_unpaged(set, ()).await.unwrap();
    let err = ScyllaJournal::connect(&url, 1024).await.err().expect("refused");
    assert!(err.to_string().contains("run `tessera journal migrate"), "{err}");
    // Migrating again is harmless (the column exists) and lets nodes in.
    let applied = ScyllaJournal::migrate(&url, &MigrateOptions::default()).await.expect("re-migrate");
    assert_eq!(applied, (2..=tessera_journal::scylla::SCHEMA_VERSION).collect::<Vec<_>>());
    let j = ScyllaJournal::connect(&url, 1024).await.expect("connect after migrate");
    // Entities written before fences existed (fence null) can be fenced.
    j.raise_fence(&e, 3).await.unwrap();
    j.commit(&e, AppendRequest::new(1, vec![ev(2)]).fenced(3)).await.unwrap();
    assert!(matches!(
        j.commit(&e, AppendRequest::new(2, vec![ev(3)]).fenced(2)).await,
        Err(AppendError::Fenced { current: 3, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_match_the_servers_token() {
    let (j, _) = fresh(1000, "").await;
    let ks = j.config().keyspace.clone();
    for (t, id) in [("stock", "store-1:sku-1"), ("stock", "ü-ñ-é:ß"), ("a", ""), ("x", "\u{1F600}")] {
        let e = EntityKey::new(t, id);
        j.append(&e, 0, vec![ev(1)]).await.unwrap();
        j.save_snapshot(&e, tessera_journal::Snapshot { seq: 1, version: 1, timestamp_ms: 0, payload: vec![] })
            .await
            .unwrap();
        let r = j
            .session()
            .query_unpaged(
                format!(
                    "SELECT token(entity_type, entity_id) FROM {ks}.snapshots WHERE entity_type = ? AND entity_id = ?"
                ),
                (t, id),
            )
            .await
            .unwrap();
        let (server_token,): (i64,) = r.into_rows_result().unwrap().single_row().unwrap();
        assert_eq!(server_token, tessera_journal::token(t, id), "token of ({t}, {id})");
        assert_eq!(e.shard(1024), tessera_journal::shard::shard_of_token(server_token, 1024));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_events_replay_as_a_stream() {
    let heavy = HEAVY.lock().await;
    // A long timeout: a fresh single-node server also serves the other tests.
    let (j, _) = fresh(100_000, "?conditional=false&timeout_ms=60000").await;
    let e = EntityKey::new("big", "one");
    let total = 1_000_000u64;
    // Small payloads: the load's time goes to bytes, the replay's memory to
    // events (each decoded event holds its own allocations, ~100 B beside
    // the payload), which is what the bound below checks.
    let payload = vec![b'x'; 16];
    let mut seq = 0;
    let mut pending = futures::stream::FuturesUnordered::new();
    while seq < total {
        let events: Vec<NewEvent> = (0..1000)
            .map(|_| NewEvent { type_name: "Ev".into(), version: 1, payload: payload.clone(), metadata: vec![] })
            .collect();
        let (j, e, s) = (j.clone(), e.clone(), seq);
        // Unconditional appends rewrite the same rows, so a timed-out batch can be retried.
        pending.push(async move {
            let (started, mut tries) = (std::time::Instant::now(), 0u64);
            loop {
                match j.append(&e, s, events.clone()).await {
                    // The load is not what this test measures: a server
                    // timing out under it (this test runs beside the
                    // others, on two cores) gets time to catch up: a
                    // flush or a compaction can stall it for many seconds.
                    Err(err) if started.elapsed() < std::time::Duration::from_secs(240) => {
                        tries += 1;
                        if tries % 5 == 1 {
                            eprintln!("retrying a load batch (try {tries}): {err}");
                        }
                        tokio::time::sleep(std::time::Duration::from_millis((500 * tries).min(5000))).await;
                    }
                    r => return r,
                }
            }
        });
        seq += 1000;
        if pending.len() >= 2 {
            pending.try_next().await.unwrap();
        }
    }
    while pending.try_next().await.unwrap().is_some() {}
    drop(heavy);
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    let before = rss();
    let mut stream = j.read(&e, 1..=u64::MAX);
    let (mut n, mut last, mut peak) = (0u64, 0u64, 0u64);
    while let Some(ev) = stream.try_next().await.unwrap() {
        assert_eq!(ev.seq, last + 1);
        last = ev.seq;
        n += 1;
        if n % 100_000 == 0 {
            peak = peak.max(rss());
        }
    }
    assert_eq!(n, total);
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 48 << 20,
        "replay holds pages, not the journal (a million events, over 100 MB decoded): grew {} MiB",
        growth >> 20
    );
}

/// TLS: a server that requires it (its own Cassandra on port 9044, with a
/// self-signed certificate made by the script) accepts a `tls=true` URL
/// trusting that certificate; a URL without TLS, or trusting nothing, fails
/// clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections() {
    let script = cassandra_script();
    let data = tempfile::tempdir().unwrap();
    let run = |action: &str| {
        std::process::Command::new("bash")
            .arg(&script)
            .arg(action)
            .env("TESSERA_CASSANDRA_PORT", "9044")
            .env("TESSERA_CASSANDRA_TLS", "1")
            .env("TESSERA_CASSANDRA_DATA", data.path())
            .status()
            .unwrap()
    };
    struct Stop<F: Fn()>(F);
    impl<F: Fn()> Drop for Stop<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    assert!(run("stop").success());
    let heavy = HEAVY.lock().await;
    assert!(run("start").success());
    drop(heavy);
    let _stop = Stop(|| {
        run("stop");
    });
    let dir = std::env::var("TESSERA_CASSANDRA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tessera/cassandra"));
    let ca = dir.join("tls-9044/ca.pem");
    let ks = unique_keyspace();
    let url = format!("scylla://cassandra:cassandra@127.0.0.1:9044/{ks}?tls=true&tls_ca={}", ca.display());
    ScyllaJournal::migrate(&url, &MigrateOptions::default()).await.expect("migrate over TLS");
    let j = ScyllaJournal::connect(&url, 1024).await.expect("connect over TLS");
    let e = EntityKey::new("tls", "a");
    j.append(&e, 0, vec![ev(1), ev(2)]).await.unwrap();
    assert_eq!(seqs(&j, &e).await, vec![1, 2]);

    let plain = format!("scylla://cassandra:cassandra@127.0.0.1:9044/{ks}?timeout_ms=2000");
    assert!(ScyllaJournal::connect(&plain, 1024).await.is_err(), "a plain connection is refused");
    let other_ca = data.path().join("empty.pem");
    std::fs::write(&other_ca, b"").unwrap();
    let untrusted = format!("scylla://cassandra:cassandra@127.0.0.1:9044/{ks}?tls=true&tls_ca={}", other_ca.display());
    assert!(ScyllaJournal::connect(&untrusted, 1024).await.is_err(), "an untrusted certificate is refused");
    // TLS and authentication together: a wrong password over TLS is refused as such.
    let wrong = format!("scylla://cassandra:not-the-password@127.0.0.1:9044/{ks}?tls=true&tls_ca={}", ca.display());
    let e = ScyllaJournal::connect(&wrong, 1024).await.err().expect("a wrong password is refused").to_string();
    assert!(e.contains("authentication failed") && !e.contains("not-the-password"), "{e}");
    let e = tessera_journal::scylla::ScyllaConfig::from_url("scylla://h/ks?tls=true").unwrap_err();
    assert!(e.to_string().contains("tls_ca"), "{e}");
}

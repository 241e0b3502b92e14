//! A node on the Scylla journal (real Cassandra 5): the migrate command, the
//! inventory case, idempotency across restarts, the result store, garbage in
//! a payload column, and the server stopped in the middle of a load.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{get, post, scylla_server, unique_keyspace};
use futures::future::join_all;
use serde_json::json;
use tessera_journal::{EntityKey, Journal, ScyllaJournal};
use tessera_runtime::{JournalKind, NodeConfig};

fn migrate(url: &str) {
    let out = std::process::Command::new(common::test_node_bin())
        .args(["journal", "migrate", "--scylla", url, "--bucket-size", "50"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs the migrate command off the async runtime.
async fn migrated(url: &str) {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || migrate(&url)).await.unwrap();
}

async fn drop_keyspace(url: &str) {
    let j = ScyllaJournal::connect(url, 1024).await.unwrap();
    let ks = j.config().keyspace.clone();
    let _ = j.session().query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ()).await;
}

async fn node(url: &str, tweak: impl FnOnce(&mut NodeConfig)) -> (tessera_runtime::Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = url.to_owned();
    common::node(dir.path(), move |c| {
        c.journal.kind = JournalKind::Scylla(url);
        tweak(c);
    })
    .await
}

/// Audits stock entities `s:0`..`s:{n-1}` in the journal: no invocation
/// appears twice; returns the invocations seen.
async fn assert_each_invocation_applied_once(url: &str, n: usize) -> HashSet<String> {
    let j = ScyllaJournal::connect(url, 1024).await.unwrap();
    let mut seen = HashSet::new();
    for e in 0..n {
        let events: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(
            j.read(&EntityKey::new("stock", format!("s:{e}")), 1..=u64::MAX),
        )
        .await
        .unwrap();
        for ev in events {
            let meta = tessera_runtime::envelope::EventMeta::decode(&ev.metadata);
            assert!(seen.insert(meta.invocation.clone()), "applied twice: {}", meta.invocation);
        }
    }
    seen
}

fn cmd(base: &str, id: &str, command: &str) -> String {
    format!("{base}/v1/entities/stock/{id}/{command}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_case_runs_on_scylla() {
    let url = format!("{}/{}", scylla_server(), unique_keyspace());
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig::default().with(|c| {
        c.journal.kind = JournalKind::Scylla(url.clone());
        c.journal.data_dir = dir.path().into();
        c.http.listen = None;
    });
    let err = tessera_runtime::NodeBuilder::new(tessera_tests::registry()).config(config).build().await.err().unwrap();
    assert!(err.to_string().contains("journal migrate"), "an unmigrated keyspace is refused with what to do: {err}");
    tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            migrate(&url);
            migrate(&url); // idempotent
        }
    })
    .await
    .unwrap();

    let (n, base) = node(&url, |_| {}).await;
    post(&cmd(&base, "s:hot", "restock"), r#"{"qty":20}"#, None).await;
    let url_p = cmd(&base, "s:hot", "purchase");
    let results = join_all((0..50).map(|_| post(&url_p, r#"{"qty":1}"#, None))).await;
    assert_eq!(results.iter().filter(|r| r.0 == 200).count(), 20, "never oversells");
    let (s, _, r) = post(&cmd(&base, "s:hot", "restock"), r#"{"qty":5}"#, Some("po-1")).await;
    assert_eq!((s, r), (200, json!({"on_hand": 5})));
    n.shutdown().await;

    let (n, base) = node(&url, |_| {}).await;
    let (s, h, r) = post(&cmd(&base, "s:hot", "restock"), r#"{"qty":5}"#, Some("po-1")).await;
    assert_eq!((s, r, h["tessera-deduplicated"].to_str().unwrap()), (200, json!({"on_hand": 5}), "true"));
    let (_, state) = get(&format!("{base}/v1/entities/stock/s:hot")).await;
    assert_eq!((state["seq"].clone(), state["state"]["on_hand"].clone()), (json!(22), json!(5)));
    n.shutdown().await;

    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            std::process::Command::new(common::test_node_bin())
                .args(["journal", "events", "stock", "s:hot", "--from", "21", "--scylla", &url])
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines[1]["invocation_id"], "po-1");
    drop_keyspace(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_store_conformance_on_scylla() {
    let url = format!("{}/{}", scylla_server(), unique_keyspace());
    migrated(&url).await;
    let j = ScyllaJournal::connect(&url, 1024).await.unwrap();
    let s = tessera_runtime::results::ScyllaResultStore::new(&j);
    tessera_runtime::results::conformance::final_rows_are_kept(&s).await;
    tessera_runtime::results::conformance::rows_expire(&s).await;
    tessera_runtime::results::conformance::large_bodies_are_truncated(&s).await;
    drop_keyspace(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_payload_column_is_a_clear_error_naming_entity_and_seq() {
    let url = format!("{}/{}", scylla_server(), unique_keyspace());
    migrated(&url).await;
    let (n, base) = node(&url, |_| {}).await;
    for _ in 0..3 {
        post(&cmd(&base, "s:g", "restock"), r#"{"qty":1}"#, None).await;
    }
    n.shutdown().await;
    let j = ScyllaJournal::connect(&url, 1024).await.unwrap();
    let ks = j.config().keyspace.clone();
    j.session()
        .query_unpaged(
            format!("UPDATE {ks}.events SET payload = 0xdeadbeefc1 WHERE entity_type = 'stock' AND entity_id = 's:g' AND bucket = 0 AND seq = 2"),
            (),
        )
        .await
        .unwrap();
    let (n, base) = node(&url, |_| {}).await;
    let (s, _, e) = post(&cmd(&base, "s:g", "restock"), r#"{"qty":1}"#, None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (500, Some("replay_failed")), "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("stock/s:g") && msg.contains("seq 2"), "{msg}");
    assert_eq!(j.last_seq(&EntityKey::new("stock", "s:g")).await.unwrap(), 3, "nothing appended");

    // A flipped byte that still decodes (`qty: 1` becomes `qty: 3`) is found
    // by the row's checksum: the entity fails naming the seq, others serve.
    post(&cmd(&base, "s:h", "restock"), r#"{"qty":1}"#, None).await;
    post(&cmd(&base, "s:h", "restock"), r#"{"qty":1}"#, None).await;
    let where_ = |seq: u64| format!("entity_type = 'stock' AND entity_id = 's:h' AND bucket = 0 AND seq = {seq}");
    let (payload,): (Vec<u8>,) = j
        .session()
        .query_unpaged(format!("SELECT payload FROM {ks}.events WHERE {}", where_(1)), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    let mut flipped = payload.clone();
    let last = flipped.len() - 1;
    assert_eq!(flipped[last], 1, "the qty is the payload's last byte: {payload:?}");
    flipped[last] ^= 2;
    assert!(
        rmp_serde::from_slice::<serde_json::Value>(&flipped).is_ok(),
        "the flipped payload still decodes: only a checksum can tell"
    );
    j.session()
        .query_unpaged(format!("UPDATE {ks}.events SET payload = ? WHERE {}", where_(1)), (flipped,))
        .await
        .unwrap();
    n.shutdown().await;
    let (n, base) = node(&url, |_| {}).await;
    let (s, e) = get(&format!("{base}/v1/entities/stock/s:h")).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (500, Some("replay_failed")), "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("stock/s:h") && msg.contains("seq 1") && msg.contains("checksum"), "{msg}");
    let (s, _, _) = post(&cmd(&base, "s:other", "restock"), r#"{"qty":1}"#, None).await;
    assert_eq!(s, 200, "other entities serve");
    n.shutdown().await;
    // `journal verify` names both damaged entities with their seqs.
    let verify = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tessera-test-node"))
                .args(["journal", "verify", "--scylla", &url])
                .env("RUST_LOG", "error")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(!verify.status.success());
    let problems: Vec<serde_json::Value> =
        String::from_utf8_lossy(&verify.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let named = |id: &str, seq: u64| problems.iter().any(|p| p["entity_id"] == id && p["seq"] == seq);
    assert!(named("s:h", 1) && problems.iter().any(|p| p["entity_id"] == "s:g"), "{problems:?}");
    tessera_test_support::report::fault(
        "07-corrupt-scylla",
        "a flipped byte in a Scylla event row (still decodes), garbage in another",
        "tests/tests/scylla.rs garbage_in_a_payload_column_is_a_clear_error_naming_entity_and_seq",
        "2 entities damaged beside sound ones",
        5,
        0,
        None,
        "500 replay_failed naming entity and seq (the flip by the row's CRC32), nothing appended, others serve; journal verify --scylla names both",
    );
    drop_keyspace(&url).await;
}

/// The server stopped mid-load: commands fail with a clear error, none
/// acknowledged is lost, and the node serves again once the server is back,
/// without a restart. Runs its own Cassandra on port 9043.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stopped_mid_load_loses_nothing_acknowledged_and_the_node_recovers() {
    let data = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/cassandra.sh");
    let cassandra = |action: &'static str| {
        let (script, data) = (script.clone(), data.path().to_path_buf());
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("bash")
                    .arg(&script)
                    .arg(action)
                    .env("TESSERA_CASSANDRA_PORT", "9043")
                    .env("TESSERA_CASSANDRA_DATA", &data)
                    .status()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    /// Stops this test's server however the test ends.
    struct StopOnDrop(std::path::PathBuf);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("bash")
                .arg(&self.0)
                .arg("stop")
                .env("TESSERA_CASSANDRA_PORT", "9043")
                .status();
        }
    }
    let _guard = StopOnDrop(script.clone());
    assert!(cassandra("stop").await.success(), "no leftover server on 9043");
    assert!(cassandra("start").await.success());
    let url = format!("scylla://cassandra:cassandra@127.0.0.1:9043/{}?timeout_ms=2000", unique_keyspace());
    migrated(&url).await;
    let (n, base) = node(&url, |c| {
        c.limits.invocation_timeout_ms = 5000;
        c.limits.dedup_max_entries = 1_000_000; // every key of the run stays retryable
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (base, stop) = (base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut acked, mut attempted, mut errors) = (Vec::new(), Vec::new(), Vec::new());
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("c{c}-{k}");
                k += 1;
                attempted.push(key.clone());
                let sent = std::time::Instant::now();
                let (s, h, body) =
                    post(&cmd(&base, &format!("s:{}", c % 4), "restock"), r#"{"qty":1}"#, Some(&key)).await;
                match s {
                    200 => acked.push(key),
                    _ => {
                        let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
                        errors.push((s, message, sent.elapsed(), h.contains_key("retry-after")));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (acked, attempted, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(cassandra("stop").await.success());
    // While it is down: every command fails fast, 503 with Retry-After.
    let mut down = Vec::new();
    for i in 0..20 {
        let sent = std::time::Instant::now();
        let (s, h, body) = post(&cmd(&base, &format!("s:down-{i}"), "restock"), r#"{"qty":1}"#, None).await;
        down.push((s, sent.elapsed(), h.contains_key("retry-after"), body["error"]["message"].clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cassandra("start").await.success());
    let restarted = std::time::Instant::now();
    // The node recovers by itself: wait for a command to succeed again.
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..120 {
        let (s, _, body) = post(&cmd(&base, "s:probe", "restock"), r#"{"qty":1}"#, None).await;
        last = (s, body);
        if s == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(last.0, 200, "the node serves again after the server came back: {}", last.1);
    let recovered_ms = restarted.elapsed().as_millis() as u64;
    for (s, took, retry_after, msg) in &down {
        assert_eq!((*s, *retry_after), (503, true), "refused while the server is down, with Retry-After: {msg}");
        assert!(*took < Duration::from_secs(3), "and fast ({took:?} < the 5 s invocation timeout): {msg}");
    }
    let mut fail_ms: Vec<u64> = down.iter().map(|d| d.1.as_millis() as u64).collect();
    fail_ms.sort_unstable();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut attempted, mut errors) = (HashSet::new(), Vec::new(), Vec::new());
    for c in clients {
        let (a, t, e) = c.await.unwrap();
        acked.extend(a);
        attempted.extend(t);
        errors.extend(e);
    }
    assert!(!errors.is_empty(), "the outage was seen");
    for (s, msg, _, retry_after) in &errors {
        assert!(matches!(s, 503 | 504), "errors during the outage are retryable: {s} {msg}");
        assert!(*s != 503 || *retry_after, "a 503 says when to retry: {msg}");
        assert!(!msg.is_empty(), "and say why");
    }
    // Every acknowledged command is in the journal exactly once; retrying
    // every attempted one applies each exactly once.
    for (i, key) in attempted.iter().enumerate() {
        let c: usize = key[1..key.find('-').unwrap()].parse().unwrap();
        // A careful client retries a timeout with the same key (the server
        // may still be catching up).
        let mut tries = 0;
        let (s, h) = loop {
            let (s, h, _) = post(&cmd(&base, &format!("s:{}", c % 4), "restock"), r#"{"qty":1}"#, Some(key)).await;
            tries += 1;
            if !matches!(s, 503 | 504) || tries == 5 {
                break (s, h);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(s, 200, "retry {i} of {key}");
        if acked.contains(key) {
            assert_eq!(h["tessera-deduplicated"], "true", "acknowledged {key} was already there");
        }
    }
    let seen = assert_each_invocation_applied_once(&url, 4).await;
    assert_eq!(seen.len(), attempted.len(), "every attempted command applied exactly once");
    let timeouts = errors.iter().filter(|e| e.0 == 504).count();
    tessera_test_support::report::fault(
        "04-cassandra-restart",
        "Cassandra stopped and started under load",
        "tests/tests/scylla.rs the_server_stopped_mid_load_loses_nothing_acknowledged_and_the_node_recovers",
        "8 clients, keyed restocks on 4 entities",
        acked.len() as u64,
        0,
        Some(recovered_ms),
        &format!(
            "refused while down: 503 with Retry-After in {} ms (p50), {} ms max; {} attempts failed during the outage ({timeouts} timed out, 504), each retried with its key and applied once; recovery = from the server's start to the first accepted command, no node restart",
            fail_ms[fail_ms.len() / 2],
            fail_ms[fail_ms.len() - 1],
            errors.len()
        ),
    );
    n.shutdown().await;
    assert!(cassandra("stop").await.success());
}

/// The resident memory of a process, bytes.
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A slow and flaky journal: a fault proxy between the node (a process)
/// and Cassandra adds 300 ms to every packet for 8 s, then drops every
/// connection twice, while 128 clients send commands to a node that admits
/// 64 at a time. The node refuses what it cannot hold at once (503 with
/// Retry-After), its memory stays bounded (no queue grows with the
/// backlog), the driver reconnects by itself, and every acknowledged
/// command — and every other one, retried with its key — is in the journal
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_and_flaky_journal_keeps_memory_bounded_and_loses_nothing() {
    use common::{NodeProcess, TestNode};
    let server = scylla_server();
    let (scheme, rest) = server.split_once("://").unwrap();
    let (creds, host) = rest.rsplit_once('@').unwrap();
    let ks = unique_keyspace();
    let url = format!("{server}/{ks}");
    migrated(&url).await;
    let proxy = tessera_test_support::proxy::FaultProxy::start(host).await;
    let via = format!("{scheme}://{creds}@{}/{ks}?timeout_ms=3000", proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        dir.path(),
        &[
            "--journal",
            &via,
            "--max-in-flight",
            "64",
            "--invocation-timeout-ms",
            "5000",
            "--dedup-max-entries",
            "100000",
        ],
    )
    .await
    .expect("the node starts through the proxy");
    let pid = node.child.id().expect("pid");

    #[derive(Default)]
    struct Seen {
        acked: Vec<String>,
        other: Vec<String>,
        refused_503: u64,
        without_retry_after: u64,
        timeouts: u64,
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..128 {
        let (base, stop) = (node.base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            let mut seen = Seen::default();
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("c{c}-{k}");
                k += 1;
                let r = http
                    .post(format!("{base}/v1/entities/stock/s:{}/restock", c % 32))
                    .header("content-type", "application/json")
                    .header("idempotency-key", &key)
                    .body(r#"{"qty":1}"#)
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().as_u16() == 200 => seen.acked.push(key),
                    Ok(resp) => {
                        if resp.status().as_u16() == 503 {
                            seen.refused_503 += 1;
                            seen.without_retry_after += u64::from(!resp.headers().contains_key("retry-after"));
                        } else {
                            seen.timeouts += 1;
                        }
                        seen.other.push(key);
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(_) => {
                        seen.other.push(key);
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            seen
        }));
    }
    let mut samples = Vec::new();
    let sample = |samples: &mut Vec<u64>| samples.push(rss_of(pid));
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        sample(&mut samples);
    }
    let baseline = samples.iter().copied().max().unwrap_or(0);
    proxy.set_delay(Duration::from_millis(300));
    for _ in 0..32 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        sample(&mut samples);
    }
    proxy.set_delay(Duration::ZERO);
    proxy.drop_connections();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.drop_connections();
    let dropped = std::time::Instant::now();
    // The driver reconnects: commands are accepted again.
    let mut recovered = None;
    for _ in 0..100 {
        let (s, _, _) = post(&format!("{}/v1/entities/stock/s:probe/restock", node.base), r#"{"qty":1}"#, None).await;
        sample(&mut samples);
        if s == 200 {
            recovered = Some(dropped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = recovered.expect("commands are accepted again after the connections dropped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Seen::default();
    for c in clients {
        let s = c.await.unwrap();
        all.acked.extend(s.acked);
        all.other.extend(s.other);
        all.refused_503 += s.refused_503;
        all.without_retry_after += s.without_retry_after;
        all.timeouts += s.timeouts;
    }
    let peak = samples.iter().copied().max().unwrap_or(0);
    assert!(all.refused_503 > 0, "the node refused what it could not hold");
    assert_eq!(all.without_retry_after, 0, "every 503 says when to retry");
    assert!(
        peak < baseline + (64 << 20),
        "memory stays bounded under the backlog: {} MiB at first, {} MiB at the peak",
        baseline >> 20,
        peak >> 20
    );
    // Every command not acknowledged, retried with its key, lands once.
    let retries = all.other.iter().map(|key| {
        let base = node.base.clone();
        async move {
            let c: usize = key[1..key.find('-').unwrap()].parse().unwrap();
            let mut tries = 0;
            loop {
                let (s, _, v) =
                    post(&format!("{base}/v1/entities/stock/s:{}/restock", c % 32), r#"{"qty":1}"#, Some(key)).await;
                tries += 1;
                if s == 200 {
                    break;
                }
                assert!(matches!(s, 503 | 504) && tries < 20, "retry of {key}: {s} {v}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    futures::StreamExt::collect::<Vec<()>>(futures::StreamExt::buffer_unordered(futures::stream::iter(retries), 32))
        .await;
    node.kill().await;
    let seen = assert_each_invocation_applied_once(&url, 32).await;
    for key in all.acked.iter().chain(&all.other) {
        assert!(seen.contains(key), "{key} is in the journal");
    }
    assert_eq!(seen.len(), all.acked.len() + all.other.len(), "and nothing else");
    tessera_test_support::report::fault(
        "08-slow-flaky-journal",
        "a slow and flaky journal: 300 ms added to every packet to Cassandra for 8 s, then every connection dropped twice",
        "tests/tests/scylla.rs a_slow_and_flaky_journal_keeps_memory_bounded_and_loses_nothing",
        "128 clients, keyed restocks on 32 entities, node admitting 64 invocations at a time",
        all.acked.len() as u64,
        0,
        Some(recovered.as_millis() as u64),
        &format!(
            "{} refused at once (503 + Retry-After), {} timed out; node RSS {} MiB before, {} MiB at the peak; {} unacknowledged commands retried with their keys, each applied once; recovery = from the second drop to the first accepted command; {} proxied connections",
            all.refused_503,
            all.timeouts,
            baseline >> 20,
            peak >> 20,
            all.other.len(),
            proxy.accepted()
        ),
    );
    drop_keyspace(&url).await;
}

/// The server is recognised (Cassandra here: no tablets, no `tablets` option
/// in the keyspace it creates) and the migrated keyspace takes the
/// conditional writes the journal needs; the ScyllaDB branch (tablets
/// disabled, a clear refusal for a tablet keyspace) is unit-tested in
/// `journal/src/scylla/server.rs` — there is no ScyllaDB server here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_knows_the_server_and_checks_conditional_writes() {
    let url = format!("{}/{}", scylla_server(), unique_keyspace());
    migrated(&url).await;
    let j = ScyllaJournal::connect(&url, 1024).await.expect("connects: the keyspace takes conditional writes");
    let server = tessera_journal::scylla::server::detect(j.session()).await.unwrap();
    assert_eq!(server, tessera_journal::scylla::Server::Cassandra);
    let ks = &j.config().keyspace;
    tessera_journal::scylla::server::check_conditional_writes(j.session(), ks, server).await.unwrap();
    let r = j
        .session()
        .query_unpaged(format!("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = '{ks}'"), ())
        .await
        .unwrap();
    assert_eq!(r.into_rows_result().unwrap().rows_num(), 1, "the keyspace was created");
    drop_keyspace(&url).await;
}

/// `journal export` → `journal import` local → Cassandra → local: every
/// entity's checksum equal at each hop, identical events (bar commit
/// timestamps) and state; importing again is refused per entity, and a
/// truncated file is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_round_trip_local_to_cassandra_to_local() {
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    let (node, base) = common::node(&src_dir, |c| c.journal.snapshot_every = 3).await;
    for i in 0..20 {
        let id = format!("s:{i}");
        post(&cmd(&base, &id, "restock"), r#"{"qty":10}"#, None).await;
        for _ in 0..(i % 5) {
            post(&cmd(&base, &id, "purchase"), r#"{"qty":1}"#, None).await;
        }
    }
    node.shutdown().await;

    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::test_node_bin()).args(&args).env("RUST_LOG", "warn").output().unwrap()
        })
        .await
        .unwrap()
    };
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    // The export's lines of one kind, without a field that may differ.
    let lines_of = |path: &std::path::Path, kind: &str, without: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == kind)
            .map(|mut v| {
                v.as_object_mut().unwrap().remove(without);
                v
            })
            .collect()
    };
    let entity_lines = |path: &std::path::Path| lines_of(path, "entity", "last_seq");
    let events_of = |path: &std::path::Path| lines_of(path, "event", "timestamp_ms");

    let f1 = dir.path().join("1.jsonl");
    let o =
        run(vec!["journal".into(), "export".into(), "--data-dir".into(), s(&src_dir), "--out".into(), s(&f1)]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exported: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(exported["entities"], 20, "{exported}");
    assert!(exported["snapshots"].as_u64().unwrap() > 0, "snapshots travel too: {exported}");

    let url = format!("{}/{}", scylla_server(), unique_keyspace());
    migrated(&url).await;
    let o = run(vec!["journal".into(), "import".into(), s(&f1), "--to-scylla".into(), url.clone()]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let imported: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((imported["entities"].clone(), imported["verified"].clone()), (json!(20), json!(20)), "{imported}");

    let f2 = dir.path().join("2.jsonl");
    let o = run(vec![
        "journal".into(),
        "export".into(),
        "stock".into(),
        "--scylla".into(),
        url.clone(),
        "--out".into(),
        s(&f2),
    ])
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(vec!["journal".into(), "import".into(), s(&f2), "--to-data-dir".into(), s(&dst_dir)]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f3 = dir.path().join("3.jsonl");
    let o =
        run(vec!["journal".into(), "export".into(), "--data-dir".into(), s(&dst_dir), "--out".into(), s(&f3)]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (e1, e2, e3) = (entity_lines(&f1), entity_lines(&f2), entity_lines(&f3));
    assert_eq!(e1.len(), 20);
    assert_eq!(e1, e2, "local → Cassandra: the same checksums");
    assert_eq!(e1, e3, "Cassandra → local: the same checksums");
    assert_eq!(events_of(&f1), events_of(&f3), "the same events, byte for byte, bar commit timestamps");
    for id in ["s:4", "s:19"] {
        let state = |d: std::path::PathBuf| {
            let a = vec!["journal".into(), "state".into(), "stock".into(), id.to_owned(), "--data-dir".into(), s(&d)];
            run(a)
        };
        let (a, b) = (state(src_dir.clone()).await, state(dst_dir.clone()).await);
        assert!(a.status.success() && b.status.success());
        assert_eq!(a.stdout, b.stdout, "the same state of {id}");
    }

    // Importing again: every entity is refused, nothing written twice.
    let o = run(vec!["journal".into(), "import".into(), s(&f2), "--to-data-dir".into(), s(&dst_dir)]).await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already had events in the target"), "{o:?}");
    let again = dir.path().join("4.jsonl");
    run(vec!["journal".into(), "export".into(), "--data-dir".into(), s(&dst_dir), "--out".into(), s(&again)]).await;
    assert_eq!(entity_lines(&again), e1, "nothing appended by the refused import");

    // A truncated file: a clear error, not a half-imported entity taken as whole.
    let text = std::fs::read_to_string(&f1).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mid = (lines.len() / 2..lines.len()).find(|&i| lines[i].contains(r#""kind":"event""#)).unwrap();
    let cut: String = lines[..=mid].iter().map(|l| format!("{l}\n")).collect();
    let truncated = dir.path().join("cut.jsonl");
    std::fs::write(&truncated, cut).unwrap();
    let o =
        run(vec!["journal".into(), "import".into(), s(&truncated), "--to-data-dir".into(), s(&dir.path().join("t"))])
            .await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("truncated export"), "{}", String::from_utf8_lossy(&o.stderr));
    drop_keyspace(&url).await;
}

/// Where any table of the keyspace still names `needle` (an entity id): an
/// `entity_id` column of any table, or an event, snapshot or checkpoint
/// payload holding it.
async fn keyspace_mentions(url: &str, needle: &str) -> Vec<String> {
    let j = ScyllaJournal::connect(url, 1024).await.unwrap();
    let (s, ks) = (j.session(), j.config().keyspace.clone());
    let cql = "SELECT table_name FROM system_schema.columns WHERE keyspace_name = ? AND column_name = 'entity_id' \
               ALLOW FILTERING";
    let r = s.query_unpaged(cql, (ks.clone(),)).await.unwrap().into_rows_result().unwrap();
    let tables: Vec<(String,)> = r.rows::<(String,)>().unwrap().collect::<Result<_, _>>().unwrap();
    assert!(tables.len() >= 6, "the tables that name entities: {tables:?}");
    let mut found = Vec::new();
    for (t,) in tables {
        let r =
            s.query_unpaged(format!("SELECT entity_id FROM {ks}.{t}"), ()).await.unwrap().into_rows_result().unwrap();
        let n = r
            .rows::<(Option<String>,)>()
            .unwrap()
            .filter(|row| row.as_ref().unwrap().0.as_deref() == Some(needle))
            .count();
        if n > 0 {
            found.push(format!("{t}: {n} rows"));
        }
    }
    let has = |b: &Option<Vec<u8>>| b.as_ref().is_some_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()));
    type Payloads = (String, Option<Vec<u8>>, Option<Vec<u8>>);
    let cql = format!("SELECT entity_id, payload, snap_payload FROM {ks}.events");
    let r = s.query_unpaged(cql, ()).await.unwrap().into_rows_result().unwrap();
    for row in r.rows::<Payloads>().unwrap() {
        let (id, payload, snap) = row.unwrap();
        if has(&payload) || has(&snap) {
            found.push(format!("events of {id}: a payload names it"));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_entity_leaves_no_row_in_any_table_after_its_grace_period() {
    let url = format!("{}/{}", scylla_server(), unique_keyspace());
    migrated(&url).await;
    let tweak = |c: &mut NodeConfig| {
        c.limits.delete_grace_secs = 2;
        c.journal.snapshot_every = 10;
    };
    let (n, base) = node(&url, tweak).await;
    post(&cmd(&base, "s:del", "restock"), r#"{"qty":100}"#, Some("po-1")).await;
    // More events than a partition holds (bucket size 50): the purge removes every partition.
    for _ in 0..59 {
        assert_eq!(post(&cmd(&base, "s:del", "purchase"), r#"{"qty":1}"#, None).await.0, 200);
    }
    post(&cmd(&base, "s:kept", "restock"), r#"{"qty":1}"#, Some("po-1")).await;
    let (s, d) = common::delete(&format!("{base}/v1/entities/stock/s:del")).await;
    assert_eq!((s, d["deleted_at_seq"].as_u64()), (200, Some(61)), "{d}");
    let (s, e) = get(&format!("{base}/v1/entities/stock/s:del")).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("entity_deleted")));

    let j = ScyllaJournal::connect(&url, 1024).await.unwrap();
    let key = EntityKey::new("stock", "s:del");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while j.last_seq(&key).await.unwrap() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "not purged within 60 s of a 2 s grace period");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The dispatcher's stored state and older checkpoints follow within a poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = keyspace_mentions(&url, "s:del").await;
        if left.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "left after the purge: {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(j.last_seq(&EntityKey::new("stock", "s:kept")).await.unwrap(), 1, "the other entity is untouched");
    let (s, h, r) = post(&cmd(&base, "s:del", "restock"), r#"{"qty":3}"#, Some("po-1")).await;
    assert_eq!((s, r, h["tessera-seq"].to_str().unwrap()), (200, json!({"on_hand": 3}), "1"), "a new life");
    n.shutdown().await;
    drop_keyspace(&url).await;
}

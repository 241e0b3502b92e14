//! A node process killed with SIGKILL under load and restarted: every
//! acknowledged command's events are in the journal, no command is partial,
//! and retries with the same idempotency keys apply each command once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{NodeProcess, TestNode};
use serde_json::Value;

const ENTITIES: usize = 8;

async fn all_events(base: &str, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let (s, page) = common::get(&format!("{base}/v1/entities/flaky/{id}/events?from={from}&limit=1000")).await;
        assert_eq!(s, 200, "{page}");
        out.extend(page["events"].as_array().cloned().unwrap_or_default());
        match page["next_from"].as_u64() {
            Some(n) => from = n,
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_no_acknowledged_command() -> anyhow::Result<()> {
    sigkill_under_load(
        &[],
        Duration::from_millis(1500),
        0,
        (
            "01-sigkill",
            "node killed (SIGKILL) under load, restarted",
            "sigkill_during_load_loses_no_acknowledged_command",
        ),
        "16 clients, batches of 1-4 events, local journal",
    )
    .await
}

/// The same with 1 MiB memtables and a longer load: the storage engine
/// flushes every few hundred milliseconds and compacts, so the kill lands
/// around a flush or a compaction's version change (persisted outside the
/// version lock by the patched lsm-tree, third_party/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_amid_flushes_and_compactions_loses_no_acknowledged_command() -> anyhow::Result<()> {
    sigkill_under_load(
        &["--journal-memtable-bytes", "1048576"],
        Duration::from_millis(4000),
        3,
        (
            "01b-sigkill-compacting",
            "node killed (SIGKILL) under load amid flushes and compactions, restarted",
            "sigkill_amid_flushes_and_compactions_loses_no_acknowledged_command",
        ),
        "16 clients, batches of 1-4 events, local journal with 1 MiB memtables",
    )
    .await
}

/// The longest a load goes on past its time waiting for the storage
/// engine's version changes.
const MAX_LOAD: Duration = Duration::from_secs(60);

/// Kills a node (SIGKILL) after `load` of 16 clients' idempotent batches,
/// restarts it, and audits the journal: every acknowledged command exactly
/// once, every batch whole; then retries every attempted command. The
/// storage engine's trees must have changed version (flushes, compactions)
/// at least `min_versions` times during the load (it goes on until they
/// have, up to [`MAX_LOAD`] more).
async fn sigkill_under_load(
    node_args: &[&str],
    load: Duration,
    min_versions: u64,
    (record, title, test): (&str, &str, &str),
    setup: &str,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[limits]\ndedup_max_entries = 1000000\n")?;
    let data = dir.path().join("data");
    let cfg = config.to_str().unwrap_or_default().to_owned();
    let args: Vec<&str> = ["--config", cfg.as_str()].into_iter().chain(node_args.iter().copied()).collect();
    let node = NodeProcess::start(&data, &args).await?;
    let versions_at_start = tessera_journal::LocalJournal::storage_versions(&data);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..16usize {
        let (base, stop) = (node.base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acked = Vec::new();
            let mut attempted = Vec::new();
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (entity, n, key) = (format!("f{}", (c + k) % ENTITIES), 1 + (k % 4), format!("c{c}-{k}"));
                k += 1;
                attempted.push((entity.clone(), n, key.clone()));
                let r = http
                    .post(format!("{base}/v1/entities/flaky/{entity}/batch"))
                    .header("idempotency-key", &key)
                    .json(&serde_json::json!({ "n": n }))
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().as_u16() == 200 => acked.push(key),
                    Ok(resp) => panic!("unexpected status {}", resp.status()),
                    Err(_) => break, // the node is gone
                }
            }
            (acked, attempted)
        }));
    }
    // The load runs for `load`, then on until the trees changed version
    // `min_versions` times (a slow machine writes less in the same time),
    // at most `MAX_LOAD`; the kill lands amid that churn.
    tokio::time::sleep(load).await;
    let loading = std::time::Instant::now();
    while tessera_journal::LocalJournal::storage_versions(&data) - versions_at_start < min_versions
        && loading.elapsed() < MAX_LOAD
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.kill().await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = HashSet::new();
    let mut attempted = Vec::new();
    for c in clients {
        let (a, t) = c.await?;
        acked.extend(a);
        attempted.extend(t);
    }
    assert!(acked.len() > 50, "the load ran ({} acknowledged)", acked.len());
    let versions = tessera_journal::LocalJournal::storage_versions(&data) - versions_at_start;
    assert!(
        versions >= min_versions,
        "the storage engine's trees changed version only {versions} times during the load"
    );

    let node = NodeProcess::start(&data, &args).await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in 0..ENTITIES {
        let events = all_events(&node.base, &format!("f{e}")).await;
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev["seq"], i as u64 + 1, "no gaps");
        }
        // Group consecutive events by invocation: each group is one whole batch.
        let mut i = 0;
        while i < events.len() {
            let key = events[i]["invocation_id"].as_str().unwrap_or_default().to_owned();
            let of = events[i]["event"]["Tick"]["of"].as_u64().unwrap_or(0) as usize;
            let group = events[i..].iter().take_while(|e| e["invocation_id"] == events[i]["invocation_id"]).count();
            assert_eq!(group, of, "invocation {key} is whole ({group} of {of} events)");
            *seen.entry(key).or_default() += 1;
            i += group;
        }
    }
    for key in &acked {
        assert_eq!(seen.get(key), Some(&1), "acknowledged {key} is in the journal exactly once");
    }
    assert!(seen.values().all(|n| *n == 1), "no invocation applied twice");
    tessera_test_support::report::fault(
        record,
        title,
        &format!("tests/tests/crash.rs {test}"),
        setup,
        acked.len() as u64,
        0,
        None,
        &format!(
            "{} attempted; every batch whole; every retry applied once; {versions} version changes of the storage trees during the load",
            attempted.len()
        ),
    );

    // Retrying every attempted command with its key applies each exactly once.
    let http = reqwest::Client::new();
    for (entity, n, key) in &attempted {
        let resp = http
            .post(format!("{}/v1/entities/flaky/{entity}/batch", node.base))
            .header("idempotency-key", key)
            .json(&serde_json::json!({ "n": n }))
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 200);
        let dedup = resp.headers().get("tessera-deduplicated").is_some();
        assert_eq!(dedup, seen.contains_key(key), "{key}: deduplicated iff it was already applied");
    }
    let mut total = 0;
    for e in 0..ENTITIES {
        let events = all_events(&node.base, &format!("f{e}")).await;
        let keys: HashSet<_> =
            events.iter().map(|e| e["invocation_id"].as_str().unwrap_or_default().to_owned()).collect();
        total += keys.len();
        let (_, state) = common::get(&format!("{}/v1/entities/flaky/f{e}", node.base)).await;
        assert_eq!(state["state"]["count"], events.len() as u64);
    }
    assert_eq!(total, attempted.len(), "every attempted command applied exactly once");
    node.kill().await;
    Ok(())
}

/// The shard feed through a crash at each named fault point of the append
/// (see `tessera_journal::fault`): concurrent commands on 12 entities of one
/// shard, the process aborts at the point, restarts; then the unit's feed
/// holds every event of the journal exactly once at offsets 1, 2, 3, ...
/// (gapless), per entity in seq order, every acknowledged command is in the
/// journal, and appends after the restart continue right after them.
async fn feed_survives_a_crash_at(point: &str, after: u32, journal: &[&str]) -> anyhow::Result<()> {
    const SHARDS: u32 = 16;
    const SHARD: u32 = 3;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut args = vec!["--shards", "16"];
    args.extend_from_slice(journal);
    let after_s = after.to_string();
    let env = [("TESSERA_FAULT_POINT", point), ("TESSERA_FAULT_AFTER", after_s.as_str())];
    let node = NodeProcess::start_with_env(&data, &args, &env).await?;
    let ids: Vec<String> = (0..1000)
        .map(|i| format!("f{i}"))
        .filter(|id| tessera_journal::shard_of("flaky", id, SHARDS) == SHARD)
        .take(12)
        .collect();
    let mut clients = Vec::new();
    for c in 0..12usize {
        let (base, ids) = (node.base.clone(), ids.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acked = Vec::new();
            for k in 0..100_000usize {
                let (entity, key) = (&ids[(c + k) % ids.len()], format!("c{c}-{k}"));
                let r = http
                    .post(format!("{base}/v1/entities/flaky/{entity}/batch"))
                    .header("idempotency-key", &key)
                    .json(&serde_json::json!({ "n": 1 + k % 3 }))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().as_u16() == 200 => acked.push(key),
                    _ => break, // the process is gone
                }
            }
            acked
        }));
    }
    let mut acked = HashSet::new();
    for c in clients {
        acked.extend(tokio::time::timeout(Duration::from_secs(60), c).await??);
    }
    let status = node.wait().await;
    assert!(!status.success(), "{point}: the process aborted at the fault point ({status:?})");
    assert!(!acked.is_empty(), "{point}: commands were acknowledged before the crash");

    let node = NodeProcess::start(&data, &args).await?;
    let http = reqwest::Client::new();
    for k in 0..5 {
        let key = format!("after-{k}");
        let r = http
            .post(format!("{}/v1/entities/flaky/{}/batch", node.base, ids[k % ids.len()]))
            .header("idempotency-key", &key)
            .json(&serde_json::json!({ "n": 1 }))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200, "{point}: the restarted node appends");
        acked.insert(key);
    }
    let mut in_journal: HashSet<(String, u64)> = HashSet::new();
    let mut invocations = HashSet::new();
    for id in &ids {
        for e in all_events(&node.base, id).await {
            in_journal.insert((id.clone(), e["seq"].as_u64().unwrap_or(0)));
            invocations.insert(e["invocation_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    for key in &acked {
        assert!(invocations.contains(key), "{point}: acknowledged {key} is in the journal");
    }
    // The feed (on Scylla it becomes visible once settled: poll a while).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let feed = loop {
        let mut feed: Vec<(u64, String, u64)> = Vec::new();
        let mut from = 1;
        loop {
            let (s, page) = common::get(&format!("{}/v1/feed/flaky/{SHARD}?from={from}&limit=1000", node.base)).await;
            assert_eq!(s, 200, "{page}");
            let events = page["events"].as_array().cloned().unwrap_or_default();
            for e in &events {
                let (o, id, seq) = (e["offset"].as_u64(), e["entity_id"].as_str(), e["seq"].as_u64());
                feed.push((o.unwrap_or(0), id.unwrap_or_default().to_owned(), seq.unwrap_or(0)));
            }
            if events.is_empty() {
                break;
            }
            from = page["next_from"].as_u64().unwrap_or(from + 1);
        }
        if feed.len() >= in_journal.len() || tokio::time::Instant::now() > deadline {
            break feed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let in_feed: HashSet<(String, u64)> = feed.iter().map(|(_, id, seq)| (id.clone(), *seq)).collect();
    assert_eq!(in_feed.len(), feed.len(), "{point}: no event twice in the feed");
    assert_eq!(in_feed, in_journal, "{point}: the feed holds exactly the journal's events");
    let offsets: Vec<u64> = feed.iter().map(|f| f.0).collect();
    assert_eq!(offsets, (1..=feed.len() as u64).collect::<Vec<_>>(), "{point}: gapless");
    let mut last_seq: HashMap<&str, u64> = HashMap::new();
    for (_, id, seq) in &feed {
        let prev = last_seq.insert(id, *seq).unwrap_or(0);
        assert_eq!(*seq, prev + 1, "{point}: {id} in seq order in the feed");
    }
    eprintln!("{point}: {} acknowledged, {} events, feed exactly once", acked.len(), feed.len());
    node.kill().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_feed_survives_a_crash_before_the_group_commit() -> anyhow::Result<()> {
    feed_survives_a_crash_at("local.before_commit", 150, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_feed_survives_a_crash_after_the_group_commit() -> anyhow::Result<()> {
    feed_survives_a_crash_at("local.after_commit", 150, &[]).await
}

/// A fresh keyspace on the test Cassandra, migrated.
async fn scylla_journal() -> String {
    let url = format!("{}/{}", common::scylla_server(), common::unique_keyspace());
    let u = url.clone();
    tokio::task::spawn_blocking(move || common::cluster::migrate(&u)).await.expect("migrate");
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scylla_feed_survives_a_crash_after_the_intent() -> anyhow::Result<()> {
    let url = scylla_journal().await;
    feed_survives_a_crash_at("scylla.after_intent", 150, &["--journal", &url]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scylla_feed_survives_a_crash_after_the_event_commit() -> anyhow::Result<()> {
    let url = scylla_journal().await;
    feed_survives_a_crash_at("scylla.after_append", 150, &["--journal", &url]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scylla_feed_survives_a_crash_after_a_watermark() -> anyhow::Result<()> {
    let url = scylla_journal().await;
    feed_survives_a_crash_at("scylla.after_watermark", 60, &["--journal", &url]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scylla_feed_survives_a_crash_after_the_feed_entries() -> anyhow::Result<()> {
    let url = scylla_journal().await;
    feed_survives_a_crash_at("scylla.after_entries", 150, &["--journal", &url]).await
}

/// A mounted tmpfs of a test's own, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` at `dir`; `None` where mounting is not
    /// allowed (no root / CAP_SYS_ADMIN).
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let s = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount runs");
        assert!(s.success(), "remount to {size}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk under the local journal (an 8 MiB tmpfs): appends fail with
/// a clear 503 and Retry-After, reads go on, nothing acknowledged is lost
/// or corrupted, and commands succeed again once there is room — without a
/// restart. A restart afterwards reads every event back through its CRC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_appends_clearly_and_service_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("small"), "8m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    };
    let data = disk.0.join("data");
    let tweak = |c: &mut tessera_runtime::NodeConfig| c.limits.dedup_max_entries = 1_000_000;
    let (node, base) = common::node(&data, tweak).await;
    let batch = |id: usize| format!("{base}/v1/entities/flaky/e{}/batch", id % ENTITIES);
    let body = r#"{"n":200}"#;

    let (mut acked, mut failed, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let started = std::time::Instant::now();
    let mut i = 0;
    while errors.len() < 20 {
        i += 1;
        let key = format!("k{i}");
        let (s, h, v) = common::post(&batch(i), body, Some(&key)).await;
        if s == 200 {
            acked.push((i, key));
        } else {
            errors.push((
                s,
                h.contains_key("retry-after"),
                v["error"]["message"].as_str().unwrap_or_default().to_owned(),
            ));
            failed.push((i, key));
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the disk never filled: {} acknowledged", acked.len());
    }
    for (s, retry_after, msg) in &errors {
        assert_eq!((*s, *retry_after), (503, true), "a full disk is a retryable 503: {msg}");
        assert!(msg.contains("disk full") || msg.contains("No space left"), "and says so: {msg}");
    }
    let (s, _) = common::get(&format!("{base}/v1/entities/flaky/e1")).await;
    assert_eq!(s, 200, "reads go on");

    // Room again: the same node serves again, and every failed command,
    // retried with its key, is applied once.
    disk.resize("256m");
    let room = std::time::Instant::now();
    let mut resumed = None;
    for _ in 0..100 {
        let (s, _, _) = common::post(&batch(0), body, Some("after-room")).await;
        if s == 200 {
            resumed = Some(room.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed.is_some(), "commands succeed again without a restart");
    // A refused commit's outcome is unknown (its batch may have reached the
    // disk before the sync failed, and be there after the reopen): a careful
    // client retries a 503 with the same key until it is answered.
    for (i, key) in &failed {
        let mut tries = 0;
        loop {
            let (s, _, v) = common::post(&batch(*i), body, Some(key)).await;
            tries += 1;
            if s == 200 {
                break;
            }
            assert!(s == 503 && tries < 10, "retry of {key}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let audit = |base: String| {
        let (acked, failed) = (acked.clone(), failed.clone());
        async move {
            let mut total = 0;
            for e in 0..ENTITIES {
                let events = all_events(&base, &format!("e{e}")).await;
                let mut per_key: HashMap<String, usize> = HashMap::new();
                for ev in &events {
                    *per_key.entry(ev["invocation_id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
                }
                for (i, key) in acked.iter().chain(&failed) {
                    if i % ENTITIES == e {
                        assert_eq!(per_key.get(key), Some(&200), "{key} on e{e}: all 200 events, once");
                    }
                }
                total += events.len();
            }
            total
        }
    };
    let events = audit(base.clone()).await;
    node.shutdown().await;
    let (node, base) = common::node(&data, tweak).await;
    assert_eq!(audit(base).await, events, "after a restart every event reads back");
    node.shutdown().await;
    tessera_test_support::report::fault(
        "05-disk-full",
        "disk full under the local journal (8 MiB tmpfs)",
        "tests/tests/crash.rs a_full_disk_fails_appends_clearly_and_service_resumes_when_space_returns",
        "batches of 200 events on 8 entities until 20 refusals",
        acked.len() as u64,
        0,
        resumed.map(|d| d.as_millis() as u64),
        &format!(
            "{} refused (503, Retry-After, \"disk full\") and retried with their keys: each applied once; {events} events read back after a restart; recovery = from the filesystem growing to the first accepted command, no restart",
            failed.len()
        ),
    );
}

/// Runs `tessera-test-node journal verify --data-dir DIR`: exit status,
/// the problem lines, stderr.
async fn verify(data: &std::path::Path) -> (bool, Vec<Value>, String) {
    let out = tokio::process::Command::new(common::test_node_bin())
        .args(["journal", "verify", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "error")
        .output()
        .await
        .expect("verify runs");
    let problems = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out.status.success(), problems, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The largest table file of the local journal's storage engine (the
/// events' keyspace holds the most).
fn largest_table(data: &std::path::Path) -> std::path::PathBuf {
    let mut tables = Vec::new();
    for ks in std::fs::read_dir(data.join("data/keyspaces")).expect("keyspaces") {
        let dir = ks.expect("entry").path().join("tables");
        for t in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let len = t.metadata().map(|m| m.len()).unwrap_or(0);
            tables.push((len, t.path()));
        }
    }
    tables.into_iter().max().map(|(_, p)| p).expect("a table file after a clean close")
}

/// A flipped byte in a table file of the local journal: the entities whose
/// events it held fail clearly (500 `replay_failed` naming the entity and
/// seq) and stay isolated, every other entity serves, the node stays up;
/// `tessera journal verify` finds nothing before the flip and names the
/// damaged entities after it (exit status 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_isolates_its_entities_and_journal_verify_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (node, base) = common::node(&data, |_| {}).await;
    for e in 0..40 {
        for k in 0..5 {
            let (s, _, v) =
                common::post(&format!("{base}/v1/entities/stock/s:{e}/restock"), r#"{"qty":1}"#, None).await;
            assert_eq!(s, 200, "{k}: {v}");
        }
    }
    node.shutdown().await;
    let (ok, problems, stderr) = verify(&data).await;
    assert!(ok && problems.is_empty(), "a sound journal verifies: {problems:?} {stderr}");
    assert!(stderr.contains("no problem") && stderr.contains("200 events"), "{stderr}");

    let table = largest_table(&data);
    let mut bytes = std::fs::read(&table).unwrap();
    let at = bytes.len() / 5;
    bytes[at] ^= 0x5a;
    std::fs::write(&table, &bytes).unwrap();

    let (node, base) = common::node(&data, |_| {}).await;
    let (mut served, mut damaged) = (0, Vec::new());
    for e in 0..40 {
        let (s, v) = common::get(&format!("{base}/v1/entities/stock/s:{e}")).await;
        match s {
            200 => served += 1,
            _ => {
                let msg = v["error"]["message"].as_str().unwrap_or_default().to_owned();
                assert_eq!((s, v["error"]["kind"].as_str()), (500, Some("replay_failed")), "{v}");
                assert!(msg.contains(&format!("stock/s:{e}")) && msg.contains("at seq"), "names entity and seq: {msg}");
                damaged.push(format!("s:{e}"));
            }
        }
    }
    assert!(!damaged.is_empty(), "the flip at byte {at} of {} hit some entity's events", table.display());
    assert!(served > 0, "the other entities serve");
    // A damaged entity's commands fail clearly, each time; the others take commands.
    for id in &damaged {
        let (s, _, v) = common::post(&format!("{base}/v1/entities/stock/{id}/restock"), r#"{"qty":1}"#, None).await;
        assert_eq!((s, v["error"]["kind"].as_str()), (500, Some("replay_failed")), "{v}");
    }
    let good = (0..40).map(|e| format!("s:{e}")).find(|id| !damaged.contains(id)).expect("a sound entity");
    let (s, _, v) = common::post(&format!("{base}/v1/entities/stock/{good}/restock"), r#"{"qty":1}"#, None).await;
    assert_eq!(s, 200, "{v}");
    let health = common::client().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "the node is up");
    node.shutdown().await;

    let (ok, problems, stderr) = verify(&data).await;
    assert!(!ok, "verify fails on a damaged journal: {stderr}");
    for id in &damaged {
        assert!(
            problems.iter().any(|p| p["entity_id"] == *id && p["seq"].as_u64().is_some_and(|s| s > 0)),
            "verify names {id} with its seq: {problems:?}"
        );
    }
    tessera_test_support::report::fault(
        "06-corrupt-local",
        "a flipped byte in a local journal table file",
        "tests/tests/crash.rs a_flipped_byte_isolates_its_entities_and_journal_verify_names_them",
        "40 entities, 200 events, then reads and commands on each",
        200,
        0,
        None,
        &format!(
            "{} entities in the damaged block answer 500 replay_failed naming entity and seq; {served} serve; the node stays up; journal verify names all {} (nothing before the flip)",
            damaged.len(),
            damaged.len()
        ),
    );
}

/// The soak's short version (`cargo run --release -p tessera-tests --bin
/// soak -- --duration 30m` is the long one): two minutes of mixed load on a
/// node process over 20 000 entities with room for 1 000 active, so
/// entities are passivated and activated all along. Memory and open files
/// stay flat, and no answer is other than 200, 202 or the rejections
/// `insufficient_stock` and `unknown_sku`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_minute_soak_stays_flat_and_clean() {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/soak");
    let o = tessera_tests::soak::SoakOptions {
        node_bin: common::test_node_bin().into(),
        duration: Duration::from_secs(120),
        sample_every: Duration::from_secs(2),
        clients: 4,
        entities: 20_000,
        max_active: 1_000,
        out: out.clone(),
        // Small journal caches, so that two minutes reach their plateau.
        node_args: ["--journal-cache-bytes", "8388608", "--journal-memtable-bytes", "2097152"]
            .map(str::to_owned)
            .to_vec(),
        node_wrapper: None,
    };
    let r = tessera_tests::soak::run(&o).await.expect("the soak runs");
    assert!(r.clean, "unexpected answers: {:?}", r.unexpected);
    assert!(r.passivations > 0, "entities were passivated: {r:?}");
    assert!(
        r.flat,
        "RSS {:.0} MiB after warm-up, {:.0} MiB at the end; open files {:?} (samples in {})",
        r.rss_after_warmup_mib,
        r.rss_at_end_mib,
        r.open_files_range,
        out.display()
    );
    tessera_test_support::report::fault(
        "09-soak",
        "soak: 2 minutes of mixed load with passivation churn (the 30-minute run is `--bin soak`)",
        "tests/tests/crash.rs a_two_minute_soak_stays_flat_and_clean",
        "4 clients: purchases, keyed restocks (1 in 10 a retry), reads, sync and async function calls over 20 000 entities, 1 000 active",
        r.requests,
        0,
        None,
        &format!("{}; plot in target/soak/soak.svg", r.summary()),
    );
}

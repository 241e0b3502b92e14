//! The cluster with real processes: node processes on loopback sharing a real
//! nats-server (leases, routing) and a real Cassandra 5 (the journal).
//! Failover after kill -9, a joining node taking shards in capped rounds, a
//! graceful leave, and a node cut off from NATS that stops serving before
//! its lease can be taken; a transfer saga between accounts (messages only)
//! while three of four nodes crash at fault points around delivery and
//! apply. Every acknowledged command's events are checked in
//! the journal: exactly once, and per entity never committed under an older
//! lease epoch after a newer one.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::{Value, json};

/// Cluster tests start several processes each; one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_join_and_graceful_leave_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new().await;
    let nats = nats_url();
    // Every node runs the exactly-once event count (a projection whose
    // state is kept with its checkpoints): checked against the journal below.
    let env = [("TESSERA_TEST_PROJECTIONS", "1")];
    let n1 = c.start_with_env("n1", &nats, &[], &env).await;
    let n2 = c.start_with_env("n2", &nats, &[], &env).await;
    let n3 = c.start_with_env("n3", &nats, &[], &env).await;
    c.wait_even(&["n1", "n2", "n3"], Duration::from_secs(30)).await;
    let (spread, _) = c.spread(&["n1", "n2", "n3"]).await;
    assert!(spread.values().all(|n| (10..=11).contains(n)), "32 shards spread evenly: {spread:?}");

    // The CLI agrees with the bucket.
    let out = tokio::process::Command::new(test_node_bin())
        .args(["cluster", "locate", "flaky", "e1", "--nats", &nats, "--nats-prefix", &c.prefix, "--json"])
        .output()
        .await
        .expect("locate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let located: Value = serde_json::from_slice(&out.stdout).expect("locate --json");
    let shard = tessera_journal::shard_of("flaky", "e1", SHARDS);
    assert_eq!(located["shard"], json!(shard));
    assert_eq!(located["token"], json!(tessera_journal::token("flaky", "e1")));
    assert_eq!(located["owner"].as_str(), c.status().await.owner("flaky", shard).map(|l| l.owner.as_str()));
    let out = tokio::process::Command::new(test_node_bin())
        .args(["cluster", "status", "--nats", &nats, "--nats-prefix", &c.prefix])
        .output()
        .await
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("members (3)") && text.contains("leader: n"), "{text}");

    // Idempotency by time across a move: 1000 keyed purchases on one stock
    // entity whose shard n3 owns (n3 is about to die), retried at the end.
    let status = c.status().await;
    let hot = (0..10_000)
        .map(|i| format!("s1:hot{i}"))
        .find(|id| {
            let shard = tessera_journal::shard_of("stock", id, SHARDS);
            status.owner("stock", shard).is_some_and(|l| l.owner == "n3")
        })
        .expect("an entity n3 owns");
    let (s, _, b) = post(&format!("{}/v1/entities/stock/{hot}/restock", n1.base), r#"{"qty": 5000}"#, None).await;
    assert_eq!(s, 200, "{b}");
    for i in 0..1000 {
        let (s, _, b) =
            post(&format!("{}/v1/entities/stock/{hot}/purchase", n1.base), r#"{"qty": 1}"#, Some(&format!("hot-{i}")))
                .await;
        assert_eq!(s, 200, "{b}");
    }

    // Async commands to another entity n3 owns, through n1, spanning the
    // kill -9, the join and the moves: each runs once, in order.
    let hot2 = (0..10_000)
        .map(|i| format!("s1:async{i}"))
        .find(|id| {
            let shard = tessera_journal::shard_of("stock", id, SHARDS);
            status.owner("stock", shard).is_some_and(|l| l.owner == "n3")
        })
        .expect("an entity n3 owns");
    const ASYNC: u64 = 300;
    let async_sender = {
        let (base, hot2) = (n1.base.clone(), hot2.clone());
        tokio::spawn(async move {
            for n in 1..=ASYNC {
                let url = format!("{base}/v1/entities/stock/{hot2}/restock?mode=async");
                let body = json!({ "qty": n }).to_string();
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let (s, _, b) = post(&url, &body, Some(&format!("arestock-{n}"))).await;
                    if s == 202 || s == 200 {
                        break;
                    }
                    assert!(Instant::now() < deadline, "async restock {n} not accepted: {s} {b}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    // Steady load through n1 and n2 (n3 is about to die; its shards are
    // reached by forwarding).
    let targets = Arc::new(std::sync::Mutex::new(vec![n1.base.clone(), n2.base.clone()]));
    let (load, stop) = (Arc::new(Load::default()), Arc::new(AtomicBool::new(false)));
    let workers: Vec<_> = (0..6).map(|w| spawn_load(targets.clone(), load.clone(), stop.clone(), w)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = load.acked.lock().map(|a| a.len()).unwrap_or(0);
    assert!(before_kill > 0, "the load runs");

    // kill -9 n3: its shards are owned again within the lease TTL + a renewal.
    let retried_before = load.retried.load(Ordering::Relaxed);
    n3.kill().await;
    let killed = Instant::now();
    c.wait_even(&["n1", "n2"], Duration::from_secs(30)).await;
    let ownership_restored_ms = killed.elapsed().as_millis() as u64;
    // Past the clients' 5 s timeout: requests that were inside n3 when it
    // died have been retried by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let retried_in_move = load.retried.load(Ordering::Relaxed) - retried_before;
    report(
        "failover",
        json!({"ownership_restored_ms": ownership_restored_ms, "lease_ttl_ms": TTL_MS,
               "attempts_retried_during_move": retried_in_move,
               "failed": load.failed.load(Ordering::Relaxed)}),
    );
    assert!(
        ownership_restored_ms <= TTL_MS + TTL_MS / 3 + 3000,
        "ownership restored after {ownership_restored_ms} ms (TTL {TTL_MS} ms + one renewal, plus slack for a loaded box)"
    );

    // A fourth node joins: shards move to it in capped rounds, load goes on.
    let joined = Instant::now();
    let n4 = c.start_with_env("n4", &nats, &[], &env).await;
    let mut max_in_progress = 0;
    let mut first_seen = None;
    let mut over_cap = None;
    let mut unready_while_joining = false;
    loop {
        let (m, in_progress) = c.spread(&["n1", "n2", "n4"]).await;
        max_in_progress = max_in_progress.max(in_progress);
        if in_progress > 2 * CAP && over_cap.is_none() {
            let leases: Vec<String> = c
                .status()
                .await
                .leases
                .iter()
                .map(|l| format!("{}/{}={}:{:?}", l.entity_type, l.shard, l.owner, l.state))
                .collect();
            over_cap = Some(format!("{in_progress} in progress; leases {leases:?}"));
        }
        let n4_has = m.get("n4").copied().unwrap_or(0);
        if n4_has > 0 && first_seen.is_none() {
            first_seen = Some(n4_has);
        }
        // A joining node is not ready for a load balancer until it holds
        // its share of the shards.
        if readyz(&n4.base).await == 503 {
            unready_while_joining = true;
        }
        let (lo, hi) = (m.values().min().copied().unwrap_or(0), m.values().max().copied().unwrap_or(0));
        if in_progress == 0 && hi - lo <= 1 {
            break;
        }
        assert!(joined.elapsed() < Duration::from_secs(60), "n4 did not get its share: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let join_ms = joined.elapsed().as_millis() as u64;
    assert!(unready_while_joining, "n4's /readyz said 503 while it took its shards");
    let until_ready = Instant::now();
    while readyz(&n4.base).await != 200 {
        assert!(until_ready.elapsed() < Duration::from_secs(10), "n4 ready once balanced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in [&n1, &n2] {
        assert_eq!(readyz(&n.base).await, 200, "the other members stay ready while shards move away");
    }
    report(
        "join",
        json!({"balanced_after_ms": join_ms, "cap_per_round": CAP, "max_moves_in_progress_seen": max_in_progress, "first_share_seen": first_seen}),
    );
    assert!(first_seen.is_some_and(|n| n <= 2 * CAP), "the new node took shards gradually, first {first_seen:?}");
    if max_in_progress > 2 * CAP {
        let logs: Vec<String> = [&n1, &n2, &n4].iter().flat_map(|n| n.log_tail()).collect();
        panic!("at most the cap in flight (with view lag): {over_cap:?}\nnode logs:\n{}", logs.join("\n"));
    }
    targets.lock().unwrap_or_else(|p| p.into_inner()).push(n4.base.clone());

    // The async restocks go through n1: they have spanned the kill and the
    // join; all are accepted before n1 leaves.
    async_sender.await.expect("async sender");

    // n1 leaves gracefully (SIGTERM) while the load goes through n2 and n4.
    *targets.lock().unwrap_or_else(|p| p.into_inner()) = vec![n2.base.clone(), n4.base.clone()];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retried_before_leave = load.retried.load(Ordering::Relaxed);
    let pid = n1.child.id().expect("pid");
    let left = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill -TERM");
    let status = n1.wait().await;
    let leave_ms = left.elapsed().as_millis() as u64;
    assert!(status.success(), "n1 exits cleanly after handing off: {status:?}");
    c.wait_even(&["n2", "n4"], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let retried_in_leave = load.retried.load(Ordering::Relaxed) - retried_before_leave;
    report("leave", json!({"exit_after_ms": leave_ms, "attempts_retried_during_leave": retried_in_leave}));
    assert_eq!(load.failed.load(Ordering::Relaxed), 0, "no command failed for good");

    let checked = verify_journal(&n2.base, &load).await;
    assert_eq!(checked, load.acked.lock().map(|a| a.len()).unwrap_or(0));
    eprintln!("verified {checked} acknowledged commands in the journal");
    tessera_test_support::report::fault(
        "02-cluster-kill",
        "a cluster node killed (SIGKILL) under load; another joins, one leaves",
        "tests/tests/cluster.rs failover_join_and_graceful_leave_lose_nothing",
        "6 clients through 2 of 3 nodes, Cassandra journal, async commands beside",
        checked as u64,
        0,
        Some(ownership_restored_ms),
        &format!(
            "{retried_in_move} attempts retried during the move, {retried_in_leave} during the leave, none failed for good; epochs never go back along seq; recovery = from the kill to every lease owned again (TTL {TTL_MS} ms)"
        ),
    );

    // Every async restock ran once, in the order it was accepted.
    for n in 1..=ASYNC {
        let r = wait_result(&n2.base, &format!("arestock-{n}"), Duration::from_secs(60)).await;
        assert_eq!(r["status"], "ok", "{r}");
    }
    let events = tessera_test_support::http::all_events(&n2.base, "stock", &hot2).await;
    let restocks: Vec<u64> = events.iter().filter_map(|e| e.event["Restocked"]["qty"].as_u64()).collect();
    assert_eq!(restocks, (1..=ASYNC).collect::<Vec<_>>(), "async commands once each, in order, across the moves");

    // The first of the 1000 keys, retried after its owner died and its shard
    // moved (and more moved since): answered from the journal, nothing appended.
    let now_owner =
        c.status().await.owner("stock", tessera_journal::shard_of("stock", &hot, SHARDS)).map(|l| l.owner.clone());
    assert_ne!(now_owner.as_deref(), Some("n3"), "the entity moved");
    for base in [&n2.base, &n4.base] {
        let (s, h, b) = post(&format!("{base}/v1/entities/stock/{hot}/purchase"), r#"{"qty": 1}"#, Some("hot-0")).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(h.get("tessera-deduplicated").and_then(|v| v.to_str().ok()), Some("true"), "{b}");
        assert_eq!(h.get("tessera-seq").and_then(|v| v.to_str().ok()), Some("2"), "the original seq");
    }
    let (_, state) = get(&format!("{}/v1/entities/stock/{hot}?read=owner", n2.base)).await;
    assert_eq!((state["seq"].as_u64(), state["state"]["on_hand"].as_i64()), (Some(1001), Some(4000)), "{state}");

    // The projection followed the feed through the kill -9, the join and the
    // leave: its count equals the journal's, never more.
    let mut in_journal = 0u64;
    for e in 0..ENTITIES {
        in_journal += all_events(&n2.base, &format!("e{e}")).await.len() as u64;
    }
    let journal: Arc<dyn tessera_journal::Journal> =
        Arc::new(tessera_journal::ScyllaJournal::connect(&c.journal, SHARDS).await.expect("journal"));
    let counted_started = Instant::now();
    let counted = loop {
        let mut counted = 0u64;
        for shard in 0..SHARDS {
            let s = tessera_runtime::projection::view_state::<u64>(journal.clone(), "event-count", "flaky", shard);
            counted += s.await.expect("view state").unwrap_or(0);
        }
        assert!(counted <= in_journal, "the projection counted {counted} of {in_journal} events: some twice");
        if counted == in_journal || counted_started.elapsed() > Duration::from_secs(60) {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    report(
        "projection",
        json!({"events": in_journal, "counted": counted,
        "caught_up_ms": counted_started.elapsed().as_millis() as u64}),
    );
    assert_eq!(counted, in_journal, "the exactly-once count equals the journal");

    // The feed itself, read through the HTTP API: every event once, at
    // offsets 1, 2, 3, ... per unit, per entity in seq order — across the
    // kill -9, the join and the leave.
    let mut fed = std::collections::HashSet::new();
    for shard in 0..SHARDS {
        let (mut from, mut last_offset) = (1u64, 0u64);
        let mut seqs: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        loop {
            let (s, page) = get(&format!("{}/v1/feed/flaky/{shard}?from={from}&limit=1000", n2.base)).await;
            assert_eq!(s, 200, "{page}");
            let events = page["events"].as_array().cloned().unwrap_or_default();
            for e in &events {
                let (o, id, seq) = (
                    e["offset"].as_u64().unwrap_or(0),
                    e["entity_id"].as_str().unwrap_or(""),
                    e["seq"].as_u64().unwrap_or(0),
                );
                assert_eq!(o, last_offset + 1, "shard {shard}: offsets without gaps");
                last_offset = o;
                let prev = seqs.insert(id.to_owned(), seq).unwrap_or(0);
                assert_eq!(seq, prev + 1, "shard {shard}: {id} in seq order");
                assert!(fed.insert((id.to_owned(), seq)), "{id}/{seq} once in the feed");
            }
            if events.is_empty() {
                break;
            }
            from = page["next_from"].as_u64().unwrap_or(from + 1);
        }
    }
    assert_eq!(fed.len() as u64, in_journal, "the feed holds every event of the journal");
    n2.kill().await;
    n4.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_nats_stops_serving_before_its_lease_is_taken() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new().await;
    let nats = nats_url();
    let proxy = Proxy::start(&nats).await;
    let n1 = c.start("n1", &nats, &[]).await;
    let n2 = c.start("n2", &proxy.addr, &["--invocation-timeout-ms", "1000"]).await;
    c.wait_even(&["n1", "n2"], Duration::from_secs(30)).await;
    // Balanced counts leases of every type; wait until n2 owns a `flaky`
    // shard (a lease may still be moving when the counts even out).
    let waited = Instant::now();
    let entity = loop {
        let st = c.status().await;
        let found = (0..1000).map(|i| format!("p{i}")).find(|id| {
            st.owner("flaky", tessera_journal::shard_of("flaky", id, SHARDS)).is_some_and(|l| l.owner == "n2")
        });
        match found {
            Some(id) => break id,
            None => assert!(waited.elapsed() < Duration::from_secs(30), "n2 owns no flaky shard: {st:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shard = tessera_journal::shard_of("flaky", &entity, SHARDS);
    let url = format!("{}/v1/entities/flaky/{entity}/batch", n2.base);
    let (s, _, v) = post(&url, r#"{"n":1}"#, Some("before-cut")).await;
    assert_eq!(s, 200, "{v}");

    // Cut n2 from NATS; keep sending it commands for its own shard.
    proxy.cut();
    let cut = Instant::now();
    let mut refused_at = None;
    let mut served_after_cut = 0;
    let mut i = 0;
    while refused_at.is_none() {
        i += 1;
        let sent = Instant::now();
        let (s, _, v) = post(&url, r#"{"n":1}"#, Some(&format!("after-cut-{i}"))).await;
        if s == 200 {
            served_after_cut += 1;
        } else {
            assert_eq!(s, 503, "refused: {v}");
            assert!(v["error"]["kind"] == "shard_moved" || v["error"]["kind"] == "unavailable", "{v}");
            refused_at = Some(sent.duration_since(cut));
        }
        assert!(cut.elapsed() < Duration::from_secs(20), "n2 kept serving");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let refused_at = refused_at.unwrap_or_default();
    // Now n1 takes the lease, but only after n2 stopped.
    let taken_at = loop {
        let st = c.status().await;
        if st.owner("flaky", shard).is_some_and(|l| l.owner == "n1") {
            break cut.elapsed();
        }
        assert!(cut.elapsed() < Duration::from_secs(20), "n1 never took the shard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    report(
        "partition",
        json!({"refused_after_cut_ms": refused_at.as_millis() as u64, "taken_after_cut_ms": taken_at.as_millis() as u64,
               "served_after_cut": served_after_cut, "lease_ttl_ms": TTL_MS}),
    );
    assert!(refused_at < taken_at, "n2 stopped serving ({refused_at:?}) before n1 took the lease ({taken_at:?})");

    // The new owner continues from everything n2 committed.
    let (s, _, v) =
        post(&format!("{}/v1/entities/flaky/{entity}/batch", n1.base), r#"{"n":1}"#, Some("after-takeover")).await;
    assert_eq!(s, 200, "{v}");
    let events = all_events(&n1.base, &entity).await;
    assert_eq!(events.len(), 2 + served_after_cut, "every acknowledged command is there once");
    let epochs: Vec<u64> = events.iter().filter_map(|e| e["epoch"].as_u64()).collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "epochs never go back: {epochs:?}");
    assert_eq!(events.last().and_then(|e| e["node"].as_str()), Some("n1"));
    n1.kill().await;
    n2.kill().await;
}

/// Reads through any node, owner or not, while writes go through both and
/// shards move (a node joins, one leaves): no read fails, and every read's
/// state is the journal's state at the seq it reports. Snapshots every 3
/// events, so reads and activations on new owners land right after
/// snapshots all the time (the race of issue 18: a non-owner read saw the
/// owner's write appear between its event read and its last-seq check).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_on_any_node_match_the_journal_while_writes_and_moves_go_on() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new().await;
    let nats = nats_url();
    let snap = ["--snapshot-every", "3"];
    let a = c.start("a", &nats, &snap).await;
    let b = c.start("b", &nats, &snap).await;
    c.wait_even(&["a", "b"], Duration::from_secs(30)).await;
    // A rejection reads the same served by the owner or forwarded to it.
    let st = c.status().await;
    let sold_out = (0..1000)
        .map(|i| format!("store-1:sold-out-{i}"))
        .find(|id| st.owner("stock", tessera_journal::shard_of("stock", id, SHARDS)).is_some_and(|l| l.owner == "a"))
        .expect("a stock entity a serves");
    let mut bodies = Vec::new();
    for base in [&a.base, &b.base] {
        let (s, _, v) = post(&format!("{base}/v1/entities/stock/{sold_out}/purchase"), r#"{"qty":5}"#, None).await;
        // Never stocked there: `unknown_sku`.
        assert_eq!((s, &v["error"]["code"]), (409, &json!("unknown_sku")), "{v}");
        bodies.push(v);
    }
    assert_eq!(bodies[0], bodies[1], "local and forwarded rejections read the same");
    // The invocation contract holds on the owner and on the node that forwards.
    for case in bad_commands().into_iter().filter(|c| c.what != "a body over the limit") {
        let (on_a, on_b) = (http_bad_command(&a.base, &case).await, http_bad_command(&b.base, &case).await);
        assert_eq!((on_a.1.as_str(), &on_b), (case.kind, &on_a), "{}: owner and forwarder agree", case.what);
    }
    assert!(!bodies[1]["error"]["message"].as_str().unwrap_or_default().contains("unknown_sku: unknown_sku"));
    let targets = Arc::new(std::sync::Mutex::new(vec![a.base.clone(), b.base.clone()]));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(ReadStats::default());
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let mut tasks = Vec::new();
    for w in 0..3usize {
        let (targets, stop, acked) = (targets.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (entity, key) = (format!("r{}", (w + i) % READ_ENTITIES), format!("w{w}-{i}"));
                for attempt in 0.. {
                    let base = pick(&targets, i + attempt);
                    let url = format!("{base}/v1/entities/flaky/{entity}/batch");
                    let r = client()
                        .post(url)
                        .header("content-type", "application/json")
                        .header("idempotency-key", &key)
                        .body(r#"{"n":1}"#)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    let Ok(r) = r else { continue };
                    let status = r.status().as_u16();
                    let seq = r.headers().get("tessera-seq").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if status == 200 {
                        let seq = seq.expect("a seq");
                        assert_eq!(body.as_u64(), Some(seq), "{entity}: the reply (count) is the state at its seq");
                        acked.lock().unwrap_or_else(|p| p.into_inner()).push((entity.clone(), seq));
                        break;
                    }
                    assert!(status == 503 || status == 504, "write {entity}: {status} {body}");
                    assert!(attempt < 400, "write {entity} never succeeded: {status} {body}");
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }));
    }
    for r in 0..5usize {
        let (targets, stop, reads) = (targets.clone(), stop.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let entity = format!("r{}", i % READ_ENTITIES);
                let base = pick(&targets, i / READ_ENTITIES);
                let Ok(resp) = client().get(format!("{base}/v1/entities/flaky/{entity}")).send().await else {
                    continue;
                };
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                reads.record(status, &entity, &v);
            }
        }));
    }
    let until = |n: u64| {
        let reads = reads.clone();
        async move {
            let started = Instant::now();
            while reads.total.load(Ordering::Relaxed) < n {
                assert!(
                    started.elapsed() < Duration::from_secs(240),
                    "only {} reads",
                    reads.total.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until(8_000).await;
    // A third node joins: shards move to it; its entities activate there
    // right after snapshots while writes go on.
    let n = c.start("c", &nats, &snap).await;
    targets.lock().unwrap_or_else(|p| p.into_inner()).push(n.base.clone());
    c.wait_even(&["a", "b", "c"], Duration::from_secs(60)).await;
    until(16_000).await;
    // `a` leaves gracefully: its shards move again.
    *targets.lock().unwrap_or_else(|p| p.into_inner()) = vec![b.base.clone(), n.base.clone()];
    signal(&a, "TERM");
    assert!(a.wait().await.success());
    c.wait_even(&["b", "c"], Duration::from_secs(30)).await;
    until(24_000).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    // The journal holds each acknowledged write once, seqs 1..n.
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for e in 0..READ_ENTITIES {
        let entity = format!("r{e}");
        let events = all_events(&b.base, &entity).await;
        let mut seqs: Vec<u64> = acked.iter().filter(|(x, _)| *x == entity).map(|(_, s)| *s).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "{entity}: one event per acknowledged write");
    }
    let r = &reads;
    let (total, ok) = (r.total.load(Ordering::Relaxed), r.ok.load(Ordering::Relaxed));
    report(
        "reads_while_moving",
        json!({"reads": total, "ok": ok, "retryable_503": r.retryable.load(Ordering::Relaxed),
               "server_errors": r.server_errors.load(Ordering::Relaxed), "writes": acked.len(), "snapshot_every": 3}),
    );
    assert_eq!(r.server_errors.load(Ordering::Relaxed), 0, "no read failed: {:?}", r.first_error());
    assert!(ok >= 20_000, "tens of thousands of reads answered: {ok}");
    b.kill().await;
    n.kill().await;
}

const READ_ENTITIES: usize = 5;

fn pick(targets: &std::sync::Mutex<Vec<String>>, i: usize) -> String {
    let t = targets.lock().unwrap_or_else(|p| p.into_inner());
    t[i % t.len()].clone()
}

/// What the readers saw.
#[derive(Default)]
struct ReadStats {
    total: std::sync::atomic::AtomicU64,
    ok: std::sync::atomic::AtomicU64,
    retryable: std::sync::atomic::AtomicU64,
    server_errors: std::sync::atomic::AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl ReadStats {
    fn record(&self, status: u16, entity: &str, v: &Value) {
        self.total.fetch_add(1, Ordering::Relaxed);
        match status {
            200 => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                // Each event adds one: the state at seq s counts s.
                assert_eq!(v["state"]["count"], v["seq"], "{entity}: the state read is the journal's at its seq: {v}");
            }
            // A read that reached an owner while it handed the shard off.
            503 if v["error"]["kind"] == "shard_moved" => {
                self.retryable.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.server_errors.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| format!("{status} {v}"));
            }
        }
    }
    fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// An owner stalled between its fence check and its journal write (a GC
/// pause, SIGSTOP, a slow network) while a second node takes the shard,
/// loads the entity and serves reads: when the stall ends, the old owner's
/// write is refused by the journal's fence (it used to land, and the new
/// owner served reads that missed it), and no read was stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_owner_cannot_write_after_a_new_owner_loaded_the_entity() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new().await;
    let nats = nats_url();
    let gate = c.dir.path().join("stall-a");
    let gate_env = gate.to_str().unwrap_or_default().to_owned();
    let a = c.start_with_env("a", &nats, &[], &[("TESSERA_TEST_STALL_FILE", &gate_env)]).await;
    let b = c.start("b", &nats, &[]).await;
    c.wait_even(&["a", "b"], Duration::from_secs(30)).await;
    let st = c.status().await;
    let entity = (0..1000)
        .map(|i| format!("s{i}"))
        .find(|id| st.owner("flaky", tessera_journal::shard_of("flaky", id, SHARDS)).is_some_and(|l| l.owner == "a"))
        .expect("an entity a serves");
    let shard = tessera_journal::shard_of("flaky", &entity, SHARDS);
    let (s, _, v) = post(&format!("{}/v1/entities/flaky/{entity}/batch", a.base), r#"{"n":1}"#, Some("first")).await;
    assert_eq!(s, 200, "{v}");

    // `a` decides a command, passes its fence check, and stalls before the write.
    std::fs::write(&gate, b"").expect("gate");
    let late_url = format!("{}/v1/entities/flaky/{entity}/batch", a.base);
    let late = tokio::spawn(async move {
        let r = client()
            .post(late_url)
            .header("content-type", "application/json")
            .header("idempotency-key", "late")
            .body(r#"{"n":1}"#)
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        match r {
            Ok(r) => (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)),
            Err(e) => (0, json!(e.to_string())),
        }
    });
    let stalled = gate.with_file_name("stall-a.stalled");
    let started = Instant::now();
    while !stalled.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "the append never reached the stall");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The whole process pauses past its lease; `b` takes the shard over.
    signal(&a, "STOP");
    wait_owner(&c, "flaky", shard, "b", Duration::from_secs(30)).await;
    let state_url = format!("{}/v1/entities/flaky/{entity}", b.base);
    let (s, seen) = get(&state_url).await;
    assert_eq!((s, seen["seq"].as_u64(), seen["state"]["count"].as_u64()), (200, Some(1), Some(1)), "{seen}");
    let (s, owner_read) = get(&format!("{state_url}?read=owner")).await;
    assert_eq!((s, &owner_read["seq"]), (200, &seen["seq"]), "{owner_read}");

    // The stall ends: the late write reaches the journal under the old epoch.
    std::fs::remove_file(&gate).expect("open the gate");
    signal(&a, "CONT");
    let outcome = gate.with_file_name("stall-a.outcome");
    let started = Instant::now();
    while !outcome.exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "the stalled append never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcome = std::fs::read_to_string(&outcome).unwrap_or_default();
    assert_eq!(outcome, "fenced", "the journal refused the stale owner's write");
    let (late_status, late_body) = late.await.expect("late request");
    // Refused at the journal, nothing written: `a` forwarded the command to
    // the new owner, which ran it on the state it holds (or the caller got
    // an error to retry). Never a success for the stale write itself.
    assert!(matches!(late_status, 200 | 503 | 504), "{late_status} {late_body}");

    // Nothing `b` served was stale: its state is the journal's, and the
    // journal holds the late command at most once, committed by `b`.
    let (s, _, v) = post(&format!("{}/v1/entities/flaky/{entity}/batch", b.base), r#"{"n":1}"#, Some("after")).await;
    assert_eq!(s, 200, "{v}");
    let events = all_events(&b.base, &entity).await;
    let (s, now) = get(&state_url).await;
    assert_eq!(s, 200);
    assert_eq!(now["seq"].as_u64(), Some(events.len() as u64));
    assert_eq!(now["state"]["count"].as_u64(), Some(events.len() as u64));
    let by = |key: &str| events.iter().filter(|e| e["invocation_id"] == json!(key)).collect::<Vec<_>>();
    assert_eq!(by("first").len(), 1);
    assert_eq!(by("after").len(), 1);
    let late_events = by("late");
    assert!(late_events.len() <= 1, "the late command at most once: {late_events:?}");
    assert!(late_events.iter().all(|e| e["node"] == json!("b")), "never committed by the stale owner: {late_events:?}");
    assert_eq!(late_events.len(), usize::from(late_status == 200), "the late command landed only if acknowledged");
    assert!(events.iter().skip(1).all(|e| e["node"] == json!("b")), "after the takeover only b wrote: {events:?}");
    report(
        "stalled_owner",
        json!({"late_status": late_status, "late_outcome_at_journal": outcome, "events": events.len()}),
    );
    a.kill().await;
    b.kill().await;
}

/// Commands forwarded to an owner that dies (kill -9) while they are inside
/// it are sent again to the new owner as soon as it holds the shard: the
/// callers wait for the failover, not for their timeout (10 s here: without
/// the re-send they would get 504), and each command is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_in_flight_when_their_owner_dies_are_sent_again_to_the_new_owner() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new().await;
    let nats = nats_url();
    let gate = c.dir.path().join("stall-a");
    let gate_env = gate.to_str().unwrap_or_default().to_owned();
    let timeout = ["--invocation-timeout-ms", "10000"];
    let a = c.start_with_env("a", &nats, &timeout, &[("TESSERA_TEST_STALL_FILE", &gate_env)]).await;
    let b = c.start("b", &nats, &timeout).await;
    c.wait_even(&["a", "b"], Duration::from_secs(30)).await;
    let st = c.status().await;
    let entities: Vec<String> = (0..10_000)
        .map(|i| format!("r{i}"))
        .filter(|id| st.owner("flaky", tessera_journal::shard_of("flaky", id, SHARDS)).is_some_and(|l| l.owner == "a"))
        .take(8)
        .collect();

    // `a`'s appends stall: commands sent to `b` without keys are forwarded to `a` and wait inside it.
    std::fs::write(&gate, b"").expect("gate");
    let calls: Vec<_> = entities
        .iter()
        .map(|e| {
            let url = format!("{}/v1/entities/flaky/{e}/batch", b.base);
            tokio::spawn(async move {
                let r = client()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(r#"{"n":1}"#)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await;
                let status = r.as_ref().map_or(0, |r| r.status().as_u16());
                let body = match r {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                (status, body, Instant::now())
            })
        })
        .collect();
    let stalled = gate.with_file_name("stall-a.stalled");
    let started = Instant::now();
    while !stalled.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "no command reached the stall");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill().await;
    let killed = Instant::now();

    let mut latest_ms = 0u128;
    for call in calls {
        let (status, body, done) = call.await.expect("call");
        assert_eq!(status, 200, "{body}");
        latest_ms = latest_ms.max(done.saturating_duration_since(killed).as_millis());
    }
    // Each once, committed by the new owner.
    for e in &entities {
        let events = all_events(&b.base, e).await;
        assert_eq!(events.len(), 1, "{e}: {events:?}");
        assert_eq!(events[0]["node"], json!("b"), "{e}: {events:?}");
    }
    let metrics = client().get(format!("{}/metrics", b.base)).send().await.unwrap().text().await.unwrap();
    let reroutes: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tessera_cluster_reroutes_total ")?.parse().ok())
        .unwrap_or_default();
    assert!(reroutes >= entities.len() as f64, "every command was sent again: {reroutes}");
    report(
        "inflight_reroute",
        json!({"commands": entities.len(), "latest_completion_after_kill_ms": latest_ms as u64,
               "lease_ttl_ms": TTL_MS, "invocation_timeout_ms": 10_000, "reroutes": reroutes}),
    );
    tessera_test_support::report::fault(
        "02b-cluster-kill-inflight",
        "a cluster node killed (SIGKILL) with commands forwarded to it in flight",
        "tests/tests/cluster.rs commands_in_flight_when_their_owner_dies_are_sent_again_to_the_new_owner",
        "8 commands without keys through the other node, each stalled inside the owner's append",
        entities.len() as u64,
        0,
        Some(latest_ms as u64),
        &format!(
            "each sent again to the new owner when its lease changed ({reroutes} re-sends), answered 200 and journaled once, by the new owner; recovery = from the kill to the last caller's answer (TTL {TTL_MS} ms; the callers' timeout 10 s)"
        ),
    );
    b.kill().await;
}

/// Throughput with 1, 2 and 3 nodes against one Cassandra, beside a
/// non-clustered node (same journal, same HTTP path) as the baseline. Not
/// run by default (it measures, asserts nothing): `cargo test -p
/// tessera-tests --test cluster -- --ignored throughput`; writes
/// bench-results/cluster.json.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn throughput_with_1_2_3_nodes() {
    let _serial = SERIAL.lock().await;
    let nats = nats_url();
    let secs = std::env::var("TESSERA_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5u64);
    let mut rows = Vec::new();
    for (label, nodes) in [
        ("baseline: 1 node, no cluster", 0usize),
        ("cluster 1 node", 1),
        ("cluster 2 nodes", 2),
        ("cluster 3 nodes", 3),
    ] {
        let c = Cluster::new().await;
        let mut procs = Vec::new();
        if nodes == 0 {
            procs.push(c.start("solo", &nats, &["--cluster", "off"]).await);
        } else {
            let ids: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
            for id in &ids {
                procs.push(c.start(id, &nats, &[]).await);
            }
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            c.wait_even(&refs, Duration::from_secs(30)).await;
        }
        let bases: Vec<String> = procs.iter().map(|p| p.base.clone()).collect();
        let (hist, ops) = drive(&bases, Duration::from_secs(secs)).await;
        let row = json!({
            "setup": label, "nodes": nodes.max(1), "commands_per_sec": ops as f64 / secs as f64,
            "p50_ms": hist.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        });
        eprintln!("{row}");
        rows.push(row);
        for p in procs {
            p.kill().await;
        }
    }
    let base = rows[0]["commands_per_sec"].as_f64().unwrap_or(1.0);
    for r in &mut rows {
        r["vs_baseline"] = json!(r["commands_per_sec"].as_f64().unwrap_or(0.0) / base);
    }
    let out = json!({"bench": "cluster throughput", "concurrency": 64, "entities": 1000, "seconds": secs,
                     "machine_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "runs": rows});
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results/cluster.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap_or_default()).expect("write results");
    eprintln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

/// 64 concurrent callers, round robin over `bases`, for `dur`.
async fn drive(bases: &[String], dur: Duration) -> (hdrhistogram::Histogram<u64>, u64) {
    let stop = Instant::now() + dur;
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let bases = bases.to_vec();
            tokio::spawn(async move {
                let client = client();
                let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                let mut n = 0u64;
                let mut i = w;
                while Instant::now() < stop {
                    i += 64;
                    let base = &bases[i % bases.len()];
                    let t = Instant::now();
                    let r = client
                        .post(format!("{base}/v1/entities/flaky/b{}/batch", (i * 7919) % 1000))
                        .header("content-type", "application/json")
                        .body(r#"{"n":1}"#)
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        n += 1;
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    }
                }
                (h, n)
            })
        })
        .collect();
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let mut ops = 0;
    for t in tasks {
        let (h, n) = t.await.expect("driver");
        let _ = hist.add(h);
        ops += n;
    }
    (hist, ops)
}

/// Posts until the node answers 200 (retrying errors with the same key, as
/// a careful client does); the reply body.
async fn post_until_ok(bases: &[String], path: &str, body: &Value, key: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    for attempt in 0usize.. {
        let base = &bases[attempt % bases.len()];
        let (s, _, b) = post(&format!("{base}{path}"), &body.to_string(), Some(key)).await;
        if s == 200 {
            return b;
        }
        assert!(Instant::now() < deadline, "{path} ({key}) not accepted: {s} {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_between_accounts_end_and_keep_the_sum_while_nodes_crash_mid_delivery() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new().await;
    c.entity_types = 3;
    let nats = nats_url();
    let bank = ("TESSERA_TEST_BANK", "1");
    // Each armed node aborts (as kill -9 would) at its fault point: n2 with
    // committed messages it has not delivered yet; n3 right after
    // delivering a batch, before the dispatcher's checkpoint (the next owner
    // delivers it again); n4 mid-apply, after an append committed and before
    // it was acknowledged (a target's apply, or a sender's commit).
    let n1 = c.start_with_env("n1", &nats, &[], &[bank]).await;
    let n2 = c
        .start_with_env(
            "n2",
            &nats,
            &[],
            &[bank, ("TESSERA_FAULT_POINT", "flow.before_delivery"), ("TESSERA_FAULT_AFTER", "25")],
        )
        .await;
    let n3 = c
        .start_with_env(
            "n3",
            &nats,
            &[],
            &[bank, ("TESSERA_FAULT_POINT", "flow.after_delivery"), ("TESSERA_FAULT_AFTER", "15")],
        )
        .await;
    let n4 = c
        .start_with_env(
            "n4",
            &nats,
            &[],
            &[bank, ("TESSERA_FAULT_POINT", "scylla.after_append"), ("TESSERA_FAULT_AFTER", "100")],
        )
        .await;
    c.wait_even(&["n1", "n2", "n3", "n4"], Duration::from_secs(30)).await;
    const ACCOUNTS: usize = 12;
    const TRANSFERS: usize = 160;
    let bases = vec![n1.base.clone()];
    for a in 0..ACCOUNTS {
        post_until_ok(
            &bases,
            &format!("/v1/entities/account/acc-{a}/deposit"),
            &json!({"amount": 100}),
            &format!("dep-{a}"),
        )
        .await;
    }
    post_until_ok(&bases, "/v1/entities/account/acc-11/freeze", &json!(null), "freeze-11").await;
    // Transfers started through n1 (the others are about to crash), a few at a time.
    let starts = (0..TRANSFERS).map(|i| {
        let bases = bases.clone();
        async move {
            let body = json!({
                "from": format!("acc-{}", i % ACCOUNTS),
                "to": format!("acc-{}", (i * 5 + 1) % ACCOUNTS),
                "amount": 1 + (i % 30) as i64,
                "timeout_ms": 120_000,
            });
            post_until_ok(&bases, &format!("/v1/entities/transfer/tr-{i}/start"), &body, &format!("start-{i}")).await;
        }
    });
    use futures::StreamExt;
    futures::stream::iter(starts).buffer_unordered(8).collect::<Vec<_>>().await;

    // Both armed nodes die of their fault points; n1 takes everything, then
    // they come back (unarmed) and shards move to them again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while members(&c).await.len() > 1 {
        assert!(Instant::now() < deadline, "the armed nodes did not reach their fault points: {:?}", members(&c).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop((n2, n3, n4));
    c.wait_even(&["n1"], Duration::from_secs(30)).await;
    let n2 = c.start_with_env("n2", &nats, &[], &[bank]).await;
    let n3 = c.start_with_env("n3", &nats, &[], &[bank]).await;
    c.wait_even(&["n1", "n2", "n3"], Duration::from_secs(60)).await;

    // Every transfer ends; the money adds up; nothing was applied twice.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut ended: std::collections::HashMap<usize, String> = std::collections::HashMap::new();
    while ended.len() < TRANSFERS {
        for i in 0..TRANSFERS {
            if ended.contains_key(&i) {
                continue;
            }
            let (_, b) = get(&format!("{}/v1/entities/transfer/tr-{i}", n1.base)).await;
            let s = b["state"]["status"].as_str().unwrap_or_default().to_owned();
            if ["completed", "failed", "compensated"].contains(&s.as_str()) {
                ended.insert(i, s);
            }
        }
        assert!(Instant::now() < deadline, "{} of {TRANSFERS} transfers ended", ended.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut sum = 0;
    let mut applied: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for a in 0..ACCOUNTS {
        let (_, b) = get(&format!("{}/v1/entities/account/acc-{a}", n2.base)).await;
        assert!(b["state"]["balance"].is_i64(), "{b}");
        sum += b["state"]["balance"].as_i64().unwrap_or_default();
        for e in tessera_test_support::http::all_events(&n3.base, "account", &format!("acc-{a}")).await {
            if e.type_name == "Debited" || e.type_name == "Credited" {
                let t = e.event[&e.type_name]["transfer"].as_str().unwrap_or_default().to_owned();
                *applied.entry(format!("{}/{t}", e.type_name)).or_default() += 1;
            }
        }
    }
    let mut by_status: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for s in ended.values() {
        *by_status.entry(s.as_str()).or_default() += 1;
    }
    report("transfers_with_crashes", json!({ "transfers": TRANSFERS, "ended": by_status }));
    assert_eq!(sum, 100 * ACCOUNTS as i64, "no money made or lost");
    let twice: Vec<_> = applied.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "applied twice: {twice:?}");
    for (i, s) in &ended {
        let has = |k: &str| applied.contains_key(&format!("{k}/tr-{i}"));
        let refund = applied.contains_key(&format!("Credited/tr-{i}:refund"));
        let consistent = match s.as_str() {
            "completed" => has("Debited") && has("Credited") && !refund,
            "failed" => !has("Debited") && !has("Credited"),
            "compensated" => has("Debited") && !has("Credited") && refund,
            _ => false,
        };
        assert!(consistent, "tr-{i} {s}: the accounts' journals disagree");
    }
    assert!(by_status.get("compensated").is_some_and(|n| *n > 0), "credits to the frozen account were refunded");
    drop((n1, n2, n3));
}

/// Durable timers in a cluster: 300 timers on 60 entities, due 25–40 s
/// out; a node joins (shards move to it) and another is killed with
/// SIGKILL before most fall due. Each fires exactly once, none early, on
/// whichever node owns its shard by then; lateness reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_fire_once_and_never_early_while_shards_move_and_a_node_dies() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new().await;
    c.entity_types = 3;
    let nats = nats_url();
    let bank = ("TESSERA_TEST_BANK", "1");
    let n1 = c.start_with_env("n1", &nats, &[], &[bank]).await;
    let n2 = c.start_with_env("n2", &nats, &[], &[bank]).await;
    c.wait_even(&["n1", "n2"], Duration::from_secs(30)).await;
    const ENTITIES: usize = 60;
    const EACH: usize = 5;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let bases = vec![n1.base.clone(), n2.base.clone()];
    let sets = (0..ENTITIES * EACH).map(|i| {
        let bases = bases.clone();
        async move {
            let (e, t) = (i % ENTITIES, i / ENTITIES);
            let at_ms = now + 25_000 + (i as i64 * 15_000) / (ENTITIES * EACH) as i64;
            let body = json!({"id": format!("t{t}"), "at_ms": at_ms});
            post_until_ok(&bases, &format!("/v1/entities/alarm/al-{e}/set"), &body, &format!("set-{e}-{t}")).await;
        }
    });
    use futures::StreamExt;
    futures::stream::iter(sets).buffer_unordered(16).collect::<Vec<_>>().await;
    // Shards move to n3; then n2 dies with timers of its shards pending.
    let n3 = c.start_with_env("n3", &nats, &[], &[bank]).await;
    c.wait_even(&["n1", "n2", "n3"], Duration::from_secs(60)).await;
    n2.kill().await;
    let killed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    c.wait_even(&["n1", "n3"], Duration::from_secs(60)).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lateness = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let (mut fired, mut pending_at_kill) = (0, 0);
    for e in 0..ENTITIES {
        let id = format!("al-{e}");
        let rings = loop {
            let (_, b) = get(&format!("{}/v1/entities/alarm/{id}", n1.base)).await;
            let rings = b["state"]["rings"].as_u64().unwrap_or_default();
            if rings >= EACH as u64 {
                break rings;
            }
            assert!(Instant::now() < deadline, "{id}: {rings} of {EACH} rang: {b}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(rings, EACH as u64, "{id}: each timer once");
        let mut seen = std::collections::HashSet::new();
        for ev in tessera_test_support::http::all_events(&n3.base, "alarm", &id).await {
            if ev.type_name != "Rang" {
                continue;
            }
            let r = &ev.event["Rang"];
            assert!(seen.insert(r["id"].as_str().unwrap_or_default().to_owned()), "{id}: {r} rang twice");
            let (due, at) = (r["due_ms"].as_i64().unwrap(), r["at_ms"].as_i64().unwrap());
            assert!(at >= due, "{id}: {r} rang early");
            lateness.record((at - due) as u64).unwrap();
            fired += 1;
            pending_at_kill += usize::from(due > killed);
        }
    }
    assert_eq!(fired, ENTITIES * EACH);
    assert!(pending_at_kill > 0, "some timers were pending when the node died");
    report(
        "timers_across_moves_and_a_kill",
        json!({
            "timers": fired,
            "pending_when_the_node_died": pending_at_kill,
            "lateness_ms": {"p50": lateness.value_at_quantile(0.5), "p99": lateness.value_at_quantile(0.99), "max": lateness.max()},
        }),
    );
    drop((n1, n3));
}

/// The NATS server restarted under load (killed, down 4 s, started again on
/// the same JetStream store): nodes reconnect by themselves, HTTP keeps
/// answering (health and state reads from the journal; commands 503 with
/// Retry-After while a node cannot prove it holds its shard's lease), the
/// cluster takes every lease again, no command is committed while its
/// node could not have renewed its lease, and every acknowledged command is
/// in the journal exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_restart_under_load_loses_nothing_and_the_cluster_takes_its_leases_again() {
    let _serial = SERIAL.lock().await;
    let nats_dir = tempfile::tempdir().unwrap();
    let port = tessera_test_support::servers::free_port();
    let config =
        format!("listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n", nats_dir.path().join("js").display());
    let mut server = tessera_test_support::servers::NatsServer::start(nats_dir.path(), port, &config);
    let nats = format!("nats://127.0.0.1:{port}");
    let c = Cluster::on_nats(&nats).await;
    let n1 = c.start("n1", &nats, &[]).await;
    let n2 = c.start("n2", &nats, &[]).await;
    c.wait_even(&["n1", "n2"], Duration::from_secs(30)).await;

    let targets = Arc::new(std::sync::Mutex::new(vec![n1.base.clone(), n2.base.clone()]));
    let (load, stop) = (Arc::new(Load::default()), Arc::new(AtomicBool::new(false)));
    let workers: Vec<_> = (0..4).map(|w| spawn_load(targets.clone(), load.clone(), stop.clone(), w)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = load.acked.lock().unwrap().len();

    // NATS goes away for 4 s (more than a lease TTL).
    let down_at_ms = now_ms();
    server.stop();
    let down = Instant::now();
    let (mut served_reads, mut healthy, mut refused) = (0, 0, Vec::new());
    while down.elapsed() < Duration::from_secs(4) {
        for base in [&n1.base, &n2.base] {
            if client().get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().as_u16() == 200) {
                healthy += 1;
            }
            let (s, _) = get(&format!("{base}/v1/entities/flaky/e1")).await;
            served_reads += usize::from(s == 200);
            let r = client()
                .post(format!("{base}/v1/entities/flaky/probe-{}/batch", refused.len()))
                .header("content-type", "application/json")
                .body(r#"{"n":1}"#)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(r) = r
                && down.elapsed() > Duration::from_millis(TTL_MS)
            {
                let retry_after = r.headers().contains_key("retry-after");
                refused.push((r.status().as_u16(), retry_after));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.restart();
    let up_at_ms = now_ms();
    let up = Instant::now();
    let recovered = c.wait_even(&["n1", "n2"], Duration::from_secs(60)).await;
    // Commands flow again through both nodes.
    let resumed = loop {
        let acked = load.acked.lock().unwrap().len();
        if acked > before + 50 && up.elapsed() > recovered {
            break up.elapsed();
        }
        assert!(up.elapsed() < Duration::from_secs(60), "the load did not resume: {acked} acknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(load.failed.load(Ordering::Relaxed), 0, "every command was acknowledged within its retries");
    assert!(healthy > 0 && served_reads > 0, "HTTP answered during the outage");
    assert!(!refused.is_empty(), "commands were tried while NATS was down past the lease TTL");
    for (s, retry_after) in &refused {
        assert!(
            (*s == 503 && *retry_after) || *s == 504,
            "a command after the lease could last have been renewed is refused (503 with Retry-After): {s} (Retry-After {retry_after})"
        );
    }
    let checked = verify_journal(&n1.base, &load).await;
    // Nothing was committed after a node could last have renewed its lease
    // (the fence: ¾ TTL after the last renewal) until NATS was back.
    let mut late = Vec::new();
    for e in 0..ENTITIES {
        for ev in all_events(&n1.base, &format!("e{e}")).await {
            let t = ev["timestamp_ms"].as_i64().unwrap_or_default();
            if t > down_at_ms + TTL_MS as i64 && t < up_at_ms {
                late.push(format!("e{e} seq {} at {t} by {}", ev["seq"], ev["node"]));
            }
        }
    }
    assert!(late.is_empty(), "committed while no lease could be proven: {late:?}");
    tessera_test_support::report::fault(
        "03-nats-restart",
        "NATS server restarted under load (down 4 s)",
        "tests/tests/cluster.rs a_nats_restart_under_load_loses_nothing_and_the_cluster_takes_its_leases_again",
        "4 clients through 2 nodes, Cassandra journal",
        checked as u64,
        0,
        Some(recovered.as_millis() as u64),
        &format!(
            "{} commands refused while no lease could be proven (503 + Retry-After or 504), none committed in that window; {served_reads} reads served while down; every lease taken again; recovery = from the restart to leases balanced",
            refused.len()
        ),
    );
    report(
        "nats_restart",
        json!({"down_ms": 4000, "recovered_after_restart_ms": recovered.as_millis() as u64,
               "load_resumed_after_restart_ms": resumed.as_millis() as u64,
               "acknowledged": load.acked.lock().unwrap().len(), "audited": checked,
               "retried_attempts": load.retried.load(Ordering::Relaxed),
               "refused_while_down": refused.len(),
               "reads_served_while_down": served_reads}),
    );
    n1.kill().await;
    n2.kill().await;
}

/// `GET /readyz`'s status (0: no answer).
async fn readyz(base: &str) -> u16 {
    client().get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_command_forwarded_between_two_nodes_is_one_trace() {
    let _serial = SERIAL.lock().await;
    let jaeger = jaeger::Jaeger::connect().await;
    let c = Cluster::new().await;
    let nats = nats_url();
    let extra = ["--otlp-endpoint", jaeger.endpoint.as_str()];
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "200")];
    let a = c.start_with_env("a", &nats, &extra, &env).await;
    let b = c.start_with_env("b", &nats, &extra, &env).await;
    c.wait_even(&["a", "b"], Duration::from_secs(30)).await;
    let st = c.status().await;
    let entity = (0..1000)
        .map(|i| format!("s{i}"))
        .find(|id| st.owner("flaky", tessera_journal::shard_of("flaky", id, SHARDS)).is_some_and(|l| l.owner == "b"))
        .expect("an entity b serves");

    // The caller's trace context, as a W3C header; the command goes to `a`, which forwards it to `b`.
    let (trace_id, caller_span) = (jaeger::Jaeger::new_trace_id(), "00f067aa0ba902b7");
    let r = client()
        .post(format!("{}/v1/entities/flaky/{entity}/batch", a.base))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body(r#"{"n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let invocation_id = r.headers()["tessera-invocation-id"].to_str().unwrap().to_owned();

    let started = Instant::now();
    let spans = loop {
        let spans = jaeger.trace(&trace_id).await;
        let on = |node: &str, name: &str| spans.iter().any(|s| s.instance == node && s.name == name);
        if on("a", "invoke") && on("b", "invoke") && on("b", "nats") {
            break spans;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "spans of trace {trace_id} in Jaeger so far: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // One trace: every span's parent is in it, or is the caller's span.
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for s in &spans {
        assert!(
            ids.contains(s.parent_span_id.as_str()) || s.parent_span_id == caller_span,
            "{} on {} has a parent outside the trace: {spans:#?}",
            s.name,
            s.instance
        );
    }
    let root = spans.iter().find(|s| s.parent_span_id == caller_span).expect("a span under the caller's");
    assert_eq!((root.instance.as_str(), root.name.as_str()), ("a", "http.request"));
    // The owner's span of the command names the entity and the invocation.
    let owner = spans.iter().find(|s| s.instance == "b" && s.name == "invoke").unwrap();
    assert_eq!(owner.attributes.get("entity_id"), Some(&entity));
    assert_eq!(owner.attributes.get("entity_type").map(String::as_str), Some("flaky"));
    assert_eq!(owner.attributes.get("invocation_id"), Some(&invocation_id), "{owner:?}");
    // b's NATS span hangs under a's forwarding invoke.
    let nats_span = spans.iter().find(|s| s.instance == "b" && s.name == "nats").unwrap();
    let parent = spans.iter().find(|s| s.span_id == nats_span.parent_span_id).expect("its parent was exported");
    assert_eq!(parent.instance, "a");
    // A delete sent to `a` is forwarded to the owner like a command.
    let (s, d) = delete(&format!("{}/v1/entities/flaky/{entity}", a.base)).await;
    assert_eq!((s, d["deleted_at_seq"].as_u64()), (200, Some(2)), "{d}");
    let (s, e) = get(&format!("{}/v1/entities/flaky/{entity}?read=owner", b.base)).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("entity_deleted")), "{e}");

    // The console of either node shows both members and the whole shard map.
    let url = format!("{}/ui/#/", a.base);
    let dom = console_page(&url, "cluster-map").await;
    assert!(dom.contains("Members (2)") && dom.contains("(leader)"), "{dom}");
    assert_eq!(dom.matches(r#"class="cell""#).count(), SHARDS as usize * c.entity_types, "{dom}");
    report(
        "traces",
        json!({"backend": "jaeger 1.75.0", "spans": spans.len(), "nodes": 2, "names": spans.iter().map(|s| format!("{}:{}", s.instance, s.name)).collect::<Vec<_>>()}),
    );
    drop((a, b));
}

//! The autoscaler with real processes: the leader's autoscaler grows a
//! one-node cluster under a load ramp and shrinks it after (local process
//! scaler), every node publishes its metrics, and the autoscaler moves when
//! its node dies.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::json;

/// Cluster tests start several processes each; one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_autoscaler_adds_nodes_under_load_and_removes_them_after() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new().await;
    let nats = nats_url();
    let policy = [
        "--autoscaler",
        "local",
        "--autoscale-min",
        "1",
        "--autoscale-max",
        "3",
        "--autoscale-target-functions",
        "4",
        "--autoscale-target-requests",
        "1000",
        "--autoscale-window-secs",
        "2",
        "--autoscale-up-stable-secs",
        "5",
        "--autoscale-down-stable-secs",
        "2",
    ];
    let n1 = c.start("n1", &nats, &policy).await;
    c.wait_even(&["n1"], Duration::from_secs(30)).await;

    // Keyed commands all along (forwarded to whichever node holds the shard).
    let targets = Arc::new(std::sync::Mutex::new(vec![n1.base.clone()]));
    let (load, stop) = (Arc::new(Load::default()), Arc::new(AtomicBool::new(false)));
    let workers: Vec<_> = (0..2).map(|w| spawn_load(targets.clone(), load.clone(), stop.clone(), w)).collect();

    // Ramp the function load up: 4, then 8, then 16 concurrent callers.
    let fstop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for n in [4, 4, 8] {
        for _ in 0..n {
            callers.push(spawn_function_load(n1.base.clone(), fstop.clone()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ramp = Instant::now();
    let grown = loop {
        let m = members(&c).await;
        if m.len() == 3 {
            break m;
        }
        assert!(ramp.elapsed() < Duration::from_secs(60), "the cluster did not grow: {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let refs: Vec<&str> = grown.iter().map(String::as_str).collect();
    c.wait_even(&refs, Duration::from_secs(60)).await;
    let scaled_up_ms = ramp.elapsed().as_millis() as u64;

    // The load drops: the nodes the autoscaler started leave gracefully.
    fstop.store(true, Ordering::Relaxed);
    for h in callers {
        let _ = h.await;
    }
    let dropped = Instant::now();
    loop {
        let m = members(&c).await;
        if m == ["n1"] {
            break;
        }
        assert!(dropped.elapsed() < Duration::from_secs(60), "the cluster did not shrink: {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.wait_even(&["n1"], Duration::from_secs(30)).await;
    let scaled_down_ms = dropped.elapsed().as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let (s, v) = get(&format!("{}/v1/autoscaler", n1.base)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["leader"], true, "{v}");
    let decisions = v["decisions"].as_array().cloned().unwrap_or_default();
    assert!(decisions.iter().any(|d| d["to"].as_u64() > d["from"].as_u64()), "a scale-up: {v}");
    assert!(decisions.iter().any(|d| d["to"].as_u64() < d["from"].as_u64()), "a scale-down: {v}");
    report(
        "autoscaler",
        json!({"grew_to_3_after_ms": scaled_up_ms, "shrank_to_1_after_ms": scaled_down_ms,
               "decisions": decisions.len(), "commands": load.acked.lock().map(|a| a.len()).unwrap_or(0)}),
    );
    assert_eq!(load.failed.load(Ordering::Relaxed), 0, "no command failed for good");
    let checked = verify_journal(&n1.base, &load).await;
    assert!(checked > 0);
    n1.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_autoscaler_moves_when_its_node_dies() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new().await;
    let nats = nats_url();
    let a = c.start("a", &nats, &["--autoscaler", "dry-run"]).await;
    let b = c.start("b", &nats, &["--autoscaler", "dry-run"]).await;

    // Every node publishes its load once a second on {prefix}.metrics.{node}.
    let nc = async_nats::connect(&nats).await.expect("nats");
    let mut sub = nc.subscribe(format!("{}.metrics.*", c.prefix)).await.expect("subscribe");
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
            .await
            .expect("metrics arrive every second")
            .expect("subscription open");
        let s: tessera_cluster::autoscaler::NodeMetrics = serde_json::from_slice(&m.payload).expect("NodeMetrics JSON");
        assert_eq!(m.subject.as_str(), format!("{}.metrics.{}", c.prefix, s.node_id));
        assert!(s.request_concurrency >= 0.0 && s.request_rate >= 0.0 && s.at_ms > 0);
        seen.insert(s.node_id);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    let started = Instant::now();
    let leader = loop {
        if let Some(l) = c.status().await.leader {
            break l;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (dead, survivor) = if leader == "a" { (a, b) } else { (b, a) };
    let (_, v) = get(&format!("{}/v1/autoscaler", dead.base)).await;
    assert_eq!(v["leader"], true, "the leader runs the autoscaler: {v}");
    // Two idle nodes: the leader decides to go down to one (dry run: it
    // only logs) and keeps that decision's state in KV.
    let decided = loop {
        let (_, v) = get(&format!("{}/v1/autoscaler", dead.base)).await;
        if !v["state"]["last_change"].is_null() {
            break v["state"].clone();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no decision: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, v) = get(&format!("{}/v1/autoscaler", survivor.base)).await;
    assert_eq!(v["leader"], false, "only the leader does: {v}");
    dead.kill().await;
    let killed = Instant::now();
    loop {
        let (_, v) = get(&format!("{}/v1/autoscaler", survivor.base)).await;
        if v["leader"] == true && c.status().await.leader.is_some_and(|l| l != leader) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "the autoscaler did not move");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report("autoscaler-failover", json!({"moved_after_ms": killed.elapsed().as_millis() as u64}));
    // The new leader continues the stable window of the last decision.
    let (_, v) = get(&format!("{}/v1/autoscaler", survivor.base)).await;
    assert_eq!(v["state"]["last_change"], decided["last_change"], "{v}");
    survivor.kill().await;
}

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
    // The console plots the decisions and lists each one.
    let url = format!("{}/ui/#/autoscaler", n1.base);
    let dom = console_page(&url, "autoscaler-plot").await;
    assert!(dom.contains(r#"id="decisions-plot""#) && dom.contains("runs the autoscaler (leader)"), "{dom}");
    assert!(dom.matches("<tr>").count() > decisions.len(), "a row per decision (more may have come): {dom}");
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

/// Node roles, scaled apart: an entities-only node leads and sizes two
/// groups. The functions group starts at zero; a burst of product uploads
/// (their pictures to process, `product.image` called async) waits in
/// JetStream, and a sync call waits for a functions node, until the
/// autoscaler starts functions-only nodes, which take no shard, process
/// every picture once and are stopped again when the backlog is gone —
/// while the entities group does not move and its keyed commands keep
/// being acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_functions_role_scales_from_zero_and_back_while_the_entities_role_stays() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new().await;
    let nats = nats_url();
    let policy = [
        "--roles",
        "entities",
        "--autoscaler",
        "local",
        "--autoscale-groups",
        "entities,functions",
        "--autoscale-min",
        "1",
        "--autoscale-max",
        "3",
        "--autoscale-functions-min",
        "0",
        "--autoscale-functions-max",
        "2",
        "--autoscale-target-functions",
        "4",
        "--autoscale-target-requests",
        "1000",
        "--autoscale-window-secs",
        "2",
        "--autoscale-up-stable-secs",
        "4",
        "--autoscale-down-stable-secs",
        "3",
    ];
    // Pictures live in a blob store every node reads (the nodes the local
    // scaler starts inherit the environment).
    let blob_dir = c.dir.path().join("blobs");
    let blobs = inventory::Blobs::new(&blob_dir);
    let env = [("INVENTORY_BLOB_DIR", blob_dir.to_str().unwrap_or_default())];
    let n1 = c.start_with_env("n1", &nats, &policy, &env).await;
    c.wait_even(&["n1"], Duration::from_secs(30)).await;
    let targets = Arc::new(std::sync::Mutex::new(vec![n1.base.clone()]));
    let (load, stop) = (Arc::new(Load::default()), Arc::new(AtomicBool::new(false)));
    let workers: Vec<_> = (0..2).map(|w| spawn_load(targets.clone(), load.clone(), stop.clone(), w)).collect();
    // Idle: no functions node is started.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(members(&c).await, ["n1"], "nothing to run, nothing started");

    // The burst: 40 product uploads, each a picture to process, and one sync call.
    let http = client();
    let mut ids = Vec::new();
    for i in 0..40u32 {
        let picture = blobs.put(&inventory::sample_png(40 + i, 30)).expect("stored");
        let r = http
            .post(format!("{}/v1/functions/product.image?mode=async", n1.base))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("upload-{i}"))
            .body(json!({"sku": format!("sku-{i}"), "image": picture}).to_string())
            .send()
            .await
            .expect("queued");
        assert_eq!(r.status(), 202, "accepted while no node runs functions");
        let v: serde_json::Value = r.json().await.expect("json");
        ids.push((i, v["invocation_id"].as_str().expect("id").to_owned()));
    }
    let burst = Instant::now();
    let sync_base = n1.base.clone();
    let sync = tokio::spawn(async move {
        let r = client()
            .post(format!("{sync_base}/v1/functions/test.sleep"))
            .header("content-type", "application/json")
            .body(r#"{"ms":1}"#)
            .send()
            .await
            .expect("answered");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    let functions_nodes = |m: &[tessera_cluster::MemberInfo]| -> Vec<String> {
        m.iter()
            .filter(|m| !m.draining && !tessera_cluster::Roles::from_names(&m.roles).entities())
            .map(|m| m.node_id.clone())
            .collect()
    };
    let up_ms = loop {
        let st = c.status().await;
        if !functions_nodes(&st.members).is_empty() {
            break burst.elapsed().as_millis() as u64;
        }
        assert!(burst.elapsed() < Duration::from_secs(60), "no functions node started: {:?}", st.members);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every queued picture is processed once, on a functions node.
    let mut ran_on = std::collections::BTreeSet::new();
    for (i, id) in &ids {
        let v = loop {
            let (s, v) = get(&format!("{}/v1/invocations/{id}", n1.base)).await;
            if s == 200 {
                break v;
            }
            assert!(burst.elapsed() < Duration::from_secs(90), "{id} still {s}: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(v["status"], "ok", "{v}");
        assert_eq!(v["body"]["width"].as_u64(), Some(u64::from(40 + i)), "the picture's own width: {v}");
        ran_on.insert(v["node_id"].as_str().unwrap_or_default().to_owned());
    }
    let drained_ms = burst.elapsed().as_millis() as u64;
    assert!(!ran_on.contains("n1"), "the entities node runs no functions: {ran_on:?}");
    let (status, body) = sync.await.expect("sync call");
    assert_eq!(status, 200, "the sync call waited for a functions node: {body}");
    // Functions nodes hold no shard: n1 still has every lease.
    let (spread, elsewhere) = c.spread(&["n1"]).await;
    assert_eq!((spread["n1"], elsewhere), (SHARDS as usize * c.entity_types, 0), "{spread:?}");

    // The backlog is gone: the functions group goes back to zero.
    let idle = Instant::now();
    loop {
        let m = c.status().await.members;
        if functions_nodes(&m).is_empty() {
            break;
        }
        assert!(idle.elapsed() < Duration::from_secs(60), "the functions group did not shrink: {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let down_ms = idle.elapsed().as_millis() as u64;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let (_, v) = get(&format!("{}/v1/autoscaler", n1.base)).await;
    let decisions = v["decisions"].as_array().cloned().unwrap_or_default();
    let of = |g: &str| decisions.iter().filter(|d| d["group"] == g).cloned().collect::<Vec<_>>();
    assert!(of("functions").iter().any(|d| d["from"] == 0 && d["to"].as_u64() > Some(0)), "from zero: {v}");
    assert!(of("functions").iter().any(|d| d["to"] == 0), "back to zero: {v}");
    assert!(of("entities").is_empty(), "the entities group never moved: {v}");
    assert_eq!(members(&c).await, ["n1"]);
    report(
        "autoscaler-roles",
        json!({"functions_node_after_ms": up_ms, "pictures_40_done_after_ms": drained_ms,
               "back_to_zero_after_ms": down_ms, "ran_on": ran_on, "decisions": of("functions").len(),
               "commands": load.acked.lock().map(|a| a.len()).unwrap_or(0)}),
    );
    assert_eq!(load.failed.load(Ordering::Relaxed), 0, "no command failed for good");
    assert!(verify_journal(&n1.base, &load).await > 0);
    n1.kill().await;
}

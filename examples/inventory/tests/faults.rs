//! The inventory case on real processes, a real nats-server and a real
//! Cassandra: a region (one node on its embedded journal, or two nodes in
//! a cluster on Cassandra; the JetStream sink of its stock and product
//! events), the central node, and the bridge between them as a process of
//! its own (`inventory bridge`). Shop devices fire purchases with
//! idempotency keys (and duplicates) while a regional node is killed -9
//! (and restarted, when alone) and the bridge is killed -9 and restarted. After
//! catch-up the central view equals the regional stock, store by store,
//! the journal audit shows no oversell and no device event applied twice,
//! every order placed meanwhile (a saga over two stocks) ended confirmed
//! or compensated with no reservation left behind, and malformed device
//! events and an unknown SKU sent on the way were refused clearly, with
//! nothing written.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_test_support::http::{all_events, client, get};
use tessera_test_support::process::NodeProcess;
use tessera_test_support::servers::{nats_url, scylla_server, unique_keyspace, unique_prefix};

const STORES: [&str; 3] = ["s1", "s2", "s3"];
const SKUS: [&str; 4] = ["tee", "cap", "sock", "shoe"];
const STOCKED: u32 = 12;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_inventory")
}

/// A regional node: alone on its embedded journal, or (`journal`) a
/// member of the region's cluster on Cassandra.
async fn region(dir: &std::path::Path, nats: &str, prefix: &str, journal: Option<(&str, &str)>) -> NodeProcess {
    let mut args = vec!["--nats", nats, "--nats-prefix", prefix, "--events-to-jetstream", "stock,product"];
    if let Some((url, id)) = journal {
        args.extend(["--journal", url, "--node-id", id, "--shards", "16", "--lease-ttl-ms", "3000"]);
    }
    NodeProcess::serve(bin(), dir, &args, &[]).await.expect("the regional node starts")
}

fn bridge(nats: &str, prefix: &str, central: &str) -> tokio::process::Child {
    tokio::process::Command::new(bin())
        .args(["bridge", "--region", "r1", "--nats", nats, "--prefix", prefix, "--central", central])
        .args(["--report-every-secs", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the bridge starts")
}

/// One of the region's nodes (any node takes any command: it forwards).
fn pick(bases: &Mutex<Vec<String>>, n: usize) -> String {
    let b = bases.lock().unwrap();
    b[n % b.len()].clone()
}

/// What the devices saw: key → (stock, qty) for every sale acknowledged,
/// and the keys refused for want of stock.
#[derive(Default)]
struct Seen {
    sold: BTreeMap<String, (String, u32)>,
    refused: BTreeSet<String>,
}

/// One device: purchases with fresh keys, one in five sent twice; a
/// failure (the node is down) is retried with the same key until the
/// node answers.
fn device(
    w: usize,
    base: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = client();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let stock = format!("{}:{}", STORES[(w + n) % STORES.len()], SKUS[(n * 7 + w) % SKUS.len()]);
            let (key, qty) = (format!("dev{w}-{n}"), 1 + (n % 3) as u32);
            let sends = if n.is_multiple_of(5) { 2 } else { 1 };
            for _ in 0..sends {
                loop {
                    let url = format!("{}/v1/entities/stock/{stock}/purchase", pick(&base, n));
                    let r = http
                        .post(url)
                        .header("content-type", "application/json")
                        .header("idempotency-key", &key)
                        .timeout(Duration::from_secs(5))
                        .body(json!({"qty": qty}).to_string())
                        .send()
                        .await;
                    match r.map(|r| r.status().as_u16()) {
                        Ok(200) => {
                            seen.lock().unwrap().sold.insert(key.clone(), (stock.clone(), qty));
                            break;
                        }
                        Ok(409) => {
                            seen.lock().unwrap().refused.insert(key.clone());
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// A customer: orders of two lines in two stores, each placed with its
/// id as the key (retried with it while the node is down).
fn customer(
    base: Arc<Mutex<Vec<String>>>,
    placed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = client();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let id = format!("o{n}");
            let lines = json!([
                {"store": STORES[n % 3], "sku": SKUS[n % 4], "qty": 1 + n % 2},
                {"store": STORES[(n + 1) % 3], "sku": SKUS[(n + 2) % 4], "qty": 1},
            ]);
            let body = json!({"customer": format!("c{}", n % 5), "lines": lines, "hold_ms": 3000}).to_string();
            loop {
                let url = format!("{}/v1/entities/order/{id}/place", pick(&base, n));
                let r = http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", &id)
                    .timeout(Duration::from_secs(5))
                    .body(body.clone())
                    .send()
                    .await;
                if matches!(r.map(|r| r.status().as_u16()), Ok(200)) {
                    placed.lock().unwrap().push(id.clone());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// One regional node on its embedded journal, killed -9 and restarted on
/// its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_central_view_survives_a_killed_region_and_a_killed_bridge() {
    run_case(None).await;
}

/// A region of two nodes on Cassandra: one is killed -9, the other takes
/// its shards (and its part of the JetStream sink) and the devices' retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_central_view_survives_a_killed_cluster_node_and_a_killed_bridge() {
    let journal = format!("{}/{}", scylla_server(), unique_keyspace());
    let out = std::process::Command::new(bin()).args(["journal", "migrate", "--scylla", &journal]).output().unwrap();
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    run_case(Some(journal)).await;
}

/// The cases start several processes each: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_case(cluster: Option<String>) {
    let _serial = SERIAL.lock().await;
    tessera_test_support::servers::init_tracing();
    let dirs = tempfile::tempdir().unwrap();
    let (nats, prefix) = (nats_url(), unique_prefix());
    let central = NodeProcess::serve(bin(), &dirs.path().join("central"), &[], &[]).await.expect("central starts");
    let rdir = dirs.path().join("region");
    let (mut node, mut other) = match &cluster {
        None => (region(&rdir, &nats, &prefix, None).await, None),
        Some(url) => {
            let a = region(&dirs.path().join("ra"), &nats, &prefix, Some((url, "ra"))).await;
            let b = region(&dirs.path().join("rb"), &nats, &prefix, Some((url, "rb"))).await;
            (a, Some(b))
        }
    };
    // A cluster serves commands once its shards are leased.
    if cluster.is_some() {
        let t = Instant::now();
        loop {
            let (s, _) = get(&format!("{}/v1/entities/stock/s1:tee", node.base)).await;
            let (s2, _) = get(&format!("{}/v1/entities/stock/s1:tee", other.as_ref().unwrap().base)).await;
            if s == 200 && s2 == 200 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "the region did not come up: {s} {s2}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let http = client();
    for s in STORES {
        for sku in SKUS {
            let url = format!("{}/v1/entities/stock/{s}:{sku}/restock", node.base);
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", format!("restock-{s}-{sku}"))
                .body(json!({"qty": STOCKED}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let mut road = bridge(&nats, &prefix, &central.base);
    let mut bases = vec![node.base.clone()];
    bases.extend(other.as_ref().map(|o| o.base.clone()));
    let base = Arc::new(Mutex::new(bases));
    let (seen, stop) = (Arc::new(Mutex::new(Seen::default())), Arc::new(AtomicBool::new(false)));
    let mut devices: Vec<_> = (0..3).map(|w| device(w, base.clone(), seen.clone(), stop.clone())).collect();
    let placed = Arc::new(Mutex::new(Vec::new()));
    devices.push(customer(base.clone(), placed.clone(), stop.clone()));

    // Bad input from devices while the stream runs: a malformed event and a
    // SKU the store never stocked are refused clearly, nothing is written.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bad = |path: &str, body: &str| {
        http.post(format!("{}/v1/entities/stock/{path}", node.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let r = bad("s1:tee/purchase", r#"{"qty": "one"}"#).await.unwrap();
    assert_eq!(r.status(), 400, "a malformed device event");
    let r = bad("s1:tee/purchase", r#"{"qty": 1"#).await.unwrap();
    assert_eq!(r.status(), 400, "truncated JSON");
    let r = bad("s1:nosuch/purchase", r#"{"qty": 1}"#).await.unwrap();
    assert_eq!(r.status(), 409, "an unknown SKU");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unknown_sku", "{v}");
    let (_, v) = get(&format!("{}/v1/entities/stock/s1:nosuch", node.base)).await;
    assert_eq!(v["seq"], 0, "nothing written for it: {v}");

    // Mid-run: a regional node dies (alone: it comes back on its data; in
    // a cluster: the other takes over); then the bridge.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let down = Instant::now();
    match other.take() {
        None => {
            node.kill().await;
            node = region(&rdir, &nats, &prefix, None).await;
            *base.lock().unwrap() = vec![node.base.clone()];
        }
        Some(b) => {
            *base.lock().unwrap() = vec![node.base.clone()];
            b.kill().await;
        }
    }
    let region_back_ms = down.elapsed().as_millis() as u64;
    tokio::time::sleep(Duration::from_secs(2)).await;
    road.kill().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    road = bridge(&nats, &prefix, &central.base);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Run until some stock ran out (refusals are part of the case).
    let more = Instant::now();
    while seen.lock().unwrap().refused.is_empty() && more.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for d in devices {
        d.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.sold.len() > 10, "the devices sold: {}", seen.sold.len());
    assert!(!seen.refused.is_empty(), "some stock ran out (refusals are part of the test)");

    // Every order ends confirmed or compensated (its deadline is 3 s);
    // the confirmed ones' units are sold too.
    let placed = placed.lock().unwrap().clone();
    assert!(!placed.is_empty());
    let mut ordered: BTreeMap<String, u64> = BTreeMap::new();
    let (mut confirmed, started) = (0, Instant::now());
    for id in &placed {
        let v = loop {
            let (_, v) = get(&format!("{}/v1/entities/order/{id}", node.base)).await;
            if matches!(v["state"]["status"].as_str(), Some("confirmed" | "compensated")) {
                break v;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "order {id} never ended: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if v["state"]["status"] == "confirmed" {
            confirmed += 1;
            for (stock, line) in v["state"]["lines"].as_object().unwrap() {
                *ordered.entry(stock.clone()).or_default() += line["qty"].as_u64().unwrap();
            }
        }
    }

    // The journal audit: every acknowledged sale applied once, no other, no
    // oversell, and no reservation left behind.
    for s in STORES {
        for sku in SKUS {
            let id = format!("{s}:{sku}");
            let events = all_events(&node.base, "stock", &id).await;
            let sales: Vec<_> = events.iter().filter(|e| e.type_name == "Purchased").collect();
            let keys: BTreeSet<_> = sales.iter().map(|e| e.invocation_id.clone()).collect();
            assert_eq!(keys.len(), sales.len(), "{id}: a device event applied twice");
            let acked: BTreeSet<_> =
                seen.sold.iter().filter(|(_, (st, _))| *st == id).map(|(k, _)| k.clone()).collect();
            assert_eq!(keys, acked, "{id}: the journal holds exactly the acknowledged sales");
            let units: u64 = seen.sold.values().filter(|(st, _)| *st == id).map(|(_, q)| u64::from(*q)).sum();
            let units = units + ordered.get(&id).copied().unwrap_or(0);
            let v = loop {
                let (_, v) = get(&format!("{}/v1/entities/stock/{id}", node.base)).await;
                if v["state"]["reservations"].as_object().is_none_or(|r| r.is_empty()) {
                    break v;
                }
                assert!(started.elapsed() < Duration::from_secs(60), "{id}: a reservation outlived its order: {v}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(v["state"]["sold"].as_u64(), Some(units), "{id}: devices and confirmed orders: {v}");
            let on_hand = v["state"]["on_hand"].as_i64().unwrap();
            assert!(on_hand >= 0 && on_hand == i64::from(STOCKED) - units as i64, "{id}: {v}");
        }
    }

    // After catch-up the central view is the regional stock, store by store.
    // The regional side is read again on every pass: a message delayed by
    // the kill (an order's reservation arriving after its order ended, and
    // its release) may still add events after the audit above.
    let started = Instant::now();
    let lag_ms = loop {
        let mut differ = Vec::new();
        for sku in SKUS {
            let (_, v) = get(&format!("{}/v1/entities/availability/{sku}", central.base)).await;
            for s in STORES {
                let (seq, on_hand) = regional_view(&node.base, &format!("{s}:{sku}")).await;
                let view = &v["state"]["regions"]["r1"][s];
                if view["seq"].as_u64() != Some(seq) || view["on_hand"].as_i64() != Some(on_hand) {
                    differ.push(format!("{s}:{sku} regional (last counted seq {seq}, {on_hand}) central {view}"));
                }
            }
        }
        if differ.is_empty() {
            break started.elapsed().as_millis() as u64;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the central view did not catch up: {differ:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "{}",
        json!({"sold": seen.sold.len(), "refused": seen.refused.len(), "orders": placed.len(), "confirmed": confirmed,
               "region_back_after_ms": region_back_ms,
               "central_caught_up_after_ms": lag_ms})
    );
    road.kill().await.unwrap();
    node.kill().await;
    central.kill().await;
}

/// The regional stock as the central view should hold it: the seq of the
/// last event the view counts (runtime records and events that change no
/// count do not cross) and the units on hand.
async fn regional_view(base: &str, id: &str) -> (u64, i64) {
    let events = all_events(base, "stock", id).await;
    let observed = events
        .iter()
        .filter(|e| {
            serde_json::from_value::<inventory::StockEvent>(e.event.clone())
                .ok()
                .and_then(|ev| inventory::observation(&ev))
                .is_some()
        })
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    let (_, v) = get(&format!("{base}/v1/entities/stock/{id}")).await;
    (observed, v["state"]["on_hand"].as_i64().unwrap_or(0))
}

//! The inventory case on real processes and a real nats-server: a regional
//! node (embedded journal, the JetStream sink of its stock and product
//! events), the central node, and the bridge between them as a process of
//! its own (`inventory bridge`). Shop devices fire purchases with
//! idempotency keys (and duplicates) while the regional node is killed -9
//! and restarted and the bridge is killed -9 and restarted. After
//! catch-up the central view equals the regional stock, store by store,
//! the journal audit shows no oversell and no device event applied twice,
//! and every order placed meanwhile (a saga over two stocks) ended
//! confirmed or compensated with no reservation left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_test_support::http::{all_events, client, get};
use tessera_test_support::process::NodeProcess;
use tessera_test_support::servers::{nats_url, unique_prefix};

const STORES: [&str; 3] = ["s1", "s2", "s3"];
const SKUS: [&str; 4] = ["tee", "cap", "sock", "shoe"];
const STOCKED: u32 = 16;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_inventory")
}

async fn region(dir: &std::path::Path, nats: &str, prefix: &str) -> NodeProcess {
    let args = ["--nats", nats, "--nats-prefix", prefix, "--events-to-jetstream", "stock,product"];
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
    base: Arc<Mutex<String>>,
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
                    let url = format!("{}/v1/entities/stock/{stock}/purchase", base.lock().unwrap().clone());
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
    base: Arc<Mutex<String>>,
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
                let url = format!("{}/v1/entities/order/{id}/place", base.lock().unwrap().clone());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_central_view_survives_a_killed_region_and_a_killed_bridge() {
    tessera_test_support::servers::init_tracing();
    let dirs = tempfile::tempdir().unwrap();
    let (nats, prefix) = (nats_url(), unique_prefix());
    let central = NodeProcess::serve(bin(), &dirs.path().join("central"), &[], &[]).await.expect("central starts");
    let rdir = dirs.path().join("region");
    let mut node = region(&rdir, &nats, &prefix).await;
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
    let base = Arc::new(Mutex::new(node.base.clone()));
    let (seen, stop) = (Arc::new(Mutex::new(Seen::default())), Arc::new(AtomicBool::new(false)));
    let mut devices: Vec<_> = (0..3).map(|w| device(w, base.clone(), seen.clone(), stop.clone())).collect();
    let placed = Arc::new(Mutex::new(Vec::new()));
    devices.push(customer(base.clone(), placed.clone(), stop.clone()));

    // Mid-run: the regional node dies and comes back on its data; then the bridge.
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.kill().await;
    let down = Instant::now();
    node = region(&rdir, &nats, &prefix).await;
    *base.lock().unwrap() = node.base.clone();
    let region_back_ms = down.elapsed().as_millis() as u64;
    tokio::time::sleep(Duration::from_secs(2)).await;
    road.kill().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    road = bridge(&nats, &prefix, &central.base);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for d in devices {
        d.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.sold.len() > 30, "the devices sold: {}", seen.sold.len());
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
    let mut regional = BTreeMap::new();
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
            // The last event the central view counts (runtime records and
            // events that change no count do not cross).
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
            regional.insert(id, (observed, on_hand));
        }
    }

    // After catch-up the central view is the regional stock, store by store.
    let started = Instant::now();
    let lag_ms = loop {
        let mut differ = Vec::new();
        for sku in SKUS {
            let (_, v) = get(&format!("{}/v1/entities/availability/{sku}", central.base)).await;
            for s in STORES {
                let (seq, on_hand) = regional[&format!("{s}:{sku}")];
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

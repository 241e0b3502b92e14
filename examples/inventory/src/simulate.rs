//! `inventory simulate`: a load generator for the whole case — shop devices
//! firing purchases (bursts, duplicate deliveries, retries with the same
//! key, malformed events, unknown SKUs), warehouses adding products (with
//! pictures) and restocking, customers placing orders across stores — over
//! HTTP against regional clusters, then a report: commands/s, p50/p99 by
//! kind, rejections by reason, bytes streamed to the central region, the
//! central view's lag, and the invariant checks. Written as JSON with SVG
//! plots beside it.
//!
//! With `--region NAME=URL` (repeated) and `--central URL` it drives
//! running clusters; with `--regions N` alone it starts N regions and the
//! central region in this process (embedded journals; regional events reach
//! the central view through NATS when `--nats` is given, else through a
//! feed projection over HTTP).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tessera_cluster::Roles;
use tessera_runtime::{ClusterMode, NodeBuilder, NodeConfig, Server};

use crate::central::{BridgeConfig, BridgeStats, CentralFeed, run_bridge};

/// Flags of `simulate` (and of `demo --regions`).
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Regions to start in this process (ignored with `--region`).
    #[arg(long, default_value_t = 2)]
    pub regions: u32,
    /// A running region, `NAME=URL` (its HTTP base); repeat for each.
    #[arg(long = "region")]
    pub region: Vec<String>,
    /// The running central region's HTTP base (with `--region`).
    #[arg(long)]
    pub central: Option<String>,
    /// NATS for the in-process regions (each its own subject prefix); unset: the feed goes over HTTP.
    #[arg(long)]
    pub nats: Option<String>,
    /// Shops (stores) per region.
    #[arg(long, default_value_t = 4)]
    pub shops: u32,
    /// SKUs per region.
    #[arg(long, default_value_t = 8)]
    pub skus: u32,
    /// Commands per second per region.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long to run, e.g. `20s`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where the report (`report.json`, `*.svg`) goes (default: the data dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Data directory of the in-process regions (default: a new temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `20s`, `2m`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = n.parse().map_err(|_| format!("not a duration: {s:?} (e.g. 20s, 2m, 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s:?}: ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// A tiny deterministic PRNG (xorshift64*), so the load needs no extra crate.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One region to drive.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// Its HTTP base.
    pub base: String,
}

/// Regions and the central region started in this process.
pub struct Local {
    /// The regional nodes, by region.
    pub regions: Vec<(Target, Server)>,
    /// The central node.
    pub central: Server,
    /// The central node's HTTP base.
    pub central_base: String,
    /// What crossed to the central region, per region.
    pub stats: Vec<(String, Arc<BridgeStats>)>,
    /// How regional events reach the central view.
    pub road: String,
    /// The data directory.
    pub dir: PathBuf,
    /// Where the regions' pictures are.
    pub blobs: crate::Blobs,
    /// Nodes by role, as the report shows them.
    pub nodes: BTreeMap<String, u64>,
    /// With NATS: each region's functions-only node (its entities node is
    /// the region's target).
    functions: Vec<Server>,
    stop: tokio::sync::watch::Sender<bool>,
    bridges: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

fn http_base(s: &Server) -> anyhow::Result<String> {
    Ok(format!("http://{}", s.http_addr().context("the node has no HTTP address")?))
}

impl Local {
    /// Starts `n` regions and the central region under `dir`.
    pub async fn start(n: u32, nats: Option<String>, dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let blobs = crate::Blobs::new(dir.join("blobs"));
        let node = |sub: &str, tweak: &dyn Fn(&mut NodeConfig)| {
            let data = dir.join(sub);
            let mut config = NodeConfig::default().with(|c| {
                c.journal.data_dir = data;
                c.http.listen = Some("127.0.0.1:0".into());
                c.projections.checkpoint_every_ms = 100;
                // A few SKUs and shops: 64 shards are plenty, and each unit
                // of each entity type costs its projections a worker.
                c.journal.shards = 64;
            });
            tweak(&mut config);
            config
        };
        let central = NodeBuilder::new(crate::registry_with(blobs.clone())?)
            .config(node("central", &|_| {}))
            .build()
            .await
            .context("starting the central region")?;
        let central_base = http_base(&central)?;
        // Streams and consumers are named per run: a NATS server that saw
        // an earlier run keeps its streams, which a fresh central view must not read.
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() % 100_000_000);
        let prefix = |r: u32| format!("inv{run}r{r}");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (mut regions, mut stats, mut bridges, mut functions) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..n {
            let name = format!("region{r}");
            let s = Arc::new(BridgeStats::default());
            let mut builder = NodeBuilder::new(crate::registry_with(blobs.clone())?);
            // With NATS a region runs its stateful and stateless work on
            // separate nodes (roles), as a deployment would: an entities
            // node (the target) and a functions node (`product.image`).
            let roles = |c: &mut NodeConfig, roles: Roles, id: String, url: &str| {
                c.nats.url = Some(url.to_owned());
                c.nats.prefix = prefix(r);
                c.cluster.mode = ClusterMode::On;
                c.cluster.roles = roles;
                c.cluster.node_id = Some(id);
            };
            let config = match &nats {
                Some(url) => {
                    let f = node(&format!("{name}-functions"), &|c| {
                        roles(c, Roles::FUNCTIONS, format!("{name}-functions"), url);
                    });
                    let f = NodeBuilder::new(crate::registry_with(blobs.clone())?)
                        .config(f)
                        .build()
                        .await
                        .with_context(|| format!("starting {name}'s functions node"))?;
                    functions.push(f);
                    node(&name, &|c| {
                        roles(c, Roles::ENTITIES, format!("{name}-entities"), url);
                        c.projections.jetstream_types = "stock,product".into();
                    })
                }
                None => {
                    builder = builder.projection(CentralFeed::new(&name, &central_base, s.clone()));
                    node(&name, &|_| {})
                }
            };
            let server = builder.config(config).build().await.with_context(|| format!("starting {name}"))?;
            if let Some(url) = &nats {
                let config = BridgeConfig {
                    region: name.clone(),
                    nats_url: url.clone(),
                    prefix: prefix(r),
                    central: central_base.clone(),
                };
                bridges.push(tokio::spawn(run_bridge(config, s.clone(), stop_rx.clone())));
            }
            let base = http_base(&server)?;
            regions.push((Target { name: name.clone(), base }, server));
            stats.push((name, s));
        }
        let road = match &nats {
            Some(url) => format!(
                "each region's JetStream sink (stream {}_EVENTS … on {url}) read by a bridge",
                prefix(0).to_uppercase()
            ),
            None => "a feed projection on each regional node, over HTTP (no NATS given)".to_owned(),
        };
        let nodes = if nats.is_some() {
            BTreeMap::from([
                ("regional entities".to_owned(), u64::from(n)),
                ("regional functions".to_owned(), u64::from(n)),
                ("central".to_owned(), 1),
            ])
        } else {
            BTreeMap::from([("regional (entities+functions)".to_owned(), u64::from(n)), ("central".to_owned(), 1)])
        };
        Ok(Self { regions, central, central_base, stats, road, dir, blobs, nodes, functions, stop, bridges })
    }

    /// Stops the bridges and the nodes.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for b in self.bridges {
            let _ = b.await;
        }
        for (_, s) in self.regions {
            s.shutdown().await;
        }
        for f in self.functions {
            f.shutdown().await;
        }
        self.central.shutdown().await;
    }
}

/// An order placed: (region, order id, lines as (stock id, units)).
type PlacedOrder = (String, String, Vec<(String, u32)>);

/// What the load generator saw, per kind of command.
#[derive(Default)]
struct Tally {
    latency: BTreeMap<&'static str, Histogram<u64>>,
    ok: BTreeMap<&'static str, u64>,
    rejections: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    /// Per stock: acknowledged units in (restocks), out (device purchases).
    restocked: HashMap<String, i64>,
    purchased: HashMap<String, i64>,
    /// Orders placed (id → lines).
    orders: Vec<PlacedOrder>,
    done: u64,
}

impl Tally {
    fn record(&mut self, kind: &'static str, took: Duration, status: u16, body: &Value) {
        self.done += 1;
        let h =
            self.latency.entry(kind).or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"));
        let _ = h.record(took.as_micros().max(1) as u64);
        match status {
            200 | 202 => *self.ok.entry(kind).or_default() += 1,
            400..=499 => {
                let code = body["error"]["code"].as_str().or(body["error"]["kind"].as_str()).unwrap_or("unknown");
                *self.rejections.entry(format!("{kind}: {code}")).or_default() += 1;
            }
            _ => *self.failures.entry(format!("{kind}: {status}")).or_default() += 1,
        }
    }
}

async fn post(http: &reqwest::Client, url: &str, body: &[u8], key: Option<&str>) -> (u16, Value) {
    let mut req = http.post(url).header("content-type", "application/json").body(body.to_vec());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (599, json!({"error": {"message": e.to_string()}})),
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    match http.get(url).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn stock_id(store: u32, sku: u32) -> String {
    format!("shop{store}:sku{sku}")
}

/// One second of the run.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    t_s: f64,
    commands: u64,
    central_lag_ms: i64,
    nodes: BTreeMap<String, u64>,
}

/// How the regions are deployed, as the report describes them.
#[derive(Debug, Clone, Copy)]
pub struct Deployment<'a> {
    /// How regional events reach the central view.
    pub road: &'a str,
    /// Nodes by role (empty: as deployed, unknown here).
    pub nodes: &'a BTreeMap<String, u64>,
}

/// Drives the regions, waits for everything to settle, checks, reports.
pub async fn simulate(
    args: &SimulateArgs,
    targets: &[Target],
    central: &str,
    stats: &[(String, Arc<BridgeStats>)],
    out: &std::path::Path,
    blobs: &crate::Blobs,
    deployment: Deployment<'_>,
) -> anyhow::Result<Value> {
    let Deployment { road, nodes: layout } = deployment;
    ensure!(!targets.is_empty(), "no regions to drive");
    let http = reqwest::Client::builder().pool_max_idle_per_host(128).timeout(Duration::from_secs(30)).build()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Warehouses: the catalog (a picture each; one undecodable) and the first delivery.
    for t in targets {
        for sku in 0..args.skus {
            let image = if sku == args.skus - 1 {
                blobs.put(b"this is not a picture")?
            } else {
                blobs.put(&crate::sample_png(64 + sku * 8, 48))?
            };
            let doc =
                json!({"name": format!("Item {sku} ({})", t.name), "price": 10.0 + f64::from(sku), "image": image});
            let url = format!("{}/v1/entities/product/sku{sku}/upsert", t.base);
            let started = Instant::now();
            let (s, b) = post(&http, &url, &serde_json::to_vec(&doc)?, None).await;
            tally.lock().unwrap().record("product", started.elapsed(), s, &b);
            for store in 0..args.shops {
                let id = stock_id(store, sku);
                let url = format!("{}/v1/entities/stock/{id}/restock", t.base);
                let started = Instant::now();
                let (s, b) = post(&http, &url, br#"{"qty":20}"#, Some(&format!("init-{}-{id}", t.name))).await;
                let mut tl = tally.lock().unwrap();
                tl.record("restock", started.elapsed(), s, &b);
                if s == 200 {
                    *tl.restocked.entry(format!("{}/{id}", t.name)).or_default() += 20;
                }
            }
        }
    }

    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(args.duration.as_secs().max(1));
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    };
    let started = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (tally, samples, bar, stats) = (tally.clone(), samples.clone(), bar.clone(), stats.to_vec());
        let nodes = if layout.is_empty() {
            BTreeMap::from([("regional (as deployed)".to_owned(), targets.len() as u64)])
        } else {
            layout.clone()
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = 0;
            loop {
                tick.tick().await;
                let done = tally.lock().unwrap().done;
                let lag = stats.iter().map(|(_, s)| s.lag_ms.load(Ordering::Relaxed)).max().unwrap_or(0);
                let nodes = nodes.clone();
                samples.lock().unwrap().push(Sample {
                    t_s: started.elapsed().as_secs_f64(),
                    commands: done.saturating_sub(last),
                    central_lag_ms: lag,
                    nodes,
                });
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(format!("{}/s, central lag {lag} ms", done.saturating_sub(last)));
                last = done;
            }
        })
    };

    // Devices, warehouses and customers of each region, paced at `rate`.
    let mut drivers = Vec::new();
    for (r, t) in targets.iter().enumerate() {
        let (http, tally, t, args) = (http.clone(), tally.clone(), t.clone(), args.clone());
        drivers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (r as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
            let limit = Arc::new(tokio::sync::Semaphore::new(64));
            let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            let mut tasks = tokio::task::JoinSet::new();
            while started.elapsed() < args.duration {
                tick.tick().await;
                n += 1;
                // A burst now and then: a shop's devices all at once.
                let burst = if rng.chance(2) { 20 } else { 1 };
                for _ in 0..burst {
                    let permit = limit.clone().acquire_owned().await.expect("semaphore");
                    let roll = rng.below(100);
                    let (store, sku) =
                        (rng.below(u64::from(args.shops)) as u32, rng.below(u64::from(args.skus)) as u32);
                    let id = stock_id(store, sku);
                    let (http, tally, t) = (http.clone(), tally.clone(), t.clone());
                    let key = format!("{}-{n}-{}", t.name, rng.next() % 1_000_000);
                    let qty = 1 + rng.below(2) as u32;
                    let twice = rng.chance(5);
                    let plan = match roll {
                        0 => (
                            "device",
                            format!("{}/v1/entities/stock/{id}/purchase", t.base),
                            br#"{"qty":"two"}"#.to_vec(),
                            Some(key),
                        ),
                        1 => {
                            let unknown = format!("shop{store}:nosuch{sku}");
                            (
                                "device",
                                format!("{}/v1/entities/stock/{unknown}/purchase", t.base),
                                br#"{"qty":1}"#.to_vec(),
                                Some(key),
                            )
                        }
                        2..=74 => (
                            "device",
                            format!("{}/v1/entities/stock/{id}/purchase", t.base),
                            format!(r#"{{"qty":{qty}}}"#).into_bytes(),
                            Some(key),
                        ),
                        75..=87 => (
                            "restock",
                            format!("{}/v1/entities/stock/{id}/restock", t.base),
                            format!(r#"{{"qty":{}}}"#, 5 * qty).into_bytes(),
                            Some(key),
                        ),
                        _ => {
                            let other =
                                (store + 1 + rng.below(u64::from(args.shops.max(2) - 1)) as u32) % args.shops.max(1);
                            let lines = vec![(stock_id(store, sku), qty), (stock_id(other, (sku + 1) % args.skus), 1)];
                            let body = json!({
                                "customer": format!("cust{}", rng.below(50)),
                                "lines": lines.iter().map(|(s, q)| {
                                    let (st, sk) = s.split_once(':').unwrap_or_default();
                                    json!({"store": st, "sku": sk, "qty": q})
                                }).collect::<Vec<_>>(),
                                "hold_ms": 5000,
                            });
                            let oid = format!("ord-{key}");
                            tally.lock().unwrap().orders.push((t.name.clone(), oid.clone(), lines));
                            (
                                "order",
                                format!("{}/v1/entities/order/{oid}/place", t.base),
                                serde_json::to_vec(&body).unwrap_or_default(),
                                Some(key),
                            )
                        }
                    };
                    tasks.spawn(async move {
                        let _permit = permit;
                        let (kind, url, body, key) = plan;
                        let sends = if twice { 2 } else { 1 };
                        let mut counted = false;
                        for _ in 0..sends {
                            let started = Instant::now();
                            let (s, b) = post(&http, &url, &body, key.as_deref()).await;
                            let mut tl = tally.lock().unwrap();
                            tl.record(kind, started.elapsed(), s, &b);
                            // A duplicate delivery is the same device event: count its units once.
                            if s == 200 && !counted {
                                counted = true;
                                let stock = format!("{}/{}", t.name, url.rsplit('/').nth(1).unwrap_or_default());
                                let qty: i64 = serde_json::from_slice::<Value>(&body)
                                    .ok()
                                    .and_then(|v| v["qty"].as_i64())
                                    .unwrap_or(0);
                                match kind {
                                    "device" => *tl.purchased.entry(stock).or_default() += qty,
                                    "restock" => *tl.restocked.entry(stock).or_default() += qty,
                                    _ => {}
                                }
                            }
                        }
                    });
                }
            }
            while tasks.join_next().await.is_some() {}
        }));
    }
    for d in drivers {
        d.await?;
    }
    let load_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Settle: every order ends, reservations drain, the central view catches up.
    let orders = std::mem::take(&mut tally.lock().unwrap().orders);
    let by_base: HashMap<&str, &str> = targets.iter().map(|t| (t.name.as_str(), t.base.as_str())).collect();
    let mut order_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut confirmed_units: HashMap<String, i64> = HashMap::new();
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    for (region, oid, lines) in &orders {
        let url = format!("{}/v1/entities/order/{oid}", by_base[region.as_str()]);
        let status = loop {
            let s = get(&http, &url).await;
            let st = s["state"]["status"].as_str().unwrap_or("new").to_owned();
            if ["confirmed", "compensated", "new"].contains(&st.as_str()) || Instant::now() > settle_deadline {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if status == "confirmed" {
            for (stock, q) in lines {
                *confirmed_units.entry(format!("{region}/{stock}")).or_default() += i64::from(*q);
            }
        }
        *order_status.entry(status).or_default() += 1;
    }

    let tl = std::mem::take(&mut *tally.lock().unwrap());
    let mut checks: Vec<(String, bool, String)> = Vec::new();
    let mut regional: BTreeMap<(String, String), i64> = BTreeMap::new();
    let (mut negative, mut unbalanced, mut leaked, mut mismatched) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in targets {
        for sku in 0..args.skus {
            for store in 0..args.shops {
                let id = stock_id(store, sku);
                let url = format!("{}/v1/entities/stock/{id}", t.base);
                let key = format!("{}/{id}", t.name);
                let mut s = get(&http, &url).await;
                let deadline = Instant::now() + Duration::from_secs(30);
                while s["state"]["reservations"].as_object().is_some_and(|r| !r.is_empty()) && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    s = get(&http, &url).await;
                }
                let st = &s["state"];
                let (on_hand, sold, received) = (
                    st["on_hand"].as_i64().unwrap_or(-1),
                    st["sold"].as_i64().unwrap_or(0),
                    st["received"].as_i64().unwrap_or(0),
                );
                if on_hand < 0 {
                    negative.push(key.clone());
                }
                if st["reservations"].as_object().is_some_and(|r| !r.is_empty()) {
                    leaked.push(key.clone());
                }
                let restocks = tl.restocked.get(&key).copied().unwrap_or(0);
                let purchases =
                    tl.purchased.get(&key).copied().unwrap_or(0) + confirmed_units.get(&key).copied().unwrap_or(0);
                if received != restocks || sold != purchases || on_hand != restocks - purchases {
                    unbalanced.push(format!("{key}: on hand {on_hand}, received {received} (acked {restocks}), sold {sold} (acked {purchases})"));
                }
            }
        }
    }
    // The central view equals the sum of the regional views (waiting for it to catch up).
    let catch_up = Instant::now();
    let deadline = catch_up + Duration::from_secs(60);
    loop {
        mismatched.clear();
        // Read the regional side each time: a late message (a return) may still move it.
        regional.clear();
        for t in targets {
            for sku in 0..args.skus {
                for store in 0..args.shops {
                    let s = get(&http, &format!("{}/v1/entities/stock/{}", t.base, stock_id(store, sku))).await;
                    let st = &s["state"];
                    let reserved: i64 =
                        st["reservations"].as_object().map_or(0, |r| r.values().filter_map(Value::as_i64).sum());
                    *regional.entry((format!("sku{sku}"), t.name.clone())).or_default() +=
                        st["on_hand"].as_i64().unwrap_or(0) - reserved;
                }
            }
        }
        for sku in 0..args.skus {
            let v = get(&http, &format!("{central}/v1/entities/availability/sku{sku}")).await;
            for t in targets {
                let want = regional.get(&(format!("sku{sku}"), t.name.clone())).copied().unwrap_or(0);
                let stores = &v["state"]["regions"][&t.name];
                let got: i64 = stores.as_object().map_or(0, |m| {
                    m.values().map(|s| s["on_hand"].as_i64().unwrap_or(0) - s["reserved"].as_i64().unwrap_or(0)).sum()
                });
                if got != want {
                    mismatched.push(format!("sku{sku} in {}: central {got}, regional {want}", t.name));
                }
            }
        }
        if mismatched.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let catch_up_ms = catch_up.elapsed().as_millis() as u64;
    let unsettled = order_status
        .iter()
        .filter(|(s, _)| ["reserving", "confirming"].contains(&s.as_str()))
        .map(|(_, n)| n)
        .sum::<u64>();
    let check = |name: &str, bad: &[String]| {
        (name.to_owned(), bad.is_empty(), bad.iter().take(5).cloned().collect::<Vec<_>>().join("; "))
    };
    checks.push(check("no negative stock", &negative));
    checks.push(check("regional stock = restocks - purchases (acknowledged)", &unbalanced));
    checks.push(check("no reservation outlives its order", &leaked));
    checks.push(check("central view = sum of regional views", &mismatched));
    checks.push(("every order confirmed or compensated".into(), unsettled == 0, format!("{unsettled} still open")));

    let commands: u64 = tl.latency.values().map(Histogram::len).sum();
    let by_kind: BTreeMap<&str, Value> = tl
        .latency
        .iter()
        .map(|(k, h)| {
            (*k, json!({"count": h.len(), "ok": tl.ok.get(k).copied().unwrap_or(0), "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0}))
        })
        .collect();
    let streamed: BTreeMap<&str, Value> = stats
        .iter()
        .map(|(r, s)| {
            (
                r.as_str(),
                json!({
                    "bytes": s.bytes.load(Ordering::Relaxed),
                    "events": s.events.load(Ordering::Relaxed),
                    "counted": s.counted.load(Ordering::Relaxed),
                    "duplicates": s.duplicates.load(Ordering::Relaxed),
                    "retries": s.retries.load(Ordering::Relaxed),
                    "stream_last": s.stream_last.load(Ordering::Relaxed),
                    "refetches": s.refetches.load(Ordering::Relaxed),
                }),
            )
        })
        .collect();
    let samples = samples.lock().unwrap().clone();
    sampler.abort();
    // Each region's projections (the JetStream sink or the feed), as the node reports them.
    let mut projections = serde_json::Map::new();
    for t in targets {
        projections.insert(t.name.clone(), get(&http, &format!("{}/v1/projections", t.base)).await);
    }
    let report = json!({
        "regions": targets.iter().map(|t| &t.name).collect::<Vec<_>>(),
        "road_to_central": road,
        "shops_per_region": args.shops,
        "skus": args.skus,
        "rate_per_region": args.rate,
        "load_seconds": load_s,
        "commands": commands,
        "commands_per_second": commands as f64 / load_s.max(0.001),
        "by_kind": by_kind,
        "rejections": tl.rejections,
        "failures": tl.failures,
        "orders": order_status,
        "streamed_to_central": streamed,
        "central_catch_up_ms": catch_up_ms,
        "regional_projections": projections,
        "checks": checks.iter().map(|(n, ok, why)| json!({"check": n, "ok": ok, "detail": why})).collect::<Vec<_>>(),
        "timeline": samples,
    });
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    let series = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| (s.t_s, f(s))).collect::<Vec<_>>();
    std::fs::write(out.join("throughput.svg"), svg("commands/s", &[("commands/s", series(&|s| s.commands as f64))]))?;
    std::fs::write(
        out.join("central_lag.svg"),
        svg("central lag, ms", &[("lag ms", series(&|s| s.central_lag_ms as f64))]),
    )?;
    let roles: Vec<String> = samples.first().map(|s| s.nodes.keys().cloned().collect()).unwrap_or_default();
    let role_series: Vec<(&str, Vec<(f64, f64)>)> = roles
        .iter()
        .map(|r| (r.as_str(), samples.iter().map(|s| (s.t_s, s.nodes.get(r).copied().unwrap_or(0) as f64)).collect()))
        .collect();
    std::fs::write(out.join("nodes.svg"), svg("nodes per role", &role_series))?;
    Ok(report)
}

/// A line chart as SVG (no plotting crate: a few polylines).
pub fn svg(title: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let (w, h, pad) = (640.0, 240.0, 40.0);
    let xmax = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.0)).fold(1.0_f64, f64::max);
    let ymax = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)).fold(1.0_f64, f64::max);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{pad}" y="16">{title} (max {ymax:.0}; x: seconds, max {xmax:.0})</text><line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>"#,
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| {
                format!("{:.1},{:.1}", pad + x / xmax * (w - 2.0 * pad), h - pad - y / ymax * (h - 2.0 * pad))
            })
            .collect();
        let c = colors[i % colors.len()];
        out.push_str(&format!(r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"#, pts.join(" ")));
        out.push_str(&format!(
            r#"<text x="{}" y="{}" fill="{c}">{name}</text>"#,
            w - pad - 120.0,
            pad + 14.0 * i as f64
        ));
    }
    out.push_str("</svg>\n");
    out
}

/// Prints the report's summary.
pub fn print_summary(report: &Value) {
    println!(
        "{} commands in {:.1} s ({:.0}/s) over regions {}",
        report["commands"],
        report["load_seconds"].as_f64().unwrap_or(0.0),
        report["commands_per_second"].as_f64().unwrap_or(0.0),
        report["regions"]
    );
    if let Some(kinds) = report["by_kind"].as_object() {
        for (k, v) in kinds {
            println!(
                "  {k:<8} {:>7} sent, {:>7} ok, p50 {:.2} ms, p99 {:.2} ms",
                v["count"],
                v["ok"],
                v["p50_ms"].as_f64().unwrap_or(0.0),
                v["p99_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    println!("rejections: {}", report["rejections"]);
    if report["failures"].as_object().is_some_and(|f| !f.is_empty()) {
        println!("failures: {}", report["failures"]);
    }
    println!("orders: {}", report["orders"]);
    println!(
        "to the central region ({}): {}",
        report["road_to_central"].as_str().unwrap_or(""),
        report["streamed_to_central"]
    );
    println!("central view caught up {} ms after the load", report["central_catch_up_ms"]);
    for c in report["checks"].as_array().into_iter().flatten() {
        let ok = c["ok"].as_bool().unwrap_or(false);
        if !ok && c["check"].as_str().is_some_and(|n| n.starts_with("central")) {
            println!("regional projections: {}", report["regional_projections"]);
        }
        println!(
            "check: {}: {}{}",
            c["check"].as_str().unwrap_or(""),
            if ok { "OK" } else { "FAILED" },
            if ok { String::new() } else { format!(" ({})", c["detail"].as_str().unwrap_or("")) }
        );
    }
}

/// Runs `simulate` as the CLI does: against running regions, or in-process ones.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if !args.region.is_empty() {
        let targets = args
            .region
            .iter()
            .map(|r| {
                let (name, base) = r.split_once('=').with_context(|| format!("--region wants NAME=URL, got {r:?}"))?;
                Ok(Target { name: name.into(), base: base.trim_end_matches('/').into() })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let central = args.central.clone().context("--central URL is needed with --region")?;
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from("inventory-report"));
        // Pictures go where the regions' `product.image` reads them (a shared directory here; S3 in production).
        let blobs = crate::Blobs::from_env();
        let deployment = Deployment { road: "the regions' own configuration", nodes: &BTreeMap::new() };
        let report = simulate(&args, &targets, &central, &[], &out, &blobs, deployment).await?;
        print_summary(&report);
        println!("report: {}", out.join("report.json").display());
        return ensure_checks(&report);
    }
    let dir = args.data_dir.clone().unwrap_or_else(|| {
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        std::env::temp_dir().join(format!("tessera-inventory-{ts}-{}", std::process::id()))
    });
    let local = Local::start(args.regions.max(1), args.nats.clone(), dir.clone()).await?;
    println!(
        "central region: {} (availability per SKU: GET {}/v1/entities/availability/sku0)",
        local.central_base, local.central_base
    );
    for (t, _) in &local.regions {
        println!("{}: {} (e.g. GET {}/v1/entities/stock/shop0:sku0)", t.name, t.base, t.base);
    }
    println!("regional events reach the central region through {}", local.road);
    let targets: Vec<Target> = local.regions.iter().map(|(t, _)| t.clone()).collect();
    let out = args.out.clone().unwrap_or_else(|| dir.join("report"));
    let deployment = Deployment { road: &local.road, nodes: &local.nodes };
    let report = simulate(&args, &targets, &local.central_base, &local.stats, &out, &local.blobs, deployment).await;
    local.shutdown().await;
    let report = report?;
    print_summary(&report);
    println!("report: {} (plots beside it); journals in {}", out.join("report.json").display(), dir.display());
    ensure_checks(&report)
}

fn ensure_checks(report: &Value) -> anyhow::Result<()> {
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| !c["ok"].as_bool().unwrap_or(false))
        .filter_map(|c| c["check"].as_str())
        .collect();
    ensure!(failed.is_empty(), "checks failed: {}", failed.join(", "));
    Ok(())
}

//! `inventory demo`: starts an embedded node on a fresh data dir, drives a
//! concurrent purchase/restock workload over HTTP across many stores and
//! SKUs, checks that no stock went negative and that every stock equals what
//! the clients saw acknowledged, and prints a summary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tessera_runtime::{NodeBuilder, NodeConfig};

use crate::simulate::Rng;

/// Flags of `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Journal directory (default: a new directory under the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stores.
    #[arg(long, default_value_t = 10)]
    pub stores: u32,
    /// SKUs per store.
    #[arg(long, default_value_t = 20)]
    pub skus: u32,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Commands in the workload.
    #[arg(long, default_value_t = 20_000)]
    pub commands: u32,
    /// Run the whole case instead: this many regions and a central region
    /// in this process, shops, warehouses and customers (`simulate`).
    #[arg(long)]
    pub regions: Option<u32>,
    /// With `--regions`: NATS for the regions' event streams (unset: over HTTP).
    #[arg(long)]
    pub nats: Option<String>,
    /// With `--regions`: how long the load runs.
    #[arg(long, default_value = "10s", value_parser = crate::simulate::parse_duration)]
    pub duration: std::time::Duration,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    rejected: u64,
    failed: u64,
    /// Per stock: units acknowledged in, units acknowledged out.
    flows: HashMap<String, (i64, i64)>,
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let resp = client.post(url).json(&body).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(regions) = args.regions {
        return crate::simulate::run(crate::simulate::SimulateArgs {
            regions,
            region: Vec::new(),
            central: None,
            nats: args.nats,
            shops: args.stores.min(8),
            skus: args.skus.min(12),
            rate: 200.0,
            duration: args.duration,
            out: None,
            data_dir: args.data_dir,
            quiet: false,
        })
        .await;
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        std::env::temp_dir().join(format!("tessera-demo-{ts}-{}", std::process::id()))
    });
    if data_dir.exists() && std::fs::read_dir(&data_dir)?.next().is_some() {
        bail!("{} is not empty: the demo wants a fresh data dir", data_dir.display());
    }
    let config = NodeConfig::default().with(|c| {
        c.journal.data_dir = data_dir.clone();
        c.http.listen = Some("127.0.0.1:0".into());
    });
    let node = NodeBuilder::new(crate::registry()?).config(config).build().await.context("starting the node")?;
    let addr = node.http_addr().context("no HTTP address")?;
    let base = format!("http://{addr}");
    println!("Tessera inventory demo: node on {base}, embedded journal in {}", data_dir.display());

    let client = reqwest::Client::builder().pool_max_idle_per_host(args.clients as usize).build()?;
    // Warehouse: stateless product upserts, one of them invalid.
    let mut products_ok = 0;
    for sku in 0..args.skus {
        let doc = json!({"sku": format!("sku-{sku}"), "name": format!("Product {sku}"), "price": 1.5 + f64::from(sku)});
        let (status, _) = post(&client, &format!("{base}/v1/functions/product.upsert"), doc).await?;
        products_ok += u32::from(status == 200);
    }
    let (status, bad) =
        post(&client, &format!("{base}/v1/functions/product.upsert"), json!({"sku": "sku-x", "name": "", "price": -1}))
            .await?;
    println!(
        "products: {products_ok}/{} upserted; an invalid one got HTTP {status}: {}",
        args.skus, bad["error"]["message"]
    );

    // Stores: concurrent purchases and restocks on per-store stock entities.
    let stocks: Vec<String> =
        (0..args.stores).flat_map(|s| (0..args.skus).map(move |k| format!("store-{s}:sku-{k}"))).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, base, stocks) = (client.clone(), base.clone(), stocks.clone());
        let n = args.commands / args.clients + u32::from(c < args.commands % args.clients);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (u64::from(c) + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
            let mut tally = Tally::default();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for _ in 0..n {
                let stock = &stocks[rng.below(stocks.len() as u64) as usize];
                let restock = rng.below(4) == 0;
                let qty = if restock { 1 + rng.below(10) } else { 1 + rng.below(3) } as i64;
                let command = if restock { "restock" } else { "purchase" };
                let t = Instant::now();
                let (status, _) =
                    post(&client, &format!("{base}/v1/entities/stock/{stock}/{command}"), json!({"qty": qty})).await?;
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
                match status {
                    200 => {
                        tally.ok += 1;
                        let f = tally.flows.entry(stock.clone()).or_default();
                        if restock { f.0 += qty } else { f.1 += qty }
                    }
                    409 => tally.rejected += 1,
                    _ => tally.failed += 1,
                }
            }
            anyhow::Ok((tally, hist))
        }));
    }
    let mut total = Tally::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        let (tally, h) = t.await??;
        total.ok += tally.ok;
        total.rejected += tally.rejected;
        total.failed += tally.failed;
        for (k, (i, o)) in tally.flows {
            let f = total.flows.entry(k).or_default();
            f.0 += i;
            f.1 += o;
        }
        hist.add(h)?;
    }
    let elapsed = started.elapsed();

    // Check: no stock below zero, every stock equals what was acknowledged.
    let mut events = 0u64;
    let mut min_on_hand = i64::MAX;
    for stock in &stocks {
        let resp: Value = client.get(format!("{base}/v1/entities/stock/{stock}")).send().await?.json().await?;
        let on_hand = resp["state"]["on_hand"].as_i64().context("state has on_hand")?;
        let (inn, out) = total.flows.get(stock).copied().unwrap_or_default();
        ensure!(on_hand >= 0, "{stock} went negative: {on_hand}");
        ensure!(on_hand == inn - out, "{stock}: on_hand {on_hand} but clients saw +{inn} -{out} acknowledged");
        min_on_hand = min_on_hand.min(on_hand);
        events += resp["seq"].as_u64().unwrap_or(0);
    }
    ensure!(total.failed == 0, "{} commands failed", total.failed);
    node.shutdown().await;

    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let example = &stocks[0];
    println!(
        "\nworkload: {} commands from {} clients over HTTP on {} stocks ({} stores x {} SKUs) in {:.2}s = {:.0} commands/s",
        args.commands,
        args.clients,
        stocks.len(),
        args.stores,
        args.skus,
        elapsed.as_secs_f64(),
        f64::from(args.commands) / elapsed.as_secs_f64()
    );
    println!("accepted: {}   rejected (would oversell): {}   failed: {}", total.ok, total.rejected, total.failed);
    println!("events journaled: {events} (each acknowledged only after its group commit was fsynced)");
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        q(0.5),
        q(0.9),
        q(0.99),
        hist.max() as f64 / 1000.0
    );
    println!("check: every stock >= 0 (lowest {min_on_hand}) and equal to acknowledged restocks - purchases: OK");
    println!("\njournal: {}", data_dir.display());
    println!("inspect it (node stopped):");
    println!("  inventory journal entities stock --data-dir {}", data_dir.display());
    println!("  inventory journal events stock {example} --data-dir {}", data_dir.display());
    println!("  inventory journal state stock {example} --at 3 --data-dir {}", data_dir.display());
    println!("  inventory journal export stock --out stock.jsonl --data-dir {}", data_dir.display());
    Ok(())
}

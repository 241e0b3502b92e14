//! `inference bench-embed`: embeddings/s and latency through the runtime
//! (HTTP; NATS with `--nats`; executor batching on and off) next to a raw
//! candle loop over the same model in the same process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tessera_entities::Format;
use tessera_runtime::client::NatsClient;
use tessera_runtime::{JournalKind, NodeBuilder, NodeConfig};

use crate::embedder::Embedder;

/// Flags of `bench-embed`.
#[derive(Debug, Clone, Args)]
pub struct EmbedBenchArgs {
    /// Calls per run (one text each).
    #[arg(long, default_value_t = 2000)]
    pub calls: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    pub callers: u64,
    /// Also measure over NATS.
    #[arg(long, env = "TESSERA_NATS_URL")]
    pub nats: Option<String>,
    /// Output file.
    #[arg(long, default_value = "bench-results/inference.json")]
    pub out: PathBuf,
}

fn text(i: u64) -> String {
    format!("Product {i}: a short description of an item sold in store {}, aisle {}.", i % 97, i % 13)
}

async fn through<F, Fut>(calls: u64, callers: u64, f: F) -> anyhow::Result<(f64, Value)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let (elapsed, latency) = tessera_bench::concurrently(calls, callers, f).await?;
    Ok((calls as f64 / elapsed.as_secs_f64(), latency))
}

/// Runs the benchmark and writes its JSON.
pub async fn run(a: EmbedBenchArgs, model_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = crate::model_files::locate(model_dir.as_deref())?;
    let raw = Arc::new(Embedder::load(&dir, candle_core::Device::Cpu)?);
    let mut results = json!({
        "description": "sentence embeddings (all-MiniLM-L6-v2, CPU): calls of one text through the runtime with executor batching on (up to 32 calls per forward pass) and off, over HTTP (and NATS), vs a raw candle loop over the same model in the same process",
        "calls": a.calls, "callers": a.callers,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "device": "cpu"},
    });
    for batch in [1usize, 32] {
        let texts: Vec<String> = (0..batch as u64).map(text).collect();
        let r = raw.clone();
        let started = Instant::now();
        let rounds = (a.calls / batch as u64).max(4);
        let n = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            for _ in 0..rounds {
                r.embed(&texts)?;
            }
            Ok(rounds * batch as u64)
        })
        .await??;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        eprintln!("raw candle, batch {batch}: {rate:.0} embeddings/s");
        results["baseline_raw_candle"][format!("batch_{batch}")] = json!({"embeddings_per_sec": rate.round()});
    }
    for (label, max_batch) in [("batching_on", 32usize), ("batching_off", 1)] {
        let config = NodeConfig::default().with(|c| {
            c.journal.kind = JournalKind::Memory;
            c.http.listen = Some("127.0.0.1:0".into());
            c.nats.url = a.nats.clone();
            c.nats.prefix = format!("benchembed{}", std::process::id());
            c.executors.max_batch = max_batch;
            c.limits.max_in_flight = 100_000;
            c.limits.invocation_timeout_ms = 600_000;
        });
        let node = NodeBuilder::new(crate::registry(Some(&dir))?).config(config).build().await?;
        let url = format!("http://{}/v1/functions/embed", node.http_addr().expect("http"));
        let http = reqwest::Client::new();
        let (rate, latency) = through(a.calls, a.callers, move |i| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.post(&url).json(&json!({ "texts": [text(i)] })).send().await?;
                anyhow::ensure!(r.status().is_success(), "HTTP {}", r.status());
                r.bytes().await?;
                Ok(())
            }
        })
        .await?;
        eprintln!("runtime over HTTP, {label}: {rate:.0} embeddings/s");
        results["runtime"][format!("http_{label}")] = json!({"embeddings_per_sec": rate.round(), "latency": latency});
        if let Some(nats) = &a.nats {
            let c = NatsClient::connect(nats)
                .await?
                .with_prefix(&node.config().nats.prefix)
                .with_timeout(Duration::from_secs(600));
            let (rate, latency) = through(a.calls, a.callers, move |i| {
                let c = c.clone();
                async move {
                    c.call("embed", serde_json::to_vec(&json!({ "texts": [text(i)] }))?, Format::Json).await?;
                    Ok(())
                }
            })
            .await?;
            eprintln!("runtime over NATS, {label}: {rate:.0} embeddings/s");
            results["runtime"][format!("nats_{label}")] =
                json!({"embeddings_per_sec": rate.round(), "latency": latency});
        }
        let m = node.metrics();
        let batches = m.executor_batch_size.with_label_values(&["cpu-0"]);
        results["runtime"][format!("http_{label}")]["avg_batch"] =
            json!((batches.get_sample_sum() / batches.get_sample_count().max(1) as f64 * 10.0).round() / 10.0);
        node.shutdown().await;
    }
    let best_raw = results["baseline_raw_candle"]["batch_32"]["embeddings_per_sec"].as_f64().unwrap_or(0.0);
    let on = results["runtime"]["http_batching_on"]["embeddings_per_sec"].as_f64().unwrap_or(0.0);
    results["ratio_batched_runtime_to_raw_batch_32"] = json!((on / best_raw.max(1.0) * 1000.0).round() / 1000.0);
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, serde_json::to_vec_pretty(&results)?)?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

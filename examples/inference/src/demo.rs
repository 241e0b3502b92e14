//! `inference demo`: embeds a small product corpus through a node (sync
//! call), then answers a nearest-neighbour query (async call, result polled
//! from the result store).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tessera_runtime::{JournalKind, NodeBuilder, NodeConfig};

use crate::embedder::cosine;

/// Flags of `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The query.
    #[arg(long, default_value = "something warm to drink in the morning")]
    pub query: String,
}

const CORPUS: [&str; 12] = [
    "Organic oat milk, 1 litre",
    "Dark roast coffee beans, 500 g",
    "Green tea bags, box of 40",
    "Stainless steel water bottle",
    "Wool winter gloves",
    "Running shoes, size 42",
    "Hot chocolate powder with marshmallows",
    "Laptop stand, aluminium",
    "Bluetooth noise-cancelling headphones",
    "Sourdough bread loaf",
    "Camping tent for two people",
    "Espresso machine with milk frother",
];

/// Runs the demo with the model in `model_dir` (or the default location).
pub async fn run(args: DemoArgs, model_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let registry = crate::registry(model_dir.as_deref())?;
    let config = NodeConfig::default().with(|c| {
        c.journal.kind = JournalKind::Memory;
        c.http.listen = Some("127.0.0.1:0".into());
    });
    let node = NodeBuilder::new(registry).config(config).build().await?;
    let base = format!("http://{}", node.http_addr().context("no HTTP address")?);
    let executors: Vec<_> = node.executors().list().iter().map(|e| e.id.clone()).collect();
    println!("Tessera inference demo: node on {base}, executors {executors:?}");
    let http = reqwest::Client::new();

    let started = std::time::Instant::now();
    let resp = http.post(format!("{base}/v1/functions/embed")).json(&json!({ "texts": CORPUS })).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        bail!("embedding the corpus failed: {status} {body}");
    }
    let corpus: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"].clone())?;
    println!("embedded {} products (sync call) in {:.0} ms", corpus.len(), started.elapsed().as_secs_f64() * 1000.0);

    let accepted: Value = http
        .post(format!("{base}/v1/functions/embed?mode=async"))
        .json(&json!({ "texts": [args.query] }))
        .send()
        .await?
        .json()
        .await?;
    let id = accepted["invocation_id"].as_str().context("no invocation id")?.to_owned();
    println!("query queued as invocation {id} (async call); polling {}", accepted["result_url"]);
    let row = loop {
        let resp = http.get(format!("{base}/v1/invocations/{id}")).send().await?;
        if resp.status().as_u16() == 200 {
            break resp.json::<Value>().await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if row["status"] != "ok" {
        bail!("the query failed: {row}");
    }
    let q: Vec<f32> = serde_json::from_value(row["body"]["embeddings"][0].clone())?;
    let mut ranked: Vec<(f32, &str)> = corpus.iter().zip(CORPUS).map(|(v, t)| (cosine(&q, v), t)).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("\nnearest to \"{}\":", args.query);
    for (score, text) in ranked.iter().take(3) {
        println!("  {score:.3}  {text}");
    }
    node.shutdown().await;
    Ok(())
}

//! The embed function through a node: sync and async over HTTP and NATS,
//! results in the result store, dynamic batching on the executor, bounded
//! executor queues, bad input.

mod common;

use std::time::Duration;

use common::{get, nats_url, post, unique_prefix, wait_result};
use futures::future::join_all;
use serde_json::{Value, json};
use tessera_entities::Format;
use tessera_runtime::client::NatsClient;
use tessera_runtime::{JournalKind, NodeBuilder, NodeConfig, Server};

fn model_dir() -> std::path::PathBuf {
    inference::model_files::locate(None).unwrap_or_else(|_| {
        let setup = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inference/setup.sh");
        assert!(std::process::Command::new("bash").arg(&setup).status().unwrap().success());
        inference::model_files::locate(None).expect("model installed")
    })
}

async fn node(tweak: impl FnOnce(&mut NodeConfig)) -> (Server, String) {
    let mut config = NodeConfig::default().with(|c| {
        c.journal.kind = JournalKind::Memory;
        c.http.listen = Some("127.0.0.1:0".into());
    });
    tweak(&mut config);
    let node = NodeBuilder::new(inference::registry(Some(&model_dir())).unwrap()).config(config).build().await.unwrap();
    let base = format!("http://{}", node.http_addr().unwrap());
    (node, base)
}

fn vector(v: &Value) -> Vec<f32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_async_over_http_with_batching() {
    let (node, base) = node(|c| c.executors.max_wait_us = 20_000).await;
    let url = format!("{base}/v1/functions/embed");
    let (s, _, out) = post(&url, r#"{"texts":["hello","a quick brown fox"]}"#, None).await;
    assert_eq!(s, 200, "{out}");
    assert_eq!((out["dim"].as_u64(), out["embeddings"].as_array().unwrap().len()), (Some(384), 2));
    let hello = vector(&out["embeddings"][0]);

    // 24 concurrent single-text calls: the executor runs them in few forward passes.
    let bodies: Vec<String> = (0..24).map(|i| format!(r#"{{"texts":["sentence number {i}"]}}"#)).collect();
    let results = join_all(bodies.iter().map(|b| post(&url, b, None))).await;
    assert!(results.iter().all(|r| r.0 == 200));
    let batches = node.metrics().executor_batch_size.with_label_values(&["cpu-0"]);
    let avg = batches.get_sample_sum() / batches.get_sample_count() as f64;
    assert!(avg > 1.0, "calls were batched (avg batch {avg})");
    let metrics = common::client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for m in
        ["tessera_executor_batch_size_bucket", "tessera_executor_queue_depth", "tessera_executor_busy_seconds_total"]
    {
        assert!(metrics.contains(m), "{m}");
    }

    let (s, _, accepted) = post(&format!("{url}?mode=async"), r#"{"texts":["hello"]}"#, Some("emb-1")).await;
    assert_eq!(s, 202);
    let row = wait_result(&base, "emb-1", Duration::from_secs(30)).await;
    assert_eq!(row["status"], "ok");
    assert_eq!(row["executor_id"], "cpu-0");
    let again = vector(&row["body"]["embeddings"][0]);
    assert!(inference::embedder::cosine(&hello, &again) > 0.9999);
    assert_eq!(accepted["result_url"], "/v1/invocations/emb-1");

    let (s, _, e) = post(&url, r#"{"texts":[]}"#, None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("no_texts")));
    let (s, _, _) = post(&url, r#"{"text":"wrong field"}"#, None).await;
    assert_eq!(s, 400);
    let (s, _) = get(&format!("{base}/v1/invocations/nope")).await;
    assert_eq!(s, 404);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_executor_queue_answers_429() {
    let (node, base) = node(|c| {
        c.executors.queue_limit = 2;
        c.executors.max_batch = 1;
    })
    .await;
    let url = format!("{base}/v1/functions/embed");
    let body = r#"{"texts":["one","two","three","four","five","six","seven","eight"]}"#;
    let results = join_all((0..40).map(|_| post(&url, body, None))).await;
    let busy = results.iter().filter(|r| r.0 == 429).count();
    assert!(busy > 0, "40 calls on a queue of 2 overflow it");
    assert!(results.iter().all(|r| r.0 == 200 || r.0 == 429));
    assert!(results.iter().filter(|r| r.0 == 429).all(|r| r.1["retry-after"] == "1"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_async_over_nats() {
    let prefix = unique_prefix();
    let (node, base) = node(|c| {
        c.nats.url = Some(nats_url());
        c.nats.prefix = prefix.clone();
    })
    .await;
    let c = NatsClient::connect(&nats_url()).await.unwrap().with_prefix(&prefix).with_timeout(Duration::from_secs(30));
    let r = c.call("embed", br#"{"texts":["hello"]}"#.to_vec(), Format::Json).await.unwrap();
    let sync = vector(&r.json().unwrap()["embeddings"][0]);
    let body = rmp_serde::to_vec_named(&json!({"texts": ["hello"]})).unwrap();
    let id = c.call_async("embed", body, Format::MsgPack, Some("nats-emb-1")).await.unwrap();
    let row = wait_result(&base, &id, Duration::from_secs(30)).await;
    assert_eq!((row["status"].as_str(), row["content_type"].as_str()), (Some("ok"), Some("application/msgpack")));
    assert!(inference::embedder::cosine(&sync, &vector(&row["body"]["embeddings"][0])) > 0.9999);
    node.shutdown().await;
}

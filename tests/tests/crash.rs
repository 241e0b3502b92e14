//! A node process killed with SIGKILL under load and restarted: every
//! acknowledged command's events are in the journal, no command is partial,
//! and retries with the same idempotency keys apply each command once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{NodeProcess, TestNode};
use serde_json::Value;

const ENTITIES: usize = 8;

async fn all_events(base: &str, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let (s, page) = common::get(&format!("{base}/v1/entities/flaky/{id}/events?from={from}&limit=1000")).await;
        assert_eq!(s, 200, "{page}");
        out.extend(page["events"].as_array().cloned().unwrap_or_default());
        match page["next_from"].as_u64() {
            Some(n) => from = n,
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_no_acknowledged_command() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[limits]\ndedup_max_entries = 1000000\n")?;
    let data = dir.path().join("data");
    let cfg = config.to_str().unwrap_or_default().to_owned();
    let node = NodeProcess::start(&data, &["--config", &cfg]).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..16usize {
        let (base, stop) = (node.base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acked = Vec::new();
            let mut attempted = Vec::new();
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (entity, n, key) = (format!("f{}", (c + k) % ENTITIES), 1 + (k % 4), format!("c{c}-{k}"));
                k += 1;
                attempted.push((entity.clone(), n, key.clone()));
                let r = http
                    .post(format!("{base}/v1/entities/flaky/{entity}/batch"))
                    .header("idempotency-key", &key)
                    .json(&serde_json::json!({ "n": n }))
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().as_u16() == 200 => acked.push(key),
                    Ok(resp) => panic!("unexpected status {}", resp.status()),
                    Err(_) => break, // the node is gone
                }
            }
            (acked, attempted)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill().await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = HashSet::new();
    let mut attempted = Vec::new();
    for c in clients {
        let (a, t) = c.await?;
        acked.extend(a);
        attempted.extend(t);
    }
    assert!(acked.len() > 50, "the load ran ({} acknowledged)", acked.len());

    let node = NodeProcess::start(&data, &["--config", &cfg]).await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in 0..ENTITIES {
        let events = all_events(&node.base, &format!("f{e}")).await;
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev["seq"], i as u64 + 1, "no gaps");
        }
        // Group consecutive events by invocation: each group is one whole batch.
        let mut i = 0;
        while i < events.len() {
            let key = events[i]["invocation_id"].as_str().unwrap_or_default().to_owned();
            let of = events[i]["event"]["Tick"]["of"].as_u64().unwrap_or(0) as usize;
            let group = events[i..].iter().take_while(|e| e["invocation_id"] == events[i]["invocation_id"]).count();
            assert_eq!(group, of, "invocation {key} is whole ({group} of {of} events)");
            *seen.entry(key).or_default() += 1;
            i += group;
        }
    }
    for key in &acked {
        assert_eq!(seen.get(key), Some(&1), "acknowledged {key} is in the journal exactly once");
    }
    assert!(seen.values().all(|n| *n == 1), "no invocation applied twice");

    // Retrying every attempted command with its key applies each exactly once.
    let http = reqwest::Client::new();
    for (entity, n, key) in &attempted {
        let resp = http
            .post(format!("{}/v1/entities/flaky/{entity}/batch", node.base))
            .header("idempotency-key", key)
            .json(&serde_json::json!({ "n": n }))
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 200);
        let dedup = resp.headers().get("tessera-deduplicated").is_some();
        assert_eq!(dedup, seen.contains_key(key), "{key}: deduplicated iff it was already applied");
    }
    let mut total = 0;
    for e in 0..ENTITIES {
        let events = all_events(&node.base, &format!("f{e}")).await;
        let keys: HashSet<_> =
            events.iter().map(|e| e["invocation_id"].as_str().unwrap_or_default().to_owned()).collect();
        total += keys.len();
        let (_, state) = common::get(&format!("{}/v1/entities/flaky/f{e}", node.base)).await;
        assert_eq!(state["state"]["count"], events.len() as u64);
    }
    assert_eq!(total, attempted.len(), "every attempted command applied exactly once");
    node.kill().await;
    Ok(())
}

//! Projection benchmarks (local journal): how fast a no-op projection
//! consumes a feed already written, against a raw scan of the same feeds
//! through the journal; and, while the durable-command benchmark runs, the
//! delay from commit to projection, and what running it costs the commands
//! (the same workload without it, same run).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tessera_journal::Journal;
use tessera_runtime::NodeBuilder;
use tessera_runtime::config::{JournalKind, NodeConfig};
use tessera_runtime::projection::{Projection, ProjectionBatch, ProjectionError};

use super::{Sizes, registry, runs};

/// Counts what it gets and records commit-to-handling delays (ms).
struct Probe {
    name: &'static str,
    delays: Arc<Mutex<Histogram<u64>>>,
    events: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait::async_trait]
impl Projection for Probe {
    fn name(&self) -> &str {
        self.name
    }
    fn entity_types(&self) -> Vec<String> {
        vec!["bench-counter".into()]
    }
    async fn handle(&self, batch: ProjectionBatch<'_>, _: &mut Option<Vec<u8>>) -> Result<(), ProjectionError> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut h = self.delays.lock().unwrap_or_else(|p| p.into_inner());
        for e in batch.events {
            let _ = h.record((now - e.timestamp_ms).max(0) as u64);
        }
        self.events.fetch_add(batch.events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

fn config(dir: &Path) -> NodeConfig {
    NodeConfig::default().with(|c| {
        c.journal.data_dir = dir.to_path_buf();
        c.http.listen = None;
        c.journal.kind = JournalKind::Local;
        c.limits.max_in_flight = 1_000_000;
        c.limits.max_active_entities = 10_000_000;
        c.limits.idle_timeout_secs = 3600;
        c.journal.shards = 64;
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { (a / b * 1000.0).round() / 1000.0 } else { 0.0 }
}

pub(super) async fn run(s: Sizes, scratch: &Path) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new().prefix("tessera-bench-proj-").tempdir_in(scratch)?;
    let ids = Arc::new((0..s.entities).map(|i| format!("e-{i}")).collect::<Vec<_>>());
    let n = s.commands / 2;

    // 1. Durable commands without a projection (the baseline of its cost),
    //    with and without the dispatcher (messages, timers, calls: it
    //    follows every entity type but wakes only for commits that carry
    //    flow records, which these do not), alternated twice.
    let (mut with_dispatcher, mut without_dispatcher) = (Vec::new(), Vec::new());
    let mut plain_latency = Value::Null;
    for round in 0..2 {
        for dispatcher in [false, true] {
            let builder =
                NodeBuilder::new(registry()).config(config(&dir.path().join(format!("plain-{round}-{dispatcher}"))));
            let plain = if dispatcher { builder } else { builder.without_dispatcher() }.build().await?;
            runs::drive(&plain, &ids, s.entities, s.callers, "get").await?;
            let (elapsed, latency) = runs::drive(&plain, &ids, n, s.callers, "add").await?;
            plain.shutdown().await;
            let rate = n as f64 / elapsed.as_secs_f64();
            eprintln!("durable commands without a projection, dispatcher {dispatcher}: {rate:.0}/s");
            if dispatcher {
                with_dispatcher.push(rate);
                plain_latency = latency;
            } else {
                without_dispatcher.push(rate);
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let plain_rate = mean(&with_dispatcher);

    // 2. The same with a no-op projection following live: its delay.
    let delays = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000, 3)?));
    let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probe = Arc::new(Probe { name: "bench-live", delays: delays.clone(), events: events.clone() });
    let live_dir = dir.path().join("live");
    let live = NodeBuilder::new(registry()).config(config(&live_dir)).projection(probe).build().await?;
    runs::drive(&live, &ids, s.entities, s.callers, "get").await?;
    let (live_elapsed, live_latency) = runs::drive(&live, &ids, n, s.callers, "add").await?;
    let live_rate = n as f64 / live_elapsed.as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    while events.load(std::sync::atomic::Ordering::Relaxed) < n {
        anyhow::ensure!(Instant::now() < deadline, "the projection did not catch up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    live.shutdown().await;
    let d = delays.lock().unwrap_or_else(|p| p.into_inner()).clone();
    eprintln!(
        "durable commands with a projection: {live_rate:.0}/s; delay p50 {} ms p99 {} ms",
        d.value_at_quantile(0.5),
        d.value_at_quantile(0.99)
    );

    // 3. Catch-up: a no-op projection over the feed written in 2, against a
    //    raw scan of the same feeds.
    let journal = tessera_journal::LocalJournal::builder(&live_dir).shards(64).open()?;
    let started = Instant::now();
    let mut scanned = 0u64;
    for shard in 0..64 {
        let page: Vec<_> = journal.events_by_shard("bench-counter", shard, 0).try_collect().await?;
        scanned += page.len() as u64;
    }
    let raw_elapsed = started.elapsed();
    drop(journal);
    let raw_rate = scanned as f64 / raw_elapsed.as_secs_f64();
    eprintln!("raw feed scan: {raw_rate:.0} events/s ({scanned} events)");
    let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let delays = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000, 3)?));
    // A projection not run before: it starts from the beginning of every feed.
    let probe = Arc::new(Probe { name: "bench-catch-up", delays, events: events.clone() });
    let started = Instant::now();
    let node = NodeBuilder::new(registry()).config(config(&live_dir)).projection(probe).build().await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while events.load(std::sync::atomic::Ordering::Relaxed) < scanned {
        anyhow::ensure!(Instant::now() < deadline, "the projection did not catch up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let catch_up = started.elapsed();
    node.shutdown().await;
    let catch_up_rate = scanned as f64 / catch_up.as_secs_f64();
    eprintln!("projection catch-up: {catch_up_rate:.0} events/s");

    Ok(json!({
        "dispatcher": {
            "description": "durable commands/s (no messages) with the dispatcher vs a node without it, two runs each, alternated",
            "with": with_dispatcher.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "without": without_dispatcher.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "ratio": ratio(plain_rate, mean(&without_dispatcher)),
        },
        "description": "a no-op projection (local journal, 64 shards): catch-up over a written feed vs a raw scan of the same feeds; delay from commit to projection while durable commands run; durable commands with vs without it",
        "events": scanned, "commands": n, "callers": s.callers,
        "runtime": {
            "catch_up_events_per_sec": catch_up_rate.round(),
            "live_delay_ms": { "p50": d.value_at_quantile(0.5), "p90": d.value_at_quantile(0.9), "p99": d.value_at_quantile(0.99), "max": d.max() },
            "durable_commands_per_sec_with_projection": live_rate.round(),
            "latency_with_projection": live_latency,
        },
        "baseline": {
            "raw_feed_scan_events_per_sec": raw_rate.round(),
            "durable_commands_per_sec_without_projection": plain_rate.round(),
            "latency_without_projection": plain_latency,
        },
        "ratio_catch_up_to_raw_scan": ratio(catch_up_rate, raw_rate),
        "ratio_commands_with_to_without_projection": ratio(live_rate, plain_rate),
    }))
}

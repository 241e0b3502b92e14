//! The benchmarks themselves.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Value, json};
use tessera_entities::Format;
use tessera_journal::{Durability, EntityKey, Journal, LocalJournal, NewEvent};

use super::{Sizes, concurrently, registry, rss_bytes};
use tessera_runtime::NodeBuilder;
use tessera_runtime::config::{JournalKind, NodeConfig};
use tessera_runtime::{Invocation, Node};

pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { (a / b * 1000.0).round() / 1000.0 } else { 0.0 }
}

pub(super) fn bench_config(journal: JournalKind, data_dir: &Path) -> NodeConfig {
    NodeConfig::default().with(|c| {
        c.journal.data_dir = data_dir.to_path_buf();
        c.http.listen = None;
        c.journal.kind = journal;
        c.limits.max_in_flight = 1_000_000;
        c.limits.max_active_entities = 10_000_000;
        c.limits.idle_timeout_secs = 3600;
        // The journal's knobs may be tuned from the environment, as for
        // `tessera serve` (`TESSERA_JOURNAL_MEMTABLE_BYTES=...`), to measure
        // a setting without a rebuild.
        let bad = c.journal.set_from_env();
        assert!(bad.is_empty(), "{}", bad.join("; "));
    })
}

fn ids(n: u64) -> Arc<Vec<String>> {
    Arc::new((0..n).map(|i| format!("e-{i}")).collect())
}

/// `callers` tasks send `total` commands round-robin over `ids`; returns
/// (elapsed, latency summary).
pub(super) async fn drive(
    node: &Node,
    ids: &Arc<Vec<String>>,
    total: u64,
    callers: u64,
    command: &str,
) -> anyhow::Result<(Duration, Value)> {
    let body = if command == "add" { br#"{"by":1}"#.to_vec() } else { Vec::new() };
    let (node, ids, command) = (node.clone(), ids.clone(), command.to_owned());
    super::concurrently(total, callers, move |i| {
        let inv = Invocation {
            entity_type: "bench-counter".into(),
            entity_id: ids[(i % ids.len() as u64) as usize].clone(),
            command: command.clone(),
            body: body.clone(),
            format: Format::Json,
            idempotency_key: None,
        };
        let node = node.clone();
        async move {
            node.invoke(inv).await?;
            Ok(())
        }
    })
    .await
}

/// The median run by rate (the first of each pair).
pub(super) fn median(mut runs: Vec<(f64, Value)>) -> (f64, Value) {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs.swap_remove(runs.len() / 2)
}

/// Rounds of the durable comparison.
const DURABLE_ROUNDS: usize = 3;

/// Durable commands through the runtime on the local journal vs raw fjall
/// batched durable writes of as many events, in batches of the size the
/// runtime's group commit reached. Rounds of the two alternate, so that
/// each ratio compares runs seconds apart (the disk's fsync latency, which
/// bounds the baseline, drifts by 2× on this machine kind within minutes);
/// each figure is the median of its rounds.
pub(super) async fn durable(s: Sizes, scratch: &Path) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new().prefix("tessera-bench-").tempdir_in(scratch)?;
    let node =
        NodeBuilder::new(registry()).config(bench_config(JournalKind::Local, &dir.path().join("node"))).build().await?;
    let ids = ids(s.entities);
    let (warm, _) = drive(&node, &ids, s.entities, s.callers, "get").await?;
    let (mut runtime, mut raw) = (Vec::new(), Vec::new());
    let raw_db = fjall::Database::builder(dir.path().join("raw")).open()?;
    let raw_ks = raw_db.keyspace("events", fjall::KeyspaceCreateOptions::default)?;
    for round in 0..DURABLE_ROUNDS {
        let m = node.metrics();
        let (commits0, appends0) = (m.commit_batch.get_sample_count(), m.commit_batch.get_sample_sum());
        let cpu0 = crate::cpu_secs("self");
        let (elapsed, latency) = drive(&node, &ids, s.commands, s.callers, "add").await?;
        let cpu_us = (crate::cpu_secs("self") - cpu0) * 1e6 / s.commands as f64;
        let commits = m.commit_batch.get_sample_count() - commits0;
        let appends = m.commit_batch.get_sample_sum() - appends0;
        let avg_batch = if commits > 0 { appends / commits as f64 } else { 1.0 };
        let rate = s.commands as f64 / elapsed.as_secs_f64();

        let n = s.commands;
        let batch = avg_batch.round().max(1.0) as u64;
        // On a named thread of its own, so that a profile tells it from the runtime's threads.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (db, ks, from) = (raw_db.clone(), raw_ks.clone(), round as u64 * n);
        let raw_cpu0 = crate::cpu_secs("self");
        std::thread::Builder::new().name("raw-fjall".into()).spawn(move || {
            let _ = tx.send(raw_fjall(&db, &ks, from, n, batch));
        })?;
        let took = rx.await??;
        let raw_cpu_us = (crate::cpu_secs("self") - raw_cpu0) * 1e6 / n as f64;
        let raw_rate = n as f64 / took.as_secs_f64();
        eprintln!(
            "round {round}: runtime {rate:.0} durable commands/s (avg group commit {avg_batch:.1}, {cpu_us:.1} µs CPU each); raw fjall {raw_rate:.0} durable events/s in batches of {batch} ({raw_cpu_us:.1} µs CPU each)"
        );
        runtime.push((
            rate,
            json!({ "commands_per_sec": rate.round(), "latency": latency, "group_commits": commits, "avg_commit_batch": (avg_batch * 10.0).round() / 10.0, "cpu_us_per_command": (cpu_us * 10.0).round() / 10.0 }),
        ));
        raw.push((
            raw_rate,
            json!({ "events_per_sec": raw_rate.round(), "batch": batch, "cpu_us_per_event": (raw_cpu_us * 10.0).round() / 10.0 }),
        ));
    }
    node.shutdown().await;
    let rounds = json!({
        "runtime": runtime.iter().map(|(r, _)| r.round()).collect::<Vec<_>>(),
        "raw_fjall": raw.iter().map(|(r, _)| r.round()).collect::<Vec<_>>(),
        "ratios": runtime.iter().zip(&raw).map(|((a, _), (b, _))| ratio(*a, *b)).collect::<Vec<_>>(),
    });
    let ((rate, runtime), (raw_rate, raw)) = (median(runtime), median(raw));
    eprintln!("medians: runtime {rate:.0} durable commands/s; raw fjall {raw_rate:.0} durable events/s");
    Ok(json!({
        "description": "durable commands/s through the runtime (local journal, fsync per group commit), 1 event per command, vs raw fjall batched SyncData writes of as many events in batches of the runtime's average group commit, into one database that grows across the rounds as the journal does; each the median of 3 alternating rounds; CPU per command is the whole process's during the round",
        "commands": s.commands, "entities": s.entities, "callers": s.callers,
        "activations_per_sec": (s.entities as f64 / warm.as_secs_f64()).round(),
        "runtime": runtime,
        "baseline_raw_fjall": raw,
        "ratio_runtime_to_baseline": ratio(rate, raw_rate),
        "rounds": rounds,
    }))
}

/// Raw fjall: `n` durable events after the first `from`, in batches of
/// `batch`, into the same database every round (as the runtime's journal
/// grows across its rounds, so each side pays for the compactions of as
/// much data).
fn raw_fjall(db: &fjall::Database, ks: &fjall::Keyspace, from: u64, n: u64, batch: u64) -> anyhow::Result<Duration> {
    let value = vec![0x5a_u8; 64];
    let started = Instant::now();
    let (mut written, end) = (from, from + n);
    while written < end {
        let mut b = db.batch().durability(Some(fjall::PersistMode::SyncData));
        for _ in 0..batch.min(end - written) {
            let mut key = format!("bench-counter/e-{}", written % 10_000).into_bytes();
            key.extend_from_slice(&written.to_be_bytes());
            b.insert(ks, key, value.clone());
            written += 1;
        }
        b.commit()?;
    }
    Ok(started.elapsed())
}

enum Echo {
    Ping(u64, RpcReplyPort<u64>),
}

struct EchoActor;

impl Actor for EchoActor {
    type Msg = Echo;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<Echo>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(&self, _: ActorRef<Echo>, msg: Echo, _: &mut ()) -> Result<(), ActorProcessingErr> {
        let Echo::Ping(x, port) = msg;
        let _ = port.send(x);
        Ok(())
    }
}

/// Commands on the memory journal vs raw ractor call round trips.
pub(super) async fn in_memory(s: Sizes) -> anyhow::Result<Value> {
    let node =
        NodeBuilder::new(registry()).config(bench_config(JournalKind::Memory, Path::new("unused"))).build().await?;
    let ids = ids(s.entities);
    drive(&node, &ids, s.entities, s.callers, "get").await?;
    let cpu0 = crate::cpu_secs("self");
    let (elapsed, latency) = drive(&node, &ids, s.commands, s.callers, "add").await?;
    let cpu_us = (crate::cpu_secs("self") - cpu0) * 1e6 / s.commands as f64;
    node.shutdown().await;
    let rate = s.commands as f64 / elapsed.as_secs_f64();
    eprintln!("runtime (memory journal): {rate:.0} commands/s, {cpu_us:.1} µs CPU each");

    let (echo, handle) = Actor::spawn(None, EchoActor, ()).await?;
    let ping = echo.clone();
    let raw_cpu0 = crate::cpu_secs("self");
    let (raw, raw_latency) = concurrently(s.commands, s.callers, move |i| {
        let echo = ping.clone();
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            echo.send_message(Echo::Ping(i, tx.into())).map_err(|e| anyhow::anyhow!("{e}"))?;
            rx.await?;
            Ok(())
        }
    })
    .await?;
    let raw_cpu_us = (crate::cpu_secs("self") - raw_cpu0) * 1e6 / s.commands as f64;
    echo.stop(None);
    let _ = handle.await;
    let raw_rate = s.commands as f64 / raw.as_secs_f64();
    eprintln!("raw ractor call: {raw_rate:.0} round trips/s, {raw_cpu_us:.1} µs CPU each");
    Ok(json!({
        "description": "commands/s through the runtime on the memory journal (1 event per command) vs raw ractor call round trips to one echo actor",
        "commands": s.commands, "entities": s.entities, "callers": s.callers,
        "runtime": { "commands_per_sec": rate.round(), "latency": latency, "cpu_us_per_command": (cpu_us * 10.0).round() / 10.0 },
        "baseline_ractor_call": { "calls_per_sec": raw_rate.round(), "latency": raw_latency, "cpu_us_per_call": (raw_cpu_us * 100.0).round() / 100.0 },
        "ratio_runtime_to_baseline": ratio(rate, raw_rate),
    }))
}

/// Replay of one entity with many events: activation through the node vs a
/// raw read of the same events from the journal (no decoding).
pub(super) async fn replay(s: Sizes, scratch: &Path) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new().prefix("tessera-bench-").tempdir_in(scratch)?;
    let path = dir.path().join("node");
    let key = EntityKey::new("bench-counter", "big");
    {
        let j = LocalJournal::builder(&path).durability(Durability::Buffered).open()?;
        let payload = rmp_serde::to_vec_named(&super::counter::CounterEvent::Added { by: 1 })?;
        let mut seq = 0;
        while seq < s.replay_events {
            let n = 1000.min(s.replay_events - seq);
            let events = (0..n)
                .map(|_| NewEvent {
                    type_name: "Added".into(),
                    version: 1,
                    payload: payload.clone(),
                    metadata: Vec::new(),
                })
                .collect();
            j.append(&key, seq, events).await?;
            seq += n;
        }
    }
    let j: Arc<dyn Journal> = Arc::new(LocalJournal::open(&path)?);
    // Warm the block cache once so both timed reads below see the same cache.
    j.read(&key, 1..=u64::MAX).try_fold((), |(), _| async { Ok(()) }).await?;
    let rss0 = rss_bytes();
    let started = Instant::now();
    let count = j.read(&key, 1..=u64::MAX).try_fold(0u64, |n, _| async move { Ok(n + 1) }).await?;
    let raw = started.elapsed();
    anyhow::ensure!(count == s.replay_events, "read {count} events, wrote {}", s.replay_events);
    let config = bench_config(JournalKind::Local, &path).with(|c| c.journal.snapshot_every = 0);
    let node = NodeBuilder::new(registry()).config(config).journal(j).build().await?;
    let started = Instant::now();
    let view = node.state("bench-counter", "big").await?;
    let activation = started.elapsed();
    let rss1 = rss_bytes();
    node.shutdown().await;
    anyhow::ensure!(view.state["value"] == json!(s.replay_events), "replayed state is wrong: {}", view.state);
    let rate = s.replay_events as f64 / activation.as_secs_f64();
    let raw_rate = s.replay_events as f64 / raw.as_secs_f64();
    eprintln!("replay: {rate:.0} events/s through activation, raw read {raw_rate:.0} events/s");
    Ok(json!({
        "description": "activation of one entity with N events (decode + upcast check + apply, paged reads) vs a raw paged read of the same events",
        "events": s.replay_events,
        "runtime": { "events_per_sec": rate.round(), "seconds": activation.as_secs_f64() },
        "baseline_raw_read": { "events_per_sec": raw_rate.round(), "seconds": raw.as_secs_f64() },
        "ratio_runtime_to_baseline": ratio(rate, raw_rate),
        "rss_growth_bytes_during_replay": rss1.saturating_sub(rss0),
    }))
}

/// Memory per active entity and activations/s, vs raw idle ractor actors.
/// Each figure is taken in a fresh child process (`tessera-bench --probe ...`) so
/// that memory freed by one measurement and kept by the allocator cannot
/// hide the growth of the next.
pub(super) async fn entities(s: Sizes) -> anyhow::Result<Value> {
    let mut points = Vec::new();
    for n in s.resident {
        let p = probe("entities", n, s.callers).await?;
        eprintln!("{n} active entities: {} bytes each", p["bytes_per_entity"]);
        points.push(p);
    }
    let actors = probe("actors", s.baseline_actors, s.callers).await?;
    eprintln!("raw ractor actors: {} bytes each", actors["bytes_per_actor"]);
    let per_entity = points.last().and_then(|p| p["bytes_per_entity"].as_f64()).unwrap_or(0.0);
    let per_actor = actors["bytes_per_actor"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "description": "RSS growth per active entity (default state, hosted in shard actors; memory journal) and activations/s, vs one idle raw ractor actor per entity; each measured in a fresh process",
        "runtime": points,
        "baseline_ractor_actor": actors,
        "ratio_entity_to_actor_memory": ratio(per_entity, per_actor),
    }))
}

async fn probe(kind: &str, n: u64, callers: u64) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(&exe)
        .args(["--probe", kind, "--probe-count", &n.to_string(), "--probe-callers", &callers.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "probe {kind} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The measurement of one probe process: `entities` activates `n` entities,
/// `actors` spawns `n` idle ractor actors; prints one JSON object.
pub(super) async fn run_probe(kind: &str, n: u64, callers: u64) -> anyhow::Result<Value> {
    if kind == "actors" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let base = rss_bytes();
        let started = Instant::now();
        let mut actors = Vec::with_capacity(n as usize);
        for _ in 0..n {
            actors.push(Actor::spawn(None, EchoActor, ()).await?);
        }
        let spawn = started.elapsed();
        let rss = rss_bytes().saturating_sub(base);
        return Ok(json!({
            "actors": n,
            "rss_growth_bytes": rss,
            "bytes_per_actor": rss / n.max(1),
            "spawns_per_sec": (n as f64 / spawn.as_secs_f64()).round(),
        }));
    }
    let node =
        NodeBuilder::new(registry()).config(bench_config(JournalKind::Memory, Path::new("unused"))).build().await?;
    let ids = ids(n);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let base = rss_bytes();
    let (elapsed, _) = drive(&node, &ids, n, callers, "get").await?;
    let active = node.metrics().active_entities.get();
    let rss = rss_bytes().saturating_sub(base);
    Ok(json!({
        "active_entities": active,
        "rss_growth_bytes": rss,
        "bytes_per_entity": rss / n.max(1),
        "entities_per_gib": ((1u64 << 30) as f64 / (rss as f64 / n as f64)).round(),
        "activations_per_sec": (n as f64 / elapsed.as_secs_f64()).round(),
    }))
}

//! Scylla benchmarks (against whatever CQL server `--scylla` names; the
//! project tests with Cassandra 5): durable commands through the runtime,
//! conditional and unconditional, vs raw prepared INSERTs of the same rows
//! with the driver; replay vs a raw paged read.

use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use serde_json::{Value, json};
use tessera_journal::scylla::MigrateOptions;
use tessera_journal::scylla::RequestCounts;
use tessera_journal::{AppendRequest, EntityKey, Journal, NewEvent, ScyllaJournal};

use super::{Sizes, registry};
use tessera_runtime::NodeBuilder;
use tessera_runtime::config::{JournalKind, NodeConfig};

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { (a / b * 1000.0).round() / 1000.0 } else { 0.0 }
}

/// `n` commands through a node on the Scylla journal at `url`, after
/// `warm` once on each entity ("get": activation only, so each measured
/// command is its entity's first append; "add": one append first, so each
/// measured one is a later append). Returns (commands/s, latency, the
/// journal's requests per measured command).
async fn commands(url: &str, s: Sizes, n: u64, warm: &str) -> anyhow::Result<(f64, Value, Value)> {
    let config = NodeConfig::default().with(|c| {
        c.http.listen = None;
        c.journal.kind = JournalKind::Scylla(url.to_owned());
        c.limits.max_in_flight = 1_000_000;
        c.journal.snapshot_every = 0;
    });
    let journal = ScyllaJournal::connect(url, config.journal.shards).await?;
    let node = NodeBuilder::new(registry()).config(config).journal(Arc::new(journal.clone())).build().await?;
    let ids: Arc<Vec<String>> = Arc::new((0..s.entities).map(|i| format!("e-{i}")).collect());
    super::runs::drive(&node, &ids, s.entities.min(n), s.callers, warm).await?;
    let before = journal.request_counts();
    let (elapsed, latency) = super::runs::drive(&node, &ids, n, s.callers, "add").await?;
    // The feed's background writes (entries, watermarks) of the last commands.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let writes = per_command(before, journal.request_counts(), n);
    node.shutdown().await;
    Ok((n as f64 / elapsed.as_secs_f64(), latency, writes))
}

/// The journal's requests between two counts, per command, by kind.
fn per_command(before: RequestCounts, after: RequestCounts, n: u64) -> Value {
    let per = |a: u64, b: u64| ((a - b) as f64 / n.max(1) as f64 * 100.0).round() / 100.0;
    json!({
        "conditional_appends": per(after.conditional_appends, before.conditional_appends),
        "plain_appends": per(after.plain_appends, before.plain_appends),
        "intents": per(after.intents, before.intents),
        "entry_batches": per(after.entry_batches, before.entry_batches),
        "watermarks_conditional": per(after.watermarks, before.watermarks),
        "index_rows": per(after.index_rows, before.index_rows),
        "feed_segment_reads": per(after.segment_reads, before.segment_reads),
        "feed_entry_reads": per(after.entry_reads, before.entry_reads),
        "feed_event_reads": per(after.feed_event_reads, before.feed_event_reads),
    })
}

/// `n` one-event appends straight to the journal from `callers` tasks,
/// over `8 × callers` entities (each appended to by one task, in seq
/// order); with `fence`, each entity's fence is raised first (timed apart)
/// and every append carries the epoch. Returns (appends/s, raises/s).
async fn journal_appends(
    j: &ScyllaJournal,
    tag: &str,
    n: u64,
    callers: u64,
    fence: Option<u64>,
) -> anyhow::Result<(f64, f64, Value)> {
    let entities = 8 * callers;
    let keys: Arc<Vec<EntityKey>> =
        Arc::new((0..entities).map(|e| EntityKey::new("bench-fence", format!("{tag}-{e}"))).collect());
    let mut raises = 0.0;
    if let Some(epoch) = fence {
        let (j, k) = (j.clone(), keys.clone());
        let (took, _) = super::concurrently(entities, callers, move |i| {
            let (j, k) = (j.clone(), k.clone());
            async move { Ok(j.raise_fence(&k[i as usize], epoch).await?) }
        })
        .await?;
        raises = entities as f64 / took.as_secs_f64();
    }
    let ev = NewEvent { type_name: "Added".into(), version: 1, payload: vec![0x80], metadata: vec![] };
    let j = j.clone();
    let (took, latency) = super::concurrently(n, callers, move |i| {
        let (j, k, ev) = (j.clone(), keys.clone(), ev.clone());
        async move {
            let req = AppendRequest::new(i / entities, vec![ev]).with_fence(fence);
            j.commit(&k[(i % entities) as usize], req).await?;
            Ok(())
        }
    })
    .await?;
    Ok((n as f64 / took.as_secs_f64(), raises, latency))
}

/// Rows/s of `n` event rows (entity type `entity_type`, 10 000 entities)
/// written straight through the driver as prepared `INSERT`s ending in
/// `condition`, from `callers` tasks at once: the baselines.
async fn raw_rows(
    j: &ScyllaJournal,
    ks: &str,
    condition: &str,
    entity_type: &'static str,
    n: u64,
    callers: u64,
    payload: &[u8],
) -> anyhow::Result<f64> {
    let mut insert = j
        .session()
        .prepare(format!(
            "INSERT INTO {ks}.events (entity_type, entity_id, bucket, seq, ts, type_name, version, payload, metadata) VALUES (?, ?, 0, ?, ?, 'Added', 1, ?, ?){condition}"
        ))
        .await?;
    insert.set_consistency(j.config().consistency);
    insert.set_serial_consistency(Some(j.config().serial_consistency));
    let insert = Arc::new(insert);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (j, insert, payload) = (j.clone(), insert.clone(), payload.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                let v =
                    (entity_type, format!("e-{}", i % 10_000), (i + 1) as i64, 0i64, payload.clone(), vec![0u8; 40]);
                j.session().execute_unpaged(&insert, v).await?;
                i += callers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

pub(super) async fn run(s: Sizes, server: &str) -> anyhow::Result<Value> {
    let server = server.trim_end_matches('/');
    let ks = format!("bench_{}", std::process::id());
    let url = format!("{server}/{ks}");
    let other_tables = vec![tessera_runtime::results::ScyllaResultStore::table()];
    ScyllaJournal::migrate(&url, &MigrateOptions { other_tables, ..MigrateOptions::default() }).await?;
    let n = (s.commands / 40).max(200);

    let (conditional, latency, writes) = commands(&url, s, n, "get").await?;
    eprintln!(
        "runtime on scylla (conditional appends, first append each): {conditional:.0} commands/s; requests per command {writes}"
    );
    let (steady, latency_steady, writes_steady) = commands(&url, s, n, "add").await?;
    eprintln!(
        "runtime on scylla (conditional appends, later appends): {steady:.0} commands/s; requests per command {writes_steady}"
    );
    let plain_url = format!("{url}?conditional=false");
    let (unconditional, latency_plain, writes_plain) = commands(&plain_url, s, n, "get").await?;
    eprintln!(
        "runtime on scylla (unconditional, opt-in): {unconditional:.0} commands/s; requests per command {writes_plain}"
    );

    // Raw: prepared INSERTs of as many event rows, same concurrency.
    let j = ScyllaJournal::connect(&url, 1024).await?;
    let payload = rmp_serde::to_vec_named(&super::counter::CounterEvent::Added { by: 1 })?;
    let raw = raw_rows(&j, &ks, "", "raw", n, s.callers, &payload).await?;
    eprintln!("raw prepared INSERTs: {raw:.0} rows/s");
    // Raw conditional writes: the same rows as `INSERT … IF NOT EXISTS`
    // (one Paxos round each, the cheapest conditional write there is), same
    // concurrency: the ceiling of anything that makes one per command.
    let raw_lwt = raw_rows(&j, &ks, " IF NOT EXISTS", "raw-lwt", n, s.callers, &payload).await?;
    eprintln!("raw conditional INSERTs (IF NOT EXISTS): {raw_lwt:.0} rows/s");

    // The fence's cost: the same conditional appends with and without the
    // extra `AND fence = ?` condition, and what raising a fence costs
    // (once per entity activation in a cluster).
    let callers = s.callers.min(64);
    let (unfenced, _, unfenced_latency) = journal_appends(&j, "plain", n, callers, None).await?;
    let (fenced, raises, fenced_latency) = journal_appends(&j, "fenced", n, callers, Some(7)).await?;
    eprintln!("journal appends: {unfenced:.0}/s unfenced, {fenced:.0}/s fenced; fence raises {raises:.0}/s");

    // One hot entity: its queued commands in one conditional append, vs one per append.
    let hot = super::hot::scylla(&url, s, 64).await?;

    // Replay: one entity, unconditional appends of 1000 events.
    let plain = ScyllaJournal::connect(&format!("{url}?conditional=false"), 1024).await?;
    let key = EntityKey::new("bench-counter", "big");
    let events = s.replay_events / 10;
    let mut seq = 0;
    while seq < events {
        let k = 1000.min(events - seq);
        let batch = (0..k)
            .map(|_| NewEvent { type_name: "Added".into(), version: 1, payload: payload.clone(), metadata: vec![] })
            .collect();
        plain.append(&key, seq, batch).await?;
        seq += k;
    }
    let started = Instant::now();
    let count = plain.read(&key, 1..=u64::MAX).try_fold(0u64, |n, _| async move { Ok(n + 1) }).await?;
    let raw_read = count as f64 / started.elapsed().as_secs_f64();
    let config = NodeConfig::default().with(|c| {
        c.http.listen = None;
        c.journal.kind = JournalKind::Scylla(url.clone());
        c.journal.snapshot_every = 0;
    });
    let node = NodeBuilder::new(registry()).config(config).build().await?;
    let started = Instant::now();
    let view = node.state("bench-counter", "big").await?;
    let replay = events as f64 / started.elapsed().as_secs_f64();
    node.shutdown().await;
    anyhow::ensure!(view.state["value"] == json!(events), "replayed state is wrong");
    eprintln!("replay: {replay:.0} events/s (raw read {raw_read:.0})");
    let _ = j.session().query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ()).await;
    Ok(json!({
        "description": "durable commands/s through the runtime on the Scylla journal (1 event each; conditional = one single-partition LWT batch per command, each the first append of its entity; later_append = the same after one append per entity; unconditional = the opt-in plain batch) vs raw prepared INSERTs of as many rows and raw INSERT IF NOT EXISTS (one Paxos round each); the journal's writes per command by kind; replay of one entity vs a raw paged read",
        "commands": n, "callers": s.callers, "entities": s.entities, "replay_events": events,
        "runtime": {
            "conditional_commands_per_sec": conditional.round(), "conditional_latency": latency,
            "unconditional_commands_per_sec": unconditional.round(), "unconditional_latency": latency_plain,
            "later_append_commands_per_sec": steady.round(), "later_append_latency": latency_steady,
            "requests_per_command": { "conditional": writes, "later_append": writes_steady, "unconditional": writes_plain },
            "replay_events_per_sec": replay.round(),
        },
        "journal_fence": {
            "description": "one-event conditional appends straight to the journal, 8 entities per caller: unfenced vs with the fence condition (cluster mode), and fence raises (one per activation in a cluster)",
            "callers": callers,
            "unfenced_appends_per_sec": unfenced.round(), "unfenced_latency": unfenced_latency,
            "fenced_appends_per_sec": fenced.round(), "fenced_latency": fenced_latency,
            "ratio_fenced_to_unfenced": ratio(fenced, unfenced), "fence_raises_per_sec": raises.round(),
        },
        "hot_entity": hot,
        "baseline_raw_driver": { "inserts_per_sec": raw.round(), "conditional_inserts_per_sec": raw_lwt.round(), "paged_read_events_per_sec": raw_read.round() },
        "ratio_runtime_to_baseline": ratio(conditional, raw),
        "ratio_later_append_to_baseline": ratio(steady, raw),
        "ratio_raw_conditional_to_raw_insert": ratio(raw_lwt, raw),
        "ratio_runtime_to_raw_conditional": ratio(conditional, raw_lwt),
        "ratio_unconditional_to_baseline": ratio(unconditional, raw),
        "ratio_replay_to_raw_read": ratio(replay, raw_read),
    }))
}

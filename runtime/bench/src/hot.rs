//! One hot entity: every caller sends `add` to the same counter. The
//! runtime decides an entity's queued commands one after another and
//! writes them in one append; the baseline, in the same run, is the same
//! load with that batching off (`journal.entity_batch = 1`: one command
//! per append, one commit round trip per command), and the same number of
//! commands spread over many entities (the node's ceiling).

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tessera_runtime::NodeBuilder;
use tessera_runtime::config::{JournalKind, NodeConfig};

use super::runs::{bench_config, drive, ratio};
use super::{Sizes, registry};

/// One run: `commands` adds from `callers` callers over `entities`
/// entities; returns the JSON of the run and its rate.
pub(super) async fn one(
    config: NodeConfig,
    entities: u64,
    commands: u64,
    callers: u64,
) -> anyhow::Result<(Value, f64)> {
    let node = NodeBuilder::new(registry()).config(config).build().await?;
    let ids: Arc<Vec<String>> = Arc::new((0..entities).map(|i| format!("hot-{i}")).collect());
    drive(&node, &ids, entities, callers.min(entities), "get").await?;
    let (elapsed, latency) = drive(&node, &ids, commands, callers, "add").await?;
    let m = node.metrics().clone();
    // After the shutdown: the shards add their last appends to the histogram when they stop.
    node.shutdown().await;
    let appends = m.entity_batch.get_sample_count();
    let per_append = if appends > 0 { m.entity_batch.get_sample_sum() / appends as f64 } else { 0.0 };
    let commits = m.commit_batch.get_sample_count();
    let rate = commands as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{entities} entities, {callers} callers: {rate:.0} commands/s, {per_append:.1} commands per append, {commits} group commits"
    );
    let run = json!({
        "entities": entities, "callers": callers, "commands": commands,
        "commands_per_sec": rate.round(), "latency": latency,
        "appends": appends, "commands_per_append": (per_append * 10.0).round() / 10.0, "group_commits": commits,
    });
    Ok((run, rate))
}

/// The local journal (fsync per group commit): one entity at 64 and 256
/// callers, batched and not, and the same load over 10 000 entities.
pub(super) async fn run(s: Sizes, scratch: &Path) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new().prefix("tessera-bench-hot-").tempdir_in(scratch)?;
    let mut runs = Vec::new();
    for (i, callers) in [64, 256].into_iter().enumerate() {
        let config = |tag: &str, batch: usize| {
            bench_config(JournalKind::Local, &dir.path().join(format!("{tag}-{i}")))
                .with(|c| c.journal.entity_batch = batch)
        };
        let n = s.commands / 4;
        let (batched, rate) = one(config("batched", 256), 1, n, callers).await?;
        let (unbatched, base) = one(config("unbatched", 1), 1, n / 10, callers).await?;
        let (spread, ceiling) = one(config("spread", 256), s.entities, n, callers).await?;
        runs.push(json!({
            "callers": callers,
            "one_entity_batched": batched,
            "baseline_one_entity_one_command_per_append": unbatched,
            "baseline_spread_over_entities": spread,
            "ratio_batched_to_unbatched": ratio(rate, base),
            "ratio_batched_to_spread": ratio(rate, ceiling),
        }));
    }
    Ok(json!({
        "description": "one hot entity (every caller adds to the same counter) on the local journal, fsync per group commit: queued commands batched into one append vs one command per append (journal.entity_batch = 1), and the same load spread over many entities",
        "runs": runs,
    }))
}

/// The same on a Scylla/Cassandra journal at `callers`.
pub(super) async fn scylla(url: &str, s: Sizes, callers: u64) -> anyhow::Result<Value> {
    let config = |batch: usize| {
        NodeConfig::default().with(|c| {
            c.http.listen = None;
            c.journal.kind = JournalKind::Scylla(url.to_owned());
            c.limits.max_in_flight = 1_000_000;
            c.journal.snapshot_every = 0;
            c.journal.entity_batch = batch;
        })
    };
    let n = (s.commands / 40).max(100);
    let (batched, rate) = one(config(256), 1, n, callers).await?;
    let (unbatched, base) = one(config(1), 1, (n / 10).max(50), callers).await?;
    Ok(json!({
        "one_entity_batched": batched,
        "baseline_one_entity_one_command_per_append": unbatched,
        "ratio_batched_to_unbatched": ratio(rate, base),
    }))
}

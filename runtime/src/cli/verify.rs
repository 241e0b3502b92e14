//! `journal verify`: checks a whole journal (the node stopped, or a Scylla
//! keyspace): every event of every entity reads back (on the local
//! journal through its CRC and the storage engine's block checksums; on
//! Scylla through the row checksum), seqs run without a gap from the first
//! kept one to the last, the snapshot reads, and — for the entity types
//! this binary registers — every event decodes and the entity replays from
//! its first event. Each problem is a JSON line naming the entity and the
//! seq; the exit status is 1 when there is any.

use std::sync::Arc;

use anyhow::bail;
use futures::TryStreamExt;
use serde::Serialize;
use tessera_entities::Registry;
use tessera_journal::{EntityKey, JournalError, LocalJournal, OpenError, local::MARKER_FILE};

use super::journal::SourceArgs;
use crate::shard::{Replay, replay};

/// One problem found.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    entity_type: &'a str,
    entity_id: &'a str,
    /// The seq it concerns (0: the entity as a whole).
    seq: u64,
    problem: String,
}

/// What was checked.
#[derive(Debug, Default, Serialize)]
struct Summary {
    entity_types: usize,
    entities: u64,
    events: u64,
    replayed: u64,
    problems: u64,
}

fn seq_of(e: &JournalError) -> u64 {
    match e {
        JournalError::Corrupt { seq, .. } => *seq,
        _ => 0,
    }
}

pub(crate) async fn run(source: &SourceArgs, extra_types: &[String], registry: &Registry) -> anyhow::Result<()> {
    let mut types: Vec<String> = registry.entities().map(|e| e.type_name().to_owned()).collect();
    types.extend(extra_types.iter().cloned());
    let journal: Arc<dyn tessera_journal::Journal> = if let Some(url) = &source.scylla {
        Arc::new(tessera_journal::ScyllaJournal::connect(url, tessera_journal::DEFAULT_SHARDS).await?)
    } else if let Some(dir) = &source.data_dir {
        if !dir.join(MARKER_FILE).exists() {
            bail!("no Tessera journal at {} (no {MARKER_FILE})", dir.display());
        }
        let j = match LocalJournal::open(dir) {
            Ok(j) => j,
            Err(e @ OpenError::Locked { .. }) => bail!("{e}\nstop the node first: verify reads the whole journal"),
            Err(e) => bail!(
                "{e}\nthe storage engine cannot open the journal at all (a damaged write-ahead journal file, data/*.jnl): restore it from a backup or a replica"
            ),
        };
        types.extend(j.entity_types()?);
        Arc::new(j)
    } else {
        bail!("give --data-dir DIR (the node stopped) or --scylla URL");
    };
    types.sort();
    types.dedup();
    if types.is_empty() {
        bail!("no entity types to check: give --type NAME (a Scylla keyspace does not list its types)");
    }

    let mut sum = Summary { entity_types: types.len(), ..Summary::default() };
    let bar = indicatif::ProgressBar::new_spinner();
    let report = |p: Problem<'_>, sum: &mut Summary| -> anyhow::Result<()> {
        sum.problems += 1;
        bar.suspend(|| println!("{}", serde_json::to_string(&p).unwrap_or_default()));
        Ok(())
    };
    for t in &types {
        let entity = registry.entity(t);
        let mut list = journal.entities(t);
        loop {
            let info = match list.try_next().await {
                Ok(Some(i)) => i,
                Ok(None) => break,
                Err(e) => {
                    let problem = format!("the entity list cannot be read further: {e}");
                    report(Problem { entity_type: t, entity_id: "", seq: seq_of(&e), problem }, &mut sum)?;
                    break;
                }
            };
            sum.entities += 1;
            bar.set_message(format!(
                "{t}: {} entities, {} events, {} problems",
                sum.entities, sum.events, sum.problems
            ));
            bar.tick();
            let key = EntityKey::new(t.as_str(), info.entity_id.as_str());
            let id = info.entity_id.as_str();
            // The entity's own last seq too: a local journal's listing
            // falls back to the entity's index row when its last event
            // cannot be read.
            let (last_seq, mut readable) = match journal.last_seq(&key).await {
                Ok(l) => (l.max(info.last_seq), true),
                Err(e) => {
                    let problem = format!("its last event cannot be read: {e}");
                    report(Problem { entity_type: t, entity_id: id, seq: info.last_seq + 1, problem }, &mut sum)?;
                    (info.last_seq, false)
                }
            };
            // Every event, in order, without a gap.
            let mut expect = info.deleted_to + 1;
            let mut events = journal.read(&key, expect..=last_seq);
            loop {
                match events.try_next().await {
                    Ok(Some(ev)) => {
                        if ev.seq != expect {
                            let problem = format!(
                                "seq {} follows {}: events {expect}..{} are missing",
                                ev.seq,
                                expect - 1,
                                ev.seq - 1
                            );
                            report(Problem { entity_type: t, entity_id: id, seq: expect, problem }, &mut sum)?;
                            readable = false;
                        }
                        expect = ev.seq + 1;
                        sum.events += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        report(
                            Problem {
                                entity_type: t,
                                entity_id: id,
                                seq: seq_of(&e).max(expect),
                                problem: e.to_string(),
                            },
                            &mut sum,
                        )?;
                        readable = false;
                        break;
                    }
                }
            }
            if readable && expect != last_seq + 1 {
                let problem = format!("the journal says the last seq is {last_seq}, the events end at {}", expect - 1);
                report(Problem { entity_type: t, entity_id: id, seq: expect, problem }, &mut sum)?;
                readable = false;
            }
            if let Err(e) = journal.load_snapshot(&key).await {
                report(Problem { entity_type: t, entity_id: id, seq: 0, problem: format!("snapshot: {e}") }, &mut sum)?;
            }
            // Every event through the entity's own code.
            if let (Some(entity), true, 0) = (entity, readable, info.deleted_to) {
                match replay(entity, &journal, &key, Replay::AsOf(last_seq)).await {
                    Ok(_) => sum.replayed += 1,
                    Err(e) => {
                        let problem = format!("does not replay: {e}");
                        report(Problem { entity_type: t, entity_id: id, seq: 0, problem }, &mut sum)?;
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    eprintln!("{}", serde_json::to_string(&sum)?);
    if sum.problems > 0 {
        bail!("{} problems in {} entities ({} events checked)", sum.problems, sum.entities, sum.events);
    }
    eprintln!(
        "journal verified: {} entities, {} events of {} types, no problem",
        sum.entities, sum.events, sum.entity_types
    );
    Ok(())
}

//! `journal export` and `journal import`: a whole journal (or some entity
//! types, or some shards) to a file and into another journal, local or
//! Scylla, verified by a checksum per entity.
//!
//! The file is JSON lines: a header, then per entity its events in order
//! (type, version, payload and metadata byte for byte, base64), its latest
//! snapshot if any, and a closing `entity` line with the event count and a
//! SHA-256 over every event's seq, type, version, payload and metadata.
//! Import appends the events with the same seqs into a journal where the
//! entity does not exist yet (an entity already there is refused, nothing
//! written to it), then reads them back and compares the checksum.
//!
//! What does not travel: commit timestamps (the target stamps its own
//! commit time; the source's are in the file), idempotency records (a
//! retry of an old command after a move is not recognised), feed offsets
//! (the target's feed numbers the imported events anew, so projections on
//! the target see them). An entity whose prefix was deleted (`delete_to`)
//! cannot be imported with the same seqs and is reported, not skipped
//! silently.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_entities::Registry;
use tessera_journal::{
    AppendRequest, EntityKey, Journal, LocalJournal, NewEvent, OpenError, PersistedEvent, Snapshot, local::MARKER_FILE,
};

/// The file's first line.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    shards: u32,
    exported_at_ms: i64,
}

const FORMAT: &str = "tessera-journal-export";
const VERSION: u32 = 1;

/// One line after the header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Event {
        entity_type: String,
        entity_id: String,
        seq: u64,
        timestamp_ms: i64,
        event_type: String,
        version: u32,
        payload: String,
        metadata: String,
    },
    Snapshot {
        entity_type: String,
        entity_id: String,
        seq: u64,
        version: u32,
        timestamp_ms: i64,
        payload: String,
    },
    Entity {
        entity_type: String,
        entity_id: String,
        last_seq: u64,
        events: u64,
        sha256: String,
    },
}

/// The running checksum of an entity's events.
#[derive(Default)]
struct Sum(Sha256);

impl Sum {
    fn add(&mut self, seq: u64, event_type: &str, version: u32, payload: &[u8], metadata: &[u8]) {
        let h = &mut self.0;
        h.update(seq.to_le_bytes());
        for part in [event_type.as_bytes(), payload, metadata] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(version.to_le_bytes());
    }
    fn hex(self) -> String {
        self.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A journal to read from or write to: `--data-dir` or `--scylla`.
pub(crate) async fn open(data_dir: Option<&Path>, scylla: Option<&str>, create: bool) -> anyhow::Result<Opened> {
    match (data_dir, scylla) {
        (_, Some(url)) => Ok(Opened::Scylla(Arc::new(
            tessera_journal::ScyllaJournal::connect(url, tessera_journal::DEFAULT_SHARDS).await?,
        ))),
        (Some(dir), None) => {
            if !create && !dir.join(MARKER_FILE).exists() {
                bail!("no Tessera journal at {} (no {MARKER_FILE})", dir.display());
            }
            match LocalJournal::open(dir) {
                Ok(j) => Ok(Opened::Local(j)),
                Err(e @ OpenError::Locked { .. }) => Err(anyhow::anyhow!("{e}\nstop the node first")),
                Err(e) => Err(e.into()),
            }
        }
        (None, None) => bail!("give --data-dir DIR (the node stopped) or --scylla URL"),
    }
}

/// An opened journal.
pub(crate) enum Opened {
    Local(LocalJournal),
    Scylla(Arc<tessera_journal::ScyllaJournal>),
}

impl Opened {
    fn journal(&self) -> &dyn Journal {
        match self {
            Self::Local(j) => j,
            Self::Scylla(j) => j.as_ref(),
        }
    }
    /// The types to move: the ones asked for; else a local journal's own,
    /// or (Scylla lists no types) the binary's registered ones.
    fn types(&self, asked: &[String], registry: &Registry) -> anyhow::Result<Vec<String>> {
        let mut t: Vec<String> = if !asked.is_empty() {
            asked.to_vec()
        } else if let Self::Local(j) = self {
            j.entity_types()?
        } else {
            registry.entities().map(|e| e.type_name().to_owned()).collect()
        };
        t.sort();
        t.dedup();
        if t.is_empty() {
            bail!("no entity types to export: give them by name");
        }
        Ok(t)
    }
}

/// What `export` did.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ExportSummary {
    entity_types: usize,
    entities: u64,
    events: u64,
    snapshots: u64,
    skipped_deleted_prefix: u64,
}

pub(crate) async fn export(
    src: &Opened,
    types: &[String],
    shards: &[u32],
    out: &Path,
    registry: &Registry,
) -> anyhow::Result<ExportSummary> {
    let j = src.journal();
    let types = src.types(types, registry)?;
    let file = std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let header =
        Header { format: FORMAT.into(), version: VERSION, shards: j.shards(), exported_at_ms: crate::now_ms() };
    writeln!(w, "{}", serde_json::to_string(&header)?)?;
    let bar = indicatif::ProgressBar::new_spinner();
    let mut sum = ExportSummary { entity_types: types.len(), ..ExportSummary::default() };
    for t in &types {
        let mut list = j.entities(t);
        while let Some(info) = list.try_next().await? {
            let key = EntityKey::new(t.clone(), info.entity_id.clone());
            if !shards.is_empty() && !shards.contains(&key.shard(j.shards())) {
                continue;
            }
            if info.deleted_to > 0 {
                // Not importable with the same seqs: say so.
                bar.suspend(|| {
                    eprintln!("skipped {t}/{}: events up to {} were deleted", info.entity_id, info.deleted_to)
                });
                sum.skipped_deleted_prefix += 1;
                continue;
            }
            let mut check = Sum::default();
            let mut n = 0u64;
            let mut events = j.read(&key, 1..=u64::MAX);
            while let Some(e) = events.try_next().await? {
                check.add(e.seq, &e.type_name, e.version, &e.payload, &e.metadata);
                n += 1;
                let line = Line::Event {
                    entity_type: t.clone(),
                    entity_id: info.entity_id.clone(),
                    seq: e.seq,
                    timestamp_ms: e.timestamp_ms,
                    event_type: e.type_name,
                    version: e.version,
                    payload: B64.encode(&e.payload),
                    metadata: B64.encode(&e.metadata),
                };
                writeln!(w, "{}", serde_json::to_string(&line)?)?;
            }
            if let Some(s) = j.load_snapshot(&key).await? {
                let line = Line::Snapshot {
                    entity_type: t.clone(),
                    entity_id: info.entity_id.clone(),
                    seq: s.seq,
                    version: s.version,
                    timestamp_ms: s.timestamp_ms,
                    payload: B64.encode(&s.payload),
                };
                writeln!(w, "{}", serde_json::to_string(&line)?)?;
                sum.snapshots += 1;
            }
            let line = Line::Entity {
                entity_type: t.clone(),
                entity_id: info.entity_id.clone(),
                last_seq: info.last_seq,
                events: n,
                sha256: check.hex(),
            };
            writeln!(w, "{}", serde_json::to_string(&line)?)?;
            sum.entities += 1;
            sum.events += n;
            bar.set_message(format!("{} entities, {} events", sum.entities, sum.events));
            bar.tick();
        }
    }
    w.flush()?;
    bar.finish_and_clear();
    Ok(sum)
}

/// What `import` did.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ImportSummary {
    entities: u64,
    events: u64,
    snapshots: u64,
    verified: u64,
    pub(crate) refused_existing: u64,
}

/// Events per append on import.
const BATCH: usize = 256;

pub(crate) async fn import(input: &Path, dst: &Opened) -> anyhow::Result<ImportSummary> {
    let j = dst.journal();
    let file = std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let header: Header = serde_json::from_str(&first)
        .with_context(|| format!("{}: not a Tessera journal export (no header line)", input.display()))?;
    if header.format != FORMAT {
        bail!("{}: format `{}`, not {FORMAT}", input.display(), header.format);
    }
    if header.version > VERSION {
        bail!(
            "{}: export format version {} is newer than the {VERSION} this build reads: upgrade Tessera",
            input.display(),
            header.version
        );
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let mut sum = ImportSummary::default();
    let mut pending: Vec<NewEvent> = Vec::new();
    let mut written = 0u64; // the current entity's last written seq
    let mut current: Option<EntityKey> = None;
    let mut snapshot: Option<Snapshot> = None;
    let mut refused = false;
    for (i, line) in lines.enumerate() {
        let line = line?;
        let at = || format!("{} line {}", input.display(), i + 2);
        let parsed: Line = serde_json::from_str(&line).with_context(at)?;
        match parsed {
            Line::Event { entity_type, entity_id, seq, event_type, version, payload, metadata, .. } => {
                let key = EntityKey::new(entity_type, entity_id);
                if current.as_ref() != Some(&key) {
                    current = Some(key.clone());
                    written = 0;
                    refused = j.last_seq(&key).await? > 0;
                    if refused {
                        bar.suspend(|| eprintln!("refused {key}: it already has events in the target journal"));
                        sum.refused_existing += 1;
                    }
                }
                if refused {
                    continue;
                }
                if seq != written + pending.len() as u64 + 1 {
                    bail!("{}: {key} seq {seq} out of order", at());
                }
                pending.push(NewEvent {
                    type_name: event_type,
                    version,
                    payload: B64.decode(payload).with_context(at)?,
                    metadata: B64.decode(metadata).with_context(at)?,
                });
                if pending.len() >= BATCH {
                    written = flush(j, &key, written, &mut pending).await?;
                }
            }
            Line::Snapshot { seq, version, timestamp_ms, payload, .. } => {
                snapshot =
                    Some(Snapshot { seq, version, timestamp_ms, payload: B64.decode(payload).with_context(at)? });
            }
            Line::Entity { entity_type, entity_id, events, sha256, .. } => {
                let key = EntityKey::new(entity_type, entity_id);
                let was_refused = refused && current.as_ref() == Some(&key);
                current = None;
                refused = false;
                if was_refused {
                    pending.clear();
                    snapshot = None;
                    continue;
                }
                written = flush(j, &key, written, &mut pending).await?;
                if written != events {
                    bail!("{}: {key} has {events} events in the file, {written} were written", at());
                }
                if let Some(s) = snapshot.take() {
                    j.save_snapshot(&key, s).await?;
                    sum.snapshots += 1;
                }
                // Read back what was written and compare.
                let mut check = Sum::default();
                let mut read = j.read(&key, 1..=u64::MAX);
                while let Some(e) = read.try_next().await? {
                    let PersistedEvent { seq, type_name, version, payload, metadata, .. } = e;
                    check.add(seq, &type_name, version, &payload, &metadata);
                }
                let got = check.hex();
                if got != sha256 {
                    bail!("{key}: checksum after import {got} differs from the export's {sha256}");
                }
                sum.entities += 1;
                sum.events += events;
                sum.verified += 1;
                bar.set_message(format!("{} entities, {} events", sum.entities, sum.events));
                bar.tick();
            }
        }
    }
    if let Some(key) = current {
        bail!(
            "{}: ends inside {key} (no closing entity line): a truncated export; {written} of its events were written \
             (an entity over {BATCH} events is written in batches): move it again from a whole export into a fresh target",
            input.display()
        );
    }
    bar.finish_and_clear();
    Ok(sum)
}

async fn flush(j: &dyn Journal, key: &EntityKey, written: u64, pending: &mut Vec<NewEvent>) -> anyhow::Result<u64> {
    if pending.is_empty() {
        return Ok(written);
    }
    let events = std::mem::take(pending);
    let n = events.len() as u64;
    j.commit(key, AppendRequest::new(written, events)).await.with_context(|| format!("appending to {key}"))?;
    Ok(written + n)
}

/// The paths `export`/`import` take, for the CLI.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The target: a local journal directory (created if absent; no node running on it).
    #[arg(long = "to-data-dir", conflicts_with = "to_scylla")]
    pub to_data_dir: Option<PathBuf>,
    /// The target: a migrated Scylla/Cassandra keyspace, scylla://[user:password@]host:port/keyspace.
    #[arg(long = "to-scylla")]
    pub to_scylla: Option<String>,
}

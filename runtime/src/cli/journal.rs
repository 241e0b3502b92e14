//! `journal ...`: inspect journals without a running node (a data dir,
//! opened read-write under its lock, so only while the node is stopped) or
//! through a running node's HTTP API. Output is JSON lines.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::TryStreamExt;
use tessera_entities::Registry;
use tessera_journal::{EntityKey, Journal, LocalJournal, OpenError, local::MARKER_FILE};

use super::send::{base_url, segment};
use crate::inspect::event_body;
use crate::shard::{Replay, replay};
use crate::wire::{EntitiesBody, EntityBody, ErrorBody, EventBody, EventsBody, StateBody};

/// Where to read a journal from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// A local journal directory (the node must be stopped).
    #[arg(long, conflicts_with = "http")]
    pub data_dir: Option<PathBuf>,
    /// A running node's HTTP address.
    #[arg(long, conflicts_with = "scylla")]
    pub http: Option<String>,
    /// A Scylla/Cassandra journal: scylla://[user:password@]host:port/keyspace.
    #[arg(long, conflicts_with = "data_dir")]
    pub scylla: Option<String>,
}

/// `journal` subcommands.
#[derive(Debug, Subcommand)]
pub enum JournalCmd {
    /// List the entities of a type.
    Entities {
        /// Entity type.
        entity_type: String,
        /// Where the journal is.
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Print an entity's events as JSON lines (seq, time, type, version, event).
    Events {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// First seq.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last seq.
        #[arg(long)]
        to: Option<u64>,
        /// Where the journal is.
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Rebuild an entity's state (at a seq: time travel). Without the entity's
    /// types registered in this binary, prints the raw events instead.
    State {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Rebuild as of this seq.
        #[arg(long)]
        at: Option<u64>,
        /// Where the journal is.
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Print an entity's events, then follow new ones.
    Tail {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// First seq.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Poll interval in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// Where the journal is.
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Create or upgrade the schema of a Scylla/Cassandra keyspace (run once
    /// before nodes use it; nodes never change the schema).
    Migrate {
        /// scylla://[user:password@]host:port/keyspace
        #[arg(long)]
        scylla: String,
        /// The keyspace's replication, e.g. "{'class': 'NetworkTopologyStrategy', 'dc1': 3}".
        #[arg(long, default_value = "{'class': 'SimpleStrategy', 'replication_factor': 1}")]
        replication: String,
        /// Events per partition, fixed for the life of the keyspace.
        #[arg(long, default_value_t = tessera_journal::scylla::schema::DEFAULT_BUCKET_SIZE)]
        bucket_size: i64,
    },
    /// Check a whole journal (node stopped, or a Scylla keyspace): every
    /// event readable through its checksum, no gaps, and with this binary's
    /// entity types every entity replays. Problems are JSON lines naming the
    /// entity and seq; exit status 1 when there is any.
    Verify {
        /// Also check this entity type (repeatable; a local journal lists its
        /// own, a Scylla keyspace does not).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Where the journal is (`--data-dir` or `--scylla`).
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Export a whole journal, or some entity types or shards, to a JSONL
    /// file: every event byte for byte, the latest snapshots, a checksum per
    /// entity (the node stopped, for a local journal).
    Export {
        /// Entity types (default: every type of a local journal; for Scylla, this binary's registered types).
        types: Vec<String>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Only entities of these shards (repeatable).
        #[arg(long = "shard")]
        shards: Vec<u32>,
        /// A local journal directory.
        #[arg(long, conflicts_with = "scylla")]
        data_dir: Option<PathBuf>,
        /// A Scylla/Cassandra journal: scylla://[user:password@]host:port/keyspace.
        #[arg(long)]
        scylla: Option<String>,
    },
    /// Import an export into another journal (local or Scylla), checking
    /// each entity's checksum after it is written; an entity that already
    /// has events there is refused and reported.
    Import {
        /// The file `journal export` wrote.
        file: PathBuf,
        /// Where to write.
        #[command(flatten)]
        target: super::transfer::Target,
    },
}

/// An opened journal source.
pub enum Source {
    /// A local data dir.
    Local(Arc<dyn Journal>),
    /// A node's HTTP API.
    Http {
        /// `http://host:port`.
        base: String,
        /// The client.
        client: reqwest::Client,
    },
}

impl Source {
    /// Opens what the flags name.
    pub async fn open(args: &SourceArgs) -> anyhow::Result<Self> {
        if let Some(url) = &args.scylla {
            let j = tessera_journal::ScyllaJournal::connect(url, tessera_journal::DEFAULT_SHARDS).await?;
            return Ok(Self::Local(Arc::new(j)));
        }
        match (&args.data_dir, &args.http) {
            (Some(dir), _) => {
                if !dir.join(MARKER_FILE).exists() {
                    bail!("no Tessera journal at {} (no {MARKER_FILE})", dir.display());
                }
                match LocalJournal::open(dir) {
                    Ok(j) => Ok(Self::Local(Arc::new(j))),
                    Err(e @ OpenError::Locked { .. }) => {
                        Err(anyhow::anyhow!("{e}\nthe node is running: inspect it with --http ADDR instead"))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            (None, Some(http)) => Ok(Self::Http { base: base_url(http), client: super::http_client()? }),
            (None, None) => bail!("give --data-dir DIR (node stopped), --http ADDR (node running) or --scylla URL"),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let Self::Http { base, client } = self else { bail!("not an HTTP source") };
        let url = format!("{base}{path}");
        let resp = client.get(&url).send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.with_context(|| format!("cannot read {url}"))?;
        if !status.is_success() {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => bail!("{url}: HTTP {status}: {} ({})", e.error.message, e.error.kind),
                Err(_) => bail!("{url}: HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            }
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{url}: not the expected JSON"))
    }

    /// The entities of a type.
    pub async fn entities(&self, entity_type: &str) -> anyhow::Result<Vec<EntityBody>> {
        match self {
            Self::Local(j) => Ok(j
                .entities(entity_type)
                .map_ok(|e| EntityBody { id: e.entity_id, last_seq: e.last_seq, deleted_to: e.deleted_to })
                .try_collect()
                .await?),
            Self::Http { .. } => {
                let mut out = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let q = after.as_deref().map(|a| format!("?after={}", segment(a))).unwrap_or_default();
                    let page: EntitiesBody = self.get(&format!("/v1/entities/{}{q}", segment(entity_type))).await?;
                    out.extend(page.entities);
                    match page.next_after {
                        Some(a) => after = Some(a),
                        None => return Ok(out),
                    }
                }
            }
        }
    }

    /// Events `from..=to`, calling `each` per event in order.
    pub async fn events(
        &self,
        entity_type: &str,
        entity_id: &str,
        from: u64,
        to: u64,
        mut each: impl FnMut(EventBody) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut last = from.saturating_sub(1);
        match self {
            Self::Local(j) => {
                let mut s = j.read(&EntityKey::new(entity_type, entity_id), from..=to);
                while let Some(e) = s.try_next().await? {
                    last = e.seq;
                    each(event_body(&e))?;
                }
            }
            Self::Http { .. } => {
                let mut next = Some(from);
                while let Some(f) = next {
                    let page: EventsBody = self
                        .get(&format!(
                            "/v1/entities/{}/{}/events?from={f}&to={to}&limit=1000",
                            segment(entity_type),
                            segment(entity_id)
                        ))
                        .await?;
                    for e in page.events {
                        last = e.seq;
                        each(e)?;
                    }
                    next = page.next_from;
                }
            }
        }
        Ok(last)
    }
}

/// What `journal state` prints for a type this binary does not know.
#[derive(serde::Serialize)]
struct RawEvents<'a> {
    entity_type: &'a str,
    entity_id: &'a str,
    note: String,
    events: Vec<EventBody>,
}

fn print_line(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    match std::io::stdout().lock().write_all(&line) {
        // The reader went away (`| head`): stop quietly, like other Unix tools.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

pub(crate) async fn run(cmd: JournalCmd, registry: Registry) -> anyhow::Result<()> {
    match cmd {
        JournalCmd::Entities { entity_type, source } => {
            for e in Source::open(&source).await?.entities(&entity_type).await? {
                print_line(&e)?;
            }
        }
        JournalCmd::Events { entity_type, entity_id, from, to, source } => {
            let src = Source::open(&source).await?;
            src.events(&entity_type, &entity_id, from, to.unwrap_or(u64::MAX), |e| print_line(&e)).await?;
        }
        JournalCmd::State { entity_type, entity_id, at, source } => {
            let src = Source::open(&source).await?;
            state(&src, &registry, &entity_type, &entity_id, at).await?;
        }
        JournalCmd::Tail { entity_type, entity_id, from, limit, interval_ms, source } => {
            let src = Source::open(&source).await?;
            let mut next = from;
            let mut printed = 0u64;
            loop {
                let last = src
                    .events(&entity_type, &entity_id, next, u64::MAX, |e| {
                        if limit.is_none_or(|l| printed < l) {
                            printed += 1;
                            print_line(&e)?;
                        }
                        Ok(())
                    })
                    .await?;
                next = last + 1;
                if limit.is_some_and(|l| printed >= l) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
        }
        JournalCmd::Migrate { scylla, replication, bucket_size } => {
            let other_tables = vec![crate::results::ScyllaResultStore::table()];
            let opts = tessera_journal::scylla::MigrateOptions { replication, bucket_size, other_tables };
            let applied = tessera_journal::ScyllaJournal::migrate(&scylla, &opts).await?;
            if applied.is_empty() {
                eprintln!("schema already at version {}", tessera_journal::scylla::SCHEMA_VERSION);
            } else {
                eprintln!("applied schema versions {applied:?}");
            }
        }
        JournalCmd::Verify { types, source } => super::verify::run(&source, &types, &registry).await?,
        JournalCmd::Export { types, out, shards, data_dir, scylla } => {
            let src = super::transfer::open(data_dir.as_deref(), scylla.as_deref(), false).await?;
            let sum = super::transfer::export(&src, &types, &shards, &out, &registry).await?;
            eprintln!("exported to {}", out.display());
            print_line(&sum)?;
        }
        JournalCmd::Import { file, target } => {
            let dst = super::transfer::open(target.to_data_dir.as_deref(), target.to_scylla.as_deref(), true).await?;
            let sum = super::transfer::import(&file, &dst).await?;
            print_line(&sum)?;
            if sum.refused_existing > 0 {
                bail!("{} entities already had events in the target and were not imported", sum.refused_existing);
            }
        }
    }
    Ok(())
}

async fn state(
    src: &Source,
    registry: &Registry,
    entity_type: &str,
    entity_id: &str,
    at: Option<u64>,
) -> anyhow::Result<()> {
    match src {
        Source::Http { .. } => {
            let q = at.map(|s| format!("?at={s}")).unwrap_or_default();
            let body: StateBody =
                src.get(&format!("/v1/entities/{}/{}{q}", segment(entity_type), segment(entity_id))).await?;
            print_line(&body)
        }
        Source::Local(j) => match registry.entity(entity_type) {
            Some(entity) => {
                let key = EntityKey::new(entity_type, entity_id);
                let r = replay(entity, j, &key, at.map_or(Replay::Latest, Replay::AsOf)).await?;
                let (entity_type, entity_id) = (entity_type.to_owned(), entity_id.to_owned());
                print_line(&crate::inspect::state_body(entity_type, entity_id, r))
            }
            None => {
                let mut events = Vec::new();
                src.events(entity_type, entity_id, 1, at.unwrap_or(u64::MAX), |e| {
                    events.push(e);
                    Ok(())
                })
                .await?;
                print_line(&RawEvents {
                    entity_type,
                    entity_id,
                    note: format!(
                        "entity type `{entity_type}` is not registered in this binary: showing the raw events; run the application's own binary to rebuild its state"
                    ),
                    events,
                })
            }
        },
    }
}

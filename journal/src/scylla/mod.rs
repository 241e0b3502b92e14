//! The ScyllaDB journal (Cassandra 5 speaks the same CQL and is what the
//! tests run against), on the `scylla` driver: prepared statements,
//! token-aware routing, paged reads, lightweight transactions.
//!
//! **Layout.** `events ((entity_type, entity_id, bucket), seq)`: one
//! partition per bucket of events, so no partition grows without bound. An
//! append goes whole into the partition `bucket = (expected_seq + 1) / B`
//! (B = the keyspace's bucket size, appends of at most B events), even when
//! its last seqs pass the next bucket's first: each append is one partition,
//! so it is one atomic batch. Partition statics hold the head: `last_seq` of
//! the events written in it, `sealed` once the next partition is opened, and
//! a snapshot written atomically with an append.
//!
//! **Why no seq is ever committed twice.** Every append is a single-partition
//! conditional batch: `IF last_seq = expected AND sealed = null` on its
//! partition. When the expected seq's events sit in the previous partition
//! (the first append of a bucket), the writer first seals that partition
//! (`SET sealed = b IF last_seq = expected`: it fails if anyone appended
//! there since), then opens the new one `IF last_seq = null` (one of several
//! racing writers wins). A sealed partition takes no more appends. Paxos
//! (serial consistency LOCAL_SERIAL by default) orders the conditions, so
//! of any writers racing for a seq exactly one commits it.
//!
//! **Why a stale owner's late write cannot land (the fence).** The static
//! `fence` of the head partition holds the lease epoch of the entity's
//! current owner. A new owner raises it before it reads the entity
//! ([`Journal::raise_fence`]: a conditional update of the unsealed head
//! partition, or — when the head is sealed and its successor not yet
//! opened — opening the successor empty with the fence, so a writer that
//! sealed before the raise cannot open it any more). Every fenced append
//! adds `AND fence = epoch` to its conditions (a new partition is only
//! opened after sealing the previous one under that condition), so once the
//! raise committed, a write from an older epoch fails with
//! [`AppendError::Fenced`]; a write that landed before the raise is seen by
//! the new owner's read, which follows the raise. Unfenced appends (one node
//! owning everything) do not check the fence.

mod append;
mod bucket;
mod config;
mod counts;
mod feed;
mod purge;
mod read;
mod rows;
pub mod schema;
pub mod server;
mod session;
mod statements;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use scylla::client::session::Session;

pub use config::{ScyllaConfig, UrlError};
pub use counts::RequestCounts;
pub use schema::{MigrateOptions, SCHEMA_VERSION};
pub use server::Server;
use session::open_err;
use statements::Statements;

use crate::error::{AppendError, JournalError, OpenError};
use crate::journal::{EntityStream, EventStream, Journal, ShardStream};
use crate::types::{AppendAck, AppendRequest, EntityKey, FeedBounds, Snapshot};

/// Rows per page of every paged read.
const PAGE: usize = 1024;

/// The Scylla/Cassandra journal. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaJournal {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    st: Statements,
    config: ScyllaConfig,
    bucket: u64,
    shards: u32,
    /// Known head partition per entity (a lower bound: partitions only move forward).
    heads: Mutex<HashMap<EntityKey, u64>>,
    /// The feeds this node writes.
    units: feed::Units,
    /// Feed entry writes in flight (after their commits): an append waits
    /// for a slot, so the background writes cannot pile up on the server.
    entry_writes: Arc<tokio::sync::Semaphore>,
    /// Requests sent, by kind.
    counts: counts::Counters,
}

impl ScyllaJournal {
    /// Connects to the keyspace a URL names (it must have been migrated).
    pub async fn connect(url: &str, shards: u32) -> Result<Self, OpenError> {
        let c = ScyllaConfig::from_url(url)
            .map_err(|e| OpenError::Io { path: e.url.clone(), message: e.reason.clone() })?;
        Self::connect_config(c, shards).await
    }

    /// Connects with parsed settings.
    pub async fn connect_config(config: ScyllaConfig, shards: u32) -> Result<Self, OpenError> {
        let session = session::session(&config).await?;
        let ks = &config.keyspace;
        let (version, bucket) = match schema::installed(&session, ks).await.map_err(|e| open_err(&config, e))? {
            Some(v) => v,
            None => {
                return Err(open_err(
                    &config,
                    format!(
                        "keyspace `{ks}` has no Tessera schema: run `tessera journal migrate --scylla scylla://HOST:PORT/{ks}` first"
                    ),
                ));
            }
        };
        if version > SCHEMA_VERSION {
            return Err(OpenError::Incompatible {
                path: format!("scylla keyspace {ks}"),
                format: "tessera-scylla-journal".into(),
                found: version as u32,
                supported: SCHEMA_VERSION as u32,
            });
        }
        if version < SCHEMA_VERSION {
            return Err(open_err(
                &config,
                format!(
                    "keyspace `{ks}` has schema version {version}, older than the {SCHEMA_VERSION} this build needs: \
                     run `tessera journal migrate --scylla scylla://HOST:PORT/{ks}` to upgrade it"
                ),
            ));
        }
        let server = server::detect(&session).await.map_err(|e| open_err(&config, e))?;
        server::check_conditional_writes(&session, ks, server).await.map_err(|e| open_err(&config, e))?;
        tracing::debug!(?server, keyspace = %ks, "journal keyspace takes conditional writes");
        let st = Statements::prepare(&session, &config).await.map_err(|e| open_err(&config, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                st,
                bucket: bucket.max(1) as u64,
                shards,
                heads: Mutex::new(HashMap::new()),
                units: feed::Units::default(),
                entry_writes: Arc::new(tokio::sync::Semaphore::new(feed::MAX_ENTRY_WRITES)),
                counts: counts::Counters::default(),
                config,
            }),
        })
    }

    /// Creates or upgrades the schema of the keyspace a URL names.
    pub async fn migrate(url: &str, opts: &MigrateOptions) -> Result<Vec<i32>, OpenError> {
        let c = ScyllaConfig::from_url(url)
            .map_err(|e| OpenError::Io { path: e.url.clone(), message: e.reason.clone() })?;
        let s = session::session(&c).await?;
        schema::migrate(&s, &c.keyspace, opts).await.map_err(|e| open_err(&c, e))
    }

    /// The driver session (shared with the result store).
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// The settings.
    pub fn config(&self) -> &ScyllaConfig {
        &self.inner.config
    }

    /// Events per partition.
    pub fn bucket_size(&self) -> u64 {
        self.inner.bucket
    }

    /// The requests this journal has sent so far, by kind.
    pub fn request_counts(&self) -> RequestCounts {
        self.inner.counts.read()
    }

    fn known_head(&self, key: &EntityKey) -> u64 {
        self.inner.heads.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }

    fn learn_head(&self, key: &EntityKey, bucket: u64) {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        let h = heads.entry(key.clone()).or_insert(bucket);
        *h = (*h).max(bucket);
    }
}

#[async_trait::async_trait]
impl Journal for ScyllaJournal {
    async fn commit(&self, entity: &EntityKey, request: AppendRequest) -> Result<AppendAck, AppendError> {
        let (expected_seq, n) = (request.expected_seq, request.events.len() as u64);
        let (bucket, ts) = self.commit_fed(entity, request).await?;
        self.learn_head(entity, bucket);
        // The entity index is a derived view, written after the commit.
        if expected_seq == 0 {
            self.index_entity(entity, entity.shard(self.inner.shards) as i32).await;
        }
        Ok(AppendAck { first_seq: expected_seq + 1, last_seq: expected_seq + n, timestamp_ms: ts })
    }

    async fn raise_fence(&self, entity: &EntityKey, epoch: u64) -> Result<(), AppendError> {
        self.raise_fence_inner(entity, epoch).await
    }

    fn read(&self, entity: &EntityKey, range: RangeInclusive<u64>) -> EventStream {
        self.read_events(entity, range)
    }

    async fn last_seq(&self, entity: &EntityKey) -> Result<u64, JournalError> {
        Ok(self.head(entity).await?.1)
    }

    async fn save_snapshot(&self, entity: &EntityKey, snapshot: Snapshot) -> Result<(), JournalError> {
        self.save_snapshot_inner(entity, snapshot).await
    }

    async fn load_snapshot(&self, entity: &EntityKey) -> Result<Option<Snapshot>, JournalError> {
        self.load_snapshot_inner(entity).await
    }

    fn events_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream {
        self.feed(entity_type, shard, after_offset, false)
    }

    fn internal_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream {
        self.feed(entity_type, shard, after_offset, true)
    }

    async fn feed_bounds(&self, entity_type: &str, shard: u32) -> Result<FeedBounds, JournalError> {
        self.bounds(entity_type, shard).await
    }

    async fn open_feed(&self, entity_type: &str, shard: u32, epoch: u64) -> Result<(), JournalError> {
        match self.unit_feed((entity_type.to_owned(), shard), Some(epoch)).await {
            // A newer owner opened it already: nothing left for us to settle.
            Ok(_) | Err(AppendError::Fenced { .. }) => Ok(()),
            Err(AppendError::Journal(e)) => Err(e),
            Err(e) => Err(JournalError::Invalid(e.to_string())),
        }
    }

    async fn find_key(&self, entity: &EntityKey, key: &str) -> Result<Option<u64>, JournalError> {
        self.remembered(entity, key).await
    }

    async fn delete_to(&self, entity: &EntityKey, seq: u64) -> Result<(), JournalError> {
        self.delete_to_inner(entity, seq).await
    }

    async fn purge(&self, entity: &EntityKey) -> Result<(), JournalError> {
        self.purge_inner(entity).await
    }

    fn entities(&self, entity_type: &str) -> EntityStream {
        self.list_entities(entity_type)
    }

    fn shards(&self) -> u32 {
        self.inner.shards
    }
}

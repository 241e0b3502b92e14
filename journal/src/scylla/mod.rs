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

mod config;
pub mod schema;
mod statements;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

pub use config::{ScyllaConfig, UrlError};
pub use schema::{MigrateOptions, SCHEMA_VERSION};
use statements::Statements;

use crate::error::{AppendError, JournalError, OpenError};
use crate::journal::{EntityStream, EventStream, Journal, ShardStream};
use crate::memory::now_ms;
use crate::paging::paged;
use crate::types::{AppendAck, AppendRequest, EntityInfo, EntityKey, NewEvent, PersistedEvent, ShardEvent, Snapshot};

const HOUR_OFFSETS: u64 = 3600 * 1_000_000 * 1000;
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
    counter: AtomicU64,
}

fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(format!("scylla: {e}"))
}

fn open_err(c: &ScyllaConfig, e: impl std::fmt::Display) -> OpenError {
    OpenError::Io { path: format!("scylla://{}/{}", c.nodes.join(","), c.keyspace), message: e.to_string() }
}

fn tls_config(c: &ScyllaConfig, ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, OpenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| open_err(c, format!("tls_ca {}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| open_err(c, format!("tls_ca {}: {e}", ca.display())))?;
        roots.add(cert).map_err(|e| open_err(c, format!("tls_ca {}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| open_err(c, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn session(c: &ScyllaConfig) -> Result<Session, OpenError> {
    let mut b = SessionBuilder::new().known_nodes(&c.nodes).connection_timeout(Duration::from_secs(5));
    if let Some((u, p)) = &c.credentials {
        b = b.user(u, p);
    }
    if let Some(ca) = &c.tls_ca {
        b = b.tls_context(Some(tls_config(c, ca)?));
    }
    b.build().await.map_err(|e| open_err(c, format!("cannot connect: {e}")))
}

/// The values of one statement of an append batch.
enum Stmt {
    Head(Vec<CqlValue>),
    Event((String, String, i64, i64, i64, String, i32, Vec<u8>, Vec<u8>)),
}

impl SerializeRow for Stmt {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter<'_>,
    ) -> Result<(), SerializationError> {
        match self {
            Self::Head(v) => v.serialize(ctx, writer),
            Self::Event(v) => v.serialize(ctx, writer),
        }
    }
    fn is_empty(&self) -> bool {
        false
    }
}

/// The `[applied]` flag of a conditional statement, and the row's columns.
fn lwt_outcome(r: QueryResult) -> Result<(bool, HashMap<String, CqlValue>), JournalError> {
    let rows = r.into_rows_result().map_err(unavailable)?;
    let names: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_owned()).collect();
    let first: Option<Row> = rows.maybe_first_row::<Row>().map_err(unavailable)?;
    let mut cols = HashMap::new();
    if let Some(row) = first {
        for (name, v) in names.into_iter().zip(row.columns) {
            if let Some(v) = v {
                cols.insert(name, v);
            }
        }
    }
    let applied = matches!(cols.get("[applied]"), Some(CqlValue::Boolean(true)));
    Ok((applied, cols))
}

fn as_i64(v: Option<&CqlValue>) -> Option<i64> {
    match v {
        Some(CqlValue::BigInt(i)) => Some(*i),
        _ => None,
    }
}

/// The columns of an event row: seq, ts, type_name, version, payload, metadata.
type EventRow = (i64, Option<i64>, Option<String>, Option<i32>, Option<Vec<u8>>, Option<Vec<u8>>);

fn to_event((seq, ts, type_name, version, payload, metadata): EventRow) -> PersistedEvent {
    PersistedEvent {
        seq: seq as u64,
        timestamp_ms: ts.unwrap_or(0),
        type_name: type_name.unwrap_or_default(),
        version: version.unwrap_or(0) as u32,
        payload: payload.unwrap_or_default(),
        metadata: metadata.unwrap_or_default(),
    }
}

enum Cond {
    Eq(u64),
    New,
    Plain,
}

/// What one append writes.
#[derive(Clone, Copy)]
struct Append<'a> {
    expected: u64,
    events: &'a [NewEvent],
    snapshot: Option<&'a Snapshot>,
    fence: Option<u64>,
    ts: i64,
}

/// The statics of one events partition: `last_seq`, `sealed`, `fence`.
#[derive(Debug, Clone, Copy, Default)]
struct Statics {
    last_seq: Option<i64>,
    sealed: Option<i64>,
    fence: Option<i64>,
}

impl Statics {
    fn from_cols(cols: &HashMap<String, CqlValue>) -> Self {
        Self {
            last_seq: as_i64(cols.get("last_seq")),
            sealed: as_i64(cols.get("sealed")),
            fence: as_i64(cols.get("fence")),
        }
    }
    fn fence(&self) -> u64 {
        self.fence.unwrap_or(0).max(0) as u64
    }
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
        let session = session(&config).await?;
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
        let st = Statements::prepare(&session, &config).await.map_err(|e| open_err(&config, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                st,
                bucket: bucket.max(1) as u64,
                shards,
                heads: Mutex::new(HashMap::new()),
                counter: AtomicU64::new(0),
                config,
            }),
        })
    }

    /// Creates or upgrades the schema of the keyspace a URL names.
    pub async fn migrate(url: &str, opts: &MigrateOptions) -> Result<Vec<i32>, OpenError> {
        let c = ScyllaConfig::from_url(url)
            .map_err(|e| OpenError::Io { path: e.url.clone(), message: e.reason.clone() })?;
        let s = session(&c).await?;
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

    fn bucket_of(&self, seq: u64) -> u64 {
        seq / self.inner.bucket
    }

    fn pk(key: &EntityKey, bucket: u64) -> (String, String, i64) {
        (key.entity_type.clone(), key.entity_id.clone(), bucket as i64)
    }

    /// Runs a prepared read and returns its rows.
    async fn rows<T>(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<Vec<T>, JournalError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let r = self.inner.session.execute_unpaged(stmt, values).await.map_err(unavailable)?;
        let rows = r.into_rows_result().map_err(unavailable)?;
        rows.rows::<T>().map_err(unavailable)?.collect::<Result<_, _>>().map_err(unavailable)
    }

    /// Runs a prepared read and returns its first row, if any.
    async fn first_row<T>(&self, stmt: &PreparedStatement, values: impl SerializeRow) -> Result<Option<T>, JournalError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let r = self.inner.session.execute_unpaged(stmt, values).await.map_err(unavailable)?;
        r.into_rows_result().map_err(unavailable)?.maybe_first_row::<T>().map_err(unavailable)
    }

    /// Reads one partition's statics: `None` when it does not exist.
    async fn statics_of(&self, key: &EntityKey, bucket: u64) -> Result<Option<Statics>, JournalError> {
        let row: Option<(Option<i64>, Option<i64>, Option<i64>)> =
            self.first_row(&self.inner.st.head_of, Self::pk(key, bucket)).await?;
        Ok(row.map(|(last_seq, sealed, fence)| Statics { last_seq, sealed, fence }))
    }

    /// The head partition of an entity (the last one that exists; 0 when
    /// none does) and its statics (`None`: the entity has no partition).
    async fn head_statics(&self, key: &EntityKey) -> Result<(u64, Option<Statics>), JournalError> {
        let start = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0);
        let (mut b, mut found, mut head) = (start, start, None);
        while let Some(st) = self.statics_of(key, b).await? {
            if st.last_seq.is_none() {
                break;
            }
            found = b;
            head = Some(st);
            if st.sealed.is_none() {
                break;
            }
            b += 1;
        }
        if found != start {
            self.inner.heads.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), found);
        }
        Ok((found, head))
    }

    /// The head partition and last seq of an entity.
    async fn head(&self, key: &EntityKey) -> Result<(u64, u64), JournalError> {
        let (b, st) = self.head_statics(key).await?;
        Ok((b, st.and_then(|s| s.last_seq).unwrap_or(0).max(0) as u64))
    }

    fn offset(&self) -> u64 {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        micros * 1000 + self.inner.counter.fetch_add(1, Ordering::Relaxed) % 1000
    }

    /// Writes one append as one single-partition batch.
    async fn write(
        &self,
        key: &EntityKey,
        bucket: u64,
        cond: &Cond,
        append: &Append<'_>,
    ) -> Result<(bool, HashMap<String, CqlValue>), JournalError> {
        let Append { expected, events, snapshot, fence, ts } = *append;
        let st = &self.inner.st;
        let last = (expected + events.len() as u64) as i64;
        let fence = fence.filter(|_| !matches!(cond, Cond::Plain));
        let head_stmt: &PreparedStatement = match (cond, snapshot.is_some(), fence.is_some()) {
            (Cond::Eq(_), false, false) => &st.head_eq,
            (Cond::Eq(_), true, false) => &st.head_eq_snap,
            (Cond::New, false, false) => &st.head_new,
            (Cond::New, true, false) => &st.head_new_snap,
            (Cond::Eq(_), false, true) => &st.head_eq_fenced,
            (Cond::Eq(_), true, true) => &st.head_eq_snap_fenced,
            (Cond::New, false, true) => &st.head_new_fenced,
            (Cond::New, true, true) => &st.head_new_snap_fenced,
            (Cond::Plain, false, _) => &st.head_plain,
            (Cond::Plain, true, _) => &st.head_plain_snap,
        };
        // Values in statement order: SET last_seq[, snapshot][, fence (new
        // partition)] WHERE pk IF [last_seq = expected ... AND fence = ?].
        let mut head = vec![CqlValue::BigInt(last)];
        if let Some(s) = snapshot {
            head.extend([
                CqlValue::BigInt(s.seq as i64),
                CqlValue::Int(s.version as i32),
                CqlValue::BigInt(s.timestamp_ms),
                CqlValue::Blob(s.payload.clone()),
            ]);
        }
        if let (Cond::New, Some(f)) = (cond, fence) {
            head.push(CqlValue::BigInt(f as i64));
        }
        head.extend([
            CqlValue::Text(key.entity_type.clone()),
            CqlValue::Text(key.entity_id.clone()),
            CqlValue::BigInt(bucket as i64),
        ]);
        if let Cond::Eq(e) = cond {
            head.push(CqlValue::BigInt(*e as i64));
            if let Some(f) = fence {
                head.push(CqlValue::BigInt(f as i64));
            }
        }
        let mut batch = Batch::new(if matches!(cond, Cond::Plain) { BatchType::Unlogged } else { BatchType::Logged });
        batch.set_consistency(self.inner.config.consistency);
        batch.set_serial_consistency(Some(self.inner.config.serial_consistency));
        batch.set_request_timeout(Some(self.inner.config.timeout));
        batch.append_statement(head_stmt.clone());
        let mut values = Vec::with_capacity(events.len() + 1);
        values.push(Stmt::Head(head));
        for (i, e) in events.iter().enumerate() {
            batch.append_statement(st.insert_event.clone());
            values.push(Stmt::Event((
                key.entity_type.clone(),
                key.entity_id.clone(),
                bucket as i64,
                (expected + 1 + i as u64) as i64,
                ts,
                e.type_name.clone(),
                e.version as i32,
                e.payload.clone(),
                e.metadata.clone(),
            )));
        }
        let r = self.inner.session.batch(&batch, values).await.map_err(unavailable)?;
        if matches!(cond, Cond::Plain) {
            return Ok((true, HashMap::new()));
        }
        lwt_outcome(r)
    }

    async fn conflict(&self, key: &EntityKey, expected: u64) -> AppendError {
        match self.head(key).await {
            Ok((_, actual)) => AppendError::Conflict { entity: key.to_string(), expected, actual },
            Err(e) => e.into(),
        }
    }

    /// Why a fenced append was not applied: the head's fence, else its seq.
    async fn refused(&self, key: &EntityKey, expected: u64, epoch: u64) -> AppendError {
        match self.head_statics(key).await {
            Ok((_, Some(st))) if st.fence() != epoch => {
                AppendError::Fenced { entity: key.to_string(), epoch, current: st.fence() }
            }
            Ok((_, None)) => AppendError::Fenced { entity: key.to_string(), epoch, current: 0 },
            Ok((_, Some(st))) => AppendError::Conflict {
                entity: key.to_string(),
                expected,
                actual: st.last_seq.unwrap_or(0).max(0) as u64,
            },
            Err(e) => e.into(),
        }
    }

    /// Runs the seal of partition `target - 1` at `expected` (fenced or not).
    async fn seal(
        &self,
        key: &EntityKey,
        target: u64,
        expected: u64,
        fence: Option<u64>,
    ) -> Result<bool, JournalError> {
        let (t, i) = (key.entity_type.clone(), key.entity_id.clone());
        let (b, e) = ((target - 1) as i64, expected as i64);
        let r = match fence {
            None => {
                let v = (CqlValue::BigInt(target as i64), t, i, b, e);
                self.inner.session.execute_unpaged(&self.inner.st.seal, v).await
            }
            Some(f) => {
                let v = (CqlValue::BigInt(target as i64), t, i, b, e, f as i64);
                self.inner.session.execute_unpaged(&self.inner.st.seal_fenced, v).await
            }
        };
        Ok(lwt_outcome(r.map_err(unavailable)?)?.0)
    }

    async fn append_inner(
        &self,
        key: &EntityKey,
        expected: u64,
        events: &[NewEvent],
        snapshot: Option<&Snapshot>,
        fence: Option<u64>,
    ) -> Result<(u64, i64), AppendError> {
        if events.is_empty() {
            return Err(JournalError::Invalid("append of no events".into()).into());
        }
        if events.len() as u64 > self.inner.bucket {
            return Err(JournalError::Invalid(format!(
                "an append holds at most {} events (the bucket size)",
                self.inner.bucket
            ))
            .into());
        }
        let last = expected + events.len() as u64;
        if let Some(s) = snapshot.filter(|s| s.seq > last) {
            return Err(JournalError::Invalid(format!("snapshot seq {} is past {last}", s.seq)).into());
        }
        let target = self.bucket_of(expected + 1);
        let a = Append { expected, events, snapshot, fence, ts: now_ms() };
        let ts = a.ts;
        if !self.inner.config.conditional {
            self.write(key, target, &Cond::Plain, &a).await?;
            return Ok((target, ts));
        }
        let refused = |cols: Statics| async move {
            match fence {
                Some(epoch) if cols.last_seq.is_some() && cols.fence() != epoch => {
                    AppendError::Fenced { entity: key.to_string(), epoch, current: cols.fence() }
                }
                Some(epoch) => self.refused(key, expected, epoch).await,
                None => self.conflict(key, expected).await,
            }
        };
        // An unfenced writer's first append creates partition 0; a fenced
        // writer's partition exists already (its fence raise opened it).
        if expected == 0 && fence.is_none() {
            let (applied, cols) = self.write(key, target, &Cond::New, &a).await?;
            if applied {
                return Ok((target, ts));
            }
            if as_i64(cols.get("last_seq")) != Some(0) {
                return Err(self.conflict(key, expected).await);
            }
            // Partition 0 was opened empty by a fence raise: append after seq 0.
        }
        let (applied, cols) = self.write(key, target, &Cond::Eq(expected), &a).await?;
        if applied {
            return Ok((target, ts));
        }
        let cols = Statics::from_cols(&cols);
        if cols.last_seq.is_some() || target == 0 {
            return Err(refused(cols).await);
        }
        // The first append of a new partition: seal the previous one at `expected`, then open this one.
        if !self.seal(key, target, expected, fence).await? {
            return Err(refused(Statics::default()).await);
        }
        let (applied, cols) = self.write(key, target, &Cond::New, &a).await?;
        if applied {
            return Ok((target, ts));
        }
        if fence.is_none() && as_i64(cols.get("last_seq")) == Some(expected as i64) {
            // A fence raise opened it empty since: append after `expected` there.
            let (applied, _) = self.write(key, target, &Cond::Eq(expected), &a).await?;
            if applied {
                return Ok((target, ts));
            }
        }
        Err(refused(Statics::default()).await)
    }

    async fn raise_fence_inner(&self, key: &EntityKey, epoch: u64) -> Result<(), AppendError> {
        let fenced = |current| AppendError::Fenced { entity: key.to_string(), epoch, current };
        let st = &self.inner.st;
        for _ in 0..32 {
            let (head, statics) = self.head_statics(key).await?;
            let (t, i) = (key.entity_type.clone(), key.entity_id.clone());
            let applied = match statics {
                // No partition yet, or the head is sealed and its successor
                // not opened: open it empty, fenced, at the head's last seq.
                None | Some(Statics { sealed: Some(_), .. }) => {
                    let (bucket, last) = match statics {
                        None => (0, 0),
                        Some(s) => (head + 1, s.last_seq.unwrap_or(0)),
                    };
                    if let Some(s) = statics.filter(|s| s.fence() > epoch) {
                        return Err(fenced(s.fence()));
                    }
                    let v = (last, epoch as i64, t, i, bucket as i64);
                    let r = self.inner.session.execute_unpaged(&st.head_new_fenced, v).await.map_err(unavailable)?;
                    lwt_outcome(r)?.0
                }
                Some(s) if s.fence() > epoch => return Err(fenced(s.fence())),
                Some(s) if s.fence == Some(epoch as i64) => return Ok(()),
                Some(s) => {
                    let r = match s.fence {
                        None => {
                            let v = (epoch as i64, t, i, head as i64);
                            self.inner.session.execute_unpaged(&st.raise_fence_from_null, v).await
                        }
                        Some(old) => {
                            let v = (epoch as i64, t, i, head as i64, old);
                            self.inner.session.execute_unpaged(&st.raise_fence, v).await
                        }
                    };
                    lwt_outcome(r.map_err(unavailable)?)?.0
                }
            };
            if applied {
                return Ok(());
            }
        }
        Err(JournalError::Unavailable(format!("scylla: could not raise the fence of {key}: its head keeps moving"))
            .into())
    }

    async fn load_page(
        &self,
        key: &EntityKey,
        bucket: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<PersistedEvent>, JournalError> {
        let (t, i, b) = Self::pk(key, bucket);
        let r = self
            .inner
            .session
            .execute_unpaged(&self.inner.st.read, (t, i, b, from as i64, to.min(i64::MAX as u64) as i64))
            .await
            .map_err(unavailable)?;
        let rows = r.into_rows_result().map_err(unavailable)?;
        let typed = rows.rows::<EventRow>().map_err(unavailable)?;
        let mut out = Vec::new();
        for row in typed {
            let row =
                row.map_err(|e| JournalError::Corrupt { entity: key.to_string(), seq: 0, detail: e.to_string() })?;
            out.push(to_event(row));
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Journal for ScyllaJournal {
    async fn commit(&self, entity: &EntityKey, request: AppendRequest) -> Result<AppendAck, AppendError> {
        let AppendRequest { expected_seq, events, snapshot, fence } = request;
        let (bucket, ts) = self.append_inner(entity, expected_seq, &events, snapshot.as_ref(), fence).await?;
        {
            let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
            let h = heads.entry(entity.clone()).or_insert(bucket);
            *h = (*h).max(bucket);
        }
        // The feed and the entity index are derived views, written after the commit.
        let shard = entity.shard(self.inner.shards) as i32;
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::new();
        for i in 0..events.len() as u64 {
            let offset = self.offset();
            batch.append_statement(self.inner.st.feed_insert.clone());
            values.push((
                shard,
                (offset / HOUR_OFFSETS) as i64,
                offset as i64,
                entity.entity_type.clone(),
                entity.entity_id.clone(),
                bucket as i64,
                (expected_seq + 1 + i) as i64,
            ));
        }
        if let Err(e) = self.inner.session.batch(&batch, values).await {
            tracing::warn!(%entity, error = %e, "events committed but not added to the shard feed");
        }
        if expected_seq == 0 {
            let v = (entity.entity_type.clone(), shard, entity.entity_id.clone());
            if let Err(e) = self.inner.session.execute_unpaged(&self.inner.st.index_insert, v).await {
                tracing::warn!(%entity, error = %e, "entity committed but not added to the entity index");
            }
        }
        Ok(AppendAck { first_seq: expected_seq + 1, last_seq: expected_seq + events.len() as u64, timestamp_ms: ts })
    }

    async fn raise_fence(&self, entity: &EntityKey, epoch: u64) -> Result<(), AppendError> {
        self.raise_fence_inner(entity, epoch).await
    }

    fn read(&self, entity: &EntityKey, range: RangeInclusive<u64>) -> EventStream {
        let me = self.clone();
        let key = entity.clone();
        let (from, to) = (*range.start(), *range.end());
        let first_bucket = me.bucket_of(from.max(1)).saturating_sub(1);
        // Cursor: (bucket, next seq, last bucket to read — learnt on the first page).
        paged((first_bucket, from.max(1), None::<u64>), move |(bucket, next, last): (u64, u64, Option<u64>)| {
            let (me, key) = (me.clone(), key.clone());
            async move {
                let last = match last {
                    Some(l) => l,
                    None => me.head(&key).await?.0.min(me.bucket_of(to)),
                };
                if next > to || bucket > last {
                    return Ok((Vec::new(), None));
                }
                let page = me.load_page(&key, bucket, next, to).await?;
                let cursor = if page.len() == PAGE {
                    page.last().map(|e| (bucket, e.seq + 1, Some(last)))
                } else {
                    Some((bucket + 1, page.last().map_or(next, |e| e.seq + 1), Some(last)))
                };
                Ok((page, cursor))
            }
        })
        .boxed()
    }

    async fn last_seq(&self, entity: &EntityKey) -> Result<u64, JournalError> {
        Ok(self.head(entity).await?.1)
    }

    async fn save_snapshot(&self, entity: &EntityKey, snapshot: Snapshot) -> Result<(), JournalError> {
        let last = self.last_seq(entity).await?;
        if snapshot.seq > last {
            return Err(JournalError::Invalid(format!("snapshot seq {} is past last seq {last}", snapshot.seq)));
        }
        let v = (
            entity.entity_type.clone(),
            entity.entity_id.clone(),
            snapshot.seq as i64,
            snapshot.version as i32,
            snapshot.timestamp_ms,
            snapshot.payload,
        );
        self.inner.session.execute_unpaged(&self.inner.st.save_snapshot, v).await.map_err(unavailable)?;
        Ok(())
    }

    async fn load_snapshot(&self, entity: &EntityKey) -> Result<Option<Snapshot>, JournalError> {
        let key = (entity.entity_type.clone(), entity.entity_id.clone());
        let mut best = self.first_row::<(i64, i32, i64, Vec<u8>)>(&self.inner.st.load_snapshot, key).await?.map(
            |(seq, version, ts, payload)| Snapshot {
                seq: seq as u64,
                version: version as u32,
                timestamp_ms: ts,
                payload,
            },
        );
        let (head, _) = self.head(entity).await?;
        for b in 0..=head {
            if let Some((Some(seq), Some(version), Some(ts), Some(payload))) = self
                .first_row::<(Option<i64>, Option<i32>, Option<i64>, Option<Vec<u8>>)>(
                    &self.inner.st.snap_of,
                    Self::pk(entity, b),
                )
                .await?
                && best.as_ref().is_none_or(|s| s.seq < seq as u64)
            {
                best = Some(Snapshot { seq: seq as u64, version: version as u32, timestamp_ms: ts, payload });
            }
        }
        Ok(best)
    }

    fn events_by_shard(&self, shard: u32, after_offset: u64) -> ShardStream {
        let me = self.clone();
        let now_hour = (now_ms().max(0) as u64 * 1000 * 1000) / HOUR_OFFSETS;
        let oldest = now_hour.saturating_sub(schema::FEED_TTL_SECS as u64 / 3600);
        let start_hour = (after_offset / HOUR_OFFSETS).max(oldest);
        paged((start_hour, after_offset), move |(hour, after): (u64, u64)| {
            let me = me.clone();
            async move {
                if hour > now_hour {
                    return Ok((Vec::new(), None));
                }
                let refs: Vec<(i64, String, String, i64, i64)> =
                    me.rows(&me.inner.st.feed_read, (shard as i32, hour as i64, after as i64)).await?;
                let full = refs.len() == PAGE;
                let mut page = Vec::with_capacity(refs.len());
                let mut last = after;
                for (offset, t, i, bucket, seq) in refs {
                    last = offset as u64;
                    let key = EntityKey::new(t, i);
                    let pk = (key.entity_type.clone(), key.entity_id.clone(), bucket, seq);
                    // Deleted since: skip.
                    if let Some(row) = me.first_row::<EventRow>(&me.inner.st.read_one, pk).await? {
                        page.push(ShardEvent { offset: offset as u64, entity: key, event: to_event(row) });
                    }
                }
                let next = if full { (hour, last) } else { (hour + 1, last) };
                Ok((page, Some(next)))
            }
        })
        .boxed()
    }

    async fn delete_to(&self, entity: &EntityKey, seq: u64) -> Result<(), JournalError> {
        let (head, last) = self.head(entity).await?;
        let to = seq.min(last);
        if to == 0 {
            return Ok(());
        }
        for b in 0..=head.min(self.bucket_of(to)) {
            let (t, i, bk) = Self::pk(entity, b);
            self.inner
                .session
                .execute_unpaged(&self.inner.st.delete_to, (t, i, bk, to as i64))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    fn entities(&self, entity_type: &str) -> EntityStream {
        let me = self.clone();
        let entity_type = entity_type.to_owned();
        let list = async move {
            let ids: Vec<Vec<String>> = futures::stream::iter(0..me.inner.shards)
                .map(|shard| {
                    let (me, t) = (me.clone(), entity_type.clone());
                    async move {
                        let rows: Vec<(String,)> = me.rows(&me.inner.st.index_read, (t, shard as i32)).await?;
                        Ok::<_, JournalError>(rows.into_iter().map(|(id,)| id).collect::<Vec<_>>())
                    }
                })
                .buffer_unordered(16)
                .try_collect()
                .await?;
            let mut ids: Vec<String> = ids.into_iter().flatten().collect();
            ids.sort();
            ids.dedup();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let last_seq = me.last_seq(&EntityKey::new(entity_type.clone(), id.clone())).await?;
                out.push(EntityInfo { entity_id: id, last_seq, deleted_to: 0 });
            }
            Ok::<_, JournalError>(out)
        };
        futures::stream::once(list)
            .map(|r| match r {
                Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).left_stream(),
                Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
            })
            .flatten()
            .boxed()
    }

    fn shards(&self) -> u32 {
        self.inner.shards
    }
}

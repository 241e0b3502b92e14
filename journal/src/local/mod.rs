//! The embedded journal on [fjall](https://docs.rs/fjall): an LSM store with
//! a write-ahead journal, crash recovery and atomic cross-keyspace batches.
//! Records are CRC32-checked; writes go through one group-commit thread
//! ([`writer`]) so many entities' appends share one `fsync`.
//!
//! Directory layout: `tessera-journal.json` (format marker), `LOCK` (held
//! while open, so two processes cannot open one directory) and `data/`
//! (fjall's files).

mod format;
mod meta_cache;
mod store;
mod sweep;
mod writer;

use std::fs::{File, OpenOptions, TryLockError};
use std::ops::{Bound, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fjall::PersistMode;
use futures::StreamExt;
use tokio::sync::oneshot;

use store::{Keyspaces, Shared, Store};
pub use writer::CommitObserver;
use writer::{AppendReply, Op, Writer, WriterOptions, unavailable};

use crate::error::{AppendError, JournalError, OpenError};
use crate::journal::{AppendDone, EntityStream, EventStream, Journal, ShardStream};
use crate::paging::paged;
use crate::shard::DEFAULT_SHARDS;
use crate::types::{AppendAck, AppendRequest, EntityInfo, EntityKey, FeedBounds, PersistedEvent, ShardEvent, Snapshot};

/// Name of the format marker file.
pub const MARKER_FILE: &str = "tessera-journal.json";
/// The format name in the marker.
pub const FORMAT_NAME: &str = "tessera-local-journal";
/// The newest on-disk format version this build reads and writes.
///
/// 2: an append no longer rewrites the entity's index row (its last seq is
/// read from its last event key, see `format::EntityMeta`). A version-1
/// directory is marked 2 when this build opens it (its rows read the
/// same); a version-1 build then refuses it, as it would misread them.
pub const FORMAT_VERSION: u32 = 2;
/// How long feed entries are kept unless configured: 7 days.
pub const DEFAULT_FEED_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
const PAGE: usize = 1024;

/// When an append is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `fdatasync` the write-ahead journal before acknowledging (default).
    #[default]
    SyncData,
    /// `fsync` (data and metadata) before acknowledging.
    SyncAll,
    /// Acknowledge once written to the OS page cache: survives a process
    /// crash, not a power loss. For benchmarks and throwaway data.
    Buffered,
}

/// Options of a [`LocalJournal`]; see [`LocalJournal::builder`].
pub struct LocalJournalBuilder {
    path: PathBuf,
    durability: Durability,
    max_batch: usize,
    shards: u32,
    cache_bytes: u64,
    memtable_bytes: u64,
    feed_retention: std::time::Duration,
    observer: Option<CommitObserver>,
}

impl LocalJournalBuilder {
    /// When appends are acknowledged (default [`Durability::SyncData`]).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// Most writes in one group commit (default 4096).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }
    /// Shards of the feed (default 1024; must match the cluster's).
    pub fn shards(mut self, n: u32) -> Self {
        self.shards = n;
        self
    }
    /// How long feed entries are kept (default 7 days).
    pub fn feed_retention(mut self, d: std::time::Duration) -> Self {
        self.feed_retention = d;
        self
    }
    /// Block cache size in bytes (default 64 MiB).
    pub fn cache_bytes(mut self, n: u64) -> Self {
        self.cache_bytes = n;
        self
    }
    /// Memtable size per keyspace before it is written to a table file
    /// (default 16 MiB; fjall's own is 64 MiB): with seven keyspaces this
    /// bounds what writes hold in memory. At least 1 MiB.
    pub fn memtable_bytes(mut self, n: u64) -> Self {
        self.memtable_bytes = n.max(1 << 20);
        self
    }
    /// Called after each group commit with its size and duration.
    pub fn on_commit(mut self, f: impl Fn(usize, std::time::Duration) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(f));
        self
    }
    /// Opens (or creates) the journal.
    pub fn open(self) -> Result<LocalJournal, OpenError> {
        LocalJournal::open_with(self)
    }
}

struct Inner {
    tx: Mutex<Option<Sender<Op>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    store: Arc<Shared>,
    shards: u32,
    path: PathBuf,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        // A clean close leaves the data in checksummed table files, not
        // only in the write-ahead journal (shorter recovery; less that a
        // damaged journal file can take with it).
        if !self.path.exists() {
            return; // removed under us: nothing to flush to
        }
        if let Ok(s) = self.store.get() {
            match s.flush(std::time::Duration::from_secs(10)) {
                Ok(true) => {}
                Ok(false) => tracing::warn!("journal flush at close timed out; the write-ahead journal has everything"),
                Err(e) => {
                    tracing::warn!(error = %e, "journal flush at close failed; the write-ahead journal has everything")
                }
            }
        }
    }
}

/// The embedded journal. Cheap to clone; the directory is released when the
/// last clone (and every stream read from it) is dropped.
#[derive(Clone)]
pub struct LocalJournal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJournal").field("path", &self.inner.path).finish()
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> OpenError {
    OpenError::Io { path: path.display().to_string(), message: e.to_string() }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    format: String,
    version: u32,
}

/// Checks the directory's marker, writing one in a new or empty directory;
/// returns the version of an older marker (upgraded once the lock is held).
fn check_marker(path: &Path) -> Result<Option<u32>, OpenError> {
    let marker = path.join(MARKER_FILE);
    match std::fs::read(&marker) {
        Ok(bytes) => {
            let m: Marker =
                serde_json::from_slice(&bytes).map_err(|_| OpenError::Foreign { path: path.display().to_string() })?;
            if m.format != FORMAT_NAME || m.version > FORMAT_VERSION {
                return Err(OpenError::Incompatible {
                    path: path.display().to_string(),
                    format: m.format,
                    found: m.version,
                    supported: FORMAT_VERSION,
                });
            }
            Ok((m.version < FORMAT_VERSION).then_some(m.version))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries = std::fs::read_dir(path).map_err(|e| io_err(path, e))?;
            if entries.next().is_some() {
                return Err(OpenError::Foreign { path: path.display().to_string() });
            }
            write_marker(path).map(|()| None)
        }
        Err(e) => Err(io_err(path, e)),
    }
}

/// Writes this build's marker: to a temporary file, synced, then renamed
/// over the old one (a crash leaves the old marker or the new one).
fn write_marker(path: &Path) -> Result<(), OpenError> {
    let m = Marker { format: FORMAT_NAME.into(), version: FORMAT_VERSION };
    let json = serde_json::to_vec_pretty(&m).map_err(|e| io_err(path, e))?;
    let tmp = path.join(format!("{MARKER_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(path, e))?;
    std::io::Write::write_all(&mut f, &json).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))?;
    std::fs::rename(&tmp, path.join(MARKER_FILE)).map_err(|e| io_err(path, e))?;
    std::fs::File::open(path).and_then(|d| d.sync_all()).map_err(|e| io_err(path, e))
}

impl LocalJournal {
    /// A unit's feed after `after_offset`; with `internal_only`, an entry
    /// whose event the entry says is an entity's own comes without reading
    /// the event (type name, payload and metadata empty).
    fn feed(&self, entity_type: &str, shard: u32, after_offset: u64, internal_only: bool) -> ShardStream {
        let me = self.clone();
        let first = after_offset;
        let unit = format::unit_prefix(entity_type, shard);
        let entity_type = entity_type.to_owned();
        paged(after_offset, move |after: u64| {
            let (me, unit, entity_type) = (me.clone(), unit.clone(), entity_type.clone());
            async move {
                me.blocking(move |inner| {
                    if after == first {
                        let expired_to = writer::expired_to(&inner.meta, &unit)?;
                        if after < expired_to {
                            return Err(JournalError::FeedExpired { entity_type, shard, after, expired_to });
                        }
                    }
                    let mut page = Vec::new();
                    let mut last = None;
                    let mut scanned = 0;
                    let range = format::feed_key(&unit, after.saturating_add(1))..=format::feed_key(&unit, u64::MAX);
                    for item in inner.feed.range(range).take(PAGE) {
                        scanned += 1;
                        let (k, v) = item.into_inner().map_err(unavailable)?;
                        let offset = format::feed_offset(&k);
                        last = Some(offset);
                        let (entity, seq, ts, internal) =
                            format::decode_feed_ref(&v).map_err(|d| JournalError::Corrupt {
                                entity: "-".into(),
                                seq: 0,
                                detail: format!("feed offset {offset}: {d}"),
                            })?;
                        if internal_only && internal == Some(false) {
                            page.push(ShardEvent { offset, entity, event: PersistedEvent::unread(seq, ts) });
                            continue;
                        }
                        let prefix = format::entity_prefix(&entity);
                        // The event may have been deleted since: skip it.
                        if let Some(v) = inner.events.get(format::event_key(&prefix, seq)).map_err(unavailable)? {
                            let event = format::decode_event(seq, &v).map_err(|d| corrupt(&entity, seq, d))?;
                            page.push(ShardEvent { offset, entity, event });
                        }
                    }
                    let next = last.filter(|_| scanned == PAGE);
                    Ok((page, next))
                })
                .await
            }
        })
        .boxed()
    }

    /// Options for a journal in `path`.
    pub fn builder(path: impl Into<PathBuf>) -> LocalJournalBuilder {
        LocalJournalBuilder {
            path: path.into(),
            durability: Durability::SyncData,
            max_batch: 4096,
            shards: DEFAULT_SHARDS,
            cache_bytes: 64 << 20,
            memtable_bytes: 16 << 20,
            feed_retention: DEFAULT_FEED_RETENTION,
            observer: None,
        }
    }

    /// Opens (or creates) a journal in `path` with default options.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, OpenError> {
        Self::builder(path).open()
    }

    /// The journal's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes what is only in the write-ahead journal to table files (done
    /// at a clean close too).
    pub fn flush(&self) -> Result<(), JournalError> {
        match self.inner.store.get()?.flush(std::time::Duration::from_secs(60)).map_err(unavailable)? {
            true => Ok(()),
            false => Err(JournalError::Unavailable("flushing the journal took over 60 s".into())),
        }
    }

    /// How many times the storage engine's table lists changed under
    /// `dir` (a journal's directory, or any directory holding such stores):
    /// the sum of the version ids in its trees' `current` files (the first
    /// 8 bytes of each, little-endian), one step per flush or compaction.
    /// A diagnostic for tests and operators; 0 for a directory without any.
    pub fn storage_versions(dir: &Path) -> u64 {
        let mut sum = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n == "current") {
                    let id =
                        std::fs::read(&path).ok().and_then(|b| b.get(..8)?.try_into().ok().map(u64::from_le_bytes));
                    sum += id.unwrap_or(0);
                }
            }
        }
        sum
    }

    /// Every entity type with an entity in this journal, in order.
    pub fn entity_types(&self) -> Result<Vec<String>, JournalError> {
        let store = self.inner.store.get()?;
        let mut types = Vec::new();
        let mut from = Vec::new();
        loop {
            let Some(item) = store.ks.index.range(from.clone()..).next() else { return Ok(types) };
            let k = item.key().map_err(unavailable)?;
            let Some(t) = format::type_of_key(&k).filter(|t| !t.is_empty()) else { return Ok(types) };
            // Keys are `[len][type][id]`: the type's prefix with its last
            // byte raised sorts after all of them (the last byte of UTF-8
            // is below 0xF5, so it cannot wrap).
            from = format::type_prefix(&t);
            if let Some(b) = from.last_mut() {
                *b += 1;
            }
            types.push(t);
        }
    }

    fn open_with(b: LocalJournalBuilder) -> Result<Self, OpenError> {
        /// How long an open waits for another holder of the lock to let go.
        const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
        let path = b.path;
        std::fs::create_dir_all(&path).map_err(|e| io_err(&path, e))?;
        let older = check_marker(&path)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("LOCK"))
            .map_err(|e| io_err(&path, e))?;
        // A journal closed in this process a moment ago may still be
        // finishing (its last tasks drop it): wait a little for the lock
        // before saying another holder has it.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => return Err(OpenError::Locked { path: path.display().to_string() }),
                Err(TryLockError::Error(e)) => return Err(io_err(&path, e)),
            }
        }
        if let Some(from) = older {
            // Under the lock (an older build may hold the directory open)
            // and before anything is written in the new way.
            write_marker(&path)?;
            tracing::info!(path = %path.display(), from, to = FORMAT_VERSION, "journal format upgraded");
        }
        let store = Store::open(&path.join("data"), b.cache_bytes, b.memtable_bytes).map_err(|e| io_err(&path, e))?;
        let shared = Arc::new(Shared::new(store, path.join("data"), b.cache_bytes, b.memtable_bytes));
        let durability = match b.durability {
            Durability::SyncData => Some(PersistMode::SyncData),
            Durability::SyncAll => Some(PersistMode::SyncAll),
            Durability::Buffered => Some(PersistMode::Buffer),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let options = WriterOptions {
            durability,
            max_batch: b.max_batch,
            shards: b.shards,
            feed_retention: b.feed_retention,
            observer: b.observer,
        };
        let writer = Writer::new(shared.clone(), options).map_err(|e| io_err(&path, e))?;
        let thread = std::thread::Builder::new()
            .name("tessera-journal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err(&path, e))?;
        tracing::info!(path = %path.display(), "local journal open");
        Ok(Self {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                store: shared,
                shards: b.shards,
                path,
                _lock: lock,
            }),
        })
    }

    fn submit(&self, op: Op) -> Result<(), JournalError> {
        self.hand_over(op).map_err(|_| JournalError::Closed)
    }

    /// Queues `op` for the writer; gives it back when the journal is closed.
    fn hand_over(&self, op: Op) -> Result<(), Box<Op>> {
        let tx = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(op).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(op)),
        }
    }

    /// Runs a read on the current store, off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Keyspaces) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.store.get()?.ks))
            .await
            .map_err(|e| JournalError::Unavailable(e.to_string()))?
    }
}

fn corrupt(entity: &EntityKey, seq: u64, detail: String) -> JournalError {
    JournalError::Corrupt { entity: entity.to_string(), seq, detail }
}

/// A storage engine error met while reading `entity` at `seq`: damaged
/// data (a table block whose checksum fails, one that does not
/// decompress) is that entity's corruption, anything else is the store
/// being unavailable.
fn read_err(entity: &EntityKey, seq: u64, e: fjall::Error) -> JournalError {
    match e {
        fjall::Error::Io(_) | fjall::Error::Storage(fjall::LsmError::Io(_)) | fjall::Error::Poisoned => unavailable(e),
        damaged => corrupt(entity, seq, format!("the storage engine cannot read it: {damaged}")),
    }
}

fn read_page(inner: &Keyspaces, entity: &EntityKey, from: u64, to: u64) -> Result<Vec<PersistedEvent>, JournalError> {
    if from > to {
        return Ok(Vec::new());
    }
    let prefix = format::entity_prefix(entity);
    let mut page = Vec::with_capacity(PAGE.min((to - from).saturating_add(1) as usize));
    for item in inner.events.range(format::event_key(&prefix, from)..=format::event_key(&prefix, to)).take(PAGE) {
        let next = page.last().map_or(from.max(1), |e: &PersistedEvent| e.seq + 1);
        let (k, v) = item.into_inner().map_err(|e| read_err(entity, next, e))?;
        let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap_or_default());
        page.push(format::decode_event(seq, &v).map_err(|d| corrupt(entity, seq, d))?);
    }
    Ok(page)
}

#[async_trait::async_trait]
impl Journal for LocalJournal {
    async fn commit(&self, entity: &EntityKey, request: AppendRequest) -> Result<AppendAck, AppendError> {
        let (ack, rx) = oneshot::channel();
        self.submit(Op::Append { key: entity.clone(), request, ack: AppendReply::Channel(ack) })?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    fn commit_then(
        &self,
        entity: &EntityKey,
        request: AppendRequest,
        done: AppendDone,
    ) -> Option<(AppendRequest, AppendDone)> {
        // An op the writer cannot take is answered here (`done` must be told).
        if let Err(op) = self.hand_over(Op::Append { key: entity.clone(), request, ack: AppendReply::call(done) }) {
            op.fail(&JournalError::Closed);
        }
        None
    }

    async fn raise_fence(&self, entity: &EntityKey, epoch: u64) -> Result<(), AppendError> {
        let (ack, rx) = oneshot::channel();
        self.submit(Op::RaiseFence { key: entity.clone(), epoch, ack })?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    fn read(&self, entity: &EntityKey, range: RangeInclusive<u64>) -> EventStream {
        let me = self.clone();
        let entity = entity.clone();
        let to = *range.end();
        paged(*range.start(), move |from: u64| {
            let (me, entity) = (me.clone(), entity.clone());
            async move {
                let page = me.blocking(move |inner| read_page(inner, &entity, from, to)).await?;
                let next = (page.len() == PAGE).then(|| page.last().map(|e| e.seq + 1)).flatten();
                Ok((page, next))
            }
        })
        .boxed()
    }

    async fn last_seq(&self, entity: &EntityKey) -> Result<u64, JournalError> {
        let entity = entity.clone();
        self.blocking(move |inner| {
            let indexed = match inner.index.get(format::index_key(&entity)).map_err(|e| read_err(&entity, 0, e))? {
                None => 0,
                Some(v) => format::decode_meta(&v).map_err(|d| corrupt(&entity, 0, d))?.last_seq,
            };
            let prefix = format::entity_prefix(&entity);
            let last = format::last_event_seq(&inner.events, &prefix).map_err(|e| read_err(&entity, 0, e))?;
            Ok(indexed.max(last))
        })
        .await
    }

    async fn save_snapshot(&self, entity: &EntityKey, snapshot: Snapshot) -> Result<(), JournalError> {
        let (ack, rx) = oneshot::channel();
        self.submit(Op::Snapshot { key: entity.clone(), snapshot, ack })?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    async fn load_snapshot(&self, entity: &EntityKey) -> Result<Option<Snapshot>, JournalError> {
        let entity = entity.clone();
        self.blocking(move |inner| {
            match inner.snapshots.get(format::index_key(&entity)).map_err(|e| read_err(&entity, 0, e))? {
                None => Ok(None),
                Some(v) => format::decode_snapshot(&v).map(Some).map_err(|d| corrupt(&entity, 0, d)),
            }
        })
        .await
    }

    fn events_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream {
        self.feed(entity_type, shard, after_offset, false)
    }

    fn internal_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream {
        self.feed(entity_type, shard, after_offset, true)
    }

    async fn feed_bounds(&self, entity_type: &str, shard: u32) -> Result<FeedBounds, JournalError> {
        let unit = format::unit_prefix(entity_type, shard);
        self.blocking(move |inner| {
            let expired_to = writer::expired_to(&inner.meta, &unit)?;
            let last = writer::last_offset(&inner.feed, &unit)?.max(writer::floor(&inner.meta, &unit)?);
            Ok(FeedBounds { expired_to, last: last.max(expired_to) })
        })
        .await
    }

    async fn find_key(&self, entity: &EntityKey, key: &str) -> Result<Option<u64>, JournalError> {
        let (entity, key) = (entity.clone(), key.to_owned());
        self.blocking(move |inner| {
            let Some(v) = inner.keys.get(format::key_key(&entity, &key)).map_err(unavailable)? else { return Ok(None) };
            let (seq, expires) = format::decode_key_record(&v).map_err(|d| corrupt(&entity, 0, d))?;
            Ok((expires > crate::memory::now_ms()).then_some(seq))
        })
        .await
    }

    async fn delete_to(&self, entity: &EntityKey, seq: u64) -> Result<(), JournalError> {
        let (ack, rx) = oneshot::channel();
        self.submit(Op::DeleteTo { key: entity.clone(), seq, ack })?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    async fn purge(&self, entity: &EntityKey) -> Result<(), JournalError> {
        // Its feed entries are found by a scan of the unit's feed, here on
        // a reader thread (the writer only removes them).
        let (e, shard) = (entity.clone(), entity.shard(self.inner.shards));
        let feed = self
            .blocking(move |inner| {
                let unit = format::unit_prefix(&e.entity_type, shard);
                let mut keys = Vec::new();
                for item in inner.feed.range(format::feed_key(&unit, 0)..=format::feed_key(&unit, u64::MAX)) {
                    let (k, v) = item.into_inner().map_err(unavailable)?;
                    if format::decode_feed_ref(&v).is_ok_and(|(owner, ..)| owner == e) {
                        keys.push(k.to_vec());
                    }
                }
                Ok(keys)
            })
            .await?;
        let (ack, rx) = oneshot::channel();
        self.submit(Op::Purge { key: entity.clone(), feed, ack })?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    fn entities(&self, entity_type: &str) -> EntityStream {
        let me = self.clone();
        let entity_type = entity_type.to_owned();
        let prefix = format::type_prefix(&entity_type);
        let start: Option<Vec<u8>> = None;
        paged(start, move |after: Option<Vec<u8>>| {
            let (me, prefix, entity_type) = (me.clone(), prefix.clone(), entity_type.clone());
            async move {
                me.blocking(move |inner| {
                    let lower = match &after {
                        Some(k) => Bound::Excluded(k.clone()),
                        None => Bound::Included(prefix.clone()),
                    };
                    let mut page = Vec::new();
                    let mut last_key = None;
                    for item in inner.index.range::<Vec<u8>, _>((lower, Bound::Unbounded)).take(PAGE) {
                        let (k, v) = item.into_inner().map_err(unavailable)?;
                        if !k.starts_with(&prefix) {
                            last_key = None;
                            break;
                        }
                        let entity_id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                        let m = format::decode_meta(&v).map_err(|d| JournalError::Corrupt {
                            entity: entity_id.clone(),
                            seq: 0,
                            detail: d,
                        })?;
                        last_key = Some(k.to_vec());
                        let entity = EntityKey { entity_type: entity_type.clone(), entity_id };
                        // An unreadable last event (a damaged table block)
                        // does not end the list: the entity is listed with
                        // its index row's last seq, and reading it fails.
                        let last = format::last_event_seq(&inner.events, &format::entity_prefix(&entity))
                            .unwrap_or_else(|e| {
                                tracing::warn!(entity = %entity, error = %e, "last event unreadable: listed from its index row");
                                0
                            });
                        let last_seq = m.last_seq.max(last);
                        if last_seq > 0 {
                            page.push(EntityInfo { entity_id: entity.entity_id, last_seq, deleted_to: m.deleted_to });
                        }
                    }
                    Ok((page, last_key.map(Some)))
                })
                .await
            }
        })
        .boxed()
    }

    fn shards(&self) -> u32 {
        self.inner.shards
    }

    fn storage_stats(&self) -> Option<crate::StorageStats> {
        self.inner.store.get().ok().map(|store| crate::StorageStats::of_fjall(&store.db))
    }
}

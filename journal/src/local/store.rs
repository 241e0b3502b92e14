//! The fjall database and its keyspaces, shared by the writer thread and
//! the readers, and its reopening after a failed write.
//!
//! fjall poisons a database whose commit failed to reach the disk (a full
//! disk, an I/O error): every later write fails until it is opened again,
//! and opening again needs every handle on the old one dropped (it holds
//! lock files). So the writer, once a commit failed, refuses writes with the
//! cause, keeps the old store for reads, and probes the disk every second;
//! when the disk takes a write again it swaps the store: readers wait for
//! the few milliseconds of recovery (fjall replays its journal; a batch
//! whose write was cut is dropped there, and it was never acknowledged).
//!
//! Invariant: nothing that failed to commit was acknowledged, and nothing
//! acknowledged is lost by a reopen (fjall recovers every persisted batch).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::error::JournalError;

/// The keyspaces of a local journal.
pub(crate) struct Keyspaces {
    pub(crate) events: Keyspace,
    pub(crate) index: Keyspace,
    pub(crate) snapshots: Keyspace,
    pub(crate) feed: Keyspace,
    pub(crate) meta: Keyspace,
    /// Idempotency keys: `[entity prefix][key]` → (seq, expires at).
    pub(crate) keys: Keyspace,
    /// `[expires at][entity prefix][key]` → (): the sweep's order.
    pub(crate) key_expiry: Keyspace,
}

/// An open database and its keyspaces.
pub(crate) struct Store {
    pub(crate) db: Database,
    pub(crate) ks: Keyspaces,
}

impl Store {
    /// Opens (or creates, or recovers) the database in `dir`.
    pub(crate) fn open(dir: &Path, cache_bytes: u64, memtable_bytes: u64) -> Result<Self, String> {
        let db = Database::builder(dir).cache_size(cache_bytes).open().map_err(|e| format!("storage engine: {e}"))?;
        let options = || KeyspaceCreateOptions::default().max_memtable_size(memtable_bytes);
        let open = |name: &str| db.keyspace(name, options).map_err(|e| e.to_string());
        let ks = Keyspaces {
            events: open("events")?,
            index: open("entities")?,
            snapshots: open("snapshots")?,
            // Feeds per (entity type, shard); `feed` held the per-shard feed of format 1.
            feed: open("unit_feed")?,
            meta: open("meta")?,
            keys: open("keys")?,
            key_expiry: open("key_expiry")?,
        };
        Ok(Self { db, ks })
    }
}

impl Store {
    /// Writes every keyspace's memtable to a table file, waiting at most
    /// `within` for the flushes (a flush worker that failed, e.g. because
    /// the directory is gone, must not hang a close). Returns whether every
    /// memtable reached a table file; the write-ahead journal holds the rest.
    pub(crate) fn flush(&self, within: std::time::Duration) -> Result<bool, fjall::Error> {
        let k = &self.ks;
        let all = [&k.events, &k.index, &k.snapshots, &k.feed, &k.meta, &k.keys, &k.key_expiry];
        for ks in all {
            ks.rotate_memtable()?;
        }
        let deadline = std::time::Instant::now() + within;
        while all.iter().any(|ks| ks.sealed_memtable_count() > 0) {
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(true)
    }
}

/// The current store, swapped on a reopen.
pub(crate) struct Shared {
    current: RwLock<Option<Arc<Store>>>,
    dir: PathBuf,
    cache_bytes: u64,
    memtable_bytes: u64,
}

impl Shared {
    pub(crate) fn new(store: Store, dir: PathBuf, cache_bytes: u64, memtable_bytes: u64) -> Self {
        Self { current: RwLock::new(Some(Arc::new(store))), dir, cache_bytes, memtable_bytes }
    }

    /// The store to read from now.
    pub(crate) fn get(&self) -> Result<Arc<Store>, JournalError> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .clone()
            .ok_or_else(|| JournalError::Unavailable("the journal is being reopened after a failed write".into()))
    }

    /// The directory fjall keeps its files in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the current store (`mine` is the caller's handle on it) and
    /// opens it again. Readers holding a handle finish their page first
    /// (waited for up to 10 s).
    pub(crate) fn reopen(&self, mine: Option<Arc<Store>>) -> Result<Arc<Store>, String> {
        drop(mine);
        let old = self.current.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut old) = old {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(store) => {
                        drop(store);
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still_shared) => {
                        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(still_shared);
                        return Err("readers still hold the old store".into());
                    }
                }
            }
        }
        let store = Arc::new(Store::open(&self.dir, self.cache_bytes, self.memtable_bytes)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(store.clone());
        Ok(store)
    }
}

/// True when `dir` takes a durable write of `bytes` now (the probe is
/// removed again).
pub(crate) fn accepts_writes(dir: &Path, bytes: usize) -> bool {
    let probe = dir.join(".tessera-space-probe");
    let ok = std::fs::File::create(&probe)
        .and_then(|mut f| {
            f.write_all(&vec![0u8; bytes])?;
            f.sync_all()
        })
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// What a failed write means, in words: a full disk is named as such.
pub(crate) fn describe(e: &fjall::Error) -> String {
    let full = |io: &std::io::Error| io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28);
    match e {
        fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) if full(io) => {
            format!("disk full ({io})")
        }
        fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) => format!("I/O error ({io})"),
        fjall::Error::Poisoned => "the storage engine stopped after an earlier failed write".into(),
        other => other.to_string(),
    }
}

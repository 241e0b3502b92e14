//! The local result store: a fjall database (in `DATA_DIR/results` next to
//! the journal) with rows keyed by invocation id and an expiry index.

use std::path::Path;
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{InvocationResult, PutOutcome, ResultStore, ResultStoreError};

/// The fjall-backed store.
#[derive(Clone)]
pub struct LocalResultStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    rows: Keyspace,
    /// `[expires_ms BE][id]` → empty: rows by expiry, for purging.
    expiry: Keyspace,
    /// Serialises read-check-write of one row.
    write: Mutex<()>,
}

fn unavailable(e: impl std::fmt::Display) -> ResultStoreError {
    ResultStoreError::Unavailable(e.to_string())
}

fn expiry_key(expires_ms: i64, id: &str) -> Vec<u8> {
    let mut k = (expires_ms.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

impl LocalResultStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ResultStoreError> {
        let db = Database::builder(dir).cache_size(16 << 20).open().map_err(unavailable)?;
        // Rows are written once or twice and read rarely: small memtables.
        let options = || KeyspaceCreateOptions::default().max_memtable_size(8 << 20);
        let rows = db.keyspace("results", options).map_err(unavailable)?;
        let expiry = db.keyspace("expiry", options).map_err(unavailable)?;
        Ok(Self { inner: Arc::new(Inner { db, rows, expiry, write: Mutex::new(()) }) })
    }

    fn decode(id: &str, bytes: &[u8]) -> Result<InvocationResult, ResultStoreError> {
        tessera_entities::codec::from_msgpack(bytes)
            .map_err(|e| ResultStoreError::Corrupt { id: id.to_owned(), detail: e.to_string() })
    }

    fn put_sync(&self, row: InvocationResult) -> Result<PutOutcome, ResultStoreError> {
        let i = &self.inner;
        let _guard = i.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = match i.rows.get(&row.invocation_id).map_err(unavailable)? {
            Some(v) => Some(Self::decode(&row.invocation_id, &v)?),
            None => None,
        };
        if let Some(old) = old.as_ref().filter(|o| o.status.is_final()) {
            return Ok(PutOutcome::AlreadyFinal(Box::new(old.clone())));
        }
        let bytes = rmp_serde::to_vec_named(&row).map_err(unavailable)?;
        let mut batch = i.db.batch().durability(Some(PersistMode::SyncData));
        if let Some(old) = &old {
            batch.remove(&i.expiry, expiry_key(old.expires_ms, &old.invocation_id));
        }
        batch.insert(&i.expiry, expiry_key(row.expires_ms, &row.invocation_id), Vec::new());
        batch.insert(&i.rows, row.invocation_id.as_bytes(), bytes);
        batch.commit().map_err(unavailable)?;
        Ok(PutOutcome::Stored)
    }

    fn purge_sync(&self, now_ms: i64) -> Result<u64, ResultStoreError> {
        let i = &self.inner;
        let _guard = i.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = i.db.batch().durability(Some(PersistMode::SyncData));
        let mut n = 0;
        for item in i.expiry.range(expiry_key(0, "")..expiry_key(now_ms.saturating_add(1), "")) {
            let k = item.key().map_err(unavailable)?;
            let id = String::from_utf8_lossy(&k[8..]).into_owned();
            batch.remove(&i.expiry, k);
            batch.remove(&i.rows, id.into_bytes());
            n += 1;
        }
        if n > 0 {
            batch.commit().map_err(unavailable)?;
        }
        Ok(n)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ResultStoreError> + Send + 'static,
) -> Result<T, ResultStoreError> {
    tokio::task::spawn_blocking(f).await.map_err(unavailable)?
}

#[async_trait::async_trait]
impl ResultStore for LocalResultStore {
    fn storage_stats(&self) -> Option<tessera_journal::StorageStats> {
        Some(tessera_journal::StorageStats::of_fjall(&self.inner.db))
    }

    async fn put(&self, row: InvocationResult) -> Result<PutOutcome, ResultStoreError> {
        let me = self.clone();
        blocking(move || me.put_sync(row)).await
    }

    async fn get(&self, id: &str, now_ms: i64) -> Result<Option<InvocationResult>, ResultStoreError> {
        let (me, id) = (self.clone(), id.to_owned());
        blocking(move || match me.inner.rows.get(&id).map_err(unavailable)? {
            Some(v) => Ok(Some(Self::decode(&id, &v)?).filter(|r| r.expires_ms > now_ms)),
            None => Ok(None),
        })
        .await
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64, ResultStoreError> {
        let me = self.clone();
        blocking(move || me.purge_sync(now_ms)).await
    }
}

//! In-memory result store (tests, memory-journal nodes).

use std::collections::HashMap;
use std::sync::Mutex;

use super::{InvocationResult, PutOutcome, ResultStore, ResultStoreError};

/// Results in a map.
#[derive(Default)]
pub struct MemoryResultStore {
    rows: Mutex<HashMap<String, InvocationResult>>,
}

#[async_trait::async_trait]
impl ResultStore for MemoryResultStore {
    async fn put(&self, row: InvocationResult) -> Result<PutOutcome, ResultStoreError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = rows.get(&row.invocation_id).filter(|r| r.status.is_final()) {
            return Ok(PutOutcome::AlreadyFinal(Box::new(old.clone())));
        }
        rows.insert(row.invocation_id.clone(), row);
        Ok(PutOutcome::Stored)
    }

    async fn get(&self, id: &str, now_ms: i64) -> Result<Option<InvocationResult>, ResultStoreError> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rows.get(id).filter(|r| r.expires_ms > now_ms).cloned())
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64, ResultStoreError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let before = rows.len();
        rows.retain(|_, r| r.expires_ms > now_ms);
        Ok((before - rows.len()) as u64)
    }
}

//! The result store conformance checks on every backend.

use tessera_runtime::results::{LocalResultStore, MemoryResultStore, ResultStore, conformance};

async fn all(s: &dyn ResultStore) {
    conformance::final_rows_are_kept(s).await;
    conformance::rows_expire(s).await;
    conformance::large_bodies_are_truncated(s).await;
}

#[tokio::test]
async fn memory() {
    all(&MemoryResultStore::default()).await;
}

#[tokio::test]
async fn local_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = LocalResultStore::open(dir.path()).unwrap();
        all(&s).await;
    }
    let s = LocalResultStore::open(dir.path()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(s.get("a", now).await.unwrap().is_some(), "rows survive a reopen");
}

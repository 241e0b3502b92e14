//! Checks every [`ResultStore`](super::ResultStore) backend passes.

use super::{InvocationResult, PutOutcome, ResultStatus, ResultStore};

fn row(id: &str, status: ResultStatus, expires_ms: i64) -> InvocationResult {
    let mut r = InvocationResult::pending(id, "function:f".into(), "application/json", 1_000, 0);
    r.status = status;
    r.expires_ms = expires_ms;
    r
}

/// Rows are stored, replaced while not final, kept once final.
pub async fn final_rows_are_kept(s: &dyn ResultStore) {
    assert_eq!(s.get("a", 0).await.unwrap(), None);
    assert_eq!(s.put(row("a", ResultStatus::Pending, 10_000)).await.unwrap(), PutOutcome::Stored);
    assert_eq!(s.put(row("a", ResultStatus::Running, 10_000)).await.unwrap(), PutOutcome::Stored);
    let mut done = row("a", ResultStatus::Ok, 10_000);
    done.set_body(vec![0x91, 0x01], 64);
    done.status_code = 200;
    assert_eq!(s.put(done.clone()).await.unwrap(), PutOutcome::Stored);
    match s.put(row("a", ResultStatus::Error, 10_000)).await.unwrap() {
        PutOutcome::AlreadyFinal(old) => assert_eq!(*old, done),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get("a", 5_000).await.unwrap(), Some(done));
}

/// Expired rows are invisible and purged.
pub async fn rows_expire(s: &dyn ResultStore) {
    s.put(row("old", ResultStatus::Ok, 2_000)).await.unwrap();
    s.put(row("new", ResultStatus::Ok, 9_000)).await.unwrap();
    assert!(s.get("old", 1_999).await.unwrap().is_some());
    assert!(s.get("old", 2_000).await.unwrap().is_none(), "expired at its expiry time");
    assert_eq!(s.purge_expired(5_000).await.unwrap(), 1);
    assert!(s.get("new", 5_000).await.unwrap().is_some());
    assert_eq!(s.purge_expired(5_000).await.unwrap(), 0);
}

/// Large bodies are not kept inline.
pub async fn large_bodies_are_truncated(s: &dyn ResultStore) {
    let mut r = row("big", ResultStatus::Ok, 9_000);
    r.set_body(vec![7; 100], 64);
    s.put(r).await.unwrap();
    let got = s.get("big", 0).await.unwrap().unwrap();
    assert_eq!((got.body, got.body_size, got.truncated), (None, 100, true));
}

//! Checks every [`ResultStore`](super::ResultStore) backend passes.

//!
//! Times are relative to the wall clock (`T` is now): backends that expire
//! rows with a database TTL need expiries in the future, and `get` takes the
//! "now" to judge expiry by, so the checks can look past it.

use super::{InvocationResult, PutOutcome, ResultStatus, ResultStore};

fn now() -> i64 {
    crate::now_ms()
}

/// A row expiring `in_ms` after `t`.
fn row(id: &str, status: ResultStatus, t: i64, in_ms: i64) -> InvocationResult {
    let mut r = InvocationResult::pending(id, "function:f".into(), "application/json", t, in_ms);
    r.status = status;
    r
}

/// Rows are stored, replaced while not final, kept once final.
pub async fn final_rows_are_kept(s: &dyn ResultStore) {
    let t = now();
    let hour = 3_600_000;
    assert_eq!(s.get("a", t).await.unwrap(), None);
    assert_eq!(s.put(row("a", ResultStatus::Pending, t, hour)).await.unwrap(), PutOutcome::Stored);
    assert_eq!(s.put(row("a", ResultStatus::Running, t, hour)).await.unwrap(), PutOutcome::Stored);
    assert_eq!(s.get("a", t).await.unwrap().map(|r| r.status), Some(ResultStatus::Running));
    let mut done = row("a", ResultStatus::Ok, t, hour);
    done.set_body(vec![0x91, 0x01], 64);
    done.status_code = 200;
    assert_eq!(s.put(done.clone()).await.unwrap(), PutOutcome::Stored);
    match s.put(row("a", ResultStatus::Error, t, hour)).await.unwrap() {
        PutOutcome::AlreadyFinal(old) => assert_eq!(*old, done),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get("a", t).await.unwrap(), Some(done));
}

/// Expired rows are invisible, and gone after a purge (or the database's TTL).
pub async fn rows_expire(s: &dyn ResultStore) {
    let t = now();
    s.put(row("old", ResultStatus::Ok, t, 60_000)).await.unwrap();
    s.put(row("new", ResultStatus::Ok, t, 3_600_000)).await.unwrap();
    assert!(s.get("old", t + 59_999).await.unwrap().is_some());
    assert!(s.get("old", t + 60_000).await.unwrap().is_none(), "expired at its expiry time");
    let purged = s.purge_expired(t + 120_000).await.unwrap();
    assert!(purged <= 1, "purged {purged}");
    assert!(s.get("old", t).await.unwrap().is_none() || purged == 0, "a purged row is gone");
    assert!(s.get("new", t + 120_000).await.unwrap().is_some(), "live rows stay");
}

/// Large bodies are not kept inline.
pub async fn large_bodies_are_truncated(s: &dyn ResultStore) {
    let t = now();
    let mut r = row("big", ResultStatus::Ok, t, 3_600_000);
    r.set_body(vec![7; 100], 64);
    s.put(r).await.unwrap();
    let got = s.get("big", t).await.unwrap().unwrap();
    assert_eq!((got.body, got.body_size, got.truncated), (None, 100, true));
}

//! Named fault points for crash tests. With `TESSERA_FAULT_POINT=NAME`
//! (and `TESSERA_FAULT_AFTER=N`, default 1) the process aborts — no
//! unwinding, no flush, as `kill -9` would — the N-th time it reaches the
//! point called NAME. Unset (production), a point costs one relaxed load.
//!
//! | point | where |
//! |---|---|
//! | `local.before_commit` | a group commit is built (events, feed entries, heads), not written |
//! | `local.after_commit` | the group commit is durable, no append acknowledged yet |
//! | `scylla.after_intent` | an append's feed intent is written, the conditional append not sent |
//! | `scylla.after_append` | the conditional append committed, no feed offsets given to it yet |
//! | `scylla.after_entries` | a committed append's feed entries are written, the watermark not moved over them |
//! | `scylla.after_watermark` | a unit's watermark was written |
//! | `flow.before_delivery` | (runtime) the dispatcher read committed sends, delivered none |
//! | `flow.after_delivery` | (runtime) the dispatcher delivered a batch's sends, its checkpoint not stored |

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    after: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let name = std::env::var("TESSERA_FAULT_POINT").ok().filter(|n| !n.is_empty())?;
            let after = std::env::var("TESSERA_FAULT_AFTER").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
            Some(Armed { name, after, hits: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Aborts the process here if this point is armed and its hit count is reached.
pub fn point(name: &'static str) {
    if let Some(a) = armed()
        && a.name == name
        && a.hits.fetch_add(1, Ordering::Relaxed) + 1 >= a.after
    {
        eprintln!("fault point {name} reached: aborting");
        std::process::abort();
    }
}

//! This node's view of the cluster bucket, kept current by a KV watch. Entries
//! expire by the bucket's `max_age` on the server without a deletion the
//! watch could see, so an entry is trusted for `ttl` after it was written and
//! treated as gone after; the KV compare-and-set stays the authority (a node
//! that thinks a lease expired early only fails to create it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::store::{Change, ClusterStore, Entry, LeaseState, MemberInfo, Value};

/// The watched bucket.
#[derive(Clone)]
pub struct View {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    ttl: Duration,
}

impl View {
    /// Starts watching `store` (restarting the watch after errors) until the
    /// returned task is aborted.
    pub fn start(store: &ClusterStore) -> (Self, tokio::task::JoinHandle<()>) {
        let view = Self { entries: Arc::default(), ttl: store.ttl() };
        let (v, store) = (view.clone(), store.clone());
        let task = tokio::spawn(async move {
            loop {
                match store.watch().await {
                    Ok(mut w) => {
                        while let Some(change) = w.next().await {
                            match change {
                                Ok(c) => v.apply(c),
                                Err(e) => {
                                    tracing::warn!(error = %e, "cluster watch failed; restarting it");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot watch the cluster bucket; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        (view, task)
    }

    fn apply(&self, change: Change) {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match change {
            Change::Put(e) => {
                m.insert(e.key.clone(), e);
            }
            Change::Delete(k) => {
                m.remove(&k);
            }
        }
    }

    fn fresh(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.seen) < self.ttl
    }

    /// The live entry of `key`, if any.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let now = Instant::now();
        let m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key).filter(|e| self.fresh(e, now)).cloned()
    }

    /// Live members, by node id.
    pub fn members(&self) -> Vec<MemberInfo> {
        let now = Instant::now();
        let m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<MemberInfo> = m
            .values()
            .filter(|e| self.fresh(e, now))
            .filter_map(|e| match &e.value {
                Value::Member(i) => Some(i.clone()),
                Value::Lease(_) => None,
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// The live holder and epoch of a lease key, and whether it is handing off.
    pub fn holder(&self, key: &str) -> Option<(String, u64, LeaseState)> {
        let e = self.get(key)?;
        let epoch = e.epoch()?;
        match e.value {
            Value::Lease(l) => Some((l.owner, epoch, l.state)),
            Value::Member(_) => None,
        }
    }
}

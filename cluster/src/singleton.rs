//! Cluster singletons: a job that runs on exactly one node at a time, held by
//! a lease `singleton/{name}` in the cluster bucket. The holder renews it
//! every third of the TTL; when it cannot prove the lease (renewal lost, or
//! its local deadline passed) the job is aborted, and after the TTL another
//! node's helper takes the lease and starts the job there.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::ClusterError;
use crate::ownership::deadline;
use crate::store::{ClusterStore, LeaseState, LeaseValue, now_ms, singleton_key, valid_name};

/// A running singleton helper on one node.
pub struct Singleton {
    leader: Arc<AtomicBool>,
    task: JoinHandle<()>,
    name: String,
    store: ClusterStore,
    /// The revision and job of the held lease, for a graceful stop.
    held: Arc<std::sync::Mutex<Option<(u64, tokio::task::AbortHandle)>>>,
}

struct Holding {
    epoch: u64,
    revision: u64,
    since_ms: i64,
    until: Instant,
    job: JoinHandle<()>,
}

impl Singleton {
    /// Competes for `singleton/{name}` as `node`; while this node holds it,
    /// `job(epoch)` runs (started anew each time the lease is won).
    pub fn spawn<F, Fut>(store: ClusterStore, name: &str, node: &str, job: F) -> Result<Self, ClusterError>
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if !valid_name(name) {
            return Err(ClusterError::InvalidName(name.to_owned()));
        }
        let leader = Arc::new(AtomicBool::new(false));
        let held: Arc<std::sync::Mutex<Option<(u64, tokio::task::AbortHandle)>>> = Arc::default();
        let (flag, key, node, name_owned) = (leader.clone(), singleton_key(name), node.to_owned(), name.to_owned());
        let (shared, store2) = (held.clone(), store.clone());
        let task = tokio::spawn(async move {
            let ttl = store.ttl();
            let mut holding: Option<Holding> = None;
            loop {
                holding = match holding.take() {
                    None => {
                        let sent = Instant::now();
                        let since_ms = now_ms();
                        let v = LeaseValue { owner: node.clone(), epoch: 0, state: LeaseState::Owned, since_ms };
                        match store.create(&key, &v).await {
                            Ok(Some(epoch)) => {
                                let v = LeaseValue { epoch, ..v };
                                match store.update(&key, &v, epoch).await {
                                    Ok(revision) => {
                                        tracing::info!(singleton = %name_owned, epoch, "this node now runs the singleton");
                                        flag.store(true, Ordering::Release);
                                        let job = tokio::spawn(job(epoch));
                                        Some(Holding { epoch, revision, since_ms, until: deadline(sent, ttl), job })
                                    }
                                    Err(_) => None,
                                }
                            }
                            Ok(None) => None,
                            Err(e) => {
                                tracing::debug!(error = %e, "cannot compete for the singleton");
                                None
                            }
                        }
                    }
                    Some(mut h) => {
                        let sent = Instant::now();
                        let v = LeaseValue {
                            owner: node.clone(),
                            epoch: h.epoch,
                            state: LeaseState::Owned,
                            since_ms: h.since_ms,
                        };
                        match store.update(&key, &v, h.revision).await {
                            Ok(rev) => {
                                h.revision = rev;
                                h.until = deadline(sent, ttl);
                            }
                            Err(ClusterError::Conflict { .. }) => h.until = Instant::now(),
                            Err(e) => tracing::warn!(error = %e, "singleton lease renewal failed"),
                        }
                        if Instant::now() >= h.until {
                            tracing::warn!(singleton = %name_owned, "singleton lease lost; stopping the job here");
                            h.job.abort();
                            flag.store(false, Ordering::Release);
                            None
                        } else {
                            Some(h)
                        }
                    }
                };
                *shared.lock().unwrap_or_else(|p| p.into_inner()) =
                    holding.as_ref().map(|h| (h.revision, h.job.abort_handle()));
                tokio::time::sleep(ttl / 3).await;
            }
        });
        Ok(Self { leader, task, name: name.to_owned(), store: store2, held })
    }

    /// True while this node holds the lease and runs the job.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// The singleton's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops competing: aborts the job and releases the lease so that
    /// another node takes over at once (not after the TTL).
    pub async fn stop(&self) {
        self.task.abort();
        self.leader.store(false, Ordering::Release);
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((revision, job)) = held {
            job.abort();
            if let Err(e) = self.store.delete(&singleton_key(&self.name), revision).await {
                tracing::debug!(error = %e, "singleton lease not released; it expires by itself");
            }
        }
    }

    /// Stops without releasing (a crash, in tests): the lease expires by TTL.
    pub fn abandon(&self) {
        self.task.abort();
        self.leader.store(false, Ordering::Release);
        if let Some((_, job)) = self.held.lock().unwrap_or_else(|p| p.into_inner()).take() {
            job.abort();
        }
    }
}

impl Drop for Singleton {
    fn drop(&mut self) {
        self.abandon();
    }
}

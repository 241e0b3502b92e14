//! The runtime's side of the cluster: what serving a shard means here — a
//! NATS subscription to its command subject, and the shard actor's
//! entities of that type (acquire, hand off, lose).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use tessera_cluster::{ShardHost, Unit};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::NatsLink;
use crate::node::Node;

/// A shard's command subscription: stop it by sending on `stop`.
struct Subscription {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Implements [`ShardHost`] for a node core.
pub(crate) struct NatsShardHost {
    link: NatsLink,
    node: Node,
    subs: Mutex<HashMap<Unit, Subscription>>,
}

impl NatsShardHost {
    pub(crate) fn new(link: NatsLink, node: Node) -> Self {
        Self { link, node, subs: Mutex::default() }
    }

    async fn subscribe(&self, unit: &Unit) {
        let subject = self.link.subjects.command(&unit.entity_type, unit.shard);
        let mut sub = match self.link.client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%unit, error = %e, "cannot subscribe to the shard's subject");
                return;
            }
        };
        self.flush().await;
        let (stop, mut stopped) = oneshot::channel();
        let (link, node) = (self.link.clone(), self.node.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = sub.next() => match msg {
                        Some(m) => {
                            let (n, l) = (node.clone(), link.clone());
                            tokio::spawn(async move { super::ingress::command(&n, &l, m).await });
                        }
                        None => return,
                    },
                    _ = &mut stopped => break,
                }
            }
            // Unsubscribed: answer what was already delivered (the node
            // refuses it as moved, and the caller retries elsewhere).
            let _ = sub.unsubscribe().await;
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
                let (n, l) = (node.clone(), link.clone());
                tokio::spawn(async move { super::ingress::command(&n, &l, m).await });
            }
        });
        let old = self.subs.lock().unwrap_or_else(|p| p.into_inner()).insert(unit.clone(), Subscription { stop, task });
        if let Some(old) = old {
            old.task.abort();
        }
    }

    async fn unsubscribe(&self, unit: &Unit) {
        let sub = self.subs.lock().unwrap_or_else(|p| p.into_inner()).remove(unit);
        if let Some(s) = sub {
            let _ = s.stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(2), s.task).await;
            self.flush().await;
        }
    }

    /// Waits until NATS has our (un)subscriptions, but not forever: when the
    /// server is unreachable there is nobody to tell.
    async fn flush(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.link.client.flush()).await;
    }

    async fn release_entities(&self, unit: &Unit, force: bool) -> usize {
        self.node.release_slice(&unit.entity_type, unit.shard, force).await
    }
}

#[async_trait::async_trait]
impl ShardHost for NatsShardHost {
    async fn acquired(&self, unit: &Unit, epoch: u64) {
        self.node.acquire_slice(&unit.entity_type, unit.shard, epoch);
        self.subscribe(unit).await;
        self.node.metrics().cluster_leases.inc();
        tracing::debug!(%unit, epoch, "serving shard");
    }

    async fn release(&self, unit: &Unit) {
        self.unsubscribe(unit).await;
        while self.release_entities(unit, false).await > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.node.metrics().cluster_leases.dec();
    }

    async fn lost(&self, unit: &Unit) {
        self.unsubscribe(unit).await;
        self.release_entities(unit, true).await;
        self.node.metrics().cluster_leases.dec();
        self.node.metrics().cluster_leases_lost.inc();
    }
}

//! The runtime's side of the cluster: what serving a shard means here (a
//! NATS subscription to its command subject, the shard actor's entities of
//! that type) and forwarding commands for shards this node does not own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use tessera_cluster::{ShardHost, Unit};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::{ClientError, NatsClient};
use crate::error::InvokeError;
use crate::metrics::Metrics;
use crate::nats::NatsLink;
use crate::node::{Invocation, Node, NodeInner};
use crate::shard::{CommandReply, ShardMsg, ShardRefs};

/// A shard's command subscription: stop it by sending on `stop`.
struct Subscription {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Implements [`ShardHost`] for a node.
pub(crate) struct Host {
    link: NatsLink,
    refs: Arc<ShardRefs>,
    metrics: Metrics,
    node: OnceLock<Weak<NodeInner>>,
    subs: Mutex<HashMap<Unit, Subscription>>,
}

impl Host {
    pub(crate) fn new(link: NatsLink, refs: Arc<ShardRefs>, metrics: Metrics) -> Self {
        Self { link, refs, metrics, node: OnceLock::new(), subs: Mutex::default() }
    }

    pub(crate) fn set_node(&self, node: Weak<NodeInner>) {
        let _ = self.node.set(node);
    }

    fn node(&self) -> Option<Node> {
        self.node.get().and_then(Weak::upgrade).map(Node::from_inner)
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
        let (link, node) = (self.link.clone(), self.node());
        let task = tokio::spawn(async move {
            let Some(node) = node else { return };
            loop {
                tokio::select! {
                    msg = sub.next() => match msg {
                        Some(m) => {
                            let (n, l) = (node.clone(), link.clone());
                            tokio::spawn(async move { crate::nats::command(&n, &l, m).await });
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
                tokio::spawn(async move { crate::nats::command(&n, &l, m).await });
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
        let Some(actor) = self.refs.get(unit.shard) else { return 0 };
        let entity_type = unit.entity_type.clone();
        ractor::call!(actor, |reply| ShardMsg::Release { entity_type, force, reply }).unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl ShardHost for Host {
    async fn acquired(&self, unit: &Unit, epoch: u64) {
        if let Some(actor) = self.refs.get(unit.shard) {
            let _ = actor.send_message(ShardMsg::Acquire { entity_type: unit.entity_type.clone() });
        }
        self.subscribe(unit).await;
        self.metrics.cluster_leases.inc();
        tracing::debug!(%unit, epoch, "serving shard");
    }

    async fn release(&self, unit: &Unit) {
        self.unsubscribe(unit).await;
        while self.release_entities(unit, false).await > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.metrics.cluster_leases.dec();
    }

    async fn lost(&self, unit: &Unit) {
        self.unsubscribe(unit).await;
        self.release_entities(unit, true).await;
        self.metrics.cluster_leases.dec();
        self.metrics.cluster_leases_lost.inc();
    }
}

/// Reads an entity's live state on the node that owns its shard, over
/// NATS; retries while the shard moves.
pub(crate) async fn forward_state(
    client: &NatsClient,
    entity_type: &str,
    entity_id: &str,
) -> Result<crate::shard::StateView, InvokeError> {
    match client.state(entity_type, entity_id).await {
        Ok(view) => Ok(crate::shard::StateView { state: view.state, seq: view.seq }),
        Err(ClientError::Status { status, body }) => Err(InvokeError::from_reply(status, &body)),
        Err(ClientError::NoResponders { subject }) => {
            Err(InvokeError::ShardMoved(format!("no node took the shard ({subject}) in time; retry")))
        }
        Err(ClientError::Timeout { timeout, .. }) => {
            Err(InvokeError::Timeout(format!("the owning node did not answer within {} ms", timeout.as_millis())))
        }
        Err(e) => Err(InvokeError::Unavailable(format!("cannot reach the owning node: {e}"))),
    }
}

/// Sends a command to the node that owns its shard, over NATS; retries
/// while the shard moves (see [`NatsClient::send`]).
pub(crate) async fn forward(client: &NatsClient, inv: Invocation) -> Result<CommandReply, InvokeError> {
    let r = client
        .send(&inv.entity_type, &inv.entity_id, &inv.command, inv.body, inv.format, inv.idempotency_key.as_deref())
        .await;
    match r {
        Ok(reply) => Ok(CommandReply {
            reply: reply.body,
            seq: reply.seq.unwrap_or_default(),
            invocation_id: reply.invocation_id.unwrap_or_default(),
            deduplicated: reply.deduplicated,
        }),
        Err(ClientError::Status { status, body }) => Err(InvokeError::from_reply(status, &body)),
        Err(ClientError::NoResponders { subject }) => {
            Err(InvokeError::ShardMoved(format!("no node took the shard ({subject}) in time; retry")))
        }
        Err(ClientError::Timeout { timeout, .. }) => Err(InvokeError::Timeout(format!(
            "the owning node did not answer within {} ms; the outcome is unknown, retry with the same idempotency key",
            timeout.as_millis()
        ))),
        Err(e) => Err(InvokeError::Unavailable(format!("cannot reach the owning node: {e}"))),
    }
}

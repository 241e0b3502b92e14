//! The node core: routes entity invocations to shard actors, reads state,
//! runs stateless functions and async calls. It imports no edge (HTTP,
//! NATS) and no service (autoscaler, sweeper): other nodes and the async
//! queue are reached through the traits in [`ports`], which the edges
//! implement and `crate::server` plugs in. Dependencies run one way: edge →
//! node → shard → journal.

mod async_calls;
mod async_commands;
mod deletion;
mod flow;
mod functions;
pub mod ports;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use ractor::{Actor, ActorRef, RpcReplyPort};
use tessera_entities::{Format, Registry};
use tessera_journal::{EntityInfo, EntityKey, Journal};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument;

pub use async_calls::{AsyncCall, AsyncDecision, LocalQueue, LocalQueueRunner};
pub use deletion::{DELETE_COMMAND, DeleteReason};
pub use flow::Outbox;
pub use ports::{CallQueue, Forwarder, QueuedCall, QueuedCommand, ShardDirectory};

use crate::config::NodeConfig;
use crate::error::InvokeError;
use crate::executor::Executors;
use crate::metrics::Metrics;
use crate::projection::{Projection, Projections};
use crate::results::ResultStore;
use crate::shard::{
    BatchLimits, CommandReply, CommandRequest, DedupLimits, ShardContext, ShardMsg, ShardRefs, ShardSupervisor,
    StateRequest, StateView,
};
use crate::shard::{Replay, replay};

/// One invocation of an entity command.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// The command name.
    pub command: String,
    /// The command body.
    pub body: Vec<u8>,
    /// The body's format (the reply is MessagePack; the edge converts it).
    pub format: Format,
    /// A caller-given idempotency key: a retry with it returns the original reply.
    pub idempotency_key: Option<String>,
}

impl Invocation {
    /// A JSON command without an idempotency key.
    pub fn json(entity_type: &str, entity_id: &str, command: &str, body: &serde_json::Value) -> Self {
        Self {
            entity_type: entity_type.into(),
            entity_id: entity_id.into(),
            command: command.into(),
            body: serde_json::to_vec(body).unwrap_or_default(),
            format: Format::Json,
            idempotency_key: None,
        }
    }
    /// Sets the idempotency key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// Where a state read is served (see docs/runtime-semantics.md, "Reads").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The node that gets the read: the live entity when this node owns it,
    /// otherwise the committed state replayed from the shared journal.
    #[default]
    Any,
    /// The entity's owner (forwarded over NATS in a cluster): its live state,
    /// with no replay on the way.
    Owner,
}

/// What a node core is made of; `crate::server` assembles it.
pub(crate) struct NodeParts {
    pub(crate) registry: Registry,
    pub(crate) config: NodeConfig,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) results: Arc<dyn ResultStore>,
    pub(crate) metrics: Metrics,
    pub(crate) executors: Executors,
    /// In a cluster: the lease table (the fence); `None` outside a cluster.
    pub(crate) ownership: Option<Arc<tessera_cluster::Ownership>>,
    pub(crate) node_id: String,
    /// In a cluster: reaches the owner of a shard served elsewhere.
    pub(crate) forwarder: Option<Arc<dyn Forwarder>>,
    /// Where async calls wait.
    pub(crate) queue: Arc<dyn CallQueue>,
    /// Projections run on this node's units.
    pub(crate) projections: Vec<Arc<dyn Projection>>,
    /// Whether the dispatcher runs (off only in benchmarks).
    pub(crate) dispatcher: bool,
}

pub(crate) struct NodeInner {
    ownership: Option<Arc<tessera_cluster::Ownership>>,
    forwarder: Option<Arc<dyn Forwarder>>,
    queue: Arc<dyn CallQueue>,
    registry: Registry,
    journal: Arc<dyn Journal>,
    config: NodeConfig,
    metrics: Metrics,
    refs: Arc<ShardRefs>,
    supervisor: ActorRef<()>,
    in_flight: AtomicUsize,
    functions: Semaphore,
    results: Arc<dyn ResultStore>,
    node_id: String,
    executors: Executors,
    projections: Projections,
    /// Bounds the feed settlements running after lease acquisitions.
    feed_openings: Semaphore,
    /// In a cluster, once joined: who owns each shard (re-routes forwarded
    /// commands whose owner changed while they were in flight).
    directory: std::sync::OnceLock<Arc<dyn ShardDirectory>>,
}

/// Resolves once the unit's lease holder (or its epoch) is no longer the one
/// first seen: returns the first seen and the new one (`None`: nobody holds
/// it now). While nobody holds it, the first holder to appear is the baseline.
async fn owner_change(
    directory: &dyn ShardDirectory,
    entity_type: &str,
    shard: u32,
) -> (Option<(String, u64)>, Option<(String, u64)>) {
    let mut first = directory.owner(entity_type, shard);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = directory.owner(entity_type, shard);
        match &first {
            None => first = now,
            Some(_) if now != first => return (first, now),
            Some(_) => {}
        }
    }
}

/// The node core: cheap to clone, shared by every edge.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

/// Counts an invocation in flight; refuses past the node's limit.
struct InFlight<'a>(&'a NodeInner);

impl<'a> InFlight<'a> {
    fn enter(n: &'a NodeInner) -> Result<Self, InvokeError> {
        let before = n.in_flight.fetch_add(1, Ordering::AcqRel);
        n.metrics.in_flight.inc();
        let guard = Self(n);
        if before >= n.config.limits.max_in_flight {
            return Err(InvokeError::Unavailable(format!(
                "node at capacity ({} invocations in flight)",
                n.config.limits.max_in_flight
            )));
        }
        Ok(guard)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.in_flight.dec();
    }
}

/// A fresh invocation id: a UUIDv7 in its hyphenated form (encoded
/// directly, without the formatting machinery `to_string` goes through).
pub(crate) fn new_invocation_id() -> String {
    String::from(&*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()))
}

impl Node {
    /// Starts the shard actors over the parts.
    pub(crate) async fn start(p: NodeParts) -> Result<Self, String> {
        let clustered = p.ownership.is_some();
        let c = &p.config;
        let settings = crate::projection::ProjectionSettings {
            batch: c.projections.batch,
            idle_poll: std::time::Duration::from_millis(c.projections.idle_poll_ms.max(1)),
            checkpoint_every: std::time::Duration::from_millis(c.projections.checkpoint_every_ms),
            linger: std::time::Duration::from_millis(c.projections.linger_ms),
        };
        // The dispatcher (messages, timers, calls) follows every entity type.
        let deliver = Arc::new(std::sync::OnceLock::<Arc<dyn crate::flow::Deliver>>::new());
        let types: Vec<String> = p.registry.entities().map(|e| e.type_name().to_owned()).collect();
        let mut list = p.projections;
        if !types.is_empty() && p.dispatcher {
            // Listed after the user's projections (`GET /v1/projections` shows it too).
            list.push(crate::flow::Dispatcher::new(types, deliver.clone(), p.metrics.clone()));
        }
        let projections = Projections::new(p.journal.clone(), list, p.metrics.clone(), settings);
        let on_commit: Option<crate::shard::CommitHook> = if projections.list().is_empty() {
            None
        } else {
            let p = projections.clone();
            Some(Arc::new(move |t: &str, shard: u32, flow: bool| p.committed(t, shard, flow)))
        };
        if !clustered {
            // Outside a cluster this node owns every unit.
            projections.start_all();
        }
        let ctx = Arc::new(ShardContext {
            on_commit,
            fence: p.ownership.clone(),
            node_id: clustered.then(|| p.node_id.clone()),
            journal: p.journal.clone(),
            metrics: p.metrics.clone(),
            dedup: DedupLimits {
                max_entries: c.limits.dedup_max_entries,
                max_age_ms: (c.limits.idempotency_retention_secs as i64).saturating_mul(1000),
            },
            key_retention: {
                let config = c.clone();
                Arc::new(move |t: &str| config.idempotency_retention(t))
            },
            entity_queue_limit: c.limits.entity_queue_limit,
            batch: BatchLimits { commands: c.journal.entity_batch, bytes: c.journal.entity_batch_bytes },
            snapshot_every: u64::from(c.journal.snapshot_every),
            idle_timeout: c.idle_timeout(),
            shard_budget: c.limits.max_active_entities.div_ceil(c.journal.shards as usize).max(1),
        });
        let refs = Arc::new(ShardRefs::new(c.journal.shards));
        let (supervisor, _) = Actor::spawn(None, ShardSupervisor, (ctx, refs.clone(), c.journal.shards))
            .await
            .map_err(|e| e.to_string())?;
        let node = Self {
            inner: Arc::new(NodeInner {
                functions: Semaphore::new(c.executors.function_concurrency),
                ownership: p.ownership,
                forwarder: p.forwarder,
                queue: p.queue,
                registry: p.registry,
                journal: p.journal,
                metrics: p.metrics,
                refs,
                supervisor,
                in_flight: AtomicUsize::new(0),
                results: p.results,
                node_id: p.node_id,
                executors: p.executors,
                config: p.config,
                projections,
                feed_openings: Semaphore::new(16),
                directory: std::sync::OnceLock::new(),
            }),
        };
        let _ = deliver.set(Arc::new(flow::NodeDeliver(Arc::downgrade(&node.inner))));
        if !clustered {
            // This node owns every unit: settle what a previous run left
            // unresolved in their feeds (Scylla), in the background.
            for t in node.inner.registry.entities().map(|e| e.type_name().to_owned()).collect::<Vec<_>>() {
                for shard in 0..node.inner.config.journal.shards {
                    node.open_unit_feed(t.clone(), shard, 0);
                }
            }
        }
        Ok(node)
    }

    /// Stops the executors and the shard actors (in-flight appends complete
    /// in the journal). The edges must have stopped first.
    pub(crate) async fn stop(&self) {
        // Feed settlings still retrying end (they would go on retrying a
        // journal the stopped node no longer uses, e.g. one being dropped).
        self.inner.feed_openings.close();
        self.inner.projections.stop();
        self.inner.executors.stop();
        let sup = &self.inner.supervisor;
        sup.stop_children_and_wait(Some("shutdown".into()), Some(std::time::Duration::from_secs(10))).await;
        let _ = sup.stop_and_wait(Some("shutdown".into()), Some(std::time::Duration::from_secs(10))).await;
    }

    /// This node just acquired the lease of `entity_type` in `shard` under
    /// `epoch`: its shard actor forgets anything cached for it and takes its
    /// commands; in the background, the unit's feed is settled (what a
    /// previous owner left becomes visible) and its projections start.
    pub(crate) fn acquire_slice(&self, entity_type: &str, shard: u32, epoch: u64) {
        if let Some(actor) = self.inner.refs.get(shard) {
            let _ = actor.send_message(ShardMsg::Acquire { entity_type: entity_type.to_owned() });
        }
        self.open_unit_feed(entity_type.to_owned(), shard, epoch);
    }

    /// Settles the unit's feed under `epoch` in the background (retrying
    /// while the journal is down, until the node stops), then — in a
    /// cluster, if the lease is still this epoch's — starts its projections.
    fn open_unit_feed(&self, t: String, shard: u32, epoch: u64) {
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = me.inner.feed_openings.acquire().await else { return };
            let mut wait = std::time::Duration::from_millis(200);
            while let Err(e) = me.inner.journal.open_feed(&t, shard, epoch).await {
                let moved = me.inner.ownership.as_ref().is_some_and(|o| o.fence(&t, shard) != Some(epoch));
                if moved || me.inner.feed_openings.is_closed() {
                    return;
                }
                tracing::warn!(entity_type = %t, shard, error = %e, "cannot settle the unit's feed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(10));
            }
            if me.inner.ownership.as_ref().is_some_and(|o| o.fence(&t, shard) == Some(epoch)) {
                me.inner.projections.start_unit(&t, shard);
            }
        });
    }

    /// This node hands off (or lost, `force`) the lease of `entity_type` in
    /// `shard`: its new commands are refused, its idle entities (all, when
    /// forced) passivated; returns how many are still busy.
    pub(crate) async fn release_slice(&self, entity_type: &str, shard: u32, force: bool) -> usize {
        self.inner.projections.stop_unit(entity_type, shard);
        let Some(actor) = self.inner.refs.get(shard) else { return 0 };
        let entity_type = entity_type.to_owned();
        ractor::call!(actor, |reply| ShardMsg::Release { entity_type, force, reply }).unwrap_or(0)
    }

    /// True when this node is part of a cluster (shards held by lease).
    pub fn clustered(&self) -> bool {
        self.inner.ownership.is_some()
    }
    /// The registry this node serves.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
    /// The journal.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }
    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }
    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }
    /// The executors (one per GPU, and the CPU ones).
    pub fn executors(&self) -> &Executors {
        &self.inner.executors
    }
    /// The result store.
    pub fn results(&self) -> &Arc<dyn ResultStore> {
        &self.inner.results
    }

    /// The invocation contract (see [`crate::contract`]) for what the edge
    /// could not check: the id, the key, the size (the type and command are
    /// checked against the registry when the command is decoded).
    fn admit(&self, inv: &Invocation) -> Result<(), InvokeError> {
        crate::contract::entity_id(&inv.entity_id)?;
        crate::contract::idempotency_key(inv.idempotency_key.as_deref())?;
        crate::contract::body_size(inv.body.len(), self.inner.config.http.max_body_bytes)
    }

    fn record(&self, kind: &str, started: Instant, result: Result<(), u16>) {
        self.inner.metrics.invocation(kind, result, started.elapsed().as_secs_f64());
    }

    /// Runs one entity command: decoded here, handled by the entity's shard
    /// actor, its events durable before this returns.
    pub async fn invoke(&self, inv: Invocation) -> Result<CommandReply, InvokeError> {
        self.invoke_traced(inv, true).await
    }

    /// Runs a command on this node only: in a cluster, refuses it as
    /// `shard_moved` unless this node serves the shard (the NATS handler of
    /// a shard subject uses this: forwarding there could loop).
    pub(crate) async fn invoke_here(&self, inv: Invocation) -> Result<CommandReply, InvokeError> {
        self.invoke_traced(inv, false).await
    }

    async fn invoke_traced(&self, inv: Invocation, may_forward: bool) -> Result<CommandReply, InvokeError> {
        let started = Instant::now();
        if let Err(e) = self.admit(&inv) {
            self.record("command", started, Err(e.status()));
            return Err(e);
        }
        let invocation_id = inv.idempotency_key.clone().unwrap_or_else(new_invocation_id);
        let span = crate::telemetry::invocation_span!(
            "invoke",
            entity_type = %inv.entity_type,
            entity_id = %inv.entity_id,
            command = %inv.command,
            invocation_id = %invocation_id,
        );
        let result = self.invoke_routed(inv, invocation_id, span.clone(), may_forward).instrument(span).await;
        self.record("command", started, result.as_ref().map(|_| ()).map_err(InvokeError::status));
        result
    }

    /// In a cluster, runs the command here when this node serves the shard
    /// and forwards it to the owner otherwise (also when the shard moved
    /// away while the command waited here).
    async fn invoke_routed(
        &self,
        mut inv: Invocation,
        invocation_id: String,
        span: tracing::Span,
        may_forward: bool,
    ) -> Result<CommandReply, InvokeError> {
        let n = &self.inner;
        let Some(ownership) = &n.ownership else {
            let key = EntityKey::new(std::mem::take(&mut inv.entity_type), std::mem::take(&mut inv.entity_id));
            return self.invoke_inner(key, &inv, invocation_id, span).await;
        };
        let shard = tessera_journal::shard_of(&inv.entity_type, &inv.entity_id, n.config.journal.shards);
        if ownership.accepting(&inv.entity_type, shard) {
            // The invocation stays whole: it is forwarded if the shard moved
            // away while the command waited here.
            let key = EntityKey::new(inv.entity_type.clone(), inv.entity_id.clone());
            return match self.invoke_inner(key, &inv, invocation_id.clone(), span).await {
                Err(InvokeError::ShardMoved(_)) if may_forward => Box::pin(self.forward(inv, &invocation_id)).await,
                other => other,
            };
        }
        if !may_forward {
            n.registry
                .entity(&inv.entity_type)
                .ok_or_else(|| InvokeError::UnknownEntityType(inv.entity_type.clone()))?;
            return Err(InvokeError::ShardMoved(format!(
                "node {} does not serve {}/{shard} (now)",
                n.node_id, inv.entity_type
            )));
        }
        let entity = n
            .registry
            .entity(&inv.entity_type)
            .ok_or_else(|| InvokeError::UnknownEntityType(inv.entity_type.clone()))?;
        if inv.command != DELETE_COMMAND {
            entity.decode_command(&inv.command, &inv.body, inv.format)?;
        }
        // Boxed: the cold path's future (a NATS request raced against the
        // lease table) would otherwise be part of every command's future.
        Box::pin(self.forward(inv, &invocation_id)).await
    }

    /// Plugs in the cluster's lease table (once; later calls are ignored).
    pub fn set_directory(&self, directory: Arc<dyn ShardDirectory>) {
        let _ = self.inner.directory.set(directory);
    }

    /// Forwards the command to the shard's owner. It carries the caller's
    /// idempotency key or, without one, its invocation id as the key, so
    /// that it can be sent again safely: when the shard's owner changes
    /// while the command is in flight (the owner died, or handed the shard
    /// over), it is re-sent to the new owner at once, and applied once
    /// whether or not the old owner committed it. The caller waits for the
    /// failover, not for its whole timeout.
    async fn forward(&self, mut inv: Invocation, invocation_id: &str) -> Result<CommandReply, InvokeError> {
        let n = &self.inner;
        let Some(forwarder) = &n.forwarder else {
            return Err(InvokeError::Unavailable("this node cannot forward (no NATS)".into()));
        };
        if !forwarder.reachable() {
            return Err(InvokeError::Unavailable(
                "this node cannot reach the shard's owner to forward the command; retry on another node".into(),
            ));
        }
        let _in_flight = InFlight::enter(n)?;
        n.metrics.cluster_forwards.inc();
        tracing::debug!(entity_type = %inv.entity_type, entity_id = %inv.entity_id, invocation_id, "forwarding to the shard's owner");
        if inv.idempotency_key.is_none() {
            inv.idempotency_key = Some(invocation_id.to_owned());
        }
        let Some(directory) = n.directory.get() else { return forwarder.command(inv).await };
        let shard = tessera_journal::shard_of(&inv.entity_type, &inv.entity_id, n.config.journal.shards);
        let deadline = Instant::now() + n.config.invocation_timeout();
        loop {
            let attempt = forwarder.command(inv.clone());
            let moved = owner_change(directory.as_ref(), &inv.entity_type, shard);
            tokio::select! {
                r = attempt => return r,
                (from, to) = moved => {
                    n.metrics.cluster_reroutes.inc();
                    tracing::info!(
                        entity_type = %inv.entity_type,
                        entity_id = %inv.entity_id,
                        invocation_id,
                        ?from,
                        ?to,
                        "the shard's owner changed while the command was in flight; sending it again"
                    );
                }
            }
            if Instant::now() >= deadline {
                return Err(InvokeError::Timeout(format!(
                    "the shard's owner changed and no new owner answered within {} ms; retry with the same idempotency key",
                    n.config.limits.invocation_timeout_ms
                )));
            }
        }
    }

    /// Runs the command of `inv` for `key` (taken from `inv`, whose type and
    /// id fields are not read here) on this node's shard actor.
    async fn invoke_inner(
        &self,
        key: EntityKey,
        inv: &Invocation,
        invocation_id: String,
        span: tracing::Span,
    ) -> Result<CommandReply, InvokeError> {
        if inv.command == DELETE_COMMAND {
            return Box::pin(self.delete_here(key, inv, invocation_id, span)).await;
        }
        let n = &self.inner;
        let entity = self.entity_type(&key.entity_type)?;
        let command = entity.decode_command(&inv.command, &inv.body, inv.format)?;
        let _in_flight = InFlight::enter(n)?;
        let retryable = inv.idempotency_key.is_some();
        self.ask_shard(key, |key, reply| {
            let entity = entity.clone();
            ShardMsg::Command(CommandRequest {
                key,
                entity,
                command,
                retryable,
                invocation_id,
                span,
                timer: None,
                reply,
            })
        })
        .await
    }

    /// The registered entity type, or `unknown_entity_type`.
    fn entity_type(&self, entity_type: &str) -> Result<&Arc<dyn tessera_entities::DynEntity>, InvokeError> {
        self.inner.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))
    }

    fn shard_actor(&self, key: &EntityKey) -> Result<ActorRef<ShardMsg>, InvokeError> {
        let shard = key.shard(self.inner.config.journal.shards);
        self.inner.refs.get(shard).ok_or_else(|| InvokeError::Unavailable(format!("shard {shard} is not running")))
    }

    /// Sets the storage gauges from the embedded journal's and result
    /// store's engines (no-op for stores kept elsewhere).
    pub fn record_storage_metrics(&self) {
        let n = &self.inner;
        if let Some(s) = n.journal.storage_stats() {
            n.metrics.record_storage("journal", s);
        }
        if let Some(s) = n.results.storage_stats() {
            n.metrics.record_storage("results", s);
        }
    }

    /// Sends the shard actor that holds `key` the message `ask` builds
    /// around a reply port, and awaits its reply (within the invocation timeout).
    async fn ask_shard<T: Send + 'static>(
        &self,
        key: EntityKey,
        ask: impl FnOnce(EntityKey, RpcReplyPort<Result<T, InvokeError>>) -> ShardMsg,
    ) -> Result<T, InvokeError> {
        let actor = self.shard_actor(&key)?;
        let (tx, rx) = oneshot::channel();
        actor
            .send_message(ask(key, tx.into()))
            .map_err(|_| InvokeError::Unavailable("shard actor is restarting".into()))?;
        self.await_reply(rx).await
    }

    async fn await_reply<T>(&self, rx: oneshot::Receiver<Result<T, InvokeError>>) -> Result<T, InvokeError> {
        match tokio::time::timeout(self.inner.config.invocation_timeout(), rx).await {
            Err(_) => Err(InvokeError::Timeout(format!(
                "no reply within {} ms; the outcome is unknown, retry with the same idempotency key",
                self.inner.config.limits.invocation_timeout_ms
            ))),
            Ok(Err(_)) => Err(InvokeError::Unavailable("the shard actor stopped before replying".into())),
            Ok(Ok(r)) => r,
        }
    }

    /// The current state of an entity (activating it if needed), served by
    /// this node (see [`ReadFrom::Any`]).
    pub async fn state(&self, entity_type: &str, entity_id: &str) -> Result<StateView, InvokeError> {
        self.state_from(entity_type, entity_id, ReadFrom::Any).await
    }

    /// The current state of an entity, read where `from` says.
    pub async fn state_from(
        &self,
        entity_type: &str,
        entity_id: &str,
        from: ReadFrom,
    ) -> Result<StateView, InvokeError> {
        let started = Instant::now();
        let result = async {
            let n = &self.inner;
            crate::contract::entity_id(entity_id)?;
            let entity =
                n.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))?;
            let _in_flight = InFlight::enter(n)?;
            let key = EntityKey::new(entity_type, entity_id);
            if let Some(o) = &n.ownership
                && !o.accepting(entity_type, key.shard(n.config.journal.shards))
            {
                if from == ReadFrom::Owner {
                    return self.forward_state(entity_type, entity_id).await;
                }
                // Another node serves it: read the committed state from the journal.
                return replay(entity, &n.journal, &key, Replay::Latest).await;
            }
            self.state_of_actor(key, entity).await
        }
        .await;
        self.record("state", started, result.as_ref().map(|_| ()).map_err(InvokeError::status));
        result
    }

    /// The live state of an entity this node serves; in a cluster refuses
    /// (`shard_moved`) unless this node holds the shard (the NATS handler of
    /// a shard subject uses this).
    pub(crate) async fn state_here(&self, entity_type: &str, entity_id: &str) -> Result<StateView, InvokeError> {
        let n = &self.inner;
        crate::contract::entity_id(entity_id)?;
        let entity =
            n.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))?;
        let key = EntityKey::new(entity_type, entity_id);
        let shard = key.shard(n.config.journal.shards);
        if let Some(o) = &n.ownership
            && !o.accepting(entity_type, shard)
        {
            return Err(InvokeError::ShardMoved(format!(
                "node {} does not serve {entity_type}/{shard} (now)",
                n.node_id
            )));
        }
        let _in_flight = InFlight::enter(n)?;
        self.state_of_actor(key, entity).await
    }

    async fn state_of_actor(
        &self,
        key: EntityKey,
        entity: &Arc<dyn tessera_entities::DynEntity>,
    ) -> Result<StateView, InvokeError> {
        self.ask_shard(key, |key, reply| ShardMsg::State(StateRequest { key, entity: entity.clone(), reply })).await
    }

    async fn forward_state(&self, entity_type: &str, entity_id: &str) -> Result<StateView, InvokeError> {
        let Some(forwarder) = &self.inner.forwarder else {
            return Err(InvokeError::Unavailable("this node cannot forward (no NATS)".into()));
        };
        self.inner.metrics.cluster_forwards.inc();
        forwarder.state(entity_type, entity_id).await
    }

    /// The state of an entity as it was after event `seq` (time travel),
    /// rebuilt from the journal without snapshots; the live entity is untouched.
    pub async fn state_at(&self, entity_type: &str, entity_id: &str, seq: u64) -> Result<StateView, InvokeError> {
        let n = &self.inner;
        let entity =
            n.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))?;
        let key = EntityKey::new(entity_type, entity_id);
        replay(entity, &n.journal, &key, Replay::AsOf(seq)).await
    }

    /// Events of an entity with seq in `from..=to`, at most `limit`.
    pub async fn events(
        &self,
        entity_type: &str,
        entity_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<tessera_journal::PersistedEvent>, InvokeError> {
        let key = EntityKey::new(entity_type, entity_id);
        Ok(self.inner.journal.read(&key, from..=to).take(limit).try_collect().await?)
    }

    /// Entities of a type with a journal, ids after `after`, at most `limit`.
    pub async fn entities(
        &self,
        entity_type: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EntityInfo>, InvokeError> {
        self.entities_with_prefix(entity_type, after, "", limit).await
    }

    /// [`Self::entities`] whose ids start with `prefix` (a scan of the type's list).
    pub async fn entities_with_prefix(
        &self,
        entity_type: &str,
        after: Option<&str>,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<EntityInfo>, InvokeError> {
        let (after, prefix) = (after.map(str::to_owned), prefix.to_owned());
        Ok(self
            .inner
            .journal
            .entities(entity_type)
            .try_filter(move |e| {
                let id = e.entity_id.as_str();
                std::future::ready(after.as_deref().is_none_or(|a| id > a) && id.starts_with(prefix.as_str()))
            })
            .take(limit)
            .try_collect()
            .await?)
    }
}

/// The shard feed and the projections.
impl Node {
    fn check_unit(&self, entity_type: &str, shard: u32) -> Result<(), InvokeError> {
        self.inner.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))?;
        let shards = self.inner.config.journal.shards;
        if shard >= shards {
            return Err(InvokeError::Malformed(format!("shard {shard} does not exist (shards 0..{shards})")));
        }
        Ok(())
    }

    /// The extent of a unit's feed.
    pub async fn feed_bounds(&self, entity_type: &str, shard: u32) -> Result<tessera_journal::FeedBounds, InvokeError> {
        self.check_unit(entity_type, shard)?;
        Ok(self.inner.journal.feed_bounds(entity_type, shard).await?)
    }

    /// Up to `limit` entries of a unit's feed after offset `after`; an
    /// offset that expired is `feed_expired`.
    pub async fn feed(
        &self,
        entity_type: &str,
        shard: u32,
        after: u64,
        limit: usize,
    ) -> Result<Vec<tessera_journal::ShardEvent>, InvokeError> {
        self.check_unit(entity_type, shard)?;
        Ok(self.inner.journal.events_by_shard(entity_type, shard, after).take(limit).try_collect().await?)
    }

    /// The projections of this node.
    pub(crate) fn projections(&self) -> &Projections {
        &self.inner.projections
    }

    /// The projection called `name`.
    pub(crate) fn projection(&self, name: &str) -> Result<&Arc<dyn Projection>, InvokeError> {
        self.inner.projections.get(name).ok_or_else(|| InvokeError::UnknownProjection(name.into()))
    }

    /// Moves the checkpoints of a projection that keeps no state back to
    /// `to` (in one type or shard, or everywhere); returns how many moved.
    pub async fn rewind_projection(
        &self,
        name: &str,
        to: u64,
        entity_type: Option<&str>,
        shard: Option<u32>,
    ) -> Result<usize, InvokeError> {
        let p = self.projection(name)?;
        refuse_internal(name)?;
        if p.keeps_state() && to > 0 {
            return Err(InvokeError::Malformed(format!(
                "projection `{name}` keeps state with its checkpoints: it can be reset, not rewound to an offset"
            )));
        }
        Ok(self.inner.projections.rewind(name, to, entity_type, shard).await?)
    }

    /// Moves a projection's checkpoints to 0 and drops its kept state.
    pub async fn reset_projection(
        &self,
        name: &str,
        entity_type: Option<&str>,
        shard: Option<u32>,
    ) -> Result<usize, InvokeError> {
        self.projection(name)?;
        refuse_internal(name)?;
        Ok(self.inner.projections.rewind(name, 0, entity_type, shard).await?)
    }
}

/// The runtime's own projections (`tessera.dispatch`) are not moved by
/// hand: the dispatcher keeps pending timers with its checkpoint, and a
/// reset past the feed's retention would lose timers whose `schedule`
/// record expired (found by schemathesis resetting it: 6 144 units, 9 s).
fn refuse_internal(name: &str) -> Result<(), InvokeError> {
    if name.starts_with("tessera.") {
        return Err(InvokeError::Malformed(format!(
            "projection `{name}` is the runtime's own: it cannot be rewound or reset by hand"
        )));
    }
    Ok(())
}

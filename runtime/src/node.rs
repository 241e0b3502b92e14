//! The node: routes invocations to shard actors, runs stateless functions,
//! owns the journal and the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use ractor::{Actor, ActorRef};
use tessera_entities::{FnCtx, Format, Registry};
use tessera_journal::{EntityInfo, EntityKey, Journal, LocalJournal, MemoryJournal, OpenError, ScyllaJournal};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument;

use crate::config::{ConfigError, JournalKind, NodeConfig};
use crate::error::InvokeError;
use crate::executor::{ExecutorSettings, Executors};
use crate::http::HttpServer;
use crate::metrics::Metrics;
use crate::nats::{NatsError, NatsIngress, NatsLink};
use crate::results::{
    InvocationResult, LocalResultStore, MemoryResultStore, PutOutcome, ResultStatus, ResultStore, ResultStoreError,
    ScyllaResultStore,
};
use crate::shard::{
    CommandReply, CommandRequest, DedupLimits, ShardContext, ShardMsg, ShardRefs, ShardSupervisor, StateRequest,
    StateView, rebuild,
};

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

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] OpenError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        message: String,
    },
    /// The actors could not start.
    #[error("cannot start actors: {0}")]
    Spawn(String),
    /// NATS could not be reached or set up.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The result store could not be opened.
    #[error(transparent)]
    Results(#[from] ResultStoreError),
    /// The node could not join its cluster.
    #[error(transparent)]
    Cluster(#[from] tessera_cluster::ClusterError),
}

/// One delivery of an async invocation, as `Node::run_async` takes it.
#[derive(Debug, Clone, Copy)]
pub struct AsyncCall<'a> {
    /// The invocation id.
    pub id: &'a str,
    /// The function.
    pub function: &'a str,
    /// The input.
    pub body: &'a [u8],
    /// The input's format.
    pub format: Format,
    /// The caller's request id, if any.
    pub request_id: Option<&'a str>,
}

/// What to do with an async invocation's message after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncDecision {
    /// Done (a final result is stored): acknowledge.
    Ack,
    /// A retryable failure: deliver again after this delay.
    Retry(std::time::Duration),
}

/// Builds a [`Node`].
///
/// ```no_run
/// # async fn f(registry: tessera_entities::Registry) -> Result<(), tessera_runtime::NodeError> {
/// use tessera_runtime::{NodeBuilder, NodeConfig};
/// let node = NodeBuilder::new(registry)
///     .config(NodeConfig { data_dir: "data".into(), ..NodeConfig::default() })
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
pub struct NodeBuilder {
    registry: Registry,
    config: NodeConfig,
    journal: Option<Arc<dyn Journal>>,
    journal_layer: Option<JournalLayer>,
    results: Option<Arc<dyn ResultStore>>,
    scaler: Option<Arc<dyn crate::autoscaler::Scaler>>,
}

/// Wraps the journal a node opens (e.g. to observe or delay its calls in
/// fault tests); see [`NodeBuilder::journal_layer`].
pub type JournalLayer = Arc<dyn Fn(Arc<dyn Journal>) -> Arc<dyn Journal> + Send + Sync>;

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

impl NodeBuilder {
    /// A node serving `registry`'s entities and functions, with default config.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            config: NodeConfig::default(),
            journal: None,
            journal_layer: None,
            results: None,
            scaler: None,
        }
    }
    /// Wraps the journal the node uses (the one given or the one the config
    /// names) in `layer` before anything else sees it.
    pub fn journal_layer(mut self, layer: JournalLayer) -> Self {
        self.journal_layer = Some(layer);
        self
    }
    /// Uses this scaler for the autoscaler instead of the one the config names.
    pub fn scaler(mut self, scaler: Arc<dyn crate::autoscaler::Scaler>) -> Self {
        self.scaler = Some(scaler);
        self
    }
    /// Replaces the configuration.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }
    /// Uses this journal instead of the one the config names.
    pub fn journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }
    /// Uses this result store instead of the one next to the journal.
    pub fn results(mut self, results: Arc<dyn ResultStore>) -> Self {
        self.results = Some(results);
        self
    }
    /// Opens the journal, starts the shard actors and the HTTP server.
    pub async fn build(self) -> Result<Node, NodeError> {
        let config = self.config;
        config.validate()?;
        let metrics = Metrics::new();
        let journal_given = self.journal.is_some();
        let mut scylla: Option<ScyllaJournal> = None;
        let journal: Arc<dyn Journal> =
            match self.journal {
                Some(j) => j,
                None => match &config.journal {
                    JournalKind::Memory => Arc::new(MemoryJournal::new(config.shards)),
                    JournalKind::Scylla(url) => {
                        let j = ScyllaJournal::connect(url, config.shards).await?;
                        scylla = Some(j.clone());
                        Arc::new(j)
                    }
                    JournalKind::Local => {
                        let (batch, latency) = (metrics.commit_batch.clone(), metrics.commit_latency.clone());
                        let j = LocalJournal::builder(&config.data_dir)
                            .shards(config.shards)
                            .durability(config.durability)
                            .max_batch(config.max_commit_batch)
                            .on_commit(move |n, d| {
                                batch.observe(n as f64);
                                latency.observe(d.as_secs_f64());
                            });
                        let path = config.data_dir.clone();
                        Arc::new(tokio::task::spawn_blocking(move || j.open()).await.map_err(|e| OpenError::Io {
                            path: path.display().to_string(),
                            message: e.to_string(),
                        })??)
                    }
                },
            };
        let journal = match &self.journal_layer {
            Some(layer) => layer(journal),
            None => journal,
        };
        let results: Arc<dyn ResultStore> = match (self.results, journal_given, &config.journal) {
            (Some(r), _, _) => r,
            (None, false, JournalKind::Scylla(_)) => match &scylla {
                Some(j) => Arc::new(ScyllaResultStore::new(j)),
                None => Arc::new(MemoryResultStore::default()),
            },
            (None, false, JournalKind::Local) => {
                let dir = config.data_dir.join("results");
                Arc::new(
                    tokio::task::spawn_blocking(move || LocalResultStore::open(&dir))
                        .await
                        .map_err(|e| ResultStoreError::Unavailable(e.to_string()))??,
                )
            }
            _ => Arc::new(MemoryResultStore::default()),
        };
        let nats = match &config.nats {
            Some(url) => {
                Some(NatsLink::connect(url, &config.nats_prefix, Duration::from_secs(config.result_ttl_secs)).await?)
            }
            None => None,
        };
        let node_id = config.node_id.clone().unwrap_or_else(|| format!("node-{}", &new_invocation_id()[24..]));
        let sweeper = {
            let results = results.clone();
            let every = Duration::from_secs(config.result_ttl_secs.clamp(1, 60));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match results.purge_expired(now_ms()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(purged = n, "expired results purged"),
                        Err(e) => tracing::warn!(error = %e, "cannot purge expired results"),
                    }
                }
            })
        };
        let executors = Executors::start(
            config.cpu_executors,
            ExecutorSettings {
                max_batch: config.executor_max_batch.max(1),
                max_wait: Duration::from_micros(config.executor_max_wait_us),
                queue_limit: config.executor_queue_limit.max(1),
                watchdog: Duration::from_millis(config.executor_watchdog_ms.max(1)),
            },
            metrics.clone(),
        )
        .await
        .map_err(NodeError::Spawn)?;
        let gpu_sampler = if executors.list().iter().any(|e| matches!(e.device, tessera_entities::Device::Gpu(_))) {
            let m = metrics.clone();
            Some(tokio::spawn(async move {
                loop {
                    for g in crate::executor::devices::gpus() {
                        let i = g.index.to_string();
                        m.gpu_utilization.with_label_values(&[&i]).set(i64::from(g.utilization));
                        m.gpu_memory_used
                            .with_label_values(&[&i])
                            .set(g.memory_total.saturating_sub(g.memory_free) as i64);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }))
        } else {
            None
        };
        let clustered = config.clustered();
        let ownership = clustered.then(|| {
            let types = self.registry.entities().map(|e| e.type_name().to_owned()).collect();
            Arc::new(tessera_cluster::Ownership::new(types, config.shards))
        });
        let ctx = Arc::new(ShardContext {
            fence: ownership.clone(),
            node_id: clustered.then(|| node_id.clone()),
            journal: journal.clone(),
            metrics: metrics.clone(),
            dedup: DedupLimits {
                max_entries: config.dedup_max_entries,
                max_age_ms: (config.dedup_max_age_secs as i64).saturating_mul(1000),
            },
            entity_queue_limit: config.entity_queue_limit,
            snapshot_every: u64::from(config.snapshot_every),
            idle_timeout: config.idle_timeout(),
            shard_budget: config.max_active_entities.div_ceil(config.shards as usize).max(1),
        });
        let refs = Arc::new(ShardRefs::new(config.shards));
        let (supervisor, _) = Actor::spawn(None, ShardSupervisor, (ctx, refs.clone(), config.shards))
            .await
            .map_err(|e| NodeError::Spawn(e.to_string()))?;
        let forwarder = match (&nats, clustered) {
            (Some(link), true) => Some(
                crate::client::NatsClient::from_client(link.client.clone())
                    .with_prefix(&config.nats_prefix)
                    .with_shards(config.shards)
                    .with_timeout(config.invocation_timeout())
                    .with_accept(Format::MsgPack),
            ),
            _ => None,
        };
        let scaler: Option<Arc<dyn crate::autoscaler::Scaler>> = match (self.scaler, config.autoscaler) {
            (Some(s), _) => Some(s),
            (None, crate::autoscaler::AutoscalerKind::None) => None,
            (None, crate::autoscaler::AutoscalerKind::DryRun) => Some(Arc::new(crate::autoscaler::DryRunScaler)),
            (None, crate::autoscaler::AutoscalerKind::Local) => Some(Arc::new(
                crate::autoscaler::LocalProcessScaler::for_current_process(config.data_dir.join("autoscaled"))
                    .map_err(|e| NodeError::Spawn(e.to_string()))?,
            )),
            (None, crate::autoscaler::AutoscalerKind::Kubernetes) => {
                Some(Arc::new(crate::autoscaler::KubernetesScaler::new(
                    &config.k8s_api,
                    &config.k8s_namespace,
                    &config.k8s_deployment,
                    crate::autoscaler::KubernetesScaler::service_account_token(),
                )))
            }
        };
        if scaler.is_some() && !clustered {
            tracing::warn!("an autoscaler needs a cluster (NATS and a shared journal); it will not run");
        }
        let metrics_publisher =
            nats.clone().map(|link| crate::autoscaler::publish_metrics(node_id.clone(), link, metrics.clone()));
        let inner = Arc::new(NodeInner {
            scaler,
            metrics_publisher,
            autoscale_log: Arc::default(),
            autoscale_state: Arc::default(),
            ownership,
            forwarder,
            cluster: std::sync::OnceLock::new(),
            functions: Semaphore::new(config.function_concurrency),
            registry: self.registry,
            journal,
            metrics,
            refs,
            supervisor,
            in_flight: AtomicUsize::new(0),
            http: std::sync::Mutex::new(None),
            results,
            node_id,
            nats,
            ingress: std::sync::Mutex::new(None),
            sweeper,
            executors,
            gpu_sampler,
            config,
        });
        let node = Node { inner };
        if let Some(link) = node.inner.nats.clone() {
            let c = &node.inner.config;
            let ingress =
                NatsIngress::start(node.clone(), link, c.async_max_deliver, Duration::from_millis(c.async_ack_wait_ms))
                    .await?;
            *node.inner.ingress.lock().unwrap_or_else(|p| p.into_inner()) = Some(ingress);
            tracing::info!(url = c.nats.as_deref().unwrap_or_default(), prefix = %c.nats_prefix, "NATS ingress serving");
        }
        if let Some(addr) = node.inner.config.http.clone() {
            let server = HttpServer::start(node.clone(), &addr)
                .await
                .map_err(|e| NodeError::Bind { addr: addr.clone(), message: e.to_string() })?;
            tracing::info!(addr = %server.addr(), "HTTP listening");
            *node.inner.http.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        }
        if let (Some(ownership), Some(link)) = (node.inner.ownership.clone(), node.inner.nats.clone()) {
            node.join_cluster(ownership, link).await?;
        }
        Ok(node)
    }
}

/// A node's cluster membership and its singleton helper.
pub(crate) struct ClusterRuntime {
    pub(crate) cluster: tessera_cluster::Cluster,
    pub(crate) leader: tessera_cluster::Singleton,
}

pub(crate) struct NodeInner {
    /// The autoscaler's scaler (it runs while this node is the leader).
    scaler: Option<Arc<dyn crate::autoscaler::Scaler>>,
    metrics_publisher: Option<tokio::task::JoinHandle<()>>,
    autoscale_log: crate::autoscaler::DecisionLog,
    autoscale_state: Arc<std::sync::Mutex<Option<tessera_cluster::autoscaler::PolicyState>>>,
    /// In a cluster: the lease table (the fence); `None` outside a cluster.
    ownership: Option<Arc<tessera_cluster::Ownership>>,
    /// In a cluster: sends commands to the shard's owner.
    forwarder: Option<crate::client::NatsClient>,
    cluster: std::sync::OnceLock<ClusterRuntime>,
    registry: Registry,
    journal: Arc<dyn Journal>,
    config: NodeConfig,
    metrics: Metrics,
    refs: Arc<ShardRefs>,
    supervisor: ActorRef<()>,
    in_flight: AtomicUsize,
    functions: Semaphore,
    http: std::sync::Mutex<Option<HttpServer>>,
    results: Arc<dyn ResultStore>,
    node_id: String,
    nats: Option<NatsLink>,
    ingress: std::sync::Mutex<Option<NatsIngress>>,
    sweeper: tokio::task::JoinHandle<()>,
    executors: Executors,
    gpu_sampler: Option<tokio::task::JoinHandle<()>>,
}

/// A running node. Cheap to clone.
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
        if before >= n.config.max_in_flight {
            return Err(InvokeError::Unavailable(format!(
                "node at capacity ({} invocations in flight)",
                n.config.max_in_flight
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

fn new_invocation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

use crate::now_ms;

impl Node {
    pub(crate) fn from_inner(inner: Arc<NodeInner>) -> Self {
        Self { inner }
    }

    async fn join_cluster(&self, ownership: Arc<tessera_cluster::Ownership>, link: NatsLink) -> Result<(), NodeError> {
        let c = &self.inner.config;
        let host =
            Arc::new(crate::cluster_host::Host::new(link.clone(), self.inner.refs.clone(), self.inner.metrics.clone()));
        host.set_node(Arc::downgrade(&self.inner));
        let mut cc = tessera_cluster::ClusterConfig::new(self.inner.node_id.clone(), c.nats_prefix.clone());
        cc.lease_ttl = Duration::from_millis(c.lease_ttl_ms);
        cc.max_moves_per_round = c.rebalance_max_moves;
        cc.rebalance_every = Duration::from_millis(c.rebalance_every_ms.max(1));
        cc.http = self.http_addr().map(|a| a.to_string());
        let cluster = tessera_cluster::Cluster::join(&link.js, cc, ownership, host).await?;
        let job = self.inner.scaler.clone().map(|scaler| {
            let weak = Arc::downgrade(&self.inner);
            let live: Arc<dyn Fn() -> usize + Send + Sync> = Arc::new(move || {
                weak.upgrade()
                    .and_then(|i| {
                        Node::from_inner(i).cluster().map(|c| c.members().iter().filter(|m| !m.draining).count())
                    })
                    .unwrap_or(1)
            });
            crate::autoscaler::AutoscalerArgs {
                policy: c.autoscaler_policy.clone(),
                scaler,
                live,
                metrics: self.inner.metrics.clone(),
                log: self.inner.autoscale_log.clone(),
                state: None,
                shared_state: self.inner.autoscale_state.clone(),
            }
        });
        let job = std::sync::Mutex::new(job);
        let leader_link = link.clone();
        let leader =
            tessera_cluster::Singleton::spawn(cluster.store().clone(), "leader", &self.inner.node_id, move |_epoch| {
                // Each time this node wins the lease it runs a fresh autoscaler.
                let args = job.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let link = leader_link.clone();
                async move {
                    match args {
                        Some(a) => crate::autoscaler::run_as_leader(link, a).await,
                        None => std::future::pending::<()>().await,
                    }
                }
            })?;
        let _ = self.inner.cluster.set(ClusterRuntime { cluster, leader });
        tracing::info!(node = %self.inner.node_id, "cluster joined");
        Ok(())
    }

    /// True when this node is part of a cluster (shards held by lease).
    pub fn clustered(&self) -> bool {
        self.inner.ownership.is_some()
    }

    /// The cluster membership, once joined.
    pub fn cluster(&self) -> Option<&tessera_cluster::Cluster> {
        self.inner.cluster.get().map(|c| &c.cluster)
    }

    /// The autoscaler's recent decisions (on the node that runs it).
    pub fn autoscaler_log(&self) -> Vec<serde_json::Value> {
        self.inner.autoscale_log.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// The autoscaler's policy state while it runs here (times are ms since
    /// the Unix epoch).
    pub fn autoscaler_state(&self) -> Option<tessera_cluster::autoscaler::PolicyState> {
        *self.inner.autoscale_state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while this node holds the `leader` singleton (it runs the autoscaler).
    pub fn is_leader(&self) -> bool {
        self.inner.cluster.get().is_some_and(|c| c.leader.is_leader())
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
    /// The bound HTTP address, if serving HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.inner.http.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(HttpServer::addr)
    }

    fn record(&self, kind: &str, started: Instant, result: Result<(), u16>) {
        let m = &self.inner.metrics;
        let status = match result {
            Ok(()) => "200".to_owned(),
            Err(s) => s.to_string(),
        };
        m.requests.with_label_values(&[kind, &status]).inc();
        m.latency.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
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
        let invocation_id = inv.idempotency_key.clone().unwrap_or_else(new_invocation_id);
        let span = tracing::info_span!(
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
        let shard = tessera_journal::shard_of(&inv.entity_type, &inv.entity_id, n.config.shards);
        if ownership.accepting(&inv.entity_type, shard) {
            // The invocation stays whole: it is forwarded if the shard moved
            // away while the command waited here.
            let key = EntityKey::new(inv.entity_type.clone(), inv.entity_id.clone());
            return match self.invoke_inner(key, &inv, invocation_id, span).await {
                Err(InvokeError::ShardMoved(_)) if may_forward => self.forward(inv).await,
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
        entity.decode_command(&inv.command, &inv.body, inv.format)?;
        self.forward(inv).await
    }

    async fn forward(&self, inv: Invocation) -> Result<CommandReply, InvokeError> {
        let n = &self.inner;
        let Some(client) = &n.forwarder else {
            return Err(InvokeError::Unavailable("this node cannot forward (no NATS)".into()));
        };
        if client.nats().connection_state() != async_nats::connection::State::Connected {
            return Err(InvokeError::Unavailable(
                "this node cannot reach NATS to forward the command to the shard's owner; retry on another node".into(),
            ));
        }
        let _in_flight = InFlight::enter(n)?;
        n.metrics.cluster_forwards.inc();
        tracing::debug!("forwarding to the shard's owner");
        crate::cluster_host::forward(client, inv).await
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
        let n = &self.inner;
        let entity = n
            .registry
            .entity(&key.entity_type)
            .ok_or_else(|| InvokeError::UnknownEntityType(key.entity_type.clone()))?;
        let command = entity.decode_command(&inv.command, &inv.body, inv.format)?;
        let _in_flight = InFlight::enter(n)?;
        let actor = self.shard_actor(&key)?;
        let (tx, rx) = oneshot::channel();
        let req = CommandRequest {
            key,
            entity: entity.clone(),
            command,
            retryable: inv.idempotency_key.is_some(),
            invocation_id,
            span,
            reply: tx.into(),
        };
        actor
            .send_message(ShardMsg::Command(req))
            .map_err(|_| InvokeError::Unavailable("shard actor is restarting".into()))?;
        self.await_reply(rx).await
    }

    fn shard_actor(&self, key: &EntityKey) -> Result<ActorRef<ShardMsg>, InvokeError> {
        let shard = key.shard(self.inner.config.shards);
        self.inner.refs.get(shard).ok_or_else(|| InvokeError::Unavailable(format!("shard {shard} is not running")))
    }

    async fn await_reply<T>(&self, rx: oneshot::Receiver<Result<T, InvokeError>>) -> Result<T, InvokeError> {
        match tokio::time::timeout(self.inner.config.invocation_timeout(), rx).await {
            Err(_) => Err(InvokeError::Timeout(format!(
                "no reply within {} ms; the outcome is unknown, retry with the same idempotency key",
                self.inner.config.invocation_timeout_ms
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
            let entity =
                n.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))?;
            let _in_flight = InFlight::enter(n)?;
            let key = EntityKey::new(entity_type, entity_id);
            if let Some(o) = &n.ownership
                && !o.accepting(entity_type, key.shard(n.config.shards))
            {
                if from == ReadFrom::Owner {
                    return self.forward_state(entity_type, entity_id).await;
                }
                // Another node serves it: read the committed state from the journal.
                let limits = DedupLimits { max_entries: 0, max_age_ms: 0 };
                let r = rebuild(entity, &n.journal, &key, u64::MAX, true, limits).await?;
                return Ok(StateView { state: entity.state_json(&r.state), seq: r.seq });
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
        let entity =
            n.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))?;
        let key = EntityKey::new(entity_type, entity_id);
        let shard = key.shard(n.config.shards);
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
        let actor = self.shard_actor(&key)?;
        let (tx, rx) = oneshot::channel();
        actor
            .send_message(ShardMsg::State(StateRequest { key, entity: entity.clone(), reply: tx.into() }))
            .map_err(|_| InvokeError::Unavailable("shard actor is restarting".into()))?;
        self.await_reply(rx).await
    }

    async fn forward_state(&self, entity_type: &str, entity_id: &str) -> Result<StateView, InvokeError> {
        let Some(client) = &self.inner.forwarder else {
            return Err(InvokeError::Unavailable("this node cannot forward (no NATS)".into()));
        };
        self.inner.metrics.cluster_forwards.inc();
        crate::cluster_host::forward_state(client, entity_type, entity_id).await
    }

    /// The state of an entity as it was after event `seq` (time travel),
    /// rebuilt from the journal without snapshots; the live entity is untouched.
    pub async fn state_at(&self, entity_type: &str, entity_id: &str, seq: u64) -> Result<StateView, InvokeError> {
        let n = &self.inner;
        let entity =
            n.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))?;
        let key = EntityKey::new(entity_type, entity_id);
        let limits = DedupLimits { max_entries: 0, max_age_ms: 0 };
        let r = rebuild(entity, &n.journal, &key, seq, false, limits).await?;
        Ok(StateView { state: entity.state_json(&r.state), seq: r.seq })
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
        let after = after.map(str::to_owned);
        Ok(self
            .inner
            .journal
            .entities(entity_type)
            .try_filter(move |e| std::future::ready(after.as_deref().is_none_or(|a| e.entity_id.as_str() > a)))
            .take(limit)
            .try_collect()
            .await?)
    }

    /// Calls a stateless function; the output is MessagePack.
    pub async fn call_function(&self, name: &str, body: &[u8], format: Format) -> Result<Vec<u8>, InvokeError> {
        self.call_function_as(name, body, format, new_invocation_id()).await
    }

    /// Calls a stateless function as invocation `invocation_id`.
    pub async fn call_function_as(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        invocation_id: String,
    ) -> Result<Vec<u8>, InvokeError> {
        self.call_function_placed(name, body, format, invocation_id).await.0
    }

    /// Calls a function; also says which executor ran it (`tasks` for
    /// functions that run directly as tasks).
    async fn call_function_placed(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        invocation_id: String,
    ) -> (Result<Vec<u8>, InvokeError>, String) {
        let placed = std::sync::Mutex::new(String::from("tasks"));
        let started = Instant::now();
        let span = tracing::info_span!("function", function = %name, invocation_id = %invocation_id);
        let result = self.call_inner(name, body, format, invocation_id, &placed).instrument(span).await;
        self.record("function", started, result.as_ref().map(|_| ()).map_err(InvokeError::status));
        let executor = placed.into_inner().unwrap_or_else(|p| p.into_inner());
        (result, executor)
    }

    async fn call_inner(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        invocation_id: String,
        placed: &std::sync::Mutex<String>,
    ) -> Result<Vec<u8>, InvokeError> {
        let n = &self.inner;
        let f = n.registry.function(name).ok_or_else(|| InvokeError::UnknownFunction(name.into()))?;
        let input = f
            .decode_input(body, format)
            .map_err(|e| InvokeError::Malformed(format!("malformed `{name}` input: {e}")))?;
        let _in_flight = InFlight::enter(n)?;
        let timeout = n.config.invocation_timeout();
        let work = async {
            let _permit =
                n.functions.acquire().await.map_err(|_| InvokeError::Unavailable("node shutting down".into()))?;
            n.metrics.functions_running.inc();
            if f.max_batch() > 1 || !matches!(f.resources(), tessera_entities::Resources::Cpu) {
                // Batching or device-bound functions run on executors.
                let r = n.executors.call(f.clone(), input, invocation_id).in_current_span().await;
                n.metrics.functions_running.dec();
                return r.map(|(out, executor)| {
                    *placed.lock().unwrap_or_else(|p| p.into_inner()) = executor;
                    out
                });
            }
            let ctx = FnCtx { invocation_id, now_ms: now_ms(), device: tessera_entities::Device::Cpu };
            let joined = tokio::spawn(f.call(input, ctx).in_current_span()).await;
            n.metrics.functions_running.dec();
            match joined {
                Ok(r) => r.map_err(InvokeError::from),
                Err(e) if e.is_panic() => {
                    n.metrics.handler_panics.inc();
                    Err(InvokeError::HandlerPanicked(format!("function `{name}` panicked")))
                }
                Err(e) => Err(InvokeError::Internal(e.to_string())),
            }
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| {
            InvokeError::Timeout(format!("function `{name}` took longer than {} ms", timeout.as_millis()))
        })?
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

    /// Accepts an async function call: stores a pending result row and hands
    /// the call to JetStream (with NATS) or to a background task (without).
    /// With a key already used, returns that invocation's row instead.
    pub async fn call_async(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        key: Option<String>,
        request_id: Option<String>,
    ) -> Result<InvocationResult, InvokeError> {
        let n = &self.inner;
        let f = n.registry.function(name).ok_or_else(|| InvokeError::UnknownFunction(name.into()))?;
        f.decode_input(body, format).map_err(|e| InvokeError::Malformed(format!("malformed `{name}` input: {e}")))?;
        let id = match key {
            Some(k) if crate::nats::protocol::subject_safe(&k) => k,
            Some(k) => {
                return Err(InvokeError::Malformed(format!(
                    "idempotency key `{k}` of an async call must be 1-200 letters, digits, `-`, `_` or `:`"
                )));
            }
            None => new_invocation_id(),
        };
        let now = now_ms();
        if let Some(existing) = n.results.get(&id, now).await.map_err(|e| InvokeError::Unavailable(e.to_string()))? {
            return Ok(existing);
        }
        let ttl = (n.config.result_ttl_secs as i64).saturating_mul(1000);
        let mut row = InvocationResult::pending(&id, format!("function:{name}"), format.content_type(), now, ttl);
        row.request_id = request_id.clone();
        n.results.put(row.clone()).await.map_err(|e| InvokeError::Unavailable(e.to_string()))?;
        match &n.nats {
            Some(link) => {
                let mut h = async_nats::HeaderMap::new();
                h.insert(crate::nats::protocol::INVOCATION_ID, id.as_str());
                h.insert(crate::nats::protocol::NATS_MSG_ID, id.as_str());
                h.insert(crate::nats::protocol::CONTENT_TYPE, format.content_type());
                if let Some(r) = &request_id {
                    h.insert(crate::nats::protocol::REQUEST_ID, r.as_str());
                }
                let ack = link
                    .js
                    .publish_with_headers(link.subjects.invoke(name), h, body.to_vec().into())
                    .await
                    .map_err(|e| InvokeError::Unavailable(format!("cannot queue the call: {e}")))?;
                ack.await.map_err(|e| InvokeError::Unavailable(format!("JetStream did not store the call: {e}")))?;
            }
            None => {
                let (me, name, body, id) = (self.clone(), name.to_owned(), body.to_vec(), id.clone());
                let max = n.config.async_max_deliver.max(1) as u32;
                tokio::spawn(async move {
                    for attempt in 1..=max {
                        let call = AsyncCall { id: &id, function: &name, body: &body, format, request_id: None };
                        match me.run_async(call, attempt, attempt == max).await {
                            AsyncDecision::Ack => return,
                            AsyncDecision::Retry(d) => tokio::time::sleep(d).await,
                        }
                    }
                });
            }
        }
        Ok(row)
    }

    /// The result row of an invocation (`None`: unknown or expired).
    pub async fn invocation(&self, id: &str) -> Result<Option<InvocationResult>, InvokeError> {
        self.inner.results.get(id, now_ms()).await.map_err(|e| InvokeError::Unavailable(e.to_string()))
    }

    /// Runs one delivery of an async invocation and stores its result. A
    /// final result already stored (a redelivery after a crash) is not run
    /// again. Retryable failures ask for redelivery until `last_attempt`,
    /// which dead-letters the call.
    pub async fn run_async(&self, call: AsyncCall<'_>, attempt: u32, last_attempt: bool) -> AsyncDecision {
        let AsyncCall { id, function: name, body, format, request_id } = call;
        let n = &self.inner;
        let retry = AsyncDecision::Retry(Duration::from_millis(200 * u64::from(attempt.min(25))));
        let now = now_ms();
        let ttl = (n.config.result_ttl_secs as i64).saturating_mul(1000);
        let mut row = match n.results.get(id, now).await {
            Ok(Some(r)) if r.status.is_final() => {
                tracing::info!(invocation = %id, "redelivered invocation already has a result; not run again");
                return AsyncDecision::Ack;
            }
            Ok(Some(r)) => r,
            Ok(None) => InvocationResult::pending(id, format!("function:{name}"), format.content_type(), now, ttl),
            Err(e) => {
                tracing::warn!(invocation = %id, error = %e, "result store unavailable; retrying later");
                return retry;
            }
        };
        row.status = ResultStatus::Running;
        row.attempts = attempt;
        row.started_ms = Some(now);
        row.node_id = n.node_id.clone();
        if row.request_id.is_none() {
            row.request_id = request_id.map(str::to_owned);
        }
        if n.results.put(row.clone()).await.is_err() {
            return retry;
        }
        let (outcome, executor) = self.call_function_placed(name, body, format, id.to_owned()).await;
        row.executor_id = executor;
        row.completed_ms = Some(now_ms());
        match outcome {
            Ok(out) => {
                row.status = ResultStatus::Ok;
                row.status_code = 200;
                row.set_body(out, n.config.result_inline_bytes);
            }
            Err(e) if e.retry_after().is_some() && !last_attempt => {
                tracing::info!(invocation = %id, attempt, error = %e, "retryable failure; will be redelivered");
                row.error = Some(e.to_string());
                let _ = n.results.put(row).await;
                return retry;
            }
            Err(e) => {
                row.status =
                    if matches!(e, InvokeError::Timeout(_)) { ResultStatus::TimedOut } else { ResultStatus::Error };
                row.status_code = e.status();
                row.error = Some(if e.retry_after().is_some() {
                    format!("dead-lettered after {attempt} deliveries: {e}")
                } else {
                    e.to_string()
                });
                row.set_body(rmp_serde::to_vec_named(&e.to_json()).unwrap_or_default(), n.config.result_inline_bytes);
                if e.retry_after().is_some() {
                    self.dead_letter(id, name, body, format, &e).await;
                }
            }
        }
        match n.results.put(row.clone()).await {
            Ok(PutOutcome::Stored | PutOutcome::AlreadyFinal(_)) => {}
            Err(e) => {
                tracing::warn!(invocation = %id, error = %e, "cannot store the result; will be redelivered");
                return retry;
            }
        }
        self.publish_result(&row).await;
        if std::env::var_os("TESSERA_FAULT_ABORT_BEFORE_ACK").is_some() {
            tracing::error!("fault injection: aborting after storing the result, before the acknowledgement");
            std::process::abort();
        }
        AsyncDecision::Ack
    }

    async fn publish_result(&self, row: &InvocationResult) {
        if let Some(link) = &self.inner.nats {
            let body = rmp_serde::to_vec_named(row).unwrap_or_default();
            match link.js.publish(link.subjects.result(&row.invocation_id), body.into()).await {
                Ok(ack) => {
                    if let Err(e) = ack.await {
                        tracing::warn!(invocation = %row.invocation_id, error = %e, "result not stored in JetStream");
                    }
                }
                Err(e) => tracing::warn!(invocation = %row.invocation_id, error = %e, "cannot publish the result"),
            }
        }
    }

    async fn dead_letter(&self, id: &str, name: &str, body: &[u8], format: Format, e: &InvokeError) {
        if let Some(link) = &self.inner.nats {
            let mut h = async_nats::HeaderMap::new();
            h.insert(crate::nats::protocol::INVOCATION_ID, id);
            h.insert(crate::nats::protocol::CONTENT_TYPE, format.content_type());
            h.insert(crate::nats::protocol::ERROR, e.to_string().replace(['\r', '\n'], " ").as_str());
            if let Err(err) =
                link.js.publish_with_headers(link.subjects.dead_letter(name), h, body.to_vec().into()).await
            {
                tracing::warn!(invocation = %id, error = %err, "cannot dead-letter");
            }
        }
        tracing::warn!(invocation = %id, function = %name, error = %e, "invocation dead-lettered");
    }

    /// Stops serving: NATS and HTTP first, then the shard actors (in-flight
    /// appends complete in the journal), then releases the journal.
    pub async fn shutdown(self) {
        if let Some(c) = self.inner.cluster.get() {
            // Hand every shard off while HTTP and NATS still serve (their
            // commands are forwarded to the new owners meanwhile).
            c.leader.stop().await;
            c.cluster.leave().await;
        }
        let ingress = self.inner.ingress.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(i) = ingress {
            i.stop();
        }
        self.inner.sweeper.abort();
        if let Some(p) = &self.inner.metrics_publisher {
            p.abort();
        }
        if let Some(s) = &self.inner.gpu_sampler {
            s.abort();
        }
        self.inner.executors.stop();
        let server = self.inner.http.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = server {
            s.stop().await;
        }
        let sup = &self.inner.supervisor;
        sup.stop_children_and_wait(Some("shutdown".into()), Some(std::time::Duration::from_secs(10))).await;
        let _ = sup.stop_and_wait(Some("shutdown".into()), Some(std::time::Duration::from_secs(10))).await;
        tracing::info!("node stopped");
    }
}

//! The composition root: the one place that assembles a node — journal and
//! result store, the node core, the edges (HTTP, NATS), the cluster host
//! and the background services (autoscaler, result sweeper, GPU sampler,
//! metrics publisher) — and stops them in order. Everything else is wired
//! here and nowhere else: the core gets its ports ([`Forwarder`],
//! [`CallQueue`]) from the edges, the edges and the cluster host get the
//! core; nothing holds a back-reference.
//!
//! Start order: journal, result store, NATS connection, executors, node
//! core, NATS ingress, HTTP listener (bound, not yet serving), cluster
//! (joins with the HTTP address), HTTP serving. Stop order: hand every
//! shard off (edges still serve and forward meanwhile), NATS ingress,
//! services, HTTP, node core (shard actors, executors), journal.
//!
//! May import everything: it is the only module that knows all the parts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_entities::{Format, Registry};
use tessera_journal::{Journal, LocalJournal, MemoryJournal, OpenError, ScyllaJournal};
use tokio::task::JoinHandle;

use crate::autoscaler::{AutoscalerStatus, Scaler};
use crate::config::{ConfigError, JournalKind, NodeConfig};
use crate::executor::{ExecutorSettings, Executors};
use crate::http::HttpServer;
use crate::metrics::Metrics;
use crate::nats::{JetStreamQueue, JetStreamSink, NatsError, NatsForwarder, NatsIngress, NatsLink, NatsShardHost};
use crate::node::{CallQueue, Forwarder, LocalQueue, Node, NodeParts, new_invocation_id};
use crate::now_ms;
use crate::projection::Projection;
use crate::results::{LocalResultStore, MemoryResultStore, ResultStore, ResultStoreError, ScyllaResultStore};

/// Wraps the journal a node opens (e.g. to observe or delay its calls in
/// fault tests); see [`NodeBuilder::journal_layer`].
pub type JournalLayer = Arc<dyn Fn(Arc<dyn Journal>) -> Arc<dyn Journal> + Send + Sync>;

/// Wraps the result store a node opens; see [`NodeBuilder::results_layer`].
pub type ResultsLayer = Arc<dyn Fn(Arc<dyn ResultStore>) -> Arc<dyn ResultStore> + Send + Sync>;

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
    /// The authentication keys could not be read.
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    /// The HTTPS certificate or key could not be used.
    #[error("https: {0}")]
    Tls(String),
}

/// Builds and starts a node.
///
/// ```no_run
/// # async fn f(registry: tessera_entities::Registry) -> Result<(), tessera_runtime::NodeError> {
/// use tessera_runtime::{NodeBuilder, NodeConfig};
/// let server = NodeBuilder::new(registry)
///     .config(NodeConfig::default().with(|c| c.journal.data_dir = "data".into()))
///     .build()
///     .await?;
/// println!("serving on {:?}", server.http_addr());
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct NodeBuilder {
    registry: Registry,
    config: NodeConfig,
    journal: Option<Arc<dyn Journal>>,
    journal_layer: Option<JournalLayer>,
    results: Option<Arc<dyn ResultStore>>,
    results_layer: Option<ResultsLayer>,
    scaler: Option<Arc<dyn Scaler>>,
    projections: Vec<Arc<dyn Projection>>,
    dispatcher: bool,
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
            results_layer: None,
            scaler: None,
            projections: Vec::new(),
            dispatcher: true,
        }
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
    /// Wraps the journal the node uses (the one given or the one the config
    /// names) in `layer` before anything else sees it.
    pub fn journal_layer(mut self, layer: JournalLayer) -> Self {
        self.journal_layer = Some(layer);
        self
    }
    /// Uses this result store instead of the one next to the journal.
    pub fn results(mut self, results: Arc<dyn ResultStore>) -> Self {
        self.results = Some(results);
        self
    }
    /// Wraps the result store the node uses in `layer`.
    pub fn results_layer(mut self, layer: ResultsLayer) -> Self {
        self.results_layer = Some(layer);
        self
    }
    /// Runs `projection` on the units this node owns (see [`crate::projection`]).
    pub fn projection(mut self, projection: Arc<dyn Projection>) -> Self {
        self.projections.push(projection);
        self
    }
    /// Runs no dispatcher: the sends, timers and calls of handlers are
    /// committed but never carried out. Only for measuring what the
    /// dispatcher costs (`tessera-bench --only projection`).
    #[doc(hidden)]
    pub fn without_dispatcher(mut self) -> Self {
        self.dispatcher = false;
        self
    }
    /// Uses this scaler for the autoscaler instead of the one the config names.
    pub fn scaler(mut self, scaler: Arc<dyn Scaler>) -> Self {
        self.scaler = Some(scaler);
        self
    }

    /// Opens the stores, starts the core, the edges and the services.
    pub async fn build(self) -> Result<Server, NodeError> {
        let config = self.config;
        config.validate()?;
        let auth = crate::auth::Authenticator::from_config(&config.auth)?;
        let tls = crate::http::tls_acceptor(&config.http)?;
        let metrics = Metrics::new();
        let (journal, scylla) = open_journal(self.journal.is_some(), self.journal, &config, &metrics).await?;
        let journal = match &self.journal_layer {
            Some(layer) => layer(journal),
            None => journal,
        };
        let results = match self.results {
            Some(r) => r,
            None => open_results(&config, scylla.as_ref()).await?,
        };
        let results = match &self.results_layer {
            Some(layer) => layer(results),
            None => results,
        };
        let nats = match &config.nats.url {
            Some(url) => {
                Some(NatsLink::connect(url, &config.nats, Duration::from_secs(config.limits.result_ttl_secs)).await?)
            }
            None => None,
        };
        let node_id = config.cluster.node_id.clone().unwrap_or_else(|| format!("node-{}", &new_invocation_id()[24..]));
        let executors = Executors::start(config.executors.cpu, executor_settings(&config), metrics.clone())
            .await
            .map_err(NodeError::Spawn)?;
        let clustered = config.clustered();
        let ownership = clustered.then(|| {
            let types = self.registry.entities().map(|e| e.type_name().to_owned()).collect();
            Arc::new(tessera_cluster::Ownership::new(types, config.journal.shards))
        });
        // Forwarding reaches shard owners in a cluster, and functions nodes
        // from a node without the functions role.
        let forwards = clustered || !config.cluster.roles.functions();
        let forwarder: Option<Arc<dyn Forwarder>> = match (&nats, forwards) {
            (Some(link), true) => Some(Arc::new(NatsForwarder::new(
                crate::client::NatsClient::from_client(link.client.clone())
                    .with_prefix(&config.nats.prefix)
                    .with_shards(config.journal.shards)
                    .with_timeout(config.invocation_timeout())
                    .with_accept(Format::MsgPack),
            ))),
            _ => None,
        };
        let mut local_runner = None;
        let queue: Arc<dyn CallQueue> = match &nats {
            Some(link) => {
                Arc::new(JetStreamQueue::new(link.clone(), config.journal.shards, config.nats.command_groups))
            }
            None => {
                let (q, runner) =
                    LocalQueue::new(config.nats.async_max_deliver.max(1) as u32, config.limits.async_queue_limit);
                local_runner = Some(runner);
                Arc::new(q)
            }
        };
        let mut projections = self.projections;
        let sink_types = config.jetstream_types();
        if !sink_types.is_empty() {
            let Some(link) = &nats else {
                return Err(ConfigError::Invalid("projections.jetstream_types needs NATS (--nats)".into()).into());
            };
            let format = config.jetstream_format().unwrap_or(Format::Json);
            let max_age = Duration::from_secs(config.projections.jetstream_max_age_secs);
            projections.push(Arc::new(JetStreamSink::new(link.clone(), sink_types, format, max_age).await?));
        }
        let mut names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid(format!("two projections are called `{}`", w[0])).into());
        }
        let scaler = make_scaler(self.scaler, &config)?;
        if scaler.is_some() && !clustered {
            tracing::warn!("an autoscaler needs a cluster (NATS and a shared journal); it will not run");
        }
        let parts = NodeParts {
            registry: self.registry,
            config,
            journal,
            results: results.clone(),
            metrics: metrics.clone(),
            executors,
            ownership: ownership.clone(),
            node_id: node_id.clone(),
            forwarder,
            queue,
            projections,
            dispatcher: self.dispatcher,
        };
        let node = Node::start(parts).await.map_err(NodeError::Spawn)?;
        let c = node.config();

        let mut services = Services::default();
        services.tasks.push(sweeper(results, c.limits.result_ttl_secs));
        for (entity_type, ttl) in c.state_ttls() {
            services.tasks.push(state_ttl_sweeper(node.clone(), entity_type, ttl));
        }
        if let Some(runner) = local_runner {
            services.tasks.push(tokio::spawn(runner.run(node.clone())));
        }
        if node.executors().list().iter().any(|e| matches!(e.device, tessera_entities::Device::Gpu(_))) {
            services.tasks.push(gpu_sampler(metrics.clone()));
        }
        let mut ingress = None;
        if let Some(link) = &nats {
            services.tasks.push(crate::autoscaler::publish_metrics(
                node_id.clone(),
                c.cluster.roles,
                link.clone(),
                metrics.clone(),
            ));
            let ack_wait = Duration::from_millis(c.nats.async_ack_wait_ms);
            ingress = Some(NatsIngress::start(node.clone(), link.clone(), c.nats.async_max_deliver, ack_wait).await?);
            tracing::info!(url = c.nats.url.as_deref().unwrap_or_default(), prefix = %c.nats.prefix, "NATS ingress serving");
        }
        let listener = match c.http.listen.clone() {
            Some(addr) => {
                Some(HttpServer::bind(&addr).await.map_err(|e| NodeError::Bind { addr, message: e.to_string() })?)
            }
            None => None,
        };
        let http_addr = listener.as_ref().map(|l| l.addr());
        let mut status = AutoscalerStatus::default();
        let cluster = match (ownership, &nats) {
            (Some(ownership), Some(link)) => {
                let cluster = join_cluster(&node, ownership, link, http_addr, scaler, &status).await?;
                status.cluster = Some((cluster.cluster.view(), cluster.leader.clone()));
                Some(cluster)
            }
            _ => None,
        };
        let http = match listener {
            Some(l) => {
                if let Some(a) = &auth {
                    services.tasks.push(a.spawn_reloader());
                }
                let ready: crate::http::Readiness = match &cluster {
                    Some(c) => c.cluster.readiness(),
                    None => std::sync::Arc::new(|| true),
                };
                let store = cluster.as_ref().map(|c| c.cluster.store().clone());
                let server = l.serve(node.clone(), status.clone(), auth, tls, ready, store);
                tracing::info!(addr = %server.addr(), "HTTP listening");
                Some(server)
            }
            None => None,
        };
        Ok(Server { node, http, ingress, cluster, services, status })
    }
}

async fn open_journal(
    given: bool,
    journal: Option<Arc<dyn Journal>>,
    config: &NodeConfig,
    metrics: &Metrics,
) -> Result<(Arc<dyn Journal>, Option<ScyllaJournal>), NodeError> {
    if let Some(j) = journal.filter(|_| given) {
        return Ok((j, None));
    }
    Ok(match &config.journal.kind {
        JournalKind::Memory => (Arc::new(MemoryJournal::new(config.journal.shards)), None),
        JournalKind::Scylla(url) => {
            let j = ScyllaJournal::connect(url, config.journal.shards).await?;
            (Arc::new(j.clone()), Some(j))
        }
        JournalKind::Local => {
            let (batch, latency) = (metrics.commit_batch.clone(), metrics.commit_latency.clone());
            let j = LocalJournal::builder(&config.journal.data_dir)
                .shards(config.journal.shards)
                .durability(config.journal.durability)
                .max_batch(config.journal.max_commit_batch)
                .feed_retention(Duration::from_secs(config.journal.feed_retention_secs))
                .cache_bytes(config.journal.cache_bytes)
                .memtable_bytes(config.journal.memtable_bytes)
                .on_commit(move |n, d| {
                    batch.observe(n as f64);
                    latency.observe(d.as_secs_f64());
                });
            let path = config.journal.data_dir.clone();
            let j = tokio::task::spawn_blocking(move || j.open())
                .await
                .map_err(|e| OpenError::Io { path: path.display().to_string(), message: e.to_string() })??;
            (Arc::new(j), None)
        }
    })
}

/// The result store next to the journal: the Scylla table, the local fjall
/// store in `DATA_DIR/results`, or memory.
async fn open_results(config: &NodeConfig, scylla: Option<&ScyllaJournal>) -> Result<Arc<dyn ResultStore>, NodeError> {
    Ok(match (&config.journal.kind, scylla) {
        (JournalKind::Scylla(_), Some(j)) => Arc::new(ScyllaResultStore::new(j)),
        (JournalKind::Local, _) => {
            let dir = config.journal.data_dir.join("results");
            Arc::new(
                tokio::task::spawn_blocking(move || LocalResultStore::open(&dir))
                    .await
                    .map_err(|e| ResultStoreError::Unavailable(e.to_string()))??,
            )
        }
        _ => Arc::new(MemoryResultStore::default()),
    })
}

fn executor_settings(c: &NodeConfig) -> ExecutorSettings {
    ExecutorSettings {
        max_batch: c.executors.max_batch.max(1),
        max_wait: Duration::from_micros(c.executors.max_wait_us),
        queue_limit: c.executors.queue_limit.max(1),
        watchdog: Duration::from_millis(c.executors.watchdog_ms.max(1)),
    }
}

fn make_scaler(given: Option<Arc<dyn Scaler>>, c: &NodeConfig) -> Result<Option<Arc<dyn Scaler>>, NodeError> {
    use crate::autoscaler::{AutoscalerKind, DryRunScaler, KubernetesScaler, LocalProcessScaler};
    Ok(match (given, c.autoscaler.scaler) {
        (Some(s), _) => Some(s),
        (None, AutoscalerKind::None) => None,
        (None, AutoscalerKind::DryRun) => Some(Arc::new(DryRunScaler)),
        (None, AutoscalerKind::Local) => Some(Arc::new(
            LocalProcessScaler::for_current_process(c.journal.data_dir.join("autoscaled"))
                .map_err(|e| NodeError::Spawn(e.to_string()))?,
        )),
        (None, AutoscalerKind::Kubernetes) => Some(Arc::new(KubernetesScaler::new(
            &c.autoscaler.k8s_api,
            &c.autoscaler.k8s_namespace,
            &c.autoscaler.k8s_deployment,
            KubernetesScaler::service_account_token(),
        ))),
    })
}

/// Purges expired result rows in the background.
fn sweeper(results: Arc<dyn ResultStore>, ttl_secs: u64) -> JoinHandle<()> {
    let every = Duration::from_secs(ttl_secs.clamp(1, 60));
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
}

/// Deletes the entities of a type nobody wrote to for `ttl` (each node
/// sweeps the shards it serves), every quarter of the TTL (1 s to 1 h).
fn state_ttl_sweeper(node: Node, entity_type: String, ttl: Duration) -> JoinHandle<()> {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match node.sweep_ttl(&entity_type, ttl).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entity_type, deleted = n, "state TTL: idle entities deleted"),
                Err(e) => tracing::warn!(entity_type, error = %e, "state TTL sweep failed; tried again"),
            }
        }
    })
}

/// Samples every GPU's utilisation and memory once a second.
fn gpu_sampler(m: Metrics) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for g in crate::executor::devices::gpus() {
                let i = g.index.to_string();
                m.gpu_utilization.with_label_values(&[&i]).set(i64::from(g.utilization));
                m.gpu_memory_used.with_label_values(&[&i]).set(g.memory_total.saturating_sub(g.memory_free) as i64);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Joins the cluster: the shard host serves the core's shards over NATS;
/// every node competes for the `leader` singleton, whose job is the
/// autoscaler when a scaler is configured.
async fn join_cluster(
    node: &Node,
    ownership: Arc<tessera_cluster::Ownership>,
    link: &NatsLink,
    http: Option<SocketAddr>,
    scaler: Option<Arc<dyn Scaler>>,
    status: &AutoscalerStatus,
) -> Result<ClusterRuntime, NodeError> {
    let c = node.config();
    let host = Arc::new(NatsShardHost::new(link.clone(), node.clone()));
    let mut cc = tessera_cluster::ClusterConfig::new(node.node_id().to_owned(), c.nats.prefix.clone());
    cc.lease_ttl = Duration::from_millis(c.cluster.lease_ttl_ms);
    cc.max_moves_per_round = c.cluster.rebalance_max_moves;
    cc.rebalance_every = Duration::from_millis(c.cluster.rebalance_every_ms.max(1));
    cc.http = http.map(|a| a.to_string());
    cc.roles = c.cluster.roles;
    let cluster = tessera_cluster::Cluster::join(&link.js, cc, ownership, host).await?;
    let view = cluster.view();
    node.set_directory(Arc::new(LeaseDirectory(view.clone())));
    let groups = c.autoscaler.group_policies().map_err(ConfigError::Invalid)?;
    let job = scaler.map(|scaler| crate::autoscaler::AutoscalerArgs {
        groups,
        scaler,
        live: Arc::new(move |group| {
            view.members()
                .iter()
                .filter(|m| !m.draining && tessera_cluster::Roles::from_names(&m.roles).group() == group)
                .count()
        }),
        metrics: node.metrics().clone(),
        log: status.log.clone(),
        state: None,
        invoke_queue: None,
        shared_state: status.state.clone(),
    });
    // Only nodes with the entities role run the leader's jobs: the
    // functions group may scale to zero under it.
    if !c.cluster.roles.entities() {
        tracing::info!(node = %node.node_id(), roles = %c.cluster.roles, "cluster joined (no shards, not a leader candidate)");
        return Ok(ClusterRuntime { cluster, leader: None });
    }
    let job = std::sync::Mutex::new(job);
    let leader_link = link.clone();
    let leader = tessera_cluster::Singleton::spawn(cluster.store().clone(), "leader", node.node_id(), move |_epoch| {
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
    tracing::info!(node = %node.node_id(), "cluster joined");
    Ok(ClusterRuntime { cluster, leader: Some(Arc::new(leader)) })
}

/// A node's cluster membership and its singleton.
struct ClusterRuntime {
    cluster: tessera_cluster::Cluster,
    leader: Option<Arc<tessera_cluster::Singleton>>,
}

/// Background tasks, aborted on shutdown.
#[derive(Default)]
struct Services {
    tasks: Vec<JoinHandle<()>>,
}

/// A running node: the core, its edges, its cluster membership and its
/// background services. It derefs to its [`Node`] core, so
/// `server.invoke(..)` runs a command as an edge would.
pub struct Server {
    node: Node,
    http: Option<HttpServer>,
    ingress: Option<NatsIngress>,
    cluster: Option<ClusterRuntime>,
    services: Services,
    status: AutoscalerStatus,
}

impl std::ops::Deref for Server {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Server {
    /// The node core (invoke commands, read state, call functions).
    pub fn node(&self) -> &Node {
        &self.node
    }
    /// The bound HTTP address, if serving HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }
    /// The cluster membership, when this node joined one.
    pub fn cluster(&self) -> Option<&tessera_cluster::Cluster> {
        self.cluster.as_ref().map(|c| &c.cluster)
    }
    /// True while this node holds the `leader` singleton (it runs the autoscaler).
    pub fn is_leader(&self) -> bool {
        self.status.leader()
    }
    /// The autoscaler's status on this node.
    pub fn autoscaler(&self) -> &AutoscalerStatus {
        &self.status
    }

    /// Stops serving: hands every shard off while HTTP and NATS still serve
    /// (their commands are forwarded to the new owners meanwhile), then
    /// stops NATS, the services and HTTP, then the shard actors (in-flight
    /// appends complete in the journal), then releases the journal.
    pub async fn shutdown(self) {
        let Self { node, http, ingress, cluster, services, .. } = self;
        if let Some(c) = &cluster {
            if let Some(l) = &c.leader {
                l.stop().await;
            }
            c.cluster.leave().await;
        }
        if let Some(i) = ingress {
            i.stop();
        }
        for t in &services.tasks {
            t.abort();
        }
        for t in services.tasks {
            let _ = t.await; // what they hold (the node, the journal) is released now
        }
        if let Some(s) = http {
            s.stop().await;
        }
        node.stop().await;
        tracing::info!("node stopped");
    }
}

/// The node core's [`crate::node::ShardDirectory`]: the cluster's watched lease table.
struct LeaseDirectory(tessera_cluster::View);

impl crate::node::ShardDirectory for LeaseDirectory {
    fn owner(&self, entity_type: &str, shard: u32) -> Option<(String, u64)> {
        self.0.holder(&tessera_cluster::store::shard_key(entity_type, shard)).map(|(owner, epoch, _)| (owner, epoch))
    }
}

//! The node: routes invocations to shard actors, runs stateless functions,
//! owns the journal and the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use ractor::{Actor, ActorRef};
use tessera_entities::{FnCtx, Format, Registry};
use tessera_journal::{EntityInfo, EntityKey, Journal, LocalJournal, MemoryJournal, OpenError};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument;

use crate::config::{ConfigError, JournalKind, NodeConfig};
use crate::error::InvokeError;
use crate::http::HttpServer;
use crate::metrics::Metrics;
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
}

impl NodeBuilder {
    /// A node serving `registry`'s entities and functions, with default config.
    pub fn new(registry: Registry) -> Self {
        Self { registry, config: NodeConfig::default(), journal: None }
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
    /// Opens the journal, starts the shard actors and the HTTP server.
    pub async fn build(self) -> Result<Node, NodeError> {
        let config = self.config;
        config.validate()?;
        let metrics = Metrics::new();
        let journal: Arc<dyn Journal> =
            match self.journal {
                Some(j) => j,
                None => match config.journal {
                    JournalKind::Memory => Arc::new(MemoryJournal::new(config.shards)),
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
        let ctx = Arc::new(ShardContext {
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
        let inner = Arc::new(NodeInner {
            functions: Semaphore::new(config.function_concurrency),
            registry: self.registry,
            journal,
            metrics,
            refs,
            supervisor,
            in_flight: AtomicUsize::new(0),
            http: std::sync::Mutex::new(None),
            config,
        });
        let node = Node { inner };
        if let Some(addr) = node.inner.config.http.clone() {
            let server = HttpServer::start(node.clone(), &addr)
                .await
                .map_err(|e| NodeError::Bind { addr: addr.clone(), message: e.to_string() })?;
            tracing::info!(addr = %server.addr(), "HTTP listening");
            *node.inner.http.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        }
        Ok(node)
    }
}

struct NodeInner {
    registry: Registry,
    journal: Arc<dyn Journal>,
    config: NodeConfig,
    metrics: Metrics,
    refs: Arc<ShardRefs>,
    supervisor: ActorRef<()>,
    in_flight: AtomicUsize,
    functions: Semaphore,
    http: std::sync::Mutex<Option<HttpServer>>,
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

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Node {
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
        let started = Instant::now();
        let invocation_id = inv.idempotency_key.clone().unwrap_or_else(new_invocation_id);
        let span = tracing::info_span!(
            "invoke",
            entity_type = %inv.entity_type,
            entity_id = %inv.entity_id,
            command = %inv.command,
            invocation_id = %invocation_id,
        );
        let result = self.invoke_inner(inv, invocation_id, span.clone()).instrument(span).await;
        self.record("command", started, result.as_ref().map(|_| ()).map_err(InvokeError::status));
        result
    }

    async fn invoke_inner(
        &self,
        inv: Invocation,
        invocation_id: String,
        span: tracing::Span,
    ) -> Result<CommandReply, InvokeError> {
        let n = &self.inner;
        let entity = n
            .registry
            .entity(&inv.entity_type)
            .ok_or_else(|| InvokeError::UnknownEntityType(inv.entity_type.clone()))?;
        let command = entity.decode_command(&inv.command, &inv.body, inv.format)?;
        let _in_flight = InFlight::enter(n)?;
        let key = EntityKey::new(inv.entity_type, inv.entity_id);
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

    /// The current state of an entity (activating it if needed).
    pub async fn state(&self, entity_type: &str, entity_id: &str) -> Result<StateView, InvokeError> {
        let started = Instant::now();
        let result = async {
            let n = &self.inner;
            let entity =
                n.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))?;
            let _in_flight = InFlight::enter(n)?;
            let key = EntityKey::new(entity_type, entity_id);
            let actor = self.shard_actor(&key)?;
            let (tx, rx) = oneshot::channel();
            actor
                .send_message(ShardMsg::State(StateRequest { key, entity: entity.clone(), reply: tx.into() }))
                .map_err(|_| InvokeError::Unavailable("shard actor is restarting".into()))?;
            self.await_reply(rx).await
        }
        .await;
        self.record("state", started, result.as_ref().map(|_| ()).map_err(InvokeError::status));
        result
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
        let started = Instant::now();
        let invocation_id = new_invocation_id();
        let span = tracing::info_span!("function", function = %name, invocation_id = %invocation_id);
        let result = self.call_inner(name, body, format, invocation_id).instrument(span).await;
        self.record("function", started, result.as_ref().map(|_| ()).map_err(InvokeError::status));
        result
    }

    async fn call_inner(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        invocation_id: String,
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
            let ctx = FnCtx { invocation_id, now_ms: now_ms() };
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

    /// Stops serving: HTTP first, then the shard actors (in-flight appends
    /// complete in the journal), then releases the journal.
    pub async fn shutdown(self) {
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

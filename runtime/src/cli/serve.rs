//! `serve`: run a node until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tessera_entities::Registry;
use tessera_journal::Durability;

use crate::config::{JournalKind, NodeConfig};
use crate::node::NodeBuilder;

/// Flags of `serve`; each overrides the config file and has a `TESSERA_*` variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML config file (keys as in `NodeConfig`); flags and environment override it.
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded journal.
    #[arg(long, env = "TESSERA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "TESSERA_HTTP")]
    pub http: Option<String>,
    /// Journal: `local` (embedded, default) or `memory`.
    #[arg(long, env = "TESSERA_JOURNAL")]
    pub journal: Option<JournalKind>,
    /// When the local journal acknowledges: sync-data (default), sync-all, buffered.
    #[arg(long, env = "TESSERA_DURABILITY", value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// Snapshot every N events of an entity (0: never).
    #[arg(long, env = "TESSERA_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u32>,
    /// Passivate entities idle this many seconds.
    #[arg(long, env = "TESSERA_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Most entities in memory.
    #[arg(long, env = "TESSERA_MAX_ACTIVE_ENTITIES")]
    pub max_active_entities: Option<usize>,
    /// Largest request body in bytes.
    #[arg(long, env = "TESSERA_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most invocations in flight before 503.
    #[arg(long, env = "TESSERA_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Most commands queued per entity before 429.
    #[arg(long, env = "TESSERA_ENTITY_QUEUE_LIMIT")]
    pub entity_queue_limit: Option<usize>,
    /// NATS server URL: also serve commands and functions over NATS.
    #[arg(long, env = "TESSERA_NATS")]
    pub nats: Option<String>,
    /// Prefix of NATS subjects and streams.
    #[arg(long, env = "TESSERA_NATS_PREFIX")]
    pub nats_prefix: Option<String>,
    /// This node's id.
    #[arg(long, env = "TESSERA_NODE_ID")]
    pub node_id: Option<String>,
    /// Keep results this many seconds.
    #[arg(long, env = "TESSERA_RESULT_TTL_SECS")]
    pub result_ttl_secs: Option<u64>,
    /// Deliveries of an async call before it is dead-lettered.
    #[arg(long, env = "TESSERA_ASYNC_MAX_DELIVER")]
    pub async_max_deliver: Option<i64>,
    /// Milliseconds an async call may run before it is redelivered.
    #[arg(long, env = "TESSERA_ASYNC_ACK_WAIT_MS")]
    pub async_ack_wait_ms: Option<u64>,
    /// Milliseconds an invocation may take before 504.
    #[arg(long, env = "TESSERA_INVOCATION_TIMEOUT_MS")]
    pub invocation_timeout_ms: Option<u64>,
    /// Shards (a power of two; fixed for the life of a journal and a cluster).
    #[arg(long, env = "TESSERA_SHARDS")]
    pub shards: Option<u32>,
    /// Join a cluster: auto (with --nats and a scylla:// journal), on, off.
    #[arg(long, env = "TESSERA_CLUSTER")]
    pub cluster: Option<crate::config::ClusterMode>,
    /// Lease and heartbeat TTL in ms (the same on every node of a cluster).
    #[arg(long, env = "TESSERA_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<u64>,
    /// Most shards moved between live nodes per rebalancing round.
    #[arg(long, env = "TESSERA_REBALANCE_MAX_MOVES")]
    pub rebalance_max_moves: Option<usize>,
    /// Milliseconds between rebalancing rounds.
    #[arg(long, env = "TESSERA_REBALANCE_EVERY_MS")]
    pub rebalance_every_ms: Option<u64>,
    /// Autoscaler (runs on the cluster's leader): none, dry-run, local, kubernetes.
    #[arg(long, env = "TESSERA_AUTOSCALER")]
    pub autoscaler: Option<crate::autoscaler::AutoscalerKind>,
    /// Fewest nodes the autoscaler keeps.
    #[arg(long, env = "TESSERA_AUTOSCALE_MIN")]
    pub autoscale_min: Option<usize>,
    /// Most nodes the autoscaler starts.
    #[arg(long, env = "TESSERA_AUTOSCALE_MAX")]
    pub autoscale_max: Option<usize>,
    /// Non-database request concurrency per node to aim for.
    #[arg(long, env = "TESSERA_AUTOSCALE_TARGET_REQUESTS")]
    pub autoscale_target_requests: Option<f64>,
    /// User-function concurrency per node to aim for.
    #[arg(long, env = "TESSERA_AUTOSCALE_TARGET_FUNCTIONS")]
    pub autoscale_target_functions: Option<f64>,
    /// Seconds the autoscaler averages metrics over.
    #[arg(long, env = "TESSERA_AUTOSCALE_WINDOW_SECS")]
    pub autoscale_window_secs: Option<u64>,
    /// Stable window after a scale-up, seconds.
    #[arg(long, env = "TESSERA_AUTOSCALE_UP_STABLE_SECS")]
    pub autoscale_up_stable_secs: Option<u64>,
    /// Stable window after a scale-down, seconds.
    #[arg(long, env = "TESSERA_AUTOSCALE_DOWN_STABLE_SECS")]
    pub autoscale_down_stable_secs: Option<u64>,
    /// Kubernetes API for the kubernetes scaler (default http://127.0.0.1:8001, `kubectl proxy`).
    #[arg(long, env = "TESSERA_K8S_API")]
    pub k8s_api: Option<String>,
    /// Namespace of the Deployment the kubernetes scaler scales.
    #[arg(long, env = "TESSERA_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// The Deployment the kubernetes scaler scales.
    #[arg(long, env = "TESSERA_K8S_DEPLOYMENT")]
    pub k8s_deployment: Option<String>,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync-data" | "sync_data" => Ok(Durability::SyncData),
        "sync-all" | "sync_all" => Ok(Durability::SyncAll),
        "buffered" => Ok(Durability::Buffered),
        _ => Err(format!("unknown durability `{s}`: sync-data, sync-all or buffered")),
    }
}

impl ServeArgs {
    /// The config: defaults, then the file, then these flags/variables.
    pub fn to_config(&self) -> anyhow::Result<NodeConfig> {
        let mut c = match &self.config {
            Some(p) => NodeConfig::from_file(p)?,
            None => NodeConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        set!(
            data_dir,
            journal,
            durability,
            snapshot_every,
            idle_timeout_secs,
            max_active_entities,
            max_body_bytes,
            max_in_flight,
            entity_queue_limit
        );
        set!(nats_prefix, result_ttl_secs, async_max_deliver, async_ack_wait_ms);
        set!(invocation_timeout_ms, shards, cluster, lease_ttl_ms, rebalance_max_moves, rebalance_every_ms);
        set!(autoscaler, k8s_api, k8s_namespace, k8s_deployment);
        let p = &mut c.autoscaler_policy;
        for (dst, src) in [(&mut p.min_nodes, self.autoscale_min), (&mut p.max_nodes, self.autoscale_max)] {
            if let Some(v) = src {
                *dst = v;
            }
        }
        for (dst, src) in [
            (&mut p.target_request_concurrency, self.autoscale_target_requests),
            (&mut p.target_function_concurrency, self.autoscale_target_functions),
        ] {
            if let Some(v) = src {
                *dst = v;
            }
        }
        for (dst, src) in [
            (&mut p.window_secs, self.autoscale_window_secs),
            (&mut p.scale_up_stable_secs, self.autoscale_up_stable_secs),
            (&mut p.scale_down_stable_secs, self.autoscale_down_stable_secs),
        ] {
            if let Some(v) = src {
                *dst = v;
            }
        }
        for (dst, src) in [(&mut c.http, &self.http), (&mut c.nats, &self.nats), (&mut c.node_id, &self.node_id)] {
            if let Some(v) = src {
                *dst = Some(v.clone());
            }
        }
        c.validate()?;
        Ok(c)
    }
}

pub(crate) async fn run(args: ServeArgs, registry: Registry, layer: Option<crate::JournalLayer>) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let data_dir = config.data_dir.clone();
    let mut builder = NodeBuilder::new(registry.clone()).config(config);
    if let Some(layer) = layer {
        builder = builder.journal_layer(layer);
    }
    let node = builder.build().await.context("starting the node")?;
    let addr = node.http_addr().map(|a| a.to_string()).unwrap_or_else(|| "-".into());
    let types: Vec<_> = registry.entities().map(|e| e.type_name()).collect();
    let functions: Vec<_> = registry.functions().map(|f| f.name()).collect();
    let nats = node.config().nats.clone().map(|u| format!("  nats: {u}")).unwrap_or_default();
    let journal = match &node.config().journal {
        JournalKind::Local => data_dir.display().to_string(),
        JournalKind::Memory => "memory".into(),
        // Without the credentials.
        JournalKind::Scylla(url) => match (url.split_once("://"), url.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
            _ => url.clone(),
        },
    };
    let cluster = if node.clustered() { "  cluster: joined" } else { "" };
    eprintln!(
        "tessera node {} serving http://{addr}{nats}  journal: {journal}{cluster}  entities: {types:?}  functions: {functions:?}",
        node.node_id(),
    );
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = parent_gone() => eprintln!("the node that started this one is gone"),
    }
    eprintln!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Resolves when the process named by `TESSERA_PARENT_PID` (set by the
/// local process scaler for the nodes it starts) has exited; never otherwise.
async fn parent_gone() {
    let Some(pid) = std::env::var("TESSERA_PARENT_PID").ok().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) else {
        return std::future::pending().await;
    };
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    if !proc.exists() {
        return std::future::pending().await; // not Linux, or already gone at start: do not guess
    }
    while proc.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

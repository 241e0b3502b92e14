//! Node configuration: defaults that work out of the box, overridden by a TOML
//! file, then by `TESSERA_*` environment variables and command-line flags
//! (see `cli::ServeArgs`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_journal::Durability;

/// Where the node's journal lives: `local`, `memory` or a
/// `scylla://[user:password@]host:port[,…]/keyspace[?options]` URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum JournalKind {
    /// The embedded journal in `data_dir` (default).
    Local,
    /// In memory: lost on exit. For tests and benchmarks.
    Memory,
    /// ScyllaDB (or Cassandra) at this URL; results go to its `invocation_results` table.
    Scylla(String),
}

impl std::str::FromStr for JournalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "memory" => Ok(Self::Memory),
            url if url.starts_with("scylla://") || url.starts_with("cassandra://") => {
                tessera_journal::scylla::ScyllaConfig::from_url(url).map_err(|e| e.to_string())?;
                Ok(Self::Scylla(url.to_owned()))
            }
            other => {
                Err(format!("unsupported journal `{other}`: use `local`, `memory` or scylla://host:port/keyspace"))
            }
        }
    }
}

impl TryFrom<String> for JournalKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<JournalKind> for String {
    fn from(k: JournalKind) -> String {
        match k {
            JournalKind::Local => "local".into(),
            JournalKind::Memory => "memory".into(),
            JournalKind::Scylla(url) => url,
        }
    }
}

/// Whether a node joins a cluster (shard leases in NATS KV).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// On when the node has NATS and a shared (Scylla) journal (default).
    #[default]
    Auto,
    /// Always (needs NATS).
    On,
    /// Never: this node serves every shard itself.
    Off,
}

impl std::str::FromStr for ClusterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" | "true" => Ok(Self::On),
            "off" | "false" => Ok(Self::Off),
            other => Err(format!("unknown cluster mode `{other}`: auto, on or off")),
        }
    }
}

/// Everything a node can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory of the local journal.
    pub data_dir: PathBuf,
    /// HTTP listen address; `None` serves no HTTP.
    pub http: Option<String>,
    /// Which journal.
    pub journal: JournalKind,
    /// When the local journal acknowledges.
    pub durability: Durability,
    /// Most appends in one group commit.
    pub max_commit_batch: usize,
    /// Shards (a power of two, fixed for the life of a cluster).
    pub shards: u32,
    /// Take a snapshot every this many events of an entity (0: never).
    pub snapshot_every: u32,
    /// Passivate an entity idle this long (seconds).
    pub idle_timeout_secs: u64,
    /// Most entities kept in memory; beyond it the least recently used are passivated.
    pub max_active_entities: usize,
    /// Idempotency window per entity: most remembered invocations.
    pub dedup_max_entries: usize,
    /// Idempotency window per entity: forget invocations older than this (seconds).
    pub dedup_max_age_secs: u64,
    /// Largest accepted request body (bytes).
    pub max_body_bytes: usize,
    /// Most invocations in flight on the node; beyond it callers get 503.
    pub max_in_flight: usize,
    /// Most commands queued per entity; beyond it callers get 429.
    pub entity_queue_limit: usize,
    /// Most stateless function calls running at once.
    pub function_concurrency: usize,
    /// Deadline of one invocation (milliseconds).
    pub invocation_timeout_ms: u64,
    /// This node's id (default: generated at start).
    pub node_id: Option<String>,
    /// NATS server URL; `None` serves no NATS (async calls then run in-process).
    pub nats: Option<String>,
    /// Prefix of every NATS subject and stream (default `tessera`).
    pub nats_prefix: String,
    /// Deliveries of an async invocation before it is dead-lettered.
    pub async_max_deliver: i64,
    /// How long an async invocation may run before JetStream redelivers it (milliseconds).
    pub async_ack_wait_ms: u64,
    /// How long results are kept (seconds).
    pub result_ttl_secs: u64,
    /// Largest reply kept inline in a result row (bytes); larger ones keep only their size.
    pub result_inline_bytes: usize,
    /// CPU executors (for batching functions, and GPU functions on GPU-less machines).
    pub cpu_executors: usize,
    /// Most calls per executor batch (1: no batching).
    pub executor_max_batch: usize,
    /// Longest wait for an executor batch to fill (microseconds).
    pub executor_max_wait_us: u64,
    /// Most calls queued per executor before 429.
    pub executor_queue_limit: usize,
    /// A batch running longer than this fails its calls (milliseconds).
    pub executor_watchdog_ms: u64,
    /// Join a cluster: `auto` (with NATS and a Scylla journal), `on`, `off`.
    pub cluster: ClusterMode,
    /// Lease and heartbeat TTL in ms; the same on every node of a cluster.
    pub lease_ttl_ms: u64,
    /// Most shards moved between live nodes per rebalancing round.
    pub rebalance_max_moves: usize,
    /// Milliseconds between rebalancing rounds.
    pub rebalance_every_ms: u64,
    /// The autoscaler's scaler (`none`, `dry-run`, `local`, `kubernetes`); it
    /// runs on the cluster's leader only.
    pub autoscaler: crate::autoscaler::AutoscalerKind,
    /// The scaling policy (TOML table `[autoscaler_policy]`).
    pub autoscaler_policy: tessera_cluster::autoscaler::PolicyConfig,
    /// Kubernetes API base URL for the `kubernetes` scaler (default: the
    /// in-cluster `kubectl proxy` sidecar address `http://127.0.0.1:8001`).
    pub k8s_api: String,
    /// Namespace of the Deployment to scale.
    pub k8s_namespace: String,
    /// Name of the Deployment to scale.
    pub k8s_deployment: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("tessera-data"),
            http: Some("127.0.0.1:8080".into()),
            journal: JournalKind::Local,
            durability: Durability::SyncData,
            max_commit_batch: 4096,
            shards: tessera_journal::DEFAULT_SHARDS,
            snapshot_every: 100,
            idle_timeout_secs: 300,
            max_active_entities: 1_000_000,
            dedup_max_entries: 64,
            dedup_max_age_secs: 24 * 3600,
            max_body_bytes: 1 << 20,
            max_in_flight: 10_000,
            entity_queue_limit: 1_000,
            function_concurrency: 64,
            invocation_timeout_ms: 30_000,
            node_id: None,
            nats: None,
            nats_prefix: "tessera".into(),
            async_max_deliver: 5,
            async_ack_wait_ms: 30_000,
            result_ttl_secs: 24 * 3600,
            result_inline_bytes: 64 << 10,
            cpu_executors: 1,
            executor_max_batch: 32,
            executor_max_wait_us: 2_000,
            executor_queue_limit: 1_024,
            executor_watchdog_ms: 60_000,
            cluster: ClusterMode::Auto,
            lease_ttl_ms: 3_000,
            rebalance_max_moves: 16,
            rebalance_every_ms: 1_000,
            autoscaler: crate::autoscaler::AutoscalerKind::None,
            autoscaler_policy: tessera_cluster::autoscaler::PolicyConfig::default(),
            k8s_api: "http://127.0.0.1:8001".into(),
            k8s_namespace: "default".into(),
            k8s_deployment: "tessera".into(),
        }
    }
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        message: String,
    },
    /// The file is not valid TOML for a node config.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads a TOML file; keys it omits keep their defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.display().to_string(), message: e.to_string() })
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.shards.is_power_of_two() || self.shards > 1 << 16 {
            return Err(ConfigError::Invalid(format!("shards must be a power of two ≤ 65536, got {}", self.shards)));
        }
        for (name, v) in [
            ("max_in_flight", self.max_in_flight),
            ("entity_queue_limit", self.entity_queue_limit),
            ("function_concurrency", self.function_concurrency),
            ("max_body_bytes", self.max_body_bytes),
            ("max_active_entities", self.max_active_entities),
            ("max_commit_batch", self.max_commit_batch),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be positive")));
            }
        }
        if self.nats_prefix.is_empty()
            || !self.nats_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::Invalid(format!(
                "nats_prefix `{}` must be letters, digits, `-` or `_`",
                self.nats_prefix
            )));
        }
        if self.cluster == ClusterMode::On && self.nats.is_none() {
            return Err(ConfigError::Invalid("cluster = on needs a NATS server (--nats)".into()));
        }
        let p = &self.autoscaler_policy;
        if p.min_nodes == 0 || p.max_nodes < p.min_nodes || p.target_request_concurrency <= 0.0 {
            return Err(ConfigError::Invalid(
                "autoscaler_policy: need 1 ≤ min_nodes ≤ max_nodes and a positive target_request_concurrency".into(),
            ));
        }
        if self.lease_ttl_ms < 300 {
            return Err(ConfigError::Invalid(format!("lease_ttl_ms must be at least 300, got {}", self.lease_ttl_ms)));
        }
        Ok(())
    }

    /// True when this node joins a cluster.
    pub fn clustered(&self) -> bool {
        match self.cluster {
            ClusterMode::Off => false,
            ClusterMode::On => self.nats.is_some(),
            ClusterMode::Auto => self.nats.is_some() && matches!(self.journal, JournalKind::Scylla(_)),
        }
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    /// The invocation deadline.
    pub fn invocation_timeout(&self) -> Duration {
        Duration::from_millis(self.invocation_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, "snapshot_every = 7\nhttp = \"127.0.0.1:9000\"\n").unwrap();
        let c = NodeConfig::from_file(&p).unwrap();
        assert_eq!((c.snapshot_every, c.http.as_deref()), (7, Some("127.0.0.1:9000")));
        assert_eq!(c.max_body_bytes, 1 << 20);
        std::fs::write(&p, "snapshot_evry = 7\n").unwrap();
        let e = NodeConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("snapshot_evry"), "{e}");
        let c = NodeConfig { shards: 1000, ..NodeConfig::default() };
        assert!(c.validate().is_err());
    }
}

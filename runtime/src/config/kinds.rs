//! The value types of configuration knobs that are more than numbers and
//! strings: which journal, whether to cluster, which scaler.

use serde::{Deserialize, Serialize};

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
#[serde(try_from = "String", into = "String")]
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

/// Which scaler a node's autoscaler uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum AutoscalerKind {
    /// No autoscaler (default).
    #[default]
    None,
    /// Decide and log only.
    DryRun,
    /// Start and stop node processes of this binary.
    Local,
    /// Set a Deployment's replicas.
    Kubernetes,
}

impl std::str::FromStr for AutoscalerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "off" => Ok(Self::None),
            "dry-run" => Ok(Self::DryRun),
            "local" => Ok(Self::Local),
            "kubernetes" | "k8s" => Ok(Self::Kubernetes),
            other => Err(format!("unknown autoscaler `{other}`: none, dry-run, local or kubernetes")),
        }
    }
}

/// How a node writes its logs to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal and
    /// `NO_COLOR` is unset (default).
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format `{other}`: text or json")),
        }
    }
}

macro_rules! string_enum {
    ($t:ty { $($v:path => $s:literal),* $(,)? }) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(k: $t) -> String {
                match k { $($v => $s.into()),* }
            }
        }
    };
}

string_enum!(ClusterMode { ClusterMode::Auto => "auto", ClusterMode::On => "on", ClusterMode::Off => "off" });
string_enum!(LogFormat { LogFormat::Text => "text", LogFormat::Json => "json" });
string_enum!(AutoscalerKind {
    AutoscalerKind::None => "none",
    AutoscalerKind::DryRun => "dry-run",
    AutoscalerKind::Local => "local",
    AutoscalerKind::Kubernetes => "kubernetes",
});

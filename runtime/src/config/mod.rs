//! Node configuration in sections (`[journal]`, `[http]`, `[nats]`,
//! `[cluster]`, `[autoscaler]`, `[executors]`, `[limits]`,
//! `[observability]`, `[projections]`, `[auth]`), every knob declared once (see [`knob`]): defaults
//! that work out of the box, overridden by a TOML file, then by `TESSERA_*`
//! environment variables, then by flags. [`Layered`] keeps where each value
//! came from (`serve --print-config`). A key a file does not know is an
//! error naming it.
//!
//! ```
//! use tessera_runtime::config::{Layered, Source};
//! let mut l = Layered::defaults();
//! l.set_raw("journal.snapshot_every", "7", Source::Flag("snapshot-every".into())).unwrap();
//! assert_eq!(l.config.journal.snapshot_every, 7);
//! assert!(l.print().contains("snapshot_every = 7  # flag --snapshot-every"));
//! ```
//!
//! May import: the journal's and the cluster's value types. Nothing of the node.

mod kinds;
pub mod knob;
mod sections;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use kinds::{AutoscalerKind, ClusterMode, JournalKind, LogFormat};
pub use knob::{Knob, Source};
pub use sections::{
    AuthSection, AutoscalerSection, ClusterSection, ExecutorsSection, HttpSection, JournalSection, LimitsSection,
    NatsSection, ObservabilitySection, ProjectionsSection,
};

/// Everything a node can be configured with.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where events are kept.
    pub journal: JournalSection,
    /// The HTTP ingress.
    pub http: HttpSection,
    /// NATS.
    pub nats: NatsSection,
    /// The cluster.
    pub cluster: ClusterSection,
    /// The autoscaler.
    pub autoscaler: AutoscalerSection,
    /// Executors of stateless functions.
    pub executors: ExecutorsSection,
    /// Limits and retention.
    pub limits: LimitsSection,
    /// Logs.
    pub observability: ObservabilitySection,
    /// Projections and the JetStream sink.
    pub projections: ProjectionsSection,
    /// Authentication of the HTTP API.
    pub auth: AuthSection,
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
    /// A flag or environment value does not parse as its knob's type.
    #[error("invalid value `{value}` for {key} (from {from}): {message}")]
    Value {
        /// The knob, `section.key`.
        key: String,
        /// The raw value.
        value: String,
        /// Where it came from.
        from: Source,
        /// Why it does not parse.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Every knob, section by section.
    pub fn knobs() -> impl Iterator<Item = &'static Knob> {
        [
            JournalSection::KNOBS,
            HttpSection::KNOBS,
            NatsSection::KNOBS,
            ClusterSection::KNOBS,
            AutoscalerSection::KNOBS,
            ExecutorsSection::KNOBS,
            LimitsSection::KNOBS,
            ObservabilitySection::KNOBS,
            ProjectionsSection::KNOBS,
            AuthSection::KNOBS,
        ]
        .into_iter()
        .flatten()
    }

    /// This config changed by `f` (for building configs in code).
    ///
    /// ```
    /// let c = tessera_runtime::NodeConfig::default().with(|c| c.journal.snapshot_every = 0);
    /// assert_eq!(c.journal.snapshot_every, 0);
    /// ```
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// Sets the knob `section.key` from a raw (flag or environment) value.
    pub fn set(&mut self, key: &str, raw: &str) -> Result<(), String> {
        let (section, field) = key.split_once('.').ok_or_else(|| format!("`{key}` is not `section.key`"))?;
        match section {
            "journal" => self.journal.set(field, raw),
            "http" => self.http.set(field, raw),
            "nats" => self.nats.set(field, raw),
            "cluster" => self.cluster.set(field, raw),
            "autoscaler" => self.autoscaler.set(field, raw),
            "executors" => self.executors.set(field, raw),
            "limits" => self.limits.set(field, raw),
            "observability" => self.observability.set(field, raw),
            "projections" => self.projections.set(field, raw),
            "auth" => self.auth.set(field, raw),
            other => Err(format!("no section [{other}]")),
        }
    }

    /// Reads a TOML file; keys it omits keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(Layered::from_file(path)?.config)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let shards = self.journal.shards;
        if !shards.is_power_of_two() || shards > 1 << 16 {
            return Err(ConfigError::Invalid(format!("journal.shards must be a power of two ≤ 65536, got {shards}")));
        }
        for (name, v) in [
            ("limits.max_in_flight", self.limits.max_in_flight),
            ("limits.entity_queue_limit", self.limits.entity_queue_limit),
            ("executors.function_concurrency", self.executors.function_concurrency),
            ("http.max_body_bytes", self.http.max_body_bytes),
            ("limits.max_active_entities", self.limits.max_active_entities),
            ("journal.max_commit_batch", self.journal.max_commit_batch),
            ("journal.entity_batch", self.journal.entity_batch),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be positive")));
            }
        }
        let prefix = &self.nats.prefix;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ConfigError::Invalid(format!("nats.prefix `{prefix}` must be letters, digits, `-` or `_`")));
        }
        if self.cluster.mode == ClusterMode::On && self.nats.url.is_none() {
            return Err(ConfigError::Invalid("cluster.mode = on needs a NATS server (--nats)".into()));
        }
        let a = &self.autoscaler;
        if a.min_nodes == 0 || a.max_nodes < a.min_nodes || a.target_request_concurrency <= 0.0 {
            return Err(ConfigError::Invalid(
                "autoscaler: need 1 ≤ min_nodes ≤ max_nodes and a positive target_request_concurrency".into(),
            ));
        }
        if a.functions_max_nodes < a.functions_min_nodes {
            return Err(ConfigError::Invalid("autoscaler: need functions_min_nodes ≤ functions_max_nodes".into()));
        }
        a.group_policies().map_err(ConfigError::Invalid)?;
        if !self.cluster.roles.entities() && !self.clustered() {
            return Err(ConfigError::Invalid(format!(
                "cluster.roles = {}: a node without the entities role needs a cluster (--nats and --cluster on, or a scylla journal) to reach the entities",
                self.cluster.roles
            )));
        }
        if !self.cluster.roles.functions() && self.nats.url.is_none() {
            return Err(ConfigError::Invalid(format!(
                "cluster.roles = {}: a node without the functions role needs NATS (--nats) to reach the nodes that run them",
                self.cluster.roles
            )));
        }
        for (name, list) in [
            ("idempotency_retention_by_type", &self.limits.idempotency_retention_by_type),
            ("state_ttl_by_type", &self.limits.state_ttl_by_type),
        ] {
            for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
                if pair.split_once('=').is_none_or(|(_, v)| v.trim().parse::<u64>().is_err()) {
                    return Err(ConfigError::Invalid(format!("limits.{name}: `{pair}` is not TYPE=SECONDS")));
                }
            }
        }
        if self.projections.batch == 0 || self.journal.feed_retention_secs == 0 {
            return Err(ConfigError::Invalid(
                "projections.batch and journal.feed_retention_secs must be positive".into(),
            ));
        }
        if self.jetstream_format().is_none() {
            return Err(ConfigError::Invalid(format!(
                "projections.jetstream_format must be `json` or `msgpack`, not `{}`",
                self.projections.jetstream_format
            )));
        }
        self.nats.check_credentials().map_err(ConfigError::Invalid)?;
        if self.http.tls_cert_file.is_some() != self.http.tls_key_file.is_some() {
            return Err(ConfigError::Invalid("http.tls_cert_file and http.tls_key_file go together".into()));
        }
        if let Some(listen) = &self.http.listen
            && !self.auth.enabled()
            && !self.auth.insecure
            && !loopback(listen)
        {
            return Err(ConfigError::Invalid(format!(
                "http.listen = {listen} is reachable from other machines and no authentication is configured: \
                 set auth.api_keys_file or a JWT key (--api-keys-file, --jwt-secret-file, --jwt-public-keys; see docs/security.md), \
                 or pass --insecure to serve it to anyone who can reach it"
            )));
        }
        if self.cluster.lease_ttl_ms < 300 {
            return Err(ConfigError::Invalid(format!(
                "cluster.lease_ttl_ms must be at least 300, got {}",
                self.cluster.lease_ttl_ms
            )));
        }
        Ok(())
    }

    /// True when this node joins a cluster.
    pub fn clustered(&self) -> bool {
        match self.cluster.mode {
            ClusterMode::Off => false,
            ClusterMode::On => self.nats.url.is_some(),
            ClusterMode::Auto => self.nats.url.is_some() && matches!(self.journal.kind, JournalKind::Scylla(_)),
        }
    }

    /// The entity types the JetStream sink publishes.
    pub fn jetstream_types(&self) -> Vec<String> {
        self.projections
            .jetstream_types
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The format of published events (`None`: not `json` or `msgpack`).
    pub fn jetstream_format(&self) -> Option<tessera_entities::Format> {
        match self.projections.jetstream_format.as_str() {
            "json" => Some(tessera_entities::Format::Json),
            "msgpack" => Some(tessera_entities::Format::MsgPack),
            _ => None,
        }
    }

    /// How long keyed commands of `entity_type` are remembered.
    pub fn idempotency_retention(&self, entity_type: &str) -> Duration {
        let secs = self
            .limits
            .idempotency_retention_by_type
            .split(',')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(t, _)| t.trim() == entity_type)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(self.limits.idempotency_retention_secs);
        Duration::from_secs(secs)
    }

    /// The state TTL of each entity type that has one.
    pub fn state_ttls(&self) -> Vec<(String, Duration)> {
        self.limits
            .state_ttl_by_type
            .split(',')
            .filter_map(|pair| pair.trim().split_once('='))
            .filter_map(|(t, v)| Some((t.trim().to_owned(), Duration::from_secs(v.trim().parse().ok()?))))
            .filter(|(_, ttl)| !ttl.is_zero())
            .collect()
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_timeout_secs)
    }
    /// The invocation deadline.
    pub fn invocation_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.invocation_timeout_ms)
    }
}

/// True when `listen` (`host:port`) binds only the loopback interface.
/// Names other than `localhost` count as reachable: they may resolve anywhere.
pub fn loopback(listen: &str) -> bool {
    if let Ok(a) = listen.parse::<std::net::SocketAddr>() {
        return a.ip().is_loopback();
    }
    listen.rsplit_once(':').is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// A configuration and where each of its values came from.
#[derive(Debug, Clone)]
pub struct Layered {
    /// The configuration.
    pub config: NodeConfig,
    /// Knobs not at their default, by `section.key`.
    pub sources: BTreeMap<String, Source>,
}

impl Layered {
    /// The defaults.
    pub fn defaults() -> Self {
        Self { config: NodeConfig::default(), sources: BTreeMap::new() }
    }

    /// The defaults overridden by a TOML file; a key the file has that no
    /// section knows is an error naming it.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: shown.clone(), message: e.to_string() })?;
        let config: NodeConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: shown.clone(), message: e.to_string() })?;
        let table: toml::Table = toml::from_str(&text).unwrap_or_default();
        let mut sources = BTreeMap::new();
        for (section, keys) in &table {
            if let Some(keys) = keys.as_table() {
                for key in keys.keys() {
                    sources.insert(format!("{section}.{key}"), Source::File(shown.clone()));
                }
            }
        }
        Ok(Self { config, sources })
    }

    /// Sets one knob from a raw value, remembering where it came from.
    pub fn set_raw(&mut self, key: &str, raw: &str, source: Source) -> Result<(), ConfigError> {
        self.config.set(key, raw).map_err(|message| ConfigError::Value {
            key: key.to_owned(),
            value: raw.to_owned(),
            from: source.clone(),
            message,
        })?;
        self.sources.insert(key.to_owned(), source);
        Ok(())
    }

    /// The effective configuration as TOML, each key commented with where its value came from.
    pub fn print(&self) -> String {
        let tables = toml::Table::try_from(&self.config).unwrap_or_default();
        let mut out = String::from("# effective configuration: defaults < file < TESSERA_* environment < flags\n");
        let mut section = "";
        for k in NodeConfig::knobs() {
            if k.section != section {
                section = k.section;
                out.push_str(&format!("\n[{section}]\n"));
            }
            let source = self.sources.get(&k.key()).cloned().unwrap_or(Source::Default);
            match tables.get(k.section).and_then(|t| t.get(k.name)) {
                Some(v) => out.push_str(&format!("{} = {v}  # {source}\n", k.name)),
                None => out.push_str(&format!("# {} is not set  # {source}\n", k.name)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_knob_has_a_distinct_flag_and_environment_variable_and_is_settable() {
        let mut flags = std::collections::HashSet::new();
        let defaults = toml::Table::try_from(NodeConfig::default()).unwrap();
        for k in NodeConfig::knobs() {
            assert!(flags.insert(k.flag), "flag --{} is used twice", k.flag);
            assert!(k.env().starts_with("TESSERA_"));
            assert!(!k.help.is_empty(), "{} has help", k.key());
            // The default (when it has one) goes back in through the setter.
            if let Some(v) = defaults.get(k.section).and_then(|t| t.get(k.name)) {
                let raw = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                NodeConfig::default().set(&k.key(), &raw).unwrap_or_else(|e| panic!("{}: {e}", k.key()));
            }
        }
        // And every field of every section is a knob.
        let knobs: std::collections::HashSet<String> = NodeConfig::knobs().map(Knob::key).collect();
        for (section, t) in &defaults {
            for key in t.as_table().unwrap().keys() {
                assert!(knobs.contains(&format!("{section}.{key}")), "{section}.{key} has a knob");
            }
        }
    }

    #[test]
    fn a_file_overrides_defaults_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, "[journal]\nsnapshot_every = 7\n[http]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let l = Layered::from_file(&p).unwrap();
        assert_eq!((l.config.journal.snapshot_every, l.config.http.listen.as_deref()), (7, Some("127.0.0.1:9000")));
        assert_eq!(l.config.http.max_body_bytes, 1 << 20);
        assert!(matches!(l.sources.get("journal.snapshot_every"), Some(Source::File(_))));
        std::fs::write(&p, "[journal]\nsnapshot_evry = 7\n").unwrap();
        let e = NodeConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("snapshot_evry"), "{e}");
        std::fs::write(&p, "[jurnal]\nsnapshot_every = 7\n").unwrap();
        let e = NodeConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("jurnal"), "{e}");
        let mut c = NodeConfig::default();
        c.journal.shards = 1000;
        assert!(c.validate().is_err());
    }

    #[test]
    fn raw_values_parse_as_their_types() {
        let mut c = NodeConfig::default();
        for (key, raw) in [
            ("journal.durability", "sync-data"),
            ("journal.durability", "buffered"),
            ("journal.kind", "memory"),
            ("cluster.mode", "on"),
            ("autoscaler.scaler", "dry-run"),
            ("autoscaler.target_request_concurrency", "12.5"),
            ("http.listen", "127.0.0.1:0"),
            ("cluster.node_id", "123"),
            ("journal.data_dir", "/tmp/x"),
        ] {
            c.set(key, raw).unwrap_or_else(|e| panic!("{key} = {raw}: {e}"));
        }
        assert_eq!(c.journal.durability, tessera_journal::Durability::Buffered);
        assert_eq!(c.cluster.node_id.as_deref(), Some("123"), "a number-like id stays a string");
        assert_eq!(c.autoscaler.target_request_concurrency, 12.5);
        let e = c.set("journal.shards", "many").unwrap_err();
        assert!(!e.is_empty());
        assert!(c.set("journal.nope", "1").unwrap_err().contains("nope"));
    }

    #[test]
    fn a_reachable_address_needs_auth_or_insecure() {
        for (listen, ok) in [
            ("127.0.0.1:8080", true),
            ("[::1]:8080", true),
            ("localhost:8080", true),
            ("0.0.0.0:8080", false),
            ("[::]:8080", false),
            ("10.1.2.3:8080", false),
            ("node-1.internal:8080", false),
        ] {
            let c = NodeConfig::default().with(|c| c.http.listen = Some(listen.into()));
            assert_eq!(c.validate().is_ok(), ok, "{listen}");
            if !ok {
                let e = c.validate().unwrap_err().to_string();
                assert!(e.contains("--insecure") && e.contains("docs/security.md"), "{e}");
                assert!(c.clone().with(|c| c.auth.insecure = true).validate().is_ok());
                assert!(c.with(|c| c.auth.api_keys_file = Some("keys.toml".into())).validate().is_ok());
            }
        }
    }
}

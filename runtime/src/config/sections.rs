//! The sections of a node's configuration, each knob declared once.

use std::path::PathBuf;

use tessera_cluster::autoscaler::PolicyConfig;
use tessera_cluster::{Roles, ScaleGroup};
use tessera_journal::Durability;

use super::kinds::{AutoscalerKind, ClusterMode, JournalKind, LogFormat};
use super::knob::section;

section! {
    /// `[journal]`: where events are kept.
    JournalSection "journal" {
        /// Which journal: `local` (embedded, in `data_dir`), `memory`, or a `scylla://` URL.
        kind: JournalKind = JournalKind::Local, flag "journal";
        /// Directory of the embedded journal and the local result store.
        data_dir: PathBuf = PathBuf::from("tessera-data"), flag "data-dir";
        /// When the local journal acknowledges: `sync_data` (fdatasync), `sync_all`, `buffered`.
        durability: Durability = Durability::SyncData, flag "durability";
        /// Most appends in one group commit.
        max_commit_batch: usize = 4096, flag "max-commit-batch";
        /// Shards (a power of two, fixed for the life of a journal and a cluster).
        shards: u32 = tessera_journal::DEFAULT_SHARDS, flag "shards";
        /// Most commands of one entity decided one after another (each against the state the previous leave) and written in one append, while its previous append is in flight (1: one command per append).
        entity_batch: usize = 256, flag "entity-batch";
        /// An entity's batch takes no more commands once its events reach this size, bytes (Cassandra refuses batches over 50 KiB by default).
        entity_batch_bytes: usize = 32 << 10, flag "entity-batch-bytes";
        /// Snapshot every this many events of an entity (0: never).
        snapshot_every: u32 = 100, flag "snapshot-every";
        /// How long the embedded journal keeps shard-feed entries, seconds (Scylla: `?feed_ttl_secs=` on its URL).
        feed_retention_secs: u64 = 7 * 24 * 3600, flag "feed-retention-secs";
        /// The embedded journal's block cache, bytes.
        cache_bytes: u64 = 64 << 20, flag "journal-cache-bytes";
        /// The embedded journal's memtable size per keyspace before it is written to a table file, bytes (what its writes hold in memory).
        memtable_bytes: u64 = 16 << 20, flag "journal-memtable-bytes";
    }
}

section! {
    /// `[projections]`: read models and sinks that follow the shard feed.
    ProjectionsSection "projections" {
        /// Most events per projection batch.
        batch: usize = 512, flag "projection-batch";
        /// How often an idle projection looks at its feed and checkpoint, ms.
        idle_poll_ms: u64 = 30_000, flag "projection-idle-poll-ms";
        /// Longest a handled batch waits for its checkpoint to be stored, ms (a crash redelivers what was handled since).
        checkpoint_every_ms: u64 = 250, flag "projection-checkpoint-every-ms";
        /// How long a projection woken by a commit waits before it reads, ms (more events per read).
        linger_ms: u64 = 5, flag "projection-linger-ms";
        /// Entity types the JetStream sink publishes to `{prefix}.events.{type}.{shard}`, comma-separated (empty: no sink; needs NATS).
        jetstream_types: String = String::new(), flag "events-to-jetstream";
        /// Body of each published event: `json` or `msgpack`.
        jetstream_format: String = "json".into(), flag "events-format";
        /// How long the events stream keeps messages, seconds.
        jetstream_max_age_secs: u64 = 7 * 24 * 3600, flag "events-max-age-secs";
    }
}

section! {
    /// `[http]`: the HTTP ingress.
    HttpSection "http" {
        /// Listen address (unset: no HTTP).
        listen: Option<String> = Some("127.0.0.1:8080".into()), flag "http";
        /// Largest accepted request body, bytes (NATS payloads too).
        max_body_bytes: usize = 1 << 20, flag "max-body-bytes";
        /// Serve HTTPS with this PEM certificate chain (with `tls_key_file`).
        tls_cert_file: Option<PathBuf> = None, flag "http-tls-cert";
        /// The PEM private key of `tls_cert_file`.
        tls_key_file: Option<PathBuf> = None, flag "http-tls-key";
    }
}

section! {
    /// `[auth]`: who may call the HTTP API (off unless a key source is set; see docs/security.md).
    AuthSection "auth" {
        /// API keys: a TOML file of `[[key]]` entries (`name`, `tenant`, `scopes`, and `sha256` of the key or `key`); re-read when it changes.
        api_keys_file: Option<PathBuf> = None, flag "api-keys-file";
        /// HS256 JWTs: a file holding the shared secret (at least 32 bytes; trailing whitespace ignored).
        jwt_secret_file: Option<PathBuf> = None, flag "jwt-secret-file";
        /// RS256/EdDSA/ES256 JWTs: PEM public-key files, comma-separated (several while keys rotate).
        jwt_public_keys: String = String::new(), flag "jwt-public-keys";
        /// The `iss` every JWT must carry (unset: not checked).
        jwt_issuer: Option<String> = None, flag "jwt-issuer";
        /// The `aud` every JWT must carry (unset: not checked).
        jwt_audience: Option<String> = None, flag "jwt-audience";
        /// Serve without authentication on a non-loopback address (refused otherwise).
        insecure: bool = false, flag "insecure";
        /// Serve `GET /metrics` without credentials (otherwise it needs the `metrics` or `admin` scope).
        public_metrics: bool = false, flag "public-metrics";
    }
}

impl AuthSection {
    /// True when a key source is configured (auth is on).
    pub fn enabled(&self) -> bool {
        self.api_keys_file.is_some() || self.jwt_secret_file.is_some() || !self.jwt_public_keys.trim().is_empty()
    }
}

section! {
    /// `[nats]`: the NATS ingress, forwarding and async calls.
    NatsSection "nats" {
        /// NATS server URL (unset: no NATS; async calls then run in-process).
        url: Option<String> = None, flag "nats";
        /// Prefix of every NATS subject, stream and bucket.
        prefix: String = "tessera".into(), flag "nats-prefix";
        /// Deliveries of an async call before it is dead-lettered.
        async_max_deliver: i64 = 5, flag "async-max-deliver";
        /// How long an async call may run before JetStream redelivers it, ms.
        async_ack_wait_ms: u64 = 30_000, flag "async-ack-wait-ms";
        /// How long an async entity command may run before JetStream redelivers it, ms (after a crash, the unit's next owner waits this long before taking newer commands).
        command_ack_wait_ms: u64 = 5_000, flag "command-ack-wait-ms";
        /// Consumer groups per entity type for async entity commands (shard mod groups; the same on every node).
        command_groups: u32 = 64, flag "command-groups";
        /// NATS credentials: a `.creds` file (a user JWT and its NKey seed, as `nsc` writes them).
        creds_file: Option<PathBuf> = None, flag "nats-creds";
        /// NATS credentials: a file holding an NKey user seed (`SU…`).
        nkey_file: Option<PathBuf> = None, flag "nats-nkey";
        /// NATS credentials: a file holding a token.
        token_file: Option<PathBuf> = None, flag "nats-token-file";
        /// NATS credentials: a user name, its password in `password_file` (or put `user:password@` in the URL).
        user: Option<String> = None, flag "nats-user";
        /// NATS credentials: a file holding the password of `user`.
        password_file: Option<PathBuf> = None, flag "nats-password-file";
        /// Trust this PEM CA for the NATS server's certificate, and require TLS.
        tls_ca_file: Option<PathBuf> = None, flag "nats-tls-ca";
        /// A PEM client certificate for servers that verify clients (with `tls_key_file`).
        tls_cert_file: Option<PathBuf> = None, flag "nats-tls-cert";
        /// The PEM private key of `tls_cert_file`.
        tls_key_file: Option<PathBuf> = None, flag "nats-tls-key";
        /// Reply subjects start with this instead of `_INBOX` (a tenant allowed to subscribe only to `_INBOX_{tenant}.>` cannot read others' replies).
        inbox_prefix: Option<String> = None, flag "nats-inbox-prefix";
    }
}

impl NatsSection {
    /// The section as `TESSERA_*` variables set it over the defaults (for
    /// the CLI's commands that connect to NATS, e.g. `send --nats`, which
    /// have no `[nats]` file of their own). A value that does not parse is
    /// left at its default.
    pub fn from_env() -> Self {
        let mut s = Self::default();
        let _ = s.set_from_env();
        s
    }

    /// Why these credentials cannot be used together, if they cannot.
    pub fn check_credentials(&self) -> Result<(), String> {
        let given: Vec<&str> = [
            (self.creds_file.is_some(), "nats.creds_file"),
            (self.nkey_file.is_some(), "nats.nkey_file"),
            (self.token_file.is_some(), "nats.token_file"),
            (self.user.is_some(), "nats.user"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if given.len() > 1 {
            return Err(format!("give one kind of NATS credentials, not {}", given.join(" and ")));
        }
        if self.password_file.is_some() && self.user.is_none() {
            return Err("nats.password_file needs nats.user".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("nats.tls_cert_file and nats.tls_key_file go together".into());
        }
        Ok(())
    }
}

section! {
    /// `[cluster]`: shard leases in NATS KV.
    ClusterSection "cluster" {
        /// Join a cluster: `auto` (with NATS and a scylla journal), `on`, `off`.
        mode: ClusterMode = ClusterMode::Auto, flag "cluster";
        /// This node's id (unset: generated at start).
        node_id: Option<String> = None, flag "node-id";
        /// Lease and heartbeat TTL in ms; the same on every node of a cluster.
        lease_ttl_ms: u64 = 3_000, flag "lease-ttl-ms";
        /// Most shards moved between live nodes per rebalancing round.
        rebalance_max_moves: usize = 16, flag "rebalance-max-moves";
        /// Milliseconds between rebalancing rounds.
        rebalance_every_ms: u64 = 1_000, flag "rebalance-every-ms";
        /// This node's roles, comma-separated: `entities` (takes shard leases), `functions` (runs stateless functions), or both.
        roles: Roles = Roles::BOTH, flag "roles";
    }
}

section! {
    /// `[autoscaler]`: the scaler the cluster's leader drives, and its policy.
    AutoscalerSection "autoscaler" {
        /// The scaler: `none`, `dry-run`, `local` (node processes), `kubernetes`.
        scaler: AutoscalerKind = AutoscalerKind::None, flag "autoscaler";
        /// Fewest nodes.
        min_nodes: usize = PolicyConfig::default().min_nodes, flag "autoscale-min";
        /// Most nodes.
        max_nodes: usize = PolicyConfig::default().max_nodes, flag "autoscale-max";
        /// Non-database request concurrency per node to aim for.
        target_request_concurrency: f64 = PolicyConfig::default().target_request_concurrency, flag "autoscale-target-requests";
        /// User-function concurrency per node to aim for.
        target_function_concurrency: f64 = PolicyConfig::default().target_function_concurrency, flag "autoscale-target-functions";
        /// Relative band around the current size with no change.
        tolerance: f64 = PolicyConfig::default().tolerance, flag "autoscale-tolerance";
        /// Seconds metrics are averaged over.
        window_secs: u64 = PolicyConfig::default().window_secs, flag "autoscale-window-secs";
        /// Stable window after a scale-up, seconds.
        scale_up_stable_secs: u64 = PolicyConfig::default().scale_up_stable_secs, flag "autoscale-up-stable-secs";
        /// Stable window after a scale-down, seconds.
        scale_down_stable_secs: u64 = PolicyConfig::default().scale_down_stable_secs, flag "autoscale-down-stable-secs";
        /// A request-rate jump (this factor) that allows a scale-up inside a stable window.
        rate_jump_factor: f64 = PolicyConfig::default().rate_jump_factor, flag "autoscale-rate-jump-factor";
        /// Most nodes added or removed per decision.
        max_step: usize = PolicyConfig::default().max_step, flag "autoscale-max-step";
        /// A surge: the last `panic_window_secs` ask for this many times the current size → scale at once (0: off).
        panic_threshold: f64 = PolicyConfig::default().panic_threshold, flag "autoscale-panic-threshold";
        /// Seconds the surge and drop checks average over.
        panic_window_secs: u64 = PolicyConfig::default().panic_window_secs, flag "autoscale-panic-window-secs";
        /// Scale groups the leader sizes, comma-separated: `entities` (nodes with the entities role), `functions` (functions-only nodes).
        groups: String = "entities".into(), flag "autoscale-groups";
        /// Fewest functions-only nodes (0: the group may scale to zero; async calls wait in JetStream).
        functions_min_nodes: usize = 0, flag "autoscale-functions-min";
        /// Most functions-only nodes.
        functions_max_nodes: usize = 10, flag "autoscale-functions-max";
        /// Kubernetes API for the `kubernetes` scaler (a `kubectl proxy` sidecar by default).
        k8s_api: String = "http://127.0.0.1:8001".into(), flag "k8s-api";
        /// Namespace of the Deployment the `kubernetes` scaler scales.
        k8s_namespace: String = "default".into(), flag "k8s-namespace";
        /// The Deployment the `kubernetes` scaler scales.
        k8s_deployment: String = "tessera".into(), flag "k8s-deployment";
    }
}

impl AutoscalerSection {
    /// The scaling policy these knobs describe.
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            min_nodes: self.min_nodes,
            max_nodes: self.max_nodes,
            target_function_concurrency: self.target_function_concurrency,
            target_request_concurrency: self.target_request_concurrency,
            tolerance: self.tolerance,
            window_secs: self.window_secs,
            scale_up_stable_secs: self.scale_up_stable_secs,
            scale_down_stable_secs: self.scale_down_stable_secs,
            rate_jump_factor: self.rate_jump_factor,
            max_step: self.max_step,
            panic_threshold: self.panic_threshold,
            panic_window_secs: self.panic_window_secs,
        }
    }

    /// The scale groups the leader sizes, each with its policy (the
    /// functions group with its own bounds).
    pub fn group_policies(&self) -> Result<Vec<(ScaleGroup, PolicyConfig)>, String> {
        let mut out = Vec::new();
        for name in self.groups.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let group = match name {
                "entities" => ScaleGroup::Entities,
                "functions" => ScaleGroup::Functions,
                other => return Err(format!("autoscaler.groups: unknown group `{other}` (entities, functions)")),
            };
            let mut policy = self.policy();
            if group == ScaleGroup::Functions {
                (policy.min_nodes, policy.max_nodes) = (self.functions_min_nodes, self.functions_max_nodes);
            }
            if !out.iter().any(|(g, _)| *g == group) {
                out.push((group, policy));
            }
        }
        Ok(out)
    }
}

section! {
    /// `[executors]`: where stateless functions run.
    ExecutorsSection "executors" {
        /// CPU executors (for batching functions, and GPU functions on GPU-less machines).
        cpu: usize = 1, flag "cpu-executors";
        /// Most calls per executor batch (1: no batching).
        max_batch: usize = 32, flag "executor-max-batch";
        /// Longest wait for an executor batch to fill, microseconds.
        max_wait_us: u64 = 2_000, flag "executor-max-wait-us";
        /// Most calls queued per executor before 429.
        queue_limit: usize = 1_024, flag "executor-queue-limit";
        /// A batch running longer than this fails its calls, ms.
        watchdog_ms: u64 = 60_000, flag "executor-watchdog-ms";
        /// Most stateless calls running at once on the node.
        function_concurrency: usize = 64, flag "function-concurrency";
    }
}

section! {
    /// `[limits]`: what one node takes on, and how long it remembers.
    LimitsSection "limits" {
        /// Most invocations in flight on the node; beyond it callers get 503.
        max_in_flight: usize = 10_000, flag "max-in-flight";
        /// Most commands queued per entity; beyond it callers get 429.
        entity_queue_limit: usize = 1_000, flag "entity-queue-limit";
        /// Without NATS: most async calls and commands accepted and not yet finished; beyond it callers get 503 (with NATS, JetStream holds them).
        async_queue_limit: usize = 10_000, flag "async-queue-limit";
        /// Deadline of one invocation, ms.
        invocation_timeout_ms: u64 = 30_000, flag "invocation-timeout-ms";
        /// Most entities in memory; beyond it the least recently used are passivated.
        max_active_entities: usize = 1_000_000, flag "max-active-entities";
        /// Passivate an entity idle this long, seconds.
        idle_timeout_secs: u64 = 300, flag "idle-timeout-secs";
        /// Recent idempotency keys kept in memory per active entity (older ones are looked up in the journal).
        dedup_max_entries: usize = 64, flag "dedup-max-entries";
        /// How long a keyed command's reply is remembered (however many commands come after), seconds.
        idempotency_retention_secs: u64 = 24 * 3600, flag "idempotency-retention-secs";
        /// Per entity type retention overrides, `type=secs,type=secs` (e.g. `stock=3600`).
        idempotency_retention_by_type: String = String::new(), flag "idempotency-retention-by-type";
        /// How long a deleted entity's journal is kept (its tombstone answering 404) before it is purged, seconds.
        delete_grace_secs: u64 = 24 * 3600, flag "delete-grace-secs";
        /// State TTL per entity type, `type=secs,type=secs`: an entity nobody wrote to for that long is deleted.
        state_ttl_by_type: String = String::new(), flag "state-ttl-by-type";
        /// How long async results are kept, seconds.
        result_ttl_secs: u64 = 24 * 3600, flag "result-ttl-secs";
        /// Largest reply kept inline in a result row, bytes (larger ones keep only their size).
        result_inline_bytes: usize = 64 << 10, flag "result-inline-bytes";
    }
}

section! {
    /// `[observability]`: logs (metrics are always at `GET /metrics`).
    ObservabilitySection "observability" {
        /// The log filter (`tracing` directives), unless `RUST_LOG` is set; read when logging starts.
        log: String = "info,fjall=warn,lsm_tree=warn".into(), flag "log";
        /// Log lines as `text` (coloured only on a terminal without `NO_COLOR`) or `json` (one object per line); read when logging starts.
        log_format: LogFormat = LogFormat::Text, flag "log-format";
        /// Export traces over OTLP/HTTP to this collector (e.g. `http://collector:4318`; off when empty; `OTEL_EXPORTER_OTLP_ENDPOINT` also works); read when logging starts.
        otlp_endpoint: String = String::new(), flag "otlp-endpoint";
    }
}

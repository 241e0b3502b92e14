//! Prometheus metrics of one node (its own registry, rendered at `/metrics`).
//!
//! May import nothing of the runtime: every layer records into it.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The node's metrics. Handles are cheap to clone and update.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Invocations finished, by kind (`command`, `function`, `state`) and status code.
    pub requests: IntCounterVec,
    /// Invocation latency, by kind.
    pub latency: HistogramVec,
    /// `requests{kind="command",status="200"}` and `latency{kind="command"}`,
    /// resolved once: the series every successful command updates (a label
    /// lookup hashes the values and takes a lock).
    command_ok: IntCounter,
    command_latency: Histogram,
    /// HTTP requests from routing to the response handed back to hyper
    /// (every route; excludes reading and writing the socket).
    pub http_latency: Histogram,
    /// Invocations in flight (request concurrency).
    pub in_flight: IntGauge,
    /// Function calls running (user-function concurrency).
    pub functions_running: IntGauge,
    /// Function calls waiting for a node of the functions role (none answered).
    pub functions_unplaced: IntGauge,
    /// Journal operations in flight (database concurrency).
    pub journal_in_flight: IntGauge,
    /// Entities in memory.
    pub active_entities: IntGauge,
    /// Entity activations (replays).
    pub activations: IntCounter,
    /// Entity passivations, by reason (`idle`, `lru`, `reset`).
    pub passivations: IntCounterVec,
    /// Appends per group commit.
    pub commit_batch: Histogram,
    /// Commands of one entity written in one append (hot entities batch).
    pub entity_batch: Histogram,
    /// Duration of a group commit, including the fsync.
    pub commit_latency: Histogram,
    /// Snapshots written.
    pub snapshots: IntCounter,
    /// Deleted entities whose journal was purged.
    pub purges: IntCounter,
    /// Entities deleted, by reason (`api`, `ttl`).
    pub deletions: IntCounterVec,
    /// Handler panics caught.
    pub handler_panics: IntCounter,
    /// Calls queued per executor.
    pub executor_queue_depth: IntGaugeVec,
    /// Calls per batch, per executor.
    pub executor_batch_size: HistogramVec,
    /// Seconds spent running batches, per executor (its utilisation is the rate).
    pub executor_busy_seconds: CounterVec,
    /// Batches failed by the watchdog, per executor.
    pub executor_stuck_batches: IntCounterVec,
    /// GPU utilisation, percent (NVML).
    pub gpu_utilization: IntGaugeVec,
    /// GPU memory in use, bytes (NVML).
    pub gpu_memory_used: IntGaugeVec,
    /// Shard leases this node holds (cluster).
    pub cluster_leases: IntGauge,
    /// Commands forwarded to the owning node (cluster).
    pub cluster_forwards: IntCounter,
    /// Shard leases lost without a hand-off (cluster).
    pub cluster_leases_lost: IntCounter,
    /// Forwarded commands sent again because the shard's owner changed while they were in flight.
    pub cluster_reroutes: IntCounter,
    /// Invocations finished per second over the last second.
    pub request_rate: prometheus::Gauge,
    /// 1 while the autoscaler runs on this node (it holds the leader lease).
    pub autoscaler_leader: IntGauge,
    /// The size the autoscaler last decided (on the leader).
    pub autoscaler_target_nodes: IntGauge,
    /// Scaling decisions, by direction.
    pub autoscaler_decisions: IntCounterVec,
    /// Events a projection is behind its unit's feed, by projection, entity type and shard.
    pub projection_lag: IntGaugeVec,
    /// A projection's checkpoint (feed offset) per unit.
    pub projection_checkpoint: IntGaugeVec,
    /// Events handled by a projection.
    pub projection_events: IntCounterVec,
    /// Failed batches and feed reads of a projection.
    pub projection_errors: IntCounterVec,
    /// Seconds from an event's commit to its handling by a projection.
    pub projection_delay: HistogramVec,
    /// HTTP requests refused by authentication or authorisation, by reason
    /// (`missing`, `invalid`, `forbidden`).
    pub auth_refusals: IntCounterVec,
    /// Messages between entities, timers and function calls.
    pub flow: FlowMetrics,
    /// Memory an embedded store holds, by store (`journal`, `results`) and
    /// kind (`write_buffer`: memtables not yet in table files; `cache`: the
    /// block cache); set when `/metrics` is read.
    pub storage_memory: IntGaugeVec,
    /// Sealed memtables waiting to be flushed, by store.
    pub storage_flushes_pending: IntGaugeVec,
}

/// Metrics of messages, timers and calls (the dispatcher's).
#[derive(Clone)]
pub struct FlowMetrics {
    /// Delivered, by kind (`send`, `reply`, `call`, `timer`).
    pub delivered: IntCounterVec,
    /// Seconds from the sender's commit to the delivery, by kind.
    pub delivery_seconds: HistogramVec,
    /// Sends and calls read and not delivered yet (the outbox being worked on;
    /// the dispatcher's projection lag bounds what it has not read yet).
    pub outbox_depth: IntGauge,
    /// Given up (the target cannot take them), by kind.
    pub dead_letters: IntCounterVec,
    /// Deliveries that failed and are retried, by kind.
    pub retries: IntCounterVec,
    /// Timers armed on this node.
    pub timers_pending: IntGauge,
    /// Seconds between a timer's due time and its delivery.
    pub timer_lateness: Histogram,
}

impl FlowMetrics {
    fn new() -> Self {
        let by_kind = |n: &str, h: &str| IntCounterVec::new(Opts::new(n, h), &["kind"]).expect("metric");
        Self {
            delivered: by_kind("tessera_messages_delivered_total", "Messages, replies, calls and timers delivered"),
            delivery_seconds: HistogramVec::new(
                HistogramOpts::new("tessera_message_delivery_seconds", "Sender's commit to delivery")
                    .buckets(latency_buckets()),
                &["kind"],
            )
            .expect("metric"),
            outbox_depth: IntGauge::new("tessera_outbox_depth", "Sends and calls read and not delivered yet")
                .expect("metric"),
            dead_letters: by_kind("tessera_dead_letters_total", "Messages given up: the target cannot take them"),
            retries: by_kind("tessera_message_retries_total", "Deliveries failed and retried"),
            timers_pending: IntGauge::new("tessera_timers_pending", "Timers armed on this node").expect("metric"),
            timer_lateness: Histogram::with_opts(
                HistogramOpts::new("tessera_timer_lateness_seconds", "Timer due time to delivery")
                    .buckets(latency_buckets()),
            )
            .expect("metric"),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.delivered.clone()),
            Box::new(self.delivery_seconds.clone()),
            Box::new(self.outbox_depth.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.timers_pending.clone()),
            Box::new(self.timer_lateness.clone()),
        ]
    }
}

/// [`latency_buckets`] and 20 ms, the group commit's tail aim (BENCHMARKS.md).
fn commit_buckets() -> Vec<f64> {
    let mut b = latency_buckets();
    b.push(0.02);
    b.sort_by(f64::total_cmp);
    b
}

fn latency_buckets() -> Vec<f64> {
    vec![0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]
}

impl Metrics {
    /// Counts one invocation of `kind` (`command`, `function`, …) with its
    /// outcome (`Err`: the status it was refused or failed with) and
    /// records its latency. A successful command, the common case, updates
    /// series resolved once, without a label lookup.
    pub(crate) fn invocation(&self, kind: &str, result: Result<(), u16>, seconds: f64) {
        let command = kind == "command";
        match result {
            Ok(()) if command => self.command_ok.inc(),
            Ok(()) => self.requests.with_label_values(&[kind, "200"]).inc(),
            Err(s) => self.requests.with_label_values(&[kind, &s.to_string()]).inc(),
        }
        if command {
            self.command_latency.observe(seconds);
        } else {
            self.latency.with_label_values(&[kind]).observe(seconds);
        }
    }

    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("tessera_requests_total", "Invocations finished, by kind and status"),
            &["kind", "status"],
        )
        .expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("tessera_request_duration_seconds", "Invocation latency").buckets(latency_buckets()),
            &["kind"],
        )
        .expect("metric");
        let command_ok = requests.with_label_values(&["command", "200"]);
        let command_latency = latency.with_label_values(&["command"]);
        let http_latency = Histogram::with_opts(
            HistogramOpts::new(
                "tessera_http_request_duration_seconds",
                "HTTP requests, routing to response (socket reads and writes excluded)",
            )
            .buckets(latency_buckets()),
        )
        .expect("metric");
        let gauge = |n: &str, h: &str| IntGauge::new(n, h).expect("metric");
        let in_flight = gauge("tessera_requests_in_flight", "Invocations in flight (request concurrency)");
        let functions_running =
            gauge("tessera_functions_running", "Function calls running (user-function concurrency)");
        let functions_unplaced =
            gauge("tessera_functions_unplaced", "Function calls waiting for a node of the functions role");
        let journal_in_flight =
            gauge("tessera_journal_in_flight", "Journal operations in flight (database concurrency)");
        let active_entities = gauge("tessera_active_entities", "Entities in memory");
        let activations = IntCounter::new("tessera_activations_total", "Entity activations").expect("metric");
        let passivations =
            IntCounterVec::new(Opts::new("tessera_passivations_total", "Entity passivations by reason"), &["reason"])
                .expect("metric");
        let commit_batch = Histogram::with_opts(
            HistogramOpts::new("tessera_journal_commit_batch_size", "Appends per group commit")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0]),
        )
        .expect("metric");
        let entity_batch = Histogram::with_opts(
            HistogramOpts::new(
                "tessera_entity_batch_commands",
                "Commands of one entity decided together and written in one append",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
        )
        .expect("metric");
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new("tessera_journal_commit_duration_seconds", "Group commit duration incl. fsync")
                .buckets(commit_buckets()),
        )
        .expect("metric");
        let snapshots = IntCounter::new("tessera_snapshots_total", "Snapshots written").expect("metric");
        let purges = IntCounter::new("tessera_entity_purges_total", "Deleted entities whose journal was purged")
            .expect("metric");
        let deletions =
            IntCounterVec::new(Opts::new("tessera_entity_deletions_total", "Entities deleted, by reason"), &["reason"])
                .expect("metric");
        let handler_panics = IntCounter::new("tessera_handler_panics_total", "Handler panics caught").expect("metric");
        let executor_queue_depth =
            IntGaugeVec::new(Opts::new("tessera_executor_queue_depth", "Calls queued per executor"), &["executor"])
                .expect("metric");
        let executor_batch_size = HistogramVec::new(
            HistogramOpts::new("tessera_executor_batch_size", "Calls per batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            &["executor"],
        )
        .expect("metric");
        let executor_busy_seconds =
            CounterVec::new(Opts::new("tessera_executor_busy_seconds_total", "Seconds running batches"), &["executor"])
                .expect("metric");
        let executor_stuck_batches = IntCounterVec::new(
            Opts::new("tessera_executor_stuck_batches_total", "Batches failed by the watchdog"),
            &["executor"],
        )
        .expect("metric");
        let gpu_utilization =
            IntGaugeVec::new(Opts::new("tessera_gpu_utilization_percent", "GPU utilisation"), &["gpu"])
                .expect("metric");
        let gpu_memory_used =
            IntGaugeVec::new(Opts::new("tessera_gpu_memory_used_bytes", "GPU memory in use"), &["gpu"])
                .expect("metric");
        let cluster_leases = gauge("tessera_cluster_leases", "Shard leases this node holds");
        let cluster_forwards =
            IntCounter::new("tessera_cluster_forwards_total", "Commands forwarded to the owning node").expect("metric");
        let cluster_leases_lost =
            IntCounter::new("tessera_cluster_leases_lost_total", "Shard leases lost without a hand-off")
                .expect("metric");
        let cluster_reroutes = IntCounter::new(
            "tessera_cluster_reroutes_total",
            "Forwarded commands sent again because the shard's owner changed while they were in flight",
        )
        .expect("metric");
        let request_rate =
            prometheus::Gauge::new("tessera_request_rate", "Invocations finished per second (last second)")
                .expect("metric");
        let autoscaler_leader = gauge("tessera_autoscaler_leader", "1 while the autoscaler runs on this node");
        let autoscaler_target_nodes = gauge("tessera_autoscaler_target_nodes", "Nodes the autoscaler last decided");
        let autoscaler_decisions =
            IntCounterVec::new(Opts::new("tessera_autoscaler_decisions_total", "Scaling decisions"), &["direction"])
                .expect("metric");
        let unit_gauge = |n: &str, h: &str| {
            IntGaugeVec::new(Opts::new(n, h), &["projection", "entity_type", "shard"]).expect("metric")
        };
        let projection_lag = unit_gauge("tessera_projection_lag", "Events a projection is behind its unit's feed");
        let projection_checkpoint = unit_gauge("tessera_projection_checkpoint", "A projection's checkpoint per unit");
        let projection_events =
            IntCounterVec::new(Opts::new("tessera_projection_events_total", "Events handled"), &["projection"])
                .expect("metric");
        let projection_errors = IntCounterVec::new(
            Opts::new("tessera_projection_errors_total", "Failed batches and feed reads"),
            &["projection"],
        )
        .expect("metric");
        let projection_delay = HistogramVec::new(
            HistogramOpts::new("tessera_projection_delay_seconds", "Commit to projection handling")
                .buckets(latency_buckets()),
            &["projection"],
        )
        .expect("metric");
        for c in [
            Box::new(cluster_leases.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(projection_lag.clone()),
            Box::new(projection_checkpoint.clone()),
            Box::new(projection_events.clone()),
            Box::new(projection_errors.clone()),
            Box::new(projection_delay.clone()),
            Box::new(request_rate.clone()),
            Box::new(autoscaler_leader.clone()),
            Box::new(autoscaler_target_nodes.clone()),
            Box::new(autoscaler_decisions.clone()),
            Box::new(cluster_forwards.clone()),
            Box::new(cluster_leases_lost.clone()),
            Box::new(cluster_reroutes.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(http_latency.clone()),
            Box::new(in_flight.clone()),
            Box::new(functions_running.clone()),
            Box::new(functions_unplaced.clone()),
            Box::new(journal_in_flight.clone()),
            Box::new(active_entities.clone()),
            Box::new(activations.clone()),
            Box::new(passivations.clone()),
            Box::new(commit_batch.clone()),
            Box::new(entity_batch.clone()),
            Box::new(commit_latency.clone()),
            Box::new(snapshots.clone()),
            Box::new(purges.clone()),
            Box::new(deletions.clone()),
            Box::new(handler_panics.clone()),
            Box::new(executor_queue_depth.clone()),
            Box::new(executor_batch_size.clone()),
            Box::new(executor_busy_seconds.clone()),
            Box::new(executor_stuck_batches.clone()),
            Box::new(gpu_utilization.clone()),
            Box::new(gpu_memory_used.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        let auth_refusals = IntCounterVec::new(
            Opts::new("tessera_auth_refusals_total", "HTTP requests refused by authentication or authorisation"),
            &["reason"],
        )
        .expect("metric");
        registry.register(Box::new(auth_refusals.clone())).expect("unique metric");
        let storage_memory = IntGaugeVec::new(
            Opts::new("tessera_storage_memory_bytes", "Memory an embedded store holds, by store and kind"),
            &["store", "kind"],
        )
        .expect("metric");
        let storage_flushes_pending = IntGaugeVec::new(
            Opts::new("tessera_storage_flushes_pending", "Sealed memtables waiting to be flushed"),
            &["store"],
        )
        .expect("metric");
        registry.register(Box::new(storage_memory.clone())).expect("unique metric");
        registry.register(Box::new(storage_flushes_pending.clone())).expect("unique metric");
        let flow = FlowMetrics::new();
        for c in flow.collectors() {
            registry.register(c).expect("unique metric");
        }
        Self {
            flow,
            storage_memory,
            storage_flushes_pending,
            auth_refusals,
            registry,
            requests,
            latency,
            command_ok,
            command_latency,
            http_latency,
            in_flight,
            functions_running,
            functions_unplaced,
            journal_in_flight,
            active_entities,
            activations,
            passivations,
            commit_batch,
            entity_batch,
            commit_latency,
            snapshots,
            purges,
            deletions,
            handler_panics,
            executor_queue_depth,
            executor_batch_size,
            executor_busy_seconds,
            executor_stuck_batches,
            gpu_utilization,
            gpu_memory_used,
            cluster_leases,
            cluster_forwards,
            cluster_leases_lost,
            cluster_reroutes,
            request_rate,
            autoscaler_leader,
            autoscaler_target_nodes,
            autoscaler_decisions,
            projection_lag,
            projection_checkpoint,
            projection_events,
            projection_errors,
            projection_delay,
        }
    }

    /// Invocations finished so far, all kinds and statuses.
    pub fn requests_finished(&self) -> f64 {
        use prometheus::core::Collector;
        self.requests.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value()).sum()
    }

    /// Sets the storage gauges of `store` from its engine's figures.
    pub fn record_storage(&self, store: &str, stats: tessera_journal::StorageStats) {
        let memory = |kind: &str, v: u64| self.storage_memory.with_label_values(&[store, kind]).set(v as i64);
        memory("write_buffer", stats.write_buffer_bytes);
        memory("cache", stats.cache_bytes);
        self.storage_flushes_pending.with_label_values(&[store]).set(stats.outstanding_flushes as i64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

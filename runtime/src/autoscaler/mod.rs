//! The autoscaler in a node: every node publishes its load once a second on
//! `{prefix}.metrics.{node}`; the node holding the cluster's `leader`
//! singleton runs the [`AutoscalerActor`], which averages those samples over
//! the policy's window, runs the pure policy
//! (`tessera_cluster::autoscaler::decide`) every second and hands decisions to
//! a [`Scaler`]. When the leader dies the singleton (and so the actor) moves.
//!
//! A service. May import: the NATS link (to publish and subscribe),
//! `metrics`, `wire`, the cluster's policy. The node core does not import it;
//! `server` wires it to the `leader` singleton.

pub mod scaler;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tessera_cluster::ScaleGroup;
use tessera_cluster::autoscaler::{Decision, NodeMetrics, Observation, PolicyConfig, PolicyState, Window, decide};

pub use scaler::{DryRunScaler, KubernetesScaler, LocalProcessScaler, Scaler, ScalerError};

pub use crate::config::AutoscalerKind;

use crate::metrics::Metrics;
use crate::nats::NatsLink;

/// The last decisions, newest last (served at `GET /v1/autoscaler`).
pub type DecisionLog = Arc<Mutex<VecDeque<crate::wire::DecisionBody>>>;

/// What a node knows of the autoscaler, shared with the leader's actor
/// while it runs here (served at `GET /v1/autoscaler`).
#[derive(Clone, Default)]
pub struct AutoscalerStatus {
    pub(crate) log: DecisionLog,
    pub(crate) state: SharedStates,
    /// In a cluster: the membership view and the `leader` singleton (which
    /// only nodes with the entities role compete for).
    pub(crate) cluster: Option<(tessera_cluster::View, Option<Arc<tessera_cluster::Singleton>>)>,
}

impl AutoscalerStatus {
    /// True while this node holds the `leader` singleton.
    pub fn leader(&self) -> bool {
        self.cluster.as_ref().and_then(|(_, l)| l.as_ref()).is_some_and(|l| l.is_leader())
    }
    /// Live members as this node sees them (`None` outside a cluster).
    pub fn members(&self) -> Option<usize> {
        self.cluster.as_ref().map(|(v, _)| v.members().len())
    }
    /// The recent decisions, oldest first (on the node that runs it).
    pub fn decisions(&self) -> Vec<crate::wire::DecisionBody> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
    /// The entities group's policy state (the cluster's, without roles)
    /// while the autoscaler runs here (times in ms since the Unix epoch).
    pub fn state(&self) -> Option<PolicyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).get(&ScaleGroup::Entities).copied()
    }
    /// Every sized group's policy state while the autoscaler runs here.
    pub fn group_states(&self) -> BTreeMap<ScaleGroup, PolicyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A node's load now; `requests_total` is the running count of finished
/// invocations, from which the rate since `last` is derived.
pub(crate) fn sample(node_id: &str, roles: tessera_cluster::Roles, m: &Metrics, rate: f64) -> NodeMetrics {
    let gpus = crate::executor::devices::gpus()
        .into_iter()
        .map(|g| tessera_cluster::autoscaler::GpuMetrics {
            index: g.index,
            utilization: g.utilization,
            memory_used: g.memory_total.saturating_sub(g.memory_free),
            memory_total: g.memory_total,
        })
        .collect();
    NodeMetrics {
        node_id: node_id.to_owned(),
        at_ms: crate::now_ms(),
        request_concurrency: m.in_flight.get() as f64,
        function_concurrency: m.functions_running.get() as f64,
        db_concurrency: m.journal_in_flight.get() as f64,
        request_rate: rate,
        active_entities: m.active_entities.get().max(0) as u64,
        gpus,
        roles: roles.names(),
        functions_unplaced: m.functions_unplaced.get().max(0) as f64,
    }
}

/// Publishes this node's metrics every second until aborted.
pub(crate) fn publish_metrics(
    node_id: String,
    roles: tessera_cluster::Roles,
    link: NatsLink,
    metrics: Metrics,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let subject = link.subjects.metrics(&node_id);
        let mut last = (Instant::now(), metrics.requests_finished());
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let total = metrics.requests_finished();
            let secs = last.0.elapsed().as_secs_f64().max(1e-3);
            let rate = (total - last.1).max(0.0) / secs;
            last = (Instant::now(), total);
            let s = sample(&node_id, roles, &metrics, rate);
            metrics.request_rate.set(rate);
            if let Ok(body) = serde_json::to_vec(&s)
                && let Err(e) = link.client.publish(subject.clone(), body.into()).await
            {
                tracing::debug!(error = %e, "cannot publish metrics");
            }
        }
    })
}

/// Where the leader keeps the policy state (`{PREFIX}_AUTOSCALER`, key
/// `state`, no TTL), so that a new leader continues the stable windows of
/// the last decision instead of starting afresh.
pub(crate) async fn state_store(link: &NatsLink) -> Option<async_nats::jetstream::kv::Store> {
    let bucket = format!("{}_AUTOSCALER", link.subjects.prefix().to_ascii_uppercase().replace(['.', '-'], "_"));
    if let Ok(kv) = link.js.get_key_value(&bucket).await {
        return Some(kv);
    }
    let cfg = async_nats::jetstream::kv::Config {
        bucket: bucket.clone(),
        description: "Tessera autoscaler: the policy state of the last decision".into(),
        history: 1,
        ..Default::default()
    };
    match link.js.create_key_value(cfg).await {
        Ok(kv) => Some(kv),
        Err(e) => {
            tracing::warn!(error = %e, %bucket, "no autoscaler state bucket; a new leader will start afresh");
            None
        }
    }
}

/// What the autoscaler actor needs.
#[derive(Clone)]
pub(crate) struct AutoscalerArgs {
    /// The scale groups it sizes, each with its policy.
    pub(crate) groups: Vec<(ScaleGroup, PolicyConfig)>,
    pub(crate) scaler: Arc<dyn Scaler>,
    /// Live, non-draining members of a group now.
    pub(crate) live: Arc<dyn Fn(ScaleGroup) -> usize + Send + Sync>,
    pub(crate) metrics: Metrics,
    pub(crate) log: DecisionLog,
    /// The policy state shared with later leaders.
    pub(crate) state: Option<async_nats::jetstream::kv::Store>,
    /// The `{P}_INVOKE` stream and its consumer's name: async calls
    /// waiting there are the functions group's backlog.
    pub(crate) invoke_queue: Option<(async_nats::jetstream::stream::Stream, String)>,
    /// The current policy states, for `GET /v1/autoscaler`.
    pub(crate) shared_state: SharedStates,
}

/// The policy state of each group while the autoscaler runs on this node.
pub(crate) type SharedStates = Arc<Mutex<BTreeMap<ScaleGroup, PolicyState>>>;

/// Messages of the autoscaler actor.
pub(crate) enum AutoscalerMsg {
    /// A node's sample.
    Metrics(NodeMetrics),
    /// Decide.
    Tick,
}

/// The autoscaler's behaviour.
pub(crate) struct AutoscalerActor;

/// The autoscaler's state.
pub(crate) struct AutoscalerState {
    args: AutoscalerArgs,
    window: Window,
    /// Per group. Times in it are wall-clock (since the Unix epoch), so
    /// that it means the same on the next leader.
    policy: BTreeMap<ScaleGroup, PolicyState>,
}

/// The KV key of a group's policy state (`state` for the entities group,
/// as before groups existed).
fn state_key(group: ScaleGroup) -> String {
    match group {
        ScaleGroup::Entities => "state".into(),
        g => format!("state.{g}"),
    }
}

impl Actor for AutoscalerActor {
    type Msg = AutoscalerMsg;
    type State = AutoscalerState;
    type Arguments = AutoscalerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AutoscalerMsg>,
        args: AutoscalerArgs,
    ) -> Result<AutoscalerState, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(1), || AutoscalerMsg::Tick);
        args.metrics.autoscaler_leader.set(1);
        let names: Vec<&str> = args.groups.iter().map(|(g, _)| g.name()).collect();
        tracing::info!(scaler = args.scaler.name(), groups = ?names, "autoscaler running on this node");
        // The longest of the groups' windows (groups are never empty; the defaults otherwise).
        let longest = |f: fn(&PolicyConfig) -> u64| {
            args.groups.iter().map(|(_, p)| f(p)).max().unwrap_or_else(|| f(&PolicyConfig::default())).max(1)
        };
        let (span, recent) = (longest(|p| p.window_secs), longest(|p| p.panic_window_secs));
        let window = Window::new(Duration::from_secs(span)).with_recent(Duration::from_secs(recent));
        let mut policy = BTreeMap::new();
        for (group, _) in &args.groups {
            let mut st = PolicyState::default();
            if let Some(kv) = &args.state
                && let Ok(Some(bytes)) = kv.get(state_key(*group)).await
                && let Ok(saved) = serde_json::from_slice::<PolicyState>(&bytes)
            {
                tracing::info!(%group, state = ?saved, "autoscaler continues the previous leader's policy state");
                st = saved;
            }
            policy.insert(*group, st);
        }
        *args.shared_state.lock().unwrap_or_else(|p| p.into_inner()) = policy.clone();
        Ok(AutoscalerState { args, window, policy })
    }

    async fn post_stop(&self, _: ActorRef<AutoscalerMsg>, st: &mut AutoscalerState) -> Result<(), ActorProcessingErr> {
        st.args.metrics.autoscaler_leader.set(0);
        st.args.shared_state.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<AutoscalerMsg>,
        msg: AutoscalerMsg,
        st: &mut AutoscalerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AutoscalerMsg::Metrics(m) => st.window.push(m),
            AutoscalerMsg::Tick => st.tick().await,
        }
        Ok(())
    }
}

impl AutoscalerState {
    async fn tick(&mut self) {
        let now = crate::now_ms();
        self.window.expire(now);
        let queued = self.queued_calls().await;
        for (group, cfg) in self.args.groups.clone() {
            let mut obs = if self.args.groups.len() == 1 && group == ScaleGroup::Entities {
                // One group: every node, as before roles existed.
                self.window.observe()
            } else {
                self.window.observe_group(group)
            };
            // Async calls wait for nodes that run functions: the functions
            // group when it is sized, else every node.
            let sized = self.args.groups.iter().any(|(g, _)| *g == ScaleGroup::Functions);
            if group == ScaleGroup::Functions || !sized {
                obs.backlog += queued;
            }
            self.decide(group, &cfg, obs, now).await;
        }
    }

    /// Async calls waiting in `{P}_INVOKE` (not yet delivered to a node).
    async fn queued_calls(&mut self) -> f64 {
        let Some((stream, consumer)) = &self.args.invoke_queue else { return 0.0 };
        match stream.consumer_info(consumer).await {
            Ok(info) => info.num_pending as f64,
            // No functions node ever ran: nothing consumed, all of it waits.
            Err(_) => stream.get_info().await.map_or(0.0, |i| i.state.messages as f64),
        }
    }

    async fn decide(&mut self, group: ScaleGroup, cfg: &PolicyConfig, obs: Observation, now: i64) {
        let live = (self.args.live)(group);
        let elapsed = Duration::from_millis(now.max(0) as u64);
        let mut policy = self.policy.get(&group).copied().unwrap_or_default();
        // Outside a stable window the cluster as it is is the truth (a
        // scaler may have failed, nodes may have died or been added).
        let stable = policy.last_change.is_some_and(|(at, dir, _)| {
            let w = match dir {
                tessera_cluster::autoscaler::Direction::Up => cfg.scale_up_stable_secs,
                tessera_cluster::autoscaler::Direction::Down => cfg.scale_down_stable_secs,
            };
            elapsed.saturating_sub(at) < Duration::from_secs(w)
        });
        if !stable {
            policy.target = Some(live);
        }
        let (decision, next) = decide(cfg, &obs, elapsed, &policy);
        if group == ScaleGroup::Entities {
            self.args.metrics.autoscaler_target_nodes.set(decision.nodes() as i64);
        }
        self.policy.insert(group, policy);
        let Decision::Scale { from, to, reason } = &decision else { return };
        let direction = if to > from { "up" } else { "down" };
        tracing::info!(%group, from, to, %reason, live, scaler = self.args.scaler.name(), "autoscaler decision");
        self.args.metrics.autoscaler_decisions.with_label_values(&[direction]).inc();
        let result = self.args.scaler.scale(group, *to, live).await;
        if let Err(e) = &result {
            tracing::warn!(%group, error = %e, "the scaler could not apply the decision");
        }
        let entry = crate::wire::DecisionBody {
            at_ms: now,
            group: group.name().to_owned(),
            from: *from,
            to: *to,
            reason: reason.clone(),
            live,
            observation: obs,
            scaler: self.args.scaler.name().to_owned(),
            error: result.as_ref().err().map(ToString::to_string),
        };
        {
            let mut log = self.args.log.lock().unwrap_or_else(|p| p.into_inner());
            log.push_back(entry);
            while log.len() > 200 {
                log.pop_front();
            }
        }
        self.policy.insert(group, next);
        if let Some(kv) = &self.args.state
            && let Ok(body) = serde_json::to_vec(&next)
            && let Err(e) = kv.put(state_key(group), body.into()).await
        {
            tracing::warn!(error = %e, "cannot save the autoscaler state");
        }
        *self.args.shared_state.lock().unwrap_or_else(|p| p.into_inner()) = self.policy.clone();
    }
}

/// The leader's job: runs the actor and feeds it every node's samples until
/// this future is dropped (the singleton lease was lost or the node stops).
pub(crate) async fn run_as_leader(link: NatsLink, mut args: AutoscalerArgs) {
    args.state = state_store(&link).await;
    if let Ok(stream) = link.js.get_stream(link.subjects.invoke_stream()).await {
        args.invoke_queue = Some((stream, link.subjects.invoke_consumer()));
    }
    struct StopOnDrop(ActorRef<AutoscalerMsg>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop(Some("leadership lost".into()));
        }
    }
    let mut sub = match link.client.subscribe(link.subjects.metrics("*")).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "autoscaler cannot subscribe to metrics");
            return;
        }
    };
    let actor = match Actor::spawn(None, AutoscalerActor, args).await {
        Ok((a, _)) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the autoscaler");
            return;
        }
    };
    let _stop = StopOnDrop(actor.clone());
    while let Some(m) = sub.next().await {
        if let Ok(s) = serde_json::from_slice::<NodeMetrics>(&m.payload) {
            let _ = actor.send_message(AutoscalerMsg::Metrics(s));
        }
    }
}

//! The scaling policy, after Cloudstate's autoscaler: a pure function of
//! (config, observation over a metric window, time, state) → (decision,
//! new state), so it is tested and simulated without a cluster.
//!
//! - Desired nodes = the larger of (user-function concurrency + backlog) ÷
//!   its per-node target and (request concurrency − database concurrency) ÷
//!   its per-node target: time spent waiting on the database is not a
//!   reason for more nodes (more nodes would only add load to the
//!   database); work queued for the group (async calls waiting in
//!   JetStream, function calls that found no node) is.
//! - A group with `min_nodes = 0` may shrink to nothing and grows from
//!   nothing on its backlog alone (no node reports metrics then).
//! - Within `tolerance` of the current size: hold; scale down only to a
//!   size that still has `tolerance` of headroom.
//! - After a decision, a stable window — longer after a scale-up (new nodes
//!   warm up and take shards, so metrics are unreliable for a while) than
//!   after a scale-down — in which the only allowed move is a further
//!   scale-up when the request rate jumped above `rate_jump_factor` × the
//!   rate at the decision (a real surge should not wait a minute); the new
//!   size still comes from the concurrency.
//! - A surge does not wait for the window: when the last
//!   `panic_window_secs` alone ask for at least `panic_threshold` × the
//!   current size (after Knative's panic mode), the size goes at once to
//!   what they ask for, inside a stable window too and past `max_step`
//!   (shedding a surge for a window and a warm-up costs more than a few
//!   node-minutes). The rate, too, must have jumped by that factor since
//!   the last decision (a queue still waiting for nodes already asked for
//!   is no new surge). A surge sizes for the queue it saw, so its stable
//!   window is the shorter scale-down one: the overshoot goes once the
//!   queue drained.
//! - A surge ends the way it came (a spike, not a step): when, after a
//!   surge, the last seconds' arrivals fell by `panic_threshold` × from
//!   the rate the last decision was made on and their concurrency (queue
//!   included) wants that many times fewer nodes, the size goes at once to
//!   what they want, with the tolerance as headroom. Only after a surge: a
//!   sawtooth falling back after a slow climb steps down as usual (its next
//!   climb would start short of nodes).
//! - The undo of a surge's overshoot (sized for its queue) may pass
//!   `max_step` too; otherwise at most `max_step` nodes per decision;
//!   always within `[min, max]`.
//! - Inside a stable window the rate-jump path compares the smaller of the
//!   window's and the last seconds' rate with the rate at the last
//!   decision: a surge or a drop is decided on the last seconds' rate, and
//!   the window's lags it.
//! - The request rate alone never causes a scale-down (a low rate with high
//!   concurrency is slow work, not idle nodes).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Policy settings. Defaults in [`PolicyConfig::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// Fewest nodes (default 1).
    pub min_nodes: usize,
    /// Most nodes (default 10).
    pub max_nodes: usize,
    /// User-function calls running per node the cluster aims for (default
    /// 8: about what one node's executors keep busy).
    pub target_function_concurrency: f64,
    /// Non-database request concurrency per node the cluster aims for
    /// (default 64: shard actors and HTTP keep up well below saturation).
    pub target_request_concurrency: f64,
    /// Relative band around the current size with no change (default 0.1).
    pub tolerance: f64,
    /// Seconds metrics are averaged over (default 10).
    pub window_secs: u64,
    /// Stable window after a scale-up, seconds (default 60).
    pub scale_up_stable_secs: u64,
    /// Stable window after a scale-down, seconds (default 30).
    pub scale_down_stable_secs: u64,
    /// A request rate (window average) this many times the one at the last
    /// decision allows a scale-up inside a stable window (default 1.5).
    pub rate_jump_factor: f64,
    /// Most nodes added or removed per decision (default 2).
    pub max_step: usize,
    /// A surge: the last `panic_window_secs` want this many times the
    /// current size (default 2.0; 0 turns it off).
    pub panic_threshold: f64,
    /// Seconds the surge (and drop) check looks at (default 1: the first
    /// sample that shows a surge sizes it).
    pub panic_window_secs: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            min_nodes: 1,
            max_nodes: 10,
            target_function_concurrency: 8.0,
            target_request_concurrency: 64.0,
            tolerance: 0.1,
            window_secs: 10,
            scale_up_stable_secs: 60,
            scale_down_stable_secs: 30,
            rate_jump_factor: 1.5,
            max_step: 2,
            panic_threshold: 2.0,
            panic_window_secs: 1,
        }
    }
}

/// Cluster-wide load averaged over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Nodes that reported.
    pub nodes: usize,
    /// Sum of request concurrency.
    pub request_concurrency: f64,
    /// Sum of user-function concurrency.
    pub function_concurrency: f64,
    /// Sum of database concurrency.
    pub db_concurrency: f64,
    /// Sum of request rates, per second (averaged over the window).
    pub request_rate: f64,
    /// Work waiting for the group's nodes (async calls queued, function
    /// calls that found no node), counted like user-function concurrency.
    #[serde(default)]
    pub backlog: f64,
    /// Request concurrency over the last `panic_window_secs` only (0: not measured).
    #[serde(default)]
    pub recent_request_concurrency: f64,
    /// Database concurrency over the last `panic_window_secs` only.
    #[serde(default)]
    pub recent_db_concurrency: f64,
    /// Request rate over the last `panic_window_secs` only.
    #[serde(default)]
    pub recent_request_rate: f64,
}

/// Which way a decision went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// More nodes.
    Up,
    /// Fewer nodes.
    Down,
}

/// What the policy remembers between decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    /// The size last asked for (`None`: take the observed node count).
    pub target: Option<usize>,
    /// The last change: when (time since start), which way, and the request
    /// rate (window average) then.
    pub last_change: Option<(Duration, Direction, f64)>,
    /// The last change was a surge's (its stable window is the shorter
    /// scale-down one: a surge overshoots to drain the queue quickly).
    #[serde(default)]
    pub surged: bool,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Keep the size.
    Hold {
        /// The size.
        nodes: usize,
        /// Why.
        reason: String,
    },
    /// Change the size.
    Scale {
        /// From.
        from: usize,
        /// To.
        to: usize,
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// The size after the decision.
    pub fn nodes(&self) -> usize {
        match self {
            Self::Hold { nodes, .. } => *nodes,
            Self::Scale { to, .. } => *to,
        }
    }
}

/// Nodes the load asks for (unrounded).
pub fn desired(cfg: &PolicyConfig, o: &Observation) -> f64 {
    let by_functions = (o.function_concurrency + o.backlog) / cfg.target_function_concurrency.max(f64::EPSILON);
    let by_requests =
        (o.request_concurrency - o.db_concurrency).max(0.0) / cfg.target_request_concurrency.max(f64::EPSILON);
    by_functions.max(by_requests)
}

/// One decision at time `now` (since any fixed start).
pub fn decide(cfg: &PolicyConfig, o: &Observation, now: Duration, state: &PolicyState) -> (Decision, PolicyState) {
    let (lo, hi) = (cfg.min_nodes, cfg.max_nodes.max(cfg.min_nodes).max(1));
    let current = state.target.unwrap_or(o.nodes);
    let step = cfg.max_step.max(1);
    let hold = |reason: String| (Decision::Hold { nodes: current, reason }, *state);
    let scale = |to: usize, dir: Direction, reason: String| {
        let next = PolicyState { target: Some(to), last_change: Some((now, dir, o.request_rate)), surged: false };
        (Decision::Scale { from: current, to, reason }, next)
    };
    // A move decided on the last seconds (a surge or a drop): their rate is
    // the one later jumps are measured from.
    let at_once = |to: usize, dir: Direction, reason: String| {
        let surged = dir == Direction::Up;
        let next = PolicyState { target: Some(to), last_change: Some((now, dir, o.recent_request_rate)), surged };
        (Decision::Scale { from: current, to, reason }, next)
    };
    if current < lo {
        return scale(lo.min(current + step), Direction::Up, format!("below the minimum of {lo} nodes"));
    }
    if current > hi {
        return scale(
            hi.max(current.saturating_sub(step)),
            Direction::Down,
            format!("above the maximum of {hi} nodes"),
        );
    }
    if o.nodes == 0 && (current > 0 || o.backlog <= 0.0) {
        return hold("no metrics in the window".into());
    }
    let want = desired(cfg, o);
    let want_n = (want.ceil() as usize).clamp(lo, hi);
    // What the last seconds ask for: their concurrency (the queue
    // included, so that it drains soon after the new nodes serve) or, if
    // more, their arrivals at the window's time per request and database
    // share (a queue that only started building understates a surge).
    let per_request = if o.request_rate > 0.0 { o.request_concurrency / o.request_rate } else { 0.0 };
    let db_share = if o.request_concurrency > 0.0 { o.db_concurrency / o.request_concurrency } else { 0.0 };
    let by_rate = o.recent_request_rate * per_request * (1.0 - db_share);
    let recent = (o.recent_request_concurrency - o.recent_db_concurrency).max(0.0).max(by_rate)
        / cfg.target_request_concurrency.max(f64::EPSILON);
    let recent_n = (recent.ceil() as usize).clamp(lo, hi);
    // A surge of arrivals, not a queue still waiting for nodes already
    // asked for: the rate too must have jumped since the last decision.
    let arrivals_jumped =
        state.last_change.is_none_or(|(_, _, rate_then)| o.recent_request_rate >= cfg.panic_threshold * rate_then);
    if cfg.panic_threshold > 0.0
        && current > 0
        && arrivals_jumped
        && recent >= cfg.panic_threshold * current as f64
        && recent_n > current
    {
        let reason = format!(
            "surge: the last {} s want {recent:.2} nodes, ≥ {}× the {current} there are",
            cfg.panic_window_secs, cfg.panic_threshold
        );
        return at_once(recent_n, Direction::Up, reason);
    }
    // The mirror of a surge: arrivals fell by the panic threshold since the
    // last decision and the last seconds' concurrency (their queue
    // included) wants that much fewer nodes — a spike that ended. Down at
    // once, to a size with the tolerance as headroom, past `max_step`.
    let arrivals_fell =
        state.last_change.is_some_and(|(_, _, rate_then)| o.recent_request_rate * cfg.panic_threshold <= rate_then);
    let recent_down = ((recent * (1.0 + cfg.tolerance)).ceil() as usize).clamp(lo, hi);
    if cfg.panic_threshold > 0.0
        && state.surged
        && arrivals_fell
        && recent * cfg.panic_threshold <= current as f64
        && recent_down < current
    {
        let reason = format!(
            "drop: arrivals fell ≥ {}× and the last {} s want {recent:.2} nodes",
            cfg.panic_threshold, cfg.panic_window_secs
        );
        return at_once(recent_down, Direction::Down, reason);
    }
    if let Some((at, dir, rate_then)) = state.last_change {
        let stable = Duration::from_secs(match dir {
            Direction::Up if state.surged => cfg.scale_down_stable_secs,
            Direction::Up => cfg.scale_up_stable_secs,
            Direction::Down => cfg.scale_down_stable_secs,
        });
        if now.saturating_sub(at) < stable {
            // The window's rate lags a surge or a drop (decided on the last
            // seconds' rate): both must have risen.
            let rate_now =
                if o.recent_request_rate > 0.0 { o.request_rate.min(o.recent_request_rate) } else { o.request_rate };
            let jump = if rate_then > 0.0 { rate_now / rate_then } else { 0.0 };
            // The jump permits the move; the size still comes from the
            // concurrency (a rate ratio overshoots while a surge fills the
            // window).
            if jump >= cfg.rate_jump_factor && want_n > current {
                let to = want_n.min(current + step);
                return scale(
                    to,
                    Direction::Up,
                    format!("request rate ×{jump:.2} since the last decision, inside its stable window"),
                );
            }
            let left = stable.saturating_sub(now.saturating_sub(at)).as_secs();
            return hold(format!("stable window after scaling {dir:?}: {left} s left (wants {want:.2})"));
        }
    }
    if current == 0 {
        // Only the backlog speaks for an empty group.
        return if want_n > 0 {
            scale(want_n.min(step), Direction::Up, format!("{want:.2} nodes wanted by a backlog of {:.0}", o.backlog))
        } else {
            hold("no nodes and no backlog".into())
        };
    }
    let off = (want - current as f64) / current as f64;
    // Down only to a size that keeps the tolerance as headroom (no scaling
    // down to exactly 100% of target and back up on the next wobble).
    let want_down = ((want * (1.0 + cfg.tolerance)).ceil() as usize).clamp(lo, hi);
    if want_n > current && off > cfg.tolerance {
        let to = want_n.min(current + step);
        scale(to, Direction::Up, format!("{want:.2} nodes wanted by concurrency"))
    } else if want_down < current && -off > cfg.tolerance {
        // A surge overshot past `max_step` on purpose (for its queue): its
        // undo may, too.
        let floor = if state.surged { lo } else { current.saturating_sub(step) };
        let to = want_down.max(floor).max(lo);
        scale(to, Direction::Down, format!("{want:.2} nodes wanted by concurrency"))
    } else {
        hold(format!("{want:.2} nodes wanted, within tolerance of {current}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(nodes: usize, req: f64, rate: f64) -> Observation {
        Observation { nodes, request_concurrency: req, request_rate: rate, ..Observation::default() }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn scales_on_concurrency_but_not_on_database_waits() {
        let cfg = PolicyConfig::default();
        let (d, _) = decide(&cfg, &obs(1, 200.0, 100.0), secs(0), &PolicyState::default());
        assert_eq!(d.nodes(), 3, "{d:?}: 200/64 → 4, capped by a step of 2");
        let o = Observation { db_concurrency: 150.0, ..obs(1, 200.0, 100.0) };
        let (d, _) = decide(&cfg, &o, secs(0), &PolicyState::default());
        assert_eq!(d.nodes(), 1, "{d:?}: 50 non-database concurrency fits one node");
        let o = Observation { function_concurrency: 30.0, ..obs(1, 10.0, 1.0) };
        assert_eq!(decide(&cfg, &o, secs(0), &PolicyState::default()).0.nodes(), 3, "user functions count");
    }

    #[test]
    fn holds_inside_the_stable_window_unless_the_rate_jumps() {
        let cfg = PolicyConfig::default();
        let (d, st) = decide(&cfg, &obs(1, 128.0, 100.0), secs(0), &PolicyState::default());
        assert_eq!(d.nodes(), 2);
        // Idle right after a scale-up: no scale-down for 60 s.
        let (d, st2) = decide(&cfg, &obs(2, 0.0, 0.0), secs(30), &st);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        // More concurrency but the same rate: hold.
        let (d, _) = decide(&cfg, &obs(2, 400.0, 110.0), secs(30), &st2);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        // The rate doubled: scale up at once.
        let (d, _) = decide(&cfg, &obs(2, 400.0, 200.0), secs(30), &st2);
        assert_eq!(d, Decision::Scale { from: 2, to: 4, reason: d_reason(&d) });
        // After the window, idle scales down, by at most the step.
        let (d, _) = decide(&cfg, &obs(2, 0.0, 0.0), secs(61), &st2);
        assert_eq!(d.nodes(), 1);
    }

    /// Steady at 1 node (500 req/s at 50 ms = 25 in flight), then a last
    /// second of 8000 req/s with a queue building (1 node serves 80 at
    /// once), 10 s in: the surge observation, its decision and state.
    fn steady_then_surge(cfg: &PolicyConfig) -> (Observation, Decision, PolicyState) {
        let (_, st) = decide(cfg, &obs(1, 25.0, 500.0), secs(0), &PolicyState::default());
        let surge =
            Observation { recent_request_concurrency: 400.0, recent_request_rate: 8000.0, ..obs(1, 62.0, 1250.0) };
        let (d, st) = decide(cfg, &surge, secs(10), &st);
        (surge, d, st)
    }

    #[test]
    fn a_surge_of_arrivals_scales_at_once_past_the_step_but_a_queue_alone_does_not() {
        let cfg = PolicyConfig { max_nodes: 20, ..PolicyConfig::default() };
        let (surge, d, st) = steady_then_surge(&cfg);
        // The larger of the last second's concurrency (400) and its arrivals at the window's time per
        // request (8000 × 62 / 1250 = 397): ⌈400 / 64⌉ = 7, not capped by the step of 2.
        assert!(matches!(&d, Decision::Scale { from: 1, to: 7, reason } if reason.starts_with("surge")), "{d:?}");
        // Seconds later the queue is still there but the arrivals did not jump again: no second surge.
        let queued =
            Observation { recent_request_concurrency: 2000.0, recent_request_rate: 8000.0, ..obs(7, 900.0, 8000.0) };
        let (d, _) = decide(&cfg, &queued, secs(14), &st);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        // Off: the window's pace.
        let off = PolicyConfig { panic_threshold: 0.0, ..cfg };
        let (_, st0) = decide(&off, &obs(1, 25.0, 500.0), secs(0), &PolicyState::default());
        let (d, _) = decide(&off, &surge, secs(10), &st0);
        assert!(!d_reason(&d).starts_with("surge"), "{d:?}");
    }

    #[test]
    fn a_surge_ends_at_once_when_its_arrivals_fall_back_and_its_overshoot_goes_in_one_move() {
        let cfg = PolicyConfig { max_nodes: 20, ..PolicyConfig::default() };
        let (_, _, surged) = steady_then_surge(&cfg);
        assert_eq!(surged.target, Some(7));
        // 20 s later the spike is over: the last second is back to 500 req/s
        // and its queue drained, while the window still remembers the spike.
        let over =
            Observation { recent_request_concurrency: 25.0, recent_request_rate: 500.0, ..obs(7, 300.0, 5000.0) };
        let (d, after) = decide(&cfg, &over, secs(30), &surged);
        assert!(matches!(&d, Decision::Scale { from: 7, to: 1, reason } if reason.starts_with("drop")), "{d:?}");
        // The window's lagging rate (5000 vs 500 at the drop) is no jump: no way back up.
        let (d, _) = decide(&cfg, &over, secs(31), &after);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        // Only a surge ends that way: the same seconds after a plain scale-up hold.
        let plain = PolicyState { surged: false, ..surged };
        let (d, _) = decide(&cfg, &over, secs(30), &plain);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        // Arrivals that stay (a step, not a spike): after the surge's window the
        // overshoot sized for its queue goes in one move, past the step.
        let stays =
            Observation { recent_request_concurrency: 150.0, recent_request_rate: 8000.0, ..obs(7, 150.0, 8000.0) };
        let (d, _) = decide(&cfg, &stays, secs(41), &surged);
        assert!(matches!(&d, Decision::Scale { from: 7, to: 3, .. }), "{d:?}: ⌈150/64 × 1.1⌉ = 3");
    }

    fn d_reason(d: &Decision) -> String {
        match d {
            Decision::Hold { reason, .. } | Decision::Scale { reason, .. } => reason.clone(),
        }
    }

    #[test]
    fn tolerance_and_bounds() {
        let cfg = PolicyConfig { min_nodes: 2, max_nodes: 4, ..PolicyConfig::default() };
        let st = PolicyState { target: Some(3), ..PolicyState::default() };
        assert!(matches!(decide(&cfg, &obs(3, 64.0 * 3.1, 1.0), secs(0), &st).0, Decision::Hold { .. }));
        assert_eq!(decide(&cfg, &obs(3, 10_000.0, 1.0), secs(0), &st).0.nodes(), 4, "max");
        assert_eq!(decide(&cfg, &obs(3, 0.0, 0.0), secs(0), &st).0.nodes(), 2, "min");
        let below = PolicyState { target: Some(1), ..PolicyState::default() };
        assert_eq!(decide(&cfg, &obs(1, 0.0, 0.0), secs(0), &below).0.nodes(), 2, "raised to the minimum");
    }

    #[test]
    fn a_group_with_a_minimum_of_zero_grows_from_its_backlog_and_shrinks_to_nothing() {
        let cfg = PolicyConfig { min_nodes: 0, max_nodes: 3, ..PolicyConfig::default() };
        let empty = PolicyState { target: Some(0), ..PolicyState::default() };
        let (d, _) = decide(&cfg, &Observation::default(), secs(0), &empty);
        assert_eq!(d.nodes(), 0, "{d:?}: nothing queued, nothing started");
        let queued = Observation { backlog: 20.0, ..Observation::default() };
        let (d, st) = decide(&cfg, &queued, secs(0), &empty);
        assert_eq!(d.nodes(), 2, "{d:?}: 20 queued calls / 8 per node → 3, capped by a step of 2");
        // Idle after its stable window: back to nothing.
        let idle = PolicyState { target: Some(2), ..st };
        assert_eq!(decide(&cfg, &obs(2, 0.0, 0.0), secs(61), &idle).0.nodes(), 0);
        // A minimum of one is kept as before.
        let one = PolicyConfig { min_nodes: 1, ..cfg };
        assert_eq!(decide(&one, &obs(1, 0.0, 0.0), secs(61), &idle).0.nodes(), 1);
    }

    #[test]
    fn a_falling_rate_never_scales_down_by_itself() {
        let cfg = PolicyConfig::default();
        let st = PolicyState { target: Some(4), ..PolicyState::default() };
        // Rate fell to a tenth, concurrency still needs 4 nodes (slow work).
        let (d, _) = decide(&cfg, &obs(4, 250.0, 10.0), secs(0), &st);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
    }
}

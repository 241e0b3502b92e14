//! A simple cluster model to run scaling policies on load traces: the
//! Tessera policy beside two baselines in the same run, a naive
//! proportional one and Knative's KPA (stable and panic windows).
//!
//! Model, per second: nodes serve `slots_per_node` requests at once; a node
//! added by a decision serves nothing for `warmup_secs` and then takes its
//! shards gradually over `rebalance_secs`; requests beyond capacity queue
//! (and count as request concurrency, as they do on a real node); a share
//! `db_share` of busy time is database time; latency is the service time,
//! inflated once utilisation ρ passes 0.7 (× 1 + (ρ − 0.7)/(1 − ρ), ρ ≤ 0.98:
//! many slots per node queue little until close to saturation), plus the
//! queueing delay of the backlog.
//! Scale-downs take effect at once (hand-off takes well under a second).

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::kpa::{KpaConfig, KpaState, kpa_decide};
use super::policy::{Decision, Direction, Observation, PolicyConfig, PolicyState, decide};

/// One row of a trace: from `time_s` on, requests arrive at `request_rate`
/// per second and each takes `service_time_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TracePoint {
    /// Seconds since the start.
    pub time_s: f64,
    /// Requests per second.
    pub request_rate: f64,
    /// Milliseconds per request.
    pub service_time_ms: f64,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
#[error("trace line {line}: {message}")]
pub struct TraceError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses `time_s,request_rate,service_time_ms` CSV (a header line is skipped).
pub fn parse_trace(text: &str) -> Result<Vec<TracePoint>, TraceError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with(|c: char| c.is_alphabetic())) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let num = |k: usize| -> Result<f64, TraceError> {
            f.get(k).and_then(|s| s.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| {
                TraceError { line: i + 1, message: format!("expected 3 non-negative numbers, got `{line}`") }
            })
        };
        let p = TracePoint { time_s: num(0)?, request_rate: num(1)?, service_time_ms: num(2)? };
        if out.last().is_some_and(|l: &TracePoint| l.time_s > p.time_s) {
            return Err(TraceError { line: i + 1, message: "time goes backwards".into() });
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(TraceError { line: 0, message: "no data rows".into() });
    }
    Ok(out)
}

/// The cluster model's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// Requests one node serves at once without queueing (default 80).
    pub slots_per_node: f64,
    /// Seconds from a scale-up decision to a new node serving (default 15).
    pub warmup_secs: f64,
    /// Seconds over which a new node then takes its full share (default 10).
    pub rebalance_secs: f64,
    /// Requests one serving node queues beyond its slots before it sheds
    /// load (503, like `max_in_flight`; default 320).
    pub queue_per_node: f64,
    /// Share of busy time spent in the database (default 0.25).
    pub db_share: f64,
    /// The latency objective, ms (default 3 × the trace's first service time).
    pub latency_target_ms: Option<f64>,
    /// Nodes at the start (default 1).
    pub initial_nodes: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            slots_per_node: 80.0,
            warmup_secs: 15.0,
            rebalance_secs: 10.0,
            queue_per_node: 320.0,
            db_share: 0.25,
            latency_target_ms: None,
            initial_nodes: 1,
        }
    }
}

/// A policy to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// [`decide`] with the given config.
    Tessera,
    /// Every second, nodes = ⌈non-database concurrency now ÷ target⌉, clamped to the bounds.
    Naive,
    /// Knative's KPA ([`super::kpa`], its defaults) on the same signal and target.
    Kpa,
}

/// One second of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tick {
    /// Second.
    pub t: u64,
    /// Arrivals per second.
    pub request_rate: f64,
    /// Nodes provisioned (serving or warming up).
    pub nodes: usize,
    /// Capacity in nodes actually serving (fractional while rebalancing).
    pub ready: f64,
    /// Mean latency, ms.
    pub latency_ms: f64,
    /// Requests queued at the end of the second.
    pub backlog: f64,
    /// Requests shed this second (queues full).
    pub rejected: f64,
}

/// One scaling decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    /// Second.
    pub t: u64,
    /// The policy.
    pub policy: PolicyKind,
    /// From.
    pub from: usize,
    /// To.
    pub to: usize,
    /// Why.
    pub reason: String,
}

/// What a run cost and how it behaved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The policy.
    pub policy: PolicyKind,
    /// Scaling decisions.
    pub decisions: usize,
    /// Direction changes between consecutive decisions (flapping).
    pub reversals: usize,
    /// Direction changes less than 60 s after the previous decision.
    pub fast_reversals: usize,
    /// Σ nodes provisioned per second.
    pub node_seconds: f64,
    /// Seconds with mean latency over the objective (or requests shed).
    pub seconds_over_target: u64,
    /// Requests shed in all.
    pub rejected: f64,
    /// The objective, ms.
    pub latency_target_ms: f64,
    /// Most nodes at once.
    pub max_nodes: usize,
    /// Nodes at the end.
    pub final_nodes: usize,
}

/// A run: per-second ticks, the decision log, the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Per second.
    pub ticks: Vec<Tick>,
    /// Decisions.
    pub log: Vec<LogEntry>,
    /// Totals.
    pub summary: Summary,
}

fn point_at(trace: &[TracePoint], t: f64) -> TracePoint {
    let i = trace.partition_point(|p| p.time_s <= t);
    trace[i.saturating_sub(1)]
}

/// Runs `policy` on `trace` through the model.
pub fn run(trace: &[TracePoint], policy: PolicyKind, cfg: &PolicyConfig, model: &ModelConfig) -> Run {
    let end = trace.last().map_or(0.0, |p| p.time_s).ceil() as u64;
    let target_ms = model.latency_target_ms.unwrap_or(trace[0].service_time_ms.max(1.0) * 3.0);
    let (lo, hi) = (cfg.min_nodes.max(1), cfg.max_nodes.max(cfg.min_nodes.max(1)));
    // Seconds each provisioned node started (negative: there from the start).
    let mut nodes: Vec<f64> = vec![-1e9; model.initial_nodes.clamp(lo, hi)];
    let mut state = PolicyState { target: Some(nodes.len()), ..PolicyState::default() };
    let mut window: VecDeque<Observation> = VecDeque::new();
    // The KPA's history of the signal (non-database concurrency) and state.
    let kpa_cfg = KpaConfig::default();
    let mut kpa_history: Vec<f64> = Vec::new();
    let mut kpa_state = KpaState::default();
    let (mut backlog, mut ticks, mut log) = (0.0f64, Vec::new(), Vec::new());
    for t in 0..=end {
        let now = t as f64;
        let p = point_at(trace, now);
        let service_s = (p.service_time_ms / 1000.0).max(1e-6);
        let ready: f64 = nodes
            .iter()
            .map(|s| ((now - s - model.warmup_secs) / model.rebalance_secs.max(1e-9)).clamp(0.0, 1.0))
            .sum::<f64>()
            .max(0.0);
        let capacity_rps = ready * model.slots_per_node / service_s;
        let offered = p.request_rate + backlog;
        let served = offered.min(capacity_rps);
        let queue_cap = ready.max(0.0) * model.queue_per_node;
        backlog = offered - served;
        let rejected = (backlog - queue_cap).max(0.0);
        backlog -= rejected;
        let busy = served * service_s;
        let rho = if ready > 0.0 { (busy / (ready * model.slots_per_node)).min(0.98) } else { 0.98 };
        let queue_ms = if capacity_rps > 0.0 { backlog / capacity_rps * 1000.0 } else { 60_000.0 };
        let inflation = 1.0 + (rho - 0.7).max(0.0) / (1.0 - rho);
        let latency_ms = if p.request_rate + backlog > 0.0 { p.service_time_ms * inflation + queue_ms } else { 0.0 };
        ticks.push(Tick { t, request_rate: p.request_rate, nodes: nodes.len(), ready, latency_ms, backlog, rejected });
        let o = Observation {
            nodes: nodes.len(),
            request_concurrency: busy + backlog,
            function_concurrency: 0.0,
            db_concurrency: busy * model.db_share,
            request_rate: p.request_rate,
            ..Observation::default()
        };
        window.push_back(o);
        while window.len() as u64 > cfg.window_secs.max(1) {
            window.pop_front();
        }
        let current = nodes.len();
        let decision = match policy {
            PolicyKind::Tessera => {
                let n = window.len() as f64;
                let recent: Vec<&Observation> =
                    window.iter().rev().take(cfg.panic_window_secs.max(1) as usize).collect();
                let r = recent.len() as f64;
                let avg = Observation {
                    nodes: current,
                    request_concurrency: window.iter().map(|o| o.request_concurrency).sum::<f64>() / n,
                    function_concurrency: 0.0,
                    db_concurrency: window.iter().map(|o| o.db_concurrency).sum::<f64>() / n,
                    request_rate: window.iter().map(|o| o.request_rate).sum::<f64>() / n,
                    backlog: 0.0,
                    recent_request_concurrency: recent.iter().map(|o| o.request_concurrency).sum::<f64>() / r,
                    recent_db_concurrency: recent.iter().map(|o| o.db_concurrency).sum::<f64>() / r,
                    recent_request_rate: recent.iter().map(|o| o.request_rate).sum::<f64>() / r,
                };
                let (d, next) = decide(cfg, &avg, Duration::from_secs(t), &state);
                state = next;
                d
            }
            PolicyKind::Kpa => {
                kpa_history.push((o.request_concurrency - o.db_concurrency).max(0.0));
                let (want, next) =
                    kpa_decide(&kpa_cfg, &kpa_history, cfg.target_request_concurrency, ready, current, t, &kpa_state);
                let panicking = next.panic_since.is_some();
                kpa_state = next;
                let to = want.clamp(lo, hi);
                if to == current {
                    Decision::Hold { nodes: current, reason: String::new() }
                } else {
                    let mode = if panicking { "panic window" } else { "stable window" };
                    Decision::Scale { from: current, to, reason: format!("{want} nodes by the {mode}") }
                }
            }
            PolicyKind::Naive => {
                let want = ((o.request_concurrency - o.db_concurrency).max(0.0) / cfg.target_request_concurrency).ceil()
                    as usize;
                let to = want.clamp(lo, hi);
                if to == current {
                    Decision::Hold { nodes: current, reason: String::new() }
                } else {
                    Decision::Scale { from: current, to, reason: format!("{want} nodes by concurrency now") }
                }
            }
        };
        if let Decision::Scale { from, to, reason } = decision {
            if to > from {
                nodes.extend(std::iter::repeat_n(now, to - from));
            } else {
                nodes.truncate(to);
            }
            log.push(LogEntry { t, policy, from, to, reason });
        }
    }
    let summary = summarize(policy, &ticks, &log, target_ms);
    Run { ticks, log, summary }
}

fn summarize(policy: PolicyKind, ticks: &[Tick], log: &[LogEntry], target_ms: f64) -> Summary {
    let dir = |e: &LogEntry| if e.to > e.from { Direction::Up } else { Direction::Down };
    let (mut reversals, mut fast) = (0, 0);
    for w in log.windows(2) {
        if dir(&w[0]) != dir(&w[1]) {
            reversals += 1;
            if w[1].t - w[0].t < 60 {
                fast += 1;
            }
        }
    }
    Summary {
        policy,
        decisions: log.len(),
        reversals,
        fast_reversals: fast,
        node_seconds: ticks.iter().map(|t| t.nodes as f64).sum(),
        seconds_over_target: ticks.iter().filter(|t| t.latency_ms > target_ms || t.rejected > 0.0).count() as u64,
        rejected: ticks.iter().map(|t| t.rejected).sum(),
        latency_target_ms: target_ms,
        max_nodes: ticks.iter().map(|t| t.nodes).max().unwrap_or(0),
        final_nodes: ticks.last().map_or(0, |t| t.nodes),
    }
}

/// The policies on one trace, and the plot.
pub struct Comparison {
    /// The Tessera policy's run.
    pub tessera: Run,
    /// The naive policy's run.
    pub naive: Run,
    /// Knative's KPA's run.
    pub kpa: Run,
    /// An SVG of load, nodes and latency over time.
    pub svg: String,
}

/// Runs the three policies on `trace`.
pub fn compare(name: &str, trace: &[TracePoint], cfg: &PolicyConfig, model: &ModelConfig) -> Comparison {
    let tessera = run(trace, PolicyKind::Tessera, cfg, model);
    let naive = run(trace, PolicyKind::Naive, cfg, model);
    let kpa = run(trace, PolicyKind::Kpa, cfg, model);
    let svg = super::svg::plot(name, &tessera, &naive, &kpa);
    Comparison { tessera, naive, kpa, svg }
}

/// The decision log of both runs as CSV.
pub fn decisions_csv(c: &Comparison) -> String {
    let mut s = String::from("time_s,policy,from,to,reason\n");
    let mut all: Vec<&LogEntry> = c.tessera.log.iter().chain(&c.naive.log).chain(&c.kpa.log).collect();
    all.sort_by_key(|e| e.t);
    for e in all {
        let policy = match e.policy {
            PolicyKind::Tessera => "tessera",
            PolicyKind::Naive => "naive",
            PolicyKind::Kpa => "kpa",
        };
        s.push_str(&format!("{},{policy},{},{},\"{}\"\n", e.t, e.from, e.to, e.reason.replace('"', "'")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> Vec<TracePoint> {
        (0..=600)
            .map(|t| TracePoint {
                time_s: t as f64,
                request_rate: if t < 60 { 500.0 } else { 4000.0 },
                service_time_ms: 50.0,
            })
            .collect()
    }

    #[test]
    fn parses_and_rejects() {
        let t = parse_trace("time_s,request_rate,service_time_ms\n0,10,5\n5,20,5\n").expect("parse");
        assert_eq!(t.len(), 2);
        assert_eq!(point_at(&t, 3.0).request_rate, 10.0);
        assert!(parse_trace("0,10\n").is_err());
        assert!(parse_trace("5,1,1\n0,1,1\n").is_err());
        assert!(parse_trace("0,-1,1\n").is_err());
    }

    #[test]
    fn converges_on_a_step_and_stays() {
        let cfg = PolicyConfig::default();
        let r = run(&step(), PolicyKind::Tessera, &cfg, &ModelConfig::default());
        // 4000 rps × 50 ms = 200 busy, 150 of it outside the database → 3 nodes.
        assert_eq!(r.summary.final_nodes, 3, "{:?}", r.log);
        let last_change = r.log.last().map_or(0, |e| e.t);
        assert!(last_change < 300, "settled early and stayed: {:?}", r.log);
        // Up quickly (past 3 while the queue built during warm-up drains),
        // then down to the need once: at most one reversal.
        assert!(r.summary.reversals <= 1, "{:?}", r.log);
        assert!(r.log.first().is_some_and(|e| e.t <= 61), "reacts at once: {:?}", r.log);
    }

    #[test]
    fn never_reverses_inside_a_stable_window_and_respects_bounds() {
        let cfg = PolicyConfig { min_nodes: 1, max_nodes: 6, ..PolicyConfig::default() };
        // A noisy sawtooth.
        let trace: Vec<TracePoint> = (0..=1200)
            .map(|t| {
                let saw = (t % 120) as f64 / 120.0;
                let noise = ((t * 7919) % 13) as f64 / 13.0 - 0.5;
                TracePoint {
                    time_s: t as f64,
                    request_rate: 500.0 + 4000.0 * saw + 600.0 * noise,
                    service_time_ms: 50.0,
                }
            })
            .collect();
        let r = run(&trace, PolicyKind::Tessera, &cfg, &ModelConfig::default());
        for (i, e) in r.log.iter().enumerate() {
            assert!((1..=6).contains(&e.to), "bounds: {e:?}");
            // Past the step: a surge, a drop, or the undo of a surge.
            let after_surge = i > 0 && r.log[i - 1].reason.starts_with("surge");
            assert!(
                e.to.abs_diff(e.from) <= cfg.max_step
                    || e.reason.starts_with("surge")
                    || e.reason.starts_with("drop")
                    || (after_surge && e.to < e.from),
                "step: {e:?}"
            );
        }
        for w in r.log.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            // A surge overshoots to drain its queue: its window is the
            // shorter one, and arrivals falling back end it (a drop).
            let up_window =
                if a.reason.starts_with("surge") { cfg.scale_down_stable_secs } else { cfg.scale_up_stable_secs };
            if a.to > a.from && b.to < b.from && !(a.reason.starts_with("surge") && b.reason.starts_with("drop")) {
                assert!(b.t - a.t >= up_window, "down inside the up window: {a:?} {b:?}");
            }
            if a.to < a.from && b.to > b.from && b.t - a.t < cfg.scale_down_stable_secs {
                assert!(
                    b.reason.contains("request rate") || b.reason.starts_with("surge"),
                    "only a jump of the rate reverses a scale-down early: {b:?}"
                );
            }
        }
        let naive = run(&trace, PolicyKind::Naive, &cfg, &ModelConfig::default());
        assert!(naive.summary.reversals > r.summary.reversals, "the naive policy flaps more");
    }
}

/// Issue 17's aim on the shipped traces: against the better of the two
/// baselines on each measure, no more reversals, no more requests shed and
/// at most 5% more node-seconds. Deterministic (the traces are fixed).
#[cfg(test)]
mod shipped_traces {
    use super::*;

    fn traces() -> Vec<(String, Vec<TracePoint>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
        let mut out: Vec<(String, Vec<TracePoint>)> = std::fs::read_dir(&dir)
            .expect("cluster/traces")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .map(|p| {
                let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
                (name, parse_trace(&std::fs::read_to_string(&p).expect("read")).expect("parse"))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn the_policy_is_no_worse_than_the_better_baseline_on_every_shipped_trace() {
        let (cfg, model) = (PolicyConfig::default(), ModelConfig::default());
        let mut misses = Vec::new();
        let traces = traces();
        assert!(traces.len() >= 7, "the shipped traces are found");
        for (name, trace) in &traces {
            let c = compare(name, trace, &cfg, &model);
            let (t, n, k) = (&c.tessera.summary, &c.naive.summary, &c.kpa.summary);
            let best_rev = n.reversals.min(k.reversals);
            let best_shed = n.rejected.min(k.rejected);
            let best_ns = n.node_seconds.min(k.node_seconds);
            println!(
                "{name:14} reversals {} (best {best_rev}), shed {:.0} (best {best_shed:.0}), node-seconds {:.0} (best {best_ns:.0}, {:+.1}%)",
                t.reversals,
                t.rejected,
                t.node_seconds,
                (t.node_seconds / best_ns - 1.0) * 100.0
            );
            if t.reversals > best_rev {
                misses.push(format!("{name}: {} reversals > {best_rev}", t.reversals));
            }
            if t.rejected > best_shed + 0.5 {
                misses.push(format!("{name}: shed {:.0} > {best_shed:.0}", t.rejected));
            }
            if t.node_seconds > best_ns * 1.05 {
                misses.push(format!("{name}: {:.0} node-seconds > 1.05 × {best_ns:.0}", t.node_seconds));
            }
        }
        assert!(misses.is_empty(), "{misses:#?}");
    }
}

//! Knative's Pod Autoscaler (KPA) as a baseline for the simulator: a pure
//! function of (config, the concurrency history, the ready nodes, state) →
//! (nodes wanted, new state), after knative/serving's
//! `pkg/autoscaler/scaling/autoscaler.go`.
//!
//! - Two windows over the same per-second concurrency: the *stable* window
//!   (default 60 s) and the *panic* window (default 10% of it, 6 s).
//! - Desired = ⌈window average ÷ target per node⌉ for each window.
//! - Panic mode starts when the panic window's desire is at least
//!   `panic_threshold` (default 2.0) × the ready nodes; while panicking the
//!   size only grows (to the highest panic desire seen), and panic ends
//!   once a whole stable window passed since the threshold was last met.
//! - Outside panic: the stable desire; a scale-down removes at most
//!   `1 − 1/max_scale_down_rate` of the nodes per decision (default rate 2:
//!   at most half), scale-ups are not limited (default rate 1000).
//!
//! Invariant: while in panic mode the answer never falls below the nodes
//! provisioned (Knative's "don't scale down while panicking").

use serde::{Deserialize, Serialize};

/// KPA settings (Knative's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KpaConfig {
    /// Stable window, seconds (`stable-window`, default 60).
    pub stable_window_secs: u64,
    /// Panic window as a percentage of the stable one (`panic-window-percentage`, default 10).
    pub panic_window_percentage: f64,
    /// Panic when the panic window wants this many times the ready nodes
    /// (`panic-threshold-percentage` 200 → 2.0).
    pub panic_threshold: f64,
    /// Most a scale-up multiplies the ready nodes by (`max-scale-up-rate`, default 1000).
    pub max_scale_up_rate: f64,
    /// Most a scale-down divides the provisioned nodes by (`max-scale-down-rate`, default 2).
    pub max_scale_down_rate: f64,
}

impl Default for KpaConfig {
    fn default() -> Self {
        Self {
            stable_window_secs: 60,
            panic_window_percentage: 10.0,
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
        }
    }
}

/// What the KPA remembers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KpaState {
    /// While panicking: the last second the panic threshold was met.
    pub panic_since: Option<u64>,
    /// The highest panic desire while panicking.
    pub max_panic_nodes: usize,
}

/// The KPA's answer at second `now`.
/// `history`: the per-second concurrency that asks for nodes (newest last);
/// `target`: concurrency per node; `ready`: nodes serving now; `provisioned`:
/// nodes asked for so far. Returns the nodes wanted (before min/max bounds)
/// and whether it is panicking.
pub fn kpa_decide(
    cfg: &KpaConfig,
    history: &[f64],
    target: f64,
    ready: f64,
    provisioned: usize,
    now: u64,
    state: &KpaState,
) -> (usize, KpaState) {
    let avg = |secs: usize| {
        let w = &history[history.len().saturating_sub(secs.max(1))..];
        if w.is_empty() { 0.0 } else { w.iter().sum::<f64>() / w.len() as f64 }
    };
    let stable_secs = cfg.stable_window_secs.max(1) as usize;
    let panic_secs = ((cfg.stable_window_secs as f64 * cfg.panic_window_percentage / 100.0).round() as usize).max(1);
    let target = target.max(f64::EPSILON);
    let desired_stable = (avg(stable_secs) / target).ceil() as usize;
    let desired_panic = (avg(panic_secs) / target).ceil() as usize;
    // Knative limits moves relative to the ready pods (at least one).
    let base = ready.max(1.0);
    let up_limit = (cfg.max_scale_up_rate * base).ceil() as usize;
    let down_limit = (provisioned as f64 / cfg.max_scale_down_rate.max(1.0)).floor() as usize;
    let clamp = |n: usize| n.min(up_limit).max(down_limit);
    let over = desired_panic as f64 / base >= cfg.panic_threshold;
    let mut next = *state;
    if over {
        // Panic starts, or goes on from now.
        next.panic_since = Some(now);
    } else if next.panic_since.is_some_and(|at| now >= at + cfg.stable_window_secs) {
        next = KpaState::default();
    }
    if next.panic_since.is_some() {
        next.max_panic_nodes = next.max_panic_nodes.max(clamp(desired_panic));
        // Never down while panicking.
        return (next.max_panic_nodes.max(provisioned), next);
    }
    (clamp(desired_stable), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: f64, secs: usize) -> Vec<f64> {
        vec![v; secs]
    }

    #[test]
    fn steady_load_wants_its_concurrency_over_the_target() {
        let (n, s) = kpa_decide(&KpaConfig::default(), &flat(200.0, 120), 64.0, 4.0, 4, 120, &KpaState::default());
        assert_eq!(n, 4, "200 / 64 = 3.1 → 4");
        assert_eq!(s.panic_since, None);
    }

    #[test]
    fn a_burst_panics_and_never_scales_down_while_panicking() {
        let cfg = KpaConfig::default();
        let mut h = flat(60.0, 60);
        h.extend(flat(600.0, 6));
        let (n, s) = kpa_decide(&cfg, &h, 64.0, 1.0, 1, 66, &KpaState::default());
        assert!(s.panic_since.is_some(), "600 / 64 = 10 ≥ 2 × 1 ready");
        assert_eq!(n, 10, "the panic window's desire, not the stable window's");
        // The burst ends; within the stable window after it, no scale-down.
        h.extend(flat(10.0, 30));
        let (n, s) = kpa_decide(&cfg, &h, 64.0, 10.0, 10, 96, &s);
        assert_eq!((n, s.panic_since), (10, Some(66)), "still panicking 30 s after the last trigger");
        h.extend(flat(10.0, 40));
        let (n, s) = kpa_decide(&cfg, &h, 64.0, 10.0, 10, 136, &s);
        assert_eq!(s.panic_since, None, "a whole stable window without the threshold: panic over");
        assert_eq!(n, 5, "down by at most half per decision");
    }

    #[test]
    fn scale_down_is_limited_to_half_per_decision() {
        let (n, _) = kpa_decide(&KpaConfig::default(), &flat(0.0, 120), 64.0, 8.0, 8, 120, &KpaState::default());
        assert_eq!(n, 4);
    }
}

//! What each node publishes once a second on `{prefix}.metrics.{node}`, and
//! the sliding window the autoscaler averages them over.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::Observation;
use crate::roles::{Roles, ScaleGroup};

/// One GPU's load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuMetrics {
    /// The device index.
    pub index: u32,
    /// Utilisation, percent.
    pub utilization: u32,
    /// Memory in use, bytes.
    pub memory_used: u64,
    /// Memory in all, bytes.
    pub memory_total: u64,
}

/// A node's load at one instant (JSON on NATS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// The node.
    pub node_id: String,
    /// When sampled, ms since the Unix epoch.
    pub at_ms: i64,
    /// Invocations in flight (request concurrency).
    pub request_concurrency: f64,
    /// User-function calls running (user-function concurrency).
    pub function_concurrency: f64,
    /// Journal operations in flight (database concurrency).
    pub db_concurrency: f64,
    /// Invocations finished per second since the last sample.
    pub request_rate: f64,
    /// Entities in memory.
    pub active_entities: u64,
    /// Per GPU, when NVML is present.
    #[serde(default)]
    pub gpus: Vec<GpuMetrics>,
    /// The node's roles (empty from nodes before roles: both).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Function calls this node wants run elsewhere and found no node of
    /// the functions role for (they wait and retry): a backlog of that group.
    #[serde(default)]
    pub functions_unplaced: f64,
}

/// The last `span` of samples per node.
#[derive(Debug, Default)]
pub struct Window {
    span_ms: i64,
    /// The recent part (the surge check's), ms.
    recent_ms: i64,
    samples: HashMap<String, VecDeque<NodeMetrics>>,
}

impl Window {
    /// A window of `span`.
    pub fn new(span: Duration) -> Self {
        let recent_ms = super::PolicyConfig::default().panic_window_secs as i64 * 1000;
        Self { span_ms: span.as_millis() as i64, recent_ms, samples: HashMap::new() }
    }

    /// Also averages the last `recent` on their own (the policy's surge check; default: the policy's default `panic_window_secs`).
    pub fn with_recent(mut self, recent: Duration) -> Self {
        self.recent_ms = recent.as_millis() as i64;
        self
    }

    /// Adds a sample.
    pub fn push(&mut self, m: NodeMetrics) {
        let q = self.samples.entry(m.node_id.clone()).or_default();
        q.push_back(m);
    }

    /// Drops samples older than the span before `now_ms`, and nodes without any.
    pub fn expire(&mut self, now_ms: i64) {
        let horizon = now_ms - self.span_ms;
        for q in self.samples.values_mut() {
            while q.front().is_some_and(|m| m.at_ms < horizon) {
                q.pop_front();
            }
        }
        self.samples.retain(|_, q| !q.is_empty());
    }

    /// Cluster-wide sums of each node's average over the window.
    pub fn observe(&self) -> Observation {
        self.observe_where(|_| true)
    }

    /// Sums over the nodes of one scale group; function calls that nodes
    /// of any group could not place count as the functions group's backlog.
    pub fn observe_group(&self, group: ScaleGroup) -> Observation {
        let mut o = self.observe_where(|m| Roles::from_names(&m.roles).group() == group);
        if group == ScaleGroup::Functions {
            o.backlog += self.average(|m| m.functions_unplaced);
        }
        o
    }

    /// The sum over nodes of each node's average of `f`.
    fn average(&self, f: impl Fn(&NodeMetrics) -> f64) -> f64 {
        self.samples.values().map(|q| q.iter().map(&f).sum::<f64>() / q.len().max(1) as f64).sum()
    }

    fn observe_where(&self, keep: impl Fn(&NodeMetrics) -> bool) -> Observation {
        let mut o = Observation::default();
        for q in self.samples.values().filter(|q| q.back().is_some_and(&keep)) {
            o.nodes += 1;
            let n = q.len().max(1) as f64;
            o.request_concurrency += q.iter().map(|m| m.request_concurrency).sum::<f64>() / n;
            o.function_concurrency += q.iter().map(|m| m.function_concurrency).sum::<f64>() / n;
            o.db_concurrency += q.iter().map(|m| m.db_concurrency).sum::<f64>() / n;
            o.request_rate += q.iter().map(|m| m.request_rate).sum::<f64>() / n;
            // Samples are a second apart: the last `recent` of them.
            let newest = q.back().map_or(0, |m| m.at_ms);
            let recent: Vec<&NodeMetrics> = q.iter().filter(|m| newest - m.at_ms < self.recent_ms).collect();
            let r = recent.len().max(1) as f64;
            o.recent_request_concurrency += recent.iter().map(|m| m.request_concurrency).sum::<f64>() / r;
            o.recent_db_concurrency += recent.iter().map(|m| m.db_concurrency).sum::<f64>() / r;
            o.recent_request_rate += recent.iter().map(|m| m.request_rate).sum::<f64>() / r;
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(node: &str, roles: &[&str], at_ms: i64, functions: f64, unplaced: f64) -> NodeMetrics {
        NodeMetrics {
            node_id: node.into(),
            at_ms,
            request_concurrency: 10.0,
            function_concurrency: functions,
            db_concurrency: 0.0,
            request_rate: 1.0,
            active_entities: 0,
            gpus: Vec::new(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            functions_unplaced: unplaced,
        }
    }

    #[test]
    fn each_group_sees_its_own_nodes_and_the_functions_group_the_unplaced_calls() {
        let mut w = Window::new(Duration::from_secs(10));
        w.push(sample("e1", &["entities"], 1_000, 0.0, 3.0));
        w.push(sample("e1", &["entities"], 2_000, 0.0, 1.0));
        w.push(sample("both", &[], 2_000, 4.0, 0.0));
        w.push(sample("f1", &["functions"], 2_000, 6.0, 0.0));
        let all = w.observe();
        assert_eq!((all.nodes, all.function_concurrency, all.backlog), (3, 10.0, 0.0));
        let e = w.observe_group(ScaleGroup::Entities);
        assert_eq!((e.nodes, e.function_concurrency, e.request_concurrency), (2, 4.0, 20.0), "{e:?}");
        let f = w.observe_group(ScaleGroup::Functions);
        assert_eq!((f.nodes, f.function_concurrency), (1, 6.0), "{f:?}");
        assert_eq!(f.backlog, 2.0, "e1's unplaced calls, averaged over its window");
    }

    #[test]
    fn an_empty_group_still_sees_the_calls_waiting_for_it() {
        let mut w = Window::new(Duration::from_secs(10));
        w.push(sample("e1", &["entities"], 1_000, 0.0, 5.0));
        let f = w.observe_group(ScaleGroup::Functions);
        assert_eq!((f.nodes, f.backlog), (0, 5.0));
    }
}

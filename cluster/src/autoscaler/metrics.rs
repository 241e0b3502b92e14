//! What each node publishes once a second on `{prefix}.metrics.{node}`, and
//! the sliding window the autoscaler averages them over.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::Observation;

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
}

/// The last `span` of samples per node.
#[derive(Debug, Default)]
pub struct Window {
    span_ms: i64,
    samples: HashMap<String, VecDeque<NodeMetrics>>,
}

impl Window {
    /// A window of `span`.
    pub fn new(span: Duration) -> Self {
        Self { span_ms: span.as_millis() as i64, samples: HashMap::new() }
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
        let mut o = Observation { nodes: self.samples.len(), ..Observation::default() };
        for q in self.samples.values() {
            let n = q.len().max(1) as f64;
            o.request_concurrency += q.iter().map(|m| m.request_concurrency).sum::<f64>() / n;
            o.function_concurrency += q.iter().map(|m| m.function_concurrency).sum::<f64>() / n;
            o.db_concurrency += q.iter().map(|m| m.db_concurrency).sum::<f64>() / n;
            o.request_rate += q.iter().map(|m| m.request_rate).sum::<f64>() / n;
        }
        o
    }
}

//! The autoscaler's pure parts: the metrics every node publishes, the
//! Cloudstate-style [`policy`] (a function of config, metric window, time and
//! state), Knative's [`kpa`] as a baseline, and a [`simulate`]d cluster to
//! run them on load traces. The actor
//! that runs the policy on the cluster's leader and the scalers that act on
//! its decisions live in the runtime.

pub mod kpa;
pub mod metrics;
pub mod policy;
pub mod simulate;
mod svg;

pub use metrics::{GpuMetrics, NodeMetrics, Window};
pub use policy::{Decision, Direction, Observation, PolicyConfig, PolicyState, decide};

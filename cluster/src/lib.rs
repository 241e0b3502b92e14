//! Tessera's cluster layer, built on what users already run — NATS JetStream
//! KV for membership and leases — with no consensus of its own, and
//! independent of entities and the runtime:
//!
//! - [`store`]: the `{PREFIX}_CLUSTER` KV bucket (heartbeats, shard leases,
//!   singleton leases; entries expire a TTL after their last write),
//! - [`ownership`]: the node-local lease table the runtime reads as its fence,
//! - [`coordinator`]: the per-node task that heartbeats, renews, takes
//!   orphaned shards, rebalances in capped rounds and hands off on leave,
//! - [`allocation`]: the least-shard plan every node computes alike,
//! - [`roles`]: node roles (entities, functions) and the scale groups they make,
//! - [`singleton`]: a job run by exactly one node (the autoscaler),
//! - [`status`]: a one-shot read of the cluster for the CLI,
//! - [`autoscaler`]: the published node metrics, the scaling policy (pure)
//!   and a simulator to run it on load traces.
//!
//! ```
//! use tessera_cluster::allocation::plan;
//! let owners = vec![Some("a".to_string()); 8];
//! let moves = plan(&owners, &["a".into(), "b".into()], 2);
//! assert_eq!(moves.len(), 2); // b takes shards gradually
//! ```

pub mod allocation;
pub mod autoscaler;
mod config;
pub mod coordinator;
mod error;
pub mod ownership;
pub mod roles;
pub mod singleton;
pub mod status;
pub mod store;
mod view;

pub use config::ClusterConfig;
pub use coordinator::{Cluster, ShardHost};
pub use error::ClusterError;
pub use ownership::{Ownership, Unit};
pub use roles::{Roles, ScaleGroup};
pub use singleton::Singleton;
pub use status::ClusterStatus;
pub use store::{ClusterStore, LeaseState, MemberInfo};
pub use view::View;

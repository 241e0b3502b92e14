//! Cluster settings.

use std::time::Duration;

/// How a node takes part in the cluster. Every node of a cluster must use the
/// same `prefix` and `lease_ttl`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id (unique in the cluster).
    pub node_id: String,
    /// The NATS prefix; the KV bucket is `{PREFIX}_CLUSTER`.
    pub prefix: String,
    /// How long a lease or heartbeat lives after its last renewal (default
    /// 3 s). A crashed node's shards are taken over after at most this plus
    /// one tick; a node cut off from NATS stops serving after ¾ of it.
    pub lease_ttl: Duration,
    /// How often the node checks deadlines and takes orphaned shards (default 250 ms).
    pub tick: Duration,
    /// How often shards are rebalanced between live nodes (default 1 s).
    pub rebalance_every: Duration,
    /// Most shards moved between live nodes per rebalancing round (default
    /// 16): a joining node takes shards gradually instead of in one storm.
    /// Orphaned shards (of crashed or departed nodes) are not capped.
    pub max_moves_per_round: usize,
    /// Longest a graceful hand-off waits for in-flight work (default 10 s).
    pub drain_timeout: Duration,
    /// This node's HTTP address, advertised in its heartbeat.
    pub http: Option<String>,
    /// Its roles (default both): only nodes with the entities role take
    /// shard leases; the others are members without shards.
    pub roles: crate::Roles,
}

impl ClusterConfig {
    /// Defaults for `node_id` under `prefix`.
    pub fn new(node_id: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            prefix: prefix.into(),
            lease_ttl: Duration::from_secs(3),
            tick: Duration::from_millis(250),
            rebalance_every: Duration::from_secs(1),
            max_moves_per_round: 16,
            drain_timeout: Duration::from_secs(10),
            http: None,
            roles: crate::Roles::BOTH,
        }
    }

    /// How often held leases and the heartbeat are renewed: a third of the TTL.
    pub fn renew_every(&self) -> Duration {
        self.lease_ttl / 3
    }
}

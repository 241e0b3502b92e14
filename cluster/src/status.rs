//! A read of the whole cluster, for `tessera cluster status` and `locate`.

use serde::Serialize;

use crate::ClusterError;
use crate::store::{ClusterStore, LeaseState, MemberInfo, Value};

/// One shard lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardLease {
    /// The entity type.
    pub entity_type: String,
    /// The shard.
    pub shard: u32,
    /// The holder.
    pub owner: String,
    /// The fencing epoch.
    pub epoch: u64,
    /// Serving or handing off.
    pub state: LeaseState,
}

/// A singleton and its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SingletonLease {
    /// The singleton's name.
    pub name: String,
    /// The holder.
    pub owner: String,
    /// The fencing epoch.
    pub epoch: u64,
}

/// The cluster as the bucket shows it now.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The KV bucket.
    pub bucket: String,
    /// The lease TTL in milliseconds.
    pub lease_ttl_ms: u64,
    /// Live members.
    pub members: Vec<MemberInfo>,
    /// The holder of `singleton/leader` (it runs the autoscaler).
    pub leader: Option<String>,
    /// Every singleton lease.
    pub singletons: Vec<SingletonLease>,
    /// The shard count the members agree on.
    pub shards: u32,
    /// Every held shard lease, by type then shard.
    pub leases: Vec<ShardLease>,
    /// Shards (type, shard) nobody holds: moving or orphaned right now.
    pub unowned: Vec<(String, u32)>,
    /// Shards being handed off right now.
    pub releasing: Vec<ShardLease>,
}

impl ClusterStatus {
    /// Reads the bucket once.
    pub async fn read(store: &ClusterStore) -> Result<Self, ClusterError> {
        let mut members = Vec::new();
        let mut leases = Vec::new();
        let mut singletons = Vec::new();
        let mut entries = store.snapshot().await?;
        // A key listing taken while leases are renewed can come back short
        // (the server's pending count races the updates: nats-server
        // #4824), so every shard the members serve that the listing missed
        // is asked for directly before it is called unowned.
        let listed: std::collections::HashSet<String> = entries.iter().map(|e| e.key.clone()).collect();
        let mut expected = Vec::new();
        for e in &entries {
            if let Value::Member(m) = &e.value {
                for t in &m.entity_types {
                    expected.extend((0..m.shards).map(|s| crate::store::shard_key(t, s)));
                }
            }
        }
        expected.sort();
        expected.dedup();
        for key in expected.into_iter().filter(|k| !listed.contains(k)) {
            if let Some(e) = store.entry(&key).await? {
                entries.push(e);
            }
        }
        for e in entries {
            let epoch = e.epoch().unwrap_or_default();
            match e.value {
                Value::Member(m) => members.push(m),
                Value::Lease(l) => {
                    if let Some(rest) = e.key.strip_prefix("shards/")
                        && let Some((t, s)) = rest.rsplit_once('/')
                        && let Ok(shard) = s.parse()
                    {
                        leases.push(ShardLease {
                            entity_type: t.to_owned(),
                            shard,
                            owner: l.owner,
                            epoch,
                            state: l.state,
                        });
                    } else if let Some(name) = e.key.strip_prefix("singleton/") {
                        singletons.push(SingletonLease { name: name.to_owned(), owner: l.owner, epoch });
                    }
                }
            }
        }
        leases.sort_by(|a, b| (&a.entity_type, a.shard).cmp(&(&b.entity_type, b.shard)));
        let shards = members.iter().map(|m| m.shards).max().unwrap_or(0);
        let mut types: Vec<String> = members.iter().flat_map(|m| m.entity_types.clone()).collect();
        types.sort();
        types.dedup();
        let held: std::collections::HashSet<(&str, u32)> =
            leases.iter().map(|l| (l.entity_type.as_str(), l.shard)).collect();
        let unowned = types
            .iter()
            .flat_map(|t| (0..shards).map(move |s| (t.clone(), s)))
            .filter(|(t, s)| !held.contains(&(t.as_str(), *s)))
            .collect();
        let releasing = leases.iter().filter(|l| l.state == LeaseState::Releasing).cloned().collect();
        let leader = singletons.iter().find(|s| s.name == "leader").map(|s| s.owner.clone());
        Ok(Self {
            bucket: store.bucket().to_owned(),
            lease_ttl_ms: store.ttl().as_millis() as u64,
            members,
            leader,
            singletons,
            shards,
            leases,
            unowned,
            releasing,
        })
    }

    /// Leases per member, for a summary.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut m: std::collections::BTreeMap<String, usize> =
            self.members.iter().map(|m| (m.node_id.clone(), 0)).collect();
        for l in &self.leases {
            *m.entry(l.owner.clone()).or_default() += 1;
        }
        m.into_iter().collect()
    }

    /// The holder of one shard lease.
    pub fn owner(&self, entity_type: &str, shard: u32) -> Option<&ShardLease> {
        self.leases.iter().find(|l| l.entity_type == entity_type && l.shard == shard)
    }
}

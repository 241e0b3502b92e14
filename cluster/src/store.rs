//! The cluster's JetStream KV bucket, `{PREFIX}_CLUSTER`: one bucket whose
//! entries expire `ttl` after their last write (the bucket's `max_age`), so a
//! member that stops heartbeating and a lease that stops being renewed both
//! vanish on the server without anybody deleting them. Keys:
//!
//! - `members/{node}` → [`MemberInfo`] (heartbeat),
//! - `shards/{type}/{shard}` → [`LeaseValue`] (shard lease),
//! - `singleton/{name}` → [`LeaseValue`] (singleton lease).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// A member's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The node id.
    pub node_id: String,
    /// Its HTTP address, if it serves HTTP.
    #[serde(default)]
    pub http: Option<String>,
    /// The cluster's shard count as this node sees it (fixed for a cluster's life).
    pub shards: u32,
    /// The entity types it hosts.
    #[serde(default)]
    pub entity_types: Vec<String>,
    /// When it started, ms since the Unix epoch.
    pub started_ms: i64,
    /// When it wrote this heartbeat, ms since the Unix epoch.
    pub heartbeat_ms: i64,
    /// Leaving: it hands its shards off and takes no new ones.
    #[serde(default)]
    pub draining: bool,
    /// Leases it holds.
    #[serde(default)]
    pub leases: usize,
    /// Its roles (`entities`, `functions`; empty from nodes before roles: both).
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The state of a held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Serving.
    Owned,
    /// Handing off: draining in-flight work, about to release.
    Releasing,
}

/// The value of a lease key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The holder's node id.
    pub owner: String,
    /// The fencing epoch: the KV revision at which the holder created the
    /// lease. Every change of owner is a new `create`, so a new owner's epoch
    /// is always higher than any earlier owner's (0 in the instant between
    /// the create and the first renewal: read [`Entry::epoch`]).
    pub epoch: u64,
    /// Serving or handing off.
    pub state: LeaseState,
    /// When the holder acquired it, ms since the Unix epoch.
    pub since_ms: i64,
}

/// One decoded entry of the bucket.
#[derive(Debug, Clone)]
pub enum Value {
    /// `members/{node}`.
    Member(MemberInfo),
    /// `shards/...` or `singleton/...`.
    Lease(LeaseValue),
}

/// An entry as a watcher saw it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The decoded value.
    pub value: Value,
    /// The KV revision.
    pub revision: u64,
    /// When this process saw it (entries are only trusted for `ttl` after).
    pub seen: Instant,
}

impl Entry {
    /// The lease's epoch (the create revision), if this is a lease.
    pub fn epoch(&self) -> Option<u64> {
        match &self.value {
            Value::Lease(l) if l.epoch == 0 => Some(self.revision),
            Value::Lease(l) => Some(l.epoch),
            Value::Member(_) => None,
        }
    }
}

/// The key of a shard lease.
pub fn shard_key(entity_type: &str, shard: u32) -> String {
    format!("shards/{entity_type}/{shard}")
}

/// The key of a singleton lease.
pub fn singleton_key(name: &str) -> String {
    format!("singleton/{name}")
}

/// The key of a member's heartbeat.
pub fn member_key(node: &str) -> String {
    format!("members/{node}")
}

/// True when `name` can be one segment of a KV key.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The bucket.
#[derive(Clone)]
pub struct ClusterStore {
    kv: kv::Store,
    ttl: Duration,
    bucket: String,
}

fn unavailable(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

impl ClusterStore {
    /// The bucket name for a subject prefix.
    pub fn bucket_name(prefix: &str) -> String {
        format!("{}_CLUSTER", prefix.to_ascii_uppercase().replace(['.', '-'], "_"))
    }

    /// Opens (creating if needed) the bucket of `prefix`; entries live `ttl`.
    pub async fn open(js: &jetstream::Context, prefix: &str, ttl: Duration) -> Result<Self, ClusterError> {
        let bucket = Self::bucket_name(prefix);
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => {
                let info = kv.status().await.map_err(unavailable)?;
                let age = info.info.config.max_age;
                if age != ttl {
                    return Err(ClusterError::Incompatible(format!(
                        "bucket {bucket} expires entries after {age:?}, this node's lease TTL is {ttl:?}; \
                         every node of a cluster must use the same --lease-ttl-ms"
                    )));
                }
                kv
            }
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "Tessera cluster: members, shard leases, singletons".into(),
                    history: 1,
                    max_age: ttl,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(format!("cannot create KV bucket {bucket}: {e}")))?,
        };
        Ok(Self { kv, ttl, bucket })
    }

    /// Opens an existing bucket for reading (the CLI).
    pub async fn open_existing(js: &jetstream::Context, prefix: &str) -> Result<Self, ClusterError> {
        let bucket = Self::bucket_name(prefix);
        let kv = js.get_key_value(&bucket).await.map_err(|e| {
            unavailable(format!("no cluster bucket {bucket} (is a cluster running with this prefix?): {e}"))
        })?;
        let ttl = kv.status().await.map_err(unavailable)?.info.config.max_age;
        Ok(Self { kv, ttl, bucket })
    }

    /// How long entries live after their last write.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates `key` if absent (or deleted); returns the revision.
    pub async fn create(&self, key: &str, value: &LeaseValue) -> Result<Option<u64>, ClusterError> {
        match self.kv.create(key, encode(value).into()).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Writes `key` if its revision is still `revision`; returns the new one.
    pub async fn update(&self, key: &str, value: &LeaseValue, revision: u64) -> Result<u64, ClusterError> {
        match self.kv.update(key, encode(value).into(), revision).await {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(ClusterError::Conflict { key: key.to_owned(), revision })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Deletes `key` if its revision is still `revision`.
    pub async fn delete(&self, key: &str, revision: u64) -> Result<(), ClusterError> {
        self.kv.delete_expect_revision(key, Some(revision)).await.map_err(|e| {
            if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                ClusterError::Conflict { key: key.to_owned(), revision }
            } else {
                unavailable(e)
            }
        })
    }

    /// Writes a member's heartbeat.
    pub async fn heartbeat(&self, info: &MemberInfo) -> Result<(), ClusterError> {
        let body = serde_json::to_vec(info).unwrap_or_default();
        self.kv.put(member_key(&info.node_id), body.into()).await.map(|_| ()).map_err(unavailable)
    }

    /// Removes a member's heartbeat (it is leaving).
    pub async fn leave(&self, node: &str) -> Result<(), ClusterError> {
        self.kv.delete(member_key(node)).await.map_err(unavailable)
    }

    /// Every live entry now, read once (for the CLI and tests). The key
    /// listing under it may miss keys that are updated meanwhile, or name
    /// one twice (nats-server #4824; each key is read once): a reader that
    /// knows which keys to expect asks for the missing ones with
    /// [`ClusterStore::entry`], as [`crate::ClusterStatus::read`] does.
    pub async fn snapshot(&self) -> Result<Vec<Entry>, ClusterError> {
        let mut listing = self.kv.keys().await.map_err(unavailable)?;
        // The same listing race can also name a key twice.
        let mut keys = std::collections::BTreeSet::new();
        while let Some(key) = listing.next().await {
            keys.insert(key.map_err(unavailable)?);
        }
        let mut out = Vec::new();
        for key in keys {
            if let Some(e) = self.kv.entry(key).await.map_err(unavailable)?
                && let Some(e) = decode(e)
            {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The current value of one key (`None`: absent or deleted).
    pub async fn entry(&self, key: &str) -> Result<Option<Entry>, ClusterError> {
        Ok(self.kv.entry(key).await.map_err(unavailable)?.and_then(decode))
    }

    /// A watch of every key: the current value of each, then every change.
    /// `None` items are deletions (the key).
    pub async fn watch(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<Change, ClusterError>> + use<>, ClusterError> {
        let w = self.kv.watch_with_history(">").await.map_err(unavailable)?;
        Ok(w.map(|e| {
            let e = e.map_err(unavailable)?;
            Ok(match e.operation {
                kv::Operation::Put => match decode(e.clone()) {
                    Some(entry) => Change::Put(entry),
                    None => Change::Delete(e.key),
                },
                kv::Operation::Delete | kv::Operation::Purge => Change::Delete(e.key),
            })
        }))
    }
}

/// One change a watcher saw.
#[derive(Debug, Clone)]
pub enum Change {
    /// A key was written.
    Put(Entry),
    /// A key was deleted.
    Delete(String),
}

fn encode(v: &LeaseValue) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode(e: kv::Entry) -> Option<Entry> {
    if e.operation != kv::Operation::Put {
        return None;
    }
    let value = if e.key.starts_with("members/") {
        Value::Member(serde_json::from_slice(&e.value).ok()?)
    } else {
        Value::Lease(serde_json::from_slice(&e.value).ok()?)
    };
    // Seen when the server stored it (same-host clocks in tests; NTP in
    // production), so entries an initial watch replays are not trusted anew.
    let age_ns = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        as i128
        - e.created.unix_timestamp_nanos())
    .clamp(0, 3_600_000_000_000);
    let now = Instant::now();
    let seen = now.checked_sub(Duration::from_nanos(age_ns as u64)).unwrap_or(now);
    Some(Entry { key: e.key, value, revision: e.revision, seen })
}

//! Helpers of the cluster and autoscaler tests: node processes on loopback
//! sharing a real nats-server and a real Cassandra 5, a keyed load that
//! retries like a careful client, and the journal audit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_cluster::{ClusterStatus, ClusterStore};

use super::*;

pub const SHARDS: u32 = 16;
pub const TTL_MS: u64 = 3000;
pub const CAP: usize = 2;

pub fn migrate(url: &str) {
    let out = std::process::Command::new(test_node_bin())
        .args(["journal", "migrate", "--scylla", url])
        .output()
        .expect("run migrate");
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct Cluster {
    pub prefix: String,
    pub journal: String,
    pub dir: tempfile::TempDir,
    pub store: ClusterStore,
    /// Entity types the nodes serve (leases per shard).
    pub entity_types: usize,
}

impl Cluster {
    pub async fn new() -> Self {
        Self::on_nats(&nats_url()).await
    }

    /// A cluster whose bucket is on the NATS server at `nats`.
    pub async fn on_nats(nats: &str) -> Self {
        let prefix = unique_prefix();
        let journal = format!("{}/{}", scylla_server(), unique_keyspace());
        let j = journal.clone();
        tokio::task::spawn_blocking(move || migrate(&j)).await.expect("migrate");
        let client = async_nats::connect(nats).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let store = ClusterStore::open(&js, &prefix, Duration::from_millis(TTL_MS)).await.expect("bucket");
        Self { prefix, journal, dir: tempfile::tempdir().expect("tempdir"), store, entity_types: 2 }
    }

    pub async fn start(&self, id: &str, nats: &str, extra: &[&str]) -> NodeProcess {
        self.start_with_env(id, nats, extra, &[]).await
    }

    pub async fn start_with_env(&self, id: &str, nats: &str, extra: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let dir = self.dir.path().join(id);
        let (shards, ttl, cap) = (SHARDS.to_string(), TTL_MS.to_string(), CAP.to_string());
        let mut args = vec![
            "serve",
            "--data-dir",
            dir.to_str().unwrap_or_default(),
            "--http",
            "127.0.0.1:0",
            "--nats",
            nats,
            "--nats-prefix",
            &self.prefix,
            "--journal",
            &self.journal,
            "--shards",
            &shards,
            "--node-id",
            id,
            "--lease-ttl-ms",
            &ttl,
            "--rebalance-max-moves",
            &cap,
        ];
        args.extend_from_slice(extra);
        NodeProcess::start_command(&args, env).await.expect("node starts")
    }

    pub async fn status(&self) -> ClusterStatus {
        ClusterStatus::read(&self.store).await.expect("status")
    }

    /// Leases per live node (only nodes in `nodes`), and how many are not held by them.
    pub async fn spread(&self, nodes: &[&str]) -> (BTreeMap<String, usize>, usize) {
        let st = self.status().await;
        let mut m: BTreeMap<String, usize> = nodes.iter().map(|n| ((*n).to_owned(), 0)).collect();
        let mut other = 0;
        for l in &st.leases {
            match m.get_mut(&l.owner) {
                Some(c) if l.state == tessera_cluster::LeaseState::Owned => *c += 1,
                _ => other += 1,
            }
        }
        let total = SHARDS as usize * self.entity_types;
        (m, other + total - st.leases.len())
    }

    /// Waits until `nodes` hold every shard, evenly; returns how long it took.
    pub async fn wait_even(&self, nodes: &[&str], within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let (m, missing) = self.spread(nodes).await;
            let (lo, hi) = (m.values().min().copied().unwrap_or(0), m.values().max().copied().unwrap_or(0));
            if missing == 0 && hi - lo <= 1 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "not balanced over {nodes:?} within {within:?}: {m:?}, {missing} elsewhere"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the load saw.
#[derive(Default)]
pub struct Load {
    /// Acknowledged: key → (entity, seq).
    pub acked: std::sync::Mutex<HashMap<String, (String, u64)>>,
    /// Attempts answered with an error (each retried with the same key).
    pub retried: AtomicU64,
    /// Commands given up (no success within the deadline).
    pub failed: AtomicU64,
}

/// Entities the load spreads over: enough that a retry (after a 5 s client
/// timeout when the owner died mid-request) is still inside each entity's
/// idempotency window (the last 64 commands by default).
pub const ENTITIES: usize = 200;

/// Workers sending `flaky batch {n:1}` with idempotency keys to `targets`
/// (round robin), retrying errors with the same key for up to 20 s.
pub fn spawn_load(
    targets: Arc<std::sync::Mutex<Vec<String>>>,
    load: Arc<Load>,
    stop: Arc<AtomicBool>,
    worker: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = client();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let entity = format!("e{}", (worker * 7 + i) % ENTITIES);
            let key = format!("w{worker}-{i}");
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut attempt = 0usize;
            loop {
                let base = {
                    let t = targets.lock().unwrap_or_else(|p| p.into_inner());
                    t[(i + attempt) % t.len()].clone()
                };
                attempt += 1;
                let r = client
                    .post(format!("{base}/v1/entities/flaky/{entity}/batch"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", &key)
                    .body(r#"{"n":1}"#)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if let Ok(resp) = r
                    && resp.status().as_u16() == 200
                {
                    let seq = resp
                        .headers()
                        .get("tessera-seq")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    load.acked.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (entity, seq));
                    break;
                }
                load.retried.fetch_add(1, Ordering::Relaxed);
                if Instant::now() > deadline {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
}

/// Every event of a `flaky` entity, as JSON.
pub async fn all_events(base: &str, entity: &str) -> Vec<Value> {
    let events = tessera_test_support::http::all_events(base, "flaky", entity).await;
    events.into_iter().map(|e| serde_json::to_value(e).expect("JSON")).collect()
}

/// Every acknowledged command's event is in the journal exactly once, seqs
/// are 1..=n, and along seq the lease epoch never goes back (no node
/// committed under a lease after a newer owner did).
pub async fn verify_journal(base: &str, load: &Load) -> usize {
    let acked = load.acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut checked = 0;
    for e in 0..ENTITIES {
        let entity = format!("e{e}");
        let events = all_events(base, &entity).await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut last_epoch = 0u64;
        let mut epoch_node: HashMap<u64, String> = HashMap::new();
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(ev["seq"].as_u64(), Some(i as u64 + 1), "{entity}: seqs are contiguous");
            *seen.entry(ev["invocation_id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
            let epoch = ev["epoch"].as_u64().expect("cluster events carry their lease epoch");
            let node = ev["node"].as_str().unwrap_or_default().to_owned();
            assert!(epoch >= last_epoch, "{entity} seq {}: epoch {epoch} after {last_epoch}", i + 1);
            last_epoch = epoch;
            let owner = epoch_node.entry(epoch).or_insert_with(|| node.clone());
            assert_eq!(owner, &node, "{entity}: one node per epoch");
        }
        for (key, (ent, seq)) in acked.iter().filter(|(_, (ent, _))| *ent == entity) {
            let dups: Vec<String> = events
                .iter()
                .filter(|e| e["invocation_id"] == json!(key))
                .map(|e| format!("seq {} node {} epoch {} at {}", e["seq"], e["node"], e["epoch"], e["timestamp_ms"]))
                .collect();
            assert_eq!(
                seen.get(key),
                Some(&1),
                "acknowledged {key} on {ent} (seq {seq}) is in the journal once: {dups:?}, retried {}",
                load.retried.load(Ordering::Relaxed)
            );
            checked += 1;
        }
        assert_eq!(seen.values().sum::<usize>(), events.len());
        assert!(seen.keys().all(|k| acked.contains_key(k)), "{entity}: every journaled command was acknowledged");
    }
    checked
}

pub fn report(name: &str, value: Value) {
    eprintln!("CLUSTER-REPORT {name} {value}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cluster-report");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.json")), serde_json::to_vec_pretty(&value).unwrap_or_default());
}

/// A TCP proxy in front of NATS that the test can cut.
pub struct Proxy {
    pub addr: String,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("nats://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("nats://{}", listener.local_addr().expect("addr"));
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let up = upstream.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(up).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                t.lock().unwrap_or_else(|p| p.into_inner()).push(h);
            }
        });
        Self { addr, tasks, accept }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.accept.abort();
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

/// Waits until `node` holds the lease of `entity_type`'s `shard`.
pub async fn wait_owner(c: &Cluster, entity_type: &str, shard: u32, node: &str, within: Duration) {
    let started = Instant::now();
    while c.status().await.owner(entity_type, shard).is_none_or(|l| l.owner != node) {
        assert!(started.elapsed() < within, "{node} did not take {entity_type}/{shard} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a signal (`STOP`, `CONT`, `TERM`, ...) to a node process.
pub fn signal(node: &NodeProcess, sig: &str) {
    node.signal(sig);
}

pub async fn members(c: &Cluster) -> Vec<String> {
    c.status().await.members.iter().filter(|m| !m.draining).map(|m| m.node_id.clone()).collect()
}

/// Callers of `test.sleep {ms: 300}` (user-function concurrency) until stopped.
pub fn spawn_function_load(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = client();
        while !stop.load(Ordering::Relaxed) {
            let _ = client
                .post(format!("{base}/v1/functions/test.sleep"))
                .header("content-type", "application/json")
                .body(r#"{"ms":300}"#)
                .send()
                .await;
        }
    })
}

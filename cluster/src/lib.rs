//! Tessera's cluster logic, independent of entities and the runtime. Today it
//! holds the shard [`allocation`] strategy (least-shard, capped moves per
//! round), a pure function every node can evaluate; membership, leases and
//! the singleton (NATS JetStream KV) come with the cluster issue.
//!
//! ```
//! use tessera_cluster::allocation::plan;
//! let owners = vec![Some("a".to_string()); 8];
//! let moves = plan(&owners, &["a".into(), "b".into()], 2);
//! assert_eq!(moves.len(), 2); // b takes shards gradually
//! ```

pub mod allocation;

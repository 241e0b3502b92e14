//! The Tessera node: shard actors hosting entities as virtual actors over a
//! [`Journal`](tessera_journal::Journal), stateless functions, the HTTP
//! ingress, Prometheus metrics, and the CLI every node binary shares.
//!
//! ```no_run
//! use tessera_runtime::{Invocation, NodeBuilder, NodeConfig};
//! # async fn f(registry: tessera_entities::Registry) -> anyhow::Result<()> {
//! let node = NodeBuilder::new(registry)
//!     .config(NodeConfig::default().with(|c| c.journal.data_dir = "data".into()))
//!     .build()
//!     .await?;
//! let reply = node.invoke(Invocation::json("stock", "store-1:sku-1", "restock", &serde_json::json!({"qty": 5}))).await?;
//! println!("seq {}", reply.seq);
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod autoscaler;
pub mod cli;
pub mod client;
pub mod config;
pub mod connect;
pub mod contract;
pub mod envelope;
mod error;
pub mod executor;
pub mod flow;
pub mod http;
pub mod inspect;
pub mod metrics;
pub mod nats;
mod node;
pub mod projection;
pub mod results;
mod server;
mod shard;
pub mod telemetry;
pub mod wire;

pub use config::{ClusterMode, JournalKind, NodeConfig};

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
pub use error::InvokeError;
pub use node::{
    AsyncCall, AsyncDecision, CallQueue, DELETE_COMMAND, DeleteReason, Forwarder, Invocation, LocalQueue,
    LocalQueueRunner, Node, Outbox, QueuedCall, QueuedCommand, ReadFrom,
};
pub use server::{JournalLayer, NodeBuilder, NodeError, ResultsLayer, Server};
pub use shard::{CommandReply, Replay, StateView, replay};

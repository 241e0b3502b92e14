//! The Tessera node: shard actors hosting entities as virtual actors over a
//! [`Journal`](tessera_journal::Journal), stateless functions, the HTTP
//! ingress, Prometheus metrics, and the CLI every node binary shares.
//!
//! ```no_run
//! use tessera_runtime::{Invocation, NodeBuilder, NodeConfig};
//! # async fn f(registry: tessera_entities::Registry) -> anyhow::Result<()> {
//! let node = NodeBuilder::new(registry)
//!     .config(NodeConfig { data_dir: "data".into(), http: Some("127.0.0.1:8080".into()), ..NodeConfig::default() })
//!     .build()
//!     .await?;
//! let reply = node.invoke(Invocation::json("stock", "store-1:sku-1", "restock", &serde_json::json!({"qty": 5}))).await?;
//! println!("seq {}", reply.seq);
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod envelope;
mod error;
pub mod executor;
pub mod http;
pub mod inspect;
pub mod metrics;
pub mod nats;
mod node;
pub mod results;
mod shard;

pub use config::{JournalKind, NodeConfig};
pub use error::InvokeError;
pub use node::{AsyncCall, AsyncDecision, Invocation, Node, NodeBuilder, NodeError};
pub use shard::{CommandReply, StateView};

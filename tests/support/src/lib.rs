//! What every integration test shares, in one place:
//!
//! - [`servers`]: the real `nats-server` and Cassandra the tests need —
//!   `TESSERA_NATS_URL` / `TESSERA_SCYLLA_URL` when set (CI's test script
//!   starts them), otherwise started once by the project's own scripts —
//!   unique subject prefixes and keyspaces, migrated keyspaces;
//! - with the `node` feature: [`node`] (an in-process node over any
//!   registry), [`process`] (a node binary as a child process) and
//!   [`http`] (requests and the typed bodies they answer).
//!
//! ```no_run
//! let nats = tessera_test_support::servers::nats_url();
//! let ks = tessera_test_support::servers::unique_keyspace();
//! assert!(nats.starts_with("nats://") && !ks.contains('-'));
//! ```

#[cfg(feature = "node")]
pub mod http;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod process;
pub mod proxy;
#[cfg(feature = "node")]
pub mod report;
pub mod servers;

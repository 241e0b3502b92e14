//! The command line every node binary shares: `serve`, `send`, `call`,
//! `journal ...`, `cluster ...` and `bench`. The `tessera` binary runs it with an empty
//! registry; an application binary (e.g. `inventory`) runs it with its own,
//! so `journal state` can replay through the real entity types.

mod autoscaler;
mod cluster;
mod journal;
mod result_store;
mod send;
mod serve;

use clap::Subcommand;
use tessera_entities::Registry;

pub use autoscaler::{AutoscalerCmd, SimulateArgs};
pub use cluster::{ClusterCmd, ClusterConn};
pub use journal::{JournalCmd, Source};
pub use result_store::ResultStoreArgs;
pub use send::{CallArgs, SendArgs};
pub use serve::ServeArgs;

/// The shared subcommands. Flatten them into an application's own CLI.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (embedded journal by default) serving HTTP.
    Serve(Box<ServeArgs>),
    /// Send a command to an entity over HTTP.
    Send(SendArgs),
    /// Call a stateless function over HTTP.
    Call(CallArgs),
    /// Inspect journals: on a data dir (node stopped) or through a node's HTTP address.
    #[command(subcommand)]
    Journal(JournalCmd),
    /// Run the benchmarks and write their figures as JSON.
    Bench(crate::bench::BenchArgs),
    /// Persist the results nodes publish on NATS and serve them over HTTP.
    ResultStore(ResultStoreArgs),
    /// Inspect a cluster (NATS KV): `status`, `locate TYPE ID`.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The autoscaler's policy offline: `simulate --trace FILE...`.
    #[command(subcommand)]
    Autoscaler(AutoscalerCmd),
}

/// Runs a shared subcommand.
pub async fn run(cmd: Command, registry: Registry) -> anyhow::Result<()> {
    run_with(cmd, registry, None).await
}

/// Runs a shared subcommand; `serve` wraps its journal in `layer` (e.g. a
/// test node that delays appends on demand).
pub async fn run_with(cmd: Command, registry: Registry, layer: Option<crate::JournalLayer>) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(a) => serve::run(*a, registry, layer).await,
        Command::Send(a) => send::send(a).await,
        Command::Call(a) => send::call(a).await,
        Command::Journal(c) => journal::run(c, registry).await,
        Command::Bench(a) => crate::bench::run(a).await,
        Command::ResultStore(a) => result_store::run(a).await,
        Command::Cluster(c) => cluster::run(c).await,
        Command::Autoscaler(c) => autoscaler::run(c),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `info` for Tessera,
/// `warn` for the storage engine).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

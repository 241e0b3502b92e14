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
    /// Run the benchmarks and write their figures as JSON (runs the
    /// `tessera-bench` binary next to this one; `tessera bench --help`).
    Bench(BenchFront),
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
    run_with(cmd, registry, Layers::default()).await
}

/// `bench ARGS...`: hands its arguments to `tessera-bench` (the benchmarks
/// are their own crate, so that a node ships none of them).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchFront {
    /// Arguments of `tessera-bench` (`--out`, `--only`, `--quick`, …).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl BenchFront {
    fn run(&self) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let bench = exe.with_file_name(format!("tessera-bench{}", std::env::consts::EXE_SUFFIX));
        anyhow::ensure!(
            bench.exists(),
            "{} not found: build it with `cargo build --release -p tessera-bench` (or run `cargo run --release -p tessera-bench -- ...`)",
            bench.display()
        );
        let status = std::process::Command::new(&bench).args(&self.args).status()?;
        anyhow::ensure!(status.success(), "tessera-bench failed: {status}");
        Ok(())
    }
}

/// Layers `serve` wraps around the stores it opens (e.g. a test node that
/// delays appends or crashes after storing a result, on demand).
#[derive(Clone, Default)]
pub struct Layers {
    /// Around the journal.
    pub journal: Option<crate::JournalLayer>,
    /// Around the result store.
    pub results: Option<crate::ResultsLayer>,
}

/// Runs a shared subcommand; `serve` wraps its stores in `layers`.
pub async fn run_with(cmd: Command, registry: Registry, layers: Layers) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(a) => serve::run(*a, registry, layers).await,
        Command::Send(a) => send::send(a).await,
        Command::Call(a) => send::call(a).await,
        Command::Journal(c) => journal::run(c, registry).await,
        Command::Bench(a) => a.run(),
        Command::ResultStore(a) => result_store::run(a).await,
        Command::Cluster(c) => cluster::run(c).await,
        Command::Autoscaler(c) => autoscaler::run(c),
    }
}

type FilterHandle = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Logs to stderr, filtered by `RUST_LOG` (default: `info` for Tessera,
/// `warn` for the storage engine; `serve` applies `observability.log`
/// when `RUST_LOG` is not set).
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = LOG_FILTER.set(handle);
    }
}

/// Applies a log filter, unless `RUST_LOG` decides.
pub(crate) fn set_log_filter(directives: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    match (LOG_FILTER.get(), tracing_subscriber::EnvFilter::try_new(directives)) {
        (Some(h), Ok(f)) => {
            let _ = h.reload(f);
        }
        (_, Err(e)) => {
            tracing::warn!(error = %e, directives, "observability.log is not a valid filter; kept the default")
        }
        (None, Ok(_)) => {}
    }
}

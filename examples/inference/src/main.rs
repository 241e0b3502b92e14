//! The `inference` binary: the shared node CLI serving the `embed` function,
//! plus `demo` and `bench-embed`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stateless inference on Tessera: sentence embeddings, sync and async.
#[derive(Parser)]
#[command(name = "inference", version, about)]
struct Cli {
    /// Directory with the all-MiniLM-L6-v2 files (default: where setup.sh installs them, or Python's site-packages).
    #[arg(long, global = true, env = "TESSERA_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Embed a small corpus through a node and answer a nearest-neighbour query.
    Demo(inference::demo::DemoArgs),
    /// Embeddings/s through the runtime (HTTP, NATS; batching on and off) vs a raw candle loop.
    BenchEmbed(inference::bench::EmbedBenchArgs),
    #[command(flatten)]
    Node(Box<tessera_runtime::cli::Command>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tessera_runtime::cli::init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Demo(args) => inference::demo::run(args, cli.model_dir).await,
        Cmd::BenchEmbed(args) => inference::bench::run(args, cli.model_dir).await,
        Cmd::Node(cmd) => {
            let registry = match &*cmd {
                tessera_runtime::cli::Command::Serve(_) => inference::registry(cli.model_dir.as_deref())?,
                _ => tessera_entities::Registry::default(),
            };
            tessera_runtime::cli::run(*cmd, registry).await
        }
    }
}

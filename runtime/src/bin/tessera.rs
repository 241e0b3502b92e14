//! The `tessera` command: the shared node CLI with no application entities
//! (inspect any journal's raw events, send commands, run benchmarks).

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tessera: stateful functions on an event-sourced journal.
#[derive(Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: tessera_runtime::cli::Command,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tessera_runtime::cli::init_tracing();
    let cli = Cli::parse();
    tessera_runtime::cli::run(cli.command, tessera_entities::Registry::default()).await
}

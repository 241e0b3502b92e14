//! The `inventory` binary: the shared node CLI with the inventory entities,
//! plus `demo`, `simulate` and `bridge`.

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Tessera retail inventory case study.
#[derive(Parser)]
#[command(name = "inventory", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start an embedded node on a fresh data dir, drive a concurrent workload, check it, print a summary.
    Demo(inventory::demo::DemoArgs),
    /// Drive regions (running ones, or started here) with shops, warehouses and customers; check and report.
    Simulate(Box<inventory::simulate::SimulateArgs>),
    /// Stream one region's stock and product events (its JetStream events stream) into a central cluster's view.
    Bridge(inventory::central::BridgeArgs),
    #[command(flatten)]
    Node(Box<tessera_runtime::cli::Command>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tessera_runtime::cli::init_tracing();
    match Cli::parse().command {
        Cmd::Demo(args) => inventory::demo::run(args).await,
        Cmd::Simulate(args) => inventory::simulate::run(*args).await,
        Cmd::Bridge(args) => inventory::central::run_bridge_command(args).await,
        Cmd::Node(cmd) => tessera_runtime::cli::run(*cmd, inventory::registry()?).await,
    }
}

//! A node binary for the process-level tests: the shared CLI with the
//! inventory entities and the `flaky` test entity.

use clap::Parser;

/// Test node.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: tessera_runtime::cli::Command,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tessera_runtime::cli::init_tracing();
    tessera_runtime::cli::run(Cli::parse().command, tessera_tests::registry()).await
}

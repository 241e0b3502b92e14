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
    // Fault tests: appends wait while this file exists (see `StallingJournal`).
    let layer = std::env::var_os("TESSERA_TEST_STALL_FILE").map(|gate| {
        let gate = std::path::PathBuf::from(gate);
        let layer: tessera_runtime::JournalLayer = std::sync::Arc::new(move |inner| {
            std::sync::Arc::new(tessera_tests::StallingJournal::new(inner, gate.clone()))
                as std::sync::Arc<dyn tessera_journal::Journal>
        });
        layer
    });
    tessera_runtime::cli::run_with(Cli::parse().command, tessera_tests::registry(), layer).await
}

//! A node binary for the process-level tests: the shared CLI with the
//! inventory entities and the `flaky` test entity (or, with
//! `TESSERA_TEST_BANK`, the bank's accounts, transfers and alarms).

use clap::Parser;

// The allocator the shipped binaries (`tessera`, `inventory`) use, so the
// soak measures the memory users would see.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Test node.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: tessera_runtime::cli::Command,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tessera_runtime::cli::init_tracing();
    let mut layers = tessera_runtime::cli::Layers::default();
    // Fault tests: appends wait while this file exists (see `StallingJournal`).
    if let Some(gate) = std::env::var_os("TESSERA_TEST_STALL_FILE") {
        let gate = std::path::PathBuf::from(gate);
        layers.journal = Some(std::sync::Arc::new(move |inner| {
            std::sync::Arc::new(tessera_tests::StallingJournal::new(inner, gate.clone()))
                as std::sync::Arc<dyn tessera_journal::Journal>
        }));
    }
    // Fault tests: the process aborts right after it stored a final result,
    // before the async call is acknowledged (see `AbortAfterFinalResult`).
    if std::env::var_os("TESSERA_FAULT_ABORT_BEFORE_ACK").is_some() {
        layers.results = Some(std::sync::Arc::new(|inner| {
            std::sync::Arc::new(tessera_tests::AbortAfterFinalResult(inner))
                as std::sync::Arc<dyn tessera_runtime::results::ResultStore>
        }));
    }
    // Projection tests: run the exactly-once event count (`EventCount`).
    if std::env::var_os("TESSERA_TEST_PROJECTIONS").is_some() {
        layers.projections = tessera_tests::projections();
    }
    // Message and timer tests: the bank's entities instead of the inventory's.
    let registry = match std::env::var_os("TESSERA_TEST_BANK") {
        Some(_) => tessera_tests::bank_registry(),
        None => tessera_tests::registry(),
    };
    tessera_runtime::cli::run_with(Cli::parse().command, registry, layers).await
}

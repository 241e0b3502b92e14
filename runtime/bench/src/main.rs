//! `tessera-bench`: runs the benchmarks and writes their figures as JSON
//! (`tessera bench ARGS` runs this binary when it sits next to `tessera`).

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tessera's benchmarks, each beside a baseline in the same run.
#[derive(Parser)]
#[command(name = "tessera-bench", version, about)]
struct Cli {
    #[command(flatten)]
    args: tessera_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tessera_runtime::cli::init_tracing();
    tessera_bench::run(Cli::parse().args).await
}

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

#[cfg(not(tokio_unstable))]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tessera_runtime::cli::init_tracing();
    tessera_bench::run(Cli::parse().args).await
}

/// With `--cfg tokio_unstable`: the same, on a runtime that times every
/// task's polls and waits (`task_stats`).
#[cfg(tokio_unstable)]
fn main() -> anyhow::Result<()> {
    let result = tessera_bench::task_stats::runtime()?.block_on(async {
        tessera_runtime::cli::init_tracing();
        tessera_bench::run(Cli::parse().args).await
    });
    tessera_bench::task_stats::write()?;
    result
}

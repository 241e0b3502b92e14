//! `soak`: the long soak of one node process (see `tessera_tests::soak`):
//! `cargo run --release -p tessera-tests --bin soak -- --duration 30m`.
//! Writes `soak.json` and `soak.svg` to `--out`; exits 1 unless memory and
//! open files stayed flat and every answer was an expected one.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Runs one node under mixed load with passivation churn and samples it.
#[derive(Debug, Parser)]
struct Args {
    /// How long the load runs (e.g. `30m`).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How often to sample the node.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Distinct stock entities.
    #[arg(long, default_value_t = 50_000)]
    entities: usize,
    /// The node's active-entity budget.
    #[arg(long, default_value_t = 5_000)]
    max_active: usize,
    /// Where the results go.
    #[arg(long, default_value = "bench-results/soak")]
    out: PathBuf,
    /// Run the node under this program (e.g. `heaptrack`, whose profile
    /// lands in the working directory).
    #[arg(long)]
    node_wrapper: Option<String>,
    /// More flags for the node (after `--`), e.g. `-- --journal-memtable-bytes 4194304`.
    #[arg(last = true)]
    node_args: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let o = tessera_tests::soak::SoakOptions {
        node_bin: tessera_tests::soak::sibling("tessera-test-node"),
        duration: a.duration,
        sample_every: a.sample_every,
        clients: a.clients,
        entities: a.entities,
        max_active: a.max_active,
        out: a.out.clone(),
        node_args: a.node_args.clone(),
        node_wrapper: a.node_wrapper.clone(),
    };
    anyhow::ensure!(o.node_bin.exists(), "{} not found: build it (cargo build -p tessera-tests)", o.node_bin.display());
    eprintln!(
        "soak: {:?} of load on {} ({} clients); samples every {:?}",
        o.duration,
        o.node_bin.display(),
        o.clients,
        o.sample_every
    );
    let r = tessera_tests::soak::run(&o).await?;
    eprintln!("soak: {:.0} s, {} requests, {}", r.seconds, r.requests, r.summary());
    eprintln!("results in {}", a.out.display());
    anyhow::ensure!(r.clean, "unexpected answers: {:?}", r.unexpected);
    anyhow::ensure!(r.flat, "memory or open files grew");
    Ok(())
}

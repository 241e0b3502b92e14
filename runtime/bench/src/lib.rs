//! The benchmarks (`tessera-bench`, also reached as `tessera bench`): the
//! runtime's throughput, latency, replay speed and memory per entity, each
//! measured next to a baseline in the same process (raw fjall writes, raw
//! ractor calls, raw journal reads, raw ractor actors, raw driver inserts,
//! raw NATS echo), so the ratio means something on a noisy machine.
//! Figures are written as JSON, one file per benchmark; latency summaries
//! come from hdrhistogram. Kept out of the runtime library: a node ships
//! none of this.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let (took, latency) = tessera_bench::concurrently(1000, 8, |_| async { Ok(()) }).await?;
//! println!("{took:?} {latency}");
//! # Ok(()) }
//! ```

mod counter;
mod hot;
mod http;
mod messages;
mod nats;
mod projection;
mod runs;
mod scylla;
#[cfg(tokio_unstable)]
pub mod task_stats;

use std::path::PathBuf;

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

pub use counter::{BenchCounter, registry};

/// Flags of `bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Directory for the JSON results.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Run only these benchmarks (durable, hot, http, memory, replay, entities, projection, messages, nats, scylla). Default: all.
    #[arg(long)]
    pub only: Vec<String>,
    /// Small sizes: checks that everything runs, figures mean little.
    #[arg(long)]
    pub quick: bool,
    /// Where temporary journals go (default: the system temp dir).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Seconds of each load of the `http` benchmark (default 60, the tail
    /// aim's run length; 2 with `--quick`).
    #[arg(long)]
    pub http_seconds: Option<u64>,
    /// NATS server for the `nats` benchmark (default: `TESSERA_NATS_URL`; without one it is skipped).
    #[arg(long, env = "TESSERA_NATS_URL")]
    pub nats: Option<String>,
    /// Cassandra/Scylla server for the `scylla` benchmark, `scylla://[user:password@]host:port`
    /// (default: `TESSERA_SCYLLA_URL`; without one it is skipped).
    #[arg(long, env = "TESSERA_SCYLLA_URL")]
    pub scylla: Option<String>,
    /// Internal: run one memory probe (`entities` or `actors`) and print its JSON.
    #[arg(long, hide = true)]
    pub probe: Option<String>,
    /// Internal: size of the probe.
    #[arg(long, hide = true, default_value_t = 0)]
    pub probe_count: u64,
    /// Internal: concurrent callers of the probe.
    #[arg(long, hide = true, default_value_t = 256)]
    pub probe_callers: u64,
}

/// Sizes of one bench run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Commands in the throughput runs.
    pub commands: u64,
    /// Distinct entities in the throughput runs.
    pub entities: u64,
    /// Concurrent in-process callers.
    pub callers: u64,
    /// Events replayed.
    pub replay_events: u64,
    /// Entity counts measured for memory.
    pub resident: [u64; 2],
    /// Raw ractor actors spawned for the memory baseline.
    pub baseline_actors: u64,
}

impl Sizes {
    /// Full sizes (the figures in BENCHMARKS.md).
    pub fn full() -> Self {
        Self {
            commands: 400_000,
            entities: 10_000,
            callers: 256,
            replay_events: 1_000_000,
            resident: [100_000, 1_000_000],
            baseline_actors: 100_000,
        }
    }
    /// Smoke-test sizes.
    pub fn quick() -> Self {
        Self {
            commands: 4_000,
            entities: 500,
            callers: 32,
            replay_events: 5_000,
            resident: [1_000, 5_000],
            baseline_actors: 1_000,
        }
    }
}

/// Latency summary in microseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
    })
}

/// A histogram of microseconds up to ten minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// Runs `total` operations from `callers` concurrent tasks (task `c` runs
/// `f(c)`, `f(c + callers)`, …); returns the elapsed time and the latency
/// summary.
pub async fn concurrently<F, Fut>(total: u64, callers: u64, f: F) -> anyhow::Result<(std::time::Duration, Value)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let f = std::sync::Arc::new(f);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut i = c;
            while i < total {
                let t = std::time::Instant::now();
                f(i).await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
                i += callers;
            }
            anyhow::Ok(h)
        }));
    }
    let mut h = histogram();
    for t in tasks {
        h.add(t.await??)?;
    }
    Ok((started.elapsed(), summary(&h)))
}

/// Resident set size of this process in bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs the selected benchmarks and writes `OUT/NAME.json` for each.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(kind) = &args.probe {
        println!("{}", runs::run_probe(kind, args.probe_count, args.probe_callers).await?);
        return Ok(());
    }
    let sizes = if args.quick { Sizes::quick() } else { Sizes::full() };
    let scratch = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&args.out)?;
    let all = ["durable", "hot", "http", "memory", "replay", "entities", "projection", "messages", "nats", "scylla"];
    let selected: Vec<&str> = if args.only.is_empty() {
        all.to_vec()
    } else {
        all.iter().copied().filter(|n| args.only.iter().any(|o| o == n)).collect()
    };
    let machine = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "os": std::env::consts::OS,
        "quick": args.quick,
    });
    for name in selected {
        if name == "http" && !http::wrk_installed() {
            anyhow::ensure!(
                args.only.is_empty(),
                "the http benchmark needs wrk (deploy/local/bench-http.sh installs it)"
            );
            eprintln!("== bench http skipped: wrk is not installed ==");
            continue;
        }
        if (name == "nats" && args.nats.is_none()) || (name == "scylla" && args.scylla.is_none()) {
            anyhow::ensure!(args.only.is_empty(), "the {name} benchmark needs --{name} URL");
            eprintln!("== bench {name} skipped: no --{name} URL ==");
            continue;
        }
        eprintln!("== bench {name} ==");
        let mut result = match name {
            "durable" => runs::durable(sizes, &scratch).await?,
            "hot" => hot::run(sizes, &scratch).await?,
            "http" => http::run(args.http_seconds.unwrap_or(if args.quick { 2 } else { 60 }), &scratch).await?,
            "memory" => runs::in_memory(sizes).await?,
            "replay" => runs::replay(sizes, &scratch).await?,
            "projection" => projection::run(sizes, &scratch).await?,
            "messages" => messages::run(sizes, &scratch).await?,
            "nats" => nats::run(sizes, args.nats.as_deref().unwrap_or_default()).await?,
            "scylla" => scylla::run(sizes, args.scylla.as_deref().unwrap_or_default()).await?,
            _ => runs::entities(sizes).await?,
        };
        result["bench"] = json!(name);
        result["machine"] = machine.clone();
        let path = args.out.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&result)?)?;
        println!("{}", serde_json::to_string_pretty(&result)?);
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// CPU seconds (user + system) a process used, from `/proc/PID/stat`.
pub(crate) fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at `) `.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the name); 100 ticks/s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

//! The command line every node binary shares: `serve`, `send`, `call`,
//! `journal ...`, `cluster ...`, `feed tail`, `projection ...` and `bench`. The `tessera` binary runs it with an empty
//! registry; an application binary (e.g. `inventory`) runs it with its own,
//! so `journal state` can replay through the real entity types.
//!
//! May import anything: it is the outermost layer (binaries call it).

mod autoscaler;
mod cluster;
mod feed;
mod journal;
mod result_store;
mod send;
mod serve;
mod transfer;
mod verify;

use clap::Subcommand;
use tessera_entities::Registry;

pub use autoscaler::{AutoscalerCmd, SimulateArgs};
pub use cluster::{ClusterCmd, ClusterConn};
pub use feed::{FeedCmd, ProjectionCmd};
pub use journal::{JournalCmd, Source};
pub use result_store::ResultStoreArgs;
pub use send::{CallArgs, SendArgs};
pub use serve::ServeArgs;

/// The shared subcommands. Flatten them into an application's own CLI.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (embedded journal by default) serving HTTP.
    Serve(Box<ServeArgs>),
    /// Send a command to an entity over HTTP.
    Send(SendArgs),
    /// Call a stateless function over HTTP.
    Call(CallArgs),
    /// Inspect journals: on a data dir (node stopped) or through a node's HTTP address.
    #[command(subcommand)]
    Journal(JournalCmd),
    /// Run the benchmarks and write their figures as JSON (runs the
    /// `tessera-bench` binary next to this one; `tessera bench --help`).
    Bench(BenchFront),
    /// Persist the results nodes publish on NATS and serve them over HTTP.
    ResultStore(ResultStoreArgs),
    /// Inspect a cluster (NATS KV): `status`, `locate TYPE ID`.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The autoscaler's policy offline: `simulate --trace FILE...`.
    #[command(subcommand)]
    Autoscaler(AutoscalerCmd),
    /// Follow the shard feed through a node: `tail`.
    #[command(subcommand)]
    Feed(FeedCmd),
    /// Projections through a node: `list`, `status`, `rewind`, `reset`.
    #[command(subcommand)]
    Projection(ProjectionCmd),
}

/// Runs a shared subcommand.
pub async fn run(cmd: Command, registry: Registry) -> anyhow::Result<()> {
    run_with(cmd, registry, Layers::default()).await
}

/// `bench ARGS...`: hands its arguments to `tessera-bench` (the benchmarks
/// are their own crate, so that a node ships none of them).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchFront {
    /// Arguments of `tessera-bench` (`--out`, `--only`, `--quick`, …).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl BenchFront {
    fn run(&self) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let bench = exe.with_file_name(format!("tessera-bench{}", std::env::consts::EXE_SUFFIX));
        anyhow::ensure!(
            bench.exists(),
            "{} not found: build it with `cargo build --release -p tessera-bench` (or run `cargo run --release -p tessera-bench -- ...`)",
            bench.display()
        );
        let status = std::process::Command::new(&bench).args(&self.args).status()?;
        anyhow::ensure!(status.success(), "tessera-bench failed: {status}");
        Ok(())
    }
}

/// Layers `serve` wraps around the stores it opens (e.g. a test node that
/// delays appends or crashes after storing a result, on demand).
#[derive(Clone, Default)]
pub struct Layers {
    /// Around the journal.
    pub journal: Option<crate::JournalLayer>,
    /// Around the result store.
    pub results: Option<crate::ResultsLayer>,
    /// Projections the node runs.
    pub projections: Vec<std::sync::Arc<dyn crate::projection::Projection>>,
}

/// The HTTP client of the CLI's commands (and of tools that talk to a
/// node, like the inventory simulator): `TESSERA_TOKEN` (a JWT or an API
/// key) goes in `Authorization: Bearer`, and `TESSERA_HTTP_CA` names a PEM
/// certificate to trust for `https://` nodes signed by a private CA. The
/// token is never printed.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    use anyhow::Context as _;
    let mut b = reqwest::Client::builder();
    if let Ok(token) = std::env::var("TESSERA_TOKEN")
        && !token.trim().is_empty()
    {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("TESSERA_TOKEN holds characters a header cannot carry")?;
        v.set_sensitive(true);
        b = b.default_headers([(reqwest::header::AUTHORIZATION, v)].into_iter().collect());
    }
    if let Ok(ca) = std::env::var("TESSERA_HTTP_CA")
        && !ca.is_empty()
    {
        let pem = std::fs::read(&ca).with_context(|| format!("cannot read TESSERA_HTTP_CA={ca}"))?;
        for cert in
            reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("{ca}: not PEM certificates"))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().context("cannot build the HTTP client")
}

/// Runs a shared subcommand; `serve` wraps its stores in `layers`.
/// Traces still buffered are exported before it returns.
pub async fn run_with(cmd: Command, registry: Registry, layers: Layers) -> anyhow::Result<()> {
    let r = run_command(cmd, registry, layers).await;
    if crate::telemetry::enabled() {
        tokio::task::spawn_blocking(crate::telemetry::shutdown).await.ok();
    }
    r
}

async fn run_command(cmd: Command, registry: Registry, layers: Layers) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(a) => serve::run(*a, registry, layers).await,
        Command::Send(a) => send::send(a).await,
        Command::Call(a) => send::call(a).await,
        Command::Journal(c) => journal::run(c, registry).await,
        Command::Bench(a) => a.run(),
        Command::ResultStore(a) => result_store::run(a).await,
        Command::Cluster(c) => cluster::run(c).await,
        Command::Autoscaler(c) => autoscaler::run(c),
        Command::Feed(c) => feed::feed(c).await,
        Command::Projection(c) => feed::projection(c).await,
    }
}

/// The filter as a static [`tracing_subscriber::filter::Targets`] when
/// its directives name only targets and levels (no spans, no fields).
fn directives_for_targets(filter: &tracing_subscriber::EnvFilter) -> Option<tracing_subscriber::filter::Targets> {
    let text = filter.to_string();
    if text.contains(['[', '{']) {
        return None;
    }
    text.parse().ok()
}

/// Logs to stderr, filtered by `RUST_LOG`, else by the configuration's
/// `observability.log` (flag `--log`, `TESSERA_LOG`, or `[observability]
/// log` in the `--config` file), else `info` for Tessera and `warn` for
/// the storage engine; as text (ANSI colours only when stderr is a terminal
/// and `NO_COLOR` is unset) or, with `--log-format json`
/// (`TESSERA_LOG_FORMAT`, `[observability] log_format`), one JSON object
/// per line. Both are fixed when logging starts, before the command line
/// is parsed: a reloadable filter would cost a lock on every span of every
/// invocation (measured: ~15% of durable throughput at `info`).
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let directives = std::env::var("RUST_LOG").ok().or_else(|| configured("log", |o| o.log));
    let filter = directives
        .and_then(|d| tracing_subscriber::EnvFilter::try_new(d).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(crate::config::ObservabilitySection::default().log));
    let format = configured("log-format", |o| String::from(o.log_format))
        .and_then(|f| f.parse::<crate::config::LogFormat>().ok())
        .unwrap_or_default();
    // Traces over OTLP when an endpoint is configured (spans pass the same filter as logs).
    let otlp = configured("otlp-endpoint", |o| o.otlp_endpoint)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty())
        .map(|endpoint| crate::telemetry::OtlpSettings {
            endpoint,
            service_name: "tessera".into(),
            instance: flag_value("node-id").or_else(|| std::env::var("TESSERA_NODE_ID").ok()),
        });
    let otel = otlp.and_then(|s| match crate::telemetry::layer(&s) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("traces are not exported: {e}");
            None
        }
    });
    let json = matches!(format, crate::config::LogFormat::Json);
    let _ = match otel {
        // No traces: one global filter (the cheapest: spans below it are
        // never built). Directives that name only targets and levels (the
        // default's kind) use the static `Targets` filter: `EnvFilter` also
        // tracks every span's entry and exit for span directives, which cost
        // ~3% of an in-memory command's CPU even with none.
        None => {
            let targets = directives_for_targets(&filter);
            // Directives that select by span need the invocations' spans.
            crate::telemetry::log_spans(targets.is_none());
            let filter = if targets.is_some() { None } else { Some(filter) };
            let registry = tracing_subscriber::registry().with(targets).with(filter);
            let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            if json {
                registry.with(fmt.json().with_current_span(true).with_span_list(false).flatten_event(true)).try_init()
            } else {
                registry.with(fmt.with_ansi(colour_logs())).try_init()
            }
        }
        // Traces: logs keep their filter; spans at info and above go to the
        // exporter whatever the log level (not the exporter's own HTTP stack).
        Some(otel) => {
            use tracing_subscriber::Layer;
            let registry = tracing_subscriber::registry().with(otel.with_filter(crate::telemetry::span_filter()));
            let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            if json {
                let fmt = fmt.json().with_current_span(true).with_span_list(false).flatten_event(true);
                registry.with(fmt.with_filter(filter)).try_init()
            } else {
                registry.with(fmt.with_ansi(colour_logs()).with_filter(filter)).try_init()
            }
        }
    };
}

/// The value of `--{name} V` or `--{name}=V` on the command line.
fn flag_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix(&format!("--{name}")) {
        Some("") => args.get(i + 1).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_owned),
        None => None,
    })
}

/// Colours in text logs: only on a terminal, never with `NO_COLOR` set.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// An `[observability]` knob as the command line (`--{flag}`), the
/// environment (`TESSERA_{FLAG}`) and the config file set it (read ahead of
/// the real parse; anything unreadable is left to that parse to report).
fn configured(flag_name: &str, pick: impl Fn(crate::config::ObservabilitySection) -> String) -> Option<String> {
    let flag = flag_value;
    let env = format!("TESSERA_{}", flag_name.to_uppercase().replace('-', "_"));
    if let Some(v) = flag(flag_name).or_else(|| std::env::var(&env).ok()) {
        return Some(v);
    }
    let file = flag("config").or_else(|| std::env::var("TESSERA_CONFIG").ok())?;
    let layered = crate::config::Layered::from_file(std::path::Path::new(&file)).ok()?;
    let key = format!("observability.{}", flag_name.replace('-', "_"));
    layered.sources.contains_key(&key).then(|| pick(layered.config.observability))
}

#[cfg(test)]
mod tests {
    use super::directives_for_targets;
    use tracing::Level;
    use tracing_subscriber::EnvFilter;

    #[test]
    fn target_and_level_directives_become_a_static_filter() {
        let t = directives_for_targets(&EnvFilter::new("info,fjall=warn,lsm_tree=warn")).expect("targets only");
        assert!(t.would_enable("tessera_runtime::node", &Level::INFO));
        assert!(!t.would_enable("tessera_runtime::node", &Level::DEBUG));
        assert!(!t.would_enable("fjall::batch", &Level::INFO));
        assert!(t.would_enable("lsm_tree::tree", &Level::WARN));
        let t = directives_for_targets(&EnvFilter::new("warn,tessera_runtime::shard=debug")).expect("targets only");
        assert!(t.would_enable("tessera_runtime::shard::actor", &Level::DEBUG));
        assert!(!t.would_enable("tessera_runtime::node", &Level::INFO));
    }

    #[test]
    fn span_and_field_directives_keep_the_env_filter() {
        assert!(directives_for_targets(&EnvFilter::new("info,[invoke]=debug")).is_none());
        assert!(directives_for_targets(&EnvFilter::new("[invoke{entity_type=stock}]=trace")).is_none());
    }
}

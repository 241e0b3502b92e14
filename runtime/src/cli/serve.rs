//! `serve`: run a node until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use tessera_entities::Registry;

use crate::NodeBuilder;
use crate::config::{JournalKind, Layered, NodeConfig, Source};

/// The arguments of `serve`: `--config FILE`, `--print-config`, and one
/// flag per configuration knob (generated from the knob table, each with
/// its `TESSERA_*` environment variable).
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML config file (sections as in `NodeConfig`); environment and flags override it.
    pub config: Option<PathBuf>,
    /// Print the effective configuration (and where each value came from) and exit.
    pub print_config: bool,
    /// Knobs given by flag or environment: (`section.key`, raw value, source).
    pub set: Vec<(String, String, Source)>,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut a = Self::default();
        a.update_from_arg_matches(m)?;
        Ok(a)
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        if let Some(p) = m.get_one::<PathBuf>("config") {
            self.config = Some(p.clone());
        }
        self.print_config |= m.get_flag("print-config");
        for k in NodeConfig::knobs() {
            let id = k.key();
            if let Some(v) = m.get_one::<String>(&id) {
                let source = match m.value_source(&id) {
                    Some(clap::parser::ValueSource::EnvVariable) => Source::Env(k.env()),
                    _ => Source::Flag(k.flag.to_owned()),
                };
                self.set.push((id, v.clone(), source));
            }
        }
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .env("TESSERA_CONFIG")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(
                        "TOML config file ([journal], [http], ... as in NodeConfig); environment and flags override it",
                    ),
            )
            .arg(
                clap::Arg::new("print-config")
                    .long("print-config")
                    .action(clap::ArgAction::SetTrue)
                    .help("Print the effective configuration and where each value came from, then exit"),
            );
        let defaults = toml::Table::try_from(NodeConfig::default()).unwrap_or_default();
        for k in NodeConfig::knobs() {
            let mut arg = clap::Arg::new(leak(k.key()))
                .long(k.flag)
                .env(leak(k.env()))
                .value_name("VALUE")
                .help(leak(format!("{} [{}]", k.help.trim(), k.key())));
            // A boolean knob is a switch (`--insecure`), or takes `true`/`false`.
            if defaults.get(k.section).and_then(|t| t.get(k.name)).is_some_and(toml::Value::is_bool) {
                arg = arg.num_args(0..=1).default_missing_value("true");
            }
            cmd = cmd.arg(arg);
        }
        cmd
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl ServeArgs {
    /// The configuration and where each value came from: defaults, then
    /// the file, then the environment and flags.
    pub fn layered(&self) -> Result<Layered, crate::config::ConfigError> {
        let mut l = match &self.config {
            Some(p) => Layered::from_file(p)?,
            None => Layered::defaults(),
        };
        // Environment first, then flags (clap reports each knob once).
        let env = self.set.iter().filter(|(_, _, s)| matches!(s, Source::Env(_)));
        let flags = self.set.iter().filter(|(_, _, s)| !matches!(s, Source::Env(_)));
        for (key, raw, source) in env.chain(flags) {
            l.set_raw(key, raw, source.clone())?;
        }
        Ok(l)
    }

    /// The config: defaults, then the file, then these flags/variables; validated.
    pub fn to_config(&self) -> anyhow::Result<NodeConfig> {
        let c = self.layered()?.config;
        c.validate()?;
        Ok(c)
    }
}

pub(crate) async fn run(args: ServeArgs, registry: Registry, layers: super::Layers) -> anyhow::Result<()> {
    if args.print_config {
        print!("{}", args.layered()?.print());
        return Ok(());
    }
    let config = args.to_config()?;
    let data_dir = config.journal.data_dir.clone();
    let mut builder = NodeBuilder::new(registry.clone()).config(config);
    if let Some(layer) = layers.journal {
        builder = builder.journal_layer(layer);
    }
    if let Some(layer) = layers.results {
        builder = builder.results_layer(layer);
    }
    for p in layers.projections {
        builder = builder.projection(p);
    }
    let node = builder.build().await.context("starting the node")?;
    let addr = node.http_addr().map(|a| a.to_string()).unwrap_or_else(|| "-".into());
    let types: Vec<_> = registry.entities().map(|e| e.type_name()).collect();
    let functions: Vec<_> = registry.functions().map(|f| f.name()).collect();
    let nats =
        node.config().nats.url.as_deref().map(|u| format!("  nats: {}", without_credentials(u))).unwrap_or_default();
    let journal = match &node.config().journal.kind {
        JournalKind::Local => data_dir.display().to_string(),
        JournalKind::Memory => "memory".into(),
        JournalKind::Scylla(url) => without_credentials(url),
    };
    let scheme = if node.config().http.tls_cert_file.is_some() { "https" } else { "http" };
    let auth = if node.config().auth.enabled() { "  auth: on" } else { "" };
    let cluster = if node.clustered() { "  cluster: joined" } else { "" };
    let roles = node.config().cluster.roles;
    let roles = if roles == tessera_cluster::Roles::BOTH { String::new() } else { format!("  roles: {roles}") };
    eprintln!(
        "tessera node {} serving {scheme}://{addr}{nats}  journal: {journal}{cluster}{roles}{auth}  entities: {types:?}  functions: {functions:?}",
        node.node_id(),
    );
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = parent_gone() => eprintln!("the node that started this one is gone"),
    }
    eprintln!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// A server URL without the `user:password@` it may carry (for logs).
fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_owned(),
    }
}

/// Resolves when the process named by `TESSERA_PARENT_PID` (set by the
/// local process scaler for the nodes it starts) has exited; never otherwise.
async fn parent_gone() {
    let Some(pid) = std::env::var("TESSERA_PARENT_PID").ok().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) else {
        return std::future::pending().await;
    };
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    if !proc.exists() {
        return std::future::pending().await; // not Linux, or already gone at start: do not guess
    }
    while proc.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

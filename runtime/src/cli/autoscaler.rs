//! `autoscaler simulate`: the scaling policy on load traces, beside a naive
//! proportional policy and Knative's KPA, through a simple cluster model.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Deserialize;
use tessera_cluster::autoscaler::PolicyConfig;
use tessera_cluster::autoscaler::simulate::{self, ModelConfig};

/// `autoscaler` subcommands.
#[derive(Debug, Subcommand)]
pub enum AutoscalerCmd {
    /// Run the policy on traces (CSV: time_s,request_rate,service_time_ms);
    /// write a decision log, a summary and an SVG plot per trace.
    Simulate(SimulateArgs),
}

/// Flags of `autoscaler simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Trace files (the shipped ones are in cluster/traces/).
    #[arg(long = "trace", required = true, num_args = 1..)]
    pub traces: Vec<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "autoscaler-sim")]
    pub out: PathBuf,
    /// TOML with `[policy]` (PolicyConfig keys) and `[model]` (ModelConfig keys) tables.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SimConfig {
    policy: PolicyConfig,
    model: ModelConfig,
}

pub(crate) fn run(cmd: AutoscalerCmd) -> anyhow::Result<()> {
    let AutoscalerCmd::Simulate(a) = cmd;
    let cfg: SimConfig = match &a.config {
        Some(p) => toml::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))?,
        None => SimConfig::default(),
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    println!(
        "{:<14} {:<8} {:>9} {:>9} {:>14} {:>12} {:>10} {:>9}",
        "trace", "policy", "decisions", "reversals", "node-seconds", "s over SLO", "shed", "max nodes"
    );
    let mut all = serde_json::Map::new();
    for path in &a.traces {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "trace".into());
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let trace = simulate::parse_trace(&text).with_context(|| format!("in {}", path.display()))?;
        let c = simulate::compare(&name, &trace, &cfg.policy, &cfg.model);
        std::fs::write(a.out.join(format!("{name}.svg")), &c.svg)?;
        std::fs::write(a.out.join(format!("{name}-decisions.csv")), simulate::decisions_csv(&c))?;
        let summary = serde_json::json!({"tessera": c.tessera.summary, "naive": c.naive.summary, "kpa": c.kpa.summary});
        std::fs::write(a.out.join(format!("{name}-summary.json")), serde_json::to_vec_pretty(&summary)?)?;
        for s in [&c.tessera.summary, &c.naive.summary, &c.kpa.summary] {
            println!(
                "{name:<14} {:<8} {:>9} {:>9} {:>14.0} {:>12} {:>10.0} {:>9}",
                format!("{:?}", s.policy).to_lowercase(),
                s.decisions,
                s.reversals,
                s.node_seconds,
                s.seconds_over_target,
                s.rejected,
                s.max_nodes
            );
        }
        all.insert(name, summary);
    }
    std::fs::write(a.out.join("summary.json"), serde_json::to_vec_pretty(&all)?)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

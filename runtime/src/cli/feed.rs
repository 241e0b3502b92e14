//! `feed tail` and `projection list|status|rewind|reset`: the shard feed
//! and the projections through a node's HTTP API.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::wire::{ErrorBody, FeedEntryBody, ProjectionBody, ProjectionsBody, RegistryBody, RewindBody, RewoundBody};

/// The node to ask.
#[derive(Debug, Clone, Args)]
pub struct NodeConn {
    /// The node's HTTP address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "TESSERA_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
}

impl NodeConn {
    fn url(&self, path: &str) -> String {
        let base = if self.http.starts_with("http") { self.http.clone() } else { format!("http://{}", self.http) };
        format!("{}{path}", base.trim_end_matches('/'))
    }
}

/// `feed ...`.
#[derive(Debug, Subcommand)]
pub enum FeedCmd {
    /// Print feed entries as they are committed (one JSON line each).
    Tail {
        /// The node.
        #[command(flatten)]
        node: NodeConn,
        /// Only this entity type (default: every type of the node's registry).
        #[arg(long = "type")]
        entity_type: Option<String>,
        /// Only this shard (needs --type).
        #[arg(long)]
        shard: Option<u32>,
        /// Start at this offset (with --shard), or `start` / `end` (default `end`).
        #[arg(long, default_value = "end")]
        from: String,
    },
}

/// `projection ...`.
#[derive(Debug, Subcommand)]
pub enum ProjectionCmd {
    /// The node's projections, their lag and errors.
    List {
        /// The node.
        #[command(flatten)]
        node: NodeConn,
    },
    /// One projection's checkpoint, feed end and lag per unit.
    Status {
        /// The node.
        #[command(flatten)]
        node: NodeConn,
        /// The projection.
        name: String,
    },
    /// Deliver again everything after OFFSET (projections that keep no state).
    Rewind {
        /// The node.
        #[command(flatten)]
        node: NodeConn,
        /// The projection.
        name: String,
        /// The offset to deliver after.
        #[arg(long)]
        to: u64,
        /// Only this entity type.
        #[arg(long = "type")]
        entity_type: Option<String>,
        /// Only this shard.
        #[arg(long)]
        shard: Option<u32>,
    },
    /// Start over from the beginning of the feed, dropping kept state.
    Reset {
        /// The node.
        #[command(flatten)]
        node: NodeConn,
        /// The projection.
        name: String,
        /// Only this entity type.
        #[arg(long = "type")]
        entity_type: Option<String>,
        /// Only this shard.
        #[arg(long)]
        shard: Option<u32>,
    },
}

async fn answer<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<T> {
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => bail!("{} ({})", e.error.message, e.error.kind),
            Err(_) => bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }
    serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer: {}", String::from_utf8_lossy(&bytes)))
}

/// Runs `feed ...`.
pub async fn feed(cmd: FeedCmd) -> anyhow::Result<()> {
    let FeedCmd::Tail { node, entity_type, shard, from } = cmd;
    let http = super::http_client()?;
    let paths = match (entity_type, shard) {
        (Some(t), Some(s)) => vec![format!("/v1/feed/{t}/{s}?from={from}")],
        (Some(t), None) => vec![format!("/v1/feed/{t}?from={from}")],
        (None, Some(_)) => bail!("--shard needs --type"),
        (None, None) => {
            let r: RegistryBody = answer(http.get(node.url("/v1/registry")).send().await?).await?;
            r.entities.iter().map(|e| format!("/v1/feed/{}?from={from}", e.type_name)).collect()
        }
    };
    let mut tails = Vec::new();
    for path in paths {
        let (http, url) = (http.clone(), node.url(&path));
        tails.push(tokio::spawn(async move { tail(&http, &url).await }));
    }
    for t in tails {
        t.await??;
    }
    Ok(())
}

/// Prints one SSE stream's events as JSON lines until it ends.
async fn tail(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let mut resp = http.get(url).header("accept", "text/event-stream").send().await?;
    if !resp.status().is_success() {
        return answer::<serde_json::Value>(resp).await.map(|_| ());
    }
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let kind = frame.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message");
            let data: String = frame.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            match kind {
                "event" => {
                    let e: FeedEntryBody = serde_json::from_str(&data)?;
                    println!("{}", serde_json::to_string(&e)?);
                }
                "error" => {
                    let e: ErrorBody = serde_json::from_str(&data)?;
                    bail!("{} ({})", e.error.message, e.error.kind);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn print_projection(p: &ProjectionBody) {
    println!(
        "{:<24} types {:<24} lag {:>8}  errors {:>3}  units here {:>5}{}",
        p.name,
        p.entity_types.join(","),
        p.lag,
        p.errors,
        p.running_here,
        if p.keeps_state { "  (keeps state)" } else { "" }
    );
}

/// Runs `projection ...`.
pub async fn projection(cmd: ProjectionCmd) -> anyhow::Result<()> {
    let http = super::http_client()?;
    match cmd {
        ProjectionCmd::List { node } => {
            let list: ProjectionsBody = answer(http.get(node.url("/v1/projections")).send().await?).await?;
            if list.projections.is_empty() {
                println!("node {} runs no projections", list.node_id);
            }
            for p in &list.projections {
                print_projection(p);
            }
        }
        ProjectionCmd::Status { node, name } => {
            let p: ProjectionBody =
                answer(http.get(node.url(&format!("/v1/projections/{name}"))).send().await?).await?;
            print_projection(&p);
            println!("{:<20} {:>6} {:>12} {:>12} {:>8}  here  error", "type", "shard", "checkpoint", "feed end", "lag");
            for u in &p.units {
                println!(
                    "{:<20} {:>6} {:>12} {:>12} {:>8}  {:<4}  {}",
                    u.entity_type,
                    u.shard,
                    u.checkpoint,
                    u.feed_last,
                    u.lag,
                    if u.running { "yes" } else { "no" },
                    u.error.as_deref().unwrap_or("")
                );
            }
        }
        ProjectionCmd::Rewind { node, name, to, entity_type, shard } => {
            let body = RewindBody { to, entity_type, shard };
            let url = node.url(&format!("/v1/projections/{name}/rewind"));
            let r: RewoundBody = answer(http.post(url).json(&body).send().await?).await?;
            println!("{}: {} unit(s) rewound to offset {}", r.projection, r.units, r.to);
        }
        ProjectionCmd::Reset { node, name, entity_type, shard } => {
            let body = RewindBody { to: 0, entity_type, shard };
            let url = node.url(&format!("/v1/projections/{name}/reset"));
            let r: RewoundBody = answer(http.post(url).json(&body).send().await?).await?;
            println!("{}: {} unit(s) reset", r.projection, r.units);
        }
    }
    Ok(())
}

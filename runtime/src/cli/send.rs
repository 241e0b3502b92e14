//! `send` and `call`: invoke a node over HTTP and print the reply.

use anyhow::{Context, bail};
use clap::Args;
use tessera_entities::Format;

use crate::client::NatsClient;
use crate::config::NatsSection;
use crate::results::ResultStatus;
use crate::wire;

/// `send`: one entity command.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// The node's HTTP address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "TESSERA_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Send over NATS instead (to the entity's shard subject), e.g. nats://127.0.0.1:4222.
    #[arg(long)]
    pub nats: Option<String>,
    /// NATS subject prefix.
    #[arg(long, default_value = "tessera")]
    pub nats_prefix: String,
    /// Entity type.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: String,
    /// Command name.
    pub command: String,
    /// The command as JSON (default `{}`).
    pub body: Option<String>,
    /// Idempotency key: a retry with the same key returns the original reply.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// `call`: one stateless function call.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// The node's HTTP address.
    #[arg(long, env = "TESSERA_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Call over NATS instead.
    #[arg(long)]
    pub nats: Option<String>,
    /// NATS subject prefix.
    #[arg(long, default_value = "tessera")]
    pub nats_prefix: String,
    /// Queue the call and print its invocation id instead of waiting for the output.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Idempotency key (async calls): the invocation id.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Function name.
    pub function: String,
    /// The input as JSON (default `{}`).
    pub body: Option<String>,
}

/// Percent-encodes a path segment (entity ids may hold any UTF-8).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn base_url(http: &str) -> String {
    if http.starts_with("http://") || http.starts_with("https://") {
        http.trim_end_matches('/').to_owned()
    } else {
        format!("http://{http}")
    }
}

async fn post(url: String, body: Option<String>, key: Option<String>) -> anyhow::Result<()> {
    let body = body.unwrap_or_else(|| "{}".into());
    serde_json::from_str::<serde_json::Value>(&body).context("the body must be JSON")?;
    let mut req = super::http_client()?.post(&url).header(wire::CONTENT_TYPE, "application/json").body(body);
    if let Some(k) = key {
        req = req.header(wire::IDEMPOTENCY_KEY, k);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let seq = resp.headers().get(wire::SEQ).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = resp.text().await?;
    if status.is_success() {
        println!("{text}");
        if let Some(seq) = seq {
            eprintln!("seq {seq}");
        }
        return Ok(());
    }
    eprintln!("{text}");
    match serde_json::from_str::<wire::ErrorBody>(&text) {
        Ok(e) => bail!("HTTP {status}: {}", e.error.kind),
        Err(_) => bail!("HTTP {status}"),
    }
}

fn json_body(body: Option<String>) -> anyhow::Result<Vec<u8>> {
    let body = body.unwrap_or_else(|| "{}".into());
    serde_json::from_str::<serde_json::Value>(&body).context("the body must be JSON")?;
    Ok(body.into_bytes())
}

fn print_reply(r: &crate::client::Reply) -> anyhow::Result<()> {
    println!("{}", r.json()?);
    if let Some(seq) = r.seq {
        eprintln!("seq {seq}{}", if r.deduplicated { " (deduplicated)" } else { "" });
    }
    Ok(())
}

pub(crate) async fn send(a: SendArgs) -> anyhow::Result<()> {
    if let Some(url) = &a.nats {
        let c = NatsClient::connect_with(url, &NatsSection::from_env()).await?.with_prefix(&a.nats_prefix);
        let body = json_body(a.body)?;
        let r =
            c.send(&a.entity_type, &a.entity_id, &a.command, body, Format::Json, a.idempotency_key.as_deref()).await?;
        return print_reply(&r);
    }
    let url = format!(
        "{}/v1/entities/{}/{}/{}",
        base_url(&a.http),
        segment(&a.entity_type),
        segment(&a.entity_id),
        segment(&a.command)
    );
    post(url, a.body, a.idempotency_key).await
}

pub(crate) async fn call(a: CallArgs) -> anyhow::Result<()> {
    if let Some(url) = &a.nats {
        let c = NatsClient::connect_with(url, &NatsSection::from_env()).await?.with_prefix(&a.nats_prefix);
        let body = json_body(a.body)?;
        if a.asynchronous {
            let id = c.call_async(&a.function, body, Format::Json, a.idempotency_key.as_deref()).await?;
            let result_url = format!("/v1/invocations/{id}");
            let body = wire::AcceptedBody { invocation_id: id, status: ResultStatus::Pending, result_url };
            println!("{}", serde_json::to_string(&body)?);
            return Ok(());
        }
        return print_reply(&c.call(&a.function, body, Format::Json).await?);
    }
    let mode = if a.asynchronous { "?mode=async" } else { "" };
    let url = format!("{}/v1/functions/{}{mode}", base_url(&a.http), segment(&a.function));
    post(url, a.body, a.idempotency_key).await
}

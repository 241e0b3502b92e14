//! The road from a region to the central region: a bridge reads the
//! regional event stream (the JetStream sink of the regional cluster,
//! `{P}_EVENTS`, configured with `--events-to-jetstream stock,product`:
//! what crosses is chosen there) through a durable consumer, and turns each
//! stock or product event into a command on the central `availability`
//! entity of its SKU, over the central cluster's HTTP API.
//!
//! Exactly once: the bridge reads the stream in order (bounded fetches of
//! an ephemeral consumer, from the position the central region stored for
//! it; with async-nats' ordered consumer the road stalled for a minute or
//! more about one run in four here, cause not pinned down, so the bridge
//! does its gap checks itself; each fetch is drained before it is posted:
//! a fetch read slower than its expiry loses its rest) and never
//! moves past an event it could not deliver (it retries it in place), so
//! each regional stock's events reach the central view in seq order; the
//! view counts a seq once (see [`crate::Availability`]). (A durable pull
//! consumer with acks is not enough: an event lost in flight comes back
//! after its ack wait, behind later events of the same stock, and the view
//! would take it for a duplicate.)
//!
//! Without NATS, [`CentralFeed`] does the same job as a projection on the
//! regional nodes: it follows the regional feed and posts each event to
//! the central view before its checkpoint moves (a batch that fails is
//! posted again; the view drops what it counted).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};
use tessera_runtime::nats::EventMessage;
use tessera_runtime::projection::{Projection, ProjectionBatch, ProjectionError};
use tessera_runtime::wire::Subjects;

use crate::availability::observation;
use crate::product::ProductEvent;
use crate::stock::StockEvent;

/// Where a bridge reads and writes.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The region's name (as the central view shows it).
    pub region: String,
    /// The region's NATS server.
    pub nats_url: String,
    /// The region's subject prefix (`--nats-prefix` of its nodes).
    pub prefix: String,
    /// The central cluster's HTTP base URL.
    pub central: String,
}

/// `inventory bridge`: one region's road to the central region, as a
/// process of its own beside a real central cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct BridgeArgs {
    /// The region's name, as the central view shows it.
    #[arg(long)]
    pub region: String,
    /// The region's NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// The region's subject prefix (`--nats-prefix` of its nodes, which run with `--events-to-jetstream stock,product`).
    #[arg(long, default_value = "tessera")]
    pub prefix: String,
    /// The central cluster's HTTP base URL.
    #[arg(long)]
    pub central: String,
    /// Print what it moved every this many seconds (0: never).
    #[arg(long, default_value_t = 10)]
    pub report_every_secs: u64,
}

/// Runs a bridge until Ctrl-C (or SIGTERM), printing its progress; it
/// continues from the position the central region stored for it, so
/// stopping and starting it again loses and doubles nothing.
pub async fn run_bridge_command(args: BridgeArgs) -> anyhow::Result<()> {
    let stats = Arc::new(BridgeStats::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let config = BridgeConfig {
        region: args.region.clone(),
        nats_url: args.nats.clone(),
        prefix: args.prefix.clone(),
        central: args.central.trim_end_matches('/').to_owned(),
    };
    let mut bridge = tokio::spawn(run_bridge(config, stats.clone(), stop));
    println!("bridge {}: {} ({}_EVENTS) → {}", args.region, args.nats, args.prefix.to_uppercase(), args.central);
    let mut every = tokio::time::interval(Duration::from_secs(args.report_every_secs.max(1)));
    every.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            r = &mut bridge => {
                print_stats(&args.region, &stats);
                return r?;
            }
            _ = every.tick(), if args.report_every_secs > 0 => print_stats(&args.region, &stats),
        }
    }
    let _ = stop_tx.send(true);
    let r = bridge.await;
    print_stats(&args.region, &stats);
    r?
}

fn print_stats(region: &str, s: &BridgeStats) {
    println!(
        "bridge {region}: {} events read, {} counted, {} duplicates, {} skipped, {} bytes, lag {} ms, stream at {}, {} fetches read again",
        s.events.load(Ordering::Relaxed),
        s.counted.load(Ordering::Relaxed),
        s.duplicates.load(Ordering::Relaxed),
        s.skipped.load(Ordering::Relaxed),
        s.bytes.load(Ordering::Relaxed),
        s.lag_ms.load(Ordering::Relaxed),
        s.stream_last.load(Ordering::Relaxed),
        s.refetches.load(Ordering::Relaxed),
    );
}

/// What a bridge has moved so far (shared with whoever reports it).
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Events read from the regional stream.
    pub events: AtomicU64,
    /// Events the central view counted.
    pub counted: AtomicU64,
    /// Events it had counted before (redeliveries).
    pub duplicates: AtomicU64,
    /// Events of other types or kinds, acknowledged and skipped.
    pub skipped: AtomicU64,
    /// Bytes that crossed (message subjects, headers and bodies).
    pub bytes: AtomicU64,
    /// Commit-to-central lag of the last counted event, ms.
    pub lag_ms: AtomicI64,
    /// Retries of central commands that failed for a moment.
    pub retries: AtomicU64,
    /// The last sequence of the regional stream (JetStream only).
    pub stream_last: AtomicU64,
    /// Fetches given up because their end never came, read again (JetStream only).
    pub refetches: AtomicU64,
}

/// A projection on a regional node that feeds the central view over HTTP
/// (the road when the regions have no NATS between them).
pub struct CentralFeed {
    region: String,
    central: String,
    http: reqwest::Client,
    stats: Arc<BridgeStats>,
}

impl CentralFeed {
    /// Feeds `central` (HTTP base URL) with `region`'s stock and product events.
    pub fn new(region: &str, central: &str, stats: Arc<BridgeStats>) -> Arc<Self> {
        Arc::new(Self { region: region.into(), central: central.into(), http: reqwest::Client::new(), stats })
    }
}

#[async_trait::async_trait]
impl Projection for CentralFeed {
    fn name(&self) -> &str {
        "central-feed"
    }
    fn entity_types(&self) -> Vec<String> {
        vec!["stock".into(), "product".into()]
    }
    async fn handle(&self, batch: ProjectionBatch<'_>, _: &mut Option<Vec<u8>>) -> Result<(), ProjectionError> {
        for e in batch.events {
            let m = EventMessage::from_feed(e);
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            let Some((sku, command, body)) = central_command(&self.region, &m) else {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let url = format!("{}/v1/entities/availability/{sku}/{command}", self.central);
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            self.stats.bytes.fetch_add((url.len() + bytes.len()) as u64, Ordering::Relaxed);
            let failed = |why: String| {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                ProjectionError::Failed(format!("central view at {}: {why}", self.central))
            };
            let r = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(bytes)
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
            if r.status().is_server_error() || (r.status().is_client_error() && !permanent(r.status())) {
                return Err(failed(r.status().to_string()));
            }
            if permanent(r.status()) {
                let why = r.text().await.unwrap_or_default();
                tracing::warn!(region = %self.region, %url, %why, "the central view refused an event");
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let reply: Value = r.json().await.unwrap_or_default();
            if reply["counted"].as_bool().unwrap_or(true) {
                self.stats.counted.fetch_add(1, Ordering::Relaxed);
                self.stats.lag_ms.store(now_ms() - e.timestamp_ms, Ordering::Relaxed);
            } else {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// The central command an event becomes: (SKU, command, body).
pub fn central_command(region: &str, m: &EventMessage) -> Option<(String, &'static str, Value)> {
    match m.entity_type.as_str() {
        "stock" => {
            let (store, sku) = m.entity_id.split_once(':')?;
            let e: StockEvent = serde_json::from_value(m.event.clone()).ok()?;
            let change = observation(&e)?;
            Some((sku.to_owned(), "observe", json!({"region": region, "store": store, "seq": m.seq, "change": change})))
        }
        "product" => {
            let product = match serde_json::from_value::<ProductEvent>(m.event.clone()).ok()? {
                ProductEvent::Upserted { product, .. } => json!({"name": product.name, "price": product.price}),
                ProductEvent::Removed => Value::Null,
                _ => return None,
            };
            Some((m.entity_id.clone(), "describe", json!({"region": region, "seq": m.seq, "product": product})))
        }
        _ => None,
    }
}

/// A refusal the view would give again (a bad command), as opposed to a
/// moment's trouble: a timeout (408), a full entity queue (429), a 5xx.
fn permanent(status: reqwest::StatusCode) -> bool {
    status.is_client_error() && !matches!(status.as_u16(), 408 | 429)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn decode(body: &[u8]) -> anyhow::Result<EventMessage> {
    if body.first() == Some(&b'{') {
        Ok(serde_json::from_slice(body)?)
    } else {
        Ok(tessera_entities::codec::from_msgpack(body)?)
    }
}

/// Posts `body` to `url` until the central region takes it (or refuses it
/// for good); the reply, or `None` when refused.
async fn post_until_taken(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    stats: &BridgeStats,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Option<Value> {
    loop {
        match http.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => return Some(r.json().await.unwrap_or_default()),
            Ok(r) if permanent(r.status()) => {
                let why = r.text().await.unwrap_or_default();
                tracing::warn!(%url, %why, "the central view refused an event");
                return None;
            }
            other => {
                if *stop.borrow() {
                    return None;
                }
                let why = other.map(|r| r.status().to_string()).unwrap_or_else(|e| e.to_string());
                tracing::debug!(%url, %why, "central command failed, retrying");
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Runs the bridge until `stop` is set (or the stream cannot be read).
///
/// It reads the regional stream in stream order from the stream position
/// the central region stored for it (`bridge_offset/{region}`), which it
/// moves forward every second, through an ephemeral consumer without acks
/// read in bounded fetches; it recreates the consumer from its position
/// after any error, a gap in the delivery sequence, or messages the
/// consumer delivered that never arrived (what an ordered consumer does,
/// without its long-lived stream of messages: see the module doc).
/// Everything after the stored position is sent again after a restart;
/// the view counts each regional seq once.
pub async fn run_bridge(
    config: BridgeConfig,
    stats: Arc<BridgeStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let subjects = Subjects::new(&config.prefix);
    let settings = tessera_runtime::config::NatsSection::from_env();
    let client = tessera_runtime::connect::nats(&config.nats_url, &settings, "inventory-bridge")
        .await
        .with_context(|| format!("region {}", config.region))?;
    let js = jetstream::new(client);
    let http = reqwest::Client::new();
    let stream = loop {
        match js.get_stream(subjects.events_stream()).await {
            Ok(s) => break s,
            Err(e) if !*stop.borrow() => {
                tracing::info!(region = %config.region, error = %e, "waiting for the regional events stream");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let offset_url = format!("{}/v1/entities/bridge_offset/{}", config.central, config.region);
    let stored = loop {
        match http.get(&offset_url).send().await {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await.unwrap_or_default();
                break v["state"]["stream_seq"].as_u64().unwrap_or(0);
            }
            other if !*stop.borrow() => {
                tracing::info!(region = %config.region, error = ?other.map(|r| r.status()), "waiting for the central region");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => return Ok(()),
        }
    };
    let filters = vec![format!("{}.events.stock.>", config.prefix), format!("{}.events.product.>", config.prefix)];
    let (mut position, mut stored_position) = (stored, stored);
    let mut last_store = std::time::Instant::now();
    'reading: loop {
        // An ephemeral consumer from the next unread position, read in
        // bounded fetches (each ends after a second at most, so a lost
        // request or a server restart costs a second, not a stall); a gap
        // in its delivery sequence means a message was lost in flight: read
        // again from the position.
        let consumer = match stream
            .create_consumer(consumer::pull::Config {
                filter_subjects: filters.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: position + 1 },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
        {
            Ok(c) => c,
            Err(e) if !*stop.borrow() => {
                tracing::warn!(region = %config.region, error = %e, "cannot create the central consumer; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => break,
        };
        let mut delivered = 0u64;
        loop {
            if *stop.borrow() {
                break 'reading;
            }
            if last_store.elapsed() >= Duration::from_secs(1) {
                last_store = std::time::Instant::now();
                if let Ok(info) = stream.get_info().await {
                    stats.stream_last.store(info.state.last_sequence, Ordering::Relaxed);
                }
                if position > stored_position {
                    let body = json!({"stream_seq": position});
                    if post_until_taken(&http, &format!("{offset_url}/advance"), &body, &stats, &stop).await.is_some() {
                        stored_position = position;
                    }
                }
            }
            let batch = tokio::select! {
                _ = stop.changed() => break 'reading,
                b = consumer.fetch().max_messages(256).expires(Duration::from_secs(1)).messages() => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(region = %config.region, error = %e, "fetch failed; reading again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'reading;
                }
            };
            // Take the whole batch first: posting to the central view takes
            // longer than the fetch's expiry, and a batch read slower than
            // that ends early, the rest of it delivered and dropped. A batch
            // whose end never comes (its expiry notice lost: seen as a
            // test run that never finished) is given up after 5 s and
            // read again from the position; a stop is heard meanwhile.
            let batch: Vec<_> = tokio::select! {
                _ = stop.changed() => break 'reading,
                b = tokio::time::timeout(Duration::from_secs(5), batch.collect::<Vec<_>>()) => match b {
                    Ok(b) => b,
                    Err(_) => {
                        tracing::debug!(region = %config.region, "a fetch did not end; reading again");
                        stats.refetches.fetch_add(1, Ordering::Relaxed);
                        continue 'reading;
                    }
                },
            };
            if batch.is_empty() {
                // Nothing came: make sure nothing was delivered and lost
                // (no later message would reveal the gap).
                let mut consumer = consumer.clone();
                match consumer.info().await {
                    Ok(i) if i.delivered.consumer_sequence > delivered => {
                        tracing::debug!(region = %config.region, "messages lost in flight; reading again");
                        continue 'reading;
                    }
                    Ok(_) => {}
                    Err(_) => continue 'reading,
                }
            }
            for m in batch {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(region = %config.region, error = %e, "batch error; reading again");
                        continue 'reading;
                    }
                };
                let Ok(info) = m.info() else { continue 'reading };
                let (seq, consumer_seq) = (info.stream_sequence, info.consumer_sequence);
                if consumer_seq != delivered + 1 {
                    tracing::debug!(region = %config.region, consumer_seq, delivered, "gap in delivery; reading again");
                    continue 'reading;
                }
                delivered = consumer_seq;
                if seq <= position {
                    continue;
                }
                stats.events.fetch_add(1, Ordering::Relaxed);
                let header_bytes: usize = m.headers.as_ref().map_or(0, |h| {
                    h.iter()
                        .map(|(k, v)| {
                            let name: &str = k.as_ref();
                            name.len() + v.iter().map(|v| v.as_str().len()).sum::<usize>()
                        })
                        .sum()
                });
                stats.bytes.fetch_add((m.subject.len() + m.payload.len() + header_bytes) as u64, Ordering::Relaxed);
                let command = decode(&m.payload).ok().and_then(|e| central_command(&config.region, &e).map(|c| (c, e)));
                match command {
                    None => {
                        stats.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(((sku, command, body), event)) => {
                        let url = format!("{}/v1/entities/availability/{sku}/{command}", config.central);
                        match post_until_taken(&http, &url, &body, &stats, &stop).await {
                            Some(reply) if reply["counted"].as_bool().unwrap_or(true) => {
                                stats.counted.fetch_add(1, Ordering::Relaxed);
                                stats.lag_ms.store(now_ms() - event.timestamp_ms, Ordering::Relaxed);
                            }
                            Some(_) => {
                                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                            None if *stop.borrow() => break 'reading,
                            None => {
                                stats.skipped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                position = seq;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(entity_type: &str, id: &str, seq: u64, event: Value) -> EventMessage {
        EventMessage {
            entity_type: entity_type.into(),
            entity_id: id.into(),
            seq,
            shard: 0,
            offset: 0,
            event_type: String::new(),
            version: 1,
            timestamp_ms: 0,
            event,
        }
    }

    #[test]
    fn stock_and_product_events_become_central_commands() {
        let (sku, cmd, body) =
            central_command("eu", &msg("stock", "paris:shoe", 4, json!({"Purchased": {"qty": 2}}))).unwrap();
        assert_eq!((sku.as_str(), cmd), ("shoe", "observe"));
        assert_eq!(body, json!({"region": "eu", "store": "paris", "seq": 4, "change": {"on_hand": -2, "reserved": 0}}));
        let up = json!({"Upserted": {"product": {"sku": "shoe", "name": "Shoe", "price": 9.5}, "image": null}});
        let (_, cmd, body) = central_command("eu", &msg("product", "shoe", 1, up)).unwrap();
        assert_eq!((cmd, &body["product"]), ("describe", &json!({"name": "Shoe", "price": 9.5})));
        assert_eq!(
            central_command("eu", &msg("product", "shoe", 2, json!("Removed"))).unwrap().2["product"],
            Value::Null
        );
        assert!(central_command("eu", &msg("order", "o1", 1, json!("Confirming"))).is_none(), "orders stay regional");
        assert!(central_command("eu", &msg("stock", "no-colon", 1, json!({"Purchased": {"qty": 2}}))).is_none());
    }
}

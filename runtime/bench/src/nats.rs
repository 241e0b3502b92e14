//! NATS benchmarks: commands over request/reply vs a raw request/reply echo,
//! async invocations vs raw JetStream publish + consume, same server, same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde_json::{Value, json};
use tessera_entities::Format;

use super::runs::{median, ratio};
use super::{Sizes, concurrently, registry};
use tessera_runtime::NodeBuilder;
use tessera_runtime::client::NatsClient;
use tessera_runtime::config::{JournalKind, NodeConfig};

/// Rounds of the request/reply comparison (each `commands / 4` requests).
const ROUNDS: usize = 3;

/// One round of `n` requests to an echo on `subject` (with a command's
/// headers, or none): the rate and its latency summary.
async fn echo_round(
    raw: async_nats::Client,
    subject: String,
    n: u64,
    callers: u64,
    headers: bool,
) -> anyhow::Result<(f64, Value)> {
    let (elapsed, latency) = concurrently(n, callers, move |i| {
        let (raw, subject) = (raw.clone(), subject.clone());
        async move {
            let body = br#"{"by":1}"#.to_vec().into();
            if headers {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Tessera-Entity", format!("e-{}", i % 10_000).as_str());
                h.insert("Tessera-Command", "add");
                h.insert("Content-Type", "application/json");
                raw.request_with_headers(subject, h, body).await?;
            } else {
                raw.request(subject, body).await?;
            }
            Ok(())
        }
    })
    .await?;
    Ok((n as f64 / elapsed.as_secs_f64(), latency))
}

pub(super) async fn run(s: Sizes, url: &str) -> anyhow::Result<Value> {
    let prefix = format!("bench{}", std::process::id());
    let config = NodeConfig::default().with(|c| {
        c.http.listen = None;
        c.journal.kind = JournalKind::Memory;
        c.nats.url = Some(url.to_owned());
        c.nats.prefix = prefix.clone();
        c.limits.max_in_flight = 1_000_000;
        c.executors.function_concurrency = 512;
    });
    let node = NodeBuilder::new(registry()).config(config).build().await?;
    let client = NatsClient::connect(url).await?.with_prefix(&prefix);
    let ids: Arc<Vec<String>> = Arc::new((0..s.entities).map(|i| format!("e-{i}")).collect());
    let n = s.commands / 4;

    // The two echo responders, set up once: the raw echo on the client's
    // own connection, and the echo as a deployment has it (the responder on
    // its own connection, as the node is; requests and replies carrying the
    // headers a command and its reply carry). What the runtime adds beyond
    // the second is its own work, not the transport's.
    let raw = client.nats().clone();
    let mut sub = raw.subscribe(format!("{prefix}.echo")).await?;
    let responder = raw.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    let responder = async_nats::connect(url).await?;
    let mut sub = responder.subscribe(format!("{prefix}.echo2")).await?;
    // The server has the subscription before the first request comes.
    responder.flush().await?;
    // Header names made once, as the node makes its reply's.
    let names = ["Tessera-Status", "Content-Type", "Tessera-Seq", "Tessera-Invocation-Id"]
        .map(async_nats::HeaderName::from_static);
    let echo2 = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let mut h = async_nats::HeaderMap::new();
                let [status, content_type, seq, id] = names.clone();
                h.insert(status, "200");
                h.insert(content_type, "application/json");
                h.insert(seq, "1");
                h.insert(id, "0192f0c4-3a7e-7c3d-9a51-6b2f1e0d4c3b");
                let _ = responder.publish_with_headers(reply, h, m.payload).await;
            }
        }
    });

    // Rounds of the three, one after another, so that each ratio compares
    // runs seconds apart (a shared two-core machine drifts); each figure is
    // the median of its rounds, its latency that of the median round.
    let mut runs: [Vec<(f64, Value)>; 3] = Default::default();
    for round in 0..ROUNDS {
        let (c, ids) = (client.clone(), ids.clone());
        let (elapsed, latency) = concurrently(n, s.callers, move |i| {
            let (c, ids) = (c.clone(), ids.clone());
            async move {
                let id = &ids[(i % ids.len() as u64) as usize];
                c.send("bench-counter", id, "add", br#"{"by":1}"#.to_vec(), Format::Json, None).await?;
                Ok(())
            }
        })
        .await?;
        runs[0].push((n as f64 / elapsed.as_secs_f64(), latency));

        let raw = client.nats();
        runs[1].push(echo_round(raw.clone(), format!("{prefix}.echo"), n, s.callers, false).await?);
        runs[2].push(echo_round(raw.clone(), format!("{prefix}.echo2"), n, s.callers, true).await?);
        let [a, b, c] = runs.each_ref().map(|r| r[round].0);
        eprintln!(
            "round {round}: commands over NATS {a:.0}/s; raw echo {b:.0}/s; echo as deployed (own connection, headers) {c:.0}/s"
        );
    }
    echo.abort();
    echo2.abort();
    let rounds: Vec<Vec<f64>> = runs.iter().map(|r| r.iter().map(|(x, _)| x.round()).collect()).collect();
    let [(rate, latency), (raw_rate, raw_latency), (pair_rate, pair_latency)] = runs.map(median);
    eprintln!("medians: commands over NATS {rate:.0}/s; raw echo {raw_rate:.0}/s; echo as deployed {pair_rate:.0}/s");

    // Async invocations: queue them all, wait until every one has a result.
    let m = (s.commands / 20).max(100);
    let done_before = node.metrics().requests.with_label_values(&["function", "200"]).get();
    let c = client.clone();
    let started = Instant::now();
    concurrently(m, s.callers, move |_| {
        let c = c.clone();
        async move {
            c.call_async("bench.echo", b"{}".to_vec(), Format::Json, None).await?;
            Ok(())
        }
    })
    .await?;
    finished(&node, "function", done_before + m, "async invocations").await?;
    let async_rate = m as f64 / started.elapsed().as_secs_f64();
    eprintln!("async invocations: {async_rate:.0}/s");

    // Async entity commands: published to their units' subjects, run by
    // the owner in per-entity order, outcome stored and published.
    let done_before = node.metrics().requests.with_label_values(&["command", "200"]).get();
    let c = client.clone().with_shards(node.config().journal.shards);
    let ids3 = ids.clone();
    let started = Instant::now();
    concurrently(m, s.callers, move |i| {
        let (c, ids) = (c.clone(), ids3.clone());
        async move {
            let id = &ids[(i % ids.len() as u64) as usize];
            c.send_async("bench-counter", id, "add", br#"{"by":1}"#.to_vec(), Format::Json, None).await?;
            Ok(())
        }
    })
    .await?;
    let published = started.elapsed();
    finished(&node, "command", done_before + m, "async entity commands").await?;
    let async_cmd_rate = m as f64 / started.elapsed().as_secs_f64();
    eprintln!("async entity commands: {async_cmd_rate:.0}/s (all published after {published:?})");
    node.shutdown().await;

    let js = jetstream::new(client.nats().clone());
    let name = format!("{}_RAW", prefix.to_uppercase());
    let raw_stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.raw.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    let consumer: consumer::PullConsumer = raw_stream
        .get_or_create_consumer(
            "raw",
            consumer::pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        // Acknowledge concurrently, as the node does (it runs each invocation in a task).
        let mut messages = consumer.messages().await?;
        let mut acks = Vec::with_capacity(m as usize);
        while (acks.len() as u64) < m {
            let Some(msg) = messages.next().await else { break };
            let msg = msg.map_err(|e| anyhow::anyhow!("{e}"))?;
            acks.push(tokio::spawn(async move { msg.double_ack().await.map_err(|e| anyhow::anyhow!("{e}")) }));
        }
        for a in acks {
            a.await??;
        }
        anyhow::Ok(())
    });
    let js2 = js.clone();
    let subject = format!("{prefix}.raw.echo");
    concurrently(m, s.callers, move |_| {
        let (js, subject) = (js2.clone(), subject.clone());
        async move {
            js.publish(subject, b"{}".to_vec().into()).await?.await?;
            Ok(())
        }
    })
    .await?;
    consume.await??;
    let raw_async = m as f64 / started.elapsed().as_secs_f64();
    eprintln!("raw JetStream publish + consume: {raw_async:.0}/s");
    for stream in [
        name,
        format!("{}_INVOKE", prefix.to_uppercase()),
        format!("{}_RESULTS", prefix.to_uppercase()),
        format!("{}_COMMANDS", prefix.to_uppercase()),
    ] {
        let _ = js.delete_stream(stream).await;
    }
    Ok(json!({
        "description": "entity commands over NATS request/reply (memory journal, 1 event each) vs a raw async-nats request/reply echo (one connection for both sides) and vs the same echo as a deployment has it (the responder on its own connection, the headers of a command and its reply); each the median of 3 alternating rounds; async function invocations and async entity commands (JetStream, result stored and published) vs raw JetStream publish + consume with acks",
        "commands": n, "callers": s.callers, "async_invocations": m,
        "rounds": { "runtime": rounds[0], "raw_echo": rounds[1], "echo_own_connection_with_headers": rounds[2] },
        "runtime": { "commands_per_sec": rate.round(), "latency": latency, "async_invocations_per_sec": async_rate.round(), "async_entity_commands_per_sec": async_cmd_rate.round() },
        "baseline_raw_nats": { "requests_per_sec": raw_rate.round(), "latency": raw_latency, "jetstream_publish_consume_per_sec": raw_async.round() },
        "ratio_runtime_to_baseline": ratio(rate, raw_rate),
        "baseline_raw_nats_own_connection_with_headers": { "requests_per_sec": pair_rate.round(), "latency": pair_latency },
        "ratio_runtime_to_own_connection_echo": ratio(rate, pair_rate),
        "ratio_async_to_raw_jetstream": ratio(async_rate, raw_async),
        "ratio_async_commands_to_raw_jetstream": ratio(async_cmd_rate, raw_async),
    }))
}

/// Waits (5 min at most) until the node answered `total` requests of `kind` with 200.
async fn finished(node: &tessera_runtime::Node, kind: &str, total: u64, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while node.metrics().requests.with_label_values(&[kind, "200"]).get() < total {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

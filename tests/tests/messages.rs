//! Entities that talk, on one node with the embedded journal: a transfer
//! saga between accounts (completed, failed, compensated; many at once,
//! the sum of balances unchanged, nothing applied twice), durable timers
//! (thousands, across a restart: each fires once, none early, lateness
//! measured; cancelled ones never), messages nobody can take (dead
//! letters, the sender told), and how all of it shows in the API.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tessera_journal::EntityKey;
use tessera_runtime::{Invocation, Node};

async fn node(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut tessera_runtime::NodeConfig),
) -> (tessera_runtime::Server, String) {
    tessera_test_support::node::node(tessera_tests::bank_registry(), dir, tweak).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

async fn invoke(node: &Node, t: &str, id: &str, command: &str, body: Value) -> Value {
    let r = node
        .invoke(Invocation::json(t, id, command, &body))
        .await
        .unwrap_or_else(|e| panic!("{t}/{id} {command}: {e}"));
    tessera_entities::codec::msgpack_to_json(&r.reply).unwrap_or_default()
}

async fn state(node: &Node, t: &str, id: &str) -> Value {
    node.state(t, id).await.unwrap_or_else(|e| panic!("{t}/{id}: {e}")).state
}

/// Waits until every transfer has ended; their final statuses.
async fn settled(node: &Node, ids: &[String]) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = HashMap::new();
    while done.len() < ids.len() {
        for id in ids {
            if done.contains_key(id) {
                continue;
            }
            let s = state(node, "transfer", id).await["status"].as_str().unwrap_or_default().to_owned();
            if ["completed", "failed", "compensated"].contains(&s.as_str()) {
                done.insert(id.clone(), s);
            }
        }
        assert!(Instant::now() < deadline, "transfers still running: {} of {} ended", done.len(), ids.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done
}

/// Every event type name of an entity's journal, with its payload as JSON.
async fn journal(node: &Node, t: &str, id: &str) -> Vec<(String, Value)> {
    let events: Vec<_> = node.journal().read(&EntityKey::new(t, id), 1..=u64::MAX).try_collect().await.unwrap();
    events
        .iter()
        .map(|e| (e.type_name.clone(), tessera_runtime::flow::payload_json(&e.type_name, &e.payload)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_completes_fails_or_compensates_and_the_money_adds_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, base) = node(dir.path(), |_| {}).await;
    let node = server.node();
    invoke(node, "account", "a1", "deposit", json!({"amount": 100})).await;
    invoke(node, "account", "a3", "freeze", json!(null)).await;
    let start =
        |from: &str, to: &str, amount: i64| json!({"from": from, "to": to, "amount": amount, "timeout_ms": 60_000});
    invoke(node, "transfer", "t-ok", "start", start("a1", "a2", 30)).await;
    invoke(node, "transfer", "t-short", "start", start("a1", "a2", 1000)).await;
    invoke(node, "transfer", "t-frozen", "start", start("a1", "a3", 10)).await;
    let ids: Vec<String> = ["t-ok", "t-short", "t-frozen"].map(String::from).to_vec();
    let ended = settled(node, &ids).await;
    assert_eq!(ended["t-ok"], "completed");
    assert_eq!(ended["t-short"], "failed");
    assert_eq!(ended["t-frozen"], "compensated");
    assert_eq!(state(node, "transfer", "t-short").await["reason"], "insufficient_funds");
    assert_eq!(state(node, "transfer", "t-frozen").await["reason"], "frozen");
    let balances = [
        state(node, "account", "a1").await["balance"].as_i64(),
        state(node, "account", "a2").await["balance"].as_i64(),
        state(node, "account", "a3").await["balance"].as_i64(),
    ];
    assert_eq!(balances, [Some(70), Some(30), Some(0)]);

    // The journal shows what was sent, readably, and the deadline's timer
    // scheduled, then cancelled when the debit came back.
    let t_ok = journal(node, "transfer", "t-ok").await;
    let types: Vec<&str> = t_ok.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        ["Started", "Moved", "tessera.send", "tessera.schedule", "Moved", "tessera.send", "tessera.cancel", "Moved"],
        "{t_ok:#?}"
    );
    assert_eq!(t_ok[2].1["send"]["target"], "account/a1");
    assert_eq!(t_ok[2].1["send"]["command"], json!({"name": "debit", "payload": {"transfer": "t-ok", "amount": 30}}));
    assert_eq!(t_ok[3].1["schedule"]["timer_id"], "expire");
    // Over HTTP the same, and the entity shows no pending timer or undelivered message.
    let (_, events) = common::get(&format!("{base}/v1/entities/transfer/t-ok/events")).await;
    assert_eq!(events["events"][2]["event"]["send"]["command"]["name"], "debit", "{events}");
    let (_, body) = common::get(&format!("{base}/v1/entities/transfer/t-ok?outbox=true")).await;
    assert!(body.get("timers").is_none() && body.get("undelivered").is_none(), "{body}");
    let metrics = reqwest::get(format!("{base}/metrics")).await?.text().await?;
    for m in ["tessera_messages_delivered_total{kind=\"send\"}", "tessera_message_delivery_seconds_count"] {
        assert!(metrics.contains(m), "{m} in /metrics");
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_transfers_at_once_keep_the_sum_and_apply_nothing_twice() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, _base) = node(dir.path(), |c| c.journal.shards = 8).await;
    let node = server.node();
    let accounts: Vec<String> = (0..10).map(|i| format!("acc-{i}")).collect();
    for a in &accounts {
        invoke(node, "account", a, "deposit", json!({"amount": 100})).await;
    }
    invoke(node, "account", "acc-9", "freeze", json!(null)).await;
    let ids: Vec<String> = (0..300).map(|i| format!("tr-{i}")).collect();
    let starts = ids.iter().enumerate().map(|(i, id)| {
        let (from, to) = (&accounts[i % 10], &accounts[(i * 7 + 3) % 10]);
        let body = json!({"from": from, "to": to, "amount": 1 + (i % 40) as i64, "timeout_ms": 60_000});
        async move { invoke(node, "transfer", id, "start", body).await }
    });
    futures::future::join_all(starts).await;
    let ended = settled(node, &ids).await;
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for s in ended.values() {
        *by_status.entry(s.as_str()).or_default() += 1;
    }
    println!("300 transfers: {by_status:?}");
    let mut sum = 0;
    let mut applied: HashMap<String, usize> = HashMap::new();
    for a in &accounts {
        sum += state(node, "account", a).await["balance"].as_i64().unwrap_or_default();
        for (t, e) in journal(node, "account", a).await {
            if t == "Debited" || t == "Credited" {
                *applied.entry(format!("{t}/{}", e[&t]["transfer"].as_str().unwrap_or_default())).or_default() += 1;
            }
        }
    }
    assert_eq!(sum, 1000, "no money made or lost");
    assert!(applied.values().all(|n| *n == 1), "a debit or credit applied twice: {applied:?}");
    for (id, s) in &ended {
        let has = |k: &str| applied.contains_key(&format!("{k}/{id}"));
        let refund = applied.contains_key(&format!("Credited/{id}:refund"));
        let expected = match s.as_str() {
            "completed" => has("Debited") && has("Credited") && !refund,
            "failed" => !has("Debited") && !has("Credited"),
            "compensated" => has("Debited") && !has("Credited") && refund,
            _ => false,
        };
        assert!(expected, "{id} {s}: the accounts' journals disagree");
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_timers_fire_once_none_early_across_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tweak = |c: &mut tessera_runtime::NodeConfig| c.journal.shards = 16;
    let (server, base) = node(dir.path(), tweak).await;
    let n = 10_000usize;
    let started = Instant::now();
    let base_ms = now_ms() + 15_000;
    // Alarms 0..n due over 15 s from 15 s from now; every tenth cancelled.
    let sets = (0..n).map(|i| {
        let node = server.node().clone();
        async move {
            let body = json!({"id": "ring", "at_ms": base_ms + (i as i64 * 15_000 / n as i64)});
            invoke(&node, "alarm", &format!("al-{i}"), "set", body).await;
        }
    });
    futures::stream::iter(sets).buffer_unordered(128).collect::<()>().await;
    let set_in = started.elapsed();
    let cancels = (0..n).step_by(10).map(|i| {
        let node = server.node().clone();
        async move { invoke(&node, "alarm", &format!("al-{i}"), "cancel", json!({"id": "ring"})).await }
    });
    futures::stream::iter(cancels).buffer_unordered(128).collect::<Vec<_>>().await;
    println!("{n} timers set in {set_in:?}, a tenth cancelled after {:?}", started.elapsed());
    let (_, pending) = common::get(&format!("{base}/v1/entities/alarm/al-{}", n - 1)).await;
    assert_eq!(pending["timers"][0]["id"], "ring", "a pending timer shows: {pending}");
    assert!(now_ms() < base_ms, "set before any was due");
    // Stop while a third of them have fired; start again on the same journal.
    tokio::time::sleep(Duration::from_millis((base_ms + 5_000 - now_ms()).max(0) as u64)).await;
    let stopped_ms = now_ms();
    server.shutdown().await;
    let restarted_ms = now_ms();
    let (server, _) = node(dir.path(), tweak).await;
    tokio::time::sleep(Duration::from_millis((base_ms + 15_500 - now_ms()).max(0) as u64)).await;
    let node = server.node();
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = n - n / 10;
    let mut lateness = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut before = hdrhistogram::Histogram::<u64>::new(3)?;
    loop {
        let rang = rings(node, n).await;
        if rang.len() >= expected || Instant::now() > deadline {
            lateness.reset();
            before.reset();
            for (i, list) in &rang {
                assert!(i % 10 != 0, "al-{i} was cancelled and rang");
                assert_eq!(list.len(), 1, "al-{i} rang {} times", list.len());
                let (due, at) = list[0];
                assert!(at >= due, "al-{i} rang {} ms early", due - at);
                // Those due while the node was down are late by the restart.
                if due > restarted_ms + 1_000 {
                    lateness.record((at - due) as u64)?;
                } else if at < stopped_ms {
                    before.record((at - due) as u64)?;
                }
            }
            assert_eq!(rang.len(), expected, "every timer not cancelled rang");
            break;
        }
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    println!(
        "timer lateness before the stop (ms, {} timers): p50 {} p99 {} max {}",
        before.len(),
        before.value_at_quantile(0.5),
        before.value_at_quantile(0.99),
        before.max()
    );
    println!(
        "timer lateness after the restart settled (ms, {} timers): p50 {} p99 {} max {}",
        lateness.len(),
        lateness.value_at_quantile(0.5),
        lateness.value_at_quantile(0.99),
        lateness.max()
    );
    let metrics = server.node().metrics().render();
    assert!(metrics.contains("tessera_timer_lateness_seconds_count"), "lateness is a metric");
    server.shutdown().await;
    Ok(())
}

/// The rings of alarms 0..n: (due, rang at) per ring.
async fn rings(node: &Node, n: usize) -> HashMap<usize, Vec<(i64, i64)>> {
    let mut out = HashMap::new();
    for i in 0..n {
        for (t, e) in journal(node, "alarm", &format!("al-{i}")).await {
            if t == "Rang" {
                let r = &e["Rang"];
                out.entry(i)
                    .or_insert_with(Vec::new)
                    .push((r["due_ms"].as_i64().unwrap_or_default(), r["at_ms"].as_i64().unwrap_or_default()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nobody_can_take_is_a_dead_letter_and_the_sender_is_told() -> anyhow::Result<()> {
    tessera_test_support::servers::init_tracing();
    let dir = tempfile::tempdir()?;
    let (server, base) = node(dir.path(), |_| {}).await;
    let node = server.node();
    let ask = |t: &str, c: &str| json!({"entity_type": t, "id": "x", "command": c});
    invoke(node, "alarm", "asker", "ask", ask("no-such-type", "get")).await;
    invoke(node, "alarm", "asker", "ask", ask("account", "no_such_command")).await;
    invoke(node, "alarm", "asker", "ask", ask("account", "get")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let outcomes = loop {
        let answered: Vec<String> = journal(node, "alarm", "asker")
            .await
            .into_iter()
            .filter(|(t, _)| t == "Answered")
            .map(|(_, e)| e["Answered"]["outcome"].as_str().unwrap_or_default().to_owned())
            .collect();
        if answered.len() == 3 || Instant::now() > deadline {
            break answered;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(outcomes, ["undeliverable", "undeliverable", "ok"], "answers in send order");
    // The dead letters show once the dispatcher stored its checkpoint.
    let body = loop {
        let (_, body) = common::get(&format!("{base}/v1/entities/alarm/asker?outbox=true")).await;
        if body["dead_letters"].as_array().is_some_and(|d| d.len() == 2) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.get("undelivered").is_none(), "all delivered: {body}");
    let dead = body["dead_letters"].as_array().cloned().unwrap_or_default();
    assert_eq!(dead.len(), 2, "{body}");
    assert_eq!(dead[0]["to"], "no-such-type/x");
    assert!(dead[0]["error"].as_str().unwrap_or_default().contains("no-such-type"), "{body}");
    assert!(dead[1]["error"].as_str().unwrap_or_default().contains("no_such_command"), "{body}");
    server.shutdown().await;
    Ok(())
}

/// A POST with a W3C trace context.
async fn traced_post(url: &str, body: Value, trace_id: &str) -> u16 {
    let r = common::client()
        .post(url)
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_and_an_async_command_stay_in_their_callers_traces() {
    let jaeger = common::jaeger::Jaeger::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--otlp-endpoint", jaeger.endpoint.as_str(), "--node-id", "n1"];
    let env = [("TESSERA_TEST_BANK", "1"), ("OTEL_BSP_SCHEDULE_DELAY", "200")];
    let node = common::NodeProcess::serve(common::test_node_bin(), dir.path(), &extra, &env).await.unwrap();
    let base = node.base.clone();
    assert_eq!(
        traced_post(
            &format!("{base}/v1/entities/account/acc-1/deposit"),
            json!({"amount": 100}),
            &common::jaeger::Jaeger::new_trace_id()
        )
        .await,
        200
    );

    // A transfer: the transfer entity messages both accounts; every hop joins the caller's trace.
    let saga = common::jaeger::Jaeger::new_trace_id();
    let body = json!({"from": "acc-1", "to": "acc-2", "amount": 30, "timeout_ms": 60_000});
    assert_eq!(traced_post(&format!("{base}/v1/entities/transfer/tr-1/start"), body, &saga).await, 200);
    // An async command: it waits in the queue, runs later, in the same trace.
    let queued = common::jaeger::Jaeger::new_trace_id();
    let url = format!("{base}/v1/entities/account/acc-3/deposit?mode=async");
    assert_eq!(traced_post(&url, json!({"amount": 5}), &queued).await, 202);

    let started = Instant::now();
    loop {
        let (s, q) = (jaeger.trace(&saga).await, jaeger.trace(&queued).await);
        let invoked = |spans: &[common::jaeger::Span], id: &str| {
            spans.iter().any(|s| s.name == "invoke" && s.attributes.get("entity_id").map(String::as_str) == Some(id))
        };
        let saga_done = invoked(&s, "acc-1") && invoked(&s, "acc-2") && s.iter().any(|x| x.name == "deliver");
        if saga_done && invoked(&q, "acc-3") && q.iter().any(|x| x.name == "async_command") {
            for spans in [&s, &q] {
                let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
                for x in spans.iter() {
                    assert!(ids.contains(x.parent_span_id.as_str()) || x.parent_span_id == "00f067aa0ba902b7", "{x:?}");
                }
            }
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "saga: {s:#?}\nqueued: {q:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

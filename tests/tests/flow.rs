//! Events that flow, on one node with the embedded journal: idempotency by
//! time (not count), the shard feed over HTTP (pages, live SSE, typed
//! errors), projections (counts, restart from the checkpoint, rewind and
//! reset).

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_journal::shard_of;
use tessera_runtime::projection::{FeedEvent, View, view, view_state};

/// Purchases seen, per unit, exactly once.
struct Sold;

impl View for Sold {
    type State = u64;
    fn name(&self) -> &str {
        "sold"
    }
    fn entity_types(&self) -> Vec<String> {
        vec!["stock".into()]
    }
    fn apply(&self, state: &mut u64, e: &FeedEvent) {
        if e.event_type == "Purchased" {
            *state += e.json()["Purchased"]["qty"].as_u64().unwrap_or(0);
        }
    }
}

async fn purchase(base: &str, id: &str, qty: u32, key: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    common::post(&format!("{base}/v1/entities/stock/{id}/purchase"), &json!({ "qty": qty }).to_string(), Some(key))
        .await
}

async fn restock(base: &str, id: &str, qty: u32) {
    let (s, _, b) =
        common::post(&format!("{base}/v1/entities/stock/{id}/restock"), &json!({ "qty": qty }).to_string(), None).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_remembered_after_a_thousand_newer_commands_and_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, base) = common::node(dir.path(), |c| c.limits.dedup_max_entries = 8).await;
    restock(&base, "s1:sku-1", 5000).await;
    for i in 0..1000 {
        let (s, _, b) = purchase(&base, "s1:sku-1", 1, &format!("buy-{i}")).await;
        assert_eq!(s, 200, "{b}");
    }
    let seq_before = node.journal().last_seq(&tessera_journal::EntityKey::new("stock", "s1:sku-1")).await?;
    let (s, h, b) = purchase(&base, "s1:sku-1", 1, "buy-0").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(h.get("tessera-deduplicated").map(|v| v.to_str().unwrap_or_default()), Some("true"));
    assert_eq!(h.get("tessera-seq").and_then(|v| v.to_str().ok()), Some("2"), "the original seq");
    let key = tessera_journal::EntityKey::new("stock", "s1:sku-1");
    assert_eq!(node.journal().last_seq(&key).await?, seq_before, "nothing appended");
    node.shutdown().await;

    let (node, base) = common::node(dir.path(), |c| c.limits.dedup_max_entries = 8).await;
    for k in ["buy-0", "buy-500", "buy-999"] {
        let (s, h, _) = purchase(&base, "s1:sku-1", 1, k).await;
        assert_eq!(s, 200);
        assert!(h.get("tessera-deduplicated").is_some(), "{k} deduplicated after a restart");
    }
    assert_eq!(node.journal().last_seq(&key).await?, seq_before, "nothing appended after the restart");
    let (_, state) = common::get(&format!("{base}/v1/entities/stock/s1:sku-1")).await;
    assert_eq!(state["state"]["on_hand"], 4000);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_pages_follows_live_and_refuses_bad_offsets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, base) = common::node(dir.path(), |c| c.journal.shards = 16).await;
    let shards = node.config().journal.shards;
    // Entities of one shard.
    let ids: Vec<String> =
        (0..2000).map(|i| format!("s1:e{i}")).filter(|id| shard_of("stock", id, shards) == 3).take(4).collect();
    for id in &ids {
        restock(&base, id, 10).await;
    }
    let (s, page) = common::get(&format!("{base}/v1/feed/stock/3?from=1&limit=3")).await;
    assert_eq!(s, 200, "{page}");
    let events = page["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 3);
    assert_eq!(events.iter().map(|e| e["offset"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(page["next_from"], 4);
    assert_eq!(page["last"], 4);
    assert_eq!(events[0]["entity_id"], ids[0].as_str());
    assert_eq!(events[0]["type"], "Restocked");

    // Past the end: a typed error.
    let (s, err) = common::get(&format!("{base}/v1/feed/stock/3?from=99")).await;
    assert_eq!((s, err["error"]["kind"].as_str()), (416, Some("out_of_range")), "{err}");
    let (s, err) = common::get(&format!("{base}/v1/feed/nope/3")).await;
    assert_eq!((s, err["error"]["kind"].as_str()), (404, Some("unknown_entity_type")), "{err}");
    let (s, err) = common::get(&format!("{base}/v1/feed/stock/{shards}")).await;
    assert_eq!((s, err["error"]["kind"].as_str()), (400, Some("malformed")), "{err}");

    // Live: SSE from offset 4 sees the old entry and a new one.
    let resp = common::client()
        .get(format!("{base}/v1/feed/stock/3?from=4"))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    restock(&base, &ids[1], 1).await;
    let mut resp = resp;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while text.matches("event: event").count() < 2 {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await??.expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("id: 4") && text.contains("id: 5"), "{text}");
    drop(resp);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_counts_every_event_once_across_restarts_and_a_reset() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let start = |dir: std::path::PathBuf| async move {
        tessera_test_support::node::node_with(
            tessera_tests::registry(),
            &dir,
            |c| c.projections.idle_poll_ms = 200,
            |b| b.projection(view(Sold)),
        )
        .await
    };
    let (node, base) = start(dir.path().to_owned()).await;
    let ids: Vec<String> = (0..20).map(|i| format!("s1:sku-{i}")).collect();
    for id in &ids {
        restock(&base, id, 100).await;
    }
    let sell = |base: String, round: usize| {
        let ids = ids.clone();
        async move {
            let mut sold = 0u64;
            for (i, id) in ids.iter().enumerate() {
                let qty = if round < 2 { 1 + (i as u32 % 3) } else { 1 };
                let (s, _, _) = purchase(&base, id, qty, &format!("r{round}-{i}")).await;
                assert_eq!(s, 200);
                sold += u64::from(qty);
            }
            sold
        }
    };
    let mut sold = sell(base.clone(), 0).await + sell(base.clone(), 1).await;
    node.shutdown().await;
    let (n2, b2) = start(dir.path().to_owned()).await;
    // A retry of a key from before the restart is not sold twice.
    let (s, h, _) = purchase(&b2, &ids[0], 1, "r1-0").await;
    assert_eq!(s, 200);
    assert!(h.get("tessera-deduplicated").is_some());
    n2.shutdown().await;
    let (node, base) = start(dir.path().to_owned()).await;
    sold += sell(base.clone(), 2).await;
    let total = |journal: Arc<dyn tessera_journal::Journal>, shards: u32| async move {
        let mut sum = 0u64;
        for shard in 0..shards {
            sum += view_state::<u64>(journal.clone(), "sold", "stock", shard).await.unwrap_or_default().unwrap_or(0);
        }
        sum
    };
    let shards = node.config().journal.shards;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while total(node.journal().clone(), shards).await != sold {
        assert!(tokio::time::Instant::now() < deadline, "the view caught up with {sold} sold");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, list) = common::get(&format!("{base}/v1/projections")).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["projections"][0]["name"], "sold");
    let (s, one) = common::get(&format!("{base}/v1/projections/sold")).await;
    assert_eq!(s, 200, "{one}");
    assert!(one["units"].as_array().is_some_and(|u| !u.is_empty()), "{one}");
    assert_eq!(one["lag"], 0, "{one}");

    // Unknown projection; a rewind of a projection that keeps state.
    let (s, err) = common::get(&format!("{base}/v1/projections/nope")).await;
    assert_eq!((s, err["error"]["kind"].as_str()), (404, Some("unknown_projection")), "{err}");
    let (s, _, err) = common::post(&format!("{base}/v1/projections/sold/rewind"), r#"{"to": 1}"#, None).await;
    assert_eq!((s, err["error"]["kind"].as_str()), (400, Some("malformed")), "{err}");

    // A reset counts everything again, once.
    let (s, _, reset) = common::post(&format!("{base}/v1/projections/sold/reset"), "", None).await;
    assert_eq!(s, 200, "{reset}");
    assert!(reset["units"].as_u64().unwrap_or(0) > 0, "{reset}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = total(node.journal().clone(), shards).await;
        if t == sold {
            break;
        }
        assert!(t <= sold, "never more than sold ({t} > {sold})");
        assert!(tokio::time::Instant::now() < deadline, "the reset view caught up ({t} of {sold})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.shutdown().await;
    Ok(())
}

/// `?mode=async` without NATS: 202 and an invocation id, run in order per
/// entity, the outcome (reply or rejection) in the result store; a retry
/// with the key returns the same invocation; bad input is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_commands_run_in_order_and_leave_their_outcome() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, base) = common::node(dir.path(), |_| {}).await;
    let url = |c: &str| format!("{base}/v1/entities/stock/s1:a/{c}?mode=async");
    let mut ids = Vec::new();
    for qty in 1..=50u32 {
        let (s, _, b) = common::post(&url("restock"), &json!({ "qty": qty }).to_string(), None).await;
        assert_eq!(s, 202, "{b}");
        assert_eq!(b["status"], "pending");
        ids.push(b["invocation_id"].as_str().unwrap_or_default().to_owned());
    }
    // More than on hand: a rejection, stored as the outcome.
    let (s, _, b) = common::post(&url("purchase"), r#"{"qty": 100000}"#, Some("too-many")).await;
    assert_eq!(s, 202, "{b}");
    let (s, _, again) = common::post(&url("purchase"), r#"{"qty": 100000}"#, Some("too-many")).await;
    assert!(s == 200 || s == 202, "{again}");
    assert_eq!(again["invocation_id"], "too-many", "the same invocation");
    for id in &ids {
        let r = common::wait_result(&base, id, Duration::from_secs(20)).await;
        assert_eq!(r["status"], "ok", "{r}");
    }
    let r = common::wait_result(&base, "too-many", Duration::from_secs(20)).await;
    assert_eq!((r["status"].as_str(), r["status_code"].as_u64()), (Some("error"), Some(409)), "{r}");
    assert_eq!(r["body"]["error"]["code"], "insufficient_stock", "{r}");
    // In order: the journal's restocks are 1, 2, …, 50.
    let events = tessera_test_support::http::all_events(&base, "stock", "s1:a").await;
    let qty: Vec<u64> = events.iter().map(|e| e.event["Restocked"]["qty"].as_u64().unwrap_or(0)).collect();
    assert_eq!(qty, (1..=50).collect::<Vec<u64>>());

    // Bad input: unknown type, unknown command, malformed body: at once.
    let (s, _, e) = common::post(&format!("{base}/v1/entities/nope/x/restock?mode=async"), "{}", None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("unknown_entity_type")), "{e}");
    let (s, _, e) = common::post(&url("steal"), "{}", None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("unknown_command")), "{e}");
    let (s, _, e) = common::post(&url("restock"), "{not json", None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (400, Some("malformed")), "{e}");
    let (s, _, e) = common::post(&format!("{base}/v1/entities/stock/s1:a/restock?mode=later"), "{}", None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (400, Some("malformed")), "{e}");
    node.shutdown().await;
    Ok(())
}

/// A reader behind the feed's retention gets `feed_expired` (410) naming
/// what is left, over JSON and over SSE; never a silent skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_the_retention_is_told_so() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, base) = common::node(dir.path(), |c| {
        c.journal.shards = 1;
        c.journal.feed_retention_secs = 1;
    })
    .await;
    restock(&base, "s1:old", 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    restock(&base, "s1:new", 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (s, err) = loop {
        let (s, err) = common::get(&format!("{base}/v1/feed/stock/0?from=1")).await;
        if s != 200 || tokio::time::Instant::now() > deadline {
            break (s, err);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((s, err["error"]["kind"].as_str()), (410, Some("feed_expired")), "{err}");
    let (s, page) = common::get(&format!("{base}/v1/feed/stock/0?from=2")).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["expired_to"], 1);
    assert_eq!(page["events"][0]["entity_id"], "s1:new");
    let mut resp = common::client()
        .get(format!("{base}/v1/feed/stock/0?from=1"))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    let status = resp.status().as_u16();
    let mut text = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if text.contains("feed_expired") {
            break;
        }
    }
    assert!(status == 410 || text.contains("event: error") && text.contains("feed_expired"), "{status} {text}");
    drop(resp);
    node.shutdown().await;
    Ok(())
}

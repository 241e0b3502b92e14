//! The HTTP API of one in-process node: commands, functions, inspection,
//! bad input, faults, idempotency, backpressure, passivation, snapshots.

mod common;

use common::{delete, get, node, post, wait_result};
use futures::TryStreamExt;
use futures::future::join_all;
use serde_json::{Value, json};
use std::time::Duration;
use tessera_journal::{EntityKey, Journal, LocalJournal, NewEvent};

fn cmd(base: &str, entity: &str, id: &str, command: &str) -> String {
    format!("{base}/v1/entities/{entity}/{id}/{command}")
}

#[tokio::test]
async fn commands_state_events_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |_| {}).await;
    let (s, h, body) = post(&cmd(&base, "stock", "s1:a", "restock"), r#"{"qty":5}"#, None).await;
    assert_eq!((s, body), (200, json!({"on_hand": 5})));
    assert_eq!(h["tessera-seq"], "1");
    assert!(!h["tessera-invocation-id"].is_empty());
    let (s, _, body) = post(&cmd(&base, "stock", "s1:a", "purchase"), r#"{"qty":2}"#, None).await;
    assert_eq!((s, body), (200, json!({"on_hand": 3})));
    let (s, _, body) = post(&cmd(&base, "stock", "s1:a", "get"), "", None).await;
    assert_eq!((s, body), (200, json!({"on_hand": 3})));

    let (s, state) = get(&format!("{base}/v1/entities/stock/s1:a")).await;
    assert_eq!(s, 200);
    assert_eq!(state["seq"], 2);
    assert_eq!(state["state"], json!({"on_hand": 3, "sold": 2, "received": 5}));
    let (_, at1) = get(&format!("{base}/v1/entities/stock/s1:a?at=1")).await;
    assert_eq!((at1["seq"].clone(), at1["state"]["on_hand"].clone()), (json!(1), json!(5)), "time travel");

    let (s, ev) = get(&format!("{base}/v1/entities/stock/s1:a/events?from=2")).await;
    assert_eq!(s, 200);
    let events = ev["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "Purchased");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["event"], json!({"Purchased": {"qty": 2}}));
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z'));

    post(&cmd(&base, "stock", "s1:b%2Fslash", "restock"), r#"{"qty":1}"#, None).await;
    let (_, list) = get(&format!("{base}/v1/entities/stock")).await;
    let ids: Vec<_> =
        list["entities"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, vec!["s1:a", "s1:b/slash"]);
    let (_, reg) = get(&format!("{base}/v1/registry")).await;
    assert!(reg["entities"].as_array().unwrap().iter().any(|e| e["type"] == "stock"));
    node.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |c| c.http.max_body_bytes = 1024).await;
    post(&cmd(&base, "stock", "s:a", "restock"), r#"{"qty":5}"#, None).await;

    let (s, _, e) = post(&cmd(&base, "stock", "s:a", "restock"), r#"{"qty": 5"#, None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (400, Some("malformed")));
    assert!(e["error"]["message"].as_str().unwrap().contains("line 1"), "{e}");
    let (s, _, e) = post(&cmd(&base, "stock", "s:a", "restock"), r#"{"qty": "five"}"#, None).await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("invalid type"), "{e}");
    let (s, _, e) = post(&cmd(&base, "stock", "s:a", "restock"), r#"{"qty": 1, "extra": true}"#, None).await;
    assert_eq!(s, 400, "unknown fields are refused: {e}");

    let (s, _, e) = post(&cmd(&base, "nosuch", "x", "restock"), "{}", None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("unknown_entity_type")));
    let (s, _, e) = post(&cmd(&base, "stock", "s:a", "steal"), "{}", None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("unknown_command")));
    assert!(e["error"]["message"].as_str().unwrap().contains("purchase"), "lists the known commands: {e}");

    let big = format!(r#"{{"delta": 1, "reason": "{}"}}"#, "x".repeat(4096));
    let (s, _, e) = post(&cmd(&base, "stock", "s:a", "adjust"), &big, None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (413, Some("too_large")));

    let resp = common::client()
        .post(cmd(&base, "stock", "s:a", "restock"))
        .header("content-type", "text/plain")
        .body("qty=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);

    let (s, _, e) = post(&cmd(&base, "stock", "s:a", "purchase"), r#"{"qty": 99}"#, None).await;
    assert_eq!(s, 409);
    assert_eq!(e["error"]["code"], "insufficient_stock");
    assert_eq!(e["error"]["details"], json!({"requested": 99, "on_hand": 5}));

    let (s, _) = get(&format!("{base}/v1/entities/stock/s:a/events?from=abc")).await;
    assert_eq!(s, 400);
    let (s, _) = get(&format!("{base}/v1/nothing/here")).await;
    assert_eq!(s, 404);

    let (_, state) = get(&format!("{base}/v1/entities/stock/s:a")).await;
    assert_eq!((state["seq"].clone(), state["state"]["on_hand"].clone()), (json!(1), json!(5)), "nothing was written");
    for (name, class, answer) in [
        ("http-wrong-type", "a field of the wrong type, an unknown field", "400 `malformed` with serde's message"),
        (
            "http-rejection",
            "a command the entity refuses (oversell)",
            "409 `rejected` with the entity's code and details",
        ),
        ("http-query", "a query parameter that does not parse", "400 `malformed`"),
        ("http-route", "a route that does not exist", "404 `not_found`"),
    ] {
        tessera_test_support::report::bad_input(name, class, "HTTP", answer, 0);
    }
    node.shutdown().await;
}

#[tokio::test]
async fn msgpack_in_msgpack_out() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |_| {}).await;
    let body = rmp_serde::to_vec_named(&json!({"qty": 4})).unwrap();
    let resp = common::client()
        .post(cmd(&base, "stock", "m:1", "restock"))
        .header("content-type", "application/msgpack")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/msgpack");
    let reply: Value = rmp_serde::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(reply, json!({"on_hand": 4}));

    let resp = common::client()
        .post(cmd(&base, "stock", "m:1", "restock"))
        .header("content-type", "application/msgpack")
        .body(vec![0xc1, 0xff, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let err: Value = rmp_serde::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(err["error"]["kind"], "malformed", "errors come back in the request's format");
    node.shutdown().await;
}

#[tokio::test]
async fn functions_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |_| {}).await;
    let url = format!("{base}/v1/functions/product.upsert");
    let (s, _, out) = post(&url, r#"{"sku":" sku-1 ","name":"Tea","price":2.499}"#, None).await;
    assert_eq!(s, 200);
    assert_eq!(out["product"], json!({"sku": "sku-1", "name": "Tea", "price": 2.5}));
    let (s, _, e) = post(&url, r#"{"sku":"sku-1","name":"Tea","price":-1}"#, None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("invalid_price")));
    let (s, _, _) = post(&url, r#"{"sku":"sku-1"}"#, None).await;
    assert_eq!(s, 400);
    let (s, _, _) = post(&format!("{base}/v1/functions/nope"), "{}", None).await;
    assert_eq!(s, 404);
    node.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_fails_one_invocation_and_resets_one_entity() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |_| {}).await;
    let (s, _, _) = post(&cmd(&base, "flaky", "f1", "batch"), r#"{"n":3}"#, None).await;
    assert_eq!(s, 200);
    let (s, _, e) = post(&cmd(&base, "flaky", "f1", "boom"), "", None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (500, Some("handler_panicked")));
    assert!(e["error"]["message"].as_str().unwrap().contains("boom"));
    let (s, _, n) = post(&cmd(&base, "flaky", "f1", "get"), "", None).await;
    assert_eq!((s, n), (200, json!(3)), "the entity was rebuilt from its journal");
    let (s, _, _) = post(&cmd(&base, "stock", "s:a", "restock"), r#"{"qty":1}"#, None).await;
    assert_eq!(s, 200, "other entities are unharmed");
    let (_, metrics) = (0, common::client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap());
    assert!(metrics.contains("tessera_handler_panics_total 1"), "{metrics}");
    node.shutdown().await;
}

#[tokio::test]
async fn fifty_concurrent_purchases_of_twenty_sell_exactly_twenty() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |_| {}).await;
    post(&cmd(&base, "stock", "s:hot", "restock"), r#"{"qty":20}"#, None).await;
    let url = cmd(&base, "stock", "s:hot", "purchase");
    let results = join_all((0..50).map(|_| post(&url, r#"{"qty":1}"#, None))).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let rejected = results.iter().filter(|r| r.0 == 409).count();
    assert_eq!((ok, rejected), (20, 30));
    let (_, state) = get(&format!("{base}/v1/entities/stock/s:hot")).await;
    assert_eq!(state["state"]["on_hand"], 0);
    assert_eq!(state["seq"], 21);
    node.shutdown().await;
}

#[tokio::test]
async fn a_retried_idempotency_key_returns_the_original_reply_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |_| {}).await;
    let url = cmd(&base, "stock", "s:idem", "restock");
    let (s, h1, r1) = post(&url, r#"{"qty":5}"#, Some("order-1")).await;
    assert_eq!((s, r1.clone()), (200, json!({"on_hand": 5})));
    assert!(h1.get("tessera-deduplicated").is_none());
    post(&cmd(&base, "stock", "s:idem", "purchase"), r#"{"qty":1}"#, None).await;
    let (s, h2, r2) = post(&url, r#"{"qty":5}"#, Some("order-1")).await;
    assert_eq!((s, r2), (200, r1.clone()), "the original reply, not the current state");
    assert_eq!(h2["tessera-deduplicated"], "true");
    assert_eq!(h2["tessera-seq"], "1");
    let (_, state) = get(&format!("{base}/v1/entities/stock/s:idem")).await;
    assert_eq!(state["seq"], 2, "the retry appended nothing");
    node.shutdown().await;

    let (node, base) = common::node(dir.path(), |_| {}).await;
    let (s, h3, r3) = post(&cmd(&base, "stock", "s:idem", "restock"), r#"{"qty":5}"#, Some("order-1")).await;
    assert_eq!((s, r3), (200, r1), "the window is rebuilt from the journal");
    assert_eq!(h3["tessera-deduplicated"], "true");
    let (_, state) = get(&format!("{base}/v1/entities/stock/s:idem")).await;
    assert_eq!(state["seq"], 2);
    node.shutdown().await;
}

#[tokio::test]
async fn full_queues_answer_429_and_a_full_node_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |c| c.limits.entity_queue_limit = 1).await;
    post(&cmd(&base, "stock", "s:q", "restock"), r#"{"qty":1000}"#, None).await;
    let url = cmd(&base, "stock", "s:q", "purchase");
    let results = join_all((0..200).map(|_| post(&url, r#"{"qty":1}"#, None))).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + busy.len(), 200, "every request is either served or told to retry");
    assert!(!busy.is_empty(), "200 concurrent commands on one entity overflow a queue of 1");
    assert_eq!(busy[0].1["retry-after"], "1");
    let (_, state) = get(&format!("{base}/v1/entities/stock/s:q")).await;
    assert_eq!(state["state"]["on_hand"], 1000 - ok as i64, "only served commands changed the stock");
    node.shutdown().await;

    let (node, base) = common::node(dir.path(), |c| c.limits.max_in_flight = 1).await;
    let urls: Vec<String> = (0..100).map(|i| cmd(&base, "stock", &format!("s:{i}"), "restock")).collect();
    let results = join_all(urls.iter().map(|u| post(u, r#"{"qty":1}"#, None))).await;
    let unavailable: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(!unavailable.is_empty());
    assert_eq!(unavailable[0].1["retry-after"], "1");
    assert!(results.iter().all(|r| r.0 == 200 || r.0 == 503));
    node.shutdown().await;
}

#[tokio::test]
async fn idle_entities_are_passivated_and_come_back_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |c| {
        c.limits.idle_timeout_secs = 1;
        c.journal.shards = 1;
        c.limits.max_active_entities = 10;
    })
    .await;
    for i in 0..30 {
        post(&cmd(&base, "stock", &format!("s:{i}"), "restock"), r#"{"qty":2}"#, None).await;
    }
    let active = node.metrics().active_entities.get();
    assert!(active <= 10, "LRU keeps the node within its budget, got {active}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(node.metrics().active_entities.get(), 0, "idle entities passivated");
    let (s, _, r) = post(&cmd(&base, "stock", "s:3", "purchase"), r#"{"qty":1}"#, None).await;
    assert_eq!((s, r), (200, json!({"on_hand": 1})));
    node.shutdown().await;
}

#[tokio::test]
async fn snapshots_are_taken_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |c| c.journal.snapshot_every = 5).await;
    for _ in 0..12 {
        post(&cmd(&base, "stock", "s:snap", "restock"), r#"{"qty":1}"#, None).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let snap = node.journal().load_snapshot(&EntityKey::new("stock", "s:snap")).await.unwrap().expect("snapshot");
    assert_eq!(snap.seq, 10);
    node.shutdown().await;
    let (node, base) = common::node(dir.path(), |c| c.journal.snapshot_every = 5).await;
    let (_, state) = get(&format!("{base}/v1/entities/stock/s:snap")).await;
    assert_eq!((state["seq"].clone(), state["state"]["on_hand"].clone()), (json!(12), json!(12)));
    node.shutdown().await;
}

#[tokio::test]
async fn a_journal_with_events_of_a_newer_version_fails_replay_clearly_and_is_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = LocalJournal::open(dir.path()).unwrap();
        let payload = rmp_serde::to_vec_named(&json!({"Restocked": {"qty": 3}})).unwrap();
        let ev =
            |version| NewEvent { type_name: "Restocked".into(), version, payload: payload.clone(), metadata: vec![] };
        j.append(&EntityKey::new("stock", "s:new"), 0, vec![ev(1), ev(99)]).await.unwrap();
    }
    let (node, base) = node(dir.path(), |_| {}).await;
    let (s, _, e) = post(&cmd(&base, "stock", "s:new", "restock"), r#"{"qty":1}"#, None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (500, Some("replay_failed")), "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("version 99") && msg.contains("newer"), "{msg}");
    let (s, _) = get(&format!("{base}/v1/entities/stock/s:new")).await;
    assert_eq!(s, 500);
    assert_eq!(node.journal().last_seq(&EntityKey::new("stock", "s:new")).await.unwrap(), 2, "nothing appended");
    tessera_test_support::report::bad_input(
        "journal-newer-event",
        "a journal with events of a newer version than the code",
        "replay (any command or read of the entity)",
        "500 `replay_failed` naming the seq and both versions; the journal is not touched",
        0,
    );
    node.shutdown().await;
}

#[tokio::test]
async fn data_dirs_of_other_programs_or_newer_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("important.db"), b"someone else's data").unwrap();
    let config = tessera_runtime::NodeConfig::default().with(|c| {
        c.journal.data_dir = dir.path().into();
        c.http.listen = None;
    });
    let err = tessera_runtime::NodeBuilder::new(tessera_tests::registry())
        .config(config.clone())
        .build()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a Tessera journal directory"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing was written there");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tessera-journal.json"), br#"{"format":"tessera-local-journal","version":99}"#)
        .unwrap();
    let config = config.with(|c| c.journal.data_dir = dir.path().into());
    let err = tessera_runtime::NodeBuilder::new(tessera_tests::registry()).config(config).build().await.err().unwrap();
    assert!(err.to_string().contains("version 99"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let (node, _) = node(dir.path(), |_| {}).await;
    let config = tessera_runtime::NodeConfig::default().with(|c| {
        c.journal.data_dir = dir.path().into();
        c.http.listen = None;
    });
    let err = tessera_runtime::NodeBuilder::new(tessera_tests::registry()).config(config).build().await.err().unwrap();
    assert!(err.to_string().contains("in use"), "a second node on one data dir is refused: {err}");
    tessera_test_support::report::bad_input(
        "journal-foreign-dir",
        "a data dir of another program, of a newer journal format, or in use by another node",
        "node start",
        "refused at start, naming the directory and the reason; nothing written there",
        0,
    );
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |_| {}).await;
    post(&cmd(&base, "stock", "s:m", "restock"), r#"{"qty":1}"#, None).await;
    post(&cmd(&base, "stock", "s:m", "purchase"), r#"{"qty":9}"#, None).await;
    let health = common::client().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = common::client().get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "a standalone node is ready once it serves");
    let m = common::client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "tessera_requests_total{kind=\"command\",status=\"200\"} 1",
        "tessera_requests_total{kind=\"command\",status=\"409\"} 1",
        "tessera_request_duration_seconds_bucket",
        "tessera_http_request_duration_seconds_count",
        "tessera_active_entities 1",
        "tessera_journal_commit_batch_size_count",
        "tessera_journal_commit_duration_seconds_sum",
        "tessera_requests_in_flight 0",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    node.shutdown().await;
}

/// Property-based API tests: schemathesis (PyPI, `deploy/local/schemathesis.sh`)
/// reads the node's own `GET /v1/openapi.json` and sends generated requests —
/// boundary values and fuzzed ones, valid and invalid — to every operation
/// (but the never-ending SSE stream of a whole type); no response may be a
/// 5xx, and each must match the document in status, content type, headers and
/// schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let st = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/schemathesis.sh"))
        .arg("bin")
        .output()
        .expect("schemathesis.sh runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let st = String::from_utf8_lossy(&st.stdout).trim().to_owned();
    // The inventory application: the test registry's entities fail on
    // purpose (`flaky/boom` panics: a 500 by design, not the runtime's).
    let dir = tempfile::tempdir().unwrap();
    let registry = inventory::registry_with(inventory::Blobs::new(dir.path().join("blobs"))).unwrap();
    let (node, base) = tessera_test_support::node::node(registry, &dir.path().join("journal"), |c| {
        c.http.max_body_bytes = 4096;
    })
    .await;
    post(&cmd(&base, "stock", "s:1", "restock"), r#"{"qty":5}"#, None).await;
    // What an earlier run found: the runtime's own dispatcher could be reset by hand.
    let (s, _, e) = post(&format!("{base}/v1/projections/tessera.dispatch/reset"), "{}", None).await;
    assert_eq!(s, 400, "{e}");
    let report = dir.path().join("schemathesis.xml");
    let out = tokio::process::Command::new(&st)
        .args([
            "run",
            &format!("{base}/v1/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
            "--exclude-path",
            "/v1/feed/{entity_type}",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "100",
            "--workers",
            "2",
            "--seed",
            "7",
            "--generation-database",
            "none",
            "--request-timeout",
            "20",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
        ])
        .arg(&report)
        .output()
        .await
        .expect("st runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found responses that break the document:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    node.shutdown().await;
}

/// Without NATS the async queue is in the node's memory: it is bounded
/// (`limits.async_queue_limit`), past it async calls are refused with 503
/// and Retry-After, and taken again once the queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_async_queue_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |c| c.limits.async_queue_limit = 4).await;
    let url = format!("{base}/v1/functions/test.sleep?mode=async");
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let (s, h, v) = post(&url, r#"{"ms":1500}"#, None).await;
        match s {
            202 => accepted.push(v["invocation_id"].as_str().unwrap().to_owned()),
            503 => {
                refused += 1;
                assert!(h.contains_key("retry-after"), "{v}");
                assert!(v["error"]["message"].as_str().unwrap().contains("async queue is full"), "{v}");
            }
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!((accepted.len(), refused), (4, 6), "four queued, the rest refused");
    for id in &accepted {
        let row = wait_result(&base, id, Duration::from_secs(20)).await;
        assert_eq!(row["status"], "ok", "{row}");
    }
    let (s, _, v) = post(&url, r#"{"ms":1}"#, None).await;
    assert_eq!(s, 202, "taken again once drained: {v}");
    tessera_test_support::report::bad_input(
        "async-queue-full",
        "async calls past the in-process queue's bound (no NATS)",
        "HTTP async",
        "503 `unavailable` with Retry-After; taken again once it drains",
        0,
    );
    node.shutdown().await;
}

/// Where the journal still mentions `needle` (an entity id): entity ids of
/// every type (the runtime's own included: checkpoints, dispatcher state),
/// their events' payloads and metadata, snapshots and the shard feeds.
async fn mentions(j: &LocalJournal, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let has = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
    for t in j.entity_types().unwrap() {
        let ids: Vec<_> = j.entities(&t).try_collect().await.unwrap();
        for info in ids {
            let key = EntityKey::new(t.clone(), info.entity_id.clone());
            if info.entity_id.contains(needle) {
                found.push(format!("entity {key}"));
            }
            let events: Vec<_> = j.read(&key, 1..=u64::MAX).try_collect().await.unwrap();
            for e in events.iter().filter(|e| has(&e.payload) || has(&e.metadata)) {
                found.push(format!("{key} event {}", e.seq));
            }
            if j.load_snapshot(&key).await.unwrap().is_some_and(|s| has(&s.payload)) {
                found.push(format!("{key} snapshot"));
            }
        }
        for shard in 0..j.shards() {
            let feed: Vec<_> = j.events_by_shard(&t, shard, 0).try_collect().await.unwrap_or_default();
            for f in feed.iter().filter(|f| f.entity.entity_id.contains(needle)) {
                found.push(format!("feed {t}/{shard} offset {}", f.offset));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_entity_answers_404_and_after_its_grace_period_nothing_of_it_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let tweak = |c: &mut tessera_runtime::NodeConfig| {
        c.limits.delete_grace_secs = 2;
        c.journal.snapshot_every = 2;
    };
    let (node, base) = node(dir.path(), tweak).await;
    let state = |id: &str| format!("{base}/v1/entities/stock/{id}");
    post(&cmd(&base, "stock", "s:del", "restock"), r#"{"qty":10}"#, Some("restock-1")).await;
    for _ in 0..3 {
        post(&cmd(&base, "stock", "s:del", "purchase"), r#"{"qty":1}"#, None).await;
    }
    post(&cmd(&base, "stock", "s:kept", "restock"), r#"{"qty":7}"#, None).await;

    let (s, d) = delete(&state("s:del")).await;
    assert_eq!((s, d["deleted_at_seq"].as_u64()), (200, Some(5)), "{d}");
    assert!(d["purge_at"].as_str().unwrap().ends_with('Z'));
    let (s, again) = delete(&state("s:del")).await;
    assert_eq!((s, again["deleted_at_seq"].clone()), (200, d["deleted_at_seq"].clone()), "a delete is idempotent");
    let (s, e) = get(&state("s:del")).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("entity_deleted")), "{e}");
    let (s, _, e) = post(&cmd(&base, "stock", "s:del", "purchase"), r#"{"qty":1}"#, None).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("entity_deleted")));
    let (s, _, e) = post(&cmd(&base, "stock", "s:del", "restock"), r#"{"qty":10}"#, Some("restock-1")).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("entity_deleted")), "a retry of an old key too");
    let (s, e) = delete(&state("s:never-written")).await;
    assert_eq!((s, e["error"]["kind"].as_str()), (404, Some("entity_not_found")));
    let (s, _, e) = post(&cmd(&base, "stock", "s:kept", "tessera.delete"), "", None).await;
    assert_eq!(
        (s, e["error"]["kind"].as_str()),
        (404, Some("unknown_command")),
        "the runtime's command is not the client's"
    );
    assert_eq!(get(&state("s:kept")).await.0, 200, "other entities are untouched");

    // A restart within the grace period: the purge timer is durable.
    node.shutdown().await;
    let (node, base) = common::node(dir.path(), tweak).await;
    let key = EntityKey::new("stock", "s:del");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while node.journal().last_seq(&key).await.unwrap() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "not purged within 30 s of a 2 s grace period");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.metrics().purges.get(), 1);
    // The dispatcher drops the purged entity from its stored state too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (s, fresh) = get(&format!("{base}/v1/entities/stock/s:del")).await;
    assert_eq!((s, fresh["seq"].as_u64()), (200, Some(0)), "after the purge the id starts afresh: {fresh}");
    node.shutdown().await;

    let j = LocalJournal::open(dir.path()).unwrap();
    assert_eq!(mentions(&j, "s:del").await, Vec::<String>::new(), "nothing of the entity is left");
    assert_eq!(j.find_key(&key, "restock-1").await.unwrap(), None, "its idempotency keys are gone");
    assert_eq!(j.last_seq(&EntityKey::new("stock", "s:kept")).await.unwrap(), 1);
    drop(j);

    let (node, base) = common::node(dir.path(), tweak).await;
    let (s, h, r) = post(&cmd(&base, "stock", "s:del", "restock"), r#"{"qty":3}"#, Some("restock-1")).await;
    assert_eq!((s, r, h["tessera-seq"].to_str().unwrap()), (200, json!({"on_hand": 3}), "1"), "a new life");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_type_with_a_state_ttl_loses_the_entities_nobody_writes_to() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |c| {
        c.limits.state_ttl_by_type = "stock=1".into();
        c.limits.delete_grace_secs = 1;
    })
    .await;
    post(&cmd(&base, "stock", "s:idle", "restock"), r#"{"qty":1}"#, None).await;
    let idle = EntityKey::new("stock", "s:idle");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut busy_writes = 0;
    // `s:busy` is written every 200 ms: younger than its TTL at every sweep.
    while node.journal().last_seq(&idle).await.unwrap() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the idle entity was not deleted and purged in 30 s");
        let (s, _, _) = post(&cmd(&base, "stock", "s:busy", "restock"), r#"{"qty":1}"#, None).await;
        assert_eq!(s, 200, "a busy entity is never deleted by its TTL");
        busy_writes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, busy) = get(&format!("{base}/v1/entities/stock/s:busy")).await;
    assert_eq!((s, busy["seq"].as_u64()), (200, Some(busy_writes)));
    assert!(node.metrics().deletions.with_label_values(&["ttl"]).get() >= 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_shows_the_node_its_entities_and_a_journal_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = node(dir.path(), |_| {}).await;
    post(&cmd(&base, "stock", "s1:a", "restock"), r#"{"qty":10}"#, None).await;
    post(&cmd(&base, "stock", "s1:a", "purchase"), r#"{"qty":3}"#, None).await;
    post(&cmd(&base, "stock", "s1:a", "purchase"), r#"{"qty":2}"#, None).await;
    post(&cmd(&base, "stock", "s2:b", "restock"), r#"{"qty":1}"#, None).await;
    let (s, _, accepted) =
        post(&format!("{base}/v1/functions/product.upsert?mode=async"), r#"{"sku":"a","name":"A","price":1}"#, None)
            .await;
    assert_eq!(s, 202);
    let invocation = accepted["invocation_id"].as_str().unwrap().to_owned();
    wait_result(&base, &invocation, Duration::from_secs(10)).await;

    let pages = [
        ("cluster", "#/".to_owned(), vec![format!(r#"id="node-id">{}<"#, node.node_id()), "Standalone".into()]),
        ("types", "#/entities".into(), vec![r##"href="#/entities/stock""##.into(), "purchase".into()]),
        ("search", "#/entities/stock?q=s1".into(), vec![r##"href="#/entity/stock/s1%3Aa""##.into()]),
        (
            "entity",
            "#/entity/stock/s1%3Aa?at=2&from=1&to=3".into(),
            vec![
                r#"data-seq="3""#.into(),
                r#"id="last-seq">3<"#.into(),
                "Purchased".into(),
                // The state at seq 2, and the diff from 1 to 3.
                r#""on_hand": 7"#.into(),
                "<code>.on_hand</code>".into(),
            ],
        ),
        ("projections", "#/projections".into(), vec!["tessera.dispatch".into()]),
        (
            "invocation",
            format!("#/invocations/{invocation}"),
            vec!["status <b>ok</b> · function:product.upsert".into()],
        ),
        ("autoscaler", "#/autoscaler".into(), vec!["not the leader".into()]),
    ];
    for (name, route, wants) in pages {
        let url = format!("{base}/ui/{route}");
        let dom = common::console_page(&url, name).await;
        assert!(
            dom.contains(r#"data-page=""#) && !dom.contains(r#"data-page="error""#),
            "{name}: the page did not render: {dom}"
        );
        for want in wants {
            assert!(dom.contains(&want), "{name} ({url}): `{want}` not in the page: {dom}");
        }
    }
    node.shutdown().await;
}

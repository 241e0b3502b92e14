//! HTTP helpers, and the typed bodies a node answers with.

use std::time::Duration;

use serde_json::Value;
use tessera_runtime::wire::{ErrorBody, EventBody, EventsBody};

/// An HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// POSTs JSON; returns status, headers and the JSON body (Null if none).
pub async fn post(url: &str, body: &str, key: Option<&str>) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client().post(url).header("content-type", "application/json").body(body.to_owned());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// DELETEs; the JSON answer.
pub async fn delete(url: &str) -> (u16, Value) {
    let resp = client().delete(url).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// GETs JSON.
pub async fn get(url: &str) -> (u16, Value) {
    let resp = client().get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls `GET /v1/invocations/{id}` until the row is final.
pub async fn wait_result(base: &str, id: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (s, v) = get(&format!("{base}/v1/invocations/{id}")).await;
        if s == 200 {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "no final result for {id} in {within:?}: {s} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event of an entity, read page by page (`GET …/events`).
pub async fn all_events(base: &str, entity_type: &str, entity_id: &str) -> Vec<EventBody> {
    let mut out = Vec::new();
    let mut from = 1u64;
    loop {
        let url = format!("{base}/v1/entities/{entity_type}/{}/events?from={from}&limit=10000", segment(entity_id));
        let resp = client().get(url).send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 200);
        let page: EventsBody = resp.json().await.expect("an events body");
        out.extend(page.events);
        match page.next_from {
            Some(n) => from = n,
            None => return out,
        }
    }
}

/// An error body in JSON or MessagePack.
pub fn error_body(bytes: &[u8], msgpack: bool) -> ErrorBody {
    if msgpack { rmp_decode(bytes) } else { serde_json::from_slice(bytes).expect("a JSON error body") }
}

fn rmp_decode(bytes: &[u8]) -> ErrorBody {
    let v = tessera_entities::codec::msgpack_to_json(bytes).expect("MessagePack");
    serde_json::from_value(v).expect("a MessagePack error body")
}

/// Percent-encodes a path segment.
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

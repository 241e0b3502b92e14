//! Jaeger for the trace tests: a real trace backend (Jaeger v2 all-in-one,
//! in-memory storage, started by `deploy/local/jaeger.sh`). Nodes export to
//! its OTLP/HTTP port; a test reads a trace back from its query API, so what
//! it checks is what an operator would see in Jaeger.
//!
//! `TESSERA_JAEGER_OTLP` (default `http://127.0.0.1:4318`) and
//! `TESSERA_JAEGER_QUERY` (default `http://127.0.0.1:16686`) point elsewhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

/// One span of a trace, as Jaeger stored it.
#[derive(Debug, Clone)]
pub struct Span {
    pub span_id: String,
    /// The span it is a child of (in this trace or, for the first span of a
    /// process, the caller's span from `traceparent`); empty for a root.
    pub parent_span_id: String,
    pub name: String,
    /// The exporting process's `service.instance.id` (the node id).
    pub instance: String,
    /// Tags, as strings.
    pub attributes: HashMap<String, String>,
}

/// The Jaeger the tests use.
pub struct Jaeger {
    /// Where nodes send spans (`--otlp-endpoint`).
    pub endpoint: String,
    query: String,
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
}

fn tags(v: &Value) -> HashMap<String, String> {
    v.as_array().into_iter().flatten().map(|t| (text(&t["key"]), text(&t["value"]))).collect()
}

impl Jaeger {
    /// The local Jaeger; panics with what to run when it does not answer.
    pub async fn connect() -> Self {
        let endpoint = std::env::var("TESSERA_JAEGER_OTLP").unwrap_or_else(|_| "http://127.0.0.1:4318".into());
        let query = std::env::var("TESSERA_JAEGER_QUERY").unwrap_or_else(|_| "http://127.0.0.1:16686".into());
        let up = reqwest::get(format!("{query}/api/services")).await.is_ok_and(|r| r.status().is_success());
        assert!(up, "no Jaeger query API at {query}: start one with deploy/local/jaeger.sh start");
        Self { endpoint, query }
    }

    /// A trace id no other test run used (Jaeger keeps every run's spans).
    pub fn new_trace_id() -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let n = N.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:08x}{:08x}", nanos as u64, std::process::id(), n as u32)
    }

    /// The spans of `trace_id` Jaeger holds so far (none while it has none).
    pub async fn trace(&self, trace_id: &str) -> Vec<Span> {
        let r = reqwest::get(format!("{}/api/traces/{trace_id}", self.query)).await.expect("Jaeger query API");
        if r.status().as_u16() == 404 {
            return vec![];
        }
        let v: Value = r.json().await.expect("a Jaeger trace");
        let mut out = Vec::new();
        for t in v["data"].as_array().into_iter().flatten() {
            for s in t["spans"].as_array().into_iter().flatten() {
                let process = &t["processes"][text(&s["processID"])];
                let parent = s["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .map(|r| text(&r["spanID"]))
                    .unwrap_or_default();
                out.push(Span {
                    span_id: text(&s["spanID"]),
                    parent_span_id: parent,
                    name: text(&s["operationName"]),
                    instance: tags(&process["tags"]).remove("service.instance.id").unwrap_or_default(),
                    attributes: tags(&s["tags"]),
                });
            }
        }
        out
    }
}

//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tessera_runtime::{NodeBuilder, NodeConfig, Server};
use tokio::io::{AsyncBufReadExt, BufReader};

/// An in-process node on `dir` with HTTP on a free port; `tweak` adjusts the config.
pub async fn node(dir: &Path, tweak: impl FnOnce(&mut NodeConfig)) -> (Server, String) {
    let mut config = NodeConfig::default().with(|c| {
        c.journal.data_dir = dir.to_path_buf();
        c.http.listen = Some("127.0.0.1:0".into());
    });
    tweak(&mut config);
    let node = NodeBuilder::new(tessera_tests::registry()).config(config).build().await.expect("node starts");
    let base = format!("http://{}", node.http_addr().expect("http"));
    (node, base)
}

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

/// GETs JSON.
pub async fn get(url: &str) -> (u16, Value) {
    let resp = client().get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The path of the test node binary.
pub fn test_node_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera-test-node")
}

/// A node running as a child process.
pub struct NodeProcess {
    pub child: tokio::process::Child,
    pub base: String,
}

impl NodeProcess {
    /// Starts `tessera-test-node serve --data-dir DIR --http 127.0.0.1:0 EXTRA...`
    /// and waits until it serves.
    pub async fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(dir, extra, &[]).await
    }

    /// Like [`NodeProcess::start`], with extra environment variables.
    pub async fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = dir.to_str().unwrap_or_default();
        let mut args = vec!["serve", "--data-dir", dir, "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_command(&args, env).await
    }

    /// Runs `tessera-test-node ARGS...` and waits for its `serving http://ADDR` line.
    pub async fn start_command(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(test_node_bin())
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let base = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("serving http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    return Ok(format!("http://{addr}"));
                }
                eprintln!("node: {line}");
            }
            anyhow::bail!("node exited before serving")
        })
        .await??;
        let echo = std::env::var_os("TESSERA_TEST_NODE_LOGS").is_some();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("node: {line}");
                }
            }
        });
        Ok(Self { child, base })
    }

    /// SIGKILL, then wait for the process to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().await.expect("wait")
    }
}

/// The NATS server for tests: `TESSERA_NATS_URL`, or one started (once,
/// idempotently) by the project's own `deploy/local/nats.sh`.
pub fn nats_url() -> String {
    if let Ok(url) = std::env::var("TESSERA_NATS_URL") {
        return url;
    }
    static STARTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STARTED
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/nats.sh");
            let status = std::process::Command::new("bash").arg(&script).arg("start").status().expect("run nats.sh");
            assert!(status.success(), "deploy/local/nats.sh start failed");
            "nats://127.0.0.1:4222".to_owned()
        })
        .clone()
}

/// A subject prefix no other test uses.
pub fn unique_prefix() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!(
        "t{}x{}x{}",
        t % 1_000_000_000_000,
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
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

/// `scylla://user:password@host:port` of the test Cassandra: `TESSERA_SCYLLA_URL`,
/// or one started (once, idempotently) by the project's own `deploy/local/cassandra.sh`.
pub fn scylla_server() -> String {
    if let Ok(url) = std::env::var("TESSERA_SCYLLA_URL") {
        return url.trim_end_matches('/').to_owned();
    }
    static STARTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STARTED
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/cassandra.sh");
            let status =
                std::process::Command::new("bash").arg(&script).arg("start").status().expect("run cassandra.sh");
            assert!(status.success(), "deploy/local/cassandra.sh start failed");
            "scylla://cassandra:cassandra@127.0.0.1:9042".to_owned()
        })
        .clone()
}

/// A keyspace name no other test uses.
pub fn unique_keyspace() -> String {
    unique_prefix().replace('x', "_")
}
pub mod cluster;

/// Bad entity commands, each with the error kind every edge must answer.
pub struct BadCommand {
    pub what: &'static str,
    pub entity_type: &'static str,
    pub entity_id: &'static str,
    pub command: &'static str,
    pub content_type: &'static str,
    pub key: Option<&'static str>,
    pub body: Vec<u8>,
    pub kind: &'static str,
}

/// The cases (for a node whose `max_body_bytes` is 256).
pub fn bad_commands() -> Vec<BadCommand> {
    let ok = |what, kind| BadCommand {
        what,
        entity_type: "stock",
        entity_id: "s:contract",
        command: "restock",
        content_type: "application/json",
        key: None,
        body: br#"{"qty":1}"#.to_vec(),
        kind,
    };
    vec![
        BadCommand { entity_type: "stok", ..ok("an unknown entity type", "unknown_entity_type") },
        BadCommand { command: "steal", ..ok("an unknown command", "unknown_command") },
        BadCommand { body: b"{oops".to_vec(), ..ok("a body that is not JSON", "malformed") },
        BadCommand { body: vec![0xc1], content_type: "application/msgpack", ..ok("bad MessagePack", "malformed") },
        BadCommand { key: Some("has space"), ..ok("a bad idempotency key", "malformed") },
        BadCommand { key: Some("dots.in.key"), ..ok("a key that is not subject-safe", "malformed") },
        BadCommand { content_type: "text/plain", ..ok("an unknown content type", "unsupported_media_type") },
        BadCommand {
            body: format!(r#"{{"qty":1,"pad":"{}"}}"#, "x".repeat(300)).into_bytes(),
            ..ok("a body over the limit", "too_large")
        },
        BadCommand { entity_id: "s:\u{7f}", ..ok("an entity id with a control character", "malformed") },
    ]
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

/// Sends a bad command over HTTP; returns status and error kind.
pub async fn http_bad_command(base: &str, c: &BadCommand) -> (u16, String) {
    let url = format!("{base}/v1/entities/{}/{}/{}", c.entity_type, segment(c.entity_id), c.command);
    let mut req = client().post(url).header("content-type", c.content_type).body(c.body.clone());
    if let Some(k) = c.key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let msgpack = resp.headers().get("content-type").is_some_and(|v| v.as_bytes() == b"application/msgpack");
    let bytes = resp.bytes().await.expect("body");
    (status, error_body(&bytes, msgpack).error.kind)
}

/// An error body in JSON or MessagePack.
pub fn error_body(bytes: &[u8], msgpack: bool) -> tessera_runtime::wire::ErrorBody {
    if msgpack {
        rmp_serde::from_slice(bytes).expect("a MessagePack error body")
    } else {
        serde_json::from_slice(bytes).expect("a JSON error body")
    }
}

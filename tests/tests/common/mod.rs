//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tessera_runtime::{Node, NodeBuilder, NodeConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

/// An in-process node on `dir` with HTTP on a free port; `tweak` adjusts the config.
pub async fn node(dir: &Path, tweak: impl FnOnce(&mut NodeConfig)) -> (Node, String) {
    let mut config =
        NodeConfig { data_dir: dir.to_path_buf(), http: Some("127.0.0.1:0".into()), ..NodeConfig::default() };
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
        let mut child = tokio::process::Command::new(test_node_bin())
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--http", "127.0.0.1:0"])
            .args(extra)
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
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, base })
    }

    /// SIGKILL, then wait for the process to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

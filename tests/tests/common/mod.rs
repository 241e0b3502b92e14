//! Helpers of the integration tests: the shared test support
//! (`tessera-test-support`: servers, names, nodes, processes, HTTP) bound to
//! this crate's registry and its `tessera-test-node` binary.
#![allow(dead_code, unused_imports)]

use std::path::Path;

use tessera_runtime::{NodeConfig, Server};
pub use tessera_test_support::http::{client, delete, error_body, get, post, segment, wait_result};
pub use tessera_test_support::process::NodeProcess;
pub use tessera_test_support::servers::{nats_url, scylla_server, unique_keyspace, unique_prefix};

/// An in-process node over the test registry on `dir` with HTTP on a free
/// port; `tweak` adjusts the config.
pub async fn node(dir: &Path, tweak: impl FnOnce(&mut NodeConfig)) -> (Server, String) {
    tessera_test_support::node::node(tessera_tests::registry(), dir, tweak).await
}

/// The path of the test node binary.
pub fn test_node_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera-test-node")
}

/// `tessera-test-node` as a child process.
pub trait TestNode: Sized {
    /// Starts `tessera-test-node serve --data-dir DIR --http 127.0.0.1:0 EXTRA...`
    /// and waits until it serves.
    async fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<NodeProcess> {
        NodeProcess::serve(test_node_bin(), dir, extra, &[]).await
    }
    /// Like [`TestNode::start`], with extra environment variables.
    async fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<NodeProcess> {
        NodeProcess::serve(test_node_bin(), dir, extra, env).await
    }
    /// Runs `tessera-test-node ARGS...` and waits for its `serving http://ADDR` line.
    async fn start_command(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<NodeProcess> {
        NodeProcess::command(test_node_bin(), args, env).await
    }
}

impl TestNode for NodeProcess {}

pub mod cluster;
pub mod jaeger;

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

/// Debian's Chromium, headless, on `url`: the DOM once the page's fetches
/// are done, its console lines, and a screenshot when `png` is given.
pub fn chromium(url: &str, png: Option<&std::path::Path>) -> (String, Vec<String>) {
    let bin = std::env::var("TESSERA_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(&bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,860",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match png {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().unwrap_or_else(|e| {
        panic!("{bin}: {e} — the console test needs Debian's chromium (deploy/local/test-all.sh installs it)")
    });
    let console =
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_owned).collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// A console page as a user sees it: its DOM once its fetches are done,
/// checked to have written nothing to the browser console, and a screenshot
/// of it saved as `target/ui-screens/console-{shot}.png`.
pub async fn console_page(url: &str, shot: &str) -> String {
    let (dom, console) = tokio::task::spawn_blocking({
        let url = url.to_owned();
        move || chromium(&url, None)
    })
    .await
    .unwrap();
    assert_eq!(console, Vec::<String>::new(), "{url}: console messages");
    let (url, png) = (url.to_owned(), screenshots().join(format!("console-{shot}.png")));
    tokio::task::spawn_blocking(move || chromium(&url, Some(&png))).await.unwrap();
    dom
}

/// Where the console tests put their screenshots (`target/ui-screens`).
pub fn screenshots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screens");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

//! The CLI as a user runs it: `send`, `call`, and `journal ...` on a data dir
//! (node stopped) and through a running node's HTTP address.

mod common;

use std::process::Output;

use serde_json::{Value, json};

fn run(args: &[&str]) -> Output {
    std::process::Command::new(common::test_node_bin()).args(args).env("RUST_LOG", "warn").output().expect("runs")
}

fn lines(o: &Output) -> Vec<Value> {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_call_and_inspect_over_http_and_on_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    let (node, base) = common::node(dir.path(), |_| {}).await;
    let addr = base.trim_start_matches("http://").to_owned();

    let out = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let a = run(&["send", "--http", &addr, "stock", "s:1", "restock", r#"{"qty":7}"#]);
            let b =
                run(&["send", "--http", &addr, "stock", "s:1", "purchase", r#"{"qty":2}"#, "--idempotency-key", "k1"]);
            let c = run(&["send", "--http", &addr, "stock", "s:1", "purchase", r#"{"qty":99}"#]);
            let d = run(&["call", "--http", &addr, "product.upsert", r#"{"sku":"a","name":"A","price":1}"#]);
            (a, b, c, d)
        }
    })
    .await
    .unwrap();
    assert_eq!(lines(&out.0), vec![json!({"on_hand": 7})]);
    assert_eq!(lines(&out.1), vec![json!({"on_hand": 5})]);
    assert!(!out.2.status.success(), "a rejection exits non-zero");
    assert!(String::from_utf8_lossy(&out.2.stderr).contains("insufficient_stock"));
    assert_eq!(lines(&out.3)[0]["product"]["sku"], "a");

    let via_http = tokio::task::spawn_blocking({
        let addr = addr.clone();
        let d = d.clone();
        move || {
            (
                run(&["journal", "events", "stock", "s:1", "--http", &addr]),
                run(&["journal", "state", "stock", "s:1", "--at", "1", "--http", &addr]),
                run(&["journal", "entities", "stock", "--http", &addr]),
                run(&["journal", "tail", "stock", "s:1", "--limit", "2", "--http", &addr]),
                run(&["journal", "events", "stock", "s:1", "--data-dir", &d]),
            )
        }
    })
    .await
    .unwrap();
    let events = lines(&via_http.0);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["type"], "Purchased");
    assert_eq!(events[1]["invocation_id"], "k1");
    assert_eq!(lines(&via_http.1)[0]["state"]["on_hand"], 7);
    assert_eq!(lines(&via_http.2)[0]["id"], "s:1");
    assert_eq!(lines(&via_http.3).len(), 2);
    assert!(!via_http.4.status.success(), "the data dir is locked while the node runs");
    assert!(String::from_utf8_lossy(&via_http.4.stderr).contains("--http"), "and the error says what to do instead");
    node.shutdown().await;

    let export = dir.path().join("out.jsonl");
    let e = export.to_str().unwrap().to_owned();
    let offline = tokio::task::spawn_blocking(move || {
        (
            run(&["journal", "events", "stock", "s:1", "--from", "2", "--data-dir", &d]),
            run(&["journal", "state", "stock", "s:1", "--data-dir", &d]),
            run(&["journal", "state", "stock", "s:1", "--at", "1", "--data-dir", &d]),
            run(&["journal", "export", "stock", "--out", &e, "--data-dir", &d]),
            run(&["journal", "events", "stock", "s:1", "--data-dir", "/nonexistent/tessera"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(lines(&offline.0).len(), 1);
    assert_eq!(lines(&offline.1)[0]["state"], json!({"on_hand": 5, "sold": 2, "received": 7}));
    assert_eq!(lines(&offline.2)[0]["state"]["on_hand"], 7, "time travel on the data dir");
    assert!(offline.3.status.success());
    let exported = std::fs::read_to_string(&export).unwrap();
    let kinds: Vec<String> = exported
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["event", "event", "entity"], "a header, the two events, the entity's checksum line");
    assert!(exported.contains(r#""entity_id":"s:1""#));
    // `--shard` keeps the entities of those shards and nothing else.
    let shards: u32 = serde_json::from_str::<Value>(exported.lines().next().unwrap()).unwrap()["shards"]
        .as_u64()
        .unwrap()
        .try_into()
        .unwrap();
    let home = tessera_journal::shard_of("stock", "s:1", shards);
    for (shard, holds) in [(home, true), ((home + 1) % shards, false)] {
        let (d, e) = (dir.path().to_str().unwrap().to_owned(), export.to_str().unwrap().to_owned());
        let o = run(&["journal", "export", "stock", "--shard", &shard.to_string(), "--out", &e, "--data-dir", &d]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read_to_string(&export).unwrap().contains(r#""entity_id":"s:1""#), holds, "shard {shard}");
    }
    assert!(!offline.4.status.success());
    assert!(String::from_utf8_lossy(&offline.4.stderr).contains("no Tessera journal"));
}

#[test]
fn autoscaler_simulate_writes_logs_plots_and_a_comparison() {
    let out = tempfile::tempdir().unwrap();
    let traces = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster/traces");
    let step = traces.join("step.csv");
    let spike = traces.join("spike.csv");
    let o = run(&[
        "autoscaler",
        "simulate",
        "--trace",
        step.to_str().unwrap(),
        spike.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("step") && table.contains("naive") && table.contains("tessera"), "{table}");
    for f in ["step.svg", "step-decisions.csv", "step-summary.json", "spike.svg", "summary.json"] {
        assert!(out.path().join(f).exists(), "{f} written");
    }
    let svg = std::fs::read_to_string(out.path().join("step.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    let summary: Value = serde_json::from_slice(&std::fs::read(out.path().join("step-summary.json")).unwrap()).unwrap();
    assert!(summary["tessera"]["node_seconds"].as_f64().unwrap() > 0.0, "{summary}");
    let log = std::fs::read_to_string(out.path().join("step-decisions.csv")).unwrap();
    assert!(log.starts_with("time_s,policy,from,to,reason\n") && log.contains(",tessera,"), "{log}");

    // Bad input: a clear error naming the line.
    let bad = out.path().join("bad.csv");
    std::fs::write(&bad, "time_s,request_rate,service_time_ms\n0,10,5\n1,lots,5\n").unwrap();
    let o = run(&["autoscaler", "simulate", "--trace", bad.to_str().unwrap(), "--out", out.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 3") && err.contains("bad.csv"), "{err}");
}

#[test]
fn cluster_commands_say_clearly_when_there_is_no_cluster() {
    let o = run(&["cluster", "status", "--nats", "nats://127.0.0.1:1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot connect to NATS at nats://127.0.0.1:1"));
    let prefix = common::unique_prefix();
    let o = run(&["cluster", "locate", "stock", "s:1", "--nats", &common::nats_url(), "--nats-prefix", &prefix]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no cluster bucket") && err.contains("_CLUSTER"), "{err}");
}

/// Every `curl` example in the README, run as written (only the address
/// changed) against a node: each answers 2xx. `curl -d` sends
/// `application/x-www-form-urlencoded` when no type is given; the node reads
/// such a body as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_curl_examples_work_as_written() {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README.md");
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in readme.lines() {
        let line = line.trim_end();
        if pending.is_empty() && !line.trim_start().starts_with("curl ") {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    // Inference runs elsewhere (it needs the model); placeholders are not runnable.
    commands.retain(|c| !c.contains("8090") && !c.contains('<'));
    assert!(commands.len() >= 8, "found the README's curl examples: {commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = common::node(dir.path(), |_| {}).await;
    let addr = base.trim_start_matches("http://").to_owned();
    for c in &commands {
        let runnable = c.trim_start().replacen("curl ", "curl -s -w '\\n%{http_code}' ", 1);
        let runnable =
            ["localhost:8080", "localhost:8081", "localhost:8082"].iter().fold(runnable, |r, a| r.replace(a, &addr));
        let out = tokio::process::Command::new("bash").arg("-c").arg(&runnable).output().await.expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let code = text.lines().last().unwrap_or_default();
        assert!(code.starts_with('2'), "README example `{c}` answered {code}: {text}");
    }
    node.shutdown().await;
}

/// `feed tail` prints committed events as JSON lines (and a clear error
/// for a reader behind nothing it can see); `projection list|status|rewind|reset`
/// through a node that runs a projection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_tail_and_projection_commands_through_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let (node, base) = tessera_test_support::node::node_with(
        tessera_tests::registry(),
        dir.path(),
        |c| c.journal.shards = 4,
        |b| {
            let mut b = b;
            for p in tessera_tests::projections() {
                b = b.projection(p);
            }
            b
        },
    )
    .await;
    let addr = base.trim_start_matches("http://").to_owned();
    for i in 0..3 {
        let (s, _, _) = common::post(&format!("{base}/v1/entities/stock/s1:t{i}/restock"), r#"{"qty": 1}"#, None).await;
        assert_eq!(s, 200);
    }
    let shard = tessera_journal::shard_of("stock", "s1:t0", 4).to_string();

    // Tail one shard from its start: the events already there, then stop it.
    let mut tail = tokio::process::Command::new(common::test_node_bin())
        .args(["feed", "tail", "--http", &addr, "--type", "stock", "--shard", &shard, "--from", "1"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let mut reader = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(std::time::Duration::from_secs(10), reader.next_line()).await.unwrap().unwrap();
    let first: Value = serde_json::from_str(&line.expect("a line")).unwrap();
    assert_eq!((first["offset"].as_u64(), first["entity_type"].as_str()), (Some(1), Some("stock")), "{first}");
    assert_eq!(first["type"], "Restocked");
    let _ = tail.kill().await;

    let out = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let status = loop {
                let s = run(&["projection", "status", "--http", &addr, "event-count"]);
                let text = String::from_utf8_lossy(&s.stdout).to_string();
                if text.contains("stock") || std::time::Instant::now() > deadline {
                    break s;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            };
            (
                run(&["projection", "list", "--http", &addr]),
                status,
                run(&["projection", "rewind", "--http", &addr, "event-count", "--to", "1"]),
                run(&["projection", "reset", "--http", &addr, "event-count", "--type", "stock"]),
                run(&["projection", "status", "--http", &addr, "nope"]),
            )
        }
    })
    .await
    .unwrap();
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.0.status.success() && text(&out.0).contains("event-count"), "{}", text(&out.0));
    assert!(out.1.status.success() && text(&out.1).contains("stock"), "{}", text(&out.1));
    assert!(!out.2.status.success(), "a projection that keeps state cannot be rewound");
    assert!(
        String::from_utf8_lossy(&out.2.stderr).contains("reset, not rewound"),
        "{}",
        String::from_utf8_lossy(&out.2.stderr)
    );
    assert!(out.3.status.success() && text(&out.3).contains("reset"), "{}", text(&out.3));
    assert!(!out.4.status.success());
    assert!(
        String::from_utf8_lossy(&out.4.stderr).contains("unknown_projection"),
        "{}",
        String::from_utf8_lossy(&out.4.stderr)
    );
    node.shutdown().await;
}

/// The first `n` log lines a node writes to stderr (not a terminal here).
fn first_log_lines(extra: &[&str], env: &[(&str, &str)], n: usize) -> Vec<String> {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(common::test_node_bin());
    cmd.args(["serve", "--journal", "memory", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starts");
    let lines: Vec<String> =
        std::io::BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok).take(n).collect();
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn logs_have_no_colour_codes_off_a_terminal_and_can_be_json() {
    let text = first_log_lines(&[], &[], 2);
    assert!(!text.is_empty(), "the node logs at start");
    assert!(text.iter().all(|l| !l.contains('\u{1b}')), "no ANSI escapes in a log file: {text:?}");

    for (extra, env) in [(vec!["--log-format", "json"], vec![]), (vec![], vec![("TESSERA_LOG_FORMAT", "json")])] {
        let json = first_log_lines(&extra, &env, 2);
        assert!(!json.is_empty());
        for l in &json {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(), "{v}");
        }
    }

    // A bad value is the command line's clear error, not a silent default.
    let out = std::process::Command::new(common::test_node_bin())
        .args(["serve", "--journal", "memory", "--log-format", "xml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown log format `xml`"), "{out:?}");
}

/// deploy/k8s: every overlay rendered with kustomize and validated against
/// the Kubernetes schemas (strict), the ScyllaCluster against its schema,
/// the container file's structure (deploy/k8s/validate.sh); and the
/// ConfigMap's tessera.toml is a configuration a node accepts.
#[test]
fn the_kubernetes_manifests_and_their_node_config_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join("deploy/k8s/validate.sh")).output().expect("runs validate.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for overlay in ["one-node", "three-nodes"] {
        assert!(stdout.lines().any(|l| l.contains(&format!("{overlay}.yaml")) && l.ends_with("valid")), "{stdout}");
    }

    let config = root.join("deploy/k8s/base/tessera.toml");
    let out = std::process::Command::new(common::test_node_bin())
        .args(["serve", "--print-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("kubernetes"), "the autoscaler set from the file: {printed}");
}

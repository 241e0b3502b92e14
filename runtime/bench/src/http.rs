//! HTTP end to end, driven by an external load generator (`wrk`, from
//! Debian's packages; `deploy/local/bench-http.sh` installs it): durable
//! `add` commands on the local journal over 10 000 counters at 64 and 256
//! connections and on one hot counter, beside a raw axum echo server (same
//! axum, same route shape, same runtime, same allocator, no work) under the
//! same generator. While each load runs, a light probe (one request every
//! 10 ms, on its own connection) measures what a caller beside the load
//! sees. The generator shares the machine's cores with the node, so its
//! CPU time is reported beside the node's.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_runtime::NodeBuilder;
use tessera_runtime::config::JournalKind;

use super::runs::{bench_config, ratio};
use super::{cpu_secs, histogram, registry, summary};

/// The wrk script: POST `{"by":1}` to a random counter of `ENTITIES`; at the
/// end, one JSON line with its figures (`wrk/report.lua`, shared with the
/// peer comparison).
const SCRIPT: &str = concat!(
    r#"
local entities = tonumber(os.getenv("ENTITIES") or "10000")
wrk.method = "POST"
wrk.body = '{"by":1}'
wrk.headers["Content-Type"] = "application/json"
request = function()
  local id = math.random(0, entities - 1)
  return wrk.format(nil, "/v1/entities/bench-counter/e-" .. id .. "/add")
end
"#,
    include_str!("../wrk/report.lua")
);

/// Runs wrk for `secs` at `connections` against `addr` (counters `0..entities`),
/// with the probe beside it; returns wrk's figures, the probe's, and the
/// CPU seconds of the generator and of this process.
async fn load(addr: &str, connections: u64, entities: u64, secs: u64, script: &Path) -> anyhow::Result<Value> {
    let self_cpu = cpu_secs("self");
    let mut wrk = tokio::process::Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s"), "--timeout", "10s", "-s"])
        .arg(script)
        .arg(format!("http://{addr}"))
        .env("ENTITIES", entities.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = wrk.id().map(|p| p.to_string()).unwrap_or_default();
    let probe = tokio::spawn(probe(addr.to_owned(), entities, Duration::from_secs(secs)));
    let mut wrk_cpu = 0.0;
    let out = loop {
        tokio::select! {
            status = wrk.wait() => { status?; break wrk.wait_with_output().await?; }
            () = tokio::time::sleep(Duration::from_millis(100)) => wrk_cpu = cpu_secs(&pid),
        }
    };
    let node_cpu = cpu_secs("self") - self_cpu;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .ok_or_else(|| anyhow::anyhow!("wrk printed no figures: {text}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    let mut w: Value = serde_json::from_str(line)?;
    let secs_run = w["duration_us"].as_f64().unwrap_or(1.0) / 1e6;
    w["requests_per_sec"] = json!((w["requests"].as_f64().unwrap_or(0.0) / secs_run).round());
    let probe = probe.await??;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    eprintln!(
        "{addr} c{connections} e{entities}: {} req/s, p99 {} us, p99.9 {} us, max {} us (probe p99 {} us); wrk cpu {wrk_cpu:.1}s, node {node_cpu:.1}s",
        w["requests_per_sec"], w["p99_us"], w["p999_us"], w["max_us"], probe["p99_us"]
    );
    Ok(json!({
        "connections": connections, "entities": entities, "seconds": secs,
        "wrk": w, "probe": probe,
        "cpu": {
            "generator_secs": (wrk_cpu * 10.0).round() / 10.0,
            "server_process_secs": (node_cpu * 10.0).round() / 10.0,
            "generator_share_of_machine": ((wrk_cpu / (secs_run * cores)) * 1000.0).round() / 1000.0,
            "server_share_of_machine": ((node_cpu / (secs_run * cores)) * 1000.0).round() / 1000.0,
        },
    }))
}

/// One request every 10 ms for `dur`, on its own connection; latency summary.
async fn probe(addr: String, entities: u64, dur: Duration) -> anyhow::Result<Value> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
    let mut h = histogram();
    let (started, mut i, mut failed) = (Instant::now(), 0u64, 0u64);
    // Let the load start first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while started.elapsed() + Duration::from_millis(500) < dur {
        let url = format!("http://{addr}/v1/entities/bench-counter/e-{}/add", (i * 7919) % entities);
        let t = Instant::now();
        let r = client.post(url).header("content-type", "application/json").body(r#"{"by":1}"#).send().await;
        match r {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
            _ => failed += 1,
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = summary(&h);
    s["failed"] = json!(failed);
    Ok(s)
}

/// The raw baseline: an axum server on the same route shape that answers
/// each POST with its body, after spinning on the CPU for `burn` (zero for
/// the plain echo; the CPU-matched echo spends what the node spends per
/// request, so it tells what any server that busy sees under this
/// generator on this machine).
async fn echo_server(burn: Duration) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/entities/{t}/{id}/{cmd}",
        post(move |body: axum::body::Bytes| async move {
            if !burn.is_zero() {
                let started = Instant::now();
                while started.elapsed() < burn {
                    std::hint::spin_loop();
                }
            }
            ([("content-type", "application/json")], body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    // As the node's listener: no Nagle delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// Whether wrk is installed.
pub(super) fn wrk_installed() -> bool {
    std::process::Command::new("wrk").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

pub(super) async fn run(secs: u64, scratch: &Path) -> anyhow::Result<Value> {
    anyhow::ensure!(wrk_installed(), "the http benchmark needs wrk (deploy/local/bench-http.sh installs it)");
    let dir = tempfile::Builder::new().prefix("tessera-bench-http-").tempdir_in(scratch)?;
    let script = dir.path().join("add.lua");
    std::fs::write(&script, SCRIPT)?;

    let (echo_addr, echo) = echo_server(Duration::ZERO).await?;
    let echo64 = load(&echo_addr, 64, 10_000, secs, &script).await?;
    let echo256 = load(&echo_addr, 256, 10_000, secs, &script).await?;
    echo.abort();

    let config = bench_config(JournalKind::Local, &dir.path().join("node")).with(|c| {
        c.http.listen = Some("127.0.0.1:0".into());
        c.limits.max_in_flight = 100_000;
    });
    let server = NodeBuilder::new(registry()).config(config).build().await?;
    let addr = server.http_addr().ok_or_else(|| anyhow::anyhow!("the node serves no HTTP"))?.to_string();
    // Warm: activate the counters.
    let client = reqwest::Client::new();
    let ids: Vec<u64> = (0..10_000).collect();
    for chunk in ids.chunks(500) {
        let gets = chunk.iter().map(|i| {
            client
                .post(format!("http://{addr}/v1/entities/bench-counter/e-{i}/get"))
                .header("content-type", "application/json")
                .body("null")
                .send()
        });
        for r in futures::future::join_all(gets).await {
            anyhow::ensure!(r?.status().is_success(), "warm-up request failed");
        }
    }
    let metrics = server.node().metrics().clone();
    let mut runs = Vec::new();
    for (connections, entities) in [(64, 10_000), (256, 10_000), (64, 1), (256, 1)] {
        let before = node_counts(&metrics);
        let mut r = load(&addr, connections, entities, secs, &script).await?;
        let after = node_counts(&metrics);
        let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        r["node"] = json!({
            "group_commits": d[0], "group_commits_over_20ms": d[1], "group_commits_over_50ms": d[2],
            "commands": d[3], "commands_over_10ms": d[4], "commands_over_50ms": d[5],
            "http_requests": d[6], "http_requests_over_10ms": d[7], "http_requests_over_50ms": d[8],
        });
        runs.push(r);
    }
    server.shutdown().await;
    // The echo again, spending per request the CPU the node spent beyond
    // the echo's own at 64 connections.
    let cpu_per_request = |v: &Value| {
        v["cpu"]["server_process_secs"].as_f64().unwrap_or(0.0) / v["wrk"]["requests"].as_f64().unwrap_or(1.0).max(1.0)
    };
    let burn = Duration::from_secs_f64((cpu_per_request(&runs[0]) - cpu_per_request(&echo64)).max(0.0));
    let (matched_addr, matched) = echo_server(burn).await?;
    let mut echo_matched = load(&matched_addr, 64, 10_000, secs, &script).await?;
    matched.abort();
    echo_matched["burn_us"] = json!(burn.as_micros() as u64);
    let rps = |v: &Value| v["wrk"]["requests_per_sec"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "description": "HTTP end to end under wrk (-t1, one random counter per request, POST {\"by\":1} = one durable command, local journal with fsync per group commit) vs a raw axum echo server on the same route under the same generator; a probe (one request per 10 ms) beside each load; CPU seconds of the generator and of this process",
        "baseline_axum_echo": { "c64": echo64, "c256": echo256 },
        "baseline_axum_echo_cpu_matched": { "c64": echo_matched },
        "runtime": runs,
        "ratio_runtime_to_echo_c64": ratio(rps(&runs[0]), rps(&echo64)),
        "ratio_runtime_to_echo_c256": ratio(rps(&runs[1]), rps(&echo256)),
    }))
}

/// Counts so far from the node's histograms (their buckets include 0.01,
/// 0.025 and 0.05 s): group commits (all, over 25 ms, over 50 ms) and
/// commands as the node timed them (all, over 10 ms, over 50 ms); HTTP
/// requests from routing to response (all, over 10 ms, over 50 ms).
fn node_counts(m: &tessera_runtime::metrics::Metrics) -> [u64; 9] {
    // The unlabelled histogram, or the `command` series of a labelled one.
    let over = |c: &dyn prometheus::core::Collector, bounds: [f64; 2]| -> [u64; 3] {
        let families = c.collect();
        let series = families.iter().flat_map(|f| f.get_metric());
        let Some(h) = series.into_iter().find(|m| m.get_label().iter().all(|l| l.value() == "command")) else {
            return [0; 3];
        };
        let h = h.get_histogram();
        let total = h.get_sample_count();
        let le = |bound: f64| {
            h.get_bucket().iter().find(|b| (b.upper_bound() - bound).abs() < 1e-9).map_or(0, |b| b.cumulative_count())
        };
        [total, total - le(bounds[0]), total - le(bounds[1])]
    };
    let [c, c20, c50] = over(&m.commit_latency, [0.02, 0.05]);
    let [r, r10, r50] = over(&m.latency, [0.01, 0.05]);
    let [h, h10, h50] = over(&m.http_latency, [0.01, 0.05]);
    [c, c20, c50, r, r10, r50, h, h10, h50]
}

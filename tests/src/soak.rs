//! The soak: one node process (the test node binary, embedded journal)
//! under a steady mix of commands, reads and function calls over many more
//! entities than it keeps active, so entities are passivated and activated
//! all the time. Its resident memory and open files are sampled from
//! `/proc` and written as JSON with an SVG plot. A run is *flat* when,
//! after a warm-up, memory grows by at most a quarter (plus a block cache's
//! worth) and the open files stay within a small band; *clean* when no
//! answer was other than the expected ones (200, 202 and the rejections
//! `insufficient_stock` and `unknown_sku`: a purchase before any restock).
//!
//! `cargo run --release -p tessera-tests --bin soak -- --duration 30m`
//! runs the long one; the test suite runs two minutes of it
//! (`tests/tests/crash.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The node binary (`tessera-test-node`).
    pub node_bin: PathBuf,
    /// How long the load runs.
    pub duration: Duration,
    /// Samples are taken this often.
    pub sample_every: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct stock entities (many more than `max_active`).
    pub entities: usize,
    /// The node's active-entity budget (passivation beyond it).
    pub max_active: usize,
    /// Where `soak.json` and `soak.svg` go.
    pub out: PathBuf,
    /// More flags for the node (e.g. smaller journal caches for a short run).
    pub node_args: Vec<String>,
    /// A program the node runs under (e.g. `heaptrack`), given the node's
    /// command line; the samples are still of the node's own process.
    pub node_wrapper: Option<String>,
}

/// One sample of the node.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Resident memory, MiB.
    pub rss_mib: f64,
    /// Of it, anonymous memory (the heap), MiB.
    pub rss_anon_mib: f64,
    /// The size of the node's data directory (journal and result store), MiB.
    pub data_mib: f64,
    /// Open file descriptors.
    pub open_files: u64,
    /// Requests answered so far.
    pub requests: u64,
    /// Active entities (the node's gauge).
    pub active_entities: u64,
    /// Memtables of the journal and result store not yet in table files, MiB.
    pub write_buffer_mib: f64,
    /// Their block caches, MiB.
    pub block_cache_mib: f64,
}

/// What a soak saw.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Seconds of load.
    pub seconds: f64,
    /// Requests answered.
    pub requests: u64,
    /// Answers by status (and rejection code).
    pub answers: BTreeMap<String, u64>,
    /// Answers that were not expected (first 20).
    pub unexpected: Vec<String>,
    /// Passivations over the run (the node's counter).
    pub passivations: u64,
    /// Mean RSS over the second quarter and the last quarter, MiB.
    pub rss_after_warmup_mib: f64,
    /// See `rss_after_warmup_mib`.
    pub rss_at_end_mib: f64,
    /// Open files: lowest and highest over the second half.
    pub open_files_range: (u64, u64),
    /// Memory and open files stayed flat.
    pub flat: bool,
    /// No unexpected answer.
    pub clean: bool,
    /// The samples.
    pub samples: Vec<Sample>,
}

impl SoakReport {
    /// One line: passivations, memory after warm-up and at the end, open
    /// files, answers by kind.
    pub fn summary(&self) -> String {
        format!(
            "{} passivations; RSS {:.0} MiB after warm-up, {:.0} MiB at the end; open files {}..{}; answers {:?}",
            self.passivations,
            self.rss_after_warmup_mib,
            self.rss_at_end_mib,
            self.open_files_range.0,
            self.open_files_range.1,
            self.answers
        )
    }
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A `/proc/{pid}/status` line in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The bytes under `dir`, MiB.
fn dir_mib(dir: &std::path::Path) -> f64 {
    fn walk(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p).map_or(0, |d| {
            d.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// A metric's value, summed over its labels.
fn gauge(metrics: &str, name: &str) -> u64 {
    labelled(metrics, name, &[])
}

/// A labelled metric's value: the lines of `name` whose labels include
/// every `key="value"` of `labels`, summed.
fn labelled(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter(|l| labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The node's own process under a wrapper that starts it as a child (or
/// grandchild): the newest process running `bin`.
fn wrapped_pid(bin: &Path) -> Option<u32> {
    let bin = std::fs::canonicalize(bin).ok()?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == bin))
        .max()
}

/// A small xorshift: the load is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs the soak; the node is killed at the end.
pub async fn run(o: &SoakOptions) -> anyhow::Result<SoakReport> {
    let data = tempfile::tempdir()?;
    let mut command = match &o.node_wrapper {
        Some(w) => {
            let mut c = tokio::process::Command::new(w);
            c.arg(&o.node_bin);
            c
        }
        None => tokio::process::Command::new(&o.node_bin),
    };
    let mut child = command
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--http", "127.0.0.1:0", "--idle-timeout-secs", "2", "--max-active-entities"])
        .arg(o.max_active.to_string())
        .args(&o.node_args)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let base = loop {
        let line = lines.next_line().await?.ok_or_else(|| anyhow::anyhow!("the node exited before serving"))?;
        if let Some(rest) = line.split("serving http://").nth(1) {
            break format!("http://{}", rest.split_whitespace().next().unwrap_or_default());
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    if o.node_wrapper.is_some() {
        pid = wrapped_pid(&o.node_bin).ok_or_else(|| anyhow::anyhow!("the wrapped node's process not found"))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..o.clients {
        let (base, stop, requests, entities) = (base.clone(), stop.clone(), requests.clone(), o.entities);
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
            let mut answers: BTreeMap<String, u64> = BTreeMap::new();
            let mut unexpected = Vec::new();
            let mut last_key = String::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = rng.next();
                let entity = format!("store-{}:sku-{}", r % 20, (r >> 8) % entities as u64);
                let kind = r >> 40;
                let req = match kind % 20 {
                    0..=7 => http
                        .post(format!("{base}/v1/entities/stock/{entity}/purchase"))
                        .header("content-type", "application/json")
                        .body(r#"{"qty":1}"#),
                    8..=12 => {
                        // One restock in ten is a retry of the last one (deduplicated).
                        if !kind.is_multiple_of(10) || last_key.is_empty() {
                            last_key = format!("c{c}-{n}");
                        }
                        http.post(format!("{base}/v1/entities/stock/{entity}/restock"))
                            .header("content-type", "application/json")
                            .header("idempotency-key", &last_key)
                            .body(r#"{"qty":5}"#)
                    }
                    13..=16 => http.get(format!("{base}/v1/entities/stock/{entity}")),
                    17..=18 => http
                        .post(format!("{base}/v1/functions/product.upsert"))
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"sku":"sku-{}","name":"Soak","price":1.5}}"#, r % 1000)),
                    _ => http
                        .post(format!("{base}/v1/functions/product.upsert?mode=async"))
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"sku":"sku-{}","name":"Soak async","price":2.5}}"#, r % 1000)),
                };
                let (status, body) = match req.send().await {
                    Ok(resp) => {
                        let s = resp.status().as_u16();
                        (s, resp.text().await.unwrap_or_default())
                    }
                    Err(e) => (0, e.to_string()),
                };
                requests.fetch_add(1, Ordering::Relaxed);
                let label = match status {
                    409 if body.contains("insufficient_stock") => "409 insufficient_stock".to_owned(),
                    409 if body.contains("unknown_sku") => "409 unknown_sku".to_owned(),
                    s => s.to_string(),
                };
                let expected = matches!(label.as_str(), "200" | "202" | "409 insufficient_stock" | "409 unknown_sku");
                if !expected && unexpected.len() < 20 {
                    unexpected.push(format!("{label}: {}", body.chars().take(300).collect::<String>()));
                }
                *answers.entry(label).or_default() += 1;
            }
            (answers, unexpected)
        }));
    }

    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < o.duration {
        tokio::time::sleep(o.sample_every).await;
        let metrics = http.get(format!("{base}/metrics")).send().await?.text().await?;
        samples.push(Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_mib: rss_mib(pid),
            rss_anon_mib: status_mib(pid, "RssAnon:"),
            data_mib: dir_mib(data.path()),
            open_files: open_files(pid),
            requests: requests.load(Ordering::Relaxed),
            active_entities: gauge(&metrics, "tessera_active_entities"),
            write_buffer_mib: mib(labelled(&metrics, "tessera_storage_memory_bytes", &[r#"kind="write_buffer""#])),
            block_cache_mib: mib(labelled(&metrics, "tessera_storage_memory_bytes", &[r#"kind="cache""#])),
        });
    }
    stop.store(true, Ordering::Relaxed);
    let metrics = http.get(format!("{base}/metrics")).send().await?.text().await?;
    let (mut answers, mut unexpected) = (BTreeMap::new(), Vec::new());
    for c in clients {
        let (a, u) = c.await?;
        for (k, v) in a {
            *answers.entry(k).or_default() += v;
        }
        unexpected.extend(u);
    }
    if o.node_wrapper.is_some() {
        // Stop the node itself so the wrapper (a profiler) writes its output.
        let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
        let _ = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
    }
    let _ = child.kill().await;

    let n = samples.len().max(4);
    let mean = |s: &[Sample]| s.iter().map(|x| x.rss_mib).sum::<f64>() / s.len().max(1) as f64;
    let rss_after_warmup_mib = mean(&samples[n / 4..n / 2]);
    let rss_at_end_mib = mean(&samples[3 * n / 4..]);
    let second_half = &samples[n / 2..];
    let open_files_range = (
        second_half.iter().map(|s| s.open_files).min().unwrap_or(0),
        second_half.iter().map(|s| s.open_files).max().unwrap_or(0),
    );
    // The block cache (64 MiB) and memtables fill as the data grows: allow them.
    let flat = rss_at_end_mib <= rss_after_warmup_mib * 1.25 + 64.0 && open_files_range.1 - open_files_range.0 <= 24;
    let report = SoakReport {
        seconds: started.elapsed().as_secs_f64(),
        requests: requests.load(Ordering::Relaxed),
        clean: unexpected.is_empty(),
        answers,
        unexpected,
        passivations: gauge(&metrics, "tessera_passivations_total"),
        rss_after_warmup_mib,
        rss_at_end_mib,
        open_files_range,
        flat,
        samples,
    };
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(o.out.join("soak.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(o.out.join("soak.svg"), plot(&report))?;
    Ok(report)
}

/// RSS, open files and throughput over time, three panels.
fn plot(r: &SoakReport) -> String {
    const W: f64 = 900.0;
    const H: f64 = 150.0;
    let end = r.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let rates: Vec<(f64, f64)> = r
        .samples
        .windows(2)
        .map(|w| (w[1].t_s, (w[1].requests - w[0].requests) as f64 / (w[1].t_s - w[0].t_s).max(1e-3)))
        .collect();
    let panels: [(&str, Vec<(f64, f64)>); 6] = [
        ("resident memory (MiB)", r.samples.iter().map(|s| (s.t_s, s.rss_mib)).collect()),
        ("of it anonymous (MiB)", r.samples.iter().map(|s| (s.t_s, s.rss_anon_mib)).collect()),
        ("storage engines' memtables (MiB)", r.samples.iter().map(|s| (s.t_s, s.write_buffer_mib)).collect()),
        ("data on disk (MiB)", r.samples.iter().map(|s| (s.t_s, s.data_mib)).collect()),
        ("open files", r.samples.iter().map(|s| (s.t_s, s.open_files as f64)).collect()),
        ("requests/s", rates),
    ];
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}"><rect width="100%" height="100%" fill="white"/><text x="60" y="18" font-family="sans-serif" font-size="14">soak: {:.0} s, {} requests, {} passivations; x = seconds</text>"#,
        H * 6.0 + 40.0,
        r.seconds,
        r.requests,
        r.passivations
    );
    for (i, (title, points)) in panels.iter().enumerate() {
        let top = 30.0 + i as f64 * H;
        let max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let x = |t: f64| 60.0 + (W - 80.0) * t / end;
        let y = |v: f64| top + 20.0 + (H - 40.0) * (1.0 - v / max);
        let pts: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        svg += &format!(
            r##"<rect x="60" y="{:.1}" width="{}" height="{}" fill="none" stroke="#999"/><text x="60" y="{:.1}" font-family="sans-serif" font-size="12">{title}</text><text x="56" y="{:.1}" font-family="sans-serif" font-size="10" text-anchor="end">{max:.0}</text><text x="56" y="{:.1}" font-family="sans-serif" font-size="10" text-anchor="end">0</text><polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
            y(max),
            W - 80.0,
            H - 40.0,
            y(max) - 5.0,
            y(max) + 10.0,
            y(0.0),
            pts.join(" ")
        );
    }
    svg + "</svg>"
}

/// The sibling binary `name` of the running executable (the bins of this crate live together).
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test executables live in `deps/`, the bins one level up.
    let up = dir.parent().map(|p| p.join(name));
    match up {
        Some(p) if !dir.join(name).exists() && p.exists() => p,
        _ => dir.join(name),
    }
}

//! A node binary running as a child process.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// A node running as a child process, serving HTTP at `base`.
pub struct NodeProcess {
    /// The process.
    pub child: tokio::process::Child,
    /// `http://ADDR` it serves.
    pub base: String,
    /// The last lines it logged (warnings and errors: it runs with
    /// `RUST_LOG=warn`), for a test to show when it fails.
    log: Arc<Mutex<VecDeque<String>>>,
}

/// How many of a node's last log lines are kept.
const LOG_TAIL: usize = 400;

impl NodeProcess {
    /// Runs `bin serve --data-dir DIR --http 127.0.0.1:0 EXTRA...` with
    /// extra environment variables, and waits until it serves.
    pub async fn serve(bin: &str, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = dir.to_str().unwrap_or_default();
        let mut args = vec!["serve", "--data-dir", dir, "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::command(bin, &args, env).await
    }

    /// Runs `bin ARGS...` and waits for its `serving http://ADDR` line (30 s).
    /// Its log goes to this test's stderr when `TESSERA_TEST_NODE_LOGS` is set.
    pub async fn command(bin: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let base = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                for scheme in ["http", "https"] {
                    if let Some(rest) = line.split(&format!("serving {scheme}://")).nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                        return Ok(format!("{scheme}://{addr}"));
                    }
                }
                eprintln!("node: {line}");
            }
            anyhow::bail!("node exited before serving")
        })
        .await??;
        let echo = std::env::var_os("TESSERA_TEST_NODE_LOGS").is_some();
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let tail = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("node: {line}");
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == LOG_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Ok(Self { child, base, log })
    }

    /// The last lines the node logged (at most 400).
    pub fn log_tail(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// SIGKILL, then wait for the process to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().await.expect("wait")
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("pid");
        let ok =
            std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().expect("kill");
        assert!(ok.success(), "kill -{sig} {pid}");
    }
}

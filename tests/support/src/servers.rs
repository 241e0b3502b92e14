//! The real servers of the tests, and names no other test uses.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local").join(name)
}

fn start(name: &str) {
    let status = std::process::Command::new("bash").arg(script(name)).arg("start").status().expect("run the script");
    assert!(status.success(), "deploy/local/{name} start failed");
}

/// The NATS server: `TESSERA_NATS_URL`, or one started (once,
/// idempotently) by `deploy/local/nats.sh`.
pub fn nats_url() -> String {
    if let Ok(url) = std::env::var("TESSERA_NATS_URL") {
        return url;
    }
    static STARTED: OnceLock<String> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            start("nats.sh");
            "nats://127.0.0.1:4222".to_owned()
        })
        .clone()
}

/// `scylla://user:password@host:port` of the test Cassandra:
/// `TESSERA_SCYLLA_URL`, or one started (once, idempotently) by
/// `deploy/local/cassandra.sh`.
pub fn scylla_server() -> String {
    if let Ok(url) = std::env::var("TESSERA_SCYLLA_URL") {
        return url.trim_end_matches('/').to_owned();
    }
    static STARTED: OnceLock<String> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            start("cassandra.sh");
            "scylla://cassandra:cassandra@127.0.0.1:9042".to_owned()
        })
        .clone()
}

/// The `deploy/local/cassandra.sh` script, for tests that start their own server.
pub fn cassandra_script() -> PathBuf {
    script("cassandra.sh")
}

/// A NATS subject prefix no other test (or test process) uses.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("t{}x{}x{}", t % 1_000_000_000_000, std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A keyspace name no other test uses.
pub fn unique_keyspace() -> String {
    unique_prefix().replace('x', "_")
}

/// A fresh keyspace on the test server migrated with `bucket_size` events
/// per partition and `other_tables` (e.g. the result store's); returns its URL.
pub async fn migrated_keyspace(bucket_size: i64, other_tables: Vec<String>) -> String {
    let url = format!("{}/{}", scylla_server(), unique_keyspace());
    let opts = tessera_journal::scylla::MigrateOptions { bucket_size, other_tables, ..Default::default() };
    tessera_journal::ScyllaJournal::migrate(&url, &opts).await.expect("migrate");
    url
}

/// Logs of the test to stderr (`RUST_LOG`, default `warn`), once per process.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// The `nats-server` binary `deploy/local/nats.sh` installs (installed on
/// first use), for tests that run servers of their own.
pub fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = std::process::Command::new("bash").arg(script("nats.sh")).arg("bin").output().expect("run nats.sh");
        assert!(out.status.success(), "nats.sh bin failed: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// A free TCP port on loopback (free when asked; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A `nats-server` of a test's own, with a configuration the test writes
/// (accounts, TLS, ...): started on `port`, killed when dropped, and
/// restartable on the same port and store.
pub struct NatsServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its directory (configuration, JetStream store, log).
    pub dir: PathBuf,
    child: Option<std::process::Child>,
}

impl NatsServer {
    /// Writes `config` (which should `listen: 127.0.0.1:{port}` and keep
    /// its JetStream store under `dir`) and starts the server.
    pub fn start(dir: &Path, port: u16, config: &str) -> Self {
        std::fs::write(dir.join("nats.conf"), config).expect("write the server config");
        let mut s = Self { port, dir: dir.to_path_buf(), child: None };
        s.restart();
        s
    }

    /// Starts it again (after [`Self::stop`]) with the same configuration.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.join("nats.log")).expect("log file");
        let child = std::process::Command::new(nats_server_bin())
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not listen: {}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

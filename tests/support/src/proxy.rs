//! A TCP proxy with faults, between a node and a server (Cassandra, NATS):
//! latency added to every chunk in both directions, every open connection
//! dropped on demand, new connections refused while cut.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    drops: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("addr");
        let (delay_ms, cut) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let accepted = Arc::new(AtomicU64::new(0));
        let (drops, _) = watch::channel(0u64);
        let upstream = upstream.to_owned();
        let (d, c, a, tx) = (delay_ms.clone(), cut.clone(), Arc::clone(&accepted), drops.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if c.load(Ordering::Relaxed) {
                    continue; // dropped at once: refused
                }
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                a.fetch_add(1, Ordering::Relaxed);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, d.clone(), tx.subscribe()));
                tokio::spawn(pump(sr, cw, d.clone(), tx.subscribe()));
            }
        });
        Self { addr, delay_ms, cut, drops, accepted, task }
    }

    /// Adds `d` before forwarding each chunk, both ways (zero: none).
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Drops every open connection now.
    pub fn drop_connections(&self) {
        self.drops.send_modify(|g| *g += 1);
    }

    /// Refuses new connections (and drops the open ones) until `false`.
    pub fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::Relaxed);
        if on {
            self.drop_connections();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_connections();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
    mut drops: watch::Receiver<u64>,
) {
    drops.borrow_and_update();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = drops.changed() => return,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        let delay = delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::select! {
                _ = drops.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

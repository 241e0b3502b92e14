//! The conformance suite on every backend this crate ships.

use std::sync::Arc;

use tessera_journal::conformance::{MemoryBackend, TestBackend};
use tessera_journal::{Journal, LocalJournal};

/// A local journal in a temporary directory; reopening opens the same directory.
struct LocalBackend {
    dir: tempfile::TempDir,
    extra: Vec<tempfile::TempDir>,
}

impl LocalBackend {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir"), extra: Vec::new() }
    }
}

#[async_trait::async_trait]
impl TestBackend for LocalBackend {
    async fn open(&mut self) -> Arc<dyn Journal> {
        // A previous handle may still be closing on another thread: retry briefly.
        for _ in 0..50 {
            match LocalJournal::open(self.dir.path()) {
                Ok(j) => return Arc::new(j),
                Err(tessera_journal::OpenError::Locked { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("open: {e}"),
            }
        }
        panic!("journal stayed locked")
    }
    async fn open_with_feed_retention(&mut self, retention: std::time::Duration) -> Option<Arc<dyn Journal>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = LocalJournal::builder(dir.path()).feed_retention(retention).open().expect("open");
        self.extra.push(dir);
        Some(Arc::new(j))
    }
}

tessera_journal::journal_conformance_tests!(memory, MemoryBackend::default());
tessera_journal::journal_conformance_tests!(local, LocalBackend::new());

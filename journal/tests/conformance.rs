//! The conformance suite on every backend this crate ships.

use std::sync::Arc;

use tessera_journal::conformance::{MemoryBackend, TestBackend};
use tessera_journal::{Journal, LocalJournal};

/// A local journal in a temporary directory; reopening opens the same directory.
struct LocalBackend {
    dir: tempfile::TempDir,
}

impl LocalBackend {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
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
}

tessera_journal::journal_conformance_tests!(memory, MemoryBackend::default());
tessera_journal::journal_conformance_tests!(local, LocalBackend::new());

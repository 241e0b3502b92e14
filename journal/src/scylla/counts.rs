//! How many requests of each kind this journal sent: what one command
//! costs the database, in statements (the benchmark divides them by
//! commands).

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests sent so far by one [`ScyllaJournal`](super::ScyllaJournal) (and its
/// clones), by kind. Conditional ones (Paxos rounds) cost the server several
/// times a plain write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestCounts {
    /// Appends sent as a conditional batch (one Paxos round each).
    pub conditional_appends: u64,
    /// Appends sent as a plain batch (the opt-in unconditional mode).
    pub plain_appends: u64,
    /// Feed intents, one plain write before each fed append.
    pub intents: u64,
    /// Feed entry batches, one plain (unlogged) batch after each fed commit.
    pub entry_batches: u64,
    /// Feed watermarks, one conditional write per unit per flush.
    pub watermarks: u64,
    /// Entity index rows, one plain write after an entity's first append.
    pub index_rows: u64,
    /// Feed readers' reads of a unit's segments (one per read of the feed).
    pub segment_reads: u64,
    /// Feed readers' pages of entries.
    pub entry_reads: u64,
    /// Feed readers' reads of the event an entry numbers (one per entry read in full).
    pub feed_event_reads: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) conditional_appends: AtomicU64,
    pub(crate) plain_appends: AtomicU64,
    pub(crate) intents: AtomicU64,
    pub(crate) entry_batches: AtomicU64,
    pub(crate) watermarks: AtomicU64,
    pub(crate) index_rows: AtomicU64,
    pub(crate) segment_reads: AtomicU64,
    pub(crate) entry_reads: AtomicU64,
    pub(crate) feed_event_reads: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> RequestCounts {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RequestCounts {
            conditional_appends: r(&self.conditional_appends),
            plain_appends: r(&self.plain_appends),
            intents: r(&self.intents),
            entry_batches: r(&self.entry_batches),
            watermarks: r(&self.watermarks),
            index_rows: r(&self.index_rows),
            segment_reads: r(&self.segment_reads),
            entry_reads: r(&self.entry_reads),
            feed_event_reads: r(&self.feed_event_reads),
        }
    }
}

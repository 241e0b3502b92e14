//! Retention's reads, off the writer thread. The sweep finds what is past
//! its time — feed entries at the front of each unit's feed, idempotency
//! keys past their expiry — by reading the store, which on a table-backed
//! LSM means seeks into every unit's feed (pread of table blocks): 30 ms of
//! a writer's time per sweep on a journal of 10k entities, during which no
//! group commit could run. So a sweeper thread does the reads and hands the
//! writer a list of keys to remove; the writer removes them between group
//! commits, in small batches, without an `fsync` of their own.
//!
//! Invariant: the writer removes only what is still past its time when it
//! removes it. Feed entries never change once written, so a feed entry the
//! sweeper found expired stays expired. An idempotency key can be written
//! again between the sweeper's read and the removal (its old record
//! expired, so an append may remember the key anew): the writer removes the
//! key's record only while it still holds the expiry the sweeper saw.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use super::format;
use super::store::Shared;
use super::writer::unavailable;
use crate::error::JournalError;

/// Most entries one sweep finds per unit, and most expired keys (the rest
/// go on the next sweep).
const SWEEP_LIMIT: usize = 10_000;

/// Most feed entries one sweep finds in all (what it holds in memory until
/// the writer removed them); the units after it wait for the next sweep.
const SWEEP_TOTAL: usize = 100_000;

/// One row a sweep found past its time, for the writer to remove.
pub(crate) enum Removal {
    /// One of a unit's feed entries (the unit's prefix is shared by its
    /// entries' removals); each unit's come front first.
    Feed { unit: Arc<[u8]>, key: Vec<u8> },
    /// A `key_expiry` key (`[expires at][key key]`) past the sweep's `now`.
    Key(Vec<u8>),
}

/// A sweep to run: entries committed before `cutoff`, keys expiring before `now`.
pub(crate) struct Ask {
    pub(crate) now: i64,
    pub(crate) cutoff: i64,
}

/// The writer's end of the sweeper thread: asks go one way, findings the other.
pub(crate) struct Sweeper {
    asks: Option<Sender<Ask>>,
    found: Receiver<Result<Vec<Removal>, JournalError>>,
    thread: Option<JoinHandle<()>>,
    /// A sweep asked for and not yet answered.
    pub(crate) in_flight: bool,
}

impl Sweeper {
    /// Starts the thread; it reads from whatever store is current at each sweep.
    pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<Self> {
        let (asks, rx) = std::sync::mpsc::channel::<Ask>();
        let (tx, found) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("tessera-sweeper".into()).spawn(move || {
            while let Ok(ask) = rx.recv() {
                let r = shared.get().and_then(|s| find(&s.ks, ask));
                if tx.send(r).is_err() {
                    return;
                }
            }
        })?;
        Ok(Self { asks: Some(asks), found, thread: Some(thread), in_flight: false })
    }

    /// Asks for a sweep unless one is running.
    pub(crate) fn ask(&mut self, ask: Ask) {
        if self.in_flight {
            return;
        }
        if let Some(tx) = &self.asks {
            self.in_flight = tx.send(ask).is_ok();
        }
    }

    /// The findings of the sweep asked for, once it is done.
    pub(crate) fn take(&mut self) -> Option<Result<Vec<Removal>, JournalError>> {
        let r = self.found.try_recv().ok()?;
        self.in_flight = false;
        Some(r)
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        // The thread ends at its next ask; it holds the store only while it reads.
        self.asks.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads what is past its time.
fn find(ks: &super::store::Keyspaces, ask: Ask) -> Result<Vec<Removal>, JournalError> {
    let units: Vec<Vec<u8>> = ks
        .meta
        .prefix(format::UNIT_MARK)
        .map(|item| item.key().map(|k| k[format::UNIT_MARK.len()..].to_vec()))
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for unit in units {
        if out.len() >= SWEEP_TOTAL {
            break;
        }
        let range = format::feed_key(&unit, 0)..=format::feed_key(&unit, u64::MAX);
        let unit: Arc<[u8]> = unit.into();
        for item in ks.feed.range(range).take(SWEEP_LIMIT) {
            let (k, v) = item.into_inner().map_err(unavailable)?;
            let ts = format::decode_feed_ref(&v).map_or(0, |(_, _, ts, _)| ts);
            if ts >= ask.cutoff {
                break;
            }
            out.push(Removal::Feed { unit: unit.clone(), key: k.to_vec() });
        }
    }
    let upto = format::key_expiry(ask.now, &[]);
    for item in ks.key_expiry.range(..upto).take(SWEEP_LIMIT) {
        out.push(Removal::Key(item.key().map_err(unavailable)?.to_vec()));
    }
    Ok(out)
}

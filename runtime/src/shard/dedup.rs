//! The idempotency window of one entity: the last invocations that carried a
//! caller-given key, with their replies. It is rebuilt from the journal on
//! activation (event metadata and the snapshot), so it survives passivation
//! and restarts.

use std::collections::VecDeque;

use crate::envelope::DedupEntry;

/// Bounds of a window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DedupLimits {
    pub(crate) max_entries: usize,
    pub(crate) max_age_ms: i64,
}

/// The window: oldest first.
#[derive(Debug, Default)]
pub(crate) struct DedupWindow {
    entries: VecDeque<DedupEntry>,
}

impl DedupWindow {
    pub(crate) fn from_entries(entries: Vec<DedupEntry>) -> Self {
        Self { entries: entries.into() }
    }

    /// The reply and seq of an invocation still in the window.
    pub(crate) fn get(&self, id: &str, now_ms: i64, limits: DedupLimits) -> Option<&DedupEntry> {
        self.entries.iter().rev().find(|e| e.id == id && now_ms - e.at_ms <= limits.max_age_ms)
    }

    pub(crate) fn insert(&mut self, entry: DedupEntry, limits: DedupLimits) {
        if limits.max_entries == 0 {
            return;
        }
        self.entries.push_back(entry);
        self.trim(limits);
    }

    fn trim(&mut self, limits: DedupLimits) {
        while self.entries.len() > limits.max_entries {
            self.entries.pop_front();
        }
        if let Some(newest) = self.entries.back().map(|e| e.at_ms) {
            while self.entries.front().is_some_and(|e| newest - e.at_ms > limits.max_age_ms) {
                self.entries.pop_front();
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn to_entries(&self) -> Vec<DedupEntry> {
        self.entries.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, at_ms: i64) -> DedupEntry {
        DedupEntry { id: id.into(), seq: 1, at_ms, reply: vec![] }
    }

    #[test]
    fn bounded_by_count_and_age() {
        let l = DedupLimits { max_entries: 2, max_age_ms: 100 };
        let mut w = DedupWindow::default();
        w.insert(e("a", 0), l);
        w.insert(e("b", 10), l);
        assert!(w.get("a", 10, l).is_some());
        w.insert(e("c", 20), l);
        assert!(w.get("a", 20, l).is_none(), "evicted by count");
        assert!(w.get("b", 200, l).is_none(), "expired by age");
        w.insert(e("d", 500), l);
        assert_eq!(w.to_entries().len(), 1, "old entries trimmed on insert");
    }
}

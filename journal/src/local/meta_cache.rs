//! The writer's cache of entity metadata (last seq, deletion floor, fence),
//! read before every append. Bounded by entry count in two generations: new
//! and refreshed entries go to the young one; when it is full, it becomes
//! the old one and the previous old one is dropped; a hit in the old
//! generation moves the entry back to the young one. So the entities being
//! written stay cached, and the cache never holds more than twice
//! `generation` entries, however many entities the journal holds (a
//! single map cleared when full grew to a million entries, about 120 MiB,
//! in the soak before it was cleared).
//!
//! A miss costs a point read of the entity index, as it always did.

use std::collections::HashMap;

use super::format::EntityMeta;

/// Entries per generation by default: with about 120 bytes per entry, at
/// most ~30 MiB for both.
pub(crate) const GENERATION: usize = 1 << 17;

pub(crate) struct MetaCache {
    young: HashMap<Vec<u8>, EntityMeta>,
    old: HashMap<Vec<u8>, EntityMeta>,
    generation: usize,
}

impl MetaCache {
    pub(crate) fn new(generation: usize) -> Self {
        Self { young: HashMap::new(), old: HashMap::new(), generation: generation.max(1) }
    }

    /// The entity's metadata if cached (an old entry is made young again).
    pub(crate) fn get(&mut self, ikey: &[u8]) -> Option<EntityMeta> {
        if let Some(m) = self.young.get(ikey) {
            return Some(*m);
        }
        let (k, m) = self.old.remove_entry(ikey)?;
        self.insert(k, m);
        Some(m)
    }

    pub(crate) fn insert(&mut self, ikey: Vec<u8>, m: EntityMeta) {
        if self.young.len() >= self.generation {
            // The old generation goes; a stale copy of `ikey` in it can
            // never be read, since `get` looks in the young one first.
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(ikey, m);
    }

    pub(crate) fn extend(&mut self, entries: impl IntoIterator<Item = (Vec<u8>, EntityMeta)>) {
        for (k, m) in entries {
            self.insert(k, m);
        }
    }

    pub(crate) fn remove(&mut self, ikey: &[u8]) {
        self.young.remove(ikey);
        self.old.remove(ikey);
    }

    pub(crate) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(last_seq: u64) -> EntityMeta {
        EntityMeta { last_seq, ..EntityMeta::default() }
    }

    fn key(i: usize) -> Vec<u8> {
        format!("e{i}").into_bytes()
    }

    #[test]
    fn never_holds_more_than_two_generations() {
        let mut c = MetaCache::new(100);
        for i in 0..10_000 {
            c.insert(key(i), meta(i as u64));
            assert!(c.len() <= 200);
        }
        assert_eq!(c.get(&key(9_999)), Some(meta(9_999)));
        assert_eq!(c.get(&key(0)), None, "long evicted");
    }

    #[test]
    fn an_entity_written_all_along_stays_cached() {
        let mut c = MetaCache::new(100);
        c.insert(key(0), meta(1));
        for i in 1..10_000 {
            c.insert(key(i), meta(1));
            if i % 50 == 0 {
                assert_eq!(c.get(&key(0)), Some(meta(1)), "at {i}");
            }
        }
    }

    #[test]
    fn the_newest_value_wins_across_generations() {
        let mut c = MetaCache::new(2);
        c.insert(key(1), meta(1));
        c.insert(key(2), meta(1));
        c.insert(key(3), meta(1)); // 1 and 2 are old now
        c.extend([(key(1), meta(7))]);
        assert_eq!(c.get(&key(1)), Some(meta(7)));
        c.remove(&key(2));
        assert_eq!(c.get(&key(2)), None);
        c.clear();
        assert_eq!(c.len(), 0);
    }
}

//! What this node may serve right now: one slot per lease unit (entity type ×
//! shard) holding the lease's epoch, the local deadline until which the lease
//! is known to be held, and whether new work is accepted. Lock-free reads:
//! the runtime asks on every command and before every journal append.
//!
//! The deadline is `send time of the last successful renewal + ttl − margin`.
//! The server expires the key `ttl` after it *stored* the renewal (later than
//! we sent it), so once the local deadline passed — measured on this node's
//! monotonic clock, assuming clock rates differ by less than `margin / ttl` —
//! nobody else can hold the lease yet, and after it nobody on this node
//! commits under it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One lease unit: the entities of one type in one shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unit {
    /// The entity type.
    pub entity_type: String,
    /// The shard.
    pub shard: u32,
}

impl Unit {
    /// Its lease key, `shards/{type}/{shard}`.
    pub fn key(&self) -> String {
        crate::store::shard_key(&self.entity_type, self.shard)
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.entity_type, self.shard)
    }
}

struct Slot {
    epoch: AtomicU64,
    /// Milliseconds after `base` until which the lease is held; 0: not held.
    deadline: AtomicU64,
    accepting: AtomicBool,
}

/// The ownership table.
pub struct Ownership {
    types: Vec<String>,
    shards: u32,
    base: Instant,
    slots: Vec<Slot>,
}

impl Ownership {
    /// A table for `types` × `shards`, nothing owned.
    pub fn new(mut types: Vec<String>, shards: u32) -> Self {
        types.sort();
        types.dedup();
        let n = types.len() * shards as usize;
        let slots = (0..n)
            .map(|_| Slot { epoch: AtomicU64::new(0), deadline: AtomicU64::new(0), accepting: AtomicBool::new(false) })
            .collect();
        Self { types, shards, base: Instant::now(), slots }
    }

    /// Every unit, in a fixed order (types sorted, then shards).
    pub fn units(&self) -> Vec<Unit> {
        self.types
            .iter()
            .flat_map(|t| (0..self.shards).map(move |s| Unit { entity_type: t.clone(), shard: s }))
            .collect()
    }

    /// The shard count.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The entity types.
    pub fn types(&self) -> &[String] {
        &self.types
    }

    fn slot(&self, entity_type: &str, shard: u32) -> Option<&Slot> {
        let t = self.types.binary_search_by(|x| x.as_str().cmp(entity_type)).ok()?;
        if shard >= self.shards {
            return None;
        }
        self.slots.get(t * self.shards as usize + shard as usize)
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64 + 1
    }

    /// Records a held lease: `epoch`, held until `deadline`; accepting work or not.
    pub fn hold(&self, unit: &Unit, epoch: u64, deadline: Instant, accepting: bool) {
        if let Some(s) = self.slot(&unit.entity_type, unit.shard) {
            s.epoch.store(epoch, Ordering::Release);
            s.deadline.store(self.ms(deadline), Ordering::Release);
            s.accepting.store(accepting, Ordering::Release);
        }
    }

    /// Extends a held lease's deadline (after a renewal).
    pub fn extend(&self, unit: &Unit, deadline: Instant) {
        if let Some(s) = self.slot(&unit.entity_type, unit.shard)
            && s.deadline.load(Ordering::Acquire) != 0
        {
            s.deadline.store(self.ms(deadline), Ordering::Release);
        }
    }

    /// Stops accepting new work for `unit` (the fence stays open for in-flight work).
    pub fn stop_accepting(&self, unit: &Unit) {
        if let Some(s) = self.slot(&unit.entity_type, unit.shard) {
            s.accepting.store(false, Ordering::Release);
        }
    }

    /// Forgets `unit`: no more work, no more commits.
    pub fn drop_unit(&self, unit: &Unit) {
        if let Some(s) = self.slot(&unit.entity_type, unit.shard) {
            s.accepting.store(false, Ordering::Release);
            s.deadline.store(0, Ordering::Release);
        }
    }

    /// The fence: the epoch under which this node may commit for the unit
    /// now, or `None` when the lease is not (or no longer surely) held.
    pub fn fence(&self, entity_type: &str, shard: u32) -> Option<u64> {
        let s = self.slot(entity_type, shard)?;
        let deadline = s.deadline.load(Ordering::Acquire);
        (deadline != 0 && self.ms(Instant::now()) < deadline).then(|| s.epoch.load(Ordering::Acquire))
    }

    /// True when new work for the unit is accepted here (lease held, not handing off).
    pub fn accepting(&self, entity_type: &str, shard: u32) -> bool {
        self.slot(entity_type, shard).is_some_and(|s| s.accepting.load(Ordering::Acquire))
            && self.fence(entity_type, shard).is_some()
    }

    /// Units whose lease deadline has passed but that are still recorded.
    pub fn expired(&self) -> Vec<Unit> {
        let now = self.ms(Instant::now());
        self.units()
            .into_iter()
            .zip(&self.slots)
            .filter(|(_, s)| {
                let d = s.deadline.load(Ordering::Acquire);
                d != 0 && now >= d
            })
            .map(|(u, _)| u)
            .collect()
    }

    /// How many units this node holds.
    pub fn held(&self) -> usize {
        self.slots.iter().filter(|s| s.deadline.load(Ordering::Acquire) != 0).count()
    }
}

/// The local deadline of a lease renewed by a request sent at `sent`.
pub fn deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - safety_margin(ttl)
}

/// The part of the TTL a holder gives up to tolerate clock-rate differences
/// and scheduling delays: a quarter of it.
pub fn safety_margin(ttl: Duration) -> Duration {
    ttl / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_closes_at_the_deadline_and_on_drop() {
        let o = Ownership::new(vec!["b".into(), "a".into()], 4);
        let u = Unit { entity_type: "b".into(), shard: 3 };
        assert_eq!(o.fence("b", 3), None);
        o.hold(&u, 7, Instant::now() + Duration::from_secs(5), true);
        assert_eq!(o.fence("b", 3), Some(7));
        assert!(o.accepting("b", 3));
        assert!(!o.accepting("a", 3));
        o.stop_accepting(&u);
        assert!(!o.accepting("b", 3));
        assert_eq!(o.fence("b", 3), Some(7), "in-flight work may still commit while handing off");
        o.drop_unit(&u);
        assert_eq!(o.fence("b", 3), None);
        o.hold(&u, 8, Instant::now(), true);
        assert_eq!(o.fence("b", 3), None, "a passed deadline closes the fence");
        assert_eq!(o.expired(), vec![u]);
        assert_eq!(o.units().len(), 8);
        assert_eq!(o.fence("zzz", 0), None);
    }
}

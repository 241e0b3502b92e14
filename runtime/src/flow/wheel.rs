//! The timers armed on this node: per feed unit it owns, the unit's
//! pending timers (as the dispatcher keeps them with its checkpoint) and
//! one task that sleeps until the next is due and fires it at its entity.
//!
//! A fire is only a delivery: the entity decides whether the timer is
//! still pending (a cancelled, replaced or fired timer does nothing) and
//! commits a `tessera.fired` record with what the timer's command wrote;
//! the dispatcher sees that record in the feed and forgets the timer. So a
//! timer armed twice (a restart, a move, a reload) still fires once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use tessera_entities::EntityRef;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::records::{PendingTimer, Timers};
use super::{Deliver, retriable};
use crate::metrics::Metrics;
use crate::now_ms;

/// Most timers fired at once per unit.
const FIRES_IN_FLIGHT: usize = 64;
/// Wait before a fire that failed (the entity busy, moving, its node slow) is tried again.
const RETRY_AFTER_MS: i64 = 500;

type Unit = (String, u32);

/// Due order: (due ms, entity id, timer id, scheduled seq).
type Due = (i64, String, String, u64);

#[derive(Default)]
struct Armed {
    by_entity: HashMap<String, Vec<PendingTimer>>,
    due: BTreeSet<Due>,
    count: i64,
}

impl Armed {
    fn set(&mut self, entity: &str, timers: &Timers) -> i64 {
        let before = self.count;
        if let Some(old) = self.by_entity.remove(entity) {
            for t in &old {
                self.due.remove(&(t.at_ms, entity.to_owned(), t.id.clone(), t.seq));
            }
            self.count -= old.len() as i64;
        }
        if !timers.is_empty() {
            let list = timers.to_list();
            for t in &list {
                self.due.insert((t.at_ms, entity.to_owned(), t.id.clone(), t.seq));
            }
            self.count += list.len() as i64;
            self.by_entity.insert(entity.to_owned(), list);
        }
        self.count - before
    }

    fn forget(&mut self, entity: &str, id: &str, seq: u64) -> i64 {
        let Some(list) = self.by_entity.get_mut(entity) else { return 0 };
        let before = list.len();
        list.retain(|t| !(t.id == id && t.seq == seq));
        let removed = (before - list.len()) as i64;
        if list.is_empty() {
            self.by_entity.remove(entity);
        }
        self.count -= removed;
        -removed
    }

    fn timer(&self, entity: &str, id: &str, seq: u64) -> Option<PendingTimer> {
        self.by_entity.get(entity)?.iter().find(|t| t.id == id && t.seq == seq).cloned()
    }
}

struct Shared {
    armed: Mutex<Armed>,
    wake: Notify,
}

struct Running {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// Purged entities per unit, `(entity id, tombstone seq)`, until the
/// dispatcher drops them from its state.
pub(crate) type Purged = Arc<Mutex<HashMap<Unit, Vec<(String, u64)>>>>;

/// The armed timers of every unit this node runs.
pub(crate) struct Wheels {
    units: Mutex<HashMap<Unit, Running>>,
    deliver: Arc<OnceLock<Arc<dyn Deliver>>>,
    metrics: Metrics,
    purged: Purged,
}

impl Wheels {
    pub(crate) fn new(deliver: Arc<OnceLock<Arc<dyn Deliver>>>, metrics: Metrics) -> Self {
        Self { units: Mutex::new(HashMap::new()), deliver, metrics, purged: Purged::default() }
    }

    /// The entities of the unit whose purge timer fired since the last call.
    pub(crate) fn take_purged(&self, entity_type: &str, shard: u32) -> Vec<(String, u64)> {
        lock(&self.purged).remove(&(entity_type.to_owned(), shard)).unwrap_or_default()
    }

    /// Arms the unit's timers (replacing what was armed for it).
    pub(crate) fn start<'a>(
        &self,
        entity_type: &str,
        shard: u32,
        timers: impl Iterator<Item = (&'a String, &'a Timers)>,
    ) {
        let mut armed = Armed::default();
        for (entity, t) in timers {
            armed.set(entity, t);
        }
        self.metrics.flow.timers_pending.add(armed.count);
        let shared = Arc::new(Shared { armed: Mutex::new(armed), wake: Notify::new() });
        let unit = (entity_type.to_owned(), shard);
        let task =
            tokio::spawn(run(unit, shared.clone(), self.deliver.clone(), self.metrics.clone(), self.purged.clone()));
        let old = lock(&self.units).insert((entity_type.to_owned(), shard), Running { shared, task });
        if let Some(old) = old {
            self.retire(old);
        }
    }

    /// Disarms the unit's timers (another node fires them now).
    pub(crate) fn stop(&self, entity_type: &str, shard: u32) {
        let old = lock(&self.units).remove(&(entity_type.to_owned(), shard));
        if let Some(old) = old {
            self.retire(old);
        }
    }

    fn retire(&self, r: Running) {
        r.task.abort();
        let n = lock(&r.shared.armed).count;
        self.metrics.flow.timers_pending.sub(n);
    }

    /// The entity's pending timers are now `timers`.
    pub(crate) fn set(&self, entity_type: &str, shard: u32, entity: &str, timers: &Timers) {
        let units = lock(&self.units);
        let Some(r) = units.get(&(entity_type.to_owned(), shard)) else { return };
        let delta = lock(&r.shared.armed).set(entity, timers);
        self.metrics.flow.timers_pending.add(delta);
        r.shared.wake.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fires the unit's due timers until aborted.
async fn run(
    unit: Unit,
    shared: Arc<Shared>,
    deliver: Arc<OnceLock<Arc<dyn Deliver>>>,
    metrics: Metrics,
    purged: Purged,
) {
    let entity_type = unit.0.clone();
    loop {
        let now = now_ms();
        let (due, next) = {
            let mut armed = lock(&shared.armed);
            let mut due = Vec::new();
            while let Some(first) = armed.due.first()
                && first.0 <= now
                && due.len() < 4 * FIRES_IN_FLIGHT
            {
                due.extend(armed.due.pop_first());
            }
            (due, armed.due.first().map(|d| d.0))
        };
        if due.is_empty() {
            let notified = shared.wake.notified();
            match next {
                Some(at) => {
                    let _ = tokio::time::timeout(Duration::from_millis((at - now).max(1) as u64), notified).await;
                }
                None => notified.await,
            }
            continue;
        }
        let Some(deliver) = deliver.get().cloned() else {
            // The node is still starting: try again shortly.
            lock(&shared.armed).due.extend(due.into_iter().map(|(_, e, id, seq)| (now + RETRY_AFTER_MS, e, id, seq)));
            tokio::time::sleep(Duration::from_millis(RETRY_AFTER_MS as u64)).await;
            continue;
        };
        futures::stream::iter(due)
            .map(|(at, entity, id, seq)| {
                let (shared, deliver, metrics, entity_type, unit, purged) =
                    (&shared, &deliver, &metrics, &entity_type, &unit, &purged);
                async move {
                    let Some(timer) = lock(&shared.armed).timer(&entity, &id, seq) else { return };
                    let target = EntityRef::new(entity_type.clone(), entity.clone());
                    metrics.flow.timer_lateness.observe((now_ms() - at).max(0) as f64 / 1000.0);
                    match deliver.fire(&target, &timer).await {
                        Ok(()) => {
                            if id == super::PURGE_TIMER {
                                lock(purged).entry(unit.clone()).or_default().push((entity.clone(), seq));
                            }
                            metrics.flow.delivered.with_label_values(&["timer"]).inc();
                            let delta = lock(&shared.armed).forget(&entity, &id, seq);
                            metrics.flow.timers_pending.add(delta);
                        }
                        Err(e) if retriable(&e) => {
                            tracing::debug!(entity = %target, timer = %id, error = %e, "timer fire failed; retrying");
                            metrics.flow.retries.with_label_values(&["timer"]).inc();
                            lock(&shared.armed).due.insert((now_ms() + RETRY_AFTER_MS, entity, id, seq));
                        }
                        Err(e) => {
                            tracing::error!(entity = %target, timer = %id, error = %e,
                                "timer cannot be delivered (its command is unknown to this code); dropped here");
                            metrics.flow.dead_letters.with_label_values(&["timer"]).inc();
                            let delta = lock(&shared.armed).forget(&entity, &id, seq);
                            metrics.flow.timers_pending.add(delta);
                        }
                    }
                }
            })
            .buffer_unordered(FIRES_IN_FLIGHT)
            .collect::<()>()
            .await;
    }
}

#[cfg(test)]
mod tests {
    use tessera_entities::{CommandCall, Timer};

    use super::*;
    use crate::flow::FlowRecord;

    fn timers(list: &[(&str, u64, i64)]) -> Timers {
        let mut t = Timers::default();
        for (id, seq, at) in list {
            let command = CommandCall::named("expire", &()).unwrap();
            t.apply(*seq, &FlowRecord::Schedule(Timer { id: (*id).into(), at_ms: *at, command }));
        }
        t
    }

    #[test]
    fn setting_an_entity_again_replaces_its_armed_timers() {
        let mut a = Armed::default();
        assert_eq!(a.set("o1", &timers(&[("a", 1, 10), ("b", 2, 20)])), 2);
        assert_eq!(a.set("o1", &timers(&[("b", 2, 20)])), -1);
        assert_eq!(a.due.len(), 1);
        assert_eq!(a.set("o1", &Timers::default()), -1);
        assert!(a.due.is_empty() && a.by_entity.is_empty() && a.count == 0);
    }

    #[test]
    fn a_fired_timer_is_forgotten_by_id_and_seq() {
        let mut a = Armed::default();
        a.set("o1", &timers(&[("a", 1, 10)]));
        assert_eq!(a.forget("o1", "a", 7), 0, "another scheduling of the id stays");
        assert_eq!(a.forget("o1", "a", 1), -1);
        assert!(a.timer("o1", "a", 1).is_none());
    }
}

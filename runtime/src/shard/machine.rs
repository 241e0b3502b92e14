//! The state machine of one shard: its active entities (a small record,
//! the state and a queue each), what each message does to them, and the IO
//! it asks for ([`Io`]: rebuild an entity, append, save a snapshot). It
//! spawns nothing and awaits nothing; the actor (`actor.rs`) runs the IO
//! and feeds the outcomes back as messages. Replies go through the ports
//! carried by the requests.
//!
//! Invariants: an entity has one append in flight at a time (`busy`, a
//! [`Batch`] of the commands it answers; see `batch.rs`); an outcome
//! is only accepted from the incarnation that asked for it (a reset entity
//! ignores its old appends); events are applied and replied to only after
//! the journal acknowledged them.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use tessera_entities::{DynEntity, DynState};
use tessera_journal::{AppendRequest, EntityKey, Snapshot};

use super::activation::{self, Rebuilt};
use super::batch::{Answer, Batch};
use super::dedup::DedupWindow;
use super::step::{self, Decision, Lease, Record};
use super::{CommandRequest, Committed, DeleteRequest, PurgeRequest, ShardContext, StateRequest, StateView};
use crate::envelope::{DedupEntry, SNAPSHOT_FORMAT};
use crate::error::InvokeError;
use crate::flow::Timers;

/// IO the machine asks for.
pub(crate) enum Io {
    /// Raise the journal fence (when `fence` is set), then rebuild the entity;
    /// answer with `Activated`.
    Activate { key: EntityKey, entity: Arc<dyn DynEntity>, incarnation: u64, fence: Option<u64> },
    /// Check the lease is still `epoch`, then commit; answer with `Appended`.
    Append { key: EntityKey, incarnation: u64, request: AppendRequest, epoch: Option<u64>, span: tracing::Span },
    /// Save a snapshot (fire and forget: a lost snapshot costs replay time only).
    Snapshot { key: EntityKey, snapshot: Snapshot },
    /// Purge the entity's journal if its tombstone is still at the
    /// request's seq; answer with `Purged`.
    Purge(PurgeRequest),
}

/// Work waiting for an entity.
pub(crate) enum Work {
    Command(CommandRequest),
    State(StateRequest),
    Delete(DeleteRequest),
    Purge(PurgeRequest),
}

impl Work {
    pub(crate) fn fail(self, e: InvokeError) {
        match self {
            Self::Command(c) => {
                let _ = c.reply.send(Err(e));
            }
            Self::State(s) => {
                let _ = s.reply.send(Err(e));
            }
            Self::Delete(d) => {
                let _ = d.reply.send(Err(e));
            }
            Self::Purge(p) => {
                let _ = p.reply.send(Err(e));
            }
        }
    }
}

fn deleted(key: &EntityKey) -> InvokeError {
    InvokeError::Deleted(format!("{key} was deleted; its journal is purged when the grace period ends"))
}

/// One active entity.
struct Slot {
    entity: Arc<dyn DynEntity>,
    /// `None` while the entity is being rebuilt.
    state: Option<DynState>,
    seq: u64,
    incarnation: u64,
    /// Its append in flight and the commands it answers.
    busy: Option<Box<Batch>>,
    queue: VecDeque<Work>,
    dedup: Option<Box<DedupWindow>>,
    events_since_snapshot: u64,
    last_used: u32,
    /// In a cluster: the lease epoch the entity's journal fence was raised
    /// to at activation; its appends carry it.
    fence: Option<u64>,
    /// Its pending timers (most entities have none).
    timers: Option<Box<Timers>>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.state.is_some() && self.busy.is_none() && self.queue.is_empty()
    }
}

/// Applies the batch's pending typed effect (its last member's) to
/// `state`; an apply that panics poisons the batch (that member fails, the
/// entity is rebuilt once the batch is answered). Whether it went cleanly.
fn apply_pending(
    entity: &Arc<dyn DynEntity>,
    state: &mut DynState,
    batch: &mut Batch,
    key: &EntityKey,
    metrics: &crate::metrics::Metrics,
) -> bool {
    let Some(typed) = batch.take_typed() else { return true };
    match catch_unwind(AssertUnwindSafe(|| entity.apply_effect(state, typed))) {
        Ok(()) => true,
        Err(panic) => {
            let msg = step::panic_message(&*panic);
            tracing::error!(entity = %key, panic = %msg, "apply panicked; the entity is rebuilt once its batch is answered");
            metrics.handler_panics.inc();
            batch.poison(msg);
            false
        }
    }
}

/// The shard's entities and what is asked of the outside.
pub(crate) struct Machine {
    pub(crate) shard: u32,
    pub(crate) ctx: Arc<ShardContext>,
    /// Boxed: a shard's table is often at half its load (it doubles), and
    /// an empty bucket then costs a key and a pointer, not a whole slot
    /// (measured at 1M entities: 560 → ~400 B per active entity).
    slots: HashMap<EntityKey, Box<Slot>>,
    clock: u32,
    idle_ticks: u32,
    next_incarnation: u64,
    /// Entity types whose slice of this shard is being handed off.
    releasing: HashSet<String>,
    /// Entities whose journal is being purged: refused until it is done.
    purging: HashSet<EntityKey>,
    io: Vec<Io>,
    /// Commands per append, counted here and added to the shared histogram
    /// every [`BATCH_SAMPLES_PER_FLUSH`] appends and at each tick (one
    /// contended update of its atomics per append was ~1.5% of a command).
    batch_sizes: prometheus::local::LocalHistogram,
    batch_samples: u32,
}

/// Appends counted locally before they go to the shared histogram.
const BATCH_SAMPLES_PER_FLUSH: u32 = 64;

impl Machine {
    pub(crate) fn new(shard: u32, ctx: Arc<ShardContext>, idle_ticks: u32) -> Self {
        let batch_sizes = ctx.metrics.entity_batch.local();
        Self {
            shard,
            ctx,
            slots: HashMap::new(),
            clock: 0,
            idle_ticks,
            next_incarnation: 1,
            releasing: HashSet::new(),
            purging: HashSet::new(),
            io: Vec::new(),
            batch_sizes,
            batch_samples: 0,
        }
    }

    fn flush_batch_sizes(&mut self) {
        if self.batch_samples > 0 {
            self.batch_sizes.flush();
            self.batch_samples = 0;
        }
    }

    /// The IO asked for since the last call.
    pub(crate) fn take_io(&mut self) -> Vec<Io> {
        std::mem::take(&mut self.io)
    }

    /// Active entities.
    #[cfg(test)]
    pub(crate) fn active(&self) -> usize {
        self.slots.len()
    }

    fn lease(&self, entity_type: &str) -> Lease {
        match &self.ctx.fence {
            None => Lease::Unfenced,
            Some(f) => f.fence(entity_type, self.shard).map_or(Lease::Lost, Lease::Held),
        }
    }

    /// New work for an entity: refused while its slice is handed off or its
    /// queue is full, run at once when it is idle, queued behind its current
    /// work otherwise; an inactive entity is activated (passivating the least
    /// recently used when the shard is over its budget).
    pub(crate) fn enqueue(&mut self, key: EntityKey, entity: Arc<dyn DynEntity>, work: Work, now_ms: i64) {
        if self.releasing.contains(&key.entity_type) {
            return work.fail(InvokeError::ShardMoved(format!("{key} is being handed to another node")));
        }
        if self.purging.contains(&key) {
            return match work {
                // Already under way: this fire has nothing left to do.
                Work::Purge(p) => drop(p.reply.send(Ok(false))),
                w => w.fail(deleted(&key)),
            };
        }
        let clock = self.clock;
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.last_used = clock;
            if slot.idle() {
                self.drain(&key, Some(work), now_ms);
            } else if slot.queue.len() >= self.ctx.entity_queue_limit {
                work.fail(InvokeError::EntityBusy(key.to_string()));
            } else {
                slot.queue.push_back(work);
            }
            return;
        }
        if let Work::Purge(p) = work {
            // No need to rebuild what is about to be removed.
            return self.start_purge(&key, p);
        }
        if self.slots.len() >= self.ctx.shard_budget {
            self.evict_lru();
        }
        self.activate(key, entity, VecDeque::from([work]));
    }

    /// Passivates the entity (failing what waits for it) and asks for its purge.
    fn start_purge(&mut self, key: &EntityKey, p: PurgeRequest) {
        if let Some(slot) = self.remove(key, "purge") {
            for w in slot.queue {
                w.fail(deleted(key));
            }
        }
        self.purging.insert(key.clone());
        self.io.push(Io::Purge(p));
    }

    /// A purge finished: the entity may be activated again (a new life).
    pub(crate) fn purged(&mut self, key: &EntityKey) {
        self.purging.remove(key);
    }

    /// Creates a slot in the activating state and asks for its rebuild. In
    /// a cluster the entity is activated under the shard's current lease
    /// epoch: the journal's fence is raised to it before the read, so no
    /// older owner's write can land after what this node reads.
    fn activate(&mut self, key: EntityKey, entity: Arc<dyn DynEntity>, queue: VecDeque<Work>) {
        let fence = match self.lease(&key.entity_type) {
            Lease::Unfenced => None,
            Lease::Held(epoch) => Some(epoch),
            Lease::Lost => {
                for w in queue {
                    w.fail(InvokeError::ShardMoved(format!("this node no longer holds the lease of {key}")));
                }
                return;
            }
        };
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        self.ctx.metrics.active_entities.inc();
        self.ctx.metrics.activations.inc();
        let slot = Slot {
            entity: entity.clone(),
            state: None,
            seq: 0,
            incarnation,
            busy: None,
            queue,
            dedup: None,
            events_since_snapshot: 0,
            last_used: self.clock,
            fence,
            timers: None,
        };
        self.slots.insert(key.clone(), Box::new(slot));
        self.io.push(Io::Activate { key, entity, incarnation, fence });
    }

    /// The outcome of an activation.
    pub(crate) fn activated(
        &mut self,
        key: EntityKey,
        incarnation: u64,
        result: Result<Rebuilt, InvokeError>,
        now_ms: i64,
    ) {
        let Some(slot) = self.slots.get_mut(&key).filter(|s| s.incarnation == incarnation) else { return };
        match result {
            Ok(r) => {
                slot.state = Some(r.state);
                slot.seq = r.seq;
                slot.dedup = (!r.dedup.is_empty()).then(|| Box::new(r.dedup));
                slot.events_since_snapshot = r.events_since_snapshot;
                slot.timers = (!r.timers.is_empty()).then(|| Box::new(r.timers));
                self.maybe_snapshot(&key, now_ms);
                self.drain(&key, None, now_ms);
            }
            Err(e) => {
                if let Some(slot) = self.remove(&key, "reset") {
                    for w in slot.queue {
                        w.fail(e.clone());
                    }
                }
            }
        }
    }

    /// Runs `first` (an idle entity's new work, which skips the queue) and
    /// then queued work until the entity waits on an append or has nothing
    /// left; an emptied queue gives its buffer back (most entities are idle,
    /// and an idle entity should cost no queue memory).
    fn drain(&mut self, key: &EntityKey, mut first: Option<Work>, now_ms: i64) {
        let lease = self.lease(&key.entity_type);
        loop {
            let Some(slot) = self.slots.get_mut(key) else { return };
            let Some(state) = slot.state.as_ref() else { return };
            if slot.busy.is_some() {
                return;
            }
            let Some(next) = first.take().or_else(|| slot.queue.pop_front()) else {
                if slot.queue.capacity() > 0 {
                    slot.queue = VecDeque::new();
                }
                return;
            };
            let deleted_now = slot.timers.as_deref().and_then(Timers::tombstone).is_some();
            let record = Record {
                key,
                entity: &slot.entity,
                state,
                seq: slot.seq,
                dedup: slot.dedup.as_deref(),
                fence: slot.fence,
                timers: slot.timers.as_deref(),
            };
            let node_id = self.ctx.node_id.as_deref();
            let (decision, port, invocation_id, retryable, span) = match next {
                Work::State(_) | Work::Command(CommandRequest { timer: None, .. }) if deleted_now => {
                    next.fail(deleted(key));
                    continue;
                }
                Work::State(s) => {
                    let timers = slot.timers.as_deref().map(Timers::to_list).unwrap_or_default();
                    let _ = s.reply.send(Ok(StateView { state: slot.entity.state_json(state), seq: slot.seq, timers }));
                    continue;
                }
                Work::Purge(p) => return self.start_purge(key, p),
                Work::Delete(d) => {
                    let DeleteRequest { invocation_id, grace, reason, span, reply, .. } = d;
                    let grace_ms = grace.as_millis().min(i64::MAX as u128) as i64;
                    let del = step::Delete { invocation_id: invocation_id.clone(), grace_ms, reason };
                    let decision = span.in_scope(|| step::decide_delete(&record, del, now_ms, lease, node_id));
                    (decision, reply, invocation_id, false, span)
                }
                Work::Command(c) => {
                    let CommandRequest { command, invocation_id, retryable, span, reply: port, timer, .. } = c;
                    let cmd = step::Command { command, invocation_id: invocation_id.clone(), retryable, timer };
                    let retain = (self.ctx.key_retention)(&key.entity_type);
                    let decision =
                        span.in_scope(|| step::decide(&record, cmd, now_ms, lease, node_id, self.ctx.dedup, retain));
                    (decision, port, invocation_id, retryable, span)
                }
            };
            let _guard = span.clone().entered();
            match decision {
                Decision::Remembered(r) => {
                    tracing::debug!(invocation = %r.invocation_id, seq = r.seq, "answered from the idempotency window");
                    let _ = port.send(Ok(r));
                }
                Decision::Reply(r) => {
                    let _ = port.send(Ok(r));
                }
                Decision::Refuse(e) => {
                    let _ = port.send(Err(e));
                }
                Decision::Reset(e) => {
                    tracing::error!(entity = %key, error = %e, "handler panicked; resetting the entity");
                    self.ctx.metrics.handler_panics.inc();
                    let _ = port.send(Err(e));
                    drop(_guard);
                    self.reset(key);
                    return;
                }
                Decision::Append(mut request, pending) => {
                    let epoch = pending.epoch;
                    let mut batch = Batch::default();
                    batch.wrote(port, invocation_id, span.clone(), retryable, &request, pending);
                    drop(_guard);
                    self.fill(key, &mut batch, &mut request, lease, now_ms);
                    self.batch_sizes.observe(batch.len() as f64);
                    self.batch_samples += 1;
                    if self.batch_samples >= BATCH_SAMPLES_PER_FLUSH {
                        self.flush_batch_sizes();
                    }
                    let Some(slot) = self.slots.get_mut(key) else { return };
                    slot.busy = Some(Box::new(batch));
                    let incarnation = slot.incarnation;
                    return self.io.push(Io::Append { key: key.clone(), incarnation, request, epoch, span });
                }
            }
        }
    }

    /// Decides the entity's queued commands after the first of a batch,
    /// each against the state the ones before it leave, adding their events
    /// to `request` (see `batch.rs`). Stops at the batch's limits, at work
    /// that is not a plain command (a read, a delete, a timer's fire wait
    /// for the append), at a key already in the batch, and at a panic.
    /// (A deleted entity never gets here: its commands are refused in
    /// `drain`, and its timers were cleared by the tombstone.)
    fn fill(&mut self, key: &EntityKey, batch: &mut Batch, request: &mut AppendRequest, lease: Lease, now_ms: i64) {
        let limits = self.ctx.batch;
        let node_id = self.ctx.node_id.as_deref();
        let retain = (self.ctx.key_retention)(&key.entity_type);
        let Some(slot) = self.slots.get_mut(key) else { return };
        while batch.len() < limits.commands && batch.bytes < limits.bytes {
            match slot.queue.front() {
                Some(Work::Command(c)) if c.timer.is_none() && !(c.retryable && batch.has(&c.invocation_id)) => {}
                _ => break,
            }
            let Some(state) = slot.state.as_mut() else { break };
            if !apply_pending(&slot.entity, state, batch, key, &self.ctx.metrics) {
                break;
            }
            let Some(Work::Command(c)) = slot.queue.pop_front() else { break };
            let CommandRequest { command, invocation_id, retryable, span, reply: port, timer, .. } = c;
            let record = Record {
                key,
                entity: &slot.entity,
                state: &*state,
                seq: slot.seq + batch.events,
                dedup: slot.dedup.as_deref(),
                fence: slot.fence,
                timers: slot.timers.as_deref(),
            };
            let cmd = step::Command { command, invocation_id: invocation_id.clone(), retryable, timer };
            let decision = span.in_scope(|| step::decide(&record, cmd, now_ms, lease, node_id, self.ctx.dedup, retain));
            match decision {
                Decision::Remembered(r) => {
                    // Tells of a committed command: no need to wait.
                    let _ = port.send(Ok(r));
                }
                Decision::Reply(r) => batch.hold(port, invocation_id, span, Ok(r)),
                Decision::Refuse(e) => batch.hold(port, invocation_id, span, Err(e)),
                Decision::Reset(e) => {
                    tracing::error!(parent: &span, entity = %key, error = %e, "handler panicked; the entity is rebuilt after its append");
                    self.ctx.metrics.handler_panics.inc();
                    batch.hold(port, invocation_id, span, Err(e));
                    batch.reset_after = true;
                    break;
                }
                Decision::Append(more, pending) => {
                    batch.wrote(port, invocation_id, span, retryable, &more, pending);
                    request.events.extend(more.events);
                    request.keys.extend(more.keys);
                }
            }
        }
    }

    /// The outcome of an append.
    pub(crate) fn appended(
        &mut self,
        key: EntityKey,
        incarnation: u64,
        result: Result<Committed, InvokeError>,
        now_ms: i64,
    ) {
        let Some(slot) = self.slots.get_mut(&key).filter(|s| s.incarnation == incarnation) else { return };
        let Some(mut batch) = slot.busy.take() else { return };
        let ack = match result {
            Ok(Committed::Appended(ack)) => ack,
            Ok(Committed::Remembered { key: invocation, seq, reply }) => {
                // A retry the journal remembered: the original reply, nothing written.
                tracing::debug!(invocation = %invocation, seq, "answered from the journal's idempotency index");
                // Alone, nothing of the batch was applied: the entity goes on as it was.
                let alone = batch.len() == 1 && !batch.poisoned();
                let answers = batch.remembered(&invocation, seq, &reply);
                self.answer(&key, answers, now_ms);
                if alone {
                    self.drain(&key, None, now_ms);
                } else {
                    self.reset(&key);
                }
                return;
            }
            Err(e) => {
                // Correct whether or not the failed write landed: the entity
                // is rebuilt from what the journal holds.
                tracing::warn!(entity = %key, error = %e, commands = batch.len(), "append failed; reloading the entity from its journal");
                batch.fail(&e);
                self.reset(&key);
                return;
            }
        };
        if let Some(state) = slot.state.as_mut() {
            apply_pending(&slot.entity, state, &mut batch, &key, &self.ctx.metrics);
        }
        slot.seq = ack.last_seq;
        slot.events_since_snapshot += batch.events;
        let reset = batch.reset_after;
        self.answer(&key, batch.committed(), ack.timestamp_ms);
        if reset {
            self.reset(&key);
            return;
        }
        self.maybe_snapshot(&key, now_ms);
        self.drain(&key, None, now_ms);
    }

    /// Sends a batch's answers in order, first applying each member's timer
    /// records and remembering keyed replies (committed at `at_ms`).
    fn answer(&mut self, key: &EntityKey, answers: Vec<Answer>, at_ms: i64) {
        let limits = self.ctx.dedup;
        let slot = self.slots.get_mut(key);
        let Some(slot) = slot else {
            for a in answers {
                let _ = a.port.send(a.result);
            }
            return;
        };
        for a in answers {
            let _guard = a.span.enter();
            if !a.timers.is_empty() {
                let pending = slot.timers.get_or_insert_with(Box::default);
                for (seq, record) in &a.timers {
                    pending.apply(*seq, record);
                }
                if pending.is_empty() {
                    slot.timers = None;
                }
            }
            if a.remember
                && let Ok(r) = &a.result
            {
                let entry = DedupEntry { id: r.invocation_id.clone(), seq: r.seq, at_ms, reply: r.reply.clone() };
                slot.dedup.get_or_insert_with(Box::default).insert(entry, limits);
            }
            let _ = a.port.send(a.result);
        }
    }

    /// Asks for a snapshot when enough events accumulated.
    fn maybe_snapshot(&mut self, key: &EntityKey, now_ms: i64) {
        let every = self.ctx.snapshot_every;
        let Some(slot) = self.slots.get_mut(key) else { return };
        let Some(state) = slot.state.as_ref() else { return };
        if !step::snapshot_due(slot.events_since_snapshot, every) {
            return;
        }
        slot.events_since_snapshot = 0;
        let empty = DedupWindow::default();
        let dedup = slot.dedup.as_deref().unwrap_or(&empty);
        let timers = slot.timers.as_deref().map(Timers::to_list).unwrap_or_default();
        match activation::snapshot_payload(&slot.entity, state, dedup, timers) {
            Ok(payload) => {
                let snapshot = Snapshot { seq: slot.seq, version: SNAPSHOT_FORMAT, timestamp_ms: now_ms, payload };
                self.io.push(Io::Snapshot { key: key.clone(), snapshot });
            }
            Err(e) => tracing::warn!(entity = %key, error = %e, "snapshot skipped"),
        }
    }

    /// Drops the entity's in-memory state; queued work re-activates it from the journal.
    fn reset(&mut self, key: &EntityKey) {
        if let Some(slot) = self.remove(key, "reset")
            && !slot.queue.is_empty()
        {
            self.activate(key.clone(), slot.entity, slot.queue);
        }
    }

    fn remove(&mut self, key: &EntityKey, reason: &str) -> Option<Box<Slot>> {
        let slot = self.slots.remove(key)?;
        self.ctx.metrics.active_entities.dec();
        self.ctx.metrics.passivations.with_label_values(&[reason]).inc();
        Some(slot)
    }

    /// One tick of the shard's clock: passivates entities idle for the timeout.
    pub(crate) fn tick(&mut self) {
        self.flush_batch_sizes();
        self.clock = self.clock.wrapping_add(1);
        let (clock, idle) = (self.clock, self.idle_ticks);
        let before = self.slots.len();
        self.slots.retain(|_, s| !(s.idle() && clock.wrapping_sub(s.last_used) >= idle));
        let n = before - self.slots.len();
        if n > 0 {
            self.ctx.metrics.active_entities.sub(n as i64);
            self.ctx.metrics.passivations.with_label_values(&["idle"]).inc_by(n as u64);
            tracing::debug!(shard = self.shard, passivated = n, "idle entities passivated");
        }
    }

    /// This node hands off (or lost) an entity type's slice of the shard:
    /// refuse its new commands, passivate its idle entities (all of them
    /// when `force`: their waiting callers fail); returns how many are still busy.
    pub(crate) fn release(&mut self, entity_type: &str, force: bool) -> usize {
        let busy = self.passivate_type(entity_type, force);
        self.releasing.insert(entity_type.to_owned());
        busy
    }

    /// This node acquired the slice: forget anything cached for it and accept its commands again.
    pub(crate) fn acquire(&mut self, entity_type: &str) {
        self.passivate_type(entity_type, true);
        self.releasing.remove(entity_type);
    }

    fn passivate_type(&mut self, entity_type: &str, force: bool) -> usize {
        let keys: Vec<EntityKey> = self.slots.keys().filter(|k| k.entity_type == entity_type).cloned().collect();
        let mut busy = 0;
        for k in keys {
            let idle = self.slots.get(&k).is_some_and(|s| s.idle());
            if !(idle || force) {
                busy += 1;
                continue;
            }
            if let Some(slot) = self.remove(&k, "handoff") {
                if let Some(b) = slot.busy {
                    b.fail(&InvokeError::Timeout(format!(
                        "{k} moved to another node while its events were being written; the outcome is unknown, \
                         retry with the same idempotency key"
                    )));
                }
                for w in slot.queue {
                    w.fail(InvokeError::ShardMoved(format!("{k} moved to another node")));
                }
            }
        }
        busy
    }

    /// Passivates the least recently used idle tenth of the shard.
    fn evict_lru(&mut self) {
        let idle: Vec<(u32, EntityKey)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.idle())
            .map(|(k, s)| (self.clock.wrapping_sub(s.last_used), k.clone()))
            .collect();
        let victims = step::lru_victims(idle, self.ctx.shard_budget);
        for k in &victims {
            self.slots.remove(k);
        }
        if !victims.is_empty() {
            self.ctx.metrics.active_entities.sub(victims.len() as i64);
            self.ctx.metrics.passivations.with_label_values(&["lru"]).inc_by(victims.len() as u64);
        }
    }

    /// Fails everything waiting (the actor stops).
    pub(crate) fn stop(&mut self) {
        self.flush_batch_sizes();
        let n = self.slots.len() as i64;
        self.ctx.metrics.active_entities.sub(n);
        for (_, slot) in self.slots.drain() {
            if let Some(b) = slot.busy {
                b.fail(&InvokeError::Unavailable("node shutting down".into()));
            }
            for w in slot.queue {
                w.fail(InvokeError::Unavailable("node shutting down".into()));
            }
        }
    }
}

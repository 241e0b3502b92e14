//! Shard actors: each hosts the active entities of one shard as virtual
//! actors — a small record, the state and a queue per entity — inside one
//! ractor actor. The actor never waits on IO: it runs the pure handler,
//! hands the events to the journal from a spawned task, goes on with other
//! entities, and finishes the command (apply, reply, next queued command)
//! when the append's acknowledgement comes back as a message.

mod activation;
mod dedup;
mod supervisor;

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tessera_entities::{Ctx, DynCommand, DynEntity, DynState, HandleError};
use tessera_journal::{AppendAck, AppendRequest, EntityKey, Journal, NewEvent, Snapshot};
use tracing::Instrument;

pub(crate) use activation::rebuild;
pub(crate) use dedup::DedupLimits;
use dedup::DedupWindow;
pub(crate) use supervisor::{ShardRefs, ShardSupervisor};

use crate::envelope::{DedupEntry, EventMeta, SNAPSHOT_FORMAT};
use crate::error::InvokeError;
use crate::metrics::Metrics;

/// A command's successful outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReply {
    /// The reply, MessagePack.
    pub reply: Vec<u8>,
    /// The entity's last seq after the command.
    pub seq: u64,
    /// The invocation id.
    pub invocation_id: String,
    /// True when this is a retry answered from the idempotency window.
    pub deduplicated: bool,
}

/// An entity's current state, for inspection.
#[derive(Debug, Clone, PartialEq)]
pub struct StateView {
    /// The state as JSON.
    pub state: serde_json::Value,
    /// The seq of the last event applied.
    pub seq: u64,
}

/// What every shard actor shares.
pub(crate) struct ShardContext {
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) metrics: Metrics,
    pub(crate) dedup: DedupLimits,
    pub(crate) entity_queue_limit: usize,
    pub(crate) snapshot_every: u64,
    pub(crate) idle_timeout: Duration,
    pub(crate) shard_budget: usize,
    /// In a cluster: the lease table. Commands commit only while this node
    /// provably holds the shard's lease (checked before each append).
    pub(crate) fence: Option<Arc<tessera_cluster::Ownership>>,
    /// In a cluster: this node's id, recorded in each event's metadata.
    pub(crate) node_id: Option<String>,
}

pub(crate) struct CommandRequest {
    pub(crate) key: EntityKey,
    pub(crate) entity: Arc<dyn DynEntity>,
    pub(crate) command: DynCommand,
    pub(crate) invocation_id: String,
    /// The caller gave the id and may retry with it: remember the reply.
    pub(crate) retryable: bool,
    pub(crate) span: tracing::Span,
    pub(crate) reply: RpcReplyPort<Result<CommandReply, InvokeError>>,
}

pub(crate) struct StateRequest {
    pub(crate) key: EntityKey,
    pub(crate) entity: Arc<dyn DynEntity>,
    pub(crate) reply: RpcReplyPort<Result<StateView, InvokeError>>,
}

/// Messages of a shard actor.
pub(crate) enum ShardMsg {
    Command(CommandRequest),
    State(StateRequest),
    Activated {
        key: EntityKey,
        incarnation: u64,
        result: Result<activation::Rebuilt, InvokeError>,
    },
    Appended {
        key: EntityKey,
        incarnation: u64,
        result: Result<AppendAck, InvokeError>,
    },
    /// This node is handing off (or lost) an entity type's slice of the
    /// shard: refuse its new commands, passivate its idle entities (all of
    /// them when `force`), reply how many are still busy.
    Release {
        entity_type: String,
        force: bool,
        reply: RpcReplyPort<usize>,
    },
    /// This node just acquired the slice: forget anything cached for it and
    /// accept its commands again.
    Acquire {
        entity_type: String,
    },
    Tick,
}

enum Pending {
    Command(CommandRequest),
    State(StateRequest),
}

impl Pending {
    fn fail(self, e: InvokeError) {
        match self {
            Self::Command(c) => {
                let _ = c.reply.send(Err(e));
            }
            Self::State(s) => {
                let _ = s.reply.send(Err(e));
            }
        }
    }
}

/// A command whose events are being appended.
struct InFlight {
    typed: Box<dyn Any + Send>,
    reply: Vec<u8>,
    port: RpcReplyPort<Result<CommandReply, InvokeError>>,
    invocation_id: String,
    retryable: bool,
    events: u64,
    span: tracing::Span,
}

/// One active entity.
struct Slot {
    entity: Arc<dyn DynEntity>,
    /// `None` while the entity is being rebuilt.
    state: Option<DynState>,
    seq: u64,
    incarnation: u64,
    busy: Option<Box<InFlight>>,
    queue: VecDeque<Pending>,
    dedup: Option<Box<DedupWindow>>,
    events_since_snapshot: u64,
    last_used: u32,
    /// In a cluster: the lease epoch this node raised the entity's journal
    /// fence to when it activated it; its appends carry it.
    fence: Option<u64>,
}

/// The shard actor's behaviour.
pub(crate) struct ShardActor;

/// The shard actor's state.
pub(crate) struct ShardState {
    shard: u32,
    ctx: Arc<ShardContext>,
    slots: HashMap<EntityKey, Slot>,
    clock: u32,
    idle_ticks: u32,
    next_incarnation: u64,
    /// Entity types whose slice of this shard is being handed off.
    releasing: std::collections::HashSet<String>,
}

use crate::now_ms;

fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// How often a shard checks for idle entities.
pub(crate) fn tick_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = (u32, Arc<ShardContext>);

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        (shard, ctx): (u32, Arc<ShardContext>),
    ) -> Result<ShardState, ActorProcessingErr> {
        let period = tick_period(ctx.idle_timeout);
        let idle_ticks = (ctx.idle_timeout.as_millis() / period.as_millis().max(1)).max(1) as u32;
        myself.send_interval(period, || ShardMsg::Tick);
        Ok(ShardState {
            shard,
            ctx,
            slots: HashMap::new(),
            clock: 0,
            idle_ticks,
            next_incarnation: 1,
            releasing: Default::default(),
        })
    }

    async fn post_stop(&self, _: ActorRef<ShardMsg>, state: &mut ShardState) -> Result<(), ActorProcessingErr> {
        let n = state.slots.len() as i64;
        state.ctx.metrics.active_entities.sub(n);
        for (_, slot) in state.slots.drain() {
            if let Some(f) = slot.busy {
                let _ = f.port.send(Err(InvokeError::Unavailable("node shutting down".into())));
            }
            for p in slot.queue {
                p.fail(InvokeError::Unavailable("node shutting down".into()));
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Command(c) => {
                let (key, entity) = (c.key.clone(), c.entity.clone());
                st.enqueue(&myself, key, entity, Pending::Command(c));
            }
            ShardMsg::State(s) => {
                let (key, entity) = (s.key.clone(), s.entity.clone());
                st.enqueue(&myself, key, entity, Pending::State(s));
            }
            ShardMsg::Activated { key, incarnation, result } => st.activated(&myself, key, incarnation, result),
            ShardMsg::Appended { key, incarnation, result } => st.appended(&myself, key, incarnation, result),
            ShardMsg::Release { entity_type, force, reply } => {
                let busy = st.release(&entity_type, force);
                st.releasing.insert(entity_type);
                let _ = reply.send(busy);
            }
            ShardMsg::Acquire { entity_type } => {
                st.release(&entity_type, true);
                st.releasing.remove(&entity_type);
            }
            ShardMsg::Tick => st.tick(),
        }
        Ok(())
    }
}

impl ShardState {
    fn enqueue(&mut self, myself: &ActorRef<ShardMsg>, key: EntityKey, entity: Arc<dyn DynEntity>, p: Pending) {
        if self.releasing.contains(&key.entity_type) {
            return p.fail(InvokeError::ShardMoved(format!("{key} is being handed to another node")));
        }
        let clock = self.clock;
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.last_used = clock;
            if slot.state.is_some() && slot.busy.is_none() && slot.queue.is_empty() {
                self.drain(myself, &key, Some(p));
            } else if slot.queue.len() >= self.ctx.entity_queue_limit {
                p.fail(InvokeError::EntityBusy(key.to_string()));
            } else {
                slot.queue.push_back(p);
            }
            return;
        }
        if self.slots.len() >= self.ctx.shard_budget {
            self.evict_lru();
        }
        let mut queue = VecDeque::new();
        queue.push_back(p);
        self.activate(myself, key, entity, queue);
    }

    /// Creates a slot in the activating state and rebuilds it off the actor.
    fn activate(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        key: EntityKey,
        entity: Arc<dyn DynEntity>,
        queue: VecDeque<Pending>,
    ) {
        // In a cluster the entity is activated under the shard's current
        // lease epoch: the journal's fence is raised to it before the read,
        // so no older owner's write can land after what this node reads.
        let fence = match &self.ctx.fence {
            None => None,
            Some(f) => match f.fence(&key.entity_type, self.shard) {
                Some(epoch) => Some(epoch),
                None => {
                    let moved = || InvokeError::ShardMoved(format!("this node no longer holds the lease of {key}"));
                    for p in queue {
                        p.fail(moved());
                    }
                    return;
                }
            },
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
        };
        self.slots.insert(key.clone(), slot);
        let (ctx, me) = (self.ctx.clone(), myself.clone());
        let span = tracing::debug_span!("activate", entity = %key, shard = self.shard);
        tokio::spawn(
            async move {
                ctx.metrics.journal_in_flight.inc();
                let result = match fence {
                    Some(epoch) => match ctx.journal.raise_fence(&key, epoch).await {
                        Ok(()) => rebuild(&entity, &ctx.journal, &key, u64::MAX, true, ctx.dedup).await,
                        Err(e) => Err(InvokeError::from(e)),
                    },
                    None => rebuild(&entity, &ctx.journal, &key, u64::MAX, true, ctx.dedup).await,
                };
                ctx.metrics.journal_in_flight.dec();
                if let Err(e) = &result {
                    tracing::warn!(entity = %key, error = %e, "activation failed");
                }
                let _ = me.send_message(ShardMsg::Activated { key, incarnation, result });
            }
            .instrument(span),
        );
    }

    fn activated(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        key: EntityKey,
        incarnation: u64,
        result: Result<activation::Rebuilt, InvokeError>,
    ) {
        let Some(slot) = self.slots.get_mut(&key).filter(|s| s.incarnation == incarnation) else { return };
        match result {
            Ok(r) => {
                slot.state = Some(r.state);
                slot.seq = r.seq;
                slot.dedup = (!r.dedup.is_empty()).then(|| Box::new(r.dedup));
                slot.events_since_snapshot = r.events_since_snapshot;
                self.maybe_snapshot(&key);
                self.drain(myself, &key, None);
            }
            Err(e) => {
                if let Some(slot) = self.remove(&key, "reset") {
                    for p in slot.queue {
                        p.fail(e.clone());
                    }
                }
            }
        }
    }

    /// Runs `first` (an idle entity's new work, which skips the queue) and
    /// then queued work until the entity waits on an append or has nothing
    /// left; an emptied queue gives its buffer back (most entities are idle,
    /// and an idle entity should cost no queue memory).
    fn drain(&mut self, myself: &ActorRef<ShardMsg>, key: &EntityKey, mut first: Option<Pending>) {
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
            let c = match next {
                Pending::State(s) => {
                    let view = StateView { state: slot.entity.state_json(state), seq: slot.seq };
                    let _ = s.reply.send(Ok(view));
                    continue;
                }
                Pending::Command(c) => c,
            };
            let _guard = c.span.clone().entered();
            let now = now_ms();
            if c.retryable
                && let Some(hit) = slot.dedup.as_ref().and_then(|d| d.get(&c.invocation_id, now, self.ctx.dedup))
            {
                tracing::debug!(invocation = %c.invocation_id, seq = hit.seq, "answered from the idempotency window");
                let reply = CommandReply {
                    reply: hit.reply.clone(),
                    seq: hit.seq,
                    invocation_id: c.invocation_id,
                    deduplicated: true,
                };
                let _ = c.reply.send(Ok(reply));
                continue;
            }
            let mut ctx = Ctx::new(key.entity_id.clone(), c.invocation_id.clone(), slot.seq, now);
            let entity = slot.entity.clone();
            let decided = catch_unwind(AssertUnwindSafe(|| entity.handle(state, c.command, &mut ctx)));
            let effect = match decided {
                Err(panic) => {
                    let msg = panic_message(&*panic);
                    tracing::error!(entity = %key, panic = %msg, "handler panicked; resetting the entity");
                    self.ctx.metrics.handler_panics.inc();
                    let _ = c.reply.send(Err(InvokeError::HandlerPanicked(msg)));
                    self.reset(myself, key);
                    return;
                }
                Ok(Err(HandleError::Rejected(r))) => {
                    let _ = c.reply.send(Err(InvokeError::Rejected(r)));
                    continue;
                }
                Ok(Err(e)) => {
                    let _ = c.reply.send(Err(InvokeError::Internal(e.to_string())));
                    continue;
                }
                Ok(Ok(effect)) => effect,
            };
            if effect.events.is_empty() {
                let reply = CommandReply {
                    reply: effect.reply,
                    seq: slot.seq,
                    invocation_id: c.invocation_id,
                    deduplicated: false,
                };
                let _ = c.reply.send(Ok(reply));
                continue;
            }
            let epoch = match &self.ctx.fence {
                None => None,
                Some(f) => match f.fence(&key.entity_type, self.shard) {
                    Some(e) => Some(e),
                    None => {
                        let _ = c.reply.send(Err(InvokeError::ShardMoved(format!(
                            "this node no longer holds the lease of {}/{}",
                            key.entity_type, self.shard
                        ))));
                        continue;
                    }
                },
            };
            let n = effect.events.len();
            let base = EventMeta {
                invocation: c.invocation_id.clone(),
                reply: None,
                node: epoch.and(self.ctx.node_id.clone()),
                epoch,
            };
            let last_meta = EventMeta { reply: c.retryable.then(|| effect.reply.clone()), ..base.clone() }.encode();
            let meta = if n > 1 { base.encode() } else { Vec::new() };
            let events: Vec<NewEvent> = effect
                .events
                .into_iter()
                .enumerate()
                .map(|(i, e)| NewEvent {
                    type_name: e.type_name,
                    version: e.version,
                    payload: e.payload,
                    metadata: if i + 1 == n { last_meta.clone() } else { meta.clone() },
                })
                .collect();
            let expected = slot.seq;
            let incarnation = slot.incarnation;
            let request = AppendRequest::new(expected, events).with_fence(slot.fence);
            slot.busy = Some(Box::new(InFlight {
                typed: effect.typed,
                reply: effect.reply,
                port: c.reply,
                invocation_id: c.invocation_id,
                retryable: c.retryable,
                events: n as u64,
                span: c.span.clone(),
            }));
            let (ctx, me, key, shard) = (self.ctx.clone(), myself.clone(), key.clone(), self.shard);
            tokio::spawn(
                async move {
                    // The fence, again right before the commit: the lease may
                    // have lapsed while the command waited.
                    if let Some(f) = &ctx.fence
                        && f.fence(&key.entity_type, shard) != epoch
                    {
                        let e = InvokeError::ShardMoved(format!(
                            "the lease of {}/{shard} lapsed before the commit; nothing was written",
                            key.entity_type
                        ));
                        let _ = me.send_message(ShardMsg::Appended { key, incarnation, result: Err(e) });
                        return;
                    }
                    ctx.metrics.journal_in_flight.inc();
                    let result = ctx.journal.commit(&key, request).await.map_err(InvokeError::from);
                    ctx.metrics.journal_in_flight.dec();
                    let _ = me.send_message(ShardMsg::Appended { key, incarnation, result });
                }
                .instrument(c.span),
            );
            return;
        }
    }

    fn appended(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        key: EntityKey,
        incarnation: u64,
        result: Result<AppendAck, InvokeError>,
    ) {
        let Some(slot) = self.slots.get_mut(&key).filter(|s| s.incarnation == incarnation) else { return };
        let Some(f) = slot.busy.take() else { return };
        let InFlight { typed, reply, port, invocation_id, retryable, events, span } = *f;
        let _guard = span.enter();
        let ack = match result {
            Ok(ack) => ack,
            Err(e) => {
                tracing::warn!(entity = %key, error = %e, "append failed; reloading the entity from its journal");
                let _ = port.send(Err(e));
                drop(_guard);
                self.reset(myself, &key);
                return;
            }
        };
        let Some(state) = slot.state.as_mut() else { return };
        let entity = slot.entity.clone();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| entity.apply_effect(state, typed))) {
            let msg = panic_message(&*panic);
            tracing::error!(entity = %key, panic = %msg, "apply panicked after the events were persisted");
            self.ctx.metrics.handler_panics.inc();
            let _ = port.send(Err(InvokeError::HandlerPanicked(format!(
                "apply panicked after the events were persisted (seq {}): {msg}",
                ack.last_seq
            ))));
            drop(_guard);
            self.reset(myself, &key);
            return;
        }
        slot.seq = ack.last_seq;
        slot.events_since_snapshot += events;
        if retryable {
            let entry = DedupEntry {
                id: invocation_id.clone(),
                seq: ack.last_seq,
                at_ms: ack.timestamp_ms,
                reply: reply.clone(),
            };
            slot.dedup.get_or_insert_with(Box::default).insert(entry, self.ctx.dedup);
        }
        let reply = CommandReply { reply, seq: ack.last_seq, invocation_id, deduplicated: false };
        let _ = port.send(Ok(reply));
        drop(_guard);
        self.maybe_snapshot(&key);
        self.drain(myself, &key, None);
    }

    /// Saves a snapshot in the background when enough events accumulated.
    fn maybe_snapshot(&mut self, key: &EntityKey) {
        let every = self.ctx.snapshot_every;
        let Some(slot) = self.slots.get_mut(key) else { return };
        let Some(state) = slot.state.as_ref() else { return };
        if every == 0 || slot.events_since_snapshot < every {
            return;
        }
        slot.events_since_snapshot = 0;
        let empty = DedupWindow::default();
        let dedup = slot.dedup.as_deref().unwrap_or(&empty);
        let payload = match activation::snapshot_payload(&slot.entity, state, dedup) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(entity = %key, error = %e, "snapshot skipped");
                return;
            }
        };
        let snap = Snapshot { seq: slot.seq, version: SNAPSHOT_FORMAT, timestamp_ms: now_ms(), payload };
        let (ctx, key) = (self.ctx.clone(), key.clone());
        tokio::spawn(async move {
            match ctx.journal.save_snapshot(&key, snap).await {
                Ok(()) => ctx.metrics.snapshots.inc(),
                Err(e) => tracing::warn!(entity = %key, error = %e, "snapshot not saved"),
            }
        });
    }

    /// Drops the entity's in-memory state; queued work re-activates it from the journal.
    fn reset(&mut self, myself: &ActorRef<ShardMsg>, key: &EntityKey) {
        if let Some(slot) = self.remove(key, "reset")
            && !slot.queue.is_empty()
        {
            self.activate(myself, key.clone(), slot.entity, slot.queue);
        }
    }

    fn remove(&mut self, key: &EntityKey, reason: &str) -> Option<Slot> {
        let slot = self.slots.remove(key)?;
        self.ctx.metrics.active_entities.dec();
        self.ctx.metrics.passivations.with_label_values(&[reason]).inc();
        Some(slot)
    }

    fn passivatable(s: &Slot) -> bool {
        s.state.is_some() && s.busy.is_none() && s.queue.is_empty()
    }

    fn tick(&mut self) {
        self.clock = self.clock.wrapping_add(1);
        let (clock, idle) = (self.clock, self.idle_ticks);
        let before = self.slots.len();
        self.slots.retain(|_, s| !(Self::passivatable(s) && clock.wrapping_sub(s.last_used) >= idle));
        let n = before - self.slots.len();
        if n > 0 {
            self.ctx.metrics.active_entities.sub(n as i64);
            self.ctx.metrics.passivations.with_label_values(&["idle"]).inc_by(n as u64);
            tracing::debug!(shard = self.shard, passivated = n, "idle entities passivated");
        }
    }

    /// Passivates the entities of one type (only idle ones unless `force`;
    /// forced ones fail their waiting callers); returns how many remain.
    fn release(&mut self, entity_type: &str, force: bool) -> usize {
        let keys: Vec<EntityKey> = self.slots.keys().filter(|k| k.entity_type == entity_type).cloned().collect();
        let mut busy = 0;
        for k in keys {
            let idle = self.slots.get(&k).is_some_and(Self::passivatable);
            if !(idle || force) {
                busy += 1;
                continue;
            }
            if let Some(slot) = self.remove(&k, "handoff") {
                let moved = || InvokeError::ShardMoved(format!("{k} moved to another node"));
                if let Some(f) = slot.busy {
                    let _ = f.port.send(Err(InvokeError::Timeout(format!(
                        "{k} moved to another node while its events were being written; the outcome is unknown, \
                         retry with the same idempotency key"
                    ))));
                }
                for p in slot.queue {
                    p.fail(moved());
                }
            }
        }
        busy
    }

    /// Passivates the least recently used idle tenth of the shard.
    fn evict_lru(&mut self) {
        let mut idle: Vec<(u32, EntityKey)> = self
            .slots
            .iter()
            .filter(|(_, s)| Self::passivatable(s))
            .map(|(k, s)| (self.clock.wrapping_sub(s.last_used), k.clone()))
            .collect();
        let n = (self.ctx.shard_budget / 10).max(1).min(idle.len());
        if n == 0 {
            return;
        }
        idle.select_nth_unstable_by(n - 1, |a, b| b.0.cmp(&a.0));
        for (_, k) in idle.into_iter().take(n) {
            self.slots.remove(&k);
        }
        self.ctx.metrics.active_entities.sub(n as i64);
        self.ctx.metrics.passivations.with_label_values(&["lru"]).inc_by(n as u64);
    }
}

//! The decision for one command of one entity, as a pure function of the
//! entity's record, the command, the time and the lease: answer from the
//! idempotency record, refuse, reset, or append these events. No IO, no
//! actor: the shard's state machine (`machine.rs`) carries it out.
//!
//! Invariant: nothing the entity's state or journal would show changes
//! here; a decision to append carries everything needed to apply the
//! typed effect and reply once the journal acknowledged it.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tessera_entities::{Ctx, DynCommand, DynEntity, DynState, HandleError};
use tessera_journal::{AppendRequest, EntityKey, NewEvent};

use super::CommandReply;
use super::dedup::{DedupLimits, DedupWindow};
use crate::envelope::EventMeta;
use crate::error::InvokeError;
use crate::flow::{Fired, FlowRecord, Timers};

/// MessagePack `nil`: the reply of a timer fire that ran no handler.
const NIL: [u8; 1] = [0xc0];

/// The shard's lease as this node sees it when a command is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lease {
    /// No cluster: this node owns everything; appends are unfenced.
    Unfenced,
    /// Held under this epoch.
    Held(u64),
    /// Not held (expired, lost or handed off): nothing may commit.
    Lost,
}

/// What a decision reads of an entity.
pub(crate) struct Record<'a> {
    pub(crate) key: &'a EntityKey,
    pub(crate) entity: &'a Arc<dyn DynEntity>,
    pub(crate) state: &'a DynState,
    pub(crate) seq: u64,
    pub(crate) dedup: Option<&'a DedupWindow>,
    /// The epoch the entity's journal fence was raised to at activation.
    pub(crate) fence: Option<u64>,
    /// Its pending timers (`None`: none).
    pub(crate) timers: Option<&'a Timers>,
}

/// A due timer, delivered to its entity: which one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimerFire {
    pub(crate) id: String,
    /// The seq of the event that scheduled it.
    pub(crate) seq: u64,
}

/// One command as the decision sees it (its reply port stays with the caller).
pub(crate) struct Command {
    pub(crate) command: DynCommand,
    pub(crate) invocation_id: String,
    /// The caller gave the id and may retry with it: remember the reply.
    pub(crate) retryable: bool,
    /// Set when the command is a due timer's.
    pub(crate) timer: Option<TimerFire>,
}

/// What was decided, to apply once the append is acknowledged.
pub(crate) struct Pending {
    /// The handler's typed events (`None`: a refused timer command, only
    /// its `fired` record is written).
    pub(crate) typed: Option<Box<dyn Any + Send>>,
    pub(crate) reply: Vec<u8>,
    /// Events written, the runtime's records included.
    pub(crate) events: u64,
    /// The records that change the entity's timers, with their seqs.
    pub(crate) timers: Vec<(u64, FlowRecord)>,
    /// The lease epoch the decision was made under (checked again right
    /// before the commit).
    pub(crate) epoch: Option<u64>,
}

/// The outcome of [`decide`].
pub(crate) enum Decision {
    /// A retry of an invocation the entity already applied: its original reply.
    Remembered(CommandReply),
    /// The handler replied without events: answer now, nothing to write.
    Reply(CommandReply),
    /// Refused (a rejection, a handler error, the lease lost): nothing written.
    Refuse(InvokeError),
    /// The handler panicked: refuse, and rebuild the entity from its journal.
    Reset(InvokeError),
    /// Append these events; apply and reply when the journal acknowledges.
    Append(AppendRequest, Pending),
}

/// Decides one command.
/// `key_retention`: how long the journal remembers the command's
/// idempotency key (when the caller gave one).
pub(crate) fn decide(
    r: &Record<'_>,
    c: Command,
    now_ms: i64,
    lease: Lease,
    node_id: Option<&str>,
    limits: DedupLimits,
    key_retention: std::time::Duration,
) -> Decision {
    if c.retryable
        && let Some(hit) = r.dedup.and_then(|d| d.get(&c.invocation_id, now_ms, limits))
    {
        return Decision::Remembered(CommandReply {
            reply: hit.reply.clone(),
            seq: hit.seq,
            invocation_id: c.invocation_id,
            deduplicated: true,
        });
    }
    if let Some(f) = &c.timer
        && !r.timers.is_some_and(|t| t.pending(&f.id, f.seq))
    {
        // Cancelled, replaced or fired already: the fire does nothing.
        return Decision::Reply(CommandReply {
            reply: NIL.to_vec(),
            seq: r.seq,
            invocation_id: c.invocation_id,
            deduplicated: true,
        });
    }
    let mut ctx = Ctx::new(r.key.entity_id.clone(), c.invocation_id.clone(), r.seq, now_ms);
    let handled = catch_unwind(AssertUnwindSafe(|| r.entity.handle(r.state, c.command, &mut ctx)));
    let (user_events, typed, reply, actions, rejected) = match handled {
        Err(panic) => return Decision::Reset(InvokeError::HandlerPanicked(panic_message(&*panic))),
        // A timer's command refused: the timer is spent all the same.
        Ok(Err(HandleError::Rejected(rejection))) if c.timer.is_some() => {
            (Vec::new(), None, NIL.to_vec(), Vec::new(), Some(rejection))
        }
        Ok(Err(HandleError::Rejected(rejection))) => return Decision::Refuse(InvokeError::Rejected(rejection)),
        Ok(Err(e)) => return Decision::Refuse(InvokeError::Internal(e.to_string())),
        Ok(Ok(e)) => (e.events, Some(e.typed), e.reply, e.actions, None),
    };
    let mut records = Vec::with_capacity(actions.len() + 1);
    if let Some(f) = &c.timer {
        records.push(FlowRecord::Fired(Fired { timer_id: f.id.clone(), scheduled_seq: f.seq, rejected }));
    }
    for a in actions {
        match FlowRecord::of(a) {
            Some(record) => records.push(record),
            None => {
                return Decision::Refuse(InvokeError::Internal(format!(
                    "{}: the handler asked for an action this runtime does not know; nothing was written",
                    r.key
                )));
            }
        }
    }
    if user_events.is_empty() && records.is_empty() {
        let reply = CommandReply { reply, seq: r.seq, invocation_id: c.invocation_id, deduplicated: false };
        return Decision::Reply(reply);
    }
    let epoch = match epoch_of(lease, r.key) {
        Ok(e) => e,
        Err(e) => return Decision::Refuse(e),
    };
    let first_record_seq = r.seq + 1 + user_events.len() as u64;
    let mut events: Vec<NewEvent> = user_events
        .into_iter()
        .map(|e| NewEvent { type_name: e.type_name, version: e.version, payload: e.payload, metadata: Vec::new() })
        .collect();
    for record in &records {
        match record.to_event() {
            Ok(e) => events.push(e),
            Err(e) => return Decision::Refuse(InvokeError::Internal(format!("{}: {e}", r.key))),
        }
    }
    let sends = records.iter().any(|r| matches!(r, FlowRecord::Send(_) | FlowRecord::Call(_)));
    let timers = records
        .into_iter()
        .enumerate()
        .filter(|(_, rec)| matches!(rec, FlowRecord::Schedule(_) | FlowRecord::Cancel(_) | FlowRecord::Fired(_)))
        .map(|(i, rec)| (first_record_seq + i as u64, rec))
        .collect();
    let n = events.len();
    let base = EventMeta {
        invocation: c.invocation_id.clone(),
        reply: None,
        node: epoch.and(node_id.map(str::to_owned)),
        epoch,
        trace: if sends { crate::telemetry::current_traceparent() } else { None },
    };
    let last_meta = EventMeta { reply: c.retryable.then(|| reply.clone()), ..base.clone() }.encode();
    let meta = if n > 1 { base.encode() } else { Vec::new() };
    for (i, e) in events.iter_mut().enumerate() {
        e.metadata = if i + 1 == n { last_meta.clone() } else { meta.clone() };
    }
    let mut request = AppendRequest::new(r.seq, events).with_fence(r.fence);
    if c.retryable {
        // The journal refuses the key if the entity committed it before,
        // however long ago within the retention (`Duplicate`), and records it.
        request = request.with_key(c.invocation_id.clone(), key_retention);
    }
    Decision::Append(request, Pending { typed, reply, events: n as u64, timers, epoch })
}

/// The epoch an append is fenced with, refused when the lease is lost.
fn epoch_of(lease: Lease, key: &EntityKey) -> Result<Option<u64>, InvokeError> {
    match lease {
        Lease::Unfenced => Ok(None),
        Lease::Held(e) => Ok(Some(e)),
        Lease::Lost => {
            Err(InvokeError::ShardMoved(format!("this node no longer holds the lease of {key}; nothing was written")))
        }
    }
}

/// A delete as the decision sees it.
pub(crate) struct Delete {
    pub(crate) invocation_id: String,
    /// How long until the purge.
    pub(crate) grace_ms: i64,
    /// `api` or `ttl`.
    pub(crate) reason: String,
}

/// Decides a delete: the tombstone to append; for an entity deleted
/// already, the first delete's outcome; for one never written, not found.
pub(crate) fn decide_delete(r: &Record<'_>, d: Delete, now_ms: i64, lease: Lease, node_id: Option<&str>) -> Decision {
    let outcome = |seq, purge_at_ms| {
        tessera_entities::codec::to_msgpack(&crate::flow::DeleteOutcome { deleted_at_seq: seq, purge_at_ms })
            .map_err(|e| InvokeError::Internal(e.to_string()))
    };
    if let Some(t) = r.timers.and_then(Timers::tombstone) {
        return match outcome(t.seq, t.at_ms) {
            Ok(reply) => {
                Decision::Reply(CommandReply { reply, seq: r.seq, invocation_id: d.invocation_id, deduplicated: true })
            }
            Err(e) => Decision::Refuse(e),
        };
    }
    if r.seq == 0 {
        return Decision::Refuse(InvokeError::EntityNotFound(format!("{}: nothing was ever written to it", r.key)));
    }
    let epoch = match epoch_of(lease, r.key) {
        Ok(e) => e,
        Err(e) => return Decision::Refuse(e),
    };
    let purge_at_ms = now_ms.saturating_add(d.grace_ms);
    let record = FlowRecord::Deleted(crate::flow::Tombstone { purge_at_ms, reason: d.reason });
    let (mut event, reply) = match (record.to_event(), outcome(r.seq + 1, purge_at_ms)) {
        (Ok(e), Ok(reply)) => (e, reply),
        (Err(e), _) => return Decision::Refuse(InvokeError::Internal(format!("{}: {e}", r.key))),
        (_, Err(e)) => return Decision::Refuse(e),
    };
    let node = epoch.and(node_id.map(str::to_owned));
    event.metadata = EventMeta { invocation: d.invocation_id, reply: None, node, epoch, trace: None }.encode();
    let request = AppendRequest::new(r.seq, vec![event]).with_fence(r.fence);
    Decision::Append(request, Pending { typed: None, reply, events: 1, timers: vec![(r.seq + 1, record)], epoch })
}

/// Whether a snapshot is due after `events_since_snapshot` (0: never).
pub(crate) fn snapshot_due(events_since_snapshot: u64, every: u64) -> bool {
    every > 0 && events_since_snapshot >= every
}

/// The keys to passivate when a shard is over its budget: the least
/// recently used tenth of its idle entities (at least one), oldest first.
/// `idle` holds each idle entity's age in ticks.
pub(crate) fn lru_victims<K: Clone>(mut idle: Vec<(u32, K)>, budget: usize) -> Vec<K> {
    let n = (budget / 10).max(1).min(idle.len());
    if n == 0 {
        return Vec::new();
    }
    idle.select_nth_unstable_by(n - 1, |a, b| b.0.cmp(&a.0));
    idle.truncate(n);
    idle.sort_by_key(|(age, _)| std::cmp::Reverse(*age));
    idle.into_iter().map(|(_, k)| k).collect()
}

pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

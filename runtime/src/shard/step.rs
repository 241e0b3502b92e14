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
}

/// One command as the decision sees it (its reply port stays with the caller).
pub(crate) struct Command {
    pub(crate) command: DynCommand,
    pub(crate) invocation_id: String,
    /// The caller gave the id and may retry with it: remember the reply.
    pub(crate) retryable: bool,
}

/// What was decided, to apply once the append is acknowledged.
pub(crate) struct Pending {
    pub(crate) typed: Box<dyn Any + Send>,
    pub(crate) reply: Vec<u8>,
    pub(crate) events: u64,
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
    let mut ctx = Ctx::new(r.key.entity_id.clone(), c.invocation_id.clone(), r.seq, now_ms);
    let effect = match catch_unwind(AssertUnwindSafe(|| r.entity.handle(r.state, c.command, &mut ctx))) {
        Err(panic) => return Decision::Reset(InvokeError::HandlerPanicked(panic_message(&*panic))),
        Ok(Err(HandleError::Rejected(rejection))) => return Decision::Refuse(InvokeError::Rejected(rejection)),
        Ok(Err(e)) => return Decision::Refuse(InvokeError::Internal(e.to_string())),
        Ok(Ok(effect)) => effect,
    };
    if !effect.actions.is_empty() {
        // Never drop what a handler asked for: until the runtime delivers
        // messages, timers and calls, an effect carrying them is refused
        // whole (nothing written).
        return Decision::Refuse(InvokeError::Internal(format!(
            "{}: the handler asked for {} message(s), timer(s) or call(s); this runtime does not carry them out \
             yet, so nothing was written",
            r.key,
            effect.actions.len()
        )));
    }
    if effect.events.is_empty() {
        let reply =
            CommandReply { reply: effect.reply, seq: r.seq, invocation_id: c.invocation_id, deduplicated: false };
        return Decision::Reply(reply);
    }
    let epoch = match lease {
        Lease::Unfenced => None,
        Lease::Held(e) => Some(e),
        Lease::Lost => {
            return Decision::Refuse(InvokeError::ShardMoved(format!(
                "this node no longer holds the lease of {}; nothing was written",
                r.key
            )));
        }
    };
    let n = effect.events.len();
    let base = EventMeta {
        invocation: c.invocation_id.clone(),
        reply: None,
        node: epoch.and(node_id.map(str::to_owned)),
        epoch,
    };
    let last_meta = EventMeta { reply: c.retryable.then(|| effect.reply.clone()), ..base.clone() }.encode();
    let meta = if n > 1 { base.encode() } else { Vec::new() };
    let events = effect
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
    let mut request = AppendRequest::new(r.seq, events).with_fence(r.fence);
    if c.retryable {
        // The journal refuses the key if the entity committed it before,
        // however long ago within the retention (`Duplicate`), and records it.
        request = request.with_key(c.invocation_id.clone(), key_retention);
    }
    Decision::Append(request, Pending { typed: effect.typed, reply: effect.reply, events: n as u64, epoch })
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

//! The commands of one entity written in one append. While an entity's
//! append is in flight its new commands queue; when it is acknowledged the
//! queue is decided one command after another, each against the state the
//! ones before it leave (their typed effects applied as the next is
//! decided), and all their events go to the journal in one append — one
//! append per entity per group commit, however hot the entity.
//!
//! Invariants:
//! - nothing is answered before the append is durable: a reply or a
//!   rejection decided against the batch's pending state is *held* until
//!   the journal acknowledges (only a retry answered from the idempotency
//!   window, which tells of a committed command, is answered at once);
//! - per-entity order: members are decided, written and answered in queue order;
//! - a failed append fails every member and the entity is rebuilt from its
//!   journal (the pending state is thrown away);
//! - each keyed member's key is recorded at its own last event, whose
//!   metadata holds its reply.

use std::any::Any;

use ractor::RpcReplyPort;

use tessera_journal::AppendRequest;

use super::CommandReply;
use super::step::Pending;
use crate::error::InvokeError;
use crate::flow::FlowRecord;

/// Where a command's outcome goes.
pub(crate) type Port = RpcReplyPort<Result<CommandReply, InvokeError>>;

/// How large an entity's batch grows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    /// Most commands in one append (1: no batching).
    pub(crate) commands: usize,
    /// No more commands once the events reach this many bytes (a soft
    /// bound: the last command may pass it).
    pub(crate) bytes: usize,
}

/// What a member is answered once the append is durable.
enum Outcome {
    /// It wrote events: its reply, at its last event's seq.
    Wrote { reply: Vec<u8>, retryable: bool, last_seq: u64, timers: Vec<(u64, FlowRecord)> },
    /// It wrote nothing (a read, a rejection) but was decided against the
    /// pending state: this answer, once that state is durable.
    Held(Result<CommandReply, InvokeError>),
}

/// One command of a batch.
struct Member {
    port: Port,
    invocation_id: String,
    span: tracing::Span,
    outcome: Outcome,
}

/// A member's answer, once the append's fate is known.
pub(crate) struct Answer {
    pub(crate) port: Port,
    pub(crate) span: tracing::Span,
    pub(crate) result: Result<CommandReply, InvokeError>,
    /// For a member that wrote: remember its reply in the idempotency
    /// window (a caller-given key), and the timer records to apply.
    pub(crate) remember: bool,
    pub(crate) timers: Vec<(u64, FlowRecord)>,
}

/// An entity's append in flight and the commands it answers.
#[derive(Default)]
pub(crate) struct Batch {
    members: Vec<Member>,
    /// The typed effect of the last member that wrote, applied when the
    /// journal acknowledges (or when another command is decided after it).
    typed: Option<Box<dyn Any + Send>>,
    /// Events in the append.
    pub(crate) events: u64,
    /// Their bytes (payloads and metadata).
    pub(crate) bytes: usize,
    /// A member whose effect's apply panicked (its events are in the
    /// append): it is answered with this error and the entity rebuilt.
    poisoned: Option<(usize, String)>,
    /// Rebuild the entity once the members are answered (a handler panicked).
    pub(crate) reset_after: bool,
}

impl Batch {
    /// Adds a command that wrote: `request` is its decision's append (whose
    /// events and keys the caller moves into the batch's append), `pending`
    /// what to apply and answer once it is durable.
    pub(crate) fn wrote(
        &mut self,
        port: Port,
        invocation_id: String,
        span: tracing::Span,
        retryable: bool,
        request: &AppendRequest,
        pending: Pending,
    ) {
        debug_assert!(self.typed.is_none(), "the previous member's effect is applied before the next is decided");
        let last_seq = request.expected_seq + request.events.len() as u64;
        let outcome = Outcome::Wrote { reply: pending.reply, retryable, last_seq, timers: pending.timers };
        self.members.push(Member { port, invocation_id, span, outcome });
        self.typed = pending.typed;
        self.events += pending.events;
        self.bytes +=
            request.events.iter().map(|e| e.payload.len() + e.metadata.len() + e.type_name.len()).sum::<usize>();
    }

    /// Adds a member answered once the append is durable.
    pub(crate) fn hold(
        &mut self,
        port: Port,
        invocation_id: String,
        span: tracing::Span,
        r: Result<CommandReply, InvokeError>,
    ) {
        self.members.push(Member { port, invocation_id, span, outcome: Outcome::Held(r) });
    }

    /// Commands in the batch.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether a member has this invocation id.
    pub(crate) fn has(&self, invocation_id: &str) -> bool {
        self.members.iter().any(|m| m.invocation_id == invocation_id)
    }

    /// The pending effect, to apply before deciding the next command (or
    /// when the append is acknowledged).
    pub(crate) fn take_typed(&mut self) -> Option<Box<dyn Any + Send>> {
        self.typed.take()
    }

    /// The last member that wrote had its effect's apply panic: it will be
    /// answered with `message`, and the entity rebuilt.
    pub(crate) fn poison(&mut self, message: String) {
        let last = self.members.iter().rposition(|m| matches!(m.outcome, Outcome::Wrote { .. }));
        self.poisoned = last.map(|i| (i, message));
        self.reset_after = true;
    }

    /// Whether an apply panicked.
    pub(crate) fn poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// The answers once the append committed, in the order the commands were decided.
    pub(crate) fn committed(self) -> Vec<Answer> {
        let poisoned = self.poisoned;
        self.members
            .into_iter()
            .enumerate()
            .map(|(i, m)| match m.outcome {
                Outcome::Held(result) => {
                    Answer { port: m.port, span: m.span, result, remember: false, timers: Vec::new() }
                }
                Outcome::Wrote { reply, retryable, last_seq, timers } => {
                    let result = match &poisoned {
                        Some((p, msg)) if *p == i => Err(InvokeError::HandlerPanicked(format!(
                            "apply panicked after the events were persisted (seq {last_seq}): {msg}"
                        ))),
                        _ => Ok(CommandReply {
                            reply,
                            seq: last_seq,
                            invocation_id: m.invocation_id,
                            deduplicated: false,
                        }),
                    };
                    Answer { port: m.port, span: m.span, result, remember: retryable, timers }
                }
            })
            .collect()
    }

    /// The journal held the key `key` already (committed at `seq` with
    /// `reply`): that member gets the original reply; nothing was written,
    /// so every other member fails with a retryable error.
    pub(crate) fn remembered(self, key: &str, seq: u64, reply: &[u8]) -> Vec<Answer> {
        self.members
            .into_iter()
            .map(|m| {
                let hit = m.invocation_id == key && matches!(m.outcome, Outcome::Wrote { .. });
                let result = if hit {
                    Ok(CommandReply { reply: reply.to_vec(), seq, invocation_id: m.invocation_id, deduplicated: true })
                } else {
                    Err(InvokeError::Unavailable(format!(
                        "not applied: it was written together with a retry of invocation {key}, which the entity \
                         had committed already; nothing was written, send it again"
                    )))
                };
                Answer { port: m.port, span: m.span, result, remember: hit, timers: Vec::new() }
            })
            .collect()
    }

    /// Every member fails with `e` (nothing was written, or the outcome is unknown).
    pub(crate) fn fail(self, e: &InvokeError) {
        for m in self.members {
            let _ = m.port.send(Err(e.clone()));
        }
    }
}

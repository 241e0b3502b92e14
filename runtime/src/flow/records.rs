//! How messages, timers and calls are stored: as internal events in the
//! entity's own journal, in the same append as the events of the command
//! that asked for them (the outbox *is* the journal). Their type names
//! start with `tessera.`, so replay leaves the user's state alone and user
//! projections never see them.
//!
//! | type name          | payload            | written when                        |
//! |--------------------|--------------------|-------------------------------------|
//! | `tessera.send`     | [`Message`]        | a handler sends or asks             |
//! | `tessera.schedule` | [`Timer`]          | a handler schedules                 |
//! | `tessera.cancel`   | `{timer_id}`       | a handler cancels                   |
//! | `tessera.call`     | [`FunctionCall`]   | a handler calls a function          |
//! | `tessera.fired`    | [`Fired`]          | a due timer reached its entity      |
//! | `tessera.deleted`  | [`Tombstone`]      | the entity was deleted              |
//!
//! A tombstone ends an entity's life: its pending timers are dropped and
//! one timer takes their place, [`PURGE_TIMER`], due when the grace period
//! ends; it purges the entity's journal (see `docs/operations.md`).
//!
//! A timer is named by its id and the seq of the event that scheduled it:
//! scheduling the id again replaces it, and a fire of a replaced, cancelled
//! or already fired timer is recognised (and does nothing).
//!
//! May import: the entities' action types, the journal's `NewEvent`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_entities::{Action, FunctionCall, Message, Rejection, Timer, codec};
use tessera_journal::NewEvent;

/// Type name of a stored send.
pub const SEND: &str = "tessera.send";
/// Type name of a stored timer.
pub const SCHEDULE: &str = "tessera.schedule";
/// Type name of a stored cancellation.
pub const CANCEL: &str = "tessera.cancel";
/// Type name of a stored function call.
pub const CALL: &str = "tessera.call";
/// Type name of a fired timer.
pub const FIRED: &str = "tessera.fired";

/// Type name of a tombstone.
pub const DELETED: &str = "tessera.deleted";
/// The id (and command name) of the timer that purges a deleted entity.
pub const PURGE_TIMER: &str = "tessera.purge";

/// Version of these records' encoding.
pub const FLOW_VERSION: u32 = 1;

/// True for an event the runtime wrote (not the entity's own).
pub use tessera_journal::is_internal_type as is_internal;

/// A timer that reached its entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    /// The timer's id.
    pub timer_id: String,
    /// The seq of the event that scheduled it.
    pub scheduled_seq: u64,
    /// The entity refused the timer's command: why (the timer is spent anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
}

/// An entity's tombstone: it was deleted, and its journal is purged at `purge_at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    /// When the purge is due, ms since the Unix epoch.
    pub purge_at_ms: i64,
    /// Why: `api` (`DELETE /v1/entities/…`) or `ttl` (the type's state TTL).
    pub reason: String,
}

/// What a delete answers: the tombstone's seq and when the purge is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOutcome {
    /// The seq of the tombstone.
    pub deleted_at_seq: u64,
    /// When the journal is purged, ms since the Unix epoch.
    pub purge_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Cancel {
    timer_id: String,
}

/// One stored record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowRecord {
    /// A command to an entity.
    Send(Message),
    /// A timer.
    Schedule(Timer),
    /// A cancellation.
    Cancel(String),
    /// A function call.
    Call(FunctionCall),
    /// A timer fired.
    Fired(Fired),
    /// The entity was deleted.
    Deleted(Tombstone),
}

/// Why a stored record does not decode.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{type_name} record does not decode: {message}")]
pub struct RecordError {
    /// The record's type name.
    pub type_name: String,
    /// The decoder's message.
    pub message: String,
}

impl FlowRecord {
    /// The record of an action.
    pub(crate) fn of(action: Action) -> Option<Self> {
        Some(match action {
            Action::Send(m) => Self::Send(m),
            Action::Schedule(t) => Self::Schedule(t),
            Action::Cancel { timer_id } => Self::Cancel(timer_id),
            Action::Call(c) => Self::Call(c),
            _ => return None,
        })
    }

    /// Its type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Send(_) => SEND,
            Self::Schedule(_) => SCHEDULE,
            Self::Cancel(_) => CANCEL,
            Self::Call(_) => CALL,
            Self::Fired(_) => FIRED,
            Self::Deleted(_) => DELETED,
        }
    }

    /// The record as a journal event (metadata left to the caller).
    pub(crate) fn to_event(&self) -> Result<NewEvent, codec::CodecError> {
        let payload = match self {
            Self::Send(m) => codec::to_msgpack(m)?,
            Self::Schedule(t) => codec::to_msgpack(t)?,
            Self::Cancel(id) => codec::to_msgpack(&Cancel { timer_id: id.clone() })?,
            Self::Call(c) => codec::to_msgpack(c)?,
            Self::Fired(f) => codec::to_msgpack(f)?,
            Self::Deleted(t) => codec::to_msgpack(t)?,
        };
        Ok(NewEvent { type_name: self.type_name().into(), version: FLOW_VERSION, payload, metadata: Vec::new() })
    }

    /// Decodes a stored event; `None` when it is not a flow record (an
    /// entity's own event, or another internal type).
    pub fn decode(type_name: &str, payload: &[u8]) -> Option<Result<Self, RecordError>> {
        let err = |e: codec::CodecError| RecordError { type_name: type_name.to_owned(), message: e.0 };
        Some(match type_name {
            SEND => codec::from_msgpack(payload).map(Self::Send).map_err(err),
            SCHEDULE => codec::from_msgpack(payload).map(Self::Schedule).map_err(err),
            CANCEL => codec::from_msgpack::<Cancel>(payload).map(|c| Self::Cancel(c.timer_id)).map_err(err),
            CALL => codec::from_msgpack(payload).map(Self::Call).map_err(err),
            FIRED => codec::from_msgpack(payload).map(Self::Fired).map_err(err),
            DELETED => codec::from_msgpack(payload).map(Self::Deleted).map_err(err),
            _ => return None,
        })
    }

    /// The record as JSON, command payloads decoded (for `journal events`
    /// and the HTTP API).
    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let command = |c: &tessera_entities::CommandCall| json!({ "name": c.name, "payload": c.payload_json() });
        match self {
            Self::Send(m) => json!({
                "send": { "target": m.target.to_string(), "command": command(&m.command),
                          "reply_to": m.reply_to, "correlation": m.correlation }
            }),
            Self::Schedule(t) => {
                json!({ "schedule": { "timer_id": t.id, "at_ms": t.at_ms, "command": command(&t.command) } })
            }
            Self::Cancel(id) => json!({ "cancel": { "timer_id": id } }),
            Self::Call(c) => json!({
                "call": { "function": c.function, "input": codec::msgpack_to_json(&c.input).unwrap_or_default(),
                          "reply_to": c.reply_to, "correlation": c.correlation }
            }),
            Self::Fired(f) => json!({ "fired": f }),
            Self::Deleted(t) => json!({ "deleted": t }),
        }
    }
}

/// The JSON of a stored event's payload: flow records readably, other
/// events as MessagePack decoded.
pub fn payload_json(type_name: &str, payload: &[u8]) -> serde_json::Value {
    match FlowRecord::decode(type_name, payload) {
        Some(Ok(r)) => r.json(),
        Some(Err(e)) => serde_json::json!({ "undecodable": e.to_string() }),
        None => codec::msgpack_to_json(payload).unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() })),
    }
}

/// A timer waiting to fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingTimer {
    /// The timer's id.
    pub id: String,
    /// The seq of the event that scheduled it.
    pub seq: u64,
    /// When it is due, ms since the Unix epoch.
    pub at_ms: i64,
    /// What it sends to its entity.
    pub command: tessera_entities::CommandCall,
}

impl PendingTimer {
    /// As JSON for the HTTP API: the command's payload decoded, the due time also as RFC 3339.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "seq": self.seq,
            "at_ms": self.at_ms,
            "at": crate::inspect::rfc3339_ms(self.at_ms),
            "command": { "name": self.command.name, "payload": self.command.payload_json() },
        })
    }

    /// Back from [`Self::json`] (a state read forwarded to the owner).
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let command = &v["command"];
        Some(Self {
            id: v["id"].as_str()?.to_owned(),
            seq: v["seq"].as_u64()?,
            at_ms: v["at_ms"].as_i64()?,
            command: tessera_entities::CommandCall::named(command["name"].as_str()?, &command["payload"]).ok()?,
        })
    }
}

/// The pending timers of one entity, by id: the fold of its `schedule`,
/// `cancel` and `fired` records in seq order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timers(BTreeMap<String, PendingTimer>);

impl Timers {
    /// Applies one record at `seq` (other records change nothing).
    pub fn apply(&mut self, seq: u64, record: &FlowRecord) {
        match record {
            FlowRecord::Schedule(t) => {
                let timer = PendingTimer { id: t.id.clone(), seq, at_ms: t.at_ms, command: t.command.clone() };
                self.0.insert(t.id.clone(), timer);
            }
            FlowRecord::Cancel(id) => {
                self.0.remove(id);
            }
            FlowRecord::Fired(f) => {
                if self.0.get(&f.timer_id).is_some_and(|t| t.seq == f.scheduled_seq) {
                    self.0.remove(&f.timer_id);
                }
            }
            FlowRecord::Deleted(t) => {
                // Nothing the entity scheduled fires any more; its purge does.
                self.0.clear();
                let command = tessera_entities::CommandCall { name: PURGE_TIMER.into(), payload: vec![0xc0] };
                let timer = PendingTimer { id: PURGE_TIMER.into(), seq, at_ms: t.purge_at_ms, command };
                self.0.insert(PURGE_TIMER.into(), timer);
            }
            FlowRecord::Send(_) | FlowRecord::Call(_) => {}
        }
    }

    /// The purge timer of a deleted entity (`None`: not deleted).
    pub fn tombstone(&self) -> Option<&PendingTimer> {
        self.0.get(PURGE_TIMER)
    }

    /// True when the timer `id` scheduled at `seq` is still pending.
    pub fn pending(&self, id: &str, seq: u64) -> bool {
        self.0.get(id).is_some_and(|t| t.seq == seq)
    }

    /// The pending timers, by id.
    pub fn iter(&self) -> impl Iterator<Item = &PendingTimer> {
        self.0.values()
    }

    /// True when none is pending.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// From a list (a snapshot).
    pub fn from_list(list: Vec<PendingTimer>) -> Self {
        Self(list.into_iter().map(|t| (t.id.clone(), t)).collect())
    }

    /// As a list, by id.
    pub fn to_list(&self) -> Vec<PendingTimer> {
        self.0.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use tessera_entities::CommandCall;

    use super::*;

    fn timer(id: &str, at_ms: i64) -> FlowRecord {
        FlowRecord::Schedule(Timer { id: id.into(), at_ms, command: CommandCall::named("expire", &()).unwrap() })
    }

    fn fired(id: &str, seq: u64) -> FlowRecord {
        FlowRecord::Fired(Fired { timer_id: id.into(), scheduled_seq: seq, rejected: None })
    }

    #[test]
    fn every_record_survives_the_journal() {
        let records = [
            timer("t", 5),
            FlowRecord::Cancel("t".into()),
            fired("t", 3),
            FlowRecord::Call(FunctionCall {
                function: "f".into(),
                input: codec::to_msgpack(&1).unwrap(),
                reply_to: "done".into(),
                correlation: None,
            }),
        ];
        for r in records {
            let e = r.to_event().unwrap();
            assert!(is_internal(&e.type_name));
            assert_eq!(FlowRecord::decode(&e.type_name, &e.payload).unwrap().unwrap(), r);
        }
        assert!(FlowRecord::decode("Restocked", b"").is_none(), "an entity's own event is not a record");
        assert!(FlowRecord::decode(SEND, b"\xc1").unwrap().is_err(), "garbage is an error, not a panic");
    }

    #[test]
    fn scheduling_an_id_again_replaces_the_pending_timer() {
        let mut t = Timers::default();
        t.apply(1, &timer("expire", 100));
        t.apply(2, &timer("expire", 200));
        assert_eq!(t.len(), 1);
        assert!(t.pending("expire", 2) && !t.pending("expire", 1));
    }

    #[test]
    fn a_fire_of_a_replaced_timer_leaves_the_new_one_pending() {
        let mut t = Timers::default();
        t.apply(1, &timer("expire", 100));
        t.apply(2, &timer("expire", 200));
        t.apply(3, &fired("expire", 1));
        assert!(t.pending("expire", 2));
        t.apply(4, &fired("expire", 2));
        assert!(t.is_empty());
    }

    #[test]
    fn a_tombstone_replaces_every_timer_with_the_purge() {
        let mut t = Timers::default();
        t.apply(1, &timer("expire", 100));
        let tomb = FlowRecord::Deleted(Tombstone { purge_at_ms: 500, reason: "api".into() });
        let e = tomb.to_event().unwrap();
        assert_eq!(FlowRecord::decode(&e.type_name, &e.payload).unwrap().unwrap(), tomb);
        t.apply(2, &tomb);
        assert!(!t.pending("expire", 1));
        let purge = t.tombstone().expect("deleted");
        assert_eq!((purge.seq, purge.at_ms, purge.command.name.as_str()), (2, 500, PURGE_TIMER));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_cancelled_timer_is_no_longer_pending() {
        let mut t = Timers::default();
        t.apply(1, &timer("expire", 100));
        t.apply(2, &FlowRecord::Cancel("expire".into()));
        t.apply(3, &FlowRecord::Cancel("never-set".into()));
        assert!(!t.pending("expire", 1) && t.is_empty());
    }
}

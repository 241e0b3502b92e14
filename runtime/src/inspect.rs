//! Journal records as JSON, for the HTTP API and the CLI: any tool can show
//! events without the user's Rust types, because payloads are self-describing
//! MessagePack.
//!
//! May import: `envelope`, `flow::records`, `wire`.

use serde_json::Value;
use tessera_journal::PersistedEvent;

use crate::envelope::EventMeta;
use crate::wire::EventBody;

/// RFC 3339 UTC time (millisecond precision) of a Unix-epoch millisecond count.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// One event as its wire body (`{seq, time, timestamp_ms, type, version,
/// invocation_id, event}`, plus `node` and `epoch` for events committed in
/// a cluster). A payload that does not decode shows as `{"undecodable": "<error>"}`.
pub fn event_body(e: &PersistedEvent) -> EventBody {
    let event = crate::flow::payload_json(&e.type_name, &e.payload);
    let meta = EventMeta::decode(&e.metadata);
    EventBody {
        seq: e.seq,
        time: rfc3339_ms(e.timestamp_ms),
        timestamp_ms: e.timestamp_ms,
        type_name: e.type_name.clone(),
        version: e.version,
        invocation_id: meta.invocation,
        event,
        node: meta.epoch.and(meta.node),
        epoch: meta.epoch,
    }
}

/// An entity's state as its wire body (no outbox: the HTTP API adds it).
pub fn state_body(entity_type: String, entity_id: String, view: crate::StateView) -> crate::wire::StateBody {
    crate::wire::StateBody {
        entity_type,
        entity_id,
        seq: view.seq,
        state: view.state,
        timers: view.timers.iter().map(crate::flow::PendingTimer::json).collect(),
        undelivered: Vec::new(),
        dead_letters: Vec::new(),
    }
}

/// One event as JSON (see [`event_body`]).
pub fn event_json(e: &PersistedEvent) -> Value {
    serde_json::to_value(event_body(e)).unwrap_or_default()
}

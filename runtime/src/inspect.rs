//! Journal records as JSON, for the HTTP API and the CLI: any tool can show
//! events without the user's Rust types, because payloads are self-describing
//! MessagePack.

use serde_json::{Value, json};
use tessera_entities::codec;
use tessera_journal::PersistedEvent;

use crate::envelope::EventMeta;

/// RFC 3339 UTC time (millisecond precision) of a Unix-epoch millisecond count.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// One event as JSON: `{seq, time, timestamp_ms, type, version, invocation_id, event}`,
/// plus `node` and `epoch` for events committed in a cluster.
/// A payload that does not decode shows as `{"undecodable": "<error>"}`.
pub fn event_json(e: &PersistedEvent) -> Value {
    let payload = codec::msgpack_to_json(&e.payload).unwrap_or_else(|err| json!({ "undecodable": err.to_string() }));
    let meta = EventMeta::decode(&e.metadata);
    let mut v = json!({
        "seq": e.seq,
        "time": rfc3339_ms(e.timestamp_ms),
        "timestamp_ms": e.timestamp_ms,
        "type": e.type_name,
        "version": e.version,
        "invocation_id": meta.invocation,
        "event": payload,
    });
    if let Some(epoch) = meta.epoch {
        v["node"] = json!(meta.node);
        v["epoch"] = json!(epoch);
    }
    v
}

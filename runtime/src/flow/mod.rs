//! Entities that talk: messages to other entities, durable timers and
//! calls of functions, carried out by the runtime after the sender's
//! events are durable.
//!
//! - [`records`]: how they are stored — internal events (`tessera.send`,
//!   `tessera.schedule`, …) written in the same append as the events of the
//!   command that asked for them, so the outbox commits with the events;
//! - `dispatcher`: a built-in projection, one worker per feed unit on the
//!   unit's owner, that reads those records from the shard feed and
//!   delivers them — a send with the idempotency key
//!   `tessera:{type}:{id}:{seq}` (redelivery after a crash or a move is
//!   answered from the target's idempotency record, never applied twice),
//!   its reply back to the sender as a command — before its checkpoint
//!   passes them; it keeps the unit's pending timers with its checkpoint;
//! - `wheel`: the timers armed on this node, one task per unit, firing each
//!   due timer at its entity (which activates it).
//!
//! The node implements [`Deliver`] (local shard actors or forwarding to the
//! owner). May import: the journal, the entities, `projection`, `metrics`,
//! `error`. Not the node, not an edge.

mod dispatcher;
pub mod records;
mod wheel;

pub use dispatcher::DeadLetter;
pub(crate) use dispatcher::{DISPATCHER, Dispatcher, DispatcherState, undelivered as undelivered_of};
pub use records::{
    DELETED, DeleteOutcome, Fired, FlowRecord, PURGE_TIMER, PendingTimer, Timers, Tombstone, is_internal, payload_json,
};

use tessera_entities::{CommandCall, EntityRef};

use crate::error::InvokeError;

/// How the dispatcher reaches entities and functions (the node implements it).
#[async_trait::async_trait]
pub(crate) trait Deliver: Send + Sync + 'static {
    /// Runs `command` on `target` as the retryable invocation `key`; the
    /// reply, MessagePack.
    async fn command(&self, target: &EntityRef, command: &CommandCall, key: String) -> Result<Vec<u8>, InvokeError>;
    /// Delivers a due timer to its entity, on this node only.
    async fn fire(&self, entity: &EntityRef, timer: &PendingTimer) -> Result<(), InvokeError>;
    /// Calls a function with a MessagePack input; its output, MessagePack.
    async fn function(&self, name: &str, input: &[u8], key: String) -> Result<Vec<u8>, InvokeError>;
}

/// The idempotency key a delivery of the record at `seq` of `from` carries
/// (`suffix`: `""` for the send itself, `":reply"` for its answer, `":fired"`
/// for a timer scheduled at `seq`). Keys are what the edges accept (letters,
/// digits, `-`, `_`, `:`, at most 200): `tessera:{type}:{id}:{seq}`, or with a
/// stable 128-bit hash of `type/id` in its place when the id has other
/// characters or is long.
pub fn delivery_key(from: &EntityRef, seq: u64, suffix: &str) -> String {
    let readable = format!("tessera:{}:{}:{seq}{suffix}", from.entity_type, from.id);
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':');
    if readable.len() <= 200 && readable.chars().all(ok) {
        return readable;
    }
    format!("tessera:x{:032x}:{seq}{suffix}", fnv1a_128(format!("{from}").as_bytes()))
}

/// FNV-1a, 128 bits: stable across builds and versions (keys outlive both).
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes.iter().fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME))
}

/// True when a failed delivery may succeed later (the target is moving,
/// busy, down or slow): it is retried. Otherwise it never will (no such
/// entity type or command, a payload it cannot decode): it is given up.
pub(crate) fn retriable(e: &InvokeError) -> bool {
    !matches!(
        e,
        InvokeError::UnknownEntityType(_)
            | InvokeError::UnknownCommand(_)
            | InvokeError::UnknownFunction(_)
            | InvokeError::Malformed(_)
            | InvokeError::UnsupportedMediaType(_)
            | InvokeError::TooLarge { .. }
            | InvokeError::Rejected(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_key_is_readable_when_it_can_be_and_always_acceptable() {
        let k = delivery_key(&EntityRef::new("order", "o-1"), 7, ":reply");
        assert_eq!(k, "tessera:order:o-1:7:reply");
        let odd = delivery_key(&EntityRef::new("order", "a/b c.d"), 7, "");
        assert!(odd.starts_with("tessera:x") && odd.ends_with(":7"), "{odd}");
        assert!(crate::contract::idempotency_key(Some(&odd)).is_ok(), "{odd}");
        let long = delivery_key(&EntityRef::new("order", "o".repeat(300)), 7, "");
        assert!(long.len() <= 200);
        assert_ne!(odd, delivery_key(&EntityRef::new("order", "a/b c.e"), 7, ""), "ids hash apart");
    }
}

//! What a handler may ask for besides events and a reply: commands to other
//! entities, durable timers, and calls of stateless functions. They are
//! decisions, not IO: the runtime stores them with the events (one append)
//! and carries them out once the events are durable.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::entity::Rejection;

/// An entity, by type and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntityRef {
    /// The entity type (`Entity::TYPE`).
    pub entity_type: String,
    /// The entity's id.
    pub id: String,
}

impl EntityRef {
    /// The entity `id` of type `entity_type`.
    pub fn new(entity_type: impl Into<String>, id: impl Into<String>) -> Self {
        Self { entity_type: entity_type.into(), id: id.into() }
    }
}

impl std::fmt::Display for EntityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.entity_type, self.id)
    }
}

/// A command by name with its MessagePack payload, as an entity's command
/// decoder takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandCall {
    /// The command's name (the variant, as serde names it).
    pub name: String,
    /// The variant's payload, MessagePack.
    pub payload: Vec<u8>,
}

impl CommandCall {
    /// A command from a value of a command enum (externally tagged, as
    /// serde writes enums by default): `Reserve { qty: 1 }` → `reserve`.
    pub fn of<C: Serialize>(command: &C) -> Result<Self, CodecError> {
        match serde_json::to_value(command)? {
            serde_json::Value::String(name) => Ok(Self { name, payload: codec::to_msgpack(&())? }),
            serde_json::Value::Object(map) if map.len() == 1 => {
                let (name, payload) = map.into_iter().next().unwrap_or_default();
                Ok(Self { name, payload: codec::to_msgpack(&payload)? })
            }
            other => Err(CodecError(format!("a command is an enum variant, got {other}"))),
        }
    }
    /// A command by name with a payload.
    pub fn named<P: Serialize>(name: impl Into<String>, payload: &P) -> Result<Self, CodecError> {
        Ok(Self { name: name.into(), payload: codec::to_msgpack(payload)? })
    }
    /// The payload as JSON (for tests and inspection).
    pub fn payload_json(&self) -> serde_json::Value {
        codec::msgpack_to_json(&self.payload).unwrap_or(serde_json::Value::Null)
    }
    /// The command decoded as `C` (the target's command type).
    pub fn decode<C: DeserializeOwned>(&self) -> Result<C, CodecError> {
        codec::decode_command(&self.name, &self.payload, codec::Format::MsgPack)
    }
}

/// A command to another entity (of any type, on any node), delivered once
/// the sender's events are durable, exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who receives it.
    pub target: EntityRef,
    /// What it is asked to do.
    pub command: CommandCall,
    /// When set, the target's reply or rejection comes back to the sender
    /// as this command, with a [`Response`] payload.
    pub reply_to: Option<String>,
    /// Correlates the response with the request: what the [`Response`]
    /// carries back ([`crate::Effect::and_ask`] sets the target, `type/id`).
    pub correlation: Option<String>,
}

/// A durable timer: at `at_ms` the runtime sends `command` to the entity
/// that scheduled it (activating it if passivated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    /// Names the timer within its entity: scheduling an id again replaces
    /// the pending one; [`Action::Cancel`] takes the id.
    pub id: String,
    /// When it fires, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// What it sends to the entity.
    pub command: CommandCall,
}

/// A call of a stateless function; its result comes back to the entity as
/// the command `reply_to` with a [`Response`] payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub function: String,
    /// Its input, MessagePack.
    pub input: Vec<u8>,
    /// The command the result comes back as.
    pub reply_to: String,
    /// Correlates the result with the call: what the [`Response`] carries
    /// back (default: the function's name).
    pub correlation: Option<String>,
}

/// One thing a handler asks for besides events and a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// A command to an entity.
    Send(Message),
    /// A timer on this entity.
    Schedule(Timer),
    /// Cancels this entity's pending timer of that id (nothing if none).
    Cancel {
        /// The timer's id.
        timer_id: String,
    },
    /// A function call whose result comes back as a command.
    Call(FunctionCall),
}

/// What comes back to a sender that asked for a reply (`reply_to`): the
/// correlation it gave, and the target's reply or rejection (or a
/// function's output or error, as a rejection with code `function_error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response<T> {
    /// The correlation of the request.
    pub correlation: String,
    /// The outcome.
    pub result: Result<T, Rejection>,
}

/// Builders of actions, for [`crate::Effect`]'s `and_*` methods.
pub(crate) fn message<C: Serialize>(
    target: EntityRef,
    command: &C,
    reply_to: Option<&str>,
) -> Result<Action, CodecError> {
    let correlation = reply_to.map(|_| target.to_string());
    Ok(Action::Send(Message {
        target,
        command: CommandCall::of(command)?,
        reply_to: reply_to.map(str::to_owned),
        correlation,
    }))
}

pub(crate) fn timer<C: Serialize>(id: &str, at_ms: i64, command: &C) -> Result<Action, CodecError> {
    Ok(Action::Schedule(Timer { id: id.to_owned(), at_ms, command: CommandCall::of(command)? }))
}

pub(crate) fn call<I: Serialize>(function: &str, input: &I, reply_to: &str) -> Result<Action, CodecError> {
    Ok(Action::Call(FunctionCall {
        function: function.to_owned(),
        input: codec::to_msgpack(input)?,
        reply_to: reply_to.to_owned(),
        correlation: Some(function.to_owned()),
    }))
}

pub(crate) fn after_ms(now_ms: i64, after: Duration) -> i64 {
    now_ms.saturating_add(after.as_millis().min(i64::MAX as u128) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Cmd {
        Reserve { qty: u32 },
        Release,
    }

    #[test]
    fn a_command_value_splits_into_its_name_and_payload() {
        let c = CommandCall::of(&Cmd::Reserve { qty: 2 }).unwrap();
        assert_eq!(c.name, "reserve");
        assert_eq!(c.payload_json(), serde_json::json!({"qty": 2}));
        assert_eq!(c.decode::<Cmd>().unwrap(), Cmd::Reserve { qty: 2 });
        let unit = CommandCall::of(&Cmd::Release).unwrap();
        assert_eq!((unit.name.as_str(), unit.decode::<Cmd>().unwrap()), ("release", Cmd::Release));
    }

    #[test]
    fn actions_survive_the_journal_encoding() {
        let a = message(EntityRef::new("stock", "s1"), &Cmd::Reserve { qty: 1 }, Some("reserved")).unwrap();
        let bytes = codec::to_msgpack(&a).unwrap();
        assert_eq!(codec::from_msgpack::<Action>(&bytes).unwrap(), a);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(serde_json::from_value::<Action>(json).unwrap(), a);
    }
}

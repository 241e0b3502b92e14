//! Tessera's programming model: event-sourced **entities** and stateless
//! **functions**, pure and free of IO, plus the [`Registry`] the runtime
//! routes by and a [`TestKit`] to test handlers without a runtime.
//!
//! An entity decides with [`Entity::handle`] (events + reply, or a
//! [`Rejection`]) and evolves with [`Entity::apply`]:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tessera_entities::{Ctx, Effect, Entity, Rejection, TestKit};
//!
//! struct Counter;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct State { value: i64 }
//!
//! #[derive(Deserialize)]
//! #[serde(rename_all = "snake_case")]
//! enum Command { Add { by: i64 }, Get }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum Event { Added { by: i64 } }
//!
//! impl Entity for Counter {
//!     const TYPE: &'static str = "counter";
//!     type State = State;
//!     type Command = Command;
//!     type Event = Event;
//!     type Reply = i64;
//!
//!     fn handle(&self, s: &State, c: Command, _: &mut Ctx) -> Result<Effect<Event, i64>, Rejection> {
//!         match c {
//!             Command::Add { by } if by == 0 => Err(Rejection::new("zero", "adding 0 changes nothing")),
//!             Command::Add { by } => Ok(Effect::persist(Event::Added { by }, s.value + by)),
//!             Command::Get => Ok(Effect::reply(s.value)),
//!         }
//!     }
//!     fn apply(&self, s: &mut State, e: &Event) {
//!         match e { Event::Added { by } => s.value += by }
//!     }
//! }
//!
//! let mut kit = TestKit::new(Counter);
//! assert_eq!(kit.accept(Command::Add { by: 2 }).reply, 2);
//! assert_eq!(kit.reject(Command::Add { by: 0 }).code, "zero");
//! assert_eq!(kit.events(), vec![Event::Added { by: 2 }]);
//! assert_eq!(kit.journal()[0].type_name, "Added");
//! assert_eq!(kit.replayed_state().value, 2);
//! ```
//!
//! A handler may also ask for [`Action`]s — commands to other entities
//! ([`Effect::and_send`], [`Effect::and_ask`] with a [`Response`] coming
//! back), durable timers ([`Effect::and_schedule`], [`Effect::and_cancel`])
//! and function calls ([`Effect::and_call`]); the test kit records them and
//! [`TestKit::advance`] fires due timers in virtual time.

mod action;
pub mod codec;
mod entity;
pub mod event;
mod function;
mod registry;
mod testkit;

pub use action::{Action, CommandCall, EntityRef, FunctionCall, Message, Response, Timer};
pub use codec::{CodecError, Format};
pub use entity::{Ctx, Effect, Entity, Rejection};
pub use event::{EncodedEvent, OldEvent, ReplayError, StoredEvent, UpcastError};
pub use function::{Device, FnCtx, Function, FunctionError, Resources};
pub use registry::{
    BoxFuture, CommandError, DynCommand, DynEffect, DynEntity, DynFunction, DynInput, DynState, HandleError, Registry,
    RegistryBuilder, RegistryError,
};
pub use testkit::{Outcome, TestKit};

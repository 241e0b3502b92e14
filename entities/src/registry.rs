//! The registry: entity types and functions by name, behind object-safe
//! adapters so that the runtime routes a `(type, command, body)` without
//! knowing the user's Rust types.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::codec::{self, CodecError, Format};
use crate::entity::{Ctx, Entity, Rejection};
use crate::event::{self, EncodedEvent, ReplayError, StoredEvent};
use crate::function::{FnCtx, Function, FunctionError, Resources};

/// Type-erased entity state.
pub type DynState = Box<dyn Any + Send + Sync>;
/// A type-erased decoded command.
pub type DynCommand = Box<dyn Any + Send>;
/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a command could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The entity type has no such command (HTTP 404).
    #[error("entity type `{entity_type}` has no command `{command}` (known: {})", known.join(", "))]
    UnknownCommand {
        /// The entity type.
        entity_type: String,
        /// The command asked for.
        command: String,
        /// The commands it has.
        known: Vec<&'static str>,
    },
    /// The body does not decode into the command (HTTP 400).
    #[error("malformed `{command}` command: {message}")]
    Malformed {
        /// The command.
        command: String,
        /// The decoder's message.
        message: String,
    },
}

/// A handler's decision with the events already encoded for the journal.
pub struct DynEffect {
    /// Events to persist.
    pub events: Vec<EncodedEvent>,
    /// The same events, typed, to apply after they are persisted.
    pub typed: Box<dyn Any + Send>,
    /// The reply, MessagePack.
    pub reply: Vec<u8>,
    /// Messages, timers and calls to store with the events.
    pub actions: Vec<crate::Action>,
}

impl std::fmt::Debug for DynEffect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynEffect")
            .field("events", &self.events)
            .field("reply_len", &self.reply.len())
            .field("actions", &self.actions)
            .finish()
    }
}

/// Why a handler's decision could not be turned into journal records.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The handler refused the command.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// An event or the reply did not encode.
    #[error("encoding failed: {0}")]
    Encode(#[from] CodecError),
}

/// An entity type behind an object-safe interface.
pub trait DynEntity: Send + Sync + 'static {
    /// The entity type's name.
    fn type_name(&self) -> &'static str;
    /// The schema version of events written now.
    fn event_version(&self) -> u32;
    /// The version of the snapshot encoding.
    fn state_version(&self) -> u32;
    /// The command names.
    fn commands(&self) -> &[&'static str];
    /// A fresh state (before any event).
    fn initial_state(&self) -> DynState;
    /// Decodes a named command.
    fn decode_command(&self, command: &str, body: &[u8], format: Format) -> Result<DynCommand, CommandError>;
    /// Runs the handler and encodes its effect.
    fn handle(&self, state: &DynState, command: DynCommand, ctx: &mut Ctx) -> Result<DynEffect, HandleError>;
    /// Applies the typed events of an effect (after they were persisted).
    fn apply_effect(&self, state: &mut DynState, typed: Box<dyn Any + Send>);
    /// Decodes (upcasting if needed) and applies one stored event.
    fn apply_stored(&self, state: &mut DynState, event: StoredEvent<'_>) -> Result<(), ReplayError>;
    /// Encodes the state for a snapshot (MessagePack with names).
    fn encode_state(&self, state: &DynState) -> Result<Vec<u8>, CodecError>;
    /// Decodes a snapshot.
    fn decode_state(&self, bytes: &[u8]) -> Result<DynState, CodecError>;
    /// The state as JSON, for inspection.
    fn state_json(&self, state: &DynState) -> serde_json::Value;
}

struct EntityAdapter<E: Entity> {
    entity: E,
    commands: Vec<&'static str>,
}

fn state_ref<E: Entity>(s: &DynState) -> &E::State {
    s.downcast_ref().expect("state of another entity type")
}

impl<E: Entity> DynEntity for EntityAdapter<E> {
    fn type_name(&self) -> &'static str {
        E::TYPE
    }
    fn event_version(&self) -> u32 {
        E::EVENT_VERSION
    }
    fn state_version(&self) -> u32 {
        E::STATE_VERSION
    }
    fn commands(&self) -> &[&'static str] {
        &self.commands
    }
    fn initial_state(&self) -> DynState {
        Box::new(E::State::default())
    }
    fn decode_command(&self, command: &str, body: &[u8], format: Format) -> Result<DynCommand, CommandError> {
        if !self.commands.contains(&command) {
            return Err(CommandError::UnknownCommand {
                entity_type: E::TYPE.to_owned(),
                command: command.to_owned(),
                known: self.commands.clone(),
            });
        }
        let cmd: E::Command = codec::decode_command(command, body, format)
            .map_err(|e| CommandError::Malformed { command: command.to_owned(), message: e.0 })?;
        Ok(Box::new(cmd))
    }
    fn handle(&self, state: &DynState, command: DynCommand, ctx: &mut Ctx) -> Result<DynEffect, HandleError> {
        let command = *command.downcast::<E::Command>().expect("command of another entity type");
        let effect = self.entity.handle(state_ref::<E>(state), command, ctx)?;
        let events = effect.events.iter().map(event::encode_event::<E>).collect::<Result<Vec<_>, _>>()?;
        let reply = codec::to_msgpack(&effect.reply)?;
        if let Some(e) = effect.encode_error() {
            return Err(e.clone().into());
        }
        Ok(DynEffect { events, typed: Box::new(effect.events), reply, actions: effect.actions })
    }
    fn apply_effect(&self, state: &mut DynState, typed: Box<dyn Any + Send>) {
        let events = typed.downcast::<Vec<E::Event>>().expect("events of another entity type");
        let state = state.downcast_mut::<E::State>().expect("state of another entity type");
        for ev in events.iter() {
            self.entity.apply(state, ev);
        }
    }
    fn apply_stored(&self, state: &mut DynState, event: StoredEvent<'_>) -> Result<(), ReplayError> {
        let ev = event::decode_event(&self.entity, event)?;
        let state = state.downcast_mut::<E::State>().expect("state of another entity type");
        self.entity.apply(state, &ev);
        Ok(())
    }
    fn encode_state(&self, state: &DynState) -> Result<Vec<u8>, CodecError> {
        codec::to_msgpack(state_ref::<E>(state))
    }
    fn decode_state(&self, bytes: &[u8]) -> Result<DynState, CodecError> {
        Ok(Box::new(codec::from_msgpack::<E::State>(bytes)?))
    }
    fn state_json(&self, state: &DynState) -> serde_json::Value {
        serde_json::to_value(state_ref::<E>(state))
            .unwrap_or_else(|e| serde_json::json!({ "unencodable": e.to_string() }))
    }
}

/// A decoded function input.
pub type DynInput = Box<dyn Any + Send>;

/// A function behind an object-safe interface.
pub trait DynFunction: Send + Sync + 'static {
    /// The function's name.
    fn name(&self) -> &'static str;
    /// Its resource need.
    fn resources(&self) -> Resources;
    /// Decodes an input body.
    fn decode_input(&self, body: &[u8], format: Format) -> Result<DynInput, CodecError>;
    /// Calls the function; the output is MessagePack.
    fn call(&self, input: DynInput, ctx: FnCtx) -> BoxFuture<Result<Vec<u8>, FunctionError>>;
    /// Most inputs one batch takes.
    fn max_batch(&self) -> usize;
    /// Calls the function on a batch of inputs; one MessagePack output each.
    fn call_batch(&self, inputs: Vec<DynInput>, ctx: FnCtx) -> BoxFuture<Vec<Result<Vec<u8>, FunctionError>>>;
}

struct FunctionAdapter<F: Function>(Arc<F>);

impl<F: Function> DynFunction for FunctionAdapter<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }
    fn resources(&self) -> Resources {
        self.0.resources()
    }
    fn decode_input(&self, body: &[u8], format: Format) -> Result<DynInput, CodecError> {
        Ok(Box::new(codec::decode::<F::Input>(body, format)?))
    }
    fn call(&self, input: DynInput, ctx: FnCtx) -> BoxFuture<Result<Vec<u8>, FunctionError>> {
        let f = self.0.clone();
        let input = *input.downcast::<F::Input>().expect("input of another function");
        Box::pin(async move {
            let out = f.call(input, &ctx).await?;
            codec::to_msgpack(&out).map_err(|e| FunctionError::Failed(format!("output did not encode: {e}")))
        })
    }
    fn max_batch(&self) -> usize {
        self.0.max_batch().max(1)
    }
    fn call_batch(&self, inputs: Vec<DynInput>, ctx: FnCtx) -> BoxFuture<Vec<Result<Vec<u8>, FunctionError>>> {
        let f = self.0.clone();
        let inputs: Vec<F::Input> =
            inputs.into_iter().map(|i| *i.downcast::<F::Input>().expect("input of another function")).collect();
        Box::pin(async move {
            f.call_batch(inputs, &ctx)
                .await
                .into_iter()
                .map(|r| {
                    r.and_then(|out| {
                        codec::to_msgpack(&out)
                            .map_err(|e| FunctionError::Failed(format!("output did not encode: {e}")))
                    })
                })
                .collect()
        })
    }
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The name is not usable in URLs and NATS subjects.
    #[error(
        "invalid {kind} name `{name}`: use lower-case ASCII letters, digits, `_` and `-`{}",
        if *kind == "function" { " and `.`" } else { " (no dots)" }
    )]
    InvalidName {
        /// `entity` or `function`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Two registrations share a name.
    #[error("{kind} `{name}` is registered twice")]
    Duplicate {
        /// `entity` or `function`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// An entity's command type is not an enum, so commands cannot be named.
    #[error("entity `{0}`: its Command type must be an enum (each variant is a command)")]
    CommandNotEnum(String),
}

fn valid_name(name: &str, allow_dot: bool) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || (allow_dot && b == b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
}

/// Entity types and functions by name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    entities: Arc<BTreeMap<&'static str, Arc<dyn DynEntity>>>,
    functions: Arc<BTreeMap<&'static str, Arc<dyn DynFunction>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("entities", &self.entities.keys().collect::<Vec<_>>())
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// Starts building a registry.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }
    /// The entity type called `name`.
    pub fn entity(&self, name: &str) -> Option<&Arc<dyn DynEntity>> {
        self.entities.get(name)
    }
    /// The function called `name`.
    pub fn function(&self, name: &str) -> Option<&Arc<dyn DynFunction>> {
        self.functions.get(name)
    }
    /// All entity types.
    pub fn entities(&self) -> impl Iterator<Item = &Arc<dyn DynEntity>> {
        self.entities.values()
    }
    /// All functions.
    pub fn functions(&self) -> impl Iterator<Item = &Arc<dyn DynFunction>> {
        self.functions.values()
    }
}

/// Builds a [`Registry`]; errors are reported by [`RegistryBuilder::build`].
#[derive(Default)]
pub struct RegistryBuilder {
    entities: BTreeMap<&'static str, Arc<dyn DynEntity>>,
    functions: BTreeMap<&'static str, Arc<dyn DynFunction>>,
    errors: Vec<RegistryError>,
}

impl RegistryBuilder {
    /// Registers an entity type under [`Entity::TYPE`].
    pub fn entity<E: Entity>(mut self, entity: E) -> Self {
        let commands = codec::command_names::<E::Command>();
        if !valid_name(E::TYPE, false) {
            self.errors.push(RegistryError::InvalidName { kind: "entity", name: E::TYPE.into() });
        } else if commands.is_empty() {
            self.errors.push(RegistryError::CommandNotEnum(E::TYPE.into()));
        } else if self.entities.insert(E::TYPE, Arc::new(EntityAdapter { entity, commands })).is_some() {
            self.errors.push(RegistryError::Duplicate { kind: "entity", name: E::TYPE.into() });
        }
        self
    }
    /// Registers a function under [`Function::NAME`].
    pub fn function<F: Function>(mut self, function: F) -> Self {
        if !valid_name(F::NAME, true) {
            self.errors.push(RegistryError::InvalidName { kind: "function", name: F::NAME.into() });
        } else if self.functions.insert(F::NAME, Arc::new(FunctionAdapter(Arc::new(function)))).is_some() {
            self.errors.push(RegistryError::Duplicate { kind: "function", name: F::NAME.into() });
        }
        self
    }
    /// The registry, or the first registration error.
    pub fn build(self) -> Result<Registry, RegistryError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        Ok(Registry { entities: Arc::new(self.entities), functions: Arc::new(self.functions) })
    }
}

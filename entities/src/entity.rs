//! The event-sourced entity: a pure `handle` that decides and a pure `apply` that evolves state.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::action::{self, Action, EntityRef};
use crate::codec::CodecError;
use crate::event::{OldEvent, UpcastError};

/// An event-sourced entity type: a virtual actor addressed by an id, whose state
/// is rebuilt from its events.
///
/// `handle` decides what happens to a command without doing IO: it returns the
/// events to persist and the reply (an [`Effect`]) or a [`Rejection`]. The
/// runtime persists the events, then calls `apply` for each of them, then sends
/// the reply. `apply` is also what replay uses, so it must be a pure state
/// transition.
pub trait Entity: Send + Sync + 'static {
    /// The entity type's name: lower-case ASCII letters, digits, `_` and `-`
    /// (it is used in URLs, NATS subjects and journal keys).
    const TYPE: &'static str;
    /// Schema version of the events this code writes. Events stored with an
    /// older version go through [`Entity::upcast`] on replay; events with a newer
    /// version fail replay with a clear error.
    const EVENT_VERSION: u32 = 1;
    /// Version of the state's snapshot encoding. A snapshot of another version
    /// is ignored and the state is rebuilt from events.
    const STATE_VERSION: u32 = 1;

    /// The entity's state; `Default` is the state before the first event.
    type State: Default + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The commands, as an enum: each variant is a command, named as serde
    /// names it (use `#[serde(rename_all = "snake_case")]`).
    type Command: DeserializeOwned + Send + 'static;
    /// The events, usually an enum; the variant name is stored as the event's
    /// type name.
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The reply to a successful command.
    type Reply: Serialize + Send + 'static;

    /// Decides what a command does. No IO, no clock reads: use `ctx`.
    fn handle(
        &self,
        state: &Self::State,
        command: Self::Command,
        ctx: &mut Ctx,
    ) -> Result<Effect<Self::Event, Self::Reply>, Rejection>;

    /// Applies one persisted event to the state.
    fn apply(&self, state: &mut Self::State, event: &Self::Event);

    /// Turns an event stored with an older [`Entity::EVENT_VERSION`] into the
    /// JSON shape of the current `Event` type. The default refuses.
    fn upcast(&self, event: OldEvent) -> Result<serde_json::Value, UpcastError> {
        Err(UpcastError::Unsupported { type_name: event.type_name, version: event.version })
    }
}

/// What a handler knows about the invocation it is handling.
#[derive(Debug, Clone)]
pub struct Ctx {
    entity_id: String,
    invocation_id: String,
    seq: u64,
    now_ms: i64,
}

impl Ctx {
    /// A context for handling a command on `entity_id` whose last event has `seq`.
    pub fn new(entity_id: impl Into<String>, invocation_id: impl Into<String>, seq: u64, now_ms: i64) -> Self {
        Self { entity_id: entity_id.into(), invocation_id: invocation_id.into(), seq, now_ms }
    }
    /// The entity's id (the user key, e.g. `store-7:sku-42`).
    pub fn entity_id(&self) -> &str {
        &self.entity_id
    }
    /// The invocation's id (the idempotency key, or a generated one).
    pub fn invocation_id(&self) -> &str {
        &self.invocation_id
    }
    /// The sequence number of the entity's last persisted event (0 if none).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Wall-clock time of the invocation, milliseconds since the Unix epoch.
    /// Handlers read time here so that tests can fix it.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }
    /// The time `after` from now, for [`Effect::and_schedule`].
    pub fn after(&self, after: std::time::Duration) -> i64 {
        action::after_ms(self.now_ms, after)
    }
}

/// What a handler decided: events to persist (possibly none), the reply,
/// and actions — commands to other entities, timers, function calls —
/// that the runtime stores in the same append as the events and carries
/// out once they are durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect<Ev, R> {
    /// Events to persist, in order, before the reply is sent.
    pub events: Vec<Ev>,
    /// The reply sent once the events are durable.
    pub reply: R,
    /// Messages, timers and calls, in the order they were added.
    pub actions: Vec<Action>,
    /// An action that did not encode (reported when the effect is stored).
    error: Option<CodecError>,
}

impl<Ev, R> Effect<Ev, R> {
    /// Reply without persisting anything.
    pub fn reply(reply: R) -> Self {
        Self { events: Vec::new(), reply, actions: Vec::new(), error: None }
    }
    /// Persist one event, then reply.
    pub fn persist(event: Ev, reply: R) -> Self {
        Self { events: vec![event], reply, actions: Vec::new(), error: None }
    }
    /// Persist several events atomically, then reply.
    pub fn persist_all(events: Vec<Ev>, reply: R) -> Self {
        Self { events, reply, actions: Vec::new(), error: None }
    }

    fn and(mut self, action: Result<Action, CodecError>) -> Self {
        match action {
            Ok(a) => self.actions.push(a),
            Err(e) => self.error = self.error.or(Some(e)),
        }
        self
    }
    /// Also send `command` to `target` (exactly once, after the events are
    /// durable; messages from one entity to another arrive in send order).
    pub fn and_send<C: Serialize>(self, target: EntityRef, command: &C) -> Self {
        self.and(action::message(target, command, None))
    }
    /// Also send `command` to `target`, and have its reply or rejection come
    /// back to this entity as the command `reply_to` with a
    /// [`crate::Response`] payload (a request/response that never blocks).
    pub fn and_ask<C: Serialize>(self, target: EntityRef, command: &C, reply_to: &str) -> Self {
        self.and(action::message(target, command, Some(reply_to)))
    }
    /// Also schedule the timer `id`: at `at_ms` (see [`Ctx::after`]) the
    /// entity receives `command`. Scheduling an id again replaces it.
    pub fn and_schedule<C: Serialize>(self, id: &str, at_ms: i64, command: &C) -> Self {
        self.and(action::timer(id, at_ms, command))
    }
    /// Also cancel the pending timer `id` (nothing if there is none).
    pub fn and_cancel(self, timer_id: &str) -> Self {
        self.and(Ok(Action::Cancel { timer_id: timer_id.to_owned() }))
    }
    /// Also call the stateless `function` with `input`; its output (or
    /// error) comes back as the command `reply_to` with a
    /// [`crate::Response`] payload.
    pub fn and_call<I: Serialize>(self, function: &str, input: &I, reply_to: &str) -> Self {
        self.and(action::call(function, input, reply_to))
    }
    /// The first action that did not encode, if any.
    pub fn encode_error(&self) -> Option<&CodecError> {
        self.error.as_ref()
    }
}

/// A command refused by the entity's rules (HTTP 409). Nothing is persisted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// A stable, machine-readable reason, e.g. `insufficient_stock`.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// Optional structured details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Rejection {
    /// A rejection with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), details: None }
    }
    /// Adds structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

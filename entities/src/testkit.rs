//! A test kit for entities: feed commands, assert on events, replies and
//! state, with no runtime. Every event goes through the journal encoding and
//! back before it is applied, so what a test sees is what replay will see.
//! Messages, timers and calls a handler asks for are recorded, not carried
//! out; [`TestKit::advance`] moves virtual time and fires due timers.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::action::{Action, FunctionCall, Message, Timer};
use crate::entity::{Ctx, Entity, Rejection};
use crate::event::{self, EncodedEvent, StoredEvent};

/// What one accepted command produced.
#[derive(Debug)]
pub struct Outcome<E: Entity> {
    /// The events the handler decided (now applied).
    pub events: Vec<E::Event>,
    /// The reply.
    pub reply: E::Reply,
    /// The messages, timers and calls it asked for.
    pub actions: Vec<Action>,
}

impl<E: Entity> Outcome<E> {
    /// The messages it sent.
    pub fn sent(&self) -> Vec<&Message> {
        self.actions.iter().filter_map(|a| if let Action::Send(m) = a { Some(m) } else { None }).collect()
    }
    /// The timers it scheduled.
    pub fn scheduled(&self) -> Vec<&Timer> {
        self.actions.iter().filter_map(|a| if let Action::Schedule(t) = a { Some(t) } else { None }).collect()
    }
    /// The function calls it started.
    pub fn calls(&self) -> Vec<&FunctionCall> {
        self.actions.iter().filter_map(|a| if let Action::Call(c) = a { Some(c) } else { None }).collect()
    }
}

/// Drives one entity instance in memory.
pub struct TestKit<E: Entity> {
    entity: E,
    id: String,
    state: E::State,
    journal: Vec<EncodedEvent>,
    now_ms: i64,
    invocations: u64,
    /// Pending timers by id.
    timers: BTreeMap<String, Timer>,
    /// Every message sent so far, in order.
    outbox: Vec<Message>,
    /// Every function call started so far, in order.
    calls: Vec<FunctionCall>,
}

impl<E: Entity> TestKit<E> {
    /// An entity with id `test` and no history; the clock starts at 0.
    pub fn new(entity: E) -> Self {
        Self {
            entity,
            id: "test".into(),
            state: E::State::default(),
            journal: Vec::new(),
            now_ms: 0,
            invocations: 0,
            timers: BTreeMap::new(),
            outbox: Vec::new(),
            calls: Vec::new(),
        }
    }
    /// Sets the entity id handlers see.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
    /// Sets the clock handlers see (ms since the epoch).
    pub fn set_time(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }
    /// Seeds history: the events are encoded, decoded and applied as on replay.
    pub fn given(mut self, events: impl IntoIterator<Item = E::Event>) -> Self {
        for ev in events {
            self.persist(&ev);
        }
        self
    }
    /// Handles a command: on success its events are persisted (encoded) and applied.
    pub fn handle(&mut self, command: E::Command) -> Result<Outcome<E>, Rejection> {
        self.invocations += 1;
        let mut ctx = Ctx::new(self.id.clone(), format!("test-{}", self.invocations), self.seq(), self.now_ms);
        let effect = self.entity.handle(&self.state, command, &mut ctx)?;
        if let Some(e) = effect.encode_error() {
            panic!("an action of the effect does not encode: {e}");
        }
        for ev in &effect.events {
            self.persist(ev);
        }
        for a in &effect.actions {
            match a {
                Action::Send(m) => self.outbox.push(m.clone()),
                Action::Schedule(t) => {
                    self.timers.insert(t.id.clone(), t.clone());
                }
                Action::Cancel { timer_id } => {
                    self.timers.remove(timer_id);
                }
                Action::Call(c) => self.calls.push(c.clone()),
            }
        }
        Ok(Outcome { events: effect.events, reply: effect.reply, actions: effect.actions })
    }

    /// Moves the clock forward by `by`, firing every timer that falls due
    /// on the way, in due order (each sees the clock at its due time);
    /// returns what each fired command did.
    ///
    /// # Panics
    /// If a timer's command does not decode as this entity's command.
    pub fn advance(&mut self, by: Duration) -> Vec<Result<Outcome<E>, Rejection>> {
        let until = crate::action::after_ms(self.now_ms, by);
        let mut fired = Vec::new();
        while let Some(t) = self.next_due(until) {
            self.timers.remove(&t.id);
            self.now_ms = self.now_ms.max(t.at_ms);
            let command = t.command.decode::<E::Command>().unwrap_or_else(|e| panic!("timer {}: {e}", t.id));
            fired.push(self.handle(command));
        }
        self.now_ms = until;
        fired
    }

    fn next_due(&self, until: i64) -> Option<Timer> {
        self.timers.values().filter(|t| t.at_ms <= until).min_by_key(|t| (t.at_ms, t.id.clone())).cloned()
    }

    /// The pending timers, soonest first.
    pub fn pending_timers(&self) -> Vec<&Timer> {
        let mut v: Vec<&Timer> = self.timers.values().collect();
        v.sort_by_key(|t| (t.at_ms, t.id.clone()));
        v
    }
    /// Every message the entity sent so far, in send order.
    pub fn outbox(&self) -> &[Message] {
        &self.outbox
    }
    /// Every function call the entity started so far.
    pub fn calls(&self) -> &[FunctionCall] {
        &self.calls
    }
    /// The clock handlers see now.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }
    /// Handles a command that must be accepted, returning its outcome.
    ///
    /// # Panics
    /// If the entity rejects the command.
    #[track_caller]
    pub fn accept(&mut self, command: E::Command) -> Outcome<E> {
        self.handle(command).unwrap_or_else(|r| panic!("command rejected: {r}"))
    }
    /// Handles a command that must be rejected, returning the rejection.
    ///
    /// # Panics
    /// If the entity accepts the command.
    #[track_caller]
    pub fn reject(&mut self, command: E::Command) -> Rejection {
        match self.handle(command) {
            Ok(_) => panic!("command was accepted, expected a rejection"),
            Err(r) => r,
        }
    }
    /// The current state.
    pub fn state(&self) -> &E::State {
        &self.state
    }
    /// The last event's sequence number.
    pub fn seq(&self) -> u64 {
        self.journal.len() as u64
    }
    /// Every persisted event, decoded from its stored form.
    pub fn events(&self) -> Vec<E::Event> {
        self.stored().map(|s| event::decode_event(&self.entity, s).expect("stored event decodes")).collect()
    }
    /// The encoded journal (type names, versions, payloads).
    pub fn journal(&self) -> &[EncodedEvent] {
        &self.journal
    }
    /// The state rebuilt from the journal alone, as a restarted node would.
    pub fn replayed_state(&self) -> E::State {
        let mut state = E::State::default();
        for ev in self.events() {
            self.entity.apply(&mut state, &ev);
        }
        state
    }

    fn stored(&self) -> impl Iterator<Item = StoredEvent<'_>> {
        self.journal.iter().enumerate().map(|(i, e)| StoredEvent {
            seq: i as u64 + 1,
            type_name: &e.type_name,
            version: e.version,
            payload: &e.payload,
        })
    }

    fn persist(&mut self, ev: &E::Event) {
        let encoded = event::encode_event::<E>(ev).expect("event encodes");
        let stored = StoredEvent {
            seq: self.seq() + 1,
            type_name: &encoded.type_name,
            version: encoded.version,
            payload: &encoded.payload,
        };
        let decoded = event::decode_event(&self.entity, stored).expect("event decodes after encoding");
        self.entity.apply(&mut self.state, &decoded);
        self.journal.push(encoded);
    }
}

//! A test kit for entities: feed commands, assert on events, replies and
//! state, with no runtime. Every event goes through the journal encoding and
//! back before it is applied, so what a test sees is what replay will see.

use crate::entity::{Ctx, Entity, Rejection};
use crate::event::{self, EncodedEvent, StoredEvent};

/// What one accepted command produced.
#[derive(Debug)]
pub struct Outcome<E: Entity> {
    /// The events the handler decided (now applied).
    pub events: Vec<E::Event>,
    /// The reply.
    pub reply: E::Reply,
}

/// Drives one entity instance in memory.
pub struct TestKit<E: Entity> {
    entity: E,
    id: String,
    state: E::State,
    journal: Vec<EncodedEvent>,
    now_ms: i64,
    invocations: u64,
}

impl<E: Entity> TestKit<E> {
    /// An entity with id `test` and no history; the clock starts at 0.
    pub fn new(entity: E) -> Self {
        Self { entity, id: "test".into(), state: E::State::default(), journal: Vec::new(), now_ms: 0, invocations: 0 }
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
        for ev in &effect.events {
            self.persist(ev);
        }
        Ok(Outcome { events: effect.events, reply: effect.reply })
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

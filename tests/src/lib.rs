//! Shared pieces of the integration tests: a registry with the inventory
//! application plus a `flaky` entity that misbehaves on purpose, served by
//! the `tessera-test-node` binary the process tests start.

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, Effect, Entity, Registry, Rejection};

/// An entity for fault tests (`flaky`).
pub struct Flaky;

/// Its state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FlakyState {
    /// Events applied.
    pub count: u64,
}

/// Its commands.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlakyCommand {
    /// The handler panics.
    Boom,
    /// Persists `n` events atomically.
    Batch {
        /// How many.
        n: u32,
    },
    /// Reads the count.
    Get,
}

/// Its event.
#[derive(Debug, Serialize, Deserialize)]
pub enum FlakyEvent {
    /// One tick of a batch.
    Tick {
        /// Position in its batch.
        i: u32,
        /// Size of its batch.
        of: u32,
    },
}

impl Entity for Flaky {
    const TYPE: &'static str = "flaky";
    type State = FlakyState;
    type Command = FlakyCommand;
    type Event = FlakyEvent;
    type Reply = u64;

    fn handle(&self, s: &FlakyState, c: FlakyCommand, _: &mut Ctx) -> Result<Effect<FlakyEvent, u64>, Rejection> {
        match c {
            FlakyCommand::Boom => panic!("boom: a handler bug"),
            FlakyCommand::Batch { n } => {
                let events = (0..n).map(|i| FlakyEvent::Tick { i, of: n }).collect();
                Ok(Effect::persist_all(events, s.count + u64::from(n)))
            }
            FlakyCommand::Get => Ok(Effect::reply(s.count)),
        }
    }

    fn apply(&self, s: &mut FlakyState, _: &FlakyEvent) {
        s.count += 1;
    }
}

/// The inventory application plus [`Flaky`].
pub fn registry() -> Registry {
    Registry::builder()
        .entity(inventory::Stock)
        .function(inventory::ProductUpsert)
        .entity(Flaky)
        .build()
        .expect("valid registry")
}

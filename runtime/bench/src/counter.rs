//! The entity the benchmarks drive: a counter with one small event per command.

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, Effect, Entity, Registry, Rejection};

/// A counter entity (`bench-counter`).
pub struct BenchCounter;

/// Its state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CounterState {
    /// The value.
    pub value: i64,
}

/// Its commands.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterCommand {
    /// Add to the value (one event).
    Add {
        /// The amount.
        by: i64,
    },
    /// Read the value (no event).
    Get,
}

/// Its event.
#[derive(Debug, Serialize, Deserialize)]
pub enum CounterEvent {
    /// The value grew.
    Added {
        /// The amount.
        by: i64,
    },
}

impl Entity for BenchCounter {
    const TYPE: &'static str = "bench-counter";
    type State = CounterState;
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Reply = i64;

    fn handle(&self, s: &CounterState, c: CounterCommand, _: &mut Ctx) -> Result<Effect<CounterEvent, i64>, Rejection> {
        Ok(match c {
            CounterCommand::Add { by } => Effect::persist(CounterEvent::Added { by }, s.value + by),
            CounterCommand::Get => Effect::reply(s.value),
        })
    }

    fn apply(&self, s: &mut CounterState, e: &CounterEvent) {
        match e {
            CounterEvent::Added { by } => s.value += by,
        }
    }
}

/// A function that returns its input (`bench.echo`).
pub struct BenchEcho;

impl tessera_entities::Function for BenchEcho {
    const NAME: &'static str = "bench.echo";
    type Input = serde_json::Value;
    type Output = serde_json::Value;
    async fn call(
        &self,
        input: serde_json::Value,
        _: &tessera_entities::FnCtx,
    ) -> Result<serde_json::Value, tessera_entities::FunctionError> {
        Ok(input)
    }
}

/// A registry with the bench counter and echo function.
pub fn registry() -> Registry {
    Registry::builder().entity(BenchCounter).function(BenchEcho).build().expect("valid registry")
}

//! Shared pieces of the integration tests: a registry with the inventory
//! application plus a `flaky` entity that misbehaves on purpose, served by
//! the `tessera-test-node` binary the process tests start.

use std::io::Write;

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, Effect, Entity, FnCtx, Function, FunctionError, Registry, Rejection};

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

/// `test.sleep {ms}`: sleeps, returns `ms`.
pub struct Sleep;

/// Input of [`Sleep`].
#[derive(Debug, Deserialize)]
pub struct SleepInput {
    /// Milliseconds.
    pub ms: u64,
}

impl Function for Sleep {
    const NAME: &'static str = "test.sleep";
    type Input = SleepInput;
    type Output = u64;
    async fn call(&self, input: SleepInput, _: &FnCtx) -> Result<u64, FunctionError> {
        tokio::time::sleep(std::time::Duration::from_millis(input.ms)).await;
        Ok(input.ms)
    }
}

/// `test.unavailable`: always fails with a retryable error.
pub struct Unavailable;

impl Function for Unavailable {
    const NAME: &'static str = "test.unavailable";
    type Input = serde_json::Value;
    type Output = ();
    async fn call(&self, _: serde_json::Value, _: &FnCtx) -> Result<(), FunctionError> {
        Err(FunctionError::Unavailable("the downstream service is down".into()))
    }
}

/// `test.touch {path}`: appends a line to a file (a visible side effect, to
/// count executions), returns the number of lines.
pub struct Touch;

/// Input of [`Touch`].
#[derive(Debug, Deserialize)]
pub struct TouchInput {
    /// The file.
    pub path: String,
}

impl Function for Touch {
    const NAME: &'static str = "test.touch";
    type Input = TouchInput;
    type Output = usize;
    async fn call(&self, input: TouchInput, ctx: &FnCtx) -> Result<usize, FunctionError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&input.path)
            .map_err(|e| FunctionError::Failed(e.to_string()))?;
        writeln!(f, "{}", ctx.invocation_id).map_err(|e| FunctionError::Failed(e.to_string()))?;
        let text = std::fs::read_to_string(&input.path).map_err(|e| FunctionError::Failed(e.to_string()))?;
        Ok(text.lines().count())
    }
}

/// The inventory application plus the test entity and functions.
pub fn registry() -> Registry {
    Registry::builder()
        .entity(inventory::Stock)
        .function(inventory::ProductUpsert)
        .entity(Flaky)
        .function(Sleep)
        .function(Unavailable)
        .function(Touch)
        .build()
        .expect("valid registry")
}

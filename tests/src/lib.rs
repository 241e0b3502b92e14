//! Shared pieces of the integration tests: a registry with the inventory
//! application plus a `flaky` entity that misbehaves on purpose, served by
//! the `tessera-test-node` binary the process tests start, and a journal
//! layer that stalls appends on demand ([`StallingJournal`]).

use std::io::Write;

pub mod bank;
pub mod soak;

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
        .function(inventory::ProductImage::new(inventory::Blobs::from_env()))
        .entity(Flaky)
        .function(Sleep)
        .function(Unavailable)
        .function(Touch)
        .build()
        .expect("valid registry")
}

/// The entities that talk ([`bank`]: accounts, transfers, alarms), served
/// by the test node when `TESSERA_TEST_BANK` is set.
pub fn bank_registry() -> Registry {
    Registry::builder()
        .entity(bank::Account)
        .entity(bank::Transfer)
        .entity(bank::Alarm)
        .build()
        .expect("valid registry")
}

/// Events per unit of the test registry's entity types, kept with the
/// checkpoint: every committed event counted exactly once.
pub struct EventCount;

impl tessera_runtime::projection::View for EventCount {
    type State = u64;
    fn name(&self) -> &str {
        "event-count"
    }
    fn entity_types(&self) -> Vec<String> {
        vec!["flaky".into(), "stock".into()]
    }
    fn apply(&self, state: &mut u64, _: &tessera_runtime::projection::FeedEvent) {
        *state += 1;
    }
}

/// The projections the test node runs when `TESSERA_TEST_PROJECTIONS` is set.
pub fn projections() -> Vec<std::sync::Arc<dyn tessera_runtime::projection::Projection>> {
    vec![tessera_runtime::projection::view(EventCount)]
}

/// A result-store layer for fault tests: the process aborts right after a
/// final row was stored, as a crash between storing an async call's result
/// and acknowledging its message would.
pub struct AbortAfterFinalResult(pub std::sync::Arc<dyn tessera_runtime::results::ResultStore>);

#[async_trait::async_trait]
impl tessera_runtime::results::ResultStore for AbortAfterFinalResult {
    async fn put(
        &self,
        row: tessera_runtime::results::InvocationResult,
    ) -> Result<tessera_runtime::results::PutOutcome, tessera_runtime::results::ResultStoreError> {
        let last = row.status.is_final();
        let r = self.0.put(row).await;
        if last && r.is_ok() {
            eprintln!("fault injection: aborting after storing the result, before the acknowledgement");
            std::process::abort();
        }
        r
    }
    async fn get(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<tessera_runtime::results::InvocationResult>, tessera_runtime::results::ResultStoreError> {
        self.0.get(id, now_ms).await
    }
    async fn purge_expired(&self, now_ms: i64) -> Result<u64, tessera_runtime::results::ResultStoreError> {
        self.0.purge_expired(now_ms).await
    }
}

/// A journal layer for fault tests: while the file `gate` exists, every
/// append waits (after the node's own fence check, before the journal sees
/// it). The first stalled append writes `{gate}.stalled`; when released,
/// each stalled append writes its outcome (`ok` or the error kind) to
/// `{gate}.outcome`. The test node wraps its journal in it when
/// `TESSERA_TEST_STALL_FILE` names the gate.
pub struct StallingJournal {
    inner: std::sync::Arc<dyn tessera_journal::Journal>,
    gate: std::path::PathBuf,
}

impl StallingJournal {
    /// Wraps `inner`, stalling on `gate`.
    pub fn new(inner: std::sync::Arc<dyn tessera_journal::Journal>, gate: std::path::PathBuf) -> Self {
        Self { inner, gate }
    }
    fn marker(&self, suffix: &str) -> std::path::PathBuf {
        let mut p = self.gate.clone().into_os_string();
        p.push(suffix);
        p.into()
    }
    /// Writes a marker whole: to a temporary name, then renamed (the test
    /// polls for the marker and reads it at once; a plain write could be
    /// seen created but still empty).
    fn write_marker(&self, suffix: &str, text: &str) {
        let tmp = self.marker(&format!("{suffix}.tmp"));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, self.marker(suffix));
        }
    }
}

#[async_trait::async_trait]
impl tessera_journal::Journal for StallingJournal {
    async fn commit(
        &self,
        entity: &tessera_journal::EntityKey,
        request: tessera_journal::AppendRequest,
    ) -> Result<tessera_journal::AppendAck, tessera_journal::AppendError> {
        if !self.gate.exists() {
            return self.inner.commit(entity, request).await;
        }
        self.write_marker(".stalled", &entity.to_string());
        while self.gate.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let r = self.inner.commit(entity, request).await;
        let outcome = match &r {
            Ok(a) => format!("ok {}", a.last_seq),
            Err(tessera_journal::AppendError::Fenced { .. }) => "fenced".to_owned(),
            Err(tessera_journal::AppendError::Conflict { .. }) => "conflict".to_owned(),
            Err(e) => format!("error {e}"),
        };
        self.write_marker(".outcome", &outcome);
        r
    }
    async fn raise_fence(
        &self,
        entity: &tessera_journal::EntityKey,
        epoch: u64,
    ) -> Result<(), tessera_journal::AppendError> {
        self.inner.raise_fence(entity, epoch).await
    }
    fn read(
        &self,
        entity: &tessera_journal::EntityKey,
        range: std::ops::RangeInclusive<u64>,
    ) -> tessera_journal::EventStream {
        self.inner.read(entity, range)
    }
    async fn last_seq(&self, entity: &tessera_journal::EntityKey) -> Result<u64, tessera_journal::JournalError> {
        self.inner.last_seq(entity).await
    }
    async fn save_snapshot(
        &self,
        entity: &tessera_journal::EntityKey,
        snapshot: tessera_journal::Snapshot,
    ) -> Result<(), tessera_journal::JournalError> {
        self.inner.save_snapshot(entity, snapshot).await
    }
    async fn load_snapshot(
        &self,
        entity: &tessera_journal::EntityKey,
    ) -> Result<Option<tessera_journal::Snapshot>, tessera_journal::JournalError> {
        self.inner.load_snapshot(entity).await
    }
    fn events_by_shard(&self, entity_type: &str, shard: u32, after_offset: u64) -> tessera_journal::ShardStream {
        self.inner.events_by_shard(entity_type, shard, after_offset)
    }
    async fn feed_bounds(
        &self,
        entity_type: &str,
        shard: u32,
    ) -> Result<tessera_journal::FeedBounds, tessera_journal::JournalError> {
        self.inner.feed_bounds(entity_type, shard).await
    }
    async fn open_feed(&self, entity_type: &str, shard: u32, epoch: u64) -> Result<(), tessera_journal::JournalError> {
        self.inner.open_feed(entity_type, shard, epoch).await
    }
    async fn find_key(
        &self,
        entity: &tessera_journal::EntityKey,
        key: &str,
    ) -> Result<Option<u64>, tessera_journal::JournalError> {
        self.inner.find_key(entity, key).await
    }
    async fn delete_to(
        &self,
        entity: &tessera_journal::EntityKey,
        seq: u64,
    ) -> Result<(), tessera_journal::JournalError> {
        self.inner.delete_to(entity, seq).await
    }
    async fn purge(&self, entity: &tessera_journal::EntityKey) -> Result<(), tessera_journal::JournalError> {
        self.inner.purge(entity).await
    }
    fn entities(&self, entity_type: &str) -> tessera_journal::EntityStream {
        self.inner.entities(entity_type)
    }
    fn shards(&self) -> u32 {
        self.inner.shards()
    }
}

//! Runs projections: one worker per (projection, unit) this node owns. A
//! worker reads the unit's feed after its checkpoint, hands the events to
//! the projection in batches and writes the new checkpoint (and state)
//! conditionally on the one it read. Commits on this node wake it (the
//! shard actor signals every commit); an idle poll catches what others
//! wrote (a rewind, a previous owner's tail).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::HashMap as FastMap;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_journal::{AppendError, Journal, JournalError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::checkpoint::{Checkpoint, Checkpoints};
use super::{FeedEvent, Projection, ProjectionBatch};
use crate::flow::is_internal;
use crate::metrics::Metrics;
use crate::now_ms;

/// Longest an idle dispatcher waits before it looks at its feed again.
const FLOW_POLL: Duration = Duration::from_secs(1);
/// Longest the dispatcher waits to store progress that includes records it
/// handled, however large its state (timers) grew.
const FLOW_SKIP_CHECKPOINT: Duration = Duration::from_secs(10);
/// Longest the dispatcher waits to store progress over events it only
/// skipped (no record since the last store): a crash re-reads at most this
/// much of the unit's feed, and only its entries (the journals skip the
/// entities' own events for it). Every unit storing such progress every
/// 10 s was a steady stream of appends under load — on the Scylla journal
/// a conditional write for every sixth command (BENCHMARKS.md).
const FLOW_SKIPPED_ONLY_CHECKPOINT: Duration = Duration::from_secs(60);
/// The dispatcher reads an idle unit's feed at least this often, even with
/// no commit on this node since (see `work`).
const FLOW_IDLE_LOOK: Duration = Duration::from_secs(30);

/// How workers read and wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProjectionSettings {
    /// Most events per batch.
    pub(crate) batch: usize,
    /// How often an idle worker looks at the feed and its checkpoint.
    pub(crate) idle_poll: Duration,
    /// Longest time handled events wait for their checkpoint to be stored.
    pub(crate) checkpoint_every: Duration,
    /// How long a woken worker waits before it reads (more commits per read).
    pub(crate) linger: Duration,
}

/// Where one projection stands in one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct UnitStatus {
    /// The projection.
    pub projection: String,
    /// The unit's entity type.
    pub entity_type: String,
    /// The unit's shard.
    pub shard: u32,
    /// Handled up to this offset.
    pub checkpoint: u64,
    /// The feed's last visible offset when last looked at.
    pub feed_last: u64,
    /// `feed_last - checkpoint`.
    pub lag: u64,
    /// Commit time of the last event handled, ms since the Unix epoch.
    pub last_event_ms: Option<i64>,
    /// The last error, until a batch succeeds.
    pub error: Option<String>,
    /// True when this node runs it (it owns the unit).
    pub running: bool,
}

type Unit = (String, u32);

struct Worker {
    wake: Arc<Notify>,
    dirty: Arc<AtomicBool>,
    /// Set (then `wake`) when the stored checkpoint was moved under it.
    reload: Arc<AtomicBool>,
    status: Arc<Mutex<UnitStatus>>,
    task: JoinHandle<()>,
}

/// The workers of one unit, with the index of the projection each runs.
type UnitWorkers = Vec<(usize, Worker)>;

struct Inner {
    checkpoints: Checkpoints,
    journal: Arc<dyn Journal>,
    list: Vec<Arc<dyn Projection>>,
    /// Entity type → the projections reading it.
    by_type: FastMap<String, Vec<usize>>,
    /// Entity type → shard → the unit's workers (by type first, so that the
    /// commit hook looks a unit up without building a key).
    workers: Mutex<FastMap<String, FastMap<u32, UnitWorkers>>>,
    metrics: Metrics,
    settings: ProjectionSettings,
    shards: u32,
}

/// The projections of a node and their workers.
#[derive(Clone)]
pub(crate) struct Projections {
    inner: Arc<Inner>,
}

impl Projections {
    pub(crate) fn new(
        journal: Arc<dyn Journal>,
        list: Vec<Arc<dyn Projection>>,
        metrics: Metrics,
        settings: ProjectionSettings,
    ) -> Self {
        let mut by_type: FastMap<String, Vec<usize>> = FastMap::default();
        for (i, p) in list.iter().enumerate() {
            for t in p.entity_types() {
                by_type.entry(t).or_default().push(i);
            }
        }
        let shards = journal.shards();
        Self {
            inner: Arc::new(Inner {
                checkpoints: Checkpoints::new(journal.clone()),
                journal,
                list,
                by_type,
                workers: Mutex::new(FastMap::default()),
                metrics,
                settings,
                shards,
            }),
        }
    }

    /// The projections, in registration order.
    pub(crate) fn list(&self) -> &[Arc<dyn Projection>] {
        &self.inner.list
    }

    /// The projection called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn Projection>> {
        self.inner.list.iter().find(|p| p.name() == name)
    }

    /// True when some projection reads `entity_type`.
    pub(crate) fn reads(&self, entity_type: &str) -> bool {
        self.inner.by_type.contains_key(entity_type)
    }

    /// Starts the workers of every unit (a node outside a cluster owns them all).
    pub(crate) fn start_all(&self) {
        let types: Vec<String> = self.inner.by_type.keys().cloned().collect();
        for t in types {
            for shard in 0..self.inner.shards {
                self.start_unit(&t, shard);
            }
        }
    }

    /// This node owns the unit now: run its projections.
    pub(crate) fn start_unit(&self, entity_type: &str, shard: u32) {
        let Some(indices) = self.inner.by_type.get(entity_type) else { return };
        let mut workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        let unit = (entity_type.to_owned(), shard);
        let running = workers.entry(unit.0.clone()).or_default().entry(shard).or_default();
        for &i in indices {
            if running.iter().any(|(j, w)| *j == i && !w.task.is_finished()) {
                continue;
            }
            running.retain(|(j, _)| *j != i);
            let p = &self.inner.list[i];
            let status = Arc::new(Mutex::new(UnitStatus {
                projection: p.name().to_owned(),
                entity_type: entity_type.to_owned(),
                shard,
                running: true,
                ..Default::default()
            }));
            let (wake, reload) = (Arc::new(Notify::new()), Arc::new(AtomicBool::new(false)));
            let dirty = Arc::new(AtomicBool::new(true));
            let signals = Signals { wake: wake.clone(), reload: reload.clone(), dirty: dirty.clone() };
            let task = tokio::spawn(work(self.inner.clone(), i, unit.clone(), signals, status.clone()));
            running.push((i, Worker { wake, reload, dirty, status, task }));
        }
    }

    /// This node no longer owns the unit: stop its projections (a batch in
    /// flight is delivered again by the next owner).
    pub(crate) fn stop_unit(&self, entity_type: &str, shard: u32) {
        let mut workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ws) = workers.get_mut(entity_type).and_then(|t| t.remove(&shard)) {
            for (i, w) in ws {
                w.task.abort();
                self.inner.list[i].stopped(entity_type, shard);
            }
        }
    }

    /// Stops every worker.
    pub(crate) fn stop(&self) {
        let mut workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        for (t, units) in workers.drain() {
            for (shard, ws) in units {
                for (i, w) in ws {
                    w.task.abort();
                    self.inner.list[i].stopped(&t, shard);
                }
            }
        }
    }

    /// Events of the unit were committed on this node (`flow`: with the
    /// runtime's records among them; only those wake the dispatcher).
    pub(crate) fn committed(&self, entity_type: &str, shard: u32, flow: bool) {
        if !self.reads(entity_type) {
            return;
        }
        let workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ws) = workers.get(entity_type).and_then(|t| t.get(&shard)) {
            for (i, w) in ws {
                w.dirty.store(true, Ordering::Release);
                if flow || !self.inner.list[*i].reads_flow() {
                    w.wake.notify_one();
                }
            }
        }
    }

    /// The status of the units of `name` this node runs.
    pub(crate) fn running(&self, name: &str) -> Vec<UnitStatus> {
        let workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<UnitStatus> = workers
            .values()
            .flat_map(|units| units.values().flatten())
            .filter(|(i, _)| self.inner.list[*i].name() == name)
            .map(|(_, w)| w.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        out.sort_by(|a, b| (&a.entity_type, a.shard).cmp(&(&b.entity_type, b.shard)));
        out
    }

    /// The status of every unit of `name` with a checkpoint or a worker:
    /// from this node's workers where it runs them, from the journal elsewhere.
    pub(crate) async fn status(&self, name: &str) -> Result<Vec<UnitStatus>, JournalError> {
        let mut by_unit: HashMap<Unit, UnitStatus> =
            self.running(name).into_iter().map(|s| ((s.entity_type.clone(), s.shard), s)).collect();
        for (p, t, shard) in self.inner.checkpoints.list().await? {
            if p != name || by_unit.contains_key(&(t.clone(), shard)) {
                continue;
            }
            let stored = self.inner.checkpoints.load(name, &t, shard).await?;
            let feed_last = self.inner.journal.feed_bounds(&t, shard).await?.last;
            let checkpoint = stored.checkpoint.offset;
            by_unit.insert(
                (t.clone(), shard),
                UnitStatus {
                    projection: name.to_owned(),
                    entity_type: t,
                    shard,
                    checkpoint,
                    feed_last,
                    lag: feed_last.saturating_sub(checkpoint),
                    last_event_ms: None,
                    error: None,
                    running: false,
                },
            );
        }
        let mut out: Vec<UnitStatus> = by_unit.into_values().collect();
        out.sort_by(|a, b| (&a.entity_type, a.shard).cmp(&(&b.entity_type, b.shard)));
        Ok(out)
    }

    /// Moves the checkpoint of `name` to `to` (0 and no state: a reset) in
    /// the chosen units (all that have one, or one type, or one shard);
    /// returns how many were moved. Workers pick it up at once on this
    /// node, at their next batch or idle poll on others.
    pub(crate) async fn rewind(
        &self,
        name: &str,
        to: u64,
        entity_type: Option<&str>,
        shard: Option<u32>,
    ) -> Result<usize, JournalError> {
        let mut units: Vec<Unit> = self
            .inner
            .checkpoints
            .list()
            .await?
            .into_iter()
            .filter(|(p, _, _)| p == name)
            .map(|(_, t, s)| (t, s))
            .collect();
        units.extend(self.running(name).into_iter().map(|s| (s.entity_type, s.shard)));
        units.sort();
        units.dedup();
        units.retain(|(t, s)| entity_type.is_none_or(|x| x == t) && shard.is_none_or(|x| x == *s));
        let mut moved = 0;
        for (t, s) in &units {
            loop {
                let stored = self.inner.checkpoints.load(name, t, *s).await?;
                let next = Checkpoint { offset: to, state: None, written_ms: now_ms(), rewound: true };
                match self.inner.checkpoints.store(name, t, *s, stored.seq, &next).await {
                    Ok(_) => break,
                    Err(AppendError::Conflict { .. }) => continue,
                    Err(AppendError::Journal(e)) => return Err(e),
                    Err(e) => return Err(JournalError::Invalid(e.to_string())),
                }
            }
            moved += 1;
            let workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ws) = workers.get(t.as_str()).and_then(|t| t.get(s)) {
                for (i, w) in ws {
                    if self.inner.list[*i].name() == name {
                        w.reload.store(true, Ordering::Release);
                        w.wake.notify_one();
                    }
                }
            }
        }
        Ok(moved)
    }
}

impl Inner {
    fn record(&self, name: &str, unit: &Unit, status: &Mutex<UnitStatus>, f: impl FnOnce(&mut UnitStatus)) {
        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        let shard = unit.1.to_string();
        self.metrics.projection_lag.with_label_values(&[name, &unit.0, &shard]).set(s.lag as i64);
        self.metrics.projection_checkpoint.with_label_values(&[name, &unit.0, &shard]).set(s.checkpoint as i64);
    }
}

/// How a worker is told to look again.
struct Signals {
    /// Events were committed (or a rewind happened).
    wake: Arc<Notify>,
    /// Events were committed since the worker last looked (set by every
    /// commit; the dispatcher, woken only by commits with its records,
    /// skips its idle look at a unit nothing was committed to).
    dirty: Arc<AtomicBool>,
    /// The stored checkpoint moved: drop what is in memory.
    reload: Arc<AtomicBool>,
}

/// A worker's progress: what it has handled (in memory) and what is stored.
struct Progress {
    /// The checkpoint as handled so far (offset and kept state).
    current: Checkpoint,
    /// The seq of the stored checkpoint (the next store expects it).
    stored_seq: u64,
    /// Handled but not stored yet: since when, and how many events.
    unsaved: Option<(tokio::time::Instant, usize)>,
}

/// How often the dispatcher stores a unit's checkpoint whose state is
/// `state_len` bytes: the base interval per KiB (at least once), at most
/// [`FLOW_SKIP_CHECKPOINT`].
fn flow_checkpoint_every(base: Duration, state_len: usize) -> Duration {
    (base * (1 + (state_len / 1024) as u32)).min(FLOW_SKIP_CHECKPOINT.max(base))
}

/// Spreads one unit's periodic work (checkpoint stores, idle looks) over
/// time: every unit starts its workers at the same instant, so with fixed
/// intervals the thousand units of a node would look and store together —
/// a herd of reads and appends that stalled every request for 100–400 ms
/// every 10 s under load (`BENCHMARKS.md`, "Profiles of the tail"). Each
/// interval is drawn anew in `(d/2, d]`, so a bound stays a bound.
struct Spread(u64);

impl Spread {
    /// Seeded from the unit, so that units draw differently.
    fn for_unit(projection: &str, entity_type: &str, shard: u32) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (projection, entity_type, shard).hash(&mut h);
        Self(h.finish() | 1)
    }

    /// The next draw in `[0, 1)` (xorshift64).
    fn draw(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `d` scaled by a draw into `(d/2, d]`.
    fn within(&mut self, d: Duration) -> Duration {
        scaled(d, self.draw())
    }
}

/// `d` scaled by `1 - draw/2`: `(d/2, d]` for a draw in `[0, 1)`.
fn scaled(d: Duration, draw: f64) -> Duration {
    d.mul_f64(1.0 - draw / 2.0)
}

/// A worker: follows one unit's feed for one projection until aborted.
/// Batches are handled as they come; the checkpoint (with the kept state)
/// is stored at most every `checkpoint_every`, or after `batch` events, or
/// when caught up — a crash redelivers what was handled since.
async fn work(inner: Arc<Inner>, index: usize, unit: Unit, signals: Signals, status: Arc<Mutex<UnitStatus>>) {
    let Signals { wake, reload, dirty } = signals;
    let p = inner.list[index].clone();
    let name = p.name().to_owned();
    let (entity_type, shard) = (unit.0.clone(), unit.1);
    let base_every = inner.settings.checkpoint_every;
    let flow = p.reads_flow();
    // The dispatcher's checkpoint carries the unit's pending timers: the
    // larger it is, the less often it is written (every KiB of it adds
    // the base interval, up to FLOW_SKIP_CHECKPOINT), and not after every
    // full batch; a crash re-reads what came since (re-armed timers and
    // re-sent messages are harmless: deliveries are keyed).
    let mut state_len = 0usize;
    let mut progress: Option<Progress> = None;
    let mut failures = 0u32;
    // Woken by a commit whose events were not visible yet (a journal whose
    // feed lags its acks): look again soon, a few times.
    let mut hinted = 0u32;
    let mut read_to_end = false;
    let mut trim_after_store = false;
    let mut last_look = tokio::time::Instant::now();
    let mut spread = Spread::for_unit(&name, &entity_type, shard);
    // This period's checkpoint intervals are scaled by one draw, made again
    // after each store.
    let mut due = spread.draw();
    loop {
        let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(8))).min(Duration::from_secs(30));
        if reload.swap(false, Ordering::AcqRel) {
            tracing::debug!(projection = %name, entity_type, shard, "checkpoint moved: reloading");
            progress = None;
        }
        let pr = match progress.as_mut() {
            Some(pr) => pr,
            None => match inner.checkpoints.load(&name, &entity_type, shard).await {
                Ok(s) => {
                    p.started(&entity_type, shard, s.checkpoint.state.as_deref());
                    progress.insert(Progress { current: s.checkpoint, stored_seq: s.seq, unsaved: None })
                }
                Err(e) => {
                    failures += 1;
                    inner.record(&name, &unit, &status, |st| st.error = Some(format!("checkpoint: {e}")));
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
        };
        if flow && pr.unsaved.is_none() && p.wants_checkpoint(&entity_type, shard) {
            // State dropped without an event (a purged entity): stored now,
            // and the older checkpoints that held it removed.
            let now = tokio::time::Instant::now();
            pr.unsaved = Some((now.checked_sub(FLOW_SKIPPED_ONLY_CHECKPOINT).unwrap_or(now), 0));
            trim_after_store = true;
        }
        let every = if flow { flow_checkpoint_every(base_every, state_len) } else { base_every };
        let large = flow && every > base_every;
        let skipped_only = flow && pr.unsaved.is_some_and(|(_, n)| n == 0);
        let bound = if skipped_only { FLOW_SKIPPED_ONLY_CHECKPOINT } else { FLOW_SKIP_CHECKPOINT };
        let (every, skip_every) = (scaled(every, due), scaled(bound, due));
        // Store the checkpoint when due.
        // The dispatcher counts only its records: progress over events it
        // skipped is stored rarely (a crash re-reads them, nothing more).
        if let Some((since, n)) = pr.unsaved
            && ((n >= inner.settings.batch && !large)
                || (since.elapsed() >= every && (n > 0 || !flow))
                || since.elapsed() >= skip_every)
        {
            if flow {
                pr.current.state = p.checkpoint_state(&entity_type, shard);
                state_len = pr.current.state.as_ref().map_or(0, Vec::len);
            }
            let stored = inner.checkpoints.store(&name, &entity_type, shard, pr.stored_seq, &pr.current).await;
            if flow {
                pr.current.state = None;
            }
            match stored {
                Ok(seq) => {
                    pr.stored_seq = seq;
                    pr.unsaved = None;
                    due = spread.draw();
                    if std::mem::take(&mut trim_after_store)
                        && let Err(e) = inner.checkpoints.trim(&name, &entity_type, shard, seq).await
                    {
                        tracing::warn!(projection = %name, entity_type, shard, error = %e, "old checkpoints not trimmed");
                    }
                }
                // Another writer moved the checkpoint (a rewind, or the other
                // side of a move): start again from what it wrote.
                Err(AppendError::Conflict { .. }) => {
                    progress = None;
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    inner.record(&name, &unit, &status, |st| st.error = Some(format!("checkpoint: {e}")));
                    progress = None;
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        let after = pr.current.offset;
        // After a batch that was not full the feed was read to its end: wait
        // for the next commit (its wake is kept if it came meanwhile).
        let read: Result<Vec<_>, JournalError> = if std::mem::take(&mut read_to_end) {
            Ok(Vec::new())
        } else {
            last_look = tokio::time::Instant::now();
            // The dispatcher skips the entities' own events: where the feed
            // says which entries are records, it does not read the others.
            let feed = if flow {
                inner.journal.internal_by_shard(&entity_type, shard, after)
            } else {
                inner.journal.events_by_shard(&entity_type, shard, after)
            };
            feed.take(inner.settings.batch).try_collect().await
        };
        let events = match read {
            Ok(e) => e,
            Err(e) => {
                failures += 1;
                if matches!(e, JournalError::FeedExpired { .. }) {
                    tracing::error!(projection = %name, entity_type, shard, error = %e,
                        "projection is behind the feed's retention; reset or rewind it");
                }
                inner.metrics.projection_errors.with_label_values(&[&name]).inc();
                inner.record(&name, &unit, &status, |st| st.error = Some(e.to_string()));
                // Wait for a rewind (it wakes) or the backoff.
                let _ = tokio::time::timeout(backoff, wake.notified()).await;
                progress = None;
                continue;
            }
        };
        if events.is_empty() {
            inner.record(&name, &unit, &status, |st| {
                st.checkpoint = after;
                st.feed_last = st.feed_last.max(after);
                st.lag = st.feed_last - after;
            });
            // The dispatcher's idle look (nothing unsaved, no hint pending).
            let polling = flow && pr.unsaved.is_none() && hinted == 0;
            // Caught up with unsaved progress: store it once it is due.
            let wait = match pr.unsaved {
                Some((since, 0)) if flow => skip_every.saturating_sub(since.elapsed()),
                Some((since, _)) => every.saturating_sub(since.elapsed()),
                None if hinted > 0 => {
                    hinted -= 1;
                    Duration::from_millis(20 << (5 - hinted.min(5)))
                }
                // The dispatcher is woken only by commits with its records:
                // it looks often at units that had other commits, so that
                // the events it skips stay few (and not at all at the others).
                None if flow => spread.within(inner.settings.idle_poll.min(FLOW_POLL)),
                None => spread.within(inner.settings.idle_poll),
            };
            let unsaved = pr.unsaved.is_some();
            match tokio::time::timeout(wait, wake.notified()).await {
                Ok(()) => {
                    hinted = 5;
                    // Let a few more commits land: one read takes them all.
                    tokio::time::sleep(inner.settings.linger).await;
                }
                // Idle: look at the stored checkpoint again (a rewind by another node).
                // (Not the dispatcher: it polls every second, and it is its
                // checkpoint's only writer — a rewind wakes it, a stale
                // store conflicts.)
                Err(_) if !unsaved && hinted == 0 && !flow => progress = None,
                // Nothing was committed to the unit since the last look: no
                // need to read its feed (thousands of idle units otherwise
                // cost a journal read each, every second).
                // (It still looks every FLOW_IDLE_LOOK: a record another
                // node committed before a move, visible late in a lagging
                // feed, is not left behind.)
                Err(_) if polling && last_look.elapsed() < FLOW_IDLE_LOOK && !dirty.swap(false, Ordering::AcqRel) => {
                    read_to_end = true
                }
                Err(_) => {}
            }
            continue;
        }
        let full = events.len() == inner.settings.batch;
        let batch: Vec<FeedEvent> = events.into_iter().map(|e| FeedEvent::from_shard_event(e, shard)).collect();
        let mut state = pr.current.state.clone();
        // The runtime's records go to the dispatcher, the entities' events to the others.
        let mine: Vec<FeedEvent> = batch.iter().filter(|e| is_internal(&e.event_type) == flow).cloned().collect();
        let handled = if mine.is_empty() {
            Ok(())
        } else {
            p.handle(ProjectionBatch { entity_type: &entity_type, shard, events: &mine }, &mut state).await
        };
        if let Err(e) = handled {
            failures += 1;
            tracing::warn!(projection = %name, entity_type, shard, error = %e, "projection batch failed; retrying");
            inner.metrics.projection_errors.with_label_values(&[&name]).inc();
            inner.record(&name, &unit, &status, |st| st.error = Some(e.to_string()));
            tokio::time::sleep(backoff).await;
            continue;
        }
        failures = 0;
        read_to_end = !full;
        let last = batch.last().map_or(after, |e| e.offset);
        pr.current = Checkpoint { offset: last, state, written_ms: now_ms(), rewound: false };
        let (since, n) = pr.unsaved.unwrap_or((tokio::time::Instant::now(), 0));
        pr.unsaved = Some((since, n + if flow { mine.len() } else { batch.len() }));
        let now = now_ms();
        for e in &mine {
            inner
                .metrics
                .projection_delay
                .with_label_values(&[&name])
                .observe((now - e.timestamp_ms).max(0) as f64 / 1000.0);
        }
        inner.metrics.projection_events.with_label_values(&[&name]).inc_by(mine.len() as u64);
        let last_ms = batch.last().map(|e| e.timestamp_ms);
        let feed_last = if full {
            inner.journal.feed_bounds(&entity_type, shard).await.map(|b| b.last).unwrap_or(last)
        } else {
            last
        };
        inner.record(&name, &unit, &status, |st| {
            st.checkpoint = last;
            st.feed_last = feed_last.max(last);
            st.lag = st.feed_last - last;
            st.last_event_ms = last_ms;
            st.error = None;
        });
    }
}

/// The state a [`super::View`] keeps in one unit, as stored with its checkpoint.
pub async fn view_state<S: DeserializeOwned>(
    journal: Arc<dyn Journal>,
    name: &str,
    entity_type: &str,
    shard: u32,
) -> Result<Option<S>, JournalError> {
    let stored = Checkpoints::new(journal).load(name, entity_type, shard).await?;
    match stored.checkpoint.state {
        None => Ok(None),
        Some(b) => {
            tessera_entities::codec::from_msgpack(&b).map(Some).map_err(|e| JournalError::Invalid(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_dispatcher_state_is_checkpointed_less_often_within_a_bound() {
        let base = Duration::from_millis(250);
        assert_eq!(flow_checkpoint_every(base, 0), base);
        assert_eq!(flow_checkpoint_every(base, 1023), base, "small states as before");
        assert_eq!(flow_checkpoint_every(base, 12 * 1024), base * 13);
        assert_eq!(flow_checkpoint_every(base, 10 << 20), FLOW_SKIP_CHECKPOINT, "never rarer than the bound");
    }

    #[test]
    fn a_spread_interval_stays_within_its_bound_and_half_of_it() {
        let d = Duration::from_secs(10);
        let mut s = Spread::for_unit("dispatcher", "stock", 7);
        let draws: Vec<Duration> = (0..1000).map(|_| s.within(d)).collect();
        assert!(draws.iter().all(|x| *x > d / 2 && *x <= d));
        let (lo, hi) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        assert!(*hi - *lo > d / 3, "the draws spread over the range: {lo:?}..{hi:?}");
    }

    #[test]
    fn units_started_together_draw_different_intervals() {
        let d = Duration::from_secs(10);
        let mut firsts: Vec<Duration> =
            (0..1024).map(|shard| Spread::for_unit("dispatcher", "stock", shard).within(d)).collect();
        firsts.sort();
        firsts.dedup();
        assert!(firsts.len() > 1000, "a thousand units do not store in the same instant");
    }
}

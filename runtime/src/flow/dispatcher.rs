//! The dispatcher: a built-in projection over every entity type that
//! carries out the runtime's records of its units' feeds.
//!
//! Invariants:
//! - a batch returns only once each of its sends and calls was delivered
//!   (or given up as a dead letter), so its checkpoint never passes an
//!   undelivered message; a crash redelivers from the checkpoint, and each
//!   delivery is keyed (`tessera:{type}:{id}:{seq}`, its reply `…:reply`),
//!   so the target applies it once;
//! - the sends of one sender to one target are delivered one after the
//!   other, in seq order (sends to different targets go in parallel);
//! - the unit's pending timers are kept with the checkpoint, folded from
//!   the same records as the entities' own (`Timers`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tessera_entities::{CommandCall, EntityRef, FunctionCall, Message, Rejection, Response, codec};
use tracing::Instrument;

use super::records::{FlowRecord, Timers};
use super::wheel::Wheels;
use super::{Deliver, retriable};
use crate::envelope::EventMeta;
use crate::error::InvokeError;
use crate::metrics::Metrics;
use crate::now_ms;
use crate::projection::{FeedEvent, Projection, ProjectionBatch, ProjectionError};

/// The dispatcher's name (its checkpoints are `tessera.projection/tessera.dispatch/…`).
pub(crate) const DISPATCHER: &str = "tessera.dispatch";

/// Dead letters kept per unit (the oldest go first).
const DEAD_KEPT: usize = 100;
/// Deliveries in flight per batch (to different targets).
const IN_FLIGHT: usize = 32;
/// Failures of a delivery that may be the target's own fault (a handler
/// that panics or cannot encode) before it is given up.
const SUSPECT_ATTEMPTS: u32 = 5;

/// A message given up: the target cannot take it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The sender, `type/id`.
    pub from: String,
    /// The seq of its record.
    pub seq: u64,
    /// `send`, `reply` or `call`.
    pub kind: String,
    /// The target (`type/id`) or function.
    pub to: String,
    /// The command (or function input's reply command).
    pub command: String,
    /// Why.
    pub error: String,
    /// When it was given up, ms since the Unix epoch.
    pub at_ms: i64,
}

/// What the dispatcher keeps with its checkpoint, per unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct DispatcherState {
    /// Pending timers, by entity id.
    #[serde(default)]
    pub(crate) timers: BTreeMap<String, Timers>,
    /// The unit's last dead letters, oldest first.
    #[serde(default)]
    pub(crate) dead: VecDeque<DeadLetter>,
}

impl DispatcherState {
    pub(crate) fn decode(bytes: Option<&[u8]>) -> Result<Self, String> {
        match bytes {
            None => Ok(Self::default()),
            Some(b) => codec::from_msgpack(b).map_err(|e| format!("dispatcher state does not decode: {e}")),
        }
    }
}

/// A send or call to carry out.
enum Job {
    Send { from: EntityRef, seq: u64, committed_ms: i64, message: Message, trace: Option<String> },
    Call { from: EntityRef, seq: u64, committed_ms: i64, call: FunctionCall, trace: Option<String> },
}

/// How one delivery ended.
enum Done {
    Delivered,
    Dead(DeadLetter),
    /// Try the batch again later.
    Retry(String),
}

/// The built-in projection that delivers messages and arms timers.
pub(crate) struct Dispatcher {
    entity_types: Vec<String>,
    deliver: Arc<OnceLock<Arc<dyn Deliver>>>,
    wheels: Wheels,
    metrics: Metrics,
    /// Failed attempts of deliveries that may be the target's fault, by key.
    suspects: Mutex<HashMap<String, u32>>,
    /// The state of each unit this node runs, decoded (encoded only when
    /// the checkpoint is stored: a unit may hold thousands of timers).
    units: Mutex<HashMap<(String, u32), DispatcherState>>,
}

impl Dispatcher {
    /// A dispatcher of `entity_types`; deliveries wait until `deliver` is set.
    pub(crate) fn new(
        entity_types: Vec<String>,
        deliver: Arc<OnceLock<Arc<dyn Deliver>>>,
        metrics: Metrics,
    ) -> Arc<Self> {
        let wheels = Wheels::new(deliver.clone(), metrics.clone());
        Arc::new(Self {
            entity_types,
            deliver,
            wheels,
            metrics,
            suspects: Mutex::new(HashMap::new()),
            units: Mutex::new(HashMap::new()),
        })
    }

    fn deliverer(&self) -> Result<Arc<dyn Deliver>, ProjectionError> {
        self.deliver.get().cloned().ok_or_else(|| ProjectionError::Failed("the node is still starting".into()))
    }

    /// Runs one job to its end (reply included); with traces on, in a
    /// span that joins the trace of the invocation that sent it
    /// ([`crate::telemetry::invocation_spans`]).
    async fn run(&self, deliver: &dyn Deliver, job: &Job) -> Done {
        if !crate::telemetry::invocation_spans() {
            return self.run_job(deliver, job).await;
        }
        let (kind, from, seq, trace) = match job {
            Job::Send { from, seq, trace, .. } => ("send", from, seq, trace),
            Job::Call { from, seq, trace, .. } => ("call", from, seq, trace),
        };
        let span = tracing::info_span!(target: crate::telemetry::INVOCATION_TARGET, "deliver", kind, from = %from, seq);
        crate::telemetry::set_remote_parent(&span, trace.as_deref(), None);
        self.run_job(deliver, job).instrument(span).await
    }

    async fn run_job(&self, deliver: &dyn Deliver, job: &Job) -> Done {
        match job {
            Job::Send { from, seq, committed_ms, message, .. } => {
                let key = super::delivery_key(from, *seq, "");
                let outcome = deliver.command(&message.target, &message.command, key.clone()).await;
                let result = match self.settle("send", &key, outcome) {
                    Settled::Value(v) => Ok(v),
                    Settled::Refused(r) => Err(r),
                    Settled::Retry(e) => return Done::Retry(format!("send to {}: {e}", message.target)),
                    Settled::Dead(e) => {
                        let dead = self.dead(from, *seq, "send", &message.target.to_string(), &message.command.name, e);
                        // The sender waits for an answer: it gets the refusal.
                        if let Some(reply_to) = &message.reply_to {
                            let refusal = Rejection::new("undeliverable", dead.error.clone());
                            let correlation = message.correlation.clone().unwrap_or_else(|| message.target.to_string());
                            if let Done::Retry(e) =
                                self.reply(deliver, from, *seq, reply_to, correlation, Err(refusal)).await
                            {
                                return Done::Retry(e);
                            }
                        }
                        return Done::Dead(dead);
                    }
                };
                self.observe("send", *committed_ms);
                match &message.reply_to {
                    None => Done::Delivered,
                    Some(reply_to) => {
                        let correlation = message.correlation.clone().unwrap_or_else(|| message.target.to_string());
                        self.reply(deliver, from, *seq, reply_to, correlation, result).await
                    }
                }
            }
            Job::Call { from, seq, committed_ms, call, .. } => {
                let key = super::delivery_key(from, *seq, "");
                let outcome = deliver.function(&call.function, &call.input, key.clone()).await;
                let result = match outcome {
                    Ok(out) => Ok(out),
                    Err(InvokeError::Rejected(r)) => Err(r),
                    Err(
                        e @ (InvokeError::Unavailable(_) | InvokeError::ShardMoved(_) | InvokeError::EntityBusy(_)),
                    ) => {
                        self.metrics.flow.retries.with_label_values(&["call"]).inc();
                        return Done::Retry(format!("call of `{}`: {e}", call.function));
                    }
                    // The function failed (or does not exist): that is its result.
                    Err(e) => Err(Rejection::new("function_error", e.to_string())),
                };
                self.observe("call", *committed_ms);
                let correlation = call.correlation.clone().unwrap_or_else(|| call.function.clone());
                self.reply(deliver, from, *seq, &call.reply_to, correlation, result).await
            }
        }
    }

    /// Sends a response back to the sender as its command `reply_to`.
    async fn reply(
        &self,
        deliver: &dyn Deliver,
        from: &EntityRef,
        seq: u64,
        reply_to: &str,
        correlation: String,
        result: Result<Vec<u8>, Rejection>,
    ) -> Done {
        let result = result.map(|bytes| codec::msgpack_to_json(&bytes).unwrap_or(serde_json::Value::Null));
        let payload = match codec::to_msgpack(&Response { correlation, result }) {
            Ok(p) => p,
            Err(e) => return Done::Dead(self.dead(from, seq, "reply", &from.to_string(), reply_to, e.to_string())),
        };
        let command = CommandCall { name: reply_to.to_owned(), payload };
        let key = super::delivery_key(from, seq, ":reply");
        match self.settle("reply", &key, deliver.command(from, &command, key.clone()).await) {
            Settled::Value(_) | Settled::Refused(_) => {
                self.metrics.flow.delivered.with_label_values(&["reply"]).inc();
                Done::Delivered
            }
            Settled::Retry(e) => Done::Retry(format!("reply to {from}: {e}")),
            Settled::Dead(e) => Done::Dead(self.dead(from, seq, "reply", &from.to_string(), reply_to, e)),
        }
    }

    /// Sorts a delivery's outcome: a value, a refusal (both final), retry, or give up.
    fn settle(&self, kind: &str, key: &str, outcome: Result<Vec<u8>, InvokeError>) -> Settled {
        let e = match outcome {
            Ok(v) => {
                self.forget_suspect(key);
                return Settled::Value(v);
            }
            Err(InvokeError::Rejected(r)) => {
                self.forget_suspect(key);
                return Settled::Refused(r);
            }
            Err(e) => e,
        };
        if !retriable(&e) {
            return Settled::Dead(e.to_string());
        }
        if matches!(e, InvokeError::HandlerPanicked(_) | InvokeError::Internal(_)) {
            let mut s = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
            let n = s.entry(key.to_owned()).or_default();
            *n += 1;
            if *n >= SUSPECT_ATTEMPTS {
                s.remove(key);
                return Settled::Dead(format!("{e} ({SUSPECT_ATTEMPTS} attempts)"));
            }
        }
        self.metrics.flow.retries.with_label_values(&[kind]).inc();
        Settled::Retry(e.to_string())
    }

    fn forget_suspect(&self, key: &str) {
        let mut s = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        if !s.is_empty() {
            s.remove(key);
        }
    }

    fn dead(&self, from: &EntityRef, seq: u64, kind: &str, to: &str, command: &str, error: String) -> DeadLetter {
        tracing::error!(from = %from, seq, kind, to, command, error = %error, "message given up (dead letter)");
        self.metrics.flow.dead_letters.with_label_values(&[kind]).inc();
        DeadLetter {
            from: from.to_string(),
            seq,
            kind: kind.to_owned(),
            to: to.to_owned(),
            command: command.to_owned(),
            error,
            at_ms: now_ms(),
        }
    }

    fn observe(&self, kind: &str, committed_ms: i64) {
        let f = &self.metrics.flow;
        f.delivered.with_label_values(&[kind]).inc();
        f.delivery_seconds.with_label_values(&[kind]).observe((now_ms() - committed_ms).max(0) as f64 / 1000.0);
    }
}

enum Settled {
    Value(Vec<u8>),
    Refused(Rejection),
    Retry(String),
    Dead(String),
}

/// The jobs of a batch grouped so that one group's jobs go in order: a
/// send's group is its (sender, target) pair; a call's, its sender.
fn groups(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut out: Vec<Vec<Job>> = Vec::new();
    for job in jobs {
        let key = match &job {
            Job::Send { from, message, .. } => (from.to_string(), message.target.to_string()),
            Job::Call { from, .. } => (from.to_string(), String::new()),
        };
        let i = *index.entry(key).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[i].push(job);
    }
    out
}

#[async_trait::async_trait]
impl Projection for Dispatcher {
    fn name(&self) -> &str {
        DISPATCHER
    }
    fn entity_types(&self) -> Vec<String> {
        self.entity_types.clone()
    }
    fn keeps_state(&self) -> bool {
        true
    }
    fn reads_flow(&self) -> bool {
        true
    }
    fn started(&self, entity_type: &str, shard: u32, state: Option<&[u8]>) {
        let s = DispatcherState::decode(state).unwrap_or_else(|e| {
            tracing::error!(entity_type, shard, error = %e, "dispatcher state unreadable; timers not armed");
            DispatcherState::default()
        });
        let mut units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        let unit = (entity_type.to_owned(), shard);
        if units.get(&unit) == Some(&s) {
            return; // a reload of what this node stored: the armed timers stand
        }
        self.wheels.start(entity_type, shard, s.timers.iter());
        units.insert(unit, s);
    }
    fn stopped(&self, entity_type: &str, shard: u32) {
        self.wheels.stop(entity_type, shard);
        self.units.lock().unwrap_or_else(|p| p.into_inner()).remove(&(entity_type.to_owned(), shard));
    }
    fn wants_checkpoint(&self, entity_type: &str, shard: u32) -> bool {
        // Purged entities leave the stored state too: nothing of them stays.
        let purged = self.wheels.take_purged(entity_type, shard);
        if purged.is_empty() {
            return false;
        }
        let mut units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = units.get_mut(&(entity_type.to_owned(), shard)) else { return false };
        for (entity, seq) in purged {
            if s.timers.get(&entity).and_then(Timers::tombstone).is_some_and(|t| t.seq == seq) {
                s.timers.remove(&entity);
            }
        }
        true
    }
    fn checkpoint_state(&self, entity_type: &str, shard: u32) -> Option<Vec<u8>> {
        let units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        let s = units.get(&(entity_type.to_owned(), shard))?;
        match codec::to_msgpack(s) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(entity_type, shard, error = %e, "dispatcher state does not encode");
                None
            }
        }
    }

    async fn handle(&self, batch: ProjectionBatch<'_>, state: &mut Option<Vec<u8>>) -> Result<(), ProjectionError> {
        let mut jobs = Vec::new();
        let mut changes: Vec<(&str, u64, FlowRecord)> = Vec::new();
        let mut dead = Vec::new();
        for e in batch.events {
            let from = || EntityRef::new(e.entity_type.clone(), e.entity_id.clone());
            let trace = || crate::telemetry::enabled().then(|| EventMeta::decode(&e.metadata).trace).flatten();
            match FlowRecord::decode(&e.event_type, &e.payload) {
                None => {}
                Some(Err(err)) => dead.push(self.dead(&from(), e.seq, "record", "", &e.event_type, err.to_string())),
                Some(Ok(FlowRecord::Send(message))) => jobs.push(Job::Send {
                    from: from(),
                    seq: e.seq,
                    committed_ms: e.timestamp_ms,
                    message,
                    trace: trace(),
                }),
                Some(Ok(FlowRecord::Call(call))) => jobs.push(Job::Call {
                    from: from(),
                    seq: e.seq,
                    committed_ms: e.timestamp_ms,
                    call,
                    trace: trace(),
                }),
                Some(Ok(timer_change)) => changes.push((&e.entity_id, e.seq, timer_change)),
            }
        }
        if !jobs.is_empty() {
            tessera_journal::fault::point("flow.before_delivery");
            let deliver = self.deliverer()?;
            let n = jobs.len() as i64;
            self.metrics.flow.outbox_depth.add(n);
            let outcomes: Vec<Vec<Done>> = futures::stream::iter(groups(jobs))
                .map(|group| {
                    let deliver = deliver.clone();
                    async move {
                        let mut done = Vec::with_capacity(group.len());
                        for job in &group {
                            let d = self.run(&*deliver, job).await;
                            let stop = matches!(d, Done::Retry(_));
                            done.push(d);
                            if stop {
                                break; // later sends of the pair wait for this one
                            }
                        }
                        done
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            self.metrics.flow.outbox_depth.sub(n);
            let mut retry = None;
            for d in outcomes.into_iter().flatten() {
                match d {
                    Done::Delivered => {}
                    Done::Dead(d) => dead.push(d),
                    Done::Retry(e) => retry = Some(e),
                }
            }
            if let Some(e) = retry {
                // Nothing of the batch is kept; what was delivered is
                // answered from the targets' idempotency records when the
                // batch comes again.
                return Err(ProjectionError::Failed(e));
            }
            tessera_journal::fault::point("flow.after_delivery");
        }
        // Delivered: now the batch's timers and dead letters are kept.
        let unit = (batch.entity_type.to_owned(), batch.shard);
        let mut units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        if !units.contains_key(&unit) {
            let s = DispatcherState::decode(state.as_deref()).map_err(ProjectionError::Failed)?;
            units.insert(unit.clone(), s);
        }
        let s = units.get_mut(&unit).expect("just inserted");
        let mut touched: Vec<&str> = Vec::new();
        for (entity, seq, change) in &changes {
            let timers = s.timers.entry((*entity).to_owned()).or_default();
            timers.apply(*seq, change);
            if timers.is_empty() {
                s.timers.remove(*entity);
            }
            if !touched.contains(entity) {
                touched.push(entity);
            }
        }
        for d in dead {
            push_dead(s, d);
        }
        for entity in touched {
            let timers = s.timers.get(entity).cloned().unwrap_or_default();
            self.wheels.set(batch.entity_type, batch.shard, entity, &timers);
        }
        // Kept here; encoded when the checkpoint is stored (`checkpoint_state`).
        *state = None;
        Ok(())
    }
}

fn push_dead(s: &mut DispatcherState, dead: DeadLetter) {
    s.dead.push_back(dead);
    while s.dead.len() > DEAD_KEPT {
        s.dead.pop_front();
    }
}

/// The runtime's records in a feed slice that a dispatcher at `checkpoint`
/// has not passed yet, for one entity (what `GET /v1/entities/…` shows as
/// undelivered).
pub(crate) fn undelivered(events: &[FeedEvent], checkpoint: u64, entity_id: &str) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e.offset > checkpoint && e.entity_id == entity_id)
        .filter_map(|e| match FlowRecord::decode(&e.event_type, &e.payload)? {
            Ok(r @ (FlowRecord::Send(_) | FlowRecord::Call(_))) => {
                Some(serde_json::json!({ "seq": e.seq, "record": r.json() }))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(from: &str, to: &str, seq: u64) -> Job {
        Job::Send {
            from: EntityRef::new("order", from),
            seq,
            committed_ms: 0,
            message: Message {
                target: EntityRef::new("stock", to),
                command: CommandCall::named("reserve", &1).unwrap(),
                reply_to: None,
                correlation: None,
            },
            trace: None,
        }
    }

    fn seqs(g: &[Job]) -> Vec<u64> {
        g.iter()
            .map(|j| match j {
                Job::Send { seq, .. } | Job::Call { seq, .. } => *seq,
            })
            .collect()
    }

    #[test]
    fn sends_of_one_pair_stay_in_order_in_one_group() {
        let g = groups(vec![send("o1", "s1", 1), send("o1", "s2", 2), send("o1", "s1", 3), send("o2", "s1", 1)]);
        let got: Vec<Vec<u64>> = g.iter().map(|g| seqs(g)).collect();
        assert_eq!(got, vec![vec![1, 3], vec![2], vec![1]]);
    }

    #[test]
    fn the_state_kept_with_the_checkpoint_round_trips() {
        let mut s = DispatcherState::default();
        let mut t = Timers::default();
        let command = CommandCall::named("expire", &()).unwrap();
        t.apply(4, &FlowRecord::Schedule(tessera_entities::Timer { id: "x".into(), at_ms: 9, command }));
        s.timers.insert("o1".into(), t);
        let bytes = codec::to_msgpack(&s).unwrap();
        assert_eq!(DispatcherState::decode(Some(&bytes)).unwrap(), s);
        assert!(DispatcherState::decode(Some(b"\xc1")).is_err());
    }
}

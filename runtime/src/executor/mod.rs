//! Executors: actors that own a device (a GPU found by NVML, or the CPU) and
//! run stateless functions on it with dynamic batching. A call is placed on
//! the least-loaded executor that can serve the function's declared
//! [`Resources`] (a GPU with enough free memory, or a CPU executor when the
//! machine has no GPU); each executor queues calls (bounded: 429 when full),
//! runs one batch at a time of up to `max_batch` calls of one function,
//! waiting at most `max_wait` for a batch to fill when idle and starting
//! the next batch at once with whatever queued meanwhile; a watchdog fails
//! the calls of a batch that runs past its deadline.
//!
//! May import: the entities, `metrics`, `error`. Not the node, not an edge.

pub mod devices;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tessera_entities::{Device, DynFunction, DynInput, FnCtx, Resources};
use tokio::sync::oneshot;

use crate::error::InvokeError;
use crate::metrics::Metrics;

/// Batching settings of every executor.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorSettings {
    /// Most calls in one batch (also capped by the function's own `max_batch`).
    pub max_batch: usize,
    /// Longest wait for a batch to fill when the executor is idle.
    pub max_wait: Duration,
    /// Most calls queued per executor.
    pub queue_limit: usize,
    /// A batch running longer fails its calls (504).
    pub watchdog: Duration,
}

struct Call {
    function: Arc<dyn DynFunction>,
    input: DynInput,
    invocation_id: String,
    reply: oneshot::Sender<Result<Vec<u8>, InvokeError>>,
}

enum ExecMsg {
    Call(Box<Call>),
    Flush,
    Done,
}

/// One executor as the placement sees it.
pub struct ExecutorHandle {
    /// `cpu-N` or `gpu-N`.
    pub id: String,
    /// Its device.
    pub device: Device,
    queued: Arc<AtomicUsize>,
    actor: ActorRef<ExecMsg>,
}

/// All executors of a node.
pub struct Executors {
    executors: Vec<ExecutorHandle>,
    settings: ExecutorSettings,
}

impl Executors {
    /// One executor per GPU NVML finds and `cpu` CPU executors.
    pub(crate) async fn start(cpu: usize, settings: ExecutorSettings, metrics: Metrics) -> Result<Self, String> {
        let mut devices: Vec<(String, Device)> =
            devices::gpus().iter().map(|g| (format!("gpu-{}", g.index), Device::Gpu(g.index))).collect();
        for g in devices::gpus() {
            tracing::info!(gpu = g.index, name = %g.name, memory_total = g.memory_total, "GPU executor");
        }
        devices.extend((0..cpu.max(1)).map(|i| (format!("cpu-{i}"), Device::Cpu)));
        let mut executors = Vec::new();
        for (id, device) in devices {
            let queued = Arc::new(AtomicUsize::new(0));
            let state = ExecState {
                id: id.clone(),
                device,
                settings,
                queue: VecDeque::new(),
                running: false,
                flush_scheduled: false,
                queued: queued.clone(),
                metrics: metrics.clone(),
            };
            let (actor, _) = Actor::spawn(None, ExecutorActor, state).await.map_err(|e| e.to_string())?;
            executors.push(ExecutorHandle { id, device, queued, actor });
        }
        Ok(Self { executors, settings })
    }

    /// The executors.
    pub fn list(&self) -> &[ExecutorHandle] {
        &self.executors
    }

    /// Places a call and waits for its output; also returns the executor's id.
    pub(crate) async fn call(
        &self,
        function: Arc<dyn DynFunction>,
        input: DynInput,
        invocation_id: String,
    ) -> Result<(Vec<u8>, String), InvokeError> {
        let gpus = devices::gpus();
        let eligible = |e: &&ExecutorHandle| match (function.resources(), e.device) {
            (Resources::Gpu { memory_bytes }, Device::Gpu(i)) => {
                gpus.iter().find(|g| g.index == i).is_some_and(|g| g.memory_free >= memory_bytes)
            }
            (Resources::Gpu { .. }, Device::Cpu) => gpus.is_empty(), // CPU fallback on GPU-less machines
            (_, Device::Cpu) => true,
            _ => false,
        };
        let exec = self.executors.iter().filter(eligible).min_by_key(|e| e.queued.load(Ordering::Relaxed)).ok_or_else(
            || {
                InvokeError::Unavailable(format!(
                    "no executor can run `{}` now (no GPU with enough free memory)",
                    function.name()
                ))
            },
        )?;
        if exec.queued.load(Ordering::Relaxed) >= self.settings.queue_limit {
            return Err(InvokeError::EntityBusy(format!("executor {} (queue full)", exec.id)));
        }
        let (tx, rx) = oneshot::channel();
        exec.queued.fetch_add(1, Ordering::Relaxed);
        let call = Call { function, input, invocation_id, reply: tx };
        if exec.actor.send_message(ExecMsg::Call(Box::new(call))).is_err() {
            exec.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(InvokeError::Unavailable(format!("executor {} stopped", exec.id)));
        }
        let out = rx.await.map_err(|_| InvokeError::Unavailable("the executor stopped before replying".into()))??;
        Ok((out, exec.id.clone()))
    }

    pub(crate) fn stop(&self) {
        for e in &self.executors {
            e.actor.stop(None);
        }
    }
}

struct ExecutorActor;

struct ExecState {
    id: String,
    device: Device,
    settings: ExecutorSettings,
    queue: VecDeque<Call>,
    running: bool,
    flush_scheduled: bool,
    queued: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl ExecState {
    /// How many leading calls of the head's function one batch may take.
    fn batch_limit(&self) -> usize {
        self.queue.front().map_or(0, |c| c.function.max_batch().min(self.settings.max_batch).max(1))
    }

    fn ready(&self) -> bool {
        let Some(head) = self.queue.front() else { return false };
        let same = self.queue.iter().filter(|c| Arc::ptr_eq(&c.function, &head.function)).count();
        same >= self.batch_limit()
    }

    fn start_batch(&mut self, myself: &ActorRef<ExecMsg>) {
        let limit = self.batch_limit();
        let Some(head) = self.queue.front() else { return };
        let function = head.function.clone();
        let mut batch = Vec::with_capacity(limit);
        let mut rest = VecDeque::with_capacity(self.queue.len());
        for c in self.queue.drain(..) {
            if batch.len() < limit && Arc::ptr_eq(&c.function, &function) {
                batch.push(c);
            } else {
                rest.push_back(c);
            }
        }
        self.queue = rest;
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        self.running = true;
        let m = &self.metrics;
        m.executor_queue_depth.with_label_values(&[&self.id]).set(self.queue.len() as i64);
        m.executor_batch_size.with_label_values(&[&self.id]).observe(batch.len() as f64);
        let ctx = FnCtx {
            invocation_id: batch.first().map(|c| c.invocation_id.clone()).unwrap_or_default(),
            now_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            device: self.device,
        };
        let (me, watchdog, id, metrics) =
            (myself.clone(), self.settings.watchdog, self.id.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let (inputs, replies): (Vec<DynInput>, Vec<_>) = batch.into_iter().map(|c| (c.input, c.reply)).unzip();
            let n = replies.len();
            let work = tokio::spawn(function.call_batch(inputs, ctx));
            match tokio::time::timeout(watchdog, work).await {
                Ok(Ok(results)) if results.len() == n => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        let _ = reply.send(r.map_err(InvokeError::from));
                    }
                }
                Ok(Ok(results)) => {
                    let e = InvokeError::Internal(format!(
                        "`{}` returned {} results for {n} inputs",
                        function.name(),
                        results.len()
                    ));
                    replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
                }
                Ok(Err(join)) => {
                    metrics.handler_panics.inc();
                    let e = InvokeError::HandlerPanicked(format!("function `{}` panicked: {join}", function.name()));
                    replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
                }
                Err(_) => {
                    tracing::error!(executor = %id, function = function.name(), "batch exceeded the watchdog deadline; its calls fail");
                    metrics.executor_stuck_batches.with_label_values(&[&id]).inc();
                    let e =
                        InvokeError::Timeout(format!("batch on executor {id} ran past {} ms", watchdog.as_millis()));
                    replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
                }
            }
            metrics.executor_busy_seconds.with_label_values(&[&id]).inc_by(started.elapsed().as_secs_f64());
            let _ = me.send_message(ExecMsg::Done);
        });
    }

    fn kick(&mut self, myself: &ActorRef<ExecMsg>) {
        if self.running || self.queue.is_empty() {
            return;
        }
        if self.ready() {
            self.start_batch(myself);
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            myself.send_after(self.settings.max_wait, || ExecMsg::Flush);
        }
    }
}

impl Actor for ExecutorActor {
    type Msg = ExecMsg;
    type State = ExecState;
    type Arguments = ExecState;

    async fn pre_start(&self, _: ActorRef<ExecMsg>, state: ExecState) -> Result<ExecState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ExecMsg>,
        msg: ExecMsg,
        st: &mut ExecState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ExecMsg::Call(call) => {
                st.queue.push_back(*call);
                st.metrics.executor_queue_depth.with_label_values(&[&st.id]).set(st.queue.len() as i64);
                st.kick(&myself);
            }
            ExecMsg::Flush => {
                st.flush_scheduled = false;
                if !st.running && !st.queue.is_empty() {
                    st.start_batch(&myself);
                }
            }
            ExecMsg::Done => {
                st.running = false;
                if !st.queue.is_empty() {
                    // Continuous batching: whatever queued during the last batch runs now.
                    st.start_batch(&myself);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<ExecMsg>, st: &mut ExecState) -> Result<(), ActorProcessingErr> {
        for c in st.queue.drain(..) {
            let _ = c.reply.send(Err(InvokeError::Unavailable("node shutting down".into())));
        }
        Ok(())
    }
}

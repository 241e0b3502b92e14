//! Async function calls: accepted into the result store and a
//! [`CallQueue`], run by `Node::run_async` at least once, their result
//! stored once.

use std::time::Duration;
use tracing::Instrument;

use tessera_entities::Format;

use super::ports::{CallQueue, QueuedCall, QueuedCommand};
use super::{Node, new_invocation_id};
use crate::error::InvokeError;
use crate::now_ms;
use crate::results::{InvocationResult, PutOutcome, ResultStatus};

/// One delivery of an async invocation, as `Node::run_async` takes it.
#[derive(Debug, Clone, Copy)]
pub struct AsyncCall<'a> {
    /// The invocation id.
    pub id: &'a str,
    /// The function.
    pub function: &'a str,
    /// The input.
    pub body: &'a [u8],
    /// The input's format.
    pub format: Format,
    /// The caller's request id, if any.
    pub request_id: Option<&'a str>,
    /// The caller's W3C `traceparent`, if it was traced.
    pub trace: Option<&'a str>,
}

/// What to do with an async invocation's message after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncDecision {
    /// Done (a final result is stored): acknowledge.
    Ack,
    /// A retryable failure: deliver again after this delay.
    Retry(std::time::Duration),
}

impl Node {
    /// Accepts an async function call: stores a pending result row and hands
    /// the call to JetStream (with NATS) or to a background task (without).
    /// With a key already used, returns that invocation's row instead.
    pub async fn call_async(
        &self,
        name: &str,
        body: &[u8],
        format: Format,
        key: Option<String>,
        request_id: Option<String>,
    ) -> Result<InvocationResult, InvokeError> {
        let n = &self.inner;
        let f = n.registry.function(name).ok_or_else(|| InvokeError::UnknownFunction(name.into()))?;
        f.decode_input(body, format).map_err(|e| InvokeError::Malformed(format!("malformed `{name}` input: {e}")))?;
        let id = crate::contract::idempotency_key(key.as_deref())?.unwrap_or_else(new_invocation_id);
        let now = now_ms();
        if let Some(existing) = n.results.get(&id, now).await.map_err(|e| InvokeError::Unavailable(e.to_string()))? {
            return Ok(existing);
        }
        let ttl = (n.config.limits.result_ttl_secs as i64).saturating_mul(1000);
        let mut row = InvocationResult::pending(&id, format!("function:{name}"), format.content_type(), now, ttl);
        row.request_id = request_id.clone();
        n.results.put(row.clone()).await.map_err(|e| InvokeError::Unavailable(e.to_string()))?;
        let trace = crate::telemetry::current_traceparent();
        let call = QueuedCall { id, function: name.to_owned(), body: body.to_vec(), format, request_id, trace };
        n.queue.enqueue(call).await?;
        Ok(row)
    }

    /// The result row of an invocation (`None`: unknown or expired).
    pub async fn invocation(&self, id: &str) -> Result<Option<InvocationResult>, InvokeError> {
        self.inner.results.get(id, now_ms()).await.map_err(|e| InvokeError::Unavailable(e.to_string()))
    }

    /// Runs one delivery of an async invocation and stores its result. A
    /// final result already stored (a redelivery after a crash) is not run
    /// again. Retryable failures ask for redelivery until `last_attempt`,
    /// which dead-letters the call.
    pub async fn run_async(&self, call: AsyncCall<'_>, attempt: u32, last_attempt: bool) -> AsyncDecision {
        if !crate::telemetry::invocation_spans() {
            return self.run_async_inner(call, attempt, last_attempt).await;
        }
        let span = tracing::info_span!(target: crate::telemetry::INVOCATION_TARGET, "async_call", invocation_id = %call.id, function = %call.function, attempt);
        crate::telemetry::set_remote_parent(&span, call.trace, None);
        self.run_async_inner(call, attempt, last_attempt).instrument(span).await
    }

    async fn run_async_inner(&self, call: AsyncCall<'_>, attempt: u32, last_attempt: bool) -> AsyncDecision {
        let AsyncCall { id, function: name, body, format, request_id, .. } = call;
        let n = &self.inner;
        let retry = AsyncDecision::Retry(Duration::from_millis(200 * u64::from(attempt.min(25))));
        let now = now_ms();
        let ttl = (n.config.limits.result_ttl_secs as i64).saturating_mul(1000);
        let mut row = match n.results.get(id, now).await {
            Ok(Some(r)) if r.status.is_final() => {
                tracing::info!(invocation = %id, "redelivered invocation already has a result; not run again");
                return AsyncDecision::Ack;
            }
            Ok(Some(r)) => r,
            Ok(None) => InvocationResult::pending(id, format!("function:{name}"), format.content_type(), now, ttl),
            Err(e) => {
                tracing::warn!(invocation = %id, error = %e, "result store unavailable; retrying later");
                return retry;
            }
        };
        row.status = ResultStatus::Running;
        row.attempts = attempt;
        row.started_ms = Some(now);
        row.node_id = n.node_id.clone();
        if row.request_id.is_none() {
            row.request_id = request_id.map(str::to_owned);
        }
        if n.results.put(row.clone()).await.is_err() {
            return retry;
        }
        let (outcome, executor) = self.call_function_placed(name, body, format, id.to_owned()).await;
        row.executor_id = executor;
        row.completed_ms = Some(now_ms());
        match outcome {
            Ok(out) => {
                row.status = ResultStatus::Ok;
                row.status_code = 200;
                row.set_body(out, n.config.limits.result_inline_bytes);
            }
            Err(e) if e.retry_after().is_some() && !last_attempt => {
                tracing::info!(invocation = %id, attempt, error = %e, "retryable failure; will be redelivered");
                row.error = Some(e.to_string());
                let _ = n.results.put(row).await;
                return retry;
            }
            Err(e) => {
                row.status =
                    if matches!(e, InvokeError::Timeout(_)) { ResultStatus::TimedOut } else { ResultStatus::Error };
                row.status_code = e.status();
                row.error = Some(if e.retry_after().is_some() {
                    format!("dead-lettered after {attempt} deliveries: {e}")
                } else {
                    e.to_string()
                });
                row.set_body(
                    rmp_serde::to_vec_named(&e.to_body()).unwrap_or_default(),
                    n.config.limits.result_inline_bytes,
                );
                if e.retry_after().is_some() {
                    self.dead_letter(id, name, body, format, &e).await;
                }
            }
        }
        match n.results.put(row.clone()).await {
            Ok(PutOutcome::Stored | PutOutcome::AlreadyFinal(_)) => {}
            Err(e) => {
                tracing::warn!(invocation = %id, error = %e, "cannot store the result; will be redelivered");
                return retry;
            }
        }
        n.queue.finished(&row).await;
        AsyncDecision::Ack
    }

    /// Stores a final error row for a queued call that breaks the
    /// invocation contract (it is not run); retries while the store is down.
    pub async fn refuse_async(&self, id: &str, function: &str, e: &InvokeError) -> AsyncDecision {
        self.refuse_queued(id, format!("function:{function}"), e).await
    }

    /// Stores a final error row for a queued invocation of `target` that is
    /// not run; retries while the store is down.
    pub(crate) async fn refuse_queued(&self, id: &str, target: String, e: &InvokeError) -> AsyncDecision {
        let n = &self.inner;
        let (now, ttl) = (now_ms(), (n.config.limits.result_ttl_secs as i64).saturating_mul(1000));
        let mut row = InvocationResult::pending(id, target.clone(), Format::Json.content_type(), now, ttl);
        row.status = ResultStatus::Error;
        row.status_code = e.status();
        row.error = Some(e.to_string());
        row.node_id = n.node_id.clone();
        row.completed_ms = Some(now);
        row.set_body(rmp_serde::to_vec_named(&e.to_body()).unwrap_or_default(), n.config.limits.result_inline_bytes);
        tracing::warn!(invocation = %id, %target, error = %e, "queued invocation refused");
        match n.results.put(row.clone()).await {
            Ok(_) => {
                n.queue.finished(&row).await;
                AsyncDecision::Ack
            }
            Err(_) => AsyncDecision::Retry(Duration::from_secs(1)),
        }
    }

    async fn dead_letter(&self, id: &str, name: &str, body: &[u8], format: Format, e: &InvokeError) {
        let (id, function, body) = (id.to_owned(), name.to_owned(), body.to_vec());
        let call = QueuedCall { id, function, body, format, request_id: None, trace: None };
        self.inner.queue.dead_letter(&call, e).await;
        tracing::warn!(invocation = %call.id, function = %name, error = %e, "invocation dead-lettered");
    }
}

/// The in-process queue of a node without NATS: calls run on this node in
/// a background task, retried like redeliveries; not durable (a crash
/// loses queued calls, whose rows stay `pending`). Bounded: past `limit`
/// calls and commands accepted and not finished, new ones are refused
/// with 503 (so a flood of async calls cannot grow the node's memory).
pub struct LocalQueue {
    tx: tokio::sync::mpsc::UnboundedSender<Queued>,
    pending: Pending,
}

/// Calls and commands accepted by a [`LocalQueue`] and not finished.
#[derive(Clone)]
pub(crate) struct Pending {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

impl Pending {
    fn take(&self) -> Result<(), InvokeError> {
        use std::sync::atomic::Ordering;
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(InvokeError::Unavailable(format!(
                "the async queue is full ({} calls and commands waiting); retry later",
                self.limit
            )));
        }
        Ok(())
    }
    /// One accepted call or command finished (or was given up).
    pub(crate) fn done(&self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

enum Queued {
    Call(QueuedCall),
    Command(QueuedCommand),
}

/// Runs what a [`LocalQueue`] takes; `crate::server` drives it.
pub struct LocalQueueRunner {
    rx: tokio::sync::mpsc::UnboundedReceiver<Queued>,
    max_deliver: u32,
    pending: Pending,
}

impl LocalQueue {
    /// A queue and its runner; each call is tried up to `max_deliver` times;
    /// at most `limit` accepted and not finished.
    pub fn new(max_deliver: u32, limit: usize) -> (Self, LocalQueueRunner) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pending = Pending { count: Default::default(), limit: limit.max(1) };
        (Self { tx, pending: pending.clone() }, LocalQueueRunner { rx, max_deliver: max_deliver.max(1), pending })
    }
}

#[async_trait::async_trait]
impl CallQueue for LocalQueue {
    async fn enqueue(&self, call: QueuedCall) -> Result<(), InvokeError> {
        self.pending.take()?;
        self.tx.send(Queued::Call(call)).map_err(|_| {
            self.pending.done();
            InvokeError::Unavailable("node shutting down".into())
        })
    }
    async fn enqueue_command(&self, cmd: QueuedCommand) -> Result<(), InvokeError> {
        self.pending.take()?;
        self.tx.send(Queued::Command(cmd)).map_err(|_| {
            self.pending.done();
            InvokeError::Unavailable("node shutting down".into())
        })
    }
    async fn finished(&self, _: &InvocationResult) {}
    async fn dead_letter(&self, _: &QueuedCall, _: &InvokeError) {}
}

/// Runs `f` when dropped (the end of a task, however it ends).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

impl LocalQueueRunner {
    /// Runs every queued call on `node`, each in its own task, until the
    /// queue is dropped.
    pub async fn run(mut self, node: Node) {
        let commands = super::async_commands::LocalCommands::new(self.pending.clone());
        while let Some(q) = self.rx.recv().await {
            let c = match q {
                Queued::Call(c) => c,
                Queued::Command(cmd) => {
                    commands.push(&node, cmd, self.max_deliver);
                    continue;
                }
            };
            let (node, max, pending) = (node.clone(), self.max_deliver, self.pending.clone());
            tokio::spawn(async move {
                let _done = scopeguard(move || pending.done());
                for attempt in 1..=max {
                    let call = AsyncCall {
                        id: &c.id,
                        function: &c.function,
                        body: &c.body,
                        format: c.format,
                        request_id: c.request_id.as_deref(),
                        trace: c.trace.as_deref(),
                    };
                    match node.run_async(call, attempt, attempt == max).await {
                        AsyncDecision::Ack => return,
                        AsyncDecision::Retry(d) => tokio::time::sleep(d).await,
                    }
                }
            });
        }
    }
}

//! Async entity commands: accepted into the result store and the
//! [`CallQueue`] (a JetStream subject per unit, or in-process), run on the
//! unit's owner in per-entity order with the invocation id as the
//! idempotency key — so a redelivery after a crash or a move is answered
//! from the entity's idempotency record, not applied again — and their
//! outcome (reply or rejection) stored as a result row.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use super::ports::QueuedCommand;
use super::{AsyncDecision, Invocation, Node, new_invocation_id};
use crate::error::InvokeError;
use crate::now_ms;
use crate::results::{InvocationResult, PutOutcome, ResultStatus};

fn target(c: &QueuedCommand) -> String {
    format!("entity:{}/{}/{}", c.entity_type, c.entity_id, c.command)
}

impl Node {
    /// Accepts an entity command to run later (`?mode=async`): checks it as
    /// a synchronous one would be (type, command and body, id, size),
    /// stores a pending result row and queues it. With a key already used,
    /// returns that invocation's row instead.
    pub async fn invoke_async(&self, inv: Invocation) -> Result<InvocationResult, InvokeError> {
        let n = &self.inner;
        self.admit(&inv)?;
        let entity = n
            .registry
            .entity(&inv.entity_type)
            .ok_or_else(|| InvokeError::UnknownEntityType(inv.entity_type.clone()))?;
        entity.decode_command(&inv.command, &inv.body, inv.format)?;
        let id = inv.idempotency_key.clone().unwrap_or_else(new_invocation_id);
        let now = now_ms();
        if let Some(existing) = n.results.get(&id, now).await.map_err(|e| InvokeError::Unavailable(e.to_string()))? {
            return Ok(existing);
        }
        let cmd = QueuedCommand {
            id,
            entity_type: inv.entity_type,
            entity_id: inv.entity_id,
            command: inv.command,
            body: inv.body,
            format: inv.format,
            trace: crate::telemetry::current_traceparent(),
        };
        let ttl = (n.config.limits.result_ttl_secs as i64).saturating_mul(1000);
        let row = InvocationResult::pending(&cmd.id, target(&cmd), cmd.format.content_type(), now, ttl);
        n.results.put(row.clone()).await.map_err(|e| InvokeError::Unavailable(e.to_string()))?;
        n.queue.enqueue_command(cmd).await?;
        Ok(row)
    }

    /// True when this node runs the commands of `entity_type` in `shard`
    /// now (always outside a cluster).
    pub fn serves(&self, entity_type: &str, shard: u32) -> bool {
        self.inner.ownership.as_ref().is_none_or(|o| o.accepting(entity_type, shard))
    }

    /// Runs one delivery of an async entity command and stores its outcome.
    /// A final row already stored (a redelivery) is not run again; the
    /// command's idempotency key is its invocation id, so a delivery whose
    /// row was lost is answered from the entity's record. Retryable
    /// failures ask for redelivery (a shard that moved, always; others
    /// until `last_attempt`, which stores the failure).
    pub async fn run_async_command(&self, cmd: &QueuedCommand, attempt: u32, last_attempt: bool) -> AsyncDecision {
        if !crate::telemetry::invocation_spans() {
            return self.run_async_command_inner(cmd, attempt, last_attempt).await;
        }
        let span = tracing::info_span!(target: crate::telemetry::INVOCATION_TARGET, "async_command", invocation_id = %cmd.id, attempt);
        crate::telemetry::set_remote_parent(&span, cmd.trace.as_deref(), None);
        self.run_async_command_inner(cmd, attempt, last_attempt).instrument(span).await
    }

    async fn run_async_command_inner(&self, cmd: &QueuedCommand, attempt: u32, last_attempt: bool) -> AsyncDecision {
        let n = &self.inner;
        let retry = AsyncDecision::Retry(Duration::from_millis(100 * u64::from(attempt.min(20))));
        let now = now_ms();
        let ttl = (n.config.limits.result_ttl_secs as i64).saturating_mul(1000);
        let mut row = match n.results.get(&cmd.id, now).await {
            Ok(Some(r)) if r.status.is_final() => return AsyncDecision::Ack,
            Ok(Some(r)) => r,
            Ok(None) => InvocationResult::pending(&cmd.id, target(cmd), cmd.format.content_type(), now, ttl),
            Err(e) => {
                tracing::warn!(invocation = %cmd.id, error = %e, "result store unavailable; retrying later");
                return retry;
            }
        };
        let inv = Invocation {
            entity_type: cmd.entity_type.clone(),
            entity_id: cmd.entity_id.clone(),
            command: cmd.command.clone(),
            body: cmd.body.clone(),
            format: cmd.format,
            idempotency_key: Some(cmd.id.clone()),
        };
        // Routed to the owner (the puller of a group may not own every unit of it).
        let outcome = self.invoke(inv).await;
        row.attempts = attempt;
        row.node_id = n.node_id.clone();
        row.started_ms.get_or_insert(now);
        row.completed_ms = Some(now_ms());
        match outcome {
            Ok(r) => {
                row.status = ResultStatus::Ok;
                row.status_code = 200;
                row.set_body(r.reply, n.config.limits.result_inline_bytes);
            }
            Err(InvokeError::ShardMoved(m)) => {
                tracing::debug!(invocation = %cmd.id, reason = %m, "shard moved; the new owner runs it");
                return AsyncDecision::Retry(Duration::ZERO);
            }
            Err(e) if e.retry_after().is_some() && !last_attempt => {
                tracing::info!(invocation = %cmd.id, attempt, error = %e, "retryable failure; will be redelivered");
                return retry;
            }
            Err(e) => {
                row.status =
                    if matches!(e, InvokeError::Timeout(_)) { ResultStatus::TimedOut } else { ResultStatus::Error };
                row.status_code = e.status();
                row.error = Some(e.to_string());
                row.set_body(
                    rmp_serde::to_vec_named(&e.to_body()).unwrap_or_default(),
                    n.config.limits.result_inline_bytes,
                );
            }
        }
        match n.results.put(row.clone()).await {
            Ok(PutOutcome::Stored | PutOutcome::AlreadyFinal(_)) => {}
            Err(e) => {
                tracing::warn!(invocation = %cmd.id, error = %e, "cannot store the outcome; will be redelivered");
                return retry;
            }
        }
        n.queue.finished(&row).await;
        AsyncDecision::Ack
    }
}

/// The async entity commands of a node without NATS: run in-process, in
/// order per entity (not durable: a crash loses what is queued, whose rows
/// stay `pending`).
#[derive(Clone)]
pub(crate) struct LocalCommands {
    queues: Arc<Mutex<HashMap<(String, String), Fifo>>>,
    pending: super::async_calls::Pending,
}

/// One entity's queued commands; the front one is running.
type Fifo = VecDeque<QueuedCommand>;

impl LocalCommands {
    /// Queues of commands counted in `pending` (one is done when it ran).
    pub(crate) fn new(pending: super::async_calls::Pending) -> Self {
        Self { queues: Arc::default(), pending }
    }

    /// Queues `cmd` behind its entity's earlier ones; starts a drainer when
    /// the entity had none.
    pub(crate) fn push(&self, node: &Node, cmd: QueuedCommand, max_deliver: u32) {
        let key = (cmd.entity_type.clone(), cmd.entity_id.clone());
        {
            let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let queue = q.entry(key.clone()).or_default();
            queue.push_back(cmd);
            if queue.len() > 1 {
                return;
            }
        }
        let (me, node) = (self.clone(), node.clone());
        tokio::spawn(async move {
            loop {
                let next = {
                    let q = me.queues.lock().unwrap_or_else(|p| p.into_inner());
                    q.get(&key).and_then(|q| q.front().cloned())
                };
                let Some(cmd) = next else { return };
                for attempt in 1..=max_deliver.max(1) {
                    match node.run_async_command(&cmd, attempt, attempt == max_deliver.max(1)).await {
                        AsyncDecision::Ack => break,
                        AsyncDecision::Retry(d) => tokio::time::sleep(d.max(Duration::from_millis(50))).await,
                    }
                }
                me.pending.done();
                let mut q = me.queues.lock().unwrap_or_else(|p| p.into_inner());
                let done = q.get_mut(&key).map(|q| {
                    q.pop_front();
                    q.is_empty()
                });
                if done != Some(false) {
                    q.remove(&key);
                    return;
                }
            }
        });
    }
}

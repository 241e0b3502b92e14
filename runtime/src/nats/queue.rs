//! The JetStream call queue: async calls go to the work-queue stream
//! `{P}_INVOKE` (de-duplicated by invocation id), final rows are published
//! on `{p}.result.{id}`, dead letters on `{p}.dlq.{function}`. Async entity
//! commands go to `{p}.acmd.{type}.{shard}` on `{P}_COMMANDS` (see
//! `commands.rs` for how owners consume them).

use async_nats::HeaderMap;

use super::NatsLink;
use crate::error::InvokeError;
use crate::node::{CallQueue, QueuedCall, QueuedCommand};
use crate::results::InvocationResult;
use crate::wire;

/// The node core's [`CallQueue`] port on JetStream.
pub(crate) struct JetStreamQueue {
    link: NatsLink,
    shards: u32,
    groups: u32,
}

impl JetStreamQueue {
    pub(crate) fn new(link: NatsLink, shards: u32, groups: u32) -> Self {
        Self { link, shards, groups }
    }
}

#[async_trait::async_trait]
impl CallQueue for JetStreamQueue {
    async fn enqueue(&self, call: QueuedCall) -> Result<(), InvokeError> {
        let mut h = HeaderMap::new();
        h.insert(wire::INVOCATION_ID, call.id.as_str());
        h.insert(wire::NATS_MSG_ID, call.id.as_str());
        h.insert(wire::CONTENT_TYPE, call.format.content_type());
        if let Some(r) = &call.request_id {
            h.insert(wire::REQUEST_ID, r.as_str());
        }
        crate::client::with_trace_context(&mut h);
        let ack = self
            .link
            .js
            .publish_with_headers(self.link.subjects.invoke(&call.function), h, call.body.into())
            .await
            .map_err(|e| InvokeError::Unavailable(format!("cannot queue the call: {e}")))?;
        ack.await.map_err(|e| InvokeError::Unavailable(format!("JetStream did not store the call: {e}")))?;
        Ok(())
    }

    async fn enqueue_command(&self, cmd: QueuedCommand) -> Result<(), InvokeError> {
        let mut h = HeaderMap::new();
        h.insert(wire::INVOCATION_ID, cmd.id.as_str());
        h.insert(wire::NATS_MSG_ID, cmd.id.as_str());
        h.insert(wire::CONTENT_TYPE, cmd.format.content_type());
        h.insert(wire::ENTITY, cmd.entity_id.as_str());
        h.insert(wire::COMMAND, cmd.command.as_str());
        crate::client::with_trace_context(&mut h);
        let shard = tessera_journal::shard_of(&cmd.entity_type, &cmd.entity_id, self.shards);
        let subject = self.link.subjects.entity_command(&cmd.entity_type, shard, self.groups);
        let ack = self
            .link
            .js
            .publish_with_headers(subject, h, cmd.body.into())
            .await
            .map_err(|e| InvokeError::Unavailable(format!("cannot queue the command: {e}")))?;
        ack.await.map_err(|e| InvokeError::Unavailable(format!("JetStream did not store the command: {e}")))?;
        Ok(())
    }

    async fn finished(&self, row: &InvocationResult) {
        let body = rmp_serde::to_vec_named(row).unwrap_or_default();
        let mut h = HeaderMap::new();
        crate::client::with_trace_context(&mut h);
        match self.link.js.publish_with_headers(self.link.subjects.result(&row.invocation_id), h, body.into()).await {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    tracing::warn!(invocation = %row.invocation_id, error = %e, "result not stored in JetStream");
                }
            }
            Err(e) => tracing::warn!(invocation = %row.invocation_id, error = %e, "cannot publish the result"),
        }
    }

    async fn dead_letter(&self, call: &QueuedCall, e: &InvokeError) {
        let mut h = HeaderMap::new();
        h.insert(wire::INVOCATION_ID, call.id.as_str());
        h.insert(wire::CONTENT_TYPE, call.format.content_type());
        h.insert(wire::ERROR, e.to_string().replace(['\r', '\n'], " ").as_str());
        let subject = self.link.subjects.dead_letter(&call.function);
        if let Err(err) = self.link.js.publish_with_headers(subject, h, call.body.clone().into()).await {
            tracing::warn!(invocation = %call.id, error = %err, "cannot dead-letter");
        }
    }
}

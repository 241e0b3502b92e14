//! Forwarding to a shard's owner over NATS: the node core's [`Forwarder`]
//! port, on the same client every caller uses ([`NatsClient`]: retries with
//! backoff while the shard moves).

use tessera_entities::Format;

use crate::client::{ClientError, NatsClient};
use crate::error::InvokeError;
use crate::node::{Forwarder, Invocation};
use crate::shard::{CommandReply, StateView};

/// Forwards over NATS, asking for MessagePack replies.
pub(crate) struct NatsForwarder {
    client: NatsClient,
}

impl NatsForwarder {
    pub(crate) fn new(client: NatsClient) -> Self {
        Self { client }
    }
}

fn owner_error(e: ClientError) -> InvokeError {
    match e {
        ClientError::Status { status, body } => InvokeError::from_body(status, &body),
        ClientError::NoResponders { subject } => {
            InvokeError::ShardMoved(format!("no node took the shard ({subject}) in time; retry"))
        }
        ClientError::Timeout { timeout, .. } => InvokeError::Timeout(format!(
            "the owning node did not answer within {} ms; the outcome is unknown, retry with the same idempotency key",
            timeout.as_millis()
        )),
        e => InvokeError::Unavailable(format!("cannot reach the owning node: {e}")),
    }
}

#[async_trait::async_trait]
impl Forwarder for NatsForwarder {
    fn reachable(&self) -> bool {
        self.client.nats().connection_state() == async_nats::connection::State::Connected
    }

    async fn command(&self, inv: Invocation) -> Result<CommandReply, InvokeError> {
        let reply = self
            .client
            .send(&inv.entity_type, &inv.entity_id, &inv.command, inv.body, inv.format, inv.idempotency_key.as_deref())
            .await
            .map_err(owner_error)?;
        Ok(CommandReply {
            reply: reply.body,
            seq: reply.seq.unwrap_or_default(),
            invocation_id: reply.invocation_id.unwrap_or_default(),
            deduplicated: reply.deduplicated,
        })
    }

    async fn function(
        &self,
        name: &str,
        body: Vec<u8>,
        format: Format,
        invocation_id: &str,
    ) -> Result<Option<Vec<u8>>, InvokeError> {
        match self.client.call_as(name, body, format, Some(invocation_id)).await {
            Ok(reply) => Ok(Some(reply.body)),
            Err(ClientError::NoResponders { .. }) => Ok(None),
            Err(ClientError::Status { status, body }) => Err(InvokeError::from_body(status, &body)),
            Err(ClientError::Timeout { timeout, .. }) => Err(InvokeError::Timeout(format!(
                "function `{name}`: no answer from a functions node within {} ms",
                timeout.as_millis()
            ))),
            Err(e) => Err(InvokeError::Unavailable(format!("cannot reach a functions node: {e}"))),
        }
    }

    async fn state(&self, entity_type: &str, entity_id: &str) -> Result<StateView, InvokeError> {
        let view = self.client.state(entity_type, entity_id).await.map_err(owner_error)?;
        let timers = view.timers.iter().filter_map(crate::flow::PendingTimer::from_json).collect();
        Ok(StateView { state: view.state, seq: view.seq, timers })
    }
}

//! The node's side of messages, timers and calls: it delivers what the
//! dispatcher asks for (through its own routing: a local shard actor or the
//! owner over NATS) and shows an entity's outbox.

use std::sync::Weak;

use futures::{StreamExt, TryStreamExt};
use tessera_entities::{CommandCall, EntityRef, Format};
use tessera_journal::EntityKey;
use tracing::Instrument;

use super::{InFlight, Invocation, Node, NodeInner};
use crate::error::InvokeError;
use crate::flow::{DISPATCHER, Deliver, DispatcherState, PendingTimer};
use crate::projection::{Checkpoints, FeedEvent};
use crate::shard::{CommandRequest, ShardMsg, TimerFire};

/// Most feed events read to find an entity's undelivered messages.
const OUTBOX_SCAN: usize = 2_000;

/// The node as the dispatcher's [`Deliver`] (weak: the node owns the dispatcher).
pub(crate) struct NodeDeliver(pub(crate) Weak<NodeInner>);

impl NodeDeliver {
    fn node(&self) -> Result<Node, InvokeError> {
        self.0.upgrade().map(|inner| Node { inner }).ok_or_else(|| InvokeError::Unavailable("node stopped".into()))
    }
}

#[async_trait::async_trait]
impl Deliver for NodeDeliver {
    async fn command(&self, target: &EntityRef, command: &CommandCall, key: String) -> Result<Vec<u8>, InvokeError> {
        let inv = Invocation {
            entity_type: target.entity_type.clone(),
            entity_id: target.id.clone(),
            command: command.name.clone(),
            body: command.payload.clone(),
            format: Format::MsgPack,
            idempotency_key: Some(key),
        };
        self.node()?.invoke(inv).await.map(|r| r.reply)
    }

    async fn fire(&self, entity: &EntityRef, timer: &PendingTimer) -> Result<(), InvokeError> {
        self.node()?.fire_timer(entity, timer).await
    }

    async fn function(&self, name: &str, input: &[u8], key: String) -> Result<Vec<u8>, InvokeError> {
        self.node()?.call_function_as(name, input, Format::MsgPack, key).await
    }
}

/// An entity's outbox as the HTTP API shows it.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Sends and calls committed and not delivered yet (`{seq, record}`).
    pub undelivered: Vec<serde_json::Value>,
    /// Its dead letters (the last of its unit).
    pub dead_letters: Vec<serde_json::Value>,
}

impl Node {
    /// Delivers a due timer to its entity on this node (which owns the
    /// entity's unit); the entity runs its command if the timer is still
    /// pending, and records that it fired.
    pub(crate) async fn fire_timer(&self, entity: &EntityRef, timer: &PendingTimer) -> Result<(), InvokeError> {
        let n = &self.inner;
        let shard = tessera_journal::shard_of(&entity.entity_type, &entity.id, n.config.journal.shards);
        if let Some(o) = &n.ownership
            && !o.accepting(&entity.entity_type, shard)
        {
            return Err(InvokeError::ShardMoved(format!("{entity}: this node no longer serves its shard")));
        }
        if timer.id == crate::flow::PURGE_TIMER {
            return self.purge_entity(entity, timer.seq).await;
        }
        let e = n
            .registry
            .entity(&entity.entity_type)
            .ok_or_else(|| InvokeError::UnknownEntityType(entity.entity_type.clone()))?;
        let command = e.decode_command(&timer.command.name, &timer.command.payload, Format::MsgPack)?;
        let _in_flight = InFlight::enter(n)?;
        let key = EntityKey::new(entity.entity_type.clone(), entity.id.clone());
        let invocation_id = crate::flow::delivery_key(entity, timer.seq, ":fired");
        let span = crate::telemetry::invocation_span!(
            "timer",
            entity = %entity,
            timer = %timer.id,
            invocation_id = %invocation_id
        );
        let fire = Some(TimerFire { id: timer.id.clone(), seq: timer.seq });
        let inner = span.clone();
        self.ask_shard(key, |key, reply| {
            let (entity, span) = (e.clone(), inner);
            ShardMsg::Command(CommandRequest {
                key,
                entity,
                command,
                retryable: true,
                invocation_id,
                timer: fire,
                span,
                reply,
            })
        })
        .instrument(span)
        .await
        .map(|_| ())
    }

    /// What `entity` committed that is not delivered yet, and its dead
    /// letters, as the dispatcher's checkpoint and the feed show them.
    pub async fn outbox(&self, entity_type: &str, entity_id: &str) -> Result<Outbox, InvokeError> {
        let n = &self.inner;
        n.registry.entity(entity_type).ok_or_else(|| InvokeError::UnknownEntityType(entity_type.into()))?;
        let shard = tessera_journal::shard_of(entity_type, entity_id, n.config.journal.shards);
        let stored = Checkpoints::new(n.journal.clone()).load(DISPATCHER, entity_type, shard).await?;
        let state = DispatcherState::decode(stored.checkpoint.state.as_deref()).unwrap_or_default();
        let from = format!("{entity_type}/{entity_id}");
        let dead_letters =
            state.dead.iter().filter(|d| d.from == from).map(|d| serde_json::to_value(d).unwrap_or_default()).collect();
        // Where it runs here, the dispatcher is ahead of what it stored.
        let running = n.projections.running(DISPATCHER);
        let here = running.iter().find(|u| u.entity_type == entity_type && u.shard == shard).map(|u| u.checkpoint);
        let after = stored.checkpoint.offset.max(here.unwrap_or_default());
        let events: Vec<FeedEvent> = n
            .journal
            .events_by_shard(entity_type, shard, after)
            .take(OUTBOX_SCAN)
            .map_ok(|e| FeedEvent::from_shard_event(e, shard))
            .try_collect()
            .await?;
        let undelivered = crate::flow::undelivered_of(&events, after, entity_id);
        Ok(Outbox { undelivered, dead_letters })
    }
}

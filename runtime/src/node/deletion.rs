//! Deleting entities: a tombstone now, a purge of the journal when the
//! grace period ends, and the state TTL per entity type that deletes
//! entities nobody wrote to for that long.
//!
//! A delete is an invocation like a command (the reserved command
//! [`DELETE_COMMAND`]), so it is routed and forwarded to the entity's
//! owner the same way and ordered with the entity's commands. The owner
//! appends a tombstone (`tessera.deleted`) whose purge timer is kept by
//! the dispatcher like any timer: it fires on whichever node owns the
//! shard then, across restarts and moves. Until then the entity's
//! commands and reads answer 404 `entity_deleted`; its events stay
//! readable by the admin API for inspection. The purge removes every row
//! of the entity ([`tessera_journal::Journal::purge`]); afterwards the id
//! starts afresh, as an id never written does.

use std::time::Duration;

use futures::TryStreamExt;
use tessera_entities::{EntityRef, Format, codec};
use tessera_journal::EntityKey;

use super::{InFlight, Invocation, Node};
use crate::error::InvokeError;
use crate::flow::DeleteOutcome;
use crate::shard::{CommandReply, DeleteRequest, PurgeRequest, ShardMsg};

/// The reserved command name of a delete (refused from clients over HTTP;
/// over NATS it is how nodes forward a delete to the owner).
pub const DELETE_COMMAND: &str = "tessera.delete";

/// Why an entity is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// `DELETE /v1/entities/{type}/{id}`.
    Api,
    /// The entity type's state TTL passed since its last write.
    Ttl,
}

impl DeleteReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Ttl => "ttl",
        }
    }
}

impl Node {
    /// Deletes an entity: its tombstone is durable when this returns (on
    /// the owner, wherever that is); its journal is purged when the
    /// configured grace period (`limits.delete_grace_secs`) ends. Deleting
    /// a deleted entity answers the first delete's outcome; an entity
    /// never written is `entity_not_found`.
    pub async fn delete_entity(
        &self,
        entity_type: &str,
        entity_id: &str,
        reason: DeleteReason,
    ) -> Result<DeleteOutcome, InvokeError> {
        let body = codec::to_msgpack(reason.as_str()).map_err(|e| InvokeError::Internal(e.to_string()))?;
        let inv = Invocation {
            entity_type: entity_type.into(),
            entity_id: entity_id.into(),
            command: DELETE_COMMAND.into(),
            body,
            format: Format::MsgPack,
            idempotency_key: None,
        };
        let reply = self.invoke(inv).await?;
        codec::from_msgpack(&reply.reply).map_err(|e| InvokeError::Internal(format!("delete outcome: {e}")))
    }

    /// The owner's side of a delete: the shard actor appends the tombstone.
    pub(super) async fn delete_here(
        &self,
        key: EntityKey,
        inv: &Invocation,
        invocation_id: String,
        span: tracing::Span,
    ) -> Result<CommandReply, InvokeError> {
        let n = &self.inner;
        let entity = self.entity_type(&key.entity_type)?;
        let reason: String = codec::decode(&inv.body, inv.format).unwrap_or_else(|_| "api".into());
        let reason = if reason == "ttl" { DeleteReason::Ttl } else { DeleteReason::Api };
        let _in_flight = InFlight::enter(n)?;
        let grace = Duration::from_secs(n.config.limits.delete_grace_secs);
        let reply = self
            .ask_shard(key, |key, reply| {
                let (entity, reason) = (entity.clone(), reason.as_str().into());
                ShardMsg::Delete(DeleteRequest { key, entity, invocation_id, grace, reason, span, reply })
            })
            .await?;
        if !reply.deduplicated {
            n.metrics.deletions.with_label_values(&[reason.as_str()]).inc();
        }
        Ok(reply)
    }

    /// A deleted entity's purge timer fired (on this node, which owns its
    /// unit): purge its journal if the tombstone at `seq` is still its last event.
    pub(crate) async fn purge_entity(&self, entity: &EntityRef, seq: u64) -> Result<(), InvokeError> {
        let e = self.entity_type(&entity.entity_type)?;
        let key = EntityKey::new(entity.entity_type.clone(), entity.id.clone());
        self.ask_shard(key, |key, reply| ShardMsg::Purge(PurgeRequest { key, entity: e.clone(), seq, reply }))
            .await
            .map(|_| ())
    }

    /// One sweep of the state TTL of `entity_type`: deletes (reason `ttl`)
    /// each entity served here whose last write is older than `ttl`.
    /// Returns how many it deleted.
    pub async fn sweep_ttl(&self, entity_type: &str, ttl: Duration) -> Result<usize, InvokeError> {
        let n = &self.inner;
        let cutoff = crate::now_ms().saturating_sub(ttl.as_millis().min(i64::MAX as u128) as i64);
        let shards = n.config.journal.shards;
        let mut list = n.journal.entities(entity_type);
        let mut deleted = 0;
        while let Some(info) = list.try_next().await? {
            let shard = tessera_journal::shard_of(entity_type, &info.entity_id, shards);
            if n.ownership.as_ref().is_some_and(|o| !o.accepting(entity_type, shard)) {
                continue; // its owner sweeps it
            }
            let key = EntityKey::new(entity_type, info.entity_id.clone());
            let last: Vec<_> = n.journal.read(&key, info.last_seq..=info.last_seq).try_collect().await?;
            let Some(last) = last.first() else { continue };
            if last.type_name == crate::flow::DELETED || last.timestamp_ms >= cutoff {
                continue;
            }
            match self.delete_entity(entity_type, &info.entity_id, DeleteReason::Ttl).await {
                Ok(_) => deleted += 1,
                Err(e) => {
                    tracing::warn!(entity = %key, error = %e, "state TTL: delete failed; tried on the next sweep")
                }
            }
        }
        Ok(deleted)
    }
}

//! Purging an entity: every row the keyspace holds of it.
//!
//! Order matters for a purge cut short by a crash: derived rows go first
//! (feed entries become voids naming no entity, their intents, the entity
//! index, the idempotency keys, the snapshot), the event partitions last
//! and in one logged batch, so an entity is either still there with its
//! tombstone (the runtime purges it again) or gone whole.

use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;

use super::ScyllaJournal;
use super::rows::Named;
use super::session::unavailable;
use crate::error::JournalError;
use crate::types::EntityKey;

impl ScyllaJournal {
    pub(crate) async fn purge_inner(&self, key: &EntityKey) -> Result<(), JournalError> {
        let (head, _) = self.head(key).await?;
        let shard = key.shard(self.inner.shards);
        self.scrub_feed_of(key, shard).await?;
        let st = &self.inner.st;
        let entity = || Named::new().text("entity_type", &key.entity_type).text("entity_id", &key.entity_id);
        let s = &self.inner.session;
        s.execute_unpaged(&st.purge_index, entity().with("shard", CqlValue::Int(shard as i32)))
            .await
            .map_err(unavailable)?;
        s.execute_unpaged(&st.purge_keys, entity()).await.map_err(unavailable)?;
        s.execute_unpaged(&st.purge_snapshot, entity()).await.map_err(unavailable)?;
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(self.inner.config.consistency);
        batch.set_request_timeout(Some(self.inner.config.timeout));
        let mut values = Vec::new();
        for b in 0..=head {
            batch.append_statement(st.purge_partition.clone());
            values.push(Named::partition(&key.entity_type, &key.entity_id, b));
        }
        s.batch(&batch, values).await.map_err(unavailable)?;
        self.inner.heads.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        Ok(())
    }
}

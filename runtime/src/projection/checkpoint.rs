//! Checkpoints of projections, kept in the journal: one internal entity per
//! (projection, unit), `tessera.projection/{name}/{type}/{shard}`, whose
//! last event is the checkpoint (the offset handled up to, and the state a
//! projection keeps with it). Each checkpoint is an append conditional on
//! the one it was computed from, so of two nodes that both think they run
//! a unit (a move in progress) only one advances it at a time, and a
//! projection's state always matches its offset. Older checkpoint events
//! are deleted as new ones land.

use std::sync::Arc;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tessera_journal::{AppendError, EntityKey, Journal, JournalError, NewEvent};

/// The entity type of checkpoints in the journal.
pub const CHECKPOINT_TYPE: &str = "tessera.projection";

/// Keep this many checkpoint events of a unit before trimming.
const KEEP: u64 = 32;

/// Where a projection stands in one unit's feed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every event up to this offset was handled.
    pub offset: u64,
    /// The state kept with it.
    #[serde(default)]
    pub state: Option<Vec<u8>>,
    /// When it was written, ms since the Unix epoch.
    #[serde(default)]
    pub written_ms: i64,
    /// Written by a rewind or reset (not by the projection).
    #[serde(default)]
    pub rewound: bool,
}

/// A checkpoint as read, with the seq it is at (the next write expects it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stored {
    /// The checkpoint (the default when none was written).
    pub checkpoint: Checkpoint,
    /// Its seq in the checkpoint entity's journal (0: none yet).
    pub seq: u64,
}

/// Reads and writes checkpoints in a journal.
#[derive(Clone)]
pub struct Checkpoints {
    journal: Arc<dyn Journal>,
}

/// The checkpoint entity of (projection, unit).
pub(crate) fn key(projection: &str, entity_type: &str, shard: u32) -> EntityKey {
    EntityKey::new(CHECKPOINT_TYPE, format!("{projection}/{entity_type}/{shard}"))
}

/// (projection, entity type, shard) of a checkpoint entity id.
pub(crate) fn parse_key(id: &str) -> Option<(String, String, u32)> {
    let (rest, shard) = id.rsplit_once('/')?;
    let (name, ty) = rest.rsplit_once('/')?;
    Some((name.to_owned(), ty.to_owned(), shard.parse().ok()?))
}

impl Checkpoints {
    /// Checkpoints kept in `journal`.
    pub fn new(journal: Arc<dyn Journal>) -> Self {
        Self { journal }
    }

    /// The checkpoint of (projection, unit).
    pub async fn load(&self, projection: &str, entity_type: &str, shard: u32) -> Result<Stored, JournalError> {
        let key = key(projection, entity_type, shard);
        let seq = self.journal.last_seq(&key).await?;
        if seq == 0 {
            return Ok(Stored::default());
        }
        let events: Vec<_> = self.journal.read(&key, seq..=seq).try_collect().await?;
        let Some(e) = events.first() else {
            return Err(JournalError::Invalid(format!("{key}: checkpoint at seq {seq} is missing")));
        };
        let checkpoint = tessera_entities::codec::from_msgpack(&e.payload)
            .map_err(|err| JournalError::Invalid(format!("{key}: checkpoint does not decode: {err}")))?;
        Ok(Stored { checkpoint, seq })
    }

    /// Writes `next` after `prev` (conflicts when another writer moved it).
    pub async fn store(
        &self,
        projection: &str,
        entity_type: &str,
        shard: u32,
        prev: u64,
        next: &Checkpoint,
    ) -> Result<u64, AppendError> {
        let key = key(projection, entity_type, shard);
        let payload = rmp_serde::to_vec_named(next).map_err(|e| JournalError::Invalid(e.to_string()))?;
        let event = NewEvent { type_name: "checkpoint".into(), version: 1, payload, metadata: Vec::new() };
        let ack = self.journal.append(&key, prev, vec![event]).await?;
        if ack.last_seq > KEEP && ack.last_seq % KEEP == 0 {
            let (journal, to) = (self.journal.clone(), ack.last_seq - 1);
            tokio::spawn(async move {
                if let Err(e) = journal.delete_to(&key, to).await {
                    tracing::debug!(entity = %key, error = %e, "old checkpoints not trimmed");
                }
            });
        }
        Ok(ack.last_seq)
    }

    /// Removes the checkpoints stored before `seq` (the current one stays):
    /// state they held is gone from the journal.
    pub async fn trim(&self, projection: &str, entity_type: &str, shard: u32, seq: u64) -> Result<(), JournalError> {
        if seq <= 1 {
            return Ok(());
        }
        self.journal.delete_to(&key(projection, entity_type, shard), seq - 1).await
    }

    /// Every checkpoint in the journal: (projection, entity type, shard).
    pub async fn list(&self) -> Result<Vec<(String, String, u32)>, JournalError> {
        let ids: Vec<_> = self.journal.entities(CHECKPOINT_TYPE).try_collect().await?;
        Ok(ids.into_iter().filter_map(|e| parse_key(&e.entity_id)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_key_names_its_projection_type_and_shard() {
        let k = key("counts", "stock", 17);
        assert_eq!(k.entity_type, CHECKPOINT_TYPE);
        assert!(CHECKPOINT_TYPE.starts_with(tessera_journal::INTERNAL_TYPE_PREFIX), "no feed of its own on Scylla");
        assert_eq!(parse_key(&k.entity_id), Some(("counts".into(), "stock".into(), 17)));
    }

    #[tokio::test]
    async fn a_checkpoint_written_from_a_stale_one_conflicts() {
        let c = Checkpoints::new(Arc::new(tessera_journal::MemoryJournal::new(16)));
        let first = Checkpoint { offset: 5, ..Default::default() };
        let seq = c.store("p", "t", 1, 0, &first).await.unwrap();
        let stale = c.store("p", "t", 1, 0, &Checkpoint { offset: 9, ..Default::default() }).await;
        assert!(matches!(stale, Err(AppendError::Conflict { .. })), "{stale:?}");
        let read = c.load("p", "t", 1).await.unwrap();
        assert_eq!((read.checkpoint.offset, read.seq), (5, seq));
    }
}

//! Reading: an entity's head (walking its partitions), its events page by
//! page across partitions, snapshots, deletion and the entity index.

use std::ops::RangeInclusive;

use futures::{StreamExt, TryStreamExt};
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::bucket::bucket_of;
use super::rows::{EventRow, Named, Statics, to_event};
use super::session::unavailable;
use super::{PAGE, ScyllaJournal};
use crate::error::JournalError;
use crate::journal::{EntityStream, EventStream};
use crate::paging::paged;
use crate::types::{EntityInfo, EntityKey, PersistedEvent, Snapshot};

impl ScyllaJournal {
    /// Runs a prepared read and returns its rows.
    pub(crate) async fn rows<T>(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<T>, JournalError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let r = self.inner.session.execute_unpaged(stmt, values).await.map_err(unavailable)?;
        let rows = r.into_rows_result().map_err(unavailable)?;
        rows.rows::<T>().map_err(unavailable)?.collect::<Result<_, _>>().map_err(unavailable)
    }

    /// Runs a prepared read and returns its first row, if any.
    pub(crate) async fn first_row<T>(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<T>, JournalError>
    where
        T: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let r = self.inner.session.execute_unpaged(stmt, values).await.map_err(unavailable)?;
        r.into_rows_result().map_err(unavailable)?.maybe_first_row::<T>().map_err(unavailable)
    }

    fn pk(key: &EntityKey, bucket: u64) -> Named {
        Named::partition(&key.entity_type, &key.entity_id, bucket)
    }

    /// One partition's statics: `None` when it does not exist.
    async fn statics_of(&self, key: &EntityKey, bucket: u64) -> Result<Option<Statics>, JournalError> {
        let row: Option<(Option<i64>, Option<i64>, Option<i64>)> =
            self.first_row(&self.inner.st.statics_of, Self::pk(key, bucket)).await?;
        Ok(row.map(|(last_seq, sealed, fence)| Statics { last_seq, sealed, fence }))
    }

    /// The head partition of an entity (the last one that exists; 0 when
    /// none does) and its statics (`None`: the entity has no partition).
    pub(crate) async fn head_statics(&self, key: &EntityKey) -> Result<(u64, Option<Statics>), JournalError> {
        let start = self.known_head(key);
        let (mut b, mut found, mut head) = (start, start, None);
        while let Some(st) = self.statics_of(key, b).await? {
            if st.last_seq.is_none() {
                break;
            }
            found = b;
            head = Some(st);
            if st.sealed.is_none() {
                break;
            }
            b += 1;
        }
        if found != start {
            self.learn_head(key, found);
        }
        Ok((found, head))
    }

    /// The head partition and last seq of an entity.
    pub(crate) async fn head(&self, key: &EntityKey) -> Result<(u64, u64), JournalError> {
        let (b, st) = self.head_statics(key).await?;
        Ok((b, st.map_or(0, |s| s.last())))
    }

    async fn load_page(
        &self,
        key: &EntityKey,
        bucket: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<PersistedEvent>, JournalError> {
        let v = Self::pk(key, bucket).big("from_seq", from as i64).big("to_seq", to.min(i64::MAX as u64) as i64);
        let r = self.inner.session.execute_unpaged(&self.inner.st.read, v).await.map_err(unavailable)?;
        let rows = r.into_rows_result().map_err(unavailable)?;
        let typed = rows.rows::<EventRow>().map_err(unavailable)?;
        let mut out = Vec::new();
        for row in typed {
            let row =
                row.map_err(|e| JournalError::Corrupt { entity: key.to_string(), seq: 0, detail: e.to_string() })?;
            out.push(to_event(key, row)?);
        }
        Ok(out)
    }

    /// Events in `range`, walking partitions from the one before `from`'s to the head.
    pub(crate) fn read_events(&self, entity: &EntityKey, range: RangeInclusive<u64>) -> EventStream {
        let me = self.clone();
        let key = entity.clone();
        let (from, to) = (*range.start(), *range.end());
        let b = self.inner.bucket;
        let first_bucket = bucket_of(from.max(1), b).saturating_sub(1);
        // Cursor: (bucket, next seq, last bucket to read — learnt on the first page).
        paged((first_bucket, from.max(1), None::<u64>), move |(bucket, next, last): (u64, u64, Option<u64>)| {
            let (me, key) = (me.clone(), key.clone());
            async move {
                let last = match last {
                    Some(l) => l,
                    None => me.head(&key).await?.0.min(bucket_of(to, b)),
                };
                if next > to || bucket > last {
                    return Ok((Vec::new(), None));
                }
                let page = me.load_page(&key, bucket, next, to).await?;
                let cursor = if page.len() == PAGE {
                    page.last().map(|e| (bucket, e.seq + 1, Some(last)))
                } else {
                    Some((bucket + 1, page.last().map_or(next, |e| e.seq + 1), Some(last)))
                };
                Ok((page, cursor))
            }
        })
        .boxed()
    }

    pub(crate) async fn save_snapshot_inner(&self, entity: &EntityKey, s: Snapshot) -> Result<(), JournalError> {
        let last = self.head(entity).await?.1;
        if s.seq > last {
            return Err(JournalError::Invalid(format!("snapshot seq {} is past last seq {last}", s.seq)));
        }
        let v = Named::new()
            .text("entity_type", &entity.entity_type)
            .text("entity_id", &entity.entity_id)
            .big("seq", s.seq as i64)
            .with("version", CqlValue::Int(s.version as i32))
            .big("ts", s.timestamp_ms)
            .with("payload", CqlValue::Blob(s.payload));
        self.inner.session.execute_unpaged(&self.inner.st.save_snapshot, v).await.map_err(unavailable)?;
        Ok(())
    }

    /// The newest snapshot: the snapshots table's, or one written with an
    /// append into a partition's statics, whichever is later.
    pub(crate) async fn load_snapshot_inner(&self, entity: &EntityKey) -> Result<Option<Snapshot>, JournalError> {
        let key = Named::new().text("entity_type", &entity.entity_type).text("entity_id", &entity.entity_id);
        let mut best = self.first_row::<(i64, i32, i64, Vec<u8>)>(&self.inner.st.load_snapshot, key).await?.map(
            |(seq, version, ts, payload)| Snapshot {
                seq: seq as u64,
                version: version as u32,
                timestamp_ms: ts,
                payload,
            },
        );
        let (head, _) = self.head(entity).await?;
        for b in 0..=head {
            if let Some((Some(seq), Some(version), Some(ts), Some(payload))) = self
                .first_row::<(Option<i64>, Option<i32>, Option<i64>, Option<Vec<u8>>)>(
                    &self.inner.st.snap_of,
                    Self::pk(entity, b),
                )
                .await?
                && best.as_ref().is_none_or(|s| s.seq < seq as u64)
            {
                best = Some(Snapshot { seq: seq as u64, version: version as u32, timestamp_ms: ts, payload });
            }
        }
        Ok(best)
    }

    pub(crate) async fn delete_to_inner(&self, entity: &EntityKey, seq: u64) -> Result<(), JournalError> {
        let (head, last) = self.head(entity).await?;
        let to = seq.min(last);
        if to == 0 {
            return Ok(());
        }
        for b in 0..=head.min(bucket_of(to, self.inner.bucket)) {
            let v = Self::pk(entity, b).big("to_seq", to as i64);
            self.inner.session.execute_unpaged(&self.inner.st.delete_to, v).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Records a new entity in the entity index (derived, written after its first commit).
    pub(crate) async fn index_entity(&self, entity: &EntityKey, shard: i32) {
        let v = Named::new()
            .text("entity_type", &entity.entity_type)
            .with("shard", CqlValue::Int(shard))
            .text("entity_id", &entity.entity_id);
        super::counts::Counters::bump(&self.inner.counts.index_rows);
        if let Err(e) = self.inner.session.execute_unpaged(&self.inner.st.index_insert, v).await {
            tracing::warn!(%entity, error = %e, "entity committed but not added to the entity index");
        }
    }

    pub(crate) fn list_entities(&self, entity_type: &str) -> EntityStream {
        let me = self.clone();
        let entity_type = entity_type.to_owned();
        let list = async move {
            let ids: Vec<Vec<String>> = futures::stream::iter(0..me.inner.shards)
                .map(|shard| {
                    let (me, t) = (me.clone(), entity_type.clone());
                    async move {
                        let v = Named::new().text("entity_type", &t).with("shard", CqlValue::Int(shard as i32));
                        let rows: Vec<(String,)> = me.rows(&me.inner.st.index_read, v).await?;
                        Ok::<_, JournalError>(rows.into_iter().map(|(id,)| id).collect::<Vec<_>>())
                    }
                })
                .buffer_unordered(16)
                .try_collect()
                .await?;
            let mut ids: Vec<String> = ids.into_iter().flatten().collect();
            ids.sort();
            ids.dedup();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let last_seq = me.head(&EntityKey::new(entity_type.clone(), id.clone())).await?.1;
                out.push(EntityInfo { entity_id: id, last_seq, deleted_to: 0 });
            }
            Ok::<_, JournalError>(out)
        };
        futures::stream::once(list)
            .map(|r| match r {
                Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).left_stream(),
                Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
            })
            .flatten()
            .boxed()
    }
}

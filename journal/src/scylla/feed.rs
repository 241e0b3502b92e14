//! The per-shard feed `events_by_shard ((shard, hour), offset)`: a derived
//! view written after each commit, with wall-clock offsets (microseconds ×
//! 1000 + a counter). It is best effort today: a failure after the commit
//! is logged, not retried, and offsets are not gapless (see issue 12).

use std::sync::atomic::Ordering;

use futures::StreamExt;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;

use super::rows::Named;
use super::schema::FEED_TTL_SECS;
use super::{PAGE, ScyllaJournal};
use crate::journal::ShardStream;
use crate::memory::now_ms;
use crate::paging::paged;
use crate::types::{EntityKey, ShardEvent};

/// Offsets per hour-partition of the feed.
const HOUR_OFFSETS: u64 = 3600 * 1_000_000 * 1000;

impl ScyllaJournal {
    fn offset(&self) -> u64 {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        micros * 1000 + self.inner.counter.fetch_add(1, Ordering::Relaxed) % 1000
    }

    /// Adds the events `first..first + n` of `entity`, committed in `bucket`, to its shard's feed.
    pub(crate) async fn write_feed(&self, entity: &EntityKey, bucket: u64, first: u64, n: u64) {
        let shard = entity.shard(self.inner.shards) as i32;
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::new();
        for i in 0..n {
            let offset = self.offset();
            batch.append_statement(self.inner.st.feed_insert.clone());
            values.push(
                Named::partition(&entity.entity_type, &entity.entity_id, bucket)
                    .with("shard", CqlValue::Int(shard))
                    .big("hour", (offset / HOUR_OFFSETS) as i64)
                    .big("offset", offset as i64)
                    .big("seq", (first + i) as i64),
            );
        }
        if let Err(e) = self.inner.session.batch(&batch, values).await {
            tracing::warn!(%entity, error = %e, "events committed but not added to the shard feed");
        }
    }

    pub(crate) fn feed(&self, shard: u32, after_offset: u64) -> ShardStream {
        let me = self.clone();
        let now_hour = (now_ms().max(0) as u64 * 1000 * 1000) / HOUR_OFFSETS;
        let oldest = now_hour.saturating_sub(FEED_TTL_SECS as u64 / 3600);
        let start_hour = (after_offset / HOUR_OFFSETS).max(oldest);
        paged((start_hour, after_offset), move |(hour, after): (u64, u64)| {
            let me = me.clone();
            async move {
                if hour > now_hour {
                    return Ok((Vec::new(), None));
                }
                let v = Named::new()
                    .with("shard", CqlValue::Int(shard as i32))
                    .big("hour", hour as i64)
                    .big("after", after as i64);
                let refs: Vec<(i64, String, String, i64, i64)> = me.rows(&me.inner.st.feed_read, v).await?;
                let full = refs.len() == PAGE;
                let mut page = Vec::with_capacity(refs.len());
                let mut last = after;
                for (offset, t, i, bucket, seq) in refs {
                    last = offset as u64;
                    let key = EntityKey::new(t, i);
                    // Deleted since: skip.
                    if let Some(event) = me.read_one(&key, bucket as u64, seq as u64).await? {
                        page.push(ShardEvent { offset: offset as u64, entity: key, event });
                    }
                }
                let next = if full { (hour, last) } else { (hour + 1, last) };
                Ok((page, Some(next)))
            }
        })
        .boxed()
    }
}

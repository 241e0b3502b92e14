//! The owner's side of an append: the intent before it, the offsets and
//! entries after it, the unknown outcome settled, the watermark written.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;
use tokio::sync::watch;

use super::super::ScyllaJournal;
use super::super::counts::Counters;
use super::super::rows::{Named, lwt_outcome};
use super::super::session::unavailable;
use super::{Intent, MAX_PENDING, Unit, UnitFeed, block};
use crate::error::JournalError;
use crate::memory::now_ms;
use crate::types::EntityKey;

impl ScyllaJournal {
    /// Waits while the entity's previous append has an outcome still being
    /// settled (so its events, if committed, are numbered first).
    pub(crate) async fn wait_settled(&self, feed: &UnitFeed, key: &EntityKey) -> Result<(), JournalError> {
        let rx = feed.unsettled.lock().unwrap_or_else(|p| p.into_inner()).get(&key.entity_id).cloned();
        let Some(mut rx) = rx else { return Ok(()) };
        match tokio::time::timeout(self.inner.config.timeout, rx.wait_for(|done| *done)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(JournalError::Unavailable(format!(
                "scylla: the outcome of {key}'s previous append is not settled yet (the database does not answer)"
            ))),
        }
    }

    /// Records an intent for an append of `key`'s events into `bucket` from
    /// `first_seq` (`records`: per event, whether it is one of the
    /// runtime's records), before the append is sent.
    pub(crate) async fn intend(
        &self,
        feed: &UnitFeed,
        key: &EntityKey,
        bucket: u64,
        first_seq: u64,
        records: Vec<bool>,
    ) -> Result<Intent, JournalError> {
        let n = records.len() as u64;
        let id = loop {
            {
                let mut st = feed.offsets();
                if st.intents.len() < MAX_PENDING {
                    break st.open_intent();
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let v = Self::unit_pk(&feed.unit)
            .big("epoch", feed.epoch as i64)
            .big("block", block(id))
            .big("id", id as i64)
            .text("entity_id", &key.entity_id)
            .big("bucket", bucket as i64)
            .big("first_seq", first_seq as i64)
            .with("n", CqlValue::Int(n as i32))
            .with("ttl", CqlValue::Int(self.ttl()));
        Counters::bump(&self.inner.counts.intents);
        if let Err(e) = self.inner.session.execute_unpaged(&self.inner.st.intent_put, v).await {
            // The append is not sent: whether or not the row landed, no
            // event carries this id, so it is decided (nothing committed).
            feed.offsets().drop_intent(id);
            return Err(unavailable(e));
        }
        Ok(Intent { id, entity_id: key.entity_id.clone(), bucket, first_seq, n, records: Some(records) })
    }

    /// The intent's append was refused: it takes no offsets.
    pub(crate) fn refused(&self, feed: &UnitFeed, intent: &Intent) {
        feed.offsets().drop_intent(intent.id);
    }

    /// The intent's append committed: it takes the unit's next offsets now
    /// (commit order), and its entries are written in the background.
    /// Waits for a slot among the entry writes in flight (backpressure on
    /// the appends).
    pub(crate) async fn committed(&self, feed: &Arc<UnitFeed>, intent: Intent) {
        let first = feed.offsets().number(intent.id, intent.n);
        let slot = self.inner.entry_writes.clone().acquire_owned().await.ok();
        let (me, feed) = (self.clone(), feed.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut wait = Duration::from_millis(50);
            loop {
                match me.write_entries(&feed.unit, feed.epoch, first, &intent, Some(intent.id)).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(unit = ?feed.unit, error = %e, "cannot write feed entries; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
            crate::fault::point("scylla.after_entries");
            me.resolved(&feed, first, intent.n);
        });
    }

    /// Writes the feed entries of `intent`'s events at `first..` under `epoch`.
    pub(crate) async fn write_entries(
        &self,
        unit: &Unit,
        epoch: u64,
        first: u64,
        intent: &Intent,
        id: Option<u64>,
    ) -> Result<(), JournalError> {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(intent.n as usize);
        let ts = now_ms();
        for i in 0..intent.n {
            let offset = first + i;
            batch.append_statement(self.inner.st.feed_put.clone());
            values.push(
                Self::unit_pk(unit)
                    .big("block", block(offset))
                    .big("offset", offset as i64)
                    .big("epoch", epoch as i64)
                    .text("entity_id", &intent.entity_id)
                    .big("bucket", intent.bucket as i64)
                    .big("seq", (intent.first_seq + i) as i64)
                    .big("ts", ts)
                    .big_or_null("intent", id.map(|id| id as i64))
                    .bool_or_null("record", intent.records.as_ref().and_then(|r| r.get(i as usize).copied()))
                    .with("ttl", CqlValue::Int(self.ttl())),
            );
        }
        Counters::bump(&self.inner.counts.entry_batches);
        self.inner.session.batch(&batch, values).await.map_err(unavailable)?;
        Ok(())
    }

    /// Whether the append of `intent` committed: its first event row carries
    /// the intent's id. Read at serial consistency, so an unfinished round
    /// is finished or superseded first and cannot commit afterwards.
    pub(crate) async fn intent_committed(&self, unit: &Unit, intent: &Intent) -> Result<bool, JournalError> {
        let v = Named::partition(&unit.0, &intent.entity_id, intent.bucket).big("seq", intent.first_seq as i64);
        let row: Option<(Option<i64>,)> = self.first_row(&self.inner.st.event_intent_serial, v).await?;
        Ok(row.and_then(|(i,)| i) == Some(intent.id as i64))
    }

    /// The append's outcome is unknown (the driver timed out): settled by a
    /// serial read in the background; the entity's next append waits.
    pub(crate) fn settle_unknown(&self, feed: Arc<UnitFeed>, intent: Intent) {
        let (tx, rx) = watch::channel(false);
        feed.unsettled.lock().unwrap_or_else(|p| p.into_inner()).insert(intent.entity_id.clone(), rx);
        let me = self.clone();
        tokio::spawn(async move {
            let committed = loop {
                match me.intent_committed(&feed.unit, &intent).await {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            };
            let entity_id = intent.entity_id.clone();
            if committed {
                me.committed(&feed, intent).await;
            } else {
                me.refused(&feed, &intent);
            }
            feed.unsettled.lock().unwrap_or_else(|p| p.into_inner()).remove(&entity_id);
            let _ = tx.send(true);
        });
    }

    /// Entries `first..first + n` are durable: move the watermark.
    pub(crate) fn resolved(&self, feed: &Arc<UnitFeed>, first: u64, n: u64) {
        let advanced = feed.offsets().resolve(first, n);
        if advanced && !feed.flushing.swap(true, Ordering::AcqRel) {
            let (me, feed) = (self.clone(), feed.clone());
            tokio::spawn(async move { me.flush_watermark(feed).await });
        }
    }

    /// Writes a segment's watermark and floor while nobody closed it.
    pub(super) async fn write_watermark(
        &self,
        unit: &Unit,
        epoch: u64,
        w: u64,
        floor: u64,
        floor_offset: u64,
    ) -> Result<bool, JournalError> {
        let v = Self::unit_pk(unit)
            .big("epoch", epoch as i64)
            .big("watermark", w as i64)
            .big("intent_floor", floor as i64)
            .big("floor_offset", floor_offset as i64);
        Counters::bump(&self.inner.counts.watermarks);
        let r = self.inner.session.execute_unpaged(&self.inner.st.segment_watermark, v).await.map_err(unavailable)?;
        Ok(lwt_outcome(r)?.0)
    }

    /// Writes the unit's watermark (with the intent floor) until it stops
    /// moving, or until a successor closed the segment.
    async fn flush_watermark(&self, feed: Arc<UnitFeed>) {
        loop {
            let (w, floor, floor_offset) = {
                let mut st = feed.offsets();
                let w = st.watermark;
                let (f, fo) = st.floor(w);
                (w, f, fo)
            };
            match self.write_watermark(&feed.unit, feed.epoch, w, floor, floor_offset).await {
                Ok(true) => {}
                Ok(false) => {
                    // A successor closed the segment: what is not below the
                    // watermark now, it numbers.
                    tracing::info!(unit = ?feed.unit, epoch = feed.epoch, "feed segment closed by a successor");
                    return;
                }
                Err(e) => {
                    tracing::warn!(unit = ?feed.unit, error = %e, "cannot write the feed watermark; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            crate::fault::point("scylla.after_watermark");
            let now = feed.offsets().watermark;
            if now == w {
                feed.flushing.store(false, Ordering::Release);
                // A resolve between the read and the store would have seen
                // `flushing` set: look once more.
                let again = feed.offsets().watermark;
                if again == w || feed.flushing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    }
}

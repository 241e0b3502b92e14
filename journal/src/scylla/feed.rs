//! The feed of each (entity type, shard) — the unit a node holds a lease
//! on — with offsets its owner assigns: gapless, per entity in seq order,
//! never visible at or below an offset a reader has seen, across crashes
//! and moves. (The argument is in ARCHITECTURE.md, "The shard feed".)
//!
//! - An append takes the next offsets of its unit and writes the feed
//!   entries first (above the unit's watermark: not visible yet); the event
//!   rows of the conditional append then carry their `feed_offset`.
//! - When the append's outcome is known, its offsets are resolved (a failed
//!   append's entries stay, and readers skip them: their event rows do not
//!   carry those offsets); an outcome the driver could not tell is settled
//!   by a serial read first. The watermark advances over the contiguous
//!   resolved prefix and is written to the unit's segment; readers see
//!   offsets up to it only.
//! - The writer checks its lease (the request's `lease` check) after its
//!   entries are durable and before it sends the conditional append: any
//!   append that is sent has its entry where a successor will find it.
//! - Offsets live in segments, one per owner epoch; entries are keyed by
//!   (offset, epoch), so an old owner that does not know it was replaced
//!   cannot overwrite a successor's entry. Opening a segment seals the
//!   previous one: its entries above its watermark are settled (the
//!   entity's fence raised to the new epoch first, so the old owner's
//!   append cannot land later), holes are filled with voids, and the new
//!   segment starts right after the last of them. Readers take, at each
//!   offset, the entry of the segment that owns it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use scylla::value::CqlValue;
use tokio::sync::OnceCell;

use super::rows::{EventRow, Named, to_event};
use super::schema::FEED_BLOCK;
use super::session::unavailable;
use super::{PAGE, ScyllaJournal};
use crate::error::{AppendError, JournalError};
use crate::journal::ShardStream;
use crate::paging::paged;
use crate::types::{EntityKey, FeedBounds, PersistedEvent, ShardEvent};

/// Most offsets assigned but not yet resolved per unit; an append waits
/// beyond it (and recovery scans this far above a watermark).
pub(crate) const MAX_PENDING: u64 = 4096;

/// A unit: an entity type in a shard.
pub(crate) type Unit = (String, u32);

fn block(offset: u64) -> i64 {
    (offset / FEED_BLOCK) as i64
}

/// One feed row.
#[derive(Debug, Clone)]
struct Entry {
    offset: u64,
    epoch: u64,
    void: bool,
    entity_id: String,
    bucket: u64,
    seq: u64,
}

/// One segment row.
#[derive(Debug, Clone, Copy)]
struct Segment {
    epoch: u64,
    start: u64,
    watermark: u64,
    sealed_end: Option<u64>,
}

/// The owner's state of one unit's feed on this node.
pub(crate) struct UnitFeed {
    unit: Unit,
    epoch: u64,
    state: Mutex<Offsets>,
    flushing: AtomicBool,
}

impl UnitFeed {
    /// The epoch this node writes the unit under.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[derive(Debug, Default)]
struct Offsets {
    /// The last offset assigned.
    last: u64,
    /// Every offset up to here is resolved.
    watermark: u64,
    /// Resolved offsets above the watermark.
    resolved: BTreeSet<u64>,
}

impl Offsets {
    fn resolve(&mut self, first: u64, n: u64) -> bool {
        self.resolved.extend(first..first + n);
        let before = self.watermark;
        while self.resolved.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
        self.watermark != before
    }
}

/// The feed units this node writes, opened on first use per epoch.
#[derive(Default)]
pub(crate) struct Units {
    cells: Mutex<HashMap<Unit, Arc<OnceCell<Arc<UnitFeed>>>>>,
}

/// A `feed_segments` row: epoch, start, watermark, sealed end.
type SegmentRow = (i64, Option<i64>, Option<i64>, Option<i64>);

impl ScyllaJournal {
    fn unit_pk(unit: &Unit) -> Named {
        Named::new().text("entity_type", &unit.0).with("shard", CqlValue::Int(unit.1 as i32))
    }

    fn ttl(&self) -> i32 {
        self.inner.config.feed_ttl.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    async fn segments(&self, unit: &Unit) -> Result<Vec<Segment>, JournalError> {
        let rows: Vec<SegmentRow> = self.rows(&self.inner.st.segments, Self::unit_pk(unit)).await?;
        let mut out: Vec<Segment> = rows
            .into_iter()
            .map(|(epoch, start, watermark, sealed_end)| Segment {
                epoch: epoch as u64,
                start: start.unwrap_or(1).max(1) as u64,
                watermark: watermark.unwrap_or(0).max(0) as u64,
                sealed_end: sealed_end.map(|s| s.max(0) as u64),
            })
            .collect();
        out.sort_by_key(|s| s.epoch);
        Ok(out)
    }

    /// Which epoch's entries count at each offset, and the highest offset
    /// readers may see (every offset up to it is final).
    async fn visible(&self, unit: &Unit) -> Result<(Vec<(u64, u64, u64)>, u64), JournalError> {
        let segments = self.segments(unit).await?;
        // (start, end, epoch) per segment.
        let spans: Vec<(u64, u64, u64)> =
            segments.iter().map(|s| (s.start, s.sealed_end.unwrap_or(s.watermark), s.epoch)).collect();
        let limit = spans.iter().map(|s| s.1).max().unwrap_or(0);
        Ok((spans, limit))
    }

    /// This node's feed of `unit` under `epoch` (`None`: an unfenced writer,
    /// which continues the latest segment), opened — and what came before
    /// it settled — on first use.
    pub(crate) async fn unit_feed(&self, unit: Unit, epoch: Option<u64>) -> Result<Arc<UnitFeed>, AppendError> {
        loop {
            let cell = {
                let mut cells = self.inner.units.cells.lock().unwrap_or_else(|p| p.into_inner());
                cells.entry(unit.clone()).or_default().clone()
            };
            let feed = cell.get_or_try_init(|| self.open_unit(unit.clone(), epoch)).await?.clone();
            let Some(epoch) = epoch else { return Ok(feed) };
            if feed.epoch == epoch {
                return Ok(feed);
            }
            if feed.epoch > epoch {
                let entity = format!("{}/{}", unit.0, unit.1);
                return Err(AppendError::Fenced { entity, epoch, current: feed.epoch });
            }
            // A newer lease on this node: open a new segment.
            let mut cells = self.inner.units.cells.lock().unwrap_or_else(|p| p.into_inner());
            if cells.get(&unit).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                cells.remove(&unit);
            }
        }
    }

    /// Settles and seals what came before, and opens (or, for the same
    /// epoch, continues) the segment of `epoch`.
    async fn open_unit(&self, unit: Unit, epoch: Option<u64>) -> Result<Arc<UnitFeed>, AppendError> {
        let segments = self.segments(&unit).await?;
        let epoch = epoch.unwrap_or_else(|| segments.last().map_or(0, |s| s.epoch));
        if let Some(s) = segments.iter().find(|s| s.epoch > epoch) {
            let entity = format!("{}/{}", unit.0, unit.1);
            return Err(AppendError::Fenced { entity, epoch, current: s.epoch });
        }
        let mut last = 0;
        let mut start = None;
        for s in &segments {
            let end = match s.sealed_end {
                Some(e) => e,
                None => {
                    let end = self.settle(&unit, s, epoch).await?;
                    if s.epoch == epoch {
                        start = Some(s.start);
                    } else {
                        let v = Self::unit_pk(&unit).big("epoch", s.epoch as i64).big("sealed_end", end as i64);
                        self.inner
                            .session
                            .execute_unpaged(&self.inner.st.segment_seal, v)
                            .await
                            .map_err(unavailable)?;
                    }
                    end
                }
            };
            last = last.max(end);
        }
        // A new segment starts after the last offset; this epoch's own
        // (a restart of the same writer) keeps its start.
        let start = start.unwrap_or(last + 1);
        let v =
            Self::unit_pk(&unit).big("epoch", epoch as i64).big("start", start as i64).big("watermark", last as i64);
        self.inner.session.execute_unpaged(&self.inner.st.segment_open, v).await.map_err(unavailable)?;
        let state = Offsets { last, watermark: last, resolved: BTreeSet::new() };
        Ok(Arc::new(UnitFeed { unit, epoch, state: Mutex::new(state), flushing: AtomicBool::new(false) }))
    }

    /// Settles the entries of an unsealed segment above its watermark and
    /// returns its last offset: entries are final once the entity's fence
    /// is at `epoch` (no older append can land) — readers skip those whose
    /// event does not carry them — and holes become voids.
    async fn settle(&self, unit: &Unit, s: &Segment, epoch: u64) -> Result<u64, AppendError> {
        let from = s.watermark.max(s.start.saturating_sub(1));
        let mut entries = Vec::new();
        let mut after = from;
        loop {
            let page: Vec<Entry> = self
                .entries(unit, after, after + FEED_BLOCK)
                .await?
                .into_iter()
                .filter(|e| e.epoch == s.epoch)
                .collect();
            let Some(last) = page.last().map(|e| e.offset) else { break };
            after = last;
            entries.extend(page);
        }
        let Some(max) = entries.iter().map(|e| e.offset).max() else { return Ok(from) };
        let present: BTreeSet<u64> = entries.iter().map(|e| e.offset).collect();
        let mut fenced = std::collections::HashSet::new();
        for e in entries.iter().filter(|e| !e.void) {
            let key = EntityKey::new(unit.0.clone(), e.entity_id.clone());
            if epoch > 0 && fenced.insert(key.clone()) {
                match self.raise_fence_inner(&key, epoch).await {
                    Ok(()) | Err(AppendError::Fenced { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for o in (from + 1..=max).filter(|o| !present.contains(o)) {
            self.write_void(unit, o, s.epoch).await?;
        }
        Ok(max)
    }

    async fn write_void(&self, unit: &Unit, offset: u64, epoch: u64) -> Result<(), JournalError> {
        let v = Self::unit_pk(unit)
            .big("block", block(offset))
            .big("offset", offset as i64)
            .big("epoch", epoch as i64)
            .with("ttl", CqlValue::Int(self.ttl()));
        self.inner.session.execute_unpaged(&self.inner.st.feed_void, v).await.map_err(unavailable)?;
        Ok(())
    }

    /// Feed entries `(after, upto]` of every epoch, in offset order (at most a page or so).
    async fn entries(&self, unit: &Unit, after: u64, upto: u64) -> Result<Vec<Entry>, JournalError> {
        let mut out = Vec::new();
        let mut b = block(after + 1);
        let mut from = after;
        while b <= block(upto) && out.len() < PAGE {
            let v = Self::unit_pk(unit).big("block", b).big("after", from as i64).big("upto", upto as i64);
            type Row = (i64, i64, Option<String>, Option<i64>, Option<i64>, Option<bool>);
            let rows: Vec<Row> = self.rows(&self.inner.st.feed_range, v).await?;
            let full = rows.len() == PAGE;
            for (offset, epoch, id, bucket, seq, void) in rows {
                from = offset as u64;
                out.push(Entry {
                    offset: offset as u64,
                    epoch: epoch as u64,
                    void: void.unwrap_or(false) || id.is_none(),
                    entity_id: id.unwrap_or_default(),
                    bucket: bucket.unwrap_or(0) as u64,
                    seq: seq.unwrap_or(0) as u64,
                });
            }
            if !full {
                b += 1;
                from = from.max((b as u64 * FEED_BLOCK).saturating_sub(1));
            }
        }
        Ok(out)
    }

    /// Takes `n` offsets of the unit for an append and writes its entries
    /// (not visible yet). Waits while too many appends are unresolved.
    pub(crate) async fn intend(
        &self,
        feed: &UnitFeed,
        key: &EntityKey,
        bucket: u64,
        first_seq: u64,
        n: u64,
        ts: i64,
    ) -> Result<u64, JournalError> {
        let first = loop {
            {
                let mut st = feed.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.last + n - st.watermark <= MAX_PENDING {
                    let first = st.last + 1;
                    st.last += n;
                    break first;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let mut batch = scylla::statement::batch::Batch::new(scylla::statement::batch::BatchType::Unlogged);
        let mut values = Vec::new();
        for i in 0..n {
            let offset = first + i;
            batch.append_statement(self.inner.st.feed_put.clone());
            values.push(
                Self::unit_pk(&feed.unit)
                    .big("block", block(offset))
                    .big("offset", offset as i64)
                    .big("epoch", feed.epoch as i64)
                    .text("entity_id", &key.entity_id)
                    .big("bucket", bucket as i64)
                    .big("seq", (first_seq + i) as i64)
                    .big("ts", ts)
                    .with("ttl", CqlValue::Int(self.ttl())),
            );
        }
        if let Err(e) = self.inner.session.batch(&batch, values).await {
            // The entries may be partly written: make them voids before the
            // watermark passes them, then give the offsets up.
            let me = self.clone();
            let unit = feed.unit.clone();
            let epoch = feed.epoch;
            tokio::spawn(async move {
                for o in first..first + n {
                    while me.write_void(&unit, o, epoch).await.is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                if let Ok(f) = me.unit_feed(unit, Some(epoch)).await {
                    me.resolved(&f, first, n);
                }
            });
            return Err(unavailable(e));
        }
        Ok(first)
    }

    /// The append of `first..first + n` has a known outcome: resolve them.
    pub(crate) fn resolved(&self, feed: &Arc<UnitFeed>, first: u64, n: u64) {
        let advanced = feed.state.lock().unwrap_or_else(|p| p.into_inner()).resolve(first, n);
        if advanced && !feed.flushing.swap(true, Ordering::AcqRel) {
            let (me, feed) = (self.clone(), feed.clone());
            tokio::spawn(async move { me.flush_watermark(feed).await });
        }
    }

    /// The append's outcome is unknown (the driver timed out): a serial
    /// read settles it (an unfinished round is finished or superseded, so it
    /// cannot commit afterwards), then its offsets are resolved.
    pub(crate) fn settle_unknown(
        &self,
        feed: Arc<UnitFeed>,
        key: EntityKey,
        bucket: u64,
        first_seq: u64,
        first: u64,
        n: u64,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let v = Named::partition(&key.entity_type, &key.entity_id, bucket).big("seq", first_seq as i64);
            while me.inner.session.execute_unpaged(&me.inner.st.event_offset_serial, v.clone()).await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            me.resolved(&feed, first, n);
        });
    }

    /// Writes the unit's watermark until it stops moving.
    async fn flush_watermark(&self, feed: Arc<UnitFeed>) {
        loop {
            let w = feed.state.lock().unwrap_or_else(|p| p.into_inner()).watermark;
            let v = Self::unit_pk(&feed.unit).big("epoch", feed.epoch as i64).big("watermark", w as i64);
            if let Err(e) = self.inner.session.execute_unpaged(&self.inner.st.segment_watermark, v).await {
                tracing::warn!(unit = ?feed.unit, error = %e, "cannot write the feed watermark; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            crate::fault::point("scylla.after_watermark");
            let now = feed.state.lock().unwrap_or_else(|p| p.into_inner()).watermark;
            if now == w {
                feed.flushing.store(false, Ordering::Release);
                // A resolve between the read and the store would have seen
                // `flushing` set: look once more.
                let again = feed.state.lock().unwrap_or_else(|p| p.into_inner()).watermark;
                if again == w || feed.flushing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    }

    /// An event if it is the one at this feed offset.
    async fn fed_event(
        &self,
        key: &EntityKey,
        bucket: u64,
        seq: u64,
        offset: u64,
    ) -> Result<Option<PersistedEvent>, JournalError> {
        type Fed = (i64, Option<i64>, Option<String>, Option<i32>, Option<Vec<u8>>, Option<Vec<u8>>, Option<i64>);
        let v = Named::partition(&key.entity_type, &key.entity_id, bucket).big("seq", seq as i64);
        let row: Option<Fed> = self.first_row(&self.inner.st.read_fed, v).await?;
        Ok(row.filter(|r| r.6 == Some(offset as i64)).map(|(s, ts, t, ver, p, m, _)| {
            let r: EventRow = (s, ts, t, ver, p, m);
            to_event(r)
        }))
    }

    pub(crate) fn feed(&self, entity_type: &str, shard: u32, after_offset: u64) -> ShardStream {
        let me = self.clone();
        let unit: Unit = (entity_type.to_owned(), shard);
        type Spans = Arc<Vec<(u64, u64, u64)>>;
        // Cursor: (after, the segments and visible limit — learnt on the first page).
        paged((after_offset, None::<(Spans, u64)>), move |(after, seen): (u64, Option<(Spans, u64)>)| {
            let (me, unit) = (me.clone(), unit.clone());
            async move {
                let first_page = seen.is_none();
                let (spans, limit) = match seen {
                    Some(s) => s,
                    None => {
                        let (spans, limit) = me.visible(&unit).await?;
                        (Arc::new(spans), limit)
                    }
                };
                if after >= limit {
                    return Ok((Vec::new(), None));
                }
                let owner = |offset: u64| spans.iter().find(|s| s.0 <= offset && offset <= s.1).map(|s| s.2);
                let entries: Vec<Entry> = me
                    .entries(&unit, after, limit)
                    .await?
                    .into_iter()
                    .filter(|e| owner(e.offset) == Some(e.epoch))
                    .collect();
                if first_page && entries.first().is_none_or(|e| e.offset > after + 1) {
                    // Every offset up to the limit was written: missing ones expired.
                    let expired_to = entries.first().map_or(limit, |e| e.offset - 1);
                    let entity_type = unit.0.clone();
                    return Err(JournalError::FeedExpired { entity_type, shard: unit.1, after, expired_to });
                }
                let last = entries.last().map_or(limit, |e| e.offset);
                let mut page = Vec::with_capacity(entries.len());
                for e in entries.into_iter().filter(|e| !e.void) {
                    let key = EntityKey::new(unit.0.clone(), e.entity_id);
                    // A failed append's entry, or an event deleted since: skip.
                    if let Some(event) = me.fed_event(&key, e.bucket, e.seq, e.offset).await? {
                        page.push(ShardEvent { offset: e.offset, entity: key, event });
                    }
                }
                Ok((page, (last < limit).then_some((last, Some((spans, limit))))))
            }
        })
        .boxed()
    }

    pub(crate) async fn bounds(&self, entity_type: &str, shard: u32) -> Result<FeedBounds, JournalError> {
        let unit: Unit = (entity_type.to_owned(), shard);
        let (_, last) = self.visible(&unit).await?;
        let mut expired_to = last;
        for b in 0..=block(last) {
            let v = Self::unit_pk(&unit).big("block", b);
            let row: Option<(i64,)> = self.first_row(&self.inner.st.feed_first, v).await?;
            if let Some((o,)) = row {
                expired_to = (o as u64).saturating_sub(1);
                break;
            }
        }
        Ok(FeedBounds { expired_to: expired_to.min(last), last })
    }
}

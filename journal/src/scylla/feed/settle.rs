//! Opening a unit's feed under an epoch: what earlier owners left is
//! settled first — closed, the committed appends nobody numbered visibly
//! numbered right after the last visible offset, the old segment sealed.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use scylla::value::CqlValue;

use super::super::ScyllaJournal;
use super::super::rows::lwt_outcome;
use super::super::session::unavailable;
use super::{Entry, Intent, Segment, Unit, UnitFeed, at_least_0, block};
use crate::error::{AppendError, JournalError};
use crate::types::EntityKey;

/// What a settled segment leaves to its successor.
struct Settled {
    /// The last visible offset.
    watermark: u64,
    /// Committed appends not visible yet, in the order they are numbered.
    carry: Vec<Intent>,
    /// The highest intent id seen (a writer continuing the epoch goes on after it).
    max_intent: u64,
}

impl ScyllaJournal {
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

    /// Settles what came before and opens (or, for the same epoch,
    /// continues) the segment of `epoch`.
    async fn open_unit(&self, unit: Unit, epoch: Option<u64>) -> Result<Arc<UnitFeed>, AppendError> {
        let segments = self.segments(&unit).await?;
        let epoch = epoch.unwrap_or_else(|| segments.last().map_or(0, |s| s.epoch));
        let fenced = |current: u64| AppendError::Fenced { entity: format!("{}/{}", unit.0, unit.1), epoch, current };
        if let Some(s) = segments.iter().find(|s| s.epoch > epoch) {
            return Err(fenced(s.epoch));
        }
        let mut last = 0;
        let mut own: Option<Segment> = None;
        let mut settled: Option<(Segment, Settled)> = None;
        for (i, s) in segments.iter().enumerate() {
            if s.epoch == epoch {
                own = Some(*s);
                break;
            }
            if let Some(end) = s.sealed_end {
                last = last.max(end);
            } else if let Some(next) = segments.get(i + 1) {
                // Its successor carried what it left when it opened: seal
                // it where the successor starts.
                self.seal_segment(&unit, s.epoch, next.start - 1).await?;
                last = last.max(next.start - 1);
            } else if s.floor.is_none() {
                let end = self.settle_v3(&unit, s, epoch).await?;
                self.seal_segment(&unit, s.epoch, end).await?;
                last = last.max(end);
            } else {
                let done = self.settle(&unit, s, epoch, true).await?;
                last = last.max(done.watermark);
                settled = Some((*s, done));
            }
        }
        let (watermark, next_intent) = match own {
            // The same writer again (a restart of an unfenced node): it
            // continues its segment, numbering what it left first.
            Some(s) => {
                let (mut carry, mut max_intent) = (Vec::new(), 0);
                let w = if s.floor.is_none() {
                    self.settle_v3(&unit, &s, epoch).await?
                } else {
                    let done = self.settle(&unit, &s, epoch, false).await?;
                    (carry, max_intent) = (done.carry, done.max_intent);
                    done.watermark
                };
                let w = self.carry(&unit, epoch, w.max(last), &carry).await?;
                let next_intent = max_intent.max(s.floor.map_or(0, |f| f.0)) + 1;
                if !self.write_watermark(&unit, epoch, w, next_intent, w).await? {
                    return Err(fenced(epoch + 1));
                }
                (w, next_intent)
            }
            None => {
                let carry = settled.as_ref().map(|(_, d)| d.carry.as_slice()).unwrap_or_default();
                let w = self.carry(&unit, epoch, last, carry).await?;
                let v = Self::unit_pk(&unit)
                    .big("epoch", epoch as i64)
                    .big("start", last as i64 + 1)
                    .big("watermark", w as i64)
                    .big("intent_floor", 1)
                    .big("floor_offset", w as i64);
                self.inner.session.execute_unpaged(&self.inner.st.segment_open, v).await.map_err(unavailable)?;
                if let Some((s, done)) = &settled {
                    self.seal_segment(&unit, s.epoch, done.watermark).await?;
                }
                (w, 1)
            }
        };
        Ok(Arc::new(UnitFeed::new(unit, epoch, watermark, next_intent)))
    }

    async fn seal_segment(&self, unit: &Unit, epoch: u64, end: u64) -> Result<(), JournalError> {
        let v = Self::unit_pk(unit).big("epoch", epoch as i64).big("sealed_end", end as i64);
        self.inner.session.execute_unpaged(&self.inner.st.segment_seal, v).await.map_err(unavailable)?;
        Ok(())
    }

    /// Numbers `carry` from `after + 1` under `epoch` (entries only; the
    /// caller's segment write makes them visible); returns the last offset.
    async fn carry(&self, unit: &Unit, epoch: u64, after: u64, carry: &[Intent]) -> Result<u64, JournalError> {
        let mut next = after + 1;
        for c in carry {
            self.write_entries(unit, epoch, next, c, None).await?;
            next += c.n;
        }
        Ok(next - 1)
    }

    /// Settles segment `s` for the owner of `epoch`: closes it (when it is
    /// an earlier owner's), reads its final watermark, and finds the
    /// committed appends among the intents it cannot see numbered — after
    /// raising their entities' fence to `epoch`, so none can land later.
    async fn settle(&self, unit: &Unit, s: &Segment, epoch: u64, close: bool) -> Result<Settled, AppendError> {
        let pk = || Self::unit_pk(unit).big("epoch", s.epoch as i64);
        if close {
            let r = self
                .inner
                .session
                .execute_unpaged(&self.inner.st.segment_close, pk().big("closed_by", epoch as i64))
                .await
                .map_err(unavailable)?;
            // Applied, or closed already by another successor: either way closed.
            lwt_outcome(r)?;
        }
        type Row = (Option<i64>, Option<i64>, Option<i64>);
        let row: Option<Row> = self.first_row(&self.inner.st.segment_serial, pk()).await?;
        let (w, floor, floor_offset) = row.unwrap_or_default();
        let (w, floor, floor_offset) =
            (w.map_or(0, at_least_0), floor.map_or(1, at_least_0), floor_offset.map_or(0, at_least_0));
        let seen: HashSet<u64> = self
            .all_entries(unit, floor_offset.min(w), w)
            .await?
            .into_iter()
            .filter(|e: &Entry| e.epoch == s.epoch)
            .filter_map(|e| e.intent)
            .collect();
        let intents = self.intents(unit, s.epoch, floor).await?;
        let max_intent = intents.last().map_or(0, |i| i.id);
        let mut fenced = HashSet::new();
        let mut carry = Vec::new();
        for i in intents.into_iter().filter(|i| !seen.contains(&i.id)) {
            if epoch != s.epoch {
                self.fence_once(&mut fenced, unit, &i.entity_id, epoch).await?;
            }
            if self.intent_committed(unit, &i).await? {
                carry.push(i);
            }
        }
        Ok(Settled { watermark: w, carry, max_intent })
    }

    /// Raises the fence of entity `id` to `epoch` unless `fenced` holds it
    /// already (or `epoch` is 0: an unfenced writer); a newer fence is
    /// fine — an older owner's append cannot land either way.
    async fn fence_once(
        &self,
        fenced: &mut HashSet<String>,
        unit: &Unit,
        id: &str,
        epoch: u64,
    ) -> Result<(), AppendError> {
        if epoch == 0 || !fenced.insert(id.to_owned()) {
            return Ok(());
        }
        match self.raise_fence_inner(&EntityKey::new(unit.0.clone(), id), epoch).await {
            Ok(()) | Err(AppendError::Fenced { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The intents of `unit` under `epoch` from id `from`, in id order.
    async fn intents(&self, unit: &Unit, epoch: u64, from: u64) -> Result<Vec<Intent>, JournalError> {
        let mut out = Vec::new();
        let (mut b, mut from) = (block(from), from);
        loop {
            let v = Self::unit_pk(unit).big("epoch", epoch as i64).big("block", b).big("from_id", from as i64);
            type Row = (i64, Option<String>, Option<i64>, Option<i64>, Option<i32>);
            let rows: Vec<Row> = self.rows(&self.inner.st.intent_range, v).await?;
            let full = rows.len() == super::super::PAGE;
            let empty = rows.is_empty();
            for (id, entity_id, bucket, first_seq, n) in rows {
                from = at_least_0(id) + 1;
                out.push(Intent {
                    id: at_least_0(id),
                    entity_id: entity_id.unwrap_or_default(),
                    bucket: bucket.map_or(0, at_least_0),
                    first_seq: first_seq.map_or(0, at_least_0),
                    n: n.unwrap_or(0).max(0) as u64,
                    records: None,
                });
            }
            if full {
                continue;
            }
            // Ids are dense: an empty block is past the last intent.
            if empty {
                return Ok(out);
            }
            b += 1;
            from = from.max(b as u64 * super::super::schema::FEED_BLOCK);
        }
    }

    /// Settles a segment written by schema 3 (offsets taken before the
    /// append): its entries above the watermark are final once their
    /// entities' fence is at `epoch` — readers skip those whose event does
    /// not carry them — and holes become voids. Returns its last offset.
    async fn settle_v3(&self, unit: &Unit, s: &Segment, epoch: u64) -> Result<u64, AppendError> {
        let from = s.watermark.max(s.start.saturating_sub(1));
        let mut entries = Vec::new();
        let mut after = from;
        loop {
            let page: Vec<Entry> = self
                .entries(unit, after, after + super::super::schema::FEED_BLOCK)
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
        let mut fenced = HashSet::new();
        for e in entries.iter().filter(|e| !e.void) {
            self.fence_once(&mut fenced, unit, &e.entity_id, epoch).await?;
        }
        for o in (from + 1..=max).filter(|o| !present.contains(o)) {
            let v = Self::unit_pk(unit)
                .big("block", block(o))
                .big("offset", o as i64)
                .big("epoch", s.epoch as i64)
                .with("ttl", CqlValue::Int(self.ttl()));
            self.inner.session.execute_unpaged(&self.inner.st.feed_void, v).await.map_err(unavailable)?;
        }
        Ok(max)
    }
}

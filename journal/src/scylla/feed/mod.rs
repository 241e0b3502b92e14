//! The feed of each (entity type, shard) — the unit a node holds a lease
//! on — with offsets its owner assigns: gapless, per entity in seq order,
//! never visible at or below an offset a reader has seen, across crashes
//! and moves. (The argument is in ARCHITECTURE.md, "The shard feed".)
//!
//! - **Offsets only for committed appends.** An append first records an
//!   *intent* (entity, partition, first seq, count) under its unit and the
//!   owner's epoch, and its event rows carry the intent's id. Only when the
//!   conditional append is known to have applied does the owner give it the
//!   unit's next offsets (in commit order, in memory) and write their feed
//!   entries; a refused append gives nothing up, so there are no holes.
//!   An outcome the driver could not tell is settled by a serial read of the
//!   event row (its intent says whose it is); the entity's next append waits
//!   for that, so per entity feed order stays seq order. (Per entity order
//!   assumes one writer per entity at a time, as the runtime's single
//!   activation per entity gives: two writers racing on one entity could
//!   number their commits in the order their acknowledgements arrive.)
//! - **The watermark.** Readers see offsets up to the unit's watermark, the
//!   contiguous prefix whose entries are durable. It is written with the
//!   *intent floor*: every intent below it is decided and visible, and those
//!   above it that are visible have offsets above `floor_offset`.
//! - **The lease.** The writer checks its lease after its intent is durable
//!   and before it sends the conditional append: any append that is sent
//!   has its intent where a successor will find it.
//! - **Segments.** Offsets live in segments, one per owner epoch; entries
//!   are keyed by (offset, epoch). A successor first *closes* the previous
//!   segment (a conditional write: the old owner's watermark cannot move
//!   after it), then reads its final watermark, raises the fence of every
//!   entity with an intent it cannot see numbered (so a late append cannot
//!   land), finds which of those appends committed, and numbers them right
//!   after the watermark in its own, new segment — then seals the old one
//!   at its watermark. Readers take, at each offset, the entry of the
//!   segment that owns it. Segments written by schema version 3 (offsets
//!   taken before the append) are settled as they were (`settle::v3`).

mod settle;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use scylla::value::CqlValue;
use tokio::sync::{OnceCell, watch};

use super::rows::{Named, to_event};
use super::schema::FEED_BLOCK;
use super::session::unavailable;
use super::{PAGE, ScyllaJournal};
use crate::error::JournalError;
use crate::journal::ShardStream;
use crate::paging::paged;
use crate::types::{EntityKey, FeedBounds, PersistedEvent, ShardEvent};

/// Most intents open (undecided, or numbered but not yet below the
/// watermark) per unit; an append waits beyond it.
pub(crate) const MAX_PENDING: usize = 4096;

/// Most feed entry writes in flight per journal (each after its commit).
pub(crate) const MAX_ENTRY_WRITES: usize = 32;

/// A unit: an entity type in a shard.
pub(crate) type Unit = (String, u32);

/// The partition of the `feed` (by offset) and `feed_intents` (by id) tables.
fn block(n: u64) -> i64 {
    (n / FEED_BLOCK) as i64
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
    /// The intent it numbers (none: schema 3, or carried by a successor).
    intent: Option<u64>,
    /// When it was written, ms since the Unix epoch (within ms of its
    /// event's commit; what an unread event carries as its time).
    ts: i64,
    /// Whether its event is one of the runtime's records (none: not known,
    /// an entry of schema 5 or older, or carried by a successor).
    record: Option<bool>,
}

/// One segment row.
#[derive(Debug, Clone, Copy)]
struct Segment {
    epoch: u64,
    start: u64,
    watermark: u64,
    sealed_end: Option<u64>,
    /// The intent floor and its offset (none: a segment of schema 3).
    floor: Option<(u64, u64)>,
}

/// One intent: an append of `n` events of an entity into partition
/// `bucket` from `first_seq`, recorded before it is sent (so it may have
/// committed).
#[derive(Debug, Clone)]
pub(crate) struct Intent {
    pub(crate) id: u64,
    pub(crate) entity_id: String,
    pub(crate) bucket: u64,
    pub(crate) first_seq: u64,
    pub(crate) n: u64,
    /// Per event, whether it is one of the runtime's records (none: not
    /// known — an intent read back by a successor).
    pub(crate) records: Option<Vec<bool>>,
}

/// The owner's state of one unit's feed on this node.
pub(crate) struct UnitFeed {
    unit: Unit,
    epoch: u64,
    state: Mutex<Offsets>,
    flushing: AtomicBool,
    /// Entities whose last append's outcome is being settled: their next
    /// append waits for it (per entity, feed order is seq order).
    unsettled: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl UnitFeed {
    fn new(unit: Unit, epoch: u64, watermark: u64, next_intent: u64) -> Self {
        let state = Offsets {
            last: watermark,
            watermark,
            resolved: BTreeSet::new(),
            next_intent: next_intent.max(1),
            intents: BTreeMap::new(),
        };
        Self {
            unit,
            epoch,
            state: Mutex::new(state),
            flushing: AtomicBool::new(false),
            unsettled: Mutex::new(HashMap::new()),
        }
    }

    /// The epoch this node writes the unit under.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    fn offsets(&self) -> std::sync::MutexGuard<'_, Offsets> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Offsets and intents of one unit, in memory on its owner.
#[derive(Debug, Default)]
struct Offsets {
    /// The last offset given to a committed append.
    last: u64,
    /// Every offset up to here has its entry durable.
    watermark: u64,
    /// Offsets above the watermark whose entries are durable.
    resolved: BTreeSet<u64>,
    /// The id the next intent gets.
    next_intent: u64,
    /// Intents not yet known to be below the floor: undecided (`None`) or
    /// numbered (their first and last offsets).
    intents: BTreeMap<u64, Option<(u64, u64)>>,
}

impl Offsets {
    fn open_intent(&mut self) -> u64 {
        let id = self.next_intent;
        self.next_intent += 1;
        self.intents.insert(id, None);
        id
    }

    /// The intent's append did not commit: it gives no offsets up.
    fn drop_intent(&mut self, id: u64) {
        self.intents.remove(&id);
    }

    /// The intent's append committed: its `n` offsets, the next ones.
    fn number(&mut self, id: u64, n: u64) -> u64 {
        let first = self.last + 1;
        self.last += n;
        self.intents.insert(id, Some((first, self.last)));
        first
    }

    /// Entries `first..first + n` are durable; true when the watermark moved.
    fn resolve(&mut self, first: u64, n: u64) -> bool {
        self.resolved.extend(first..first + n);
        let before = self.watermark;
        while self.resolved.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
        self.watermark != before
    }

    /// The intent floor to write with watermark `w`, and its offset: every
    /// intent below the floor is decided and, if it committed, at or below
    /// `w`; every intent at or above it whose offsets are at or below `w`
    /// has them above the floor offset.
    fn floor(&mut self, w: u64) -> (u64, u64) {
        while let Some((&id, v)) = self.intents.first_key_value() {
            match v {
                Some((_, end)) if *end <= w => self.intents.remove(&id),
                _ => break,
            };
        }
        let floor = self.intents.first_key_value().map_or(self.next_intent, |(id, _)| *id);
        let floor_offset =
            self.intents.values().flatten().filter(|(_, end)| *end <= w).map(|(first, _)| first - 1).min().unwrap_or(w);
        (floor, floor_offset)
    }
}

/// The feed units this node writes, opened on first use per epoch.
#[derive(Default)]
pub(crate) struct Units {
    cells: Mutex<HashMap<Unit, Arc<OnceCell<Arc<UnitFeed>>>>>,
}

/// A `feed_segments` row: epoch, start, watermark, sealed end, intent floor, floor offset.
type SegmentRow = (i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

fn at_least_0(v: i64) -> u64 {
    v.max(0) as u64
}

impl ScyllaJournal {
    fn unit_pk(unit: &Unit) -> Named {
        Named::new().text("entity_type", &unit.0).with("shard", CqlValue::Int(unit.1 as i32))
    }

    fn ttl(&self) -> i32 {
        self.inner.config.feed_ttl.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    async fn segments(&self, unit: &Unit) -> Result<Vec<Segment>, JournalError> {
        super::counts::Counters::bump(&self.inner.counts.segment_reads);
        let rows: Vec<SegmentRow> = self.rows(&self.inner.st.segments, Self::unit_pk(unit)).await?;
        let mut out: Vec<Segment> = rows
            .into_iter()
            .map(|(epoch, start, watermark, sealed_end, floor, floor_offset)| Segment {
                epoch: epoch as u64,
                start: start.unwrap_or(1).max(1) as u64,
                watermark: watermark.map_or(0, at_least_0),
                sealed_end: sealed_end.map(at_least_0),
                floor: floor.map(|f| (at_least_0(f), floor_offset.map_or(0, at_least_0))),
            })
            .collect();
        out.sort_by_key(|s| s.epoch);
        Ok(out)
    }

    /// Which epoch's entries count at each offset — `(start, end, epoch)`
    /// per segment, each ending where the next one starts — and the highest
    /// offset readers may see (every offset up to it is final).
    async fn visible(&self, unit: &Unit) -> Result<(Vec<(u64, u64, u64)>, u64), JournalError> {
        let segments = self.segments(unit).await?;
        let spans: Vec<(u64, u64, u64)> = segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut end = s.sealed_end.unwrap_or(s.watermark);
                if let Some(next) = segments.get(i + 1) {
                    end = end.min(next.start - 1);
                }
                (s.start, end, s.epoch)
            })
            .collect();
        let limit = spans.iter().map(|s| s.1).max().unwrap_or(0);
        Ok((spans, limit))
    }

    /// Feed entries `(after, upto]` of every epoch, in offset order (at most a page or so).
    async fn entries(&self, unit: &Unit, after: u64, upto: u64) -> Result<Vec<Entry>, JournalError> {
        let mut out = Vec::new();
        let mut b = block(after + 1);
        let mut from = after;
        while b <= block(upto) && out.len() < PAGE {
            let v = Self::unit_pk(unit).big("block", b).big("after", from as i64).big("upto", upto as i64);
            type Row = (
                i64,
                i64,
                Option<String>,
                Option<i64>,
                Option<i64>,
                Option<bool>,
                Option<i64>,
                Option<i64>,
                Option<bool>,
            );
            super::counts::Counters::bump(&self.inner.counts.entry_reads);
            let rows: Vec<Row> = self.rows(&self.inner.st.feed_range, v).await?;
            let full = rows.len() == PAGE;
            for (offset, epoch, id, bucket, seq, void, intent, ts, record) in rows {
                from = offset as u64;
                out.push(Entry {
                    offset: offset as u64,
                    epoch: epoch as u64,
                    void: void.unwrap_or(false) || id.is_none(),
                    entity_id: id.unwrap_or_default(),
                    bucket: bucket.map_or(0, at_least_0),
                    seq: seq.map_or(0, at_least_0),
                    intent: intent.map(at_least_0),
                    ts: ts.unwrap_or(0),
                    record,
                });
            }
            if !full {
                b += 1;
                from = from.max((b as u64 * FEED_BLOCK).saturating_sub(1));
            }
        }
        Ok(out)
    }

    /// Every feed entry `(after, upto]`, however many pages.
    async fn all_entries(&self, unit: &Unit, mut after: u64, upto: u64) -> Result<Vec<Entry>, JournalError> {
        let mut out = Vec::new();
        while after < upto {
            let page = self.entries(unit, after, upto).await?;
            let Some(last) = page.last().map(|e| e.offset) else { break };
            after = last;
            out.extend(page);
        }
        Ok(out)
    }

    /// Turns the entity's entries in its unit's feed into voids that name
    /// no entity, and deletes their intents (a purge).
    pub(crate) async fn scrub_feed_of(&self, key: &EntityKey, shard: u32) -> Result<(), JournalError> {
        let unit: Unit = (key.entity_type.clone(), shard);
        let (_, limit) = self.visible(&unit).await?;
        let upto = limit.saturating_add(MAX_PENDING as u64);
        let mine: Vec<Entry> = self
            .all_entries(&unit, 0, upto)
            .await?
            .into_iter()
            .filter(|e| !e.void && e.entity_id == key.entity_id)
            .collect();
        for e in mine {
            let v = Self::unit_pk(&unit)
                .big("block", block(e.offset))
                .big("offset", e.offset as i64)
                .big("epoch", e.epoch as i64)
                .with("ttl", CqlValue::Int(self.ttl()));
            self.inner.session.execute_unpaged(&self.inner.st.feed_scrub, v).await.map_err(unavailable)?;
            if let Some(id) = e.intent {
                let v = Self::unit_pk(&unit).big("epoch", e.epoch as i64).big("block", block(id)).big("id", id as i64);
                self.inner.session.execute_unpaged(&self.inner.st.intent_delete, v).await.map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// An event if it is the one at this feed offset.
    async fn fed_event(
        &self,
        key: &EntityKey,
        bucket: u64,
        seq: u64,
        offset: u64,
    ) -> Result<Option<PersistedEvent>, JournalError> {
        type Fed =
            (i64, Option<i64>, Option<String>, Option<i32>, Option<Vec<u8>>, Option<Vec<u8>>, Option<i64>, Option<i64>);
        let v = Named::partition(&key.entity_type, &key.entity_id, bucket).big("seq", seq as i64);
        super::counts::Counters::bump(&self.inner.counts.feed_event_reads);
        let row: Option<Fed> = self.first_row(&self.inner.st.read_fed, v).await?;
        // Schema 3 rows carry the offset they were given ahead of the
        // append (an entry of a failed append names another event's row);
        // schema 4 entries exist only for committed events.
        row.filter(|r| r.7.is_none_or(|o| o == offset as i64))
            .map(|(s, ts, t, ver, p, m, crc, _)| to_event(key, (s, ts, t, ver, p, m, crc)))
            .transpose()
    }

    /// The feed of a unit after `after_offset`; with `records_only`, an
    /// entry known not to be one of the runtime's records comes unread
    /// (`Journal::internal_by_shard`).
    pub(crate) fn feed(&self, entity_type: &str, shard: u32, after_offset: u64, records_only: bool) -> ShardStream {
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
                    if records_only && e.record == Some(false) {
                        let event = PersistedEvent::unread(e.seq, e.ts);
                        page.push(ShardEvent { offset: e.offset, entity: key, event });
                        continue;
                    }
                    // A schema-3 entry of a failed append, or an event deleted since: skip.
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

#[cfg(test)]
mod tests {
    use super::Offsets;

    fn offsets() -> Offsets {
        Offsets { next_intent: 1, ..Offsets::default() }
    }

    #[test]
    fn a_refused_append_takes_no_offset() {
        let mut o = offsets();
        let (a, b, c) = (o.open_intent(), o.open_intent(), o.open_intent());
        assert_eq!(o.number(a, 2), 1);
        o.drop_intent(b);
        assert_eq!(o.number(c, 1), 3, "right after the first: b left no hole");
    }

    #[test]
    fn the_watermark_covers_only_a_durable_prefix() {
        let mut o = offsets();
        let (a, b) = (o.open_intent(), o.open_intent());
        let (fa, fb) = (o.number(a, 2), o.number(b, 1));
        assert!(!o.resolve(fb, 1), "3 is durable, 1-2 not yet");
        assert_eq!(o.watermark, 0);
        assert!(o.resolve(fa, 2));
        assert_eq!(o.watermark, 3);
    }

    #[test]
    fn the_floor_stops_at_the_first_undecided_intent() {
        let mut o = offsets();
        let (a, b, c) = (o.open_intent(), o.open_intent(), o.open_intent());
        let fa = o.number(a, 1);
        let fc = o.number(c, 2);
        o.resolve(fa, 1);
        o.resolve(fc, 2);
        // b is undecided: the floor stays at b, and c (visible at 3) is above offset 1.
        assert_eq!(o.watermark, 3);
        assert_eq!(o.floor(3), (b, 1));
        o.drop_intent(b);
        assert_eq!(o.floor(3), (4, 3), "all decided and visible: the next id, the watermark");
        assert!(o.intents.is_empty());
    }

    #[test]
    fn an_intent_numbered_above_the_watermark_holds_the_floor() {
        let mut o = offsets();
        let (a, b) = (o.open_intent(), o.open_intent());
        let fa = o.number(a, 1);
        o.number(b, 1);
        o.resolve(fa, 1);
        assert_eq!(o.floor(1), (b, 1), "b's entry is not durable: a successor must look at it");
    }
}

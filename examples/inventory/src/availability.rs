//! `availability`: the central region's view of one SKU across regions and
//! stores, fed by the regional event streams (the JetStream sink of each
//! regional cluster). Each regional stock event counts exactly once: the
//! view keeps the last seq it counted per regional stock entity and skips
//! anything at or below it (a republished batch, a consumer replaying after
//! a restart), so deduplication does not depend on any retention window.
//!
//! [`observation`] turns a regional [`StockEvent`] into what the view needs
//! (changes of on-hand and reserved units); events that change neither
//! (none today) are not sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, Effect, Entity, Rejection};

use crate::stock::StockEvent;

/// The availability entity (`availability`, id = the SKU).
pub struct Availability;

/// One regional stock as the view knows it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreView {
    /// The last seq of the regional stock entity counted here.
    pub seq: u64,
    /// Units on hand.
    pub on_hand: i64,
    /// Units held by orders.
    pub reserved: i64,
}

/// A regional product as the central view knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogProduct {
    /// Display name.
    pub name: String,
    /// Price in the region.
    pub price: f64,
}

/// A region's catalog entry for the SKU.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// The last seq of the regional product entity counted here.
    pub seq: u64,
    /// The product (`None`: removed from the region's catalog).
    pub product: Option<CatalogProduct>,
}

/// The view of one SKU.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvailabilityState {
    /// Region → store → what the view counted.
    pub regions: BTreeMap<String, BTreeMap<String, StoreView>>,
    /// Region → the product there.
    #[serde(default)]
    pub catalog: BTreeMap<String, CatalogEntry>,
    /// Regional events counted.
    pub counted: u64,
}

impl AvailabilityState {
    /// Units available (on hand less reserved) in `region`.
    pub fn available_in(&self, region: &str) -> i64 {
        self.regions.get(region).map_or(0, |stores| stores.values().map(|s| s.on_hand - s.reserved).sum())
    }
    /// Units available everywhere.
    pub fn available(&self) -> i64 {
        self.regions.keys().map(|r| self.available_in(r)).sum()
    }
}

/// The change one regional event makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Change of on-hand units.
    pub on_hand: i64,
    /// Change of reserved units.
    pub reserved: i64,
}

/// What a regional stock event changes, if anything.
pub fn observation(e: &StockEvent) -> Option<Observation> {
    let (on_hand, reserved) = match e {
        StockEvent::Restocked { qty } | StockEvent::Returned { qty, .. } => (i64::from(*qty), 0),
        StockEvent::Purchased { qty } => (-i64::from(*qty), 0),
        StockEvent::Adjusted { delta, .. } => (*delta, 0),
        StockEvent::Reserved { qty, .. } => (0, i64::from(*qty)),
        StockEvent::Released { qty, .. } => (0, -i64::from(*qty)),
        // A commit sells the hold (on hand and reserved both go down), or,
        // when the hold had expired, units that were available.
        StockEvent::Committed { qty, held, .. } => (-i64::from(*qty), if *held { -i64::from(*qty) } else { 0 }),
    };
    Some(Observation { on_hand, reserved })
}

/// Commands of an availability view.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AvailabilityCommand {
    /// A regional stock event.
    Observe {
        /// The region it came from.
        region: String,
        /// The store (the stock entity is `{store}:{sku}`).
        store: String,
        /// The event's seq in the regional stock's journal.
        seq: u64,
        /// What it changes.
        change: Observation,
    },
    /// A regional product event.
    Describe {
        /// The region it came from.
        region: String,
        /// The event's seq in the regional product's journal.
        seq: u64,
        /// The product (`None`: removed).
        product: Option<CatalogProduct>,
    },
    /// Reads the view.
    Get,
}

/// Events of an availability view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AvailabilityEvent {
    /// A regional event counted.
    Observed {
        /// The region.
        region: String,
        /// The store.
        store: String,
        /// The regional seq.
        seq: u64,
        /// What it changed.
        change: Observation,
    },
    /// A regional product event counted.
    Described {
        /// The region.
        region: String,
        /// The regional seq.
        seq: u64,
        /// The product (`None`: removed).
        product: Option<CatalogProduct>,
    },
}

/// The reply: the SKU's availability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailabilityReply {
    /// Units available everywhere.
    pub available: i64,
    /// Units available per region.
    pub regions: BTreeMap<String, i64>,
    /// Whether this command's event was counted now (false: already counted).
    pub counted: bool,
}

fn reply(s: &AvailabilityState, counted: bool) -> AvailabilityReply {
    AvailabilityReply {
        available: s.available(),
        regions: s.regions.keys().map(|r| (r.clone(), s.available_in(r))).collect(),
        counted,
    }
}

impl Entity for Availability {
    const TYPE: &'static str = "availability";
    type State = AvailabilityState;
    type Command = AvailabilityCommand;
    type Event = AvailabilityEvent;
    type Reply = AvailabilityReply;

    fn handle(
        &self,
        s: &AvailabilityState,
        c: AvailabilityCommand,
        _: &mut Ctx,
    ) -> Result<Effect<AvailabilityEvent, AvailabilityReply>, Rejection> {
        match c {
            AvailabilityCommand::Observe { region, store, seq, change } => {
                let last = s.regions.get(&region).and_then(|r| r.get(&store)).map_or(0, |v| v.seq);
                if seq <= last {
                    return Ok(Effect::reply(reply(s, false)));
                }
                let e = AvailabilityEvent::Observed { region, store, seq, change };
                let mut next = s.clone();
                self.apply(&mut next, &e);
                Ok(Effect::persist(e, reply(&next, true)))
            }
            AvailabilityCommand::Describe { region, seq, product } => {
                if seq <= s.catalog.get(&region).map_or(0, |c| c.seq) {
                    return Ok(Effect::reply(reply(s, false)));
                }
                let e = AvailabilityEvent::Described { region, seq, product };
                let mut next = s.clone();
                self.apply(&mut next, &e);
                Ok(Effect::persist(e, reply(&next, true)))
            }
            AvailabilityCommand::Get => Ok(Effect::reply(reply(s, false))),
        }
    }

    fn apply(&self, s: &mut AvailabilityState, e: &AvailabilityEvent) {
        match e {
            AvailabilityEvent::Observed { region, store, seq, change } => {
                let v = s.regions.entry(region.clone()).or_default().entry(store.clone()).or_default();
                v.seq = *seq;
                v.on_hand += change.on_hand;
                v.reserved += change.reserved;
            }
            AvailabilityEvent::Described { region, seq, product } => {
                s.catalog.insert(region.clone(), CatalogEntry { seq: *seq, product: product.clone() });
            }
        }
        s.counted += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_entities::TestKit;

    fn observe(region: &str, store: &str, seq: u64, e: &StockEvent) -> AvailabilityCommand {
        AvailabilityCommand::Observe {
            region: region.into(),
            store: store.into(),
            seq,
            change: observation(e).unwrap(),
        }
    }

    #[test]
    fn sums_regions_and_stores() {
        let mut k = TestKit::new(Availability).with_id("shoe");
        k.accept(observe("eu", "paris", 1, &StockEvent::Restocked { qty: 5 }));
        k.accept(observe("eu", "lyon", 1, &StockEvent::Restocked { qty: 2 }));
        k.accept(observe("us", "nyc", 1, &StockEvent::Restocked { qty: 4 }));
        k.accept(observe("eu", "paris", 2, &StockEvent::Purchased { qty: 1 }));
        let r = k.accept(observe("us", "nyc", 2, &StockEvent::Reserved { order: "o".into(), qty: 3 })).reply;
        assert_eq!(r.available, 7);
        assert_eq!(r.regions, BTreeMap::from([("eu".into(), 6), ("us".into(), 1)]));
        k.accept(observe("us", "nyc", 3, &StockEvent::Committed { order: "o".into(), qty: 3, held: true }));
        assert_eq!(k.state().available_in("us"), 1);
        assert_eq!(k.replayed_state(), *k.state());
    }

    #[test]
    fn each_regional_event_counts_once() {
        let mut k = TestKit::new(Availability).with_id("shoe");
        assert!(k.accept(observe("eu", "paris", 1, &StockEvent::Restocked { qty: 5 })).reply.counted);
        assert!(
            k.accept(observe("eu", "paris", 3, &StockEvent::Purchased { qty: 1 })).reply.counted,
            "gaps are internal records"
        );
        let dup = k.accept(observe("eu", "paris", 3, &StockEvent::Purchased { qty: 1 }));
        assert!(!dup.reply.counted && dup.events.is_empty());
        assert!(k.accept(observe("eu", "paris", 1, &StockEvent::Restocked { qty: 5 })).events.is_empty());
        // The same seq in another region or store is another event.
        assert!(k.accept(observe("us", "paris", 1, &StockEvent::Restocked { qty: 5 })).reply.counted);
        assert_eq!((k.state().counted, k.state().available()), (3, 9));
    }

    #[test]
    fn regional_catalogs_count_once_each() {
        let mut k = TestKit::new(Availability).with_id("shoe");
        let describe = |region: &str, seq, name: Option<&str>| AvailabilityCommand::Describe {
            region: region.into(),
            seq,
            product: name.map(|n| CatalogProduct { name: n.into(), price: 1.0 }),
        };
        assert!(k.accept(describe("eu", 1, Some("Chaussure"))).reply.counted);
        assert!(k.accept(describe("us", 1, Some("Shoe"))).reply.counted);
        assert!(!k.accept(describe("eu", 1, Some("Chaussure"))).reply.counted);
        k.accept(describe("eu", 2, None));
        assert_eq!(k.state().catalog["eu"].product, None);
        assert_eq!(k.state().catalog["us"].product.as_ref().map(|p| p.name.as_str()), Some("Shoe"));
        assert_eq!(k.replayed_state(), *k.state());
    }
}

/// Where a region's bridge stands in the regional stream (`bridge_offset`,
/// id = the region), kept by the central region: the bridge resumes after it.
pub struct BridgeOffset;

/// The stored position.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetState {
    /// The last stream sequence whose event the central view has taken.
    pub stream_seq: u64,
}

/// Commands of a bridge offset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OffsetCommand {
    /// Moves the position forward (never back).
    Advance {
        /// The new position.
        stream_seq: u64,
    },
    /// Reads it.
    Get,
}

/// Events of a bridge offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetEvent {
    /// Moved.
    Advanced {
        /// To here.
        stream_seq: u64,
    },
}

impl Entity for BridgeOffset {
    const TYPE: &'static str = "bridge_offset";
    type State = OffsetState;
    type Command = OffsetCommand;
    type Event = OffsetEvent;
    type Reply = OffsetState;

    fn handle(
        &self,
        s: &OffsetState,
        c: OffsetCommand,
        _: &mut Ctx,
    ) -> Result<Effect<OffsetEvent, OffsetState>, Rejection> {
        match c {
            OffsetCommand::Advance { stream_seq } if stream_seq > s.stream_seq => {
                Ok(Effect::persist(OffsetEvent::Advanced { stream_seq }, OffsetState { stream_seq }))
            }
            OffsetCommand::Advance { .. } | OffsetCommand::Get => Ok(Effect::reply(*s)),
        }
    }

    fn apply(&self, s: &mut OffsetState, e: &OffsetEvent) {
        let OffsetEvent::Advanced { stream_seq } = e;
        s.stream_seq = *stream_seq;
    }
}

#[cfg(test)]
mod offset_tests {
    use super::*;
    use tessera_entities::TestKit;

    #[test]
    fn an_offset_only_moves_forward() {
        let mut k = TestKit::new(BridgeOffset).with_id("eu");
        assert_eq!(k.accept(OffsetCommand::Advance { stream_seq: 10 }).reply.stream_seq, 10);
        assert!(k.accept(OffsetCommand::Advance { stream_seq: 4 }).events.is_empty());
        assert_eq!(k.state().stream_seq, 10);
    }
}

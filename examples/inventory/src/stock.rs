//! `stock`: the on-hand quantity of one SKU in one store (id `{store}:{sku}`).
//! It never oversells: a purchase or a reservation larger than what is
//! available (on hand, less what orders hold) is rejected, and a store that
//! has never stocked the SKU (an empty journal) rejects with `unknown_sku`.
//!
//! Orders hold units with `reserve` (a per-order reservation with its own
//! expiry timer on the stock, so a reservation never outlives its hold even
//! if the order never comes back), then `commit` or `release` them;
//! `return` puts committed units back (an order compensating).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tessera_entities::{Ctx, Effect, Entity, Rejection};

/// The stock entity.
pub struct Stock;

/// Stock of one SKU in one store.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockState {
    /// Units on hand (never negative), reserved ones included.
    pub on_hand: i64,
    /// Units sold so far (device purchases and committed orders).
    pub sold: u64,
    /// Units received so far.
    pub received: u64,
    /// Units held per order, until committed, released or expired (omitted when none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reservations: BTreeMap<String, u32>,
}

impl StockState {
    /// Units held by orders.
    pub fn reserved(&self) -> i64 {
        self.reservations.values().map(|q| i64::from(*q)).sum()
    }
    /// Units that may be sold or reserved now.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved()
    }
    fn reply(&self) -> StockReply {
        StockReply { on_hand: self.on_hand, reserved: self.reserved() }
    }
}

/// Commands on a stock.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StockCommand {
    /// Receive `qty` units.
    Restock {
        /// Units received (> 0).
        qty: u32,
    },
    /// Sell `qty` units; rejected when fewer are available.
    Purchase {
        /// Units sold (> 0).
        qty: u32,
    },
    /// Correct the count (inventory audit, damage…); never below what orders hold.
    Adjust {
        /// Change of the count.
        delta: i64,
        /// Why.
        reason: String,
    },
    /// Hold `qty` units for `order` for `hold_ms`; rejected when fewer are
    /// available. Holding again for the same order replies what it holds.
    Reserve {
        /// The order (its id).
        order: String,
        /// Units (> 0).
        qty: u32,
        /// How long the hold lasts before it expires by itself.
        hold_ms: u64,
    },
    /// Sell what `order` holds. If the hold expired meanwhile, sells from
    /// what is available, or rejects with `reservation_expired`.
    Commit {
        /// The order.
        order: String,
        /// The units the order expects to buy.
        qty: u32,
    },
    /// Give back what `order` holds (nothing if it holds nothing).
    Release {
        /// The order.
        order: String,
    },
    /// Take back `qty` units `order` bought (an order compensating).
    Return {
        /// The order.
        order: String,
        /// Units returned.
        qty: u32,
    },
    /// The hold timer of `order` (sent by the stock's own timer).
    Expire {
        /// The order.
        order: String,
    },
    /// Read the stock.
    Get,
}

/// Events of a stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StockEvent {
    /// Units received.
    Restocked {
        /// How many.
        qty: u32,
    },
    /// Units sold to a shop customer.
    Purchased {
        /// How many.
        qty: u32,
    },
    /// Count corrected.
    Adjusted {
        /// By how much.
        delta: i64,
        /// Why.
        reason: String,
    },
    /// Units held for an order.
    Reserved {
        /// The order.
        order: String,
        /// How many.
        qty: u32,
    },
    /// Units sold to an order (its hold, or available units if the hold expired).
    Committed {
        /// The order.
        order: String,
        /// How many.
        qty: u32,
        /// Whether they were held (false: the hold had expired).
        #[serde(default = "held")]
        held: bool,
    },
    /// An order's hold given back.
    Released {
        /// The order.
        order: String,
        /// How many.
        qty: u32,
        /// `released` (the order asked) or `expired` (the hold timed out).
        reason: String,
    },
    /// Units an order bought, taken back.
    Returned {
        /// The order.
        order: String,
        /// How many.
        qty: u32,
    },
}

/// The reply to every stock command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StockReply {
    /// Units on hand after the command.
    pub on_hand: i64,
    /// Units held by orders (omitted when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reserved: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn check_qty(qty: u32) -> Result<(), Rejection> {
    if qty == 0 { Err(Rejection::new("invalid_quantity", "qty must be at least 1")) } else { Ok(()) }
}

fn held() -> bool {
    true
}

fn hold_timer(order: &str) -> String {
    format!("hold:{order}")
}

fn insufficient(qty: u32, s: &StockState) -> Rejection {
    let mut details = json!({ "requested": qty, "on_hand": s.on_hand });
    if s.reserved() > 0 {
        details["reserved"] = json!(s.reserved());
    }
    Rejection::new("insufficient_stock", format!("cannot sell {qty}: only {} available", s.available()))
        .with_details(details)
}

/// The state after `e`, for replies that show it.
fn after(s: &StockState, e: &StockEvent) -> StockReply {
    let mut s = s.clone();
    Stock.apply(&mut s, e);
    s.reply()
}

fn persist(s: &StockState, e: StockEvent) -> Effect<StockEvent, StockReply> {
    let reply = after(s, &e);
    Effect::persist(e, reply)
}

impl Entity for Stock {
    const TYPE: &'static str = "stock";
    type State = StockState;
    type Command = StockCommand;
    type Event = StockEvent;
    type Reply = StockReply;

    fn handle(
        &self,
        s: &StockState,
        c: StockCommand,
        ctx: &mut Ctx,
    ) -> Result<Effect<StockEvent, StockReply>, Rejection> {
        let Some((store, sku)) = ctx.entity_id().split_once(':') else {
            return Err(Rejection::new("invalid_id", "a stock id is `{store}:{sku}`"));
        };
        let unknown = || {
            Rejection::new("unknown_sku", format!("store {store} has never stocked {sku}"))
                .with_details(json!({ "store": store, "sku": sku }))
        };
        match c {
            StockCommand::Restock { qty } => {
                check_qty(qty)?;
                Ok(persist(s, StockEvent::Restocked { qty }))
            }
            StockCommand::Purchase { qty } => {
                check_qty(qty)?;
                if ctx.seq() == 0 {
                    return Err(unknown());
                }
                if i64::from(qty) > s.available() {
                    return Err(insufficient(qty, s));
                }
                Ok(persist(s, StockEvent::Purchased { qty }))
            }
            StockCommand::Adjust { delta, reason } => {
                if reason.trim().is_empty() {
                    return Err(Rejection::new("missing_reason", "an adjustment needs a reason"));
                }
                if s.available() + delta < 0 {
                    return Err(Rejection::new(
                        "negative_stock",
                        format!("adjusting by {delta} would leave {} available", s.available() + delta),
                    ));
                }
                Ok(persist(s, StockEvent::Adjusted { delta, reason }))
            }
            StockCommand::Reserve { order, .. } if s.reservations.contains_key(&order) => Ok(Effect::reply(s.reply())),
            StockCommand::Reserve { order, qty, hold_ms } => {
                check_qty(qty)?;
                if ctx.seq() == 0 {
                    return Err(unknown());
                }
                if i64::from(qty) > s.available() {
                    return Err(insufficient(qty, s));
                }
                let at = ctx.after(Duration::from_millis(hold_ms));
                let expire = StockCommand::Expire { order: order.clone() };
                let timer = hold_timer(&order);
                Ok(persist(s, StockEvent::Reserved { order, qty }).and_schedule(&timer, at, &expire))
            }
            StockCommand::Commit { order, qty } => {
                let timer = hold_timer(&order);
                match s.reservations.get(&order) {
                    Some(held) => {
                        let qty = *held;
                        Ok(persist(s, StockEvent::Committed { order, qty, held: true }).and_cancel(&timer))
                    }
                    None if i64::from(qty) <= s.available() && qty > 0 => {
                        Ok(persist(s, StockEvent::Committed { order, qty, held: false }))
                    }
                    None => Err(Rejection::new(
                        "reservation_expired",
                        format!("order {order} holds nothing here and only {} are available", s.available()),
                    )),
                }
            }
            StockCommand::Release { order } => match s.reservations.get(&order) {
                Some(qty) => {
                    let e = StockEvent::Released { qty: *qty, order: order.clone(), reason: "released".into() };
                    Ok(persist(s, e).and_cancel(&hold_timer(&order)))
                }
                None => Ok(Effect::reply(s.reply())),
            },
            StockCommand::Expire { order } => match s.reservations.get(&order) {
                Some(qty) => Ok(persist(s, StockEvent::Released { qty: *qty, order, reason: "expired".into() })),
                None => Ok(Effect::reply(s.reply())),
            },
            StockCommand::Return { order, qty } => {
                check_qty(qty)?;
                Ok(persist(s, StockEvent::Returned { order, qty }))
            }
            StockCommand::Get => Ok(Effect::reply(s.reply())),
        }
    }

    fn apply(&self, s: &mut StockState, e: &StockEvent) {
        match e {
            StockEvent::Restocked { qty } => {
                s.on_hand += i64::from(*qty);
                s.received += u64::from(*qty);
            }
            StockEvent::Purchased { qty } => {
                s.on_hand -= i64::from(*qty);
                s.sold += u64::from(*qty);
            }
            StockEvent::Adjusted { delta, .. } => s.on_hand += delta,
            StockEvent::Reserved { order, qty } => {
                s.reservations.insert(order.clone(), *qty);
            }
            StockEvent::Committed { order, qty, .. } => {
                s.reservations.remove(order);
                s.on_hand -= i64::from(*qty);
                s.sold += u64::from(*qty);
            }
            StockEvent::Released { order, .. } => {
                s.reservations.remove(order);
            }
            StockEvent::Returned { qty, .. } => {
                s.on_hand += i64::from(*qty);
                s.sold = s.sold.saturating_sub(u64::from(*qty));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_entities::TestKit;

    fn kit() -> TestKit<Stock> {
        TestKit::new(Stock).with_id("store-1:sku-1")
    }

    fn reply(on_hand: i64, reserved: i64) -> StockReply {
        StockReply { on_hand, reserved }
    }

    fn reserve(order: &str, qty: u32) -> StockCommand {
        StockCommand::Reserve { order: order.into(), qty, hold_ms: 60_000 }
    }

    #[test]
    fn restock_then_purchase() {
        let mut k = kit();
        assert_eq!(k.accept(StockCommand::Restock { qty: 5 }).reply, reply(5, 0));
        let out = k.accept(StockCommand::Purchase { qty: 3 });
        assert_eq!(out.events, vec![StockEvent::Purchased { qty: 3 }]);
        assert_eq!(k.state(), &StockState { on_hand: 2, sold: 3, received: 5, reservations: BTreeMap::new() });
        assert_eq!(k.replayed_state(), *k.state());
        assert_eq!(k.journal()[1].type_name, "Purchased");
    }

    #[test]
    fn never_oversells() {
        let mut k = kit().given([StockEvent::Restocked { qty: 2 }]);
        let r = k.reject(StockCommand::Purchase { qty: 3 });
        assert_eq!(r.code, "insufficient_stock");
        assert_eq!(r.details, Some(json!({"requested": 3, "on_hand": 2})));
        assert_eq!(k.seq(), 1, "a rejection persists nothing");
        assert_eq!(k.reject(StockCommand::Purchase { qty: 0 }).code, "invalid_quantity");
    }

    #[test]
    fn a_store_that_never_stocked_the_sku_says_so() {
        let mut k = kit();
        let r = k.reject(StockCommand::Purchase { qty: 1 });
        assert_eq!((r.code.as_str(), r.details), ("unknown_sku", Some(json!({"store": "store-1", "sku": "sku-1"}))));
        assert_eq!(k.reject(reserve("o1", 1)).code, "unknown_sku");
        assert_eq!(k.seq(), 0);
    }

    #[test]
    fn adjustments_need_a_reason_and_stay_non_negative() {
        let mut k = kit().given([StockEvent::Restocked { qty: 2 }]);
        assert_eq!(k.reject(StockCommand::Adjust { delta: -1, reason: " ".into() }).code, "missing_reason");
        assert_eq!(k.reject(StockCommand::Adjust { delta: -3, reason: "damaged".into() }).code, "negative_stock");
        assert_eq!(k.accept(StockCommand::Adjust { delta: -2, reason: "damaged".into() }).reply.on_hand, 0);
        assert_eq!(k.accept(StockCommand::Get).events, vec![]);
    }

    #[test]
    fn ids_must_name_store_and_sku() {
        let mut k = TestKit::new(Stock).with_id("no-colon");
        assert_eq!(k.reject(StockCommand::Get).code, "invalid_id");
    }

    #[test]
    fn reserved_units_cannot_be_sold_to_anyone_else() {
        let mut k = kit().given([StockEvent::Restocked { qty: 3 }]);
        let out = k.accept(reserve("o1", 2));
        assert_eq!(out.reply, reply(3, 2));
        assert_eq!(out.scheduled()[0].id, "hold:o1");
        let r = k.reject(StockCommand::Purchase { qty: 2 });
        assert_eq!(
            (r.code.as_str(), r.details),
            ("insufficient_stock", Some(json!({"requested": 2, "on_hand": 3, "reserved": 2})))
        );
        assert_eq!(k.reject(reserve("o2", 2)).code, "insufficient_stock");
        assert_eq!(k.reject(StockCommand::Adjust { delta: -2, reason: "lost".into() }).code, "negative_stock");
        k.accept(StockCommand::Purchase { qty: 1 });
        assert_eq!(k.state().available(), 0);
    }

    #[test]
    fn reserving_again_for_the_same_order_holds_once() {
        let mut k = kit().given([StockEvent::Restocked { qty: 3 }]);
        k.accept(reserve("o1", 2));
        let again = k.accept(reserve("o1", 2));
        assert!(again.events.is_empty() && again.actions.is_empty());
        assert_eq!(k.state().reserved(), 2);
    }

    #[test]
    fn a_commit_sells_the_hold_and_stops_its_timer() {
        let mut k = kit().given([StockEvent::Restocked { qty: 3 }]);
        k.accept(reserve("o1", 2));
        let out = k.accept(StockCommand::Commit { order: "o1".into(), qty: 2 });
        assert_eq!(out.events, vec![StockEvent::Committed { order: "o1".into(), qty: 2, held: true }]);
        assert_eq!(out.reply, reply(1, 0));
        assert!(k.pending_timers().is_empty(), "the hold timer is cancelled");
        assert_eq!(k.state().sold, 2);
        assert!(k.advance(Duration::from_secs(120)).is_empty(), "nothing fires later");
    }

    #[test]
    fn a_hold_expires_by_itself_and_a_late_commit_takes_what_is_available() {
        let mut k = kit().given([StockEvent::Restocked { qty: 3 }]);
        k.accept(reserve("o1", 2));
        let fired = k.advance(Duration::from_secs(61));
        assert_eq!(fired.len(), 1);
        let expired = fired.into_iter().next().unwrap().unwrap();
        assert_eq!(expired.events, vec![StockEvent::Released { order: "o1".into(), qty: 2, reason: "expired".into() }]);
        assert_eq!(k.state().available(), 3, "the reservation does not leak past its hold");
        // A commit after the hold expired sells from what is available…
        let late = k.accept(StockCommand::Commit { order: "o1".into(), qty: 2 });
        assert_eq!(late.events, vec![StockEvent::Committed { order: "o1".into(), qty: 2, held: false }]);
        assert_eq!(k.state().on_hand, 1);
        // …or says the reservation is gone.
        k.accept(reserve("o2", 1));
        k.advance(Duration::from_secs(61));
        k.accept(StockCommand::Purchase { qty: 1 });
        assert_eq!(k.reject(StockCommand::Commit { order: "o2".into(), qty: 1 }).code, "reservation_expired");
    }

    #[test]
    fn release_gives_the_hold_back_and_is_harmless_when_nothing_is_held() {
        let mut k = kit().given([StockEvent::Restocked { qty: 3 }]);
        k.accept(reserve("o1", 3));
        let out = k.accept(StockCommand::Release { order: "o1".into() });
        assert_eq!(out.events, vec![StockEvent::Released { order: "o1".into(), qty: 3, reason: "released".into() }]);
        assert!(k.pending_timers().is_empty());
        assert!(k.accept(StockCommand::Release { order: "o1".into() }).events.is_empty());
        assert!(k.accept(StockCommand::Release { order: "never".into() }).events.is_empty());
        assert_eq!(k.state().available(), 3);
    }

    #[test]
    fn a_return_puts_sold_units_back() {
        let mut k = kit().given([StockEvent::Restocked { qty: 3 }]);
        k.accept(reserve("o1", 2));
        k.accept(StockCommand::Commit { order: "o1".into(), qty: 2 });
        k.accept(StockCommand::Return { order: "o1".into(), qty: 2 });
        assert_eq!((k.state().on_hand, k.state().sold), (3, 0));
        assert_eq!(k.replayed_state(), *k.state());
    }
}

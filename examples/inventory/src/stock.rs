//! `stock`: the on-hand quantity of one SKU in one store (id `{store}:{sku}`).
//! It never oversells: a purchase larger than what is on hand is rejected.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tessera_entities::{Ctx, Effect, Entity, Rejection};

/// The stock entity.
pub struct Stock;

/// Stock of one SKU in one store.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockState {
    /// Units on hand (never negative).
    pub on_hand: i64,
    /// Units sold so far.
    pub sold: u64,
    /// Units received so far.
    pub received: u64,
}

/// Commands on a stock.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StockCommand {
    /// Receive `qty` units.
    Restock {
        /// Units received (> 0).
        qty: u32,
    },
    /// Sell `qty` units; rejected when fewer are on hand.
    Purchase {
        /// Units sold (> 0).
        qty: u32,
    },
    /// Correct the count (inventory audit, damage…); never below zero.
    Adjust {
        /// Change of the count.
        delta: i64,
        /// Why.
        reason: String,
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
    /// Units sold.
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
}

/// The reply to every stock command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReply {
    /// Units on hand after the command.
    pub on_hand: i64,
}

fn check_qty(qty: u32) -> Result<(), Rejection> {
    if qty == 0 { Err(Rejection::new("invalid_quantity", "qty must be at least 1")) } else { Ok(()) }
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
        if !ctx.entity_id().contains(':') {
            return Err(Rejection::new("invalid_id", "a stock id is `{store}:{sku}`"));
        }
        match c {
            StockCommand::Restock { qty } => {
                check_qty(qty)?;
                Ok(Effect::persist(StockEvent::Restocked { qty }, StockReply { on_hand: s.on_hand + i64::from(qty) }))
            }
            StockCommand::Purchase { qty } => {
                check_qty(qty)?;
                if i64::from(qty) > s.on_hand {
                    return Err(Rejection::new(
                        "insufficient_stock",
                        format!("cannot sell {qty}: only {} on hand", s.on_hand),
                    )
                    .with_details(json!({ "requested": qty, "on_hand": s.on_hand })));
                }
                Ok(Effect::persist(StockEvent::Purchased { qty }, StockReply { on_hand: s.on_hand - i64::from(qty) }))
            }
            StockCommand::Adjust { delta, reason } => {
                if reason.trim().is_empty() {
                    return Err(Rejection::new("missing_reason", "an adjustment needs a reason"));
                }
                if s.on_hand + delta < 0 {
                    return Err(Rejection::new(
                        "negative_stock",
                        format!("adjusting by {delta} would leave {} on hand", s.on_hand + delta),
                    ));
                }
                Ok(Effect::persist(StockEvent::Adjusted { delta, reason }, StockReply { on_hand: s.on_hand + delta }))
            }
            StockCommand::Get => Ok(Effect::reply(StockReply { on_hand: s.on_hand })),
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

    #[test]
    fn restock_then_purchase() {
        let mut k = kit();
        assert_eq!(k.accept(StockCommand::Restock { qty: 5 }).reply, StockReply { on_hand: 5 });
        let out = k.accept(StockCommand::Purchase { qty: 3 });
        assert_eq!(out.events, vec![StockEvent::Purchased { qty: 3 }]);
        assert_eq!(k.state(), &StockState { on_hand: 2, sold: 3, received: 5 });
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
}

//! `customer`: a customer's purchase history, recorded by the orders that
//! confirm (each order once: it is a message, delivered exactly once, and
//! recording an order already recorded changes nothing).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, Effect, Entity, Rejection};

use crate::order::OrderLine;

/// The customer entity.
pub struct Customer;

/// How many orders the history keeps (the counters count all of them).
pub const HISTORY: usize = 50;

/// A customer's state.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerState {
    /// Orders confirmed.
    pub orders: u64,
    /// Units bought.
    pub units: u64,
    /// The latest orders, newest last.
    pub history: VecDeque<PurchaseRecord>,
}

/// One confirmed order in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurchaseRecord {
    /// The order's id.
    pub order: String,
    /// What it bought.
    pub lines: Vec<OrderLine>,
}

/// Commands of a customer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CustomerCommand {
    /// A confirmed order (sent by the order).
    Record {
        /// The order's id.
        order: String,
        /// What it bought.
        lines: Vec<OrderLine>,
    },
    /// Reads the history.
    Get,
}

/// Events of a customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CustomerEvent {
    /// An order confirmed.
    Purchased(PurchaseRecord),
}

impl Entity for Customer {
    const TYPE: &'static str = "customer";
    type State = CustomerState;
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Reply = CustomerState;

    fn handle(
        &self,
        s: &CustomerState,
        c: CustomerCommand,
        _: &mut Ctx,
    ) -> Result<Effect<CustomerEvent, CustomerState>, Rejection> {
        match c {
            CustomerCommand::Record { order, .. } if s.history.iter().any(|r| r.order == order) => {
                Ok(Effect::reply(s.clone()))
            }
            CustomerCommand::Record { order, lines } => {
                let e = CustomerEvent::Purchased(PurchaseRecord { order, lines });
                let mut next = s.clone();
                self.apply(&mut next, &e);
                Ok(Effect::persist(e, next))
            }
            CustomerCommand::Get => Ok(Effect::reply(s.clone())),
        }
    }

    fn apply(&self, s: &mut CustomerState, e: &CustomerEvent) {
        let CustomerEvent::Purchased(r) = e;
        s.orders += 1;
        s.units += r.lines.iter().map(|l| u64::from(l.qty)).sum::<u64>();
        s.history.push_back(r.clone());
        while s.history.len() > HISTORY {
            s.history.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_entities::TestKit;

    fn record(order: &str, qty: u32) -> CustomerCommand {
        CustomerCommand::Record {
            order: order.into(),
            lines: vec![OrderLine { store: "paris".into(), sku: "shoe".into(), qty }],
        }
    }

    #[test]
    fn keeps_history_and_counts() {
        let mut k = TestKit::new(Customer).with_id("c1");
        k.accept(record("o1", 2));
        k.accept(record("o2", 1));
        assert_eq!((k.state().orders, k.state().units), (2, 3));
        assert!(k.accept(record("o2", 1)).events.is_empty(), "an order is recorded once");
        for i in 0..100 {
            k.accept(record(&format!("x{i}"), 1));
        }
        assert_eq!(k.state().history.len(), HISTORY);
        assert_eq!(k.state().orders, 102);
        assert_eq!(k.replayed_state(), *k.state());
    }
}

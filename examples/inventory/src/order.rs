//! `order`: a customer's order across stores, a saga over [`crate::Stock`]
//! entities driven by messages only.
//!
//! `place` asks every line's stock to `reserve` (one reservation per
//! order on each stock) and sets the order's deadline. When every line
//! holds, the order asks each stock to `commit`; when every commit is in,
//! it is `confirmed` and the customer's history records it. A refused
//! reservation or the deadline compensates: every line's stock is told to
//! `release` (a no-op where nothing is held; messages from one entity to
//! another arrive in send order, so a release always follows its
//! reservation). A refused commit compensates too: committed lines are
//! `return`ed, and so is any commit that comes back afterwards.
//!
//! Invariant: an order ends `confirmed` (every line sold once) or
//! `compensated` (every unit it held or bought given back), and no
//! reservation outlives the order's deadline by more than the stock's own
//! hold (twice the deadline), even if the order never came back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, Effect, Entity, EntityRef, Rejection, Response};

use crate::customer::CustomerCommand;
use crate::stock::{StockCommand, StockReply};

/// The order entity.
pub struct Order;

/// The most lines one order may have.
pub const MAX_LINES: usize = 50;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// The store that sells it.
    pub store: String,
    /// The SKU.
    pub sku: String,
    /// Units (> 0).
    pub qty: u32,
}

impl OrderLine {
    /// The id of the line's stock entity, `{store}:{sku}`.
    pub fn stock_id(&self) -> String {
        format!("{}:{}", self.store, self.sku)
    }
}

/// Where an order stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not placed.
    #[default]
    New,
    /// Waiting for the reservations.
    Reserving,
    /// Every line holds; waiting for the commits.
    Confirming,
    /// Every line sold.
    Confirmed,
    /// Given back (a refused reservation or commit, or the deadline).
    Compensated,
}

/// An order's state.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderState {
    /// The customer's id.
    pub customer: String,
    /// Lines by stock id (lines of the same stock merged).
    pub lines: BTreeMap<String, OrderLine>,
    /// Where it stands.
    pub status: OrderStatus,
    /// Stocks that hold their line.
    pub reserved: BTreeSet<String>,
    /// Stocks that sold their line (and have not taken it back).
    pub committed: BTreeSet<String>,
    /// Why it was compensated.
    pub reason: Option<String>,
}

/// Commands of an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OrderCommand {
    /// Places the order (again: replies where it stands).
    Place {
        /// The customer's id.
        customer: String,
        /// What to buy, where.
        lines: Vec<OrderLine>,
        /// The deadline for every reservation to hold, ms (default 30 s).
        #[serde(default = "default_hold_ms")]
        hold_ms: u64,
    },
    /// A stock's answer to `reserve`.
    Reserved(Response<StockReply>),
    /// A stock's answer to `commit`.
    Committed(Response<StockReply>),
    /// The deadline (the order's own timer).
    Expire,
    /// Reads where it stands.
    Get,
}

fn default_hold_ms() -> u64 {
    30_000
}

/// Events of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// Placed.
    Placed {
        /// The customer.
        customer: String,
        /// The lines, merged per stock.
        lines: Vec<OrderLine>,
    },
    /// A stock holds its line.
    LineReserved {
        /// The stock's id.
        stock: String,
    },
    /// Every line holds; commits asked.
    Confirming,
    /// A stock sold its line.
    LineCommitted {
        /// The stock's id.
        stock: String,
    },
    /// Every line sold.
    Confirmed,
    /// Given back: releases (and returns of committed lines) sent.
    Compensated {
        /// Why.
        reason: String,
    },
    /// A line sold after the order was compensated, sent back.
    LineReturned {
        /// The stock's id.
        stock: String,
    },
}

/// The reply to every order command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// Where it stands.
    pub status: OrderStatus,
    /// Why it was compensated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn stock(id: &str) -> EntityRef {
    EntityRef::new(crate::Stock::TYPE, id)
}

/// The stock id of a response's correlation (`stock/{id}`).
fn answered_by(correlation: &str) -> &str {
    correlation.strip_prefix("stock/").unwrap_or(correlation)
}

fn check(customer: &str, lines: &[OrderLine]) -> Result<BTreeMap<String, OrderLine>, Rejection> {
    if customer.trim().is_empty() {
        return Err(Rejection::new("invalid_customer", "an order needs a customer"));
    }
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Err(Rejection::new("invalid_lines", format!("an order has 1 to {MAX_LINES} lines")));
    }
    let mut merged: BTreeMap<String, OrderLine> = BTreeMap::new();
    for l in lines {
        if l.qty == 0 {
            return Err(Rejection::new("invalid_quantity", format!("{}:{} asks for 0 units", l.store, l.sku)));
        }
        let bad = |s: &str| s.is_empty() || s.contains([':', '/']) || s.contains(char::is_whitespace);
        if bad(&l.store) || bad(&l.sku) {
            return Err(Rejection::new("invalid_line", "store and sku are non-empty, without ':', '/' or spaces"));
        }
        let line = merged.entry(l.stock_id()).or_insert_with(|| OrderLine { qty: 0, ..l.clone() });
        line.qty = line.qty.checked_add(l.qty).ok_or_else(|| Rejection::new("invalid_quantity", "too many units"))?;
    }
    Ok(merged)
}

type Out = Effect<OrderEvent, OrderView>;

impl Order {
    fn view(s: &OrderState) -> OrderView {
        OrderView { status: s.status, reason: s.reason.clone() }
    }

    /// Persists `events` and replies with the state they lead to.
    fn persist(s: &OrderState, events: Vec<OrderEvent>) -> Out {
        let mut next = s.clone();
        for e in &events {
            Order.apply(&mut next, e);
        }
        Effect::persist_all(events, Self::view(&next))
    }

    /// Compensates while reserving: every line's stock releases the order.
    fn release_all(s: &OrderState, order: &str, reason: String) -> Out {
        let release = StockCommand::Release { order: order.to_owned() };
        s.lines
            .keys()
            .fold(Self::persist(s, vec![OrderEvent::Compensated { reason }]), |e, id| e.and_send(stock(id), &release))
            .and_cancel("expire")
    }
}

impl Entity for Order {
    const TYPE: &'static str = "order";
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Reply = OrderView;

    fn handle(&self, s: &OrderState, c: OrderCommand, ctx: &mut Ctx) -> Result<Out, Rejection> {
        let order = ctx.entity_id().to_owned();
        match (c, s.status) {
            (OrderCommand::Place { customer, lines, hold_ms }, OrderStatus::New) => {
                let lines = check(&customer, &lines)?;
                let placed = OrderEvent::Placed { customer, lines: lines.values().cloned().collect() };
                // The stock's own hold outlasts the order's deadline, so the
                // order (not the stock) normally decides.
                let stock_hold = hold_ms.saturating_mul(2);
                let effect = lines.iter().fold(Self::persist(s, vec![placed]), |e, (id, l)| {
                    let reserve = StockCommand::Reserve { order: order.clone(), qty: l.qty, hold_ms: stock_hold };
                    e.and_ask(stock(id), &reserve, "reserved")
                });
                Ok(effect.and_schedule("expire", ctx.after(Duration::from_millis(hold_ms)), &OrderCommand::Expire))
            }
            (OrderCommand::Place { .. }, _) => Ok(Effect::reply(Self::view(s))),
            (OrderCommand::Reserved(r), OrderStatus::Reserving) => {
                let id = answered_by(&r.correlation).to_owned();
                match r.result {
                    Err(refused) => Ok(Self::release_all(s, &order, format!("{id}: {}", refused.code))),
                    Ok(_) if !s.lines.contains_key(&id) || s.reserved.contains(&id) => Ok(Effect::reply(Self::view(s))),
                    Ok(_) if s.reserved.len() + 1 < s.lines.len() => {
                        Ok(Self::persist(s, vec![OrderEvent::LineReserved { stock: id }]))
                    }
                    Ok(_) => {
                        let events = vec![OrderEvent::LineReserved { stock: id }, OrderEvent::Confirming];
                        let effect = s.lines.iter().fold(Self::persist(s, events), |e, (id, l)| {
                            e.and_ask(
                                stock(id),
                                &StockCommand::Commit { order: order.clone(), qty: l.qty },
                                "committed",
                            )
                        });
                        Ok(effect.and_cancel("expire"))
                    }
                }
            }
            (OrderCommand::Expire, OrderStatus::Reserving) => Ok(Self::release_all(s, &order, "expired".into())),
            (OrderCommand::Committed(r), OrderStatus::Confirming) => {
                let id = answered_by(&r.correlation).to_owned();
                match r.result {
                    Ok(_) if s.committed.len() + 1 < s.lines.len() => {
                        Ok(Self::persist(s, vec![OrderEvent::LineCommitted { stock: id }]))
                    }
                    Ok(_) => {
                        let events = vec![OrderEvent::LineCommitted { stock: id }, OrderEvent::Confirmed];
                        let record = CustomerCommand::Record { order, lines: s.lines.values().cloned().collect() };
                        let customer = EntityRef::new(crate::Customer::TYPE, &s.customer);
                        Ok(Self::persist(s, events).and_send(customer, &record))
                    }
                    Err(refused) => {
                        let reason = format!("{id}: {}", refused.code);
                        Ok(s.committed.iter().fold(
                            Self::persist(s, vec![OrderEvent::Compensated { reason }]),
                            |e, id| {
                                let qty = s.lines[id].qty;
                                e.and_send(stock(id), &StockCommand::Return { order: order.clone(), qty })
                            },
                        ))
                    }
                }
            }
            // A commit that comes back after another was refused: give it back.
            (OrderCommand::Committed(r), OrderStatus::Compensated) if r.result.is_ok() => {
                let id = answered_by(&r.correlation).to_owned();
                let Some(line) = s.lines.get(&id) else { return Ok(Effect::reply(Self::view(s))) };
                let ret = StockCommand::Return { order, qty: line.qty };
                Ok(Self::persist(s, vec![OrderEvent::LineReturned { stock: id.clone() }]).and_send(stock(&id), &ret))
            }
            // Late answers and deadlines after the order moved on change nothing:
            // a late reservation is released by the release that follows it.
            (OrderCommand::Reserved(_) | OrderCommand::Committed(_) | OrderCommand::Expire | OrderCommand::Get, _) => {
                Ok(Effect::reply(Self::view(s)))
            }
        }
    }

    fn apply(&self, s: &mut OrderState, e: &OrderEvent) {
        match e {
            OrderEvent::Placed { customer, lines } => {
                s.customer.clone_from(customer);
                s.lines = lines.iter().map(|l| (l.stock_id(), l.clone())).collect();
                s.status = OrderStatus::Reserving;
            }
            OrderEvent::LineReserved { stock } => {
                s.reserved.insert(stock.clone());
            }
            OrderEvent::Confirming => s.status = OrderStatus::Confirming,
            OrderEvent::LineCommitted { stock } => {
                s.committed.insert(stock.clone());
            }
            OrderEvent::Confirmed => s.status = OrderStatus::Confirmed,
            OrderEvent::Compensated { reason } => {
                s.status = OrderStatus::Compensated;
                s.reason = Some(reason.clone());
                // Committed lines are returned with the compensation.
                s.committed.clear();
            }
            OrderEvent::LineReturned { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_entities::{Message, TestKit};

    fn line(store: &str, sku: &str, qty: u32) -> OrderLine {
        OrderLine { store: store.into(), sku: sku.into(), qty }
    }

    fn place(lines: Vec<OrderLine>) -> OrderCommand {
        OrderCommand::Place { customer: "c1".into(), lines, hold_ms: 10_000 }
    }

    fn ok(stock: &str) -> Response<StockReply> {
        Response { correlation: format!("stock/{stock}"), result: Ok(StockReply::default()) }
    }

    fn refused(stock: &str, code: &str) -> Response<StockReply> {
        Response { correlation: format!("stock/{stock}"), result: Err(Rejection::new(code, "no")) }
    }

    fn placed() -> TestKit<Order> {
        let mut k = TestKit::new(Order).with_id("o1");
        k.accept(place(vec![line("paris", "shoe", 1), line("lyon", "shoe", 2)]));
        k
    }

    /// (target, command name) of each message.
    fn sent(m: &[&Message]) -> Vec<(String, String)> {
        m.iter().map(|m| (m.target.to_string(), m.command.name.clone())).collect()
    }

    #[test]
    fn placing_reserves_every_line_and_sets_a_deadline() {
        let mut k = TestKit::new(Order).with_id("o1");
        let out = k.accept(place(vec![line("paris", "shoe", 1), line("lyon", "shoe", 2), line("paris", "shoe", 1)]));
        assert_eq!(out.reply.status, OrderStatus::Reserving);
        let asked = out.sent();
        assert_eq!(
            sent(&asked),
            vec![("stock/lyon:shoe".into(), "reserve".into()), ("stock/paris:shoe".into(), "reserve".into())]
        );
        assert_eq!(asked[1].command.payload_json()["qty"], 2, "lines of one stock are merged");
        assert_eq!(asked[1].command.payload_json()["hold_ms"], 20_000, "the stock holds twice the deadline");
        assert_eq!(asked[0].reply_to.as_deref(), Some("reserved"));
        assert_eq!(out.scheduled()[0].at_ms, 10_000);
        // Placing again changes nothing.
        let again = k.accept(place(vec![line("x", "y", 1)]));
        assert!(again.events.is_empty() && again.actions.is_empty());
    }

    #[test]
    fn bad_orders_are_refused_before_anything_is_held() {
        let mut k = TestKit::new(Order).with_id("o1");
        assert_eq!(k.reject(place(vec![])).code, "invalid_lines");
        assert_eq!(k.reject(place(vec![line("paris", "shoe", 0)])).code, "invalid_quantity");
        assert_eq!(k.reject(place(vec![line("pa:ris", "shoe", 1)])).code, "invalid_line");
        let no_customer = OrderCommand::Place { customer: " ".into(), lines: vec![line("a", "b", 1)], hold_ms: 1 };
        assert_eq!(k.reject(no_customer).code, "invalid_customer");
        assert_eq!(k.seq(), 0);
    }

    #[test]
    fn when_every_line_holds_it_commits_and_then_confirms() {
        let mut k = placed();
        assert!(k.accept(OrderCommand::Reserved(ok("paris:shoe"))).actions.is_empty());
        let out = k.accept(OrderCommand::Reserved(ok("lyon:shoe")));
        assert_eq!(out.reply.status, OrderStatus::Confirming);
        assert_eq!(sent(&out.sent()).iter().filter(|(_, c)| c == "commit").count(), 2);
        assert!(k.pending_timers().is_empty(), "the deadline is off once every line holds");
        k.accept(OrderCommand::Committed(ok("lyon:shoe")));
        let out = k.accept(OrderCommand::Committed(ok("paris:shoe")));
        assert_eq!(out.reply, OrderView { status: OrderStatus::Confirmed, reason: None });
        assert_eq!(sent(&out.sent()), vec![("customer/c1".into(), "record".into())]);
        assert_eq!(k.replayed_state(), *k.state());
    }

    #[test]
    fn a_refused_reservation_releases_every_line() {
        let mut k = placed();
        k.accept(OrderCommand::Reserved(ok("paris:shoe")));
        let out = k.accept(OrderCommand::Reserved(refused("lyon:shoe", "insufficient_stock")));
        assert_eq!(out.reply.status, OrderStatus::Compensated);
        assert_eq!(out.reply.reason.as_deref(), Some("lyon:shoe: insufficient_stock"));
        assert_eq!(
            sent(&out.sent()),
            vec![("stock/lyon:shoe".into(), "release".into()), ("stock/paris:shoe".into(), "release".into())]
        );
        assert!(k.pending_timers().is_empty());
    }

    #[test]
    fn the_deadline_releases_what_is_held_and_late_answers_change_nothing() {
        let mut k = placed();
        k.accept(OrderCommand::Reserved(ok("paris:shoe")));
        let fired = k.advance(Duration::from_secs(11));
        let out = fired.into_iter().next().unwrap().unwrap();
        assert_eq!(out.reply.reason.as_deref(), Some("expired"));
        assert_eq!(out.sent().len(), 2, "both stocks release (lyon's reservation may still arrive)");
        let late = k.accept(OrderCommand::Reserved(ok("lyon:shoe")));
        assert!(late.events.is_empty() && late.actions.is_empty(), "the release already queued frees it");
        assert_eq!(k.state().status, OrderStatus::Compensated);
    }

    #[test]
    fn a_refused_commit_returns_what_was_sold_and_what_is_sold_later() {
        let mut k = placed();
        k.accept(OrderCommand::Reserved(ok("paris:shoe")));
        k.accept(OrderCommand::Reserved(ok("lyon:shoe")));
        k.accept(OrderCommand::Committed(ok("paris:shoe")));
        let out = k.accept(OrderCommand::Committed(refused("lyon:shoe", "reservation_expired")));
        assert_eq!(out.reply.status, OrderStatus::Compensated);
        let returns = out.sent();
        assert_eq!(sent(&returns), vec![("stock/paris:shoe".into(), "return".into())]);
        assert_eq!(returns[0].command.payload_json(), serde_json::json!({"order": "o1", "qty": 1}));

        // Three lines: one commit refused while another is still out.
        let mut k = TestKit::new(Order).with_id("o2");
        k.accept(place(vec![line("a", "s", 1), line("b", "s", 1), line("c", "s", 3)]));
        for st in ["a:s", "b:s", "c:s"] {
            k.accept(OrderCommand::Reserved(ok(st)));
        }
        k.accept(OrderCommand::Committed(refused("a:s", "reservation_expired")));
        let late = k.accept(OrderCommand::Committed(ok("c:s")));
        assert_eq!(late.events, vec![OrderEvent::LineReturned { stock: "c:s".into() }]);
        assert_eq!(late.sent()[0].command.payload_json()["qty"], 3);
    }
}

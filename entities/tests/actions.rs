//! Handlers that send messages, ask for replies and set timers stay pure:
//! the test kit shows what they asked for and moves virtual time to fire
//! timers. The entity is a small order that reserves stock in two stores,
//! confirms when both hold, compensates on a refusal and expires.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, Effect, Entity, EntityRef, Rejection, Response, TestKit};

struct Order;

#[derive(Default, Serialize, Deserialize)]
struct State {
    stores: Vec<String>,
    held: Vec<String>,
    status: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Command {
    Place { stores: Vec<String>, qty: u32 },
    Reserved(Response<u32>),
    Expire,
}

/// The stock entity's commands, as the order sends them.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StockCommand {
    Reserve { order: String, qty: u32 },
    Release { order: String },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Event {
    Placed { stores: Vec<String> },
    Held { store: String },
    Confirmed,
    Compensated { reason: String },
    Expired,
}

fn stock(store: &str) -> EntityRef {
    EntityRef::new("stock", format!("{store}:sku-1"))
}

impl Order {
    fn release(held: &[String], order: &str, effect: Effect<Event, String>) -> Effect<Event, String> {
        held.iter().fold(effect, |e, s| e.and_send(stock(s), &StockCommand::Release { order: order.to_owned() }))
    }
}

impl Entity for Order {
    const TYPE: &'static str = "order";
    type State = State;
    type Command = Command;
    type Event = Event;
    type Reply = String;

    fn handle(&self, s: &State, c: Command, ctx: &mut Ctx) -> Result<Effect<Event, String>, Rejection> {
        let order = ctx.entity_id().to_owned();
        match c {
            Command::Place { stores, qty } => {
                let placed = Effect::persist(Event::Placed { stores: stores.clone() }, "placed".into());
                let asked = stores.iter().fold(placed, |e, st| {
                    e.and_ask(stock(st), &StockCommand::Reserve { order: order.clone(), qty }, "reserved")
                });
                Ok(asked.and_schedule("expire", ctx.after(Duration::from_secs(30)), &Command::Expire))
            }
            Command::Reserved(_) if s.status != "placed" => Ok(Effect::reply(s.status.clone())),
            Command::Reserved(Response { correlation, result: Ok(_) }) => {
                // The correlation of an `and_ask` is the target, `stock/STORE:SKU`.
                let store = correlation.trim_start_matches("stock/").split(':').next().unwrap_or_default().to_owned();
                let mut events = vec![Event::Held { store }];
                if s.held.len() + 1 == s.stores.len() {
                    events.push(Event::Confirmed);
                    return Ok(Effect::persist_all(events, "confirmed".into()).and_cancel("expire"));
                }
                Ok(Effect::persist_all(events, "holding".into()))
            }
            Command::Reserved(Response { result: Err(r), .. }) => {
                let e = Effect::persist(Event::Compensated { reason: r.code }, "compensated".into());
                Ok(Self::release(&s.held, &order, e).and_cancel("expire"))
            }
            Command::Expire if s.status == "placed" => {
                Ok(Self::release(&s.held, &order, Effect::persist(Event::Expired, "expired".into())))
            }
            Command::Expire => Ok(Effect::reply(s.status.clone())),
        }
    }

    fn apply(&self, s: &mut State, e: &Event) {
        match e {
            Event::Placed { stores } => (s.stores, s.status) = (stores.clone(), "placed".into()),
            Event::Held { store } => s.held.push(store.clone()),
            Event::Confirmed => s.status = "confirmed".into(),
            Event::Compensated { .. } => s.status = "compensated".into(),
            Event::Expired => s.status = "expired".into(),
        }
    }
}

fn placed() -> TestKit<Order> {
    let mut kit = TestKit::new(Order).with_id("o-1");
    kit.set_time(1_000);
    let out = kit.accept(Command::Place { stores: vec!["berlin".into(), "paris".into()], qty: 2 });
    let sent = out.sent();
    assert_eq!(sent.len(), 2, "one reservation per store");
    assert_eq!(sent[0].target, stock("berlin"));
    assert_eq!(sent[0].reply_to.as_deref(), Some("reserved"));
    assert_eq!(sent[0].correlation.as_deref(), Some("stock/berlin:sku-1"));
    assert_eq!(
        sent[1].command.decode::<StockCommand>().unwrap(),
        StockCommand::Reserve { order: "o-1".into(), qty: 2 }
    );
    assert_eq!(out.scheduled()[0].at_ms, 31_000, "expires 30 s after placing");
    kit
}

fn ok(store: &str) -> Command {
    Command::Reserved(Response { correlation: stock(store).to_string(), result: Ok(2) })
}

#[test]
fn both_reservations_confirm_the_order_and_cancel_its_expiry() {
    let mut kit = placed();
    assert_eq!(kit.accept(ok("berlin")).reply, "holding");
    let out = kit.accept(ok("paris"));
    assert_eq!(out.events, vec![Event::Held { store: "paris".into() }, Event::Confirmed]);
    assert!(kit.pending_timers().is_empty(), "the expiry timer is cancelled");
    assert!(kit.advance(Duration::from_secs(60)).is_empty(), "nothing fires");
    assert_eq!(kit.state().status, "confirmed");
}

#[test]
fn a_refused_reservation_releases_what_was_held() {
    let mut kit = placed();
    kit.accept(ok("berlin"));
    let refused = Rejection::new("insufficient_stock", "only 1 left");
    let out = kit.accept(Command::Reserved(Response { correlation: stock("paris").to_string(), result: Err(refused) }));
    assert_eq!(out.events, vec![Event::Compensated { reason: "insufficient_stock".into() }]);
    let released: Vec<_> = out.sent().iter().map(|m| (m.target.clone(), m.command.name.clone())).collect();
    assert_eq!(released, vec![(stock("berlin"), "release".to_owned())]);
    assert_eq!(kit.outbox().len(), 3, "two reservations, one release, in send order");
}

#[test]
fn an_unconfirmed_order_expires_on_time_and_not_before() {
    let mut kit = placed();
    kit.accept(ok("berlin"));
    assert!(kit.advance(Duration::from_millis(29_999)).is_empty(), "not early");
    let fired = kit.advance(Duration::from_millis(1));
    assert_eq!(fired.len(), 1, "fires once, at its due time");
    let out = fired.into_iter().next().unwrap().expect("accepted");
    assert_eq!(out.events, vec![Event::Expired]);
    assert_eq!(out.sent()[0].command.name, "release");
    assert_eq!(kit.now_ms(), 31_000);
    assert!(kit.advance(Duration::from_secs(60)).is_empty(), "and never again");
}

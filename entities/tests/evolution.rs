//! Schema evolution: events written by an older version replay through the
//! upcast hook; events of a newer version fail with a clear error.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tessera_entities::{Ctx, Effect, Entity, OldEvent, Registry, Rejection, ReplayError, StoredEvent, UpcastError};

struct Account;

#[derive(Default, Serialize, Deserialize)]
struct State {
    cents: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Command {
    Deposit { cents: i64 },
}

/// Version 2: amounts in cents. Version 1 stored `Deposited { dollars }`.
#[derive(Serialize, Deserialize)]
enum Event {
    Deposited { cents: i64 },
}

impl Entity for Account {
    const TYPE: &'static str = "account";
    const EVENT_VERSION: u32 = 2;
    type State = State;
    type Command = Command;
    type Event = Event;
    type Reply = i64;

    fn handle(&self, s: &State, c: Command, _: &mut Ctx) -> Result<Effect<Event, i64>, Rejection> {
        let Command::Deposit { cents } = c;
        Ok(Effect::persist(Event::Deposited { cents }, s.cents + cents))
    }
    fn apply(&self, s: &mut State, e: &Event) {
        let Event::Deposited { cents } = e;
        s.cents += cents;
    }
    fn upcast(&self, old: OldEvent) -> Result<serde_json::Value, UpcastError> {
        match (old.type_name.as_str(), old.version) {
            ("Deposited", 1) => {
                let dollars =
                    old.value["Deposited"]["dollars"].as_i64().ok_or(UpcastError::Failed("no dollars".into()))?;
                Ok(json!({"Deposited": {"cents": dollars * 100}}))
            }
            _ => Err(UpcastError::Unsupported { type_name: old.type_name, version: old.version }),
        }
    }
}

fn stored(seq: u64, version: u32, payload: &[u8]) -> StoredEvent<'_> {
    StoredEvent { seq, type_name: "Deposited", version, payload }
}

#[test]
fn old_events_are_upcast_and_newer_ones_refused() {
    let registry = Registry::builder().entity(Account).build().unwrap();
    let account = registry.entity("account").unwrap();
    let mut state = account.initial_state();

    let v1 = rmp_serde::to_vec_named(&json!({"Deposited": {"dollars": 3}})).unwrap();
    account.apply_stored(&mut state, stored(1, 1, &v1)).unwrap();
    let v2 = rmp_serde::to_vec_named(&json!({"Deposited": {"cents": 50}})).unwrap();
    account.apply_stored(&mut state, stored(2, 2, &v2)).unwrap();
    assert_eq!(account.state_json(&state), json!({"cents": 350}));

    let err = account.apply_stored(&mut state, stored(3, 3, &v2)).unwrap_err();
    assert!(matches!(err, ReplayError::NewerVersion { seq: 3, found: 3, supported: 2, .. }));
    assert!(err.to_string().contains("upgrade the code"), "{err}");

    let err = account.apply_stored(&mut state, stored(4, 2, b"\xc1")).unwrap_err();
    assert!(matches!(err, ReplayError::Decode { seq: 4, .. }), "{err}");
    assert_eq!(account.state_json(&state), json!({"cents": 350}), "failed events change nothing");
}

#[test]
fn registration_checks_names() {
    struct Dotted;
    impl Entity for Dotted {
        const TYPE: &'static str = "has.dot";
        type State = State;
        type Command = Command;
        type Event = Event;
        type Reply = i64;
        fn handle(&self, _: &State, _: Command, _: &mut Ctx) -> Result<Effect<Event, i64>, Rejection> {
            Ok(Effect::reply(0))
        }
        fn apply(&self, _: &mut State, _: &Event) {}
    }
    let err = Registry::builder().entity(Dotted).build().unwrap_err();
    assert!(err.to_string().contains("no dots"), "{err}");
    let err = Registry::builder().entity(Account).entity(Account).build().unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

//! The shard's decisions and state machine, without an actor or a journal:
//! commands go in, replies and requested IO come out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tessera_entities::{Ctx, DynEntity, Effect, Entity, Format, Registry, Rejection};
use tessera_journal::{AppendAck, EntityKey, MemoryJournal};
use tokio::sync::oneshot;

use super::activation::Rebuilt;
use super::dedup::{DedupLimits, DedupWindow};
use super::machine::{Io, Machine, Work};
use super::step::{self, Decision, Lease, Record};
use super::{CommandReply, CommandRequest, ShardContext, StateRequest, StateView};
use crate::envelope::{DedupEntry, EventMeta};
use crate::error::InvokeError;
use crate::metrics::Metrics;

struct Tally;
#[derive(Default, Serialize, Deserialize)]
struct Count {
    n: u64,
}
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Cmd {
    Add,
    Refuse,
    Boom,
    Get,
    Ping,
    /// Persists an event whose apply panics.
    Bad,
}
#[derive(Serialize, Deserialize)]
enum Ev {
    Added,
    Bad,
}
impl Entity for Tally {
    const TYPE: &'static str = "tally";
    type State = Count;
    type Command = Cmd;
    type Event = Ev;
    type Reply = u64;
    fn handle(&self, s: &Count, c: Cmd, _: &mut Ctx) -> Result<Effect<Ev, u64>, Rejection> {
        match c {
            Cmd::Add => Ok(Effect::persist(Ev::Added, s.n + 1)),
            Cmd::Refuse => Err(Rejection::new("no", "refused")),
            Cmd::Boom => panic!("boom"),
            Cmd::Get => Ok(Effect::reply(s.n)),
            Cmd::Ping => Ok(Effect::persist(Ev::Added, s.n + 1)
                .and_send(tessera_entities::EntityRef::new("tally", "other"), &serde_json::json!("add"))),
            Cmd::Bad => Ok(Effect::persist(Ev::Bad, 0)),
        }
    }
    fn apply(&self, s: &mut Count, e: &Ev) {
        match e {
            Ev::Added => s.n += 1,
            Ev::Bad => panic!("bad event"),
        }
    }
}

fn tally() -> Arc<dyn DynEntity> {
    Registry::builder().entity(Tally).build().unwrap().entity("tally").unwrap().clone()
}

const LIMITS: DedupLimits = DedupLimits { max_entries: 64, max_age_ms: 60_000 };
const DAY: Duration = Duration::from_secs(86_400);
const NOW: i64 = 1_000_000;

fn cmd(name: &str, key: Option<&str>) -> step::Command {
    step::Command {
        command: tally().decode_command(name, b"null", Format::Json).unwrap(),
        invocation_id: key.unwrap_or("generated").to_owned(),
        retryable: key.is_some(),
        timer: None,
    }
}

fn fire(name: &str, id: &str, seq: u64) -> step::Command {
    step::Command { timer: Some(step::TimerFire { id: id.into(), seq }), ..cmd(name, Some("tessera/tally/t/timer")) }
}

fn last_type(d: &Decision) -> Option<&str> {
    match d {
        Decision::Append(r, _) => r.events.last().map(|e| e.type_name.as_str()),
        _ => None,
    }
}

fn reply_of(d: &Decision) -> Option<u64> {
    match d {
        Decision::Remembered(r) | Decision::Reply(r) => rmp_serde::from_slice(&r.reply).ok(),
        _ => None,
    }
}

#[test]
fn decisions_for_one_command() {
    let (entity, key) = (tally(), EntityKey::new("tally", "t"));
    let state = entity.initial_state();
    let mut window = DedupWindow::default();
    let remembered = rmp_serde::to_vec(&41u64).unwrap();
    window.insert(DedupEntry { id: "seen".into(), seq: 3, at_ms: NOW - 10, reply: remembered }, LIMITS);
    let record = Record {
        key: &key,
        entity: &entity,
        state: &state,
        seq: 3,
        dedup: Some(&window),
        fence: Some(7),
        timers: None,
    };
    let held = Lease::Held(7);
    type Check = fn(&Decision) -> bool;
    let cases: Vec<(&str, step::Command, Lease, Check)> = vec![
        ("a retry with a remembered key answers the original reply", cmd("add", Some("seen")), held, |d| {
            matches!(d, Decision::Remembered(r) if r.seq == 3 && r.deduplicated) && reply_of(d) == Some(41)
        }),
        ("a new key runs the handler", cmd("add", Some("new")), held, |d| matches!(d, Decision::Append(..))),
        (
            "a rejection is refused, nothing to write",
            cmd("refuse", None),
            held,
            |d| matches!(d, Decision::Refuse(InvokeError::Rejected(r)) if r.code == "no"),
        ),
        (
            "a panicking handler resets the entity",
            cmd("boom", None),
            held,
            |d| matches!(d, Decision::Reset(InvokeError::HandlerPanicked(m)) if m.contains("boom")),
        ),
        (
            "no events: answered at the current seq",
            cmd("get", None),
            held,
            |d| matches!(d, Decision::Reply(r) if r.seq == 3),
        ),
        ("a lost lease refuses writes", cmd("add", Some("new")), Lease::Lost, |d| {
            matches!(d, Decision::Refuse(InvokeError::ShardMoved(_)))
        }),
        ("a lost lease still answers reads", cmd("get", None), Lease::Lost, |d| matches!(d, Decision::Reply(_))),
        ("a message is written in the same append, after the events", cmd("ping", None), held, |d| {
            matches!(d, Decision::Append(r, p) if r.events.len() == 2 && p.events == 2)
                && last_type(d) == Some("tessera.send")
        }),
        (
            "a fire of a timer that is not pending does nothing",
            fire("add", "expire", 2),
            held,
            |d| matches!(d, Decision::Reply(r) if r.deduplicated && r.seq == 3),
        ),
        (
            "unfenced (no cluster): appends carry no epoch",
            cmd("add", None),
            Lease::Unfenced,
            |d| matches!(d, Decision::Append(_, p) if p.epoch.is_none()),
        ),
    ];
    for (name, c, lease, check) in cases {
        let d = step::decide(&record, c, NOW, lease, Some("n1"), LIMITS, DAY);
        assert!(check(&d), "{name}");
    }
    // A remembered key past the window's age runs again.
    let mut aged = DedupWindow::default();
    aged.insert(DedupEntry { id: "old".into(), seq: 1, at_ms: NOW - 120_000, reply: vec![] }, LIMITS);
    let r = Record { dedup: Some(&aged), ..record };
    assert!(matches!(step::decide(&r, cmd("add", Some("old")), NOW, held, None, LIMITS, DAY), Decision::Append(..)));
}

#[test]
fn a_pending_timer_runs_its_command_once_and_a_refused_one_is_spent_too() {
    use crate::flow::{FlowRecord, Timers};
    let (entity, key) = (tally(), EntityKey::new("tally", "t"));
    let state = entity.initial_state();
    let mut timers = Timers::default();
    let command = tessera_entities::CommandCall::named("add", &()).unwrap();
    timers.apply(2, &FlowRecord::Schedule(tessera_entities::Timer { id: "expire".into(), at_ms: NOW, command }));
    let record =
        Record { key: &key, entity: &entity, state: &state, seq: 3, dedup: None, fence: None, timers: Some(&timers) };
    let ran = step::decide(&record, fire("add", "expire", 2), NOW, Lease::Unfenced, None, LIMITS, DAY);
    let Decision::Append(req, pending) = &ran else { panic!("the timer's command runs") };
    let types: Vec<&str> = req.events.iter().map(|e| e.type_name.as_str()).collect();
    assert_eq!(types, ["Added", "tessera.fired"], "its events, then the record that it fired");
    assert_eq!(req.keys.len(), 1, "keyed: a second delivery is answered from the journal");
    assert_eq!(pending.timers.len(), 1, "the slot forgets the timer when the append commits");
    let refused = step::decide(&record, fire("refuse", "expire", 2), NOW, Lease::Unfenced, None, LIMITS, DAY);
    let Decision::Append(req, pending) = &refused else { panic!("a refused timer is spent all the same") };
    assert_eq!(req.events.len(), 1);
    assert!(pending.typed.is_none(), "nothing of the entity's to apply");
    let fired = FlowRecord::decode(&req.events[0].type_name, &req.events[0].payload).unwrap().unwrap();
    assert!(matches!(fired, FlowRecord::Fired(f) if f.rejected.as_ref().is_some_and(|r| r.code == "no")));
}

#[test]
fn an_append_carries_the_fence_the_epoch_and_the_reply_to_remember() {
    let (entity, key) = (tally(), EntityKey::new("tally", "t"));
    let state = entity.initial_state();
    let record =
        Record { key: &key, entity: &entity, state: &state, seq: 9, dedup: None, fence: Some(5), timers: None };
    let Decision::Append(req, pending) =
        step::decide(&record, cmd("add", Some("k")), NOW, Lease::Held(6), Some("n1"), LIMITS, DAY)
    else {
        panic!("an append")
    };
    assert_eq!(
        req.keys.iter().map(|k| (k.key.as_str(), k.retain_ms, k.seq)).collect::<Vec<_>>(),
        vec![("k", 86_400_000, 10)],
        "the key goes to the journal"
    );
    assert_eq!((req.expected_seq, req.fence, req.events.len()), (9, Some(5), 1), "fenced with the activation epoch");
    assert_eq!(pending.epoch, Some(6), "checked against the lease epoch right before the commit");
    let meta = EventMeta::decode(&req.events[0].metadata);
    assert_eq!((meta.invocation.as_str(), meta.node.as_deref(), meta.epoch), ("k", Some("n1"), Some(6)));
    assert_eq!(meta.reply.as_deref(), Some(&rmp_serde::to_vec(&1u64).unwrap()[..]), "retryable: reply remembered");
}

#[test]
fn snapshots_fall_due_every_n_events_and_never_at_zero() {
    let cases = [(0, 100, false), (99, 100, false), (100, 100, true), (250, 100, true), (5, 0, false)];
    for (since, every, due) in cases {
        assert_eq!(step::snapshot_due(since, every), due, "{since} events, every {every}");
    }
}

#[test]
fn lru_eviction_takes_the_oldest_tenth() {
    let idle: Vec<(u32, &str)> = vec![(5, "e"), (50, "a"), (1, "z"), (20, "b"), (9, "c")];
    assert_eq!(step::lru_victims(idle.clone(), 20), vec!["a", "b"], "a tenth of 20 = 2, oldest first");
    assert_eq!(step::lru_victims(idle.clone(), 3), vec!["a"], "at least one");
    assert!(step::lru_victims(Vec::<(u32, &str)>::new(), 100).is_empty(), "nothing idle: nothing evicted");
}

// The state machine.

fn machine(
    budget: usize,
    queue_limit: usize,
    snapshot_every: u64,
    fence: Option<Arc<tessera_cluster::Ownership>>,
) -> Machine {
    batching_machine(budget, queue_limit, snapshot_every, fence, 256)
}

fn batching_machine(
    budget: usize,
    queue_limit: usize,
    snapshot_every: u64,
    fence: Option<Arc<tessera_cluster::Ownership>>,
    batch: usize,
) -> Machine {
    let ctx = ShardContext {
        batch: super::BatchLimits { commands: batch, bytes: 32 << 10 },
        journal: Arc::new(MemoryJournal::default()),
        metrics: Metrics::new(),
        dedup: LIMITS,
        key_retention: Arc::new(|_| DAY),
        entity_queue_limit: queue_limit,
        snapshot_every,
        idle_timeout: Duration::from_secs(60),
        shard_budget: budget,
        node_id: fence.as_ref().map(|_| "n1".to_owned()),
        fence,
        on_commit: None,
    };
    Machine::new(0, Arc::new(ctx), 4)
}

type Reply = oneshot::Receiver<Result<CommandReply, InvokeError>>;

fn command(m: &mut Machine, id: &str, name: &str) -> Reply {
    keyed(m, id, name, None)
}

/// A command, with the caller's idempotency key when `key` is set.
fn keyed(m: &mut Machine, id: &str, name: &str, key: Option<&str>) -> Reply {
    let (tx, rx) = oneshot::channel();
    let entity_key = EntityKey::new("tally", id);
    let req = CommandRequest {
        key: entity_key.clone(),
        entity: tally(),
        command: tally().decode_command(name, b"null", Format::Json).unwrap(),
        invocation_id: key.map_or_else(|| format!("inv-{id}-{name}"), str::to_owned),
        retryable: key.is_some(),
        timer: None,
        span: tracing::Span::none(),
        reply: tx.into(),
    };
    m.enqueue(entity_key, tally(), Work::Command(req), NOW);
    rx
}

fn read(m: &mut Machine, id: &str) -> oneshot::Receiver<Result<StateView, InvokeError>> {
    let (tx, rx) = oneshot::channel();
    let key = EntityKey::new("tally", id);
    m.enqueue(key.clone(), tally(), Work::State(StateRequest { key, entity: tally(), reply: tx.into() }), NOW);
    rx
}

fn rebuilt(seq: u64) -> Rebuilt {
    Rebuilt {
        state: tally().initial_state(),
        seq,
        dedup: DedupWindow::default(),
        events_since_snapshot: 0,
        timers: Default::default(),
    }
}

/// Answers the one activation asked for with an entity at `seq`; returns its incarnation.
fn activate(m: &mut Machine, id: &str, seq: u64) -> u64 {
    let io = m.take_io();
    let [Io::Activate { incarnation, .. }] = io.as_slice() else { panic!("one activation asked for") };
    let inc = *incarnation;
    m.activated(EntityKey::new("tally", id), inc, Ok(rebuilt(seq)), NOW);
    inc
}

fn ack(seq: u64) -> Result<super::Committed, InvokeError> {
    acked(seq, seq)
}

fn acked(first_seq: u64, last_seq: u64) -> Result<super::Committed, InvokeError> {
    Ok(super::Committed::Appended(AppendAck { first_seq, last_seq, timestamp_ms: NOW }))
}

/// The one append asked for: its expected seq, its events' types and its keys with their seqs.
fn the_append(io: &[Io]) -> (u64, Vec<String>, Vec<(String, u64)>) {
    let [Io::Append { request, .. }] = io else { panic!("one append asked for") };
    let types = request.events.iter().map(|e| e.type_name.clone()).collect();
    (request.expected_seq, types, request.keys.iter().map(|k| (k.key.clone(), k.seq)).collect())
}

fn answer(r: Reply) -> Result<(u64, u64), InvokeError> {
    r.blocking_recv().unwrap().map(|c| (c.seq, rmp_serde::from_slice(&c.reply).unwrap()))
}

/// Entity `tally/a` activated at seq 0 with one `add` in flight (its append asked for and taken).
fn busy(m: &mut Machine) -> (EntityKey, u64, Reply) {
    let first = command(m, "a", "add");
    let inc = activate(m, "a", 0);
    m.take_io();
    (EntityKey::new("tally", "a"), inc, first)
}

/// The in-flight `add` of [`busy`] is acknowledged at seq 1 and answered.
fn first_done(m: &mut Machine, a: &EntityKey, inc: u64, first: Reply) {
    m.appended(a.clone(), inc, ack(1), NOW);
    assert_eq!(answer(first).unwrap(), (1, 1));
}

fn appends(io: &[Io]) -> Vec<(u64, u64)> {
    io.iter()
        .filter_map(|i| match i {
            Io::Append { incarnation, request, .. } => Some((*incarnation, request.expected_seq)),
            _ => None,
        })
        .collect()
}

#[test]
fn one_command_at_a_time_and_a_bounded_queue() {
    let mut m = machine(100, 2, 0, None);
    let first = command(&mut m, "a", "add");
    let inc = activate(&mut m, "a", 0);
    let io = m.take_io();
    assert_eq!(appends(&io), vec![(inc, 0)], "the first command appends after seq 0");
    let (mut second, mut third) = (command(&mut m, "a", "add"), command(&mut m, "a", "add"));
    let mut refused = command(&mut m, "a", "add");
    assert!(m.take_io().is_empty(), "queued behind the append, nothing asked");
    assert!(
        matches!(refused.try_recv(), Ok(Err(InvokeError::EntityBusy(_)))),
        "queue limit 2: the third waits no more"
    );
    m.appended(EntityKey::new("tally", "a"), inc, ack(1), NOW);
    assert_eq!(first.blocking_recv().unwrap().unwrap().seq, 1);
    assert_eq!(appends(&m.take_io()), vec![(inc, 1)], "then the queued commands, in one append");
    assert!(second.try_recv().is_err() && third.try_recv().is_err(), "still waiting");
}

#[test]
fn queued_commands_are_decided_against_the_pending_state_and_written_in_one_append() {
    let mut m = machine(100, 10, 0, None);
    let a = EntityKey::new("tally", "a");
    let first = command(&mut m, "a", "add");
    let inc = activate(&mut m, "a", 0);
    assert_eq!(the_append(&m.take_io()).1, ["Added"]);
    let adds: Vec<Reply> = (0..3).map(|_| command(&mut m, "a", "add")).collect();
    let (mut refused, mut get) = (command(&mut m, "a", "refuse"), command(&mut m, "a", "get"));
    m.appended(a.clone(), inc, ack(1), NOW);
    assert_eq!(answer(first).unwrap(), (1, 1));
    let (expected, types, _) = the_append(&m.take_io());
    assert_eq!((expected, types.len()), (1, 3), "three commands' events in one append after seq 1");
    assert!(refused.try_recv().is_err() && get.try_recv().is_err(), "decided, but held until it is durable");
    m.appended(a.clone(), inc, acked(2, 4), NOW);
    let got: Vec<(u64, u64)> = adds.into_iter().map(|r| answer(r).unwrap()).collect();
    assert_eq!(got, vec![(2, 2), (3, 3), (4, 4)], "each its own seq, each decided after the one before");
    assert!(matches!(refused.blocking_recv().unwrap(), Err(InvokeError::Rejected(_))));
    assert_eq!(answer(get).unwrap(), (4, 4), "a read decided against the pending state, answered once durable");
    assert_eq!(read(&mut m, "a").blocking_recv().unwrap().unwrap().seq, 4);
}

#[test]
fn a_failed_batch_fails_every_command_in_it_and_rebuilds_the_entity() {
    let mut m = machine(100, 10, 0, None);
    let (a, inc, first) = busy(&mut m);
    let (second, get) = (command(&mut m, "a", "add"), command(&mut m, "a", "get"));
    first_done(&mut m, &a, inc, first);
    m.take_io();
    m.appended(a.clone(), inc, Err(InvokeError::Unavailable("journal down".into())), NOW);
    assert!(matches!(answer(second), Err(InvokeError::Unavailable(_))));
    assert!(matches!(answer(get), Err(InvokeError::Unavailable(_))), "its read saw state that never became durable");
    let _again = read(&mut m, "a");
    assert!(matches!(m.take_io().as_slice(), [Io::Activate { .. }]), "rebuilt from the journal");
}

#[test]
fn reads_and_a_repeated_key_wait_for_the_append_before_them() {
    let mut m = machine(100, 10, 0, None);
    let (a, inc, first) = busy(&mut m);
    let (x, view) = (keyed(&mut m, "a", "add", Some("k1")), read(&mut m, "a"));
    let (k2, k2_again, z) =
        (keyed(&mut m, "a", "add", Some("k2")), keyed(&mut m, "a", "add", Some("k2")), command(&mut m, "a", "add"));
    first_done(&mut m, &a, inc, first);
    assert_eq!(the_append(&m.take_io()), (1, vec!["Added".into()], vec![("k1".into(), 2)]), "stops at the read");
    m.appended(a.clone(), inc, ack(2), NOW);
    assert_eq!(answer(x).unwrap(), (2, 2));
    assert_eq!(view.blocking_recv().unwrap().unwrap().seq, 2, "the read sees only durable state");
    assert_eq!(the_append(&m.take_io()).2, vec![("k2".into(), 3)], "stops at a key already in the batch");
    m.appended(a.clone(), inc, ack(3), NOW);
    assert_eq!(answer(k2).unwrap(), (3, 3));
    let again = k2_again.blocking_recv().unwrap().unwrap();
    assert!(again.deduplicated && again.seq == 3, "the retry is answered from the window, not applied twice");
    assert_eq!(the_append(&m.take_io()).0, 3);
    m.appended(a, inc, ack(4), NOW);
    assert_eq!(answer(z).unwrap(), (4, 4));
}

#[test]
fn keyed_commands_in_one_append_each_record_their_key_at_their_own_seq() {
    let mut m = machine(100, 10, 0, None);
    let (a, inc, first) = busy(&mut m);
    let (k1, plain, k2) =
        (keyed(&mut m, "a", "add", Some("k1")), command(&mut m, "a", "add"), keyed(&mut m, "a", "add", Some("k2")));
    first_done(&mut m, &a, inc, first);
    let (_, _, keys) = the_append(&m.take_io());
    assert_eq!(keys, vec![("k1".into(), 2), ("k2".into(), 4)]);
    m.appended(a.clone(), inc, acked(2, 4), NOW);
    assert_eq!((answer(k1).unwrap(), answer(plain).unwrap(), answer(k2).unwrap()), ((2, 2), (3, 3), (4, 4)));
    // Retried later, both are answered from the window.
    let retry = keyed(&mut m, "a", "add", Some("k1")).blocking_recv().unwrap().unwrap();
    assert!(retry.deduplicated && retry.seq == 2);
}

#[test]
fn a_retry_the_journal_remembers_fails_the_rest_of_its_batch_retryably() {
    let mut m = machine(100, 10, 0, None);
    let (a, inc, first) = busy(&mut m);
    let (plain, old) = (command(&mut m, "a", "add"), keyed(&mut m, "a", "add", Some("old")));
    first_done(&mut m, &a, inc, first);
    m.take_io();
    let reply = rmp_serde::to_vec(&7u64).unwrap();
    m.appended(a.clone(), inc, Ok(super::Committed::Remembered { key: "old".into(), seq: 1, reply }), NOW);
    let remembered = old.blocking_recv().unwrap().unwrap();
    assert!(remembered.deduplicated && remembered.seq == 1, "the original outcome");
    assert!(matches!(answer(plain), Err(InvokeError::Unavailable(m)) if m.contains("send it again")));
    let _again = read(&mut m, "a");
    assert!(matches!(m.take_io().as_slice(), [Io::Activate { .. }]), "its pending state is thrown away");
}

#[test]
fn an_apply_that_panics_mid_batch_ends_it_and_the_entity_is_rebuilt_after() {
    let mut m = machine(100, 10, 0, None);
    let (a, inc, first) = busy(&mut m);
    let (bad, next) = (command(&mut m, "a", "bad"), command(&mut m, "a", "add"));
    first_done(&mut m, &a, inc, first);
    assert_eq!(the_append(&m.take_io()).1, ["Bad"], "the next command is not decided against a broken state");
    m.appended(a.clone(), inc, ack(2), NOW);
    assert!(matches!(answer(bad), Err(InvokeError::HandlerPanicked(m)) if m.contains("persisted (seq 2)")));
    let io = m.take_io();
    assert!(matches!(io.as_slice(), [Io::Activate { .. }]), "rebuilt for the command still queued");
    drop(next);
}

#[test]
fn a_timer_fire_waits_for_the_append_before_it() {
    let mut m = machine(100, 10, 0, None);
    let (a, inc, first) = busy(&mut m);
    let second = command(&mut m, "a", "add");
    let _fired = enqueue_fire(&mut m, "t", 1);
    first_done(&mut m, &a, inc, first);
    assert_eq!(the_append(&m.take_io()).1.len(), 1, "the fire is decided against durable timers, after");
    m.appended(a, inc, ack(2), NOW);
    assert_eq!(answer(second).unwrap(), (2, 2));
}

/// Queues the fire of timer `id` (scheduled at `seq`) of `tally/a`, whose command is `add`.
fn enqueue_fire(m: &mut Machine, id: &str, seq: u64) -> Reply {
    let (tx, rx) = oneshot::channel();
    let a = EntityKey::new("tally", "a");
    let fire = CommandRequest {
        key: a.clone(),
        entity: tally(),
        command: tally().decode_command("add", b"null", Format::Json).unwrap(),
        invocation_id: format!("tessera/tally/a/timer/{id}"),
        retryable: true,
        timer: Some(step::TimerFire { id: id.into(), seq }),
        span: tracing::Span::none(),
        reply: tx.into(),
    };
    m.enqueue(a, tally(), Work::Command(fire), NOW);
    rx
}

#[test]
fn a_batch_takes_at_most_its_limit_of_commands() {
    let mut m = batching_machine(100, 10, 0, None, 2);
    let (a, inc, first) = busy(&mut m);
    let rest: Vec<Reply> = (0..3).map(|_| command(&mut m, "a", "add")).collect();
    first_done(&mut m, &a, inc, first);
    assert_eq!(the_append(&m.take_io()).1.len(), 2);
    m.appended(a.clone(), inc, acked(2, 3), NOW);
    assert_eq!(the_append(&m.take_io()).1.len(), 1, "the third waits for the next append");
    m.appended(a, inc, ack(4), NOW);
    let seqs: Vec<u64> = rest.into_iter().map(|r| answer(r).unwrap().0).collect();
    assert_eq!(seqs, vec![2, 3, 4]);
}

#[test]
fn stale_outcomes_of_an_earlier_incarnation_are_ignored() {
    let mut m = machine(100, 10, 0, None);
    let failed = command(&mut m, "a", "add");
    let old = activate(&mut m, "a", 0);
    m.take_io();
    let queued = command(&mut m, "a", "add");
    // The append fails: the entity resets and is rebuilt for the queued command.
    m.appended(EntityKey::new("tally", "a"), old, Err(InvokeError::Unavailable("journal down".into())), NOW);
    assert!(matches!(failed.blocking_recv().unwrap(), Err(InvokeError::Unavailable(_))));
    let new = activate(&mut m, "a", 4);
    assert_ne!(new, old);
    assert_eq!(appends(&m.take_io()), vec![(new, 4)], "the queued command runs on the rebuilt entity");
    // A late outcome for the old incarnation changes nothing.
    m.appended(EntityKey::new("tally", "a"), old, ack(1), NOW);
    m.activated(EntityKey::new("tally", "a"), old, Ok(rebuilt(0)), NOW);
    assert!(m.take_io().is_empty());
    m.appended(EntityKey::new("tally", "a"), new, ack(5), NOW);
    assert_eq!(queued.blocking_recv().unwrap().unwrap().seq, 5);
}

#[test]
fn a_panicking_handler_resets_only_its_entity() {
    let mut m = machine(100, 10, 0, None);
    let boom = command(&mut m, "a", "boom");
    let after = command(&mut m, "a", "get");
    activate(&mut m, "a", 2);
    assert!(matches!(boom.blocking_recv().unwrap(), Err(InvokeError::HandlerPanicked(_))));
    let io = m.take_io();
    assert!(matches!(io.as_slice(), [Io::Activate { .. }]), "reset: rebuilt for the queued read");
    let get = command(&mut m, "b", "get");
    activate(&mut m, "b", 0);
    assert_eq!(get.blocking_recv().unwrap().unwrap().seq, 0, "another entity is untouched");
    drop(after);
}

#[test]
fn a_lost_lease_refuses_writes_and_activations() {
    let own = Arc::new(tessera_cluster::Ownership::new(vec!["tally".into()], 1));
    let unit = tessera_cluster::Unit { entity_type: "tally".into(), shard: 0 };
    own.hold(&unit, 12, Instant::now() + Duration::from_secs(60), true);
    let mut m = machine(100, 10, 0, Some(own.clone()));
    let r = command(&mut m, "a", "add");
    let io = m.take_io();
    assert!(matches!(io.as_slice(), [Io::Activate { fence: Some(12), .. }]), "activated under the lease epoch");
    let [Io::Activate { incarnation, .. }] = io.as_slice() else { unreachable!() };
    m.activated(EntityKey::new("tally", "a"), *incarnation, Ok(rebuilt(0)), NOW);
    let io = m.take_io();
    assert!(matches!(io.as_slice(), [Io::Append { epoch: Some(12), .. }]));
    m.appended(EntityKey::new("tally", "a"), *incarnation, ack(1), NOW);
    assert!(r.blocking_recv().unwrap().is_ok());
    own.drop_unit(&unit);
    let refused = command(&mut m, "a", "add");
    assert!(matches!(refused.blocking_recv().unwrap(), Err(InvokeError::ShardMoved(_))), "no commit without the lease");
    let other = command(&mut m, "b", "add");
    assert!(matches!(other.blocking_recv().unwrap(), Err(InvokeError::ShardMoved(_))), "nor an activation");
    assert!(m.take_io().is_empty());
}

#[test]
fn releasing_a_slice_refuses_new_work_until_it_is_acquired_again() {
    let mut m = machine(100, 10, 0, None);
    let busy = command(&mut m, "a", "add");
    let inc = activate(&mut m, "a", 0);
    m.take_io();
    let idle = command(&mut m, "b", "get");
    activate(&mut m, "b", 0);
    assert!(idle.blocking_recv().unwrap().is_ok());
    assert_eq!(m.release("tally", false), 1, "one entity still busy; the idle one is passivated");
    assert_eq!(m.active(), 1);
    assert!(matches!(read(&mut m, "b").blocking_recv().unwrap(), Err(InvokeError::ShardMoved(_))));
    m.appended(EntityKey::new("tally", "a"), inc, ack(1), NOW);
    assert!(busy.blocking_recv().unwrap().is_ok(), "in-flight work finishes during a hand-off");
    assert_eq!(m.release("tally", false), 0);
    m.acquire("tally");
    assert_eq!(m.active(), 0, "acquire forgets what was cached");
    let _again = read(&mut m, "b");
    assert!(matches!(m.take_io().as_slice(), [Io::Activate { .. }]), "accepted again, rebuilt from the journal");
}

#[test]
fn over_budget_the_least_recently_used_idle_entities_go() {
    let mut m = machine(3, 10, 0, None);
    for id in ["a", "b", "c"] {
        let r = read(&mut m, id);
        activate(&mut m, id, 0);
        assert!(r.blocking_recv().unwrap().is_ok());
        m.tick();
    }
    let _a = read(&mut m, "a"); // a is used again: b is now the oldest
    let _d = read(&mut m, "d");
    m.take_io();
    assert_eq!(m.active(), 3, "one passivated to make room");
    let _b = read(&mut m, "b");
    assert!(matches!(m.take_io().as_slice(), [Io::Activate { .. }]), "b was the one passivated");
}

#[test]
fn a_snapshot_is_asked_for_when_due() {
    let mut m = machine(100, 10, 2, None);
    let first = command(&mut m, "a", "add");
    let inc = activate(&mut m, "a", 0);
    m.take_io();
    m.appended(EntityKey::new("tally", "a"), inc, ack(1), NOW);
    assert!(first.blocking_recv().is_ok());
    assert!(m.take_io().iter().all(|io| !matches!(io, Io::Snapshot { .. })), "one event: not yet");
    let _second = command(&mut m, "a", "add");
    m.take_io();
    m.appended(EntityKey::new("tally", "a"), inc, ack(2), NOW);
    let io = m.take_io();
    assert!(matches!(io.as_slice(), [Io::Snapshot { snapshot, .. }] if snapshot.seq == 2), "two events: snapshot at 2");
}

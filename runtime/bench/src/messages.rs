//! Messages and timers (local journal, durable): each beside the same work
//! driven by a client in the same run.
//!
//! - ping-pong: `pingers` entities each ask a `ponger` and, on the answer,
//!   ask again, `rounds` times — round trips/s, against a client that makes
//!   the same two commands per round itself (the ponger's, then the
//!   pinger's), one round after the other per pinger;
//! - fan-out: entities each send one command to 100 counters — messages
//!   delivered/s, against the client sending those commands directly;
//! - timers: `timers` alarms (on entities already active) all due at one
//!   instant — fires/s, lateness p50/p99 and resident memory per pending
//!   timer, against the same number of direct commands;
//! - spread timers: `spread` alarms due evenly over 20 s (2 s when quick)
//!   while the node is otherwise idle — each fire's lateness (its due time
//!   to its command's handler, read from `Ctx::now_ms`) as p50/p99/max.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera_entities::{Ctx, Effect, Entity, EntityRef, Format, Registry, Rejection, Response};
use tessera_runtime::config::JournalKind;
use tessera_runtime::{Invocation, Node, NodeBuilder};

use super::runs::{bench_config, ratio};
use super::{BenchCounter, Sizes, concurrently};

/// Asks its ponger `rounds` times, one after the other (`bench-pinger`).
struct Pinger;

#[derive(Default, Serialize, Deserialize)]
struct PingerState {
    left: u32,
    done: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PingerCommand {
    Start {
        rounds: u32,
    },
    Ponged(Response<u32>),
    /// The client-driven baseline's half of a round.
    Count,
    /// Sends one `add` to each of `n` counters.
    Fan {
        n: u32,
    },
    /// A timer at `at_ms`.
    Alarm {
        at_ms: i64,
    },
    Ring,
    /// A timer at `at_ms` whose command records its lateness.
    AlarmAt {
        at_ms: i64,
    },
    /// That timer's command.
    RingAt {
        due_ms: i64,
    },
}

/// This process's resident memory, bytes (0 where `/proc` is not there).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Lateness of the timers' fires, ms (recorded by their handler).
static SPREAD: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>> = std::sync::Mutex::new(None);

fn record_lateness(ms: i64) {
    let mut h = SPREAD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = h.as_mut() {
        h.saturating_record(ms.max(0) as u64);
    }
}

#[derive(Serialize, Deserialize)]
enum PingerEvent {
    Started { rounds: u32 },
    Round,
    Fanned,
    Set,
    Rang,
}

fn ponger(id: &str) -> EntityRef {
    EntityRef::new(BenchCounter::TYPE, id)
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum CounterCall {
    Add { by: i64 },
}

impl Entity for Pinger {
    const TYPE: &'static str = "bench-pinger";
    type State = PingerState;
    type Command = PingerCommand;
    type Event = PingerEvent;
    type Reply = u32;

    fn handle(&self, s: &PingerState, c: PingerCommand, ctx: &mut Ctx) -> Result<Effect<PingerEvent, u32>, Rejection> {
        let me = ctx.entity_id().to_owned();
        Ok(match c {
            PingerCommand::Start { rounds } => Effect::persist(PingerEvent::Started { rounds }, 0).and_ask(
                ponger(&me),
                &CounterCall::Add { by: 1 },
                "ponged",
            ),
            PingerCommand::Ponged(_) if s.left > 1 => Effect::persist(PingerEvent::Round, s.done + 1).and_ask(
                ponger(&me),
                &CounterCall::Add { by: 1 },
                "ponged",
            ),
            PingerCommand::Ponged(_) | PingerCommand::Count => Effect::persist(PingerEvent::Round, s.done + 1),
            PingerCommand::Fan { n } => (0..n).fold(Effect::persist(PingerEvent::Fanned, 0), |e, i| {
                e.and_send(ponger(&format!("{me}-{i}")), &CounterCall::Add { by: 1 })
            }),
            PingerCommand::Alarm { at_ms } => {
                Effect::persist(PingerEvent::Set, 0).and_schedule("ring", at_ms, &PingerCommand::Ring)
            }
            PingerCommand::Ring => Effect::persist(PingerEvent::Rang, s.done + 1),
            PingerCommand::AlarmAt { at_ms } => Effect::persist(PingerEvent::Set, 0).and_schedule(
                "ring",
                at_ms,
                &PingerCommand::RingAt { due_ms: at_ms },
            ),
            PingerCommand::RingAt { due_ms } => {
                record_lateness(ctx.now_ms() - due_ms);
                Effect::persist(PingerEvent::Rang, s.done + 1)
            }
        })
    }

    fn apply(&self, s: &mut PingerState, e: &PingerEvent) {
        match e {
            PingerEvent::Started { rounds } => s.left = *rounds,
            PingerEvent::Round | PingerEvent::Rang => {
                s.left = s.left.saturating_sub(1);
                s.done += 1;
            }
            PingerEvent::Fanned | PingerEvent::Set => {}
        }
    }
}

async fn invoke(node: &Node, t: &str, id: String, command: &str, body: Value) -> anyhow::Result<()> {
    let inv = Invocation {
        entity_type: t.into(),
        entity_id: id,
        command: command.into(),
        body: serde_json::to_vec(&body)?,
        format: Format::Json,
        idempotency_key: None,
    };
    node.invoke(inv).await?;
    Ok(())
}

fn delivered(node: &Node, kind: &str) -> u64 {
    node.metrics().flow.delivered.with_label_values(&[kind]).get()
}

/// Waits until `kind` deliveries reach `n` (at most `limit`).
async fn until_delivered(node: &Node, kind: &str, n: u64, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while delivered(node, kind) < n {
        anyhow::ensure!(started.elapsed() < limit, "{} of {n} {kind} deliveries", delivered(node, kind));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Runs the message benchmarks.
pub(super) async fn run(s: Sizes, scratch: &Path) -> anyhow::Result<Value> {
    let quick = s.commands < 100_000;
    let (pingers, rounds, fans, timers) = if quick { (32u64, 5u32, 10u64, 500u64) } else { (512, 40, 200, 100_000) };
    let dir = tempfile::Builder::new().prefix("tessera-bench-").tempdir_in(scratch)?;
    let registry = Registry::builder().entity(BenchCounter).entity(Pinger).build()?;
    let node =
        NodeBuilder::new(registry).config(bench_config(JournalKind::Local, &dir.path().join("node"))).build().await?;

    // Ping-pong through messages.
    let t = Instant::now();
    let starts =
        (0..pingers).map(|p| invoke(&node, "bench-pinger", format!("p{p}"), "start", json!({"rounds": rounds})));
    futures::future::try_join_all(starts).await?;
    until_delivered(&node, "reply", pingers * u64::from(rounds), Duration::from_secs(600)).await?;
    let messaged = t.elapsed();
    let trips = (pingers * u64::from(rounds)) as f64;
    let rate = trips / messaged.as_secs_f64();
    eprintln!("ping-pong through messages: {rate:.0} round trips/s");
    let lateness = node.metrics().flow.delivery_seconds.with_label_values(&["send"]);
    let delivery_mean_ms = lateness.get_sample_sum() / lateness.get_sample_count().max(1) as f64 * 1000.0;

    // The same rounds driven by a client: the ponger's command, then the pinger's.
    let (driven, _) = concurrently(pingers, pingers, {
        let node = node.clone();
        move |p| {
            let node = node.clone();
            async move {
                for _ in 0..rounds {
                    invoke(&node, BenchCounter::TYPE, format!("q{p}"), "add", json!({"by": 1})).await?;
                    invoke(&node, "bench-pinger", format!("q{p}"), "count", Value::Null).await?;
                }
                Ok(())
            }
        }
    })
    .await?;
    let driven_rate = trips / driven.as_secs_f64();
    eprintln!("ping-pong driven by a client: {driven_rate:.0} round trips/s");

    // Fan-out: each fan entity sends one command to 100 counters.
    let before = delivered(&node, "send");
    let t = Instant::now();
    let fan = (0..fans).map(|f| invoke(&node, "bench-pinger", format!("f{f}"), "fan", json!({"n": 100})));
    futures::future::try_join_all(fan).await?;
    until_delivered(&node, "send", before + fans * 100, Duration::from_secs(600)).await?;
    let fanned = t.elapsed();
    let fan_rate = (fans * 100) as f64 / fanned.as_secs_f64();
    eprintln!("fan-out: {fan_rate:.0} messages/s");
    let (direct, _) = concurrently(fans * 100, s.callers, {
        let node = node.clone();
        move |i| {
            let node = node.clone();
            async move {
                invoke(&node, BenchCounter::TYPE, format!("d{}-{}", i / 100, i % 100), "add", json!({"by": 1})).await
            }
        }
    })
    .await?;
    let direct_rate = (fans * 100) as f64 / direct.as_secs_f64();
    eprintln!("the same commands sent directly: {direct_rate:.0}/s");

    // Timers: all due at one instant, after they are all set.
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    // The entities first (so the memory measured next is the timers'), then
    // one timer on each, its fire recording its lateness.
    let count_all = || {
        concurrently(timers, s.callers, {
            let node = node.clone();
            move |i| {
                let node = node.clone();
                async move { invoke(&node, "bench-pinger", format!("t{i}"), "count", Value::Null).await }
            }
        })
    };
    count_all().await?;
    // The baseline of the memory figure: the same number of appends on the
    // same active entities without timers (journal memtables and caches grow
    // with appends either way).
    let rss_start = rss();
    count_all().await?;
    let rss_before = rss();
    let bytes_per_append = rss_before.saturating_sub(rss_start) as f64 / timers as f64;
    *SPREAD.lock().unwrap_or_else(|p| p.into_inner()) = Some(hdrhistogram::Histogram::new(3)?);
    let set_at = now() + if quick { 2_000 } else { 120_000 };
    let (burst_set, _) = concurrently(timers, s.callers, {
        let node = node.clone();
        move |i| {
            let node = node.clone();
            async move { invoke(&node, "bench-pinger", format!("t{i}"), "alarm_at", json!({"at_ms": set_at})).await }
        }
    })
    .await?;
    let bytes_per_timer = rss().saturating_sub(rss_before) as f64 / timers as f64;
    anyhow::ensure!(now() < set_at, "setting {timers} timers took {burst_set:?}, past their due time");
    let before = delivered(&node, "timer");
    tokio::time::sleep(Duration::from_millis((set_at - now()).max(0) as u64)).await;
    let due = Instant::now();
    until_delivered(&node, "timer", before + timers, Duration::from_secs(600)).await?;
    let fired = due.elapsed();
    let fire_rate = timers as f64 / fired.as_secs_f64().max(0.001);
    let late = &node.metrics().flow.timer_lateness;
    let late_mean_ms = late.get_sample_sum() / late.get_sample_count().max(1) as f64 * 1000.0;
    let burst_late =
        SPREAD.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or(hdrhistogram::Histogram::new(3)?);
    eprintln!(
        "{timers} timers due at once fired in {fired:?} ({fire_rate:.0}/s), set in {burst_set:?}; lateness p50 {} ms, p99 {} ms; {bytes_per_timer:.0} B resident per pending timer (plain appends: {bytes_per_append:.0} B each)",
        burst_late.value_at_quantile(0.5),
        burst_late.value_at_quantile(0.99)
    );
    let (direct_t, _) = concurrently(timers, s.callers, {
        let node = node.clone();
        move |i| {
            let node = node.clone();
            async move { invoke(&node, "bench-pinger", format!("u{i}"), "ring", Value::Null).await }
        }
    })
    .await?;
    let direct_t_rate = timers as f64 / direct_t.as_secs_f64();

    // Spread timers: due evenly over a window that starts once most are set.
    let (spread, lead, window) = if quick { (500i64, 2_000i64, 2_000i64) } else { (20_000, 15_000, 20_000) };
    *SPREAD.lock().unwrap_or_else(|p| p.into_inner()) = Some(hdrhistogram::Histogram::new(3)?);
    let first = now() + lead;
    let before = delivered(&node, "timer");
    let (set, _) = concurrently(spread as u64, s.callers, {
        let node = node.clone();
        move |i| {
            let node = node.clone();
            let at_ms = first + (i as i64 * window) / spread;
            async move { invoke(&node, "bench-pinger", format!("s{i}"), "alarm_at", json!({"at_ms": at_ms})).await }
        }
    })
    .await?;
    let set_before_first = now() < first;
    until_delivered(&node, "timer", before + spread as u64, Duration::from_secs(600)).await?;
    let spread_late =
        SPREAD.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or(hdrhistogram::Histogram::new(3)?);
    let within_100 = spread_late.count_between(0, 100) as f64 / spread_late.len().max(1) as f64;
    eprintln!(
        "{spread} timers spread over {window} ms: lateness p50 {} ms, p99 {} ms, max {} ms ({:.2}% within 100 ms)",
        spread_late.value_at_quantile(0.5),
        spread_late.value_at_quantile(0.99),
        spread_late.max(),
        within_100 * 100.0
    );
    node.shutdown().await;
    Ok(json!({
        "ping_pong": {
            "pingers": pingers, "rounds": rounds,
            "round_trips_per_sec": rate.round(),
            "send_delivery_mean_ms": (delivery_mean_ms * 10.0).round() / 10.0,
            "baseline_client_driven_round_trips_per_sec": driven_rate.round(),
            "ratio": ratio(rate, driven_rate),
        },
        "fan_out": {
            "senders": fans, "targets_each": 100,
            "messages_per_sec": fan_rate.round(),
            "baseline_direct_commands_per_sec": direct_rate.round(),
            "ratio": ratio(fan_rate, direct_rate),
        },
        "timers": {
            "timers": timers,
            "set_secs": (burst_set.as_secs_f64() * 100.0).round() / 100.0,
            "fired_secs_after_due": (fired.as_secs_f64() * 100.0).round() / 100.0,
            "fires_per_sec": fire_rate.round(),
            "lateness_mean_ms": late_mean_ms.round(),
            "lateness_ms": {
                "p50": burst_late.value_at_quantile(0.5),
                "p99": burst_late.value_at_quantile(0.99),
                "max": burst_late.max(),
            },
            "rss_bytes_per_pending_timer": bytes_per_timer.round(),
            "baseline_rss_bytes_per_plain_append": bytes_per_append.round(),
            "baseline_direct_commands_per_sec": direct_t_rate.round(),
            "ratio": ratio(fire_rate, direct_t_rate),
        },
        "spread_timers": {
            "timers": spread,
            "window_ms": window,
            "set_secs": (set.as_secs_f64() * 100.0).round() / 100.0,
            "all_set_before_the_first_was_due": set_before_first,
            "fired": spread_late.len(),
            "lateness_ms": {
                "p50": spread_late.value_at_quantile(0.5),
                "p90": spread_late.value_at_quantile(0.9),
                "p99": spread_late.value_at_quantile(0.99),
                "p999": spread_late.value_at_quantile(0.999),
                "max": spread_late.max(),
            },
            "share_within_100ms": (within_100 * 10_000.0).round() / 10_000.0,
        },
        "ratio_runtime_to_baseline": ratio(rate, driven_rate),
    }))
}

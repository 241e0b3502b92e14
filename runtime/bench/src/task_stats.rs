//! Where the runtime's time goes, task by task: built only with
//! `RUSTFLAGS="--cfg tokio_unstable"` (tokio's poll hooks and schedule
//! latency are unstable API). For each place a task was spawned it counts
//! polls, time spent polling, long polls, and how long tasks waited between
//! being woken and being polled; waits over 20 ms are also kept as a
//! timeline, so one can see whether the long waits of many tasks fall in
//! the same instant (a stalled worker) or spread out (starvation).
//!
//! Written to `$TESSERA_BENCH_TASK_STATS` (a JSON file) at the end of a run.

use std::collections::HashMap;
use std::panic::Location;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Totals for the tasks spawned at one place.
#[derive(Default)]
struct Site {
    polls: u64,
    busy: Duration,
    polls_over_1ms: u64,
    polls_over_10ms: u64,
    max_poll: Duration,
    waits_over_10ms: u64,
    waits_over_50ms: u64,
    max_wait: Duration,
}

struct Stats {
    start: Instant,
    sites: HashMap<&'static Location<'static>, Site>,
    /// (ms since start, site, wait in ms) for waits over 20 ms.
    long_waits: Vec<(u64, &'static Location<'static>, u64)>,
    /// (ms since start, site, poll in ms) for polls over 5 ms.
    long_polls: Vec<(u64, &'static Location<'static>, u64)>,
}

static STATS: LazyLock<Mutex<Stats>> = LazyLock::new(|| {
    Mutex::new(Stats { start: Instant::now(), sites: HashMap::new(), long_waits: Vec::new(), long_polls: Vec::new() })
});

thread_local! {
    static POLL_START: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// A multi-thread runtime (as `#[tokio::main]` builds one) with the hooks.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    LazyLock::force(&STATS);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .track_task_schedule_latency()
        .on_before_task_poll(|_| POLL_START.with(|s| s.set(Some(Instant::now()))))
        .on_after_task_poll(|meta| {
            let Some(start) = POLL_START.with(std::cell::Cell::take) else { return };
            let poll = start.elapsed();
            let wait = meta.schedule_latency().unwrap_or_default();
            let mut stats = STATS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = stats.start.elapsed().as_millis() as u64;
            let site = meta.spawned_at();
            if wait > Duration::from_millis(20) {
                stats.long_waits.push((at, site, wait.as_millis() as u64));
            }
            if poll > Duration::from_millis(5) {
                stats.long_polls.push((at, site, poll.as_millis() as u64));
            }
            let s = stats.sites.entry(site).or_default();
            s.polls += 1;
            s.busy += poll;
            s.polls_over_1ms += u64::from(poll > Duration::from_millis(1));
            s.polls_over_10ms += u64::from(poll > Duration::from_millis(10));
            s.max_poll = s.max_poll.max(poll);
            s.waits_over_10ms += u64::from(wait > Duration::from_millis(10));
            s.waits_over_50ms += u64::from(wait > Duration::from_millis(50));
            s.max_wait = s.max_wait.max(wait);
        })
        .build()
}

/// Writes the figures to `$TESSERA_BENCH_TASK_STATS`, if set.
pub fn write() -> anyhow::Result<()> {
    let Ok(path) = std::env::var("TESSERA_BENCH_TASK_STATS") else { return Ok(()) };
    let stats = STATS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut sites: Vec<_> = stats.sites.iter().collect();
    sites.sort_by_key(|(_, s)| std::cmp::Reverse(s.busy));
    let name = |l: &Location<'_>| format!("{}:{}", l.file(), l.line());
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let sites: Vec<_> = sites
        .into_iter()
        .map(|(l, s)| {
            serde_json::json!({
                "site": name(l), "polls": s.polls, "busy_ms": ms(s.busy),
                "polls_over_1ms": s.polls_over_1ms, "polls_over_10ms": s.polls_over_10ms, "max_poll_ms": ms(s.max_poll),
                "waits_over_10ms": s.waits_over_10ms, "waits_over_50ms": s.waits_over_50ms, "max_wait_ms": ms(s.max_wait),
            })
        })
        .collect();
    let timeline = |v: &[(u64, &'static Location<'static>, u64)]| -> Vec<_> {
        v.iter().map(|(at, l, d)| serde_json::json!([at, name(l), d])).collect()
    };
    let out = serde_json::json!({
        "sites": sites,
        "long_waits": timeline(&stats.long_waits),
        "long_polls": timeline(&stats.long_polls),
    });
    std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    Ok(())
}

//! The reliability report: each fault test writes what it held and what it
//! measured as JSON under `target/reliability/` (one file per record, named
//! for it); `cargo run -p tessera-tests --bin reliability-report` (run by
//! `deploy/local/test-all.sh` after the tests) renders docs/reliability.md's
//! tables from them, so the figures there come from the last run, not from
//! a hand.

use std::path::PathBuf;

use serde_json::Value;

/// The workspace being tested, found at run time (the nearest directory
/// with a Cargo.lock above `CARGO_MANIFEST_DIR`, which cargo sets for test
/// and run processes, or the current directory): a compile-time path would
/// point at another checkout whose build artifacts were reused.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    start.ancestors().find(|p| p.join("Cargo.lock").exists()).map(std::path::Path::to_path_buf).unwrap_or(start)
}

/// Where the records go.
pub fn dir() -> PathBuf {
    workspace_root().join("target/reliability")
}

/// A fault tried: the fault, the test, the load held during it, commands
/// acknowledged, lost (must be 0) and applied twice (must be 0), the
/// recovery time, and what else was measured, in words.
#[allow(clippy::too_many_arguments)]
pub fn fault(
    name: &str,
    fault: &str,
    test: &str,
    load: &str,
    acknowledged: u64,
    lost: u64,
    recovery_ms: Option<u64>,
    measured: &str,
) {
    write(
        name,
        serde_json::json!({"kind": "fault", "fault": fault, "test": test, "load": load, "acknowledged": acknowledged,
            "lost": lost, "recovery_ms": recovery_ms, "measured": measured}),
    );
}

/// A class of bad input tried on some edges: what it was answered, and
/// what it wrote (must be nothing).
pub fn bad_input(name: &str, class: &str, edges: &str, answer: &str, written: u64) {
    write(
        name,
        serde_json::json!({"kind": "bad_input", "class": class, "edges": edges, "answer": answer, "written": written}),
    );
}

fn write(name: &str, record: Value) {
    eprintln!("RELIABILITY {name} {record}");
    let dir = dir();
    let _ = std::fs::create_dir_all(&dir);
    let file: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let _ = std::fs::write(dir.join(format!("{file}.json")), serde_json::to_vec_pretty(&record).unwrap_or_default());
}

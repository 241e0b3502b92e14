//! `tessera-bench --quick` runs every benchmark end to end and writes its
//! JSON (the figures are not checked: timings are measured, never asserted).

#[test]
fn quick_bench_writes_json_for_every_benchmark() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-bench"))
        .args(["--quick", "--out"])
        .arg(out.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // `http` runs where wrk is installed (test-all.sh installs it).
    let wrk = std::process::Command::new("wrk").arg("--version").output().is_ok();
    let http = if wrk { Some("http") } else { None };
    for name in ["durable", "hot", "memory", "replay", "entities", "projection", "messages"].into_iter().chain(http) {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.path().join(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(v["bench"], name);
        assert!(
            v["ratio_runtime_to_baseline"].is_number()
                || v["ratio_entity_to_actor_memory"].is_number()
                || v["runs"][0]["ratio_batched_to_unbatched"].is_number()
                || v["ratio_runtime_to_echo_c64"].is_number()
                || v["ratio_catch_up_to_raw_scan"].is_number(),
            "{v}"
        );
    }
}

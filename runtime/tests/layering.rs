//! The floor plan, checked: the node core and the shard layer import no
//! edge and no service, so dependencies run one way (edge → node → shard →
//! journal). A new `use crate::nats` in `node/` fails here, not in review.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("source dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// Lines of Rust code (not comments) in `dir` that mention one of `banned`.
fn offences(dir: &str, banned: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut found = Vec::new();
    for file in sources(&root) {
        let text = std::fs::read_to_string(&file).expect("read");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for b in banned {
                if code.contains(b) {
                    found.push(format!("{}:{}: {b}", file.display(), n + 1));
                }
            }
        }
    }
    found
}

const EDGES_AND_SERVICES: &[&str] = &[
    "crate::http",
    "crate::nats",
    "crate::server",
    "crate::cli",
    "crate::autoscaler",
    "crate::bench",
    "crate::client",
    "async_nats",
    "axum",
];

#[test]
fn the_node_core_imports_no_edge_and_no_service() {
    let found = offences("node", EDGES_AND_SERVICES);
    assert!(found.is_empty(), "the node core reaches outside through ports only:\n{}", found.join("\n"));
}

#[test]
fn the_shard_layer_imports_neither_the_node_nor_an_edge() {
    let mut banned = EDGES_AND_SERVICES.to_vec();
    banned.push("crate::node");
    let found = offences("shard", &banned);
    assert!(found.is_empty(), "shards know the journal, not the node:\n{}", found.join("\n"));
}

#[test]
fn the_contract_and_the_configuration_stand_alone() {
    let mut banned = EDGES_AND_SERVICES.to_vec();
    banned.extend(["crate::node", "crate::shard"]);
    let found = offences("config", &banned);
    assert!(found.is_empty(), "config imports nothing of the node:\n{}", found.join("\n"));
    let contract = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/contract.rs")).unwrap();
    let uses: Vec<&str> = contract.lines().filter(|l| l.starts_with("use crate::")).collect();
    assert_eq!(uses, vec!["use crate::error::InvokeError;"], "the contract needs only the error type");
}

#!/usr/bin/env bash
# Runs every test of the workspace. Servers the tests need (none yet: the
# embedded journal needs none) are started here by the project's own scripts.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo test --workspace --all-targets
cargo test --workspace --doc

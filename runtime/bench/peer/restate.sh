#!/usr/bin/env bash
# Tessera beside Restate on this machine, the same workload under the same
# generator (see side_by_side.py for the workload and both durability
# settings). Installs what it needs: wrk (Debian's package) and
# restate-server from the npm package @restatedev/restate-server (into
# ~/.cache/tessera-restate); builds the inventory binary and the Restate
# `stock` service (runtime/bench/restate, Restate's Rust SDK) in release mode.
# Writes bench-results/peer-restate.json (or --out DIR). `--quick`: 3 s runs.
set -euo pipefail
cd "$(dirname "$0")/../../.."
RESTATE_VERSION=1.7.12
CACHE="${TESSERA_RESTATE_CACHE:-$HOME/.cache/tessera-restate}"
if ! command -v wrk >/dev/null 2>&1; then
  echo "restate.sh: installing wrk" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get install -y wrk >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; }
fi
SERVER="$CACHE/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
if [ ! -x "$SERVER" ] || ! "$SERVER" --version | grep -q "$RESTATE_VERSION"; then
  echo "restate.sh: installing restate-server $RESTATE_VERSION from npm" >&2
  mkdir -p "$CACHE"
  (cd "$CACHE" && npm install --no-audit --no-fund --silent "@restatedev/restate-server@$RESTATE_VERSION")
fi
cargo build --release -p inventory
TARGET="${CARGO_TARGET_DIR:-target}"
(cd runtime/bench/restate && CARGO_TARGET_DIR="$CACHE/target" cargo build --release --locked)
exec python3 runtime/bench/peer/side_by_side.py \
  --inventory "$TARGET/release/inventory" \
  --restate-server "$SERVER" \
  --stock-service "$CACHE/target/release/tessera-bench-restate-stock" "$@"

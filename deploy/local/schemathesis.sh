#!/usr/bin/env bash
# schemathesis (PyPI) for the API tests, in a virtual environment of its own.
#
#   deploy/local/schemathesis.sh bin    install if needed, print the `st` binary's path
#
# Settings: TESSERA_SCHEMATHESIS_DIR (default ~/.cache/tessera/schemathesis-VERSION).
set -euo pipefail

VERSION=4.32.5
DIR="${TESSERA_SCHEMATHESIS_DIR:-$HOME/.cache/tessera/schemathesis-$VERSION}"
BIN="$DIR/bin/st"

die() { echo "schemathesis.sh: $*" >&2; exit 1; }

install() {
  [ -x "$BIN" ] && return 0
  command -v python3 >/dev/null || die "python3 is needed"
  echo "schemathesis.sh: installing schemathesis $VERSION into $DIR" >&2
  python3 -m venv "$DIR" || die "cannot make a virtual environment (apt-get install python3-venv)"
  "$DIR/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION" >&2 \
    || die "pip could not install schemathesis==$VERSION"
  [ -x "$BIN" ] || die "no $BIN after the install"
}

case "${1:-}" in
  bin) install; echo "$BIN" ;;
  *) echo "usage: $0 bin" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# test-bindings.sh: builds and tests the bindings (scripts/test.sh runs it; it can run
# alone). Nothing here is skipped silently: a missing tool is installed or fails the run.
#
#   1. the C library (core/capi: librgtp.so, librgtp.a) in release
#   2. the header: regenerated with cbindgen when it is installed (must equal the
#      committed core/capi/include/rgtp.h), and in any case every rgtp_* symbol that
#      librgtp.so exports (nm -D) must be declared in it, and the reverse
#   3. examples/c: compiled with cc -Wall -Werror against the header, linked with
#      librgtp.so and with librgtp.a, and run (expose + pull on loopback, error codes,
#      cancellation, a connection)
#   4. the Python package: a fresh venv, `pip install ./core/python` (maturin and the
#      wheel's build run through pip), then pytest core/python/tests
#   5. examples/node: `npm install` (koffi) and a round trip over the C ABI
#   6. examples/go: the same with cgo (`go run`)
# node/npm and go are installed with apt-get (as root) when missing: Debian's
# golang-go (1.19) takes about 40 s to install.
#
# Builds where CARGO_TARGET_DIR says (default ./target). The venv lives in
# $TARGET/bindings-venv and is made anew each run.
set -euo pipefail

if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
LIB=$TARGET/release

t0=$(date +%s)
say() { printf '\n---- [%ss] %s\n' $(($(date +%s) - t0)) "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2
    return 1
  fi
}
APT_UPDATED=
apt_install() {
  [ -n "$APT_UPDATED" ] || { as_root apt-get update && APT_UPDATED=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

say "tools"
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v make >/dev/null || need+=(make)
command -v nm >/dev/null || need+=(binutils)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then apt_install "${need[@]}"; fi
echo "$(cc --version | head -1); $(python3 --version)"

say "librgtp (cargo build --release -p rgtp-cli -p rgtp-shim -p rgtp-capi)"
# With the packages scripts/test.sh builds, so the features cargo unifies are the same
# and its build is reused (rgtp-capi alone would rebuild the core).
cargo build --release -p rgtp-cli -p rgtp-shim -p rgtp-capi
ls -l "$LIB/librgtp.so" "$LIB/librgtp.a"

say "header: core/capi/include/rgtp.h"
HEADER=core/capi/include/rgtp.h
if command -v cbindgen >/dev/null; then
  fresh=$(mktemp)
  cbindgen --quiet --config core/capi/cbindgen.toml --crate rgtp-capi --output "$fresh"
  if ! diff -u "$HEADER" "$fresh"; then
    echo "FAIL: $HEADER is not what cbindgen makes of core/capi/src/lib.rs; regenerate it:" >&2
    echo "  cbindgen --config core/capi/cbindgen.toml --crate rgtp-capi --output $HEADER" >&2
    rm -f "$fresh"
    exit 1
  fi
  rm -f "$fresh"
  echo "regenerated with $(cbindgen --version): identical"
else
  # Not installed in CI (cargo install cbindgen takes minutes); the symbol check below
  # and the unit test the_header_declares_every_exported_function still run.
  echo "cbindgen not installed: header not regenerated (cargo install cbindgen to check it)"
fi
exported=$(nm -D --defined-only "$LIB/librgtp.so" | awk '$2 == "T" && $3 ~ /^rgtp_/ {print $3}' | sort)
declared=$(grep -oE '\brgtp_[a-z_]+\(' "$HEADER" | tr -d '(' | sort -u)
if [ "$exported" != "$declared" ]; then
  echo "FAIL: librgtp.so's rgtp_* symbols and the header's functions differ:" >&2
  diff <(echo "$exported") <(echo "$declared") >&2 || true
  exit 1
fi
echo "$(echo "$exported" | wc -l) functions: exported by librgtp.so = declared in $HEADER"

say "examples/c (cc against librgtp.so and librgtp.a, then run)"
make -s -C examples/c clean run LIBDIR="$LIB" OUT="$TARGET/c-example"

say "Python: venv, pip install ./core/python, pytest"
VENV=$TARGET/bindings-venv
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# The wheel builds with maturin (the build backend, fetched by pip) and cargo, into
# $CARGO_TARGET_DIR (the release profile matches the workspace's, so the dependencies
# built above are reused).
"$VENV/bin/python" -m pip install --quiet "./core/python[test]"
"$VENV/bin/python" -c 'import rgtp; print("rgtp", rgtp.__version__, "from", rgtp.__file__)'
# From another directory, so the installed package is tested, not the source tree.
(cd "$TARGET" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/core/python/tests")

say "examples/node (koffi over the C ABI)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
echo "node $(node --version), npm $(npm --version)"
(cd examples/node && npm install --no-audit --no-fund --loglevel=error && RGTP_LIB="$LIB/librgtp.so" node pull_and_expose.mjs)

say "examples/go (cgo over the C ABI)"
command -v go >/dev/null || apt_install golang-go
echo "$(go version)"
(cd examples/go && CGO_ENABLED=1 CGO_LDFLAGS="-L$LIB -Wl,-rpath,$LIB" go run .)

say "bindings: all passed in $(($(date +%s) - t0)) s"

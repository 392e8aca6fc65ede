#!/usr/bin/env bash
# Builds and installs rgtp-expose, rgtp-pull, rgtp-run into PREFIX/bin and
# librgtp_shim.so into PREFIX/lib (where rgtp-run finds it). PREFIX defaults to
# /usr/local. (`cargo install` cannot install the shim: it is a cdylib.)
# Honours CARGO_TARGET_DIR (the binaries are taken from where cargo put them).
set -euo pipefail
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
echo "building (release): rgtp-expose, rgtp-pull, rgtp-run, librgtp_shim.so (a few minutes the first time)"
cargo build --release -p rgtp-cli -p rgtp-shim
install -d "$PREFIX/bin" "$PREFIX/lib"
install -m 0755 "$BIN/rgtp-expose" "$BIN/rgtp-pull" "$BIN/rgtp-run" "$PREFIX/bin/"
install -m 0755 "$BIN/librgtp_shim.so" "$PREFIX/lib/"
echo "installed into $PREFIX: bin/rgtp-expose bin/rgtp-pull bin/rgtp-run lib/librgtp_shim.so"

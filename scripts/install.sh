#!/usr/bin/env bash
# Builds and installs rgtp-expose, rgtp-pull, rgtp-run into PREFIX/bin and
# librgtp_shim.so into PREFIX/lib (where rgtp-run finds it). PREFIX defaults to
# /usr/local. (`cargo install` cannot install the shim: it is a cdylib.)
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
cargo build --release -p rgtp-cli
cargo build --release -p rgtp-shim
install -d "$PREFIX/bin" "$PREFIX/lib"
install -m 0755 target/release/rgtp-expose target/release/rgtp-pull target/release/rgtp-run "$PREFIX/bin/"
install -m 0755 target/release/librgtp_shim.so "$PREFIX/lib/"
echo "installed into $PREFIX: bin/rgtp-expose bin/rgtp-pull bin/rgtp-run lib/librgtp_shim.so"

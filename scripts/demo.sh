#!/usr/bin/env bash
# Builds RGTP, exposes a file on loopback, pulls it back, and shows that the printed
# root equals b3sum of both copies. Installs what is missing (needs root for apt).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need b3sum; then
  echo "== installing b3sum"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq b3sum >/dev/null
fi

echo "== building (release)"
cargo build --release -q -p rgtp --bins
BIN=$PWD/target/release

work=$(mktemp -d)
exposer=""
cleanup() {
  [ -n "$exposer" ] && kill "$exposer" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export RGTP_CONFIG_DIR=$work/config

echo "== making a 64 MiB file"
head -c $((64 << 20)) /dev/urandom > "$work/demo.bin"

echo "== rgtp-expose demo.bin"
"$BIN/rgtp-expose" "$work/demo.bin" --bind 127.0.0.1 --port 0 >"$work/expose.out" 2>"$work/expose.err" &
exposer=$!
for _ in $(seq 1 100); do grep -q '^listening' "$work/expose.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/expose.out"
url=$(grep '^rgtp://' "$work/expose.out")

echo "== rgtp-pull <url>"
"$BIN/rgtp-pull" "$url" -o "$work/pulled.bin"

echo "== roots"
printed=$(awk '/root:/ {print $2}' "$work/expose.out")
echo "printed by rgtp-expose: $printed"
b3sum "$work/demo.bin" "$work/pulled.bin"
if [ "$(b3sum --no-names "$work/pulled.bin")" = "$printed" ] && [ "$(b3sum --no-names "$work/demo.bin")" = "$printed" ]; then
  echo "OK: the pulled file is byte-exact and its BLAKE3 equals the exposed root"
else
  echo "MISMATCH" >&2
  exit 1
fi

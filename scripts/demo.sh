#!/usr/bin/env bash
# The main job in one command: builds RGTP, then
#   1. runs an unmodified TCP program pair — python3's http.server and curl — with
#      librgtp_shim.so preloaded in strict mode, and proves the bytes crossed UDP
#      (no TCP listener exists on the port; a plain curl is refused) and arrived intact;
#   2. exposes a file with rgtp-expose, pulls it with rgtp-pull, and shows the printed
#      root equals b3sum of both copies.
# Installs what is missing (b3sum, curl, python3) with apt-get (needs root).
set -euo pipefail
# Cargo resolves a relative CARGO_TARGET_DIR against its working directory: make it
# absolute now, so every build below and every path derived from it agree.
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need b3sum || missing+=(b3sum)
need curl || missing+=(curl)
need python3 || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== building (release): rgtp-expose, rgtp-pull, rgtp-run, librgtp_shim.so (a few minutes the first time)"
cargo build --release -p rgtp-cli -p rgtp-shim
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
export RGTP_CONFIG_DIR=$work/config

port=$(python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
mkdir -p "$work/www"
head -c $((64 << 20)) /dev/urandom > "$work/www/demo.bin"

echo
echo "== 1. unmodified programs over RGTP: python3 -m http.server and curl, port $port, strict"
"$BIN/rgtp-run" --ports "$port" --strict -- \
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/www" >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  grep -qi "$(printf ':%04X' "$port")" /proc/net/udp 2>/dev/null && break
  sleep 0.1
done
if grep -qi "$(printf ':%04X .* 0A' "$port")" /proc/net/tcp; then
  echo "unexpected: a TCP listener exists on $port" >&2
  exit 1
fi
echo "   the server has a UDP socket on $port and no TCP listener:"
echo "   $(ss -Hulpn "sport = :$port" | head -1)"
if curl -s -o /dev/null --max-time 3 "http://127.0.0.1:$port/demo.bin"; then
  echo "unexpected: plain TCP curl reached the server" >&2
  exit 1
fi
echo "   plain curl (no shim) is refused, as expected"
"$BIN/rgtp-run" --ports "$port" --strict -- \
  curl -sS -o "$work/curl.bin" -w '   curl over RGTP: %{size_download} bytes in %{time_total} s\n' \
  "http://127.0.0.1:$port/demo.bin"
b3sum "$work/www/demo.bin" "$work/curl.bin" | sed 's/^/   /'
[ "$(b3sum --no-names "$work/curl.bin")" = "$(b3sum --no-names "$work/www/demo.bin")" ] || {
  echo "MISMATCH" >&2
  exit 1
}
echo "   OK: curl got every byte, over UDP"

echo
echo "== 2. rgtp-expose demo.bin / rgtp-pull <url>"
"$BIN/rgtp-expose" "$work/www/demo.bin" --bind 127.0.0.1 --port 0 >"$work/expose.out" 2>"$work/expose.err" &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^listening' "$work/expose.out" 2>/dev/null && break; sleep 0.1; done
sed 's/^/   /' "$work/expose.out"
url=$(grep '^rgtp://' "$work/expose.out")
"$BIN/rgtp-pull" "$url" -o "$work/pulled.bin"
printed=$(awk '/root:/ {print $2}' "$work/expose.out")
echo "   root printed by rgtp-expose: $printed"
b3sum "$work/www/demo.bin" "$work/pulled.bin" | sed 's/^/   /'
if [ "$(b3sum --no-names "$work/pulled.bin")" = "$printed" ]; then
  echo "   OK: the pulled file is byte-exact and its BLAKE3 equals the exposed root"
else
  echo "MISMATCH" >&2
  exit 1
fi

#!/usr/bin/env bash
# bench-bindings.sh: what the bindings cost. One rgtp-expose serves a file of
# BENCH_SIZE (default 1G) random bytes on 127.0.0.1; the same pull is made by
# rgtp-pull, by Python (rgtp.pull) and by C (rgtp_pull_ex), alternated, BENCH_RUNS
# (default 3) times each, each into a file in /dev/shm that is compared with the
# source and deleted. Prints each run's throughput (bytes pulled / wall time, as
# --json reports it) and the medians.
#
# Needs what scripts/test-bindings.sh builds (it runs the release build and, if the
# venv is missing, pip-installs the Python package into $TARGET/bindings-venv).
set -euo pipefail
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
LIB=$TARGET/release
SIZE=${BENCH_SIZE:-1G}
RUNS=${BENCH_RUNS:-3}
PORT=${BENCH_PORT:-47001}

cargo build --release -p rgtp-cli -p rgtp-shim -p rgtp-capi
VENV=$TARGET/bindings-venv
if ! [ -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import rgtp' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet ./core/python
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rgtp-bench-bindings.XXXXXX")
SRC=/dev/shm/rgtp-bench-src.$$
OUT=/dev/shm/rgtp-bench-out.$$
EXP=
cleanup() {
  [ -z "$EXP" ] || kill "$EXP" 2>/dev/null || true
  rm -rf "$WORK" "$SRC" "$OUT" "$OUT".rgtp-*
}
trap cleanup EXIT
export RGTP_CONFIG_DIR=$WORK/config RGTP_CACHE_DIR=$WORK/cache

cat >"$WORK/cpull.c" <<'EOF'
#include <rgtp.h>
#include <stdio.h>
int main(int argc, char **argv) {
  char err[512];
  rgtp_pull_report r;
  if (argc != 3) return 2;
  int rc = rgtp_pull_ex(argv[1], argv[2], NULL, NULL, NULL, NULL, &r, err, sizeof err);
  if (rc != RGTP_OK) { fprintf(stderr, "%s\n", err); return rc; }
  printf("%.0f\n", r.throughput);
  return 0;
}
EOF
cc -O2 -I core/capi/include "$WORK/cpull.c" -o "$WORK/cpull" -L"$LIB" -lrgtp -Wl,-rpath,"$LIB"

head -c "$SIZE" /dev/urandom >"$SRC"
RUST_LOG=warn "$LIB/rgtp-expose" "$SRC" --port "$PORT" --bind 127.0.0.1 >"$WORK/expose.out" 2>"$WORK/expose.err" &
EXP=$!
for _ in $(seq 300); do grep -q '^rgtp://' "$WORK/expose.out" && break; sleep 0.1; done
URL=$(grep -m1 '^rgtp://' "$WORK/expose.out")
echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$SIZE from $URL"

declare -A ALL
one() { # NAME, then the command printing bytes/s
  local name=$1 tp
  shift
  tp=$("$@")
  cmp -s "$OUT" "$SRC" || { echo "$name: pulled bytes differ" >&2; exit 1; }
  rm -f "$OUT"
  awk -v n="$name" -v t="$tp" 'BEGIN {printf "  %-10s %6.0f MB/s\n", n, t / 1e6}'
  ALL[$name]+="$tp "
}
for i in $(seq "$RUNS"); do
  echo "run $i"
  one rgtp-pull sh -c "'$LIB/rgtp-pull' --json -q -o '$OUT' '$URL' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"throughput\"])'"
  one python "$VENV/bin/python" -c 'import sys, rgtp; print(rgtp.pull(sys.argv[1], sys.argv[2])["throughput"])' "$URL" "$OUT"
  one C "$WORK/cpull" "$URL" "$OUT"
done
echo "medians (load $(cut -d' ' -f1-3 /proc/loadavg)):"
for name in rgtp-pull python C; do
  # shellcheck disable=SC2086
  printf '  %-10s %6.0f MB/s\n' "$name" "$(printf '%s\n' ${ALL[$name]} | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)] / 1e6}')"
done

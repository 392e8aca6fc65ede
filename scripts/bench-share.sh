#!/usr/bin/env bash
# bench-share.sh: two pullers of one origin with sharing against the same two
# without, in the same run. One file of BENCH_SIZE (default 64M) random bytes in
# /dev/shm, exposed on 127.0.0.1 by rgtp-expose capped at BENCH_CAP bits/s (default
# 200M, --max-rate: an origin on a slow uplink). Alternated, BENCH_RUNS (default 3)
# times each:
#   plain: A and B both `rgtp-pull URL`, started together
#   share: A `rgtp-pull URL --share --seed 60`, and B, as soon as A prints its
#          sharing port, `rgtp-pull URL --from 127.0.0.1:PORT` (A is stopped by
#          pid, SIGINT, once B is done)
# Each copy is compared with the source. Prints per run the time until both are
# done, and the origin's content bytes (what each pull reports from the origin,
# added up) over the file size; then the medians and the ratios share/plain.
set -euo pipefail
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
BIN=$TARGET/release
SIZE=${BENCH_SIZE:-64M}
RUNS=${BENCH_RUNS:-3}
CAP=${BENCH_CAP:-200M}
PORT=${BENCH_PORT:-47201}

cargo build --release -p rgtp-cli

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rgtp-bench-share.XXXXXX")
SRC=/dev/shm/rgtp-bench-share-src.$$
OUT=/dev/shm/rgtp-bench-share-out.$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -n ${BENCH_KEEP:-} ]] && cp "$WORK"/*.json "$WORK"/*.err /tmp/bench-share-keep/ 2>/dev/null; rm -rf "$WORK" "$SRC" "$OUT".*
}
trap cleanup EXIT
head -c "$SIZE" /dev/urandom >"$SRC"
BYTES=$(stat -c %s "$SRC")

mkdir -p "$WORK/origin"
RGTP_CONFIG_DIR=$WORK/origin RGTP_CACHE_DIR=$WORK/origin/cache RUST_LOG=warn \
  "$BIN/rgtp-expose" "$SRC" --port "$PORT" --bind 127.0.0.1 --max-rate "$CAP" \
  >"$WORK/origin.out" 2>"$WORK/origin.err" &
PIDS+=($!)
for _ in $(seq 600); do grep -qs '^listening on' "$WORK/origin.out" && break; sleep 0.1; done
URL=$(grep -m1 '^rgtp://' "$WORK/origin.out")
HP=127.0.0.1:$PORT
sleep "${BENCH_SETTLE:-3}"
echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$SIZE from $HP capped at $CAP bit/s; two pullers"

pull() { # NAME, then rgtp-pull's arguments; JSON to $WORK/NAME.json, stderr to .err
  local name=$1
  shift
  rm -f "$OUT.$name" "$OUT.$name".rgtp-*
  RGTP_CONFIG_DIR=$WORK/puller "$BIN/rgtp-pull" --json -q -o "$OUT.$name" "$@" \
    >"$WORK/$name.json" 2>"$WORK/$name.err"
}
# Origin content bytes of the named reports, over the file size.
from_origin() {
  python3 - "$HP" "$BYTES" "$@" <<'EOF'
import json, sys
hp, size, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
total = 0
for n in names:
    r = json.load(open(n))
    assert r["exit_code"] == 0, r
    total += sum(s["bytes"] for s in r["sources"] if s["addr"] == hp)
print(f"{total / size:.2f}")
EOF
}
now() { date +%s.%N; }

declare -A T E
for i in $(seq "$RUNS"); do
  echo "run $i"
  t0=$(now)
  pull a "$URL" & pa=$!
  pull b "$URL" & pb=$!
  PIDS+=("$pa" "$pb")
  wait "$pa" "$pb"
  t=$(echo "$(now) - $t0" | bc)
  for n in a b; do cmp -s "$OUT.$n" "$SRC" || { echo "plain $n: bytes differ" >&2; exit 1; }; done
  e=$(from_origin "$WORK/a.json" "$WORK/b.json")
  printf "  plain  both done in %6.2f s   origin content %s x the file\n" "$t" "$e"
  T[plain]+="$t " E[plain]+="$e "

  t0=$(now)
  pull a "$URL" --share --seed 60 & pa=$!
  PIDS+=("$pa")
  port=
  for _ in $(seq 1000); do
    port=$(grep -m1 -o 'sharing on [^ ]*' "$WORK/a.err" 2>/dev/null | sed 's/.*://') && [[ -n $port ]] && break
    sleep 0.01
  done
  [[ -n $port ]] || { echo "A printed no sharing port" >&2; exit 1; }
  pull b "$URL" --from "127.0.0.1:$port"
  # A: done pulling (seeding) or about to be; then stop its seeding.
  for _ in $(seq 6000); do grep -qs 'seeding for' "$WORK/a.err" && break; kill -0 "$pa" 2>/dev/null || break; sleep 0.01; done
  t=$(echo "$(now) - $t0" | bc)
  kill -INT "$pa" 2>/dev/null || true
  wait "$pa"
  for n in a b; do cmp -s "$OUT.$n" "$SRC" || { echo "share $n: bytes differ" >&2; exit 1; }; done
  e=$(from_origin "$WORK/a.json" "$WORK/b.json")
  printf "  share  both done in %6.2f s   origin content %s x the file\n" "$t" "$e"
  T[share]+="$t " E[share]+="$e "
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
tp=$(echo "${T[plain]}" | median); ts=$(echo "${T[share]}" | median)
ep=$(echo "${E[plain]}" | median); es=$(echo "${E[share]}" | median)
echo "medians (load $(cut -d' ' -f1-3 /proc/loadavg)):"
printf "  plain  %6.2f s  origin %.2f x\n  share  %6.2f s  origin %.2f x\n" "$tp" "$ep" "$ts" "$es"
awk -v a="$ts" -v b="$tp" -v c="$es" -v d="$ep" \
  'BEGIN {printf "share/plain: time %.2f   origin content %.2f\n", a / b, c / d}'

#!/usr/bin/env bash
# bench-swarm.sh: a pull from two sources against a pull from one, in the same run.
# One file of BENCH_SIZE (default 256M) random bytes in /dev/shm, exposed on
# 127.0.0.1 by four rgtp-expose processes, each with its own key: A and B uncapped,
# C and D each capped at BENCH_CAP bits/s (default 400M, --max-rate: an origin on a
# slow uplink). Alternated, BENCH_RUNS (default 3) times each:
#   one:  rgtp-pull URL_A                 two:  rgtp-pull URL_A --from URL_B
#   one capped: rgtp-pull URL_C           two capped: rgtp-pull URL_C --from URL_D
# Each pull goes to /dev/shm, is compared with the source and deleted. Prints each
# run's throughput (bytes pulled / wall time, as --json reports it), each source's
# share of the bytes in the two-source runs, and the ratios of the medians two/one.
# On loopback the sources share the machine's cores with the puller, so the
# uncapped pair shows the cost of the scheduling, the capped pair its gain.
set -euo pipefail
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
BIN=$TARGET/release
SIZE=${BENCH_SIZE:-256M}
RUNS=${BENCH_RUNS:-3}
CAP=${BENCH_CAP:-400M}
PORT=${BENCH_PORT:-47101}

cargo build --release -p rgtp-cli

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rgtp-bench-swarm.XXXXXX")
SRC=/dev/shm/rgtp-bench-swarm-src.$$
OUT=/dev/shm/rgtp-bench-swarm-out.$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK" "$SRC" "$OUT" "$OUT".rgtp-*
}
trap cleanup EXIT
head -c "$SIZE" /dev/urandom >"$SRC"

declare -A URL
expose() { # NAME PORT [ARGS...]
  local name=$1 port=$2
  shift 2
  mkdir -p "$WORK/$name"
  RGTP_CONFIG_DIR=$WORK/$name RGTP_CACHE_DIR=$WORK/$name/cache RUST_LOG=warn \
    "$BIN/rgtp-expose" "$SRC" --port "$port" --bind 127.0.0.1 "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PIDS+=($!)
  for _ in $(seq 600); do grep -qs '^listening on' "$WORK/$name.out" && break; sleep 0.1; done
  URL[$name]=$(grep -m1 '^rgtp://' "$WORK/$name.out")
}
expose A "$PORT"
expose B $((PORT + 1))
expose C $((PORT + 2)) --max-rate "$CAP"
expose D $((PORT + 3)) --max-rate "$CAP"
# Let the uncapped exposers finish sealing ahead (a quiet machine for the runs).
sleep "${BENCH_SETTLE:-5}"
echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$SIZE from 127.0.0.1; C and D capped at $CAP bit/s each"

declare -A ALL
one() { # NAME, then rgtp-pull's arguments
  local name=$1 json
  shift
  json=$(RGTP_CONFIG_DIR=$WORK/puller "$BIN/rgtp-pull" --json -q -o "$OUT" "$@")
  cmp -s "$OUT" "$SRC" || { echo "$name: pulled bytes differ" >&2; exit 1; }
  rm -f "$OUT"
  python3 - "$name" "$json" <<'EOF'
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
line = f"  {name:<11} {r['throughput'] / 1e6:7.1f} MB/s"
srcs = r.get("sources", [])
if len(srcs) > 1:
    total = sum(s["bytes"] for s in srcs) or 1
    line += "   shares " + " ".join(f"{s['bytes'] / total:.2f}" for s in srcs)
    line += f"   dropped {r['sources_dropped']}"
print(line)
EOF
  ALL[$name]+="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["throughput"])' "$json") "
}
for i in $(seq "$RUNS"); do
  echo "run $i"
  one one "${URL[A]}"
  one two "${URL[A]}" --from "${URL[B]}"
  one one-capped "${URL[C]}"
  one two-capped "${URL[C]}" --from "${URL[D]}"
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "medians (load $(cut -d' ' -f1-3 /proc/loadavg)):"
declare -A MED
for name in one two one-capped two-capped; do
  MED[$name]=$(echo "${ALL[$name]}" | median)
  awk -v n="$name" -v t="${MED[$name]}" 'BEGIN {printf "  %-11s %7.1f MB/s\n", n, t / 1e6}'
done
awk -v a="${MED[two]}" -v b="${MED[one]}" -v c="${MED[two-capped]}" -v d="${MED[one-capped]}" \
  'BEGIN {printf "two/one: %.2f   two-capped/one-capped: %.2f\n", a / b, c / d}'

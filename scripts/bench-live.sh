#!/usr/bin/env bash
# bench-live.sh: live exposures on loopback (issue 19).
#
# 1. Latency. A producer writes BENCH_RECORDS (default 500) records of 4 KiB, one
#    every 20 ms, each stamped with the time it was written, into
#    `rgtp-expose - --name live.bin`; a follower `rgtp-pull URL -o -` pipes into a
#    consumer that reads records and notes (now - stamp). Prints p50 / p99 / max.
#    Peer in the same run: the same producer and consumer through TCP (socat).
#    Targets (issue 19): p50 <= 50 ms, p99 <= 250 ms.
# 2. Throughput. BENCH_SIZE (default 256M) random bytes: streamed from a file with
#    cat into `rgtp-expose -` as fast as it reads, followed from the start to
#    /dev/null, against the same file exposed finished and pulled to /dev/null.
#    Prints both and their ratio.
# 3. Memory and disk over a long stream. BENCH_LONG (default 2G) bytes of
#    /dev/urandom piped into `rgtp-expose - --window BENCH_WINDOW` (default 64M),
#    followed from the start to /dev/null; the exposer's resident memory and the
#    disk its spool holds are sampled every 0.2 s, the follower's peak memory read at
#    its end. Peer in the same run: the same stream without --window (every byte
#    kept). Prints peaks and throughputs. With BENCH_BASELINE_BIN=DIR (the
#    rgtp-expose and rgtp-pull of an older build), the stream is also run through
#    those, every byte kept, as a before/after in the same run.
#
# Runs on 127.0.0.1 only; every process is started here and stopped by pid.
set -euo pipefail
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
BIN=$TARGET/release
RECORDS=${BENCH_RECORDS:-500}
SIZE=${BENCH_SIZE:-256M}
LONG=${BENCH_LONG:-2G}
WINDOW=${BENCH_WINDOW:-64M}
PORT=${BENCH_PORT:-47031}

cargo build --release -p rgtp-cli >/dev/null
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rgtp-bench-live.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
export RGTP_CONFIG_DIR=$WORK/config RGTP_CACHE_DIR=$WORK/cache RUST_LOG=warn

cat >"$WORK/produce.py" <<'EOF'
import sys, time
n = int(sys.argv[1]); out = sys.stdout.buffer
time.sleep(0.5)
for i in range(n):
    rec = time.time_ns().to_bytes(8, "little") + bytes([i % 251]) * 4088
    out.write(rec); out.flush()
    time.sleep(0.02)
EOF
cat >"$WORK/consume.py" <<'EOF'
import sys, time
inp = sys.stdin.buffer; lat = []
while True:
    rec = inp.read(4096)
    if len(rec) < 4096:
        break
    lat.append((time.time_ns() - int.from_bytes(rec[:8], "little")) / 1e6)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"{len(lat)} records p50 {q(0.5):.2f} ms p99 {q(0.99):.2f} ms max {lat[-1]:.2f} ms")
EOF

wait_url() { # file -> first rgtp:// line
  for _ in $(seq 300); do grep -qs '^rgtp://' "$1" && break; sleep 0.05; done
  grep -m1 '^rgtp://' "$1"
}

echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

# --- latency: RGTP
python3 "$WORK/produce.py" "$RECORDS" | "$BIN/rgtp-expose" - --name live.bin --port "$PORT" --bind 127.0.0.1 >"$WORK/ex.out" 2>"$WORK/ex.err" &
PIDS+=($!)
URL=$(wait_url "$WORK/ex.out")
RGTP_LAT=$("$BIN/rgtp-pull" "$URL" -o - --quiet --known-exposers "$WORK/known" | python3 "$WORK/consume.py")
kill "${PIDS[-1]}" 2>/dev/null || true
echo "latency rgtp (4 KiB every 20 ms): $RGTP_LAT"

# --- latency: TCP peer (socat)
socat -u TCP-LISTEN:$((PORT + 1)),bind=127.0.0.1,reuseaddr STDOUT 2>/dev/null | python3 "$WORK/consume.py" >"$WORK/tcp.lat" &
PIDS+=($!)
sleep 0.3
python3 "$WORK/produce.py" "$RECORDS" | socat -u STDIN TCP:127.0.0.1:$((PORT + 1))
wait "${PIDS[-1]}" 2>/dev/null || true
echo "latency tcp  (4 KiB every 20 ms): $(cat "$WORK/tcp.lat")"

# --- throughput: a stream vs a finished file of the same size
head -c "$SIZE" /dev/urandom >"$WORK/src.bin"
BYTES=$(stat -c %s "$WORK/src.bin")
"$BIN/rgtp-expose" - --name stream.bin --port $((PORT + 2)) --bind 127.0.0.1 <"$WORK/src.bin" >"$WORK/s.out" 2>"$WORK/s.err" &
# (stdin is the file: the stream is read as fast as the exposer takes it; the pull
# starts at once and follows it)
PIDS+=($!)
URL=$(wait_url "$WORK/s.out")
T0=$(date +%s.%N)
"$BIN/rgtp-pull" "$URL" -o /dev/null --quiet --known-exposers "$WORK/known"
T1=$(date +%s.%N)
kill "${PIDS[-1]}" 2>/dev/null || true
"$BIN/rgtp-expose" "$WORK/src.bin" --port $((PORT + 3)) --bind 127.0.0.1 --no-seal-ahead >"$WORK/f.out" 2>"$WORK/f.err" &
PIDS+=($!)
URL=$(wait_url "$WORK/f.out")
T2=$(date +%s.%N)
"$BIN/rgtp-pull" "$URL" -o /dev/null --quiet --known-exposers "$WORK/known"
T3=$(date +%s.%N)
kill "${PIDS[-1]}" 2>/dev/null || true
python3 - "$BYTES" "$T0" "$T1" "$T2" "$T3" <<'EOF'
import sys
b, t0, t1, t2, t3 = int(sys.argv[1]), *map(float, sys.argv[2:])
s, f = b / (t1 - t0) / 2**20, b / (t3 - t2) / 2**20
print(f"throughput stream {s:.0f} MiB/s, finished file {f:.0f} MiB/s ({b} bytes): stream/file {s / f:.2f}")
EOF

# --- memory and disk over a long stream: --window against every byte kept
spool_disk() { # pid -> bytes on disk of the unnamed files it holds in the cache
  local sum=0 f t
  for f in /proc/"$1"/fd/*; do
    t=$(readlink "$f" 2>/dev/null) || continue
    [[ $t == "$WORK/cache/"*"(deleted)" ]] || continue
    sum=$((sum + $(stat -L -c '%b*%B' "$f" 2>/dev/null | bc 2>/dev/null || echo 0)))
  done
  echo "$sum"
}
long_run() { # bin dir, label, extra exposer args...
  local bin=$1 label=$2; shift 2
  local port=$((PORT + 4))
  head -c "$LONG" /dev/urandom | "$bin/rgtp-expose" - --name long.bin --port "$port" --bind 127.0.0.1 "$@" >"$WORK/l.out" 2>"$WORK/l.err" &
  local ex=$!
  PIDS+=($ex)
  local url
  url=$(wait_url "$WORK/l.out")
  local t0
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$WORK/pull.rss" "$bin/rgtp-pull" "$url" -o /dev/null --quiet --known-exposers "$WORK/known" &
  local pull=$!
  PIDS+=($pull)
  local rss=0 disk=0 r d
  while kill -0 "$pull" 2>/dev/null; do
    r=$(awk '/VmRSS/ {print $2}' /proc/"$ex"/status 2>/dev/null || echo 0)
    d=$(spool_disk "$ex")
    ((r > rss)) && rss=$r
    ((d > disk)) && disk=$d
    sleep 0.2
  done
  wait "$pull"
  local t1
  t1=$(date +%s.%N)
  kill "$ex" 2>/dev/null || true
  python3 - "$label" "$LONG" "$t0" "$t1" "$rss" "$disk" "$(cat "$WORK/pull.rss")" <<'PY'
import sys
label, size, t0, t1, rss, disk, prss = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
units = {"K": 10, "M": 20, "G": 30, "T": 40}
b = int(size[:-1]) << units[size[-1]] if size[-1] in units else int(size)
print(f"long stream {label}: {b / (t1 - t0) / 2**20:.0f} MiB/s; exposer peak RSS {rss / 1024:.0f} MiB, "
      f"spool on disk peak {disk / 2**20:.0f} MiB; follower peak RSS {prss / 1024:.0f} MiB ({b >> 20} MiB streamed)")
PY
}
long_run "$BIN" "--window $WINDOW" --window "$WINDOW"
long_run "$BIN" "every byte kept"
if [[ -n ${BENCH_BASELINE_BIN:-} ]]; then
  long_run "$BENCH_BASELINE_BIN" "every byte kept, baseline build $BENCH_BASELINE_BIN"
fi

#!/usr/bin/env bash
# bench-bigfiles.sh: big files (issue 21), each row beside its peer in the same run.
#
#   1. start-up: for each size in $BENCH_BIG_SIZES (GiB, default "1 4"; empty: none), a file of
#      random bytes (warm in the page cache): `b3sum FILE` against the time from
#      starting `rgtp-expose FILE` to its URL, hashed (--rehash) and remembered; then
#      the time until the background sealing ends, and the sealed store's disk.
#   2. loopback: a 1 GiB pull to /dev/null, rgtp-pull against curl <- nginx HTTPS
#      (TLS 1.3, AES-256-GCM), alternated, $BENCH_BIG_RUNS runs each, for each chunk
#      cipher; and one pull started with the URL (during background sealing).
#      BENCH_BIG_LOOPBACK=0 skips this part.
#   3. with BENCH_BIG_HUGE=GiB (e.g. 20): a sparse file of that size exposed and
#      pulled to /dev/null: peak memory of both sides (the exposer's own, and the
#      store's page cache it maps) and the sealed store's disk.
#
# Usage: scripts/bench-bigfiles.sh   (root not needed; nginx, curl, openssl, b3sum)
# Output: one line per row on stdout; ratios are against the peer in the same run.
set -euo pipefail

if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
SIZES=${BENCH_BIG_SIZES-"1 4"}
RUNS=${BENCH_BIG_RUNS:-3}
HUGE=${BENCH_BIG_HUGE:-0}
W=$(mktemp -d "${BENCH_BIG_DIR:-/tmp}/rgtp-bench-big.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $W/nginx.pid ]] && kill "$(cat "$W/nginx.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$W"
}
trap cleanup EXIT

for t in nginx curl openssl b3sum; do
  command -v "$t" >/dev/null || { echo "bench-bigfiles: needs $t (apt-get install nginx curl openssl b3sum)" >&2; exit 1; }
done
[[ ${BENCH_NO_BUILD:-0} == 1 ]] || cargo build --release -p rgtp-cli
export RGTP_CONFIG_DIR=$W/cfg RGTP_CACHE_DIR=$W/cache
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
now() { date +%s.%N; }

# expose FILE ARGS...: starts rgtp-expose on a free loopback port; sets EX_PID,
# EX_URL and EX_SECS (start to URL); its log goes to $W/expose.log.
expose() {
  local f=$1 t0 i
  shift
  rm -f "$W/expose.log" "$W/expose.out"
  t0=$(now)
  "$BIN/rgtp-expose" --port 0 --bind 127.0.0.1 "$@" "$f" >"$W/expose.out" 2>"$W/expose.log" &
  EX_PID=$!
  PIDS+=("$EX_PID")
  EX_URL=
  for ((i = 0; i < 60000; i++)); do
    EX_URL=$(grep -m1 '^rgtp://' "$W/expose.out" 2>/dev/null || true)
    [[ -n $EX_URL ]] && break
    kill -0 "$EX_PID" 2>/dev/null || { echo "rgtp-expose failed: $(cat "$W/expose.log")" >&2; exit 1; }
    sleep 0.002
  done
  EX_SECS=$(calc "$(now) - $t0" 3)
}
unexpose() { kill "$EX_PID" 2>/dev/null || true; wait "$EX_PID" 2>/dev/null || true; }

# sealed_secs T0_EPOCH: waits (<= 600 s) for the "sealed ahead" line; prints seconds
# since T0 (the exposer's start), or NA.
sealed_wait() {
  local t0=$1 i
  for ((i = 0; i < 6000; i++)); do
    if grep -q "sealed ahead" "$W/expose.log" 2>/dev/null; then calc "$(now) - $t0" 1; return; fi
    sleep 0.1
  done
  echo NA
}

# Allocated bytes of the exposer's unnamed sealed stores (seen through /proc).
store_disk() {
  local pid=$1 sum=0 fd
  for fd in /proc/"$pid"/fd/*; do
    if [[ $(readlink "$fd") == "$W/cache"*"(deleted)" ]]; then
      sum=$((sum + $(stat -L -c '%b * %B' "$fd")))
    fi
  done
  echo $sum
}

echo "# bench-bigfiles $(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD) on $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"

# ---------------------------------------------------------------- 1. start-up
for g in $SIZES; do
  f=$W/big-${g}G.bin
  head -c $((g << 30)) /dev/urandom >"$f"
  cat "$f" >/dev/null
  best_b3=999999
  for ((r = 0; r < RUNS; r++)); do
    t0=$(now); b3sum "$f" >/dev/null; s=$(calc "$(now) - $t0" 3)
    best_b3=$(awk -v a="$best_b3" -v b="$s" 'BEGIN { print (b < a) ? b : a }')
  done
  best_hash=999999
  for ((r = 0; r < RUNS; r++)); do
    t0=$(now)
    expose "$f" --rehash
    best_hash=$(awk -v a="$best_hash" -v b="$EX_SECS" 'BEGIN { print (b < a) ? b : a }')
    if ((r == 0)); then
      sealed=$(sealed_wait "$t0")
      disk=$(store_disk "$EX_PID")
    fi
    unexpose
  done
  expose "$f"
  remembered=$EX_SECS
  grep -q "root remembered" "$W/expose.log" || remembered="$remembered(NOT-remembered)"
  unexpose
  echo "startup size=${g}GiB b3sum_s=$best_b3 url_hashed_s=$best_hash url_remembered_s=$remembered" \
    "ratio_hashed_to_b3sum=$(calc "$best_hash / $best_b3") sealed_after_s=$sealed store_disk_bytes=$disk file_bytes=$((g << 30))"
done

# ---------------------------------------------------------------- 2. loopback
if [[ ${BENCH_BIG_LOOPBACK:-1} == 1 ]]; then
f=$W/big-1G.bin
[[ -f $f ]] || { head -c $((1 << 30)) /dev/urandom >"$f"; }
mkdir -p "$W/www" "$W/tmp"
ln -sf "$f" "$W/www/big.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$W/key.pem" -out "$W/cert.pem" -days 2 -subj /CN=localhost 2>/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$W/nginx.conf" <<EOF
daemon on; worker_processes 1; user root; pid $W/nginx.pid; error_log $W/nginx.err warn;
events { worker_connections 64; }
http { access_log off; sendfile on; client_body_temp_path $W/tmp; proxy_temp_path $W/tmp;
  fastcgi_temp_path $W/tmp; uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  server { listen 127.0.0.1:$port ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.3; root $W/www; } }
EOF
nginx -c "$W/nginx.conf"
cat "$f" >/dev/null

# A pull started the moment the URL is printed, while sealing runs.
t0=$(now)
expose "$f"
tp=$(now)
"$BIN/rgtp-pull" "$EX_URL" -o /dev/null --quiet
pull_during=$(calc "$(now) - $tp" 3)
sealed=$(sealed_wait "$t0")
echo "during-sealing size=1GiB url_s=$EX_SECS pull_s=$pull_during MBps=$(calc "1073741824 / $pull_during / 1e6" 0) sealed_after_s=$sealed"
t0=$(now); "$BIN/rgtp-pull" "$EX_URL" -o /dev/null --quiet; s=$(calc "$(now) - $t0" 3)
echo "after-sealing size=1GiB pull_s=$s MBps=$(calc "1073741824 / $s / 1e6" 0)"

unexpose

# Sealing on demand only (the old --no-seal-ahead), for the row above.
expose "$f" --no-seal-ahead
t0=$(now); "$BIN/rgtp-pull" "$EX_URL" -o /dev/null --quiet; s=$(calc "$(now) - $t0" 3)
echo "no-seal-ahead size=1GiB pull_s=$s MBps=$(calc "1073741824 / $s / 1e6" 0)"
unexpose

med() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}'; }
# Each cipher from an exposer that seals in it, alternated with curl <- nginx HTTPS.
for cipher in aes-256-gcm chacha20-poly1305; do
  expose "$f" --cipher "$cipher"
  sealed_wait "$(now)" >/dev/null
  rg=() cu=()
  for ((r = 0; r < RUNS; r++)); do
    t0=$(now); "$BIN/rgtp-pull" "$EX_URL" -o /dev/null --quiet --cipher "$cipher"; rg+=("$(calc "$(now) - $t0" 3)")
    t0=$(now); curl -sk --tls13-ciphers TLS_AES_256_GCM_SHA384 -o /dev/null "https://127.0.0.1:$port/big.bin"; cu+=("$(calc "$(now) - $t0" 3)")
  done
  mr=$(med "${rg[@]}") mc=$(med "${cu[@]}")
  echo "loopback size=1GiB cipher=$cipher rgtp_s=${rg[*]} https_s=${cu[*]} rgtp_MBps=$(calc "1073741824 / $mr / 1e6" 0)" \
    "https_MBps=$(calc "1073741824 / $mc / 1e6" 0) speedup_vs_https=$(calc "$mc / $mr")"
  unexpose
done
fi

# ---------------------------------------------------------------- 3. huge (sparse)
if [[ $HUGE -gt 0 ]]; then
  f=$W/huge.bin
  truncate -s "${HUGE}G" "$f"
  t0=$(now); b3sum --no-names "$f" >/dev/null; b3_s=$(calc "$(now) - $t0" 3)
  t0=$(now)
  expose "$f" --max-datagram 65000
  url_s=$EX_SECS
  touch "$W/pulling"
  # The exposer's resident memory sampled every 0.2 s (bounded: 1 h): RssAnon is
  # its own memory; RssFile is page cache of the sealed store it maps and sends from,
  # shared and reclaimable (VmHWM counts both).
  (
    a=0 f=0
    for ((i = 0; i < 18000; i++)); do
      [[ -e $W/pulling ]] || break
      read -r ra rf < <(awk '/RssAnon/ {a = $2} /RssFile/ {f = $2} END {print a, f}' "/proc/$EX_PID/status" 2>/dev/null || echo "0 0")
      ((ra > a)) && a=$ra
      ((rf > f)) && f=$rf
      sleep 0.2
    done
    echo "$a $f" >"$W/ex.rss"
  ) &
  sampler=$!
  /usr/bin/time -f "%M" -o "$W/pull.rss" "$BIN/rgtp-pull" "$EX_URL" -o /dev/null --quiet
  pull_s=$(calc "$(now) - $t0 - $url_s" 1)
  rm -f "$W/pulling"
  wait "$sampler"
  read -r ex_anon ex_file <"$W/ex.rss"
  ex_rss=$(awk '/VmHWM/ {print $2}' "/proc/$EX_PID/status")
  disk=$(store_disk "$EX_PID")
  echo "huge size=${HUGE}GiB(sparse) b3sum_s=$b3_s url_s=$url_s pull_s=$pull_s exposer_peak_anon_kb=$ex_anon exposer_peak_file_kb=$ex_file" \
    "exposer_vmhwm_kb=$ex_rss puller_peak_rss_kb=$(cat "$W/pull.rss") store_disk_bytes=$disk outboard_bytes=$(((HUGE << 30) / 16384 * 32))"
  unexpose
fi

#!/usr/bin/env bash
# bench-shim.sh: what a multi-process server and small requests cost under the shim,
# each row beside its TCP peer measured in the same run (on loopback).
#
#   1. fan-out: nginx (2 workers) serving 64 MiB to N concurrent curls, N in
#      $BENCH_SHIM_CLIENTS (default "50 200"): both under the shim (strict), beside
#      the same nginx over HTTPS (TLS 1.3) and plain HTTP. Aggregate MB/s, and the
#      server's CPU seconds per GiB (master and workers, every thread).
#   2. ping-pong: examples' bulk_send --bench (1-byte round trips, library API).
#   3. request/response: wrk, 20 connections, 2 threads, 5 s, a 1 KiB file from
#      nginx: wrk and nginx both under the shim, beside plain TCP.
#
# Usage: scripts/bench-shim.sh   (root not needed; builds release binaries first)
# Output: one line per row on stdout; ratios are against the peer in the same run.
set -euo pipefail

# Cargo resolves a relative CARGO_TARGET_DIR against its working directory: make it
# absolute now, so every build below and every path derived from it agree.
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release
CLIENTS=${BENCH_SHIM_CLIENTS:-"50 200"}
SIZE_MB=${BENCH_SHIM_SIZE_MB:-64}
W=$(mktemp -d /tmp/rgtp-bench-shim.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$W"/nginx-*.pid; do kill "$(cat "$f" 2>/dev/null)" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$W"
}
trap cleanup EXIT

for t in nginx curl wrk openssl; do
  command -v "$t" >/dev/null || { echo "bench-shim: needs $t (apt-get install nginx curl wrk openssl)" >&2; exit 1; }
done
cargo build --release -p rgtp-shim -p rgtp-examples

mkdir -p "$W/www" "$W/cfg"
head -c $((SIZE_MB << 20)) /dev/urandom >"$W/www/big.bin"
head -c 1024 /dev/urandom >"$W/www/small.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$W/key.pem" -out "$W/cert.pem" -days 2 -subj /CN=localhost 2>/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx NAME PORT [ssl]: starts a 2-worker nginx; its pid file is $W/nginx-NAME.pid.
nginx_conf() {
  local name=$1 port=$2 ssl=${3:-}
  local listen="listen 127.0.0.1:$port;"
  [ -n "$ssl" ] && listen="listen 127.0.0.1:$port ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; ssl_protocols TLSv1.3;"
  cat >"$W/nginx-$name.conf" <<EOF
daemon off; master_process on; worker_processes 2; user root;
pid $W/nginx-$name.pid; error_log $W/nginx-$name.err warn;
events { worker_connections 1024; }
http { access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path $W/tb; proxy_temp_path $W/tp; fastcgi_temp_path $W/tf;
  uwsgi_temp_path $W/tu; scgi_temp_path $W/ts;
  server { $listen root $W/www; } }
EOF
}

shim_env() {
  echo "LD_PRELOAD=$BIN/librgtp_shim.so RGTP_PORTS=$1 RGTP_FALLBACK=0 RGTP_CONFIG_DIR=$W/cfg RGTP_LINGER_MS=20000"
}

start_nginx() { # NAME PORT SHIM(0/1) [ssl]
  local name=$1 port=$2 shim=$3 ssl=${4:-}
  nginx_conf "$name" "$port" "$ssl"
  if [ "$shim" = 1 ]; then
    env $(shim_env "$port") nginx -c "$W/nginx-$name.conf" &
  else
    nginx -c "$W/nginx-$name.conf" &
  fi
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$W/nginx-$name.pid" ] && break; sleep 0.1; done
  sleep 0.5
}

# CPU ticks of nginx NAME's master and workers, every thread.
nginx_ticks() {
  local m p s=0
  m=$(cat "$W/nginx-$1.pid")
  for p in $m $(cat /proc/"$m"/task/*/children 2>/dev/null); do
    for t in /proc/"$p"/task/*/stat; do
      s=$((s + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "$t" 2>/dev/null || echo 0)))
    done
  done
  echo $s
}

# fanout NAME PORT N URL SHIM: prints "MB/s cpu_s_per_GiB ok_count"
fanout() {
  local name=$1 port=$2 n=$3 url=$4 shim=$5 i t0 t1 c0 c1 ok=0 pids=()
  c0=$(nginx_ticks "$name"); t0=$(date +%s.%N)
  for i in $(seq "$n"); do
    if [ "$shim" = 1 ]; then
      env $(shim_env "$port") curl -sk --max-time 300 -o /dev/null -w '%{size_download}\n' "$url" >"$W/fo.$i" 2>/dev/null &
    else
      curl -sk --max-time 300 -o /dev/null -w '%{size_download}\n' "$url" >"$W/fo.$i" 2>/dev/null &
    fi
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  t1=$(date +%s.%N); c1=$(nginx_ticks "$name")
  for i in $(seq "$n"); do [ "$(cat "$W/fo.$i" 2>/dev/null)" = "$((SIZE_MB << 20))" ] && ok=$((ok + 1)); done
  python3 - "$t0" "$t1" "$c0" "$c1" "$ok" "$SIZE_MB" "$(getconf CLK_TCK)" <<'EOF'
import sys
t0, t1, c0, c1, ok, mb, hz = map(float, sys.argv[1:])
gib = ok * mb / 1024
print(f"{ok * mb * 1048576 / (t1 - t0) / 1e6:.0f} {((c1 - c0) / hz) / gib if gib else float('nan'):.2f} {int(ok)}")
EOF
}

echo "bench-shim: $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
P_SHIM=$(port); P_TLS=$(port); P_HTTP=$(port)
start_nginx shim "$P_SHIM" 1
start_nginx tls "$P_TLS" 0 ssl
start_nginx http "$P_HTTP" 0

for n in $CLIENTS; do
  read -r s_mb s_cpu s_ok <<<"$(fanout shim "$P_SHIM" "$n" "http://127.0.0.1:$P_SHIM/big.bin" 1)"
  read -r t_mb t_cpu t_ok <<<"$(fanout tls "$P_TLS" "$n" "https://127.0.0.1:$P_TLS/big.bin" 0)"
  read -r h_mb h_cpu h_ok <<<"$(fanout http "$P_HTTP" "$n" "http://127.0.0.1:$P_HTTP/big.bin" 0)"
  python3 - "$n" "$s_mb" "$s_cpu" "$s_ok" "$t_mb" "$t_cpu" "$h_mb" "$h_cpu" <<'EOF'
import sys
n, s_mb, s_cpu, s_ok, t_mb, t_cpu, h_mb, h_cpu = sys.argv[1:]
f = float
print(f"fan-out {n} x {__import__('os').environ.get('BENCH_SHIM_SIZE_MB', '64')} MiB: shim {s_mb} MB/s, {s_cpu} server CPU s/GiB ({s_ok}/{n} ok) | "
      f"HTTPS {t_mb} MB/s, {t_cpu} s/GiB | HTTP {h_mb} MB/s, {h_cpu} s/GiB | "
      f"shim/HTTPS: throughput {f(s_mb)/f(t_mb):.2f}x, CPU per GiB {f(s_cpu)/f(t_cpu):.2f}x")
EOF
done

# Ping-pong through the library API, beside TCP in the same run.
"$BIN/bulk_send" --bench --bytes $((64 << 20)) --pings 5000 2>&1 | sed 's/^/ping-pong: /' | grep -E "TCP|RGTP" || true

# Request/response: 20 connections of small GETs.
P_RR=$(port)
start_nginx rr "$P_RR" 1
shim_rr=$(env $(shim_env "$P_RR") wrk -t2 -c20 -d5s "http://127.0.0.1:$P_RR/small.bin" 2>&1 | awk '/Requests\/sec/ {print $2}')
tcp_rr=$(wrk -t2 -c20 -d5s "http://127.0.0.1:$P_HTTP/small.bin" 2>&1 | awk '/Requests\/sec/ {print $2}')
python3 -c "import sys; s, t = map(float, sys.argv[1:]); print(f'request/response (wrk, 20 connections, 1 KiB): shim {s:.0f} req/s, TCP {t:.0f} req/s, ratio {s/t:.2f}x')" "${shim_rr:-0}" "${tcp_rr:-1}"

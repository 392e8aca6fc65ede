#!/usr/bin/env bash
# bench-peers.sh: the peer side of the RGTP benchmark. Measures what RGTP is compared
# against, in the same run: nginx + curl over HTTP and HTTPS (TLS 1.3) on loopback,
# nginx fan-out to many concurrent curls, and HTTPS over TCP bbr / cubic across the
# emulated lossy link (scripts/lossy-link.sh: 40 ms RTT, 200 Mbit/s, loss 0/1/5/10 %),
# plus a helper that measures a TCP download and another transfer sharing the link.
#
# Use as a library:  source scripts/bench-peers.sh; bp_init; bp_nginx_start lo; ...
# or run everything:  scripts/bench-peers.sh            (root; < 10 min; bounded)
#                     scripts/bench-peers.sh loopback|fanout|lossy|compete   (one part)
#
# Output: one line per measurement, stable `key=value` form (first keys: bench, kind,
# run), on stdout and in $BENCH_DIR/results.txt; the same as JSON lines in
# $BENCH_DIR/results.jsonl. Numbers: bytes, secs (wall), MBps (1e6 B/s), Mbps (1e6 bit/s),
# *_cpu_s (CPU seconds user+sys), rss_kb.
#
# Environment (defaults): BENCH_DIR=/tmp/rgtp-bench  BENCH_FANOUT="50 200"
#   BENCH_LOSSES="0 1 5 10"  BENCH_CCS="bbr cubic"  BENCH_DELAY_MS=20 (one way)
#   BENCH_RATE_MBIT=200  BENCH_QUEUE_MS=50  BENCH_LOSS_DIR=both|data  BENCH_SEED=1
#   BENCH_LOSSY_MAX_TIME=40 (curl --max-time per lossy download; a timed-out download
#   still yields bytes/secs, with complete=0)  BENCH_COMPETE_SECS=20

BP_SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/rgtp-bench}
BENCH_FANOUT=${BENCH_FANOUT:-"50 200"}
BENCH_LOSSES=${BENCH_LOSSES:-"0 1 5 10"}
BENCH_CCS=${BENCH_CCS:-"bbr cubic"}
BENCH_DELAY_MS=${BENCH_DELAY_MS:-20}
BENCH_RATE_MBIT=${BENCH_RATE_MBIT:-200}
BENCH_QUEUE_MS=${BENCH_QUEUE_MS:-50}
BENCH_LOSS_DIR=${BENCH_LOSS_DIR:-both}
BENCH_SEED=${BENCH_SEED:-1}
BENCH_LOSSY_MAX_TIME=${BENCH_LOSSY_MAX_TIME:-40}
BENCH_COMPETE_SECS=${BENCH_COMPETE_SECS:-20}
BP_LOSSY_LINK=$BP_SCRIPT_DIR/lossy-link.sh
BP_BIG=big-1GiB.bin
BP_MID=mid-64MiB.bin
BP_BIG_SIZE=$((1 << 30))
BP_MID_SIZE=$((64 << 20))
BP_IP_A=198.18.0.1
BP_IP_B=198.18.0.2
BP_HZ=$(getconf CLK_TCK)
BP_RUN_ID=${BP_RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
BP_BG_PIDS=()

bp_log() { echo "bench-peers: $*" >&2; }
bp_die() { bp_log "error: $*"; return 1; }
bp_calc() { awk "BEGIN { printf \"%.${2:-3}f\", $1 }"; }

# ----------------------------------------------------------------------------- output
# bp_emit KIND key=value ... -> one key=value line (stdout + results.txt) + one JSON line.
bp_emit() {
  local kind=$1 kv k v line json
  shift
  line="bench=peers kind=$kind run=$BP_RUN_ID"
  json="{\"bench\":\"peers\",\"kind\":\"$kind\",\"run\":\"$BP_RUN_ID\""
  for kv in "$@"; do
    k=${kv%%=*}
    v=${kv#*=}
    v=${v//[[:space:]]/_}
    line+=" $k=$v"
    if [[ $v =~ ^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then
      json+=",\"$k\":$v"
    else
      v=${v//\\/\\\\}
      json+=",\"$k\":\"${v//\"/\\\"}\""
    fi
  done
  echo "$line"
  echo "$line" >>"$BENCH_DIR/results.txt"
  echo "$json}" >>"$BENCH_DIR/results.jsonl"
}

# ----------------------------------------------------------------------------- setup
bp_install_missing() {
  local pkgs=()
  command -v nginx >/dev/null || pkgs+=(nginx)
  command -v curl >/dev/null || pkgs+=(curl)
  [[ -x /usr/bin/time ]] || pkgs+=(time)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v ss >/dev/null || pkgs+=(iproute2)
  command -v python3 >/dev/null || pkgs+=(python3)
  if ((${#pkgs[@]})); then
    bp_log "installing ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y "${pkgs[@]}" >"$BENCH_DIR/apt.log" 2>&1 ||
      { DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update >>"$BENCH_DIR/apt.log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y "${pkgs[@]}" >>"$BENCH_DIR/apt.log" 2>&1; } ||
      bp_die "cannot install ${pkgs[*]} (see $BENCH_DIR/apt.log)"
  fi
}

# Work dir, test files (random content, reused when the size matches), self-signed cert.
bp_init() {
  [[ $(id -u) -eq 0 ]] || { bp_die "run as root"; return 1; }
  mkdir -p "$BENCH_DIR/www" || return 1
  bp_install_missing || return 1
  local f size
  for f in "$BP_BIG:$BP_BIG_SIZE" "$BP_MID:$BP_MID_SIZE"; do
    size=${f#*:}
    f=$BENCH_DIR/www/${f%%:*}
    if [[ $(stat -c %s "$f" 2>/dev/null) != "$size" ]]; then
      bp_log "generating $f ($size bytes)"
      head -c "$size" /dev/urandom >"$f.tmp" && mv "$f.tmp" "$f" || return 1
    fi
  done
  if [[ ! -s $BENCH_DIR/cert.pem || ! -s $BENCH_DIR/key.pem ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$BENCH_DIR/key.pem" -out "$BENCH_DIR/cert.pem" -days 2 -subj /CN=localhost \
      >/dev/null 2>&1 || { bp_die "openssl req failed"; return 1; }
  fi
}

# Read both files once so every measurement is served from the page cache.
bp_warm_cache() { cat "$BENCH_DIR/www/$BP_BIG" "$BENCH_DIR/www/$BP_MID" >/dev/null; }

# ----------------------------------------------------------------------------- CPU / procs
# CPU ticks (utime+stime) of the given pids; fields after "(comm) " shifted by 2.
bp_ticks() {
  local p t=0 x
  for p in "$@"; do
    x=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
    t=$((t + ${x:-0}))
  done
  echo "$t"
}
bp_children() { # direct children of pid $1
  local s
  for s in /proc/[0-9]*/stat; do
    sed 's/^.*) //' "$s" 2>/dev/null | awk -v pp="$1" -v f="$s" '$2 == pp { split(f, a, "/"); print a[3] }'
  done
}

# ----------------------------------------------------------------------------- nginx
# bp_nginx_start NAME [NETNS] [ADDR]: nginx with worker_processes 1, plain HTTP on
# ADDR:8088 and HTTPS (TLS 1.3 only) on ADDR:8443, everything in $BENCH_DIR.
# Sets BP_NGINX_PIDS_<NAME> (master + worker).
bp_nginx_start() {
  local name=$1 ns=${2:-} addr=${3:-127.0.0.1} conf pidf i
  conf=$BENCH_DIR/nginx-$name.conf
  pidf=$BENCH_DIR/nginx-$name.pid
  bp_nginx_stop "$name"
  mkdir -p "$BENCH_DIR/nginx-$name-tmp"
  cat >"$conf" <<EOF
# generated by bench-peers.sh
user root;             # master runs as root anyway; workers read the work dir and key as root
worker_processes 1;
pid $pidf;
error_log $BENCH_DIR/nginx-$name.err;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  keepalive_timeout 10;
  client_body_temp_path $BENCH_DIR/nginx-$name-tmp/body;
  proxy_temp_path $BENCH_DIR/nginx-$name-tmp/proxy;
  fastcgi_temp_path $BENCH_DIR/nginx-$name-tmp/fastcgi;
  uwsgi_temp_path $BENCH_DIR/nginx-$name-tmp/uwsgi;
  scgi_temp_path $BENCH_DIR/nginx-$name-tmp/scgi;
  server { listen $addr:8088; root $BENCH_DIR/www; }
  server {
    listen $addr:8443 ssl;
    ssl_certificate $BENCH_DIR/cert.pem;
    ssl_certificate_key $BENCH_DIR/key.pem;
    ssl_protocols TLSv1.3;
    root $BENCH_DIR/www;
  }
}
EOF
  local cmd=(nginx -e "$BENCH_DIR/nginx-$name.err" -c "$conf")
  [[ -n $ns ]] && cmd=(ip netns exec "$ns" "${cmd[@]}")
  "${cmd[@]}" || { bp_die "nginx $name failed to start: $(tail -3 "$BENCH_DIR/nginx-$name.err")"; return 1; }
  for ((i = 0; i < 50; i++)); do [[ -s $pidf ]] && break; sleep 0.1; done
  [[ -s $pidf ]] || { bp_die "nginx $name wrote no pid file"; return 1; }
  local master workers
  master=$(cat "$pidf")
  for ((i = 0; i < 50; i++)); do
    workers=$(bp_children "$master")
    [[ -n $workers ]] && break
    sleep 0.1
  done
  [[ -n $workers ]] || { bp_die "nginx $name has no worker"; return 1; }
  printf -v "BP_NGINX_PIDS_${name//-/_}" '%s' "$master $workers"
  # wait until it accepts (bounded)
  local probe=(curl -s -o /dev/null --max-time 2 "http://$addr:8088/")
  [[ -n $ns ]] && probe=(ip netns exec "$ns" "${probe[@]}")
  for ((i = 0; i < 30; i++)); do "${probe[@]}" && return 0; sleep 0.1; done
  bp_die "nginx $name does not answer on $addr:8088"
}

bp_nginx_pids() { local v="BP_NGINX_PIDS_${1//-/_}"; echo "${!v:-}"; }

bp_nginx_stop() {
  local name=$1 pidf=$BENCH_DIR/nginx-$1.pid pid i
  [[ -s $pidf ]] || return 0
  pid=$(cat "$pidf")
  if [[ $pid =~ ^[0-9]+$ && -d /proc/$pid && $(readlink "/proc/$pid/exe") == *nginx* ]]; then
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidf"
  return 0
}

# ----------------------------------------------------------------------------- curl
# bp_curl URL SINK [NETNS] [MAXTIME]: one download via /usr/bin/time -v. Sets
# BP_BYTES BP_SECS BP_TTFB BP_HTTP BP_EXIT BP_RSS_KB BP_CURL_CPU BP_SRV_CPU (CPU seconds of
# the nginx named in BP_SRV, when set).
bp_curl() {
  local url=$1 sink=$2 ns=${3:-} maxt=${4:-300} tf=$BENCH_DIR/time.txt out t0 t1 pids
  pids=$(bp_nginx_pids "${BP_SRV:-}")
  local cmd=(/usr/bin/time -v -o "$tf" curl -sk --max-time "$maxt" -o "$sink"
    -w '%{size_download} %{time_total} %{time_starttransfer} %{http_code} %{exitcode}\n' "$url")
  [[ -n $ns ]] && cmd=(ip netns exec "$ns" "${cmd[@]}")
  t0=$(bp_ticks $pids)
  out=$("${cmd[@]}" 2>/dev/null)
  t1=$(bp_ticks $pids)
  read -r BP_BYTES BP_SECS BP_TTFB BP_HTTP BP_EXIT <<<"$out"
  BP_RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tf")
  BP_CURL_CPU=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$tf")
  BP_SRV_CPU=$(bp_calc "($t1 - $t0) / $BP_HZ" 2)
  [[ -n $BP_BYTES ]] || { BP_BYTES=0 BP_SECS=0 BP_EXIT=${BP_EXIT:-99}; }
}

# ----------------------------------------------------------------------------- loopback
# bp_loopback_one PROTO FILE SINK(devnull|file): emits kind=loopback.
bp_loopback_one() {
  local proto=$1 file=$2 sink=$3 port=8088 dst=/dev/null
  [[ $proto == https ]] && port=8443
  [[ $sink == file ]] && dst=$BENCH_DIR/download.tmp
  BP_SRV=lo bp_curl "$proto://127.0.0.1:$port/$file" "$dst" "" 300
  rm -f "$BENCH_DIR/download.tmp"
  bp_emit loopback proto=$proto file=$file sink=$sink bytes=$BP_BYTES secs=$BP_SECS \
    MBps="$(bp_calc "$BP_BYTES / $BP_SECS / 1e6" 1)" nginx_cpu_s=$BP_SRV_CPU \
    curl_cpu_s=$BP_CURL_CPU curl_rss_kb=$BP_RSS_KB http=$BP_HTTP exit=$BP_EXIT
}

bp_loopback_all() {
  bp_nginx_start lo || return 1
  bp_warm_cache
  local proto
  for proto in http https; do
    bp_loopback_one $proto "$BP_BIG" devnull
    bp_loopback_one $proto "$BP_BIG" file
    bp_loopback_one $proto "$BP_MID" devnull
  done
}

# ----------------------------------------------------------------------------- fan-out
# bp_fanout N PROTO [FILE]: N concurrent curls of FILE from the loopback nginx.
# Emits aggregate throughput and server CPU seconds per GiB served.
bp_fanout() {
  local n=$1 proto=$2 file=${3:-$BP_MID} port=8088 i pids t0 t1 c0 c1 w0 w1 ok=0 bytes=0 b e
  [[ $proto == https ]] && port=8443
  pids=$(bp_nginx_pids lo)
  [[ -n $pids ]] || { bp_die "loopback nginx not started"; return 1; }
  local dir=$BENCH_DIR/fanout
  rm -rf "$dir"
  mkdir -p "$dir"
  local cpids=() me=$BASHPID
  c0=$(bp_ticks $pids)
  w0=$(bp_self_child_ticks "$me")
  t0=$(date +%s.%N)
  for ((i = 0; i < n; i++)); do
    curl -sk --max-time 240 -o /dev/null -w '%{size_download} %{exitcode}\n' \
      "$proto://127.0.0.1:$port/$file" >"$dir/$i" 2>/dev/null &
    cpids+=($!)
  done
  wait "${cpids[@]}"
  t1=$(date +%s.%N)
  c1=$(bp_ticks $pids)
  w1=$(bp_self_child_ticks "$me")
  for ((i = 0; i < n; i++)); do
    read -r b e <"$dir/$i" || continue
    bytes=$((bytes + ${b%.*}))
    [[ $e == 0 ]] && ok=$((ok + 1))
  done
  rm -rf "$dir"
  local secs srv
  secs=$(bp_calc "$t1 - $t0")
  srv=$(bp_calc "($c1 - $c0) / $BP_HZ" 2)
  bp_emit fanout proto=$proto file=$file clients=$n ok=$ok bytes=$bytes secs=$secs \
    MBps="$(bp_calc "$bytes / $secs / 1e6" 1)" MiBps="$(bp_calc "$bytes / $secs / 1048576" 1)" \
    nginx_cpu_s=$srv nginx_cpu_s_per_GiB="$(bp_calc "$srv / ($bytes / 1073741824)" 3)" \
    clients_cpu_s="$(bp_calc "($w1 - $w0) / $BP_HZ" 2)"
}
# CPU ticks of a shell's waited-for children (cutime + cstime): bp_self_child_ticks PID
bp_self_child_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $14 + $15}'; }

bp_fanout_all() {
  [[ -n $(bp_nginx_pids lo) ]] || bp_nginx_start lo || return 1
  bp_warm_cache
  local n
  for n in $BENCH_FANOUT; do
    bp_fanout "$n" https
    bp_fanout "$n" http
  done
}

# ----------------------------------------------------------------------------- lossy link
# bp_lossy_up LOSS_PCT: (re)create the emulated link and start nginx in rgtp-b.
bp_lossy_up() {
  local loss=$1
  local lossarg=(--loss "$loss") # (a separate `local`: the array would not see $loss above)
  [[ $BENCH_LOSS_DIR == data ]] && lossarg=(--loss-ba "$loss")
  bp_nginx_stop lossy
  "$BP_LOSSY_LINK" up --delay-ms "$BENCH_DELAY_MS" --rate-mbit "$BENCH_RATE_MBIT" \
    --queue-ms "$BENCH_QUEUE_MS" "${lossarg[@]}" --seed "$BENCH_SEED" --duration 900 2>>"$BENCH_DIR/lossy-link.log" ||
    { bp_die "lossy-link up failed (see $BENCH_DIR/lossy-link.log)"; return 1; }
  bp_nginx_start lossy rgtp-b 0.0.0.0
}
bp_lossy_down() {
  bp_nginx_stop lossy
  "$BP_LOSSY_LINK" down 2>>"$BENCH_DIR/lossy-link.log"
}

# linkem counters now, as "ab_in ab_rand ab_burst ab_queue ba_in ba_rand ba_burst ba_queue"
bp_link_counters() {
  "$BP_LOSSY_LINK" stats 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(str(d[k][f]) for k in ("ab", "ba") for f in ("pkts_in", "drop_random", "drop_burst", "drop_queue")))'
}
# TCP OutSegs RetransSegs of a netns
bp_tcp_snmp() {
  ip netns exec "$1" awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) n[$i] = i; h = 1 } else print $n["OutSegs"], $n["RetransSegs"] }' /proc/net/snmp
}

# bp_lossy_one CC LOSS [FILE]: HTTPS download rgtp-a <- nginx in rgtp-b over the link
# (must be up with that LOSS), TCP congestion control CC for the link's routes.
bp_lossy_one() {
  local cc=$1 loss=$2 file=${3:-$BP_MID} seen c0 c1 s0 s1
  "$BP_LOSSY_LINK" congctl "$cc" || return 1
  c0=$(bp_link_counters)
  s0=$(bp_tcp_snmp rgtp-b)
  # which congestion control the server socket really uses (sampled once, 1.5 s in)
  (sleep 1.5; ip netns exec rgtp-b ss -tinH state established '( sport = :8443 )' 2>/dev/null |
    grep -oE '\b(bbr|cubic|reno)\b' | head -1 >"$BENCH_DIR/cc-seen.txt") &
  local sampler=$!
  : >"$BENCH_DIR/cc-seen.txt"
  BP_SRV=lossy bp_curl "https://$BP_IP_B:8443/$file" /dev/null rgtp-a "$BENCH_LOSSY_MAX_TIME"
  wait "$sampler" 2>/dev/null
  seen=$(cat "$BENCH_DIR/cc-seen.txt")
  c1=$(bp_link_counters)
  s1=$(bp_tcp_snmp rgtp-b)
  local a0 a1 o0 o1 r0 r1
  read -r -a a0 <<<"$c0"
  read -r -a a1 <<<"$c1"
  read -r o0 r0 <<<"$s0"
  read -r o1 r1 <<<"$s1"
  local ba_in=$((a1[4] - a0[4])) ba_lost=$((a1[5] - a0[5] + a1[6] - a0[6])) ba_q=$((a1[7] - a0[7]))
  local ab_in=$((a1[0] - a0[0])) ab_lost=$((a1[1] - a0[1] + a1[2] - a0[2]))
  local complete=0
  [[ $BP_EXIT == 0 && $BP_BYTES == "$(stat -c %s "$BENCH_DIR/www/$file")" ]] && complete=1
  bp_emit lossy proto=https cc=$cc cc_seen=${seen:-unknown} loss_pct=$loss loss_dir=$BENCH_LOSS_DIR \
    rtt_ms=$((2 * BENCH_DELAY_MS)) rate_mbit=$BENCH_RATE_MBIT queue_ms=$BENCH_QUEUE_MS file=$file \
    bytes=$BP_BYTES secs=$BP_SECS ttfb_s=$BP_TTFB Mbps="$(bp_calc "$BP_BYTES * 8 / $BP_SECS / 1e6" 2)" \
    complete=$complete exit=$BP_EXIT max_time=$BENCH_LOSSY_MAX_TIME \
    srv_tcp_segs=$((o1 - o0)) srv_tcp_retrans=$((r1 - r0)) \
    link_ba_pkts=$ba_in link_ba_lost=$ba_lost link_ba_queue_drops=$ba_q \
    link_ba_loss_pct="$(bp_calc "100 * $ba_lost / ($ba_in > 0 ? $ba_in : 1)" 2)" \
    link_ab_pkts=$ab_in link_ab_lost=$ab_lost nginx_cpu_s=$BP_SRV_CPU curl_cpu_s=$BP_CURL_CPU
}

bp_lossy_all() {
  local loss cc
  for loss in $BENCH_LOSSES; do
    bp_lossy_up "$loss" || return 1
    for cc in $BENCH_CCS; do
      bp_lossy_one "$cc" "$loss"
    done
    bp_lossy_down
  done
}

# ----------------------------------------------------------------------------- competing flows
# bp_compete LABEL BYTES|@FILE -- CMD...: with the link up (bp_lossy_up), start a long
# HTTPS/TCP download of the 1 GiB file (rgtp-a <- nginx in rgtp-b; congestion control as
# set by `lossy-link.sh congctl`), let it reach steady state for BENCH_COMPETE_WARMUP
# (3) s, then run CMD: the competing transfer, e.g. an RGTP pull run in rgtp-a (the caller
# adds `ip netns exec rgtp-a`). CMD is bounded by BENCH_COMPETE_SECS x 3 (timeout).
# What CMD moved: BYTES (a number, valid when CMD exits 0) or @FILE (the size of FILE
# after CMD: use this when CMD writes its download there and may stop early).
# TCP's rate is measured over exactly CMD's run time, from the growth of its output file.
# Emits kind=compete with both rates and the other flow's share.
bp_compete() {
  local label=$1 ospec=$2
  shift 2
  [[ ${1:-} == -- ]] && shift
  [[ $# -gt 0 ]] || { bp_die "bp_compete: no command"; return 1; }
  local out=$BENCH_DIR/compete-tcp.out warm=${BENCH_COMPETE_WARMUP:-3} tpid s0 s1 t0 t1 rc cc obytes
  cc=$(ip -n rgtp-b route show "$BP_IP_A/32" 2>/dev/null | grep -oE 'congctl( lock)? [a-z0-9_]+' | awk '{print $NF}')
  rm -f "$out"
  ip netns exec rgtp-a curl -sk --max-time $((BENCH_COMPETE_SECS * 3 + warm + 10)) -o "$out" \
    "https://$BP_IP_B:8443/$BP_BIG" 2>/dev/null &
  tpid=$!
  BP_BG_PIDS+=("$tpid")
  sleep "$warm"
  s0=$(stat -c %s "$out" 2>/dev/null || echo 0)
  t0=$(date +%s.%N)
  timeout $((BENCH_COMPETE_SECS * 3)) "$@" >"$BENCH_DIR/compete-other.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  s1=$(stat -c %s "$out" 2>/dev/null || echo 0)
  kill "$tpid" 2>/dev/null
  wait "$tpid" 2>/dev/null
  rm -f "$out"
  local secs tcp_mbps other_mbps=NA share=NA
  if [[ $ospec == @* ]]; then
    obytes=$(stat -c %s "${ospec#@}" 2>/dev/null || echo 0)
  elif ((rc == 0)); then
    obytes=$ospec
  else
    obytes=NA
  fi
  secs=$(bp_calc "$t1 - $t0")
  tcp_mbps=$(bp_calc "($s1 - $s0) * 8 / $secs / 1e6" 2)
  if [[ $obytes != NA ]]; then
    other_mbps=$(bp_calc "$obytes * 8 / $secs / 1e6" 2)
    share=$(bp_calc "$other_mbps / ($other_mbps + $tcp_mbps + 1e-9)" 3)
  fi
  bp_emit compete label=$label tcp_cc=${cc:-default} other_rc=$rc secs=$secs \
    tcp_bytes=$((s1 - s0)) tcp_Mbps=$tcp_mbps other_bytes=$obytes other_Mbps=$other_mbps \
    other_share=$share warmup_s=$warm rtt_ms=$((2 * BENCH_DELAY_MS)) rate_mbit=$BENCH_RATE_MBIT \
    loss_pct=${BP_COMPETE_LOSS:-NA}
}

# Demonstration: a long TCP download vs a second TCP download (what an RGTP pull will
# replace) for BENCH_COMPETE_SECS, for each congestion control, at loss 0 and 1 %.
bp_compete_all() {
  local loss cc f=$BENCH_DIR/compete-other.out
  for loss in 0 1; do
    bp_lossy_up "$loss" || return 1
    for cc in $BENCH_CCS; do
      "$BP_LOSSY_LINK" congctl "$cc"
      rm -f "$f"
      BP_COMPETE_LOSS=$loss bp_compete "tcp-$cc-vs-tcp-$cc" "@$f" -- \
        ip netns exec rgtp-a curl -sk --max-time "$BENCH_COMPETE_SECS" -o "$f" \
        "https://$BP_IP_B:8443/$BP_BIG"
      rm -f "$f"
    done
    bp_lossy_down
  done
}

# ----------------------------------------------------------------------------- main
bp_setup_line() {
  local cipher
  cipher=$(openssl s_client -connect 127.0.0.1:8443 -tls1_3 </dev/null 2>/dev/null | awk '/^ *Cipher *:|Cipher is/ {print $NF; exit}')
  bp_emit setup kernel="$(uname -r)" cpus="$(nproc)" default_cc="$(sysctl -n net.ipv4.tcp_congestion_control)" \
    nginx="$(nginx -v 2>&1 | sed 's/.*\///')" curl="$(curl --version | awk 'NR==1 {print $2}')" \
    tls_cipher=${cipher:-unknown} big_bytes=$BP_BIG_SIZE mid_bytes=$BP_MID_SIZE
}

bp_cleanup() {
  local p
  for p in "${BP_BG_PIDS[@]}"; do [[ -d /proc/$p ]] && kill "$p" 2>/dev/null; done
  bp_nginx_stop lo
  bp_nginx_stop lossy
  "$BP_LOSSY_LINK" down 2>/dev/null
  rm -f "$BENCH_DIR/download.tmp" "$BENCH_DIR/compete-tcp.out" "$BENCH_DIR/compete-other.out"
}

bp_main() {
  set -uo pipefail
  local parts=("$@")
  ((${#parts[@]})) || parts=(loopback fanout lossy compete)
  trap bp_cleanup EXIT
  trap 'exit 130' INT TERM
  bp_init || exit 1
  bp_log "work dir $BENCH_DIR, results in $BENCH_DIR/results.txt and results.jsonl (run $BP_RUN_ID)"
  bp_nginx_start lo || exit 1
  bp_setup_line
  local part
  for part in "${parts[@]}"; do
    case $part in
      loopback) bp_loopback_all ;;
      fanout) bp_fanout_all ;;
      lossy) bp_lossy_all ;;
      compete) bp_compete_all ;;
      *) bp_die "unknown part $part (loopback fanout lossy compete)"; exit 2 ;;
    esac
  done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  # overall cap so the whole run always ends by itself
  if [[ -z ${BP_CAPPED:-} ]]; then
    export BP_CAPPED=1
    exec timeout --signal=TERM --kill-after=30 "${BENCH_TIMEOUT:-1200}" "$0" "$@"
  fi
  bp_main "$@"
fi

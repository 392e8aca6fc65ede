#!/usr/bin/env bash
# bench.sh: RGTP measured side by side with what users would pick instead (issue 5), in
# one run on this machine, ending in ONE report (markdown tables, pasteable into the
# README) on stdout and in $BENCH_DIR/bench.txt, and the same as JSON in
# $BENCH_DIR/bench.json.
#
#   sudo scripts/bench.sh                 full run (builds what is missing; <= ~20 min)
#   sudo BENCH_QUICK=1 scripts/bench.sh   smoke version (smaller files, fewer cases, ~5 min)
#
# Parts (all on this machine; traffic only on loopback and inside the rgtp-a / rgtp-b
# namespaces this script creates):
#   1 loopback  1 GiB: rgtp-pull (to /dev/null and to a file; 1200-byte and 65000-byte
#               datagrams) vs curl <- nginx over HTTPS (TLS 1.3) and plain HTTP, and vs a
#               QUIC transfer (scripts/quic-bench, quinn 0.11). Throughput, CPU seconds of
#               each side, peak RSS of each side. Median of BENCH_REPEAT runs.
#   2 fanout    one rgtp-expose, N concurrent rgtp-pull of 64 MiB to /dev/null vs nginx
#               HTTPS (and HTTP) to N curls: server CPU seconds per GiB, aggregate rate.
#   3 lossy     scripts/lossy-link.sh (40 ms RTT, 200 Mbit/s, loss 0/1/5/10 % both ways):
#               rgtp-pull rgtp-a <- rgtp-expose in rgtp-b vs HTTPS over TCP bbr and cubic;
#               goodput and the link emulator's loss counters.
#   4 compete   one RGTP pull and one HTTPS/TCP download sharing the link (bp_compete).
#   5 shim      curl over RGTP (librgtp_shim.so via rgtp-run) vs curl over TCP vs
#               rgtp-pull: only when target/release/librgtp_shim.so and rgtp-run exist.
#   6 shimlossy the shim over the emulated link (issue 14): curl <- python3 -m http.server,
#               both under `rgtp-run --strict`, rgtp-a <- rgtp-b, at each loss of
#               BENCH_LOSSES, beside the same pair over plain TCP bbr and cubic in the same
#               sitting (ratios to those rows); then one shim download sharing the link
#               with a TCP cubic download (as part 4 does for pulls).
#   then the ratios against the targets of issue 5, each met / not met.
#
# Environment (defaults; BENCH_QUICK=1 changes the ones marked *):
#   BENCH_DIR=/tmp/rgtp-bench  BENCH_TIMEOUT=1320* (hard cap for everything, builds included;
#   a part that no longer fits is skipped and says so)  BENCH_PARTS="loopback fanout lossy
#   compete shim"  BENCH_REPEAT=3* (loopback runs per case, median reported)
#   BENCH_LOOP_DGRAMS="1200 65000"  BENCH_FANOUT="50 200"*  BENCH_FANOUT_DGRAM=1200
#   BENCH_LOSSES="0 1 5 10"*  BENCH_CCS="bbr cubic"  BENCH_LOSSY_MAX_TIME=40*
#   BENCH_LOSSY_REPEAT=1 (runs per lossy case, median; a timed-out case runs once)
#   BENCH_LOSSY_MIB=256* (file size over the lossy link: long enough that goodput is the
#   steady state's, not start-up's: ~11 s at 200 Mbit/s; both protocols pull the same)
#   BENCH_COMPETE_CCS="bbr cubic"*  BENCH_COMPETE_SECS=20*  BENCH_QUIC=1 (0: skip QUIC)
#   BENCH_QUIC_BUILD_TIMEOUT=1200 (seconds; the QUIC peer is skipped if it does not build)
#   BENCH_SHIM_BUILD=1 (0: use the shim only if already built)  BENCH_SHIM_PORT=18431
#   BENCH_SHIM_LOSSY_MIB=128* (file size for part 6)
#   BENCH_NO_BUILD=1 (use the binaries as they are)  and bench-peers.sh's variables.
# Needs root, a Rust toolchain (cargo >= 1.85) and Debian's apt for the rest.

# Cargo resolves a relative CARGO_TARGET_DIR against its working directory: make it
# absolute now, so every build below and every path derived from it agree.
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
BX_SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BX_ROOT=$(cd "$BX_SCRIPT_DIR/.." && pwd)
BENCH_QUICK=${BENCH_QUICK:-0}
if [[ $BENCH_QUICK == 1 ]]; then
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
  BENCH_REPEAT=${BENCH_REPEAT:-1}
  BENCH_FANOUT=${BENCH_FANOUT:-"10 40"}
  BENCH_LOSSES=${BENCH_LOSSES:-"0 5"}
  BENCH_LOSSY_MAX_TIME=${BENCH_LOSSY_MAX_TIME:-15}
  BENCH_LOSSY_MIB=${BENCH_LOSSY_MIB:-64}
  BENCH_COMPETE_CCS=${BENCH_COMPETE_CCS:-"bbr"}
  BENCH_COMPETE_SECS=${BENCH_COMPETE_SECS:-8}
  BENCH_SHIM_LOSSY_MIB=${BENCH_SHIM_LOSSY_MIB:-32}
fi
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1320}
BENCH_REPEAT=${BENCH_REPEAT:-3}
BENCH_PARTS=${BENCH_PARTS:-"loopback fanout lossy compete shim shimlossy"}
BENCH_LOOP_DGRAMS=${BENCH_LOOP_DGRAMS:-"1200 65000"}
BENCH_FANOUT_DGRAM=${BENCH_FANOUT_DGRAM:-1200}
BENCH_COMPETE_CCS=${BENCH_COMPETE_CCS:-"bbr cubic"}
BENCH_LOSSY_REPEAT=${BENCH_LOSSY_REPEAT:-1}
BENCH_LOSSY_MIB=${BENCH_LOSSY_MIB:-256}
BX_LOSSY_FILE=lossy-${BENCH_LOSSY_MIB}MiB.bin
BENCH_SHIM_LOSSY_MIB=${BENCH_SHIM_LOSSY_MIB:-128}
BENCH_QUIC=${BENCH_QUIC:-1}
BENCH_QUIC_BUILD_TIMEOUT=${BENCH_QUIC_BUILD_TIMEOUT:-1200}

# Overall cap: the whole run always ends by itself (the EXIT trap still prints the table
# of what was measured). Re-exec under timeout before anything else.
if [[ ${BASH_SOURCE[0]} == "$0" && -z ${BX_CAPPED:-} ]]; then
  BX_T_START=$(date +%s)
  export BX_CAPPED=1 BX_T_START BENCH_QUICK BENCH_TIMEOUT
  exec timeout --signal=TERM --kill-after=30 "$BENCH_TIMEOUT" "$0" "$@"
fi
BX_T_START=${BX_T_START:-$(date +%s)}

# shellcheck source=bench-peers.sh
source "$BX_SCRIPT_DIR/bench-peers.sh"
if [[ $BENCH_QUICK == 1 ]]; then
  BP_BIG="big-256MiB.bin"
  BP_BIG_SIZE=$((256 << 20))
fi
BX_BIG_LABEL="$((BP_BIG_SIZE >> 20)) MiB"
((BP_BIG_SIZE == 1 << 30)) && BX_BIG_LABEL="1 GiB"
BX_CMP=compete-256MiB.bin # RGTP side of the competing-flow test (~20 s at half the link)
BX_CMP_SIZE=$((256 << 20))
[[ $BENCH_QUICK == 1 ]] && BX_CMP=compete-64MiB.bin BX_CMP_SIZE=$((64 << 20))
BX_REL=${CARGO_TARGET_DIR:-$BX_ROOT/target}/release
BX_EXPOSE=$BX_REL/rgtp-expose
BX_PULL=$BX_REL/rgtp-pull
# quic-bench is a workspace of its own: its target dir is CARGO_TARGET_DIR when set.
BX_QUIC_BIN=${CARGO_TARGET_DIR:-$BX_SCRIPT_DIR/quic-bench/target}/release/quic-bench
BX_QUIC_STATE=""  # empty = usable; else why not
BX_PIDS=()        # processes this script started (killed by pid at exit)
BX_RENDERED=0
BX_SKIPPED=()     # "part: reason"
export RGTP_CONFIG_DIR=$BENCH_DIR/rgtp-config RGTP_CACHE_DIR=$BENCH_DIR/rgtp-cache

bx_log() { echo "bench: $*" >&2; }
bx_now() { date +%s; }
bx_left() { echo $((BENCH_TIMEOUT - ($(bx_now) - BX_T_START))); }
# bx_fits PART SECONDS: enough time left for this part? (else record why it was skipped)
bx_fits() {
  local left
  left=$(bx_left)
  ((left > $2 + 45)) && return 0
  BX_SKIPPED+=("$1: skipped, ${left} s left of the ${BENCH_TIMEOUT} s budget, needs ~$2 s")
  bx_log "skipping $1 (time budget)"
  return 1
}
bx_emit() { # like bp_emit, tagged bench=rgtp
  local kind=$1 kv k v line json
  shift
  line="bench=rgtp kind=$kind run=$BP_RUN_ID"
  json="{\"bench\":\"rgtp\",\"kind\":\"$kind\",\"run\":\"$BP_RUN_ID\""
  for kv in "$@"; do
    k=${kv%%=*}
    v=${kv#*=}
    v=${v//[[:space:]]/_}
    line+=" $k=$v"
    # A commit hash can look like a number (36e2188 is 36 x 10^2188): always a string.
    if [[ $k != commit && $v =~ ^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then
      json+=",\"$k\":$v"
    else
      v=${v//\\/\\\\}
      json+=",\"$k\":\"${v//\"/\\\"}\""
    fi
  done
  echo "$line" >&2
  echo "$line" >>"$BENCH_DIR/results.txt"
  echo "$json}" >>"$BENCH_DIR/results.jsonl"
}
bx_load() { awk '{print $1}' /proc/loadavg; }
# peak RSS (VmHWM, kB) of a pid; bx_hwm_reset: restart the high-water mark at the current RSS
bx_hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
bx_hwm_reset() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
bx_hwm_sum() { local p s=0 h; for p in "$@"; do h=$(bx_hwm "$p"); s=$((s + ${h:-0})); done; echo $s; }
# max RssAnon (kB) of a pid, sampled every 0.1 s until bx_sampler_stop (bounded: 1 h).
# VmHWM alone would count the exposer's mmap of its sealed copy (page cache) as its memory.
bx_sampler_start() {
  local pid=$1 f=$BENCH_DIR/anon-$1.max
  echo 0 >"$f"
  (
    m=0
    for ((k = 0; k < 36000; k++)); do
      a=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || break
      [[ -n $a ]] || break
      ((a > m)) && { m=$a; echo "$m" >"$f"; }
      sleep 0.1
    done
  ) &
  BX_SAMPLER=$!
  BX_PIDS+=("$BX_SAMPLER")
}
bx_sampler_stop() { # prints the max RssAnon kB of pid $1
  [[ -n ${BX_SAMPLER:-} ]] && kill "$BX_SAMPLER" 2>/dev/null && wait "$BX_SAMPLER" 2>/dev/null
  BX_SAMPLER=
  local a
  a=$(awk '/^RssAnon:/ {print $2}' "/proc/$1/status" 2>/dev/null)
  awk -v a="${a:-0}" '{print ($1 > a ? $1 : a)}' "$BENCH_DIR/anon-$1.max" 2>/dev/null || echo "${a:-0}"
  rm -f "$BENCH_DIR/anon-$1.max"
}
# kill one pid we started (TERM, bounded wait, KILL)
bx_kill() {
  local pid=$1 i
  [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
  [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
# system-wide UDP error counters "RcvbufErrors SndbufErrors InErrors" (/proc/net/snmp; in a
# netns: that namespace's). Loss on loopback happens here: a full socket buffer drops.
bx_udp_snmp() {
  local pre=()
  [[ -n ${1:-} ]] && pre=(ip netns exec "$1")
  "${pre[@]}" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) n[$i] = i; h = 1 } else print $n["RcvbufErrors"], $n["SndbufErrors"], $n["InErrors"] }' /proc/net/snmp
}
bx_udp_delta() { # "$before" "$after" -> key=value words
  local a b
  read -r -a a <<<"$1"
  read -r -a b <<<"$2"
  echo "udp_rcvbuf_errors=$((b[0] - a[0])) udp_sndbuf_errors=$((b[1] - a[1])) udp_in_errors=$((b[2] - a[2]))"
}
# remove a pull's output and its resume files: only ever inside $BENCH_DIR (never /dev/null!)
bx_rm_out() {
  case $1 in
    "$BENCH_DIR"/*) [[ -c $1 ]] || rm -f -- "$1" "$1.rgtp-part" "$1.rgtp-state" ;;
  esac
  return 0
}
# /dev/null must be the null device (a bug once replaced it with a regular file)
bx_check_devnull() {
  [[ -c /dev/null && $(stat -c '%t:%T' /dev/null) == 1:3 ]] && return 0
  echo "bench: FATAL: /dev/null is not the null character device (1:3): $(ls -la /dev/null)" >&2
  return 1
}
# values of top-level keys of a JSON object in FILE (NA when absent / not JSON)
bx_json_get() {
  local f=$1
  shift
  python3 - "$f" "$@" <<'PY' 2>/dev/null || { local k; for k in "$@"; do printf 'NA '; done; echo; }
import json, sys
try:
    lines = [l for l in open(sys.argv[1]) if l.strip().startswith("{")]
    d = json.loads(lines[-1])
except Exception:
    d = {}
print(" ".join(str(d.get(k, "NA")).lower() if isinstance(d.get(k), bool) else str(d.get(k, "NA")) for k in sys.argv[2:]))
PY
}
# bytes verified in a part file's resume sidecar (docs: core/src/sidecar.rs, version 1)
bx_sidecar_bytes() {
  python3 - "$1" <<'PY' 2>/dev/null || echo 0
import sys
d = open(sys.argv[1], "rb").read()
assert d[:8] == b"RGTPSIDE" and d[8] == 1
size = int.from_bytes(d[41:49], "little"); cs = int.from_bytes(d[49:53], "little")
n = -(-size // cs); bm = d[53:53 + (n + 7) // 8]
have = sum(bin(b).count("1") for b in bm)
last = n - 1
full = have * cs
if n and (bm[last // 8] >> (last % 8)) & 1:
    full -= n * cs - size
print(full)
PY
}

# ----------------------------------------------------------------------------- build
bx_build() {
  [[ ${BENCH_NO_BUILD:-0} == 1 ]] && { [[ -x $BX_EXPOSE && -x $BX_PULL ]] && return 0; bx_log "BENCH_NO_BUILD=1 but $BX_EXPOSE missing"; return 1; }
  command -v cargo >/dev/null || { bx_log "error: cargo not found: install a Rust toolchain (>= 1.85) first"; return 1; }
  local t0
  t0=$(bx_now)
  bx_log "building rgtp-expose / rgtp-pull (log: $BENCH_DIR/build.log)"
  (cd "$BX_ROOT" && timeout 900 cargo build --release -p rgtp-cli) >>"$BENCH_DIR/build.log" 2>&1 ||
    { bx_log "error: cargo build of rgtp failed (see $BENCH_DIR/build.log)"; return 1; }
  if [[ " $BENCH_PARTS " == *" lossy "* || " $BENCH_PARTS " == *" compete "* || " $BENCH_PARTS " == *" shimlossy "* ]]; then
    bx_log "building linkem"
    timeout 600 cargo build --release --manifest-path "$BX_SCRIPT_DIR/linkem/Cargo.toml" >>"$BENCH_DIR/build.log" 2>&1 ||
      { bx_log "error: cargo build of linkem failed (see $BENCH_DIR/build.log)"; return 1; }
  fi
  if [[ " $BENCH_PARTS " == *" shim"* && ${BENCH_SHIM_BUILD:-1} == 1 ]]; then
    bx_log "building the shim (librgtp_shim.so, rgtp-run)"
    (cd "$BX_ROOT" && timeout 900 cargo build --release -p rgtp-shim) >>"$BENCH_DIR/build.log" 2>&1 ||
      bx_log "warning: the shim did not build (see $BENCH_DIR/build.log): part 5 reports it as not built"
  fi
  if [[ $BENCH_QUIC != 1 ]]; then
    BX_QUIC_STATE="skipped (BENCH_QUIC=0)"
  elif [[ " $BENCH_PARTS " == *" loopback "* ]]; then
    bx_log "building quic-bench (quinn; time-box ${BENCH_QUIC_BUILD_TIMEOUT} s)"
    timeout "$BENCH_QUIC_BUILD_TIMEOUT" cargo build --release --manifest-path "$BX_SCRIPT_DIR/quic-bench/Cargo.toml" \
      >>"$BENCH_DIR/build.log" 2>&1 || BX_QUIC_STATE="skipped: quic-bench did not build within ${BENCH_QUIC_BUILD_TIMEOUT} s (see build.log)"
  fi
  BX_BUILD_S=$(($(bx_now) - t0))
  bx_log "builds took ${BX_BUILD_S} s"
}

# ----------------------------------------------------------------------------- rgtp helpers
# bx_expose_start NAME FILE DGRAM [NETNS BIND]: start rgtp-expose, wait (bounded) for its
# `listening` line. Sets BX_EXP_PID BX_EXP_URL BX_EXP_SEAL_CPU (CPU s until listening),
# BX_EXP_SEAL_S (wall), BX_EXP_SEAL_RSS (peak RSS kB until listening).
bx_expose_start() { # one retry, for a machine under load
  bx_expose_start_once "$@" && return 0
  bx_log "retrying rgtp-expose $1 once"
  bx_expose_start_once "$@" && return 0
  BX_SKIPPED+=("$BX_EXP_FAIL (twice)")
  return 1
}
bx_expose_start_once() {
  local name=$1 file=$2 dgram=$3 ns=${4:-} bind=${5:-127.0.0.1} out=$BENCH_DIR/expose-$1.out i t0
  mkdir -p "$RGTP_CONFIG_DIR" "$RGTP_CACHE_DIR"
  local cmd=("$BX_EXPOSE" "$file" --port 0 --bind "$bind" --max-datagram "$dgram")
  [[ -n $ns ]] && cmd=(ip netns exec "$ns" "${cmd[@]}")
  # remove the previous run's file first: the child truncates it only after it starts, and
  # the wait below must never read the old URL
  rm -f "$out" "$BENCH_DIR/expose-$name.err"
  t0=$(date +%s.%N)
  "${cmd[@]}" >"$out" 2>"$BENCH_DIR/expose-$name.err" &
  BX_EXP_PID=$!
  BX_PIDS+=("$BX_EXP_PID")
  for ((i = 0; i < 1800; i++)); do # sealing takes ~1-3 s per GiB; allow 180 s on a busy machine
    grep -q '^listening' "$out" 2>/dev/null && break
    [[ -d /proc/$BX_EXP_PID ]] || break
    sleep 0.1
  done
  if ! grep -q '^listening' "$out" 2>/dev/null; then
    local erc=running
    [[ -d /proc/$BX_EXP_PID ]] || { wait "$BX_EXP_PID"; erc=$?; }
    BX_EXP_FAIL="rgtp-expose $name did not start (exit status: $erc): $(tail -1 "$BENCH_DIR/expose-$name.err")"
    bx_log "error: $BX_EXP_FAIL"
    bx_kill "$BX_EXP_PID"
    return 1
  fi
  BX_EXP_SEAL_S=$(bp_calc "$(date +%s.%N) - $t0" 2)
  BX_EXP_SEAL_CPU=$(bp_calc "$(bp_ticks "$BX_EXP_PID") / $BP_HZ" 2)
  BX_EXP_SEAL_RSS=$(bx_hwm "$BX_EXP_PID")
  BX_EXP_URL=$(grep -m1 '^rgtp://' "$out")
}

# bx_pull URL OUT DGRAM [NETNS] [MAXTIME]: one rgtp-pull under /usr/bin/time (bounded by
# MAXTIME with SIGINT, which saves progress). Exposer CPU and peak RSS over the pull are
# taken from BX_EXP_PID. Sets BX_RC BX_BYTES BX_SECS BX_PULL_CPU BX_PULL_RSS BX_SRV_CPU
# BX_SRV_RSS (VmHWM) BX_SRV_ANON (max RssAnon) BX_COMPLETE and BX_J (rgtp-pull's JSON fields as key=value words).
bx_pull() {
  local url=$1 out=$2 dgram=$3 ns=${4:-} maxt=${5:-300} tf=$BENCH_DIR/time-pull.txt jf=$BENCH_DIR/pull.json t0 t1 w0 w1
  bx_rm_out "$out"
  rm -f "$jf" "$tf"
  local cmd=(/usr/bin/time -v -o "$tf" timeout -s INT -k 5 "$maxt" "$BX_PULL" "$url" -o "$out" --json --quiet
    --max-datagram "$dgram" --timeout 20 --known-exposers "$BENCH_DIR/known_exposers")
  [[ -n $ns ]] && cmd=(ip netns exec "$ns" "${cmd[@]}")
  bx_hwm_reset "$BX_EXP_PID"
  bx_sampler_start "$BX_EXP_PID"
  local u0 u1
  u0=$(bx_udp_snmp "$ns")
  t0=$(bp_ticks "$BX_EXP_PID")
  w0=$(date +%s.%N)
  "${cmd[@]}" >"$jf" 2>"$BENCH_DIR/pull.err"
  BX_RC=$?
  w1=$(date +%s.%N)
  t1=$(bp_ticks "$BX_EXP_PID")
  u1=$(bx_udp_snmp "$ns")
  BX_SRV_CPU=$(bp_calc "($t1 - $t0) / $BP_HZ" 2)
  BX_SRV_RSS=$(bx_hwm "$BX_EXP_PID")
  BX_SRV_ANON=$(bx_sampler_stop "$BX_EXP_PID")
  BX_PULL_RSS=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tf" 2>/dev/null)
  BX_PULL_CPU=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$tf" 2>/dev/null)
  local keys=(datagrams_received bytes_received datagrams_sent requests rerequested_fragments
    duplicate_fragments bad_chunks handshakes) vals i
  read -r -a vals <<<"$(bx_json_get "$jf" "${keys[@]}")"
  BX_J=()
  for i in "${!keys[@]}"; do BX_J+=("${keys[$i]}=${vals[$i]:-NA}"); done
  # shellcheck disable=SC2207
  BX_J+=($(bx_udp_delta "$u0" "$u1"))
  local jb js
  read -r jb js <<<"$(bx_json_get "$jf" bytes seconds)"
  if [[ $BX_RC == 0 && $jb != NA ]]; then
    BX_COMPLETE=1 BX_BYTES=$jb BX_SECS=$js
  else
    # interrupted or failed: what was verified and saved, over the wall time
    BX_COMPLETE=0 BX_SECS=$(bp_calc "$w1 - $w0" 3)
    BX_BYTES=0
    [[ -f $out.rgtp-state ]] && BX_BYTES=$(bx_sidecar_bytes "$out.rgtp-state")
    bx_log "rgtp-pull exit $BX_RC: $(tail -2 "$BENCH_DIR/pull.err" | tr '\n' ' ')"
  fi
  bx_rm_out "$out"
  return 0
}

# median run among "MBps|rest" strings: prints the whole line of the median (lower middle)
bx_median() { printf '%s\n' "$@" | sort -t'|' -k1,1g | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}'; }

# ----------------------------------------------------------------------------- 1 loopback
bx_part_loopback() {
  bx_log "part 1: loopback, $BX_BIG_LABEL, $BENCH_REPEAT run(s) per case"
  local big=$BENCH_DIR/www/$BP_BIG proto sink dgram r runs line dst pids port
  bp_nginx_start lo || return 1
  bp_warm_cache
  # --- curl <- nginx
  for proto in https http; do
    port=8088
    [[ $proto == https ]] && port=8443
    for sink in devnull file; do
      dst=/dev/null
      [[ $sink == file ]] && dst=$BENCH_DIR/download.tmp
      runs=()
      for ((r = 0; r < BENCH_REPEAT; r++)); do
        pids=$(bp_nginx_pids lo)
        for p in $pids; do bx_hwm_reset "$p"; done
        BP_SRV=lo bp_curl "$proto://127.0.0.1:$port/$BP_BIG" "$dst" "" 300
        rm -f "$BENCH_DIR/download.tmp"
        runs+=("$(bp_calc "$BP_BYTES / $BP_SECS / 1e6" 1)|$BP_BYTES $BP_SECS $BP_SRV_CPU $BP_CURL_CPU $(bx_hwm_sum $pids) $BP_RSS_KB $BP_EXIT")
      done
      line=$(bx_median "${runs[@]}")
      local mb rest b s sc cc sr cr ex
      mb=${line%%|*}
      rest=${line#*|}
      read -r b s sc cc sr cr ex <<<"$rest"
      bx_emit loopback impl=$proto variant="curl<-nginx" sink=$sink bytes=$b secs=$s MBps=$mb \
        srv_cpu_s=$sc cli_cpu_s=$cc srv_rss_kb=$sr cli_rss_kb=$cr complete="$([[ $ex == 0 && $b == "$BP_BIG_SIZE" ]] && echo 1 || echo 0)" \
        runs_MBps="$(printf '%s\n' "${runs[@]}" | cut -d'|' -f1 | paste -sd/)" load="$(bx_load)"
    done
  done
  # --- rgtp
  for dgram in $BENCH_LOOP_DGRAMS; do
    bx_expose_start lo-$dgram "$big" "$dgram" || continue
    for sink in devnull file; do
      dst=/dev/null
      [[ $sink == file ]] && dst=$BENCH_DIR/pull.out
      runs=()
      local jsave=()
      for ((r = 0; r < BENCH_REPEAT; r++)); do
        bx_pull "$BX_EXP_URL" "$dst" "$dgram" "" 300
        runs+=("$(bp_calc "$BX_BYTES / $BX_SECS / 1e6" 1)|$BX_BYTES $BX_SECS $BX_SRV_CPU $BX_PULL_CPU $BX_SRV_RSS $BX_PULL_RSS $BX_COMPLETE $r $BX_SRV_ANON")
        jsave+=("${BX_J[*]}")
      done
      line=$(bx_median "${runs[@]}")
      local b s sc cc sr cr co ri sa
      read -r b s sc cc sr cr co ri sa <<<"${line#*|}"
      # shellcheck disable=SC2086
      bx_emit loopback impl=rgtp variant="dgram=$dgram" dgram=$dgram sink=$sink bytes=$b secs=$s MBps=${line%%|*} \
        srv_cpu_s=$sc cli_cpu_s=$cc srv_rss_kb=$sr srv_anon_kb=$sa cli_rss_kb=$cr complete=$co \
        seal_s=$BX_EXP_SEAL_S seal_cpu_s=$BX_EXP_SEAL_CPU seal_rss_kb=$BX_EXP_SEAL_RSS \
        runs_MBps="$(printf '%s\n' "${runs[@]}" | cut -d'|' -f1 | paste -sd/)" load="$(bx_load)" ${jsave[$ri]}
    done
    bx_kill "$BX_EXP_PID"
  done
  # --- QUIC (quinn)
  bx_quic_loopback
}

bx_quic_loopback() {
  if [[ -n $BX_QUIC_STATE ]]; then
    bx_emit loopback impl=quic variant=quinn sink=devnull skipped="$BX_QUIC_STATE"
    return 0
  fi
  if [[ ! -x $BX_QUIC_BIN ]]; then
    BX_QUIC_STATE="skipped: $BX_QUIC_BIN missing"
    bx_emit loopback impl=quic variant=quinn sink=devnull skipped="$BX_QUIC_STATE"
    return 0
  fi
  local out=$BENCH_DIR/quic-server.out cert=$BENCH_DIR/quic-cert.der spid i r addr tf=$BENCH_DIR/time-quic.txt
  local jf=$BENCH_DIR/quic-client.json runs=() t0 t1 b s rc
  rm -f "$out" "$cert"
  "$BX_QUIC_BIN" server --listen 127.0.0.1:0 --cert-out "$cert" --file "$BENCH_DIR/www/$BP_BIG" --conns 1000 \
    >"$out" 2>"$BENCH_DIR/quic-server.err" &
  spid=$!
  BX_PIDS+=("$spid")
  for ((i = 0; i < 100; i++)); do grep -q '^listening' "$out" 2>/dev/null && break; sleep 0.1; done
  addr=$(awk '/^listening on/ {print $3; exit}' "$out")
  if [[ -z $addr ]]; then
    BX_QUIC_STATE="skipped: quic-bench server did not start ($(tail -1 "$BENCH_DIR/quic-server.err"))"
    bx_emit loopback impl=quic variant=quinn sink=devnull skipped="$BX_QUIC_STATE"
    bx_kill "$spid"
    return 0
  fi
  for ((r = 0; r < BENCH_REPEAT; r++)); do
    bx_hwm_reset "$spid"
    t0=$(bp_ticks "$spid")
    /usr/bin/time -v -o "$tf" timeout -k 5 300 "$BX_QUIC_BIN" client --connect "$addr" --cert "$cert" \
      --expect "$BP_BIG_SIZE" >"$jf" 2>"$BENCH_DIR/quic-client.err"
    rc=$?
    t1=$(bp_ticks "$spid")
    read -r b s <<<"$(bx_json_get "$jf" bytes seconds)"
    [[ $b == NA ]] && b=0 s=1
    runs+=("$(bp_calc "$b / $s / 1e6" 1)|$b $s $(bp_calc "($t1 - $t0) / $BP_HZ" 2) $(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$tf") $(bx_hwm "$spid") $(awk -F': ' '/Maximum resident set size/ {print $2}' "$tf") $rc")
  done
  bx_kill "$spid"
  local line sc cc sr cr
  line=$(bx_median "${runs[@]}")
  read -r b s sc cc sr cr rc <<<"${line#*|}"
  bx_emit loopback impl=quic variant="quinn_0.11" sink=devnull bytes=$b secs=$s MBps=${line%%|*} \
    srv_cpu_s=$sc cli_cpu_s=$cc srv_rss_kb=$sr cli_rss_kb=$cr complete="$([[ $rc == 0 ]] && echo 1 || echo 0)" \
    runs_MBps="$(printf '%s\n' "${runs[@]}" | cut -d'|' -f1 | paste -sd/)" load="$(bx_load)"
}

# ----------------------------------------------------------------------------- 2 fan-out
# bx_fanout_rgtp N DGRAM: one exposer (BX_EXP_PID, the 64 MiB file), N concurrent pulls.
bx_fanout_rgtp() {
  local n=$1 dgram=$2 dir=$BENCH_DIR/fanout-rgtp i cpids=() me=$BASHPID c0 c1 w0 w1 t0 t1
  rm -rf "$dir"
  mkdir -p "$dir"
  bx_hwm_reset "$BX_EXP_PID"
  bx_sampler_start "$BX_EXP_PID"
  c0=$(bp_ticks "$BX_EXP_PID")
  w0=$(bp_self_child_ticks "$me")
  local u0 u1
  u0=$(bx_udp_snmp)
  t0=$(date +%s.%N)
  for ((i = 0; i < n; i++)); do
    timeout -s INT -k 5 240 "$BX_PULL" "$BX_EXP_URL" -o /dev/null --json --quiet --max-datagram "$dgram" \
      --timeout 30 --known-exposers "$dir/known-$i" >"$dir/$i.json" 2>"$dir/$i.err" &
    cpids+=($!)
  done
  BX_PIDS+=("${cpids[@]}")
  wait "${cpids[@]}"
  t1=$(date +%s.%N)
  c1=$(bp_ticks "$BX_EXP_PID")
  w1=$(bp_self_child_ticks "$me")
  u1=$(bx_udp_snmp)
  local anon
  anon=$(bx_sampler_stop "$BX_EXP_PID")
  local ok bytes rer dgr dup secs srv agg
  read -r ok bytes rer dgr dup <<<"$(python3 - "$dir" "$n" <<'PY'
import json, sys, os
ok = b = rr = dg = du = 0
for i in range(int(sys.argv[2])):
    try:
        d = json.loads(open(os.path.join(sys.argv[1], f"{i}.json")).read().strip().splitlines()[-1])
    except Exception:
        continue
    ok += 1; b += d.get("bytes", 0); rr += d.get("rerequested_fragments", 0); dg += d.get("datagrams_received", 0)
    du += d.get("duplicate_fragments", 0)
print(ok, b, rr, dg, du)
PY
)"
  local errs
  errs=$(cat "$dir"/*.err 2>/dev/null | sort | uniq -c | sort -rn | head -3 | tr -s ' \n' ' ')
  rm -rf "$dir"
  BX_PIDS=("${BX_PIDS[@]:0:${#BX_PIDS[@]}-n}")
  secs=$(bp_calc "$t1 - $t0")
  srv=$(bp_calc "($c1 - $c0) / $BP_HZ" 2)
  agg=$(bp_calc "${bytes:-0} / $secs / 1e6" 1)
  # shellcheck disable=SC2046 # bx_udp_delta prints several key=value words
  bx_emit fanout proto=rgtp dgram=$dgram file=$BP_MID clients=$n ok=${ok:-0} bytes=${bytes:-0} secs=$secs MBps=$agg \
    srv_cpu_s=$srv srv_cpu_s_per_GiB="$(bp_calc "$srv / ((${bytes:-0} + 1) / 1073741824)" 3)" \
    clients_cpu_s="$(bp_calc "($w1 - $w0) / $BP_HZ" 2)" srv_rss_kb="$(bx_hwm "$BX_EXP_PID")" srv_anon_kb=$anon \
    rerequested_fragments=${rer:-0} datagrams_received=${dgr:-0} duplicate_fragments=${dup:-0} $(bx_udp_delta "$u0" "$u1") load="$(bx_load)" errors="${errs:-none}"
}

bx_part_fanout() {
  bx_log "part 2: fan-out ($BENCH_FANOUT pullers, 64 MiB)"
  [[ -n $(bp_nginx_pids lo) ]] || bp_nginx_start lo || return 1
  bp_warm_cache
  local n
  if bx_expose_start fanout "$BENCH_DIR/www/$BP_MID" "$BENCH_FANOUT_DGRAM"; then
    for n in $BENCH_FANOUT; do bx_fanout_rgtp "$n" "$BENCH_FANOUT_DGRAM"; done
    bx_kill "$BX_EXP_PID"
  fi
  for n in $BENCH_FANOUT; do
    bp_fanout "$n" https >&2
    bp_fanout "$n" http >&2
  done
}

# ----------------------------------------------------------------------------- 3 lossy
bx_part_lossy() {
  bx_log "part 3: lossy link (loss $BENCH_LOSSES %, $((2 * BENCH_DELAY_MS)) ms RTT, $BENCH_RATE_MBIT Mbit/s)"
  local loss cc c0 c1 a0 a1 lf=$BENCH_DIR/www/$BX_LOSSY_FILE
  if [[ $(stat -c %s "$lf" 2>/dev/null) != $((BENCH_LOSSY_MIB << 20)) ]]; then
    head -c $((BENCH_LOSSY_MIB << 20)) "$BENCH_DIR/www/$BP_BIG" >"$lf" 2>/dev/null
    [[ $(stat -c %s "$lf") == $((BENCH_LOSSY_MIB << 20)) ]] || head -c $((BENCH_LOSSY_MIB << 20)) /dev/urandom >"$lf"
  fi
  for loss in $BENCH_LOSSES; do
    bx_fits "lossy loss=$loss %" $((2 * BENCH_LOSSY_MAX_TIME + 40)) || continue
    bp_lossy_up "$loss" >&2 || return 1
    # RGTP: exposer in rgtp-b, pull from rgtp-a; BENCH_LOSSY_REPEAT runs (median reported)
    local r
    if bx_expose_start lossy "$lf" 1200 rgtp-b "$BP_IP_B"; then
     for ((r = 0; r < BENCH_LOSSY_REPEAT; r++)); do
      c0=$(bp_link_counters)
      bx_pull "$BX_EXP_URL" "$BENCH_DIR/lossy-pull.out" 1200 rgtp-a "$BENCH_LOSSY_MAX_TIME"
      c1=$(bp_link_counters)
      read -r -a a0 <<<"$c0"
      read -r -a a1 <<<"$c1"
      local ba_in=$((a1[4] - a0[4])) ba_lost=$((a1[5] - a0[5] + a1[6] - a0[6])) ba_q=$((a1[7] - a0[7]))
      local ab_in=$((a1[0] - a0[0])) ab_lost=$((a1[1] - a0[1] + a1[2] - a0[2])) ab_q=$((a1[3] - a0[3]))
      # shellcheck disable=SC2068
      bx_emit lossy proto=rgtp cc=rgtp dgram=1200 loss_pct=$loss loss_dir=$BENCH_LOSS_DIR rtt_ms=$((2 * BENCH_DELAY_MS)) \
        rate_mbit=$BENCH_RATE_MBIT queue_ms=$BENCH_QUEUE_MS file=$BX_LOSSY_FILE bytes=$BX_BYTES secs=$BX_SECS \
        Mbps="$(bp_calc "$BX_BYTES * 8 / $BX_SECS / 1e6" 2)" complete=$BX_COMPLETE exit=$BX_RC max_time=$BENCH_LOSSY_MAX_TIME \
        link_ba_pkts=$ba_in link_ba_lost=$ba_lost link_ba_queue_drops=$ba_q \
        link_ba_loss_pct="$(bp_calc "100 * $ba_lost / ($ba_in > 0 ? $ba_in : 1)" 2)" \
        link_ab_pkts=$ab_in link_ab_lost=$ab_lost link_ab_queue_drops=$ab_q \
        srv_cpu_s=$BX_SRV_CPU cli_cpu_s=$BX_PULL_CPU run_no=$r ${BX_J[@]}
      ((BX_COMPLETE)) || break # a timed-out case is not repeated
     done
     bx_kill "$BX_EXP_PID"
    fi
    for cc in $BENCH_CCS; do
      for ((r = 0; r < BENCH_LOSSY_REPEAT; r++)); do
        bp_lossy_one "$cc" "$loss" "$BX_LOSSY_FILE" >&2
        [[ $BP_EXIT == 0 ]] || break # a timed-out case (cubic under loss: ~40 s) is not repeated
      done
    done
    bp_lossy_down
  done
}

# ----------------------------------------------------------------------------- 4 compete
bx_part_compete() {
  local cc out=$BENCH_DIR/compete-pull.out cmpf=$BENCH_DIR/www/$BX_CMP
  if [[ $(stat -c %s "$cmpf" 2>/dev/null) != "$BX_CMP_SIZE" ]]; then
    head -c "$BX_CMP_SIZE" "$BENCH_DIR/www/$BP_BIG" >"$cmpf" 2>/dev/null
    [[ $(stat -c %s "$cmpf") == "$BX_CMP_SIZE" ]] || head -c "$BX_CMP_SIZE" /dev/urandom >"$cmpf"
  fi
  # the TCP flow downloads the 1 GiB file (bp_compete); make sure it exists in quick mode too
  [[ -s $BENCH_DIR/www/big-1GiB.bin ]] || head -c $((1 << 30)) /dev/urandom >"$BENCH_DIR/www/big-1GiB.bin"
  bx_log "part 4: one RGTP pull ($((BX_CMP_SIZE >> 20)) MiB) + one HTTPS/TCP download sharing the link (loss 0)"
  for cc in $BENCH_COMPETE_CCS; do
    bx_fits "compete tcp-$cc" $((BENCH_COMPETE_SECS * 3 + 30)) || continue
    bp_lossy_up 0 >&2 || return 1
    "$BP_LOSSY_LINK" congctl "$cc"
    if bx_expose_start compete "$cmpf" 1200 rgtp-b "$BP_IP_B"; then
      bx_rm_out "$out"
      # bp_compete downloads $BP_BIG; keep it the 1 GiB file whatever BENCH_QUICK says
      BP_BIG=big-1GiB.bin BP_COMPETE_LOSS=0 bp_compete "rgtp-vs-tcp-$cc" "$BX_CMP_SIZE" -- \
        ip netns exec rgtp-a "$BX_PULL" "$BX_EXP_URL" -o "$out" --json --quiet --timeout 20 \
        --known-exposers "$BENCH_DIR/known_exposers" >&2
      local partial=$BX_CMP_SIZE
      [[ -f $out.rgtp-state ]] && partial=$(bx_sidecar_bytes "$out.rgtp-state")
      # rgtp-pull's own JSON (the last line of its log) and, if it was stopped, what it had
      local keys=(seconds rerequested_fragments datagrams_received) vals
      read -r -a vals <<<"$(bx_json_get "$BENCH_DIR/compete-other.log" "${keys[@]}")"
      bx_emit compete_rgtp label="rgtp-vs-tcp-$cc" tcp_cc=$cc verified_bytes=$partial \
        rgtp_seconds=${vals[0]} rerequested_fragments=${vals[1]} datagrams_received=${vals[2]}
      bx_rm_out "$out"
      bx_kill "$BX_EXP_PID"
    fi
    bp_lossy_down
  done
}

# ----------------------------------------------------------------------------- 5 shim
# ===== SHIM HOOK (issue 5 part 4) ==========================================================
# Runs only when the shim is built: target/release/librgtp_shim.so AND target/release/rgtp-run;
# otherwise prints "shim: not built yet". Everything runs in a private network namespace
# (rgtp-shim, loopback only) so that its TCP/UDP counters prove what crossed UDP:
#   server: python3 -m http.server P under `rgtp-run --ports P --strict`
#   client: curl under `rgtp-run --ports P --strict`: the big file, then GET / (set-up time)
# against the same curl <- python3 http.server over plain TCP (port P+1), and against
# rgtp-pull (part 1). A strict shim-run server must have no TCP listener on P.
BX_SHIM_NS=rgtp-shim
bx_shim_counters() { # "udp_in udp_out tcp_active tcp_passive tcp_in_segs" of the shim netns
  ip netns exec "$BX_SHIM_NS" awk '
    /^Udp:/ { if (!u) { for (i = 1; i <= NF; i++) U[$i] = i; u = 1 } else { ui = $U["InDatagrams"]; uo = $U["OutDatagrams"] } }
    /^Tcp:/ { if (!t) { for (i = 1; i <= NF; i++) T[$i] = i; t = 1 } else { ta = $T["ActiveOpens"]; tp = $T["PassiveOpens"]; ts = $T["InSegs"] } }
    END { print ui, uo, ta, tp, ts }' /proc/net/snmp
}
bx_part_shim() {
  local so=$BX_REL/librgtp_shim.so run=$BX_REL/rgtp-run
  if [[ ! -f $so || ! -x $run ]]; then
    echo "shim: not built yet" >&2
    bx_emit shim state="not built yet" detail="needs $so and $run"
    return 0
  fi
  bx_log "part 5: shim (curl over RGTP via rgtp-run vs curl over TCP), in netns $BX_SHIM_NS"
  local port=${BENCH_SHIM_PORT:-18431} tport spid tpid i f=$BP_BIG NS=(ip netns exec "$BX_SHIM_NS")
  tport=$((port + 1))
  ip netns del "$BX_SHIM_NS" 2>/dev/null
  ip netns add "$BX_SHIM_NS" && ip -n "$BX_SHIM_NS" link set lo up || { bx_emit shim state="cannot create netns"; return 0; }
  BX_SHIM_NS_UP=1
  "${NS[@]}" python3 -m http.server "$tport" --bind 127.0.0.1 --directory "$BENCH_DIR/www" >/dev/null 2>"$BENCH_DIR/shim-tcp-server.err" &
  tpid=$!
  BX_PIDS+=("$tpid")
  "${NS[@]}" "$run" --ports "$port" --strict --log-file "$BENCH_DIR/shim-server.log" -- \
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$BENCH_DIR/www" >/dev/null 2>"$BENCH_DIR/shim-server.err" &
  spid=$!
  BX_PIDS+=("$spid")
  local ready=0
  for ((i = 0; i < 50; i++)); do
    if timeout 5 "${NS[@]}" "$run" --ports "$port" --strict -- curl -s -o /dev/null --max-time 3 "http://127.0.0.1:$port/" 2>/dev/null; then
      ready=1
      break
    fi
    sleep 0.2
  done
  local why=""
  ((ready)) || why="shim-run server did not answer a shim-run curl within ~10 s: $(tail -1 "$BENCH_DIR/shim-server.err")"
  [[ -z $why ]] && "${NS[@]}" ss -ltnH "sport = :$port" 2>/dev/null | grep -q . &&
    why="not intercepting: a TCP listener on $port under --strict"
  if [[ -n $why ]]; then
    bx_emit shim state="$why"
    bx_kill "$spid"; bx_kill "$tpid"; bx_shim_ns_down
    return 0
  fi
  for ((i = 0; i < 30; i++)); do "${NS[@]}" curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$tport/" && break; sleep 0.1; done
  local fmt='%{size_download} %{time_total} %{time_connect} %{time_starttransfer} %{exitcode}\n' b s c st e cc cr r mode what
  local c0 c1
  # Both servers read the file as they send it, while rgtp-pull's exposer sealed its copy
  # before the clock started: read it once so that no mode pays for a cold page cache
  # (measured: a cold file doubled the shim server's CPU and halved its rate, and only the
  # first shim run paid it).
  cat "$BENCH_DIR/www/$f" >/dev/null
  for mode in shim tcp; do
    for what in "$f" ""; do # the big file, then set-up time on a tiny request (GET /)
      local cmd=(curl -s -o /dev/null --max-time 300 -w "$fmt")
      if [[ $mode == shim ]]; then
        cmd=(timeout -k 5 320 "${NS[@]}" "$run" --ports "$port" --strict -- "${cmd[@]}" "http://127.0.0.1:$port/$what")
      else
        cmd=(timeout -k 5 320 "${NS[@]}" "${cmd[@]}" "http://127.0.0.1:$tport/$what")
      fi
      local runs=() reps=$BENCH_REPEAT
      [[ -z $what ]] && reps=$((BENCH_REPEAT * 3)) # set-up time: more samples, they are cheap
      read -r -a c0 <<<"$(bx_shim_counters)"
      for ((r = 0; r < reps; r++)); do
        read -r b s c st e <<<"$(/usr/bin/time -f '%U %S %M' -o "$BENCH_DIR/time-shim.txt" "${cmd[@]}" 2>/dev/null)"
        runs+=("$(bp_calc "${b:-0} / ${s:-1} / 1e6" 1)|${b:-0} ${s:-0} ${c:-0} ${st:-0} ${e:-99} $(awk '{printf "%.2f %s", $1 + $2, $3}' "$BENCH_DIR/time-shim.txt")")
      done
      read -r -a c1 <<<"$(bx_shim_counters)"
      local line key=1
      [[ -z $what ]] && key=3 # set-up: median by connect time
      line=$(for x in "${runs[@]}"; do echo "$x"; done | awk -F'[| ]' -v k=$key '{print $(k == 1 ? 1 : 4) "|" $0}' |
        sort -t'|' -k1,1g | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}')
      line=${line#*|}
      read -r b s c st e cc cr <<<"${line#*|}"
      bx_emit shim state=measured mode=$mode file="${what:-index}" runs=$reps bytes=$b secs=$s MBps=${line%%|*} connect_s=$c \
        ttfb_s=$st exit=$e cli_cpu_s=$cc cli_rss_kb=$cr \
        runs_MBps="$(printf '%s\n' "${runs[@]}" | cut -d'|' -f1 | paste -sd/)" \
        ns_udp_in=$((c1[0] - c0[0])) ns_udp_out=$((c1[1] - c0[1])) ns_tcp_active_opens=$((c1[2] - c0[2])) \
        ns_tcp_passive_opens=$((c1[3] - c0[3])) ns_tcp_in_segs=$((c1[4] - c0[4]))
    done
  done
  bx_kill "$spid"
  bx_kill "$tpid"
  bx_shim_ns_down
}
bx_shim_ns_down() {
  [[ ${BX_SHIM_NS_UP:-0} == 1 ]] || return 0
  local left
  left=$(ip netns pids "$BX_SHIM_NS" 2>/dev/null | tr '\n' ' ')
  [[ -n $left ]] && bx_log "warning: processes left in $BX_SHIM_NS: $left"
  ip netns del "$BX_SHIM_NS" 2>/dev/null
  BX_SHIM_NS_UP=0
}
# ===== END SHIM HOOK =======================================================================

# ----------------------------------------------------------------------------- 6 shim, lossy link
# The shim where programs need it: curl <- python3 -m http.server, both under
# `rgtp-run --strict`, across the emulated link (server in rgtp-b, curl in rgtp-a), at each
# loss of BENCH_LOSSES; beside the same pair over plain TCP (same programs, no shim) with
# bbr and with cubic, in the same sitting, so every shim row has its peers of that loss.
# Then the competing-flow check as part 4 does it for pulls: a TCP cubic HTTPS download
# holds the link (bp_compete) and a shim download of the compete file joins it.
bx_shimlossy_servers() { # PORT TPORT: shim server on PORT, plain TCP server on TPORT, in rgtp-b
  local run=$BX_REL/rgtp-run i
  ip netns exec rgtp-b "$run" --ports "$1" --strict --log-file "$BENCH_DIR/shimlossy-server.log" -- \
    python3 -m http.server "$1" --bind "$BP_IP_B" --directory "$BENCH_DIR/www" >/dev/null 2>"$BENCH_DIR/shimlossy-server.err" &
  BX_SL_SPID=$!
  BX_PIDS+=("$BX_SL_SPID")
  ip netns exec rgtp-b python3 -m http.server "$2" --bind "$BP_IP_B" --directory "$BENCH_DIR/www" \
    >/dev/null 2>"$BENCH_DIR/shimlossy-tcp-server.err" &
  BX_SL_TPID=$!
  BX_PIDS+=("$BX_SL_TPID")
  for ((i = 0; i < 50; i++)); do # bounded: ~10 s
    timeout 5 ip netns exec rgtp-a "$run" --ports "$1" --strict -- \
      curl -s -o /dev/null --max-time 3 "http://$BP_IP_B:$1/" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}
bx_shimlossy_stop() { bx_kill "$BX_SL_SPID"; bx_kill "$BX_SL_TPID"; }
# bx_shimlossy_one MODE(shim|bbr|cubic) LOSS PORT FILE: one download, one result line
bx_shimlossy_one() {
  local mode=$1 loss=$2 port=$3 file=$4 run=$BX_REL/rgtp-run c0 c1 a0 a1 b s e cc=rgtp
  local cmd=(curl -s -o /dev/null --max-time "$BENCH_LOSSY_MAX_TIME" -w '%{size_download} %{time_total} %{exitcode}\n')
  if [[ $mode == shim ]]; then
    cmd=(ip netns exec rgtp-a "$run" --ports "$port" --strict -- "${cmd[@]}" "http://$BP_IP_B:$port/$file")
  else
    cc=$mode
    "$BP_LOSSY_LINK" congctl "$cc" || return 1
    cmd=(ip netns exec rgtp-a "${cmd[@]}" "http://$BP_IP_B:$((port + 1))/$file")
  fi
  c0=$(bp_link_counters)
  read -r b s e <<<"$(/usr/bin/time -f '%U %S' -o "$BENCH_DIR/time-shimlossy.txt" timeout -k 5 $((BENCH_LOSSY_MAX_TIME + 20)) "${cmd[@]}" 2>/dev/null)"
  c1=$(bp_link_counters)
  read -r -a a0 <<<"$c0"
  read -r -a a1 <<<"$c1"
  local ba_in=$((a1[4] - a0[4])) ba_lost=$((a1[5] - a0[5] + a1[6] - a0[6])) ba_q=$((a1[7] - a0[7]))
  local ab_in=$((a1[0] - a0[0])) ab_lost=$((a1[1] - a0[1] + a1[2] - a0[2]))
  local complete=0
  [[ ${e:-99} == 0 && ${b:-0} == "$(stat -c %s "$BENCH_DIR/www/$file")" ]] && complete=1
  bx_emit shim_lossy mode="$mode" cc="$cc" loss_pct="$loss" loss_dir="$BENCH_LOSS_DIR" rtt_ms=$((2 * BENCH_DELAY_MS)) \
    rate_mbit="$BENCH_RATE_MBIT" file="$file" bytes="${b:-0}" secs="${s:-0}" \
    Mbps="$(bp_calc "${b:-0} * 8 / (${s:-0} > 0 ? ${s:-1} : 1) / 1e6" 2)" complete=$complete exit="${e:-99}" \
    cli_cpu_s="$(awk '{printf "%.2f", $1 + $2}' "$BENCH_DIR/time-shimlossy.txt" 2>/dev/null)" \
    link_ba_pkts=$ba_in link_ba_lost=$ba_lost link_ba_queue_drops=$ba_q \
    link_ba_loss_pct="$(bp_calc "100 * $ba_lost / ($ba_in > 0 ? $ba_in : 1)" 2)" link_ab_pkts=$ab_in link_ab_lost=$ab_lost
}
bx_part_shimlossy() {
  local so=$BX_REL/librgtp_shim.so run=$BX_REL/rgtp-run
  if [[ ! -f $so || ! -x $run ]]; then
    bx_emit shim_lossy state="not built yet" detail="needs $so and $run"
    return 0
  fi
  local port=${BENCH_SHIM_PORT:-18431} loss mode file=shimlossy-${BENCH_SHIM_LOSSY_MIB}MiB.bin lf
  lf=$BENCH_DIR/www/$file
  if [[ $(stat -c %s "$lf" 2>/dev/null) != $((BENCH_SHIM_LOSSY_MIB << 20)) ]]; then
    head -c $((BENCH_SHIM_LOSSY_MIB << 20)) "$BENCH_DIR/www/$BP_BIG" >"$lf" 2>/dev/null
    [[ $(stat -c %s "$lf") == $((BENCH_SHIM_LOSSY_MIB << 20)) ]] || head -c $((BENCH_SHIM_LOSSY_MIB << 20)) /dev/urandom >"$lf"
  fi
  cat "$lf" >/dev/null # both servers read it as they send: from the page cache
  bx_log "part 6: shim over the lossy link (loss $BENCH_LOSSES %), curl <- python3 http.server, shim vs TCP $BENCH_CCS"
  for loss in $BENCH_LOSSES; do
    bx_fits "shimlossy loss=$loss %" $((3 * BENCH_LOSSY_MAX_TIME + 40)) || continue
    bp_lossy_up "$loss" >&2 || return 1
    if bx_shimlossy_servers "$port" $((port + 1)); then
      for mode in shim $BENCH_CCS; do
        bx_shimlossy_one "$mode" "$loss" "$port" "$file"
      done
    else
      bx_emit shim_lossy loss_pct="$loss" state="shim-run server did not answer within ~10 s: $(tail -1 "$BENCH_DIR/shimlossy-server.err")"
    fi
    bx_shimlossy_stop
    bp_lossy_down
  done
  # compete: a TCP cubic download holds the link; a shim download of the compete file joins
  local cmpf=$BX_CMP out=$BENCH_DIR/compete-shim.out
  [[ $(stat -c %s "$BENCH_DIR/www/$cmpf" 2>/dev/null) == "$BX_CMP_SIZE" ]] ||
    head -c "$BX_CMP_SIZE" "$BENCH_DIR/www/$BP_BIG" >"$BENCH_DIR/www/$cmpf"
  [[ -s $BENCH_DIR/www/big-1GiB.bin ]] || head -c $((1 << 30)) /dev/urandom >"$BENCH_DIR/www/big-1GiB.bin"
  bx_fits "shimlossy compete" $((BENCH_COMPETE_SECS * 3 + 30)) || return 0
  bp_lossy_up 0 >&2 || return 1
  "$BP_LOSSY_LINK" congctl cubic
  if bx_shimlossy_servers "$port" $((port + 1)); then
    rm -f "$out"
    BP_BIG=big-1GiB.bin BP_COMPETE_LOSS=0 bp_compete "shim-vs-tcp-cubic" "@$out" -- \
      ip netns exec rgtp-a "$run" --ports "$port" --strict -- \
      curl -s -o "$out" --max-time $((BENCH_COMPETE_SECS * 3 - 5)) "http://$BP_IP_B:$port/$cmpf" >&2
    rm -f "$out"
  fi
  bx_shimlossy_stop
  bp_lossy_down
}

# ----------------------------------------------------------------------------- report
# the report renderer (python3): results.jsonl of this run -> bench.txt (markdown) + bench.json
bx_report_py() {
  cat <<'PY'
# Renders results.jsonl (this run) into the report: markdown tables + JSON.
import json, os, sys

src, run, out_txt, out_json = sys.argv[1:5]
env = os.environ.get
recs = []
for line in open(src):
    try:
        r = json.loads(line)
    except Exception:
        continue
    if r.get("run") == run:
        recs.append(r)

def kind(k, bench=None):
    return [r for r in recs if r["kind"] == k and (bench is None or r["bench"] == bench)]

def num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)

def f(x, d=1):
    return f"{x:.{d}f}" if num(x) else "–"

def mib(kb):
    return f"{kb / 1024:.0f}" if num(kb) and kb > 0 else "–"

setup = {}
for r in kind("setup"):
    setup.update({k: v for k, v in r.items() if k not in ("bench", "kind", "run")})

rows = []  # (part, transfer, throughput, srv_cpu, srv_cpu_per_gib, cli_cpu, rss, notes)
targets = []  # dicts: target, measured, ratio, threshold, met
big_label = env("BX_BIG_LABEL", "1 GiB")
GiB = 1 << 30

def tgt(name, measured, ratio, threshold, met, note=""):
    targets.append({"target": name, "measured": measured, "ratio": ratio, "threshold": threshold,
                    "met": met, "note": note})

# ---------------------------------------------------------------- loopback
lo = kind("loopback")
def lo_find(impl, sink, dgram=None):
    for r in lo:
        if r.get("impl") == impl and r.get("sink") == sink and (dgram is None or r.get("dgram") == dgram):
            return r
    return None

def srv_rss_text(r):
    # the exposer maps its sealed-ahead copy: VmHWM counts those page-cache pages
    a, h = r.get("srv_anon_kb"), r.get("srv_rss_kb")
    if num(a) and num(h) and h > a:
        return f"{mib(a)} anon (+{(h - a) / 1024:.0f} mapped sealed file)"
    return mib(h)

def per_gib(cpu, b):
    return cpu / (b / GiB) if num(cpu) and num(b) and b > 0 else None

names = {"https": "curl ← nginx, HTTPS (TLS 1.3)", "http": "curl ← nginx, plain HTTP", "quic": "QUIC (quinn 0.11 client ← server)"}
order = []
dgrams = sorted({r.get("dgram") for r in lo if r.get("impl") == "rgtp" and num(r.get("dgram"))})
for d in dgrams:
    for sink in ("devnull", "file"):
        order.append(("rgtp", sink, d))
for impl in ("https", "http"):
    for sink in ("devnull", "file"):
        order.append((impl, sink, None))
order.append(("quic", "devnull", None))
for impl, sink, d in order:
    r = lo_find(impl, sink, d)
    if r is None:
        continue
    dest = "/dev/null" if sink == "devnull" else "a file"
    if impl == "rgtp":
        what = f"rgtp-pull → {dest}, {d}-byte datagrams"
    else:
        what = f"{names[impl]} → {dest}"
    if "skipped" in r:
        rows.append((f"loopback {big_label}", what, "–", "–", "–", "–", "–", str(r["skipped"]).replace("_", " ")))
        continue
    notes = []
    if r.get("runs_MBps") and "/" in str(r.get("runs_MBps")):
        notes.append(f"median of {str(r['runs_MBps']).count('/') + 1} runs ({r['runs_MBps']} MB/s)")
    if not r.get("complete"):
        notes.append("INCOMPLETE")
    if impl == "rgtp":
        if str(d) == "65000":
            notes.append("rgtp's default datagram size between programs on one host")
        if num(r.get("datagrams_received")):
            notes.append(f"{r['datagrams_received']} datagrams, {r.get('rerequested_fragments')} re-requested fragments, "
                         f"UDP receive-buffer drops {r.get('udp_rcvbuf_errors', '?')}")
        notes.append(f"seal-ahead at start-up (once): {f(r.get('seal_s'))} s, {f(r.get('seal_cpu_s'), 2)} CPU s, peak {mib(r.get('seal_rss_kb'))} MiB")
        if sink == "file":
            notes.append("includes fsync before the resume state is dropped")
    if num(r.get("secs")) and r["secs"] > 0 and num(r.get("srv_cpu_s")) and num(r.get("cli_cpu_s")):
        ncpu = int(setup.get("cpus", 2) or 2)
        notes.append(f"both ends busy {100 * (r['srv_cpu_s'] + r['cli_cpu_s']) / (r['secs'] * ncpu):.0f} % of {ncpu} cores")
    if impl in ("https", "http"):
        notes.append("server = nginx master + 1 worker")
    if impl == "quic":
        notes.append("quinn defaults (MTU ≤ 1452, GSO), 32 MiB windows, one stream")
    rss = f"{mib(r.get('srv_rss_kb'))} / {mib(r.get('cli_rss_kb'))} MiB"
    if impl == "rgtp":
        rss = srv_rss_text(r) + f" / {mib(r.get('cli_rss_kb'))} MiB"
    rows.append((f"loopback {big_label}", what, f"{f(r.get('MBps'), 0)} MB/s", f(r.get("srv_cpu_s"), 2),
                 f(per_gib(r.get("srv_cpu_s"), r.get("bytes")), 2), f(r.get("cli_cpu_s"), 2), rss, "; ".join(notes)))

https = lo_find("https", "devnull")
for d in dgrams:
    rg = lo_find("rgtp", "devnull", d)
    if rg and https and num(rg.get("MBps")) and num(https.get("MBps")) and https["MBps"] > 0:
        ratio = rg["MBps"] / https["MBps"]
        tgt(f"loopback {big_label} → /dev/null, {d}-byte datagrams: throughput ≥ 1.5× curl ← nginx HTTPS",
            f"{rg['MBps']:.0f} vs {https['MBps']:.0f} MB/s", round(ratio, 2), ">= 1.5", ratio >= 1.5)
    else:
        tgt(f"loopback {big_label}, {d}-byte datagrams: throughput ≥ 1.5× HTTPS", "not measured", None, ">= 1.5", None)
    a = per_gib(rg.get("srv_cpu_s"), rg.get("bytes")) if rg else None
    b = per_gib(https.get("srv_cpu_s"), https.get("bytes")) if https else None
    if a is not None and b:
        ratio = a / b
        tgt(f"loopback {big_label}, {d}-byte datagrams: exposer CPU per GiB ≤ 0.5× nginx HTTPS",
            f"{a:.2f} vs {b:.2f} CPU s/GiB", round(ratio, 2), "<= 0.5", ratio <= 0.5,
            "nginx's CPU tick count is small and coarse (10 ms ticks)" if b < 0.2 else "")
    else:
        tgt(f"loopback {big_label}, {d}-byte datagrams: exposer CPU per GiB ≤ 0.5× nginx HTTPS", "not measured", None, "<= 0.5", None)

# ---------------------------------------------------------------- fan-out
fo = kind("fanout")
def fo_find(proto, n):
    for r in fo:
        if r.get("proto") == proto and r.get("clients") == n:
            return r
    return None
ns = sorted({r.get("clients") for r in fo if num(r.get("clients"))})
for n in ns:
    for proto in ("rgtp", "https", "http"):
        r = fo_find(proto, n)
        if r is None:
            continue
        if proto == "rgtp":
            what = f"one rgtp-expose → {n} rgtp-pull, {r.get('dgram')}-byte datagrams"
            cpu, cpg = r.get("srv_cpu_s"), r.get("srv_cpu_s_per_GiB")
            rss = srv_rss_text(r) + " / – MiB"
            notes = [f"{r.get('ok')}/{n} ok", f"{r.get('rerequested_fragments')} re-requested fragments of "
                     f"{r.get('datagrams_received')} received, {r.get('duplicate_fragments')} duplicates (all pullers)", f"UDP receive-buffer drops {r.get('udp_rcvbuf_errors', '?')}"]
            if r.get("errors") not in (None, "none"):
                notes.append(f"stderr: {str(r['errors']).replace('_', ' ')[:120]}")
        else:
            what = f"nginx {proto.upper()} → {n} curl"
            cpu, cpg = r.get("nginx_cpu_s"), r.get("nginx_cpu_s_per_GiB")
            rss = "–"
            notes = [f"{r.get('ok')}/{n} ok"]
        rows.append((f"fan-out {n} × 64 MiB", what, f"{f(r.get('MBps'), 0)} MB/s aggregate", f(cpu, 2), f(cpg, 2),
                     f(r.get("clients_cpu_s"), 1) + " (all)", rss, "; ".join(notes)))
if ns:
    nmax, nmin = max(ns), min(ns)
    rg, hs = fo_find("rgtp", nmax), fo_find("https", nmax)
    if rg and hs and num(rg.get("srv_cpu_s_per_GiB")) and num(hs.get("nginx_cpu_s_per_GiB")) and hs["nginx_cpu_s_per_GiB"] > 0:
        ratio = rg["srv_cpu_s_per_GiB"] / hs["nginx_cpu_s_per_GiB"]
        tgt(f"fan-out {nmax} pullers: server CPU per GiB ≤ 0.3× nginx HTTPS",
            f"{rg['srv_cpu_s_per_GiB']:.2f} vs {hs['nginx_cpu_s_per_GiB']:.2f} CPU s/GiB", round(ratio, 2), "<= 0.3", ratio <= 0.3)
    else:
        tgt(f"fan-out {nmax} pullers: server CPU per GiB ≤ 0.3× nginx HTTPS", "not measured", None, "<= 0.3", None)
    r1 = fo_find("rgtp", nmin)
    if rg and r1 and nmax != nmin and num(rg.get("MBps")) and num(r1.get("MBps")) and r1["MBps"] > 0:
        ratio = rg["MBps"] / r1["MBps"]
        tgt(f"fan-out: aggregate throughput not collapsing ({nmax} vs {nmin} pullers ≥ 0.8×)",
            f"{rg['MBps']:.0f} vs {r1['MBps']:.0f} MB/s (nginx HTTPS at {nmax}: {f(hs.get('MBps') if hs else None, 0)} MB/s)",
            round(ratio, 2), ">= 0.8", ratio >= 0.8 and rg.get("ok") == nmax)
    else:
        tgt("fan-out: aggregate throughput not collapsing", "not measured", None, ">= 0.8", None)

# ---------------------------------------------------------------- lossy
ly = kind("lossy")
losses = [int(x) if x.isdigit() else x for x in env("BX_LOSSES", "0 1 5 10").split()]
def ly_find(cc, loss):
    # several runs per case: the median by goodput (lower middle), with all runs noted
    rs = [r for r in ly if r.get("cc") == cc and r.get("loss_pct") == loss]
    if not rs:
        return None
    rs.sort(key=lambda r: r.get("Mbps") if num(r.get("Mbps")) else -1)
    m = dict(rs[(len(rs) - 1) // 2])
    m["n_runs"] = len(rs)
    m["runs_Mbps"] = "/".join(f(r.get("Mbps"), 1) for r in sorted(rs, key=lambda r: recs.index(r)))
    return m
rate = None
for loss in losses:
    for cc in ("rgtp", "bbr", "cubic"):
        r = ly_find(cc, loss)
        if r is None:
            continue
        rate = r.get("rate_mbit", rate)
        mbps = r.get("Mbps")
        pct = 100 * mbps / r["rate_mbit"] if num(mbps) and num(r.get("rate_mbit")) else None
        what = "rgtp-pull ← rgtp-expose, 1200-byte datagrams" if cc == "rgtp" else f"curl ← nginx HTTPS, TCP {cc}"
        if cc not in ("rgtp",) and r.get("cc_seen") not in (None, cc):
            what += f" (ss saw {r.get('cc_seen')})"
        notes = []
        if r.get("n_runs", 1) > 1:
            notes.append(f"median of {r['n_runs']} runs ({r['runs_Mbps']} Mbit/s)")
        if not r.get("complete"):
            notes.append(f"INCOMPLETE after {r.get('max_time')} s: {r.get('bytes')} bytes")
        notes.append(f"link b→a {r.get('link_ba_pkts')} pkts, {r.get('link_ba_lost')} lost ({r.get('link_ba_loss_pct')} %), "
                     f"{r.get('link_ba_queue_drops')} queue drops; a→b {r.get('link_ab_pkts')} pkts, {r.get('link_ab_lost')} lost")
        if cc == "rgtp":
            notes.append(f"{r.get('datagrams_received')} datagrams in, {r.get('requests')} requests, "
                         f"{r.get('rerequested_fragments')} re-requested, {r.get('duplicate_fragments')} duplicates")
            srv, cli = r.get("srv_cpu_s"), r.get("cli_cpu_s")
        else:
            notes.append(f"TCP {r.get('srv_tcp_segs')} segs, {r.get('srv_tcp_retrans')} retransmitted")
            srv, cli = r.get("nginx_cpu_s"), r.get("curl_cpu_s")
        rows.append((f"lossy {loss} % ({r.get('rtt_ms')} ms RTT, {r.get('rate_mbit')} Mbit/s)", what,
                     f"{f(mbps, 1)} Mbit/s = {f(pct, 1)} % of link", f(srv, 2), "–", f(cli, 2), "–", "; ".join(notes)))
for loss in losses:
    if not num(loss) or loss == 0:
        continue
    rg, bb, cu = ly_find("rgtp", loss), ly_find("bbr", loss), ly_find("cubic", loss)
    need = 90 if loss < 10 else 80
    if rg and num(rg.get("Mbps")):
        pct = 100 * rg["Mbps"] / rg["rate_mbit"]
        tgt(f"lossy {loss} %: goodput ≥ {need} % of the link", f"{rg['Mbps']:.1f} Mbit/s = {pct:.1f} %",
            round(pct / 100, 3), f">= {need / 100}", pct >= need)
    else:
        tgt(f"lossy {loss} %: goodput ≥ {need} % of the link", "not measured", None, f">= {need / 100}", None)
    if rg and bb and num(rg.get("Mbps")) and num(bb.get("Mbps")) and bb["Mbps"] > 0:
        ratio = rg["Mbps"] / bb["Mbps"]
        tgt(f"lossy {loss} %: goodput ≥ HTTPS over TCP bbr", f"{rg['Mbps']:.1f} vs {bb['Mbps']:.1f} Mbit/s",
            round(ratio, 2), ">= 1", ratio >= 1)
    if rg and cu and num(rg.get("Mbps")) and num(cu.get("Mbps")) and cu["Mbps"] > 0:
        ratio = rg["Mbps"] / cu["Mbps"]
        tgt(f"lossy {loss} %: goodput ≥ 30× HTTPS over TCP cubic", f"{rg['Mbps']:.1f} vs {cu['Mbps']:.2f} Mbit/s",
            round(ratio, 1), ">= 30", ratio >= 30)

# ---------------------------------------------------------------- compete
cmp_size = int(env("BX_CMP_SIZE", "0") or 0)
for r in kind("compete"):
    label = r.get("label", "")
    extra = next((x for x in kind("compete_rgtp") if x.get("label") == label), {})
    other = r.get("other_Mbps")
    notes = []
    if not num(other) and num(extra.get("verified_bytes")) and num(r.get("secs")) and r["secs"] > 0:
        other = extra["verified_bytes"] * 8 / r["secs"] / 1e6
        notes.append(f"RGTP pull stopped at the time limit (exit {r.get('other_rc')}): "
                     f"{extra['verified_bytes']} bytes verified")
    rate_c = r.get("rate_mbit")
    tcp = r.get("tcp_Mbps")
    notes.append(f"over the {'shim download' if label.startswith('shim') else 'RGTP pull'}'s {f(r.get('secs'), 1)} s; "
                 f"TCP started {r.get('warmup_s')} s earlier")
    if num(extra.get("rerequested_fragments")):
        notes.append(f"rgtp: {extra['rerequested_fragments']} re-requested fragments")
    shim_cmp = label.startswith("shim")
    who = "shim download (curl ← http.server, both under rgtp-run)" if shim_cmp else "RGTP pull"
    rows.append((f"compete, loss {r.get('loss_pct')} %", f"{who} ({cmp_size >> 20} MiB) + HTTPS TCP {r.get('tcp_cc')} download",
                 f"RGTP {f(other, 1)} + TCP {f(tcp, 1)} Mbit/s", "–", "–", "–", "–", "; ".join(notes)))
    if num(tcp) and num(rate_c):
        share = tcp / rate_c
        tgt(f"{'shim: ' if shim_cmp else ''}competing TCP {r.get('tcp_cc')} flow keeps ≥ 1/3 of the link",
            f"TCP {tcp:.1f} Mbit/s = {100 * share:.0f} % of {rate_c} (RGTP {f(other, 1)})", round(share, 3), ">= 0.333", share >= 1 / 3)

# ---------------------------------------------------------------- shim
sh = kind("shim")
shim_state = None
for r in sh:
    if r.get("state") != "measured":
        shim_state = str(r.get("state", "")).replace("_", " ")
        rows.append(("shim", "curl over RGTP (rgtp-run) ← python3 -m http.server", "–", "–", "–", "–", "–",
                     "shim: " + shim_state))
    else:
        mode = r.get("mode")
        big = r.get("file") != "index"
        what = ("curl (rgtp-run --strict) ← python3 http.server (rgtp-run --strict)" if mode == "shim"
                else "curl ← python3 http.server over TCP") + (f", {big_label} file" if big else ", GET / (set-up)")
        ms = lambda k: f(1000 * r[k] if num(r.get(k)) else None, 2)
        notes = [f"connect {ms('connect_s')} ms, first byte {ms('ttfb_s')} ms, total {ms('secs')} ms (median of {r.get('runs')})"]
        if big and "/" in str(r.get("runs_MBps", "")):
            notes.append(f"runs {r['runs_MBps']} MB/s")
        notes.append(f"netns counters: UDP in {r.get('ns_udp_in')} datagrams, TCP opens {r.get('ns_tcp_active_opens')}, "
                     f"TCP in-segments {r.get('ns_tcp_in_segs')}")
        if r.get("exit") not in (0, None):
            notes.append(f"curl exit {r.get('exit')}")
        rows.append(("shim (loopback, private netns)", what, f"{f(r.get('MBps'), 0)} MB/s" if big else "–", "–", "–",
                      f(r.get("cli_cpu_s"), 2), f"– / {mib(r.get('cli_rss_kb'))} MiB", "; ".join(notes)))
shim_big = next((r for r in sh if r.get("mode") == "shim" and r.get("file") not in (None, "index")), None)
if shim_big and num(shim_big.get("ns_udp_in")) and num(shim_big.get("bytes")):
    # proof it crossed UDP: the namespace saw UDP datagrams for the bytes and no TCP connection
    crossed = shim_big["ns_udp_in"] >= shim_big["bytes"] / 65536 and shim_big.get("ns_tcp_active_opens") == 0
    if not crossed:
        shim_state = "measured, but the counters do not show the transfer over UDP"
        shim_big = None

# ---------------------------------------------------------------- shim over the lossy link
sl = kind("shim_lossy")
def sl_find(mode, loss):
    return next((r for r in sl if r.get("mode") == mode and r.get("loss_pct") == loss and num(r.get("Mbps"))), None)
for r in sl:
    if "state" in r:
        rows.append((f"shim, lossy {r.get('loss_pct', '')} %", "curl ← python3 http.server, both under rgtp-run --strict",
                     "–", "–", "–", "–", "–", str(r["state"]).replace("_", " ")))
for loss in losses:
    peers = {m: sl_find(m, loss) for m in ("shim", "bbr", "cubic")}
    for mode, r in peers.items():
        if r is None:
            continue
        pct = 100 * r["Mbps"] / r["rate_mbit"] if num(r.get("rate_mbit")) else None
        what = ("curl ← python3 http.server, both under rgtp-run --strict" if mode == "shim"
                else f"curl ← python3 http.server over TCP {mode}")
        notes = []
        if not r.get("complete"):
            notes.append(f"INCOMPLETE after {r.get('secs')} s: {r.get('bytes')} bytes (curl exit {r.get('exit')})")
        if mode == "shim":
            for peer in ("bbr", "cubic"):
                p = peers.get(peer)
                if p and p["Mbps"] > 0:
                    notes.append(f"{r['Mbps'] / p['Mbps']:.2f}× TCP {peer}")
        notes.append(f"link b→a {r.get('link_ba_pkts')} pkts, {r.get('link_ba_lost')} lost ({r.get('link_ba_loss_pct')} %), "
                     f"{r.get('link_ba_queue_drops')} queue drops; a→b {r.get('link_ab_pkts')} pkts, {r.get('link_ab_lost')} lost")
        rows.append((f"shim, lossy {loss} % ({r.get('rtt_ms')} ms RTT, {r.get('rate_mbit')} Mbit/s, {env('BX_SHIM_LOSSY_MIB', '?')} MiB)", what,
                     f"{f(r['Mbps'], 1)} Mbit/s = {f(pct, 1)} % of link", "–", "–", f(r.get("cli_cpu_s"), 2), "–", "; ".join(notes)))
    sm, bb = peers["shim"], peers["bbr"]
    if sm and bb and bb["Mbps"] > 0:
        ratio = sm["Mbps"] / bb["Mbps"]
        tgt(f"shim, lossy {loss} %: goodput ≥ TCP bbr (same programs)", f"{sm['Mbps']:.1f} vs {bb['Mbps']:.1f} Mbit/s",
            round(ratio, 2), ">= 1", ratio >= 1)
    need = {1: 90, 5: 85, 10: 75}.get(loss)
    if sm and need and num(sm.get("rate_mbit")):
        pct = 100 * sm["Mbps"] / sm["rate_mbit"]
        tgt(f"shim, lossy {loss} %: goodput ≥ {need} % of the link", f"{sm['Mbps']:.1f} Mbit/s = {pct:.1f} %",
            round(pct / 100, 3), f">= {need / 100}", pct >= need)

rg1200 = lo_find("rgtp", "devnull", 1200) or lo_find("rgtp", "devnull")
if shim_big and rg1200 and num(shim_big.get("MBps")) and num(rg1200.get("MBps")):
    ratio = shim_big["MBps"] / rg1200["MBps"]
    tgt("shim: curl over RGTP ≥ 0.8× rgtp-pull", f"{shim_big['MBps']:.0f} vs {rg1200['MBps']:.0f} MB/s", round(ratio, 2), ">= 0.8", ratio >= 0.8)
else:
    tgt("shim: curl over RGTP ≥ 0.8× rgtp-pull", f"not measured ({shim_state or 'no data'})", None, ">= 0.8", None)

# ---------------------------------------------------------------- text
S = setup
elapsed = int(env("BX_ELAPSED", "0") or 0)
lines = []
lines.append(f"### Benchmark ({'BENCH_QUICK=1 smoke run' if env('BX_QUICK') == '1' else 'full run'}): `sudo scripts/bench.sh`")
lines.append("")
lines.append(f"Machine: {S.get('cpu', '?').replace('_', ' ')}, {S.get('cpus', '?')} cores, {S.get('mem_gib', '?')} GiB, "
             f"{str(S.get('os', '?')).replace('_', ' ')}, kernel {S.get('kernel', '?')}, default TCP cc {S.get('default_cc', '?')}; "
             f"rustc {S.get('rustc', '?')}, nginx {S.get('nginx', '?')}, curl {S.get('curl', '?')}, TLS 1.3 cipher {S.get('tls_cipher', '?')}. "
             f"Date {S.get('date', '?')}, commit {S.get('commit', '?')}, run {run}: {elapsed // 60} min {elapsed % 60} s "
             f"(builds {env('BX_BUILD_S', '0')} s). Load average {str(env('BX_LOAD_START', '?')).split()[0] if env('BX_LOAD_START') else '?'} at start, "
             f"{str(env('BX_LOAD_END', '?')).split()[0]} at end: a shared 2-core machine where others compile, so absolute figures drift; "
             "compare within the run.")
lines.append("")
lines.append("Throughput: MB/s = 10^6 bytes/s of file content; Mbit/s = 10^6 bit/s of file content (goodput). "
             "CPU: user+system seconds (server: /proc/PID/stat over the transfer; client: /usr/bin/time). "
             "Peak RSS: server VmHWM over the transfer, client max RSS. Loopback: both ends on the same 2 cores.")
lines.append("")
hdr = ("part", "transfer", "throughput", "server CPU s", "server CPU s/GiB", "client CPU s", "peak RSS server / client", "notes")
lines.append("| " + " | ".join(hdr) + " |")
lines.append("|" + "|".join(["---"] * len(hdr)) + "|")
for row in rows:
    lines.append("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |")
lines.append("")
lines.append("| target (issue 5) | measured | ratio | needed | met? |")
lines.append("|---|---|---|---|---|")
for t in targets:
    met = "**met**" if t["met"] is True else ("not met" if t["met"] is False else "–")
    note = f" ({t['note']})" if t.get("note") else ""
    lines.append(f"| {t['target']} | {t['measured']}{note} | {t['ratio'] if t['ratio'] is not None else '–'} | "
                 f"{t['threshold']} | {met} |")
nm = sum(1 for t in targets if t["met"] is True)
nn = sum(1 for t in targets if t["met"] is False)
lines.append("")
lines.append(f"Targets: {nm} met, {nn} not met, {len(targets) - nm - nn} not measured.")
skipped = [s for s in env("BX_SKIPPED_TEXT", "").splitlines() if s.strip()]
for s in skipped:
    lines.append(f"- {s}")
if env("BX_QUIC_STATE"):
    lines.append(f"- QUIC peer: {env('BX_QUIC_STATE')}")
txt = "\n".join(lines) + "\n"
open(out_txt, "w").write(txt)
json.dump({"run": run, "quick": env("BX_QUICK") == "1", "elapsed_s": elapsed, "build_s": int(env("BX_BUILD_S", "0") or 0),
           "load_start": env("BX_LOAD_START"), "load_end": env("BX_LOAD_END"), "setup": setup,
           "table": [dict(zip(hdr, row)) for row in rows], "targets": targets, "skipped": skipped,
           "measurements": [r for r in recs if r["kind"] != "setup"]},
          open(out_json, "w"), indent=1, ensure_ascii=False)
PY
}

bx_render() {
  ((BX_RENDERED)) && return 0
  BX_RENDERED=1
  local skipped
  skipped=$(printf '%s\n' "${BX_SKIPPED[@]}")
  BX_SKIPPED_TEXT=$skipped BX_ELAPSED=$(($(bx_now) - BX_T_START)) BX_BUILD_S=${BX_BUILD_S:-0} \
    BX_BIG_LABEL=$BX_BIG_LABEL BX_QUICK=$BENCH_QUICK BX_QUIC_STATE=$BX_QUIC_STATE BX_FANOUT="$BENCH_FANOUT" \
    BX_LOSSES="$BENCH_LOSSES" BX_CMP_SIZE=$BX_CMP_SIZE BX_SHIM_LOSSY_MIB=$BENCH_SHIM_LOSSY_MIB BX_LOAD_START="${BX_LOAD_START:-}" BX_LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)" \
    python3 - "$BENCH_DIR/results.jsonl" "$BP_RUN_ID" "$BENCH_DIR/bench.txt" "$BENCH_DIR/bench.json" \
    <<<"$(bx_report_py)" || { bx_log "error: the report failed"; return 1; }
  # fd 7 = the script's stdout (a trap may run inside a `... >&2` redirection)
  cat "$BENCH_DIR/bench.txt" >&7
  bx_log "report: $BENCH_DIR/bench.txt, $BENCH_DIR/bench.json; raw lines: $BENCH_DIR/results.txt"
}

bx_cleanup() {
  local p
  trap - EXIT INT TERM
  for p in "${BX_PIDS[@]}"; do bx_kill "$p"; done
  bx_check_devnull || BX_SKIPPED+=("ERROR: /dev/null was not the null device at the end of the run")
  bp_cleanup 2>/dev/null
  bx_shim_ns_down
  rm -f "$BENCH_DIR"/pull.out* "$BENCH_DIR"/lossy-pull.out* "$BENCH_DIR"/compete-pull.out*
  bx_render
}

bx_main() {
  set -uo pipefail
  exec 7>&1
  trap bx_cleanup EXIT
  trap 'bx_log "stopped by a signal (time cap?): reporting what was measured"; exit 130' INT TERM
  mkdir -p "$BENCH_DIR"
  [[ -f $BENCH_DIR/results.jsonl ]] && mv -f "$BENCH_DIR/results.jsonl" "$BENCH_DIR/results.prev.jsonl"
  [[ -f $BENCH_DIR/results.txt ]] && mv -f "$BENCH_DIR/results.txt" "$BENCH_DIR/results.prev.txt"
  : >"$BENCH_DIR/build.log"
  BX_LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  bx_check_devnull || exit 1
  [[ $BENCH_DIR == /?* && $BENCH_DIR != /tmp && $BENCH_DIR != /dev* ]] || { bx_log "BENCH_DIR must be an absolute work dir of its own"; exit 2; }
  bp_init || exit 1
  bx_build || exit 1
  bp_nginx_start lo || exit 1
  bp_setup_line >/dev/null
  bx_emit setup quick=$BENCH_QUICK commit="$(git -C "$BX_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$BX_ROOT" diff --quiet HEAD -- core 2>/dev/null || echo +dirty)" \
    cpu="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" mem_gib="$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)" \
    os="$(. /etc/os-release && echo "$PRETTY_NAME")" date="$(date -u +%Y-%m-%d)" load_start="$BX_LOAD_START" \
    rustc="$(rustc --version 2>/dev/null | awk '{print $2}')" build_s=${BX_BUILD_S:-0} quic="${BX_QUIC_STATE:-built}"
  local part
  for part in $BENCH_PARTS; do
    case $part in
      loopback) bx_fits loopback $((BENCH_QUICK == 1 ? 60 : 200)) && bx_part_loopback ;;
      fanout) bx_fits fanout $((BENCH_QUICK == 1 ? 40 : 180)) && bx_part_fanout ;;
      lossy) bx_part_lossy ;;
      compete) bx_part_compete ;;
      shim) bx_part_shim ;;
      shimlossy) bx_part_shimlossy ;;
      *) bx_log "unknown part $part (loopback fanout lossy compete shim shimlossy)" ;;
    esac
  done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  bx_main "$@"
fi

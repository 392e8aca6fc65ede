#!/usr/bin/env bash
# bench-multicast.sh: one sender, four receivers on a LAN (issue 18, part 3): UFTP,
# RGTP with --multicast, and RGTP by unicast, in the same run.
#
# Set-up: six network namespaces made by this script: a "bridge" namespace holding a
# Linux bridge (multicast snooping off, so the bridge floods the group as a plain
# switch does), and five hosts, each joined to the bridge by a veth pair: the sender
# (10.88.0.1) and four receivers (10.88.0.2-5), each with a 224.0.0.0/4 route on its
# veth. Nothing else is reachable from them. One file of BENCH_MCAST_SIZE (default 64M)
# random bytes. For each of BENCH_MCAST_RUNS (default 1) runs, in this order:
#   uftp            uftpd -d -D DIR -I IFACE on each receiver; the sender runs
#                   uftp -R 200000 -I IFACE -Y none FILE (200 Mbit/s, no encryption;
#                   the baseline's command); done when uftp exits
#   rgtp-multicast  rgtp-expose FILE --multicast 239.255.42.1:5000 --multicast-if IFACE
#                   --max-rate 200M (sealed ahead before the pulls start); four plain
#                   rgtp-pull URL started together, one per receiver
#   rgtp-unicast    the same without --multicast (four unicast pulls)
#   live            a live stream (issue 19): the file's first BENCH_MCAST_LIVE (default
#                   16M) bytes written into `rgtp-expose - --multicast ...` in 64 KiB
#                   records every 10 ms (about 50 Mbit/s), four `rgtp-pull URL -o OUT`
#                   followers started first; done when the last follower ends
#   live-unicast    the same without --multicast
#   (the live rows' egress_x is against the bytes streamed, and their ratios are
#   against the live-unicast row: UFTP has no live mode)
# Each row: egress_x = the sender veth's tx_bytes during the row / the file size;
# all_done_s = seconds from starting the receivers' transfer until the last finished;
# byte_exact = all four copies equal the file; and the ratios of both against the UFTP
# row of the same run. Targets (issue 18): rgtp-multicast egress_x <= 1.2 and
# all_done_s below UFTP's.
#
# Usage: sudo scripts/bench-multicast.sh   (root: namespaces; installs uftp and b3sum
#   with apt-get when missing). BENCH_MCAST_ROWS picks rows (default "uftp multicast
#   unicast"; the ratios are against UFTP's row when it ran). BENCH_MCAST_SLOW=50mbit
#   makes receiver 4 a slow member (a tbf on its bridge port).
# Bounded: each row waits at most BENCH_MCAST_ROW_TIMEOUT (default 120) s; the whole
# script stops itself after BENCH_MCAST_TIMEOUT (default 900) s. Every exit path (also
# Ctrl-C) kills the processes it started, by pid, and deletes its namespaces and files.
set -euo pipefail

if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
SIZE=${BENCH_MCAST_SIZE:-64M}
RUNS=${BENCH_MCAST_RUNS:-1}
N=4
CAP_BITS=${BENCH_MCAST_CAP:-200M}      # rgtp-expose --max-rate
CAP_UFTP=${BENCH_MCAST_CAP_UFTP:-200000} # uftp -R (Kbit/s)
ROW_TIMEOUT=${BENCH_MCAST_ROW_TIMEOUT:-120}
ROWS=${BENCH_MCAST_ROWS:-uftp multicast unicast live-unicast live}
LIVE_BYTES=${BENCH_MCAST_LIVE:-16M}
SLOW=${BENCH_MCAST_SLOW:-} # e.g. 50mbit: receiver 4 is a slow member
TOTAL_TIMEOUT=${BENCH_MCAST_TIMEOUT:-900}
GROUP=239.255.42.1:5000
PORT=47401

[[ $(id -u) == 0 ]] || { echo "bench-multicast: needs root (network namespaces)" >&2; exit 1; }

TAG=$$
NS_B=rgtpmc-b-$TAG
NS=() # NS[0]: the sender, NS[1..4]: receivers
DEV=() # each host's veth end (in its namespace)
BR=() # its peer on the bridge
IPS=()
for ((i = 0; i <= N; i++)); do
  NS[i]=rgtpmc-$i-$TAG
  DEV[i]=rmc$i-$TAG # at most 15 bytes
  BR[i]=rmb$i-$TAG
  IPS[i]=10.88.0.$((i + 1))
done
W=
PIDS=()
WATCHDOG=

cleanup() {
  local p
  trap - EXIT INT TERM
  if [[ -n $WATCHDOG ]]; then kill "$WATCHDOG" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in "${NS[@]}" "$NS_B"; do ip netns del "$p" 2>/dev/null || true; done
  if [[ -n $W ]]; then rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'echo "bench-multicast: interrupted" >&2; exit 130' INT TERM

# --- tools -------------------------------------------------------------------------
need_apt=()
command -v uftp >/dev/null || need_apt+=(uftp)
command -v b3sum >/dev/null || need_apt+=(b3sum)
if ((${#need_apt[@]})); then
  echo "# installing ${need_apt[*]}" >&2
  timeout 600 apt-get install -y -qq "${need_apt[@]}" >&2
fi
[[ ${BENCH_NO_BUILD:-0} == 1 ]] || nice -n 19 cargo build --release -p rgtp-cli >&2
for b in rgtp-expose rgtp-pull; do
  [[ -x $BIN/$b ]] || { echo "bench-multicast: $BIN/$b missing (cargo build --release -p rgtp-cli)" >&2; exit 1; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/rgtp-bench-multicast.XXXXXX")
(
  sleep "$TOTAL_TIMEOUT" &
  s=$!
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  wait "$s" && echo "bench-multicast: over ${TOTAL_TIMEOUT}s, stopping" >&2 && kill -TERM $$
) &
WATCHDOG=$!

# --- the LAN -------------------------------------------------------------------------
ip netns add "$NS_B"
ip -n "$NS_B" link add br0 type bridge
ip -n "$NS_B" link set br0 type bridge mcast_snooping 0
ip -n "$NS_B" link set br0 up
for ((i = 0; i <= N; i++)); do
  ip netns add "${NS[i]}"
  ip link add "${DEV[i]}" netns "${NS[i]}" type veth peer name "${BR[i]}" netns "$NS_B"
  ip -n "$NS_B" link set "${BR[i]}" master br0
  ip -n "$NS_B" link set "${BR[i]}" up
  ip -n "${NS[i]}" link set lo up
  ip -n "${NS[i]}" addr add "${IPS[i]}/24" dev "${DEV[i]}"
  ip -n "${NS[i]}" link set "${DEV[i]}" up
  ip -n "${NS[i]}" route add 224.0.0.0/4 dev "${DEV[i]}"
done
for ((i = 1; i <= N; i++)); do
  ip netns exec "${NS[i]}" ping -c1 -W2 "${IPS[0]}" >/dev/null || { echo "bench-multicast: bridge not up" >&2; exit 1; }
done
if [[ -n $SLOW ]]; then
  # A slow member: the bridge sends to receiver N at most SLOW (a token bucket,
  # 20 ms of queue, tail drop beyond).
  ip netns exec "$NS_B" tc qdisc add dev "${BR[N]}" root tbf rate "$SLOW" burst 32kbit latency 20ms
fi
tx_bytes() { ip netns exec "${NS[0]}" cat "/sys/class/net/${DEV[0]}/statistics/tx_bytes"; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
# stop PID...: kills these (started by this script) and forgets them.
stop() {
  local p q keep=()
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
  for q in "${PIDS[@]}"; do
    for p in "$@"; do [[ $q == "$p" ]] && continue 2; done
    keep+=("$q")
  done
  PIDS=("${keep[@]}")
}

SRC=$W/data/file.bin
mkdir -p "$W/data"
head -c "$SIZE" /dev/urandom >"$SRC"
BYTES=$(stat -c %s "$SRC")
ROOTHASH=$(b3sum --no-names "$SRC")

echo "# bench-multicast $(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD 2>/dev/null || echo unknown) on $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "# load $(cut -d' ' -f1-3 /proc/loadavg); $SIZE file, $N receivers on a bridge (snooping off${SLOW:+; receiver $N behind $SLOW}); sender capped: uftp -R $CAP_UFTP Kbit/s, rgtp-expose --max-rate $CAP_BITS bit/s"

# Each row leaves "egress_x all_done_s byte_exact" in RES.
RES=

row_uftp() {
  local dir=$W/uftp t0 tx0 tx1 i last exact=yes rcv=()
  rm -rf "$dir"
  mkdir -p "$dir"
  for ((i = 1; i <= N; i++)); do
    mkdir -p "$dir/r$i"
    ip netns exec "${NS[i]}" uftpd -d -D "$dir/r$i" -I "${DEV[i]}" \
      >"$dir/r$i.out" 2>&1 &
    rcv+=($!)
    PIDS+=($!)
  done
  sleep 1 # the receivers listen
  tx0=$(tx_bytes)
  t0=$(now)
  if ! timeout "$ROW_TIMEOUT" ip netns exec "${NS[0]}" uftp -R "$CAP_UFTP" -I "${DEV[0]}" -Y none "$SRC" \
    >"$dir/send.log" 2>&1; then
    echo "uftp: the sender failed: $(tail -3 "$dir/send.log")" >&2
    exact=no
  fi
  last=$(now)
  tx1=$(tx_bytes)
  stop "${rcv[@]}"
  for ((i = 1; i <= N; i++)); do
    cmp -s "$SRC" "$dir/r$i/file.bin" || exact=no
  done
  RES="$(calc "($tx1 - $tx0) / $BYTES") $(calc "$last - $t0" 2) $exact"
  rm -rf "$dir"
}

# rcvbuf_errors: the receivers' UDP receive-buffer drops so far, summed (datagrams
# their sockets had no room for: the receiver, not the LAN, lost them).
rcvbuf_errors() {
  local i sum=0 n
  for ((i = 1; i <= N; i++)); do
    n=$(ip netns exec "${NS[i]}" awk '/^Udp:/ { if (h) { print $6 } else { h = 1 } }' /proc/net/snmp)
    sum=$((sum + n))
  done
  echo "$sum"
}

# pull_all DIR URL: `rgtp-pull URL` on each receiver, started together, to DIR/outI.bin
# (--json in DIR/pI.json); waits for all. Leaves their pids in PULLERS and 1 or 0
# (succeeded) in OK.
PULLERS=()
OK=()
pull_all() {
  local dir=$1 url=$2 i
  PULLERS=()
  OK=()
  local drops0
  drops0=$(rcvbuf_errors)
  for ((i = 1; i <= N; i++)); do
    RGTP_CONFIG_DIR=$dir/p$i timeout "$ROW_TIMEOUT" ip netns exec "${NS[i]}" \
      "$BIN/rgtp-pull" --json -q -o "$dir/out$i.bin" "$url" >"$dir/p$i.json" 2>"$dir/p$i.log" &
    PULLERS+=($!)
    PIDS+=($!)
  done
  for ((i = 0; i < N; i++)); do
    if wait "${PULLERS[i]}"; then OK[i]=1; else OK[i]=0; fi
  done
  echo "#   the receivers' sockets dropped $(($(rcvbuf_errors) - drops0)) datagrams (UDP RcvbufErrors)"
}

# row_rgtp NAME [EXPOSE FLAGS...]: sets RES.
row_rgtp() {
  local name=$1 dir=$W/rgtp t0 tx0 tx1 i url last exact=yes
  shift
  rm -rf "$dir"
  mkdir -p "$dir/expose"
  RGTP_CONFIG_DIR=$dir/expose RGTP_CACHE_DIR=$dir/expose/cache \
    ip netns exec "${NS[0]}" "$BIN/rgtp-expose" "$SRC" --port "$PORT" --bind "${IPS[0]}" \
    --max-rate "$CAP_BITS" "$@" >"$dir/expose.out" 2>"$dir/expose.log" &
  local exposer=$!
  PIDS+=("$exposer")
  for ((i = 0; i < 600; i++)); do grep -qs '^listening on' "$dir/expose.out" && break; sleep 0.1; done
  url=$(grep -m1 '^rgtp://' "$dir/expose.out" || true)
  [[ -n $url ]] || { echo "$name: rgtp-expose did not start: $(cat "$dir/expose.log")" >&2; return 1; }
  [[ $url == *"root=$ROOTHASH"* ]] || { echo "$name: the URL's root is not b3sum's" >&2; exact=no; }
  for ((i = 0; i < 600; i++)); do grep -qs 'sealed ahead' "$dir/expose.log" && break; sleep 0.1; done
  tx0=$(tx_bytes)
  t0=$(now)
  pull_all "$dir" "$url"
  last=$(now)
  tx1=$(tx_bytes)
  stop "${PULLERS[@]}" "$exposer"
  for ((i = 0; i < N; i++)); do
    if ((OK[i] == 0)); then
      echo "$name: pull $((i + 1)) failed: $(tail -2 "$dir/p$((i + 1)).log")" >&2
      exact=no
    elif [[ $(b3sum --no-names "$dir/out$((i + 1)).bin") != "$ROOTHASH" ]]; then
      exact=no
    fi
  done
  RES="$(calc "($tx1 - $tx0) / $BYTES") $(calc "$last - $t0" 2) $exact"
  pull_stats "$dir"/p*.json
  rm -rf "$dir"
}

# row_live NAME [EXPOSE FLAGS...]: a live stream of the file's first LIVE_BYTES;
# sets RES (egress_x against the bytes streamed).
row_live() {
  local name=$1 dir=$W/live t0 tx0 tx1 i url last exact=yes
  shift
  rm -rf "$dir"
  mkdir -p "$dir/expose"
  head -c "$LIVE_BYTES" "$SRC" >"$dir/stream.bin"
  local sbytes
  sbytes=$(stat -c %s "$dir/stream.bin")
  mkfifo "$dir/in"
  RGTP_CONFIG_DIR=$dir/expose RGTP_CACHE_DIR=$dir/expose/cache \
    ip netns exec "${NS[0]}" "$BIN/rgtp-expose" - --name live.bin --port "$PORT" --bind "${IPS[0]}" \
    --max-rate "$CAP_BITS" "$@" <"$dir/in" >"$dir/expose.out" 2>"$dir/expose.log" &
  local exposer=$!
  PIDS+=("$exposer")
  # The producer: 64 KiB every 10 ms, after the followers have started.
  python3 - "$dir/stream.bin" >"$dir/in" <<'PY' &
import sys, time
data = open(sys.argv[1], "rb").read()
out = sys.stdout.buffer
time.sleep(1.0)
for i in range(0, len(data), 65536):
    out.write(data[i:i + 65536]); out.flush()
    time.sleep(0.01)
PY
  local producer=$!
  PIDS+=("$producer")
  for ((i = 0; i < 600; i++)); do grep -qs '^listening on' "$dir/expose.out" && break; sleep 0.1; done
  url=$(grep -m1 '^rgtp://' "$dir/expose.out" || true)
  [[ -n $url ]] || { echo "$name: rgtp-expose did not start: $(cat "$dir/expose.log")" >&2; return 1; }
  tx0=$(tx_bytes)
  t0=$(now)
  pull_all "$dir" "$url"
  last=$(now)
  tx1=$(tx_bytes)
  stop "${PULLERS[@]}" "$exposer" "$producer"
  for ((i = 0; i < N; i++)); do
    if ((OK[i] == 0)); then
      echo "$name: follower $((i + 1)) failed: $(tail -2 "$dir/p$((i + 1)).log")" >&2
      exact=no
    elif ! cmp -s "$dir/stream.bin" "$dir/out$((i + 1)).bin"; then
      exact=no
    fi
  done
  RES="$(calc "($tx1 - $tx0) / $sbytes") $(calc "$last - $t0" 2) $exact"
  pull_stats "$dir"/p*.json
  rm -rf "$dir"
}

# pull_stats JSON...: one line: what the pullers' --json reports, summed.
pull_stats() {
  python3 - "$BYTES" "$@" <<'PY'
import json, sys
size, n, tot, left = int(sys.argv[1]), 0, {}, 0
for f in sys.argv[2:]:
    try:
        r = json.load(open(f))
    except (OSError, ValueError):
        continue
    n += 1
    left += bool(r.get("left_group"))
    for k in ("bytes_received", "group_datagrams", "datagrams_received", "rerequested_fragments", "duplicate_fragments"):
        tot[k] = tot.get(k, 0) + r.get(k, 0)
print(f"#   {n} pullers' --json, summed: received {tot.get('bytes_received', 0) / size:.2f}x the file "
      f"in {tot.get('datagrams_received', 0)} datagrams ({tot.get('group_datagrams', 0)} from the group); "
      f"rerequested_fragments {tot.get('rerequested_fragments', 0)}, "
      f"duplicate_fragments {tot.get('duplicate_fragments', 0)}; {left} left the group")
PY
}

row() { # NAME "egress_x all_done_s byte_exact" UFTP_EGRESS UFTP_DONE
  local name=$1 e d x
  read -r e d x <<<"$2"
  printf '%-15s egress_x %5s  all_done_s %6s  byte_exact %-3s  egress/uftp %s  done/uftp %s\n' \
    "$name" "$e" "$d" "$x" "$(calc "$e / $3")" "$(calc "$d / $4")"
}

has_row() { [[ " $ROWS " == *" $1 "* ]]; }
for ((run = 1; run <= RUNS; run++)); do
  echo "run $run (load $(cut -d' ' -f1-3 /proc/loadavg))"
  uf_e=1
  uf_d=1
  if has_row uftp; then
    row_uftp
    uf=$RES
    read -r uf_e uf_d _ <<<"$uf"
    [[ $uf_e == 0.00 ]] && uf_e=0.01
    [[ $uf_d == 0.00 ]] && uf_d=0.01
    row uftp "$uf" "$uf_e" "$uf_d"
  fi
  if has_row multicast; then
    row_rgtp rgtp-multicast --multicast "$GROUP" --multicast-if "${DEV[0]}"
    row rgtp-multicast "$RES" "$uf_e" "$uf_d"
  fi
  if has_row unicast; then
    row_rgtp rgtp-unicast
    row rgtp-unicast "$RES" "$uf_e" "$uf_d"
  fi
  lu_e=1
  lu_d=1
  if has_row live-unicast; then
    row_live live-unicast
    lu=$RES
    read -r lu_e lu_d _ <<<"$lu"
    printf '%-15s egress_x %5s  all_done_s %6s  byte_exact %s  (the live rows: egress_x of the bytes streamed)\n' live-unicast $lu
  fi
  if has_row live; then
    row_live live --multicast "$GROUP" --multicast-if "${DEV[0]}"
    read -r e d x <<<"$RES"
    printf '%-15s egress_x %5s  all_done_s %6s  byte_exact %-3s  egress/live-unicast %s  done/live-unicast %s\n' \
      live "$e" "$d" "$x" "$(calc "$e / $lu_e")" "$(calc "$d / $lu_d")"
  fi
done

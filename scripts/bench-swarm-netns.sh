#!/usr/bin/env bash
# bench-swarm-netns.sh: one origin, ten pullers in another network namespace (issue 17,
# part 5), BitTorrent and RGTP in the same run.
#
# Set-up: two network namespaces made by this script, "origin" (10.77.0.1) and
# "pullers" (10.77.0.2), joined by one veth pair; nothing else is reachable from them.
# One file of BENCH_SWARM_SIZE (default 64M) random bytes. For each of BENCH_SWARM_RUNS
# (default 1) runs, in this order:
#   bittorrent     an HTTP tracker (npm bittorrent-tracker, its Server class, ws:false,
#                  udp:false) and an aria2c seeder capped at 24 MiB/s
#                  (--max-overall-upload-limit=24M, about 200 Mbit/s) in the origin;
#                  10 aria2c leechers started together in the pullers' namespace
#                  (256 KiB pieces; leechers keep seeding to each other until all are done)
#   rgtp-no-share  rgtp-expose --max-rate 200M in the origin (sealed ahead before the
#                  pulls start); 10 rgtp-pull started together, each -o its own file
#   rgtp-share     the same origin; 10 `rgtp-pull --share --seed S` started together,
#                  no --from: they find each other by peer exchange only (the origin
#                  names the sharers); done = each output file in place
# Each row: egress_x = the origin veth's tx_bytes during the row / the file size;
# all_done_s = seconds from starting the ten until the last finished; byte_exact = all
# ten copies equal the file (RGTP: b3sum of each copy equals the URL's root);
# and the ratios of both against the BitTorrent row of the same run.
#
# Usage: sudo scripts/bench-swarm-netns.sh   (root: namespaces; installs aria2,
#   mktorrent, nodejs, npm with apt-get and bittorrent-tracker with npm into
#   BENCH_SWARM_CACHE, default /var/cache/rgtp-bench-swarm, when missing)
# Bounded: each row waits at most BENCH_SWARM_ROW_TIMEOUT (default 120) s; the whole
# script stops itself after BENCH_SWARM_TIMEOUT (default 900) s. Every exit path (also
# Ctrl-C) kills the processes it started, by pid, and deletes its namespaces and files.
set -euo pipefail

if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
SIZE=${BENCH_SWARM_SIZE:-64M}
RUNS=${BENCH_SWARM_RUNS:-1}
N=${BENCH_SWARM_PULLERS:-10}
CAP_BITS=${BENCH_SWARM_CAP:-200M}   # rgtp-expose --max-rate
CAP_BT=${BENCH_SWARM_CAP_BT:-24M}   # aria2c --max-overall-upload-limit (bytes/s)
ROW_TIMEOUT=${BENCH_SWARM_ROW_TIMEOUT:-120}
SEED=${BENCH_SWARM_SEED:-120} # rgtp-pull --share --seed: stopped once all are done
TOTAL_TIMEOUT=${BENCH_SWARM_TIMEOUT:-900}
CACHE=${BENCH_SWARM_CACHE:-/var/cache/rgtp-bench-swarm}
PORT=47301
TRACKER_PORT=6969

[[ $(id -u) == 0 ]] || { echo "bench-swarm-netns: needs root (network namespaces)" >&2; exit 1; }
((N >= 1 && N <= 50)) || { echo "bench-swarm-netns: BENCH_SWARM_PULLERS must be 1..50" >&2; exit 1; }

NS_O=rgtpsw-o-$$
NS_P=rgtpsw-p-$$
IF_O=rsw-o-$$ # veth names: at most 15 bytes
IF_P=rsw-p-$$
IP_O=10.77.0.1
IP_P=10.77.0.2
W=
PIDS=()
WATCHDOG=

cleanup() {
  local p
  trap - EXIT INT TERM
  if [[ -n $WATCHDOG ]]; then kill "$WATCHDOG" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS_O" 2>/dev/null || true # takes its end of the veth pair, and so both
  ip netns del "$NS_P" 2>/dev/null || true
  if [[ -n $W ]]; then rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'echo "bench-swarm-netns: interrupted" >&2; exit 130' INT TERM

# --- tools -------------------------------------------------------------------------
need_apt=()
command -v aria2c >/dev/null || need_apt+=(aria2)
command -v mktorrent >/dev/null || need_apt+=(mktorrent)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v b3sum >/dev/null || need_apt+=(b3sum)
if ((${#need_apt[@]})); then
  echo "# installing ${need_apt[*]}" >&2
  timeout 600 apt-get install -y -qq "${need_apt[@]}" >&2
fi
if [[ ! -f $CACHE/node_modules/bittorrent-tracker/package.json ]]; then
  echo "# installing bittorrent-tracker into $CACHE" >&2
  mkdir -p "$CACHE"
  (cd "$CACHE" && timeout 600 npm install --ignore-scripts --no-audit --no-fund bittorrent-tracker >&2)
fi
[[ ${BENCH_NO_BUILD:-0} == 1 ]] || nice -n 19 cargo build --release -p rgtp-cli >&2
for b in rgtp-expose rgtp-pull; do
  [[ -x $BIN/$b ]] || { echo "bench-swarm-netns: $BIN/$b missing (cargo build --release -p rgtp-cli)" >&2; exit 1; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/rgtp-bench-swarm-netns.XXXXXX")
# The watchdog: the whole script is bounded in time, whatever hangs.
(
  sleep "$TOTAL_TIMEOUT" &
  s=$!
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  wait "$s" && echo "bench-swarm-netns: over ${TOTAL_TIMEOUT}s, stopping" >&2 && kill -TERM $$
) &
WATCHDOG=$!

# --- namespaces ----------------------------------------------------------------------
ip netns add "$NS_O"
ip netns add "$NS_P"
ip link add "$IF_O" netns "$NS_O" type veth peer name "$IF_P" netns "$NS_P"
ip -n "$NS_O" addr add "$IP_O/24" dev "$IF_O"
ip -n "$NS_P" addr add "$IP_P/24" dev "$IF_P"
for ns in "$NS_O" "$NS_P"; do ip -n "$ns" link set lo up; done
ip -n "$NS_O" link set "$IF_O" up
ip -n "$NS_P" link set "$IF_P" up
ip netns exec "$NS_P" ping -c1 -W2 "$IP_O" >/dev/null || { echo "bench-swarm-netns: veth not up" >&2; exit 1; }
tx_bytes() { ip netns exec "$NS_O" cat "/sys/class/net/$IF_O/statistics/tx_bytes"; }
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

echo "# bench-swarm-netns $(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD 2>/dev/null || echo unknown) on $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "# load $(cut -d' ' -f1-3 /proc/loadavg); $SIZE file, $N pullers, one veth between two namespaces; origin capped: aria2c $CAP_BT B/s, rgtp-expose $CAP_BITS bit/s"

# --- BitTorrent ----------------------------------------------------------------------
cat >"$W/tracker.mjs" <<EOF
import Server from '$CACHE/node_modules/bittorrent-tracker/server.js' // the Server class alone (index.js pulls in WebRTC)
const server = new Server({ udp: false, http: true, ws: false, stats: false })
server.on('error', (e) => { console.error('tracker error', e.message); process.exit(1) })
server.on('warning', () => {})
server.listen($TRACKER_PORT, '$IP_O', () => console.log('tracker listening'))
EOF
mktorrent -l 18 -a "http://$IP_O:$TRACKER_PORT/announce" -o "$W/file.torrent" "$SRC" >/dev/null
# aria2c calls this (on-bt-download-complete) when a leecher has all pieces, before seeding.
cat >"$W/done-hook.sh" <<'EOF'
#!/bin/sh
date +%s.%N >"$(dirname "$3")/done"
EOF
chmod +x "$W/done-hook.sh"
ARIA=(aria2c --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --file-allocation=none
  --summary-interval=0 --console-log-level=warn --auto-save-interval=0)

# Each row runs in this shell (not in a $(...) subshell: its pids must reach PIDS and
# its waits must yield to the traps) and leaves "egress_x all_done_s byte_exact" in RES.
RES=

# row_bittorrent: sets RES.
row_bittorrent() {
  local dir=$W/bt t0 tx0 tx1 i done_ok last p exact=yes
  rm -rf "$dir"
  mkdir -p "$dir/tracker" "$dir/seed"
  cp "$SRC" "$dir/seed/file.bin"
  ip netns exec "$NS_O" node "$W/tracker.mjs" >"$dir/tracker.log" 2>&1 &
  local tracker=$!
  PIDS+=("$tracker")
  for ((i = 0; i < 100; i++)); do grep -qs 'tracker listening' "$dir/tracker.log" && break; sleep 0.1; done
  grep -qs 'tracker listening' "$dir/tracker.log" || { echo "bittorrent: tracker did not start: $(cat "$dir/tracker.log")" >&2; return 1; }
  ip netns exec "$NS_O" "${ARIA[@]}" --dir="$dir/seed" --bt-seed-unverified=true --seed-ratio=0.0 \
    --max-overall-upload-limit="$CAP_BT" --listen-port=6881 "$W/file.torrent" \
    >"$dir/seed.log" 2>&1 &
  local seeder=$!
  PIDS+=("$seeder")
  sleep 2 # the seeder has announced itself
  local leechers=()
  tx0=$(tx_bytes)
  t0=$(now)
  for ((i = 0; i < N; i++)); do
    mkdir -p "$dir/l$i"
    ip netns exec "$NS_P" "${ARIA[@]}" --dir="$dir/l$i" --seed-ratio=0.0 --listen-port=$((6900 + i)) \
      --on-bt-download-complete="$W/done-hook.sh" "$W/file.torrent" >"$dir/l$i.log" 2>&1 &
    leechers+=($!)
    PIDS+=($!)
  done
  done_ok=0
  for ((i = 0; i < ROW_TIMEOUT * 20; i++)); do
    done_ok=$(find "$dir" -maxdepth 2 -name 'done' | wc -l)
    ((done_ok >= N)) && break
    sleep 0.05
  done
  tx1=$(tx_bytes)
  stop "${leechers[@]}" "$seeder" "$tracker"
  if ((done_ok < N)); then
    echo "bittorrent: only $done_ok of $N leechers finished in ${ROW_TIMEOUT}s" >&2
    exact=no
  fi
  last=$(cat "$dir"/l*/done 2>/dev/null | sort -g | tail -1)
  for ((i = 0; i < N; i++)); do
    cmp -s "$SRC" "$dir/l$i/file.bin" || exact=no
  done
  RES="$(calc "($tx1 - $tx0) / $BYTES") $(calc "${last:-$t0} - $t0" 2) $exact"
  rm -rf "$dir"
}

# row_rgtp_no_share: sets RES.
row_rgtp_no_share() {
  local dir=$W/rgtp t0 tx0 tx1 i url last exact=yes
  rm -rf "$dir"
  mkdir -p "$dir/expose"
  RGTP_CONFIG_DIR=$dir/expose RGTP_CACHE_DIR=$dir/expose/cache \
    ip netns exec "$NS_O" "$BIN/rgtp-expose" "$SRC" --port "$PORT" --bind "$IP_O" --max-rate "$CAP_BITS" \
    >"$dir/expose.out" 2>"$dir/expose.log" &
  local exposer=$!
  PIDS+=("$exposer")
  for ((i = 0; i < 600; i++)); do grep -qs '^listening on' "$dir/expose.out" && break; sleep 0.1; done
  url=$(grep -m1 '^rgtp://' "$dir/expose.out" || true)
  [[ -n $url ]] || { echo "rgtp-no-share: rgtp-expose did not start: $(cat "$dir/expose.log")" >&2; return 1; }
  [[ $url == *"root=$ROOTHASH"* ]] || { echo "rgtp-no-share: the URL's root is not b3sum's" >&2; exact=no; }
  # A quiet origin for the pulls: let it finish sealing ahead (bounded).
  for ((i = 0; i < 600; i++)); do grep -qs 'sealed ahead' "$dir/expose.log" && break; sleep 0.1; done
  local pullers=() ok=()
  tx0=$(tx_bytes)
  t0=$(now)
  for ((i = 0; i < N; i++)); do
    RGTP_CONFIG_DIR=$dir/p$i timeout "$ROW_TIMEOUT" ip netns exec "$NS_P" \
      "$BIN/rgtp-pull" --json -q -o "$dir/out$i.bin" "$url" >"$dir/p$i.json" 2>"$dir/p$i.log" &
    pullers+=($!)
    PIDS+=($!)
  done
  # The last one to finish ends this loop, so the time after it is when all were done.
  for ((i = 0; i < N; i++)); do
    if wait "${pullers[i]}"; then ok[i]=1; else ok[i]=0; fi
  done
  last=$(now)
  tx1=$(tx_bytes)
  stop "${pullers[@]}" "$exposer"
  for ((i = 0; i < N; i++)); do
    if ((ok[i] == 0)); then
      echo "rgtp-no-share: pull $i failed: $(tail -2 "$dir/p$i.log")" >&2
      exact=no
    elif [[ $(b3sum --no-names "$dir/out$i.bin") != "$ROOTHASH" ]]; then
      exact=no
    fi
  done
  RES="$(calc "($tx1 - $tx0) / $BYTES") $(calc "$last - $t0" 2) $exact"
  pull_stats "$dir"/p*.json
  rm -rf "$dir"
}

# pull_stats JSON...: one line: what the pullers' --json reports, summed.
pull_stats() {
  python3 - "$BYTES" "$@" <<'PY'
import json, sys
size, n, tot = int(sys.argv[1]), 0, {}
for f in sys.argv[2:]:
    try:
        r = json.load(open(f))
    except (OSError, ValueError):
        continue
    n += 1
    for k in ("bytes_received", "datagrams_received", "rerequested_fragments", "duplicate_fragments", "spurious_losses"):
        tot[k] = tot.get(k, 0) + r.get(k, 0)
print(f"#   {n} pullers' --json, summed: received {tot.get('bytes_received', 0) / size:.2f}x the file "
      f"in {tot.get('datagrams_received', 0)} datagrams; rerequested_fragments {tot.get('rerequested_fragments', 0)}, "
      f"duplicate_fragments {tot.get('duplicate_fragments', 0)}, spurious_losses {tot.get('spurious_losses', 0)}")
PY
}

# row_rgtp_share: sets RES. As row_rgtp_no_share, with every puller started as
# `rgtp-pull --share --seed SEED` and no --from: they find each other by peer exchange
# only (the origin names the sharers). A puller is done when its output file appears
# (the part file is renamed before it seeds); once all are, they are stopped by pid.
row_rgtp_share() {
  local dir=$W/rgtp-share t0 tx0 tx1 i url last exact=yes done_ok
  rm -rf "$dir"
  mkdir -p "$dir/expose"
  RGTP_CONFIG_DIR=$dir/expose RGTP_CACHE_DIR=$dir/expose/cache \
    ip netns exec "$NS_O" "$BIN/rgtp-expose" "$SRC" --port "$PORT" --bind "$IP_O" --max-rate "$CAP_BITS" \
    >"$dir/expose.out" 2>"$dir/expose.log" &
  local exposer=$!
  PIDS+=("$exposer")
  for ((i = 0; i < 600; i++)); do grep -qs '^listening on' "$dir/expose.out" && break; sleep 0.1; done
  url=$(grep -m1 '^rgtp://' "$dir/expose.out" || true)
  [[ -n $url ]] || { echo "rgtp-share: rgtp-expose did not start: $(cat "$dir/expose.log")" >&2; return 1; }
  [[ $url == *"root=$ROOTHASH"* ]] || { echo "rgtp-share: the URL's root is not b3sum's" >&2; exact=no; }
  for ((i = 0; i < 600; i++)); do grep -qs 'sealed ahead' "$dir/expose.log" && break; sleep 0.1; done
  local pullers=()
  tx0=$(tx_bytes)
  t0=$(now)
  for ((i = 0; i < N; i++)); do
    RGTP_CONFIG_DIR=$dir/p$i timeout "$((ROW_TIMEOUT + SEED))" ip netns exec "$NS_P" \
      "$BIN/rgtp-pull" --json -q --share --seed "$SEED" -o "$dir/out$i.bin" "$url" \
      >"$dir/p$i.json" 2>"$dir/p$i.log" &
    pullers+=($!)
    PIDS+=($!)
  done
  declare -A fin=()
  done_ok=0
  for ((k = 0; k < ROW_TIMEOUT * 50 && done_ok < N; k++)); do
    for ((i = 0; i < N; i++)); do
      if [[ -z ${fin[$i]:-} && -e $dir/out$i.bin ]]; then
        fin[$i]=$(now)
        done_ok=$((done_ok + 1))
      fi
    done
    ((done_ok < N)) && sleep 0.02
  done
  tx1=$(tx_bytes)
  last=$(printf '%s\n' "${fin[@]}" | sort -g | tail -1)
  # Ctrl-C ends the seeding: each prints its --json (with what it shared).
  for p in "${pullers[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for ((i = 0; i < 100; i++)); do
    local alive=0
    for p in "${pullers[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  stop "${pullers[@]}" "$exposer"
  if ((done_ok < N)); then
    echo "rgtp-share: only $done_ok of $N pullers finished in ${ROW_TIMEOUT}s" >&2
    exact=no
  fi
  for ((i = 0; i < N; i++)); do
    if [[ ! -e $dir/out$i.bin ]] || [[ $(b3sum --no-names "$dir/out$i.bin") != "$ROOTHASH" ]]; then
      exact=no
    fi
  done
  RES="$(calc "($tx1 - $tx0) / $BYTES") $(calc "${last:-$t0} - $t0" 2) $exact"
  pull_stats "$dir"/p*.json
  share_stats "$dir"/p*.json
  rm -rf "$dir"
}

# share_stats JSON...: where the sharing pullers' bytes came from.
share_stats() {
  python3 - "$BYTES" "$@" <<'PY'
import json, sys
size, n, origin, peers, found, sent = int(sys.argv[1]), 0, 0, 0, 0, 0
for f in sys.argv[2:]:
    try:
        r = json.load(open(f))
    except (OSError, ValueError):
        continue
    n += 1
    s = r.get("sources") or []
    if s:
        origin += s[0].get("bytes", 0)
        peers += sum(x.get("bytes", 0) for x in s[1:])
        found += len(s) - 1
    sent += r.get("share_bytes_sent") or 0
print(f"#   {n} sharing pullers: content from the origin {origin / size:.2f}x the file, from sharers "
      f"{peers / size:.2f}x; {found} sharers found in all (peer exchange); sharers sent {sent / size:.2f}x")
PY
}

row() { # NAME "egress_x all_done_s byte_exact" BT_EGRESS BT_DONE
  local name=$1 e d x
  read -r e d x <<<"$2"
  printf '%-14s egress_x %5s  all_done_s %6s  byte_exact %-3s  egress/bt %s  done/bt %s\n' \
    "$name" "$e" "$d" "$x" "$(calc "$e / $3")" "$(calc "$d / $4")"
}

for ((run = 1; run <= RUNS; run++)); do
  echo "run $run (load $(cut -d' ' -f1-3 /proc/loadavg))"
  row_bittorrent
  bt=$RES
  read -r bt_e bt_d _ <<<"$bt"
  [[ $bt_d == 0.00 ]] && bt_d=0.01
  row bittorrent "$bt" "$bt_e" "$bt_d"
  row_rgtp_no_share
  row rgtp-no-share "$RES" "$bt_e" "$bt_d"
  if row_rgtp_share; then
    row rgtp-share "$RES" "$bt_e" "$bt_d"
  else
    echo "rgtp-share     failed"
  fi
done

#!/usr/bin/env bash
# bench-fec.sh: rgtp-pull with repair fragments (--fec auto, the default) against
# --fec off, alternated in the same run, over the emulated link of lossy-link.sh
# (two network namespaces joined by the linkem TUN forwarder; needs root).
#
# For each loss rate: the link comes up (loss on both directions), rgtp-expose runs
# in rgtp-b, and rgtp-pull in rgtp-a pulls the file BENCH_FEC_REPEAT times with each
# mode, alternating which goes first; every pull is checked byte for byte (cmp). One
# line per pull, then one summary line per loss rate with the medians and the ratio
# auto/off:
#   fec loss=30 mode=auto run=1 mbit=... secs=... rerequested=... repair=... repaired=... exact=yes
#   fec-summary loss=30 auto_mbit=... off_mbit=... ratio=...
# A pull that does not finish within BENCH_FEC_MAX_TIME counts its bytes so far as
# 0 Mbit/s (exact=timeout).
#
# BENCH_FEC_COMPETE=1 measures instead whether repair hides congestion from a TCP
# flow: for each loss rate and TCP congestion control (BENCH_FEC_CCS), a TCP download
# (socat, rgtp-b -> rgtp-a) runs alone for BENCH_FEC_COMPETE_SECS, then beside a whole
# pull with each mode (TCP measured over the pull's time); one line each:
#   fec-compete loss=10 cc=cubic mode=alone|auto|off tcp_mbit=... rgtp_mbit=... tcp_share=...
# "FEC does not hide congestion" reads: tcp_mbit beside auto is no lower than beside off.
#
# Environment: BENCH_FEC_LOSSES="0 10 30 50"  BENCH_FEC_MIB=64  BENCH_FEC_REPEAT=1
#   BENCH_FEC_MAX_TIME=120 (s per pull)  BENCH_DELAY_MS=20 (one way)  BENCH_RATE_MBIT=200
#   BENCH_QUEUE_MS=50  BENCH_SEED=1  BENCH_FEC_MODES="auto off" (one mode alone: no
#   ratio)  BENCH_DIR (scratch, default a new temporary dir)
#   CARGO_TARGET_DIR (where the binaries are built)
set -euo pipefail
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LINK=$ROOT/scripts/lossy-link.sh
BENCH_FEC_LOSSES=${BENCH_FEC_LOSSES:-"0 10 30 50"}
BENCH_FEC_MIB=${BENCH_FEC_MIB:-64}
BENCH_FEC_REPEAT=${BENCH_FEC_REPEAT:-1}
BENCH_FEC_MAX_TIME=${BENCH_FEC_MAX_TIME:-120}
BENCH_DELAY_MS=${BENCH_DELAY_MS:-20}
BENCH_RATE_MBIT=${BENCH_RATE_MBIT:-200}
BENCH_QUEUE_MS=${BENCH_QUEUE_MS:-50}
BENCH_SEED=${BENCH_SEED:-1}
BENCH_FEC_MODES=${BENCH_FEC_MODES:-"auto off"}
BENCH_FEC_COMPETE=${BENCH_FEC_COMPETE:-0}
BENCH_FEC_CCS=${BENCH_FEC_CCS:-"cubic bbr"}
BENCH_FEC_COMPETE_SECS=${BENCH_FEC_COMPETE_SECS:-15}
TCP_PORT=9009
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /tmp/rgtp-bench-fec.XXXXXX)}
IP_B=198.18.0.2

log() { echo "bench-fec: $*" >&2; }
[[ $(id -u) -eq 0 ]] || { log "must run as root (network namespaces)"; exit 1; }
command -v b3sum >/dev/null || apt-get install -y b3sum >/dev/null 2>&1 || true

log "building rgtp-cli and linkem (CARGO_TARGET_DIR=$TARGET)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -p rgtp-cli >&2)
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --manifest-path scripts/linkem/Cargo.toml >&2)
export LINKEM_BIN=$TARGET/release/linkem
EXPOSE=$TARGET/release/rgtp-expose
PULL=$TARGET/release/rgtp-pull

mkdir -p "$BENCH_DIR/cfg" "$BENCH_DIR/cache"
export RGTP_CONFIG_DIR=$BENCH_DIR/cfg XDG_CACHE_HOME=$BENCH_DIR/cache
FILE=$BENCH_DIR/fec-${BENCH_FEC_MIB}MiB.bin
head -c $((BENCH_FEC_MIB << 20)) /dev/urandom >"$FILE"

EXP_PID= TCP_SRV= TCP_CLI=
cleanup() {
  [[ -n $TCP_CLI ]] && kill "$TCP_CLI" 2>/dev/null
  [[ -n $TCP_SRV ]] && kill "$TCP_SRV" 2>/dev/null
  [[ -n $EXP_PID ]] && kill "$EXP_PID" 2>/dev/null && wait "$EXP_PID" 2>/dev/null
  "$LINK" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "NA"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
jget() { python3 -c 'import json,sys
try: d = json.load(open(sys.argv[1]))
except Exception: d = {}
print(" ".join(str(d.get(k, "NA")) for k in sys.argv[2:]))' "$@"; }

# pull MODE LOSS RUN: one pull, one line; appends its Mbit/s to $BENCH_DIR/mbit-LOSS-MODE
pull() {
  local mode=$1 loss=$2 run=$3 out=$BENCH_DIR/out.bin jf=$BENCH_DIR/pull.json t0 t1 rc=0 exact mbit
  rm -f "$out" "$out.rgtp-part" "$out.rgtp-state" "$jf"
  t0=$(date +%s.%N)
  ip netns exec rgtp-a timeout -s INT -k 5 "$BENCH_FEC_MAX_TIME" "$PULL" "$URL" -o "$out" --json --quiet \
    --fec "$mode" --timeout 30 --connect-timeout 30 --known-exposers "$BENCH_DIR/known" >"$jf" 2>"$BENCH_DIR/pull.err" || rc=$?
  t1=$(date +%s.%N)
  if [[ $rc -eq 0 ]] && cmp -s "$out" "$FILE"; then
    exact=yes
    mbit=$(awk -v b=$((BENCH_FEC_MIB << 20)) -v a="$t0" -v z="$t1" 'BEGIN {printf "%.1f", b * 8 / (z - a) / 1e6}')
  elif [[ $rc -eq 0 ]]; then
    exact=NO; mbit=0
  else
    exact="timeout(rc=$rc)"; mbit=0
  fi
  read -r rr rep fixed dgin <<<"$(jget "$jf" rerequested_fragments repair_fragments chunks_repaired datagrams_received)"
  echo "fec loss=$loss mode=$mode run=$run mbit=$mbit secs=$(awk -v a="$t0" -v z="$t1" 'BEGIN {printf "%.2f", z - a}') rerequested=$rr repair=$rep repaired=$fixed datagrams_in=$dgin exact=$exact"
  echo "$mbit" >>"$BENCH_DIR/mbit-$loss-$mode"
}

# compete LOSS CC MODE: a TCP download alone for BENCH_FEC_COMPETE_SECS (MODE=alone),
# or beside one whole pull with --fec MODE (bounded by BENCH_FEC_MAX_TIME; a pull that
# does not finish shows rgtp_mbit=NA); one fec-compete line.
compete() {
  local loss=$1 cc=$2 mode=$3 tf=$BENCH_DIR/tcp.out out=$BENCH_DIR/out.bin jf=$BENCH_DIR/pull.json
  local s0 s1 t0 t1 rc=0 secs tcp rg=NA share=NA
  rm -f "$tf" "$out" "$out.rgtp-part" "$out.rgtp-state" "$jf"
  ip netns exec rgtp-a timeout -k 2 $((BENCH_FEC_MAX_TIME + BENCH_FEC_COMPETE_SECS + 20)) socat -u \
    "TCP:$IP_B:$TCP_PORT" "OPEN:$tf,creat,trunc" 2>/dev/null &
  TCP_CLI=$!
  sleep 3 # past slow start
  s0=$(stat -c %s "$tf" 2>/dev/null || echo 0)
  t0=$(date +%s.%N)
  if [[ $mode == alone ]]; then
    sleep "$BENCH_FEC_COMPETE_SECS"
  else
    ip netns exec rgtp-a timeout -s INT -k 5 "$BENCH_FEC_MAX_TIME" "$PULL" "$URL" -o "$out" --json --quiet \
      --fec "$mode" --timeout 30 --connect-timeout 30 --known-exposers "$BENCH_DIR/known" >"$jf" 2>"$BENCH_DIR/pull.err" || rc=$?
  fi
  t1=$(date +%s.%N)
  s1=$(stat -c %s "$tf" 2>/dev/null || echo 0)
  kill "$TCP_CLI" 2>/dev/null; wait "$TCP_CLI" 2>/dev/null || true
  TCP_CLI=
  secs=$(awk -v a="$t0" -v z="$t1" 'BEGIN {printf "%.2f", z - a}')
  tcp=$(awk -v b=$((s1 - s0)) -v s="$secs" 'BEGIN {printf "%.1f", b * 8 / s / 1e6}')
  if [[ $mode != alone && $rc -eq 0 ]] && cmp -s "$out" "$FILE"; then
    rg=$(awk -v b=$((BENCH_FEC_MIB << 20)) -v s="$secs" 'BEGIN {printf "%.1f", b * 8 / s / 1e6}')
    share=$(awk -v t="$tcp" -v r="$rg" 'BEGIN {printf "%.2f", t / (t + r)}')
  fi
  rm -f "$tf" "$out" "$out.rgtp-part" "$out.rgtp-state"
  echo "fec-compete loss=$loss cc=$cc mode=$mode secs=$secs tcp_mbit=$tcp rgtp_mbit=$rg tcp_share=$share"
}

for loss in $BENCH_FEC_LOSSES; do
  "$LINK" up --delay-ms "$BENCH_DELAY_MS" --rate-mbit "$BENCH_RATE_MBIT" --queue-ms "$BENCH_QUEUE_MS" \
    --loss "$loss" --seed "$BENCH_SEED" --duration 1800 2>>"$BENCH_DIR/lossy-link.log"
  rm -f "$BENCH_DIR/expose.out"
  ip netns exec rgtp-b "$EXPOSE" "$FILE" --port 0 --bind "$IP_B" >"$BENCH_DIR/expose.out" 2>"$BENCH_DIR/expose.err" &
  EXP_PID=$!
  for ((i = 0; i < 600; i++)); do
    grep -q '^listening' "$BENCH_DIR/expose.out" 2>/dev/null && break
    sleep 0.1
  done
  URL=$(grep -m1 '^rgtp://' "$BENCH_DIR/expose.out") || { log "rgtp-expose did not start: $(tail -1 "$BENCH_DIR/expose.err")"; exit 1; }
  if [[ $BENCH_FEC_COMPETE == 1 ]]; then
    command -v socat >/dev/null || apt-get install -y socat >/dev/null 2>&1
    ip netns exec rgtp-b socat -u OPEN:/dev/zero "TCP-LISTEN:$TCP_PORT,bind=$IP_B,reuseaddr,fork" 2>/dev/null &
    TCP_SRV=$!
    sleep 0.5
    for cc in $BENCH_FEC_CCS; do
      "$LINK" congctl "$cc" >/dev/null
      for ((run = 1; run <= BENCH_FEC_REPEAT; run++)); do
        order="alone $BENCH_FEC_MODES"
        ((run % 2)) || order="$(echo "$BENCH_FEC_MODES" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}') alone"
        for mode in $order; do compete "$loss" "$cc" "$mode"; done
      done
    done
    kill "$TCP_SRV" 2>/dev/null; wait "$TCP_SRV" 2>/dev/null || true
    TCP_SRV=
    kill "$EXP_PID" 2>/dev/null; wait "$EXP_PID" 2>/dev/null || true
    EXP_PID=
    "$LINK" down >/dev/null 2>>"$BENCH_DIR/lossy-link.log"
    continue
  fi
  for ((run = 1; run <= BENCH_FEC_REPEAT; run++)); do
    order=$BENCH_FEC_MODES
    ((run % 2)) || order=$(echo "$BENCH_FEC_MODES" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}')
    for mode in $order; do pull "$mode" "$loss" "$run"; done
  done
  kill "$EXP_PID" 2>/dev/null; wait "$EXP_PID" 2>/dev/null || true
  EXP_PID=
  "$LINK" down >/dev/null 2>>"$BENCH_DIR/lossy-link.log"
  a=NA o=NA
  [[ -f $BENCH_DIR/mbit-$loss-auto ]] && a=$(median <"$BENCH_DIR/mbit-$loss-auto")
  [[ -f $BENCH_DIR/mbit-$loss-off ]] && o=$(median <"$BENCH_DIR/mbit-$loss-off")
  echo "fec-summary loss=$loss rtt_ms=$((2 * BENCH_DELAY_MS)) rate_mbit=$BENCH_RATE_MBIT mib=$BENCH_FEC_MIB auto_mbit=$a off_mbit=$o ratio=$(awk -v a="$a" -v o="$o" 'BEGIN {if (o == "NA" || a == "NA") print "NA"; else if (o > 0) printf "%.2f", a / o; else print "inf"}')"
done

#!/usr/bin/env bash
# test-linkem.sh: proves the user-space link emulator (scripts/linkem) and
# scripts/lossy-link.sh work. Run as root (CI does). Installs iperf3/ping/python3
# when missing, cleans up on any exit (trap), every step bounded by a timeout.
#
# Checks (behaviour via counters wherever possible, loose bounds on timings):
#   0. unit tests of the link model (virtual clock)
#   1. ping RTT ~= 2 x one-way delay (and asymmetric delays add up)
#   2. random loss: linkem's drop_random ~= p x packets (binomial, 4.5 sigma) and the
#      UDP receiver sees exactly those packets missing
#   3. rate limit: TCP throughput <= rate (and not absurdly below); UDP overload
#      produces queue drops, forwarded bytes bounded by rate x time + queue
#   4. Gilbert-Elliott burst loss: loss fraction and mean burst length
#   5. linkem exits by itself at --duration and on SIGTERM, writing its stats
# Exit status 0 = all passed.
set -euo pipefail
# Cargo resolves a relative CARGO_TARGET_DIR against its working directory: make it
# absolute now, so every build below and every path derived from it agree.
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LL=$SCRIPT_DIR/lossy-link.sh
export LINKEM_DIR=${LINKEM_DIR:-/run/rgtp-lossy-link}
# linkem is a workspace of its own: its target dir is CARGO_TARGET_DIR when set.
export LINKEM_BIN=${LINKEM_BIN:-${CARGO_TARGET_DIR:-$SCRIPT_DIR/linkem/target}/release/linkem}
export LINKEM_DURATION=120 # every link in this test disappears by itself within 2 min
TMP=$(mktemp -d /tmp/test-linkem.XXXXXX)
FAILS=0
PASSES=0
STANDALONE_PID=

cleanup() {
  local rc=$?
  set +e
  local f
  for f in "$TMP"/*.pid; do
    [[ -f $f ]] || continue
    local p
    p=$(cat "$f" 2>/dev/null)
    [[ $p =~ ^[0-9]+$ && -d /proc/$p ]] && kill "$p" 2>/dev/null
  done
  [[ -n $STANDALONE_PID && -d /proc/$STANDALONE_PID ]] && kill "$STANDALONE_PID" 2>/dev/null
  "$LL" down >/dev/null 2>&1
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "test-linkem: $*"; }
pass() { PASSES=$((PASSES + 1)); say "PASS $*"; }
fail() { FAILS=$((FAILS + 1)); say "FAIL $*"; }
check() { # check "description" python-boolean-expression (vars from env J)
  local desc=$1 expr=$2
  if python3 -c "import sys; sys.exit(0 if ($expr) else 1)"; then pass "$desc"; else fail "$desc"; fi
}

[[ $(id -u) -eq 0 ]] || { say "must run as root"; exit 1; }

install_missing() {
  local pkgs=()
  command -v iperf3 >/dev/null || pkgs+=(iperf3)
  command -v ping >/dev/null || pkgs+=(iputils-ping)
  command -v python3 >/dev/null || pkgs+=(python3)
  if ((${#pkgs[@]})); then
    say "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get install -y "${pkgs[@]}" >"$TMP/apt.log" 2>&1 ||
      { timeout 300 apt-get update >>"$TMP/apt.log" 2>&1 && timeout 300 apt-get install -y "${pkgs[@]}" >>"$TMP/apt.log" 2>&1; } ||
      { cat "$TMP/apt.log"; say "cannot install ${pkgs[*]}"; exit 1; }
  fi
}
install_missing

# JSON field from the last stats file: jget EXPR (python, d = stats dict)
jget() { python3 -c "import json; d=json.load(open('$LINKEM_DIR/stats.json')); print($1)"; }

iperf_server() { # start a one-shot iperf3 server in rgtp-b
  rm -f "$TMP/iperf3.pid"
  "$LL" exec b iperf3 -s -1 -D -B 198.18.0.2 --pidfile "$TMP/iperf3.pid"
  local i
  for ((i = 0; i < 50; i++)); do
    "$LL" exec b ss -Hltn 'sport = :5201' | grep -q 5201 && return 0
    sleep 0.1
  done
  say "iperf3 server did not start"
  return 1
}

iperf_client() { # iperf3 client in rgtp-a, JSON to $TMP/iperf.json
  local rc=0
  timeout 60 "$LL" exec a iperf3 -c 198.18.0.2 --connect-timeout 5000 -J "$@" >"$TMP/iperf.json" || rc=$?
  if ((rc)) || grep -q '"error"' "$TMP/iperf.json"; then
    say "iperf3 client failed (rc=$rc): $(grep '"error"' "$TMP/iperf.json" || true)"
    return 1
  fi
}

conservation() { # pkts_in == delivered + every kind of drop + still pending, per direction
  local dir
  for dir in ab ba; do
    check "conservation of packets ($dir)" "$(jget "d['$dir']['pkts_in'] == d['$dir']['fwd_pkts'] + d['$dir']['drop_random'] + d['$dir']['drop_burst'] + d['$dir']['drop_queue'] + d['$dir']['drop_overflow'] + d['$dir']['write_errors'] + d['$dir']['pending_pkts']")"
  done
}

# ---------------------------------------------------------------- 0. unit tests
say "0. building linkem and running its unit tests"
timeout 600 cargo test --release --quiet --manifest-path "$SCRIPT_DIR/linkem/Cargo.toml" >"$TMP/cargo.log" 2>&1 &&
  pass "linkem unit tests" || { cat "$TMP/cargo.log"; fail "linkem unit tests"; }
timeout 600 cargo build --release --manifest-path "$SCRIPT_DIR/linkem/Cargo.toml"

# ---------------------------------------------------------------- 1. delay
say "1. RTT = 2 x delay"
"$LL" up --delay-ms 20 --seed 1
timeout 20 "$LL" exec a ping -n -q -c 20 -i 0.05 -W 2 198.18.0.2 >"$TMP/ping.txt" || true
read -r rmin ravg rmax < <(awk -F'[/ =]+' '/^rtt|^round-trip/ {print $6, $7, $8}' "$TMP/ping.txt")
say "   ping rtt min/avg/max = $rmin/$ravg/$rmax ms (expected 40)"
check "ping RTT min >= 40 ms (2 x 20 ms)" "${rmin:-0} >= 40.0"
check "ping RTT avg <= 40 + 10 ms" "0 < ${ravg:-0} <= 50.0"
check "ping: no loss reported" "'$(grep -o '[0-9.]*% packet loss' "$TMP/ping.txt")' == '0% packet loss'"
"$LL" up --delay-ms-ab 30 --delay-ms-ba 5
timeout 20 "$LL" exec a ping -n -q -c 10 -i 0.05 -W 2 198.18.0.2 >"$TMP/ping.txt" || true
read -r rmin ravg rmax < <(awk -F'[/ =]+' '/^rtt|^round-trip/ {print $6, $7, $8}' "$TMP/ping.txt")
say "   asymmetric 30+5 ms: rtt min/avg/max = $rmin/$ravg/$rmax ms (expected 35)"
check "asymmetric delays add up (35 <= RTT avg <= 45)" "${rmin:-0} >= 35.0 and ${ravg:-0} <= 45.0"
"$LL" down 2>/dev/null
check "ICMP counters: 10 requests a->b, 10 replies b->a" "$(jget "d['ab']['fwd_pkts'] == 10 and d['ba']['fwd_pkts'] == 10")"

# ---------------------------------------------------------------- 2. random loss
say "2. random loss 5 % (UDP 40 Mbit/s, 1200-byte datagrams, 4 s)"
"$LL" up --delay-ms 5 --loss 5 --seed 7
iperf_server
iperf_client -u -b 40M -l 1200 -t 4
sleep 0.3
"$LL" down 2>/dev/null
read -r n k burst rcv_lost rcv_pkts < <(python3 - "$TMP/iperf.json" "$LINKEM_DIR/stats.json" <<'EOF'
import json, sys
it = json.load(open(sys.argv[1])); d = json.load(open(sys.argv[2]))["ab"]
r = it["end"]["sum_received"]
print(d["pkts_passed_queue"], d["drop_random"], d["drop_burst"], r["lost_packets"], r["packets"])
EOF
)
say "   linkem a->b: $k of $n packets dropped-random ($(python3 -c "print(f'{100*$k/$n:.3f}')") %); iperf3 receiver: $rcv_lost of $rcv_pkts lost"
check "enough packets for the statistics (n >= 5000)" "$n >= 5000"
check "drop_random within 4.5 sigma of 5 % of packets (binomial)" "abs($k - 0.05*$n) <= 4.5*(($n*0.05*0.95)**0.5)"
check "no burst drops when burst loss is off" "$burst == 0"
# the UDP receiver's loss count = the datagrams linkem dropped (+- a few control
# packets of iperf3's TCP connection, which share the direction and loss)
check "receiver-observed loss matches linkem's counter (+-3 % +5)" "abs($rcv_lost - $k) <= 0.03*$k + 5"
conservation

# ---------------------------------------------------------------- 3. rate limit
say "3. rate limit 50 Mbit/s, 10 ms delay, queue 20 ms"
"$LL" up --delay-ms 10 --rate-mbit 50 --queue-ms 20 --seed 3
iperf_server
iperf_client -t 4 -C reno
tcp_mbit=$(python3 -c "import json; print(round(json.load(open('$TMP/iperf.json'))['end']['sum_received']['bits_per_second']/1e6, 2))")
say "   TCP (reno) through the link: $tcp_mbit Mbit/s"
check "TCP throughput <= 50 Mbit/s (+2 %)" "$tcp_mbit <= 51.0"
check "TCP throughput >= 20 Mbit/s (loose: shared machine)" "$tcp_mbit >= 20.0"
iperf_server
iperf_client -u -b 100M -l 1200 -t 3
sleep 0.3
"$LL" down 2>/dev/null
read -r sent_mbit fwd_bytes dq pin qb maxb < <(python3 - "$TMP/iperf.json" "$LINKEM_DIR/stats.json" <<'EOF'
import json, sys
it = json.load(open(sys.argv[1])); d = json.load(open(sys.argv[2]))["ab"]
print(round(it["end"]["sum_sent"]["bits_per_second"]/1e6, 2), d["fwd_bytes"], d["drop_queue"], d["pkts_in"], d["config"]["queue_bytes"], d["max_backlog_bytes"])
EOF
)
say "   UDP offered $sent_mbit Mbit/s: drop_queue=$dq of $pin packets in (whole run, TCP test included); max backlog $maxb of $qb bytes"
check "queue drops under 2x overload" "$dq > 0"
check "backlog never exceeded the queue limit" "$maxb <= $qb"
# everything forwarded a->b over the whole run (TCP test 4 s + UDP test 3 s + slack)
# cannot exceed rate x time + one queue
el=$(jget "d['elapsed_s']")
check "forwarded bytes <= rate x elapsed + queue (a->b)" "$fwd_bytes <= 50e6/8*$el + $qb"
conservation

# ---------------------------------------------------------------- 4. burst loss
# No iperf3 here: a burst could swallow its TCP control connection's SYNs. A numbered
# UDP stream needs no handshake and lets the receiver measure loss runs itself
# (the link is FIFO, so every gap in the sequence numbers is a loss run).
say "4. Gilbert-Elliott burst loss p=1 % r=25 % (expected 3.85 % loss, mean burst 4)"
"$LL" up --delay-ms 2 --ge-p 1 --ge-r 25 --seed 11
cat >"$TMP/udp.py" <<'PY'
import socket, struct, sys, time
mode = sys.argv[1]
if mode == "recv":  # recv PORT MAXSECS -> prints: received max_seq runs...
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("198.18.0.2", int(sys.argv[2])))
    open(sys.argv[4], "w").close()  # ready marker
    s.settimeout(1.0)
    deadline = time.time() + float(sys.argv[3])
    got, last, runs = 0, -1, []
    while time.time() < deadline:
        try:
            data = s.recv(2048)
        except socket.timeout:
            if got:
                break
            continue
        seq = struct.unpack("!I", data[:4])[0]
        if seq == 0xFFFFFFFF:
            break
        if seq > last + 1:
            runs.append(seq - last - 1)
        last = max(last, seq)
        got += 1
    print(got, last + 1, sum(runs), len(runs))
else:  # send PORT COUNT PPS
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n, pps = int(sys.argv[3]), float(sys.argv[4])
    pad = b"x" * 1196
    t0 = time.time()
    for i in range(n):
        s.sendto(struct.pack("!I", i) + pad, ("198.18.0.2", int(sys.argv[2])))
        if i % 50 == 49:
            ahead = t0 + (i + 1) / pps - time.time()
            if ahead > 0:
                time.sleep(ahead)
    time.sleep(0.3)
    for _ in range(30):  # end markers (may be lost too; receiver also stops on 1 s silence)
        s.sendto(struct.pack("!I", 0xFFFFFFFF) + pad, ("198.18.0.2", int(sys.argv[2])))
        time.sleep(0.01)
PY
rm -f "$TMP/rx.ready"
timeout 40 "$LL" exec b python3 "$TMP/udp.py" recv 9999 30 "$TMP/rx.ready" >"$TMP/rx.txt" &
rx_pid=$!
echo "$rx_pid" >"$TMP/rx.pid" # killed by cleanup if we fail before it ends
for ((i = 0; i < 50; i++)); do [[ -f $TMP/rx.ready ]] && break; sleep 0.1; done
timeout 40 "$LL" exec a python3 "$TMP/udp.py" send 9999 20000 5000
wait "$rx_pid" || true
sleep 0.1
"$LL" down 2>/dev/null
read -r got sent_seen lost_rx runs_rx <"$TMP/rx.txt"
read -r n kb eps kr < <(jget "d['ab']['pkts_passed_queue'], d['ab']['drop_burst'], d['ab']['ge_bad_episodes'], d['ab']['drop_random']" | tr -d '(),')
say "   linkem: drop_burst=$kb of $n ($(python3 -c "print(f'{100*$kb/$n:.2f}')") %), $eps bad episodes, $(python3 -c "print(f'{$kb/max($eps,1):.2f}')") drops per episode"
say "   receiver: got $got of $sent_seen, $lost_rx lost in $runs_rx runs (mean run $(python3 -c "print(f'{$lost_rx/max($runs_rx,1):.2f}')"))"
check "enough packets (n >= 15000)" "$n >= 15000"
check "burst loss fraction within 2.5..5.5 %" "0.025 <= $kb/$n <= 0.055"
check "drops per bad episode within 3..5.5 (expected 4)" "3.0 <= $kb/max($eps,1) <= 5.5"
check "receiver-seen loss runs are bursts (mean run length >= 2.5)" "$lost_rx/max($runs_rx,1) >= 2.5"
check "receiver-seen losses = linkem's drop_burst (+-30 end markers)" "abs($lost_rx - $kb) <= 30"
check "no random drops when random loss is off" "$kr == 0"
conservation

# ---------------------------------------------------------------- 5. lifetime
say "5. linkem stops by itself (--duration) and on SIGTERM, writing stats"
"$LINKEM_BIN" --tun-a lkt-a0 --tun-b lkt-b0 --duration 1 --stats "$TMP/s1.json" --quiet &
STANDALONE_PID=$!
t0=$(date +%s.%N)
timeout 10 tail --pid="$STANDALONE_PID" -f /dev/null || true
t1=$(date +%s.%N)
check "exits after --duration 1 (within 0.9..3 s)" "0.9 <= $t1 - $t0 <= 3.0"
check "stats written with reason 'duration'" "'$(python3 -c "import json; print(json.load(open('$TMP/s1.json'))['reason'])" 2>/dev/null)' == 'duration'"
"$LINKEM_BIN" --tun-a lkt-a0 --tun-b lkt-b0 --duration 60 --stats "$TMP/s2.json" --quiet &
STANDALONE_PID=$!
sleep 0.3
kill -TERM "$STANDALONE_PID"
timeout 5 tail --pid="$STANDALONE_PID" -f /dev/null || true
check "SIGTERM stops it (stats reason 'signal 15')" "'$(python3 -c "import json; print(json.load(open('$TMP/s2.json'))['reason'])" 2>/dev/null)' == 'signal 15'"
check "TUN devices gone after exit" "$(ip link show dev lkt-a0 >/dev/null 2>&1 && echo False || echo True)"
check "missing --duration is refused" "$("$LINKEM_BIN" --tun-a lkt-a0 >/dev/null 2>&1 && echo False || echo True)"

say "passed $PASSES, failed $FAILS"
((FAILS == 0))

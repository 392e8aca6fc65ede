#!/usr/bin/env bash
# lossy-link.sh: an emulated lossy, delayed, rate-limited link between two network
# namespaces, for machines whose kernel has no netem.
#
#   rgtp-a (198.18.0.1/30, dev rgtp-a0) <== linkem (root ns) ==> rgtp-b (198.18.0.2/30, dev rgtp-b0)
#
# linkem (scripts/linkem) creates both TUN devices in the root namespace; this script
# moves each into its namespace (the fd keeps working), addresses them and brings them
# up. "ab" in linkem's counters = packets sent by rgtp-a towards rgtp-b.
#
# Usage:
#   lossy-link.sh up [linkem options]  e.g. up --delay-ms 20 --rate-mbit 200 --loss 1
#                                      (a previous link is torn down first; --duration
#                                      defaults to $LINKEM_DURATION = 1800 s: the link
#                                      disappears by itself after that)
#   lossy-link.sh down                 stop linkem, delete the namespaces; final counters
#                                      stay in $LINKEM_DIR/stats.json
#   lossy-link.sh exec a|b CMD...      run CMD inside rgtp-a / rgtp-b
#   lossy-link.sh stats                counters now (SIGUSR1 snapshot), one JSON line
#   lossy-link.sh congctl ALGO|default set TCP congestion control for traffic over the
#                                      link in both namespaces, via a /32 route with
#                                      `congctl` (inside a netns the sysctl only accepts
#                                      algorithms listed in the root ns's
#                                      tcp_allowed_congestion_control, i.e. reno/bbr here)
#   lossy-link.sh status               show namespaces, addresses, linkem pid
#
# Environment: LINKEM_DIR (state, default /run/rgtp-lossy-link), LINKEM_BIN (default:
# $CARGO_TARGET_DIR/release/linkem, else scripts/linkem/target/release/linkem, built
# when missing), LINKEM_DURATION.
set -euo pipefail
# Cargo resolves a relative CARGO_TARGET_DIR against its working directory: make it
# absolute now, so every build below and every path derived from it agree.
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LINKEM_DIR=${LINKEM_DIR:-/run/rgtp-lossy-link}
LINKEM_BIN=${LINKEM_BIN:-${CARGO_TARGET_DIR:-$SCRIPT_DIR/linkem/target}/release/linkem}
LINKEM_DURATION=${LINKEM_DURATION:-1800}
NS_A=rgtp-a
NS_B=rgtp-b
DEV_A=rgtp-a0
DEV_B=rgtp-b0
IP_A=198.18.0.1
IP_B=198.18.0.2
PREFIX=30

die() { echo "lossy-link: error: $*" >&2; exit 1; }
log() { echo "lossy-link: $*" >&2; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (needs CAP_NET_ADMIN for TUN and netns)"
  [[ -c /dev/net/tun ]] || die "/dev/net/tun missing"
  command -v ip >/dev/null || die "'ip' (iproute2) not found"
}

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

# pid of our linkem, if it is still running (checked by executable, not by name)
linkem_pid() {
  local pid
  [[ -f $LINKEM_DIR/linkem.pid ]] || return 1
  pid=$(cat "$LINKEM_DIR/linkem.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -d /proc/$pid ]] || return 1
  [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == *linkem* ]] || return 1
  echo "$pid"
}

build_linkem() {
  if [[ ! -x $LINKEM_BIN ]]; then
    log "building linkem"
    command -v cargo >/dev/null || die "cargo not found and $LINKEM_BIN missing"
    cargo build --release --manifest-path "$SCRIPT_DIR/linkem/Cargo.toml" >&2 \
      || die "cargo build of linkem failed"
  fi
}

do_down() {
  local pid i
  if pid=$(linkem_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    if [[ -d /proc/$pid ]]; then
      log "linkem $pid did not stop after 5 s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$LINKEM_DIR/linkem.pid"
  for ns in "$NS_A" "$NS_B"; do
    if ns_exists "$ns"; then
      local pids
      pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
      [[ -z $pids ]] || log "warning: processes still inside $ns (not killed, not ours to kill): $pids"
      ip netns del "$ns" || log "warning: could not delete netns $ns"
    fi
  done
  # TUN devices vanish with linkem; if linkem died before moving them they are in the root ns.
  for dev in "$DEV_A" "$DEV_B"; do
    ip link show dev "$dev" >/dev/null 2>&1 && ip link del "$dev" 2>/dev/null || true
  done
  return 0
}

setup_ns() { # ns dev addr
  local ns=$1 dev=$2 addr=$3
  ip link set "$dev" netns "$ns"
  ip -n "$ns" link set lo up
  # no IPv6 chatter (router solicitations etc.) in the counters
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || true
  ip netns exec "$ns" sysctl -qw net.ipv6.conf."$dev".disable_ipv6=1 2>/dev/null || true
  # a connection must not inherit ssthresh/RTT cached from a previous (lossy) run
  ip netns exec "$ns" sysctl -qw net.ipv4.tcp_no_metrics_save=1
  ip -n "$ns" link set "$dev" mtu 1500 txqueuelen 1000 up
  ip -n "$ns" addr add "$addr/$PREFIX" dev "$dev"
}

do_up() {
  need_root
  build_linkem
  mkdir -p "$LINKEM_DIR"
  do_down
  local args=("$@") has_duration=0 a
  for a in "${args[@]}"; do [[ $a == --duration || $a == --duration=* ]] && has_duration=1; done
  ((has_duration)) || args+=(--duration "$LINKEM_DURATION")
  [[ -f $LINKEM_DIR/stats.json ]] && mv -f "$LINKEM_DIR/stats.json" "$LINKEM_DIR/stats.prev.json"
  rm -f "$LINKEM_DIR/linkem.log"

  ip netns add "$NS_A"
  ip netns add "$NS_B"
  # setsid: linkem outlives the calling shell/session; it stops by itself after --duration.
  # nice -10: the emulator should win the CPU against the endpoints it serves (2 cores)
  setsid nice -n -10 "$LINKEM_BIN" --tun-a "$DEV_A" --tun-b "$DEV_B" --stats "$LINKEM_DIR/stats.json" \
    "${args[@]}" </dev/null >/dev/null 2>"$LINKEM_DIR/linkem.log" 9>&- &
  local pid=$!
  echo "$pid" >"$LINKEM_DIR/linkem.pid"
  printf '%s\n' "${args[@]}" >"$LINKEM_DIR/linkem.args"

  local i ok=0
  for ((i = 0; i < 100; i++)); do
    if ! [[ -d /proc/$pid ]]; then
      rm -f "$LINKEM_DIR/linkem.pid"
      do_down
      die "linkem exited at start: $(cat "$LINKEM_DIR/linkem.log" 2>/dev/null)"
    fi
    if ip link show dev "$DEV_A" >/dev/null 2>&1 && ip link show dev "$DEV_B" >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.05
  done
  ((ok)) || { do_down; die "TUN devices did not appear within 5 s"; }

  if ! { setup_ns "$NS_A" "$DEV_A" "$IP_A" && setup_ns "$NS_B" "$DEV_B" "$IP_B"; }; then
    do_down
    die "namespace setup failed"
  fi
  log "up: $NS_A/$DEV_A $IP_A <-> $NS_B/$DEV_B $IP_B, linkem pid $pid, args: ${args[*]}"
}

do_exec() {
  [[ $# -ge 2 ]] || die "usage: exec a|b CMD..."
  local side=$1
  shift
  case $side in
    a | "$NS_A") exec ip netns exec "$NS_A" "$@" ;;
    b | "$NS_B") exec ip netns exec "$NS_B" "$@" ;;
    *) die "exec: side must be a or b" ;;
  esac
}

do_stats() {
  local pid i
  if ! pid=$(linkem_pid); then
    [[ -f $LINKEM_DIR/stats.json ]] || die "linkem not running and no stats file"
    cat "$LINKEM_DIR/stats.json"
    return
  fi
  # linkem replaces the file atomically (rename); remove it and wait for the snapshot
  rm -f "$LINKEM_DIR/stats.json"
  kill -USR1 "$pid"
  for ((i = 0; i < 50; i++)); do [[ -s $LINKEM_DIR/stats.json ]] && break; sleep 0.02; done
  [[ -s $LINKEM_DIR/stats.json ]] || die "no stats snapshot from linkem $pid within 1 s"
  cat "$LINKEM_DIR/stats.json"
}

do_congctl() {
  [[ $# -eq 1 ]] || die "usage: congctl ALGO|default"
  local algo=$1
  ns_exists "$NS_A" && ns_exists "$NS_B" || die "link is not up"
  if [[ $algo != default ]]; then
    grep -qw "$algo" /proc/sys/net/ipv4/tcp_available_congestion_control \
      || modprobe "tcp_$algo" 2>/dev/null || true
    grep -qw "$algo" /proc/sys/net/ipv4/tcp_available_congestion_control \
      || die "congestion control '$algo' not available: $(cat /proc/sys/net/ipv4/tcp_available_congestion_control)"
  fi
  local ns dev peer src
  for ns in a b; do
    if [[ $ns == a ]]; then dev=$DEV_A src=$IP_A peer=$IP_B; else dev=$DEV_B src=$IP_B peer=$IP_A; fi
    ip -n "rgtp-$ns" route del "$peer/32" 2>/dev/null || true
    if [[ $algo != default ]]; then
      ip -n "rgtp-$ns" route add "$peer/32" dev "$dev" src "$src" congctl "$algo"
    fi
  done
  ip netns exec "$NS_A" ip tcp_metrics flush all 2>/dev/null || true
  ip netns exec "$NS_B" ip tcp_metrics flush all 2>/dev/null || true
}

do_status() {
  local pid
  if pid=$(linkem_pid); then echo "linkem: pid $pid args: $(tr '\n' ' ' <"$LINKEM_DIR/linkem.args")"; else echo "linkem: not running"; fi
  for ns in "$NS_A" "$NS_B"; do
    if ns_exists "$ns"; then
      echo "$ns:"; ip -n "$ns" -br addr; ip -n "$ns" route
    else
      echo "$ns: absent"
    fi
  done
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    up) do_up "$@" ;;
    down) need_root; do_down ;;
    exec) do_exec "$@" ;;
    stats) do_stats ;;
    congctl) need_root; do_congctl "$@" ;;
    status) do_status ;;
    *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

# Serialize up/down/congctl (bounded wait), then run.
if [[ ${1:-} == up || ${1:-} == down || ${1:-} == congctl ]]; then
  mkdir -p "$LINKEM_DIR"
  exec 9>"$LINKEM_DIR/lock"
  flock -w 30 9 || die "another lossy-link.sh holds $LINKEM_DIR/lock for > 30 s"
fi
main "$@"

#!/usr/bin/env bash
# test.sh: runs every test of the project (this is the command the README shows and
# .ci/run executes).
#
#   1. installs what a fresh Debian machine lacks (b3sum, a C toolchain, Rust) — apt-get
#      update runs once, and only if something is missing
#   2. cargo fmt --check, cargo clippy -D warnings
#   3. builds the release binaries rgtp-expose / rgtp-pull
#   4. cargo test --workspace: unit and property tests, the deterministic network
#      simulation, and the end-to-end tests that drive the release binaries over
#      loopback UDP (tests/tests/cli_loopback.rs)
#   5. scripts/test-bindings.sh: the C library and its example, the Python package
#      (pip-installed into a venv, pytest), the Node and Go examples
#   6. scripts/test-linkem.sh (link-emulator self-test; needs root), when present
#
# Builds where CARGO_TARGET_DIR says (default ./target), and tests those binaries.
#
# Tests that need root (network namespaces, tmpfs mounts; CI runs as root) fail when
# not run as root. RGTP_SKIP_ROOT_TESTS=1 skips them instead; every skip prints a
# line "SKIPPED: TEST: WHY", and the summary at the end counts and lists them (a
# skipped test is never a silent pass).
#
# Exit status 0 = everything passed.
set -euo pipefail

# Cargo resolves a relative CARGO_TARGET_DIR against its working directory: make it
# absolute now, so every build below and every path derived from it agree.
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# Where cargo puts the binaries: $CARGO_TARGET_DIR when set, else ./target.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# Every skipped test appends its SKIPPED line here (tests/src/skip.rs), as does
# step 6; finish() counts them.
SKIP_LOG=$(mktemp "${TMPDIR:-/tmp}/rgtp-test-skips.XXXXXX")
export RGTP_SKIP_LOG=$SKIP_LOG

T0=$(date +%s)
STEP_T0=$T0
CURRENT=setup
SUMMARY=()

step() {
  local now
  now=$(date +%s)
  if [ "$CURRENT" != setup ]; then
    SUMMARY+=("$(printf '%-44s %4ss' "$CURRENT" $((now - STEP_T0)))")
  fi
  CURRENT=$1
  STEP_T0=$now
  printf '\n==== [%s] %s\n' "$(date +%H:%M:%S)" "$1"
}

finish() {
  local rc=$?
  local now
  now=$(date +%s)
  SUMMARY+=("$(printf '%-44s %4ss' "$CURRENT" $((now - STEP_T0)))")
  printf '\n==== summary\n'
  printf '  %s\n' "${SUMMARY[@]}"
  local skipped
  skipped=$(grep -c '^SKIPPED' "$SKIP_LOG" || true)
  printf '\nskipped: %s\n' "${skipped:-0}"
  if [ "${skipped:-0}" -gt 0 ]; then
    sed 's/^/  /' "$SKIP_LOG"
  fi
  rm -f "$SKIP_LOG"
  if [ "$rc" -eq 0 ]; then
    printf '\nALL TESTS PASSED in %ss (%s skipped)\n' $((now - T0)) "${skipped:-0}"
  else
    printf '\nFAILED (exit %s) during: %s, after %ss\n' "$rc" "$CURRENT" $((now - T0))
  fi
}
trap finish EXIT

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "need root (or sudo) to run: $*" >&2
    return 1
  fi
}

step "tools"
APT=()
command -v b3sum >/dev/null || APT+=(b3sum)
# Real programs the shim tests run (tests/tests/shim_programs.rs).
command -v curl >/dev/null || APT+=(curl)
command -v wget >/dev/null || APT+=(wget)
command -v nginx >/dev/null || APT+=(nginx)
command -v socat >/dev/null || APT+=(socat)
command -v python3 >/dev/null || APT+=(python3)
# netcat-openbsd specifically: -N and -q behave as the tests expect.
dpkg -s netcat-openbsd >/dev/null 2>&1 || APT+=(netcat-openbsd)
# ip and tc: the roaming tests' network namespaces (tests/tests/roaming.rs).
{ command -v ip >/dev/null && command -v tc >/dev/null; } || APT+=(iproute2)
command -v cc >/dev/null || APT+=(build-essential)
# ping and iperf3: the link emulator's self-test (step 6, as root).
if [ "$(id -u)" -eq 0 ] && [ -f scripts/test-linkem.sh ]; then
  command -v ping >/dev/null || APT+=(iputils-ping)
  command -v iperf3 >/dev/null || APT+=(iperf3)
fi
if ! command -v cargo >/dev/null && ! [ -x "$HOME/.cargo/bin/cargo" ]; then
  command -v curl >/dev/null || APT+=(curl ca-certificates)
fi
if [ "${#APT[@]}" -gt 0 ]; then
  echo "installing: ${APT[*]}"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT[@]}"
fi
if ! command -v cargo >/dev/null; then
  if ! [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "installing Rust (stable) with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
      sh -s -- -y --profile minimal --default-toolchain stable -c clippy -c rustfmt
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v rustup >/dev/null; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi
echo "$(cargo --version); $(b3sum --version); $(nproc) cores"

step "cargo fmt --check"
cargo fmt --all -- --check
# The Python package's crate is its own workspace (core/python).
cargo fmt --manifest-path core/python/Cargo.toml -- --check
# The fuzz crate is its own workspace (scripts/fuzz.sh runs it; not part of CI).
rustfmt --check --edition 2021 core/fuzz/fuzz_targets/*.rs

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "build release binaries, librgtp_shim.so and librgtp.so"
# No --bins here: it would apply to rgtp-shim too and skip its cdylib.
cargo build --release -p rgtp-cli -p rgtp-shim -p rgtp-capi

step "cargo test --workspace (unit, simulation, loopback end-to-end)"
RGTP_BIN_DIR="$TARGET/release" cargo test --workspace

step "scripts/test-bindings.sh (C, Python, Node, Go)"
bash scripts/test-bindings.sh

if [ -f scripts/test-linkem.sh ]; then
  step "scripts/test-linkem.sh (link emulator self-test)"
  if [ "$(id -u)" -eq 0 ]; then
    bash scripts/test-linkem.sh
  else
    echo "SKIPPED: scripts/test-linkem.sh: needs root (CI runs as root)" | tee -a "$SKIP_LOG"
  fi
fi

step "done"

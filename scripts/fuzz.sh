#!/usr/bin/env bash
# fuzz.sh [SECONDS] [TARGET...]: runs the cargo-fuzz targets in core/fuzz/fuzz_targets/
# for SECONDS each (default 60), all of them unless TARGETs are named:
#   packet_parser  every file-pull decoder (MISSING, repair items too), the exposer, a
#                  sharer and the puller (repair forced or not) fed hostile datagrams
#   conn_packets   the connection packet codec (packets, transport parameters, frames)
#   conn_endpoint  a connection endpoint fed arbitrary datagrams / a mutated real exchange
#   manifest       the pull manifest (WELCOME payload)
#   sidecar        the resume state file parser
#   url            rgtp:// URLs, host:port, percent-decoding
# Not part of CI, which runs the same harnesses (rgtp::fuzzing) under proptest on the
# stable toolchain (core/tests/fuzz_props.rs). The committed seeds are in
# core/fuzz/seeds/TARGET/; the working corpus grows in core/fuzz/corpus/TARGET/ (not
# committed). Crashes land in core/fuzz/artifacts/TARGET/; reproduce one with:
#   cd core && cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# Each run ends with a line "TARGET: N executions, no crash" (or the crash).
#
# cargo-fuzz needs a nightly compiler (-Zsanitizer). With a rustup nightly toolchain it
# is used; otherwise the stable compiler is unlocked with RUSTC_BOOTSTRAP=1.
set -euo pipefail

SECONDS_TO_RUN=${1:-60}
shift || true
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/core"

ALL=(packet_parser conn_packets conn_endpoint manifest sidecar url)
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=("${ALL[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ=(cargo +nightly fuzz)
else
  echo "== no nightly toolchain: using RUSTC_BOOTSTRAP=1 with $(rustc --version)"
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
fi

for t in "${TARGETS[@]}"; do
  CORPUS=fuzz/corpus/$t
  mkdir -p "$CORPUS"
  cp -n fuzz/seeds/"$t"/* "$CORPUS"/ 2>/dev/null || true
  LOG=$(mktemp)
  echo "== fuzzing $t for ${SECONDS_TO_RUN}s"
  if "${FUZZ[@]}" run "$t" "$CORPUS" -- \
    -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=10 2>&1 | tee "$LOG" | grep -E '^(#[0-9]+ +(DONE|pulse))|ERROR|panicked|SUMMARY'; then
    :
  fi
  if grep -qE 'ERROR: libFuzzer|panicked|SUMMARY: ' "$LOG"; then
    echo "$t: CRASH (see core/fuzz/artifacts/$t/ and $LOG)"
    exit 1
  fi
  RUNS=$(grep -oE 'Done [0-9]+ runs' "$LOG" | grep -oE '[0-9]+' | tail -1)
  echo "$t: ${RUNS:-?} executions, no crash"
  rm -f "$LOG"
done

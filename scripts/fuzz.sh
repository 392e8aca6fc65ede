#!/usr/bin/env bash
# fuzz.sh [SECONDS]: runs the cargo-fuzz target core/fuzz/fuzz_targets/packet_parser.rs
# (every wire decoder, the exposer and the puller fed hostile datagrams) for SECONDS
# (default 60). Not part of CI. Crashes land in core/fuzz/artifacts/packet_parser/;
# reproduce one with:
#   cd core && cargo +nightly fuzz run packet_parser fuzz/artifacts/packet_parser/crash-...
#
# cargo-fuzz needs a nightly compiler (-Zsanitizer). With a rustup nightly toolchain it
# is used; otherwise the stable compiler is unlocked with RUSTC_BOOTSTRAP=1.
set -euo pipefail

SECONDS_TO_RUN=${1:-60}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/core"

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

# Seeds: mode byte 1 = an unmutated exchange (puller and exposer complete a transfer);
# 1,1 = the same with the exposer demanding a RETRY token; 0 = raw mode.
CORPUS=fuzz/corpus/packet_parser
mkdir -p "$CORPUS"
if [ -z "$(ls -A "$CORPUS")" ]; then
  printf '\x01' >"$CORPUS/seed-exchange"
  printf '\x01\x01' >"$CORPUS/seed-exchange-retry"
  printf '\x00\x01\x02' >"$CORPUS/seed-raw"
fi

echo "== fuzzing packet_parser for ${SECONDS_TO_RUN}s"
"${FUZZ[@]}" run packet_parser "$CORPUS" -- \
  -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=10

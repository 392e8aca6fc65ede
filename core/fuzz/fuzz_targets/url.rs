//! Fuzz target: the rgtp:// URL parser, host:port and percent-decoding.
//! The harness is `rgtp::fuzzing::url`, also driven by proptest in CI
//! (core/tests/fuzz_props.rs). Run: `scripts/fuzz.sh [SECONDS] [TARGET...]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rgtp::fuzzing::url(data));

//! Fuzz target: the resume sidecar parser (OUT.rgtp-state).
//! The harness is `rgtp::fuzzing::sidecar`, also driven by proptest in CI
//! (core/tests/fuzz_props.rs). Run: `scripts/fuzz.sh [SECONDS] [TARGET...]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rgtp::fuzzing::sidecar(data));

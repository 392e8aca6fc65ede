//! Fuzz target: the connection packet codec (packets, transport parameters, frames):
//! nothing panics, and whatever decodes re-encodes to the same bytes.
//! The harness is `rgtp::fuzzing::conn_wire`, also driven by proptest in CI
//! (core/tests/fuzz_props.rs). Run: `scripts/fuzz.sh [SECONDS] [TARGET...]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rgtp::fuzzing::conn_wire(data));

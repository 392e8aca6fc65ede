//! Fuzz target: every RGTP file-pull datagram decoder, and the exposer and puller
//! state machines, fed hostile bytes (raw datagrams, or a real exchange mutated in
//! flight). The harness is `rgtp::fuzzing::packet_parser`, also driven by proptest in
//! CI (core/tests/fuzz_props.rs). Run: `scripts/fuzz.sh [SECONDS] [TARGET...]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rgtp::fuzzing::packet_parser(data));

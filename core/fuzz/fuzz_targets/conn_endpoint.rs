//! Fuzz target: a connection endpoint (server and client) fed arbitrary datagrams,
//! or a real exchange whose datagrams are mutated in flight; the server must never
//! read bytes the client did not write.
//! The harness is `rgtp::fuzzing::conn_endpoint`, also driven by proptest in CI
//! (core/tests/fuzz_props.rs). Run: `scripts/fuzz.sh [SECONDS] [TARGET...]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rgtp::fuzzing::conn_endpoint(data));

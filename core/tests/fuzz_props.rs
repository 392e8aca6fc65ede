//! The cargo-fuzz targets (core/fuzz/fuzz_targets/) driven by proptest, so CI, on the
//! stable toolchain, runs the same harnesses (`rgtp::fuzzing`) on bounded random
//! inputs: arbitrary bytes, and the committed seeds (core/fuzz/seeds/) with random
//! bytes appended or flipped. The long coverage-guided runs are `scripts/fuzz.sh`.

use std::fs;
use std::path::PathBuf;

use proptest::prelude::*;
use rgtp::fuzzing;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| fs::read(e.ok()?.path()).ok())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// A seed of `target`, then changed: some bytes flipped, some appended.
fn seeded(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let s = seeds(target);
    (
        0..s.len(),
        prop::collection::vec((any::<u16>(), any::<u8>()), 0..6),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(move |(i, flips, tail)| {
            let mut d = s[i].clone();
            for (at, v) in flips {
                if !d.is_empty() {
                    let n = d.len();
                    d[at as usize % n] ^= v;
                }
            }
            d.extend(tail);
            d
        })
}

#[test]
fn seeds_run_clean() {
    for s in seeds("conn_packets") {
        fuzzing::conn_wire(&s);
    }
    for s in seeds("conn_endpoint") {
        fuzzing::conn_endpoint(&s);
    }
    for s in seeds("manifest") {
        fuzzing::manifest(&s);
    }
    for s in seeds("sidecar") {
        fuzzing::sidecar(&s);
    }
    for s in seeds("url") {
        fuzzing::url(&s);
    }
    // The pull target's first seed (an unmutated exchange) used to fail its own
    // datagram-size assertion, which predated loopback-sized datagrams.
    for s in seeds("packet_parser") {
        fuzzing::packet_parser(&s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn conn_packets_arbitrary(d in prop::collection::vec(any::<u8>(), 0..1400)) {
        fuzzing::conn_wire(&d);
    }

    #[test]
    fn conn_packets_seeded(d in seeded("conn_packets")) {
        fuzzing::conn_wire(&d);
    }

    #[test]
    fn manifest_arbitrary(d in prop::collection::vec(any::<u8>(), 0..200)) {
        fuzzing::manifest(&d);
    }

    #[test]
    fn manifest_seeded(d in seeded("manifest")) {
        fuzzing::manifest(&d);
    }

    #[test]
    fn sidecar_arbitrary(d in prop::collection::vec(any::<u8>(), 0..200)) {
        fuzzing::sidecar(&d);
    }

    #[test]
    fn sidecar_seeded(d in seeded("sidecar")) {
        fuzzing::sidecar(&d);
    }

    #[test]
    fn url_arbitrary(s in "rgtp://[a-zA-Z0-9.:\\[\\]%@?#/=&_~-]{0,80}") {
        fuzzing::url(s.as_bytes());
    }

    #[test]
    fn url_bytes(d in prop::collection::vec(any::<u8>(), 0..120)) {
        fuzzing::url(&d);
    }

    #[test]
    fn url_seeded(d in seeded("url")) {
        fuzzing::url(&d);
    }
}

proptest! {
    // An endpoint case runs a whole handshake (Diffie-Hellman on both sides): fewer.
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn conn_endpoint_raw(d in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut v = vec![0u8];
        v.extend(d);
        fuzzing::conn_endpoint(&v);
    }

    #[test]
    fn conn_endpoint_mutated_exchange(
        retry in any::<bool>(),
        muts in prop::collection::vec(
            (0u16..24, any::<u16>(), any::<u8>(), any::<u8>()), 0..8),
    ) {
        let mut v = vec![if retry { 3 } else { 1 }];
        for (i, off, val, op) in muts {
            v.extend(i.to_le_bytes());
            v.extend(off.to_le_bytes());
            v.extend([val, op]);
        }
        fuzzing::conn_endpoint(&v);
    }

    #[test]
    fn conn_endpoint_seeded(d in seeded("conn_endpoint")) {
        fuzzing::conn_endpoint(&d);
    }

    #[test]
    fn packet_parser_raw(d in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut v = vec![0u8];
        v.extend(d);
        fuzzing::packet_parser(&v);
    }

    /// A real exchange under every set-up (RETRY, forced repair fragments, a sharer
    /// answering MISSING, a multicast group) with random mutations in flight.
    #[test]
    fn packet_parser_exchange(setup in 0u8..16, muts in prop::collection::vec(any::<u8>(), 0..60)) {
        let mut v = vec![1u8, setup];
        v.extend(muts);
        fuzzing::packet_parser(&v);
    }

    #[test]
    fn packet_parser_seeded(d in seeded("packet_parser")) {
        fuzzing::packet_parser(&d);
    }
}

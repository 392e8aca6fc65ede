//! The file-pull harness (cargo-fuzz target `packet_parser`): every RGTP datagram
//! decoder, and the exposer and puller state machines, fed hostile bytes.
//!
//! Input layout: byte 0 selects the mode.
//! - even: **raw** — the rest is split into datagrams (`u16` little-endian length
//!   prefixes); each goes to every decoder in `rgtp::wire`, to an `Exposer` and to a
//!   `Puller` that has sent its HELLO.
//! - odd: **exchange** — a real exposer and puller talk over a virtual network; the rest
//!   is a list of 6-byte mutations `(datagram index u16, offset u16, value u8, op u8)`
//!   applied to the datagrams in flight (flip a byte, truncate, drop, duplicate, append
//!   garbage, swap the type byte). The transfer may fail, but every chunk the puller
//!   accepts must be the exposed bytes. Byte 1's bits choose the set-up: bit 0 the
//!   exposer demands a RETRY, bit 1 the puller asks for repair fragments whatever the
//!   loss (`--fec 4:2`), bit 2 the exposer is a sharer holding chunks 0 and 2 only (so
//!   it answers MISSING for the others), bit 3 the exposer has a multicast group that
//!   the puller joins (its group datagrams go, mutated too, to the puller's group
//!   input).

use super::{mutate, parse_mutations, split_datagrams};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::exposer::{Exposer, ExposerConfig};
use crate::fec::FecMode;
use crate::merkle::{self, CHUNK_SIZE};
use crate::puller::{PullConfig, PullEvent, Puller};
use crate::rng::Rng;
use crate::source::{shared_have, MemSource, PartialSource};
use crate::wire;

const EXPOSER_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 4433);
const PULLER_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 50000);
const PRIVATE_KEY: [u8; 32] = [7; 32];
/// The exposer's multicast group in the multicast set-up.
const GROUP: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(Ipv4Addr::new(239, 255, 42, 1), 5000);
/// Three full chunks and a partial one.
const CONTENT_LEN: usize = 3 * CHUNK_SIZE + 1234;

fn content() -> Arc<Vec<u8>> {
    Arc::new((0..CONTENT_LEN).map(|i| (i * 31 % 251) as u8).collect())
}

fn exposer(now: Instant, retry_threshold: u32) -> Exposer {
    exposer_of(now, retry_threshold, false, false)
}

/// An exposer of [`content`]; `partial`: a sharer's relayed exposure holding chunks 0
/// and 2 only; `group`: with the multicast group [`GROUP`].
fn exposer_of(now: Instant, retry_threshold: u32, partial: bool, group: bool) -> Exposer {
    let cfg = ExposerConfig {
        retry_threshold,
        multicast: group.then_some(GROUP),
        ..ExposerConfig::default()
    };
    // Ids, keys and nonces from fixed seeds (here and in the pullers), so that an input
    // replays exactly as the fuzzer ran it.
    let mut ex = Exposer::with_rng(cfg, PRIVATE_KEY, now, Rng::seeded_for_simulation(1));
    let data = content();
    let cvs = merkle::cvs_of_bytes(&data);
    if partial {
        let have = shared_have(cvs.len() as u64);
        have.lock().insert(0);
        have.lock().insert(2);
        let source = PartialSource {
            inner: MemSource(data),
            have,
        };
        ex.add_relayed_exposure("f", Box::new(source), cvs, [9; 16], [5; 32]);
    } else {
        ex.add_exposure("f", Box::new(MemSource(data)), cvs);
    }
    ex
}

fn decode_everything(d: &[u8]) {
    let _ = wire::peek_type(d);
    let _ = wire::Hello::decode(d);
    let _ = wire::Welcome::decode(d);
    let _ = wire::Retry::decode(d);
    let _ = wire::Stale::decode(d);
    let _ = wire::Request::decode(d);
    let _ = wire::Data::decode(d);
    let _ = wire::Manifest::decode(d);
    let _ = wire::decode_items(d);
    let _ = wire::Missing::decode(d);
    // Round trips: whatever decodes must re-encode to the same bytes.
    if let Ok(m) = wire::Manifest::decode(d) {
        assert_eq!(m.encode(), d, "Manifest re-encodes differently");
    }
    if let Ok(items) = wire::decode_items(d) {
        assert_eq!(wire::encode_items(&items), d, "items re-encode differently");
    }
    if let Ok(r) = wire::Retry::decode(d) {
        assert_eq!(r.encode(), d, "Retry re-encodes differently");
    }
    if let Ok(s) = wire::Stale::decode(d) {
        assert_eq!(s.encode(), d, "Stale re-encodes differently");
    }
    if let Ok(w) = wire::Welcome::decode(d) {
        assert_eq!(w.encode(), d, "Welcome re-encodes differently");
    }
    if let Ok(m) = wire::Missing::decode(d) {
        assert_eq!(m.encode(), d, "Missing re-encodes differently");
    }
}

fn drain_puller(p: &mut Puller, now: Instant) {
    while p.poll_transmit(now).is_some() {}
    while let Some(ev) = p.poll_event() {
        check_event(&ev);
    }
}

fn check_event(ev: &PullEvent) {
    if let PullEvent::Chunk { index, data } = ev {
        let c = content();
        let start = (*index as usize) * CHUNK_SIZE;
        assert!(start < c.len(), "chunk {index} beyond the content");
        let end = (start + CHUNK_SIZE).min(c.len());
        assert!(
            data.as_slice() == &c[start..end],
            "puller accepted wrong bytes for chunk {index}"
        );
    }
}

fn raw(data: &[u8]) {
    let now = Instant::now();
    decode_everything(data);
    let mut ex = exposer(now, 1000);
    let mut p = Puller::with_rng(
        PullConfig::new(EXPOSER_ADDR, "f"),
        now,
        Rng::seeded_for_simulation(2),
    );
    drain_puller(&mut p, now);
    ex.handle(now, PULLER_ADDR, data);
    p.handle(now, EXPOSER_ADDR, data);
    for (i, d) in split_datagrams(data).into_iter().enumerate() {
        let t = now + Duration::from_millis(i as u64);
        decode_everything(d);
        ex.handle(t, PULLER_ADDR, d);
        p.handle(t, EXPOSER_ADDR, d);
        // A datagram from a stranger must be ignored by the puller.
        p.handle(t, PULLER_ADDR, d);
        drain_puller(&mut p, t);
        while ex.poll_transmit().is_some() {}
    }
    let _ = p.poll_timeout();
    p.handle_timeout(now + Duration::from_secs(1));
    drain_puller(&mut p, now + Duration::from_secs(1));
}

fn exchange(data: &[u8]) {
    let start = Instant::now();
    let setup = data.first().copied().unwrap_or(0);
    let retry_threshold = if setup & 1 == 1 { 0 } else { 1000 };
    let muts = parse_mutations(data.get(1..).unwrap_or(&[]), 256);
    let group = setup & 8 == 8;
    let mut ex = exposer_of(start, retry_threshold, setup & 4 == 4, group);
    let mut cfg = PullConfig::new(EXPOSER_ADDR, "f");
    cfg.idle_timeout = Duration::from_secs(5);
    if group {
        // The group is offered to sessions of its datagram size (a LAN's, not
        // loopback's).
        cfg.multicast = true;
        cfg.loopback_max_datagram = cfg.max_datagram;
    }
    if setup & 2 == 2 {
        cfg.fec = FecMode::Fixed { k: 4, r: 2 };
    }
    let mut p = Puller::with_rng(cfg, start, Rng::seeded_for_simulation(2));
    let mut counter: u16 = 0;
    let mut now = start;
    let mut done = false;
    for _step in 0..3000 {
        while let Some(t) = p.poll_transmit(now) {
            for d in t.datagrams() {
                for d in mutate(counter, &d, &muts, 0) {
                    ex.handle(now, PULLER_ADDR, &d);
                }
                counter = counter.wrapping_add(1);
            }
        }
        while let Some(t) = ex.poll_transmit() {
            let to_group = group && t.dest == std::net::SocketAddr::V4(GROUP);
            assert!(
                t.dest == PULLER_ADDR || to_group,
                "exposer answers only the sender (or its group)"
            );
            for d in t.datagrams() {
                // Loopback peers get loopback-sized datagrams (PROTOCOL.md); the
                // assertion predated that and failed on the first seed.
                let limit = if wire::is_loopback(PULLER_ADDR.ip()) {
                    wire::LOOPBACK_MAX_DATAGRAM
                } else {
                    wire::DEFAULT_MAX_DATAGRAM
                };
                assert!(d.len() <= limit, "oversized datagram");
                for d in mutate(counter, &d, &muts, 0) {
                    if to_group {
                        p.handle_group(now, &d);
                    } else {
                        p.handle(now, EXPOSER_ADDR, &d);
                    }
                }
                counter = counter.wrapping_add(1);
            }
        }
        let mut finished = false;
        while let Some(ev) = p.poll_event() {
            check_event(&ev);
            if matches!(ev, PullEvent::Done | PullEvent::Failed(_)) {
                finished = true;
                done = matches!(ev, PullEvent::Done);
            }
        }
        if finished || p.is_finished() {
            check_clean_exchange(setup, muts.is_empty(), &ex, &p, done);
            return;
        }
        match p.poll_timeout() {
            Some(t) if t <= now => p.handle_timeout(now),
            Some(t) => now = t.min(now + Duration::from_millis(50)),
            None => now += Duration::from_millis(50),
        }
        if p.poll_timeout().is_some_and(|t| t <= now) {
            p.handle_timeout(now);
        }
    }
    check_clean_exchange(setup, muts.is_empty(), &ex, &p, done);
}

/// An unmutated exchange must do what its set-up says, so that the set-ups really
/// reach the paths they are for: a full exposer completes (with repair fragments sent
/// when forced), a sharer missing chunks answers MISSING, a group carries the data.
fn check_clean_exchange(setup: u8, clean: bool, ex: &Exposer, p: &Puller, done: bool) {
    if !clean {
        return;
    }
    let st = &ex.stats;
    if setup & 8 == 8 && setup & 4 == 0 {
        assert!(st.group_requests > 0, "the group was never asked for data");
        assert!(
            p.stats.group_datagrams > 0,
            "nothing came through the group"
        );
    }
    if setup & 4 == 4 {
        assert!(st.missing_sent > 0, "the sharer never answered MISSING");
    } else {
        assert!(done, "a clean exchange did not complete");
        if setup & 2 == 2 {
            assert!(st.repair_fragments_out > 0, "forced repair sent no repair");
        }
    }
}

/// Every file-pull decoder, and the exposer and puller state machines, fed hostile
/// bytes (the `packet_parser` target). Byte 0 odd: a real exchange with its datagrams
/// mutated in flight (byte 1 chooses RETRY, forced repair, a sharer: see the module
/// comment); even: raw datagrams.
/// Nothing may panic, and the puller must never deliver bytes that differ from the
/// exposed content.
pub fn packet_parser(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => exchange(rest),
        Some((_, rest)) => raw(rest),
        None => raw(data),
    }
}

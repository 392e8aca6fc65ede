//! Fuzz harnesses shared by the cargo-fuzz targets (`core/fuzz/fuzz_targets/`, run by
//! `scripts/fuzz.sh` with a nightly compiler) and by the proptest tests that run them
//! on the stable toolchain in CI (`core/tests/fuzz_props.rs`). Each takes arbitrary
//! bytes, must never panic, and asserts what must hold whatever the bytes:
//! round trips of whatever decodes, and that no hostile input makes a connection
//! deliver bytes nobody wrote.
//!
//! Not part of the API (hidden from docs); everything here is deterministic in its
//! input apart from the random keys the protocol itself draws.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::conn::wire::{self as cw, Packet, TransportParams};
use crate::conn::{ConnState, Endpoint, EndpointConfig};
use crate::keys::StaticKey;
use crate::rng::Rng;
use crate::sidecar::Sidecar;
use crate::url::{self, RgtpUrl};
use crate::wire;

mod pull;
pub use pull::packet_parser;

/// Splits fuzz input into datagrams (`u16` little-endian length prefixes), at most 64.
pub fn split_datagrams(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while rest.len() >= 2 && out.len() < 64 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        out.push(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    if !rest.is_empty() && out.len() < 64 {
        out.push(rest);
    }
    out
}

// ------------------------------------------------------------------ conn wire codec

/// Every connection-packet decoder: whatever decodes re-encodes to the same bytes
/// (INIT up to its zero padding, which encode adds only up to 1200 bytes).
pub fn conn_wire(d: &[u8]) {
    let _ = cw::is_conn_packet(d);
    if let Ok(p) = cw::decode(d) {
        let e = p.encode();
        match p {
            Packet::Init { .. } => {
                let n = e.len().min(d.len());
                assert_eq!(&e[..n], &d[..n], "INIT re-encodes differently");
                assert!(d[n..].iter().all(|&b| b == 0), "INIT padding not zero");
                assert!(d.len() >= cw::MIN_INIT_LEN, "short INIT decoded");
            }
            _ => assert_eq!(e, d, "{p:?} re-encodes differently"),
        }
    }
    if let Ok(tp) = TransportParams::decode(d) {
        assert_eq!(tp.encode(), d, "transport parameters re-encode differently");
    }
    if let Ok(frames) = cw::decode_frames(d) {
        let mut w = wire::Writer::default();
        for f in &frames {
            f.encode(&mut w);
        }
        assert_eq!(w.buf, d, "frames re-encode differently");
    }
}

// ------------------------------------------------------------------ conn endpoint

const SERVER: &str = "127.0.0.1:4433";
const CLIENT: &str = "127.0.0.2:50000";
/// What the client writes in exchange mode; the server may read only a prefix of it.
const MESSAGE: &[u8] = b"hostile networks cannot forge what a connection delivers";

fn sa(s: &str) -> SocketAddr {
    // Constants above; parsing them cannot fail.
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 1)))
}

/// A connection endpoint fed arbitrary datagrams. Byte 0 picks the mode:
/// - even: **raw** — the rest is split into datagrams ([`split_datagrams`]), each fed to
///   a listening server and to a client that is connecting to it, from the peer's
///   address and from a stranger's;
/// - odd: **exchange** — a real client and server talk over a virtual network, the
///   rest being 6-byte mutations `(datagram index u16, offset u16, value u8, op u8)`
///   of the datagrams in flight (flip, truncate, drop, duplicate, append, retype).
///   Whatever the server reads must be a prefix of what the client wrote.
pub fn conn_endpoint(data: &[u8]) {
    match data.first() {
        Some(b) if b & 1 == 1 => conn_exchange(b & 2 == 2, &data[1..]),
        Some(_) => conn_raw(&data[1..]),
        None => {}
    }
}

/// A server and a client whose keys, ids and nonces come from a fixed seed, so that an
/// input replays exactly as the fuzzer ran it.
fn endpoints(now: Instant, retry: bool) -> (Endpoint, Endpoint) {
    let mut rng = Rng::seeded_for_simulation(0);
    let mut sc = EndpointConfig::new(StaticKey::from_private(rng.bytes()));
    if retry {
        sc.retry_threshold = 0;
    }
    sc.max_half_open = 8;
    sc.max_half_open_per_source = 4;
    let mut server = Endpoint::with_rng(sc, now, rng.fork());
    server.set_listening(true);
    let cc = EndpointConfig::new(StaticKey::from_private(rng.bytes()));
    let client = Endpoint::with_rng(cc, now, rng.fork());
    (server, client)
}

fn drain(ep: &mut Endpoint, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit(now) {
        for d in t.datagrams() {
            out.push((t.dest, d.to_vec()));
        }
        if out.len() > 4096 {
            break;
        }
    }
    while ep.poll_event().is_some() {}
    out
}

fn conn_raw(rest: &[u8]) {
    let now = Instant::now();
    let (mut server, mut client) = endpoints(now, false);
    let _ = client.connect(now, sa(SERVER));
    drain(&mut client, now);
    let stranger = sa("192.0.2.9:9");
    for (i, d) in split_datagrams(rest).into_iter().enumerate() {
        let t = now + Duration::from_millis(i as u64);
        conn_wire(d);
        server.handle(t, sa(CLIENT), d);
        server.handle(t, stranger, d);
        client.handle(t, sa(SERVER), d);
        client.handle(t, stranger, d);
        drain(&mut server, t);
        drain(&mut client, t);
    }
    let later = now + Duration::from_secs(11);
    server.handle_timeout(later);
    client.handle_timeout(later);
    drain(&mut server, later);
    drain(&mut client, later);
}

/// One change to the datagrams of a fuzzed exchange: which datagram, where, what.
struct Mutation {
    index: u16,
    offset: u16,
    value: u8,
    op: u8,
}

/// Reads up to 64 mutations (6 bytes each) from the fuzzer's input; datagram indices
/// wrap at `datagrams`.
fn parse_mutations(rest: &[u8], datagrams: u16) -> Vec<Mutation> {
    rest.chunks_exact(6)
        .take(64)
        .map(|c| Mutation {
            index: u16::from_le_bytes([c[0], c[1]]) % datagrams,
            offset: u16::from_le_bytes([c[2], c[3]]),
            value: c[4],
            op: c[5],
        })
        .collect()
}

/// Applies the mutations for datagram `index`; returns the datagrams to deliver (none,
/// it, a damaged copy, duplicates). A type rewrite picks among the 8 types from
/// `first_type`, so it lands on packets the receiver parses.
fn mutate(index: u16, d: &[u8], muts: &[Mutation], first_type: u8) -> Vec<Vec<u8>> {
    let mut out = vec![d.to_vec()];
    for m in muts.iter().filter(|m| m.index == index) {
        let Some(cur) = out.last_mut() else { break };
        let at = m.offset as usize % cur.len().max(1);
        match m.op % 6 {
            0 => {
                if let Some(b) = cur.get_mut(at) {
                    *b ^= m.value | 1;
                }
            }
            1 => cur.truncate(at),
            2 => out.clear(),
            3 => {
                let dup = cur.clone();
                out.push(dup);
            }
            4 => cur.extend(std::iter::repeat_n(m.value, 1 + m.offset as usize % 64)),
            _ => {
                if cur.len() > 1 {
                    cur[1] = first_type + m.value % 8;
                }
            }
        }
    }
    out
}

fn conn_exchange(retry: bool, rest: &[u8]) {
    let muts = parse_mutations(rest, 128);
    let start = Instant::now();
    let (mut server, mut client) = endpoints(start, retry);
    let Ok(cid) = client.connect(start, sa(SERVER)) else {
        return;
    };
    let mut written = 0usize;
    let mut read = Vec::new();
    let mut accepted = None;
    let mut counter: u16 = 0;
    let mut now = start;
    for _ in 0..400 {
        if written < MESSAGE.len() {
            if let Ok(n) = client.write(cid, &MESSAGE[written..]) {
                written += n;
                if written == MESSAGE.len() {
                    let _ = client.shutdown_write(now, cid);
                }
            }
        }
        let mut moved = false;
        for (to, d) in drain(&mut client, now) {
            if to != sa(SERVER) {
                continue;
            }
            for m in mutate(counter, &d, &muts, cw::FIRST_TYPE) {
                server.handle(now, sa(CLIENT), &m);
            }
            counter = counter.wrapping_add(1);
            moved = true;
        }
        for (to, d) in drain(&mut server, now) {
            if to != sa(CLIENT) {
                continue;
            }
            for m in mutate(counter, &d, &muts, cw::FIRST_TYPE) {
                client.handle(now, sa(SERVER), &m);
            }
            counter = counter.wrapping_add(1);
            moved = true;
        }
        if accepted.is_none() {
            accepted = server.accept();
        }
        if let Some(sid) = accepted {
            let mut buf = [0u8; 256];
            while let Ok(n) = server.read(sid, &mut buf) {
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&buf[..n]);
            }
        }
        assert!(
            MESSAGE.starts_with(&read),
            "the server read bytes the client never wrote: {read:?}"
        );
        if read.len() == MESSAGE.len() {
            break;
        }
        if !moved {
            let next = [server.poll_timeout(), client.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t.saturating_duration_since(start) < Duration::from_secs(30) => {
                    now = now.max(t);
                }
                _ => break,
            }
            server.handle_timeout(now);
            client.handle_timeout(now);
        }
    }
    // Unmutated, the exchange must succeed.
    if muts.is_empty() {
        assert_eq!(
            read, MESSAGE,
            "a clean exchange did not deliver the message"
        );
        let connected = client
            .state(cid)
            .is_some_and(|s| s != ConnState::Connecting);
        assert!(connected, "a clean exchange did not connect");
    }
}

// ------------------------------------------------------------------ manifest

/// The pull manifest (the authenticated WELCOME payload): whatever decodes re-encodes
/// to the same bytes, and a decoded one is self-consistent.
pub fn manifest(d: &[u8]) {
    if let Ok(m) = wire::Manifest::decode(d) {
        assert_eq!(m.encode(), d, "manifest re-encodes differently");
        if let wire::Manifest::Found(b) = &m {
            assert_eq!(b.chunk_count, crate::merkle::chunk_count(b.size));
            assert_eq!(b.chunk_size as usize, crate::merkle::CHUNK_SIZE);
        }
    }
}

// ------------------------------------------------------------------ sidecar

/// The resume sidecar parser. Byte 0 odd: the rest gets a correct checksum appended
/// first, so the fuzzer reaches the field checks behind it. Whatever parses
/// serializes back to the same bytes.
pub fn sidecar(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let owned;
    let d = if mode & 1 == 1 {
        let mut v = rest.to_vec();
        let sum = blake3::hash(rest);
        v.extend_from_slice(sum.as_bytes());
        owned = v;
        &owned[..]
    } else {
        rest
    };
    if let Ok(s) = Sidecar::from_bytes(d) {
        let again = s.to_bytes().map_err(|e| e.to_string());
        assert_eq!(again.as_deref(), Ok(d), "sidecar re-serializes differently");
    }
}

// ------------------------------------------------------------------ URL

/// The pull URL parser and its pieces: a parsed URL prints in canonical form, and the
/// canonical form parses back to the same URL and prints identically.
pub fn url(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(u) = RgtpUrl::from_str(&s) {
        let printed = u.to_string();
        let again = RgtpUrl::from_str(&printed)
            .unwrap_or_else(|e| panic!("canonical URL {printed:?} does not parse: {e:?}"));
        assert_eq!(again, u, "canonical URL parses to another URL");
        assert_eq!(again.to_string(), printed, "canonical form is not stable");
    }
    if let Ok((host, port)) = url::parse_host_port(&s, url::DEFAULT_PORT) {
        let hp = url::format_host_port(&host, port);
        assert_eq!(
            url::parse_host_port(&hp, url::DEFAULT_PORT),
            Ok((host, port)),
            "host:port does not round-trip"
        );
    }
    if let Ok(name) = url::percent_decode(&s) {
        assert_eq!(
            url::percent_decode(&url::percent_encode(&name)).as_deref(),
            Ok(name.as_str())
        );
    }
    let _ = url::parse_hex32(&s);
}

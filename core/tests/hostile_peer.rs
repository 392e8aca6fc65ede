//! A hostile connection peer against a server `Endpoint` (sans-IO): regression tests
//! for the connection layer's bounds. The client here is hand-rolled from the crate's
//! public Noise and wire API, so it can do what a real client never would: finish a
//! handshake from another address, pack a packet with PATH_CHALLENGEs, grant unbounded
//! credit, send thousands of 1-byte pieces out of order, open handshakes in bulk.

mod common;
use common::{addr, drain, listening};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rgtp::conn::noise::{ClientHandshake, Transport};
use rgtp::conn::stream::MAX_OOO_SEGMENTS;
use rgtp::conn::wire::{self as cw, Frame, Packet, TransportParams, SHORT_HEADER_LEN};
use rgtp::conn::{ConnConfig, ConnId, Endpoint, EndpointConfig};
use rgtp::keys::StaticKey;
use rgtp::rng::Rng;

// ------------------------------------------------------------------ the client

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn server(cfg: ConnConfig, now: Instant) -> Endpoint {
    let mut ec = EndpointConfig::new(StaticKey::generate());
    ec.conn = cfg;
    listening(ec, now)
}

fn params(cid: u64, initial_limit: u64) -> TransportParams {
    TransportParams {
        cid,
        initial_limit,
        max_datagram: 65_000,
        idle_timeout_ms: 120_000,
        reset_token: [7; 16],
    }
}

/// A client handshake after the server's RESPONSE: its FINISH is ready to go.
struct Pending {
    server_cid: u64,
    finish: Vec<u8>,
    transport: Transport,
}

/// Sends an INIT from `from` and reads the RESPONSE; None if the server sent none.
fn init(
    ep: &mut Endpoint,
    now: Instant,
    from: SocketAddr,
    cid: u64,
    limit: u64,
) -> Option<Pending> {
    let key = StaticKey::generate();
    let mut hs = ClientHandshake::start(&key.private, cid, &mut Rng::os()).unwrap();
    let init = Packet::Init {
        src_cid: cid,
        token: &[],
        noise: &hs.msg1,
    }
    .encode();
    ep.handle(now, from, &init);
    let out = drain(ep, now);
    let (_, resp) = out.iter().find(|(a, _)| *a == from)?;
    let Packet::Response { noise, .. } = cw::decode(resp).unwrap() else {
        return None;
    };
    let (_, payload) = hs.read_response(noise).unwrap();
    let sp = TransportParams::decode(&payload).unwrap();
    let (msg3, est) = hs.finish(&params(cid, limit).encode()).unwrap();
    let finish = Packet::Finish {
        dst_cid: sp.cid,
        noise: &msg3,
    }
    .encode();
    Some(Pending {
        server_cid: sp.cid,
        finish,
        transport: est.transport,
    })
}

/// An established hostile peer.
struct Peer {
    server_cid: u64,
    tr: Transport,
    pn: u64,
    id: ConnId,
}

/// INIT and FINISH from `from`, granting the server `limit` bytes of credit.
fn connect(ep: &mut Endpoint, now: Instant, from: SocketAddr, limit: u64) -> Peer {
    let p = init(ep, now, from, 0x1111_2222_3333_4444, limit).expect("a response");
    ep.handle(now, from, &p.finish);
    let id = ep.accept().expect("accepted");
    Peer {
        server_cid: p.server_cid,
        tr: p.transport,
        pn: 0,
        id,
    }
}

impl Peer {
    /// A sealed SHORT packet carrying the raw frame bytes `frames`.
    fn short(&mut self, frames: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; SHORT_HEADER_LEN];
        buf.extend_from_slice(frames);
        assert!(self.tr.seal_in_place(self.pn, &mut buf, SHORT_HEADER_LEN));
        cw::write_short_header(&mut buf, self.server_cid, self.pn);
        self.pn += 1;
        buf
    }

    /// PATH_RESPONSE frames in a datagram the server sent us.
    fn path_responses(&self, d: &[u8]) -> usize {
        let Ok(Packet::Short { pn, sealed, .. }) = cw::decode(d) else {
            return 0;
        };
        let mut buf = sealed.to_vec();
        let n = self.tr.open_in_place(pn, &mut buf).expect("opens");
        cw::decode_frames(&buf[..n])
            .unwrap()
            .iter()
            .filter(|f| matches!(f, Frame::PathResponse(_)))
            .count()
    }
}

fn stream_frame(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut v = vec![cw::F_STREAM];
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&(data.len() as u16).to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn path_challenge(i: u64) -> Vec<u8> {
    let mut v = vec![cw::F_PATH_CHALLENGE];
    v.extend_from_slice(&i.to_le_bytes());
    v
}

// ------------------------------------------------------------------ the tests

/// INIT from the attacker's own address (it reads the RESPONSE), FINISH with a
/// victim's address as source: the server must not adopt the unvalidated address (it
/// would then send the victim everything the connection produces).
#[test]
fn finish_from_another_address_is_dropped() {
    let t0 = Instant::now();
    let mut ep = server(ConnConfig::default(), t0);
    let attacker = addr("10.0.0.2:4000");
    let victim = addr("192.0.2.99:53");
    let p = init(&mut ep, t0, attacker, 0x1111, u64::MAX).expect("a response");
    ep.handle(t0 + ms(1), victim, &p.finish);
    assert_eq!(ep.accept(), None);
    assert_eq!(ep.connection_count(), 0);
    assert_eq!(ep.half_open_count(), 1);
    // Nothing goes to the victim, now or later.
    let mut now = t0 + ms(1);
    let end = t0 + Duration::from_secs(30);
    while now < end {
        for (a, _) in drain(&mut ep, now) {
            assert_ne!(a, victim, "the server sent to the FINISH's spoofed source");
        }
        now = ep.poll_timeout().unwrap_or(end).min(end).max(now + ms(1));
        ep.handle_timeout(now);
    }
    // The same FINISH from the address the RESPONSE went to still completes it.
    let mut ep = server(ConnConfig::default(), t0);
    let p = init(&mut ep, t0, attacker, 0x2222, u64::MAX).expect("a response");
    ep.handle(t0 + ms(1), victim, &p.finish);
    ep.handle(t0 + ms(2), attacker, &p.finish);
    let id = ep.accept().expect("accepted from the INIT's address");
    assert_eq!(ep.peer_addr(id), Some(attacker));
}

/// FINISHes that fail to decrypt do not push the half-open's expiry back: garbage
/// sent every second cannot hold a slot for ever.
#[test]
fn bad_finishes_do_not_keep_a_half_open_alive() {
    let t0 = Instant::now();
    let cfg = ConnConfig::default();
    let timeout = cfg.handshake_timeout;
    let mut ep = server(cfg, t0);
    let a = addr("10.0.0.2:4000");
    let p = init(&mut ep, t0, a, 0x3333, 1 << 20).expect("a response");
    let garbage = Packet::Finish {
        dst_cid: p.server_cid,
        noise: &[0u8; 64],
    }
    .encode();
    let mut now = t0;
    while now < t0 + timeout * 3 {
        now += Duration::from_secs(1);
        ep.handle(now, a, &garbage);
        ep.handle_timeout(now);
        drain(&mut ep, now);
    }
    assert_eq!(ep.half_open_count(), 0);
    assert_eq!(ep.connection_count(), 0);
}

/// One packet packed with PATH_CHALLENGEs from a spoofed source gets one
/// PATH_RESPONSE, and the server sends that address no more bytes than the packet
/// (it used to send one response per challenge).
fn path_challenges_do_not_amplify(max_dgram: usize) {
    let t0 = Instant::now();
    let mut ep = server(ConnConfig::default(), t0);
    let client = addr("10.0.0.2:4000");
    let victim = addr("192.0.2.99:53");
    let mut p = connect(&mut ep, t0, client, 1 << 20);
    drain(&mut ep, t0);
    let n = (max_dgram - SHORT_HEADER_LEN - cw::TAG_LEN) / 9;
    let frames: Vec<u8> = (0..n as u64).flat_map(path_challenge).collect();
    let pkt = p.short(&frames);
    assert!(pkt.len() <= max_dgram);
    let now = t0 + ms(1);
    ep.handle(now, victim, &pkt);
    let out = drain(&mut ep, now);
    let to_victim: Vec<&Vec<u8>> = out
        .iter()
        .filter(|(a, _)| *a == victim)
        .map(|(_, d)| d)
        .collect();
    let bytes: usize = to_victim.iter().map(|d| d.len()).sum();
    let responses: usize = to_victim.iter().map(|d| p.path_responses(d)).sum();
    // Exactly one: the challenges were read (the packet authenticates), and answered
    // once.
    assert_eq!(responses, 1, "PATH_RESPONSEs to {n} challenges");
    assert!(
        bytes <= pkt.len(),
        "{bytes} bytes to the victim for one {}-byte packet",
        pkt.len()
    );
}

#[test]
fn path_challenges_do_not_amplify_1200() {
    path_challenges_do_not_amplify(1200);
}

#[test]
fn path_challenges_do_not_amplify_65000() {
    path_challenges_do_not_amplify(65_000);
}

/// Challenges arriving faster than responses leave queue at most 8 responses.
#[test]
fn queued_path_responses_are_bounded() {
    let t0 = Instant::now();
    let mut ep = server(ConnConfig::default(), t0);
    let client = addr("10.0.0.2:4000");
    let mut p = connect(&mut ep, t0, client, 1 << 20);
    drain(&mut ep, t0);
    let now = t0 + ms(1);
    for i in 0..50 {
        let pkt = p.short(&path_challenge(i));
        ep.handle(now, client, &pkt);
    }
    let out = drain(&mut ep, now);
    let responses: usize = out.iter().map(|(_, d)| p.path_responses(d)).sum();
    assert!((1..=8).contains(&responses), "{responses} PATH_RESPONSEs");
}

/// A peer granting u64::MAX of credit (and acknowledging nothing) cannot make the
/// server buffer more than its own window of the application's writes.
#[test]
fn peer_credit_does_not_unbound_the_send_buffer() {
    let t0 = Instant::now();
    let window = 1 << 20;
    let cfg = ConnConfig {
        recv_window: window,
        ..ConnConfig::default()
    };
    let mut ep = server(cfg, t0);
    let a = addr("10.0.0.2:4000");
    let p = connect(&mut ep, t0, a, u64::MAX);
    let r = ep.readiness(p.id).unwrap();
    assert!(r.writable_bytes <= window, "{}", r.writable_bytes);
    let chunk = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for i in 0..64 {
        match ep.write(p.id, &chunk) {
            Ok(n) => total += n as u64,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
                assert!(i > 0);
                break;
            }
        }
        // Let it send (nothing is ever acknowledged).
        drain(&mut ep, t0 + ms(i));
    }
    let buffered = ep.send_buffered(p.id).unwrap() as u64;
    assert_eq!(total, window);
    assert!(buffered <= window, "send buffer holds {buffered} bytes");
}

/// Tens of thousands of 1-byte STREAM frames at every other offset, packed into
/// 65 000-byte datagrams: the receiver stores at most MAX_OOO_SEGMENTS of them (each
/// would be a segment of its own), and the stream is still delivered whole once the
/// writer sends everything again.
#[test]
fn one_byte_out_of_order_segments_are_bounded() {
    let t0 = Instant::now();
    let mut ep = server(ConnConfig::default(), t0);
    let a = addr("10.0.0.2:4000");
    let mut p = connect(&mut ep, t0, a, 1 << 20);
    drain(&mut ep, t0);
    let n = 20_000u64;
    let byte = |o: u64| (o * 7 + 3) as u8;
    let per = (65_000 - SHORT_HEADER_LEN - cw::TAG_LEN) / (cw::STREAM_HEADER_LEN + 1);
    let mut now = t0;
    let mut i = 0;
    while i < n {
        let mut frames = Vec::with_capacity(65_000);
        while i < n && frames.len() / (cw::STREAM_HEADER_LEN + 1) < per {
            let o = 1 + 2 * i;
            frames.extend_from_slice(&stream_frame(o, &[byte(o)]));
            i += 1;
        }
        let pkt = p.short(&frames);
        assert!(pkt.len() <= 65_000);
        now += ms(1);
        ep.handle(now, a, &pkt);
        drain(&mut ep, now);
    }
    let held = ep.recv_buffered(p.id).unwrap();
    assert!(held <= MAX_OOO_SEGMENTS as u64, "{held} bytes held");
    let max = ep.conn_stats(p.id).unwrap().max_recv_buffered;
    assert!(max <= MAX_OOO_SEGMENTS as u64, "up to {max} bytes held");
    // The writer sends the whole stream again, in order: all of it is delivered.
    let total = 2 * n;
    let mut off = 0;
    while off < total {
        let len = (total - off).min(1000);
        let data: Vec<u8> = (off..off + len).map(byte).collect();
        let pkt = p.short(&stream_frame(off, &data));
        now += ms(1);
        ep.handle(now, a, &pkt);
        drain(&mut ep, now);
        off += len;
    }
    let mut got = vec![0u8; total as usize + 1];
    let mut k = 0;
    while let Ok(m) = ep.read(p.id, &mut got[k..]) {
        if m == 0 {
            break;
        }
        k += m;
    }
    assert_eq!(k as u64, total);
    let want: Vec<u8> = (0..total).map(byte).collect();
    assert!(got[..k] == want[..], "the stream came out different");
}

/// One source cannot hold every half-open slot: its INITs beyond the per-source cap
/// are dropped, other sources still get in, and its slots come back as its handshakes
/// finish or expire.
#[test]
fn half_opens_per_source_are_capped() {
    let t0 = Instant::now();
    let mut ep = server(ConnConfig::default(), t0);
    let cap = ep.config().max_half_open_per_source;
    assert!(cap < ep.config().max_half_open);
    let mut pending = Vec::new();
    for i in 0..cap as u64 + 100 {
        // Same IP, a different port each time.
        let from = addr(&format!("10.0.0.2:{}", 4000 + i));
        let now = t0 + Duration::from_micros(500 * i);
        if let Some(p) = init(&mut ep, now, from, 1000 + i, 1 << 20) {
            pending.push((from, p));
        }
    }
    assert_eq!(pending.len(), cap);
    assert_eq!(ep.half_open_count(), cap);
    let now = t0 + ms(100);
    assert!(init(&mut ep, now, addr("10.0.0.2:9999"), 9, 1 << 20).is_none());
    // Another source is not affected.
    let other = init(&mut ep, now, addr("10.0.0.3:4000"), 10, 1 << 20);
    assert!(other.is_some());
    // An IPv6 source counts per /64 prefix.
    for i in 0..cap as u64 {
        let from = addr(&format!("[2001:db8::{:x}]:4000", i + 1));
        assert!(init(&mut ep, now, from, 2000 + i, 1 << 20).is_some());
    }
    assert!(init(&mut ep, now, addr("[2001:db8::ffff]:1"), 3000, 1 << 20).is_none());
    assert!(init(&mut ep, now, addr("[2001:db8:0:1::1]:1"), 3001, 1 << 20).is_some());
    // A finished handshake frees its slot.
    let (from, p) = pending.pop().unwrap();
    ep.handle(now, from, &p.finish);
    assert!(ep.accept().is_some());
    assert!(init(&mut ep, now, addr("10.0.0.2:9998"), 11, 1 << 20).is_some());
    assert!(init(&mut ep, now, addr("10.0.0.2:9997"), 12, 1 << 20).is_none());
    // Expired ones free theirs.
    let later = t0 + ep.config().conn.handshake_timeout + Duration::from_secs(1);
    ep.handle_timeout(later);
    assert_eq!(ep.half_open_count(), 0);
    assert!(init(&mut ep, later, addr("10.0.0.2:9996"), 13, 1 << 20).is_some());
    // An IPv4 peer seen through a dual-stack socket counts as that IPv4 source.
    for i in 0..cap as u64 - 1 {
        let before = ep.half_open_count();
        let mapped = addr(&format!("[::ffff:10.0.0.2]:{}", 7000 + i));
        init(&mut ep, later, mapped, 6000 + i, 1 << 20);
        assert_eq!(ep.half_open_count(), before + 1);
    }
    assert!(init(&mut ep, later, addr("10.0.0.2:9995"), 14, 1 << 20).is_none());
    // On loopback a source is one socket (address and port): local programs each get
    // their own share, and one local socket is capped like any source.
    for i in 0..cap as u64 + 100 {
        let from = addr(&format!("127.0.0.1:{}", 20000 + i));
        assert!(init(&mut ep, later, from, 5000 + i, 1 << 20).is_some());
    }
    for i in 0..cap as u64 {
        assert!(init(&mut ep, later, addr("127.0.0.1:19999"), 8000 + i, 1 << 20).is_some());
    }
    assert!(init(&mut ep, later, addr("127.0.0.1:19999"), 9000, 1 << 20).is_none());
}

/// Spoofed INITs from many addresses (each under the per-source cap, all under the
/// rate threshold) fill at most half of the half-open table: past half, an INIT
/// without a token gets a RETRY, so only a client that receives at its address takes
/// a slot, and such a client still gets in.
#[test]
fn spoofed_inits_fill_at_most_half_the_table() {
    let t0 = Instant::now();
    let mut ec = EndpointConfig::new(StaticKey::generate());
    ec.max_half_open = 64;
    let mut ep = Endpoint::new(ec, t0);
    ep.set_listening(true);
    let send_init =
        |ep: &mut Endpoint, now: Instant, from: SocketAddr, cid: u64, token: &[u8], msg1: &[u8]| {
            let init = Packet::Init {
                src_cid: cid,
                token,
                noise: msg1,
            }
            .encode();
            ep.handle(now, from, &init);
            drain(ep, now)
                .into_iter()
                .find(|(a, _)| *a == from)
                .map(|(_, d)| d)
        };
    let answer_to = |ep: &mut Endpoint, now: Instant, from: SocketAddr, cid: u64, token: &[u8]| {
        let hs =
            ClientHandshake::start(&StaticKey::generate().private, cid, &mut Rng::os()).unwrap();
        send_init(ep, now, from, cid, token, &hs.msg1)
    };
    let (mut responses, mut retries) = (0, 0);
    for i in 0..200u64 {
        let from = addr(&format!("10.9.{}.{}:4000", i / 250, 1 + i % 250));
        let now = t0 + Duration::from_millis(i);
        match answer_to(&mut ep, now, from, 100 + i, &[])
            .map(|d| cw::decode(&d).map(|p| matches!(p, Packet::Retry { .. })))
        {
            Some(Ok(true)) => retries += 1,
            Some(Ok(false)) => responses += 1,
            other => panic!("INIT {i}: {other:?}"),
        }
    }
    assert_eq!((responses, retries), (32, 168));
    assert_eq!(ep.half_open_count(), 32);
    // A real client answers the RETRY with its cookie and gets a RESPONSE; it re-sends
    // the same first Noise message, since a cookie validates one handshake attempt.
    let real = addr("192.0.2.77:5000");
    let now = t0 + ms(300);
    let hs = ClientHandshake::start(&StaticKey::generate().private, 7, &mut Rng::os()).unwrap();
    let retry = send_init(&mut ep, now, real, 7, &[], &hs.msg1).expect("a RETRY");
    let Ok(Packet::Retry { token, .. }) = cw::decode(&retry) else {
        panic!("not a RETRY")
    };
    let token = token.to_vec();
    let resp = send_init(&mut ep, now, real, 7, &token, &hs.msg1).expect("an answer to the token");
    assert!(matches!(cw::decode(&resp), Ok(Packet::Response { .. })));
}

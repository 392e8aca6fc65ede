//! Handshake floods against a server `Endpoint` (sans-IO), issue 15 break 2: a flooder
//! that answers every RETRY (it owns its addresses), from many addresses or from one
//! loopback socket, or one that spoofs a real client's address, must not keep a real
//! client from completing its handshake. Each test failed on the code before the fix.

mod common;
use common::{addr, drain, listening};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rgtp::conn::noise::ClientHandshake;
use rgtp::conn::wire::{self as cw, Packet, TransportParams};
use rgtp::conn::{Endpoint, EndpointConfig};
use rgtp::keys::StaticKey;
use rgtp::rng::Rng;

fn server(max_half_open: usize, now: Instant) -> Endpoint {
    let mut ec = EndpointConfig::new(StaticKey::generate());
    ec.max_half_open = max_half_open;
    listening(ec, now)
}

/// A flooder: INITs with fresh client IDs and Noise messages (any 32 bytes are an
/// X25519 key, so the server does the full Diffie-Hellman work), answering every RETRY
/// at once with its token (the cookie is good for that one INIT: same ID, same Noise
/// message).
struct Flooder {
    addrs: Vec<SocketAddr>,
    n: u64,
}

impl Flooder {
    fn new(addrs: Vec<SocketAddr>) -> Self {
        Self { addrs, n: 0 }
    }

    /// `count` INITs round-robin over the addresses, spread evenly over `span`, each
    /// RETRY answered.
    fn flood(&mut self, ep: &mut Endpoint, start: Instant, span: Duration, count: u64) {
        for i in 0..count {
            let now = start + span * i as u32 / count as u32;
            self.n += 1;
            let from = self.addrs[(self.n % self.addrs.len() as u64) as usize];
            let e = blake3::hash(&self.n.to_le_bytes());
            let cid = 0x5eed_0000_0000 + self.n;
            let mut token = Vec::new();
            for _ in 0..2 {
                let init = Packet::Init {
                    src_cid: cid,
                    token: &token,
                    noise: e.as_bytes(),
                }
                .encode();
                ep.handle(now, from, &init);
                let retry = drain(ep, now)
                    .into_iter()
                    .find_map(|(to, d)| match cw::decode(&d) {
                        Ok(Packet::Retry { token, .. }) if to == from => Some(token.to_vec()),
                        _ => None,
                    });
                match retry {
                    Some(t) if token.is_empty() => token = t,
                    _ => break,
                }
            }
        }
    }
}

/// A real client's handshake, one step at a time, with the flood going on between its
/// steps: INIT, RETRY (if any), INIT with the token, RESPONSE, FINISH.
struct Client {
    from: SocketAddr,
    cid: u64,
    hs: Option<ClientHandshake>,
    msg1: Vec<u8>,
    token: Vec<u8>,
    finish: Option<Vec<u8>>,
}

impl Client {
    fn new(from: SocketAddr, cid: u64) -> Self {
        let hs =
            ClientHandshake::start(&StaticKey::generate().private, cid, &mut Rng::os()).unwrap();
        Self {
            from,
            cid,
            msg1: hs.msg1.clone(),
            hs: Some(hs),
            token: Vec::new(),
            finish: None,
        }
    }

    /// Sends INIT (with the token once it has one) and reads what came back to it.
    fn send_init(&mut self, ep: &mut Endpoint, now: Instant) {
        let init = Packet::Init {
            src_cid: self.cid,
            token: &self.token,
            noise: &self.msg1,
        }
        .encode();
        ep.handle(now, self.from, &init);
        for (to, d) in drain(ep, now) {
            if to != self.from {
                continue;
            }
            match cw::decode(&d) {
                Ok(Packet::Retry { token, .. }) => self.token = token.to_vec(),
                Ok(Packet::Response { noise, .. }) => {
                    let mut hs = self.hs.take().expect("one RESPONSE");
                    let (_, payload) = hs.read_response(noise).unwrap();
                    let sp = TransportParams::decode(&payload).unwrap();
                    let mine = TransportParams {
                        cid: self.cid,
                        initial_limit: 1 << 20,
                        max_datagram: 65_000,
                        idle_timeout_ms: 120_000,
                        reset_token: [7; 16],
                    };
                    let (msg3, _) = hs.finish(&mine.encode()).unwrap();
                    self.finish = Some(
                        Packet::Finish {
                            dst_cid: sp.cid,
                            noise: &msg3,
                        }
                        .encode(),
                    );
                }
                _ => {}
            }
        }
    }

    /// Sends FINISH; true if the server accepted the connection.
    fn send_finish(&mut self, ep: &mut Endpoint, now: Instant) -> bool {
        let Some(f) = &self.finish else {
            return false;
        };
        let before = ep.stats.handshakes_completed;
        ep.handle(now, self.from, f);
        drain(ep, now);
        ep.stats.handshakes_completed > before
    }
}

/// Runs a real client through its handshake while `flooder` keeps sending `per_step`
/// INITs during each round trip (`rtt`); returns whether it got in within `tries`
/// INIT retransmissions.
fn real_client_gets_in(
    ep: &mut Endpoint,
    flooder: &mut Flooder,
    mut now: Instant,
    client: &mut Client,
    rtt: Duration,
    per_step: u64,
) -> bool {
    for _ in 0..6 {
        client.send_init(ep, now);
        flooder.flood(ep, now, rtt, per_step);
        now += rtt;
        if client.finish.is_some() {
            return client.send_finish(ep, now);
        }
    }
    false
}

fn flood_addrs(n: u32) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| addr(&format!("10.66.{}.{}:40000", i / 200, 1 + i % 200)))
        .collect()
}

/// 100 flooding addresses, every RETRY answered, at 60k INITs/s (the attack)
/// against a 512-slot table: the table is full and stays full, yet each real client
/// finishes its handshake at once.
#[test]
fn validated_flood_from_100_addresses_does_not_lock_out_real_clients() {
    let t0 = Instant::now();
    let mut ep = server(512, t0);
    let mut flooder = Flooder::new(flood_addrs(100));
    // 1 s at 60k/s: every flooder has its token, and the table is full.
    flooder.flood(&mut ep, t0, Duration::from_secs(1), 60_000);
    assert!(
        ep.half_open_count() >= 512 * 3 / 4,
        "the flood should hold the table: {}",
        ep.half_open_count()
    );
    let mut now = t0 + Duration::from_secs(1);
    for i in 0..5u64 {
        let mut c = Client::new(addr(&format!("192.0.2.{}:5000", 10 + i)), 77 + i);
        // A 1 ms round trip: 60 flood INITs arrive during each.
        let ms = Duration::from_millis(1);
        assert!(
            real_client_gets_in(&mut ep, &mut flooder, now, &mut c, ms, 60),
            "real client {i} was locked out; stats {:?}",
            ep.stats
        );
        now += Duration::from_millis(50);
        flooder.flood(&mut ep, now, Duration::from_millis(50), 3_000);
    }
    // The Diffie-Hellman work the flood got is bounded per address it owns.
    let per_source = ep.config().busy_handshakes_per_source as u64;
    assert!(
        ep.stats.handshakes_started <= 100 * per_source * 2 + 600,
        "flood handshakes started: {}",
        ep.stats.handshakes_started
    );
}

/// One flooder on one loopback socket (answering every RETRY) cannot take the whole
/// table: loopback is no longer exempt from the per-source share, and a loopback
/// source is one local socket (address and port), so another local program still gets
/// in.
#[test]
fn one_loopback_flooder_does_not_lock_out_other_local_programs() {
    let t0 = Instant::now();
    let mut ep = server(4096, t0);
    let mut flooder = Flooder::new(vec![addr("127.0.0.1:41000")]);
    flooder.flood(&mut ep, t0, Duration::from_secs(2), 120_000);
    assert!(
        ep.half_open_count() <= ep.config().max_half_open_per_source,
        "one loopback socket holds {} half-opens",
        ep.half_open_count()
    );
    let now = t0 + Duration::from_secs(2);
    let mut c = Client::new(addr("127.0.0.1:41001"), 99);
    assert!(
        real_client_gets_in(
            &mut ep,
            &mut flooder,
            now,
            &mut c,
            Duration::from_millis(1),
            60
        ),
        "the local client was locked out; stats {:?}",
        ep.stats
    );
}

/// A spoofer that fills a real client's source share (64 unvalidated INITs from its IP,
/// well under the rate threshold) used to get that client's INITs dropped for as long
/// as it kept sending. Now the client gets a RETRY, and its validated INIT takes the
/// slot of an unvalidated half-open.
#[test]
fn a_spoofer_cannot_lock_out_the_address_it_spoofs() {
    let t0 = Instant::now();
    let mut ep = server(4096, t0);
    let cap = ep.config().max_half_open_per_source as u64;
    for i in 0..cap {
        let e = blake3::hash(&i.to_le_bytes());
        let init = Packet::Init {
            src_cid: 1000 + i,
            token: &[],
            noise: e.as_bytes(),
        }
        .encode();
        ep.handle(t0, addr(&format!("203.0.113.5:{}", 2000 + i)), &init);
        drain(&mut ep, t0);
    }
    assert_eq!(ep.half_open_count(), cap as usize);
    let mut c = Client::new(addr("203.0.113.5:6000"), 4242);
    let mut now = t0 + Duration::from_millis(10);
    c.send_init(&mut ep, now);
    assert!(!c.token.is_empty(), "no RETRY for the spoofed-over client");
    now += Duration::from_millis(1);
    c.send_init(&mut ep, now);
    assert!(c.finish.is_some(), "no RESPONSE to the validated INIT");
    assert!(c.send_finish(&mut ep, now + Duration::from_millis(1)));
    assert_eq!(ep.half_open_count(), cap as usize - 1);
    assert!(ep.stats.half_opens_evicted >= 1);
}

/// With the table full of validated half-opens from flooders, a validated INIT evicts
/// the oldest half-open of the source holding the most, never a lone client's.
#[test]
fn eviction_takes_from_the_largest_source_first() {
    let t0 = Instant::now();
    let mut ec = EndpointConfig::new(StaticKey::generate());
    ec.max_half_open = 32;
    ec.retry_threshold = 0; // every INIT needs a token
    let mut ep = Endpoint::new(ec, t0);
    ep.set_listening(true);
    // A lone client's handshake sits half-open (its FINISH is slow).
    let mut lone = Client::new(addr("198.51.100.1:7000"), 1);
    lone.send_init(&mut ep, t0);
    lone.send_init(&mut ep, t0);
    assert!(lone.finish.is_some());
    // Six flooders (8 handshakes/s each while busy) fill the table and go on.
    let mut flooder = Flooder::new(flood_addrs(6));
    flooder.flood(&mut ep, t0, Duration::from_millis(900), 3_000);
    assert_eq!(ep.half_open_count(), 32);
    assert!(ep.stats.half_opens_evicted > 0);
    // The lone client's FINISH, 900 ms late, still finds its half-open.
    assert!(lone.send_finish(&mut ep, t0 + Duration::from_millis(900)));
}

/// A RETRY cookie is good for the one handshake it answered (the client ID and Noise
/// message 1 it was sealed to): reused with another Noise message, as a flooder
/// would to get many handshakes from one RETRY, it is dropped.
#[test]
fn a_retry_cookie_validates_one_handshake_only() {
    let t0 = Instant::now();
    let mut ec = EndpointConfig::new(StaticKey::generate());
    ec.retry_threshold = 0;
    let mut ep = Endpoint::new(ec, t0);
    ep.set_listening(true);
    let mut c = Client::new(addr("198.51.100.7:7000"), 5);
    c.send_init(&mut ep, t0);
    assert!(!c.token.is_empty(), "no RETRY");
    let token = c.token.clone();
    let reuse = Packet::Init {
        src_cid: 5,
        token: &token,
        noise: blake3::hash(b"another ephemeral key").as_bytes(),
    }
    .encode();
    let before = ep.stats.handshakes_started;
    ep.handle(t0, c.from, &reuse);
    assert!(
        drain(&mut ep, t0).is_empty(),
        "a reused cookie got an answer"
    );
    assert_eq!(ep.stats.handshakes_started, before);
    // The genuine client's INIT with its cookie still gets in.
    c.send_init(&mut ep, t0);
    assert!(c.send_finish(&mut ep, t0 + Duration::from_millis(1)));
}

/// At 60k INITs/s from 100 owned addresses (every RETRY answered), the server's work
/// is bounded by what it must do to keep reading its socket: RETRYs at most 64 a second
/// per socket address (the rest dropped after decoding, before any cryptography or
/// send), and Diffie-Hellman work, once busy, at most one handshake per source plus
/// 256 a second beyond each source's first. A real client is still answered and admitted at once.
/// Before these budgets the server sent a RETRY for every INIT and started 8
/// handshakes a second per source; under a real flood on the same cores it fell
/// behind its socket and the kernel dropped real clients' datagrams.
#[test]
fn a_flood_gets_bounded_retries_and_handshakes_per_second() {
    let t0 = Instant::now();
    let mut ep = server(4096, t0);
    let mut flooder = Flooder::new(flood_addrs(100));
    // Two seconds of flood.
    flooder.flood(&mut ep, t0, Duration::from_millis(1999), 120_000);
    let cfg = ep.config();
    let retry_cap = 2 * 100 * u64::from(cfg.busy_retries_per_source);
    assert!(
        ep.stats.retries_sent <= retry_cap,
        "{} RETRYs in 2 s, cap {retry_cap}",
        ep.stats.retries_sent
    );
    assert!(ep.stats.retry_budget_drops > 100_000, "{:?}", ep.stats);
    // Each second: up to the RETRY threshold before the server counts as busy, then one
    // per source and the global budget.
    let dh_cap = 2 * (u64::from(cfg.retry_threshold) + 100 + u64::from(cfg.busy_handshakes));
    assert!(
        ep.stats.handshakes_started <= dh_cap,
        "{} handshakes started in 2 s, cap {dh_cap}",
        ep.stats.handshakes_started
    );
    let now = t0 + Duration::from_secs(2);
    let mut c = Client::new(addr("192.0.2.77:5000"), 4242);
    let ms = Duration::from_millis(1);
    assert!(
        real_client_gets_in(&mut ep, &mut flooder, now, &mut c, ms, 60),
        "the real client was locked out; stats {:?}",
        ep.stats
    );
}

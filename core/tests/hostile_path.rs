//! An attacker on the path of a file pull (sans-IO, virtual clock): it sees and keeps
//! the puller's REQUESTs and replays them, spoofs a RETRY, damages DATA. Each test
//! drives the real `Puller` and `Exposer` state machines over the simulated network,
//! and fails on the code before its fix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::merkle::{self, CHUNK_SIZE};
use rgtp::puller::{PullConfig, PullError, PullEvent, Puller};
use rgtp::sim::{LinkConfig, SimNet, SimRng};
use rgtp::source::{ChunkSource, MemSource};
use rgtp::wire::{self, Data, Object, PacketType};

const EXPOSER: &str = "192.0.2.1:443";
const PULLER: &str = "198.51.100.7:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn content(len: usize) -> Vec<u8> {
    let mut r = SimRng::new(7);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

/// What a test's attacker does to a datagram from the exposer to the puller: `None`
/// delivers it as is; `Some(copies)` delivers those instead, in order.
type Mangle = Box<dyn FnMut(&[u8]) -> Option<Vec<Vec<u8>>>>;

struct Pair {
    net: SimNet,
    ex: Exposer,
    p: Puller,
    out: Vec<u8>,
    result: Option<Result<(), PullError>>,
    /// Every REQUEST the puller sent, as the path saw it.
    captured: Vec<Vec<u8>>,
    mangle: Option<Mangle>,
}

impl Pair {
    fn new(
        source: Box<dyn ChunkSource>,
        cvs: Vec<[u8; 32]>,
        cfg: impl FnOnce(&mut PullConfig),
    ) -> Self {
        // Keys, ids and nonces from the seed too: a failure reproduces exactly.
        let mut net = SimNet::new(1, LinkConfig::default());
        let private = net.static_key().private;
        let mut ex = Exposer::with_rng(
            ExposerConfig::default(),
            private,
            net.now,
            net.machine_rng(),
        );
        let size = source.size() as usize;
        ex.add_exposure("f", source, cvs);
        let mut c = PullConfig::new(addr(EXPOSER), "f");
        c.idle_timeout = Duration::from_secs(20);
        cfg(&mut c);
        let p = Puller::with_rng(c, net.now, net.machine_rng());
        Pair {
            net,
            ex,
            p,
            out: vec![0; size],
            result: None,
            captured: Vec::new(),
            mangle: None,
        }
    }

    fn of_bytes(data: &Arc<Vec<u8>>, cfg: impl FnOnce(&mut PullConfig)) -> Self {
        let cvs = merkle::cvs_of_bytes(data);
        Self::new(Box::new(MemSource(data.clone())), cvs, cfg)
    }

    /// Runs until the pull ends or `limit` of virtual time passes.
    fn run(&mut self, limit: Duration) {
        let end = self.net.now + limit;
        for _ in 0..10_000_000u64 {
            if self.result.is_some() || self.net.now >= end {
                return;
            }
            let now = self.net.now;
            while let Some(d) = self.net.pop_due() {
                if d.to == addr(EXPOSER) {
                    if wire::peek_type(&d.data) == Ok(PacketType::Request) {
                        self.captured.push(d.data.clone());
                    }
                    self.ex.handle(now, d.from, &d.data);
                } else {
                    match self.mangle.as_mut().and_then(|m| m(&d.data)) {
                        None => self.p.handle(now, d.from, &d.data),
                        Some(copies) => {
                            for c in copies {
                                self.p.handle(now, d.from, &c);
                            }
                        }
                    }
                }
            }
            if self.p.poll_timeout().is_some_and(|t| t <= now) {
                self.p.handle_timeout(now);
            }
            while let Some(t) = self.p.poll_transmit(now) {
                self.net.send(addr(PULLER), &t);
            }
            while let Some(ev) = self.p.poll_event() {
                match ev {
                    PullEvent::Chunk { index, data } => {
                        let at = index as usize * CHUNK_SIZE;
                        self.out[at..at + data.len()].copy_from_slice(&data);
                    }
                    PullEvent::Verify {
                        index,
                        ct,
                        verifier,
                    } => match verifier.verify(index, ct) {
                        Ok(data) => {
                            let at = index as usize * CHUNK_SIZE;
                            self.out[at..at + data.len()].copy_from_slice(&data);
                            self.p.chunk_verified(index, Ok(data.len()));
                        }
                        Err(bad) => self.p.chunk_verified(index, Err(bad)),
                    },
                    PullEvent::Done => self.result = Some(Ok(())),
                    PullEvent::Failed(e) => self.result = Some(Err(e)),
                    _ => {}
                }
            }
            while let Some(t) = self.ex.poll_transmit() {
                self.net.send(addr(EXPOSER), &t);
            }
            if !self.net.advance_to_next([self.p.poll_timeout()]) {
                return;
            }
        }
        panic!("simulation does not progress");
    }

    /// The attacker replays every captured REQUEST from the puller's address at
    /// `at`; returns (bytes it sent, bytes the exposer sent to the puller's address).
    fn replay_all(&mut self, at: Instant) -> (u64, u64) {
        self.net.advance_to(at);
        let (mut sent, mut back) = (0u64, 0u64);
        for r in &self.captured {
            sent += r.len() as u64;
            self.ex.handle(at, addr(PULLER), r);
            while let Some(t) = self.ex.poll_transmit() {
                assert_eq!(t.dest, addr(PULLER));
                back += t.len() as u64;
            }
        }
        (sent, back)
    }
}

/// Break 1 of issue 15: REQUESTs captured during a pull and replayed from the puller's
/// address after it ended must not be served again (the exposer must not reflect bulk
/// data at the victim): at most 3x the replayed bytes, whenever replayed within the
/// token's 10-minute life. The old code served each one again: about 2,000x.
#[test]
fn replayed_requests_are_not_served_again() {
    let data = Arc::new(content(4 << 20));
    let mut pair = Pair::of_bytes(&data, |_| {});
    pair.run(Duration::from_secs(60));
    assert_eq!(pair.result, Some(Ok(())));
    assert!(pair.out == *data);
    assert!(pair.captured.len() > 10, "{} requests", pair.captured.len());
    let t0 = pair.net.now;
    for after in [
        Duration::from_millis(1),
        Duration::from_secs(1),
        Duration::from_secs(30),
        Duration::from_secs(9 * 60),
    ] {
        let (sent, back) = pair.replay_all(t0 + after);
        let ratio = back as f64 / sent as f64;
        println!(
            "replay {after:?} after the pull: {} REQUESTs, {sent} B in, {back} B out: {ratio:.3}x",
            pair.captured.len()
        );
        assert!(
            back <= 3 * sent,
            "replayed {after:?} after the pull: {back} B sent for {sent} B ({ratio:.0}x)"
        );
    }
}

/// A single REQUEST replayed alone, right after it was served (the attacker races the
/// puller's next one), is dropped: nothing goes out.
#[test]
fn a_request_is_served_once() {
    let data = Arc::new(content(1 << 20));
    let mut pair = Pair::of_bytes(&data, |_| {});
    pair.run(Duration::from_secs(60));
    assert_eq!(pair.result, Some(Ok(())));
    let last = pair.captured.last().unwrap().clone();
    pair.captured = vec![last];
    let now = pair.net.now;
    let (_, back) = pair.replay_all(now);
    assert_eq!(back, 0, "a served REQUEST was served again");
}

/// Issue 15, "one spoofed RETRY during a handshake makes a pull time out": the puller
/// takes the first RETRY's cookie and keeps sending it; a forged cookie must cost at
/// most a HELLO timeout.
#[test]
fn a_spoofed_retry_does_not_stall_the_handshake() {
    use rgtp::wire::Retry;
    let data = Arc::new(content(256 << 10));
    let mut pair = Pair::of_bytes(&data, |_| {});
    // The puller's first HELLO is lost, and the attacker, who saw it, answers it.
    let now = pair.net.now;
    pair.p.poll_transmit(now).expect("a HELLO");
    let forged = Retry {
        token: &[0x42; 103],
    }
    .encode();
    pair.p.handle(now, addr(EXPOSER), &forged);
    pair.run(Duration::from_secs(15));
    assert_eq!(pair.result, Some(Ok(())), "the pull did not finish");
    assert!(pair.out == *data);
}

/// Issue 15, "in offload-verify mode path corruption counts toward BadContent": a
/// chunk damaged on the path more than 16 times in a row is damage, not a changed file;
/// it is pulled again until it arrives whole, in both verification modes.
#[test]
fn path_damage_never_fails_a_chunk_as_changed() {
    for offload in [false, true] {
        let data = Arc::new(content(1 << 20));
        let mut pair = Pair::of_bytes(&data, |c| c.offload_verify = offload);
        let mut damaged = 0;
        pair.mangle = Some(Box::new(move |d: &[u8]| {
            let p = Data::decode(d).ok()?;
            // Fragment 0 is in every attempt (a failed chunk is asked for whole).
            if p.object != Object::Content || p.chunk != 5 || p.fragment != 0 || damaged >= 40 {
                return None;
            }
            damaged += 1;
            let mut bad = d.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 0x80;
            Some(vec![bad])
        }));
        pair.run(Duration::from_secs(60));
        assert_eq!(
            pair.result,
            Some(Ok(())),
            "offload {offload}: the pull failed on path damage"
        );
        assert!(pair.out == *data);
    }
}

/// A source that breaks after a while, as a file truncated under `--no-seal-ahead`.
struct Shrinking {
    data: Arc<Vec<u8>>,
    reads: std::sync::atomic::AtomicU32,
}

impl ChunkSource for Shrinking {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if self
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            >= 8
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file truncated",
            ));
        }
        MemSource(self.data.clone()).read_chunk(index, buf)
    }
}

/// Issue 15: a source file truncated while exposed (no seal-ahead) left pullers
/// waiting for the idle timeout, then "unreachable". The exposer withdraws the
/// exposure, and the puller learns it in an authenticated WELCOME: `Gone`, at once.
#[test]
fn a_broken_source_is_reported_gone() {
    let data = Arc::new(content(2 << 20));
    let cvs = merkle::cvs_of_bytes(&data);
    let src = Shrinking {
        data: data.clone(),
        reads: 0.into(),
    };
    let mut pair = Pair::new(Box::new(src), cvs, |_| {});
    let start = pair.net.now;
    pair.run(Duration::from_secs(30));
    assert_eq!(pair.result, Some(Err(PullError::Gone)));
    assert!(
        pair.net.now - start < Duration::from_secs(2),
        "took {:?}",
        pair.net.now - start
    );
}

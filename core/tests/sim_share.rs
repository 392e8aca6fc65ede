//! Sharing through the deterministic network simulator: puller A pulls from the
//! origin and, as a sharer, relays the origin's exposure (its id and content key) from
//! the chunks it holds; puller B pulls from the origin and A's sharer together, or
//! from the sharer alone. Every run must end byte-exact, the sharer's DATA must be the
//! origin's sealing byte for byte, and chunks the sharer lacks must be refused with
//! MISSING and fetched from the origin instead.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::addr;
use common::sharing::{random_content, Growing};
use rgtp::crypto::{Cipher, ContentCipher};
use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::merkle::{self, CHUNK_SIZE};
use rgtp::puller::{PullConfig, PullEvent, Puller};
use rgtp::sim::{LinkConfig, SimNet};
use rgtp::source::{shared_have, MemSource, PartialSource, SharedHave};
use rgtp::swarm::Swarm;
use rgtp::wire::{self, Data, Missing, Object, PacketType, DATA_HEADER_LEN};

const ORIGIN: &str = "192.0.2.1:443";
const SHARER: &str = "192.0.2.2:443";
const PULLER_A: &str = "198.51.100.7:40000";
const PULLER_B: &str = "198.51.100.8:40000";

fn content(seed: u64, len: usize) -> Vec<u8> {
    random_content(seed ^ 0x5AA5, len)
}

/// One pulling node: a swarm and where its chunks go.
struct Node {
    addr: SocketAddr,
    sw: Swarm,
    out: Arc<Mutex<Vec<u8>>>,
    have: SharedHave,
    done: bool,
}

impl Node {
    fn new(
        net: &mut SimNet,
        addr: SocketAddr,
        sources: &[SocketAddr],
        root: [u8; 32],
        size: usize,
    ) -> Self {
        let pullers = sources
            .iter()
            .map(|s| {
                let mut c = PullConfig::new(*s, "file.bin");
                c.expected_root = Some(root);
                c.idle_timeout = Duration::from_secs(30);
                Puller::with_rng(c, net.now, net.machine_rng())
            })
            .collect();
        Node {
            addr,
            sw: Swarm::new(pullers),
            out: Arc::new(Mutex::new(vec![0; size])),
            have: shared_have(merkle::chunk_count(size as u64)),
            done: false,
        }
    }

    fn store(&mut self, index: u64, data: &[u8]) {
        let at = index as usize * CHUNK_SIZE;
        self.out.lock().unwrap()[at..at + data.len()].copy_from_slice(data);
        // Held (and so served) only once its bytes are in place.
        assert!(self.have.lock().insert(index), "chunk {index} stored twice");
    }

    fn step(&mut self, net: &mut SimNet, now: Instant) {
        if self.sw.poll_timeout().is_some_and(|t| t <= now) {
            self.sw.handle_timeout(now);
        }
        while let Some(t) = self.sw.poll_transmit(now) {
            net.send(self.addr, &t);
        }
        while let Some((_, ev)) = self.sw.poll_event() {
            match ev {
                PullEvent::Chunk { index, data } => self.store(index, &data),
                PullEvent::Done => self.done = true,
                PullEvent::Failed(e) => panic!("{}: pull failed: {e}", self.addr),
                _ => {}
            }
        }
    }
}

struct World {
    net: SimNet,
    data: Arc<Vec<u8>>,
    root: [u8; 32],
    cvs: Vec<[u8; 32]>,
    origin: Exposer,
    sharer: Exposer,
    shared: bool,
    a: Node,
    b: Option<Node>,
    /// Every DATA the sharer sent: (chunk, fragment, payload).
    from_sharer: Vec<(u32, u8, Vec<u8>)>,
    missing_seen: u64,
    /// The smallest REQUEST the sharer got.
    smallest_request: usize,
    /// A's puller is off the network (its sharer serves on): it holds what it holds.
    a_frozen: bool,
}

impl World {
    /// Starts puller B now, pulling from `sources`.
    fn start_b(&mut self, sources: &[SocketAddr], size: usize) {
        let mut b = Node::new(&mut self.net, addr(PULLER_B), sources, self.root, size);
        let now = self.net.now;
        b.step(&mut self.net, now);
        self.b = Some(b);
    }

    /// Seeds past 2 run over a lossy, reordering, duplicating link.
    fn new(seed: u64, size: usize) -> Self {
        let link = if seed > 2 {
            LinkConfig {
                loss: 0.03,
                jitter: Duration::from_millis(3),
                duplicate: 0.01,
                ..Default::default()
            }
        } else {
            LinkConfig::default()
        };
        let mut net = SimNet::new(seed, link);
        let data = Arc::new(content(seed, size));
        let cvs = merkle::cvs_of_bytes(&data);
        let root = merkle::root_from_cvs(&cvs, size as u64);
        let k = net.static_key();
        let mut origin = Exposer::with_rng(
            ExposerConfig::default(),
            k.private,
            net.now,
            net.machine_rng(),
        );
        origin.add_exposure("file.bin", Box::new(MemSource(data.clone())), cvs.clone());
        // The sharer's Noise key is its own.
        let k = net.static_key();
        let sharer = Exposer::with_rng(
            ExposerConfig::default(),
            k.private,
            net.now,
            net.machine_rng(),
        );
        let a = Node::new(&mut net, addr(PULLER_A), &[addr(ORIGIN)], root, size);
        World {
            net,
            data,
            root,
            cvs,
            origin,
            sharer,
            shared: false,
            a,
            b: None,
            from_sharer: Vec::new(),
            missing_seen: 0,
            a_frozen: false,
            smallest_request: usize::MAX,
        }
    }

    /// Once A has the origin's session and the outboard: the sharer relays it.
    fn maybe_share(&mut self) {
        if self.shared {
            return;
        }
        let p = &self.a.sw.sources()[0].puller;
        let (Some((id, key)), Some(cvs)) = (p.relay_keys(), p.cvs()) else {
            return;
        };
        assert_eq!(*cvs, self.cvs, "A's outboard is the origin's");
        let src = PartialSource {
            inner: Growing(self.a.out.clone()),
            have: self.a.have.clone(),
        };
        let info =
            self.sharer
                .add_relayed_exposure("file.bin", Box::new(src), cvs.to_vec(), id, key);
        assert_eq!(info.root, self.root);
        self.shared = true;
    }

    fn run(&mut self, limit: Duration, stop: impl Fn(&World) -> bool) {
        let end = self.net.now + limit;
        let mut iters = 0u64;
        while self.net.now < end && !stop(self) {
            iters += 1;
            assert!(iters < 5_000_000, "simulation does not progress");
            let now = self.net.now;
            while let Some(d) = self.net.pop_due() {
                if d.to == addr(ORIGIN) {
                    self.origin.handle(now, d.from, &d.data);
                } else if d.to == addr(SHARER) {
                    if wire::peek_type(&d.data) == Ok(PacketType::Request) {
                        self.smallest_request = self.smallest_request.min(d.data.len());
                    }
                    self.sharer.handle(now, d.from, &d.data);
                } else if d.to == self.a.addr && !self.a_frozen {
                    self.a.sw.handle(now, d.from, &d.data);
                } else if let Some(b) = self.b.as_mut().filter(|b| b.addr == d.to) {
                    if d.from == addr(SHARER) {
                        if let Ok(p) = Data::decode(&d.data) {
                            if p.object == Object::Content {
                                self.from_sharer
                                    .push((p.chunk, p.fragment, p.payload.to_vec()));
                            }
                        }
                        if wire::peek_type(&d.data) == Ok(PacketType::Missing) {
                            assert!(Missing::decode(&d.data).is_ok());
                            // No amplification: never more than any REQUEST.
                            assert!(
                                d.data.len() <= self.smallest_request,
                                "a {}-byte MISSING, a {}-byte REQUEST",
                                d.data.len(),
                                self.smallest_request
                            );
                            self.missing_seen += 1;
                        }
                    }
                    b.sw.handle(now, d.from, &d.data);
                }
            }
            if !self.a_frozen {
                self.a.step(&mut self.net, now);
            }
            if let Some(b) = self.b.as_mut() {
                b.step(&mut self.net, now);
            }
            self.maybe_share();
            while let Some(t) = self.origin.poll_transmit() {
                self.net.send(addr(ORIGIN), &t);
            }
            while let Some(t) = self.sharer.poll_transmit() {
                self.net.send(addr(SHARER), &t);
            }
            let timers = [
                self.a.sw.poll_timeout(),
                self.b.as_ref().and_then(|b| b.sw.poll_timeout()),
            ];
            if !self.net.advance_to_next(timers) {
                break;
            }
        }
    }

    /// Each DATA fragment the sharer sent is the origin's sealing of that chunk (under
    /// the origin's exposure id and content key, in B's cipher), byte for byte.
    fn assert_sealing_is_the_origins(&self, cipher: Cipher) {
        let p = &self.a.sw.sources()[0].puller;
        let (id, key) = p.relay_keys().unwrap();
        let origin_id = self.origin.exposures().next().unwrap().id;
        assert_eq!(id, origin_id, "the sharer names the origin's exposure");
        let cc = ContentCipher::with(cipher, &key, id, self.data.len() as u64);
        assert!(!self.from_sharer.is_empty(), "the sharer sent nothing");
        for (chunk, frag, payload) in &self.from_sharer {
            let index = *chunk as u64;
            let at = index as usize * CHUNK_SIZE;
            let mut ct =
                self.data[at..at + merkle::chunk_len(index, self.data.len() as u64)].to_vec();
            cc.seal(Object::Content, index, &mut ct);
            let per = wire::DEFAULT_MAX_DATAGRAM - DATA_HEADER_LEN;
            let off = *frag as usize * per;
            assert_eq!(
                &ct[off..off + payload.len()],
                &payload[..],
                "chunk {chunk} fragment {frag} differs from the origin's sealing"
            );
        }
    }
}

#[test]
fn a_finished_sharer_alone_serves_the_origins_bytes() {
    for seed in 1..=3 {
        let size = (1 << 20) + 777;
        let mut w = World::new(seed, size);
        w.run(Duration::from_secs(60), |w| w.a.done);
        assert!(w.a.done, "seed {seed}: A did not finish");
        assert!(
            *w.a.out.lock().unwrap() == *w.data,
            "seed {seed}: A differs"
        );
        assert!(w.shared);
        // B pulls from the sharer alone.
        w.start_b(&[addr(SHARER)], size);
        let origin_out = w.origin.stats.bytes_out;
        w.run(Duration::from_secs(60), |w| {
            w.b.as_ref().is_some_and(|b| b.done)
        });
        let b = w.b.as_ref().unwrap();
        assert!(b.done, "seed {seed}: B did not finish");
        assert!(*b.out.lock().unwrap() == *w.data, "seed {seed}: B differs");
        assert_eq!(
            w.origin.stats.bytes_out, origin_out,
            "seed {seed}: the origin served B"
        );
        assert_eq!(w.sharer.stats.missing_sent, 0, "seed {seed}");
        let cipher = b.sw.stats().cipher.unwrap();
        w.assert_sealing_is_the_origins(cipher);
    }
}

#[test]
fn a_sharer_still_pulling_refuses_what_it_lacks_and_the_origin_serves_it() {
    for seed in 1..=4 {
        let size = 4 << 20;
        let mut w = World::new(seed, size);
        // A has the outboard and a few chunks, no more: B starts beside it.
        w.run(Duration::from_secs(60), |w| w.shared);
        assert!(w.shared, "seed {seed}: A never started sharing");
        assert!(!w.a.done, "seed {seed}: A finished before B started");
        w.start_b(&[addr(ORIGIN), addr(SHARER)], size);
        w.run(Duration::from_secs(120), |w| {
            w.a.done && w.b.as_ref().is_some_and(|b| b.done)
        });
        let b = w.b.as_ref().unwrap();
        assert!(w.a.done && b.done, "seed {seed}: did not finish");
        assert!(
            *w.a.out.lock().unwrap() == *w.data,
            "seed {seed}: A differs"
        );
        assert!(*b.out.lock().unwrap() == *w.data, "seed {seed}: B differs");
        let st = b.sw.stats();
        // Refusals are answered, heard and moved, and drop no source.
        assert!(
            w.sharer.stats.missing_sent > 0,
            "seed {seed}: the sharer refused nothing"
        );
        assert!(w.missing_seen > 0 && st.missing > 0, "seed {seed}");
        assert_eq!(st.sources_dropped, 0, "seed {seed}");
        let served: Vec<u64> = b.sw.sources().iter().map(|s| s.bytes()).collect();
        assert!(
            served[0] > 0 && served[1] > 0,
            "seed {seed}: shares {served:?}"
        );
        let cipher = b.sw.stats().cipher.unwrap();
        w.assert_sealing_is_the_origins(cipher);
    }
}

#[test]
fn a_puller_of_a_sharer_alone_waits_out_what_it_lacks() {
    for seed in [1, 3] {
        let size = 2 << 20;
        let mut w = World::new(seed, size);
        w.run(Duration::from_secs(60), |w| w.shared);
        assert!(w.shared && !w.a.done, "seed {seed}");
        // B has the sharer alone, which lacks most chunks while A holds still.
        w.start_b(&[addr(SHARER)], size);
        w.a_frozen = true;
        w.run(Duration::from_secs(2), |_| false);
        assert!(
            w.sharer.stats.missing_sent > 0,
            "seed {seed}: nothing refused"
        );
        assert!(
            !w.b.as_ref().unwrap().done,
            "seed {seed}: B done without A's chunks"
        );
        w.a_frozen = false;
        w.run(Duration::from_secs(120), |w| {
            w.a.done && w.b.as_ref().is_some_and(|b| b.done)
        });
        let b = w.b.as_ref().unwrap();
        assert!(
            b.done,
            "seed {seed}: B did not finish once A had everything"
        );
        assert!(*b.out.lock().unwrap() == *w.data, "seed {seed}: B differs");
        assert_eq!(b.sw.stats().sources_dropped, 0);
    }
}

#[test]
fn a_missing_for_another_exposure_or_malformed_is_dropped() {
    let size = 16 << 20;
    let mut w = World::new(1, size);
    w.run(Duration::from_secs(60), |w| w.shared);
    w.start_b(&[addr(ORIGIN), addr(SHARER)], size);
    // Both sessions up, the pull well short of its end.
    w.run(Duration::from_secs(10), |w| {
        w.b.as_ref().is_some_and(|b| {
            b.sw.sources()
                .iter()
                .all(|s| s.puller.relay_keys().is_some())
        })
    });
    let b = w.b.as_mut().unwrap();
    assert!(!b.done);
    let before = b.sw.stats();
    let id = w.origin.exposures().next().unwrap().id;
    let mut other = id;
    other[0] ^= 1;
    let now = w.net.now;
    // Another exposure's id: dropped. Truncated and trailing-byte copies: dropped.
    let wrong = Missing {
        exposure: other,
        runs: vec![(0, 64)],
    }
    .encode();
    b.sw.handle(now, addr(SHARER), &wrong);
    let good = Missing {
        exposure: id,
        runs: vec![(0, 64)],
    }
    .encode();
    b.sw.handle(now, addr(SHARER), &good[..good.len() - 1]);
    let mut long = good.clone();
    long.push(0);
    b.sw.handle(now, addr(SHARER), &long);
    let after = b.sw.stats();
    assert_eq!(after.missing, before.missing, "a bad MISSING was taken");
    assert_eq!(after.dropped, before.dropped + 3);
    // A well-formed one for the session is taken (and costs the sharer its grants
    // only, not the pull).
    b.sw.handle(now, addr(SHARER), &good);
    assert_eq!(b.sw.stats().missing, before.missing + 1);
    w.run(Duration::from_secs(120), |w| {
        w.a.done && w.b.as_ref().is_some_and(|b| b.done)
    });
    let b = w.b.as_ref().unwrap();
    assert!(
        b.done && *b.out.lock().unwrap() == *w.data,
        "B did not end exact"
    );
}

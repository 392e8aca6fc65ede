//! Multi-source pulls through the deterministic network simulator: one puller, a
//! `Swarm` of sources of one root (each an exposer with its own key), some of them
//! slow, dying or lying. Every run must end byte-exact, or fail only when no source
//! is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rgtp::bitset::ChunkSet;
use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::merkle::{self, CHUNK_SIZE};
use rgtp::puller::{PullConfig, PullError, PullEvent, Puller, ResumeState};
use rgtp::sim::{LinkConfig, SimNet, SimRng};
use rgtp::source::MemSource;
use rgtp::swarm::Swarm;
use rgtp::wire::{Data, Object};

const PULLER: &str = "198.51.100.7:40000";

fn source_addr(i: usize) -> SocketAddr {
    format!("192.0.2.{}:443", 1 + i).parse().unwrap()
}

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SimRng::new(seed ^ 0xC0FFEE);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

/// How a source behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Honest,
    /// Seals garbage under its own key (chunks open, and do not match the root).
    Reseals,
    /// Damages the ciphertext of every content chunk after sealing (chunks do not open).
    Corrupts,
}

struct Src {
    addr: SocketAddr,
    ex: Exposer,
    kind: Kind,
    /// Gone from the network from this much content on (a dead exposer).
    dies_after: Option<u64>,
    dead: bool,
}

struct World {
    net: SimNet,
    data: Arc<Vec<u8>>,
    root: [u8; 32],
    sources: Vec<Src>,
    puller_addr: SocketAddr,
    out: Vec<u8>,
    written: u64,
    /// Chunks handed out to be stored (each must be new).
    stored: ChunkSet,
    result: Option<Result<(), PullError>>,
}

impl World {
    fn new(seed: u64, link: LinkConfig, size: usize, kinds: &[Kind]) -> Self {
        let mut net = SimNet::new(seed, link);
        let data = Arc::new(content(seed, size));
        let cvs = merkle::cvs_of_bytes(&data);
        let root = merkle::root_from_cvs(&cvs, size as u64);
        let mut sources = Vec::new();
        for (i, &kind) in kinds.iter().enumerate() {
            let key = net.static_key();
            let mut ex = Exposer::with_rng(
                ExposerConfig::default(),
                key.private,
                net.now,
                net.machine_rng(),
            );
            let bytes = if kind == Kind::Reseals {
                // The same size, other bytes; the CVs (and so the root) of the real ones.
                Arc::new(data.iter().map(|b| b ^ 0x5A).collect::<Vec<u8>>())
            } else {
                data.clone()
            };
            ex.add_exposure("file.bin", Box::new(MemSource(bytes)), cvs.clone());
            sources.push(Src {
                addr: source_addr(i),
                ex,
                kind,
                dies_after: None,
                dead: false,
            });
        }
        World {
            net,
            out: vec![0; size],
            written: 0,
            stored: ChunkSet::new(merkle::chunk_count(size as u64)),
            data,
            root,
            sources,
            puller_addr: PULLER.parse().unwrap(),
            result: None,
        }
    }

    /// A swarm over every source, the root pinned.
    fn swarm(&mut self, resume: Option<ChunkSet>, offload: bool) -> Swarm {
        let pullers = (0..self.sources.len())
            .map(|i| {
                let mut c = PullConfig::new(self.sources[i].addr, "file.bin");
                c.expected_root = Some(self.root);
                c.idle_timeout = Duration::from_secs(30);
                c.offload_verify = offload;
                c.resume = resume.clone().map(|have| ResumeState {
                    root: self.root,
                    size: self.data.len() as u64,
                    have,
                });
                Puller::with_rng(c, self.net.now, self.net.machine_rng())
            })
            .collect();
        Swarm::new(pullers)
    }

    fn store(&mut self, index: u64, data: &[u8]) {
        assert!(self.stored.insert(index), "chunk {index} handed out twice");
        let at = index as usize * CHUNK_SIZE;
        self.out[at..at + data.len()].copy_from_slice(data);
        self.written += data.len() as u64;
    }

    /// Runs until the swarm ends, `stop` says so, or `limit` of virtual time.
    fn run(&mut self, sw: &mut Swarm, limit: Duration, stop: impl Fn(&World) -> bool) {
        let end = self.net.now + limit;
        let mut iters = 0u64;
        while self.result.is_none() && self.net.now < end && !stop(self) {
            iters += 1;
            assert!(iters < 5_000_000, "simulation does not progress");
            let now = self.net.now;
            for s in &mut self.sources {
                if s.dies_after.is_some_and(|b| self.written >= b) {
                    s.dead = true;
                }
            }
            while let Some(mut d) = self.net.pop_due() {
                if d.to == self.puller_addr {
                    let from = self.sources.iter().find(|s| s.addr == d.from);
                    if from.is_some_and(|s| s.kind == Kind::Corrupts)
                        && Data::decode(&d.data).is_ok_and(|p| p.object == Object::Content)
                    {
                        if let Some(b) = d.data.last_mut() {
                            *b ^= 0x01;
                        }
                    }
                    sw.handle(now, d.from, &d.data);
                } else if let Some(s) = self.sources.iter_mut().find(|s| s.addr == d.to) {
                    if !s.dead {
                        s.ex.handle(now, d.from, &d.data);
                    }
                }
            }
            if sw.poll_timeout().is_some_and(|t| t <= now) {
                sw.handle_timeout(now);
            }
            while let Some(t) = sw.poll_transmit(now) {
                self.net.send(self.puller_addr, &t);
            }
            while let Some((source, ev)) = sw.poll_event() {
                match ev {
                    PullEvent::Chunk { index, data } => self.store(index, &data),
                    PullEvent::Verify {
                        index,
                        ct,
                        verifier,
                    } => match verifier.verify(index, ct) {
                        Ok(data) => {
                            if sw.chunk_verified(source, index, Ok(data.len()), now) {
                                self.store(index, &data);
                            }
                        }
                        Err(bad) => {
                            sw.chunk_verified(source, index, Err(bad), now);
                        }
                    },
                    PullEvent::Recheck { verifier, stored } => {
                        for index in stored.iter() {
                            let at = index as usize * CHUNK_SIZE;
                            let len = merkle::chunk_len(index, self.out.len() as u64);
                            if !verifier.check_plain(index, &self.out[at..at + len]) {
                                self.stored.remove(index);
                                sw.forget_chunk(index);
                            }
                        }
                        sw.recheck_done(now);
                    }
                    PullEvent::Done => self.result = Some(Ok(())),
                    PullEvent::Failed(e) => self.result = Some(Err(e)),
                    PullEvent::Started { .. } | PullEvent::Missing { .. } => {}
                }
            }
            for s in &mut self.sources {
                while let Some(t) = s.ex.poll_transmit() {
                    if !s.dead {
                        self.net.send(s.addr, &t);
                    }
                }
            }
            if !self.net.advance_to_next([sw.poll_timeout()]) {
                break;
            }
        }
    }

    fn assert_exact(&self, seed: u64) {
        assert_eq!(self.result, Some(Ok(())), "seed {seed}: did not finish");
        assert!(self.out == *self.data, "seed {seed}: content differs");
    }
}

/// Each source's share of the content it delivered first.
fn shares(sw: &Swarm) -> Vec<f64> {
    let total: u64 = sw.sources().iter().map(|s| s.bytes()).sum();
    sw.sources()
        .iter()
        .map(|s| s.bytes() as f64 / total.max(1) as f64)
        .collect()
}

#[test]
fn two_sources_share_the_content_and_no_chunk_comes_twice() {
    for seed in 1..=4 {
        let mut w = World::new(seed, LinkConfig::default(), 4 << 20, &[Kind::Honest; 2]);
        let mut sw = w.swarm(None, seed % 2 == 0);
        w.run(&mut sw, Duration::from_secs(60), |_| false);
        w.assert_exact(seed);
        let sh = shares(&sw);
        for (i, s) in sh.iter().enumerate() {
            assert!(*s > 0.25, "seed {seed}: source {i} carried only {s:.2}");
        }
        let st = sw.stats();
        assert_eq!(st.content_bytes, w.data.len() as u64, "seed {seed}");
        assert_eq!(st.sources_dropped, 0, "seed {seed}");
        // Outside the endgame no chunk is asked of two sources: what arrived twice is
        // at most the endgame's few chunks (1200-byte datagrams off loopback).
        let dup_bytes = st.duplicate_fragments * 1200;
        assert!(
            dup_bytes < w.data.len() as u64 / 8,
            "seed {seed}: {} duplicate fragments",
            st.duplicate_fragments
        );
    }
}

#[test]
fn chunks_spread_in_proportion_to_what_each_source_delivers() {
    let seed = 7;
    let mut w = World::new(seed, LinkConfig::default(), 8 << 20, &[Kind::Honest; 2]);
    // 40 MB/s and 10 MB/s uplinks: the fast one should carry about 80 %.
    w.net.limit_sender(source_addr(0), 40_000_000);
    w.net.limit_sender(source_addr(1), 10_000_000);
    let mut sw = w.swarm(None, false);
    w.run(&mut sw, Duration::from_secs(60), |_| false);
    w.assert_exact(seed);
    let sh = shares(&sw);
    assert!(
        (0.65..0.92).contains(&sh[0]),
        "fast source's share {:.2} (slow {:.2})",
        sh[0],
        sh[1]
    );
    assert!(sh[1] > 0.05, "slow source's share {:.2}", sh[1]);
}

#[test]
fn a_source_that_dies_midway_is_dropped_and_the_others_finish() {
    for seed in 1..=3 {
        // 2 MB/s: the 10 MiB left when it dies take longer than a stall.
        let link = LinkConfig {
            rate: 2_000_000,
            ..Default::default()
        };
        let mut w = World::new(seed, link, 12 << 20, &[Kind::Honest; 3]);
        w.sources[1].dies_after = Some(2 << 20);
        let mut sw = w.swarm(None, false);
        let t0 = w.net.now;
        w.run(&mut sw, Duration::from_secs(60), |_| false);
        w.assert_exact(seed);
        assert_eq!(sw.stats().sources_dropped, 1, "seed {seed}");
        assert_eq!(sw.sources()[1].dropped, Some(PullError::Timeout));
        assert!(sw.sources()[0].dropped.is_none() && sw.sources()[2].dropped.is_none());
        let b: Vec<u64> = sw.sources().iter().map(|s| s.bytes()).collect();
        assert!(b[1] < b[0] && b[1] < b[2], "seed {seed}: {b:?}");
        // The dead source's chunks did not wait for the idle timeout (30 s here).
        let took = w.net.now - t0;
        assert!(took < Duration::from_secs(15), "seed {seed}: {took:?}");
    }
}

#[test]
fn a_lying_source_is_dropped_and_counted_and_the_pull_ends_exact() {
    for (seed, kind) in [(11, Kind::Reseals), (12, Kind::Corrupts)] {
        for offload in [false, true] {
            let mut w = World::new(seed, LinkConfig::default(), 4 << 20, &[Kind::Honest, kind]);
            let mut sw = w.swarm(None, offload);
            w.run(&mut sw, Duration::from_secs(60), |_| false);
            w.assert_exact(seed);
            let liar = &sw.sources()[1];
            assert!(
                matches!(liar.dropped, Some(PullError::BadSource { .. })),
                "{kind:?}: {:?}",
                liar.dropped
            );
            assert_eq!(liar.bytes(), 0, "{kind:?}: a lie was stored");
            assert!(liar.puller.stats.bad_chunks >= 1);
            assert_eq!(sw.stats().sources_dropped, 1);
            assert_eq!(sw.sources()[0].bytes(), w.data.len() as u64);
        }
    }
}

#[test]
fn the_pull_fails_only_when_no_source_is_left() {
    let mut w = World::new(
        5,
        LinkConfig::default(),
        2 << 20,
        &[Kind::Reseals, Kind::Corrupts],
    );
    let mut sw = w.swarm(None, false);
    w.run(&mut sw, Duration::from_secs(60), |_| false);
    assert!(
        matches!(w.result, Some(Err(PullError::BadSource { .. }))),
        "{:?}",
        w.result
    );
    assert_eq!(sw.stats().sources_dropped, 2);
    assert_eq!(w.written, 0);
    // Dead sources: the last one's silence ends it (the connect timeout).
    let mut w = World::new(6, LinkConfig::default(), 2 << 20, &[Kind::Honest; 2]);
    for s in &mut w.sources {
        s.dead = true;
    }
    let mut sw = w.swarm(None, false);
    w.run(&mut sw, Duration::from_secs(60), |_| false);
    assert_eq!(w.result, Some(Err(PullError::Timeout)));
}

#[test]
fn a_pull_interrupted_with_two_sources_resumes_from_a_third() {
    let seed = 21;
    let size = 4 << 20;
    let mut w = World::new(seed, LinkConfig::default(), size, &[Kind::Honest; 3]);
    // Sources 0 and 1 first, until about half is stored.
    let pullers = (0..2)
        .map(|i| {
            let mut c = PullConfig::new(w.sources[i].addr, "file.bin");
            c.expected_root = Some(w.root);
            Puller::with_rng(c, w.net.now, w.net.machine_rng())
        })
        .collect();
    let mut sw = Swarm::new(pullers);
    w.run(&mut sw, Duration::from_secs(60), |w| {
        w.written >= size as u64 / 2
    });
    assert!(w.result.is_none());
    let have = w.stored.clone();
    assert!(sw.sources().iter().all(|s| s.bytes() > 0));
    // Then source 2 alone, from what was stored (one of them damaged since).
    let damaged = have.iter().next().unwrap();
    w.out[damaged as usize * CHUNK_SIZE] ^= 1;
    let mut c = PullConfig::new(w.sources[2].addr, "file.bin");
    c.expected_root = Some(w.root);
    c.resume = Some(ResumeState {
        root: w.root,
        size: size as u64,
        have: have.clone(),
    });
    let mut sw = Swarm::new(vec![Puller::with_rng(c, w.net.now, w.net.machine_rng())]);
    w.run(&mut sw, Duration::from_secs(60), |_| false);
    w.assert_exact(seed);
    let pulled = sw.stats().content_bytes;
    let missing = size as u64 - have.count() * CHUNK_SIZE as u64;
    assert_eq!(
        pulled,
        missing + CHUNK_SIZE as u64,
        "only the missing and the damaged"
    );
}

#[test]
fn a_resumed_multi_source_pull_rechecks_once_and_pulls_only_what_is_missing() {
    let seed = 31;
    let size = 3 << 20;
    let mut w = World::new(seed, LinkConfig::default(), size, &[Kind::Honest; 2]);
    let chunks = merkle::chunk_count(size as u64);
    let mut have = ChunkSet::new(chunks);
    for i in (0..chunks).step_by(3) {
        have.insert(i);
        let at = i as usize * CHUNK_SIZE;
        let len = merkle::chunk_len(i, size as u64);
        w.out[at..at + len].copy_from_slice(&w.data[at..at + len]);
        w.stored.insert(i);
    }
    let mut sw = w.swarm(Some(have.clone()), false);
    w.run(&mut sw, Duration::from_secs(60), |_| false);
    w.assert_exact(seed);
    let missing: u64 = (0..chunks)
        .filter(|&i| !have.contains(i))
        .map(|i| merkle::chunk_len(i, size as u64) as u64)
        .sum();
    assert_eq!(sw.stats().content_bytes, missing);
    assert!(sw.sources().iter().all(|s| s.bytes() > 0));
}

#[test]
fn many_seeds_with_loss_and_reordering() {
    for seed in 100..112 {
        let link = LinkConfig {
            loss: 0.03,
            jitter: Duration::from_millis(3),
            duplicate: 0.01,
            ..Default::default()
        };
        let mut w = World::new(seed, link, 2 << 20, &[Kind::Honest; 3]);
        let mut sw = w.swarm(None, seed % 2 == 0);
        w.run(&mut sw, Duration::from_secs(120), |_| false);
        w.assert_exact(seed);
    }
}

/// A multi-source run reproduces from its seed: the swarm's choices (grants, the
/// endgame, drops) depend on nothing but the simulation.
#[test]
fn a_seed_reproduces_a_multi_source_run() {
    let trace = |seed: u64| {
        let link = LinkConfig {
            loss: 0.02,
            jitter: Duration::from_millis(2),
            ..Default::default()
        };
        let mut w = World::new(
            seed,
            link,
            2 << 20,
            &[Kind::Honest, Kind::Honest, Kind::Corrupts],
        );
        w.net.record_trace();
        let mut sw = w.swarm(None, false);
        w.run(&mut sw, Duration::from_secs(60), |_| false);
        w.assert_exact(seed);
        w.net.trace().to_vec()
    };
    let (a, b) = (trace(77), trace(77));
    assert!(a.len() > 1000);
    rgtp::sim::assert_same_trace(&a, &b, "seed 77, three sources");
}

/// A path that damages datagrams now and then (here 1 %: about one chunk in eight at
/// 1200-byte datagrams fails to open) does not get honest sources dropped as liars.
#[test]
fn path_corruption_does_not_drop_honest_sources() {
    for seed in 200..SEEDS_CORRUPT {
        let link = LinkConfig {
            loss: 0.02,
            corrupt: 0.01,
            ..Default::default()
        };
        let mut w = World::new(seed, link, 4 << 20, &[Kind::Honest; 2]);
        let mut sw = w.swarm(None, seed % 2 == 0);
        w.run(&mut sw, Duration::from_secs(120), |_| false);
        w.assert_exact(seed);
        let st = sw.stats();
        assert!(st.bad_chunks > 0, "seed {seed}: the path damaged nothing");
        assert_eq!(
            st.sources_dropped,
            0,
            "seed {seed}: {:?}",
            sw.sources()
                .iter()
                .map(|s| (
                    s.dropped.clone(),
                    s.puller.stats.bad_chunks,
                    s.bytes() / 16384
                ))
                .collect::<Vec<_>>()
        );
    }
}

const SEEDS_CORRUPT: u64 = 216;

//! File pulls through the deterministic network simulator: one exposer, several
//! pullers, seeded loss, reordering, duplication, corruption, small MTUs, blackouts,
//! exposer restarts and resume. Every run must end with byte-exact content.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rgtp::bitset::ChunkSet;
use rgtp::crypto::Cipher;
use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::fec::FecMode;
use rgtp::merkle::{self, CHUNK_SIZE};
use rgtp::puller::{PullConfig, PullError, PullEvent, Puller, ResumeState};
use rgtp::sim::{assert_same_trace, LinkConfig, SimNet, SimRng};
use rgtp::source::MemSource;

const EXPOSER: &str = "192.0.2.1:443";

fn addr(i: usize) -> SocketAddr {
    format!("198.51.100.{}:{}", 1 + i % 200, 40000 + i)
        .parse()
        .unwrap()
}

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SimRng::new(seed ^ 0xC0FFEE);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

struct PullerSlot {
    addr: SocketAddr,
    p: Puller,
    out: Vec<u8>,
    written: u64,
    result: Option<Result<(), PullError>>,
}

/// Rewrites a datagram in place.
type Tamper = Box<dyn FnMut(&mut Vec<u8>)>;

struct World {
    net: SimNet,
    ex: Exposer,
    ex_key: ([u8; 32], [u8; 32]),
    ex_addr: SocketAddr,
    data: Arc<Vec<u8>>,
    pullers: Vec<PullerSlot>,
    next_addr: usize,
    /// Pullers share one IP address (different ports), as behind a NAT.
    one_ip: bool,
    exposure: [u8; 16],
    /// Rewrites each datagram the exposer sends (an attacker on the path).
    tamper: Option<Tamper>,
}

impl World {
    fn new(seed: u64, link: LinkConfig, size: usize, ex_cfg: ExposerConfig) -> Self {
        // Every state machine draws from a stream of the simulation's seed, so a run
        // reproduces from the seed alone.
        let mut net = SimNet::new(seed, link);
        let key = net.static_key();
        let ex_key = (key.private, key.public);
        let data = Arc::new(content(seed, size));
        let mut w = World {
            ex: Exposer::with_rng(ex_cfg, ex_key.0, net.now, net.machine_rng()),
            net,
            ex_key,
            ex_addr: EXPOSER.parse().unwrap(),
            data,
            pullers: Vec::new(),
            next_addr: 0,
            one_ip: false,
            exposure: [0; 16],
            tamper: None,
        };
        w.expose();
        w
    }

    fn expose(&mut self) {
        let cvs = merkle::cvs_of_bytes(&self.data);
        self.exposure = self
            .ex
            .add_exposure("file.bin", Box::new(MemSource(self.data.clone())), cvs)
            .id;
    }

    /// What an earlier run of a pull of this world's file that stored `have` resumes
    /// from.
    fn resume_state(&self, have: ChunkSet) -> ResumeState {
        let size = self.data.len() as u64;
        let root = merkle::root_from_cvs(&merkle::cvs_of_bytes(&self.data), size);
        ResumeState { root, size, have }
    }

    fn restart_exposer(&mut self, cfg: ExposerConfig) {
        self.ex = Exposer::with_rng(cfg, self.ex_key.0, self.net.now, self.net.machine_rng());
        self.expose();
    }

    fn add_puller(&mut self, cfg: impl FnOnce(&mut PullConfig)) -> usize {
        self.next_addr += 1;
        let at = if self.one_ip {
            format!("198.51.100.1:{}", 40000 + self.next_addr)
                .parse()
                .unwrap()
        } else {
            addr(self.next_addr)
        };
        self.add_puller_at(at, cfg)
    }

    fn add_puller_at(&mut self, at: SocketAddr, cfg: impl FnOnce(&mut PullConfig)) -> usize {
        let i = self.pullers.len();
        let mut c = PullConfig::new(self.ex_addr, "file.bin");
        c.idle_timeout = Duration::from_secs(120);
        cfg(&mut c);
        let size = self.data.len();
        let rng = self.net.machine_rng();
        self.pullers.push(PullerSlot {
            addr: at,
            p: Puller::with_rng(c, self.net.now, rng),
            out: vec![0; size],
            written: 0,
            result: None,
        });
        i
    }

    fn all_finished(&self) -> bool {
        self.pullers.iter().all(|s| s.result.is_some())
    }

    /// Runs until every puller finishes, `until` returns true, or `limit` of virtual time.
    fn run(&mut self, limit: Duration, mut until: impl FnMut(&World) -> bool) {
        let end = self.net.now + limit;
        let mut iters = 0u64;
        while !self.all_finished() && self.net.now < end && !until(self) {
            iters += 1;
            assert!(iters < 20_000_000, "simulation does not progress");
            let now = self.net.now;
            while let Some(d) = self.net.pop_due() {
                if d.to == self.ex_addr {
                    self.ex.handle(now, d.from, &d.data);
                } else if let Some(s) = self.pullers.iter_mut().find(|s| s.addr == d.to) {
                    s.p.handle(now, d.from, &d.data);
                }
            }
            for s in &mut self.pullers {
                if s.p.poll_timeout().is_some_and(|t| t <= now) {
                    s.p.handle_timeout(now);
                }
                while let Some(t) = s.p.poll_transmit(now) {
                    self.net.send(s.addr, &t);
                }
                while let Some(ev) = s.p.poll_event() {
                    match ev {
                        PullEvent::Chunk { index, data } => {
                            let at = index as usize * CHUNK_SIZE;
                            s.out[at..at + data.len()].copy_from_slice(&data);
                            s.written += data.len() as u64;
                        }
                        PullEvent::Verify {
                            index,
                            ct,
                            verifier,
                        } => match verifier.verify(index, ct) {
                            Ok(data) => {
                                let at = index as usize * CHUNK_SIZE;
                                s.out[at..at + data.len()].copy_from_slice(&data);
                                s.written += data.len() as u64;
                                s.p.chunk_verified(index, Ok(data.len()));
                            }
                            Err(bad) => s.p.chunk_verified(index, Err(bad)),
                        },
                        PullEvent::Recheck { verifier, stored } => {
                            for index in stored.iter() {
                                let at = index as usize * CHUNK_SIZE;
                                let len = merkle::chunk_len(index, s.out.len() as u64);
                                if !verifier.check_plain(index, &s.out[at..at + len]) {
                                    s.p.forget_chunk(index);
                                }
                            }
                            s.p.recheck_done();
                        }
                        PullEvent::Done => s.result = Some(Ok(())),
                        PullEvent::Failed(e) => s.result = Some(Err(e)),
                        PullEvent::Started { .. } | PullEvent::Missing { .. } => {}
                    }
                }
            }
            while let Some(t) = self.ex.poll_transmit() {
                match &mut self.tamper {
                    Some(f) => {
                        for d in t.datagrams() {
                            let mut d = d.to_vec();
                            f(&mut d);
                            self.net.send_one(self.ex_addr, t.dest, d);
                        }
                    }
                    None => self.net.send(self.ex_addr, &t),
                }
            }
            let timers: Vec<_> = self.pullers.iter().map(|s| s.p.poll_timeout()).collect();
            if !self.net.advance_to_next(timers) {
                break;
            }
        }
    }

    fn assert_all_exact(&self, seed: u64) {
        for (i, s) in self.pullers.iter().enumerate() {
            assert_eq!(
                s.result,
                Some(Ok(())),
                "seed {seed} puller {i}: did not finish"
            );
            assert!(
                s.out == *self.data,
                "seed {seed} puller {i}: content differs"
            );
        }
    }
}

#[test]
fn clean_pull_is_byte_exact() {
    let mut w = World::new(
        1,
        LinkConfig::default(),
        3 * 1024 * 1024 + 123,
        ExposerConfig::default(),
    );
    w.add_puller(|_| {});
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(1);
    let s = &w.pullers[0].p.stats;
    assert_eq!(s.bad_chunks, 0);
    assert_eq!(s.content_bytes, w.data.len() as u64);
    // Nothing is asked for twice on a clean path (not even the tail).
    assert_eq!(s.duplicate_fragments, 0);
}

/// Content is asked for as soon as all of the outboard has been, not once all of it
/// has arrived: here the outboard's last chunk is lost for as long as no content has
/// come, which would stall a puller that waits for the whole outboard for good.
#[test]
fn content_flows_while_the_outboards_tail_is_recovered() {
    use rgtp::wire::{Data, Object};
    let size = 32 * 1024 * 1024; // 2048 chunks: a 64 KiB outboard, four chunks.
    let mut w = World::new(12, LinkConfig::default(), size, ExposerConfig::default());
    let last_outboard = (size / CHUNK_SIZE * 32 / CHUNK_SIZE - 1) as u32;
    let mut content_seen = false;
    let mut tail_dropped = 0u32;
    let counter = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let dropped = counter.clone();
    w.net.keep = Some(Box::new(move |d: &[u8]| match Data::decode(d) {
        Ok(p) if p.object == Object::Content => {
            content_seen = true;
            true
        }
        Ok(p) if p.object == Object::Outboard && p.chunk == last_outboard && !content_seen => {
            tail_dropped += 1;
            dropped.set(tail_dropped);
            false
        }
        _ => true,
    }));
    w.add_puller(|_| {});
    w.run(Duration::from_secs(60), |_| false);
    assert!(counter.get() > 0, "the outboard's tail was never sent");
    w.assert_all_exact(12);
    assert_eq!(w.pullers[0].p.stats.content_bytes, size as u64);
}

#[test]
fn tiny_and_empty_files() {
    for (seed, size) in [(2u64, 0usize), (3, 1), (4, CHUNK_SIZE), (5, CHUNK_SIZE + 1)] {
        let mut w = World::new(seed, LinkConfig::default(), size, ExposerConfig::default());
        w.add_puller(|_| {});
        w.run(Duration::from_secs(30), |_| false);
        w.assert_all_exact(seed);
    }
}

/// Many seeds of a hostile network: loss up to 30 %, reordering, duplication,
/// corruption and a small MTU, with several pullers at once.
#[test]
fn hostile_networks_many_seeds() {
    let seeds = std::env::var("RGTP_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64u64);
    let mut total_lost = 0;
    let mut total_corrupted = 0;
    for seed in 0..seeds {
        let mut r = SimRng::new(seed * 7919 + 17);
        let small_mtu = r.chance(0.3);
        let link = LinkConfig {
            delay: Duration::from_millis(1 + r.below(40)),
            jitter: Duration::from_millis(r.below(10)),
            loss: r.f64() * 0.30,
            duplicate: r.f64() * 0.05,
            corrupt: r.f64() * 0.02,
            // HELLOs are padded to 1200 bytes (as QUIC's Initial), so that is the
            // smallest path a pull can start on; data may use smaller datagrams.
            mtu: if small_mtu { 1200 } else { 1500 },
            rate: if r.chance(0.5) {
                2_000_000 + r.below(20_000_000)
            } else {
                0
            },
            queue_bytes: 256 * 1024,
        };
        let size = r.below(700_000) as usize;
        let pullers = 1 + r.below(3) as usize;
        let mut w = World::new(seed, link.clone(), size, ExposerConfig::default());
        for _ in 0..pullers {
            w.add_puller(|c| {
                if small_mtu {
                    c.max_datagram = 512;
                }
            });
        }
        w.run(Duration::from_secs(600), |_| false);
        for (i, s) in w.pullers.iter().enumerate() {
            assert_eq!(
                s.result,
                Some(Ok(())),
                "seed {seed} puller {i} link {link:?} size {size}: {:?} net {:?}",
                s.p.stats,
                w.net.stats
            );
        }
        w.assert_all_exact(seed);
        if link.loss > 0.05 && size > 100_000 {
            assert!(w.net.stats.lost > 0, "seed {seed}: the link lost nothing");
        }
        total_lost += w.net.stats.lost;
        total_corrupted += w.net.stats.corrupted;
    }
    assert!(
        total_lost > 1000 && total_corrupted > 10,
        "{total_lost} {total_corrupted}"
    );
}

/// Verification handed to the driver (as rgtp-pull does, on another core) gives the
/// same byte-exact result, corrupted chunks included.
#[test]
fn offloaded_verification_under_corruption_and_loss() {
    let mut bad = 0;
    for seed in 30..38u64 {
        let link = LinkConfig {
            loss: 0.05,
            corrupt: 0.02,
            jitter: Duration::from_millis(3),
            ..Default::default()
        };
        let mut w = World::new(seed, link, 900_000, ExposerConfig::default());
        w.add_puller(|c| c.offload_verify = true);
        w.add_puller(|c| c.offload_verify = true);
        w.run(Duration::from_secs(300), |_| false);
        w.assert_all_exact(seed);
        assert!(w.pullers.iter().all(|s| s.p.verifying() == 0));
        bad += w.pullers.iter().map(|s| s.p.stats.bad_chunks).sum::<u64>();
    }
    assert!(
        bad > 0,
        "no corrupted chunk was caught: the test proves nothing"
    );
}

/// Many pullers behind one address share its rate budget, which must be charged for
/// the bytes sent, not for each request's cap: charging the cap (8 MiB) per request
/// once drained the bucket with small requests and cut them short.
#[test]
fn pullers_behind_one_address_are_not_rate_limited_below_the_source_rate() {
    let size = 2 * 1024 * 1024;
    let ex_cfg = ExposerConfig {
        source_rate: 64 << 20,
        ..Default::default()
    };
    let mut w = World::new(31, LinkConfig::default(), size, ex_cfg);
    w.one_ip = true;
    for _ in 0..20 {
        w.add_puller(|_| {});
    }
    let start = w.net.now;
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(31);
    // 40 MiB at most 64 MiB/s (plus the 64 MiB burst): no request need be cut.
    assert_eq!(w.ex.stats.rate_limited, 0, "{:?}", w.ex.stats);
    assert!(
        w.net.now - start < Duration::from_secs(5),
        "{:?}",
        w.net.now - start
    );
}

#[test]
fn serving_many_pullers_encrypts_each_chunk_once() {
    let size = 2 * 1024 * 1024;
    let mut w = World::new(9, LinkConfig::default(), size, ExposerConfig::default());
    for _ in 0..8 {
        w.add_puller(|_| {});
    }
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(9);
    let chunks = merkle::chunk_count(size as u64);
    let outboard_chunks = merkle::chunk_count(chunks * 32);
    assert_eq!(w.ex.stats.encryptions, chunks + outboard_chunks);
    assert!(w.ex.stats.cache_hits >= 7 * chunks);
}

/// Waits (real time, bounded) until background sealing has filled `store`.
fn wait_sealed(store: &rgtp::sealed::SealedStore) {
    let t0 = std::time::Instant::now();
    while store.sealed_chunks() < store.slots() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        store.sealed_chunks(),
        store.slots(),
        "sealing did not finish"
    );
}

fn sealing_config(cipher: Cipher) -> ExposerConfig {
    ExposerConfig {
        cipher,
        ..Default::default()
    }
}

#[test]
fn sealed_ahead_content_is_served_without_encrypting() {
    for cipher in Cipher::ALL {
        let size = 2 * 1024 * 1024 + 5;
        let mut w = World::new(20, LinkConfig::default(), size, sealing_config(cipher));
        let dir = std::env::temp_dir().join("rgtp-sim-sealed");
        let id = w.exposure;
        let store = w.ex.seal_ahead(&id, &dir, u64::MAX, 2).unwrap();
        wait_sealed(&store);
        for _ in 0..3 {
            w.add_puller(|c| c.ciphers = cipher.bit());
        }
        w.run(Duration::from_secs(60), |_| false);
        w.assert_all_exact(20);
        let chunks = merkle::chunk_count(size as u64);
        // Only the outboard is encrypted while serving; content comes from the store.
        assert_eq!(
            w.ex.stats.encryptions,
            merkle::chunk_count(chunks * 32),
            "{cipher}"
        );
        assert!(w.ex.stats.sealed_reads >= 3 * chunks);
    }
}

#[test]
fn pullers_arriving_before_during_and_after_sealing_get_every_byte() {
    for cipher in Cipher::ALL {
        let size = 3 * 1024 * 1024 + 77;
        let mut w = World::new(21, LinkConfig::default(), size, sealing_config(cipher));
        let chunks = merkle::chunk_count(size as u64);
        let outboard = merkle::chunk_count(chunks * 32);
        // A first puller starts before anything is sealed...
        w.add_puller(|_| {});
        w.run(Duration::from_secs(60), |w| {
            w.pullers[0].written > size as u64 / 3
        });
        let on_demand = w.ex.stats.encryptions;
        assert!(
            on_demand > outboard,
            "{cipher}: the first third was sealed on demand"
        );
        // ...sealing starts and ends in the middle of its pull, and a second puller
        // arrives after it.
        let dir = std::env::temp_dir().join("rgtp-sim-sealed-midway");
        let id = w.exposure;
        let store = w.ex.seal_ahead(&id, &dir, u64::MAX, 2).unwrap();
        wait_sealed(&store);
        w.add_puller(|_| {});
        w.run(Duration::from_secs(60), |_| false);
        w.assert_all_exact(21);
        // Nothing was encrypted after the store was full.
        assert_eq!(w.ex.stats.encryptions, on_demand, "{cipher}");
        assert!(w.ex.stats.sealed_reads >= chunks, "{cipher}");
    }
}

#[test]
fn the_disk_bound_seals_a_prefix_and_the_rest_on_demand() {
    let size = 2 * 1024 * 1024;
    let mut w = World::new(22, LinkConfig::default(), size, ExposerConfig::default());
    let chunks = merkle::chunk_count(size as u64);
    let dir = std::env::temp_dir().join("rgtp-sim-sealed-bound");
    let id = w.exposure;
    let max = 40 * rgtp::sealed::STRIDE + 7;
    let store = w.ex.seal_ahead(&id, &dir, max, 2).unwrap();
    assert_eq!(store.slots(), 40);
    assert!(store.capacity_bytes() <= max);
    wait_sealed(&store);
    w.add_puller(|_| {});
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(22);
    let outboard = merkle::chunk_count(chunks * 32);
    assert_eq!(w.ex.stats.encryptions, chunks - 40 + outboard);
    assert_eq!(w.ex.stats.sealed_reads, 40);
}

#[test]
fn a_puller_without_the_stores_cipher_is_served_on_demand() {
    let size = 1024 * 1024 + 3;
    let cfg = sealing_config(Cipher::Aes256Gcm);
    let mut w = World::new(23, LinkConfig::default(), size, cfg);
    let dir = std::env::temp_dir().join("rgtp-sim-sealed-other");
    let id = w.exposure;
    let store = w.ex.seal_ahead(&id, &dir, u64::MAX, 2).unwrap();
    wait_sealed(&store);
    let p = w.add_puller(|c| c.ciphers = Cipher::ChaCha20Poly1305.bit());
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(23);
    assert_eq!(w.pullers[p].p.stats.cipher, Some(Cipher::ChaCha20Poly1305));
    assert_eq!(w.ex.stats.sealed_reads, 0);
    let chunks = merkle::chunk_count(size as u64);
    assert_eq!(
        w.ex.stats.encryptions,
        chunks + merkle::chunk_count(chunks * 32)
    );
}

#[test]
fn cache_budget_bounds_memory_and_still_serves() {
    let size = 2 * 1024 * 1024;
    let cfg = ExposerConfig {
        cache_bytes: 64 * 1024,
        ..Default::default()
    };
    let mut w = World::new(10, LinkConfig::default(), size, cfg);
    for _ in 0..3 {
        w.add_puller(|_| {});
    }
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(10);
}

/// Bytes per data datagram each puller received (handshake datagrams are few).
fn bytes_per_datagram(w: &World) -> Vec<u64> {
    w.pullers
        .iter()
        .map(|s| s.p.stats.bytes_in / s.p.stats.datagrams_in.max(1))
        .collect()
}

/// A pull between two addresses of this host uses loopback-sized datagrams (a whole
/// sealed chunk in one), whether the exposer sees the puller as 127.x or, on a
/// dual-stack socket, as IPv4-mapped; pulls between hosts keep 1200 bytes, and an
/// exposer's explicit loopback limit holds.
#[test]
fn pulls_on_this_host_use_loopback_sized_datagrams() {
    let loopback = LinkConfig {
        delay: Duration::from_micros(50),
        mtu: 65_535,
        ..Default::default()
    };
    let size = 40 * CHUNK_SIZE;
    let mut w = World::new(21, loopback.clone(), size, ExposerConfig::default());
    w.ex_addr = "127.0.0.1:443".parse().unwrap();
    w.add_puller_at("127.0.0.1:40001".parse().unwrap(), |_| {});
    w.add_puller_at("[::ffff:127.0.0.1]:40002".parse().unwrap(), |_| {});
    w.add_puller_at("[::1]:40003".parse().unwrap(), |_| {});
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(21);
    for (i, b) in bytes_per_datagram(&w).into_iter().enumerate() {
        assert!(b > 10_000, "loopback puller {i}: {b} bytes per datagram");
    }

    let mut w = World::new(22, loopback.clone(), size, ExposerConfig::default());
    w.add_puller(|_| {});
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(22);
    let b = bytes_per_datagram(&w)[0];
    assert!(b <= 1200, "puller on another host: {b} bytes per datagram");

    let capped = ExposerConfig {
        loopback_max_datagram: 1200,
        ..Default::default()
    };
    let mut w = World::new(23, loopback, size, capped);
    w.ex_addr = "127.0.0.1:443".parse().unwrap();
    w.add_puller_at("127.0.0.1:40001".parse().unwrap(), |_| {});
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(23);
    let b = bytes_per_datagram(&w)[0];
    assert!(b <= 1200, "exposer capped at 1200: {b} bytes per datagram");
}

#[test]
fn resume_pulls_only_what_is_missing() {
    let size = 4 * 1024 * 1024;
    let mut w = World::new(11, LinkConfig::default(), size, ExposerConfig::default());
    w.add_puller(|_| {});
    // Stop the first puller once it holds about half of the chunks ("kill -9").
    w.run(Duration::from_secs(60), |w| {
        w.pullers[0].written as usize >= size / 2
    });
    let first = w.pullers.pop().unwrap();
    assert!(first.result.is_none());
    let have = first.p.have().clone();
    let missing_bytes = size as u64 - first.written;
    let resume = w.resume_state(have);
    // The exposer restarts too: resume is keyed by the root, not the exposure id.
    w.restart_exposer(ExposerConfig::default());
    w.add_puller(|c| c.resume = Some(resume));
    w.pullers[0].out = first.out;
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(11);
    let s = &w.pullers[0].p.stats;
    assert_eq!(s.content_bytes, missing_bytes);
    // Wire bytes: missing content plus headers, tags, outboard and handshake (< 6 %).
    assert!(
        (s.bytes_in as f64) < missing_bytes as f64 * 1.06,
        "received {} for {} missing: {:?}",
        s.bytes_in,
        missing_bytes,
        s
    );
}

/// Bytes an earlier run stored were damaged before the resume: they are found and
/// pulled again instead of passing for verified.
#[test]
fn resume_rechecks_stored_chunks() {
    let size = 2 * 1024 * 1024;
    let mut w = World::new(22, LinkConfig::default(), size, ExposerConfig::default());
    w.add_puller(|_| {});
    w.run(Duration::from_secs(60), |w| {
        w.pullers[0].written as usize >= size / 2
    });
    let mut first = w.pullers.pop().unwrap();
    let have = first.p.have().clone();
    let damaged: Vec<u64> = have.iter().take(3).collect();
    for &i in &damaged {
        first.out[i as usize * CHUNK_SIZE + 7] ^= 0x40;
    }
    let resume = w.resume_state(have);
    w.add_puller(|c| c.resume = Some(resume));
    w.pullers[0].out = first.out;
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(22);
}

/// Stored chunks that fail the resume check are asked for once, not once by the
/// re-request path and again by the new-data cursor: the second flight replaced the
/// first and its bytes stayed counted in flight for good, so after an outage the
/// window (back at its minimum) had no room left and the pull stalled until the idle
/// timeout against a working exposer.
#[test]
fn damaged_resumed_chunks_are_asked_for_once_and_survive_an_outage() {
    let size = 4 * 1024 * 1024;
    let chunks = (size / CHUNK_SIZE) as u64;
    let mut w = World::new(23, LinkConfig::default(), size, ExposerConfig::default());
    // A previous run claims every chunk but the first; its part file is zeros there.
    let mut have = ChunkSet::new(chunks);
    for i in 1..chunks {
        have.insert(i);
    }
    let resume = w.resume_state(have);
    w.add_puller(|c| {
        c.idle_timeout = Duration::from_secs(30);
        c.resume = Some(resume);
    });
    // Run until the damaged chunks are being asked for again, then cut the path 1 s.
    w.run(Duration::from_secs(60), |w| {
        w.pullers[0].p.stats.requests >= 3 && w.pullers[0].written > 0
    });
    let t = w.net.now;
    w.net.blackouts.push((t, t + Duration::from_secs(1)));
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(23);
    assert_eq!(
        w.pullers[0].p.inflight_bytes(),
        0,
        "bytes still counted in flight after the pull finished"
    );
}

/// An exposer whose file changed under it serves chunks that never verify: the pull
/// fails with a clear error instead of asking forever.
#[test]
fn content_that_never_verifies_fails_the_pull() {
    let size = 300_000;
    let mut w = World::new(23, LinkConfig::default(), size, ExposerConfig::default());
    let mut changed = (*w.data).clone();
    changed[5 * CHUNK_SIZE + 3] ^= 1;
    let cvs = merkle::cvs_of_bytes(&w.data);
    w.ex.add_exposure("changed.bin", Box::new(MemSource(Arc::new(changed))), cvs);
    let ex_addr = w.ex_addr;
    w.add_puller(|c| *c = PullConfig::new(ex_addr, "changed.bin"));
    w.add_puller(|c| {
        *c = PullConfig::new(ex_addr, "changed.bin");
        c.offload_verify = true;
    });
    w.run(Duration::from_secs(120), |_| false);
    for s in &w.pullers {
        assert_eq!(s.result, Some(Err(PullError::BadContent { chunk: 5 })));
    }
}

#[test]
fn exposer_restart_mid_transfer_pullers_carry_on() {
    let size = 3 * 1024 * 1024;
    let mut w = World::new(12, LinkConfig::default(), size, ExposerConfig::default());
    w.add_puller(|_| {});
    w.add_puller(|_| {});
    w.run(Duration::from_secs(60), |w| {
        w.pullers[0].written as usize > size / 3
    });
    // The process is gone for 2 s (datagrams to it vanish), then comes back.
    let t = w.net.now;
    w.net.blackouts.push((t, t + Duration::from_secs(2)));
    w.restart_exposer(ExposerConfig::default());
    w.run(Duration::from_secs(120), |_| false);
    w.assert_all_exact(12);
    assert!(w.pullers.iter().all(|s| s.p.stats.handshakes >= 2));
}

#[test]
fn long_blackout_then_completion() {
    let size = 2 * 1024 * 1024;
    let link = LinkConfig {
        delay: Duration::from_millis(20),
        ..Default::default()
    };
    let mut w = World::new(13, link, size, ExposerConfig::default());
    w.add_puller(|_| {});
    w.run(Duration::from_secs(60), |w| {
        w.pullers[0].written as usize > size / 4
    });
    let t = w.net.now;
    w.net.blackouts.push((t, t + Duration::from_secs(60)));
    w.run(Duration::from_secs(300), |_| false);
    w.assert_all_exact(13);
    // Backed off during the outage: far fewer requests than one per millisecond.
    assert!(
        w.pullers[0].p.stats.requests < 5_000,
        "{:?}",
        w.pullers[0].p.stats
    );
}

#[test]
fn wrong_pinned_key_is_refused() {
    let mut w = World::new(14, LinkConfig::default(), 100_000, ExposerConfig::default());
    w.add_puller(|c| c.pinned_key = Some([7; 32]));
    w.run(Duration::from_secs(10), |_| false);
    match &w.pullers[0].result {
        Some(Err(PullError::KeyMismatch { expected, got })) => {
            assert_eq!(*expected, [7; 32]);
            assert_eq!(*got, w.ex_key.1);
        }
        other => panic!("expected a key mismatch, got {other:?}"),
    }
    assert_eq!(w.pullers[0].written, 0);
}

#[test]
fn unknown_name_and_wrong_root_are_reported() {
    let mut w = World::new(15, LinkConfig::default(), 100_000, ExposerConfig::default());
    let ex_addr = w.ex_addr;
    w.add_puller(|c| *c = PullConfig::new(ex_addr, "nope.bin"));
    w.add_puller(|c| c.expected_root = Some([1; 32]));
    w.run(Duration::from_secs(10), |_| false);
    assert_eq!(w.pullers[0].result, Some(Err(PullError::NotFound)));
    assert!(matches!(
        w.pullers[1].result,
        Some(Err(PullError::RootMismatch { .. }))
    ));
}

#[test]
fn unreachable_exposer_times_out() {
    let mut w = World::new(16, LinkConfig::default(), 1000, ExposerConfig::default());
    w.ex_addr = "192.0.2.99:443".parse().unwrap();
    let to = "192.0.2.200:443".parse().unwrap();
    let rng = w.net.machine_rng();
    w.pullers.push(PullerSlot {
        addr: addr(0),
        p: Puller::with_rng(
            PullConfig {
                // A peer that never answered is given up on after connect_timeout,
                // however patient the idle timeout (long_blackout_then_completion
                // shows a peer that answered once gets all of it).
                idle_timeout: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(5),
                ..PullConfig::new(to, "file.bin")
            },
            w.net.now,
            rng,
        ),
        out: Vec::new(),
        written: 0,
        result: None,
    });
    let start = w.net.now;
    w.run(Duration::from_secs(30), |_| false);
    assert_eq!(w.pullers[0].result, Some(Err(PullError::Timeout)));
    assert!(!w.pullers[0].p.answered());
    let took = w.net.now - start;
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(7),
        "{took:?}"
    );
}

#[test]
fn retry_cookie_path_under_handshake_load() {
    let cfg = ExposerConfig {
        retry_threshold: 0,
        ..Default::default()
    };
    let mut w = World::new(17, LinkConfig::default(), 500_000, cfg);
    w.add_puller(|_| {});
    w.run(Duration::from_secs(30), |_| false);
    w.assert_all_exact(17);
    assert!(w.ex.stats.retries_sent >= 1);
}

/// Anti-amplification: an attacker spoofing a victim's address gets at most 3x its own
/// bytes sent to the victim, and a stolen token used from another address gets only a
/// reply smaller than the request.
#[test]
fn no_amplification_toward_unvalidated_addresses() {
    let mut w = World::new(
        18,
        LinkConfig::default(),
        1_000_000,
        ExposerConfig::default(),
    );
    w.add_puller(|_| {});
    w.run(Duration::from_secs(30), |_| false);
    w.assert_all_exact(18);
    // Capture a genuine REQUEST by replaying the puller from scratch against a recorder.
    let victim: SocketAddr = "203.0.113.7:9999".parse().unwrap();
    let now = w.net.now;
    let mut sent_to_victim = 0usize;
    let mut received_from_victim = 0usize;
    let mut puller = Puller::new(PullConfig::new(w.ex_addr, "file.bin"), now);
    let real = w.pullers[0].addr;
    let mut requests = Vec::new();
    for _ in 0..50 {
        while let Some(t) = puller.poll_transmit(now) {
            for d in t.datagrams() {
                if d[1] == 1 {
                    // HELLO spoofed from the victim.
                    received_from_victim += d.len();
                    w.ex.handle(now, victim, &d);
                    while let Some(t) = w.ex.poll_transmit() {
                        assert_eq!(t.dest, victim);
                        sent_to_victim += t.contents.len();
                    }
                }
                // Also run the real exchange so the puller produces REQUESTs.
                w.ex.handle(now, real, &d);
                if d[1] == 5 {
                    requests.push(d.to_vec());
                }
            }
        }
        while let Some(t) = w.ex.poll_transmit() {
            for d in t.datagrams() {
                puller.handle(now, w.ex_addr, &d);
            }
        }
    }
    assert!(received_from_victim > 0 && !requests.is_empty());
    assert!(sent_to_victim <= 3 * received_from_victim);
    for r in &requests {
        w.ex.handle(now, victim, r);
        while let Some(t) = w.ex.poll_transmit() {
            assert!(
                t.contents.len() < r.len(),
                "reply to a stolen token is not smaller"
            );
        }
    }
    let mut seen: HashMap<u8, usize> = HashMap::new();
    for r in &requests {
        *seen.entry(r[1]).or_default() += 1;
    }
    assert!(seen.contains_key(&5));
}

#[test]
fn garbage_datagrams_are_dropped_without_effect() {
    let mut w = World::new(19, LinkConfig::default(), 200_000, ExposerConfig::default());
    let mut r = SimRng::new(99);
    let now = w.net.now;
    for _ in 0..20_000 {
        let len = r.below(1400) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
        if len >= 2 && r.chance(0.5) {
            d[0] = 1;
            d[1] = 1 + r.below(7) as u8;
        }
        w.ex.handle(now, addr(5), &d);
    }
    assert_eq!(w.ex.stats.handshakes, 0);
    assert_eq!(w.ex.stats.bytes_out, w.ex.stats.stale_sent * 18);
    w.add_puller(|_| {});
    w.run(Duration::from_secs(30), |_| false);
    w.assert_all_exact(19);
}

/// A long fat path: 40 ms RTT (plus `jitter`, uniform per packet), 200 Mbit/s, 50 ms
/// drop-tail queue.
fn long_fat_link(loss: f64, jitter: Duration) -> LinkConfig {
    LinkConfig {
        delay: Duration::from_millis(20),
        jitter,
        loss,
        rate: 25_000_000,
        queue_bytes: 1_250_000,
        ..Default::default()
    }
}

/// Goodput on a long fat lossy path: deterministic in virtual time, so a floor can be
/// asserted without timing noise.
fn lossy_goodput(seed: u64, loss: f64, size: usize) -> (f64, rgtp::puller::PullStats) {
    goodput(seed, long_fat_link(loss, Duration::ZERO), size)
}

/// One puller's goodput (Mbit/s of content) over `link`, and its stats.
fn goodput(seed: u64, link: LinkConfig, size: usize) -> (f64, rgtp::puller::PullStats) {
    let mut w = World::new(seed, link, size, ExposerConfig::default());
    w.add_puller(|_| {});
    let start = w.net.now;
    let mut next_print = start;
    w.run(Duration::from_secs(600), |w| {
        if std::env::var_os("RGTP_SIM_TRACE").is_some() && w.net.now >= next_print {
            next_print = w.net.now + Duration::from_millis(200);
            let p = &w.pullers[0].p;
            let cc = p.rate_control();
            println!(
                "t={:.2} bw={:.1}Mb win={} infl={} srtt={:?} min={:?} rto={:?} backoff={} written={}",
                (w.net.now - start).as_secs_f64(),
                cc.bandwidth() * 8e-6,
                cc.window(),
                p.inflight_bytes(),
                cc.srtt(),
                cc.min_rtt(),
                cc.rto(),
                cc.backoff,
                w.pullers[0].written
            );
            println!("   {}", p.debug_state(w.net.now));
            println!("   {:?}", cc);
        }
        false
    });
    w.assert_all_exact(seed);
    let secs = (w.net.now - start).as_secs_f64();
    println!("  link {:?}", w.net.stats);
    (size as f64 * 8.0 / secs / 1e6, w.pullers[0].p.stats.clone())
}

#[test]
fn lossy_long_fat_link_goodput() {
    // Floors sit under what this run gives (170-173/167-173/150-154/139-146 and 169-173
    // Mbit/s for the long pull at 10 %; virtual time, but hash-map order varies a little
    // from run to run) so a regression fails loudly and noise does not.
    for (loss, floor, size) in [
        (0.0, 167.0, 64 << 20),
        (0.01, 162.0, 64 << 20),
        (0.05, 142.0, 64 << 20),
        (0.10, 132.0, 64 << 20),
        (0.10, 162.0, 256 << 20),
    ] {
        if let Some(only) = std::env::var_os("RGTP_SIM_ONLY") {
            if only.to_str() != Some(&format!("{loss}/{}", size >> 20)) {
                continue;
            }
        }
        let (mbps, stats) = lossy_goodput(21, loss, size);
        println!("loss {loss}: {mbps:.1} Mbit/s {stats:?}");
        // The tail of a lossy pull is asked for twice, and only the tail: at most
        // about a window of it (here 250-600 fragments of 58 000; asking everything
        // twice would be tens of percent).
        assert!(
            loss < 0.05 || stats.duplicate_fragments > 0,
            "loss {loss}: tail not asked twice: {stats:?}"
        );
        assert!(
            stats.duplicate_fragments < stats.datagrams_in / 20,
            "loss {loss}: more than the tail asked twice: {stats:?}"
        );
        assert!(
            mbps >= floor,
            "loss {loss}: {mbps:.1} Mbit/s < {floor}: {stats:?}"
        );
    }
}

/// A jittery lossy path (40-60 ms RTT, uniform per packet, 2 % loss): the smoothed RTT
/// sits above the minimum with no queue at all, so start-up must not take that plus
/// loss for a full bottleneck. (It once did, and this pull fell from 144 to 65-76 Mbit/s;
/// with 30 ms of jitter and 1 % loss, from 82 to 15.)
#[test]
fn jitter_does_not_end_start_up() {
    let link = long_fat_link(0.02, Duration::from_millis(20));
    let (mbps, _) = goodput(5, link, 64 << 20);
    println!("jitter 20 ms, loss 2 %: {mbps:.1} Mbit/s");
    // 137-145 in runs of this and the earlier start-up rule; 65-76 with the regression.
    assert!(mbps >= 110.0, "{mbps:.1} Mbit/s");
}

/// A path that reorders (every packet delayed by 0-30 ms at random, so packets sent
/// 1 ms apart swap often) and loses nothing: the reorder window must widen until
/// late fragments stop being asked for twice. With the fixed min RTT / 4 window
/// (10 ms here) this pull asked for 15 500 of its 58 000 fragments again and made
/// 106 Mbit/s; widening on each spurious loss, 150 Mbit/s and 230-570 asked again.
#[test]
fn reordering_widens_the_reorder_window() {
    let link = long_fat_link(0.0, Duration::from_millis(30));
    let (mbps, st) = goodput(5, link, 64 << 20);
    println!("jitter 30 ms: {mbps:.1} Mbit/s {st:?}");
    assert!(st.spurious_losses > 0, "{st:?}");
    assert!(
        st.rerequested_fragments < st.datagrams_in / 50,
        "late fragments still asked for again: {st:?}"
    );
    assert!(mbps >= 125.0, "{mbps:.1} Mbit/s");
}

/// Two pullers on a lossy, reordering, duplicating link: the trace of every datagram
/// sent, as `SimNet::trace` records it.
fn lossy_pull_trace(seed: u64) -> Vec<u64> {
    let link = LinkConfig {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(3),
        loss: 0.08,
        duplicate: 0.01,
        ..Default::default()
    };
    let mut w = World::new(seed, link, 700_000, ExposerConfig::default());
    w.net.record_trace();
    w.add_puller(|_| {});
    w.add_puller(|_| {});
    w.run(Duration::from_secs(120), |_| false);
    w.assert_all_exact(seed);
    assert!(w.net.stats.lost > 0, "seed {seed}: the link lost nothing");
    w.net.trace().to_vec()
}

/// Any failure reproduces from its seed: a seed run twice sends the same datagrams,
/// byte for byte, at the same virtual times (exposure ids, keys, tokens, Noise
/// ephemerals and every retransmission decision included); another seed does not.
#[test]
fn a_seed_reproduces_its_run() {
    let a = lossy_pull_trace(77);
    assert!(a.len() > 100, "{} datagrams", a.len());
    assert_same_trace(&a, &lossy_pull_trace(77), "seed 77 twice");
    assert_ne!(a, lossy_pull_trace(78), "seeds 77 and 78 ran alike");
}

/// One pull of `size` bytes over the long fat path with `loss` both ways, repair
/// fragments as `fec` says: every byte checked; the puller's and exposer's counters.
fn heavy_loss_pull(
    seed: u64,
    loss: f64,
    size: usize,
    fec: FecMode,
) -> (rgtp::puller::PullStats, rgtp::exposer::ExposerStats, f64) {
    let mut w = World::new(
        seed,
        long_fat_link(loss, Duration::ZERO),
        size,
        ExposerConfig::default(),
    );
    w.add_puller(|c| {
        c.fec = fec;
        // At 50 % each way a HELLO and its WELCOME both cross one time in four.
        c.connect_timeout = Duration::from_secs(120);
    });
    let start = w.net.now;
    let mut next_print = start;
    w.run(Duration::from_secs(900), |w| {
        if std::env::var_os("RGTP_SIM_TRACE").is_some() && w.net.now >= next_print {
            next_print = w.net.now + Duration::from_millis(500);
            let p = &w.pullers[0].p;
            let cc = p.rate_control();
            println!(
                "t={:.2} bw={:.1}Mb win={} infl={} srtt={:?} written={} {}",
                (w.net.now - start).as_secs_f64(),
                cc.bandwidth() * 8e-6,
                cc.window(),
                p.inflight_bytes(),
                cc.srtt(),
                w.pullers[0].written,
                p.debug_state(w.net.now)
            );
            println!("   {:?}", cc);
        }
        false
    });
    w.assert_all_exact(seed);
    let secs = (w.net.now - start).as_secs_f64();
    let mbps = size as f64 * 8.0 / secs / 1e6;
    (w.pullers[0].p.stats.clone(), w.ex.stats.clone(), mbps)
}

/// Heavy loss on both directions (30 % and 50 %): byte-exact with repair fragments
/// (`--fec auto`, the default) and without (`--fec off`), and repair cuts what is
/// asked for again (counts, not times).
#[test]
fn heavy_loss_repair_fragments_cut_rerequests() {
    for (seed, loss) in [(41u64, 0.3), (42, 0.5)] {
        // RGTP_SIM_HEAVY_MIB: a longer pull, to look at rates (printed).
        let size = std::env::var("RGTP_SIM_HEAVY_MIB")
            .ok()
            .and_then(|m| m.parse::<usize>().ok())
            .map_or(4 << 20, |m| m << 20);
        let (off, ex_off, mbps_off) = heavy_loss_pull(seed, loss, size, FecMode::Off);
        let (auto, ex_auto, mbps_auto) = heavy_loss_pull(seed, loss, size, FecMode::Auto);
        println!(
            "loss {loss}: off {mbps_off:.1} Mbit/s, {} asked again; auto {mbps_auto:.1} Mbit/s, \
             {} asked again, {} chunks rebuilt, {} repair in, {} surplus",
            off.rerequested_fragments,
            auto.rerequested_fragments,
            auto.chunks_repaired,
            auto.repair_fragments,
            auto.surplus_repair
        );
        assert_eq!(off.repair_fragments, 0);
        assert_eq!(ex_off.repair_fragments_out, 0);
        assert!(auto.chunks_repaired > 100, "loss {loss}: {auto:?}");
        // Repair is computed once per chunk (and then again only for more of it).
        let chunks = size.div_ceil(CHUNK_SIZE) as u64 + 1;
        assert!(ex_auto.repair_encodes <= 3 * chunks, "{ex_auto:?}");
        assert!(
            auto.rerequested_fragments * 2 < off.rerequested_fragments,
            "loss {loss}: repair did not cut re-requests: auto {auto:?} off {off:?}"
        );
    }
}

/// A clean path asks for no repair at all with `--fec auto`.
#[test]
fn clean_path_asks_for_no_repair() {
    let (st, ex, _) = heavy_loss_pull(43, 0.0, 4 << 20, FecMode::Auto);
    assert_eq!(st.repair_fragments, 0, "{st:?}");
    assert_eq!(ex.repair_fragments_out, 0, "{ex:?}");
    assert_eq!(ex.repair_encodes, 0, "{ex:?}");
}

/// A forged repair fragment fails the chunk's AEAD, as a forged data fragment does:
/// the chunk is asked for again, counts toward no failure, and the pull ends
/// byte-exact. Chunk 5 loses five data fragments on the way and its repair fragments
/// are altered the first time they are sent.
#[test]
fn a_forged_repair_fragment_fails_the_chunk_and_is_asked_again() {
    let mut w = World::new(44, LinkConfig::default(), 1 << 20, ExposerConfig::default());
    let is_chunk5 =
        |d: &[u8]| d.len() > 24 && d[1] == 6 && d[18] == 0 && d[19..23] == 5u32.to_le_bytes();
    let mut dropped = 0;
    w.net.keep = Some(Box::new(move |d: &[u8]| {
        if is_chunk5(d) && d[23] < 5 && dropped < 5 {
            dropped += 1;
            return false;
        }
        true
    }));
    let mut forged = 0;
    w.tamper = Some(Box::new(move |d: &mut Vec<u8>| {
        if is_chunk5(d) && d[23] >= 64 && forged < 14 {
            forged += 1;
            d[30] ^= 0x55;
        }
    }));
    w.add_puller(|c| c.fec = FecMode::Fixed { k: 14, r: 14 });
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(44);
    let st = &w.pullers[0].p.stats;
    assert_eq!(st.bad_chunks, 1, "{st:?}");
    assert!(st.chunks_repaired >= 1, "{st:?}");
}

/// Repair fragments are computed once per chunk, from the sealed bytes, and shared:
/// eight pullers asking 4 repair fragments per 14 cost one encryption and one repair
/// computation per chunk.
#[test]
fn repair_fragments_are_computed_once_for_many_pullers() {
    let size = 2 * 1024 * 1024;
    let mut w = World::new(10, LinkConfig::default(), size, ExposerConfig::default());
    for _ in 0..8 {
        w.add_puller(|c| c.fec = FecMode::Fixed { k: 14, r: 4 });
    }
    w.run(Duration::from_secs(60), |_| false);
    w.assert_all_exact(10);
    let chunks = merkle::chunk_count(size as u64);
    let outboard_chunks = merkle::chunk_count(chunks * 32);
    assert_eq!(w.ex.stats.encryptions, chunks + outboard_chunks);
    assert_eq!(w.ex.stats.repair_encodes, chunks + outboard_chunks);
    // Every puller got its 4 per chunk (14 fragments at 1200-byte datagrams).
    assert!(
        w.ex.stats.repair_fragments_out >= 8 * 4 * chunks,
        "{:?}",
        w.ex.stats
    );
}

//! A deterministic network for testing the sans-IO state machines: a virtual clock and
//! a seeded link that loses, duplicates, reorders, corrupts and MTU-drops datagrams,
//! and can black out. Any failure reproduces from its seed.
//!
//! That holds because nothing else varies between runs: the link draws from a
//! [`SimRng`] seeded by the seed, and every state machine a test builds draws its ids,
//! keys, nonces and Noise ephemerals from a [`machine_rng`](SimNet::machine_rng) stream
//! derived from the same seed (built with `Exposer::with_rng`, `Puller::with_rng` or
//! `Endpoint::with_rng`; static keys from [`static_key`](SimNet::static_key)), never
//! from the OS. The state machines keep no hash-map order that could show in what they
//! send, and time is only the virtual clock. [`SimNet::record_trace`] records what was
//! sent, so a test can check that a seed run twice gives the same trace.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::keys::StaticKey;
use crate::rng::Rng;
use crate::transmit::Transmit;

/// SplitMix64: tiny, fast, good enough for test randomness, and fully reproducible.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.f64() < p
    }
}

/// Panics, naming the first datagram where they part, unless traces `a` and `b` (from
/// [`SimNet::trace`]) are the same.
pub fn assert_same_trace(a: &[u64], b: &[u64], ctx: &str) {
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!(
            "{ctx}: the runs part at datagram {i} (of {} and {})",
            a.len(),
            b.len()
        );
    }
    assert_eq!(a.len(), b.len(), "{ctx}: one run sent more datagrams");
}

/// What the link does to each datagram.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub delay: Duration,
    /// Extra uniform random delay (reorders datagrams).
    pub jitter: Duration,
    pub loss: f64,
    pub duplicate: f64,
    /// Probability that one random bit of a datagram flips.
    pub corrupt: f64,
    /// Datagrams larger than this vanish (as on a path with a small MTU).
    pub mtu: usize,
    /// Bytes per second; 0 for unlimited. Excess beyond `queue_bytes` is dropped.
    pub rate: u64,
    pub queue_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(5),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            mtu: 65_535,
            rate: 0,
            queue_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct LinkStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub queue_drops: u64,
    pub mtu_drops: u64,
    pub blackout_drops: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

/// A datagram in flight.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// Decides per datagram whether the link carries it.
pub type KeepFilter = Box<dyn FnMut(&[u8]) -> bool>;

pub struct SimNet {
    pub now: Instant,
    pub rng: SimRng,
    pub link: LinkConfig,
    /// Datagrams sent while `now` is inside a blackout window are lost.
    pub blackouts: Vec<(Instant, Instant)>,
    /// A test's targeted loss: datagrams for which it returns false are lost.
    pub keep: Option<KeepFilter>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    seq: u64,
    /// When the rate-limited link is next free.
    link_free_at: Instant,
    /// When the simulation began: trace times are offsets from it.
    start: Instant,
    /// One digest per datagram offered to the link, once `record_trace` was called.
    trace: Option<Vec<u64>>,
    /// The parent of every state machine's random source.
    machines: Rng,
    /// Senders with an uplink of their own: (address, bytes per second, when free).
    uplinks: Vec<(SocketAddr, u64, Instant)>,
    pub stats: LinkStats,
}

impl SimNet {
    pub fn new(seed: u64, link: LinkConfig) -> Self {
        let now = Instant::now();
        Self {
            now,
            rng: SimRng::new(seed),
            link,
            blackouts: Vec::new(),
            keep: None,
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            link_free_at: now,
            start: now,
            trace: None,
            machines: Rng::seeded_for_simulation(seed),
            uplinks: Vec::new(),
            stats: LinkStats::default(),
        }
    }

    /// A random source for one state machine, derived from the simulation's seed: each
    /// call gives another stream, and a run that asks in the same order gets the same
    /// streams. Deterministic and so insecure: for simulation only.
    pub fn machine_rng(&mut self) -> Rng {
        self.machines.fork()
    }

    /// Gives `from` an uplink of its own at `rate` bytes per second (before the shared
    /// link; what exceeds the link's `queue_bytes` of backlog is dropped), e.g. a slow
    /// source among fast ones.
    pub fn limit_sender(&mut self, from: SocketAddr, rate: u64) {
        self.uplinks.retain(|u| u.0 != from);
        self.uplinks.push((from, rate.max(1), self.now));
    }

    /// A static key derived from the simulation's seed (see `machine_rng`).
    pub fn static_key(&mut self) -> StaticKey {
        StaticKey::from_private(self.machines.bytes())
    }

    /// Starts recording a trace: for every datagram offered to the link from now on,
    /// a digest of its send time (as an offset from the simulation's start), source,
    /// destination and bytes. Two runs behave the same exactly when their traces are
    /// equal, which is how a test checks that a seed reproduces its run.
    pub fn record_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// The trace recorded so far (empty unless `record_trace` was called).
    pub fn trace(&self) -> &[u64] {
        self.trace.as_deref().unwrap_or(&[])
    }

    fn note(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let at = self.now.saturating_duration_since(self.start).as_nanos() as u64;
        if let Some(trace) = &mut self.trace {
            let mut h = blake3::Hasher::new();
            h.update(&at.to_le_bytes());
            h.update(from.to_string().as_bytes());
            h.update(b" ");
            h.update(to.to_string().as_bytes());
            h.update(b" ");
            h.update(data);
            let d = h.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&d.as_bytes()[..8]);
            trace.push(u64::from_le_bytes(first));
        }
    }

    fn in_blackout(&self) -> bool {
        self.blackouts
            .iter()
            .any(|&(a, b)| self.now >= a && self.now < b)
    }

    /// Puts every datagram of a transmit on the link, sent from `from`.
    pub fn send(&mut self, from: SocketAddr, t: &Transmit) {
        for d in t.datagrams() {
            self.send_one(from, t.dest, d.to_vec());
        }
    }

    pub fn send_one(&mut self, from: SocketAddr, to: SocketAddr, mut data: Vec<u8>) {
        self.stats.sent += 1;
        if self.trace.is_some() {
            self.note(from, to, &data);
        }
        if data.len() > self.link.mtu {
            self.stats.mtu_drops += 1;
            return;
        }
        if self.in_blackout() || self.keep.as_mut().is_some_and(|keep| !keep(&data)) {
            self.stats.blackout_drops += 1;
            return;
        }
        if self.rng.chance(self.link.loss) {
            self.stats.lost += 1;
            return;
        }
        let mut depart = self.now;
        if let Some(u) = self.uplinks.iter_mut().find(|u| u.0 == from) {
            let start = u.2.max(self.now);
            let backlog = start.saturating_duration_since(self.now).as_secs_f64() * u.1 as f64;
            if backlog as usize + data.len() > self.link.queue_bytes {
                self.stats.queue_drops += 1;
                return;
            }
            u.2 = start + Duration::from_secs_f64(data.len() as f64 / u.1 as f64);
            depart = u.2;
        }
        if self.link.rate > 0 {
            let start = self.link_free_at.max(depart);
            let backlog =
                start.saturating_duration_since(self.now).as_secs_f64() * self.link.rate as f64;
            if backlog as usize + data.len() > self.link.queue_bytes {
                self.stats.queue_drops += 1;
                return;
            }
            let ser = Duration::from_secs_f64(data.len() as f64 / self.link.rate as f64);
            self.link_free_at = start + ser;
            depart = self.link_free_at;
        }
        if self.rng.chance(self.link.corrupt) && !data.is_empty() {
            let bit = self.rng.below(data.len() as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.stats.corrupted += 1;
        }
        let copies = if self.rng.chance(self.link.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if self.link.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(self.rng.below(self.link.jitter.as_nanos() as u64))
            };
            let at = depart + self.link.delay + jitter;
            let slot = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
            };
            self.slots[slot] = Some(InFlight {
                from,
                to,
                data: data.clone(),
            });
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq, slot)));
        }
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Pops the next datagram due at or before `now`.
    pub fn pop_due(&mut self) -> Option<InFlight> {
        let &Reverse((t, _, slot)) = self.queue.peek()?;
        if t > self.now {
            return None;
        }
        self.queue.pop();
        self.free.push(slot);
        self.stats.delivered += 1;
        self.slots[slot].take()
    }

    /// Advances the clock to the next arrival or the earliest of `timers`, whichever
    /// comes first (10 us on when that is not later than now, so a driving loop always
    /// progresses). False when nothing is pending: the loop is done.
    pub fn advance_to_next(&mut self, timers: impl IntoIterator<Item = Option<Instant>>) -> bool {
        let next = timers
            .into_iter()
            .flatten()
            .chain(self.next_arrival())
            .min();
        match next {
            Some(t) if t > self.now => self.now = t,
            Some(_) => self.now += Duration::from_micros(10),
            None => return false,
        }
        true
    }

    /// Advances the clock to `t` (never backwards).
    pub fn advance_to(&mut self, t: Instant) {
        if t > self.now {
            self.now = t;
        }
    }
}

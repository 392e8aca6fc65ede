//! The link model: pure, clock-free, deterministic.
//!
//! One [`LinkDir`] models one direction of the link. For each packet offered at
//! virtual time `now_ns` it decides, in this order:
//!
//! 1. **Queue admission** (drop-tail). The bottleneck is a departure-time model:
//!    the link is busy until `next_free_ns`; the bytes still waiting in front of a
//!    new packet are `(next_free_ns - now) * rate`. If those plus the packet exceed
//!    the queue limit, the packet is dropped (`drop_queue`). An empty link always
//!    accepts a packet, however large.
//! 2. **Serialization.** An accepted packet leaves the bottleneck at
//!    `max(now, next_free) + len*8/rate` (instantaneous when the rate is 0 = unlimited).
//! 3. **Loss on the wire.** The Gilbert-Elliott chain (when configured) steps once per
//!    packet and may drop it (`drop_burst`); otherwise independent random loss may drop
//!    it (`drop_random`). A lost packet has still used its serialization time, as on a
//!    real lossy link, so goodput at loss p is at most `(1-p) * rate`.
//! 4. **Propagation.** A surviving packet is delivered at `tx_done + delay`.
//!
//! Because the delay is constant per direction and departures are FIFO, delivery
//! times never decrease: a plain FIFO ([`DelayLine`]) is an ordered timer queue.
//!
//! Random loss and the Gilbert-Elliott chain draw from two separate seeded RNG
//! streams, so the random-loss pattern for a given seed does not change when burst
//! loss is switched on or off, and every run with the same seed and the same packet
//! sequence makes the same decisions.

use std::collections::VecDeque;

/// xoshiro256** seeded through splitmix64. Small, fast, good enough for loss draws.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (p <= 0: never, p >= 1: always). Always consumes one draw.
    pub fn chance(&mut self, p: f64) -> bool {
        let u = self.next_f64();
        u < p
    }
}

/// Gilbert-Elliott burst-loss parameters (probabilities in [0, 1], evaluated per packet).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GilbertElliott {
    /// P(good -> bad) per packet.
    pub p_good_bad: f64,
    /// P(bad -> good) per packet.
    pub p_bad_good: f64,
    /// Loss probability while in the bad state (1.0 = classic Gilbert).
    pub loss_bad: f64,
    /// Loss probability while in the good state (usually 0; random loss is separate).
    pub loss_good: f64,
}

impl GilbertElliott {
    /// Stationary probability of the bad state.
    pub fn pi_bad(&self) -> f64 {
        let d = self.p_good_bad + self.p_bad_good;
        if d <= 0.0 {
            0.0
        } else {
            self.p_good_bad / d
        }
    }
    /// Long-run loss fraction caused by the chain.
    pub fn mean_loss(&self) -> f64 {
        let pb = self.pi_bad();
        pb * self.loss_bad + (1.0 - pb) * self.loss_good
    }
}

/// Configuration of one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct DirConfig {
    /// One-way propagation delay.
    pub delay_ns: u64,
    /// Bottleneck rate in bit/s; 0 = unlimited (no serialization, no queue).
    pub rate_bps: u64,
    /// Drop-tail queue limit in bytes (only meaningful with a rate).
    pub queue_bytes: u64,
    /// Independent random loss probability in [0, 1].
    pub loss: f64,
    /// Optional burst loss.
    pub ge: Option<GilbertElliott>,
}

impl Default for DirConfig {
    fn default() -> Self {
        DirConfig {
            delay_ns: 0,
            rate_bps: 0,
            queue_bytes: 0,
            loss: 0.0,
            ge: None,
        }
    }
}

/// What happened to an offered packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver at this virtual time (ns).
    Deliver(u64),
    DropQueue,
    DropBurst,
    DropRandom,
}

/// Counters of one direction. `pkts_in = accepted + drop_queue`, and
/// `accepted = delivered-later + drop_burst + drop_random` (the I/O layer counts
/// what it actually wrote as `fwd_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub pkts_in: u64,
    pub bytes_in: u64,
    /// Packets that passed the queue (then possibly lost on the wire).
    pub pkts_passed_queue: u64,
    /// Packets scheduled for delivery (passed queue and wire loss).
    pub pkts_scheduled: u64,
    pub bytes_scheduled: u64,
    pub drop_random: u64,
    pub drop_random_bytes: u64,
    pub drop_burst: u64,
    pub drop_burst_bytes: u64,
    pub drop_queue: u64,
    pub drop_queue_bytes: u64,
    /// Number of good->bad transitions of the Gilbert-Elliott chain.
    pub ge_bad_episodes: u64,
    /// Packets that were offered while the chain was in the bad state.
    pub ge_pkts_in_bad: u64,
    /// Largest backlog (bytes waiting ahead of a packet, plus that packet) seen.
    pub max_backlog_bytes: u64,
}

/// One direction of the emulated link.
#[derive(Clone, Debug)]
pub struct LinkDir {
    cfg: DirConfig,
    rng_loss: Rng,
    rng_ge: Rng,
    ge_bad: bool,
    next_free_ns: u64,
    last_deliver_ns: u64,
    pub counters: Counters,
}

impl LinkDir {
    pub fn new(cfg: DirConfig, seed: u64) -> Self {
        // Two independent streams derived from the seed.
        let mut x = seed;
        let s1 = splitmix64(&mut x);
        let s2 = splitmix64(&mut x);
        LinkDir {
            cfg,
            rng_loss: Rng::new(s1),
            rng_ge: Rng::new(s2),
            ge_bad: false,
            next_free_ns: 0,
            last_deliver_ns: 0,
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &DirConfig {
        &self.cfg
    }

    /// Serialization time of `len` bytes at the configured rate (ceil, ns).
    pub fn tx_time_ns(&self, len: usize) -> u64 {
        if self.cfg.rate_bps == 0 {
            return 0;
        }
        let bits = len as u128 * 8 * 1_000_000_000;
        bits.div_ceil(self.cfg.rate_bps as u128) as u64
    }

    /// Bytes waiting in the bottleneck at `now_ns` (not counting a new packet).
    pub fn backlog_bytes(&self, now_ns: u64) -> u64 {
        if self.cfg.rate_bps == 0 || self.next_free_ns <= now_ns {
            return 0;
        }
        let wait = (self.next_free_ns - now_ns) as u128;
        (wait * self.cfg.rate_bps as u128 / 8 / 1_000_000_000) as u64
    }

    /// Offer one packet of `len` bytes at `now_ns`. `now_ns` must not decrease
    /// between calls.
    pub fn offer(&mut self, now_ns: u64, len: usize) -> Verdict {
        let c = &mut self.counters;
        c.pkts_in += 1;
        c.bytes_in += len as u64;

        // 1. queue admission (drop-tail) + 2. serialization
        let tx_done = if self.cfg.rate_bps > 0 {
            let backlog = if self.next_free_ns > now_ns {
                let wait = (self.next_free_ns - now_ns) as u128;
                (wait * self.cfg.rate_bps as u128 / 8 / 1_000_000_000) as u64
            } else {
                0
            };
            if backlog > 0 && backlog + len as u64 > self.cfg.queue_bytes {
                c.drop_queue += 1;
                c.drop_queue_bytes += len as u64;
                return Verdict::DropQueue;
            }
            c.max_backlog_bytes = c.max_backlog_bytes.max(backlog + len as u64);
            let start = self.next_free_ns.max(now_ns);
            let bits = len as u128 * 8 * 1_000_000_000;
            let tx = bits.div_ceil(self.cfg.rate_bps as u128) as u64;
            self.next_free_ns = start + tx;
            self.next_free_ns
        } else {
            now_ns
        };
        c.pkts_passed_queue += 1;

        // 3. loss on the wire. Both streams always advance by one draw per packet
        // (GE: transition + loss draw), so decisions depend only on the seed and
        // the packet index among those that passed the queue.
        let mut lost_burst = false;
        if let Some(ge) = self.cfg.ge {
            let t = self.rng_ge.next_f64();
            if self.ge_bad {
                if t < ge.p_bad_good {
                    self.ge_bad = false;
                }
            } else if t < ge.p_good_bad {
                self.ge_bad = true;
                c.ge_bad_episodes += 1;
            }
            let u = self.rng_ge.next_f64();
            let p = if self.ge_bad {
                c.ge_pkts_in_bad += 1;
                ge.loss_bad
            } else {
                ge.loss_good
            };
            lost_burst = u < p;
        }
        let lost_random = self.rng_loss.chance(self.cfg.loss);
        if lost_burst {
            c.drop_burst += 1;
            c.drop_burst_bytes += len as u64;
            return Verdict::DropBurst;
        }
        if lost_random {
            c.drop_random += 1;
            c.drop_random_bytes += len as u64;
            return Verdict::DropRandom;
        }

        // 4. propagation
        let at = tx_done + self.cfg.delay_ns;
        debug_assert!(
            at >= self.last_deliver_ns,
            "delivery times must not decrease"
        );
        self.last_deliver_ns = at;
        c.pkts_scheduled += 1;
        c.bytes_scheduled += len as u64;
        Verdict::Deliver(at)
    }
}

/// FIFO of packets waiting for their delivery time. Valid as a timer queue because
/// [`LinkDir`] never schedules a packet earlier than the previous one.
#[derive(Debug)]
pub struct DelayLine<T> {
    q: VecDeque<(u64, T)>,
    bytes: u64,
}

impl<T> Default for DelayLine<T> {
    fn default() -> Self {
        DelayLine {
            q: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T> DelayLine<T> {
    pub fn push(&mut self, at_ns: u64, bytes: usize, item: T) {
        if let Some(&(last, _)) = self.q.back() {
            assert!(at_ns >= last, "DelayLine requires non-decreasing times");
        }
        self.bytes += bytes as u64;
        self.q.push_back((at_ns, item));
    }
    /// Time of the earliest pending item.
    pub fn next_due(&self) -> Option<u64> {
        self.q.front().map(|&(t, _)| t)
    }
    /// Pop the front item if it is due at `now_ns`. `bytes` is what the caller
    /// passed to push (needed to keep the byte count right).
    pub fn pop_due(&mut self, now_ns: u64, bytes_of: impl Fn(&T) -> usize) -> Option<(u64, T)> {
        match self.q.front() {
            Some(&(t, _)) if t <= now_ns => {
                let (t, item) = self.q.pop_front().unwrap();
                self.bytes -= bytes_of(&item) as u64;
                Some((t, item))
            }
            _ => None,
        }
    }
    pub fn len(&self) -> usize {
        self.q.len()
    }
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn cfg() -> DirConfig {
        DirConfig::default()
    }

    #[test]
    fn pure_delay() {
        let mut d = LinkDir::new(
            DirConfig {
                delay_ns: 20 * MS,
                ..cfg()
            },
            1,
        );
        assert_eq!(d.offer(0, 1200), Verdict::Deliver(20 * MS));
        assert_eq!(d.offer(5, 1200), Verdict::Deliver(20 * MS + 5));
        assert_eq!(d.offer(7 * MS, 60), Verdict::Deliver(27 * MS));
        assert_eq!(d.counters.pkts_scheduled, 3);
        assert_eq!(
            d.counters.drop_queue + d.counters.drop_random + d.counters.drop_burst,
            0
        );
    }

    #[test]
    fn serialization_and_back_to_back() {
        // 8 Mbit/s: 1000 bytes take exactly 1 ms.
        let c = DirConfig {
            delay_ns: 10 * MS,
            rate_bps: 8_000_000,
            queue_bytes: 1_000_000,
            ..cfg()
        };
        let mut d = LinkDir::new(c, 1);
        assert_eq!(d.tx_time_ns(1000), MS);
        // three packets arrive together: they leave 1 ms apart
        assert_eq!(d.offer(0, 1000), Verdict::Deliver(11 * MS));
        assert_eq!(d.offer(0, 1000), Verdict::Deliver(12 * MS));
        assert_eq!(d.offer(0, 1000), Verdict::Deliver(13 * MS));
        assert_eq!(d.backlog_bytes(0), 3000);
        assert_eq!(d.backlog_bytes(MS + MS / 2), 1500);
        // a packet after the link went idle is not delayed by the queue
        assert_eq!(d.offer(100 * MS, 1000), Verdict::Deliver(111 * MS));
    }

    #[test]
    fn rate_caps_long_run_throughput() {
        // Offer 2x the link rate for 1 s of virtual time; delivered bytes over the
        // busy period must match the rate.
        let rate = 100_000_000u64; // 100 Mbit/s
        let c = DirConfig {
            delay_ns: 0,
            rate_bps: rate,
            queue_bytes: 64_000,
            ..cfg()
        };
        let mut d = LinkDir::new(c, 7);
        let gap = d.tx_time_ns(1200) / 2; // 2x overload
        let mut last = 0;
        let mut delivered = 0u64;
        let mut t = 0;
        while t < 1_000 * MS {
            if let Verdict::Deliver(at) = d.offer(t, 1200) {
                delivered += 1200;
                last = at;
            }
            t += gap;
        }
        let achieved = delivered as f64 * 8.0 / (last as f64 / 1e9);
        assert!(
            (achieved - rate as f64).abs() / (rate as f64) < 0.001,
            "achieved {achieved}"
        );
        let c = d.counters;
        let frac = c.drop_queue as f64 / c.pkts_in as f64;
        assert!((frac - 0.5).abs() < 0.01, "queue drop fraction {frac}");
        assert!(c.max_backlog_bytes <= 64_000);
    }

    #[test]
    fn queue_limit_is_drop_tail_in_bytes() {
        // 8 Mbit/s, queue 2500 bytes: 1000-byte packets at t=0: #1 (backlog 0) ok,
        // #2 (backlog 1000) ok, #3 (backlog 2000 + 1000 > 2500) dropped.
        let c = DirConfig {
            rate_bps: 8_000_000,
            queue_bytes: 2500,
            ..cfg()
        };
        let mut d = LinkDir::new(c, 1);
        assert!(matches!(d.offer(0, 1000), Verdict::Deliver(_)));
        assert!(matches!(d.offer(0, 1000), Verdict::Deliver(_)));
        assert_eq!(d.offer(0, 1000), Verdict::DropQueue);
        // half a packet later there is room again
        assert!(matches!(d.offer(MS / 2 + 1, 1000), Verdict::Deliver(_)));
        // an empty link accepts a packet larger than the queue
        let c = DirConfig {
            rate_bps: 8_000_000,
            queue_bytes: 100,
            ..cfg()
        };
        let mut d = LinkDir::new(c, 1);
        assert!(matches!(d.offer(0, 1500), Verdict::Deliver(_)));
        assert_eq!(d.offer(0, 1500), Verdict::DropQueue);
        assert_eq!(d.counters.drop_queue_bytes, 1500);
    }

    #[test]
    fn random_loss_rate_is_binomial() {
        for &p in &[0.01, 0.05, 0.10] {
            let n = 200_000u64;
            let mut d = LinkDir::new(DirConfig { loss: p, ..cfg() }, 42);
            for i in 0..n {
                d.offer(i, 1200);
            }
            let k = d.counters.drop_random as f64;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((k - n as f64 * p).abs() < 5.0 * sigma, "p={p} k={k}");
            assert_eq!(d.counters.pkts_scheduled + d.counters.drop_random, n);
        }
    }

    #[test]
    fn zero_and_full_loss() {
        let mut d = LinkDir::new(DirConfig { loss: 0.0, ..cfg() }, 3);
        for i in 0..10_000 {
            assert!(matches!(d.offer(i, 100), Verdict::Deliver(_)));
        }
        let mut d = LinkDir::new(DirConfig { loss: 1.0, ..cfg() }, 3);
        for i in 0..10_000 {
            assert_eq!(d.offer(i, 100), Verdict::DropRandom);
        }
    }

    #[test]
    fn same_seed_same_decisions_different_seed_differs() {
        let c = DirConfig {
            loss: 0.05,
            ge: Some(GilbertElliott {
                p_good_bad: 0.01,
                p_bad_good: 0.3,
                loss_bad: 1.0,
                loss_good: 0.0,
            }),
            ..cfg()
        };
        let run = |seed| {
            let mut d = LinkDir::new(c.clone(), seed);
            (0..5000u64)
                .map(|i| d.offer(i * 1000, 1200))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn random_pattern_independent_of_burst_config() {
        // Packets lost to random loss with GE off must stay lost (as random or burst)
        // with GE on: the random stream is separate.
        let base = DirConfig {
            loss: 0.05,
            ..cfg()
        };
        let mut a = LinkDir::new(base.clone(), 5);
        let mut b = LinkDir::new(
            DirConfig {
                ge: Some(GilbertElliott {
                    p_good_bad: 0.02,
                    p_bad_good: 0.25,
                    loss_bad: 1.0,
                    loss_good: 0.0,
                }),
                ..base
            },
            5,
        );
        for i in 0..20_000u64 {
            let va = a.offer(i, 1000);
            let vb = b.offer(i, 1000);
            if va == Verdict::DropRandom {
                assert!(
                    !matches!(vb, Verdict::Deliver(_)),
                    "packet {i} lost only without GE"
                );
            }
        }
    }

    #[test]
    fn gilbert_elliott_mean_loss_and_burst_length() {
        let ge = GilbertElliott {
            p_good_bad: 0.01,
            p_bad_good: 0.25,
            loss_bad: 1.0,
            loss_good: 0.0,
        };
        let n = 400_000u64;
        let mut d = LinkDir::new(
            DirConfig {
                ge: Some(ge),
                ..cfg()
            },
            11,
        );
        let mut runs = Vec::new();
        let mut cur = 0u64;
        for i in 0..n {
            if d.offer(i, 1000) == Verdict::DropBurst {
                cur += 1;
            } else if cur > 0 {
                runs.push(cur);
                cur = 0;
            }
        }
        let c = d.counters;
        let frac = c.drop_burst as f64 / n as f64;
        let expect = ge.mean_loss(); // 0.01/0.26 = 0.0385
        assert!(
            (frac - expect).abs() / expect < 0.08,
            "burst loss {frac} vs {expect}"
        );
        // mean loss-run length ~ 1/p_bad_good = 4 (runs are geometric)
        let mean_run = runs.iter().sum::<u64>() as f64 / runs.len() as f64;
        assert!((mean_run - 4.0).abs() < 0.4, "mean run {mean_run}");
        assert!(c.ge_bad_episodes > 0);
        assert_eq!(c.ge_pkts_in_bad, c.drop_burst); // loss_bad = 1
        assert_eq!(c.drop_random, 0);
    }

    #[test]
    fn lost_packets_still_use_link_time() {
        // With 100% loss the link is still busy: next packet after a lost one waits.
        let c = DirConfig {
            rate_bps: 8_000_000,
            queue_bytes: 1_000_000,
            loss: 1.0,
            ..cfg()
        };
        let mut d = LinkDir::new(c, 1);
        assert_eq!(d.offer(0, 1000), Verdict::DropRandom);
        assert_eq!(d.backlog_bytes(0), 1000);
    }

    #[test]
    fn delivery_times_monotone_under_mixed_traffic() {
        let c = DirConfig {
            delay_ns: 20 * MS,
            rate_bps: 200_000_000,
            queue_bytes: 500_000,
            loss: 0.1,
            ge: Some(GilbertElliott {
                p_good_bad: 0.005,
                p_bad_good: 0.3,
                loss_bad: 0.7,
                loss_good: 0.0,
            }),
        };
        let mut d = LinkDir::new(c, 99);
        let mut rng = Rng::new(1);
        let mut t = 0u64;
        let mut last = 0u64;
        let mut line = DelayLine::default();
        for _ in 0..100_000 {
            t += rng.next_u64() % 60_000; // bursty arrivals
            let len = 40 + (rng.next_u64() % 1461) as usize;
            if let Verdict::Deliver(at) = d.offer(t, len) {
                assert!(at >= last);
                assert!(at >= t + 20 * MS);
                last = at;
                line.push(at, len, len);
            }
        }
        let c = d.counters;
        assert_eq!(
            c.pkts_in,
            c.pkts_scheduled + c.drop_queue + c.drop_random + c.drop_burst
        );
        assert_eq!(line.len() as u64, c.pkts_scheduled);
        assert_eq!(line.bytes(), c.bytes_scheduled);
        // drain in order
        let mut prev = 0;
        while let Some((at, _)) = line.pop_due(u64::MAX, |&l| l) {
            assert!(at >= prev);
            prev = at;
        }
        assert_eq!(line.bytes(), 0);
    }

    #[test]
    fn delay_line_pops_only_due() {
        let mut l = DelayLine::default();
        l.push(10, 1, 'a');
        l.push(10, 1, 'b');
        l.push(20, 1, 'c');
        assert_eq!(l.next_due(), Some(10));
        assert_eq!(l.pop_due(9, |_| 1), None);
        assert_eq!(l.pop_due(10, |_| 1), Some((10, 'a')));
        assert_eq!(l.pop_due(10, |_| 1), Some((10, 'b')));
        assert_eq!(l.pop_due(10, |_| 1), None);
        assert_eq!(l.pop_due(25, |_| 1), Some((20, 'c')));
        assert!(l.is_empty());
    }
}

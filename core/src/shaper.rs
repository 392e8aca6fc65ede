//! The exposer's send-rate cap (`rgtp-expose --max-rate`): a sans-IO shaper between
//! the exposer and its socket. A token bucket holds the total send rate to the cap,
//! and deficit round robin between destinations shares it fairly: each puller
//! (address and port) gets its turn for about the same bytes, so a greedy one cannot
//! take the others' share, and one that asks for less leaves the rest to the others.
//!
//! What waits is bounded: per destination, and in all. What does not fit is
//! dropped, as a bottleneck link drops it; the pullers' rate control sees the
//! queueing delay and the loss, and settles at their share.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::transmit::Transmit;

/// Bytes a destination may send per round-robin turn (more than any one transmit).
const QUANTUM: u64 = 128 * 1024;

/// Bytes a destination may always have waiting, however many share the cap.
const MIN_FLOW_QUEUE: u64 = 64 * 1024;

/// Most destinations with something waiting; a transmit to another is dropped.
const MAX_FLOWS: usize = 4096;

/// What the shaper did.
#[derive(Debug, Default, Clone)]
pub struct ShaperStats {
    /// Bytes let through.
    pub sent_bytes: u64,
    /// Transmits dropped because their destination's queue (or the table) was full.
    pub dropped: u64,
}

struct Flow {
    queue: VecDeque<Transmit>,
    bytes: u64,
    deficit: u64,
}

/// A token bucket at `rate` with fair queuing between destinations.
pub struct Shaper {
    /// Bytes per second.
    rate: f64,
    /// Most tokens saved up (a burst).
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Most bytes waiting, all destinations together: each destination with
    /// something waiting may hold its part of it (`flow_limit` / their number, at
    /// least [`MIN_FLOW_QUEUE`]), so each queue drains in about 50 ms at its fair share.
    flow_limit: u64,
    flows: HashMap<SocketAddr, Flow>,
    /// Destinations with something waiting, in turn order.
    ring: VecDeque<SocketAddr>,
    /// What was let through.
    pub stats: ShaperStats,
}

/// The size of a transmit on the wire (UDP payload bytes, all its datagrams).
pub fn transmit_bytes(t: &Transmit) -> u64 {
    let gathered: usize = t
        .gather
        .as_ref()
        .map_or(0, |g| g.slices.iter().map(|&(_, len)| len).sum());
    (t.contents.len() + gathered) as u64
}

impl Shaper {
    /// A cap of `bits_per_second` on everything sent (at least 8 kbit/s).
    pub fn new(bits_per_second: u64, now: Instant) -> Self {
        let rate = (bits_per_second as f64 / 8.0).max(1000.0);
        // 5 ms of sending, at least two full transmits: fine-grained enough that the
        // cap holds over any 100 ms, coarse enough not to wake up per datagram.
        let burst = (rate * 0.005).max(2.0 * QUANTUM as f64);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
            // 50 ms of the whole rate, at least 512 KiB: a puller's burst fits, a
            // standing queue stays short.
            flow_limit: ((rate * 0.05) as u64).max(512 * 1024),
            flows: HashMap::new(),
            ring: VecDeque::new(),
            stats: ShaperStats::default(),
        }
    }

    /// Bytes waiting, all destinations together.
    pub fn queued_bytes(&self) -> u64 {
        self.flows.values().map(|f| f.bytes).sum()
    }

    /// Queues `t` (or drops it when its destination already has its fill waiting).
    pub fn push(&mut self, t: Transmit) {
        let size = transmit_bytes(&t);
        let dest = t.dest;
        if !self.flows.contains_key(&dest) {
            if self.flows.len() >= MAX_FLOWS {
                self.stats.dropped += 1;
                return;
            }
            self.flows.insert(
                dest,
                Flow {
                    queue: VecDeque::new(),
                    bytes: 0,
                    deficit: 0,
                },
            );
            self.ring.push_back(dest);
        }
        let nflows = self.flows.len();
        let Some(flow) = self.flows.get_mut(&dest) else {
            return;
        };
        // Always room for one, whatever its size.
        // A destination's part of the queue, not the whole: with ten pullers sharing
        // the cap, a queue of 50 ms of the whole rate waits 500 ms at a tenth of it,
        // past the pullers' loss timer, and they ask again for what is only late.
        let limit = (self.flow_limit / nflows.max(1) as u64).max(MIN_FLOW_QUEUE);
        if flow.bytes > 0 && flow.bytes + size > limit {
            self.stats.dropped += 1;
            return;
        }
        flow.bytes += size;
        flow.queue.push_back(t);
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// The next transmit the cap allows now, taking destinations in turn.
    pub fn poll(&mut self, now: Instant) -> Option<Transmit> {
        self.refill(now);
        if self.tokens <= 0.0 {
            return None;
        }
        // Each pass either sends, drops an empty flow, or gives a flow a quantum; a
        // flow's head is at most a few quanta, so this ends within a few rounds.
        for _ in 0..4 * (self.ring.len() + 1) {
            let dest = *self.ring.front()?;
            let Some(flow) = self.flows.get_mut(&dest) else {
                self.ring.pop_front();
                continue;
            };
            let Some(head) = flow.queue.front() else {
                self.flows.remove(&dest);
                self.ring.pop_front();
                continue;
            };
            let size = transmit_bytes(head);
            if flow.deficit < size {
                flow.deficit += QUANTUM;
                self.ring.rotate_left(1);
                continue;
            }
            flow.deficit -= size;
            flow.bytes -= size;
            let t = flow.queue.pop_front();
            if flow.queue.is_empty() {
                // An idle destination keeps no credit for later.
                self.flows.remove(&dest);
                self.ring.pop_front();
            }
            // May go below zero: a large transmit borrows from what comes next.
            self.tokens -= size as f64;
            self.stats.sent_bytes += size;
            return t;
        }
        None
    }

    /// When [`Self::poll`] may next give something (`None`: nothing waits).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ring.is_empty() {
            return None;
        }
        if self.tokens > 0.0 {
            return Some(self.last);
        }
        let wait = (-self.tokens + 1.0) / self.rate;
        Some(self.last + Duration::from_secs_f64(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dest: &str, len: usize) -> Transmit {
        Transmit::single(dest.parse().unwrap(), vec![0; len])
    }

    #[test]
    fn the_rate_holds_and_destinations_share_it() {
        let t0 = Instant::now();
        // 80 Mbit/s = 10 MB/s.
        let mut s = Shaper::new(80_000_000, t0);
        let (a, b) = ("10.0.0.1:1", "10.0.0.2:1");
        let mut sent = [0u64; 2];
        let mut now = t0;
        // For 2 s, a asks for three times what b asks for, both more than their share.
        for _ in 0..2000 {
            for _ in 0..30 {
                s.push(t(a, 1200));
            }
            for _ in 0..10 {
                s.push(t(b, 1200));
            }
            now += Duration::from_millis(1);
            while let Some(x) = s.poll(now) {
                sent[usize::from(x.dest.to_string() == b)] += transmit_bytes(&x);
            }
        }
        let total = (sent[0] + sent[1]) as f64;
        // 2 s at 10 MB/s, plus the burst.
        assert!(total <= 20e6 + s.burst + 1200.0, "sent {total}");
        assert!(total >= 19e6, "sent only {total}");
        // b asked for 12 MB/s worth, more than its half: it gets half.
        let share_b = sent[1] as f64 / total;
        assert!((0.45..0.55).contains(&share_b), "b's share {share_b:.3}");
        assert!(s.stats.dropped > 0);
    }

    #[test]
    fn a_light_destination_leaves_the_rest_to_the_greedy_one() {
        let t0 = Instant::now();
        let mut s = Shaper::new(80_000_000, t0);
        let mut sent = [0u64; 2];
        let mut now = t0;
        for i in 0..1000 {
            for _ in 0..30 {
                s.push(t("10.0.0.1:1", 1200));
            }
            // b: 1200 bytes every 2 ms, 0.6 MB/s.
            if i % 2 == 0 {
                s.push(t("10.0.0.2:1", 1200));
            }
            now += Duration::from_millis(1);
            while let Some(x) = s.poll(now) {
                sent[usize::from(x.dest.ip().to_string() == "10.0.0.2")] += transmit_bytes(&x);
            }
        }
        // Then what waits drains.
        for _ in 0..100 {
            now += Duration::from_millis(1);
            while let Some(x) = s.poll(now) {
                sent[usize::from(x.dest.ip().to_string() == "10.0.0.2")] += transmit_bytes(&x);
            }
        }
        // b got all it asked for (none of it dropped); a the rest of the 10 MB/s.
        assert_eq!(sent[1], 500 * 1200);
        assert!(sent[0] as f64 > 9e6 - 0.6e6, "a got {}", sent[0]);
    }

    #[test]
    fn waiting_is_bounded_per_destination() {
        let t0 = Instant::now();
        let mut s = Shaper::new(8_000_000, t0);
        for _ in 0..10_000 {
            s.push(t("10.0.0.1:1", 1200));
        }
        assert!(s.queued_bytes() <= s.flow_limit);
        assert!(s.stats.dropped > 0);
        assert!(s.poll_timeout().is_some());
    }

    #[test]
    fn destinations_sharing_the_cap_share_the_queue_too() {
        let t0 = Instant::now();
        // 200 Mbit/s: flow_limit is 50 ms of it, 1.25 MB.
        let mut s = Shaper::new(200_000_000, t0);
        let dests: Vec<String> = (1..=10).map(|i| format!("10.0.0.{i}:1")).collect();
        for _ in 0..2000 {
            for d in &dests {
                s.push(t(d, 1200));
            }
        }
        let part = s.flow_limit / 10;
        for d in &dests {
            let dest: SocketAddr = d.parse().unwrap();
            let waiting = s.flows.get(&dest).map_or(0, |f| f.bytes);
            // Each holds about its tenth (at 20 Mbit/s: 50 ms), not the whole 1.25 MB.
            assert!(waiting <= part.max(MIN_FLOW_QUEUE), "{d} holds {waiting}");
            assert!(
                waiting + 1200 > part.max(MIN_FLOW_QUEUE) / 2,
                "{d} holds {waiting}"
            );
        }
        assert!(s.queued_bytes() <= s.flow_limit + 10 * 1200);
    }
}

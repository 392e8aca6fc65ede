//! Who gets the server's work while it is busy (a handshake flood): the stateless
//! RETRY a source may ask for, and the Diffie-Hellman work a validated source may
//! demand. Both are bounded per source and reset every second, so a flood from the
//! addresses an attacker owns takes a bounded share, and a real client, a source of
//! its own, is still answered on its first try.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::half_open::Source;
use crate::rng::Rng;

/// Counters of the RETRY budget sketch (per row).
const BUCKETS: usize = 4096;

/// RETRYs per second per socket address while busy, counted in a fixed-size sketch
/// (two rows of counters, indexed by a keyed hash whose secret key is drawn from the
/// endpoint's random source, so a flooder cannot aim its addresses at a victim's
/// counters): no state per source.
///
/// Keyed by the full address, port included, so a spoofer must guess a client's port
/// to spend its budget; a flooder that owns an address gets `per_source` RETRYs a
/// second for each socket it uses, and so answers at most that many with tokened
/// INITs. Everything beyond is dropped after decoding, before any cryptography or
/// send: what keeps the server reading its socket faster than the flood fills it.
pub(super) struct RetryBudget {
    start: Instant,
    rows: Box<[[u16; BUCKETS]; 2]>,
    key: [u8; 32],
}

impl RetryBudget {
    pub(super) fn new(now: Instant, rng: &mut Rng) -> Self {
        Self {
            start: now,
            rows: Box::new([[0; BUCKETS]; 2]),
            key: rng.bytes(),
        }
    }

    /// Keyed BLAKE3 of the address and port (a PRF: the counters an address lands on
    /// cannot be predicted without the key).
    fn hash(&self, a: SocketAddr) -> u64 {
        let mut b = [0u8; 19];
        match a.ip() {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => {
                b[..16].copy_from_slice(&v6.octets());
                b[18] = 6;
            }
        }
        b[16..18].copy_from_slice(&a.port().to_le_bytes());
        let h = blake3::keyed_hash(&self.key, &b);
        u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// Whether `from` may be sent one more RETRY this second (and counts it).
    pub(super) fn allow(&mut self, now: Instant, from: SocketAddr, per_source: u16) -> bool {
        if now.saturating_duration_since(self.start) >= Duration::from_secs(1) {
            self.start = now;
            for row in self.rows.iter_mut() {
                row.fill(0);
            }
        }
        let h = self.hash(from);
        let a = (h as usize) % BUCKETS;
        let b = ((h >> 32) as usize) % BUCKETS;
        let est = self.rows[0][a].min(self.rows[1][b]);
        if est >= per_source {
            return false;
        }
        // Conservative update: only the counters at the minimum grow, which keeps a
        // colliding flooder from inflating a real client's estimate more than needed.
        if self.rows[0][a] == est {
            self.rows[0][a] += 1;
        }
        if self.rows[1][b] == est {
            self.rows[1][b] += 1;
        }
        true
    }
}

/// Who may start Diffie-Hellman work this second while busy (`Endpoint::busy_budget`).
///
/// A source's first handshake of the second is always admitted (up to `max_sources`
/// sources): a real client, which makes one, gets in on its first validated INIT
/// however many handshakes the flooders ask for. Beyond its first, a source is
/// admitted only while the whole second's total stays under the global budget and its
/// own under the per-source cap, so the work a flood of owned addresses can demand is
/// about one handshake per address plus the global budget.
#[derive(Debug)]
pub(super) struct BusyWindow {
    start: Instant,
    counts: HashMap<Source, u32>,
    total: u32,
}

impl BusyWindow {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            start: now,
            counts: HashMap::new(),
            total: 0,
        }
    }

    pub(super) fn admit(
        &mut self,
        now: Instant,
        source: Source,
        per_source: u32,
        global: u32,
        max_sources: usize,
    ) -> bool {
        if now.saturating_duration_since(self.start) >= Duration::from_secs(1) {
            *self = Self::new(now);
        }
        // Bounded: beyond this many sources in one second, new ones wait for the next.
        if self.counts.len() >= max_sources && !self.counts.contains_key(&source) {
            return false;
        }
        let n = self.counts.entry(source).or_insert(0);
        let first = *n == 0;
        if !first && (*n >= per_source || self.total >= global) {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn src(i: u8) -> Source {
        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 0)
    }

    #[test]
    fn busy_window_admits_a_new_source_after_flooders_spent_the_budget() {
        let t0 = Instant::now();
        let mut w = BusyWindow::new(t0);
        // Ten flooding sources ask for 100 handshakes each: the global budget (20)
        // and the per-source cap (8) hold them to 20 in all beyond their firsts.
        let mut admitted = 0;
        for _ in 0..100 {
            for i in 0..10 {
                admitted += u32::from(w.admit(t0, src(i), 8, 20, 100));
            }
        }
        assert_eq!(admitted, 20);
        // A new client still gets its first handshake, but not a second.
        assert!(w.admit(t0, src(200), 8, 20, 100));
        assert!(!w.admit(t0, src(200), 8, 20, 100));
        // The next second starts afresh.
        let t1 = t0 + Duration::from_secs(1);
        assert!(w.admit(t1, src(0), 8, 20, 100));
        assert!(w.admit(t1, src(0), 8, 20, 100));
    }

    #[test]
    fn busy_window_bounds_sources_and_per_source_handshakes() {
        let t0 = Instant::now();
        let mut w = BusyWindow::new(t0);
        assert_eq!(
            (0..20).filter(|_| w.admit(t0, src(1), 3, 1000, 2)).count(),
            3
        );
        assert!(w.admit(t0, src(2), 3, 1000, 2));
        // A third source is over the bound on sources for this second.
        assert!(!w.admit(t0, src(3), 3, 1000, 2));
    }

    #[test]
    fn retry_budget_caps_each_socket_and_spares_others() {
        let t0 = Instant::now();
        let mut r = RetryBudget::new(t0, &mut Rng::os());
        let flooder: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let sent = (0..10_000).filter(|_| r.allow(t0, flooder, 64)).count();
        assert_eq!(sent, 64);
        // Other sockets, of the same host and of others, keep their own budgets
        // (barring a hash collision in both rows, which 4096 buckets make rare).
        let mut fresh = 0;
        for i in 0..200u16 {
            let a: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), 5000 + i);
            fresh += usize::from(r.allow(t0, a, 64));
        }
        assert!(
            fresh >= 199,
            "only {fresh} of 200 fresh sockets got a RETRY"
        );
        // The next second starts afresh.
        assert!(r.allow(t0 + Duration::from_secs(1), flooder, 64));
    }
}

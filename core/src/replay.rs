//! Freshness of REQUESTs without per-puller state: a REQUEST is served once.
//!
//! A REQUEST carries the exposer's clock as its puller reckons it (learnt from the
//! manifest) and is authenticated as a whole by its AEAD tag. The exposer remembers the
//! tags it served in two generations of a Bloom filter, each covering `ROTATE_MS`;
//! a REQUEST stamped before the older generation began cannot be checked against it
//! and is refused as stale. So a captured REQUEST replayed later is either found in the
//! filter (dropped) or too old (answered with an 18-byte STALE), never served again:
//! the exposer does not reflect bulk data at whoever replays it.
//!
//! Memory is fixed (two bit arrays). A flood of requests only raises the false-positive
//! rate (a legitimate REQUEST taken for a replay is lost, and asked for again under a
//! new sequence number); it never lets a replay through, since a Bloom filter has no
//! false negatives and rotation is driven by time alone.

use crate::rng::Rng;

/// How long one generation of the filter records; a REQUEST may be this old (less
/// `FUTURE_SLACK_MS`) and still be served.
pub const ROTATE_MS: u64 = 5_000;
/// How far ahead of the exposer's clock a stamp may be (the puller's clock drifting
/// over a session; its estimate otherwise lags by the one-way delay).
pub const FUTURE_SLACK_MS: u64 = 250;
/// Bits per generation: 1 MiB. At 500 000 REQUESTs per generation (100 000 a second)
/// a fresh REQUEST is taken for a replay with probability about 0.4 %.
const BITS_LOG2: u32 = 23;
const HASHES: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: serve it (it is now recorded).
    Fresh,
    /// Seen before (or, rarely, a false positive): drop it.
    Replay,
    /// Stamped outside the window the filter covers: refuse it (STALE).
    Stale,
}

pub struct ReplayFilter {
    generations: [Vec<u64>; 2],
    current: usize,
    /// When the current generation began (exposer ms).
    current_since: u64,
    /// Stamps before this cannot be checked (their first use may be forgotten).
    accept_from: u64,
    /// Secret key of the bit positions (drawn from the exposer's random source), so
    /// nobody can aim requests at chosen bits.
    key: [u8; 32],
}

impl Default for ReplayFilter {
    /// A filter keyed from the OS CSPRNG.
    fn default() -> Self {
        Self::new(&mut Rng::os())
    }
}

impl ReplayFilter {
    /// An empty filter whose bit positions are keyed by bytes drawn from `rng`.
    pub fn new(rng: &mut Rng) -> Self {
        let words = 1usize << (BITS_LOG2 - 6);
        Self {
            generations: [vec![0; words], vec![0; words]],
            current: 0,
            current_since: 0,
            // Nothing was served before this filter existed (tokens die with the
            // process), so every stamp is checkable at first.
            accept_from: 0,
            key: rng.bytes(),
        }
    }

    /// Checks the REQUEST authenticated by `tag` and stamped `stamp_ms`, at exposer
    /// time `now_ms`, and records it when fresh.
    pub fn check(&mut self, now_ms: u64, stamp_ms: u64, tag: &[u8]) -> Verdict {
        if now_ms.saturating_sub(self.current_since) >= ROTATE_MS {
            self.rotate(now_ms);
        }
        if stamp_ms < self.accept_from || stamp_ms > now_ms.saturating_add(FUTURE_SLACK_MS) {
            return Verdict::Stale;
        }
        let idx = self.indices(tag);
        let seen = |g: &Vec<u64>| idx.iter().all(|&i| g[i >> 6] & (1 << (i & 63)) != 0);
        if self.generations.iter().any(seen) {
            return Verdict::Replay;
        }
        let g = &mut self.generations[self.current];
        for i in idx {
            g[i >> 6] |= 1 << (i & 63);
        }
        Verdict::Fresh
    }

    /// Forgets the older generation. Whatever it held was served before
    /// `current_since`, so with a stamp at most FUTURE_SLACK_MS ahead of its serving
    /// time, it is stamped before `current_since + FUTURE_SLACK_MS`: refusing those
    /// stamps keeps every forgotten REQUEST refused.
    fn rotate(&mut self, now_ms: u64) {
        self.accept_from = self.current_since + FUTURE_SLACK_MS;
        self.current ^= 1;
        self.generations[self.current].fill(0);
        self.current_since = now_ms;
    }

    fn indices(&self, tag: &[u8]) -> [usize; HASHES as usize] {
        // Double hashing (Kirsch-Mitzenmacher): two keyed hashes give them all, both
        // from one keyed BLAKE3 (a PRF, so the positions cannot be predicted).
        let h = blake3::keyed_hash(&self.key, tag);
        let h = h.as_bytes();
        let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let h1 = word(0);
        let h2 = word(8) | 1;
        let mask = (1u64 << BITS_LOG2) - 1;
        let mut out = [0usize; HASHES as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (h1.wrapping_add((i as u64).wrapping_mul(h2)) & mask) as usize;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(n: u64) -> [u8; 16] {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&n.to_le_bytes());
        t
    }

    #[test]
    fn served_once() {
        let mut f = ReplayFilter::default();
        assert_eq!(f.check(10, 10, &tag(1)), Verdict::Fresh);
        assert_eq!(f.check(11, 10, &tag(1)), Verdict::Replay);
        assert_eq!(f.check(11, 10, &tag(2)), Verdict::Fresh);
    }

    /// However long after, and however the clock moved, a served REQUEST is never
    /// Fresh again.
    #[test]
    fn never_fresh_twice_across_rotations() {
        let mut f = ReplayFilter::default();
        let mut served = Vec::new();
        let mut now = 0u64;
        for n in 0..2_000u64 {
            now += 37;
            // Stamps lag by up to 2 s, or lead by up to the slack.
            let stamp = (now + FUTURE_SLACK_MS).saturating_sub(n * 7919 % 2_250);
            if f.check(now, stamp, &tag(n)) == Verdict::Fresh {
                served.push((stamp, n));
            }
            for &(s, m) in served.iter().rev().take(50) {
                assert_ne!(f.check(now, s, &tag(m)), Verdict::Fresh, "{m} at {now}");
            }
        }
        for later in [now + 1, now + ROTATE_MS, now + 3 * ROTATE_MS, now + 100_000] {
            for &(s, m) in &served {
                assert_ne!(f.check(later, s, &tag(m)), Verdict::Fresh);
            }
        }
        assert!(
            served.len() > 1_900,
            "fresh requests refused: {}",
            served.len()
        );
    }

    #[test]
    fn stamps_outside_the_window_are_stale() {
        let mut f = ReplayFilter::default();
        assert_eq!(f.check(0, 0, &tag(1)), Verdict::Fresh);
        let now = 3 * ROTATE_MS;
        assert_eq!(f.check(now, 0, &tag(2)), Verdict::Stale);
        assert_eq!(
            f.check(now, now + FUTURE_SLACK_MS + 1, &tag(3)),
            Verdict::Stale
        );
        assert_eq!(f.check(now, now - 1_000, &tag(4)), Verdict::Fresh);
    }

    #[test]
    fn few_false_positives_under_load() {
        let mut f = ReplayFilter::default();
        let fresh = (0..200_000u64)
            .filter(|&n| f.check(1, 1, &tag(n)) == Verdict::Fresh)
            .count();
        assert!(fresh > 199_900, "{fresh}");
    }
}

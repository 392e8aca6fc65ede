//! The random source of the sans-IO state machines.
//!
//! Every random draw an [`Exposer`](crate::exposer::Exposer), a
//! [`Puller`](crate::puller::Puller) or a connection [`Endpoint`](crate::conn::Endpoint)
//! makes (ids, keys, token nonces, Noise ephemerals, path challenges, hash keys) comes
//! from the [`Rng`] it was built with, never from a global. By default that is the OS
//! CSPRNG ([`Rng::os`]); the simulator gives each state machine a stream seeded from
//! its own seed ([`Rng::seeded_for_simulation`]), so a simulated run, keys and all,
//! reproduces from that seed.

/// A random byte source: the OS CSPRNG, or (for tests and the simulator only) a
/// deterministic stream.
///
/// Not `Clone`: two copies of a seeded stream would repeat each other's draws (a
/// nonce reused under one key). [`fork`](Self::fork) gives an independent child.
pub struct Rng(Source);

enum Source {
    Os,
    /// BLAKE3 in extendable-output mode, keyed by the seed.
    Seeded(Box<blake3::OutputReader>),
}

impl Default for Rng {
    /// The OS CSPRNG.
    fn default() -> Self {
        Self::os()
    }
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Source::Os => "Rng::os",
            Source::Seeded(_) => "Rng::seeded_for_simulation",
        })
    }
}

impl Rng {
    /// The OS CSPRNG (`getrandom`): what every real exposer, puller and endpoint uses.
    pub fn os() -> Self {
        Self(Source::Os)
    }

    /// A deterministic stream: the same seed always gives the same bytes.
    ///
    /// **For tests and the simulator only.** Everything drawn from it (session keys,
    /// token keys, connection ids) is known to whoever knows the seed, and a 64-bit
    /// seed can be searched: a state machine built with it has no secrets. It exists
    /// so that a simulated run reproduces from its seed.
    pub fn seeded_for_simulation(seed: u64) -> Self {
        Self::from_key(&blake3::derive_key(
            "rgtp simulation rng v1",
            &seed.to_le_bytes(),
        ))
    }

    fn from_key(key: &[u8; 32]) -> Self {
        Self(Source::Seeded(Box::new(
            blake3::Hasher::new_keyed(key).finalize_xof(),
        )))
    }

    /// Whether this is a seeded (insecure, simulation-only) stream.
    pub fn is_seeded(&self) -> bool {
        matches!(self.0, Source::Seeded(_))
    }

    /// An independent source of the same kind: the OS CSPRNG again, or a seeded
    /// stream keyed by bytes drawn from this one (so children differ from each other
    /// and from their parent, and still reproduce from the first seed).
    pub fn fork(&mut self) -> Self {
        match self.0 {
            Source::Os => Self::os(),
            Source::Seeded(_) => Self::from_key(&self.bytes()),
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        match &mut self.0 {
            // The OS RNG failing is not recoverable and not attacker-controlled.
            Source::Os => getrandom::getrandom(buf).expect("OS random number generator failed"),
            Source::Seeded(xof) => xof.fill(buf),
        }
    }

    /// `N` random bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.fill(&mut b);
        b
    }

    /// A random `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_stream_and_forks_are_independent() {
        let mut a = Rng::seeded_for_simulation(7);
        let mut b = Rng::seeded_for_simulation(7);
        assert_eq!(a.bytes::<64>(), b.bytes::<64>());
        assert_ne!(
            Rng::seeded_for_simulation(7).u64(),
            Rng::seeded_for_simulation(8).u64()
        );
        let (mut fa, mut fb) = (a.fork(), b.fork());
        assert!(fa.is_seeded());
        assert_eq!(fa.u64(), fb.u64());
        let x = fa.u64();
        assert_ne!(x, a.u64(), "a fork does not repeat its parent");
        assert_ne!(a.fork().u64(), a.fork().u64(), "siblings differ");
    }

    #[test]
    fn the_default_is_the_os() {
        let mut r = Rng::default();
        assert!(!r.is_seeded());
        assert!(!r.fork().is_seeded());
        assert_ne!(r.bytes::<32>(), r.bytes::<32>());
    }
}

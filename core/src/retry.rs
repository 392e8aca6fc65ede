//! The stateless first reply under load, shared by the exposer (HELLO) and connection
//! endpoints (INIT): a per-second count of handshakes that says when the server is
//! busy, and the RETRY cookie that then proves a client receives at its address
//! before the server spends work or state on it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::crypto::{same_addr, TokenClaims, TokenKey};
use crate::rng::Rng;

/// How long a RETRY cookie validates its address.
pub const RETRY_TOKEN_LIFETIME: Duration = Duration::from_secs(10);

/// Handshakes seen in the current one-second window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandshakeRate {
    start: Instant,
    count: u32,
}

impl HandshakeRate {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            start: now,
            count: 0,
        }
    }

    /// Counts one handshake and returns how many this second, this one included.
    pub(crate) fn tick(&mut self, now: Instant) -> u32 {
        if now.saturating_duration_since(self.start) >= Duration::from_secs(1) {
            *self = Self::new(now);
        }
        self.count += 1;
        self.count
    }
}

/// A RETRY cookie for `addr`, bound to `binding` (what the cookie may validate: e.g. one
/// connection attempt), valid for [`RETRY_TOKEN_LIFETIME`] from `now_ms`.
pub(crate) fn seal_cookie(
    key: &TokenKey,
    addr: SocketAddr,
    now_ms: u64,
    binding: [u8; 16],
    rng: &mut Rng,
) -> Vec<u8> {
    key.seal(
        &TokenClaims {
            session: false,
            addr,
            expires_ms: now_ms + RETRY_TOKEN_LIFETIME.as_millis() as u64,
            exposure: binding,
            max_datagram: 0,
            request_key: [0; 32],
            cipher: crate::crypto::Cipher::ChaCha20Poly1305,
        },
        rng,
    )
}

/// Whether `token` is a live RETRY cookie this server sealed for `from` and `binding`.
pub(crate) fn cookie_valid(
    key: &TokenKey,
    token: &[u8],
    from: SocketAddr,
    now_ms: u64,
    binding: [u8; 16],
) -> bool {
    key.open(token).is_some_and(|c| {
        !c.session && same_addr(&c.addr, &from) && c.expires_ms >= now_ms && c.exposure == binding
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_validates_its_address_and_binding_until_it_expires() {
        let rng = &mut Rng::os();
        let key = TokenKey::random(rng);
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        let c = seal_cookie(&key, a, 1_000, [7; 16], rng);
        assert!(cookie_valid(&key, &c, a, 1_000, [7; 16]));
        assert!(cookie_valid(&key, &c, a, 11_000, [7; 16]));
        assert!(!cookie_valid(&key, &c, a, 11_001, [7; 16]));
        assert!(!cookie_valid(&key, &c, b, 1_000, [7; 16]));
        assert!(!cookie_valid(&key, &c, a, 1_000, [8; 16]));
        assert!(!cookie_valid(&TokenKey::random(rng), &c, a, 1_000, [7; 16]));
    }

    #[test]
    fn the_rate_counts_per_second() {
        let t0 = Instant::now();
        let mut r = HandshakeRate::new(t0);
        assert_eq!(r.tick(t0), 1);
        assert_eq!(r.tick(t0 + Duration::from_millis(999)), 2);
        assert_eq!(r.tick(t0 + Duration::from_secs(1)), 1);
    }
}

//! The smoothed round-trip time (RFC 6298): one estimator type for the rate control
//! of pulls and connections and for a connection's own timers.

use std::time::Duration;

/// `base` doubled `doublings` times (at most ten), and at most `max`: the exponential
/// backoff of every retransmission and probe timer.
pub(crate) fn backoff(base: Duration, doublings: u32, max: Duration) -> Duration {
    base.checked_mul(1u32 << doublings.min(10))
        .unwrap_or(max)
        .min(max)
}

/// Smoothed RTT and its variation. Until the first sample both come from a guess.
#[derive(Debug, Clone, Copy)]
pub struct SmoothedRtt {
    pub srtt: Duration,
    pub rttvar: Duration,
    has_sample: bool,
}

impl SmoothedRtt {
    /// Before any sample: `initial` is a guess.
    pub fn new(initial: Duration) -> Self {
        Self {
            srtt: initial,
            rttvar: initial / 2,
            has_sample: false,
        }
    }

    /// Takes a sample; returns whether it was the first (the guess replaced).
    pub fn sample(&mut self, rtt: Duration) -> bool {
        if !self.has_sample {
            self.srtt = rtt;
            self.rttvar = rtt / 2;
            self.has_sample = true;
            return true;
        }
        let diff = self.srtt.abs_diff(rtt);
        self.rttvar = (self.rttvar * 3 + diff) / 4;
        self.srtt = (self.srtt * 7 + rtt) / 8;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sample_replaces_the_guess_then_smooths() {
        let ms = Duration::from_millis;
        let mut r = SmoothedRtt::new(ms(100));
        assert!(r.sample(ms(10)));
        assert_eq!((r.srtt, r.rttvar), (ms(10), ms(5)));
        assert!(!r.sample(ms(18)));
        assert_eq!(r.srtt, ms(11));
        assert_eq!(r.rttvar, ms(23) / 4);
    }
}

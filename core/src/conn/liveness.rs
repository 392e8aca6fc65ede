//! A reader's own liveness probes (sans-IO).
//!
//! A writer notices a dead path by itself: its data goes unacknowledged and its probe
//! timer fires. A reader does not. When only acknowledgements leave it and its own
//! address changes (a new IP, a NAT rebinding), everything the writer sends goes to
//! the old address, the reader hears nothing and has nothing to say, and the writer's
//! probes go to the old address too. Nobody learns the new address until a keepalive
//! (15 s by default). So a reader that was receiving data and then hears nothing
//! sends a few PINGs of its own, backing off; a PING leaves from wherever the reader
//! now is, the writer validates that address and moves the connection there.
//!
//! The same series restarts at once when the driver learns that the local addresses
//! or routes changed ([`SilenceProbe::restart`]).

use std::time::{Duration, Instant};

/// PINGs in one silent spell before the keepalive takes over again. With the
/// interval doubling from one PTO up to `max`, six cover a few seconds of silence.
const MAX_PROBES: u32 = 6;
/// The shortest interval, whatever the RTT says (a LAN's PTO is a millisecond or two).
const MIN_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Default)]
pub(crate) struct SilenceProbe {
    /// Probing is on: data arrived, and silence since then is suspicious.
    armed: bool,
    /// When the next PING is due, if armed.
    next: Option<Instant>,
    /// PINGs sent in the current silent spell.
    sent: u32,
}

impl SilenceProbe {
    fn interval(base: Duration, sent: u32, max: Duration) -> Duration {
        crate::rtt::backoff(base, sent, max).max(MIN_INTERVAL)
    }

    /// A packet from the peer arrived; `data` when it carried stream bytes. Silence is
    /// measured from here.
    pub fn on_receive(&mut self, now: Instant, data: bool, base: Duration, max: Duration) {
        if data {
            self.armed = true;
        }
        if self.armed {
            self.sent = 0;
            self.next = Some(now + Self::interval(base, 0, max));
        }
    }

    /// The local addresses or routes changed and the caller just sent a PING: keep
    /// at it while nothing comes back.
    pub fn restart(&mut self, now: Instant, base: Duration, max: Duration) {
        self.armed = true;
        self.sent = 0;
        self.next = Some(now + Self::interval(base, 0, max));
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.next.filter(|_| self.armed)
    }

    /// Whether a PING is due now. `wanted` says whether the peer could still send us
    /// something (its stream is open and we gave it credit); if not, probing stops.
    pub fn on_timeout(
        &mut self,
        now: Instant,
        wanted: bool,
        base: Duration,
        max: Duration,
    ) -> bool {
        let Some(next) = self.next_timeout() else {
            return false;
        };
        if now < next {
            return false;
        }
        if !wanted || self.sent >= MAX_PROBES {
            *self = SilenceProbe::default();
            return false;
        }
        self.sent += 1;
        self.next = Some(now + Self::interval(base, self.sent, max));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn silence_after_data_gets_backed_off_pings_then_stops() {
        let t0 = Instant::now();
        let base = Duration::from_millis(50);
        let mut p = SilenceProbe::default();
        p.on_receive(t0, false, base, MAX);
        assert_eq!(p.next_timeout(), None, "no data yet: nothing to expect");
        p.on_receive(t0, true, base, MAX);
        let mut at = vec![];
        let mut now = t0;
        for _ in 0..20 {
            let Some(n) = p.next_timeout() else { break };
            now = n;
            if p.on_timeout(now, true, base, MAX) {
                at.push(now - t0);
            }
        }
        let ms: Vec<u128> = at.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![50, 150, 350, 750, 1550, 3150]);
        assert_eq!(p.next_timeout(), None);
        // Anything from the peer starts a new spell only once data flows again.
        p.on_receive(now, false, base, MAX);
        assert_eq!(p.next_timeout(), None);
    }

    #[test]
    fn arrivals_push_the_probe_back_and_unwanted_stops_it() {
        let t0 = Instant::now();
        let base = Duration::from_millis(1);
        let mut p = SilenceProbe::default();
        p.on_receive(t0, true, base, MAX);
        assert_eq!(p.next_timeout(), Some(t0 + MIN_INTERVAL));
        let t1 = t0 + Duration::from_millis(15);
        p.on_receive(t1, false, base, MAX);
        assert!(!p.on_timeout(t0 + MIN_INTERVAL, true, base, MAX));
        assert!(!p.on_timeout(t1 + MIN_INTERVAL, false, base, MAX));
        assert_eq!(p.next_timeout(), None);
        p.restart(t1, base, MAX);
        assert!(!p.on_timeout(t1, true, base, MAX));
        assert!(p.on_timeout(t1 + MIN_INTERVAL, true, base, MAX));
    }
}

//! LAN multicast (issue 18, `rgtp-expose --multicast GROUP:PORT`): the sans-IO pieces.
//!
//! An exposer with a group sends the DATA of a chunk asked for by a group member
//! (a GROUP REQUEST, type 11) once to the group instead of to the member; every
//! member receives it. Members of one exposure share its exposure id and content key
//! (both are per exposure, never per puller), and the exposer offers the group only to
//! pullers whose session has the group's chunk cipher and datagram size, so every
//! member can open every group datagram.
//!
//! Members started together ask for the same chunks within a round trip of each
//! other. [`JustSent`] is the exposer's per-chunk filter that serves those identical
//! requests with the one send: fragments sent to the group within its window are not
//! sent again. A member that lost a group datagram asks again later, after its
//! retransmission timeout, by which time the window has usually passed; if not, it
//! asks once more.
//!
//! The socket side (joining the group, setting the sending interface) is in
//! [`crate::udp`]; the puller's side of the protocol in [`crate::puller`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::wire::{ExposureId, Object};

/// How long a fragment sent to the group stands for every member's request of it.
/// It covers the spread of the members' requests (a round trip on a LAN, plus the
/// rate cap's queue, at most 50 ms) and is short against a member's timeout for a
/// lost fragment on a slow path.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(50);

/// Most chunks the filter remembers; beyond, the oldest are forgotten first (which
/// only costs a duplicate send, never a missed one).
const MAX_ENTRIES: usize = 1 << 16;

/// A chunk of an exposure.
type Key = (ExposureId, Object, u32);

struct Sent {
    at: Instant,
    /// Data fragments (bit i: fragment i) and repair fragments (bit i: 64 + i) sent.
    mask: u64,
    repair: u64,
}

/// The exposer's "just sent" filter for its multicast group.
pub struct JustSent {
    window: Duration,
    sent: HashMap<Key, Sent>,
    /// Insertion order, for expiry (an entry is removed when its own record expires).
    order: VecDeque<(Instant, Key)>,
    /// Fragments not sent because the group had them within the window.
    pub suppressed: u64,
}

impl JustSent {
    /// A filter whose sends stand for `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            sent: HashMap::new(),
            order: VecDeque::new(),
            suppressed: 0,
        }
    }

    /// What of a request for chunk `key` (data fragments `mask`, repair fragments
    /// `first .. first + count`) still has to go to the group at `now`; records it as
    /// sent. Returns the data mask and the repair range to send (`count` 0: none).
    /// `frags` is the chunk's number of data fragments (bits past it are ignored).
    pub fn filter(
        &mut self,
        now: Instant,
        key: Key,
        frags: usize,
        mask: u64,
        (first, count): (u8, u8),
    ) -> (u64, (u8, u8)) {
        self.expire(now);
        let mask = mask & low_bits(frags);
        let want_r = if count == 0 {
            0
        } else {
            low_bits(count as usize) << first.min(63)
        };
        let e = self.sent.entry(key).or_insert_with(|| {
            self.order.push_back((now, key));
            Sent {
                at: now,
                mask: 0,
                repair: 0,
            }
        });
        let send = mask & !e.mask;
        let send_r = want_r & !e.repair;
        self.suppressed +=
            u64::from((mask & e.mask).count_ones() + (want_r & e.repair).count_ones());
        e.mask |= send;
        e.repair |= send_r;
        let range = if send_r == 0 {
            (0, 0)
        } else {
            // One contiguous range: from the first to the last not yet sent.
            let lo = send_r.trailing_zeros() as u8;
            let hi = 64 - send_r.leading_zeros() as u8;
            (lo, hi - lo)
        };
        (send, range)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            if now.saturating_duration_since(at) < self.window && self.order.len() <= MAX_ENTRIES {
                break;
            }
            self.order.pop_front();
            if self.sent.get(&key).is_some_and(|s| s.at == at) {
                self.sent.remove(&key);
            }
        }
    }
}

/// A mask of the `n` lowest bits (n ≤ 64).
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: Key = ([7; 16], Object::Content, 3);

    #[test]
    fn a_second_request_within_the_window_is_served_by_the_first_send() {
        let t0 = Instant::now();
        let mut f = JustSent::new(Duration::from_millis(50));
        assert_eq!(
            f.filter(t0, K, 14, u64::MAX, (0, 0)),
            (low_bits(14), (0, 0))
        );
        // The same chunk again, 10 ms later: nothing to send.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(f.filter(t1, K, 14, u64::MAX, (0, 0)), (0, (0, 0)));
        assert_eq!(f.suppressed, 14);
        // Another chunk is not affected.
        let other = ([7; 16], Object::Content, 4);
        assert_eq!(f.filter(t1, other, 14, 0b101, (0, 0)), (0b101, (0, 0)));
        // After the window the chunk goes again (a member lost it and asks again).
        let t2 = t0 + Duration::from_millis(60);
        assert_eq!(f.filter(t2, K, 14, 0b10, (0, 0)), (0b10, (0, 0)));
    }

    #[test]
    fn repair_is_sent_only_past_what_the_group_had() {
        let t0 = Instant::now();
        let mut f = JustSent::new(Duration::from_millis(50));
        assert_eq!(
            f.filter(t0, K, 14, u64::MAX, (0, 2)),
            (low_bits(14), (0, 2))
        );
        // Another member asks for repair 0..4: only 2..4 is new.
        assert_eq!(f.filter(t0, K, 14, 0, (0, 4)), (0, (2, 2)));
        assert_eq!(f.filter(t0, K, 14, 0, (1, 3)), (0, (0, 0)));
    }

    #[test]
    fn the_filter_is_bounded() {
        let t0 = Instant::now();
        let mut f = JustSent::new(Duration::from_secs(3600));
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            f.filter(t0, ([1; 16], Object::Content, i), 1, 1, (0, 0));
        }
        assert!(f.sent.len() <= MAX_ENTRIES + 1);
        assert!(f.order.len() <= MAX_ENTRIES + 1);
    }
}

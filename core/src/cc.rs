//! Receiver-side rate control for pulls: a simplified BBR.
//!
//! The puller decides how many bytes may be requested but not yet delivered (the
//! window) and how fast requests leave (the pacing rate). Both come from a model of the
//! path — the bottleneck delivery rate (a windowed max of measured rates) and the
//! minimum RTT — not from loss, because random loss is not congestion: loss-driven
//! control collapses on lossy links. The window (2x the bandwidth-delay product) still
//! bounds the queue this flow can build, which is what lets competing flows keep a share.
//!
//! That bound is not enough against loss-driven flows (TCP cubic, Reno) behind a deep
//! buffer: they keep the bottleneck's queue full, the model's rate samples ratchet up
//! through the probing cycle, and each probe overflows the queue and cuts them. So
//! when a queue stands through many rounds and does not go when this flow drains its
//! own part of it (`Check`), the flow shares the way they do (`Shared`: a CUBIC window
//! cut by loss, entered as after a cut), and it checks again every few seconds
//! whether anyone else still holds the queue.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rtt::SmoothedRtt;

/// Smallest window: enough to keep a few chunks moving at start and after idle.
pub const MIN_WINDOW: u64 = 64 * 1024;
const MAX_WINDOW: u64 = 256 << 20;
/// Startup gain (2/ln 2, as BBR) and the steady probing cycle.
const STARTUP_GAIN: f64 = 2.89;
/// Cruising a little above the estimate: at exactly it, every round whose requests
/// happen to lose more than the average (a lost request is all its data unsent) left
/// the link idle; 3 % more keeps a small queue that covers such rounds, and a queue
/// that grows past the queue-free bound turns the loss compensation off and is
/// drained by the 0.75 phase (at 10 % loss: 160.0 -> 161.3 Mbit/s, mean of seven
/// alternated runs on the emulated link).
const CRUISE_GAIN: f64 = 1.03;
const PROBE_GAINS: [f64; 8] = [
    1.25,
    0.75,
    CRUISE_GAIN,
    CRUISE_GAIN,
    CRUISE_GAIN,
    CRUISE_GAIN,
    CRUISE_GAIN,
    CRUISE_GAIN,
];
const BW_FILTER_ROUNDS: usize = 10;
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
const SCHEDULING_ALLOWANCE: Duration = Duration::from_millis(2);
const MAX_DRAIN_ROUNDS: u32 = 8;
/// Rounds a queue must stand through, without our probing draining it, before a check
/// asks whether others (loss-driven flows) hold it.
const SHARED_AFTER_ROUNDS: u32 = 16;
/// Fewer when sharing ended recently: a check that found the queue gone may have
/// caught the others between their cuts, and the model's probing would overrun them.
const SHARED_AGAIN_ROUNDS: u32 = 4;
const SHARED_MEMORY: Duration = Duration::from_secs(10);
/// CUBIC's constants (RFC 9438): the window's cut on loss and its growth, in segments
/// of a TCP flow's size so that both grow alike.
const SHARED_BETA: f64 = 0.7;
const CUBIC_C: f64 = 0.4;
const SEGMENT: f64 = 1448.0;
/// How often a sharing flow drains its part of the queue to see whether the rest goes.
const SHARED_CHECK_EVERY: Duration = Duration::from_secs(3);
/// The longest a check lasts: a round to drain, a round to measure.
const CHECK_ROUNDS: u32 = 2;
/// A check asks at half the rate: in a round that drains a queue of half a BDP (a
/// minimum RTT measured over others' queue may hide that much of ours).
const CHECK_GAIN: f64 = 0.5;
/// The first check, this long into probing: a flow that started while others held the
/// queue took its minimum RTT from over that queue.
const FIRST_CHECK_AFTER: Duration = Duration::from_secs(1);
/// Bytes per datagram when counting losses (a round's loss is judged in packets).
const LOSS_UNIT: f64 = 1200.0;
const FREE_LOSS_ROUNDS: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw,
}

#[derive(Debug, Clone)]
pub struct RateControl {
    mode: Mode,
    /// Recent per-round delivery rates (bytes/s), newest last.
    bw_samples: VecDeque<f64>,
    btl_bw: f64,
    min_rtt: Duration,
    min_rtt_at: Instant,
    rtt: SmoothedRtt,
    latest_rtt: Duration,
    /// Smallest RTT sample of the current round and of the last closed one: a queue
    /// the whole round's samples sat above stood; jitter alone leaves some low.
    round_min_rtt: Option<Duration>,
    last_round_min_rtt: Option<Duration>,
    /// Bytes requested and not yet delivered, as last reported by the puller.
    inflight: u64,
    round_start: Instant,
    /// When the newest packet delivered at the round's start was sent (writers that
    /// learn of delivery through acknowledgements; see `on_delivered_sent`).
    round_sent_start: Option<Instant>,
    round_delivered: u64,
    round_lost: u64,
    /// Smoothed fraction of requested bytes that were lost.
    loss: f64,
    /// Largest loss the path rate compensates for (`path_rate`): 30 %, or more for a
    /// pull whose repair fragments make heavy loss worth crossing.
    loss_cap: f64,
    full_bw: f64,
    full_bw_rounds: u32,
    cycle_idx: usize,
    cycle_start: Instant,
    drain_rounds: u32,
    /// The current round had moments with nothing to ask for: its rate says little
    /// about the path (BBR's app-limited samples).
    app_limited: bool,
    /// Consecutive loss timeouts without any delivery in between (blackout backoff).
    pub backoff: u32,
    /// Consecutive closed rounds through which a queue stood.
    stood_rounds: u32,
    /// A check during the current standing queue found it did not drain with ours:
    /// others hold it (sharing starts only on this verdict).
    held_by_others: bool,
    /// Loss fractions of the last probing rounds without a queue; their median is the
    /// path's own (random) loss, which a sharing flow must not take for congestion.
    /// (A median: losses of start-up's overshoot are detected in such rounds too.)
    free_losses: VecDeque<f64>,
    /// Set while sharing a queue with loss-driven flows.
    shared: Option<Shared>,
    /// Set while a check drains this flow's part of the queue (see `Check`).
    check: Option<Check>,
    /// When a sharing flow checks next.
    next_check: Instant,
    /// When sharing last ended.
    shared_until: Option<Instant>,
    /// When the first check is due (set on entering `Mode::ProbeBw`; cleared when any
    /// check starts).
    first_check_at: Option<Instant>,
}

/// A round or two of asking at half the last measured rate, so that this flow's part
/// of the bottleneck's queue drains (BBR's ProbeRTT, gentler: what is in flight keeps
/// the link busy meanwhile). What RTT remains is the path's, or others' queue. It is the
/// only way the minimum RTT rises (a longer route), how a flow learns that a standing
/// queue is others', and how a sharing flow learns it is alone again.
#[derive(Debug, Clone, Copy)]
struct Check {
    rounds_left: u32,
    rate: f64,
    min_seen: Option<Duration>,
}

/// A CUBIC window (RFC 9438), used while the bottleneck's queue is held by others.
#[derive(Debug, Clone, Copy)]
struct Shared {
    window: f64,
    /// The window before the last cut (the plateau CUBIC grows back towards).
    w_max: f64,
    /// When the last cut happened.
    epoch: Instant,
}

impl RateControl {
    pub fn new(now: Instant, initial_rtt: Duration) -> Self {
        let rtt = initial_rtt.max(Duration::from_micros(50));
        Self {
            mode: Mode::Startup,
            bw_samples: VecDeque::new(),
            btl_bw: 0.0,
            min_rtt: rtt,
            min_rtt_at: now,
            rtt: SmoothedRtt::new(rtt),
            latest_rtt: rtt,
            round_min_rtt: None,
            last_round_min_rtt: None,
            inflight: 0,
            round_start: now,
            round_sent_start: None,
            round_delivered: 0,
            round_lost: 0,
            loss: 0.0,
            loss_cap: 0.3,
            full_bw: 0.0,
            full_bw_rounds: 0,
            cycle_idx: 0,
            cycle_start: now,
            drain_rounds: 0,
            app_limited: false,
            backoff: 0,
            stood_rounds: 0,
            held_by_others: false,
            free_losses: VecDeque::new(),
            shared: None,
            check: None,
            next_check: now,
            shared_until: None,
            first_check_at: None,
        }
    }

    /// What a next session on the same path starts from (a live pull's next round,
    /// a few milliseconds later): what was learned of the path (rate, round trips,
    /// loss, mode), with nothing in flight and a new measurement round. A fresh
    /// model would start up again each round: a burst on a path already known.
    pub fn carried(&self, now: Instant) -> Self {
        let mut c = self.clone();
        c.inflight = 0;
        c.round_start = now;
        c.round_sent_start = None;
        c.round_delivered = 0;
        c.round_lost = 0;
        c.round_min_rtt = None;
        c.check = None;
        c.backoff = 0;
        c
    }

    /// A round trip measured from a request that timed out to the first answer to
    /// it or to its second request (so at most one timeout too long): it lengthens
    /// the timeout until the next proper sample, and touches nothing else.
    pub fn on_late_rtt(&mut self, rtt: Duration) {
        self.latest_rtt = self.latest_rtt.max(rtt);
    }

    pub fn on_rtt_sample(&mut self, now: Instant, rtt: Duration) {
        self.latest_rtt = rtt;
        self.round_min_rtt = Some(self.round_min_rtt.map_or(rtt, |m| m.min(rtt)));
        if self.rtt.sample(rtt) {
            // The initial RTT was a guess: a path longer than it must not keep the
            // guess as its minimum (it would until the minimum's window expired).
            self.min_rtt = rtt;
            self.min_rtt_at = now;
        }
        if let Some(c) = &mut self.check {
            c.min_seen = Some(c.min_seen.map_or(rtt, |m| m.min(rtt)));
        }
        if rtt <= self.min_rtt {
            self.min_rtt = rtt;
            self.min_rtt_at = now;
        }
    }

    /// Starts a measurement round now (when data starts to flow, so the handshake's
    /// wait does not count as a round with nothing delivered).
    pub fn start_round(&mut self, now: Instant) {
        self.round_start = now;
        self.round_sent_start = None;
        self.round_delivered = 0;
    }

    /// Requested bytes declared lost.
    pub fn on_lost(&mut self, bytes: u64) {
        self.round_lost += bytes;
    }

    /// Smoothed loss fraction.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// RTT above the minimum that still counts as no queue: max(min RTT / 4, 2 ms).
    fn queue_bound(&self) -> Duration {
        self.min_rtt + (self.min_rtt / 4).max(Duration::from_millis(2))
    }

    /// Within a check's tighter bound of the minimum: max(min RTT / 8, 2 ms).
    fn near_min(&self, rtt: Duration) -> bool {
        rtt <= self.min_rtt + (self.min_rtt / 8).max(Duration::from_millis(2))
    }

    /// No standing queue: the smoothed RTT is within the bound.
    fn queue_free(&self) -> bool {
        self.rtt.srtt <= self.queue_bound()
    }

    /// Every RTT sample of the last round exceeded the bound: the bottleneck's queue
    /// stood through it. (The smoothed RTT would also rise with jitter alone.)
    fn queue_stood(&self) -> bool {
        self.last_round_min_rtt
            .is_some_and(|r| r > self.queue_bound())
    }

    /// The rate at which data must be *asked for* so that `btl_bw` arrives: delivery
    /// over the fraction that survives. Only while no queue stands (the RTT is near its
    /// minimum), so the loss is the path's and not congestion's; bounded at 30 %
    /// (`set_loss_cap`).
    fn path_rate(&self) -> f64 {
        if self.queue_free() {
            self.btl_bw / (1.0 - self.loss.min(self.loss_cap))
        } else {
            self.btl_bw
        }
    }

    /// Compensates random loss up to `cap` (default 0.3, at most 0.75). A pull with
    /// repair fragments raises it: each fragment that arrives is of use, so asking
    /// for twice what arrives at 50 % loss moves data, where without repair the
    /// re-requests it takes would be lost as often. Still only while no queue stands.
    pub fn set_loss_cap(&mut self, cap: f64) {
        self.loss_cap = cap.clamp(0.0, 0.75);
    }

    /// The puller had room to ask for more but nothing to ask for.
    pub fn mark_app_limited(&mut self) {
        self.app_limited = true;
    }

    /// What remains requested and undelivered (Drain waits for it to fall to a BDP).
    pub fn set_inflight(&mut self, inflight: u64) {
        self.inflight = inflight;
    }

    /// Records newly delivered bytes; closes a measurement round every RTT.
    pub fn on_delivered(&mut self, now: Instant, bytes: u64) {
        self.on_delivered_sent(now, bytes, None);
    }

    /// As `on_delivered`, for a sender that learns of delivery from acknowledgements:
    /// `sent_at` is when the newest packet they cover was sent. Acknowledgements can
    /// bunch up on the way back (a queue they wait in empties), and a round measured
    /// between their arrivals alone would then see more delivered than the path
    /// carries (BBR bounds its rate samples by the send interval for this reason;
    /// connections saw 260 Mbit/s "delivered" over a 200 Mbit/s link). So a round
    /// lasts at least as long as the sending of what it delivered took.
    pub fn on_delivered_sent(&mut self, now: Instant, bytes: u64, sent_at: Option<Instant>) {
        self.backoff = 0;
        self.round_delivered += bytes;
        let acked_elapsed = now.saturating_duration_since(self.round_start);
        let round = self.rtt.srtt.max(Duration::from_millis(1));
        if acked_elapsed < round {
            return;
        }
        let sent_elapsed = match (self.round_sent_start, sent_at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        let elapsed = acked_elapsed.max(sent_elapsed);
        self.round_sent_start = sent_at;
        let rate = self.round_delivered as f64 / elapsed.as_secs_f64();
        let lost = self.round_lost;
        let sent = self.round_delivered + lost;
        if sent > 0 {
            let l = lost as f64 / sent as f64;
            self.loss = 0.75 * self.loss + 0.25 * l;
        }
        self.round_start = now;
        self.round_delivered = 0;
        self.round_lost = 0;
        self.last_round_min_rtt = self.round_min_rtt.take();
        let congested = self.congestion_loss(lost, sent);
        if self.queue_stood() {
            self.stood_rounds = self.stood_rounds.saturating_add(1);
        } else {
            self.stood_rounds = 0;
            self.held_by_others = false;
            // Start-up's and drain's losses are its own overshoot, not the path's.
            if sent > 0 && self.queue_free() && self.mode == Mode::ProbeBw && self.shared.is_none()
            {
                self.free_losses.push_back(lost as f64 / sent as f64);
                if self.free_losses.len() > FREE_LOSS_ROUNDS {
                    self.free_losses.pop_front();
                }
            }
        }
        self.run_check(now, rate);
        self.update_shared(now, congested);
        let app_limited = std::mem::take(&mut self.app_limited);
        if app_limited && rate < self.btl_bw {
            // Says nothing about the path, and must not end startup by a rate that
            // stopped growing. A queue that stood through the round and overflowed
            // still does: a sender whose data comes in bursts (a connection whose
            // reader's credit opens in steps) would otherwise stay in start-up, and
            // send every burst at its gain.
            if self.mode == Mode::Startup && self.startup_overflowed(lost > 0) {
                self.mode = Mode::Drain;
            }
            return;
        }
        self.bw_samples.push_back(rate);
        if self.bw_samples.len() > BW_FILTER_ROUNDS {
            self.bw_samples.pop_front();
        }
        self.btl_bw = self.bw_samples.iter().copied().fold(0.0, f64::max);
        self.advance_mode(now, lost > 0);
    }

    fn advance_mode(&mut self, now: Instant, lost: bool) {
        match self.mode {
            Mode::Startup => {
                if self.startup_overflowed(lost) {
                    // Loss with the whole round above the minimum (the checks' tighter
                    // margin): a queue stands and overflows now. Waiting three rounds
                    // for the rate to stop growing would only overflow it more. Not the
                    // wider queue bound: a pull that starts while others keep the queue
                    // full took its first RTT over that queue, and the RTT then rises
                    // only by what is left of it (a few ms) while both flows lose.
                    self.mode = Mode::Drain;
                } else if self.btl_bw >= self.full_bw * 1.25 {
                    self.full_bw = self.btl_bw;
                    self.full_bw_rounds = 0;
                } else {
                    self.full_bw_rounds += 1;
                    if self.full_bw_rounds >= 3 {
                        self.mode = Mode::Drain;
                    }
                }
            }
            Mode::Drain => {
                // Leave the queue startup built before probing again: down to what the
                // steady window allows without a queue. Not the bare BDP: on loopback
                // that is a fraction of one chunk, below what a request ever leaves in
                // flight, and the flow would stay in Drain (pacing at its floor) for
                // good. Bounded in rounds as well, for the same reason.
                self.drain_rounds += 1;
                let target = (self.bdp() + self.allowance()).max(MIN_WINDOW as f64);
                if self.inflight as f64 <= target || self.drain_rounds >= MAX_DRAIN_ROUNDS {
                    self.mode = Mode::ProbeBw;
                    self.cycle_idx = 0;
                    self.cycle_start = now;
                    self.first_check_at = Some(now + FIRST_CHECK_AFTER);
                }
            }
            Mode::ProbeBw => {
                if now.saturating_duration_since(self.cycle_start)
                    >= self.min_rtt.max(Duration::from_millis(1))
                {
                    self.cycle_idx = (self.cycle_idx + 1) % PROBE_GAINS.len();
                    self.cycle_start = now;
                }
            }
        }
    }

    /// Start-up lost data with every RTT sample of the round above the minimum (the
    /// checks' tighter margin): a queue stands and overflows.
    fn startup_overflowed(&self, lost: bool) -> bool {
        lost && self.last_round_min_rtt.is_some_and(|r| !self.near_min(r))
    }

    /// More of the round's data was lost than the path's own loss explains (three
    /// standard deviations above its mean, counted in datagrams): the queue overflowed.
    fn congestion_loss(&self, lost: u64, sent: u64) -> bool {
        if lost == 0 {
            return false;
        }
        let expected = self.path_loss() * sent as f64 / LOSS_UNIT;
        lost as f64 / LOSS_UNIT > expected + 3.0 * expected.sqrt()
    }

    /// Starts, runs and ends checks, once per closed round. (A minimum older than its
    /// window, a sharing flow's period, or the first second of probing starts one; it
    /// lasts two rounds, one to drain and one to measure, or one if the first already
    /// saw the minimum.)
    fn run_check(&mut self, now: Instant, rate: f64) {
        let Some(mut c) = self.check else {
            let stale = now.saturating_duration_since(self.min_rtt_at) > self.min_rtt_window();
            let sharing_due = self.shared.is_some() && now >= self.next_check;
            let first_due = self.first_check_at.is_some_and(|t| now >= t);
            // A queue stood long enough to share: first see whether it is ours.
            let entry_due = self.shared.is_none()
                && !self.held_by_others
                && self.stood_rounds >= self.shared_after(now);
            if self.mode == Mode::ProbeBw && (stale || sharing_due || first_due || entry_due) {
                self.first_check_at = None;
                self.check = Some(Check {
                    rounds_left: CHECK_ROUNDS,
                    rate,
                    min_seen: None,
                });
            }
            return;
        };
        c.rounds_left -= 1;
        // Done early when the RTT is already at the minimum: no queue stands, ours or
        // anyone's (on a path to itself this is the first round, half the cost).
        if c.rounds_left > 0 && !c.min_seen.is_some_and(|r| self.near_min(r)) {
            self.check = Some(c);
            return;
        }
        self.check = None;
        let Some(seen) = c.min_seen else { return };
        let alone = self.near_min(seen);
        if now.saturating_duration_since(self.min_rtt_at) > self.min_rtt_window() {
            // With our queue drained, this is the lowest RTT there is to see.
            self.min_rtt = seen;
            self.min_rtt_at = now;
        }
        // The verdict, whatever started the check; a later one replaces it.
        self.held_by_others = !alone;
        if alone {
            // Whatever queue stood was this flow's own, and has drained.
            self.stood_rounds = 0;
            if self.shared.take().is_some() {
                // Nobody else holds the queue any more: back to the model, whose rate
                // filter holds what this flow got while sharing.
                self.shared_until = Some(now);
            }
        } else if self.shared.is_some() {
            self.next_check = now + SHARED_CHECK_EVERY;
        }
    }

    /// How long a minimum RTT holds before a check may replace it with a higher one.
    /// Longer while sharing: others' queue then hides the path's minimum from checks,
    /// so a refresh would mostly measure their queue (and end the sharing with it).
    /// A longer route found while sharing costs that much time sharing.
    fn min_rtt_window(&self) -> Duration {
        if self.shared.is_some() {
            MIN_RTT_WINDOW * 3
        } else {
            MIN_RTT_WINDOW
        }
    }

    /// The path's own loss fraction (see `free_losses`).
    fn path_loss(&self) -> f64 {
        let mut v: Vec<f64> = self.free_losses.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// Rounds a queue must stand through before a check may start sharing.
    fn shared_after(&self, now: Instant) -> u32 {
        let recent = self
            .shared_until
            .is_some_and(|t| now.saturating_duration_since(t) < SHARED_MEMORY);
        if recent {
            SHARED_AGAIN_ROUNDS
        } else {
            SHARED_AFTER_ROUNDS
        }
    }

    /// Enters and runs sharing, once per closed round.
    fn update_shared(&mut self, now: Instant, congested: bool) {
        let Some(mut sh) = self.shared else {
            // A queue stood through many rounds and a check found it did not drain with
            // ours: others hold it. That queue is a congestion signal as a loss is, and
            // the model took more than a CUBIC flow's share to build it: start as CUBIC
            // does after a cut, from what this flow had in flight per round trip before
            // the check, with fast convergence's lower plateau. (Entering on the plateau
            // instead kept what start-up took from the others: a CUBIC window grows
            // back only over seconds.)
            if self.mode == Mode::ProbeBw
                && self.held_by_others
                && self.check.is_none()
                && self.stood_rounds >= self.shared_after(now)
            {
                let w = (self.btl_bw * self.rtt.srtt.as_secs_f64()).max(MIN_WINDOW as f64);
                let mut sh = Shared {
                    window: w,
                    w_max: w,
                    epoch: now,
                };
                sh.cut(now, true);
                self.shared = Some(sh);
                self.next_check = now + SHARED_CHECK_EVERY;
            }
            return;
        };
        if self.check.is_some() {
            // The pacing is held low on purpose: the round's rate and losses say
            // nothing about others.
        } else if congested && now.saturating_duration_since(sh.epoch) >= self.rtt.srtt * 2 {
            // One cut per loss episode: its losses are detected over about a round.
            // Fast convergence when the window never regrew to its plateau: release
            // some of it to a newer flow.
            sh.cut(now, sh.window < sh.w_max);
        } else if !congested {
            let t = now.saturating_duration_since(sh.epoch).as_secs_f64();
            let k = cubic_k(sh.w_max);
            let cubic = sh.w_max + CUBIC_C * (t - k).powi(3) * SEGMENT;
            // The Reno-friendly estimate (RFC 9438 4.3), for short paths.
            let reno = sh.w_max * SHARED_BETA
                + 3.0 * (1.0 - SHARED_BETA) / (1.0 + SHARED_BETA) * t
                    / self.rtt.srtt.as_secs_f64().max(1e-4)
                    * SEGMENT;
            sh.window = cubic.max(reno).clamp(sh.window, sh.window * 1.5);
        }
        self.shared = Some(sh);
    }

    /// Sharing a queue held by loss-driven flows (a CUBIC window rules).
    pub fn is_sharing(&self) -> bool {
        self.shared.is_some()
    }

    /// A loss timeout fired with nothing delivered since the last one.
    pub fn on_timeout(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }

    fn bdp(&self) -> f64 {
        self.path_rate() * self.min_rtt.as_secs_f64()
    }

    /// Bytes for host scheduling delay (see `window`).
    fn allowance(&self) -> f64 {
        self.path_rate() * SCHEDULING_ALLOWANCE.as_secs_f64()
    }

    /// Bytes that may be requested and not yet delivered.
    pub fn window(&self) -> u64 {
        if self.backoff > 0 {
            // Blackout: probe with little until something gets through.
            return 16 * 1024;
        }
        if let Some(sh) = &self.shared {
            return (sh.window as u64).clamp(MIN_WINDOW, MAX_WINDOW);
        }
        // Two BDPs, as BBR: the pipe plus at most one BDP of queue at the bottleneck.
        let w = match self.mode {
            Mode::Startup if self.btl_bw == 0.0 => return MIN_WINDOW,
            Mode::Startup => STARTUP_GAIN * self.bdp(),
            _ => 2.0 * self.bdp(),
        };
        // Plus a few milliseconds of data for host scheduling: on loopback or a LAN the
        // minimum RTT is tens of microseconds while a busy receiver answers in
        // milliseconds, and a window of 2 BDP alone starves the pipe. On an Internet
        // path this is a few percent of the window.
        let w = w + self.allowance();
        (w as u64).clamp(MIN_WINDOW, MAX_WINDOW)
    }

    /// Bytes per second at which requests may ask for data.
    pub fn pacing_rate(&self) -> f64 {
        let floor = MIN_WINDOW as f64 / self.rtt.srtt.as_secs_f64().max(1e-4);
        let gain = match self.mode {
            Mode::Startup => STARTUP_GAIN,
            Mode::Drain => 1.0 / STARTUP_GAIN,
            // The 0.75 phase drains the queue the 1.25 probe built; with none standing
            // (RTT near its minimum) it would only leave the link idle.
            Mode::ProbeBw if PROBE_GAINS[self.cycle_idx] < 1.0 && self.queue_free() => 1.0,
            Mode::ProbeBw => PROBE_GAINS[self.cycle_idx],
        };
        if self.btl_bw == 0.0 {
            return floor * STARTUP_GAIN;
        }
        if let Some(c) = &self.check {
            // Half the rate for a round or two: our part of the queue drains while
            // what is in flight keeps the link busy (a window cut would idle it).
            return (CHECK_GAIN * c.rate).max(floor);
        }
        if self.shared.is_some() {
            // The window rules; pace a little above it so that it fills (as TCP does).
            return (1.25 * self.window() as f64 / self.rtt.srtt.as_secs_f64().max(1e-4))
                .max(floor);
        }
        (self.path_rate() * gain).max(floor)
    }

    /// How long after a request its data counts as lost. Doubles per blackout timeout.
    pub fn rto(&self) -> Duration {
        // The latest sample matters when a queue is building faster than srtt follows.
        let base = self.rtt.srtt.max(self.latest_rtt)
            + (self.rtt.rttvar * 4)
                .max(self.min_rtt / 4)
                .max(Duration::from_millis(2));
        let base = base.max(Duration::from_millis(4));
        let mult = 1u32 << self.backoff.min(8);
        (base * mult).min(Duration::from_secs(2))
    }

    pub fn srtt(&self) -> Duration {
        self.rtt.srtt
    }
    pub fn min_rtt(&self) -> Duration {
        self.min_rtt
    }
    pub fn bandwidth(&self) -> f64 {
        self.btl_bw
    }
}

impl Shared {
    /// CUBIC's multiplicative decrease. With `converging` (fast convergence), the
    /// plateau it grows back towards is lowered too, below the window before the cut.
    fn cut(&mut self, now: Instant, converging: bool) {
        self.w_max = if converging {
            self.window * (1.0 + SHARED_BETA) / 2.0
        } else {
            self.window
        };
        self.window = (self.window * SHARED_BETA).max(MIN_WINDOW as f64);
        self.epoch = now;
    }
}

/// Seconds a CUBIC window takes to grow back to `w_max` after a cut (RFC 9438's K).
fn cubic_k(w_max: f64) -> f64 {
    (w_max / SEGMENT * (1.0 - SHARED_BETA) / CUBIC_C).cbrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_tracks_bdp_and_backs_off() {
        let t0 = Instant::now();
        let mut cc = RateControl::new(t0, Duration::from_millis(40));
        assert_eq!(cc.window(), MIN_WINDOW);
        // Deliver 25 MB/s for a few seconds at 40 ms RTT.
        let mut t = t0;
        for _ in 0..200 {
            t += Duration::from_millis(10);
            cc.on_rtt_sample(t, Duration::from_millis(40));
            cc.on_delivered(t, 250_000);
        }
        let bdp = 25e6 * 0.040;
        let w = cc.window() as f64;
        assert!(w >= 1.9 * bdp && w <= 3.0 * bdp, "window {w} vs bdp {bdp}");
        assert!((cc.bandwidth() - 25e6).abs() / 25e6 < 0.05);
        let rto = cc.rto();
        cc.on_timeout();
        assert_eq!(cc.window(), 16 * 1024);
        assert!(cc.rto() >= rto * 2);
        cc.on_delivered(t, 1);
        assert_eq!(cc.backoff, 0);
    }

    /// A flow in start-up after `n` rounds of `rtt_ms`, each delivering twice the last
    /// (from 100 kB) and losing 1/`loss_div` of it; the next round's size.
    fn starting(rtt_ms: u64, n: usize, loss_div: u64) -> (RateControl, Instant, u64) {
        let t0 = Instant::now();
        let mut cc = RateControl::new(t0, Duration::from_millis(100));
        let mut t = t0;
        let mut per_round = 100_000u64;
        for _ in 0..n {
            round(&mut cc, &mut t, rtt_ms, per_round, per_round / loss_div);
            per_round *= 2;
        }
        (cc, t, per_round)
    }

    /// Start-up ends on the round where loss meets a standing queue, not three rounds
    /// after the rate stops growing: those rounds only overflow the bottleneck more.
    #[test]
    fn startup_ends_on_loss_over_a_queue() {
        // Doubling each 40 ms round, RTT at its minimum, random loss: still starting.
        let (mut cc, mut t, mut per_round) = starting(40, 6, 50);
        assert_eq!(cc.mode, Mode::Startup);
        // Jitter with loss: the smoothed RTT rises, but some samples stay low. Still
        // starting (ending here once cost 55-80 % of goodput on a jittery path).
        for i in 0..8 {
            let r = if i % 2 == 0 { 40 } else { 120 };
            cc.on_rtt_sample(t, Duration::from_millis(r));
        }
        t += Duration::from_millis(90);
        cc.on_lost(per_round / 50);
        cc.on_delivered(t, per_round);
        per_round *= 2;
        assert!(!cc.queue_free());
        assert_eq!(cc.mode, Mode::Startup);
        // The queue fills (RTT 40 -> 90 ms) and drops while the rate still grows.
        for _ in 0..8 {
            cc.on_rtt_sample(t, Duration::from_millis(90));
        }
        t += Duration::from_millis(90);
        cc.on_lost(per_round / 10);
        cc.on_delivered(t, per_round * 2);
        assert_eq!(cc.mode, Mode::Drain);
    }

    /// A pull that starts while others keep a deep queue full takes its first RTT over
    /// that queue (77 ms on a 40 ms path, 90 ms when full). Its start-up then sees the
    /// RTT rise by only what is left of the queue; loss with every sample of a round that
    /// far up (beyond a check's margin of the minimum) still ends it. Loss with the RTT
    /// at the minimum is random, and does not.
    #[test]
    fn startup_ends_on_loss_over_a_queue_others_keep_full() {
        let (mut cc, mut t, per_round) = starting(77, 4, 5);
        assert_eq!(cc.mode, Mode::Startup);
        round(&mut cc, &mut t, 87, per_round, per_round / 5);
        assert_eq!(cc.mode, Mode::Drain);
    }

    /// A path longer than the initial guess: its first sample is its minimum RTT.
    /// (The guess once stayed the minimum for ten seconds, so a 150 ms path looked
    /// queued from the start and lost its loss compensation.)
    #[test]
    fn first_sample_replaces_the_guessed_rtt() {
        let t0 = Instant::now();
        let mut cc = RateControl::new(t0, Duration::from_millis(100));
        cc.on_rtt_sample(t0, Duration::from_millis(150));
        assert_eq!(cc.min_rtt(), Duration::from_millis(150));
        assert!(cc.queue_free());
        cc.on_rtt_sample(t0, Duration::from_millis(160));
        assert_eq!(cc.min_rtt(), Duration::from_millis(150));
        cc.on_rtt_sample(t0, Duration::from_millis(140));
        assert_eq!(cc.min_rtt(), Duration::from_millis(140));
    }

    /// The 0.75 phase of the probing cycle drains a queue; with none standing it
    /// would idle the link for a round, so it paces at 1.0 then.
    #[test]
    fn probe_down_only_when_a_queue_stands() {
        let t0 = Instant::now();
        let mut cc = RateControl::new(t0, Duration::from_millis(40));
        cc.mode = Mode::ProbeBw;
        cc.btl_bw = 25e6;
        cc.cycle_idx = 1; // gain 0.75
        cc.on_rtt_sample(t0, Duration::from_millis(40));
        assert!(
            (cc.pacing_rate() - 25e6).abs() < 1.0,
            "{}",
            cc.pacing_rate()
        );
        // Cruising: a little above the estimate, so that a small queue covers rounds
        // that lose more requests than the average.
        cc.cycle_idx = 2;
        assert!(cc.pacing_rate() > 1.02 * 25e6, "{}", cc.pacing_rate());
        cc.cycle_idx = 1;
        for _ in 0..50 {
            cc.on_rtt_sample(t0, Duration::from_millis(70));
        }
        assert!(
            (cc.pacing_rate() - 0.75 * 25e6).abs() < 1.0,
            "{}",
            cc.pacing_rate()
        );
    }

    /// Loopback: a minimum RTT of tens of microseconds makes the BDP a fraction of a
    /// chunk, while a request always leaves a few chunks in flight. Drain must still
    /// end (it once never did, and pulls crawled at the pacing floor).
    #[test]
    fn drain_ends_on_a_microsecond_rtt_path() {
        let t0 = Instant::now();
        let mut cc = RateControl::new(t0, Duration::from_micros(40));
        let mut t = t0;
        for _ in 0..100 {
            t += Duration::from_millis(1);
            cc.on_rtt_sample(t, Duration::from_micros(40));
            cc.set_inflight(300_000);
            cc.on_delivered(t, 1_000_000); // 1 GB/s
        }
        assert_eq!(cc.mode, Mode::ProbeBw);
        assert!(
            cc.pacing_rate() >= 0.7 * cc.bandwidth(),
            "pacing {} vs bandwidth {}",
            cc.pacing_rate(),
            cc.bandwidth()
        );
    }

    /// One round of `rtt` at a steady path: `delivered` bytes arrive, `lost` are
    /// declared lost, `inflight` stay requested.
    fn round(cc: &mut RateControl, t: &mut Instant, rtt_ms: u64, delivered: u64, lost: u64) {
        let rtt = Duration::from_millis(rtt_ms);
        *t += rtt;
        for _ in 0..4 {
            cc.on_rtt_sample(*t, rtt);
        }
        cc.on_lost(lost);
        cc.set_inflight(delivered);
        cc.on_delivered(*t, delivered);
    }

    /// `n` rounds whose RTT is `checking` while a check runs and `otherwise` when not;
    /// whether a check ran.
    fn rounds_seen_by_checks(
        cc: &mut RateControl,
        t: &mut Instant,
        n: usize,
        checking: u64,
        otherwise: u64,
    ) -> bool {
        let mut checked = false;
        for _ in 0..n {
            checked |= cc.check.is_some();
            let rtt = if cc.check.is_some() {
                checking
            } else {
                otherwise
            };
            round(cc, t, rtt, 1_000_000, 0);
        }
        checked
    }

    /// Rounds of a queue others hold (90 ms over the 40 ms path, checks included) until
    /// sharing starts.
    fn queue_held_by_others(cc: &mut RateControl, t: &mut Instant, lost: u64) {
        for _ in 0..SHARED_AFTER_ROUNDS + CHECK_ROUNDS {
            round(cc, t, 90, 1_000_000, lost);
        }
        assert!(cc.is_sharing());
    }

    /// A flow probing at 40 ms minimum RTT with 1 MB per round (25 MB/s).
    fn probing(t0: Instant) -> (RateControl, Instant) {
        let mut cc = RateControl::new(t0, Duration::from_millis(40));
        let mut t = t0;
        round(&mut cc, &mut t, 40, 1_000_000, 0);
        cc.mode = Mode::ProbeBw;
        cc.first_check_at = None;
        (cc, t)
    }

    /// Others keep the bottleneck's queue full (RTT 90 ms over a 40 ms path): the
    /// flow shares like them — a cut by loss, CUBIC growth without — where the model
    /// would ignore the loss and keep taking the queue.
    #[test]
    fn sharing_starts_when_others_hold_the_queue() {
        let t0 = Instant::now();
        let (mut cc, mut t) = probing(t0);
        for _ in 0..SHARED_AFTER_ROUNDS {
            round(&mut cc, &mut t, 90, 1_000_000, 0);
            assert!(!cc.is_sharing());
        }
        // First a check: the queue does not drain with ours.
        assert!(cc.check.is_some());
        for _ in 0..CHECK_ROUNDS {
            round(&mut cc, &mut t, 90, 1_000_000, 0);
        }
        assert!(cc.is_sharing());
        // Entered as CUBIC after a cut: 0.7 of what was in flight per round trip,
        // growing back towards a plateau of 0.85 of it.
        let w0 = cc.window() as f64;
        assert!(
            (w0 / (SHARED_BETA * 1_000_000.0) - 1.0).abs() < 0.01,
            "entered with 0.7 of what was in flight: {w0}"
        );
        let w_max = cc.shared.map_or(0.0, |s| s.w_max);
        assert!((w_max / 850_000.0 - 1.0).abs() < 0.01, "plateau {w_max}");
        round(&mut cc, &mut t, 90, 1_000_000, 0);
        let w1 = cc.window() as f64;
        assert!(w1 >= w0, "no loss, no cut: {w1} < {w0}");
        round(&mut cc, &mut t, 90, 1_000_000, 20_000);
        let w2 = cc.window() as f64;
        assert!(
            (w2 - w1 * SHARED_BETA).abs() < 2.0,
            "cut to 0.7: {w2} vs {w1}"
        );
        // The next round still reports the same episode's losses: no second cut.
        round(&mut cc, &mut t, 90, 1_000_000, 5_000);
        assert!(cc.window() as f64 >= w2);
        // Then it grows back, towards and past the plateau.
        for _ in 0..30 {
            round(&mut cc, &mut t, 90, 1_000_000, 0);
        }
        assert!(cc.window() as f64 > w2 * 1.05, "{} vs {w2}", cc.window());
        assert!(
            cc.pacing_rate() > cc.window() as f64 / 0.090,
            "paced above the window's rate"
        );
    }

    /// A queue this flow's own probing keeps standing (a rate estimate a little high)
    /// drains in the check that precedes sharing: the flow does not share, and the
    /// check drained the queue.
    #[test]
    fn a_queue_of_our_own_is_not_shared() {
        let t0 = Instant::now();
        let (mut cc, mut t) = probing(t0);
        let mut checks = 0;
        for i in 0..4 * SHARED_AFTER_ROUNDS {
            let checking = cc.check.is_some();
            round(
                &mut cc,
                &mut t,
                if checking { 41 } else { 60 },
                1_000_000,
                0,
            );
            checks += usize::from(checking && cc.check.is_none());
            assert!(!cc.is_sharing(), "round {i}");
        }
        assert!(checks >= 2, "{checks} checks");
    }

    /// After a check ended sharing, a queue that stands again is shared sooner, but
    /// only on a new check's verdict: the last one said the queue was gone.
    #[test]
    fn sharing_again_needs_a_new_check() {
        let t0 = Instant::now();
        let (mut cc, mut t) = probing(t0);
        queue_held_by_others(&mut cc, &mut t, 0);
        while cc.is_sharing() {
            let rtt = if cc.check.is_some() { 41 } else { 90 };
            round(&mut cc, &mut t, rtt, 1_000_000, 0);
            assert!(t < t0 + Duration::from_secs(10), "sharing never ended");
        }
        let mut checked = false;
        for _ in 0..SHARED_AGAIN_ROUNDS + CHECK_ROUNDS {
            checked |= cc.check.is_some();
            round(&mut cc, &mut t, 90, 1_000_000, 0);
            assert!(!cc.is_sharing() || checked, "shared again without a check");
        }
        assert!(cc.is_sharing());
    }

    /// A queue that stands through one round in a few, and random loss, are not others'
    /// queue: a flow alone on a lossy path never shares.
    #[test]
    fn random_loss_without_a_standing_queue_does_not_share() {
        let t0 = Instant::now();
        let (mut cc, mut t) = probing(t0);
        for i in 0..200 {
            let rtt = if i % 4 == 0 { 90 } else { 41 };
            round(&mut cc, &mut t, rtt, 1_000_000, 100_000);
            assert!(!cc.is_sharing(), "round {i}");
        }
    }

    /// While sharing, the path's own loss (measured while no queue stood) is not taken
    /// for congestion; loss well above it is.
    #[test]
    fn sharing_cuts_on_loss_above_the_paths_own() {
        let t0 = Instant::now();
        let (mut cc, mut t) = probing(t0);
        for _ in 0..FREE_LOSS_ROUNDS {
            round(&mut cc, &mut t, 41, 1_000_000, 50_000);
        }
        assert!((cc.path_loss() - 50_000.0 / 1_050_000.0).abs() < 1e-9);
        queue_held_by_others(&mut cc, &mut t, 50_000);
        for _ in 0..5 {
            round(&mut cc, &mut t, 90, 1_000_000, 0);
        }
        let w = cc.window();
        round(&mut cc, &mut t, 90, 1_000_000, 50_000);
        assert!(
            cc.window() >= w,
            "the path's 5 % cut it: {} < {w}",
            cc.window()
        );
        round(&mut cc, &mut t, 90, 1_000_000, 200_000);
        assert!(cc.window() < w, "20 % did not cut it");
    }

    /// Every few seconds a sharing flow drains its part of the queue (asking at half
    /// its rate for up to two rounds). If the RTT then falls to the path's minimum, nobody else
    /// held the queue and the model rules again; if not, sharing goes on.
    #[test]
    fn a_check_ends_sharing_when_the_queue_goes() {
        let t0 = Instant::now();
        let (mut cc, mut t) = probing(t0);
        queue_held_by_others(&mut cc, &mut t, 0);
        let shared_window = cc.window();
        // Until the check is due: sharing, with its window.
        while t + Duration::from_millis(90) < cc.next_check {
            round(&mut cc, &mut t, 90, 1_000_000, 0);
            assert!(cc.check.is_none());
        }
        round(&mut cc, &mut t, 90, 1_000_000, 0);
        round(&mut cc, &mut t, 90, 1_000_000, 0);
        assert!(cc.check.is_some(), "no check after {:?}", t - t0);
        let rate = 1_000_000.0 / 0.090;
        let p = cc.pacing_rate();
        assert!((p - CHECK_GAIN * rate).abs() < 1.0, "check pacing {p}");
        // Others still hold the queue: the check ends, sharing goes on.
        round(&mut cc, &mut t, 90, 450_000, 0);
        round(&mut cc, &mut t, 88, 450_000, 0);
        assert!(cc.check.is_none());
        assert!(cc.is_sharing());
        assert!(cc.window() >= shared_window);
        // At the next check the RTT falls to the minimum: they left.
        for _ in 0..60 {
            let rtt = if cc.check.is_some() { 41 } else { 90 };
            round(&mut cc, &mut t, rtt, 1_000_000, 0);
            if !cc.is_sharing() {
                break;
            }
        }
        assert!(!cc.is_sharing());
        assert_eq!(cc.min_rtt(), Duration::from_millis(40));
    }

    /// The minimum RTT rises (a longer route) only through a check, which drains this
    /// flow's own queue first: never to a sample that had our queue in it.
    #[test]
    fn minimum_rtt_rises_only_through_a_check() {
        let t0 = Instant::now();
        let (mut cc, mut t) = probing(t0);
        // The route now takes 44 ms (within the checks' bound: no queue seen).
        while t < t0 + MIN_RTT_WINDOW {
            round(&mut cc, &mut t, 44, 1_000_000, 0);
            assert_eq!(cc.min_rtt(), Duration::from_millis(40));
        }
        // Past the window, with samples of 50 ms (this flow's queue on top).
        assert!(rounds_seen_by_checks(&mut cc, &mut t, 5, 44, 50));
        assert_eq!(cc.min_rtt(), Duration::from_millis(44));
        assert!(!cc.is_sharing());
    }

    /// A route 50 % longer looks like others' queue: the flow shares, and its checks
    /// keep the old minimum (else they would measure others' queue) for 30 s; then the
    /// minimum is the new route's, and the next check ends the sharing.
    #[test]
    fn a_longer_route_while_sharing_is_learnt_in_30_s() {
        let t0 = Instant::now();
        let (mut cc, mut t) = probing(t0);
        queue_held_by_others(&mut cc, &mut t, 0);
        while t < t0 + MIN_RTT_WINDOW * 3 {
            round(&mut cc, &mut t, 90, 1_000_000, 0);
            assert_eq!(cc.min_rtt(), Duration::from_millis(40));
            assert!(cc.is_sharing());
        }
        for _ in 0..100 {
            round(&mut cc, &mut t, 90, 1_000_000, 0);
            if !cc.is_sharing() {
                break;
            }
        }
        assert_eq!(cc.min_rtt(), Duration::from_millis(90));
        assert!(!cc.is_sharing());
    }

    /// A flow that started while others' queue stood measured its minimum RTT over it;
    /// its first check, a second into probing, finds the path's.
    #[test]
    fn first_check_finds_the_minimum_under_others_queue() {
        let t0 = Instant::now();
        let mut cc = RateControl::new(t0, Duration::from_millis(100));
        let mut t = t0;
        round(&mut cc, &mut t, 77, 1_000_000, 0);
        cc.mode = Mode::ProbeBw;
        cc.first_check_at = Some(t + FIRST_CHECK_AFTER);
        assert!(rounds_seen_by_checks(&mut cc, &mut t, 30, 45, 77));
        assert_eq!(cc.min_rtt(), Duration::from_millis(45));
    }
}

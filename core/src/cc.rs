//! Receiver-side rate control for pulls: a simplified BBR.
//!
//! The puller decides how many bytes may be requested but not yet delivered (the
//! window) and how fast requests leave (the pacing rate). Both come from a model of the
//! path — the bottleneck delivery rate (a windowed max of measured rates) and the
//! minimum RTT — not from loss, because random loss is not congestion: loss-driven
//! control collapses on lossy links. The window (2x the bandwidth-delay product) still
//! bounds the queue this flow can build, which is what lets competing flows keep a share.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Smallest window: enough to keep a few chunks moving at start and after idle.
pub const MIN_WINDOW: u64 = 64 * 1024;
const MAX_WINDOW: u64 = 256 << 20;
/// Startup gain (2/ln 2, as BBR) and the steady probing cycle.
const STARTUP_GAIN: f64 = 2.89;
const PROBE_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
const BW_FILTER_ROUNDS: usize = 10;
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
const SCHEDULING_ALLOWANCE: Duration = Duration::from_millis(2);
const MAX_DRAIN_ROUNDS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw,
}

#[derive(Debug)]
pub struct RateControl {
    mode: Mode,
    /// Recent per-round delivery rates (bytes/s), newest last.
    bw_samples: VecDeque<f64>,
    btl_bw: f64,
    min_rtt: Duration,
    min_rtt_at: Instant,
    srtt: Duration,
    rttvar: Duration,
    latest_rtt: Duration,
    has_rtt: bool,
    /// Smallest RTT sample of the current round and of the last closed one: a queue
    /// the whole round's samples sat above stood; jitter alone leaves some low.
    round_min_rtt: Option<Duration>,
    last_round_min_rtt: Option<Duration>,
    /// Bytes requested and not yet delivered, as last reported by the puller.
    inflight: u64,
    round_start: Instant,
    round_delivered: u64,
    round_lost: u64,
    /// Smoothed fraction of requested bytes that were lost.
    loss: f64,
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
            srtt: rtt,
            rttvar: rtt / 2,
            latest_rtt: rtt,
            has_rtt: false,
            round_min_rtt: None,
            last_round_min_rtt: None,
            inflight: 0,
            round_start: now,
            round_delivered: 0,
            round_lost: 0,
            loss: 0.0,
            full_bw: 0.0,
            full_bw_rounds: 0,
            cycle_idx: 0,
            cycle_start: now,
            drain_rounds: 0,
            app_limited: false,
            backoff: 0,
        }
    }

    pub fn on_rtt_sample(&mut self, now: Instant, rtt: Duration) {
        self.latest_rtt = rtt;
        self.round_min_rtt = Some(self.round_min_rtt.map_or(rtt, |m| m.min(rtt)));
        if !self.has_rtt {
            self.srtt = rtt;
            self.rttvar = rtt / 2;
            self.has_rtt = true;
            // The initial RTT was a guess: a path longer than it must not keep the
            // guess as its minimum (it would until the minimum's window expired).
            self.min_rtt = rtt;
            self.min_rtt_at = now;
        } else {
            let diff = self.srtt.abs_diff(rtt);
            self.rttvar = (self.rttvar * 3 + diff) / 4;
            self.srtt = (self.srtt * 7 + rtt) / 8;
        }
        if rtt <= self.min_rtt || now.saturating_duration_since(self.min_rtt_at) > MIN_RTT_WINDOW {
            self.min_rtt = rtt;
            self.min_rtt_at = now;
        }
    }

    /// Starts a measurement round now (when data starts to flow, so the handshake's
    /// wait does not count as a round with nothing delivered).
    pub fn start_round(&mut self, now: Instant) {
        self.round_start = now;
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

    /// No standing queue: the smoothed RTT is within the bound.
    fn queue_free(&self) -> bool {
        self.srtt <= self.queue_bound()
    }

    /// Every RTT sample of the last round exceeded the bound: the bottleneck's queue
    /// stood through it. (The smoothed RTT would also rise with jitter alone.)
    fn queue_stood(&self) -> bool {
        self.last_round_min_rtt
            .is_some_and(|r| r > self.queue_bound())
    }

    /// The rate at which data must be *asked for* so that `btl_bw` arrives: delivery
    /// over the fraction that survives. Only while no queue stands (the RTT is near its
    /// minimum), so the loss is the path's and not congestion's; bounded at 30 %.
    fn path_rate(&self) -> f64 {
        if self.queue_free() {
            self.btl_bw / (1.0 - self.loss.min(0.3))
        } else {
            self.btl_bw
        }
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
        self.backoff = 0;
        self.round_delivered += bytes;
        let elapsed = now.saturating_duration_since(self.round_start);
        let round = self.srtt.max(Duration::from_millis(1));
        if elapsed < round {
            return;
        }
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
        let app_limited = std::mem::take(&mut self.app_limited);
        if app_limited && rate < self.btl_bw {
            // Says nothing about the path, and must not end startup.
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
                if lost && self.queue_stood() {
                    // Loss over a queue: the bottleneck is full now. Waiting three
                    // rounds for the rate to stop growing would only overflow it more.
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
        let floor = MIN_WINDOW as f64 / self.srtt.as_secs_f64().max(1e-4);
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
        (self.path_rate() * gain).max(floor)
    }

    /// How long after a request its data counts as lost. Doubles per blackout timeout.
    pub fn rto(&self) -> Duration {
        // The latest sample matters when a queue is building faster than srtt follows.
        let base = self.srtt.max(self.latest_rtt)
            + (self.rttvar * 4)
                .max(self.min_rtt / 4)
                .max(Duration::from_millis(2));
        let base = base.max(Duration::from_millis(4));
        let mult = 1u32 << self.backoff.min(8);
        (base * mult).min(Duration::from_secs(2))
    }

    pub fn srtt(&self) -> Duration {
        self.srtt
    }
    pub fn min_rtt(&self) -> Duration {
        self.min_rtt
    }
    pub fn bandwidth(&self) -> f64 {
        self.btl_bw
    }
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

    /// Start-up ends on the round where loss meets a standing queue, not three rounds
    /// after the rate stops growing: those rounds only overflow the bottleneck more.
    #[test]
    fn startup_ends_on_loss_over_a_queue() {
        let t0 = Instant::now();
        let mut cc = RateControl::new(t0, Duration::from_millis(40));
        let mut t = t0;
        let mut per_round = 100_000u64;
        // Doubling each 40 ms round, RTT at its minimum, random loss: still starting.
        for _ in 0..6 {
            t += Duration::from_millis(40);
            cc.on_rtt_sample(t, Duration::from_millis(40));
            cc.on_lost(per_round / 50);
            cc.on_delivered(t, per_round);
            per_round *= 2;
        }
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
}

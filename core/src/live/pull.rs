//! A live pull, sans-IO: one puller round per checkpoint.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::merkle::Hash;
use crate::puller::{PullConfig, PullError, PullEvent, PullStats, Puller};
use crate::rng::Rng;
use crate::transmit::Transmit;

use super::{FollowError, Follower, LiveError, Window};

/// Shortest and longest wait between two rounds of a live pull: after a round that
/// found the exposure grown, the next starts at once; the first that finds it
/// unchanged waits `POLL_MIN`, and each next one doubles the wait, up to `POLL_MAX`.
pub const POLL_MIN: Duration = Duration::from_millis(5);
/// See [`POLL_MIN`].
pub const POLL_MAX: Duration = Duration::from_millis(40);

/// How long a live pull keeps the group's datagrams for its next round: the
/// exposer's "just sent" window ([`crate::multicast::DEFAULT_WINDOW`]) and a round
/// trip.
pub const GROUP_REPLAY: Duration = Duration::from_millis(100);
/// At most this many are kept (about 12 MiB at LAN datagram sizes).
pub const GROUP_REPLAY_MAX: usize = 8192;

/// How a live pull ended well: the final checkpoint, every byte written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEnd {
    /// Bytes.
    pub size: u64,
    /// Their root (`b3sum`).
    pub root: Hash,
    /// The exposer's key.
    pub exposer_key: [u8; 32],
}

/// Why a live pull failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivePullError {
    /// A round failed (the exposer went quiet, refused a checkpoint's consistency...).
    Pull(PullError),
    /// The exposer changed bytes already written.
    Live(LiveError),
}

impl std::fmt::Display for LivePullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pull(e) => e.fmt(f),
            Self::Live(e) => e.fmt(f),
        }
    }
}

/// A live pull, sans-IO: rounds of [`Puller`]s, one per checkpoint, each given what
/// the [`Follower`] holds; the bytes to write come out in order
/// ([`LivePull::take_output`]). Driven like a puller.
pub struct LivePull {
    template: PullConfig,
    expected_root: Option<Hash>,
    rng: Rng,
    follower: Follower,
    puller: Option<Puller>,
    next_round: Option<Instant>,
    poll: Duration,
    last_len: Option<u64>,
    exposer_key: Option<[u8; 32]>,
    joined: Option<Window>,
    out: Vec<u8>,
    /// The group's datagrams of the last [`GROUP_REPLAY`], and whether the current
    /// round was given them.
    recent_group: std::collections::VecDeque<(Instant, Vec<u8>)>,
    replayed: bool,
    /// The last finished round's rate control, for the next.
    cc: Option<crate::cc::RateControl>,
    end: Option<Result<LiveEnd, LivePullError>>,
    /// Rounds started.
    pub rounds: u64,
    /// Counters of the rounds finished.
    pub stats: PullStats,
}

impl LivePull {
    /// A live pull of `cfg` (its `live` and `expected_root` are set per round; an
    /// `expected_root` is checked against the final checkpoint's root), holding what
    /// `follower` holds. The first round starts at once.
    pub fn new(mut cfg: PullConfig, follower: Follower, rng: Rng, now: Instant) -> Self {
        let expected_root = cfg.expected_root.take();
        cfg.resume = None;
        cfg.offload_verify = false;
        cfg.scheduled = false;
        Self {
            template: cfg,
            expected_root,
            rng,
            follower,
            puller: None,
            next_round: Some(now),
            poll: POLL_MIN,
            last_len: None,
            exposer_key: None,
            joined: None,
            out: Vec::new(),
            recent_group: std::collections::VecDeque::new(),
            replayed: false,
            cc: None,
            end: None,
            rounds: 0,
            stats: PullStats::default(),
        }
    }

    /// What is held so far.
    pub fn follower(&self) -> &Follower {
        &self.follower
    }

    /// Bytes verified and ready to write, in order (taken).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The end, once there is one.
    pub fn end(&self) -> Option<&Result<LiveEnd, LivePullError>> {
        self.end.as_ref()
    }

    /// The window this pull joined at, when the exposer no longer held the stream's
    /// start (its output then starts at that window's first byte).
    pub fn joined(&self) -> Option<&Window> {
        self.joined.as_ref()
    }

    /// The exposer's key, once a round has started.
    pub fn exposer_key(&self) -> Option<[u8; 32]> {
        self.exposer_key
    }

    /// The length of the latest checkpoint seen.
    pub fn checkpoint_len(&self) -> Option<u64> {
        self.last_len
    }

    /// The current round's puller (for its rate control and timers).
    pub fn puller(&self) -> Option<&Puller> {
        self.puller.as_ref()
    }

    /// Feeds a datagram.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if let Some(p) = &mut self.puller {
            p.handle(now, from, datagram);
        }
        self.process(now);
    }

    /// The multicast group to receive on, while the current round is a member
    /// ([`Puller::group`]).
    pub fn group(&self) -> Option<std::net::SocketAddrV4> {
        self.puller.as_ref().and_then(|p| p.group())
    }

    /// Feeds a datagram received on the group. One the current round does not take
    /// is kept a while ([`GROUP_REPLAY`]): the group serves every follower at once,
    /// and one between rounds (handshaking), or whose checkpoint is older than the
    /// asker's, would miss what another asked for, then wait out the group's "just
    /// sent" window for its own request; the next round is given what came
    /// meanwhile.
    pub fn handle_group(&mut self, now: Instant, datagram: &[u8]) {
        let taken = match &mut self.puller {
            Some(p) if p.transferring() => {
                let before = p.stats.group_datagrams;
                p.handle_group(now, datagram);
                p.stats.group_datagrams > before
            }
            _ => false,
        };
        if !taken {
            self.keep_group(now, datagram);
        }
        self.process(now);
    }

    fn keep_group(&mut self, now: Instant, datagram: &[u8]) {
        while self
            .recent_group
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > GROUP_REPLAY)
            || self.recent_group.len() >= GROUP_REPLAY_MAX
        {
            self.recent_group.pop_front();
        }
        self.recent_group.push_back((now, datagram.to_vec()));
    }

    /// A round whose session just came up is given the group's recent datagrams.
    fn replay_group(&mut self, now: Instant) {
        let Some(p) = &mut self.puller else { return };
        if self.replayed || !p.transferring() {
            return;
        }
        self.replayed = true;
        // Given once: what this round does not take now is for none.
        for (t, d) in std::mem::take(&mut self.recent_group) {
            if now.saturating_duration_since(t) <= GROUP_REPLAY {
                p.handle_group(now, &d);
            }
        }
    }

    /// The group cannot be joined, or brings nothing: this round and every later one
    /// pull by unicast.
    pub fn leave_group(&mut self) {
        self.template.multicast = false;
        if let Some(p) = &mut self.puller {
            p.leave_group();
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let t = self.puller.as_mut()?.poll_transmit(now);
        self.process(now);
        t
    }

    /// When [`LivePull::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        match (&self.puller, self.next_round) {
            (Some(p), _) => p.poll_timeout(),
            (None, t) => t,
        }
    }

    /// Runs the timers: the current round's, or the start of the next.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.end.is_some() {
            return;
        }
        match &mut self.puller {
            Some(p) => {
                if p.poll_timeout().is_some_and(|t| t <= now) {
                    p.handle_timeout(now);
                }
            }
            None => {
                if self.next_round.is_some_and(|t| t <= now) {
                    self.start_round(now);
                }
            }
        }
        self.process(now);
    }

    fn start_round(&mut self, now: Instant) {
        let mut cfg = self.template.clone();
        cfg.live = Some(self.follower.base());
        cfg.pinned_key = cfg.pinned_key.or(self.exposer_key);
        self.follower.start_round();
        self.replayed = false;
        self.rounds += 1;
        self.next_round = None;
        let mut p = Puller::with_rng(cfg, now, self.rng.fork());
        if let Some(cc) = &self.cc {
            p.adopt_rate_control(cc.carried(now));
        }
        self.puller = Some(p);
    }

    fn fail(&mut self, e: LivePullError) {
        if let Some(p) = self.puller.take() {
            self.stats.add(&p.stats);
        }
        self.end = Some(Err(e));
    }

    fn process(&mut self, now: Instant) {
        self.replay_group(now);
        loop {
            let Some(p) = &mut self.puller else { return };
            let Some(ev) = p.poll_event() else { return };
            match ev {
                PullEvent::Started { exposer_key, .. } => {
                    self.exposer_key = Some(exposer_key);
                    if let Some(w) = p.live_joined().cloned() {
                        if self.follower.join(&w) {
                            self.joined = Some(w);
                        }
                    }
                }
                PullEvent::Chunk { index, data } => {
                    let out = &mut self.out;
                    let r = self.follower.on_chunk(index, data, &mut |b| {
                        out.extend_from_slice(b);
                        Ok(())
                    });
                    if let Err(FollowError::Live(e)) = r {
                        self.fail(LivePullError::Live(e));
                        return;
                    }
                }
                PullEvent::Done => {
                    // A round that found the group silent or too lossy left it: the
                    // next ones do not wait for it again.
                    if p.stats.left_group {
                        self.template.multicast = false;
                    }
                    // The next round starts from what this one learned of the path.
                    self.cc = Some(p.rate_control().carried(now));
                    let live = p.is_live_checkpoint();
                    let (size, root) = p.checkpoint().unwrap_or((0, [0; 32]));
                    if let Some(p) = self.puller.take() {
                        self.stats.add(&p.stats);
                    }
                    if !live {
                        if let Some(expected) = self.expected_root.filter(|e| *e != root) {
                            self.fail(LivePullError::Pull(PullError::RootMismatch {
                                expected,
                                got: root,
                            }));
                            return;
                        }
                        if self.follower.written() != size {
                            self.fail(LivePullError::Pull(PullError::BadCheckpoint {
                                what: "the final checkpoint does not cover what was written",
                            }));
                            return;
                        }
                        self.end = Some(Ok(LiveEnd {
                            size,
                            root,
                            exposer_key: self.exposer_key.unwrap_or_default(),
                        }));
                        return;
                    }
                    self.poll = if self.last_len.is_some_and(|l| l >= size) {
                        (self.poll * 2).clamp(POLL_MIN, POLL_MAX)
                    } else {
                        // Grown: look again at once (a fast stream is followed round
                        // after round; a slow one costs one more round per record).
                        Duration::ZERO
                    };
                    self.last_len = Some(size);
                    self.next_round = Some(now + self.poll);
                }
                PullEvent::Failed(PullError::CheckpointMoved) => {
                    if p.stats.left_group {
                        self.template.multicast = false;
                    }
                    if let Some(p) = self.puller.take() {
                        self.stats.add(&p.stats);
                    }
                    self.next_round = Some(now);
                }
                PullEvent::Failed(e) => {
                    self.fail(LivePullError::Pull(e));
                    return;
                }
                // No offloaded verification, no resume, not scheduled.
                PullEvent::Verify { .. }
                | PullEvent::Recheck { .. }
                | PullEvent::Missing { .. } => {}
            }
        }
    }
}

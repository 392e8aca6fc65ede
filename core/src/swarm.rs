//! Multi-source pulls: a sans-IO scheduler over one [`Puller`] per source.
//!
//! Each source has its own session (its own handshake, content key and rate
//! control); every chunk any of them delivers is verified against the one root, so
//! no source is trusted. The swarm owns the shared sets, what is verified and what is
//! claimed, and grants each source chunks as it drains the ones it holds: a source
//! that delivers twice as fast is granted twice as many. A chunk goes to one source,
//! except in the endgame, when nothing is left unclaimed and a source with room may
//! ask for chunks another holds (whichever copy comes first is kept, the other's
//! request is forgotten).
//!
//! A source that fails (unreachable, wrong key or root, a chunk failing
//! verification) or stalls (silent with chunks granted, while others still serve) is
//! dropped, and what it held goes back to the others. The pull fails only when no
//! source is left. With one source the swarm passes its puller's events through
//! unchanged: a single-source pull behaves as a plain [`Puller`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::bitset::ChunkSet;
use crate::merkle::CHUNK_SIZE;
use crate::puller::{BadChunk, PullError, PullEvent, PullStats, Puller};
use crate::transmit::Transmit;

/// A source silent this long with chunks granted, while others serve, is dropped.
/// At least this, or 8 smoothed round trips.
const STALL_MIN: Duration = Duration::from_secs(3);

/// Fewest chunks a source holds granted (so a new source gets going).
const MIN_GRANT: u64 = 4;

/// How long what a source said it lacks keeps chunks from it.
const LACKS_FORGOTTEN: Duration = Duration::from_secs(1);

/// Most chunks a source holds granted and not yet delivered.
const MAX_GRANT: u64 = 8192;

/// Most missing chunks an endgame look-up examines in one go.
const STEAL_SCAN: u64 = 4096;

/// One source of the pull.
pub struct Source {
    /// The puller talking to this source.
    pub puller: Puller,
    /// Why it was dropped, if it was.
    pub dropped: Option<PullError>,
    /// Chunks granted to it and not yet verified.
    assigned: ChunkSet,
    pending: u64,
    /// Whether its handshake is done (its Started event was seen).
    started: bool,
    /// No endgame look-up before then (the last one found nothing).
    next_steal: Option<Instant>,
    /// When it last went from no work to some: silence before then is no stall.
    busy_since: Option<Instant>,
    /// Chunks it said it does not hold (a sharer: MISSING), not granted to it again
    /// until [`LACKS_FORGOTTEN`] after the first of them (a sharer still pulling
    /// may hold them by then).
    lacks: ChunkSet,
    lacks_since: Option<Instant>,
}

impl Source {
    /// The source's address.
    pub fn addr(&self) -> SocketAddr {
        self.puller.remote()
    }

    /// Content bytes this source delivered first (verified, and stored).
    pub fn bytes(&self) -> u64 {
        self.puller.stats.content_bytes
    }

    fn live(&self) -> bool {
        self.dropped.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recheck {
    /// No resumed chunks are being checked.
    None,
    /// The driver is checking them (one source's verifier).
    Pending,
    /// Checked; a source that asks again is answered at once.
    Done,
}

/// A pull from several sources of one root.
pub struct Swarm {
    sources: Vec<Source>,
    /// Verified chunks (of the file), once the first handshake gave the size.
    have: ChunkSet,
    /// Chunks verified or granted to a source.
    claimed: ChunkSet,
    /// Chunks granted to a second source (the endgame).
    dup: ChunkSet,
    /// Where to look for the next unclaimed chunk.
    cursor: u64,
    started: bool,
    recheck: Recheck,
    events: VecDeque<(usize, PullEvent)>,
    finished: bool,
    /// Which source's transmits come first next time (round robin).
    rr: usize,
}

impl Swarm {
    /// A swarm over `pullers`, one per source (each with its own remote address; the
    /// first is the main source; none: a pull that fails at once). All must require the same root
    /// ([`crate::puller::PullConfig::expected_root`]) when there are several.
    pub fn new(mut pullers: Vec<Puller>) -> Self {
        let multi = pullers.len() > 1;
        for p in &mut pullers {
            p.set_scheduled(multi);
        }
        let mut events = VecDeque::new();
        if pullers.is_empty() {
            events.push_back((0, PullEvent::Failed(PullError::Timeout)));
        }
        Self {
            finished: pullers.is_empty(),
            sources: pullers
                .into_iter()
                .map(|puller| Source {
                    puller,
                    dropped: None,
                    assigned: ChunkSet::new(0),
                    pending: 0,
                    started: false,
                    next_steal: None,
                    busy_since: None,
                    lacks: ChunkSet::new(0),
                    lacks_since: None,
                })
                .collect(),
            have: ChunkSet::new(0),
            claimed: ChunkSet::new(0),
            dup: ChunkSet::new(0),
            cursor: 0,
            started: false,
            recheck: Recheck::None,
            events,
            rr: 0,
        }
    }

    fn multi(&self) -> bool {
        self.sources.len() > 1
    }

    /// The sources, in the order given.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Whether the pull ended (done, or every source failed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether any source has answered.
    pub fn answered(&self) -> bool {
        self.sources.iter().any(|s| s.puller.answered())
    }

    /// The smoothed round-trip time to the first live source (for progress
    /// displays).
    pub fn srtt(&self) -> Duration {
        self.sources
            .iter()
            .find(|s| s.live())
            .or(self.sources.first())
            .map_or(Duration::ZERO, |s| s.puller.rate_control().srtt())
    }

    /// Every source's counters added up, with the sources dropped.
    pub fn stats(&self) -> PullStats {
        let mut t = PullStats::default();
        for s in &self.sources {
            t.add(&s.puller.stats);
            if s.dropped.is_some() {
                t.sources_dropped += 1;
            }
        }
        t
    }

    /// The next event, with the source it came from.
    pub fn poll_event(&mut self) -> Option<(usize, PullEvent)> {
        self.events.pop_front()
    }

    /// Scheduler state, for traces.
    pub fn debug_state(&self, now: Instant) -> String {
        let mut out = String::new();
        for (i, s) in self.sources.iter().enumerate() {
            out.push_str(&format!(
                "[{i} {} pending={} dropped={:?} {}] ",
                s.addr(),
                s.pending,
                s.dropped,
                s.puller.debug_state(now)
            ));
        }
        out
    }

    // ------------------------------------------------------------ driving

    /// A datagram from `from`: to the source at that address.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if self.finished {
            return;
        }
        let Some(i) = self
            .sources
            .iter()
            .position(|s| s.live() && s.addr() == from)
        else {
            return;
        };
        self.sources[i].puller.handle(now, from, datagram);
        self.after(i, now);
    }

    /// The multicast group to receive on: the first live source's that has one (a
    /// pull from one exposer; see [`Puller::group`]).
    pub fn group(&self) -> Option<std::net::SocketAddrV4> {
        self.sources
            .iter()
            .filter(|s| s.live())
            .find_map(|s| s.puller.group())
    }

    /// The group cannot be joined: every source stops being a member.
    pub fn leave_group(&mut self) {
        for s in &mut self.sources {
            s.puller.leave_group();
        }
    }

    /// Feeds a datagram received on multicast group `group` to the sources that are
    /// its members.
    pub fn handle_group(&mut self, now: Instant, group: std::net::SocketAddrV4, datagram: &[u8]) {
        if self.finished {
            return;
        }
        for i in 0..self.sources.len() {
            if self.sources[i].live() && self.sources[i].puller.group() == Some(group) {
                self.sources[i].puller.handle_group(now, datagram);
                self.after(i, now);
            }
        }
    }

    /// The next datagram to send, taking the sources in turn.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.finished {
            return None;
        }
        let n = self.sources.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            if !self.sources[i].live() {
                continue;
            }
            if let Some(t) = self.sources[i].puller.poll_transmit(now) {
                self.rr = (i + 1) % n;
                self.after(i, now);
                return Some(t);
            }
            self.after(i, now);
        }
        None
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let live = self.live_count();
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for s in self.sources.iter().filter(|s| s.live()) {
            if let Some(t) = s.puller.poll_timeout() {
                at(t);
            }
            if let Some(t) = stall_at(s).filter(|_| live > 1) {
                at(t);
            }
        }
        next
    }

    /// Runs the sources' timers; drops a source that stalled while others serve.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        for i in 0..self.sources.len() {
            let s = &mut self.sources[i];
            if !s.live() {
                continue;
            }
            if s.puller.poll_timeout().is_some_and(|t| t <= now) {
                s.puller.handle_timeout(now);
            }
            self.after(i, now);
        }
        for i in 0..self.sources.len() {
            let s = &self.sources[i];
            if self.live_count() > 1 && s.live() && stall_at(s).is_some_and(|t| now >= t) {
                tracing::info!("source {} stalled; its chunks go to the others", s.addr());
                self.drop_source(i, PullError::Timeout, now);
            }
        }
    }

    /// With offloaded verification: the outcome for chunk `index` from `source`.
    /// Returns whether the chunk is new and its plaintext is to be stored.
    pub fn chunk_verified(
        &mut self,
        source: usize,
        index: u64,
        outcome: Result<usize, BadChunk>,
        now: Instant,
    ) -> bool {
        let Some(s) = self.sources.get_mut(source) else {
            return false;
        };
        let live = s.live();
        if live {
            s.puller.chunk_verified(index, outcome);
        }
        if !self.multi() {
            self.after(source, now);
            return outcome.is_ok();
        }
        // A chunk verified against the root is good whoever sent it, even a source
        // dropped since.
        let new = outcome.is_ok() && index < self.have.len() && self.have.insert(index);
        if new {
            self.note_have(index, source);
        }
        if live {
            self.after(source, now);
        }
        self.check_done(now);
        new
    }

    /// A resumed chunk turned out damaged: pull it again.
    pub fn forget_chunk(&mut self, index: u64) {
        if !self.multi() {
            for s in &mut self.sources {
                s.puller.forget_chunk(index);
            }
            return;
        }
        if index >= self.have.len() {
            return;
        }
        self.have.remove(index);
        self.claimed.remove(index);
        self.cursor = self.cursor.min(index);
        for s in &mut self.sources {
            s.puller.forget_chunk(index);
        }
    }

    /// The driver finished the check asked by a `Recheck` event.
    pub fn recheck_done(&mut self, now: Instant) {
        self.recheck = Recheck::Done;
        for i in 0..self.sources.len() {
            if self.sources[i].live() {
                self.sources[i].puller.recheck_done();
                self.after(i, now);
            }
        }
        self.check_done(now);
    }

    // ------------------------------------------------------------ inside

    fn live_count(&self) -> usize {
        self.sources.iter().filter(|s| s.live()).count()
    }

    /// Takes source `i`'s events, keeps the shared sets in step, and grants chunks.
    fn after(&mut self, i: usize, now: Instant) {
        while let Some(ev) = self.sources[i].puller.poll_event() {
            if !self.multi() {
                match &ev {
                    PullEvent::Done | PullEvent::Failed(_) => self.finished = true,
                    PullEvent::Started { .. } => self.started = true,
                    _ => {}
                }
                self.events.push_back((i, ev));
                continue;
            }
            match ev {
                PullEvent::Started {
                    exposer_key,
                    size,
                    root,
                    resumed,
                } => {
                    let s = &mut self.sources[i];
                    s.started = true;
                    if !self.started {
                        self.started = true;
                        self.have = s.puller.have().clone();
                        self.claimed = self.have.clone();
                        self.dup = ChunkSet::new(self.have.len());
                    } else {
                        s.puller.set_have(&self.have);
                    }
                    s.assigned = ChunkSet::new(self.have.len());
                    self.events.push_back((
                        i,
                        PullEvent::Started {
                            exposer_key,
                            size,
                            root,
                            resumed,
                        },
                    ));
                }
                PullEvent::Chunk { index, data } => {
                    if index < self.have.len() && self.have.insert(index) {
                        self.note_have(index, i);
                        self.events.push_back((i, PullEvent::Chunk { index, data }));
                    }
                }
                PullEvent::Recheck { verifier, stored } => {
                    if self.recheck == Recheck::None {
                        self.recheck = Recheck::Pending;
                        self.events
                            .push_back((i, PullEvent::Recheck { verifier, stored }));
                    } else {
                        // Another source's check is (or was) the one.
                        self.sources[i].puller.recheck_done();
                    }
                }
                ev @ PullEvent::Verify { .. } => self.events.push_back((i, ev)),
                PullEvent::Missing { index } => self.refused(i, index, now),
                PullEvent::Done => {}
                PullEvent::Failed(e) => {
                    tracing::info!("source {} dropped: {e}", self.sources[i].addr());
                    self.drop_source(i, e, now);
                    return;
                }
            }
        }
        self.check_done(now);
        if self.multi() && !self.finished {
            self.refill(i, now);
        }
    }

    /// Source `i` does not hold chunk `index`: it goes back to the others.
    fn refused(&mut self, i: usize, index: u64, now: Instant) {
        if index >= self.have.len() {
            return;
        }
        let s = &mut self.sources[i];
        if s.lacks.len() != self.have.len() {
            s.lacks = ChunkSet::new(self.have.len());
        }
        if s.lacks.insert(index) && s.lacks_since.is_none() {
            s.lacks_since = Some(now);
        }
        if !s.assigned.remove(index) {
            return;
        }
        s.pending = s.pending.saturating_sub(1);
        if self.have.contains(index) || self.dup.remove(index) {
            // Verified already, or another source holds it too.
            return;
        }
        self.claimed.remove(index);
        self.cursor = self.cursor.min(index);
        for j in 0..self.sources.len() {
            if j != i && self.sources[j].live() {
                self.refill(j, now);
            }
        }
    }

    /// Chunk `index` is verified (from source `from`): no source needs it any more.
    fn note_have(&mut self, index: u64, from: usize) {
        self.claimed.insert(index);
        for (j, s) in self.sources.iter_mut().enumerate() {
            if s.assigned.remove(index) {
                s.pending = s.pending.saturating_sub(1);
            }
            if j != from && s.started {
                s.puller.mark_have(index);
            }
        }
    }

    fn check_done(&mut self, _now: Instant) {
        if self.multi()
            && !self.finished
            && self.started
            && self.have.is_full()
            && self.recheck != Recheck::Pending
        {
            self.finished = true;
            self.events.push_back((0, PullEvent::Done));
        }
    }

    /// Source `i` is dropped: what it held goes back to the others.
    fn drop_source(&mut self, i: usize, e: PullError, now: Instant) {
        if !self.sources[i].live() {
            return;
        }
        let held: Vec<u64> = self.sources[i].assigned.iter().collect();
        let s = &mut self.sources[i];
        s.dropped = Some(e.clone());
        s.assigned = ChunkSet::new(0);
        s.pending = 0;
        for index in held {
            if self.have.contains(index) {
                continue;
            }
            if self.dup.remove(index) {
                // Another source holds it too: it stays claimed by that one.
                continue;
            }
            self.claimed.remove(index);
            self.cursor = self.cursor.min(index);
        }
        if self.live_count() == 0 {
            self.finished = true;
            self.events.push_back((i, PullEvent::Failed(e)));
            return;
        }
        for j in 0..self.sources.len() {
            if self.sources[j].live() {
                self.refill(j, now);
            }
        }
    }

    /// Grants chunk `c` to source `i`.
    fn give(&mut self, i: usize, c: u64, now: Instant) {
        let s = &mut self.sources[i];
        if s.pending == 0 {
            s.busy_since = Some(now);
        }
        s.assigned.insert(c);
        s.pending += 1;
        s.puller.grant(c);
    }

    /// How many chunks source `i` should hold: twice what its window carries.
    fn target(&self, i: usize) -> u64 {
        let w = self.sources[i].puller.rate_control().window();
        (2 * w / CHUNK_SIZE as u64).clamp(MIN_GRANT, MAX_GRANT)
    }

    /// Grants source `i` chunks up to its target: unclaimed ones first, then, in the
    /// endgame, ones another source holds.
    fn refill(&mut self, i: usize, now: Instant) {
        if !self.started || !self.sources[i].live() || !self.sources[i].started {
            return;
        }
        if !self.sources[i].puller.in_transfer() {
            return;
        }
        let target = self.target(i);
        let len = self.have.len();
        {
            let s = &mut self.sources[i];
            if s.lacks_since.is_some_and(|t| now >= t + LACKS_FORGOTTEN) {
                s.lacks = ChunkSet::new(0);
                s.lacks_since = None;
            }
        }
        // Unclaimed chunks this source said it lacks are passed over (the cursor
        // stays before the first of them, for the others).
        let mut pos = self.cursor;
        let mut passed = 0u64;
        while self.sources[i].pending < target {
            let Some(c) = self.claimed.first_missing_from(pos) else {
                if passed == 0 {
                    self.cursor = len;
                }
                break;
            };
            pos = c + 1;
            if self.sources[i].lacks.contains(c) {
                passed += 1;
                if passed >= STEAL_SCAN {
                    return;
                }
                continue;
            }
            if passed == 0 {
                self.cursor = c + 1;
            }
            self.claimed.insert(c);
            self.give(i, c, now);
        }
        if passed > 0 && self.sources[i].pending < target {
            // What is left unclaimed this source lacks: no endgame for it yet.
            return;
        }
        if self.sources[i].pending >= target {
            return;
        }
        // The endgame: nothing unclaimed is left.
        if self.sources[i].next_steal.is_some_and(|t| now < t) {
            return;
        }
        let mut next = self.have.first_missing_from(0);
        let mut scanned = 0;
        while let Some(c) = next {
            if self.sources[i].pending >= target || scanned >= STEAL_SCAN {
                break;
            }
            scanned += 1;
            if !self.dup.contains(c)
                && !self.sources[i].assigned.contains(c)
                && !self.sources[i].lacks.contains(c)
            {
                self.dup.insert(c);
                self.give(i, c, now);
            }
            next = self.have.first_missing_from(c + 1);
        }
        let s = &mut self.sources[i];
        s.next_steal = if s.pending < target {
            // Nothing more to take now: look again a quarter round trip later.
            Some(now + (s.puller.rate_control().srtt() / 4).max(Duration::from_millis(1)))
        } else {
            None
        };
    }
}

/// When source `s` counts as stalled if it stays silent: max(3 s, 8 srtt) after it was
/// last heard from or was given work, whichever is later (`None`: it has no work).
fn stall_at(s: &Source) -> Option<Instant> {
    if s.pending == 0 || !s.puller.in_transfer() {
        return None;
    }
    let limit = (s.puller.rate_control().srtt() * 8).max(STALL_MIN);
    let from = s
        .busy_since
        .map_or(s.puller.last_heard(), |b| b.max(s.puller.last_heard()));
    Some(from + limit)
}

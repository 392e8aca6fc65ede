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
use crate::pex::{Have, PeersBody, PexBody};
use crate::puller::{BadChunk, PullConfig, PullError, PullEvent, PullStats, Puller};
use crate::rng::Rng;
use crate::transmit::Transmit;

/// How often a full source (the origin) is asked for its sharers (a PEX is one 1200-byte datagram).
const PEX_ORIGIN_EVERY: Duration = Duration::from_millis(500);
/// How often a sharer is asked which chunks it holds.
const PEX_SHARER_EVERY: Duration = Duration::from_millis(100);
/// How often one refill of a full source jumps to a random point when it meets
/// chunks sharers hold (then it scans on).
const MAX_JUMPS: u32 = 8;
/// How long a full source may go without work because sharers say they are
/// fetching what is left from the origin: then those claims are ignored for its
/// next grants (a puller that claims to fetch everything and never does must not
/// stall the others).
const FETCH_TRUST: Duration = Duration::from_millis(500);
/// Most sources peer exchange adds to one pull.
pub const MAX_FOUND: usize = 16;

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
    /// Found by peer exchange: a sharer, granted only chunks its have summary says it
    /// holds (`None`: a full source, which holds every chunk).
    holds: Option<ChunkSet>,
    /// When it is next sent a PEX (peer exchange), and from which chunk its have
    /// summary is asked.
    next_pex: Option<Instant>,
    have_from: u32,
    /// No peer-exchange refill before then (the last scan left it short).
    next_refill: Option<Instant>,
    /// Where a sharer's next scan for chunks it holds starts.
    scan_pos: u64,
    /// What a sharer's puller last said it is fetching from a full source.
    fetching: Option<ChunkSet>,
    /// A full source: since when it has had nothing granted (see [`FETCH_TRUST`]).
    idle_since: Option<Instant>,
}

impl Source {
    /// A source with nothing granted, asked or known of it yet.
    fn new(puller: Puller) -> Source {
        Source {
            puller,
            dropped: None,
            assigned: ChunkSet::new(0),
            pending: 0,
            started: false,
            next_steal: None,
            busy_since: None,
            lacks: ChunkSet::new(0),
            lacks_since: None,
            holds: None,
            next_pex: None,
            have_from: 0,
            next_refill: None,
            scan_pos: 0,
            fetching: None,
            idle_since: None,
        }
    }

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
    /// Sources are granted chunks (several, or peer exchange that may add some).
    scheduled: bool,
    /// Peer exchange, when on.
    pex: Option<PexState>,
    /// Chunks some live sharer's summary holds (with peer exchange), and whether it
    /// must be rebuilt (a summary shrank, a sharer went).
    union: ChunkSet,
    union_dirty: bool,
    /// Chunks some live sharer's puller is fetching from a full source (part of
    /// `union`).
    union_fetch: ChunkSet,
    /// Chunks some live sharer's summary holds (part of `union`).
    union_held: ChunkSet,
}

/// Peer exchange in a swarm ([`Swarm::enable_pex`]).
pub struct PexConfig {
    /// The session settings of sources found (the remote, key and resume replaced).
    pub template: PullConfig,
    /// Randomness for the sources found and for the order chunks are asked from
    /// full sources in.
    pub rng: Rng,
    /// Whether an address is one of this host's own (the driver's answer; `None`:
    /// never). A sharer named at one is reached over loopback instead, where
    /// datagrams of 64 KiB carry a chunk in one (other pullers on this host, e.g.
    /// behind the same address).
    pub is_local: Option<fn(std::net::IpAddr) -> bool>,
}

struct PexState {
    template: PullConfig,
    rng: Rng,
    is_local: Option<fn(std::net::IpAddr) -> bool>,
    /// The port this puller shares on, once it shares (0: it does not).
    share_port: u16,
    /// Every address a source was made for (none is added twice).
    known: Vec<SocketAddr>,
    found: usize,
    out: VecDeque<Transmit>,
    /// State of [`Swarm::fast_random`].
    fast: u64,
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
            sources: pullers.into_iter().map(Source::new).collect(),
            have: ChunkSet::new(0),
            claimed: ChunkSet::new(0),
            dup: ChunkSet::new(0),
            cursor: 0,
            started: false,
            recheck: Recheck::None,
            events,
            rr: 0,
            scheduled: multi,
            pex: None,
            union: ChunkSet::new(0),
            union_dirty: false,
            union_fetch: ChunkSet::new(0),
            union_held: ChunkSet::new(0),
        }
    }

    /// Turns peer exchange on (before the pull starts): every source that speaks it
    /// is asked for the sharers it knows (a full source every 500 ms) and which
    /// chunks it holds (a sharer every 100 ms), and each sharer named becomes a
    /// source (at most [`MAX_FOUND`]). Sources are then always granted chunks: full
    /// ones from a random point on and only chunks no known sharer holds or
    /// fetches, sharers only chunks they hold. So pullers started together ask the
    /// origin for different chunks and take the rest from each other.
    pub fn enable_pex(&mut self, mut cfg: PexConfig) {
        if self.started {
            return;
        }
        cfg.template.scheduled = true;
        cfg.template.resume = None;
        cfg.template.pinned_key = None;
        let alone = self.sources.len() == 1;
        for s in &mut self.sources {
            s.puller.set_scheduled(true);
            // A pull from one exposer that offers a multicast group takes the group
            // instead (see `after`).
            s.puller.set_group_first(alone);
        }
        self.scheduled = true;
        self.pex = Some(PexState {
            known: self.sources.iter().map(|s| s.addr()).collect(),
            template: cfg.template,
            rng: cfg.rng,
            is_local: cfg.is_local,
            share_port: 0,
            found: 0,
            out: VecDeque::new(),
            fast: 0,
        });
        let seed = self.pex.as_mut().map_or(0, |p| p.rng.u64());
        if let Some(p) = self.pex.as_mut() {
            p.fast = seed;
        }
    }

    /// This puller now shares the root on `port` (told to every source in its next
    /// PEX).
    pub fn set_share_port(&mut self, port: u16) {
        if let Some(p) = self.pex.as_mut() {
            p.share_port = port;
        }
        for s in &mut self.sources {
            s.next_pex = None;
        }
    }

    /// Adds `addr` as a sharer of the root (found by peer exchange), unless it is
    /// known already or the limit is reached. Returns whether it was added.
    pub fn add_found(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let Some(p) = self.pex.as_mut() else {
            return false;
        };
        let family = self.sources.first().map(|s| s.addr().is_ipv4());
        if p.found >= MAX_FOUND
            || p.known.contains(&addr)
            || family.is_some_and(|v4| v4 != addr.is_ipv4())
        {
            return false;
        }
        p.known.push(addr);
        let addr = match p.is_local {
            Some(local) if !addr.ip().is_loopback() && local(addr.ip()) => {
                let lo = if addr.is_ipv4() {
                    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
                } else {
                    std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                };
                SocketAddr::new(lo, addr.port())
            }
            _ => addr,
        };
        if p.known[..p.known.len() - 1].contains(&addr) {
            return false;
        }
        p.known.push(addr);
        p.found += 1;
        let mut cfg = p.template.clone();
        cfg.remote = addr;
        let rng = p.rng.fork();
        let rng_pos = p.rng.u64();
        tracing::info!("peer exchange: sharer {addr} added");
        self.sources.push(Source {
            holds: Some(ChunkSet::new(self.have.len())),
            scan_pos: rng_pos,
            fetching: Some(ChunkSet::new(self.have.len())),
            ..Source::new(Puller::with_rng(cfg, now, rng))
        });
        true
    }

    fn multi(&self) -> bool {
        self.scheduled
    }

    /// Sends the PEX queries due.
    fn pex_tick(&mut self, now: Instant) {
        let Some(p) = self.pex.as_mut() else {
            return;
        };
        for s in &mut self.sources {
            if s.dropped.is_some() || s.next_pex.is_some_and(|t| now < t) {
                continue;
            }
            let body = PexBody {
                share_port: p.share_port,
                have_from: s.have_from,
            };
            if let Some(t) = s.puller.pex_query(now, body) {
                p.out.push_back(t);
                let every = if s.holds.is_some() {
                    PEX_SHARER_EVERY
                } else {
                    PEX_ORIGIN_EVERY
                };
                s.next_pex = Some(now + every);
            }
        }
    }

    /// A PEERS answer from source `i`: new sharers, and what `i` holds.
    fn on_peers(&mut self, i: usize, body: PeersBody, now: Instant) {
        for a in body.peers {
            self.add_found(a, now);
        }
        let len = self.have.len();
        let s = &mut self.sources[i];
        let (Some(h), Have::Bits { first, count, .. }) = (s.holds.as_mut(), &body.have) else {
            return;
        };
        if h.len() != len {
            *h = ChunkSet::new(len);
        }
        let (first, count) = (*first as u64, *count as u64);
        let mut shrank = false;
        let f = s.fetching.get_or_insert_with(|| ChunkSet::new(len));
        if f.len() != len {
            *f = ChunkSet::new(len);
        }
        let fresh = self.union.len() == len && self.union_fetch.len() == len;
        for c in first..(first + count).min(len) {
            if body.have.holds(c) == Some(true) {
                if h.insert(c) && fresh {
                    self.union.insert(c);
                    self.union_held.insert(c);
                }
            } else if h.remove(c) {
                shrank = true;
            }
            if body.have.fetching(c) == Some(true) {
                if f.insert(c) && fresh {
                    self.union.insert(c);
                    self.union_fetch.insert(c);
                }
            } else if f.remove(c) {
                shrank = true;
            }
        }
        self.union_dirty |= shrank;
        let next = first + count;
        s.have_from = if next >= len { 0 } else { next as u32 };
        // It may hold new chunks for it now.
        s.next_refill = None;
        self.refill(i, now);
    }

    /// Whether chunk `c` directly follows one another puller is fetching from the
    /// origin now: its run will most likely go on into `c` (see `refill_pex`).
    fn shadowed(&self, c: u64) -> bool {
        c > 0 && self.union_fetch.contains(c - 1)
    }

    /// Chunks granted to full sources (the origin) and not yet verified: what this
    /// puller is fetching from them now, which its sharer's have summaries tell
    /// (peer exchange), so other pullers ask the origin for other chunks.
    pub fn fetching_from_full(&self) -> ChunkSet {
        let mut f = ChunkSet::new(self.have.len());
        for s in &self.sources {
            if s.live() && s.holds.is_none() {
                f.union_with(&s.assigned);
            }
        }
        f
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
        self.pex_tick(now);
        if let Some(t) = self.pex.as_mut().and_then(|p| p.out.pop_front()) {
            return Some(t);
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
            if let Some(t) = s.next_refill {
                at(t);
            }
            if self.pex.is_some() && s.puller.speaks_pex() {
                at(s.next_pex.unwrap_or(self.sources[0].puller.last_heard()));
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
        self.pex_tick(now);
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
        if self.pex.is_some()
            && !self.started
            && self.sources.len() == 1
            && self.sources[0].puller.group().is_some()
        {
            // The one exposer serves this LAN through its multicast group: one send
            // for every member already, so no sharers and no schedule.
            self.pex = None;
            self.scheduled = false;
        }
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
                        if let Some(p) = self.pex.as_mut() {
                            // Full sources are asked from a random point on: pullers
                            // started together ask the origin for different chunks.
                            self.cursor = p.rng.u64() % self.have.len().max(1);
                        }
                    } else {
                        s.puller.set_have(&self.have);
                    }
                    s.assigned = ChunkSet::new(self.have.len());
                    let len = self.have.len();
                    if let Some(h) = s.holds.as_mut().filter(|h| h.len() != len) {
                        *h = ChunkSet::new(len);
                    }
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
        if let Some(body) = self.sources[i].puller.take_peers() {
            if self.pex.is_some() && self.started {
                self.on_peers(i, body, now);
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
        if let Some(h) = s.holds.as_mut() {
            self.union_dirty |= h.remove(index);
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
        self.union_dirty = true;
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
        if self.sources[i].next_refill.is_some_and(|t| now >= t) {
            self.sources[i].next_refill = None;
        }
        if !self.started || !self.sources[i].live() || !self.sources[i].started {
            return;
        }
        if !self.sources[i].puller.in_transfer() {
            return;
        }
        let target = self.target(i);
        let len = self.have.len();
        if self.pex.is_some() {
            self.refill_pex(i, target, now);
            return;
        }
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
        self.endgame(i, target, now, |_, _| true);
    }

    /// The endgame for source `i`, short of `target` chunks pending with nothing
    /// unclaimed left: it may also take missing chunks another source is fetching
    /// (each at most twice in all), those `fits` allows it, scanning at most
    /// STEAL_SCAN; a scan that leaves it short is not repeated for a quarter round
    /// trip.
    fn endgame(&mut self, i: usize, target: u64, now: Instant, fits: impl Fn(&Self, u64) -> bool) {
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
            let s = &self.sources[i];
            if !self.dup.contains(c)
                && !s.assigned.contains(c)
                && !s.lacks.contains(c)
                && fits(self, c)
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

impl Swarm {
    /// [`Self::refill`] with peer exchange on. A full source (the origin) is granted
    /// unclaimed chunks that no known sharer holds, from the swarm's cursor on (a
    /// random start, wrapping), skipping those likely on their way to a sharer
    /// ([`Self::shadowed`]: then it goes on from a random point); a sharer only
    /// unclaimed chunks its summary says it holds. In the endgame (nothing left for
    /// it unclaimed) a source may take a chunk another holds, the origin only one no
    /// sharer holds. A scan that leaves the source short is not repeated for a few
    /// milliseconds (what would change its outcome, summaries, drops, MISSING, comes
    /// no faster), so the work per datagram stays small.
    fn refill_pex(&mut self, i: usize, target: u64, now: Instant) {
        let len = self.have.len();
        if len == 0 || self.sources[i].next_refill.is_some_and(|t| now < t) {
            return;
        }
        {
            let s = &mut self.sources[i];
            if s.lacks_since.is_some_and(|t| now >= t + LACKS_FORGOTTEN) {
                s.lacks = ChunkSet::new(0);
                s.lacks_since = None;
            }
        }
        let sharer = self.sources[i].holds.is_some();
        if !sharer {
            self.update_union();
        }
        let s = &mut self.sources[i];
        if s.pending > 0 {
            s.idle_since = None;
        } else if s.idle_since.is_none() {
            s.idle_since = Some(now);
        }
        // Idle too long: what others say they fetch is not waited for.
        let distrust = !sharer && s.idle_since.is_some_and(|t| now >= t + FETCH_TRUST);
        let mut start = if sharer {
            self.sources[i].scan_pos % len
        } else {
            self.cursor % len
        };
        let mut pos = start;
        let mut wrapped = false;
        let mut scanned = 0u64;
        let mut jumps = 0;
        while self.sources[i].pending < target && scanned < STEAL_SCAN {
            let next = {
                let s = &self.sources[i];
                match &s.holds {
                    // Held there and unclaimed.
                    Some(h) => h.first_where(&self.claimed, pos, true, false),
                    // Unclaimed and held (or fetched) by no sharer.
                    None if distrust => {
                        self.claimed
                            .first_where(&self.union_held, pos, false, false)
                    }
                    None => self.claimed.first_where(&self.union, pos, false, false),
                }
            };
            let Some(c) = next.filter(|&c| !wrapped || c < start) else {
                if wrapped {
                    break;
                }
                wrapped = true;
                pos = 0;
                continue;
            };
            pos = c + 1;
            scanned += 1;
            if self.sources[i].lacks.contains(c) {
                continue;
            }
            if !sharer && !distrust && self.shadowed(c) {
                if jumps < MAX_JUMPS {
                    // Most likely another puller's run from the origin, whose next
                    // chunks this one would be racing for: go on elsewhere.
                    jumps += 1;
                    start = self.fast_random() % len;
                    pos = start;
                    wrapped = false;
                }
                continue;
            }
            self.claimed.insert(c);
            self.give(i, c, now);
        }
        if sharer {
            self.sources[i].scan_pos = pos;
        } else {
            self.cursor = pos % len;
        }
        let short = self.sources[i].pending < target;
        {
            let s = &mut self.sources[i];
            s.next_refill = short.then(|| {
                now + (s.puller.rate_control().srtt() / 4)
                    .clamp(Duration::from_millis(2), Duration::from_millis(20))
            });
        }
        if !short || !self.claimed.is_full() {
            return;
        }
        // The endgame: nothing is unclaimed. A sharer takes what its summary says
        // it holds; the origin what no sharer holds.
        self.endgame(i, target, now, |sw, c| match &sw.sources[i].holds {
            Some(h) => h.contains(c),
            None => !sw.union.contains(c),
        });
    }

    /// Rebuilds the union of the live sharers' summaries, when one shrank or a sharer
    /// went (growth is added as it comes).
    fn update_union(&mut self) {
        let len = self.have.len();
        if !self.union_dirty && self.union.len() == len {
            return;
        }
        let mut u = ChunkSet::new(len);
        let mut f = ChunkSet::new(len);
        for s in &self.sources {
            if !(s.live() && s.started) {
                continue;
            }
            if let Some(h) = &s.holds {
                u.union_with(h);
            }
            if let Some(x) = &s.fetching {
                f.union_with(x);
            }
        }
        self.union_held = u.clone();
        u.union_with(&f);
        self.union = u;
        self.union_fetch = f;
        self.union_dirty = false;
    }

    /// A cheap pseudo-random number (splitmix64, seeded once from the pull's
    /// random source): where to jump to in the file is no secret.
    fn fast_random(&mut self) -> u64 {
        let Some(p) = self.pex.as_mut() else {
            return 0;
        };
        p.fast = p.fast.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = p.fast;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
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

//! Live exposures (issue 19): a byte stream or a growing file, exposed while it is
//! written.
//!
//! The exposer side is a [`Spool`]: the bytes exposed so far, in an unnamed file,
//! with the chunk CVs of every complete chunk (computed once, as the chunk is cut:
//! complete BLAKE3 subtrees never change). A HELLO for a live name gets a
//! **checkpoint**: a snapshot of the spool `(length, root of the first length
//! bytes)` exposed under a fresh exposure id and content key (so a partial chunk
//! sealed at one length and whole at a later one never reuses a nonce), in the
//! ordinary manifest, sealed by the Noise handshake, with the feature bit
//! [`crate::wire::FEATURE_LIVE`]. When the stream ends, the name becomes an ordinary
//! exposure of every byte (its root is `b3sum`), and that manifest, without the bit,
//! is the final checkpoint.
//!
//! The puller side is a [`Follower`]: it pulls checkpoint after checkpoint, each
//! round an ordinary [`crate::puller::Puller`] given the CVs of the complete chunks
//! it already holds ([`LiveBase`]): those are not asked for again, the new outboard
//! must repeat them, and it must hash to the new root. The follower writes bytes in
//! order as they are verified, and checks that no byte it already wrote changes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::merkle::{self, Hash, CHUNK_SIZE};
use crate::puller::{PullConfig, PullError, PullEvent, PullStats, Puller};
use crate::rng::Rng;
use crate::source::ChunkSource;
use crate::transmit::Transmit;

/// The CV of a complete chunk that is not the whole content (a non-root subtree):
/// what a complete chunk's CV is in every checkpoint longer than one chunk.
pub fn full_chunk_cv(index: u64, data: &[u8]) -> Hash {
    merkle::chunk_cv(index, data, u64::MAX)
}

struct SpoolState {
    /// Bytes in the spool.
    len: u64,
    /// CVs of the complete chunks (non-root).
    cvs: Vec<Hash>,
    /// The last, partial chunk's bytes (fewer than `CHUNK_SIZE`).
    tail: Vec<u8>,
    /// The root of the first chunk alone (the root of a checkpoint of exactly one
    /// complete chunk), once it is complete.
    first_root: Option<Hash>,
    /// No byte comes any more.
    ended: bool,
}

/// The bytes of a live exposure so far: written once, in order, to an unnamed file;
/// shared by the thread that appends and the exposer that serves.
pub struct Spool {
    file: File,
    state: parking_lot::Mutex<SpoolState>,
}

/// A checkpoint of a spool: its length then, and the CVs of its chunks (the last one
/// possibly partial; one chunk's CV is the root).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Bytes.
    pub len: u64,
    /// One CV per chunk, as [`crate::merkle::cvs_of_bytes`] would give.
    pub cvs: Vec<Hash>,
    /// The spool has ended: this is every byte.
    pub ended: bool,
}

impl Spool {
    /// An empty spool in an unnamed file in `dir`.
    pub fn create(dir: &std::path::Path) -> io::Result<Self> {
        Ok(Self::over(crate::sealed::anonymous_file(dir)?))
    }

    fn over(file: File) -> Self {
        Self {
            file,
            state: parking_lot::Mutex::new(SpoolState {
                len: 0,
                cvs: Vec::new(),
                tail: Vec::with_capacity(CHUNK_SIZE),
                first_root: None,
                ended: false,
            }),
        }
    }

    /// Appends `data` (written to the file before it is counted, so every byte a
    /// checkpoint covers can be read), cutting complete chunks as they fill.
    pub fn append(&self, mut data: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.ended {
            return Err(io::Error::other("the spool has ended"));
        }
        self.file.write_all_at(data, st.len)?;
        while !data.is_empty() {
            let room = CHUNK_SIZE - st.tail.len();
            let take = room.min(data.len());
            st.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            st.len += take as u64;
            if st.tail.len() == CHUNK_SIZE {
                let index = st.cvs.len() as u64;
                let cv = full_chunk_cv(index, &st.tail);
                if index == 0 {
                    st.first_root = Some(*blake3::hash(&st.tail).as_bytes());
                }
                st.cvs.push(cv);
                st.tail.clear();
            }
        }
        Ok(())
    }

    /// No more bytes: the next snapshot is the final one.
    pub fn end(&self) {
        self.state.lock().ended = true;
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.state.lock().len
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether [`Spool::end`] was called.
    pub fn ended(&self) -> bool {
        self.state.lock().ended
    }

    /// The checkpoint of everything so far.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.lock();
        let n = merkle::chunk_count(st.len);
        let cvs = if n == 1 {
            // The one chunk's CV is the root.
            vec![match st.first_root {
                Some(r) if st.tail.is_empty() => r,
                _ => *blake3::hash(&st.tail).as_bytes(),
            }]
        } else {
            let mut cvs = Vec::with_capacity(n as usize);
            cvs.extend_from_slice(&st.cvs);
            if !st.tail.is_empty() {
                let index = st.cvs.len() as u64;
                cvs.push(merkle::chunk_cv(index, &st.tail, st.len));
            }
            cvs
        };
        Snapshot {
            len: st.len,
            cvs,
            ended: st.ended,
        }
    }

    /// Test hook (a lying exposer): overwrites bytes already exposed, CVs included,
    /// as an exposer that rewrites its past would.
    #[doc(hidden)]
    pub fn rewrite(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        if offset.saturating_add(data.len() as u64) > st.len {
            return Err(io::Error::other("past the end"));
        }
        self.file.write_all_at(data, offset)?;
        let full = st.cvs.len() as u64;
        let mut buf = vec![0u8; CHUNK_SIZE];
        for index in 0..full {
            self.file
                .read_exact_at(&mut buf, merkle::chunk_offset(index))?;
            st.cvs[index as usize] = full_chunk_cv(index, &buf);
            if index == 0 {
                st.first_root = Some(*blake3::hash(&buf).as_bytes());
            }
        }
        let tail_at = merkle::chunk_offset(full);
        let tail_len = st.tail.len();
        let mut tail = vec![0u8; tail_len];
        self.file.read_exact_at(&mut tail, tail_at)?;
        st.tail = tail;
        Ok(())
    }
}

/// Checkpoints an exposer keeps serving at once (for all its live exposures): a
/// puller still pulling an older one then gets STALE and handshakes for the current.
pub const MAX_CHECKPOINTS: usize = 32;

/// Shortest time between two checkpoints of one live exposure (each costs the
/// exposer 32 bytes per chunk of the stream so far): HELLOs within it get the latest.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(2);

/// The exposer's record of one live exposure.
pub struct LiveState {
    /// Its bytes.
    pub spool: Arc<Spool>,
    /// The last checkpoint exposed: its length and exposure id.
    pub latest: Option<(u64, crate::wire::ExposureId)>,
    /// When it was exposed.
    pub latest_at: Option<Instant>,
}

impl LiveState {
    /// A live exposure of `spool`, no checkpoint exposed yet.
    pub fn new(spool: Arc<Spool>) -> Self {
        Self {
            spool,
            latest: None,
            latest_at: None,
        }
    }
}

/// A spool's first `len` bytes, as a checkpoint serves them.
pub struct SpoolSource {
    /// The spool.
    pub spool: Arc<Spool>,
    /// The checkpoint's length.
    pub len: u64,
}

impl ChunkSource for SpoolSource {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let len = merkle::chunk_len(index, self.len);
        buf.clear();
        buf.resize(len, 0);
        self.spool
            .file
            .read_exact_at(buf, merkle::chunk_offset(index))
    }
}

/// What a live pull already holds, given to each round's puller
/// ([`crate::puller::PullConfig::live`]).
#[derive(Debug, Clone, Default)]
pub struct LiveBase {
    /// Bytes held (written), from the start.
    pub len: u64,
    /// Non-root CVs ([`full_chunk_cv`]) of the complete chunks held: these chunks are
    /// not asked for again, and a checkpoint whose outboard does not repeat them is
    /// refused.
    pub cvs: Arc<Vec<Hash>>,
}

/// Why a live pull cannot go on: the exposer contradicted itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveError {
    /// A checkpoint changes bytes already verified and written.
    Changed {
        /// Where.
        offset: u64,
    },
}

impl std::fmt::Display for LiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Changed { offset } => write!(
                f,
                "inconsistent checkpoint: the exposer changed bytes already verified (at offset {offset})"
            ),
        }
    }
}

impl std::error::Error for LiveError {}

/// The puller side of a live exposure, between rounds and within one: what is held,
/// and what to write next. Sans-IO: the bytes to write are handed to a callback.
#[derive(Debug, Default)]
pub struct Follower {
    /// CVs of the complete chunks written.
    held: Vec<Hash>,
    /// Bytes written.
    written: u64,
    /// The written bytes of the partial chunk after `held` (fewer than a chunk).
    tail: Vec<u8>,
    /// Verified chunks of this round not yet next in order.
    pending: BTreeMap<u64, Vec<u8>>,
}

impl Follower {
    /// A follower holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A follower that already holds `prefix` (a resumed output file's bytes): the
    /// next checkpoint must extend them.
    pub fn resume_from(prefix: &mut dyn io::Read) -> io::Result<Self> {
        let mut f = Self::new();
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let mut got = 0;
            while got < CHUNK_SIZE {
                match prefix.read(&mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            f.written += got as u64;
            if got == CHUNK_SIZE {
                f.held.push(full_chunk_cv(f.held.len() as u64, &buf[..got]));
            } else {
                f.tail = buf[..got].to_vec();
                return Ok(f);
            }
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// What the next round's puller is given.
    pub fn base(&self) -> LiveBase {
        LiveBase {
            len: self.written,
            cvs: Arc::new(self.held.clone()),
        }
    }

    /// Starts a round: chunks verified under an earlier checkpoint and not yet
    /// written are dropped (the next checkpoint's chunks replace them).
    pub fn start_round(&mut self) {
        self.pending.clear();
    }

    /// A chunk verified against the current checkpoint: writes (through `out`) every
    /// byte now next in order and never written before.
    pub fn on_chunk(
        &mut self,
        index: u64,
        data: Vec<u8>,
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), FollowError> {
        let next = self.held.len() as u64;
        if index < next {
            // Held already (a one-chunk checkpoint is fetched again): it must not
            // have changed.
            if data.len() != CHUNK_SIZE || full_chunk_cv(index, &data) != self.held[index as usize]
            {
                return Err(FollowError::Live(LiveError::Changed {
                    offset: merkle::chunk_offset(index),
                }));
            }
            return Ok(());
        }
        self.pending.insert(index, data);
        while let Some(data) = self.pending.remove(&(self.held.len() as u64)) {
            let index = self.held.len() as u64;
            let t = self.tail.len();
            if data.len() < t || data[..t] != self.tail[..] {
                return Err(FollowError::Live(LiveError::Changed {
                    offset: merkle::chunk_offset(index),
                }));
            }
            out(&data[t..]).map_err(FollowError::Io)?;
            self.written += (data.len() - t) as u64;
            if data.len() == CHUNK_SIZE {
                self.held.push(full_chunk_cv(index, &data));
                self.tail.clear();
            } else {
                // The last chunk of this checkpoint: later ones extend it.
                self.tail = data;
                break;
            }
        }
        Ok(())
    }
}

/// Why [`Follower::on_chunk`] failed.
#[derive(Debug)]
pub enum FollowError {
    /// The exposer contradicted itself.
    Live(LiveError),
    /// Writing failed.
    Io(io::Error),
}

/// Shortest and longest wait between two rounds of a live pull: after a round that
/// found the exposure grown, the next starts at once; the first that finds it
/// unchanged waits `POLL_MIN`, and each next one doubles the wait, up to `POLL_MAX`.
pub const POLL_MIN: Duration = Duration::from_millis(5);
/// See [`POLL_MIN`].
pub const POLL_MAX: Duration = Duration::from_millis(40);

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
    out: Vec<u8>,
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
            out: Vec::new(),
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
        self.rounds += 1;
        self.next_round = None;
        self.puller = Some(Puller::with_rng(cfg, now, self.rng.fork()));
    }

    fn fail(&mut self, e: LivePullError) {
        if let Some(p) = self.puller.take() {
            self.stats.add(&p.stats);
        }
        self.end = Some(Err(e));
    }

    fn process(&mut self, now: Instant) {
        loop {
            let Some(p) = &mut self.puller else { return };
            let Some(ev) = p.poll_event() else { return };
            match ev {
                PullEvent::Started { exposer_key, .. } => {
                    self.exposer_key = Some(exposer_key);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 300) as u8).collect()
    }

    /// Every snapshot's CVs are the ones of the bytes so far, and its root is b3sum.
    #[test]
    fn snapshots_are_the_trees_of_their_prefixes() {
        let spool = Spool::create(&std::env::temp_dir()).unwrap();
        let all = bytes(5 * CHUNK_SIZE + 123);
        let mut at = 0;
        for step in [
            0,
            1,
            100,
            CHUNK_SIZE - 101,
            1,
            CHUNK_SIZE,
            3 * CHUNK_SIZE + 20,
            0,
        ] {
            let end = (at + step).min(all.len());
            spool.append(&all[at..end]).unwrap();
            at = end;
            let s = spool.snapshot();
            assert_eq!(s.len, at as u64);
            assert_eq!(s.cvs, merkle::cvs_of_bytes(&all[..at]), "at {at}");
            assert_eq!(
                merkle::root_from_cvs(&s.cvs, s.len),
                *blake3::hash(&all[..at]).as_bytes()
            );
        }
    }

    /// The follower writes each byte once, in order, and refuses a changed past.
    #[test]
    fn follower_writes_in_order_and_refuses_a_changed_past() {
        let all = bytes(3 * CHUNK_SIZE + 10);
        let mut f = Follower::new();
        let mut out = Vec::new();
        // Checkpoint 1: 1.5 chunks, chunk 1 first.
        let half = CHUNK_SIZE + CHUNK_SIZE / 2;
        let mut w = |b: &[u8]| {
            out.extend_from_slice(b);
            Ok(())
        };
        f.on_chunk(1, all[CHUNK_SIZE..half].to_vec(), &mut w)
            .unwrap();
        f.on_chunk(0, all[..CHUNK_SIZE].to_vec(), &mut w).unwrap();
        assert_eq!(f.written(), half as u64);
        // Checkpoint 2: everything; chunk 1 again, whole.
        f.start_round();
        for i in 1..4u64 {
            let s = i as usize * CHUNK_SIZE;
            let e = (s + CHUNK_SIZE).min(all.len());
            f.on_chunk(i, all[s..e].to_vec(), &mut w).unwrap();
        }
        assert_eq!(out, all);
        // A resumed follower holds the same, and a chunk that changed its past fails.
        let mut again = Follower::resume_from(&mut &out[..3 * CHUNK_SIZE + 5]).unwrap();
        assert_eq!(again.base().cvs.len(), 3);
        let mut changed = all[3 * CHUNK_SIZE..].to_vec();
        changed[2] ^= 1;
        let r = again.on_chunk(3, changed, &mut |_| Ok(()));
        assert!(matches!(
            r,
            Err(FollowError::Live(LiveError::Changed { .. }))
        ));
    }
}

//! The puller's side of a live exposure between rounds: what it holds, summarized
//! by a frontier, and what it writes next.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use crate::frontier::Frontier;
use crate::merkle::{self, Hash, CHUNK_SIZE};

use super::{full_chunk_cv, Window, CVS_PER_OUTBOARD_CHUNK};

/// What a live pull already holds, given to each round's puller
/// ([`crate::puller::PullConfig::live`]).
#[derive(Debug, Clone, Default)]
pub struct LiveBase {
    /// The stream offset of the next byte to write (a joiner's first byte is past
    /// 0).
    pub len: u64,
    /// The complete subtrees before the chunks in `recent`.
    pub frontier: Frontier,
    /// Non-root CVs ([`full_chunk_cv`]) of the complete chunks held after the
    /// frontier: these are not asked for again, and a checkpoint whose outboard does
    /// not repeat them (or does not hash with the frontier to its root) is refused.
    pub recent: Arc<Vec<Hash>>,
    /// Nothing is written yet: the pull may join at the window's start when the
    /// exposer no longer holds the beginning.
    pub may_join: bool,
    /// The root of the `len` bytes held, when the follower can tell (it holds the
    /// partial last chunk's bytes, or more than one complete chunk's CVs): a
    /// checkpoint of that length that did not grow is checked against it, and
    /// nothing is fetched.
    pub root: Option<Hash>,
}

impl LiveBase {
    /// Complete chunks held.
    pub fn held(&self) -> u64 {
        self.frontier.at() + self.recent.len() as u64
    }
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
    /// The complete subtrees over the chunks before `recent`: always at the start of
    /// the outboard chunk holding the last complete chunk's CV, so that a round
    /// fetches the outboard from there on only.
    frontier: Frontier,
    /// CVs of the complete chunks written after the frontier (fewer than 512).
    recent: Vec<Hash>,
    /// The stream offset of the next byte to write.
    written: u64,
    /// The stream offset of the first byte written (past 0 after joining late).
    joined_at: u64,
    /// The written bytes of the partial chunk after the complete ones.
    tail: Vec<u8>,
    /// Verified chunks of this round not yet next in order.
    pending: BTreeMap<u64, Vec<u8>>,
}

impl Follower {
    /// A follower holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A follower that already holds `prefix` (a resumed output file's bytes), which
    /// starts at `joined` (the window it joined at; `None`: the stream's start): the
    /// next checkpoint must extend them.
    pub fn resume_from(prefix: &mut dyn io::Read, joined: Option<Window>) -> io::Result<Self> {
        let mut f = Self::new();
        if let Some(w) = joined {
            f.join(&w);
        }
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
                f.hold(full_chunk_cv(f.held(), &buf[..got]));
            } else {
                f.tail = buf[..got].to_vec();
                return Ok(f);
            }
        }
    }

    /// Joins at the window's start (the exposer no longer holds what is before it):
    /// only while nothing is written.
    pub fn join(&mut self, w: &Window) -> bool {
        if self.written != 0 || self.held() != 0 {
            return false;
        }
        self.frontier = w.frontier.clone();
        self.written = merkle::chunk_offset(w.start);
        self.joined_at = self.written;
        true
    }

    /// Bytes written so far, as a stream offset (the end of what is held).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The stream offset of the first byte written: past 0 when the pull joined late.
    pub fn joined_at(&self) -> u64 {
        self.joined_at
    }

    /// Complete chunks held.
    fn held(&self) -> u64 {
        self.frontier.at() + self.recent.len() as u64
    }

    /// Chunk `held()` is complete: its CV joins `recent`, and `recent` is folded
    /// into the frontier up to the outboard chunk of the last complete chunk.
    fn hold(&mut self, cv: Hash) {
        self.recent.push(cv);
        let last = self.held() - 1;
        let keep_from = last / CVS_PER_OUTBOARD_CHUNK * CVS_PER_OUTBOARD_CHUNK;
        if keep_from > self.frontier.at() {
            let fold = (keep_from - self.frontier.at()) as usize;
            for cv in self.recent.drain(..fold) {
                self.frontier.push(cv);
            }
        }
    }

    /// What the next round's puller is given.
    pub fn base(&self) -> LiveBase {
        LiveBase {
            len: self.written,
            frontier: self.frontier.clone(),
            recent: Arc::new(self.recent.clone()),
            may_join: self.written == 0,
            root: self.root_of_written(),
        }
    }

    /// The root of the bytes written (`b3sum` of the stream so far), when the
    /// frontier, the CVs after it and the partial chunk's bytes give it.
    fn root_of_written(&self) -> Option<Hash> {
        let held = self.held();
        if self.written == 0 {
            return None;
        }
        if merkle::chunk_count(self.written) == 1 {
            // One chunk: its root is its hash, and only its bytes give it.
            return (held == 0).then(|| *blake3::hash(&self.tail).as_bytes());
        }
        let mut rest = self.recent.clone();
        if !self.tail.is_empty() {
            rest.push(merkle::chunk_cv(held, &self.tail, self.written));
        }
        (!rest.is_empty()).then(|| self.frontier.root_with(&rest, self.written))
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
        let next = self.held();
        if index < next {
            // Held already (a one-chunk checkpoint is fetched again): it must not
            // have changed.
            let known = index
                .checked_sub(self.frontier.at())
                .and_then(|i| self.recent.get(i as usize));
            if let Some(cv) = known {
                if data.len() != CHUNK_SIZE || full_chunk_cv(index, &data) != *cv {
                    return Err(FollowError::Live(LiveError::Changed {
                        offset: merkle::chunk_offset(index),
                    }));
                }
            }
            return Ok(());
        }
        self.pending.insert(index, data);
        while let Some(data) = self.pending.remove(&self.held()) {
            let index = self.held();
            let t = self.tail.len();
            if data.len() < t || data[..t] != self.tail[..] {
                return Err(FollowError::Live(LiveError::Changed {
                    offset: merkle::chunk_offset(index),
                }));
            }
            out(&data[t..]).map_err(FollowError::Io)?;
            self.written += (data.len() - t) as u64;
            if data.len() == CHUNK_SIZE {
                self.hold(full_chunk_cv(index, &data));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 300) as u8).collect()
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
        let mut again = Follower::resume_from(&mut &out[..3 * CHUNK_SIZE + 5], None).unwrap();
        assert_eq!(again.base().held(), 3);
        let mut changed = all[3 * CHUNK_SIZE..].to_vec();
        changed[2] ^= 1;
        let r = again.on_chunk(3, changed, &mut |_| Ok(()));
        assert!(matches!(
            r,
            Err(FollowError::Live(LiveError::Changed { .. }))
        ));
    }

    /// A long follow keeps a frontier and fewer than one outboard chunk of CVs, and
    /// that frontier with the CVs after it gives b3sum of the stream.
    #[test]
    fn the_follower_keeps_a_frontier_not_every_cv() {
        let n = 3 * CVS_PER_OUTBOARD_CHUNK as usize + 7;
        let all = bytes(n * CHUNK_SIZE + 99);
        let mut f = Follower::new();
        for i in 0..n {
            let s = i * CHUNK_SIZE;
            f.on_chunk(i as u64, all[s..s + CHUNK_SIZE].to_vec(), &mut |_| Ok(()))
                .unwrap();
        }
        let base = f.base();
        assert_eq!(base.held(), n as u64);
        let whole = n * CHUNK_SIZE;
        assert_eq!(base.root, Some(*blake3::hash(&all[..whole]).as_bytes()));
        assert!(base.recent.len() <= CVS_PER_OUTBOARD_CHUNK as usize);
        assert_eq!(base.frontier.at() % CVS_PER_OUTBOARD_CHUNK, 0);
        let cvs = merkle::cvs_of_bytes(&all);
        assert_eq!(&cvs[base.frontier.at() as usize..n], &base.recent[..]);
        assert_eq!(
            base.frontier
                .root_with(&cvs[base.frontier.at() as usize..], all.len() as u64),
            *blake3::hash(&all).as_bytes()
        );
        // With the partial last chunk written too, the root of every byte.
        f.on_chunk(n as u64, all[whole..].to_vec(), &mut |_| Ok(()))
            .unwrap();
        assert_eq!(f.base().root, Some(*blake3::hash(&all).as_bytes()));
        // One partial chunk: its hash.
        let mut g = Follower::new();
        g.on_chunk(0, all[..100].to_vec(), &mut |_| Ok(())).unwrap();
        assert_eq!(g.base().root, Some(*blake3::hash(&all[..100]).as_bytes()));
    }
}

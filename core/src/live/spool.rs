//! The exposer's side of a live exposure: its bytes so far ([`Spool`]), and the
//! checkpoints cut from them ([`Checkpoint`]).
//!
//! The bytes go to one unnamed file, at their stream offsets; the CVs of complete
//! chunks go to another, 32 bytes per chunk at `index * 32`. Memory holds only the
//! partial last chunk and two [`Frontier`]s (at most 64 CVs each), so a stream of
//! any length costs the same memory. With a window, bytes older than it are punched
//! out of the file (and their CVs with them, a little later): the disk holds about
//! the window, and the frontier at the window's start stands for everything before.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::frontier::Frontier;
use crate::merkle::{self, Hash, CHUNK_SIZE};
use crate::source::ChunkSource;

use super::full_chunk_cv;

/// CVs in one outboard chunk.
pub const CVS_PER_OUTBOARD_CHUNK: u64 = (CHUNK_SIZE / 32) as u64;

/// Most chunks freed at once (punching a hole is a syscall: not one per chunk); a
/// quarter of the window when that is less.
const FREE_BATCH: u64 = 64;

/// The window's start: chunks before it are no longer held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The first chunk held.
    pub start: u64,
    /// The complete subtrees over chunks `[0, start)`.
    pub frontier: Frontier,
}

struct SpoolState {
    /// Bytes appended.
    len: u64,
    /// Complete chunks (their CVs are in the CV file).
    complete: u64,
    /// The last, partial chunk's bytes (fewer than `CHUNK_SIZE`).
    tail: Vec<u8>,
    /// The frontier over chunks `[0, complete - 1)` and the CV of chunk
    /// `complete - 1`: with them any checkpoint's root is `O(log n)`.
    before_last: Frontier,
    last_cv: Option<Hash>,
    /// The root of the first chunk alone (a checkpoint of exactly one chunk).
    first_root: Option<Hash>,
    /// No byte comes any more.
    ended: bool,
    /// The first chunk whose bytes are held, and the frontier before it.
    start: u64,
    start_frontier: Frontier,
    /// The lowest `start` of a checkpoint still served: its bytes stay.
    pinned: u64,
    /// Bytes of chunks below `freed`, and CVs below `cvs_freed`, are punched out.
    freed: u64,
    cvs_freed: u64,
    /// Punching holes failed once (a filesystem without it): the disk then keeps
    /// every byte, as without a window.
    punch_failed: bool,
}

/// The bytes of a live exposure so far; shared by the thread that appends and the
/// exposer that serves them.
pub struct Spool {
    file: File,
    cv_file: File,
    /// Bytes a late joiner can still get (`None`: every byte).
    window: Option<u64>,
    state: parking_lot::Mutex<SpoolState>,
}

/// A checkpoint of a spool: `(len, root)` and what is needed to serve it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Bytes.
    pub len: u64,
    /// Root of the first `len` bytes.
    pub root: Hash,
    /// Complete chunks (the CVs in the spool's file).
    pub complete: u64,
    /// The CV of the partial last chunk, when there is one and more than one chunk.
    pub partial_cv: Option<Hash>,
    /// Chunks before `window.start` are no longer held (`None`: all are).
    pub window: Option<Window>,
    /// The spool had ended: this is every byte.
    pub ended: bool,
}

impl Checkpoint {
    /// Chunks.
    pub fn chunk_count(&self) -> u64 {
        merkle::chunk_count(self.len)
    }

    /// The first chunk held.
    pub fn start(&self) -> u64 {
        self.window.as_ref().map_or(0, |w| w.start)
    }

    /// Bytes of the outboard (object 1): one CV per chunk, none for one chunk.
    pub fn outboard_len(&self) -> u64 {
        let n = self.chunk_count();
        if n > 1 {
            n * 32
        } else {
            0
        }
    }
}

impl Spool {
    /// An empty spool in unnamed files in `dir`, holding every byte (`window`
    /// `None`) or the last `window` bytes at least (rounded out to whole chunks).
    pub fn create(dir: &std::path::Path, window: Option<u64>) -> io::Result<Self> {
        Ok(Self {
            file: crate::sealed::anonymous_file(dir)?,
            cv_file: crate::sealed::anonymous_file(dir)?,
            window: window.map(|w| w.max(1)),
            state: parking_lot::Mutex::new(SpoolState {
                len: 0,
                complete: 0,
                tail: Vec::with_capacity(CHUNK_SIZE),
                before_last: Frontier::new(),
                last_cv: None,
                first_root: None,
                ended: false,
                start: 0,
                start_frontier: Frontier::new(),
                pinned: u64::MAX,
                freed: 0,
                cvs_freed: 0,
                punch_failed: false,
            }),
        })
    }

    /// Appends `data` (written to the file before it is counted, so every byte a
    /// checkpoint covers can be read), cutting complete chunks as they fill, and
    /// moves the window.
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
                let index = st.complete;
                let cv = full_chunk_cv(index, &st.tail);
                self.cv_file.write_all_at(&cv, index * 32)?;
                if index == 0 {
                    st.first_root = Some(*blake3::hash(&st.tail).as_bytes());
                }
                if let Some(prev) = st.last_cv.replace(cv) {
                    st.before_last.push(prev);
                }
                st.complete += 1;
                st.tail.clear();
            }
        }
        self.slide(&mut st)
    }

    /// Moves the window's start to keep at least `window` bytes, and frees what no
    /// checkpoint still served needs.
    fn slide(&self, st: &mut SpoolState) -> io::Result<()> {
        let Some(window) = self.window else {
            return Ok(());
        };
        // window >= 1, so the start stays below the chunk count: a checkpoint always
        // holds its last chunk.
        let target = (st.len.saturating_sub(window) / CHUNK_SIZE as u64).min(st.complete);
        if target > st.start {
            let mut buf = vec![0u8; ((target - st.start) * 32) as usize];
            self.cv_file.read_exact_at(&mut buf, st.start * 32)?;
            for cv in buf.chunks_exact(32) {
                let mut h = [0u8; 32];
                h.copy_from_slice(cv);
                st.start_frontier.push(h);
            }
            st.start = target;
        }
        let free_to = st.start.min(st.pinned);
        let batch = (window / CHUNK_SIZE as u64 / 4).clamp(1, FREE_BATCH);
        if free_to < st.freed + batch || st.punch_failed {
            return Ok(());
        }
        // Outboard chunks are served whole, and a follower reads from the one before
        // its position's: CVs stay from one outboard chunk before the start's.
        let cvs_to = (free_to / CVS_PER_OUTBOARD_CHUNK).saturating_sub(1) * CVS_PER_OUTBOARD_CHUNK;
        let punched = punch(
            &self.file,
            st.freed * CHUNK_SIZE as u64,
            free_to * CHUNK_SIZE as u64,
        )
        .and_then(|()| {
            if cvs_to > st.cvs_freed {
                punch(&self.cv_file, st.cvs_freed * 32, cvs_to * 32)
            } else {
                Ok(())
            }
        });
        match punched {
            Ok(()) => {
                st.freed = free_to;
                st.cvs_freed = st.cvs_freed.max(cvs_to);
            }
            Err(e) => {
                st.punch_failed = true;
                tracing::warn!(
                    "cannot free the spool's old bytes ({e}): the window bounds how far back \
                     pullers go, not the disk used"
                );
            }
        }
        Ok(())
    }

    /// No more bytes: the next checkpoint is the final one.
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

    /// The bytes a late joiner can get, when bounded.
    pub fn window(&self) -> Option<u64> {
        self.window
    }

    /// The checkpoint of everything so far. Its bytes stay held until
    /// [`Spool::pin`] is given a later start.
    pub fn checkpoint(&self) -> Checkpoint {
        let mut st = self.state.lock();
        st.pinned = st.pinned.min(st.start);
        let len = st.len;
        let tail_cv = (!st.tail.is_empty()).then(|| merkle::chunk_cv(st.complete, &st.tail, len));
        let root = match (st.complete, st.last_cv, tail_cv) {
            (0, _, Some(cv)) => cv,
            (0, _, None) => *blake3::hash(b"").as_bytes(),
            (1, _, None) => st.first_root.unwrap_or_default(),
            (_, Some(last), None) => st.before_last.root_with(&[last], len),
            (_, Some(last), Some(tail)) => st.before_last.root_with(&[last, tail], len),
            (_, None, _) => [0; 32],
        };
        Checkpoint {
            len,
            root,
            complete: st.complete,
            partial_cv: tail_cv.filter(|_| st.complete > 0),
            window: (st.start > 0).then(|| Window {
                start: st.start,
                frontier: st.start_frontier.clone(),
            }),
            ended: st.ended,
        }
    }

    /// The checkpoints still served start at `start` or later: bytes before it may
    /// go.
    pub fn pin(&self, start: u64) {
        let mut st = self.state.lock();
        st.pinned = start;
        if let Err(e) = self.slide(&mut st) {
            tracing::warn!("spool: {e}");
        }
    }

    /// Bytes on disk (both files), as the filesystem counts them.
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        [&self.file, &self.cv_file]
            .iter()
            .map(|f| f.metadata().map_or(0, |m| m.blocks() * 512))
            .sum()
    }

    /// Outboard chunk `k` of checkpoint `c` into `buf`; an error for CVs no longer
    /// held.
    pub fn read_outboard(&self, c: &Checkpoint, k: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let n = c.chunk_count();
        let first = k.saturating_mul(CVS_PER_OUTBOARD_CHUNK);
        let end = (first + CVS_PER_OUTBOARD_CHUNK).min(n);
        if n <= 1 || first >= n {
            return Err(io::Error::other("past the outboard's end"));
        }
        if first < self.state.lock().cvs_freed {
            return Err(io::Error::other("CVs before the window"));
        }
        let stored_end = end.min(c.complete);
        buf.clear();
        buf.resize(((end - first) * 32) as usize, 0);
        self.cv_file
            .read_exact_at(&mut buf[..((stored_end - first) * 32) as usize], first * 32)?;
        if end > c.complete {
            if let Some(cv) = c.partial_cv {
                let at = ((c.complete - first) * 32) as usize;
                buf[at..at + 32].copy_from_slice(&cv);
            }
        }
        Ok(())
    }

    /// Test hook (a lying exposer): overwrites bytes already exposed, CVs included,
    /// as an exposer that rewrites its past would. Only for a spool without window.
    #[doc(hidden)]
    pub fn rewrite(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        if offset.saturating_add(data.len() as u64) > st.len || st.start > 0 {
            return Err(io::Error::other("past the end, or windowed"));
        }
        self.file.write_all_at(data, offset)?;
        let mut buf = vec![0u8; CHUNK_SIZE];
        st.before_last = Frontier::new();
        st.last_cv = None;
        for index in 0..st.complete {
            self.file
                .read_exact_at(&mut buf, merkle::chunk_offset(index))?;
            let cv = full_chunk_cv(index, &buf);
            self.cv_file.write_all_at(&cv, index * 32)?;
            if index == 0 {
                st.first_root = Some(*blake3::hash(&buf).as_bytes());
            }
            if let Some(prev) = st.last_cv.replace(cv) {
                st.before_last.push(prev);
            }
        }
        let tail_at = merkle::chunk_offset(st.complete);
        let mut tail = vec![0u8; st.tail.len()];
        self.file.read_exact_at(&mut tail, tail_at)?;
        st.tail = tail;
        Ok(())
    }
}

/// Frees `[from, to)` of `f` on disk (the file keeps its size; the range reads as
/// zeros, and is never read again).
fn punch(f: &File, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return Err(io::Error::other("offset out of range"));
    };
    // SAFETY: fallocate on a file descriptor we own, with plain integer arguments.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A checkpoint's content: the spool's first `len` bytes, from its window's start.
pub struct SpoolSource {
    /// The spool.
    pub spool: Arc<Spool>,
    /// The checkpoint's length.
    pub len: u64,
    /// The first chunk held.
    pub start: u64,
}

impl ChunkSource for SpoolSource {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        if index < self.start {
            return Err(io::Error::other("before the window"));
        }
        let len = merkle::chunk_len(index, self.len);
        buf.clear();
        buf.resize(len, 0);
        self.spool
            .file
            .read_exact_at(buf, merkle::chunk_offset(index))
    }
    fn has(&self, index: u64) -> bool {
        index >= self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 300) as u8).collect()
    }

    fn outboard(spool: &Spool, c: &Checkpoint) -> Vec<Hash> {
        let mut all = Vec::new();
        let mut buf = Vec::new();
        for k in 0..merkle::chunk_count(c.outboard_len()) {
            spool.read_outboard(c, k, &mut buf).unwrap();
            all.extend(
                buf.chunks_exact(32)
                    .map(|c| <[u8; 32]>::try_from(c).unwrap()),
            );
        }
        all
    }

    /// Every checkpoint's root is b3sum of the bytes so far, and its outboard their
    /// CVs.
    #[test]
    fn checkpoints_are_the_trees_of_their_prefixes() {
        let spool = Spool::create(&std::env::temp_dir(), None).unwrap();
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
            let c = spool.checkpoint();
            assert_eq!(c.len, at as u64);
            assert_eq!(c.root, *blake3::hash(&all[..at]).as_bytes(), "at {at}");
            let cvs = merkle::cvs_of_bytes(&all[..at]);
            if cvs.len() > 1 {
                assert_eq!(outboard(&spool, &c), cvs, "at {at}");
            }
        }
    }

    /// With a window, the start moves so that at least the window stays, the
    /// frontier before it with the CVs after it gives the root, the disk holds about
    /// the window, and what is before it is no longer served.
    #[test]
    fn a_window_bounds_the_disk_and_keeps_the_root() {
        let window = 4 * CHUNK_SIZE as u64;
        let spool = Spool::create(&std::env::temp_dir(), Some(window)).unwrap();
        let record = bytes(3000);
        let mut all = Vec::new();
        for _ in 0..2000 {
            spool.append(&record).unwrap();
            all.extend_from_slice(&record);
            // No checkpoint holds the old bytes: they are freed as the window moves.
            spool.pin(u64::MAX);
        }
        let c = spool.checkpoint();
        let w = c.window.clone().expect("the window moved");
        assert!(c.len - merkle::chunk_offset(w.start) >= window);
        assert!(c.len - merkle::chunk_offset(w.start) < window + CHUNK_SIZE as u64);
        assert_eq!(c.root, *blake3::hash(&all).as_bytes());
        let cvs = merkle::cvs_of_bytes(&all);
        assert_eq!(
            w.frontier.root_with(&cvs[w.start as usize..], c.len),
            c.root
        );
        // About the window, the batch freed at once, and two outboard chunks of CVs.
        let bound =
            window + (FREE_BATCH + 1) * CHUNK_SIZE as u64 + 2 * CHUNK_SIZE as u64 + 64 * 1024;
        assert!(
            spool.disk_bytes() <= bound,
            "{} bytes on disk for a window of {window}",
            spool.disk_bytes()
        );
        let source = SpoolSource {
            spool: Arc::new(spool),
            len: c.len,
            start: w.start,
        };
        let mut buf = Vec::new();
        assert!(!source.has(w.start - 1));
        assert!(source.read_chunk(w.start - 1, &mut buf).is_err());
        source.read_chunk(w.start, &mut buf).unwrap();
        let at = merkle::chunk_offset(w.start) as usize;
        assert_eq!(buf, all[at..at + CHUNK_SIZE]);
    }

    /// A checkpoint still served keeps its bytes, however far the window moves.
    #[test]
    fn a_served_checkpoint_keeps_its_bytes() {
        let spool = Spool::create(&std::env::temp_dir(), Some(CHUNK_SIZE as u64)).unwrap();
        let all = bytes(300 * CHUNK_SIZE);
        spool.append(&all[..10 * CHUNK_SIZE]).unwrap();
        let c = spool.checkpoint();
        let start = c.start();
        spool.append(&all[10 * CHUNK_SIZE..]).unwrap();
        spool.pin(start);
        let source = SpoolSource {
            spool: Arc::new(spool),
            len: c.len,
            start,
        };
        let mut buf = Vec::new();
        source.read_chunk(start, &mut buf).unwrap();
        let at = merkle::chunk_offset(start) as usize;
        assert_eq!(buf, all[at..at + CHUNK_SIZE]);
        let mut ob = Vec::new();
        source
            .spool
            .read_outboard(&c, start / CVS_PER_OUTBOARD_CHUNK, &mut ob)
            .unwrap();
    }
}

//! Where a pull puts its bytes: a `.rgtp-part` file written at chunk offsets plus a
//! `.rgtp-state` sidecar (root, size, verified set), renamed into place only when
//! complete, so a partial file never passes for a complete one.
//!
//! Durability order: the part file is synced before the sidecar that claims its
//! chunks is written, so after a crash the sidecar never claims unwritten data.
//!
//! Side files may sit in a directory others can write: none is opened through a
//! symlink (O_NOFOLLOW), temporaries are created exclusively under random names, and
//! renames replace a link rather than follow it. The part file's space is reserved
//! up front, so a full disk is found before any data is pulled.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::bitset::ChunkSet;
use crate::merkle::{self, Hash, CHUNK_SIZE};
use crate::puller::ResumeState;
use crate::sidecar::{Sidecar, SidecarError};

/// How often the verified set is made durable.
pub const PERSIST_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub enum OutputError {
    /// The output cannot be created or written.
    Io(PathBuf, io::Error),
    /// The disk is full; `saved` chunks of `total` are durably recorded for a resume.
    Full {
        path: PathBuf,
        saved: u64,
        total: u64,
    },
    /// The resume sidecar is damaged.
    CorruptState(PathBuf, String),
}

impl std::fmt::Display for OutputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(p, e) => write!(f, "cannot write {}: {e}", p.display()),
            Self::Full { path, saved: 0, .. } => write!(
                f,
                "disk full writing {}: nothing saved (free space and run the same command)",
                path.display()
            ),
            Self::Full { path, saved, total } => write!(
                f,
                "disk full writing {}: {saved} of {total} chunks saved (free space and run the same command to resume)",
                path.display()
            ),
            Self::CorruptState(p, why) => write!(
                f,
                "resume state {} is corrupt ({why}); delete it to start over",
                p.display()
            ),
        }
    }
}

impl std::error::Error for OutputError {}

fn io_err(path: &Path, e: io::Error) -> OutputError {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        OutputError::Full {
            path: path.to_path_buf(),
            saved: 0,
            total: 0,
        }
    } else {
        OutputError::Io(path.to_path_buf(), e)
    }
}

/// Opens an existing side file for reading, never through a symlink.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Reserves `len` bytes for `file` so that a full disk shows now, not mid-pull.
/// Filesystems without fallocate keep the sparse file (the old behaviour).
fn reserve(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(len) else {
        return Ok(());
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a valid open descriptor; mode 0 allocates and never changes data.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}

/// Where a pull to `output` keeps its data until complete.
pub fn part_path(output: &Path) -> PathBuf {
    with_suffix(output, ".rgtp-part")
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A pull's destination.
pub enum Output {
    /// A character device such as /dev/null: bytes are dropped, nothing is resumable.
    Discard,
    File(Box<FileOutput>),
}

/// Chunks queued to the writer thread before the pull stops asking for more.
const BACKLOG_CHUNKS: usize = 256;

/// The part file, written by a thread of its own so that disk stalls (and the
/// periodic sync) never stop the puller from receiving.
pub struct FileOutput {
    final_path: PathBuf,
    part: Option<PartFile>,
    tx: Option<mpsc::SyncSender<Msg>>,
    worker: Option<std::thread::JoinHandle<Result<PartFile, OutputError>>>,
    queued: Arc<AtomicUsize>,
    stored: u64,
    /// The part file and the chunks written to it this run (once started): what a
    /// sharer serves.
    share: Option<(File, crate::source::SharedHave)>,
}

enum Msg {
    Chunk(u64, Vec<u8>),
    /// A stored chunk turned out damaged: no longer claim it.
    Forget(u64),
    Save(mpsc::SyncSender<Result<(), OutputError>>),
}

pub struct PartFile {
    pub part_path: PathBuf,
    pub state_path: PathBuf,
    file: Option<File>,
    have: ChunkSet,
    /// Chunks the sidecar on disk claims (what a full disk leaves for a resume).
    saved: u64,
    root: Hash,
    size: u64,
    dirty: bool,
    last_persist: Instant,
    /// Chunks written this run, marked once their bytes are in the file.
    written: Option<crate::source::SharedHave>,
}

impl Output {
    /// Prepares the output at `path` and returns what an earlier run left to resume.
    pub fn open(path: &Path) -> Result<(Output, Option<ResumeState>), OutputError> {
        if let Ok(meta) = fs::metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_char_device() {
                return Ok((Output::Discard, None));
            }
        }
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(OutputError::Io(
                path.to_path_buf(),
                io::Error::new(io::ErrorKind::NotFound, "directory does not exist"),
            ));
        }
        let part_path = with_suffix(path, ".rgtp-part");
        let state_path = with_suffix(path, ".rgtp-state");
        let resume = match Sidecar::load(&state_path) {
            Ok(Some(s)) => {
                // Not through a symlink: the part file is ours or nothing.
                let part_ok = fs::symlink_metadata(&part_path)
                    .is_ok_and(|m| m.is_file() && m.len() == s.size);
                if s.chunk_size as usize != CHUNK_SIZE
                    || s.have.len() != merkle::chunk_count(s.size)
                {
                    return Err(OutputError::CorruptState(
                        state_path,
                        "chunk geometry".into(),
                    ));
                }
                if !part_ok {
                    return Err(OutputError::CorruptState(
                        state_path,
                        format!("{} is missing or has the wrong size", part_path.display()),
                    ));
                }
                Some(ResumeState {
                    root: s.root,
                    size: s.size,
                    have: s.have,
                })
            }
            Ok(None) => None,
            Err(SidecarError::Corrupt(why)) => {
                return Err(OutputError::CorruptState(state_path, why))
            }
            Err(SidecarError::Io(e)) => return Err(OutputError::Io(state_path, e)),
        };
        Ok((
            Output::File(Box::new(FileOutput {
                final_path: path.to_path_buf(),
                part: Some(PartFile {
                    part_path,
                    state_path,
                    file: None,
                    have: ChunkSet::new(0),
                    saved: 0,
                    root: [0; 32],
                    size: 0,
                    dirty: false,
                    last_persist: Instant::now(),
                    written: None,
                }),
                tx: None,
                worker: None,
                queued: Arc::new(AtomicUsize::new(0)),
                stored: 0,
                share: None,
            })),
            resume,
        ))
    }

    /// Called once the exposer's manifest is known: opens the part file and starts
    /// the writer thread.
    pub fn start(
        &mut self,
        root: Hash,
        size: u64,
        resumed: Option<ChunkSet>,
    ) -> Result<(), OutputError> {
        let Output::File(o) = self else { return Ok(()) };
        let Some(mut p) = o.part.take() else {
            return Ok(());
        };
        let fresh = resumed.is_none();
        use std::os::unix::fs::OpenOptionsExt;
        let total = merkle::chunk_count(size);
        p.saved = resumed.as_ref().map_or(0, |h| h.count());
        p.root = root;
        p.size = size;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(fresh)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p.part_path)
            .map_err(|e| p.annotate(io_err(&p.part_path, e)))?;
        file.set_len(size)
            .and_then(|()| reserve(&file, size))
            .map_err(|e| p.annotate(io_err(&p.part_path, e)))?;
        let written = crate::source::shared_have(total);
        if let Ok(f) = file.try_clone() {
            o.share = Some((f, written.clone()));
            p.written = Some(written);
        }
        p.file = Some(file);
        p.have = resumed.unwrap_or_else(|| ChunkSet::new(total));
        p.dirty = true;
        p.persist()?;
        let (tx, rx) = mpsc::sync_channel::<Msg>(BACKLOG_CHUNKS * 2);
        let queued = o.queued.clone();
        o.tx = Some(tx);
        o.worker = Some(std::thread::spawn(move || loop {
            match rx.recv_timeout(PERSIST_EVERY) {
                Ok(Msg::Chunk(index, data)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    p.write_chunk(index, &data)?;
                }
                Ok(Msg::Forget(index)) => {
                    if p.have.remove(index) {
                        p.dirty = true;
                    }
                }
                Ok(Msg::Save(reply)) => {
                    let r = if p.dirty { p.persist() } else { Ok(()) };
                    let _ = reply.send(r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(p),
            }
            if p.dirty && p.last_persist.elapsed() >= PERSIST_EVERY {
                p.persist()?;
            }
        }));
        Ok(())
    }

    /// The part file and the set of chunks this run wrote to it (growing), once the
    /// output is started: a sharer's source. Chunks an earlier run left are not in
    /// it (they are rechecked first).
    pub fn shared_part(&self) -> Option<(File, crate::source::SharedHave)> {
        let Output::File(o) = self else { return None };
        let (f, have) = o.share.as_ref()?;
        Some((f.try_clone().ok()?, have.clone()))
    }

    pub fn write_chunk(&mut self, index: u64, data: Vec<u8>) -> Result<(), OutputError> {
        let Output::File(o) = self else { return Ok(()) };
        let Some(tx) = &o.tx else { return Ok(()) };
        o.stored += data.len() as u64;
        o.queued.fetch_add(1, Ordering::Relaxed);
        if tx.send(Msg::Chunk(index, data)).is_err() {
            // The writer stopped: its error says why.
            return Err(o.join_error());
        }
        Ok(())
    }

    /// Stops claiming chunk `index` (found damaged on resume).
    pub fn forget(&mut self, index: u64) {
        if let Output::File(o) = self {
            if let Some(tx) = &o.tx {
                let _ = tx.send(Msg::Forget(index));
            }
        }
    }

    /// True while the writer is behind: the pull should stop asking for data.
    pub fn backlogged(&self) -> bool {
        match self {
            Output::File(o) => o.queued.load(Ordering::Relaxed) >= BACKLOG_CHUNKS,
            Output::Discard => false,
        }
    }

    /// Reports a writer failure (e.g. disk full) promptly.
    pub fn tick(&mut self) -> Result<(), OutputError> {
        let Output::File(o) = self else { return Ok(()) };
        if o.worker.as_ref().is_some_and(|w| w.is_finished()) {
            return Err(o.join_error());
        }
        Ok(())
    }

    /// Saves progress now (on interruption or error).
    pub fn save(&mut self) -> Result<(), OutputError> {
        let Output::File(o) = self else { return Ok(()) };
        if let Some(tx) = &o.tx {
            let (rtx, rrx) = mpsc::sync_channel(1);
            if tx.send(Msg::Save(rtx)).is_ok() {
                if let Ok(r) = rrx.recv() {
                    return r;
                }
            }
        }
        Ok(())
    }

    /// Completes the output: drain the writer, sync, rename into place, drop the sidecar.
    pub fn finish(&mut self) -> Result<(), OutputError> {
        let Output::File(o) = self else { return Ok(()) };
        o.tx = None;
        let p = match o.worker.take() {
            Some(w) => w.join().map_err(|_| {
                OutputError::Io(o.final_path.clone(), io::Error::other("writer panicked"))
            })??,
            None => {
                // Empty content: no chunk ever started the writer.
                let mut p = o.part.take().ok_or_else(|| {
                    OutputError::Io(
                        o.final_path.clone(),
                        io::Error::other("output already finished"),
                    )
                })?;
                use std::os::unix::fs::OpenOptionsExt;
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&p.part_path)
                    .map_err(|e| io_err(&p.part_path, e))?;
                p.file = Some(f);
                p
            }
        };
        if let Some(f) = &p.file {
            f.sync_all().map_err(|e| io_err(&p.part_path, e))?;
        }
        fs::rename(&p.part_path, &o.final_path).map_err(|e| io_err(&o.final_path, e))?;
        let _ = fs::remove_file(&p.state_path);
        Ok(())
    }
}

impl FileOutput {
    fn join_error(&mut self) -> OutputError {
        self.tx = None;
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            _ => OutputError::Io(
                self.final_path.clone(),
                io::Error::other("the writer thread stopped"),
            ),
        }
    }
}

impl PartFile {
    /// Says how much a full disk leaves saved.
    fn annotate(&self, e: OutputError) -> OutputError {
        match e {
            OutputError::Full { path, .. } => OutputError::Full {
                path,
                saved: self.saved,
                total: merkle::chunk_count(self.size),
            },
            e => e,
        }
    }

    fn write_chunk(&mut self, index: u64, data: &[u8]) -> Result<(), OutputError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        file.write_all_at(data, index * CHUNK_SIZE as u64)
            .map_err(|e| self.annotate(io_err(&self.part_path, e)))?;
        self.have.insert(index);
        if let Some(w) = &self.written {
            w.lock().insert(index);
        }
        self.dirty = true;
        Ok(())
    }

    fn persist(&mut self) -> Result<(), OutputError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        file.sync_data()
            .map_err(|e| self.annotate(io_err(&self.part_path, e)))?;
        let s = Sidecar {
            root: self.root,
            size: self.size,
            chunk_size: CHUNK_SIZE as u32,
            have: self.have.clone(),
        };
        s.store(&self.state_path)
            .map_err(|e| self.annotate(io_err(&self.state_path, e)))?;
        self.saved = self.have.count();
        self.dirty = false;
        self.last_persist = Instant::now();
        Ok(())
    }
}

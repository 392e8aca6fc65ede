//! The sealed store: chunks of an exposure encrypted once, kept in an unnamed file, so
//! serving a pull is a read from the page cache and a send, with no crypto.
//!
//! The store is filled in the background ([`seal_in_background`]) while the exposer
//! already serves: a chunk not sealed yet is sealed on demand through the exposer's
//! memory cache, so an exposure is ready as soon as its root is known and reaches
//! the no-crypto serving speed once the store is full. Its disk use has a bound
//! (`max_bytes`): chunks past it are always sealed on demand. The file has no name
//! and is released when the exposer exits.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::crypto::{Cipher, ContentCipher, TAG_LEN};
use crate::merkle::{self, CHUNK_SIZE};
use crate::source::ChunkSource;
use crate::wire::Object;

/// Bytes between the starts of consecutive sealed chunks in the store.
pub const STRIDE: u64 = (CHUNK_SIZE + TAG_LEN) as u64;

/// Sealed chunks `0..slots()` of one exposure, under one cipher.
pub struct SealedStore {
    file: File,
    map: *const u8,
    map_len: usize,
    size: u64,
    cipher: Cipher,
    slots: u64,
    /// A bit per slot, set (Release) once its sealed bytes are in the file.
    ready: Box<[AtomicU64]>,
    sealed: AtomicU64,
}

// SAFETY: the mapping is read-only, never remapped, and lives as long as the store; a
// slot's bytes are read only after its `ready` bit (Acquire) shows they were written,
// and never written again with different bytes (sealing is deterministic).
unsafe impl Send for SealedStore {}
// SAFETY: as above.
unsafe impl Sync for SealedStore {}

impl crate::transmit::SharedBytes for SealedStore {
    fn bytes(&self) -> &[u8] {
        if self.map_len == 0 {
            return &[];
        }
        // SAFETY: the whole live read-only mapping; it lives as long as self.
        unsafe { std::slice::from_raw_parts(self.map, self.map_len) }
    }
}

impl Drop for SealedStore {
    fn drop(&mut self) {
        if self.map_len > 0 {
            // SAFETY: unmapping exactly the region mmap returned.
            unsafe { libc::munmap(self.map as *mut libc::c_void, self.map_len) };
        }
    }
}

/// An unnamed file in `dir` (O_TMPFILE), or a named one unlinked at once where the
/// filesystem lacks O_TMPFILE.
pub(crate) fn anonymous_file(dir: &Path) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
    {
        Ok(f) => Ok(f),
        Err(_) => {
            let name: [u8; 8] = crate::crypto::random_bytes();
            let path = dir.join(format!(".rgtp-sealed-{}", crate::url::hex(&name)));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
    }
}

/// Free bytes for an unprivileged user on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(dir)?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a NUL-terminated path and a buffer of the right type for statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    // c_ulong and fsblkcnt_t are narrower than u64 on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let (avail, frsize) = (st.f_bavail as u64, st.f_frsize as u64);
    Ok(avail.saturating_mul(frsize))
}

impl SealedStore {
    /// An empty store in `dir` for a content of `size` bytes sealed with `cipher`,
    /// with room for as many leading chunks as fit in `max_bytes`. The file is sparse:
    /// disk is used as chunks are sealed.
    pub fn create(dir: &Path, size: u64, cipher: Cipher, max_bytes: u64) -> io::Result<Self> {
        let slots = merkle::chunk_count(size).min(max_bytes / STRIDE);
        let file = anonymous_file(dir)?;
        let file_len = slots * STRIDE;
        file.set_len(file_len)?;
        let map_len = usize::try_from(file_len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "store too large to map"))?;
        let map = if map_len == 0 {
            std::ptr::null()
        } else {
            // SAFETY: a read-only shared mapping of a file we created and sized; nobody
            // else has a name for it, so it cannot be truncated under us.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            p as *const u8
        };
        let words = slots.div_ceil(64) as usize;
        Ok(Self {
            file,
            map,
            map_len,
            size,
            cipher,
            slots,
            ready: (0..words).map(|_| AtomicU64::new(0)).collect(),
            sealed: AtomicU64::new(0),
        })
    }

    /// The cipher its bytes are sealed with.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Chunks it has room for (`0..slots()`).
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Chunks sealed so far.
    pub fn sealed_chunks(&self) -> u64 {
        self.sealed.load(Ordering::Relaxed)
    }

    /// Bytes of disk its file may take when full.
    pub fn capacity_bytes(&self) -> u64 {
        self.map_len as u64
    }

    fn is_ready(&self, index: u64) -> bool {
        index < self.slots
            && self.ready[(index / 64) as usize].load(Ordering::Acquire) & (1 << (index % 64)) != 0
    }

    /// Where sealed chunk `index` lies in [`SharedBytes::bytes`]: (offset, length), once
    /// it is sealed.
    ///
    /// [`SharedBytes::bytes`]: crate::transmit::SharedBytes::bytes
    pub fn chunk_range(&self, index: u64) -> Option<(usize, usize)> {
        if !self.is_ready(index) {
            return None;
        }
        let len = merkle::chunk_len(index, self.size) + TAG_LEN;
        let start = (index * STRIDE) as usize;
        (start + len <= self.map_len).then_some((start, len))
    }

    /// Sealed chunk `index`, straight from the page cache, once it is sealed.
    pub fn chunk(&self, index: u64) -> Option<&[u8]> {
        use crate::transmit::SharedBytes;
        let (start, len) = self.chunk_range(index)?;
        self.bytes().get(start..start + len)
    }

    /// Stores sealed chunk `index` and makes it visible to readers. A chunk past
    /// `slots()` is not stored (`Ok(false)`).
    pub fn put(&self, index: u64, sealed: &[u8]) -> io::Result<bool> {
        if index >= self.slots {
            return Ok(false);
        }
        if sealed.len() != merkle::chunk_len(index, self.size) + TAG_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "sealed chunk of the wrong length",
            ));
        }
        self.file.write_all_at(sealed, index * STRIDE)?;
        let bit = 1u64 << (index % 64);
        let before = self.ready[(index / 64) as usize].fetch_or(bit, Ordering::Release);
        if before & bit == 0 {
            self.sealed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Seals every slot on `threads` threads now (blocking). Tests and benchmarks use
    /// it; exposers seal in the background instead.
    pub fn fill(
        &self,
        src: &dyn ChunkSource,
        cipher: &ContentCipher,
        threads: usize,
    ) -> io::Result<()> {
        let stop = AtomicBool::new(false);
        self.fill_until(src, cipher, threads, &stop)
    }

    fn fill_until(
        &self,
        src: &dyn ChunkSource,
        cipher: &ContentCipher,
        threads: usize,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        debug_assert_eq!(cipher.cipher(), self.cipher);
        let threads = threads.clamp(1, 16) as u64;
        // Interleave blocks of 64 chunks so the threads stream through the file together.
        const BLOCK: u64 = 64;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || -> io::Result<()> {
                        let mut buf = Vec::with_capacity(CHUNK_SIZE + TAG_LEN);
                        let mut block = t;
                        while block * BLOCK < self.slots {
                            for i in block * BLOCK..((block + 1) * BLOCK).min(self.slots) {
                                if stop.load(Ordering::Relaxed) {
                                    return Ok(());
                                }
                                if self.is_ready(i) {
                                    continue;
                                }
                                src.read_chunk(i, &mut buf)?;
                                cipher.seal(Object::Content, i, &mut buf);
                                self.put(i, &buf)?;
                            }
                            block += threads;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                match h.join() {
                    Ok(r) => r?,
                    Err(p) => std::panic::resume_unwind(p),
                }
            }
            Ok::<(), io::Error>(())
        })
    }
}

/// A store being filled by background threads; stopping (or dropping) it stops them.
pub struct Sealer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sealer {
    /// Stops the sealing threads and waits for them.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Lowers the calling thread to idle priority: it runs only on CPU time nobody else
/// wants, so sealing ahead never slows the pulls it is meant to speed up.
fn become_idle_priority() {
    // SAFETY: sched_param is plain data; SCHED_IDLE needs priority 0; pid 0 is the
    // calling thread. An unprivileged thread may always lower itself.
    let param = libc::sched_param { sched_priority: 0 };
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r != 0 {
        // SAFETY: as above; lowering one's own nice value needs no privilege.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    }
}

/// Fills `store` from `src` on `threads` idle-priority threads, in chunk order, while
/// the exposer serves. `name` is for the log. A failure (a full disk, the file
/// changed) stops sealing with a warning; serving goes on, sealing on demand.
pub fn seal_in_background(
    name: String,
    store: Arc<SealedStore>,
    src: Arc<dyn ChunkSource>,
    cipher: Arc<ContentCipher>,
    threads: usize,
) -> io::Result<Sealer> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("rgtp-seal".into())
        .spawn(move || {
            become_idle_priority();
            let t0 = Instant::now();
            // fill's worker threads inherit this thread's scheduling policy.
            let r = store.fill_until(src.as_ref(), &cipher, threads, &flag);
            let secs = t0.elapsed().as_secs_f64();
            match r {
                Ok(()) if flag.load(Ordering::Relaxed) => {}
                Ok(()) => tracing::info!(
                    target: crate::exposer::SETUP_LOG,
                    "{name}: sealed ahead ({} of {} chunks, {} cipher) in {:.1} s",
                    store.sealed_chunks(),
                    merkle::chunk_count(store.size),
                    store.cipher,
                    secs
                ),
                Err(e) => tracing::warn!(
                    target: crate::exposer::SETUP_LOG,
                    "{name}: sealing ahead stopped after {} chunks ({e}); the rest is sealed on demand",
                    store.sealed_chunks()
                ),
            }
        })?;
    Ok(Sealer {
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemSource;
    use std::time::Duration;

    fn sealed(src: &dyn ChunkSource, cipher: &ContentCipher, i: u64) -> Vec<u8> {
        let mut want = Vec::new();
        src.read_chunk(i, &mut want).unwrap();
        cipher.seal(Object::Content, i, &mut want);
        want
    }

    fn test_dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("rgtp-sealed-{name}-{}", std::process::id()))
    }

    #[test]
    fn store_holds_what_seal_produces() {
        let data: Vec<u8> = (0..(5 * CHUNK_SIZE + 77)).map(|i| (i * 7) as u8).collect();
        let src = MemSource(Arc::new(data.clone()));
        for c in Cipher::ALL {
            let cipher = ContentCipher::with(c, &[3; 32], [4; 16], data.len() as u64);
            let dir = test_dir("holds");
            let store = SealedStore::create(&dir, data.len() as u64, c, u64::MAX).unwrap();
            assert!(
                store.chunk(0).is_none(),
                "nothing is served before it is sealed"
            );
            store.fill(&src, &cipher, 2).unwrap();
            assert_eq!(store.sealed_chunks(), 6);
            for i in 0..6u64 {
                let mut got = store.chunk(i).unwrap().to_vec();
                assert_eq!(got, sealed(&src, &cipher, i), "chunk {i}");
                assert!(cipher.open(Object::Content, i, &mut got));
            }
            assert!(store.chunk(6).is_none());
            // The store is unnamed: nothing is left behind in the directory.
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        }
    }

    #[test]
    fn the_bound_limits_slots_and_disk() {
        let data = vec![5u8; 10 * CHUNK_SIZE];
        let src = MemSource(Arc::new(data.clone()));
        let cipher = ContentCipher::new(&[3; 32], [4; 16], data.len() as u64);
        let max = 3 * STRIDE + 100;
        let store =
            SealedStore::create(&test_dir("bound"), data.len() as u64, cipher.cipher(), max)
                .unwrap();
        assert_eq!(store.slots(), 3);
        assert!(store.capacity_bytes() <= max);
        store.fill(&src, &cipher, 2).unwrap();
        assert_eq!(store.sealed_chunks(), 3);
        assert!(store.chunk(2).is_some());
        assert!(store.chunk(3).is_none(), "past the bound: sealed on demand");
        assert!(!store.put(3, &sealed(&src, &cipher, 3)).unwrap());
        assert!(store.file.metadata().unwrap().len() <= max);
    }

    #[test]
    fn background_sealing_completes_and_serves_what_was_put_first() {
        let data: Vec<u8> = (0..(300 * CHUNK_SIZE + 5))
            .map(|i| (i % 251) as u8)
            .collect();
        let src: Arc<dyn ChunkSource> = Arc::new(MemSource(Arc::new(data.clone())));
        let cipher = Arc::new(ContentCipher::new(&[9; 32], [1; 16], data.len() as u64));
        let store = Arc::new(
            SealedStore::create(
                &test_dir("bg"),
                data.len() as u64,
                cipher.cipher(),
                u64::MAX,
            )
            .unwrap(),
        );
        // A chunk already there (sealed on demand) is kept, not sealed again.
        store.put(7, &sealed(src.as_ref(), &cipher, 7)).unwrap();
        let sealer =
            seal_in_background("t".into(), store.clone(), src.clone(), cipher.clone(), 2).unwrap();
        let t0 = Instant::now();
        while store.sealed_chunks() < 301 && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        sealer.stop();
        assert_eq!(store.sealed_chunks(), 301);
        for i in [0u64, 7, 150, 300] {
            assert_eq!(store.chunk(i).unwrap(), sealed(src.as_ref(), &cipher, i));
        }
    }
}

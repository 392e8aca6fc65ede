//! Sealing ahead: every chunk of an exposure encrypted once, at start-up, into an
//! unnamed temporary file, so serving a pull is a read and a send with no crypto.
//!
//! This is "encrypt once" taken to its end: the cost is paid once per exposure (on
//! both cores, beside the hashing pass) instead of once per chunk per cache miss, and
//! memory stays bounded whatever the file size (the kernel's page cache does the
//! caching). The price is disk space equal to the content, released when the exposer
//! exits (the file has no name).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::crypto::{ContentCipher, TAG_LEN};
use crate::merkle::{self, CHUNK_SIZE};
use crate::source::ChunkSource;
use crate::wire::Object;

/// Bytes between the starts of consecutive sealed chunks in the store.
pub const STRIDE: u64 = (CHUNK_SIZE + TAG_LEN) as u64;

pub struct SealedStore {
    /// Keeps the file alive for the mapping (an unnamed file: nobody else can reach it).
    _file: File,
    map: *const u8,
    map_len: usize,
    size: u64,
}

// SAFETY: the mapping is read-only, never remapped, and lives as long as the store;
// sharing immutable bytes between threads is sound.
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
fn anonymous_file(dir: &Path) -> io::Result<File> {
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

impl SealedStore {
    /// Seals every chunk of `src` with `cipher` into a new store in `dir`, using
    /// `threads` threads.
    pub fn build(
        src: &dyn ChunkSource,
        cipher: &ContentCipher,
        dir: &Path,
        threads: usize,
    ) -> io::Result<Self> {
        let size = src.size();
        let n = merkle::chunk_count(size);
        let file = anonymous_file(dir)?;
        file.set_len(n * STRIDE)?;
        let threads = threads.clamp(1, 16) as u64;
        // Interleave blocks of 64 chunks so both threads stream through the file.
        const BLOCK: u64 = 64;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let file = &file;
                    s.spawn(move || -> io::Result<()> {
                        let mut buf = Vec::with_capacity(CHUNK_SIZE + TAG_LEN);
                        let mut block = t;
                        while block * BLOCK < n {
                            for i in block * BLOCK..((block + 1) * BLOCK).min(n) {
                                src.read_chunk(i, &mut buf)?;
                                cipher.seal(Object::Content, i, &mut buf);
                                file.write_all_at(&buf, i * STRIDE)?;
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
        })?;
        let map_len = usize::try_from(n * STRIDE)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "content too large to map"))?;
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
        Ok(Self {
            _file: file,
            map,
            map_len,
            size,
        })
    }

    /// Where sealed chunk `index` lies in [`SharedBytes::bytes`]: (offset, length).
    pub fn chunk_range(&self, index: u64) -> Option<(usize, usize)> {
        if index >= merkle::chunk_count(self.size) {
            return None;
        }
        let len = merkle::chunk_len(index, self.size) + TAG_LEN;
        let start = (index * STRIDE) as usize;
        (start + len <= self.map_len).then_some((start, len))
    }

    /// Sealed chunk `index`, straight from the page cache (no copy, no read call).
    pub fn chunk(&self, index: u64) -> Option<&[u8]> {
        use crate::transmit::SharedBytes;
        let (start, len) = self.chunk_range(index)?;
        self.bytes().get(start..start + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemSource;
    use std::sync::Arc;

    #[test]
    fn store_holds_what_seal_produces() {
        let data: Vec<u8> = (0..(5 * CHUNK_SIZE + 77)).map(|i| (i * 7) as u8).collect();
        let src = MemSource(Arc::new(data.clone()));
        let cipher = ContentCipher::new(&[3; 32], [4; 16], data.len() as u64);
        let dir = std::env::temp_dir().join("rgtp-sealed-test");
        let store = SealedStore::build(&src, &cipher, &dir, 2).unwrap();
        for i in 0..6u64 {
            let mut got = store.chunk(i).unwrap().to_vec();
            let mut want = Vec::new();
            src.read_chunk(i, &mut want).unwrap();
            cipher.seal(Object::Content, i, &mut want);
            assert_eq!(got, want, "chunk {i}");
            assert!(cipher.open(Object::Content, i, &mut got));
        }
        assert!(store.chunk(6).is_none());
        // The store is unnamed: nothing is left behind in the directory.
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 0);
    }
}

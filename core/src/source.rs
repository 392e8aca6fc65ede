//! Where an exposure's bytes come from, and the shared ciphertext cache that makes
//! "encrypt once, serve every puller" true with bounded memory.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::crypto::Cipher;
use crate::merkle::{chunk_len, CHUNK_SIZE};
use crate::wire::{ExposureId, Object};

/// A sealed chunk is identified by its exposure, object, index and cipher.
pub type CacheKey = (ExposureId, Object, u32, Cipher);

/// Random access to an exposure's plaintext.
pub trait ChunkSource: Send + Sync {
    fn size(&self) -> u64;
    /// Reads chunk `index` into `buf` (cleared first).
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> io::Result<()>;
    /// Whether chunk `index` is held (and verified): always, except for a sharer's
    /// partial file. The exposer answers a request for a chunk not held with MISSING
    /// and never reads it.
    fn has(&self, _index: u64) -> bool {
        true
    }
    /// Whether chunk `index`, not held, is on its way to this sharer from a full
    /// source (the origin): said in its have summaries (peer exchange), so that other
    /// pullers ask the origin for other chunks. Never, except for a sharer.
    fn fetching(&self, _index: u64) -> bool {
        false
    }
}

/// The chunks a sharer holds, shared between the pull that fills them and the
/// exposer that serves them. Only ever grows: a chunk is added once its verified
/// plaintext is in the source's bytes.
pub type SharedHave = Arc<parking_lot::Mutex<crate::bitset::ChunkSet>>;

/// An empty [`SharedHave`] for a content of `chunks` chunks.
pub fn shared_have(chunks: u64) -> SharedHave {
    Arc::new(parking_lot::Mutex::new(crate::bitset::ChunkSet::new(
        chunks,
    )))
}

/// A partial source (a sharer's): `inner` holds valid bytes only for the chunks in
/// `have`.
pub struct PartialSource<S> {
    /// The bytes (the puller's output file, growing).
    pub inner: S,
    /// Which chunks of `inner` are verified.
    pub have: SharedHave,
}

impl<S: ChunkSource> ChunkSource for PartialSource<S> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        if !self.has(index) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "chunk not held"));
        }
        self.inner.read_chunk(index, buf)
    }
    fn has(&self, index: u64) -> bool {
        self.have.lock().contains(index)
    }
}

/// A sharer's source, with the chunks its pull is fetching from full sources now
/// (peer exchange: its have summaries say so, and other pullers ask the origin for
/// other chunks).
pub struct FetchingSource<S> {
    /// What is held.
    pub inner: S,
    /// Chunks on their way from a full source, as the pull last said.
    pub fetching: SharedHave,
}

impl<S: ChunkSource> ChunkSource for FetchingSource<S> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        self.inner.read_chunk(index, buf)
    }
    fn has(&self, index: u64) -> bool {
        self.inner.has(index)
    }
    fn fetching(&self, index: u64) -> bool {
        self.fetching.lock().contains(index)
    }
}

/// A file read with pread: nothing is held in memory.
pub struct FileSource {
    file: File,
    size: u64,
}

impl FileSource {
    /// A file of `size` bytes opened elsewhere (a sharer's output, still growing:
    /// its length is the content's, its chunks valid only where verified).
    pub fn from_file(file: File, size: u64) -> Self {
        Self { file, size }
    }

    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Self {
            size: meta.len(),
            file,
        })
    }
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ChunkSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let len = chunk_len(index, self.size);
        buf.clear();
        buf.resize(len, 0);
        self.file.read_exact_at(buf, index * CHUNK_SIZE as u64)
    }
}

/// Bytes in memory (tests, small exposures).
pub struct MemSource(pub Arc<Vec<u8>>);

impl ChunkSource for MemSource {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let start = (index * CHUNK_SIZE as u64) as usize;
        let len = chunk_len(index, self.size());
        let s = self
            .0
            .get(start..start + len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "chunk out of range"))?;
        buf.clear();
        buf.extend_from_slice(s);
        Ok(())
    }
}

/// Sealed chunks kept for reuse, evicted first-in first-out beyond a byte budget.
/// FIFO is enough here: pullers of one file sweep it in order, so recency and age agree.
/// (Repair fragments are kept in one too, keyed also by datagram size.)
pub struct CipherCache<K = CacheKey> {
    map: HashMap<K, Arc<Vec<u8>>>,
    order: VecDeque<K>,
    bytes: usize,
    budget: usize,
}

impl<K: Copy + Eq + std::hash::Hash> CipherCache<K> {
    pub fn new(budget: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }
    pub fn get(&self, key: K) -> Option<Arc<Vec<u8>>> {
        self.map.get(&key).cloned()
    }
    pub fn insert(&mut self, key: K, v: Arc<Vec<u8>>) {
        self.bytes += v.len();
        match self.map.insert(key, v) {
            None => self.order.push_back(key),
            // Replaced (a larger set of repair fragments): the old bytes are gone.
            Some(old) => self.bytes -= old.len(),
        }
        while self.bytes > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.map.remove(&old) {
                self.bytes -= v.len();
            }
        }
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_respects_budget() {
        let mut c = CipherCache::new(100);
        for i in 0..10u32 {
            c.insert(
                ([0; 16], Object::Content, i, Cipher::Aes256Gcm),
                Arc::new(vec![0; 30]),
            );
            assert!(c.bytes() <= 100);
        }
        assert!(c
            .get(([0; 16], Object::Content, 9, Cipher::Aes256Gcm))
            .is_some());
        assert!(c
            .get(([0; 16], Object::Content, 0, Cipher::Aes256Gcm))
            .is_none());
    }

    #[test]
    fn mem_source_reads_chunks() {
        let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let s = MemSource(Arc::new(data.clone()));
        let mut buf = Vec::new();
        s.read_chunk(2, &mut buf).unwrap();
        assert_eq!(buf, &data[2 * CHUNK_SIZE..]);
        assert!(s.read_chunk(3, &mut buf).is_err());
    }
}

//! Resume state kept beside a partial download.
//!
//! # File format (version 1)
//!
//! All integers little-endian.
//!
//! | offset | size                      | field                                          |
//! |--------|---------------------------|------------------------------------------------|
//! | 0      | 8                         | magic `b"RGTPSIDE"`                            |
//! | 8      | 1                         | version, `1`                                   |
//! | 9      | 32                        | BLAKE3 root of the content                     |
//! | 41     | 8                         | content size in bytes (`u64`)                  |
//! | 49     | 4                         | chunk size in bytes (`u32`, non-zero)          |
//! | 53     | `ceil(chunks / 8)`        | verified-chunk bitmap, see [`ChunkSet::to_bytes`] |
//! | end-32 | 32                        | `blake3::hash` of every byte before it         |
//!
//! where `chunks = ceil(size / chunk_size)`. The trailing hash catches torn or bit-rotted
//! files: a sidecar that claims chunks it does not have would make the resumed file
//! silently wrong, so any inconsistency is reported as [`SidecarError::Corrupt`] and the
//! caller starts over (or re-verifies) rather than trusting it.
//!
//! [`Sidecar::store`] replaces the file atomically (write a new temporary `PATH.tmp.RANDOM`,
//! fsync, rename, fsync the directory), so a crash leaves either the old or the new state,
//! never a mix. Callers must store only after the chunk data it describes is durable.
//! Neither the sidecar nor its temporary is ever opened through a symlink: the directory
//! may be shared, and a planted link must not make us read or overwrite another file.

use std::fmt;
use std::io;
use std::path::Path;

use crate::bitset::ChunkSet;
use crate::merkle::Hash;

const MAGIC: &[u8; 8] = b"RGTPSIDE";
const VERSION: u8 = 1;
/// Bytes before the bitmap: magic, version, root, size, chunk size.
const HEADER_LEN: usize = 8 + 1 + 32 + 8 + 4;
const CHECKSUM_LEN: usize = 32;

/// Resume state of one download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// BLAKE3 root of the content; resume is keyed by it.
    pub root: Hash,
    /// Content size in bytes.
    pub size: u64,
    /// Chunk size in bytes the bitmap refers to.
    pub chunk_size: u32,
    /// Chunks verified and durably written.
    pub have: ChunkSet,
}

/// Failure to load a sidecar.
#[derive(Debug)]
pub enum SidecarError {
    Io(io::Error),
    /// The file exists but is not a valid sidecar; the message says why.
    Corrupt(String),
}

impl fmt::Display for SidecarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SidecarError::Io(e) => write!(f, "resume sidecar I/O error: {e}"),
            SidecarError::Corrupt(why) => write!(f, "corrupt resume sidecar: {why}"),
        }
    }
}

impl std::error::Error for SidecarError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SidecarError::Io(e) => Some(e),
            SidecarError::Corrupt(_) => None,
        }
    }
}

impl From<io::Error> for SidecarError {
    fn from(e: io::Error) -> Self {
        SidecarError::Io(e)
    }
}

/// Number of chunks of `size` bytes at `chunk_size` (which must be non-zero).
fn chunks_of(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size))
}

/// A fresh temporary name beside `path` that nobody can guess ahead (and plant).
impl Sidecar {
    /// Fresh state for a download with nothing verified yet.
    pub fn new(root: Hash, size: u64, chunk_size: u32) -> Sidecar {
        let chunks = if chunk_size == 0 {
            0
        } else {
            chunks_of(size, chunk_size)
        };
        Sidecar {
            root,
            size,
            chunk_size,
            have: ChunkSet::new(chunks),
        }
    }

    /// Serialize in the documented format.
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        if self.chunk_size == 0 || self.have.len() != chunks_of(self.size, self.chunk_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "sidecar bitmap length does not match size / chunk_size",
            ));
        }
        let bitmap = self.have.to_bytes();
        let mut out = Vec::with_capacity(HEADER_LEN + bitmap.len() + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&bitmap);
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        Ok(out)
    }

    /// Parse the documented format. Every inconsistency is `Corrupt`.
    pub fn from_bytes(data: &[u8]) -> Result<Sidecar, SidecarError> {
        let corrupt = |why: &str| SidecarError::Corrupt(why.to_string());
        if data.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(corrupt("file too short"));
        }
        if &data[..8] != MAGIC {
            return Err(corrupt("bad magic (not an RGTP sidecar)"));
        }
        if data[8] != VERSION {
            return Err(SidecarError::Corrupt(format!(
                "unsupported version {}",
                data[8]
            )));
        }
        let (body, checksum) = data.split_at(data.len() - CHECKSUM_LEN);
        if blake3::hash(body).as_bytes() != checksum {
            return Err(corrupt("checksum mismatch (torn or damaged file)"));
        }
        let field = |at: usize, n: usize| &body[at..at + n];
        let mut root = [0u8; 32];
        root.copy_from_slice(field(9, 32));
        let mut size = [0u8; 8];
        size.copy_from_slice(field(41, 8));
        let size = u64::from_le_bytes(size);
        let mut chunk_size = [0u8; 4];
        chunk_size.copy_from_slice(field(49, 4));
        let chunk_size = u32::from_le_bytes(chunk_size);
        if chunk_size == 0 {
            return Err(corrupt("chunk size is zero"));
        }
        let chunks = chunks_of(size, chunk_size);
        let bitmap = &body[HEADER_LEN..];
        if bitmap.len() as u64 != chunks.div_ceil(8) {
            return Err(SidecarError::Corrupt(format!(
                "bitmap is {} bytes, expected {} for {chunks} chunks",
                bitmap.len(),
                chunks.div_ceil(8)
            )));
        }
        let have = ChunkSet::from_bytes(chunks, bitmap)
            .ok_or_else(|| corrupt("bitmap marks chunks beyond the end"))?;
        Ok(Sidecar {
            root,
            size,
            chunk_size,
            have,
        })
    }

    /// Load the sidecar at `path`; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Sidecar>, SidecarError> {
        let read = |path: &Path| -> io::Result<Vec<u8>> {
            let mut data = Vec::new();
            io::Read::read_to_end(&mut crate::output::open_nofollow(path)?, &mut data)?;
            Ok(data)
        };
        match read(path) {
            Ok(data) => Sidecar::from_bytes(&data).map(Some).map_err(|e| match e {
                SidecarError::Corrupt(why) => {
                    SidecarError::Corrupt(format!("{}: {why}", path.display()))
                }
                other => other,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SidecarError::Io(e)),
        }
    }

    /// Atomically replace the sidecar at `path`: write `path.tmp`, fsync it, rename it
    /// over `path`, fsync the directory.
    pub fn store(&self, path: &Path) -> io::Result<()> {
        let data = self.to_bytes()?;
        crate::atomic_file::replace(path, &data, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::CHUNK_SIZE;
    use std::fs;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rgtp-sidecar-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn sample() -> Sidecar {
        let size = 10 * CHUNK_SIZE as u64 + 123;
        let mut s = Sidecar::new([7u8; 32], size, CHUNK_SIZE as u32);
        assert_eq!(s.have.len(), 11);
        for i in [0, 3, 4, 10] {
            s.have.insert(i);
        }
        s
    }

    fn expect_corrupt(data: &[u8], what: &str) {
        match Sidecar::from_bytes(data) {
            Err(SidecarError::Corrupt(msg)) => {
                assert!(!msg.contains('\n'), "{what}: multi-line message");
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }

    /// Re-seal a modified body with a correct checksum, to test the checks behind it.
    fn reseal(mut body: Vec<u8>) -> Vec<u8> {
        let h = blake3::hash(&body);
        body.extend_from_slice(h.as_bytes());
        body
    }

    #[test]
    fn round_trip_through_file() {
        let dir = temp_dir("rt");
        let path = dir.join("file.part.rgtp");
        let s = sample();
        s.store(&path).expect("store");
        assert_eq!(
            names(&dir),
            vec!["file.part.rgtp"],
            "temporary renamed away"
        );
        assert_eq!(Sidecar::load(&path).expect("load"), Some(s.clone()));
        // Overwrite with more progress.
        let mut t = s;
        t.have.insert(5);
        t.store(&path).expect("store again");
        let back = Sidecar::load(&path).expect("load").expect("present");
        assert_eq!(back, t);
        assert_eq!(back.have.count(), 5);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn layout_matches_documentation() {
        let s = sample();
        let b = s.to_bytes().expect("serialize");
        assert_eq!(b.len(), HEADER_LEN + 2 + CHECKSUM_LEN);
        assert_eq!(&b[..8], b"RGTPSIDE");
        assert_eq!(b[8], 1);
        assert_eq!(&b[9..41], &[7u8; 32]);
        assert_eq!(&b[41..49], &(10 * CHUNK_SIZE as u64 + 123).to_le_bytes());
        assert_eq!(&b[49..53], &(CHUNK_SIZE as u32).to_le_bytes());
        assert_eq!(&b[53..55], &[0b0001_1001, 0b0000_0100]);
        assert_eq!(&b[55..], blake3::hash(&b[..55]).as_bytes());
    }

    #[test]
    fn empty_and_complete_contents() {
        for (size, fill) in [(0u64, false), (1, true), (CHUNK_SIZE as u64 * 8, true)] {
            let mut s = Sidecar::new([1; 32], size, CHUNK_SIZE as u32);
            if fill {
                s.have = ChunkSet::full(s.have.len());
            }
            let back = Sidecar::from_bytes(&s.to_bytes().expect("serialize")).expect("parse");
            assert_eq!(back, s);
        }
    }

    #[test]
    fn missing_file_is_none() {
        let dir = temp_dir("missing");
        assert!(matches!(Sidecar::load(&dir.join("nope")), Ok(None)));
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unreadable_path_is_io_error() {
        let dir = temp_dir("isdir");
        // A directory where the file should be: exists but cannot be read as a file.
        assert!(matches!(Sidecar::load(&dir), Err(SidecarError::Io(_))));
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let b = sample().to_bytes().expect("serialize");
        for len in 0..b.len() {
            expect_corrupt(&b[..len], &format!("truncated to {len}"));
        }
        let mut longer = b.clone();
        longer.push(0);
        expect_corrupt(&longer, "one extra byte");
    }

    #[test]
    fn every_flipped_bit_is_corrupt() {
        let b = sample().to_bytes().expect("serialize");
        for pos in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[pos] ^= 1 << bit;
                expect_corrupt(&c, &format!("bit {bit} of byte {pos}"));
            }
        }
    }

    #[test]
    fn header_checks_behind_the_checksum() {
        let b = sample().to_bytes().expect("serialize");
        let body = b[..b.len() - CHECKSUM_LEN].to_vec();

        let mut wrong_magic = body.clone();
        wrong_magic[..8].copy_from_slice(b"RGTPSIDX");
        expect_corrupt(&reseal(wrong_magic), "wrong magic");

        let mut wrong_version = body.clone();
        wrong_version[8] = 2;
        expect_corrupt(&reseal(wrong_version), "wrong version");

        let mut zero_chunk = body.clone();
        zero_chunk[49..53].copy_from_slice(&0u32.to_le_bytes());
        expect_corrupt(&reseal(zero_chunk), "zero chunk size");

        // Size claims more chunks than the bitmap holds.
        let mut bigger = body.clone();
        bigger[41..49].copy_from_slice(&(100 * CHUNK_SIZE as u64).to_le_bytes());
        expect_corrupt(&reseal(bigger), "size/bitmap mismatch");

        // Huge size: must be rejected by length, not by allocating.
        let mut huge = body.clone();
        huge[41..49].copy_from_slice(&u64::MAX.to_le_bytes());
        huge[49..53].copy_from_slice(&1u32.to_le_bytes());
        expect_corrupt(&reseal(huge), "huge size");

        // 11 chunks: bits 11..15 of the second bitmap byte must be clear.
        let mut beyond = body.clone();
        beyond[54] |= 0x80;
        expect_corrupt(&reseal(beyond), "bit beyond the end");
    }

    #[test]
    fn load_reports_path_in_corrupt_message() {
        let dir = temp_dir("corrupt");
        let path = dir.join("x.rgtp");
        fs::write(
            &path,
            b"RGTPSIDE garbage that is long enough to pass the length check..",
        )
        .expect("write");
        match Sidecar::load(&path) {
            Err(e @ SidecarError::Corrupt(_)) => {
                let msg = e.to_string();
                assert!(msg.contains("x.rgtp"), "{msg}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn store_rejects_inconsistent_state() {
        let mut s = sample();
        s.have = ChunkSet::new(3);
        assert!(s.to_bytes().is_err());
        let dir = temp_dir("bad");
        let path = dir.join("s");
        assert!(s.store(&path).is_err());
        assert!(names(&dir).is_empty());
        fs::remove_dir_all(&dir).ok();
    }
}

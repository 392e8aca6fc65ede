//! Remembered roots: the chunk CVs of an exposed file, kept on disk so that exposing
//! the same unchanged file again needs no hashing.
//!
//! An entry lives at `DIR/roots/<dev>-<ino>` and names the file's identity: device,
//! inode, size, modification time and change time (both in nanoseconds). Any
//! difference means the file may have changed, and it is hashed again. The change
//! time is there because a user can set the modification time back (`touch -d`) after
//! writing, but not the change time. An entry whose CVs do not combine into its stored
//! root is damaged and ignored. Entries not used for [`MAX_AGE`] are removed.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::merkle::{self, Hash};

/// Files smaller than this are hashed every time (it takes milliseconds).
pub const MIN_SIZE: u64 = 1 << 20;

/// Entries not used for this long are removed when a new one is written.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

const MAGIC: &[u8; 8] = b"RGTPRT01";
const HEADER_LEN: usize = 8 + 8 * 7 + 32;

/// What identifies one version of a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileIdentity {
    /// The identity of an open file (fstat: the file being served, not a path that
    /// may have been replaced since).
    pub fn of(file: &File) -> io::Result<FileIdentity> {
        let m = file.metadata()?;
        Ok(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }

    fn entry(&self, dir: &Path) -> PathBuf {
        dir.join("roots").join(format!("{}-{}", self.dev, self.ino))
    }

    fn header(&self, root: &Hash) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&self.dev.to_le_bytes());
        h.extend_from_slice(&self.ino.to_le_bytes());
        h.extend_from_slice(&self.size.to_le_bytes());
        for t in [self.mtime_ns, self.ctime_ns] {
            let secs = t.div_euclid(1_000_000_000) as i64;
            let nanos = t.rem_euclid(1_000_000_000) as u64;
            h.extend_from_slice(&secs.to_le_bytes());
            h.extend_from_slice(&nanos.to_le_bytes());
        }
        h.extend_from_slice(root);
        h
    }
}

/// The chunk CVs remembered in `dir` for the file `id`, if an entry matches it exactly
/// and is whole. Anything else (no entry, another version, damage) is `None`.
pub fn recall(dir: &Path, id: &FileIdentity) -> Option<Vec<Hash>> {
    let path = id.entry(dir);
    let bytes = std::fs::read(&path).ok()?;
    let chunks = usize::try_from(merkle::chunk_count(id.size)).ok()?;
    if bytes.len() != HEADER_LEN + chunks.checked_mul(32)? {
        return None;
    }
    let (header, body) = bytes.split_at(HEADER_LEN);
    let root: Hash = header[HEADER_LEN - 32..].try_into().ok()?;
    if header != id.header(&root).as_slice() {
        return None;
    }
    let cvs: Vec<Hash> = body
        .chunks_exact(32)
        .map(|c| c.try_into().expect("chunks_exact(32)"))
        .collect();
    if merkle::root_from_cvs(&cvs, id.size) != root {
        return None;
    }
    // Used: keep it from ageing out.
    if let Ok(f) = File::options().write(true).open(&path) {
        let _ = f.set_modified(SystemTime::now());
    }
    Some(cvs)
}

/// Remembers `cvs` as the chunk CVs of the file `id` (renamed into place, not fsynced:
/// a damaged entry is ignored), and removes entries unused for [`MAX_AGE`].
pub fn remember(dir: &Path, id: &FileIdentity, cvs: &[Hash]) -> io::Result<()> {
    let root = merkle::root_from_cvs(cvs, id.size);
    let mut bytes = id.header(&root);
    bytes.reserve(cvs.len() * 32);
    for cv in cvs {
        bytes.extend_from_slice(cv);
    }
    let path = id.entry(dir);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
        prune(parent);
    }
    crate::atomic_file::replace_unsynced(&path, &bytes, 0o600)
}

/// Removes entries older than [`MAX_AGE`] (best effort: a failure only leaves them).
fn prune(roots: &Path) {
    let Ok(entries) = std::fs::read_dir(roots) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > MAX_AGE);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn setup(name: &str, len: usize) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("rgtp-remembered-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("content.bin");
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
        std::fs::write(&file, data).unwrap();
        (dir, file)
    }

    fn cvs_of(file: &Path) -> Vec<Hash> {
        let f = File::open(file).unwrap();
        merkle::cvs_of_file(&f, f.metadata().unwrap().len()).unwrap()
    }

    #[test]
    fn an_unchanged_file_is_recalled_and_a_changed_one_is_not() {
        let (dir, file) = setup("change", 3 * merkle::CHUNK_SIZE + 9);
        let id = FileIdentity::of(&File::open(&file).unwrap()).unwrap();
        assert_eq!(recall(&dir, &id), None);
        let cvs = cvs_of(&file);
        remember(&dir, &id, &cvs).unwrap();
        assert_eq!(recall(&dir, &id), Some(cvs.clone()));

        // A new modification time: hashed again.
        let f = File::options().write(true).open(&file).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let id2 = FileIdentity::of(&f).unwrap();
        assert_ne!(id2.mtime_ns, id.mtime_ns);
        assert_eq!(recall(&dir, &id2), None);

        // Setting the modification time back does not hide a write: ctime moved.
        remember(&dir, &id2, &cvs).unwrap();
        let mut f = File::options().append(true).open(&file).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        f.write_all(b"x").unwrap();
        let id3 = FileIdentity::of(&f).unwrap();
        assert_ne!(id3.size, id2.size);
        assert_eq!(recall(&dir, &id3), None);
        let back = FileIdentity {
            size: id2.size,
            mtime_ns: id2.mtime_ns,
            ..id3
        };
        assert_ne!(back.ctime_ns, id2.ctime_ns);
        assert_eq!(recall(&dir, &back), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_entry_is_ignored() {
        let (dir, file) = setup("damage", 5 * merkle::CHUNK_SIZE);
        let id = FileIdentity::of(&File::open(&file).unwrap()).unwrap();
        let cvs = cvs_of(&file);
        remember(&dir, &id, &cvs).unwrap();
        let entry = id.entry(&dir);
        let mut bytes = std::fs::read(&entry).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1; // one CV flipped: no longer combines to the stored root
        std::fs::write(&entry, &bytes).unwrap();
        assert_eq!(recall(&dir, &id), None);
        std::fs::write(&entry, &bytes[..bytes.len() - 32]).unwrap();
        assert_eq!(recall(&dir, &id), None);
        std::fs::write(&entry, b"short").unwrap();
        assert_eq!(recall(&dir, &id), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

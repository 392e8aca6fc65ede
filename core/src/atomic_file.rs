//! Replacing a small file atomically and durably (keys, known exposers, pull state):
//! write a temporary sibling, fsync it, rename it into place, fsync the directory.
//! The temporary is created exclusively, never through a link, under an unpredictable
//! name, so a link planted in a shared directory cannot redirect the write.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A sibling of `path` nobody can predict: `path.tmp.<16 hex digits>`.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let r: [u8; 8] = crate::crypto::random_bytes();
    let mut s = OsString::from(path.as_os_str());
    s.push(format!(".tmp.{}", crate::url::hex(&r)));
    PathBuf::from(s)
}

/// Creates `path` exclusively (never an existing file, never through a link) with
/// permission bits `mode`, and writes `data` to it, fsynced.
pub(crate) fn create_new_synced(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    create_new(path, data, mode, true)
}

fn create_new(path: &Path, data: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

/// Replaces `path` with `data` (permission bits `mode` on a new file): a temporary
/// sibling, fsync, rename, fsync the directory. On failure the temporary is removed
/// and `path` is as it was.
pub(crate) fn replace(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    rename_into_place(path, data, mode, true)?;
    sync_parent_dir(path)
}

/// As [`replace`] without the fsyncs, for caches whose readers check what they read:
/// after a crash the file may be the old one, the new one, or damaged, and a reader
/// then ignores it. Cheap where the disk is busy (an fsync waits for everything).
pub(crate) fn replace_unsynced(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    rename_into_place(path, data, mode, false)
}

fn rename_into_place(path: &Path, data: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let result = create_new(&tmp, data, mode, sync).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        // Best effort: the error that matters is the original one.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs the directory holding `path`, so a rename into it survives a crash.
pub(crate) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replace_writes_whole_files_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("rgtp-atomic-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        replace(&p, b"one", 0o600).unwrap();
        replace(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        // The temporary is never created through a planted link.
        let target = dir.join("target");
        fs::write(&target, b"keep").unwrap();
        let t = temp_sibling(&p);
        std::os::unix::fs::symlink(&target, &t).unwrap();
        assert!(create_new_synced(&t, b"x", 0o600).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        fs::remove_dir_all(&dir).unwrap();
    }
}

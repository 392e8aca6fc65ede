//! A small disk that fills up (a tmpfs; root only).

use std::fs;
use std::path::{Path, PathBuf};

/// A small tmpfs mounted on a directory, unmounted on drop: a disk that fills up. Needs
/// root: a test using it starts with [`require_root!`](crate::require_root).
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    /// Mounts it; fails the test if that is not permitted.
    pub fn mount(path: &Path, bytes: u64) -> SmallDisk {
        fs::create_dir_all(path).expect("create mount point");
        let disk = SmallDisk {
            path: path.to_path_buf(),
        };
        assert!(
            disk.tmpfs(bytes, 0),
            "cannot mount a tmpfs on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        disk
    }

    /// Changes the size (keeps the content).
    pub fn resize(&self, bytes: u64) {
        assert!(
            self.tmpfs(bytes, libc::MS_REMOUNT),
            "remount {}: {}",
            self.path.display(),
            std::io::Error::last_os_error()
        );
    }

    fn tmpfs(&self, bytes: u64, flags: libc::c_ulong) -> bool {
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (src, target, fstype) = (
            c("rgtp-e2e"),
            c(self.path.to_str().expect("UTF-8 path")),
            c("tmpfs"),
        );
        let data = c(&format!("size={bytes},mode=0755"));
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        rc == 0
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: valid C string. MNT_DETACH: never blocks on a busy mount.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

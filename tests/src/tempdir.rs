//! Temp directories, one a test, removed when it ends.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

/// A fresh directory under `std::env::temp_dir()`, removed on drop (kept when the test
/// failed and `RGTP_KEEP_TMP=1`).
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> TestDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "rgtp-e2e-{label}-{}-{n}-{:08x}",
            std::process::id(),
            rand_u32()
        ));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TestDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
    /// Config dir for exposers started by this test.
    pub fn exposer_cfg(&self) -> PathBuf {
        self.join("exposer-cfg")
    }
    /// Config dir for pullers started by this test (holds `known_exposers`).
    pub fn puller_cfg(&self) -> PathBuf {
        self.join("puller-cfg")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() && std::env::var_os("RGTP_KEEP_TMP").is_some() {
            eprintln!("rgtp-e2e: keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // Uniqueness only; the pid and counter already make collisions unlikely.
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u32::from_le_bytes(b)
}

//! File content: random files, hashes, byte-exact comparison, the puller's part and
//! sidecar files, exposer key files.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rgtp::merkle;
use rgtp::sidecar::Sidecar;

use crate::MIB;

/// Writes `len` pseudo-random bytes (BLAKE3 XOF of `seed`) to `path`; returns their hash.
pub fn write_random_file(path: &Path, len: u64, seed: &str) -> blake3::Hash {
    let mut xof = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    let mut f = std::io::BufWriter::new(
        File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display())),
    );
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("write random file");
        left -= n as u64;
    }
    f.into_inner()
        .expect("flush random file")
        .sync_all()
        .expect("sync random file");
    hasher.finalize()
}

/// BLAKE3 of a file's content, computed in-process.
pub fn blake3_file(path: &Path) -> blake3::Hash {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = blake3::Hasher::new();
    h.update_reader(f)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    h.finalize()
}

/// `b3sum --no-names PATH`, as 64 lowercase hex digits.
pub fn b3sum(path: &Path) -> String {
    let out = Command::new("b3sum")
        .arg("--no-names")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run b3sum ({e}); install it: apt-get install -y b3sum"));
    assert!(
        out.status.success(),
        "b3sum {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).expect("b3sum prints UTF-8");
    let s = s.trim().to_string();
    assert!(
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "unexpected b3sum output {s:?}"
    );
    s
}

/// Asserts `got` has exactly the bytes of `expected` (length, in-process BLAKE3 and
/// `b3sum` of both files).
pub fn assert_same_content(expected: &Path, got: &Path, what: &str) {
    assert!(
        got.is_file(),
        "{what}: output {} does not exist",
        got.display()
    );
    let (le, lg) = (file_len(expected), file_len(got));
    assert_eq!(
        lg,
        le,
        "{what}: {} is {lg} bytes, expected {le}",
        got.display()
    );
    let (he, hg) = (blake3_file(expected), blake3_file(got));
    assert_eq!(
        hg.to_hex().as_str(),
        he.to_hex().as_str(),
        "{what}: BLAKE3 of {} differs from the source",
        got.display()
    );
    let (be, bg) = (b3sum(expected), b3sum(got));
    assert_eq!(
        bg,
        be,
        "{what}: b3sum of {} differs from the source",
        got.display()
    );
    assert_eq!(
        be,
        he.to_hex().as_str(),
        "b3sum disagrees with blake3 crate"
    );
}

pub fn file_len(p: &Path) -> u64 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .len()
}

/// `OUTPUT.rgtp-part`
pub fn part_path(output: &Path) -> PathBuf {
    suffixed(output, ".rgtp-part")
}

/// `OUTPUT.rgtp-state`
pub fn state_path(output: &Path) -> PathBuf {
    suffixed(output, ".rgtp-state")
}

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads the resume sidecar if present and valid.
pub fn read_sidecar(path: &Path) -> Option<Sidecar> {
    Sidecar::load(path).ok().flatten()
}

/// Content bytes the sidecar records as verified.
pub fn verified_bytes(s: &Sidecar) -> u64 {
    assert_eq!(
        s.chunk_size as usize,
        merkle::CHUNK_SIZE,
        "sidecar chunk size"
    );
    s.have
        .iter()
        .map(|i| merkle::chunk_len(i, s.size) as u64)
        .sum()
}

/// Writes a valid exposer key file (64 lowercase hex digits + newline, mode 0600) with a
/// private key derived from `seed`.
pub fn write_key_file(path: &Path, seed: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut private = [0u8; 32];
    blake3::Hasher::new()
        .update(b"rgtp-e2e key ")
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut private);
    let mut hex = String::new();
    for b in private {
        write!(hex, "{b:02x}").unwrap();
    }
    hex.push('\n');
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create key file {}: {e}", path.display()));
    f.write_all(hex.as_bytes()).unwrap();
}

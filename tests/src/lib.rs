//! Helpers shared by the end-to-end tests in `tests/tests/`.
//!
//! The tests drive the real `rgtp-expose` and `rgtp-pull` binaries over loopback UDP.
//! Binaries are looked up in `$RGTP_BIN_DIR`, else `<workspace>/target/release` when
//! both are there, else `<workspace>/target/debug` (build them first:
//! `cargo build --release -p rgtp-cli`).
//!
//! Every process a test starts is owned by a [`Proc`], which kills it (SIGKILL, by pid)
//! and reaps it when dropped, so a failing test leaves nothing behind. Every wait is
//! bounded by a generous deadline that only exists to turn a hang into a failure; no
//! test asserts on timing.
//!
//! To interrupt a transfer at a chosen point whatever the speed of loopback, tests pull
//! through a [`Relay`] (an in-process UDP relay on 127.0.0.1 with a rate cap and a
//! freeze switch) and watch the puller's resume sidecar ([`freeze_after_progress`]).
//!
//! Environment knobs: `RGTP_TEST_RUST_LOG` (passed to the binaries as `RUST_LOG`),
//! `RGTP_KEEP_TMP=1` (keep the temp directory of a failed test).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rgtp::merkle;
use rgtp::sidecar::Sidecar;

pub use serde_json::Value as Json;

/// Exit codes of `rgtp-expose` and `rgtp-pull` (the CLI contract).
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 2;
    /// rgtp-expose: a FILE missing/unreadable. rgtp-pull: output path not writable.
    pub const FILE: i32 = 3;
    pub const DISK_FULL: i32 = 4;
    pub const TIMEOUT: i32 = 5;
    pub const KEY_MISMATCH: i32 = 6;
    pub const NOT_FOUND: i32 = 7;
    pub const ROOT_MISMATCH: i32 = 8;
    pub const CORRUPT_SIDECAR: i32 = 9;
    pub const BIND: i32 = 10;
    pub const BAD_KEY_FILE: i32 = 11;
    /// rgtp-pull: the offered file is too large to track in memory.
    pub const TOO_LARGE: i32 = 12;
    /// rgtp-pull: the exposer withdrew the file (it changed while exposed).
    pub const GONE: i32 = 13;
    /// rgtp-pull: the output exists and neither -o nor --force was given.
    pub const EXISTS: i32 = 14;
    /// rgtp-expose: no key file, and none can be created (e.g. its directory).
    pub const KEY_CREATE: i32 = 15;
    pub const INTERRUPTED: i32 = 130;
}

/// Upper bound for any single transfer in these tests (a hang guard, not a timing check).
pub const PULL_DEADLINE: Duration = Duration::from_secs(180);
/// Upper bound for an exposer to hash its files and print its URLs.
pub const EXPOSE_DEADLINE: Duration = Duration::from_secs(90);
/// Upper bound for a command that is expected to fail quickly.
pub const ERROR_DEADLINE: Duration = Duration::from_secs(60);

pub const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// Locating things
// ---------------------------------------------------------------------------------------

/// The Cargo workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The LD_PRELOAD shim among the built binaries (fails the test if it is missing).
pub fn shim() -> PathBuf {
    let p = bin_dir().join("librgtp_shim.so");
    assert!(
        p.is_file(),
        "{} missing: cargo build --release -p rgtp-shim",
        p.display()
    );
    p
}

/// Fails the test (never skips it) when a real program it needs is not installed.
pub fn need(program: &str) {
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{program} is not installed (scripts/test.sh installs it)"
    );
}

/// Directory holding `rgtp-expose` and `rgtp-pull`.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let has_both = |d: &Path| d.join("rgtp-expose").is_file() && d.join("rgtp-pull").is_file();
        if let Some(d) = std::env::var_os("RGTP_BIN_DIR") {
            let d = PathBuf::from(d);
            assert!(
                has_both(&d),
                "RGTP_BIN_DIR={} does not contain both rgtp-expose and rgtp-pull",
                d.display()
            );
            return d;
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        for profile in ["release", "debug"] {
            let d = target.join(profile);
            if has_both(&d) {
                eprintln!("rgtp-e2e: using binaries in {}", d.display());
                return d;
            }
        }
        panic!(
            "rgtp-expose/rgtp-pull not found in $RGTP_BIN_DIR, {0}/release or {0}/debug; \
             build them first: cargo build --release -p rgtp-cli",
            target.display()
        );
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

// ---------------------------------------------------------------------------------------
// Temp directories
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// How a finished process ended, with what it printed.
#[derive(Debug)]
pub struct Finished {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Text for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            describe_status(&self.status),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "expected success: {}",
            self.describe()
        );
        self
    }

    /// Asserts the exit code and that stderr is exactly one clear line: non-empty, no
    /// panic or backtrace, and containing every string of `mentions` (case-insensitive).
    pub fn assert_clean_error(&self, code: i32, mentions: &[&str]) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "expected exit code {code}: {}",
            self.describe()
        );
        assert_one_clear_line(&self.stderr, mentions, &self.describe());
        self
    }

    /// The single JSON object printed on stdout (`--json`).
    pub fn json(&self) -> Report {
        let text = self.stdout.trim();
        let v: Json = serde_json::from_str(text).unwrap_or_else(|e| {
            panic!(
                "stdout is not exactly one JSON object ({e}): {}",
                self.describe()
            )
        });
        assert!(
            v.is_object(),
            "--json output is not an object: {}",
            self.describe()
        );
        Report(v)
    }
}

/// Asserts `stderr` is one clear line with no panic/backtrace, containing `mentions`.
pub fn assert_one_clear_line(stderr: &str, mentions: &[&str], context: &str) {
    let text = stderr.trim();
    assert!(!text.is_empty(), "stderr is empty: {context}");
    let lower = text.to_lowercase();
    for bad in ["panicked", "backtrace", "thread 'main'"] {
        assert!(
            !lower.contains(bad),
            "stderr shows a panic ({bad:?}): {context}"
        );
    }
    assert_eq!(
        text.lines().count(),
        1,
        "stderr should be one line: {context}"
    );
    for m in mentions {
        assert!(
            lower.contains(&m.to_lowercase()),
            "stderr should mention {m:?}: {context}"
        );
    }
}

fn describe_status(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => format!("{s:?}"),
    }
}

/// `--json` report of rgtp-pull.
#[derive(Debug, Clone)]
pub struct Report(pub Json);

impl Report {
    pub fn u64(&self, key: &str) -> u64 {
        let v = self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("--json report lacks {key:?}: {}", self.0));
        v.as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as u64)
            })
            .unwrap_or_else(|| panic!("--json {key:?} is not a whole number: {}", self.0))
    }
    pub fn f64(&self, key: &str) -> f64 {
        self.0
            .get(key)
            .and_then(Json::as_f64)
            .unwrap_or_else(|| panic!("--json {key:?} missing or not a number: {}", self.0))
    }
    pub fn bool(&self, key: &str) -> bool {
        self.0
            .get(key)
            .and_then(Json::as_bool)
            .unwrap_or_else(|| panic!("--json {key:?} missing or not a bool: {}", self.0))
    }
    /// Checks every field the contract promises is there with the right type.
    pub fn assert_fields(&self) {
        for k in [
            "bytes",
            "datagrams_received",
            "bytes_received",
            "rerequested_fragments",
            "missing_bytes_at_start",
        ] {
            self.u64(k);
        }
        for k in ["seconds", "throughput"] {
            let v = self.f64(k);
            assert!(
                v.is_finite() && v >= 0.0,
                "--json {k} = {v} is not a finite non-negative number"
            );
        }
        self.bool("resumed");
    }
}

static PROC_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A child process owned by a test: killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub what: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    stdout_path: Option<PathBuf>,
    stderr_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null, stderr (and stdout unless `pipe_stdout`)
    /// redirected to files in `dir`.
    pub fn spawn(mut cmd: Command, what: &str, dir: &Path, pipe_stdout: bool) -> Proc {
        let n = PROC_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{}-{n}", sanitize(what));
        let stderr_path = dir.join(format!("{base}.stderr"));
        let stderr = File::create(&stderr_path).expect("create stderr file");
        cmd.stdin(Stdio::null()).stderr(stderr);
        let stdout_path = if pipe_stdout {
            cmd.stdout(Stdio::piped());
            None
        } else {
            let p = dir.join(format!("{base}.stdout"));
            cmd.stdout(File::create(&p).expect("create stdout file"));
            Some(p)
        };
        // If the test process dies without running its Drop guards (killed by an outer
        // timeout, say), the kernel kills the child too. Children are spawned by the
        // test's own thread and never outlive it.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Proc {
            what: format!("{what} (pid {})", child.id()),
            child: Some(child),
            status: None,
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child present").id()
    }

    /// The process's stderr so far.
    pub fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn stdout_file(&self) -> String {
        self.stdout_path
            .as_ref()
            .and_then(|p| fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Non-blocking: the exit status if the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let child = self.child.as_mut().expect("child present");
            self.status = child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` to the process if it has not been reaped yet (so its pid cannot have
    /// been reused). Returns false if it had already ended.
    pub fn signal(&mut self, sig: libc::c_int) -> bool {
        if !self.is_running() {
            return false;
        }
        // SAFETY: plain syscall on the pid of our own unreaped child.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        rc == 0
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_for(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{} did not die on SIGKILL", self.what))
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded by `limit`) for the process to exit and collects its output. A hang
    /// is a test failure: the process is killed and its stderr shown.
    pub fn finish(mut self, limit: Duration) -> Finished {
        match self.wait_for(limit) {
            Some(status) => Finished {
                what: self.what.clone(),
                status,
                stdout: self.stdout_file(),
                stderr: self.stderr(),
            },
            None => {
                self.signal(libc::SIGKILL);
                let _ = self.wait_for(Duration::from_secs(10));
                panic!(
                    "{} did not finish within {limit:?} (killed)\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.what,
                    self.stdout_file(),
                    self.stderr()
                );
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// A command for one of our binaries with the test's environment: `RGTP_CONFIG_DIR`
/// set, `RUST_LOG` cleared (or `$RGTP_TEST_RUST_LOG`), backtraces on.
pub fn rgtp_command(binary: &str, config_dir: &Path) -> Command {
    let mut cmd = Command::new(bin(binary));
    cmd.env("RGTP_CONFIG_DIR", config_dir)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG");
    if let Some(l) = std::env::var_os("RGTP_TEST_RUST_LOG") {
        cmd.env("RUST_LOG", l);
    }
    cmd
}

// ---------------------------------------------------------------------------------------
// rgtp-expose
// ---------------------------------------------------------------------------------------

/// One file as printed by rgtp-expose.
#[derive(Debug, Clone)]
pub struct Exposed {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Name as it appears in the URL (percent-encoded).
    pub name_encoded: String,
    /// Name decoded.
    pub name: String,
    pub key: String,
    pub root: String,
    /// The indented `root:` line.
    pub root_line: String,
    /// The indented `key:` line.
    pub key_line: String,
}

impl Exposed {
    /// `HOST:PORT` as pull takes it (IPv6 in brackets).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
    /// The URL with the `key` parameter replaced.
    pub fn url_with_key(&self, key: &str) -> String {
        self.url.replace(&self.key, key)
    }
    pub fn url_with_root(&self, root: &str) -> String {
        self.url.replace(&self.root, root)
    }
}

/// Options for starting `rgtp-expose`.
#[derive(Debug, Clone)]
pub struct ExposeOpts {
    pub files: Vec<PathBuf>,
    pub port: u16,
    pub bind: Option<String>,
    pub key: Option<PathBuf>,
    pub advertise: Option<String>,
    pub max_datagram: Option<usize>,
    pub config_dir: PathBuf,
    /// `$RGTP_CACHE_DIR` (sealed-ahead ciphertext), kept inside the test's directory.
    pub cache_dir: PathBuf,
    /// More options, placed before the files.
    pub extra_args: Vec<String>,
}

impl ExposeOpts {
    /// Exposes `files` on 127.0.0.1, port 0, with the test's exposer config dir.
    pub fn new(dir: &TestDir, files: &[&Path]) -> ExposeOpts {
        ExposeOpts {
            files: files.iter().map(|p| p.to_path_buf()).collect(),
            port: 0,
            bind: Some("127.0.0.1".into()),
            key: None,
            advertise: None,
            max_datagram: None,
            config_dir: dir.exposer_cfg(),
            cache_dir: dir.join("exposer-cache"),
            extra_args: Vec::new(),
        }
    }
    pub fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    pub fn bind(mut self, b: Option<&str>) -> Self {
        self.bind = b.map(str::to_string);
        self
    }
    pub fn key(mut self, k: &Path) -> Self {
        self.key = Some(k.to_path_buf());
        self
    }
    pub fn advertise(mut self, a: &str) -> Self {
        self.advertise = Some(a.to_string());
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = rgtp_command("rgtp-expose", &self.config_dir);
        cmd.env("RGTP_CACHE_DIR", &self.cache_dir);
        cmd.arg("--port").arg(self.port.to_string());
        if let Some(b) = &self.bind {
            cmd.arg("--bind").arg(b);
        }
        if let Some(k) = &self.key {
            cmd.arg("--key").arg(k);
        }
        if let Some(a) = &self.advertise {
            cmd.arg("--advertise").arg(a);
        }
        if let Some(m) = self.max_datagram {
            cmd.arg("--max-datagram").arg(m.to_string());
        }
        cmd.args(&self.extra_args);
        cmd.arg("--");
        cmd.args(&self.files);
        cmd
    }

    /// Starts the exposer and waits (bounded) for its `listening on` line.
    pub fn start(&self, dir: &TestDir) -> ExposerProc {
        ExposerProc::start(self, dir)
    }

    /// Runs an exposer that is expected to fail at start.
    pub fn run_expect_exit(&self, dir: &TestDir) -> Finished {
        Proc::spawn(self.command(), "rgtp-expose", dir.path(), false).finish(ERROR_DEADLINE)
    }
}

/// A running `rgtp-expose`.
pub struct ExposerProc {
    pub proc: Proc,
    pub files: Vec<Exposed>,
    pub listening: String,
    pub stdout_lines: Vec<String>,
    /// Port parsed from the printed URLs.
    pub port: u16,
    stdout_thread: Option<thread::JoinHandle<()>>,
}

impl ExposerProc {
    fn start(opts: &ExposeOpts, dir: &TestDir) -> ExposerProc {
        let mut proc = Proc::spawn(opts.command(), "rgtp-expose", dir.path(), true);
        let stdout = proc
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        // Drains stdout for the life of the process so it can never block on a full pipe.
        let stdout_thread = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + EXPOSE_DEADLINE;
        let mut lines = Vec::new();
        let listening = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on") {
                        let rest = rest.trim().to_string();
                        lines.push(line);
                        break rest;
                    }
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => {
                    let status = proc.wait_for(Duration::from_secs(2));
                    panic!(
                        "{} did not print `listening on` ({e:?}; status {status:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        proc.what,
                        lines.join("\n"),
                        proc.stderr()
                    );
                }
            }
        };
        let files = parse_expose_output(&lines).unwrap_or_else(|e| {
            panic!(
                "cannot parse rgtp-expose output ({e}):\n{}",
                lines.join("\n")
            )
        });
        assert_eq!(
            files.len(),
            opts.files.len(),
            "one URL per exposed file expected:\n{}",
            lines.join("\n")
        );
        let port = files[0].port;
        assert!(
            files.iter().all(|f| f.port == port),
            "all URLs should share one port"
        );
        if opts.port != 0 {
            assert_eq!(port, opts.port, "URL port differs from --port");
        }
        ExposerProc {
            proc,
            files,
            listening,
            stdout_lines: lines,
            port,
            stdout_thread: Some(stdout_thread),
        }
    }

    pub fn file(&self, name: &str) -> &Exposed {
        self.files
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} not among exposed files {:?}", self.files))
    }

    /// The only exposed file.
    pub fn single(&self) -> &Exposed {
        assert_eq!(self.files.len(), 1);
        &self.files[0]
    }

    /// The address pullers reach it at (from its URL).
    pub fn addr(&self) -> SocketAddr {
        let f = &self.files[0];
        let ip: IpAddr = f.host.parse().expect("URL host is an IP address");
        SocketAddr::new(ip, f.port)
    }

    /// Asserts the exposer is still alive (with its stderr if not).
    pub fn assert_running(&mut self) {
        if let Some(s) = self.proc.try_status() {
            panic!(
                "{} exited unexpectedly with {}: {}",
                self.proc.what,
                describe_status(&s),
                self.proc.stderr()
            );
        }
    }

    /// Sends `sig` and waits (bounded) for the exit.
    pub fn stop_with(mut self, sig: libc::c_int) -> Finished {
        assert!(self.proc.signal(sig), "{} already exited", self.proc.what);
        let what = self.proc.what.clone();
        let status = self
            .proc
            .wait_for(Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "{what} did not exit within 30 s of signal {sig}: {}",
                    self.proc.stderr()
                )
            });
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        Finished {
            what,
            status,
            stdout: self.stdout_lines.join("\n"),
            stderr: self.proc.stderr(),
        }
    }
}

/// Parses rgtp-expose's stdout: per file a `rgtp://` line, then indented `root:` and
/// `key:` lines; then `listening on ADDR`.
pub fn parse_expose_output(lines: &[String]) -> Result<Vec<Exposed>, String> {
    let mut out: Vec<Exposed> = Vec::new();
    for line in lines {
        if line.starts_with("rgtp://") {
            let (host, port, name_encoded, key, root) = parse_url(line)?;
            out.push(Exposed {
                url: line.clone(),
                host,
                port,
                name: percent_decode(&name_encoded)?,
                name_encoded,
                key,
                root,
                root_line: String::new(),
                key_line: String::new(),
            });
        } else if line.starts_with("  ") {
            let cur = out
                .last_mut()
                .ok_or_else(|| format!("indented line before any URL: {line:?}"))?;
            let t = line.trim_start();
            if let Some(v) = t.strip_prefix("root:") {
                cur.root_line = v.trim().to_string();
            } else if let Some(v) = t.strip_prefix("key:") {
                cur.key_line = v.trim().to_string();
            }
        }
    }
    for f in &out {
        if f.root_line != f.root {
            return Err(format!(
                "root line {:?} differs from the URL's root {:?}",
                f.root_line, f.root
            ));
        }
        if f.key_line != f.key {
            return Err(format!(
                "key line {:?} differs from the URL's key {:?}",
                f.key_line, f.key
            ));
        }
    }
    if out.is_empty() {
        return Err("no rgtp:// line".into());
    }
    Ok(out)
}

/// Independent parser for `rgtp://HOST:PORT/NAME?key=HEX64&root=HEX64`:
/// returns (host without brackets, port, encoded name, key, root).
pub fn parse_url(url: &str) -> Result<(String, u16, String, String, String), String> {
    let rest = url
        .strip_prefix("rgtp://")
        .ok_or_else(|| format!("{url}: no rgtp:// scheme"))?;
    let (authority, path_query) = rest
        .split_once('/')
        .ok_or_else(|| format!("{url}: no /NAME"))?;
    let (host, port) = if let Some(a) = authority.strip_prefix('[') {
        let (h, p) = a
            .split_once("]:")
            .ok_or_else(|| format!("{url}: bad IPv6 authority"))?;
        (h.to_string(), p)
    } else {
        let (h, p) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{url}: no port"))?;
        (h.to_string(), p)
    };
    let port: u16 = port.parse().map_err(|_| format!("{url}: bad port"))?;
    let (name, query) = path_query
        .split_once('?')
        .ok_or_else(|| format!("{url}: no query"))?;
    let (mut key, mut root) = (None, None);
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("key", v)) => key = Some(v.to_string()),
            Some(("root", v)) => root = Some(v.to_string()),
            _ => return Err(format!("{url}: unexpected query part {kv:?}")),
        }
    }
    let hex64 = |s: &Option<String>, what: &str| -> Result<String, String> {
        let s = s.clone().ok_or_else(|| format!("{url}: no {what}"))?;
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(s)
        } else {
            Err(format!("{url}: {what} is not 64 lowercase hex digits"))
        }
    };
    Ok((
        host,
        port,
        name.to_string(),
        hex64(&key, "key")?,
        hex64(&root, "root")?,
    ))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {s:?}"))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
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

// ---------------------------------------------------------------------------------------
// rgtp-pull
// ---------------------------------------------------------------------------------------

/// A `rgtp-pull` invocation (so it can be run again identically, e.g. to resume).
#[derive(Debug, Clone)]
pub struct PullCmd {
    pub args: Vec<String>,
    pub config_dir: PathBuf,
    /// Working directory (default: the test's).
    pub cwd: Option<PathBuf>,
}

impl PullCmd {
    /// `rgtp-pull ARGS...` with the test's puller config dir.
    pub fn new<I, S>(dir: &TestDir, args: I) -> PullCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        PullCmd {
            args: args
                .into_iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect(),
            config_dir: dir.puller_cfg(),
            cwd: None,
        }
    }

    /// `rgtp-pull URL -o OUTPUT --quiet`
    pub fn url(dir: &TestDir, url: &str, output: &Path) -> PullCmd {
        PullCmd::new(
            dir,
            [url, "-o", output.to_str().expect("UTF-8 path"), "--quiet"],
        )
    }

    /// `rgtp-pull HOST:PORT NAME -o OUTPUT --quiet`
    pub fn by_name(dir: &TestDir, host_port: &str, name: &str, output: &Path) -> PullCmd {
        PullCmd::new(
            dir,
            [
                host_port,
                name,
                "-o",
                output.to_str().expect("UTF-8 path"),
                "--quiet",
            ],
        )
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn current_dir(mut self, d: &Path) -> Self {
        self.cwd = Some(d.to_path_buf());
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = rgtp_command("rgtp-pull", &self.config_dir);
        cmd.args(&self.args);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd
    }

    pub fn spawn(&self, dir: &TestDir) -> Proc {
        Proc::spawn(self.command(), "rgtp-pull", dir.path(), false)
    }

    /// Runs to the end (bounded by [`PULL_DEADLINE`]).
    pub fn run(&self, dir: &TestDir) -> Finished {
        self.spawn(dir).finish(PULL_DEADLINE)
    }
}

/// Polls `cond` every 10 ms until it returns `Some` or `limit` passes.
pub fn poll_until<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A UDP relay on loopback between one puller and an exposer: a narrow link whose
/// exposer→puller rate is capped (excess is dropped by the kernel once the relay's
/// receive buffer is full, like a bottleneck queue), and which can be frozen (drops
/// everything, both ways). Pulling through it makes a transfer last long enough to be
/// interrupted at a chosen point, whatever the speed of loopback.
pub struct Relay {
    pub addr: SocketAddr,
    state: Arc<RelayState>,
    threads: Vec<thread::JoinHandle<()>>,
}

struct RelayState {
    /// Bytes per second exposer→puller; 0 = unlimited.
    rate: AtomicU64,
    frozen: AtomicBool,
    stop: AtomicBool,
    puller: Mutex<Option<SocketAddr>>,
}

impl Relay {
    /// Relays 127.0.0.1:(new port) ⇄ `exposer`, capping exposer→puller at `rate` B/s.
    pub fn start(exposer: SocketAddr, rate: u64) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind relay front"));
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind relay back"));
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let state = Arc::new(RelayState {
            rate: AtomicU64::new(rate),
            frozen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            puller: Mutex::new(None),
        });
        let up = {
            let (front, back, st) = (front.clone(), back.clone(), state.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !st.stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *st.puller.lock().unwrap() = Some(from);
                    if !st.frozen.load(Ordering::Relaxed) {
                        let _ = back.send_to(&buf[..n], exposer);
                    }
                }
            })
        };
        let down = {
            let st = state.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                // Token bucket: when the link is "busy until" `free_at`, wait for it.
                let mut free_at = Instant::now();
                while !st.stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = back.recv_from(&mut buf) else {
                        continue;
                    };
                    if from != exposer || st.frozen.load(Ordering::Relaxed) {
                        continue;
                    }
                    let rate = st.rate.load(Ordering::Relaxed);
                    if rate > 0 {
                        let now = Instant::now();
                        free_at =
                            free_at.max(now) + Duration::from_secs_f64(n as f64 / rate as f64);
                        let ahead = free_at.saturating_duration_since(now);
                        if ahead > Duration::from_millis(2) {
                            thread::sleep(ahead.min(Duration::from_millis(100)));
                        }
                        if st.frozen.load(Ordering::Relaxed) {
                            continue;
                        }
                    }
                    let to = *st.puller.lock().unwrap();
                    if let Some(to) = to {
                        let _ = front.send_to(&buf[..n], to);
                    }
                }
            })
        };
        Relay {
            addr,
            state,
            threads: vec![up, down],
        }
    }

    /// Drops everything from now on (both directions).
    pub fn freeze(&self) {
        self.state.frozen.store(true, Ordering::SeqCst);
    }
    pub fn thaw(&self) {
        self.state.frozen.store(false, Ordering::SeqCst);
    }
    /// New exposer→puller cap in bytes per second (0 = unlimited).
    pub fn set_rate(&self, rate: u64) {
        self.state.rate.store(rate, Ordering::SeqCst);
    }

    /// `url` with its authority replaced by the relay's address.
    pub fn url(&self, url: &str) -> String {
        let rest = url.strip_prefix("rgtp://").expect("rgtp:// URL");
        let path = &rest[rest.find('/').expect("URL path")..];
        format!("rgtp://{}{path}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits until the pull (through `relay`) has at least `at_least` verified chunks in its
/// sidecar but is not complete, then freezes the relay so nothing more arrives.
/// Returns the sidecar seen. The relay's rate must make the transfer last well over
/// the sidecar's ~1 s persist interval.
pub fn freeze_after_progress(
    relay: &Relay,
    puller: &mut Proc,
    output: &Path,
    at_least: u64,
) -> Sidecar {
    let state = state_path(output);
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        if let Some(s) = read_sidecar(&state).filter(|s| s.have.count() >= at_least) {
            relay.freeze();
            assert!(
                !s.have.is_full(),
                "{} completed before it could be interrupted; lower the relay rate",
                puller.what
            );
            return s;
        }
        if let Some(st) = puller.try_status() {
            panic!(
                "{} ended ({}) before {at_least} chunks were verified; stderr:\n{}",
                puller.what,
                describe_status(&st),
                puller.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not reach {at_least} verified chunks within 150 s (at {:?}); stderr:\n{}",
            state.display(),
            read_sidecar(&state).map(|s| s.have.count()),
            puller.stderr()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A UDP port on `ip` that nothing listens on (bound then released).
pub fn unused_udp_port(ip: IpAddr) -> u16 {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind probe socket");
    s.local_addr().unwrap().port()
}

/// True if this machine can use IPv6 loopback.
pub fn ipv6_loopback_available() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

/// A small tmpfs mounted on a directory (root only), unmounted on drop: a disk that
/// fills up. `None` when mounting is not permitted here.
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: &Path, bytes: u64) -> Option<SmallDisk> {
        fs::create_dir_all(path).expect("create mount point");
        let disk = SmallDisk {
            path: path.to_path_buf(),
        };
        disk.tmpfs(bytes, 0).then_some(disk)
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

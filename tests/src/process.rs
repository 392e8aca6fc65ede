//! Child processes owned by a test ([`Proc`]), and how they ended ([`Finished`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::pull::Report;
use crate::Json;

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

pub(crate) fn describe_status(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => format!("{s:?}"),
    }
}

static PROC_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A child process owned by a test: killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub what: String,
    pub(crate) child: Option<Child>,
    status: Option<ExitStatus>,
    stdout_path: Option<PathBuf>,
    stderr_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null, stderr (and stdout unless `pipe_stdout`)
    /// redirected to files in `dir`.
    pub fn spawn(cmd: Command, what: &str, dir: &Path, pipe_stdout: bool) -> Proc {
        Self::spawn_with(cmd, what, dir, pipe_stdout, false)
    }

    /// As [`Proc::spawn`], and with stdin piped when `pipe_stdin` ([`Proc::take_stdin`]).
    pub fn spawn_with(
        mut cmd: Command,
        what: &str,
        dir: &Path,
        pipe_stdout: bool,
        pipe_stdin: bool,
    ) -> Proc {
        let n = PROC_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{}-{n}", sanitize(what));
        let stderr_path = dir.join(format!("{base}.stderr"));
        let stderr = File::create(&stderr_path).expect("create stderr file");
        cmd.stdin(if pipe_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(stderr);
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

    /// The piped stdin (spawned with `pipe_stdin`); dropping it closes it (EOF).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    /// The piped stdout (spawned with `pipe_stdout`).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// The file stdout goes to (when not piped).
    pub fn stdout_path(&self) -> Option<&Path> {
        self.stdout_path.as_deref()
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

    /// What the process has written to stdout so far (when not piped).
    pub fn stdout(&self) -> String {
        self.stdout_file()
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

/// Waits (bounded by `limit`) for a child that no [`Proc`] owns (one whose stdio the
/// test wires itself). A hang is a test failure: the child is killed and reaped, and
/// the test fails naming `what`.
pub fn wait_child(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?} (killed)");
        }
        thread::sleep(Duration::from_millis(20));
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

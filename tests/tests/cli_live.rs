//! Live exposures with the real binaries on loopback (issue 19): a stream from
//! stdin (`rgtp-expose - --name NAME`) followed from the start (to stdout) and by a
//! late joiner (to a file), both byte-exact with the final root = b3sum of what was
//! written; a growing file (`--follow FILE --follow-idle SECS`) followed through
//! three appends and an idle end; a follower killed with SIGKILL and started again
//! resumes where its file ends; a forged checkpoint (an exposer rewriting bytes it
//! already served, tests/src/bin/rgtp-lying-live.rs) fails the pull with exit 16;
//! with `--window` a late joiner starts at the window, a follower that fell behind
//! it stops with exit 17, and the spool's disk stays near the window; a full disk
//! stops a follower with exit 4 and it resumes once space is freed.
//! No assertion on timing: waits are bounded only to turn a hang into a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rgtp_e2e::*;

/// A running live `rgtp-expose`, its stdout lines collected as they come.
struct LiveExposer {
    proc: Proc,
    lines: Arc<Mutex<Vec<String>>>,
    stdin: Option<std::process::ChildStdin>,
}

impl LiveExposer {
    fn start(dir: &TestDir, args: &[&str], stdin: bool) -> LiveExposer {
        let mut cmd = rgtp_command("rgtp-expose", &dir.exposer_cfg());
        cmd.env("RGTP_CACHE_DIR", dir.join("cache"));
        cmd.args(["--port", "0", "--bind", "127.0.0.1"]).args(args);
        let mut proc = Proc::spawn_with(cmd, "rgtp-expose", dir.path(), true, stdin);
        let stdin = proc.take_stdin();
        let out = proc.take_stdout().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        let mut e = LiveExposer { proc, lines, stdin };
        e.wait_line("listening on", EXPOSE_DEADLINE);
        e
    }

    fn wait_line(&mut self, prefix: &str, limit: Duration) -> String {
        let lines = self.lines.clone();
        let found = poll_until(limit, || {
            lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with(prefix))
                .cloned()
        });
        match found {
            Some(l) => l,
            None => panic!(
                "no line {prefix:?} from the exposer: {:?}; stderr {}",
                self.lines.lock().unwrap(),
                self.proc.stderr()
            ),
        }
    }

    /// The live URL (the first line).
    fn url(&mut self) -> String {
        self.wait_line("rgtp://", EXPOSE_DEADLINE)
    }

    /// After the end: the finished file's URL (with root=) and its root.
    fn ended(&mut self) -> (String, String) {
        self.wait_line("ended: ", PULL_DEADLINE);
        let root = self.wait_line("  root: ", PULL_DEADLINE)["  root: ".len()..].to_string();
        let lines = self.lines.lock().unwrap().clone();
        let url = lines
            .iter()
            .find(|l| l.starts_with("rgtp://") && l.contains("root="))
            .cloned()
            .expect("the finished file's URL");
        (url, root)
    }

    fn write(&mut self, b: &[u8]) {
        let s = self.stdin.as_mut().expect("stdin piped");
        s.write_all(b).expect("write to the exposer");
        s.flush().expect("flush");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }
}

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hex_root(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

fn follow(dir: &TestDir, url: &str, out: &str) -> Proc {
    PullCmd::new(dir, [url, "-o", out]).spawn(dir)
}

/// Waits (bounded) until `path` holds at least `n` bytes.
fn wait_len(path: &Path, n: u64, what: &str) {
    wait_until(what, PULL_DEADLINE, || {
        std::fs::metadata(path).is_ok_and(|m| m.len() >= n)
    });
}

#[test]
fn a_stdin_stream_reaches_a_follower_and_a_late_joiner_byte_exact() {
    let dir = TestDir::new("live-stdin");
    let mut ex = LiveExposer::start(&dir, &["-", "--name", "live.bin"], true);
    let url = ex.url();
    assert!(!url.contains("root="), "a live URL has no root: {url}");
    // A follower from the start, writing to stdout (its stdout is a file here).
    let a = follow(&dir, &url, "-");
    let a_out = a.stdout_path().expect("stdout to a file").to_path_buf();
    let mut written = Vec::new();
    for i in 0..40u64 {
        let rec = bytes(i, 4096);
        ex.write(&rec);
        written.extend_from_slice(&rec);
        std::thread::sleep(Duration::from_millis(20));
        if i == 20 {
            // A record (a partial chunk) reaches the follower before the stream
            // goes on: it is served as it is, not when its chunk fills.
            wait_len(
                &a_out,
                written.len() as u64,
                "the follower has every record",
            );
        }
    }
    // A late joiner, to a file: gets the past, then follows.
    let b_out = dir.join("b.out");
    let b = follow(&dir, &url, b_out.to_str().unwrap());
    wait_len(&b_out, written.len() as u64, "the late joiner caught up");
    let burst = bytes(99, 300_000);
    ex.write(&burst);
    written.extend_from_slice(&burst);
    ex.close_stdin();
    let (final_url, root) = ex.ended();
    assert_eq!(
        root,
        hex_root(&written),
        "the final root is b3sum of every byte"
    );
    let fa = a.finish(PULL_DEADLINE);
    fa.assert_success();
    assert!(
        std::fs::read(&a_out).unwrap() == written,
        "the follower's stdout is every byte, in order"
    );
    assert!(
        fa.stderr.contains(&root),
        "the follower reports the final root: {}",
        fa.stderr
    );
    b.finish(PULL_DEADLINE).assert_success();
    assert_eq!(
        std::fs::read(&b_out).unwrap(),
        written,
        "the late joiner's file"
    );
    assert_eq!(b3sum(&b_out), root);
    // After the end: an ordinary finished file, by its root.
    let c_out = dir.join("c.out");
    PullCmd::url(&dir, &final_url, &c_out)
        .run(&dir)
        .assert_success();
    assert_eq!(b3sum(&c_out), root);
}

#[test]
fn a_growing_file_is_followed_through_three_appends_and_an_idle_end() {
    let dir = TestDir::new("live-follow");
    let log = dir.join("app.log");
    let mut all = bytes(1, 10_000);
    std::fs::write(&log, &all).unwrap();
    let mut ex = LiveExposer::start(
        &dir,
        &["--follow", log.to_str().unwrap(), "--follow-idle", "2"],
        false,
    );
    let url = ex.url();
    assert!(url.contains("/app.log?"), "{url}");
    let out = dir.join("follower.log");
    let f = follow(&dir, &url, out.to_str().unwrap());
    wait_len(&out, all.len() as u64, "the follower has the file's start");
    for (i, n) in [(2u64, 5000usize), (3, 40_000), (4, 123)] {
        let more = bytes(i, n);
        let mut fh = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        fh.write_all(&more).unwrap();
        drop(fh);
        all.extend_from_slice(&more);
        wait_len(&out, all.len() as u64, "the follower has the append");
    }
    // No growth for 2 s: the exposure ends and becomes a finished file.
    let (_, root) = ex.ended();
    assert_eq!(root, hex_root(&all));
    let r = f.finish(PULL_DEADLINE);
    r.assert_success();
    assert_eq!(std::fs::read(&out).unwrap(), all);
    assert_eq!(b3sum(&out), b3sum(&log));
}

#[test]
fn a_killed_follower_resumes_where_its_file_ends() {
    let dir = TestDir::new("live-resume");
    let mut ex = LiveExposer::start(&dir, &["-", "--name", "wal"], true);
    let url = ex.url();
    let out = dir.join("wal.copy");
    let mut written = bytes(7, 100_000);
    ex.write(&written);
    let mut f = follow(&dir, &url, out.to_str().unwrap());
    wait_len(&out, written.len() as u64, "the first run has the start");
    f.kill9();
    let more = bytes(8, 200_000);
    ex.write(&more);
    written.extend_from_slice(&more);
    // Restarted: the same command goes on from the file's end.
    let again =
        PullCmd::new(&dir, [url.as_str(), "-o", out.to_str().unwrap(), "--json"]).spawn(&dir);
    // A file that is not the exposure's start is refused, and left as it was.
    let other = dir.join("other");
    let theirs = bytes(1234, 50_000);
    std::fs::write(&other, &theirs).unwrap();
    PullCmd::url(&dir, &url, &other)
        .run(&dir)
        .assert_clean_error(16, &["not the start of this live exposure"]);
    assert_eq!(std::fs::read(&other).unwrap(), theirs);
    let tail = bytes(9, 5000);
    std::thread::sleep(Duration::from_millis(200));
    ex.write(&tail);
    written.extend_from_slice(&tail);
    ex.close_stdin();
    let (_, root) = ex.ended();
    let r = again.finish(PULL_DEADLINE);
    r.assert_success();
    assert_eq!(std::fs::read(&out).unwrap(), written);
    assert_eq!(b3sum(&out), root);
    let j = r.json();
    assert!(j.bool("resumed"), "{}", j.0);
    assert!(
        j.u64("missing_bytes_at_start") <= (written.len() - 100_000) as u64,
        "the held bytes were not pulled again: {}",
        j.0
    );
}

#[test]
fn a_forged_checkpoint_fails_the_pull() {
    let dir = TestDir::new("live-forged");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rgtp-lying-live"));
    let flag = dir.join("rewrite-now");
    cmd.args(["--seconds", "120", "--rewrite-when", flag.to_str().unwrap()]);
    let mut liar = Proc::spawn_with(cmd, "rgtp-lying-live", dir.path(), true, false);
    let out = liar.take_stdout().expect("stdout");
    // Drained for the liar's life (a closed pipe would end it).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = rx.iter().find(|l| l.starts_with("rgtp://")).expect("a URL");
    let copy = dir.join("copy");
    let p = PullCmd::url(&dir, &url, &copy).spawn(&dir);
    // Once the follower holds the first 40 000 bytes, the liar rewrites some.
    wait_len(&copy, 40_000, "the follower has the first checkpoint");
    std::fs::write(&flag, b"").unwrap();
    let r = p.finish(PULL_DEADLINE);
    r.assert_clean_error(16, &["inconsistent checkpoint"]);
    // What was written before the lie stays, and nothing after it.
    assert_eq!(file_len(&copy), 40_000, "{}", r.describe());
    liar.kill9();
}

/// Bytes on disk of the unnamed files (the spool) `pid` holds open in `dir`.
fn unnamed_file_bytes(pid: u32, dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/PID/fd");
    fds.filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|t| t.starts_with(dir) && t.to_string_lossy().ends_with("(deleted)"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn a_window_bounds_the_exposer_and_late_joiners_start_at_it() {
    let dir = TestDir::new("live-window");
    // Less than a chunk is refused.
    let r = rgtp_command("rgtp-expose", &dir.exposer_cfg())
        .args(["-", "--name", "x", "--window", "1K", "--port", "0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run rgtp-expose");
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert!(String::from_utf8_lossy(&r.stderr).contains("--window"));

    let window = 256 * 1024;
    let mut ex = LiveExposer::start(&dir, &["-", "--name", "live.bin", "--window", "256K"], true);
    let url = ex.url();
    let a_out = dir.join("a.out");
    let a = follow(&dir, &url, a_out.to_str().unwrap());
    let c_out = dir.join("c.out");
    let mut written = bytes(40, 100_000);
    ex.write(&written);
    // A follower killed early: by the time it comes back, the window has moved on.
    let mut c = follow(&dir, &url, c_out.to_str().unwrap());
    wait_len(&c_out, 100_000, "the early follower has the start");
    c.kill9();
    let c_had = std::fs::read(&c_out).unwrap();
    let mut most_disk = 0;
    for i in 0..96u64 {
        let rec = bytes(100 + i, 64 * 1024);
        ex.write(&rec);
        written.extend_from_slice(&rec);
        std::thread::sleep(Duration::from_millis(5));
        most_disk = most_disk.max(unnamed_file_bytes(ex.proc.pid(), &dir.join("cache")));
    }
    wait_len(&a_out, written.len() as u64, "the follower keeps up");
    // About the window (and the checkpoints still served), not the 6 MiB streamed.
    assert!(
        most_disk > 0 && most_disk < 4 * window + 512 * 1024,
        "the spool held {most_disk} bytes on disk for a window of {window}"
    );
    PullCmd::url(&dir, &url, &c_out)
        .run(&dir)
        .assert_clean_error(17, &["fell behind", "window"]);
    assert!(
        std::fs::read(&c_out).unwrap() == c_had,
        "the file is left as it was"
    );
    // A late joiner starts at the window's start.
    let b_out = dir.join("b.out");
    let b = PullCmd::new(
        &dir,
        [url.as_str(), "-o", b_out.to_str().unwrap(), "--json"],
    )
    .spawn(&dir);
    wait_len(&b_out, 1, "the late joiner has bytes");
    let tail = bytes(999, 5000);
    std::thread::sleep(Duration::from_millis(100));
    ex.write(&tail);
    written.extend_from_slice(&tail);
    ex.close_stdin();
    let (_, root) = ex.ended();
    assert_eq!(
        root,
        hex_root(&written),
        "the final root is b3sum of every byte"
    );
    a.finish(PULL_DEADLINE).assert_success();
    assert!(
        std::fs::read(&a_out).unwrap() == written,
        "the follower has every byte"
    );
    let r = b.finish(PULL_DEADLINE);
    r.assert_success();
    let j = r.json();
    let at = j.u64("live_start") as usize;
    assert!(
        at > 0 && written.len() - at >= window as usize && written.len() - at < 2 * window as usize,
        "joined at {at} of {}: {}",
        written.len(),
        j.0
    );
    assert!(
        r.stderr.contains(&format!("joined at byte {at}")),
        "{}",
        r.stderr
    );
    assert!(
        std::fs::read(&b_out).unwrap() == written[at..],
        "the joiner has every byte from its start"
    );
    assert_eq!(j.0["root"].as_str(), Some(root.as_str()));
}

/// A full disk stops a live pull with exit 4 and a clear line, the bytes written
/// kept; after space is freed the same command goes on from the file's end and ends
/// byte-exact. Needs root (mounts a small tmpfs).
#[test]
fn a_full_disk_stops_a_follower_which_resumes_after_space_is_freed() {
    require_root!("it mounts a small tmpfs");
    let dir = TestDir::new("live-disk-full");
    let mut ex = LiveExposer::start(&dir, &["-", "--name", "big"], true);
    let url = ex.url();
    let written = bytes(77, 3 * 1024 * 1024 + 123);
    ex.write(&written);
    let disk = SmallDisk::mount(&dir.join("small"), 1024 * 1024);
    let out = disk.path.join("big.copy");
    PullCmd::url(&dir, &url, &out)
        .run(&dir)
        .assert_clean_error(4, &["disk is full"]);
    let kept = std::fs::read(&out).unwrap();
    assert!(
        !kept.is_empty() && written.starts_with(&kept),
        "the file holds {} bytes of the stream's start",
        kept.len()
    );
    disk.resize(16 * 1024 * 1024);
    // Resumed while the stream still runs, and followed to its end.
    let again =
        PullCmd::new(&dir, [url.as_str(), "-o", out.to_str().unwrap(), "--json"]).spawn(&dir);
    wait_len(&out, written.len() as u64, "the resumed follower caught up");
    ex.close_stdin();
    let (_, root) = ex.ended();
    let r = again.finish(PULL_DEADLINE);
    r.assert_success();
    assert!(r.json().bool("resumed"));
    assert!(
        std::fs::read(&out).unwrap() == written,
        "the resumed file is the stream"
    );
    assert_eq!(b3sum(&out), root);
    drop(disk);
}

//! rgtp-pull's front door, with the real binary: how long it waits for an exposer
//! that never answered (and that it keeps waiting for one that did), the progress
//! display before anything is known, `-o -` and `-o DIR/`, a non-rgtp URL, `--json`
//! on failure, and what `--help` tells.

use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rgtp_e2e::*;

/// A URL for an exposer at `port` on 127.0.0.1 (key and root pinned, so that no
/// known-exposers file is involved).
fn url_at(port: u16) -> String {
    format!(
        "rgtp://127.0.0.1:{port}/x.bin?key={}&root={}",
        "cd".repeat(32),
        "ef".repeat(32)
    )
}

/// The default --timeout (60 s): an exposer that never answered must be given up on
/// well before it.
const IDLE_DEFAULT: Duration = Duration::from_secs(60);

#[test]
fn an_exposer_that_never_answers_fails_in_seconds_with_exit_5() {
    let dir = TestDir::new("never-answers");
    // A closed port, and a socket that swallows everything and never answers.
    let closed = unused_udp_port(Ipv4Addr::LOCALHOST.into());
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for port in [closed, silent_port] {
        let out = dir.join(format!("u{port}"));
        let t = Instant::now();
        // Default timeouts: nothing passed on the command line.
        let done = PullCmd::url(&dir, &url_at(port), &out)
            .spawn(&dir)
            .finish(ERROR_DEADLINE);
        let took = t.elapsed();
        done.assert_clean_error(exit::TIMEOUT, &["unreachable", &port.to_string()]);
        assert!(
            took < IDLE_DEFAULT / 3,
            "gave up after {took:?}: a peer that never answered must not get the 60 s \
             idle timeout\n{}",
            done.describe()
        );
        assert!(!out.exists());
    }
    drop(silent);
}

/// The long patience stays for an exposer that answered once: a 4 s silence in the
/// middle of a pull (4 × --connect-timeout) is waited out, and the pull completes.
#[test]
fn an_exposer_that_answered_then_went_quiet_is_waited_for() {
    let dir = TestDir::new("went-quiet");
    let size = 16 * MIB;
    let (src, ex) = expose_random_file(&dir, "quiet.bin", size, "went-quiet");
    let relay = Relay::start(ex.addr(), 4_000_000);
    let out = dir.join("quiet.out");
    let mut p = PullCmd::url(&dir, &relay.url(&ex.single().url), &out)
        .arg("--connect-timeout")
        .arg("1")
        .spawn(&dir);
    freeze_after_progress(&relay, &mut p, &out, size.div_ceil(16 * 1024) / 5);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        p.is_running(),
        "the puller gave up on an exposer that had answered: {}",
        p.stderr()
    );
    relay.unthrottle();
    p.finish(PULL_DEADLINE).assert_success();
    assert_same_content(&src, &out, "pull across a 4 s silence");
}

/// Runs `cmd` with stderr on a pseudo-terminal (so rgtp-pull draws its progress) and
/// returns (exit code, everything written to the terminal).
fn run_on_a_tty(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the given ints; the name, termios and
    // winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave));
    let mut child = cmd.spawn().expect("spawn on a tty");
    drop(cmd); // our copy of the slave end: the master reads EOF/EIO once the child exits
    let reader = std::thread::spawn(move || {
        let mut f = File::from(master);
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last slave descriptor is closed (Linux).
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let status = wait_child(&mut child, limit, "rgtp-pull on a tty");
    (status.code(), reader.join().expect("tty reader"))
}

#[test]
fn progress_shows_no_percentage_before_the_size_is_known() {
    let dir = TestDir::new("progress");
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = silent.local_addr().unwrap().port();
    let cmd = PullCmd::url(&dir, &url_at(port), &dir.join("never"));
    // Not --quiet: the progress display is what is under test.
    let mut c = rgtp_command("rgtp-pull", &dir.puller_cfg());
    c.args(cmd.args.iter().filter(|a| *a != "--quiet"))
        .args(["--connect-timeout", "2"]);
    let (code, tty) = run_on_a_tty(c, ERROR_DEADLINE);
    assert_eq!(code, Some(exit::TIMEOUT), "{tty}");
    assert!(
        tty.contains("waiting for 127.0.0.1:"),
        "the display should say what it waits for: {tty:?}"
    );
    assert!(
        !tty.contains('%'),
        "a percentage was shown before the size was known: {tty:?}"
    );
    drop(silent);
}

/// Runs rgtp-pull ARGS with stdout to `stdout` (bytes, not text) and stderr to a file;
/// returns (exit code, stderr).
fn pull_to(dir: &TestDir, args: &[&str], stdout: &Path, env: &[(&str, &Path)]) -> (i32, String) {
    let mut cmd = PullCmd::new(dir, args).command();
    let err = dir.join("stdout-pull.stderr");
    cmd.stdin(Stdio::null())
        .stdout(File::create(stdout).unwrap())
        .stderr(File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn rgtp-pull");
    let status = wait_child(&mut child, PULL_DEADLINE, &format!("rgtp-pull {args:?}"));
    (
        status.code().unwrap_or(-1),
        fs::read_to_string(err).unwrap_or_default(),
    )
}

#[test]
fn output_dash_writes_the_file_to_stdout_and_leaves_nothing_behind() {
    let dir = TestDir::new("stdout");
    let src = dir.join("to-stdout.bin");
    write_random_file(&src, 5 * MIB + 123, "stdout");
    let empty = dir.join("empty.bin");
    fs::write(&empty, b"").unwrap();
    let ex = ExposeOpts::new(&dir, &[&src, &empty]).start(&dir);
    let tmp = dir.join("tmp");
    fs::create_dir(&tmp).unwrap();
    for (name, file) in [("to-stdout.bin", &src), ("empty.bin", &empty)] {
        let got = dir.join(format!("{name}.stdout"));
        let url = ex.file(name).url.clone();
        let (code, err) = pull_to(
            &dir,
            &[&url, "-o", "-", "--quiet"],
            &got,
            &[("TMPDIR", &tmp)],
        );
        assert_eq!(code, 0, "{err}");
        assert_same_content(file, &got, "-o - to stdout");
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            0,
            "the temporary copy must be gone"
        );
    }
    // Nothing written to the working directory either.
    assert!(!dir.join("to-stdout.bin.rgtp-part").exists());

    // --json also writes to stdout: refused as bad usage.
    PullCmd::new(
        &dir,
        [ex.file("empty.bin").url.as_str(), "-o", "-", "--json"],
    )
    .run(&dir)
    .assert_clean_error(exit::USAGE, &["stdout"]);
}

#[test]
fn output_directory_receives_the_exposed_name() {
    let dir = TestDir::new("out-dir");
    let (src, ex) = expose_random_file(&dir, "in-dir.bin", 3 * MIB, "out-dir");
    let url = ex.single().url.clone();
    let into = dir.join("into");
    fs::create_dir(&into).unwrap();

    let with_slash = format!("{}/", into.display());
    PullCmd::new(&dir, [url.as_str(), "-o", &with_slash, "--quiet"])
        .run(&dir)
        .assert_success();
    assert_same_content(&src, &into.join("in-dir.bin"), "-o DIR/");

    // The name came from the exposer: an existing DIR/NAME is not replaced...
    fs::write(into.join("in-dir.bin"), b"mine\n").unwrap();
    let plain = into.display().to_string();
    let cmd = PullCmd::new(&dir, [url.as_str(), "-o", &plain, "--quiet"]);
    cmd.run(&dir)
        .assert_clean_error(exit::EXISTS, &["in-dir.bin", "--force"]);
    assert_eq!(fs::read(into.join("in-dir.bin")).unwrap(), b"mine\n");
    // ... unless --force (and a directory without the slash counts too).
    cmd.arg("--force").run(&dir).assert_success();
    assert_same_content(&src, &into.join("in-dir.bin"), "-o DIR --force");

    // A path ending in / that is no directory: an output error naming it.
    let missing = format!("{}/", dir.join("no-such-dir").display());
    PullCmd::new(&dir, [url.as_str(), "-o", &missing, "--quiet"])
        .run(&dir)
        .assert_clean_error(exit::FILE, &["no-such-dir", "no such directory"]);
    assert!(!dir.join("no-such-dir").exists());
}

#[test]
fn a_url_of_another_scheme_is_refused_in_one_line() {
    let dir = TestDir::new("http-url");
    for url in ["http://127.0.0.1:4433/file", "HTTPS://example.com/x"] {
        PullCmd::new(&dir, [url])
            .run(&dir)
            .assert_clean_error(exit::USAGE, &["URL must start with rgtp://"]);
    }
}

#[test]
fn json_reports_failures_with_the_error_and_exit_code() {
    let dir = TestDir::new("json-fail");
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = silent.local_addr().unwrap().port();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["http://h/x".into(), "--json".into()],
            exit::USAGE,
            "rgtp://",
        ),
        (
            vec![
                url_at(port),
                "-o".into(),
                dir.join("never").display().to_string(),
                "--json".into(),
                "--connect-timeout".into(),
                "1".into(),
            ],
            exit::TIMEOUT,
            "unreachable",
        ),
        // clap's own usage errors too.
        (
            vec!["--json".into(), "--no-such-flag".into(), "x".into()],
            exit::USAGE,
            "argument",
        ),
    ];
    for (args, code, mention) in cases {
        let done = PullCmd::new(&dir, &args).spawn(&dir).finish(ERROR_DEADLINE);
        assert_eq!(done.code(), Some(code), "{}", done.describe());
        let r = done.json();
        assert_eq!(r.0["exit_code"], code, "{}", done.describe());
        let err = r.0["error"].as_str().unwrap_or_else(|| {
            panic!("no \"error\" string: {}", done.describe());
        });
        assert!(
            err.to_lowercase().contains(mention),
            "error {err:?} should mention {mention:?}"
        );
    }
    drop(silent);
}

#[test]
fn json_on_success_has_exit_code_0() {
    let dir = TestDir::new("json-ok");
    let (_src, ex) = expose_random_file(&dir, "j.bin", MIB, "json-ok");
    let out = dir.join("j.out");
    let done = PullCmd::url(&dir, &ex.single().url, &out)
        .arg("--json")
        .run(&dir);
    done.assert_success();
    let r = done.json();
    r.assert_fields();
    assert_eq!(r.0["exit_code"], 0);
    assert_eq!(r.u64("bytes"), MIB);
}

#[test]
fn help_shows_the_default_port_timeouts_and_json_units() {
    let dir = TestDir::new("help");
    let done = PullCmd::new(&dir, ["--help"]).run(&dir);
    done.assert_success();
    let help = &done.stdout;
    for want in [
        "PORT defaults to 443",
        "--connect-timeout",
        "[default: 10]",
        "[default: 60]",
        "bytes/s",
        "exit_code",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }
}

#[test]
fn completions_and_man_page_come_from_the_binaries() {
    let dir = TestDir::new("completions");
    for bin in ["rgtp-pull", "rgtp-expose"] {
        let mut c = rgtp_command(bin, &dir.puller_cfg());
        c.args(["--completions", "bash"]);
        let done = Proc::spawn(c, bin, dir.path(), false).finish(ERROR_DEADLINE);
        done.assert_success();
        assert!(
            done.stdout.contains("complete -F ") && done.stdout.contains(&format!(" {bin}\n")),
            "{}",
            done.describe()
        );
        let mut c = rgtp_command(bin, &dir.puller_cfg());
        c.arg("--man");
        let done = Proc::spawn(c, bin, dir.path(), false).finish(ERROR_DEADLINE);
        done.assert_success();
        assert!(
            done.stdout.starts_with(".ie") || done.stdout.contains(&format!(".TH {bin}")),
            "{}",
            done.describe()
        );
        assert!(done.stdout.contains("Exit codes"), "{}", done.describe());
        // Not both at once, and not with a pull.
        let mut c = rgtp_command(bin, &dir.puller_cfg());
        c.args(["--man", "--completions", "bash"]);
        let done = Proc::spawn(c, bin, dir.path(), false).finish(ERROR_DEADLINE);
        assert_eq!(done.code(), Some(exit::USAGE), "{}", done.describe());
    }
}

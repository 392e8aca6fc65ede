//! rgtp-expose's front door, with the real binary: the access log on stderr (one
//! "opened" line per handshake, one "served" line with the bytes when a puller goes
//! quiet), plain text when stderr is not a terminal, and a config directory that
//! cannot be created.

use std::fs;
use std::time::Duration;

use rgtp_e2e::*;

/// The `key=value` field `key` of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn access_log_names_who_pulled_what_and_how_many_bytes() {
    let dir = TestDir::new("access-log");
    let size = 3 * MIB + 5;
    let (src, mut ex) = expose_random_file(&dir, "logged.bin", size, "access-log");
    let out = dir.join("logged.out");
    PullCmd::url(&dir, &ex.single().url, &out)
        .run(&dir)
        .assert_success();
    assert_same_content(&src, &out, "pull");

    // "served" comes once the puller has asked for nothing for 5 s.
    let log = poll_until(Duration::from_secs(30), || {
        let e = ex.proc.stderr();
        e.contains(" served ").then_some(e)
    })
    .unwrap_or_else(|| panic!("no \"served\" line: {}", ex.proc.stderr()));
    ex.assert_running();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log that is not a terminal: {log:?}"
    );
    let opened: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rgtp::access") && l.contains(" opened "))
        .collect();
    assert!(!opened.is_empty(), "no \"opened\" line: {log}");
    for l in &opened {
        assert!(l.contains(" INFO "), "{l}");
        assert!(
            field(l, "peer").is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{l}"
        );
        assert_eq!(field(l, "name"), Some("\"logged.bin\""), "{l}");
        assert_eq!(field(l, "size"), Some(size.to_string().as_str()), "{l}");
    }
    let served: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rgtp::access") && l.contains(" served "))
        .collect();
    assert_eq!(served.len(), 1, "one pull, one quiet source: {log}");
    assert_eq!(field(served[0], "peer"), Some("127.0.0.1"), "{log}");
    let bytes: u64 = field(served[0], "bytes")
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no bytes= in {}", served[0]));
    // Everything was sent at least once (sealed: 16 bytes more per 16 KiB chunk), and
    // a loopback pull re-requests little.
    assert!(
        bytes >= size && bytes < 2 * size,
        "served {bytes} bytes for a {size}-byte file: {}",
        served[0]
    );
}

#[test]
fn access_log_on_stop_reports_what_was_served() {
    let dir = TestDir::new("access-stop");
    let (_src, ex) = expose_random_file(&dir, "s.bin", MIB, "access-stop");
    PullCmd::url(&dir, &ex.single().url, &dir.join("s.out"))
        .run(&dir)
        .assert_success();
    // Stopped before the 5 s of quiet: the line comes at exit.
    let done = ex.stop_with(libc::SIGTERM);
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert!(
        done.stderr
            .lines()
            .any(|l| l.contains(" served ") && field(l, "bytes").is_some_and(|b| b != "0")),
        "{}",
        done.describe()
    );
}

#[test]
fn a_config_dir_that_cannot_be_created_is_reported_as_such() {
    let dir = TestDir::new("no-config-dir");
    let src = dir.join("c.bin");
    write_random_file(&src, 1000, "no-config-dir");
    // A file where the config directory's parent should be: mkdir cannot succeed,
    // even as root.
    let blocker = dir.join("blocker");
    fs::write(&blocker, b"a file\n").unwrap();
    let cfg = blocker.join("rgtp");
    let mut cmd = ExposeOpts::new(&dir, &[&src]).command();
    cmd.env("RGTP_CONFIG_DIR", &cfg);
    let done = Proc::spawn(cmd, "rgtp-expose", dir.path(), false).finish(ERROR_DEADLINE);
    done.assert_clean_error(exit::KEY_CREATE, &["cannot create", "blocker/rgtp"]);
    assert!(!done.stderr.contains("malformed"), "{}", done.describe());
}

/// `--max-rate` takes bits per second strictly (a bad value is a usage error, exit
/// 2), and a capped exposer still serves two pulls at once, byte-exact. (That the
/// cap holds, and is shared fairly, is checked in the simulator, in virtual time:
/// core/tests/sim_rate_cap.rs.)
#[test]
fn max_rate_is_parsed_strictly_and_a_capped_exposer_serves_exact_copies() {
    let dir = TestDir::new("max-rate");
    let src = dir.join("capped.bin");
    write_random_file(&src, 6 * MIB, "max-rate");
    let capped = |rate: &str| {
        let mut o = ExposeOpts::new(&dir, &[&src]);
        o.extra_args = vec![format!("--max-rate={rate}")];
        o
    };
    for bad in ["0", "fast", "1.5", "-1M", "2X", "1e9"] {
        let done = capped(bad).run_expect_exit(&dir);
        assert_eq!(
            done.code(),
            Some(exit::USAGE),
            "--max-rate {bad}: {}",
            done.describe()
        );
        assert!(done.stderr.contains("--max-rate"), "{bad}: {}", done.stderr);
    }
    let ex = capped("400M").start(&dir);
    let outs = [dir.join("a.out"), dir.join("b.out")];
    let pulls: Vec<Proc> = outs
        .iter()
        .map(|o| PullCmd::url(&dir, &ex.single().url, o).spawn(&dir))
        .collect();
    for (p, o) in pulls.into_iter().zip(&outs) {
        p.finish(PULL_DEADLINE).assert_success();
        assert_same_content(&src, o, "pull from a capped exposer");
    }
}

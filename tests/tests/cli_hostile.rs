//! Faults found by issue 15's adversarial pass, against the real `rgtp-expose` /
//! `rgtp-pull` on loopback. Each test fails on the code before its fix.

use std::fs;
use std::time::{Duration, Instant};

use rgtp_e2e::*;

/// A 65,536-byte name panicked (exit 101) and 65,535 bytes ran into "unreachable"
/// after the timeout: local input gets one line and exit 2 at once.
#[test]
fn an_overlong_name_is_a_usage_error() {
    let dir = TestDir::new("long-name");
    for len in [1025usize, 65_535, 65_536] {
        let name = "n".repeat(len);
        let t = Instant::now();
        PullCmd::by_name(&dir, "127.0.0.1:9", &name, &dir.join("never"))
            .arg("--timeout")
            .arg("30")
            .spawn(&dir)
            .finish(ERROR_DEADLINE)
            .assert_clean_error(exit::USAGE, &["name"]);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{len}: {:?}",
            t.elapsed()
        );
        assert!(!dir.join("never").exists());
    }
}

/// A pull by name without -o wrote ./NAME over an existing file (a `.bashrc`, say):
/// it now refuses (exit 14) unless --force.
#[test]
fn pull_by_name_does_not_replace_an_existing_file() {
    let dir = TestDir::new("no-clobber");
    let (src, ex) = expose_random_file(&dir, "data.bin", 2 * MIB, "no clobber");
    let here = dir.join("cwd");
    fs::create_dir_all(&here).unwrap();
    let mine = here.join("data.bin");
    fs::write(&mine, b"mine\n").unwrap();
    let host_port = ex.single().host_port();
    let cmd = PullCmd::new(&dir, [host_port.as_str(), "data.bin", "--quiet"]).current_dir(&here);
    cmd.run(&dir)
        .assert_clean_error(exit::EXISTS, &["data.bin", "--force"]);
    assert_eq!(
        fs::read(&mine).unwrap(),
        b"mine\n",
        "replaced without --force"
    );
    cmd.clone().arg("--force").run(&dir).assert_success();
    assert_same_content(&src, &mine, "pull with --force");
}

/// A disk full in the first second said "progress saved" with nothing saved. Space is
/// now reserved first (ENOSPC before any data) and the message says what was saved.
#[test]
fn disk_full_at_start_says_nothing_was_saved() {
    require_root!("it mounts a small tmpfs");
    let dir = TestDir::new("full-at-start");
    let (_src, ex) = expose_random_file(&dir, "big.bin", 12 * MIB, "full at start");
    let disk = SmallDisk::mount(&dir.join("small"), 6 * MIB);
    let out = disk.path.join("big.out");
    let done = PullCmd::url(&dir, &ex.single().url, &out).run(&dir);
    done.assert_clean_error(exit::DISK_FULL, &["nothing saved"]);
    assert!(
        !done.stderr.contains("progress saved"),
        "{}",
        done.describe()
    );
    let saved = read_sidecar(&state_path(&out)).map_or(0, |s| verified_bytes(&s));
    assert_eq!(saved, 0);
    drop(disk);
}

/// With --no-seal-ahead, a file truncated while exposed left pullers waiting for the
/// idle timeout and then "unreachable" (exit 5). The exposer withdraws it, and the
/// puller says so at once (exit 13).
#[test]
fn a_file_truncated_while_exposed_is_reported_gone() {
    let dir = TestDir::new("truncated");
    let src = dir.join("shrinks.bin");
    write_random_file(&src, 4 * MIB, "truncated");
    let mut opts = ExposeOpts::new(&dir, &[&src]);
    opts.extra_args.push("--no-seal-ahead".into());
    let ex = opts.start(&dir);
    fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(0)
        .unwrap();
    let t = Instant::now();
    PullCmd::url(&dir, &ex.single().url, &dir.join("out.bin"))
        .arg("--timeout")
        .arg("30")
        .spawn(&dir)
        .finish(ERROR_DEADLINE)
        .assert_clean_error(exit::GONE, &["withdrew"]);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
}

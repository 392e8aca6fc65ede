//! rgtp-run's front door, with the real binary: --version, --ports and the other
//! settings checked before COMMAND runs, --strict failing closed when the shim cannot
//! be loaded, --show-key, and a wrong RGTP_PINS key refusing the connection (never
//! falling back to TCP) with a line that says so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rgtp_e2e::*;

fn rgtp_run(t: &TestDir) -> Command {
    let mut c = Command::new(bin_dir().join("rgtp-run"));
    c.env("RGTP_CONFIG_DIR", t.join("cfg"))
        .env_remove("RGTP_SHIM")
        .env_remove("RGTP_PORTS")
        .env_remove("RGTP_PINS")
        .env_remove("LD_PRELOAD");
    c
}

fn run(t: &TestDir, c: Command, what: &str) -> Finished {
    Proc::spawn(c, what, t.path(), false).finish(Duration::from_secs(120))
}

#[test]
fn version_and_help() {
    let t = TestDir::new("run-version");
    let mut c = rgtp_run(&t);
    c.arg("--version");
    let done = run(&t, c, "rgtp-run --version");
    done.assert_success();
    assert_eq!(
        done.stdout.trim(),
        format!("rgtp-run {}", env!("CARGO_PKG_VERSION"))
    );
    let mut c = rgtp_run(&t);
    c.arg("--help");
    let done = run(&t, c, "rgtp-run --help");
    done.assert_success();
    for want in ["--show-key", "--version", "--strict"] {
        assert!(done.stdout.contains(want), "{}", done.describe());
    }
}

/// `rgtp-run ARGS -- touch MARKER`: the marker shows whether COMMAND ran.
fn touching(t: &TestDir, args: &[&str], marker: &Path) -> Command {
    let mut c = rgtp_run(t);
    c.args(args).arg("--").arg("touch").arg(marker);
    c
}

#[test]
fn bad_settings_are_refused_before_the_command_runs() {
    let t = TestDir::new("run-bad-ports");
    let marker = t.join("ran");
    for (args, mention) in [
        (vec!["--ports", "80-70"], "RGTP_PORTS"),
        (vec!["--ports", "http"], "RGTP_PORTS"),
        (vec!["--ports", ""], "RGTP_PORTS"),
        (vec!["--ports", "0"], "RGTP_PORTS"),
        (vec!["--ports", "70000"], "RGTP_PORTS"),
        (
            vec!["--ports", "8080", "--linger-ms", "soon"],
            "RGTP_LINGER_MS",
        ),
        (vec!["--ports", "8080", "--log", "loud"], "RGTP_LOG"),
    ] {
        run(&t, touching(&t, &args, &marker), "rgtp-run")
            .assert_clean_error(exit::USAGE, &[mention]);
        assert!(!marker.exists(), "{args:?}: COMMAND ran");
    }
    // A bad setting already in the environment too.
    let mut c = touching(&t, &["--ports", "8080"], &marker);
    c.env("RGTP_PINS", "127.0.0.1:8080=nothex");
    run(&t, c, "rgtp-run").assert_clean_error(exit::USAGE, &["RGTP_PINS"]);
    assert!(!marker.exists());
    // A good one runs it.
    run(
        &t,
        touching(&t, &["--ports", "8080,9000-9010"], &marker),
        "rgtp-run",
    )
    .assert_success();
    assert!(marker.exists());
}

#[test]
fn a_shim_that_does_not_load_is_refused_not_ignored() {
    let t = TestDir::new("run-no-shim");
    let marker = t.join("ran");
    let not_a_library = t.join("not-a-library.so");
    fs::write(&not_a_library, b"this is not an ELF file\n").unwrap();
    let missing = t.join("missing.so");
    for shim in [&missing, &not_a_library] {
        for strict in [true, false] {
            let mut args = vec!["--ports", "8080"];
            if strict {
                args.push("--strict");
            }
            let mut c = touching(&t, &args, &marker);
            c.env("RGTP_SHIM", shim);
            let done = run(&t, c, "rgtp-run");
            done.assert_clean_error(127, &["shim", "refusing", "touch"]);
            if strict {
                assert!(done.stderr.contains("--strict"), "{}", done.describe());
            }
            assert!(
                !marker.exists(),
                "COMMAND ran without the shim (RGTP_SHIM={}, strict {strict})",
                shim.display()
            );
        }
    }
    // The real one loads.
    let mut c = touching(&t, &["--ports", "8080", "--strict"], &marker);
    c.env("RGTP_SHIM", shim());
    run(&t, c, "rgtp-run").assert_success();
    assert!(marker.exists());
}

fn show_key(t: &TestDir, cfg: &Path) -> Finished {
    let mut c = rgtp_run(t);
    c.env("RGTP_CONFIG_DIR", cfg).arg("--show-key");
    run(t, c, "rgtp-run --show-key")
}

#[test]
fn show_key_prints_the_shim_server_key() {
    let t = TestDir::new("run-show-key");
    let cfg = t.join("cfg");
    let first = show_key(&t, &cfg);
    first.assert_success();
    let key = first.stdout.trim().to_string();
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        first.describe()
    );
    assert!(cfg.join("shim.key").is_file());
    assert!(first.stderr.contains("RGTP_PINS"), "{}", first.describe());
    let again = show_key(&t, &cfg);
    again.assert_success();
    assert_eq!(again.stdout.trim(), key, "the key must be stable");

    // A malformed key: exit 11, left alone. No directory possible: exit 15.
    fs::write(cfg.join("shim.key"), "not a key\n").unwrap();
    show_key(&t, &cfg).assert_clean_error(exit::BAD_KEY_FILE, &["shim.key"]);
    assert_eq!(
        fs::read_to_string(cfg.join("shim.key")).unwrap(),
        "not a key\n"
    );
    let blocker = t.join("blocker");
    fs::write(&blocker, b"a file\n").unwrap();
    show_key(&t, &blocker.join("cfg")).assert_clean_error(exit::KEY_CREATE, &["cannot create"]);
}

/// python3's http.server under `rgtp-run`, serving `dir` on 127.0.0.1:`port`.
fn http_server(t: &TestDir, dir: &Path, port: u16, strict: bool) -> Proc {
    need("python3");
    let mut c = rgtp_run(t);
    c.args(["--ports", &port.to_string()]);
    if strict {
        c.arg("--strict");
    }
    c.args(["--", "python3", "-m", "http.server", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--directory"])
        .arg(dir);
    let p = Proc::spawn(c, "python3 http.server", t.path(), false);
    // Up once its RGTP listener's UDP socket is bound.
    wait_until(
        &format!("the server to bind UDP {port}"),
        Duration::from_secs(30),
        || udp_bound(port),
    );
    p
}

/// curl under `rgtp-run` with RGTP_PINS.
fn curl(t: &TestDir, port: u16, strict: bool, pin: &str, out: &PathBuf) -> Finished {
    need("curl");
    let mut c = rgtp_run(t);
    c.env("RGTP_PINS", format!("127.0.0.1:{port}={pin}"))
        .args(["--ports", &port.to_string()]);
    if strict {
        c.arg("--strict");
    }
    c.args(["--", "curl", "-sS", "--max-time", "30", "-o"])
        .arg(out)
        .arg(format!("http://127.0.0.1:{port}/f.bin"));
    run(t, c, "curl")
}

#[test]
fn a_wrong_pin_refuses_the_connection_and_says_why() {
    let t = TestDir::new("run-pins");
    let www = t.join("www");
    fs::create_dir_all(&www).unwrap();
    write_random_file(&www.join("f.bin"), 300_000, "pins");
    let key = show_key(&t, &t.join("cfg")).stdout.trim().to_string();
    let wrong = "ab".repeat(32);
    assert_ne!(key, wrong);
    for strict in [true, false] {
        let port = free_port();
        let _server = http_server(&t, &www, port, strict);
        let out = t.join(format!("got-{strict}"));
        let done = curl(&t, port, strict, &wrong, &out);
        // curl's "Failed to connect" (7): refused, as a closed TCP port would be.
        assert_eq!(done.code(), Some(7), "strict {strict}: {}", done.describe());
        assert!(
            done.stderr.contains("RGTP_PINS") && done.stderr.contains("refused"),
            "strict {strict}: {}",
            done.describe()
        );
        assert!(!out.exists(), "strict {strict}: got the file anyway");
        // The right key: served.
        curl(&t, port, strict, &key, &out).assert_success();
        assert_same_content(&www.join("f.bin"), &out, "pinned pull");
    }
}

//! The shim's server key (issue 15): a corrupt `shim.key` made a shim-run server
//! listen under a key of its own, new on every run, with only a log line (off by
//! default), so clients that pinned it broke without a word. It now stops with one
//! line and exit 11, and leaves the file alone; a key others can read gets a warning.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use rgtp_e2e::{free_port, need, shim, Finished, Proc, TestDir};

/// `python3` that binds and listens on 127.0.0.1:`port` under the shim, then exits 0.
fn listener(t: &TestDir, port: u16) -> Command {
    need("python3");
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(format!(
            "import socket; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); \
             print('listening')"
        ))
        .env("LD_PRELOAD", shim())
        .env("RGTP_PORTS", port.to_string())
        .env("RGTP_FALLBACK", "0")
        .env("RGTP_CONFIG_DIR", t.join("cfg"))
        .env("RGTP_LINGER_MS", "0");
    c
}

/// Runs a [`listener`] on a free port to its end (bounded).
fn run_listener(t: &TestDir) -> Finished {
    Proc::spawn(
        listener(t, free_port()),
        "python3 listener",
        t.path(),
        false,
    )
    .finish(Duration::from_secs(60))
}

#[test]
fn a_corrupt_shim_key_stops_the_server_loudly() {
    let t = TestDir::new("shim-key");
    fs::create_dir_all(t.join("cfg")).unwrap();
    let key = t.join("cfg").join("shim.key");
    fs::write(&key, "not a key\n").unwrap();
    let done = run_listener(&t);
    assert_eq!(done.code(), Some(11), "{}", done.describe());
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].contains("shim.key"),
        "{}",
        done.describe()
    );
    assert!(!done.stdout.contains("listening"), "{}", done.describe());
    assert_eq!(fs::read_to_string(&key).unwrap(), "not a key\n");

    // A good key that others can read: served, with a one-line warning.
    fs::remove_file(&key).unwrap();
    let first = run_listener(&t);
    assert!(first.status.success(), "{}", first.describe());
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let done = run_listener(&t);
    assert!(done.status.success(), "{}", done.describe());
    assert!(done.stderr.contains("chmod 600"), "{}", done.describe());
}

//! Programs run under the LD_PRELOAD shim: the settings tests give it, and its log.

use std::ffi::OsString;
use std::fs;
use std::process::Command;

use crate::programs::shim;
use crate::tempdir::TestDir;

/// The shim's settings as the tests give them, LD_PRELOAD aside: RGTP on `port` only,
/// strict (`RGTP_FALLBACK=0`: no TCP at all) or with fallback, the test's config dir
/// (`cfg`), a debug log in the test's directory ([`shim_log`]) and a 20 s linger.
pub fn shim_settings(t: &TestDir, port: u16, strict: bool) -> Vec<(&'static str, OsString)> {
    vec![
        ("RGTP_PORTS", port.to_string().into()),
        ("RGTP_FALLBACK", if strict { "0" } else { "1" }.into()),
        ("RGTP_CONFIG_DIR", t.join("cfg").into()),
        ("RGTP_LOG", "debug".into()),
        ("RGTP_LOG_FILE", t.join("shim.log").into()),
        ("RGTP_LINGER_MS", "20000".into()),
    ]
}

/// `program` with the shim preloaded and [`shim_settings`].
pub fn shimmed(t: &TestDir, program: &str, port: u16, strict: bool) -> Command {
    let mut c = Command::new(program);
    c.env("LD_PRELOAD", shim())
        .envs(shim_settings(t, port, strict));
    c
}

/// What the shim logged so far ([`shim_settings`]), empty if nothing.
pub fn shim_log(t: &TestDir) -> String {
    fs::read_to_string(t.join("shim.log")).unwrap_or_default()
}

/// The last `n` lines of `text`, for failure messages.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

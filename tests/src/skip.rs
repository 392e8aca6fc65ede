//! Tests that cannot run here say so: none passes silently.
//!
//! A test that needs root (network namespaces, veth, tc, tmpfs mounts; CI runs as root)
//! fails when not run as root, unless `RGTP_SKIP_ROOT_TESTS=1` asks to skip such tests.
//! A skipped test is reported out loud: a `SKIPPED: TEST: WHY` line is written straight
//! to stderr (past the test harness's capture, so it shows in the output of a passing
//! run) and, when `$RGTP_SKIP_LOG` names a file, appended to it; scripts/test.sh
//! prints how many tests were skipped, and which, at the end of the run.

use std::fs::OpenOptions;
use std::io::Write;

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Reports the running test as skipped because of `why` (see the module's text). The
/// caller then returns.
pub fn report_skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let line = format!("SKIPPED: {test}: {why}\n");
    // Not eprintln!: libtest captures that, and a passing test's output is not shown.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("RGTP_SKIP_LOG") {
        // One write of the whole line: tests run in parallel, and O_APPEND keeps the
        // lines whole.
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot append to RGTP_SKIP_LOG: {e}"));
        f.write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("cannot append to RGTP_SKIP_LOG: {e}"));
    }
}

/// `true` when the test may go on: it runs as root. Not root: `false` after reporting
/// the skip when `RGTP_SKIP_ROOT_TESTS=1`, else the test fails, saying why it needs
/// root. Use [`require_root!`](crate::require_root), which returns from the test.
pub fn root_or_skip(why: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("RGTP_SKIP_ROOT_TESTS").is_some_and(|v| v == "1") {
        report_skip(&format!("needs root ({why})"));
        return false;
    }
    panic!(
        "this test needs root ({why}); CI runs the tests as root. Set \
         RGTP_SKIP_ROOT_TESTS=1 to skip such tests (each is then reported as SKIPPED)."
    );
}

/// Returns from the test unless it runs as root: fails it, or skips it out loud with
/// `RGTP_SKIP_ROOT_TESTS=1` (see [`root_or_skip`](crate::skip::root_or_skip)).
#[macro_export]
macro_rules! require_root {
    ($why:expr) => {
        if !$crate::skip::root_or_skip($why) {
            return;
        }
    };
}

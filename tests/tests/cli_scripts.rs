//! The user-facing scripts: `scripts/install.sh` builds where cargo is told to
//! (`CARGO_TARGET_DIR`, relative or absolute) and installs from there.
//!
//! These run a release build of rgtp-cli and rgtp-shim into this test run's own target
//! directory: a no-op under scripts/test.sh, which built them just before.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rgtp_e2e::*;

/// A release build from scratch on a slow machine (a hang guard, not a timing check).
const BUILD_DEADLINE: Duration = Duration::from_secs(3600);

/// The target directory this test binary was built into (TARGET/PROFILE/deps/EXE):
/// `$CARGO_TARGET_DIR` when it was set, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in TARGET/PROFILE/deps")
        .to_path_buf()
}

fn installed() -> [(&'static str, &'static str); 4] {
    [
        ("bin/rgtp-expose", "rgtp-expose"),
        ("bin/rgtp-pull", "rgtp-pull"),
        ("bin/rgtp-run", "rgtp-run"),
        ("lib/librgtp_shim.so", "librgtp_shim.so"),
    ]
}

/// Runs `scripts/install.sh ARGS` with `PREFIX=prefix` and the given target dir, from `cwd`.
fn install_sh(dir: &TestDir, prefix: &Path, target: &str, cwd: &Path, args: &[&str]) -> Finished {
    let mut cmd = Command::new(workspace_root().join("scripts/install.sh"));
    cmd.args(args)
        .current_dir(cwd)
        .env("PREFIX", prefix)
        .env("CARGO_TARGET_DIR", target);
    Proc::spawn(cmd, "install.sh", dir.path(), false).finish(BUILD_DEADLINE)
}

#[test]
fn install_sh_honours_a_relative_cargo_target_dir() {
    let dir = TestDir::new("install");
    let prefix = dir.join("prefix");
    let target = target_dir();
    // Relative to where the script is started, which is not the workspace root (the
    // script cds there): the build must still go to, and be taken from, `target`.
    let cwd = target.parent().expect("target has a parent");
    let name = target.file_name().and_then(|n| n.to_str()).expect("UTF-8");
    install_sh(&dir, &prefix, name, cwd, &[]).assert_success();
    for (dest, built) in installed() {
        let got = fs::read(prefix.join(dest))
            .unwrap_or_else(|e| panic!("{dest} not installed under {}: {e}", prefix.display()));
        let want = fs::read(target.join("release").join(built)).expect("built file");
        assert!(
            got == want,
            "{dest} is not the build in {}",
            target.display()
        );
    }
}

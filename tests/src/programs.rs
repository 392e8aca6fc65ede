//! Where the programs under test are, and how to start ours: the workspace, the
//! built binaries (`rgtp-expose`, `rgtp-pull`, `rgtp-run`, the shim) and the real
//! programs some tests drive (curl, nc, ...).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Cargo workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The LD_PRELOAD shim among the built binaries (fails the test if it is missing).
pub fn shim() -> PathBuf {
    let p = bin_dir().join("librgtp_shim.so");
    assert!(
        p.is_file(),
        "{} missing: cargo build --release -p rgtp-shim",
        p.display()
    );
    p
}

/// Fails the test (never skips it) when a real program it needs is not installed.
pub fn need(program: &str) {
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{program} is not installed (scripts/test.sh installs it)"
    );
}

/// Directory holding `rgtp-expose` and `rgtp-pull`.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let has_both = |d: &Path| d.join("rgtp-expose").is_file() && d.join("rgtp-pull").is_file();
        if let Some(d) = std::env::var_os("RGTP_BIN_DIR") {
            let d = PathBuf::from(d);
            assert!(
                has_both(&d),
                "RGTP_BIN_DIR={} does not contain both rgtp-expose and rgtp-pull",
                d.display()
            );
            return d;
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        for profile in ["release", "debug"] {
            let d = target.join(profile);
            if has_both(&d) {
                eprintln!("rgtp-e2e: using binaries in {}", d.display());
                return d;
            }
        }
        panic!(
            "rgtp-expose/rgtp-pull not found in $RGTP_BIN_DIR, {0}/release or {0}/debug; \
             build them first: cargo build --release -p rgtp-cli",
            target.display()
        );
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A command for one of our binaries with the test's environment: `RGTP_CONFIG_DIR`
/// set, `RUST_LOG` cleared (or `$RGTP_TEST_RUST_LOG`), backtraces on.
pub fn rgtp_command(binary: &str, config_dir: &Path) -> Command {
    let mut cmd = Command::new(bin(binary));
    cmd.env("RGTP_CONFIG_DIR", config_dir)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG");
    if let Some(l) = std::env::var_os("RGTP_TEST_RUST_LOG") {
        cmd.env("RUST_LOG", l);
    }
    cmd
}

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
    // What cargo sets for this test process only: a build script that reads one (ring
    // reads CARGO_MANIFEST_DIR) would make the release build differ from the one the
    // user (or scripts/test.sh) ran, and rebuild everything twice.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
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

/// The names of an ELF64 file's sections.
fn elf_sections(data: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&data[..5], b"\x7fELF\x02", "not an ELF64 file");
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let strtab = u64_at(shoff + shstrndx * shentsize + 0x18);
    (0..shnum)
        .map(|i| {
            let start = strtab + u32_at(shoff + i * shentsize);
            let end = start + data[start..].iter().position(|&b| b == 0).unwrap();
            String::from_utf8_lossy(&data[start..end]).into_owned()
        })
        .collect()
}

#[test]
fn install_sh_installs_docs_stripped_binaries_and_uninstalls() {
    let dir = TestDir::new("install-docs");
    let prefix = dir.join("prefix");
    let target = target_dir();
    let target_s = target.to_str().expect("UTF-8");
    let root = workspace_root();
    install_sh(&dir, &prefix, target_s, &root, &[]).assert_success();

    // Release binaries carry no debug info, but keep their symbols (backtraces).
    for (dest, _) in installed() {
        let data = fs::read(prefix.join(dest)).unwrap();
        let sections = elf_sections(&data);
        assert!(
            !sections.iter().any(|s| s.starts_with(".debug_")),
            "{dest} has debug sections: {sections:?}"
        );
        assert!(
            sections.iter().any(|s| s == ".symtab" || s == ".dynsym"),
            "{dest}: {sections:?}"
        );
    }
    let docs = [
        ("share/man/man1/rgtp-pull.1", ".TH rgtp-pull"),
        ("share/man/man1/rgtp-expose.1", ".TH rgtp-expose"),
        (
            "share/bash-completion/completions/rgtp-pull",
            "--connect-timeout",
        ),
        (
            "share/bash-completion/completions/rgtp-expose",
            "--cache-mib",
        ),
        ("share/zsh/site-functions/_rgtp-pull", "#compdef rgtp-pull"),
        (
            "share/fish/vendor_completions.d/rgtp-expose.fish",
            "complete -c rgtp-expose",
        ),
    ];
    for (f, want) in docs {
        let text = fs::read_to_string(prefix.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.contains(want), "{f} lacks {want:?}");
    }
    // The bash completion is valid bash that registers itself.
    let mut check = Command::new("bash");
    check.arg("-c").arg(format!(
        "source {} && complete -p rgtp-pull",
        prefix
            .join("share/bash-completion/completions/rgtp-pull")
            .display()
    ));
    let done = Proc::spawn(check, "bash completion", dir.path(), false).finish(ERROR_DEADLINE);
    done.assert_success();
    assert!(done.stdout.contains("rgtp-pull"), "{}", done.describe());

    // --uninstall removes every file it installed, and nothing else.
    let mine = prefix.join("bin/someone-elses");
    fs::write(&mine, b"keep me\n").unwrap();
    install_sh(&dir, &prefix, target_s, &root, &["--uninstall"]).assert_success();
    for (dest, _) in installed() {
        assert!(!prefix.join(dest).exists(), "{dest} left behind");
    }
    for (f, _) in docs {
        assert!(!prefix.join(f).exists(), "{f} left behind");
    }
    assert!(
        mine.exists(),
        "--uninstall removed a file it did not install"
    );
    // Twice is fine; a bad argument is not.
    install_sh(&dir, &prefix, target_s, &root, &["--uninstall"]).assert_success();
    let done = install_sh(&dir, &prefix, target_s, &root, &["--bogus"]);
    assert_eq!(done.code(), Some(2), "{}", done.describe());
}

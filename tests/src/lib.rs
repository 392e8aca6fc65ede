//! Helpers shared by the end-to-end tests in `tests/tests/`.
//!
//! The tests drive the real `rgtp-expose` and `rgtp-pull` binaries over loopback UDP.
//! Binaries are looked up in `$RGTP_BIN_DIR`, else `<workspace>/target/release` when
//! both are there, else `<workspace>/target/debug` (build them first:
//! `cargo build --release -p rgtp-cli`).
//!
//! Every process a test starts is owned by a [`Proc`], which kills it (SIGKILL, by pid)
//! and reaps it when dropped, so a failing test leaves nothing behind. Every wait is
//! bounded by a generous deadline that only exists to turn a hang into a failure; no
//! test asserts on timing.
//!
//! To interrupt a transfer at a chosen point whatever the speed of loopback, tests pull
//! through a [`Relay`] (an in-process UDP relay on 127.0.0.1 with a rate cap and a
//! freeze switch) and watch the puller's resume sidecar ([`freeze_after_progress`]).
//!
//! Environment knobs: `RGTP_TEST_RUST_LOG` (passed to the binaries as `RUST_LOG`),
//! `RGTP_KEEP_TMP=1` (keep the temp directory of a failed test),
//! `RGTP_SKIP_ROOT_TESTS=1` (skip, out loud, the tests that need root instead of
//! failing them) and `RGTP_SKIP_LOG` (a file where skips are listed; see [`skip`]).
//!
//! The modules, each re-exported here so tests `use rgtp_e2e::*`:
//! - [`programs`]: where the binaries and the shim are, `need` for real programs, the
//!   environment our binaries run with;
//! - [`tempdir`]: [`TestDir`], a directory per test;
//! - [`process`]: processes a test starts, [`Proc`], and how they ended, [`Finished`];
//! - [`files`]: random files, hashes, byte-exact comparison, part/sidecar files, keys;
//! - [`expose`] and [`pull`]: starting `rgtp-expose` and running `rgtp-pull`;
//! - [`relay`]: the UDP relay that slows and interrupts transfers;
//! - [`net`]: ports, and which are bound;
//! - [`shim_env`]: programs run under the shim, and its log;
//! - [`skip`]: tests that need root, and skips that show ([`require_root!`]);
//! - [`wait`]: bounded waits;
//! - [`disk`]: a small tmpfs that fills up.

use std::time::Duration;

pub mod disk;
pub mod expose;
pub mod files;
pub mod lan;
pub mod net;
pub mod process;
pub mod programs;
pub mod pull;
pub mod relay;
pub mod shim_env;
pub mod skip;
pub mod tempdir;
pub mod wait;

pub use disk::*;
pub use expose::*;
pub use files::*;
pub use lan::*;
pub use net::*;
pub use process::*;
pub use programs::*;
pub use pull::*;
pub use relay::*;
pub use shim_env::*;
pub use skip::*;
pub use tempdir::*;
pub use wait::*;

pub use serde_json::Value as Json;

/// Exit codes of `rgtp-expose` and `rgtp-pull` (the CLI contract).
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 2;
    /// rgtp-expose: a FILE missing/unreadable. rgtp-pull: output path not writable.
    pub const FILE: i32 = 3;
    pub const DISK_FULL: i32 = 4;
    pub const TIMEOUT: i32 = 5;
    pub const KEY_MISMATCH: i32 = 6;
    pub const NOT_FOUND: i32 = 7;
    pub const ROOT_MISMATCH: i32 = 8;
    pub const CORRUPT_SIDECAR: i32 = 9;
    pub const BIND: i32 = 10;
    pub const BAD_KEY_FILE: i32 = 11;
    /// rgtp-pull: the offered file is too large to track in memory.
    pub const TOO_LARGE: i32 = 12;
    /// rgtp-pull: the exposer withdrew the file (it changed while exposed).
    pub const GONE: i32 = 13;
    /// rgtp-pull: the output exists and neither -o nor --force was given.
    pub const EXISTS: i32 = 14;
    /// rgtp-expose: no key file, and none can be created (e.g. its directory).
    pub const KEY_CREATE: i32 = 15;
    /// rgtp-pull: the exposer broke the protocol (e.g. a cipher that was not offered).
    pub const PROTOCOL: i32 = 16;
    pub const INTERRUPTED: i32 = 130;
}

/// Upper bound for any single transfer in these tests (a hang guard, not a timing check).
pub const PULL_DEADLINE: Duration = Duration::from_secs(180);
/// Upper bound for an exposer to hash its files and print its URLs.
pub const EXPOSE_DEADLINE: Duration = Duration::from_secs(90);
/// Upper bound for a command that is expected to fail quickly.
pub const ERROR_DEADLINE: Duration = Duration::from_secs(60);

pub const MIB: u64 = 1 << 20;

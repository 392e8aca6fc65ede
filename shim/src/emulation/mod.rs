//! The shim's emulation of TCP connect/listen: carries emulated TCP connections over
//! RGTP connections, and bridges each to a real kernel stream fd that the app holds.
//! The event loop, UDP I/O and bridges are the core's connection runtime
//! (`rgtp::conn::runtime`); this module decides what to connect, listen and hand over,
//! and handles fork and exit: `client` (connect), `server` (listen, accept hand-over)
//! and `process` (fork, exit); this file holds the process-wide state they share.
//!
//! Client: connect() makes an RGTP connection, then the app's fd is replaced (dup3)
//! by one end of a socketpair whose other end is pumped to and from the connection.
//! Server: listen() opens an RGTP listener on the same port; each accepted RGTP
//! connection is handed to the app's listening fd as a real connection (strict: a
//! unix listener standing in for the TCP one; fallback: the real TCP listener, via a
//! loopback connection), so accept/poll/epoll/fork work natively.

use std::os::fd::RawFd;
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::config::{self, Config};
use crate::guard::{self};
use crate::log;
use rgtp::conn::runtime::{self};
use rgtp::conn::ConnConfig;

mod client;
mod process;
mod server;

pub use client::connect_fd;
#[allow(unused_imports)]
use client::*;
use process::*;
use server::*;
pub use server::{addrs_from_name, listen_fd, serve_here};

pub enum State {
    /// RGTP_PORTS unset: intercept nothing.
    Off,
    On(Config),
    /// A bad value in strict mode: inet stream connect/listen fail with EINVAL.
    Broken,
}

static STATE: OnceLock<State> = OnceLock::new();

pub fn state() -> &'static State {
    STATE.get_or_init(|| {
        let get = |k: &str| std::env::var(k).ok();
        match config::parse(get) {
            Ok(None) => State::Off,
            Ok(Some(c)) => {
                log::init(c.log_level, c.log_file.as_deref());
                State::On(c)
            }
            Err(msg) => {
                let strict = std::env::var("RGTP_FALLBACK").is_ok_and(|v| v.trim() == "0");
                if strict {
                    say(&format!(
                        "rgtp-shim: {msg}; strict mode (RGTP_FALLBACK=0): TCP calls will fail"
                    ));
                    State::Broken
                } else {
                    say(&format!("rgtp-shim: {msg}; running without RGTP"));
                    State::Off
                }
            }
        }
    })
}

/// One line on the app's stderr. Not `eprintln!`, which panics when stderr fails
/// (a closed pipe): this runs in hooks, where no panic may reach C.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub fn config() -> Option<&'static Config> {
    match state() {
        State::On(c) => Some(c),
        _ => None,
    }
}

pub fn broken() -> bool {
    matches!(state(), State::Broken)
}

// ------------------------------------------------------------------ fds we own

/// Engine-side fds, closed in a forked child (it has no engine threads to serve them,
/// and holding them would keep the app's ends from seeing EOF).
static OWNED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

pub(crate) fn own(fd: RawFd) {
    OWNED.lock().push(fd);
}

pub(crate) fn disown(fd: RawFd) {
    OWNED.lock().retain(|&f| f != fd);
}

// ------------------------------------------------------------------ runtime

/// What the shim needs to know of the runtime in `rgtp::conn`: its threads must
/// reach libc directly and let the app's threads take its signals, and its fds are
/// closed in a forked child, which has no engine thread to serve them.
struct ShimHooks;

impl runtime::RuntimeHooks for ShimHooks {
    fn thread_started(&self) {
        guard::mark_engine_thread();
    }
    fn fd_opened(&self, fd: RawFd) {
        own(fd);
    }
    fn fd_closed(&self, fd: RawFd) {
        disown(fd);
    }
}

fn spawn_engine_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    let r = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            guard::mark_engine_thread();
            f()
        });
    if let Err(e) = r {
        log::error(&format!("cannot start a thread: {e}"));
    }
}

/// Settings of every connection this process makes or accepts.
fn conn_config(c: &Config) -> ConnConfig {
    ConnConfig {
        linger: c.linger,
        ..ConnConfig::default()
    }
}

/// Waits, at exit, until every connection has handed the app's last bytes to its
/// peer and they were acknowledged, at most RGTP_LINGER_MS.
pub fn linger_at_exit() {
    let Some(c) = config() else { return };
    if !runtime::exit_linger(c.linger) {
        log::warn("exit: peers did not acknowledge every byte within RGTP_LINGER_MS");
    }
}

extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| guard::enter(linger_at_exit));
}

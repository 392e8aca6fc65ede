//! connect(): an RGTP connection bridged to the app's fd, blocking or not, pins
//! checked.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use libc::{c_int, sockaddr, socklen_t};

use crate::config::Config;
use crate::guard::{errno_of, fail};
use crate::log;
use crate::real;
use crate::registry::{self, Entry, Kind};
use rgtp::conn::runtime::{self, BridgeOptions, StreamOptions};

use super::*;

/// Puts `replacement` in place of the app's `fd`, keeping its O_NONBLOCK and
/// FD_CLOEXEC, so the app's fd number stays valid and now means the emulation.
pub(super) fn replace_fd(fd: c_int, replacement: OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl queries on an fd the app passed us.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    let fdfl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if fl < 0 || fdfl < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = replacement.as_raw_fd();
    // SAFETY: setting flags on our own fd.
    unsafe {
        libc::fcntl(
            r,
            libc::F_SETFL,
            fl & libc::O_NONBLOCK | (libc::fcntl(r, libc::F_GETFL) & !libc::O_NONBLOCK),
        )
    };
    let cloexec = if fdfl & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: dup3 atomically replaces the app's fd with ours.
    if unsafe { libc::dup3(r, fd, cloexec) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The server's identity, loaded once per process and inherited by forked
/// children: a prefork server's workers may run with a cleaned environment (nginx
/// keeps only TZ), where RGTP_CONFIG_DIR would name another key, yet every process
/// serving a port must be the same server.
pub(super) fn server_key() -> rgtp::keys::StaticKey {
    static KEY: OnceLock<rgtp::keys::StaticKey> = OnceLock::new();
    // A bad shim.key stops the process (exit 11) rather than change identity quietly.
    KEY.get_or_init(|| rgtp::keys::server_key_or_exit(&rgtp::keys::config_dir().join("shim.key")))
        .clone()
}

pub(super) fn pinned_key(c: &Config, peer: &SocketAddr) -> Option<[u8; 32]> {
    let hp = rgtp::url::format_host_port(&peer.ip().to_string(), peer.port());
    c.pins.iter().find(|(h, _)| *h == hp).map(|(_, k)| *k)
}

/// Whether a failed connect to `peer` was the server presenting another key than the
/// one RGTP_PINS names for it (the connection's `PermissionDenied`, not an OS error).
pub(super) fn pin_refused(
    c: &Config,
    peer: &SocketAddr,
    kind: io::ErrorKind,
    os_error: bool,
) -> bool {
    kind == io::ErrorKind::PermissionDenied && !os_error && pinned_key(c, peer).is_some()
}

/// A pinned server presented another key: a security event, so said on stderr
/// whatever RGTP_LOG is (as rgtp-pull's key notices are), and the app sees the
/// connection refused. Never a fallback to TCP: the peer does speak RGTP, and
/// falling back would skip the very check the pin asks for.
pub(super) fn refuse_pin(peer: &SocketAddr) -> c_int {
    let hp = rgtp::url::format_host_port(&peer.ip().to_string(), peer.port());
    say(&format!(
        "rgtp: {hp} presented a key other than the one RGTP_PINS requires for it; \
         connection refused"
    ));
    libc::ECONNREFUSED
}

pub fn connect_fd(
    fd: c_int,
    family: c_int,
    peer: SocketAddr,
    addr: *const sockaddr,
    len: socklen_t,
) -> c_int {
    let Some(c) = config() else {
        return fail(libc::EINVAL);
    };
    ensure_process_hooks();
    let peer_v = rgtp::udp::canonical(peer);
    log::debug(&format!("connect {peer_v} over RGTP"));
    if !c.fallback && is_nonblocking(fd) {
        return connect_nonblocking(c, fd, family, peer, peer_v);
    }
    match connect_blocking(c, peer_v) {
        Ok((app, local, bridge_ino)) => {
            let local = SocketAddr::new(local_ip_for(&peer_v), local.port());
            match install_conn(fd, family, peer, local, app) {
                Ok(ino) => {
                    bridge_ino.store(ino.unwrap_or(0), Ordering::Relaxed);
                    0
                }
                Err(errno) => fail(errno),
            }
        }
        Err(err) if pin_refused(c, &peer_v, err.kind(), err.raw_os_error().is_some()) => {
            fail(refuse_pin(&peer_v))
        }
        Err(err) if c.fallback => {
            log::info(&format!(
                "{peer_v} does not answer RGTP ({err}); falling back to TCP"
            ));
            // SAFETY: the caller's original arguments, as they came.
            unsafe { real::connect(fd, addr, len) }
        }
        Err(err) => {
            log::info(&format!("RGTP connect to {peer_v}: {err}"));
            fail(errno_of(&err))
        }
    }
}

/// Opens an RGTP connection bridged to a new socketpair and waits for its handshake
/// (at most the connect timeout). Returns the app's end, the local UDP address, and
/// where to put the app socket's inode once known (its registry entry goes when the
/// bridge ends).
pub(super) fn connect_blocking(
    c: &Config,
    peer: SocketAddr,
) -> io::Result<(OwnedFd, SocketAddr, Arc<AtomicU64>)> {
    let (app, eng) = runtime::socketpair()?;
    let ino = Arc::new(AtomicU64::new(0));
    let ino_at_end = ino.clone();
    let opts = BridgeOptions {
        connect_deadline: Some(std::time::Instant::now() + c.connect_timeout),
        on_end: Some(Box::new(move || {
            let ino = ino_at_end.load(Ordering::Relaxed);
            if ino != 0 {
                registry::remove(ino);
            }
        })),
        ..BridgeOptions::default()
    };
    let (local, bridge) = runtime::connect_bridged(peer, stream_options(c, &peer), eng, opts)?;
    bridge.wait_connected(c.connect_timeout)?;
    Ok((app, local, ino))
}

pub(super) fn stream_options(c: &Config, peer: &SocketAddr) -> StreamOptions {
    StreamOptions {
        server_key: pinned_key(c, peer),
        config: Some(conn_config(c)),
    }
}

/// Puts `app` (one end of a socketpair) in place of the app's `fd` and records it as
/// a connection to `peer`; returns the app socket's inode.
pub(super) fn install_conn(
    fd: c_int,
    family: c_int,
    peer: SocketAddr,
    local: SocketAddr,
    app: OwnedFd,
) -> Result<Option<u64>, c_int> {
    replace_fd(fd, app).map_err(|e| errno_of(&e))?;
    let ino = registry::inode(fd);
    if let Some(ino) = ino {
        registry::insert(
            ino,
            Entry {
                kind: Kind::Conn,
                family,
                local,
                peer: Some(peer),
                emulated_fd: true,
            },
        );
    }
    Ok(ino)
}

/// Puts one end of a new socketpair, its send buffer filled (see
/// `connect_nonblocking`), in place of the app's `fd` and records it as a connection
/// to `peer`; returns the engine's end, the app socket's inode and how many filler
/// bytes the app's end holds.
pub(super) fn emulate_conn(
    fd: c_int,
    family: c_int,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<(OwnedFd, Option<u64>, usize), c_int> {
    let (app, eng) = runtime::socketpair().map_err(|e| errno_of(&e))?;
    let skip = fill(app.as_raw_fd());
    let ino = install_conn(fd, family, peer, local, app)?;
    Ok((eng, ino, skip))
}

pub(super) fn is_nonblocking(fd: c_int) -> bool {
    // SAFETY: fcntl query on the app's fd.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

/// Strict mode, non-blocking socket: returns EINPROGRESS at once, as TCP does. The
/// app's fd becomes a socketpair end whose send buffer we fill with filler bytes, so
/// it polls unwritable until the engine completes the handshake and drops the filler
/// (then POLLOUT, SO_ERROR 0), or fails it (POLLOUT|POLLHUP, SO_ERROR says why).
/// Fallback mode keeps the blocking wait: falling back to TCP from the engine thread
/// would need a TCP bridge it does not have.
pub(super) fn connect_nonblocking(
    c: &Config,
    fd: c_int,
    family: c_int,
    peer: SocketAddr,
    peer_v: SocketAddr,
) -> c_int {
    let local = SocketAddr::new(local_ip_for(&peer_v), 0);
    let (eng, ino, skip) = match emulate_conn(fd, family, peer, local) {
        Ok((eng, Some(ino), skip)) => (eng, ino, skip),
        Ok((_, None, _)) => return fail(libc::EBADF),
        Err(errno) => return fail(errno),
    };
    registry::set_connecting(ino, Some(registry::Connecting::InProgress));
    // A failed connect's SO_ERROR outlives the bridge: the app reads it afterwards.
    let failed = Arc::new(AtomicBool::new(false));
    let failed_at_end = failed.clone();
    let pinned = pinned_key(c, &peer_v).is_some();
    let opts = BridgeOptions {
        skip,
        connect_deadline: Some(std::time::Instant::now() + c.connect_timeout),
        on_connect: Some(Box::new(move |err| match err {
            None => registry::set_connecting(ino, None),
            Some(kind) => {
                failed.store(true, Ordering::Relaxed);
                let errno = if pinned && kind == io::ErrorKind::PermissionDenied {
                    refuse_pin(&peer_v)
                } else {
                    errno_of(&io::Error::from(kind))
                };
                registry::set_connecting(ino, Some(registry::Connecting::Failed(errno)));
            }
        })),
        on_end: Some(Box::new(move || {
            if !failed_at_end.load(Ordering::Relaxed) {
                registry::remove(ino);
            }
        })),
    };
    match runtime::connect_bridged(peer_v, stream_options(c, &peer_v), eng, opts) {
        Ok((local, _)) => {
            if let Some(mut en) = registry::get(ino) {
                en.local = SocketAddr::new(local_ip_for(&peer_v), local.port());
                registry::insert(ino, en);
            }
            fail(libc::EINPROGRESS)
        }
        Err(err) => {
            registry::remove(ino);
            log::info(&format!("RGTP connect to {peer_v}: {err}"));
            fail(errno_of(&err))
        }
    }
}

/// Writes filler into `fd` (non-blocking) until its send buffer is full; returns how
/// many bytes.
pub(super) fn fill(fd: c_int) -> usize {
    // SAFETY: fcntl on our own fd.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        )
    };
    let zeros = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        // SAFETY: writing from our own buffer to our own fd.
        let n = unsafe { libc::write(fd, zeros.as_ptr().cast(), zeros.len()) };
        if n <= 0 {
            return total;
        }
        total += n as usize;
    }
}

/// The local address a TCP socket would show toward `peer` (loopback for loopback).
pub(super) fn local_ip_for(peer: &SocketAddr) -> IpAddr {
    match peer.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

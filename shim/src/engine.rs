//! The shim's emulation of TCP connect/listen: carries emulated TCP connections over
//! RGTP connections, and bridges each to a real kernel stream fd that the app holds.
//! The event loop, UDP I/O and bridges are the core's connection runtime
//! (`rgtp::conn::runtime`); this file decides what to connect, listen and hand over,
//! and handles fork and exit.
//!
//! Client: connect() makes an RGTP connection, then the app's fd is replaced (dup3)
//! by one end of a socketpair whose other end is pumped to and from the connection.
//! Server: listen() opens an RGTP listener on the same port; each accepted RGTP
//! connection is handed to the app's listening fd as a real connection (strict: a
//! unix listener standing in for the TCP one; fallback: the real TCP listener, via a
//! loopback connection), so accept/poll/epoll/fork work natively.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libc::{c_int, sockaddr, socklen_t};
use parking_lot::Mutex;

use crate::config::{self, Config};
use crate::guard::{self, errno_of, fail};
use crate::log;
use crate::real;
use crate::registry::{self, Entry, Kind, PendingKey};
use rgtp::conn::runtime::{self, BridgeOptions, HandOver, ListenerOptions, StreamOptions};
use rgtp::conn::ConnConfig;

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

// ------------------------------------------------------------------ client

/// Puts `replacement` in place of the app's `fd`, keeping its O_NONBLOCK and
/// FD_CLOEXEC, so the app's fd number stays valid and now means the emulation.
fn replace_fd(fd: c_int, replacement: OwnedFd) -> io::Result<()> {
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
fn server_key() -> rgtp::keys::StaticKey {
    static KEY: OnceLock<rgtp::keys::StaticKey> = OnceLock::new();
    // A bad shim.key stops the process (exit 11) rather than change identity quietly.
    KEY.get_or_init(|| rgtp::keys::server_key_or_exit(&rgtp::keys::config_dir().join("shim.key")))
        .clone()
}

fn pinned_key(c: &Config, peer: &SocketAddr) -> Option<[u8; 32]> {
    let hp = rgtp::url::format_host_port(&peer.ip().to_string(), peer.port());
    c.pins.iter().find(|(h, _)| *h == hp).map(|(_, k)| *k)
}

/// Whether a failed connect to `peer` was the server presenting another key than the
/// one RGTP_PINS names for it (the connection's `PermissionDenied`, not an OS error).
fn pin_refused(c: &Config, peer: &SocketAddr, kind: io::ErrorKind, os_error: bool) -> bool {
    kind == io::ErrorKind::PermissionDenied && !os_error && pinned_key(c, peer).is_some()
}

/// A pinned server presented another key: a security event, so said on stderr
/// whatever RGTP_LOG is (as rgtp-pull's key notices are), and the app sees the
/// connection refused. Never a fallback to TCP: the peer does speak RGTP, and
/// falling back would skip the very check the pin asks for.
fn refuse_pin(peer: &SocketAddr) -> c_int {
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
fn connect_blocking(
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

fn stream_options(c: &Config, peer: &SocketAddr) -> StreamOptions {
    StreamOptions {
        server_key: pinned_key(c, peer),
        config: Some(conn_config(c)),
    }
}

/// Puts `app` (one end of a socketpair) in place of the app's `fd` and records it as
/// a connection to `peer`; returns the app socket's inode.
fn install_conn(
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
fn emulate_conn(
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

fn is_nonblocking(fd: c_int) -> bool {
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
fn connect_nonblocking(
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
fn fill(fd: c_int) -> usize {
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
fn local_ip_for(peer: &SocketAddr) -> IpAddr {
    match peer.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

// ------------------------------------------------------------------ server

/// Where accepted RGTP connections are handed to the app.
#[derive(Clone)]
enum Target {
    /// Strict: a unix listener (abstract name) now standing in the app's fd.
    Unix(Vec<u8>),
    /// Fallback: the app's real TCP listener.
    Tcp(SocketAddr),
}

/// A listener's UDP address, where it hands connections, and its UDP socket's fd.
/// A forked child keeps that fd open (it is the same socket as its parent's), to serve
/// it when no other process does: daemonizing servers listen, fork, and let the parent
/// exit. Keeping the socket, not binding the port anew, means the port never closes
/// and datagrams sent meanwhile wait in its queue.
static LISTENERS: Mutex<Vec<(SocketAddr, Target, RawFd)>> = Mutex::new(Vec::new());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Bytes of one address in an abstract name: family (4 or 6), IPv6 or v4-mapped
/// address, port (big-endian).
const ADDR_BYTES: usize = 1 + 16 + 2;

/// An engine-side socket's abstract name carries the connection's peer and local
/// addresses after a `|`: a worker that accepts it may not be the process whose engine
/// holds the connection (nginx's master and workers share one listener), and the
/// pending table that would tell it is that other process's.
fn name_with_addrs(mut name: Vec<u8>, peer: SocketAddr, local: SocketAddr) -> Vec<u8> {
    name.push(b'|');
    for a in [peer, local] {
        let (fam, ip) = match a.ip() {
            IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => (6u8, v6),
        };
        name.push(fam);
        name.extend_from_slice(&ip.octets());
        name.extend_from_slice(&a.port().to_be_bytes());
    }
    name
}

/// The peer and local addresses in a name made by `name_with_addrs`.
pub fn addrs_from_name(name: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let tail = name.len().checked_sub(2 * ADDR_BYTES + 1)?;
    if name[tail] != b'|' {
        return None;
    }
    let one = |b: &[u8]| -> Option<SocketAddr> {
        let octets: [u8; 16] = b.get(1..17)?.try_into().ok()?;
        let v6 = Ipv6Addr::from(octets);
        let ip = match b[0] {
            4 => IpAddr::V4(v6.to_ipv4_mapped()?),
            6 => IpAddr::V6(v6),
            _ => return None,
        };
        let port = u16::from_be_bytes([*b.get(17)?, *b.get(18)?]);
        Some(SocketAddr::new(ip, port))
    };
    let rest = &name[tail + 1..];
    Some((one(&rest[..ADDR_BYTES])?, one(&rest[ADDR_BYTES..])?))
}

fn abstract_addr(name: &[u8]) -> (libc::sockaddr_un, socklen_t) {
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + name.len().min(a.sun_path.len());
    (a, len as socklen_t)
}

fn unix_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unique_name(tag: &str) -> Vec<u8> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let salt: [u8; 4] = rgtp::crypto::random_bytes();
    let mut v = vec![0u8];
    v.extend_from_slice(format!("rgtp-shim-{tag}-{pid}-{n}-{}", rgtp::url::hex(&salt)).as_bytes());
    v
}

pub fn listen_fd(fd: c_int, backlog: c_int, e: Entry) -> c_int {
    let Some(c) = config() else {
        return fail(libc::EINVAL);
    };
    ensure_process_hooks();
    let udp_addr = e.local;
    let target = if c.fallback {
        Target::Tcp(SocketAddr::new(
            loopback_if_any(udp_addr.ip()),
            udp_addr.port(),
        ))
    } else {
        Target::Unix(unique_name("l"))
    };
    let udp_fd = match open_listener(udp_addr, &target) {
        Ok(l) => l,
        Err(err) if c.fallback => {
            log::warn(&format!(
                "cannot open RGTP listener on UDP {udp_addr}: {err}; TCP only"
            ));
            // SAFETY: forwarding the app's call.
            return unsafe { real::listen(fd, backlog) };
        }
        Err(err) => {
            log::error(&format!(
                "cannot open RGTP listener on UDP {udp_addr}: {err}"
            ));
            return fail(errno_of(&err));
        }
    };
    match &target {
        Target::Tcp(_) => {
            // SAFETY: forwarding the app's call.
            let r = unsafe { real::listen(fd, backlog) };
            if r != 0 {
                return r;
            }
            if let Some(ino) = registry::inode(fd) {
                registry::insert(
                    ino,
                    Entry {
                        kind: Kind::Listener,
                        emulated_fd: false,
                        ..e.clone()
                    },
                );
            }
        }
        Target::Unix(name) => {
            let ux = match unix_socket() {
                Ok(s) => s,
                Err(err) => return fail(errno_of(&err)),
            };
            let (a, l) = abstract_addr(name);
            // SAFETY: valid socket and address.
            if unsafe { libc::bind(ux.as_raw_fd(), &a as *const _ as *const sockaddr, l) } != 0
            // SAFETY: valid socket.
            || unsafe { real::listen(ux.as_raw_fd(), backlog) } != 0
            {
                return fail(guard::errno());
            }
            if let Err(err) = replace_fd(fd, ux) {
                return fail(errno_of(&err));
            }
            if let Some(ino) = registry::inode(fd) {
                registry::insert(
                    ino,
                    Entry {
                        kind: Kind::Listener,
                        emulated_fd: true,
                        ..e.clone()
                    },
                );
            }
        }
    }
    match claim(udp_fd) {
        Ok(Some(c)) => own(c.into_raw_fd()),
        Ok(None) => log::warn(&format!("the RGTP listener on {udp_addr} is claimed twice")),
        Err(err) => log::warn(&format!(
            "cannot claim the RGTP listener on {udp_addr}: {err}"
        )),
    }
    LISTENERS.lock().push((udp_addr, target, udp_fd));
    0
}

fn loopback_if_any(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// Marks the process serving the UDP socket `udp_fd`: an abstract unix socket named
/// by the socket's inode, bound by the server and released by the kernel when the
/// server closes it or dies. Forked children do not inherit the claim (fork_child
/// closes it), so exactly one process at a time serves a listener, and a daemon takes
/// over the moment its parent is gone. None: another process holds it.
fn claim(udp_fd: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: zeroed stat is valid storage for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd we hold.
    if unsafe { libc::fstat(udp_fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let s = unix_socket()?;
    let mut name = vec![0u8];
    name.extend_from_slice(format!("rgtp-shim-serves-{}-{}", st.st_dev, st.st_ino).as_bytes());
    let (a, l) = abstract_addr(&name);
    // SAFETY: valid socket and address.
    if unsafe { libc::bind(s.as_raw_fd(), &a as *const _ as *const sockaddr, l) } == 0 {
        return Ok(Some(s));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EADDRINUSE) {
        Ok(None)
    } else {
        Err(err)
    }
}

fn hand_over_to(target: &Target, local: SocketAddr) -> HandOver {
    let t = target.clone();
    Arc::new(move |peer| hand_over(peer, &t, local))
}

/// Opens the RGTP listener on UDP `addr`, handing connections to `target`; returns
/// its UDP socket's fd.
fn open_listener(addr: SocketAddr, target: &Target) -> io::Result<RawFd> {
    // Shared, so the processes that accept on the app's listener can each serve
    // RGTP on the same port (`serve_here`).
    let sock = rgtp::udp::bind_shared(addr)?;
    let fd = sock.as_raw_fd();
    serve_listener(sock, addr, target)?;
    Ok(fd)
}

/// Serves RGTP connections on `sock` (bound to `addr`), handing them to `target`.
fn serve_listener(sock: std::net::UdpSocket, addr: SocketAddr, target: &Target) -> io::Result<()> {
    let opts = ListenerOptions {
        key: Some(server_key()),
        config: config().map(conn_config),
        retry_threshold: None,
        shared_port: true,
    };
    runtime::listen_bridged(sock, opts, hand_over_to(target, addr))?;
    SERVING.lock().push(addr);
    Ok(())
}

/// UDP addresses of the listeners this process serves with a socket of its own.
/// Not inherited: a forked child serves nothing until it accepts or adopts.
static SERVING: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

/// Called when this process accepts on the emulated listener of UDP `addr`: a
/// process that accepts connections serves RGTP on that port itself, with its own
/// socket in the port group and its own engine, so each worker of a prefork server
/// (nginx) does the RGTP work of its share of the connections on its own core,
/// instead of one thread of the process that listened doing it for all.
pub fn serve_here(addr: SocketAddr) {
    if SERVING.lock().contains(&addr) {
        return;
    }
    let Some(target) = LISTENERS
        .lock()
        .iter()
        .find(|l| l.0 == addr)
        .map(|l| l.1.clone())
    else {
        return;
    };
    match rgtp::udp::bind_shared(addr).and_then(|s| serve_listener(s, addr, &target)) {
        Ok(()) => log::info(&format!(
            "this process serves the RGTP listener on {addr} too"
        )),
        Err(e) => {
            // Not fatal: the process that listened still serves the port.
            log::warn(&format!("cannot join the RGTP listener on {addr}: {e}"));
            SERVING.lock().push(addr);
        }
    }
}

/// Connects an engine-side socket to the app's listener and bridges it to `stream`.
fn hand_over(peer: SocketAddr, target: &Target, local: SocketAddr) -> io::Result<OwnedFd> {
    match target {
        Target::Unix(listener_name) => {
            let s = unix_socket()?;
            let me = name_with_addrs(unique_name("c"), peer, local);
            let (a, l) = abstract_addr(&me);
            // SAFETY: valid socket and address.
            if unsafe { libc::bind(s.as_raw_fd(), &a as *const _ as *const sockaddr, l) } != 0 {
                return Err(io::Error::last_os_error());
            }
            registry::add_pending(PendingKey::Unix(me.clone()), peer, local);
            let (t, tl) = abstract_addr(listener_name);
            // SAFETY: valid socket and address.
            if unsafe { real::connect(s.as_raw_fd(), &t as *const _ as *const sockaddr, tl) } != 0 {
                let err = io::Error::last_os_error();
                registry::take_pending(&PendingKey::Unix(me));
                return Err(err);
            }
            Ok(s)
        }
        Target::Tcp(addr) => {
            let bind = SocketAddr::new(addr.ip(), 0);
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(*addr),
                socket2::Type::STREAM,
                None,
            )?;
            sock.bind(&bind.into())?;
            let me = sock
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("no local address"))?;
            registry::add_pending(PendingKey::Tcp(rgtp::udp::canonical(me)), peer, local);
            if let Err(err) = sock.connect(&(*addr).into()) {
                registry::take_pending(&PendingKey::Tcp(rgtp::udp::canonical(me)));
                return Err(err);
            }
            let _ = sock.set_nodelay(true);
            Ok(OwnedFd::from(sock))
        }
    }
}

// ------------------------------------------------------------------ process hooks

/// atexit and fork handlers, registered once per process on first use.
fn ensure_process_hooks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !runtime::set_hooks(Box::new(ShimHooks)) {
            log::error("the connection runtime started before the shim could hook it");
        }
        // SAFETY: registering plain extern "C" functions.
        unsafe {
            libc::atexit(at_exit);
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        }
    });
}

extern "C" fn fork_prepare() {
    runtime::fork_prepare();
    registry::before_fork();
    std::mem::forget(OWNED.lock());
    std::mem::forget(LISTENERS.lock());
    std::mem::forget(SERVING.lock());
}

extern "C" fn fork_parent() {
    registry::after_fork();
    runtime::fork_parent();
    // SAFETY: locked and leaked by fork_prepare on this thread.
    unsafe {
        OWNED.force_unlock();
        LISTENERS.force_unlock();
        SERVING.force_unlock();
    }
}

extern "C" fn fork_child() {
    registry::after_fork();
    // SAFETY: locked and leaked by fork_prepare on this thread, which is the child's
    // only thread now.
    runtime::fork_child();
    // SAFETY: as above.
    unsafe {
        OWNED.force_unlock();
        LISTENERS.force_unlock();
        SERVING.force_unlock();
    }
    SERVING.lock().clear();
    // The engine threads did not come along: its fds here would only keep the app's
    // ends from seeing EOF (the parent's engine still serves them). Listening UDP
    // sockets stay, to be served if the parent exits.
    let listeners = LISTENERS.lock().clone();
    let fds = std::mem::take(&mut *OWNED.lock());
    for fd in fds {
        if !listeners.iter().any(|l| l.2 == fd) {
            // SAFETY: closing this process's copies of engine-owned fds.
            unsafe { libc::close(fd) };
        }
    }
    if listeners.is_empty() {
        return;
    }
    spawn_engine_thread("rgtp-adopt", move || {
        // A daemonizing server's parent exits right after fork: then the claim is free
        // and this process takes over. Workers whose parent lives on never do; if
        // several children outlive it, the kernel lets exactly one bind the claim.
        let mut waiting = listeners;
        while !waiting.is_empty() {
            waiting.retain(|(addr, target, fd)| match claim(*fd) {
                Ok(Some(c)) => {
                    adopt(*addr, target, *fd, c);
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    log::error(&format!("cannot claim the RGTP listener on {addr}: {e}"));
                    false
                }
            });
            std::thread::sleep(Duration::from_millis(25));
        }
    });
}

fn adopt(addr: SocketAddr, target: &Target, fd: RawFd, claim: OwnedFd) {
    // SAFETY: fd is this process's copy of the listener's UDP socket, kept open by
    // fork_child for this and owned by nothing else here.
    let sock = unsafe { std::net::UdpSocket::from_raw_fd(fd) };
    own(claim.into_raw_fd());
    match serve_listener(sock, addr, target) {
        Ok(()) => log::info(&format!("took over the RGTP listener on {addr}")),
        Err(e) => log::error(&format!(
            "cannot take over the RGTP listener on {addr}: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_ride_in_the_abstract_name() {
        for (p, l) in [
            ("10.1.2.3:4567", "0.0.0.0:80"),
            ("[2001:db8::7]:1", "[::1]:65535"),
        ] {
            let (p, l): (SocketAddr, SocketAddr) = (p.parse().unwrap(), l.parse().unwrap());
            let name = name_with_addrs(unique_name("c"), p, l);
            assert!(
                name.len() <= 107,
                "abstract names hold 107 bytes: {}",
                name.len()
            );
            assert_eq!(addrs_from_name(&name), Some((p, l)));
        }
        assert_eq!(addrs_from_name(&unique_name("c")), None);
        assert_eq!(addrs_from_name(b""), None);
    }
}

//! The shim's engine: carries emulated TCP connections over RGTP connections from the
//! in-process core, and bridges each to a real kernel stream fd that the app holds.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libc::{c_int, sockaddr, socklen_t};
use parking_lot::Mutex;

use crate::config::{self, Config};
use crate::guard::{self, set_errno};
use crate::log;
use crate::real;
use crate::registry::{self, Entry, Kind, PendingKey};
use crate::transport::{Engine, HandOver};

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

fn fail(errno: c_int) -> c_int {
    set_errno(errno);
    -1
}

fn errno_of(e: &io::Error) -> c_int {
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => libc::ECONNREFUSED,
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        io::ErrorKind::ConnectionReset => libc::ECONNRESET,
        io::ErrorKind::AddrInUse => libc::EADDRINUSE,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        _ => libc::EIO,
    }
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

// ------------------------------------------------------------------ engine

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

/// The process's engine, started on first use (and again in a forked child).
static ENGINE: Mutex<Option<Arc<Engine>>> = Mutex::new(None);

fn engine() -> io::Result<Arc<Engine>> {
    let mut g = ENGINE.lock();
    if let Some(e) = g.as_ref() {
        return Ok(e.clone());
    }
    let e = Engine::start(client_key().clone())?;
    *g = Some(e.clone());
    Ok(e)
}

/// Waits, at exit, until every connection has handed the app's last bytes to its
/// peer and they were acknowledged, at most RGTP_LINGER_MS.
pub fn linger_at_exit() {
    let Some(c) = config() else { return };
    let e = ENGINE.lock().clone();
    if let Some(e) = e {
        e.linger(c.linger);
    }
}

extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| guard::enter(linger_at_exit));
}

// ------------------------------------------------------------------ client

fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: valid array of two ints.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

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

fn client_key() -> &'static rgtp::keys::StaticKey {
    static K: OnceLock<rgtp::keys::StaticKey> = OnceLock::new();
    K.get_or_init(rgtp::keys::StaticKey::generate)
}

fn server_key() -> rgtp::keys::StaticKey {
    // A bad shim.key stops the process (exit 11) rather than change identity quietly.
    rgtp::keys::server_key_or_exit(&rgtp::keys::config_dir().join("shim.key"))
}

fn pinned_key(c: &Config, peer: &SocketAddr) -> Option<[u8; 32]> {
    let hp = rgtp::url::format_host_port(&peer.ip().to_string(), peer.port());
    c.pins.iter().find(|(h, _)| *h == hp).map(|(_, k)| *k)
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
    let peer_v = canonical(peer);
    log::debug(&format!("connect {peer_v} over RGTP"));
    if !c.fallback && is_nonblocking(fd) {
        return connect_nonblocking(c, fd, family, peer, peer_v);
    }
    let attempt = engine().and_then(|e| {
        e.connect(peer_v, c.connect_timeout, pinned_key(c, &peer_v))
            .map(|r| (e, r))
    });
    match attempt {
        Ok((e, (idx, id, local))) => {
            let local = SocketAddr::new(local_ip_for(&peer_v), local.port());
            match emulate_conn(fd, family, peer, local, false) {
                Ok((eng, ino, _)) => {
                    e.attach(idx, id, eng, ino);
                    0
                }
                Err(errno) => fail(errno),
            }
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

/// Puts one end of a new socketpair in place of the app's `fd` and records it as a
/// connection to `peer`; returns the engine's end, the app socket's inode and, with
/// `filled`, how many filler bytes the app's end holds (see `connect_nonblocking`).
fn emulate_conn(
    fd: c_int,
    family: c_int,
    peer: SocketAddr,
    local: SocketAddr,
    filled: bool,
) -> Result<(OwnedFd, Option<u64>, usize), c_int> {
    let (app, eng) = socketpair().map_err(|e| errno_of(&e))?;
    let skip = if filled { fill(app.as_raw_fd()) } else { 0 };
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
    let e = match engine() {
        Ok(e) => e,
        Err(err) => return fail(errno_of(&err)),
    };
    let local = SocketAddr::new(local_ip_for(&peer_v), 0);
    let (eng, ino, skip) = match emulate_conn(fd, family, peer, local, true) {
        Ok((eng, Some(ino), skip)) => (eng, ino, skip),
        Ok((_, None, _)) => return fail(libc::EBADF),
        Err(errno) => return fail(errno),
    };
    registry::set_connecting(ino, Some(registry::Connecting::InProgress));
    match e.connect_nonblocking(
        peer_v,
        c.connect_timeout,
        pinned_key(c, &peer_v),
        eng,
        Some(ino),
        skip,
    ) {
        Ok(local) => {
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
    crate::transport::set_nonblocking(fd);
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

fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
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
    engine()?.listen(addr, server_key(), hand_over_to(target, addr))
}

/// Connects an engine-side socket to the app's listener and bridges it to `stream`.
fn hand_over(peer: SocketAddr, target: &Target, local: SocketAddr) -> io::Result<OwnedFd> {
    match target {
        Target::Unix(listener_name) => {
            let s = unix_socket()?;
            let me = unique_name("c");
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
            registry::add_pending(PendingKey::Tcp(canonical(me)), peer, local);
            if let Err(err) = sock.connect(&(*addr).into()) {
                registry::take_pending(&PendingKey::Tcp(canonical(me)));
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
        // SAFETY: registering plain extern "C" functions.
        unsafe {
            libc::atexit(at_exit);
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        }
    });
}

extern "C" fn fork_prepare() {
    std::mem::forget(ENGINE.lock());
    registry::before_fork();
    std::mem::forget(OWNED.lock());
    std::mem::forget(LISTENERS.lock());
}

extern "C" fn fork_parent() {
    registry::after_fork();
    // SAFETY: locked and leaked by fork_prepare on this thread.
    unsafe {
        ENGINE.force_unlock();
        OWNED.force_unlock();
        LISTENERS.force_unlock();
    }
}

extern "C" fn fork_child() {
    registry::after_fork();
    // SAFETY: locked and leaked by fork_prepare on this thread, which is the child's
    // only thread now.
    unsafe {
        ENGINE.force_unlock();
        OWNED.force_unlock();
        LISTENERS.force_unlock();
    }
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
    *ENGINE.lock() = None;
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
    match engine() {
        Ok(e) => {
            own(claim.into_raw_fd());
            e.listen_on(sock, server_key(), hand_over_to(target, addr));
            log::info(&format!("took over the RGTP listener on {addr}"));
        }
        Err(e) => {
            std::mem::forget(sock);
            log::error(&format!(
                "cannot take over the RGTP listener on {addr}: {e}"
            ))
        }
    }
}

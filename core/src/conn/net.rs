//! A thread-based driver for connections over real UDP sockets.
//!
//! One engine thread per process owns every connection socket and runs every
//! [`Endpoint`]: it receives (batched, GRO), runs timers (a `timerfd`, so sub-millisecond
//! deadlines are kept), reads ICMP errors (`IP_RECVERR`: a connection attempt to a port
//! with nothing bound fails at once with `ConnectionRefused`) and pumps bridged fds. All
//! state sits behind one mutex; application threads lock it to read and write, and send
//! what their call produced themselves, so a small write leaves without waking the
//! engine. Blocking calls wait on a per-connection condition variable; each stream can
//! also expose an `eventfd` for `poll`/`epoll`.
//!
//! [`RgtpStream::bridge`] is the entry point for the LD_PRELOAD shim: the application
//! gets one end of a kernel stream (a socketpair or a loopback TCP connection), the
//! engine thread pumps bytes between the other end and the RGTP connection — EOF maps
//! to FIN and back, a reset to `SO_LINGER {1, 0}` + close (a TCP RST) and back — and
//! every `read`/`write`/`poll`/`epoll`/`sendfile`/fork on the application's fd works
//! natively.
//!
//! Not handled here (documented for the shim): the engine thread does not survive
//! `fork` into the child; a process that exits without [`flush_all`] loses bytes still
//! unacknowledged.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::mem::{size_of, zeroed};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{
    ConnConfig, ConnId, ConnState, ConnectOptions, Endpoint, EndpointConfig, Event, Readiness,
};
use crate::keys::StaticKey;
use crate::udp::{self, Receiver, Sender};

const TOKEN_WAKE: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const TOKEN_SOCK: u64 = 1 << 32;
const TOKEN_BRIDGE: u64 = 2 << 32;
/// Receive batches per socket per wakeup before others get a turn.
const RECV_ROUNDS: usize = 16;
const BRIDGE_CHUNK: usize = 64 * 1024;

fn os_err(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no pointer arguments; the result is checked before use.
    let fd = os_err(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd; failure (counter full) is
    // harmless: the fd is already readable.
    unsafe {
        libc::write(fd, &one as *const u64 as *const libc::c_void, 8);
    }
}

fn drain_fd(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64 from a non-blocking eventfd/timerfd.
    unsafe {
        libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8);
    }
}

fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll fd and a pointer to a live epoll_event.
    os_err(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

fn epoll_del(epfd: RawFd, fd: RawFd) {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: as above; failure (fd already gone) is harmless.
    unsafe {
        libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, &mut ev);
    }
}

fn set_nonblocking_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a caller-provided fd with integer arguments.
    let flags = os_err(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    os_err(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    os_err(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// IPv4-mapped IPv6 addresses become IPv4, so one peer always has one spelling.
fn canon(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

/// Reads the socket's error queue (`IP_RECVERR`); calls `f` with the destination of
/// every datagram that came back as "port unreachable".
fn drain_errqueue(sock: &UdpSocket, mut f: impl FnMut(SocketAddr)) {
    for _ in 0..64 {
        let mut buf = [0u8; 512];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: plain data; all-zero is valid.
        let mut name: libc::sockaddr_storage = unsafe { zeroed() };
        let mut control = [0u64; 64];
        // SAFETY: plain data; the pointers stored below outlive the recvmsg call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of::<[u64; 64]>();
        // SAFETY: valid fd and a fully initialised msghdr.
        let r = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return;
        }
        let mut refused = false;
        // SAFETY: walking the control messages the kernel wrote, within msg_controllen;
        // the payload of an IP(V6)_RECVERR message is a sock_extended_err.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let lvl = (*cmsg).cmsg_level;
                let ty = (*cmsg).cmsg_type;
                if (lvl == libc::SOL_IP && ty == libc::IP_RECVERR)
                    || (lvl == libc::SOL_IPV6 && ty == libc::IPV6_RECVERR)
                {
                    let ee = std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err
                    );
                    if ee.ee_errno == libc::ECONNREFUSED as u32 {
                        refused = true;
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if refused {
            if let Some(a) = crate::udp::from_sockaddr(&name) {
                f(canon(a));
            }
        }
    }
}

/// One UDP socket and its endpoint.
struct Sock {
    udp: Arc<UdpSocket>,
    ep: Endpoint,
    local: SocketAddr,
    /// A listener's socket is removed once the listener is dropped and its
    /// connections are gone.
    listener_dropped: bool,
    /// An application thread is blocked in poll(2) on this socket and will process
    /// what arrives itself (one at most; see `RgtpStream::wait`).
    poller: bool,
    accept_cv: Arc<Condvar>,
    accept_efd: Option<OwnedFd>,
}

struct Waiter {
    cv: Arc<Condvar>,
    /// The readiness fd handed to the application, if it asked for one.
    efd: Option<OwnedFd>,
    /// Wakes this stream's thread while it polls the socket directly.
    poll_efd: Option<Arc<OwnedFd>>,
}

/// What a bridge's owner can see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStatus {
    /// The RGTP connection is (or was) established.
    pub connected: bool,
    /// Both directions finished and the fd is closed.
    pub done: bool,
    /// Why the connection failed, if it did.
    pub error: Option<ErrorKind>,
}

struct BridgeShared {
    status: Mutex<BridgeStatus>,
    cv: Condvar,
}

/// Handle on a running bridge ([`RgtpStream::bridge`]).
#[derive(Clone)]
pub struct BridgeHandle {
    shared: Arc<BridgeShared>,
}

impl BridgeHandle {
    pub fn status(&self) -> BridgeStatus {
        *self.shared.status.lock()
    }
    /// Waits until the connection is established or failed (for a non-blocking
    /// connect's completion: `Ok` → POLLOUT with SO_ERROR 0). `TimedOut` if neither
    /// happened within `timeout`.
    pub fn wait_connected(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.status.lock();
        loop {
            if let Some(e) = st.error {
                if !st.connected {
                    return Err(e.into());
                }
            }
            if st.connected {
                return Ok(());
            }
            if self.shared.cv.wait_until(&mut st, deadline).timed_out() {
                return Err(ErrorKind::TimedOut.into());
            }
        }
    }
    /// Waits until the bridge finished; returns its final status.
    pub fn wait(&self, timeout: Duration) -> BridgeStatus {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.status.lock();
        while !st.done {
            if self.shared.cv.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
        *st
    }
}

struct Bridge {
    fd: OwnedFd,
    sock: usize,
    id: ConnId,
    /// Bytes read from the connection, not yet written to the fd.
    pending: Vec<u8>,
    pending_off: usize,
    fd_readable: bool,
    fd_writable: bool,
    /// The application finished writing: FIN sent.
    fd_eof: bool,
    /// The peer finished writing: the fd's write side is shut.
    conn_eof: bool,
    shared: Arc<BridgeShared>,
}

enum PumpEnd {
    Continue,
    /// Both directions finished.
    Done,
    /// The connection failed (reset to the application) or the application's fd did
    /// (reset to the peer).
    Failed(ErrorKind, bool),
}

impl Bridge {
    fn set_status(&self, f: impl FnOnce(&mut BridgeStatus)) {
        let mut s = self.shared.status.lock();
        f(&mut s);
        self.shared.cv.notify_all();
    }

    fn pump(&mut self, ep: &mut Endpoint, now: Instant, scratch: &mut [u8]) -> PumpEnd {
        let fd = self.fd.as_raw_fd();
        // Connection → fd.
        loop {
            if self.pending_off >= self.pending.len() {
                if self.conn_eof {
                    break;
                }
                self.pending.clear();
                self.pending_off = 0;
                match ep.read(self.id, scratch) {
                    Ok(0) => {
                        // SAFETY: shutdown on our own fd.
                        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                        self.conn_eof = true;
                        break;
                    }
                    Ok(n) => self.pending.extend_from_slice(&scratch[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return PumpEnd::Failed(e.kind(), false),
                }
            }
            if !self.fd_writable {
                break;
            }
            let buf = &self.pending[self.pending_off..];
            // SAFETY: writes from a live slice to our own fd.
            let r = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::WouldBlock => {
                        self.fd_writable = false;
                        break;
                    }
                    ErrorKind::Interrupted => continue,
                    // The application closed its end: nobody will read; reset the peer.
                    _ => return PumpEnd::Failed(ErrorKind::BrokenPipe, true),
                }
            }
            self.pending_off += r as usize;
        }
        // fd → connection.
        while self.fd_readable && !self.fd_eof {
            let room = match ep.readiness(self.id) {
                Some(r) if r.error.is_some() => {
                    return PumpEnd::Failed(r.error.unwrap_or(ErrorKind::Other), false)
                }
                Some(r) => r.writable_bytes as usize,
                None => return PumpEnd::Failed(ErrorKind::NotConnected, false),
            };
            if room == 0 {
                // A Writable event follows when credit opens or the handshake ends.
                ep.want_writable(self.id);
                break;
            }
            let n = room.min(scratch.len());
            // SAFETY: reads into a live buffer of at least `n` bytes from our own fd.
            let r = unsafe { libc::read(fd, scratch.as_mut_ptr() as *mut libc::c_void, n) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::WouldBlock => {
                        self.fd_readable = false;
                        break;
                    }
                    ErrorKind::Interrupted => continue,
                    _ => return PumpEnd::Failed(ErrorKind::ConnectionReset, true),
                }
            }
            if r == 0 {
                self.fd_eof = true;
                if let Err(e) = ep.shutdown_write(now, self.id) {
                    return PumpEnd::Failed(e.kind(), false);
                }
                break;
            }
            match ep.write(self.id, &scratch[..r as usize]) {
                Ok(w) if w == r as usize => {}
                Ok(_) | Err(_) => {
                    // Cannot happen within `room`; treat as a failed connection.
                    let k = ep
                        .readiness(self.id)
                        .and_then(|r| r.error)
                        .unwrap_or(ErrorKind::Other);
                    return PumpEnd::Failed(k, false);
                }
            }
        }
        if self.fd_eof && self.conn_eof && self.pending_off >= self.pending.len() {
            return PumpEnd::Done;
        }
        PumpEnd::Continue
    }
}

struct State {
    socks: Vec<Option<Sock>>,
    client_v4: Option<usize>,
    client_v6: Option<usize>,
    client_key: StaticKey,
    client_conn: ConnConfig,
    waiters: HashMap<(usize, ConnId), Waiter>,
    bridges: HashMap<u64, Bridge>,
    bridge_of: HashMap<(usize, ConnId), u64>,
    next_bridge: u64,
    to_pump: Vec<u64>,
    /// When the timerfd fires next.
    armed: Option<Instant>,
    scratch: Vec<u8>,
    /// Batched receiver, used by whichever thread holds the lock and reads a socket.
    rx: Receiver,
}

/// Reads what socket `i` holds (a bounded number of batches) into its endpoint, and
/// its error queue when `errors`.
fn receive(st: &mut State, i: usize, now: Instant, errors: bool) {
    let State { socks, rx, .. } = st;
    let Some(s) = socks.get_mut(i).and_then(|s| s.as_mut()) else {
        return;
    };
    let ep = &mut s.ep;
    if errors {
        drain_errqueue(&s.udp, |a| ep.handle_unreachable(now, a));
    }
    for _ in 0..RECV_ROUNDS {
        match rx.recv(&s.udp, |from, d| {
            if super::wire::is_conn_packet(d) {
                ep.handle(now, canon(from), d);
            }
        }) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("rgtp: recv: {e}");
                break;
            }
        }
    }
}

pub struct Engine {
    state: Mutex<State>,
    epfd: OwnedFd,
    wake: OwnedFd,
    timer: OwnedFd,
    sender: Sender,
    /// Notified whenever any connection made progress (for `flush_all`).
    progress: Condvar,
}

static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();

/// The process's engine, started on first use.
fn engine() -> io::Result<Arc<Engine>> {
    if let Some(e) = ENGINE.get() {
        return Ok(e.clone());
    }
    let e = Arc::new(Engine::new()?);
    match ENGINE.set(e.clone()) {
        Ok(()) => {
            let run = e.clone();
            std::thread::Builder::new()
                .name("rgtp-engine".into())
                .spawn(move || run.run())?;
            Ok(e)
        }
        // Another thread won the race; use its engine.
        Err(_) => ENGINE
            .get()
            .cloned()
            .ok_or_else(|| io::Error::other("engine")),
    }
}

/// Client connections' defaults (idle timeout, windows, ...) for this process. Applies
/// to connections started afterwards.
pub fn set_client_config(cfg: ConnConfig) -> io::Result<()> {
    engine()?.state.lock().client_conn = cfg;
    Ok(())
}

impl Engine {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; checked.
        let epfd = os_err(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: just created, owned here.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let wake = new_eventfd()?;
        // SAFETY: plain syscall; checked.
        let timer = os_err(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: just created, owned here.
        let timer = unsafe { OwnedFd::from_raw_fd(timer) };
        epoll_add(
            epfd.as_raw_fd(),
            wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_WAKE,
        )?;
        epoll_add(
            epfd.as_raw_fd(),
            timer.as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_TIMER,
        )?;
        Ok(Engine {
            state: Mutex::new(State {
                socks: Vec::new(),
                client_v4: None,
                client_v6: None,
                client_key: StaticKey::generate(),
                client_conn: ConnConfig::default(),
                waiters: HashMap::new(),
                bridges: HashMap::new(),
                bridge_of: HashMap::new(),
                next_bridge: 1,
                to_pump: Vec::new(),
                armed: None,
                scratch: vec![0; BRIDGE_CHUNK],
                rx: Receiver::default(),
            }),
            epfd,
            wake,
            timer,
            sender: Sender::default(),
            progress: Condvar::new(),
        })
    }

    fn wake(&self) {
        signal_eventfd(self.wake.as_raw_fd());
    }

    /// Sets the timerfd to `at` (relative to now); `None` disarms it.
    fn arm_timer(&self, st: &mut State, at: Option<Instant>) {
        if st.armed == at {
            return;
        }
        st.armed = at;
        let now = Instant::now();
        let d = match at {
            None => Duration::ZERO,
            Some(t) => t
                .saturating_duration_since(now)
                .max(Duration::from_nanos(1)),
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: valid timerfd and a pointer to a live itimerspec.
        unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
    }

    fn add_sock(&self, st: &mut State, udp: UdpSocket, ep: Endpoint) -> io::Result<usize> {
        let fd = udp.as_raw_fd();
        let local = udp.local_addr()?;
        let (lvl, opt) = if local.is_ipv4() {
            (libc::SOL_IP, libc::IP_RECVERR)
        } else {
            (libc::SOL_IPV6, libc::IPV6_RECVERR)
        };
        // Best effort: without it, refusals by ICMP are simply not seen.
        let _ = setsockopt_int(fd, lvl, opt, 1);
        let idx = match st.socks.iter().position(|s| s.is_none()) {
            Some(i) => i,
            None => {
                st.socks.push(None);
                st.socks.len() - 1
            }
        };
        epoll_add(
            self.epfd.as_raw_fd(),
            fd,
            libc::EPOLLIN as u32,
            TOKEN_SOCK | idx as u64,
        )?;
        st.socks[idx] = Some(Sock {
            udp: Arc::new(udp),
            ep,
            local,
            listener_dropped: false,
            poller: false,
            accept_cv: Arc::new(Condvar::new()),
            accept_efd: None,
        });
        Ok(idx)
    }

    fn client_sock(&self, st: &mut State, v6: bool) -> io::Result<usize> {
        if let Some(i) = if v6 { st.client_v6 } else { st.client_v4 } {
            return Ok(i);
        }
        let bind: SocketAddr = if v6 {
            "[::]:0".parse().map_err(io::Error::other)?
        } else {
            "0.0.0.0:0".parse().map_err(io::Error::other)?
        };
        let udp = udp::bind(bind)?;
        let mut cfg = EndpointConfig::new(st.client_key.clone());
        cfg.conn = st.client_conn.clone();
        let ep = Endpoint::new(cfg, Instant::now());
        let i = self.add_sock(st, udp, ep)?;
        if v6 {
            st.client_v6 = Some(i);
        } else {
            st.client_v4 = Some(i);
        }
        Ok(i)
    }

    /// After anything touched socket `i`'s endpoint: send what it produced, deliver its
    /// events, and keep the timer right. `engine_thread` says who calls.
    fn after(&self, st: &mut State, i: usize, engine_thread: bool) {
        let now = Instant::now();
        let State {
            socks,
            waiters,
            bridge_of,
            to_pump,
            ..
        } = &mut *st;
        let Some(s) = socks.get_mut(i).and_then(|s| s.as_mut()) else {
            return;
        };
        while let Some(t) = s.ep.poll_transmit(now) {
            if let Err(e) = self.sender.send(&s.udp, &t) {
                tracing::debug!("send to {}: {e}", t.dest);
            }
        }
        let mut any = false;
        let mut pump = false;
        while let Some((id, ev)) = s.ep.poll_event() {
            any = true;
            if let Some(&b) = bridge_of.get(&(i, id)) {
                to_pump.push(b);
                pump = true;
            }
            if ev == Event::Incoming {
                s.accept_cv.notify_all();
                if let Some(fd) = &s.accept_efd {
                    signal_eventfd(fd.as_raw_fd());
                }
                continue;
            }
            if let Some(w) = waiters.get(&(i, id)) {
                w.cv.notify_all();
                if let Some(fd) = &w.efd {
                    signal_eventfd(fd.as_raw_fd());
                }
                if let Some(fd) = &w.poll_efd {
                    signal_eventfd(fd.as_raw_fd());
                }
            }
        }
        if any {
            self.progress.notify_all();
        }
        let next = s.ep.poll_timeout();
        if let Some(t) = next {
            if st.armed.is_none_or(|a| t < a) {
                self.arm_timer(st, Some(t));
            }
        }
        if pump && !engine_thread {
            self.wake();
        }
    }

    fn run(self: Arc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: valid epoll fd and a buffer of `events.len()` epoll_events.
            let n = unsafe {
                libc::epoll_wait(
                    self.epfd.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    -1,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!("rgtp engine: epoll_wait: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let mut guard = self.state.lock();
            let st = &mut *guard;
            let now = Instant::now();
            for ev in &events[..n as usize] {
                let token = ev.u64;
                let flags = ev.events;
                if token == TOKEN_WAKE {
                    drain_fd(self.wake.as_raw_fd());
                } else if token == TOKEN_TIMER {
                    drain_fd(self.timer.as_raw_fd());
                    st.armed = None;
                } else if token & TOKEN_BRIDGE != 0 && token >= TOKEN_BRIDGE {
                    let b = token - TOKEN_BRIDGE;
                    if let Some(br) = st.bridges.get_mut(&b) {
                        if flags
                            & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR)
                                as u32
                            != 0
                        {
                            br.fd_readable = true;
                        }
                        if flags & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                            br.fd_writable = true;
                        }
                        st.to_pump.push(b);
                    }
                } else if token >= TOKEN_SOCK {
                    let i = (token - TOKEN_SOCK) as usize;
                    receive(st, i, now, flags & libc::EPOLLERR as u32 != 0);
                }
            }
            self.service(st, now);
        }
    }

    /// Timers, bridges, output and events for every socket.
    fn service(&self, st: &mut State, now: Instant) {
        for s in st.socks.iter_mut().flatten() {
            if s.ep.poll_timeout().is_some_and(|t| t <= now) {
                s.ep.handle_timeout(now);
            }
        }
        // Pump bridges until no event asks for more (bounded).
        for _ in 0..8 {
            for i in 0..st.socks.len() {
                self.after(st, i, true);
            }
            if st.to_pump.is_empty() {
                break;
            }
            let mut list = std::mem::take(&mut st.to_pump);
            list.sort_unstable();
            list.dedup();
            for b in list {
                self.pump_bridge(st, b, now);
            }
        }
        // Forget listener sockets nobody uses any more.
        for i in 0..st.socks.len() {
            let dead = matches!(&st.socks[i], Some(s) if s.listener_dropped && s.ep.connection_count() == 0);
            if dead {
                if let Some(s) = st.socks[i].take() {
                    epoll_del(self.epfd.as_raw_fd(), s.udp.as_raw_fd());
                }
            }
        }
        let next = st
            .socks
            .iter_mut()
            .flatten()
            .filter_map(|s| s.ep.poll_timeout())
            .min();
        // The timerfd fired or is later than needed: set it exactly.
        self.arm_timer(st, next);
    }

    fn pump_bridge(&self, st: &mut State, b: u64, now: Instant) {
        let State {
            socks,
            bridges,
            bridge_of,
            scratch,
            ..
        } = st;
        let Some(br) = bridges.get_mut(&b) else {
            return;
        };
        let Some(s) = socks.get_mut(br.sock).and_then(|s| s.as_mut()) else {
            return;
        };
        let end = br.pump(&mut s.ep, now, scratch);
        let state = s.ep.state(br.id);
        if matches!(
            state,
            Some(ConnState::Connected) | Some(ConnState::Closed { error: None })
        ) && !br.shared.status.lock().connected
        {
            br.set_status(|st| st.connected = true);
        }
        match end {
            PumpEnd::Continue => {}
            PumpEnd::Done => {
                s.ep.close(now, br.id);
                if let Some(br) = bridges.remove(&b) {
                    bridge_of.remove(&(br.sock, br.id));
                    epoll_del(self.epfd.as_raw_fd(), br.fd.as_raw_fd());
                    br.set_status(|st| st.done = true);
                }
            }
            PumpEnd::Failed(kind, reset_peer) => {
                if reset_peer {
                    s.ep.abort(now, br.id);
                } else {
                    s.ep.close(now, br.id);
                }
                if let Some(br) = bridges.remove(&b) {
                    bridge_of.remove(&(br.sock, br.id));
                    epoll_del(self.epfd.as_raw_fd(), br.fd.as_raw_fd());
                    if !reset_peer {
                        // The peer reset or vanished: a TCP peer of ours sees an RST.
                        let lg = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        // SAFETY: setsockopt with a pointer to a live linger struct; on
                        // a non-TCP fd it fails harmlessly.
                        unsafe {
                            libc::setsockopt(
                                br.fd.as_raw_fd(),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                &lg as *const libc::linger as *const libc::c_void,
                                size_of::<libc::linger>() as libc::socklen_t,
                            );
                        }
                    }
                    br.set_status(|st| {
                        st.done = true;
                        st.error = Some(kind);
                    });
                }
            }
        }
    }
}

/// Waits until every connection of this process has had everything it wrote (and
/// everything bridged fds hold) acknowledged by its peer, or failed, or `timeout`
/// passed. Returns whether everything was delivered. For exit handlers: an in-process
/// engine dies with the process, unlike the kernel's TCP.
pub fn flush_all(timeout: Duration) -> bool {
    let Some(e) = ENGINE.get() else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    let mut st = e.state.lock();
    loop {
        if !pending_work(&mut st) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // Re-check now and then too: bytes can sit in a bridged fd without an event.
        let _ = e
            .progress
            .wait_until(&mut st, deadline.min(now + Duration::from_millis(20)));
    }
}

fn pending_work(st: &mut State) -> bool {
    for b in st.bridges.values() {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int.
        let r = unsafe { libc::ioctl(b.fd.as_raw_fd(), libc::FIONREAD, &mut n) };
        if r == 0 && n > 0 && !b.fd_eof {
            return true;
        }
    }
    for s in st.socks.iter_mut().flatten() {
        for id in s.ep.conn_ids() {
            match s.ep.state(id) {
                Some(ConnState::Connected) if s.ep.send_complete(id) == Some(false) => {
                    return true;
                }
                Some(ConnState::Connecting) => return true,
                _ => {}
            }
        }
    }
    false
}

/// Options for [`RgtpStream::connect_with`].
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Require this server static key.
    pub server_key: Option<[u8; 32]>,
    /// Settings for this connection (default: the process's client settings).
    pub config: Option<ConnConfig>,
}

/// A connection over RGTP: `Read + Write`, blocking by default.
pub struct RgtpStream {
    engine: Arc<Engine>,
    sock: usize,
    id: ConnId,
    cv: Arc<Condvar>,
    nonblocking: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    read_shut: bool,
    peer: SocketAddr,
    local: SocketAddr,
    released: bool,
}

impl std::fmt::Debug for RgtpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RgtpStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("id", &self.id)
            .finish()
    }
}

fn resolve(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "no address"))
}

impl RgtpStream {
    /// Connects and waits for the handshake (at most `timeout`).
    pub fn connect(addr: impl ToSocketAddrs, timeout: Duration) -> io::Result<RgtpStream> {
        Self::connect_with(addr, timeout, StreamOptions::default())
    }

    pub fn connect_with(
        addr: impl ToSocketAddrs,
        timeout: Duration,
        opts: StreamOptions,
    ) -> io::Result<RgtpStream> {
        let s = Self::connect_nonblocking(addr, opts)?;
        match s.wait_connected(timeout) {
            Ok(()) => Ok(s),
            Err(e) => {
                s.abort();
                Err(e)
            }
        }
    }

    /// Starts connecting and returns at once (state `Connecting`): reads and writes
    /// return `WouldBlock` until the handshake finishes (`wait_connected`,
    /// `readiness_fd`), then behave as usual.
    pub fn connect_nonblocking(
        addr: impl ToSocketAddrs,
        opts: StreamOptions,
    ) -> io::Result<RgtpStream> {
        let addr = canon(resolve(addr)?);
        let engine = engine()?;
        let mut st = engine.state.lock();
        let i = engine.client_sock(&mut st, addr.is_ipv6())?;
        let now = Instant::now();
        let cfg = opts.config.clone().or_else(|| Some(st.client_conn.clone()));
        let s = st.socks[i]
            .as_mut()
            .ok_or_else(|| io::Error::other("socket gone"))?;
        let id = s.ep.connect_with(
            now,
            addr,
            ConnectOptions {
                server_key: opts.server_key,
                config: cfg,
            },
        )?;
        let local = s.local;
        let cv = Arc::new(Condvar::new());
        st.waiters.insert(
            (i, id),
            Waiter {
                cv: cv.clone(),
                efd: None,
                poll_efd: None,
            },
        );
        engine.after(&mut st, i, false);
        drop(st);
        Ok(RgtpStream {
            engine,
            sock: i,
            id,
            cv,
            nonblocking: false,
            read_timeout: None,
            write_timeout: None,
            read_shut: false,
            peer: addr,
            local,
            released: false,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.engine.state.lock()
    }

    fn with_ep<T>(&self, st: &mut State, f: impl FnOnce(&mut Endpoint) -> T) -> io::Result<T> {
        let s = st
            .socks
            .get_mut(self.sock)
            .and_then(|s| s.as_mut())
            .ok_or_else(|| io::Error::from(ErrorKind::NotConnected))?;
        Ok(f(&mut s.ep))
    }

    /// Waits until the handshake finished (`Ok`) or failed (its error).
    pub fn wait_connected(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            match self.with_ep(&mut st, |ep| ep.state(self.id))? {
                Some(ConnState::Connected) | Some(ConnState::Closed { error: None }) => {
                    return Ok(())
                }
                Some(ConnState::Closed { error: Some(e) }) => return Err(e.into()),
                Some(ConnState::Connecting) => {}
                None => return Err(ErrorKind::NotConnected.into()),
            }
            self.wait(&mut st, Some(deadline))?;
        }
    }

    /// Connection state now.
    pub fn state(&self) -> ConnState {
        let mut st = self.lock();
        self.with_ep(&mut st, |ep| ep.state(self.id))
            .ok()
            .flatten()
            .unwrap_or(ConnState::Closed {
                error: Some(ErrorKind::NotConnected),
            })
    }

    /// The connection's error, if it failed (as `TcpStream::take_error` / SO_ERROR).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        Ok(match self.state() {
            ConnState::Closed { error: Some(e) } => Some(e.into()),
            _ => None,
        })
    }

    /// Readiness in `poll(2)` terms.
    pub fn readiness(&self) -> Readiness {
        let mut st = self.lock();
        let mut r = self
            .with_ep(&mut st, |ep| ep.readiness(self.id))
            .ok()
            .flatten()
            .unwrap_or_default();
        if self.read_shut {
            r.readable = true;
        }
        r
    }

    /// An eventfd that becomes readable whenever this connection has news (connected,
    /// readable, writable, closed). Poll it, then call
    /// [`clear_readiness`](Self::clear_readiness) and [`readiness`](Self::readiness).
    /// Owned by the stream.
    pub fn readiness_fd(&self) -> io::Result<RawFd> {
        let mut st = self.lock();
        let w = st
            .waiters
            .get_mut(&(self.sock, self.id))
            .ok_or_else(|| io::Error::from(ErrorKind::NotConnected))?;
        if w.efd.is_none() {
            let fd = new_eventfd()?;
            // Start readable, so the first poll re-checks the state.
            signal_eventfd(fd.as_raw_fd());
            w.efd = Some(fd);
        }
        Ok(w.efd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1))
    }

    /// Resets the readiness eventfd (after a poll said it is readable). Call before
    /// re-checking readiness and before reading/writing until `WouldBlock`.
    pub fn clear_readiness(&self) {
        let st = self.lock();
        if let Some(fd) = st
            .waiters
            .get(&(self.sock, self.id))
            .and_then(|w| w.efd.as_ref())
        {
            drain_fd(fd.as_raw_fd());
        }
    }

    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        self.nonblocking = on;
        Ok(())
    }
    pub fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.read_timeout = t;
        Ok(())
    }
    pub fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.write_timeout = t;
        Ok(())
    }
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        let mut st = self.lock();
        Ok(self
            .with_ep(&mut st, |ep| ep.peer_addr(self.id))?
            .unwrap_or(self.peer))
    }
    /// The local UDP socket's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
    /// The peer's Noise static key.
    pub fn peer_key(&self) -> Option<[u8; 32]> {
        let mut st = self.lock();
        self.with_ep(&mut st, |ep| ep.peer_key(self.id))
            .ok()
            .flatten()
    }
    /// Statistics of this connection.
    pub fn stats(&self) -> Option<super::ConnStats> {
        let mut st = self.lock();
        self.with_ep(&mut st, |ep| ep.conn_stats(self.id))
            .ok()
            .flatten()
    }

    /// Half-close (`Write`): the peer reads EOF after the last byte, and may still
    /// write. `Read`: further reads return EOF locally. `Both`: both.
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.read_shut = true;
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            let mut st = self.lock();
            let r = self.with_ep(&mut st, |ep| ep.shutdown_write(Instant::now(), self.id))?;
            self.engine.after(&mut st, self.sock, false);
            r?;
        }
        Ok(())
    }

    /// Runs a read or write on the endpoint; when it would block, waits (unless
    /// non-blocking) up to `timeout` and retries; afterwards lets the engine send
    /// what the operation made due (data, or credit opened by a read).
    fn io_op(
        &self,
        timeout: Option<Duration>,
        mut op: impl FnMut(&mut Endpoint) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let deadline = Self::deadline(timeout);
        let mut st = self.lock();
        loop {
            match self.with_ep(&mut st, &mut op)? {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if self.nonblocking {
                        return Err(e);
                    }
                    self.wait(&mut st, deadline)
                        .map_err(|_| io::Error::from(ErrorKind::WouldBlock))?;
                }
                r => {
                    self.engine.after(&mut st, self.sock, false);
                    return r;
                }
            }
        }
    }

    fn deadline(t: Option<Duration>) -> Option<Instant> {
        t.map(|d| Instant::now() + d)
    }

    /// Blocks until something may have changed for this stream (or `deadline`).
    ///
    /// Leader/follower: if no other application thread does, this thread polls the
    /// UDP socket itself and processes what arrives, so a datagram wakes the reader
    /// directly, as with TCP, instead of waking the engine thread, which then wakes
    /// the reader (one thread handoff less per direction). Others wait on their
    /// condition variable; the engine thread keeps serving everything else.
    fn wait(&self, st: &mut MutexGuard<'_, State>, deadline: Option<Instant>) -> io::Result<()> {
        let poll_ok = matches!(st.socks.get(self.sock), Some(Some(s)) if !s.poller);
        if !poll_ok {
            match deadline {
                Some(d) => {
                    if self.cv.wait_until(st, d).timed_out() {
                        return Err(ErrorKind::TimedOut.into());
                    }
                }
                None => self.cv.wait(st),
            }
            return Ok(());
        }
        let efd = {
            let w = st
                .waiters
                .get_mut(&(self.sock, self.id))
                .ok_or_else(|| io::Error::from(ErrorKind::NotConnected))?;
            if w.poll_efd.is_none() {
                w.poll_efd = Some(Arc::new(new_eventfd()?));
            }
            w.poll_efd
                .clone()
                .ok_or_else(|| io::Error::from(ErrorKind::Other))?
        };
        // Everything signalled so far is already visible to the caller (signals are
        // sent under the lock we hold): start afresh.
        drain_fd(efd.as_raw_fd());
        let udp = match st.socks[self.sock].as_mut() {
            Some(s) => {
                s.poller = true;
                s.udp.clone()
            }
            None => return Err(ErrorKind::NotConnected.into()),
        };
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
            }
        };
        let mut fds = [
            libc::pollfd {
                fd: udp.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: efd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds in a live array.
        let r = MutexGuard::unlocked(st, || unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) });
        if let Some(s) = st.socks[self.sock].as_mut() {
            s.poller = false;
        }
        let now = Instant::now();
        if r > 0 && fds[0].revents != 0 {
            receive(st, self.sock, now, fds[0].revents & libc::POLLERR != 0);
            self.engine.after(st, self.sock, false);
        }
        if fds[1].revents != 0 {
            drain_fd(efd.as_raw_fd());
        }
        if r == 0 && deadline.is_some_and(|d| now >= d) {
            return Err(ErrorKind::TimedOut.into());
        }
        Ok(())
    }

    /// Waits until the peer acknowledged every byte written so far (and the FIN after
    /// a shutdown), the connection failed, or `timeout` passed.
    pub fn wait_acked(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            match self.with_ep(&mut st, |ep| (ep.send_complete(self.id), ep.state(self.id)))? {
                (Some(true), _) => return Ok(()),
                (_, Some(ConnState::Closed { error: Some(e) })) => return Err(e.into()),
                (None, _) => return Err(ErrorKind::NotConnected.into()),
                _ => {}
            }
            self.wait(&mut st, Some(deadline))?;
        }
    }

    /// Graceful close with linger: FIN after the last byte, then waits (at most
    /// `linger`) until the peer acknowledged everything. `Ok` only if it did.
    pub fn close(mut self, linger: Duration) -> io::Result<()> {
        let r = self
            .shutdown(Shutdown::Write)
            .and_then(|()| self.wait_acked(linger));
        self.release(false);
        r
    }

    /// Resets the connection: the peer's reads and writes fail with `ConnectionReset`.
    pub fn abort(mut self) {
        self.release(true);
    }

    fn release(&mut self, abort: bool) {
        if self.released {
            return;
        }
        self.released = true;
        let mut st = self.lock();
        st.waiters.remove(&(self.sock, self.id));
        let now = Instant::now();
        if let Some(s) = st.socks.get_mut(self.sock).and_then(|s| s.as_mut()) {
            if abort {
                s.ep.abort(now, self.id);
            } else {
                s.ep.close(now, self.id);
            }
        }
        self.engine.after(&mut st, self.sock, false);
    }

    /// Hands the connection to the engine thread, which pumps bytes between it and
    /// `fd` (one end of a socketpair or a TCP connection whose other end the
    /// application holds) until both directions are closed: EOF on `fd` sends a FIN,
    /// the peer's FIN shuts `fd`'s write side; a reset from the peer resets `fd`
    /// (`SO_LINGER {1, 0}` then close: a TCP peer sees ECONNRESET), an error on `fd`
    /// resets the peer. The fd is closed when the bridge ends. Works on a stream that
    /// is still connecting (bytes the application writes meanwhile wait in `fd`).
    pub fn bridge(mut self, fd: OwnedFd) -> io::Result<BridgeHandle> {
        set_nonblocking_fd(fd.as_raw_fd())?;
        let shared = Arc::new(BridgeShared {
            status: Mutex::new(BridgeStatus::default()),
            cv: Condvar::new(),
        });
        let engine = self.engine.clone();
        let mut st = engine.state.lock();
        let b = st.next_bridge;
        st.next_bridge += 1;
        epoll_add(
            engine.epfd.as_raw_fd(),
            fd.as_raw_fd(),
            (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            TOKEN_BRIDGE + b,
        )?;
        st.waiters.remove(&(self.sock, self.id));
        st.bridges.insert(
            b,
            Bridge {
                fd,
                sock: self.sock,
                id: self.id,
                pending: Vec::new(),
                pending_off: 0,
                fd_readable: true,
                fd_writable: true,
                fd_eof: false,
                conn_eof: false,
                shared: shared.clone(),
            },
        );
        st.bridge_of.insert((self.sock, self.id), b);
        st.to_pump.push(b);
        // The bridge owns the connection now.
        self.released = true;
        drop(st);
        engine.wake();
        Ok(BridgeHandle { shared })
    }

    /// Spawns a bridge over one end of a new `socketpair(AF_UNIX, SOCK_STREAM)` and
    /// returns the other end for the application.
    pub fn bridge_socketpair(self) -> io::Result<(OwnedFd, BridgeHandle)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: socketpair writes two fds into a live array.
        os_err(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: both fds were just created and are owned by nobody else.
        let (app, ours) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let h = self.bridge(ours)?;
        Ok((app, h))
    }
}

impl Read for RgtpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read_shut || buf.is_empty() {
            return Ok(0);
        }
        // Reading may open credit worth announcing (`io_op` sends it).
        let id = self.id;
        self.io_op(self.read_timeout, |ep| ep.read(id, buf))
    }
}

impl Write for RgtpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let id = self.id;
        self.io_op(self.write_timeout, |ep| ep.write(id, buf))
    }

    /// Bytes are with the protocol once `write` returns (as with TCP); use
    /// [`RgtpStream::wait_acked`] to wait for the peer's acknowledgement.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for RgtpStream {
    /// Closes gracefully in the background (the engine keeps delivering buffered bytes
    /// for up to the configured linger time).
    fn drop(&mut self) {
        self.release(false);
    }
}

/// Options for [`RgtpListener::bind_with`].
#[derive(Debug, Clone, Default)]
pub struct ListenerOptions {
    /// The server's identity (clients may pin its public key); default: a new key.
    pub key: Option<StaticKey>,
    /// Settings for accepted connections.
    pub config: Option<ConnConfig>,
    /// Handshakes per second before RETRY cookies are demanded (default 1000).
    pub retry_threshold: Option<u32>,
}

/// Accepts RGTP connections on a UDP port.
pub struct RgtpListener {
    engine: Arc<Engine>,
    sock: usize,
    cv: Arc<Condvar>,
    local: SocketAddr,
    public_key: [u8; 32],
    nonblocking: bool,
}

impl std::fmt::Debug for RgtpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RgtpListener")
            .field("local", &self.local)
            .finish()
    }
}

impl RgtpListener {
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<RgtpListener> {
        Self::bind_with(addr, ListenerOptions::default())
    }

    pub fn bind_with(addr: impl ToSocketAddrs, opts: ListenerOptions) -> io::Result<RgtpListener> {
        let addr = resolve(addr)?;
        let engine = engine()?;
        let udp = udp::bind(addr)?;
        let key = opts.key.unwrap_or_else(StaticKey::generate);
        let public_key = key.public;
        let mut cfg = EndpointConfig::new(key);
        if let Some(c) = opts.config {
            cfg.conn = c;
        }
        if let Some(r) = opts.retry_threshold {
            cfg.retry_threshold = r;
        }
        let mut ep = Endpoint::new(cfg, Instant::now());
        ep.set_listening(true);
        let mut st = engine.state.lock();
        let i = engine.add_sock(&mut st, udp, ep)?;
        let (local, cv) = {
            let s = st.socks[i]
                .as_ref()
                .ok_or_else(|| io::Error::other("socket gone"))?;
            (s.local, s.accept_cv.clone())
        };
        drop(st);
        Ok(RgtpListener {
            engine,
            sock: i,
            cv,
            local,
            public_key,
            nonblocking: false,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// The listener's static public key (what clients pin).
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        self.nonblocking = on;
        Ok(())
    }

    /// An eventfd that becomes readable when a connection may be waiting; drain it
    /// with [`clear_readiness`](Self::clear_readiness), then `accept` until
    /// `WouldBlock`.
    pub fn readiness_fd(&self) -> io::Result<RawFd> {
        let mut st = self.engine.state.lock();
        let s = st.socks[self.sock]
            .as_mut()
            .ok_or_else(|| io::Error::from(ErrorKind::NotConnected))?;
        if s.accept_efd.is_none() {
            let fd = new_eventfd()?;
            signal_eventfd(fd.as_raw_fd());
            s.accept_efd = Some(fd);
        }
        Ok(s.accept_efd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1))
    }

    pub fn clear_readiness(&self) {
        let st = self.engine.state.lock();
        if let Some(fd) = st.socks[self.sock]
            .as_ref()
            .and_then(|s| s.accept_efd.as_ref())
        {
            drain_fd(fd.as_raw_fd());
        }
    }

    /// Waits for (or, non-blocking, checks for) an established connection.
    pub fn accept(&self) -> io::Result<(RgtpStream, SocketAddr)> {
        let mut st = self.engine.state.lock();
        loop {
            let s = st.socks[self.sock]
                .as_mut()
                .ok_or_else(|| io::Error::from(ErrorKind::NotConnected))?;
            if let Some(id) = s.ep.accept() {
                let peer = s.ep.peer_addr(id).unwrap_or(self.local);
                let cv = Arc::new(Condvar::new());
                st.waiters.insert(
                    (self.sock, id),
                    Waiter {
                        cv: cv.clone(),
                        efd: None,
                        poll_efd: None,
                    },
                );
                let stream = RgtpStream {
                    engine: self.engine.clone(),
                    sock: self.sock,
                    id,
                    cv,
                    nonblocking: false,
                    read_timeout: None,
                    write_timeout: None,
                    read_shut: false,
                    peer,
                    local: self.local,
                    released: false,
                };
                // Events that arrived before the waiter existed are not lost: the
                // stream's calls check the state before waiting.
                return Ok((stream, peer));
            }
            if self.nonblocking {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.cv.wait(&mut st);
        }
    }

    /// An iterator over incoming connections (blocking).
    pub fn incoming(&self) -> impl Iterator<Item = io::Result<RgtpStream>> + '_ {
        std::iter::from_fn(move || Some(self.accept().map(|(s, _)| s)))
    }
}

impl Drop for RgtpListener {
    /// Stops accepting: further connection attempts are refused. Accepted connections
    /// carry on; the socket goes once they are all gone.
    fn drop(&mut self) {
        let mut st = self.engine.state.lock();
        if let Some(s) = st.socks[self.sock].as_mut() {
            s.ep.set_listening(false);
            s.listener_dropped = true;
            // Refuse what is queued but never accepted.
            let now = Instant::now();
            while let Some(id) = s.ep.accept() {
                s.ep.abort(now, id);
            }
        }
        self.engine.after(&mut st, self.sock, false);
        drop(st);
        self.engine.wake();
    }
}

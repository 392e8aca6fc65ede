//! The shim's RGTP engine: one thread per process that owns the UDP sockets, drives
//! the sans-IO connection endpoints from `rgtp::conn`, and pumps bytes between each
//! RGTP connection and its kernel stream fd (the engine's end of the app's socket).
//!
//! One poll loop serves every connection: no thread per connection, and back-pressure
//! both ways falls out of the buffers (a full RGTP window stops reading the fd; a full
//! fd stops reading the connection, so the peer's credit runs out).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rgtp::conn::{ConnId, Endpoint, EndpointConfig, Event};
use rgtp::keys::StaticKey;
use rgtp::udp::{Receiver, Sender};

use crate::log;

/// What to do with a new incoming connection: make an engine-side fd the app's
/// listener will accept, and record what the app should see.
pub type HandOver = Arc<dyn Fn(SocketAddr) -> io::Result<OwnedFd> + Send + Sync>;

struct Ep {
    sock: UdpSocket,
    ep: Endpoint,
    hand_over: Option<HandOver>,
}

struct Bridge {
    fd: OwnedFd,
    app_ino: Option<u64>,
    /// What one read from the app took and the connection did not (yet), from
    /// `up_off`: the fd is not read again until it has all gone.
    up: Vec<u8>,
    up_off: usize,
    /// The app will write no more (EOF on its socket).
    fd_eof: bool,
    fin_sent: bool,
    /// The app's socket took no more of what the connection holds for it: wait for
    /// POLLOUT. (Those bytes stay in the connection, under its flow control, and go
    /// to the socket from there without an extra copy.)
    fd_full: bool,
    /// The peer finished its direction.
    conn_eof: bool,
    fd_wr_shut: bool,
    /// The connection failed or was reset.
    dead: bool,
    /// A non-blocking connect's handshake is under way, until this deadline: the fd
    /// is left alone (the app sees it unwritable) until it completes.
    connecting: Option<Instant>,
    /// Filler bytes the app's end holds to look unwritable while connecting; read and
    /// dropped before the app's own bytes.
    skip: usize,
}

impl Bridge {
    /// Takes the engine's end `fd` (non-blocking, closed in forked children).
    fn new(fd: OwnedFd, app_ino: Option<u64>) -> Bridge {
        set_nonblocking(fd.as_raw_fd());
        crate::engine::own(fd.as_raw_fd());
        Bridge {
            fd,
            app_ino,
            up: Vec::new(),
            up_off: 0,
            fd_eof: false,
            fin_sent: false,
            fd_full: false,
            conn_eof: false,
            fd_wr_shut: false,
            dead: false,
            connecting: None,
            skip: 0,
        }
    }

    fn up_pending(&self) -> bool {
        self.up_off < self.up.len()
    }

    /// Reads and drops what is left of the filler; true once it is all gone.
    fn drain_skip(&mut self, buf: &mut [u8]) -> bool {
        while self.skip > 0 {
            let want = self.skip.min(buf.len());
            // SAFETY: reading into our own buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            if n <= 0 {
                return false;
            }
            self.skip -= n as usize;
        }
        true
    }

    /// A non-blocking connect failed: SO_ERROR says why, and the app's end turns
    /// writable and hung up, as a failed TCP connect does.
    fn fail_connect(&mut self, errno: libc::c_int, buf: &mut [u8]) {
        self.connecting = None;
        if let Some(ino) = self.app_ino.take() {
            // Kept past the bridge (app_ino taken): the app reads it after we are gone.
            crate::registry::set_connecting(ino, Some(crate::registry::Connecting::Failed(errno)));
        }
        self.drain_skip(buf);
        self.end();
    }

    /// The connection is gone: the app's reads and writes on its socket end.
    fn end(&mut self) {
        self.dead = true;
        // SAFETY: valid fd (ours until the bridge is dropped).
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

#[derive(Default)]
struct Inner {
    eps: Vec<Ep>,
    client_ep: [Option<usize>; 2],
    bridges: HashMap<(usize, ConnId), Bridge>,
    connecting: HashMap<(usize, ConnId), Option<io::Result<()>>>,
    exiting: bool,
}

pub struct Engine {
    inner: Mutex<Inner>,
    cond: Condvar,
    wake: OwnedFd,
    client_key: StaticKey,
}

impl Engine {
    pub fn start(client_key: StaticKey) -> io::Result<Arc<Engine>> {
        // SAFETY: plain eventfd creation.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let wake = unsafe { OwnedFd::from_raw_fd(efd) };
        crate::engine::own(wake.as_raw_fd());
        let e = Arc::new(Engine {
            inner: Mutex::new(Inner::default()),
            cond: Condvar::new(),
            wake,
            client_key,
        });
        let e2 = e.clone();
        std::thread::Builder::new()
            .name("rgtp-engine".into())
            .spawn(move || {
                crate::guard::mark_engine_thread();
                e2.run();
            })?;
        Ok(e)
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    fn new_ep(
        &self,
        inner: &mut Inner,
        bind: SocketAddr,
        key: StaticKey,
        listening: bool,
    ) -> io::Result<usize> {
        let sock = rgtp::udp::bind(bind)?;
        Ok(self.add_ep(inner, sock, key, listening))
    }

    fn add_ep(&self, inner: &mut Inner, sock: UdpSocket, key: StaticKey, listening: bool) -> usize {
        enable_recverr(&sock);
        crate::engine::own(sock.as_raw_fd());
        let mut cfg = EndpointConfig::new(key);
        cfg.conn.linger = crate::engine::config().map_or(Duration::from_secs(10), |c| c.linger);
        let mut ep = Endpoint::new(cfg, Instant::now());
        ep.set_listening(listening);
        inner.eps.push(Ep {
            sock,
            ep,
            hand_over: None,
        });
        inner.eps.len() - 1
    }

    /// Opens an RGTP connection and waits (at most `timeout`) for its handshake.
    pub fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        pin: Option<[u8; 32]>,
    ) -> io::Result<(usize, ConnId, SocketAddr)> {
        let mut g = self.inner.lock();
        let (idx, id, local) = self.start_connect(&mut g, addr, pin)?;
        g.connecting.insert((idx, id), None);
        self.wake();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Some(_)) = g.connecting.get(&(idx, id)) {
                let r = g.connecting.remove(&(idx, id)).flatten().unwrap_or(Ok(()));
                return r.map(|()| (idx, id, local));
            }
            if self.cond.wait_until(&mut g, deadline).timed_out() {
                g.connecting.remove(&(idx, id));
                g.eps[idx].ep.abort(Instant::now(), id);
                self.wake();
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
        }
    }

    /// Starts an RGTP connection bridged to `fd` at once, without waiting: the
    /// handshake completes (or fails, into SO_ERROR) in the engine thread. `skip`
    /// filler bytes the app's end wrote are dropped first. Returns the local address.
    pub fn connect_nonblocking(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        pin: Option<[u8; 32]>,
        fd: OwnedFd,
        app_ino: Option<u64>,
        skip: usize,
    ) -> io::Result<SocketAddr> {
        let mut g = self.inner.lock();
        let (idx, id, local) = self.start_connect(&mut g, addr, pin)?;
        let mut b = Bridge::new(fd, app_ino);
        b.connecting = Some(Instant::now() + timeout);
        b.skip = skip;
        g.bridges.insert((idx, id), b);
        self.wake();
        Ok(local)
    }

    fn start_connect(
        &self,
        g: &mut Inner,
        addr: SocketAddr,
        pin: Option<[u8; 32]>,
    ) -> io::Result<(usize, ConnId, SocketAddr)> {
        let fam = addr.is_ipv6() as usize;
        let idx = match g.client_ep[fam] {
            Some(i) => i,
            None => {
                let bind: SocketAddr = if addr.is_ipv6() {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                }
                .parse()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                let i = self.new_ep(g, bind, self.client_key.clone(), false)?;
                g.client_ep[fam] = Some(i);
                i
            }
        };
        let local = g.eps[idx].sock.local_addr()?;
        let opts = rgtp::conn::ConnectOptions {
            server_key: pin,
            ..Default::default()
        };
        let id = g.eps[idx].ep.connect_with(Instant::now(), addr, opts)?;
        Ok((idx, id, local))
    }

    /// Bridges connection `id` to `fd` until both directions end.
    pub fn attach(&self, idx: usize, id: ConnId, fd: OwnedFd, app_ino: Option<u64>) {
        self.inner
            .lock()
            .bridges
            .insert((idx, id), Bridge::new(fd, app_ino));
        self.wake();
    }

    /// Opens an RGTP listener on UDP `addr`; each accepted connection is bridged to
    /// the fd `hand_over` makes for it.
    pub fn listen(
        &self,
        addr: SocketAddr,
        key: StaticKey,
        hand_over: HandOver,
    ) -> io::Result<RawFd> {
        let sock = rgtp::udp::bind(addr)?;
        Ok(self.listen_on(sock, key, hand_over))
    }

    /// Serves an RGTP listener on a bound UDP socket (one inherited from a parent that
    /// exited: datagrams queued meanwhile are still there, and the port never closed).
    pub fn listen_on(&self, sock: UdpSocket, key: StaticKey, hand_over: HandOver) -> RawFd {
        let mut g = self.inner.lock();
        let idx = self.add_ep(&mut g, sock, key, true);
        g.eps[idx].hand_over = Some(hand_over);
        let fd = g.eps[idx].sock.as_raw_fd();
        self.wake();
        fd
    }

    /// At exit: the app's unread-by-us bytes count as its last, every bridge sends FIN,
    /// and this waits until the peers acknowledged everything (at most `linger`).
    pub fn linger(&self, linger: Duration) {
        let deadline = Instant::now() + linger;
        let mut g = self.inner.lock();
        g.exiting = true;
        self.wake();
        while g
            .bridges
            .values()
            .any(|b| !(b.dead || b.fin_sent && !b.up_pending()))
            || pending_acks(&mut g)
        {
            if self.cond.wait_until(&mut g, deadline).timed_out() {
                log::warn("exit: peers did not acknowledge every byte within RGTP_LINGER_MS");
                return;
            }
        }
    }

    fn run(&self) {
        let mut rx = Receiver::default();
        let tx = Sender::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut keys: Vec<(usize, ConnId)> = Vec::new();
        loop {
            // Build the poll set under the lock, wait without it.
            let timeout = {
                let mut g = self.inner.lock();
                pfds.clear();
                keys.clear();
                pfds.push(pollfd(self.wake.as_raw_fd(), libc::POLLIN));
                for e in &g.eps {
                    pfds.push(pollfd(e.sock.as_raw_fd(), libc::POLLIN));
                }
                for (k, b) in &g.bridges {
                    let mut ev = 0;
                    if !b.fd_eof && !b.up_pending() && !b.dead && b.connecting.is_none() {
                        ev |= libc::POLLIN;
                    }
                    if b.fd_full {
                        ev |= libc::POLLOUT;
                    }
                    pfds.push(pollfd(b.fd.as_raw_fd(), ev));
                    keys.push(*k);
                }
                let now = Instant::now();
                let mut t: Option<Instant> = g.bridges.values().filter_map(|b| b.connecting).min();
                for e in g.eps.iter_mut() {
                    if let Some(x) = e.ep.poll_timeout() {
                        t = Some(t.map_or(x, |t| t.min(x)));
                    }
                }
                if g.exiting {
                    Duration::from_millis(5)
                } else {
                    t.map_or(Duration::from_millis(200), |t| {
                        t.saturating_duration_since(now)
                    })
                    .min(Duration::from_millis(200))
                }
            };
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: valid pollfd array and timespec.
            unsafe {
                libc::ppoll(
                    pfds.as_mut_ptr(),
                    pfds.len() as libc::nfds_t,
                    &ts,
                    std::ptr::null(),
                )
            };

            let mut g = self.inner.lock();
            let now = Instant::now();
            if pfds[0].revents != 0 {
                let mut v: u64 = 0;
                // SAFETY: reading the eventfd counter into a u64.
                unsafe {
                    libc::read(
                        self.wake.as_raw_fd(),
                        &mut v as *mut u64 as *mut libc::c_void,
                        8,
                    )
                };
            }
            let n_eps = g.eps.len().min(pfds.len() - 1);
            for i in 0..n_eps {
                let re = pfds[1 + i].revents;
                if re & libc::POLLERR != 0 {
                    let e = &mut g.eps[i];
                    drain_errors(&e.sock, |addr| e.ep.handle_unreachable(now, addr));
                }
                if re & libc::POLLIN != 0 {
                    let e = &mut g.eps[i];
                    for _ in 0..16 {
                        match rx.recv(&e.sock, |from, d| e.ep.handle(now, from, d)) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
            }
            for e in g.eps.iter_mut() {
                if e.ep.poll_timeout().is_some_and(|t| t <= now) {
                    e.ep.handle_timeout(now);
                }
            }
            self.process_events(&mut g, now, &mut buf);
            let exiting = g.exiting;
            let inner = &mut *g;
            for (k, b) in inner.bridges.iter_mut() {
                if b.connecting.is_some_and(|d| d <= now) {
                    inner.eps[k.0].ep.abort(now, k.1);
                    b.fail_connect(libc::ETIMEDOUT, &mut buf);
                }
                pump(&mut inner.eps[k.0].ep, k.1, b, now, &mut buf, exiting);
            }
            // Release finished bridges.
            let done: Vec<(usize, ConnId)> = inner
                .bridges
                .iter()
                .filter(|(_, b)| b.dead || (b.fin_sent && b.conn_eof))
                .map(|(k, _)| *k)
                .collect();
            for k in done {
                let ep = &mut inner.eps[k.0].ep;
                if let Some(b) = inner.bridges.get(&k) {
                    if !b.dead && ep.send_complete(k.1) == Some(false) {
                        continue; // still waiting for acknowledgements
                    }
                }
                if let Some(b) = inner.bridges.remove(&k) {
                    ep.close(now, k.1);
                    crate::engine::disown(b.fd.as_raw_fd());
                    if let Some(ino) = b.app_ino {
                        crate::registry::remove(ino);
                    }
                }
            }
            for e in inner.eps.iter_mut() {
                while let Some(t) = e.ep.poll_transmit(now) {
                    if let Err(err) = tx.send(&e.sock, &t) {
                        log::debug(&format!("send to {}: {err}", t.dest));
                    }
                }
            }
            if exiting {
                self.cond.notify_all();
            }
        }
    }

    fn process_events(&self, g: &mut Inner, now: Instant, buf: &mut [u8]) {
        let mut notify = false;
        for i in 0..g.eps.len() {
            while let Some((id, ev)) = g.eps[i].ep.poll_event() {
                match ev {
                    Event::Connected => {
                        if let Some(slot) = g.connecting.get_mut(&(i, id)) {
                            *slot = Some(Ok(()));
                            notify = true;
                        }
                        if let Some(b) = g.bridges.get_mut(&(i, id)) {
                            if b.connecting.take().is_some() {
                                if let Some(ino) = b.app_ino {
                                    crate::registry::set_connecting(ino, None);
                                }
                            }
                        }
                    }
                    Event::Closed { error } => {
                        if let Some(slot) = g.connecting.get_mut(&(i, id)) {
                            let kind = error.unwrap_or(io::ErrorKind::ConnectionRefused);
                            *slot = Some(Err(io::Error::from(kind)));
                            notify = true;
                        }
                        if let Some(b) = g.bridges.get_mut(&(i, id)) {
                            if b.connecting.is_some() {
                                let kind = error.unwrap_or(io::ErrorKind::ConnectionRefused);
                                b.fail_connect(errno_of_kind(kind), buf);
                            } else if error.is_some() {
                                b.end();
                            }
                        }
                    }
                    Event::Incoming => {
                        while let Some(cid) = g.eps[i].ep.accept() {
                            let peer = g.eps[i].ep.peer_addr(cid);
                            let Some(hand) = g.eps[i].hand_over.clone() else {
                                break;
                            };
                            let Some(peer) = peer else { continue };
                            match hand(peer) {
                                Ok(fd) => {
                                    g.bridges.insert((i, cid), Bridge::new(fd, None));
                                }
                                Err(e) => {
                                    log::warn(&format!(
                                        "handing a connection from {peer} to the app: {e}"
                                    ));
                                    g.eps[i].ep.abort(now, cid);
                                }
                            }
                        }
                    }
                    Event::Readable | Event::Writable => {}
                }
            }
        }
        if notify {
            self.cond.notify_all();
        }
    }
}

fn errno_of_kind(kind: io::ErrorKind) -> libc::c_int {
    match kind {
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        io::ErrorKind::ConnectionReset => libc::ECONNRESET,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        _ => libc::ECONNREFUSED,
    }
}

fn pending_acks(g: &mut Inner) -> bool {
    let keys: Vec<(usize, ConnId)> = g
        .bridges
        .iter()
        .filter(|(_, b)| !b.dead)
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter()
        .any(|k| g.eps[k.0].ep.send_complete(k.1) == Some(false))
}

/// Moves what can move now between a connection and its fd.
fn pump(
    ep: &mut Endpoint,
    id: ConnId,
    b: &mut Bridge,
    now: Instant,
    buf: &mut [u8],
    exiting: bool,
) {
    if b.dead || b.connecting.is_some() || !b.drain_skip(buf) {
        return;
    }
    let fd = b.fd.as_raw_fd();
    // app -> peer: first what an earlier read left, then straight from the fd into the
    // connection (no staging copy while the connection keeps up).
    if b.up_pending() {
        let Ok(n) = conn_write(ep, id, &b.up[b.up_off..]) else {
            b.end();
            return;
        };
        b.up_off += n;
        if !b.up_pending() {
            b.up.clear();
            b.up_off = 0;
        }
    }
    while !b.fd_eof && !b.up_pending() {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n > 0 {
            let n = n as usize;
            let Ok(taken) = conn_write(ep, id, &buf[..n]) else {
                b.end();
                return;
            };
            if taken < n {
                b.up.extend_from_slice(&buf[taken..n]);
                b.up_off = 0;
            }
            continue;
        }
        if n == 0 {
            b.fd_eof = true;
            break;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                if exiting {
                    // The process is exiting: what it wrote is all it will write.
                    b.fd_eof = true;
                }
                break;
            }
            _ => {
                ep.abort(now, id);
                b.dead = true;
                return;
            }
        }
    }
    if b.fd_eof && !b.up_pending() && !b.fin_sent {
        let _ = ep.shutdown_write(now, id);
        b.fin_sent = true;
    }
    // peer -> app, straight from the connection's buffer into the app's socket.
    b.fd_full = false;
    while !b.conn_eof {
        // What the app's socket took; None if there was nothing to give it.
        let mut sent: Option<io::Result<usize>> = None;
        let r = ep.read_with(id, |data| {
            // SAFETY: sending from a live slice; MSG_NOSIGNAL keeps SIGPIPE away.
            let n = unsafe {
                libc::send(
                    fd,
                    data.as_ptr() as *const libc::c_void,
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            let took = if n < 0 { 0 } else { n as usize };
            sent = Some(if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(took)
            });
            took
        });
        match (r, sent) {
            (_, Some(Ok(n))) if n > 0 => continue,
            (_, Some(Ok(_))) => {
                b.fd_full = true;
                break;
            }
            (_, Some(Err(e))) => match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    b.fd_full = true;
                    break;
                }
                _ => {
                    // The app closed its socket: like TCP, reset the sender.
                    ep.abort(now, id);
                    b.dead = true;
                    return;
                }
            },
            // Nothing readable, and the stream is over.
            (Ok(_), None) => b.conn_eof = true,
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => break,
            (Err(_), None) => {
                b.end();
                return;
            }
        }
    }
    if b.conn_eof && !b.fd_wr_shut {
        // SAFETY: valid fd: the app reads EOF after the last byte.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
        b.fd_wr_shut = true;
    }
}

/// Hands app bytes to the connection: how many it took (0 when its window is full),
/// or the error that ended it.
fn conn_write(ep: &mut Endpoint, id: ConnId, data: &[u8]) -> io::Result<usize> {
    match ep.write(id, data) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        r => r,
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a valid fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// ICMP errors (port unreachable) for an unconnected socket come on its error queue.
fn enable_recverr(sock: &UdpSocket) {
    let one: libc::c_int = 1;
    let (level, opt) = match sock.local_addr() {
        Ok(a) if a.is_ipv6() => (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
        _ => (libc::IPPROTO_IP, libc::IP_RECVERR),
    };
    // SAFETY: setsockopt with a live int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    if level == libc::IPPROTO_IPV6 {
        // Dual-stack sockets report IPv4 errors through the IPv4 option too.
        // SAFETY: as above.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Reads queued ICMP errors; reports the addresses that refused.
fn drain_errors(sock: &UdpSocket, mut refused: impl FnMut(SocketAddr)) {
    for _ in 0..64 {
        let mut data = [0u8; 64];
        // SAFETY: sockaddr_storage is plain data; zero is a valid value.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain data; its pointers are valid for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: valid fd and msghdr.
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return;
        }
        // SAFETY: walking control messages the kernel wrote within msg_controllen.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: cmsg points into our control buffer.
            let c = unsafe { &*cmsg };
            let is_err = (c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
            if is_err {
                // SAFETY: the payload of IP_RECVERR is a sock_extended_err.
                let ee = unsafe {
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err)
                };
                if ee.ee_errno as i32 == libc::ECONNREFUSED {
                    // SAFETY: msg_name holds the destination that failed.
                    if let Some(a) = unsafe {
                        crate::sockaddr::read(
                            &name as *const _ as *const libc::sockaddr,
                            msg.msg_namelen,
                        )
                    } {
                        refused(a);
                    }
                }
            }
            // SAFETY: next header within the buffer (or null).
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
    }
}

//! The blocking API over the runtime: [`RgtpStream`] (`Read + Write`, like
//! `TcpStream`) and [`RgtpListener`] (like `TcpListener`).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, MutexGuard};

use super::super::{ConnConfig, ConnId, ConnState, Endpoint, EndpointConfig, Readiness};
use super::{engine, receive, sys, BridgeHandle, BridgeOptions, Engine, State, Waiter};
use crate::keys::StaticKey;
use crate::udp;

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

    /// [`connect`](Self::connect) with options (e.g. a pinned server key).
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
        let addr = udp::canonical(resolve(addr)?);
        let engine = engine()?;
        let mut st = engine.state.lock();
        let (i, id) = engine.start_connect(&mut st, addr, opts)?;
        let local = st.socks[i]
            .as_ref()
            .map(|s| s.local)
            .ok_or_else(|| io::Error::other("socket gone"))?;
        let stream = RgtpStream::registered(engine.clone(), &mut st, i, id, addr, local);
        engine.after(&mut st, i, false);
        drop(st);
        Ok(stream)
    }

    /// The stream of connection `id` on socket `sock`, with a waiter registered for it.
    fn registered(
        engine: Arc<Engine>,
        st: &mut State,
        sock: usize,
        id: ConnId,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> RgtpStream {
        let cv = Arc::new(Condvar::new());
        st.waiters.insert(
            (sock, id),
            Waiter {
                cv: cv.clone(),
                efd: None,
                poll_efd: None,
            },
        );
        RgtpStream {
            engine,
            sock,
            id,
            cv,
            nonblocking: false,
            read_timeout: None,
            write_timeout: None,
            read_shut: false,
            peer,
            local,
            released: false,
        }
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
        sys::readiness_eventfd(&mut w.efd)
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
            sys::drain_fd(fd.as_raw_fd());
        }
    }

    /// Non-blocking mode: `read` and `write` return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        self.nonblocking = on;
        Ok(())
    }
    /// How long a blocking `read` waits before `WouldBlock` (`None`: forever).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.read_timeout = t;
        Ok(())
    }
    /// How long a blocking `write` waits before `WouldBlock` (`None`: forever).
    pub fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.write_timeout = t;
        Ok(())
    }
    /// The peer's current address (it follows migrations).
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
    pub fn stats(&self) -> Option<super::super::ConnStats> {
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
                w.poll_efd = Some(Arc::new(sys::new_eventfd()?));
            }
            w.poll_efd
                .clone()
                .ok_or_else(|| io::Error::from(ErrorKind::Other))?
        };
        // Everything signalled so far is already visible to the caller (signals are
        // sent under the lock we hold): start afresh.
        sys::drain_fd(efd.as_raw_fd());
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
        // The engine thread stops watching the socket meanwhile: otherwise both
        // threads wake for every datagram and the engine takes the lock first,
        // which costs the waiting reader a futex round trip per packet.
        let (epfd, token) = (
            self.engine.epfd.as_raw_fd(),
            super::TOKEN_SOCK | self.sock as u64,
        );
        sys::epoll_mod(epfd, udp.as_raw_fd(), 0, token);
        // SAFETY: two valid pollfds in a live array.
        let r = MutexGuard::unlocked(st, || unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) });
        sys::epoll_mod(epfd, udp.as_raw_fd(), libc::EPOLLIN as u32, token);
        if let Some(s) = st.socks[self.sock].as_mut() {
            s.poller = false;
        }
        let now = Instant::now();
        if r > 0 && fds[0].revents != 0 {
            receive(st, self.sock, now, fds[0].revents & libc::POLLERR != 0);
            self.engine.after(st, self.sock, false);
        }
        if fds[1].revents != 0 {
            sys::drain_fd(efd.as_raw_fd());
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
    /// application holds) until both directions are closed (the runtime's `bridge` module).
    /// The fd is closed when the bridge ends. Works on a stream that is still
    /// connecting (bytes the application writes meanwhile wait in `fd`).
    pub fn bridge(mut self, fd: OwnedFd) -> io::Result<BridgeHandle> {
        let engine = self.engine.clone();
        let mut st = engine.state.lock();
        let h = engine.add_bridge(&mut st, self.sock, self.id, fd, BridgeOptions::default())?;
        // The bridge owns the connection now.
        self.released = true;
        drop(st);
        engine.wake();
        Ok(h)
    }

    /// Spawns a bridge over one end of a new `socketpair(AF_UNIX, SOCK_STREAM)` and
    /// returns the other end for the application.
    pub fn bridge_socketpair(self) -> io::Result<(OwnedFd, BridgeHandle)> {
        let (app, ours) = socketpair()?;
        let h = self.bridge(ours)?;
        Ok((app, h))
    }
}

/// A connected pair of unix stream sockets (close-on-exec).
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two fds into a live array.
    sys::os_err(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
    /// The socket shares its port with other processes' (`SO_REUSEPORT`, see the
    /// runtime's port groups); only for [`super::listen_bridged`].
    pub shared_port: bool,
}

/// A listening endpoint with `opts`' key and settings.
pub(super) fn listener_endpoint(opts: ListenerOptions, cid_tag: Option<u16>) -> Endpoint {
    let key = opts.key.unwrap_or_else(StaticKey::generate);
    let mut cfg = EndpointConfig::new(key);
    cfg.cid_tag = cid_tag;
    if let Some(c) = opts.config {
        cfg.conn = c;
    }
    if let Some(r) = opts.retry_threshold {
        cfg.retry_threshold = r;
    }
    let mut ep = Endpoint::new(cfg, Instant::now());
    ep.set_listening(true);
    ep
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
    /// Listens on `addr` with a new static key and default settings.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<RgtpListener> {
        Self::bind_with(addr, ListenerOptions::default())
    }

    /// Listens on `addr` (port 0: any) with `opts` (e.g. its static key).
    pub fn bind_with(addr: impl ToSocketAddrs, opts: ListenerOptions) -> io::Result<RgtpListener> {
        let addr = resolve(addr)?;
        let engine = engine()?;
        let udp = udp::bind(addr)?;
        let ep = listener_endpoint(opts, None);
        let public_key = ep.public_key();
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

    /// The bound address (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// The listener's static public key (what clients pin).
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Non-blocking mode: `accept` returns `WouldBlock` instead of waiting.
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
        sys::readiness_eventfd(&mut s.accept_efd)
    }

    /// Drains [`readiness_fd`](Self::readiness_fd) (call it before accepting until
    /// `WouldBlock`).
    pub fn clear_readiness(&self) {
        let st = self.engine.state.lock();
        if let Some(fd) = st.socks[self.sock]
            .as_ref()
            .and_then(|s| s.accept_efd.as_ref())
        {
            sys::drain_fd(fd.as_raw_fd());
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
                let engine = self.engine.clone();
                let stream =
                    RgtpStream::registered(engine, &mut st, self.sock, id, peer, self.local);
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

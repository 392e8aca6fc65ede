//! A bridge between a kernel stream fd and a connection: the application holds the
//! other end of the fd (a socketpair, or a loopback TCP connection) and uses it with
//! every native call — read, write, poll, epoll, sendfile, fork — while the engine
//! moves bytes between its end and the RGTP connection.
//!
//! EOF on the fd sends a FIN; the peer's FIN shuts the fd's write side. A connection
//! that fails (reset, timeout) ends the fd both ways and, on a TCP fd, with an RST; an
//! fd that fails (the application closed it without reading) resets the peer.
//! Back-pressure falls out of the buffers: a full connection window stops reading the
//! fd, a full fd stops reading the connection, so the peer's credit runs out.

use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::super::{ConnId, ConnState, Endpoint};
use super::sys;

/// What a bridge's owner can see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStatus {
    /// The RGTP connection is (or was) established.
    pub connected: bool,
    /// The bridge ended and its fd is closed.
    pub done: bool,
    /// Why the connection failed, if it did.
    pub error: Option<ErrorKind>,
}

pub(super) struct BridgeShared {
    status: Mutex<BridgeStatus>,
    cv: Condvar,
}

/// Handle on a running bridge.
#[derive(Clone)]
pub struct BridgeHandle {
    shared: Arc<BridgeShared>,
}

impl BridgeHandle {
    /// Where the bridge's connection is now (connecting, up, or ended).
    pub fn status(&self) -> BridgeStatus {
        *self.shared.status.lock()
    }

    /// Waits until the connection is established (`Ok`) or failed (its error).
    /// `TimedOut` if neither happened within `timeout`.
    pub fn wait_connected(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.status.lock();
        loop {
            if st.connected {
                return Ok(());
            }
            if let Some(e) = st.error {
                return Err(e.into());
            }
            if st.done {
                return Err(ErrorKind::NotConnected.into());
            }
            if self.shared.cv.wait_until(&mut st, deadline).timed_out() {
                return Err(ErrorKind::TimedOut.into());
            }
        }
    }

    /// Waits until the bridge ended; returns its final status.
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

/// Called once when a connecting bridge's handshake ends: `None` when it succeeded,
/// else why it failed. Runs on the engine thread, under the engine's lock: it must
/// not call back into the runtime.
pub type OnConnect = Box<dyn FnOnce(Option<ErrorKind>) + Send>;
/// Called once when a bridge ends (its fd is about to close). Same rules.
pub type OnEnd = Box<dyn FnOnce() + Send>;

/// How a bridge starts.
#[derive(Default)]
pub struct BridgeOptions {
    /// Filler bytes the application's end wrote to look unwritable while the
    /// handshake runs (a non-blocking connect): read and dropped before its own bytes.
    pub skip: usize,
    /// A connection still connecting fails with `TimedOut` at this deadline.
    pub connect_deadline: Option<Instant>,
    /// Called once when the handshake finishes or fails.
    pub on_connect: Option<OnConnect>,
    /// Called once when the bridge ends.
    pub on_end: Option<OnEnd>,
}

pub(super) struct Bridge {
    pub(super) fd: OwnedFd,
    pub(super) sock: usize,
    pub(super) id: ConnId,
    /// What one read from the fd took and the connection did not (yet), from `up_off`:
    /// the fd is not read again until it has all gone.
    up: Vec<u8>,
    up_off: usize,
    /// Edge-triggered readiness of the fd, as epoll last reported it.
    pub(super) fd_readable: bool,
    pub(super) fd_writable: bool,
    /// The application will write no more (EOF on the fd).
    fd_eof: bool,
    pub(super) fin_sent: bool,
    /// The peer finished its direction, and the fd's write side is shut.
    conn_eof: bool,
    /// The connection or the fd failed: the bridge ends.
    failed: Option<ErrorKind>,
    /// The handshake is still running (until this deadline): the fd is left alone.
    connecting: Option<Instant>,
    /// The connection was seen established (status and `on_connect` are done).
    seen_connected: bool,
    skip: usize,
    on_connect: Option<OnConnect>,
    on_end: Option<OnEnd>,
    shared: Arc<BridgeShared>,
}

/// What a pump left to do.
pub(super) enum PumpEnd {
    Continue,
    /// Both directions finished.
    Done,
    /// The connection failed (the fd is ended), or the fd did (`reset_peer`: the
    /// peer gets a RESET).
    Failed {
        reset_peer: bool,
    },
}

impl Bridge {
    pub(super) fn new(
        fd: OwnedFd,
        sock: usize,
        id: ConnId,
        opts: BridgeOptions,
    ) -> io::Result<(Bridge, BridgeHandle)> {
        sys::set_nonblocking(fd.as_raw_fd())?;
        let shared = Arc::new(BridgeShared {
            status: Mutex::new(BridgeStatus::default()),
            cv: Condvar::new(),
        });
        let b = Bridge {
            fd,
            sock,
            id,
            up: Vec::new(),
            up_off: 0,
            fd_readable: true,
            fd_writable: true,
            fd_eof: false,
            fin_sent: false,
            conn_eof: false,
            failed: None,
            connecting: opts.connect_deadline,
            seen_connected: false,
            skip: opts.skip,
            on_connect: opts.on_connect,
            on_end: opts.on_end,
            shared: shared.clone(),
        };
        Ok((b, BridgeHandle { shared }))
    }

    fn set_status(&self, f: impl FnOnce(&mut BridgeStatus)) {
        let mut s = self.shared.status.lock();
        f(&mut s);
        self.shared.cv.notify_all();
    }

    fn up_pending(&self) -> bool {
        self.up_off < self.up.len()
    }

    /// When a connecting bridge gives up.
    pub(super) fn connect_deadline(&self) -> Option<Instant> {
        self.connecting
    }

    /// The bridge is live and has not sent its FIN yet.
    pub(super) fn fin_due(&self) -> bool {
        self.failed.is_none() && !self.fin_sent
    }

    /// Bytes the application wrote that have not reached the connection yet (for the
    /// exit flush), or a FIN still due.
    pub(super) fn holds_app_bytes(&self) -> bool {
        if self.failed.is_some() {
            return false;
        }
        if self.up_pending() || (self.fd_eof && !self.fin_sent) {
            return true;
        }
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int into a live variable.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::FIONREAD, &mut n) };
        r == 0 && n > 0 && !self.fd_eof
    }

    /// Reads and drops what is left of the filler; true once it is all gone.
    fn drain_skip(&mut self, buf: &mut [u8]) -> bool {
        while self.skip > 0 {
            let want = self.skip.min(buf.len());
            // SAFETY: reads into a live buffer of at least `want` bytes from our fd.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            if n <= 0 {
                return false;
            }
            self.skip -= n as usize;
        }
        true
    }

    /// Tracks the handshake: calls `on_connect` once it ends, and fails the bridge
    /// when it failed or ran past its deadline.
    fn check_connecting(&mut self, ep: &mut Endpoint, now: Instant, buf: &mut [u8]) {
        let established = match ep.state(self.id) {
            Some(ConnState::Connected) | Some(ConnState::Closed { error: None }) => Ok(()),
            Some(ConnState::Closed { error: Some(e) }) => Err(e),
            None => Err(ErrorKind::NotConnected),
            Some(ConnState::Connecting) => {
                if self.connecting.is_some_and(|d| d <= now) {
                    ep.abort(now, self.id);
                    Err(ErrorKind::TimedOut)
                } else {
                    return;
                }
            }
        };
        let was_connecting = self.connecting.take().is_some();
        match established {
            Ok(()) => {
                self.seen_connected = true;
                self.set_status(|s| s.connected = true);
                if let Some(f) = self.on_connect.take() {
                    f(None);
                }
            }
            Err(kind) if was_connecting => {
                if let Some(f) = self.on_connect.take() {
                    f(Some(kind));
                }
                self.drain_skip(buf);
                self.failed = Some(kind);
            }
            Err(_) => {}
        }
    }

    /// Moves what can move now between the connection and the fd.
    pub(super) fn pump(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        buf: &mut [u8],
        exiting: bool,
    ) -> PumpEnd {
        if !self.seen_connected {
            self.check_connecting(ep, now, buf);
        }
        if self.connecting.is_some() {
            return PumpEnd::Continue;
        }
        if self.failed.is_some() {
            return PumpEnd::Failed { reset_peer: false };
        }
        if let Some(ConnState::Closed { error: Some(e) }) = ep.state(self.id) {
            self.failed = Some(e);
            return PumpEnd::Failed { reset_peer: false };
        }
        if !self.drain_skip(buf) {
            return PumpEnd::Continue;
        }
        if let Err(reset_peer) = self.app_to_peer(ep, now, buf, exiting) {
            return PumpEnd::Failed { reset_peer };
        }
        if let Err(reset_peer) = self.peer_to_app(ep) {
            return PumpEnd::Failed { reset_peer };
        }
        if self.fin_sent && self.conn_eof {
            return PumpEnd::Done;
        }
        PumpEnd::Continue
    }

    /// Application → peer: first what an earlier read left, then straight from the
    /// fd into the connection. `Err(reset_peer)` when the bridge must end.
    fn app_to_peer(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        buf: &mut [u8],
        exiting: bool,
    ) -> Result<(), bool> {
        let fd = self.fd.as_raw_fd();
        if self.up_pending() {
            let n = self.conn_write(ep, self.up_off)?;
            self.up_off += n;
            if !self.up_pending() {
                self.up.clear();
                self.up_off = 0;
            }
        }
        while self.fd_readable && !self.fd_eof && !self.up_pending() {
            // SAFETY: reads into a live buffer of `buf.len()` bytes from our fd.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n > 0 {
                let n = n as usize;
                let taken = match ep.write(self.id, &buf[..n]) {
                    Ok(t) => t,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                    Err(e) => {
                        self.failed = Some(e.kind());
                        return Err(false);
                    }
                };
                if taken < n {
                    // A `Writable` event follows when the window opens.
                    self.up.extend_from_slice(&buf[taken..n]);
                    self.up_off = 0;
                }
                continue;
            }
            if n == 0 {
                self.fd_eof = true;
                break;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => {
                    self.fd_readable = false;
                    if exiting {
                        // The process is exiting: what it wrote is all it will write.
                        self.fd_eof = true;
                    }
                    break;
                }
                _ => {
                    self.failed = Some(ErrorKind::ConnectionReset);
                    return Err(true);
                }
            }
        }
        if self.fd_eof && !self.up_pending() && !self.fin_sent {
            if let Err(e) = ep.shutdown_write(now, self.id) {
                self.failed = Some(e.kind());
                return Err(false);
            }
            self.fin_sent = true;
        }
        Ok(())
    }

    /// Hands `up[from..]` to the connection: how many bytes it took.
    fn conn_write(&mut self, ep: &mut Endpoint, from: usize) -> Result<usize, bool> {
        match ep.write(self.id, &self.up[from..]) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) => {
                self.failed = Some(e.kind());
                Err(false)
            }
        }
    }

    /// Peer → application, straight from the connection's buffer into the fd (what
    /// the fd does not take stays in the connection, under its flow control).
    fn peer_to_app(&mut self, ep: &mut Endpoint) -> Result<(), bool> {
        let fd = self.fd.as_raw_fd();
        while !self.conn_eof && self.fd_writable {
            // What the fd took; None if there was nothing to give it.
            let mut sent: Option<io::Result<usize>> = None;
            let r = ep.read_with(self.id, |data| {
                // SAFETY: sends from a live slice; MSG_NOSIGNAL keeps SIGPIPE away.
                let n = unsafe {
                    libc::send(
                        fd,
                        data.as_ptr() as *const libc::c_void,
                        data.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    sent = Some(Err(io::Error::last_os_error()));
                    0
                } else {
                    sent = Some(Ok(n as usize));
                    n as usize
                }
            });
            match (r, sent) {
                (_, Some(Ok(n))) if n > 0 => continue,
                (_, Some(Ok(_))) => {
                    self.fd_writable = false;
                    break;
                }
                (_, Some(Err(e))) => match e.kind() {
                    ErrorKind::Interrupted => continue,
                    ErrorKind::WouldBlock => {
                        self.fd_writable = false;
                        break;
                    }
                    _ => {
                        // The application closed its end: like TCP, reset the sender.
                        self.failed = Some(ErrorKind::BrokenPipe);
                        return Err(true);
                    }
                },
                // Nothing readable, and the stream is over.
                (Ok(_), None) => {
                    self.conn_eof = true;
                    // SAFETY: shutdown on our own fd: the app reads EOF after the last byte.
                    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                }
                (Err(e), None) if e.kind() == ErrorKind::WouldBlock => break,
                (Err(e), None) => {
                    self.failed = Some(e.kind());
                    return Err(false);
                }
            }
        }
        Ok(())
    }

    /// Ends the bridge: the connection closes gracefully (its linger delivers what is
    /// unacknowledged) or is reset; a failed connection ends the fd both ways, with an
    /// RST on a TCP fd. Consumes the bridge; its fd closes here.
    pub(super) fn finish(mut self, ep: &mut Endpoint, now: Instant, end: PumpEnd) {
        match end {
            PumpEnd::Failed { reset_peer: true } => ep.abort(now, self.id),
            _ => ep.close(now, self.id),
        }
        if let PumpEnd::Failed { reset_peer: false } = end {
            sys::end_failed_fd(self.fd.as_raw_fd());
        }
        if let Some(f) = self.on_connect.take() {
            f(Some(self.failed.unwrap_or(ErrorKind::NotConnected)));
        }
        if let Some(f) = self.on_end.take() {
            f();
        }
        let error = self.failed;
        self.set_status(|s| {
            s.done = true;
            s.error = error;
        });
    }

    /// Whether the connection still has bytes of ours the peer has not acknowledged
    /// (a finished bridge waits for them before closing its fd, so an app that reads
    /// its socket's state until then sees a live connection).
    pub(super) fn awaiting_acks(&self, ep: &mut Endpoint) -> bool {
        self.failed.is_none() && ep.send_complete(self.id) == Some(false)
    }
}

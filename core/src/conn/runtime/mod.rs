//! The connection runtime: the one driver of [`Endpoint`]s over real UDP sockets,
//! used by library users (`RgtpStream`, `RgtpListener`) and by the LD_PRELOAD shim
//! (bridges between an application's kernel fd and a connection).
//!
//! One engine thread per process owns every connection socket: it receives (batched,
//! GRO), runs timers (a `timerfd`, so sub-millisecond deadlines are kept), reads ICMP
//! errors (`IP_RECVERR`: a connection attempt to a port with nothing bound fails at
//! once with `ConnectionRefused`) and pumps bridged fds. All state sits behind one
//! mutex; application threads lock it to read and write, and send what their call
//! produced themselves, so a small write leaves without waking the engine. Blocking
//! calls wait on a per-connection condition variable; each stream can also expose an
//! `eventfd` for `poll`/`epoll`.
//!
//! Processes that fork: [`fork_prepare`], [`fork_parent`] and [`fork_child`] keep the
//! runtime's lock consistent; the child starts a new engine on first use (the old
//! engine's thread did not come along). [`RuntimeHooks`] lets an embedder (the shim)
//! see every fd the runtime opens and mark its threads.

mod bridge;
mod group;
mod stream;
mod sys;

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use bridge::{Bridge, PumpEnd};
pub use bridge::{BridgeHandle, BridgeOptions, BridgeStatus, OnConnect, OnEnd};
use group::Group;
pub use stream::{socketpair, ListenerOptions, RgtpListener, RgtpStream, StreamOptions};

use super::{ConnConfig, ConnId, ConnState, ConnectOptions, Endpoint, EndpointConfig, Event};
use crate::keys::StaticKey;
use crate::udp::{self, Receiver, Sender};

const TOKEN_WAKE: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const TOKEN_ROUTES: u64 = 2;
const TOKEN_SOCK: u64 = 1 << 32;
const TOKEN_BRIDGE: u64 = 2 << 32;
const TOKEN_MAILBOX: u64 = 3 << 32;
/// Receive batches per socket per wakeup before others get a turn.
const RECV_ROUNDS: usize = 16;
const BRIDGE_CHUNK: usize = 64 * 1024;

/// What an embedder learns from the runtime. Every method has a default that does
/// nothing; they run on whichever thread triggers them and must not call back into
/// the runtime.
pub trait RuntimeHooks: Send + Sync {
    /// First thing on every thread the runtime starts.
    fn thread_started(&self) {}
    /// The runtime opened `fd` (or took it over) and will close it itself.
    fn fd_opened(&self, _fd: RawFd) {}
    /// The runtime is about to close `fd`.
    fn fd_closed(&self, _fd: RawFd) {}
}

struct NoHooks;
impl RuntimeHooks for NoHooks {}

static HOOKS: OnceLock<Box<dyn RuntimeHooks>> = OnceLock::new();

/// Installs the embedder's hooks; only the first call counts, and only before the
/// runtime starts. Returns whether these hooks are the ones in place.
pub fn set_hooks(h: Box<dyn RuntimeHooks>) -> bool {
    HOOKS.set(h).is_ok()
}

fn hooks() -> &'static dyn RuntimeHooks {
    HOOKS.get_or_init(|| Box::new(NoHooks)).as_ref()
}

/// Makes accepted connections' fds for a bridged listener: called with the peer's
/// address, on the engine thread under its lock.
pub type HandOver = Arc<dyn Fn(SocketAddr) -> io::Result<OwnedFd> + Send + Sync>;

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
    /// A bridged listener: each accepted connection is bridged to the fd this makes.
    hand_over: Option<HandOver>,
    /// The socket is one of a port group's (see [`group`]).
    group: Option<Group>,
}

struct Waiter {
    cv: Arc<Condvar>,
    /// The readiness fd handed to the application, if it asked for one.
    efd: Option<OwnedFd>,
    /// Wakes this stream's thread while it polls the socket directly.
    poll_efd: Option<Arc<OwnedFd>>,
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
    /// Bridged listeners with connections waiting to be handed over.
    to_accept: Vec<usize>,
    /// The process is exiting: a bridged fd with nothing more to read has ended.
    exiting: bool,
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
    let Sock { udp, ep, group, .. } = s;
    if errors {
        sys::drain_errqueue(udp, |a| ep.handle_unreachable(now, a));
    }
    for _ in 0..RECV_ROUNDS {
        match rx.recv(udp, |from, d| {
            if !super::wire::is_conn_packet(d) {
                return;
            }
            let from = udp::canonical(from);
            if let Some(g) = group.as_ref() {
                if let Some(owner) = g.owner_of(d, |cid| ep.knows_cid(cid)) {
                    g.forward(owner, from, d);
                    return;
                }
            }
            ep.handle(now, from, d);
        }) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("rgtp: recv on {}: {e}", s.local);
                break;
            }
        }
    }
}

/// Reads what socket `i`'s group mailbox holds: datagrams other members forwarded.
fn receive_mailbox(st: &mut State, i: usize, now: Instant) {
    let State { socks, rx, .. } = st;
    let Some(s) = socks.get_mut(i).and_then(|s| s.as_mut()) else {
        return;
    };
    let Sock { ep, group, .. } = s;
    let Some(g) = group.as_ref() else { return };
    for _ in 0..RECV_ROUNDS {
        match rx.recv(&g.mailbox, |sender, env| {
            if let Some((from, d)) = g.open(sender, env) {
                if super::wire::is_conn_packet(d) {
                    ep.handle(now, udp::canonical(from), d);
                }
            }
        }) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("rgtp: recv on a group mailbox: {e}");
                break;
            }
        }
    }
}

pub(crate) struct Engine {
    state: Mutex<State>,
    epfd: OwnedFd,
    wake: OwnedFd,
    timer: OwnedFd,
    /// Address and route changes (netlink), if the host lets us listen for them.
    routes: Option<OwnedFd>,
    sender: Sender,
    /// Notified whenever any connection made progress (for `flush_all`).
    progress: Condvar,
}

/// The process's engine; `None` until first use, and again in a forked child.
static ENGINE: Mutex<Option<Arc<Engine>>> = Mutex::new(None);

/// The process's engine, started on first use.
fn engine() -> io::Result<Arc<Engine>> {
    let mut g = ENGINE.lock();
    if let Some(e) = g.as_ref() {
        return Ok(e.clone());
    }
    let e = Arc::new(Engine::new()?);
    let run = e.clone();
    std::thread::Builder::new()
        .name("rgtp-engine".into())
        .spawn(move || {
            hooks().thread_started();
            run.run()
        })?;
    *g = Some(e.clone());
    Ok(e)
}

/// Call in a `pthread_atfork` prepare handler: holds the runtime's lock across the
/// fork, so the child never inherits it held by a thread that did not come along.
pub fn fork_prepare() {
    std::mem::forget(ENGINE.lock());
}

/// Call in the parent's `pthread_atfork` handler, after [`fork_prepare`].
pub fn fork_parent() {
    // SAFETY: locked and leaked by fork_prepare on this thread.
    unsafe { ENGINE.force_unlock() };
}

/// Call in the child's `pthread_atfork` handler, after [`fork_prepare`]. The parent's
/// engine thread did not come along, so its engine is forgotten here (never used or
/// dropped: its lock may be held forever); the child starts its own on first use.
/// The old engine's fds are the embedder's to close ([`RuntimeHooks::fd_opened`]).
pub fn fork_child() {
    // SAFETY: locked and leaked by fork_prepare on this thread, which is the child's
    // only thread now.
    unsafe { ENGINE.force_unlock() };
    if let Some(old) = ENGINE.lock().take() {
        std::mem::forget(old);
    }
}

/// Client connections' defaults (idle timeout, windows, linger, ...) for this
/// process. Applies to connections started afterwards.
pub fn set_client_config(cfg: ConnConfig) -> io::Result<()> {
    engine()?.state.lock().client_conn = cfg;
    Ok(())
}

/// Adds `fd` to the engine's epoll set (readable, as `token`) and tells the hooks the
/// engine now holds it.
fn watch_readable(epfd: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    sys::epoll_add(epfd, fd, libc::EPOLLIN as u32, token)?;
    hooks().fd_opened(fd);
    Ok(())
}

impl Engine {
    fn new() -> io::Result<Self> {
        let epfd = sys::new_epoll()?;
        let wake = sys::new_eventfd()?;
        let timer = sys::new_timerfd()?;
        sys::epoll_add(
            epfd.as_raw_fd(),
            wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_WAKE,
        )?;
        sys::epoll_add(
            epfd.as_raw_fd(),
            timer.as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_TIMER,
        )?;
        for fd in [&epfd, &wake, &timer] {
            hooks().fd_opened(fd.as_raw_fd());
        }
        // Without it a client that moves is found again by its silence probes and
        // keepalives, only later.
        let routes = sys::new_route_watch()
            .and_then(|fd| {
                watch_readable(epfd.as_raw_fd(), fd.as_raw_fd(), TOKEN_ROUTES)?;
                Ok(fd)
            })
            .map_err(|e| tracing::debug!("rgtp: no address-change notices: {e}"))
            .ok();
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
                to_accept: Vec::new(),
                exiting: false,
                armed: None,
                scratch: vec![0; BRIDGE_CHUNK],
                rx: Receiver::default(),
            }),
            epfd,
            wake,
            timer,
            routes,
            sender: Sender::default(),
            progress: Condvar::new(),
        })
    }

    fn wake(&self) {
        sys::signal_eventfd(self.wake.as_raw_fd());
    }

    /// Sets the timerfd to `at`; `None` disarms it.
    fn arm_timer(&self, st: &mut State, at: Option<Instant>) {
        if st.armed == at {
            return;
        }
        st.armed = at;
        sys::set_timer(self.timer.as_raw_fd(), at);
    }

    fn add_sock(&self, st: &mut State, udp: UdpSocket, ep: Endpoint) -> io::Result<usize> {
        self.add_sock_in_group(st, udp, ep, None)
    }

    fn add_sock_in_group(
        &self,
        st: &mut State,
        udp: UdpSocket,
        ep: Endpoint,
        group: Option<Group>,
    ) -> io::Result<usize> {
        let fd = udp.as_raw_fd();
        let local = udp.local_addr()?;
        sys::enable_recverr(&udp);
        let idx = match st.socks.iter().position(|s| s.is_none()) {
            Some(i) => i,
            None => {
                st.socks.push(None);
                st.socks.len() - 1
            }
        };
        watch_readable(self.epfd.as_raw_fd(), fd, TOKEN_SOCK | idx as u64)?;
        if let Some(g) = &group {
            let mfd = g.mailbox.as_raw_fd();
            watch_readable(self.epfd.as_raw_fd(), mfd, TOKEN_MAILBOX | idx as u64)?;
        }
        st.socks[idx] = Some(Sock {
            udp: Arc::new(udp),
            ep,
            local,
            listener_dropped: false,
            poller: false,
            accept_cv: Arc::new(Condvar::new()),
            accept_efd: None,
            hand_over: None,
            group,
        });
        Ok(idx)
    }

    fn client_sock(&self, st: &mut State, v6: bool) -> io::Result<usize> {
        if let Some(i) = if v6 { st.client_v6 } else { st.client_v4 } {
            return Ok(i);
        }
        let bind: SocketAddr = if v6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
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

    /// Starts a client connection on this process's client socket for `addr`'s
    /// family; returns the socket's index and the connection.
    fn start_connect(
        &self,
        st: &mut State,
        addr: SocketAddr,
        opts: StreamOptions,
    ) -> io::Result<(usize, ConnId)> {
        let i = self.client_sock(st, addr.is_ipv6())?;
        let config = opts.config.or_else(|| Some(st.client_conn.clone()));
        let s = st.socks[i]
            .as_mut()
            .ok_or_else(|| io::Error::other("socket gone"))?;
        let id = s.ep.connect_with(
            Instant::now(),
            addr,
            ConnectOptions {
                server_key: opts.server_key,
                config,
            },
        )?;
        Ok((i, id))
    }

    /// Bridges connection `id` on socket `sock` to `fd` (see [`bridge`]).
    fn add_bridge(
        &self,
        st: &mut State,
        sock: usize,
        id: ConnId,
        fd: OwnedFd,
        opts: BridgeOptions,
    ) -> io::Result<BridgeHandle> {
        let b = st.next_bridge;
        let raw = fd.as_raw_fd();
        let (bridge, handle) = Bridge::new(fd, sock, id, opts)?;
        sys::epoll_add(
            self.epfd.as_raw_fd(),
            raw,
            (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            TOKEN_BRIDGE + b,
        )?;
        hooks().fd_opened(raw);
        st.next_bridge += 1;
        st.waiters.remove(&(sock, id));
        st.bridges.insert(b, bridge);
        st.bridge_of.insert((sock, id), b);
        st.to_pump.push(b);
        Ok(handle)
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
            to_accept,
            ..
        } = &mut *st;
        let Some(s) = socks.get_mut(i).and_then(|s| s.as_mut()) else {
            return;
        };
        // Each transmit goes out as soon as it is made. (Batching small ones into
        // sendmmsg was tried: in nginx fan-out it cost 10-30 % more server CPU per GiB,
        // alternated against the build before it.)
        while let Some(t) = s.ep.poll_transmit(now) {
            if let Err(e) = self.sender.send(&s.udp, &t) {
                tracing::debug!("send to {}: {e}", t.dest);
            }
        }
        let mut any = false;
        let mut wake = false;
        while let Some((id, ev)) = s.ep.poll_event() {
            any = true;
            if let Some(&b) = bridge_of.get(&(i, id)) {
                to_pump.push(b);
                wake = true;
            }
            if ev == Event::Incoming {
                if s.hand_over.is_some() {
                    to_accept.push(i);
                    wake = true;
                }
                s.accept_cv.notify_all();
                if let Some(fd) = &s.accept_efd {
                    sys::signal_eventfd(fd.as_raw_fd());
                }
                continue;
            }
            if let Some(w) = waiters.get(&(i, id)) {
                w.cv.notify_all();
                if let Some(fd) = &w.efd {
                    sys::signal_eventfd(fd.as_raw_fd());
                }
                if let Some(fd) = &w.poll_efd {
                    sys::signal_eventfd(fd.as_raw_fd());
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
        if wake && !engine_thread {
            self.wake();
        }
    }

    fn run(self: Arc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut panics = 0u32;
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
            // A panic here would silently stop every connection of the process: it is
            // logged, and the engine carries on with the next wakeup (parking_lot's
            // mutex is not poisoned).
            let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.turn(&events[..n as usize])
            }));
            if turn.is_err() {
                panics += 1;
                tracing::error!("rgtp engine: a panic was caught ({panics} so far)");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// One wakeup's work: what epoll reported, then timers, bridges and output.
    fn turn(&self, events: &[libc::epoll_event]) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let now = Instant::now();
        for ev in events {
            let token = ev.u64;
            let flags = ev.events;
            if token == TOKEN_WAKE {
                sys::drain_fd(self.wake.as_raw_fd());
            } else if token == TOKEN_TIMER {
                sys::drain_fd(self.timer.as_raw_fd());
                st.armed = None;
            } else if token == TOKEN_ROUTES {
                let changed = self
                    .routes
                    .as_ref()
                    .is_some_and(|fd| sys::drain_route_watch(fd.as_raw_fd()));
                if changed {
                    self.local_path_changed(st, now);
                }
            } else if token >= TOKEN_MAILBOX {
                receive_mailbox(st, (token - TOKEN_MAILBOX) as usize, now);
            } else if token >= TOKEN_BRIDGE {
                let b = token - TOKEN_BRIDGE;
                if let Some(br) = st.bridges.get_mut(&b) {
                    let hup = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
                    if flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | hup & flags != 0 {
                        br.fd_readable = true;
                    }
                    if flags & libc::EPOLLOUT as u32 | hup & flags != 0 {
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

    /// This host's addresses or routes changed: client connections may now leave
    /// from another address (the sockets are bound to the wildcard, so the kernel
    /// picks the new one), and they tell their peers at once. Servers stay put.
    fn local_path_changed(&self, st: &mut State, now: Instant) {
        for i in [st.client_v4, st.client_v6].into_iter().flatten() {
            if let Some(s) = st.socks.get_mut(i).and_then(|s| s.as_mut()) {
                tracing::debug!(
                    "rgtp: local addresses or routes changed; probing from {}",
                    s.local
                );
                s.ep.local_path_changed(now);
            }
        }
    }

    /// Timers, accepts, bridges, output and events for every socket.
    fn service(&self, st: &mut State, now: Instant) {
        for s in st.socks.iter_mut().flatten() {
            if s.ep.poll_timeout().is_some_and(|t| t <= now) {
                s.ep.handle_timeout(now);
            }
        }
        let exiting = st.exiting;
        for (&k, b) in st.bridges.iter_mut() {
            if exiting {
                // Every bridge looks once more for the app's last bytes.
                b.fd_readable = true;
                st.to_pump.push(k);
            } else if b.connect_deadline().is_some_and(|d| d <= now) {
                st.to_pump.push(k);
            }
        }
        // Pump bridges until no event asks for more (bounded), sending what each
        // round produced before the next.
        let mut rounds = 0;
        loop {
            for i in 0..st.socks.len() {
                self.after(st, i, true);
            }
            self.accept_bridged(st, now);
            if st.to_pump.is_empty() {
                break;
            }
            if rounds == 8 {
                // Bridges still have work: come back at once rather than wait for an
                // event that may never come (the application may be waiting on us).
                self.wake();
                break;
            }
            rounds += 1;
            let mut list = std::mem::take(&mut st.to_pump);
            list.sort_unstable();
            list.dedup();
            for b in list {
                self.pump_bridge(st, b, now);
            }
        }
        // Connecting bridges have deadlines of their own.
        let connect_deadline = st
            .bridges
            .values()
            .filter_map(|b| b.connect_deadline())
            .min();
        // Forget listener sockets nobody uses any more.
        for i in 0..st.socks.len() {
            let dead = matches!(&st.socks[i], Some(s) if s.listener_dropped && s.ep.connection_count() == 0);
            if dead {
                if let Some(s) = st.socks[i].take() {
                    let mut fds = vec![s.udp.as_raw_fd()];
                    fds.extend(s.group.as_ref().map(|g| g.mailbox.as_raw_fd()));
                    for fd in fds {
                        sys::epoll_del(self.epfd.as_raw_fd(), fd);
                        hooks().fd_closed(fd);
                    }
                }
            }
        }
        let mut next = st
            .socks
            .iter_mut()
            .flatten()
            .filter_map(|s| s.ep.poll_timeout())
            .chain(connect_deadline)
            .min();
        if st.exiting {
            // Bridged fds are looked at again soon, whatever else happens.
            let soon = now + Duration::from_millis(5);
            next = Some(next.map_or(soon, |t| t.min(soon)));
        }
        // The timerfd fired or is later than needed: set it exactly.
        self.arm_timer(st, next);
    }

    /// Hands every connection waiting on a bridged listener to its application.
    fn accept_bridged(&self, st: &mut State, now: Instant) {
        let list = std::mem::take(&mut st.to_accept);
        for i in list {
            while let Some(s) = st.socks.get_mut(i).and_then(|s| s.as_mut()) {
                let Some(hand) = s.hand_over.clone() else {
                    break;
                };
                let Some(id) = s.ep.accept() else { break };
                let Some(peer) = s.ep.peer_addr(id) else {
                    continue;
                };
                let added = hand(peer).and_then(|fd| {
                    self.add_bridge(st, i, id, fd, BridgeOptions::default())
                        .map(|_| ())
                });
                if let Err(e) = added {
                    tracing::warn!("handing a connection from {peer} to the application: {e}");
                    if let Some(s) = st.socks.get_mut(i).and_then(|s| s.as_mut()) {
                        s.ep.abort(now, id);
                    }
                }
            }
        }
    }

    fn pump_bridge(&self, st: &mut State, b: u64, now: Instant) {
        let State {
            socks,
            bridges,
            bridge_of,
            scratch,
            exiting,
            ..
        } = st;
        let Some(br) = bridges.get_mut(&b) else {
            return;
        };
        let Some(s) = socks.get_mut(br.sock).and_then(|s| s.as_mut()) else {
            return;
        };
        let end = br.pump(&mut s.ep, now, scratch, *exiting);
        let finished = match end {
            PumpEnd::Continue => false,
            // The fd stays open until the peer has everything, so the application
            // sees a live connection until then.
            PumpEnd::Done => !br.awaiting_acks(&mut s.ep),
            PumpEnd::Failed { .. } => true,
        };
        if !finished {
            return;
        }
        if let Some(br) = bridges.remove(&b) {
            bridge_of.remove(&(br.sock, br.id));
            let fd = br.fd.as_raw_fd();
            sys::epoll_del(self.epfd.as_raw_fd(), fd);
            hooks().fd_closed(fd);
            br.finish(&mut s.ep, now, end);
        }
    }
}

/// Starts a connection to `addr` bridged to `fd` at once, without waiting: the
/// handshake completes (or fails) on the engine thread; see [`BridgeOptions`] for
/// how a non-blocking connect's completion is reported. Returns the local UDP
/// address and the bridge's handle.
pub fn connect_bridged(
    addr: SocketAddr,
    opts: StreamOptions,
    fd: OwnedFd,
    bridge: BridgeOptions,
) -> io::Result<(SocketAddr, BridgeHandle)> {
    let addr = udp::canonical(addr);
    let engine = engine()?;
    let mut st = engine.state.lock();
    let (i, id) = engine.start_connect(&mut st, addr, opts)?;
    let local = st.socks[i].as_ref().map(|s| s.local);
    let h = match engine.add_bridge(&mut st, i, id, fd, bridge) {
        Ok(h) => h,
        Err(e) => {
            if let Some(s) = st.socks[i].as_mut() {
                s.ep.abort(Instant::now(), id);
            }
            return Err(e);
        }
    };
    engine.after(&mut st, i, false);
    drop(st);
    engine.wake();
    let local = local.ok_or_else(|| io::Error::other("socket gone"))?;
    Ok((local, h))
}

/// Serves RGTP connections on a bound UDP socket, bridging each accepted connection
/// to the fd `hand_over` makes for it (the shim's listeners). The socket may come
/// from a parent process that exited: datagrams queued meanwhile are still there.
/// With `opts.shared_port`, the socket is one of a port group (bound with
/// `udp::bind_shared`; see the `group` module) whose members forward each other's
/// packets.
pub fn listen_bridged(
    udp: UdpSocket,
    mut opts: ListenerOptions,
    hand_over: HandOver,
) -> io::Result<SocketAddr> {
    let engine = engine()?;
    let key = opts.key.take().unwrap_or_else(StaticKey::generate);
    let group = if opts.shared_port {
        Some(Group::new(&key)?)
    } else {
        None
    };
    let tag = group.as_ref().map(|g| g.tag);
    opts.key = Some(key);
    let ep = stream::listener_endpoint(opts, tag);
    let mut st = engine.state.lock();
    let i = engine.add_sock_in_group(&mut st, udp, ep, group)?;
    let s = st.socks[i]
        .as_mut()
        .ok_or_else(|| io::Error::other("socket gone"))?;
    s.hand_over = Some(hand_over);
    let local = s.local;
    // Datagrams may already wait in an inherited socket's queue.
    receive(&mut st, i, Instant::now(), false);
    drop(st);
    engine.wake();
    Ok(local)
}

/// Waits until every connection of this process has had everything it wrote (and
/// everything bridged fds hold) acknowledged by its peer, or failed, or `timeout`
/// passed. Returns whether everything was delivered. For exit handlers: an in-process
/// engine dies with the process, unlike the kernel's TCP.
pub fn flush_all(timeout: Duration) -> bool {
    let Some(e) = ENGINE.lock().clone() else {
        return true;
    };
    e.flush(timeout, false)
}

/// At process exit: whatever the application's bridged fds hold is the last it will
/// write, every bridge sends its FIN, and this waits until the peers acknowledged
/// everything (at most `timeout`). Returns whether they did.
pub fn exit_linger(timeout: Duration) -> bool {
    let Some(e) = ENGINE.lock().clone() else {
        return true;
    };
    e.state.lock().exiting = true;
    e.wake();
    e.flush(timeout, true)
}

impl Engine {
    /// Waits for `pending_work`; `exiting`: also until every bridge has sent its FIN
    /// (the engine turns the app's silence into EOF only when it next pumps).
    fn flush(&self, timeout: Duration, exiting: bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        loop {
            let fins_due = exiting && st.bridges.values().any(|b| b.fin_due());
            if !fins_due && !pending_work(&mut st) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Re-check now and then too: bytes can sit in a bridged fd without an event.
            let _ = self
                .progress
                .wait_until(&mut st, deadline.min(now + Duration::from_millis(20)));
        }
    }
}

fn pending_work(st: &mut State) -> bool {
    if st.bridges.values().any(|b| b.holds_app_bytes()) {
        return true;
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

//! Thin drivers that run the sans-IO exposer and puller over a real UDP socket with
//! the real clock. All protocol decisions stay in the state machines.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::exposer::Exposer;
use crate::puller::{PullError, PullEvent};
use crate::shaper::Shaper;
use crate::swarm::Swarm;
use crate::udp::{Receiver, Sender};

/// Waits for readability with microsecond precision (pacing needs better than poll's ms).
fn wait_readable(fd: libc::c_int, timeout: Duration) -> bool {
    wait_any_readable(&[fd], timeout)
}

/// Waits until one of `fds` (at most two) is readable, or `timeout`.
pub(crate) fn wait_any_readable(fds: &[libc::c_int], timeout: Duration) -> bool {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 2];
    let n = fds.len().min(2);
    for (p, &fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd;
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `n` (≤ 2) valid pollfds, a valid timespec and no signal mask change.
    let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    r > 0
}

/// Serves until `stop` is set. Datagrams are handled in batches and the answers sent
/// right after each batch, so queued ciphertext stays small. With a `shaper` (the
/// `--max-rate` cap), what is sent goes through it, at its rate and in its order.
pub fn serve(
    sock: &UdpSocket,
    ex: &mut Exposer,
    stop: &AtomicBool,
    mut shaper: Option<&mut Shaper>,
) -> io::Result<()> {
    let mut rx = Receiver::default();
    let tx = Sender::default();
    let send = |t: &crate::transmit::Transmit| {
        if let Err(e) = tx.send(sock, t) {
            tracing::debug!("send to {}: {e}", t.dest);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let mut wait = Duration::from_millis(200);
        if let Some(t) = shaper.as_deref().and_then(Shaper::poll_timeout) {
            wait = wait.min(t.saturating_duration_since(Instant::now()));
        }
        if !wait.is_zero() {
            wait_readable(sock.as_raw_fd(), wait);
        }
        for _ in 0..64 {
            let now = Instant::now();
            let n = rx.recv(sock, |from, d| ex.handle(now, from, d))?;
            while let Some(t) = ex.poll_transmit() {
                match shaper.as_deref_mut() {
                    Some(s) => s.push(t),
                    None => send(&t),
                }
            }
            if let Some(s) = shaper.as_deref_mut() {
                while let Some(t) = s.poll(now) {
                    send(&t);
                }
            }
            if n == 0 {
                break;
            }
        }
        if let Some(s) = shaper.as_deref_mut() {
            let now = Instant::now();
            while let Some(t) = s.poll(now) {
                send(&t);
            }
        }
        ex.log_quiet_sources(Instant::now(), false);
    }
    Ok(())
}

/// How a pull loop ended.
#[derive(Debug)]
pub enum PullEnd<E> {
    Done,
    Failed(PullError),
    Interrupted,
    /// The event handler failed (e.g. the disk is full).
    Sink(E),
    Io(io::Error),
}

/// What a pull's driver hands its events to.
pub trait PullHandler {
    type Error;
    /// Every event but Done and Failed (chunks to store, start), with the index of
    /// the source it came from.
    fn on_event(&mut self, source: usize, ev: PullEvent) -> Result<(), Self::Error>;
    /// About every 100 ms: progress and persistence.
    fn on_tick(&mut self, p: &Swarm) -> Result<(), Self::Error>;
    /// True while the consumer is behind (e.g. the disk): no new requests go out.
    fn paused(&self) -> bool {
        false
    }
    /// Each loop turn: report finished work (offloaded verifications) to the puller.
    fn poll_completions(&mut self, _p: &mut Swarm) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Joins multicast group `g` for a pull (said in the log); `None` when it cannot be
/// joined, and the pull goes on by unicast.
pub(crate) fn join_group(g: std::net::SocketAddrV4) -> Option<(std::net::SocketAddrV4, UdpSocket)> {
    match crate::udp::join_group(g) {
        Ok(s) => {
            tracing::info!("joined multicast group {g}");
            Some((g, s))
        }
        Err(e) => {
            tracing::info!("cannot join multicast group {g} ({e}): pulling by unicast");
            None
        }
    }
}

/// Runs a pull (from one source or several) to its end.
pub fn pull<H: PullHandler>(
    sock: &UdpSocket,
    p: &mut Swarm,
    stop: &AtomicBool,
    h: &mut H,
) -> PullEnd<H::Error> {
    let mut rx = Receiver::default();
    let tx = Sender::default();
    let mut last_tick = Instant::now();
    // The multicast group's socket, while a source is a member (joined when the
    // manifest names a group, dropped when the puller leaves it).
    let mut group: Option<(std::net::SocketAddrV4, UdpSocket)> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return PullEnd::Interrupted;
        }
        let wanted = p.group();
        if group.as_ref().map(|g| g.0) != wanted {
            group = wanted.and_then(join_group);
            if wanted.is_some() && group.is_none() {
                p.leave_group();
            }
        }
        let mut received = 0;
        if let Some((g, gs)) = &group {
            for _ in 0..16 {
                let now = Instant::now();
                match rx.recv(gs, |_, d| p.handle_group(now, *g, d)) {
                    Ok(0) => break,
                    Ok(n) => received += n,
                    Err(e) => return PullEnd::Io(e),
                }
                if let Some(end) = hand_out_events(p, h) {
                    return end;
                }
            }
        }
        for _ in 0..16 {
            let now = Instant::now();
            match rx.recv(sock, |from, d| p.handle(now, from, d)) {
                Ok(0) => break,
                Ok(n) => received += n,
                Err(e) => return PullEnd::Io(e),
            }
            // Hand verified chunks out as they come so memory stays bounded.
            if let Some(end) = hand_out_events(p, h) {
                return end;
            }
        }
        if let Err(e) = h.poll_completions(p) {
            return PullEnd::Sink(e);
        }
        let now = Instant::now();
        if p.poll_timeout().is_some_and(|t| t <= now) {
            p.handle_timeout(now);
        }
        while !h.paused() {
            let Some(t) = p.poll_transmit(now) else { break };
            if let Err(e) = tx.send(sock, &t) {
                tracing::debug!("send: {e}");
            }
        }
        if let Some(end) = hand_out_events(p, h) {
            return end;
        }
        if now.duration_since(last_tick) >= Duration::from_millis(100) {
            last_tick = now;
            tracing::trace!("{}", p.debug_state(now));
            if let Err(e) = h.on_tick(p) {
                return PullEnd::Sink(e);
            }
        }
        if h.paused() {
            std::thread::sleep(Duration::from_micros(200));
        } else if received == 0 {
            let wait = p
                .poll_timeout()
                .map_or(Duration::from_millis(100), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(100));
            if !wait.is_zero() {
                match &group {
                    Some((_, gs)) => {
                        wait_any_readable(&[sock.as_raw_fd(), gs.as_raw_fd()], wait);
                    }
                    None => {
                        wait_readable(sock.as_raw_fd(), wait);
                    }
                }
            }
        }
    }
}

/// Hands the puller's pending events to `h`; `Some` when the pull ended (done, failed,
/// or the handler failed).
fn hand_out_events<H: PullHandler>(p: &mut Swarm, h: &mut H) -> Option<PullEnd<H::Error>> {
    while let Some((source, ev)) = p.poll_event() {
        match ev {
            PullEvent::Done => return Some(PullEnd::Done),
            PullEvent::Failed(e) => return Some(PullEnd::Failed(e)),
            ev => {
                if let Err(e) = h.on_event(source, ev) {
                    return Some(PullEnd::Sink(e));
                }
            }
        }
    }
    None
}

/// Ctrl-C / SIGTERM flag shared by the binaries.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM set [`STOP`] instead of killing the process, so state can
/// be saved on the way out.
pub fn install_stop_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

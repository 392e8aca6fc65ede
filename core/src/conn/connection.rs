//! One connection's state machine (sans-IO): handshake retransmission on the client,
//! sealing and opening SHORT packets, the two stream halves, acknowledgements and
//! credit, re-requests, tail probes, pacing, keepalives, idle timeout, path validation
//! and migration, half-close, reset and linger.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::liveness::SilenceProbe;
use super::noise::{ClientHandshake, Established, Transport};
use super::stream::{RecvStream, SendStream};
use super::wire::{
    self as cw, Ack, Frame, Packet, TransportParams, ACK_FIXED_LEN, MAX_WANT_RANGES,
    SHORT_HEADER_LEN, STREAM_HEADER_LEN, TAG_LEN, WANT_RANGE_LEN,
};
use super::{ConnConfig, ConnId, ConnState, Event, Readiness};
use crate::cc::RateControl;
use crate::rng::Rng;
use crate::rtt::{backoff, SmoothedRtt};
use crate::transmit::Transmit;
use crate::wire::Writer;

/// How long a reader may sit on an acknowledgement for a single packet.
pub(crate) const MAX_ACK_DELAY: Duration = Duration::from_millis(2);
/// Cap on probe and re-request backoff: after an outage, traffic resumes within this.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Shortest time a finished connection keeps answering its peer (covers a couple of
/// the peer's probes at their longest backoff).
const MIN_DRAIN: Duration = Duration::from_secs(5);
/// Extra copies of the last ACK sent while draining after a graceful end, so one lost
/// datagram does not leave the peer waiting for its FIN's acknowledgement.
const FINAL_ACK_COPIES: u32 = 2;
/// RETRY/INIT retransmission starts here and doubles to `MAX_BACKOFF`.
const HS_INITIAL_RTO: Duration = Duration::from_millis(250);
/// RTT assumed before the first sample.
const INITIAL_RTT: Duration = Duration::from_millis(100);
/// Send times remembered for RTT samples.
const SENT_TIMES_CAP: usize = 4096;
/// Packet numbers this far below the largest are too old to accept.
const REPLAY_WINDOW: u64 = 1024;
/// Datagrams per GSO batch.
const MAX_BATCH: usize = 64;
/// Bytes per GSO batch (UDP_SEGMENT sends at most one 64 KiB super-datagram).
const MAX_BATCH_BYTES: usize = 65_000;
/// Path-validation attempts before a new address is given up.
const MAX_PATH_TRIES: u32 = 6;
/// PATH_RESPONSEs waiting to be sent; challenges beyond are dropped (the peer asks
/// again), so a flood of them costs no memory.
const MAX_PENDING_PATH_RESPONSES: usize = 8;
/// Each side's window grows to this many round trips of what it measures the path
/// delivering: at 10 % loss both ways, a hole is still open after four requests
/// (five round trips and their timeouts) a few times a second at 200 Mbit/s, and a
/// window of four (the 4 MiB default on a 40 ms path) stalled behind such holes.
const WINDOW_RTTS: f64 = 8.0;
/// Pacing burst on a host that wakes the driver on time.
const PACING_BURST: Duration = Duration::from_millis(2);
/// Copies of a RESET sent while draining after an abort.
const RESET_COPIES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Client: INIT sent, waiting for RESPONSE.
    Handshake,
    Established,
    /// Ended. May still answer the peer until `drain_until`.
    Closed,
}

/// A connection's timers, from its smoothed RTT (the same estimator the rate
/// control keeps; the connection's also takes handshake and re-request samples).
type Rtt = SmoothedRtt;

impl SmoothedRtt {
    /// Base probe / re-request timeout, before backoff.
    fn pto(&self) -> Duration {
        self.srtt + (self.rttvar * 4).max(Duration::from_millis(1)) + MAX_ACK_DELAY
    }
    /// Grace before a gap counts as a loss rather than reordering.
    fn reorder_delay(&self) -> Duration {
        (self.srtt / 8)
            .max(self.rttvar / 2)
            .max(Duration::from_millis(1))
    }
    /// How long a re-requested range may take to come back before it is asked for
    /// again: a round trip through the writer plus its variation (as the puller's
    /// re-request timeout, `cc::RateControl::rto`, without the blackout backoff).
    fn rerequest(&self) -> Duration {
        self.srtt
            + (self.rttvar * 4)
                .max(self.srtt / 4)
                .max(Duration::from_millis(2))
    }
}

/// Sliding replay window over packet numbers (WireGuard/IPsec style).
#[derive(Debug, Clone)]
struct ReplayWindow {
    largest: Option<u64>,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn new() -> Self {
        Self {
            largest: None,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }
    fn slot(pn: u64) -> (usize, u64) {
        let i = pn % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }
    fn get(&self, pn: u64) -> bool {
        let (w, b) = Self::slot(pn);
        self.bits[w] & b != 0
    }
    fn put(&mut self, pn: u64, v: bool) {
        let (w, b) = Self::slot(pn);
        if v {
            self.bits[w] |= b;
        } else {
            self.bits[w] &= !b;
        }
    }
    /// Could `pn` be new? (Checked before decrypting, to save the work.)
    fn may_accept(&self, pn: u64) -> bool {
        match self.largest {
            None => true,
            Some(l) if pn > l => true,
            Some(l) => l - pn < REPLAY_WINDOW && !self.get(pn),
        }
    }
    /// Records an authenticated `pn`; false if it was seen or is too old.
    fn accept(&mut self, pn: u64) -> bool {
        match self.largest {
            Some(l) if pn <= l => {
                if l - pn >= REPLAY_WINDOW || self.get(pn) {
                    return false;
                }
            }
            Some(l) => {
                if pn - l >= REPLAY_WINDOW {
                    self.bits = [0; (REPLAY_WINDOW / 64) as usize];
                } else {
                    for q in l + 1..pn {
                        self.put(q, false);
                    }
                }
                self.largest = Some(pn);
            }
            None => self.largest = Some(pn),
        }
        self.put(pn, true);
        true
    }
}

/// An address being validated after packets came from it.
#[derive(Debug, Clone)]
struct PathProbe {
    addr: SocketAddr,
    challenge: [u8; 8],
    sent_at: Option<Instant>,
    tries: u32,
    pending: bool,
    /// Anti-amplification: bytes received from and sent to this address.
    bytes_in: usize,
    bytes_out: usize,
}

/// Counters for tests, logs and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct ConnStats {
    /// Datagrams accepted for this connection.
    pub datagrams_in: u64,
    /// Bytes of those datagrams (UDP payloads).
    pub bytes_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes sent (UDP payloads).
    pub bytes_out: u64,
    /// Datagrams ignored: out of phase, from the wrong address, malformed, or replayed.
    pub dropped: u64,
    /// Stream bytes sent for the first time.
    pub stream_bytes_sent: u64,
    /// Stream bytes sent again (asked for again, or probes).
    pub stream_bytes_resent: u64,
    /// Stream bytes received in order, ready for `read`.
    pub stream_bytes_received: u64,
    /// Ranges the reader asked for again (gaps past their re-request timeout).
    pub wants_sent: u64,
    /// Bytes the peer asked for again (the writer's view of loss).
    pub stream_bytes_lost: u64,
    /// Probes sent after a silent timeout.
    pub probes: u64,
    /// Acknowledgements sent.
    pub acks_sent: u64,
    /// Times the peer's address changed (path migrations followed).
    pub migrations: u64,
    /// Handshake messages sent again.
    pub handshake_retransmits: u64,
    /// High-water marks of buffered stream bytes (the bounded-memory claim).
    pub max_send_buffered: u64,
    /// High-water mark of received stream bytes not yet read.
    pub max_recv_buffered: u64,
    /// Pacing credit dropped because the sender came back later than the burst
    /// allowance covers (the driver was late: a loaded host).
    pub pacing_clipped_bytes: u64,
}

pub(crate) struct Conn {
    pub id: ConnId,
    pub side: Side,
    pub phase: Phase,
    pub remote: SocketAddr,
    pub local_cid: u64,
    pub peer_cid: u64,
    cfg: ConnConfig,
    local_params: TransportParams,

    // Client handshake.
    hs: Option<ClientHandshake>,
    init_token: Vec<u8>,
    init_pending: bool,
    hs_sent_at: Option<Instant>,
    hs_attempts: u32,
    hs_deadline: Instant,
    pinned_key: Option<[u8; 32]>,
    finish_pkt: Option<Vec<u8>>,
    finish_pending: bool,
    finish_sent_at: Instant,
    finish_tries: u32,
    /// Client: the server has proved it finished the handshake (a SHORT came).
    confirmed: bool,

    transport: Option<Transport>,
    pub peer_key: Option<[u8; 32]>,
    pub peer_reset_token: Option<[u8; 16]>,
    peer_max_datagram: usize,
    datagram: usize,
    idle_timeout: Duration,
    keepalive: Duration,

    next_pn: u64,
    replay: ReplayWindow,
    largest_rx_pn: u64,
    largest_rx_at: Instant,
    sent_times: VecDeque<(u64, Instant)>,
    largest_acked_pn: Option<u64>,
    /// When the packet `largest_acked_pn` was sent (bounds the rate model's samples).
    largest_acked_sent: Option<Instant>,

    send: SendStream,
    recv: RecvStream,
    rtt: Rtt,
    cc: RateControl,
    pacer_tokens: f64,
    pacer_at: Instant,
    pacer_next: Option<Instant>,
    /// How late the driver calls back for paced sends (a decaying maximum).
    pacer_late: Duration,

    ack_now: bool,
    ack_due: Option<Instant>,
    ack_dirty: bool,
    eliciting_since_ack: u32,
    ping_pending: bool,

    pto_anchor: Instant,
    probes: u32,

    last_rx: Instant,
    last_tx: Instant,

    /// Receive-window tuning: when the current measurement began, and how much the
    /// application had read then.
    drs_at: Instant,
    drs_mark: u64,
    /// When the rate and recovery state was last logged (debug level, once a second).
    state_logged_at: Instant,

    path_probe: Option<PathProbe>,
    path_responses: Vec<(SocketAddr, [u8; 8])>,
    /// A reader's PINGs when data stops arriving (its own address may have changed).
    silence: SilenceProbe,

    /// The application released its handle (close or abort).
    pub released: bool,
    linger_deadline: Option<Instant>,
    reset_pending: Option<u8>,
    reset_copies: u32,
    reset_next: Option<Instant>,
    final_acks: u32,
    final_ack_next: Option<Instant>,
    /// Aborted by us: further packets from the peer get a RESET.
    aborted: bool,
    error: Option<ErrorKind>,
    drain_until: Option<Instant>,
    closed_reported: bool,

    read_armed: bool,
    write_armed: bool,
    flush_armed: bool,
    events: Vec<Event>,
    /// Where this connection's random draws come from (its Noise ephemeral key and
    /// path challenges): forked from its endpoint's.
    rng: Rng,
    pub stats: ConnStats,
}

/// What the endpoint must learn after a packet was handled.
#[derive(Debug, Default)]
pub(crate) struct RxOutcome {
    /// The handshake just completed (client).
    pub connected: bool,
}

impl Conn {
    #[allow(clippy::too_many_arguments)]
    fn base(
        id: ConnId,
        side: Side,
        phase: Phase,
        remote: SocketAddr,
        local_cid: u64,
        cfg: ConnConfig,
        local_params: TransportParams,
        now: Instant,
        rng: Rng,
    ) -> Self {
        let keepalive = keepalive_for(&cfg, cfg.idle_timeout);
        Self {
            id,
            side,
            phase,
            remote,
            local_cid,
            peer_cid: 0,
            local_params,
            hs: None,
            init_token: Vec::new(),
            init_pending: false,
            hs_sent_at: None,
            hs_attempts: 0,
            hs_deadline: now + cfg.handshake_timeout,
            pinned_key: None,
            finish_pkt: None,
            finish_pending: false,
            finish_sent_at: now,
            finish_tries: 0,
            confirmed: side == Side::Server,
            transport: None,
            peer_key: None,
            peer_reset_token: None,
            peer_max_datagram: cw::MIN_DATAGRAM,
            datagram: cw::MIN_DATAGRAM,
            idle_timeout: cfg.idle_timeout,
            keepalive,
            next_pn: 0,
            replay: ReplayWindow::new(),
            largest_rx_pn: 0,
            largest_rx_at: now,
            sent_times: VecDeque::new(),
            largest_acked_pn: None,
            largest_acked_sent: None,
            send: SendStream::new(0, cfg.recv_window),
            recv: RecvStream::new(cfg.recv_window),
            rtt: Rtt::new(INITIAL_RTT),
            cc: RateControl::new(now, INITIAL_RTT),
            pacer_tokens: 0.0,
            pacer_at: now,
            pacer_next: None,
            pacer_late: Duration::ZERO,
            ack_now: false,
            ack_due: None,
            ack_dirty: false,
            eliciting_since_ack: 0,
            ping_pending: false,
            pto_anchor: now,
            probes: 0,
            last_rx: now,
            last_tx: now,
            drs_at: now,
            drs_mark: 0,
            state_logged_at: now,
            path_probe: None,
            path_responses: Vec::new(),
            silence: SilenceProbe::default(),
            released: false,
            linger_deadline: None,
            reset_pending: None,
            reset_copies: 0,
            reset_next: None,
            final_acks: 0,
            final_ack_next: None,
            aborted: false,
            error: None,
            drain_until: None,
            closed_reported: false,
            read_armed: true,
            write_armed: true,
            flush_armed: false,
            events: Vec::new(),
            rng,
            stats: ConnStats::default(),
            cfg,
        }
    }

    /// A client connection: the INIT goes out on the next `poll_transmit`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_client(
        id: ConnId,
        remote: SocketAddr,
        local_cid: u64,
        cfg: ConnConfig,
        local_params: TransportParams,
        static_private: [u8; 32],
        pinned_key: Option<[u8; 32]>,
        now: Instant,
        rng: Rng,
    ) -> io::Result<Self> {
        let mut c = Self::base(
            id,
            Side::Client,
            Phase::Handshake,
            remote,
            local_cid,
            cfg,
            local_params,
            now,
            rng,
        );
        c.pinned_key = pinned_key;
        c.hs = Some(
            ClientHandshake::start(&static_private, local_cid, &mut c.rng)
                .map_err(|e| io::Error::other(e.to_string()))?,
        );
        c.init_pending = true;
        Ok(c)
    }

    /// A server connection whose handshake just finished.
    #[allow(clippy::too_many_arguments)]
    pub fn new_server(
        id: ConnId,
        remote: SocketAddr,
        local_cid: u64,
        cfg: ConnConfig,
        local_params: TransportParams,
        est: Established,
        peer: TransportParams,
        rtt_sample: Option<Duration>,
        now: Instant,
        rng: Rng,
    ) -> Self {
        let mut c = Self::base(
            id,
            Side::Server,
            Phase::Established,
            remote,
            local_cid,
            cfg,
            local_params,
            now,
            rng,
        );
        c.install(est, peer, rtt_sample, now);
        // Tell the client at once that its FINISH arrived.
        c.ack_now = true;
        c.ack_dirty = true;
        c
    }

    fn install(
        &mut self,
        est: Established,
        peer: TransportParams,
        rtt_sample: Option<Duration>,
        now: Instant,
    ) {
        self.transport = Some(est.transport);
        self.peer_key = Some(est.peer_static);
        self.peer_cid = peer.cid;
        self.peer_reset_token = Some(peer.reset_token);
        self.peer_max_datagram = peer.max_datagram as usize;
        self.datagram = self.path_datagram();
        self.idle_timeout = self
            .cfg
            .idle_timeout
            .min(Duration::from_millis(peer.idle_timeout_ms as u64));
        self.keepalive = keepalive_for(&self.cfg, self.idle_timeout);
        self.send.set_initial_limit(peer.initial_limit);
        if let Some(r) = rtt_sample {
            self.rtt.sample(r.max(Duration::from_micros(1)));
        }
        self.cc = RateControl::new(now, self.rtt.srtt);
        self.pacer_tokens = self.burst();
        self.pacer_at = now;
        self.last_rx = now;
        self.last_tx = now;
        self.pto_anchor = now;
    }

    fn path_datagram(&self) -> usize {
        let path = if crate::wire::is_loopback(self.remote.ip()) {
            self.cfg.loopback_max_datagram
        } else {
            self.cfg.max_datagram
        };
        path.min(self.peer_max_datagram)
            .clamp(cw::MIN_DATAGRAM, cw::MAX_DATAGRAM)
    }

    // ------------------------------------------------------------------ queries

    pub fn take_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    pub fn state(&self) -> ConnState {
        match self.phase {
            Phase::Handshake => ConnState::Connecting,
            Phase::Established => ConnState::Connected,
            Phase::Closed => ConnState::Closed { error: self.error },
        }
    }

    pub fn readiness(&self) -> Readiness {
        let closed = self.phase == Phase::Closed;
        let readable_bytes = self.recv.readable();
        let read_closed = self.recv.complete();
        let room = if self.phase == Phase::Established && self.error.is_none() {
            self.send.room()
        } else {
            0
        };
        Readiness {
            readable: readable_bytes > 0 || read_closed || self.error.is_some(),
            writable: room > 0 || self.error.is_some() || self.send.is_shutdown(),
            readable_bytes,
            writable_bytes: room,
            read_closed,
            closed,
            error: self.error,
        }
    }

    pub fn send_buffered(&self) -> usize {
        self.send.buffered()
    }
    pub fn recv_buffered(&self) -> u64 {
        self.recv.buffered()
    }
    pub fn srtt(&self) -> Duration {
        self.rtt.srtt
    }
    /// Rate model, windows and recovery state in one line (traces and tests).
    pub fn debug_state(&self) -> String {
        format!(
            "clip={} bw={:.1}Mb pace={:.1}Mb win={} infl={} loss={:.3} sharing={} backoff={} srtt={:?} min={:?} una={} next={} limit={} written={} retx={} probes={} | rx acked={} recvd={} limit={} gaps={} ooo={}",
            self.stats.pacing_clipped_bytes,
            self.cc.bandwidth() * 8e-6,
            self.cc.pacing_rate() * 8e-6,
            self.cc.window(),
            self.send.in_flight(),
            self.cc.loss(),
            self.cc.is_sharing(),
            self.cc.backoff,
            self.rtt.srtt,
            self.cc.min_rtt(),
            self.send.una(),
            self.send.next_new(),
            self.send.limit(),
            self.send.written(),
            self.send.has_retx(),
            self.probes,
            self.recv.acked(),
            self.recv.received(),
            self.recv.limit(),
            self.recv.gap_count(),
            self.recv.ooo_segments(),
        )
    }

    pub fn want_writable(&mut self) {
        if self.readiness().writable_bytes > 0 || self.phase == Phase::Closed {
            self.events.push(Event::Writable);
        } else {
            self.write_armed = true;
        }
    }

    /// Every written byte (and the FIN, after a shutdown) is acknowledged. When not,
    /// a `Writable` event follows the next acknowledgement progress.
    pub fn send_complete(&mut self) -> bool {
        let done = self.send.all_acked();
        if !done {
            self.flush_armed = true;
        }
        done
    }

    /// The endpoint may forget this connection (and its connection ID) now.
    pub fn drained(&self, now: Instant) -> bool {
        self.phase == Phase::Closed && self.drain_until.is_none_or(|t| now >= t)
    }

    // --------------------------------------------------------------- app calls

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.phase == Phase::Handshake {
            self.read_armed = true;
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = self.recv.read(buf);
        if n > 0 {
            self.after_read();
            return Ok(n);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.read_nothing()
    }

    /// Hands `take` the readable bytes in place (a contiguous front part of them); it
    /// returns how many it used, and that is the result. With nothing readable, `take`
    /// is not called and the result is as for [`Conn::read`]: `Ok(0)` at EOF, the
    /// connection's error, or `WouldBlock`.
    pub fn read_with(&mut self, take: impl FnOnce(&[u8]) -> usize) -> io::Result<usize> {
        if self.phase == Phase::Handshake {
            self.read_armed = true;
            return Err(ErrorKind::WouldBlock.into());
        }
        let data = self.recv.peek();
        if !data.is_empty() {
            let n = take(data).min(data.len());
            if n > 0 {
                self.recv.consume(n);
                self.after_read();
            }
            return Ok(n);
        }
        self.read_nothing()
    }

    /// The reader freed room: tell the writer soon if that opens its window enough.
    fn after_read(&mut self) {
        if self.recv.credit_update_due() && self.phase == Phase::Established {
            self.ack_now = true;
        }
    }

    /// What a read returns when no bytes are ready.
    fn read_nothing(&mut self) -> io::Result<usize> {
        if self.recv.at_eof() {
            return Ok(0);
        }
        if let Some(e) = self.error {
            return Err(e.into());
        }
        if self.phase == Phase::Closed {
            return Ok(0);
        }
        self.read_armed = true;
        Err(ErrorKind::WouldBlock.into())
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.error {
            return Err(e.into());
        }
        if self.send.is_shutdown() || self.phase == Phase::Closed {
            return Err(ErrorKind::BrokenPipe.into());
        }
        if self.phase == Phase::Handshake {
            self.write_armed = true;
            return Err(ErrorKind::WouldBlock.into());
        }
        if data.is_empty() {
            return Ok(0);
        }
        let n = self.send.write(data);
        if n < data.len() {
            self.write_armed = true;
        }
        self.stats.max_send_buffered = self
            .stats
            .max_send_buffered
            .max(self.send.buffered() as u64);
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    pub fn shutdown_write(&mut self, now: Instant) -> io::Result<()> {
        if let Some(e) = self.error {
            return Err(e.into());
        }
        if self.phase == Phase::Handshake {
            // Remember it: the FIN goes out once connected.
            self.send.shutdown();
            return Ok(());
        }
        if self.phase == Phase::Established {
            self.send.shutdown();
            self.check_done(now);
        }
        Ok(())
    }

    /// Graceful close: half-close, drop anything the peer still sends, report `Closed`
    /// once the peer has acknowledged every byte (or the linger time ran out).
    pub fn close(&mut self, now: Instant) {
        self.released = true;
        match self.phase {
            Phase::Handshake => {
                self.terminate(now, Some(ErrorKind::ConnectionAborted), false);
            }
            Phase::Established => {
                self.send.shutdown();
                self.recv.set_discard();
                self.linger_deadline = Some(now + self.cfg.linger);
                self.check_done(now);
            }
            Phase::Closed => {}
        }
    }

    /// Abort: RESET the peer (its reads and writes fail with `ConnectionReset`).
    pub fn abort(&mut self, now: Instant) {
        self.released = true;
        match self.phase {
            Phase::Handshake => self.terminate(now, Some(ErrorKind::ConnectionAborted), false),
            Phase::Established => self.reset(now, 0, ErrorKind::ConnectionAborted),
            Phase::Closed => {}
        }
    }

    fn reset(&mut self, now: Instant, code: u8, error: ErrorKind) {
        self.reset_pending = Some(code);
        self.reset_copies = 0;
        self.aborted = true;
        self.terminate(now, Some(error), true);
    }

    fn terminate(&mut self, now: Instant, error: Option<ErrorKind>, drain: bool) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.error = error;
        self.drain_until = if drain && self.transport.is_some() {
            Some(now + (self.rtt.pto() * 3).max(MIN_DRAIN))
        } else {
            None
        };
        if self.drain_until.is_some() && !self.aborted {
            self.ack_now = true;
            self.ack_dirty = true;
            self.final_acks = FINAL_ACK_COPIES;
            self.final_ack_next = Some(now + self.rtt.pto());
        }
        self.ping_pending = false;
        self.finish_pending = false;
        self.path_probe = None;
        tracing::debug!(id = ?self.id, side = ?self.side, ?error, remote = %self.remote, "connection ended");
        if !self.closed_reported {
            self.closed_reported = true;
            self.events.push(Event::Readable);
            self.events.push(Event::Writable);
            self.events.push(Event::Closed { error });
        }
    }

    /// The server refused (REFUSE, or ICMP port unreachable while connecting).
    pub fn refused(&mut self, now: Instant) {
        if self.phase == Phase::Handshake {
            self.terminate(now, Some(ErrorKind::ConnectionRefused), false);
        }
    }

    /// A valid STATELESS_RESET for this connection.
    pub fn stateless_reset(&mut self, now: Instant) {
        if self.phase == Phase::Established {
            // Every byte we wrote was acknowledged and the peer's stream is complete:
            // only the acknowledgement of our FIN went missing before the peer forgot
            // the connection (it had finished too). Not a failure.
            let finished = self.send.una() == self.send.written() && self.recv.complete();
            let error = if finished && self.send.is_shutdown() {
                None
            } else {
                Some(ErrorKind::ConnectionReset)
            };
            self.terminate(now, error, false);
        } else if self.phase == Phase::Closed {
            self.drain_until = None;
        }
    }

    fn check_done(&mut self, now: Instant) {
        if self.phase != Phase::Established {
            return;
        }
        let sent_all = self.send.is_shutdown() && self.send.all_acked();
        if sent_all && self.recv.complete() {
            self.terminate(now, None, true);
        } else if sent_all && self.released && self.recv.discarded() > 0 {
            // Closed by the application with bytes it never read, or the peer wrote
            // after the close: nobody will read what it writes, so tell it (its
            // writes fail), as TCP's RST does. A peer that wrote nothing more is given
            // until the linger deadline to close its side (TCP's FIN_WAIT_2), so both
            // ends closing at once end gracefully.
            self.end_released(now);
        }
    }

    /// Ends a connection the application released once the peer has every byte: the
    /// peer gets RESET code 1 (its further writes fail; what it got stays readable).
    fn end_released(&mut self, now: Instant) {
        self.reset_pending = Some(1);
        self.reset_copies = 0;
        self.aborted = true;
        self.terminate(now, None, true);
    }

    // --------------------------------------------------------------- receiving

    /// Client: a RESPONSE for this connection.
    pub fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        src_cid: u64,
        noise: &[u8],
    ) -> RxOutcome {
        let mut out = RxOutcome::default();
        if self.phase != Phase::Handshake || from != self.remote {
            self.stats.dropped += 1;
            return out;
        }
        let Some(hs) = self.hs.as_mut() else {
            return out;
        };
        let Ok((server_key, payload)) = hs.read_response(noise) else {
            // Forged or damaged: the Noise state is unchanged; wait for the real one.
            self.stats.dropped += 1;
            return out;
        };
        // The server's connection ID is taken from the authenticated parameters; the
        // cleartext copy in the header is only a hint (a damaged one must not matter).
        let _ = src_cid;
        let peer = match TransportParams::decode(&payload) {
            Ok(p) => p,
            // Authenticated by the server's key, yet malformed: a broken server.
            _ => {
                self.terminate(now, Some(ErrorKind::InvalidData), false);
                return out;
            }
        };
        if let Some(pin) = self.pinned_key {
            if pin != server_key {
                self.terminate(now, Some(ErrorKind::PermissionDenied), false);
                return out;
            }
        }
        let Some(hs) = self.hs.take() else {
            return out;
        };
        let Ok((msg3, est)) = hs.finish(&self.local_params.encode()) else {
            self.terminate(now, Some(ErrorKind::Other), false);
            return out;
        };
        let sample = match (self.hs_sent_at, self.hs_attempts) {
            (Some(t), 1) => Some(now.saturating_duration_since(t)),
            _ => None,
        };
        self.install(est, peer, sample, now);
        self.finish_pkt = Some(
            Packet::Finish {
                dst_cid: self.peer_cid,
                noise: &msg3,
            }
            .encode(),
        );
        self.finish_pending = true;
        self.phase = Phase::Established;
        self.stats.datagrams_in += 1;
        self.events.push(Event::Connected);
        self.events.push(Event::Writable);
        self.write_armed = false;
        out.connected = true;
        // A shutdown asked for while connecting.
        self.check_done(now);
        out
    }

    /// Client: a RETRY for this connection.
    pub fn on_retry(&mut self, from: SocketAddr, token: &[u8]) {
        if self.phase == Phase::Handshake && from == self.remote && self.init_token.is_empty() {
            self.init_token = token.to_vec();
            self.init_pending = true;
        }
    }

    /// Server: the client sent FINISH again (our confirmation was lost).
    pub fn on_finish_again(&mut self) {
        if self.phase != Phase::Handshake {
            self.ack_now = true;
            self.ack_dirty = true;
        }
    }

    /// Could this packet number be new? Checked before the AEAD work.
    pub fn may_accept_pn(&self, pn: u64) -> bool {
        self.transport.is_some() && self.replay.may_accept(pn)
    }

    /// Opens a SHORT packet's body into `out`; `None` if it does not authenticate.
    pub fn open(&self, pn: u64, sealed: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let t = self.transport.as_ref()?;
        out.clear();
        out.extend_from_slice(sealed);
        t.open_in_place(pn, out)
    }

    /// A SHORT packet that authenticated. `plain` is its decrypted body.
    pub fn on_short(
        &mut self,
        now: Instant,
        from: SocketAddr,
        pn: u64,
        plain: &[u8],
        datagram_len: usize,
    ) -> RxOutcome {
        let out = RxOutcome::default();
        let Ok(frames) = cw::decode_frames(plain) else {
            self.stats.dropped += 1;
            return out;
        };
        if !self.replay.accept(pn) {
            self.stats.dropped += 1;
            return out;
        }
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram_len as u64;
        self.last_rx = now;
        if !self.confirmed {
            self.confirmed = true;
            self.finish_pending = false;
            self.finish_pkt = None;
            if self.finish_tries > 1 {
                // A FINISH was lost: the server could not open what we sent before
                // the copy that arrived. Send it again rather than wait for a probe.
                self.send.resend_all();
            }
        }
        let newest = self.replay.largest == Some(pn);
        if newest {
            self.largest_rx_pn = pn;
            self.largest_rx_at = now;
        }
        if from != self.remote && self.phase == Phase::Established {
            self.note_new_path(from, newest, datagram_len);
        }
        if self.phase == Phase::Closed {
            self.on_short_closed(now, &frames);
            return out;
        }
        let mut eliciting = false;
        let mut immediate = false;
        let mut challenge = None;
        let mut data = false;
        for f in frames {
            match f {
                Frame::Ping => {
                    eliciting = true;
                    immediate = true;
                }
                Frame::Ack(a) => self.on_ack(now, &a),
                Frame::Stream {
                    offset,
                    data: bytes,
                    fin,
                } => {
                    eliciting = true;
                    data = true;
                    let before = self.recv.received();
                    match self.recv.on_data(offset, bytes, fin) {
                        Ok(changed) => {
                            immediate |= changed || fin;
                        }
                        Err(_) => {
                            // The peer broke the stream's rules: abort.
                            self.recv.settle(now, self.rtt.reorder_delay());
                            self.reset(now, 0, ErrorKind::InvalidData);
                            return out;
                        }
                    }
                    self.stats.stream_bytes_received += self.recv.received() - before;
                    self.stats.max_recv_buffered =
                        self.stats.max_recv_buffered.max(self.recv.buffered());
                    if self.read_armed && (self.recv.readable() > 0 || self.recv.complete()) {
                        self.read_armed = false;
                        self.events.push(Event::Readable);
                    }
                }
                Frame::Reset { .. } => {
                    self.recv.settle(now, self.rtt.reorder_delay());
                    self.terminate(now, Some(ErrorKind::ConnectionReset), false);
                    return out;
                }
                Frame::PathChallenge(d) => {
                    eliciting = true;
                    challenge = Some(d);
                }
                Frame::PathResponse(d) => self.on_path_response(now, from, d),
            }
        }
        // A re-requested range came back: a round trip through the writer, which
        // also keeps a reader that writes nothing informed of the path's RTT.
        if let Some(asked) = self.recv.take_answered() {
            self.rtt.sample(
                now.saturating_duration_since(asked)
                    .max(Duration::from_micros(1)),
            );
        }
        // The gaps once per packet, after all its STREAM frames (not once per frame).
        self.recv.settle(now, self.rtt.reorder_delay());
        self.silence
            .on_receive(now, data, self.rtt.pto(), MAX_BACKOFF);
        // One PATH_RESPONSE per packet, to the last challenge in it: a response is no
        // larger than the packet that asked, so even toward an address nobody has
        // validated it cannot amplify (a packet packed with challenges had one
        // response each).
        if let Some(d) = challenge {
            if self.path_responses.len() < MAX_PENDING_PATH_RESPONSES {
                self.path_responses.push((from, d));
            }
        }
        if eliciting {
            self.ack_dirty = true;
            self.eliciting_since_ack += 1;
            if immediate || self.eliciting_since_ack >= 2 {
                self.ack_now = true;
            } else if self.ack_due.is_none() {
                self.ack_due = Some(now + MAX_ACK_DELAY);
            }
        }
        self.autotune(now);
        if now.saturating_duration_since(self.state_logged_at) >= Duration::from_secs(1)
            && tracing::enabled!(tracing::Level::DEBUG)
        {
            self.state_logged_at = now;
            tracing::debug!(id = ?self.id, side = ?self.side, state = %self.debug_state(), "rate");
        }
        self.check_done(now);
        out
    }

    /// Grows both windows towards `WINDOW_RTTS` round trips of what this end sees
    /// the path deliver (never beyond `max_recv_window`): the reader by the bytes
    /// the application read over the last round trip (as Linux sizes TCP's receive
    /// buffer: a slow reader keeps a small window, and what arrived but waits on a
    /// hole does not count twice), the writer by its rate model's estimate (not the
    /// peer's credit, which is only its word).
    fn autotune(&mut self, now: Instant) {
        let max = self.cfg.max_recv_window.max(self.cfg.recv_window);
        let srtt = self.rtt.srtt.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(self.drs_at);
        if elapsed >= srtt {
            let got = self.recv.consumed().saturating_sub(self.drs_mark);
            let per_rtt = got as f64 * srtt.as_secs_f64() / elapsed.as_secs_f64();
            let want = (WINDOW_RTTS * per_rtt).min(max as f64) as u64;
            if want > self.recv.window() {
                self.recv.grow_window(want);
                tracing::debug!(id = ?self.id, window = want, "receive window grows");
            }
            self.drs_at = now;
            self.drs_mark = self.recv.consumed();
        }
        let bdp = self.cc.bandwidth() * srtt.as_secs_f64();
        let want = (WINDOW_RTTS * bdp).min(max as f64) as u64;
        if want > self.send.window() {
            self.send.grow_window(want);
            if self.write_armed && self.send.room() > 0 {
                self.write_armed = false;
                self.events.push(Event::Writable);
            }
        }
    }

    /// While draining: re-acknowledge (graceful end) or re-RESET (after an abort).
    fn on_short_closed(&mut self, now: Instant, frames: &[Frame<'_>]) {
        if self.drain_until.is_none_or(|t| now >= t) {
            return;
        }
        if self.aborted {
            if self.reset_pending.is_none() && self.reset_next.is_none_or(|t| now >= t) {
                self.reset_pending = Some(0);
            }
            return;
        }
        for f in frames {
            match f {
                Frame::Stream {
                    offset, data, fin, ..
                } => {
                    let _ = self.recv.on_data(*offset, data, *fin);
                    self.ack_now = true;
                    self.ack_dirty = true;
                }
                Frame::Ping => {
                    self.ack_now = true;
                    self.ack_dirty = true;
                }
                _ => {}
            }
        }
        self.recv.settle(now, self.rtt.reorder_delay());
    }

    fn on_ack(&mut self, now: Instant, a: &Ack) {
        if self.largest_acked_pn.is_none_or(|l| a.largest_pn > l) && a.largest_pn < self.next_pn {
            self.largest_acked_pn = Some(a.largest_pn);
            let i = self
                .sent_times
                .partition_point(|&(pn, _)| pn < a.largest_pn);
            if let Some(&(pn, t)) = self.sent_times.get(i) {
                if pn == a.largest_pn {
                    self.largest_acked_sent = Some(t);
                    let raw = now.saturating_duration_since(t);
                    let delay = Duration::from_micros(a.ack_delay_us as u64);
                    let rtt = if raw > delay { raw - delay } else { raw };
                    self.rtt.sample(rtt.max(Duration::from_micros(1)));
                    self.cc.on_rtt_sample(now, rtt);
                }
            }
        }
        let o = self
            .send
            .on_ack(a.acked, a.limit, a.received, a.fin, &a.want);
        // Losses first, so the round that closes now counts them (the rate to send at
        // is delivery over the fraction that survives, as for pulls).
        if o.lost > 0 {
            self.cc.on_lost(o.lost);
            self.stats.stream_bytes_lost += o.lost;
        }
        self.cc.set_inflight(self.send.in_flight());
        if o.delivered > 0 {
            self.cc
                .on_delivered_sent(now, o.delivered, self.largest_acked_sent);
        }
        if o.progress() {
            self.probes = 0;
            self.pto_anchor = now;
        }
        if (o.credit_grew || o.newly_acked > 0) && self.write_armed && self.send.room() > 0 {
            self.write_armed = false;
            self.events.push(Event::Writable);
        }
        if self.flush_armed && self.send.all_acked() {
            self.flush_armed = false;
            self.events.push(Event::Writable);
        }
    }

    fn note_new_path(&mut self, from: SocketAddr, newest: bool, len: usize) {
        match &mut self.path_probe {
            Some(p) if p.addr == from => {
                p.bytes_in += len;
                if p.sent_at.is_none() {
                    p.pending = true;
                }
            }
            _ if newest => {
                self.path_probe = Some(PathProbe {
                    addr: from,
                    challenge: self.rng.bytes(),
                    sent_at: None,
                    tries: 0,
                    pending: true,
                    bytes_in: len,
                    bytes_out: 0,
                });
            }
            _ => {}
        }
    }

    fn on_path_response(&mut self, now: Instant, from: SocketAddr, d: [u8; 8]) {
        let ok = matches!(&self.path_probe, Some(p) if p.addr == from && p.challenge == d);
        if !ok {
            return;
        }
        self.path_probe = None;
        self.remote = from;
        self.datagram = self.path_datagram();
        // A new path: forget what the old one could carry (rule 4 of the security
        // rules) and start probing it afresh.
        self.cc = RateControl::new(now, self.rtt.srtt);
        self.pacer_tokens = self.burst();
        self.pacer_at = now;
        self.probes = 0;
        self.pto_anchor = now;
        self.stats.migrations += 1;
        // Anything lost while we sent to the dead address: the reader will ask.
        self.ack_now = true;
        self.ack_dirty = true;
    }

    /// The driver saw this host's addresses or routes change: our packets may now
    /// leave from another address, and the peer keeps sending to the old one until it
    /// hears from the new. Speak up at once (the peer validates the new address),
    /// keep probing while nothing comes back, and let a writer's probe timer start
    /// again from its base rather than from a backed-off interval.
    pub fn local_path_changed(&mut self, now: Instant) {
        if self.phase != Phase::Established {
            return;
        }
        self.ping_pending = true;
        self.silence.restart(now, self.rtt.pto(), MAX_BACKOFF);
        self.probes = 0;
        self.pto_anchor = now;
    }

    // --------------------------------------------------------------- timers

    fn pto(&self) -> Duration {
        backoff(self.rtt.pto(), self.probes, MAX_BACKOFF)
    }

    fn hs_rto(&self) -> Duration {
        let doublings = self.hs_attempts.saturating_sub(1).min(8);
        backoff(HS_INITIAL_RTO, doublings, MAX_BACKOFF)
    }

    fn finish_rto(&self) -> Duration {
        backoff(self.rtt.pto(), self.finish_tries, MAX_BACKOFF)
    }

    fn pto_armed(&self) -> bool {
        // Unacknowledged data (tail-loss probe), or the application waits for credit
        // (a lost window update would otherwise stall the stream for good).
        self.send.has_unacked() || (self.send.credit_blocked() && self.write_armed)
    }

    fn wants_data_send(&self) -> bool {
        self.send.has_retx() || (self.send.has_new() && self.cc_allows_new())
    }

    fn cc_allows_new(&self) -> bool {
        self.send.in_flight() < self.cc.window()
    }

    /// The earliest moment `handle_timeout` has work. Timers whose action is already
    /// pending (waiting for `poll_transmit`) are left out, so a driver never spins.
    pub fn next_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t: Instant| t.min(x)));
        match self.phase {
            Phase::Handshake => {
                at(self.hs_deadline);
                if let (Some(s), false) = (self.hs_sent_at, self.init_pending) {
                    at(s + self.hs_rto());
                }
            }
            Phase::Established => {
                at(self.last_rx + self.idle_timeout);
                if !self.ping_pending {
                    at(self.last_tx + self.keepalive);
                }
                if !self.ack_now {
                    if let Some(d) = self.ack_due {
                        at(d);
                    }
                    if let Some(d) = self.recv.next_gap_due() {
                        at(d);
                    }
                }
                if self.pto_armed() {
                    at(self.pto_anchor + self.pto());
                }
                if let Some(p) = self.pacer_next {
                    if self.wants_data_send() {
                        at(p);
                    }
                }
                if !self.confirmed && self.finish_pkt.is_some() && !self.finish_pending {
                    at(self.finish_sent_at + self.finish_rto());
                }
                if !self.ping_pending {
                    if let Some(s) = self.silence.next_timeout() {
                        at(s);
                    }
                }
                if let Some(p) = &self.path_probe {
                    if let (Some(s), false) = (p.sent_at, p.pending) {
                        at(s + self.pto().max(Duration::from_millis(10)));
                    }
                }
                if let Some(l) = self.linger_deadline {
                    at(l);
                }
            }
            Phase::Closed => {
                if let Some(d) = self.drain_until {
                    at(d);
                    if let (Some(r), None) = (self.reset_next, self.reset_pending) {
                        if self.reset_copies < RESET_COPIES {
                            at(r);
                        }
                    }
                    if let (Some(a), false) = (self.final_ack_next, self.ack_now) {
                        if self.final_acks > 0 {
                            at(a);
                        }
                    }
                }
            }
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Handshake => {
                if now >= self.hs_deadline {
                    self.terminate(now, Some(ErrorKind::TimedOut), false);
                    return;
                }
                if let Some(s) = self.hs_sent_at {
                    if now >= s + self.hs_rto() {
                        self.init_pending = true;
                        self.stats.handshake_retransmits += 1;
                    }
                }
            }
            Phase::Established => {
                if now >= self.last_rx + self.idle_timeout {
                    self.terminate(now, Some(ErrorKind::TimedOut), false);
                    return;
                }
                if self.linger_deadline.is_some_and(|l| now >= l) {
                    if self.send.is_shutdown() && self.send.all_acked() {
                        // The peer has every byte but never closed its side.
                        self.end_released(now);
                    } else {
                        self.reset(now, 0, ErrorKind::TimedOut);
                    }
                    return;
                }
                if now >= self.last_tx + self.keepalive {
                    self.ping_pending = true;
                }
                if self.ack_due.is_some_and(|d| now >= d) {
                    self.ack_now = true;
                }
                if self.recv.next_gap_due().is_some_and(|d| now >= d) {
                    self.ack_now = true;
                }
                if self.pto_armed() && now >= self.pto_anchor + self.pto() {
                    tracing::trace!(
                        id = ?self.id,
                        side = ?self.side,
                        probes = self.probes,
                        una = self.send.una(),
                        "probe timeout"
                    );
                    if self.send.has_unacked() {
                        // Sized to fit beside an ACK frame in one datagram.
                        let room = self
                            .max_stream_payload()
                            .saturating_sub(ACK_FIXED_LEN + 4 * WANT_RANGE_LEN)
                            .max(1);
                        self.send.queue_probe(room);
                        // Only silence is a blackout: while the peer's packets keep
                        // coming, the stream waits on a hole or on credit, and the
                        // path needs its full window once that is filled.
                        if now.saturating_duration_since(self.last_rx) >= self.rtt.pto() {
                            self.cc.on_timeout();
                        }
                        self.stats.probes += 1;
                    }
                    // Credit-blocked (or also probing): a PING makes the reader
                    // re-advertise its credit.
                    self.ping_pending = true;
                    self.probes += 1;
                    self.pto_anchor = now;
                }
                if !self.confirmed
                    && self.finish_pkt.is_some()
                    && now >= self.finish_sent_at + self.finish_rto()
                {
                    self.finish_pending = true;
                }
                let waits = !self.recv.complete() && self.recv.limit() > self.recv.acked();
                if self
                    .silence
                    .on_timeout(now, waits, self.rtt.pto(), MAX_BACKOFF)
                {
                    self.ping_pending = true;
                }
                let pto = self.pto().max(Duration::from_millis(10));
                if let Some(p) = &mut self.path_probe {
                    if p.sent_at.is_some_and(|s| now >= s + pto) {
                        if p.tries >= MAX_PATH_TRIES {
                            self.path_probe = None;
                        } else {
                            p.pending = true;
                            p.sent_at = Some(now);
                        }
                    }
                }
            }
            Phase::Closed => {
                if self.drain_until.is_some_and(|d| now >= d) {
                    self.reset_pending = None;
                    self.drain_until = None;
                    return;
                }
                if self.reset_next.is_some_and(|r| now >= r) && self.reset_copies < RESET_COPIES {
                    self.reset_pending = Some(0);
                    self.reset_next = None;
                }
                if self.final_acks > 0 && self.final_ack_next.is_some_and(|a| now >= a) {
                    self.final_acks -= 1;
                    self.final_ack_next = Some(now + self.rtt.pto() * 2);
                    self.ack_now = true;
                    self.ack_dirty = true;
                }
            }
        }
    }

    // --------------------------------------------------------------- sending

    fn max_stream_payload(&self) -> usize {
        self.datagram - SHORT_HEADER_LEN - TAG_LEN - STREAM_HEADER_LEN
    }

    /// Pacing credit that may build up: max(10 datagrams, 2 ms of rate) — or, when
    /// the driver comes back late (a loaded host: on the emulated link, a 2 ms burst
    /// dropped 7-17 % of the sending time, and the rate model then followed the
    /// shortfall down), twice its smoothed lateness, at most a quarter of the RTT.
    fn burst(&self) -> f64 {
        let rate = self.cc.pacing_rate();
        let allowance = (self.pacer_late * 2)
            .min(self.rtt.srtt / 4)
            .max(PACING_BURST);
        (10.0 * self.datagram as f64).max(rate * allowance.as_secs_f64())
    }

    fn pacer_refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.pacer_at).as_secs_f64();
        self.pacer_at = now;
        if let Some(due) = self.pacer_next.filter(|&d| now >= d) {
            // A decaying maximum: one late wake-up in a while is what the credit
            // must cover (calls made early, on an ACK's arrival, say nothing).
            self.pacer_late = (self.pacer_late - self.pacer_late / 8).max(now - due);
        }
        let burst = self.burst();
        let tokens = self.pacer_tokens + dt * self.cc.pacing_rate();
        if tokens > burst && self.pacer_next.is_some() {
            // Credit for time we were due to send but were not called.
            self.stats.pacing_clipped_bytes += (tokens - burst) as u64;
        }
        self.pacer_tokens = tokens.min(burst);
    }

    /// The next datagrams to send, to one destination.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        match self.phase {
            Phase::Handshake => return self.poll_handshake(now),
            Phase::Closed => {
                if self.drain_until.is_none_or(|d| now >= d) {
                    return None;
                }
            }
            Phase::Established => {}
        }
        self.transport.as_ref()?;
        // Handshake confirmation first, then the packets that go to other addresses.
        if self.finish_pending && !self.confirmed {
            if let Some(p) = &self.finish_pkt {
                self.finish_pending = false;
                self.finish_sent_at = now;
                self.finish_tries += 1;
                if self.finish_tries > 1 {
                    self.stats.handshake_retransmits += 1;
                }
                let p = p.clone();
                self.count_out(now, &p, None);
                return Some(Transmit::single(self.remote, p));
            }
        }
        if let Some((addr, d)) = self.path_responses.pop() {
            let mut w = Writer::default();
            Frame::PathResponse(d).encode(&mut w);
            return self.seal_single(now, addr, &w.buf);
        }
        if self.phase == Phase::Established {
            if let Some(t) = self.poll_path_challenge(now) {
                return Some(t);
            }
        }
        self.poll_short_batch(now)
    }

    fn poll_handshake(&mut self, now: Instant) -> Option<Transmit> {
        if !self.init_pending {
            return None;
        }
        let hs = self.hs.as_ref()?;
        self.init_pending = false;
        self.hs_sent_at = Some(now);
        self.hs_attempts += 1;
        let pkt = Packet::Init {
            src_cid: self.local_cid,
            token: &self.init_token,
            noise: &hs.msg1,
        }
        .encode();
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += pkt.len() as u64;
        Some(Transmit::single(self.remote, pkt))
    }

    fn poll_path_challenge(&mut self, now: Instant) -> Option<Transmit> {
        let p = self.path_probe.as_mut()?;
        if !p.pending {
            return None;
        }
        let mut w = Writer::default();
        Frame::PathChallenge(p.challenge).encode(&mut w);
        let len = SHORT_HEADER_LEN + w.buf.len() + TAG_LEN;
        p.pending = false;
        p.sent_at = Some(now);
        // Anti-amplification toward an address not yet validated.
        if p.bytes_out + len > 3 * p.bytes_in {
            return None;
        }
        p.tries += 1;
        p.bytes_out += len;
        let addr = p.addr;
        self.seal_single(now, addr, &w.buf)
    }

    fn seal_single(&mut self, now: Instant, dest: SocketAddr, plain: &[u8]) -> Option<Transmit> {
        let mut out = Vec::with_capacity(SHORT_HEADER_LEN + plain.len() + TAG_LEN);
        out.resize(SHORT_HEADER_LEN, 0);
        out.extend_from_slice(plain);
        if !self.seal_at(&mut out, 0) {
            return None;
        }
        self.count_out(now, &out, None);
        Some(Transmit::single(dest, out))
    }

    /// Seals the packet whose frames follow its header's place at `out[start..]`, in
    /// place, under the next packet number. False if there are no transport keys.
    fn seal_at(&mut self, out: &mut Vec<u8>, start: usize) -> bool {
        let Some(t) = self.transport.as_ref() else {
            return false;
        };
        let pn = self.next_pn;
        if !t.seal_in_place(pn, out, start + SHORT_HEADER_LEN) {
            return false;
        }
        cw::write_short_header(&mut out[start..], self.peer_cid, pn);
        self.next_pn += 1;
        if self.sent_times.len() >= SENT_TIMES_CAP {
            self.sent_times.pop_front();
        }
        true
    }

    fn count_out(&mut self, now: Instant, pkt: &[u8], pn: Option<u64>) {
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += pkt.len() as u64;
        self.last_tx = now;
        if let Some(pn) = pn {
            self.sent_times.push_back((pn, now));
        } else if pkt.len() > 1 && pkt[1] == cw::T_SHORT {
            self.sent_times.push_back((self.next_pn - 1, now));
        }
    }

    /// The reader side owes the peer an ACK now (or a RESET/PING must go).
    fn control_due(&self, now: Instant) -> bool {
        self.reset_pending.is_some()
            || self.ping_pending
            || self.ack_now
            || self.ack_due.is_some_and(|d| now >= d)
            || (self.phase == Phase::Established && self.recv.credit_update_due())
    }

    fn poll_short_batch(&mut self, now: Instant) -> Option<Transmit> {
        let mut contents: Vec<u8> = Vec::with_capacity(MAX_BATCH_BYTES + self.datagram);
        let mut seg = 0usize;
        let mut count = 0usize;
        while count < MAX_BATCH && contents.len() + self.datagram <= MAX_BATCH_BYTES {
            let Some(n) = self.build_short(now, &mut contents) else {
                break;
            };
            count += 1;
            if count == 1 {
                seg = n;
            }
            // Only full datagrams continue a GSO batch; a shorter one ends it.
            if n != seg || n < self.datagram {
                break;
            }
        }
        if self.phase == Phase::Established && !self.send.has_new() && self.cc_allows_new() {
            // Room in the window and nothing to send (the application wrote nothing,
            // or the reader's credit is used up): this round's rate says little about
            // the path.
            self.cc.mark_app_limited();
        }
        if count == 0 {
            return None;
        }
        Some(Transmit::packed(self.remote, seg, contents))
    }

    /// Builds one SHORT packet and appends it to `out`; its length, or `None` when
    /// there is nothing to send.
    fn build_short(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<usize> {
        let budget = self.datagram - SHORT_HEADER_LEN - TAG_LEN;
        let closed = self.phase == Phase::Closed;
        let mut data_ready = false;
        if !closed && self.wants_data_send() {
            self.pacer_refill(now);
            if self.pacer_tokens >= self.datagram as f64 {
                data_ready = true;
            } else {
                let need = self.datagram as f64 - self.pacer_tokens;
                let rate = self.cc.pacing_rate().max(1.0);
                self.pacer_next = Some(now + Duration::from_secs_f64(need / rate));
            }
        }
        let must = self.control_due(now);
        if !must && !data_ready {
            return None;
        }
        // The frames are written straight after the header's place in `out` and
        // sealed there: no plaintext copy.
        let start = out.len();
        let body = start + SHORT_HEADER_LEN;
        out.resize(body, 0);
        let mut w = Writer {
            buf: std::mem::take(out),
        };
        let mut eliciting = false;
        if let Some(code) = self.reset_pending.take() {
            Frame::Reset { code }.encode(&mut w);
            self.reset_copies += 1;
            self.reset_next = Some(now + self.rtt.pto());
        }
        let want_ack = self.ack_dirty
            || self.ack_now
            || self.ack_due.is_some_and(|d| now >= d)
            || (!closed && self.recv.credit_update_due());
        if want_ack && !(closed && self.aborted) {
            let room = budget - ACK_FIXED_LEN - (w.buf.len() - body);
            let want = if closed {
                Vec::new()
            } else {
                // While the peer's packets come, every re-request timeout is one
                // round trip through the writer. In silence (an outage) it grows with
                // the silence, so requests thin out geometrically, up to 2 s apart;
                // the first packet back restores it.
                let silence = now.saturating_duration_since(self.last_rx);
                let retry = self.rtt.rerequest().max(silence).min(MAX_BACKOFF);
                self.recv
                    .due_wants(now, retry, (room / WANT_RANGE_LEN).min(MAX_WANT_RANGES))
            };
            self.stats.wants_sent += want.len() as u64;
            if !want.is_empty() {
                tracing::trace!(id = ?self.id, side = ?self.side, ?want, acked = self.recv.acked(), "re-request");
            }
            let delay = now.saturating_duration_since(self.largest_rx_at);
            Frame::Ack(Ack {
                largest_pn: self.largest_rx_pn,
                ack_delay_us: delay.as_micros().min(u32::MAX as u128) as u32,
                acked: self.recv.acked(),
                limit: self.recv.limit(),
                received: self.recv.received(),
                fin: self.recv.complete(),
                want,
            })
            .encode(&mut w);
            self.recv.mark_advertised();
            self.stats.acks_sent += 1;
        }
        self.ack_now = false;
        self.ack_due = None;
        self.ack_dirty = false;
        self.eliciting_since_ack = 0;
        if self.ping_pending && !closed {
            Frame::Ping.encode(&mut w);
            eliciting = true;
        }
        self.ping_pending = false;
        let was_idle = !self.send.has_unacked();
        if data_ready {
            eliciting |= self.add_stream_frames(&mut w, body + budget);
        }
        *out = w.buf;
        if out.len() == body || !self.seal_at(out, start) {
            out.truncate(start);
            return None;
        }
        let n = out.len() - start;
        if data_ready {
            // Pacing counts what is sent, not the datagram size.
            self.pacer_tokens -= n as f64;
        }
        let pn = self.next_pn - 1;
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += n as u64;
        self.last_tx = now;
        self.sent_times.push_back((pn, now));
        if eliciting && was_idle {
            self.pto_anchor = now;
        }
        Some(n)
    }

    /// Adds STREAM frames (re-sends first) while `w` is shorter than `end` bytes and
    /// credit and the rate window allow. Returns whether any were added.
    fn add_stream_frames(&mut self, w: &mut Writer, end: usize) -> bool {
        let mut added = false;
        loop {
            let room = end.saturating_sub(w.buf.len());
            if room < STREAM_HEADER_LEN + 1 {
                break;
            }
            let max = room - STREAM_HEADER_LEN;
            let (seg, resend) = if let Some(s) = self.send.next_retx(max) {
                (s, true)
            } else if self.cc_allows_new() {
                match self.send.next_new_segment(max) {
                    Some(s) => (s, false),
                    None => break,
                }
            } else {
                break;
            };
            w.u8(if seg.fin {
                cw::F_STREAM_FIN
            } else {
                cw::F_STREAM
            })
            .u64(seg.offset)
            .u16(seg.len as u16);
            self.send.copy_out(seg.offset, seg.len, &mut w.buf);
            if resend {
                self.stats.stream_bytes_resent += seg.len as u64;
            } else {
                self.stats.stream_bytes_sent += seg.len as u64;
            }
            added = true;
        }
        if added {
            self.pacer_next = None;
        }
        added
    }
}

fn keepalive_for(cfg: &ConnConfig, idle: Duration) -> Duration {
    cfg.keepalive
        .unwrap_or_else(|| (idle / 4).min(Duration::from_secs(15)))
        .max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_rejects_duplicates_and_old() {
        let mut r = ReplayWindow::new();
        assert!(r.accept(5));
        assert!(!r.accept(5));
        assert!(r.accept(3));
        assert!(!r.may_accept(3));
        assert!(r.accept(2000));
        assert!(!r.may_accept(5));
        assert!(r.may_accept(1999));
        assert!(r.accept(1999));
        assert!(!r.accept(1999));
        assert!(r.accept(1000 + REPLAY_WINDOW));
        assert!(!r.may_accept(1000));
        assert!(r.accept(5000));
        assert!(r.may_accept(4999));
    }

    #[test]
    fn rtt_and_pto() {
        let mut r = Rtt::new(INITIAL_RTT);
        r.sample(Duration::from_millis(10));
        assert_eq!(r.srtt, Duration::from_millis(10));
        assert!(r.pto() >= Duration::from_millis(30));
        assert_eq!(r.reorder_delay(), Duration::from_micros(2500));
    }
}

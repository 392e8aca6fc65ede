//! The connection endpoint (sans-IO): one UDP port's worth of connections.
//!
//! It demultiplexes datagrams by connection ID, runs the server half of the handshake
//! (with a stateless RETRY cookie under load and the 3x anti-amplification budget), keeps
//! the accept queue, answers statelessly where it has no state (REFUSE when nobody
//! listens, STATELESS_RESET for unknown connections), and multiplexes every
//! connection's timers and transmits. The driver feeds it datagrams and the time, and
//! sends what it returns.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::admission::{BusyWindow, RetryBudget};
use super::connection::{Conn, ConnStats};
use super::half_open::{source_of, HalfOpen, HalfOpens, Source};
use super::noise::ServerHandshake;
use super::wire::{self as cw, Packet, TransportParams, RESET_TOKEN_LEN};
use super::{ConnConfig, ConnId, ConnState, EndpointConfig, Event, Readiness};
use crate::crypto::{same_addr, TokenKey};
use crate::retry::{self, HandshakeRate};
use crate::rng::Rng;
use crate::transmit::Transmit;
// One spelling per peer, so a path never looks changed because of notation.
use crate::udp::canonical as canon;

/// Counters for tests, logs and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct EndpointStats {
    /// Datagrams handed to [`Endpoint::handle`].
    pub datagrams_in: u64,
    /// Bytes of those datagrams.
    pub bytes_in: u64,
    /// Datagrams the endpoint dropped: malformed, unknown connection ID, or refused.
    pub dropped: u64,
    /// Server handshakes that got Diffie-Hellman work and a half-open slot.
    pub handshakes_started: u64,
    /// Server handshakes that finished (connections accepted).
    pub handshakes_completed: u64,
    /// RETRY cookies sent.
    pub retries_sent: u64,
    /// Half-opens displaced by validated INITs when the table or a source's share was
    /// full.
    pub half_opens_evicted: u64,
    /// Validated INITs dropped because their source used up its handshakes for this
    /// second while busy (`BusyWindow`).
    pub busy_source_drops: u64,
    /// INITs without a token dropped, unanswered, because their socket address had
    /// its RETRYs for this second while busy.
    pub retry_budget_drops: u64,
    /// REFUSE packets sent (INITs while not listening).
    pub refusals_sent: u64,
    /// STATELESS_RESET packets sent for unknown connection IDs.
    pub stateless_resets_sent: u64,
    /// Bytes sent by the endpoint itself (handshake and stateless replies).
    pub control_bytes_out: u64,
}

/// Per-connection choices for [`Endpoint::connect_with`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Require the server to present this static key (`PermissionDenied` otherwise).
    pub server_key: Option<[u8; 32]>,
    /// Settings for this connection instead of the endpoint's.
    pub config: Option<ConnConfig>,
}

// Ordered maps where iteration shows (`conns`); the hash maps are only looked up, never
// iterated, so their hasher's seed cannot change what is sent. Some are keyed by values
// peers choose (reset tokens), hence a randomly keyed hasher there.
/// Many connections over one UDP socket, sans-IO: the caller feeds it datagrams
/// ([`handle`](Self::handle)) and timeouts ([`handle_timeout`](Self::handle_timeout)) and
/// sends what [`poll_transmit`](Self::poll_transmit) returns. Connections are
/// identified by [`ConnId`]; their changes come out of [`poll_event`](Self::poll_event).
/// The endpoint has no clock and no socket of its own, so a simulator can run it.
pub struct Endpoint {
    cfg: EndpointConfig,
    token_key: TokenKey,
    epoch: Instant,
    /// Where every random draw comes from (connection ids, token nonces, Noise
    /// ephemerals, hash keys; each connection gets a fork for its own).
    rng: Rng,
    listening: bool,
    conns: BTreeMap<ConnId, Conn>,
    by_cid: HashMap<u64, ConnId>,
    half_open: HalfOpens,
    /// Validated handshakes started per source in the current second while busy
    /// (`busy_handshakes_per_source`).
    busy_window: BusyWindow,
    /// RETRYs per socket address this second, while busy.
    retry_budget: RetryBudget,
    accept_queue: VecDeque<ConnId>,
    reset_tokens: HashMap<[u8; RESET_TOKEN_LEN], ConnId>,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    dirty: VecDeque<ConnId>,
    dirty_set: HashSet<ConnId>,
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
    timer_at: HashMap<ConnId, Instant>,
    events: VecDeque<(ConnId, Event)>,
    handshake_rate: HandshakeRate,
    stateless_window: (Instant, u32),
    open_buf: Vec<u8>,
    /// Counters since creation.
    pub stats: EndpointStats,
}

fn closed_err() -> io::Error {
    io::Error::from(ErrorKind::NotConnected)
}

impl Endpoint {
    /// An endpoint drawing its randomness from the OS CSPRNG.
    pub fn new(cfg: EndpointConfig, now: Instant) -> Self {
        Self::with_rng(cfg, now, Rng::os())
    }

    /// An endpoint drawing all its randomness from `rng`: [`Rng::os`] for real use,
    /// [`Rng::seeded_for_simulation`] so that a simulated run reproduces from its seed.
    /// For the simulators and fuzz targets (`Rng` is not API): hidden from the docs.
    #[doc(hidden)]
    pub fn with_rng(cfg: EndpointConfig, now: Instant, mut rng: Rng) -> Self {
        Self {
            cfg,
            token_key: TokenKey::random(&mut rng),
            retry_budget: RetryBudget::new(now, &mut rng),
            rng,
            epoch: now,
            listening: false,
            conns: BTreeMap::new(),
            by_cid: HashMap::new(),
            half_open: HalfOpens::default(),
            busy_window: BusyWindow::new(now),
            accept_queue: VecDeque::new(),
            reset_tokens: HashMap::new(),
            next_id: 1,
            transmits: VecDeque::new(),
            dirty: VecDeque::new(),
            dirty_set: HashSet::new(),
            timers: BinaryHeap::new(),
            timer_at: HashMap::new(),
            events: VecDeque::new(),
            handshake_rate: HandshakeRate::new(now),
            stateless_window: (now, 0),
            open_buf: Vec::new(),
            stats: EndpointStats::default(),
        }
    }

    /// The settings it was created with.
    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// This endpoint's static public key (what clients pin).
    pub fn public_key(&self) -> [u8; 32] {
        self.cfg.static_key.public
    }

    /// Accept incoming connections (true) or refuse them (false, the default).
    pub fn set_listening(&mut self, on: bool) {
        self.listening = on;
    }

    /// Whether incoming connections are accepted (see [`set_listening`](Self::set_listening)).
    pub fn is_listening(&self) -> bool {
        self.listening
    }

    /// Connections this endpoint holds (any state, until forgotten).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn reset_token(&self, cid: u64) -> [u8; RESET_TOKEN_LEN] {
        let h = blake3::keyed_hash(&self.cfg.reset_key, &cid.to_le_bytes());
        let mut t = [0u8; RESET_TOKEN_LEN];
        t.copy_from_slice(&h.as_bytes()[..RESET_TOKEN_LEN]);
        t
    }

    fn new_cid(&mut self) -> u64 {
        loop {
            let mut c = self.rng.u64();
            if let Some(tag) = self.cfg.cid_tag {
                c = (c & 0x0000_ffff_ffff_ffff) | (u64::from(tag) << 48);
            }
            if c != 0 && !self.by_cid.contains_key(&c) && !self.half_open.contains(c) {
                return c;
            }
        }
    }

    fn local_params(&self, cid: u64, cfg: &ConnConfig) -> TransportParams {
        TransportParams {
            cid,
            initial_limit: cfg.recv_window,
            max_datagram: cw::MAX_DATAGRAM as u16,
            idle_timeout_ms: cfg.idle_timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
            reset_token: self.reset_token(cid),
        }
    }

    fn alloc_id(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }

    // ------------------------------------------------------------- connecting

    /// Starts a connection to `addr`; the INIT leaves on the next `poll_transmit`.
    pub fn connect(&mut self, now: Instant, addr: SocketAddr) -> io::Result<ConnId> {
        self.connect_with(now, addr, ConnectOptions::default())
    }

    /// As [`connect`](Self::connect), with a pinned server key (the handshake fails
    /// with `PermissionDenied` if the server presents another) or other settings.
    pub fn connect_with(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        opts: ConnectOptions,
    ) -> io::Result<ConnId> {
        let addr = canon(addr);
        let cfg = opts.config.unwrap_or_else(|| self.cfg.conn.clone());
        let id = self.alloc_id();
        let cid = self.new_cid();
        let params = self.local_params(cid, &cfg);
        let c = Conn::new_client(
            id,
            addr,
            cid,
            cfg,
            params,
            self.cfg.static_key.private,
            opts.server_key,
            now,
            self.rng.fork(),
        )?;
        self.conns.insert(id, c);
        self.by_cid.insert(cid, id);
        self.after(id, now);
        Ok(id)
    }

    /// The next established incoming connection, if any.
    pub fn accept(&mut self) -> Option<ConnId> {
        while let Some(id) = self.accept_queue.pop_front() {
            if self.conns.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Connections waiting in the accept queue.
    pub fn accept_queue_len(&self) -> usize {
        self.accept_queue.len()
    }

    // ------------------------------------------------------------- receiving

    /// Feeds one datagram received from `from`. Anything malformed, unauthenticated or
    /// unexpected is dropped.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let from = canon(from);
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let Ok(p) = cw::decode(datagram) else {
            self.stats.dropped += 1;
            return;
        };
        match p {
            Packet::Init {
                src_cid,
                token,
                noise,
            } => self.on_init(now, from, datagram.len(), src_cid, token, noise),
            Packet::Response {
                dst_cid,
                src_cid,
                noise,
            } => {
                let Some(&id) = self.by_cid.get(&dst_cid) else {
                    self.stats.dropped += 1;
                    return;
                };
                if let Some(c) = self.conns.get_mut(&id) {
                    if c.on_response(now, from, src_cid, noise).connected {
                        if let Some(t) = c.peer_reset_token {
                            self.reset_tokens.insert(t, id);
                        }
                    }
                }
                self.after(id, now);
            }
            Packet::Finish { dst_cid, noise } => self.on_finish(now, from, dst_cid, noise),
            Packet::Retry { dst_cid, token } => {
                if let Some(&id) = self.by_cid.get(&dst_cid) {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.on_retry(from, token);
                    }
                    self.after(id, now);
                }
            }
            Packet::Refuse { dst_cid } => {
                if let Some(&id) = self.by_cid.get(&dst_cid) {
                    if let Some(c) = self.conns.get_mut(&id) {
                        if same_addr(&c.remote, &from) {
                            c.refused(now);
                        }
                    }
                    self.after(id, now);
                }
            }
            Packet::Short {
                dst_cid,
                pn,
                sealed,
            } => self.on_short(now, from, datagram.len(), dst_cid, pn, sealed),
            Packet::StatelessReset { token } => {
                if let Some(&id) = self.reset_tokens.get(&token) {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.stateless_reset(now);
                    }
                    self.after(id, now);
                }
            }
        }
    }

    /// The driver learned (ICMP port unreachable) that nothing listens at `addr`:
    /// connection attempts to it fail with `ConnectionRefused`. Established
    /// connections ignore it (ICMP is not authenticated; timers decide).
    pub fn handle_unreachable(&mut self, now: Instant, addr: SocketAddr) {
        let addr = canon(addr);
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| same_addr(&c.remote, &addr) && c.state() == ConnState::Connecting)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.refused(now);
            }
            self.after(id, now);
        }
    }

    /// The driver saw this host's addresses or routes change: every established
    /// connection lets its peer hear from wherever its packets now leave (see
    /// `docs/PROTOCOL-connections.md`, "Path migration").
    pub fn local_path_changed(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.local_path_changed(now);
            }
            self.after(id, now);
        }
    }

    fn stateless_allowed(&mut self, now: Instant) -> bool {
        let (start, n) = self.stateless_window;
        if now.saturating_duration_since(start) >= Duration::from_secs(1) {
            self.stateless_window = (now, 0);
        }
        if self.stateless_window.1 >= self.cfg.stateless_rate {
            return false;
        }
        self.stateless_window.1 += 1;
        let _ = n;
        true
    }

    fn send_control(&mut self, t: Transmit) {
        self.stats.control_bytes_out += t.contents.len() as u64;
        self.transmits.push_back(t);
    }

    fn on_init(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        client_cid: u64,
        token: &[u8],
        noise: &[u8],
    ) {
        if !self.listening {
            if self.stateless_allowed(now) {
                // Smaller than the (padded) INIT: no amplification.
                let pkt = Packet::Refuse {
                    dst_cid: client_cid,
                }
                .encode();
                self.stats.refusals_sent += 1;
                self.send_control(Transmit::single(from, pkt));
            }
            return;
        }
        // A retransmitted INIT: answer with the same RESPONSE, within the 3x budget.
        // Half-opens are keyed by the Noise message too: INIT is not authenticated, so
        // a copy damaged on the way is a different handshake, and must neither answer
        // for nor replace the genuine one.
        let key = (from, client_cid, noise.to_vec());
        if let Some(scid) = self.half_open.find(&key) {
            self.half_open
                .refresh(scid, now + self.cfg.conn.handshake_timeout);
            if let Some(ho) = self.half_open.get_mut(scid) {
                ho.bytes_in += len;
                if ho.bytes_out + ho.response.len() <= 3 * ho.bytes_in {
                    ho.bytes_out += ho.response.len();
                    ho.sends += 1;
                    ho.sent_at = now;
                    let t = Transmit::single(from, ho.response.clone());
                    self.send_control(t);
                }
            }
            return;
        }
        // The cookie binds the client ID and the Noise message 1 (the client re-sends
        // the same one with the token): one RETRY validates one handshake attempt,
        // not every INIT a flooder makes from that address for the cookie's 10 s.
        let mut binding = [0u8; 16];
        binding[..8].copy_from_slice(&client_cid.to_le_bytes());
        binding[8..].copy_from_slice(&blake3::hash(noise).as_bytes()[..8]);
        // A token proves the client receives at `from` (it is sealed to the address
        // and the client ID): checked first, as it decides everything below. Opening
        // it costs one small AEAD, far less than the Diffie-Hellman work it guards.
        let validated = !token.is_empty();
        if validated
            && !retry::cookie_valid(&self.token_key, token, from, self.now_ms(now), binding)
        {
            self.stats.dropped += 1;
            return;
        }
        let source = source_of(from);
        let rate = self.handshake_rate.tick(now);
        // Busy: many handshakes a second, or a half-full table (spoofed INITs from many
        // addresses could otherwise fill it below the rate threshold). A source holding
        // its whole share asks for a RETRY too, rather than being dropped: a spoofer of
        // a real client's address must not be able to lock it out by filling its share.
        // The RETRY is stateless and smaller than the INIT.
        let busy =
            rate > self.cfg.retry_threshold || self.half_open.len() >= self.cfg.max_half_open / 2;
        let source_full = self.half_open.count(&source) >= self.cfg.max_half_open_per_source;
        if !validated {
            if busy || source_full {
                if self
                    .retry_budget
                    .allow(now, from, self.cfg.busy_retries_per_source)
                {
                    self.send_retry(now, from, len, client_cid, binding);
                } else {
                    self.stats.retry_budget_drops += 1;
                    self.stats.dropped += 1;
                }
            } else if self.half_open.len() >= self.cfg.max_half_open {
                self.stats.dropped += 1;
            } else {
                self.start_handshake(now, from, len, client_cid, noise, false);
            }
            return;
        }
        // Validated. While busy, one source may start only so many handshakes a
        // second: a flooder that answers every RETRY owns its addresses, so bounding
        // the Diffie-Hellman work per address bounds what it can take from others.
        if busy && !self.busy_budget(now, source) {
            self.stats.busy_source_drops += 1;
            self.stats.dropped += 1;
            return;
        }
        if self.accept_queue.len() >= self.cfg.accept_backlog {
            self.stats.dropped += 1;
            return;
        }
        // Full table or full share: take the slot of whoever is least likely to be a
        // real client (half_open.rs): an unvalidated half-open, else the oldest of the
        // source holding the most. A client that finishes within a round trip stays.
        let before = self.half_open.evicted;
        let room = self.half_open.make_room(
            &source,
            self.cfg.max_half_open_per_source,
            self.cfg.max_half_open,
        );
        self.stats.half_opens_evicted += self.half_open.evicted - before;
        if !room {
            self.stats.dropped += 1;
            return;
        }
        self.start_handshake(now, from, len, client_cid, noise, true);
    }

    /// Counts a validated handshake against its source's per-second budget while busy;
    /// false when the budget is used up.
    fn busy_budget(&mut self, now: Instant, source: Source) -> bool {
        self.busy_window.admit(
            now,
            source,
            self.cfg.busy_handshakes_per_source,
            self.cfg.busy_handshakes,
            4 * self.cfg.max_half_open,
        )
    }

    /// The stateless first reply under load: a cookie sealed to the client's address
    /// and ID, smaller than the INIT that asked.
    fn send_retry(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        client_cid: u64,
        binding: [u8; 16],
    ) {
        let now_ms = self.now_ms(now);
        let cookie = retry::seal_cookie(&self.token_key, from, now_ms, binding, &mut self.rng);
        let pkt = Packet::Retry {
            dst_cid: client_cid,
            token: &cookie,
        }
        .encode();
        debug_assert!(pkt.len() < len);
        self.stats.retries_sent += 1;
        self.send_control(Transmit::single(from, pkt));
    }

    /// Diffie-Hellman work and a half-open slot (the caller made room), and the
    /// RESPONSE.
    fn start_handshake(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        client_cid: u64,
        noise: &[u8],
        validated: bool,
    ) {
        if self.accept_queue.len() >= self.cfg.accept_backlog {
            self.stats.dropped += 1;
            return;
        }
        let scid = self.new_cid();
        let params = self.local_params(scid, &self.cfg.conn);
        let Ok((hs, msg2)) = ServerHandshake::respond(
            &self.cfg.static_key.private,
            client_cid,
            noise,
            &params.encode(),
            &mut self.rng,
        ) else {
            self.stats.dropped += 1;
            return;
        };
        let response = Packet::Response {
            dst_cid: client_cid,
            src_cid: scid,
            noise: &msg2,
        }
        .encode();
        if response.len() > 3 * len {
            self.stats.dropped += 1;
            return;
        }
        self.stats.handshakes_started += 1;
        let expires = now + self.cfg.conn.handshake_timeout;
        self.half_open.insert(
            scid,
            HalfOpen::new(
                from,
                client_cid,
                hs,
                params,
                response.clone(),
                now,
                expires,
                len,
                validated,
            ),
        );
        self.send_control(Transmit::single(from, response));
    }

    fn on_finish(&mut self, now: Instant, from: SocketAddr, scid: u64, noise: &[u8]) {
        if let Some(&id) = self.by_cid.get(&scid) {
            // Our confirmation was lost; the connection already exists.
            if let Some(c) = self.conns.get_mut(&id) {
                c.on_finish_again();
            }
            self.after(id, now);
            return;
        }
        let Some(ho) = self.half_open.get_mut(scid) else {
            self.stats.dropped += 1;
            return;
        };
        // The FINISH validates the address the RESPONSE went to, so it must come from
        // there: a FINISH from elsewhere would make an unvalidated address the peer
        // (a spoofed source would then receive everything the connection sends). A
        // client does not move before its handshake completes (as in QUIC).
        if ho.addr != from {
            self.stats.dropped += 1;
            return;
        }
        let Ok(payload) = ho.hs.read_finish(noise) else {
            // Damaged on the way (or forged): the state was rebuilt, and the client
            // sends FINISH again within the handshake timeout. The expiry stays: a
            // stream of bad FINISHes must not hold the slot open for ever.
            self.stats.dropped += 1;
            return;
        };
        let Some(ho) = self.half_open.remove(scid) else {
            return;
        };
        let peer = match TransportParams::decode(&payload) {
            Ok(p) if p.cid == ho.client_cid => p,
            _ => {
                self.stats.dropped += 1;
                return;
            }
        };
        let Ok(est) = ho.hs.established() else {
            self.stats.dropped += 1;
            return;
        };
        let sample = (ho.sends == 1).then(|| now.saturating_duration_since(ho.sent_at));
        let id = self.alloc_id();
        let c = Conn::new_server(
            id,
            from,
            scid,
            self.cfg.conn.clone(),
            ho.params,
            est,
            peer,
            sample,
            now,
            self.rng.fork(),
        );
        self.reset_tokens.insert(peer.reset_token, id);
        self.conns.insert(id, c);
        self.by_cid.insert(scid, id);
        self.accept_queue.push_back(id);
        self.events.push_back((id, Event::Incoming));
        self.stats.handshakes_completed += 1;
        self.after(id, now);
    }

    fn on_short(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        dst_cid: u64,
        pn: u64,
        sealed: &[u8],
    ) {
        let Some(&id) = self.by_cid.get(&dst_cid) else {
            if self.half_open.contains(dst_cid) {
                // Data that overtook (or outlived) a lost FINISH: the client re-sends.
                self.stats.dropped += 1;
                return;
            }
            // No state for it: tell the sender, with a proof only we can make, and with
            // a reply smaller than what triggered it.
            if len > cw::STATELESS_RESET_LEN + 16 && self.stateless_allowed(now) {
                let pkt = Packet::StatelessReset {
                    token: self.reset_token(dst_cid),
                }
                .encode();
                self.stats.stateless_resets_sent += 1;
                self.send_control(Transmit::single(from, pkt));
            } else {
                self.stats.dropped += 1;
            }
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !c.may_accept_pn(pn) {
            self.stats.dropped += 1;
            return;
        }
        let mut buf = std::mem::take(&mut self.open_buf);
        match c.open(pn, sealed, &mut buf) {
            Some(n) => {
                c.on_short(now, from, pn, &buf[..n], len);
            }
            None => self.stats.dropped += 1,
        }
        self.open_buf = buf;
        self.after(id, now);
    }

    // ------------------------------------------------------------- timers, output

    /// Bookkeeping after anything touched connection `id`: events, timer, output,
    /// and forgetting connections that are over.
    fn after(&mut self, id: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        for e in c.take_events() {
            self.events.push_back((id, e));
        }
        if c.drained(now) {
            // Forget the connection ID: stray packets now get a STATELESS_RESET.
            if self.by_cid.get(&c.local_cid) == Some(&id) {
                self.by_cid.remove(&c.local_cid);
            }
            if let Some(t) = c.peer_reset_token {
                if self.reset_tokens.get(&t) == Some(&id) {
                    self.reset_tokens.remove(&t);
                }
            }
            if c.released {
                self.conns.remove(&id);
                self.timer_at.remove(&id);
                return;
            }
        }
        let t = c.next_timeout();
        match t {
            Some(t) => {
                if self.timer_at.get(&id) != Some(&t) {
                    self.timer_at.insert(id, t);
                    self.timers.push(Reverse((t, id)));
                }
            }
            None => {
                self.timer_at.remove(&id);
            }
        }
        if self.dirty_set.insert(id) {
            self.dirty.push_back(id);
        }
    }

    /// The earliest time `handle_timeout` must run.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if self.timer_at.get(&id) == Some(&t) {
                break;
            }
            self.timers.pop();
        }
        let conn = self.timers.peek().map(|Reverse((t, _))| *t);
        let ho = self.half_open.next_expiry();
        match (conn, ho) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers due at `now` (retransmissions, probes, idle and handshake
    /// timeouts); call it at [`poll_timeout`](Self::poll_timeout)'s instant.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.half_open.expire(now);
        // Collect first: a connection re-armed for `now` waits for the next call.
        let mut due = Vec::new();
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.timer_at.get(&id) == Some(&t) {
                self.timer_at.remove(&id);
                due.push(id);
            }
        }
        for id in due {
            if let Some(c) = self.conns.get_mut(&id) {
                c.handle_timeout(now);
            }
            self.after(id, now);
        }
    }

    /// The next datagrams to send (stateless replies first, then connections in
    /// round-robin order).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        while let Some(id) = self.dirty.pop_front() {
            let Some(c) = self.conns.get_mut(&id) else {
                self.dirty_set.remove(&id);
                continue;
            };
            match c.poll_transmit(now) {
                Some(t) => {
                    // More may follow: stay in line behind the others.
                    self.dirty.push_back(id);
                    return Some(t);
                }
                None => {
                    self.dirty_set.remove(&id);
                    // Sending may have moved timers (pacing, probes).
                    let t = c.next_timeout();
                    if let Some(t) = t {
                        if self.timer_at.get(&id) != Some(&t) {
                            self.timer_at.insert(id, t);
                            self.timers.push(Reverse((t, id)));
                        }
                    }
                }
            }
        }
        None
    }

    /// The next connection event, oldest first; `None` when there are no more.
    pub fn poll_event(&mut self) -> Option<(ConnId, Event)> {
        self.events.pop_front()
    }

    // ------------------------------------------------------------- per connection

    fn live(&mut self, id: ConnId) -> io::Result<&mut Conn> {
        match self.conns.get_mut(&id) {
            Some(c) if !c.released => Ok(c),
            _ => Err(closed_err()),
        }
    }

    /// Reads in-order bytes. `Ok(0)`: end of stream (the peer shut its side down).
    /// `WouldBlock`: nothing yet (a `Readable` event follows). Errors:
    /// `ConnectionReset` (peer aborted), `TimedOut`, `ConnectionRefused`, ... —
    /// after any bytes that arrived in order before the failure.
    pub fn read(&mut self, id: ConnId, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.live(id)?.read(buf);
        self.mark(id);
        r
    }

    /// Reads in place: hands `take` the readable bytes (a contiguous front part of them);
    /// it returns how many it used, and that is the result. With nothing readable,
    /// `take` is not called and the result is as for [`read`](Self::read): `Ok(0)` at
    /// EOF, the connection's error, or `WouldBlock`.
    pub fn read_with(
        &mut self,
        id: ConnId,
        take: impl FnOnce(&[u8]) -> usize,
    ) -> io::Result<usize> {
        let r = self.live(id)?.read_with(take);
        self.mark(id);
        r
    }

    /// Queues bytes; returns how many were taken (the credit the reader granted
    /// bounds it). `WouldBlock` when none fit (a `Writable` event follows).
    pub fn write(&mut self, id: ConnId, data: &[u8]) -> io::Result<usize> {
        let r = self.live(id)?.write(data);
        self.mark(id);
        r
    }

    /// Half-close: the peer reads EOF after the last byte; it may still write.
    pub fn shutdown_write(&mut self, now: Instant, id: ConnId) -> io::Result<()> {
        let r = self.live(id)?.shutdown_write(now);
        self.after(id, now);
        r
    }

    /// Releases the handle gracefully: FIN after the buffered bytes, anything the peer
    /// still sends is dropped, and `Closed { error: None }` is reported once the peer
    /// acknowledged every byte (`TimedOut` if the linger time ran out first).
    pub fn close(&mut self, now: Instant, id: ConnId) {
        if let Ok(c) = self.live(id) {
            c.close(now);
        }
        self.after(id, now);
    }

    /// Releases the handle and resets the connection: the peer's reads and writes fail
    /// with `ConnectionReset`.
    pub fn abort(&mut self, now: Instant, id: ConnId) {
        if let Ok(c) = self.live(id) {
            c.abort(now);
        }
        self.after(id, now);
    }

    fn mark(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            for e in c.take_events() {
                self.events.push_back((id, e));
            }
            let t = c.next_timeout();
            if let Some(t) = t {
                if self.timer_at.get(&id) != Some(&t) {
                    self.timer_at.insert(id, t);
                    self.timers.push(Reverse((t, id)));
                }
            }
        }
        if self.dirty_set.insert(id) {
            self.dirty.push_back(id);
        }
    }

    /// Asks for a `Writable` event when `write` can take bytes again (as a `write`
    /// that returned `WouldBlock` does).
    pub fn want_writable(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.want_writable();
        }
    }

    /// The connection's coarse state; `None` for an unknown (or forgotten) `id`.
    pub fn state(&self, id: ConnId) -> Option<ConnState> {
        self.conns.get(&id).map(|c| c.state())
    }

    /// What `read` and `write` would do now; `None` for an unknown `id`.
    pub fn readiness(&self, id: ConnId) -> Option<Readiness> {
        self.conns.get(&id).map(|c| c.readiness())
    }

    /// Whether every written byte (and the FIN after a shutdown) is acknowledged; when
    /// not, a `Writable` event follows the next acknowledgement progress.
    pub fn send_complete(&mut self, id: ConnId) -> Option<bool> {
        self.conns.get_mut(&id).map(|c| c.send_complete())
    }

    /// The peer's current address (it follows migrations); `None` for an unknown `id`.
    pub fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.conns.get(&id).map(|c| c.remote)
    }

    /// The peer's Noise static key (after the handshake).
    pub fn peer_key(&self, id: ConnId) -> Option<[u8; 32]> {
        self.conns.get(&id).and_then(|c| c.peer_key)
    }

    /// A copy of the connection's counters; `None` for an unknown `id`.
    pub fn conn_stats(&self, id: ConnId) -> Option<ConnStats> {
        self.conns.get(&id).map(|c| c.stats.clone())
    }

    /// Bytes held by the connection's send buffer (written, not yet acknowledged).
    pub fn send_buffered(&self, id: ConnId) -> Option<usize> {
        self.conns.get(&id).map(|c| c.send_buffered())
    }

    /// Bytes held by the connection's receive buffers (arrived, not yet read).
    pub fn recv_buffered(&self, id: ConnId) -> Option<u64> {
        self.conns.get(&id).map(|c| c.recv_buffered())
    }

    /// Smoothed round-trip time of a connection.
    pub fn rtt(&self, id: ConnId) -> Option<Duration> {
        self.conns.get(&id).map(|c| c.srtt())
    }

    /// A one-line summary of a connection's rate and loss-recovery state (for logs and
    /// the simulator's traces).
    pub fn conn_debug(&self, id: ConnId) -> Option<String> {
        self.conns.get(&id).map(|c| c.debug_state())
    }

    /// Connection IDs of every connection still held (for drivers and tests).
    pub fn conn_ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Handshakes waiting for their third message.
    /// Whether `cid` names one of this endpoint's connections or half-open
    /// handshakes.
    pub fn knows_cid(&self, cid: u64) -> bool {
        self.by_cid.contains_key(&cid) || self.half_open.contains(cid)
    }

    /// Server handshakes waiting for their third message.
    pub fn half_open_count(&self) -> usize {
        self.half_open.len()
    }
}

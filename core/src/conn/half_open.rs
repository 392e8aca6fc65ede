//! The server's half-open handshakes (sans-IO): a bounded table with the eviction
//! order that keeps real clients getting in under a handshake flood.
//!
//! A slot is taken by an INIT and freed by its FINISH, by expiry, or by eviction. When
//! the table (or one source's share of it) is full, only an INIT that proved its
//! address with a RETRY token may take a slot, and it takes it from whoever is least
//! likely to be a real client: an unvalidated half-open first (oldest first), else the
//! oldest half-open of the source that holds the most. A client that finishes its
//! handshake within a round trip is therefore never displaced by a flood from other
//! sources, however fast it is, and a flood from its own source displaces its own
//! entries first.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::noise::ServerHandshake;
use super::wire::TransportParams;

/// What per-source limits count against: an IPv4 address or an IPv6 /64 prefix (one
/// host commonly holds a whole /64), with port 0; on loopback, the address and port.
/// Everything on loopback is this host, so its address says nothing; its port names
/// one local socket (one process's engine), which a local flooder cannot share with
/// the socket of a real client.
pub(super) type Source = (IpAddr, u16);

pub(super) fn source_of(a: SocketAddr) -> Source {
    let ip = a.ip().to_canonical();
    if ip.is_loopback() {
        return (ip, a.port());
    }
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)),
                0,
            )
        }
        v4 => (v4, 0),
    }
}

/// A server handshake waiting for its third message.
pub(super) struct HalfOpen {
    pub addr: SocketAddr,
    pub client_cid: u64,
    pub hs: ServerHandshake,
    pub params: TransportParams,
    pub response: Vec<u8>,
    pub sent_at: Instant,
    pub sends: u32,
    /// Forgotten after this (pushed back while the client is still trying).
    pub expires: Instant,
    /// Anti-amplification: bytes received from and sent to the unvalidated address.
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// Its INIT carried a valid RETRY token (the client receives at its address).
    pub validated: bool,
    /// Insertion order (eviction takes the oldest).
    seq: u64,
}

impl HalfOpen {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        addr: SocketAddr,
        client_cid: u64,
        hs: ServerHandshake,
        params: TransportParams,
        response: Vec<u8>,
        now: Instant,
        expires: Instant,
        bytes_in: usize,
        validated: bool,
    ) -> Self {
        let bytes_out = response.len();
        Self {
            addr,
            client_cid,
            hs,
            params,
            response,
            sent_at: now,
            sends: 1,
            expires,
            bytes_in,
            bytes_out,
            validated,
            seq: 0,
        }
    }

    fn client_key(&self) -> ClientKey {
        (self.addr, self.client_cid, self.hs.msg1().to_vec())
    }
}

/// A half-open is keyed by the client's address, ID *and* Noise message 1: INIT is not
/// authenticated, so a damaged copy is another handshake.
pub(super) type ClientKey = (SocketAddr, u64, Vec<u8>);

#[derive(Default)]
pub(super) struct HalfOpens {
    by_scid: HashMap<u64, HalfOpen>,
    by_client: HashMap<ClientKey, u64>,
    /// (expiry, scid), in time order; stale entries are skipped.
    expiry: VecDeque<(Instant, u64)>,
    /// Each source's half-opens by (validated, seq): unvalidated first, oldest first.
    per_source: HashMap<Source, BTreeMap<(bool, u64), u64>>,
    /// (count, source): the source holding the most is the last.
    sizes: BTreeSet<(usize, Source)>,
    /// Unvalidated half-opens, oldest first.
    unvalidated: BTreeMap<u64, u64>,
    next_seq: u64,
    /// Half-opens evicted to make room (for stats).
    pub evicted: u64,
}

impl HalfOpens {
    pub fn len(&self) -> usize {
        self.by_scid.len()
    }

    pub fn contains(&self, scid: u64) -> bool {
        self.by_scid.contains_key(&scid)
    }

    pub fn get_mut(&mut self, scid: u64) -> Option<&mut HalfOpen> {
        self.by_scid.get_mut(&scid)
    }

    pub fn find(&self, key: &ClientKey) -> Option<u64> {
        self.by_client.get(key).copied()
    }

    pub fn count(&self, source: &Source) -> usize {
        self.per_source.get(source).map_or(0, |m| m.len())
    }

    fn resize(&mut self, source: Source, from: usize, to: usize) {
        if from > 0 {
            self.sizes.remove(&(from, source));
        }
        if to > 0 {
            self.sizes.insert((to, source));
        }
    }

    pub fn insert(&mut self, scid: u64, mut ho: HalfOpen) {
        ho.seq = self.next_seq;
        self.next_seq += 1;
        let source = source_of(ho.addr);
        let n = self.count(&source);
        self.per_source
            .entry(source)
            .or_default()
            .insert((ho.validated, ho.seq), scid);
        self.resize(source, n, n + 1);
        if !ho.validated {
            self.unvalidated.insert(ho.seq, scid);
        }
        self.by_client.insert(ho.client_key(), scid);
        self.expiry.push_back((ho.expires, scid));
        self.by_scid.insert(scid, ho);
    }

    /// Removes a half-open and its index entries.
    pub fn remove(&mut self, scid: u64) -> Option<HalfOpen> {
        let ho = self.by_scid.remove(&scid)?;
        self.by_client.remove(&ho.client_key());
        let source = source_of(ho.addr);
        let n = self.count(&source);
        if let Some(m) = self.per_source.get_mut(&source) {
            m.remove(&(ho.validated, ho.seq));
            if m.is_empty() {
                self.per_source.remove(&source);
            }
        }
        self.resize(source, n, n.saturating_sub(1));
        self.unvalidated.remove(&ho.seq);
        Some(ho)
    }

    /// Pushes a half-open's expiry to `until` while its client is still trying (at most
    /// once a second, so the expiry queue stays small whatever arrives).
    pub fn refresh(&mut self, scid: u64, until: Instant) {
        if let Some(ho) = self.by_scid.get_mut(&scid) {
            if until.saturating_duration_since(ho.expires) >= Duration::from_secs(1) {
                ho.expires = until;
                self.expiry.push_back((until, scid));
            }
        }
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiry.front().map(|&(t, _)| t)
    }

    /// Forgets every half-open whose time ran out.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(t, scid)) = self.expiry.front() {
            if t > now {
                break;
            }
            self.expiry.pop_front();
            if self.by_scid.get(&scid).is_some_and(|ho| ho.expires <= now) {
                self.remove(scid);
            }
        }
    }

    /// Makes room for a validated INIT from `source`: within the source's own share
    /// when it holds `per_source` already, else in the whole table when it holds
    /// `total`. Returns false if nothing could be evicted (then the INIT is dropped).
    pub fn make_room(&mut self, source: &Source, per_source: usize, total: usize) -> bool {
        if self.count(source) >= per_source {
            let victim = self
                .per_source
                .get(source)
                .and_then(|m| m.first_key_value())
                .map(|(_, &scid)| scid);
            match victim {
                Some(scid) => self.evict(scid),
                None => return false,
            }
        }
        if self.len() >= total {
            let victim = match self.unvalidated.first_key_value() {
                Some((_, &scid)) => Some(scid),
                None => self
                    .sizes
                    .last()
                    .and_then(|(_, s)| self.per_source.get(s))
                    .and_then(|m| m.first_key_value())
                    .map(|(_, &scid)| scid),
            };
            match victim {
                Some(scid) => self.evict(scid),
                None => return false,
            }
        }
        self.count(source) < per_source && self.len() < total
    }

    fn evict(&mut self, scid: u64) {
        if self.remove(scid).is_some() {
            self.evicted += 1;
        }
    }
}

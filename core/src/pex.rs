//! Peer exchange and have summaries (issue 17, part 3): how the pullers of one root
//! find each other through the origin, and learn which chunks a sharer holds.
//!
//! Two messages (docs/PROTOCOL.md, "Peer exchange"):
//! - **PEX** (type 9, puller → exposer), framed and sealed exactly like a REQUEST
//!   (exposure id, session token, seq, stamp, body sealed under the request key) and
//!   padded to [`PEX_LEN`]: "I share on port P" (0: I do not), and "tell me which
//!   chunks you hold from chunk F on".
//! - **PEERS** (type 10, exposer → puller): sealed under the same request key with a
//!   nonce of the exposer's: the current sharers of the exposure (at most
//!   [`MAX_PEERS_SENT`], never the asker) and, from a sharer, a bitmap of the chunks
//!   it holds. Never larger than the PEX that asked for it.
//!
//! The pieces here are pure: the wire formats, and [`Sharers`], the exposer's bounded
//! table of who shares what. The exposer and puller call into them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

use crate::crypto::TAG_LEN;
use crate::rng::Rng;
use crate::wire::{self, ExposureId, PacketType, Reader, WireError, Writer};

/// What a PEX is padded to: the PEERS it asks for may be as large (a 1200-byte
/// datagram crosses any path).
pub const PEX_LEN: usize = 1200;
/// Most sharers an exposer remembers per exposure (the most recently active).
pub const MAX_SHARERS: usize = 16;
/// Most sharers one PEERS names.
pub const MAX_PEERS_SENT: usize = 16;
/// A sharer that has sent no PEX for this long is forgotten.
pub const SHARER_EXPIRY: Duration = Duration::from_secs(10);
/// Bytes of one peer in a PEERS body: IPv6 (or IPv4-mapped) address and port.
const PEER_LEN: usize = 18;
/// Bytes of PEERS before its sealed body: version, type, exposure id, nonce.
const PEERS_HEADER_LEN: usize = 2 + 16 + 12;

/// A PEX's sealed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PexBody {
    /// The UDP port on which the asker shares this exposure (on the address the
    /// exposer sees it at), 0 if it does not.
    pub share_port: u16,
    /// The first chunk whose holding the asker wants summarised.
    pub have_from: u32,
}

impl PexBody {
    /// The body, padded with zeros to `len` bytes (at least its 6).
    pub fn encode(&self, len: usize) -> Vec<u8> {
        let mut w = Writer::with_capacity(len.max(6));
        w.u16(self.share_port).u32(self.have_from);
        w.buf.resize(len.max(6), 0);
        w.buf
    }

    /// Strict: the padding must be zeros.
    pub fn decode(b: &[u8]) -> Result<PexBody, WireError> {
        let mut r = Reader::new(b);
        let share_port = r.u16()?;
        let have_from = r.u32()?;
        if r.rest().iter().any(|&x| x != 0) {
            return Err(WireError::BadValue("PEX padding"));
        }
        Ok(PexBody {
            share_port,
            have_from,
        })
    }
}

/// A PEX datagram, parsed (type 9): the header of a REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pex<'a> {
    /// The exposure the session is for.
    pub exposure: ExposureId,
    /// The session token.
    pub token: &'a [u8],
    /// Nonce of the sealed body (the puller's REQUEST sequence, shared).
    pub seq: u64,
    /// The exposer's clock as the puller reckons it (freshness).
    pub stamp_ms: u64,
    /// The sealed [`PexBody`] with its tag.
    pub sealed: &'a [u8],
}

impl<'a> Pex<'a> {
    /// Everything up to the sealed body (also its associated data).
    pub fn encode_header(exposure: &ExposureId, token: &[u8], seq: u64, stamp_ms: u64) -> Vec<u8> {
        wire::encode_session_header(PacketType::Pex, exposure, token, seq, stamp_ms)
    }

    /// The AEAD tag, which names the PEX (replay filter).
    pub fn tag(&self) -> &'a [u8] {
        &self.sealed[self.sealed.len() - TAG_LEN..]
    }

    /// The packet and the length of its header.
    pub fn decode(d: &'a [u8]) -> Result<(Pex<'a>, usize), WireError> {
        let (h, header_len) = wire::decode_session_header(d, PacketType::Pex)?;
        Ok((
            Pex {
                exposure: h.exposure,
                token: h.token,
                seq: h.seq,
                stamp_ms: h.stamp_ms,
                sealed: h.sealed,
            },
            header_len,
        ))
    }
}

/// What a source says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Have {
    /// Every chunk (a full exposure).
    All,
    /// From chunk `first`, `count` chunks, two bitmaps of one bit per chunk (bit
    /// `i % 8` of byte `i / 8` is chunk `first + i`): which it holds, and which its
    /// puller is fetching from a full source (the origin) now, so that others ask
    /// the origin for other chunks.
    Bits {
        /// The first chunk summarised.
        first: u32,
        /// How many chunks.
        count: u32,
        /// ⌈count / 8⌉ bytes; bits past `count` are zero.
        bits: Vec<u8>,
        /// ⌈count / 8⌉ bytes, the same way.
        fetching: Vec<u8>,
    },
}

impl Have {
    /// Whether chunk `index` is said to be held (`None`: not summarised here).
    pub fn holds(&self, index: u64) -> Option<bool> {
        match self {
            Have::All => Some(true),
            Have::Bits {
                first, count, bits, ..
            } => bit(bits, *first, *count, index),
        }
    }

    /// Whether chunk `index` is said to be on its way from a full source (`None`:
    /// not summarised here).
    pub fn fetching(&self, index: u64) -> Option<bool> {
        match self {
            Have::All => Some(false),
            Have::Bits {
                first,
                count,
                fetching,
                ..
            } => bit(fetching, *first, *count, index),
        }
    }

    /// The summary of `total` chunks from `first` in at most `room` bytes of body,
    /// asking `has` and `fetching` for each.
    pub fn summarise(
        first: u32,
        total: u64,
        room: usize,
        has: impl Fn(u64) -> bool,
        fetching: impl Fn(u64) -> bool,
    ) -> Have {
        let room_bits = (room.saturating_sub(9) / 2) as u64 * 8;
        let count = total.saturating_sub(first as u64).min(room_bits) as u32;
        let mut bits = vec![0u8; (count as usize).div_ceil(8)];
        let mut fetch = bits.clone();
        for i in 0..count as u64 {
            let c = first as u64 + i;
            if has(c) {
                bits[(i / 8) as usize] |= 1 << (i % 8);
            } else if fetching(c) {
                fetch[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        Have::Bits {
            first,
            count,
            bits,
            fetching: fetch,
        }
    }
}

fn bit(bits: &[u8], first: u32, count: u32, index: u64) -> Option<bool> {
    let i = index.checked_sub(first as u64)?;
    if i >= count as u64 {
        return None;
    }
    Some(bits[(i / 8) as usize] & (1 << (i % 8)) != 0)
}

/// A PEERS answer's body (opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersBody {
    /// Sharers of the exposure (IPv4 addresses as IPv4).
    pub peers: Vec<SocketAddr>,
    /// What the answering exposer holds.
    pub have: Have,
}

impl PeersBody {
    /// `count u8 ‖ count × (address 16 ‖ port u16) ‖ kind u8 (0 all, 1 bitmaps) ‖
    /// [first u32 ‖ count u32 ‖ held bitmap ‖ fetching bitmap]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        let peers = &self.peers[..self.peers.len().min(MAX_PEERS_SENT)];
        w.u8(peers.len() as u8);
        for p in peers {
            let v6 = match p.ip() {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            w.bytes(&v6.octets()).u16(p.port());
        }
        match &self.have {
            Have::All => {
                w.u8(0);
            }
            Have::Bits {
                first,
                count,
                bits,
                fetching,
            } => {
                w.u8(1).u32(*first).u32(*count).bytes(bits).bytes(fetching);
            }
        }
        w.buf
    }

    /// Strict: no port 0, no unspecified address, a bitmap of exactly the length its
    /// count needs with no bit set past it, nothing after.
    pub fn decode(b: &[u8]) -> Result<PeersBody, WireError> {
        let mut r = Reader::new(b);
        let n = r.u8()? as usize;
        if n > MAX_PEERS_SENT {
            return Err(WireError::BadLength);
        }
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            let port = r.u16()?;
            let ip = ip.to_canonical();
            if port == 0 || ip.is_unspecified() || ip.is_multicast() {
                return Err(WireError::BadValue("peer address"));
            }
            peers.push(SocketAddr::new(ip, port));
        }
        let have = match r.u8()? {
            0 => Have::All,
            1 => {
                let first = r.u32()?;
                let count = r.u32()?;
                if first.checked_add(count).is_none() {
                    return Err(WireError::BadLength);
                }
                let n = (count as usize).div_ceil(8);
                let bits = r.bytes(n)?.to_vec();
                let fetching = r.bytes(n)?.to_vec();
                for b in [&bits, &fetching] {
                    if count % 8 != 0 && b.last().is_some_and(|&l| l >> (count % 8) != 0) {
                        return Err(WireError::BadValue("bitmap padding"));
                    }
                }
                Have::Bits {
                    first,
                    count,
                    bits,
                    fetching,
                }
            }
            _ => return Err(WireError::BadValue("have kind")),
        };
        r.finish()?;
        Ok(PeersBody { peers, have })
    }
}

/// Seals a PEERS datagram for `exposure` under the session's request key. The
/// nonce is random with its top bit set: the puller's nonces (`0⁴ ‖ seq`) never
/// have it, so the two directions never share one.
pub fn seal_peers(
    request_key: &[u8; 32],
    exposure: &ExposureId,
    body: &PeersBody,
    rng: &mut Rng,
) -> Vec<u8> {
    let mut nonce: [u8; 12] = rng.bytes();
    nonce[0] |= 0x80;
    let mut w = Writer::with_capacity(PEERS_HEADER_LEN + 64);
    w.u8(wire::VERSION)
        .u8(PacketType::Peers as u8)
        .bytes(exposure)
        .bytes(&nonce);
    let mut pkt = w.buf;
    let header = pkt.clone();
    let mut plain = body.encode();
    let aead = ChaCha20Poly1305::new(Key::from_slice(request_key));
    match aead.encrypt_in_place_detached(&Nonce::from(nonce), &header, &mut plain) {
        Ok(tag) => {
            pkt.extend_from_slice(&plain);
            pkt.extend_from_slice(&tag);
        }
        // Only past the AEAD's length limit (gigabytes): nothing to send.
        Err(_) => pkt.clear(),
    }
    pkt
}

/// The exposure a PEERS datagram names (before it is opened).
pub fn peers_exposure(d: &[u8]) -> Result<ExposureId, WireError> {
    if wire::peek_type(d)? != PacketType::Peers {
        return Err(WireError::BadType(d[1]));
    }
    let mut r = Reader::new(d);
    r.bytes(2)?;
    r.array()
}

/// Opens a PEERS datagram under the session's request key. `None`: malformed,
/// forged, or not for this session.
pub fn open_peers(request_key: &[u8; 32], d: &[u8]) -> Option<PeersBody> {
    if d.len() < PEERS_HEADER_LEN + TAG_LEN || wire::peek_type(d).ok()? != PacketType::Peers {
        return None;
    }
    let (header, sealed) = d.split_at(PEERS_HEADER_LEN);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&header[18..30]);
    if nonce[0] & 0x80 == 0 {
        return None;
    }
    let split = sealed.len() - TAG_LEN;
    let mut buf = sealed[..split].to_vec();
    let tag = Tag::clone_from_slice(&sealed[split..]);
    ChaCha20Poly1305::new(Key::from_slice(request_key))
        .decrypt_in_place_detached(&Nonce::from(nonce), header, &mut buf, &tag)
        .ok()?;
    PeersBody::decode(&buf).ok()
}

/// Room for a PEERS body in an answer to a datagram of `asked_len` bytes.
pub fn body_room(asked_len: usize) -> usize {
    asked_len.saturating_sub(PEERS_HEADER_LEN + TAG_LEN)
}

/// Bytes a body with `peers` peers spends before its bitmap.
pub fn peers_len(peers: usize) -> usize {
    1 + peers * PEER_LEN
}

struct Entry {
    /// Where its session with the exposer comes from (one entry per session).
    session: SocketAddr,
    /// Where it shares: the session's IP, the port it named.
    share: SocketAddr,
    seen: Instant,
}

/// The exposer's table of sharers: per exposure at most [`MAX_SHARERS`], the most
/// recently active, each forgotten [`SHARER_EXPIRY`] after its last PEX. A sharer is
/// listed only at the IP address its session comes from, so an asker can only ever
/// make the exposer name itself. Memory: at most `MAX_SHARERS` entries for each
/// exposure the exposer serves (only a valid session of an exposure can add one),
/// however many pullers come and go.
#[derive(Default)]
pub struct Sharers {
    by_exposure: HashMap<ExposureId, Vec<Entry>>,
}

impl Sharers {
    /// The session at `from` says it shares `exposure` on port `share_port` of its
    /// address (0: it does not, and is forgotten).
    pub fn note(&mut self, exposure: ExposureId, from: SocketAddr, share_port: u16, now: Instant) {
        let list = self.by_exposure.entry(exposure).or_default();
        list.retain(|e| now.saturating_duration_since(e.seen) < SHARER_EXPIRY);
        let share = SocketAddr::new(crate::udp::canonical(from).ip(), share_port);
        // One entry per session, and one per sharing address (a sharer that
        // handshook again replaces its old session's entry).
        list.retain(|e| e.session != from && e.share != share);
        if share_port != 0 {
            if list.len() >= MAX_SHARERS {
                // The least recently active goes.
                if let Some(i) = (0..list.len()).min_by_key(|&i| list[i].seen) {
                    list.swap_remove(i);
                }
            }
            list.push(Entry {
                session: from,
                share,
                seen: now,
            });
        }
        if list.is_empty() {
            self.by_exposure.remove(&exposure);
        }
    }

    /// Current sharers of `exposure` other than the session at `asker` (and its own
    /// sharing address), most recently active first, at most `max`; one seen over
    /// loopback only to an asker on loopback.
    pub fn list(
        &self,
        exposure: &ExposureId,
        asker: SocketAddr,
        asker_port: u16,
        now: Instant,
        max: usize,
    ) -> Vec<SocketAddr> {
        let Some(list) = self.by_exposure.get(exposure) else {
            return Vec::new();
        };
        let own = SocketAddr::new(crate::udp::canonical(asker).ip(), asker_port);
        // A sharer seen over loopback is named only to askers on this host too.
        let local = own.ip().is_loopback();
        let mut live: Vec<&Entry> = list
            .iter()
            .filter(|e| now.saturating_duration_since(e.seen) < SHARER_EXPIRY)
            .filter(|e| e.session != asker && e.share != own)
            .filter(|e| local || !e.share.ip().is_loopback())
            .collect();
        live.sort_by_key(|e| std::cmp::Reverse(e.seen));
        live.into_iter().take(max).map(|e| e.share).collect()
    }

    /// Entries held, over every exposure (for tests of the bound).
    pub fn len(&self) -> usize {
        self.by_exposure.values().map(Vec::len).sum()
    }

    /// Whether no sharer is known.
    pub fn is_empty(&self) -> bool {
        self.by_exposure.is_empty()
    }

    /// Forgets the sharers of exposures not in `keep` (one withdrawn).
    pub fn retain(&mut self, keep: impl Fn(&ExposureId) -> bool) {
        self.by_exposure.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bodies_round_trip_and_are_strict() {
        let b = PexBody {
            share_port: 4242,
            have_from: 7,
        };
        let enc = b.encode(100);
        assert_eq!(enc.len(), 100);
        assert_eq!(PexBody::decode(&enc).unwrap(), b);
        let mut bad = enc.clone();
        bad[50] = 1;
        assert!(PexBody::decode(&bad).is_err());
        assert!(PexBody::decode(&enc[..5]).is_err());

        let have = Have::summarise(3, 20, 100, |i| i % 2 == 0, |i| i % 3 == 0);
        let p = PeersBody {
            peers: vec![at("10.0.0.1:5"), at("[2001:db8::1]:6")],
            have,
        };
        let enc = p.encode();
        let dec = PeersBody::decode(&enc).unwrap();
        assert_eq!(dec, p);
        assert_eq!(dec.have.holds(4), Some(true));
        assert_eq!(dec.have.holds(5), Some(false));
        assert_eq!(dec.have.holds(2), None);
        assert_eq!(dec.have.holds(20), None);
        assert_eq!(dec.have.fetching(9), Some(true));
        assert_eq!(dec.have.fetching(6), Some(false), "held, so not fetching");
        assert_eq!(dec.have.fetching(7), Some(false));
        // Trailing bytes, a set bit past the count, a zero port: refused.
        let mut t = enc.clone();
        t.push(0);
        assert!(PeersBody::decode(&t).is_err());
        let mut t = enc.clone();
        *t.last_mut().unwrap() |= 0x80;
        assert!(PeersBody::decode(&t).is_err());
        let mut t = enc.clone();
        t[17] = 0;
        t[18] = 0;
        assert!(PeersBody::decode(&t).is_err());
        // Every prefix is refused, none panics.
        for n in 0..enc.len() {
            assert!(PeersBody::decode(&enc[..n]).is_err());
        }
    }

    #[test]
    fn a_summary_fits_its_room() {
        let h = Have::summarise(0, 1 << 20, 500, |_| true, |_| false);
        let body = PeersBody {
            peers: vec![],
            have: h,
        };
        assert!(body.encode().len() <= 500 + 1);
        let Have::Bits { count, .. } = body.have else {
            panic!()
        };
        assert_eq!(count, (500 - 9) / 2 * 8);
    }

    #[test]
    fn peers_seal_and_open_only_under_the_key() {
        let mut rng = Rng::seeded_for_simulation(1);
        let key = [7u8; 32];
        let body = PeersBody {
            peers: vec![at("127.0.0.1:9")],
            have: Have::All,
        };
        let pkt = seal_peers(&key, &[1; 16], &body, &mut rng);
        assert_eq!(peers_exposure(&pkt).unwrap(), [1; 16]);
        assert_eq!(open_peers(&key, &pkt), Some(body));
        assert_eq!(open_peers(&[8u8; 32], &pkt), None);
        let mut forged = pkt.clone();
        forged[20] ^= 1;
        assert_eq!(open_peers(&key, &forged), None);
        for n in 0..pkt.len() {
            assert_eq!(open_peers(&key, &pkt[..n]), None);
        }
    }

    #[test]
    fn the_table_stays_bounded_and_names_only_observed_addresses() {
        let t0 = Instant::now();
        let mut s = Sharers::default();
        let e = [3u8; 16];
        for i in 0..1000u16 {
            let from = SocketAddr::new(IpAddr::from([10, 0, (i >> 8) as u8, i as u8]), 1000 + i);
            s.note(e, from, 5000, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(s.len(), MAX_SHARERS);
        let now = t0 + Duration::from_millis(1000);
        let l = s.list(&e, at("192.0.2.1:1"), 0, now, MAX_PEERS_SENT);
        assert_eq!(l.len(), MAX_SHARERS);
        // The most recent ones, each at the IP its session came from.
        for p in &l {
            let IpAddr::V4(a) = p.ip() else { panic!() };
            let i = ((a.octets()[2] as u16) << 8) | a.octets()[3] as u16;
            assert!(i >= 1000 - MAX_SHARERS as u16, "{p}");
            assert_eq!(p.port(), 5000);
        }
        // The asker is not told about itself.
        let me = at("10.0.3.231:1999");
        assert!(!s.list(&e, me, 0, now, 16).iter().any(|p| p.ip() == me.ip()));
        // Expiry; a port 0 unlists.
        assert!(s
            .list(&e, at("192.0.2.1:1"), 0, now + SHARER_EXPIRY, 16)
            .is_empty());
        s.note(e, me, 0, now);
        assert_eq!(s.len(), MAX_SHARERS - 1);
        // A sharer seen over loopback is named to local askers only.
        s.note(e, at("127.0.0.1:7000"), 7001, now);
        let far = s.list(&e, at("192.0.2.1:1"), 0, now, 16);
        assert!(!far.iter().any(|p| p.ip().is_loopback()), "{far:?}");
        let near = s.list(&e, at("127.0.0.1:1"), 0, now, 16);
        assert!(near.contains(&at("127.0.0.1:7001")), "{near:?}");
    }
}

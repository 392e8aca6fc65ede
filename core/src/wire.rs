//! Strict encoding and decoding of every RGTP datagram (see docs/PROTOCOL.md).
//!
//! Decoding never panics: every length is checked against the datagram, trailing bytes
//! are rejected (except HELLO's padding, which must be zero), and unknown versions or
//! types are errors. Decoders borrow from the datagram to avoid copies on the data path.

use std::fmt;

/// The only protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// Default largest UDP payload: crosses any Internet path (QUIC's choice).
pub const DEFAULT_MAX_DATAGRAM: usize = 1200;
/// Smallest datagram size a peer may ask for: a 16 KiB chunk must fit in 64 fragments.
pub const MIN_MAX_DATAGRAM: usize = 512;
/// Largest UDP payload over IPv4.
pub const MAX_MAX_DATAGRAM: usize = 65_507;
/// Default largest UDP payload toward a peer on this host: loopback carries 64 KiB
/// datagrams, so a sealed 16 KiB chunk travels in one datagram instead of 14.
pub const LOOPBACK_MAX_DATAGRAM: usize = 65_000;

/// Whether datagrams to `ip` never leave this host: 127.0.0.0/8, ::1, and
/// IPv4-mapped loopback (how a dual-stack socket sees an IPv4 peer).
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}
/// A HELLO is padded to at least this size so the 3x anti-amplification budget covers
/// the WELCOME (QUIC pads its Initial the same way).
pub const MIN_HELLO_LEN: usize = 1200;
/// Bytes of a DATA header: version, type, exposure id, object, chunk, fragment.
pub const DATA_HEADER_LEN: usize = 2 + 16 + 1 + 4 + 1;
/// Upper bound on request items in one REQUEST.
pub const MAX_REQUEST_ITEMS: usize = 256;
/// Upper bound on token length.
pub const MAX_TOKEN_LEN: usize = 255;
/// Longest exposure name, in bytes: a HELLO carrying it still fits its 1200-byte
/// minimum, so it crosses any path (a file's base name is at most 255 bytes).
pub const MAX_NAME_LEN: usize = 1024;

pub type ExposureId = [u8; 16];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    Hello = 1,
    Welcome = 2,
    Retry = 3,
    Request = 5,
    Data = 6,
    Stale = 7,
    Missing = 8,
    /// Peer exchange and have summaries: `pex.rs`.
    Pex = 9,
    Peers = 10,
    /// A REQUEST from a member of the exposure's multicast group (same layout).
    GroupRequest = 11,
}

impl PacketType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Welcome,
            3 => Self::Retry,
            5 => Self::Request,
            6 => Self::Data,
            7 => Self::Stale,
            8 => Self::Missing,
            9 => Self::Pex,
            10 => Self::Peers,
            11 => Self::GroupRequest,
            _ => return None,
        })
    }
}

/// Which byte sequence of an exposure a chunk belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Object {
    /// The content itself.
    Content = 0,
    /// The outboard: the BLAKE3 chaining value of every content chunk, 32 bytes each.
    Outboard = 1,
}

impl Object {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Content),
            1 => Some(Self::Outboard),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    BadVersion(u8),
    BadType(u8),
    BadLength,
    BadValue(&'static str),
    TrailingBytes,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "datagram truncated"),
            Self::BadVersion(v) => write!(f, "unsupported protocol version {v}"),
            Self::BadType(t) => write!(f, "unknown packet type {t}"),
            Self::BadLength => write!(f, "length field out of range"),
            Self::BadValue(what) => write!(f, "invalid {what}"),
            Self::TrailingBytes => write!(f, "trailing bytes after packet"),
        }
    }
}

impl std::error::Error for WireError {}

/// Bounds-checked cursor over a datagram.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A byte string prefixed by a u8 length.
    pub fn short_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u8()? as usize;
        self.bytes(n)
    }
    /// A byte string prefixed by a u16 length.
    pub fn long_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    /// Bytes not read yet.
    pub fn rest_len(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn finish(&self) -> Result<(), WireError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}

/// Append-only encoder.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// Panics only on a programming error (caller passed > 255 bytes).
    pub fn short_bytes(&mut self, b: &[u8]) -> &mut Self {
        assert!(b.len() <= 255, "short_bytes too long");
        self.u8(b.len() as u8).bytes(b)
    }
    pub fn long_bytes(&mut self, b: &[u8]) -> &mut Self {
        assert!(b.len() <= 65535, "long_bytes too long");
        self.u16(b.len() as u16).bytes(b)
    }
    fn header(&mut self, t: PacketType) -> &mut Self {
        self.u8(VERSION).u8(t as u8)
    }
}

/// Reads version and type; the rest is left to the type's decoder.
pub fn peek_type(datagram: &[u8]) -> Result<PacketType, WireError> {
    let (&v, rest) = datagram.split_first().ok_or(WireError::Truncated)?;
    if v != VERSION {
        return Err(WireError::BadVersion(v));
    }
    let &t = rest.first().ok_or(WireError::Truncated)?;
    PacketType::from_u8(t).ok_or(WireError::BadType(t))
}

fn expect(datagram: &[u8], t: PacketType) -> Result<Reader<'_>, WireError> {
    if peek_type(datagram)? != t {
        return Err(WireError::BadType(datagram[1]));
    }
    let mut r = Reader::new(datagram);
    r.bytes(2)?;
    Ok(r)
}

/// Puller → exposer: first handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Largest datagram the puller wants to receive.
    pub max_datagram: u16,
    /// Address-validation token from a RETRY, or empty.
    pub token: &'a [u8],
    /// Name of the exposure (file name), UTF-8.
    pub name: &'a str,
    /// Noise message 1 (`-> e`).
    pub noise: &'a [u8],
}

impl Hello<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(MIN_HELLO_LEN);
        w.header(PacketType::Hello)
            .u16(self.max_datagram)
            .short_bytes(self.token)
            .long_bytes(self.name.as_bytes())
            .long_bytes(self.noise);
        if w.buf.len() < MIN_HELLO_LEN {
            w.buf.resize(MIN_HELLO_LEN, 0);
        }
        w.buf
    }
    pub fn decode(d: &[u8]) -> Result<Hello<'_>, WireError> {
        if d.len() < MIN_HELLO_LEN {
            return Err(WireError::BadLength);
        }
        let mut r = expect(d, PacketType::Hello)?;
        let max_datagram = r.u16()?;
        let token = r.short_bytes()?;
        let name = std::str::from_utf8(r.long_bytes()?).map_err(|_| WireError::BadValue("name"))?;
        if name.len() > MAX_NAME_LEN {
            return Err(WireError::BadValue("name length"));
        }
        let noise = r.long_bytes()?;
        if r.rest().iter().any(|&b| b != 0) {
            return Err(WireError::BadValue("padding"));
        }
        Ok(Hello {
            max_datagram,
            token,
            name,
            noise,
        })
    }
}

/// Exposer → puller: Noise message 2 whose payload is a [`Manifest`].
pub struct Welcome<'a> {
    pub noise: &'a [u8],
}

impl Welcome<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(4 + self.noise.len());
        w.header(PacketType::Welcome).long_bytes(self.noise);
        w.buf
    }
    pub fn decode(d: &[u8]) -> Result<Welcome<'_>, WireError> {
        let mut r = expect(d, PacketType::Welcome)?;
        let noise = r.long_bytes()?;
        r.finish()?;
        Ok(Welcome { noise })
    }
}

/// Exposer → puller: prove you own your address, then say HELLO again with this token.
pub struct Retry<'a> {
    pub token: &'a [u8],
}

impl Retry<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.header(PacketType::Retry).short_bytes(self.token);
        w.buf
    }
    pub fn decode(d: &[u8]) -> Result<Retry<'_>, WireError> {
        let mut r = expect(d, PacketType::Retry)?;
        let token = r.short_bytes()?;
        r.finish()?;
        Ok(Retry { token })
    }
}

/// Exposer → puller: "this exposure or token is unknown here; handshake again".
pub struct Stale {
    pub exposure: ExposureId,
}

impl Stale {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.header(PacketType::Stale).bytes(&self.exposure);
        w.buf
    }
    pub fn decode(d: &[u8]) -> Result<Stale, WireError> {
        let mut r = expect(d, PacketType::Stale)?;
        let exposure = r.array()?;
        r.finish()?;
        Ok(Stale { exposure })
    }
}

/// Most chunk runs one MISSING names.
pub const MAX_MISSING_RUNS: usize = 64;

/// Sharer → puller: "I do not hold these content chunks (yet); ask someone else".
/// Each run is `(first chunk, count)`, count at least 1. Unauthenticated, like STALE:
/// it only makes a puller ask another source for those chunks for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub exposure: ExposureId,
    pub runs: Vec<(u32, u32)>,
}

impl Missing {
    /// Encoded length with `runs` runs.
    pub const fn encoded_len(runs: usize) -> usize {
        2 + 16 + 1 + 8 * runs
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.header(PacketType::Missing)
            .bytes(&self.exposure)
            .u8(self.runs.len() as u8);
        for &(start, count) in &self.runs {
            w.u32(start).u32(count);
        }
        w.buf
    }
    pub fn decode(d: &[u8]) -> Result<Missing, WireError> {
        let mut r = expect(d, PacketType::Missing)?;
        let exposure = r.array()?;
        let n = r.u8()? as usize;
        if n == 0 || n > MAX_MISSING_RUNS {
            return Err(WireError::BadLength);
        }
        let mut runs = Vec::with_capacity(n);
        for _ in 0..n {
            let start = r.u32()?;
            let count = r.u32()?;
            if count == 0 || start.checked_add(count).is_none() {
                return Err(WireError::BadValue("missing run"));
            }
            runs.push((start, count));
        }
        r.finish()?;
        Ok(Missing { exposure, runs })
    }
}

/// Outcome carried in the (authenticated) WELCOME payload.
// One per handshake, never stored in bulk: the size of the found variant costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Found(ManifestBody),
    NotFound,
    /// The name was exposed, but its content can no longer be served as offered (the
    /// file shrank or became unreadable): pullers should stop, not wait.
    Gone,
}

/// What a puller learns in the handshake; authenticated by the Noise session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestBody {
    pub exposure: ExposureId,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u64,
    pub root: [u8; 32],
    pub content_key: [u8; 32],
    /// Datagram size the exposer will use toward this puller.
    pub max_datagram: u16,
    /// Token to attach to every REQUEST (validates the address, carries the request key).
    pub token: Vec<u8>,
    /// Key sealing this puller's REQUEST bodies.
    pub request_key: [u8; 32],
    /// The exposer's clock (ms) when it wrote this manifest: REQUESTs carry it, advanced
    /// by the puller's own clock, so the exposer can refuse old ones (replays).
    pub clock_ms: u64,
    /// The chunk cipher the exposer chose from the puller's offer.
    pub cipher: crate::crypto::Cipher,
    /// What the exposer serves beyond version 1's base ([`FEATURE_REPAIR`]): present
    /// (a trailing byte) only toward a puller whose offer had [`OFFER_REPAIR`] or
    /// [`OFFER_MULTICAST`], so pullers that predate it get the manifest they parse.
    pub features: Option<u8>,
    /// The exposure's multicast group, present exactly when `features` has
    /// [`FEATURE_MULTICAST`] (said only to pullers whose offer had [`OFFER_MULTICAST`]).
    pub group: Option<std::net::SocketAddrV4>,
    /// Where the exposer's window starts, present exactly when `features` has
    /// [`FEATURE_WINDOW`].
    pub window: Option<crate::live::Window>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(200);
        match self {
            Manifest::NotFound => {
                w.u8(1);
            }
            Manifest::Gone => {
                w.u8(2);
            }
            Manifest::Found(m) => {
                w.u8(0)
                    .bytes(&m.exposure)
                    .u64(m.size)
                    .u32(m.chunk_size)
                    .u64(m.chunk_count)
                    .bytes(&m.root)
                    .bytes(&m.content_key)
                    .u16(m.max_datagram)
                    .short_bytes(&m.token)
                    .bytes(&m.request_key)
                    .u64(m.clock_ms)
                    .u8(m.cipher.code());
                if let Some(f) = m.features {
                    w.u8(f);
                    if let (true, Some(g)) = (f & FEATURE_MULTICAST != 0, m.group) {
                        w.bytes(&g.ip().octets()).u16(g.port());
                    }
                    if let (true, Some(win)) = (f & FEATURE_WINDOW != 0, &m.window) {
                        w.u64(win.start).u8(win.frontier.cvs().len() as u8);
                        for cv in win.frontier.cvs() {
                            w.bytes(cv);
                        }
                    }
                }
            }
        }
        w.buf
    }
    pub fn decode(d: &[u8]) -> Result<Manifest, WireError> {
        let mut r = Reader::new(d);
        let m = match r.u8()? {
            1 => Manifest::NotFound,
            2 => Manifest::Gone,
            0 => {
                let mut m = ManifestBody {
                    exposure: r.array()?,
                    size: r.u64()?,
                    chunk_size: r.u32()?,
                    chunk_count: r.u64()?,
                    root: r.array()?,
                    content_key: r.array()?,
                    max_datagram: r.u16()?,
                    token: r.short_bytes()?.to_vec(),
                    request_key: r.array()?,
                    clock_ms: r.u64()?,
                    cipher: crate::crypto::Cipher::from_code(r.u8()?)
                        .ok_or(WireError::BadValue("cipher"))?,
                    features: if r.rest_len() >= 1 {
                        Some(r.u8()?)
                    } else {
                        None
                    },
                    group: None,
                    window: None,
                };
                if m.features.is_some_and(|f| f & FEATURE_MULTICAST != 0) {
                    let ip = std::net::Ipv4Addr::from(r.array::<4>()?);
                    if !ip.is_multicast() {
                        return Err(WireError::BadValue("multicast group"));
                    }
                    m.group = Some(std::net::SocketAddrV4::new(ip, r.u16()?));
                }
                if m.features.is_some_and(|f| f & FEATURE_WINDOW != 0) {
                    let start = r.u64()?;
                    let count = r.u8()? as usize;
                    if start == 0 || start >= m.chunk_count || count != start.count_ones() as usize
                    {
                        return Err(WireError::BadValue("window"));
                    }
                    let mut cvs = Vec::with_capacity(count);
                    for _ in 0..count {
                        cvs.push(r.array::<32>()?);
                    }
                    let frontier = crate::frontier::Frontier::from_parts(start, cvs)
                        .ok_or(WireError::BadValue("window"))?;
                    m.window = Some(crate::live::Window { start, frontier });
                }
                if m.chunk_size as usize != crate::merkle::CHUNK_SIZE {
                    return Err(WireError::BadValue("chunk size"));
                }
                if m.chunk_count != crate::merkle::chunk_count(m.size) {
                    return Err(WireError::BadValue("chunk count"));
                }
                if (m.max_datagram as usize) < MIN_MAX_DATAGRAM {
                    return Err(WireError::BadValue("max datagram"));
                }
                Manifest::Found(m)
            }
            _ => return Err(WireError::BadValue("manifest status")),
        };
        r.finish()?;
        Ok(m)
    }
}

/// One thing a puller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestItem {
    /// Every fragment of chunks `start .. start + count`.
    Range {
        object: Object,
        start: u32,
        count: u32,
    },
    /// The fragments of one chunk whose bits are set in `mask`.
    Fragments {
        object: Object,
        chunk: u32,
        mask: u64,
    },
    /// Every fragment of chunks `start .. start + count`, each chunk followed by its
    /// repair fragments `0 .. repair` (fragment numbers 64 and up). `repair` in 1..=64.
    RangeRepair {
        object: Object,
        start: u32,
        count: u32,
        repair: u8,
    },
    /// Repair fragments `first .. first + count` of one chunk (`count` ≥ 1,
    /// `first + count` ≤ 64).
    Repair {
        object: Object,
        chunk: u32,
        first: u8,
        count: u8,
    },
}

/// Bit of the HELLO's cipher offer (Noise message 1's payload) by which a puller says
/// it takes repair fragments; exposers before repair fragments ignore it.
pub const OFFER_REPAIR: u8 = 0x80;

/// Bit of the manifest's `features` byte: this exposer serves repair fragments.
pub const FEATURE_REPAIR: u8 = 0x01;

/// Bit of the HELLO's cipher offer by which a puller says it can join a multicast
/// group; exposers without multicast ignore it.
pub const OFFER_MULTICAST: u8 = 0x40;

/// Bit of the manifest's `features` byte: this exposure has a multicast group, whose
/// address (IPv4, 4 bytes, and port u16) follows the byte.
pub const FEATURE_MULTICAST: u8 = 0x02;

/// Bit of the manifest's `features` byte: this exposer answers PEX (type 9) with
/// PEERS (type 10): peer exchange, and a sharer's have summary (`pex.rs`).
pub const FEATURE_PEX: u8 = 0x08;

/// Bit of the manifest's `features` byte: the exposure is live (a stream or a growing
/// file): this manifest is a checkpoint, its size and root those of the bytes so far.
pub const FEATURE_LIVE: u8 = 0x04;

/// Bit of the manifest's `features` byte: the exposer no longer holds the first
/// chunks of this (live) exposure. After the byte (and the group) come the first
/// chunk held (u64, more than 0 and less than the chunk count), a count (u8) and as
/// many CVs: the complete subtrees over the chunks before it, one per set bit of the
/// start, largest first ([`crate::frontier::Frontier`]).
pub const FEATURE_WINDOW: u8 = 0x10;

/// Request item tag bits: one chunk (else a range), repair fragments.
const TAG_ONE: u8 = 0x80;
const TAG_REPAIR: u8 = 0x40;

impl RequestItem {
    pub const RANGE_LEN: usize = 10;
    pub const FRAGMENTS_LEN: usize = 14;
}

/// Encodes request items (the plaintext of a REQUEST body).
pub fn encode_items(items: &[RequestItem]) -> Vec<u8> {
    let mut w = Writer::with_capacity(2 + items.len() * RequestItem::FRAGMENTS_LEN);
    w.u16(items.len() as u16);
    for it in items {
        match *it {
            RequestItem::Range {
                object,
                start,
                count,
            } => {
                w.u8(object as u8).u32(start).u32(count);
            }
            RequestItem::Fragments {
                object,
                chunk,
                mask,
            } => {
                w.u8(TAG_ONE | object as u8).u32(chunk).u64(mask);
            }
            RequestItem::RangeRepair {
                object,
                start,
                count,
                repair,
            } => {
                w.u8(TAG_REPAIR | object as u8)
                    .u32(start)
                    .u32(count)
                    .u8(repair);
            }
            RequestItem::Repair {
                object,
                chunk,
                first,
                count,
            } => {
                w.u8(TAG_ONE | TAG_REPAIR | object as u8)
                    .u32(chunk)
                    .u8(first)
                    .u8(count);
            }
        }
    }
    w.buf
}

/// Strict decoder for a REQUEST body's plaintext.
pub fn decode_items(d: &[u8]) -> Result<Vec<RequestItem>, WireError> {
    let mut r = Reader::new(d);
    let n = r.u16()? as usize;
    if n == 0 || n > MAX_REQUEST_ITEMS {
        return Err(WireError::BadLength);
    }
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let tag = r.u8()?;
        let object =
            Object::from_u8(tag & !(TAG_ONE | TAG_REPAIR)).ok_or(WireError::BadValue("object"))?;
        let item = if tag & (TAG_ONE | TAG_REPAIR) == TAG_REPAIR {
            let start = r.u32()?;
            let count = r.u32()?;
            let repair = r.u8()?;
            if count == 0 {
                return Err(WireError::BadValue("range count"));
            }
            if repair == 0 || repair as usize > crate::fec::MAX_REPAIR {
                return Err(WireError::BadValue("repair count"));
            }
            RequestItem::RangeRepair {
                object,
                start,
                count,
                repair,
            }
        } else if tag & TAG_REPAIR != 0 {
            let chunk = r.u32()?;
            let first = r.u8()?;
            let count = r.u8()?;
            if count == 0 || first as usize + count as usize > crate::fec::MAX_REPAIR {
                return Err(WireError::BadValue("repair range"));
            }
            RequestItem::Repair {
                object,
                chunk,
                first,
                count,
            }
        } else if tag & TAG_ONE == 0 {
            let start = r.u32()?;
            let count = r.u32()?;
            if count == 0 {
                return Err(WireError::BadValue("range count"));
            }
            RequestItem::Range {
                object,
                start,
                count,
            }
        } else {
            let chunk = r.u32()?;
            let mask = r.u64()?;
            if mask == 0 {
                return Err(WireError::BadValue("fragment mask"));
            }
            RequestItem::Fragments {
                object,
                chunk,
                mask,
            }
        };
        items.push(item);
    }
    r.finish()?;
    Ok(items)
}

/// Puller → exposer: sealed list of wanted chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Sent as a GROUP REQUEST (type 11): the puller is a member of the exposure's
    /// multicast group and takes its data there.
    pub member: bool,
    pub exposure: ExposureId,
    pub token: &'a [u8],
    /// Nonce of the sealed body; strictly increasing per puller.
    pub seq: u64,
    /// The exposer's clock (ms) as the puller reckons it when sending: freshness.
    pub stamp_ms: u64,
    /// `encode_items` output sealed with the request key (AEAD tag included).
    pub sealed: &'a [u8],
}

impl<'a> Request<'a> {
    /// Encodes everything up to the sealed body; the result is also the AEAD's
    /// associated data, so the header cannot be altered.
    pub fn encode_header(exposure: &ExposureId, token: &[u8], seq: u64, stamp_ms: u64) -> Vec<u8> {
        Self::encode_header_as(false, exposure, token, seq, stamp_ms)
    }

    /// [`Request::encode_header`], as a GROUP REQUEST (type 11) when `member`: the
    /// puller is a member of the exposure's multicast group. The type is part of the
    /// associated data, so it cannot be changed on the path.
    pub fn encode_header_as(
        member: bool,
        exposure: &ExposureId,
        token: &[u8],
        seq: u64,
        stamp_ms: u64,
    ) -> Vec<u8> {
        let t = if member {
            PacketType::GroupRequest
        } else {
            PacketType::Request
        };
        encode_session_header(t, exposure, token, seq, stamp_ms)
    }

    /// The AEAD tag: it authenticates the whole REQUEST, so it names it (replay filter).
    pub fn tag(&self) -> &'a [u8] {
        &self.sealed[self.sealed.len() - 16..]
    }
    /// Returns the packet and the length of its header (the associated data).
    pub fn decode(d: &'a [u8]) -> Result<(Request<'a>, usize), WireError> {
        let t = peek_type(d)?;
        if !matches!(t, PacketType::Request | PacketType::GroupRequest) {
            return Err(WireError::BadType(d[1]));
        }
        let (h, header_len) = decode_session_header(d, t)?;
        Ok((
            Request {
                member: t == PacketType::GroupRequest,
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

/// The header shared by the datagrams a puller seals under its session's request
/// key (REQUEST, GROUP REQUEST, PEX), and the sealed body after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeader<'a> {
    pub exposure: ExposureId,
    pub token: &'a [u8],
    /// Nonce of the sealed body; strictly increasing per puller.
    pub seq: u64,
    /// The exposer's clock (ms) as the puller reckons it when sending: freshness.
    pub stamp_ms: u64,
    /// The sealed body, AEAD tag included (at least a tag long).
    pub sealed: &'a [u8],
}

/// Encodes a session header of type `t`: everything up to the sealed body, which is
/// also the AEAD's associated data (so neither the header nor the type can be
/// altered on the path).
pub fn encode_session_header(
    t: PacketType,
    exposure: &ExposureId,
    token: &[u8],
    seq: u64,
    stamp_ms: u64,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + token.len());
    w.header(t)
        .bytes(exposure)
        .short_bytes(token)
        .u64(seq)
        .u64(stamp_ms);
    w.buf
}

/// Decodes a datagram of type `t` with a session header; returns it and the
/// header's length (the associated data).
pub fn decode_session_header(
    d: &[u8],
    t: PacketType,
) -> Result<(SessionHeader<'_>, usize), WireError> {
    let mut r = expect(d, t)?;
    let exposure = r.array()?;
    let token = r.short_bytes()?;
    let seq = r.u64()?;
    let stamp_ms = r.u64()?;
    let header_len = r.position();
    let sealed = r.rest();
    if sealed.len() < crate::crypto::TAG_LEN {
        return Err(WireError::Truncated);
    }
    Ok((
        SessionHeader {
            exposure,
            token,
            seq,
            stamp_ms,
            sealed,
        },
        header_len,
    ))
}

/// Exposer → puller: one fragment of an encrypted chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data<'a> {
    pub exposure: ExposureId,
    pub object: Object,
    pub chunk: u32,
    pub fragment: u8,
    pub payload: &'a [u8],
}

impl<'a> Data<'a> {
    /// Writes a DATA header into `out` (which must hold DATA_HEADER_LEN bytes).
    pub fn write_header(
        out: &mut [u8],
        exposure: &ExposureId,
        object: Object,
        chunk: u32,
        fragment: u8,
    ) {
        out[0] = VERSION;
        out[1] = PacketType::Data as u8;
        out[2..18].copy_from_slice(exposure);
        out[18] = object as u8;
        out[19..23].copy_from_slice(&chunk.to_le_bytes());
        out[23] = fragment;
    }
    pub fn decode(d: &'a [u8]) -> Result<Data<'a>, WireError> {
        let mut r = expect(d, PacketType::Data)?;
        let exposure = r.array()?;
        let object = Object::from_u8(r.u8()?).ok_or(WireError::BadValue("object"))?;
        let chunk = r.u32()?;
        let fragment = r.u8()?;
        let payload = r.rest();
        if payload.is_empty() || fragment as usize >= crate::fec::MAX_DATA + crate::fec::MAX_REPAIR
        {
            return Err(WireError::BadValue("fragment"));
        }
        Ok(Data {
            exposure,
            object,
            chunk,
            fragment,
            payload,
        })
    }
}

/// Number of fragments needed to carry `ciphertext_len` bytes in datagrams of
/// `max_datagram` bytes, and the payload size of every fragment but the last.
pub fn fragmentation(ciphertext_len: usize, max_datagram: usize) -> (usize, usize) {
    let per = max_datagram - DATA_HEADER_LEN;
    (ciphertext_len.div_ceil(per), per)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_round_trip_and_padding() {
        let h = Hello {
            max_datagram: 1200,
            token: b"tok",
            name: "ubuntu.iso",
            noise: &[7u8; 32],
        };
        let enc = h.encode();
        assert_eq!(enc.len(), MIN_HELLO_LEN);
        assert_eq!(Hello::decode(&enc).unwrap(), h);
        // Short (unpadded) HELLOs are refused: they would break the 3x budget.
        assert_eq!(Hello::decode(&enc[..600]), Err(WireError::BadLength));
        // Non-zero padding is refused.
        let mut bad = enc.clone();
        *bad.last_mut().unwrap() = 1;
        assert!(Hello::decode(&bad).is_err());
    }

    #[test]
    fn version_and_type_are_checked() {
        let s = Stale { exposure: [1; 16] }.encode();
        assert!(Stale::decode(&s).is_ok());
        let mut v = s.clone();
        v[0] = 2;
        assert_eq!(peek_type(&v), Err(WireError::BadVersion(2)));
        let mut t = s.clone();
        t[1] = 99;
        assert_eq!(peek_type(&t), Err(WireError::BadType(99)));
        assert!(Welcome::decode(&s).is_err());
        let mut long = s.clone();
        long.push(0);
        assert_eq!(Stale::decode(&long).err(), Some(WireError::TrailingBytes));
    }

    #[test]
    fn missing_round_trips_and_is_parsed_strictly() {
        let m = Missing {
            exposure: [3; 16],
            runs: vec![(0, 1), (7, 300)],
        };
        let enc = m.encode();
        assert_eq!(enc.len(), Missing::encoded_len(2));
        assert_eq!(Missing::decode(&enc).unwrap(), m);
        // Trailing bytes, a short run list, a zero count, an overflowing run: dropped.
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(Missing::decode(&long), Err(WireError::TrailingBytes));
        assert_eq!(
            Missing::decode(&enc[..enc.len() - 1]),
            Err(WireError::Truncated)
        );
        let zero = Missing {
            exposure: [3; 16],
            runs: vec![(1, 0)],
        }
        .encode();
        assert!(Missing::decode(&zero).is_err());
        let wrap = Missing {
            exposure: [3; 16],
            runs: vec![(u32::MAX, 2)],
        }
        .encode();
        assert!(Missing::decode(&wrap).is_err());
        let none = Missing {
            exposure: [3; 16],
            runs: vec![],
        }
        .encode();
        assert_eq!(Missing::decode(&none), Err(WireError::BadLength));
    }

    #[test]
    fn items_round_trip() {
        let items = vec![
            RequestItem::Range {
                object: Object::Content,
                start: 5,
                count: 9,
            },
            RequestItem::Fragments {
                object: Object::Outboard,
                chunk: 3,
                mask: 0b1010,
            },
            RequestItem::RangeRepair {
                object: Object::Content,
                start: 7,
                count: 2,
                repair: 64,
            },
            RequestItem::Repair {
                object: Object::Content,
                chunk: 8,
                first: 60,
                count: 4,
            },
        ];
        assert_eq!(decode_items(&encode_items(&items)).unwrap(), items);
        assert!(decode_items(&encode_items(&[])).is_err());
    }

    #[test]
    fn malformed_repair_items_are_refused() {
        let one = |it: RequestItem| encode_items(&[it]);
        let o = Object::Content;
        // No repair, more than 64, or past fragment number 127: the body is dropped.
        for bad in [
            one(RequestItem::RangeRepair {
                object: o,
                start: 1,
                count: 1,
                repair: 0,
            }),
            one(RequestItem::RangeRepair {
                object: o,
                start: 1,
                count: 1,
                repair: 65,
            }),
            one(RequestItem::RangeRepair {
                object: o,
                start: 1,
                count: 0,
                repair: 3,
            }),
            one(RequestItem::Repair {
                object: o,
                chunk: 1,
                first: 0,
                count: 0,
            }),
            one(RequestItem::Repair {
                object: o,
                chunk: 1,
                first: 60,
                count: 5,
            }),
            one(RequestItem::Repair {
                object: o,
                chunk: 1,
                first: 255,
                count: 255,
            }),
        ] {
            assert!(decode_items(&bad).is_err(), "{bad:?}");
        }
        // Truncated, or with a byte to spare: refused.
        let good = one(RequestItem::Repair {
            object: o,
            chunk: 1,
            first: 2,
            count: 3,
        });
        assert!(decode_items(&good).is_ok());
        assert!(decode_items(&good[..good.len() - 1]).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(decode_items(&long).is_err());
        // An unknown object under the repair tag.
        let mut obj = good;
        obj[2] = 0x40 | 0x05;
        assert!(decode_items(&obj).is_err());
    }

    #[test]
    fn manifest_round_trip_and_checks() {
        let body = ManifestBody {
            exposure: [3; 16],
            size: 100_000,
            chunk_size: crate::merkle::CHUNK_SIZE as u32,
            chunk_count: crate::merkle::chunk_count(100_000),
            root: [4; 32],
            content_key: [5; 32],
            max_datagram: 1200,
            token: vec![9; 40],
            request_key: [6; 32],
            clock_ms: 123_456,
            cipher: crate::crypto::Cipher::Aes256Gcm,
            features: None,
            group: None,
            window: None,
        };
        let m = Manifest::Found(body.clone());
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        // The features byte: present only when sent; two trailing bytes are refused.
        let mut with = body.clone();
        with.features = Some(FEATURE_REPAIR);
        let enc = Manifest::Found(with.clone()).encode();
        assert_eq!(enc.len(), m.encode().len() + 1);
        assert_eq!(Manifest::decode(&enc).unwrap(), Manifest::Found(with));
        let mut two = enc.clone();
        two.push(0);
        assert!(Manifest::decode(&two).is_err());
        // The multicast group follows the features byte when its bit is set, and must
        // be a multicast address; the group's bytes without the bit are trailing bytes.
        let mut mc = body.clone();
        mc.features = Some(FEATURE_REPAIR | FEATURE_MULTICAST);
        mc.group = Some("239.1.2.3:5000".parse().unwrap());
        let enc_mc = Manifest::Found(mc.clone()).encode();
        assert_eq!(enc_mc.len(), enc.len() + 6);
        assert_eq!(
            Manifest::decode(&enc_mc).unwrap(),
            Manifest::Found(mc.clone())
        );
        assert!(Manifest::decode(&enc_mc[..enc_mc.len() - 1]).is_err());
        let mut unicast = enc_mc.clone();
        let at = unicast.len() - 6;
        unicast[at] = 10;
        assert!(Manifest::decode(&unicast).is_err());
        let mut no_bit = enc_mc.clone();
        no_bit[enc.len() - 1] = FEATURE_REPAIR;
        assert!(Manifest::decode(&no_bit).is_err());
        // An unknown cipher code is refused, not guessed.
        let mut bad = m.encode();
        *bad.last_mut().unwrap() = 9;
        assert!(Manifest::decode(&bad).is_err());
        let mut wrong = body;
        wrong.chunk_count += 1;
        assert!(Manifest::decode(&Manifest::Found(wrong).encode()).is_err());
        assert_eq!(
            Manifest::decode(&Manifest::NotFound.encode()).unwrap(),
            Manifest::NotFound
        );
        assert_eq!(
            Manifest::decode(&Manifest::Gone.encode()).unwrap(),
            Manifest::Gone
        );
    }

    #[test]
    fn data_round_trip() {
        let mut d = vec![0u8; DATA_HEADER_LEN + 10];
        Data::write_header(&mut d, &[8; 16], Object::Outboard, 77, 3);
        d[DATA_HEADER_LEN..].fill(0xAB);
        let p = Data::decode(&d).unwrap();
        assert_eq!((p.object, p.chunk, p.fragment), (Object::Outboard, 77, 3));
        assert_eq!(p.payload, &[0xAB; 10]);
        assert!(Data::decode(&d[..DATA_HEADER_LEN]).is_err());
        // Repair fragments are 64..128; 128 and beyond are refused.
        d[23] = 127;
        assert_eq!(Data::decode(&d).unwrap().fragment, 127);
        d[23] = 128;
        assert!(Data::decode(&d).is_err());
    }

    fn decode_any(d: &[u8]) {
        let _ = peek_type(d);
        let _ = Hello::decode(d);
        let _ = Welcome::decode(d);
        let _ = Retry::decode(d);
        let _ = Stale::decode(d);
        let _ = Missing::decode(d);
        let _ = Request::decode(d);
        let _ = Data::decode(d);
        let _ = Manifest::decode(d);
        let _ = decode_items(d);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decoders_never_panic(d in proptest::collection::vec(any::<u8>(), 0..1500)) {
            decode_any(&d);
        }

        #[test]
        fn decoders_never_panic_on_valid_prefix(t in 1u8..8, d in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v = vec![VERSION, t];
            v.extend_from_slice(&d);
            decode_any(&v);
        }

        #[test]
        fn items_round_trip_prop(raw in proptest::collection::vec((0u8..4, 0u8..2, any::<u32>(), 1u64..), 1..50)) {
            let items: Vec<RequestItem> = raw.iter().map(|&(kind, o, a, b)| {
                let object = Object::from_u8(o).unwrap();
                match kind {
                    0 => RequestItem::Range { object, start: a, count: (b as u32).max(1) },
                    1 => RequestItem::Fragments { object, chunk: a, mask: b },
                    2 => RequestItem::RangeRepair { object, start: a, count: (b as u32).max(1), repair: (b % 64) as u8 + 1 },
                    _ => {
                        let first = (b % 64) as u8;
                        RequestItem::Repair { object, chunk: a, first, count: ((b >> 8) % (64 - first as u64)) as u8 + 1 }
                    }
                }
            }).collect();
            prop_assert_eq!(decode_items(&encode_items(&items)).unwrap(), items);
        }

        #[test]
        fn request_round_trip(member in any::<bool>(), exp in any::<[u8;16]>(), tok in proptest::collection::vec(any::<u8>(), 0..200), seq in any::<u64>(), stamp in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 16..100)) {
            let mut pkt = Request::encode_header_as(member, &exp, &tok, seq, stamp);
            let hl = pkt.len();
            pkt.extend_from_slice(&body);
            let (r, h) = Request::decode(&pkt).unwrap();
            prop_assert_eq!(h, hl);
            prop_assert_eq!(r.member, member);
            prop_assert_eq!(r.exposure, exp);
            prop_assert_eq!(r.token, &tok[..]);
            prop_assert_eq!(r.seq, seq);
            prop_assert_eq!(r.stamp_ms, stamp);
            prop_assert_eq!(r.tag(), &body[body.len() - 16..]);
            prop_assert_eq!(r.sealed, &body[..]);
        }
    }
}

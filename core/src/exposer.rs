//! The exposer: a sans-IO state machine that answers HELLOs with authenticated
//! manifests and REQUESTs with encrypted chunk fragments.
//!
//! It keeps no per-puller state: a REQUEST is served from the request alone, its token
//! (sealed by the exposer) proving the source address and carrying the request key.
//! The only per-source state is a bounded table of rate buckets; a fixed-size filter
//! of REQUESTs already served (`replay`) makes each one good for a single answer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crypto::{
    same_addr, Cipher, ContentCipher, RequestSealer, TokenClaims, TokenKey, TAG_LEN,
};
use crate::fec;
use crate::handshake;
use crate::merkle::{self, Hash, CHUNK_SIZE};
use crate::replay::{ReplayFilter, Verdict};
use crate::retry::{self, HandshakeRate};
use crate::rng::Rng;
use crate::sealed::{self, SealedStore, Sealer};
use crate::source::{ChunkSource, CipherCache};
use crate::transmit::{Gather, SharedBytes, Transmit};
use crate::wire::{
    self, Data, ExposureId, Hello, Manifest, ManifestBody, Missing, Object, PacketType, Request,
    RequestItem, Retry, Stale, Welcome, DATA_HEADER_LEN,
};

#[derive(Debug, Clone)]
pub struct ExposerConfig {
    /// Largest datagram this exposer sends to another host (pullers may ask for less).
    pub max_datagram: usize,
    /// Largest datagram this exposer sends to a puller on this host (loopback).
    pub loopback_max_datagram: usize,
    /// How long a session token stays valid.
    pub token_lifetime: Duration,
    /// Handshakes per second above which a HELLO without a RETRY token gets a RETRY
    /// instead of Diffie-Hellman work. 0 means always demand a token.
    pub retry_threshold: u32,
    /// Memory for cached ciphertext, shared by all exposures.
    pub cache_bytes: usize,
    /// Most bytes one REQUEST may ask for.
    pub max_request_bytes: usize,
    /// Sending rate cap per source IP, bytes per second.
    pub source_rate: u64,
    /// The chunk cipher chosen for pullers that offer it (others get
    /// ChaCha20-Poly1305), and the one sealed stores hold.
    pub cipher: Cipher,
    /// The multicast group (IPv4) that members' data goes to (`--multicast`), offered
    /// to pullers whose session has `cipher` and `max_datagram` (the group's).
    pub multicast: Option<std::net::SocketAddrV4>,
    /// How long a fragment sent to the group stands for every member's request of it
    /// ([`crate::multicast::JustSent`]).
    pub group_window: Duration,
}

impl Default for ExposerConfig {
    fn default() -> Self {
        Self {
            max_datagram: wire::DEFAULT_MAX_DATAGRAM,
            loopback_max_datagram: wire::LOOPBACK_MAX_DATAGRAM,
            token_lifetime: Duration::from_secs(600),
            retry_threshold: 1000,
            cache_bytes: 64 << 20,
            max_request_bytes: 8 << 20,
            source_rate: 4 << 30,
            cipher: Cipher::preferred(),
            multicast: None,
            group_window: crate::multicast::DEFAULT_WINDOW,
        }
    }
}

/// Counters for tests, logs and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct ExposerStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub handshakes: u64,
    pub retries_sent: u64,
    pub stale_sent: u64,
    pub dropped: u64,
    pub encryptions: u64,
    pub cache_hits: u64,
    /// Chunks served from the sealed-ahead store (no crypto).
    pub sealed_reads: u64,
    pub rate_limited: u64,
    /// REQUESTs already served once, dropped.
    pub replays: u64,
    /// REQUESTs stamped outside the replay filter's window, answered STALE.
    pub stale_stamps: u64,
    /// Chunks whose repair fragments were computed (once per chunk and datagram size,
    /// while cached), and repair fragments sent.
    pub repair_encodes: u64,
    pub repair_fragments_out: u64,
    /// MISSING answers sent (a sharer asked for chunks it does not hold).
    pub missing_sent: u64,
    /// Chunks named in them.
    pub missing_chunks: u64,
    /// GROUP REQUESTs served through the multicast group, and the bytes sent to it.
    pub group_requests: u64,
    pub group_bytes_out: u64,
    /// PEX queries answered with PEERS (peer exchange, have summaries).
    pub peers_sent: u64,
}

/// Most bytes one GSO send of repair fragments carries (the kernel's limit is 64 KiB).
const GSO_BYTES: usize = 60_000;

/// A chunk's repair fragments depend on its sealing and on the fragment size.
type RepairKey = (ExposureId, Object, u32, Cipher, u16);

/// Public facts about an exposure, for printing URLs.
#[derive(Debug, Clone)]
pub struct ExposureInfo {
    pub id: ExposureId,
    pub name: String,
    pub size: u64,
    pub root: Hash,
}

struct Exposure {
    info: ExposureInfo,
    source: Arc<dyn ChunkSource>,
    content_key: [u8; 32],
    /// The content key under each cipher, in [`Cipher::ALL`]'s order.
    ciphers: [ContentCipher; 2],
    /// Outboard bytes (chunk CVs), sealed lazily like content (empty for a live
    /// exposure's checkpoint, whose CVs the spool holds).
    outboard: Vec<u8>,
    /// A live exposure's checkpoint (or its final one): its spool serves the
    /// outboard, and says where its window starts.
    spooled: Option<(Arc<crate::live::Spool>, crate::live::Checkpoint)>,
    chunk_count: u64,
    /// Content sealed ahead of time (filled in the background), when the driver asked
    /// for it, and the threads filling it (stopped when the exposure goes).
    sealed: Option<Arc<SealedStore>>,
    _sealer: Option<Sealer>,
    /// The source failed a read (the file shrank or became unreadable): the exposure
    /// can no longer be served as offered, and pullers are told so.
    gone: bool,
    /// A sharer's relay of another exposer's exposure (`add_relayed_exposure`): its
    /// PEERS carry a have summary.
    relayed: bool,
}

impl Exposure {
    /// An exposure served from `source` (nothing sealed ahead yet): its outboard is
    /// `outboard`, or the spool's for a live checkpoint.
    fn new(
        info: ExposureInfo,
        source: Arc<dyn ChunkSource>,
        (content_key, ciphers): ([u8; 32], [ContentCipher; 2]),
        outboard: Vec<u8>,
        spooled: Option<(Arc<crate::live::Spool>, crate::live::Checkpoint)>,
        relayed: bool,
    ) -> Self {
        let chunk_count = merkle::chunk_count(info.size);
        Self {
            info,
            source,
            ciphers,
            content_key,
            outboard,
            chunk_count,
            spooled,
            sealed: None,
            _sealer: None,
            gone: false,
            relayed,
        }
    }

    fn cipher(&self, c: Cipher) -> &ContentCipher {
        let i = Cipher::ALL.iter().position(|x| *x == c).unwrap_or(0);
        &self.ciphers[i]
    }
    fn object_len(&self, object: Object) -> u64 {
        match object {
            Object::Content => self.info.size,
            Object::Outboard => match &self.spooled {
                Some((_, c)) => c.outboard_len(),
                None => self.outboard.len() as u64,
            },
        }
    }
    fn object_chunks(&self, object: Object) -> u64 {
        match object {
            Object::Content => self.chunk_count,
            Object::Outboard => merkle::chunk_count(self.object_len(Object::Outboard)),
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    /// Bytes sent to this source since it last went quiet, and since when (the access
    /// log's "served" line, [`Exposer::log_quiet_sources`]).
    served: u64,
    served_since: Instant,
}

/// A source that has asked for nothing this long gets its "served" access-log line.
pub const QUIET_AFTER: Duration = Duration::from_secs(5);

/// The `tracing` target of the access log: one line per handshake ("opened") and one
/// per source going quiet after being sent data ("served").
pub const ACCESS_LOG: &str = "rgtp::access";

/// The `tracing` target of an exposure's set-up lines (hashed or remembered root,
/// sealing ahead and its end), which operators see by default.
pub const SETUP_LOG: &str = "rgtp::setup";

/// Bound on the per-source rate table; beyond it the table is cleared (a burst of
/// sources then starts with full buckets, which only costs precision, never safety,
/// since every source is address-validated before it gets bulk data).
const MAX_BUCKETS: usize = 65_536;

pub struct Exposer {
    config: ExposerConfig,
    static_private: [u8; 32],
    token_key: TokenKey,
    epoch: Instant,
    /// Where every random draw comes from (ids, keys, token nonces, Noise ephemerals).
    rng: Rng,
    /// Ordered, so that listing exposures does not depend on a hasher's seed.
    exposures: BTreeMap<ExposureId, Exposure>,
    /// Looked up only, never iterated: a hash map is fine.
    by_name: HashMap<String, ExposureId>,
    cache: CipherCache,
    /// Repair fragments of sealed chunks, by chunk, cipher and datagram size (the
    /// fragment geometry). Computed on the first request that asks for them, from the
    /// sealed bytes, and shared by every puller of that geometry.
    repair: CipherCache<RepairKey>,
    codec: fec::Codec,
    transmits: VecDeque<Transmit>,
    /// Keyed by addresses others choose: a hash map with a random key (HashDoS), never
    /// iterated, so its order cannot change what is sent.
    buckets: HashMap<IpAddr, Bucket>,
    handshake_rate: HandshakeRate,
    replay: ReplayFilter,
    /// What was just sent to the multicast group (one send serves every member).
    just_sent: crate::multicast::JustSent,
    scratch: Vec<u8>,
    /// When the access log last looked for quiet sources.
    last_quiet_scan: Instant,
    /// Who shares which exposure (peer exchange), bounded per exposure.
    sharers: crate::pex::Sharers,
    /// Live exposures by name, and the checkpoints exposed for them (oldest first).
    lives: HashMap<String, crate::live::LiveState>,
    checkpoints: VecDeque<(String, ExposureId)>,
    pub stats: ExposerStats,
}

impl Exposer {
    /// An exposer drawing its randomness from the OS CSPRNG.
    pub fn new(config: ExposerConfig, static_private: [u8; 32], now: Instant) -> Self {
        Self::with_rng(config, static_private, now, Rng::os())
    }

    /// An exposer drawing all its randomness from `rng`: [`Rng::os`] for real use,
    /// [`Rng::seeded_for_simulation`] so that a simulated run reproduces from its seed.
    pub fn with_rng(
        config: ExposerConfig,
        static_private: [u8; 32],
        now: Instant,
        mut rng: Rng,
    ) -> Self {
        let cache = CipherCache::new(config.cache_bytes);
        let repair = CipherCache::new(config.cache_bytes / 2);
        let just_sent = crate::multicast::JustSent::new(config.group_window);
        Self {
            config,
            static_private,
            token_key: TokenKey::random(&mut rng),
            replay: ReplayFilter::new(&mut rng),
            just_sent,
            rng,
            epoch: now,
            exposures: BTreeMap::new(),
            by_name: HashMap::new(),
            cache,
            repair,
            codec: fec::Codec::new(),
            transmits: VecDeque::new(),
            buckets: HashMap::new(),
            handshake_rate: HandshakeRate::new(now),
            scratch: Vec::with_capacity(CHUNK_SIZE + 16),
            last_quiet_scan: now,
            sharers: crate::pex::Sharers::default(),
            lives: HashMap::new(),
            checkpoints: VecDeque::new(),
            stats: ExposerStats::default(),
        }
    }

    /// Publishes `source` under `name`. `cvs` are its chunk CVs (`merkle::cvs_of_*`).
    /// A new random exposure id is drawn each time, so restarts never reuse one.
    pub fn add_exposure(
        &mut self,
        name: &str,
        source: Box<dyn ChunkSource>,
        cvs: Vec<Hash>,
    ) -> ExposureInfo {
        let id: ExposureId = self.rng.bytes();
        let content_key: [u8; 32] = self.rng.bytes();
        self.insert_exposure(name, source, cvs, id, content_key, false)
    }

    /// Publishes, under `name`, a relay of another exposer's exposure (a sharer):
    /// the exposure id `id` and content key `content_key` are the origin's, learned
    /// in an authenticated session with it, so a chunk sealed here is byte-identical
    /// to the origin's sealing of it (sealing is deterministic given key, id, cipher,
    /// object and index) and pullers may take chunks from both alike. `source` is
    /// usually partial ([`crate::source::PartialSource`]): a request for a chunk it
    /// does not hold is answered with MISSING.
    pub fn add_relayed_exposure(
        &mut self,
        name: &str,
        source: Box<dyn ChunkSource>,
        cvs: Vec<Hash>,
        id: ExposureId,
        content_key: [u8; 32],
    ) -> ExposureInfo {
        self.insert_exposure(name, source, cvs, id, content_key, true)
    }

    fn insert_exposure(
        &mut self,
        name: &str,
        source: Box<dyn ChunkSource>,
        cvs: Vec<Hash>,
        id: ExposureId,
        content_key: [u8; 32],
        relayed: bool,
    ) -> ExposureInfo {
        self.lives.remove(name);
        let info = self.insert_entry(name, source, cvs, id, content_key, relayed);
        if let Some(old) = self.by_name.insert(name.to_string(), id) {
            if old != id {
                self.exposures.remove(&old);
                self.sharers.retain(|e| *e != old);
            }
        }
        info
    }

    /// Publishes `spool` under `name` as a live exposure: each HELLO gets a
    /// checkpoint of the bytes so far ([`crate::live`]). [`Exposer::finish_live`]
    /// makes it an ordinary exposure once the spool has ended.
    pub fn add_live(&mut self, name: &str, spool: Arc<crate::live::Spool>) {
        if let Some(old) = self.by_name.remove(name) {
            self.exposures.remove(&old);
        }
        let content_key: [u8; 32] = self.rng.bytes();
        self.lives.insert(
            name.to_string(),
            crate::live::LiveState::new(spool, content_key),
        );
    }

    /// The live exposure `name` has ended: from now on it is an ordinary exposure of
    /// every byte of its spool (root = `b3sum` of them), and its manifest is the
    /// final checkpoint. Checkpoints still being pulled stay served.
    pub fn finish_live(&mut self, name: &str) -> Option<ExposureInfo> {
        let spool = self.lives.get(name)?.spool.clone();
        spool.end();
        let id: ExposureId = self.rng.bytes();
        let content_key: [u8; 32] = self.rng.bytes();
        let info = self.insert_checkpoint(name, spool, id, content_key, false);
        self.lives.remove(name);
        if let Some(old) = self.by_name.insert(name.to_string(), id) {
            self.exposures.remove(&old);
        }
        Some(info)
    }

    /// The exposure id of the current checkpoint of live exposure `name` (exposed
    /// now if the spool grew since the last one), or `None` if `name` is not live.
    fn live_checkpoint(&mut self, now: Instant, name: &str) -> Option<ExposureId> {
        let st = self.lives.get(name)?;
        let len = st.spool.len();
        if let Some((l, id)) = st.latest {
            // A checkpoint costs 32 bytes per chunk of the stream (its outboard):
            // at most one per CHECKPOINT_INTERVAL, whatever the HELLOs.
            let recent = st.latest_at.is_some_and(|t| {
                now.saturating_duration_since(t) < crate::live::CHECKPOINT_INTERVAL
            });
            if (l == len || recent) && self.exposures.contains_key(&id) {
                return Some(id);
            }
        }
        let spool = st.spool.clone();
        let content_key = st.content_key;
        let id: ExposureId = self.rng.bytes();
        let info = self.insert_checkpoint(name, spool.clone(), id, content_key, true);
        if let Some(st) = self.lives.get_mut(name) {
            st.latest = Some((info.size, id));
            st.latest_at = Some(now);
        }
        self.checkpoints.push_back((name.to_string(), id));
        // Older checkpoints are served a while (pullers in the middle of one), then
        // dropped: their pullers get STALE and handshake for the current one.
        while self.checkpoints.len() > crate::live::MAX_CHECKPOINTS {
            if let Some((_, old)) = self.checkpoints.pop_front() {
                self.exposures.remove(&old);
            }
        }
        // With a window, a checkpoint whose start is a window behind the newest is
        // dropped too (its pullers get STALE and take the newest): the disk holds
        // about two windows however fast the stream, not 32 checkpoints' growth.
        if let Some(window) = spool.window() {
            let newest = self
                .exposures
                .get(&id)
                .and_then(|e| e.spooled.as_ref())
                .map_or(0, |(_, c)| c.start());
            let floor = newest.saturating_sub(window / CHUNK_SIZE as u64);
            let exposures = &mut self.exposures;
            self.checkpoints.retain(|(n, cid)| {
                let old = n == name
                    && exposures
                        .get(cid)
                        .and_then(|e| e.spooled.as_ref())
                        .is_some_and(|(_, c)| c.start() < floor);
                if old {
                    exposures.remove(cid);
                }
                !old
            });
        }
        // The spool frees the bytes before the oldest start still served.
        let oldest = self
            .checkpoints
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, id)| self.exposures.get(id))
            .filter_map(|e| e.spooled.as_ref().map(|(_, c)| c.start()))
            .min();
        if let Some(start) = oldest {
            spool.pin(start);
        }
        Some(id)
    }

    /// Exposes the spool's checkpoint now under `id` and `content_key`: its root and
    /// outboard come from the spool, without a CV list. A `live` checkpoint is sealed
    /// under its exposure's shared key, binding lengths ([`ContentCipher::live`]);
    /// the final one as an ordinary exposure.
    fn insert_checkpoint(
        &mut self,
        name: &str,
        spool: Arc<crate::live::Spool>,
        id: ExposureId,
        content_key: [u8; 32],
        live: bool,
    ) -> ExposureInfo {
        let c = spool.checkpoint();
        let source = crate::live::SpoolSource {
            spool: spool.clone(),
            len: c.len,
            start: c.start(),
        };
        let info = ExposureInfo {
            id,
            name: name.to_string(),
            size: c.len,
            root: c.root,
        };
        let ciphers = Cipher::ALL.map(|ci| {
            if live {
                ContentCipher::live(ci, &content_key, id, c.len)
            } else {
                ContentCipher::with(ci, &content_key, id, c.len)
            }
        });
        self.exposures.insert(
            id,
            Exposure::new(
                info.clone(),
                Arc::new(source),
                (content_key, ciphers),
                Vec::new(),
                Some((spool, c)),
                false,
            ),
        );
        info
    }

    fn insert_entry(
        &mut self,
        name: &str,
        source: Box<dyn ChunkSource>,
        cvs: Vec<Hash>,
        id: ExposureId,
        content_key: [u8; 32],
        relayed: bool,
    ) -> ExposureInfo {
        let size = source.size();
        let chunk_count = merkle::chunk_count(size);
        assert_eq!(cvs.len() as u64, chunk_count, "one CV per chunk");
        let root = merkle::root_from_cvs(&cvs, size);
        let info = ExposureInfo {
            id,
            name: name.to_string(),
            size,
            root,
        };
        let outboard: Vec<u8> = cvs.iter().flat_map(|c| c.iter().copied()).collect();
        let ciphers = Cipher::ALL.map(|c| ContentCipher::with(c, &content_key, id, size));
        self.exposures.insert(
            id,
            Exposure::new(
                info.clone(),
                Arc::from(source),
                (content_key, ciphers),
                outboard,
                None,
                relayed,
            ),
        );
        info
    }

    /// Starts sealing an exposure's content ahead, under the configured cipher, into
    /// an unnamed file in `dir` holding at most `max_bytes`, on `threads` idle-priority
    /// threads in the background: serving goes on meanwhile, sealing on demand what
    /// is not sealed yet. Returns the store (to watch its progress).
    pub fn seal_ahead(
        &mut self,
        id: &ExposureId,
        dir: &std::path::Path,
        max_bytes: u64,
        threads: usize,
    ) -> std::io::Result<Arc<SealedStore>> {
        let size = self.exposure(id)?.info.size;
        let store = Arc::new(SealedStore::create(
            dir,
            size,
            self.config.cipher,
            max_bytes,
        )?);
        self.attach_store(id, store.clone())?;
        let e = self.exposure(id)?;
        e._sealer = Some(sealed::seal_in_background(
            e.info.name.clone(),
            store.clone(),
            e.source.clone(),
            Arc::new(ContentCipher::with(
                store.cipher(),
                &e.content_key,
                e.info.id,
                e.info.size,
            )),
            threads,
        )?);
        Ok(store)
    }

    /// Serves an exposure's content from `store` as far as it is filled, sealing the
    /// rest on demand. [`Exposer::seal_ahead`] fills the store in the background; a
    /// test fills it itself.
    pub fn attach_store(
        &mut self,
        id: &ExposureId,
        store: Arc<SealedStore>,
    ) -> std::io::Result<()> {
        let e = self.exposure(id)?;
        e.sealed = Some(store);
        e._sealer = None;
        Ok(())
    }

    fn exposure(&mut self, id: &ExposureId) -> std::io::Result<&mut Exposure> {
        self.exposures
            .get_mut(id)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such exposure"))
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn has_transmits(&self) -> bool {
        !self.transmits.is_empty()
    }

    fn send(&mut self, t: Transmit) {
        queue(&mut self.transmits, &mut self.stats, Some(t));
    }

    /// Feeds one received datagram. Anything malformed or unauthenticated is dropped.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let ok = match wire::peek_type(datagram) {
            Ok(PacketType::Hello) => self.on_hello(now, from, datagram),
            Ok(PacketType::Request | PacketType::GroupRequest) => {
                self.on_request(now, from, datagram)
            }
            Ok(PacketType::Pex) => self.on_pex(now, from, datagram),
            _ => false,
        };
        if !ok {
            self.stats.dropped += 1;
        }
    }

    fn on_hello(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        let Ok(hello) = Hello::decode(datagram) else {
            return false;
        };
        let busy = self.handshake_rate.tick(now) > self.config.retry_threshold;
        // A token must be a valid RETRY cookie for this very address. Any other token
        // counts as none: a RETRY spoofed to the puller must not make every HELLO it
        // sends afterwards worthless.
        let now_ms = self.now_ms(now);
        let validated = !hello.token.is_empty()
            && retry::cookie_valid(&self.token_key, hello.token, from, now_ms, [0; 16]);
        if !validated && busy {
            let cookie = retry::seal_cookie(&self.token_key, from, now_ms, [0; 16], &mut self.rng);
            self.stats.retries_sent += 1;
            let pkt = Retry { token: &cookie }.encode();
            debug_assert!(pkt.len() < datagram.len());
            self.send(Transmit::single(from, pkt));
            return true;
        }
        let limit = if wire::is_loopback(from.ip()) {
            self.config.loopback_max_datagram
        } else {
            self.config.max_datagram
        };
        let max_datagram =
            (hello.max_datagram as usize).clamp(wire::MIN_MAX_DATAGRAM, limit) as u16;
        let Ok(offer) = handshake::offer_of(hello.noise) else {
            return false;
        };
        let live = self.live_checkpoint(now, hello.name);
        let manifest = match live
            .as_ref()
            .or_else(|| self.by_name.get(hello.name))
            .and_then(|id| self.exposures.get(id))
        {
            None => Manifest::NotFound,
            Some(e) if e.gone => Manifest::Gone,
            // A window that moved cannot be told to a puller that reads no features
            // byte: it would take the checkpoint for every byte.
            Some(e)
                if e.spooled.as_ref().is_some_and(|(_, c)| c.window.is_some())
                    && offer & (wire::OFFER_REPAIR | wire::OFFER_MULTICAST) == 0 =>
            {
                Manifest::Gone
            }
            Some(e) => {
                let request_key: [u8; 32] = self.rng.bytes();
                let cipher = Cipher::choose(self.config.cipher, offer);
                let window = e.spooled.as_ref().and_then(|(_, c)| c.window.clone());
                // The group carries one sealing and one fragment size: offered to
                // pullers whose session has both (every member opens every datagram).
                // A live checkpoint's content chunks are sealed alike in every
                // checkpoint (`ContentCipher::live`): its followers share the group
                // too. (Peer exchange stays off for live and windowed exposures: a
                // sharer's copy would be authenticated by no session.)
                let group = self.config.multicast.filter(|_| {
                    offer & wire::OFFER_MULTICAST != 0
                        && cipher == self.config.cipher
                        && max_datagram as usize == self.config.max_datagram
                });
                // Peer exchange is answered to every puller that reads the byte.
                // A window's exposure (its final checkpoint included) is pulled from
                // its exposer alone too: sharers would need its beginning.
                let mut features = if live.is_some() {
                    wire::FEATURE_LIVE
                } else if window.is_some() {
                    0
                } else {
                    wire::FEATURE_PEX
                };
                if window.is_some() {
                    features |= wire::FEATURE_WINDOW;
                }
                if offer & wire::OFFER_REPAIR != 0 {
                    features |= wire::FEATURE_REPAIR;
                }
                if group.is_some() {
                    features |= wire::FEATURE_MULTICAST;
                }
                let token = self.token_key.seal(
                    &TokenClaims {
                        session: true,
                        addr: from,
                        expires_ms: now_ms + self.config.token_lifetime.as_millis() as u64,
                        exposure: e.info.id,
                        max_datagram,
                        request_key,
                        cipher,
                    },
                    &mut self.rng,
                );
                Manifest::Found(ManifestBody {
                    exposure: e.info.id,
                    size: e.info.size,
                    chunk_size: CHUNK_SIZE as u32,
                    chunk_count: e.chunk_count,
                    root: e.info.root,
                    content_key: e.content_key,
                    max_datagram,
                    token,
                    request_key,
                    clock_ms: self.now_ms(now),
                    cipher,
                    // Said only to pullers that asked (older ones parse no such byte,
                    // and take a checkpoint for a finished file).
                    features: (offer & (wire::OFFER_REPAIR | wire::OFFER_MULTICAST) != 0)
                        .then_some(features),
                    group,
                    window,
                })
            }
        };
        let Ok(msg2) = handshake::respond_with_rng(
            &self.static_private,
            hello.name,
            hello.max_datagram,
            hello.noise,
            &manifest.encode(),
            &mut self.rng,
        ) else {
            return false;
        };
        let pkt = Welcome { noise: &msg2 }.encode();
        // Anti-amplification: never more than 3x what this unvalidated address sent.
        if pkt.len() > 3 * datagram.len() {
            return false;
        }
        self.stats.handshakes += 1;
        self.send(Transmit::single(from, pkt));
        match live
            .as_ref()
            .or_else(|| self.by_name.get(hello.name))
            .and_then(|id| self.exposures.get(id))
        {
            // A live exposure's followers handshake for every checkpoint: not logged
            // at the default level.
            Some(e) if live.is_some() => tracing::debug!(
                target: ACCESS_LOG,
                peer = %from,
                name = ?e.info.name,
                size = e.info.size,
                "checkpoint"
            ),
            Some(e) if !e.gone => tracing::info!(
                target: ACCESS_LOG,
                peer = %from,
                name = ?e.info.name,
                size = e.info.size,
                "opened"
            ),
            Some(_) => {
                tracing::info!(target: ACCESS_LOG, peer = %from, name = ?hello.name, "withdrawn")
            }
            None => {
                tracing::info!(target: ACCESS_LOG, peer = %from, name = ?hello.name, "not found")
            }
        }
        true
    }

    /// Access log: one "served" line for each source that was sent data and has asked
    /// for nothing for [`QUIET_AFTER`] (a pull finished, paused or gave up), with the
    /// bytes sent to it since it last went quiet. Cheap to call often: it scans the
    /// per-source table at most once a second. `flush` reports every source at once
    /// (at exit).
    pub fn log_quiet_sources(&mut self, now: Instant, flush: bool) {
        if !flush && now.saturating_duration_since(self.last_quiet_scan) < Duration::from_secs(1) {
            return;
        }
        self.last_quiet_scan = now;
        for (ip, b) in self.buckets.iter_mut() {
            if b.served > 0 && (flush || now.saturating_duration_since(b.last) >= QUIET_AFTER) {
                tracing::info!(
                    target: ACCESS_LOG,
                    peer = %ip,
                    bytes = b.served,
                    seconds = format_args!(
                        "{:.1}",
                        b.last.saturating_duration_since(b.served_since).as_secs_f64()
                    ),
                    "served"
                );
                b.served = 0;
            }
        }
    }

    fn on_request(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        let Ok((req, header_len)) = Request::decode(datagram) else {
            return false;
        };
        let claims = self.token_key.open(req.token);
        let valid = match (&claims, self.exposures.get(&req.exposure)) {
            // A gone exposure sends its pullers back to the handshake, which says so.
            (Some(c), Some(e)) if !e.gone => {
                c.session
                    && c.exposure == req.exposure
                    && same_addr(&c.addr, &from)
                    && c.expires_ms >= self.now_ms(now)
            }
            _ => false,
        };
        let Some(claims) = claims.filter(|_| valid) else {
            // Unknown exposure (e.g. we restarted), expired token or new address: tell
            // the puller to handshake again. STALE is smaller than any REQUEST.
            let pkt = Stale {
                exposure: req.exposure,
            }
            .encode();
            debug_assert!(pkt.len() < datagram.len());
            self.stats.stale_sent += 1;
            self.send(Transmit::single(from, pkt));
            return true;
        };
        let sealer = RequestSealer::new(&claims.request_key);
        let Some(plain) = sealer.open(req.seq, &datagram[..header_len], req.sealed) else {
            return false;
        };
        let Ok(items) = wire::decode_items(&plain) else {
            return false;
        };
        // Served once only: a captured REQUEST replayed from the puller's address must
        // not aim bulk data at it again.
        match self.replay.check(self.now_ms(now), req.stamp_ms, req.tag()) {
            Verdict::Fresh => {}
            Verdict::Replay => {
                self.stats.replays += 1;
                return true;
            }
            Verdict::Stale => {
                // Too old to check (or a puller whose clock ran off): STALE, smaller
                // than the REQUEST, has a real puller handshake again and re-learn
                // the clock.
                self.stats.stale_stamps += 1;
                self.stats.stale_sent += 1;
                let pkt = Stale {
                    exposure: req.exposure,
                }
                .encode();
                self.send(Transmit::single(from, pkt));
                return true;
            }
        }
        let granted = self.take_budget(now, from.ip());
        let mut budget = granted;
        let max_datagram = claims.max_datagram as usize;
        // A member's data goes to the group, once for all members (the session must
        // have the group's sealing and fragment size, as the manifest offered it).
        let group = self.config.multicast.filter(|_| {
            req.member
                && claims.cipher == self.config.cipher
                && max_datagram == self.config.max_datagram
        });
        if group.is_some() {
            self.stats.group_requests += 1;
        }
        // Chunks a sharer lacks, answered in one MISSING no larger than the request.
        let mut missing = MissingRuns::new(datagram.len());
        for item in items {
            let (object, start, count, mask, repair) = match item {
                RequestItem::Range {
                    object,
                    start,
                    count,
                } => (object, start as u64, count as u64, u64::MAX, (0, 0)),
                RequestItem::Fragments {
                    object,
                    chunk,
                    mask,
                } => (object, chunk as u64, 1, mask, (0, 0)),
                RequestItem::RangeRepair {
                    object,
                    start,
                    count,
                    repair,
                } => (object, start as u64, count as u64, u64::MAX, (0, repair)),
                RequestItem::Repair {
                    object,
                    chunk,
                    first,
                    count,
                } => (object, chunk as u64, 1, 0, (first, count)),
            };
            for index in start..start.saturating_add(count) {
                if object == Object::Content && missing.checked < MAX_MISSING_CHECKS {
                    match self.exposures.get(&req.exposure) {
                        Some(e) if index < e.chunk_count && !e.source.has(index) => {
                            missing.checked += 1;
                            missing.add(index);
                            continue;
                        }
                        _ => {}
                    }
                } else if object == Object::Content {
                    // Enough looked at for one request (a run of chunks not held
                    // costs no budget, so it is bounded here instead).
                    break;
                }
                if budget == 0 {
                    self.stats.rate_limited += 1;
                    self.return_budget(from.ip(), granted, 0);
                    self.send_missing(from, req.exposure, missing);
                    return true;
                }
                let (dest, mask, repair, wire_id) = match group {
                    Some(g) => {
                        let Some(e) = self.exposures.get(&req.exposure) else {
                            break;
                        };
                        if index >= e.object_chunks(object) {
                            break;
                        }
                        let len = merkle::chunk_len(index, e.object_len(object));
                        // A live checkpoint's content goes to the group under the id
                        // of its length, the same in every checkpoint (one send serves
                        // followers of all); its outboard under the id of the
                        // checkpoint's length (followers of the same checkpoint).
                        let live = e.spooled.as_ref().is_some_and(|(_, c)| !c.ended);
                        let wire_id = match (live, object) {
                            (false, _) => req.exposure,
                            (true, Object::Content) => {
                                crate::crypto::live_group_id(&e.content_key, len)
                            }
                            (true, Object::Outboard) => {
                                crate::crypto::live_outboard_group_id(&e.content_key, e.info.size)
                            }
                        };
                        let frags = wire::fragmentation(len + TAG_LEN, max_datagram).0;
                        let key = (wire_id, object, index as u32);
                        let (m, r) = self.just_sent.filter(now, key, frags, mask, repair);
                        (SocketAddr::V4(g), m, r, wire_id)
                    }
                    None => (from, mask, repair, req.exposure),
                };
                let to_group = dest != from;
                let sent = self.send_chunk(
                    (&req.exposure, &wire_id),
                    (object, index),
                    mask,
                    repair,
                    (max_datagram, claims.cipher),
                    dest,
                );
                if let (true, Some(n)) = (to_group, sent) {
                    self.stats.group_bytes_out += n as u64;
                }
                match sent {
                    Some(n) => budget = budget.saturating_sub(n),
                    None if self.exposures.get(&req.exposure).is_some_and(|e| e.gone) => {
                        let pkt = Stale {
                            exposure: req.exposure,
                        }
                        .encode();
                        self.stats.stale_sent += 1;
                        self.send(Transmit::single(from, pkt));
                        self.return_budget(from.ip(), granted, budget);
                        return true;
                    }
                    None => break,
                }
            }
        }
        self.return_budget(from.ip(), granted, budget);
        self.send_missing(from, req.exposure, missing);
        true
    }

    /// A PEX (peer exchange, `pex.rs`): served like a REQUEST (a valid session token
    /// for this address, a body that opens, fresh), it records the asker as a sharer
    /// of the exposure when it names a port, and is answered with PEERS: the other
    /// current sharers and, from a sharer, which chunks it holds. The answer is never
    /// larger than the PEX (an authenticated, padded datagram from a validated
    /// address): no amplification.
    fn on_pex(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        let Ok((pex, header_len)) = crate::pex::Pex::decode(datagram) else {
            return false;
        };
        let now_ms = self.now_ms(now);
        let Some(claims) = self.token_key.open(pex.token).filter(|c| {
            c.session
                && c.exposure == pex.exposure
                && same_addr(&c.addr, &from)
                && c.expires_ms >= now_ms
                && self.exposures.get(&pex.exposure).is_some_and(|e| !e.gone)
        }) else {
            // Not answered (the puller's REQUESTs get the STALE that matters).
            return false;
        };
        let sealer = RequestSealer::new(&claims.request_key);
        let Some(plain) = sealer.open(pex.seq, &datagram[..header_len], pex.sealed) else {
            return false;
        };
        let Ok(body) = crate::pex::PexBody::decode(&plain) else {
            return false;
        };
        match self.replay.check(now_ms, pex.stamp_ms, pex.tag()) {
            Verdict::Fresh => {}
            Verdict::Replay => {
                self.stats.replays += 1;
                return true;
            }
            Verdict::Stale => {
                self.stats.stale_stamps += 1;
                return true;
            }
        }
        self.sharers.note(pex.exposure, from, body.share_port, now);
        let room = crate::pex::body_room(datagram.len());
        let Some(e) = self.exposures.get(&pex.exposure) else {
            return false;
        };
        let mut peers = self.sharers.list(
            &pex.exposure,
            from,
            body.share_port,
            now,
            crate::pex::MAX_PEERS_SENT,
        );
        peers.truncate(room.saturating_sub(1 + 9) / 18);
        let have = if e.relayed {
            let source = e.source.clone();
            crate::pex::Have::summarise(
                body.have_from,
                e.chunk_count,
                room.saturating_sub(crate::pex::peers_len(peers.len())),
                |i| source.has(i),
                |i| source.fetching(i),
            )
        } else {
            crate::pex::Have::All
        };
        let pkt = crate::pex::seal_peers(
            &claims.request_key,
            &pex.exposure,
            &crate::pex::PeersBody { peers, have },
            &mut self.rng,
        );
        // Never more than the PEX that asked.
        if pkt.is_empty() || pkt.len() > datagram.len() {
            return true;
        }
        self.stats.peers_sent += 1;
        self.send(Transmit::single(from, pkt));
        true
    }

    /// Answers the chunks of a request this (sharing) exposure does not hold.
    fn send_missing(&mut self, to: SocketAddr, exposure: ExposureId, m: MissingRuns) {
        if m.runs.is_empty() {
            return;
        }
        self.stats.missing_sent += 1;
        self.stats.missing_chunks += m.checked;
        let pkt = Missing {
            exposure,
            runs: m.runs,
        }
        .encode();
        // Never more than the request: no amplification, whoever asked.
        if pkt.len() <= m.limit_len {
            self.send(Transmit::single(to, pkt));
        }
    }

    /// Gives back what a request was granted and did not use: a source is charged for
    /// the bytes sent, not for the per-request cap (else many small requests from one
    /// address, e.g. many pullers behind one NAT, would drain its bucket with nothing
    /// sent, and their requests would be cut short). What was used counts toward the
    /// source's access-log total.
    fn return_budget(&mut self, ip: IpAddr, granted: usize, unused: usize) {
        if let Some(b) = self.buckets.get_mut(&ip) {
            let burst = (self.config.source_rate as f64).max(self.config.max_request_bytes as f64);
            b.tokens = (b.tokens + unused as f64).min(burst);
            b.served += granted.saturating_sub(unused) as u64;
        }
    }

    /// Bytes this source may receive for one request: the per-request cap and the
    /// source's token bucket.
    fn take_budget(&mut self, now: Instant, ip: IpAddr) -> usize {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&ip) {
            self.buckets.clear();
        }
        let rate = self.config.source_rate as f64;
        let cap = self.config.max_request_bytes as f64;
        // Burst allowance: one second of rate, at least one full request.
        let burst = rate.max(cap);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
            served: 0,
            served_since: now,
        });
        if b.served == 0 {
            b.served_since = now;
        }
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + dt * rate).min(burst);
        let grant = b.tokens.min(cap);
        b.tokens -= grant;
        grant as usize
    }

    /// Sends the fragments of one chunk selected by `mask`, then its repair fragments
    /// `first .. first + count` (`repair`). Returns the bytes queued, or `None` if the
    /// chunk does not exist.
    /// Sends fragments (`mask`) and repair fragments of a chunk of exposure `id` to
    /// `dest`, their headers naming `wire_id` (the exposure, or a live exposure's
    /// group id).
    fn send_chunk(
        &mut self,
        (id, wire_id): (&ExposureId, &ExposureId),
        (object, index): (Object, u64),
        mask: u64,
        (first, count): (u8, u8),
        (max_datagram, cipher): (usize, Cipher),
        dest: SocketAddr,
    ) -> Option<usize> {
        let e = self.exposures.get(id)?;
        if index >= e.object_chunks(object) {
            return None;
        }
        // Only fragments the chunk has: a mask naming none of them must not cost a
        // read and a seal that no byte sent (and so no budget) pays for.
        let ct_len = merkle::chunk_len(index, e.object_len(object)) + TAG_LEN;
        let (frags, per) = wire::fragmentation(ct_len, max_datagram);
        let mask = mask & (u64::MAX >> 64u32.saturating_sub(frags as u32));
        // Repair indices past 64 are refused by the decoder; clamp anyway.
        let count = count.min((fec::MAX_REPAIR as u8).saturating_sub(first));
        if mask == 0 && count == 0 {
            return Some(0);
        }
        let (data, start, len) = self.sealed_chunk(id, object, index, cipher)?;
        let mut sent = 0;
        if mask != 0 {
            let t = fragments(
                wire_id,
                (object, index),
                mask,
                max_datagram,
                dest,
                data.clone(),
                start,
                len,
            );
            sent += queue(&mut self.transmits, &mut self.stats, t);
        }
        if count > 0 {
            let want = first as usize + count as usize;
            let key = (*id, object, index as u32, cipher, max_datagram as u16);
            let s = fec::shard_len(len, per);
            let rep = match self.repair.get(key) {
                Some(r) if r.len() >= want * s => r,
                _ => {
                    // Rows do not depend on how many are computed: compute a few more
                    // than asked, so the next request for this chunk finds them.
                    let r = want.next_multiple_of(8).min(fec::MAX_REPAIR);
                    let ct = &data.bytes()[start..start + len];
                    let rep = Arc::new(self.codec.encode(ct, per, r)?);
                    self.stats.repair_encodes += 1;
                    self.repair.insert(key, rep.clone());
                    rep
                }
            };
            // One GSO send carries at most 64 KiB: a few datagrams per transmit.
            let per_send = (GSO_BYTES / (DATA_HEADER_LEN + s)).clamp(1, 64) as u8;
            let mut i = first;
            while i < first + count {
                let n = per_send.min(first + count - i);
                let t = repair_fragments(wire_id, (object, index), (i, n), s, dest, rep.clone());
                sent += queue(&mut self.transmits, &mut self.stats, t);
                i += n;
            }
            self.stats.repair_fragments_out += count as u64;
        }
        Some(sent)
    }

    /// The sealed bytes of a chunk: `(bytes, start, len)`, from the sealed-ahead store
    /// or the cache, or sealed now (and cached). `None` when the source failed a read
    /// (the exposure is then gone).
    fn sealed_chunk(
        &mut self,
        id: &ExposureId,
        object: Object,
        index: u64,
        cipher: Cipher,
    ) -> Option<(Arc<dyn SharedBytes>, usize, usize)> {
        let e = self.exposures.get(id)?;
        let key = (*id, object, index as u32, cipher);
        let stored = match (&e.sealed, object) {
            (Some(store), Object::Content) if store.cipher() == cipher => {
                store.chunk_range(index).map(|r| (store, r))
            }
            _ => None,
        };
        if let Some((store, (start, len))) = stored {
            self.stats.sealed_reads += 1;
            let data: Arc<dyn SharedBytes> = store.clone();
            return Some((data, start, len));
        }
        let ct = match self.cache.get(key) {
            Some(ct) => {
                self.stats.cache_hits += 1;
                ct
            }
            None => {
                let mut buf = std::mem::take(&mut self.scratch);
                match object {
                    Object::Content => {
                        if let Err(err) = e.source.read_chunk(index, &mut buf) {
                            tracing::error!(
                                "{}: reading chunk {index} failed ({err}); the file changed \
                                 under the exposure, which is withdrawn",
                                e.info.name
                            );
                            self.scratch = buf;
                            if let Some(e) = self.exposures.get_mut(id) {
                                e.gone = true;
                            }
                            return None;
                        }
                    }
                    Object::Outboard => match &e.spooled {
                        Some((spool, c)) => {
                            // CVs before the window are no longer held: not an
                            // exposure gone, only a request no follower makes.
                            if spool.read_outboard(c, index, &mut buf).is_err() {
                                self.scratch = buf;
                                return None;
                            }
                        }
                        None => {
                            let start = index as usize * CHUNK_SIZE;
                            let len = merkle::chunk_len(index, e.object_len(object));
                            buf.clear();
                            buf.extend_from_slice(&e.outboard[start..start + len]);
                        }
                    },
                }
                e.cipher(cipher).seal(object, index, &mut buf);
                self.stats.encryptions += 1;
                let ct = Arc::new(buf.clone());
                self.scratch = buf;
                self.cache.insert(key, ct.clone());
                ct
            }
        };
        let len = ct.len();
        Some((ct, 0, len))
    }

    /// Fragments a member asked for that the group had been sent within the window
    /// (served by that one send).
    pub fn group_suppressed(&self) -> u64 {
        self.just_sent.suppressed
    }

    /// Sharers remembered for peer exchange, over every exposure (bounded by
    /// [`crate::pex::MAX_SHARERS`] per exposure).
    pub fn sharers_known(&self) -> usize {
        self.sharers.len()
    }

    pub fn exposures(&self) -> impl Iterator<Item = &ExposureInfo> {
        self.exposures.values().map(|e| &e.info)
    }
}

/// Most chunks not held that one request has looked up.
const MAX_MISSING_CHECKS: u64 = 4096;

/// The runs of one MISSING answer, within the request's size.
struct MissingRuns {
    runs: Vec<(u32, u32)>,
    /// Chunks found not held.
    checked: u64,
    /// Most runs that keep the answer no larger than the request.
    max_runs: usize,
    limit_len: usize,
}

impl MissingRuns {
    fn new(request_len: usize) -> Self {
        let max_runs =
            (request_len.saturating_sub(Missing::encoded_len(0)) / 8).min(wire::MAX_MISSING_RUNS);
        Self {
            runs: Vec::new(),
            checked: 0,
            max_runs,
            limit_len: request_len,
        }
    }
    fn add(&mut self, index: u64) {
        let Ok(i) = u32::try_from(index) else {
            return;
        };
        if let Some((start, count)) = self.runs.last_mut() {
            if start.checked_add(*count) == Some(i) {
                *count += 1;
                return;
            }
        }
        // Past the room: those chunks go unanswered (the puller's loss recovery asks
        // again, and gets the next MISSING).
        if self.runs.len() < self.max_runs {
            self.runs.push((i, 1));
        }
    }
}

/// Queues a transmit (if any) and counts it; returns its bytes.
fn queue(out: &mut VecDeque<Transmit>, stats: &mut ExposerStats, t: Option<Transmit>) -> usize {
    let Some(t) = t else { return 0 };
    let n = t.len();
    stats.datagrams_out += t.count() as u64;
    stats.bytes_out += n as u64;
    out.push_back(t);
    n
}

/// The fragments selected by `mask` of the sealed chunk at `start..start + ct_len` of
/// `data`, as one GSO-shaped transmit that points into `data` (no copy of the payload).
#[allow(clippy::too_many_arguments)]
fn fragments(
    id: &ExposureId,
    (object, index): (Object, u64),
    mask: u64,
    max_datagram: usize,
    dest: SocketAddr,
    data: Arc<dyn SharedBytes>,
    start: usize,
    ct_len: usize,
) -> Option<Transmit> {
    let (frags, per) = wire::fragmentation(ct_len, max_datagram);
    let mut headers = Vec::with_capacity(frags * DATA_HEADER_LEN);
    let mut slices = Vec::with_capacity(frags);
    for f in 0..frags {
        if mask & (1u64 << f) == 0 {
            continue;
        }
        let off = f * per;
        let at = headers.len();
        headers.resize(at + DATA_HEADER_LEN, 0);
        Data::write_header(&mut headers[at..], id, object, index as u32, f as u8);
        slices.push((start + off, per.min(ct_len - off)));
    }
    (!slices.is_empty()).then_some(Transmit {
        dest,
        segment_size: DATA_HEADER_LEN + per,
        contents: headers,
        gather: Some(Gather {
            data,
            header_len: DATA_HEADER_LEN,
            slices,
        }),
    })
}

/// Repair fragments `first .. first + count` (each `shard` bytes, in `rep`) of a chunk,
/// as one GSO-shaped transmit pointing into `rep`.
fn repair_fragments(
    id: &ExposureId,
    (object, index): (Object, u64),
    (first, count): (u8, u8),
    shard: usize,
    dest: SocketAddr,
    rep: Arc<Vec<u8>>,
) -> Option<Transmit> {
    let mut headers = Vec::with_capacity(count as usize * DATA_HEADER_LEN);
    let mut slices = Vec::with_capacity(count as usize);
    for i in first..first.saturating_add(count) {
        let off = i as usize * shard;
        if off + shard > rep.len() {
            break;
        }
        let at = headers.len();
        headers.resize(at + DATA_HEADER_LEN, 0);
        Data::write_header(
            &mut headers[at..],
            id,
            object,
            index as u32,
            fec::REPAIR_BASE + i,
        );
        slices.push((off, shard));
    }
    let data: Arc<dyn SharedBytes> = rep;
    (!slices.is_empty()).then_some(Transmit {
        dest,
        segment_size: DATA_HEADER_LEN + shard,
        contents: headers,
        gather: Some(Gather {
            data,
            header_len: DATA_HEADER_LEN,
            slices,
        }),
    })
}

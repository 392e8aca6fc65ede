//! The puller: a sans-IO state machine that handshakes, fetches the outboard, then
//! requests exactly the chunks it lacks, verifies each against the root and hands
//! verified plaintext to its driver.
//!
//! Loss recovery is receiver-driven: every requested chunk has a deadline derived from
//! the RTT; what has not arrived by then is requested again (only the missing
//! fragments). The exposer keeps no timers.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::bitset::ChunkSet;
use crate::cc::RateControl;
use crate::crypto::{Cipher, CipherSet, ContentCipher, RequestSealer, TAG_LEN};
use crate::fec::{self, FecMode};
use crate::handshake::Initiator;
use crate::merkle::{self, Hash, CHUNK_SIZE};
use crate::rng::Rng;
use crate::transmit::Transmit;
use crate::wire::{
    self, Data, ExposureId, Hello, Manifest, ManifestBody, Missing, Object, PacketType, Request,
    RequestItem, Retry, Stale, Welcome,
};

#[derive(Debug, Clone)]
pub struct PullConfig {
    pub remote: SocketAddr,
    pub name: String,
    /// Largest datagram we ask an exposer on another host to send.
    pub max_datagram: u16,
    /// Largest datagram we ask an exposer on this host (loopback) to send.
    pub loopback_max_datagram: u16,
    /// The exposer static key we require (from a URL or the known-exposers file).
    pub pinned_key: Option<[u8; 32]>,
    /// The root we require (from a URL).
    pub expected_root: Option<Hash>,
    /// Chunks already verified by an earlier run.
    pub resume: Option<ResumeState>,
    /// Give up after this long without hearing from the exposer, once it has answered.
    pub idle_timeout: Duration,
    /// Give up after this long when the exposer has never answered at all (nothing
    /// listens, or the address is wrong): a peer that never spoke is not waited for as
    /// patiently as one that went quiet mid-pull. Capped by `idle_timeout`.
    pub connect_timeout: Duration,
    /// Hand content chunks to the driver for decryption and verification
    /// ([`PullEvent::Verify`]) so it can run them on another core; it reports back
    /// with [`Puller::chunk_verified`].
    pub offload_verify: bool,
    /// The chunk ciphers offered in the handshake (the exposer picks one; default
    /// [`Cipher::default_offer`]). ChaCha20-Poly1305 is always added.
    pub ciphers: CipherSet,
    /// Repair fragments: off, in proportion to the measured loss (default), or a
    /// fixed ratio.
    pub fec: FecMode,
    /// One source of a multi-source pull ([`crate::swarm::Swarm`]): content chunks
    /// are asked for only once granted ([`Puller::grant`]), chunks other sources
    /// delivered are marked ([`Puller::mark_have`]), and a chunk that fails
    /// verification fails this source ([`PullError::BadSource`]) instead of being
    /// asked for again and again.
    pub scheduled: bool,
    /// Join the exposure's multicast group when its exposer has one (IPv4; the
    /// driver joins it, [`Puller::group`]).
    pub multicast: bool,
    /// With `scheduled` (peer exchange on a pull from one exposer): a group, if the
    /// exposer offers one, wins over the schedule; joining it ends `scheduled`, and
    /// the swarm then drops peer exchange (the group already serves the LAN once).
    pub group_first: bool,
    /// One round of a live pull ([`crate::live`]): what is held already. The
    /// exposure must be live or its final checkpoint; its chunks held are not asked
    /// for, its outboard must repeat their CVs, and a session that comes back with
    /// another checkpoint ends the round ([`PullError::CheckpointMoved`]). Without
    /// it, a live manifest fails the pull with [`PullError::IsLive`].
    pub live: Option<crate::live::LiveBase>,
}

impl PullConfig {
    /// The datagram size to ask for on the path to `remote`.
    pub fn asked_datagram(&self) -> u16 {
        if wire::is_loopback(self.remote.ip()) {
            self.loopback_max_datagram
        } else {
            self.max_datagram
        }
    }

    pub fn new(remote: SocketAddr, name: &str) -> Self {
        Self {
            remote,
            name: name.to_string(),
            max_datagram: wire::DEFAULT_MAX_DATAGRAM as u16,
            loopback_max_datagram: wire::LOOPBACK_MAX_DATAGRAM as u16,
            pinned_key: None,
            expected_root: None,
            resume: None,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            offload_verify: false,
            ciphers: Cipher::default_offer(),
            fec: FecMode::Auto,
            scheduled: false,
            multicast: true,
            group_first: false,
            live: None,
        }
    }

    /// What the handshake offers: the configured set, with ChaCha20-Poly1305.
    pub fn offer(&self) -> CipherSet {
        // The repair bit always: it asks for the manifest's features byte, which also
        // says whether the exposure is live; repair is asked for only with `fec` on.
        let repair = wire::OFFER_REPAIR;
        let multicast = if self.multicast {
            wire::OFFER_MULTICAST
        } else {
            0
        };
        self.ciphers | Cipher::ChaCha20Poly1305.bit() | repair | multicast
    }
}

/// Everything needed to check a content chunk away from the state machine: decrypt
/// it, then compare its BLAKE3 chaining value with the outboard (or the root).
pub struct ChunkVerifier {
    cipher: ContentCipher,
    cvs: std::sync::Arc<Vec<Hash>>,
    /// The chunk whose CV is `cvs[0]` (past 0 in a live round).
    cv_first: u64,
    root: Hash,
    size: u64,
}

impl std::fmt::Debug for ChunkVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkVerifier({} bytes)", self.size)
    }
}

impl ChunkVerifier {
    /// Whether `plain` is chunk `index` of the content.
    pub fn check_plain(&self, index: u64, plain: &[u8]) -> bool {
        let expected = if merkle::chunk_count(self.size) == 1 {
            Some(self.root)
        } else {
            index
                .checked_sub(self.cv_first)
                .and_then(|i| self.cvs.get(i as usize))
                .copied()
        };
        plain.len() == merkle::chunk_len(index, self.size)
            && Some(merkle::chunk_cv(index, plain, self.size)) == expected
    }

    /// The plaintext of sealed chunk `index` if it is authentic and matches the root.
    pub fn verify(&self, index: u64, mut ct: Vec<u8>) -> Result<Vec<u8>, BadChunk> {
        if !self.cipher.open(Object::Content, index, &mut ct) {
            return Err(BadChunk::Damaged);
        }
        if self.check_plain(index, &ct) {
            Ok(ct)
        } else {
            Err(BadChunk::Mismatch)
        }
    }
}

/// Why a sealed chunk was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadChunk {
    /// It does not open under the content key: damaged or forged on the path. Says
    /// nothing about the exposer's file, so it never counts toward `BadContent`.
    Damaged,
    /// It opens (the content key sealed it) but does not match the root.
    Mismatch,
}

#[derive(Debug, Clone)]
pub struct ResumeState {
    pub root: Hash,
    pub size: u64,
    pub have: ChunkSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullError {
    /// Nothing heard from the exposer for the idle timeout, or, when it never
    /// answered, for the connect timeout ([`Puller::answered`] tells which).
    Timeout,
    /// The exposer does not expose that name.
    NotFound,
    /// The exposer's key is not the pinned one.
    KeyMismatch { expected: [u8; 32], got: [u8; 32] },
    /// The content's root is not the one asked for.
    RootMismatch { expected: Hash, got: Hash },
    /// The outboard sent by the exposer does not hash to the root.
    BadOutboard,
    /// The exposer keeps serving a chunk that does not match the root (its file
    /// changed under it).
    BadContent { chunk: u64 },
    /// The offered file's bookkeeping (a bit per chunk, 32 bytes of outboard per
    /// chunk) does not fit in this process's memory, or it has more chunks than
    /// 32-bit chunk numbers address (64 TiB).
    TooLarge { size: u64 },
    /// The exposer withdrew the name: its file shrank or became unreadable while
    /// exposed.
    Gone,
    /// The name is longer than `wire::MAX_NAME_LEN` bytes.
    NameTooLong,
    /// The exposer chose a chunk cipher this puller did not offer.
    CipherNotOffered { cipher: Cipher },
    /// One source of a multi-source pull served a chunk that fails verification: its
    /// bytes do not match the root, or (repeatedly) do not open under its key.
    BadSource { chunk: u64 },
    /// The exposure is live (a checkpoint came): pull it with
    /// [`PullConfig::live`].
    IsLive,
    /// A live round's session came back with a newer checkpoint: start the next
    /// round (not an error of the exposer).
    CheckpointMoved,
    /// A live exposure's checkpoint contradicts an earlier one: it is shorter than
    /// what was verified, or its CVs change chunks already verified.
    BadCheckpoint { what: &'static str },
    /// A live exposure's window has moved past what this follower holds: the
    /// exposer no longer holds the bytes from `at` (its window starts at `start`).
    BehindWindow { at: u64, start: u64 },
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::url::hex;
        match self {
            Self::Timeout => write!(f, "exposer unreachable: no answer within the timeout"),
            Self::NotFound => write!(f, "the exposer has no such name"),
            Self::KeyMismatch { expected, got } => write!(
                f,
                "exposer key mismatch: expected {}, got {} (possible impersonation)",
                hex(expected),
                hex(got)
            ),
            Self::RootMismatch { expected, got } => write!(
                f,
                "content root mismatch: expected {}, exposer has {}",
                hex(expected),
                hex(got)
            ),
            Self::BadOutboard => write!(f, "exposer sent an outboard that does not match its root"),
            Self::BadContent { chunk } => write!(
                f,
                "exposer keeps serving chunk {chunk} with bytes that do not match its root (its file changed?)"
            ),
            Self::TooLarge { size } => write!(
                f,
                "the exposer offers {size} bytes: too large for this puller to track (in memory, or in 2^32 chunks)"
            ),
            Self::Gone => write!(
                f,
                "the exposer withdrew the file: it changed or became unreadable while exposed"
            ),
            Self::NameTooLong => write!(
                f,
                "the name is longer than {} bytes",
                wire::MAX_NAME_LEN
            ),
            Self::CipherNotOffered { cipher } => write!(
                f,
                "the exposer chose {cipher}, which this puller did not offer (--cipher)"
            ),
            Self::BadSource { chunk } => write!(
                f,
                "the source served chunk {chunk} with bytes that fail verification against the root"
            ),
            Self::IsLive => write!(f, "the exposure is live (a stream or a growing file)"),
            Self::CheckpointMoved => write!(f, "the live exposure has a newer checkpoint"),
            Self::BadCheckpoint { what } => write!(
                f,
                "inconsistent checkpoint from the exposer: {what} (forged, or the exposer rewrote its past)"
            ),
            Self::BehindWindow { at, start } => write!(
                f,
                "fell behind the exposer's window: it no longer holds byte {at}, its window starts at byte {start}"
            ),
        }
    }
}
impl std::error::Error for PullError {}

#[derive(Debug)]
pub enum PullEvent {
    /// First successful handshake. `resumed` is false when a resume state was given but
    /// belongs to other content (the driver must then start its output afresh).
    Started {
        exposer_key: [u8; 32],
        size: u64,
        root: Hash,
        resumed: bool,
    },
    /// A verified content chunk; its bytes belong at `index * CHUNK_SIZE`.
    Chunk {
        index: u64,
        data: Vec<u8>,
    },
    /// With `offload_verify`: a sealed content chunk to check with `verifier`; report
    /// the outcome with [`Puller::chunk_verified`] (then store the plaintext).
    Verify {
        index: u64,
        ct: Vec<u8>,
        verifier: std::sync::Arc<ChunkVerifier>,
    },
    /// After a resume: check that the chunks a previous run stored (`stored`; not the
    /// ones this run has verified since) still match (the part file may have been
    /// damaged), then call [`Puller::forget_chunk`] for each that does not and
    /// [`Puller::recheck_done`]. Done waits for it.
    Recheck {
        verifier: std::sync::Arc<ChunkVerifier>,
        stored: ChunkSet,
    },
    /// Scheduled: the source said it does not hold content chunk `index` (a sharer);
    /// it is no longer asked for here.
    Missing {
        index: u64,
    },
    Done,
    Failed(PullError),
}

/// A pull's counters (`rgtp-pull --json` prints them), added up over its sources.
#[derive(Debug, Default, Clone)]
pub struct PullStats {
    /// Datagrams received from the sources.
    pub datagrams_in: u64,
    /// UDP payload bytes received.
    pub bytes_in: u64,
    /// Datagrams sent (HELLOs and REQUESTs).
    pub datagrams_out: u64,
    /// UDP payload bytes sent.
    pub bytes_out: u64,
    /// REQUEST datagrams sent.
    pub requests: u64,
    /// Fragments asked for again: declared lost by their deadline or by the
    /// reordering rules.
    pub rerequested_fragments: u64,
    /// Fragments received twice (or for chunks already whole).
    pub duplicate_fragments: u64,
    /// Fragments declared lost by the reordering rules that then arrived from their
    /// first request (each widens the reorder window, at most once per round trip).
    pub spurious_losses: u64,
    /// Chunks that failed verification (AEAD or Merkle) and were asked for again.
    pub bad_chunks: u64,
    /// Handshakes completed (one per source and session).
    pub handshakes: u64,
    /// Datagrams dropped as malformed, stale or not for this pull.
    pub dropped: u64,
    /// Content bytes verified and delivered.
    pub content_bytes: u64,
    /// Repair fragments received while their chunk was still incomplete.
    pub repair_fragments: u64,
    /// Chunks rebuilt with repair fragments.
    pub chunks_repaired: u64,
    /// Repair fragments that arrived after their chunk was whole.
    pub surplus_repair: u64,
    /// The chunk cipher of the last handshake.
    pub cipher: Option<Cipher>,
    /// Sources of a multi-source pull dropped (dead, stalled, or serving chunks that
    /// fail verification).
    pub sources_dropped: u64,
    /// MISSING answers received (a sharer lacked chunks asked for).
    pub missing: u64,
    /// DATA datagrams received from the multicast group, and whether this puller
    /// left the group (it received nothing from it: the rest came by unicast).
    pub group_datagrams: u64,
    pub left_group: bool,
}

impl PullStats {
    /// Adds `o`'s counters to these (a multi-source pull's totals).
    pub fn add(&mut self, o: &PullStats) {
        self.datagrams_in += o.datagrams_in;
        self.bytes_in += o.bytes_in;
        self.datagrams_out += o.datagrams_out;
        self.bytes_out += o.bytes_out;
        self.requests += o.requests;
        self.rerequested_fragments += o.rerequested_fragments;
        self.duplicate_fragments += o.duplicate_fragments;
        self.spurious_losses += o.spurious_losses;
        self.bad_chunks += o.bad_chunks;
        self.handshakes += o.handshakes;
        self.dropped += o.dropped;
        self.content_bytes += o.content_bytes;
        self.repair_fragments += o.repair_fragments;
        self.chunks_repaired += o.chunks_repaired;
        self.surplus_repair += o.surplus_repair;
        self.cipher = self.cipher.or(o.cipher);
        self.sources_dropped += o.sources_dropped;
        self.missing += o.missing;
        self.group_datagrams += o.group_datagrams;
        self.left_group |= o.left_group;
    }
}

struct Session {
    m: ManifestBody,
    /// A live checkpoint: sealed under the live exposure's shared key, and its
    /// content chunks come from the group under the id of their length.
    live: bool,
    /// When the manifest arrived, on our clock: with `m.clock_ms` it gives the
    /// exposer's clock, which every REQUEST carries (replay protection).
    welcomed_at: Instant,
    cipher: ContentCipher,
    sealer: RequestSealer,
    verifier: Option<std::sync::Arc<ChunkVerifier>>,
    /// The exposer serves repair fragments, and this puller asked for them.
    repair: bool,
    /// The exposure's multicast group, when this puller asked for one and the
    /// exposer offered it.
    group: Option<std::net::SocketAddrV4>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Recheck {
    None,
    /// Resumed chunks exist; the event goes out once the outboard is known.
    Wanted(ChunkSet),
    /// The driver is checking.
    Pending,
}

/// A chunk failing verification this many times in a row is not bad luck.
const MAX_CHUNK_FAILURES: u32 = 16;

/// A source of a multi-source pull is dropped after this many chunks that do not open
/// under its key (plus one per 4 good ones: the path may damage a datagram now and
/// then, a lying source damages them all).
const MAX_DAMAGED_FROM_SOURCE: u64 = 8;

struct Flight {
    buf: Vec<u8>,
    got: u64,
    need: u64,
    /// Fragments requested and neither received nor declared lost.
    outstanding: u64,
    sent_at: Instant,
    deadline: Instant,
    rerequested: bool,
    /// When it was first asked for, if its deadline then passed with nothing of it
    /// received: the first fragment to arrive after that gives a late RTT sample.
    timed_out_from: Option<Instant>,
    /// Request order: flights asked later have higher numbers (RACK-style loss detection).
    order: u64,
    /// When the last fragment of this flight arrived.
    last_rx: Option<Instant>,
    /// Fragments received since the latest (re)request: only these show, by arriving,
    /// that earlier fragments of that same request were lost.
    fresh: u64,
    /// Fragments declared lost by the reordering rules (not by a deadline): if one
    /// arrives before its second request could have been answered, the path
    /// reordered it and the reorder window was too short.
    reo_lost: u64,
    /// Repair fragments (bit i: fragment number 64 + i) received, their payloads,
    /// requested and neither received nor declared lost, and received since the
    /// latest (re)request; the next repair fragment never asked for.
    rgot: u64,
    repair: Vec<(u8, Vec<u8>)>,
    routstanding: u64,
    rfresh: u64,
    rnext: u8,
    /// Begun by group datagrams this puller did not ask for: nothing is outstanding,
    /// and at `deadline` (moved on by each arrival) what is missing is asked for.
    group: bool,
}

impl Flight {
    /// A chunk's flight with nothing asked for yet and nothing received: fragments
    /// `need` make the chunk. Its deadline is `now`, so a loss check asks for what it
    /// misses (as for a re-request); the callers set what they ask.
    fn unasked(need: u64, now: Instant) -> Flight {
        Flight {
            buf: Vec::new(),
            got: 0,
            need,
            outstanding: 0,
            sent_at: now,
            deadline: now,
            rerequested: true,
            timed_out_from: None,
            order: 0,
            last_rx: None,
            fresh: 0,
            reo_lost: 0,
            rgot: 0,
            repair: Vec::new(),
            routstanding: 0,
            rfresh: 0,
            rnext: 0,
            group: false,
        }
    }
}

enum Phase {
    Handshake {
        /// The Noise initiator and its message 1, re-sent unchanged on timeout so a late
        /// WELCOME to an earlier copy is still good.
        init: Option<Box<(Initiator, Vec<u8>)>>,
        token: Vec<u8>,
        sent_at: Option<Instant>,
        attempts: u32,
    },
    Transfer,
    Finished,
}

/// The session's chunk cipher: a live checkpoint's binds lengths, not the exposure
/// ([`ContentCipher::live`]).
fn session_cipher(m: &ManifestBody, live: bool) -> ContentCipher {
    if live {
        ContentCipher::live(m.cipher, &m.content_key, m.exposure, m.size)
    } else {
        ContentCipher::with(m.cipher, &m.content_key, m.exposure, m.size)
    }
}

/// Group datagrams a member keeps while its outboard is incomplete (about 12 MiB at
/// LAN datagram sizes; a live round's outboard takes a round trip).
const MAX_DEFERRED_GROUP: usize = 8192;

/// What one live round checks a checkpoint against.
#[derive(Debug, Clone)]
struct LiveRound {
    /// The complete subtrees before `recent` (the joined window's, or the
    /// follower's).
    frontier: crate::frontier::Frontier,
    /// The CVs the outboard must repeat after the frontier.
    recent: std::sync::Arc<Vec<Hash>>,
    /// Complete chunks held: not asked for.
    held: u64,
    /// The window joined, when the follower held nothing and the start is gone.
    joined: Option<crate::live::Window>,
    /// The root of what the follower holds, and its length, when it can tell.
    held_root: Option<(u64, Hash)>,
}

impl LiveRound {
    fn of(base: &crate::live::LiveBase, m: &ManifestBody) -> Result<Self, PullError> {
        if m.size < base.len {
            return Err(PullError::BadCheckpoint {
                what: "its length went backwards",
            });
        }
        match &m.window {
            Some(w) if base.may_join => Ok(Self {
                frontier: w.frontier.clone(),
                recent: std::sync::Arc::default(),
                held: w.start,
                joined: Some(w.clone()),
                held_root: None,
            }),
            w => {
                let start = w.as_ref().map_or(0, |w| w.start);
                // The chunk of the next byte must still be held, and the CVs from
                // the frontier's outboard chunk on (kept from one outboard chunk
                // before the start's).
                let per = crate::live::CVS_PER_OUTBOARD_CHUNK;
                let next = base.len / CHUNK_SIZE as u64;
                if next < start || base.frontier.at() / per < (start / per).saturating_sub(1) {
                    return Err(PullError::BehindWindow {
                        at: base.len,
                        start: merkle::chunk_offset(start),
                    });
                }
                Ok(Self {
                    frontier: base.frontier.clone(),
                    recent: base.recent.clone(),
                    held: base.held(),
                    joined: None,
                    held_root: base.root.map(|r| (base.len, r)),
                })
            }
        }
    }
}

pub struct Puller {
    cfg: PullConfig,
    phase: Phase,
    session: Option<Session>,
    learned_key: Option<[u8; 32]>,
    root: Option<Hash>,
    size: u64,
    have: ChunkSet,
    have_outboard: ChunkSet,
    /// The outboard's bytes from outboard chunk `ob_first` on (a live round fetches
    /// only the part after what its follower holds), of `ob_len` in all.
    outboard: Vec<u8>,
    ob_len: u64,
    ob_first: u64,
    /// The outboard's chaining values, once complete (shared with verifiers), from
    /// chunk `cv_first` on.
    cvs: std::sync::Arc<Vec<Hash>>,
    cv_first: u64,
    /// Group DATA for content that came before the outboard could verify it
    /// (at most [`MAX_DEFERRED_GROUP`]): taken again once it can.
    deferred_group: Vec<Vec<u8>>,
    /// A live round: the frontier before the outboard part it checks, the CVs it
    /// must repeat, and the complete chunks held ([`crate::live::LiveBase`], or the
    /// window joined).
    live_round: Option<LiveRound>,
    /// Next chunk never yet requested, per object.
    cursor: [u64; 2],
    retx: VecDeque<(Object, u32, u64)>,
    /// A hash map for the per-fragment lookups; where its order would show (losses
    /// found by `check_losses`), the keys are sorted first, so behaviour does not
    /// depend on the hasher's seed.
    flights: HashMap<(Object, u32), Flight>,
    inflight_bytes: u64,
    /// Highest request order that has delivered data, and when it advanced: anything
    /// asked earlier and still missing a reorder window later is lost (RACK).
    rack_order: u64,
    rack_at: Instant,
    /// The reorder window in steps of min RTT / 4 (RACK's reo_wnd_steps): one more
    /// for each round trip that saw a spurious loss, one fewer after 16 without.
    reo_steps: u32,
    reo_changed: Instant,
    next_order: u64,
    cc: RateControl,
    next_send: Instant,
    next_loss_check: Option<Instant>,
    last_rx: Instant,
    /// Whether the exposer has ever answered (then `idle_timeout` applies, else
    /// `connect_timeout`).
    answered: bool,
    seq: u64,
    events: VecDeque<PullEvent>,
    pending_hello: bool,
    /// Chunks out for verification (offload_verify).
    verifying: usize,
    /// A resume's stored chunks still await their check (`PullEvent::Recheck`).
    recheck: Recheck,
    /// Consecutive verification failures per chunk (a changed file fails forever).
    failures: HashMap<u64, u32>,
    /// Content chunks (sealed, as received) that arrived before the outboard that
    /// verifies them was complete (bounded by EARLY_CONTENT_LIMIT).
    early: Vec<(u32, Vec<u8>)>,
    /// In the tail, the items of the last request, to be asked for a second time.
    tail_copy: Option<Vec<RequestItem>>,
    /// A HELLO after the first, to be sent twice. With repair in use, the REQUEST
    /// just sent, to be sent again unchanged: the
    /// exposer serves the first copy that arrives and drops the other as a replay
    /// (its filter names a REQUEST by its tag), so a lost REQUEST costs nothing
    /// unless both are lost, and no byte of data is sent twice.
    request_copy: Option<Vec<u8>>,
    /// Copies of `request_copy` still to send after this one.
    copies_left: u8,
    /// With `cfg.scheduled`: content chunks granted and not yet asked for, in the
    /// order granted.
    grant: VecDeque<u32>,
    /// Where every random draw comes from (the Noise ephemeral key).
    rng: Rng,
    /// Fragment loss as this puller measures it (decaying counts of fragments found
    /// lost and received): how much repair `FecMode::Auto` asks for.
    est_lost: f64,
    est_rx: f64,
    /// `FecMode::Auto` has turned repair on (from AUTO_ON loss; off again below
    /// AUTO_OFF, so it does not flap around one value).
    auto_on: bool,
    codec: fec::Codec,
    /// A member of the exposure's multicast group (its session has a group, and
    /// this puller has not left it): REQUESTs go as GROUP REQUESTs.
    member: bool,
    /// When a group datagram last arrived (or membership began), and the chunks
    /// REQUESTs sent as a member since: several asked and nothing from the group
    /// means the group does not reach this puller.
    last_group_rx: Instant,
    member_requests: u64,
    /// The last PEERS answer (peer exchange), until the swarm takes it.
    peers: Option<crate::pex::PeersBody>,
    /// The manifest said the exposure is live (this is a checkpoint).
    live_manifest: bool,
    pub stats: PullStats,
}

fn obj_idx(o: Object) -> usize {
    o as usize
}

impl Puller {
    /// A puller drawing its randomness from the OS CSPRNG.
    pub fn new(cfg: PullConfig, now: Instant) -> Self {
        Self::with_rng(cfg, now, Rng::os())
    }

    /// A puller drawing all its randomness from `rng`: [`Rng::os`] for real use,
    /// [`Rng::seeded_for_simulation`] so that a simulated run reproduces from its seed.
    pub fn with_rng(cfg: PullConfig, now: Instant, rng: Rng) -> Self {
        Self {
            learned_key: cfg.pinned_key,
            phase: Phase::Handshake {
                init: None,
                token: Vec::new(),
                sent_at: None,
                attempts: 0,
            },
            session: None,
            root: None,
            size: 0,
            have: ChunkSet::new(0),
            have_outboard: ChunkSet::new(0),
            outboard: Vec::new(),
            ob_len: 0,
            ob_first: 0,
            cvs: std::sync::Arc::default(),
            cv_first: 0,
            deferred_group: Vec::new(),
            live_round: None,
            cursor: [0, 0],
            retx: VecDeque::new(),
            flights: HashMap::new(),
            inflight_bytes: 0,
            rack_order: 0,
            rack_at: now,
            reo_steps: 1,
            reo_changed: now,
            next_order: 0,
            cc: RateControl::new(now, Duration::from_millis(100)),
            next_send: now,
            next_loss_check: None,
            last_rx: now,
            answered: false,
            seq: 0,
            events: VecDeque::new(),
            pending_hello: true,
            verifying: 0,
            recheck: Recheck::None,
            failures: HashMap::new(),
            early: Vec::new(),
            tail_copy: None,
            request_copy: None,
            copies_left: 0,
            grant: VecDeque::new(),
            rng,
            est_lost: 0.0,
            est_rx: 0.0,
            auto_on: false,
            codec: fec::Codec::new(),
            member: false,
            last_group_rx: now,
            member_requests: 0,
            peers: None,
            live_manifest: false,
            stats: PullStats::default(),
            cfg,
        }
    }

    pub fn poll_event(&mut self) -> Option<PullEvent> {
        self.events.pop_front()
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Verified content chunks so far.
    pub fn have(&self) -> &ChunkSet {
        &self.have
    }

    /// Scheduler state, for traces.
    pub fn debug_state(&self, now: Instant) -> String {
        let mut keys: Vec<&(Object, u32)> = self.flights.keys().collect();
        keys.sort_unstable();
        let flights: Vec<String> = keys
            .into_iter()
            .map(|k| (k, &self.flights[k]))
            .map(|(k, f)| {
                format!(
                    "{:?}/{} got={:x} out={:x} dl={:?}",
                    k.0,
                    k.1,
                    f.got,
                    f.outstanding,
                    f.deadline.checked_duration_since(now)
                )
            })
            .take(5)
            .collect();
        format!(
            "next_send={:?} loss_check={:?} can={} retx={} cursor={:?} flights={} {:?} ob={}/{}",
            self.next_send.checked_duration_since(now),
            self.next_loss_check.map(|t| t.checked_duration_since(now)),
            self.can_request(),
            self.retx.len(),
            self.cursor,
            self.flights.len(),
            flights,
            self.have_outboard.count(),
            self.have_outboard.len()
        )
    }

    /// Whether the handshake is done and content may be asked for.
    pub fn in_transfer(&self) -> bool {
        matches!(self.phase, Phase::Transfer)
    }

    /// When the exposer was last heard from.
    pub fn last_heard(&self) -> Instant {
        self.last_rx
    }

    /// The exposer this puller pulls from.
    pub fn remote(&self) -> SocketAddr {
        self.cfg.remote
    }

    /// Makes this puller one source of a multi-source pull (see
    /// [`PullConfig::scheduled`]); before it starts.
    pub fn set_scheduled(&mut self, on: bool) {
        self.cfg.scheduled = on;
    }

    /// See [`PullConfig::group_first`]; before it starts.
    pub fn set_group_first(&mut self, on: bool) {
        self.cfg.group_first = on;
    }

    /// With `scheduled`: content chunk `index` may be asked for.
    pub fn grant(&mut self, index: u64) {
        if let Ok(c) = u32::try_from(index) {
            self.grant.push_back(c);
        }
    }

    /// Another source delivered (and verified) chunk `index`: it is not asked for
    /// here any more, and a request out for it is forgotten (its bytes, if they still
    /// come, count as duplicates).
    pub fn mark_have(&mut self, index: u64) {
        if index >= self.have.len() || !self.have.insert(index) {
            return;
        }
        self.failures.remove(&index);
        let key = (Object::Content, index as u32);
        if let Some(fl) = self.flights.remove(&key) {
            let (n, per, ct) = self.geometry(Object::Content, index);
            self.inflight_bytes =
                self.inflight_bytes
                    .saturating_sub(outstanding_bytes(fl.outstanding, n, per, ct));
            self.cc.set_inflight(self.inflight_bytes);
        }
    }

    /// Makes the verified set `have` (the same length), as [`Self::mark_have`] does
    /// for each chunk it adds: a source that joins late learns what the others did.
    pub fn set_have(&mut self, have: &ChunkSet) {
        if have.len() != self.have.len() {
            return;
        }
        for i in 0..have.len() {
            if have.contains(i) {
                self.mark_have(i);
            } else {
                self.have.remove(i);
            }
        }
    }

    /// Bytes requested and neither delivered nor declared lost.
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight_bytes
    }

    pub fn rate_control(&self) -> &RateControl {
        &self.cc
    }

    fn fail(&mut self, e: PullError) {
        self.phase = Phase::Finished;
        self.events.push_back(PullEvent::Failed(e));
    }

    fn restart_handshake(&mut self) {
        self.phase = Phase::Handshake {
            init: None,
            token: Vec::new(),
            sent_at: None,
            attempts: 0,
        };
        self.pending_hello = true;
        self.request_copy = None;
        self.session = None;
        if self.cfg.scheduled {
            // Granted chunks asked for under the old session are granted still.
            let mut back: Vec<u32> = self
                .flights
                .keys()
                .copied()
                .chain(self.retx.iter().map(|&(o, c, _)| (o, c)))
                .filter(|&(o, c)| o == Object::Content && !self.have.contains(c as u64))
                .map(|(_, c)| c)
                .collect();
            back.sort_unstable();
            back.dedup();
            for c in back.into_iter().rev() {
                self.grant.push_front(c);
            }
        }
        // Ciphertext from the old session is useless under a new exposure id and key.
        self.flights.clear();
        self.retx.clear();
        self.inflight_bytes = 0;
        self.cursor = [0, 0];
    }

    // ---------------------------------------------------------------- receiving

    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if from != self.cfg.remote || matches!(self.phase, Phase::Finished) {
            self.stats.dropped += 1;
            return;
        }
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let ok = match wire::peek_type(datagram) {
            Ok(PacketType::Data) => self.on_data(now, datagram, false),
            Ok(PacketType::Welcome) => self.on_welcome(now, datagram),
            Ok(PacketType::Retry) => self.on_retry(datagram),
            Ok(PacketType::Stale) => self.on_stale(datagram),
            Ok(PacketType::Missing) => self.on_missing(datagram),
            Ok(PacketType::Peers) => self.on_peers(datagram),
            _ => false,
        };
        if ok {
            self.last_rx = now;
            self.answered = true;
        } else {
            self.stats.dropped += 1;
        }
    }

    fn on_retry(&mut self, d: &[u8]) -> bool {
        let Ok(r) = Retry::decode(d) else {
            return false;
        };
        // Unauthenticated: a spoofed one costs at most one HELLO timeout, after which
        // the HELLO goes without it again (handle_timeout).
        if let Phase::Handshake { token, init, .. } = &mut self.phase {
            if token.is_empty() && init.is_some() {
                *token = r.token.to_vec();
                self.pending_hello = true;
                return true;
            }
        }
        false
    }

    fn on_stale(&mut self, d: &[u8]) -> bool {
        let Ok(s) = Stale::decode(d) else {
            return false;
        };
        match (&self.phase, &self.session) {
            (Phase::Transfer, Some(sess)) if sess.m.exposure == s.exposure => {
                tracing::info!("exposer says our session is stale; handshaking again");
                self.restart_handshake();
                true
            }
            _ => false,
        }
    }

    /// A sharer does not hold some chunks asked for. Scheduled (in a swarm): they are
    /// no longer asked for here and go back to the swarm, which grants them to
    /// another source. Alone: nothing changes (they are asked for again as lost, and
    /// a sharer still pulling may hold them by then).
    fn on_missing(&mut self, d: &[u8]) -> bool {
        let Ok(m) = Missing::decode(d) else {
            return false;
        };
        let ok = matches!(
            (&self.phase, &self.session),
            (Phase::Transfer, Some(sess)) if sess.m.exposure == m.exposure
        );
        if !ok {
            return false;
        }
        self.stats.missing += 1;
        if !self.cfg.scheduled {
            return true;
        }
        let mut refused = Vec::new();
        for (start, count) in m.runs {
            // Only chunks asked for here and not yet held: a run cannot make the
            // puller walk more than what it has out.
            for c in start..start.saturating_add(count).min(self.have.len() as u32) {
                let key = (Object::Content, c);
                if let Some(fl) = self.flights.remove(&key) {
                    let (n, per, ct) = self.geometry(Object::Content, c as u64);
                    self.inflight_bytes = self.inflight_bytes.saturating_sub(outstanding_bytes(
                        fl.outstanding,
                        n,
                        per,
                        ct,
                    ));
                    refused.push(c);
                }
                if refused.len() > 65_536 {
                    break;
                }
            }
        }
        if refused.is_empty() {
            return true;
        }
        self.cc.set_inflight(self.inflight_bytes);
        let mut set = ChunkSet::new(self.have.len());
        for &c in &refused {
            set.insert(c as u64);
        }
        self.retx
            .retain(|(o, c, _)| *o != Object::Content || !set.contains(*c as u64));
        for &c in &refused {
            self.events
                .push_back(PullEvent::Missing { index: c as u64 });
        }
        true
    }

    /// A PEERS answer: kept if it opens under this session's request key.
    fn on_peers(&mut self, d: &[u8]) -> bool {
        let Some(sess) = self.session.as_ref() else {
            return false;
        };
        if crate::pex::peers_exposure(d).ok() != Some(sess.m.exposure) {
            return false;
        }
        match crate::pex::open_peers(&sess.m.request_key, d) {
            Some(body) => {
                self.peers = Some(body);
                true
            }
            None => false,
        }
    }

    /// Whether this source answers PEX (its manifest said so), once a session is up.
    pub fn speaks_pex(&self) -> bool {
        matches!(self.phase, Phase::Transfer)
            && self
                .session
                .as_ref()
                .is_some_and(|s| s.m.features.is_some_and(|f| f & wire::FEATURE_PEX != 0))
    }

    /// A PEX datagram (peer exchange, `pex.rs`) under the next sequence number, when
    /// this source speaks it.
    pub fn pex_query(&mut self, now: Instant, body: crate::pex::PexBody) -> Option<Transmit> {
        if !self.speaks_pex() {
            return None;
        }
        let sess = self.session.as_ref()?;
        self.seq += 1;
        let since = now.saturating_duration_since(sess.welcomed_at).as_millis() as u64;
        let stamp = sess.m.clock_ms.saturating_add(since);
        let mut pkt =
            crate::pex::Pex::encode_header(&sess.m.exposure, &sess.m.token, self.seq, stamp);
        let header = pkt.clone();
        let len = crate::pex::PEX_LEN.saturating_sub(header.len() + TAG_LEN);
        sess.sealer
            .seal(self.seq, &header, &body.encode(len), &mut pkt);
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += pkt.len() as u64;
        Some(Transmit::single(self.cfg.remote, pkt))
    }

    /// The last PEERS answer, once.
    pub fn take_peers(&mut self) -> Option<crate::pex::PeersBody> {
        self.peers.take()
    }

    /// The origin's exposure id and content key, once a session is up: what a sharer
    /// relays ([`crate::exposer::Exposer::add_relayed_exposure`]).
    pub fn relay_keys(&self) -> Option<(ExposureId, [u8; 32])> {
        self.session
            .as_ref()
            .map(|s| (s.m.exposure, s.m.content_key))
    }

    /// The content's chunk CVs, once the outboard is complete and checked against
    /// the root (`None` before, and for a content of one chunk).
    pub fn cvs(&self) -> Option<std::sync::Arc<Vec<Hash>>> {
        (self.have.len() > 1 && self.cv_first == 0 && self.cvs.len() as u64 == self.have.len())
            .then(|| self.cvs.clone())
    }

    fn on_welcome(&mut self, now: Instant, d: &[u8]) -> bool {
        let Ok(w) = Welcome::decode(d) else {
            return false;
        };
        let Phase::Handshake { init, sent_at, .. } = &mut self.phase else {
            return false;
        };
        let Some(boxed) = init.take() else {
            return false;
        };
        let (initiator, _) = *boxed;
        let sent_at = *sent_at;
        let Ok((key, payload)) = initiator.finish(w.noise) else {
            // Forged or damaged: the initiator is spent; start a fresh one.
            self.pending_hello = true;
            return false;
        };
        if let Some(expected) = self.learned_key {
            if expected != key {
                self.fail(PullError::KeyMismatch { expected, got: key });
                return true;
            }
        }
        let Ok(manifest) = Manifest::decode(&payload) else {
            return false;
        };
        let m = match manifest {
            Manifest::NotFound => {
                self.fail(PullError::NotFound);
                return true;
            }
            Manifest::Gone => {
                self.fail(PullError::Gone);
                return true;
            }
            Manifest::Found(m) => m,
        };
        if self.cfg.offer() & m.cipher.bit() == 0 {
            self.fail(PullError::CipherNotOffered { cipher: m.cipher });
            return true;
        }
        let live = m.features.is_some_and(|f| f & wire::FEATURE_LIVE != 0);
        // A window's exposure is followed even once final: only a live pull can
        // start past its beginning.
        if self.cfg.live.is_none() && (live || m.window.is_some()) {
            self.fail(PullError::IsLive);
            return true;
        }
        if self.cfg.live.is_some() && self.root.is_some_and(|r| r != m.root) {
            self.fail(PullError::CheckpointMoved);
            return true;
        }
        let live_round = match self.cfg.live.as_ref().map(|base| LiveRound::of(base, &m)) {
            Some(Err(e)) => {
                self.fail(e);
                return true;
            }
            Some(Ok(r)) => Some(r),
            None => None,
        };
        self.live_manifest = live;
        if let Some(expected) = self.cfg.expected_root.or(self.root) {
            if expected != m.root {
                self.fail(PullError::RootMismatch {
                    expected,
                    got: m.root,
                });
                return true;
            }
        }
        self.stats.handshakes += 1;
        self.stats.cipher = Some(m.cipher);
        if let Some(t) = sent_at {
            self.cc.on_rtt_sample(now, now.saturating_duration_since(t));
        }
        if self.root.is_none() {
            let chunks = m.chunk_count;
            // The manifest is the exposer's word, and a first-use exposer can say any
            // size: get the memory it implies or fail, never abort on an allocation.
            let resume = self
                .cfg
                .resume
                .take()
                .filter(|r| r.root == m.root && r.size == m.size && r.have.len() == chunks);
            // At most 2^50 chunks (size < 2^64), so the outboard length cannot overflow.
            let ob_len = if chunks > 1 { chunks * 32 } else { 0 };
            // A live round fetches the outboard from its frontier's outboard chunk on.
            let ob_first = match &live_round {
                Some(r) if chunks > 1 => r.frontier.at() / crate::live::CVS_PER_OUTBOARD_CHUNK,
                _ => 0,
            };
            let have = match &resume {
                Some(r) => Some(r.have.clone()),
                None => ChunkSet::try_new(chunks),
            };
            let (Some(have), Some(have_outboard), Some(outboard), true) = (
                have,
                ChunkSet::try_new(merkle::chunk_count(ob_len)),
                usize::try_from(ob_len.saturating_sub(ob_first * CHUNK_SIZE as u64))
                    .ok()
                    .and_then(crate::zeroed::try_zeroed::<u8>),
                // DATA and REQUEST name chunks with 32 bits: past 2^32 chunks (64 TiB)
                // the protocol cannot address them.
                chunks <= 1 << 32,
            ) else {
                self.fail(PullError::TooLarge { size: m.size });
                return true;
            };
            self.learned_key = Some(key);
            self.root = Some(m.root);
            self.size = m.size;
            self.have = have;
            self.have_outboard = have_outboard;
            self.outboard = outboard;
            self.ob_len = ob_len;
            self.ob_first = ob_first;
            self.cv_first = ob_first * crate::live::CVS_PER_OUTBOARD_CHUNK;
            self.live_round = live_round;
            let resumed = resume.is_some();
            if let Some(r) = resume {
                if r.have.count() > 0 {
                    self.recheck = Recheck::Wanted(r.have);
                }
            }
            self.events.push_back(PullEvent::Started {
                exposer_key: key,
                size: m.size,
                root: m.root,
                resumed,
            });
            if self.cfg.live.is_some() {
                self.take_live_base();
                if matches!(self.phase, Phase::Finished) {
                    return true;
                }
            }
        }
        // Repair only when asked for in the offer and served: a features byte the
        // puller did not ask for is ignored.
        let repair = self.cfg.fec != FecMode::Off
            && m.features.is_some_and(|f| f & wire::FEATURE_REPAIR != 0);
        if repair && (self.auto_on || matches!(self.cfg.fec, FecMode::Fixed { .. })) {
            self.cc.set_loss_cap(REPAIR_LOSS_CAP);
        }
        // Not for one source of a multi-source pull: its chunks are granted per
        // source, which group data does not follow.
        let group = m
            .group
            .filter(|_| self.cfg.multicast && (!self.cfg.scheduled || self.cfg.group_first))
            .filter(|_| m.features.is_some_and(|f| f & wire::FEATURE_MULTICAST != 0));
        // A puller that left the group (it did not reach it) does not join again.
        if group.is_some() && !self.stats.left_group && !self.member {
            self.member = true;
            self.last_group_rx = now;
            self.member_requests = 0;
            // Nothing granted has been asked for yet: from here it asks for every
            // chunk itself ([`crate::swarm::Swarm`] sees the group and stops granting).
            self.cfg.scheduled = false;
        }
        self.member &= group.is_some();
        self.session = Some(Session {
            group,
            repair,
            cipher: session_cipher(&m, live),
            live,
            sealer: RequestSealer::new(&m.request_key),
            verifier: None,
            welcomed_at: now,
            m,
        });
        self.phase = Phase::Transfer;
        self.request_copy = None;
        self.cc.start_round(now);
        self.next_send = now;
        self.check_done();
        true
    }

    fn object_len(&self, o: Object) -> u64 {
        match o {
            Object::Content => self.size,
            Object::Outboard => self.ob_len,
        }
    }

    fn object_set(&self, o: Object) -> &ChunkSet {
        match o {
            Object::Content => &self.have,
            Object::Outboard => &self.have_outboard,
        }
    }

    /// (fragment count, payload per fragment, ciphertext length) of a chunk.
    fn geometry(&self, o: Object, chunk: u64) -> (usize, usize, usize) {
        let max_dg = self
            .session
            .as_ref()
            .map_or(wire::DEFAULT_MAX_DATAGRAM, |s| s.m.max_datagram as usize);
        let ct = merkle::chunk_len(chunk, self.object_len(o)) + TAG_LEN;
        let (n, per) = wire::fragmentation(ct, max_dg);
        (n, per, ct)
    }

    /// The multicast group to receive on: the exposure's group while this puller is
    /// a member. The driver joins it and hands its datagrams to
    /// [`Puller::handle_group`], or calls [`Puller::leave_group`] when it cannot.
    pub fn group(&self) -> Option<std::net::SocketAddrV4> {
        self.session
            .as_ref()
            .and_then(|s| s.group)
            .filter(|_| self.member)
    }

    /// Starts from `cc` rather than a fresh model (before the handshake): a live
    /// pull's next round on the same path ([`RateControl::carried`]).
    pub fn adopt_rate_control(&mut self, cc: RateControl) {
        self.cc = cc;
    }

    /// Whether the session is up and chunks flow (group datagrams are taken).
    pub fn transferring(&self) -> bool {
        matches!(self.phase, Phase::Transfer)
    }

    /// Stops being a group member (the group cannot be joined, or brings nothing):
    /// from now on REQUESTs are plain and data comes by unicast.
    pub fn leave_group(&mut self) {
        if self.member {
            tracing::info!("leaving the multicast group: the rest comes by unicast");
        }
        self.member = false;
        self.stats.left_group = true;
    }

    /// Feeds one datagram received on the multicast group. Only DATA of this
    /// exposure counts (it is sealed: a datagram forged by anyone on the LAN fails the
    /// chunk's AEAD like a damaged one).
    pub fn handle_group(&mut self, now: Instant, datagram: &[u8]) {
        if !self.member || !matches!(self.phase, Phase::Transfer) {
            return;
        }
        if wire::peek_type(datagram) != Ok(PacketType::Data) || !self.on_data(now, datagram, true) {
            self.stats.dropped += 1;
            return;
        }
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        self.stats.group_datagrams += 1;
        self.last_group_rx = now;
        self.member_requests = 0;
        self.last_rx = now;
    }

    /// A member that has sent this many GROUP REQUESTs and heard nothing from the
    /// group for [`GROUP_SILENCE`] (and 4 round trips) is not reached by it (no
    /// multicast route, a switch that does not forward the group): it leaves, and
    /// completes by unicast. What it asked for and did not get is asked for again.
    ///
    /// A member that loses GROUP_LOSS_FLOOR or more of the fragments it asks for
    /// (measured over at least GROUP_LOSS_SAMPLES) is slower than the group: what it
    /// asks again would go to the group and cost every member. It leaves too.
    fn check_group(&mut self, now: Instant) {
        let silence = GROUP_SILENCE.max(self.cc.srtt() * 4);
        let silent = self.member_requests >= GROUP_SILENT_REQUESTS
            && now.saturating_duration_since(self.last_group_rx) >= silence;
        let slow = self.est_lost + self.est_rx >= GROUP_LOSS_SAMPLES
            && self.measured_loss() >= GROUP_LOSS_FLOOR;
        if self.member && (silent || slow) {
            if slow {
                tracing::info!(
                    "losing {:.0} % of the group's fragments: slower than the group",
                    self.measured_loss() * 100.0
                );
            }
            self.leave_group();
            // Nothing asked for as a member comes: ask again now, not after timeouts
            // that back the rate off.
            let mut lost: Vec<_> = self
                .flights
                .iter_mut()
                .filter(|(_, f)| f.outstanding != 0 || f.routstanding != 0)
                .map(|(&k, f)| {
                    let m = f.outstanding;
                    f.outstanding = 0;
                    f.routstanding = 0;
                    (k, m)
                })
                .collect();
            lost.sort_unstable_by_key(|&(k, _)| k);
            for ((o, c), m) in lost {
                self.retx.push_back((o, c, m));
            }
            // Unicast is another path than the group: its rate control and the loss
            // measured start over (else the group's loss would size repair and
            // duplicate requests on a path that may lose nothing), keeping the
            // round-trip time.
            self.inflight_bytes = 0;
            self.cc = RateControl::new(now, self.cc.srtt());
            self.cc.start_round(now);
            self.est_lost = 0.0;
            self.est_rx = 0.0;
            self.auto_on = false;
            self.next_send = now;
        }
    }

    /// A fragment from the group for a chunk this puller has not asked for (another
    /// member did): begins or adds to a group flight.
    fn on_group_fragment(&mut self, now: Instant, o: Object, chunk: u32, f: usize, payload: &[u8]) {
        if self.object_set(o).contains(chunk as u64) {
            self.stats.duplicate_fragments += 1;
            return;
        }
        // Content before the outboard that verifies it would wait in `early`, where
        // the request cursor does not look (it would be asked for again): such
        // fragments are left to this puller's own requests.
        let unverifiable = o == Object::Content && self.have.len() > 1 && self.cvs.is_empty();
        if unverifiable || self.flights.len() >= MAX_GROUP_FLIGHTS {
            return;
        }
        let (n, per, ct_len) = self.geometry(o, chunk as u64);
        let grace = self.reorder_window() + self.cc.min_rtt();
        let fl = self.flights.entry((o, chunk)).or_insert_with(|| Flight {
            group: true,
            ..Flight::unasked(bits(n), now)
        });
        let bit = 1u64 << f;
        if fl.got & bit != 0 {
            self.stats.duplicate_fragments += 1;
            return;
        }
        if fl.buf.len() != ct_len {
            fl.buf.resize(ct_len, 0);
        }
        let start = f * per;
        fl.buf[start..start + payload.len()].copy_from_slice(payload);
        fl.got |= bit;
        fl.last_rx = Some(now);
        fl.deadline = now + grace;
        let t = fl.deadline;
        let whole = fl.got == fl.need;
        self.next_loss_check = Some(self.next_loss_check.map_or(t, |x| x.min(t)));
        if whole {
            if let Some(fl) = self.flights.remove(&(o, chunk)) {
                self.complete_chunk(o, chunk, fl.buf);
            }
        }
    }

    fn on_data(&mut self, now: Instant, d: &[u8], from_group: bool) -> bool {
        let Ok(p) = Data::decode(d) else { return false };
        let Some(sess) = &self.session else {
            return false;
        };
        // A live checkpoint's chunk from the group names the id of its length
        // (another checkpoint's follower may have asked for it), or for the outboard
        // the id of the checkpoint's length.
        let ours = p.exposure == sess.m.exposure
            || (from_group
                && sess.live
                && p.exposure
                    == match p.object {
                        Object::Content => crate::crypto::live_group_id(
                            &sess.m.content_key,
                            merkle::chunk_len(p.chunk as u64, sess.m.size),
                        ),
                        Object::Outboard => {
                            crate::crypto::live_outboard_group_id(&sess.m.content_key, sess.m.size)
                        }
                    });
        if !ours || !matches!(self.phase, Phase::Transfer) {
            return false;
        }
        let repair_ok = sess.repair;
        let key = (p.object, p.chunk);
        let reorder = self.reorder_window();
        let (n, per, ct_len) = self.geometry(p.object, p.chunk as u64);
        let f = p.fragment as usize;
        let is_repair = f >= fec::MAX_DATA;
        if (is_repair && !repair_ok) || (!is_repair && f >= n) {
            return false;
        }
        let expect_len = if is_repair {
            fec::shard_len(ct_len, per)
        } else if f + 1 == n {
            ct_len - f * per
        } else {
            per
        };
        if p.payload.len() != expect_len {
            return false;
        }
        if from_group && !is_repair && !self.flights.contains_key(&key) {
            // Content another member asked for, before this puller's outboard can
            // verify it: kept and taken again once the outboard is complete. (Dropped,
            // it was lost: this puller's own request for it then came within the
            // group's "just sent" window, was not sent again, and timed out.)
            if p.object == Object::Content && self.have.len() > 1 && self.cvs.is_empty() {
                if self.deferred_group.len() < MAX_DEFERRED_GROUP {
                    self.deferred_group.push(d.to_vec());
                }
                return true;
            }
            let payload = p.payload.to_vec();
            self.on_group_fragment(now, p.object, p.chunk, f, &payload);
            return true;
        }
        let Some(fl) = self.flights.get_mut(&key) else {
            if is_repair && from_group {
                // For another member's chunk: not this puller's delivery.
                self.stats.surplus_repair += 1;
                return true;
            }
            if is_repair {
                // Asked with the chunk, which was whole without it: the margin. It
                // crossed the path, so rate control counts it delivered (the model's
                // rate is what the path carries).
                self.stats.surplus_repair += 1;
                self.cc.on_delivered(now, expect_len as u64);
            } else {
                self.stats.duplicate_fragments += 1;
            }
            // Counted lost when its chunk completed: it was not.
            self.unlose_fragment();
            return true;
        };
        let mut spurious = false;
        let mut unlose = false;
        let gap_below;
        if is_repair {
            let bit = 1u64 << (f - fec::MAX_DATA);
            if fl.rgot & bit != 0 {
                self.stats.duplicate_fragments += 1;
                return true;
            }
            self.stats.repair_fragments += 1;
            if fl.got == 0 && fl.rgot == 0 && !fl.rerequested {
                let rtt = now.saturating_duration_since(fl.sent_at);
                self.cc.on_rtt_sample(now, rtt);
            }
            fl.rgot |= bit;
            fl.repair
                .push(((f - fec::MAX_DATA) as u8, p.payload.to_vec()));
            fl.last_rx = Some(now);
            // Repair follows every data fragment of its request: those still
            // outstanding, and earlier repair, are behind it.
            gap_below = fl.routstanding & bit != 0
                && (fl.outstanding != 0 || fl.routstanding & (bit - 1) != 0);
            if fl.routstanding & bit != 0 {
                fl.rfresh |= bit;
                fl.routstanding &= !bit;
                self.inflight_bytes = self.inflight_bytes.saturating_sub(expect_len as u64);
            }
        } else {
            let bit = 1u64 << f;
            if fl.got & bit != 0 {
                self.stats.duplicate_fragments += 1;
                return true;
            }
            // Declared lost by reordering, and either not asked again yet or asked too
            // recently for this to be the answer: the first copy, late.
            spurious = fl.reo_lost & bit != 0
                && (fl.outstanding & bit == 0
                    || now.saturating_duration_since(fl.sent_at) < self.cc.min_rtt() / 2);
            unlose = fl.reo_lost & bit != 0;
            fl.reo_lost &= !bit;
            if fl.got == 0 && fl.rgot == 0 && !fl.rerequested {
                let rtt = now.saturating_duration_since(fl.sent_at);
                self.cc.on_rtt_sample(now, rtt);
            } else if let Some(first) = fl.timed_out_from.take() {
                // Karn's rule drops this sample (which request does it answer?), and
                // so a queue longer than the deadline, such as an exposer's rate cap
                // holds on a sub-millisecond LAN, would never show in the RTT: every
                // request timed out, was asked again, and arrived twice (15x the file
                // for four pullers). Arriving well over a round trip after the second
                // request, it waited in a queue whichever it answers: counted from
                // the first request (at most one timeout too long), it raises the
                // timeout until the next proper sample. An answer about a round trip
                // after the second request is that request's (a lost first one, on
                // a lossy path): no sample, as before.
                let since_second = now.saturating_duration_since(fl.sent_at);
                if since_second > self.cc.srtt() * 2 + Duration::from_millis(1) {
                    self.cc.on_late_rtt(now.saturating_duration_since(first));
                }
            }
            let start = f * per;
            if fl.buf.len() == start {
                // In order (a whole chunk in one datagram on loopback): append,
                // without zeroing the buffer first.
                fl.buf.reserve_exact(ct_len - start);
                fl.buf.extend_from_slice(p.payload);
            } else {
                if fl.buf.len() != ct_len {
                    fl.buf.resize(ct_len, 0);
                }
                fl.buf[start..start + p.payload.len()].copy_from_slice(p.payload);
            }
            fl.got |= bit;
            fl.last_rx = Some(now);
            gap_below = fl.outstanding & bit != 0 && fl.outstanding & (bit - 1) != 0;
            if fl.outstanding & bit != 0 {
                fl.fresh |= bit;
                fl.outstanding &= !bit;
                self.inflight_bytes = self.inflight_bytes.saturating_sub(expect_len as u64);
            }
        }
        // Only first requests advance RACK: a fragment of a re-requested chunk may be
        // the late original, which says nothing about what was asked after it.
        if !fl.rerequested && fl.order > self.rack_order {
            self.rack_order = fl.order;
            self.rack_at = now;
        }
        if gap_below || self.rack_at == now {
            // Something may now be known lost: look again after the reorder window.
            let t = now + reorder;
            self.next_loss_check = Some(self.next_loss_check.map_or(t, |n| n.min(t)));
        }
        let whole = fl.got == fl.need;
        let enough = fl.rgot != 0 && (fl.got.count_ones() + fl.rgot.count_ones()) as usize >= n;
        if unlose {
            self.unlose_fragment();
        }
        self.note_fragments(0, 1);
        self.cc.set_inflight(self.inflight_bytes);
        self.cc.on_delivered(now, expect_len as u64);
        if whole || enough {
            if let Some(fl) = self.flights.remove(&key) {
                let shard = fec::shard_len(ct_len, per) as u64;
                let pending = outstanding_bytes(fl.outstanding, n, per, ct_len)
                    + fl.routstanding.count_ones() as u64 * shard;
                self.inflight_bytes = self.inflight_bytes.saturating_sub(pending);
                self.cc.set_inflight(self.inflight_bytes);
                // Whatever is still on its way counts as lost until it arrives (then
                // `unlose_fragment`), so reordering is not taken for loss.
                let pending_n = fl.outstanding.count_ones() + fl.routstanding.count_ones();
                self.note_fragments(pending_n as u64, 0);
                let mut buf = fl.buf;
                if !whole {
                    // Fragments asked before one that arrived are lost (they count as
                    // loss, for rate control and for how much repair to ask).
                    let data_gaps = if fl.rgot != 0 {
                        fl.outstanding
                    } else {
                        fl.outstanding & below_highest(fl.got)
                    };
                    let rep_gaps = fl.routstanding & below_highest(fl.rgot);
                    let gaps = data_gaps.count_ones() + rep_gaps.count_ones();
                    if gaps > 0 {
                        self.cc.on_lost(
                            outstanding_bytes(data_gaps, n, per, ct_len)
                                + rep_gaps.count_ones() as u64 * shard,
                        );
                    }
                    // Those asked after the last that arrived are surplus on their
                    // way or lost; arrivals count as delivered, and the measured
                    // share of them as lost, so the rate control sees the path's
                    // loss (else it would ask for less than the path carries).
                    let after = (fl.routstanding & !rep_gaps).count_ones() as f64 * shard as f64;
                    self.cc.on_lost((after * self.measured_loss()) as u64);
                    buf.resize(ct_len, 0);
                    if !self.codec.decode(&mut buf, per, fl.got, &fl.repair) {
                        // Cannot happen with k distinct fragments; ask again.
                        self.retx.push_back((p.object, p.chunk, u64::MAX));
                        return true;
                    }
                    self.stats.chunks_repaired += 1;
                }
                self.complete_chunk(p.object, p.chunk, buf);
            }
        }
        if spurious {
            self.note_spurious_loss(now);
        }
        true
    }

    /// Counts fragments found lost and received, for the loss `FecMode::Auto` sizes
    /// repair by (halved past 4000, so it follows the path within a few hundred ms).
    fn note_fragments(&mut self, lost: u64, rx: u64) {
        self.est_lost += lost as f64;
        self.est_rx += rx as f64;
        if self.est_lost + self.est_rx > 4000.0 {
            self.est_lost *= 0.5;
            self.est_rx *= 0.5;
        }
        let loss = self.measured_loss();
        let on = if self.auto_on {
            loss >= AUTO_OFF
        } else {
            loss >= AUTO_ON
        };
        if on != self.auto_on {
            self.auto_on = on;
            // Compensate heavy loss only while repair makes it worth crossing.
            let repairing = on && self.session.as_ref().is_some_and(|s| s.repair);
            self.cc
                .set_loss_cap(if repairing { REPAIR_LOSS_CAP } else { 0.3 });
        }
    }

    /// A fragment counted lost arrived after all.
    fn unlose_fragment(&mut self) {
        self.est_lost = (self.est_lost - 1.0).max(0.0);
    }

    /// Fragment loss measured (0 until 50 fragments have been counted).
    fn measured_loss(&self) -> f64 {
        let t = self.est_lost + self.est_rx;
        if t < 50.0 {
            0.0
        } else {
            self.est_lost / t
        }
    }

    /// Whether this pull asks for repair fragments now.
    fn fec_active(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.repair)
            && match self.cfg.fec {
                FecMode::Off => false,
                FecMode::Auto => self.auto_on,
                FecMode::Fixed { r, .. } => r > 0,
            }
    }

    /// Repair fragments to ask with a new chunk of `n` fragments.
    fn repair_for(&self, n: usize) -> usize {
        if !self.fec_active() {
            return 0;
        }
        let r = match self.cfg.fec {
            FecMode::Off => 0,
            FecMode::Auto => fec::fragments_for(n, self.measured_loss(), AUTO_TARGET) - n,
            FecMode::Fixed { k, r } => (n * r as usize).div_ceil(k.max(1) as usize),
        };
        r.min(fec::MAX_REPAIR)
    }

    fn complete_chunk(&mut self, o: Object, chunk: u32, mut buf: Vec<u8>) {
        let index = chunk as u64;
        if o == Object::Content && self.have.len() > 1 && self.cvs.is_empty() {
            // Nothing to check it against yet: keep it until the outboard is complete.
            self.early.push((chunk, buf));
            return;
        }
        if o == Object::Content && self.cfg.offload_verify {
            if let Some(verifier) = self.verifier() {
                self.verifying += 1;
                self.events.push_back(PullEvent::Verify {
                    index,
                    ct: buf,
                    verifier,
                });
                return;
            }
        }
        let Some(sess) = &self.session else { return };
        if !sess.cipher.open(o, index, &mut buf) {
            self.chunk_damaged(o, index);
            return;
        }
        match o {
            Object::Outboard => {
                let Some(start) = index
                    .checked_sub(self.ob_first)
                    .map(|k| k as usize * CHUNK_SIZE)
                else {
                    return;
                };
                if let Some(dst) = self.outboard.get_mut(start..start + buf.len()) {
                    dst.copy_from_slice(&buf);
                    self.have_outboard.insert(index);
                }
                if !self.outboard_complete() {
                    return;
                }
            }
            Object::Content => {
                let cv = merkle::chunk_cv(index, &buf, self.size);
                let expected = if self.have.len() == 1 {
                    self.root
                } else {
                    index
                        .checked_sub(self.cv_first)
                        .and_then(|i| self.cvs.get(i as usize))
                        .copied()
                };
                if Some(cv) != expected {
                    self.chunk_failed(index);
                    return;
                }
                if self.have.insert(index) {
                    self.stats.content_bytes += buf.len() as u64;
                    self.events.push_back(PullEvent::Chunk { index, data: buf });
                }
            }
        }
        self.check_done();
    }

    /// Once every outboard chunk is held: checks the outboard against the root (and,
    /// live, against the CVs already verified) and verifies the content chunks that
    /// waited for it. False when the pull failed.
    fn outboard_complete(&mut self) -> bool {
        if !self.have_outboard.is_full() || !self.cvs.is_empty() || self.outboard.is_empty() {
            return true;
        }
        let Some(root) = self.root else {
            return true;
        };
        let mut cvs: Vec<Hash> = Vec::new();
        if cvs.try_reserve_exact(self.outboard.len() / 32).is_err() {
            self.fail(PullError::TooLarge { size: self.size });
            return false;
        }
        cvs.extend(self.outboard.chunks_exact(32).map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        }));
        let consistent = match &self.live_round {
            None => merkle::root_from_cvs(&cvs, self.size) == root,
            // The frontier of what the follower holds, with the CVs after it: the
            // root commits to every byte already written.
            Some(r) => {
                let from = (r.frontier.at() - self.cv_first) as usize;
                r.frontier
                    .root_with(cvs.get(from..).unwrap_or(&[]), self.size)
                    == root
            }
        };
        if !consistent {
            self.fail(if self.cfg.live.is_some() {
                PullError::BadCheckpoint {
                    what: "its root does not match its chunk CVs",
                }
            } else {
                PullError::BadOutboard
            });
            return false;
        }
        if let Some(r) = &self.live_round {
            let from = (r.frontier.at() - self.cv_first) as usize;
            if cvs.get(from..from + r.recent.len()) != Some(&r.recent[..]) {
                self.fail(PullError::BadCheckpoint {
                    what: "it changes the CV of a chunk already verified",
                });
                return false;
            }
        }
        self.cvs = std::sync::Arc::new(cvs);
        self.outboard = Vec::new();
        for (c, b) in std::mem::take(&mut self.early) {
            self.complete_chunk(Object::Content, c, b);
        }
        let now = self.last_rx;
        for d in std::mem::take(&mut self.deferred_group) {
            self.on_data(now, &d, true);
        }
        true
    }

    /// A live round's start: the complete chunks held are not asked for, nor the
    /// outboard chunks before the follower's frontier.
    fn take_live_base(&mut self) {
        let Some(held) = self.live_round.as_ref().map(|r| r.held) else {
            return;
        };
        // A checkpoint that did not grow: its root must be that of the bytes held,
        // and nothing is fetched (an idle stream's rounds cost a handshake only).
        let unchanged = self
            .live_round
            .as_ref()
            .and_then(|r| r.held_root)
            .filter(|(len, _)| *len == self.size);
        if let (Some((_, root)), Some(m)) = (unchanged, self.root) {
            if root != m {
                self.fail(PullError::BadCheckpoint {
                    what: "its root is not that of the bytes already verified",
                });
                return;
            }
            let (n, ob) = (self.have.len(), self.have_outboard.len());
            self.have.insert_range(0, n);
            self.have_outboard.insert_range(0, ob);
            self.check_done();
            return;
        }
        if self.have.len() <= 1 {
            // One chunk: checked against the root itself (the follower checks that
            // it repeats what it holds).
            return;
        }
        self.have.insert_range(0, held);
        self.have_outboard.insert_range(0, self.ob_first);
        if self.outboard_complete() {
            self.check_done();
        }
    }

    /// The window this live round joined at (its follower held nothing, and the
    /// exposer no longer holds the stream's start).
    pub fn live_joined(&self) -> Option<&crate::live::Window> {
        self.live_round.as_ref().and_then(|r| r.joined.as_ref())
    }

    /// Whether the last manifest was a live checkpoint (not the final one).
    pub fn is_live_checkpoint(&self) -> bool {
        self.live_manifest
    }

    /// The checkpoint (or content) this puller pulls: size and root.
    pub fn checkpoint(&self) -> Option<(u64, Hash)> {
        self.root.map(|r| (self.size, r))
    }

    /// The session's verifier, made once the outboard is known.
    fn verifier(&mut self) -> Option<std::sync::Arc<ChunkVerifier>> {
        let single = self.have.len() == 1;
        let root = self.root?;
        let size = self.size;
        if !single && self.cvs.is_empty() {
            return None;
        }
        let cvs = self.cvs.clone();
        let sess = self.session.as_mut()?;
        if sess.verifier.is_none() {
            sess.verifier = Some(std::sync::Arc::new(ChunkVerifier {
                cipher: session_cipher(&sess.m, sess.live),
                cvs,
                cv_first: self.cv_first,
                root,
                size,
            }));
        }
        sess.verifier.clone()
    }

    /// With `offload_verify`: the outcome of a [`PullEvent::Verify`] (`Ok` with the
    /// plaintext's length). A chunk that failed is asked for again; only one that
    /// opened and did not match counts toward `BadContent`, as inline.
    pub fn chunk_verified(&mut self, index: u64, outcome: Result<usize, BadChunk>) {
        self.verifying = self.verifying.saturating_sub(1);
        match outcome {
            Ok(len) => {
                self.failures.remove(&index);
                if self.have.insert(index) {
                    self.stats.content_bytes += len as u64;
                }
                self.check_done();
            }
            Err(BadChunk::Damaged) => self.chunk_damaged(Object::Content, index),
            Err(BadChunk::Mismatch) => self.chunk_failed(index),
        }
    }

    /// Chunks handed out for verification and not yet reported.
    pub fn verifying(&self) -> usize {
        self.verifying
    }

    /// Asks the driver to check resumed chunks once a verifier exists.
    fn maybe_recheck(&mut self) {
        if !matches!(self.recheck, Recheck::Wanted(_)) {
            return;
        }
        let Some(verifier) = self.verifier() else {
            return;
        };
        if let Recheck::Wanted(stored) = std::mem::replace(&mut self.recheck, Recheck::Pending) {
            self.events
                .push_back(PullEvent::Recheck { verifier, stored });
        }
    }

    /// A resumed chunk turned out damaged: pull it again.
    pub fn forget_chunk(&mut self, index: u64) {
        // A scheduled source asks for it only when granted again.
        if self.have.remove(index) && !self.cfg.scheduled {
            self.retx
                .push_back((Object::Content, index as u32, u64::MAX));
        }
    }

    /// The driver finished the check asked by `PullEvent::Recheck`.
    pub fn recheck_done(&mut self) {
        if self.recheck == Recheck::Pending {
            self.recheck = Recheck::None;
            self.check_done();
        }
    }

    /// Counts a chunk that does not open under the session's key and asks for it
    /// again; a scheduled source that keeps sending such chunks is failed.
    fn chunk_damaged(&mut self, o: Object, index: u64) {
        self.stats.bad_chunks += 1;
        let delivered = self.stats.content_bytes / CHUNK_SIZE as u64;
        if self.cfg.scheduled && self.stats.bad_chunks > MAX_DAMAGED_FROM_SOURCE + delivered / 4 {
            self.fail(PullError::BadSource { chunk: index });
            return;
        }
        self.retx.push_back((o, index as u32, u64::MAX));
    }

    /// Counts a chunk that failed verification; fails the pull when it keeps failing.
    fn chunk_failed(&mut self, index: u64) {
        self.stats.bad_chunks += 1;
        if self.cfg.scheduled {
            // It opened under this source's key and is not the root's: the source
            // lies (or its file changed). Other sources take its chunks.
            self.fail(PullError::BadSource { chunk: index });
            return;
        }
        let n = self.failures.entry(index).or_insert(0);
        *n += 1;
        if *n >= MAX_CHUNK_FAILURES {
            self.fail(PullError::BadContent { chunk: index });
        } else {
            self.retx
                .push_back((Object::Content, index as u32, u64::MAX));
        }
    }

    fn check_done(&mut self) {
        self.maybe_recheck();
        if self.recheck != Recheck::None {
            return;
        }
        if matches!(self.phase, Phase::Transfer) && self.have.is_full() {
            self.phase = Phase::Finished;
            self.events.push_back(PullEvent::Done);
        }
    }

    // ---------------------------------------------------------------- timers

    /// Whether the exposer has answered at least once.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// How long a silence ends the pull: `idle_timeout` once the exposer has answered,
    /// else the (shorter) `connect_timeout`.
    fn silence_limit(&self) -> Duration {
        if self.answered {
            self.cfg.idle_timeout
        } else {
            self.cfg.connect_timeout.min(self.cfg.idle_timeout)
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.last_rx + self.silence_limit();
        let t = match &self.phase {
            Phase::Finished => return None,
            Phase::Handshake {
                sent_at, attempts, ..
            } => {
                if self.pending_hello {
                    return Some(self.next_send.min(idle));
                }
                sent_at.map(|s| s + hello_rto(*attempts, self.answered))
            }
            Phase::Transfer => {
                let send = if self.can_request() {
                    Some(self.next_send)
                } else {
                    None
                };
                let group = (self.member && self.member_requests >= GROUP_SILENT_REQUESTS)
                    .then(|| self.last_group_rx + GROUP_SILENCE.max(self.cc.srtt() * 4));
                [send, self.next_loss_check, group]
                    .into_iter()
                    .flatten()
                    .min()
            }
        };
        Some(t.map_or(idle, |t| t.min(idle)))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Finished) {
            return;
        }
        if now >= self.last_rx + self.silence_limit() {
            self.fail(PullError::Timeout);
            return;
        }
        match &mut self.phase {
            Phase::Handshake {
                sent_at, attempts, ..
            } => {
                if let Some(s) = *sent_at {
                    if now >= s + hello_rto(*attempts, self.answered) {
                        self.pending_hello = true;
                        // A RETRY is unauthenticated: if the HELLO it asked for went
                        // unanswered, the cookie may be a spoof; go without it (a busy
                        // exposer sends a fresh one).
                        if let Phase::Handshake { token, .. } = &mut self.phase {
                            token.clear();
                        }
                    }
                }
            }
            Phase::Transfer => {
                self.check_group(now);
                self.detect_losses(now);
            }
            Phase::Finished => {}
        }
    }

    fn detect_losses(&mut self, now: Instant) {
        match self.next_loss_check {
            Some(t) if now >= t => {}
            _ => return,
        }
        if self.reo_steps > 1
            && now.saturating_duration_since(self.reo_changed) >= self.cc.srtt() * 16
        {
            self.reo_steps -= 1;
            self.reo_changed = now;
        }
        let mut next: Option<Instant> = None;
        let mut lost_any = false;
        let mut lost = Vec::new();
        let window = self.reorder_window();
        let rack_ripe = self.rack_at + window;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for (&key, fl) in self.flights.iter_mut() {
            if fl.outstanding == 0 && fl.routstanding == 0 {
                if fl.group {
                    // Begun by the group and stalled: ask for what is missing.
                    if now >= fl.deadline {
                        fl.group = false;
                        lost.push((key, fl.need & !fl.got, 0, false));
                    } else {
                        soonest(fl.deadline);
                    }
                }
                continue;
            }
            // Fragments lost from a request of which something arrived: the path's
            // fragment loss, which repair covers (a lost REQUEST loses them all, and
            // repair cannot help that: asking again does).
            let partial = fl.fresh != 0 || fl.rfresh != 0;
            if now >= fl.deadline {
                if fl.got == 0 && fl.rgot == 0 && !fl.rerequested {
                    fl.timed_out_from = Some(fl.sent_at);
                }
                lost.push((key, fl.outstanding, fl.routstanding, partial));
                fl.outstanding = 0;
                fl.routstanding = 0;
                lost_any = true;
                continue;
            }
            soonest(fl.deadline);
            // Asked before something that has arrived since: lost, once reordering
            // had its chance.
            if fl.order < self.rack_order {
                if now >= rack_ripe {
                    lost.push((key, fl.outstanding, fl.routstanding, partial));
                    fl.reo_lost |= fl.outstanding;
                    fl.outstanding = 0;
                    fl.routstanding = 0;
                    continue;
                }
                soonest(rack_ripe);
            }
            // A later fragment of the same chunk arrived: the earlier ones are lost
            // (repair fragments follow all data fragments of their request).
            if let (Some(rx), true) = (fl.last_rx, fl.fresh != 0 || fl.rfresh != 0) {
                let (below, rbelow) = if fl.rfresh != 0 {
                    (fl.outstanding, fl.routstanding & below_highest(fl.rfresh))
                } else {
                    (fl.outstanding & below_highest(fl.fresh), 0)
                };
                if below != 0 || rbelow != 0 {
                    if now >= rx + window {
                        lost.push((key, below, rbelow, true));
                        fl.reo_lost |= below;
                        fl.outstanding &= !below;
                        fl.routstanding &= !rbelow;
                    } else {
                        soonest(rx + window);
                    }
                }
            }
        }
        // In chunk order, not the hash map's: what is asked for again, and in which
        // order, must not depend on a hasher's seed.
        lost.sort_unstable_by_key(|&(key, _, _, _)| key);
        for ((o, c), mask, rmask, partial) in lost {
            let (n, per, ct) = self.geometry(o, c as u64);
            let bytes = outstanding_bytes(mask, n, per, ct)
                + rmask.count_ones() as u64 * fec::shard_len(ct, per) as u64;
            self.inflight_bytes = self.inflight_bytes.saturating_sub(bytes);
            self.cc.on_lost(bytes);
            if partial {
                self.note_fragments((mask.count_ones() + rmask.count_ones()) as u64, 0);
            }
            self.retx.push_back((o, c, mask));
        }
        if lost_any && now.saturating_duration_since(self.last_rx) >= self.cc.rto() {
            // Nothing at all got through for a whole timeout: back off (blackout or a
            // dead exposer) so an outage costs a trickle of probes, not a flood.
            self.cc.on_timeout();
        }
        self.next_loss_check = next;
    }

    /// How long a later arrival must precede declaring an earlier request lost.
    fn reorder_window(&self) -> Duration {
        let step =
            (self.cc.min_rtt() / 4).clamp(Duration::from_millis(1), Duration::from_millis(25));
        (step * self.reo_steps).min(self.cc.srtt().max(step))
    }

    /// A fragment declared lost by the reordering rules arrived before its second
    /// request could have been answered: widen the reorder window, once per round trip
    /// (RACK does the same on a DSACK).
    fn note_spurious_loss(&mut self, now: Instant) {
        self.stats.spurious_losses += 1;
        if now.saturating_duration_since(self.reo_changed) >= self.cc.srtt() {
            self.reo_steps = (self.reo_steps + 1).min(16);
            self.reo_changed = now;
        }
    }

    // ---------------------------------------------------------------- sending

    /// What one request asks for: about 1 ms of data, at most 4 MiB, and on a path
    /// with under 1 % loss at least MIN_REQUEST: a request costs the exposer a
    /// datagram, two AEAD opens, a burst of sends and a wake-up whatever its size, and
    /// many pullers sharing one exposer would otherwise each ask a chunk at a time. Not
    /// on lossy paths: a lost request loses all it asked for until detected.
    fn request_quantum(&self) -> u64 {
        let q = (self.cc.pacing_rate() * 0.001) as u64;
        let floor = if self.cc.loss() < 0.01 {
            MIN_REQUEST
        } else {
            CHUNK_SIZE as u64
        };
        q.clamp(floor, 4 << 20)
    }

    /// Work to ask for, and room in the window: for a re-request, any; for new data,
    /// a full request (or half the window, whichever is less), so a window that frees
    /// a chunk at a time is not refilled a chunk at a time, one request each.
    fn can_request(&self) -> bool {
        let window = self.cc.window();
        let room = window.saturating_sub(self.inflight_bytes);
        if !self.retx.is_empty() {
            return room > 0;
        }
        if !self.has_new_work() {
            return false;
        }
        room >= self.request_quantum().min(window / 2).max(1)
    }

    /// What new requests ask for: the outboard first, then content. Content starts as
    /// soon as all of the outboard has been asked for, not when it has all arrived: a
    /// lost outboard fragment at the end would otherwise idle the path until its
    /// timeout, with nothing sent after it to reveal the loss sooner.
    fn current_object(&self) -> Object {
        let ob = Object::Outboard;
        if self
            .have_outboard
            .first_missing_from(self.cursor[obj_idx(ob)])
            .is_some()
        {
            ob
        } else {
            Object::Content
        }
    }

    fn has_new_work(&self) -> bool {
        let o = self.current_object();
        if o == Object::Content
            && !self.have_outboard.is_full()
            && self.early.len() as u64 * CHUNK_SIZE as u64 + self.inflight_bytes
                >= EARLY_CONTENT_LIMIT
        {
            // Content waiting for the outboard is held in memory: bounded.
            return false;
        }
        if self.cfg.scheduled && o == Object::Content {
            return self
                .grant
                .iter()
                .any(|&c| !self.have.contains(c as u64) && !self.flights.contains_key(&(o, c)));
        }
        let set = self.object_set(o);
        set.first_missing_from(self.cursor[obj_idx(o)]).is_some()
    }

    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        match &mut self.phase {
            Phase::Finished => None,
            Phase::Handshake {
                init,
                token,
                sent_at,
                attempts,
            } => {
                if let Some(pkt) = self.request_copy.take() {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += pkt.len() as u64;
                    return Some(Transmit::single(self.cfg.remote, pkt));
                }
                if !self.pending_hello || now < self.next_send {
                    return None;
                }
                if self.cfg.name.len() > wire::MAX_NAME_LEN {
                    self.fail(PullError::NameTooLong);
                    return None;
                }
                self.pending_hello = false;
                if init.is_none() {
                    *init = Initiator::start_with_rng(
                        &self.cfg.name,
                        self.cfg.asked_datagram(),
                        self.cfg.offer(),
                        &mut self.rng,
                    )
                    .ok()
                    .map(Box::new);
                }
                let (_, msg1) = init.as_deref()?;
                *sent_at = Some(now);
                *attempts += 1;
                let pkt = Hello {
                    max_datagram: self.cfg.asked_datagram(),
                    token,
                    name: &self.cfg.name,
                    noise: msg1,
                }
                .encode();
                self.stats.datagrams_out += 1;
                self.stats.bytes_out += pkt.len() as u64;
                if *attempts > 1 && self.cfg.fec != FecMode::Off {
                    // The first HELLO went unanswered: on a path that loses half of
                    // each way a round trip succeeds one time in four, so send two
                    // (the same message 1: the exposer's answers are equal, and the
                    // puller takes the first; each WELCOME is smaller than a HELLO).
                    self.request_copy = Some(pkt.clone());
                }
                Some(Transmit::single(self.cfg.remote, pkt))
            }
            Phase::Transfer => {
                if self.retx.is_empty()
                    && !self.has_new_work()
                    && self.inflight_bytes < self.cc.window()
                {
                    self.cc.mark_app_limited();
                }
                if let Some(pkt) = self.request_copy.take() {
                    if self.copies_left > 0 {
                        self.copies_left -= 1;
                        self.request_copy = Some(pkt.clone());
                    }
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += pkt.len() as u64;
                    return Some(Transmit::single(self.cfg.remote, pkt));
                }
                if let Some(items) = self.tail_copy.take() {
                    return self.seal_request(now, &items);
                }
                if now < self.next_send || !self.can_request() {
                    return None;
                }
                self.check_group(now);
                self.build_request(now)
            }
        }
    }

    fn build_request(&mut self, now: Instant) -> Option<Transmit> {
        let sess = self.session.as_ref()?;
        let max_dg = sess.m.max_datagram as usize;
        let header_len = 2 + 16 + 1 + sess.m.token.len() + 8 + 8;
        let room = max_dg.saturating_sub(header_len + 2 + TAG_LEN);
        let max_items = (room / RequestItem::FRAGMENTS_LEN).min(wire::MAX_REQUEST_ITEMS);
        let rate = self.cc.pacing_rate();
        // Within the window and the exposer's per-request cap.
        let window_room = self.cc.window().saturating_sub(self.inflight_bytes);
        let quantum = self
            .request_quantum()
            .min(window_room.max(CHUNK_SIZE as u64));
        // A chunk is late when it has not come by the retransmission timeout, or, when
        // a queue holds the bytes requested before it, by the time that queue takes to
        // drain at the measured rate (with margin): queueing is not loss.
        // Bounded: an early, low bandwidth estimate must not park a chunk for seconds.
        let srtt = self.cc.srtt().as_secs_f64();
        let bw = self
            .cc
            .bandwidth()
            .max(crate::cc::MIN_WINDOW as f64 / srtt.max(1e-4));
        let drain = ((self.inflight_bytes + quantum) as f64 / bw * 1.5).min(3.0 * srtt);
        let rto = self
            .cc
            .rto()
            .max(self.cc.min_rtt() + Duration::from_secs_f64(drain));
        let fec_on = self.fec_active();
        let loss = self.measured_loss();
        let mut items: Vec<RequestItem> = Vec::new();
        let mut bytes = 0u64;
        // A re-request may add two items.
        while bytes < quantum && items.len() + 1 < max_items {
            if let Some((o, c, mask)) = self.retx.pop_front() {
                let set = self.object_set(o);
                if c as u64 >= set.len() || set.contains(c as u64) {
                    continue;
                }
                let (n, per, ct) = self.geometry(o, c as u64);
                let all = bits(n);
                let fl = self
                    .flights
                    .entry((o, c))
                    .or_insert_with(|| Flight::unasked(all, now));
                let (want, rwant) = if fec_on {
                    // Any n distinct fragments make the chunk: ask for enough fresh
                    // ones (repair not yet asked for, then missing data fragments)
                    // that the rest arrive with probability RETX_TARGET.
                    let have = (fl.got.count_ones() + fl.rgot.count_ones()) as usize;
                    let pending =
                        (fl.outstanding.count_ones() + fl.routstanding.count_ones()) as usize;
                    let need = n.saturating_sub(have);
                    let t = fec::fragments_for(need, loss, RETX_TARGET).saturating_sub(pending);
                    let r = t.min(fec::MAX_REPAIR - fl.rnext as usize);
                    let rwant = if r == 0 { 0 } else { bits(r) << fl.rnext };
                    // Past the 64 repair fragments: the missing data fragments.
                    let want = if r < t {
                        all & !fl.got & !fl.outstanding
                    } else {
                        0
                    };
                    (want, rwant)
                } else {
                    // Nothing on its way (repair asked while repair was on was
                    // lost, say): every missing data fragment, or it would wait for good.
                    let mask = if fl.outstanding == 0 && fl.routstanding == 0 {
                        all
                    } else {
                        mask
                    };
                    (mask & all & !fl.got & !fl.outstanding, 0)
                };
                if want == 0 && rwant == 0 {
                    continue;
                }
                fl.outstanding |= want;
                fl.routstanding |= rwant;
                fl.fresh = 0;
                fl.rfresh = 0;
                fl.sent_at = now;
                fl.deadline = now + rto;
                fl.rerequested = true;
                self.next_order += 1;
                fl.order = self.next_order;
                self.stats.rerequested_fragments += (want.count_ones() + rwant.count_ones()) as u64;
                let b = outstanding_bytes(want, n, per, ct)
                    + rwant.count_ones() as u64 * fec::shard_len(ct, per) as u64;
                bytes += b;
                self.inflight_bytes += b;
                if rwant != 0 {
                    let first = fl.rnext;
                    let count = rwant.count_ones() as u8;
                    fl.rnext += count;
                    if want != 0 {
                        items.push(RequestItem::Fragments {
                            object: o,
                            chunk: c,
                            mask: want,
                        });
                    }
                    items.push(RequestItem::Repair {
                        object: o,
                        chunk: c,
                        first,
                        count,
                    });
                    continue;
                }
                items.push(if want == all && fl.got == 0 {
                    RequestItem::Range {
                        object: o,
                        start: c,
                        count: 1,
                    }
                } else {
                    RequestItem::Fragments {
                        object: o,
                        chunk: c,
                        mask: want,
                    }
                });
                continue;
            }
            let o = self.current_object();
            if self.cfg.scheduled && o == Object::Content {
                // Only what was granted, in runs of consecutive chunks.
                while let Some(&c) = self.grant.front() {
                    if self.have.contains(c as u64) || self.flights.contains_key(&(o, c)) {
                        self.grant.pop_front();
                    } else {
                        break;
                    }
                }
                let Some(&first) = self.grant.front() else {
                    break;
                };
                if self.flights.contains_key(&(o, first)) {
                    break;
                }
                let (start, mut end) = (first as u64, first as u64);
                // As much repair as the first chunk of the run needs, as below.
                let repair = self.repair_for(self.geometry(o, start).0);
                let mut run_bytes = 0u64;
                while let Some(&c) = self.grant.front() {
                    let (n, per, ct) = self.geometry(o, end);
                    if c as u64 != end
                        || bytes + run_bytes >= quantum
                        || self.have.contains(end)
                        || self.flights.contains_key(&(o, c))
                        || self.repair_for(n) != repair
                    {
                        break;
                    }
                    self.grant.pop_front();
                    run_bytes += (ct + repair * fec::shard_len(ct, per)) as u64;
                    end += 1;
                }
                if end == start {
                    break;
                }
                items.push(self.start_run(o, start, end, repair, now, rto));
                bytes += run_bytes;
                self.inflight_bytes += run_bytes;
                continue;
            }
            let set = self.object_set(o);
            let Some(start) = set.first_missing_from(self.cursor[obj_idx(o)]) else {
                break;
            };
            if self.flights.contains_key(&(o, start as u32)) {
                // Asked for again before the cursor reached it (a stored chunk that
                // failed the resume check, a failed verification): its flight holds
                // it and counts its bytes; a second flight would replace the first and
                // leave those bytes counted in flight for good.
                self.cursor[obj_idx(o)] = start + 1;
                continue;
            }
            // Extend the run while chunks are missing, not in flight, ask for as much
            // repair as the first, and the quantum allows.
            let repair = self.repair_for(self.geometry(o, start).0);
            let mut end = start;
            let mut run_bytes = 0u64;
            while end < set.len()
                && !set.contains(end)
                && !self.flights.contains_key(&(o, end as u32))
                && bytes + run_bytes < quantum
            {
                let (n, per, ct) = self.geometry(o, end);
                if self.repair_for(n) != repair {
                    break;
                }
                run_bytes += (ct + repair * fec::shard_len(ct, per)) as u64;
                end += 1;
            }
            if end == start {
                break;
            }
            items.push(self.start_run(o, start, end, repair, now, rto));
            self.cursor[obj_idx(o)] = end;
            bytes += run_bytes;
            self.inflight_bytes += run_bytes;
        }
        if items.is_empty() {
            return None;
        }
        let deadline = now + rto;
        self.next_loss_check = Some(self.next_loss_check.map_or(deadline, |t| t.min(deadline)));
        self.next_send = now + Duration::from_secs_f64(bytes as f64 / rate.max(1.0));
        if !self.has_new_work() && self.cc.loss() >= 0.01 {
            // The tail of a lossy pull: what is asked for now is what the pull waits
            // for, and each loss costs another round trip. Ask twice (two requests): a
            // fragment is then missing only if both copies are lost.
            self.tail_copy = Some(items.clone());
        }
        self.seal_request(now, &items)
    }

    /// Flights for the first request of chunks `start..end` of `o`, and the item
    /// asking for them.
    fn start_run(
        &mut self,
        o: Object,
        start: u64,
        end: u64,
        repair: usize,
        now: Instant,
        rto: Duration,
    ) -> RequestItem {
        for c in start..end {
            self.next_order += 1;
            let (n, _, _) = self.geometry(o, c);
            let all = bits(n);
            self.flights.insert(
                (o, c as u32),
                Flight {
                    outstanding: all,
                    deadline: now + rto,
                    rerequested: false,
                    order: self.next_order,
                    routstanding: bits(repair),
                    rnext: repair as u8,
                    ..Flight::unasked(all, now)
                },
            );
        }
        if repair == 0 {
            RequestItem::Range {
                object: o,
                start: start as u32,
                count: (end - start) as u32,
            }
        } else {
            RequestItem::RangeRepair {
                object: o,
                start: start as u32,
                count: (end - start) as u32,
                repair: repair as u8,
            }
        }
    }

    /// A REQUEST datagram carrying `items` under the next sequence number.
    fn seal_request(&mut self, now: Instant, items: &[RequestItem]) -> Option<Transmit> {
        let sess = self.session.as_ref()?;
        self.seq += 1;
        // The exposer's clock now, as far as we know: it lags by the WELCOME's one-way
        // delay, which only makes the REQUEST look older.
        let since = now.saturating_duration_since(sess.welcomed_at).as_millis() as u64;
        let stamp = sess.m.clock_ms.saturating_add(since);
        let member = self.member && sess.group.is_some();
        if member {
            self.member_requests += 1;
        }
        let mut pkt =
            Request::encode_header_as(member, &sess.m.exposure, &sess.m.token, self.seq, stamp);
        let header = pkt.clone();
        sess.sealer
            .seal(self.seq, &header, &wire::encode_items(items), &mut pkt);
        self.stats.requests += 1;
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += pkt.len() as u64;
        if self.fec_active() {
            self.request_copy = Some(pkt.clone());
            // From 20 % loss a REQUEST goes three times: lost 2.7 % of the time at
            // 30 % and 12.5 % at 50 %, against 9 % and 25 % with two (a lost one
            // costs a timeout); a REQUEST is ~1 % of the bytes it asks for.
            self.copies_left = u8::from(self.measured_loss() >= 0.2);
        }
        Some(Transmit::single(self.cfg.remote, pkt))
    }
}

/// `FecMode::Auto` asks for repair from AUTO_ON measured fragment loss on (until it
/// falls below AUTO_OFF), enough that each chunk arrives whole with probability
/// AUTO_TARGET (RETX_TARGET for what is asked again: those chunks hold the pull's
/// end). Below it, asking again is as fast (the simulator's 5-10 % pulls were not
/// faster with repair), and reordering, which looks like loss, costs no surplus.
const AUTO_ON: f64 = 0.15;
const AUTO_OFF: f64 = 0.10;
const AUTO_TARGET: f64 = 0.4;
const RETX_TARGET: f64 = 0.8;

/// A group member that sent this many GROUP REQUESTs, and heard nothing from the
/// group for GROUP_SILENCE, leaves the group (`Puller::check_group`).
const GROUP_SILENT_REQUESTS: u64 = 4;
const GROUP_SILENCE: Duration = Duration::from_millis(500);

/// A group member losing this share of the fragments it asks for (measured over at
/// least GROUP_LOSS_SAMPLES fragments) cannot take the group's rate and leaves it
/// for unicast. Loss every member shares (a lossy LAN) is repaired on the group;
/// this floor is above it (repair serves members well at 20 %), and far below what
/// a member behind a link at a quarter of the group's rate loses (75 %).
const GROUP_LOSS_FLOOR: f64 = 0.4;
const GROUP_LOSS_SAMPLES: f64 = 500.0;

/// Most flights (a chunk being assembled) that group datagrams may begin: a member
/// holds at most this many partial chunks it did not ask for (64 MiB at most), so
/// datagrams forged on the LAN cannot make it commit more.
const MAX_GROUP_FLIGHTS: usize = 4096;

/// Loss the rate control compensates for when repair fragments are in use.
const REPAIR_LOSS_CAP: f64 = 0.75;

/// A mask of the `n` lowest bits (n ≤ 64).
fn bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The bits of `mask`'s lower than its highest set bit (none for an empty mask).
fn below_highest(mask: u64) -> u64 {
    if mask == 0 {
        0
    } else {
        let h = 63 - mask.leading_zeros();
        (1u64 << h) - 1
    }
}

/// Most content bytes held or in flight before the outboard is complete.
const EARLY_CONTENT_LIMIT: u64 = 16 << 20;

/// Smallest request worth sending when the window has room for it.
const MIN_REQUEST: u64 = 64 * 1024;

/// Bytes of the fragments in `mask` for a chunk of `n` fragments.
fn outstanding_bytes(mask: u64, n: usize, per: usize, ct_len: usize) -> u64 {
    if mask == 0 {
        return 0;
    }
    let last_bit = 1u64 << (n - 1);
    let full = (mask & !last_bit).count_ones() as u64 * per as u64;
    let last = if mask & last_bit != 0 {
        (ct_len - (n - 1) * per) as u64
    } else {
        0
    };
    full + last
}

/// HELLO retransmission: 250 ms doubling to 2 s, or to 1 s while the exposer has
/// never answered: until then the pull gives up after `connect_timeout`, so on a lossy
/// path the HELLOs must be many enough within it (10 in the default 10 s; at 30 % loss
/// each way all of them fail one time in about 800).
fn hello_rto(attempts: u32, answered: bool) -> Duration {
    let cap = if answered { 3 } else { 2 };
    Duration::from_millis(250 << attempts.saturating_sub(1).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A multi-source pull's totals carry the repair counters too (`--json` reads them).
    #[test]
    fn stats_totals_include_repair() {
        let one = PullStats {
            repair_fragments: 3,
            chunks_repaired: 2,
            surplus_repair: 1,
            rerequested_fragments: 5,
            ..Default::default()
        };
        let mut t = PullStats::default();
        t.add(&one);
        t.add(&one);
        assert_eq!(
            (
                t.repair_fragments,
                t.chunks_repaired,
                t.surplus_repair,
                t.rerequested_fragments
            ),
            (6, 4, 2, 10)
        );
    }
}

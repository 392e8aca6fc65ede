//! Connections: TCP-style reliable byte streams over RGTP (docs/PROTOCOL-connections.md).
//!
//! A connection is two byte streams, one per direction. Each direction works like a
//! growing exposure pulled by its reader: the writer cuts bytes into stream frames as
//! they are written, the reader grants credit ahead of time (so a small write leaves at
//! once, without a request round trip), acknowledges what it holds and asks again for
//! gaps after an RTT-derived timeout. The writer buffers only what the credit allows, so
//! memory is bounded on both sides and a slow reader makes the writer wait.
//!
//! Layers:
//! - [`wire`]: strict packet and frame codecs (types 16..=31, beside the file pull's 1..7);
//! - [`noise`]: the Noise `XX` handshake;
//! - [`stream`]: send and receive buffers;
//! - `connection`: one connection's state machine (sans-IO);
//! - `liveness`: keep-alive PINGs and how long a silent peer is waited for;
//! - `half_open` and `admission`: the server's half-open handshakes and who gets
//!   RETRYs and Diffie-Hellman work while busy (handshake floods);
//! - [`Endpoint`]: demultiplexes connections by connection ID, listens and accepts,
//!   answers statelessly (RETRY, REFUSE, STATELESS_RESET), runs timers (sans-IO);
//! - [`runtime`]: the one driver over real UDP sockets: the engine thread, the
//!   blocking `RgtpStream` / `RgtpListener`, and bridges between connections and
//!   kernel stream fds (what the LD_PRELOAD shim uses).

mod admission;
mod connection;
mod endpoint;
mod half_open;
mod liveness;
#[doc(hidden)]
pub mod noise;
pub mod runtime;
#[doc(hidden)]
pub mod stream;
#[doc(hidden)]
pub mod wire;

use std::io;
use std::time::Duration;

pub use connection::ConnStats;
pub use endpoint::{ConnectOptions, Endpoint, EndpointStats};
pub use runtime::{ListenerOptions, RgtpListener, RgtpStream, StreamOptions};

use crate::keys::StaticKey;

/// A connection's handle inside one [`Endpoint`]. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(
    /// The endpoint-local number (not a wire connection ID).
    pub u64,
);

/// What happened to a connection; drained with [`Endpoint::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake finished (client side).
    Connected,
    /// A new connection finished its handshake and waits in the accept queue.
    Incoming,
    /// `read` may return something other than `WouldBlock` now. Sent once after each
    /// `read` that returned `WouldBlock` (edge-triggered, like EPOLLET).
    Readable,
    /// `write` may accept bytes now, or an awaited flush completed. Sent once after
    /// each `write` that returned `WouldBlock` or a short count, and after a
    /// `send_complete` query that returned false.
    Writable,
    /// The connection ended: `None` when both directions finished (or, after `close`,
    /// when the peer acknowledged every byte), else why it failed. Sent exactly once.
    Closed {
        /// Why it failed; `None`: it ended gracefully.
        error: Option<io::ErrorKind>,
    },
}

/// Coarse connection state, for queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Handshake in progress (client side).
    Connecting,
    /// Established: bytes flow (possibly one direction already finished).
    Connected,
    /// Ended; `error` says why (`None`: gracefully).
    Closed {
        /// Why it failed; `None`: it ended gracefully.
        error: Option<io::ErrorKind>,
    },
}

/// Readiness of a connection, in the terms of `poll(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// `read` would not return `WouldBlock` (data, EOF or an error).
    pub readable: bool,
    /// `write` would accept at least one byte (or fail at once).
    pub writable: bool,
    /// Bytes `read` can return now.
    pub readable_bytes: usize,
    /// Bytes `write` can take now.
    pub writable_bytes: u64,
    /// The peer finished its direction (EOF after the buffered bytes).
    pub read_closed: bool,
    /// The connection has ended.
    pub closed: bool,
    /// Why it ended, if it failed.
    pub error: Option<io::ErrorKind>,
}

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Largest datagram sent over a non-loopback path (1200 crosses any Internet path).
    pub max_datagram: usize,
    /// Largest datagram sent when the peer is a loopback address (the loopback
    /// interface's MTU is 64 KiB, as TCP uses there).
    pub loopback_max_datagram: usize,
    /// Receive window: the credit granted ahead of the application's reads, and the
    /// bound on the memory each direction's buffers use, at first.
    pub recv_window: u64,
    /// What the windows may grow to (never below `recv_window`): each side grows its
    /// own to 8 round trips of what it measures the path delivering, so that holes
    /// asked for several times on a lossy long path do not stall the stream (TCP
    /// autotunes its buffers for the same reason). On a short path they stay at
    /// `recv_window`.
    pub max_recv_window: u64,
    /// A connection that hears nothing from its peer for this long fails with
    /// `TimedOut`. The smaller of the two ends' values applies.
    pub idle_timeout: Duration,
    /// Interval of keepalive PINGs while idle; `None`: a quarter of the idle timeout,
    /// at most 15 s.
    pub keepalive: Option<Duration>,
    /// A connection attempt that gets no answer for this long fails with `TimedOut`.
    pub handshake_timeout: Duration,
    /// After `close`, how long to wait for the peer to acknowledge every byte before
    /// aborting (RESET) and reporting `TimedOut`.
    pub linger: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            max_datagram: crate::wire::DEFAULT_MAX_DATAGRAM,
            loopback_max_datagram: crate::wire::LOOPBACK_MAX_DATAGRAM,
            recv_window: 4 << 20,
            max_recv_window: 32 << 20,
            idle_timeout: Duration::from_secs(120),
            keepalive: None,
            handshake_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(30),
        }
    }
}

/// Settings of an [`Endpoint`].
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// This endpoint's Noise static key: a server's long-term identity; for a client a
    /// key generated per process is fine.
    pub static_key: StaticKey,
    /// Settings for every connection (unless [`ConnectOptions::config`] overrides them).
    pub conn: ConnConfig,
    /// Handshakes per second above which an INIT without a RETRY token is answered with
    /// a RETRY cookie instead of Diffie-Hellman work and state (also whenever half of
    /// `max_half_open` is taken). 0: always.
    pub retry_threshold: u32,
    /// Most handshakes waiting for their third message.
    pub max_half_open: usize,
    /// Most of them from one source (an IPv4 address, an IPv6 /64 prefix, or on
    /// loopback one address *and port*, i.e. one local socket): beyond, an INIT without
    /// a token gets a RETRY and one with a valid token replaces that source's oldest
    /// half-open, so one host cannot take every slot of `max_half_open`.
    pub max_half_open_per_source: usize,
    /// While busy (see `retry_threshold`), most handshakes per second one source may
    /// start with a valid RETRY token: the Diffie-Hellman work a flooder that answers
    /// every RETRY can demand is bounded per address it really owns, so it cannot crowd
    /// out the CPU and the table another source needs.
    pub busy_handshakes_per_source: u32,
    /// While busy, most handshakes per second in all, beyond each source's first of
    /// the second (which is always admitted, so a new client gets in however many
    /// handshakes flooders ask for): bounds the Diffie-Hellman work a flood of many
    /// owned addresses demands.
    pub busy_handshakes: u32,
    /// While busy, most RETRYs per second to one socket address (port included, so a
    /// spoofer must guess a client's port to spend its budget): beyond, its INITs are
    /// dropped before any cryptography, which keeps the server reading faster than a
    /// flood of owned addresses fills its socket.
    pub busy_retries_per_source: u16,
    /// Most established connections waiting in the accept queue; INITs beyond are
    /// dropped (the client retries), as a full SYN queue does.
    pub accept_backlog: usize,
    /// Secret behind stateless-reset tokens. Keep it across restarts (derive it from the
    /// static key, as [`EndpointConfig::new`] does) so a restarted server can still
    /// reset its old connections' peers.
    pub reset_key: [u8; 32],
    /// Most STATELESS_RESET and REFUSE packets per second.
    pub stateless_rate: u32,
    /// Every connection ID this endpoint chooses carries this value in its top 16
    /// bits, so processes that share one UDP port can tell whose connection a packet
    /// is for (the runtime's port groups). `None`: 64 random bits.
    pub cid_tag: Option<u16>,
}

impl EndpointConfig {
    /// Defaults around `static_key`, with the stateless-reset secret derived from it.
    pub fn new(static_key: StaticKey) -> Self {
        let reset_key = blake3::derive_key("rgtp conn stateless reset v1", &static_key.private);
        Self {
            static_key,
            conn: ConnConfig::default(),
            retry_threshold: 1000,
            max_half_open: 4096,
            max_half_open_per_source: 64,
            busy_handshakes_per_source: 8,
            busy_handshakes: 256,
            busy_retries_per_source: 64,
            accept_backlog: 1024,
            reset_key,
            stateless_rate: 2000,
            cid_tag: None,
        }
    }
}

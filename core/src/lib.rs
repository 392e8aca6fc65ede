//! RGTP — Red Giant Transport Protocol.
//!
//! A receiver-driven transport over UDP: an exposer publishes content once (chunked,
//! encrypted once per chunk, bound into a BLAKE3 Merkle root); pullers request exactly
//! the chunks they miss at the rate they can take, verify every chunk against the root
//! and resume at any time. See `docs/PROTOCOL.md` for the wire format.
//!
//! Layering, every module:
//! - pure pieces: `wire` (pull packets), `url`, `merkle` (chunk tree and proofs),
//!   `crypto` (chunk AEAD, request MACs, tokens), `bitset` (chunk sets), `rtt`
//!   (smoothed round-trip time), `transmit` (datagrams to send), `rng` (the random
//!   source every state machine draws from: the OS CSPRNG, or a seeded stream in
//!   simulation), `zeroed`;
//! - sans-IO state machines (no sockets, no clocks of their own): `handshake` (the
//!   pull's Noise NX), `exposer`, `puller`, `cc` (rate control shared by pulls and
//!   connections), `replay` (the exposer's filter of REQUESTs served), `retry` (the
//!   RETRY cookie and handshake rate, shared by exposers and connection endpoints),
//!   `conn` (connections: wire, Noise XX, streams, endpoint) and `sim` (the
//!   deterministic network simulator that runs them);
//! - I/O: `udp` (GSO/GRO sockets), `driver` (runs exposers and pullers), `conn::runtime`
//!   (runs connection endpoints), `source` and `sealed` (reading and sealing exposed
//!   files), `output` (writing pulled files), `sidecar` (resume state), `keys`
//!   (static keys, known exposers), `atomic_file`.

pub(crate) mod atomic_file;
pub mod bitset;
pub mod cc;
pub mod conn;
pub mod crypto;
pub mod driver;
pub mod exposer;
pub mod handshake;
pub mod keys;
pub mod merkle;
pub mod output;
pub mod puller;
pub mod replay;
pub(crate) mod retry;
pub mod rng;
pub mod rtt;
pub mod sealed;
pub mod sidecar;
pub mod sim;
pub mod source;
pub mod transfer;
pub mod transmit;
pub mod udp;
pub mod url;
pub mod wire;
pub mod zeroed;

// Fuzz harnesses (cargo-fuzz targets and their proptest drivers), not API.
#[doc(hidden)]
pub mod fuzzing;

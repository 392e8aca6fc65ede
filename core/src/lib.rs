//! RGTP — Red Giant Transport Protocol.
//!
//! A receiver-driven transport over UDP: an exposer publishes content once (chunked,
//! encrypted once per chunk, bound into a BLAKE3 Merkle root); pullers request exactly
//! the chunks they miss at the rate they can take, verify every chunk against the root
//! and resume at any time. See `docs/PROTOCOL.md` for the wire format.
//!
//! Layering: `wire`, `merkle`, `crypto` are pure pieces; `handshake`, `exposer`,
//! `puller`, `cc` are sans-IO state machines (no sockets, no clocks); `udp`,
//! `sidecar`, `keys` and the binaries do the I/O.

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
pub mod sealed;
pub mod sidecar;
pub mod sim;
pub mod source;
pub mod transmit;
pub mod udp;
pub mod url;
pub mod wire;
pub mod zeroed;

// Fuzz harnesses (cargo-fuzz targets and their proptest drivers), not API.
#[doc(hidden)]
pub mod fuzzing;

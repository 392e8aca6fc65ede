//! Live exposures (issue 19): a byte stream or a growing file, exposed while it is
//! written.
//!
//! The exposer side is a [`Spool`] ([`spool`]): the bytes exposed so far and the CVs
//! of the complete chunks, each in an unnamed file (complete BLAKE3 subtrees never
//! change, so each CV is computed once, as its chunk is cut). A HELLO for a live
//! name gets a **checkpoint**: `(length, root of the first length bytes)` exposed
//! under a fresh exposure id and content key (so a partial chunk sealed at one length
//! and whole at a later one never reuses a nonce), in the ordinary manifest, sealed
//! by the Noise handshake, with the feature bit [`crate::wire::FEATURE_LIVE`]. When
//! the stream ends, the name becomes an ordinary exposure of every byte (its root is
//! `b3sum`), and that manifest, without the bit, is the final checkpoint. With a
//! window, the spool forgets bytes older than it, and manifests carry the window's
//! start and the [`crate::frontier::Frontier`] before it
//! ([`crate::wire::FEATURE_WINDOW`]).
//!
//! The puller side is a [`Follower`] ([`follower`]), driven by a [`LivePull`]
//! ([`pull`]): it pulls checkpoint after checkpoint, each round an ordinary
//! [`crate::puller::Puller`] given the frontier of what the follower holds
//! ([`LiveBase`]): the new outboard, from the follower's position on, must hash with
//! that frontier to the new root, so no byte already written can change. The
//! follower writes bytes in order as they are verified. Both sides' memory stays the
//! same however long the stream runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::merkle::{self, Hash};

pub mod follower;
pub mod pull;
pub mod spool;

pub use follower::{FollowError, Follower, LiveBase, LiveError};
pub use pull::{LiveEnd, LivePull, LivePullError, POLL_MAX, POLL_MIN};
pub use spool::{Checkpoint, Spool, SpoolSource, Window, CVS_PER_OUTBOARD_CHUNK};

/// The CV of a complete chunk that is not the whole content (a non-root subtree):
/// what a complete chunk's CV is in every checkpoint longer than one chunk.
pub fn full_chunk_cv(index: u64, data: &[u8]) -> Hash {
    merkle::chunk_cv(index, data, u64::MAX)
}

/// Checkpoints an exposer keeps serving at once (for all its live exposures): a
/// puller still pulling an older one then gets STALE and handshakes for the current.
pub const MAX_CHECKPOINTS: usize = 32;

/// Shortest time between two checkpoints of one live exposure: HELLOs within it get
/// the latest (a checkpoint is an exposure with its own keys and cache entries).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(2);

/// The smallest `--window`: one chunk.
pub const MIN_WINDOW: u64 = merkle::CHUNK_SIZE as u64;

/// The exposer's record of one live exposure.
pub struct LiveState {
    /// Its bytes.
    pub spool: Arc<Spool>,
    /// The last checkpoint exposed: its length and exposure id.
    pub latest: Option<(u64, crate::wire::ExposureId)>,
    /// When it was exposed.
    pub latest_at: Option<Instant>,
    /// The content key every checkpoint shares (sealed so that a content chunk is
    /// the same in each: [`crate::crypto::ContentCipher::live`]).
    pub content_key: [u8; 32],
}

impl LiveState {
    /// A live exposure of `spool` under `content_key`, no checkpoint exposed yet.
    pub fn new(spool: Arc<Spool>, content_key: [u8; 32]) -> Self {
        Self {
            spool,
            latest: None,
            latest_at: None,
            content_key,
        }
    }
}

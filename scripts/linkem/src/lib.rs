//! linkem: a small user-space link emulator for machines without `netem`.
//!
//! * [`model`]: the pure link model (delay, rate/queue, random and burst loss) on a
//!   virtual clock: unit-tested without any I/O.
//! * [`tun`]: TUN device handling.
//! * [`forward`]: the poll loop that moves packets between two TUN devices through
//!   the model, plus the stats (JSON) output.
//! * [`config`]: command-line options.

pub mod config;
pub mod forward;
pub mod model;
pub mod tun;

//! Bounded waits: every wait has a deadline that only turns a hang into a failure.

use std::thread;
use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it returns `Some` or `limit` passes.
pub fn poll_until<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

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

/// Polls `cond` every 20 ms until it holds; fails the test ("timed out waiting for
/// `what`") if it does not within `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

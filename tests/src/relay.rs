//! An in-process UDP relay between a puller and an exposer, to slow a transfer down
//! and interrupt it at a chosen point ([`Relay`], [`freeze_after_progress`]).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rgtp::sidecar::Sidecar;

use crate::files::{read_sidecar, state_path};
use crate::process::{describe_status, Proc};

/// A UDP relay on loopback between one puller and an exposer: a narrow link whose
/// exposer→puller rate is capped (excess is dropped by the kernel once the relay's
/// receive buffer is full, like a bottleneck queue), and which can be frozen (drops
/// everything, both ways). Pulling through it makes a transfer last long enough to be
/// interrupted at a chosen point, whatever the speed of loopback.
pub struct Relay {
    pub addr: SocketAddr,
    state: Arc<RelayState>,
    threads: Vec<thread::JoinHandle<()>>,
}

struct RelayState {
    /// Bytes per second exposer→puller; 0 = unlimited.
    rate: AtomicU64,
    frozen: AtomicBool,
    stop: AtomicBool,
    puller: Mutex<Option<SocketAddr>>,
}

impl Relay {
    /// Relays 127.0.0.1:(new port) ⇄ `exposer`, capping exposer→puller at `rate` B/s.
    pub fn start(exposer: SocketAddr, rate: u64) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind relay front"));
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind relay back"));
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let state = Arc::new(RelayState {
            rate: AtomicU64::new(rate),
            frozen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            puller: Mutex::new(None),
        });
        let up = {
            let (front, back, st) = (front.clone(), back.clone(), state.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !st.stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *st.puller.lock().unwrap() = Some(from);
                    if !st.frozen.load(Ordering::Relaxed) {
                        let _ = back.send_to(&buf[..n], exposer);
                    }
                }
            })
        };
        let down = {
            let st = state.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                // Token bucket: when the link is "busy until" `free_at`, wait for it.
                let mut free_at = Instant::now();
                while !st.stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = back.recv_from(&mut buf) else {
                        continue;
                    };
                    if from != exposer || st.frozen.load(Ordering::Relaxed) {
                        continue;
                    }
                    let rate = st.rate.load(Ordering::Relaxed);
                    if rate > 0 {
                        let now = Instant::now();
                        free_at =
                            free_at.max(now) + Duration::from_secs_f64(n as f64 / rate as f64);
                        let ahead = free_at.saturating_duration_since(now);
                        if ahead > Duration::from_millis(2) {
                            thread::sleep(ahead.min(Duration::from_millis(100)));
                        }
                        if st.frozen.load(Ordering::Relaxed) {
                            continue;
                        }
                    }
                    let to = *st.puller.lock().unwrap();
                    if let Some(to) = to {
                        let _ = front.send_to(&buf[..n], to);
                    }
                }
            })
        };
        Relay {
            addr,
            state,
            threads: vec![up, down],
        }
    }

    /// Drops everything from now on (both directions).
    pub fn freeze(&self) {
        self.state.frozen.store(true, Ordering::SeqCst);
    }
    pub fn thaw(&self) {
        self.state.frozen.store(false, Ordering::SeqCst);
    }
    /// New exposer→puller cap in bytes per second (0 = unlimited).
    pub fn set_rate(&self, rate: u64) {
        self.state.rate.store(rate, Ordering::SeqCst);
    }

    /// Lifts the rate cap and thaws: the rest of the transfer goes at loopback speed.
    pub fn unthrottle(&self) {
        self.set_rate(0);
        self.thaw();
    }

    /// `url` with its authority replaced by the relay's address.
    pub fn url(&self, url: &str) -> String {
        let rest = url.strip_prefix("rgtp://").expect("rgtp:// URL");
        let path = &rest[rest.find('/').expect("URL path")..];
        format!("rgtp://{}{path}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits until the pull (through `relay`) has at least `at_least` verified chunks in its
/// sidecar but is not complete, then freezes the relay so nothing more arrives.
/// Returns the sidecar seen. The relay's rate must make the transfer last well over
/// the sidecar's ~1 s persist interval.
pub fn freeze_after_progress(
    relay: &Relay,
    puller: &mut Proc,
    output: &Path,
    at_least: u64,
) -> Sidecar {
    let state = state_path(output);
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        if let Some(s) = read_sidecar(&state).filter(|s| s.have.count() >= at_least) {
            relay.freeze();
            assert!(
                !s.have.is_full(),
                "{} completed before it could be interrupted; lower the relay rate",
                puller.what
            );
            return s;
        }
        if let Some(st) = puller.try_status() {
            panic!(
                "{} ended ({}) before {at_least} chunks were verified; stderr:\n{}",
                puller.what,
                describe_status(&st),
                puller.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not reach {at_least} verified chunks within 150 s (at {:?}); stderr:\n{}",
            state.display(),
            read_sidecar(&state).map(|s| s.have.count()),
            puller.stderr()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

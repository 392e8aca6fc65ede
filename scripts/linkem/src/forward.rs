//! The forwarding loop: ppoll() on both TUN fds, the model decides, a per-direction
//! delay line (FIFO ordered by delivery time) holds packets until they are due.

use crate::config::Options;
use crate::model::{Counters, DelayLine, DirConfig, LinkDir, Verdict};
use crate::tun::Tun;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static STOP: AtomicBool = AtomicBool::new(false);
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
static DUMP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGUSR1 {
        DUMP.store(true, Ordering::Relaxed);
    } else {
        STOP_SIGNAL.store(sig, Ordering::Relaxed);
        STOP.store(true, Ordering::Relaxed);
    }
}

fn install_signals() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
        // SAFETY: plain sigaction with an async-signal-safe handler (atomics only);
        // no SA_RESTART so ppoll returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// I/O-side counters of one direction (the model keeps its own).
#[derive(Clone, Copy, Debug, Default)]
pub struct IoCounters {
    pub fwd_pkts: u64,
    pub fwd_bytes: u64,
    pub write_errors: u64,
    pub last_write_errno: i32,
    pub read_errors: u64,
    /// Packets dropped because the delay line hit --max-pending-mb.
    pub drop_overflow: u64,
    /// Lateness of actual writes against the scheduled delivery time.
    pub late_sum_ns: u128,
    pub late_max_ns: u64,
    pub max_pending_pkts: u64,
}

struct Pipe {
    model: LinkDir,
    line: DelayLine<Vec<u8>>,
    io: IoCounters,
}

pub struct Forwarder {
    opts: Options,
    a: Tun,
    b: Tun,
    pipes: [Pipe; 2], // 0: A->B, 1: B->A
    pool: Vec<Vec<u8>>,
    start: Instant,
}

const READ_BATCH: usize = 128;
const MAX_POOL: usize = 4096;

impl Forwarder {
    pub fn new(opts: Options) -> io::Result<Self> {
        let a = Tun::open(&opts.tun_a)
            .map_err(|e| io::Error::new(e.kind(), format!("TUN {}: {e}", opts.tun_a)))?;
        let b = Tun::open(&opts.tun_b)
            .map_err(|e| io::Error::new(e.kind(), format!("TUN {}: {e}", opts.tun_b)))?;
        // Direction seeds derived from the one seed.
        let seed_ab = opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5;
        let seed_ba = opts.seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5A5A;
        let mk = |cfg: &DirConfig, seed| Pipe {
            model: LinkDir::new(cfg.clone(), seed),
            line: DelayLine::default(),
            io: IoCounters::default(),
        };
        let pipes = [mk(&opts.ab, seed_ab), mk(&opts.ba, seed_ba)];
        Ok(Forwarder {
            opts,
            a,
            b,
            pipes,
            pool: Vec::new(),
            start: Instant::now(),
        })
    }

    pub fn tun_names(&self) -> (&str, &str) {
        (self.a.name(), self.b.name())
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Run until --duration elapses or a stop signal arrives. Returns the stop reason.
    pub fn run(&mut self) -> io::Result<String> {
        install_signals()?;
        // Wake-ups as precise as the kernel allows (default slack is 50 us).
        // SAFETY: prctl with integer args.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
        }
        self.start = Instant::now();
        let end_ns = (self.opts.duration_s * 1e9) as u64;
        let interval_ns = self.opts.stats_interval_s.map(|s| (s * 1e9) as u64);
        let mut next_stats = interval_ns.unwrap_or(u64::MAX);
        let mut buf = vec![0u8; 65536];

        let reason = loop {
            if STOP.load(Ordering::Relaxed) {
                break format!("signal {}", STOP_SIGNAL.load(Ordering::Relaxed));
            }
            let now = self.now_ns();
            if now >= end_ns {
                break "duration".to_string();
            }
            if DUMP.swap(false, Ordering::Relaxed) {
                self.write_stats("snapshot");
            }
            if now >= next_stats {
                self.write_stats("interval");
                next_stats = now + interval_ns.unwrap();
            }

            self.deliver_due(now);

            // Sleep until the next delivery, stats tick, end, or at most 200 ms.
            let now = self.now_ns();
            let mut wake = end_ns.min(next_stats).min(now + 200_000_000);
            for p in &self.pipes {
                if let Some(t) = p.line.next_due() {
                    wake = wake.min(t);
                }
            }
            let timeout = wake.saturating_sub(now);
            let mut fds = [
                libc::pollfd {
                    fd: self.a.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.b.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ts = libc::timespec {
                tv_sec: (timeout / 1_000_000_000) as _,
                tv_nsec: (timeout % 1_000_000_000) as _,
            };
            // SAFETY: fds and ts are valid for the call.
            let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                continue;
            }
            for (i, f) in fds.iter().enumerate() {
                if f.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
                    && f.revents & libc::POLLIN == 0
                {
                    return Err(io::Error::other(format!(
                        "TUN {} fd error (revents {:#x})",
                        if i == 0 { self.a.name() } else { self.b.name() },
                        f.revents
                    )));
                }
                if f.revents & libc::POLLIN != 0 {
                    self.read_side(i, &mut buf);
                }
            }
        };
        Ok(reason)
    }

    /// Read up to READ_BATCH packets from side `i` (0 = A, 1 = B) into pipe `i`.
    fn read_side(&mut self, i: usize, buf: &mut [u8]) {
        for _ in 0..READ_BATCH {
            let tun = if i == 0 { &self.a } else { &self.b };
            let n = match tun.recv(buf) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(_) => {
                    self.pipes[i].io.read_errors += 1;
                    break;
                }
            };
            let now = self.now_ns();
            let max_pending = self.opts.max_pending_bytes;
            let pipe = &mut self.pipes[i];
            match pipe.model.offer(now, n) {
                Verdict::Deliver(at) => {
                    if pipe.line.bytes() + n as u64 > max_pending {
                        pipe.io.drop_overflow += 1;
                        continue;
                    }
                    let mut v = self.pool.pop().unwrap_or_default();
                    v.clear();
                    v.extend_from_slice(&buf[..n]);
                    pipe.line.push(at, n, v);
                    pipe.io.max_pending_pkts = pipe.io.max_pending_pkts.max(pipe.line.len() as u64);
                }
                Verdict::DropQueue | Verdict::DropBurst | Verdict::DropRandom => {}
            }
        }
    }

    fn deliver_due(&mut self, now: u64) {
        for i in 0..2 {
            let out = if i == 0 { &self.b } else { &self.a };
            let pipe = &mut self.pipes[i];
            while let Some((at, pkt)) = pipe.line.pop_due(now, |v| v.len()) {
                match out.send(&pkt) {
                    Ok(()) => {
                        pipe.io.fwd_pkts += 1;
                        pipe.io.fwd_bytes += pkt.len() as u64;
                        let late = now.saturating_sub(at);
                        pipe.io.late_sum_ns += late as u128;
                        pipe.io.late_max_ns = pipe.io.late_max_ns.max(late);
                    }
                    Err(e) => {
                        pipe.io.write_errors += 1;
                        pipe.io.last_write_errno = e.raw_os_error().unwrap_or(0);
                    }
                }
                if self.pool.len() < MAX_POOL {
                    self.pool.push(pkt);
                }
            }
        }
    }

    pub fn stats_json(&self, reason: &str) -> String {
        let mut s = String::new();
        let elapsed = self.start.elapsed().as_secs_f64();
        let _ = write!(
            s,
            "{{\"linkem\":1,\"reason\":{},\"elapsed_s\":{:.6},\"seed\":{},\"duration_cap_s\":{},\"tun_a\":{},\"tun_b\":{}",
            json_str(reason),
            elapsed,
            self.opts.seed,
            self.opts.duration_s,
            json_str(self.a.name()),
            json_str(self.b.name())
        );
        for (i, key) in ["ab", "ba"].iter().enumerate() {
            let p = &self.pipes[i];
            let _ = write!(
                s,
                ",\"{key}\":{}",
                dir_json(p.model.config(), &p.model.counters, &p.io, &p.line, elapsed)
            );
        }
        s.push('}');
        s
    }

    pub fn write_stats(&self, reason: &str) {
        let js = self.stats_json(reason);
        if let Some(path) = &self.opts.stats_path {
            let tmp = format!("{path}.tmp.{}", std::process::id());
            let ok =
                std::fs::write(&tmp, format!("{js}\n")).and_then(|_| std::fs::rename(&tmp, path));
            if let Err(e) = ok {
                eprintln!("linkem: cannot write stats to {path}: {e}");
            }
        }
        if reason != "interval" && reason != "snapshot" && !self.opts.quiet {
            eprintln!("{js}");
        }
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn dir_json(
    cfg: &DirConfig,
    c: &Counters,
    io: &IoCounters,
    line: &DelayLine<Vec<u8>>,
    elapsed: f64,
) -> String {
    let ge = match cfg.ge {
        None => "null".to_string(),
        Some(g) => format!(
            "{{\"p_good_bad_pct\":{},\"p_bad_good_pct\":{},\"loss_bad_pct\":{},\"loss_good_pct\":{},\"expected_loss_pct\":{:.4}}}",
            g.p_good_bad * 100.0,
            g.p_bad_good * 100.0,
            g.loss_bad * 100.0,
            g.loss_good * 100.0,
            g.mean_loss() * 100.0
        ),
    };
    let passed = c.pkts_passed_queue;
    let pct = |k: u64, n: u64| {
        if n == 0 {
            0.0
        } else {
            k as f64 * 100.0 / n as f64
        }
    };
    let late_avg_us = if io.fwd_pkts == 0 {
        0.0
    } else {
        io.late_sum_ns as f64 / io.fwd_pkts as f64 / 1000.0
    };
    format!(
        concat!(
            "{{\"config\":{{\"delay_ms\":{},\"rate_mbit\":{},\"queue_bytes\":{},\"loss_pct\":{},\"ge\":{}}},",
            "\"pkts_in\":{},\"bytes_in\":{},\"fwd_pkts\":{},\"fwd_bytes\":{},",
            "\"drop_random\":{},\"drop_random_bytes\":{},\"drop_burst\":{},\"drop_burst_bytes\":{},",
            "\"drop_queue\":{},\"drop_queue_bytes\":{},\"drop_overflow\":{},",
            "\"pkts_passed_queue\":{},\"pending_pkts\":{},\"pending_bytes\":{},",
            "\"write_errors\":{},\"last_write_errno\":{},\"read_errors\":{},",
            "\"ge_bad_episodes\":{},\"ge_pkts_in_bad\":{},\"max_backlog_bytes\":{},\"max_pending_pkts\":{},",
            "\"random_loss_observed_pct\":{:.4},\"burst_loss_observed_pct\":{:.4},\"queue_drop_pct\":{:.4},",
            "\"fwd_mbit_avg\":{:.3},\"late_avg_us\":{:.1},\"late_max_us\":{:.1}}}"
        ),
        cfg.delay_ns as f64 / 1e6,
        cfg.rate_bps as f64 / 1e6,
        cfg.queue_bytes,
        cfg.loss * 100.0,
        ge,
        c.pkts_in,
        c.bytes_in,
        io.fwd_pkts,
        io.fwd_bytes,
        c.drop_random,
        c.drop_random_bytes,
        c.drop_burst,
        c.drop_burst_bytes,
        c.drop_queue,
        c.drop_queue_bytes,
        io.drop_overflow,
        passed,
        line.len(),
        line.bytes(),
        io.write_errors,
        io.last_write_errno,
        io.read_errors,
        c.ge_bad_episodes,
        c.ge_pkts_in_bad,
        c.max_backlog_bytes,
        io.max_pending_pkts,
        pct(c.drop_random, passed.saturating_sub(c.drop_burst)),
        pct(c.drop_burst, passed),
        pct(c.drop_queue, c.pkts_in),
        if elapsed > 0.0 { io.fwd_bytes as f64 * 8.0 / elapsed / 1e6 } else { 0.0 },
        late_avg_us,
        io.late_max_ns as f64 / 1000.0,
    )
}

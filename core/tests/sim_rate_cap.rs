//! The exposer's send-rate cap (`--max-rate`) in the deterministic simulator: an
//! exposer behind a `Shaper`, pullers pulling at once. Bytes are counted over virtual
//! time, so the checks are exact and do not depend on the machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::merkle::{self, CHUNK_SIZE};
use rgtp::puller::{PullConfig, PullEvent, Puller};
use rgtp::shaper::{transmit_bytes, Shaper};
use rgtp::sim::{LinkConfig, SimNet, SimRng};
use rgtp::source::MemSource;

const EXPOSER: &str = "192.0.2.1:443";

struct Slot {
    addr: SocketAddr,
    p: Puller,
    out: Vec<u8>,
    done: bool,
    /// Bytes the shaper let through toward this puller.
    got: u64,
}

/// Pulls the same `size`-byte file into `n` pullers at once, from an exposer capped at
/// `cap` bits/s; returns the pullers, the bytes sent per 100 ms of virtual time, and
/// the time when the first puller finished.
fn capped_pulls(seed: u64, n: usize, size: usize, cap: u64) -> (Vec<Slot>, Vec<u64>, Duration) {
    capped_pulls_over(seed, n, size, cap, Duration::from_millis(10))
}

/// [`capped_pulls`] over a path of `delay` each way.
fn capped_pulls_over(
    seed: u64,
    n: usize,
    size: usize,
    cap: u64,
    delay: Duration,
) -> (Vec<Slot>, Vec<u64>, Duration) {
    let link = LinkConfig {
        delay,
        // Far above the cap: the cap, not the link, is the bottleneck.
        rate: 1_000_000_000,
        queue_bytes: 16 << 20,
        ..Default::default()
    };
    let mut net = SimNet::new(seed, link);
    let t0 = net.now;
    let mut r = SimRng::new(seed);
    let data: Arc<Vec<u8>> = Arc::new((0..size).map(|_| r.next_u64() as u8).collect());
    let key = net.static_key();
    let ex_addr: SocketAddr = EXPOSER.parse().unwrap();
    let mut ex = Exposer::with_rng(
        ExposerConfig::default(),
        key.private,
        net.now,
        net.machine_rng(),
    );
    let cvs = merkle::cvs_of_bytes(&data);
    ex.add_exposure("file.bin", Box::new(MemSource(data.clone())), cvs);
    let mut shaper = Shaper::new(cap, net.now);
    let mut slots: Vec<Slot> = (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("198.51.100.{}:4000", i + 1).parse().unwrap();
            let c = PullConfig::new(ex_addr, "file.bin");
            Slot {
                addr,
                p: Puller::with_rng(c, net.now, net.machine_rng()),
                out: vec![0; size],
                done: false,
                got: 0,
            }
        })
        .collect();
    let mut windows: Vec<u64> = Vec::new();
    let mut first_done = None;
    let end = net.now + Duration::from_secs(120);
    let mut iters = 0u64;
    while slots.iter().any(|s| !s.done) && net.now < end {
        iters += 1;
        assert!(iters < 10_000_000, "simulation does not progress");
        let now = net.now;
        while let Some(d) = net.pop_due() {
            if d.to == ex_addr {
                ex.handle(now, d.from, &d.data);
            } else if let Some(s) = slots.iter_mut().find(|s| s.addr == d.to) {
                s.p.handle(now, d.from, &d.data);
            }
        }
        for s in &mut slots {
            if s.p.poll_timeout().is_some_and(|t| t <= now) {
                s.p.handle_timeout(now);
            }
            while let Some(t) = s.p.poll_transmit(now) {
                net.send(s.addr, &t);
            }
            while let Some(ev) = s.p.poll_event() {
                match ev {
                    PullEvent::Chunk { index, data } => {
                        let at = index as usize * CHUNK_SIZE;
                        s.out[at..at + data.len()].copy_from_slice(&data);
                    }
                    PullEvent::Done => {
                        s.done = true;
                        first_done.get_or_insert(now - t0);
                    }
                    PullEvent::Failed(e) => panic!("seed {seed}: {e}"),
                    _ => {}
                }
            }
        }
        while let Some(t) = ex.poll_transmit() {
            shaper.push(t);
        }
        while let Some(t) = shaper.poll(now) {
            let b = transmit_bytes(&t);
            let w = ((now - t0).as_millis() / 100) as usize;
            if windows.len() <= w {
                windows.resize(w + 1, 0);
            }
            windows[w] += b;
            if let Some(s) = slots.iter_mut().find(|s| s.addr == t.dest) {
                s.got += b;
            }
            net.send(ex_addr, &t);
        }
        let mut next = net.next_arrival();
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for s in &slots {
            if let Some(t) = s.p.poll_timeout() {
                at(t);
            }
        }
        if let Some(t) = shaper.poll_timeout() {
            at(t);
        }
        match next {
            Some(t) if t > now => net.advance_to(t),
            Some(_) => net.advance_to(now + Duration::from_micros(10)),
            None => break,
        }
    }
    for (i, s) in slots.iter().enumerate() {
        assert!(s.done, "seed {seed}: puller {i} did not finish");
        assert!(s.out == *data, "seed {seed}: puller {i}: content differs");
    }
    (slots, windows, first_done.unwrap_or_default())
}

#[test]
fn the_cap_holds_over_every_100_ms() {
    // 80 Mbit/s = 10 MB/s: 1 MB per 100 ms, plus the shaper's burst (256 KiB).
    let cap = 80_000_000u64;
    let (_, windows, _) = capped_pulls(3, 2, 6 << 20, cap);
    let per_window = cap / 8 / 10;
    for (i, &w) in windows.iter().enumerate() {
        assert!(
            w <= per_window + 256 * 1024 + 65_536,
            "window {i}: {w} bytes in 100 ms (cap {per_window})"
        );
    }
    // And the cap is used: the middle windows are near it.
    let mid = &windows[2..windows.len().saturating_sub(2).max(3)];
    let avg = mid.iter().sum::<u64>() as f64 / mid.len() as f64;
    assert!(
        avg > 0.8 * per_window as f64,
        "only {avg:.0} bytes per 100 ms: {windows:?}"
    );
}

#[test]
fn pullers_started_together_get_fair_shares() {
    for seed in [5, 6] {
        let (slots, _, first) = capped_pulls(seed, 2, 6 << 20, 80_000_000);
        // Two pullers of the same file at once: each finishes at about the same time
        // (the second within 15 % of the first), having been sent about half.
        let total: u64 = slots.iter().map(|s| s.got).sum();
        for (i, s) in slots.iter().enumerate() {
            let share = s.got as f64 / total as f64;
            assert!(
                (0.4..0.6).contains(&share),
                "seed {seed}: puller {i} got {share:.2}"
            );
        }
        // 12 MiB at 10 MB/s is 1.26 s: neither can finish early by taking more.
        assert!(
            first > Duration::from_millis(1000),
            "seed {seed}: first done at {first:?}"
        );
    }
}

#[test]
fn pullers_on_a_lan_are_sent_each_chunk_about_once() {
    // Four pullers 0.1 ms or 1 ms away from an exposer capped at 200 Mbit/s. The cap
    // queues tens of ms at the exposer; a puller's loss deadline (its RTO, 4 ms here)
    // fired while its requests waited in that queue, it asked again for what was only
    // late, and the freed window let it ask for more: the exposer sent 15x the file
    // for four pullers at 0.1 ms and 10x at 1 ms (bench-multicast.sh's unicast row).
    // A request that timed out now gives a late RTT sample from its first answer.
    let size = 8 << 20;
    for (seed, delay_us) in [(11, 100), (12, 1000)] {
        let delay = Duration::from_micros(delay_us);
        let (slots, _, _) = capped_pulls_over(seed, 4, size, 200_000_000, delay);
        let total: u64 = slots.iter().map(|s| s.got).sum();
        let copies = total as f64 / size as f64;
        println!("{delay:?}: {copies:.2}x the file for four pullers");
        assert!(
            copies < 4.8,
            "seed {seed}, {delay:?}: the exposer sent {copies:.2}x the file for four pullers"
        );
    }
}

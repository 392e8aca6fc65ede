//! Live exposures through the deterministic network simulator: an exposer's spool
//! grows in records over virtual time; a follower from the start and a late joiner
//! pull checkpoint after checkpoint and must write every byte once, in order, ending
//! with the final checkpoint's root = BLAKE3 of all bytes. A follower given a prefix
//! (resumed) goes on from it. An exposer that rewrites its past is refused. A window
//! bounds the exposer's disk and late joiners start at it; followers on a LAN share
//! the exposer's multicast group.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::live::{Follower, LiveError, LivePull, LivePullError, Spool};
use rgtp::puller::{PullConfig, PullError};
use rgtp::sim::{LinkConfig, SimNet, SimRng};

const EXPOSER: &str = "192.0.2.1:443";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Node {
    addr: SocketAddr,
    pull: LivePull,
    out: Vec<u8>,
    /// When the output grew, and to what length.
    grew: Vec<(usize, Instant)>,
    done: bool,
    /// It joined the group (a round was a member): it hears the group from then on,
    /// between rounds too, as its socket stays joined.
    in_group: bool,
}

impl Node {
    /// When the output first held `len` bytes.
    fn reached(&self, len: usize) -> Option<Instant> {
        self.grew.iter().find(|(l, _)| *l >= len).map(|(_, t)| *t)
    }
}

struct World {
    net: SimNet,
    ex: Exposer,
    spool: Arc<Spool>,
    all: Vec<u8>,
    nodes: Vec<Node>,
    /// The exposer's multicast group, if any; and its bytes sent, in all and to it.
    group: Option<std::net::SocketAddrV4>,
    sent: u64,
    group_sent: u64,
}

impl World {
    fn new(seed: u64, link: LinkConfig) -> Self {
        Self::windowed(seed, link, None)
    }

    /// An exposer whose spool keeps at least the last `window` bytes.
    fn windowed(seed: u64, link: LinkConfig, window: Option<u64>) -> Self {
        Self::build(seed, link, window, None)
    }

    fn build(
        seed: u64,
        link: LinkConfig,
        window: Option<u64>,
        group: Option<std::net::SocketAddrV4>,
    ) -> Self {
        let mut net = SimNet::new(seed, link);
        let k = net.static_key();
        let mut ex = Exposer::with_rng(
            ExposerConfig {
                multicast: group,
                ..Default::default()
            },
            k.private,
            net.now,
            net.machine_rng(),
        );
        let spool = Arc::new(Spool::create(&std::env::temp_dir(), window).unwrap());
        ex.add_live("live.bin", spool.clone());
        World {
            net,
            ex,
            spool,
            all: Vec::new(),
            nodes: Vec::new(),
            group,
            sent: 0,
            group_sent: 0,
        }
    }

    fn join(&mut self, at: &str, follower: Follower) {
        let mut c = PullConfig::new(addr(EXPOSER), "live.bin");
        c.idle_timeout = Duration::from_secs(30);
        let rng = self.net.machine_rng();
        let pull = LivePull::new(c, follower, rng, self.net.now);
        self.nodes.push(Node {
            addr: addr(at),
            pull,
            out: Vec::new(),
            grew: Vec::new(),
            done: false,
            in_group: false,
        });
    }

    /// A follower whose output already holds `prefix` (a resumed run).
    fn join_resumed(&mut self, at: &str, prefix: &[u8]) {
        self.join(at, Follower::resume_from(&mut &prefix[..], None).unwrap());
    }

    /// Ends the stream, runs until every follower ended (or 20 s), and checks that
    /// each ended well with the root of every byte; `what` names the run.
    fn end_and_check(&mut self, what: &str) {
        self.ex.finish_live("live.bin").unwrap();
        let end = self.net.now + Duration::from_secs(20);
        self.run_until(end);
        let root = *blake3::hash(&self.all).as_bytes();
        for n in &self.nodes {
            match n.pull.end() {
                Some(Ok(e)) => assert_eq!(
                    (e.root, e.size),
                    (root, self.all.len() as u64),
                    "{what}: {} final root",
                    n.addr
                ),
                other => panic!("{what}: {} ended {other:?}", n.addr),
            }
        }
    }

    fn append(&mut self, data: &[u8]) {
        self.spool.append(data).unwrap();
        self.all.extend_from_slice(data);
    }

    /// Runs until `until` (virtual time) or every node ended.
    fn run_until(&mut self, until: Instant) {
        let mut iters = 0u64;
        loop {
            iters += 1;
            assert!(iters < 2_000_000, "simulation does not progress");
            let now = self.net.now;
            while let Some(d) = self.net.pop_due() {
                if d.to == addr(EXPOSER) {
                    self.ex.handle(now, d.from, &d.data);
                } else if self.group.map(SocketAddr::V4) == Some(d.to) {
                    // Every member hears the group.
                    for n in self.nodes.iter_mut().filter(|n| n.in_group) {
                        n.pull.handle_group(now, &d.data);
                    }
                } else if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == d.to) {
                    n.pull.handle(now, d.from, &d.data);
                }
            }
            for n in &mut self.nodes {
                if n.pull.poll_timeout().is_some_and(|t| t <= now) {
                    n.pull.handle_timeout(now);
                }
                while let Some(t) = n.pull.poll_transmit(now) {
                    self.net.send(n.addr, &t);
                }
                let more = n.pull.take_output();
                if !more.is_empty() {
                    n.out.extend(more);
                    n.grew.push((n.out.len(), now));
                }
                n.done = n.pull.end().is_some();
                n.in_group |= n.pull.group().is_some();
            }
            while let Some(t) = self.ex.poll_transmit() {
                let b: u64 = t.datagrams().map(|d| d.len() as u64).sum();
                self.sent += b;
                if self.group.map(SocketAddr::V4) == Some(t.dest) {
                    self.group_sent += b;
                }
                self.net.send(addr(EXPOSER), &t);
            }
            if self.nodes.iter().all(|n| n.done) {
                return;
            }
            let timers: Vec<Option<Instant>> = self
                .nodes
                .iter()
                .map(|n| n.pull.poll_timeout())
                .chain([Some(until)])
                .collect();
            if !self.net.advance_to_next(timers) || self.net.now >= until {
                return;
            }
        }
    }
}

fn record(r: &mut SimRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| r.next_u64() as u8).collect()
}

/// Records of 4 KiB every 20 ms, a few larger bursts; a follower from the start and
/// a late joiner both end byte-exact with root = BLAKE3 of everything.
fn stream_to_follower_and_late_joiner(seed: u64, link: LinkConfig) -> Vec<Duration> {
    let mut w = World::new(seed, link);
    let mut r = SimRng::new(seed);
    w.join("198.51.100.7:40000", Follower::new());
    let step = Duration::from_millis(20);
    let mut t = w.net.now;
    let mut records = Vec::new();
    for i in 0..60 {
        let len = if i % 17 == 5 { 70_000 } else { 4096 };
        let rec = record(&mut r, len);
        w.append(&rec);
        records.push((w.all.len(), w.net.now));
        if i == 30 {
            w.join("198.51.100.8:40000", Follower::new());
        }
        t += step;
        w.run_until(t);
        // The follower from the start is never far behind: within a few records.
        let behind = w.all.len() - w.nodes[0].out.len();
        assert!(
            behind <= 4 * 70_000,
            "seed {seed}: follower {behind} bytes behind at record {i}"
        );
    }
    w.end_and_check(&format!("seed {seed}"));
    for n in &w.nodes {
        assert!(n.out == w.all, "seed {seed}: {} output differs", n.addr);
    }
    // Rounds were many (it followed), not one pull at the end.
    assert!(w.nodes[0].pull.rounds > 10, "{}", w.nodes[0].pull.rounds);
    latencies(&w.nodes[0], &records)
}

/// Write-to-output latency of each record at a follower, sorted.
fn latencies(n: &Node, records: &[(usize, Instant)]) -> Vec<Duration> {
    let mut l: Vec<Duration> = records
        .iter()
        .map(|&(end, at)| {
            n.reached(end)
                .expect("written")
                .saturating_duration_since(at)
        })
        .collect();
    l.sort();
    l
}

#[test]
fn a_stream_reaches_a_follower_and_a_late_joiner_byte_exact() {
    for seed in 1..=3 {
        let l = stream_to_follower_and_late_joiner(seed, LinkConfig::default());
        // A 10 ms round trip: a record (a partial chunk) is out within a few round
        // trips (the poll wait, the handshake, the outboard's tail, the chunk).
        let (p50, max) = (l[l.len() / 2], l[l.len() - 1]);
        assert!(
            p50 <= Duration::from_millis(50) && max <= Duration::from_millis(120),
            "seed {seed}: p50 {p50:?}, max {max:?}"
        );
    }
}

#[test]
fn a_stream_survives_a_lossy_reordering_link() {
    for seed in 10..=13 {
        let link = LinkConfig {
            loss: 0.03,
            jitter: Duration::from_millis(3),
            duplicate: 0.01,
            ..Default::default()
        };
        stream_to_follower_and_late_joiner(seed, link);
    }
}

/// A follower that already holds a prefix (its file from a killed run) gets only the
/// rest, and a prefix that is not the stream's is refused.
#[test]
fn a_resumed_follower_goes_on_from_its_prefix() {
    let mut w = World::new(5, LinkConfig::default());
    let mut r = SimRng::new(5);
    let first = record(&mut r, 100_000);
    w.append(&first);
    let held = w.all[..50_000].to_vec();
    w.join_resumed("198.51.100.7:40000", &held);
    let mut wrong = held.to_vec();
    wrong[20_000] ^= 1;
    w.join_resumed("198.51.100.8:40000", &wrong);
    let t = w.net.now + Duration::from_millis(200);
    w.run_until(t);
    let rest = record(&mut r, 30_000);
    w.append(&rest);
    w.ex.finish_live("live.bin").unwrap();
    let t = w.net.now + Duration::from_secs(10);
    w.run_until(t);
    let good = &w.nodes[0];
    assert!(
        matches!(good.pull.end(), Some(Ok(_))),
        "{:?}",
        good.pull.end()
    );
    assert_eq!(good.out, w.all[50_000..], "only the rest is written");
    // Fewer content bytes than the whole: the held chunks were not pulled again.
    assert!(good.pull.stats.content_bytes < 100_000);
    let bad = &w.nodes[1];
    assert!(
        matches!(
            bad.pull.end(),
            Some(Err(LivePullError::Pull(PullError::BadCheckpoint { .. })))
        ),
        "{:?}",
        bad.pull.end()
    );
    assert!(bad.out.is_empty());
}

/// An exposer that rewrites bytes a follower already verified: the next checkpoint
/// is refused (its CVs change a verified chunk, or a written partial chunk changed).
#[test]
fn a_rewritten_past_fails_the_follower() {
    for (offset, seed) in [(100u64, 7u64), (40_000, 8)] {
        let mut w = World::new(seed, LinkConfig::default());
        let mut r = SimRng::new(seed);
        w.join("198.51.100.7:40000", Follower::new());
        let rec = record(&mut r, 40_100);
        w.append(&rec);
        let t = w.net.now + Duration::from_millis(200);
        w.run_until(t);
        assert_eq!(w.nodes[0].out.len(), 40_100, "followed");
        w.spool.rewrite(offset, b"forged").unwrap();
        let rec = record(&mut r, 30_000);
        w.append(&rec);
        let t = w.net.now + Duration::from_secs(5);
        w.run_until(t);
        let end = w.nodes[0].pull.end();
        assert!(
            matches!(
                end,
                Some(Err(LivePullError::Pull(PullError::BadCheckpoint { .. })))
                    | Some(Err(LivePullError::Live(LiveError::Changed { .. })))
            ),
            "offset {offset}: {end:?}"
        );
        assert_eq!(
            w.nodes[0].out.len(),
            40_100,
            "nothing written after the lie"
        );
    }
}

/// A window of 256 KiB over a stream of 12 MiB (past the 8 MiB of CVs one outboard
/// chunk holds): a follower from the start gets every byte; a joiner after the
/// window moved starts at its start and gets every byte from there; both end with
/// the root of every byte, and the exposer's disk holds about the window.
#[test]
fn a_window_bounds_the_disk_and_late_joiners_start_there() {
    let window = 256 * 1024u64;
    let mut w = World::windowed(21, LinkConfig::default(), Some(window));
    let mut r = SimRng::new(21);
    w.join("198.51.100.7:40000", Follower::new());
    let step = Duration::from_millis(20);
    let mut t = w.net.now;
    let mut most_disk = 0;
    for i in 0..192 {
        let rec = record(&mut r, 64 * 1024 + (i % 7) * 1000);
        w.append(&rec);
        if i == 150 {
            w.join("198.51.100.8:40000", Follower::new());
        }
        t += step;
        w.run_until(t);
        most_disk = most_disk.max(w.spool.disk_bytes());
    }
    w.end_and_check("window");
    assert!(
        w.nodes[0].out == w.all,
        "the follower from the start has every byte"
    );
    assert_eq!(w.nodes[0].pull.follower().joined_at(), 0);
    let joiner = &w.nodes[1];
    let at = joiner.pull.follower().joined_at() as usize;
    let held_then = 151 * 64 * 1024;
    assert!(
        at > 0 && at + (window as usize) >= held_then - 64 * 1024,
        "joined at {at}"
    );
    assert!(
        joiner.out == w.all[at..],
        "the joiner has every byte from {at}"
    );
    // The window, the checkpoints still served (at most a window older), a batch of
    // chunks freed at once and the CVs: about 3 windows, not the 12 MiB streamed.
    assert!(
        most_disk < 4 * window + 256 * 1024,
        "{most_disk} bytes on disk for a window of {window}"
    );
}

/// Four followers of a stream on a LAN whose exposer has a multicast group: every
/// one is byte-exact with the root of every byte, they take content chunks from the
/// group (checkpoints differ, the sealing does not), and the exposer sends far less
/// than to four followers without the group, in the same stream.
#[test]
fn followers_on_a_lan_share_the_group() {
    let group: std::net::SocketAddrV4 = "239.255.42.7:5000".parse().unwrap();
    let lan = LinkConfig {
        delay: Duration::from_micros(200),
        rate: 125_000_000,
        queue_bytes: 4 << 20,
        ..Default::default()
    };
    let run = |g: Option<std::net::SocketAddrV4>| {
        let mut w = World::build(31, lan.clone(), None, g);
        let mut r = SimRng::new(31);
        for i in 0..4 {
            w.join(&format!("198.51.100.{}:40000", i + 1), Follower::new());
        }
        let step = Duration::from_millis(20);
        let mut t = w.net.now;
        for i in 0..100 {
            let rec = record(&mut r, if i % 10 == 3 { 200_000 } else { 16_000 });
            w.append(&rec);
            t += step;
            w.run_until(t);
        }
        w.end_and_check(if g.is_some() { "group" } else { "unicast" });
        for n in &w.nodes {
            assert!(n.out == w.all, "{} output differs", n.addr);
        }
        w
    };
    let with = run(Some(group));
    let without = run(None);
    for n in &with.nodes {
        assert!(
            n.pull.stats.group_datagrams > 0 && !n.pull.stats.left_group,
            "{}: {} group datagrams, left {}",
            n.addr,
            n.pull.stats.group_datagrams,
            n.pull.stats.left_group
        );
    }
    let stream = with.all.len() as f64;
    let (a, b) = (with.sent as f64 / stream, without.sent as f64 / stream);
    // Measured: 1.47x with the group, 6.17x without (each follower fetches the
    // partial last chunk again as it grows, and the outboard's tail each round).
    assert!(
        b > 3.5,
        "four unicast followers cost the exposer {b:.2}x the stream"
    );
    assert!(
        a < 2.0 && a < 0.4 * b && with.group_sent as f64 > 0.5 * with.sent as f64,
        "with the group {a:.2}x the stream ({} of {} bytes to the group), without {b:.2}x",
        with.group_sent,
        with.sent
    );
}

/// Four followers of a 50 Mbit/s stream on a LAN of 200 Mbit/s: a round's content
/// that another follower asked for arrives before the round's outboard can verify
/// it; kept until it can (it used to be dropped, then asked for within the group's
/// "just sent" window, not sent again, and timed out), the exposer sends about one
/// copy.
#[test]
fn followers_of_a_fast_stream_share_the_group() {
    let group: std::net::SocketAddrV4 = "239.255.42.8:5000".parse().unwrap();
    let lan = LinkConfig {
        delay: Duration::from_micros(200),
        rate: 25_000_000,
        queue_bytes: 4 << 20,
        ..Default::default()
    };
    let mut w = World::build(32, lan, None, Some(group));
    let mut r = SimRng::new(32);
    for i in 0..4 {
        w.join(&format!("198.51.100.{}:40000", i + 1), Follower::new());
    }
    let step = Duration::from_millis(10);
    let mut t = w.net.now;
    for _ in 0..256 {
        let rec = record(&mut r, 64 * 1024);
        w.append(&rec);
        t += step;
        w.run_until(t);
    }
    w.end_and_check("fast stream");
    for n in &w.nodes {
        assert!(n.out == w.all, "{} output differs", n.addr);
    }
    // Measured: 1.19x (1.92x when such content was dropped).
    let sent = w.sent as f64 / w.all.len() as f64;
    assert!(
        sent < 1.5,
        "four followers cost the exposer {sent:.2}x the stream"
    );
}

/// While the stream does not grow, a follower's rounds cost a handshake only: the
/// root of what it holds matches the checkpoint's, and no chunk or outboard is
/// fetched again (the partial last chunk was, every round).
#[test]
fn an_idle_stream_costs_handshakes_only() {
    let mut w = World::new(41, LinkConfig::default());
    let mut r = SimRng::new(41);
    w.join("198.51.100.7:40000", Follower::new());
    let rec = record(&mut r, 100_000);
    w.append(&rec);
    let t = w.net.now + Duration::from_millis(300);
    w.run_until(t);
    assert_eq!(w.nodes[0].out.len(), 100_000);
    let (sent, rounds) = (w.sent, w.nodes[0].pull.rounds);
    let t = w.net.now + Duration::from_secs(1);
    w.run_until(t);
    let idle_rounds = w.nodes[0].pull.rounds - rounds;
    let per_round = (w.sent - sent) / idle_rounds.max(1);
    // A WELCOME is about 400 bytes; a partial chunk or an outboard chunk is more.
    assert!(
        per_round < 600,
        "an idle round cost the exposer {per_round} bytes"
    );
    assert!(idle_rounds >= 10, "{idle_rounds} rounds in an idle second");
    w.end_and_check("idle");
    assert!(w.nodes[0].out == w.all);
}

/// A follower whose file ends before the window's start is told it fell behind,
/// and writes nothing.
#[test]
fn a_follower_behind_the_window_is_told() {
    let mut w = World::windowed(22, LinkConfig::default(), Some(64 * 1024));
    let mut r = SimRng::new(22);
    let first = record(&mut r, 2_000_000);
    w.append(&first);
    let held = w.all[..50_000].to_vec();
    w.join_resumed("198.51.100.7:40000", &held);
    let t = w.net.now + Duration::from_secs(2);
    w.run_until(t);
    let n = &w.nodes[0];
    assert!(
        matches!(
            n.pull.end(),
            Some(Err(LivePullError::Pull(PullError::BehindWindow {
                at: 50_000,
                ..
            })))
        ),
        "{:?}",
        n.pull.end()
    );
    assert!(n.out.is_empty());
}

/// A puller that is not live-aware (a plain pull) is told the exposure is live; once
/// it has ended, it pulls the finished file.
#[test]
fn a_plain_pull_learns_it_is_live_then_gets_the_finished_file() {
    use rgtp::puller::{PullEvent, Puller};
    let mut w = World::new(9, LinkConfig::default());
    w.append(&[7u8; 20_000]);
    let me = addr("198.51.100.9:40000");
    let pull_once = |w: &mut World| -> Result<(), PullError> {
        let rng = w.net.machine_rng();
        let mut p = Puller::with_rng(PullConfig::new(addr(EXPOSER), "live.bin"), w.net.now, rng);
        for _ in 0..100_000 {
            let now = w.net.now;
            while let Some(d) = w.net.pop_due() {
                if d.to == addr(EXPOSER) {
                    w.ex.handle(now, d.from, &d.data);
                } else if d.to == me {
                    p.handle(now, d.from, &d.data);
                }
            }
            if p.poll_timeout().is_some_and(|t| t <= now) {
                p.handle_timeout(now);
            }
            while let Some(t) = p.poll_transmit(now) {
                w.net.send(me, &t);
            }
            while let Some(t) = w.ex.poll_transmit() {
                w.net.send(addr(EXPOSER), &t);
            }
            while let Some(ev) = p.poll_event() {
                match ev {
                    PullEvent::Done => return Ok(()),
                    PullEvent::Failed(e) => return Err(e),
                    _ => {}
                }
            }
            w.net.advance_to_next([p.poll_timeout()]);
        }
        panic!("no end");
    };
    assert_eq!(pull_once(&mut w), Err(PullError::IsLive));
    w.ex.finish_live("live.bin").unwrap();
    assert_eq!(pull_once(&mut w), Ok(()));
}

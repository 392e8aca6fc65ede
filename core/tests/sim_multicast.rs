//! LAN multicast (issue 18) in the deterministic simulator: an exposer with a group,
//! pullers that are its members. A datagram the exposer sends to the group is
//! delivered to every member (a member "without a route" gets none of them), so the
//! exposer's bytes sent show what one send to the group saves.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rgtp::crypto::Cipher;
use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::merkle::{self, CHUNK_SIZE};
use rgtp::puller::{PullConfig, PullEvent, Puller};
use rgtp::sim::{LinkConfig, SimNet, SimRng};
use rgtp::source::MemSource;
use rgtp::wire::{self, Data, Object, PacketType, DATA_HEADER_LEN};

const EXPOSER: &str = "192.0.2.1:443";
const GROUP: &str = "239.255.42.1:5000";

struct Slot {
    addr: SocketAddr,
    p: Puller,
    out: Vec<u8>,
    done: bool,
    /// The share of group datagrams that reach this puller: 1 on the LAN, 0 for a
    /// host without a multicast route, between for a member slower than the group
    /// (its link drops the rest).
    reach: f64,
}

struct Outcome {
    slots: Vec<Slot>,
    /// Bytes the exposer sent, in all.
    sent: u64,
    /// Bytes the exposer sent to the group.
    group_sent: u64,
    suppressed: u64,
}

/// `n` pullers started together on a `size`-byte file from an exposer with the group
/// `group` (or none); `reach(i)` is the share of the group's datagrams puller i
/// receives (1: all, 0: none). The link
/// loses `data_loss` of the DATA datagrams (and no others, so that every puller
/// starts at once: one whose handshake is lost joins late and needs a copy of its own).
/// With `forge`, a host on the LAN sends a forged DATA datagram to the group after
/// each transmit of the exposer's to it: the exposure's id (anyone on the LAN sees
/// it), a chunk and fragment drawn at random, random payload of the right length.
fn pulls(
    seed: u64,
    data_loss: f64,
    forge: bool,
    n: usize,
    size: usize,
    group: Option<SocketAddrV4>,
    reach: impl Fn(usize) -> f64,
) -> Outcome {
    let mut net = SimNet::new(seed, lan());
    let mut lose = SimRng::new(seed ^ 0x5eed);
    net.keep = Some(Box::new(move |d: &[u8]| {
        wire::peek_type(d) != Ok(PacketType::Data) || !lose.chance(data_loss)
    }));
    let mut r = SimRng::new(seed);
    let mut drop_rng = SimRng::new(seed ^ 0xd20b);
    let data: Arc<Vec<u8>> = Arc::new((0..size).map(|_| r.next_u64() as u8).collect());
    let key = net.static_key();
    let ex_addr: SocketAddr = EXPOSER.parse().unwrap();
    let cfg = ExposerConfig {
        multicast: group,
        ..Default::default()
    };
    let mut ex = Exposer::with_rng(cfg, key.private, net.now, net.machine_rng());
    let cvs = merkle::cvs_of_bytes(&data);
    let id = ex
        .add_exposure("file.bin", Box::new(MemSource(data.clone())), cvs)
        .id;
    let forger: SocketAddr = "198.51.100.200:4000".parse().unwrap();
    let mut slots: Vec<Slot> = (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("198.51.100.{}:4000", i + 1).parse().unwrap();
            Slot {
                addr,
                p: Puller::with_rng(
                    PullConfig::new(ex_addr, "file.bin"),
                    net.now,
                    net.machine_rng(),
                ),
                out: vec![0; size],
                done: false,
                reach: reach(i),
            }
        })
        .collect();
    let group_addr = group.map(SocketAddr::V4);
    let (mut sent, mut group_sent) = (0u64, 0u64);
    let end = net.now + Duration::from_secs(120);
    let mut iters = 0u64;
    while slots.iter().any(|s| !s.done) && net.now < end {
        iters += 1;
        assert!(
            iters < 10_000_000,
            "seed {seed}: simulation does not progress"
        );
        let now = net.now;
        while let Some(d) = net.pop_due() {
            if d.to == ex_addr {
                ex.handle(now, d.from, &d.data);
            } else if Some(d.to) == group_addr {
                for s in slots.iter_mut().filter(|s| !s.done) {
                    if drop_rng.chance(1.0 - s.reach) {
                        continue;
                    }
                    if let Some(g) = s.p.group() {
                        assert_eq!(Some(SocketAddr::V4(g)), group_addr);
                        s.p.handle_group(now, &d.data);
                    }
                }
            } else if let Some(s) = slots.iter_mut().find(|s| s.addr == d.to) {
                s.p.handle(now, d.from, &d.data);
            }
        }
        for s in &mut slots {
            if s.done {
                continue;
            }
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
                    PullEvent::Done => s.done = true,
                    PullEvent::Failed(e) => panic!("seed {seed}: {e}"),
                    _ => {}
                }
            }
        }
        while let Some(t) = ex.poll_transmit() {
            let b: u64 = t.datagrams().map(|d| d.len() as u64).sum();
            sent += b;
            if Some(t.dest) == group_addr {
                group_sent += b;
            }
            net.send(ex_addr, &t);
            if let (true, Some(g)) = (forge, group_addr) {
                let chunk = r.below((size / CHUNK_SIZE) as u64) as u32;
                let mut d = vec![0u8; DATA_HEADER_LEN + 1176];
                Data::write_header(&mut d, &id, Object::Content, chunk, r.below(14) as u8);
                for b in &mut d[DATA_HEADER_LEN..] {
                    *b = r.next_u64() as u8;
                }
                net.send_one(forger, g, d);
                // And garbage.
                let junk: Vec<u8> = (0..r.below(1300)).map(|_| r.next_u64() as u8).collect();
                net.send_one(forger, g, junk);
            }
        }
        let timers: Vec<Option<Instant>> = slots.iter().map(|s| s.p.poll_timeout()).collect();
        if !net.advance_to_next(timers) {
            break;
        }
    }
    for (i, s) in slots.iter().enumerate() {
        assert!(s.done, "seed {seed}: puller {i} did not finish");
        assert!(s.out == *data, "seed {seed}: puller {i}: content differs");
    }
    Outcome {
        slots,
        sent,
        group_sent,
        suppressed: ex.group_suppressed(),
    }
}

fn lan() -> LinkConfig {
    LinkConfig {
        delay: Duration::from_micros(200),
        rate: 125_000_000,
        queue_bytes: 4 << 20,
        ..Default::default()
    }
}

const SIZE: usize = 4 << 20;

#[test]
fn four_members_cost_the_exposer_about_one_copy() {
    for seed in 0..4 {
        let group = Some(GROUP.parse().unwrap());
        let m = pulls(seed, 0.0, false, 4, SIZE, group, |_| 1.0);
        let x = m.sent as f64 / SIZE as f64;
        assert!(
            x <= 1.3,
            "seed {seed}: the exposer sent {x:.2}x the file to four members"
        );
        assert!(m.group_sent as f64 >= 0.95 * m.sent as f64, "seed {seed}");
        assert!(
            m.suppressed > 0,
            "seed {seed}: identical requests were not merged"
        );
        for s in &m.slots {
            assert!(s.p.stats.group_datagrams > 0 && !s.p.stats.left_group);
            // Every member opens the group's datagrams with its own session's key:
            // one exposure id and content key for all.
            assert_eq!(s.p.relay_keys(), m.slots[0].p.relay_keys());
        }
        // The same pulls without the group: four copies (the check above can fail).
        let u = pulls(seed, 0.0, false, 4, SIZE, None, |_| 1.0);
        let ux = u.sent as f64 / SIZE as f64;
        assert!(ux >= 3.5, "seed {seed}: unicast sent {ux:.2}x");
        assert_eq!(u.group_sent, 0);
    }
}

#[test]
fn a_puller_the_group_does_not_reach_completes_by_unicast() {
    for seed in 0..4 {
        let group = Some(GROUP.parse().unwrap());
        // Puller 0 has no multicast route: it hears nothing from the group.
        let m = pulls(seed, 0.0, false, 3, SIZE, group, |i| {
            if i == 0 {
                0.0
            } else {
                1.0
            }
        });
        let p0 = &m.slots[0].p.stats;
        assert!(p0.left_group, "seed {seed}: puller 0 stayed in the group");
        assert_eq!(p0.group_datagrams, 0);
        for s in &m.slots[1..] {
            assert!(!s.p.stats.left_group, "seed {seed}");
            assert!(s.p.stats.group_datagrams > 0, "seed {seed}");
        }
        // One unicast copy plus about one group copy.
        let x = m.sent as f64 / SIZE as f64;
        assert!(x <= 2.5, "seed {seed}: sent {x:.2}x");
    }
}

#[test]
fn a_member_slower_than_the_group_leaves_it_for_unicast() {
    for seed in 0..4 {
        let group = Some(GROUP.parse().unwrap());
        // Puller 0's link drops 3 in 4 of the group's datagrams (it is behind a link
        // at a quarter of the group's rate): what it asks again would go to the group
        // and cost the others. It leaves, and the others stay.
        let m = pulls(seed, 0.0, false, 4, SIZE, group, |i| {
            if i == 0 {
                0.25
            } else {
                1.0
            }
        });
        assert!(
            m.slots[0].p.stats.left_group,
            "seed {seed}: puller 0 stayed"
        );
        for s in &m.slots[1..] {
            assert!(!s.p.stats.left_group, "seed {seed}");
        }
        // About one group copy and one unicast copy (2.15-2.25x). Seed 0 reached 7.2x
        // while a request that timed out in the exposer's queue was asked again and
        // sent twice (fixed with late RTT samples, sim_rate_cap.rs). Without the
        // loss floor the slow member's re-requests go to the group for the whole pull.
        let x = m.sent as f64 / SIZE as f64;
        assert!(x <= 3.0, "seed {seed}: sent {x:.2}x with one slow member");
    }
}

#[test]
fn members_complete_through_loss_on_the_lan() {
    for seed in 0..4 {
        let group = Some(GROUP.parse().unwrap());
        let m = pulls(seed, 0.03, false, 4, SIZE, group, |_| 1.0);
        let x = m.sent as f64 / SIZE as f64;
        assert!(
            x <= 1.3,
            "seed {seed}: the exposer sent {x:.2}x at 3 % loss"
        );
    }
}

/// One pull, configured by `setup`, from an exposer with a group whose cipher is
/// AES-256-GCM; returns whether the puller was offered the group, the exposer's
/// GROUP REQUESTs served through the group, and the datagrams sent to the group.
fn one_pull(setup: impl FnOnce(&mut PullConfig)) -> (bool, u64, u64) {
    let group: SocketAddrV4 = GROUP.parse().unwrap();
    let mut net = SimNet::new(1, lan());
    let key = net.static_key();
    let data: Arc<Vec<u8>> = Arc::new(vec![7; 64 << 10]);
    let ex_addr: SocketAddr = EXPOSER.parse().unwrap();
    let cfg = ExposerConfig {
        multicast: Some(group),
        cipher: Cipher::Aes256Gcm,
        ..Default::default()
    };
    let mut ex = Exposer::with_rng(cfg, key.private, net.now, net.machine_rng());
    let cvs = merkle::cvs_of_bytes(&data);
    ex.add_exposure("file.bin", Box::new(MemSource(data.clone())), cvs);
    let mut c = PullConfig::new(ex_addr, "file.bin");
    setup(&mut c);
    let me: SocketAddr = "198.51.100.9:4000".parse().unwrap();
    let mut p = Puller::with_rng(c, net.now, net.machine_rng());
    let mut done = false;
    let mut offered = false;
    let mut to_group = 0;
    for _ in 0..100_000 {
        offered |= p.group().is_some();
        let now = net.now;
        while let Some(d) = net.pop_due() {
            if d.to == SocketAddr::V4(group) {
                to_group += 1;
                if p.group().is_some() {
                    p.handle_group(now, &d.data);
                }
                continue;
            }
            if d.to == ex_addr {
                ex.handle(now, d.from, &d.data);
            } else {
                p.handle(now, d.from, &d.data);
            }
        }
        if p.poll_timeout().is_some_and(|t| t <= now) {
            p.handle_timeout(now);
        }
        while let Some(t) = p.poll_transmit(now) {
            net.send(me, &t);
        }
        while let Some(ev) = p.poll_event() {
            match ev {
                PullEvent::Done => done = true,
                PullEvent::Failed(e) => panic!("{e}"),
                _ => {}
            }
        }
        while let Some(t) = ex.poll_transmit() {
            net.send(ex_addr, &t);
        }
        if done || !net.advance_to_next([p.poll_timeout()]) {
            break;
        }
    }
    assert!(done);
    (offered, ex.stats.group_requests, to_group)
}

#[test]
fn a_puller_that_does_not_offer_multicast_is_served_by_unicast() {
    assert_eq!(one_pull(|c| c.multicast = false), (false, 0, 0));
}

#[test]
fn a_puller_with_another_cipher_than_the_groups_is_served_by_unicast() {
    // The group carries AES-256-GCM sealing; a puller offering only
    // ChaCha20-Poly1305 could not open it, so it is not offered the group.
    assert_eq!(
        one_pull(|c| c.ciphers = Cipher::ChaCha20Poly1305.bit()),
        (false, 0, 0)
    );
    // The same puller offering AES-256-GCM is (the check above can fail).
    let (offered, served, sent) = one_pull(|c| c.ciphers = Cipher::Aes256Gcm.bit());
    assert!(offered && served > 0 && sent > 0);
}

#[test]
fn a_puller_with_another_datagram_size_is_served_by_unicast() {
    // The group's fragments are 1200-byte datagrams; a puller asking for 600 cuts
    // chunks differently. (One asking for more gets the exposer's 1200, and the group.)
    assert_eq!(one_pull(|c| c.max_datagram = 600), (false, 0, 0));
    let (offered, _, sent) = one_pull(|c| c.max_datagram = 9000);
    assert!(offered && sent > 0);
}

#[test]
fn members_rebuild_chunks_from_repair_on_the_group() {
    for seed in 0..4 {
        let group = Some(GROUP.parse().unwrap());
        // 20 % of the DATA datagrams lost (to every member alike): repair is asked
        // for (--fec auto) and, sent to the group, serves every member.
        let m = pulls(seed, 0.2, false, 4, SIZE, group, |_| 1.0);
        let repaired: u64 = m.slots.iter().map(|s| s.p.stats.chunks_repaired).sum();
        assert!(
            repaired > 0,
            "seed {seed}: no chunk was rebuilt from repair"
        );
        let x = m.sent as f64 / SIZE as f64;
        assert!(
            x <= 1.8,
            "seed {seed}: the exposer sent {x:.2}x at 20 % loss"
        );
    }
}

#[test]
fn forged_group_datagrams_never_reach_the_file() {
    for seed in 0..4 {
        let group = Some(GROUP.parse().unwrap());
        // `pulls` checks every member's copy byte for byte.
        let m = pulls(seed, 0.0, true, 3, SIZE, group, |_| 1.0);
        for s in &m.slots {
            // Forged fragments did reach chunks being assembled (which then failed
            // their AEAD and were asked for again), and the copies are still exact.
            // (A member may leave for unicast: forgeries count as loss.)
            assert!(s.p.stats.bad_chunks > 0, "seed {seed}: no forgery landed");
        }
    }
}

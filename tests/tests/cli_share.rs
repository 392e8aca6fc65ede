//! Sharing with the real binaries on loopback: puller A runs `rgtp-pull URL --share
//! --seed 30`; puller B pulls from A's sharing port alone after A finished, and from
//! the origin and A together while A is still pulling. Both byte-exact. Peer
//! exchange: two `--share` pullers and a plain one, started together with no
//! `--from`, find each other through the origin alone, on loopback and on a LAN of
//! network namespaces (root).

use std::time::{Duration, Instant};

use rgtp_e2e::*;

/// The port of "rgtp-pull: sharing on ADDR" on A's stderr, once printed.
fn sharing_port(stderr: &str) -> Option<u16> {
    let line = stderr.lines().find(|l| l.contains("sharing on "))?;
    let addr = line
        .split("sharing on ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    addr.rsplit(':').next()?.parse().ok()
}

fn wait_for(p: &mut Proc, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + limit;
    while !ok(&p.stderr()) {
        assert!(p.is_running(), "A ended before {what}: {}", p.stderr());
        assert!(Instant::now() < deadline, "no {what}: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_seeding_sharer_alone_serves_a_byte_exact_copy() {
    let dir = TestDir::new("share-seed");
    let size = 8 * MIB + 1234;
    let (src, origin) = expose_random_file(&dir, "seed.bin", size, "share-seed");
    let out_a = dir.join("a.out");
    let mut a = PullCmd::url(&dir, &origin.single().url, &out_a)
        .arg("--share")
        .arg("--seed")
        .arg("30")
        .arg("--json")
        .spawn(&dir);
    wait_for(&mut a, "seeding", PULL_DEADLINE, |e| {
        e.contains("seeding for 30 s")
    });
    assert_same_content(&src, &out_a, "A");
    let port = sharing_port(&a.stderr()).expect("sharing port");
    // B: from A alone, by host:port and name, with no root given (the sharer's
    // manifest names the origin's root; the copy is compared below).
    let out_b = dir.join("b.out");
    let done = PullCmd::by_name(&dir, &format!("127.0.0.1:{port}"), "seed.bin", &out_b)
        .arg("--json")
        .run(&dir);
    done.assert_success();
    assert_same_content(&src, &out_b, "B from the sharer alone");
    let r = done.json();
    assert_eq!(r.sources()[0].bytes, size, "{}", r.0);
    // Ctrl-C ends the seeding; A then reports what it served.
    assert!(a.signal(libc::SIGINT));
    let fa = a.finish(Duration::from_secs(20));
    fa.assert_success();
    let ra = fa.json();
    assert_eq!(ra.u64("share_port"), port as u64, "{}", ra.0);
    assert!(ra.u64("share_bytes_sent") >= size, "{}", ra.0);
    assert_eq!(ra.u64("share_missing_sent"), 0, "{}", ra.0);
}

#[test]
fn a_sharer_still_pulling_serves_beside_the_origin() {
    let dir = TestDir::new("share-during");
    let size = 24 * MIB;
    let (src, origin) = expose_random_file(&dir, "during.bin", size, "share-during");
    // Both pullers reach the origin through slow relays, so A is still pulling while
    // B runs and the sharer carries a real part of B's copy.
    let ra = Relay::start(origin.addr(), 3_000_000);
    let rb = Relay::start(origin.addr(), 3_000_000);
    let out_a = dir.join("a.out");
    let mut a = PullCmd::url(&dir, &ra.url(&origin.single().url), &out_a)
        .arg("--share")
        .arg("--seed")
        .arg("30")
        .arg("--json")
        .spawn(&dir);
    wait_for(&mut a, "sharing port", PULL_DEADLINE, |e| {
        sharing_port(e).is_some()
    });
    let port = sharing_port(&a.stderr()).expect("sharing port");
    let state = state_path(&out_a);
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_sidecar(&state).is_none_or(|s| s.have.count() < (size / 16384) / 5) {
        assert!(
            Instant::now() < deadline,
            "A makes no progress: {}",
            a.stderr()
        );
        assert!(a.is_running(), "A ended early: {}", a.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    let out_b = dir.join("b.out");
    let done = PullCmd::url(&dir, &rb.url(&origin.single().url), &out_b)
        .arg("--from")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--json")
        .run(&dir);
    done.assert_success();
    assert_same_content(&src, &out_b, "B from the origin and the sharer");
    let r = done.json();
    let s = r.sources();
    assert_eq!(s.len(), 2, "{}", r.0);
    assert_eq!(s[0].bytes + s[1].bytes, size, "{}", r.0);
    assert!(s[1].bytes > 0, "the sharer carried nothing: {}", r.0);
    assert!(s[0].bytes > 0, "the origin carried nothing: {}", r.0);
    assert_eq!(r.u64("sources_dropped"), 0, "{}", r.0);
    // A finishes too, exact, and seeds until told to stop.
    wait_for(&mut a, "seeding", PULL_DEADLINE, |e| {
        e.contains("seeding for")
    });
    assert_same_content(&src, &out_a, "A");
    assert!(a.signal(libc::SIGINT));
    let fa = a.finish(Duration::from_secs(20));
    fa.assert_success();
    let ja = fa.json();
    assert!(ja.u64("share_bytes_sent") >= s[1].bytes, "{}", ja.0);
    eprintln!(
        "B: origin {} bytes, sharer {} bytes; sharer sent {} MISSING",
        s[0].bytes,
        s[1].bytes,
        ja.u64("share_missing_sent")
    );
}

#[test]
fn sharers_and_a_plain_puller_find_each_other_through_the_origin() {
    let dir = TestDir::new("share-pex");
    let size = 24 * MIB + 4321;
    let (src, origin) = expose_random_file(&dir, "pex.bin", size, "share-pex");
    let url = &origin.single().url;
    // Each reaches the origin through a slow relay of its own (3 MB/s), so most of
    // each copy is worth taking from the others; between them, loopback is fast.
    let relays: Vec<Relay> = (0..3)
        .map(|_| Relay::start(origin.addr(), 3_000_000))
        .collect();
    let outs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| dir.join(format!("{n}.out")))
        .collect();
    let mut sharers: Vec<Proc> = (0..2)
        .map(|i| {
            PullCmd::url(&dir, &relays[i].url(url), &outs[i])
                .arg("--share")
                .arg("--seed")
                .arg("30")
                .arg("--json")
                .spawn(&dir)
        })
        .collect();
    let plain = PullCmd::url(&dir, &relays[2].url(url), &outs[2])
        .arg("--json")
        .run(&dir);
    plain.assert_success();
    assert_same_content(&src, &outs[2], "the plain puller's copy");
    let r = plain.json();
    let s = r.sources();
    assert_eq!(s.iter().map(|s| s.bytes).sum::<u64>(), size, "{}", r.0);
    let from_sharers: u64 = s[1..].iter().map(|s| s.bytes).sum();
    assert!(from_sharers > 0, "no bytes from a sharer: {}", r.0);
    for (i, a) in sharers.iter_mut().enumerate() {
        wait_for(a, "seeding", PULL_DEADLINE, |e| e.contains("seeding for"));
        assert_same_content(&src, &outs[i], "a sharer's copy");
    }
    let mut found_each_other = 0;
    for a in &mut sharers {
        assert!(a.signal(libc::SIGINT));
    }
    for (i, a) in sharers.into_iter().enumerate() {
        let f = a.finish(Duration::from_secs(20));
        f.assert_success();
        let j = f.json();
        let s = j.sources();
        eprintln!(
            "sharer {i}: {:?}",
            s.iter().map(|s| (&s.addr, s.bytes)).collect::<Vec<_>>()
        );
        // Only the other sharer can have been found (the plain puller does not
        // share), and at the address its sharing port is on.
        assert!(s.len() <= 2, "{}", j.0);
        if s.len() == 2 && s[1].bytes > 0 {
            found_each_other += 1;
        }
        assert!(j.u64("share_bytes_sent") > 0, "{}", j.0);
    }
    assert!(
        found_each_other >= 1,
        "neither sharer pulled from the other"
    );
    eprintln!(
        "plain puller: {:?}",
        s.iter().map(|s| (&s.addr, s.bytes)).collect::<Vec<_>>()
    );
}

#[test]
fn seed_without_share_is_a_usage_error() {
    let dir = TestDir::new("share-usage");
    let out = dir.join("x.out");
    let done = PullCmd::by_name(&dir, "127.0.0.1:9", "x", &out)
        .arg("--seed")
        .arg("5")
        .run(&dir);
    done.assert_clean_error(2, &["--seed", "--share"]);
}

#[test]
fn sharers_on_a_lan_find_each_other_and_spare_the_origin() {
    // The origin on one host of a LAN of network namespaces, capped at 200 Mbit/s;
    // four `--share` pullers on four other hosts, started together with no --from.
    // They learn of each other from the origin (peer exchange), and the origin's
    // interface sends well under the four copies that four plain pulls cost.
    require_root!("network namespaces");
    let lan = Lan::new(5, |_| false);
    let dir = TestDir::new("share-lan");
    let size = 24 * MIB + 777;
    let src = dir.join("file.bin");
    write_random_file(&src, size, "share-lan");
    let mut opts = ExposeOpts::new(&dir, &[&src]).bind(Some(&lan.ips[0]));
    opts.extra_args = vec!["--max-rate".into(), "200M".into()];
    opts.netns = Some(lan.ns[0].clone());
    let origin = opts.start(&dir);
    let url = origin.single().url.clone();
    let tx0 = lan.tx_bytes(0);
    let pulls: Vec<_> = (1..5)
        .map(|i| {
            let out = dir.join(format!("out{i}.bin"));
            let mut cmd = PullCmd::url(&dir, &url, &out)
                .arg("--share")
                .arg("--seed")
                .arg("3")
                .arg("--json");
            cmd.config_dir = dir.join(format!("puller{i}"));
            std::fs::create_dir_all(&cmd.config_dir).expect("puller config dir");
            cmd.netns = Some(lan.ns[i].clone());
            (cmd.spawn(&dir), out)
        })
        .collect();
    let mut from_sharers = 0;
    for (i, (p, out)) in pulls.into_iter().enumerate() {
        let done = p.finish(PULL_DEADLINE);
        done.assert_success();
        assert_same_content(&src, &out, &format!("puller {}", i + 1));
        let r = done.json();
        let s = r.sources();
        assert_eq!(s.iter().map(|s| s.bytes).sum::<u64>(), size, "{}", r.0);
        from_sharers += s[1..].iter().map(|s| s.bytes).sum::<u64>();
    }
    let sent = (lan.tx_bytes(0) - tx0) as f64 / size as f64;
    eprintln!("origin sent {sent:.2}x the file; sharers delivered {from_sharers} bytes");
    assert!(
        from_sharers >= size,
        "the sharers delivered only {from_sharers} bytes to each other"
    );
    assert!(
        sent < 2.5,
        "the origin sent {sent:.2}x the file to four sharing pullers"
    );
}

//! LAN multicast with the real binaries (issue 18): `rgtp-expose --multicast` and
//! plain `rgtp-pull URL`s on a LAN of network namespaces this test creates: a bridge
//! (in a namespace of its own, multicast snooping off, as a plain switch) and one
//! namespace per host, each joined to it by a veth pair, with a 224.0.0.0/4 route on
//! its veth. Nothing else is reachable from them.
//!
//! Needs root (network namespaces): CI runs the tests as root. Without it every test
//! here fails with a message saying so, unless `RGTP_SKIP_ROOT_TESTS=1` says to skip
//! them, and then each says so (`rgtp_e2e::skip`).

use std::fs;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use rgtp_e2e::*;

/// Runs `ip ARGS...`; panics with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip ({e}): iproute2 is needed"));
    assert!(
        out.status.success(),
        "ip {} failed: {} (these tests need root for network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A bridge and `hosts` namespaces on it (host i at 10.87.T.(i+1)); all deleted on
/// drop, panic or not.
struct Lan {
    bridge_ns: String,
    ns: Vec<String>,
    ifs: Vec<String>,
    ports: Vec<String>,
    ips: Vec<String>,
}

impl Lan {
    /// `routed(i)`: whether host i gets the 224.0.0.0/4 route (without it, and with no
    /// default route, it cannot join a group).
    fn new(hosts: usize, routed: impl Fn(usize) -> bool) -> Lan {
        need("ip");
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let mut lan = Lan {
            bridge_ns: format!("rgtp-mcb-{tag}"),
            ns: Vec::new(),
            ifs: Vec::new(),
            ports: Vec::new(),
            ips: Vec::new(),
        };
        let b = lan.bridge_ns.clone();
        ip(&["netns", "add", &b]);
        ip(&["-n", &b, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &b,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &b, "link", "set", "br0", "up"]);
        for i in 0..hosts {
            let ns = format!("rgtp-mc{i}-{tag}");
            // Interface names are at most 15 bytes.
            let dev = format!("mc{i}-{tag}");
            let port = format!("mb{i}-{tag}");
            let addr = format!("10.87.{}.{}", n % 250, i + 1);
            ip(&["netns", "add", &ns]);
            lan.ns.push(ns.clone());
            ip(&[
                "link", "add", &dev, "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
                &b,
            ]);
            ip(&["-n", &b, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &b, "link", "set", &port, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &dev]);
            ip(&["-n", &ns, "link", "set", &dev, "up"]);
            if routed(i) {
                ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", &dev]);
            }
            lan.ifs.push(dev);
            lan.ports.push(port);
            lan.ips.push(addr);
        }
        lan
    }

    /// The bridge stops flooding multicast to host i's port (a switch that does not
    /// forward the group there): the host joins, and hears nothing.
    fn no_flood_to(&self, i: usize) {
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &self.ports[i],
            "type",
            "bridge_slave",
            "mcast_flood",
            "off",
        ]);
    }

    /// Bytes host i's veth has sent.
    fn tx_bytes(&self, i: usize) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns[i], "cat"])
            .arg(format!(
                "/sys/class/net/{}/statistics/tx_bytes",
                self.ifs[i]
            ))
            .output()
            .expect("read tx_bytes");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("tx_bytes is a number")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // A namespace takes its end of each veth pair with it, and so both ends.
        for ns in self.ns.iter().chain([&self.bridge_ns]) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

const GROUP_PORT: u16 = 5000;

/// An exposer of a `size`-byte random file on host 0 of `lan`, with the group
/// 239.255.87.N:5000 sent on its veth; returns the file and the exposer.
fn expose_with_group(dir: &TestDir, lan: &Lan, size: u64) -> (std::path::PathBuf, ExposerProc) {
    let src = dir.join("file.bin");
    write_random_file(&src, size, "multicast");
    let mut opts = ExposeOpts::new(dir, &[&src]).bind(Some(&lan.ips[0]));
    let group = format!("239.255.87.{}:{GROUP_PORT}", std::process::id() % 250);
    opts.extra_args = vec![
        "--multicast".into(),
        group,
        "--multicast-if".into(),
        lan.ifs[0].clone(),
        // The group's rate (the pullers' rate control meets it as a bottleneck).
        "--max-rate".into(),
        "400M".into(),
    ];
    opts.netns = Some(lan.ns[0].clone());
    let ex = opts.start(dir);
    (src, ex)
}

/// `rgtp-pull URL --json` on host i of `lan`, with a config directory of its own.
fn pull_on(dir: &TestDir, lan: &Lan, i: usize, url: &str) -> (Proc, std::path::PathBuf) {
    let out = dir.join(format!("out{i}.bin"));
    let mut cmd = PullCmd::url(dir, url, &out).arg("--json");
    cmd.config_dir = dir.join(format!("puller{i}"));
    fs::create_dir_all(&cmd.config_dir).expect("puller config dir");
    cmd.netns = Some(lan.ns[i].clone());
    (cmd.spawn(dir), out)
}

#[test]
fn four_pullers_on_a_bridge_take_one_copy_from_the_group() {
    require_root!("network namespaces");
    let lan = Lan::new(5, |_| true);
    let dir = TestDir::new("multicast-four");
    let size = 32 * MIB + 4321;
    let (src, ex) = expose_with_group(&dir, &lan, size);
    let url = ex.single().url.clone();
    let tx0 = lan.tx_bytes(0);
    let pulls: Vec<_> = (1..5).map(|i| pull_on(&dir, &lan, i, &url)).collect();
    for (i, (p, out)) in pulls.into_iter().enumerate() {
        let done = p.finish(PULL_DEADLINE);
        done.assert_success();
        assert_same_content(&src, &out, &format!("puller {}", i + 1));
        let r = done.json();
        assert!(
            r.u64("group_datagrams") > 0 && !r.bool("left_group"),
            "puller {} did not take data from the group: {}",
            i + 1,
            r.0
        );
    }
    let sent = (lan.tx_bytes(0) - tx0) as f64 / size as f64;
    eprintln!("the exposer's interface sent {sent:.2}x the file");
    // Four unicast pulls send 4x (and more); one group copy about 1x.
    assert!(
        sent <= 2.0,
        "the exposer's interface sent {sent:.2}x the file to four members"
    );
    drop(ex);
}

#[test]
fn pullers_the_group_does_not_reach_complete_by_unicast() {
    require_root!("network namespaces");
    // Host 1 has no multicast route (joining fails); the bridge does not forward the
    // group to host 2 (it joins and hears nothing); host 3 is a plain member.
    let lan = Lan::new(4, |i| i != 1);
    lan.no_flood_to(2);
    let dir = TestDir::new("multicast-unrouted");
    let size = 8 * MIB + 77;
    let (src, ex) = expose_with_group(&dir, &lan, size);
    let url = ex.single().url.clone();
    let pulls: Vec<_> = (1..4).map(|i| pull_on(&dir, &lan, i, &url)).collect();
    let mut reports = Vec::new();
    for (i, (p, out)) in pulls.into_iter().enumerate() {
        let done = p.finish(PULL_DEADLINE);
        done.assert_success();
        assert_same_content(&src, &out, &format!("puller {}", i + 1));
        reports.push(done.json());
    }
    for (i, r) in reports[..2].iter().enumerate() {
        assert!(
            r.bool("left_group") && r.u64("group_datagrams") == 0,
            "puller {} should have left the group: {}",
            i + 1,
            r.0
        );
    }
    assert!(
        !reports[2].bool("left_group") && reports[2].u64("group_datagrams") > 0,
        "puller 3 should have pulled from the group: {}",
        reports[2].0
    );
    drop(ex);
}

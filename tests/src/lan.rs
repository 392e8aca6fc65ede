//! A LAN of network namespaces for tests that need more than loopback: a Linux
//! bridge in a namespace of its own (multicast snooping off, as a plain switch) and
//! one namespace per host, each joined to it by a veth pair. Nothing else is
//! reachable from them. Needs root; every namespace is deleted on drop.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::need;

/// Runs `ip ARGS...`; panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
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
pub struct Lan {
    /// The namespace holding the bridge.
    pub bridge_ns: String,
    /// Host i's namespace, its veth, its bridge port and its address.
    pub ns: Vec<String>,
    pub ifs: Vec<String>,
    pub ports: Vec<String>,
    pub ips: Vec<String>,
}

impl Lan {
    /// `routed(i)`: whether host i gets the 224.0.0.0/4 route (without it, and with no
    /// default route, it cannot join a group).
    pub fn new(hosts: usize, routed: impl Fn(usize) -> bool) -> Lan {
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
    pub fn no_flood_to(&self, i: usize) {
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
    pub fn tx_bytes(&self, i: usize) -> u64 {
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

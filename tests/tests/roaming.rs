//! Roaming and outages with real programs: `nc` under the shim (strict mode, both
//! ends), 30 MiB over a 40 Mbit/s veth between two network namespaces this test
//! creates, while the client moves to a new IP address mid-transfer, or while the
//! link is down for 30 s. The same address change breaks plain TCP, which shows the
//! test can fail.
//!
//! Needs root (network namespaces, veth, tc): CI runs the tests as root. Without it
//! every test here fails with a message saying so, unless `RGTP_SKIP_ROOT_TESTS=1`
//! says to skip them, and then each says so (`rgtp_e2e::skip`).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rgtp_e2e::{
    b3sum, ip, last_lines, need, require_root, shim, shim_log, shim_settings, socket_table_has,
    wait_until, write_random_file, Proc, TestDir, MIB, TCP_LISTEN,
};

const PORT: u16 = 5001;
const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";
/// Where the client moves: another subnet, as from one network to another.
const NEW_CLIENT_IP: &str = "10.78.0.2";
const SIZE: u64 = 30 * MIB;
/// How long a transfer may take after the disruption ended: the shim must finish
/// within it, plain TCP must not.
const AFTER_EVENT: Duration = Duration::from_secs(25);

/// Two network namespaces joined by a veth pair rate-limited to 40 Mbit/s each way;
/// both are deleted on drop (with the veth pair and everything in them), panic or not.
struct Netns {
    server: String,
    client: String,
    server_if: String,
    client_if: String,
}

impl Netns {
    fn new() -> Netns {
        need("ip");
        need("tc");
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let net = Netns {
            server: format!("rgtp-roam-s{tag}"),
            client: format!("rgtp-roam-c{tag}"),
            // Interface names are at most 15 bytes.
            server_if: format!("rs{tag}"),
            client_if: format!("rc{tag}"),
        };
        let (s, c, si, ci) = (&net.server, &net.client, &net.server_if, &net.client_if);
        ip(&["netns", "add", s]);
        ip(&["netns", "add", c]);
        ip(&["link", "add", si, "type", "veth", "peer", "name", ci]);
        ip(&["link", "set", si, "netns", s]);
        ip(&["link", "set", ci, "netns", c]);
        for (ns, dev, addr) in [(s, si, SERVER_IP), (c, ci, CLIENT_IP)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            // A token bucket: 40 Mbit/s, a 100 ms queue (tail drop beyond).
            net.exec(ns, "tc")
                .args(["qdisc", "add", "dev", dev, "root", "tbf", "rate", "40mbit"])
                .args(["burst", "32kbit", "latency", "100ms"])
                .status()
                .ok()
                .filter(|s| s.success())
                .unwrap_or_else(|| panic!("tc tbf on {dev} failed"));
        }
        // The server reaches the client's next network over the same link.
        ip(&["-n", s, "route", "add", "10.78.0.0/24", "dev", si]);
        net
    }

    /// `program` run inside namespace `ns`.
    fn exec(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// The client leaves its network for another: the new address is added, the old
    /// one removed (its route goes with it), and the server is reached through the new.
    fn move_client(&self) {
        let (c, ci) = (&self.client, &self.client_if);
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            &format!("{NEW_CLIENT_IP}/24"),
            "dev",
            ci,
        ]);
        ip(&[
            "-n",
            c,
            "addr",
            "del",
            &format!("{CLIENT_IP}/24"),
            "dev",
            ci,
        ]);
        ip(&[
            "-n",
            c,
            "route",
            "add",
            "10.77.0.0/24",
            "dev",
            ci,
            "src",
            NEW_CLIENT_IP,
        ]);
    }

    fn client_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.client, "link", "set", &self.client_if, state]);
    }

    /// Whether something in the server namespace has `PORT` bound (UDP) or listening
    /// (TCP).
    fn server_has(&self, udp: bool) -> bool {
        let files = if udp {
            "/proc/net/udp /proc/net/udp6"
        } else {
            "/proc/net/tcp /proc/net/tcp6"
        };
        let out = self
            .exec(&self.server, "sh")
            .arg("-c")
            .arg(format!("cat {files} 2>/dev/null"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        socket_table_has(&out, PORT, (!udp).then_some(TCP_LISTEN))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Which way the bytes go, and over what.
#[derive(Clone, Copy, PartialEq)]
enum Dir {
    /// Server to client (the client only acknowledges).
    Down,
    /// Client to server.
    Up,
}

/// What a disrupted transfer did.
struct Outcome {
    completed: bool,
    /// Bytes the receiving side got.
    got: u64,
    /// From the end of the disruption until 2 MiB more had arrived.
    recovered: Option<Duration>,
    /// The longest spell without a byte arriving, after the disruption.
    longest_stall: Duration,
    total: Duration,
}

/// Runs `nc` server and client in the two namespaces (under the shim in strict mode
/// when `shimmed`), sends `data` one way, calls `disrupt` once a third has arrived
/// and waits up to `AFTER_EVENT` after it for the transfer to end. Returns what
/// happened; the received file is `got`.
fn transfer(
    t: &TestDir,
    net: &Netns,
    shimmed: bool,
    dir: Dir,
    data: &Path,
    got: &Path,
    disrupt: impl FnOnce(&Netns),
) -> Outcome {
    need("nc");
    let (env, preload) = if shimmed {
        (
            shim_settings(t, PORT, true),
            format!("env LD_PRELOAD={} ", shim().display()),
        )
    } else {
        (Vec::new(), String::new())
    };
    let (server_io, client_io, client_flag) = match dir {
        Dir::Down => (
            format!("<{}", data.display()),
            format!("</dev/null >{}", got.display()),
            "-d",
        ),
        Dir::Up => (
            format!("</dev/null >{}", got.display()),
            format!("<{} >/dev/null", data.display()),
            "-N",
        ),
    };
    let spawn = |ns: &str, what: &str, script: String| {
        let mut c = net.exec(ns, "sh");
        c.arg("-c").arg(script).envs(env.iter().cloned());
        Proc::spawn(c, what, t.path(), false)
    };
    let mut server = spawn(
        &net.server,
        "nc-server",
        format!("exec {preload}nc -N -l {SERVER_IP} {PORT} {server_io}"),
    );
    wait_until("the nc server to listen", Duration::from_secs(20), || {
        assert!(server.is_running(), "nc server exited: {}", server.stderr());
        net.server_has(shimmed)
    });
    if shimmed {
        assert!(!net.server_has(false), "strict server has a TCP listener");
    }
    let start = Instant::now();
    let mut client = spawn(
        &net.client,
        "nc-client",
        format!("exec {preload}nc {client_flag} {SERVER_IP} {PORT} {client_io}"),
    );
    let size = || fs::metadata(got).map(|m| m.len()).unwrap_or(0);
    let end = Instant::now() + Duration::from_secs(60);
    while size() < SIZE / 3 {
        assert!(
            client.is_running(),
            "nc client ended early: {}\n{}",
            client.stderr(),
            log_tail(t)
        );
        assert!(
            Instant::now() < end,
            "a third never arrived\n{}",
            log_tail(t)
        );
        thread::sleep(Duration::from_millis(10));
    }
    disrupt(net);
    let event_end = Instant::now();
    let at_end = size();
    let (mut last_size, mut last_growth) = (at_end, event_end);
    let mut longest_stall = Duration::ZERO;
    let mut recovered = None;
    let deadline = event_end + AFTER_EVENT;
    let completed = loop {
        let now = Instant::now();
        let s = size();
        if s > last_size {
            longest_stall = longest_stall.max(now - last_growth);
            (last_size, last_growth) = (s, now);
        }
        if recovered.is_none() && s >= at_end + 2 * MIB {
            recovered = Some(now - event_end);
        }
        let receiver_done = match dir {
            Dir::Down => !client.is_running(),
            Dir::Up => !server.is_running(),
        };
        if receiver_done && s >= SIZE {
            break true;
        }
        if receiver_done || now >= deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(20));
    };
    if !completed {
        longest_stall = longest_stall.max(Instant::now() - last_growth);
    }
    let out = Outcome {
        completed,
        got: size(),
        recovered,
        longest_stall,
        total: start.elapsed(),
    };
    client.signal(libc::SIGKILL);
    server.signal(libc::SIGKILL);
    out
}

fn log_tail(t: &TestDir) -> String {
    format!("--- shim log (tail) ---\n{}", last_lines(&shim_log(t), 40))
}

fn report(what: &str, o: &Outcome) {
    eprintln!(
        "{what}: completed {} ({} of {SIZE} bytes) in {:.1} s; 2 MiB more {:?} after the \
         disruption; longest stall {:.2} s",
        o.completed,
        o.got,
        o.total.as_secs_f64(),
        o.recovered.map(|d| format!("{:.2} s", d.as_secs_f64())),
        o.longest_stall.as_secs_f64()
    );
}

/// Checks a shim run: byte-exact, and it went on soon after the disruption ended.
fn assert_survived(
    t: &TestDir,
    what: &str,
    o: &Outcome,
    data: &Path,
    got: &Path,
    recover: Duration,
) {
    report(what, o);
    assert!(o.completed, "{what}: did not complete\n{}", log_tail(t));
    assert_eq!(b3sum(got), b3sum(data), "{what}: bytes differ");
    let r = o.recovered.unwrap_or(Duration::MAX);
    assert!(
        r < recover,
        "{what}: took {r:?} to get going again (bound {recover:?})\n{}",
        log_tail(t)
    );
}

fn address_change(dir: Dir, label: &str) {
    let t = TestDir::new(label);
    let net = Netns::new();
    let data = t.join("data.bin");
    write_random_file(&data, SIZE, label);
    let got = t.join("got.bin");
    let o = transfer(&t, &net, true, dir, &data, &got, Netns::move_client);
    // Before the fix a reader that moved said nothing until its 15 s keepalive.
    assert_survived(&t, label, &o, &data, &got, Duration::from_secs(5));
}

/// Server to client while the client moves: the client only acknowledges, so it is
/// the one that must speak up from its new address.
#[test]
fn shim_nc_download_survives_client_address_change() {
    require_root!("it creates network namespaces, veth and tc");
    address_change(Dir::Down, "roam-down");
}

/// Client to server while the client moves.
#[test]
fn shim_nc_upload_survives_client_address_change() {
    require_root!("it creates network namespaces, veth and tc");
    address_change(Dir::Up, "roam-up");
}

/// The client's link is down for 30 s mid-transfer, then back.
#[test]
fn shim_nc_survives_30s_blackout() {
    require_root!("it creates network namespaces, veth and tc");
    let t = TestDir::new("roam-blackout");
    let net = Netns::new();
    let data = t.join("data.bin");
    write_random_file(&data, SIZE, "roam-blackout");
    let got = t.join("got.bin");
    let o = transfer(&t, &net, true, Dir::Down, &data, &got, |n| {
        n.client_link(false);
        thread::sleep(Duration::from_secs(30));
        n.client_link(true);
    });
    // The writer's probes back off to 2 s during the outage.
    assert_survived(&t, "30 s blackout", &o, &data, &got, Duration::from_secs(5));
}

/// Plain TCP under the same address change: the connection is tied to the old
/// address and never finishes. This is what proves the tests above can fail.
#[test]
fn plain_tcp_nc_breaks_on_client_address_change() {
    require_root!("it creates network namespaces, veth and tc");
    let t = TestDir::new("roam-tcp");
    let net = Netns::new();
    let data = t.join("data.bin");
    write_random_file(&data, SIZE, "roam-tcp");
    let got = t.join("got.bin");
    let o = transfer(&t, &net, false, Dir::Down, &data, &got, Netns::move_client);
    report("plain TCP", &o);
    assert!(
        !o.completed && o.got < SIZE,
        "plain TCP completed the transfer across the address change ({} bytes): the \
         script does not move the client",
        o.got
    );
}

//! Network helpers: ports, what is bound (read from the kernel's socket tables), IPv6
//! loopback.

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A UDP port on `ip` that nothing listens on (bound then released).
pub fn unused_udp_port(ip: IpAddr) -> u16 {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind probe socket");
    s.local_addr().unwrap().port()
}

/// True if this machine can use IPv6 loopback.
pub fn ipv6_loopback_available() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

/// A port free for both TCP and UDP on 127.0.0.1, for a server a test starts: below
/// the kernel's ephemeral range (as servers' ports are), so no other test's client
/// socket can be handed it between this check and the server's bind; each test
/// process starts at its own offset, and no port is handed out twice by one process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() % 500 * 20;
    for _ in 0..2000 {
        let p = 20_000 + ((base + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000) as u16;
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// TCP state LISTEN in `/proc/net/tcp`.
pub const TCP_LISTEN: &str = "0A";

/// Whether the text of kernel socket tables (`/proc/net/tcp`, `udp`, `tcp6`, `udp6`,
/// one or several concatenated) has a socket on local `port`, in `state` when given
/// (e.g. [`TCP_LISTEN`]). Header lines never match.
pub fn socket_table_has(tables: &str, port: u16, state: Option<&str>) -> bool {
    let hex = format!(":{port:04X}");
    tables.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() > 3 && cols[1].ends_with(&hex) && state.is_none_or(|s| cols[3] == s)
    })
}

/// The socket tables `names` (e.g. `["udp", "udp6"]`) under `dir` (`/proc/net`, or
/// `/proc/PID/net` for another network namespace), concatenated; missing ones empty.
fn tables(dir: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| fs::read_to_string(format!("{dir}/{n}")).unwrap_or_default())
        .collect()
}

/// Is something listening on TCP `port` (this network namespace)?
pub fn tcp_listening(port: u16) -> bool {
    socket_table_has(
        &tables("/proc/net", &["tcp", "tcp6"]),
        port,
        Some(TCP_LISTEN),
    )
}

/// Is something bound to UDP `port` (this network namespace)?
pub fn udp_bound(port: u16) -> bool {
    socket_table_has(&tables("/proc/net", &["udp", "udp6"]), port, None)
}

/// Is something bound to UDP `port` in process `pid`'s network namespace?
pub fn udp_bound_in(pid: u32, port: u16) -> bool {
    socket_table_has(
        &tables(&format!("/proc/{pid}/net"), &["udp", "udp6"]),
        port,
        None,
    )
}

/// `cmd` run inside network namespace `ns` (`ip netns exec NS ...`), with the same
/// arguments, environment and working directory.
pub fn in_netns(ns: &str, cmd: &Command) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

//! Network helpers: ports, IPv6 loopback.

use std::net::{IpAddr, SocketAddr, UdpSocket};

/// A UDP port on `ip` that nothing listens on (bound then released).
pub fn unused_udp_port(ip: IpAddr) -> u16 {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind probe socket");
    s.local_addr().unwrap().port()
}

/// True if this machine can use IPv6 loopback.
pub fn ipv6_loopback_available() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

//! listen() and accept(): an RGTP listener on the app's port, port groups across
//! processes, and the hand-over of each accepted connection to the app's listening fd.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use libc::{c_int, sockaddr, socklen_t};
use parking_lot::Mutex;

use crate::guard::{self, errno_of, fail};
use crate::log;
use crate::real;
use crate::registry::{self, Entry, Kind, PendingKey};
use rgtp::conn::runtime::{self, HandOver, ListenerOptions};

use super::*;

/// Where accepted RGTP connections are handed to the app.
#[derive(Clone)]
pub(super) enum Target {
    /// Strict: a unix listener (abstract name) now standing in the app's fd.
    Unix(Vec<u8>),
    /// Fallback: the app's real TCP listener.
    Tcp(SocketAddr),
}

/// A listener's UDP address, where it hands connections, and its UDP socket's fd.
/// A forked child keeps that fd open (it is the same socket as its parent's), to serve
/// it when no other process does: daemonizing servers listen, fork, and let the parent
/// exit. Keeping the socket, not binding the port anew, means the port never closes
/// and datagrams sent meanwhile wait in its queue.
pub(super) static LISTENERS: Mutex<Vec<(SocketAddr, Target, RawFd)>> = Mutex::new(Vec::new());
pub(super) static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Bytes of one address in an abstract name: family (4 or 6), IPv6 or v4-mapped
/// address, port (big-endian).
pub(super) const ADDR_BYTES: usize = 1 + 16 + 2;

/// An engine-side socket's abstract name carries the connection's peer and local
/// addresses after a `|`: a worker that accepts it may not be the process whose engine
/// holds the connection (nginx's master and workers share one listener), and the
/// pending table that would tell it is that other process's.
pub(super) fn name_with_addrs(mut name: Vec<u8>, peer: SocketAddr, local: SocketAddr) -> Vec<u8> {
    name.push(b'|');
    for a in [peer, local] {
        let (fam, ip) = match a.ip() {
            IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => (6u8, v6),
        };
        name.push(fam);
        name.extend_from_slice(&ip.octets());
        name.extend_from_slice(&a.port().to_be_bytes());
    }
    name
}

/// The peer and local addresses in a name made by `name_with_addrs`.
pub fn addrs_from_name(name: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let tail = name.len().checked_sub(2 * ADDR_BYTES + 1)?;
    if name[tail] != b'|' {
        return None;
    }
    let one = |b: &[u8]| -> Option<SocketAddr> {
        let octets: [u8; 16] = b.get(1..17)?.try_into().ok()?;
        let v6 = Ipv6Addr::from(octets);
        let ip = match b[0] {
            4 => IpAddr::V4(v6.to_ipv4_mapped()?),
            6 => IpAddr::V6(v6),
            _ => return None,
        };
        let port = u16::from_be_bytes([*b.get(17)?, *b.get(18)?]);
        Some(SocketAddr::new(ip, port))
    };
    let rest = &name[tail + 1..];
    Some((one(&rest[..ADDR_BYTES])?, one(&rest[ADDR_BYTES..])?))
}

pub(super) fn abstract_addr(name: &[u8]) -> (libc::sockaddr_un, socklen_t) {
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + name.len().min(a.sun_path.len());
    (a, len as socklen_t)
}

pub(super) fn unix_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn unique_name(tag: &str) -> Vec<u8> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let salt: [u8; 4] = rgtp::crypto::random_bytes();
    let mut v = vec![0u8];
    v.extend_from_slice(format!("rgtp-shim-{tag}-{pid}-{n}-{}", rgtp::url::hex(&salt)).as_bytes());
    v
}

pub fn listen_fd(fd: c_int, backlog: c_int, e: Entry) -> c_int {
    let Some(c) = config() else {
        return fail(libc::EINVAL);
    };
    ensure_process_hooks();
    let udp_addr = e.local;
    let target = if c.fallback {
        Target::Tcp(SocketAddr::new(
            loopback_if_any(udp_addr.ip()),
            udp_addr.port(),
        ))
    } else {
        Target::Unix(unique_name("l"))
    };
    let udp_fd = match open_listener(udp_addr, &target) {
        Ok(l) => l,
        Err(err) if c.fallback => {
            log::warn(&format!(
                "cannot open RGTP listener on UDP {udp_addr}: {err}; TCP only"
            ));
            // SAFETY: forwarding the app's call.
            return unsafe { real::listen(fd, backlog) };
        }
        Err(err) => {
            log::error(&format!(
                "cannot open RGTP listener on UDP {udp_addr}: {err}"
            ));
            return fail(errno_of(&err));
        }
    };
    match &target {
        Target::Tcp(_) => {
            // SAFETY: forwarding the app's call.
            let r = unsafe { real::listen(fd, backlog) };
            if r != 0 {
                return r;
            }
            if let Some(ino) = registry::inode(fd) {
                registry::insert(
                    ino,
                    Entry {
                        kind: Kind::Listener,
                        emulated_fd: false,
                        ..e.clone()
                    },
                );
            }
        }
        Target::Unix(name) => {
            let ux = match unix_socket() {
                Ok(s) => s,
                Err(err) => return fail(errno_of(&err)),
            };
            let (a, l) = abstract_addr(name);
            // SAFETY: valid socket and address.
            if unsafe { libc::bind(ux.as_raw_fd(), &a as *const _ as *const sockaddr, l) } != 0
            // SAFETY: valid socket.
            || unsafe { real::listen(ux.as_raw_fd(), backlog) } != 0
            {
                return fail(guard::errno());
            }
            if let Err(err) = replace_fd(fd, ux) {
                return fail(errno_of(&err));
            }
            if let Some(ino) = registry::inode(fd) {
                registry::insert(
                    ino,
                    Entry {
                        kind: Kind::Listener,
                        emulated_fd: true,
                        ..e.clone()
                    },
                );
            }
        }
    }
    match claim(udp_fd) {
        Ok(Some(c)) => own(c.into_raw_fd()),
        Ok(None) => log::warn(&format!("the RGTP listener on {udp_addr} is claimed twice")),
        Err(err) => log::warn(&format!(
            "cannot claim the RGTP listener on {udp_addr}: {err}"
        )),
    }
    LISTENERS.lock().push((udp_addr, target, udp_fd));
    0
}

pub(super) fn loopback_if_any(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// Marks the process serving the UDP socket `udp_fd`: an abstract unix socket named
/// by the socket's inode, bound by the server and released by the kernel when the
/// server closes it or dies. Forked children do not inherit the claim (fork_child
/// closes it), so exactly one process at a time serves a listener, and a daemon takes
/// over the moment its parent is gone. None: another process holds it.
pub(super) fn claim(udp_fd: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: zeroed stat is valid storage for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd we hold.
    if unsafe { libc::fstat(udp_fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let s = unix_socket()?;
    let mut name = vec![0u8];
    name.extend_from_slice(format!("rgtp-shim-serves-{}-{}", st.st_dev, st.st_ino).as_bytes());
    let (a, l) = abstract_addr(&name);
    // SAFETY: valid socket and address.
    if unsafe { libc::bind(s.as_raw_fd(), &a as *const _ as *const sockaddr, l) } == 0 {
        return Ok(Some(s));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EADDRINUSE) {
        Ok(None)
    } else {
        Err(err)
    }
}

pub(super) fn hand_over_to(target: &Target, local: SocketAddr) -> HandOver {
    let t = target.clone();
    Arc::new(move |peer| hand_over(peer, &t, local))
}

/// Opens the RGTP listener on UDP `addr`, handing connections to `target`; returns
/// its UDP socket's fd.
pub(super) fn open_listener(addr: SocketAddr, target: &Target) -> io::Result<RawFd> {
    // Shared, so the processes that accept on the app's listener can each serve
    // RGTP on the same port (`serve_here`).
    let sock = rgtp::udp::bind_shared(addr)?;
    let fd = sock.as_raw_fd();
    serve_listener(sock, addr, target)?;
    Ok(fd)
}

/// Serves RGTP connections on `sock` (bound to `addr`), handing them to `target`.
pub(super) fn serve_listener(
    sock: std::net::UdpSocket,
    addr: SocketAddr,
    target: &Target,
) -> io::Result<()> {
    let opts = ListenerOptions {
        key: Some(server_key()),
        config: config().map(conn_config),
        retry_threshold: None,
        shared_port: true,
    };
    runtime::listen_bridged(sock, opts, hand_over_to(target, addr))?;
    SERVING.lock().push(addr);
    Ok(())
}

/// UDP addresses of the listeners this process serves with a socket of its own.
/// Not inherited: a forked child serves nothing until it accepts or adopts.
pub(super) static SERVING: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

/// Called when this process accepts on the emulated listener of UDP `addr`: a
/// process that accepts connections serves RGTP on that port itself, with its own
/// socket in the port group and its own engine, so each worker of a prefork server
/// (nginx) does the RGTP work of its share of the connections on its own core,
/// instead of one thread of the process that listened doing it for all.
pub fn serve_here(addr: SocketAddr) {
    if SERVING.lock().contains(&addr) {
        return;
    }
    let Some(target) = LISTENERS
        .lock()
        .iter()
        .find(|l| l.0 == addr)
        .map(|l| l.1.clone())
    else {
        return;
    };
    match rgtp::udp::bind_shared(addr).and_then(|s| serve_listener(s, addr, &target)) {
        Ok(()) => log::info(&format!(
            "this process serves the RGTP listener on {addr} too"
        )),
        Err(e) => {
            // Not fatal: the process that listened still serves the port.
            log::warn(&format!("cannot join the RGTP listener on {addr}: {e}"));
            SERVING.lock().push(addr);
        }
    }
}

/// Connects an engine-side socket to the app's listener and bridges it to `stream`.
pub(super) fn hand_over(
    peer: SocketAddr,
    target: &Target,
    local: SocketAddr,
) -> io::Result<OwnedFd> {
    match target {
        Target::Unix(listener_name) => {
            let s = unix_socket()?;
            let me = name_with_addrs(unique_name("c"), peer, local);
            let (a, l) = abstract_addr(&me);
            // SAFETY: valid socket and address.
            if unsafe { libc::bind(s.as_raw_fd(), &a as *const _ as *const sockaddr, l) } != 0 {
                return Err(io::Error::last_os_error());
            }
            registry::add_pending(PendingKey::Unix(me.clone()), peer, local);
            let (t, tl) = abstract_addr(listener_name);
            // SAFETY: valid socket and address.
            if unsafe { real::connect(s.as_raw_fd(), &t as *const _ as *const sockaddr, tl) } != 0 {
                let err = io::Error::last_os_error();
                registry::take_pending(&PendingKey::Unix(me));
                return Err(err);
            }
            Ok(s)
        }
        Target::Tcp(addr) => {
            let bind = SocketAddr::new(addr.ip(), 0);
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(*addr),
                socket2::Type::STREAM,
                None,
            )?;
            sock.bind(&bind.into())?;
            let me = sock
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("no local address"))?;
            registry::add_pending(PendingKey::Tcp(rgtp::udp::canonical(me)), peer, local);
            if let Err(err) = sock.connect(&(*addr).into()) {
                registry::take_pending(&PendingKey::Tcp(rgtp::udp::canonical(me)));
                return Err(err);
            }
            let _ = sock.set_nodelay(true);
            Ok(OwnedFd::from(sock))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_ride_in_the_abstract_name() {
        for (p, l) in [
            ("10.1.2.3:4567", "0.0.0.0:80"),
            ("[2001:db8::7]:1", "[::1]:65535"),
        ] {
            let (p, l): (SocketAddr, SocketAddr) = (p.parse().unwrap(), l.parse().unwrap());
            let name = name_with_addrs(unique_name("c"), p, l);
            assert!(
                name.len() <= 107,
                "abstract names hold 107 bytes: {}",
                name.len()
            );
            assert_eq!(addrs_from_name(&name), Some((p, l)));
        }
        assert_eq!(addrs_from_name(&unique_name("c")), None);
        assert_eq!(addrs_from_name(b""), None);
    }
}

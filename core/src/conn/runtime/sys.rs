//! The few Linux calls the runtime makes by hand: epoll, eventfd, timerfd, socket
//! options and the UDP error queue. Each wrapper checks its result; nothing here
//! knows about connections.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub(super) fn os_err(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(super) fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no pointer arguments; the result is checked before use.
    let fd = os_err(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn new_epoll() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; checked.
    let fd = os_err(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: just created, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn new_timerfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; checked.
    let fd = os_err(unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    })?;
    // SAFETY: just created, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arms a timerfd to fire once at `at` (`None` disarms it).
pub(super) fn set_timer(fd: RawFd, at: Option<Instant>) {
    let d = match at {
        None => Duration::ZERO,
        Some(t) => t
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1)),
    };
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: valid timerfd and a pointer to a live itimerspec.
    unsafe {
        libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut());
    }
}

pub(super) fn signal_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd; failure (counter full) is
    // harmless: the fd is already readable.
    unsafe {
        libc::write(fd, &one as *const u64 as *const libc::c_void, 8);
    }
}

/// The readiness eventfd kept in `slot`, made on first use and readable at once, so
/// the first poll makes its owner re-check the state.
pub(super) fn readiness_eventfd(slot: &mut Option<OwnedFd>) -> io::Result<RawFd> {
    if let Some(fd) = slot {
        return Ok(fd.as_raw_fd());
    }
    let fd = new_eventfd()?;
    signal_eventfd(fd.as_raw_fd());
    let raw = fd.as_raw_fd();
    *slot = Some(fd);
    Ok(raw)
}

/// Resets an eventfd or timerfd.
pub(super) fn drain_fd(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64 from a non-blocking eventfd/timerfd.
    unsafe {
        libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8);
    }
}

pub(super) fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll fd and a pointer to a live epoll_event.
    os_err(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

/// Changes what epoll reports for `fd` (0: nothing, while another thread polls it).
pub(super) fn epoll_mod(epfd: RawFd, fd: RawFd, events: u32, token: u64) {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll fd and a pointer to a live epoll_event; a failure leaves
    // the old interest, which is only a wasted wakeup.
    unsafe {
        libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev);
    }
}

pub(super) fn epoll_del(epfd: RawFd, fd: RawFd) {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: as above; failure (fd already gone) is harmless.
    unsafe {
        libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, &mut ev);
    }
}

pub(super) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a caller-provided fd with integer arguments.
    let flags = os_err(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        os_err(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    }
    Ok(())
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    os_err(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Asks for ICMP errors on the socket's error queue (a connection attempt to a port
/// with nothing bound then fails at once). A dual-stack IPv6 socket reports IPv4
/// errors through the IPv4 option, so both are set there. Best effort: without it,
/// refusals by ICMP are simply not seen.
pub(super) fn enable_recverr(sock: &UdpSocket) {
    let fd = sock.as_raw_fd();
    if sock.local_addr().is_ok_and(|a| a.is_ipv6()) {
        let _ = setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1);
    }
    let _ = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1);
}

/// Ends a bridged fd whose connection failed, before it is closed: a TCP fd gets
/// `SO_LINGER {1, 0}`, so the close sends an RST (the peer's read fails with
/// ECONNRESET); any other stream (a socketpair) is shut both ways, which reaches
/// every copy of it, even one a forked process still holds.
pub(super) fn end_failed_fd(fd: RawFd) {
    let mut domain: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live c_int.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            &mut domain as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 && (domain == libc::AF_INET || domain == libc::AF_INET6) {
        let lg = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt with a pointer to a live linger struct.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &lg as *const libc::linger as *const libc::c_void,
                size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    } else {
        // SAFETY: shutdown on a caller-owned fd.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

/// Reads the socket's error queue; calls `f` with the destination of every datagram
/// that came back as "port unreachable".
pub(super) fn drain_errqueue(sock: &UdpSocket, mut f: impl FnMut(SocketAddr)) {
    for _ in 0..64 {
        let mut buf = [0u8; 512];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: plain data; all-zero is valid.
        let mut name: libc::sockaddr_storage = unsafe { zeroed() };
        let mut control = [0u64; 64];
        // SAFETY: plain data; the pointers stored below outlive the recvmsg call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of::<[u64; 64]>();
        // SAFETY: valid fd and a fully initialised msghdr.
        let r = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return;
        }
        let mut refused = false;
        // SAFETY: walking the control messages the kernel wrote, within msg_controllen;
        // the payload of an IP(V6)_RECVERR message is a sock_extended_err.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let lvl = (*cmsg).cmsg_level;
                let ty = (*cmsg).cmsg_type;
                if (lvl == libc::SOL_IP && ty == libc::IP_RECVERR)
                    || (lvl == libc::SOL_IPV6 && ty == libc::IPV6_RECVERR)
                {
                    let ee = std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err
                    );
                    if ee.ee_errno == libc::ECONNREFUSED as u32 {
                        refused = true;
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if refused {
            if let Some(a) = crate::udp::from_sockaddr(&name) {
                f(crate::udp::canonical(a));
            }
        }
    }
}

/// A netlink socket that hears when this host's addresses or routes change (both
/// families): a client's packets may then leave from another address.
pub(super) fn new_route_watch() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; checked.
    let fd = os_err(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: just created, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain data; all-zero is valid.
    let mut sa: libc::sockaddr_nl = unsafe { zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = (libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV6_IFADDR
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV6_ROUTE) as u32;
    // SAFETY: bind with a pointer to a live sockaddr_nl and its size.
    os_err(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Reads what a [`new_route_watch`] socket holds; true if an address or route was
/// added or removed (or notices were lost, which may have been such changes).
pub(super) fn drain_route_watch(fd: RawFd) -> bool {
    let mut changed = false;
    let mut buf = [0u64; 1024];
    for _ in 0..64 {
        // SAFETY: reads at most `size_of_val(&buf)` bytes into a live buffer.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                std::mem::size_of_val(&buf),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                changed = true;
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        // SAFETY: `buf` is u64-aligned and holds `n` initialised bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, n as usize) };
        changed |= route_messages_change(bytes);
    }
    changed
}

/// Whether a netlink datagram holds an address or route notice.
fn route_messages_change(mut b: &[u8]) -> bool {
    const HDR: usize = 16; // nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32
    while b.len() >= HDR {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if matches!(
            ty,
            libc::RTM_NEWADDR | libc::RTM_DELADDR | libc::RTM_NEWROUTE | libc::RTM_DELROUTE
        ) {
            return true;
        }
        let step = (len + 3) & !3;
        if len < HDR || step > b.len() {
            break;
        }
        b = &b[step..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, body: usize) -> Vec<u8> {
        let len = 16 + body;
        let mut m = (len as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.resize(len, 0);
        m.resize((len + 3) & !3, 0);
        m
    }

    #[test]
    fn route_notices_are_recognised_and_garbage_is_not() {
        assert!(route_messages_change(&msg(libc::RTM_DELADDR, 8)));
        let mut two = msg(libc::NLMSG_NOOP as u16, 5);
        two.extend(msg(libc::RTM_NEWROUTE, 12));
        assert!(route_messages_change(&two));
        assert!(!route_messages_change(&msg(libc::RTM_NEWLINK, 8)));
        assert!(!route_messages_change(&[0xff; 7]));
        // A length that runs past the end, or is too short to step over, stops the walk.
        let mut bad = msg(libc::NLMSG_NOOP as u16, 0);
        bad[0] = 200;
        bad.extend(msg(libc::RTM_NEWADDR, 0));
        assert!(!route_messages_change(&bad));
        assert!(!route_messages_change(&[0u8; 32]));
    }
}

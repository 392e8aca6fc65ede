//! UDP I/O for the drivers: socket set-up, GSO sends (`UDP_SEGMENT`: one system call
//! for a whole chunk's fragments) and batched GRO receives (`recvmmsg` + `UDP_GRO`),
//! with plain fallbacks where the kernel lacks them. Nothing protocol-specific here.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::transmit::Transmit;

const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Socket buffers large enough to absorb a burst of a few MiB at loopback speed.
const SOCKET_BUFFER: usize = 16 << 20;

/// Binds a UDP socket with large buffers; IPv6 wildcard binds are dual-stack.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    bind_with(addr, false)
}

/// As [`bind`], with `SO_REUSEPORT`: other sockets of the same user may bind the same
/// address and share its datagrams (a port group; see `conn::runtime`).
pub fn bind_shared(addr: SocketAddr) -> io::Result<UdpSocket> {
    bind_with(addr, true)
}

fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    // Best effort: unprivileged users get the sysctl maximum instead.
    if s.set_recv_buffer_size(SOCKET_BUFFER).is_err()
        || s.recv_buffer_size().unwrap_or(0) < SOCKET_BUFFER
    {
        let _ = force_buffer(&s, libc::SO_RCVBUFFORCE);
    }
    if s.set_send_buffer_size(SOCKET_BUFFER).is_err()
        || s.send_buffer_size().unwrap_or(0) < SOCKET_BUFFER
    {
        let _ = force_buffer(&s, libc::SO_SNDBUFFORCE);
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    let sock: UdpSocket = s.into();
    enable_gro(&sock);
    Ok(sock)
}

/// A socket receiving IPv4 multicast group `group` (bound to the group's address
/// and port, so it gets that group's datagrams only), joined on the interface the
/// routing table gives for the group. Several sockets on one host may join the same
/// group (`SO_REUSEADDR`): each gets every datagram. Fails (e.g. `ENODEV`) when no
/// route leads to the group.
pub fn join_group(group: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if s.set_recv_buffer_size(SOCKET_BUFFER).is_err()
        || s.recv_buffer_size().unwrap_or(0) < SOCKET_BUFFER
    {
        let _ = force_buffer(&s, libc::SO_RCVBUFFORCE);
    }
    s.bind(&SocketAddr::V4(group).into())?;
    s.join_multicast_v4(group.ip(), &std::net::Ipv4Addr::UNSPECIFIED)?;
    s.set_nonblocking(true)?;
    let sock: UdpSocket = s.into();
    enable_gro(&sock);
    Ok(sock)
}

/// Where an exposer sends to its multicast group: from the interface with this
/// IPv4 address, or the interface of this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MulticastIf {
    Addr(std::net::Ipv4Addr),
    Name(String),
}

/// Makes `sock` (IPv4) send multicast through `iface` (else the route's interface),
/// one hop only (TTL 1: the LAN), and loop it back to members on this host.
pub fn set_multicast_out(sock: &UdpSocket, iface: Option<&MulticastIf>) -> io::Result<()> {
    let s = socket2::SockRef::from(sock);
    s.set_multicast_ttl_v4(1)?;
    s.set_multicast_loop_v4(true)?;
    match iface {
        None => Ok(()),
        Some(MulticastIf::Addr(a)) => s.set_multicast_if_v4(a),
        Some(MulticastIf::Name(n)) => {
            let name = std::ffi::CString::new(n.as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
            // SAFETY: a NUL-terminated string that outlives the call.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: ip_mreqn is plain old data; all zeros is a valid value.
            let mut mreq: libc::ip_mreqn = unsafe { zeroed() };
            mreq.imr_ifindex = index as libc::c_int;
            // SAFETY: setsockopt with a valid fd, a pointer to a live ip_mreqn and its size.
            let r = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MULTICAST_IF,
                    &mreq as *const _ as *const libc::c_void,
                    size_of::<libc::ip_mreqn>() as libc::socklen_t,
                )
            };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
    }
}

fn force_buffer(s: &Socket, opt: libc::c_int) -> io::Result<()> {
    let v = SOCKET_BUFFER as libc::c_int;
    // SAFETY: setsockopt with a valid fd, a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &v as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn enable_gro(sock: &UdpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: as above; failure only means the kernel lacks UDP GRO.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            UDP_GRO,
            &one as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `addr` as a C socket address and its length (socket2 does the layout).
pub fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa: socket2::SockAddr = (*addr).into();
    // SAFETY: sockaddr_storage is plain data; SockAddr's storage is at most its size.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = sa.len();
    // SAFETY: copying `len` bytes from a valid SockAddr into storage of at least that size.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr() as *const u8,
            &mut storage as *mut _ as *mut u8,
            len as usize,
        );
    }
    (storage, len)
}

/// The `SocketAddr` in a kernel-filled `sockaddr_storage` (IPv4 or IPv6 only).
/// IPv4-mapped IPv6 addresses become IPv4, so one peer always has one spelling (a
/// dual-stack socket reports an IPv4 sender as `::ffff:a.b.c.d`).
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

/// The IPv4 or IPv6 address in the first `len` bytes of `storage`; `None` for other
/// families or a length too short for the family's address.
pub fn from_sockaddr_len(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let need = match storage.ss_family as libc::c_int {
        libc::AF_INET => size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => size_of::<libc::sockaddr_in6>(),
        _ => return None,
    };
    if (len as usize) < need || len as usize > size_of::<libc::sockaddr_storage>() {
        return None;
    }
    // SAFETY: `storage` holds an initialised address of its family, `len` bytes long.
    let sa = unsafe { socket2::SockAddr::new(*storage, len) };
    sa.as_socket()
}

/// The address in a kernel-filled `sockaddr_storage` (IPv4 or IPv6 only).
pub(crate) fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    from_sockaddr_len(
        storage,
        size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    )
}

/// Sends transmits, with GSO when the kernel takes it.
pub struct Sender {
    gso: AtomicBool,
}

impl Default for Sender {
    fn default() -> Self {
        Self {
            gso: AtomicBool::new(std::env::var_os("RGTP_NO_GSO").is_none()),
        }
    }
}

impl Sender {
    /// Sends every datagram of `t`; waits (bounded) when the socket buffer is full and
    /// drops what still does not fit: the receiver re-requests anything lost.
    pub fn send(&self, sock: &UdpSocket, t: &Transmit) -> io::Result<()> {
        let n = t.count();
        let gso = self.gso.load(Ordering::Relaxed);
        // One system call when possible: several datagrams by GSO, or a gathered
        // single datagram from its two pieces.
        let segment = n > 1;
        if (segment && gso && n <= 64) || (n == 1 && t.gather.is_some()) {
            match self.send_msg(sock, t, segment) {
                Ok(()) => return Ok(()),
                Err(e)
                    if segment
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT)
                        ) =>
                {
                    tracing::debug!("UDP GSO unavailable ({e}); sending datagrams one by one");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        for d in t.datagrams() {
            retry_blocked(sock, || sock.send_to(&d, t.dest).map(|_| ()))?;
        }
        Ok(())
    }

    /// One sendmsg: the contents (or, gathered, each header and its payload slice in
    /// place) as an iovec list; with `segment`, a UDP_SEGMENT cmsg splits it into
    /// datagrams of `segment_size` (GSO).
    fn send_msg(&self, sock: &UdpSocket, t: &Transmit, segment: bool) -> io::Result<()> {
        let (mut addr, addr_len) = to_sockaddr(&t.dest);
        let mut iov: Vec<libc::iovec> = Vec::new();
        match &t.gather {
            None => iov.push(libc::iovec {
                iov_base: t.contents.as_ptr() as *mut libc::c_void,
                iov_len: t.contents.len(),
            }),
            Some(g) => {
                let data = g.data.bytes();
                for (i, &(off, len)) in g.slices.iter().enumerate() {
                    let (Some(h), Some(p)) = (
                        t.contents.get(i * g.header_len..(i + 1) * g.header_len),
                        data.get(off..off + len),
                    ) else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "gathered transmit out of bounds",
                        ));
                    };
                    iov.push(libc::iovec {
                        iov_base: h.as_ptr() as *mut libc::c_void,
                        iov_len: h.len(),
                    });
                    iov.push(libc::iovec {
                        iov_base: p.as_ptr() as *mut libc::c_void,
                        iov_len: p.len(),
                    });
                }
            }
        }
        // Room for one cmsg carrying a u16, aligned as the kernel wants.
        let mut control = [0u64; 4];
        let seg = t.segment_size as u16;
        retry_blocked(sock, || {
            // SAFETY: msghdr is plain data; every pointer stored in it (address, iovec,
            // control buffer) outlives the sendmsg call below.
            let mut msg: libc::msghdr = unsafe { zeroed() };
            msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
            msg.msg_namelen = addr_len;
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len();
            if segment {
                msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE is a pure size computation.
                msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
                // SAFETY: the control buffer holds CMSG_SPACE(2) bytes, so the first
                // header and its 2-byte payload are in bounds.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(&msg);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, seg);
                }
            }
            // SAFETY: valid fd and a fully initialised msghdr.
            let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }
}

/// Runs a send, waiting up to ~50 ms for buffer space on EAGAIN.
fn retry_blocked(sock: &UdpSocket, mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    for _ in 0..50 {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_fd(
                    sock.as_raw_fd(),
                    libc::POLLOUT,
                    Some(Duration::from_millis(1)),
                );
            }
            // A peer's port being closed shows up as ECONNREFUSED on some sends: not ours
            // to act on, the protocol's timers handle it.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => return Ok(()),
            r => return r,
        }
    }
    Ok(())
}

/// Waits until `fd` is ready for `events` or the timeout passes. Returns readiness.
pub fn wait_fd(fd: libc::c_int, events: libc::c_short, timeout: Option<Duration>) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = match timeout {
        None => -1,
        Some(d) => d.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    r > 0
}

const BATCH: usize = 32;
const BUF_SIZE: usize = 65_536;

/// Batched receive: up to 32 messages per system call, each possibly a GRO train of
/// equal-size datagrams that `for_each` splits back apart.
pub struct Receiver {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 8]>,
}

impl Default for Receiver {
    fn default() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; BUF_SIZE]).collect(),
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            addrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            controls: vec![[0u64; 8]; BATCH],
        }
    }
}

impl Receiver {
    /// Receives what is queued now (never blocks) and calls `f` per datagram.
    /// Returns the number of datagrams seen.
    pub fn recv(
        &mut self,
        sock: &UdpSocket,
        mut f: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; the pointers set below stay valid for the call.
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
        for i in 0..BATCH {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = size_of::<[u64; 8]>();
        }
        // SAFETY: valid fd; `msgs` holds BATCH initialised headers whose buffers live
        // until after the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(0),
                _ => Err(e),
            };
        }
        let mut count = 0;
        for (i, m) in msgs.iter().take(n as usize).enumerate() {
            let len = m.msg_len as usize;
            let Some(from) = from_sockaddr(&self.addrs[i]) else {
                continue;
            };
            let seg = gro_segment_size(&m.msg_hdr).unwrap_or(len).max(1);
            for d in self.bufs[i][..len].chunks(seg) {
                count += 1;
                f(from, d);
            }
        }
        Ok(count)
    }
}

fn gro_segment_size(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(h);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                return usize::try_from(v).ok().filter(|&v| v > 0);
            }
            cmsg = libc::CMSG_NXTHDR(h, cmsg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_send_arrives_as_separate_datagrams() {
        let a = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dest = b.local_addr().unwrap();
        let mut contents = Vec::new();
        for i in 0..5u8 {
            contents.extend_from_slice(&[i; 100]);
        }
        contents.extend_from_slice(&[9u8; 40]);
        let t = Transmit::packed(dest, 100, contents);
        Sender::default().send(&a, &t).unwrap();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut rx = Receiver::default();
        for _ in 0..100 {
            wait_fd(b.as_raw_fd(), libc::POLLIN, Some(Duration::from_millis(20)));
            rx.recv(&b, |from, d| {
                assert_eq!(from, a.local_addr().unwrap());
                got.push(d.to_vec());
            })
            .unwrap();
            if got.len() >= 6 {
                break;
            }
        }
        assert_eq!(got.len(), 6);
        for (i, d) in got.iter().take(5).enumerate() {
            assert_eq!(d, &vec![i as u8; 100]);
        }
        assert_eq!(got[5], vec![9u8; 40]);
    }
}

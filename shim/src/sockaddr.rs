//! Conversions between C socket addresses and `SocketAddr`, with the truncation rules
//! of accept/getpeername (copy at most `*len`, report the full size).

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libc::{sockaddr, sockaddr_in, sockaddr_in6, socklen_t};

/// Reads an AF_INET/AF_INET6 address; `None` for other families or short lengths.
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes.
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family field is readable (checked above).
    let family = unsafe { (*addr).sa_family } as libc::c_int;
    match family {
        libc::AF_INET if len as usize >= size_of::<sockaddr_in>() => {
            // SAFETY: family and length say this is a sockaddr_in.
            let sin = unsafe { std::ptr::read_unaligned(addr as *const sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<sockaddr_in6>() => {
            // SAFETY: family and length say this is a sockaddr_in6.
            let sin6 = unsafe { std::ptr::read_unaligned(addr as *const sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Encodes `a` as a C address of the family the app uses (`family`: AF_INET6 sockets
/// see IPv4 peers as v4-mapped).
pub fn encode(a: &SocketAddr, family: libc::c_int) -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let as_v6 = |a: &SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => *v6,
    };
    match (a, family) {
        (SocketAddr::V4(v4), f) if f != libc::AF_INET6 => {
            let sin = sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut st as *mut _ as *mut sockaddr_in, sin) };
            (st, size_of::<sockaddr_in>() as socklen_t)
        }
        _ => {
            let v6 = as_v6(a);
            let sin6 = sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write(&mut st as *mut _ as *mut sockaddr_in6, sin6) };
            (st, size_of::<sockaddr_in6>() as socklen_t)
        }
    }
}

/// Writes `a` to a caller's (addr, len) pair as the kernel would: at most `*len`
/// bytes copied, `*len` set to the full size. Null pointers are left alone.
///
/// # Safety
/// `addr` must be null or point to `*len` writable bytes; `len` null or valid.
pub unsafe fn write_out(
    a: &SocketAddr,
    family: libc::c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) {
    if addr.is_null() || len.is_null() {
        return;
    }
    let (st, full) = encode(a, family);
    // SAFETY: the caller guarantees `len` is valid and `addr` has `*len` bytes.
    unsafe {
        let room = (*len as usize).min(full as usize);
        std::ptr::copy_nonoverlapping(&st as *const _ as *const u8, addr as *mut u8, room);
        *len = full;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_truncation() {
        for a in ["127.0.0.1:8080", "[::1]:443", "[2001:db8::5]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            let fam = if a.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let (st, len) = encode(&a, fam);
            // SAFETY: st holds `len` valid bytes.
            assert_eq!(
                unsafe { read(&st as *const _ as *const sockaddr, len) },
                Some(a)
            );
        }
        // A v4 peer on a v6 socket reads back v4-mapped.
        let a: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let (st, len) = encode(&a, libc::AF_INET6);
        // SAFETY: as above.
        let back = unsafe { read(&st as *const _ as *const sockaddr, len) }.unwrap();
        assert_eq!(back, "[::ffff:10.0.0.1]:5".parse().unwrap());
        // Truncation: a 4-byte buffer gets 4 bytes and the full length.
        let mut buf = [0u8; 4];
        let mut l: socklen_t = 4;
        // SAFETY: buf has 4 writable bytes.
        unsafe {
            write_out(
                &"1.2.3.4:80".parse().unwrap(),
                libc::AF_INET,
                buf.as_mut_ptr() as *mut sockaddr,
                &mut l,
            )
        };
        assert_eq!(l as usize, size_of::<sockaddr_in>());
        assert_eq!(u16::from_ne_bytes([buf[0], buf[1]]), libc::AF_INET as u16);
    }
}

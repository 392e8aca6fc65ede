//! Conversions between C socket addresses and `SocketAddr`, with the truncation rules
//! of accept/getpeername (copy at most `*len`, report the full size).

use std::mem::size_of;
use std::net::{SocketAddr, SocketAddrV6};

use libc::{sockaddr, socklen_t};

/// Reads an AF_INET/AF_INET6 address; `None` for other families or short lengths.
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes.
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = (len as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: the caller guarantees `len` readable bytes at `addr`; at most the
    // storage's size is copied.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, &mut st as *mut _ as *mut u8, n) };
    rgtp::udp::from_sockaddr_len(&st, n as socklen_t)
}

/// Encodes `a` as a C address of the family the app uses (`family`: AF_INET6 sockets
/// see IPv4 peers as v4-mapped).
pub fn encode(a: &SocketAddr, family: libc::c_int) -> (libc::sockaddr_storage, socklen_t) {
    match a {
        SocketAddr::V4(v4) if family == libc::AF_INET6 => rgtp::udp::to_sockaddr(
            &SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0).into(),
        ),
        _ => rgtp::udp::to_sockaddr(a),
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
        assert_eq!(l as usize, size_of::<libc::sockaddr_in>());
        // Short lengths and other families read as nothing.
        let (st, len) = encode(&"[::1]:443".parse().unwrap(), libc::AF_INET6);
        // SAFETY: st holds `len` >= len - 1 valid bytes.
        assert_eq!(
            unsafe { read(&st as *const _ as *const sockaddr, len - 1) },
            None
        );
        // SAFETY: sockaddr_storage is plain data; zero is a valid value.
        let mut unix: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        unix.ss_family = libc::AF_UNIX as libc::sa_family_t;
        // SAFETY: unix is a whole sockaddr_storage.
        let n = size_of::<libc::sockaddr_storage>() as socklen_t;
        assert_eq!(
            unsafe { read(&unix as *const _ as *const sockaddr, n) },
            None
        );
        assert_eq!(u16::from_ne_bytes([buf[0], buf[1]]), libc::AF_INET as u16);
    }
}

//! The exported socket functions that replace libc's under LD_PRELOAD.
//!
//! Every hook first decides, without allocating or locking, whether the call is one
//! the shim handles (our own threads, unconfigured processes, other ports, other
//! socket types all go straight to libc). Bodies run under `guard::hook`: no panic
//! crosses into C, and calls the shim makes itself do not recurse into the hooks.

use std::net::SocketAddr;

use libc::{c_int, c_void, sockaddr, socklen_t};

use crate::guard::{self, fail};
use crate::registry::{self, Connecting, Entry, Kind, PendingKey};
use crate::{emulation, real, sockaddr as sa};

/// The socket's (domain, type) if it is an AF_INET/AF_INET6 stream socket.
fn inet_stream(fd: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut l = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: valid out-pointers of the right size.
    if unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut v as *mut _ as *mut c_void,
            &mut l,
        )
    } != 0
        || v != libc::SOCK_STREAM
    {
        return None;
    }
    let mut d: c_int = 0;
    let mut l = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: as above.
    if unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            &mut d as *mut _ as *mut c_void,
            &mut l,
        )
    } != 0
    {
        return None;
    }
    (d == libc::AF_INET || d == libc::AF_INET6).then_some(d)
}

/// Is this a call for the shim? Cheap checks first; no allocation.
///
/// # Safety
/// `addr` must be null or valid for `len` bytes.
unsafe fn wanted(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Option<(SocketAddr, c_int)> {
    if guard::inside() {
        return None;
    }
    let cfg = emulation::config()?;
    // SAFETY: forwarded caller contract.
    let a = unsafe { sa::read(addr, len) }?;
    if !cfg.ports.contains(a.port()) {
        return None;
    }
    let family = inet_stream(fd)?;
    Some((a, family))
}

/// # Safety
/// libc `connect` contract.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if !guard::inside() && emulation::broken() && inet_stream(fd).is_some() {
        return fail(libc::EINVAL);
    }
    // connect again on an emulated connection: what TCP says at each stage.
    if !guard::inside() && !registry::is_empty() {
        if let Some(ino) = registry::inode(fd) {
            if registry::get(ino).is_some_and(|e| e.kind == Kind::Conn) {
                return match registry::connecting(ino) {
                    Some(Connecting::InProgress) => fail(libc::EALREADY),
                    Some(Connecting::Failed(_)) => {
                        fail(registry::take_connect_error(ino).unwrap_or(libc::ECONNREFUSED))
                    }
                    None => fail(libc::EISCONN),
                };
            }
        }
    }
    // SAFETY: caller's contract.
    let Some((peer, family)) = (unsafe { wanted(fd, addr, len) }) else {
        // SAFETY: caller's contract.
        return unsafe { real::connect(fd, addr, len) };
    };
    guard::hook(|| emulation::connect_fd(fd, family, peer, addr, len))
}

/// # Safety
/// libc `bind` contract.
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: caller's contract.
    let r = unsafe { real::bind(fd, addr, len) };
    if r != 0 {
        return r;
    }
    // SAFETY: caller's contract.
    if let Some((local, family)) = unsafe { wanted(fd, addr, len) } {
        guard::hook(|| {
            if let Some(ino) = registry::inode(fd) {
                registry::insert(
                    ino,
                    Entry {
                        kind: Kind::Bound,
                        family,
                        local,
                        peer: None,
                        emulated_fd: false,
                    },
                );
            }
            0
        });
    }
    0
}

/// # Safety
/// libc `listen` contract.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if guard::inside() || emulation::config().is_none() || registry::is_empty() {
        // SAFETY: plain forwarding.
        return unsafe { real::listen(fd, backlog) };
    }
    match registry::lookup_fd(fd) {
        Some(e) if e.kind == Kind::Bound => guard::hook(|| emulation::listen_fd(fd, backlog, e)),
        // SAFETY: plain forwarding.
        _ => unsafe { real::listen(fd, backlog) },
    }
}

/// Shared by accept and accept4: accept for real, then recognise connections the
/// engine handed over and show the app their RGTP peer.
///
/// # Safety
/// libc `accept4` contract.
unsafe fn accept_common(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    if guard::inside() || emulation::config().is_none() || registry::is_empty() {
        // SAFETY: plain forwarding.
        return unsafe { real::accept4(fd, addr, len, flags) };
    }
    let Some(listener) = registry::lookup_fd(fd).filter(|e| e.kind == Kind::Listener) else {
        // SAFETY: plain forwarding.
        return unsafe { real::accept4(fd, addr, len, flags) };
    };
    // A process that accepts serves the port itself from now on.
    guard::hook(|| {
        emulation::serve_here(listener.local);
        0
    });
    // SAFETY: storage for the real peer address.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut sl = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: our own valid buffers.
    let nfd = unsafe { real::accept4(fd, &mut st as *mut _ as *mut sockaddr, &mut sl, flags) };
    if nfd < 0 {
        return nfd;
    }
    let errno = guard::errno();
    let r = guard::hook(|| {
        let key = if st.ss_family as c_int == libc::AF_UNIX {
            // The engine's end is bound to a unique abstract name.
            let path_off = std::mem::size_of::<libc::sa_family_t>();
            let bytes = (sl as usize).saturating_sub(path_off);
            // SAFETY: st holds `sl` initialised bytes.
            let raw = unsafe {
                std::slice::from_raw_parts((&st as *const _ as *const u8).add(path_off), bytes)
            };
            Some(PendingKey::Unix(raw.to_vec()))
        } else {
            // SAFETY: st holds `sl` initialised bytes.
            unsafe { sa::read(&st as *const _ as *const sockaddr, sl) }.map(PendingKey::Tcp)
        };
        let found = key.and_then(|k| {
            registry::take_pending(&k).or_else(|| match &k {
                // Handed over by another process's engine (a worker accepting what
                // the master's or a sibling's engine holds): the name says the
                // addresses, trusted only from a process of our own user.
                PendingKey::Unix(name) if same_user_peer(nfd) => emulation::addrs_from_name(name),
                _ => None,
            })
        });
        match found {
            Some((peer, local)) => {
                if let Some(ino) = registry::inode(nfd) {
                    registry::insert(
                        ino,
                        Entry {
                            kind: Kind::Conn,
                            family: listener.family,
                            local,
                            peer: Some(peer),
                            emulated_fd: st.ss_family as c_int == libc::AF_UNIX,
                        },
                    );
                }
                // SAFETY: caller's buffers.
                unsafe { sa::write_out(&peer, listener.family, addr, len) };
            }
            None => {
                // A genuine TCP client (fallback keeps the TCP listener): real address.
                if !addr.is_null() && !len.is_null() {
                    // SAFETY: caller's buffers; copy at most *len bytes.
                    unsafe {
                        let room = (*len as usize).min(sl as usize);
                        std::ptr::copy_nonoverlapping(
                            &st as *const _ as *const u8,
                            addr as *mut u8,
                            room,
                        );
                        *len = sl;
                    }
                }
            }
        }
        nfd
    });
    guard::set_errno(errno);
    r
}

/// Whether the process at the other end of the unix socket `fd` runs as our user
/// (SO_PEERCRED): another user's process could connect to a listener's abstract name
/// and claim any peer address in its own.
fn same_user_peer(fd: c_int) -> bool {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as socklen_t;
    // SAFETY: valid fd and a buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut c_void,
            &mut len,
        )
    };
    // SAFETY: getuid has no preconditions.
    r == 0 && cred.uid == unsafe { libc::getuid() }
}

/// # Safety
/// libc `accept` contract.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: caller's contract.
    unsafe { accept_common(fd, addr, len, 0) }
}

/// # Safety
/// libc `accept4` contract.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: caller's contract.
    unsafe { accept_common(fd, addr, len, flags) }
}

/// getpeername / getsockname: the emulated TCP addresses for our sockets.
///
/// # Safety
/// libc contract of the function named by `peer`.
unsafe fn name_common(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, peer: bool) -> c_int {
    let real_call = || {
        // SAFETY: caller's contract.
        unsafe {
            if peer {
                real::getpeername(fd, addr, len)
            } else {
                real::getsockname(fd, addr, len)
            }
        }
    };
    if guard::inside() || registry::is_empty() {
        return real_call();
    }
    let Some(e) = registry::lookup_fd(fd) else {
        return real_call();
    };
    let connecting = peer
        && e.kind == Kind::Conn
        && registry::inode(fd).is_some_and(|i| registry::connecting(i).is_some());
    let shown = if connecting {
        None
    } else if peer {
        e.peer
    } else {
        Some(e.local)
    };
    match shown {
        Some(a) => guard::hook(|| {
            if addr.is_null() || len.is_null() {
                return fail(libc::EFAULT);
            }
            // SAFETY: caller's buffers.
            unsafe { sa::write_out(&a, e.family, addr, len) };
            0
        }),
        None if peer => fail(libc::ENOTCONN),
        None => real_call(),
    }
}

/// # Safety
/// libc `getpeername` contract.
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: caller's contract.
    unsafe { name_common(fd, addr, len, true) }
}

/// # Safety
/// libc `getsockname` contract.
#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: caller's contract.
    unsafe { name_common(fd, addr, len, false) }
}

/// Writes an int option value the way the kernel does.
///
/// # Safety
/// `val`/`len` as in getsockopt.
unsafe fn put_int(val: *mut c_void, len: *mut socklen_t, v: c_int) -> c_int {
    if val.is_null() || len.is_null() {
        return fail(libc::EFAULT);
    }
    // SAFETY: caller's buffers; at most *len bytes written.
    unsafe {
        let n = (*len as usize).min(std::mem::size_of::<c_int>());
        std::ptr::copy_nonoverlapping(&v as *const c_int as *const u8, val as *mut u8, n);
        *len = n as socklen_t;
    }
    0
}

/// # Safety
/// libc `getsockopt` contract.
#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if guard::inside() || registry::is_empty() {
        // SAFETY: forwarding.
        return unsafe { real::getsockopt(fd, level, name, val, len) };
    }
    let Some(e) = registry::lookup_fd(fd).filter(|e| e.emulated_fd) else {
        // SAFETY: forwarding.
        return unsafe { real::getsockopt(fd, level, name, val, len) };
    };
    guard::hook(|| match (level, name) {
        // SAFETY (all arms): caller's buffers, checked by put_int / forwarded.
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => unsafe { put_int(val, len, e.family) },
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => unsafe { put_int(val, len, libc::IPPROTO_TCP) },
        (libc::SOL_SOCKET, libc::SO_ERROR) => {
            match registry::inode(fd).and_then(registry::take_connect_error) {
                // SAFETY: caller's buffers, checked by put_int.
                Some(err) => unsafe { put_int(val, len, err) },
                // SAFETY: forwarding.
                None => unsafe { real::getsockopt(fd, level, name, val, len) },
            }
        }
        (libc::IPPROTO_TCP, libc::TCP_INFO) => {
            if val.is_null() || len.is_null() {
                return fail(libc::EFAULT);
            }
            // SAFETY: zero-filled tcp_info with the state the app expects; at most *len bytes.
            unsafe {
                let mut info: libc::tcp_info = std::mem::zeroed();
                info.tcpi_state = 1; // TCP_ESTABLISHED
                let n = (*len as usize).min(std::mem::size_of::<libc::tcp_info>());
                std::ptr::copy_nonoverlapping(&info as *const _ as *const u8, val as *mut u8, n);
                *len = n as socklen_t;
            }
            0
        }
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => unsafe { put_int(val, len, 1) },
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG) => unsafe { put_int(val, len, 1448) },
        (libc::IPPROTO_TCP, _) | (libc::IPPROTO_IP, _) | (libc::IPPROTO_IPV6, _) => unsafe {
            put_int(val, len, 0)
        },
        _ => unsafe { real::getsockopt(fd, level, name, val, len) },
    })
}

/// # Safety
/// libc `setsockopt` contract.
#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    if guard::inside() || registry::is_empty() {
        // SAFETY: forwarding.
        return unsafe { real::setsockopt(fd, level, name, val, len) };
    }
    if registry::lookup_fd(fd).filter(|e| e.emulated_fd).is_none() {
        // SAFETY: forwarding.
        return unsafe { real::setsockopt(fd, level, name, val, len) };
    }
    guard::hook(|| match level {
        // TCP and IP options mean nothing on the emulating fd: accept them.
        libc::IPPROTO_TCP | libc::IPPROTO_IP | libc::IPPROTO_IPV6 => 0,
        _ => {
            // SAFETY: forwarding.
            let r = unsafe { real::setsockopt(fd, level, name, val, len) };
            if r != 0
                && matches!(
                    guard::errno(),
                    libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EINVAL
                )
            {
                0
            } else {
                r
            }
        }
    })
}

/// `_exit` skips atexit handlers, so the linger for unsent data happens here.
///
/// # Safety
/// Terminates the process.
#[no_mangle]
pub unsafe extern "C" fn _exit(code: c_int) -> ! {
    if !guard::inside() {
        let _ = std::panic::catch_unwind(|| guard::enter(emulation::linger_at_exit));
    }
    // SAFETY: terminating as asked.
    unsafe { real::underscore_exit(code) }
}

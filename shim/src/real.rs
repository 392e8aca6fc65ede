//! The real libc functions behind our hooks, found with `dlsym(RTLD_NEXT, …)`.
//!
//! Resolved eagerly in the constructor and lazily on first use (another library's
//! constructor may call a hook before ours ran). Storage is atomics: no allocation and
//! no lock on the pass-through path.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, c_void, sockaddr, socklen_t};

pub struct Sym {
    name: &'static [u8],
    addr: AtomicUsize,
}

impl Sym {
    const fn new(name: &'static [u8]) -> Self {
        Self {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The real function's address (0 if libc has none, which the callers treat as ENOSYS).
    pub fn get(&self) -> usize {
        let a = self.addr.load(Ordering::Relaxed);
        if a != 0 {
            return a;
        }
        // SAFETY: `name` is a NUL-terminated literal; dlsym is thread-safe.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr() as *const c_char) };
        let a = p as usize;
        self.addr.store(a, Ordering::Relaxed);
        a
    }
}

pub static CONNECT: Sym = Sym::new(b"connect\0");
pub static BIND: Sym = Sym::new(b"bind\0");
pub static LISTEN: Sym = Sym::new(b"listen\0");
pub static ACCEPT4: Sym = Sym::new(b"accept4\0");
pub static GETPEERNAME: Sym = Sym::new(b"getpeername\0");
pub static GETSOCKNAME: Sym = Sym::new(b"getsockname\0");
pub static GETSOCKOPT: Sym = Sym::new(b"getsockopt\0");
pub static SETSOCKOPT: Sym = Sym::new(b"setsockopt\0");
pub static EXIT_UNDERSCORE: Sym = Sym::new(b"_exit\0");

pub fn resolve_all() {
    for s in [
        &CONNECT,
        &BIND,
        &LISTEN,
        &ACCEPT4,
        &GETPEERNAME,
        &GETSOCKNAME,
        &GETSOCKOPT,
        &SETSOCKOPT,
        &EXIT_UNDERSCORE,
    ] {
        s.get();
    }
}

fn enosys() -> c_int {
    crate::guard::set_errno(libc::ENOSYS);
    -1
}

type AddrFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type AddrOutFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// # Safety
/// Same contract as libc `connect`.
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    match CONNECT.get() {
        0 => enosys(),
        // SAFETY: the symbol is libc's connect, whose signature this is.
        a => unsafe { std::mem::transmute::<usize, AddrFn>(a)(fd, addr, len) },
    }
}

/// # Safety
/// Same contract as libc `bind`.
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    match BIND.get() {
        0 => enosys(),
        // SAFETY: the symbol is libc's bind.
        a => unsafe { std::mem::transmute::<usize, AddrFn>(a)(fd, addr, len) },
    }
}

/// # Safety
/// Same contract as libc `listen`.
pub unsafe fn listen(fd: c_int, backlog: c_int) -> c_int {
    match LISTEN.get() {
        0 => enosys(),
        // SAFETY: the symbol is libc's listen.
        a => unsafe {
            std::mem::transmute::<usize, unsafe extern "C" fn(c_int, c_int) -> c_int>(a)(
                fd, backlog,
            )
        },
    }
}

/// # Safety
/// Same contract as libc `accept4`.
pub unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    match ACCEPT4.get() {
        0 => enosys(),
        // SAFETY: the symbol is libc's accept4.
        a => unsafe {
            std::mem::transmute::<
                usize,
                unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int,
            >(a)(fd, addr, len, flags)
        },
    }
}

/// # Safety
/// Same contract as libc `getpeername`.
pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match GETPEERNAME.get() {
        0 => enosys(),
        // SAFETY: the symbol is libc's getpeername.
        a => unsafe { std::mem::transmute::<usize, AddrOutFn>(a)(fd, addr, len) },
    }
}

/// # Safety
/// Same contract as libc `getsockname`.
pub unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match GETSOCKNAME.get() {
        0 => enosys(),
        // SAFETY: the symbol is libc's getsockname.
        a => unsafe { std::mem::transmute::<usize, AddrOutFn>(a)(fd, addr, len) },
    }
}

type SockoptGet = unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int;
type SockoptSet = unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int;

/// # Safety
/// Same contract as libc `getsockopt`.
pub unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    match GETSOCKOPT.get() {
        0 => enosys(),
        // SAFETY: the symbol is libc's getsockopt.
        a => unsafe { std::mem::transmute::<usize, SockoptGet>(a)(fd, level, name, val, len) },
    }
}

/// # Safety
/// Same contract as libc `setsockopt`.
pub unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    match SETSOCKOPT.get() {
        0 => enosys(),
        // SAFETY: the symbol is libc's setsockopt.
        a => unsafe { std::mem::transmute::<usize, SockoptSet>(a)(fd, level, name, val, len) },
    }
}

/// # Safety
/// Terminates the process, as libc `_exit`.
pub unsafe fn underscore_exit(code: c_int) -> ! {
    match EXIT_UNDERSCORE.get() {
        // SAFETY: no real _exit found: fall back to the raw system call.
        0 => unsafe {
            libc::syscall(libc::SYS_exit_group, code as libc::c_long);
            std::process::abort()
        },
        // SAFETY: the symbol is libc's _exit.
        a => unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(c_int) -> !>(a)(code) },
    }
}

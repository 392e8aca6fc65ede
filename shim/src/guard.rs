//! Reentrancy and panic safety for the hooks.
//!
//! Threads of the shim's own engine carry a thread-local flag; a hook called on such a
//! thread goes straight to libc. The flag is a const-initialised `Cell<bool>` (no
//! destructor, no allocation), safe to touch from any context.

use std::cell::Cell;

thread_local! {
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

/// True on the shim's own threads and inside hook bodies that call libc themselves.
pub fn inside() -> bool {
    IN_SHIM.with(|c| c.get())
}

/// Marks the current thread as the shim's (engine threads call this once) and blocks
/// every signal on it: the app's handlers must run on the app's threads, or a server
/// waiting in sigsuspend (nginx's master) would never see its SIGCHLD or SIGHUP.
pub fn mark_engine_thread() {
    IN_SHIM.with(|c| c.set(true));
    // SAFETY: a zeroed sigset_t is valid storage; sigfillset and pthread_sigmask only
    // touch it and this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

/// Runs `f` with the flag set, restoring it after.
pub fn enter<T>(f: impl FnOnce() -> T) -> T {
    let was = IN_SHIM.with(|c| c.replace(true));
    let r = f();
    IN_SHIM.with(|c| c.set(was));
    r
}

pub fn set_errno(e: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Sets errno and returns -1, as a failing libc call does.
pub fn fail(errno: libc::c_int) -> libc::c_int {
    set_errno(errno);
    -1
}

/// The errno a C caller should see for `e`: its own when it came from the kernel,
/// else the nearest one for its kind (EIO when none fits).
pub fn errno_of(e: &std::io::Error) -> libc::c_int {
    use std::io::ErrorKind as K;
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    match e.kind() {
        K::ConnectionRefused => libc::ECONNREFUSED,
        K::TimedOut => libc::ETIMEDOUT,
        K::ConnectionReset => libc::ECONNRESET,
        K::AddrInUse => libc::EADDRINUSE,
        K::PermissionDenied => libc::EACCES,
        K::InvalidInput => libc::EINVAL,
        _ => libc::EIO,
    }
}

pub fn errno() -> libc::c_int {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

/// Runs a hook body inside the flag and `catch_unwind`: no panic crosses into C. A
/// panic becomes -1 with errno EIO.
pub fn hook(f: impl FnOnce() -> libc::c_int) -> libc::c_int {
    let was = inside();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| enter(f))) {
        Ok(r) => r,
        Err(_) => {
            IN_SHIM.with(|c| c.set(was));
            set_errno(libc::EIO);
            -1
        }
    }
}

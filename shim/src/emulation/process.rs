//! The process's life: the runtime's hooks installed once, atexit linger, and fork
//! (what a child keeps, adopts or drops).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::log;
use crate::registry::{self};
use rgtp::conn::runtime::{self};

use super::*;

/// atexit and fork handlers, registered once per process on first use.
pub(super) fn ensure_process_hooks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !runtime::set_hooks(Box::new(ShimHooks)) {
            log::error("the connection runtime started before the shim could hook it");
        }
        // SAFETY: registering plain extern "C" functions.
        unsafe {
            libc::atexit(at_exit);
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        }
    });
}

pub(super) extern "C" fn fork_prepare() {
    runtime::fork_prepare();
    registry::before_fork();
    std::mem::forget(OWNED.lock());
    std::mem::forget(LISTENERS.lock());
    std::mem::forget(SERVING.lock());
}

pub(super) extern "C" fn fork_parent() {
    registry::after_fork();
    runtime::fork_parent();
    // SAFETY: locked and leaked by fork_prepare on this thread.
    unsafe {
        OWNED.force_unlock();
        LISTENERS.force_unlock();
        SERVING.force_unlock();
    }
}

pub(super) extern "C" fn fork_child() {
    registry::after_fork();
    // SAFETY: locked and leaked by fork_prepare on this thread, which is the child's
    // only thread now.
    runtime::fork_child();
    // SAFETY: as above.
    unsafe {
        OWNED.force_unlock();
        LISTENERS.force_unlock();
        SERVING.force_unlock();
    }
    SERVING.lock().clear();
    // The engine threads did not come along: its fds here would only keep the app's
    // ends from seeing EOF (the parent's engine still serves them). Listening UDP
    // sockets stay, to be served if the parent exits.
    let listeners = LISTENERS.lock().clone();
    let fds = std::mem::take(&mut *OWNED.lock());
    for fd in fds {
        if !listeners.iter().any(|l| l.2 == fd) {
            // SAFETY: closing this process's copies of engine-owned fds.
            unsafe { libc::close(fd) };
        }
    }
    if listeners.is_empty() {
        return;
    }
    spawn_engine_thread("rgtp-adopt", move || {
        // A daemonizing server's parent exits right after fork: then the claim is free
        // and this process takes over. Workers whose parent lives on never do; if
        // several children outlive it, the kernel lets exactly one bind the claim.
        let mut waiting = listeners;
        while !waiting.is_empty() {
            waiting.retain(|(addr, target, fd)| match claim(*fd) {
                Ok(Some(c)) => {
                    adopt(*addr, target, *fd, c);
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    log::error(&format!("cannot claim the RGTP listener on {addr}: {e}"));
                    false
                }
            });
            std::thread::sleep(Duration::from_millis(25));
        }
    });
}

pub(super) fn adopt(addr: SocketAddr, target: &Target, fd: RawFd, claim: OwnedFd) {
    // SAFETY: fd is this process's copy of the listener's UDP socket, kept open by
    // fork_child for this and owned by nothing else here.
    let sock = unsafe { std::net::UdpSocket::from_raw_fd(fd) };
    own(claim.into_raw_fd());
    match serve_listener(sock, addr, target) {
        Ok(()) => log::info(&format!("took over the RGTP listener on {addr}")),
        Err(e) => log::error(&format!(
            "cannot take over the RGTP listener on {addr}: {e}"
        )),
    }
}

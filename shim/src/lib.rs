//! `librgtp_shim.so`: loaded with LD_PRELOAD into unmodified TCP programs, it carries
//! their connections on the ports named in `RGTP_PORTS` over RGTP connections from the
//! in-process core. The app's fds stay real kernel fds (socketpairs or loopback
//! connections bridged to RGTP), so read/write/poll/epoll/sendfile/fork need no hooks;
//! only the control calls are interposed (see `hooks`).

mod config;
mod emulation;
mod guard;
mod hooks;
mod log;
mod real;
mod registry;
mod sockaddr;

/// Runs when the library is loaded: resolve libc's functions before any thread can
/// race us, read the configuration, and keep our own panics off the app's stderr.
#[ctor::ctor]
fn init() {
    real::resolve_all();
    let _ = std::panic::catch_unwind(|| {
        guard::enter(|| {
            if let emulation::State::On(_) = emulation::state() {
                let prev = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    if guard::inside() {
                        log::error(&format!("internal panic: {info}"));
                    } else {
                        prev(info);
                    }
                }));
            }
        })
    });
}

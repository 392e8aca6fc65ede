//! What the shim knows about the sockets it emulates, keyed by socket inode.
//!
//! Keying by inode rather than fd number means dup/dup2/dup3/fcntl(F_DUPFD) copies and
//! fds inherited across fork are recognised without hooking any of those calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP socket bound to an RGTP port, not yet listening (a real TCP socket).
    Bound,
    /// A listening socket whose connections come from RGTP (strict: a unix listener).
    Listener,
    /// A connection bridged to RGTP (one end of a socketpair, or, when fallback keeps
    /// a TCP listener, a loopback TCP connection from the engine).
    Conn,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// The address family the app created the socket with.
    pub family: libc::c_int,
    /// What getsockname shows.
    pub local: SocketAddr,
    /// What getpeername shows (connections only).
    pub peer: Option<SocketAddr>,
    /// True when the fd is not a real TCP socket, so TCP options must be faked.
    pub emulated_fd: bool,
}

static TABLE: Mutex<Option<HashMap<u64, Entry>>> = Mutex::new(None);
/// Entries in TABLE: lets pass-through paths skip the lock when nothing is emulated.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Connections the engine is about to hand to a listener, keyed by the address the
/// accepted socket will see as its peer (the engine's end), waiting for `accept`.
static PENDING: Mutex<Option<HashMap<PendingKey, (SocketAddr, SocketAddr)>>> = Mutex::new(None);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PendingKey {
    Unix(Vec<u8>),
    Tcp(SocketAddr),
}

/// A non-blocking connect that has not succeeded: what SO_ERROR, connect and
/// getpeername report until it does (absent once connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connecting {
    InProgress,
    Failed(libc::c_int),
}

static CONNECTING: Mutex<Option<HashMap<u64, Connecting>>> = Mutex::new(None);

pub fn set_connecting(ino: u64, c: Option<Connecting>) {
    let mut m = CONNECTING.lock();
    let m = m.get_or_insert_with(HashMap::new);
    match c {
        Some(c) => m.insert(ino, c),
        None => m.remove(&ino),
    };
}

pub fn connecting(ino: u64) -> Option<Connecting> {
    CONNECTING
        .lock()
        .as_ref()
        .and_then(|m| m.get(&ino).copied())
}

/// Reads a failed connect's error once, as SO_ERROR does (then it reads 0).
pub fn take_connect_error(ino: u64) -> Option<libc::c_int> {
    let mut m = CONNECTING.lock();
    let m = m.as_mut()?;
    match m.get(&ino) {
        Some(Connecting::Failed(e)) => {
            let e = *e;
            m.remove(&ino);
            Some(e)
        }
        _ => None,
    }
}

pub fn is_empty() -> bool {
    COUNT.load(Ordering::Relaxed) == 0
}

/// Inode of a socket fd, or None if `fd` is not a socket.
pub fn inode(fd: libc::c_int) -> Option<u64> {
    // SAFETY: stat is plain data; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    Some(st.st_ino)
}

pub fn insert(ino: u64, e: Entry) {
    let mut t = TABLE.lock();
    if t.get_or_insert_with(HashMap::new).insert(ino, e).is_none() {
        COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn get(ino: u64) -> Option<Entry> {
    if is_empty() {
        return None;
    }
    TABLE.lock().as_ref().and_then(|t| t.get(&ino).cloned())
}

pub fn lookup_fd(fd: libc::c_int) -> Option<Entry> {
    if is_empty() {
        return None;
    }
    get(inode(fd)?)
}

pub fn remove(ino: u64) {
    if let Some(m) = CONNECTING.lock().as_mut() {
        m.remove(&ino);
    }
    let mut t = TABLE.lock();
    if t.as_mut().and_then(|t| t.remove(&ino)).is_some() {
        COUNT.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn add_pending(key: PendingKey, peer: SocketAddr, local: SocketAddr) {
    PENDING
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(key, (peer, local));
}

pub fn take_pending(key: &PendingKey) -> Option<(SocketAddr, SocketAddr)> {
    PENDING.lock().as_mut().and_then(|m| m.remove(key))
}

/// fork: the child must not inherit a lock held by another thread of the parent.
pub fn before_fork() {
    std::mem::forget(TABLE.lock());
    std::mem::forget(PENDING.lock());
    std::mem::forget(CONNECTING.lock());
}

pub fn after_fork() {
    // SAFETY: before_fork locked both and leaked the guards on this very thread; in
    // the parent and the child alike nothing else holds them.
    unsafe {
        TABLE.force_unlock();
        PENDING.force_unlock();
        CONNECTING.force_unlock();
    }
}

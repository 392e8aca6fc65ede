//! The C ABI of RGTP: `librgtp.so` / `librgtp.a`, declared by `include/rgtp.h`
//! (generated from this file by cbindgen; `cbindgen.toml` beside it).
//!
//! A thin layer over the blocking API of the `rgtp` crate (`rgtp::pull`, `rgtp::Exposure` and the
//! connection runtime), in the manner of rustls-ffi: every function returns a status
//! code (0, the exit codes of `rgtp-pull` / `rgtp-expose`, or a negative code of this
//! layer), writes the message into a caller's buffer, checks every pointer, and never
//! lets a panic cross the boundary.

use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rgtp_core::url::parse_hex32;
use rgtp_core::wire::{MAX_MAX_DATAGRAM, MIN_MAX_DATAGRAM};
use rgtp_core::{
    pull_from, ExposeOptions, Exposure, FecMode, PullOptions, PullSource, PullUpdate, ShareOptions,
    TransferError,
};
use rgtp_core::{RgtpListener, RgtpStream};

// ---------------------------------------------------------------- status codes

/// Success.
pub const RGTP_OK: c_int = 0;
/// Internal error, or an I/O error without a better code (exit code 1).
pub const RGTP_E_INTERNAL: c_int = 1;
/// Bad argument: malformed URL, key, address or option value (exit code 2).
pub const RGTP_E_USAGE: c_int = 2;
/// A local file is missing or unreadable, or the output cannot be written (3).
pub const RGTP_E_FILE: c_int = 3;
/// The disk filled; the message says what was saved for a resume (4).
pub const RGTP_E_DISK_FULL: c_int = 4;
/// The exposer (or peer) does not resolve, never answered, or went quiet (5).
pub const RGTP_E_UNREACHABLE: c_int = 5;
/// The exposer's key is not the pinned or remembered one (6).
pub const RGTP_E_KEY_MISMATCH: c_int = 6;
/// The exposer has no file of that name (7).
pub const RGTP_E_NOT_FOUND: c_int = 7;
/// The content does not match its root, or a bad outboard (8).
pub const RGTP_E_CORRUPT: c_int = 8;
/// The resume state (`OUT.rgtp-state`) is damaged (9).
pub const RGTP_E_CORRUPT_STATE: c_int = 9;
/// The UDP port cannot be bound (10).
pub const RGTP_E_BIND: c_int = 10;
/// A key file exists but cannot be used (11).
pub const RGTP_E_BAD_KEY: c_int = 11;
/// The exposer offers more than this host can track (12).
pub const RGTP_E_TOO_LARGE: c_int = 12;
/// The exposer withdrew the file: it changed or broke while exposed (13).
pub const RGTP_E_GONE: c_int = 13;
/// The key's directory cannot be created (15).
pub const RGTP_E_KEY_DIR: c_int = 15;
/// The exposer broke the protocol, e.g. chose a chunk cipher that was not offered (16).
pub const RGTP_E_PROTOCOL: c_int = 16;
/// Cancelled through a cancel handle or the progress callback; progress is saved (130).
pub const RGTP_E_CANCELLED: c_int = 130;
/// A required pointer argument is NULL (this layer only).
pub const RGTP_E_NULL: c_int = -1;
/// A string argument that must be UTF-8 is not (this layer only).
pub const RGTP_E_UTF8: c_int = -2;
/// A bug: a panic was caught at the boundary; the message says where (this layer only).
pub const RGTP_E_PANIC: c_int = -3;

/// `rgtp_progress.kind`: no answer from the exposer yet (`elapsed` is set).
pub const RGTP_PROGRESS_WAITING: c_int = 0;
/// `rgtp_progress.kind`: bytes are arriving (`stored`, `total`, ... are set).
pub const RGTP_PROGRESS_RUNNING: c_int = 1;
/// `rgtp_progress.kind`: the exposer's key was unknown and is now remembered
/// (`exposer_key` is set). A security event: tell the user.
pub const RGTP_PROGRESS_TRUSTED: c_int = 2;
/// `rgtp_progress.kind`: chunks stored by an earlier run no longer match and are
/// pulled again (`damaged_chunks` is set).
pub const RGTP_PROGRESS_DAMAGED: c_int = 3;
/// `rgtp_progress.kind`: sharing has started (`share_port` is set; other pullers
/// give `HOST:share_port` as a source).
pub const RGTP_PROGRESS_SHARING: c_int = 4;
/// `rgtp_progress.kind`: the pull is done and the call keeps sharing for
/// `seed_secs` seconds (the cancel handle ends it early).
pub const RGTP_PROGRESS_SEEDING: c_int = 5;
/// `rgtp_progress.kind`: a live pull joined at the exposer's window (it no longer
/// holds the stream's start): the output starts at stream offset `stored`.
pub const RGTP_PROGRESS_JOINED: c_int = 6;

/// `rgtp_pull_options.verify_thread`: decrypt and hash on a second thread when the
/// host has 4 cores or more.
pub const RGTP_VERIFY_AUTO: c_int = 0;
/// `rgtp_pull_options.verify_thread`: always on a second thread.
pub const RGTP_VERIFY_THREAD: c_int = 1;
/// `rgtp_pull_options.verify_thread`: on the receiving thread.
pub const RGTP_VERIFY_INLINE: c_int = 2;

/// A failure: its status code and message.
struct Fail(c_int, String);

impl From<TransferError> for Fail {
    fn from(e: TransferError) -> Fail {
        Fail(c_int::from(e.exit_code()), e.to_string())
    }
}

type Res<T> = Result<T, Fail>;

/// Copies `msg` into the caller's buffer, truncated at a character boundary to fit
/// with its NUL. Nothing happens when `buf` is NULL or `len` is 0.
fn write_msg(buf: *mut c_char, len: usize, msg: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let mut n = msg.len().min(len - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the caller promises `buf` points to `len` writable bytes; we write
    // `n + 1 <= len` of them, from a string that does not overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}

/// Runs `f`, catching any panic: its status goes back to C, its message into `err`
/// (an empty string on success).
fn guard(err: *mut c_char, errlen: usize, f: impl FnOnce() -> Res<()>) -> c_int {
    let (code, msg) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => (RGTP_OK, String::new()),
        Ok(Err(Fail(code, msg))) => (code, msg),
        Err(p) => (
            RGTP_E_PANIC,
            format!("internal error (panic): {}", panic_text(&p)),
        ),
    };
    write_msg(err, errlen, &msg);
    code
}

/// For functions with no error buffer: the value of `f`, or `fallback` on a panic.
fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(|s| s.as_str()))
        .unwrap_or("unknown")
}

/// The bytes of a C string; `what` names the argument in the message.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
unsafe fn bytes<'a>(p: *const c_char, what: &str) -> Res<&'a [u8]> {
    if p.is_null() {
        return Err(Fail(RGTP_E_NULL, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// A C string that must be UTF-8.
///
/// # Safety
/// As [`bytes`].
unsafe fn text<'a>(p: *const c_char, what: &str) -> Res<&'a str> {
    // SAFETY: forwarded from the caller.
    let b = unsafe { bytes(p, what) }?;
    std::str::from_utf8(b).map_err(|e| Fail(RGTP_E_UTF8, format!("{what} is not UTF-8: {e}")))
}

/// An optional C string (NULL: `None`) that must be UTF-8.
///
/// # Safety
/// As [`bytes`].
unsafe fn opt_text<'a>(p: *const c_char, what: &str) -> Res<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    unsafe { text(p, what) }.map(Some)
}

/// A path: any bytes but NUL (Unix paths need not be UTF-8).
///
/// # Safety
/// As [`bytes`].
unsafe fn path_arg(p: *const c_char, what: &str) -> Res<PathBuf> {
    // SAFETY: forwarded from the caller.
    let b = unsafe { bytes(p, what) }?;
    if b.is_empty() {
        return Err(Fail(RGTP_E_USAGE, format!("{what} is empty")));
    }
    Ok(PathBuf::from(OsStr::from_bytes(b)))
}

/// An optional path (NULL: `None`).
///
/// # Safety
/// As [`bytes`].
unsafe fn opt_path(p: *const c_char, what: &str) -> Res<Option<PathBuf>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    unsafe { path_arg(p, what) }.map(Some)
}

/// `count` C strings (`--from` sources); NULL with a count of 0 is none.
///
/// # Safety
/// `p` is NULL or points to `count` pointers, each NULL or NUL-terminated.
unsafe fn sources(p: *const *const c_char, count: usize) -> Res<Vec<String>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(Fail(RGTP_E_NULL, "opts->from is NULL".into()));
    }
    // SAFETY: the caller promises `count` readable pointers at `p`.
    let ptrs = unsafe { std::slice::from_raw_parts(p, count) };
    ptrs.iter()
        .enumerate()
        // SAFETY: each is NULL or NUL-terminated (the contract); NULL fails in `text`.
        .map(|(i, &s)| unsafe { text(s, &format!("opts->from[{i}]")) }.map(str::to_owned))
        .collect()
}

/// `name` as a NUL-terminated fixed array (truncated to fit).
fn c_name<const N: usize>(name: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (o, &b) in out.iter_mut().zip(name.as_bytes().iter().take(N - 1)) {
        *o = b as c_char;
    }
    out
}

fn check_datagram(m: u16) -> Res<Option<u16>> {
    match m as usize {
        0 => Ok(None),
        m if (MIN_MAX_DATAGRAM..=MAX_MAX_DATAGRAM).contains(&m) => Ok(Some(m as u16)),
        _ => Err(Fail(
            RGTP_E_USAGE,
            format!("max_datagram must be 0 (default) or between {MIN_MAX_DATAGRAM} and {MAX_MAX_DATAGRAM}"),
        )),
    }
}

// ------------------------------------------------------------------------ misc

/// The library's version, e.g. "0.1.0" (a static string; do not free).
#[no_mangle]
pub extern "C" fn rgtp_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of a status code, e.g. "RGTP_E_KEY_MISMATCH" (a static string; do not
/// free); "RGTP_E_UNKNOWN" for a code this library does not return.
#[no_mangle]
pub extern "C" fn rgtp_status_name(code: c_int) -> *const c_char {
    let s: &'static str = match code {
        RGTP_OK => "RGTP_OK\0",
        RGTP_E_INTERNAL => "RGTP_E_INTERNAL\0",
        RGTP_E_USAGE => "RGTP_E_USAGE\0",
        RGTP_E_FILE => "RGTP_E_FILE\0",
        RGTP_E_DISK_FULL => "RGTP_E_DISK_FULL\0",
        RGTP_E_UNREACHABLE => "RGTP_E_UNREACHABLE\0",
        RGTP_E_KEY_MISMATCH => "RGTP_E_KEY_MISMATCH\0",
        RGTP_E_NOT_FOUND => "RGTP_E_NOT_FOUND\0",
        RGTP_E_CORRUPT => "RGTP_E_CORRUPT\0",
        RGTP_E_CORRUPT_STATE => "RGTP_E_CORRUPT_STATE\0",
        RGTP_E_BIND => "RGTP_E_BIND\0",
        RGTP_E_BAD_KEY => "RGTP_E_BAD_KEY\0",
        RGTP_E_TOO_LARGE => "RGTP_E_TOO_LARGE\0",
        RGTP_E_GONE => "RGTP_E_GONE\0",
        RGTP_E_KEY_DIR => "RGTP_E_KEY_DIR\0",
        RGTP_E_PROTOCOL => "RGTP_E_PROTOCOL\0",
        RGTP_E_CANCELLED => "RGTP_E_CANCELLED\0",
        RGTP_E_NULL => "RGTP_E_NULL\0",
        RGTP_E_UTF8 => "RGTP_E_UTF8\0",
        RGTP_E_PANIC => "RGTP_E_PANIC\0",
        _ => "RGTP_E_UNKNOWN\0",
    };
    s.as_ptr().cast()
}

// ---------------------------------------------------------------------- cancel

/// A cancellation flag shared between threads: set it from any thread (or a signal
/// handler's thread) and the pull given it stops within a few milliseconds with
/// `RGTP_E_CANCELLED`, saving its progress.
pub struct RgtpCancel {
    flag: AtomicBool,
}

/// A new, unset cancel handle (NULL only if memory ran out). Free it with
/// `rgtp_cancel_free` once no pull uses it.
#[no_mangle]
pub extern "C" fn rgtp_cancel_new() -> *mut RgtpCancel {
    guard_value(std::ptr::null_mut(), || {
        Box::into_raw(Box::new(RgtpCancel {
            flag: AtomicBool::new(false),
        }))
    })
}

/// Sets the flag: every pull using this handle stops. NULL is ignored. Thread-safe
/// and async-signal-safe (one atomic store).
///
/// # Safety
/// `c` is NULL or a live handle from `rgtp_cancel_new`.
#[no_mangle]
pub unsafe extern "C" fn rgtp_cancel_set(c: *const RgtpCancel) {
    // SAFETY: NULL or live, per the contract; only shared access.
    if let Some(c) = unsafe { c.as_ref() } {
        c.flag.store(true, Ordering::SeqCst);
    }
}

/// Clears the flag, so the handle can serve another pull. NULL is ignored.
///
/// # Safety
/// `c` is NULL or a live handle from `rgtp_cancel_new`.
#[no_mangle]
pub unsafe extern "C" fn rgtp_cancel_reset(c: *const RgtpCancel) {
    // SAFETY: NULL or live, per the contract; only shared access.
    if let Some(c) = unsafe { c.as_ref() } {
        c.flag.store(false, Ordering::SeqCst);
    }
}

/// Frees a cancel handle. NULL is ignored.
///
/// # Safety
/// `c` is NULL or a handle from `rgtp_cancel_new` that no pull uses any more, freed
/// once.
#[no_mangle]
pub unsafe extern "C" fn rgtp_cancel_free(c: *mut RgtpCancel) {
    if !c.is_null() {
        // SAFETY: it came from Box::into_raw in rgtp_cancel_new and is freed once.
        drop(unsafe { Box::from_raw(c) });
    }
}

// ------------------------------------------------------------------------ pull

/// What a pull reports while it runs, to the progress callback (valid during the
/// call only). Which fields are set depends on `kind` (`RGTP_PROGRESS_*`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RgtpProgress {
    /// `RGTP_PROGRESS_WAITING`, `_RUNNING`, `_TRUSTED`, `_DAMAGED`, `_SHARING`,
    /// `_SEEDING` or `_JOINED`.
    pub kind: c_int,
    /// Bytes stored so far, including what an earlier run had (RUNNING); the
    /// output's first stream offset (JOINED).
    pub stored: u64,
    /// The file's size in bytes (RUNNING).
    pub total: u64,
    /// Bytes this run had to pull when it started (RUNNING).
    pub missing_at_start: u64,
    /// Seconds since the pull started (WAITING, RUNNING).
    pub elapsed: f64,
    /// Smoothed round-trip time to the exposer, seconds (RUNNING).
    pub srtt: f64,
    /// Stored chunks found damaged, to be pulled again (DAMAGED).
    pub damaged_chunks: u64,
    /// The exposer's public key, now trusted on first use (TRUSTED).
    pub exposer_key: [u8; 32],
    /// The UDP port shared on (SHARING).
    pub share_port: u16,
    /// How long the call keeps seeding, seconds (SEEDING).
    pub seed_secs: u64,
}

/// The progress callback: called on the pulling thread about four times a second,
/// and for each TRUSTED / DAMAGED event. Return 0 to go on, anything else to cancel
/// the pull (it then returns `RGTP_E_CANCELLED`). It must not call `rgtp_pull*` on
/// the same thread.
pub type RgtpProgressCb = Option<unsafe extern "C" fn(*const RgtpProgress, *mut c_void) -> c_int>;

/// Options of `rgtp_pull_ex`. All zeros (or NULL options) is `rgtp-pull`'s defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RgtpPullOptions {
    /// Require this exposer key (64 hex digits) over the URL's; NULL: the URL's, or
    /// trust on first use when the URL pins none.
    pub key_hex: *const c_char,
    /// The known-exposers file for trust on first use; NULL:
    /// `$RGTP_CONFIG_DIR/known_exposers` (default `~/.config/rgtp/known_exposers`).
    pub known_exposers: *const c_char,
    /// Largest UDP payload to ask for, 512..=65507; 0: 1200, or 65000 on loopback.
    pub max_datagram: u16,
    /// Give up on an exposer that never answered after this many ms; 0: 10000.
    pub connect_timeout_ms: u32,
    /// Give up on an exposer that answered and went silent after this many ms; 0: 60000.
    pub idle_timeout_ms: u32,
    /// `RGTP_VERIFY_AUTO` (0), `RGTP_VERIFY_THREAD` or `RGTP_VERIFY_INLINE`.
    pub verify_thread: c_int,
    /// More sources of the same content (`rgtp-pull --from`): `from_count` strings,
    /// each `HOST:PORT` or an `rgtp://` URL of the same root; the URL pulled must then
    /// carry `root=`. NULL / 0: none.
    pub from: *const *const c_char,
    /// How many strings `from` points to.
    pub from_count: usize,
    /// Repair fragments (`--fec`): "off", "auto" or "K:R"; NULL: "auto" (none on a
    /// clean path).
    pub fec: *const c_char,
    /// Nonzero: serve the verified chunks held to other pullers of the same root
    /// while pulling (`--share`).
    pub share: c_int,
    /// The UDP port to share on (`--share-port`); 0: any free one.
    pub share_port: u16,
    /// With `share`: keep serving this many seconds after the pull finished
    /// (`--seed`), inside the call; the cancel handle ends it early.
    pub seed_secs: u32,
}

/// What a finished pull did: the figures `rgtp-pull --json` prints.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RgtpPullReport {
    /// The file's size in bytes.
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Bytes pulled by this run per second.
    pub throughput: f64,
    /// Bytes this run had to pull (the rest came from an earlier, interrupted run).
    pub missing_bytes_at_start: u64,
    /// 1 if an earlier run's progress was resumed.
    pub resumed: u8,
    /// The content root (BLAKE3; equals `b3sum FILE`).
    pub root: [u8; 32],
    /// The exposer's public key.
    pub exposer_key: [u8; 32],
    pub datagrams_received: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    pub datagrams_sent: u64,
    pub requests: u64,
    pub rerequested_fragments: u64,
    pub duplicate_fragments: u64,
    pub spurious_losses: u64,
    pub bad_chunks: u64,
    pub handshakes: u64,
    /// Repair fragments (`--fec`) received while their chunk was incomplete, chunks
    /// they completed, and repair fragments that came after their chunk was whole.
    pub repair_fragments: u64,
    pub chunks_repaired: u64,
    pub surplus_repair_fragments: u64,
    /// The chunk cipher the exposer chose, NUL-terminated: "aes-256-gcm" or
    /// "chacha20-poly1305" (empty when nothing was pulled this run).
    pub cipher: [c_char; 24],
    /// How many sources served the pull (the main one and each of `from`), and how
    /// many of them were dropped (dead, stalled, or serving chunks that failed
    /// verification).
    pub sources: u32,
    pub sources_dropped: u64,
    /// With `share`: the port shared on and the bytes sent to other pullers.
    pub share_port: u16,
    pub share_bytes_sent: u64,
}

/// Pulls `url` (an `rgtp://` URL as `rgtp-expose` prints it) into the file
/// `out_path`, verified chunk by chunk and resumable, with `rgtp-pull`'s defaults.
/// Blocks until done. Returns `RGTP_OK` or a status code, with the message in `err`
/// (`errlen` bytes, NUL-terminated, truncated to fit; `err` may be NULL).
///
/// # Safety
/// `url` and `out_path` are NULL or NUL-terminated strings; `err` is NULL or points
/// to `errlen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rgtp_pull(
    url: *const c_char,
    out_path: *const c_char,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    // SAFETY: the caller's promises are the same as rgtp_pull_ex's; the rest is NULL.
    unsafe {
        rgtp_pull_ex(
            url,
            out_path,
            std::ptr::null(),
            None,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null_mut(),
            err,
            errlen,
        )
    }
}

/// `rgtp_pull` with options, a progress callback and cancellation.
///
/// - `opts`: NULL for the defaults.
/// - `progress`, `user`: NULL for none; `user` is handed back to each call.
/// - `cancel`: NULL for none; setting it from any thread stops the pull. A
///   callback's nonzero return also sets it (when given), and stops the pull.
/// - `report`: NULL, or where to store the figures of a successful pull.
///
/// Returns `RGTP_OK` or a status code, the message in `err`. A cancelled or failed
/// pull leaves `OUT.rgtp-part` and `OUT.rgtp-state`: the same call resumes it.
///
/// # Safety
/// Strings are NULL or NUL-terminated; `opts`, `cancel` and `report` are NULL or
/// valid for the call; `err` is NULL or points to `errlen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rgtp_pull_ex(
    url: *const c_char,
    out_path: *const c_char,
    opts: *const RgtpPullOptions,
    progress: RgtpProgressCb,
    user: *mut c_void,
    cancel: *const RgtpCancel,
    report: *mut RgtpPullReport,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(err, errlen, || {
        // SAFETY: the caller promises NUL-terminated strings or NULL.
        let (url, out) = unsafe { (text(url, "url")?, path_arg(out_path, "out_path")?) };
        let mut o = PullOptions::default();
        // SAFETY: the caller promises NULL or a valid options struct.
        if let Some(p) = unsafe { opts.as_ref() } {
            // SAFETY: the struct's strings are NULL or NUL-terminated (the contract).
            let (key, known) = unsafe {
                (
                    opt_text(p.key_hex, "opts->key_hex")?,
                    opt_path(p.known_exposers, "opts->known_exposers")?,
                )
            };
            if let Some(k) = key {
                o.key = Some(parse_hex32(k).ok_or_else(|| {
                    Fail(RGTP_E_USAGE, "opts->key_hex must be 64 hex digits".into())
                })?);
            }
            o.known_exposers = known;
            o.max_datagram = check_datagram(p.max_datagram)?;
            if p.connect_timeout_ms > 0 {
                o.connect_timeout = Duration::from_millis(p.connect_timeout_ms.into());
            }
            if p.idle_timeout_ms > 0 {
                o.idle_timeout = Duration::from_millis(p.idle_timeout_ms.into());
            }
            // SAFETY: the caller promises `from` points to `from_count` strings, each
            // NUL-terminated (or it is NULL with a count of 0).
            o.from = unsafe { sources(p.from, p.from_count) }?;
            // SAFETY: the struct's strings are NULL or NUL-terminated (the contract).
            if let Some(f) = unsafe { opt_text(p.fec, "opts->fec") }? {
                o.fec = FecMode::parse(f).ok_or_else(|| {
                    Fail(
                        RGTP_E_USAGE,
                        format!("opts->fec: expected off, auto or K:R, not {f:?}"),
                    )
                })?;
            }
            if p.share != 0 {
                o.share = Some(ShareOptions {
                    port: p.share_port,
                    seed: Duration::from_secs(p.seed_secs.into()),
                });
            }
            o.offload_verify = match p.verify_thread {
                RGTP_VERIFY_AUTO => None,
                RGTP_VERIFY_THREAD => Some(true),
                RGTP_VERIFY_INLINE => Some(false),
                v => {
                    return Err(Fail(
                        RGTP_E_USAGE,
                        format!("opts->verify_thread: bad value {v}"),
                    ))
                }
            };
        }
        let src = PullSource::parse(url, None)?;
        let local = AtomicBool::new(false);
        // SAFETY: the caller promises NULL or a live cancel handle for the call.
        let flag = match unsafe { cancel.as_ref() } {
            Some(c) => &c.flag,
            None => &local,
        };
        let mut on = |u: PullUpdate| {
            let Some(cb) = progress else { return };
            let mut p = RgtpProgress {
                kind: RGTP_PROGRESS_WAITING,
                stored: 0,
                total: 0,
                missing_at_start: 0,
                elapsed: 0.0,
                srtt: 0.0,
                damaged_chunks: 0,
                exposer_key: [0; 32],
                share_port: 0,
                seed_secs: 0,
            };
            match u {
                PullUpdate::Waiting { elapsed } => p.elapsed = elapsed.as_secs_f64(),
                PullUpdate::Progress {
                    stored,
                    total,
                    missing_at_start,
                    elapsed,
                    srtt,
                } => {
                    p.kind = RGTP_PROGRESS_RUNNING;
                    (p.stored, p.total, p.missing_at_start) = (stored, total, missing_at_start);
                    (p.elapsed, p.srtt) = (elapsed.as_secs_f64(), srtt.as_secs_f64());
                }
                PullUpdate::TrustedOnFirstUse { key, .. } => {
                    p.kind = RGTP_PROGRESS_TRUSTED;
                    p.exposer_key = key;
                }
                PullUpdate::Damaged { chunks } => {
                    p.kind = RGTP_PROGRESS_DAMAGED;
                    p.damaged_chunks = chunks;
                }
                PullUpdate::Sharing { addr } => {
                    p.kind = RGTP_PROGRESS_SHARING;
                    p.share_port = addr.port();
                }
                PullUpdate::Seeding { seconds } => {
                    p.kind = RGTP_PROGRESS_SEEDING;
                    p.seed_secs = seconds;
                }
                PullUpdate::Joined { at } => {
                    p.kind = RGTP_PROGRESS_JOINED;
                    p.stored = at;
                }
            }
            // SAFETY: a C function pointer given by the caller, called with a pointer
            // to a live struct and the caller's own `user` value.
            if unsafe { cb(&p, user) } != 0 {
                flag.store(true, Ordering::SeqCst);
            }
        };
        let r = pull_from(&src, &out, &o, flag, &mut on)?;
        // SAFETY: the caller promises NULL or a writable report struct.
        if let Some(rep) = unsafe { report.as_mut() } {
            let s = &r.stats;
            *rep = RgtpPullReport {
                bytes: r.bytes,
                seconds: r.seconds,
                throughput: (r.missing_at_start as f64 / r.seconds.max(1e-9)).round(),
                missing_bytes_at_start: r.missing_at_start,
                resumed: r.resumed.into(),
                root: r.root,
                exposer_key: r.exposer_key,
                datagrams_received: s.datagrams_in,
                bytes_received: s.bytes_in,
                datagrams_sent: s.datagrams_out,
                requests: s.requests,
                rerequested_fragments: s.rerequested_fragments,
                duplicate_fragments: s.duplicate_fragments,
                spurious_losses: s.spurious_losses,
                bad_chunks: s.bad_chunks,
                handshakes: s.handshakes,
                repair_fragments: s.repair_fragments,
                chunks_repaired: s.chunks_repaired,
                surplus_repair_fragments: s.surplus_repair,
                cipher: c_name(s.cipher.map_or("", |c| c.name())),
                sources: r.sources.len() as u32,
                sources_dropped: s.sources_dropped,
                share_port: r.share.as_ref().map_or(0, |sh| sh.addr.port()),
                share_bytes_sent: r.share.as_ref().map_or(0, |sh| sh.bytes_out),
            };
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------- expose

/// Options of `rgtp_expose_start`. All zeros (or NULL options) is `rgtp-expose`'s
/// defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RgtpExposeOptions {
    /// The exposer's key file; NULL: `$RGTP_CONFIG_DIR/exposer.key` (default
    /// `~/.config/rgtp/exposer.key`), created on first use.
    pub key_path: *const c_char,
    /// The host written into the URL; NULL: the bind address, or this host's name
    /// when bound to every address.
    pub advertise: *const c_char,
    /// Where sealed chunks go; NULL: `$RGTP_CACHE_DIR`, else `~/.cache/rgtp`.
    pub cache_dir: *const c_char,
    /// Largest datagram on every path, 512..=65507; 0: 1200, or 65000 on loopback.
    pub max_datagram: u16,
    /// 0: seal every chunk at start-up (`rgtp-expose`'s default); 1: seal on demand
    /// through a bounded cache (starts at once, costs more CPU per pull).
    pub seal_on_demand: u8,
}

/// A running exposure: one file served on a UDP port by a thread of its own.
pub struct RgtpExposer {
    exposure: Mutex<Option<Exposure>>,
    url: String,
    port: u16,
    root: [u8; 32],
    key: [u8; 32],
}

/// Exposes the file `path` on UDP `bind`:`port` (`bind` an IP address, NULL for
/// "::", every address; `port` 0 for an ephemeral one) and serves it on a thread
/// until `rgtp_exposer_stop` / `rgtp_exposer_free`. Hashes the file first (and seals
/// it, unless `opts->seal_on_demand`), so the URL is servable as soon as this returns.
/// On success `*out` is the handle; on failure it is set to NULL.
///
/// # Safety
/// Strings are NULL or NUL-terminated; `opts` is NULL or valid; `out` is NULL or
/// writable; `err` is NULL or points to `errlen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rgtp_expose_start(
    path: *const c_char,
    bind: *const c_char,
    port: u16,
    opts: *const RgtpExposeOptions,
    out: *mut *mut RgtpExposer,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(err, errlen, || {
        if out.is_null() {
            return Err(Fail(RGTP_E_NULL, "out is NULL".into()));
        }
        // SAFETY: `out` is non-NULL and writable (the contract).
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: the caller promises NUL-terminated strings or NULL.
        let (file, bind) = unsafe { (path_arg(path, "path")?, opt_text(bind, "bind")?) };
        let ip: std::net::IpAddr = bind
            .unwrap_or("::")
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .map_err(|_| Fail(RGTP_E_USAGE, format!("bind: not an IP address: {bind:?}")))?;
        let mut o = ExposeOptions {
            bind: std::net::SocketAddr::new(ip, port),
            ..Default::default()
        };
        // SAFETY: the caller promises NULL or a valid options struct.
        if let Some(p) = unsafe { opts.as_ref() } {
            // SAFETY: the struct's strings are NULL or NUL-terminated (the contract).
            unsafe {
                o.key_path = opt_path(p.key_path, "opts->key_path")?;
                o.advertise = opt_text(p.advertise, "opts->advertise")?.map(str::to_string);
                o.cache_dir = opt_path(p.cache_dir, "opts->cache_dir")?;
            }
            o.max_datagram = check_datagram(p.max_datagram)?.map(usize::from);
            o.seal_ahead = p.seal_on_demand == 0;
        }
        let exposure = Exposure::start(&[file], &o)?;
        let u = exposure.urls()[0];
        let handle = RgtpExposer {
            url: u.to_string(),
            port: exposure.local_addr().port(),
            root: u.root.unwrap_or([0; 32]),
            key: exposure.public_key(),
            exposure: Mutex::new(Some(exposure)),
        };
        // SAFETY: as above; the handle goes to the caller, who frees it once.
        unsafe { *out = Box::into_raw(Box::new(handle)) };
        Ok(())
    })
}

/// Copies the exposure's pull URL (`rgtp://HOST:PORT/NAME?key=..&root=..`) into
/// `buf` when it fits with its NUL, and returns its length without the NUL (as
/// `snprintf` does): call with `buflen` 0 to learn the size. NULL `e`: returns 0.
/// The URL stays readable after `rgtp_exposer_stop`.
///
/// # Safety
/// `e` is NULL or a live handle; `buf` is NULL or points to `buflen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rgtp_exposer_url(
    e: *const RgtpExposer,
    buf: *mut c_char,
    buflen: usize,
) -> usize {
    guard_value(0, || {
        // SAFETY: NULL or live, per the contract; only shared access.
        let Some(e) = (unsafe { e.as_ref() }) else {
            return 0;
        };
        if buflen > e.url.len() {
            write_msg(buf, buflen, &e.url);
        }
        e.url.len()
    })
}

/// The UDP port the exposure is bound to (useful with port 0); 0 for NULL.
///
/// # Safety
/// `e` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn rgtp_exposer_port(e: *const RgtpExposer) -> u16 {
    // SAFETY: NULL or live, per the contract; only shared access.
    unsafe { e.as_ref() }.map_or(0, |e| e.port)
}

/// Copies the file's content root (32 bytes; `b3sum FILE`) to `out`.
///
/// # Safety
/// `e` is NULL or a live handle; `out` is NULL or points to 32 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rgtp_exposer_root(e: *const RgtpExposer, out: *mut u8) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { copy32(e, out, |e| e.root) }
}

/// Copies the exposer's public key (32 bytes; pullers pin it) to `out`.
///
/// # Safety
/// `e` is NULL or a live handle; `out` is NULL or points to 32 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rgtp_exposer_key(e: *const RgtpExposer, out: *mut u8) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { copy32(e, out, |e| e.key) }
}

/// # Safety
/// As `rgtp_exposer_root`.
unsafe fn copy32(e: *const RgtpExposer, out: *mut u8, f: fn(&RgtpExposer) -> [u8; 32]) -> c_int {
    // SAFETY: NULL or live, per the contract; only shared access.
    let Some(e) = (unsafe { e.as_ref() }) else {
        return RGTP_E_NULL;
    };
    if out.is_null() {
        return RGTP_E_NULL;
    }
    // SAFETY: `out` points to 32 writable bytes (the contract).
    unsafe { std::ptr::copy_nonoverlapping(f(e).as_ptr(), out, 32) };
    RGTP_OK
}

/// Stops serving and waits for the serving thread. Idempotent: a second call returns
/// `RGTP_OK`. The handle stays valid (its URL, port, root and key are still
/// readable) until `rgtp_exposer_free`.
///
/// # Safety
/// `e` is NULL or a live handle; `err` is NULL or points to `errlen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rgtp_exposer_stop(
    e: *const RgtpExposer,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(err, errlen, || {
        // SAFETY: NULL or live, per the contract; only shared access.
        let Some(e) = (unsafe { e.as_ref() }) else {
            return Err(Fail(RGTP_E_NULL, "exposer is NULL".into()));
        };
        let taken = e.exposure.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(x) => x.close().map_err(|er| {
                Fail(
                    RGTP_E_INTERNAL,
                    format!("the exposer's socket failed: {er}"),
                )
            }),
            None => Ok(()),
        }
    })
}

/// Stops the exposure (if running) and frees the handle. NULL is ignored.
///
/// # Safety
/// `e` is NULL or a handle from `rgtp_expose_start`, freed once, with no other call
/// on it running or to come.
#[no_mangle]
pub unsafe extern "C" fn rgtp_exposer_free(e: *mut RgtpExposer) {
    if e.is_null() {
        return;
    }
    // SAFETY: it came from Box::into_raw in rgtp_expose_start and is freed once.
    let b = unsafe { Box::from_raw(e) };
    // Dropping the Exposure stops and joins its thread; a panic stays here.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
}

// ----------------------------------------------------------------- connections

/// A connection: a TCP-like, encrypted byte stream over RGTP. Calls on one handle
/// are serialised (a write waits for a read in progress on another thread).
pub struct RgtpConn {
    stream: Mutex<Option<RgtpStream>>,
}

/// A listener accepting connections on a UDP port.
pub struct RgtpListenerHandle {
    listener: RgtpListener,
}

fn io_fail(what: &str, e: std::io::Error) -> Fail {
    use std::io::ErrorKind as K;
    let code = match e.kind() {
        K::TimedOut | K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable => {
            RGTP_E_UNREACHABLE
        }
        K::AddrInUse | K::AddrNotAvailable | K::PermissionDenied => RGTP_E_BIND,
        K::InvalidInput => RGTP_E_USAGE,
        _ => RGTP_E_INTERNAL,
    };
    Fail(code, format!("{what}: {e}"))
}

/// Connects to an RGTP listener at `addr` ("HOST:PORT", "[V6]:PORT"), waiting at
/// most `timeout_ms` for the handshake. On success `*out` is the connection.
///
/// # Safety
/// `addr` is NULL or NUL-terminated; `out` is NULL or writable; `err` is NULL or
/// points to `errlen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rgtp_conn_connect(
    addr: *const c_char,
    timeout_ms: u32,
    out: *mut *mut RgtpConn,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(err, errlen, || {
        if out.is_null() {
            return Err(Fail(RGTP_E_NULL, "out is NULL".into()));
        }
        // SAFETY: `out` is non-NULL and writable (the contract).
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: NULL or NUL-terminated (the contract).
        let addr = unsafe { text(addr, "addr")? };
        let s = RgtpStream::connect(addr, Duration::from_millis(timeout_ms.into()))
            .map_err(|e| io_fail(&format!("connect {addr}"), e))?;
        let c = RgtpConn {
            stream: Mutex::new(Some(s)),
        };
        // SAFETY: as above; the caller frees the handle with rgtp_conn_close.
        unsafe { *out = Box::into_raw(Box::new(c)) };
        Ok(())
    })
}

/// Listens on `addr` ("IP:PORT"; port 0 for an ephemeral one). The listener's key is
/// new for each listener.
///
/// # Safety
/// As `rgtp_conn_connect`.
#[no_mangle]
pub unsafe extern "C" fn rgtp_listen(
    addr: *const c_char,
    out: *mut *mut RgtpListenerHandle,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(err, errlen, || {
        if out.is_null() {
            return Err(Fail(RGTP_E_NULL, "out is NULL".into()));
        }
        // SAFETY: `out` is non-NULL and writable (the contract).
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: NULL or NUL-terminated (the contract).
        let addr = unsafe { text(addr, "addr")? };
        let listener =
            RgtpListener::bind(addr).map_err(|e| io_fail(&format!("listen {addr}"), e))?;
        // SAFETY: as above; the caller frees the handle with rgtp_listener_free.
        unsafe { *out = Box::into_raw(Box::new(RgtpListenerHandle { listener })) };
        Ok(())
    })
}

/// The listener's UDP port; 0 for NULL.
///
/// # Safety
/// `l` is NULL or a live listener.
#[no_mangle]
pub unsafe extern "C" fn rgtp_listener_port(l: *const RgtpListenerHandle) -> u16 {
    // SAFETY: NULL or live, per the contract; only shared access.
    unsafe { l.as_ref() }
        .and_then(|l| l.listener.local_addr().ok())
        .map_or(0, |a| a.port())
}

/// Waits for the next established connection. Thread-safe: several threads may
/// accept on one listener.
///
/// # Safety
/// `l` is NULL or a live listener; `out` is NULL or writable; `err` is NULL or
/// points to `errlen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rgtp_listener_accept(
    l: *const RgtpListenerHandle,
    out: *mut *mut RgtpConn,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(err, errlen, || {
        if out.is_null() {
            return Err(Fail(RGTP_E_NULL, "out is NULL".into()));
        }
        // SAFETY: `out` is non-NULL and writable (the contract).
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: NULL or live, per the contract; only shared access.
        let Some(l) = (unsafe { l.as_ref() }) else {
            return Err(Fail(RGTP_E_NULL, "listener is NULL".into()));
        };
        let (s, _) = l.listener.accept().map_err(|e| io_fail("accept", e))?;
        let c = RgtpConn {
            stream: Mutex::new(Some(s)),
        };
        // SAFETY: as above; the caller frees the handle with rgtp_conn_close.
        unsafe { *out = Box::into_raw(Box::new(c)) };
        Ok(())
    })
}

/// Stops listening and frees the listener. NULL is ignored.
///
/// # Safety
/// `l` is NULL or a listener from `rgtp_listen`, freed once, with no call on it
/// running or to come.
#[no_mangle]
pub unsafe extern "C" fn rgtp_listener_free(l: *mut RgtpListenerHandle) {
    if !l.is_null() {
        // SAFETY: it came from Box::into_raw in rgtp_listen and is freed once.
        let b = unsafe { Box::from_raw(l) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
    }
}

/// Runs `f` on the connection's stream.
///
/// # Safety
/// `c` is NULL or a live connection.
unsafe fn with_conn<T>(c: *const RgtpConn, f: impl FnOnce(&mut RgtpStream) -> Res<T>) -> Res<T> {
    // SAFETY: NULL or live, per the contract; only shared access (the Mutex guards
    // the stream).
    let Some(c) = (unsafe { c.as_ref() }) else {
        return Err(Fail(RGTP_E_NULL, "connection is NULL".into()));
    };
    let mut g = c.stream.lock().unwrap_or_else(|p| p.into_inner());
    match g.as_mut() {
        Some(s) => f(s),
        None => Err(Fail(RGTP_E_USAGE, "the connection is closed".into())),
    }
}

/// Reads up to `len` bytes into `buf`, blocking until at least one byte (or the end
/// of the stream) arrives; `*nread` is the count, 0 at the end of the stream.
///
/// # Safety
/// `c` is NULL or a live connection; `buf` points to `len` writable bytes (or is
/// NULL with `len` 0); `nread` is NULL or writable; `err` as elsewhere.
#[no_mangle]
pub unsafe extern "C" fn rgtp_conn_read(
    c: *const RgtpConn,
    buf: *mut u8,
    len: usize,
    nread: *mut usize,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(err, errlen, || {
        if nread.is_null() || (buf.is_null() && len > 0) {
            return Err(Fail(RGTP_E_NULL, "buf or nread is NULL".into()));
        }
        // SAFETY: `nread` is non-NULL and writable.
        unsafe { *nread = 0 };
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `buf` points to `len` writable bytes (the contract), and no Rust
        // reference aliases it.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        // SAFETY: forwarded contract.
        let n = unsafe { with_conn(c, |s| s.read(dst).map_err(|e| io_fail("read", e))) }?;
        // SAFETY: as above.
        unsafe { *nread = n };
        Ok(())
    })
}

/// Writes all `len` bytes of `buf` (blocking while the send buffer is full).
///
/// # Safety
/// `c` is NULL or a live connection; `buf` points to `len` readable bytes (or is
/// NULL with `len` 0); `err` as elsewhere.
#[no_mangle]
pub unsafe extern "C" fn rgtp_conn_write(
    c: *const RgtpConn,
    buf: *const u8,
    len: usize,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(err, errlen, || {
        if buf.is_null() && len > 0 {
            return Err(Fail(RGTP_E_NULL, "buf is NULL".into()));
        }
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `buf` points to `len` readable bytes (the contract).
        let src = unsafe { std::slice::from_raw_parts(buf, len) };
        // SAFETY: forwarded contract.
        unsafe { with_conn(c, |s| s.write_all(src).map_err(|e| io_fail("write", e))) }
    })
}

/// Closes the connection: waits at most `linger_ms` for the peer to have every
/// byte written, then frees the handle (even on failure). NULL: `RGTP_E_NULL`.
///
/// # Safety
/// `c` is NULL or a connection from `rgtp_conn_connect` / `rgtp_listener_accept`,
/// closed once, with no call on it running or to come; `err` as elsewhere.
#[no_mangle]
pub unsafe extern "C" fn rgtp_conn_close(
    c: *mut RgtpConn,
    linger_ms: u32,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(err, errlen, || {
        if c.is_null() {
            return Err(Fail(RGTP_E_NULL, "connection is NULL".into()));
        }
        // SAFETY: it came from Box::into_raw and is closed once (the contract).
        let b = unsafe { Box::from_raw(c) };
        let s = b.stream.into_inner().unwrap_or_else(|p| p.into_inner());
        match s {
            Some(s) => s
                .close(Duration::from_millis(linger_ms.into()))
                .map_err(|e| io_fail("close", e)),
            None => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn msg(buf: &[c_char]) -> String {
        // SAFETY: write_msg always NUL-terminates within the buffer.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn null_and_bad_utf8_give_their_codes() {
        let mut err = [0 as c_char; 128];
        let out = CString::new("/tmp/x").unwrap();
        // SAFETY: valid buffers; NULL where the test wants it.
        let r = unsafe { rgtp_pull(std::ptr::null(), out.as_ptr(), err.as_mut_ptr(), err.len()) };
        assert_eq!(r, RGTP_E_NULL);
        assert_eq!(msg(&err), "url is NULL");
        let bad = CString::new(vec![b'r', 0xff, b'x']).unwrap();
        // SAFETY: as above.
        let r = unsafe { rgtp_pull(bad.as_ptr(), out.as_ptr(), err.as_mut_ptr(), err.len()) };
        assert_eq!(r, RGTP_E_UTF8);
        let http = CString::new("http://h/x").unwrap();
        // SAFETY: as above.
        let r = unsafe { rgtp_pull(http.as_ptr(), out.as_ptr(), err.as_mut_ptr(), err.len()) };
        assert_eq!(r, RGTP_E_USAGE);
        assert!(msg(&err).contains("rgtp://"), "{}", msg(&err));
        // A NULL error buffer is fine.
        // SAFETY: as above.
        let r = unsafe { rgtp_pull(http.as_ptr(), out.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(r, RGTP_E_USAGE);
        let mut e = std::ptr::null_mut();
        // SAFETY: as above.
        let r = unsafe {
            rgtp_expose_start(
                std::ptr::null(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                &mut e,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        assert_eq!(r, RGTP_E_NULL);
        assert!(e.is_null());
        // SAFETY: NULL handles are accepted by these.
        unsafe {
            assert_eq!(
                rgtp_exposer_url(std::ptr::null(), std::ptr::null_mut(), 0),
                0
            );
            assert_eq!(
                rgtp_exposer_stop(std::ptr::null(), std::ptr::null_mut(), 0),
                RGTP_E_NULL
            );
            rgtp_exposer_free(std::ptr::null_mut());
            rgtp_cancel_free(std::ptr::null_mut());
        }
    }

    #[test]
    fn messages_are_truncated_on_a_character_boundary() {
        let mut b = [1 as c_char; 4];
        write_msg(b.as_mut_ptr(), b.len(), "aé€x");
        assert_eq!(msg(&b), "aé");
        write_msg(b.as_mut_ptr(), 1, "abc");
        assert_eq!(msg(&b), "");
    }

    #[test]
    fn status_names_cover_every_code() {
        for (code, name) in [
            (RGTP_OK, "RGTP_OK"),
            (RGTP_E_CANCELLED, "RGTP_E_CANCELLED"),
            (RGTP_E_UTF8, "RGTP_E_UTF8"),
            (77, "RGTP_E_UNKNOWN"),
        ] {
            // SAFETY: static NUL-terminated strings.
            let s = unsafe { CStr::from_ptr(rgtp_status_name(code)) };
            assert_eq!(s.to_str().unwrap(), name);
        }
    }

    /// Every `extern "C"` function of this file is declared in the committed header
    /// (the header is generated by cbindgen; scripts/test-bindings.sh regenerates it
    /// and also checks the library's dynamic symbols against it).
    #[test]
    fn the_header_declares_every_exported_function() {
        let src = include_str!("lib.rs");
        let header = include_str!("../include/rgtp.h");
        let mut n = 0;
        for line in src.lines() {
            let l = line.trim_start();
            let Some(rest) = l
                .strip_prefix("pub unsafe extern \"C\" fn ")
                .or_else(|| l.strip_prefix("pub extern \"C\" fn "))
            else {
                continue;
            };
            let name = rest.split('(').next().unwrap();
            let declared = header
                .match_indices(&format!("{name}("))
                .any(|(i, _)| matches!(header.as_bytes()[i - 1], b' ' | b'*'));
            assert!(declared, "{name} missing from rgtp.h");
            n += 1;
        }
        assert!(n >= 20, "only {n} functions found");
    }
}

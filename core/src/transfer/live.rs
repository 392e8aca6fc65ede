//! The I/O side of live exposures ([`crate::live`]): exposing a stream (stdin) or a
//! growing file, and following one into a file or stdout.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{default_cache_dir, prepare, ExposeOptions, PullReport, PullUpdate, TransferError};
use crate::driver;
use crate::keys::{KnownExposers, Trust};
use crate::live::{Follower, LivePull, LivePullError, Spool};
use crate::puller::{PullConfig, PullError};
use crate::rng::Rng;
use crate::shaper::Shaper;
use crate::udp;
use crate::url::RgtpUrl;

/// Where a live exposure's bytes come from.
pub enum LiveInput {
    /// A stream read to its end (stdin): the exposure ends at end of input.
    Reader(Box<dyn Read + Send>),
    /// A file followed as it grows (read from its start): the exposure ends on a
    /// signal (the `stop` flag) or after `idle` without growth.
    Follow {
        /// The file.
        path: PathBuf,
        /// End after this long without growth (`None`: only on a signal).
        idle: Option<Duration>,
    },
}

/// How often a followed file is looked at for growth.
const FOLLOW_POLL: Duration = Duration::from_millis(5);

/// Exposes `input` live under `name` until `stop` is set: calls `ready` with the URL
/// (no root: the exposure has none yet), the bound address and the exposer key;
/// serves checkpoints while the input grows; when it ends (end of input, `idle`
/// without growth, or `stop` set once: `stop` is then cleared), makes it a finished
/// exposure of every byte, calls `ended` with its URL (with the root, `b3sum` of
/// every byte) and size, and serves it until `stop` is set again.
pub fn expose_live_until(
    name: &str,
    input: LiveInput,
    opts: &ExposeOptions,
    stop: &AtomicBool,
    ready: impl FnOnce(&RgtpUrl, SocketAddr, &[u8; 32]),
    ended: impl FnOnce(&RgtpUrl, u64),
) -> Result<(), TransferError> {
    if name.is_empty() || name.len() > crate::wire::MAX_NAME_LEN {
        return Err(TransferError::Usage(format!(
            "the name must be 1 to {} bytes long",
            crate::wire::MAX_NAME_LEN
        )));
    }
    let follow = match &input {
        LiveInput::Follow { path, .. } => Some(
            crate::output::open_nofollow(path)
                .map_err(|e| TransferError::File(format!("{}: {e}", path.display())))?,
        ),
        LiveInput::Reader(_) => None,
    };
    let (mut ex, sock, _, key, _) = prepare(&[], opts)?;
    let cache_dir = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    if opts.window.is_some_and(|w| w < crate::live::MIN_WINDOW) {
        return Err(TransferError::Usage(format!(
            "--window must be at least {} bytes (one chunk)",
            crate::live::MIN_WINDOW
        )));
    }
    let spool = Arc::new(Spool::create(&cache_dir, opts.window).map_err(|e| {
        TransferError::File(format!(
            "cannot create the spool in {}: {e}",
            cache_dir.display()
        ))
    })?);
    ex.add_live(name, spool.clone());
    let local = sock
        .local_addr()
        .map_err(|e| TransferError::Io(e.to_string()))?;
    let mut url = RgtpUrl {
        host: super::advertised_host(opts),
        port: local.port(),
        name: name.to_string(),
        key: Some(key),
        root: None,
    };
    ready(&url, local, &key);

    let input_done = Arc::new(AtomicBool::new(false));
    let end_follow = Arc::new(AtomicBool::new(false));
    let reader = {
        let (spool, done, end) = (spool.clone(), input_done.clone(), end_follow.clone());
        let name = name.to_string();
        std::thread::Builder::new()
            .name("rgtp-live-input".into())
            .spawn(move || {
                let r = match (input, follow) {
                    (LiveInput::Reader(r), _) => read_stream(r, &spool),
                    (LiveInput::Follow { idle, .. }, Some(f)) => {
                        follow_file(&f, &spool, idle, &end)
                    }
                    (LiveInput::Follow { .. }, None) => Ok(()),
                };
                if let Err(e) = r {
                    tracing::warn!("{name}: input: {e}; ending the exposure");
                }
                done.store(true, Ordering::Relaxed);
            })
            .map_err(|e| TransferError::Io(format!("cannot start the input thread: {e}")))?
    };
    let mut shaper = opts.max_rate.map(|r| Shaper::new(r, Instant::now()));
    // Serve checkpoints until the input ends or a signal comes.
    let live_phase = AtomicBool::new(false);
    let served = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) && !input_done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            live_phase.store(true, Ordering::Relaxed);
        });
        driver::serve(&sock, &mut ex, &live_phase, shaper.as_mut())
    });
    served.map_err(|e| TransferError::Io(format!("socket error: {e}")))?;
    if stop.swap(false, Ordering::Relaxed) {
        // A signal ended it: a followed file is read once more to its current end;
        // a stream is taken as far as it was read.
        end_follow.store(true, Ordering::Relaxed);
        if !input_done.load(Ordering::Relaxed) {
            let deadline = Instant::now() + Duration::from_millis(500);
            while !input_done.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    if input_done.load(Ordering::Relaxed) {
        let _ = reader.join();
    }
    let info = ex
        .finish_live(name)
        .ok_or_else(|| TransferError::Io("the live exposure vanished".into()))?;
    url.root = Some(info.root);
    ended(&url, info.size);
    let served = driver::serve(&sock, &mut ex, stop, shaper.as_mut());
    ex.log_quiet_sources(Instant::now(), true);
    served.map_err(|e| TransferError::Io(format!("socket error: {e}")))
}

/// Reads a stream to its end into the spool: each read is exposed at once (a
/// partial chunk is served as it is).
fn read_stream(mut r: Box<dyn Read + Send>, spool: &Spool) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => spool.append(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Follows a file from its start: what it holds, then what is appended, until
/// `end` is set or `idle` passes without growth. A file that shrinks ends it.
fn follow_file(
    f: &File,
    spool: &Spool,
    idle: Option<Duration>,
    end: &AtomicBool,
) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    let mut last_growth = Instant::now();
    loop {
        let stopping = end.load(Ordering::Relaxed);
        let n = f.read_at_retrying(&mut buf, at)?;
        if n > 0 {
            spool.append(&buf[..n])?;
            at += n as u64;
            last_growth = Instant::now();
            continue;
        }
        if stopping {
            return Ok(());
        }
        if f.metadata()?.len() < at {
            return Err(io::Error::other("the file shrank"));
        }
        if idle.is_some_and(|d| last_growth.elapsed() >= d) {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

trait ReadAtRetrying {
    fn read_at_retrying(&self, buf: &mut [u8], at: u64) -> io::Result<usize>;
}

impl ReadAtRetrying for File {
    fn read_at_retrying(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            match self.read_at(buf, at) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

/// Where a live pull writes.
enum Sink {
    Stdout(io::Stdout),
    File(File),
}

impl Sink {
    /// The output file, when it is a regular file (not a device such as /dev/null).
    fn regular_file(&self) -> Option<&File> {
        match self {
            Sink::File(f) if f.metadata().is_ok_and(|m| m.is_file()) => Some(f),
            _ => None,
        }
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(b)?;
                l.flush()
            }
            Sink::File(f) => f.write_all(b),
        }
    }
}

/// Follows a live exposure (the pull found it live): writes its bytes in order as
/// they are verified, to stdout or to `out` (appended: a file that exists already is
/// resumed from, and must be the exposure's start), until its final checkpoint.
#[allow(clippy::too_many_arguments)]
pub(super) fn pull_live(
    mut cfg: PullConfig,
    host_port: &str,
    mut known: Option<KnownExposers>,
    out: &Path,
    to_stdout: bool,
    sock: &std::net::UdpSocket,
    cancel: &AtomicBool,
    on: &mut dyn FnMut(PullUpdate),
) -> Result<PullReport, TransferError> {
    let start = Instant::now();
    let (mut sink, follower) = if to_stdout {
        (Sink::Stdout(io::stdout()), Follower::new())
    } else {
        open_output(out)?
    };
    let resumed_at = follower.written();
    let resumed = resumed_at > 0;
    let mut told_joined = follower.joined_at() > 0;
    cfg.live = None;
    let mut lp = LivePull::new(cfg, follower, Rng::os(), start);
    let mut rx = udp::Receiver::default();
    let tx = udp::Sender::default();
    let mut trusted = known.is_none();
    let mut last_update = start;
    // The multicast group's socket, while a round is a member (rounds come and go;
    // the socket stays joined while they want the same group).
    let mut group: Option<(std::net::SocketAddrV4, std::net::UdpSocket)> = None;
    let end = loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(TransferError::Cancelled(if to_stdout {
                "interrupted".into()
            } else {
                "interrupted; run the same command to resume".into()
            }));
        }
        // Kept joined between rounds: the group's data for the next round comes
        // while this one ends.
        if let Some(g) = lp
            .group()
            .filter(|g| group.as_ref().map(|j| j.0) != Some(*g))
        {
            group = driver::join_group(g);
            if group.is_none() {
                lp.leave_group();
            }
        }
        if let Some((_, gs)) = &group {
            for _ in 0..16 {
                let now = Instant::now();
                match rx.recv(gs, |_, d| lp.handle_group(now, d)) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(TransferError::Io(format!("socket error: {e}"))),
                }
            }
        }
        for _ in 0..16 {
            let now = Instant::now();
            match rx.recv(sock, |from, d| lp.handle(now, from, d)) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(TransferError::Io(format!("socket error: {e}"))),
            }
        }
        let now = Instant::now();
        if lp.poll_timeout().is_some_and(|t| t <= now) {
            lp.handle_timeout(now);
        }
        while let Some(t) = lp.poll_transmit(now) {
            if let Err(e) = tx.send(sock, &t) {
                tracing::debug!("send: {e}");
            }
        }
        if !told_joined {
            if let Some(w) = lp.joined() {
                told_joined = true;
                if sink.regular_file().is_some() {
                    JoinRecord(w.clone()).store(out)?;
                }
                on(PullUpdate::Joined {
                    at: crate::merkle::chunk_offset(w.start),
                });
            }
        }
        let bytes = lp.take_output();
        if !bytes.is_empty() {
            sink.write(&bytes).map_err(|e| {
                let what = if to_stdout {
                    "to stdout".into()
                } else {
                    out.display().to_string()
                };
                if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                    // What is in the file is verified and in order: a resumed run
                    // goes on from its end.
                    TransferError::DiskFull(format!(
                        "the disk is full writing {what}; what was written is kept (free space and run the same command to resume)"
                    ))
                } else {
                    TransferError::File(format!("cannot write {what}: {e}"))
                }
            })?;
        }
        if !trusted {
            if let (Some(k), Some(key)) = (known.as_mut(), lp.exposer_key()) {
                trusted = true;
                if k.check(host_port, &key) == Trust::New {
                    if let Err(e) = k.remember(host_port, &key) {
                        tracing::warn!("cannot record the exposer key: {e}");
                    }
                    on(PullUpdate::TrustedOnFirstUse {
                        host_port: host_port.to_string(),
                        key,
                    });
                }
            }
        }
        if now.duration_since(last_update) >= Duration::from_millis(250) {
            last_update = now;
            let stored = lp.follower().written();
            on(PullUpdate::Progress {
                stored,
                total: lp.checkpoint_len().unwrap_or(0).max(stored),
                missing_at_start: 0,
                elapsed: now.duration_since(start),
                srtt: lp
                    .puller()
                    .map_or(Duration::ZERO, |p| p.rate_control().srtt()),
            });
        }
        if let Some(end) = lp.end() {
            break end.clone();
        }
        let wait = lp
            .poll_timeout()
            .map_or(Duration::from_millis(100), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(100));
        if !wait.is_zero() {
            // Either socket may bring the next datagram (microsecond waits: pacing).
            match &group {
                Some((_, gs)) => {
                    driver::wait_any_readable(&[sock.as_raw_fd(), gs.as_raw_fd()], wait)
                }
                None => driver::wait_any_readable(&[sock.as_raw_fd()], wait),
            };
        }
    };
    if let Some(f) = sink.regular_file() {
        f.sync_all()
            .map_err(|e| TransferError::File(format!("{}: {e}", out.display())))?;
    }
    let e = match end {
        Ok(e) => e,
        Err(e) => return Err(live_error(e, host_port, resumed, out, lp.rounds)),
    };
    let stats = lp.stats.clone();
    Ok(PullReport {
        share: None,
        bytes: e.size,
        seconds: start.elapsed().as_secs_f64(),
        missing_at_start: e
            .size
            .saturating_sub(resumed_at.max(lp.follower().joined_at())),
        resumed,
        root: e.root,
        exposer_key: e.exposer_key,
        stats,
        sources: Vec::new(),
        live: true,
        live_start: lp.follower().joined_at(),
    })
}

/// The output file of a live pull, opened to append (never through a symlink), and
/// what it holds already.
fn open_output(out: &Path) -> Result<(Sink, Follower), TransferError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let err = |e: io::Error| TransferError::File(format!("{}: {e}", out.display()));
    if std::fs::metadata(out).is_ok_and(|m| m.file_type().is_char_device()) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(out)
            .map_err(err)?;
        return Ok((Sink::File(f), Follower::new()));
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(out)
        .map_err(err)?;
    // A record beside an empty output is left from another pull: not this one's.
    let joined = if f.metadata().map_err(err)?.len() > 0 {
        JoinRecord::load(out)?
    } else {
        None
    };
    let follower = Follower::resume_from(&mut f, joined.map(|j| j.0)).map_err(err)?;
    // Bytes after the last whole read are the file's end: append after them.
    f.seek(io::SeekFrom::Start(follower.written()))
        .map_err(err)?;
    Ok((Sink::File(f), follower))
}

fn live_error(
    e: LivePullError,
    host_port: &str,
    resumed: bool,
    out: &Path,
    rounds: u64,
) -> TransferError {
    match e {
        LivePullError::Pull(PullError::Timeout) => TransferError::Unreachable(format!(
            "exposer {host_port} went quiet (what was written is kept; run the same command to resume)"
        )),
        LivePullError::Pull(e @ PullError::KeyMismatch { .. }) => {
            TransferError::KeyMismatch(e.to_string())
        }
        LivePullError::Pull(PullError::NotFound) => {
            TransferError::NotFound(format!("{host_port} no longer exposes this name"))
        }
        LivePullError::Pull(PullError::BadCheckpoint { .. })
        | LivePullError::Live(_)
            if resumed && rounds <= 1 =>
        {
            TransferError::Protocol(format!(
                "{} holds bytes that are not the start of this live exposure (remove it to pull from the start)",
                out.display()
            ))
        }
        LivePullError::Pull(
            e @ (PullError::RootMismatch { .. } | PullError::BadContent { .. } | PullError::TooLarge { .. }),
        ) => match e {
            PullError::TooLarge { .. } => TransferError::TooLarge(e.to_string()),
            _ => TransferError::Corrupt(e.to_string()),
        },
        LivePullError::Pull(PullError::Gone) => TransferError::Gone(PullError::Gone.to_string()),
        LivePullError::Pull(e @ PullError::BehindWindow { .. }) => TransferError::BehindWindow(
            if to_stdout_or_empty(out, resumed) {
                e.to_string()
            } else {
                format!("{e} (remove {} to join at the window's start)", out.display())
            }
        ),
        e => TransferError::Protocol(e.to_string()),
    }
}

/// Whether the output is stdout, or held nothing before this run (a hint to remove
/// it would not help).
fn to_stdout_or_empty(out: &Path, resumed: bool) -> bool {
    !resumed || out.as_os_str() == "-"
}

/// Where a live pull's output file starts in the stream, when it joined at the
/// exposer's window: `OUT.rgtp-live`, beside the output, so that a resumed pull
/// knows it (the output's bytes alone do not say).
///
/// Format: magic `RGTPLIVE`, version 1, the window's start chunk (u64 LE), a count
/// (u8) and as many 32-byte CVs (the frontier before it), then `blake3` of all of
/// that.
struct JoinRecord(crate::live::Window);

const JOIN_MAGIC: &[u8; 8] = b"RGTPLIVE";

impl JoinRecord {
    fn path(out: &Path) -> PathBuf {
        let mut p = out.as_os_str().to_owned();
        p.push(".rgtp-live");
        PathBuf::from(p)
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + 32 * self.0.frontier.cvs().len());
        b.extend_from_slice(JOIN_MAGIC);
        b.push(1);
        b.extend_from_slice(&self.0.start.to_le_bytes());
        b.push(self.0.frontier.cvs().len() as u8);
        for cv in self.0.frontier.cvs() {
            b.extend_from_slice(cv);
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (body, sum) = b.split_at(b.len().checked_sub(32)?);
        if blake3::hash(body).as_bytes() != sum
            || body.get(..8)? != JOIN_MAGIC
            || body.get(8)? != &1
        {
            return None;
        }
        let start = u64::from_le_bytes(body.get(9..17)?.try_into().ok()?);
        let count = *body.get(17)? as usize;
        let cvs: Vec<[u8; 32]> = body
            .get(18..)?
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or([0; 32]))
            .collect();
        if cvs.len() != count || body.len() != 18 + 32 * count {
            return None;
        }
        let frontier = crate::frontier::Frontier::from_parts(start, cvs)?;
        Some(Self(crate::live::Window { start, frontier }))
    }

    /// The record beside `out`, if any; a damaged one is an error (the output's
    /// place in the stream would be a guess).
    fn load(out: &Path) -> Result<Option<Self>, TransferError> {
        let path = Self::path(out);
        match std::fs::read(&path) {
            Ok(b) => Self::decode(&b).map(Some).ok_or_else(|| {
                TransferError::CorruptState(format!(
                    "{} is damaged: remove it and {} to pull again",
                    path.display(),
                    out.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TransferError::File(format!("{}: {e}", path.display()))),
        }
    }

    /// Written once, atomically, before any byte of the output.
    fn store(&self, out: &Path) -> Result<(), TransferError> {
        let path = Self::path(out);
        crate::atomic_file::replace(&path, &self.encode(), 0o644)
            .map_err(|e| TransferError::File(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_record_round_trips_and_refuses_damage() {
        let mut f = crate::frontier::Frontier::new();
        for i in 0..13u8 {
            f.push([i; 32]);
        }
        let rec = JoinRecord(crate::live::Window {
            start: 13,
            frontier: f,
        });
        let b = rec.encode();
        assert_eq!(JoinRecord::decode(&b).map(|r| r.0), Some(rec.0.clone()));
        for i in [0, 9, 12, 17, 40, b.len() - 1] {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert!(JoinRecord::decode(&bad).is_none(), "byte {i}");
        }
        assert!(JoinRecord::decode(&b[..b.len() - 1]).is_none());
    }
}

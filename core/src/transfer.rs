//! Blocking, high-level file transfers: pull an `rgtp://` URL to a path, and expose
//! files on a UDP port. This is what `rgtp-pull`, `rgtp-expose`, the bindings and
//! library users call (re-exported at the crate root); the sans-IO [`Puller`] and
//! [`Exposer`] and the [`driver`] underneath are crate internals.
//!
//! Every error maps to the commands' exit codes ([`TransferError::exit_code`]), so a
//! program using the library and a script using the commands see the same outcomes.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use rgtp::{pull, Exposure, ExposeOptions, PullOptions};
//!
//! # fn main() -> Result<(), rgtp::TransferError> {
//! // Expose a file on an ephemeral port of 127.0.0.1 (served by a thread until closed).
//! let mut opts = ExposeOptions::default();
//! opts.bind = "127.0.0.1:0".parse().unwrap();
//! let exposure = Exposure::start(&["big.iso".into()], &opts)?;
//! let url = exposure.urls()[0].to_string();
//!
//! // Pull it: verified against the root in the URL, resumable if interrupted.
//! let cancel = AtomicBool::new(false);
//! let report = pull(&url, "copy.iso".as_ref(), &PullOptions::default(), &cancel, &mut |_| {})?;
//! println!("{} bytes in {:.2} s", report.bytes, report.seconds);
//! exposure.close();
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bitset::ChunkSet;
use crate::crypto::{Cipher, CipherSet};
use crate::driver::{self, PullEnd, PullHandler};
use crate::exposer::{Exposer, ExposerConfig};
use crate::fec::FecMode;
use crate::keys::{self, KeyError, KnownExposers, StaticKey, Trust};
use crate::merkle;
use crate::output::{self, Output, OutputError};
use crate::puller::{BadChunk, ChunkVerifier, PullConfig, PullError, PullEvent, PullStats, Puller};
use crate::remembered;
use crate::sealed;
use crate::shaper::Shaper;
use crate::source::{ChunkSource, FileSource};
use crate::swarm::Swarm;
use crate::udp;
use crate::url::{hex, parse_host_port, RgtpUrl, DEFAULT_PORT};
use crate::wire;

/// Why a transfer did not happen or did not finish. `exit_code` gives the code the
/// commands exit with for it (their `--help` lists them).
#[derive(Debug)]
pub enum TransferError {
    /// Bad input from the caller: a malformed URL or name, conflicting options (2).
    Usage(String),
    /// A local file is missing or unreadable, or the output cannot be written (3).
    File(String),
    /// The disk filled; what was saved is said (4).
    DiskFull(String),
    /// The exposer's host does not resolve, never answered, or went quiet (5).
    Unreachable(String),
    /// The exposer's key is not the one pinned or remembered (6).
    KeyMismatch(String),
    /// The exposer has no file of that name (7).
    NotFound(String),
    /// The content does not match its root (8).
    Corrupt(String),
    /// The resume state is damaged (9).
    CorruptState(String),
    /// A UDP port cannot be bound (10).
    Bind(String),
    /// A key file exists but cannot be used (11).
    BadKey(String),
    /// The exposer offers more than this host can hold (12).
    TooLarge(String),
    /// The exposure was withdrawn: its file changed or broke (13).
    Gone(String),
    /// The key's directory cannot be created (15).
    KeyDir(String),
    /// The exposer broke the protocol, e.g. chose a cipher that was not offered (16).
    Protocol(String),
    /// A live pull fell behind the exposer's window: the bytes it needs next are no
    /// longer held (17).
    BehindWindow(String),
    /// Cancelled through the caller's flag (130, as an interrupted command).
    Cancelled(String),
    /// Another I/O failure, e.g. a socket error (1).
    Io(String),
}

impl TransferError {
    /// The exit code `rgtp-pull` / `rgtp-expose` use for this error.
    pub fn exit_code(&self) -> u8 {
        self.parts().0
    }

    /// The exit code and the message, from one match over the variants.
    fn parts(&self) -> (u8, &str) {
        match self {
            Self::Io(m) => (1, m),
            Self::Usage(m) => (2, m),
            Self::File(m) => (3, m),
            Self::DiskFull(m) => (4, m),
            Self::Unreachable(m) => (5, m),
            Self::KeyMismatch(m) => (6, m),
            Self::NotFound(m) => (7, m),
            Self::Corrupt(m) => (8, m),
            Self::CorruptState(m) => (9, m),
            Self::Bind(m) => (10, m),
            Self::BadKey(m) => (11, m),
            Self::TooLarge(m) => (12, m),
            Self::Gone(m) => (13, m),
            Self::KeyDir(m) => (15, m),
            Self::Protocol(m) => (16, m),
            Self::BehindWindow(m) => (17, m),
            Self::Cancelled(m) => (130, m),
        }
    }
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.parts().1)
    }
}

impl std::error::Error for TransferError {}

impl From<OutputError> for TransferError {
    fn from(e: OutputError) -> Self {
        match e {
            OutputError::Io(..) => Self::File(e.to_string()),
            OutputError::Full { .. } => Self::DiskFull(e.to_string()),
            OutputError::CorruptState(..) => Self::CorruptState(e.to_string()),
        }
    }
}

mod live;
pub use live::{expose_live_until, LiveInput};

// ------------------------------------------------------------------------ pull

/// What to pull: the exposer's address, the file's name there, and what the caller
/// already knows of it (a pinned key, the expected root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSource {
    /// The exposer's DNS name or IP address.
    pub host: String,
    /// The exposer's UDP port.
    pub port: u16,
    /// The file's name at the exposer.
    pub name: String,
    /// The exposer's static public key to require (`None`: trust it on first use
    /// and remember it in the known-exposers file).
    pub key: Option<[u8; 32]>,
    /// The file's expected BLAKE3 Merkle root (`b3sum`); `None`: take the exposer's.
    pub root: Option<[u8; 32]>,
}

impl PullSource {
    /// `source` is an `rgtp://` URL (then `name` must be `None`), or `HOST[:PORT]`
    /// (port 443 by default) with the file's `name`.
    pub fn parse(source: &str, name: Option<&str>) -> Result<PullSource, TransferError> {
        let usage = |m: String| Err(TransferError::Usage(m));
        let lower = source.to_ascii_lowercase();
        if !lower.starts_with("rgtp:") && lower.contains("://") {
            let scheme = &source[..lower.find("://").unwrap_or(0)];
            return usage(format!("URL must start with rgtp:// (got {scheme}://...)"));
        }
        let s = if lower.starts_with("rgtp:") {
            if name.is_some() {
                return usage("a URL already names the file; drop the NAME argument".into());
            }
            let u: RgtpUrl = match source.parse() {
                Ok(u) => u,
                Err(e) => return usage(format!("bad URL: {e}")),
            };
            PullSource {
                host: u.host,
                port: u.port,
                name: u.name,
                key: u.key,
                root: u.root,
            }
        } else {
            let Some(name) = name else {
                return usage(
                    "NAME is required with the HOST[:PORT] form (or give an rgtp:// URL)".into(),
                );
            };
            match parse_host_port(source, DEFAULT_PORT) {
                Ok((host, port)) => PullSource {
                    host,
                    port,
                    name: name.to_string(),
                    key: None,
                    root: None,
                },
                Err(e) => return usage(format!("bad address: {e}")),
            }
        };
        if s.name.is_empty() || s.name.len() > wire::MAX_NAME_LEN {
            return usage(format!(
                "the name must be 1 to {} bytes long (this one is {})",
                wire::MAX_NAME_LEN,
                s.name.len()
            ));
        }
        Ok(s)
    }

    /// `host:port`, bracketed for IPv6: how known exposers are keyed.
    pub fn host_port(&self) -> String {
        crate::url::format_host_port(&self.host, self.port)
    }

    /// The last component of the exposure's name: what an output is called when the
    /// caller names only a directory.
    pub fn file_name(&self) -> PathBuf {
        PathBuf::from(
            Path::new(&self.name)
                .file_name()
                .map_or("download".into(), |n| n.to_owned()),
        )
    }
}

/// How to pull. `Default` is what `rgtp-pull` does without options.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// A key to require of the exposer, over the URL's.
    pub key: Option<[u8; 32]>,
    /// Where keys trusted on first use are remembered (`None`: the default file).
    /// Used only when no key is pinned.
    pub known_exposers: Option<PathBuf>,
    /// Largest datagram to ask for, on every path (`None`: 1200, or 65000 on loopback).
    pub max_datagram: Option<u16>,
    /// How long an exposer that has answered may stay silent.
    pub idle_timeout: Duration,
    /// How long to wait for a first answer.
    pub connect_timeout: Duration,
    /// Decrypt and hash on a second thread (`None`: when the host has 4 cores or more).
    pub offload_verify: Option<bool>,
    /// The chunk ciphers to offer (`None`: [`Cipher::default_offer`], AES-256-GCM
    /// where this CPU has AES instructions). ChaCha20-Poly1305 is always offered.
    pub ciphers: Option<CipherSet>,
    /// Repair fragments (`rgtp-pull --fec`): [`FecMode::Auto`] by default, which asks
    /// for none on a clean path.
    pub fec: FecMode,
    /// More sources of the same content (`--from`): `HOST:PORT` (the same name) or
    /// `rgtp://` URLs of the same root. Chunks are spread over every source and all
    /// are checked against the main source's root, which must then be known (a URL
    /// with `root=`).
    pub from: Vec<String>,
    /// Sources discovered rather than given (e.g. in the DHT): used as `from`, but
    /// one that repeats a source, or of the other address family, is skipped.
    pub found: Vec<SocketAddr>,
    /// Share (`--share`): serve the verified chunks held to other pullers of the same
    /// root while pulling, and seed after.
    pub share: Option<ShareOptions>,
    /// Join the exposure's multicast group when its exposer offers one (IPv4; on
    /// by default; `rgtp-pull --no-multicast` turns it off).
    pub multicast: bool,
    /// Peer exchange (on by default; `rgtp-pull --no-peers` turns it off): ask the
    /// exposer, when it speaks it, for the current sharers of the root, pull from
    /// them too, and with `share` tell it where this pull shares. Needs the root
    /// (a URL with `root=`), against which every chunk from every source is checked.
    pub peers: bool,
    /// When the exposure turns out to be live: write it to stdout as it is verified
    /// (else it is appended to the output path, resuming from what that holds).
    pub live_stdout: bool,
}

/// How a pull shares what it holds (`rgtp-pull --share`).
#[derive(Debug, Clone, Default)]
pub struct ShareOptions {
    /// The UDP port to serve on (0: any free one).
    pub port: u16,
    /// How long to keep serving after the pull finished (zero: stop at once).
    pub seed: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            key: None,
            known_exposers: None,
            max_datagram: None,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            offload_verify: None,
            ciphers: None,
            fec: FecMode::Auto,
            from: Vec::new(),
            found: Vec::new(),
            share: None,
            multicast: true,
            peers: true,
            live_stdout: false,
        }
    }
}

/// What a pull tells its caller while it runs.
#[derive(Debug, Clone)]
pub enum PullUpdate {
    /// Sharing: other pullers of the root may pull from this address (the port is
    /// open now; chunks are served once the outboard is known).
    Sharing {
        /// The sharer's local address (its port is what others give as `--from`).
        addr: SocketAddr,
    },
    /// The pull finished and the sharer keeps serving this long (`--seed`).
    Seeding {
        /// How long.
        seconds: u64,
    },
    /// No answer yet (about four times a second).
    Waiting {
        /// Time since the pull started.
        elapsed: Duration,
    },
    /// The exposer's key was not known and is now remembered.
    TrustedOnFirstUse {
        /// The exposer, as `HOST:PORT`.
        host_port: String,
        /// Its static public key.
        key: [u8; 32],
    },
    /// Stored chunks of an earlier run that no longer match and are pulled again.
    Damaged {
        /// How many chunks.
        chunks: u64,
    },
    /// A live pull joined at the exposer's window: it no longer holds the stream's
    /// start, and the output starts at this stream offset.
    Joined {
        /// The stream offset of the output's first byte.
        at: u64,
    },
    /// Progress (about four times a second).
    Progress {
        /// Bytes stored, including what an earlier run had.
        stored: u64,
        /// The file's size.
        total: u64,
        /// Bytes this run had to pull when it started.
        missing_at_start: u64,
        /// Time since the pull started.
        elapsed: Duration,
        /// The smoothed round-trip time to the exposer.
        srtt: Duration,
    },
}

/// What a finished pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The file's size.
    pub bytes: u64,
    /// Wall-clock time of this run, in seconds.
    pub seconds: f64,
    /// Bytes this run pulled (the rest came from an earlier, interrupted run).
    pub missing_at_start: u64,
    /// Whether this run resumed an interrupted one (kept chunks from it).
    pub resumed: bool,
    /// The file's verified BLAKE3 Merkle root (equal to `b3sum` of the file).
    pub root: [u8; 32],
    /// The exposer's static public key (of the main source, or with `from` of the
    /// first source to answer when the main one never did).
    pub exposer_key: [u8; 32],
    /// The puller's counters (datagrams, requests, re-requests, duplicates, bad
    /// chunks), added up over the sources.
    pub stats: PullStats,
    /// Each source, the main one first.
    pub sources: Vec<SourceReport>,
    /// With sharing: the port served on and what was served.
    pub share: Option<ShareReport>,
    /// The exposure was live (a stream or a growing file): it was followed to its
    /// end and written in order as it came (to stdout with
    /// [`PullOptions::live_stdout`]); `root` is its final root.
    pub live: bool,
    /// Live: the stream offset of the output's first byte (past 0 when the pull
    /// joined at the exposer's window).
    pub live_start: u64,
}

/// What a sharer did.
#[derive(Debug, Clone)]
pub struct ShareReport {
    /// The local address it served on.
    pub addr: SocketAddr,
    /// Bytes it sent (handshakes, data, MISSING).
    pub bytes_out: u64,
    /// Handshakes it answered.
    pub handshakes: u64,
    /// MISSING answers it sent (chunks asked for that it did not hold).
    pub missing_sent: u64,
}

/// What one source of a pull did.
#[derive(Debug, Clone)]
pub struct SourceReport {
    /// The source, as `HOST:PORT`.
    pub addr: String,
    /// Content bytes it delivered first (verified and stored).
    pub bytes: u64,
    /// Chunks from it that failed verification.
    pub bad_chunks: u64,
    /// Why it was dropped before the end, if it was.
    pub dropped: Option<String>,
    /// Whether it completed a handshake (a source that never answered before the
    /// pull finished is neither dropped nor a sender).
    pub answered: bool,
}

/// One source of a pull, resolved.
#[derive(Debug)]
struct SourcePlan {
    host_port: String,
    remote: SocketAddr,
    name: String,
    key: Option<[u8; 32]>,
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, TransferError> {
    resolve_like(host, port, None)
}

/// `host`'s first address, of the family of `like` when it has one (a --from source
/// shares the main source's socket).
fn resolve_like(
    host: &str,
    port: u16,
    like: Option<SocketAddr>,
) -> Result<SocketAddr, TransferError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    let same = like.and_then(|l| addrs.iter().find(|a| a.is_ipv4() == l.is_ipv4()));
    match same.or(addrs.first()) {
        Some(a) => Ok(*a),
        None => Err(TransferError::Unreachable(format!(
            "cannot resolve host {host}"
        ))),
    }
}

/// The `--from` sources of a pull of `src` (resolved, checked against its root).
fn extra_sources(
    src: &PullSource,
    main: SocketAddr,
    from: &[String],
    found: &[SocketAddr],
) -> Result<Vec<SourcePlan>, TransferError> {
    if from.is_empty() && found.is_empty() {
        return Ok(Vec::new());
    }
    let usage = |m: String| Err(TransferError::Usage(m));
    let Some(root) = src.root else {
        return usage(
            "--from and --dht need the content root: give an rgtp:// URL with root= (every \
             source is checked against it)"
                .into(),
        );
    };
    let mut seen = vec![main];
    let mut plans = Vec::new();
    for f in from {
        let lower = f.to_ascii_lowercase();
        let (s, by_url) = if lower.starts_with("rgtp:") {
            (PullSource::parse(f, None)?, true)
        } else {
            (PullSource::parse(f, Some(&src.name))?, false)
        };
        if by_url && s.root.is_some_and(|r| r != root) {
            return usage(format!(
                "--from {f}: that URL names another root (not {})",
                hex(&root)
            ));
        }
        let remote = resolve_like(&s.host, s.port, Some(main))?;
        if remote.is_ipv4() != main.is_ipv4() {
            return usage(format!("--from {f}: sources must all be IPv4 or all IPv6"));
        }
        if seen.contains(&remote) {
            return usage(format!("--from {f}: that source is given twice"));
        }
        seen.push(remote);
        plans.push(SourcePlan {
            host_port: s.host_port(),
            remote,
            name: s.name,
            key: s.key,
        });
    }
    for &remote in found {
        if remote.is_ipv4() != main.is_ipv4() || seen.contains(&remote) {
            continue;
        }
        seen.push(remote);
        plans.push(SourcePlan {
            host_port: remote.to_string(),
            remote,
            name: src.name.clone(),
            key: None,
        });
    }
    Ok(plans)
}

/// Pulls `source` (an `rgtp://` URL) into the file `out`, verified chunk by chunk
/// against the root, resuming what an earlier run left (`out.rgtp-part` and
/// `out.rgtp-state`). Blocks until done, failed, or `cancel` is set (then the progress
/// is saved for a resume). `on` hears about progress.
pub fn pull(
    source: &str,
    out: &Path,
    opts: &PullOptions,
    cancel: &AtomicBool,
    on: &mut dyn FnMut(PullUpdate),
) -> Result<PullReport, TransferError> {
    pull_from(&PullSource::parse(source, None)?, out, opts, cancel, on)
}

/// [`pull`] from a parsed source.
pub fn pull_from(
    src: &PullSource,
    out: &Path,
    opts: &PullOptions,
    cancel: &AtomicBool,
    on: &mut dyn FnMut(PullUpdate),
) -> Result<PullReport, TransferError> {
    let host_port = src.host_port();
    let remote = resolve(&src.host, src.port)?;
    let extra = extra_sources(src, remote, &opts.from, &opts.found)?;
    let pin = opts.key.or(src.key);
    // Trust on first use when nothing pins the key.
    let known_path = opts
        .known_exposers
        .clone()
        .unwrap_or_else(keys::default_known_path);
    let known = match pin {
        None => Some(
            KnownExposers::load(&known_path)
                .map_err(|e| TransferError::KeyMismatch(e.to_string()))?,
        ),
        Some(_) => None,
    };
    let known_key = known.as_ref().and_then(|k| k.get(&host_port).copied());

    let (output, resume) = Output::open(out)?;
    let resumed_have = resume.as_ref().map(|r| r.have.clone());
    let mut cfg = PullConfig::new(remote, &src.name);
    if let Some(m) = opts.max_datagram {
        cfg.max_datagram = m;
        cfg.loopback_max_datagram = m;
    }
    cfg.pinned_key = pin.or(known_key);
    cfg.expected_root = src.root;
    cfg.resume = resume;
    cfg.idle_timeout = opts.idle_timeout;
    cfg.connect_timeout = opts.connect_timeout;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cfg.offload_verify = opts.offload_verify.unwrap_or(cores >= 4);
    if let Some(c) = opts.ciphers {
        cfg.ciphers = c;
    }
    cfg.fec = opts.fec;
    // A multicast group serves a pull from one exposer; a multi-source pull's
    // scheduler grants chunks per source, which group data does not follow.
    cfg.multicast = opts.multicast && extra.is_empty();

    let bind: SocketAddr = if remote.is_ipv4() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
    };
    let sock =
        udp::bind(bind).map_err(|e| TransferError::Io(format!("cannot open a UDP socket: {e}")))?;

    let mut sharer = match &opts.share {
        Some(so) => {
            let sh = Sharer::start(SocketAddr::new(bind.ip(), so.port))?;
            on(PullUpdate::Sharing { addr: sh.addr });
            Some(sh)
        }
        None => None,
    };

    let start = Instant::now();
    let mut names = vec![host_port.clone()];
    let mut pullers = Vec::new();
    for plan in &extra {
        // Each source has its own session; no key is learned on first use from a
        // --from source (the root is what makes its chunks good).
        let mut c = cfg.clone();
        c.remote = plan.remote;
        c.name = plan.name.clone();
        c.pinned_key = plan.key;
        pullers.push(Puller::new(c, start));
        names.push(plan.host_port.clone());
    }
    let cfg_template = cfg.clone();
    let live_cfg = cfg.clone();
    pullers.insert(0, Puller::new(cfg, start));
    let mut puller = Swarm::new(pullers);
    if opts.peers && src.root.is_some() {
        let mut template = cfg_template;
        template.pinned_key = None;
        puller.enable_pex(crate::swarm::PexConfig {
            template,
            rng: crate::rng::Rng::os(),
            is_local: Some(is_local_ip),
        });
    }
    let (verify_tx, verify_rx) = mpsc::sync_channel::<VerifyJob>(VERIFY_QUEUE);
    let (done_tx, done_rx) = mpsc::channel::<(usize, u64, Verified)>();
    let verifier = std::thread::spawn(move || {
        for (source, index, ct, v) in verify_rx {
            if done_tx.send((source, index, v.verify(index, ct))).is_err() {
                break;
            }
        }
    });
    let part_path = match &output {
        Output::File(_) => Some(output::part_path(out)),
        Output::Discard => None,
    };
    let mut h = Handler {
        recheck: None,
        part_path,
        verify_tx: Some(verify_tx),
        done_rx,
        output,
        known,
        host_port: host_port.clone(),
        resumed_have,
        on,
        started: false,
        start,
        last_update: start,
        total: 0,
        missing_at_start: 0,
        stored: 0,
        resumed: false,
        root: [0; 32],
        exposer_key: [0; 32],
        sharer: sharer.as_mut(),
        name: src.name.clone(),
    };
    let end = driver::pull(&sock, &mut puller, cancel, &mut h);
    if matches!(end, PullEnd::Failed(PullError::IsLive)) {
        // A stream or a growing file: followed from its exposer alone, written in
        // order as it comes.
        h.verify_tx = None;
        let _ = verifier.join();
        let known = h.known.take();
        drop(h);
        if !extra.is_empty() || opts.share.is_some() {
            return Err(TransferError::Usage(format!(
                "{} is live: it is pulled from its exposer only (no --from, --share or --dht)",
                src.name
            )));
        }
        return live::pull_live(
            live_cfg,
            &host_port,
            known,
            out,
            opts.live_stdout,
            &sock,
            cancel,
            on,
        );
    }
    if matches!(end, PullEnd::Done) {
        // A pull quicker than a tick shares from here.
        h.try_relay(&puller);
    }
    h.verify_tx = None;
    let _ = verifier.join();
    let mut output = h.output;
    let failed = |output: &mut Output, e: TransferError| {
        let _ = output.save();
        Err(e)
    };
    match end {
        PullEnd::Done => output.finish()?,
        PullEnd::Interrupted => {
            return failed(
                &mut output,
                TransferError::Cancelled("interrupted; progress saved".into()),
            )
        }
        PullEnd::Sink(e) => return failed(&mut output, e.into()),
        PullEnd::Io(e) => {
            return failed(&mut output, TransferError::Io(format!("socket error: {e}")))
        }
        PullEnd::Failed(e) => {
            let which = puller
                .sources()
                .iter()
                .rposition(|s| s.dropped.is_some())
                .unwrap_or(0);
            let multi = puller.sources().len() > 1;
            let main_quiet = !puller
                .sources()
                .first()
                .is_some_and(|s| s.puller.answered());
            let host_port = names.get(which).cloned().unwrap_or_else(|| {
                puller
                    .sources()
                    .get(which)
                    .map_or_else(String::new, |s| s.addr().to_string())
            });
            let msg = match (&e, known_key) {
                (PullError::KeyMismatch { got, .. }, Some(old)) if pin.is_none() && which == 0 => {
                    format!(
                    "the key of {host_port} changed: known {}, now {}; refusing (if the change \
                     is expected, delete its line in {})",
                    hex(&old),
                    hex(got),
                    known_path.display()
                )
                }
                (PullError::Timeout, _) if multi => format!(
                    "no source left: the last, {host_port}, did not answer or went quiet \
                     (progress saved)"
                ),
                (PullError::Timeout, _) if main_quiet => format!(
                    "exposer {host_port} unreachable: no answer within {} s (is rgtp-expose \
                     running there, and is UDP port {} open?)",
                    opts.connect_timeout.as_secs_f64().round(),
                    src.port
                ),
                (PullError::Timeout, _) => format!(
                    "exposer {host_port} went quiet: no answer for {} s (progress saved)",
                    opts.idle_timeout.as_secs_f64().round()
                ),
                (PullError::NotFound, _) => {
                    format!("{host_port} exposes no file named {:?}", src.name)
                }
                _ if multi => format!("no source left: the last, {host_port}: {e}"),
                _ => e.to_string(),
            };
            let err = match e {
                PullError::Timeout => TransferError::Unreachable(msg),
                PullError::KeyMismatch { .. } => TransferError::KeyMismatch(msg),
                PullError::NotFound => TransferError::NotFound(msg),
                PullError::RootMismatch { .. }
                | PullError::BadOutboard
                | PullError::BadContent { .. }
                | PullError::BadSource { .. } => TransferError::Corrupt(msg),
                PullError::TooLarge { .. } => TransferError::TooLarge(msg),
                PullError::Gone => TransferError::Gone(msg),
                PullError::NameTooLong => TransferError::Usage(msg),
                PullError::CipherNotOffered { .. }
                | PullError::IsLive
                | PullError::CheckpointMoved
                | PullError::BadCheckpoint { .. } => TransferError::Protocol(msg),
                PullError::BehindWindow { .. } => TransferError::BehindWindow(msg),
            };
            return failed(&mut output, err);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let share = match h.sharer.take() {
        Some(sh) => {
            let seed = opts.share.as_ref().map_or(Duration::ZERO, |o| o.seed);
            if !seed.is_zero() && sh.relaying() {
                (h.on)(PullUpdate::Seeding {
                    seconds: seed.as_secs(),
                });
                let until = Instant::now() + seed;
                while Instant::now() < until && !cancel.load(Ordering::Relaxed) {
                    std::thread::sleep(
                        until
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(100)),
                    );
                }
            }
            Some(sh.finish())
        }
        None => None,
    };
    Ok(PullReport {
        live: false,
        live_start: 0,
        share,
        bytes: h.total,
        seconds,
        missing_at_start: h.missing_at_start,
        resumed: h.resumed,
        root: h.root,
        exposer_key: h.exposer_key,
        stats: puller.stats(),
        sources: puller
            .sources()
            .iter()
            .enumerate()
            .map(|(i, s)| SourceReport {
                // Sources found by peer exchange are named by their address.
                addr: names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| s.addr().to_string()),
                bytes: s.bytes(),
                bad_chunks: s.puller.stats.bad_chunks,
                dropped: s.dropped.as_ref().map(|e| e.to_string()),
                answered: s.puller.stats.handshakes > 0,
            })
            .collect(),
    })
}

/// Whether `ip` is one of this host's addresses: a UDP socket can be bound to it.
fn is_local_ip(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The verifier thread's answer: the plaintext, or why not.
type Verified = Result<Vec<u8>, BadChunk>;
/// A sealed chunk (from a source) for the verifier thread.
type VerifyJob = (usize, u64, Vec<u8>, Arc<ChunkVerifier>);
/// Chunks queued for verification before the pull stops asking for more.
const VERIFY_QUEUE: usize = 256;

/// Carries a pull's events to the verifier, the output file and the caller.
struct Handler<'a> {
    /// A resume's stored chunks to check before the pull may finish.
    recheck: Option<(Arc<ChunkVerifier>, ChunkSet)>,
    part_path: Option<PathBuf>,
    verify_tx: Option<mpsc::SyncSender<VerifyJob>>,
    done_rx: mpsc::Receiver<(usize, u64, Verified)>,
    output: Output,
    known: Option<KnownExposers>,
    host_port: String,
    resumed_have: Option<ChunkSet>,
    on: &'a mut dyn FnMut(PullUpdate),
    /// Whether the exposer's manifest (and so the size) is known.
    started: bool,
    start: Instant,
    last_update: Instant,
    total: u64,
    missing_at_start: u64,
    stored: u64,
    resumed: bool,
    root: [u8; 32],
    exposer_key: [u8; 32],
    /// With `--share`: the sharer, until it relays the exposure.
    sharer: Option<&'a mut Sharer>,
    /// The exposure's name (the sharer serves it under the same).
    name: String,
}

/// A sharer serving beside a pull (`--share`): its own UDP socket and thread, and an
/// exposer that relays the exposure pulled (its id and content key, so its sealing is
/// the origin's) from the chunks written so far, once the outboard is known.
struct Sharer {
    addr: SocketAddr,
    tx: Option<mpsc::Sender<Relay>>,
    relaying: bool,
    /// The swarm was told the sharing port (peer exchange).
    announced: bool,
    /// What the pull is fetching from full sources (its have summaries say so).
    fetching: crate::source::SharedHave,
    next_fetching: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<crate::exposer::ExposerStats>>,
}

/// What the sharer serves.
struct Relay {
    name: String,
    source: crate::source::FetchingSource<crate::source::PartialSource<FileSource>>,
    cvs: Vec<merkle::Hash>,
    id: wire::ExposureId,
    content_key: [u8; 32],
}

impl Sharer {
    fn start(bind: SocketAddr) -> Result<Sharer, TransferError> {
        let sock = udp::bind(bind).map_err(|e| {
            TransferError::Io(format!("cannot open the sharing port {}: {e}", bind.port()))
        })?;
        let addr = sock
            .local_addr()
            .map_err(|e| TransferError::Io(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Relay>();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            // A Noise key of its own, fresh per run: pullers check chunks against the
            // root, not against this key.
            let key = StaticKey::generate();
            let mut ex = Exposer::new(ExposerConfig::default(), key.private, Instant::now());
            loop {
                if st.load(Ordering::Relaxed) {
                    return ex.stats;
                }
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) => {
                        ex.add_relayed_exposure(
                            &r.name,
                            Box::new(r.source),
                            r.cvs,
                            r.id,
                            r.content_key,
                        );
                        tracing::info!("sharing {:?} on {addr}", r.name);
                        break;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return ex.stats,
                }
            }
            if let Err(e) = driver::serve(&sock, &mut ex, &st, None) {
                tracing::warn!("sharing stopped: socket error: {e}");
            }
            ex.log_quiet_sources(Instant::now(), true);
            ex.stats
        });
        Ok(Sharer {
            addr,
            tx: Some(tx),
            relaying: false,
            announced: false,
            fetching: crate::source::shared_have(0),
            next_fetching: Instant::now(),
            stop,
            thread: Some(thread),
        })
    }

    fn relaying(&self) -> bool {
        self.relaying
    }

    /// Stops serving; what it did.
    fn finish(&mut self) -> ShareReport {
        self.stop.store(true, Ordering::Relaxed);
        self.tx = None;
        let stats = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        ShareReport {
            addr: self.addr,
            bytes_out: stats.bytes_out,
            handshakes: stats.handshakes,
            missing_sent: stats.missing_sent,
        }
    }
}

impl Drop for Sharer {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Handler<'_> {
    /// Once the outboard is known and the output started: the sharer relays the
    /// session's exposure from the part file.
    fn try_relay(&mut self, p: &Swarm) {
        let Some(sh) = self.sharer.as_deref_mut() else {
            return;
        };
        if sh.relaying || !self.started {
            return;
        }
        let Some((file, have)) = self.output.shared_part() else {
            return;
        };
        for s in p.sources() {
            let (Some((id, content_key)), Some(cvs)) = (s.puller.relay_keys(), s.puller.cvs())
            else {
                continue;
            };
            let Some(tx) = sh.tx.take() else { return };
            let relay = Relay {
                name: self.name.clone(),
                source: crate::source::FetchingSource {
                    inner: crate::source::PartialSource {
                        inner: FileSource::from_file(file, self.total),
                        have,
                    },
                    fetching: sh.fetching.clone(),
                },
                cvs: cvs.to_vec(),
                id,
                content_key,
            };
            sh.relaying = tx.send(relay).is_ok();
            return;
        }
    }
}

impl PullHandler for Handler<'_> {
    type Error = OutputError;

    fn on_event(&mut self, source: usize, ev: PullEvent) -> Result<(), OutputError> {
        match ev {
            PullEvent::Started {
                exposer_key,
                size,
                root,
                resumed,
            } => {
                // The main source's key is trusted on first use (when not pinned),
                // whenever it answers; the output is set up by the first to answer.
                if source == 0 {
                    self.exposer_key = exposer_key;
                }
                if let Some(k) = self.known.as_mut().filter(|_| source == 0) {
                    if k.check(&self.host_port, &exposer_key) == Trust::New {
                        if let Err(e) = k.remember(&self.host_port, &exposer_key) {
                            tracing::warn!("cannot record the exposer key: {e}");
                        }
                        (self.on)(PullUpdate::TrustedOnFirstUse {
                            host_port: self.host_port.clone(),
                            key: exposer_key,
                        });
                    }
                }
                if self.started {
                    return Ok(());
                }
                self.resumed = resumed;
                self.total = size;
                self.started = true;
                self.root = root;
                if source != 0 {
                    self.exposer_key = exposer_key;
                }
                let have = if resumed {
                    self.resumed_have.take()
                } else {
                    None
                };
                let have_bytes = have.as_ref().map_or(0, |h| bytes_of(h, size));
                self.missing_at_start = size - have_bytes;
                self.stored = have_bytes;
                tracing::info!("pulling {size} bytes, root {}", hex(&root));
                self.output.start(root, size, have)
            }
            PullEvent::Chunk { index, data } => {
                self.stored += data.len() as u64;
                self.output.write_chunk(index, data)
            }
            PullEvent::Recheck { verifier, stored } => {
                self.recheck = Some((verifier, stored));
                Ok(())
            }
            PullEvent::Verify {
                index,
                ct,
                verifier,
            } => {
                if let Some(tx) = &self.verify_tx {
                    // Blocks only when the verifier is a full queue behind.
                    let _ = tx.send((source, index, ct, verifier));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_tick(&mut self, p: &Swarm) -> Result<(), OutputError> {
        self.try_relay(p);
        if self.last_update.elapsed() >= Duration::from_millis(250) {
            self.last_update = Instant::now();
            let elapsed = self.start.elapsed();
            (self.on)(if self.started {
                PullUpdate::Progress {
                    stored: self.stored,
                    total: self.total,
                    missing_at_start: self.missing_at_start,
                    elapsed,
                    srtt: p.srtt(),
                }
            } else {
                PullUpdate::Waiting { elapsed }
            });
        }
        self.output.tick()
    }

    fn paused(&self) -> bool {
        self.output.backlogged()
    }

    fn poll_completions(&mut self, p: &mut Swarm) -> Result<(), OutputError> {
        if let Some(sh) = self.sharer.as_deref_mut() {
            if sh.relaying && !sh.announced {
                // Serving now: peer exchange may tell the exposer.
                sh.announced = true;
                p.set_share_port(sh.addr.port());
            }
            if sh.announced && Instant::now() >= sh.next_fetching {
                // What the pull fetches from the origin now, for the sharer's
                // summaries (fresh within 20 ms: others avoid those chunks).
                sh.next_fetching = Instant::now() + Duration::from_millis(20);
                *sh.fetching.lock() = p.fetching_from_full();
            }
        }
        if let Some((v, stored)) = self.recheck.take() {
            self.recheck_stored(p, &v, &stored)?;
        }
        while let Ok((source, index, plain)) = self.done_rx.try_recv() {
            match plain {
                Ok(data) => {
                    // Endgame: the same chunk may come verified from two sources.
                    if p.chunk_verified(source, index, Ok(data.len()), Instant::now()) {
                        self.stored += data.len() as u64;
                        self.output.write_chunk(index, data)?;
                    }
                }
                Err(bad) => {
                    p.chunk_verified(source, index, Err(bad), Instant::now());
                }
            }
        }
        Ok(())
    }
}

impl Handler<'_> {
    /// Hashes every chunk an earlier run stored (the part file may have been damaged
    /// since) and has the damaged ones pulled again.
    fn recheck_stored(
        &mut self,
        p: &mut Swarm,
        v: &ChunkVerifier,
        stored: &ChunkSet,
    ) -> Result<(), OutputError> {
        use std::os::unix::fs::FileExt;
        let Some(path) = &self.part_path else {
            p.recheck_done(Instant::now());
            return Ok(());
        };
        let file = output::open_nofollow(path).map_err(|e| OutputError::Io(path.clone(), e))?;
        let mut buf = Vec::new();
        let mut damaged = 0u64;
        for index in stored.iter() {
            let len = merkle::chunk_len(index, self.total);
            buf.resize(len, 0);
            let ok = file
                .read_exact_at(&mut buf, index * merkle::CHUNK_SIZE as u64)
                .is_ok()
                && v.check_plain(index, &buf);
            if !ok {
                damaged += 1;
                p.forget_chunk(index);
                self.output.forget(index);
                self.stored = self.stored.saturating_sub(len as u64);
                self.missing_at_start += len as u64;
            }
        }
        if damaged > 0 {
            (self.on)(PullUpdate::Damaged { chunks: damaged });
        }
        p.recheck_done(Instant::now());
        Ok(())
    }
}

/// Bytes of the chunks in `have` of content `size` bytes long.
fn bytes_of(have: &ChunkSet, size: u64) -> u64 {
    have.iter().map(|i| merkle::chunk_len(i, size) as u64).sum()
}

// ---------------------------------------------------------------------- expose

/// How to expose. `Default` is what `rgtp-expose` does without options, except the
/// bind address.
#[derive(Debug, Clone)]
pub struct ExposeOptions {
    /// Where to listen (`rgtp-expose` default: `[::]:443`).
    pub bind: SocketAddr,
    /// The host name written into the printed URLs (`None`: the bind address, or this
    /// host's name when the bind address is unspecified).
    pub advertise: Option<String>,
    /// The exposer's key file (`None`: the default, created on first use).
    pub key_path: Option<PathBuf>,
    /// Seal chunks ahead, in the background while serving, into an unnamed file in
    /// `cache_dir` (else only on demand, through the memory cache).
    pub seal_ahead: bool,
    /// Where sealed copies and remembered roots live (`None`: [`default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Most disk for sealed copies, all files together; chunks past it are sealed on
    /// demand (`None`: 4 GiB, or a quarter of the free space in `cache_dir` at start
    /// when that is less).
    pub cache_max: Option<u64>,
    /// The memory cache's size in bytes (chunks sealed on demand).
    pub cache_bytes: usize,
    /// The chunk cipher for pullers that offer it (`None`: AES-256-GCM where this CPU
    /// has AES instructions, else ChaCha20-Poly1305).
    pub cipher: Option<Cipher>,
    /// Hash every file even when its root is remembered.
    pub rehash: bool,
    /// Largest datagram on every path (`None`: 1200, or 65000 on loopback).
    pub max_datagram: Option<usize>,
    /// Cap on the total send rate, in bits per second, shared fairly among pullers
    /// (`None`: no cap).
    pub max_rate: Option<u64>,
    /// LAN multicast (`rgtp-expose --multicast GROUP:PORT`): the data members ask for
    /// goes once to this IPv4 group. The exposer then binds IPv4.
    pub multicast: Option<std::net::SocketAddrV4>,
    /// The interface the group is sent on (`--multicast-if ADDR|IFACE`; default:
    /// the route's).
    pub multicast_if: Option<udp::MulticastIf>,
    /// A live exposure (`rgtp-expose -` / `--follow`) holds at least its last
    /// `window` bytes and frees older ones (`--window BYTES`): late joiners start
    /// there. `None`: every byte is kept, on disk.
    pub window: Option<u64>,
}

impl Default for ExposeOptions {
    fn default() -> Self {
        Self {
            bind: SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), DEFAULT_PORT),
            advertise: None,
            key_path: None,
            seal_ahead: true,
            cache_dir: None,
            cache_max: None,
            cache_bytes: ExposerConfig::default().cache_bytes,
            cipher: None,
            rehash: false,
            max_datagram: None,
            max_rate: None,
            multicast: None,
            multicast_if: None,
            window: None,
        }
    }
}

/// One exposed file, as `Exposure::start` set it up.
#[derive(Debug, Clone)]
pub struct ExposedFile {
    /// The file, as given to [`Exposure::start`].
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its URL, with key and root: what pullers pull.
    pub url: RgtpUrl,
}

/// Files being served by a thread until [`Exposure::close`] (or drop).
pub struct Exposure {
    files: Vec<ExposedFile>,
    local: SocketAddr,
    key: [u8; 32],
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Exposure {
    /// Hashes every file (so a URL is servable as soon as it is known), binds, seals
    /// ahead if asked, and starts serving on a thread.
    pub fn start(paths: &[PathBuf], opts: &ExposeOptions) -> Result<Exposure, TransferError> {
        let (exposer, sock, files, key, remembering) = prepare(paths, opts)?;
        let max_rate = opts.max_rate;
        let local = sock
            .local_addr()
            .map_err(|e| TransferError::Io(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rgtp-expose".into())
            .spawn(move || {
                let mut ex = exposer;
                let mut shaper = max_rate.map(|r| Shaper::new(r, Instant::now()));
                let r = driver::serve(&sock, &mut ex, &flag, shaper.as_mut());
                join_all(remembering);
                ex.log_quiet_sources(Instant::now(), true);
                r
            })
            .map_err(|e| TransferError::Io(format!("cannot start the serving thread: {e}")))?;
        Ok(Exposure {
            files,
            local,
            key,
            stop,
            thread: Some(thread),
        })
    }

    /// The pull URL of each file, in the order given.
    pub fn urls(&self) -> Vec<&RgtpUrl> {
        self.files.iter().map(|f| &f.url).collect()
    }

    /// The exposed files.
    pub fn files(&self) -> &[ExposedFile] {
        &self.files
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The exposer's public key (pullers pin it).
    pub fn public_key(&self) -> [u8; 32] {
        self.key
    }

    /// Stops serving and waits for the thread; returns its socket error, if any.
    pub fn close(mut self) -> io::Result<()> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the serving thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Exposure {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

/// Serves `paths` on the calling thread until `stop` is set, after calling
/// `ready` with the files and the bound address (e.g. to print the URLs).
pub fn expose_until(
    paths: &[PathBuf],
    opts: &ExposeOptions,
    stop: &AtomicBool,
    ready: impl FnOnce(&[ExposedFile], SocketAddr, &[u8; 32]),
) -> Result<(), TransferError> {
    let (mut ex, sock, files, key, remembering) = prepare(paths, opts)?;
    let local = sock
        .local_addr()
        .map_err(|e| TransferError::Io(e.to_string()))?;
    ready(&files, local, &key);
    let mut shaper = opts.max_rate.map(|r| Shaper::new(r, Instant::now()));
    let served = driver::serve(&sock, &mut ex, stop, shaper.as_mut());
    join_all(remembering);
    // Whoever was being served when we stopped gets their access-log line now.
    ex.log_quiet_sources(Instant::now(), true);
    tracing::info!("stopping: {:?}", ex.stats);
    served.map_err(|e| TransferError::Io(format!("socket error: {e}")))
}

/// What `prepare` set up, and the threads still writing remembered roots (joined
/// when serving ends, so a quick stop does not lose them).
type Prepared = (
    Exposer,
    UdpSocket,
    Vec<ExposedFile>,
    [u8; 32],
    Vec<JoinHandle<()>>,
);

fn join_all(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        let _ = t.join();
    }
}

/// The default bound on disk for sealed copies (with a quarter of the free space): a
/// fixed bound, so an exposure's extra disk does not grow with its size. Chunks past
/// it are sealed on demand, at about half the sealed serving speed.
const DEFAULT_CACHE_MAX: u64 = 4 << 30;

fn prepare(paths: &[PathBuf], opts: &ExposeOptions) -> Result<Prepared, TransferError> {
    if opts.max_rate == Some(0) {
        return Err(TransferError::Usage(
            "the rate cap must be more than 0 bits/s".into(),
        ));
    }
    if opts
        .max_datagram
        .is_some_and(|m| !(wire::MIN_MAX_DATAGRAM..=wire::MAX_MAX_DATAGRAM).contains(&m))
    {
        return Err(TransferError::Usage(format!(
            "the largest datagram must be between {} and {}",
            wire::MIN_MAX_DATAGRAM,
            wire::MAX_MAX_DATAGRAM
        )));
    }
    let key_path = opts.key_path.clone().unwrap_or_else(keys::default_key_path);
    let key = StaticKey::load_or_create(&key_path).map_err(|e| match e {
        e @ KeyError::Create(..) => TransferError::KeyDir(format!(
            "{e} (for the key; give another key path or RGTP_CONFIG_DIR)"
        )),
        e => TransferError::BadKey(e.to_string()),
    })?;
    let cache_dir = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    // Open every file, then bind, then hash: a missing file or a taken port fails at
    // once rather than after minutes of hashing, and the URL (printed after all
    // three) is always servable.
    let mut opened = Vec::new();
    let mut names = HashSet::new();
    for path in paths {
        let name = match path.file_name().and_then(|n| n.to_str()) {
            Some(n) => n.to_string(),
            None => {
                return Err(TransferError::File(format!(
                    "{}: not a file name",
                    path.display()
                )))
            }
        };
        if !names.insert(name.clone()) {
            return Err(TransferError::Usage(format!(
                "two files share the name {name}; expose them from separate processes"
            )));
        }
        let src = FileSource::open(path)
            .map_err(|e| TransferError::File(format!("{}: {e}", path.display())))?;
        opened.push((name, path, src));
    }
    // The group is IPv4: so is the socket that sends to it (the default dual-stack
    // wildcard becomes the IPv4 wildcard).
    let bind = match (opts.multicast, opts.bind) {
        (Some(_), SocketAddr::V6(a)) if a.ip().is_unspecified() => {
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), a.port())
        }
        (Some(_), SocketAddr::V6(_)) => {
            return Err(TransferError::Usage(
                "--multicast is IPv4 only: bind an IPv4 address".into(),
            ))
        }
        (_, b) => b,
    };
    if let Some(g) = opts.multicast {
        if !g.ip().is_multicast() {
            return Err(TransferError::Usage(format!(
                "--multicast {g}: not a multicast address (224.0.0.0/4)"
            )));
        }
    }
    let sock = udp::bind(bind).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            " (ports below 1024 need privileges: pick another port)"
        } else {
            " (choose another port)"
        };
        TransferError::Bind(format!("cannot bind UDP {bind}: {e}{hint}"))
    })?;
    if opts.multicast.is_some() {
        udp::set_multicast_out(&sock, opts.multicast_if.as_ref())
            .map_err(|e| TransferError::Bind(format!("cannot send multicast from {bind}: {e}")))?;
    }
    let mut hashed = Vec::new();
    let mut writers = Vec::new();
    for (name, path, src) in opened {
        let (cvs, remembering) = chunk_cvs(&src, path, &cache_dir, opts.rehash)
            .map_err(|e| TransferError::File(format!("{}: {e}", path.display())))?;
        writers.extend(remembering);
        hashed.push((name, path.clone(), src, cvs));
    }
    let local = sock
        .local_addr()
        .map_err(|e| TransferError::Io(e.to_string()))?;
    let host = advertised_host(opts);
    let mut config = ExposerConfig {
        cache_bytes: opts.cache_bytes,
        multicast: opts.multicast,
        ..Default::default()
    };
    if let Some(c) = opts.cipher {
        config.cipher = c;
    }
    if let Some(m) = opts.max_datagram {
        // Given explicitly, it caps every path, loopback included.
        config.max_datagram = m;
        config.loopback_max_datagram = m;
    }
    let mut ex = Exposer::new(config, key.private, Instant::now());
    let mut files = Vec::new();
    // Disk for sealed copies, shared by the files in order.
    let mut disk_left = match (opts.seal_ahead, opts.cache_max) {
        (false, _) => 0,
        (true, Some(max)) => max,
        (true, None) => {
            sealed::free_space(&cache_dir).map_or(0, |free| (free / 4).min(DEFAULT_CACHE_MAX))
        }
    };
    for (name, path, src, cvs) in hashed {
        let size = src.size();
        let info = ex.add_exposure(&name, Box::new(src), cvs);
        if opts.seal_ahead && size > 0 && disk_left >= sealed::STRIDE {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let store = ex
                .seal_ahead(&info.id, &cache_dir, disk_left, threads)
                .map_err(|e| {
                    TransferError::File(format!(
                        "cannot seal {} ahead into {}: {e} (or seal on demand)",
                        path.display(),
                        cache_dir.display()
                    ))
                })?;
            disk_left -= store.capacity_bytes();
            let chunks = merkle::chunk_count(size);
            if store.slots() < chunks {
                tracing::info!(
                    target: crate::exposer::SETUP_LOG,
                    "{name}: sealing {} of {chunks} chunks ahead (the cache's disk bound); \
                     the rest is sealed on demand",
                    store.slots()
                );
            }
        }
        files.push(ExposedFile {
            path,
            size,
            url: RgtpUrl {
                host: host.clone(),
                port: local.port(),
                name,
                key: Some(key.public),
                root: Some(info.root),
            },
        });
    }
    Ok((ex, sock, files, key.public, writers))
}

/// The host name written into URLs.
fn advertised_host(opts: &ExposeOptions) -> String {
    opts.advertise.clone().unwrap_or_else(|| {
        if opts.bind.ip().is_unspecified() {
            hostname()
        } else {
            opts.bind.ip().to_string()
        }
    })
}

/// The chunk CVs of `src`: remembered from an earlier exposure of the same unchanged
/// file, else hashed on every core (and then remembered).
fn chunk_cvs(
    src: &FileSource,
    path: &Path,
    cache_dir: &Path,
    rehash: bool,
) -> io::Result<(Vec<merkle::Hash>, Option<JoinHandle<()>>)> {
    let t0 = Instant::now();
    let id = remembered::FileIdentity::of(src.file())?;
    let remember = id.size >= remembered::MIN_SIZE;
    if remember && !rehash {
        if let Some(cvs) = remembered::recall(cache_dir, &id) {
            tracing::info!(
                target: crate::exposer::SETUP_LOG,
                "{}: root remembered (file unchanged since it was last hashed)",
                path.display()
            );
            return Ok((cvs, None));
        }
    }
    let cvs = merkle::cvs_of_file(src.file(), src.size())?;
    tracing::info!(
        target: crate::exposer::SETUP_LOG,
        "{}: hashed {} bytes in {:.2} s",
        path.display(),
        src.size(),
        t0.elapsed().as_secs_f64()
    );
    // Only a file that did not change while it was read is remembered, off the path
    // to the URL (writing 0.2 % of the file can wait on a busy disk).
    let mut writer = None;
    if remember && remembered::FileIdentity::of(src.file()).ok() == Some(id) {
        let (dir, cvs, path) = (cache_dir.to_path_buf(), cvs.clone(), path.to_path_buf());
        writer = Some(std::thread::spawn(move || {
            if let Err(e) = remembered::remember(&dir, &id, &cvs) {
                tracing::warn!(
                    target: crate::exposer::SETUP_LOG,
                    "cannot remember the root of {}: {e}",
                    path.display()
                );
            }
        }));
    }
    Ok((cvs, writer))
}

/// This host's name, for URLs of an exposure bound to every address.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into our buffer.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(h) if r == 0 && !h.is_empty() => h.to_string(),
        _ => "localhost".to_string(),
    }
}

/// Where sealed copies go: `$RGTP_CACHE_DIR`, else `$XDG_CACHE_HOME/rgtp`, else
/// `~/.cache/rgtp`, else a directory under the system's temporary one.
pub fn default_cache_dir() -> PathBuf {
    let var = std::env::var_os;
    keys::xdg_dir(
        var("RGTP_CACHE_DIR"),
        var("XDG_CACHE_HOME"),
        var("HOME"),
        ".cache",
        std::env::temp_dir().join("rgtp-cache"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_sources_are_checked_against_the_main_source() {
        let root = "ab".repeat(32);
        let main_url = format!("rgtp://127.0.0.1:5000/f.bin?root={root}");
        let src = PullSource::parse(&main_url, None).unwrap();
        let main: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let from = |f: &[&str]| {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            extra_sources(&src, main, &f, &[])
        };
        // HOST:PORT serves the same name; a name resolves in the main's family.
        let p = from(&[
            "localhost:5001",
            &format!("rgtp://127.0.0.2:5002/g.bin?root={root}"),
        ])
        .unwrap();
        assert_eq!(p[0].remote, "127.0.0.1:5001".parse().unwrap());
        assert_eq!((p[0].name.as_str(), p[1].name.as_str()), ("f.bin", "g.bin"));
        for (f, want) in [
            (
                format!("rgtp://127.0.0.2:5/f.bin?root={}", "cd".repeat(32)),
                "another root",
            ),
            ("127.0.0.1:5000".to_string(), "given twice"),
            ("[::1]:5001".to_string(), "IPv4 or all IPv6"),
            ("http://x/y".to_string(), "rgtp://"),
        ] {
            let e = from(&[f.as_str()]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{f}: {e}");
            assert!(e.to_string().contains(want), "{f}: {e}");
        }
        // Without the main URL's root there is nothing to check the sources against.
        let by_name = PullSource::parse("127.0.0.1:5000", Some("f.bin")).unwrap();
        let e = extra_sources(&by_name, main, &["127.0.0.1:5001".to_string()], &[]).unwrap_err();
        assert!(e.to_string().contains("root="), "{e}");
        let found: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let e = extra_sources(&by_name, main, &[], &[found]).unwrap_err();
        assert!(e.to_string().contains("root="), "{e}");
    }

    #[test]
    fn found_sources_skip_repeats_and_the_other_family() {
        let root = "ab".repeat(32);
        let src =
            PullSource::parse(&format!("rgtp://127.0.0.1:5000/f.bin?root={root}"), None).unwrap();
        let main: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let found: Vec<SocketAddr> = [
            "127.0.0.1:5000",
            "127.0.0.1:5001",
            "[::1]:5002",
            "127.0.0.1:5001",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let p = extra_sources(&src, main, &["127.0.0.1:5003".to_string()], &found).unwrap();
        let got: Vec<String> = p.iter().map(|p| p.remote.to_string()).collect();
        assert_eq!(got, ["127.0.0.1:5003", "127.0.0.1:5001"]);
        assert!(p
            .iter()
            .all(|p| p.name == "f.bin" && p.key.is_none() || p.remote.port() == 5003));
    }

    #[test]
    fn sources_parse_as_the_commands_take_them() {
        let s = PullSource::parse("example.org:8443", Some("a/b.iso")).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("example.org", 8443));
        assert_eq!(s.file_name(), PathBuf::from("b.iso"));
        assert_eq!(
            PullSource::parse("example.org", Some("x")).unwrap().port,
            DEFAULT_PORT
        );
        for (src, name, want) in [
            ("http://h/x", None, "URL must start with rgtp://"),
            ("rgtp://h/x", Some("y"), "drop the NAME"),
            ("h:1", None, "NAME is required"),
            ("h:1", Some(""), "1 to 1024 bytes"),
        ] {
            let e = PullSource::parse(src, name).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{src}");
            assert!(e.to_string().contains(want), "{src}: {e}");
        }
    }

    #[test]
    fn an_exposure_serves_a_pull_and_stops() {
        let dir = std::env::temp_dir().join(format!("rgtp-transfer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let src = dir.join("data.bin");
        std::fs::write(&src, &data).unwrap();
        let opts = ExposeOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            key_path: Some(dir.join("exposer.key")),
            cache_dir: Some(dir.clone()),
            ..Default::default()
        };
        let ex = Exposure::start(std::slice::from_ref(&src), &opts).unwrap();
        let url = ex.urls()[0].to_string();
        let out = dir.join("copy.bin");
        let cancel = AtomicBool::new(false);
        let popts = PullOptions {
            known_exposers: Some(dir.join("known")),
            ..Default::default()
        };
        let report = pull(&url, &out, &popts, &cancel, &mut |_| {}).unwrap();
        assert_eq!(report.bytes, data.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert_eq!(Some(report.root), ex.urls()[0].root);
        ex.close().unwrap();
        // Nothing serves any more: a pull of the same URL is unreachable (exit 5).
        let quick = PullOptions {
            connect_timeout: Duration::from_secs(1),
            ..popts
        };
        let e = pull(&url, &dir.join("again.bin"), &quick, &cancel, &mut |_| {}).unwrap_err();
        assert_eq!(e.exit_code(), 5, "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

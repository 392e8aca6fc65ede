//! rgtp-pull: fetch a file over RGTP, verified chunk by chunk, resumable.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use rgtp::driver::{self, PullEnd};
use rgtp::keys::{self, KnownExposers, Trust};
use rgtp::output::{Output, OutputError};
use rgtp::puller::{PullConfig, PullError, PullEvent, Puller};
use rgtp::url::{hex, parse_hex32, parse_host_port, RgtpUrl, DEFAULT_PORT};
use rgtp::{merkle, udp, wire};

const AFTER_HELP: &str = "\
SOURCE is either a pull URL printed by rgtp-expose (rgtp://HOST[:PORT]/NAME?key=..
&root=..; it pins the exposer's key and the content root), or HOST[:PORT] followed
by NAME. PORT defaults to 443. Without a pinned key the exposer's key is trusted on
first use and remembered in the known-exposers file; a later change of that key is
refused.

While pulling, OUTPUT.rgtp-part holds the data and OUTPUT.rgtp-state the verified
set. Interrupt at any time (Ctrl-C, kill -9) and run the same command again: only
the missing chunks are pulled. On success the part file becomes OUTPUT.

An exposer that never answers is given up on after --connect-timeout (exit 5); one
that answered and then went quiet (restarting, a network outage) is waited for up
to --timeout, and the pull carries on where it was.

--json prints one JSON object on stdout, on success and on failure alike:
  success: exit_code (0), bytes (file size, bytes), seconds (wall time, s),
           throughput (bytes pulled this run / seconds, bytes/s), datagrams_received,
           bytes_received (UDP payload bytes), datagrams_sent, requests,
           rerequested_fragments, duplicate_fragments, spurious_losses, bad_chunks,
           handshakes (counts), resumed (bool), missing_bytes_at_start (bytes),
           output (path, or \"-\" for stdout)
  failure: exit_code (the exit status below), error (the message also on stderr)

Exit codes:
  0    pulled and verified
  1    internal error
  2    bad arguments or URL (e.g. a URL not starting with rgtp://)
  3    cannot create or write the output
  4    disk full (space is reserved before any data; the message says how many
       chunks were saved for a resume)
  5    exposer unreachable (no answer within --connect-timeout, or silent for
       --timeout after answering) or host unknown
  6    exposer key mismatch (pinned key differs, or a known key changed)
  7    the exposer has no such name
  8    content mismatch (root differs from the pinned one, or a bad outboard)
  9    the resume state file is corrupt
  12   the offered file is too large to track (memory, or over 2^32 chunks)
  13   the exposer withdrew the file (it changed or became unreadable while exposed)
  14   the output exists (its name came from the exposer: no -o, or -o DIR/):
       give -o PATH, or --force
  130  interrupted (progress is saved; rerun to resume)

Environment:
  RGTP_CONFIG_DIR   where known_exposers lives (default ~/.config/rgtp)
  RUST_LOG          log filter for stderr, e.g. RUST_LOG=debug";

/// Pull a file from an RGTP exposer.
#[derive(Parser)]
#[command(name = "rgtp-pull", version, after_help = AFTER_HELP)]
struct Args {
    /// rgtp:// URL, or HOST[:PORT] (PORT defaults to 443; then NAME is required).
    #[arg(required_unless_present_any = ["completions", "man"])]
    source: Option<String>,
    /// Name of the file on the exposer (with the HOST[:PORT] form).
    name: Option<String>,
    /// Where to write (default: ./NAME). `-` writes the file to stdout (pulled into a
    /// temporary file in $TMPDIR first; no resume). An existing directory (or a path
    /// ending in /) receives DIR/NAME. A character device such as /dev/null discards
    /// the bytes (no resume).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Require this exposer key (64 hex digits).
    #[arg(long)]
    key: Option<String>,
    /// Give up when an exposer that has answered is then silent this many seconds
    /// (the pull resumes by itself if it comes back sooner).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    timeout: u64,
    /// Give up when the exposer has not answered at all within this many seconds
    /// (nothing listens there, or a firewall drops the packets).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    connect_timeout: u64,
    /// Largest UDP payload to ask for (the exposer may use less). Default: 1200, which
    /// crosses any Internet path, or 65000 when the exposer is on this host (loopback).
    #[arg(long)]
    max_datagram: Option<usize>,
    /// No progress display and no summary. Errors, and the notice that an exposer's
    /// key is being trusted on first use (a security event), still print.
    #[arg(short, long)]
    quiet: bool,
    /// Print one JSON object on stdout at the end: the transfer's figures, or the
    /// error and exit code (fields and units below).
    #[arg(long)]
    json: bool,
    /// Decrypt and verify chunks on a thread of their own (1) or on the receiving
    /// thread (0). Default: 1 with four or more cores, else 0 (on two cores the
    /// hand-off costs more than the thread gains: measured 1129-1255 MB/s inline
    /// against 778-1066 MB/s offloaded on loopback).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    verify_threads: Option<u8>,
    /// Known-exposers file (default: $RGTP_CONFIG_DIR/known_exposers).
    #[arg(long)]
    known_exposers: Option<PathBuf>,
    /// Replace an existing file when the output is named after the pulled file (no
    /// -o, or -o DIR/): without it such a pull refuses to start (exit 14).
    #[arg(long)]
    force: bool,
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell)
    /// and exit.
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<rgtp_cli::Shell>,
    /// Print the man page (roff) and exit.
    #[arg(long, exclusive = true)]
    man: bool,
}

struct Failure(u8, String);

fn fail<T>(code: u8, msg: impl std::fmt::Display) -> Result<T, Failure> {
    Err(Failure(code, msg.to_string()))
}

fn main() -> ExitCode {
    rgtp_cli::init_logging("warn");
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Usage errors (exit 2) keep clap's text on stderr; with --json the
            // caller also gets its object on stdout.
            if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                let msg = first.strip_prefix("error: ").unwrap_or(first);
                print_json(&serde_json::json!({ "exit_code": e.exit_code(), "error": msg }));
            }
            e.exit()
        }
    };
    match rgtp_cli::generated_docs(Args::command(), args.completions, args.man) {
        Ok(false) => {}
        Ok(true) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rgtp-pull: cannot write to stdout: {e}");
            return ExitCode::from(1);
        }
    }
    let json = args.json;
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("rgtp-pull: {msg}");
            if json {
                print_json(&serde_json::json!({ "exit_code": code, "error": msg }));
            }
            ExitCode::from(code)
        }
    }
}

/// One JSON object and a newline on stdout.
fn print_json(v: &serde_json::Value) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{v}");
    let _ = o.flush();
}

/// Where the pulled bytes go, as the user named it.
enum Dest {
    /// A path (file or character device), named by the user.
    Path(PathBuf),
    /// A path whose file name is the exposure's (no -o, or -o DIR/).
    Named(PathBuf),
    /// stdout (`-o -`), through a file in this private temporary directory.
    Stdout(TempDir),
}

/// A private directory under $TMPDIR, removed (with everything in it) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..16 {
            let mut r = [0u8; 8];
            getrandom::getrandom(&mut r).map_err(|e| std::io::Error::other(e.to_string()))?;
            let p = base.join(format!("rgtp-pull-{}-{}", std::process::id(), hex(&r)));
            // 0700 and created here (fails if it exists): nobody else can plant files in it.
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no temporary directory")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn output_failure(e: OutputError) -> Failure {
    let code = match e {
        OutputError::Io(..) => 3,
        OutputError::Full { .. } => 4,
        OutputError::CorruptState(..) => 9,
    };
    Failure(code, e.to_string())
}

fn run(args: Args) -> Result<(), Failure> {
    if args
        .max_datagram
        .is_some_and(|m| !(wire::MIN_MAX_DATAGRAM..=wire::MAX_MAX_DATAGRAM).contains(&m))
    {
        return fail(
            2,
            format!(
                "--max-datagram must be between {} and {}",
                wire::MIN_MAX_DATAGRAM,
                wire::MAX_MAX_DATAGRAM
            ),
        );
    }
    if args.json && args.output.as_deref() == Some(std::path::Path::new("-")) {
        return fail(2, "--json and -o - both write to stdout; give one of them");
    }
    let Some(source) = args.source.as_deref() else {
        return fail(2, "SOURCE is required");
    };
    let lower = source.to_ascii_lowercase();
    if !lower.starts_with("rgtp:") && lower.contains("://") {
        return fail(
            2,
            format!(
                "URL must start with rgtp:// (got {}://...)",
                &source[..lower.find("://").unwrap_or(0)]
            ),
        );
    }
    let (host, port, name, mut pin, root) = if lower.starts_with("rgtp:") {
        if args.name.is_some() {
            return fail(2, "a URL already names the file; drop the NAME argument");
        }
        let u: RgtpUrl = match source.parse() {
            Ok(u) => u,
            Err(e) => return fail(2, format!("bad URL: {e}")),
        };
        (u.host, u.port, u.name, u.key, u.root)
    } else {
        let Some(name) = args.name.clone() else {
            return fail(
                2,
                "NAME is required with the HOST[:PORT] form (or give an rgtp:// URL)",
            );
        };
        match parse_host_port(source, DEFAULT_PORT) {
            Ok((h, p)) => (h, p, name, None, None),
            Err(e) => return fail(2, format!("bad address: {e}")),
        }
    };
    if name.is_empty() || name.len() > wire::MAX_NAME_LEN {
        return fail(
            2,
            format!(
                "the name must be 1 to {} bytes long (this one is {})",
                wire::MAX_NAME_LEN,
                name.len()
            ),
        );
    }
    if let Some(k) = &args.key {
        match parse_hex32(k) {
            Some(k) => pin = Some(k),
            None => return fail(2, "--key must be 64 hex digits"),
        }
    }
    let host_port = rgtp::url::format_host_port(&host, port);
    let remote: SocketAddr = match (host.as_str(), port)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(a)) => a,
        _ => return fail(5, format!("cannot resolve host {host}")),
    };

    // Trust on first use when nothing pins the key.
    let known_path = args
        .known_exposers
        .clone()
        .unwrap_or_else(keys::default_known_path);
    let known = if pin.is_none() {
        match KnownExposers::load(&known_path) {
            Ok(k) => Some(k),
            Err(e) => return fail(6, e),
        }
    } else {
        None
    };
    let known_key = known.as_ref().and_then(|k| k.get(&host_port).copied());

    // The exposure's own file name, for outputs named after it.
    let base_name = PathBuf::from(
        std::path::Path::new(&name)
            .file_name()
            .map_or("download".into(), |n| n.to_owned()),
    );
    let dest = match &args.output {
        None => Dest::Named(base_name.clone()),
        Some(o) if o.as_os_str() == "-" => match TempDir::new() {
            Ok(t) => Dest::Stdout(t),
            Err(e) => {
                return fail(
                    3,
                    format!(
                        "cannot create a temporary directory in {} for -o -: {e}",
                        std::env::temp_dir().display()
                    ),
                )
            }
        },
        Some(o) if o.is_dir() => Dest::Named(o.join(&base_name)),
        Some(o) if o.as_os_str().to_string_lossy().ends_with('/') => {
            return fail(3, format!("{}: no such directory", o.display()))
        }
        Some(o) => Dest::Path(o.clone()),
    };
    let out_path = match &dest {
        Dest::Path(p) | Dest::Named(p) => p.clone(),
        Dest::Stdout(t) => t.0.join(&base_name),
    };
    // A name chosen by the exposer's side (or a URL) must not silently replace a file
    // here, e.g. ./.bashrc: only an explicit -o PATH or --force may.
    if matches!(dest, Dest::Named(_)) && !args.force && std::fs::symlink_metadata(&out_path).is_ok()
    {
        return fail(
            14,
            format!(
                "{} exists; not replacing it (give -o PATH, or --force)",
                out_path.display()
            ),
        );
    }
    let (output, resume) = Output::open(&out_path).map_err(output_failure)?;
    let resumed_have = resume.as_ref().map(|r| r.have.clone());

    let mut cfg = PullConfig::new(remote, &name);
    if let Some(m) = args.max_datagram {
        // Given explicitly, it holds for every path, loopback included.
        cfg.max_datagram = m as u16;
        cfg.loopback_max_datagram = m as u16;
    }
    cfg.pinned_key = pin.or(known_key);
    cfg.expected_root = root;
    cfg.resume = resume;
    cfg.idle_timeout = Duration::from_secs(args.timeout.max(1));
    cfg.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    // Decrypt and hash on another core while this one receives.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cfg.offload_verify = args.verify_threads.unwrap_or(u8::from(cores >= 4)) > 0;

    let bind: SocketAddr = if remote.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = match udp::bind(bind) {
        Ok(s) => s,
        Err(e) => return fail(1, format!("cannot open a UDP socket: {e}")),
    };

    driver::install_stop_handler();
    let start = Instant::now();
    let mut puller = Puller::new(cfg, start);
    let (verify_tx, verify_rx) = std::sync::mpsc::sync_channel::<VerifyJob>(VERIFY_QUEUE);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, Verified)>();
    let verifier = std::thread::spawn(move || {
        for (index, ct, v) in verify_rx {
            if done_tx.send((index, v.verify(index, ct))).is_err() {
                break;
            }
        }
    });
    let part_path = match &output {
        Output::File(_) => Some(rgtp::output::part_path(&out_path)),
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
        name: name.clone(),
        resumed_have,
        progress: !args.quiet && !args.json && std::io::stderr().is_terminal(),
        started: false,
        start,
        last_progress: start,
        total: 0,
        missing_at_start: 0,
        stored: 0,
        resumed: false,
    };
    let end = driver::pull(&sock, &mut puller, &driver::STOP, &mut h);
    h.verify_tx = None;
    let _ = verifier.join();
    let progress = h.progress;
    let (total, missing_at_start, resumed) = (h.total, h.missing_at_start, h.resumed);
    let mut output = h.output;
    if progress {
        eprint!("\r\x1b[2K");
    }
    let secs = start.elapsed().as_secs_f64();
    match end {
        PullEnd::Done => {
            output.finish().map_err(output_failure)?;
        }
        PullEnd::Interrupted => {
            let _ = output.save();
            return fail(
                130,
                if matches!(dest, Dest::Stdout(_)) {
                    "interrupted (-o - does not resume)"
                } else {
                    "interrupted; progress saved, run the same command to resume"
                },
            );
        }
        PullEnd::Sink(e) => {
            let _ = output.save();
            return Err(output_failure(e));
        }
        PullEnd::Io(e) => {
            let _ = output.save();
            return fail(1, format!("socket error: {e}"));
        }
        PullEnd::Failed(e) => {
            let _ = output.save();
            let code = match &e {
                PullError::Timeout => 5,
                PullError::KeyMismatch { .. } => 6,
                PullError::NotFound => 7,
                PullError::RootMismatch { .. }
                | PullError::BadOutboard
                | PullError::BadContent { .. } => 8,
                PullError::TooLarge { .. } => 12,
                PullError::Gone => 13,
                PullError::NameTooLong => 2,
            };
            let msg = match (&e, known_key) {
                (PullError::KeyMismatch { got, .. }, Some(old)) if pin.is_none() => format!(
                    "the key of {host_port} changed: known {}, now {}; refusing (if the change is \
                     expected, delete its line in {})",
                    hex(&old),
                    hex(got),
                    known_path.display()
                ),
                (PullError::Timeout, _) if !puller.answered() => format!(
                    "exposer {host_port} unreachable: no answer within {} s (is rgtp-expose \
                     running there, and is UDP port {port} open?)",
                    args.connect_timeout.max(1)
                ),
                (PullError::Timeout, _) => format!(
                    "exposer {host_port} went quiet: no answer for {} s{}",
                    args.timeout.max(1),
                    if matches!(dest, Dest::Stdout(_)) {
                        ""
                    } else {
                        " (progress saved; run the same command to resume)"
                    }
                ),
                (PullError::NotFound, _) => format!("{host_port} exposes no file named {name:?}"),
                _ => e.to_string(),
            };
            return fail(code, msg);
        }
    }
    let shown_path = match &dest {
        Dest::Stdout(_) => {
            copy_to_stdout(&out_path)?;
            "-".to_string()
        }
        _ => out_path.display().to_string(),
    };
    let s = &puller.stats;
    if args.json {
        print_json(&serde_json::json!({
            "exit_code": 0,
            "bytes": total,
            "seconds": secs,
            "throughput": (missing_at_start as f64 / secs.max(1e-9)).round(),
            "datagrams_received": s.datagrams_in,
            "bytes_received": s.bytes_in,
            "datagrams_sent": s.datagrams_out,
            "requests": s.requests,
            "rerequested_fragments": s.rerequested_fragments,
            "duplicate_fragments": s.duplicate_fragments,
            "spurious_losses": s.spurious_losses,
            "bad_chunks": s.bad_chunks,
            "handshakes": s.handshakes,
            "resumed": resumed,
            "missing_bytes_at_start": missing_at_start,
            "output": shown_path,
        }));
    } else if !args.quiet {
        eprintln!(
            "rgtp-pull: {} -> {shown_path} ({total} bytes in {secs:.2} s, {}/s)",
            name,
            human(missing_at_start as f64 / secs.max(1e-9))
        );
    }
    Ok(())
}

/// `-o -`: the finished file, to stdout.
fn copy_to_stdout(path: &std::path::Path) -> Result<(), Failure> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return fail(3, format!("{}: {e}", path.display())),
    };
    let mut out = std::io::stdout().lock();
    match std::io::copy(&mut f, &mut out).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) => fail(3, format!("cannot write to stdout: {e}")),
    }
}

/// The verifier thread's answer: the plaintext, or why not.
type Verified = Result<Vec<u8>, rgtp::puller::BadChunk>;
/// A sealed chunk for the verifier thread.
type VerifyJob = (u64, Vec<u8>, std::sync::Arc<rgtp::puller::ChunkVerifier>);
/// Chunks queued for verification before the pull stops asking for more.
const VERIFY_QUEUE: usize = 256;

/// Carries a pull's events to the verifier, the output file and the terminal.
struct Handler {
    /// A resume's stored chunks to check before the pull may finish.
    recheck: Option<(
        std::sync::Arc<rgtp::puller::ChunkVerifier>,
        rgtp::bitset::ChunkSet,
    )>,
    part_path: Option<PathBuf>,
    verify_tx: Option<std::sync::mpsc::SyncSender<VerifyJob>>,
    done_rx: std::sync::mpsc::Receiver<(u64, Verified)>,
    output: Output,
    known: Option<KnownExposers>,
    host_port: String,
    name: String,
    resumed_have: Option<rgtp::bitset::ChunkSet>,
    progress: bool,
    /// Whether the exposer's manifest (and so the size) is known.
    started: bool,
    start: Instant,
    last_progress: Instant,
    total: u64,
    missing_at_start: u64,
    stored: u64,
    resumed: bool,
}

impl driver::PullHandler for Handler {
    type Error = OutputError;

    fn on_event(&mut self, ev: PullEvent) -> Result<(), OutputError> {
        match ev {
            PullEvent::Started {
                exposer_key,
                size,
                root,
                resumed,
            } => {
                self.resumed = resumed;
                self.total = size;
                self.started = true;
                if let Some(k) = self.known.as_mut() {
                    if k.check(&self.host_port, &exposer_key) == Trust::New {
                        if let Err(e) = k.remember(&self.host_port, &exposer_key) {
                            tracing::warn!("cannot record the exposer key: {e}");
                        }
                        eprintln!(
                            "rgtp-pull: trusting {} on first use: key {}",
                            self.host_port,
                            keys::fingerprint(&exposer_key)
                        );
                    }
                }
                let have = if resumed {
                    self.resumed_have.take()
                } else {
                    None
                };
                let have_bytes = have.as_ref().map_or(0, |h| have_bytes(h, size));
                self.missing_at_start = size - have_bytes;
                self.stored = have_bytes;
                tracing::info!("pulling {}: {size} bytes, root {}", self.name, hex(&root));
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
                    let _ = tx.send((index, ct, verifier));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_tick(&mut self, p: &Puller) -> Result<(), OutputError> {
        if self.progress && self.last_progress.elapsed() >= Duration::from_millis(250) {
            self.last_progress = Instant::now();
            if !self.started {
                // Nothing known yet: no bar, no percentage.
                eprint!(
                    "\r\x1b[2Kwaiting for {} ... {:.0} s",
                    self.host_port,
                    self.start.elapsed().as_secs_f64()
                );
                return self.output.tick();
            }
            draw_progress(
                self.stored,
                self.total,
                self.missing_at_start,
                self.start,
                p,
            );
        }
        self.output.tick()
    }

    fn paused(&self) -> bool {
        self.output.backlogged()
    }

    fn poll_completions(&mut self, p: &mut Puller) -> Result<(), OutputError> {
        if let Some((v, stored)) = self.recheck.take() {
            self.recheck_stored(p, &v, &stored)?;
        }
        while let Ok((index, plain)) = self.done_rx.try_recv() {
            match plain {
                Ok(data) => {
                    p.chunk_verified(index, Ok(data.len()));
                    self.stored += data.len() as u64;
                    self.output.write_chunk(index, data)?;
                }
                Err(bad) => p.chunk_verified(index, Err(bad)),
            }
        }
        Ok(())
    }
}

impl Handler {
    /// Hashes every chunk an earlier run stored (the part file may have been damaged
    /// since) and has the damaged ones pulled again.
    fn recheck_stored(
        &mut self,
        p: &mut Puller,
        v: &rgtp::puller::ChunkVerifier,
        stored: &rgtp::bitset::ChunkSet,
    ) -> Result<(), OutputError> {
        use std::os::unix::fs::FileExt;
        let Some(path) = &self.part_path else {
            p.recheck_done();
            return Ok(());
        };
        let file =
            rgtp::output::open_nofollow(path).map_err(|e| OutputError::Io(path.clone(), e))?;
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
            eprintln!("rgtp-pull: {damaged} stored chunk(s) no longer match; pulling them again");
        }
        p.recheck_done();
        Ok(())
    }
}

fn have_bytes(have: &rgtp::bitset::ChunkSet, size: u64) -> u64 {
    (0..have.len())
        .filter(|&i| have.contains(i))
        .map(|i| merkle::chunk_len(i, size) as u64)
        .sum()
}

fn draw_progress(stored: u64, total: u64, missing: u64, start: Instant, p: &Puller) {
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    let done_now = stored.saturating_sub(total - missing);
    let rate = done_now as f64 / secs;
    let pct = if total == 0 {
        100.0
    } else {
        stored as f64 * 100.0 / total as f64
    };
    let eta = if rate > 0.0 {
        format!("{:.0}s", (total.saturating_sub(stored)) as f64 / rate)
    } else {
        "?".into()
    };
    let width = 30usize;
    let filled = ((pct / 100.0) * width as f64) as usize;
    eprint!(
        "\r\x1b[2K[{}{}] {pct:5.1}% {} / {}  {}/s  ETA {eta}  rtt {:.1} ms",
        "#".repeat(filled.min(width)),
        " ".repeat(width - filled.min(width)),
        human(stored as f64),
        human(total as f64),
        human(rate),
        p.rate_control().srtt().as_secs_f64() * 1e3,
    );
}

fn human(b: f64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", U[i])
}

//! rgtp-pull: fetch a file over RGTP, verified chunk by chunk, resumable.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use rgtp::driver;
use rgtp::keys;
use rgtp::url::{hex, parse_hex32};
use rgtp::{PullOptions, PullSource, PullUpdate, TransferError};

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

--from SRC (repeatable) adds sources of the same content: HOST:PORT (serving the
same NAME) or an rgtp:// URL of the same root. SOURCE must then be a URL with
root=: every chunk from every source is verified against it, so no source is
trusted. Each source has its own session and rate control, and gets chunks in
proportion to what it delivers; a source that fails, stalls or serves a chunk that
fails verification is dropped and its chunks go to the others. The pull fails only
when no source is left. A resume may use any mix of sources.

--share also serves, while pulling, the chunks verified so far to other pullers of
the same root, on a UDP port of its own (--share-port, printed on stderr); they
add it with --from HOST:PORT. The sharer relays the exposer's own sealing (its
exposure id and content key), so what it serves is byte-identical to the
exposer's, and it answers requests for chunks it lacks with MISSING, which sends
them elsewhere. --seed SECS keeps serving that long after the pull finished.

Peer exchange: with a URL that gives root=, the pull asks the exposer which
pullers of the same root share (at most 16, each at the address the exposer sees
its session come from), and pulls from them too, asking each which chunks it
holds; with --share it tells the exposer where it shares, so pullers started
together find each other through the exposer alone, and ask the exposer for
different chunks. --no-peers turns this off.

A live exposure (a stream or a growing file, `rgtp-expose -` / `--follow`; its URL
has no root=) is followed: bytes are written in order as soon as they are verified
against the exposer's latest checkpoint, to OUTPUT directly (no part file) or to
stdout with -o -, until the exposure ends; then the final root (b3sum of every
byte) is checked and the pull exits 0. A late joiner gets everything from the
start, then follows. Interrupted, the same command (with -o OUTPUT) resumes where
OUTPUT ends: its bytes must be the exposure's start. A checkpoint that contradicts
an earlier one (forged, or bytes already verified changed) fails the pull (exit 16).

--json prints one JSON object on stdout, on success and on failure alike:
  success: exit_code (0), bytes (file size, bytes), seconds (wall time, s),
           throughput (bytes pulled this run / seconds, bytes/s), datagrams_received,
           bytes_received (UDP payload bytes), datagrams_sent, requests,
           rerequested_fragments, repair_fragments (received while their chunk was
           incomplete), chunks_repaired (rebuilt from repair fragments),
           surplus_repair_fragments (came after their chunk was whole), duplicate_fragments, spurious_losses, bad_chunks,
           handshakes (counts), resumed (bool), missing_bytes_at_start (bytes),
           cipher (the chunk cipher the exposer chose), output (path, or \"-\"
           for stdout), group_datagrams (DATA received from the multicast group),
           left_group (bool: the group brought nothing, the rest came by unicast),
           sources_dropped (count), sources (one object per source,
           SOURCE first: addr (HOST:PORT), bytes (content bytes it delivered),
           bad_chunks (count), dropped (why it was dropped, or null), answered
           (bool: it completed a handshake)),
           with --share: share_port, share_bytes_sent (bytes), share_handshakes,
           share_missing_sent (counts; null without --share)
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
  8    content mismatch (root differs from the pinned one, or a bad outboard; with
       --from: the last source left served chunks failing verification)
  9    the resume state file is corrupt
  12   the offered file is too large to track (memory, or over 2^32 chunks)
  13   the exposer withdrew the file (it changed or became unreadable while exposed)
  14   the output exists (its name came from the exposer: no -o, or -o DIR/):
       give -o PATH, or --force
  16   the exposer broke the protocol (e.g. chose a cipher that was not offered,
       or sent an inconsistent checkpoint of a live exposure)
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
    /// Another source of the same content: HOST:PORT or an rgtp:// URL of the same
    /// root (repeatable; SOURCE must be a URL with root=).
    #[arg(long, value_name = "SRC")]
    from: Vec<String>,
    /// Also pull from sources of the root found in the Mainline DHT (exposers started
    /// with --dht, sharers with --share --dht); needs a URL with root=. Nothing found
    /// there is trusted: every chunk is verified against the root. With --share, the
    /// sharer's port is announced there too.
    #[arg(long)]
    dht: bool,
    /// DHT nodes to join through (HOST:PORT; repeat the flag for more; implies --dht).
    /// Default: the public bootstrap nodes.
    #[arg(long, value_name = "HOST:PORT")]
    dht_bootstrap: Vec<String>,
    /// Share while pulling: serve the verified chunks held to other pullers of the
    /// same root (they give this host's sharing port as --from), on a UDP port of its
    /// own, printed on stderr ("sharing on HOST:PORT") and in --json (share_port).
    #[arg(long)]
    share: bool,
    /// The UDP port to share on (implies --share). Default: any free port.
    #[arg(long, value_name = "PORT")]
    share_port: Option<u16>,
    /// With --share: keep serving this many seconds after the pull finished (0: stop
    /// at once; Ctrl-C ends it sooner).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    seed: u64,
    /// No peer exchange: do not ask the exposer for the sharers of the root (nor
    /// tell it where this pull shares). By default, with a URL that gives root=,
    /// sharers the exposer names are pulled from too.
    #[arg(long)]
    no_peers: bool,
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
    /// hand-off costs more than the thread gains).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    verify_threads: Option<u8>,
    /// Chunk ciphers to offer: auto (AES-256-GCM where this CPU has AES instructions,
    /// and ChaCha20-Poly1305), aes-256-gcm, or chacha20-poly1305 (alone). The
    /// exposer picks; ChaCha20-Poly1305 is always offered.
    #[arg(long, default_value = "auto", value_name = "CIPHER")]
    cipher: rgtp_cli::CipherChoice,
    /// Repair fragments (forward error correction): auto (asks for repair in
    /// proportion to the loss it measures: none on a clean path), off (lost
    /// fragments are only asked for again), or K:R (R repair fragments for every K
    /// data fragments of a chunk, whatever the loss). Exposers that predate repair
    /// fragments are pulled from as with off.
    #[arg(long, default_value = "auto", value_name = "MODE", value_parser = parse_fec)]
    fec: rgtp::FecMode,
    /// Do not join the exposure's multicast group (by default a puller joins the
    /// group its exposer names, IPv4, and takes data there; with no multicast route
    /// it notices and pulls by unicast).
    #[arg(long)]
    no_multicast: bool,
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

/// How long a DHT lookup may take before the pull starts with what it found.
const DHT_LOOKUP: Duration = Duration::from_secs(5);

/// Sources of `root` announced in the DHT (at most 16). A DHT that cannot be joined
/// costs a warning: the pull goes on with the sources it was given.
fn dht_sources(root: &[u8; 32], bootstrap: &[String], quiet: bool) -> Vec<std::net::SocketAddr> {
    match rgtp::dht::Discovery::join(bootstrap) {
        Ok(d) => {
            let found = d.lookup(root, 16, DHT_LOOKUP);
            if !quiet {
                eprintln!("rgtp-pull: {} source(s) found in the DHT", found.len());
            }
            found
        }
        Err(e) => {
            eprintln!("rgtp-pull: warning: cannot join the DHT ({e}); pulling without it");
            Vec::new()
        }
    }
}

fn run(args: Args) -> Result<(), Failure> {
    if let Err(e) = rgtp_cli::check_max_datagram(args.max_datagram) {
        return fail(2, e);
    }
    if args.json && args.output.as_deref() == Some(std::path::Path::new("-")) {
        return fail(2, "--json and -o - both write to stdout; give one of them");
    }
    let Some(source) = args.source.as_deref() else {
        return fail(2, "SOURCE is required");
    };
    let src = PullSource::parse(source, args.name.as_deref()).map_err(failure)?;
    let mut opts = PullOptions {
        known_exposers: args.known_exposers.clone(),
        max_datagram: args.max_datagram.map(|m| m as u16),
        idle_timeout: Duration::from_secs(args.timeout.max(1)),
        connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
        offload_verify: args.verify_threads.map(|n| n > 0),
        ciphers: match args.cipher {
            rgtp_cli::CipherChoice::Auto => None,
            rgtp_cli::CipherChoice::Only(c) => Some(c.bit()),
        },
        fec: args.fec,
        multicast: !args.no_multicast,
        from: args.from.clone(),
        peers: !args.no_peers,
        live_stdout: args.output.as_deref() == Some(std::path::Path::new("-")),
        ..Default::default()
    };
    if args.share || args.share_port.is_some() {
        if args.output.as_deref() == Some(std::path::Path::new("-")) {
            return fail(2, "--share serves the output file; give -o PATH, not -o -");
        }
        opts.share = Some(rgtp::ShareOptions {
            port: args.share_port.unwrap_or(0),
            seed: Duration::from_secs(args.seed),
        });
    } else if args.seed > 0 {
        return fail(2, "--seed needs --share");
    }
    if args.dht || !args.dht_bootstrap.is_empty() {
        let Some(root) = src.root else {
            return fail(
                2,
                "--dht needs the content root: give an rgtp:// URL with root=",
            );
        };
        opts.found = dht_sources(&root, &args.dht_bootstrap, args.quiet || args.json);
    }
    if let Some(k) = &args.key {
        match parse_hex32(k) {
            Some(k) => opts.key = Some(k),
            None => return fail(2, "--key must be 64 hex digits"),
        }
    }

    // The exposure's own file name, for outputs named after it.
    let base_name = src.file_name();
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

    driver::install_stop_handler();
    let progress = !args.quiet && !args.json && std::io::stderr().is_terminal();
    let host_port = src.host_port();
    // A sharer with --dht announces its port under the root, once it shares.
    let announce_root = (args.dht || !args.dht_bootstrap.is_empty())
        .then_some(src.root)
        .flatten();
    let mut on = |u: PullUpdate| match u {
        PullUpdate::TrustedOnFirstUse { host_port, key } => {
            if progress {
                eprint!("\r\x1b[2K");
            }
            eprintln!(
                "rgtp-pull: trusting {host_port} on first use: key {}",
                keys::fingerprint(&key)
            );
        }
        // Where others pull from: printed even with --quiet and --json.
        PullUpdate::Sharing { addr } => {
            if progress {
                eprint!("\r\x1b[2K");
            }
            eprintln!(
                "rgtp-pull: sharing on {addr} (others: --from HOST:{})",
                addr.port()
            );
            if let Some(root) = announce_root {
                rgtp_cli::announce_in_background(
                    vec![root],
                    addr.port(),
                    args.dht_bootstrap.clone(),
                    |_, msg| eprintln!("rgtp-pull: {msg}"),
                );
            }
        }
        PullUpdate::Seeding { seconds } => {
            if progress {
                eprint!("\r\x1b[2K");
            }
            eprintln!("rgtp-pull: pulled; seeding for {seconds} s (Ctrl-C ends it)");
        }
        // The output does not hold the stream's start: said even with --quiet.
        PullUpdate::Joined { at } => {
            if progress {
                eprint!("\r\x1b[2K");
            }
            eprintln!(
                "rgtp-pull: the exposer keeps only the end of this stream: joined at byte {at}"
            );
        }
        PullUpdate::Damaged { chunks } => {
            eprintln!("rgtp-pull: {chunks} stored chunk(s) no longer match; pulling them again")
        }
        // Nothing known yet: no bar, no percentage.
        PullUpdate::Waiting { elapsed } if progress => eprint!(
            "\r\x1b[2Kwaiting for {host_port} ... {:.0} s",
            elapsed.as_secs_f64()
        ),
        PullUpdate::Progress {
            stored,
            total,
            missing_at_start,
            elapsed,
            srtt,
        } if progress => draw_progress(stored, total, missing_at_start, elapsed, srtt),
        _ => {}
    };
    let result = rgtp::pull_from(&src, &out_path, &opts, &driver::STOP, &mut on);
    if progress {
        eprint!("\r\x1b[2K");
    }
    let report = match result {
        Ok(r) => r,
        Err(TransferError::Cancelled(_)) => {
            return fail(
                130,
                if matches!(dest, Dest::Stdout(_)) {
                    "interrupted (-o - does not resume)"
                } else {
                    "interrupted; progress saved, run the same command to resume"
                },
            )
        }
        Err(e @ TransferError::Unreachable(_)) if !matches!(dest, Dest::Stdout(_)) => {
            let msg = e.to_string().replace(
                "(progress saved)",
                "(progress saved; run the same command to resume)",
            );
            return fail(5, msg);
        }
        Err(e) => return Err(failure(e)),
    };
    let shown_path = match &dest {
        // A live exposure went to stdout as it came.
        Dest::Stdout(_) if report.live => "-".to_string(),
        Dest::Stdout(_) => {
            copy_to_stdout(&out_path)?;
            "-".to_string()
        }
        _ => out_path.display().to_string(),
    };
    let (total, secs, missing_at_start) = (report.bytes, report.seconds, report.missing_at_start);
    let s = &report.stats;
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
            "repair_fragments": s.repair_fragments,
            "chunks_repaired": s.chunks_repaired,
            "surplus_repair_fragments": s.surplus_repair,
            "duplicate_fragments": s.duplicate_fragments,
            "spurious_losses": s.spurious_losses,
            "bad_chunks": s.bad_chunks,
            "handshakes": s.handshakes,
            "resumed": report.resumed,
            "missing_bytes_at_start": missing_at_start,
            "cipher": s.cipher.map(|c| c.name()),
            "output": shown_path,
            "group_datagrams": s.group_datagrams,
            "left_group": s.left_group,
            "sources_dropped": s.sources_dropped,
            "live": report.live,
            "live_start": report.live_start,
            "root": hex(&report.root),
            "share_port": report.share.as_ref().map(|sh| sh.addr.port()),
            "share_bytes_sent": report.share.as_ref().map(|sh| sh.bytes_out),
            "share_handshakes": report.share.as_ref().map(|sh| sh.handshakes),
            "share_missing_sent": report.share.as_ref().map(|sh| sh.missing_sent),
            "sources": report.sources.iter().map(|src| serde_json::json!({
                "addr": src.addr,
                "bytes": src.bytes,
                "bad_chunks": src.bad_chunks,
                "dropped": src.dropped,
                "answered": src.answered,
            })).collect::<Vec<_>>(),
        }));
    } else if !args.quiet {
        // A late joiner's output holds the stream from its window on only.
        let held = match report.live_start {
            0 => format!("{total} bytes"),
            at => format!(
                "{} bytes: the stream's bytes {at} to {total}",
                total.saturating_sub(at)
            ),
        };
        eprintln!(
            "rgtp-pull: {} -> {shown_path} ({held} in {secs:.2} s, {}/s)",
            src.name,
            human(missing_at_start as f64 / secs.max(1e-9))
        );
        if report.live {
            eprintln!(
                "rgtp-pull: {} ended (live); root {} (of all {total} bytes)",
                src.name,
                hex(&report.root)
            );
        }
        if report.sources.len() > 1 {
            for src in &report.sources {
                let dropped = match (&src.dropped, src.answered) {
                    (Some(d), _) => format!(" (dropped: {d})"),
                    (None, false) => " (no answer before the pull finished)".to_string(),
                    (None, true) => String::new(),
                };
                eprintln!("  from {}: {} bytes{dropped}", src.addr, src.bytes);
            }
        }
    }
    Ok(())
}

/// The exit code and message of a library error.
fn failure(e: TransferError) -> Failure {
    Failure(e.exit_code(), e.to_string())
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

fn draw_progress(stored: u64, total: u64, missing: u64, elapsed: Duration, srtt: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-3);
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
        srtt.as_secs_f64() * 1e3,
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

/// `--fec`: off, auto or K:R.
fn parse_fec(s: &str) -> Result<rgtp::FecMode, String> {
    rgtp::FecMode::parse(s).ok_or_else(|| "expected off, auto or K:R (K 1..=64, R 0..=64)".into())
}

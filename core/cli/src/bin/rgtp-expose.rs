//! rgtp-expose: publish files over RGTP.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use rgtp::driver;
use rgtp::keys;
use rgtp::url::hex;
use rgtp::{expose_until, ExposeOptions, LiveInput, TransferError};

const AFTER_HELP: &str = "\
Each FILE is published under its base name. For every file a pull URL is printed
(a line starting with rgtp://) that pins this exposer's key and the content root;
the root equals `b3sum FILE`.

Live exposures: `rgtp-expose - --name NAME` exposes stdin as it is read, until its
end; `rgtp-expose --follow FILE` exposes FILE as it grows, until Ctrl-C / SIGTERM or
--follow-idle. The URL printed has no root (there is none yet); pullers follow it
and write bytes in order as they are verified. With --window BYTES the exposer
keeps only the stream's last BYTES (disk use stays near BYTES); a puller that joins
later starts there, and a follower that falls behind it stops (exit 17). At the
end the exposer prints
`ended: BYTES` and the URL with the root (b3sum of every byte), and serves the
finished file until the next Ctrl-C / SIGTERM. Live exposures are pulled from
their exposer only (not from sharers, --from sources or the DHT); with --multicast,
followers on the LAN share the group as pullers of a file do.

Access log (stderr, info level, target rgtp::access; RUST_LOG=warn silences it):
  INFO rgtp::access: opened peer=ADDR:PORT name=\"NAME\" size=BYTES
      a puller's handshake (a pull that resumes after an outage or a restart, or
      whose session expired, handshakes again)
  INFO rgtp::access: served peer=ADDR bytes=BYTES seconds=SECS
      an address that was sent data has asked for nothing for 5 s (its pull ended
      or paused): the bytes sent to it since it was last quiet. Pullers sharing an
      address share the line. The exposer keeps no state per pull, so this is the
      closest it knows to a pull's end.
Set-up log (stderr, info level, target rgtp::setup):
  INFO rgtp::setup: FILE: hashed BYTES bytes in SECS s
  INFO rgtp::setup: FILE: root remembered (file unchanged since it was last hashed)
  INFO rgtp::setup: NAME: sealing N of M chunks ahead (the cache's disk bound); ...
  INFO rgtp::setup: NAME: sealed ahead (N of M chunks, CIPHER cipher) in SECS s
  INFO rgtp::setup: announced root HEX at port PORT in the DHT   (with --dht)
      The URL is printed as soon as the root is known; sealing runs in the
      background at idle priority, and chunks not sealed yet are sealed on demand.
Colours only when stderr is a terminal (and NO_COLOR is unset).

Exit codes:
  0   stopped cleanly (Ctrl-C / SIGTERM)
  2   bad arguments
  3   a FILE is missing or unreadable
  10  cannot bind the UDP port (in use, or a privileged port without permission)
  11  the key file is malformed or unreadable
  15  there is no key file and one cannot be created (e.g. the config directory
      cannot be created)
  1   any other error

Environment:
  RGTP_CONFIG_DIR   where the exposer key lives (default ~/.config/rgtp)
  RGTP_CACHE_DIR    where sealed copies and remembered roots live (see --cache-dir)
  RUST_LOG          log filter for stderr (default
                    warn,rgtp::access=info,rgtp::setup=info), e.g.
                    RUST_LOG=debug";

/// Publish files once; pullers fetch, verify and resume them over UDP.
#[derive(Parser)]
#[command(name = "rgtp-expose", version, after_help = AFTER_HELP)]
struct Args {
    /// Files to expose; `-` exposes stdin live, as it is read (with --name), until
    /// its end.
    #[arg(required_unless_present_any = ["completions", "man", "follow"])]
    files: Vec<PathBuf>,
    /// The name of a live exposure (`-`, or --follow; default for --follow: the
    /// file's name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Expose FILE live as it grows (a log, a WAL), from its start, until
    /// Ctrl-C / SIGTERM or --follow-idle. Then it is a finished file (root =
    /// `b3sum` of every byte), served until the next Ctrl-C / SIGTERM.
    #[arg(long, value_name = "FILE", conflicts_with = "files")]
    follow: Option<PathBuf>,
    /// With --follow: end the live exposure after SECS without growth.
    #[arg(long, value_name = "SECS", requires = "follow")]
    follow_idle: Option<f64>,
    /// Live exposures: keep only the last BYTES (e.g. 64M, 1G; at least 16K) of the
    /// stream, on disk and for late joiners, who start there. Default: every byte,
    /// in an unnamed file in the cache directory.
    #[arg(long, value_name = "BYTES", value_parser = rgtp_cli::parse_size)]
    window: Option<u64>,
    /// UDP port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 443)]
    port: u16,
    /// Address to bind; the default `::` also accepts IPv4.
    #[arg(long, default_value = "::")]
    bind: IpAddr,
    /// Static key file (created on first use). Default: $RGTP_CONFIG_DIR/exposer.key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Host name to put in the printed URLs. Default: the bind address if specific,
    /// else this machine's host name.
    #[arg(long)]
    advertise: Option<String>,
    /// Largest UDP payload to send, to any puller. Default: 1200, which crosses any
    /// Internet path, or 65000 to pullers on this host (loopback). Raise it on LANs
    /// (up to 65507) for speed.
    #[arg(long)]
    max_datagram: Option<usize>,
    /// Do not encrypt files ahead; encrypt chunks on demand into a memory cache only
    /// (no extra disk space, more CPU per pull). Same as --cache-max 0.
    #[arg(long)]
    no_seal_ahead: bool,
    /// Most disk for sealed copies, all files together (e.g. 4G, 512M; 0: none).
    /// Files are sealed in the background while already served; chunks past the
    /// bound are sealed on demand. Default: 4G, or a quarter of the free space in
    /// the cache directory when that is less.
    #[arg(long, value_name = "BYTES", value_parser = rgtp_cli::parse_size)]
    cache_max: Option<u64>,
    /// Where sealed copies (unnamed files, gone at exit) and remembered roots live.
    /// Default: $RGTP_CACHE_DIR, else $XDG_CACHE_HOME/rgtp, else ~/.cache/rgtp.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Hash every file even if its root is remembered from an earlier exposure of
    /// the same unchanged file (same device, inode, size, mtime and ctime).
    #[arg(long)]
    rehash: bool,
    /// Chunk cipher for pullers that offer it: auto (AES-256-GCM where this CPU has
    /// AES instructions, else ChaCha20-Poly1305), aes-256-gcm or chacha20-poly1305.
    /// Pullers that do not offer it get ChaCha20-Poly1305.
    #[arg(long, default_value = "auto", value_name = "CIPHER")]
    cipher: rgtp_cli::CipherChoice,
    /// Announce each file's root in the Mainline DHT (BitTorrent's), so that
    /// `rgtp-pull --dht` finds this exposer by the root alone; again every 15 minutes.
    /// The DHT learns this host's address and port, and a key derived from each root.
    #[arg(long)]
    dht: bool,
    /// DHT nodes to join through (HOST:PORT; repeat the flag for more; implies --dht).
    /// Default: the public bootstrap nodes.
    #[arg(long, value_name = "HOST:PORT")]
    dht_bootstrap: Vec<String>,
    /// Cap on the total send rate, in bits per second (e.g. 200M, 1G, 1.5G, or a plain
    /// number; K, M, G, T are powers of 1000), shared fairly among pullers: each
    /// puller gets an equal turn, and what one does not use goes to the others.
    /// Default: no cap.
    #[arg(long, value_name = "RATE", value_parser = rgtp_cli::parse_rate)]
    max_rate: Option<u64>,
    /// LAN multicast: send the data that pullers on this LAN ask for once to this
    /// IPv4 group (e.g. 239.255.42.1:5000) instead of to each. Pullers learn the group
    /// in the handshake and join it; requests stay unicast and authenticated, and the
    /// group carries sealed data only. Binds IPv4. Pair it with --max-rate (the
    /// group's rate: members that cannot take it leave for unicast).
    #[arg(long, value_name = "GROUP:PORT")]
    multicast: Option<std::net::SocketAddrV4>,
    /// The interface to send the group on: its IPv4 address or its name (default:
    /// the route to the group's).
    #[arg(long, value_name = "ADDR|IFACE", requires = "multicast")]
    multicast_if: Option<String>,
    /// Memory for cached ciphertext shared by all pullers, in MiB.
    #[arg(long, default_value_t = 64)]
    cache_mib: usize,
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell)
    /// and exit.
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<rgtp_cli::Shell>,
    /// Print the man page (roff) and exit.
    #[arg(long, exclusive = true)]
    man: bool,
}

/// The exposer's DHT announce results, in its set-up log.
fn log_announce(ok: bool, msg: &str) {
    if ok {
        tracing::info!(target: rgtp::exposer::SETUP_LOG, "{msg}");
    } else {
        tracing::warn!(target: rgtp::exposer::SETUP_LOG, "{msg}");
    }
}

/// `rgtp-expose -` and `rgtp-expose --follow FILE`.
fn expose_live(args: &Args, opts: &ExposeOptions, stdin: bool) -> ExitCode {
    if args.dht || !args.dht_bootstrap.is_empty() {
        return fail(2, "a live exposure has no root to announce in the DHT yet");
    }
    let (name, input, what) = if stdin {
        let Some(name) = args.name.clone() else {
            return fail(2, "`-` (stdin) needs --name NAME");
        };
        (
            name,
            LiveInput::Reader(Box::new(std::io::stdin())),
            "stdin".to_string(),
        )
    } else {
        let Some(path) = args.follow.clone() else {
            return fail(2, "nothing to expose");
        };
        let idle = match args.follow_idle {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return fail(2, "--follow-idle must be a positive number of seconds")
            }
            Some(s) => Some(std::time::Duration::from_secs_f64(s)),
            None => None,
        };
        let name = match (&args.name, path.file_name().and_then(|n| n.to_str())) {
            (Some(n), _) => n.clone(),
            (None, Some(n)) => n.to_string(),
            (None, None) => return fail(2, format!("{}: not a file name", path.display())),
        };
        let what = path.display().to_string();
        (name, LiveInput::Follow { path, idle }, what)
    };
    let r = rgtp::expose_live_until(
        &name,
        input,
        opts,
        &driver::STOP,
        |url, local, key| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{url}");
            let _ = writeln!(out, "  live: {what} (no root until it ends)");
            let _ = writeln!(out, "  key:  {}", keys::fingerprint(key));
            let _ = writeln!(out, "listening on {local}");
            let _ = out.flush();
        },
        |url, size| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "ended: {size} bytes");
            let _ = writeln!(out, "{url}");
            if let Some(root) = &url.root {
                let _ = writeln!(out, "  root: {}", hex(root));
            }
            let _ = out.flush();
            eprintln!("rgtp-expose: {name} ended ({size} bytes); serving it as a finished file until Ctrl-C / SIGTERM");
        },
    );
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.exit_code(), e),
    }
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("rgtp-expose: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    rgtp_cli::init_logging(&format!(
        "warn,{}=info,{}=info",
        rgtp::exposer::ACCESS_LOG,
        rgtp::exposer::SETUP_LOG
    ));
    let args = Args::parse();
    match rgtp_cli::generated_docs(Args::command(), args.completions, args.man) {
        Ok(false) => {}
        Ok(true) => return ExitCode::SUCCESS,
        Err(e) => return fail(1, format!("cannot write to stdout: {e}")),
    }
    if let Err(e) = rgtp_cli::check_max_datagram(args.max_datagram) {
        return fail(2, e);
    }
    let opts = ExposeOptions {
        bind: SocketAddr::new(args.bind, args.port),
        advertise: args.advertise.clone(),
        key_path: args.key.clone(),
        seal_ahead: !args.no_seal_ahead && args.cache_max != Some(0),
        cache_dir: args.cache_dir.clone(),
        cache_max: args.cache_max,
        cache_bytes: args.cache_mib << 20,
        max_datagram: args.max_datagram,
        cipher: match args.cipher {
            rgtp_cli::CipherChoice::Auto => None,
            rgtp_cli::CipherChoice::Only(c) => Some(c),
        },
        rehash: args.rehash,
        max_rate: args.max_rate,
        multicast: args.multicast,
        multicast_if: args.multicast_if.as_deref().map(|s| match s.parse() {
            Ok(a) => rgtp::udp::MulticastIf::Addr(a),
            Err(_) => rgtp::udp::MulticastIf::Name(s.to_string()),
        }),
        window: args.window,
    };
    // Before announcing: whoever reads "listening on" may signal us at once.
    driver::install_stop_handler();
    let stdin = args.files.len() == 1 && args.files[0].as_os_str() == "-";
    if args.files.iter().any(|f| f.as_os_str() == "-") && !stdin {
        return fail(2, "`-` (stdin) is exposed alone");
    }
    if args.name.is_some() && !stdin && args.follow.is_none() {
        return fail(2, "--name names a live exposure (`-` or --follow)");
    }
    if args.window.is_some() && !stdin && args.follow.is_none() {
        return fail(2, "--window bounds a live exposure (`-` or --follow)");
    }
    if stdin || args.follow.is_some() {
        return expose_live(&args, &opts, stdin);
    }
    let dht = args.dht || !args.dht_bootstrap.is_empty();
    let served = expose_until(&args.files, &opts, &driver::STOP, |files, local, key| {
        if dht {
            let roots: Vec<_> = files.iter().filter_map(|f| f.url.root).collect();
            rgtp_cli::announce_in_background(
                roots,
                local.port(),
                args.dht_bootstrap.clone(),
                log_announce,
            );
        }
        let mut out = std::io::stdout().lock();
        for f in files {
            let _ = writeln!(out, "{}", f.url);
            let _ = writeln!(out, "  file: {} ({} bytes)", f.path.display(), f.size);
            if let Some(root) = &f.url.root {
                let _ = writeln!(out, "  root: {}", hex(root));
            }
            let _ = writeln!(out, "  key:  {}", keys::fingerprint(key));
        }
        let _ = writeln!(out, "listening on {local}");
        let _ = out.flush();
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ TransferError::KeyDir(_)) => fail(
            e.exit_code(),
            e.to_string()
                .replace("give another key path", "give --key PATH"),
        ),
        Err(e) => fail(
            e.exit_code(),
            e.to_string()
                .replace("(or seal on demand)", "(or use --no-seal-ahead)")
                .replace("pick another port", "pick another with --port")
                .replace("(choose another port)", "(choose another with --port)"),
        ),
    }
}

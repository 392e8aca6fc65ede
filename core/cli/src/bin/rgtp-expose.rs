//! rgtp-expose: publish files over RGTP.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::keys::{self, StaticKey};
use rgtp::source::FileSource;
use rgtp::url::{hex, RgtpUrl};
use rgtp::{driver, merkle, udp, wire};

const AFTER_HELP: &str = "\
Each FILE is published under its base name. For every file a pull URL is printed
(a line starting with rgtp://) that pins this exposer's key and the content root;
the root equals `b3sum FILE`.

Access log (stderr, info level, target rgtp::access; RUST_LOG=warn silences it):
  INFO rgtp::access: opened peer=ADDR:PORT name=\"NAME\" size=BYTES
      a puller's handshake (a pull that resumes after an outage or a restart, or
      whose session expired, handshakes again)
  INFO rgtp::access: served peer=ADDR bytes=BYTES seconds=SECS
      an address that was sent data has asked for nothing for 5 s (its pull ended
      or paused): the bytes sent to it since it was last quiet. Pullers sharing an
      address share the line. The exposer keeps no state per pull, so this is the
      closest it knows to a pull's end.
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
  RUST_LOG          log filter for stderr (default warn,rgtp::access=info), e.g.
                    RUST_LOG=debug";

/// Publish files once; pullers fetch, verify and resume them over UDP.
#[derive(Parser)]
#[command(name = "rgtp-expose", version, after_help = AFTER_HELP)]
struct Args {
    /// Files to expose.
    #[arg(required_unless_present_any = ["completions", "man"])]
    files: Vec<PathBuf>,
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
    /// Do not encrypt files ahead of serving; encrypt chunks on demand into a memory
    /// cache instead (no extra disk space, more CPU per pull).
    #[arg(long)]
    no_seal_ahead: bool,
    /// Where sealed-ahead copies live while serving (unnamed files, gone at exit).
    /// Default: $RGTP_CACHE_DIR, else $XDG_CACHE_HOME/rgtp, else ~/.cache/rgtp.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
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

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("rgtp-expose: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    rgtp_cli::init_logging(&format!("warn,{}=info", rgtp::exposer::ACCESS_LOG));
    let args = Args::parse();
    match rgtp_cli::generated_docs(Args::command(), args.completions, args.man) {
        Ok(false) => {}
        Ok(true) => return ExitCode::SUCCESS,
        Err(e) => return fail(1, format!("cannot write to stdout: {e}")),
    }
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
    let key_path = args.key.clone().unwrap_or_else(keys::default_key_path);
    let key = match StaticKey::load_or_create(&key_path) {
        Ok(k) => k,
        Err(e @ keys::KeyError::Create(..)) => {
            return fail(
                15,
                format!("{e} (for the key; give --key PATH or RGTP_CONFIG_DIR)"),
            )
        }
        Err(e) => return fail(11, e),
    };

    // Hash every file before binding, so a printed URL is always servable.
    let mut files = Vec::new();
    let mut names = std::collections::HashSet::new();
    for path in &args.files {
        let name = match path.file_name().and_then(|n| n.to_str()) {
            Some(n) => n.to_string(),
            None => return fail(3, format!("{}: not a file name", path.display())),
        };
        if !names.insert(name.clone()) {
            return fail(
                2,
                format!("two files share the name {name}; expose them from separate processes"),
            );
        }
        let src = match FileSource::open(path) {
            Ok(s) => s,
            Err(e) => return fail(3, format!("{}: {e}", path.display())),
        };
        let cvs = match merkle::cvs_of_file(src.file(), rgtp::source::ChunkSource::size(&src)) {
            Ok(c) => c,
            Err(e) => return fail(3, format!("{}: {e}", path.display())),
        };
        files.push((name, path.clone(), src, cvs));
    }

    let bind = SocketAddr::new(args.bind, args.port);
    let sock = match udp::bind(bind) {
        Ok(s) => s,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (ports below 1024 need privileges: pick another with --port)"
            } else {
                " (choose another with --port)"
            };
            return fail(10, format!("cannot bind UDP {bind}: {e}{hint}"));
        }
    };
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(e) => return fail(1, e),
    };
    let host = args.advertise.clone().unwrap_or_else(|| {
        if args.bind.is_unspecified() {
            hostname()
        } else {
            args.bind.to_string()
        }
    });

    let mut config = ExposerConfig {
        cache_bytes: args.cache_mib << 20,
        ..Default::default()
    };
    if let Some(m) = args.max_datagram {
        // Given explicitly, it caps every path, loopback included.
        config.max_datagram = m;
        config.loopback_max_datagram = m;
    }
    let mut ex = Exposer::new(config, key.private, std::time::Instant::now());
    let mut out = std::io::stdout().lock();
    for (name, path, src, cvs) in files {
        let size = rgtp::source::ChunkSource::size(&src);
        let info = ex.add_exposure(&name, Box::new(src), cvs);
        if !args.no_seal_ahead && size > 0 {
            let dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
            if let Err(e) = ex.seal_ahead(&info.id, &dir, threads()) {
                return fail(
                    3,
                    format!(
                        "cannot seal {} ahead into {}: {e} (or use --no-seal-ahead)",
                        path.display(),
                        dir.display()
                    ),
                );
            }
        }
        let url = RgtpUrl {
            host: host.clone(),
            port: local.port(),
            name,
            key: Some(key.public),
            root: Some(info.root),
        };
        let _ = writeln!(out, "{url}");
        let _ = writeln!(out, "  file: {} ({size} bytes)", path.display());
        let _ = writeln!(out, "  root: {}", hex(&info.root));
        let _ = writeln!(out, "  key:  {}", keys::fingerprint(&key.public));
    }
    // Before announcing: whoever reads "listening on" may signal us at once.
    driver::install_stop_handler();
    let _ = writeln!(out, "listening on {local}");
    let _ = out.flush();
    drop(out);

    let served = driver::serve(&sock, &mut ex, &driver::STOP);
    // Whoever was being served when we stopped gets their access-log line now.
    ex.log_quiet_sources(std::time::Instant::now(), true);
    if let Err(e) = served {
        return fail(1, format!("socket error: {e}"));
    }
    tracing::info!("stopping: {:?}", ex.stats);
    ExitCode::SUCCESS
}

fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RGTP_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return d.join("rgtp");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("rgtp"),
        None => std::env::temp_dir().join("rgtp-cache"),
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

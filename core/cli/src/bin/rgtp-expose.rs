//! rgtp-expose: publish files over RGTP.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use rgtp::driver;
use rgtp::keys;
use rgtp::url::hex;
use rgtp::{expose_until, ExposeOptions, TransferError};

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
    if let Err(e) = rgtp_cli::check_max_datagram(args.max_datagram) {
        return fail(2, e);
    }
    let opts = ExposeOptions {
        bind: SocketAddr::new(args.bind, args.port),
        advertise: args.advertise.clone(),
        key_path: args.key.clone(),
        seal_ahead: !args.no_seal_ahead,
        cache_dir: args.cache_dir.clone(),
        cache_bytes: args.cache_mib << 20,
        max_datagram: args.max_datagram,
    };
    // Before announcing: whoever reads "listening on" may signal us at once.
    driver::install_stop_handler();
    let served = expose_until(&args.files, &opts, &driver::STOP, |files, local, key| {
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

//! What `rgtp-expose` and `rgtp-pull` share: logging set-up, option checks, and the
//! shell completions and man page generated from their clap definitions.

use std::io::{IsTerminal, Write};

pub use clap_complete::Shell;

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`), with colours only
/// when stderr is a terminal and `NO_COLOR` is unset: a log file or journal gets
/// plain text.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

/// `--completions SHELL` and `--man`: writes the completion script or the man page
/// (roff) for `cmd` to stdout. Returns false if neither was asked for. A reader that
/// stops early (`| head`) is not an error.
pub fn generated_docs(
    mut cmd: clap::Command,
    completions: Option<Shell>,
    man: bool,
) -> std::io::Result<bool> {
    let mut text = Vec::new();
    if let Some(shell) = completions {
        let name = cmd.get_name().to_string();
        clap_complete::generate(shell, &mut cmd, name, &mut text);
    } else if man {
        clap_mangen::Man::new(cmd).render(&mut text)?;
    } else {
        return Ok(false);
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(&text).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(true),
    }
}

/// `--max-datagram`'s range, as one line for the user (clap's own range error spans
/// several).
pub fn check_max_datagram(m: Option<usize>) -> Result<(), String> {
    use rgtp::wire::{MAX_MAX_DATAGRAM, MIN_MAX_DATAGRAM};
    match m {
        Some(m) if !(MIN_MAX_DATAGRAM..=MAX_MAX_DATAGRAM).contains(&m) => Err(format!(
            "--max-datagram must be between {MIN_MAX_DATAGRAM} and {MAX_MAX_DATAGRAM}"
        )),
        _ => Ok(()),
    }
}

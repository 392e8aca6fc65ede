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

/// `--cipher`: `auto`, or one of [`rgtp::Cipher`]'s names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherChoice {
    /// What this host does best (AES-256-GCM with AES instructions).
    Auto,
    /// This cipher only (and ChaCha20-Poly1305, which every peer implements, for a
    /// puller's offer).
    Only(rgtp::Cipher),
}

impl std::str::FromStr for CipherChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(CipherChoice::Auto);
        }
        rgtp::Cipher::parse(s)
            .map(CipherChoice::Only)
            .ok_or_else(|| "expected auto, aes-256-gcm or chacha20-poly1305".to_string())
    }
}

/// A byte count with an optional binary suffix: `4096`, `512K`, `64M`, `4G`, `1T`
/// (`KiB`/`MiB`/... and lower case work too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4G, 512M, 0)"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `--max-rate`: bits per second, a plain number or with K, M, G or T (powers of
/// 1000, as link speeds are given), e.g. `200M`, `1G`, `1.5G`, `250000`. An optional
/// `bit/s` or `bps` after the unit is accepted; anything else, zero, or more than
/// 2^64 - 1 is an error.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a rate in bits/s (e.g. 200M, 1G, 1.5G, 250000)");
    let t = s.trim();
    let t = t
        .strip_suffix("bit/s")
        .or_else(|| t.strip_suffix("bps"))
        .unwrap_or(t);
    let end = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let scale: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "m" | "M" => 1_000_000,
        "g" | "G" => 1_000_000_000,
        "t" | "T" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() || (num.contains('.') && frac.is_empty()) || frac.contains('.') {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let mut rate = whole
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if !frac.is_empty() {
        // Decimals only as far as the unit has digits for (1.5K = 1500).
        if frac.len() as u32 > scale.ilog10() {
            return Err(format!("{s:?}: too many decimals for its unit"));
        }
        let f: u64 = frac.parse().map_err(|_| bad())?;
        let f = f * 10u64.pow(scale.ilog10() - frac.len() as u32);
        rate = rate
            .checked_add(f)
            .ok_or_else(|| format!("{s:?} is too large"))?;
    }
    if rate == 0 {
        return Err(format!("{s:?}: the rate must be more than 0"));
    }
    Ok(rate)
}

/// Announces `roots` at `port` in the DHT now and every [`rgtp::dht::ANNOUNCE_EVERY`]
/// until the process stops (`rgtp::driver::STOP`), on a thread of its own; `report`
/// hears each result (true: announced). A DHT that cannot be reached costs a report,
/// not the service: whoever has the address still reaches it.
pub fn announce_in_background(
    roots: Vec<[u8; 32]>,
    port: u16,
    bootstrap: Vec<String>,
    report: fn(bool, &str),
) {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let run = move || {
        let dht = match rgtp::dht::Discovery::join(&bootstrap) {
            Ok(d) => d,
            Err(e) => return report(false, &format!("cannot join the DHT: {e}")),
        };
        loop {
            for root in &roots {
                let root_hex = rgtp::url::hex(root);
                match dht.announce(root, port) {
                    Ok(()) => report(
                        true,
                        &format!("announced root {root_hex} at port {port} in the DHT"),
                    ),
                    Err(e) => report(
                        false,
                        &format!("cannot announce root {root_hex} in the DHT: {e}"),
                    ),
                }
            }
            let next = Instant::now() + rgtp::dht::ANNOUNCE_EVERY;
            while Instant::now() < next {
                if rgtp::driver::STOP.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    if let Err(e) = std::thread::Builder::new().name("dht".into()).spawn(run) {
        report(false, &format!("cannot start the DHT thread: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_strictly_in_bits_per_second() {
        assert_eq!(parse_rate("200M"), Ok(200_000_000));
        assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
        assert_eq!(parse_rate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_rate("250000"), Ok(250_000));
        assert_eq!(parse_rate("64k"), Ok(64_000));
        assert_eq!(parse_rate("100Mbit/s"), Ok(100_000_000));
        assert_eq!(parse_rate("10Mbps"), Ok(10_000_000));
        for bad in [
            "",
            "0",
            "0M",
            "M",
            "-5M",
            "1.5",
            "1.M",
            ".5G",
            "1..5G",
            "2X",
            "1 G",
            "1MB",
            "1.0001K",
            "99999999999T",
            "200M ",
            "1e9",
        ] {
            let trimmed_ok = bad == "200M ";
            assert_eq!(parse_rate(bad).is_err(), !trimmed_ok, "{bad:?}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn cipher_choices_parse() {
        assert_eq!("auto".parse(), Ok(CipherChoice::Auto));
        assert_eq!(
            "aes-256-gcm".parse(),
            Ok(CipherChoice::Only(rgtp::Cipher::Aes256Gcm))
        );
        assert!("aes".parse::<CipherChoice>().is_err());
    }
}

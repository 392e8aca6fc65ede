//! The shim's configuration, read once from the environment.
//!
//! Parsing is pure (a function of the variables' values) so it is unit-tested; a bad
//! value is reported in one line and the caller decides what that means (run
//! unintercepted, or fail socket calls in strict mode).

use std::time::Duration;

/// A set of TCP ports, from a list of numbers and ranges: "80,443,8000-8100".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn parse(s: &str) -> Result<PortSet, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u16 = a
                .parse()
                .map_err(|_| format!("RGTP_PORTS: {part:?} is not a port or range"))?;
            let hi: u16 = b
                .parse()
                .map_err(|_| format!("RGTP_PORTS: {part:?} is not a port or range"))?;
            if lo == 0 || lo > hi {
                return Err(format!(
                    "RGTP_PORTS: {part:?} is not a valid range (1-65535, low-high)"
                ));
            }
            ranges.push((lo, hi));
        }
        if ranges.is_empty() {
            return Err(
                "RGTP_PORTS is empty: name the TCP ports to carry over RGTP, e.g. 8080,9000-9010"
                    .into(),
            );
        }
        Ok(PortSet { ranges })
    }

    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| port >= lo && port <= hi)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub ports: PortSet,
    /// Fall back to plain TCP when the peer does not speak RGTP (client), and keep
    /// serving plain TCP beside RGTP (server).
    pub fallback: bool,
    /// How long close and exit wait for the peer to have every written byte.
    pub linger: Duration,
    /// How long a client waits for an RGTP answer before falling back (or failing).
    pub connect_timeout: Duration,
    pub log_level: LogLevel,
    pub log_file: Option<String>,
    /// Pinned server keys: "host:port=HEX64" entries, separated by commas.
    pub pins: Vec<(String, [u8; 32])>,
}

/// Reads a variable the way the shim does: `get` is `std::env::var` in production.
pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Option<Config>, String> {
    let Some(ports) = get("RGTP_PORTS") else {
        // Not configured: intercept nothing.
        return Ok(None);
    };
    let ports = PortSet::parse(&ports)?;
    let fallback = match get("RGTP_FALLBACK").as_deref().map(str::trim) {
        None | Some("") | Some("1") => true,
        Some("0") => false,
        Some(v) => return Err(format!("RGTP_FALLBACK must be 0 or 1, not {v:?}")),
    };
    let ms = |name: &str, default: u64| -> Result<Duration, String> {
        match get(name) {
            None => Ok(Duration::from_millis(default)),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{name} must be a whole number of milliseconds, not {v:?}")),
        }
    };
    let linger = ms("RGTP_LINGER_MS", 10_000)?;
    let connect_timeout = ms(
        "RGTP_CONNECT_TIMEOUT_MS",
        if fallback { 1_000 } else { 10_000 },
    )?;
    let log_level = match get("RGTP_LOG")
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
    {
        None => LogLevel::Off,
        Some(s) => match s.as_str() {
            "" | "off" | "0" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" | "trace" => LogLevel::Debug,
            _ => {
                return Err(format!(
                    "RGTP_LOG must be off, error, warn, info or debug, not {s:?}"
                ))
            }
        },
    };
    let log_file = get("RGTP_LOG_FILE").filter(|s| !s.is_empty());
    let mut pins = Vec::new();
    if let Some(p) = get("RGTP_PINS") {
        for entry in p.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (hp, key) = entry
                .rsplit_once('=')
                .ok_or_else(|| format!("RGTP_PINS: {entry:?} is not HOST:PORT=KEY"))?;
            let key = rgtp::url::parse_hex32(key)
                .ok_or_else(|| format!("RGTP_PINS: key of {hp} is not 64 hex digits"))?;
            pins.push((hp.to_string(), key));
        }
    }
    Ok(Some(Config {
        ports,
        fallback,
        linger,
        connect_timeout,
        log_level,
        log_file,
        pins,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn ports_lists_and_ranges() {
        let p = PortSet::parse("80, 8000-8002,443").unwrap();
        for port in [80, 443, 8000, 8001, 8002] {
            assert!(p.contains(port), "{port}");
        }
        for port in [79, 81, 7999, 8003, 442] {
            assert!(!p.contains(port), "{port}");
        }
        for bad in ["", "x", "0", "9-3", "70000", "1-", "5-x"] {
            assert!(PortSet::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_errors() {
        assert!(parse(env(&[])).unwrap().is_none());
        let c = parse(env(&[("RGTP_PORTS", "8080")])).unwrap().unwrap();
        assert!(c.fallback);
        assert_eq!(c.log_level, LogLevel::Off);
        assert_eq!(c.linger, Duration::from_secs(10));
        let c = parse(env(&[
            ("RGTP_PORTS", "8080"),
            ("RGTP_FALLBACK", "0"),
            ("RGTP_LINGER_MS", "250"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!c.fallback);
        assert_eq!(c.linger, Duration::from_millis(250));
        for (k, v) in [
            ("RGTP_FALLBACK", "yes"),
            ("RGTP_LINGER_MS", "-1"),
            ("RGTP_LOG", "loud"),
            ("RGTP_PINS", "h:1=zz"),
        ] {
            let e = parse(env(&[("RGTP_PORTS", "1"), (k, v)])).unwrap_err();
            assert!(e.contains(k), "{e}");
            assert!(!e.contains('\n'));
        }
        let key = "ab".repeat(32);
        let c = parse(env(&[
            ("RGTP_PORTS", "1"),
            ("RGTP_PINS", &format!("h:1={key}")),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.pins, vec![("h:1".to_string(), [0xab; 32])]);
    }
}

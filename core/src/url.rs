//! Pull URLs: `rgtp://HOST[:PORT]/NAME[?key=HEX64&root=HEX64]`.
//!
//! - `HOST` is a DNS name, an IPv4 address or a bracketed IPv6 address (`[::1]`). DNS
//!   names are lowercased and IPv6 addresses put in their compressed form, so equal
//!   endpoints print equally (the known-exposers file is keyed by that text).
//! - `PORT` defaults to [`DEFAULT_PORT`]; 0 is rejected (nothing can listen there).
//! - `NAME` is the exposure name, percent-encoded: every byte of its UTF-8 form except
//!   the unreserved ASCII characters `A-Z a-z 0-9 - . _ ~` is written `%XX`. Raw reserved
//!   characters are rejected, so a URL has exactly one reading.
//! - `key` pins the exposer's static public key, `root` the content's BLAKE3 root; both
//!   are 64 hex digits (either case on input, lowercase on output). Parameters may come
//!   in any order; unknown or repeated ones are rejected.
//!
//! `Display` prints the canonical form: lowercase scheme and hex, uppercase `%XX`
//! escapes (RFC 3986's recommendation), the port always present, `key` before `root`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::merkle::Hash;

/// Port used when a URL or `HOST` argument gives none.
pub const DEFAULT_PORT: u16 = 443;

const SCHEME: &str = "rgtp://";

/// A parsed pull URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RgtpUrl {
    /// DNS name (lowercase), IPv4 address, or IPv6 address without brackets.
    pub host: String,
    /// UDP port (443 when the URL names none).
    pub port: u16,
    /// The exposure name, decoded.
    pub name: String,
    /// Expected static public key of the exposer.
    pub key: Option<[u8; 32]>,
    /// Expected BLAKE3 root of the content.
    pub root: Option<Hash>,
}

/// Why a URL or host argument was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// Does not start with `rgtp://`.
    Scheme,
    /// No host between `rgtp://` and the path.
    EmptyHost,
    /// The host is not a valid DNS name, IPv4 or bracketed IPv6 address.
    Host(String),
    /// The port is not a number in 1..=65535.
    Port(String),
    /// No `/NAME` after the host, or an empty name.
    MissingName,
    /// The name has a raw reserved character, a bad `%` escape, or is not UTF-8.
    Name(String),
    /// A query parameter is not `key=value`, or its value is malformed.
    Query(String),
    /// A query parameter other than `key` and `root`.
    UnknownParam(String),
    /// The same query parameter appears twice.
    DuplicateParam(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme => write!(f, "URL must start with {SCHEME}"),
            UrlError::EmptyHost => write!(f, "URL has no host"),
            UrlError::Host(why) => write!(f, "invalid host: {why}"),
            UrlError::Port(why) => write!(f, "invalid port: {why}"),
            UrlError::MissingName => write!(
                f,
                "URL has no exposure name (expected /NAME after the host)"
            ),
            UrlError::Name(why) => write!(f, "invalid exposure name: {why}"),
            UrlError::Query(why) => write!(f, "invalid query: {why}"),
            UrlError::UnknownParam(p) => {
                write!(
                    f,
                    "unknown query parameter {p:?} (only key and root are allowed)"
                )
            }
            UrlError::DuplicateParam(p) => write!(f, "query parameter {p:?} given twice"),
        }
    }
}

impl std::error::Error for UrlError {}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parse exactly 64 hex digits (either case) into 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encode every byte of `s` except unreserved ASCII.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 0xf)] as char);
        }
    }
    out
}

/// Decode a percent-encoded name; only unreserved characters and `%XX` are allowed.
pub fn percent_decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let escape = bytes
                .get(i + 1..i + 3)
                .and_then(|p| Some((hex_digit(p[0])? << 4) | hex_digit(p[1])?));
            match escape {
                Some(v) => out.push(v),
                None => return Err(UrlError::Name(format!("bad % escape at byte {i}"))),
            }
            i += 3;
        } else if is_unreserved(b) {
            out.push(b);
            i += 1;
        } else {
            // Report the whole character, which may be multi-byte.
            let c = s[i..].chars().next().unwrap_or('?');
            return Err(UrlError::Name(format!(
                "character {c:?} must be percent-encoded"
            )));
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Name("decodes to invalid UTF-8".into()))
}

/// Validate and canonicalize a host without brackets: IPv6 (compressed form), IPv4,
/// or a DNS name (lowercased).
fn canonical_host(host: &str) -> Result<String, UrlError> {
    if host.is_empty() {
        return Err(UrlError::EmptyHost);
    }
    if host.contains(':') {
        return host
            .parse::<Ipv6Addr>()
            .map(|a| a.to_string())
            .map_err(|_| UrlError::Host(format!("{host:?} is not an IPv6 address")));
    }
    if host.len() > 253 {
        return Err(UrlError::Host("name longer than 253 characters".into()));
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(UrlError::Host(format!("{host:?} is not a valid host name")));
        }
    }
    // All-numeric dotted names would be read as IPv4 by resolvers: hold them to it.
    if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return host
            .parse::<Ipv4Addr>()
            .map(|a| a.to_string())
            .map_err(|_| UrlError::Host(format!("{host:?} is not an IPv4 address")));
    }
    Ok(host.to_ascii_lowercase())
}

fn parse_port(s: &str) -> Result<u16, UrlError> {
    if s.is_empty() {
        return Err(UrlError::Port("empty after ':'".into()));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlError::Port(format!("{s:?} is not a number")));
    }
    match s.parse::<u16>() {
        Ok(0) => Err(UrlError::Port("0 is not a usable port".into())),
        Ok(p) => Ok(p),
        Err(_) => Err(UrlError::Port(format!("{s} is larger than 65535"))),
    }
}

/// `host:port`, with brackets around an IPv6 host: the inverse of [`parse_host_port`].
pub fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parse a `HOST[:PORT]` argument: `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare
/// IPv6 address such as `::1` (which cannot carry a port). Returns the canonical host
/// (IPv6 without brackets) and the port, `default_port` when none is given.
pub fn parse_host_port(s: &str, default_port: u16) -> Result<(String, u16), UrlError> {
    if s.is_empty() {
        return Err(UrlError::EmptyHost);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| UrlError::Host("missing ']' after IPv6 address".into()))?;
        if !inner.contains(':') {
            return Err(UrlError::Host(format!("{inner:?} in brackets is not IPv6")));
        }
        let host = canonical_host(inner)?;
        let port = match after {
            "" => default_port,
            _ => match after.strip_prefix(':') {
                Some(p) => parse_port(p)?,
                None => {
                    return Err(UrlError::Host(format!(
                        "unexpected {after:?} after IPv6 address"
                    )))
                }
            },
        };
        return Ok((host, port));
    }
    match s.matches(':').count() {
        0 => Ok((canonical_host(s)?, default_port)),
        1 => {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            Ok((canonical_host(h)?, parse_port(p)?))
        }
        // Several colons without brackets: only a whole IPv6 address makes sense.
        _ => s
            .parse::<Ipv6Addr>()
            .map(|a| (a.to_string(), default_port))
            .map_err(|_| {
                UrlError::Host(format!(
                    "{s:?} is not an IPv6 address (use [ADDR]:PORT to give a port)"
                ))
            }),
    }
}

impl RgtpUrl {
    /// `host:port` in canonical form (IPv6 in brackets), e.g. for the known-exposers file.
    pub fn host_port(&self) -> String {
        format_host_port(&self.host, self.port)
    }
}

impl FromStr for RgtpUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = match s.get(..SCHEME.len()) {
            Some(p) if p.eq_ignore_ascii_case(SCHEME) => &s[SCHEME.len()..],
            _ => return Err(UrlError::Scheme),
        };
        let (authority, path_query) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => {
                // Distinguish "no host" from "host but no name" for the message.
                if rest.is_empty() || rest.starts_with('?') {
                    return Err(UrlError::EmptyHost);
                }
                return Err(UrlError::MissingName);
            }
        };
        if authority.is_empty() {
            return Err(UrlError::EmptyHost);
        }
        if authority.contains(['@', '?', '#']) {
            return Err(UrlError::Host(format!("{authority:?} is not HOST[:PORT]")));
        }
        // A bare IPv6 address is ambiguous with a port inside a URL: require brackets.
        if !authority.starts_with('[') && authority.matches(':').count() > 1 {
            return Err(UrlError::Host(
                "IPv6 addresses must be in brackets, e.g. rgtp://[::1]:443/NAME".into(),
            ));
        }
        let (host, port) = parse_host_port(authority, DEFAULT_PORT)?;

        let path_query = &path_query[1..];
        let (raw_name, query) = match path_query.split_once('?') {
            Some((n, q)) => (n, Some(q)),
            None => (path_query, None),
        };
        if raw_name.is_empty() {
            return Err(UrlError::MissingName);
        }
        let name = percent_decode(raw_name)?;

        let mut key = None;
        let mut root = None;
        if let Some(query) = query {
            for param in query.split('&') {
                let (k, v) = param.split_once('=').ok_or_else(|| {
                    UrlError::Query(format!("parameter {param:?} is not NAME=VALUE"))
                })?;
                let slot = match k {
                    "key" => &mut key,
                    "root" => &mut root,
                    _ => return Err(UrlError::UnknownParam(k.to_string())),
                };
                if slot.is_some() {
                    return Err(UrlError::DuplicateParam(k.to_string()));
                }
                *slot = Some(parse_hex32(v).ok_or_else(|| {
                    UrlError::Query(format!("{k} must be 64 hex digits, got {v:?}"))
                })?);
            }
        }
        Ok(RgtpUrl {
            host,
            port,
            name,
            key,
            root,
        })
    }
}

impl fmt::Display for RgtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/{}",
            format_host_port(&self.host, self.port),
            percent_encode(&self.name)
        )?;
        let mut sep = '?';
        if let Some(key) = &self.key {
            write!(f, "{sep}key={}", hex(key))?;
            sep = '&';
        }
        if let Some(root) = &self.root {
            write!(f, "{sep}root={}", hex(root))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: [u8; 32] = [0xab; 32];
    const R: [u8; 32] = [0x01; 32];

    fn url(s: &str) -> Result<RgtpUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(parse_hex32(&hex(&bytes)), Some(bytes));
        assert_eq!(parse_hex32(&hex(&bytes).to_uppercase()), Some(bytes));
        assert_eq!(parse_hex32(&"a".repeat(63)), None);
        assert_eq!(parse_hex32(&"a".repeat(65)), None);
        assert_eq!(parse_hex32(&format!("{}g", "a".repeat(63))), None);
        assert_eq!(parse_hex32(&format!("+{}", "a".repeat(63))), None);
        // 64 bytes but non-ASCII must not panic on a char boundary.
        assert_eq!(parse_hex32(&format!("é{}", "a".repeat(62))), None);
    }

    #[test]
    fn minimal_url_gets_default_port() {
        let u = url("rgtp://example.com/file.iso").expect("valid");
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, DEFAULT_PORT);
        assert_eq!(u.name, "file.iso");
        assert_eq!(u.key, None);
        assert_eq!(u.root, None);
        assert_eq!(u.to_string(), "rgtp://example.com:443/file.iso");
        assert_eq!(u.host_port(), "example.com:443");
    }

    #[test]
    fn full_url_round_trips_in_either_param_order() {
        let a = url(&format!(
            "rgtp://Host.Example:9000/data?root={}&key={}",
            hex(&R),
            hex(&K).to_uppercase()
        ))
        .expect("valid");
        assert_eq!(a.host, "host.example");
        assert_eq!(a.port, 9000);
        assert_eq!(a.key, Some(K));
        assert_eq!(a.root, Some(R));
        let canonical = format!(
            "rgtp://host.example:9000/data?key={}&root={}",
            hex(&K),
            hex(&R)
        );
        assert_eq!(a.to_string(), canonical);
        assert_eq!(url(&canonical), Ok(a));
        let only_root = url(&format!("rgtp://h/x?root={}", hex(&R))).expect("valid");
        assert_eq!(
            only_root.to_string(),
            format!("rgtp://h:443/x?root={}", hex(&R))
        );
    }

    #[test]
    fn ipv4_and_ipv6_hosts() {
        let under = url("rgtp://my_host.lan/a").expect("underscores are tolerated");
        assert_eq!(under.host, "my_host.lan");
        let v4 = url("rgtp://192.0.2.7:4433/a").expect("valid");
        assert_eq!((v4.host.as_str(), v4.port), ("192.0.2.7", 4433));
        let v6 = url("rgtp://[2001:DB8:0:0::1]:4433/a").expect("valid");
        assert_eq!(v6.host, "2001:db8::1");
        assert_eq!(v6.to_string(), "rgtp://[2001:db8::1]:4433/a");
        assert_eq!(v6.host_port(), "[2001:db8::1]:4433");
        let v6_default = url("rgtp://[::1]/a").expect("valid");
        assert_eq!((v6_default.host.as_str(), v6_default.port), ("::1", 443));
        assert_eq!(url(&v6_default.to_string()), Ok(v6_default));
    }

    #[test]
    fn names_are_percent_encoded() {
        let u = RgtpUrl {
            host: "h".into(),
            port: 1,
            name: "my dir/ünï 100%.txt~".into(),
            key: None,
            root: None,
        };
        let s = u.to_string();
        assert_eq!(s, "rgtp://h:1/my%20dir%2F%C3%BCn%C3%AF%20100%25.txt~");
        assert_eq!(url(&s), Ok(u));
        // Lowercase escapes are accepted too.
        assert_eq!(url("rgtp://h/a%2fb").map(|u| u.name), Ok("a/b".into()));
        assert_eq!(percent_encode("AZaz09-._~"), "AZaz09-._~");
    }

    #[test]
    fn scheme_is_case_insensitive_but_required() {
        assert!(url("RGTP://h/x").is_ok());
        assert_eq!(url("http://h/x"), Err(UrlError::Scheme));
        assert_eq!(url("h/x"), Err(UrlError::Scheme));
        assert_eq!(url(""), Err(UrlError::Scheme));
        assert_eq!(url("rgtp:/h/x"), Err(UrlError::Scheme));
    }

    #[test]
    fn rejections() {
        use UrlError::*;
        type Check = fn(&UrlError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("rgtp://", |e| *e == EmptyHost),
            ("rgtp:///x", |e| *e == EmptyHost),
            ("rgtp://h", |e| *e == MissingName),
            ("rgtp://h/", |e| *e == MissingName),
            ("rgtp://h/?key=00", |e| *e == MissingName),
            ("rgtp://h:/x", |e| matches!(e, Port(_))),
            ("rgtp://h:0/x", |e| matches!(e, Port(_))),
            ("rgtp://h:65536/x", |e| matches!(e, Port(_))),
            ("rgtp://h:+80/x", |e| matches!(e, Port(_))),
            ("rgtp://h:8o/x", |e| matches!(e, Port(_))),
            ("rgtp://::1/x", |e| matches!(e, Host(_))),
            ("rgtp://[::1/x", |e| matches!(e, Host(_))),
            ("rgtp://[::1]x/x", |e| matches!(e, Host(_))),
            ("rgtp://[1.2.3.4]/x", |e| matches!(e, Host(_))),
            ("rgtp://[fe80::1%eth0]/x", |e| matches!(e, Host(_))),
            ("rgtp://user@h/x", |e| matches!(e, Host(_))),
            ("rgtp://-h/x", |e| matches!(e, Host(_))),
            ("rgtp://h..com/x", |e| matches!(e, Host(_))),
            ("rgtp://h.com./x", |e| matches!(e, Host(_))),
            ("rgtp://ex ample/x", |e| matches!(e, Host(_))),
            ("rgtp://1.2.3.256/x", |e| matches!(e, Host(_))),
            ("rgtp://1.2.3/x", |e| matches!(e, Host(_))),
            ("rgtp://h/a b", |e| matches!(e, Name(_))),
            ("rgtp://h/a/b", |e| matches!(e, Name(_))),
            ("rgtp://h/a#frag", |e| matches!(e, Name(_))),
            ("rgtp://h/ü", |e| matches!(e, Name(_))),
            ("rgtp://h/a%2", |e| matches!(e, Name(_))),
            ("rgtp://h/a%zz", |e| matches!(e, Name(_))),
            ("rgtp://h/%ff", |e| matches!(e, Name(_))),
            ("rgtp://h/x?", |e| matches!(e, Query(_))),
            ("rgtp://h/x?key", |e| matches!(e, Query(_))),
            ("rgtp://h/x?key=abc", |e| matches!(e, Query(_))),
            ("rgtp://h/x?key=&root=", |e| matches!(e, Query(_))),
            ("rgtp://h/x?foo=1", |e| *e == UnknownParam("foo".into())),
            ("rgtp://h/x?KEY=1", |e| *e == UnknownParam("KEY".into())),
        ];
        for (input, check) in cases {
            match url(input) {
                Ok(u) => panic!("{input:?} was accepted as {u:?}"),
                Err(e) => {
                    assert!(check(&e), "{input:?} gave unexpected error {e:?}");
                    let msg = e.to_string();
                    assert!(!msg.is_empty() && !msg.contains('\n'));
                }
            }
        }
        let k = hex(&K);
        let dup = url(&format!("rgtp://h/x?key={k}&root={k}&key={k}"));
        assert_eq!(dup, Err(DuplicateParam("key".into())));
        let empty_param = url(&format!("rgtp://h/x?key={k}&"));
        assert!(matches!(empty_param, Err(Query(_))));
        let long = format!("rgtp://{}/x", "a".repeat(254));
        assert!(matches!(url(&long), Err(Host(_))));
        let long_label = format!("rgtp://{}.com/x", "a".repeat(64));
        assert!(matches!(url(&long_label), Err(Host(_))));
    }

    #[test]
    fn host_port_forms() {
        let p = |s| parse_host_port(s, 7000);
        assert_eq!(p("example.com"), Ok(("example.com".into(), 7000)));
        assert_eq!(p("EXAMPLE.com:80"), Ok(("example.com".into(), 80)));
        assert_eq!(p("10.0.0.1:65535"), Ok(("10.0.0.1".into(), 65535)));
        assert_eq!(p("[::1]:9"), Ok(("::1".into(), 9)));
        assert_eq!(p("[::1]"), Ok(("::1".into(), 7000)));
        assert_eq!(p("::1"), Ok(("::1".into(), 7000)));
        assert_eq!(p("2001:db8::0:1"), Ok(("2001:db8::1".into(), 7000)));
        assert!(matches!(p(""), Err(UrlError::EmptyHost)));
        assert!(matches!(p(":80"), Err(UrlError::EmptyHost)));
        assert!(matches!(p("h:"), Err(UrlError::Port(_))));
        assert!(matches!(p("h:99999"), Err(UrlError::Port(_))));
        assert!(matches!(p("::1:80:zz"), Err(UrlError::Host(_))));
        assert!(matches!(p("[::1]:"), Err(UrlError::Port(_))));
        assert!(matches!(p("[::1]80"), Err(UrlError::Host(_))));
        assert!(matches!(p("[]:80"), Err(UrlError::Host(_))));
        assert_eq!(format_host_port("::1", 5), "[::1]:5");
        assert_eq!(format_host_port("a.b", 5), "a.b:5");
    }

    proptest! {
        #[test]
        fn prop_name_round_trip(name in "\\PC{1,40}", port in 1u16..) {
            let u = RgtpUrl { host: "example.org".into(), port, name, key: Some(K), root: None };
            let s = u.to_string();
            prop_assert!(s.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert_eq!(url(&s), Ok(u));
        }

        #[test]
        fn prop_parse_never_panics(s in "rgtp://[a-z0-9:\\[\\]./%?=&é]{0,30}") {
            let _ = url(&s);
            let _ = parse_host_port(&s[7..], 1);
        }
    }
}

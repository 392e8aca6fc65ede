//! Exposer identity (a static X25519 key for Noise) and pullers' trust-on-first-use
//! record of exposer keys.
//!
//! Key file: 64 lowercase hex digits of the private key and a newline, mode 0600. The
//! public key is not stored: it is derived again from the private key on every load (with
//! snow's own X25519 implementation, so it is by construction the key Noise will present),
//! which leaves nothing on disk that could disagree. A malformed key file is an error,
//! never silently replaced: replacing it would change the exposer's identity and make
//! every puller that trusted it see a "changed key" warning.
//!
//! Known-exposers file: one `HOST:PORT HEX64` line per exposer (IPv6 hosts in brackets);
//! blank lines and lines starting with `#` are kept as they are.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

use crate::atomic_file::{sync_parent_dir, temp_sibling};
use crate::url::{format_host_port, hex, parse_hex32, parse_host_port};

/// An exposer's static X25519 key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKey {
    /// The X25519 private key: keep it secret (`Debug` never prints it).
    pub private: [u8; 32],
    /// The X25519 public key: what pullers pin (in URLs, `?key=`).
    pub public: [u8; 32],
}

impl fmt::Debug for StaticKey {
    // Never print the private key, e.g. into a log via `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticKey {{ public: {} }}", fingerprint(&self.public))
    }
}

/// Why a key or known-exposers file could not be used.
#[derive(Debug)]
pub enum KeyError {
    /// Reading the file failed.
    Io(PathBuf, io::Error),
    /// The file exists but its content is invalid; the message says where and why.
    Malformed(PathBuf, String),
    /// There was no key, and a new one could not be written: the path is the
    /// directory that could not be created, or the key file that could not be written.
    Create(PathBuf, io::Error),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            KeyError::Malformed(path, why) => write!(f, "{}: malformed: {why}", path.display()),
            KeyError::Create(path, e) => write!(f, "cannot create {}: {e}", path.display()),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyError::Io(_, e) | KeyError::Create(_, e) => Some(e),
            KeyError::Malformed(..) => None,
        }
    }
}

impl StaticKey {
    /// A fresh random key pair from snow's generator (OS randomness).
    ///
    /// # Panics
    /// If the operating system's random number generator is unavailable: there is no
    /// safe way to continue without one.
    pub fn generate() -> StaticKey {
        let builder = snow::Builder::new(noise_params());
        let pair = builder
            .generate_keypair()
            .expect("OS random number generator unavailable");
        let mut private = [0u8; 32];
        private.copy_from_slice(&pair.private);
        // Derive rather than copy, so every StaticKey goes through one code path.
        StaticKey::from_private(private)
    }

    /// The key pair for `private`: the public key is X25519(private, basepoint), computed
    /// by snow's own Curve25519 implementation.
    pub fn from_private(private: [u8; 32]) -> StaticKey {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("snow is built with its default Curve25519 support");
        dh.set(&private);
        let mut public = [0u8; 32];
        public.copy_from_slice(dh.pubkey());
        StaticKey { private, public }
    }

    /// Load the key at `path`, or create it (and its parent directories) if the file does
    /// not exist. Concurrent first starts agree on one key: the new file is linked into
    /// place only if no other process got there first.
    pub fn load_or_create(path: &Path) -> Result<StaticKey, KeyError> {
        match fs::read(path) {
            Ok(data) => return parse_key_file(path, &data),
            // No key there (ENOTDIR: a path component is a file, nothing can be there;
            // creating the directory says so).
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) => {}
            Err(e) => return Err(KeyError::Io(path.to_path_buf(), e)),
        }
        let io_err = |e| KeyError::Io(path.to_path_buf(), e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // 0700: the directory holds the private key.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| KeyError::Create(dir.to_path_buf(), e))?;
        }
        let key = StaticKey::generate();
        let tmp = temp_sibling(path);
        let result = write_key_then_link(&tmp, path, &key);
        // The temporary name is either linked into place or useless now.
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => {
                sync_parent_dir(path).map_err(io_err)?;
                Ok(key)
            }
            // Someone else created the key meanwhile: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let data = fs::read(path).map_err(io_err)?;
                parse_key_file(path, &data)
            }
            Err(e) => Err(KeyError::Create(path.to_path_buf(), e)),
        }
    }
}

/// The pull handshake's Noise parameters: the static key's DH function is theirs.
fn noise_params() -> snow::params::NoiseParams {
    crate::handshake::NOISE_PARAMS
        .parse()
        .expect("NOISE_PARAMS is a valid constant pattern")
}

/// Write the key to a new file `tmp` (mode 0600), fsync it, then hard-link it to `path`,
/// which fails with `AlreadyExists` instead of replacing an existing key.
fn write_key_then_link(tmp: &Path, path: &Path, key: &StaticKey) -> io::Result<()> {
    crate::atomic_file::create_new_synced(
        tmp,
        format!("{}\n", hex(&key.private)).as_bytes(),
        0o600,
    )?;
    match fs::hard_link(tmp, path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists && !path.exists() => {
            // Filesystems without hard links: rename instead, losing only the
            // no-replace guarantee against a concurrent first start.
            fs::rename(tmp, path)
        }
        other => other,
    }
}

/// The key of a server run under the shim (`shim.key`), which must never change
/// quietly: clients pin it. A missing file is created (0600). A file that exists but
/// cannot be used (malformed, unreadable) is a configuration error: the caller stops
/// rather than serve under another identity. Only when no key exists and none can be
/// stored (a read-only home) does a process run with a key of its own, and it says
/// so. Warnings (a key readable by others, a temporary key) come back as one line
/// each, for the caller to print: the shim has no logger of its own by default.
pub fn server_key(path: &Path) -> Result<(StaticKey, Vec<String>), KeyError> {
    let mut notes = Vec::new();
    match fs::symlink_metadata(path) {
        Ok(_) => {
            let key = StaticKey::load_or_create(path)?;
            notes.extend(exposed_note(path));
            Ok((key, notes))
        }
        // No key there (ENOTDIR: a path component is a file, nothing can be there).
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            match StaticKey::load_or_create(path) {
                Ok(key) => Ok((key, notes)),
                // Created meanwhile by another process, then found bad: not ours to replace.
                Err(e @ KeyError::Malformed(..)) => Err(e),
                Err(e) => {
                    notes.push(format!(
                        "{e}; serving with a key for this process only (clients that pin it \
                     will refuse the next run)"
                    ));
                    Ok((StaticKey::generate(), notes))
                }
            }
        }
        Err(e) => Err(KeyError::Io(path.to_path_buf(), e)),
    }
}

/// [`server_key`] for the shim: notes go to stderr (one line each, prefixed `rgtp:`),
/// and a key that exists but cannot be used ends the process with exit status 11 (as
/// `rgtp-expose` does) instead of changing the server's identity.
pub fn server_key_or_exit(path: &Path) -> StaticKey {
    match server_key(path) {
        Ok((key, notes)) => {
            for n in notes {
                eprintln!("rgtp: {n}");
            }
            key
        }
        Err(e) => {
            eprintln!(
                "rgtp: server key {e}; refusing to serve under another identity (fix or remove it)"
            );
            std::process::exit(11);
        }
    }
}

fn parse_key_file(path: &Path, data: &[u8]) -> Result<StaticKey, KeyError> {
    let malformed = |why: &str| KeyError::Malformed(path.to_path_buf(), why.to_string());
    let text = std::str::from_utf8(data).map_err(|_| malformed("not UTF-8 text"))?;
    // Tolerate one trailing newline (CRLF too, for hand-edited files), nothing else.
    let line = text
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(text);
    let private = parse_hex32(line)
        .ok_or_else(|| malformed("expected 64 hex digits (an X25519 private key) and a newline"))?;
    warn_if_exposed(path);
    Ok(StaticKey::from_private(private))
}

/// Warn (not fail) when the key file is readable by others: the key is still the
/// identity pullers trust, so refusing would only turn a leak into an outage.
fn warn_if_exposed(path: &Path) {
    if let Some(note) = exposed_note(path) {
        tracing::warn!("{note}");
    }
}

/// The warning for a private key file that others may read or write, if it is one.
fn exposed_note(path: &Path) -> Option<String> {
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{}: private key file has mode {:o}, accessible to other users; chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

/// A temporary name next to `path`, unique among live processes and threads, so
/// concurrent writers never share (or truncate) each other's temporary file.
/// The public key as 64 lowercase hex digits, for display and comparison by humans.
pub fn fingerprint(public: &[u8; 32]) -> String {
    hex(public)
}

/// RGTP's configuration directory: `$RGTP_CONFIG_DIR`, else `$XDG_CONFIG_HOME/rgtp`,
/// else `$HOME/.config/rgtp`, else `.rgtp` in the current directory.
pub fn config_dir() -> PathBuf {
    config_dir_from(
        std::env::var_os("RGTP_CONFIG_DIR"),
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`config_dir`] as a pure function of the environment, so it can be tested without
/// mutating the process environment (which races with other tests).
fn config_dir_from(
    rgtp: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    xdg_dir(rgtp, xdg, home, ".config", PathBuf::from(".rgtp"))
}

/// The one XDG base-directory lookup (config and cache): an explicit `RGTP_*` value,
/// else `$XDG_*_HOME/rgtp` (absolute only: the spec says relative values are invalid
/// and must be ignored), else `$HOME/<home_sub>/rgtp`, else `fallback`.
pub(crate) fn xdg_dir(
    rgtp: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
    home_sub: &str,
    fallback: PathBuf,
) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(rgtp) {
        return dir;
    }
    if let Some(xdg) = set(xdg).filter(|p| p.is_absolute()) {
        return xdg.join("rgtp");
    }
    match set(home) {
        Some(home) => home.join(home_sub).join("rgtp"),
        None => fallback,
    }
}

/// Where the exposer's key lives by default: `config_dir()/exposer.key`.
pub fn default_key_path() -> PathBuf {
    config_dir().join("exposer.key")
}

/// Where pullers record exposer keys by default: `config_dir()/known_exposers`.
pub fn default_known_path() -> PathBuf {
    config_dir().join("known_exposers")
}

/// What the known-exposers record says about a key presented by an exposer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The recorded key for this exposer is this key.
    Known,
    /// No key is recorded for this exposer.
    New,
    /// A different key is recorded: possible impersonation, or the exposer's key was
    /// replaced.
    Changed {
        /// The key recorded before.
        previous: [u8; 32],
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A comment or blank line, kept verbatim when the file is rewritten.
    Other(String),
    Entry {
        host_port: String,
        key: [u8; 32],
    },
}

/// The pullers' trust-on-first-use record of exposer keys, backed by a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownExposers {
    path: PathBuf,
    entries: Vec<Line>,
}

/// Canonical spelling of `HOST:PORT` so `Example.com:443` and `example.com:443` (or two
/// spellings of one IPv6 address) are one entry. Text that does not parse as `HOST:PORT`
/// is used as given.
fn canonical_host_port(s: &str) -> String {
    match parse_host_port(s, 0) {
        Ok((host, port)) if port != 0 => format_host_port(&host, port),
        _ => s.to_string(),
    }
}

impl KnownExposers {
    /// An empty record that will be saved at `path`.
    pub fn empty(path: &Path) -> KnownExposers {
        KnownExposers {
            path: path.to_path_buf(),
            entries: Vec::new(),
        }
    }

    /// Read the record at `path`; a missing file is an empty record.
    pub fn load(path: &Path) -> Result<KnownExposers, KeyError> {
        let data = match fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::empty(path)),
            Err(e) => return Err(KeyError::Io(path.to_path_buf(), e)),
        };
        let malformed = |n: usize, why: String| {
            KeyError::Malformed(path.to_path_buf(), format!("line {n}: {why}"))
        };
        let text = std::str::from_utf8(&data).map_err(|e| {
            malformed(
                1 + count_lines(&data[..e.valid_up_to()]),
                "not UTF-8".into(),
            )
        })?;
        let mut known = Self::empty(path);
        // Seen entries, so a long file loads in linear time (a lookup per line was
        // quadratic).
        let mut seen = std::collections::HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                known.entries.push(Line::Other(raw.to_string()));
                continue;
            }
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let [host_port, key_hex] = fields[..] else {
                return Err(malformed(n, "expected HOST:PORT HEX64".into()));
            };
            let (host, port) = parse_host_port(host_port, 0)
                .map_err(|e| malformed(n, format!("{host_port:?}: {e}")))?;
            if port == 0 {
                return Err(malformed(n, format!("{host_port:?} has no port")));
            }
            let key = parse_hex32(key_hex)
                .ok_or_else(|| malformed(n, "key must be 64 hex digits".into()))?;
            let host_port = format_host_port(&host, port);
            // Two keys for one exposer would make the answer depend on line order.
            if !seen.insert(host_port.clone()) {
                return Err(malformed(n, format!("{host_port} is listed twice")));
            }
            known.entries.push(Line::Entry { host_port, key });
        }
        Ok(known)
    }

    /// The file this record is saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key recorded for `host_port`, if any.
    pub fn get(&self, host_port: &str) -> Option<&[u8; 32]> {
        let wanted = canonical_host_port(host_port);
        self.entries.iter().find_map(|l| match l {
            Line::Entry { host_port, key } if *host_port == wanted => Some(key),
            _ => None,
        })
    }

    /// Number of exposers recorded.
    pub fn len(&self) -> usize {
        self.entries
            .iter()
            .filter(|l| matches!(l, Line::Entry { .. }))
            .count()
    }

    /// True when no exposer is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Compare `key` with what is recorded for `host_port`.
    pub fn check(&self, host_port: &str, key: &[u8; 32]) -> Trust {
        match self.get(host_port) {
            None => Trust::New,
            Some(k) if k == key => Trust::Known,
            Some(k) => Trust::Changed { previous: *k },
        }
    }

    /// Record `key` for `host_port` (replacing any previous key) and rewrite the file
    /// atomically. On error the in-memory record is unchanged.
    pub fn remember(&mut self, host_port: &str, key: &[u8; 32]) -> io::Result<()> {
        let wanted = canonical_host_port(host_port);
        let mut next = self.entries.clone();
        match next.iter_mut().find_map(|l| match l {
            Line::Entry { host_port, key } if *host_port == wanted => Some(key),
            _ => None,
        }) {
            Some(slot) => *slot = *key,
            None => next.push(Line::Entry {
                host_port: wanted,
                key: *key,
            }),
        }
        write_atomically(&self.path, &render(&next))?;
        self.entries = next;
        Ok(())
    }
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        match line {
            Line::Other(text) => out.push_str(text),
            Line::Entry { host_port, key } => {
                out.push_str(host_port);
                out.push(' ');
                out.push_str(&hex(key));
            }
        }
        out.push('\n');
    }
    out
}

/// Replace `path` with `contents`: write a temporary sibling (0600: whom one trusts is
/// nobody else's business), fsync, rename, fsync the directory. Creates missing parent
/// directories.
fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    crate::atomic_file::replace(path, contents.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rgtp-keys-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Run a complete Noise NX handshake with `key` as the responder's static key and
    /// return the static key the initiator learned.
    fn remote_static_seen_by_initiator(key: &StaticKey) -> Vec<u8> {
        let mut initiator = snow::Builder::new(noise_params())
            .build_initiator()
            .expect("initiator");
        let mut responder = snow::Builder::new(noise_params())
            .local_private_key(&key.private)
            .expect("private key")
            .build_responder()
            .expect("responder");
        let (mut msg, mut payload) = ([0u8; 1024], [0u8; 1024]);
        let n = initiator.write_message(&[], &mut msg).expect("-> e");
        responder
            .read_message(&msg[..n], &mut payload)
            .expect("read e");
        let n = responder
            .write_message(&[], &mut msg)
            .expect("<- e, ee, s, es");
        initiator
            .read_message(&msg[..n], &mut payload)
            .expect("read s");
        initiator.get_remote_static().expect("NX sends s").to_vec()
    }

    #[test]
    fn derived_public_key_is_what_noise_presents() {
        for _ in 0..4 {
            let key = StaticKey::generate();
            assert_ne!(key.public, [0u8; 32]);
            assert_eq!(remote_static_seen_by_initiator(&key), key.public.to_vec());
            assert_eq!(StaticKey::from_private(key.private), key);
        }
        assert_ne!(StaticKey::generate(), StaticKey::generate());
    }

    #[test]
    fn debug_hides_private_key() {
        let key = StaticKey::from_private([0x5a; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains(&fingerprint(&key.public)));
        assert!(!shown.contains(&hex(&key.private)));
    }

    #[test]
    fn create_then_load_same_key() {
        let dir = temp_dir("create");
        let path = dir.join("nested").join("exposer.key");
        let created = StaticKey::load_or_create(&path).expect("create");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{}\n", hex(&created.private)));
        let loaded = StaticKey::load_or_create(&path).expect("load");
        assert_eq!(loaded, created);
        // No temporary files left next to the key.
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("exposer.key")]);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn accepts_uppercase_and_missing_or_crlf_newline() {
        let dir = temp_dir("forms");
        fs::create_dir_all(&dir).expect("mkdir");
        let key = StaticKey::from_private([0xc3; 32]);
        for text in [
            hex(&key.private).to_uppercase(),
            hex(&key.private),
            format!("{}\r\n", hex(&key.private)),
        ] {
            let path = dir.join("k");
            fs::write(&path, &text).expect("write");
            assert_eq!(StaticKey::load_or_create(&path).expect("load"), key);
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn malformed_key_file_is_an_error_and_kept() {
        let dir = temp_dir("malformed");
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("exposer.key");
        let good = hex(&[1u8; 32]);
        let bad_contents: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\n".to_vec(),
            good.as_bytes()[..63].to_vec(),
            format!("{good}0\n").into_bytes(),
            format!("{good}\n\n").into_bytes(),
            format!(" {good}\n").into_bytes(),
            format!("{}zz\n", &good[..62]).into_bytes(),
            vec![0xff, 0xfe, b'\n'],
        ];
        for contents in bad_contents {
            fs::write(&path, &contents).expect("write");
            match StaticKey::load_or_create(&path) {
                Err(e @ KeyError::Malformed(..)) => {
                    let msg = e.to_string();
                    assert!(msg.contains("exposer.key") && !msg.contains('\n'), "{msg}");
                }
                other => panic!("{contents:?}: expected Malformed, got {other:?}"),
            }
            assert_eq!(
                fs::read(&path).expect("read"),
                contents,
                "file left untouched"
            );
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn existing_key_is_never_replaced_by_link() {
        let dir = temp_dir("race");
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("exposer.key");
        let theirs = StaticKey::from_private([9; 32]);
        fs::write(&path, format!("{}\n", hex(&theirs.private))).expect("write");
        let tmp = dir.join("mine.tmp");
        let err = write_key_then_link(&tmp, &path, &StaticKey::from_private([8; 32]))
            .expect_err("link must not replace");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(StaticKey::load_or_create(&path).expect("load"), theirs);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_key_directory_that_cannot_be_created_is_a_create_error() {
        let dir = temp_dir("no-dir");
        fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("a-file");
        fs::write(&file, b"not a directory\n").expect("write");
        let cfg = file.join("cfg");
        match StaticKey::load_or_create(&cfg.join("exposer.key")) {
            Err(e @ KeyError::Create(..)) => {
                assert!(matches!(&e, KeyError::Create(p, _) if *p == cfg), "{e:?}");
                assert!(e.to_string().starts_with("cannot create "), "{e}");
            }
            other => panic!("expected a create error, got {other:?}"),
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unreadable_key_path_is_io_error() {
        let dir = temp_dir("io");
        fs::create_dir_all(&dir).expect("mkdir");
        // The key path is a directory: reading it fails with something other than NotFound.
        assert!(matches!(
            StaticKey::load_or_create(&dir),
            Err(KeyError::Io(p, _)) if p == dir
        ));
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn config_dir_precedence() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            config_dir_from(os("/r"), os("/x"), os("/h")),
            PathBuf::from("/r")
        );
        assert_eq!(
            config_dir_from(os(""), os("/x"), os("/h")),
            PathBuf::from("/x/rgtp")
        );
        assert_eq!(
            config_dir_from(None, os("relative"), os("/h")),
            PathBuf::from("/h/.config/rgtp")
        );
        assert_eq!(
            config_dir_from(None, None, os("/h")),
            PathBuf::from("/h/.config/rgtp")
        );
        assert_eq!(config_dir_from(None, None, None), PathBuf::from(".rgtp"));
        assert!(default_key_path().ends_with("exposer.key"));
        assert!(default_known_path().ends_with("known_exposers"));
    }

    #[test]
    fn fingerprint_is_lowercase_hex() {
        let mut k = [0u8; 32];
        k[0] = 0xAB;
        k[31] = 0x01;
        let f = fingerprint(&k);
        assert_eq!(f.len(), 64);
        assert!(f.starts_with("ab00") && f.ends_with("0001"));
    }

    #[test]
    fn tofu_new_known_changed_and_persisted() {
        let dir = temp_dir("tofu");
        let path = dir.join("sub").join("known_exposers");
        let (a, b) = ([1u8; 32], [2u8; 32]);

        let mut known = KnownExposers::load(&path).expect("missing file is empty");
        assert!(known.is_empty());
        assert_eq!(known.check("host.example:443", &a), Trust::New);
        known.remember("host.example:443", &a).expect("remember");
        assert_eq!(known.check("host.example:443", &a), Trust::Known);
        // Another spelling of the same endpoint is the same entry.
        assert_eq!(known.check("HOST.example:443", &a), Trust::Known);
        assert_eq!(known.check("host.example:444", &a), Trust::New);
        assert_eq!(
            known.check("host.example:443", &b),
            Trust::Changed { previous: a }
        );

        known.remember("[2001:DB8::1]:7", &b).expect("remember v6");
        let reloaded = KnownExposers::load(&path).expect("reload");
        assert_eq!(reloaded, known);
        assert_eq!(reloaded.check("[2001:db8:0::1]:7", &b), Trust::Known);
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            format!(
                "host.example:443 {}\n[2001:db8::1]:7 {}\n",
                hex(&a),
                hex(&b)
            )
        );

        // Accepting a changed key replaces the entry instead of adding a second one.
        known.remember("host.example:443", &b).expect("replace");
        let reloaded = KnownExposers::load(&path).expect("reload");
        assert_eq!(reloaded.len(), 2);
        assert_eq!(reloaded.check("host.example:443", &b), Trust::Known);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn comments_survive_rewrite() {
        let dir = temp_dir("comments");
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("known");
        let a = hex(&[3u8; 32]);
        fs::write(&path, format!("# my exposers\n\n10.0.0.1:9000   {a}\n")).expect("write");
        let mut known = KnownExposers::load(&path).expect("load");
        assert_eq!(known.check("10.0.0.1:9000", &[3u8; 32]), Trust::Known);
        known
            .remember("10.0.0.2:9000", &[4u8; 32])
            .expect("remember");
        let text = fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with("# my exposers\n\n10.0.0.1:9000 "),
            "{text}"
        );
        assert_eq!(text.lines().count(), 4);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn malformed_known_file_names_path_and_line() {
        let dir = temp_dir("badknown");
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("known_exposers");
        let k = hex(&[5u8; 32]);
        let cases = [
            format!("h:1 {k}\nh:2\n"),
            format!("h:1 {k}\nh:2 {k} extra\n"),
            format!("h:1 {k}\nh {k}\n"),
            format!("h:1 {k}\nh:0 {k}\n"),
            format!("h:1 {k}\nh:2 {}\n", &k[..63]),
            format!("h:1 {k}\n::1 {k}\n"),
            format!("h:1 {k}\nH:1 {k}\n"),
        ];
        for contents in cases {
            fs::write(&path, &contents).expect("write");
            match KnownExposers::load(&path) {
                Err(e @ KeyError::Malformed(..)) => {
                    let msg = e.to_string();
                    assert!(msg.contains("known_exposers"), "{msg}");
                    assert!(msg.contains("line 2"), "{contents:?}: {msg}");
                }
                other => panic!("{contents:?}: expected Malformed, got {other:?}"),
            }
        }
        fs::write(&path, b"# ok\n\xff\n").expect("write");
        assert!(matches!(
            KnownExposers::load(&path),
            Err(KeyError::Malformed(_, m)) if m.starts_with("line 2")
        ));
        fs::remove_dir_all(&dir).ok();
    }

    /// Issue 15: known_exposers was written 0644.
    #[test]
    fn known_exposers_is_written_0600() {
        let dir = temp_dir("known0600");
        let path = dir.join("known_exposers");
        let mut known = KnownExposers::load(&path).expect("empty");
        known.remember("h:1", &[1; 32]).expect("remember");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&dir).ok();
    }

    /// Issue 15: each line looked up every earlier one (quadratic): 50 000 lines took
    /// seconds. Linear now, and a duplicate is still found.
    #[test]
    fn a_long_known_exposers_file_loads_in_linear_time() {
        let dir = temp_dir("knownlong");
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("known_exposers");
        let k = hex(&[5u8; 32]);
        let mut text = String::new();
        for i in 0..50_000u32 {
            text.push_str(&format!(
                "10.{}.{}.{}:443 {k}\n",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            ));
        }
        fs::write(&path, &text).expect("write");
        let t = std::time::Instant::now();
        let known = KnownExposers::load(&path).expect("load");
        let took = t.elapsed();
        assert_eq!(known.len(), 50_000);
        assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
        text.push_str(&format!("10.0.0.7:443 {k}\n"));
        fs::write(&path, &text).expect("write");
        assert!(matches!(
            KnownExposers::load(&path),
            Err(KeyError::Malformed(_, m)) if m.contains("listed twice")
        ));
        fs::remove_dir_all(&dir).ok();
    }

    /// Issue 15: a corrupt shim.key made the shim serve under a per-process key, with
    /// only a log line (off by default): the identity changed quietly on every run.
    #[test]
    fn a_server_key_that_exists_but_is_bad_is_an_error() {
        let dir = temp_dir("serverkey");
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("shim.key");
        // Missing: created, and the same key afterwards.
        let (a, notes) = server_key(&path).expect("created");
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(server_key(&path).expect("loaded").0, a);
        // Readable by others: a one-line warning, same key.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let (b, notes) = server_key(&path).expect("loaded");
        assert_eq!(b, a);
        assert!(
            notes.len() == 1 && notes[0].contains("chmod 600"),
            "{notes:?}"
        );
        // Corrupt: an error naming the file, and the file kept as it is.
        fs::write(&path, "garbage\n").expect("write");
        match server_key(&path) {
            Err(e @ KeyError::Malformed(..)) => assert!(e.to_string().contains("shim.key")),
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_eq!(fs::read_to_string(&path).expect("read"), "garbage\n");
        // No key and nowhere to store one: a temporary key, said so.
        let blocked = dir.join("not-a-dir");
        fs::write(&blocked, "").expect("write");
        let (_, notes) = server_key(&blocked.join("shim.key")).expect("temporary");
        assert!(
            notes.len() == 1 && notes[0].contains("this process only"),
            "{notes:?}"
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn failed_remember_leaves_memory_unchanged() {
        let dir = temp_dir("failremember");
        fs::create_dir_all(&dir).expect("mkdir");
        // The target path is a non-empty directory, so the rename must fail.
        let path = dir.join("occupied");
        fs::create_dir_all(path.join("inside")).expect("mkdir");
        let mut known = KnownExposers::empty(&path);
        assert!(known.remember("h:1", &[1; 32]).is_err());
        assert!(known.is_empty());
        assert_eq!(known.check("h:1", &[1; 32]), Trust::New);
        fs::remove_dir_all(&dir).ok();
    }
}

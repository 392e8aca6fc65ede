//! `rgtp-expose`: starting it ([`ExposeOpts`], [`ExposerProc`]) and reading the URLs
//! it prints ([`Exposed`]).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{describe_status, Finished, Proc};
use crate::programs::rgtp_command;
use crate::tempdir::TestDir;
use crate::{ERROR_DEADLINE, EXPOSE_DEADLINE};

/// One file as printed by rgtp-expose.
#[derive(Debug, Clone)]
pub struct Exposed {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Name as it appears in the URL (percent-encoded).
    pub name_encoded: String,
    /// Name decoded.
    pub name: String,
    pub key: String,
    pub root: String,
    /// The indented `root:` line.
    pub root_line: String,
    /// The indented `key:` line.
    pub key_line: String,
}

impl Exposed {
    /// `HOST:PORT` as pull takes it (IPv6 in brackets).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
    /// The URL with the `key` parameter replaced.
    pub fn url_with_key(&self, key: &str) -> String {
        self.url.replace(&self.key, key)
    }
    pub fn url_with_root(&self, root: &str) -> String {
        self.url.replace(&self.root, root)
    }
}

/// Options for starting `rgtp-expose`.
#[derive(Debug, Clone)]
pub struct ExposeOpts {
    pub files: Vec<PathBuf>,
    pub port: u16,
    pub bind: Option<String>,
    pub key: Option<PathBuf>,
    pub advertise: Option<String>,
    pub max_datagram: Option<usize>,
    pub config_dir: PathBuf,
    /// `$RGTP_CACHE_DIR` (sealed-ahead ciphertext), kept inside the test's directory.
    pub cache_dir: PathBuf,
    /// More options, placed before the files.
    pub extra_args: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

impl ExposeOpts {
    /// Exposes `files` on 127.0.0.1, port 0, with the test's exposer config dir.
    pub fn new(dir: &TestDir, files: &[&Path]) -> ExposeOpts {
        ExposeOpts {
            files: files.iter().map(|p| p.to_path_buf()).collect(),
            port: 0,
            bind: Some("127.0.0.1".into()),
            key: None,
            advertise: None,
            max_datagram: None,
            config_dir: dir.exposer_cfg(),
            cache_dir: dir.join("exposer-cache"),
            extra_args: Vec::new(),
            netns: None,
        }
    }
    pub fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    pub fn bind(mut self, b: Option<&str>) -> Self {
        self.bind = b.map(str::to_string);
        self
    }
    pub fn key(mut self, k: &Path) -> Self {
        self.key = Some(k.to_path_buf());
        self
    }
    pub fn advertise(mut self, a: &str) -> Self {
        self.advertise = Some(a.to_string());
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = rgtp_command("rgtp-expose", &self.config_dir);
        cmd.env("RGTP_CACHE_DIR", &self.cache_dir);
        cmd.arg("--port").arg(self.port.to_string());
        if let Some(b) = &self.bind {
            cmd.arg("--bind").arg(b);
        }
        if let Some(k) = &self.key {
            cmd.arg("--key").arg(k);
        }
        if let Some(a) = &self.advertise {
            cmd.arg("--advertise").arg(a);
        }
        if let Some(m) = self.max_datagram {
            cmd.arg("--max-datagram").arg(m.to_string());
        }
        cmd.args(&self.extra_args);
        cmd.arg("--");
        cmd.args(&self.files);
        match &self.netns {
            Some(ns) => crate::net::in_netns(ns, &cmd),
            None => cmd,
        }
    }

    /// Starts the exposer and waits (bounded) for its `listening on` line.
    pub fn start(&self, dir: &TestDir) -> ExposerProc {
        ExposerProc::start(self, dir)
    }

    /// Runs an exposer that is expected to fail at start.
    pub fn run_expect_exit(&self, dir: &TestDir) -> Finished {
        Proc::spawn(self.command(), "rgtp-expose", dir.path(), false).finish(ERROR_DEADLINE)
    }
}

/// A running `rgtp-expose`.
pub struct ExposerProc {
    pub proc: Proc,
    pub files: Vec<Exposed>,
    pub listening: String,
    pub stdout_lines: Vec<String>,
    /// Port parsed from the printed URLs.
    pub port: u16,
    stdout_thread: Option<thread::JoinHandle<()>>,
}

impl ExposerProc {
    fn start(opts: &ExposeOpts, dir: &TestDir) -> ExposerProc {
        let mut proc = Proc::spawn(opts.command(), "rgtp-expose", dir.path(), true);
        let stdout = proc
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        // Drains stdout for the life of the process so it can never block on a full pipe.
        let stdout_thread = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + EXPOSE_DEADLINE;
        let mut lines = Vec::new();
        let listening = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on") {
                        let rest = rest.trim().to_string();
                        lines.push(line);
                        break rest;
                    }
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => {
                    let status = proc.wait_for(Duration::from_secs(2));
                    panic!(
                        "{} did not print `listening on` ({e:?}; status {status:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        proc.what,
                        lines.join("\n"),
                        proc.stderr()
                    );
                }
            }
        };
        let files = parse_expose_output(&lines).unwrap_or_else(|e| {
            panic!(
                "cannot parse rgtp-expose output ({e}):\n{}",
                lines.join("\n")
            )
        });
        assert_eq!(
            files.len(),
            opts.files.len(),
            "one URL per exposed file expected:\n{}",
            lines.join("\n")
        );
        let port = files[0].port;
        assert!(
            files.iter().all(|f| f.port == port),
            "all URLs should share one port"
        );
        if opts.port != 0 {
            assert_eq!(port, opts.port, "URL port differs from --port");
        }
        ExposerProc {
            proc,
            files,
            listening,
            stdout_lines: lines,
            port,
            stdout_thread: Some(stdout_thread),
        }
    }

    pub fn file(&self, name: &str) -> &Exposed {
        self.files
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} not among exposed files {:?}", self.files))
    }

    /// The only exposed file.
    pub fn single(&self) -> &Exposed {
        assert_eq!(self.files.len(), 1);
        &self.files[0]
    }

    /// The address pullers reach it at (from its URL).
    pub fn addr(&self) -> SocketAddr {
        let f = &self.files[0];
        let ip: IpAddr = f.host.parse().expect("URL host is an IP address");
        SocketAddr::new(ip, f.port)
    }

    /// Asserts the exposer is still alive (with its stderr if not).
    pub fn assert_running(&mut self) {
        if let Some(s) = self.proc.try_status() {
            panic!(
                "{} exited unexpectedly with {}: {}",
                self.proc.what,
                describe_status(&s),
                self.proc.stderr()
            );
        }
    }

    /// Sends `sig` and waits (bounded) for the exit.
    pub fn stop_with(mut self, sig: libc::c_int) -> Finished {
        assert!(self.proc.signal(sig), "{} already exited", self.proc.what);
        let what = self.proc.what.clone();
        let status = self
            .proc
            .wait_for(Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "{what} did not exit within 30 s of signal {sig}: {}",
                    self.proc.stderr()
                )
            });
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        Finished {
            what,
            status,
            stdout: self.stdout_lines.join("\n"),
            stderr: self.proc.stderr(),
        }
    }
}

/// Parses rgtp-expose's stdout: per file a `rgtp://` line, then indented `root:` and
/// `key:` lines; then `listening on ADDR`.
pub fn parse_expose_output(lines: &[String]) -> Result<Vec<Exposed>, String> {
    let mut out: Vec<Exposed> = Vec::new();
    for line in lines {
        if line.starts_with("rgtp://") {
            let (host, port, name_encoded, key, root) = parse_url(line)?;
            out.push(Exposed {
                url: line.clone(),
                host,
                port,
                name: percent_decode(&name_encoded)?,
                name_encoded,
                key,
                root,
                root_line: String::new(),
                key_line: String::new(),
            });
        } else if line.starts_with("  ") {
            let cur = out
                .last_mut()
                .ok_or_else(|| format!("indented line before any URL: {line:?}"))?;
            let t = line.trim_start();
            if let Some(v) = t.strip_prefix("root:") {
                cur.root_line = v.trim().to_string();
            } else if let Some(v) = t.strip_prefix("key:") {
                cur.key_line = v.trim().to_string();
            }
        }
    }
    for f in &out {
        if f.root_line != f.root {
            return Err(format!(
                "root line {:?} differs from the URL's root {:?}",
                f.root_line, f.root
            ));
        }
        if f.key_line != f.key {
            return Err(format!(
                "key line {:?} differs from the URL's key {:?}",
                f.key_line, f.key
            ));
        }
    }
    if out.is_empty() {
        return Err("no rgtp:// line".into());
    }
    Ok(out)
}

/// Independent parser for `rgtp://HOST:PORT/NAME?key=HEX64&root=HEX64`:
/// returns (host without brackets, port, encoded name, key, root).
pub fn parse_url(url: &str) -> Result<(String, u16, String, String, String), String> {
    let rest = url
        .strip_prefix("rgtp://")
        .ok_or_else(|| format!("{url}: no rgtp:// scheme"))?;
    let (authority, path_query) = rest
        .split_once('/')
        .ok_or_else(|| format!("{url}: no /NAME"))?;
    let (host, port) = if let Some(a) = authority.strip_prefix('[') {
        let (h, p) = a
            .split_once("]:")
            .ok_or_else(|| format!("{url}: bad IPv6 authority"))?;
        (h.to_string(), p)
    } else {
        let (h, p) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{url}: no port"))?;
        (h.to_string(), p)
    };
    let port: u16 = port.parse().map_err(|_| format!("{url}: bad port"))?;
    let (name, query) = path_query
        .split_once('?')
        .ok_or_else(|| format!("{url}: no query"))?;
    let (mut key, mut root) = (None, None);
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("key", v)) => key = Some(v.to_string()),
            Some(("root", v)) => root = Some(v.to_string()),
            _ => return Err(format!("{url}: unexpected query part {kv:?}")),
        }
    }
    let hex64 = |s: &Option<String>, what: &str| -> Result<String, String> {
        let s = s.clone().ok_or_else(|| format!("{url}: no {what}"))?;
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(s)
        } else {
            Err(format!("{url}: {what} is not 64 lowercase hex digits"))
        }
    };
    Ok((
        host,
        port,
        name.to_string(),
        hex64(&key, "key")?,
        hex64(&root, "root")?,
    ))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {s:?}"))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

/// A test's usual start: a file `name` of `size` random bytes (from `seed`) in the
/// test's directory, exposed on 127.0.0.1 by an exposer that has printed its URL.
pub fn expose_random_file(
    dir: &TestDir,
    name: &str,
    size: u64,
    seed: &str,
) -> (PathBuf, ExposerProc) {
    let src = dir.join(name);
    crate::files::write_random_file(&src, size, seed);
    let ex = ExposeOpts::new(dir, &[&src]).start(dir);
    (src, ex)
}

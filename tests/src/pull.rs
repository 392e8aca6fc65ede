//! `rgtp-pull`: invocations ([`PullCmd`]) and its `--json` report ([`Report`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{Finished, Proc};
use crate::programs::rgtp_command;
use crate::tempdir::TestDir;
use crate::{Json, PULL_DEADLINE};

/// `--json` report of rgtp-pull.
#[derive(Debug, Clone)]
pub struct Report(pub Json);

/// One source of a pull, from `--json`'s `sources`.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub addr: String,
    pub bytes: u64,
    pub bad_chunks: u64,
    /// Why it was dropped, if it was.
    pub dropped: Option<String>,
    /// Whether it completed a handshake.
    pub answered: bool,
}

impl Report {
    /// The `sources` array, main source first.
    pub fn sources(&self) -> Vec<SourceRow> {
        self.0
            .get("sources")
            .and_then(Json::as_array)
            .unwrap_or_else(|| panic!("--json has no sources array: {}", self.0))
            .iter()
            .map(|s| SourceRow {
                addr: s["addr"].as_str().expect("addr").to_string(),
                bytes: s["bytes"].as_u64().expect("bytes"),
                bad_chunks: s["bad_chunks"].as_u64().expect("bad_chunks"),
                dropped: s["dropped"].as_str().map(str::to_string),
                answered: s["answered"].as_bool().expect("answered"),
            })
            .collect()
    }

    pub fn u64(&self, key: &str) -> u64 {
        let v = self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("--json report lacks {key:?}: {}", self.0));
        v.as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as u64)
            })
            .unwrap_or_else(|| panic!("--json {key:?} is not a whole number: {}", self.0))
    }
    pub fn f64(&self, key: &str) -> f64 {
        self.0
            .get(key)
            .and_then(Json::as_f64)
            .unwrap_or_else(|| panic!("--json {key:?} missing or not a number: {}", self.0))
    }
    pub fn bool(&self, key: &str) -> bool {
        self.0
            .get(key)
            .and_then(Json::as_bool)
            .unwrap_or_else(|| panic!("--json {key:?} missing or not a bool: {}", self.0))
    }
    /// Checks every field the contract promises is there with the right type.
    pub fn assert_fields(&self) {
        for k in [
            "bytes",
            "datagrams_received",
            "bytes_received",
            "rerequested_fragments",
            "missing_bytes_at_start",
        ] {
            self.u64(k);
        }
        for k in ["seconds", "throughput"] {
            let v = self.f64(k);
            assert!(
                v.is_finite() && v >= 0.0,
                "--json {k} = {v} is not a finite non-negative number"
            );
        }
        self.bool("resumed");
    }
}

/// A `rgtp-pull` invocation (so it can be run again identically, e.g. to resume).
#[derive(Debug, Clone)]
pub struct PullCmd {
    pub args: Vec<String>,
    pub config_dir: PathBuf,
    /// Working directory (default: the test's).
    pub cwd: Option<PathBuf>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

impl PullCmd {
    /// `rgtp-pull ARGS...` with the test's puller config dir.
    pub fn new<I, S>(dir: &TestDir, args: I) -> PullCmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        PullCmd {
            args: args
                .into_iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect(),
            config_dir: dir.puller_cfg(),
            cwd: None,
            netns: None,
        }
    }

    /// `rgtp-pull URL -o OUTPUT --quiet`
    pub fn url(dir: &TestDir, url: &str, output: &Path) -> PullCmd {
        PullCmd::new(
            dir,
            [url, "-o", output.to_str().expect("UTF-8 path"), "--quiet"],
        )
    }

    /// `rgtp-pull HOST:PORT NAME -o OUTPUT --quiet`
    pub fn by_name(dir: &TestDir, host_port: &str, name: &str, output: &Path) -> PullCmd {
        PullCmd::new(
            dir,
            [
                host_port,
                name,
                "-o",
                output.to_str().expect("UTF-8 path"),
                "--quiet",
            ],
        )
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn current_dir(mut self, d: &Path) -> Self {
        self.cwd = Some(d.to_path_buf());
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = rgtp_command("rgtp-pull", &self.config_dir);
        cmd.args(&self.args);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        match &self.netns {
            Some(ns) => crate::net::in_netns(ns, &cmd),
            None => cmd,
        }
    }

    pub fn spawn(&self, dir: &TestDir) -> Proc {
        Proc::spawn(self.command(), "rgtp-pull", dir.path(), false)
    }

    /// Runs to the end (bounded by [`PULL_DEADLINE`]).
    pub fn run(&self, dir: &TestDir) -> Finished {
        self.spawn(dir).finish(PULL_DEADLINE)
    }
}

//! rgtp-lying-live: a live exposer that rewrites its past, for tests
//! (tests/tests/cli_live.rs).
//!
//! It exposes a live stream `live.bin` on 127.0.0.1: 40 000 random bytes at once
//! (two whole chunks and a partial one), then, once the file `--rewrite-when PATH`
//! exists (the test creates it when its follower holds those bytes), it overwrites 6 bytes at offset `--offset` (default 100, inside the
//! first, complete chunk) and recomputes its CVs, as an exposer lying about bytes
//! it already served would; then it appends 1000 bytes every 100 ms. A follower
//! must refuse the next checkpoint.
//!
//! Prints `rgtp://127.0.0.1:PORT/live.bin?key=..` and `listening on ADDR` on stdout,
//! then serves until killed or `--seconds` (default 60) pass.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::live::Spool;
use rgtp::{RgtpUrl, StaticKey};

fn run() -> Result<(), String> {
    let mut seconds = 60u64;
    let mut rewrite_when = None;
    let mut offset = 100u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<f64, String> {
            it.next()
                .and_then(|s| s.parse().ok())
                .ok_or(format!("{what} needs a number"))
        };
        match a.as_str() {
            "--seconds" => seconds = num("--seconds")? as u64,
            "--rewrite-when" => rewrite_when = it.next(),
            "--offset" => offset = num("--offset")? as u64,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let mut rng = rgtp::rng::Rng::os();
    let key = StaticKey::from_private(rng.bytes());
    let spool = Arc::new(Spool::create(&std::env::temp_dir(), None).map_err(|e| e.to_string())?);
    let mut ex = Exposer::new(ExposerConfig::default(), key.private, Instant::now());
    ex.add_live("live.bin", spool.clone());
    let sock = rgtp::udp::bind("127.0.0.1:0".parse().map_err(|_| "address")?)
        .map_err(|e| format!("bind: {e}"))?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let url = RgtpUrl {
        host: "127.0.0.1".into(),
        port: local.port(),
        name: "live.bin".into(),
        key: Some(key.public),
        root: None,
    };
    let mut first = vec![0u8; 40_000];
    rng.fill(&mut first);
    spool.append(&first).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{url}\nlistening on {local}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let server = std::thread::spawn(move || rgtp::driver::serve(&sock, &mut ex, &flag, None));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let flag = rewrite_when.ok_or("--rewrite-when PATH is required")?;
    while !std::path::Path::new(&flag).exists() {
        if Instant::now() >= end {
            return Err("the rewrite was never asked for".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    spool
        .rewrite(offset, b"forged")
        .map_err(|e| e.to_string())?;
    let mut more = vec![0u8; 1000];
    while Instant::now() < end {
        rng.fill(&mut more);
        spool.append(&more).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rgtp-lying-live: {e}");
            ExitCode::from(2)
        }
    }
}

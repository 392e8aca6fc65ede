//! rgtp-lying-expose: a lying exposer for tests (tests/tests/cli_swarm.rs).
//!
//! It exposes FILE under its true root and outboard (so its manifest and URL are
//! those of an honest exposer of FILE), and then lies about the content:
//! - `--mode corrupt`: every content DATA datagram it sends has its last byte flipped,
//!   after sealing (the chunk no longer opens under its key);
//! - `--mode reseal`: it seals other bytes (FILE's bytes XOR 0x5A) under its own key
//!   (the chunk opens, and does not match the root).
//!
//! Prints `rgtp://127.0.0.1:PORT/NAME?key=..&root=..` and `listening on ADDR` on
//! stdout, then serves on 127.0.0.1 until killed or `--seconds` (default 300) pass.
//!
//! usage: rgtp-lying-expose --mode corrupt|reseal [--seconds S] FILE

use std::io::{ErrorKind, Write};
use std::net::UdpSocket;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::merkle;
use rgtp::source::MemSource;
use rgtp::wire::{Data, Object};
use rgtp::{RgtpUrl, StaticKey};

fn run() -> Result<(), String> {
    let mut mode = None;
    let mut seconds = 300u64;
    let mut file = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mode" => mode = it.next(),
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds needs a number")?
            }
            _ => file = Some(a),
        }
    }
    let reseal = match mode.as_deref() {
        Some("corrupt") => false,
        Some("reseal") => true,
        _ => return Err("--mode corrupt|reseal is required".into()),
    };
    let path = file.ok_or("FILE is required")?;
    let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let name = std::path::Path::new(&path)
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("FILE has no name")?
        .to_string();
    let cvs = merkle::cvs_of_bytes(&data);
    let served = if reseal {
        data.iter().map(|b| b ^ 0x5A).collect()
    } else {
        data
    };
    let key = StaticKey::from_private(rgtp::rng::Rng::os().bytes());
    let mut ex = Exposer::new(ExposerConfig::default(), key.private, Instant::now());
    let info = ex.add_exposure(&name, Box::new(MemSource(Arc::new(served))), cvs);
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let url = RgtpUrl {
        host: "127.0.0.1".into(),
        port: local.port(),
        name,
        key: Some(key.public),
        root: Some(info.root),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{url}\nlistening on {local}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);

    let end = Instant::now() + Duration::from_secs(seconds);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < end {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => ex.handle(Instant::now(), from, &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("recv: {e}")),
        }
        while let Some(t) = ex.poll_transmit() {
            for d in t.datagrams() {
                let mut d = d.to_vec();
                let content = Data::decode(&d).is_ok_and(|p| p.object == Object::Content);
                if content && !reseal {
                    if let Some(b) = d.last_mut() {
                        *b ^= 0x01;
                    }
                }
                let _ = sock.send_to(&d, t.dest);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rgtp-lying-expose: {e}");
            ExitCode::from(2)
        }
    }
}

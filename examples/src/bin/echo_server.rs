//! RGTP echo server: every byte a client sends comes back; a client's half-close is
//! answered with ours once everything is echoed.
//!
//! ```text
//! echo_server [ADDR]          # default 0.0.0.0:4433 (a UDP port)
//!   --key FILE                # static key file (created if missing); default: a new key
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use rgtp::conn::runtime::{ListenerOptions, RgtpListener, RgtpStream};
use rgtp::keys::{fingerprint, StaticKey};

fn serve(mut s: RgtpStream) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
        total += n as u64;
    }
    s.close(Duration::from_secs(30))?;
    Ok(total)
}

fn main() {
    let mut addr = "0.0.0.0:4433".to_string();
    let mut key_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--key" => key_file = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                eprintln!("usage: echo_server [ADDR] [--key FILE]");
                return;
            }
            _ => addr = a,
        }
    }
    let key = match key_file {
        Some(p) => match StaticKey::load_or_create(&p) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("echo_server: {e}");
                std::process::exit(1);
            }
        },
        None => StaticKey::generate(),
    };
    let public = key.public;
    let listener = match RgtpListener::bind_with(
        addr.as_str(),
        ListenerOptions {
            key: Some(key),
            ..Default::default()
        },
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo_server: bind {addr}: {e}");
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    println!("echo server on {local} (UDP), key {}", fingerprint(&public));
    loop {
        match listener.accept() {
            Ok((s, peer)) => {
                thread::spawn(move || match serve(s) {
                    Ok(n) => println!("{peer}: echoed {n} bytes"),
                    Err(e) => println!("{peer}: {e}"),
                });
            }
            Err(e) => {
                eprintln!("echo_server: accept: {e}");
                std::process::exit(1);
            }
        }
    }
}

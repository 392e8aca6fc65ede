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

/// Echo server over RGTP connections.
#[derive(clap::Parser)]
#[command(name = "echo_server")]
struct Args {
    /// Address to listen on.
    #[arg(default_value = "0.0.0.0:4433")]
    addr: String,
    /// Static key file (created if missing); default: a new key each run.
    #[arg(long = "key", value_name = "FILE")]
    key_file: Option<PathBuf>,
}

fn main() {
    let Args { addr, key_file } = <Args as clap::Parser>::parse();
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

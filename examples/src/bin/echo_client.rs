//! RGTP echo client: sends messages to an echo server, checks every byte that comes
//! back and prints round-trip times.
//!
//! ```text
//! echo_client ADDR [--count N] [--size BYTES] [--key HEX64]
//! ```
//! With no input options it sends `--count` messages of `--size` bytes (default 1000 x
//! 1 byte) and prints min / p50 / p99 round trips. `--stdin` echoes standard input
//! instead (line by line, like `nc`).

use std::io::{BufRead, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use rgtp::conn::runtime::{RgtpStream, StreamOptions};
use rgtp::url::parse_hex32;

fn fail(msg: String) -> ! {
    eprintln!("echo_client: {msg}");
    std::process::exit(1)
}

/// Echo client: sends messages, checks every byte that comes back, prints round trips.
#[derive(clap::Parser)]
#[command(name = "echo_client")]
struct Args {
    /// The echo server (host:port).
    addr: String,
    /// Messages to send.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 1)]
    size: usize,
    /// The server's public key (64 hex digits) to require.
    #[arg(long, value_parser = hex_key)]
    key: Option<[u8; 32]>,
    /// Echo standard input instead, line by line (like nc).
    #[arg(long)]
    stdin: bool,
}

/// A 64-hex-digit key, for clap.
fn hex_key(s: &str) -> std::result::Result<[u8; 32], String> {
    parse_hex32(s).ok_or_else(|| "expected 64 hex digits".to_string())
}

fn main() {
    let Args {
        addr,
        count,
        size,
        key,
        stdin,
    } = <Args as clap::Parser>::parse();
    let start = Instant::now();
    let mut s = RgtpStream::connect_with(
        addr.as_str(),
        Duration::from_secs(10),
        StreamOptions {
            server_key: key,
            config: None,
        },
    )
    .unwrap_or_else(|e| fail(format!("connect {addr}: {e}")));
    eprintln!(
        "connected to {} in {:?}",
        s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        start.elapsed()
    );
    if stdin {
        let mut out = std::io::stdout();
        for line in std::io::stdin().lock().lines() {
            let mut line = line.unwrap_or_else(|e| fail(format!("stdin: {e}")));
            line.push('\n');
            s.write_all(line.as_bytes())
                .unwrap_or_else(|e| fail(format!("write: {e}")));
            let mut back = vec![0u8; line.len()];
            s.read_exact(&mut back)
                .unwrap_or_else(|e| fail(format!("read: {e}")));
            let _ = out.write_all(&back);
        }
    } else {
        let msg: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        let mut back = vec![0u8; size];
        let mut rtts = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            s.write_all(&msg)
                .unwrap_or_else(|e| fail(format!("write: {e}")));
            s.read_exact(&mut back)
                .unwrap_or_else(|e| fail(format!("read: {e}")));
            rtts.push(t.elapsed());
            if back != msg {
                fail("echoed bytes differ".into());
            }
        }
        rtts.sort();
        if !rtts.is_empty() {
            let p = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
            println!(
                "{count} x {size} B: rtt min {:?} p50 {:?} p99 {:?} max {:?}",
                rtts[0],
                p(0.5),
                p(0.99),
                rtts[rtts.len() - 1]
            );
        }
    }
    s.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| fail(format!("shutdown: {e}")));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .unwrap_or_else(|e| fail(format!("read: {e}")));
    if !rest.is_empty() {
        fail(format!("{} unexpected bytes after EOF", rest.len()));
    }
}

//! rgtp-flood-inits: a handshake flooder for tests (tests/tests/handshake_flood.rs).
//!
//! Sends connection INITs (docs/PROTOCOL-connections.md) from one UDP socket per
//! `--from` address, round robin, at `--rate` INITs per second, and answers every RETRY
//! the way a flooder that owns its addresses would: the INIT it answered is sent again
//! with the cookie (same client ID and Noise message, as the cookie requires). It
//! never sends FINISH, so every handshake it starts stays half-open. Each new INIT
//! carries a fresh 32-byte Noise message 1 (any 32 bytes are an X25519 key), so the
//! server does the full Diffie-Hellman work for each one it accepts.
//!
//! Bounded: it stops after `--seconds` or `--max` INITs, whichever comes first, and
//! prints one line: `sent=N tokened=N retries=N responses=N send_errors=N secs=F`.
//!
//! usage: rgtp-flood-inits --target IP:PORT --from IP [--from IP ...]
//!        [--rate N] [--seconds S] [--max N]

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rgtp::conn::wire::{self as cw, Packet};

struct Args {
    target: SocketAddr,
    from: Vec<IpAddr>,
    rate: u64,
    seconds: f64,
    max: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        target: "127.0.0.1:1".parse().map_err(|e| format!("{e}"))?,
        from: Vec::new(),
        rate: 60_000,
        seconds: 10.0,
        max: 2_000_000,
    };
    let mut target = false;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{k} {v}: {e}");
        match k.as_str() {
            "--target" => {
                a.target = v.parse().map_err(|e| bad(&e))?;
                target = true;
            }
            "--from" => a.from.push(v.parse().map_err(|e| bad(&e))?),
            "--rate" => a.rate = v.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = v.parse().map_err(|e| bad(&e))?,
            "--max" => a.max = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if !target || a.from.is_empty() || a.rate == 0 || !(a.seconds > 0.0 && a.seconds <= 600.0) {
        return Err("need --target, at least one --from, --rate > 0, 0 < --seconds <= 600".into());
    }
    Ok(a)
}

/// One flooding socket and the RETRY cookies waiting to be answered from it.
struct Src {
    sock: UdpSocket,
    answers: VecDeque<(u64, Vec<u8>)>,
}

/// An INIT's Noise message 1, derived from its client ID, so that the INIT answering
/// a RETRY repeats it without the flooder storing anything.
fn msg1(cid: u64) -> [u8; 32] {
    *blake3::hash(&cid.to_le_bytes()).as_bytes()
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rgtp-flood-inits: {e}");
            return ExitCode::from(2);
        }
    };
    let mut srcs = Vec::new();
    for ip in &args.from {
        let sock = match UdpSocket::bind(SocketAddr::new(*ip, 0)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("rgtp-flood-inits: bind {ip}: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = sock.set_nonblocking(true) {
            eprintln!("rgtp-flood-inits: {e}");
            return ExitCode::from(1);
        }
        srcs.push(Src {
            sock,
            answers: VecDeque::new(),
        });
    }
    let (mut sent, mut tokened, mut retries, mut responses, mut errors) = (0u64, 0, 0, 0, 0);
    let mut next_cid = u64::from_le_bytes(rgtp::crypto::random_bytes());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut buf = vec![0u8; 2048];
    let mut i = 0usize;
    while sent < args.max && errors < 1_000_000 {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // Pacing: never ahead of rate * elapsed.
        let due = (now.duration_since(start).as_secs_f64() * args.rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let src = &mut srcs[i % args.from.len()];
        i += 1;
        // What came back: each RETRY is answered (once: a cookie validates the one
        // INIT it was sealed to), RESPONSEs are counted and never finished.
        for _ in 0..64 {
            match src.sock.recv(&mut buf) {
                Ok(n) => match cw::decode(&buf[..n]) {
                    Ok(Packet::Retry { dst_cid, token }) => {
                        retries += 1;
                        if src.answers.len() < 1024 {
                            src.answers.push_back((dst_cid, token.to_vec()));
                        }
                    }
                    Ok(Packet::Response { .. }) => responses += 1,
                    _ => {}
                },
                Err(_) => break,
            }
        }
        let (cid, token) = src.answers.pop_front().unwrap_or_else(|| {
            next_cid = next_cid.wrapping_add(0x9e37_79b9_7f4a_7c15) | 1;
            (next_cid, Vec::new())
        });
        let init = Packet::Init {
            src_cid: cid,
            token: &token,
            noise: &msg1(cid),
        }
        .encode();
        match src.sock.send_to(&init, args.target) {
            Ok(_) => {
                sent += 1;
                tokened += u64::from(!token.is_empty());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(_) => errors += 1,
        }
    }
    println!(
        "sent={sent} tokened={tokened} retries={retries} responses={responses} send_errors={errors} secs={:.2}",
        start.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

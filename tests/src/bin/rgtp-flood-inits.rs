//! rgtp-flood-inits: a handshake flooder for tests (tests/tests/handshake_flood.rs).
//!
//! Sends connection INITs (docs/PROTOCOL-connections.md) from one UDP socket per
//! `--from` address, round robin, at `--rate` INITs per second, and answers every RETRY
//! the way a flooder that owns its addresses would: the token goes into every later
//! INIT from that socket (a token lives 10 s). It never sends FINISH, so every
//! handshake it starts stays half-open. Each INIT carries a fresh 32-byte Noise
//! message 1 (any 32 bytes are an X25519 key), so the server does the full
//! Diffie-Hellman work for each one it accepts.
//!
//! Bounded: it stops after `--seconds` or `--max` INITs, whichever comes first, and
//! prints one line: `sent=N tokened=N retries=N responses=N send_errors=N secs=F`.
//!
//! usage: rgtp-flood-inits --target IP:PORT --from IP [--from IP ...]
//!        [--rate N] [--seconds S] [--max N]

use std::collections::HashMap;
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

/// One flooding socket and the RETRY token it holds (for its client ID).
struct Src {
    sock: UdpSocket,
    token: Option<(u64, Vec<u8>)>,
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
        srcs.push(Src { sock, token: None });
    }
    let (mut sent, mut tokened, mut retries, mut responses, mut errors) = (0u64, 0, 0, 0, 0);
    let mut seed = u64::from_le_bytes(rgtp::crypto::random_bytes());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut buf = vec![0u8; 2048];
    let mut cids: HashMap<usize, u64> = HashMap::new();
    let mut i = 0usize;
    while sent < args.max {
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
        let k = i % srcs.len();
        i += 1;
        let n_srcs = srcs.len();
        let src = &mut srcs[k];
        // Read what came back to this socket: RETRY tokens are kept, RESPONSEs counted.
        // Every 16th round only once it holds a token: receive calls cost the CPU the
        // server under test needs (both run on the same machine).
        let round = (i - 1) / n_srcs;
        let reads = if src.token.is_none() || round.is_multiple_of(16) {
            64
        } else {
            0
        };
        for _ in 0..reads {
            match src.sock.recv(&mut buf) {
                Ok(n) => match cw::decode(&buf[..n]) {
                    Ok(Packet::Retry { dst_cid, token }) => {
                        retries += 1;
                        src.token = Some((dst_cid, token.to_vec()));
                    }
                    Ok(Packet::Response { .. }) => responses += 1,
                    _ => {}
                },
                Err(_) => break,
            }
        }
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let e = blake3::hash(&seed.to_le_bytes());
        let cid = *cids.entry(k).or_insert(seed | 1);
        let (cid, token): (u64, &[u8]) = match &src.token {
            Some((c, t)) => (*c, t),
            None => (cid.wrapping_add(sent) | 1, &[]),
        };
        let init = Packet::Init {
            src_cid: cid,
            token,
            noise: e.as_bytes(),
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
        if errors > 1_000_000 {
            break;
        }
    }
    println!(
        "sent={sent} tokened={tokened} retries={retries} responses={responses} send_errors={errors} secs={:.2}",
        start.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

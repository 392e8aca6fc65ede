//! Bulk transfer over an RGTP connection, and a loopback benchmark against TCP.
//!
//! ```text
//! bulk_send --listen ADDR                  # receiver: checks every byte, answers the count
//! bulk_send ADDR [--bytes N] [--key HEX64] # sender: N bytes (default 256 MiB), verified
//! bulk_send --bench [--bytes N] [--pings N]
//! ```
//! `--bench` runs, in one run, against a second process it starts: 1-byte ping-pong
//! latency (p50/p99) and one connection's bulk throughput, for TCP on loopback and for
//! RGTP with the loopback datagram size (65 000 bytes, `RGTP_BENCH_DATAGRAM` to change)
//! and with 1200-byte datagrams (as over the Internet), and prints a table with the CPU
//! time both processes spent per GiB. Build with `--release` for meaningful numbers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rgtp::conn::runtime::{ListenerOptions, RgtpListener, RgtpStream, StreamOptions};
use rgtp::conn::ConnConfig;
use rgtp::keys::fingerprint;
use rgtp::url::parse_hex32;

const T: Duration = Duration::from_secs(30);

fn fail(msg: String) -> ! {
    eprintln!("bulk_send: {msg}");
    std::process::exit(1)
}

/// Deterministic filler: a fast xorshift stream both sides generate, so the receiver
/// checks every byte without either side holding the data.
struct Filler(u64);

const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

impl Filler {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Fills `buf` with the stream's bytes from `offset` on (calls must be
    /// consecutive: `offset` only says where a partial word left off).
    fn fill_stream(&mut self, offset: u64, buf: &mut [u8]) {
        let mut i = 0;
        let mut off = offset;
        while i < buf.len() {
            let phase = (off % 8) as usize;
            if phase == 0 {
                self.next();
            }
            let b = self.0.to_le_bytes();
            let k = (8 - phase).min(buf.len() - i);
            buf[i..i + k].copy_from_slice(&b[phase..phase + k]);
            i += k;
            off += k as u64;
        }
    }
}

fn receiver(addr: &str) {
    let l = RgtpListener::bind(addr).unwrap_or_else(|e| fail(format!("bind {addr}: {e}")));
    println!(
        "receiving on {} (UDP), key {}",
        l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        fingerprint(&l.public_key())
    );
    for s in l.incoming() {
        let mut s = s.unwrap_or_else(|e| fail(format!("accept: {e}")));
        thread::spawn(move || {
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let start = Instant::now();
            let mut f = Filler(SEED);
            let mut buf = vec![0u8; 256 * 1024];
            let mut want = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            let mut ok = true;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        f.fill_stream(n, &mut want[..k]);
                        if ok && buf[..k] != want[..k] {
                            println!("{peer}: bytes differ near offset {n}");
                            ok = false;
                        }
                        n += k as u64;
                    }
                    Err(e) => {
                        println!("{peer}: {e} after {n} bytes");
                        return;
                    }
                }
            }
            let took = start.elapsed();
            let mut reply = n.to_le_bytes().to_vec();
            reply.push(ok as u8);
            let _ = s.write_all(&reply);
            let _ = s.close(T);
            println!(
                "{peer}: {n} bytes in {took:?} ({:.1} MB/s){}",
                n as f64 / took.as_secs_f64() / 1e6,
                if ok { ", every byte as expected" } else { "" }
            );
        });
    }
}

fn sender(addr: &str, bytes: u64, key: Option<[u8; 32]>) {
    let mut s = RgtpStream::connect_with(
        addr,
        Duration::from_secs(10),
        StreamOptions {
            server_key: key,
            config: None,
        },
    )
    .unwrap_or_else(|e| fail(format!("connect {addr}: {e}")));
    let start = Instant::now();
    let mut f = Filler(SEED);
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let k = (buf.len() as u64).min(bytes - sent) as usize;
        f.fill_stream(sent, &mut buf[..k]);
        s.write_all(&buf[..k])
            .unwrap_or_else(|e| fail(format!("write: {e}")));
        sent += k as u64;
    }
    s.shutdown(Shutdown::Write)
        .unwrap_or_else(|e| fail(format!("shutdown: {e}")));
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .unwrap_or_else(|e| fail(format!("read: {e}")));
    let took = start.elapsed();
    if reply.len() != 9 || reply[..8] != bytes.to_le_bytes() || reply[8] != 1 {
        fail("the receiver did not get exactly what was sent".into());
    }
    let st = s.stats();
    println!(
        "sent {bytes} bytes in {took:?}: {:.1} MB/s, verified{}",
        bytes as f64 / took.as_secs_f64() / 1e6,
        st.map(|st| format!(
            " ({} datagrams, {} bytes re-sent)",
            st.datagrams_out, st.stream_bytes_resent
        ))
        .unwrap_or_default()
    );
}

// ------------------------------------------------------------------- benchmark

/// CPU time (user + system) of this process and of `peer`, from /proc, in seconds.
fn cpu_seconds(peer: u32) -> f64 {
    proc_cpu("/proc/self/stat".into()) + proc_cpu(format!("/proc/{peer}/stat"))
}

fn proc_cpu(path: String) -> f64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = s.rfind(')').and_then(|i| s.get(i + 2..)) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here; 100 Hz.
    (ticks(11) + ticks(12)) / 100.0
}

trait Conn: Read + Write + Send + 'static {
    fn half_close(&mut self) -> io::Result<()>;
    fn info(&self) -> String {
        String::new()
    }
}

impl Conn for RgtpStream {
    fn half_close(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn info(&self) -> String {
        self.stats().map(|s| format!("{s:?}")).unwrap_or_default()
    }
}

impl Conn for TcpStream {
    fn half_close(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

struct Result {
    name: String,
    p50: Duration,
    p99: Duration,
    mbps: f64,
    cpu_per_gib: f64,
}

/// Echo one byte at a time until EOF (ping-pong server), then count a bulk stream
/// and answer with its length.
fn bench_server(mut s: impl Conn) {
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if b[0] == 0xFF {
            break;
        }
        if s.write_all(&b).is_err() {
            return;
        }
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(_) => return,
        }
    }
    let _ = s.write_all(&n.to_le_bytes());
    let _ = s.half_close();
    let _ = s.read(&mut b);
}

fn bench_client(name: &str, mut c: impl Conn, pings: usize, bytes: u64, peer: u32) -> Result {
    let mut b = [0u8; 1];
    let mut rtts = Vec::with_capacity(pings);
    for i in 0..(pings + pings / 10) {
        let t = Instant::now();
        c.write_all(&[7])
            .unwrap_or_else(|e| fail(format!("{name}: {e}")));
        c.read_exact(&mut b)
            .unwrap_or_else(|e| fail(format!("{name}: {e}")));
        // The first tenth warms up.
        if i >= pings / 10 {
            rtts.push(t.elapsed());
        }
    }
    rtts.sort();
    let p = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
    c.write_all(&[0xFF])
        .unwrap_or_else(|e| fail(format!("{name}: {e}")));
    let buf = vec![0x5Au8; 256 * 1024];
    let cpu0 = cpu_seconds(peer);
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let k = (buf.len() as u64).min(left) as usize;
        c.write_all(&buf[..k])
            .unwrap_or_else(|e| fail(format!("{name}: {e}")));
        left -= k as u64;
    }
    c.half_close()
        .unwrap_or_else(|e| fail(format!("{name}: {e}")));
    let mut n = [0u8; 8];
    c.read_exact(&mut n)
        .unwrap_or_else(|e| fail(format!("{name}: {e}")));
    let took = start.elapsed();
    let cpu = cpu_seconds(peer) - cpu0;
    if std::env::var_os("RGTP_BENCH_VERBOSE").is_some() {
        eprintln!("{name}: {}", c.info());
    }
    if u64::from_le_bytes(n) != bytes {
        fail(format!(
            "{name}: the server counted {} bytes",
            u64::from_le_bytes(n)
        ));
    }
    Result {
        name: name.to_string(),
        p50: p(0.5),
        p99: p(0.99),
        mbps: bytes as f64 / took.as_secs_f64() / 1e6,
        cpu_per_gib: cpu / (bytes as f64 / (1u64 << 30) as f64),
    }
}

/// Datagram size for the loopback run: the library's loopback default, or
/// `RGTP_BENCH_DATAGRAM`.
fn big_datagram() -> usize {
    std::env::var("RGTP_BENCH_DATAGRAM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| ConnConfig::default().loopback_max_datagram)
}

fn rgtp_config(datagram: usize) -> ConnConfig {
    ConnConfig {
        loopback_max_datagram: datagram,
        ..Default::default()
    }
}

/// The benchmark's other process: a TCP listener and two RGTP listeners (16 KiB and
/// 1200-byte datagrams), one connection each; prints the three ports.
fn bench_peer() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(format!("bind: {e}")));
    let big = RgtpListener::bind_with(
        "127.0.0.1:0",
        ListenerOptions {
            config: Some(rgtp_config(big_datagram())),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| fail(format!("bind: {e}")));
    let small = RgtpListener::bind_with(
        "127.0.0.1:0",
        ListenerOptions {
            config: Some(rgtp_config(1200)),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| fail(format!("bind: {e}")));
    let port = |a: io::Result<std::net::SocketAddr>| a.map(|a| a.port()).unwrap_or(0);
    println!(
        "{} {} {}",
        port(tcp.local_addr()),
        port(big.local_addr()),
        port(small.local_addr())
    );
    let _ = io::stdout().flush();
    if let Ok((s, _)) = tcp.accept() {
        let _ = s.set_nodelay(true);
        bench_server(s);
    }
    for l in [big, small] {
        if let Ok((s, _)) = l.accept() {
            bench_server(s);
        }
    }
}

fn bench(bytes: u64, pings: usize) {
    println!(
        "loopback, two processes: {pings} x 1-byte ping-pong, then {} MiB one way, same run",
        bytes >> 20
    );
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(format!("{e}")));
    let mut child = std::process::Command::new(exe)
        .arg("--bench-peer")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(format!("spawn: {e}")));
    let peer = child.id();
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = io::BufRead::read_line(&mut io::BufReader::new(out), &mut line);
    }
    let ports: Vec<u16> = line
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if ports.len() != 3 {
        fail(format!("bench peer said {line:?}"));
    }
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let tcp = {
        let c =
            TcpStream::connect(addr(ports[0])).unwrap_or_else(|e| fail(format!("connect: {e}")));
        let _ = c.set_nodelay(true);
        bench_client("TCP (nodelay)", c, pings, bytes, peer)
    };
    let mut setup = Vec::new();
    let mut rgtp = |name: String, port: u16, datagram: usize| {
        let start = Instant::now();
        let c = RgtpStream::connect_with(
            addr(port),
            T,
            StreamOptions {
                server_key: None,
                config: Some(rgtp_config(datagram)),
            },
        )
        .unwrap_or_else(|e| fail(format!("connect: {e}")));
        setup.push(start.elapsed());
        bench_client(&name, c, pings, bytes, peer)
    };
    let results = [
        tcp,
        rgtp(
            format!("RGTP ({} B datagrams)", big_datagram()),
            ports[1],
            big_datagram(),
        ),
        rgtp("RGTP (1200 B datagrams)".into(), ports[2], 1200),
    ];
    let _ = child.wait();
    println!(
        "{:<24} {:>10} {:>10} {:>11} {:>20}",
        "", "p50 rtt", "p99 rtt", "bulk MB/s", "CPU s/GiB (2 ends)"
    );
    for r in &results {
        println!(
            "{:<24} {:>10.1?} {:>10.1?} {:>11.0} {:>20.2}",
            r.name, r.p50, r.p99, r.mbps, r.cpu_per_gib
        );
    }
    let tcp = &results[0];
    for r in &results[1..] {
        println!(
            "{}: latency p50 {:.2}x TCP, throughput {:.2}x TCP",
            r.name,
            r.p50.as_secs_f64() / tcp.p50.as_secs_f64(),
            r.mbps / tcp.mbps
        );
    }
    println!(
        "RGTP connection set-up: first (engine start included) {:?}, second {:?}",
        setup[0], setup[1]
    );
}

/// Bulk transfer over one RGTP connection, or a benchmark beside TCP.
#[derive(clap::Parser)]
#[command(name = "bulk_send")]
struct Args {
    /// The receiver to send to (host:port).
    addr: Option<String>,
    /// Receive instead, on this address.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Bytes to send.
    #[arg(long, default_value_t = 256 << 20)]
    bytes: u64,
    /// Round trips for --bench's ping-pong.
    #[arg(long, default_value_t = 20_000)]
    pings: usize,
    /// The receiver's public key (64 hex digits) to require.
    #[arg(long, value_parser = hex_key)]
    key: Option<[u8; 32]>,
    /// Benchmark against TCP on loopback (both ends in this process's children).
    #[arg(long)]
    bench: bool,
    /// Internal: the far end of --bench.
    #[arg(long, hide = true)]
    bench_peer: bool,
}

/// A 64-hex-digit key, for clap.
fn hex_key(s: &str) -> std::result::Result<[u8; 32], String> {
    parse_hex32(s).ok_or_else(|| "expected 64 hex digits".to_string())
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    if args.bench_peer {
        bench_peer();
    } else if args.bench {
        bench(args.bytes, args.pings.max(10));
    } else if let Some(l) = args.listen {
        receiver(&l);
    } else if let Some(a) = args.addr {
        sender(&a, args.bytes, args.key);
    } else {
        fail("give ADDR, --listen ADDR or --bench (see --help)".into());
    }
}

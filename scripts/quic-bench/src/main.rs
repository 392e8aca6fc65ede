//! quic-bench: the QUIC peer of scripts/bench.sh (quinn 0.11, rustls with ring).
//!
//!   quic-bench server --listen 127.0.0.1:4433 --cert-out cert.der (--file PATH | --bytes N) [--conns K]
//!       prints `listening on ADDR` once ready; serves K connections (default 1), each one
//!       unidirectional stream carrying the file (or N pseudo-random bytes), then exits.
//!   quic-bench client --connect 127.0.0.1:4433 --cert cert.der [--expect N]
//!       reads the stream to nowhere, prints one JSON object:
//!       {"bytes":..,"seconds":..,"MBps":..,"handshake_s":..}
//!
//! Both sides: `--max-udp N` sets quinn's initial MTU and MTU-discovery ceiling (default:
//! quinn's, 1200 growing to at most 1452 by discovery). Flow-control windows are raised to
//! 32 MiB so loopback is not window-bound. Self-signed certificate from rcgen; the client
//! trusts exactly that certificate (no verification is skipped).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{ClientConfig, Endpoint, MtuDiscoveryConfig, ServerConfig, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "usage: quic-bench server --listen ADDR --cert-out PATH (--file PATH | --bytes N) [--conns K] [--max-udp N]
       quic-bench client --connect ADDR --cert PATH [--expect N] [--max-udp N] [--timeout S]";

struct Args(Vec<String>);
impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().position(|a| a == name).and_then(|i| self.0.get(i + 1)).map(|s| s.as_str())
    }
    fn need(&self, name: &str) -> Res<&str> {
        self.get(name).ok_or_else(|| format!("missing {name}\n{USAGE}").into())
    }
    fn num(&self, name: &str) -> Res<Option<u64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => Ok(Some(v.parse().map_err(|_| format!("{name}: not a number: {v}"))?)),
        }
    }
}

fn transport(max_udp: Option<u64>) -> Res<TransportConfig> {
    let mut t = TransportConfig::default();
    let win = 32u32 << 20;
    t.stream_receive_window(VarInt::from_u32(win))
        .receive_window(VarInt::from_u32(win))
        .send_window(win as u64)
        .max_idle_timeout(Some(VarInt::from_u32(30_000).into()));
    if let Some(m) = max_udp {
        let m = u16::try_from(m).map_err(|_| "--max-udp must be <= 65527")?;
        t.initial_mtu(m);
        let mut d = MtuDiscoveryConfig::default();
        d.upper_bound(m);
        t.mtu_discovery_config(Some(d));
    }
    Ok(t)
}

async fn server(a: &Args) -> Res<()> {
    let listen: SocketAddr = a.need("--listen")?.parse()?;
    let cert_out = a.need("--cert-out")?.to_string();
    let conns = a.num("--conns")?.unwrap_or(1);
    let file = a.get("--file").map(|s| s.to_string());
    let bytes = a.num("--bytes")?;
    if file.is_none() && bytes.is_none() {
        return Err(format!("need --file or --bytes\n{USAGE}").into());
    }
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    std::fs::write(&cert_out, cert.as_ref())?;
    let mut sc = ServerConfig::with_single_cert(vec![cert], key)?;
    sc.transport_config(Arc::new(transport(a.num("--max-udp")?)?));
    let ep = Endpoint::server(sc, listen)?;
    println!("listening on {}", ep.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;

    let mut tasks = Vec::new();
    for _ in 0..conns {
        let Some(inc) = ep.accept().await else { break };
        let file = file.clone();
        tasks.push(tokio::spawn(async move {
            let r: Res<u64> = async {
                let conn = inc.await?;
                let mut s = conn.open_uni().await?;
                let mut sent = 0u64;
                let mut buf = vec![0u8; 1 << 20];
                if let Some(path) = file {
                    let mut f = std::fs::File::open(path)?;
                    loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        s.write_all(&buf[..n]).await?;
                        sent += n as u64;
                    }
                } else {
                    // pseudo-random, so nothing downstream can compress it
                    let mut x = 0x9E37_79B9_7F4A_7C15u64;
                    for b in buf.chunks_mut(8) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
                    }
                    let total = bytes.unwrap_or(0);
                    while sent < total {
                        let n = (total - sent).min(buf.len() as u64) as usize;
                        s.write_all(&buf[..n]).await?;
                        sent += n as u64;
                    }
                }
                s.finish()?;
                // until the client has everything and closes (bounded by the idle timeout)
                let _ = s.stopped().await;
                conn.closed().await;
                Ok(sent)
            }
            .await;
            if let Err(e) = &r {
                eprintln!("quic-bench server: connection: {e}");
            }
            r
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    ep.wait_idle().await;
    Ok(())
}

async fn client(a: &Args) -> Res<()> {
    let addr: SocketAddr = a.need("--connect")?.parse()?;
    let cert = CertificateDer::from(std::fs::read(a.need("--cert")?)?);
    let expect = a.num("--expect")?;
    let timeout = Duration::from_secs(a.num("--timeout")?.unwrap_or(300));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut cc = ClientConfig::with_root_certificates(Arc::new(roots))?;
    cc.transport_config(Arc::new(transport(a.num("--max-udp")?)?));
    let bind: SocketAddr = if addr.is_ipv6() { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
    let mut ep = Endpoint::client(bind)?;
    ep.set_default_client_config(cc);

    let t0 = Instant::now();
    let work = async {
        let conn = ep.connect(addr, "localhost")?.await?;
        let hs = t0.elapsed().as_secs_f64();
        let mut r = conn.accept_uni().await?;
        let mut got = 0u64;
        while let Some(c) = r.read_chunk(usize::MAX, true).await? {
            got += c.bytes.len() as u64;
        }
        let secs = t0.elapsed().as_secs_f64();
        conn.close(VarInt::from_u32(0), b"done");
        Res::Ok((got, secs, hs))
    };
    let (got, secs, hs) = tokio::time::timeout(timeout, work).await.map_err(|_| "timed out")??;
    ep.wait_idle().await;
    println!(
        "{{\"bytes\":{got},\"seconds\":{secs:.6},\"MBps\":{:.1},\"handshake_s\":{hs:.6}}}",
        got as f64 / secs / 1e6
    );
    if let Some(e) = expect {
        if e != got {
            return Err(format!("expected {e} bytes, got {got}").into());
        }
    }
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let a = Args(argv);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let r = rt.block_on(async {
        match cmd.as_str() {
            "server" => server(&a).await,
            "client" => client(&a).await,
            _ => Err(USAGE.into()),
        }
    });
    if let Err(e) = r {
        eprintln!("quic-bench {cmd}: {e}");
        std::process::exit(1);
    }
}

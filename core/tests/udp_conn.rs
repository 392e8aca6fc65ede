//! Connections over real UDP on loopback, through the threaded driver: echo round
//! trips, a 64 MiB bulk transfer, 200 concurrent connections, half-close, refusal,
//! reset, non-blocking use with a readiness fd, and the kernel-fd bridge the shim uses.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use rgtp::conn::runtime::{flush_all, ListenerOptions, RgtpListener, RgtpStream, StreamOptions};
use rgtp::conn::ConnState;
use rgtp::keys::StaticKey;
use rgtp::sim::SimRng;

const T: Duration = Duration::from_secs(20);

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SimRng::new(seed);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn listener() -> (RgtpListener, SocketAddr) {
    let l = RgtpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Echoes every accepted connection until EOF, then half-closes.
fn echo_server(l: RgtpListener, conns: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut hs = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = l.accept().unwrap();
            hs.push(thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).unwrap();
                }
                s.close(T).unwrap();
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
    })
}

#[test]
fn echo_round_trips() {
    let (l, addr) = listener();
    let srv = echo_server(l, 1);
    let mut c = RgtpStream::connect(addr, T).unwrap();
    assert_eq!(c.state(), ConnState::Connected);
    let mut buf = [0u8; 4096];
    for i in 0..500usize {
        let msg = data(i as u64, 1 + (i * 37) % 3000);
        c.write_all(&msg).unwrap();
        c.read_exact(&mut buf[..msg.len()]).unwrap();
        assert_eq!(&buf[..msg.len()], &msg[..]);
    }
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.read(&mut buf).unwrap(), 0);
    srv.join().unwrap();
}

#[test]
fn bulk_64_mib_byte_exact() {
    let (l, addr) = listener();
    let total = 64 << 20;
    let srv = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0usize;
        loop {
            let k = s.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k;
        }
        s.write_all(h.finalize().as_bytes()).unwrap();
        s.close(T).unwrap();
        n
    });
    let payload = data(7, total);
    let start = Instant::now();
    let mut c = RgtpStream::connect(addr, T).unwrap();
    c.write_all(&payload).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut digest = Vec::new();
    c.read_to_end(&mut digest).unwrap();
    let took = start.elapsed();
    assert_eq!(srv.join().unwrap(), total);
    assert_eq!(digest, blake3::hash(&payload).as_bytes());
    let st = c.stats().unwrap();
    eprintln!(
        "64 MiB in {took:?} ({:.0} MB/s), resent {} B, datagrams out {}",
        total as f64 / took.as_secs_f64() / 1e6,
        st.stream_bytes_resent,
        st.datagrams_out
    );
}

#[test]
fn two_hundred_concurrent_connections() {
    let (l, addr) = listener();
    let n = 200;
    let srv = echo_server(l, n);
    // Open all 200 first, then exchange on all at once.
    let streams: Vec<RgtpStream> = (0..n)
        .map(|_| RgtpStream::connect(addr, T).unwrap())
        .collect();
    let hs: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            thread::spawn(move || {
                let msg = data(1000 + i as u64, 10_000 + i * 300);
                let w = {
                    let mut s2 = msg.clone();
                    let mut got = Vec::new();
                    // Write in pieces while reading, so neither side's window matters.
                    let mut off = 0;
                    let mut buf = vec![0u8; 8192];
                    while off < msg.len() {
                        let k = (msg.len() - off).min(3000);
                        s.write_all(&msg[off..off + k]).unwrap();
                        off += k;
                        let mut want = k;
                        while want > 0 {
                            let r = s.read(&mut buf[..want.min(8192)]).unwrap();
                            assert!(r > 0);
                            got.extend_from_slice(&buf[..r]);
                            want -= r;
                        }
                    }
                    s.shutdown(Shutdown::Write).unwrap();
                    assert_eq!(s.read(&mut buf).unwrap(), 0);
                    s2.clear();
                    got
                };
                assert!(w == msg, "connection {i} differs");
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    srv.join().unwrap();
}

#[test]
fn half_close_both_ways() {
    let (l, addr) = listener();
    let srv = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // Read the client's request to EOF, then answer at length.
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        assert_eq!(req, b"request");
        let body = data(5, 3 << 20);
        s.write_all(&body).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        s.wait_acked(T).unwrap();
        // Half-closed by the server now; the client still writes after that.
        let mut tail = Vec::new();
        s.read_to_end(&mut tail).unwrap();
        tail
    });
    let mut c = RgtpStream::connect(addr, T).unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    // Writes after our own shutdown fail.
    assert_eq!(c.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    let mut body = Vec::new();
    c.read_to_end(&mut body).unwrap();
    assert_eq!(body, data(5, 3 << 20));
    assert_eq!(srv.join().unwrap(), b"");
}

#[test]
fn server_half_closes_first_client_keeps_writing() {
    let (l, addr) = listener();
    let srv = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"banner").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut c = RgtpStream::connect(addr, T).unwrap();
    let mut banner = Vec::new();
    c.read_to_end(&mut banner).unwrap();
    assert_eq!(banner, b"banner");
    let body = data(6, 2 << 20);
    c.write_all(&body).unwrap();
    c.close(T).unwrap();
    assert_eq!(srv.join().unwrap(), body);
}

#[test]
fn refused_quickly() {
    // Nothing bound at all: ICMP port unreachable.
    let port = {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        u.local_addr().unwrap()
    };
    let start = Instant::now();
    let e = RgtpStream::connect(port, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // An RGTP socket that no longer listens: a REFUSE.
    let (l, addr) = listener();
    let (keep, _) = {
        let srv = thread::spawn(move || {
            let a = l.accept().unwrap();
            drop(l);
            a
        });
        let c = RgtpStream::connect(addr, T).unwrap();
        (srv.join().unwrap(), c)
    };
    let start = Instant::now();
    let e = RgtpStream::connect(addr, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(start.elapsed() < Duration::from_secs(1));
    drop(keep);
}

#[test]
fn abort_resets_peer() {
    let (l, addr) = listener();
    let srv = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 100];
        s.read_exact(&mut buf).unwrap();
        s.abort();
    });
    let mut c = RgtpStream::connect(addr, T).unwrap();
    c.write_all(&[1u8; 100]).unwrap();
    srv.join().unwrap();
    let mut buf = [0u8; 10];
    let e = c.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    assert_eq!(
        c.write(b"x").unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );
}

#[test]
fn pinned_key_and_nonblocking_with_readiness_fd() {
    let key = StaticKey::generate();
    let l = RgtpListener::bind_with(
        "127.0.0.1:0",
        ListenerOptions {
            key: Some(key.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let addr = l.local_addr().unwrap();
    assert_eq!(l.public_key(), key.public);
    let srv = echo_server(l, 1);
    let wrong = RgtpStream::connect_with(
        addr,
        T,
        StreamOptions {
            server_key: Some([1; 32]),
            config: None,
        },
    )
    .unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::PermissionDenied);
    let mut c = RgtpStream::connect_nonblocking(
        addr,
        StreamOptions {
            server_key: Some(key.public),
            config: None,
        },
    )
    .unwrap();
    c.set_nonblocking(true).unwrap();
    let fd = c.readiness_fd().unwrap();
    let poll = |fd| {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 5000) }
    };
    // Connecting: writes would block; the fd signals completion.
    loop {
        assert_eq!(poll(fd), 1);
        c.clear_readiness();
        if c.state() == ConnState::Connected {
            break;
        }
    }
    assert_eq!(c.peer_key(), Some(key.public));
    let msg = data(9, 100_000);
    let mut off = 0;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut shut = false;
    loop {
        c.clear_readiness();
        while off < msg.len() {
            match c.write(&msg[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        if off == msg.len() && !shut {
            c.shutdown(Shutdown::Write).unwrap();
            shut = true;
        }
        let mut eof = false;
        loop {
            match c.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        if eof {
            break;
        }
        assert_eq!(poll(fd), 1, "no readiness within 5 s");
    }
    assert_eq!(got, msg);
    srv.join().unwrap();
}

/// The shim's path: both applications talk to kernel fds; bridges carry the bytes.
#[test]
fn bridge_carries_bytes_and_eof_both_ways() {
    let (l, addr) = listener();
    let srv = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let (app, h) = s.bridge_socketpair().unwrap();
        let mut app = std::os::unix::net::UnixStream::from(app);
        // A server app: reads the request to EOF, answers, closes.
        let mut req = Vec::new();
        app.read_to_end(&mut req).unwrap();
        app.write_all(&req).unwrap();
        app.write_all(b"-done").unwrap();
        drop(app);
        h.wait(T)
    });
    let c = RgtpStream::connect_nonblocking(addr, StreamOptions::default()).unwrap();
    let (app, h) = c.bridge_socketpair().unwrap();
    h.wait_connected(T).unwrap();
    let mut app = std::os::unix::net::UnixStream::from(app);
    let req = data(11, 5 << 20);
    let w = {
        let mut a2 = app.try_clone().unwrap();
        let req = req.clone();
        thread::spawn(move || {
            a2.write_all(&req).unwrap();
            a2.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut resp = Vec::new();
    app.read_to_end(&mut resp).unwrap();
    w.join().unwrap();
    let mut want = req.clone();
    want.extend_from_slice(b"-done");
    assert!(resp == want, "{} vs {}", resp.len(), want.len());
    drop(app);
    let st = h.wait(T);
    assert!(st.done && st.connected && st.error.is_none(), "{st:?}");
    let sst = srv.join().unwrap();
    assert!(sst.done && sst.error.is_none(), "{sst:?}");
    assert!(flush_all(T));
}

/// A reset on one side reaches the other application's kernel fd as ECONNRESET when
/// that fd is a TCP connection.
#[test]
fn bridge_maps_reset_to_tcp_rst() {
    let (l, addr) = listener();
    let srv = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        s.abort();
    });
    // The application's fd is a loopback TCP connection; the bridge holds the other end.
    let tl = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut app = TcpStream::connect(tl.local_addr().unwrap()).unwrap();
    let (ours, _) = tl.accept().unwrap();
    let c = RgtpStream::connect(addr, T).unwrap();
    let h = c.bridge(OwnedFd::from(ours)).unwrap();
    app.write_all(b"hello").unwrap();
    srv.join().unwrap();
    let mut buf = [0u8; 16];
    app.set_read_timeout(Some(T)).unwrap();
    let e = app.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    let st = h.wait(T);
    assert_eq!(st.error, Some(ErrorKind::ConnectionReset));
    let _ = app.as_raw_fd();
}

/// An application that writes and exits at once (`nc -N`): flush_all waits until the
/// peer has every byte.
#[test]
fn flush_all_waits_for_delivery() {
    let (l, addr) = listener();
    let total = 8 << 20;
    let srv = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // A slow start on the reading side.
        thread::sleep(Duration::from_millis(200));
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.len()
    });
    let c = RgtpStream::connect(addr, T).unwrap();
    let (app, _h) = c.bridge_socketpair().unwrap();
    let mut app = std::os::unix::net::UnixStream::from(app);
    let body = data(12, total);
    let w = thread::spawn(move || {
        app.write_all(&body).unwrap();
        drop(app);
    });
    w.join().unwrap();
    assert!(flush_all(Duration::from_secs(30)));
    assert_eq!(srv.join().unwrap(), total);
}

//! Connections through the deterministic network simulator: loss, reordering,
//! duplication, corruption, blackouts, NAT rebinding, half-close, reset, refusal, idle
//! timeout, many connections and bounded memory. Applications are driven only by the
//! endpoint's events (edge-triggered, as a real driver would), so a missing event shows
//! up as a stalled test.

use std::collections::{BTreeSet, HashMap};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rgtp::conn::{ConnConfig, ConnId, ConnState, ConnectOptions, Endpoint, EndpointConfig, Event};
use rgtp::keys::StaticKey;
use rgtp::sim::{assert_same_trace, LinkConfig, SimNet, SimRng};

/// Added to every multi-seed test's seeds (`RGTP_SIM_SEED_BASE`), to explore more.
fn seed_base() -> u64 {
    std::env::var("RGTP_SIM_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SimRng::new(seed ^ 0xDA7A);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

#[derive(Debug, Clone, Default)]
struct AppSpec {
    /// Bytes to write.
    out: Vec<u8>,
    /// Shut the write side down once everything is written (and, when echoing, once
    /// EOF was read).
    shutdown: bool,
    /// Write back whatever is read.
    echo: bool,
    /// Slow reader: at most this many bytes per `read_every`.
    read_chunk: Option<usize>,
    read_every: Duration,
    /// Close (gracefully) once done instead of just shutting down.
    close_when_done: bool,
}

#[derive(Debug)]
struct App {
    node: usize,
    id: ConnId,
    spec: AppSpec,
    written: usize,
    shut: bool,
    got: Vec<u8>,
    eof: bool,
    read_err: Option<ErrorKind>,
    write_err: Option<ErrorKind>,
    closed: Option<Option<ErrorKind>>,
    connected_at: Option<Instant>,
    next_read: Option<Instant>,
    released: bool,
    max_send_buffered: usize,
    max_recv_buffered: u64,
}

impl App {
    fn new(node: usize, id: ConnId, spec: AppSpec) -> Self {
        App {
            node,
            id,
            spec,
            written: 0,
            shut: false,
            got: Vec::new(),
            eof: false,
            read_err: None,
            write_err: None,
            closed: None,
            connected_at: None,
            next_read: None,
            released: false,
            max_send_buffered: 0,
            max_recv_buffered: 0,
        }
    }
}

struct Node {
    /// Where the node's datagrams come from (changes on a NAT rebinding).
    external: SocketAddr,
    ep: Endpoint,
    /// Spec for connections accepted by this node.
    accept_spec: Option<AppSpec>,
}

struct World {
    net: SimNet,
    nodes: Vec<Node>,
    apps: Vec<App>,
    by_conn: HashMap<(usize, ConnId), usize>,
    wake: BTreeSet<usize>,
    scratch: Vec<u8>,
    /// Datagrams sent by this node are copied into `captured`.
    capture: Option<usize>,
    captured: Vec<Vec<u8>>,
}

fn server_addr() -> SocketAddr {
    "192.0.2.1:7000".parse().unwrap()
}

fn client_addr(i: usize) -> SocketAddr {
    format!("198.51.100.{}:{}", 1 + i % 250, 30000 + i)
        .parse()
        .unwrap()
}

fn conn_cfg() -> ConnConfig {
    ConnConfig {
        recv_window: 256 * 1024,
        ..Default::default()
    }
}

impl World {
    fn new(seed: u64, link: LinkConfig) -> Self {
        World {
            net: SimNet::new(seed, link),
            nodes: Vec::new(),
            apps: Vec::new(),
            by_conn: HashMap::new(),
            wake: BTreeSet::new(),
            scratch: vec![0; 256 * 1024],
            capture: None,
            captured: Vec::new(),
        }
    }

    /// A node with a static key of its own, drawn from the seed.
    fn add_node(&mut self, addr: SocketAddr, cfg: ConnConfig) -> usize {
        let key = self.net.static_key();
        self.add_node_keyed(addr, cfg, key)
    }

    fn add_node_keyed(&mut self, addr: SocketAddr, cfg: ConnConfig, key: StaticKey) -> usize {
        let mut ec = EndpointConfig::new(key);
        ec.conn = cfg;
        self.add_node_with(addr, ec)
    }

    /// Every node's endpoint draws from a stream of the simulation's seed, so a run
    /// reproduces from the seed alone.
    fn add_node_with(&mut self, addr: SocketAddr, ec: EndpointConfig) -> usize {
        let rng = self.net.machine_rng();
        self.nodes.push(Node {
            external: addr,
            ep: Endpoint::with_rng(ec, self.net.now, rng),
            accept_spec: None,
        });
        self.nodes.len() - 1
    }

    fn listen(&mut self, node: usize, spec: AppSpec) {
        self.nodes[node].ep.set_listening(true);
        self.nodes[node].accept_spec = Some(spec);
    }

    fn connect(&mut self, node: usize, to: SocketAddr, spec: AppSpec) -> usize {
        let now = self.net.now;
        let id = self.nodes[node].ep.connect(now, to).unwrap();
        self.add_app(node, id, spec)
    }

    fn add_app(&mut self, node: usize, id: ConnId, spec: AppSpec) -> usize {
        let i = self.apps.len();
        self.apps.push(App::new(node, id, spec));
        self.by_conn.insert((node, id), i);
        self.wake.insert(i);
        i
    }

    fn step_app(&mut self, i: usize) {
        let now = self.net.now;
        let app = &mut self.apps[i];
        if app.released {
            return;
        }
        let ep = &mut self.nodes[app.node].ep;
        let id = app.id;
        loop {
            let mut progress = false;
            while app.written < app.spec.out.len() && !app.shut && app.write_err.is_none() {
                match ep.write(id, &app.spec.out[app.written..]) {
                    Ok(n) => {
                        app.written += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => app.write_err = Some(e.kind()),
                }
            }
            app.max_send_buffered = app.max_send_buffered.max(ep.send_buffered(id).unwrap_or(0));
            let done_writing = app.written == app.spec.out.len() && (!app.spec.echo || app.eof);
            if done_writing && !app.shut && app.write_err.is_none() {
                if app.spec.close_when_done {
                    ep.close(now, id);
                    app.released = true;
                    app.shut = true;
                    return;
                }
                if app.spec.shutdown {
                    match ep.shutdown_write(now, id) {
                        Ok(()) => app.shut = true,
                        Err(e) => app.write_err = Some(e.kind()),
                    }
                }
            }
            let mut budget = match app.spec.read_chunk {
                Some(c) => {
                    if app.next_read.is_some_and(|t| now < t) {
                        0
                    } else {
                        app.next_read = Some(now + app.spec.read_every);
                        c
                    }
                }
                None => usize::MAX,
            };
            while budget > 0 && !app.eof && app.read_err.is_none() {
                let n = budget.min(self.scratch.len());
                match ep.read(id, &mut self.scratch[..n]) {
                    Ok(0) => app.eof = true,
                    Ok(n) => {
                        app.got.extend_from_slice(&self.scratch[..n]);
                        if app.spec.echo {
                            app.spec.out.extend_from_slice(&self.scratch[..n]);
                        }
                        budget -= n;
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => app.read_err = Some(e.kind()),
                }
            }
            app.max_recv_buffered = app.max_recv_buffered.max(ep.recv_buffered(id).unwrap_or(0));
            if !progress {
                break;
            }
        }
    }

    fn node_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.external == addr)
    }

    /// Runs until `until` is true, everything is quiet, or `limit` of virtual time.
    fn run(&mut self, limit: Duration, mut until: impl FnMut(&World) -> bool) {
        let end = self.net.now + limit;
        let mut iters = 0u64;
        loop {
            if until(self) || self.net.now >= end {
                return;
            }
            iters += 1;
            assert!(iters < 50_000_000, "simulation does not progress");
            if std::env::var_os("SIMDBG").is_some() && iters % 200_000 == 0 {
                eprintln!(
                    "iter {iters} t={:?} next_arrival={:?} timeouts={:?} apps={:?}",
                    self.net.now,
                    self.net.next_arrival(),
                    self.nodes
                        .iter_mut()
                        .map(|n| n.ep.poll_timeout())
                        .collect::<Vec<_>>(),
                    self.apps
                        .iter()
                        .map(|a| (a.written, a.got.len(), a.eof, a.closed))
                        .collect::<Vec<_>>()
                );
            }
            let now = self.net.now;
            while let Some(d) = self.net.pop_due() {
                if std::env::var_os("SIMDBG2").is_some() && d.data.len() > 1 && d.data[1] != 21 {
                    eprintln!(
                        "{:?} DELIVER {} -> {} type {} len {}",
                        now,
                        d.from,
                        d.to,
                        d.data[1],
                        d.data.len()
                    );
                }
                if let Some(n) = self.node_of(d.to) {
                    self.nodes[n].ep.handle(now, d.from, &d.data);
                }
            }
            for n in &mut self.nodes {
                if n.ep.poll_timeout().is_some_and(|t| t <= now) {
                    n.ep.handle_timeout(now);
                }
            }
            for ni in 0..self.nodes.len() {
                while let Some(id) = self.nodes[ni].ep.accept() {
                    let spec = self.nodes[ni].accept_spec.clone().unwrap_or_default();
                    self.add_app(ni, id, spec);
                }
            }
            for (i, a) in self.apps.iter().enumerate() {
                if a.next_read.is_some_and(|t| t <= now) {
                    self.wake.insert(i);
                }
            }
            // Events wake apps; apps' calls may produce more events: repeat.
            loop {
                for ni in 0..self.nodes.len() {
                    while let Some((id, ev)) = self.nodes[ni].ep.poll_event() {
                        if let Some(&i) = self.by_conn.get(&(ni, id)) {
                            match ev {
                                Event::Closed { error } => {
                                    assert!(self.apps[i].closed.is_none(), "two Closed events");
                                    self.apps[i].closed = Some(error);
                                }
                                Event::Connected => self.apps[i].connected_at = Some(now),
                                _ => {}
                            }
                            self.wake.insert(i);
                        }
                    }
                }
                if self.wake.is_empty() {
                    break;
                }
                let woken: Vec<usize> = std::mem::take(&mut self.wake).into_iter().collect();
                for i in woken {
                    self.step_app(i);
                }
            }
            for (ni, n) in self.nodes.iter_mut().enumerate() {
                let mut k = 0;
                while let Some(t) = n.ep.poll_transmit(now) {
                    k += 1;
                    assert!(k < 1_000_000, "endless transmits: {t:?}");
                    if std::env::var_os("SIMDBG2").is_some()
                        && t.contents.len() > 1
                        && t.contents[1] != 21
                    {
                        eprintln!(
                            "{:?} SEND {} -> {} type {} len {}",
                            now,
                            n.external,
                            t.dest,
                            t.contents[1],
                            t.contents.len()
                        );
                    }
                    if self.capture == Some(ni) {
                        // Intercepted: the genuine copies never arrive.
                        self.captured.extend(t.datagrams().map(|d| d.to_vec()));
                        continue;
                    }
                    self.net.send(n.external, &t);
                }
            }
            let mut next = self.net.next_arrival();
            for n in &mut self.nodes {
                if let Some(t) = n.ep.poll_timeout() {
                    next = Some(next.map_or(t, |x| x.min(t)));
                }
            }
            for a in &self.apps {
                if let Some(t) = a.next_read {
                    if !a.eof && a.read_err.is_none() {
                        next = Some(next.map_or(t, |x| x.min(t)));
                    }
                }
            }
            match next {
                Some(t) if t > now => self.net.advance_to(t.min(end)),
                Some(_) => self.net.advance_to(now + Duration::from_micros(1)),
                None => return,
            }
        }
    }

    fn run_until_all_closed(&mut self, limit: Duration) {
        self.run(limit, |w| w.apps.iter().all(|a| a.closed.is_some()));
    }
}

fn assert_exchange(w: &World, a: usize, b: usize, ab: &[u8], ba: &[u8], ctx: &str) {
    let (x, y) = (&w.apps[a], &w.apps[b]);
    assert!(
        y.got.len() == ab.len() && y.got == ab,
        "{ctx}: a→b got {} of {} bytes (eof {}, err {:?}/{:?}, closed {:?}/{:?})",
        y.got.len(),
        ab.len(),
        y.eof,
        y.read_err,
        x.write_err,
        x.closed,
        y.closed
    );
    assert!(
        x.got.len() == ba.len() && x.got == ba,
        "{ctx}: b→a got {} of {} bytes (eof {}, err {:?}, closed {:?})",
        x.got.len(),
        ba.len(),
        x.eof,
        x.read_err,
        x.closed
    );
    assert!(x.eof && y.eof, "{ctx}: EOF not seen ({} {})", x.eof, y.eof);
}

/// A client–server pair on `link` exchanging `up` bytes and `down` bytes, both
/// half-closing when done. Returns the world and the two apps.
/// The nodes of [`client_server`]'s world.
const SERVER: usize = 0;
const CLIENT: usize = 1;

/// A world with a server at `server_addr()` that listens, its accepted connections
/// running `server`, and a client at `client_addr(client)` connected to it, running
/// `client_spec`; both endpoints with `cfg`. Returns the world and the client's app
/// (the server's, once accepted, is app 1).
fn client_server(
    seed: u64,
    link: LinkConfig,
    cfg: ConnConfig,
    client: usize,
    server: AppSpec,
    client_spec: AppSpec,
) -> (World, usize) {
    let mut w = World::new(seed, link);
    let s = w.add_node(server_addr(), cfg.clone());
    let c = w.add_node(client_addr(client), cfg);
    w.listen(s, server);
    let ca = w.connect(c, server_addr(), client_spec);
    (w, ca)
}

fn pair(
    seed: u64,
    link: LinkConfig,
    up: usize,
    down: usize,
) -> (World, usize, usize, Vec<u8>, Vec<u8>) {
    let up_data = data(seed, up);
    let down_data = data(seed + 1, down);
    let (w, ca) = client_server(
        seed,
        link,
        conn_cfg(),
        1,
        AppSpec {
            out: down_data.clone(),
            shutdown: true,
            ..Default::default()
        },
        AppSpec {
            out: up_data.clone(),
            shutdown: true,
            ..Default::default()
        },
    );
    (w, ca, 1, up_data, down_data)
}

#[test]
fn clean_exchange_both_directions() {
    let (mut w, ca, sa, up, down) = pair(1, LinkConfig::default(), 3 << 20, 1 << 20);
    w.run_until_all_closed(Duration::from_secs(60));
    assert_exchange(&w, ca, sa, &up, &down, "clean");
    for a in &w.apps {
        assert_eq!(a.closed, Some(None), "graceful close: {a:?}");
    }
    let st = w.nodes[1].ep.conn_stats(w.apps[ca].id).unwrap();
    assert_eq!(st.stream_bytes_resent, 0, "{st:?}");
}

#[test]
fn tiny_and_empty_streams() {
    for (seed, up, down) in [
        (2u64, 0usize, 0usize),
        (3, 1, 0),
        (4, 0, 1),
        (5, 1, 1),
        (6, 1199, 1201),
    ] {
        let (mut w, ca, sa, u, d) = pair(seed, LinkConfig::default(), up, down);
        w.run_until_all_closed(Duration::from_secs(30));
        assert_exchange(&w, ca, sa, &u, &d, &format!("seed {seed}"));
    }
}

fn hostile_link(r: &mut SimRng, max_loss: f64) -> LinkConfig {
    LinkConfig {
        delay: Duration::from_millis(1 + r.below(40)),
        jitter: Duration::from_millis(r.below(10)),
        loss: r.f64() * max_loss,
        duplicate: r.f64() * 0.05,
        corrupt: r.f64() * 0.02,
        mtu: 1500,
        rate: if r.chance(0.5) {
            2_000_000 + r.below(20_000_000)
        } else {
            0
        },
        queue_bytes: 256 * 1024,
    }
}

/// Many seeds of loss up to 20 %, reordering, duplication and corruption; echo in both
/// directions, byte-exact.
#[test]
fn hostile_networks_many_seeds() {
    let seeds = std::env::var("RGTP_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40u64);
    let mut lost = 0;
    let mut corrupted = 0;
    for seed in seed_base()..seed_base() + seeds {
        let mut r = SimRng::new(seed * 6007 + 3);
        let link = hostile_link(&mut r, 0.20);
        let up = r.below(400_000) as usize;
        let down = r.below(400_000) as usize;
        let (mut w, ca, sa, u, d) = pair(seed + 100, link.clone(), up, down);
        let start = w.net.now;
        w.run_until_all_closed(Duration::from_secs(900));
        let ctx = format!(
            "seed {seed} link {link:?} up {up} down {down} net {:?}",
            w.net.stats
        );
        if std::env::var_os("SIMDBG").is_some() {
            eprintln!(
                "seed {seed}: loss {:.3} delay {:?} rate {} up {up} down {down} took {:?} client {:?}",
                link.loss,
                link.delay,
                link.rate,
                w.net.now - start,
                w.nodes[1].ep.conn_stats(w.apps[ca].id)
            );
        }
        assert_exchange(&w, ca, sa, &u, &d, &ctx);
        for a in &w.apps {
            assert_eq!(a.closed, Some(None), "{ctx}: {a:?}");
        }
        lost += w.net.stats.lost;
        corrupted += w.net.stats.corrupted;
    }
    assert!(lost > 500 && corrupted > 10, "{lost} {corrupted}");
}

/// Echo server; the client sends messages and checks every byte comes back.
#[test]
fn echo_under_loss_many_seeds() {
    for seed in seed_base()..seed_base() + 12 {
        let mut r = SimRng::new(seed + 77);
        let link = hostile_link(&mut r, 0.20);
        let msg = data(seed, 50_000 + r.below(200_000) as usize);
        let (mut w, ca) = client_server(
            seed,
            link.clone(),
            conn_cfg(),
            2,
            AppSpec {
                echo: true,
                shutdown: true,
                ..Default::default()
            },
            AppSpec {
                out: msg.clone(),
                shutdown: true,
                ..Default::default()
            },
        );
        w.run_until_all_closed(Duration::from_secs(900));
        assert_eq!(w.apps[ca].got, msg, "seed {seed} {link:?}");
        assert_eq!(w.apps[1].got, msg);
        assert_eq!(w.apps[ca].closed, Some(None));
    }
}

/// 60 s of total blackout in the middle of a transfer: it completes afterwards, and the
/// outage costs a trickle of probes, not a flood.
#[test]
fn blackout_60s_mid_transfer() {
    let link = LinkConfig {
        delay: Duration::from_millis(20),
        ..Default::default()
    };
    let (mut w, ca, sa, up, down) = pair(21, link, 4 << 20, 2 << 20);
    w.run(Duration::from_secs(60), |w| {
        w.apps.len() == 2 && w.apps[1].got.len() > (1 << 20)
    });
    let t = w.net.now;
    w.net.blackouts.push((t, t + Duration::from_secs(60)));
    // What the windows held when the link died goes out in the first round trips (as
    // a TCP flow's congestion window would); after that, a trickle.
    w.run(Duration::from_secs(2), |_| false);
    let sent_before = w.net.stats.sent;
    w.run(Duration::from_secs(57), |_| false);
    let during = w.net.stats.sent - sent_before;
    assert!(during < 100, "{during} datagrams sent into the blackout");
    w.run_until_all_closed(Duration::from_secs(300));
    assert_exchange(&w, ca, sa, &up, &down, "blackout");
    assert!(
        w.net.now - t < Duration::from_secs(75),
        "slow recovery: {:?}",
        w.net.now - t
    );
}

/// The client's NAT mapping changes mid-transfer (new address and port): the server
/// validates the new path and the transfer carries on, in both directions.
#[test]
fn nat_rebinding_mid_transfer() {
    for seed in seed_base()..seed_base() + 4 {
        let link = LinkConfig {
            delay: Duration::from_millis(5 + (seed % 4) * 5),
            loss: (seed % 4) as f64 * 0.03,
            ..Default::default()
        };
        let (mut w, ca, sa, up, down) = pair(30 + seed, link, 3 << 20, 3 << 20);
        w.run(Duration::from_secs(60), |w| {
            w.apps.len() == 2 && w.apps[1].got.len() > (1 << 20) && w.apps[0].got.len() > (1 << 20)
        });
        assert!(w.apps[0].closed.is_none());
        let new_addr: SocketAddr = "203.0.113.9:45000".parse().unwrap();
        w.nodes[1].external = new_addr;
        w.run_until_all_closed(Duration::from_secs(120));
        assert_exchange(&w, ca, sa, &up, &down, &format!("rebinding seed {seed}"));
        let sid = w.apps[sa].id;
        assert_eq!(w.nodes[0].ep.peer_addr(sid), Some(new_addr));
        assert!(w.nodes[0].ep.conn_stats(sid).unwrap().migrations >= 1);
    }
}

/// A download whose reader's own address changes (a new IP, or a NAT rebinding while
/// it only receives): everything sent to the old address is lost and the reader has
/// nothing of its own to send. It must speak up by itself, so the writer sees the new
/// address and moves there, rather than wait for a keepalive (15 s).
#[test]
fn reader_address_change_mid_download() {
    for seed in seed_base()..seed_base() + 4 {
        let link = LinkConfig {
            delay: Duration::from_millis(5 + (seed % 4) * 5),
            loss: (seed % 4) as f64 * 0.02,
            rate: 5_000_000,
            ..Default::default()
        };
        let (mut w, ca, sa, up, down) = pair(50 + seed, link, 0, 6 << 20);
        w.run(Duration::from_secs(60), |w| {
            w.apps.len() == 2 && w.apps[ca].got.len() > (1 << 20)
        });
        let (t, got) = (w.net.now, w.apps[ca].got.len());
        let new_addr: SocketAddr = "203.0.113.10:45001".parse().unwrap();
        w.nodes[1].external = new_addr;
        w.run(Duration::from_secs(30), |w| {
            w.apps[ca].got.len() > got + (512 << 10)
        });
        let stall = w.net.now - t;
        assert!(
            stall < Duration::from_secs(2),
            "seed {seed}: the download stalled {stall:?} after the reader moved"
        );
        w.run_until_all_closed(Duration::from_secs(120));
        assert_exchange(
            &w,
            ca,
            sa,
            &up,
            &down,
            &format!("reader moved, seed {seed}"),
        );
        let sid = w.apps[sa].id;
        assert_eq!(w.nodes[0].ep.peer_addr(sid), Some(new_addr));
    }
}

/// A spoofed packet copy from another address does not move the connection: the path
/// check fails there and traffic stays on the real path.
#[test]
fn path_is_not_hijacked_by_a_replayed_packet() {
    let (mut w, ca, sa, up, down) = pair(40, LinkConfig::default(), 1 << 20, 1 << 20);
    w.run(Duration::from_secs(10), |w| {
        w.apps.len() == 2 && w.apps[1].got.len() > 100_000
    });
    // An on-path attacker intercepts client datagrams and forwards them from its own
    // address (the genuine copies are lost).
    let attacker: SocketAddr = "203.0.113.66:666".parse().unwrap();
    w.capture = Some(1);
    w.run(Duration::from_secs(10), |w| !w.captured.is_empty());
    w.capture = None;
    for d in std::mem::take(&mut w.captured) {
        w.net.send_one(attacker, server_addr(), d);
    }
    w.run_until_all_closed(Duration::from_secs(60));
    assert_exchange(&w, ca, sa, &up, &down, "hijack");
    let sid = w.apps[sa].id;
    assert_eq!(w.nodes[0].ep.peer_addr(sid), Some(client_addr(1)));
    assert_eq!(w.nodes[0].ep.conn_stats(sid).unwrap().migrations, 0);
}

/// Half-close both ways: one side finishes writing, the other reads EOF yet keeps
/// writing for a long time after, and vice versa.
#[test]
fn half_close_both_ways() {
    for client_first in [true, false] {
        let small = data(1, 1000);
        let big = data(2, 2 << 20);
        let (cs, ss) = if client_first {
            (small.clone(), big.clone())
        } else {
            (big.clone(), small.clone())
        };
        let (mut w, ca) = client_server(
            50,
            LinkConfig::default(),
            conn_cfg(),
            3,
            AppSpec {
                out: Vec::new(),
                ..Default::default()
            },
            AppSpec {
                out: if client_first { cs.clone() } else { Vec::new() },
                shutdown: client_first,
                ..Default::default()
            },
        );
        w.run(Duration::from_secs(10), |w| w.apps.len() == 2);
        let sa = 1;
        // The server starts writing only after it saw EOF from the client (or the client
        // only after EOF from the server), proving a half-closed side still receives.
        if client_first {
            w.run(Duration::from_secs(10), |w| w.apps[sa].eof);
            assert!(w.apps[sa].eof && w.apps[sa].got == cs);
            w.apps[sa].spec.out = ss.clone();
            w.apps[sa].spec.shutdown = true;
            w.wake.insert(sa);
        } else {
            w.apps[sa].spec.out = ss.clone();
            w.apps[sa].spec.shutdown = true;
            w.wake.insert(sa);
            w.run(Duration::from_secs(10), |w| w.apps[ca].eof);
            assert!(w.apps[ca].eof && w.apps[ca].got == ss);
            w.apps[ca].spec.out = cs.clone();
            w.apps[ca].spec.shutdown = true;
            w.wake.insert(ca);
        }
        w.run_until_all_closed(Duration::from_secs(60));
        assert_exchange(
            &w,
            ca,
            sa,
            &cs,
            &ss,
            &format!("client_first {client_first}"),
        );
        assert_eq!(w.apps[ca].closed, Some(None));
        assert_eq!(w.apps[sa].closed, Some(None));
    }
}

/// abort() resets: the peer's reads fail with ConnectionReset (after whatever arrived
/// in order before), and so do its writes.
#[test]
fn reset_fails_peer_reads_and_writes() {
    for seed in seed_base()..seed_base() + 6 {
        let link = LinkConfig {
            delay: Duration::from_millis(10),
            loss: if seed % 2 == 0 { 0.0 } else { 0.1 },
            ..Default::default()
        };
        // The server writes forever (until it fails); the client aborts after 100 KB.
        let (mut w, ca) = client_server(
            60 + seed,
            link,
            conn_cfg(),
            4,
            AppSpec {
                out: data(seed, 64 << 20),
                ..Default::default()
            },
            AppSpec::default(),
        );
        w.run(Duration::from_secs(30), |w| {
            w.apps.len() == 2 && w.apps[ca].got.len() > 100_000
        });
        let now = w.net.now;
        let id = w.apps[ca].id;
        w.nodes[CLIENT].ep.abort(now, id);
        w.apps[ca].released = true;
        w.run(Duration::from_secs(60), |w| w.apps[1].write_err.is_some());
        let sa = &w.apps[1];
        assert_eq!(
            sa.write_err,
            Some(ErrorKind::ConnectionReset),
            "seed {seed}"
        );
        assert_eq!(sa.closed, Some(Some(ErrorKind::ConnectionReset)));
        // Reads fail too (the client wrote nothing, so no data comes first).
        let sid = sa.id;
        let mut buf = [0u8; 10];
        assert_eq!(
            w.nodes[SERVER].ep.read(sid, &mut buf).unwrap_err().kind(),
            ErrorKind::ConnectionReset
        );
        // Fast: about one round trip, not a timeout.
        assert!(
            w.net.now - now < Duration::from_secs(3),
            "{:?}",
            w.net.now - now
        );
    }
    // The reader side: bytes that arrived before the reset are delivered, then the error.
    let (mut w, ca) = client_server(
        70,
        LinkConfig::default(),
        conn_cfg(),
        5,
        AppSpec::default(),
        AppSpec {
            out: data(3, 5000),
            ..Default::default()
        },
    );
    w.run(Duration::from_secs(10), |w| {
        w.apps.len() == 2 && w.apps[1].got.len() == 5000
    });
    let now = w.net.now;
    let id = w.apps[ca].id;
    w.nodes[CLIENT].ep.abort(now, id);
    w.run(Duration::from_secs(10), |w| w.apps[1].read_err.is_some());
    assert_eq!(w.apps[1].read_err, Some(ErrorKind::ConnectionReset));
    assert_eq!(w.apps[1].got, data(3, 5000));
}

/// A connection attempt to an endpoint that does not listen is refused at once, with a
/// reply smaller than the request.
#[test]
fn refused_when_nobody_listens() {
    let mut w = World::new(80, LinkConfig::default());
    let s = w.add_node(server_addr(), conn_cfg());
    let c = w.add_node(client_addr(6), conn_cfg());
    let start = w.net.now;
    let ca = w.connect(c, server_addr(), AppSpec::default());
    w.run(Duration::from_secs(30), |w| w.apps[ca].closed.is_some());
    assert_eq!(w.apps[ca].closed, Some(Some(ErrorKind::ConnectionRefused)));
    assert!(
        w.net.now - start < Duration::from_millis(50),
        "{:?}",
        w.net.now - start
    );
    assert_eq!(
        w.nodes[c].ep.state(w.apps[ca].id),
        Some(ConnState::Closed {
            error: Some(ErrorKind::ConnectionRefused)
        })
    );
    let mut buf = [0u8; 4];
    assert_eq!(
        w.nodes[c]
            .ep
            .read(w.apps[ca].id, &mut buf)
            .unwrap_err()
            .kind(),
        ErrorKind::ConnectionRefused
    );
    assert_eq!(w.nodes[s].ep.stats.refusals_sent, 1);
    assert!(w.nodes[s].ep.stats.control_bytes_out < 20);
    // The driver's ICMP path: port unreachable while connecting.
    let now = w.net.now;
    let other: SocketAddr = "192.0.2.77:9".parse().unwrap();
    let id = w.nodes[c].ep.connect(now, other).unwrap();
    w.nodes[c].ep.handle_unreachable(now, other);
    assert_eq!(
        w.nodes[c].ep.state(id),
        Some(ConnState::Closed {
            error: Some(ErrorKind::ConnectionRefused)
        })
    );
}

/// Nothing answers at all: the attempt times out with TimedOut after the handshake
/// timeout, never hanging.
#[test]
fn connect_to_silence_times_out() {
    let mut w = World::new(81, LinkConfig::default());
    let cfg = ConnConfig {
        handshake_timeout: Duration::from_secs(3),
        ..conn_cfg()
    };
    let c = w.add_node(client_addr(7), cfg);
    let start = w.net.now;
    let ca = w.connect(c, "192.0.2.200:1".parse().unwrap(), AppSpec::default());
    w.run(Duration::from_secs(30), |w| w.apps[ca].closed.is_some());
    assert_eq!(w.apps[ca].closed, Some(Some(ErrorKind::TimedOut)));
    let took = w.net.now - start;
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

/// A quiet but live connection survives many idle timeouts (keepalives); once the peer
/// disappears it fails with TimedOut after the idle timeout.
#[test]
fn idle_timeout_and_keepalive() {
    let cfg = ConnConfig {
        idle_timeout: Duration::from_secs(5),
        ..conn_cfg()
    };
    let (mut w, ca) = client_server(
        90,
        LinkConfig::default(),
        cfg,
        8,
        AppSpec::default(),
        AppSpec {
            out: b"hello".to_vec(),
            ..Default::default()
        },
    );
    w.run(Duration::from_secs(60), |_| false);
    assert!(w.apps[ca].closed.is_none() && w.apps[1].closed.is_none());
    assert_eq!(w.apps[1].got, b"hello");
    // The server vanishes (its datagrams and those to it are lost from now on).
    let t = w.net.now;
    w.net.blackouts.push((t, t + Duration::from_secs(3600)));
    w.run(Duration::from_secs(60), |w| w.apps[ca].closed.is_some());
    assert_eq!(w.apps[ca].closed, Some(Some(ErrorKind::TimedOut)));
    let took = w.net.now - t;
    assert!(took <= Duration::from_secs(6), "{took:?}");
    let mut buf = [0u8; 4];
    assert_eq!(
        w.nodes[CLIENT]
            .ep
            .read(w.apps[ca].id, &mut buf)
            .unwrap_err()
            .kind(),
        ErrorKind::TimedOut
    );
    assert_eq!(
        w.nodes[CLIENT]
            .ep
            .write(w.apps[ca].id, b"x")
            .unwrap_err()
            .kind(),
        ErrorKind::TimedOut
    );
}

/// 200 concurrent connections on one listener (from 40 client endpoints), each echoing
/// its own data, all byte-exact.
#[test]
fn two_hundred_connections_one_listener() {
    let link = LinkConfig {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(1),
        loss: 0.01,
        ..Default::default()
    };
    let mut w = World::new(100, link);
    let cfg = ConnConfig {
        recv_window: 64 * 1024,
        ..conn_cfg()
    };
    let s = w.add_node(server_addr(), cfg.clone());
    w.listen(
        s,
        AppSpec {
            echo: true,
            shutdown: true,
            ..Default::default()
        },
    );
    let mut clients = Vec::new();
    for i in 0..40 {
        clients.push(w.add_node(client_addr(100 + i), cfg.clone()));
    }
    let mut msgs = Vec::new();
    for i in 0..200usize {
        let msg = data(i as u64, 1000 + (i * 7919) % 40_000);
        let a = w.connect(
            clients[i % 40],
            server_addr(),
            AppSpec {
                out: msg.clone(),
                shutdown: true,
                ..Default::default()
            },
        );
        msgs.push((a, msg));
    }
    w.run_until_all_closed(Duration::from_secs(120));
    assert_eq!(w.apps.len(), 400);
    for (a, msg) in &msgs {
        let app = &w.apps[*a];
        assert!(
            app.got == *msg,
            "conn {a}: {} of {} bytes",
            app.got.len(),
            msg.len()
        );
        assert_eq!(app.closed, Some(None));
    }
    assert_eq!(w.nodes[s].ep.stats.handshakes_completed, 200);
}

/// A slow reader bounds the writer: its buffered bytes never exceed the reader's
/// window, and the reader's never do either; everything still arrives.
#[test]
fn slow_reader_bounds_memory() {
    let window = 64 * 1024u64;
    let cfg = ConnConfig {
        recv_window: window,
        ..conn_cfg()
    };
    let total = 2 << 20;
    let msg = data(5, total);
    let (mut w, ca) = client_server(
        110,
        LinkConfig::default(),
        cfg,
        9,
        AppSpec {
            read_chunk: Some(4096),
            read_every: Duration::from_millis(10),
            ..Default::default()
        },
        AppSpec {
            out: msg.clone(),
            shutdown: true,
            ..Default::default()
        },
    );
    w.run(Duration::from_secs(600), |w| {
        w.apps.len() == 2 && w.apps[1].eof
    });
    assert_eq!(w.apps[1].got, msg);
    let wr = &w.apps[ca];
    assert!(
        wr.max_send_buffered as u64 <= window,
        "writer buffered {}",
        wr.max_send_buffered
    );
    assert!(
        wr.max_send_buffered as u64 > window / 2,
        "the window was never used?"
    );
    let rd = &w.apps[1];
    assert!(
        rd.max_recv_buffered <= window,
        "reader buffered {}",
        rd.max_recv_buffered
    );
    let st = w.nodes[CLIENT].ep.conn_stats(wr.id).unwrap();
    assert!(st.max_send_buffered <= window);
    // Paced by the reader: 2 MiB at 400 KB/s takes about 5 s.
    assert!(w.net.now - w.apps[1].connected_at.unwrap_or(w.net.now) < Duration::from_secs(600));
}

/// close() reports Closed{None} only once the peer acknowledged everything; on a link
/// that loses everything after the close, it reports TimedOut after the linger time.
#[test]
fn close_with_linger() {
    let cfg = ConnConfig {
        linger: Duration::from_secs(5),
        ..conn_cfg()
    };
    let link = LinkConfig {
        delay: Duration::from_millis(50),
        ..Default::default()
    };
    let msg = data(7, 500_000);
    let (mut w, ca) = client_server(
        120,
        link.clone(),
        cfg.clone(),
        10,
        AppSpec::default(),
        AppSpec {
            out: msg.clone(),
            close_when_done: true,
            ..Default::default()
        },
    );
    w.run(Duration::from_secs(30), |w| w.apps[ca].closed.is_some());
    assert_eq!(w.apps[ca].closed, Some(None));
    // By then the server has every byte.
    assert!(
        w.nodes[SERVER].ep.recv_buffered(w.apps[1].id).unwrap() as usize + w.apps[1].got.len()
            >= msg.len()
    );
    w.run(Duration::from_secs(10), |w| w.apps[1].eof);
    assert_eq!(w.apps[1].got, msg);

    // Now the link dies right after close: linger expires.
    let (mut w, ca) = client_server(121, link, cfg, 11, AppSpec::default(), AppSpec::default());
    w.run(Duration::from_secs(5), |w| w.apps.len() == 2);
    let now = w.net.now;
    let id = w.apps[ca].id;
    w.nodes[CLIENT].ep.write(id, &data(8, 100_000)).unwrap();
    w.nodes[CLIENT].ep.close(now, id);
    w.apps[ca].released = true;
    w.net.blackouts.push((now, now + Duration::from_secs(3600)));
    w.run(Duration::from_secs(30), |w| w.apps[ca].closed.is_some());
    assert_eq!(w.apps[ca].closed, Some(Some(ErrorKind::TimedOut)));
    let took = w.net.now - now;
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

/// The first end to close, having read everything, waits for the other's FIN (TCP's
/// FIN_WAIT_2): both closes end cleanly, whichever comes first and however late the
/// second. A peer that writes after the other closed is reset: nobody will read it.
#[test]
fn close_waits_for_the_peers_close_and_resets_only_a_writer() {
    let link = LinkConfig {
        delay: Duration::from_millis(20),
        ..Default::default()
    };
    for writes_after in [false, true] {
        let msg = data(12, 50_000);
        let (mut w, ca) = client_server(
            122,
            link.clone(),
            conn_cfg(),
            14,
            AppSpec {
                out: msg.clone(),
                close_when_done: true,
                ..Default::default()
            },
            AppSpec::default(),
        );
        w.run(Duration::from_secs(10), |w| w.apps[ca].eof);
        assert_eq!(w.apps[ca].got, msg);
        let sa = (0..w.apps.len()).find(|&i| i != ca).expect("server app");
        // The server's close is done; the client takes its time.
        w.run(Duration::from_secs(1), |_| false);
        assert_eq!(
            w.apps[sa].closed, None,
            "the server waits for the client's FIN"
        );
        let (now, id) = (w.net.now, w.apps[ca].id);
        if writes_after {
            w.nodes[CLIENT].ep.write(id, &data(13, 1000)).unwrap();
            w.run(Duration::from_secs(5), |w| w.apps[ca].closed.is_some());
            assert_eq!(
                w.apps[ca].closed,
                Some(Some(ErrorKind::ConnectionReset)),
                "a write after the peer's close is reset"
            );
        } else {
            w.nodes[CLIENT].ep.close(now, id);
            w.apps[ca].released = true;
            w.run(Duration::from_secs(5), |w| {
                w.apps[ca].closed.is_some() && w.apps[sa].closed.is_some()
            });
            assert_eq!(w.apps[ca].closed, Some(None), "client");
            assert_eq!(w.apps[sa].closed, Some(None), "server");
        }
    }
}

#[test]
fn retry_cookie_under_handshake_load() {
    let mut w = World::new(130, LinkConfig::default());
    let mut ec = EndpointConfig::new(w.net.static_key());
    ec.retry_threshold = 0;
    ec.conn = conn_cfg();
    let s = w.add_node_with(server_addr(), ec);
    let c = w.add_node(client_addr(12), conn_cfg());
    w.listen(
        s,
        AppSpec {
            echo: true,
            shutdown: true,
            ..Default::default()
        },
    );
    let msg = data(9, 10_000);
    let ca = w.connect(
        c,
        server_addr(),
        AppSpec {
            out: msg.clone(),
            shutdown: true,
            ..Default::default()
        },
    );
    w.run_until_all_closed(Duration::from_secs(30));
    assert_eq!(w.apps[ca].got, msg);
    assert!(w.nodes[s].ep.stats.retries_sent >= 1);
}

/// Pinning the server key: the wrong key fails the connection (PermissionDenied); the
/// right one works, and each side learns the other's static key.
#[test]
fn server_key_pinning() {
    let mut w = World::new(140, LinkConfig::default());
    let server_key = w.net.static_key();
    let client_key = w.net.static_key();
    let s = w.add_node_keyed(server_addr(), conn_cfg(), server_key.clone());
    let c = w.add_node_keyed(client_addr(13), conn_cfg(), client_key.clone());
    w.listen(s, AppSpec::default());
    let now = w.net.now;
    let bad = w.nodes[c]
        .ep
        .connect_with(
            now,
            server_addr(),
            ConnectOptions {
                server_key: Some([7; 32]),
                config: None,
            },
        )
        .unwrap();
    let a = w.add_app(c, bad, AppSpec::default());
    w.run(Duration::from_secs(5), |w| w.apps[a].closed.is_some());
    assert_eq!(w.apps[a].closed, Some(Some(ErrorKind::PermissionDenied)));
    let good = w.nodes[c]
        .ep
        .connect_with(
            now,
            server_addr(),
            ConnectOptions {
                server_key: Some(server_key.public),
                config: None,
            },
        )
        .unwrap();
    let b = w.add_app(c, good, AppSpec::default());
    w.run(Duration::from_secs(5), |w| {
        w.apps[b].connected_at.is_some() && w.apps.len() >= 3
    });
    assert_eq!(w.nodes[c].ep.peer_key(good), Some(server_key.public));
    let sid = w.apps.last().unwrap().id;
    assert_eq!(w.nodes[s].ep.peer_key(sid), Some(client_key.public));
}

/// The server restarts (same key, state lost): the client's next packet gets a
/// STATELESS_RESET and its connection fails with ConnectionReset quickly.
#[test]
fn stateless_reset_after_server_restart() {
    let mut w = World::new(150, LinkConfig::default());
    let key = w.net.static_key();
    let s = w.add_node_keyed(server_addr(), conn_cfg(), key.clone());
    let c = w.add_node(client_addr(14), conn_cfg());
    w.listen(s, AppSpec::default());
    let ca = w.connect(c, server_addr(), AppSpec::default());
    w.run(Duration::from_secs(5), |w| w.apps.len() == 2);
    let mut ec = EndpointConfig::new(key);
    ec.conn = conn_cfg();
    w.nodes[s].ep = Endpoint::with_rng(ec, w.net.now, w.net.machine_rng());
    let now = w.net.now;
    let id = w.apps[ca].id;
    w.nodes[c].ep.write(id, b"are you there?").unwrap();
    w.run(Duration::from_secs(10), |w| w.apps[ca].closed.is_some());
    assert_eq!(w.apps[ca].closed, Some(Some(ErrorKind::ConnectionReset)));
    assert!(w.net.now - now < Duration::from_millis(100));
    assert_eq!(w.nodes[s].ep.stats.stateless_resets_sent, 1);
}

/// Anti-amplification and stateless replies: a spoofed INIT makes the server send at
/// most 3x its size to the victim; REFUSE and RETRY are smaller than the INIT.
#[test]
fn no_amplification_toward_unvalidated_addresses() {
    let now = Instant::now();
    let mut server = Endpoint::new(EndpointConfig::new(StaticKey::generate()), now);
    server.set_listening(true);
    let mut client = Endpoint::new(EndpointConfig::new(StaticKey::generate()), now);
    let victim: SocketAddr = "203.0.113.7:9999".parse().unwrap();
    let _ = client.connect(now, server_addr()).unwrap();
    let init = client.poll_transmit(now).unwrap();
    let mut received = 0;
    let mut sent = 0;
    // The attacker replays the INIT many times from the victim's address.
    for _ in 0..20 {
        received += init.contents.len();
        server.handle(now, victim, &init.contents);
        while let Some(t) = server.poll_transmit(now) {
            assert_eq!(t.dest, victim);
            sent += t.contents.len();
        }
    }
    assert!(sent <= 3 * received, "{sent} > 3 x {received}");
    assert_eq!(server.half_open_count(), 1);
    let mut refusing = Endpoint::new(EndpointConfig::new(StaticKey::generate()), now);
    refusing.handle(now, victim, &init.contents);
    let r = refusing.poll_transmit(now).unwrap();
    assert!(r.contents.len() * 10 < init.contents.len());
    let mut ec = EndpointConfig::new(StaticKey::generate());
    ec.retry_threshold = 0;
    let mut retrying = Endpoint::new(ec, now);
    retrying.set_listening(true);
    retrying.handle(now, victim, &init.contents);
    let r = retrying.poll_transmit(now).unwrap();
    assert!(r.contents.len() < init.contents.len());
    assert_eq!(retrying.half_open_count(), 0, "RETRY keeps no state");
}

#[test]
fn garbage_datagrams_are_dropped_without_effect() {
    let (mut w, ca, sa, up, down) = pair(160, LinkConfig::default(), 200_000, 200_000);
    let mut r = SimRng::new(99);
    let now = w.net.now;
    for _ in 0..20_000 {
        let len = r.below(1400) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
        if len >= 2 && r.chance(0.7) {
            d[0] = 1;
            d[1] = 16 + r.below(8) as u8;
        }
        w.nodes[0].ep.handle(now, client_addr(77), &d);
        w.nodes[1].ep.handle(now, server_addr(), &d);
    }
    while w.nodes[0].ep.poll_transmit(now).is_some() {}
    while w.nodes[1].ep.poll_transmit(now).is_some() {}
    w.run_until_all_closed(Duration::from_secs(30));
    assert_exchange(&w, ca, sa, &up, &down, "garbage");
}

/// A long fat path, as the pull's goodput tests use: 40 ms RTT, 200 Mbit/s, a 50 ms
/// drop-tail queue, random loss in both directions.
fn long_fat_link(loss: f64) -> LinkConfig {
    LinkConfig {
        delay: Duration::from_millis(20),
        loss,
        rate: 25_000_000,
        queue_bytes: 1_250_000,
        ..Default::default()
    }
}

/// One connection's goodput (Mbit/s of stream bytes, server to client, from connect
/// to EOF) over `link` with the default configuration (as the shim uses it), and the
/// sender's stats.
fn conn_goodput(seed: u64, link: LinkConfig, size: usize) -> (f64, rgtp::conn::ConnStats) {
    let down = data(seed, size);
    let (mut w, ca) = client_server(
        seed,
        link,
        ConnConfig::default(),
        1,
        AppSpec {
            out: down.clone(),
            shutdown: true,
            ..Default::default()
        },
        AppSpec {
            shutdown: true,
            ..Default::default()
        },
    );
    let start = w.net.now;
    let trace = std::env::var_os("RGTP_SIM_TRACE").is_some();
    let mut next_print = start;
    w.run(Duration::from_secs(600), |w| {
        if trace && w.net.now >= next_print && w.apps.len() == 2 {
            next_print = w.net.now + Duration::from_millis(200);
            println!(
                "t={:.2} got={} | {}\n    reader: {}",
                (w.net.now - start).as_secs_f64(),
                w.apps[ca].got.len(),
                w.nodes[SERVER]
                    .ep
                    .conn_debug(w.apps[1].id)
                    .unwrap_or_default(),
                w.nodes[CLIENT]
                    .ep
                    .conn_debug(w.apps[ca].id)
                    .unwrap_or_default()
            );
        }
        w.apps[ca].eof
    });
    let secs = (w.net.now - start).as_secs_f64();
    assert_eq!(
        w.apps[ca].got.len(),
        size,
        "seed {seed}: incomplete after {secs:.1} s"
    );
    assert!(w.apps[ca].got == down, "seed {seed}: bytes differ");
    let st = w.nodes[SERVER]
        .ep
        .conn_stats(w.apps[1].id)
        .unwrap_or_default();
    println!("  link {:?}", w.net.stats);
    (size as f64 * 8.0 / secs / 1e6, st)
}

/// Goodput of one connection on the long fat path at 0/1/5/10 % loss in both
/// directions, as a fraction of the link (virtual time and fixed seeds: behaviour,
/// not timing).
#[test]
fn lossy_long_fat_link_goodput() {
    // Fractions of the 200 Mbit/s link, under what this gives (84/80/72/70 %; the pull
    // makes 85/83/75/70 % here). Before re-requests stopped doubling per attempt, the
    // rate model learnt of losses and the windows grew with the path: 77/75/37/10 %.
    for (loss, floor) in [(0.0, 0.80), (0.01, 0.76), (0.05, 0.66), (0.10, 0.62)] {
        if let Some(only) = std::env::var_os("RGTP_SIM_ONLY") {
            if only.to_str() != Some(&format!("{loss}")) {
                continue;
            }
        }
        let (mbps, st) = conn_goodput(21, long_fat_link(loss), 64 << 20);
        println!(
            "loss {loss}: {mbps:.1} Mbit/s ({:.0} % of the link) {st:?}",
            mbps / 2.0
        );
        assert!(
            mbps >= floor * 200.0,
            "loss {loss}: {mbps:.1} Mbit/s < {floor} of the link: {st:?}"
        );
    }
}

/// A lossy exchange with a NAT rebinding (so a path challenge) half-way: the trace of
/// every datagram sent, as `SimNet::trace` records it.
fn lossy_conn_trace(seed: u64) -> Vec<u64> {
    let link = LinkConfig {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(3),
        loss: 0.05,
        duplicate: 0.01,
        ..Default::default()
    };
    let (mut w, ca, sa, up, down) = pair(seed, link, 256 << 10, 256 << 10);
    w.net.record_trace();
    w.run(Duration::from_secs(60), |w| {
        w.apps.len() == 2 && w.apps[sa].got.len() > (64 << 10)
    });
    w.nodes[1].external = "203.0.113.9:45000".parse().unwrap();
    w.run_until_all_closed(Duration::from_secs(120));
    assert_exchange(&w, ca, sa, &up, &down, &format!("seed {seed}"));
    assert!(w.net.stats.lost > 0, "seed {seed}: the link lost nothing");
    let sid = w.apps[sa].id;
    assert!(w.nodes[0].ep.conn_stats(sid).unwrap().migrations >= 1);
    w.net.trace().to_vec()
}

/// Any failure reproduces from its seed: a seed run twice sends the same datagrams,
/// byte for byte, at the same virtual times (connection ids, Noise ephemerals, path
/// challenges, tokens and every timer included); another seed does not.
#[test]
fn a_seed_reproduces_its_run() {
    let a = lossy_conn_trace(77);
    assert!(a.len() > 100, "{} datagrams", a.len());
    assert_same_trace(&a, &lossy_conn_trace(77), "seed 77 twice");
    assert_ne!(a, lossy_conn_trace(78), "seeds 77 and 78 ran alike");
}

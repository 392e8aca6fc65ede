//! Finding an exposer by its root alone: a Mainline DHT of five nodes on loopback
//! (started by the test), the real rgtp-expose announcing into it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use rgtp_e2e::*;

fn dht_args(bootstrap: &[String]) -> Vec<String> {
    bootstrap
        .iter()
        .flat_map(|b| ["--dht-bootstrap".to_string(), b.clone()])
        .collect()
}

/// `rgtp-pull URL -o out --json` with only the DHT to find other sources (the URL's
/// exposer is gone): exits 0 with `out` equal to `file`; returns the report.
fn pull_through_dht(
    dir: &TestDir,
    url: &str,
    out: &Path,
    file: &Path,
    bootstrap: &[String],
) -> Report {
    let mut cmd = PullCmd::url(dir, url, out)
        .arg("--json")
        .arg("--connect-timeout")
        .arg("3");
    for arg in dht_args(bootstrap) {
        cmd = cmd.arg(arg);
    }
    let pulled = cmd.run(dir);
    assert_eq!(pulled.code(), Some(0), "{}", pulled.stderr);
    assert_eq!(std::fs::read(out).ok(), std::fs::read(file).ok());
    Report(serde_json::from_str(&pulled.stdout).expect("json"))
}

#[test]
fn an_exposer_announces_its_root_and_a_lookup_finds_it() {
    let net = mainline::Testnet::builder(5).build().expect("a local DHT");
    let dir = TestDir::new("dht-announce");
    let file = dir.join("data.bin");
    write_random_file(&file, 1 << 20, "dht-announce");
    let mut opts = ExposeOpts::new(&dir, &[&file]).bind(Some("127.0.0.1"));
    opts.extra_args = dht_args(&net.bootstrap);
    let ex = opts.start(&dir);
    wait_until(
        "the exposer's DHT announce",
        Duration::from_secs(30),
        || ex.proc.stderr().contains("in the DHT"),
    );
    let log = ex.proc.stderr();
    assert!(log.contains("announced root"), "{log}");

    let root = rgtp::url::parse_hex32(&ex.single().root).expect("root in hex");
    let found = rgtp::dht::Discovery::join(&net.bootstrap)
        .expect("join the local DHT")
        .lookup(&root, 10, Duration::from_secs(10));
    let me = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ex.port);
    assert!(found.contains(&me), "{me} not among {found:?}");
    ex.stop_with(libc::SIGTERM);
}

#[test]
fn an_unreachable_dht_costs_a_warning_not_the_exposure() {
    let dir = TestDir::new("dht-unreachable");
    let file = dir.join("data.bin");
    write_random_file(&file, 256 << 10, "dht-unreachable");
    // A port nothing listens on: every DHT query goes unanswered.
    let nobody = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead = nobody.local_addr().expect("addr").to_string();
    drop(nobody);
    let mut opts = ExposeOpts::new(&dir, &[&file]).bind(Some("127.0.0.1"));
    opts.extra_args = dht_args(&[dead]);
    let mut ex = opts.start(&dir);
    // Served all the same.
    let out = dir.join("copy.bin");
    let pulled = PullCmd::url(&dir, &ex.single().url, &out).run(&dir);
    assert_eq!(pulled.code(), Some(0), "{}", pulled.stderr);
    assert_eq!(std::fs::read(&out).ok(), std::fs::read(&file).ok());
    wait_until(
        "the failed announce's warning",
        Duration::from_secs(60),
        || ex.proc.stderr().contains("cannot announce"),
    );
    ex.assert_running();
    ex.stop_with(libc::SIGTERM);
}

#[test]
fn a_pull_finds_another_source_in_the_dht_when_its_exposer_is_gone() {
    let net = mainline::Testnet::builder(5).build().expect("a local DHT");
    let dir = TestDir::new("dht-pull");
    let file = dir.join("data.bin");
    write_random_file(&file, 2 << 20, "dht-pull");
    let start = |key: &str| {
        let mut opts = ExposeOpts::new(&dir, &[&file])
            .bind(Some("127.0.0.1"))
            .key(&dir.join(key));
        opts.extra_args = dht_args(&net.bootstrap);
        let ex = opts.start(&dir);
        wait_until(
            "the exposer's DHT announce",
            Duration::from_secs(30),
            || ex.proc.stderr().contains("announced root"),
        );
        ex
    };
    let a = start("a.key");
    let b = start("b.key");
    // The URL names exposer A, which is gone: the pull finds B by the root.
    let url = a.single().url.clone();
    a.stop_with(libc::SIGTERM);
    let report = pull_through_dht(&dir, &url, &dir.join("copy.bin"), &file, &net.bootstrap);
    let b_addr = format!("127.0.0.1:{}", b.port);
    let sources = report.sources();
    let from_b = sources
        .iter()
        .find(|s| s.addr == b_addr)
        .unwrap_or_else(|| panic!("{b_addr} not among the sources: {}", report.0));
    assert_eq!(from_b.bytes, 2 << 20, "{}", report.0);
    b.stop_with(libc::SIGTERM);
}

#[test]
fn dht_without_a_root_is_a_usage_error() {
    let dir = TestDir::new("dht-usage");
    let out = dir.join("x");
    let r = PullCmd::new(&dir, ["127.0.0.1:9", "name", "--dht", "-o"])
        .arg(out.display().to_string())
        .run(&dir);
    assert_eq!(r.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("--dht needs the content root"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_sharer_announces_itself_and_serves_when_the_origin_is_gone() {
    let net = mainline::Testnet::builder(5).build().expect("a local DHT");
    let dir = TestDir::new("dht-share");
    let file = dir.join("data.bin");
    write_random_file(&file, 2 << 20, "dht-share");
    let origin = ExposeOpts::new(&dir, &[&file])
        .bind(Some("127.0.0.1"))
        .start(&dir);
    let url = origin.single().url.clone();
    // A pulls from the origin, shares what it holds and announces its port.
    let out_a = dir.join("a.bin");
    let mut cmd = PullCmd::url(&dir, &url, &out_a)
        .arg("--share")
        .arg("--seed")
        .arg("60");
    for arg in dht_args(&net.bootstrap) {
        cmd = cmd.arg(arg);
    }
    let mut sharer = cmd.spawn(&dir);
    wait_until(
        "the sharer's DHT announce and its seeding",
        Duration::from_secs(30),
        || {
            let err = sharer.stderr();
            err.contains("announced root") && err.contains("seeding")
        },
    );
    origin.stop_with(libc::SIGTERM);
    // B has only the origin's URL: it finds A by the root.
    let report = pull_through_dht(&dir, &url, &dir.join("b.bin"), &file, &net.bootstrap);
    let from_sharer: u64 = report.sources().iter().skip(1).map(|s| s.bytes).sum();
    assert_eq!(from_sharer, 2 << 20, "{}", report.0);
    assert!(sharer.signal(libc::SIGINT));
    assert!(sharer.wait_for(Duration::from_secs(10)).is_some());
}

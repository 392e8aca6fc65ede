//! What an exposer holds for a file, with the real binaries: the remembered root, the
//! sealed copy filled in the background under a disk bound, and the chunk cipher the
//! handshake negotiates (both ciphers, a downgrade attempt, an exposer that cheats).

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rgtp::crypto::Cipher;
use rgtp::wire::Hello;
use rgtp_e2e::*;

fn expose(dir: &TestDir, file: &Path, extra: &[&str]) -> ExposerProc {
    let mut opts = ExposeOpts::new(dir, &[file]).bind(Some("127.0.0.1"));
    opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
    opts.start(dir)
}

/// Exposes `file`, stops, and returns (root, the exposer's stderr).
fn expose_once(dir: &TestDir, file: &Path, extra: &[&str]) -> (String, String) {
    let ex = expose(dir, file, extra);
    let root = ex.single().root.clone();
    let done = ex.stop_with(libc::SIGTERM);
    (root, done.stderr)
}

#[test]
fn a_remembered_root_is_reused_until_the_file_changes() {
    let dir = TestDir::new("remembered");
    let file = dir.join("data.bin");
    write_random_file(&file, 3 << 20, "remembered");

    let (root1, log) = expose_once(&dir, &file, &[]);
    assert!(log.contains(": hashed "), "first exposure hashes:\n{log}");
    assert_eq!(root1, b3sum(&file));

    let (root2, log) = expose_once(&dir, &file, &[]);
    assert!(log.contains("root remembered"), "unchanged file:\n{log}");
    assert!(!log.contains(": hashed "), "{log}");
    assert_eq!(root2, root1);

    let (_, log) = expose_once(&dir, &file, &["--rehash"]);
    assert!(log.contains(": hashed "), "--rehash hashes again:\n{log}");

    // A new modification time (same bytes): hashed again, same root.
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    drop(f);
    let (root3, log) = expose_once(&dir, &file, &[]);
    assert!(log.contains(": hashed "), "changed mtime:\n{log}");
    assert_eq!(root3, root1);

    // Appended to: hashed again, and the URL carries the new root.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"one more line\n"))
        .unwrap();
    let (root4, log) = expose_once(&dir, &file, &[]);
    assert!(log.contains(": hashed "), "changed size:\n{log}");
    assert_ne!(root4, root1);
    assert_eq!(root4, b3sum(&file));
}

/// Size and allocated bytes of the exposer's unnamed sealed store (a deleted file in
/// its cache directory, seen through /proc).
fn sealed_store_sizes(pid: u32, cache_dir: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the exposer's fds");
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| {
                t.starts_with(cache_dir) && t.to_string_lossy().contains("(deleted)")
            })
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| (m.len(), m.blocks() * 512))
        .collect()
}

#[test]
fn the_disk_bound_limits_the_sealed_copy_and_every_byte_still_arrives() {
    let dir = TestDir::new("cache-max");
    let file = dir.join("bounded.bin");
    write_random_file(&file, 8 << 20, "cache-max");
    let mut ex = expose(&dir, &file, &["--cache-max", "1M"]);
    let cache_dir = dir.join("exposer-cache");
    let out = dir.join("bounded.out");
    PullCmd::url(&dir, &ex.single().url, &out)
        .run(&dir)
        .assert_success();
    assert_same_content(&file, &out, "a pull past the disk bound");
    let stores = sealed_store_sizes(ex.proc.pid(), &cache_dir);
    assert_eq!(stores.len(), 1, "one sealed store: {stores:?}");
    let (len, allocated) = stores[0];
    assert!(len <= 1 << 20, "store size {len} over --cache-max 1M");
    assert!(
        allocated <= (1 << 20) + 65536,
        "store uses {allocated} bytes of disk"
    );
    ex.assert_running();
    let log = ex.stop_with(libc::SIGTERM).stderr;
    assert!(
        log.contains("sealing 63 of 512 chunks ahead"),
        "the log names the bound:\n{log}"
    );
}

#[test]
fn pulls_started_with_the_url_are_byte_exact_while_sealing_runs() {
    let dir = TestDir::new("midway");
    let file = dir.join("fresh.bin");
    write_random_file(&file, 96 << 20, "midway");
    let ex = expose(&dir, &file, &[]);
    // Started the moment the URL is printed, while the store is still being filled.
    let pulls: Vec<_> = (0..2)
        .map(|i| {
            let out = dir.join(format!("fresh-{i}.out"));
            (PullCmd::url(&dir, &ex.single().url, &out).spawn(&dir), out)
        })
        .collect();
    for (p, out) in pulls {
        p.finish(PULL_DEADLINE).assert_success();
        assert_same_content(&file, &out, "a pull during background sealing");
    }
    let log = ex.stop_with(libc::SIGTERM).stderr;
    assert!(
        !log.contains("sealing ahead stopped"),
        "sealing must not fail:\n{log}"
    );
}

fn pull_json(dir: &TestDir, url: &str, out: &Path, extra: &[&str]) -> Report {
    let mut cmd = PullCmd::url(dir, url, out).arg("--json").arg("--force");
    for a in extra {
        cmd = cmd.arg(*a);
    }
    let done = cmd.run(dir);
    done.assert_success();
    done.json()
}

fn cipher_of(r: &Report) -> String {
    r.0["cipher"]
        .as_str()
        .unwrap_or_else(|| panic!("--json has no cipher: {}", r.0))
        .to_string()
}

#[test]
fn both_ciphers_pull_byte_exact_and_the_choice_follows_the_offer() {
    let dir = TestDir::new("ciphers");
    let file = dir.join("c.bin");
    write_random_file(&file, 5 << 20, "ciphers");
    let ex = expose(&dir, &file, &[]);
    let url = ex.single().url.clone();
    let out = dir.join("c.out");

    let r = pull_json(&dir, &url, &out, &[]);
    assert_eq!(cipher_of(&r), Cipher::preferred().name(), "the host's best");
    assert_same_content(&file, &out, "default cipher");

    let r = pull_json(&dir, &url, &out, &["--cipher", "chacha20-poly1305"]);
    assert_eq!(cipher_of(&r), "chacha20-poly1305");
    assert_same_content(&file, &out, "ChaCha20-Poly1305");

    let r = pull_json(&dir, &url, &out, &["--cipher", "aes-256-gcm"]);
    assert_eq!(cipher_of(&r), Cipher::preferred().name());
    assert_same_content(&file, &out, "AES-256-GCM offered");
    drop(ex);

    // An exposer told to use AES-256-GCM uses it for a puller that offers it, even
    // where this CPU would not pick it.
    let ex = expose(&dir, &file, &["--cipher", "aes-256-gcm"]);
    let r = pull_json(&dir, &ex.single().url, &out, &["--cipher", "aes-256-gcm"]);
    assert_eq!(cipher_of(&r), "aes-256-gcm");
    assert_same_content(&file, &out, "AES-256-GCM");
    drop(ex);

    let ex = expose(&dir, &file, &["--cipher", "chacha20-poly1305"]);
    let r = pull_json(&dir, &ex.single().url, &out, &[]);
    assert_eq!(cipher_of(&r), "chacha20-poly1305");
    assert_same_content(&file, &out, "an exposer that prefers ChaCha20-Poly1305");
}

/// A UDP relay on loopback that rewrites every HELLO through `edit` (a man in the
/// middle); everything else passes unchanged. Stops when `stop` is set.
fn tampering_relay(
    exposer: std::net::SocketAddr,
    edit: fn(&Hello) -> Vec<u8>,
    stop: Arc<AtomicBool>,
) -> (std::net::SocketAddr, std::thread::JoinHandle<u64>) {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    front
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    back.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = front.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut puller = None;
        let mut edited = 0u64;
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, from)) = front.recv_from(&mut buf) {
                puller = Some(from);
                let pkt = match Hello::decode(&buf[..n]) {
                    Ok(h) => {
                        edited += 1;
                        edit(&h)
                    }
                    Err(_) => buf[..n].to_vec(),
                };
                let _ = back.send_to(&pkt, exposer);
            }
            if let (Ok((n, _)), Some(p)) = (back.recv_from(&mut buf), puller) {
                let _ = front.send_to(&buf[..n], p);
            }
        }
        edited
    });
    (addr, t)
}

#[test]
fn stripping_aes_from_the_offer_fails_the_handshake() {
    let dir = TestDir::new("downgrade");
    let file = dir.join("d.bin");
    write_random_file(&file, 1 << 20, "downgrade");
    let ex = expose(&dir, &file, &["--cipher", "aes-256-gcm"]);
    let f = ex.single().clone();

    // The relay passes HELLOs through untouched: the pull works through it.
    let stop = Arc::new(AtomicBool::new(false));
    let (relay, t) = tampering_relay(ex.addr(), |h| h.encode(), stop.clone());
    let out = dir.join("d.out");
    let url = f.url.replace(&f.host_port(), &relay.to_string());
    let r = pull_json(&dir, &url, &out, &["--cipher", "aes-256-gcm"]);
    assert_eq!(cipher_of(&r), "aes-256-gcm");
    stop.store(true, Ordering::Relaxed);
    assert!(t.join().unwrap() >= 1);

    // Now it strips AES-256-GCM from the offer (the last byte of message 1).
    let stop = Arc::new(AtomicBool::new(false));
    let (relay, t) = tampering_relay(
        ex.addr(),
        |h| {
            let mut noise = h.noise.to_vec();
            if let Some(last) = noise.last_mut() {
                *last = Cipher::ChaCha20Poly1305.bit();
            }
            Hello {
                noise: &noise,
                ..*h
            }
            .encode()
        },
        stop.clone(),
    );
    let url = f.url.replace(&f.host_port(), &relay.to_string());
    let out = dir.join("d2.out");
    let done = PullCmd::url(&dir, &url, &out)
        .arg("--cipher")
        .arg("aes-256-gcm")
        .arg("--connect-timeout")
        .arg("3")
        .arg("--timeout")
        .arg("5")
        .run(&dir);
    stop.store(true, Ordering::Relaxed);
    assert!(t.join().unwrap() >= 1, "the relay saw the HELLO");
    // The exposer's answer does not decrypt under the puller's transcript: no session
    // is ever made, so nothing is pulled under the weaker choice. (The exposer's
    // RETRYs to the repeated HELLOs show it is there: the longer --timeout applies.)
    done.assert_clean_error(exit::TIMEOUT, &["no answer"]);
    assert!(!out.exists());
}

#[test]
fn an_exposer_choosing_a_cipher_not_offered_is_refused() {
    use rgtp::handshake::{generate_keypair, respond};
    use rgtp::wire::{Manifest, ManifestBody, Welcome};

    let dir = TestDir::new("cipher-not-offered");
    let fake = UdpSocket::bind("127.0.0.1:0").expect("bind the fake exposer");
    fake.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let host_port = format!("127.0.0.1:{}", fake.local_addr().unwrap().port());
    let out = dir.join("x.out");
    let pull = PullCmd::by_name(&dir, &host_port, "x.bin", &out)
        .arg("--cipher")
        .arg("chacha20-poly1305")
        .spawn(&dir);
    let (key, _) = generate_keypair();
    let mut buf = vec![0u8; 65536];
    let (n, from) = fake.recv_from(&mut buf).expect("a HELLO from rgtp-pull");
    let hello = Hello::decode(&buf[..n]).expect("a valid HELLO");
    let size = 1000u64;
    let manifest = Manifest::Found(ManifestBody {
        exposure: [1; 16],
        size,
        chunk_size: rgtp::merkle::CHUNK_SIZE as u32,
        chunk_count: rgtp::merkle::chunk_count(size),
        root: [2; 32],
        content_key: [3; 32],
        max_datagram: hello.max_datagram,
        token: vec![7; 40],
        request_key: [4; 32],
        clock_ms: 0,
        cipher: Cipher::Aes256Gcm,
        features: None,
        group: None,
        window: None,
    });
    let msg2 = respond(
        &key,
        hello.name,
        hello.max_datagram,
        hello.noise,
        &manifest.encode(),
    )
    .expect("the exposer side of the handshake");
    fake.send_to(&Welcome { noise: &msg2 }.encode(), from)
        .expect("send the WELCOME");
    pull.finish(ERROR_DEADLINE)
        .assert_clean_error(exit::PROTOCOL, &["aes-256-gcm", "did not offer"]);
    assert!(!out.exists());
}

//! An exposer the puller has never met (trust on first use) can say anything in its
//! signed manifest: the puller must turn an impossible offer into a clean error, not
//! an allocation that aborts the process.

use std::net::SocketAddr;
use std::time::Instant;

use rgtp::handshake::{self, generate_keypair};
use rgtp::merkle::{self, CHUNK_SIZE};
use rgtp::puller::{PullConfig, PullError, PullEvent, Puller};
use rgtp::wire::{Hello, Manifest, ManifestBody, Welcome};

/// Runs a handshake whose WELCOME offers a file of `size` bytes; returns the puller
/// (alive, with whatever it allocated) and its events.
fn offer(size: u64) -> (Puller, Vec<PullEvent>) {
    let (ex_private, _) = generate_keypair();
    let ex: SocketAddr = "192.0.2.1:443".parse().unwrap();
    let now = Instant::now();
    let mut p = Puller::new(PullConfig::new(ex, "huge.bin"), now);
    let hello_dg = p
        .poll_transmit(now)
        .expect("the puller starts with a HELLO")
        .contents;
    let hello = Hello::decode(&hello_dg).expect("a valid HELLO");
    let manifest = Manifest::Found(ManifestBody {
        exposure: [1; 16],
        size,
        chunk_size: CHUNK_SIZE as u32,
        chunk_count: merkle::chunk_count(size),
        root: [2; 32],
        content_key: [3; 32],
        max_datagram: hello.max_datagram,
        token: vec![7; 40],
        request_key: [4; 32],
        clock_ms: 0,
        cipher: rgtp::crypto::Cipher::ChaCha20Poly1305,
        features: None,
        group: None,
        window: None,
    });
    let msg2 = handshake::respond(
        &ex_private,
        hello.name,
        hello.max_datagram,
        hello.noise,
        &manifest.encode(),
    )
    .expect("the exposer side of the handshake");
    p.handle(now, ex, &Welcome { noise: &msg2 }.encode());
    let events = std::iter::from_fn(|| p.poll_event()).collect();
    (p, events)
}

#[test]
fn an_impossible_file_size_fails_the_pull_cleanly() {
    for size in [1u64 << 62, u64::MAX] {
        let (_, events) = offer(size);
        assert!(
            events.iter().any(
                |e| matches!(e, PullEvent::Failed(PullError::TooLarge { size: s }) if *s == size)
            ),
            "size {size}: {events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, PullEvent::Started { .. })),
            "size {size}: a pull that cannot be held must not start: {events:?}"
        );
    }
}

#[test]
fn an_ordinary_offer_starts_the_pull() {
    let (_, events) = offer(5 * CHUNK_SIZE as u64 + 3);
    assert!(
        events.iter().any(
            |e| matches!(e, PullEvent::Started { size, .. } if *size == 5 * CHUNK_SIZE as u64 + 3)
        ),
        "{events:?}"
    );
}

/// Resident memory of this process, KiB (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a VmRSS line")
}

/// A large but possible offer (1 TiB: 2 GiB of outboard to come) starts the pull
/// without committing that memory up front: it fills as the outboard arrives.
#[test]
fn a_large_offer_commits_no_memory_before_data_arrives() {
    let before = rss_kib();
    let (puller, events) = offer(1 << 40);
    let grown = rss_kib().saturating_sub(before);
    drop(puller);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PullEvent::Started { size, .. } if *size == 1 << 40)),
        "{events:?}"
    );
    assert!(
        grown < 256 << 10,
        "{grown} KiB resident after one WELCOME offering 1 TiB"
    );
}

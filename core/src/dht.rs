//! Finding sources of a root without a tracker: the BitTorrent Mainline DHT (BEP 5).
//!
//! An exposer announces, for each root it serves, its UDP port under the root's DHT
//! key; a puller looks the key up and gets addresses to pull from. Nothing found
//! there is trusted: every chunk is verified against the root whoever serves it.
//!
//! The DHT key is not the root itself but a keyed hash of it, so an RGTP root never
//! collides with a BitTorrent info-hash, and a DHT node learns nothing it could
//! match against `b3sum` of a file it does not already have the root of.
//!
//! Bootstrap nodes are configurable, so tests run a small DHT on loopback; without
//! any, the public bootstrap nodes are used.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use futures_lite::StreamExt;
use mainline::{Dht, Id};

use crate::merkle::Hash;

/// How often an exposer announces itself again (BEP 5 nodes forget a peer after
/// about 30 minutes).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(15 * 60);

/// The DHT key under which sources of `root` are announced.
pub fn info_hash(root: &Hash) -> [u8; 20] {
    let k = blake3::derive_key("RGTP 2026 Mainline DHT key of a content root", root);
    let mut id = [0u8; 20];
    id.copy_from_slice(&k[..20]);
    id
}

/// A DHT client node.
pub struct Discovery {
    dht: mainline::async_dht::AsyncDht,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Discovery")
    }
}

impl Discovery {
    /// Joins the DHT through `bootstrap` (`HOST:PORT` each), or through the public
    /// bootstrap nodes when it is empty.
    pub fn join(bootstrap: &[String]) -> io::Result<Self> {
        let mut b = Dht::builder();
        if !bootstrap.is_empty() {
            b.bootstrap(bootstrap);
        }
        Ok(Self {
            dht: b.build()?.as_async(),
        })
    }

    /// Announces that `port` on this host serves `root`. Fails when no DHT node
    /// could be reached to store it.
    pub fn announce(&self, root: &Hash, port: u16) -> Result<(), String> {
        futures_lite::future::block_on(
            self.dht
                .announce_peer(Id::from(info_hash(root)), Some(port)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// Addresses announced for `root`, at most `max`, found within `timeout`
    /// (whatever has arrived by then).
    pub fn lookup(&self, root: &Hash, max: usize, timeout: Duration) -> Vec<SocketAddr> {
        let (tx, rx) = mpsc::channel();
        let mut peers = self.dht.get_peers(Id::from(info_hash(root)));
        // The query runs on a thread of its own, so a slow DHT costs at most `timeout`;
        // the thread ends when the query does.
        std::thread::spawn(move || {
            futures_lite::future::block_on(async {
                while let Some(batch) = peers.next().await {
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            })
        });
        let deadline = std::time::Instant::now() + timeout;
        let mut found: Vec<SocketAddr> = Vec::new();
        while found.len() < max {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(batch) => {
                    for a in batch {
                        let a = SocketAddr::V4(a);
                        if !found.contains(&a) && found.len() < max {
                            found.push(a);
                        }
                    }
                }
                Err(_) => break,
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_not_the_root_and_depends_on_it() {
        let a = info_hash(&[1; 32]);
        assert_ne!(a, info_hash(&[2; 32]));
        assert_ne!(&a[..], &[1u8; 32][..20]);
    }

    #[test]
    fn an_announced_source_is_found_on_a_local_dht() {
        let net = mainline::Testnet::builder(5).build().expect("testnet");
        let exposer = Discovery::join(&net.bootstrap).expect("join");
        let root = [7u8; 32];
        exposer.announce(&root, 4443).expect("announce");
        let puller = Discovery::join(&net.bootstrap).expect("join");
        let found = puller.lookup(&root, 10, Duration::from_secs(10));
        assert!(
            found.iter().any(|a| a.port() == 4443),
            "announced port not found: {found:?}"
        );
        assert!(puller
            .lookup(&[8u8; 32], 10, Duration::from_secs(2))
            .is_empty());
    }
}

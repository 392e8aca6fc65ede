//! A puller with a valid session can put anything in its sealed REQUESTs: the exposer
//! must do no work that the bytes it sends (and so the sender's budget) do not pay for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rgtp::crypto::RequestSealer;
use rgtp::exposer::{Exposer, ExposerConfig};
use rgtp::handshake::{generate_keypair, Initiator};
use rgtp::merkle::{self, CHUNK_SIZE};
use rgtp::source::MemSource;
use rgtp::wire::{self, Hello, Manifest, ManifestBody, Object, Request, RequestItem, Welcome};

/// An exposer of `chunks` chunks and a puller session with it (handshake by hand).
fn session(chunks: usize, cfg: ExposerConfig, now: Instant) -> (Exposer, SocketAddr, ManifestBody) {
    let (private, _) = generate_keypair();
    let mut ex = Exposer::new(cfg, private, now);
    let data = Arc::new(vec![0x5au8; chunks * CHUNK_SIZE]);
    let cvs = merkle::cvs_of_bytes(&data);
    ex.add_exposure("f", Box::new(MemSource(data)), cvs);
    let me: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let (init, msg1) =
        Initiator::start("f", 1200, rgtp::crypto::Cipher::default_offer()).expect("a HELLO");
    let hello = Hello {
        max_datagram: 1200,
        token: &[],
        name: "f",
        noise: &msg1,
    }
    .encode();
    ex.handle(now, me, &hello);
    let welcome = ex.poll_transmit().expect("a WELCOME").contents;
    let (_, payload) = init
        .finish(Welcome::decode(&welcome).expect("WELCOME").noise)
        .expect("the handshake");
    let Ok(Manifest::Found(m)) = Manifest::decode(&payload) else {
        panic!("no manifest for f")
    };
    (ex, me, m)
}

fn request(
    ex: &mut Exposer,
    now: Instant,
    me: SocketAddr,
    m: &ManifestBody,
    seq: u64,
    items: &[RequestItem],
) {
    let mut pkt = Request::encode_header(&m.exposure, &m.token, seq, m.clock_ms);
    let header = pkt.clone();
    RequestSealer::new(&m.request_key).seal(seq, &header, &wire::encode_items(items), &mut pkt);
    ex.handle(now, me, &pkt);
}

/// Fragments a chunk does not have (a 16 KiB chunk in 1200-byte datagrams has 14)
/// cost nothing: no read, no encryption, nothing sent.
#[test]
fn fragments_a_chunk_lacks_cost_no_work() {
    let now = Instant::now();
    let cfg = ExposerConfig {
        cache_bytes: 0,
        ..ExposerConfig::default()
    };
    let (mut ex, me, m) = session(1024, cfg, now);
    for seq in 1..=16u64 {
        let items: Vec<RequestItem> = (0..256u32)
            .map(|i| RequestItem::Fragments {
                object: Object::Content,
                chunk: ((seq as u32) * 256 + i) % 1024,
                mask: 1 << 63,
            })
            .collect();
        request(&mut ex, now, me, &m, seq, &items);
    }
    let sent: usize = std::iter::from_fn(|| ex.poll_transmit())
        .map(|t| t.datagrams().count())
        .sum();
    assert_eq!(
        ex.stats.encryptions, 0,
        "chunks sealed for fragments they lack"
    );
    assert_eq!(sent, 0);

    // The same chunks' real fragments are served (and sealed) as usual.
    request(
        &mut ex,
        now,
        me,
        &m,
        17,
        &[RequestItem::Fragments {
            object: Object::Content,
            chunk: 3,
            mask: 1 | 1 << 13 | 1 << 63,
        }],
    );
    let sent: usize = std::iter::from_fn(|| ex.poll_transmit())
        .map(|t| t.datagrams().count())
        .sum();
    assert_eq!((ex.stats.encryptions, sent), (1, 2));
}

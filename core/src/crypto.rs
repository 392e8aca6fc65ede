//! Symmetric crypto: chunk encryption under the per-exposure content key, the exposer's
//! stateless address-validation tokens, and sealed REQUEST bodies.
//!
//! Chunks are sealed with the [`Cipher`] the handshake chose: AES-256-GCM where both
//! ends have AES instructions (about 2.7x ChaCha20-Poly1305's speed on 16 KiB chunks
//! here), ChaCha20-Poly1305 otherwise. Bulk chunks go through `ring`, whose assembly is
//! about twice as fast on 16 KiB chunks as the RustCrypto crate (docs/BENCHMARKS.md),
//! which still serves the small messages (tokens, requests: ChaCha20-Poly1305 always).
//! Chunk nonces come from (object, index), which is
//! safe because a content key belongs to one exposure and every (object, index) always
//! carries the same plaintext; the associated data binds exposure id, object, index and
//! total length, so a chunk cannot be moved, replayed across exposures or truncated.
//!
//! A live exposure's checkpoints share one content key ([`ContentCipher::live`]), so
//! that a content chunk is sealed the same way in every checkpoint and one send to a
//! multicast group serves followers of different checkpoints. Their plaintext at an
//! index is not fixed (a partial last chunk grows), so the nonce and associated data
//! bind the chunk's own length instead of the total: in an append-only stream
//! (index, length) fixes the bytes. An outboard chunk's bytes depend on the
//! checkpoint's length, so its nonce and associated data bind that.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::rng::Rng;
use crate::wire::{ExposureId, Object, Reader, Writer};

pub const TAG_LEN: usize = 16;

/// `N` bytes from the OS CSPRNG, for the I/O side (temporary names and the like). The
/// sans-IO state machines draw from their own [`Rng`](crate::rng::Rng) instead, so
/// that a simulated run reproduces from its seed.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS RNG failing is not recoverable and not attacker-controlled.
    getrandom::getrandom(&mut b).expect("OS random number generator failed");
    b
}

fn chunk_nonce(object: Object, index: u64) -> ring::aead::Nonce {
    let mut n = [0u8; 12];
    n[0] = object as u8;
    n[4..].copy_from_slice(&index.to_le_bytes());
    // Unique per (key, object, index); the same index always carries the same plaintext.
    ring::aead::Nonce::assume_unique_for_key(n)
}

/// A live exposure's nonce: object (with bit 7 set, so it never meets an ordinary
/// nonce), 7 bytes of `len` (the chunk's length for content, the checkpoint's for the
/// outboard), the index as 32 bits (the protocol names chunks with 32 bits).
fn live_nonce(object: Object, index: u64, len: u64) -> ring::aead::Nonce {
    let mut n = [0u8; 12];
    n[0] = 0x80 | object as u8;
    n[1..8].copy_from_slice(&len.to_le_bytes()[..7]);
    n[8..].copy_from_slice(&(index as u32).to_le_bytes());
    ring::aead::Nonce::assume_unique_for_key(n)
}

/// The id a live exposure's content chunk of `len` bytes carries when it is sent to
/// a multicast group: the same in every checkpoint (it comes from the shared content
/// key), different per length (a partial chunk that grew is another message; the
/// group's "just sent" filter and the followers tell them apart by it).
pub fn live_group_id(content_key: &[u8; 32], len: usize) -> ExposureId {
    live_id("RGTP 2026 live exposure group id", content_key, len as u64)
}

/// The id a live exposure's outboard chunk carries when sent to the group: one per
/// checkpoint length (the outboard's bytes depend on it), so that followers of the
/// same checkpoint share it and others pass it by.
pub fn live_outboard_group_id(content_key: &[u8; 32], total_len: u64) -> ExposureId {
    live_id(
        "RGTP 2026 live exposure outboard group id",
        content_key,
        total_len,
    )
}

fn live_id(context: &str, content_key: &[u8; 32], len: u64) -> ExposureId {
    let mut m = [0u8; 40];
    m[..32].copy_from_slice(content_key);
    m[32..].copy_from_slice(&len.to_le_bytes());
    let k = blake3::derive_key(context, &m);
    let mut id = [0u8; 16];
    id.copy_from_slice(&k[..16]);
    id
}

fn chunk_aad(exposure: &ExposureId, object: Object, index: u64, total_len: u64) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[..16].copy_from_slice(exposure);
    a[16] = object as u8;
    a[17..25].copy_from_slice(&index.to_le_bytes());
    a[25..].copy_from_slice(&total_len.to_le_bytes());
    a
}

/// The AEAD that seals chunks, chosen per session in the pull handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cipher {
    /// ChaCha20-Poly1305: every implementation has it; fast without AES instructions.
    ChaCha20Poly1305,
    /// AES-256-GCM: chosen when both ends have AES (and carry-less multiply)
    /// instructions, as TLS 1.3 stacks prefer it there.
    Aes256Gcm,
}

/// A set of [`Cipher`]s, as a puller offers them: one bit each.
pub type CipherSet = u8;

impl Cipher {
    /// Every cipher, in the exposer's order of preference when both ends have AES.
    pub const ALL: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305];

    /// Its code on the wire (manifest, token).
    pub fn code(self) -> u8 {
        match self {
            Cipher::ChaCha20Poly1305 => 1,
            Cipher::Aes256Gcm => 2,
        }
    }

    /// The cipher with wire code `c`, if known.
    pub fn from_code(c: u8) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|x| x.code() == c)
    }

    /// Its bit in a [`CipherSet`].
    pub fn bit(self) -> CipherSet {
        1 << (self.code() - 1)
    }

    /// The name users type and logs print.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Parses [`Cipher::name`].
    pub fn parse(s: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.name() == s)
    }

    /// What this host does best: AES-256-GCM when the CPU has AES and carry-less
    /// multiply instructions (ring then runs constant-time hardware code), else
    /// ChaCha20-Poly1305.
    pub fn preferred() -> Cipher {
        if hardware_aes() {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }

    /// What a puller on this host offers by default: ChaCha20-Poly1305 always, and
    /// AES-256-GCM where it is fast here.
    pub fn default_offer() -> CipherSet {
        Cipher::ChaCha20Poly1305.bit() | Cipher::preferred().bit()
    }

    /// The exposer's choice for a puller that offered `offer`: its own `preferred`
    /// when offered, else ChaCha20-Poly1305 (which every puller implements).
    pub fn choose(preferred: Cipher, offer: CipherSet) -> Cipher {
        if offer & preferred.bit() != 0 {
            preferred
        } else {
            Cipher::ChaCha20Poly1305
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// True when AES-GCM runs on dedicated instructions here.
fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Encryption of one exposure's chunks under one [`Cipher`].
pub struct ContentCipher {
    key: ring::aead::LessSafeKey,
    cipher: Cipher,
    exposure: ExposureId,
    total_len: u64,
    /// A live exposure's checkpoint: the shared key's content key, for the lengths
    /// bound instead of the exposure ([`ContentCipher::live`]).
    live: Option<[u8; 32]>,
}

impl ContentCipher {
    /// ChaCha20-Poly1305 under `key` (the manifest's content key).
    pub fn new(key: &[u8; 32], exposure: ExposureId, total_len: u64) -> Self {
        Self::with(Cipher::ChaCha20Poly1305, key, exposure, total_len)
    }

    /// `cipher` under the content key `key`. AES-256-GCM uses a key derived from it,
    /// so that no key ever serves two algorithms.
    pub fn with(cipher: Cipher, key: &[u8; 32], exposure: ExposureId, total_len: u64) -> Self {
        let (alg, k) = match cipher {
            Cipher::ChaCha20Poly1305 => (&ring::aead::CHACHA20_POLY1305, *key),
            Cipher::Aes256Gcm => (
                &ring::aead::AES_256_GCM,
                blake3::derive_key("RGTP 2026 content key for AES-256-GCM", key),
            ),
        };
        let unbound =
            ring::aead::UnboundKey::new(alg, &k).expect("a 32-byte key is valid for both AEADs");
        Self {
            key: ring::aead::LessSafeKey::new(unbound),
            cipher,
            exposure,
            total_len,
            live: None,
        }
    }

    /// `cipher` under a live exposure's content key, shared by its checkpoints: a
    /// content chunk's nonce and associated data bind its own length (and the group
    /// id of that length), an outboard chunk's the checkpoint's length `total_len`.
    pub fn live(cipher: Cipher, key: &[u8; 32], exposure: ExposureId, total_len: u64) -> Self {
        let mut c = Self::with(cipher, key, exposure, total_len);
        c.live = Some(*key);
        c
    }

    /// Nonce and associated data of a chunk whose plaintext is `len` bytes.
    fn bind(&self, object: Object, index: u64, len: usize) -> (ring::aead::Nonce, [u8; 33]) {
        match (&self.live, object) {
            (None, _) => (
                chunk_nonce(object, index),
                chunk_aad(&self.exposure, object, index, self.total_len),
            ),
            (Some(k), Object::Content) => (
                live_nonce(object, index, len as u64),
                chunk_aad(&live_group_id(k, len), object, index, len as u64),
            ),
            (Some(k), Object::Outboard) => (
                live_nonce(object, index, self.total_len),
                chunk_aad(
                    &live_outboard_group_id(k, self.total_len),
                    object,
                    index,
                    self.total_len,
                ),
            ),
        }
    }

    /// The algorithm it seals with.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Encrypts `buf` (the plaintext chunk) in place and appends the tag.
    pub fn seal(&self, object: Object, index: u64, buf: &mut Vec<u8>) {
        let (nonce, aad) = self.bind(object, index, buf.len());
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), buf)
            .expect("chunk below the AEAD length limit");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Decrypts a sealed chunk in place; on success `buf` holds the plaintext.
    pub fn open(&self, object: Object, index: u64, buf: &mut Vec<u8>) -> bool {
        if buf.len() < TAG_LEN {
            return false;
        }
        let (nonce, aad) = self.bind(object, index, buf.len() - TAG_LEN);
        let ok = self
            .key
            .open_in_place(nonce, ring::aead::Aad::from(aad), buf)
            .is_ok();
        if ok {
            buf.truncate(buf.len() - TAG_LEN);
        }
        ok
    }
}

/// Seals and opens REQUEST bodies with a per-puller request key.
pub struct RequestSealer {
    aead: ChaCha20Poly1305,
}

impl RequestSealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }
    fn nonce(seq: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_le_bytes());
        Nonce::from(n)
    }
    /// Appends `plain` sealed under `seq` with `header` as associated data.
    pub fn seal(&self, seq: u64, header: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .encrypt_in_place_detached(&Self::nonce(seq), header, &mut out[start..])
            .expect("request below the AEAD length limit");
        out.extend_from_slice(&tag);
    }
    pub fn open(&self, seq: u64, header: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let split = sealed.len().checked_sub(TAG_LEN)?;
        let mut buf = sealed[..split].to_vec();
        let tag = Tag::clone_from_slice(&sealed[split..]);
        self.aead
            .decrypt_in_place_detached(&Self::nonce(seq), header, &mut buf, &tag)
            .ok()?;
        Some(buf)
    }
}

/// What a token vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// Kind: a RETRY cookie only validates the address; a session token also carries
    /// the request key and the datagram size agreed in the handshake.
    pub session: bool,
    pub addr: SocketAddr,
    /// Expiry, in milliseconds on the exposer's own clock.
    pub expires_ms: u64,
    pub exposure: ExposureId,
    pub max_datagram: u16,
    pub request_key: [u8; 32],
    /// The chunk cipher agreed in the handshake (a session token's; a cookie's is
    /// ChaCha20-Poly1305 and unused).
    pub cipher: Cipher,
}

const TOKEN_NONCE_LEN: usize = 12;
/// Sealed token length: nonce, claims, tag.
pub const TOKEN_LEN: usize = TOKEN_NONCE_LEN + (1 + 16 + 2 + 8 + 16 + 2 + 32 + 1) + TAG_LEN;

/// The exposer's stateless token minting: an AEAD under a secret only it knows, so a
/// token proves that the exposer issued it to that address (QUIC Retry / WireGuard
/// cookies). Restarting the exposer invalidates every token, which pullers handle by
/// handshaking again.
pub struct TokenKey {
    aead: ChaCha20Poly1305,
}

impl TokenKey {
    /// A fresh key drawn from `rng`.
    pub fn random(rng: &mut Rng) -> Self {
        Self::from_bytes(&rng.bytes())
    }
    pub fn from_bytes(k: &[u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(Key::from_slice(k)),
        }
    }

    /// Seals `c` under a random nonce drawn from `rng` (the owner's random source).
    pub fn seal(&self, c: &TokenClaims, rng: &mut Rng) -> Vec<u8> {
        let nonce: [u8; TOKEN_NONCE_LEN] = rng.bytes();
        let ip = match c.addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut w = Writer::with_capacity(TOKEN_LEN);
        w.bytes(&nonce)
            .u8(c.session as u8)
            .bytes(&ip.octets())
            .u16(c.addr.port())
            .u64(c.expires_ms)
            .bytes(&c.exposure)
            .u16(c.max_datagram)
            .bytes(&c.request_key)
            .u8(c.cipher.code());
        let mut buf = w.buf;
        let tag = self
            .aead
            .encrypt_in_place_detached(
                &Nonce::from(nonce),
                b"rgtp token",
                &mut buf[TOKEN_NONCE_LEN..],
            )
            .expect("token below the AEAD length limit");
        buf.extend_from_slice(&tag);
        buf
    }

    /// Opens a token; `None` if it is forged, damaged or not ours.
    pub fn open(&self, token: &[u8]) -> Option<TokenClaims> {
        if token.len() != TOKEN_LEN {
            return None;
        }
        let nonce = Nonce::clone_from_slice(&token[..TOKEN_NONCE_LEN]);
        let split = token.len() - TAG_LEN;
        let mut plain = token[TOKEN_NONCE_LEN..split].to_vec();
        let tag = Tag::clone_from_slice(&token[split..]);
        self.aead
            .decrypt_in_place_detached(&nonce, b"rgtp token", &mut plain, &tag)
            .ok()?;
        let mut r = Reader::new(&plain);
        let session = r.u8().ok()? == 1;
        let ip6 = Ipv6Addr::from(r.array::<16>().ok()?);
        let port = r.u16().ok()?;
        let ip = match ip6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(ip6),
        };
        Some(TokenClaims {
            session,
            addr: SocketAddr::new(ip, port),
            expires_ms: r.u64().ok()?,
            exposure: r.array().ok()?,
            max_datagram: r.u16().ok()?,
            request_key: r.array().ok()?,
            cipher: Cipher::from_code(r.u8().ok()?)?,
        })
    }
}

/// Compares addresses the way tokens see them (IPv4-mapped IPv6 equals IPv4).
pub fn same_addr(a: &SocketAddr, b: &SocketAddr) -> bool {
    // Address and port only: an IPv6 flow label or scope says nothing about who it is.
    a.port() == b.port() && crate::udp::canonical(*a).ip() == crate::udp::canonical(*b).ip()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints of one live exposure seal a content chunk alike (one group send
    /// serves them all), a chunk of another length differently, and an outboard chunk
    /// per checkpoint length; each opens only as it was sealed.
    #[test]
    fn live_sealing_binds_lengths_not_checkpoints() {
        let key = [7u8; 32];
        for cipher in Cipher::ALL {
            let a = ContentCipher::live(cipher, &key, [1; 16], 100_000);
            let b = ContentCipher::live(cipher, &key, [2; 16], 200_000);
            let seal = |c: &ContentCipher, o: Object, i: u64, p: &[u8]| {
                let mut v = p.to_vec();
                c.seal(o, i, &mut v);
                v
            };
            let whole = vec![3u8; 16_384];
            assert_eq!(
                seal(&a, Object::Content, 4, &whole),
                seal(&b, Object::Content, 4, &whole)
            );
            let short = seal(&a, Object::Content, 4, &whole[..5000]);
            let longer = seal(&b, Object::Content, 4, &whole[..6000]);
            // Different lengths use different nonces: the common prefix's bytes differ.
            assert_ne!(short[..5000], longer[..5000]);
            let mut x = short.clone();
            assert!(b.open(Object::Content, 4, &mut x) && x == whole[..5000]);
            let mut x = short.clone();
            assert!(!b.open(Object::Content, 5, &mut x));
            let mut x = short[..short.len() - 1].to_vec();
            assert!(!b.open(Object::Content, 4, &mut x));
            // Outboard: bound to the checkpoint's length.
            let ob = [9u8; 64];
            assert_ne!(
                seal(&a, Object::Outboard, 0, &ob),
                seal(&b, Object::Outboard, 0, &ob)
            );
            let mut x = seal(&a, Object::Outboard, 0, &ob);
            assert!(!b.open(Object::Outboard, 0, &mut x));
            // Never the ordinary sealing of the same key.
            let plain = ContentCipher::with(cipher, &key, [1; 16], 100_000);
            assert_ne!(
                seal(&a, Object::Content, 4, &whole),
                seal(&plain, Object::Content, 4, &whole)
            );
        }
        assert_ne!(live_group_id(&key, 5000), live_group_id(&key, 6000));
    }

    #[test]
    fn chunk_seal_open_and_binding() {
        let key = [1u8; 32];
        let c = ContentCipher::new(&key, [2; 16], 1000);
        let mut buf = b"hello chunk".to_vec();
        c.seal(Object::Content, 5, &mut buf);
        assert_eq!(buf.len(), 11 + TAG_LEN);
        let sealed = buf.clone();
        assert!(c.open(Object::Content, 5, &mut buf));
        assert_eq!(buf, b"hello chunk");
        // Wrong index, object, exposure or total length: rejected.
        let mut b = sealed.clone();
        assert!(!c.open(Object::Content, 6, &mut b));
        let mut b = sealed.clone();
        assert!(!c.open(Object::Outboard, 5, &mut b));
        let mut b = sealed.clone();
        assert!(!ContentCipher::new(&key, [3; 16], 1000).open(Object::Content, 5, &mut b));
        let mut b = sealed.clone();
        assert!(!ContentCipher::new(&key, [2; 16], 999).open(Object::Content, 5, &mut b));
        let mut b = sealed;
        b[0] ^= 1;
        assert!(!c.open(Object::Content, 5, &mut b));
    }

    #[test]
    fn both_ciphers_seal_differently_and_refuse_each_other() {
        let key = [1u8; 32];
        let chacha = ContentCipher::with(Cipher::ChaCha20Poly1305, &key, [2; 16], 1000);
        let aes = ContentCipher::with(Cipher::Aes256Gcm, &key, [2; 16], 1000);
        let mut a = b"same chunk".to_vec();
        let mut c = a.clone();
        aes.seal(Object::Content, 3, &mut a);
        chacha.seal(Object::Content, 3, &mut c);
        assert_ne!(a, c);
        let (mut a2, mut c2) = (a.clone(), c.clone());
        assert!(!chacha.open(Object::Content, 3, &mut a2));
        assert!(!aes.open(Object::Content, 3, &mut c2));
        assert!(aes.open(Object::Content, 3, &mut a));
        assert_eq!(a, b"same chunk");
        // AES binds exposure and index as ChaCha does.
        let mut b = c.clone();
        aes.seal(Object::Content, 4, &mut b);
        assert!(!aes.open(Object::Content, 3, &mut b));
    }

    #[test]
    fn cipher_codes_names_and_choice() {
        for c in Cipher::ALL {
            assert_eq!(Cipher::from_code(c.code()), Some(c));
            assert_eq!(Cipher::parse(c.name()), Some(c));
        }
        assert_eq!(Cipher::from_code(0), None);
        assert_eq!(Cipher::from_code(3), None);
        let both = Cipher::ChaCha20Poly1305.bit() | Cipher::Aes256Gcm.bit();
        assert_eq!(Cipher::choose(Cipher::Aes256Gcm, both), Cipher::Aes256Gcm);
        let chacha_only = Cipher::ChaCha20Poly1305.bit();
        assert_eq!(
            Cipher::choose(Cipher::Aes256Gcm, chacha_only),
            Cipher::ChaCha20Poly1305
        );
        assert_eq!(
            Cipher::choose(Cipher::ChaCha20Poly1305, both),
            Cipher::ChaCha20Poly1305
        );
        assert_ne!(Cipher::default_offer() & Cipher::ChaCha20Poly1305.bit(), 0);
    }

    #[test]
    fn tokens_bind_address_and_reject_forgery() {
        let rng = &mut Rng::os();
        let k = TokenKey::random(rng);
        let claims = TokenClaims {
            session: true,
            addr: "127.0.0.1:4000".parse().unwrap(),
            expires_ms: 12345,
            exposure: [9; 16],
            max_datagram: 1200,
            request_key: [7; 32],
            cipher: Cipher::Aes256Gcm,
        };
        let t = k.seal(&claims, rng);
        assert_eq!(t.len(), TOKEN_LEN);
        assert_eq!(k.open(&t), Some(claims.clone()));
        let mut bad = t.clone();
        bad[20] ^= 1;
        assert_eq!(k.open(&bad), None);
        assert_eq!(TokenKey::random(rng).open(&t), None);
        assert_eq!(k.open(&t[1..]), None);
        let v6 = TokenClaims {
            addr: "[::1]:5".parse().unwrap(),
            ..claims
        };
        assert_eq!(k.open(&k.seal(&v6, rng)).unwrap().addr, v6.addr);
    }

    #[test]
    fn request_sealing() {
        let s = RequestSealer::new(&[4; 32]);
        let mut out = Vec::new();
        s.seal(9, b"hdr", b"items", &mut out);
        assert_eq!(s.open(9, b"hdr", &out).unwrap(), b"items");
        assert!(s.open(10, b"hdr", &out).is_none());
        assert!(s.open(9, b"hdX", &out).is_none());
        assert!(RequestSealer::new(&[5; 32]).open(9, b"hdr", &out).is_none());
    }
}

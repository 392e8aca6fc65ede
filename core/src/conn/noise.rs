//! The connection handshake: Noise `XX` (mutual authentication by static keys).
//!
//! Unlike the file pull (anonymous pullers, `NX`), both ends of a connection have a
//! static key, and the server keeps per-handshake state between messages 2 and 3 — which
//! is why servers demand a RETRY cookie before doing that work when handshakes arrive
//! faster than a threshold. The client's connection ID is bound into the prologue; each
//! side's transport parameters travel encrypted in its Noise payload (messages 2 and 3).
//!
//! After message 3 both sides hold a [`Transport`]: Noise's two split keys, one per
//! direction, the packet number as the explicit nonce. Noise transport messages carry
//! no associated data, but every SHORT header field is still bound: the destination
//! connection ID selects the key and the packet number is the nonce, so changing either
//! makes the tag fail.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use snow::{Builder, HandshakeState};

use crate::handshake::HandshakeError;
use crate::rng::Rng;

pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
const NOISE_MAX: usize = 65535;

fn prologue(client_cid: u64) -> Vec<u8> {
    let mut p = b"rgtp/1 conn\0".to_vec();
    p.extend_from_slice(&client_cid.to_le_bytes());
    p
}

fn builder() -> Builder<'static> {
    // The parameter string is a constant known to be valid.
    Builder::new(NOISE_PARAMS.parse().expect("valid noise params"))
}

fn key32(k: Option<&[u8]>) -> Result<[u8; 32], HandshakeError> {
    k.and_then(|k| k.try_into().ok())
        .ok_or_else(|| HandshakeError("peer sent no static key".into()))
}

/// Client side between INIT and FINISH.
///
/// snow restores the hash state but not the cipher state when a message fails to
/// authenticate, so one damaged or forged RESPONSE would spoil the handshake for the
/// genuine one. Each side therefore draws its ephemeral key itself (from its endpoint's
/// [`Rng`], the OS CSPRNG outside the simulator) and keeps it, so the state can be
/// rebuilt exactly as it was before the bad message (snow calls the builder method for
/// this "for testing only"; a fresh random key per handshake is just what snow would
/// generate itself).
pub struct ClientHandshake {
    state: HandshakeState,
    static_private: [u8; 32],
    client_cid: u64,
    ephemeral: [u8; 32],
    /// Message 1, re-sent unchanged until a RESPONSE comes (so a late RESPONSE to an
    /// earlier copy is still good).
    pub msg1: Vec<u8>,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientHandshake")
    }
}

/// The result of a finished handshake.
pub struct Established {
    pub transport: Transport,
    pub peer_static: [u8; 32],
}

/// Transport-mode encryption: what snow's stateless transport mode does (ChaCha20-
/// Poly1305 under the split keys, nonce = 32 zero bits then the packet number in
/// little-endian, no associated data; a test checks the two interoperate), but sealing
/// and opening in place, which spares a copy of every packet each way.
pub struct Transport {
    send: LessSafeKey,
    recv: LessSafeKey,
}

impl Transport {
    /// Takes the handshake's split: the first key protects initiator-to-responder.
    fn from_split(initiator: bool, (k1, k2): ([u8; 32], [u8; 32])) -> Self {
        let key = |k: [u8; 32]| {
            // A 32-byte key is always valid for ChaCha20-Poly1305.
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("32-byte key"))
        };
        let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
        Self {
            send: key(send),
            recv: key(recv),
        }
    }

    fn nonce(pn: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&pn.to_le_bytes());
        // Unique per key: packet numbers never repeat within a connection.
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `buf[from..]` in place under packet number `pn` and appends the tag.
    /// False (and `buf` unchanged) if the message would exceed Noise's 65535 bytes.
    pub fn seal_in_place(&self, pn: u64, buf: &mut Vec<u8>, from: usize) -> bool {
        let Some(body) = buf.get_mut(from..) else {
            return false;
        };
        if body.len() + TAG_LEN > NOISE_MAX {
            return false;
        }
        match self
            .send
            .seal_in_place_separate_tag(Self::nonce(pn), Aad::empty(), body)
        {
            Ok(tag) => {
                buf.extend_from_slice(tag.as_ref());
                true
            }
            Err(_) => false,
        }
    }

    /// Seals `plain` into `out` (which must hold it plus the tag); the sealed length.
    /// (The tests' counterpart of snow's call; packets are sealed in place.)
    #[cfg(test)]
    pub fn write_message(&self, pn: u64, plain: &[u8], out: &mut [u8]) -> Option<usize> {
        let n = plain.len() + TAG_LEN;
        if n > NOISE_MAX || out.len() < n {
            return None;
        }
        out[..plain.len()].copy_from_slice(plain);
        let tag = self
            .send
            .seal_in_place_separate_tag(Self::nonce(pn), Aad::empty(), &mut out[..plain.len()])
            .ok()?;
        out[plain.len()..n].copy_from_slice(tag.as_ref());
        Some(n)
    }

    /// Opens sealed packet `pn` held in `buf` in place; the plaintext is then
    /// `buf[..len]`. None if it does not authenticate.
    pub fn open_in_place(&self, pn: u64, buf: &mut [u8]) -> Option<usize> {
        if buf.len() > NOISE_MAX {
            return None;
        }
        let plain = self
            .recv
            .open_in_place(Self::nonce(pn), Aad::empty(), buf)
            .ok()?;
        Some(plain.len())
    }
}

const TAG_LEN: usize = 16;

/// The transport keys, once (and only once) the handshake is complete.
fn split(state: &mut HandshakeState) -> Result<([u8; 32], [u8; 32]), HandshakeError> {
    if !state.is_handshake_finished() {
        return Err(HandshakeError("the Noise handshake is not finished".into()));
    }
    Ok(state.dangerously_get_raw_split())
}

fn initiator(
    static_private: &[u8; 32],
    client_cid: u64,
    ephemeral: &[u8; 32],
) -> Result<(HandshakeState, Vec<u8>), HandshakeError> {
    let mut state = builder()
        .local_private_key(static_private)?
        .fixed_ephemeral_key_for_testing_only(ephemeral)
        .prologue(&prologue(client_cid))?
        .build_initiator()?;
    let mut msg1 = vec![0u8; 64];
    let n = state.write_message(&[], &mut msg1)?;
    msg1.truncate(n);
    Ok((state, msg1))
}

impl ClientHandshake {
    /// Writes message 1 under a fresh ephemeral key drawn from `rng`.
    pub fn start(
        static_private: &[u8; 32],
        client_cid: u64,
        rng: &mut Rng,
    ) -> Result<Self, HandshakeError> {
        let ephemeral: [u8; 32] = rng.bytes();
        let (state, msg1) = initiator(static_private, client_cid, &ephemeral)?;
        Ok(Self {
            state,
            static_private: *static_private,
            client_cid,
            ephemeral,
            msg1,
        })
    }

    /// Reads message 2: the server's static key and payload. After a message that
    /// does not authenticate, the state is rebuilt as it was, ready for the real one.
    pub fn read_response(&mut self, msg2: &[u8]) -> Result<([u8; 32], Vec<u8>), HandshakeError> {
        let mut buf = vec![0u8; NOISE_MAX];
        match self.state.read_message(msg2, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok((key32(self.state.get_remote_static())?, buf))
            }
            Err(e) => {
                let (state, msg1) =
                    initiator(&self.static_private, self.client_cid, &self.ephemeral)?;
                debug_assert_eq!(msg1, self.msg1);
                self.state = state;
                Err(e.into())
            }
        }
    }

    /// Writes message 3 carrying `payload` and enters transport mode.
    pub fn finish(mut self, payload: &[u8]) -> Result<(Vec<u8>, Established), HandshakeError> {
        let peer_static = key32(self.state.get_remote_static())?;
        let mut msg3 = vec![0u8; payload.len() + 128];
        let n = self.state.write_message(payload, &mut msg3)?;
        msg3.truncate(n);
        let transport = Transport::from_split(true, split(&mut self.state)?);
        Ok((
            msg3,
            Established {
                transport,
                peer_static,
            },
        ))
    }
}

/// Server side between RESPONSE and FINISH (see [`ClientHandshake`] on rebuilding).
pub struct ServerHandshake {
    state: HandshakeState,
    static_private: [u8; 32],
    client_cid: u64,
    ephemeral: [u8; 32],
    msg1: Vec<u8>,
    payload: Vec<u8>,
}

fn responder(
    static_private: &[u8; 32],
    client_cid: u64,
    ephemeral: &[u8; 32],
    msg1: &[u8],
    payload: &[u8],
) -> Result<(HandshakeState, Vec<u8>), HandshakeError> {
    let mut state = builder()
        .local_private_key(static_private)?
        .fixed_ephemeral_key_for_testing_only(ephemeral)
        .prologue(&prologue(client_cid))?
        .build_responder()?;
    let mut scratch = [0u8; 64];
    let n = state.read_message(msg1, &mut scratch)?;
    if n != 0 {
        return Err(HandshakeError("unexpected payload in message 1".into()));
    }
    let mut msg2 = vec![0u8; payload.len() + 160];
    let n = state.write_message(payload, &mut msg2)?;
    msg2.truncate(n);
    Ok((state, msg2))
}

impl ServerHandshake {
    /// Reads message 1 and writes message 2 carrying `payload`, under a fresh ephemeral
    /// key drawn from `rng`.
    pub fn respond(
        static_private: &[u8; 32],
        client_cid: u64,
        msg1: &[u8],
        payload: &[u8],
        rng: &mut Rng,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let ephemeral: [u8; 32] = rng.bytes();
        let (state, msg2) = responder(static_private, client_cid, &ephemeral, msg1, payload)?;
        Ok((
            Self {
                state,
                static_private: *static_private,
                client_cid,
                ephemeral,
                msg1: msg1.to_vec(),
                payload: payload.to_vec(),
            },
            msg2,
        ))
    }

    /// The message 1 this handshake answered.
    pub fn msg1(&self) -> &[u8] {
        &self.msg1
    }

    /// Reads message 3 and returns its payload. After a message that does not
    /// authenticate, the state is rebuilt as it was, ready for the genuine one.
    pub fn read_finish(&mut self, msg3: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut buf = vec![0u8; NOISE_MAX];
        match self.state.read_message(msg3, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(buf)
            }
            Err(e) => {
                let (state, _) = responder(
                    &self.static_private,
                    self.client_cid,
                    &self.ephemeral,
                    &self.msg1,
                    &self.payload,
                )?;
                self.state = state;
                Err(e.into())
            }
        }
    }

    /// After a successful `read_finish`: the client's static key and transport keys.
    pub fn established(mut self) -> Result<Established, HandshakeError> {
        let peer_static = key32(self.state.get_remote_static())?;
        let transport = Transport::from_split(false, split(&mut self.state)?);
        Ok(Established {
            transport,
            peer_static,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::StaticKey;

    #[test]
    fn xx_authenticates_both_and_keys_match() {
        let (c, s) = (StaticKey::generate(), StaticKey::generate());
        let mut ch = ClientHandshake::start(&c.private, 42, &mut Rng::os()).unwrap();
        let (mut sh, msg2) =
            ServerHandshake::respond(&s.private, 42, &ch.msg1, b"server", &mut Rng::os()).unwrap();
        // Damaged copies (anywhere) are rejected without spoiling the state.
        for i in 0..msg2.len() {
            let mut bad = msg2.clone();
            bad[i] ^= 1;
            assert!(ch.read_response(&bad).is_err());
        }
        let (key, p) = ch.read_response(&msg2).unwrap();
        assert_eq!((key, &p[..]), (s.public, &b"server"[..]));
        let (msg3, ce) = ch.finish(b"client").unwrap();
        for i in 0..msg3.len() {
            let mut bad = msg3.clone();
            bad[i] ^= 1;
            assert!(sh.read_finish(&bad).is_err());
        }
        assert_eq!(sh.read_finish(&msg3).unwrap(), b"client");
        let se = sh.established().unwrap();
        assert_eq!(ce.peer_static, s.public);
        assert_eq!(se.peer_static, c.public);
        let mut buf = [0u8; 64];
        let n = ce.transport.write_message(7, b"hi", &mut buf).unwrap();
        let mut got = buf[..n].to_vec();
        assert!(se.transport.open_in_place(8, &mut got).is_none());
        let mut got = buf[..n].to_vec();
        let m = se.transport.open_in_place(7, &mut got).unwrap();
        assert_eq!(&got[..m], b"hi");
        let n = se.transport.write_message(7, b"yo", &mut buf).unwrap();
        // Each direction has its own key: a server message does not open as a client one.
        assert!(se
            .transport
            .open_in_place(7, &mut buf[..n].to_vec())
            .is_none());
        assert!(ce
            .transport
            .open_in_place(7, &mut buf[..n].to_vec())
            .is_some());
        // Sealing in place after a prefix equals sealing a copy.
        let mut v = b"headerhello".to_vec();
        assert!(ce.transport.seal_in_place(9, &mut v, 6));
        let n = ce.transport.write_message(9, b"hello", &mut buf).unwrap();
        assert_eq!(&v[6..], &buf[..n]);
    }

    /// The in-place transport is Noise's transport mode: it talks to snow's own in
    /// both directions (same keys, nonce format and empty associated data).
    #[test]
    fn transport_interoperates_with_snow() {
        let (c, s) = (StaticKey::generate(), StaticKey::generate());
        let mut ci = builder()
            .local_private_key(&c.private)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut sr = builder()
            .local_private_key(&s.private)
            .unwrap()
            .build_responder()
            .unwrap();
        let (mut m, mut p) = ([0u8; 1024], [0u8; 1024]);
        let n = ci.write_message(&[], &mut m).unwrap();
        sr.read_message(&m[..n], &mut p).unwrap();
        let n = sr.write_message(&[], &mut m).unwrap();
        ci.read_message(&m[..n], &mut p).unwrap();
        let n = ci.write_message(&[], &mut m).unwrap();
        sr.read_message(&m[..n], &mut p).unwrap();
        let ours = Transport::from_split(true, ci.dangerously_get_raw_split());
        let theirs = sr.into_stateless_transport_mode().unwrap();
        for pn in [0u64, 1, 0x0102_0304_0506_0708] {
            let n = ours.write_message(pn, b"client to server", &mut m).unwrap();
            let k = theirs.read_message(pn, &m[..n], &mut p).unwrap();
            assert_eq!(&p[..k], b"client to server");
            let n = theirs
                .write_message(pn, b"server to client", &mut m)
                .unwrap();
            let mut v = m[..n].to_vec();
            let k = ours.open_in_place(pn, &mut v).unwrap();
            assert_eq!(&v[..k], b"server to client");
        }
    }

    #[test]
    fn prologue_binds_client_cid() {
        let (c, s) = (StaticKey::generate(), StaticKey::generate());
        let mut ch = ClientHandshake::start(&c.private, 1, &mut Rng::os()).unwrap();
        let (_, msg2) =
            ServerHandshake::respond(&s.private, 2, &ch.msg1, b"x", &mut Rng::os()).unwrap();
        assert!(ch.read_response(&msg2).is_err());
    }
}

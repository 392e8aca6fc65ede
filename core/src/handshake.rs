//! The pull handshake: Noise `NX` (the first two messages of the seed's `XX`).
//!
//! The puller is anonymous, so its static key (XX's third message) would add a round
//! trip and force the exposer to keep per-puller state between messages 2 and 3. With
//! NX the exposer answers message 1 statelessly, the puller authenticates the exposer's
//! static key after one round trip, and the manifest (content key, request key, token)
//! travels encrypted in message 2. The HELLO fields outside Noise (name, datagram size)
//! are bound into the prologue, so tampering with them fails the handshake.
//!
//! Message 1's payload is the puller's cipher offer (`[1, set]`, a [`CipherSet`]); an
//! empty payload offers ChaCha20-Poly1305 only. It travels in clear but is hashed into
//! the Noise transcript, so an attacker who strips AES-256-GCM from the offer (or the
//! exposer's choice from the manifest) makes message 2 fail to decrypt: no downgrade.
//!
//! Both sides draw their ephemeral key from the caller's [`Rng`] (the OS CSPRNG outside
//! the simulator) and hand it to snow, whose own generator is then never used: a
//! simulated handshake reproduces from the simulation's seed.

use snow::{Builder, HandshakeState};

use crate::crypto::{Cipher, CipherSet};
use crate::rng::Rng;

/// Version byte of message 1's cipher offer.
const OFFER_VERSION: u8 = 1;

fn offer_payload(offer: CipherSet) -> [u8; 2] {
    [OFFER_VERSION, offer]
}

/// Bytes of Noise message 1 before its payload: the initiator's ephemeral key (in NX
/// nothing is encrypted yet, so the payload follows in clear).
const MSG1_KEY_LEN: usize = 32;

/// The cipher set that Noise message 1 `msg1` offers, read before answering it (so the
/// answer can depend on it). [`respond`] hashes the same bytes into the transcript.
pub fn offer_of(msg1: &[u8]) -> Result<CipherSet, HandshakeError> {
    let payload = msg1
        .get(MSG1_KEY_LEN..)
        .ok_or_else(|| HandshakeError("message 1 too short".into()))?;
    parse_offer(payload)
}

/// The cipher set message 1's payload offers (strict: empty, or exactly `[1, set]`).
fn parse_offer(payload: &[u8]) -> Result<CipherSet, HandshakeError> {
    match payload {
        [] => Ok(Cipher::ChaCha20Poly1305.bit()),
        [OFFER_VERSION, set] => Ok(*set),
        _ => Err(HandshakeError("malformed cipher offer in message 1".into())),
    }
}

pub const NOISE_PARAMS: &str = "Noise_NX_25519_ChaChaPoly_BLAKE2s";
/// Largest Noise message (spec limit).
const NOISE_MAX: usize = 65535;

#[derive(Debug)]
pub struct HandshakeError(pub String);

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "handshake failed: {}", self.0)
    }
}
impl std::error::Error for HandshakeError {}

impl From<snow::Error> for HandshakeError {
    fn from(e: snow::Error) -> Self {
        HandshakeError(e.to_string())
    }
}

fn prologue(name: &str, max_datagram: u16) -> Vec<u8> {
    let mut p = b"rgtp/1 pull\0".to_vec();
    p.extend_from_slice(&max_datagram.to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    p
}

fn builder() -> Builder<'static> {
    // The parameter string is a constant known to be valid.
    Builder::new(NOISE_PARAMS.parse().expect("valid noise params"))
}

/// Puller side, between sending HELLO and receiving WELCOME.
pub struct Initiator {
    state: HandshakeState,
}

impl Initiator {
    /// Returns the state and Noise message 1 offering `offer`, under an ephemeral key
    /// from the OS CSPRNG.
    pub fn start(
        name: &str,
        max_datagram: u16,
        offer: CipherSet,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        Self::start_with_rng(name, max_datagram, offer, &mut Rng::os())
    }

    /// Returns the state and Noise message 1 offering `offer`, under an ephemeral key
    /// drawn from `rng`.
    pub fn start_with_rng(
        name: &str,
        max_datagram: u16,
        offer: CipherSet,
        rng: &mut Rng,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let pro = prologue(name, max_datagram);
        let ephemeral: [u8; 32] = rng.bytes();
        // snow calls this "for testing only"; a fresh random key is just what it would
        // generate itself.
        let mut state = builder()
            .fixed_ephemeral_key_for_testing_only(&ephemeral)
            .prologue(&pro)?
            .build_initiator()?;
        let mut msg = vec![0u8; 64];
        let n = state.write_message(&offer_payload(offer), &mut msg)?;
        msg.truncate(n);
        Ok((Self { state }, msg))
    }

    /// Reads Noise message 2: returns the exposer's static key and the payload.
    pub fn finish(mut self, msg2: &[u8]) -> Result<([u8; 32], Vec<u8>), HandshakeError> {
        let mut payload = vec![0u8; NOISE_MAX];
        let n = self.state.read_message(msg2, &mut payload)?;
        payload.truncate(n);
        let rs = self
            .state
            .get_remote_static()
            .ok_or_else(|| HandshakeError("exposer sent no static key".into()))?;
        let key: [u8; 32] = rs
            .try_into()
            .map_err(|_| HandshakeError("bad static key length".into()))?;
        Ok((key, payload))
    }
}

/// Exposer side: answers Noise message 1 (whose offer [`offer_of`] read) with message 2
/// carrying `payload`, statelessly, under an ephemeral key from the OS CSPRNG.
pub fn respond(
    static_private: &[u8; 32],
    name: &str,
    max_datagram: u16,
    msg1: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, HandshakeError> {
    respond_with_rng(
        static_private,
        name,
        max_datagram,
        msg1,
        payload,
        &mut Rng::os(),
    )
}

/// As [`respond`], under an ephemeral key drawn from `rng`.
pub fn respond_with_rng(
    static_private: &[u8; 32],
    name: &str,
    max_datagram: u16,
    msg1: &[u8],
    payload: &[u8],
    rng: &mut Rng,
) -> Result<Vec<u8>, HandshakeError> {
    let pro = prologue(name, max_datagram);
    let ephemeral: [u8; 32] = rng.bytes();
    let mut state = builder()
        .local_private_key(static_private)?
        .fixed_ephemeral_key_for_testing_only(&ephemeral)
        .prologue(&pro)?
        .build_responder()?;
    let mut scratch = [0u8; 64];
    let n = state.read_message(msg1, &mut scratch)?;
    parse_offer(&scratch[..n])?;
    let mut out = vec![0u8; payload.len() + 128];
    let n = state.write_message(payload, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Generates an X25519 key pair for a Noise static key: (private, public).
pub fn generate_keypair() -> ([u8; 32], [u8; 32]) {
    let kp = builder().generate_keypair().expect("keypair generation");
    let mut private = [0u8; 32];
    let mut public = [0u8; 32];
    private.copy_from_slice(&kp.private);
    public.copy_from_slice(&kp.public);
    (private, public)
}

/// Derives the public key of a static private key by running a local handshake, since
/// snow does not expose the scalar multiplication directly.
pub fn public_key_of(private: &[u8; 32]) -> Result<[u8; 32], HandshakeError> {
    let (init, m1) = Initiator::start("", 0, 0)?;
    let m2 = respond(private, "", 0, &m1, &[])?;
    Ok(init.finish(&m2)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_authenticates_exposer_and_carries_payload() {
        let (private, public) = generate_keypair();
        let (init, m1) = Initiator::start("file.bin", 1200, 0b11).unwrap();
        assert_eq!(offer_of(&m1).unwrap(), 0b11);
        let m2 = respond(&private, "file.bin", 1200, &m1, b"manifest").unwrap();
        let (key, payload) = init.finish(&m2).unwrap();
        assert_eq!(key, public);
        assert_eq!(payload, b"manifest");
        assert_eq!(public_key_of(&private).unwrap(), public);
    }

    #[test]
    fn tampered_prologue_or_message_fails() {
        let (private, _) = generate_keypair();
        let x = b"x";
        let (init, m1) = Initiator::start("a", 1200, 1).unwrap();
        // Exposer saw a different name (tampered HELLO): the puller rejects the answer.
        let m2 = respond(&private, "b", 1200, &m1, x).unwrap();
        assert!(init.finish(&m2).is_err());
        let (init, m1) = Initiator::start("a", 1200, 1).unwrap();
        let mut m2 = respond(&private, "a", 1200, &m1, x).unwrap();
        let last = m2.len() - 1;
        m2[last] ^= 1;
        assert!(init.finish(&m2).is_err());
        assert!(respond(&private, "a", 1200, &[1, 2, 3], x).is_err());
    }

    #[test]
    fn a_changed_cipher_offer_fails_the_handshake() {
        let (private, _) = generate_keypair();
        let both = Cipher::ChaCha20Poly1305.bit() | Cipher::Aes256Gcm.bit();
        let (init, mut m1) = Initiator::start("a", 1200, both).unwrap();
        // An attacker strips AES-256-GCM from the offer on the way.
        let last = m1.len() - 1;
        assert_eq!(m1[last], both);
        m1[last] = Cipher::ChaCha20Poly1305.bit();
        assert_eq!(offer_of(&m1).unwrap(), Cipher::ChaCha20Poly1305.bit());
        let m2 = respond(&private, "a", 1200, &m1, b"manifest").unwrap();
        // The puller's transcript has the offer it sent: message 2 does not decrypt.
        assert!(init.finish(&m2).is_err());
        // A malformed offer is refused outright.
        let (_, mut m1) = Initiator::start("a", 1200, both).unwrap();
        m1.push(0);
        assert!(offer_of(&m1).is_err());
        assert!(respond(&private, "a", 1200, &m1, b"").is_err());
    }
}

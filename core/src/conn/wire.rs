//! Strict encoding and decoding of connection packets (docs/PROTOCOL-connections.md).
//!
//! Every connection packet starts like a file-pull packet — the protocol version byte,
//! then a type byte — but its types live in 16..=31, so the two families share one UDP
//! port without ever being mistaken for each other. Decoders never panic, check every
//! length against the datagram and reject trailing bytes (INIT's zero padding aside).
//! Fields are little-endian, as in the file-pull packets.

use crate::wire::{Reader, WireError, Writer, VERSION};

/// Client → server: Noise XX message 1, padded.
pub const T_INIT: u8 = 16;
/// Server → client: Noise XX message 2.
pub const T_RESPONSE: u8 = 17;
/// Client → server: Noise XX message 3.
pub const T_FINISH: u8 = 18;
/// Server → client: stateless address-validation cookie.
pub const T_RETRY: u8 = 19;
/// Server → client: nobody listens here.
pub const T_REFUSE: u8 = 20;
/// Either way, after the handshake: sealed frames.
pub const T_SHORT: u8 = 21;
/// Either way: "I have no state for that connection" (proved by a token).
pub const T_STATELESS_RESET: u8 = 22;

/// Lowest and highest type number reserved for connections.
pub const FIRST_TYPE: u8 = 16;
pub const LAST_TYPE: u8 = 31;

/// INIT is padded to at least this: the 3x anti-amplification budget then covers the
/// RESPONSE, and a REFUSE or RETRY is always smaller than what triggered it.
pub const MIN_INIT_LEN: usize = 1200;
/// Version, type, destination connection ID, packet number.
pub const SHORT_HEADER_LEN: usize = 2 + 8 + 8;
/// Poly1305 tag.
pub const TAG_LEN: usize = 16;
pub const RESET_TOKEN_LEN: usize = 16;
pub const STATELESS_RESET_LEN: usize = 2 + RESET_TOKEN_LEN;
/// Upper bound on re-requested ranges in one ACK frame.
pub const MAX_WANT_RANGES: usize = 32;
/// Smallest datagram size a connection will use.
pub const MIN_DATAGRAM: usize = 512;
/// Largest datagram size a connection will use (UDP over IPv4 carries 65 507 bytes;
/// Noise caps a message at 65 535).
pub const MAX_DATAGRAM: usize = 65_000;

/// Is this datagram a connection packet (as opposed to a file-pull packet)?
pub fn is_conn_packet(d: &[u8]) -> bool {
    d.len() >= 2 && d[0] == VERSION && (FIRST_TYPE..=LAST_TYPE).contains(&d[1])
}

/// The destination connection ID of a packet a client sends to an established or
/// half-open server connection (FINISH, SHORT), read without decoding the rest: what
/// a process sharing its UDP port with others needs to know whose packet it is.
pub fn server_bound_dst_cid(d: &[u8]) -> Option<u64> {
    if d.len() < 10 || d[0] != VERSION || !matches!(d[1], T_FINISH | T_SHORT) {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[2..10]);
    Some(u64::from_le_bytes(b))
}

fn start(t: u8, cap: usize) -> Writer {
    let mut w = Writer::with_capacity(cap);
    w.u8(VERSION).u8(t);
    w
}

/// A decoded connection packet, borrowing from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Init {
        src_cid: u64,
        token: &'a [u8],
        noise: &'a [u8],
    },
    Response {
        dst_cid: u64,
        src_cid: u64,
        noise: &'a [u8],
    },
    Finish {
        dst_cid: u64,
        noise: &'a [u8],
    },
    Retry {
        dst_cid: u64,
        token: &'a [u8],
    },
    Refuse {
        dst_cid: u64,
    },
    Short {
        dst_cid: u64,
        pn: u64,
        sealed: &'a [u8],
    },
    StatelessReset {
        token: [u8; RESET_TOKEN_LEN],
    },
}

impl Packet<'_> {
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Packet::Init {
                src_cid,
                token,
                noise,
            } => {
                let mut w = start(T_INIT, MIN_INIT_LEN);
                w.u64(src_cid).short_bytes(token).long_bytes(noise);
                if w.buf.len() < MIN_INIT_LEN {
                    w.buf.resize(MIN_INIT_LEN, 0);
                }
                w.buf
            }
            Packet::Response {
                dst_cid,
                src_cid,
                noise,
            } => {
                let mut w = start(T_RESPONSE, 20 + noise.len());
                w.u64(dst_cid).u64(src_cid).long_bytes(noise);
                w.buf
            }
            Packet::Finish { dst_cid, noise } => {
                let mut w = start(T_FINISH, 12 + noise.len());
                w.u64(dst_cid).long_bytes(noise);
                w.buf
            }
            Packet::Retry { dst_cid, token } => {
                let mut w = start(T_RETRY, 11 + token.len());
                w.u64(dst_cid).short_bytes(token);
                w.buf
            }
            Packet::Refuse { dst_cid } => {
                let mut w = start(T_REFUSE, 10);
                w.u64(dst_cid);
                w.buf
            }
            Packet::Short {
                dst_cid,
                pn,
                sealed,
            } => {
                let mut w = start(T_SHORT, SHORT_HEADER_LEN + sealed.len());
                w.u64(dst_cid).u64(pn).bytes(sealed);
                w.buf
            }
            Packet::StatelessReset { token } => {
                let mut w = start(T_STATELESS_RESET, STATELESS_RESET_LEN);
                w.bytes(&token);
                w.buf
            }
        }
    }
}

/// Writes a SHORT header into the first `SHORT_HEADER_LEN` bytes of `out`.
pub fn write_short_header(out: &mut [u8], dst_cid: u64, pn: u64) {
    out[0] = VERSION;
    out[1] = T_SHORT;
    out[2..10].copy_from_slice(&dst_cid.to_le_bytes());
    out[10..18].copy_from_slice(&pn.to_le_bytes());
}

/// Strict decoder for any connection packet.
pub fn decode(d: &[u8]) -> Result<Packet<'_>, WireError> {
    let mut r = Reader::new(d);
    let v = r.u8()?;
    if v != VERSION {
        return Err(WireError::BadVersion(v));
    }
    let t = r.u8()?;
    let p = match t {
        T_INIT => {
            if d.len() < MIN_INIT_LEN {
                return Err(WireError::BadLength);
            }
            let src_cid = r.u64()?;
            let token = r.short_bytes()?;
            let noise = r.long_bytes()?;
            // An OR over the whole padding (about 1 KiB) vectorises; `any` with its early
            // exit does not, and every INIT of a flood passes here.
            if r.rest().iter().fold(0u8, |acc, &b| acc | b) != 0 {
                return Err(WireError::BadValue("padding"));
            }
            return Ok(Packet::Init {
                src_cid,
                token,
                noise,
            });
        }
        T_RESPONSE => Packet::Response {
            dst_cid: r.u64()?,
            src_cid: r.u64()?,
            noise: r.long_bytes()?,
        },
        T_FINISH => Packet::Finish {
            dst_cid: r.u64()?,
            noise: r.long_bytes()?,
        },
        T_RETRY => Packet::Retry {
            dst_cid: r.u64()?,
            token: r.short_bytes()?,
        },
        T_REFUSE => Packet::Refuse { dst_cid: r.u64()? },
        T_SHORT => {
            let dst_cid = r.u64()?;
            let pn = r.u64()?;
            let sealed = r.rest();
            if sealed.len() < TAG_LEN {
                return Err(WireError::Truncated);
            }
            return Ok(Packet::Short {
                dst_cid,
                pn,
                sealed,
            });
        }
        T_STATELESS_RESET => Packet::StatelessReset { token: r.array()? },
        other => return Err(WireError::BadType(other)),
    };
    r.finish()?;
    Ok(p)
}

/// What each side tells the other inside the (encrypted) Noise payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportParams {
    /// The connection ID the sender wants to see on packets sent to it.
    pub cid: u64,
    /// Initial credit: the peer may send stream bytes below this offset.
    pub initial_limit: u64,
    /// Largest datagram the sender accepts.
    pub max_datagram: u16,
    /// The sender's idle timeout; the connection uses the smaller of the two.
    pub idle_timeout_ms: u32,
    /// The token that proves a STATELESS_RESET for `cid` came from the sender.
    pub reset_token: [u8; RESET_TOKEN_LEN],
}

impl TransportParams {
    pub const LEN: usize = 8 + 8 + 2 + 4 + RESET_TOKEN_LEN;

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::LEN);
        w.u64(self.cid)
            .u64(self.initial_limit)
            .u16(self.max_datagram)
            .u32(self.idle_timeout_ms)
            .bytes(&self.reset_token);
        w.buf
    }

    pub fn decode(d: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(d);
        let p = TransportParams {
            cid: r.u64()?,
            initial_limit: r.u64()?,
            max_datagram: r.u16()?,
            idle_timeout_ms: r.u32()?,
            reset_token: r.array()?,
        };
        r.finish()?;
        if (p.max_datagram as usize) < MIN_DATAGRAM {
            return Err(WireError::BadValue("max datagram"));
        }
        if p.idle_timeout_ms == 0 {
            return Err(WireError::BadValue("idle timeout"));
        }
        Ok(p)
    }
}

/// Frame type bytes inside a SHORT packet's plaintext.
pub const F_PING: u8 = 0x01;
pub const F_ACK: u8 = 0x02;
pub const F_STREAM: u8 = 0x10;
pub const F_STREAM_FIN: u8 = 0x11;
pub const F_RESET: u8 = 0x20;
pub const F_PATH_CHALLENGE: u8 = 0x30;
pub const F_PATH_RESPONSE: u8 = 0x31;

/// Fixed part of an ACK frame (type byte included), without its ranges.
pub const ACK_FIXED_LEN: usize = 1 + 8 + 4 + 8 + 8 + 8 + 1 + 1;
pub const WANT_RANGE_LEN: usize = 8 + 4;
/// STREAM frame header: type, offset, length.
pub const STREAM_HEADER_LEN: usize = 1 + 8 + 2;

/// The reader's view of the stream its peer writes, plus the packet-number echo that
/// gives the peer an RTT sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Largest packet number received from the peer, and how long ago (µs) it came.
    pub largest_pn: u64,
    pub ack_delay_us: u32,
    /// Every stream byte below this offset has been received.
    pub acked: u64,
    /// Credit: the writer may send stream bytes below this offset.
    pub limit: u64,
    /// Distinct stream bytes received so far, in order or not (a delivery counter for
    /// the writer's rate model).
    pub received: u64,
    /// The FIN was received and every byte before it: the stream is complete.
    pub fin: bool,
    /// Ranges (offset, length) the reader asks to be sent again.
    pub want: Vec<(u64, u32)>,
}

/// One frame, borrowing stream data from the plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Ping,
    Ack(Ack),
    Stream {
        offset: u64,
        data: &'a [u8],
        fin: bool,
    },
    /// Abort: the connection is gone; `code` 0 = aborted by the application, 1 = closed
    /// without reading (the sender will read nothing more).
    Reset {
        code: u8,
    },
    PathChallenge([u8; 8]),
    PathResponse([u8; 8]),
}

impl Frame<'_> {
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Frame::Ping => {
                w.u8(F_PING);
            }
            Frame::Ack(a) => {
                let n = a.want.len().min(MAX_WANT_RANGES);
                w.u8(F_ACK)
                    .u64(a.largest_pn)
                    .u32(a.ack_delay_us)
                    .u64(a.acked)
                    .u64(a.limit)
                    .u64(a.received)
                    .u8(a.fin as u8)
                    .u8(n as u8);
                for &(s, l) in &a.want[..n] {
                    w.u64(s).u32(l);
                }
            }
            Frame::Stream { offset, data, fin } => {
                w.u8(if *fin { F_STREAM_FIN } else { F_STREAM })
                    .u64(*offset)
                    .u16(data.len() as u16)
                    .bytes(data);
            }
            Frame::Reset { code } => {
                w.u8(F_RESET).u8(*code);
            }
            Frame::PathChallenge(d) => {
                w.u8(F_PATH_CHALLENGE).bytes(d);
            }
            Frame::PathResponse(d) => {
                w.u8(F_PATH_RESPONSE).bytes(d);
            }
        }
    }
}

/// Strictly decodes every frame of a plaintext; any error rejects the whole packet.
pub fn decode_frames(d: &[u8]) -> Result<Vec<Frame<'_>>, WireError> {
    let mut r = Reader::new(d);
    let mut out = Vec::new();
    if d.is_empty() {
        return Err(WireError::Truncated);
    }
    while r.position() < d.len() {
        let t = r.u8()?;
        let f = match t {
            F_PING => Frame::Ping,
            F_ACK => {
                let largest_pn = r.u64()?;
                let ack_delay_us = r.u32()?;
                let acked = r.u64()?;
                let limit = r.u64()?;
                let received = r.u64()?;
                let fin = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::BadValue("ack flags")),
                };
                let n = r.u8()? as usize;
                if n > MAX_WANT_RANGES {
                    return Err(WireError::BadLength);
                }
                let mut want = Vec::with_capacity(n);
                for _ in 0..n {
                    let s = r.u64()?;
                    let l = r.u32()?;
                    if l == 0 || s.checked_add(l as u64).is_none() {
                        return Err(WireError::BadValue("want range"));
                    }
                    want.push((s, l));
                }
                if limit < acked || received < acked {
                    return Err(WireError::BadValue("ack offsets"));
                }
                Frame::Ack(Ack {
                    largest_pn,
                    ack_delay_us,
                    acked,
                    limit,
                    received,
                    fin,
                    want,
                })
            }
            F_STREAM | F_STREAM_FIN => {
                let offset = r.u64()?;
                let data = r.long_bytes()?;
                if offset.checked_add(data.len() as u64).is_none() {
                    return Err(WireError::BadValue("stream offset"));
                }
                let fin = t == F_STREAM_FIN;
                if data.is_empty() && !fin {
                    return Err(WireError::BadValue("empty stream frame"));
                }
                Frame::Stream { offset, data, fin }
            }
            F_RESET => {
                let code = r.u8()?;
                if code > 1 {
                    return Err(WireError::BadValue("reset code"));
                }
                Frame::Reset { code }
            }
            F_PATH_CHALLENGE => Frame::PathChallenge(r.array()?),
            F_PATH_RESPONSE => Frame::PathResponse(r.array()?),
            other => return Err(WireError::BadType(other)),
        };
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packets_round_trip() {
        let noise = [5u8; 48];
        let tok = [6u8; 40];
        let sealed = [7u8; 30];
        let all = [
            Packet::Init {
                src_cid: 1,
                token: &tok,
                noise: &noise,
            },
            Packet::Response {
                dst_cid: 2,
                src_cid: 3,
                noise: &noise,
            },
            Packet::Finish {
                dst_cid: 4,
                noise: &noise,
            },
            Packet::Retry {
                dst_cid: 5,
                token: &tok,
            },
            Packet::Refuse { dst_cid: 6 },
            Packet::Short {
                dst_cid: 7,
                pn: 8,
                sealed: &sealed,
            },
            Packet::StatelessReset { token: [9; 16] },
        ];
        for p in &all {
            let e = p.encode();
            assert!(is_conn_packet(&e));
            assert!(
                crate::wire::peek_type(&e).is_err(),
                "must not parse as a pull packet"
            );
            assert_eq!(&decode(&e).unwrap(), p);
            if !matches!(p, Packet::Init { .. } | Packet::Short { .. }) {
                let mut long = e.clone();
                long.push(0);
                assert!(decode(&long).is_err());
            }
        }
        let init = all[0].encode();
        assert_eq!(init.len(), MIN_INIT_LEN);
        assert!(decode(&init[..1100]).is_err());
        let mut bad = init.clone();
        *bad.last_mut().unwrap() = 1;
        assert!(decode(&bad).is_err());
        // Stateless replies are smaller than the INIT that triggers them.
        assert!(all[4].encode().len() * 10 < init.len());
        let mut hdr = [0u8; SHORT_HEADER_LEN];
        write_short_header(&mut hdr, 7, 8);
        assert_eq!(&hdr[..], &all[5].encode()[..SHORT_HEADER_LEN]);
    }

    #[test]
    fn frames_round_trip_and_checks() {
        let frames = vec![
            Frame::Ping,
            Frame::Ack(Ack {
                largest_pn: 9,
                ack_delay_us: 100,
                acked: 1000,
                limit: 5000,
                received: 1200,
                fin: true,
                want: vec![(1000, 50), (1100, 7)],
            }),
            Frame::Stream {
                offset: 77,
                data: b"hello",
                fin: false,
            },
            Frame::Stream {
                offset: 82,
                data: b"",
                fin: true,
            },
            Frame::Reset { code: 1 },
            Frame::PathChallenge([1; 8]),
            Frame::PathResponse([2; 8]),
        ];
        let mut w = Writer::default();
        for f in &frames {
            f.encode(&mut w);
        }
        assert_eq!(decode_frames(&w.buf).unwrap(), frames);
        assert!(decode_frames(&[]).is_err());
        assert!(decode_frames(&[F_STREAM, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_frames(&[F_RESET, 2]).is_err());
        assert!(decode_frames(&[0x7f]).is_err());
        let p = TransportParams {
            cid: 1,
            initial_limit: 2,
            max_datagram: 1200,
            idle_timeout_ms: 3,
            reset_token: [4; 16],
        };
        assert_eq!(TransportParams::decode(&p.encode()).unwrap(), p);
        assert_eq!(p.encode().len(), TransportParams::LEN);
        let small = TransportParams {
            max_datagram: 100,
            ..p
        };
        assert!(TransportParams::decode(&small.encode()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decoders_never_panic(d in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = decode(&d);
            let _ = decode_frames(&d);
            let _ = TransportParams::decode(&d);
        }

        #[test]
        fn decoders_never_panic_on_valid_prefix(t in 16u8..24, d in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v = vec![VERSION, t];
            v.extend_from_slice(&d);
            let _ = decode(&v);
            let _ = decode_frames(&d);
        }
    }
}

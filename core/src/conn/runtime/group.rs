//! Port groups: several processes serve one UDP port (`SO_REUSEPORT`), each with
//! its own socket and engine, so a multi-process server's connections do not all
//! pass through one thread of one process.
//!
//! The kernel spreads datagrams over the group by a hash of the addresses, which
//! moves when a process joins or leaves. So every connection ID a member chooses
//! carries its *tag* (the top 16 bits), the port of a private loopback socket, its
//! mailbox. A member that receives a FINISH or SHORT for an ID it does not know,
//! tagged by another member, forwards it there in an envelope:
//!
//! `version ‖ T_FORWARD ‖ mac (16) ‖ family u8 (4/6) ‖ ip (16) ‖ port u16 ‖ datagram`
//!
//! `mac` = BLAKE3 keyed with a key derived from the server's static key (every
//! member has it), over everything after it. The owner checks it and handles the
//! datagram as if it had arrived on its own socket from the original address, and
//! answers from its own socket, bound to the same address: the peer sees no change.
//! Envelopes come only from loopback, and a forged one fails the MAC, so the mailbox
//! lets nobody inject a datagram with a source address they do not hold.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use super::super::wire::server_bound_dst_cid;
use crate::keys::StaticKey;
use crate::wire::VERSION;

/// Packet type of a forwarding envelope (inside the connection range, unused by
/// connection packets, so no other parser accepts it).
pub const T_FORWARD: u8 = 23;
const MAC_LEN: usize = 16;
const ADDR_LEN: usize = 1 + 16 + 2;
const HEADER_LEN: usize = 2 + MAC_LEN + ADDR_LEN;

/// A member's side of a port group.
pub(super) struct Group {
    /// Bound to 127.0.0.1; its port is the member's tag.
    pub(super) mailbox: UdpSocket,
    pub(super) tag: u16,
    key: [u8; 32],
}

impl Group {
    pub(super) fn new(static_key: &StaticKey) -> io::Result<Group> {
        let mailbox = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        mailbox.set_nonblocking(true)?;
        let tag = mailbox.local_addr()?.port();
        Ok(Group {
            mailbox,
            tag,
            key: forward_key(static_key),
        })
    }

    /// The member that owns the connection `d` is for, when that is another
    /// member: `known` says whether this member's endpoint knows the ID.
    pub(super) fn owner_of(&self, d: &[u8], known: impl FnOnce(u64) -> bool) -> Option<u16> {
        let cid = server_bound_dst_cid(d)?;
        let tag = (cid >> 48) as u16;
        if tag == self.tag || tag == 0 || known(cid) {
            return None;
        }
        Some(tag)
    }

    /// Sends `d`, received from `from`, to the member whose mailbox is `tag`.
    pub(super) fn forward(&self, tag: u16, from: SocketAddr, d: &[u8]) {
        let env = seal(&self.key, from, d);
        if let Err(e) = self.mailbox.send_to(&env, (Ipv4Addr::LOCALHOST, tag)) {
            tracing::debug!("forwarding to group member {tag}: {e}");
        }
    }

    /// Opens an envelope that arrived at the mailbox from `sender`: the original
    /// source and datagram, or `None` (dropped) if it is not a genuine envelope.
    pub(super) fn open<'a>(
        &self,
        sender: SocketAddr,
        env: &'a [u8],
    ) -> Option<(SocketAddr, &'a [u8])> {
        if !sender.ip().is_loopback() {
            return None;
        }
        open(&self.key, env)
    }
}

fn forward_key(k: &StaticKey) -> [u8; 32] {
    blake3::derive_key("rgtp conn port group forward v1", &k.private)
}

fn mac(key: &[u8; 32], body: &[u8]) -> [u8; MAC_LEN] {
    let h = blake3::keyed_hash(key, body);
    let mut m = [0u8; MAC_LEN];
    m.copy_from_slice(&h.as_bytes()[..MAC_LEN]);
    m
}

fn seal(key: &[u8; 32], from: SocketAddr, d: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + d.len());
    v.extend_from_slice(&[VERSION, T_FORWARD]);
    v.extend_from_slice(&[0u8; MAC_LEN]);
    let (fam, ip) = match from.ip() {
        IpAddr::V4(a) => (4u8, a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => (6u8, a.octets()),
    };
    v.push(fam);
    v.extend_from_slice(&ip);
    v.extend_from_slice(&from.port().to_le_bytes());
    v.extend_from_slice(d);
    let m = mac(key, &v[2 + MAC_LEN..]);
    v[2..2 + MAC_LEN].copy_from_slice(&m);
    v
}

fn open<'a>(key: &[u8; 32], env: &'a [u8]) -> Option<(SocketAddr, &'a [u8])> {
    if env.len() <= HEADER_LEN || env[0] != VERSION || env[1] != T_FORWARD {
        return None;
    }
    let body = &env[2 + MAC_LEN..];
    let want = mac(key, body);
    // Constant time: the MAC is the only thing standing between a local sender and
    // a spoofed source address.
    let got = &env[2..2 + MAC_LEN];
    if got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return None;
    }
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&body[1..17]);
    let ip = match body[0] {
        4 => IpAddr::V4(Ipv6Addr::from(ip).to_ipv4_mapped()?),
        6 => IpAddr::V6(Ipv6Addr::from(ip)),
        _ => return None,
    };
    let port = u16::from_le_bytes([body[17], body[18]]);
    Some((SocketAddr::new(ip, port), &body[ADDR_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_refuse_forgeries() {
        let key = [7u8; 32];
        for from in ["198.18.0.9:4433", "[2001:db8::1]:9"] {
            let from: SocketAddr = from.parse().unwrap();
            let env = seal(&key, from, b"datagram");
            assert_eq!(open(&key, &env), Some((from, &b"datagram"[..])));
            // Any changed byte fails: source, payload, MAC, header.
            for i in 0..env.len() {
                let mut bad = env.clone();
                bad[i] ^= 1;
                assert_eq!(open(&key, &bad), None, "byte {i}");
            }
            assert_eq!(open(&[8u8; 32], &env), None, "another server's key");
            assert_eq!(open(&key, &env[..HEADER_LEN]), None, "no datagram");
        }
    }

    #[test]
    fn only_other_members_tags_are_forwarded() {
        let g = Group::new(&StaticKey::generate()).unwrap();
        let short = |cid: u64| {
            let mut d = vec![VERSION, super::super::super::wire::T_SHORT];
            d.extend_from_slice(&cid.to_le_bytes());
            d.extend_from_slice(&[0u8; 24]);
            d
        };
        let other = g.tag.wrapping_add(1).max(1);
        let theirs = (u64::from(other) << 48) | 5;
        assert_eq!(g.owner_of(&short(theirs), |_| false), Some(other));
        // Known here (a connection from before the tags), ours, or untagged: kept.
        assert_eq!(g.owner_of(&short(theirs), |_| true), None);
        assert_eq!(
            g.owner_of(&short((u64::from(g.tag) << 48) | 5), |_| false),
            None
        );
        assert_eq!(g.owner_of(&short(5), |_| false), None);
        // INIT has no owner yet.
        let mut init = short(theirs);
        init[1] = super::super::super::wire::T_INIT;
        assert_eq!(g.owner_of(&init, |_| false), None);
    }
}

//! Helpers the sans-IO tests share (`mod common;` in each test file): connections
//! here, the sharing simulations in `sharing`.

#![allow(dead_code)]

pub mod sharing;

use std::net::SocketAddr;
use std::time::Instant;

use rgtp::conn::{Endpoint, EndpointConfig};

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A server endpoint with `ec`, listening.
pub fn listening(ec: EndpointConfig, now: Instant) -> Endpoint {
    let mut ep = Endpoint::new(ec, now);
    ep.set_listening(true);
    ep
}

/// Every datagram the endpoint wants to send now, with its destination.
pub fn drain(ep: &mut Endpoint, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit(now) {
        for d in t.datagrams() {
            out.push((t.dest, d.to_vec()));
        }
    }
    out
}

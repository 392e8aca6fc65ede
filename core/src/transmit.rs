//! What a sans-IO state machine asks its driver to send.

use std::net::SocketAddr;

/// One or more datagrams to one destination. `contents` holds datagrams back to back;
/// every one but the last is exactly `segment_size` bytes, which is the layout UDP GSO
/// (`UDP_SEGMENT`) sends in a single system call.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub dest: SocketAddr,
    pub segment_size: usize,
    pub contents: Vec<u8>,
}

impl Transmit {
    pub fn single(dest: SocketAddr, datagram: Vec<u8>) -> Self {
        Self {
            dest,
            segment_size: datagram.len(),
            contents: datagram,
        }
    }
    /// The individual datagrams.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.contents.chunks(self.segment_size.max(1))
    }
    pub fn count(&self) -> usize {
        self.contents.len().div_ceil(self.segment_size.max(1))
    }
}

//! What a sans-IO state machine asks its driver to send.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

/// Bytes a transmit may point into instead of copying them (a sealed chunk in the
/// exposer's mapped store or its cache).
pub trait SharedBytes: Send + Sync {
    /// The bytes.
    fn bytes(&self) -> &[u8];
}

impl SharedBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Payloads that stay where they are: datagram `i` is header `i` (the `header_len`
/// bytes at `i * header_len` in `contents`) followed by `slices[i]` of `data`. The
/// driver hands both to the kernel as an iovec list, so the bulk bytes are copied
/// once (by the kernel), not twice.
#[derive(Clone)]
pub struct Gather {
    /// The buffer the payloads lie in.
    pub data: Arc<dyn SharedBytes>,
    /// Length of every datagram's header in [`Transmit::contents`].
    pub header_len: usize,
    /// (offset, length) in `data` of each datagram's payload.
    pub slices: Vec<(usize, usize)>,
}

impl std::fmt::Debug for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("header_len", &self.header_len)
            .field("slices", &self.slices)
            .finish()
    }
}

/// One or more datagrams to one destination. Without `gather`, `contents` holds the
/// datagrams back to back; every one but the last is exactly `segment_size` bytes,
/// which is the layout UDP GSO (`UDP_SEGMENT`) sends in a single system call. With
/// `gather`, `contents` holds only the headers (see [`Gather`]); the layout on the
/// wire is the same.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Where to send.
    pub dest: SocketAddr,
    /// Length of every datagram but the last (the GSO segment size).
    pub segment_size: usize,
    /// The datagrams back to back, or with `gather` only their headers.
    pub contents: Vec<u8>,
    /// Payloads to append to the headers, without copying them.
    pub gather: Option<Gather>,
}

impl Transmit {
    /// One datagram.
    pub fn single(dest: SocketAddr, datagram: Vec<u8>) -> Self {
        Self {
            dest,
            segment_size: datagram.len(),
            contents: datagram,
            gather: None,
        }
    }

    /// Contiguous datagrams (`contents` back to back).
    pub fn packed(dest: SocketAddr, segment_size: usize, contents: Vec<u8>) -> Self {
        Self {
            dest,
            segment_size,
            contents,
            gather: None,
        }
    }

    /// The individual datagrams (gathered ones are assembled into new buffers).
    pub fn datagrams(&self) -> Box<dyn Iterator<Item = Cow<'_, [u8]>> + '_> {
        match &self.gather {
            None => Box::new(
                self.contents
                    .chunks(self.segment_size.max(1))
                    .map(Cow::Borrowed),
            ),
            Some(g) => Box::new(g.slices.iter().enumerate().map(move |(i, &(off, len))| {
                let h = &self.contents[i * g.header_len..(i + 1) * g.header_len];
                let mut d = Vec::with_capacity(h.len() + len);
                d.extend_from_slice(h);
                d.extend_from_slice(&g.data.bytes()[off..off + len]);
                Cow::Owned(d)
            })),
        }
    }

    /// How many datagrams.
    pub fn count(&self) -> usize {
        match &self.gather {
            None => self.contents.len().div_ceil(self.segment_size.max(1)),
            Some(g) => g.slices.len(),
        }
    }

    /// Bytes on the wire (UDP payloads).
    pub fn len(&self) -> usize {
        match &self.gather {
            None => self.contents.len(),
            Some(g) => self.contents.len() + g.slices.iter().map(|s| s.1).sum::<usize>(),
        }
    }

    /// No bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_datagrams_are_header_then_slice() {
        let data: Arc<dyn SharedBytes> = Arc::new((0u8..100).collect::<Vec<u8>>());
        let t = Transmit {
            dest: "127.0.0.1:9".parse().unwrap(),
            segment_size: 2 + 40,
            contents: vec![0xa0, 0xa1, 0xb0, 0xb1],
            gather: Some(Gather {
                data,
                header_len: 2,
                slices: vec![(10, 40), (50, 7)],
            }),
        };
        let d: Vec<Vec<u8>> = t.datagrams().map(|d| d.into_owned()).collect();
        assert_eq!(d.len(), 2);
        assert_eq!(&d[0][..2], &[0xa0, 0xa1]);
        assert_eq!(&d[0][2..], &(10u8..50).collect::<Vec<u8>>()[..]);
        assert_eq!(&d[1][..2], &[0xb0, 0xb1]);
        assert_eq!(&d[1][2..], &(50u8..57).collect::<Vec<u8>>()[..]);
        assert_eq!(t.count(), 2);
        assert_eq!(t.len(), 4 + 47);
    }
}

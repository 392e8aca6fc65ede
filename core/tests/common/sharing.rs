//! Helpers the sharing simulations share (sim_share.rs, sim_pex.rs).

use std::sync::{Arc, Mutex};

use rgtp::merkle::{self, CHUNK_SIZE};
use rgtp::sim::SimRng;
use rgtp::source::ChunkSource;

/// A node's output: the bytes it stored so far (its sharer reads them as they grow).
pub struct Growing(pub Arc<Mutex<Vec<u8>>>);

impl ChunkSource for Growing {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let d = self.0.lock().unwrap();
        let at = index as usize * CHUNK_SIZE;
        let len = merkle::chunk_len(index, d.len() as u64);
        buf.clear();
        buf.extend_from_slice(&d[at..at + len]);
        Ok(())
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_content(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SimRng::new(seed);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

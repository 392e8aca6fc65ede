//! The frontier of a growing BLAKE3 tree: what a tree over more than `at` chunks
//! holds of its first `at` chunks, in at most 64 CVs.
//!
//! In BLAKE3's tree (a left subtree of the largest power of two chunks strictly less
//! than the node's, [`crate::merkle`]) the first `at` chunks of any longer content
//! are covered by complete subtrees, one per set bit of `at`, largest first: for
//! `at = 6`, the subtrees over chunks 0-3 and 4-5. Complete subtrees never change as
//! the content grows, so their (non-root) CVs summarize the first `at` chunks for
//! every later length. A live exposure uses this twice ([`crate::live`]): the exposer
//! forgets chunks older than its window yet still proves later chunks against the
//! root of every byte, and a follower keeps a frontier rather than a CV per chunk it
//! wrote, so neither side's memory grows with the stream.

use crate::merkle::{self, parent_cv, Hash};

/// The CVs of the complete subtrees over chunks `[0, at)`, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    at: u64,
    cvs: Vec<Hash>,
}

impl Frontier {
    /// The frontier of nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A frontier from its parts, if `cvs` has one CV per set bit of `at` (the
    /// manifest's window start, or a resume record).
    pub fn from_parts(at: u64, cvs: Vec<Hash>) -> Option<Self> {
        (cvs.len() == at.count_ones() as usize).then_some(Self { at, cvs })
    }

    /// Chunks covered.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// The subtree CVs, largest first.
    pub fn cvs(&self) -> &[Hash] {
        &self.cvs
    }

    /// Chunk `at` is complete: `cv` is its non-root CV ([`crate::live::full_chunk_cv`]).
    /// Subtrees it completes are merged, as BLAKE3's own hasher merges its stack.
    pub fn push(&mut self, cv: Hash) {
        self.cvs.push(cv);
        self.at += 1;
        let mut t = self.at;
        while t & 1 == 0 && self.cvs.len() >= 2 {
            let right = self.cvs.pop().unwrap_or_default();
            let left = self.cvs.pop().unwrap_or_default();
            self.cvs.push(parent_cv(&left, &right, false));
            t >>= 1;
        }
    }

    /// The root of a content of `total_len` bytes whose first `at` chunks this
    /// frontier covers and whose other chunks have the CVs `rest` (the last one as
    /// [`merkle::chunk_cv`] gives it). A marker that matches no root when the counts
    /// disagree, or when `rest` is empty and `at > 0` (complete subtrees' CVs are
    /// non-root: they cannot give the root of exactly `at` chunks).
    pub fn root_with(&self, rest: &[Hash], total_len: u64) -> Hash {
        let n = self.at + rest.len() as u64;
        if self.at == 0 {
            return merkle::root_from_cvs(rest, total_len);
        }
        if rest.is_empty() || n != merkle::chunk_count(total_len) {
            return blake3::derive_key("RGTP 2026 frontier: inconsistent input", &n.to_le_bytes());
        }
        self.node(0, n, rest, true)
    }

    /// The CV of the tree node over chunks `[lo, hi)` (the root when `root`).
    fn node(&self, lo: u64, hi: u64, rest: &[Hash], root: bool) -> Hash {
        if lo >= self.at {
            let part = &rest[(lo - self.at) as usize..(hi - self.at) as usize];
            if let ([only], false) = (part, root) {
                return *only;
            }
        }
        if hi <= self.at {
            // A node wholly inside the frontier, reached from a parent that crosses
            // `at`: it is one of the frontier's subtrees.
            return self.subtree_at(lo).unwrap_or_default();
        }
        let split = lo + merkle::left_subtree_chunks(hi - lo);
        parent_cv(
            &self.node(lo, split, rest, false),
            &self.node(split, hi, rest, false),
            root,
        )
    }

    /// The CV of the frontier's subtree starting at chunk `lo`.
    fn subtree_at(&self, lo: u64) -> Option<Hash> {
        let mut start = 0u64;
        let mut i = 0usize;
        for bit in (0..64).rev() {
            let size = 1u64 << bit;
            if self.at & size == 0 {
                continue;
            }
            if start == lo {
                return self.cvs.get(i).copied();
            }
            start += size;
            i += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::full_chunk_cv;
    use crate::merkle::{cvs_of_bytes, CHUNK_SIZE};

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        (0..n)
            .map(|i| {
                ((i as u64)
                    .wrapping_mul(31)
                    .wrapping_add(seed * 7 + i as u64 / 999)) as u8
            })
            .collect()
    }

    fn frontier_of(data: &[u8], at: u64) -> Frontier {
        let mut f = Frontier::new();
        for i in 0..at {
            let s = i as usize * CHUNK_SIZE;
            f.push(full_chunk_cv(i, &data[s..s + CHUNK_SIZE]));
        }
        f
    }

    /// A frontier at any point, with the CVs after it, gives b3sum of the content.
    #[test]
    fn frontier_and_the_rest_give_the_root() {
        for chunks in [2usize, 3, 4, 5, 8, 9, 17, 33, 64, 65] {
            for last in [1usize, CHUNK_SIZE / 2, CHUNK_SIZE] {
                let len = (chunks - 1) * CHUNK_SIZE + last;
                let data = bytes(len, chunks as u64);
                let cvs = cvs_of_bytes(&data);
                let root = *blake3::hash(&data).as_bytes();
                for at in 0..chunks as u64 {
                    let f = frontier_of(&data, at);
                    assert_eq!(f.cvs().len(), at.count_ones() as usize);
                    assert_eq!(
                        f.root_with(&cvs[at as usize..], len as u64),
                        root,
                        "{chunks} chunks, frontier at {at}"
                    );
                }
            }
        }
    }

    /// Wrong counts, a changed subtree and a frontier covering everything never give
    /// the root.
    #[test]
    fn inconsistent_input_gives_no_root() {
        let len = 6 * CHUNK_SIZE + 5;
        let data = bytes(len, 3);
        let cvs = cvs_of_bytes(&data);
        let root = *blake3::hash(&data).as_bytes();
        let f = frontier_of(&data, 4);
        assert_ne!(f.root_with(&cvs[5..], len as u64), root);
        assert_ne!(f.root_with(&cvs[4..], len as u64 + CHUNK_SIZE as u64), root);
        let mut bad = f.clone();
        bad.cvs[0][0] ^= 1;
        assert_ne!(bad.root_with(&cvs[4..], len as u64), root);
        let whole = frontier_of(&data[..6 * CHUNK_SIZE], 6);
        assert_ne!(whole.root_with(&[], 6 * CHUNK_SIZE as u64), root);
        assert!(Frontier::from_parts(5, vec![[0; 32]]).is_none());
        assert_eq!(Frontier::from_parts(4, f.cvs().to_vec()), Some(f.clone()));
    }
}

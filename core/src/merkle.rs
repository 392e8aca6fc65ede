//! BLAKE3 Merkle tree over RGTP chunks ("chunk groups").
//!
//! BLAKE3 is itself a binary Merkle tree over 1 KiB chunks. An RGTP chunk is 16 KiB,
//! i.e. 16 consecutive BLAKE3 chunks starting at a multiple of 16, so each RGTP chunk is
//! a complete BLAKE3 subtree and has a chaining value (CV) of its own. Combining those
//! CVs with BLAKE3's parent-node rule yields exactly `blake3::hash(content)`, so an
//! exposure's root equals `b3sum FILE` and any chunk can be checked alone against the
//! root plus the CVs of its siblings (or the full list of chunk CVs).
//!
//! Tree shape (BLAKE3's rule, expressed in RGTP chunks): a tree over `n >= 2` chunks has
//! a left subtree holding the largest power of two number of chunks strictly less than
//! `n` and a right subtree holding the rest. Every node below the top is a non-root
//! node; only the top node is finalized as the root. A single-chunk content has no
//! parent node at all: its root is the plain BLAKE3 hash of the chunk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

/// Size of one RGTP chunk in bytes (16 BLAKE3 chunks). The last chunk may be shorter.
pub const CHUNK_SIZE: usize = 16 * 1024;

/// A BLAKE3 hash or chaining value.
pub type Hash = [u8; 32];

/// Bytes read per `pread` when hashing a file. A multiple of `CHUNK_SIZE` so that reads
/// never split a chunk.
const READ_BLOCK: usize = 4 * 1024 * 1024;

/// Below this many chunks per worker, spawning threads costs more than it saves.
const MIN_CHUNKS_PER_THREAD: u64 = 64;

/// Upper bound on hashing threads; file hashing becomes I/O bound well before this.
const MAX_THREADS: usize = 8;

/// Number of chunks of a content of `total_len` bytes (0 for empty content).
pub fn chunk_count(total_len: u64) -> u64 {
    total_len.div_ceil(CHUNK_SIZE as u64)
}

/// Length in bytes of chunk `index` of a content of `total_len` bytes.
///
/// Returns 0 for an index past the end, so a caller validating a chunk received from a
/// peer can compare lengths without a separate range check.
pub fn chunk_len(index: u64, total_len: u64) -> usize {
    if index >= chunk_count(total_len) {
        return 0;
    }
    // index < chunk_count, so the multiplication cannot overflow past total_len.
    let start = index * CHUNK_SIZE as u64;
    (total_len - start).min(CHUNK_SIZE as u64) as usize
}

/// Byte offset of chunk `index` (saturating, so a bogus index from a peer cannot
/// overflow; such an index is rejected by `chunk_len` anyway).
pub fn chunk_offset(index: u64) -> u64 {
    index.saturating_mul(CHUNK_SIZE as u64)
}

/// Value returned instead of a CV or root when the inputs are inconsistent (wrong data
/// length, wrong CV count). It is derived, not zero, so that it never matches a
/// zero-initialised "expected" buffer; matching a real CV would need a BLAKE3 preimage.
fn invalid_marker(what: &[u8]) -> Hash {
    blake3::derive_key("RGTP 2025 merkle: inconsistent input", what)
}

/// Chaining value of chunk `index`, whose bytes are `data`, in a content of `total_len`
/// bytes.
///
/// When the whole content is a single chunk (`total_len <= CHUNK_SIZE`) this returns the
/// root hash (`blake3::hash(data)`), because such a tree has no parent node: verifying a
/// one-chunk content is a comparison with the root.
///
/// `data.len()` must equal `chunk_len(index, total_len)`; otherwise (including an index
/// past the end) a fixed marker value is returned that matches no genuine CV, so this
/// never panics on peer-supplied input.
pub fn chunk_cv(index: u64, data: &[u8], total_len: u64) -> Hash {
    if data.len() != chunk_len(index, total_len) {
        return invalid_marker(&index.to_le_bytes());
    }
    if total_len <= CHUNK_SIZE as u64 {
        return *blake3::hash(data).as_bytes();
    }
    // data is non-empty here (every in-range chunk of a non-empty content is), and the
    // offset is a multiple of 16 BLAKE3 chunks, so the subtree is valid for up to 16 KiB.
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(chunk_offset(index));
    hasher.update(data);
    hasher.finalize_non_root()
}

/// True when `data` is chunk `index` of the content whose chunk CV (or, for a
/// single-chunk content, root) is `expected`.
pub fn verify_chunk(index: u64, data: &[u8], total_len: u64, expected: &Hash) -> bool {
    data.len() == chunk_len(index, total_len) && chunk_cv(index, data, total_len) == *expected
}

/// Number of chunks in the left subtree of a tree over `n >= 2` chunks: the largest
/// power of two strictly less than `n`.
pub fn left_subtree_chunks(n: u64) -> u64 {
    debug_assert!(n >= 2, "a tree over {n} chunks has no children");
    if n < 2 {
        return 0;
    }
    1 << (63 - (n - 1).leading_zeros())
}

/// Merge two child CVs into their parent: a non-root CV, or the root hash when the
/// parent is the top of the tree.
pub fn parent_cv(left: &Hash, right: &Hash, is_root: bool) -> Hash {
    if is_root {
        *merge_subtrees_root(left, right, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(left, right, Mode::Hash)
    }
}

/// CV of the (non-root) subtree over `cvs`, which must be non-empty.
fn subtree_cv(cvs: &[Hash]) -> Hash {
    match cvs {
        [only] => *only,
        _ => {
            let split = left_subtree_chunks(cvs.len() as u64) as usize;
            let (left, right) = cvs.split_at(split);
            parent_cv(&subtree_cv(left), &subtree_cv(right), false)
        }
    }
}

/// Combine per-chunk CVs (as returned by [`chunk_cv`]) into the BLAKE3 root of a content
/// of `total_len` bytes; the result equals `blake3::hash(content)`.
///
/// 0 chunks gives `blake3::hash(b"")`; 1 chunk gives `cvs[0]` (already the root). If
/// `cvs.len()` is not `chunk_count(total_len)` a marker value is returned that matches
/// no genuine root, so a bad CV list from a peer fails verification instead of panicking.
pub fn root_from_cvs(cvs: &[Hash], total_len: u64) -> Hash {
    if cvs.len() as u64 != chunk_count(total_len) {
        return invalid_marker(&total_len.to_le_bytes());
    }
    match cvs {
        [] => *blake3::hash(b"").as_bytes(),
        [only] => *only,
        _ => {
            let split = left_subtree_chunks(cvs.len() as u64) as usize;
            let (left, right) = cvs.split_at(split);
            parent_cv(&subtree_cv(left), &subtree_cv(right), true)
        }
    }
}

/// How many worker threads to use for `chunks` chunks.
fn worker_count(chunks: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_size = usize::try_from(chunks / MIN_CHUNKS_PER_THREAD).unwrap_or(usize::MAX);
    cores.min(MAX_THREADS).min(by_size).max(1)
}

/// Split `out` (one slot per chunk) into `parts` contiguous pieces, each paired with the
/// index of its first chunk.
fn split_work(out: &mut [Hash], parts: usize) -> Vec<(u64, &mut [Hash])> {
    let per = out.len().div_ceil(parts.max(1)).max(1);
    out.chunks_mut(per)
        .enumerate()
        .map(|(i, piece)| ((i * per) as u64, piece))
        .collect()
}

/// CVs of every chunk of `data` (`data` is the whole content).
pub fn cvs_of_bytes(data: &[u8]) -> Vec<Hash> {
    let total_len = data.len() as u64;
    let n = chunk_count(total_len) as usize;
    let mut out = vec![[0u8; 32]; n];
    let fill = |first: u64, slots: &mut [Hash]| {
        for (k, slot) in slots.iter_mut().enumerate() {
            let index = first + k as u64;
            let start = index as usize * CHUNK_SIZE;
            let end = start + chunk_len(index, total_len);
            *slot = chunk_cv(index, &data[start..end], total_len);
        }
    };
    let workers = worker_count(n as u64);
    if workers == 1 {
        fill(0, &mut out);
    } else {
        std::thread::scope(|s| {
            for (first, slots) in split_work(&mut out, workers) {
                s.spawn(move || fill(first, slots));
            }
        });
    }
    out
}

/// Hash chunks `first..first + slots.len()` of `file` into `slots`, reading
/// `READ_BLOCK` bytes at a time.
fn fill_from_file(file: &File, total_len: u64, first: u64, slots: &mut [Hash]) -> io::Result<()> {
    let chunks_per_block = READ_BLOCK / CHUNK_SIZE;
    let mut buf = vec![0u8; READ_BLOCK.min(slots.len().saturating_mul(CHUNK_SIZE))];
    for (b, block_slots) in slots.chunks_mut(chunks_per_block).enumerate() {
        let block_first = first + (b * chunks_per_block) as u64;
        let offset = chunk_offset(block_first);
        let block_end = offset
            .saturating_add((block_slots.len() * CHUNK_SIZE) as u64)
            .min(total_len);
        let bytes = &mut buf[..(block_end - offset) as usize];
        file.read_exact_at(bytes, offset)?;
        for (k, (slot, data)) in block_slots
            .iter_mut()
            .zip(bytes.chunks(CHUNK_SIZE))
            .enumerate()
        {
            *slot = chunk_cv(block_first + k as u64, data, total_len);
        }
    }
    Ok(())
}

/// CVs of every chunk of the first `total_len` bytes of `file`.
///
/// Reads with `pread` in 4 MiB blocks (memory stays bounded whatever the file size) and
/// hashes on several threads, since this runs at exposer start-up on large files. A
/// file shorter than `total_len` gives an `UnexpectedEof` error.
pub fn cvs_of_file(file: &File, total_len: u64) -> io::Result<Vec<Hash>> {
    let n = usize::try_from(chunk_count(total_len))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    let mut out = vec![[0u8; 32]; n];
    let workers = worker_count(n as u64);
    if workers == 1 {
        fill_from_file(file, total_len, 0, &mut out)?;
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = split_work(&mut out, workers)
                .into_iter()
                .map(|(first, slots)| {
                    s.spawn(move || fill_from_file(file, total_len, first, slots))
                })
                .collect();
            for handle in handles {
                // A panic in a worker is a bug in this module: propagate it unchanged.
                match handle.join() {
                    Ok(result) => result?,
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok::<(), io::Error>(())
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate and
    /// chunk contents differ from each other.
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    const C: usize = CHUNK_SIZE;

    fn interesting_lengths() -> Vec<usize> {
        vec![
            0,
            1,
            1023,
            1024,
            1025,
            C - 1,
            C,
            C + 1,
            2 * C,
            2 * C + 1,
            3 * C + 5,
            4 * C,
            5 * C - 1,
            17 * C,
            17 * C + 100,
            64 * C,
            64 * C + 1,
            100 * C + 7,
            3 * 1024 * 1024 + 12345,
        ]
    }

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(C as u64), 1);
        assert_eq!(chunk_count(C as u64 + 1), 2);
        assert_eq!(chunk_count(u64::MAX), u64::MAX / C as u64 + 1);

        assert_eq!(chunk_len(0, 0), 0);
        assert_eq!(chunk_len(0, 5), 5);
        assert_eq!(chunk_len(1, 5), 0);
        assert_eq!(chunk_len(0, C as u64), C);
        assert_eq!(chunk_len(0, 3 * C as u64 + 5), C);
        assert_eq!(chunk_len(2, 3 * C as u64 + 5), C);
        assert_eq!(chunk_len(3, 3 * C as u64 + 5), 5);
        assert_eq!(chunk_len(4, 3 * C as u64 + 5), 0);
        assert_eq!(chunk_len(u64::MAX, u64::MAX), 0);
        let last = chunk_count(u64::MAX) - 1;
        assert_eq!(chunk_len(last, u64::MAX), C - 1);
        assert_eq!(chunk_offset(u64::MAX), u64::MAX);
    }

    #[test]
    fn left_subtree_is_largest_power_of_two_below_n() {
        let expected = [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (17, 16),
            (65, 64),
        ];
        for (n, left) in expected {
            assert_eq!(left_subtree_chunks(n), left, "n = {n}");
        }
        assert_eq!(left_subtree_chunks(u64::MAX), 1 << 63);
    }

    #[test]
    fn root_matches_blake3_for_many_lengths() {
        for (seed, len) in interesting_lengths().into_iter().enumerate() {
            let data = bytes(len, seed as u64);
            let cvs = cvs_of_bytes(&data);
            assert_eq!(cvs.len() as u64, chunk_count(len as u64), "len {len}");
            let root = root_from_cvs(&cvs, len as u64);
            assert_eq!(root, *blake3::hash(&data).as_bytes(), "len {len}");
        }
    }

    #[test]
    fn empty_and_single_chunk_roots() {
        assert_eq!(root_from_cvs(&[], 0), *blake3::hash(b"").as_bytes());
        assert_eq!(chunk_cv(0, b"", 0), *blake3::hash(b"").as_bytes());
        let data = bytes(C, 7);
        // A one-chunk content: the chunk "CV" is the root itself.
        assert_eq!(
            chunk_cv(0, &data, C as u64),
            *blake3::hash(&data).as_bytes()
        );
        assert_eq!(cvs_of_bytes(&data), vec![*blake3::hash(&data).as_bytes()]);
    }

    #[test]
    fn chunk_cv_matches_per_chunk_and_detects_flips() {
        let len = 5 * C + 333;
        let data = bytes(len, 42);
        let cvs = cvs_of_bytes(&data);
        for (i, cv) in cvs.iter().enumerate() {
            let i = i as u64;
            let start = chunk_offset(i) as usize;
            let mut chunk = data[start..start + chunk_len(i, len as u64)].to_vec();
            assert!(verify_chunk(i, &chunk, len as u64, cv));
            // Flip one bit at the start, middle and end of the chunk.
            for pos in [0, chunk.len() / 2, chunk.len() - 1] {
                chunk[pos] ^= 1;
                assert_ne!(chunk_cv(i, &chunk, len as u64), *cv, "chunk {i} pos {pos}");
                chunk[pos] ^= 1;
            }
            // The same bytes at another position have another CV (offset is bound in).
            if i + 1 < cvs.len() as u64 && chunk.len() == C {
                assert_ne!(chunk_cv(i + 1, &chunk, len as u64), *cv);
            }
        }
        // Single-chunk content: a flipped byte no longer matches the root.
        let mut small = bytes(100, 1);
        let root = *blake3::hash(&small).as_bytes();
        small[50] ^= 0x80;
        assert!(!verify_chunk(0, &small, 100, &root));
    }

    #[test]
    fn inconsistent_inputs_do_not_panic_or_verify() {
        let len = 3 * C as u64;
        let data = bytes(C, 3);
        let good = chunk_cv(1, &data, len);
        // Wrong length, index past the end, empty data: no panic, no match.
        assert_ne!(chunk_cv(1, &data[..C - 1], len), good);
        assert_ne!(chunk_cv(3, &data, len), good);
        assert_ne!(chunk_cv(u64::MAX, &data, len), good);
        assert!(!verify_chunk(1, &[], len, &good));
        assert_ne!(chunk_cv(1, &[], len), [0u8; 32]);
        // An oversize buffer for an odd index would break BLAKE3's subtree rule.
        let big = bytes(2 * C, 4);
        assert!(!verify_chunk(1, &big, len, &good));

        let whole = bytes(3 * C, 5);
        let cvs = cvs_of_bytes(&whole);
        let root = *blake3::hash(&whole).as_bytes();
        assert_eq!(root_from_cvs(&cvs, len), root);
        assert_ne!(root_from_cvs(&cvs[..2], len), root);
        assert_ne!(root_from_cvs(&cvs, len + C as u64), root);
    }

    #[test]
    fn swapping_or_altering_a_cv_changes_root() {
        let len = 9 * C + 1;
        let data = bytes(len, 9);
        let mut cvs = cvs_of_bytes(&data);
        let root = root_from_cvs(&cvs, len as u64);
        cvs.swap(2, 3);
        assert_ne!(root_from_cvs(&cvs, len as u64), root);
        cvs.swap(2, 3);
        cvs[9][0] ^= 1;
        assert_ne!(root_from_cvs(&cvs, len as u64), root);
    }

    fn temp_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "rgtp-merkle-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    #[test]
    fn cvs_of_file_matches_bytes() {
        // Crosses a READ_BLOCK boundary and ends with a short chunk.
        for (seed, len) in [0, 10, C, 3 * C + 5, READ_BLOCK + 2 * C + 17]
            .into_iter()
            .enumerate()
        {
            let data = bytes(len, 100 + seed as u64);
            let path = temp_path(&format!("file{seed}"));
            let mut f = File::create(&path).expect("create temp file");
            f.write_all(&data).expect("write temp file");
            drop(f);
            let f = File::open(&path).expect("open temp file");
            let from_file = cvs_of_file(&f, len as u64).expect("hash file");
            std::fs::remove_file(&path).ok();
            assert_eq!(from_file, cvs_of_bytes(&data), "len {len}");
            assert_eq!(
                root_from_cvs(&from_file, len as u64),
                *blake3::hash(&data).as_bytes()
            );
        }
    }

    #[test]
    fn cvs_of_file_short_file_is_an_error() {
        let data = bytes(2 * C, 8);
        let path = temp_path("short");
        std::fs::write(&path, &data).expect("write temp file");
        let f = File::open(&path).expect("open temp file");
        let err = cvs_of_file(&f, 2 * C as u64 + 1).expect_err("file is too short");
        std::fs::remove_file(&path).ok();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn split_work_covers_every_slot_once() {
        for n in [0usize, 1, 2, 3, 7, 64, 129] {
            for parts in 1..5 {
                let mut out = vec![[0u8; 32]; n];
                let pieces = split_work(&mut out, parts);
                let mut next = 0u64;
                for (first, slots) in pieces {
                    assert_eq!(first, next);
                    next += slots.len() as u64;
                }
                assert_eq!(next, n as u64);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn prop_root_equals_blake3(len in 0usize..(40 * C), seed in proptest::prelude::any::<u64>()) {
            let data = bytes(len, seed);
            let root = root_from_cvs(&cvs_of_bytes(&data), len as u64);
            proptest::prop_assert_eq!(root, *blake3::hash(&data).as_bytes());
        }
    }
}

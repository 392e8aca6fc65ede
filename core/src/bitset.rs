//! A fixed-length set of chunk indices, used for "which chunks do I have".
//!
//! Indices at or beyond `len` are never members: `insert` and `remove` ignore them and
//! `contains` answers false, because indices often come straight from peers and a bad
//! one must not panic the process.

use std::fmt;

/// A bitset over chunk indices `0..len`, with an O(1) member count.
#[derive(Clone, PartialEq, Eq)]
pub struct ChunkSet {
    len: u64,
    /// Bit `i % 64` of word `i / 64` is index `i`. Bits at or beyond `len` stay zero, so
    /// word-level scans and equality need no masking.
    words: Vec<u64>,
    count: u64,
}

fn word_count(len: u64) -> usize {
    // At most 2^58 words for len = u64::MAX: only a 32-bit target can fail here, and
    // there the allocation would fail anyway.
    usize::try_from(len.div_ceil(64)).expect("chunk set larger than the address space")
}

impl ChunkSet {
    /// An empty set over indices `0..len`.
    pub fn new(len: u64) -> Self {
        ChunkSet {
            len,
            words: vec![0; word_count(len)],
            count: 0,
        }
    }

    /// An empty set over indices `0..len`, or `None` when its memory cannot be had.
    /// For lengths that come from a peer: a failed allocation in [`ChunkSet::new`]
    /// would abort the process.
    pub fn try_new(len: u64) -> Option<Self> {
        let n = usize::try_from(len.div_ceil(64)).ok()?;
        Some(ChunkSet {
            len,
            words: crate::zeroed::try_zeroed(n)?,
            count: 0,
        })
    }

    /// A set over `0..len` with every index present.
    pub fn full(len: u64) -> Self {
        let mut words = vec![u64::MAX; word_count(len)];
        if len % 64 != 0 {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << (len % 64)) - 1;
            }
        }
        ChunkSet {
            len,
            words,
            count: len,
        }
    }

    /// Number of indices the set ranges over (not the number present).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the set ranges over no index at all (`len() == 0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add `i`; true if it was not present before. Out-of-range indices are ignored.
    pub fn insert(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let (w, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if self.words[w] & bit != 0 {
            return false;
        }
        self.words[w] |= bit;
        self.count += 1;
        true
    }

    /// Add every index of `[from, to)` (clamped to `len`), a word at a time: a live
    /// round marks everything its follower holds.
    pub fn insert_range(&mut self, from: u64, to: u64) {
        let to = to.min(self.len);
        let mut i = from;
        while i < to {
            let (w, bit) = ((i / 64) as usize, i % 64);
            let span = (64 - bit).min(to - i);
            let mask = if span == 64 {
                u64::MAX
            } else {
                ((1u64 << span) - 1) << bit
            };
            self.count += u64::from((mask & !self.words[w]).count_ones());
            self.words[w] |= mask;
            i += span;
        }
    }

    /// Remove `i`; true if it was present before.
    pub fn remove(&mut self, i: u64) -> bool {
        if !self.contains(i) {
            return false;
        }
        self.words[(i / 64) as usize] &= !(1u64 << (i % 64));
        self.count -= 1;
        true
    }

    /// True if `i` is present (always false for `i >= len()`).
    pub fn contains(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }

    /// Number of indices present.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Number of indices absent.
    pub fn missing(&self) -> u64 {
        self.len - self.count
    }

    /// True when every index in `0..len` is present (vacuously true for `len == 0`).
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// Smallest index `>= start` whose bit equals `want`, scanning a word at a time.
    fn first_from(&self, start: u64, want: bool) -> Option<u64> {
        if start >= self.len {
            return None;
        }
        let mut w = (start / 64) as usize;
        // Mask off bits below `start` in the first word.
        let mut mask = u64::MAX << (start % 64);
        while w < self.words.len() {
            let word = if want { self.words[w] } else { !self.words[w] };
            let hits = word & mask;
            if hits != 0 {
                let i = w as u64 * 64 + u64::from(hits.trailing_zeros());
                // Inverted padding bits past `len` look "missing": cut them off here.
                return (i < self.len).then_some(i);
            }
            mask = u64::MAX;
            w += 1;
        }
        None
    }

    /// Smallest index `>= start` that is present in this set exactly when `in_self`
    /// and in `other` exactly when `in_other`, scanning a word at a time (`None`
    /// also when the two sets differ in length).
    pub fn first_where(
        &self,
        other: &ChunkSet,
        start: u64,
        in_self: bool,
        in_other: bool,
    ) -> Option<u64> {
        if start >= self.len || other.len != self.len {
            return None;
        }
        let mut w = (start / 64) as usize;
        let mut mask = u64::MAX << (start % 64);
        while w < self.words.len() {
            let a = if in_self {
                self.words[w]
            } else {
                !self.words[w]
            };
            let b = if in_other {
                other.words[w]
            } else {
                !other.words[w]
            };
            let hits = a & b & mask;
            if hits != 0 {
                let i = w as u64 * 64 + u64::from(hits.trailing_zeros());
                return (i < self.len).then_some(i);
            }
            mask = u64::MAX;
            w += 1;
        }
        None
    }

    /// Adds every member of `other` (of the same length; otherwise nothing).
    pub fn union_with(&mut self, other: &ChunkSet) {
        if other.len != self.len {
            return;
        }
        let mut count = 0;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
            count += u64::from(a.count_ones());
        }
        self.count = count;
    }

    /// Smallest absent index `>= start`, if any.
    pub fn first_missing_from(&self, start: u64) -> Option<u64> {
        self.first_from(start, false)
    }

    /// Smallest present index `>= start`, if any.
    pub fn first_present_from(&self, start: u64) -> Option<u64> {
        self.first_from(start, true)
    }

    /// Runs of absent indices as `(start, count)`, in increasing order.
    pub fn missing_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut pos = 0u64;
        std::iter::from_fn(move || {
            let start = self.first_missing_from(pos)?;
            let end = self.first_present_from(start).unwrap_or(self.len);
            pos = end;
            Some((start, end - start))
        })
    }

    /// Present indices in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut pos = 0u64;
        std::iter::from_fn(move || {
            let i = self.first_present_from(pos)?;
            pos = i + 1;
            Some(i)
        })
    }

    /// Serialize as `ceil(len / 8)` bytes: index `i` is bit `i % 8` (least significant
    /// first) of byte `i / 8`; unused high bits of the last byte are zero.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.len.div_ceil(8) as usize;
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(n);
        out
    }

    /// Inverse of [`to_bytes`](Self::to_bytes). Strict: `None` when `bytes` is not exactly
    /// `ceil(len / 8)` long or has a bit set at an index `>= len`.
    pub fn from_bytes(len: u64, bytes: &[u8]) -> Option<Self> {
        // Check the length before allocating, so a bogus `len` cannot cause a huge
        // allocation: the words needed are bounded by the bytes actually supplied.
        if bytes.len() as u64 != len.div_ceil(8) {
            return None;
        }
        if len % 8 != 0 {
            let last = *bytes.last()?;
            if last >> (len % 8) != 0 {
                return None;
            }
        }
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        let count = words.iter().map(|w| u64::from(w.count_ones())).sum();
        Some(ChunkSet { len, words, count })
    }
}

impl fmt::Debug for ChunkSet {
    // A summary, because the full bitmap of a large file would flood any log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkSet({}/{} present)", self.count, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_where_and_union() {
        let mut a = ChunkSet::new(200);
        let mut b = ChunkSet::new(200);
        for i in [3, 70, 130, 199] {
            a.insert(i);
        }
        for i in [3, 130] {
            b.insert(i);
        }
        assert_eq!(a.first_where(&b, 0, true, false), Some(70));
        assert_eq!(a.first_where(&b, 71, true, false), Some(199));
        assert_eq!(a.first_where(&b, 0, true, true), Some(3));
        assert_eq!(a.first_where(&b, 0, false, false), Some(0));
        let full = ChunkSet::full(200);
        assert_eq!(full.first_where(&full, 0, false, false), None);
        assert_eq!(a.first_where(&ChunkSet::new(10), 0, true, false), None);
        b.insert(5);
        a.union_with(&b);
        assert_eq!(a.count(), 5);
        assert!(a.contains(5) && a.contains(199));
    }
    use proptest::prelude::*;

    #[test]
    fn empty_set() {
        let s = ChunkSet::new(0);
        assert_eq!(s.len(), 0);
        assert!(s.is_empty());
        assert_eq!(s.count(), 0);
        assert!(s.is_full());
        assert_eq!(s.first_missing_from(0), None);
        assert_eq!(s.missing_ranges().count(), 0);
        assert!(s.to_bytes().is_empty());
        assert_eq!(ChunkSet::from_bytes(0, &[]), Some(s));
        assert_eq!(ChunkSet::from_bytes(0, &[0]), None);
    }

    #[test]
    fn insert_contains_remove_count() {
        let mut s = ChunkSet::new(130);
        assert!(!s.is_full());
        assert!(s.insert(0));
        assert!(!s.insert(0), "second insert is not new");
        assert!(s.insert(63));
        assert!(s.insert(64));
        assert!(s.insert(129));
        assert_eq!(s.count(), 4);
        assert_eq!(s.missing(), 126);
        assert!(s.contains(63) && s.contains(64) && s.contains(129));
        assert!(!s.contains(1) && !s.contains(128));
        // Out of range: ignored, never a panic.
        assert!(!s.insert(130));
        assert!(!s.insert(u64::MAX));
        assert!(!s.contains(130));
        assert!(!s.remove(u64::MAX));
        assert_eq!(s.count(), 4);
        assert!(s.remove(63));
        assert!(!s.remove(63));
        assert_eq!(s.count(), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
    }

    #[test]
    fn fills_up() {
        for len in [1u64, 63, 64, 65, 200] {
            let mut s = ChunkSet::new(len);
            for i in (0..len).rev() {
                assert!(!s.is_full());
                assert!(s.insert(i));
            }
            assert!(s.is_full());
            assert_eq!(s, ChunkSet::full(len));
            assert_eq!(s.first_missing_from(0), None);
            assert_eq!(s.missing_ranges().count(), 0);
        }
    }

    #[test]
    fn first_missing_from_skips_present_and_stops_at_len() {
        let mut s = ChunkSet::full(150);
        assert!(s.remove(70));
        assert_eq!(s.first_missing_from(0), Some(70));
        assert_eq!(s.first_missing_from(70), Some(70));
        assert_eq!(
            s.first_missing_from(71),
            None,
            "padding bits are not missing"
        );
        assert_eq!(s.first_missing_from(150), None);
        assert_eq!(s.first_missing_from(u64::MAX), None);
        let t = ChunkSet::new(10);
        assert_eq!(t.first_missing_from(9), Some(9));
        assert_eq!(t.first_missing_from(10), None);
    }

    #[test]
    fn missing_ranges_are_runs() {
        let mut s = ChunkSet::new(200);
        for i in (5..10).chain(64..130).chain([199]) {
            s.insert(i);
        }
        let runs: Vec<_> = s.missing_ranges().collect();
        assert_eq!(runs, vec![(0, 5), (10, 54), (130, 69)]);
        assert_eq!(
            ChunkSet::new(7).missing_ranges().collect::<Vec<_>>(),
            vec![(0, 7)]
        );
    }

    #[test]
    fn bytes_layout_is_lsb_first() {
        let mut s = ChunkSet::new(10);
        s.insert(0);
        s.insert(3);
        s.insert(9);
        assert_eq!(s.to_bytes(), vec![0b0000_1001, 0b0000_0010]);
        assert_eq!(ChunkSet::from_bytes(10, &s.to_bytes()), Some(s));
    }

    #[test]
    fn from_bytes_is_strict() {
        assert_eq!(ChunkSet::from_bytes(10, &[0]), None, "too short");
        assert_eq!(ChunkSet::from_bytes(10, &[0, 0, 0]), None, "too long");
        assert_eq!(ChunkSet::from_bytes(10, &[0, 0b100]), None, "bit 10 set");
        assert_eq!(ChunkSet::from_bytes(10, &[0, 0x80]), None, "bit 15 set");
        assert!(ChunkSet::from_bytes(10, &[0xff, 0b11]).is_some_and(|s| s.is_full()));
        assert!(ChunkSet::from_bytes(16, &[0xff, 0xff]).is_some_and(|s| s.is_full()));
        // A huge claimed length with a tiny buffer is rejected without allocating.
        assert_eq!(ChunkSet::from_bytes(u64::MAX, &[0; 8]), None);
    }

    #[test]
    fn debug_is_a_summary() {
        let mut s = ChunkSet::new(1000);
        s.insert(3);
        assert_eq!(format!("{s:?}"), "ChunkSet(1/1000 present)");
    }

    proptest! {
        /// Compare against a plain Vec<bool> model.
        #[test]
        fn prop_matches_model(len in 0u64..300, ops in proptest::collection::vec((any::<bool>(), 0u64..320), 0..200)) {
            let mut s = ChunkSet::new(len);
            let mut model = vec![false; len as usize];
            for (add, i) in ops {
                let in_range = i < len;
                let was = in_range && model[i as usize];
                if add {
                    prop_assert_eq!(s.insert(i), in_range && !was);
                    if in_range { model[i as usize] = true; }
                } else {
                    prop_assert_eq!(s.remove(i), was);
                    if in_range { model[i as usize] = false; }
                }
            }
            let count = model.iter().filter(|b| **b).count() as u64;
            prop_assert_eq!(s.count(), count);
            prop_assert_eq!(s.is_full(), count == len);
            for start in 0..len + 2 {
                let expected = (start..len).find(|&i| !model[i as usize]);
                prop_assert_eq!(s.first_missing_from(start), expected);
            }
            // Runs cover exactly the missing indices, are maximal and ordered.
            let mut from_runs = vec![false; len as usize];
            let mut prev_end = None;
            for (start, n) in s.missing_ranges() {
                prop_assert!(n > 0);
                prop_assert!(prev_end.is_none_or(|e| start > e), "runs must not touch");
                for i in start..start + n { from_runs[i as usize] = true; }
                prev_end = Some(start + n);
            }
            let missing: Vec<bool> = model.iter().map(|b| !b).collect();
            prop_assert_eq!(from_runs, missing);
            let back = ChunkSet::from_bytes(len, &s.to_bytes());
            prop_assert_eq!(back.as_ref(), Some(&s));
        }
    }

    #[test]
    fn insert_range_is_inserting_each() {
        for (len, from, to) in [
            (0u64, 0u64, 5u64),
            (10, 0, 10),
            (200, 3, 131),
            (200, 64, 128),
            (130, 5, 999),
            (70, 9, 9),
        ] {
            let mut a = ChunkSet::new(len);
            let mut b = ChunkSet::new(len);
            a.insert(7);
            b.insert(7);
            a.insert_range(from, to);
            for i in from..to {
                b.insert(i);
            }
            assert_eq!(a, b, "{len} {from}..{to}");
            assert_eq!(a.count(), b.count());
        }
    }
}

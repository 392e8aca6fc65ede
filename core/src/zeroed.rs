//! Zeroed buffers whose size a peer chose: `None` when the allocator refuses, never the
//! abort that `vec![0; n]` gives, and pages committed only when written (calloc), so
//! naming a size costs the process nothing until data fills it.

use std::alloc::{alloc_zeroed, Layout};

mod sealed {
    /// Keeps `ZeroBits` closed: only this module's impls exist, so no type outside the
    /// crate can claim that all-zero bits are a valid value of it.
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u64 {}
}

/// Integer types whose all-zero bit pattern is the value 0.
///
/// # Safety
///
/// Implementors promise that all-zero bits are a valid value of the type (no references,
/// no `NonZero*`, no enums without a zero discriminant). The trait is sealed, so the only
/// implementors are the integers below: a type outside this crate cannot opt in.
///
/// ```compile_fail,E0277
/// #[derive(Clone, Copy)]
/// struct Ref(&'static u8); // all-zero bits would be a null reference
/// unsafe impl rgtp::zeroed::ZeroBits for Ref {}
/// ```
pub unsafe trait ZeroBits: Copy + sealed::Sealed {}
// SAFETY: every bit pattern, all-zero included, is a valid u8.
unsafe impl ZeroBits for u8 {}
// SAFETY: every bit pattern, all-zero included, is a valid u64.
unsafe impl ZeroBits for u64 {}

/// `n` zeros, or `None` when the memory cannot be had.
pub fn try_zeroed<T: ZeroBits>(n: usize) -> Option<Vec<T>> {
    let layout = Layout::array::<T>(n).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout has a non-zero size; a null return is handled. The block comes
    // from the global allocator with `T`'s size and alignment for exactly `n` elements,
    // all zero bits, which is a valid `T` (ZeroBits), so Vec may own it with length and
    // capacity `n`.
    unsafe {
        let p = alloc_zeroed(layout).cast::<T>();
        if p.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(p, n, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_of_the_asked_length_or_none() {
        assert_eq!(try_zeroed::<u8>(0), Some(vec![]));
        assert_eq!(try_zeroed::<u64>(3), Some(vec![0, 0, 0]));
        let big = try_zeroed::<u8>(1 << 20).expect("a MiB");
        assert!(big.len() == 1 << 20 && big.iter().all(|&b| b == 0));
        // 2^60 u64s overflow the layout; 2^61 bytes no allocator grants (black_box:
        // an allocation nobody uses may be optimised away, and with it the refusal).
        assert_eq!(try_zeroed::<u64>(1 << 60), None);
        assert!(std::hint::black_box(try_zeroed::<u8>(1 << 61)).is_none());
    }
}

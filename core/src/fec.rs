//! Repair fragments (forward error correction for pulls): a systematic Reed-Solomon
//! code over GF(2^8) across the *sealed* fragments of one chunk.
//!
//! A sealed chunk of `ct_len` bytes travels as `k` DATA fragments of `per` bytes (the
//! last one shorter). For the code every data fragment is a shard of
//! `shard_len(ct_len, per)` bytes, the last one padded with zeros; repair fragment `i`
//! (DATA fragment number `REPAIR_BASE + i`) is parity row `i` of a `k + r` code. Row
//! `i` does not depend on `r` (the encoding matrix is a Vandermonde matrix times the
//! inverse of its top square), so repair fragments `0..r` computed once serve every
//! request for any `r' <= r`, and a puller may ask for more later (`first > 0`).
//!
//! Any `k` of the `k + r` fragments rebuild the sealed chunk, which is then opened by
//! its AEAD like any other: a forged repair fragment yields a chunk that fails the
//! AEAD, exactly as a forged data fragment does.
//!
//! The code is reed-solomon-erasure with SIMD (measured against reed-solomon-simd and
//! raptorq for k = 14 fragments of 1176 bytes, r = 1..8: encode 0.5-4.6 µs and decode
//! 1.8-5.4 µs per chunk, where reed-solomon-simd decodes in ~200 µs and raptorq in
//! 40-75 µs; `scripts/fec-codecs`, docs/BENCHMARKS.md).

use std::collections::HashMap;
use std::sync::Arc;

use reed_solomon_erasure::galois_8::ReedSolomon;

/// DATA fragment number of repair fragment 0.
pub const REPAIR_BASE: u8 = 64;
/// Repair fragments a chunk can have (fragment numbers 64..128).
pub const MAX_REPAIR: usize = 64;
/// Data fragments a chunk can have (fragment numbers 0..64).
pub const MAX_DATA: usize = 64;

/// Bytes of every shard (and of every repair fragment) of a chunk whose sealed bytes
/// are `ct_len` long, cut into fragments of `per` bytes.
pub fn shard_len(ct_len: usize, per: usize) -> usize {
    per.min(ct_len)
}

/// Reed-Solomon codecs by `(k, r)`: building one inverts a k×k matrix, so they are
/// kept (there are at most 64 × 64 shapes, and a pull meets a handful).
#[derive(Default)]
pub struct Codec {
    codecs: HashMap<(usize, usize), Arc<ReedSolomon>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("shapes", &self.codecs.len())
            .finish()
    }
}

impl Codec {
    /// An empty codec cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn rs(&mut self, k: usize, r: usize) -> Option<Arc<ReedSolomon>> {
        if k == 0 || k > MAX_DATA || r == 0 || r > MAX_REPAIR {
            return None;
        }
        if let Some(c) = self.codecs.get(&(k, r)) {
            return Some(c.clone());
        }
        let c = Arc::new(ReedSolomon::new(k, r).ok()?);
        if self.codecs.len() >= 256 {
            self.codecs.clear();
        }
        self.codecs.insert((k, r), c.clone());
        Some(c)
    }

    /// Repair fragments `0..r` of the sealed chunk `ct` cut into fragments of `per`
    /// bytes, concatenated (`r × shard_len` bytes). `None` when the shape is out of
    /// range (no fragment, more than 64 data fragments, `r` not in 1..=64).
    pub fn encode(&mut self, ct: &[u8], per: usize, r: usize) -> Option<Vec<u8>> {
        if ct.is_empty() || per == 0 {
            return None;
        }
        let k = ct.len().div_ceil(per);
        let rs = self.rs(k, r)?;
        let s = shard_len(ct.len(), per);
        let mut last = vec![0u8; s];
        let tail = &ct[(k - 1) * per..];
        last[..tail.len()].copy_from_slice(tail);
        let mut data: Vec<&[u8]> = (0..k - 1).map(|i| &ct[i * per..(i + 1) * per]).collect();
        data.push(&last);
        let mut out = vec![0u8; r * s];
        let mut parity: Vec<&mut [u8]> = out.chunks_exact_mut(s).collect();
        rs.encode_sep(&data, &mut parity).ok()?;
        Some(out)
    }

    /// Rebuilds the data fragments missing from `buf` (the sealed chunk, `ct_len`
    /// bytes, cut into fragments of `per` bytes; `got` has a bit per data fragment
    /// present) from `repair` (repair index, payload of `shard_len` bytes). True when
    /// `buf` is whole again: at least `k` distinct fragments were given. The result is
    /// not trusted: the chunk's AEAD checks it.
    pub fn decode(
        &mut self,
        buf: &mut [u8],
        per: usize,
        got: u64,
        repair: &[(u8, Vec<u8>)],
    ) -> bool {
        if buf.is_empty() || per == 0 {
            return false;
        }
        let ct_len = buf.len();
        let k = ct_len.div_ceil(per);
        if k > MAX_DATA {
            return false;
        }
        let all = if k == 64 { u64::MAX } else { (1u64 << k) - 1 };
        if got & all == all {
            return true;
        }
        let s = shard_len(ct_len, per);
        let Some(r) = repair.iter().map(|(i, _)| *i as usize + 1).max() else {
            return false;
        };
        if (got & all).count_ones() as usize + repair.len() < k {
            return false;
        }
        let Some(rs) = self.rs(k, r) else {
            return false;
        };
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; k + r];
        for (i, shard) in shards.iter_mut().enumerate().take(k) {
            if got & (1u64 << i) != 0 {
                let from = i * per;
                let to = (from + per).min(ct_len);
                let mut v = vec![0u8; s];
                v[..to - from].copy_from_slice(&buf[from..to]);
                *shard = Some(v);
            }
        }
        for (i, p) in repair {
            if p.len() != s {
                return false;
            }
            shards[k + *i as usize] = Some(p.clone());
        }
        if rs.reconstruct_data(&mut shards).is_err() {
            return false;
        }
        for (i, shard) in shards.iter().enumerate().take(k) {
            if got & (1u64 << i) != 0 {
                continue;
            }
            let Some(v) = shard else { return false };
            let from = i * per;
            let to = (from + per).min(ct_len);
            buf[from..to].copy_from_slice(&v[..to - from]);
        }
        true
    }
}

/// How a puller uses repair fragments (`rgtp-pull --fec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FecMode {
    /// Never ask for repair fragments: lost fragments are asked for again.
    Off,
    /// Ask for repair in proportion to the loss measured: none on a clean path.
    #[default]
    Auto,
    /// `r` repair fragments for every `k` data fragments of a chunk (rounded up),
    /// whatever the loss.
    Fixed {
        /// Data fragments.
        k: u8,
        /// Repair fragments per `k` data fragments.
        r: u8,
    },
}

impl FecMode {
    /// Parses `off`, `auto` or `K:R` (K in 1..=64, R in 0..=64).
    pub fn parse(s: &str) -> Option<FecMode> {
        match s {
            "off" => Some(FecMode::Off),
            "auto" => Some(FecMode::Auto),
            _ => {
                let (k, r) = s.split_once(':')?;
                let k: u8 = k.parse().ok()?;
                let r: u8 = r.parse().ok()?;
                ((1..=64).contains(&k) && r <= 64).then_some(FecMode::Fixed { k, r })
            }
        }
    }
}

/// The fewest fragments `t` (at least `need`) to send so that, each lost with
/// probability `loss`, at least `need` arrive with probability `target` or more.
/// Capped at `need + MAX_REPAIR`.
pub fn fragments_for(need: usize, loss: f64, target: f64) -> usize {
    if need == 0 {
        return 0;
    }
    let p = loss.clamp(0.0, 0.95);
    if p <= 0.0 {
        return need;
    }
    let q = 1.0 - p;
    for t in need..=need + MAX_REPAIR {
        // P(X >= need), X ~ Binomial(t, q): sum of the pmf from need to t.
        let mut pmf = q.powi(t as i32); // P(X = t)
        let mut tail = pmf;
        let mut x = t;
        while x > need {
            // P(X = x - 1) = P(X = x) * x / (t - x + 1) * p / q
            pmf *= x as f64 / (t - x + 1) as f64 * p / q;
            x -= 1;
            tail += pmf;
        }
        if tail >= target {
            return t;
        }
    }
    need + MAX_REPAIR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn any_k_of_k_plus_r_rebuild_the_chunk() {
        let mut c = Codec::new();
        // 16 KiB + tag in 1176-byte fragments: 14 fragments, the last one short.
        let ct = sealed(16400, 7);
        let per = 1176;
        let k = 14;
        let s = shard_len(ct.len(), per);
        let rep = c.encode(&ct, per, 6).unwrap();
        assert_eq!(rep.len(), 6 * s);
        // Lose data fragments 0, 3, 13 (the short one) and 5; keep repairs 1, 2, 4, 5.
        let lost = [0usize, 3, 5, 13];
        let mut buf = ct.clone();
        let mut got = (1u64 << k) - 1;
        for &f in &lost {
            got &= !(1u64 << f);
            let to = ((f + 1) * per).min(ct.len());
            buf[f * per..to].fill(0xEE);
        }
        let repairs: Vec<(u8, Vec<u8>)> = [1u8, 2, 4, 5]
            .iter()
            .map(|&i| (i, rep[i as usize * s..(i as usize + 1) * s].to_vec()))
            .collect();
        // One too few: not whole.
        let mut short = buf.clone();
        assert!(!c.decode(&mut short, per, got, &repairs[..3]));
        assert!(c.decode(&mut buf, per, got, &repairs));
        assert_eq!(buf, ct);
    }

    #[test]
    fn repair_rows_do_not_depend_on_how_many_are_computed() {
        let mut c = Codec::new();
        let ct = sealed(16400, 3);
        let few = c.encode(&ct, 1176, 2).unwrap();
        let many = c.encode(&ct, 1176, 40).unwrap();
        assert_eq!(few[..], many[..few.len()]);
        // So repair 30 (asked for later) and repair 0 together rebuild two losses.
        let s = 1176;
        let mut buf = ct.clone();
        buf[..2 * s].fill(0);
        let got = ((1u64 << 14) - 1) & !0b11;
        let repairs = vec![
            (0u8, many[..s].to_vec()),
            (30u8, many[30 * s..31 * s].to_vec()),
        ];
        assert!(c.decode(&mut buf, 1176, got, &repairs));
        assert_eq!(buf, ct);
    }

    #[test]
    fn one_fragment_chunks_and_bad_shapes() {
        let mut c = Codec::new();
        // Loopback: the whole sealed chunk is one fragment; a repair is a copy.
        let ct = sealed(300, 1);
        let rep = c.encode(&ct, 65000 - 24, 2).unwrap();
        assert_eq!(rep.len(), 2 * 300);
        let mut buf = vec![0u8; 300];
        assert!(c.decode(&mut buf, 65000 - 24, 0, &[(1, rep[300..].to_vec())]));
        assert_eq!(buf, ct);
        // Out of range: no panic, no result.
        assert!(c.encode(&ct, 10, 65).is_none());
        assert!(c.encode(&sealed(10_000, 0), 100, 1).is_none()); // 100 data fragments
        assert!(c.encode(&[], 100, 1).is_none());
        assert!(c.encode(&ct, 0, 1).is_none());
        // A repair payload of the wrong length is refused, not trusted.
        let mut buf = vec![0u8; 300];
        assert!(!c.decode(&mut buf, 65000 - 24, 0, &[(0, vec![0u8; 299])]));
        // No repair and a missing fragment: not whole.
        assert!(!c.decode(&mut buf, 100, 0b1, &[]));
    }

    #[test]
    fn a_forged_repair_fragment_gives_a_different_chunk() {
        let mut c = Codec::new();
        let ct = sealed(16400, 9);
        let s = 1176;
        let rep = c.encode(&ct, 1176, 1).unwrap();
        let mut buf = ct.clone();
        buf[..s].fill(0);
        let mut forged = rep.clone();
        forged[17] ^= 1;
        assert!(c.decode(&mut buf, 1176, ((1u64 << 14) - 1) & !1, &[(0, forged)]));
        // Rebuilt, but wrong: the AEAD (tested in the puller) refuses it.
        assert_ne!(buf, ct);
    }

    #[test]
    fn fec_modes_parse_strictly() {
        assert_eq!(FecMode::parse("off"), Some(FecMode::Off));
        assert_eq!(FecMode::parse("auto"), Some(FecMode::Auto));
        assert_eq!(FecMode::parse("14:4"), Some(FecMode::Fixed { k: 14, r: 4 }));
        for bad in [
            "", "on", "0:4", "65:1", "14:65", "14", "14:", ":4", "14:4:1", "-1:2",
        ] {
            assert_eq!(FecMode::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn fragments_for_follows_the_binomial_tail() {
        assert_eq!(fragments_for(14, 0.0, 0.9), 14);
        assert_eq!(fragments_for(0, 0.5, 0.9), 0);
        // At 50 % loss, 14 needed: about 2 × 14 plus a margin.
        let t = fragments_for(14, 0.5, 0.9);
        assert!((33..=38).contains(&t), "{t}");
        // More loss or a higher target never asks for fewer.
        assert!(fragments_for(14, 0.3, 0.9) <= t);
        assert!(fragments_for(14, 0.5, 0.99) >= t);
        // A single fragment at 30 %: 2 copies give 91 %.
        assert_eq!(fragments_for(1, 0.3, 0.9), 2);
        // Capped.
        assert_eq!(fragments_for(14, 0.95, 0.999), 14 + MAX_REPAIR);
    }
}

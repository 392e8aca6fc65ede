//! Encode and decode cost of three erasure codes for RGTP's repair fragments: a sealed
//! 16 KiB chunk (16400 bytes) cut into k = 14 fragments of 1176 bytes (1200-byte
//! datagrams), r = 1..8 repair fragments; decode rebuilds r lost data fragments from
//! the remaining data and the r repair fragments (the worst case for a systematic code).
use std::hint::black_box;
use std::time::Instant;

const K: usize = 14;
const SYM: usize = 1176;

fn data() -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..K)
        .map(|_| {
            (0..SYM)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

fn time<F: FnMut()>(iters: u32, mut f: F) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / iters as f64
}

fn rse(r: usize, iters: u32) -> (f64, f64) {
    use reed_solomon_erasure::galois_8::ReedSolomon;
    let rs = ReedSolomon::new(K, r).unwrap();
    let d = data();
    let mut shards: Vec<Vec<u8>> = d.clone();
    shards.extend((0..r).map(|_| vec![0u8; SYM]));
    let enc = time(iters, || {
        rs.encode(&mut shards).unwrap();
        black_box(&shards);
    });
    let full = shards.clone();
    let dec = time(iters, || {
        let mut s: Vec<Option<Vec<u8>>> = full.iter().cloned().map(Some).collect();
        for i in 0..r {
            s[i] = None;
        }
        rs.reconstruct_data(&mut s).unwrap();
        black_box(&s);
    });
    // subtract the clone cost measured alone
    let clone = time(iters, || {
        let mut s: Vec<Option<Vec<u8>>> = full.iter().cloned().map(Some).collect();
        for i in 0..r {
            s[i] = None;
        }
        black_box(&s);
    });
    let mut s: Vec<Option<Vec<u8>>> = full.iter().cloned().map(Some).collect();
    for i in 0..r {
        s[i] = None;
    }
    rs.reconstruct_data(&mut s).unwrap();
    assert_eq!(s[0].as_ref().unwrap(), &d[0]);
    (enc, (dec - clone).max(0.0))
}

fn rss(r: usize, iters: u32) -> (f64, f64) {
    let d = data();
    let enc = time(iters, || {
        black_box(reed_solomon_simd::encode(K, r, &d).unwrap());
    });
    let rec = reed_solomon_simd::encode(K, r, &d).unwrap();
    let dec = time(iters, || {
        let orig: Vec<(usize, &Vec<u8>)> = (r..K).map(|i| (i, &d[i])).collect();
        let recov: Vec<(usize, &Vec<u8>)> = (0..r).map(|i| (i, &rec[i])).collect();
        black_box(reed_solomon_simd::decode(K, r, orig, recov).unwrap());
    });
    let orig: Vec<(usize, &Vec<u8>)> = (r..K).map(|i| (i, &d[i])).collect();
    let recov: Vec<(usize, &Vec<u8>)> = (0..r).map(|i| (i, &rec[i])).collect();
    let out = reed_solomon_simd::decode(K, r, orig, recov).unwrap();
    assert_eq!(out[&0], d[0]);
    (enc, dec)
}

fn rq(r: usize, iters: u32) -> (f64, f64) {
    use raptorq::{ObjectTransmissionInformation, SourceBlockDecoder, SourceBlockEncoder};
    let d: Vec<u8> = data().concat();
    let oti = ObjectTransmissionInformation::with_defaults(d.len() as u64, SYM as u16);
    let enc = time(iters, || {
        let e = SourceBlockEncoder::new(0, &oti, &d);
        black_box(e.repair_packets(0, r as u32));
    });
    let e = SourceBlockEncoder::new(0, &oti, &d);
    let src = e.source_packets();
    let rep = e.repair_packets(0, r as u32);
    let dec = time(iters, || {
        let mut dcd = SourceBlockDecoder::new(0, &oti, d.len() as u64);
        let pk = src[r..].iter().chain(rep.iter()).cloned();
        black_box(dcd.decode(pk).unwrap());
    });
    let mut dcd = SourceBlockDecoder::new(0, &oti, d.len() as u64);
    let out = dcd.decode(src[r..].iter().chain(rep.iter()).cloned()).unwrap();
    assert_eq!(out, d);
    (enc, dec)
}

fn main() {
    println!("k = {K} fragments of {SYM} B; µs per chunk, one core");
    println!("{:<28} {:>3} {:>10} {:>10}", "crate", "r", "encode", "decode");
    for r in 1..=8 {
        let (e, d) = rse(r, 20000);
        println!("{:<28} {:>3} {:>10.2} {:>10.2}", "reed-solomon-erasure simd", r, e, d);
        let (e, d) = rss(r, 2000);
        println!("{:<28} {:>3} {:>10.2} {:>10.2}", "reed-solomon-simd", r, e, d);
        let (e, d) = rq(r, 500);
        println!("{:<28} {:>3} {:>10.2} {:>10.2}", "raptorq", r, e, d);
    }
}

//! The scalar quantization kernels: the reference every SIMD path must match, and the tail
//! handler they share.

use crate::simd::{MinMax, QParams};

/// Bits of `|x|` at or above this are ±Inf or NaN.
pub const NONFINITE_BITS: u32 = 0x7f80_0000;

#[inline]
pub fn is_finite_bits(x: f32) -> bool {
    (x.to_bits() & 0x7fff_ffff) < NONFINITE_BITS
}

pub fn minmax(x: &[f32]) -> MinMax {
    let mut acc = MinMax::EMPTY;
    let mut abs_bits = 0u32;
    for &v in x {
        acc.min = acc.min.min(v);
        acc.max = acc.max.max(v);
        abs_bits = abs_bits.max(v.to_bits() & 0x7fff_ffff);
    }
    acc.finite = abs_bits < NONFINITE_BITS;
    acc
}

pub fn minmax_lanes(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool {
    assert!(x.len() == min.len() && x.len() == max.len());
    let mut abs_bits = 0u32;
    for ((&v, lo), hi) in x.iter().zip(min.iter_mut()).zip(max.iter_mut()) {
        *lo = lo.min(v);
        *hi = hi.max(v);
        abs_bits = abs_bits.max(v.to_bits() & 0x7fff_ffff);
    }
    abs_bits < NONFINITE_BITS
}

/// One code. Clamping before rounding equals rounding before clamping because the bounds are
/// integers; it keeps the float-to-int conversion in range for any finite input.
#[inline(always)]
pub fn quantize_one(x: f32, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> u8 {
    let lo = (qmin - zero_point) as f32;
    let hi = (qmax - zero_point) as f32;
    let v = (x / scale).max(lo).min(hi);
    (v.round_ties_even() as i32 + zero_point) as u8
}

pub fn quantize(x: &[f32], p: &QParams, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, p.scale, p.zero_point, p.qmin, p.qmax);
    }
}

pub fn quantize_lanes(
    x: &[f32],
    scale: &[f32],
    zero_point: &[i32],
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) {
    assert!(x.len() == out.len() && x.len() == scale.len() && x.len() == zero_point.len());
    for i in 0..x.len() {
        out[i] = quantize_one(x[i], scale[i], zero_point[i], qmin, qmax);
    }
}

pub fn minmax_groups(x: &[f32], group_size: usize, out: &mut [MinMax]) {
    crate::simd::minmax_groups_with(minmax, x, group_size, out);
}

pub fn quantize_groups(x: &[f32], group_size: usize, grid: &[QParams], out: &mut [u8]) {
    crate::simd::quantize_groups_with(quantize, x, group_size, grid, out);
}

#[inline(always)]
pub fn code_value(c: u8, signed: bool) -> f32 {
    if signed {
        c as i8 as f32
    } else {
        c as f32
    }
}

pub fn dequantize(codes: &[u8], signed: bool, scale: f32, zero_point: f32, out: &mut [f32]) {
    assert_eq!(codes.len(), out.len());
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = (code_value(c, signed) - zero_point) * scale;
    }
}

pub fn dequantize_lanes(
    codes: &[u8],
    signed: bool,
    scale: &[f32],
    zero_point: &[f32],
    out: &mut [f32],
) {
    assert!(
        codes.len() == out.len() && codes.len() == scale.len() && codes.len() == zero_point.len()
    );
    for i in 0..codes.len() {
        out[i] = (code_value(codes[i], signed) - zero_point[i]) * scale[i];
    }
}

pub fn pack4(codes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(2));
    for (o, pair) in out.iter_mut().zip(codes.chunks(2)) {
        let hi = pair.get(1).copied().unwrap_or(0);
        *o = (pair[0] & 0x0f) | (hi << 4);
    }
}

pub fn unpack4(packed: &[u8], signed: bool, out: &mut [u8]) {
    assert!(packed.len() >= out.len().div_ceil(2));
    for (i, o) in out.iter_mut().enumerate() {
        let nibble = (packed[i / 2] >> (4 * (i & 1))) & 0x0f;
        *o = if signed {
            ((nibble << 4) as i8 >> 4) as u8
        } else {
            nibble
        };
    }
}

pub fn pack2(codes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(4));
    for (o, quad) in out.iter_mut().zip(codes.chunks(4)) {
        *o = quad
            .iter()
            .enumerate()
            .fold(0u8, |acc, (j, &c)| acc | ((c & 0x03) << (2 * j)));
    }
}

pub fn unpack2(packed: &[u8], signed: bool, out: &mut [u8]) {
    assert!(packed.len() >= out.len().div_ceil(4));
    for (i, o) in out.iter_mut().enumerate() {
        let crumb = (packed[i / 4] >> (2 * (i & 3))) & 0x03;
        *o = if signed {
            ((crumb << 6) as i8 >> 6) as u8
        } else {
            crumb
        };
    }
}

/// Packs the low `bits` bits of each code into one little-endian bit stream: code `i` takes
/// bits `[i * bits, (i + 1) * bits)` of `out`, bit 0 being the lowest bit of byte 0; the last
/// byte is padded with zero bits. `1 <= bits <= 8` and
/// `out.len() == kernels::layout::line_bytes(codes.len(), bits)`. For 4-bit and 2-bit this is
/// the layout of `pack4` / `pack2`. Eight codes fill exactly `bits` bytes, so the stream is
/// built eight codes at a time in a 64-bit word (no division per code).
pub fn pack_bits(codes: &[u8], bits: u32, out: &mut [u8]) {
    assert_eq!(out.len(), stream_bytes(codes.len(), bits));
    match bits {
        1 => pack_bits_n::<1>(codes, out),
        2 => pack_bits_n::<2>(codes, out),
        3 => pack_bits_n::<3>(codes, out),
        4 => pack_bits_n::<4>(codes, out),
        5 => pack_bits_n::<5>(codes, out),
        6 => pack_bits_n::<6>(codes, out),
        7 => pack_bits_n::<7>(codes, out),
        8 => pack_bits_n::<8>(codes, out),
        _ => unreachable!("bits={bits}: callers check the width (checks::check_bits)"),
    }
}

/// Unpacks `out.len()` codes of `bits` bits from a stream written by [`pack_bits`],
/// sign-extended to two's complement bytes when `signed`. `packed` holds at least
/// `line_bytes(out.len(), bits)` bytes (more are ignored).
pub fn unpack_bits(packed: &[u8], bits: u32, signed: bool, out: &mut [u8]) {
    assert!(packed.len() >= stream_bytes(out.len(), bits));
    macro_rules! go {
        ($b:literal) => {
            if signed {
                unpack_bits_n::<$b, true>(packed, out)
            } else {
                unpack_bits_n::<$b, false>(packed, out)
            }
        };
    }
    match bits {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        4 => go!(4),
        5 => go!(5),
        6 => go!(6),
        7 => go!(7),
        8 => go!(8),
        _ => unreachable!("bits={bits}: callers check the width (checks::check_bits)"),
    }
}

/// Bytes of a stream of `n` codes of `bits` bits (`kernels::layout::line_bytes`), without
/// overflow for any `n`.
#[inline]
fn stream_bytes(n: usize, bits: u32) -> usize {
    let b = bits as usize;
    (n / 8) * b + ((n % 8) * b).div_ceil(8)
}

/// Up to eight codes of `B` bits as one little-endian word.
#[inline(always)]
fn gather<const B: usize>(codes: &[u8]) -> u64 {
    let mask = (1u64 << B) - 1;
    let mut acc = 0u64;
    for (i, &c) in codes.iter().enumerate() {
        acc |= (c as u64 & mask) << (i * B);
    }
    acc
}

/// Byte `b` repeated in every byte of a word.
#[inline(always)]
const fn splat(b: u64) -> u64 {
    b * 0x0101_0101_0101_0101
}

/// Eight codes of `B` bits (one per byte) as one little-endian word: the codes are masked in
/// one word and the fields closed up in three steps (byte pairs, then 16-bit and 32-bit
/// halves).
#[inline(always)]
fn gather8<const B: usize>(codes: &[u8; 8]) -> u64 {
    let x = u64::from_le_bytes(*codes) & splat((1 << B) - 1);
    let x = (x & 0x00ff_00ff_00ff_00ff) | ((x & 0xff00_ff00_ff00_ff00) >> (8 - B));
    let x = (x & 0x0000_ffff_0000_ffff) | ((x & 0xffff_0000_ffff_0000) >> (16 - 2 * B));
    (x & 0xffff_ffff) | ((x & 0xffff_ffff_0000_0000) >> (32 - 4 * B))
}

/// The inverse of [`gather8`]: the eight `B`-bit fields of the low `8 * B` bits of `word`
/// (higher bits ignored), one per byte, sign-extended when `SIGNED`.
#[inline(always)]
fn scatter8<const B: usize, const SIGNED: bool>(word: u64) -> [u8; 8] {
    let x = if B == 8 {
        word
    } else {
        word & ((1u64 << (8 * B)) - 1)
    };
    let lo4 = (1u64 << (4 * B)) - 1;
    let x = (x & lo4) | ((x >> (4 * B)) & lo4) << 32;
    let lo2 = ((1u64 << (2 * B)) - 1) * 0x0000_0001_0000_0001;
    let x = (x & lo2) | ((x & (lo2 << (2 * B))) << (16 - 2 * B));
    let lo1 = ((1u64 << B) - 1) * 0x0001_0001_0001_0001;
    let mut x = (x & lo1) | ((x & (lo1 << B)) << (8 - B));
    if SIGNED && B < 8 {
        // Per byte v in [0, 2^B): (v ^ S) - S with S = 2^(B-1), as ((v ^ S) + 128 - S) ^ 128,
        // whose sums stay below 256 so no byte carries into the next.
        let s = 1u64 << (B - 1);
        x = ((x ^ splat(s)) + splat(128 - s)) ^ splat(0x80);
    }
    x.to_le_bytes()
}

/// `dst[..n] = src[..n]` byte by byte: short copies stay inline (`copy_from_slice` may become
/// a `memmove` call per chunk where the standard library's helper is not inlined).
#[inline(always)]
#[allow(clippy::manual_memcpy)] // deliberately not `copy_from_slice`, see above
fn copy_bytes(dst: &mut [u8], src: &[u8], n: usize) {
    for j in 0..n {
        dst[j] = src[j];
    }
}

#[inline(always)]
fn pack_bits_n<const B: usize>(codes: &[u8], out: &mut [u8]) {
    let full = codes.len() / 8;
    for (c, src) in codes[..full * 8].chunks_exact(8).enumerate() {
        let mut a = [0u8; 8];
        copy_bytes(&mut a, src, 8);
        copy_bytes(
            &mut out[B * c..B * c + B],
            &gather8::<B>(&a).to_le_bytes(),
            B,
        );
    }
    let tail = &mut out[full * B..];
    if !tail.is_empty() {
        let n = tail.len();
        copy_bytes(tail, &gather::<B>(&codes[full * 8..]).to_le_bytes(), n);
    }
}

/// Code `i` of the word `acc`, sign-extended when `SIGNED` (bits above the code's field are
/// ignored).
#[inline(always)]
fn field<const B: usize, const SIGNED: bool>(acc: u64, i: usize) -> u8 {
    let v = (acc >> (i * B)) as u8;
    if SIGNED {
        let up = 8 - B as u32;
        ((v << up) as i8 >> up) as u8
    } else {
        v & ((1u16 << B) - 1) as u8
    }
}

#[inline(always)]
fn unpack_bits_n<const B: usize, const SIGNED: bool>(packed: &[u8], out: &mut [u8]) {
    let full = out.len() / 8;
    // Chunks with 8 readable bytes load one word (the bytes past the chunk's `B` are ignored).
    let wide = if packed.len() >= 8 {
        full.min((packed.len() - 8) / B + 1)
    } else {
        0
    };
    for (c, dst) in out[..wide * 8].chunks_exact_mut(8).enumerate() {
        let mut a = [0u8; 8];
        copy_bytes(&mut a, &packed[B * c..B * c + 8], 8);
        copy_bytes(dst, &scatter8::<B, SIGNED>(u64::from_le_bytes(a)), 8);
    }
    for c in wide..full {
        let mut a = [0u8; 8];
        copy_bytes(&mut a, &packed[B * c..B * c + B], B);
        let codes = scatter8::<B, SIGNED>(u64::from_le_bytes(a));
        copy_bytes(&mut out[8 * c..8 * c + 8], &codes, 8);
    }
    let rest = &mut out[full * 8..];
    if !rest.is_empty() {
        let n = stream_bytes(rest.len(), B as u32);
        let mut a = [0u8; 8];
        copy_bytes(&mut a, &packed[full * B..full * B + n], n);
        let word = u64::from_le_bytes(a);
        for (i, d) in rest.iter_mut().enumerate() {
            *d = field::<B, SIGNED>(word, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_ties_to_even_and_clamps() {
        let p = QParams {
            scale: 0.5,
            zero_point: 0,
            qmin: -8,
            qmax: 7,
        };
        let x = [0.25, 0.75, -0.25, -0.75, 100.0, -100.0, 3.5, -4.0];
        let mut out = [0u8; 8];
        quantize(&x, &p, &mut out);
        let got: Vec<i8> = out.iter().map(|&b| b as i8).collect();
        assert_eq!(got, [0, 2, 0, -2, 7, -8, 7, -8]);
    }

    #[test]
    fn pack_unpack_nibbles() {
        let codes = [1u8, 0xf, 0x7, 0x8, 0x3];
        let mut packed = [0u8; 3];
        pack4(&codes, &mut packed);
        assert_eq!(packed, [0xf1, 0x87, 0x03]);
        let mut back = [0u8; 5];
        unpack4(&packed, true, &mut back);
        assert_eq!(back.map(|b| b as i8), [1, -1, 7, -8, 3]);
        unpack4(&packed, false, &mut back);
        assert_eq!(back, [1, 15, 7, 8, 3]);
    }

    #[test]
    fn pack_unpack_crumbs() {
        let codes = [0u8, 1, 2, 3, 3];
        let mut packed = [0u8; 2];
        pack2(&codes, &mut packed);
        assert_eq!(packed, [0b11_10_01_00, 0b11]);
        let mut back = [0u8; 5];
        unpack2(&packed, true, &mut back);
        assert_eq!(back.map(|b| b as i8), [0, 1, -2, -1, -1]);
    }

    #[test]
    fn minmax_flags_nonfinite() {
        assert!(minmax(&[1.0, -2.0]).finite);
        assert!(!minmax(&[1.0, f32::NAN]).finite);
        assert!(!minmax(&[f32::NEG_INFINITY]).finite);
        let m = minmax(&[1.0, -2.0, 0.5]);
        assert_eq!((m.min, m.max), (-2.0, 1.0));
    }

    /// Bit `j` of a stream, read one bit at a time: the layout's definition.
    fn bit(stream: &[u8], j: usize) -> u8 {
        (stream[j / 8] >> (j % 8)) & 1
    }

    #[test]
    fn pack_bits_is_a_little_endian_bit_stream() {
        // 3-bit codes 1..=5 and 7: 001 010 011 100 101 111, low bits first.
        let mut out = [0u8; 3];
        pack_bits(&[1, 2, 3, 4, 5, 7], 3, &mut out);
        // bits 0..18: 1,0,0, 0,1,0, 1,1,0, 0,0,1, 1,0,1, 1,1,1 (then padding).
        assert_eq!(out, [0b1101_0001, 0b1101_1000, 0b0000_0011]);
        for bits in 1..=8u32 {
            for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 33] {
                let codes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
                let mut packed = vec![0xaau8; stream_bytes(n, bits)];
                pack_bits(&codes, bits, &mut packed);
                assert_eq!(packed.len(), (n * bits as usize).div_ceil(8));
                for (i, &c) in codes.iter().enumerate() {
                    for b in 0..bits as usize {
                        let j = i * bits as usize + b;
                        assert_eq!(bit(&packed, j), (c >> b) & 1, "bits={bits} n={n} i={i}");
                    }
                }
                for j in n * bits as usize..8 * packed.len() {
                    assert_eq!(bit(&packed, j), 0, "padding bit {j}, bits={bits} n={n}");
                }
                let mask = ((1u16 << bits) - 1) as u8;
                let mut back = vec![0u8; n];
                unpack_bits(&packed, bits, false, &mut back);
                let want: Vec<u8> = codes.iter().map(|&c| c & mask).collect();
                assert_eq!(back, want, "bits={bits} n={n}");
                unpack_bits(&packed, bits, true, &mut back);
                let up = 8 - bits;
                let want: Vec<u8> = codes
                    .iter()
                    .map(|&c| ((c << up) as i8 >> up) as u8)
                    .collect();
                assert_eq!(back, want, "signed, bits={bits} n={n}");
            }
        }
    }

    #[test]
    fn pack_bits_matches_pack4_and_pack2() {
        let codes: Vec<u8> = (0..37).map(|i| (i * 13 + 5) as u8).collect();
        for (bits, pack, unpack) in [
            (
                4,
                pack4 as fn(&[u8], &mut [u8]),
                unpack4 as fn(&[u8], bool, &mut [u8]),
            ),
            (2, pack2, unpack2),
        ] {
            let m = stream_bytes(codes.len(), bits);
            let (mut a, mut b) = (vec![0u8; m], vec![0u8; m]);
            pack_bits(&codes, bits, &mut a);
            pack(&codes, &mut b);
            assert_eq!(a, b, "bits={bits}");
            for signed in [false, true] {
                let (mut x, mut y) = (vec![0u8; 37], vec![0u8; 37]);
                unpack_bits(&a, bits, signed, &mut x);
                unpack(&a, signed, &mut y);
                assert_eq!(x, y, "bits={bits} signed={signed}");
            }
        }
    }
}

//! Scalar dequantizers for the GGUF (llama.cpp / ggml) "k-quant" block formats Q2_K, Q3_K,
//! Q4_K, Q5_K and Q6_K, and the non-linear 4-bit formats IQ4_NL and IQ4_XS.
//!
//! Every format stores a tensor row as a sequence of fixed-size blocks. A k-quant block holds
//! `QK_K` = 256 values as a float16 super-block scale `d` (plus a float16 `dmin` for the
//! "affine" types Q2_K/Q4_K/Q5_K), small integer sub-block scales (and mins) and 2..6-bit codes.
//! IQ4_NL blocks hold 32 values as a float16 `d` and 4-bit indices into a fixed non-uniform
//! codebook (`IQ4_KVALUES`); IQ4_XS is the same codebook in 256-value super-blocks with 6-bit
//! sub-block scales. All multi-byte fields are little-endian.
//!
//! Each function dequantizes exactly one block and follows the operation order of
//! `dequantize_blocks` in gguf-py (`gguf/quants.py`, gguf 0.19.0) in float32, so the results are
//! bit-identical to `gguf.quants.dequantize` (compared with `f32::to_bits`, NaN aside): the
//! float16 fields are widened exactly to float32, the sub-block factor is formed first
//! (`d * scale`, `dmin * min`, each rounded to float32), then multiplied by the code and, for
//! the affine types, the min term is subtracted: `(d * sc) * q - (dmin * m)`. Rust never
//! contracts `a * b - c` into a fused multiply-add, and NumPy evaluates each ufunc separately,
//! so both sides round after every operation.
//!
//! For these seven types gguf-py's order is the same as ggml's C `dequantize_row_*` in
//! `ggml-quants.c` (e.g. Q6_K's C `d * sc[is] * q1` also groups as `(d * sc) * q`).
//!
//! Note on rounding: a float16 `d` has an 11-bit significand and the integer factors are small
//! (at most 7 + 5 bits for Q6_K and IQ4_XS, fewer elsewhere), so every product `d * sc * q`
//! and `dmin * m` is exact in float32 whatever the grouping, and no finite float16 input can
//! overflow or underflow it. The only rounding step is the final subtraction of the affine
//! types, so a C compiler contracting `dl * q - ml` into an FMA (GCC's default
//! `-ffp-contract=fast`) gives the same bits too. The gguf-py order is kept anyway.
//!
//! The functions are portable scalar code: no SIMD, no `unsafe`, no allocation.

use half::f16;

/// Values per k-quant super-block.
pub const QK_K: usize = 256;

/// Bytes per block of each type (as `GGML_QUANT_SIZES` in gguf/constants.py).
pub const Q2_K_BYTES: usize = 84;
pub const Q3_K_BYTES: usize = 110;
pub const Q4_K_BYTES: usize = 144;
pub const Q5_K_BYTES: usize = 176;
pub const Q6_K_BYTES: usize = 210;
/// Values per IQ4_NL block.
pub const IQ4_NL_BLOCK: usize = 32;
pub const IQ4_NL_BYTES: usize = 18;
/// Bytes per IQ4_XS block (a block of `QK_K` values).
pub const IQ4_XS_BYTES: usize = 136;

/// The IQ4_NL / IQ4_XS codebook (`kvalues_iq4nl` in ggml, `IQ4_NL.kvalues` in gguf-py).
pub(crate) const IQ4_KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Size of the packed 6-bit scales/mins field of Q4_K and Q5_K (`K_SCALE_SIZE`).
const K_SCALE_SIZE: usize = 12;

/// The little-endian float16 at `block[at..at + 2]`, widened (exactly) to float32.
#[inline]
fn f16_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

#[inline]
fn check_lens(block: &[u8], out: &[f32], bytes: usize, values: usize, name: &str) {
    assert!(
        block.len() == bytes,
        "{name}: block is {} bytes, expected {bytes}",
        block.len()
    );
    assert!(
        out.len() == values,
        "{name}: output holds {} values, expected {values}",
        out.len()
    );
}

/// Dequantizes one Q2_K block (84 bytes) into `QK_K` values.
///
/// Layout: `scales[16]` (low nibble: sub-block scale, high nibble: sub-block min, one byte per
/// 16 values), `qs[64]` (2-bit codes), `d: f16`, `dmin: f16`.
///
/// Value `h*128 + s*32 + l` (`h` < 2, `s` < 4, `l` < 32) has code `(qs[h*32 + l] >> 2s) & 3`
/// and sub-block `j = idx / 16`; it is `(d * (scales[j] & 0xF)) * q - (dmin * (scales[j] >> 4))`.
///
/// # Panics
/// If `block.len() != Q2_K_BYTES` or `out.len() != QK_K`.
pub fn dequantize_q2_k(block: &[u8], out: &mut [f32]) {
    check_lens(block, out, Q2_K_BYTES, QK_K, "Q2_K");
    let scales = &block[0..QK_K / 16];
    let qs = &block[QK_K / 16..QK_K / 16 + QK_K / 4];
    let d = f16_at(block, 80);
    let dmin = f16_at(block, 82);

    for (h, (qs_half, out_half)) in qs
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(128))
        .enumerate()
    {
        for (s, out_s) in out_half.chunks_exact_mut(32).enumerate() {
            let shift = 2 * s;
            for (g, (out_g, qs_g)) in out_s
                .chunks_exact_mut(16)
                .zip(qs_half.chunks_exact(16))
                .enumerate()
            {
                let sc = scales[h * 8 + s * 2 + g];
                // gguf-py: dl = d * (scales & 0xF); ml = dmin * (scales >> 4); dl * qs - ml
                let dl = d * f32::from(sc & 0x0F);
                let ml = dmin * f32::from(sc >> 4);
                for (y, &q) in out_g.iter_mut().zip(qs_g) {
                    *y = dl * f32::from((q >> shift) & 3) - ml;
                }
            }
        }
    }
}

/// Dequantizes one Q3_K block (110 bytes) into `QK_K` values.
///
/// Layout: `hmask[32]` (high bit of each 3-bit code), `qs[64]` (low 2 bits), `scales[12]`
/// (sixteen 6-bit signed-with-offset-32 sub-block scales, packed as in
/// `unpack_q3_k_scales` below), `d: f16`.
///
/// Value `h*128 + s*32 + l` has low bits `(qs[h*32 + l] >> 2s) & 3`, high bit
/// `(hmask[l] >> (h*4 + s)) & 1`; the code is `low - 4` when the high bit is 0 and `low` when
/// it is 1. The value is `(d * sc[idx / 16]) * code`.
///
/// # Panics
/// If `block.len() != Q3_K_BYTES` or `out.len() != QK_K`.
pub fn dequantize_q3_k(block: &[u8], out: &mut [f32]) {
    check_lens(block, out, Q3_K_BYTES, QK_K, "Q3_K");
    let hmask = &block[0..QK_K / 8];
    let qs = &block[QK_K / 8..QK_K / 8 + QK_K / 4];
    let sc = unpack_q3_k_scales(&block[96..108]);
    let d = f16_at(block, 108);

    for (h, (qs_half, out_half)) in qs
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(128))
        .enumerate()
    {
        for (s, out_s) in out_half.chunks_exact_mut(32).enumerate() {
            let shift = 2 * s;
            let hbit = h * 4 + s;
            for (g, ((out_g, qs_g), hm_g)) in out_s
                .chunks_exact_mut(16)
                .zip(qs_half.chunks_exact(16))
                .zip(hmask.chunks_exact(16))
                .enumerate()
            {
                // gguf-py: dl = d * scales (float32), then dl * q.
                let dl = d * f32::from(sc[h * 8 + s * 2 + g]);
                for ((y, &q), &m) in out_g.iter_mut().zip(qs_g).zip(hm_g) {
                    let low = ((q >> shift) & 3) as i8;
                    // "strangely, the offset is zero when the bitmask is 1" (gguf-py).
                    let offset = if (m >> hbit) & 1 == 1 { 0 } else { 4 };
                    *y = dl * f32::from(low - offset);
                }
            }
        }
    }
}

/// Unpacks Q3_K's sixteen 6-bit scales from 12 bytes and removes the offset 32.
///
/// ```text
///  0: IIIIAAAA    4: MMMMEEEE    8: MMIIEEAA
///  1: JJJJBBBB    5: NNNNFFFF    9: NNJJFFBB
///  2: KKKKCCCC    6: OOOOGGGG   10: OOKKGGCC
///  3: LLLLDDDD    7: PPPPHHHH   11: PPLLHHDD
/// ```
/// Scale `i` (A = 0 .. P = 15) has low nibble `packed[i % 8] >> (4 * (i / 8))` and high two
/// bits `packed[8 + i % 4] >> (2 * (i / 4))`.
#[inline]
fn unpack_q3_k_scales(packed: &[u8]) -> [i8; 16] {
    core::array::from_fn(|i| {
        let low = (packed[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        // 0..=63 fits in i8; gguf-py: scales.astype(int8) - int8(32)
        ((low | (high << 4)) as i8) - 32
    })
}

/// Unpacks the eight 6-bit scales and eight 6-bit mins shared by Q4_K and Q5_K
/// (`get_scale_min_k4` in ggml, `Q4_K.get_scale_min` in gguf-py).
///
/// ```text
///  0 EEAAAAAA    4 eeaaaaaa    8 eeeeEEEE
///  1 FFBBBBBB    5 ffbbbbbb    9 ffffFFFF
///  2 GGCCCCCC    6 ggcccccc   10 ggggGGGG
///  3 HHDDDDDD    7 hhdddddd   11 hhhhHHHH
/// ```
/// Upper-case letters are scales, lower-case letters mins.
#[inline]
fn unpack_k4_scale_min(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let sc = core::array::from_fn(|j| {
        if j < 4 {
            packed[j] & 0x3F
        } else {
            (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 2) & 0x30)
        }
    });
    let m = core::array::from_fn(|j| {
        if j < 4 {
            packed[j + 4] & 0x3F
        } else {
            (packed[j + 4] >> 4) | ((packed[j] >> 2) & 0x30)
        }
    });
    (sc, m)
}

/// Dequantizes one Q4_K block (144 bytes) into `QK_K` values.
///
/// Layout: `d: f16`, `dmin: f16`, `scales[12]` (eight 6-bit scales and mins, see
/// `unpack_k4_scale_min` below), `qs[128]` (4-bit codes).
///
/// Value `c*64 + s*32 + l` (`c` < 4, `s` < 2, `l` < 32) has code `(qs[c*32 + l] >> 4s) & 0xF`
/// and sub-block `j = 2c + s`; it is `(d * sc[j]) * q - (dmin * m[j])`.
///
/// # Panics
/// If `block.len() != Q4_K_BYTES` or `out.len() != QK_K`.
pub fn dequantize_q4_k(block: &[u8], out: &mut [f32]) {
    check_lens(block, out, Q4_K_BYTES, QK_K, "Q4_K");
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let (sc, m) = unpack_k4_scale_min(&block[4..4 + K_SCALE_SIZE]);
    let qs = &block[4 + K_SCALE_SIZE..];

    for (j, out_j) in out.chunks_exact_mut(32).enumerate() {
        let qs_c = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let shift = 4 * (j % 2);
        let dl = d * f32::from(sc[j]);
        let ml = dmin * f32::from(m[j]);
        for (y, &q) in out_j.iter_mut().zip(qs_c) {
            *y = dl * f32::from((q >> shift) & 0x0F) - ml;
        }
    }
}

/// Dequantizes one Q5_K block (176 bytes) into `QK_K` values.
///
/// Layout: `d: f16`, `dmin: f16`, `scales[12]` (as Q4_K), `qh[32]` (fifth bit of each code),
/// `qs[128]` (low 4 bits).
///
/// Value `j*32 + l` (`j` < 8, `l` < 32) has code
/// `((qs[(j/2)*32 + l] >> 4(j%2)) & 0xF) | (((qh[l] >> j) & 1) << 4)`;
/// it is `(d * sc[j]) * q - (dmin * m[j])`.
///
/// # Panics
/// If `block.len() != Q5_K_BYTES` or `out.len() != QK_K`.
pub fn dequantize_q5_k(block: &[u8], out: &mut [f32]) {
    check_lens(block, out, Q5_K_BYTES, QK_K, "Q5_K");
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let (sc, m) = unpack_k4_scale_min(&block[4..4 + K_SCALE_SIZE]);
    let qh = &block[4 + K_SCALE_SIZE..4 + K_SCALE_SIZE + QK_K / 8];
    let qs = &block[4 + K_SCALE_SIZE + QK_K / 8..];

    for (j, out_j) in out.chunks_exact_mut(32).enumerate() {
        let qs_c = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let shift = 4 * (j % 2);
        let dl = d * f32::from(sc[j]);
        let ml = dmin * f32::from(m[j]);
        for ((y, &q), &h) in out_j.iter_mut().zip(qs_c).zip(qh) {
            let code = ((q >> shift) & 0x0F) | (((h >> j) & 1) << 4);
            *y = dl * f32::from(code) - ml;
        }
    }
}

/// Dequantizes one Q6_K block (210 bytes) into `QK_K` values.
///
/// Layout: `ql[128]` (low 4 bits of each code), `qh[64]` (high 2 bits), `scales[16]` (int8,
/// one per 16 values), `d: f16`.
///
/// Value `h*128 + r*32 + l` (`h` < 2, `r` < 4, `l` < 32) has code
/// `((ql[h*64 + (r%2)*32 + l] >> 4(r/2)) & 0xF) | (((qh[h*32 + l] >> 2r) & 3) << 4)` minus 32;
/// it is `(d * scales[idx / 16]) * code`.
///
/// # Panics
/// If `block.len() != Q6_K_BYTES` or `out.len() != QK_K`.
pub fn dequantize_q6_k(block: &[u8], out: &mut [f32]) {
    check_lens(block, out, Q6_K_BYTES, QK_K, "Q6_K");
    let ql = &block[0..QK_K / 2];
    let qh = &block[QK_K / 2..QK_K / 2 + QK_K / 4];
    let scales = &block[192..192 + QK_K / 16];
    let d = f16_at(block, 208);

    for (h, ((ql_half, qh_half), out_half)) in ql
        .chunks_exact(64)
        .zip(qh.chunks_exact(32))
        .zip(out.chunks_exact_mut(128))
        .enumerate()
    {
        for (r, out_r) in out_half.chunks_exact_mut(32).enumerate() {
            let ql_r = &ql_half[(r % 2) * 32..(r % 2) * 32 + 32];
            let lshift = 4 * (r / 2);
            let hshift = 2 * r;
            for (g, ((out_g, ql_g), qh_g)) in out_r
                .chunks_exact_mut(16)
                .zip(ql_r.chunks_exact(16))
                .zip(qh_half.chunks_exact(16))
                .enumerate()
            {
                // gguf-py: d = d * scales (float32), then d * q. (ggml C's `d * sc[is] * q1`
                // groups the same way.)
                let dl = d * f32::from(scales[h * 8 + r * 2 + g] as i8);
                for ((y, &lo), &hi) in out_g.iter_mut().zip(ql_g).zip(qh_g) {
                    let code = ((lo >> lshift) & 0x0F) | (((hi >> hshift) & 0x03) << 4);
                    // 0..=63 fits in i8; gguf-py: q.astype(int8) - int8(32)
                    *y = dl * f32::from(code as i8 - 32);
                }
            }
        }
    }
}

/// Dequantizes one IQ4_NL block (18 bytes) into `IQ4_NL_BLOCK` = 32 values.
///
/// Layout: `d: f16`, `qs[16]` (4-bit codebook indices). Value `s*16 + l` (`s` < 2, `l` < 16)
/// is `d * IQ4_KVALUES[(qs[l] >> 4s) & 0xF]`.
///
/// # Panics
/// If `block.len() != IQ4_NL_BYTES` or `out.len() != IQ4_NL_BLOCK`.
pub fn dequantize_iq4_nl(block: &[u8], out: &mut [f32]) {
    check_lens(block, out, IQ4_NL_BYTES, IQ4_NL_BLOCK, "IQ4_NL");
    let d = f16_at(block, 0);
    let qs = &block[2..];
    let (lo, hi) = out.split_at_mut(IQ4_NL_BLOCK / 2);
    for ((y_lo, y_hi), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
        *y_lo = d * f32::from(IQ4_KVALUES[usize::from(q & 0x0F)]);
        *y_hi = d * f32::from(IQ4_KVALUES[usize::from(q >> 4)]);
    }
}

/// Dequantizes one IQ4_XS block (136 bytes) into `QK_K` values.
///
/// Layout: `d: f16`, `scales_h: u16` (2 high bits of each of the eight 6-bit sub-block scales),
/// `scales_l[4]` (4 low bits, two per byte, low nibble first), `qs[128]` (4-bit codebook
/// indices, 16 bytes per 32-value sub-block).
///
/// Sub-block `ib` has scale
/// `ls = ((scales_l[ib/2] >> 4(ib%2)) & 0xF | ((scales_h >> 2ib) & 3) << 4) - 32`;
/// its value `s*16 + l` is `(d * ls) * IQ4_KVALUES[(qs[ib*16 + l] >> 4s) & 0xF]`.
///
/// # Panics
/// If `block.len() != IQ4_XS_BYTES` or `out.len() != QK_K`.
pub fn dequantize_iq4_xs(block: &[u8], out: &mut [f32]) {
    check_lens(block, out, IQ4_XS_BYTES, QK_K, "IQ4_XS");
    let d = f16_at(block, 0);
    let scales_h = u16::from_le_bytes([block[2], block[3]]);
    let scales_l = &block[4..4 + QK_K / 64];
    let qs = &block[4 + QK_K / 64..];

    for (ib, (out_b, qs_b)) in out
        .chunks_exact_mut(32)
        .zip(qs.chunks_exact(16))
        .enumerate()
    {
        let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F;
        let high = ((scales_h >> (2 * ib)) & 0x03) as u8;
        // 0..=63 fits in i8; gguf-py: (...).astype(int8) - int8(32), then d * scales (float32)
        let dl = d * f32::from((low | (high << 4)) as i8 - 32);
        let (lo, hi) = out_b.split_at_mut(16);
        for ((y_lo, y_hi), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs_b) {
            *y_lo = dl * f32::from(IQ4_KVALUES[usize::from(q & 0x0F)]);
            *y_hi = dl * f32::from(IQ4_KVALUES[usize::from(q >> 4)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Dequant = fn(&[u8], &mut [f32]);

    const ALL: [(&str, Dequant, usize, usize); 7] = [
        ("Q2_K", dequantize_q2_k, Q2_K_BYTES, QK_K),
        ("Q3_K", dequantize_q3_k, Q3_K_BYTES, QK_K),
        ("Q4_K", dequantize_q4_k, Q4_K_BYTES, QK_K),
        ("Q5_K", dequantize_q5_k, Q5_K_BYTES, QK_K),
        ("Q6_K", dequantize_q6_k, Q6_K_BYTES, QK_K),
        ("IQ4_NL", dequantize_iq4_nl, IQ4_NL_BYTES, IQ4_NL_BLOCK),
        ("IQ4_XS", dequantize_iq4_xs, IQ4_XS_BYTES, QK_K),
    ];

    fn put_f16(block: &mut [u8], at: usize, v: f32) {
        block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
    }

    fn run(f: Dequant, block: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n];
        f(block, &mut out);
        out
    }

    #[test]
    fn zero_blocks_give_zeros() {
        for (name, f, bytes, n) in ALL {
            let out = run(f, &vec![0u8; bytes], n);
            assert!(out.iter().all(|&v| v == 0.0), "{name}: {out:?}");
        }
    }

    #[test]
    fn zero_d_gives_zeros_whatever_the_codes() {
        // Every field except the float16 scales is 0xFF; d (and dmin) = +0.
        let f16_fields: [(Dequant, usize, &[usize], usize); 7] = [
            (dequantize_q2_k, Q2_K_BYTES, &[80, 82], QK_K),
            (dequantize_q3_k, Q3_K_BYTES, &[108], QK_K),
            (dequantize_q4_k, Q4_K_BYTES, &[0, 2], QK_K),
            (dequantize_q5_k, Q5_K_BYTES, &[0, 2], QK_K),
            (dequantize_q6_k, Q6_K_BYTES, &[208], QK_K),
            (dequantize_iq4_nl, IQ4_NL_BYTES, &[0], IQ4_NL_BLOCK),
            (dequantize_iq4_xs, IQ4_XS_BYTES, &[0], QK_K),
        ];
        for (f, bytes, at, n) in f16_fields {
            let mut block = vec![0xFFu8; bytes];
            for &a in at {
                put_f16(&mut block, a, 0.0);
            }
            assert!(run(f, &block, n).iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn q2_k_hand_built() {
        let mut b = [0u8; Q2_K_BYTES];
        b[0] = 0x32; // sub-block 0: scale 2, min 3
        b[15] = 0x1F; // sub-block 15: scale 15, min 1
        b[16] = 0b1110_0100; // qs[0]: codes 0, 1, 2, 3 for values 0, 32, 64, 96
        b[16 + 63] = 0b1100_0000; // qs[63]: code 3 for value 128 + 96 + 31 = 255
        put_f16(&mut b, 80, 0.5); // d
        put_f16(&mut b, 82, 0.25); // dmin
        let out = run(dequantize_q2_k, &b, QK_K);
        assert_eq!(out[0], 0.5 * 2.0 * 0.0 - 0.25 * 3.0); // -0.75
        assert_eq!(out[1], -0.75); // code 0 too
        assert_eq!(out[32], 0.0); // sub-block 2: scale 0, min 0
        assert_eq!(out[255], 0.5 * 15.0 * 3.0 - 0.25); // 22.25
        assert_eq!(out[254], -0.25); // code 0 in sub-block 15
    }

    #[test]
    fn q3_k_hand_built() {
        let mut b = [0u8; Q3_K_BYTES];
        // scale A (sub-block 0) = 0b10_0101 = 37 -> 5; scale P (sub-block 15) = 0b01_0011 = 19 -> -13
        b[96] = 0x05; // IIIIAAAA
        b[96 + 7] = 0x30; // PPPPHHHH
        b[96 + 8] = 0x02; // MMIIEEAA
        b[96 + 11] = 0x40; // PPLLHHDD
        b[0] = 0x01; // hmask[0] bit 0: value 0 has no -4 offset
        b[32] = 0b0000_0011; // qs[0]: value 0 low bits 3
        b[32 + 63] = 0b1000_0000; // qs[63]: value 255 low bits 2
        b[31] = 0x80; // hmask[31] bit 7: value 255 has no offset
        put_f16(&mut b, 108, 2.0);
        let out = run(dequantize_q3_k, &b, QK_K);
        assert_eq!(out[0], 2.0 * 5.0 * 3.0); // 30
        assert_eq!(out[1], 2.0 * 5.0 * -4.0); // low 0, high bit 0 -> -4
        assert_eq!(out[255], 2.0 * -13.0 * 2.0); // -52
        assert_eq!(out[254], 2.0 * -13.0 * -4.0); // 104
        assert_eq!(out[16], 2.0 * -32.0 * -4.0); // sub-block 1: packed 0 -> -32
    }

    #[test]
    fn k4_scale_min_unpacking() {
        // Rows of four bytes: EEAAAAAA .. HHDDDDDD, eeaaaaaa .. hhdddddd, eeeeEEEE .. hhhhHHHH.
        #[rustfmt::skip]
        let packed = [
            0b11_000001, 0, 0, 0b01_111111,
            0b10_000010, 0, 0, 0b00_000100,
            0x5A, 0, 0, 0xF1,
        ];
        let (sc, m) = unpack_k4_scale_min(&packed);
        assert_eq!(sc, [1, 0, 0, 63, 0x3A, 0, 0, 0x11]);
        assert_eq!(m, [2, 0, 0, 4, 0x25, 0, 0, 0x0F]);
    }

    #[test]
    fn q4_k_hand_built() {
        let mut b = [0u8; Q4_K_BYTES];
        put_f16(&mut b, 0, 0.5); // d
        put_f16(&mut b, 2, -1.0); // dmin
        b[4] = 3; // sc[0] = 3
        b[8] = 2; // m[0] = 2
        b[4 + 8 + 3] = 0x71; // sc[7] = 1, m[7] = 7
        b[16] = 0xA5; // qs[0]: value 0 code 5, value 32 code 10 (sub-block 1: sc 0, m 0)
        b[16 + 127] = 0xF0; // qs[127]: value 255 (sub-block 7, high nibble) code 15
        let out = run(dequantize_q4_k, &b, QK_K);
        assert_eq!(out[0], 0.5 * 3.0 * 5.0 + 2.0); // (d*sc)*q - dmin*m = 7.5 - (-2)
        assert_eq!(out[1], 2.0);
        assert_eq!(out[32], 0.0);
        assert_eq!(out[255], 0.5 * 15.0 + 7.0); // 14.5
        assert_eq!(out[224], 7.0); // code 0 in sub-block 7
    }

    #[test]
    fn q5_k_hand_built() {
        let mut b = [0u8; Q5_K_BYTES];
        put_f16(&mut b, 0, 0.25); // d
        put_f16(&mut b, 2, 0.5); // dmin
        b[4] = 4; // sc[0] = 4
        b[8] = 1; // m[0] = 1
        b[4 + 8 + 3] = 0x32; // sc[7] = 2, m[7] = 3
        b[16] = 0x01; // qh[0] bit 0: value 0 +16
        b[16 + 31] = 0x80; // qh[31] bit 7: value 255 +16
        b[48] = 0x0F; // qs[0] low nibble: value 0 low bits 15
        b[48 + 127] = 0x10; // qs[127] high nibble: value 255 low bits 1
        let out = run(dequantize_q5_k, &b, QK_K);
        assert_eq!(out[0], 0.25 * 4.0 * 31.0 - 0.5); // 30.5
        assert_eq!(out[1], -0.5);
        assert_eq!(out[255], 0.25 * 2.0 * 17.0 - 1.5); // 7
        assert_eq!(out[254], -1.5);
    }

    #[test]
    fn q6_k_hand_built() {
        let mut b = [0u8; Q6_K_BYTES];
        b[0] = 0x21; // ql[0]: value 0 low 1, value 64 low 2
        b[128] = 0b0010_0011; // qh[0]: value 0 high 3, value 32 high 0, value 64 high 2
        b[64 + 63] = 0xF0; // ql[127]: value 255 low 15
        b[128 + 63] = 0xC0; // qh[63]: value 255 high 3
        b[192] = 2; // scales[0]
        b[192 + 4] = (-3i8) as u8; // scales[4] (values 64..80)
        b[192 + 15] = (-1i8) as u8; // scales[15]
        put_f16(&mut b, 208, 0.5);
        let out = run(dequantize_q6_k, &b, QK_K);
        assert_eq!(out[0], 0.5 * 2.0 * (49.0 - 32.0)); // 17
        assert_eq!(out[1], 0.5 * 2.0 * -32.0);
        assert_eq!(out[64], 0.5 * -3.0 * (34.0 - 32.0)); // -3
        assert_eq!(out[255], -0.5 * (63.0 - 32.0)); // d * scales[15] = -0.5
    }

    #[test]
    fn iq4_nl_hand_built() {
        let mut b = [0u8; IQ4_NL_BYTES];
        put_f16(&mut b, 0, -0.5);
        b[2] = 0xF0; // value 0: index 0 (-127), value 16: index 15 (113)
        b[17] = 0x78; // value 15: index 8 (1), value 31: index 7 (-10)
        let out = run(dequantize_iq4_nl, &b, IQ4_NL_BLOCK);
        assert_eq!(out[0], 63.5);
        assert_eq!(out[16], -56.5);
        assert_eq!(out[15], -0.5);
        assert_eq!(out[31], 5.0);
        assert_eq!(out[1], 63.5);
    }

    #[test]
    fn iq4_xs_hand_built() {
        let mut b = [0u8; IQ4_XS_BYTES];
        put_f16(&mut b, 0, 0.25);
        // sub-block 0: 0b10_0001 = 33 -> 1; sub-block 7: 0b01_1111 = 31 -> -1
        b[2..4].copy_from_slice(&(0b01_00_00_00_00_00_00_10u16).to_le_bytes());
        b[4] = 0x01; // scales_l: sub-block 0 low nibble 1
        b[7] = 0xF0; // scales_l: sub-block 7 low nibble 15
        b[8] = 0xF0; // qs[0]: value 0 index 0, value 16 index 15
        b[8 + 127] = 0x0C; // qs[127]: value 239 index 12 (53), value 255 index 0 (-127)
        let out = run(dequantize_iq4_xs, &b, QK_K);
        assert_eq!(out[0], 0.25 * -127.0);
        assert_eq!(out[16], 0.25 * 113.0);
        assert_eq!(out[239], -0.25 * 53.0); // d * ls = -0.25
        assert_eq!(out[255], -0.25 * -127.0);
        assert_eq!(out[32], 0.25 * -32.0 * -127.0); // sub-block 1: packed 0 -> -32
    }

    #[test]
    #[should_panic(expected = "Q4_K: block is 143 bytes")]
    fn short_block_panics() {
        dequantize_q4_k(&[0u8; Q4_K_BYTES - 1], &mut [0.0; QK_K]);
    }

    #[test]
    #[should_panic(expected = "IQ4_NL: output holds 31 values")]
    fn short_output_panics() {
        dequantize_iq4_nl(&[0u8; IQ4_NL_BYTES], &mut [0.0; IQ4_NL_BLOCK - 1]);
    }

    #[test]
    fn every_type_checks_its_lengths() {
        for (name, f, bytes, n) in ALL {
            let long = std::panic::catch_unwind(|| run(f, &vec![0u8; bytes + 1], n));
            let short_out = std::panic::catch_unwind(|| run(f, &vec![0u8; bytes], n - 1));
            assert!(long.is_err() && short_out.is_err(), "{name}");
        }
    }
}

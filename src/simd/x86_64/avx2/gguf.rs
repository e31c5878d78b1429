//! AVX2 quantizers of the GGUF block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (the reference,
//! unweighted ones): the same operations as `gguf::legacy`'s portable code, lane by lane, so
//! the bytes are identical (tests compare every path's bytes through `QFAST_ISA`, and with
//! gguf-py's).
//!
//! - `cvttps2dq` is the conversion the references compile to (truncation; `i32::MIN` for NaN
//!   and out-of-range), and its low byte is kept (masked to a byte, then packed without
//!   saturation), as `legacy::cvt_i32` does.
//! - Q4_0 / Q5_0's `d` comes from the value of largest magnitude, the first one on ties: the
//!   block's largest magnitude from a reduction, then the first element whose magnitude
//!   equals it. Q4_1 / Q5_1's minimum and maximum likewise: the reduced value, then its first
//!   occurrence (which keeps the sign of a zero as the sequential loop does).
//! - Q8_0's `roundf` (ties away from zero): `cvttps2dq(y ± h)`, `h` the float just below one
//!   half ([`round_away`]; checked on every float). Its group of 8 blocks reduces its maxima
//!   together, and packs its codes with signed saturation where every scale is normal.
//! - The float16 scales are `vcvtps2ph` rounding to nearest even, as `half` stores them.
//!
//! The `Q4_0 · Q8_0` dot ([`dot_q4_0_q8_0`]) keeps `gguf::dot::dot_ref`'s float order, so its
//! result has the same bits.

use crate::gguf::dot::{tree_sum, LANES};
use crate::gguf::legacy::{Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q8_0_BYTES, QK};
use crate::simd::{GgufKind as Kind, Q8Row};
use core::arch::x86_64::*;

/// Quantizes whole blocks of `x` into `out` (the `avx2` table's `gguf_quantize`): `None`
/// (nothing written) when the CPU lacks AVX2, else whether every value of `x` was finite
/// (when one is not, `out` holds garbage and the caller reports the value).
pub fn quantize_blocks(kind: Kind, x: &[f32], out: &mut [u8]) -> Option<bool> {
    let ts = match kind {
        Kind::Q4_0 => Q4_0_BYTES,
        Kind::Q4_1 => Q4_1_BYTES,
        Kind::Q5_0 => Q5_0_BYTES,
        Kind::Q5_1 => Q5_1_BYTES,
        Kind::Q8_0 => Q8_0_BYTES,
    };
    if !crate::simd::probe::has_avx2() {
        return None;
    }
    assert!(x.len().is_multiple_of(QK) && out.len() == x.len() / QK * ts);
    // SAFETY: the CPU has AVX2, FMA and F16C; each block reads 32 floats and writes `ts`
    // bytes, in bounds by the assertion above.
    let finite = unsafe {
        match kind {
            Kind::Q4_0 => blocks::<{ Kind::Q4_0 as u8 }>(x, out, ts),
            Kind::Q4_1 => blocks::<{ Kind::Q4_1 as u8 }>(x, out, ts),
            Kind::Q5_0 => blocks::<{ Kind::Q5_0 as u8 }>(x, out, ts),
            Kind::Q5_1 => blocks::<{ Kind::Q5_1 as u8 }>(x, out, ts),
            Kind::Q8_0 => blocks_q8_0(x, out),
        }
    };
    Some(finite)
}

/// Blocks per group: each group first finds every block's grid (the reductions), then
/// divides and converts the scales to float16 eight blocks at a time, then writes the blocks.
const GROUP: usize = 8;

/// How far ahead of pass 1 the input is prefetched, in floats (2 KiB).
const PREFETCH: usize = 512;

/// The largest of the 8 lanes of `v` (exact: a maximum does not depend on the order).
#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    let m = _mm256_max_ps(v, _mm256_permute2f128_ps::<1>(v, v));
    let m = _mm256_max_ps(m, _mm256_shuffle_ps::<0b0100_1110>(m, m));
    let m = _mm256_max_ps(m, _mm256_shuffle_ps::<0b1011_0001>(m, m));
    _mm256_cvtss_f32(m)
}

/// The largest of the 8 lanes of `v`, compared as `i32` (the bits of magnitudes: no sign bit).
#[inline(always)]
unsafe fn hmax_u31(v: __m256i) -> u32 {
    let m = _mm256_max_epi32(v, _mm256_permute2x128_si256::<1>(v, v));
    let m = _mm256_max_epi32(m, _mm256_shuffle_epi32::<0b0100_1110>(m));
    let m = _mm256_max_epi32(m, _mm256_shuffle_epi32::<0b1011_0001>(m));
    _mm256_cvtsi256_si32(m) as u32
}

/// The smallest of the 8 lanes of `v`.
#[inline(always)]
unsafe fn hmin(v: __m256) -> f32 {
    let m = _mm256_min_ps(v, _mm256_permute2f128_ps::<1>(v, v));
    let m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b0100_1110>(m, m));
    let m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b1011_0001>(m, m));
    _mm256_cvtss_f32(m)
}

/// The element of the block `v` (loaded from `xb`) that is the first to equal `t` (compared
/// in `a`, the values or their magnitudes). A block holding NaN may match nothing: its codes
/// are discarded (it is reported not finite), and the last element stands in.
#[inline(always)]
unsafe fn first_equal(a: &[__m256; 4], t: f32, xb: *const f32) -> f32 {
    let t = _mm256_set1_ps(t);
    let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a[0], t)) as u32
        | (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a[1], t)) as u32) << 8
        | (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a[2], t)) as u32) << 16
        | (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a[3], t)) as u32) << 24;
    *xb.add((hit | 1 << 31).trailing_zeros() as usize)
}

/// The low byte of each i32 lane of `c[0..4]` (the `as u8` truncation), in order: 32 bytes.
#[inline(always)]
unsafe fn low_bytes(c: [__m256i; 4]) -> __m256i {
    // (No closures here: one would not inherit the caller's target features.)
    let byte = _mm256_set1_epi32(0xff);
    let c = [
        _mm256_and_si256(c[0], byte),
        _mm256_and_si256(c[1], byte),
        _mm256_and_si256(c[2], byte),
        _mm256_and_si256(c[3], byte),
    ];
    // Values 0..=255: the saturating packs keep them. Per 128-bit lane the packs give
    // [c0 lo, c1 lo, c2 lo, c3 lo | c0 hi, c1 hi, c2 hi, c3 hi] (4 bytes each).
    let p = _mm256_packus_epi16(
        _mm256_packus_epi32(c[0], c[1]),
        _mm256_packus_epi32(c[2], c[3]),
    );
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `min(top, low byte of cvttps2dq(y))` for the 32 lanes of `y`, as 32 bytes in order.
#[inline(always)]
unsafe fn codes(y: [__m256; 4], top: u8) -> __m256i {
    let c = [
        _mm256_cvttps_epi32(y[0]),
        _mm256_cvttps_epi32(y[1]),
        _mm256_cvttps_epi32(y[2]),
        _mm256_cvttps_epi32(y[3]),
    ];
    _mm256_min_epu8(low_bytes(c), _mm256_set1_epi8(top as i8))
}

/// Writes 32 codes `c` (`< 16`, or `< 32` when `five`) at `o`: for 5-bit codes `qh` first
/// (bit j = bit 4 of code j), then `qs[j] = c[j] & 15 | (c[j + 16] & 15) << 4`.
#[inline(always)]
unsafe fn store_codes(c: __m256i, o: *mut u8, five: bool) {
    let at = if five {
        // Bit 4 of each byte moved to bit 7, which `movemask` gathers in order.
        let qh = _mm256_movemask_epi8(_mm256_slli_epi16::<3>(c)) as u32;
        core::ptr::copy_nonoverlapping(qh.to_le_bytes().as_ptr(), o, 4);
        4
    } else {
        0
    };
    let c = _mm256_and_si256(c, _mm256_set1_epi8(0x0f));
    let lo = _mm256_castsi256_si128(c);
    let hi = _mm256_extracti128_si256::<1>(c);
    // Nibbles: the shift moves no bit across a byte.
    let qs = _mm_or_si128(lo, _mm_slli_epi16::<4>(hi));
    _mm_storeu_si128(o.add(at) as *mut __m128i, qs);
}

/// The loops index raw pointers and map no closures: in a build without LTO, iterator
/// adapters and `array::map` stayed calls out of this `#[target_feature]` function (a third
/// slower than the portable code).
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blocks<const K: u8>(x: &[f32], out: &mut [u8], ts: usize) -> bool {
    let sym = K == Kind::Q4_0 as u8 || K == Kind::Q5_0 as u8;
    let five = K == Kind::Q5_0 as u8 || K == Kind::Q5_1 as u8;
    let (half, top): (f32, u8) = match K {
        k if k == Kind::Q4_0 as u8 => (8.0, 15),
        k if k == Kind::Q5_0 as u8 => (16.0, 31),
        k if k == Kind::Q4_1 as u8 => (0.0, 15),
        _ => (0.0, 31),
    };
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let max_finite = _mm256_set1_epi32(0x7f7f_ffff);
    let mut bad = _mm256_setzero_si256();
    let nb = x.len() / QK;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut g0 = 0;
    while g0 < nb {
        let n = GROUP.min(nb - g0);
        // Pass 1: `hi` is the first value of largest magnitude (Q4_0, Q5_0) or the maximum
        // (Q4_1, Q5_1); `lo` the minimum (Q4_1, Q5_1).
        let (mut hi, mut lo) = ([0f32; GROUP], [0f32; GROUP]);
        for i in 0..n {
            let xb = xp.add((g0 + i) * QK);
            let ahead = xb.wrapping_add(PREFETCH) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            let v = [
                _mm256_loadu_ps(xb),
                _mm256_loadu_ps(xb.add(8)),
                _mm256_loadu_ps(xb.add(16)),
                _mm256_loadu_ps(xb.add(24)),
            ];
            let a = [
                _mm256_and_ps(v[0], abs_mask),
                _mm256_and_ps(v[1], abs_mask),
                _mm256_and_ps(v[2], abs_mask),
                _mm256_and_ps(v[3], abs_mask),
            ];
            let big = _mm256_max_epi32(
                _mm256_max_epi32(_mm256_castps_si256(a[0]), _mm256_castps_si256(a[1])),
                _mm256_max_epi32(_mm256_castps_si256(a[2]), _mm256_castps_si256(a[3])),
            );
            bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(big, max_finite));
            if sym {
                // The magnitudes' bits order as the magnitudes do: `big`'s largest lane is
                // max|x| (NaN bits, above every finite one, only where `bad` is set).
                let amax = f32::from_bits(hmax_u31(big));
                hi[i] = if amax == 0.0 {
                    *xb
                } else {
                    first_equal(&a, amax, xb)
                };
            } else {
                let vmin = hmin(_mm256_min_ps(
                    _mm256_min_ps(v[0], v[1]),
                    _mm256_min_ps(v[2], v[3]),
                ));
                let vmax = hmax(_mm256_max_ps(
                    _mm256_max_ps(v[0], v[1]),
                    _mm256_max_ps(v[2], v[3]),
                ));
                lo[i] = first_equal(&v, vmin, xb);
                hi[i] = first_equal(&v, vmax, xb);
            }
        }
        // d and 1/d for the group, as the scalar code computes them (IEEE division).
        let (hv, lv) = (_mm256_loadu_ps(hi.as_ptr()), _mm256_loadu_ps(lo.as_ptr()));
        let d = if sym {
            _mm256_div_ps(hv, _mm256_set1_ps(-half))
        } else {
            _mm256_div_ps(_mm256_sub_ps(hv, lv), _mm256_set1_ps(top as f32))
        };
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(d, _mm256_setzero_ps());
        let id = _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(1.0), d));
        let mut idv = [0f32; GROUP];
        _mm256_storeu_ps(idv.as_mut_ptr(), id);
        let (mut dh, mut mh) = ([0u16; GROUP], [0u16; GROUP]);
        _mm_storeu_si128(
            dh.as_mut_ptr() as *mut __m128i,
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d),
        );
        if !sym {
            _mm_storeu_si128(
                mh.as_mut_ptr() as *mut __m128i,
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(lv),
            );
        }
        // Pass 2: headers and codes.
        for i in 0..n {
            let xb = xp.add((g0 + i) * QK);
            let o = op.add((g0 + i) * ts);
            core::ptr::copy_nonoverlapping(dh[i].to_le_bytes().as_ptr(), o, 2);
            let id = _mm256_set1_ps(idv[i]);
            let v = [
                _mm256_loadu_ps(xb),
                _mm256_loadu_ps(xb.add(8)),
                _mm256_loadu_ps(xb.add(16)),
                _mm256_loadu_ps(xb.add(24)),
            ];
            if sym {
                // `min(top, trunc(x · id + half + 0.5))`: a product, then a sum (no FMA).
                let bias = _mm256_set1_ps(half + 0.5);
                let y = [
                    _mm256_add_ps(_mm256_mul_ps(v[0], id), bias),
                    _mm256_add_ps(_mm256_mul_ps(v[1], id), bias),
                    _mm256_add_ps(_mm256_mul_ps(v[2], id), bias),
                    _mm256_add_ps(_mm256_mul_ps(v[3], id), bias),
                ];
                store_codes(codes(y, top), o.add(2), five);
            } else {
                // `min(top, trunc((x - min) · id + 0.5))`: no FMA either.
                core::ptr::copy_nonoverlapping(mh[i].to_le_bytes().as_ptr(), o.add(2), 2);
                let (m, h) = (_mm256_set1_ps(lo[i]), _mm256_set1_ps(0.5));
                let y = [
                    _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v[0], m), id), h),
                    _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v[1], m), id), h),
                    _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v[2], m), id), h),
                    _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v[3], m), id), h),
                ];
                store_codes(codes(y, top), o.add(4), five);
            }
        }
        g0 += n;
    }
    _mm256_testz_si256(bad, bad) == 1
}

/// The lanes' maxima of `m[0..8]` (as `i32`), lane `i` of the result from `m[i]`: pairs of
/// lanes, then of 128-bit halves (21 operations for 8 blocks instead of 7 each).
#[inline(always)]
pub(crate) unsafe fn hmax8(m: [__m256i; GROUP]) -> __m256i {
    #[inline(always)]
    unsafe fn pair(a: __m256i, b: __m256i) -> __m256i {
        // Per 128-bit half: [max(a0, a1), max(a2, a3), max(b0, b1), max(b2, b3)].
        let (a, b) = (_mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
        _mm256_max_epi32(
            _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)),
            _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)),
        )
    }
    let q0 = pair(pair(m[0], m[1]), pair(m[2], m[3]));
    let q1 = pair(pair(m[4], m[5]), pair(m[6], m[7]));
    _mm256_max_epi32(
        _mm256_permute2x128_si256::<0x20>(q0, q1),
        _mm256_permute2x128_si256::<0x31>(q0, q1),
    )
}

/// Q8_0: as [`blocks`], with the group's 8 maxima reduced together ([`hmax8`]), and the codes
/// packed with signed saturation where every scale of the group is normal (or zero): then
/// `|x · (1 / d)| <= 127 (1 + 3 eps)`, `roundf` gives `-127..=127`, and saturation keeps them.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blocks_q8_0(x: &[f32], out: &mut [u8]) -> bool {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let max_finite = _mm256_set1_epi32(0x7f7f_ffff);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut bad = _mm256_setzero_si256();
    let nb = x.len() / QK;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut g0 = 0;
    while g0 < nb {
        let n = GROUP.min(nb - g0);
        // Pass 1: each block's lanes' max |x| (as bits: they order as the magnitudes do).
        let mut m = [_mm256_setzero_si256(); GROUP];
        for i in 0..n {
            let xb = xp.add((g0 + i) * QK);
            let ahead = xb.wrapping_add(PREFETCH) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            let a = [
                _mm256_and_ps(_mm256_loadu_ps(xb), abs_mask),
                _mm256_and_ps(_mm256_loadu_ps(xb.add(8)), abs_mask),
                _mm256_and_ps(_mm256_loadu_ps(xb.add(16)), abs_mask),
                _mm256_and_ps(_mm256_loadu_ps(xb.add(24)), abs_mask),
            ];
            m[i] = _mm256_max_epi32(
                _mm256_max_epi32(_mm256_castps_si256(a[0]), _mm256_castps_si256(a[1])),
                _mm256_max_epi32(_mm256_castps_si256(a[2]), _mm256_castps_si256(a[3])),
            );
        }
        // max |x| per block (NaN and infinities above every finite value: reported).
        let amax = hmax8(m);
        bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(amax, max_finite));
        // d and 1/d for the group, as the scalar code computes them (IEEE division).
        let d = _mm256_div_ps(_mm256_castsi256_ps(amax), _mm256_set1_ps(127.0));
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(d, _mm256_setzero_ps());
        let id = _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(1.0), d));
        let normal = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GE_OQ>(d, _mm256_set1_ps(f32::MIN_POSITIVE)),
            _mm256_cmp_ps::<_CMP_LE_OQ>(d, _mm256_set1_ps(f32::MAX)),
        );
        let saturate = _mm256_movemask_ps(_mm256_or_ps(
            normal,
            _mm256_xor_ps(nonzero, _mm256_castsi256_ps(_mm256_set1_epi32(-1))),
        )) == 0xff;
        let mut idv = [0f32; GROUP];
        _mm256_storeu_ps(idv.as_mut_ptr(), id);
        let mut dh = [0u16; GROUP];
        _mm_storeu_si128(
            dh.as_mut_ptr() as *mut __m128i,
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d),
        );
        // Pass 2: headers and codes.
        for i in 0..n {
            let xb = xp.add((g0 + i) * QK);
            let o = op.add((g0 + i) * Q8_0_BYTES);
            core::ptr::copy_nonoverlapping(dh[i].to_le_bytes().as_ptr(), o, 2);
            let id = _mm256_set1_ps(idv[i]);
            let c = [
                round_away(_mm256_mul_ps(_mm256_loadu_ps(xb), id)),
                round_away(_mm256_mul_ps(_mm256_loadu_ps(xb.add(8)), id)),
                round_away(_mm256_mul_ps(_mm256_loadu_ps(xb.add(16)), id)),
                round_away(_mm256_mul_ps(_mm256_loadu_ps(xb.add(24)), id)),
            ];
            let q = if saturate {
                let p = _mm256_packs_epi16(
                    _mm256_packs_epi32(c[0], c[1]),
                    _mm256_packs_epi32(c[2], c[3]),
                );
                _mm256_permutevar8x32_epi32(p, order)
            } else {
                low_bytes(c)
            };
            _mm256_storeu_si256(o.add(2) as *mut __m256i, q);
        }
        g0 += n;
    }
    _mm256_testz_si256(bad, bad) == 1
}

/// `cvttps2dq(roundf(y))` (ties away from zero) for 8 lanes: `cvttps2dq(y ± h)` with `h` the
/// largest float below 1/2, of `y`'s sign. The sum rounds (to nearest even) to `y ± 1/2`
/// wherever that is not a tie and sits in `y`'s binade or the next (`h` is `2^-25` below a
/// half, less than half their spacing); a tie `y = k + 1/2` gives `k + 1 - 2^-25`, which rounds
/// up to `k + 1`; and below 1/2, where `ulp(y)` is finer, `y + h` stays below 1. So it
/// truncates to `roundf(y)` everywhere (tested on every float). NaN, infinities and
/// `|y| >= 2^31` give `i32::MIN`, as `cvttps2dq(roundf(y))` does.
#[inline(always)]
unsafe fn round_away(y: __m256) -> __m256i {
    let h = _mm256_set1_ps(f32::from_bits(0.5f32.to_bits() - 1));
    let sign = _mm256_and_ps(y, _mm256_set1_ps(-0.0));
    _mm256_cvttps_epi32(_mm256_add_ps(y, _mm256_or_ps(h, sign)))
}

/// Arranges the Q8_0 row `y` for [`dot_q4_0_q8_0`] (the `avx2` table's `gguf_dot.prepare`):
/// each block's 32 int8 values in order, its 8 lanes' `8 · Σ q8` and its float32 scale.
pub fn prepare_q8_0(y: &[u8]) -> crate::error::Result<Q8Row> {
    use crate::alloc::try_vec;
    let nb = y.len() / Q8_0_BYTES;
    let padded = nb.next_multiple_of(2);
    let mut row = Q8Row {
        nb,
        qs: try_vec(0i8, padded * QK)?,
        corr: try_vec(0i32, padded * 8)?,
        d: try_vec(0f32, padded)?,
    };
    assert!(crate::simd::probe::has_avx2());
    // SAFETY: checked just above; block `b` reads `y[34b..34b + 34]` and writes inside the
    // arrays sized for `padded >= nb` blocks.
    unsafe { prepare(y, &mut row) };
    Ok(row)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare(y: &[u8], row: &mut Q8Row) {
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    for b in 0..row.nb {
        let yb = y.as_ptr().add(b * Q8_0_BYTES);
        let q = _mm256_loadu_si256(yb.add(2) as *const __m256i);
        _mm256_storeu_si256(row.qs.as_mut_ptr().add(QK * b) as *mut __m256i, q);
        // 8 · Σ per lane of 4 values (exact: pairs within i16, then i32).
        let sum = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
        let corr = _mm256_slli_epi32::<3>(sum);
        _mm256_storeu_si256(row.corr.as_mut_ptr().add(8 * b) as *mut __m256i, corr);
        let hd = core::ptr::read_unaligned(yb as *const u16);
        row.d[b] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(hd as i32)));
    }
}

/// [`crate::gguf::dot::dot_ref`] with AVX2, two blocks per step (the same bits: each
/// accumulator lane sees the same fused multiply-adds in the same order, then the same tree
/// sum); `None` without AVX2.
pub fn dot_q4_0_q8_0(x: &[u8], y: &Q8Row) -> Option<f32> {
    if !crate::simd::probe::has_avx2() {
        return None;
    }
    assert_eq!(x.len(), y.nb * Q4_0_BYTES);
    // SAFETY: the CPU has AVX2, FMA and F16C; the reads below stay inside `x` (block `b`
    // only when `b < nb`) and `y`'s arrays (padded to whole pairs of blocks).
    Some(unsafe { dot(x, y) })
}

/// Bytes of Q4_0 rows the dot kernel prefetches ahead.
const DOT_PF: usize = 2048;

/// Block `b`'s 8 lane sums `Σ (q4 - 8) · q8` (lane `l`: values `4l..4l + 4`), as floats.
#[inline(always)]
unsafe fn lane_sums(x0: *const u8, y: &Q8Row, b: usize) -> __m256 {
    let low = _mm256_set1_epi8(0x0f);
    let q = _mm_loadu_si128(x0.add(2) as *const __m128i);
    // Values 0..16 are the low nibbles, 16..32 the high ones.
    let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), low);
    let a = _mm256_loadu_si256(y.qs.as_ptr().add(QK * b) as *const __m256i);
    // u4 · i8 pairs fit in i16 (|sum| <= 2 · 15 · 128), then 4 values per i32 lane.
    let s = _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), _mm256_set1_epi16(1));
    let corr = _mm256_loadu_si256(y.corr.as_ptr().add(8 * b) as *const __m256i);
    _mm256_cvtepi32_ps(_mm256_sub_epi32(s, corr))
}

/// `dot_ref`'s slots: block `b`'s lanes 0..4 go to `acc[(b % 4) / 2 * 2]` and lanes 4..8 to
/// the next one, in the low half for even `b` and the high half for odd `b`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot(x: &[u8], y: &Q8Row) -> f32 {
    let nb = y.nb;
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        let x0 = xp.add(Q4_0_BYTES * b);
        _mm_prefetch::<_MM_HINT_T0>(x0.wrapping_add(DOT_PF) as *const i8);
        let p0 = lane_sums(x0, y, b);
        let p1 = if two {
            lane_sums(x0.add(Q4_0_BYTES), y, b + 1)
        } else {
            _mm256_setzero_ps()
        };
        let h = |p: *const u8| core::ptr::read_unaligned(p as *const u16) as u32;
        let dx1 = if two { h(x0.add(Q4_0_BYTES)) } else { 0 };
        let dx = _mm_cvtph_ps(_mm_cvtsi32_si128((h(x0) | dx1 << 16) as i32));
        let dy = _mm_castpd_ps(_mm_load_sd(y.d.as_ptr().add(b) as *const f64));
        // [d(b) x 4, d(b + 1) x 4].
        let d2 = _mm_mul_ps(dx, dy);
        let d = _mm256_permutevar8x32_ps(
            _mm256_castps128_ps256(d2),
            _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
        );
        // [lanes 0..4 of b, of b + 1] and [lanes 4..8 of b, of b + 1].
        let lo = _mm256_permute2f128_ps::<0x20>(p0, p1);
        let hi = _mm256_permute2f128_ps::<0x31>(p0, p1);
        let k = (b % 4) / 2 * 2;
        let (a0, a1) = (acc[k], acc[k + 1]);
        let n0 = _mm256_fmadd_ps(lo, d, a0);
        let n1 = _mm256_fmadd_ps(hi, d, a1);
        // A lone last block leaves the high halves (block b + 1's slots) as they are.
        acc[k] = if two {
            n0
        } else {
            _mm256_blend_ps::<0xf0>(n0, a0)
        };
        acc[k + 1] = if two {
            n1
        } else {
            _mm256_blend_ps::<0xf0>(n1, a1)
        };
        b += 2;
    }
    let mut lanes = [0f32; LANES];
    for (k, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * k), *a);
    }
    tree_sum(lanes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gguf::legacy;
    use crate::simd::GgufQuantize;

    /// Blocks that exercise every rule: ties of magnitude (the first wins, whatever its
    /// sign), all zeros (signed), exact halves after the scale, subnormal blocks whose `1 / d`
    /// overflows, huge values, and random blocks at many scales.
    fn blocks() -> Vec<f32> {
        let mut x = Vec::new();
        let mut s = 0x9e37_79b9u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for e in -45..39 {
            let scale = 10f32.powi(e);
            for _ in 0..3 {
                x.extend((0..QK).map(|_| (next() as i32 as f32 / 2f32.powi(31)) * scale));
            }
        }
        let mut tie = [1.0f32; QK];
        tie[3] = -4.0;
        tie[9] = 4.0;
        x.extend(tie);
        tie[3] = 4.0;
        tie[9] = -4.0;
        x.extend(tie);
        x.extend([0.0f32; QK]);
        x.extend([-0.0f32; QK]);
        let mut z = [0.0f32; QK];
        z[0] = -0.0;
        x.extend(z);
        // Values on exact halves of the grid (d = 1 for Q4_0: x + 8.5 is a half; Q8_0 too).
        x.extend((0..QK).map(|i| -8.0 + i as f32 * 0.5));
        x.extend((0..QK).map(|i| 127.0 - i as f32 * 7.5));
        // d = 1 for Q8_0 (127 in the block): fractions one ulp either side of a half, in
        // every binade up to 127, both signs (`roundf`'s ties and near-ties).
        let mut near = vec![127.0f32];
        for k in [0.0f32, 1.0, 2.0, 3.0, 7.0, 15.0, 31.0, 63.0, 126.0] {
            let h = k + 0.5;
            for v in [
                f32::from_bits(h.to_bits() - 1),
                h,
                f32::from_bits(h.to_bits() + 1),
            ] {
                near.extend([v, -v]);
            }
        }
        near.insert(QK, 127.0);
        near.resize(2 * QK, 0.25);
        x.extend(&near);
        x.extend((0..QK).map(|i| if i == 5 { 1e-45 } else { 0.0 }));
        x.extend((0..QK).map(|i| f32::from_bits(i as u32 * 3 + 1)));
        x.extend((0..QK).map(|i| (i as f32 - 15.5) * 1e37));
        x
    }

    /// Blocks for the asymmetric types' rules: the minimum and maximum tied (the first
    /// wins), signed zeros as minimum or maximum, constant blocks (`d = 0`), and values
    /// whose `(x - min) / d + 0.5` lands on exact halves and on the top code.
    fn asym_blocks() -> Vec<f32> {
        let mut x = Vec::new();
        let mut b = [1.0f32; QK];
        b[2] = -0.0;
        b[7] = 0.0;
        x.extend(b);
        let mut b = [-1.0f32; QK];
        b[4] = 0.0;
        b[11] = -0.0;
        x.extend(b);
        let mut b = [0.5f32; QK];
        b[0] = -0.0;
        x.extend(b);
        x.extend([3.25f32; QK]);
        x.extend([-7.0f32; QK]);
        x.extend((0..QK).map(|i| i as f32 * 0.5));
        x.extend((0..QK).map(|i| -(i as f32) * 0.25 - 1.0));
        x.extend((0..QK).map(|i| if i % 2 == 0 { f32::MAX } else { -f32::MAX }));
        x.extend((0..QK).map(|i| (i % 16) as f32));
        x.extend((0..QK).map(|i| (i % 31) as f32 + 100.0));
        x
    }

    /// A path's `quantize_blocks` against the portable bytes of every type, on the test blocks
    /// (`asym_blocks` then `blocks`), the first and the last `nb` blocks for each `nb` of
    /// `lengths` (so that a path's last group of blocks is short too).
    pub(crate) fn check_portable_bytes(quantize: GgufQuantize, lengths: &[usize]) {
        let mut x = asym_blocks();
        x.extend(blocks());
        for (kind, ts, portable) in [
            (
                Kind::Q4_0,
                Q4_0_BYTES,
                legacy::quantize_q4_0 as fn(&[f32], &mut [u8]),
            ),
            (Kind::Q4_1, Q4_1_BYTES, legacy::quantize_q4_1),
            (Kind::Q5_0, Q5_0_BYTES, legacy::quantize_q5_0),
            (Kind::Q5_1, Q5_1_BYTES, legacy::quantize_q5_1),
            (Kind::Q8_0, Q8_0_BYTES, legacy::quantize_q8_0),
        ] {
            for nb in lengths.iter().copied().chain([x.len() / QK]) {
                for x in [&x[x.len() - nb * QK..], &x[..nb * QK]] {
                    let mut got = vec![0u8; nb * ts];
                    assert_eq!(quantize(kind, x, &mut got), Some(true));
                    let mut want = vec![0u8; nb * ts];
                    for (xb, ob) in x.chunks_exact(QK).zip(want.chunks_exact_mut(ts)) {
                        portable(xb, ob);
                    }
                    for (b, (g, w)) in got.chunks(ts).zip(want.chunks(ts)).enumerate() {
                        assert_eq!(g, w, "{kind:?} block {b} of {nb}: {:?}", &x[QK * b..][..QK]);
                    }
                }
            }
        }
    }

    /// A path's `quantize_blocks` reports NaN and ±inf, in the first block and in the last
    /// value of `nb` blocks, for every type.
    pub(crate) fn check_non_finite(quantize: GgufQuantize, nb: usize) {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for (kind, ts) in [
                (Kind::Q4_0, Q4_0_BYTES),
                (Kind::Q4_1, Q4_1_BYTES),
                (Kind::Q5_0, Q5_0_BYTES),
                (Kind::Q5_1, Q5_1_BYTES),
                (Kind::Q8_0, Q8_0_BYTES),
            ] {
                for at in [0, (nb - 1) * QK + 31] {
                    let mut x = vec![1.0f32; nb * QK];
                    x[at] = bad;
                    let mut out = vec![0u8; nb * ts];
                    assert_eq!(quantize(kind, &x, &mut out), Some(false), "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn every_type_matches_the_portable_bytes() {
        if crate::simd::probe::has_avx2() {
            // Groups of 8 blocks.
            check_portable_bytes(quantize_blocks, &[1, 2, 7, 8, 9, 17]);
        }
    }

    /// `round_away` is `cvttps2dq(roundf(y))` for floats spread over every exponent and for
    /// every float within 4 ulps of each half-integer up to 2^24; `--ignored`: every float.
    #[test]
    fn round_away_is_roundf() {
        let mut bits: Vec<u32> = (0..=u32::MAX).step_by(65_521).collect();
        for k in 0..(1u32 << 24) {
            let h = (k as f32 + 0.5).to_bits();
            bits.extend((h - 4..=h + 4).flat_map(|b| [b, b | 1 << 31]));
            if k > 4096 {
                break;
            }
        }
        for k in (4096..(1u32 << 24)).step_by(997) {
            let h = (k as f32 + 0.5).to_bits();
            bits.extend((h - 4..=h + 4).flat_map(|b| [b, b | 1 << 31]));
        }
        check_round_away(&bits);
    }

    #[test]
    #[ignore = "every float: a few seconds in release"]
    fn round_away_is_roundf_everywhere() {
        let mut chunk = Vec::with_capacity(1 << 20);
        for hi in 0..(1u32 << 12) {
            chunk.clear();
            chunk.extend((0..1u32 << 20).map(|lo| hi << 20 | lo));
            check_round_away(&chunk);
        }
    }

    fn check_round_away(bits: &[u32]) {
        if !crate::simd::probe::has_avx2() {
            return;
        }
        let want = |b: u32| {
            let y = f32::from_bits(b).round();
            // cvttps2dq: truncation, `i32::MIN` for NaN and out of range.
            if y.is_nan() || !(-2147483648.0..2147483648.0).contains(&y) {
                i32::MIN
            } else {
                y as i32
            }
        };
        for c in bits.chunks(8) {
            let mut y = [0f32; 8];
            for (l, &b) in y.iter_mut().zip(c) {
                *l = f32::from_bits(b);
            }
            let mut got = [0i32; 8];
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn run(y: &[f32; 8], got: &mut [i32; 8]) {
                    let r = round_away(_mm256_loadu_ps(y.as_ptr()));
                    _mm256_storeu_si256(got.as_mut_ptr() as *mut __m256i, r);
                }
                run(&y, &mut got);
            }
            for (&b, &g) in c.iter().zip(&got) {
                assert_eq!(g, want(b), "{:e} ({b:#010x})", f32::from_bits(b));
            }
        }
    }

    #[test]
    fn non_finite_values_are_reported() {
        if crate::simd::probe::has_avx2() {
            check_non_finite(quantize_blocks, 10);
        }
    }

    /// Random Q4_0 and Q8_0 rows (every byte value, `-128` included; scales random finite
    /// float16 values of mixed signs and sizes, then any bits) of every length up to a few
    /// pairs of 4 blocks: the bits of `dot_ref`.
    #[test]
    fn dot_matches_dot_ref() {
        if !crate::simd::probe::has_avx2() {
            return;
        }
        use crate::gguf::dot::dot_ref;
        let mut s = 0x2545_f491u32;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for any_scale in [false, true] {
            for nb in (0..=13).chain([31, 64, 257]) {
                for _ in 0..20 {
                    let mut x: Vec<u8> = (0..nb * Q4_0_BYTES).map(|_| next() as u8).collect();
                    let mut y: Vec<u8> = (0..nb * Q8_0_BYTES).map(|_| next() as u8).collect();
                    for b in 0..nb {
                        for (row, at) in [(&mut x, b * Q4_0_BYTES), (&mut y, b * Q8_0_BYTES)] {
                            let h = if any_scale {
                                next() as u16
                            } else {
                                // Exponents 1..=29 (finite, normal), any sign and mantissa.
                                let e = 1 + next() % 29;
                                (next() as u16 & 0x83ff) | (e as u16) << 10
                            };
                            row[at..at + 2].copy_from_slice(&h.to_le_bytes());
                        }
                    }
                    let row = prepare_q8_0(&y).unwrap();
                    let got = dot_q4_0_q8_0(&x, &row).unwrap();
                    let want = dot_ref(&x, &y);
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{nb} blocks: {got:e} != {want:e}"
                    );
                }
            }
        }
    }
}

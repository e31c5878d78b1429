//! AVX-512 GGUF kernels: the quantizers of the 32-value block types (the `avx512` and
//! `avx512vnni` tables) and the VNNI `Q4_0 · Q8_0` dot (`avx512vnni`). The quantizers do the
//! same operations as `gguf::legacy`'s portable code, lane by lane, so the bytes are identical (tests compare both with gguf-py and with
//! each other through `QFAST_ISA`).
//!
//! - `cvttps2dq` is the conversion the references compile to (truncation; `i32::MIN` for NaN
//!   and out-of-range), and `vpmovdb` keeps its low byte, as `legacy::cvt_i32` does.
//! - Ties and signed zeros: the block's maximum (minimum) *value* comes from a reduction, then
//!   the first element equal to it is taken, which is what the sequential loops keep.
//!
//! Soundness: each safe entry point checks the CPU before entering `#[target_feature]` code.

use crate::gguf::dot::{tree_sum, LANES};
use crate::gguf::legacy::{Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q8_0_BYTES, QK};
use crate::simd::{GgufKind as Kind, Q8Row};
use core::arch::x86_64::*;

/// Quantizes whole blocks of `x` into `out` with AVX-512: `None` (nothing written) when the
/// CPU lacks it, else whether every value of `x` was finite (when one is not, `out` holds
/// garbage and the caller reports the value).
pub fn quantize_blocks(kind: Kind, x: &[f32], out: &mut [u8]) -> Option<bool> {
    if !crate::simd::probe::has_avx512() {
        return None;
    }
    let ts = match kind {
        Kind::Q4_0 => Q4_0_BYTES,
        Kind::Q4_1 => Q4_1_BYTES,
        Kind::Q5_0 => Q5_0_BYTES,
        Kind::Q5_1 => Q5_1_BYTES,
        Kind::Q8_0 => Q8_0_BYTES,
    };
    assert!(x.len().is_multiple_of(QK) && out.len() == x.len() / QK * ts);
    // SAFETY: the CPU has AVX-512; each block reads 32 floats and writes `ts` bytes, in
    // bounds by the assertion above.
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

/// `vfpclassps` categories: quiet NaN, signed infinities, signalling NaN.
const NOT_FINITE: i32 = 0x01 | 0x08 | 0x10 | 0x80;

/// Blocks per group: each group first finds every block's grid (the reductions), then
/// divides, converts to float16 and writes the headers 16 blocks at a time, then writes the
/// codes; the scalar division and conversion per block were the longest chain.
const GROUP: usize = 16;

/// How far ahead of pass 1 the input is prefetched, in floats (4 KiB): from DRAM the
/// hardware prefetcher alone left the loop waiting on loads.
const PREFETCH: usize = 512;

/// The loops index raw pointers and map no closures: in a build without LTO, iterator
/// adapters (`chunks`, `zip`, `enumerate`) and `array::map` stayed calls out of this
/// `#[target_feature]` function (0.97 against 3.4 G values/s with LTO).
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c")]
unsafe fn blocks<const K: u8>(x: &[f32], out: &mut [u8], ts: usize) -> bool {
    let sym = K == Kind::Q4_0 as u8 || K == Kind::Q5_0 as u8;
    let (half, top): (f32, u8) = match K {
        k if k == Kind::Q4_0 as u8 => (8.0, 15),
        k if k == Kind::Q5_0 as u8 => (16.0, 31),
        k if k == Kind::Q4_1 as u8 => (0.0, 15),
        _ => (0.0, 31),
    };
    let mut bad: __mmask16 = 0;
    let nb = x.len() / QK;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut g0 = 0;
    while g0 < nb {
        let n = GROUP.min(nb - g0);
        // Pass 1: `hi` is the signed max (Q4_0, Q5_0) or the max (Q4_1, Q5_1); `lo` the min
        // (Q4_1, Q5_1).
        let (mut hi, mut lo) = ([0f32; GROUP], [0f32; GROUP]);
        for i in 0..n {
            let xb = xp.add((g0 + i) * QK);
            let v = [_mm512_loadu_ps(xb), _mm512_loadu_ps(xb.add(16))];
            let ahead = xb.wrapping_add(PREFETCH) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            bad |= _mm512_fpclass_ps_mask::<NOT_FINITE>(v[0])
                | _mm512_fpclass_ps_mask::<NOT_FINITE>(v[1]);
            if sym {
                hi[i] = signed_max(v, xb);
            } else {
                lo[i] = first_equal(v, _mm512_reduce_min_ps(_mm512_min_ps(v[0], v[1])), xb);
                hi[i] = first_equal(v, _mm512_reduce_max_ps(_mm512_max_ps(v[0], v[1])), xb);
            }
        }
        // d and 1/d for the group, as the scalar code computes them (IEEE division).
        let (hv, lv) = (_mm512_loadu_ps(hi.as_ptr()), _mm512_loadu_ps(lo.as_ptr()));
        let d = if sym {
            _mm512_div_ps(hv, _mm512_set1_ps(-half))
        } else {
            _mm512_div_ps(_mm512_sub_ps(hv, lv), _mm512_set1_ps(top as f32))
        };
        let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(d, _mm512_setzero_ps());
        let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d);
        let mut idv = [0f32; GROUP];
        _mm512_storeu_ps(idv.as_mut_ptr(), id);
        let mut dh = [0u16; GROUP];
        let mut mh = [0u16; GROUP];
        _mm256_storeu_si256(
            dh.as_mut_ptr() as *mut __m256i,
            _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d),
        );
        _mm256_storeu_si256(
            mh.as_mut_ptr() as *mut __m256i,
            _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(lv),
        );
        // Pass 2: headers and codes.
        for i in 0..n {
            let xb = xp.add((g0 + i) * QK);
            let o = op.add((g0 + i) * ts);
            let v = [_mm512_loadu_ps(xb), _mm512_loadu_ps(xb.add(16))];
            core::ptr::copy_nonoverlapping(dh[i].to_le_bytes().as_ptr(), o, 2);
            let id = _mm512_set1_ps(idv[i]);
            if sym {
                let bias = _mm512_set1_ps(half + 0.5);
                let c = [
                    codes(_mm512_add_ps(_mm512_mul_ps(v[0], id), bias), top),
                    codes(_mm512_add_ps(_mm512_mul_ps(v[1], id), bias), top),
                ];
                store_codes(c, o.add(2), K == Kind::Q5_0 as u8);
            } else {
                core::ptr::copy_nonoverlapping(mh[i].to_le_bytes().as_ptr(), o.add(2), 2);
                let (m, half) = (_mm512_set1_ps(lo[i]), _mm512_set1_ps(0.5));
                let c = [
                    codes(
                        _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v[0], m), id), half),
                        top,
                    ),
                    codes(
                        _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v[1], m), id), half),
                        top,
                    ),
                ];
                store_codes(c, o.add(4), K == Kind::Q5_1 as u8);
            }
        }
        g0 += n;
    }
    bad == 0
}

/// Q8_0: as [`blocks`], with each block's max |x| taken from the bits of the magnitudes
/// (they order as the magnitudes do; NaN and infinities above every finite value, reported)
/// and the group's 16 maxima reduced together (AVX2's `hmax8` on the 256-bit halves' maxima).
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c,avx2,fma")]
unsafe fn blocks_q8_0(x: &[f32], out: &mut [u8]) -> bool {
    use crate::simd::x86_64::avx2::gguf::hmax8;
    let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
    let max_finite = _mm512_set1_epi32(0x7f7f_ffff);
    let mut bad: __mmask16 = 0;
    let nb = x.len() / QK;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut g0 = 0;
    while g0 < nb {
        let n = GROUP.min(nb - g0);
        // Pass 1: each block's lanes' max |x| (as bits), folded to 8 lanes.
        let mut m = [_mm256_setzero_si256(); GROUP];
        for i in 0..n {
            let xb = xp.add((g0 + i) * QK);
            let ahead = xb.wrapping_add(PREFETCH) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            let a = _mm512_max_epi32(
                _mm512_and_si512(_mm512_loadu_si512(xb as *const _), abs_mask),
                _mm512_and_si512(_mm512_loadu_si512(xb.add(16) as *const _), abs_mask),
            );
            m[i] = _mm256_max_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a));
        }
        let lo = hmax8([m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]]);
        let hi = hmax8([m[8], m[9], m[10], m[11], m[12], m[13], m[14], m[15]]);
        let amax = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        bad |= _mm512_cmpgt_epi32_mask(amax, max_finite);
        // d and 1/d for the group, as the scalar code computes them (IEEE division).
        let d = _mm512_div_ps(_mm512_castsi512_ps(amax), _mm512_set1_ps(127.0));
        let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(d, _mm512_setzero_ps());
        let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d);
        let mut idv = [0f32; GROUP];
        _mm512_storeu_ps(idv.as_mut_ptr(), id);
        let mut dh = [0u16; GROUP];
        _mm256_storeu_si256(
            dh.as_mut_ptr() as *mut __m256i,
            _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d),
        );
        // Pass 2: headers and codes.
        for i in 0..n {
            let xb = xp.add((g0 + i) * QK);
            let o = op.add((g0 + i) * Q8_0_BYTES);
            core::ptr::copy_nonoverlapping(dh[i].to_le_bytes().as_ptr(), o, 2);
            let id = _mm512_set1_ps(idv[i]);
            q8_0_codes(_mm512_loadu_ps(xb), id, o.add(2));
            q8_0_codes(_mm512_loadu_ps(xb.add(16)), id, o.add(18));
        }
        g0 += n;
    }
    bad == 0
}

/// The first element (of the block `v`, loaded from `xb`) whose magnitude is the largest (the
/// first element when all are zero).
#[inline(always)]
unsafe fn signed_max(v: [__m512; 2], xb: *const f32) -> f32 {
    let a = [_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])];
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(a[0], a[1]));
    if amax == 0.0 {
        return *xb;
    }
    first_equal(a, amax, xb)
}

/// The element of the block loaded from `xb` that is the first whose lane of `v` (the values
/// or their magnitudes) equals `t`: the reduced minimum or maximum as its first occurrence
/// (the sign of a zero).
#[inline(always)]
unsafe fn first_equal(v: [__m512; 2], t: f32, xb: *const f32) -> f32 {
    let t = _mm512_set1_ps(t);
    let hit = _mm512_cmpeq_ps_mask(v[0], t) as u32 | (_mm512_cmpeq_ps_mask(v[1], t) as u32) << 16;
    *xb.add(first_hit(hit))
}

/// The first set bit of `hit`; 31 when none is (a block holding NaN matches nothing: its
/// codes are discarded, as `blocks` reports it not finite).
#[inline(always)]
fn first_hit(hit: u32) -> usize {
    (hit | 1 << 31).trailing_zeros() as usize
}

/// `min(top, low byte of cvttps2dq(v))` for 16 lanes, as 16 bytes.
#[inline(always)]
unsafe fn codes(v: __m512, top: u8) -> __m128i {
    let bytes = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v));
    _mm_min_epu8(bytes, _mm_set1_epi8(top as i8))
}

/// `qs[j] = c[j] & 15 | (c[j + 16] & 15) << 4`, and for 5-bit codes `qh` (bit j = bit 4 of
/// code j) first.
#[inline(always)]
unsafe fn store_codes(c: [__m128i; 2], o: *mut u8, five: bool) {
    let nib = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(c[0], nib);
    let hi = _mm_slli_epi16::<4>(_mm_and_si128(c[1], nib));
    let qs = _mm_or_si128(lo, hi);
    let at = if five {
        let sixteen = _mm_set1_epi8(16);
        let qh = _mm_test_epi8_mask(c[0], sixteen) as u32
            | (_mm_test_epi8_mask(c[1], sixteen) as u32) << 16;
        core::ptr::copy_nonoverlapping(qh.to_le_bytes().as_ptr(), o, 4);
        4
    } else {
        0
    };
    _mm_storeu_si128(o.add(at) as *mut __m128i, qs);
}

/// Q8_0's codes `roundf(v · id)` for 16 values, 16 bytes at `o`: `cvttps2dq(y ± h)`, `h` the
/// float just below one half (see AVX2's `round_away`, tested on every float), and
/// `vpmovdb`'s low byte.
#[inline(always)]
unsafe fn q8_0_codes(v: __m512, id: __m512, o: *mut u8) {
    let y = _mm512_mul_ps(v, id);
    let h = _mm512_set1_ps(f32::from_bits(0.5f32.to_bits() - 1));
    let bias = _mm512_or_ps(h, _mm512_and_ps(y, _mm512_set1_ps(-0.0)));
    let q = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_add_ps(y, bias)));
    _mm_storeu_si128(o as *mut __m128i, q);
}

/// Arranges the Q8_0 row `y` for [`dot_q4_0_q8_0`] (the `avx512vnni` table's
/// `gguf_dot.prepare`; it is handed out only where the CPU has AVX-512 VNNI).
pub fn prepare_q8_0(y: &[u8]) -> crate::error::Result<Q8Row> {
    use crate::alloc::try_vec;
    use Q8_0_BYTES;
    let nb = y.len() / Q8_0_BYTES;
    let padded = nb.next_multiple_of(2);
    let mut row = Q8Row {
        nb,
        qs: try_vec(0i8, padded * QK)?,
        corr: try_vec(0i32, padded * 8)?,
        d: try_vec(0f32, padded)?,
    };
    assert!(crate::simd::probe::has_avx512() && crate::simd::probe::has_avx512vnni());
    // SAFETY: checked just above; block `b` reads `y[34b..34b + 34]` and writes inside the
    // arrays sized for `padded >= nb` blocks.
    unsafe { prepare_vnni(y, &mut row) };
    Ok(row)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn prepare_vnni(y: &[u8], row: &mut Q8Row) {
    use Q8_0_BYTES;
    let ones = _mm256_set1_epi8(1);
    // Pairs of blocks as the kernel's vectors hold them: [low half of b, low half of b + 1,
    // high half of b, high half of b + 1] (16 values or 4 lanes each).
    for (b, yb) in y.chunks_exact(Q8_0_BYTES).enumerate() {
        let (k, h) = (b / 2, b % 2);
        let q = _mm256_loadu_si256(yb.as_ptr().add(2) as *const __m256i);
        let qs = row.qs.as_mut_ptr().add(64 * k + 16 * h) as *mut __m128i;
        _mm_storeu_si128(qs, _mm256_castsi256_si128(q));
        _mm_storeu_si128(qs.add(2), _mm256_extracti128_si256::<1>(q));
        // 8 · Σ per lane of 4 values, exactly as the portable kernel groups them.
        let corr = _mm256_slli_epi32::<3>(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, q));
        let cp = row.corr.as_mut_ptr().add(16 * k + 4 * h) as *mut __m128i;
        _mm_storeu_si128(cp, _mm256_castsi256_si128(corr));
        _mm_storeu_si128(cp.add(2), _mm256_extracti128_si256::<1>(corr));
        let hd = core::ptr::read_unaligned(yb.as_ptr() as *const u16);
        row.d[b] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(hd as i32)));
    }
}

/// [`crate::gguf::dot::dot_ref`] with AVX-512 VNNI, two blocks per step (same bits); `None`
/// without VNNI.
pub fn dot_q4_0_q8_0(x: &[u8], y: &Q8Row) -> Option<f32> {
    use Q4_0_BYTES;
    if !(crate::simd::probe::has_avx512() && crate::simd::probe::has_avx512vnni()) {
        return None;
    }
    assert_eq!(x.len(), y.nb * Q4_0_BYTES);
    // SAFETY: the CPU has AVX-512 VNNI; the reads below stay inside `x` and `y`'s arrays
    // (padded to whole pairs of blocks).
    Some(unsafe { dot_vnni(x, y) })
}

/// Bytes of Q4_0 rows the dot kernel prefetches ahead.
const DOT_PF: usize = 4096;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")]
unsafe fn dot_vnni(x: &[u8], y: &Q8Row) -> f32 {
    let nb = y.nb;
    let xp = x.as_ptr();
    let low = _mm256_set1_epi8(0x0f);
    let lane_block = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    // Blocks b and b + 1 (b even): their 4-bit values as 64 bytes, against `Q8Row`'s 64
    // int8 values in the same order.
    let step = |b: usize, two: bool, acc: __m512| -> __m512 {
        let x0 = xp.add(18 * b);
        // The weights stream once: fetch ahead (wrapping: a prefetch past the end is harmless).
        _mm_prefetch::<_MM_HINT_T0>(x0.wrapping_add(DOT_PF) as *const i8);
        let q0 = _mm_loadu_si128(x0.add(2) as *const __m128i);
        let q1 = if two {
            _mm_loadu_si128(x0.add(20) as *const __m128i)
        } else {
            _mm_setzero_si128()
        };
        let q = _mm256_set_m128i(q1, q0);
        let lo = _mm256_and_si256(q, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
        // [low halves of b, b + 1 | high halves of b, b + 1]: the order `Q8Row` keeps.
        let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        let a = _mm512_loadu_si512(y.qs.as_ptr().add(32 * b) as *const _);
        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a);
        let corr = _mm512_loadu_si512(y.corr.as_ptr().add(8 * b) as *const _);
        let p = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot, corr));
        // [dx(b), dx(b + 1)] from one 32-bit move (a fresh register: no chain through the
        // accumulator), times [dy(b), dy(b + 1)].
        let h = |p: *const u8| core::ptr::read_unaligned(p as *const u16) as u32;
        let dx1 = if two { h(x0.add(18)) } else { 0 };
        let dx = _mm_cvtph_ps(_mm_cvtsi32_si128((h(x0) | dx1 << 16) as i32));
        let dy = _mm_castpd_ps(_mm_load_sd(y.d.as_ptr().add(b) as *const f64));
        let d = _mm512_permutexvar_ps(lane_block, _mm512_castps128_ps512(_mm_mul_ps(dx, dy)));
        if two {
            _mm512_fmadd_ps(p, d, acc)
        } else {
            _mm512_mask3_fmadd_ps(p, d, acc, 0x0f0f)
        }
    };
    // Two accumulators (blocks 4k, 4k + 1 and 4k + 2, 4k + 3) halve the FMA chain.
    let mut acc = _mm512_setzero_ps();
    let mut acc2 = _mm512_setzero_ps();
    let mut b = 0;
    while b + 4 <= nb {
        acc = step(b, true, acc);
        acc2 = step(b + 2, true, acc2);
        b += 4;
    }
    match nb - b {
        3 => {
            acc = step(b, true, acc);
            acc2 = step(b + 2, false, acc2);
        }
        2 => acc = step(b, true, acc),
        1 => acc = step(b, false, acc),
        _ => {}
    }
    let mut lanes = [0f32; LANES];
    _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
    _mm512_storeu_ps(lanes.as_mut_ptr().add(16), acc2);
    tree_sum(lanes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::x86_64::avx2::gguf::tests::{check_non_finite, check_portable_bytes};
    use crate::simd::Isa;

    #[test]
    fn every_type_matches_the_portable_bytes() {
        if crate::simd::probe::has_avx512() {
            // Groups of 16 blocks.
            check_portable_bytes(quantize_blocks, &[1, 2, 15, 16, 17, 33]);
        }
    }

    #[test]
    fn non_finite_values_are_reported() {
        if crate::simd::probe::has_avx512() {
            check_non_finite(quantize_blocks, 18);
        }
    }

    /// Both AVX-512 tables have a `Q4_0 · Q8_0` (`avx512` AVX2's, `avx512vnni` its own), and
    /// it gives `dot_ref`'s bits on random rows (every byte, random float16 scales) of every
    /// length up to a few groups of 4 blocks.
    #[test]
    fn both_tables_dot_as_dot_ref() {
        use crate::gguf::dot::dot_ref;
        let mut s = 0x6b43_a9b5u32;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for isa in [Isa::Avx512, Isa::Avx512Vnni] {
            let Some(kern) = isa.kernels() else { continue };
            let simd = kern.gguf_dot.expect("an AVX-512 table without gguf_dot");
            for nb in (0..=9).chain([31, 64]) {
                for _ in 0..20 {
                    let mut x: Vec<u8> = (0..nb * Q4_0_BYTES).map(|_| next() as u8).collect();
                    let mut y: Vec<u8> = (0..nb * Q8_0_BYTES).map(|_| next() as u8).collect();
                    for b in 0..nb {
                        for (row, at) in [(&mut x, b * Q4_0_BYTES), (&mut y, b * Q8_0_BYTES)] {
                            // Exponents 1..=29 (finite, normal), any sign and mantissa.
                            let e = 1 + next() % 29;
                            let h = (next() as u16 & 0x83ff) | (e as u16) << 10;
                            row[at..at + 2].copy_from_slice(&h.to_le_bytes());
                        }
                    }
                    let row = (simd.prepare)(&y).unwrap();
                    let got = (simd.dot)(&x, &row).expect("the table's CPU check");
                    let want = dot_ref(&x, &y);
                    assert_eq!(got.to_bits(), want.to_bits(), "{isa:?} {nb} blocks");
                }
            }
        }
    }
}

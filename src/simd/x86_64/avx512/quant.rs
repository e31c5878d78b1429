//! AVX-512 (F, BW, DQ, VL) quantization kernels: 512-bit vectors, 16 floats or 64 bytes at a time.
//!
//! Every kernel is a safe wrapper (length checks, CPU check) around a `#[target_feature]` entry
//! point that runs one per-vector body three ways (see `three_way`): four vectors per
//! iteration over whole blocks, one vector at a time over the whole vectors left, and once
//! under a mask over the last partial vector. Masked-off elements of a masked load or store
//! are never accessed (AVX-512 fault suppression), so every access stays inside the slices and
//! no scalar tail is needed.
//!
//! The bodies are closures written inside the entry points, so they inherit their target
//! features and inline into them; the `#[inline(always)]` helpers define no closures (one
//! written there would lack the features, and its intrinsics would not inline). `quantize`
//! has a loop of its own for its reciprocal fast path (see `Reciprocal` in `avx2/quant.rs`).
//!
//! Soundness: `Isa::kernels` hands this table out only after `has_avx512()`, but `KERNELS` is a
//! public constant, so each wrapper checks the CPU again (one cached load) and falls back to
//! the scalar kernel rather than run an AVX-512 instruction on a CPU without it.

use super::super::avx2::quant::{
    prefetch, prefetch_distance, Reciprocal, IDENTITY, SIGNED_CRUMBS, SIGNED_NIBBLES, STREAM_AHEAD,
};
use crate::simd::{MinMax, QParams};
use core::arch::x86_64::*;

// ---------------------------------------------------------------------------------------------
// Safe wrappers: the `Kernels` entries.

crate::simd::safe_wrappers! {
    cpu: crate::simd::probe::has_avx512(), else: crate::simd::scalar;

    fn minmax(x: &[f32]) -> MinMax => minmax_avx512(x);

    fn minmax_lanes(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool =>
        minmax_lanes_avx512(x, min, max);

    fn quantize(x: &[f32], p: &QParams, out: &mut [u8]) =>
        quantize_one_grid(x, p, out, prefetch_distance(x.len()));

    fn minmax_groups(x: &[f32], group_size: usize, out: &mut [MinMax]) =>
        minmax_groups_avx512(x, group_size, out);

    fn quantize_groups(x: &[f32], group_size: usize, grid: &[QParams], out: &mut [u8]) =>
        quantize_groups_avx512(x, group_size, grid, out);

    fn quantize_lanes(
        x: &[f32],
        scale: &[f32],
        zero_point: &[i32],
        qmin: i32,
        qmax: i32,
        out: &mut [u8],
    ) => quantize_lanes_avx512(x, scale, zero_point, qmin, qmax, out);

    fn dequantize(codes: &[u8], signed: bool, scale: f32, zero_point: f32, out: &mut [f32]) => {
        if signed {
            dequantize_avx512::<true>(codes, scale, zero_point, out)
        } else {
            dequantize_avx512::<false>(codes, scale, zero_point, out)
        }
    };

    fn dequantize_lanes(
        codes: &[u8],
        signed: bool,
        scale: &[f32],
        zero_point: &[f32],
        out: &mut [f32],
    ) => {
        if signed {
            dequantize_lanes_avx512::<true>(codes, scale, zero_point, out)
        } else {
            dequantize_lanes_avx512::<false>(codes, scale, zero_point, out)
        }
    };

    fn pack4(codes: &[u8], out: &mut [u8]) => pack4_avx512(codes, out);

    fn unpack4(packed: &[u8], signed: bool, out: &mut [u8]) => unpack4_avx512(packed, signed, out);

    fn pack2(codes: &[u8], out: &mut [u8]) => pack2_avx512(codes, out);

    fn unpack2(packed: &[u8], signed: bool, out: &mut [u8]) => unpack2_avx512(packed, signed, out);
}

// ---------------------------------------------------------------------------------------------
// The loop, masks, and masked memory access. Helpers are inlined into the `#[target_feature]`
// entry points (callers must have AVX-512 F/BW/DQ/VL); the load and store helpers access
// exactly the `len` elements from `p`, which the caller must be allowed to read or write.

/// The loop of every kernel over `n` elements, `W` per vector: blocks of four vectors (each
/// after `block(i)`, which prefetches), then the whole vectors left, then the last `n % W`
/// elements as one partial vector. `vector(i, j, len)` handles elements `i..i + len`, `len <=
/// W` (`len < W` only for the last call); `j` is the vector's place in its block, so a kernel
/// can keep four independent accumulators.
#[inline(always)]
fn three_way<const W: usize>(
    n: usize,
    mut block: impl FnMut(usize),
    mut vector: impl FnMut(usize, usize, usize),
) {
    let mut i = 0;
    while i + 4 * W <= n {
        block(i);
        for j in 0..4 {
            vector(i + j * W, j, W);
        }
        i += 4 * W;
    }
    while i + W <= n {
        vector(i, 0, W);
        i += W;
    }
    if i < n {
        vector(i, 0, n - i);
    }
}

/// The low `n` bits set, `n <= 64`.
#[inline(always)]
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Prefetches the four cache lines of a block of four float vectors, `ahead` bytes past `p`.
#[inline(always)]
unsafe fn prefetch_block(p: *const f32, ahead: usize) {
    for line in 0..4 {
        prefetch(p, ahead + 64 * line);
    }
}

/// `len <= 16` floats from `p`; the other lanes are zero and their memory is not read.
#[inline(always)]
unsafe fn load_ps(p: *const f32, len: usize) -> __m512 {
    if len >= 16 {
        _mm512_loadu_ps(p)
    } else {
        _mm512_maskz_loadu_ps(low_bits(len) as __mmask16, p)
    }
}

/// `len <= 16` i32 from `p`, as [`load_ps`].
#[inline(always)]
unsafe fn load_epi32(p: *const i32, len: usize) -> __m512i {
    if len >= 16 {
        _mm512_loadu_si512(p.cast())
    } else {
        _mm512_maskz_loadu_epi32(low_bits(len) as __mmask16, p)
    }
}

/// The first `len <= 16` lanes of `v` to `p`; the memory of the others is not touched.
#[inline(always)]
unsafe fn store_ps(p: *mut f32, len: usize, v: __m512) {
    if len >= 16 {
        _mm512_storeu_ps(p, v)
    } else {
        _mm512_mask_storeu_ps(p, low_bits(len) as __mmask16, v)
    }
}

/// `len <= 16` bytes from `p`, as [`load_ps`].
#[inline(always)]
unsafe fn load_16_bytes(p: *const u8, len: usize) -> __m128i {
    if len >= 16 {
        _mm_loadu_si128(p.cast())
    } else {
        _mm_maskz_loadu_epi8(low_bits(len) as __mmask16, p.cast())
    }
}

/// `len <= 32` bytes from `p`, as [`load_ps`].
#[inline(always)]
unsafe fn load_32_bytes(p: *const u8, len: usize) -> __m256i {
    if len >= 32 {
        _mm256_loadu_si256(p.cast())
    } else {
        _mm256_maskz_loadu_epi8(low_bits(len) as __mmask32, p.cast())
    }
}

/// `len <= 64` bytes from `p`, as [`load_ps`].
#[inline(always)]
unsafe fn load_64_bytes(p: *const u8, len: usize) -> __m512i {
    if len >= 64 {
        _mm512_loadu_si512(p.cast())
    } else {
        _mm512_maskz_loadu_epi8(low_bits(len), p.cast())
    }
}

/// The first `len <= 64` bytes of `v` to `p`, as [`store_ps`].
#[inline(always)]
unsafe fn store_64_bytes(p: *mut u8, len: usize, v: __m512i) {
    if len >= 64 {
        _mm512_storeu_si512(p.cast(), v)
    } else {
        _mm512_mask_storeu_epi8(p.cast(), low_bits(len), v)
    }
}

/// The low byte of the first `len <= 16` i32 lanes of `v` to `p` (`vpmovdb`: the `as u8`
/// truncation), as [`store_ps`].
#[inline(always)]
unsafe fn store_low_bytes32(p: *mut u8, len: usize, v: __m512i) {
    if len >= 16 {
        _mm_storeu_si128(p.cast(), _mm512_cvtepi32_epi8(v))
    } else {
        _mm512_mask_cvtepi32_storeu_epi8(p.cast(), low_bits(len) as __mmask16, v)
    }
}

/// The low byte of the first `len <= 32` i16 lanes of `v` to `p` (`vpmovwb`), as [`store_ps`].
#[inline(always)]
unsafe fn store_low_bytes16(p: *mut u8, len: usize, v: __m512i) {
    if len >= 32 {
        _mm256_storeu_si256(p.cast(), _mm512_cvtepi16_epi8(v))
    } else {
        _mm512_mask_cvtepi16_storeu_epi8(p.cast(), low_bits(len) as __mmask32, v)
    }
}

/// The lanes that are NaN or ±Inf (`vfpclassps` classes 0x99: QNaN, +Inf, -Inf, SNaN), which
/// a float min/max could lose.
#[inline(always)]
unsafe fn nonfinite(v: __m512) -> __mmask16 {
    _mm512_fpclass_ps_mask::<0x99>(v)
}

#[inline(always)]
unsafe fn hmin(v: __m512) -> f32 {
    let m = _mm512_min_ps(v, _mm512_shuffle_f32x4::<0b01_00_11_10>(v, v));
    let m = _mm512_min_ps(m, _mm512_shuffle_f32x4::<0b10_11_00_01>(m, m));
    let m = _mm512_castps512_ps128(m);
    let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps::<1>(m, m)))
}

#[inline(always)]
unsafe fn hmax(v: __m512) -> f32 {
    let m = _mm512_max_ps(v, _mm512_shuffle_f32x4::<0b01_00_11_10>(v, v));
    let m = _mm512_max_ps(m, _mm512_shuffle_f32x4::<0b10_11_00_01>(m, m));
    let m = _mm512_castps512_ps128(m);
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)))
}

/// `clamp(q, lo, hi)`: max/min with the finite bounds send ±Inf to the bounds.
#[inline(always)]
unsafe fn clamp(q: __m512, lo: __m512, hi: __m512) -> __m512 {
    _mm512_min_ps(_mm512_max_ps(q, lo), hi)
}

/// The clamped quotient `v` rounded to the nearest integer, ties to even (explicitly; it
/// cannot overflow on a clamped value), plus the zero point: the oracle's `quantize_one` up to
/// the final truncation to a byte.
#[inline(always)]
unsafe fn round_add(v: __m512, zp: __m512i) -> __m512i {
    let v = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    _mm512_add_epi32(v, zp)
}

/// `v - rint(v)`, ties to even (`vreduceps` with `M = 0` fraction bits, round to nearest
/// even), exact for `|v| < 2^23` and 0 above.
#[inline(always)]
unsafe fn tie_offset(v: __m512) -> __m512 {
    _mm512_reduce_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
}

/// The lanes of `v` whose distance `|v - rint(v)|` to the nearest integer is at least `near`,
/// or NaN (not less than `near`, unordered: a NaN lane counts as near a tie).
#[inline(always)]
unsafe fn near_tie(v: __m512, near: __m512) -> __mmask16 {
    let f = _mm512_andnot_ps(_mm512_set1_ps(-0.0), tie_offset(v));
    _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(f, near)
}

/// Whether a lane of the four vectors is as in [`near_tie`]. `vrangeps` with imm 0b1011 is
/// `max(|a|, |b|)`, which folds the absolute values into the maximum (of a NaN and a number it
/// returns the number; of two NaNs a NaN, which counts as near).
#[inline(always)]
unsafe fn near_tie4(v: [__m512; 4], near: __m512) -> bool {
    let ab = _mm512_range_ps::<0b1011>(tie_offset(v[0]), tie_offset(v[1]));
    let cd = _mm512_range_ps::<0b1011>(tie_offset(v[2]), tie_offset(v[3]));
    let f = _mm512_range_ps::<0b1011>(ab, cd);
    _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(f, near) != 0
}

/// The codes of four vectors of quotients, clamped in the integer domain, for grids that pass
/// [`Reciprocal::new`] (bounds within `2^14`, codes within `-128..=127` or `0..=255`).
struct Pack64 {
    zp16: __m512i,
    qmin: __m512i,
    qmax: __m512i,
}

impl Pack64 {
    #[inline(always)]
    unsafe fn new(p: &QParams) -> Pack64 {
        Pack64 {
            // Fits: `Reciprocal::new` bounds `|qmin - zero_point|`, so the zero point, by 2^14
            // plus 128.
            zp16: _mm512_set1_epi16(p.zero_point as i16),
            qmin: _mm512_set1_epi8(p.qmin as i8),
            qmax: _mm512_set1_epi8(p.qmax as i8),
        }
    }

    /// `clamp(rint(q) + zero_point, qmin, qmax)` of each lane as a byte: the oracle's
    /// `(rint(clamp(q, lo, hi)) + zero_point) as u8` (rounding and clamping to integer bounds
    /// commute). `min(q, 2^30)` keeps the conversion in range (it gives `i32::MIN` below
    /// `-2^31`); rounded to nearest even, packed to i16 with saturation, plus the zero point
    /// with saturation and packed to bytes with signed (`SIGNED`) or unsigned saturation: each
    /// saturation only moves values that are below `qmin` or above `qmax` to values that still
    /// are, and the byte max/min clamp. The packs work within 128-bit lanes: lane `k` ends up
    /// with elements `4k..4k + 4` of each vector in turn, and `vpermd` puts the dwords in order.
    #[inline(always)]
    unsafe fn codes<const SIGNED: bool>(&self, q: [__m512; 4]) -> __m512i {
        let mut c = [_mm512_setzero_si512(); 4];
        for j in 0..4 {
            let q = _mm512_min_ps(q[j], _mm512_set1_ps(1073741824.0));
            c[j] = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(q);
        }
        let ab = _mm512_adds_epi16(_mm512_packs_epi32(c[0], c[1]), self.zp16);
        let cd = _mm512_adds_epi16(_mm512_packs_epi32(c[2], c[3]), self.zp16);
        let bytes = if SIGNED {
            let b = _mm512_packs_epi16(ab, cd);
            _mm512_min_epi8(_mm512_max_epi8(b, self.qmin), self.qmax)
        } else {
            let b = _mm512_packus_epi16(ab, cd);
            _mm512_min_epu8(_mm512_max_epu8(b, self.qmin), self.qmax)
        };
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_epi32(order, bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points. Each reads and writes only the elements `three_way` hands its body, within the
// common length the wrapper checked.

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn minmax_avx512(x: &[f32]) -> MinMax {
    let p = x.as_ptr();
    let mut mn = [_mm512_set1_ps(f32::INFINITY); 4];
    let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    let mut bad: __mmask16 = 0;
    three_way::<16>(
        x.len(),
        |i| prefetch_block(p.add(i), STREAM_AHEAD),
        |i, j, len| {
            // Missing lanes load as zero, which is finite; the masked min/max keep their
            // accumulators there.
            let v = load_ps(p.add(i), len);
            let k = low_bits(len) as __mmask16;
            mn[j] = _mm512_mask_min_ps(mn[j], k, mn[j], v);
            mx[j] = _mm512_mask_max_ps(mx[j], k, mx[j], v);
            bad |= nonfinite(v);
        },
    );
    let mn = _mm512_min_ps(_mm512_min_ps(mn[0], mn[1]), _mm512_min_ps(mn[2], mn[3]));
    let mx = _mm512_max_ps(_mm512_max_ps(mx[0], mx[1]), _mm512_max_ps(mx[2], mx[3]));
    MinMax {
        min: hmin(mn),
        max: hmax(mx),
        finite: bad == 0,
    }
}

/// `minmax_avx512` of each group in one pass: the accumulators are reset at each group start
/// and reduced at its end; a short or ragged group ends in one masked vector.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn minmax_groups_avx512(x: &[f32], group_size: usize, out: &mut [MinMax]) {
    let p = x.as_ptr();
    for (g, o) in out.iter_mut().enumerate() {
        let start = g * group_size;
        let q = p.add(start);
        let mut mn = [_mm512_set1_ps(f32::INFINITY); 4];
        let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        let mut bad: __mmask16 = 0;
        // Reads `x[start..start + len]`, within `x`: the last group is the shorter one.
        three_way::<16>(
            group_size.min(x.len() - start),
            |i| prefetch_block(q.add(i), STREAM_AHEAD),
            |i, j, len| {
                let v = load_ps(q.add(i), len);
                let k = low_bits(len) as __mmask16;
                mn[j] = _mm512_mask_min_ps(mn[j], k, mn[j], v);
                mx[j] = _mm512_mask_max_ps(mx[j], k, mx[j], v);
                bad |= nonfinite(v);
            },
        );
        let mn = _mm512_min_ps(_mm512_min_ps(mn[0], mn[1]), _mm512_min_ps(mn[2], mn[3]));
        let mx = _mm512_max_ps(_mm512_max_ps(mx[0], mx[1]), _mm512_max_ps(mx[2], mx[3]));
        *o = MinMax {
            min: hmin(mn),
            max: hmax(mx),
            finite: bad == 0,
        };
    }
}

/// `quantize` of one grid, by the reciprocal where [`Reciprocal::new`] allows; `pf` is the
/// prefetch distance in bytes. The caller must have AVX-512 and `out` as long as `x`.
#[inline(always)]
unsafe fn quantize_one_grid(x: &[f32], p: &QParams, out: &mut [u8], pf: usize) {
    match Reciprocal::new(p) {
        Some(rcp) if rcp.signed => quantize_rcp_avx512::<true>(x, p, rcp, out, pf),
        Some(rcp) => quantize_rcp_avx512::<false>(x, p, rcp, out, pf),
        None => quantize_div_avx512(x, p, out, pf),
    }
}

/// `quantize` of each group with its grid. The prefetches run one whole `x` ahead (at most
/// 128 KiB, see `prefetch_distance`): a caller that quantizes a line after taking its groups'
/// statistics finds it in cache and fetches the next line meanwhile, as per channel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn quantize_groups_avx512(x: &[f32], group_size: usize, grid: &[QParams], out: &mut [u8]) {
    let pf = prefetch_distance(x.len());
    let groups = x.chunks(group_size).zip(out.chunks_mut(group_size));
    for ((g, o), p) in groups.zip(grid) {
        // Groups of whole blocks (`group_size` 64, 128, ...) run straight-line here; the others,
        // and the division fallback, through the per-slice kernel.
        match Reciprocal::new(p) {
            Some(rcp) if g.len() % 64 == 0 && rcp.signed => {
                rcp_blocks::<true>(g, p, rcp, o, pf);
            }
            Some(rcp) if g.len() % 64 == 0 => {
                rcp_blocks::<false>(g, p, rcp, o, pf);
            }
            _ => quantize_one_grid(g, p, o, pf),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn minmax_lanes_avx512(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool {
    let (p, lo, hi) = (x.as_ptr(), min.as_mut_ptr(), max.as_mut_ptr());
    let mut bad: __mmask16 = 0;
    three_way::<16>(
        x.len(),
        |i| prefetch_block(p.add(i), STREAM_AHEAD),
        |i, _, len| {
            let v = load_ps(p.add(i), len);
            // Both loads before both stores, as the slices do not overlap.
            let (m, n) = (load_ps(lo.add(i), len), load_ps(hi.add(i), len));
            // `vminps v, m` returns `m` when `v` is NaN, like the oracle's `m.min(v)`.
            store_ps(lo.add(i), len, _mm512_min_ps(v, m));
            store_ps(hi.add(i), len, _mm512_max_ps(v, n));
            bad |= nonfinite(v);
        },
    );
    bad == 0
}

/// `quantize` with `vdivps`, the correctly rounded quotient like the oracle's `/`; `pf` is the
/// prefetch distance in bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
#[inline]
unsafe fn quantize_div_avx512(x: &[f32], p: &QParams, out: &mut [u8], pf: usize) {
    let (src, dst) = (x.as_ptr(), out.as_mut_ptr());
    let scale = _mm512_set1_ps(p.scale);
    // The oracle's bounds, computed the same way.
    let lo = _mm512_set1_ps((p.qmin - p.zero_point) as f32);
    let hi = _mm512_set1_ps((p.qmax - p.zero_point) as f32);
    let zp = _mm512_set1_epi32(p.zero_point);
    three_way::<16>(
        x.len(),
        |i| prefetch_block(src.add(i), pf),
        |i, _, len| {
            let q = _mm512_div_ps(load_ps(src.add(i), len), scale);
            store_low_bytes32(dst.add(i), len, round_add(clamp(q, lo, hi), zp));
        },
    );
}

/// The whole blocks of 64 elements of `quantize_rcp_avx512` (see there); returns how many
/// elements they covered. The caller must have AVX-512 and `out` as long as `x`.
#[inline(always)]
unsafe fn rcp_blocks<const SIGNED: bool>(
    x: &[f32],
    p: &QParams,
    rcp: Reciprocal,
    out: &mut [u8],
    pf: usize,
) -> usize {
    let (src, dst) = (x.as_ptr(), out.as_mut_ptr());
    let (r, scale) = (_mm512_set1_ps(rcp.r), _mm512_set1_ps(p.scale));
    let near = _mm512_set1_ps(rcp.near);
    let pack = Pack64::new(p);
    let mut i = 0;
    while i + 64 <= x.len() {
        prefetch_block(src.add(i), pf);
        let mut x = [_mm512_setzero_ps(); 4];
        let mut y = x;
        for j in 0..4 {
            x[j] = _mm512_loadu_ps(src.add(i + 16 * j));
            y[j] = _mm512_mul_ps(x[j], r);
        }
        if near_tie4(y, near) {
            for j in 0..4 {
                y[j] = _mm512_div_ps(x[j], scale);
            }
        }
        _mm512_storeu_si512(dst.add(i).cast(), pack.codes::<SIGNED>(y));
        i += 64;
    }
    i
}

/// `quantize` by the reciprocal (see [`Reciprocal`] for why the codes are the oracle's).
/// Blocks of four vectors test `t = y` of their 64 lanes at once and are recomputed with the
/// division if any is near a tie; [`Pack64`] clamps and packs their codes. The vectors after
/// the last block test `t = clamp(y, lo, hi)` and are recomputed one at a time. `SIGNED` is
/// `rcp.signed`; `pf` is the prefetch distance in bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
#[inline]
unsafe fn quantize_rcp_avx512<const SIGNED: bool>(
    x: &[f32],
    p: &QParams,
    rcp: Reciprocal,
    out: &mut [u8],
    pf: usize,
) {
    let (src, dst) = (x.as_ptr(), out.as_mut_ptr());
    let (r, scale) = (_mm512_set1_ps(rcp.r), _mm512_set1_ps(p.scale));
    let near = _mm512_set1_ps(rcp.near);
    let lo = _mm512_set1_ps((p.qmin - p.zero_point) as f32);
    let hi = _mm512_set1_ps((p.qmax - p.zero_point) as f32);
    let zp = _mm512_set1_epi32(p.zero_point);
    let n = x.len();
    let i = rcp_blocks::<SIGNED>(x, p, rcp, out, pf);
    three_way::<16>(
        n - i,
        |_| {},
        |k, _, len| {
            let x = load_ps(src.add(i + k), len);
            let mut v = clamp(_mm512_mul_ps(x, r), lo, hi);
            if near_tie(v, near) != 0 {
                v = clamp(_mm512_div_ps(x, scale), lo, hi);
            }
            store_low_bytes32(dst.add(i + k), len, round_add(v, zp));
        },
    );
}

/// As `quantize_div_avx512` with a scale and zero point per lane; the bounds are the oracle's
/// `(qmin - zp) as f32` and `(qmax - zp) as f32` (`vcvtdq2ps` rounds to nearest like `as`).
/// No reciprocal fast path here: with a scale per lane there is no `1 / scale` to compute once,
/// and a per-lane `vrcp14ps` with a Newton step, range checks and a per-lane tie test measured
/// 0.8x the speed of this division loop.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn quantize_lanes_avx512(
    x: &[f32],
    scale: &[f32],
    zero_point: &[i32],
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) {
    let (src, sp, zpp, dst) = (
        x.as_ptr(),
        scale.as_ptr(),
        zero_point.as_ptr(),
        out.as_mut_ptr(),
    );
    let (vqmin, vqmax) = (_mm512_set1_epi32(qmin), _mm512_set1_epi32(qmax));
    three_way::<16>(
        x.len(),
        |i| prefetch_block(src.add(i), STREAM_AHEAD),
        |i, _, len| {
            let zp = load_epi32(zpp.add(i), len);
            let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(vqmin, zp));
            let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(vqmax, zp));
            // Missing lanes divide zero by zero: NaN, never stored.
            let q = _mm512_div_ps(load_ps(src.add(i), len), load_ps(sp.add(i), len));
            store_low_bytes32(dst.add(i), len, round_add(clamp(q, lo, hi), zp));
        },
    );
}

/// Sixteen codes widened to floats, read as i8 when `SIGNED`; `len <= 16` of them.
#[inline(always)]
unsafe fn load_codes16<const SIGNED: bool>(p: *const u8, len: usize) -> __m512 {
    let b = load_16_bytes(p, len);
    let i = if SIGNED {
        _mm512_cvtepi8_epi32(b)
    } else {
        _mm512_cvtepu8_epi32(b)
    };
    _mm512_cvtepi32_ps(i)
}

/// `(q - zero_point) * scale` as two roundings, a subtraction then a product: never an FMA,
/// which would round once and differ from the oracle.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn dequantize_avx512<const SIGNED: bool>(
    codes: &[u8],
    scale: f32,
    zero_point: f32,
    out: &mut [f32],
) {
    let (src, dst) = (codes.as_ptr(), out.as_mut_ptr());
    let (s, zp) = (_mm512_set1_ps(scale), _mm512_set1_ps(zero_point));
    three_way::<16>(
        codes.len(),
        |_| {},
        |i, _, len| {
            let c = load_codes16::<SIGNED>(src.add(i), len);
            store_ps(dst.add(i), len, _mm512_mul_ps(_mm512_sub_ps(c, zp), s));
        },
    );
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn dequantize_lanes_avx512<const SIGNED: bool>(
    codes: &[u8],
    scale: &[f32],
    zero_point: &[f32],
    out: &mut [f32],
) {
    let (src, sp, zpp, dst) = (
        codes.as_ptr(),
        scale.as_ptr(),
        zero_point.as_ptr(),
        out.as_mut_ptr(),
    );
    three_way::<16>(
        codes.len(),
        |_| {},
        |i, _, len| {
            let c = _mm512_sub_ps(
                load_codes16::<SIGNED>(src.add(i), len),
                load_ps(zpp.add(i), len),
            );
            store_ps(dst.add(i), len, _mm512_mul_ps(c, load_ps(sp.add(i), len)));
        },
    );
}

/// 64 codes to 32 bytes per vector: masked to nibbles, `vpmaddubsw` with weights `(1, 16)`
/// forms `lo | hi << 4` (at most 255) in each 16-bit lane, and `vpmovwb` keeps its low byte.
/// In the partial vector the missing odd code reads as zero, as in the oracle.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn pack4_avx512(codes: &[u8], out: &mut [u8]) {
    let (src, dst) = (codes.as_ptr(), out.as_mut_ptr());
    let nib = _mm512_set1_epi8(0x0f);
    let w = _mm512_set1_epi16(0x1001);
    three_way::<64>(
        codes.len(),
        |_| {},
        |i, _, len| {
            let c = _mm512_and_si512(load_64_bytes(src.add(i), len), nib);
            let pairs = _mm512_maddubs_epi16(c, w);
            store_low_bytes16(dst.add(i / 2), len.div_ceil(2), pairs);
        },
    );
}

/// 32 packed bytes to 64 codes per vector: each byte `b` widened to the 16-bit lane
/// `b | b << 4` holds its low nibble in the low byte and its high nibble in the high byte once
/// masked with `0x0f0f` (`vpternlogd` 0xa8 is `(a | b) & c`): element `2i` then `2i + 1` in
/// memory order. `vpshufb` with a 16-entry table sign-extends (or keeps) each nibble.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn unpack4_avx512(packed: &[u8], signed: bool, out: &mut [u8]) {
    let (src, dst) = (packed.as_ptr(), out.as_mut_ptr());
    let table = if signed { &SIGNED_NIBBLES } else { &IDENTITY };
    let table = _mm512_broadcast_i32x4(_mm_loadu_si128(table.as_ptr().cast()));
    let nib = _mm512_set1_epi8(0x0f);
    // Reads packed[i / 2 .. (i + len).div_ceil(2)], within the `out.len().div_ceil(2)` bytes
    // the wrapper checked.
    three_way::<64>(
        out.len(),
        |_| {},
        |i, _, len| {
            let w = _mm512_cvtepu8_epi16(load_32_bytes(src.add(i / 2), len.div_ceil(2)));
            let t = _mm512_ternarylogic_epi32::<0xa8>(w, _mm512_slli_epi16::<4>(w), nib);
            store_64_bytes(dst.add(i), len, _mm512_shuffle_epi8(table, t));
        },
    );
}

/// 64 codes to 16 bytes per vector: masked to 2 bits, `vpmaddubsw` with `(1, 4)` then
/// `vpmaddwd` with `(1, 16)` form `c0 | c1 << 2 | c2 << 4 | c3 << 6` in each 32-bit lane, and
/// `vpmovdb` keeps its low byte.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn pack2_avx512(codes: &[u8], out: &mut [u8]) {
    let (src, dst) = (codes.as_ptr(), out.as_mut_ptr());
    let crumb = _mm512_set1_epi8(0x03);
    let w8 = _mm512_set1_epi16(0x0401);
    let w16 = _mm512_set1_epi32(0x0010_0001);
    three_way::<64>(
        codes.len(),
        |_| {},
        |i, _, len| {
            let c = _mm512_and_si512(load_64_bytes(src.add(i), len), crumb);
            let quads = _mm512_madd_epi16(_mm512_maddubs_epi16(c, w8), w16);
            store_low_bytes32(dst.add(i / 4), len.div_ceil(4), quads);
        },
    );
}

/// 16 packed bytes to 64 codes per vector: each byte `b` widened to the 32-bit lane
/// `b | b << 6 | b << 12 | b << 18` holds crumb `k` in the low bits of byte `k` once masked
/// with `0x03030303` (`vpternlogd` 0xfe is `a | b | c`, 0xa8 is `(a | b) & c`); `vpshufb` with
/// a 16-entry table sign-extends (or keeps) each crumb.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn unpack2_avx512(packed: &[u8], signed: bool, out: &mut [u8]) {
    let (src, dst) = (packed.as_ptr(), out.as_mut_ptr());
    let table = if signed { &SIGNED_CRUMBS } else { &IDENTITY };
    let table = _mm512_broadcast_i32x4(_mm_loadu_si128(table.as_ptr().cast()));
    let crumb = _mm512_set1_epi8(0x03);
    // Reads packed[i / 4 .. (i + len).div_ceil(4)], within the `out.len().div_ceil(4)` bytes
    // the wrapper checked.
    three_way::<64>(
        out.len(),
        |_| {},
        |i, _, len| {
            let w = _mm512_cvtepu8_epi32(load_16_bytes(src.add(i / 4), len.div_ceil(4)));
            let t = _mm512_ternarylogic_epi32::<0xfe>(
                w,
                _mm512_slli_epi32::<6>(w),
                _mm512_slli_epi32::<12>(w),
            );
            let t = _mm512_ternarylogic_epi32::<0xa8>(t, _mm512_slli_epi32::<18>(w), crumb);
            store_64_bytes(dst.add(i), len, _mm512_shuffle_epi8(table, t));
        },
    );
}

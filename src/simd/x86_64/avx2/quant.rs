//! AVX2 quantization kernels: 256-bit vectors, 8 floats or 32 bytes at a time.
//!
//! Every kernel is a safe wrapper (length checks, CPU check) around a `#[target_feature]`
//! entry point that runs whole vectors and hands the last few elements to the scalar oracle,
//! so the results are the oracle's by construction on the tail and by the arguments in the
//! comments on the vector body. `quantize` multiplies by the reciprocal of the scale and
//! divides only where that could change a code; `Reciprocal` (shared with the AVX-512 path)
//! holds the proof.
//!
//! Soundness: `Isa::kernels` hands this table out only after `has_avx2()`, but `KERNELS` is a
//! public constant, so each wrapper checks the CPU again (one cached load) and falls back to
//! the scalar kernel rather than run an AVX2 instruction on a CPU without it.

use crate::simd::{scalar, MinMax, QParams};
use core::arch::x86_64::*;

/// How far ahead (in bytes) the streaming kernels prefetch what they read: far enough for the
/// hardware prefetchers' horizon to be extended (15-20% more read bandwidth from DRAM on one
/// core here), near enough to stay in L1/L2 until used.
pub(in crate::simd::x86_64) const STREAM_AHEAD: usize = 4096;

/// How far ahead (in bytes) `quantize` prefetches. For a slice of at most 128 KiB: the equally
/// long region right after it, spread over the loop. Callers that quantize row by row (per
/// channel) take each row's min and max first, and then find the next row in cache, so that
/// memory-bound pass overlaps this division-bound one (about 1.4x faster per-channel INT8 here).
/// Longer slices are streamed from memory: [`STREAM_AHEAD`]. Prefetches are hints: they never
/// fault, whatever the address.
pub(in crate::simd::x86_64) fn prefetch_distance(n: usize) -> usize {
    const MAX_BYTES: usize = 128 << 10;
    let bytes = n * 4;
    if bytes <= MAX_BYTES {
        bytes
    } else {
        STREAM_AHEAD
    }
}

/// Prefetch hint for the cache line at `p + bytes`; `wrapping_add` because that address may lie
/// past the allocation (a prefetch never faults).
#[inline(always)]
pub(in crate::simd::x86_64) unsafe fn prefetch(p: *const f32, bytes: usize) {
    _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(bytes));
}

/// The reciprocal fast path of `quantize` (here and in the AVX-512 path): `vdivps` bounds the
/// division loop, so each vector multiplies by `r = fl(1 / scale)` instead, and the few
/// vectors where that could change a code are recomputed with the division.
///
/// Why the codes are the oracle's. Write `z = x / scale` (exact), `q = fl(z)` (the oracle's
/// quotient), `u = 2^-24`, `y = fl(x * r)`, and `code(t) = rint(clamp(t, lo, hi))` with the
/// oracle's integer bounds `lo = qmin - zero_point`, `hi = qmax - zero_point`. The oracle's
/// code is `code(q) + zero_point`; the fast path's is `code(y) + zero_point`, computed either
/// so or as `clamp(rint(y) + zero_point, qmin, qmax)`, which is the same, as rounding and
/// clamping to integer bounds commute.
///
/// 1. `code` is constant between consecutive half-integers: on `(k - 1/2, k + 1/2)`, `rint`
///    is `k`, so `code` is `k` when `lo <= k <= hi`, `hi` when `k > hi` (then `t > hi`) and
///    `lo` when `k < lo`. So `code(y) = code(q)` when no half-integer lies between or on `y`
///    and `q`.
/// 2. The error. `r` is normal ([`Reciprocal::new`] checks), so `r = (1 / scale)(1 + d1)` with
///    `|d1| <= u`. If `1/4 <= |z| < 2^127`, `x * r` and `z` round in the normal range:
///    `y = z(1 + d1)(1 + d2)`, `q = z(1 + d3)`, `|di| <= u`, so `|y - q| <= |z|(3u + u^2)
///    <= |y|(3u + u^2) / (1 - u)^2 < 4u|y| = 2^-22 |y|`. Otherwise the codes agree whatever
///    the test below says: if `|z| < 1/4`, `|y|` and `|q|` are at most `(1 + u) / 4 < 1/2`,
///    and `code(y) = code(q) = code(0)` by 1; if `|z| >= 2^127` (or `x` is infinite), `y` and
///    `q` have its sign and magnitudes of at least `2^126`, far beyond the bounds, so the clamp
///    gives both the same bound.
/// 3. The test. With `B = max(|lo|, |hi|, 1) <= 2^14` and `T = 2^-21 B <= 2^-7`, a lane is
///    kept only when `|t - rint(t)| < near <= 1/2 - T`, where `t` is `y`, `clamp(y, lo, hi)`
///    or `min(y, 2^30)` (each kernel says which).
///    - If `lo <= y <= hi`: `t = y` and `|y| <= B`, so `|y - q| < 2^-22 B < T`, while the
///      nearest half-integer is `1/2 - |t - rint(t)| > T` away from `y` (the difference is
///      exact: `y` and `rint(y)` are within a factor of two of each other, or `rint(y) = 0`).
///      So none lies between or on `y` and `q`: `code(y) = code(q)`.
///    - If `y > hi`: `code(y) = hi`, kept or not. If `|y| <= 2B`, then `|y - q| < 2^-21 B <=
///      2^-7` and `q > hi - 2^-7`; otherwise `y > 2B > 0` (as `y > hi >= -B`) and
///      `q > y(1 - 2^-22) > B >= hi`. Either way `code(q) = hi`.
///    - If `y < lo`: the same, mirrored.
///
/// A vector (or block) with a lane that fails the test is recomputed with the division, the
/// oracle's arithmetic. Real data fails in about `2T` of its lanes (`T = 2^-14` for signed
/// 8-bit codes); exact ties fail every time and cost a multiplication on top of the division.
/// NaN inputs give unspecified codes either way.
#[derive(Clone, Copy, Debug)]
pub(in crate::simd::x86_64) struct Reciprocal {
    /// `fl(1 / scale)`, a normal float.
    pub r: f32,
    /// A lane whose `|t - rint(t)|` is at least this is recomputed with the division.
    pub near: f32,
    /// Whether the codes lie in `-128..=127` (otherwise in `0..=255`), for saturating packs.
    pub signed: bool,
}

impl Reciprocal {
    /// The largest bound magnitude `B` allowed: the proof above needs `2^-21 B` well below
    /// `1/2`, and the packs need the bounds and the zero point to fit in an i16.
    const MAX_BOUND: f32 = 16384.0;

    /// The fast path's constants for the grid `p`, or `None` where the division loop must run:
    /// a scale whose reciprocal is not a normal float (a subnormal scale, or one above `2^126`),
    /// bounds beyond [`Self::MAX_BOUND`], or codes that are not bytes (`qmin..=qmax` outside
    /// both `-128..=127` and `0..=255`; never for a grid of `code_range`).
    pub(in crate::simd::x86_64) fn new(p: &QParams) -> Option<Reciprocal> {
        let r = 1.0 / p.scale;
        // The oracle's bounds, computed the same way.
        let lo = (p.qmin - p.zero_point) as f32;
        let hi = (p.qmax - p.zero_point) as f32;
        let b = lo.abs().max(hi.abs()).max(1.0);
        let signed = p.qmin < 0;
        let bytes = if signed { -128..=127 } else { 0..=255 };
        if !r.is_normal()
            || b > Self::MAX_BOUND
            || !(bytes.contains(&p.qmin) && bytes.contains(&p.qmax))
        {
            return None;
        }
        // `1/2 - T` exactly: `b` is an integer at most 2^14, so this is `(2^20 - b) 2^-21`.
        let near = 0.5 - b * 2f32.powi(-21);
        Some(Reciprocal { r, near, signed })
    }
}

/// `SIGNED_NIBBLES[n]` is the 4-bit code `n` sign-extended to a byte; `vpshufb` with it is the
/// sign extension of a whole vector of nibbles. `SIGNED_CRUMBS` does the same for 2-bit codes.
pub(in crate::simd::x86_64) const SIGNED_NIBBLES: [u8; 16] = [
    0, 1, 2, 3, 4, 5, 6, 7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff,
];
pub(in crate::simd::x86_64) const SIGNED_CRUMBS: [u8; 16] =
    [0, 1, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub(in crate::simd::x86_64) const IDENTITY: [u8; 16] =
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

// ---------------------------------------------------------------------------------------------
// Safe wrappers: the `Kernels` entries.

crate::simd::safe_wrappers! {
    cpu: crate::simd::probe::has_avx2(), else: crate::simd::scalar;

    fn minmax(x: &[f32]) -> MinMax => minmax_avx2(x);

    fn minmax_lanes(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool =>
        minmax_lanes_avx2(x, min, max);

    fn quantize(x: &[f32], p: &QParams, out: &mut [u8]) =>
        quantize_one_grid(x, p, out, prefetch_distance(x.len()));

    fn minmax_groups(x: &[f32], group_size: usize, out: &mut [MinMax]) =>
        minmax_groups_avx2(x, group_size, out);

    fn quantize_groups(x: &[f32], group_size: usize, grid: &[QParams], out: &mut [u8]) =>
        quantize_groups_avx2(x, group_size, grid, out);

    fn quantize_lanes(
        x: &[f32],
        scale: &[f32],
        zero_point: &[i32],
        qmin: i32,
        qmax: i32,
        out: &mut [u8],
    ) => quantize_lanes_avx2(x, scale, zero_point, qmin, qmax, out);

    fn dequantize(codes: &[u8], signed: bool, scale: f32, zero_point: f32, out: &mut [f32]) => {
        if signed {
            dequantize_avx2::<true>(codes, scale, zero_point, out)
        } else {
            dequantize_avx2::<false>(codes, scale, zero_point, out)
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
            dequantize_lanes_avx2::<true>(codes, scale, zero_point, out)
        } else {
            dequantize_lanes_avx2::<false>(codes, scale, zero_point, out)
        }
    };

    fn pack4(codes: &[u8], out: &mut [u8]) => pack4_avx2(codes, out);

    fn unpack4(packed: &[u8], signed: bool, out: &mut [u8]) => unpack4_avx2(packed, signed, out);

    fn pack2(codes: &[u8], out: &mut [u8]) => pack2_avx2(codes, out);

    fn unpack2(packed: &[u8], signed: bool, out: &mut [u8]) => unpack2_avx2(packed, signed, out);
}

// ---------------------------------------------------------------------------------------------
// Helpers, inlined into the `#[target_feature]` entry points (callers must have AVX2).

/// `|x|` as integer bits: at or above `NONFINITE_BITS` means ±Inf or NaN. Unlike a float
/// comparison, the integer maximum of these never loses a NaN.
#[inline(always)]
unsafe fn abs_bits(v: __m256) -> __m256i {
    _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fff_ffff))
}

#[inline(always)]
unsafe fn any_nonfinite(abs_max: __m256i) -> bool {
    let limit = _mm256_set1_epi32(scalar::NONFINITE_BITS as i32 - 1);
    _mm256_movemask_epi8(_mm256_cmpgt_epi32(abs_max, limit)) != 0
}

#[inline(always)]
unsafe fn hmin(v: __m256) -> f32 {
    let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps::<1>(m, m)))
}

#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)))
}

/// `clamp(x / scale, lo, hi)` rounded to the nearest integer, ties to even, plus the zero
/// point: the oracle's `quantize_one` up to the final truncation to a byte. `vdivps` is the
/// correctly rounded quotient like `/`.
#[inline(always)]
unsafe fn quantize8(x: __m256, scale: __m256, lo: __m256, hi: __m256, zp: __m256i) -> __m256i {
    _mm256_add_epi32(
        _mm256_cvtps_epi32(clamp8(_mm256_div_ps(x, scale), lo, hi)),
        zp,
    )
}

/// `clamp(q, lo, hi)`: `vmaxps`/`vminps` with finite bounds send ±Inf to the bounds, and the
/// clamped value is an integer-bounded float, so converting it cannot overflow. `vcvtps2dq`
/// rounds with MXCSR's nearest-even, which Rust code never changes.
#[inline(always)]
unsafe fn clamp8(q: __m256, lo: __m256, hi: __m256) -> __m256 {
    _mm256_min_ps(_mm256_max_ps(q, lo), hi)
}

/// For each lane, `rint(t)` as an i32 and `|t - rint(t)|`, where `t = min(q, 2^30)` keeps the
/// conversion in range above (below `-2^31` it gives `i32::MIN`, where the distance comes out
/// at least 256: such a lane counts as near a tie, and the division gives it the same code).
/// Rounding and clamping to integer bounds commute, so `rint(t)` serves for the code of `q`.
#[inline(always)]
unsafe fn round4(q: [__m256; 4]) -> ([__m256i; 4], [__m256; 4]) {
    let (mut c, mut f) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_ps(); 4]);
    for j in 0..4 {
        let q = _mm256_min_ps(q[j], _mm256_set1_ps(1073741824.0));
        c[j] = _mm256_cvtps_epi32(q);
        let d = _mm256_sub_ps(q, _mm256_cvtepi32_ps(c[j]));
        f[j] = _mm256_andnot_ps(_mm256_set1_ps(-0.0), d);
    }
    (c, f)
}

/// The codes of four vectors of quotients, clamped in the integer domain, for grids that pass
/// [`Reciprocal::new`] (bounds within `2^14`, codes within `-128..=127` or `0..=255`).
struct Pack32 {
    zp16: __m256i,
    qmin: __m256i,
    qmax: __m256i,
}

impl Pack32 {
    #[inline(always)]
    unsafe fn new(p: &QParams) -> Pack32 {
        Pack32 {
            // Fits: `Reciprocal::new` bounds `|qmin - zero_point|`, so the zero point, by 2^14
            // plus 128.
            zp16: _mm256_set1_epi16(p.zero_point as i16),
            qmin: _mm256_set1_epi8(p.qmin as i8),
            qmax: _mm256_set1_epi8(p.qmax as i8),
        }
    }

    /// `clamp(c + zero_point, qmin, qmax)` of each lane as a byte, for `c = rint(q)` from
    /// [`round4`]: the oracle's `(rint(clamp(q, lo, hi)) + zero_point) as u8` (rounding
    /// and clamping to integer bounds commute). Packed to i16 with saturation, plus the zero
    /// point with saturation and packed to bytes with signed (`SIGNED`) or unsigned saturation:
    /// each saturation only moves values that are below `qmin` or above `qmax` to values that
    /// still are, and the byte max/min clamp. Byte order as in [`truncate32`].
    #[inline(always)]
    unsafe fn codes<const SIGNED: bool>(&self, c: [__m256i; 4]) -> __m256i {
        let ab = _mm256_adds_epi16(_mm256_packs_epi32(c[0], c[1]), self.zp16);
        let cd = _mm256_adds_epi16(_mm256_packs_epi32(c[2], c[3]), self.zp16);
        let bytes = if SIGNED {
            let b = _mm256_packs_epi16(ab, cd);
            _mm256_min_epi8(_mm256_max_epi8(b, self.qmin), self.qmax)
        } else {
            let b = _mm256_packus_epi16(ab, cd);
            _mm256_min_epu8(_mm256_max_epu8(b, self.qmin), self.qmax)
        };
        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// The low byte of each i32 lane of `a, b, c, d` in order (the `as u8` truncation).
#[inline(always)]
unsafe fn truncate32(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
    let m = _mm256_set1_epi32(0xff);
    // Masked to 0..=255, the saturating packs are exact. They interleave 128-bit lanes:
    // bytes come out as a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7; vpermd puts them in order.
    let ab = _mm256_packus_epi32(_mm256_and_si256(a, m), _mm256_and_si256(b, m));
    let cd = _mm256_packus_epi32(_mm256_and_si256(c, m), _mm256_and_si256(d, m));
    let bytes = _mm256_packus_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// The low byte of each i32 lane of `a`, in the low 8 bytes of the result.
#[inline(always)]
unsafe fn truncate8(a: __m256i) -> __m128i {
    let a = _mm256_and_si256(a, _mm256_set1_epi32(0xff));
    let w = _mm256_packus_epi32(a, a); // u16: a0-3 a0-3 | a4-7 a4-7
    let b = _mm256_packus_epi16(w, w); // u8: a0-3 x4 | a4-7 x4
    _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b))
}

/// Eight codes widened to floats, read as i8 when `SIGNED`.
#[inline(always)]
unsafe fn load_codes8<const SIGNED: bool>(p: *const u8) -> __m256 {
    let b = _mm_loadl_epi64(p.cast());
    let i = if SIGNED {
        _mm256_cvtepi8_epi32(b)
    } else {
        _mm256_cvtepu8_epi32(b)
    };
    _mm256_cvtepi32_ps(i)
}

#[inline(always)]
unsafe fn table(signed: bool, signed_table: &[u8; 16]) -> __m256i {
    let t = if signed { signed_table } else { &IDENTITY };
    _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr().cast()))
}

// ---------------------------------------------------------------------------------------------
// Entry points. Each loop reads and writes only at indices `i..i + W` with `i + W <= n`, where
// `n` is the common length the wrapper checked; the scalar oracle finishes from `i`.

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn minmax_avx2(x: &[f32]) -> MinMax {
    let n = x.len();
    let p = x.as_ptr();
    let mut mn = [_mm256_set1_ps(f32::INFINITY); 4];
    let mut mx = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
    let mut ab = [_mm256_setzero_si256(); 4];
    let mut i = 0;
    while i + 32 <= n {
        prefetch(p.add(i), STREAM_AHEAD);
        prefetch(p.add(i), STREAM_AHEAD + 64);
        for j in 0..4 {
            let v = _mm256_loadu_ps(p.add(i + 8 * j));
            mn[j] = _mm256_min_ps(v, mn[j]);
            mx[j] = _mm256_max_ps(v, mx[j]);
            ab[j] = _mm256_max_epi32(ab[j], abs_bits(v));
        }
        i += 32;
    }
    while i + 8 <= n {
        let v = _mm256_loadu_ps(p.add(i));
        mn[0] = _mm256_min_ps(v, mn[0]);
        mx[0] = _mm256_max_ps(v, mx[0]);
        ab[0] = _mm256_max_epi32(ab[0], abs_bits(v));
        i += 8;
    }
    let mn = _mm256_min_ps(_mm256_min_ps(mn[0], mn[1]), _mm256_min_ps(mn[2], mn[3]));
    let mx = _mm256_max_ps(_mm256_max_ps(mx[0], mx[1]), _mm256_max_ps(mx[2], mx[3]));
    let ab = _mm256_max_epi32(
        _mm256_max_epi32(ab[0], ab[1]),
        _mm256_max_epi32(ab[2], ab[3]),
    );
    let body = MinMax {
        min: hmin(mn),
        max: hmax(mx),
        finite: !any_nonfinite(ab),
    };
    body.merge(scalar::minmax(&x[i..]))
}

/// `minmax_avx2` of each group in one call: no dispatch, and the per-group body inlines.
#[target_feature(enable = "avx2")]
unsafe fn minmax_groups_avx2(x: &[f32], group_size: usize, out: &mut [MinMax]) {
    for (o, g) in out.iter_mut().zip(x.chunks(group_size)) {
        *o = minmax_avx2(g);
    }
}

/// `quantize` of one grid, by the reciprocal where [`Reciprocal::new`] allows; `pf` is the
/// prefetch distance in bytes. The caller must have AVX2 and `out` as long as `x`.
#[inline(always)]
unsafe fn quantize_one_grid(x: &[f32], p: &QParams, out: &mut [u8], pf: usize) {
    match Reciprocal::new(p) {
        Some(rcp) if rcp.signed => quantize_rcp_avx2::<true>(x, p, rcp, out, pf),
        Some(rcp) => quantize_rcp_avx2::<false>(x, p, rcp, out, pf),
        None => quantize_div_avx2(x, p, out, pf),
    }
}

/// `quantize` of each group with its grid, prefetching one whole `x` ahead (see
/// `quantize_groups_avx512`).
#[target_feature(enable = "avx2")]
unsafe fn quantize_groups_avx2(x: &[f32], group_size: usize, grid: &[QParams], out: &mut [u8]) {
    let pf = prefetch_distance(x.len());
    let groups = x.chunks(group_size).zip(out.chunks_mut(group_size));
    for ((g, o), p) in groups.zip(grid) {
        quantize_one_grid(g, p, o, pf);
    }
}

#[target_feature(enable = "avx2")]
unsafe fn minmax_lanes_avx2(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool {
    let n = x.len();
    let (p, lo, hi) = (x.as_ptr(), min.as_mut_ptr(), max.as_mut_ptr());
    let mut ab = [_mm256_setzero_si256(); 2];
    let mut i = 0;
    while i + 16 <= n {
        prefetch(p.add(i), STREAM_AHEAD);
        for (j, acc) in ab.iter_mut().enumerate() {
            let k = i + 8 * j;
            let v = _mm256_loadu_ps(p.add(k));
            // `vminps v, m` returns `m` when `v` is NaN, like `m.min(v)`.
            _mm256_storeu_ps(lo.add(k), _mm256_min_ps(v, _mm256_loadu_ps(lo.add(k))));
            _mm256_storeu_ps(hi.add(k), _mm256_max_ps(v, _mm256_loadu_ps(hi.add(k))));
            *acc = _mm256_max_epi32(*acc, abs_bits(v));
        }
        i += 16;
    }
    if i + 8 <= n {
        let v = _mm256_loadu_ps(p.add(i));
        _mm256_storeu_ps(lo.add(i), _mm256_min_ps(v, _mm256_loadu_ps(lo.add(i))));
        _mm256_storeu_ps(hi.add(i), _mm256_max_ps(v, _mm256_loadu_ps(hi.add(i))));
        ab[0] = _mm256_max_epi32(ab[0], abs_bits(v));
        i += 8;
    }
    let body = !any_nonfinite(_mm256_max_epi32(ab[0], ab[1]));
    let tail = scalar::minmax_lanes(&x[i..], &mut min[i..], &mut max[i..]);
    body && tail
}

/// `quantize` with `vdivps`, the correctly rounded quotient like the oracle's `/`; `pf` is the
/// prefetch distance in bytes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn quantize_div_avx2(x: &[f32], p: &QParams, out: &mut [u8], pf: usize) {
    let n = x.len();
    let (src, dst) = (x.as_ptr(), out.as_mut_ptr());
    let scale = _mm256_set1_ps(p.scale);
    // The oracle's bounds, computed the same way.
    let lo = _mm256_set1_ps((p.qmin - p.zero_point) as f32);
    let hi = _mm256_set1_ps((p.qmax - p.zero_point) as f32);
    let zp = _mm256_set1_epi32(p.zero_point);
    macro_rules! q {
        ($k:expr) => {
            quantize8(_mm256_loadu_ps(src.add($k)), scale, lo, hi, zp)
        };
    }
    let mut i = 0;
    // Four independent divisions in flight hide vdivps' latency.
    while i + 32 <= n {
        prefetch(src.add(i), pf);
        prefetch(src.add(i), pf + 64);
        let bytes = truncate32(q!(i), q!(i + 8), q!(i + 16), q!(i + 24));
        _mm256_storeu_si256(dst.add(i).cast(), bytes);
        i += 32;
    }
    while i + 8 <= n {
        _mm_storel_epi64(dst.add(i).cast(), truncate8(q!(i)));
        i += 8;
    }
    scalar::quantize(&x[i..], p, &mut out[i..]);
}

/// `quantize` by the reciprocal (see [`Reciprocal`] for why the codes are the oracle's).
/// Blocks of four vectors test `t = min(y, 2^30)` of their 32 lanes at once and are recomputed
/// with the division if any is near a tie; [`Pack32`] clamps and packs their codes. The
/// vectors after the last block test `t = clamp(y, lo, hi)` and are recomputed one at a time;
/// the scalar oracle finishes. `SIGNED` is `rcp.signed`; `pf` is the prefetch distance in bytes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn quantize_rcp_avx2<const SIGNED: bool>(
    x: &[f32],
    p: &QParams,
    rcp: Reciprocal,
    out: &mut [u8],
    pf: usize,
) {
    let n = x.len();
    let (src, dst) = (x.as_ptr(), out.as_mut_ptr());
    let (r, scale) = (_mm256_set1_ps(rcp.r), _mm256_set1_ps(p.scale));
    let near = _mm256_set1_ps(rcp.near);
    let lo = _mm256_set1_ps((p.qmin - p.zero_point) as f32);
    let hi = _mm256_set1_ps((p.qmax - p.zero_point) as f32);
    let zp = _mm256_set1_epi32(p.zero_point);
    let pack = Pack32::new(p);
    // Whether a lane of `f` is `near` a tie (or NaN, which `f` never is: `min(y, 2^30)` and
    // `clamp` return their bound for a NaN `y`).
    macro_rules! any_near {
        ($f:expr) => {
            _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NLT_UQ>($f, near)) != 0
        };
    }
    let mut i = 0;
    while i + 32 <= n {
        prefetch(src.add(i), pf);
        prefetch(src.add(i), pf + 64);
        let mut x = [_mm256_setzero_ps(); 4];
        let mut y = x;
        for j in 0..4 {
            x[j] = _mm256_loadu_ps(src.add(i + 8 * j));
            y[j] = _mm256_mul_ps(x[j], r);
        }
        let (mut c, f) = round4(y);
        let f = _mm256_max_ps(_mm256_max_ps(f[0], f[1]), _mm256_max_ps(f[2], f[3]));
        if any_near!(f) {
            for j in 0..4 {
                y[j] = _mm256_div_ps(x[j], scale);
            }
            c = round4(y).0;
        }
        _mm256_storeu_si256(dst.add(i).cast(), pack.codes::<SIGNED>(c));
        i += 32;
    }
    while i + 8 <= n {
        let x = _mm256_loadu_ps(src.add(i));
        let v = clamp8(_mm256_mul_ps(x, r), lo, hi);
        let c = _mm256_cvtps_epi32(v);
        let f = _mm256_andnot_ps(
            _mm256_set1_ps(-0.0),
            _mm256_sub_ps(v, _mm256_cvtepi32_ps(c)),
        );
        let c = if any_near!(f) {
            _mm256_cvtps_epi32(clamp8(_mm256_div_ps(x, scale), lo, hi))
        } else {
            c
        };
        _mm_storel_epi64(dst.add(i).cast(), truncate8(_mm256_add_epi32(c, zp)));
        i += 8;
    }
    scalar::quantize(&x[i..], p, &mut out[i..]);
}

/// No reciprocal fast path here, as in the AVX-512 path (see `quantize_lanes_avx512`).
#[target_feature(enable = "avx2")]
unsafe fn quantize_lanes_avx2(
    x: &[f32],
    scale: &[f32],
    zero_point: &[i32],
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) {
    let n = x.len();
    let (src, sp, zpp, dst) = (
        x.as_ptr(),
        scale.as_ptr(),
        zero_point.as_ptr(),
        out.as_mut_ptr(),
    );
    let (vqmin, vqmax) = (_mm256_set1_epi32(qmin), _mm256_set1_epi32(qmax));
    macro_rules! q {
        ($k:expr) => {{
            let k = $k;
            let zp = _mm256_loadu_si256(zpp.add(k).cast());
            // `(qmin - zp) as f32`: vcvtdq2ps rounds to nearest like `as`.
            let lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(vqmin, zp));
            let hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(vqmax, zp));
            let s = _mm256_loadu_ps(sp.add(k));
            quantize8(_mm256_loadu_ps(src.add(k)), s, lo, hi, zp)
        }};
    }
    let mut i = 0;
    while i + 32 <= n {
        prefetch(src.add(i), STREAM_AHEAD);
        prefetch(src.add(i), STREAM_AHEAD + 64);
        let bytes = truncate32(q!(i), q!(i + 8), q!(i + 16), q!(i + 24));
        _mm256_storeu_si256(dst.add(i).cast(), bytes);
        i += 32;
    }
    while i + 8 <= n {
        _mm_storel_epi64(dst.add(i).cast(), truncate8(q!(i)));
        i += 8;
    }
    scalar::quantize_lanes(
        &x[i..],
        &scale[i..],
        &zero_point[i..],
        qmin,
        qmax,
        &mut out[i..],
    );
}

/// `(q - zero_point) * scale` as two roundings, a subtraction then a product: never an FMA,
/// which would round once and differ from the oracle.
#[target_feature(enable = "avx2")]
unsafe fn dequantize_avx2<const SIGNED: bool>(
    codes: &[u8],
    scale: f32,
    zero_point: f32,
    out: &mut [f32],
) {
    let n = codes.len();
    let (src, dst) = (codes.as_ptr(), out.as_mut_ptr());
    let (s, zp) = (_mm256_set1_ps(scale), _mm256_set1_ps(zero_point));
    macro_rules! d {
        ($k:expr) => {
            _mm256_mul_ps(_mm256_sub_ps(load_codes8::<SIGNED>(src.add($k)), zp), s)
        };
    }
    let mut i = 0;
    while i + 32 <= n {
        for j in 0..4 {
            _mm256_storeu_ps(dst.add(i + 8 * j), d!(i + 8 * j));
        }
        i += 32;
    }
    while i + 8 <= n {
        _mm256_storeu_ps(dst.add(i), d!(i));
        i += 8;
    }
    scalar::dequantize(&codes[i..], SIGNED, scale, zero_point, &mut out[i..]);
}

#[target_feature(enable = "avx2")]
unsafe fn dequantize_lanes_avx2<const SIGNED: bool>(
    codes: &[u8],
    scale: &[f32],
    zero_point: &[f32],
    out: &mut [f32],
) {
    let n = codes.len();
    let (src, sp, zpp, dst) = (
        codes.as_ptr(),
        scale.as_ptr(),
        zero_point.as_ptr(),
        out.as_mut_ptr(),
    );
    macro_rules! d {
        ($k:expr) => {{
            let k = $k;
            let c = _mm256_sub_ps(
                load_codes8::<SIGNED>(src.add(k)),
                _mm256_loadu_ps(zpp.add(k)),
            );
            _mm256_mul_ps(c, _mm256_loadu_ps(sp.add(k)))
        }};
    }
    let mut i = 0;
    while i + 16 <= n {
        _mm256_storeu_ps(dst.add(i), d!(i));
        _mm256_storeu_ps(dst.add(i + 8), d!(i + 8));
        i += 16;
    }
    if i + 8 <= n {
        _mm256_storeu_ps(dst.add(i), d!(i));
        i += 8;
    }
    scalar::dequantize_lanes(
        &codes[i..],
        SIGNED,
        &scale[i..],
        &zero_point[i..],
        &mut out[i..],
    );
}

/// Byte pairs `(lo, hi)` become `(lo & 0xf) | (hi << 4)`: masked to nibbles, `vpmaddubsw` with
/// weights `(1, 16)` forms `lo + 16 * hi` (at most 255) in each 16-bit lane.
#[target_feature(enable = "avx2")]
unsafe fn pack4_avx2(codes: &[u8], out: &mut [u8]) {
    let n = codes.len();
    let (src, dst) = (codes.as_ptr(), out.as_mut_ptr());
    let nib = _mm256_set1_epi8(0x0f);
    let w = _mm256_set1_epi16(0x1001);
    let mut i = 0;
    while i + 64 <= n {
        let a = _mm256_loadu_si256(src.add(i).cast());
        let b = _mm256_loadu_si256(src.add(i + 32).cast());
        let a = _mm256_maddubs_epi16(_mm256_and_si256(a, nib), w);
        let b = _mm256_maddubs_epi16(_mm256_and_si256(b, nib), w);
        // packus interleaves 128-bit lanes (a0 b0 a1 b1 as 64-bit quarters); vpermq fixes it.
        let bytes = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(a, b));
        _mm256_storeu_si256(dst.add(i / 2).cast(), bytes);
        i += 64;
    }
    while i + 16 <= n {
        let a = _mm_loadu_si128(src.add(i).cast());
        let a = _mm_maddubs_epi16(
            _mm_and_si128(a, _mm256_castsi256_si128(nib)),
            _mm256_castsi256_si128(w),
        );
        _mm_storel_epi64(dst.add(i / 2).cast(), _mm_packus_epi16(a, a));
        i += 16;
    }
    scalar::pack4(&codes[i..], &mut out[i / 2..]);
}

/// Each packed byte `b` widened to the 16-bit lane `b | b << 4` holds its low nibble in the low
/// byte and its high nibble in the high byte once masked with `0x0f0f`: element `2i` then
/// `2i + 1`, in memory order. `vpshufb` with a 16-entry table sign-extends (or keeps) them.
#[target_feature(enable = "avx2")]
unsafe fn unpack4_avx2(packed: &[u8], signed: bool, out: &mut [u8]) {
    let n = out.len();
    let (src, dst) = (packed.as_ptr(), out.as_mut_ptr());
    let tbl = table(signed, &SIGNED_NIBBLES);
    let mask = _mm256_set1_epi16(0x0f0f);
    let mut i = 0;
    // Reads packed[i / 2 .. i / 2 + 16], within the `n.div_ceil(2)` bytes the wrapper checked.
    while i + 32 <= n {
        let w = _mm256_cvtepu8_epi16(_mm_loadu_si128(src.add(i / 2).cast()));
        let t = _mm256_and_si256(_mm256_or_si256(w, _mm256_slli_epi16::<4>(w)), mask);
        _mm256_storeu_si256(dst.add(i).cast(), _mm256_shuffle_epi8(tbl, t));
        i += 32;
    }
    scalar::unpack4(&packed[i / 2..], signed, &mut out[i..]);
}

/// Quads of codes become `c0 | c1 << 2 | c2 << 4 | c3 << 6`: masked to 2 bits, `vpmaddubsw`
/// with `(1, 4)` then `vpmaddwd` with `(1, 16)` form the byte in each 32-bit lane.
#[target_feature(enable = "avx2")]
unsafe fn pack2_avx2(codes: &[u8], out: &mut [u8]) {
    let n = codes.len();
    let (src, dst) = (codes.as_ptr(), out.as_mut_ptr());
    let crumb = _mm256_set1_epi8(0x03);
    let w8 = _mm256_set1_epi16(0x0401);
    let w16 = _mm256_set1_epi32(0x0010_0001);
    macro_rules! p {
        ($k:expr) => {{
            let c = _mm256_and_si256(_mm256_loadu_si256(src.add($k).cast()), crumb);
            _mm256_madd_epi16(_mm256_maddubs_epi16(c, w8), w16)
        }};
    }
    let mut i = 0;
    while i + 128 <= n {
        let bytes = truncate32(p!(i), p!(i + 32), p!(i + 64), p!(i + 96));
        _mm256_storeu_si256(dst.add(i / 4).cast(), bytes);
        i += 128;
    }
    while i + 32 <= n {
        _mm_storel_epi64(dst.add(i / 4).cast(), truncate8(p!(i)));
        i += 32;
    }
    scalar::pack2(&codes[i..], &mut out[i / 4..]);
}

/// Each packed byte `b` widened to the 32-bit lane `b | b << 6 | b << 12 | b << 18` holds
/// crumb `j` in the low bits of byte `j` once masked with `0x03030303`.
#[target_feature(enable = "avx2")]
unsafe fn unpack2_avx2(packed: &[u8], signed: bool, out: &mut [u8]) {
    let n = out.len();
    let (src, dst) = (packed.as_ptr(), out.as_mut_ptr());
    let tbl = table(signed, &SIGNED_CRUMBS);
    let mask = _mm256_set1_epi32(0x0303_0303);
    let mut i = 0;
    // Reads packed[i / 4 .. i / 4 + 8], within the `n.div_ceil(4)` bytes the wrapper checked.
    while i + 32 <= n {
        let w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(src.add(i / 4).cast()));
        let t = _mm256_or_si256(
            _mm256_or_si256(w, _mm256_slli_epi32::<6>(w)),
            _mm256_or_si256(_mm256_slli_epi32::<12>(w), _mm256_slli_epi32::<18>(w)),
        );
        let t = _mm256_and_si256(t, mask);
        _mm256_storeu_si256(dst.add(i).cast(), _mm256_shuffle_epi8(tbl, t));
        i += 32;
    }
    scalar::unpack2(&packed[i / 4..], signed, &mut out[i..]);
}

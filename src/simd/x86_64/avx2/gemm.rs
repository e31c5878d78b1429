//! AVX2 tile kernels of the integer and weight-only matrix products (layouts and the
//! accumulation order are in `simd::gemm`). AVX-512 without VNNI runs the integer tiles too.
//!
//! - 8-bit panels (`dot_tile`, `dot_tile_wide`, W8A8 `linear_tile`, `matmul_rows`):
//!   `vpmaddubsw` adds pairs of `u8 × i8` products into int16 with saturation, which would be
//!   wrong here (255·128·2 > 32767), so these tiles skip it: panel bytes are zero-extended to
//!   int16 and the activations sign-extended, then one `vpmaddwd` makes 16 exact products (as
//!   many per multiply instruction as `vpmaddubsw` + `vpmaddwd` make, without saturation) and
//!   one `vpaddd` accumulates them. A quad of 16 panel bytes widens to one ymm whose int16
//!   lanes are (column `j`: `k0 k1 k2 k3`) for 4 columns, so against a 64-bit broadcast of the
//!   row's 4 int16 activations the int32 lanes hold (`k0k1`, `k2k3`) pairs per column, added
//!   once at the end (`vphaddd`). With several rows, each chunk of [`CH`] `k` of the panels is
//!   widened once into an L1 buffer (as are the rows) and every row reads it from there; one-
//!   and two-row tiles (GEMV) widen on the fly. Exact for every `u8` panel and `i8`
//!   activation, -128 included.
//! - W4A8 (`linear_w4_avx2`): 4-bit codes cannot saturate `vpmaddubsw` (a pair is at most
//!   15·128·2 = 3840), so nibble pair sums of 4 blocks are added in int16 (at most 30720)
//!   before one `vpmaddwd`, in passes of up to 4 rows over one 8-column half.
//! - Float mode (`linear_f32_avx2`): codes decoded with `vpshufb`, dequantized and FMA'd in
//!   the fixed order.
//!
//! Soundness: the tables holding these are only handed out after the CPU check, and each safe
//! wrapper checks again (a cached load) before entering `#[target_feature]` code.

// Register arrays indexed by row read clearer as `for r in 0..R` in these kernels.
#![allow(clippy::needless_range_loop)]

use crate::simd::gemm::{self, Panel, Rows, TileF32, TileI32, TileWide, MR, NR, WIDE_PANELS};
use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use core::ptr::read_unaligned;

#[inline(always)]
unsafe fn bcast4(p: *const i8) -> i32 {
    read_unaligned(p as *const i32)
}

crate::simd::safe_wrappers! {
    cpu: crate::simd::probe::has_avx2(), else: crate::simd::scalar;

    fn dot_tile(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) =>
        dot_w16_avx2::<1>(panel.as_ptr(), x, out.as_mut_ptr(), NR);

    fn dot_tile_wide(panels: &[u8], x: &Rows<i8>, out: &mut TileWide) =>
        dot_w16_avx2::<WIDE_PANELS>(panels.as_ptr(), x, out.as_mut_ptr(), WIDE_PANELS * NR);

    fn matmul_rows(
        a: &[u8],
        signed: bool,
        m: usize,
        b: &[i8],
        kn: (usize, usize),
        c0: usize,
        out: &mut [i32],
    ) => {
        match (m, signed) {
            (1, false) => rows_avx2::<1, false>(a, b, kn, c0, out),
            (2, false) => rows_avx2::<2, false>(a, b, kn, c0, out),
            (3, false) => rows_avx2::<3, false>(a, b, kn, c0, out),
            (_, false) => rows_avx2::<4, false>(a, b, kn, c0, out),
            (1, true) => rows_avx2::<1, true>(a, b, kn, c0, out),
            (2, true) => rows_avx2::<2, true>(a, b, kn, c0, out),
            (3, true) => rows_avx2::<3, true>(a, b, kn, c0, out),
            (_, true) => rows_avx2::<4, true>(a, b, kn, c0, out),
        }
    };

    fn linear_tile(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) => {
        if panel.bits == 4 {
            linear_w4_avx2(panel, x, xsum, out)
        } else {
            linear_w8_avx2(panel, x, xsum, out)
        }
    };

    fn linear_tile_f32(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) =>
        linear_f32_avx2(panel, x, out);
}

/// The float-mode tile (W4A16 / W8A16): one row (GEMV) decodes and multiplies in one pass over
/// the panel ([`f32_gemv_avx2`]); more rows decode each chunk once into an L1 buffer and run
/// their FMA chains over it ([`f32_rows_avx2`]). Either way `w = (p - zero) * scale` as
/// `dequantize` computes it, and `acc[k % 4] = fma(x[k], w[k], acc[k % 4])` per output.
#[target_feature(enable = "avx2,fma")]
unsafe fn linear_f32_avx2(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) {
    if x.rows == 1 {
        if panel.bits == 4 {
            f32_gemv_avx2::<true>(panel, x, out)
        } else {
            f32_gemv_avx2::<false>(panel, x, out)
        }
    } else {
        f32_rows_avx2(panel, x, out)
    }
}

/// `vpshufb` controls that move byte `c` of each 32-bit word to its low byte, zeros above: the
/// code of `k = 4t + c` (or `8t + c` of a nibble plane) for the 8 columns of a half-panel.
#[inline(always)]
unsafe fn byte_ctl(c: usize) -> __m256i {
    let z = -128i8; // any byte with the top bit set: zero
    let c = c as i8;
    _mm256_setr_epi8(
        c,
        z,
        z,
        z,
        4 + c,
        z,
        z,
        z,
        8 + c,
        z,
        z,
        z,
        12 + c,
        z,
        z,
        z,
        c,
        z,
        z,
        z,
        4 + c,
        z,
        z,
        z,
        8 + c,
        z,
        z,
        z,
        12 + c,
        z,
        z,
        z,
    )
}

/// `(p - zero) * scale` for the 8 codes in the low bytes of the 32-bit words of `codes`.
#[inline(always)]
unsafe fn dequant8(codes: __m256i, scale: __m256, zero: __m256) -> __m256 {
    _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(codes), zero), scale)
}

/// How far ahead (bytes) the one-row float tile prefetches the panel it streams.
const F32_PF: usize = 4096;

/// One row: per segment, per block of the panel (8 `k` of a 4-bit panel, 4 of an 8-bit one),
/// each 8-column half decoded with one `vpshufb` per `k` (after splitting the nibbles), then
/// converted, dequantized and multiplied into the four partial sums of its columns.
///
/// Port bound (W4A16): per 16 weights (two ymm) two each of `vpshufb`, `vcvtdq2ps`, `vsubps`,
/// `vmulps`, `vfmadd` plus 3/4 of a nibble split (`vpsrlw`, two `vpand` per 32 bytes) is 10.75
/// vector uops over ports 0, 1 and 5: at least 3.6 cycles per 16 weights (4.5 multiply-adds a
/// cycle), below the read bandwidth of one core; the broadcasts of `x` are loads.
#[inline(always)]
unsafe fn f32_gemv_avx2<const NIBBLES: bool>(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) {
    let low = _mm256_set1_epi8(0x0f);
    let ctl = [byte_ctl(0), byte_ctl(1), byte_ctl(2), byte_ctl(3)];
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let xp = x.data.as_ptr();
    let bpk = panel.bytes_per_k();
    let kpb = if NIBBLES { 8 } else { 4 }; // k per 64-byte block
    let (mut k0, mut b0) = (0usize, 0usize);
    for (s, &len) in panel.seg_len.iter().enumerate() {
        let len = len as usize;
        let w = panel.codes.as_ptr().add(b0);
        let grid = [0, 1].map(|h| {
            (
                _mm256_loadu_ps(panel.scale.as_ptr().add(s * NR + 8 * h)),
                _mm256_loadu_ps(panel.zero.as_ptr().add(s * NR + 8 * h)),
            )
        });
        for b in 0..len / kpb {
            let blk = w.add(64 * b);
            _mm_prefetch::<_MM_HINT_T0>(blk.add(F32_PF) as *const i8);
            let xk = xp.add(k0 + kpb * b);
            for (h, &(scale, zero)) in grid.iter().enumerate() {
                let v = _mm256_loadu_si256(blk.add(32 * h) as *const __m256i);
                let a = &mut acc[h];
                if NIBBLES {
                    let lo = _mm256_and_si256(v, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                    for c in 0..4 {
                        let wv = dequant8(_mm256_shuffle_epi8(lo, ctl[c]), scale, zero);
                        a[c] = _mm256_fmadd_ps(_mm256_set1_ps(*xk.add(c)), wv, a[c]);
                    }
                    for c in 0..4 {
                        let wv = dequant8(_mm256_shuffle_epi8(hi, ctl[c]), scale, zero);
                        a[c] = _mm256_fmadd_ps(_mm256_set1_ps(*xk.add(4 + c)), wv, a[c]);
                    }
                } else {
                    for c in 0..4 {
                        let wv = dequant8(_mm256_shuffle_epi8(v, ctl[c]), scale, zero);
                        a[c] = _mm256_fmadd_ps(_mm256_set1_ps(*xk.add(c)), wv, a[c]);
                    }
                }
            }
        }
        k0 += len;
        b0 += len * bpk;
    }
    for (h, a) in acc.iter().enumerate() {
        let sum = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), sum);
    }
}

/// `k` per chunk of the several-row float tile: `[F32_CHUNK][NR]` decoded floats (16 KiB).
const F32_CHUNK: usize = 256;

/// Several rows: each chunk of a segment is decoded once into an L1 buffer, then every pair of
/// rows runs over it one 8-column half at a time (8 accumulators, one load of weights per two
/// FMAs).
#[inline(always)]
unsafe fn f32_rows_avx2(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) {
    let mut buf = [[_mm256_setzero_ps(); 2]; F32_CHUNK];
    let mut acc = [[[_mm256_setzero_ps(); 4]; 2]; gemm::MR];
    let low = _mm256_set1_epi8(0x0f);
    let ctl = [byte_ctl(0), byte_ctl(1), byte_ctl(2), byte_ctl(3)];
    let bpk = panel.bytes_per_k();
    let (mut k0, mut b0) = (0usize, 0usize);
    for (s, &len) in panel.seg_len.iter().enumerate() {
        let len = len as usize;
        let grid = [0, 1].map(|h| {
            (
                _mm256_loadu_ps(panel.scale.as_ptr().add(s * NR + 8 * h)),
                _mm256_loadu_ps(panel.zero.as_ptr().add(s * NR + 8 * h)),
            )
        });
        let mut c0 = 0;
        while c0 < len {
            let n = F32_CHUNK.min(len - c0);
            let codes = panel.codes.as_ptr().add(b0 + c0 * bpk);
            if panel.bits == 4 {
                for t in 0..n / 8 {
                    for (h, &(scale, zero)) in grid.iter().enumerate() {
                        let v = _mm256_loadu_si256(codes.add(64 * t + 32 * h) as *const __m256i);
                        let lo = _mm256_and_si256(v, low);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                        for c in 0..4 {
                            buf[8 * t + c][h] =
                                dequant8(_mm256_shuffle_epi8(lo, ctl[c]), scale, zero);
                            buf[8 * t + 4 + c][h] =
                                dequant8(_mm256_shuffle_epi8(hi, ctl[c]), scale, zero);
                        }
                    }
                }
            } else {
                for t in 0..n / 4 {
                    for (h, &(scale, zero)) in grid.iter().enumerate() {
                        let v = _mm256_loadu_si256(codes.add(64 * t + 32 * h) as *const __m256i);
                        for c in 0..4 {
                            buf[4 * t + c][h] =
                                dequant8(_mm256_shuffle_epi8(v, ctl[c]), scale, zero);
                        }
                    }
                }
            }
            let mut m0 = 0;
            while m0 < x.rows {
                let rows = (x.rows - m0).min(2);
                let xp = x.data.as_ptr().add(m0 * x.stride + k0 + c0);
                for h in 0..2 {
                    if rows == 2 {
                        f32_pass_avx2::<2>(&buf, h, n, xp, x.stride, &mut acc[m0..m0 + 2]);
                    } else {
                        f32_pass_avx2::<1>(&buf, h, n, xp, x.stride, &mut acc[m0..m0 + 1]);
                    }
                }
                m0 += rows;
            }
            c0 += n;
        }
        k0 += len;
        b0 += len * bpk;
    }
    for (m, a) in acc.iter().enumerate().take(x.rows) {
        for (h, a) in a.iter().enumerate() {
            let sum = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
            _mm256_storeu_ps(out.as_mut_ptr().add(m * NR + 8 * h), sum);
        }
    }
}

/// `R` rows (at `x`, `stride` apart) over `n` decoded values of `k`, half `h` of the columns:
/// `acc[r][h][k % 4] = fma(x[k], w[k], acc[r][h][k % 4])`.
#[inline(always)]
unsafe fn f32_pass_avx2<const R: usize>(
    buf: &[[__m256; 2]; F32_CHUNK],
    h: usize,
    n: usize,
    x: *const f32,
    stride: usize,
    acc: &mut [[[__m256; 4]; 2]],
) {
    let mut a = [[_mm256_setzero_ps(); 4]; R];
    for r in 0..R {
        a[r] = acc[r][h];
    }
    for q in 0..n / 4 {
        for c in 0..4 {
            let w = buf[4 * q + c][h];
            for r in 0..R {
                let xv = _mm256_set1_ps(*x.add(r * stride + 4 * q + c));
                a[r][c] = _mm256_fmadd_ps(xv, w, a[r][c]);
            }
        }
    }
    for r in 0..R {
        acc[r][h] = a[r];
    }
}

/// W4A8: the integer-mode tile over a 4-bit panel, in passes of up to [`W4_ROWS`] rows, each
/// specialised for its row count.
#[target_feature(enable = "avx2,fma")]
unsafe fn linear_w4_avx2(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) {
    let mut r0 = 0;
    while r0 < x.rows {
        let rows = W4_ROWS.min(x.rows - r0);
        match rows {
            1 => w4_rows::<1, 2>(panel, x, xsum, r0, out),
            2 => w4_rows::<2, 2>(panel, x, xsum, r0, out),
            3 => w4_rows::<3, 1>(panel, x, xsum, r0, out),
            _ => w4_rows::<4, 1>(panel, x, xsum, r0, out),
        }
        r0 += rows;
    }
}

/// Rows per pass of the W4A8 tile: 4 rows over one 8-column half of the panel hold 4 int16 and
/// 4 int32 accumulators, two decoded weight vectors and two broadcasts (13 of the 16 ymm).
const W4_ROWS: usize = 4;

/// Blocks (8 `k` each) whose `vpmaddubsw` pair sums are added in int16 before one `vpmaddwd`:
/// a 4-bit code times an int8 is at most 15·128 in magnitude, a pair sum 3840, and the
/// 2 · W4_RUN = 8 pair sums of a lane at most 30720 < 32767: exact, never saturated.
const W4_RUN: usize = 4;

/// How far ahead (bytes) the one-row W4A8 tile prefetches the panel it streams.
const W4_PF: usize = 4096;

/// The raw sums of one 4-bit block (`k = 8b..8b + 8`, 64 bytes at `blk`) for `R` rows at `x`
/// (`stride` apart, already at the block's `k`), halves `h0..h0 + H` of the panel, added into
/// the int16 accumulators `acc` (the caller bounds how many blocks they take).
#[inline(always)]
unsafe fn w4_block<const R: usize, const H: usize>(
    blk: *const u8,
    h0: usize,
    x: *const i8,
    stride: usize,
    low: __m256i,
    acc: &mut [[__m256i; H]; R],
) {
    for h in 0..H {
        let v = _mm256_loadu_si256(blk.add(32 * (h0 + h)) as *const __m256i);
        let w0 = _mm256_and_si256(v, low);
        let w1 = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
        for r in 0..R {
            let x0 = _mm256_set1_epi32(bcast4(x.add(r * stride)));
            let x1 = _mm256_set1_epi32(bcast4(x.add(r * stride + 4)));
            let p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, x0), _mm256_maddubs_epi16(w1, x1));
            acc[r][h] = _mm256_add_epi16(acc[r][h], p);
        }
    }
}

/// `R` rows (from `r0`) of the W4A8 tile, `H` halves of the panel (8 columns each) at a time:
/// per segment, runs of [`W4_RUN`] blocks summed in int16, widened once by `vpmaddwd`, the
/// segment's int32 sums then folded into the float accumulators in the fixed order.
#[inline(always)]
unsafe fn w4_rows<const R: usize, const H: usize>(
    panel: &Panel,
    x: &Rows<i8>,
    xsum: &[f32],
    r0: usize,
    out: &mut TileF32,
) {
    let segs = panel.seg_len.len();
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let zero_all = panel.zero_all.map(|z| _mm256_set1_ps(-z));
    let stride = x.stride;
    for h0 in (0..2).step_by(H) {
        let mut facc = [[_mm256_setzero_ps(); H]; R];
        let (mut k0, mut b0) = (0usize, 0usize);
        for s in 0..segs {
            let len = *panel.seg_len.get_unchecked(s) as usize;
            let w = panel.codes.as_ptr().add(b0);
            let xp = x.data.as_ptr().add(r0 * stride + k0);
            let blocks = len / 8;
            let mut acc = [[_mm256_setzero_si256(); H]; R];
            let mut b = 0;
            while b < blocks {
                let run = W4_RUN.min(blocks - b);
                let mut a16 = [[_mm256_setzero_si256(); H]; R];
                if run == W4_RUN {
                    for i in 0..W4_RUN {
                        let blk = w.add(64 * (b + i));
                        if R == 1 {
                            _mm_prefetch::<_MM_HINT_T0>(blk.add(W4_PF) as *const i8);
                        }
                        w4_block::<R, H>(blk, h0, xp.add(8 * (b + i)), stride, low, &mut a16);
                    }
                } else {
                    for i in 0..run {
                        let blk = w.add(64 * (b + i));
                        w4_block::<R, H>(blk, h0, xp.add(8 * (b + i)), stride, low, &mut a16);
                    }
                }
                for r in 0..R {
                    for h in 0..H {
                        acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(a16[r][h], ones));
                    }
                }
                b += run;
            }
            for h in 0..H {
                let at = s * NR + 8 * (h0 + h);
                let scale = _mm256_loadu_ps(panel.scale.as_ptr().add(at));
                // -(scale · z) == scale · (-z) exactly: rounding is symmetric in sign.
                let zscale = match zero_all {
                    Some(neg_z) => _mm256_mul_ps(scale, neg_z),
                    None => _mm256_loadu_ps(panel.zscale.as_ptr().add(at)),
                };
                for r in 0..R {
                    let xs = _mm256_set1_ps(*xsum.get_unchecked((r0 + r) * segs + s));
                    let raw = _mm256_cvtepi32_ps(acc[r][h]);
                    facc[r][h] = _mm256_fmadd_ps(scale, raw, facc[r][h]);
                    facc[r][h] = _mm256_fmadd_ps(zscale, xs, facc[r][h]);
                }
            }
            k0 += len;
            b0 += len * 8;
        }
        for r in 0..R {
            for h in 0..H {
                let o = out.as_mut_ptr().add((r0 + r) * NR + 8 * (h0 + h));
                _mm256_storeu_ps(o, facc[r][h]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8-bit panels: int16 `vpmaddwd` (exact, no `vpmaddubsw`)

/// `k` per chunk of the 16-bit tiles: [`WIDE_PANELS`] panels of it widened to int16 take
/// 16 KiB and [`MR`] rows 2 KiB, in L1 next to the 8-bit panels they come from.
const CH: usize = 128;

/// Rows per register pass over a widened chunk: 4 accumulators per row (16 columns as
/// (`k0k1`, `k2k3`) pairs), 12 for 3 rows, plus the broadcast and a panel vector.
const R16: usize = 2;

/// How far ahead (bytes) the one- and two-row tiles prefetch the panel they stream.
const PF16: usize = 4096;

/// The accumulators of a tile: `[MR][WIDE_PANELS][4]` (row, panel, quarter of the panel).
type Acc16 = [[[__m256i; 4]; WIDE_PANELS]; MR];

/// Zero-extends `n` values of `k` (a multiple of 4) of an 8-bit panel at `w` into `dst`:
/// each 32 bytes (a quad of 8 columns) become two vectors of int16 by in-lane unpacks, the
/// first holding columns 0, 1, 4, 5 and the second 2, 3, 6, 7 as (`k0 k1 k2 k3`) each.
#[inline(always)]
unsafe fn widen_panel(w: *const u8, n: usize, dst: *mut __m256i) {
    let zero = _mm256_setzero_si256();
    for b in 0..n / 2 {
        let v = _mm256_loadu_si256(w.add(32 * b) as *const __m256i);
        _mm256_store_si256(dst.add(2 * b), _mm256_unpacklo_epi8(v, zero));
        _mm256_store_si256(dst.add(2 * b + 1), _mm256_unpackhi_epi8(v, zero));
    }
}

/// Sign-extends `n` activations (a multiple of 8) at `x` to int16 at `dst`.
#[inline(always)]
unsafe fn widen_row(x: *const i8, n: usize, dst: *mut i16) {
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm_loadu_si128(x.add(i) as *const __m128i);
        _mm256_storeu_si256(dst.add(i) as *mut __m256i, _mm256_cvtepi8_epi16(v));
        i += 16;
    }
    if i < n {
        let v = _mm_loadl_epi64(x.add(i) as *const __m128i);
        _mm_storeu_si128(dst.add(i) as *mut __m128i, _mm_cvtepi8_epi16(v));
    }
}

/// The 16 int32 column sums of one row and panel from its 4 pair accumulators (columns
/// 0 1 4 5, 2 3 6 7, 8 9 12 13, 10 11 14 15, each as (`k0k1`, `k2k3`) pairs): `vphaddd` adds
/// the pairs and its in-lane order is the column order.
#[inline(always)]
unsafe fn columns16(a: &[__m256i; 4]) -> [__m256i; 2] {
    [_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3])]
}

/// `R` rows (int16 at `xb`, [`CH`] apart) over `kq` quads of one widened panel chunk at `wb`,
/// added into (or, when `first`, written to) `acc[r][i]`.
#[inline(always)]
unsafe fn pass16<const R: usize>(
    wb: *const __m256i,
    xb: *const i16,
    kq: usize,
    acc: &mut [[[__m256i; 4]; WIDE_PANELS]],
    i: usize,
    first: bool,
) {
    let mut a = [[_mm256_setzero_si256(); 4]; R];
    if !first {
        for r in 0..R {
            a[r] = acc[r][i];
        }
    }
    // Two quads a step (`kq` is even): half the loop's own instructions.
    for t2 in 0..kq / 2 {
        for t in [2 * t2, 2 * t2 + 1] {
            for r in 0..R {
                let x = _mm256_set1_epi64x(read_unaligned(xb.add(r * CH + 4 * t) as *const i64));
                for c in 0..4 {
                    let w = _mm256_load_si256(wb.add(4 * t + c));
                    a[r][c] = _mm256_add_epi32(a[r][c], _mm256_madd_epi16(w, x));
                }
            }
        }
    }
    for r in 0..R {
        acc[r][i] = a[r];
    }
}

/// Raw sums of `rows` rows (at `x`, `stride` apart) over `len` values of `k` of `P` 8-bit
/// panels (at `w`, `ps` bytes apart) into `acc[..rows][..P]`: chunk by chunk, the panels and
/// rows are widened into L1 buffers, then passes of [`R16`] rows run over each panel.
#[inline(always)]
unsafe fn raw16<const P: usize>(
    w: *const u8,
    ps: usize,
    x: *const i8,
    stride: usize,
    len: usize,
    rows: usize,
    acc: &mut Acc16,
) {
    let mut wbuf = MaybeUninit::<[__m256i; WIDE_PANELS * CH]>::uninit();
    let mut xbuf = MaybeUninit::<[i16; MR * CH]>::uninit();
    let wb = wbuf.as_mut_ptr() as *mut __m256i;
    let xb = xbuf.as_mut_ptr() as *mut i16;
    let mut c0 = 0;
    while c0 < len {
        let n = CH.min(len - c0);
        for i in 0..P {
            widen_panel(w.add(i * ps + NR * c0), n, wb.add(i * CH));
        }
        for r in 0..rows {
            widen_row(x.add(r * stride + c0), n, xb.add(r * CH));
        }
        for i in 0..P {
            let mut r0 = 0;
            while r0 < rows {
                let left = rows - r0;
                // 4 rows as 2 + 2, not 3 + 1 (a one-row pass is bound by its adds' latency).
                let r = if left == 4 { 2 } else { left.min(R16) };
                let (wi, xr, a) = (wb.add(i * CH), xb.add(r0 * CH), &mut acc[r0..]);
                match r {
                    1 => pass16::<1>(wi, xr, n / 4, a, i, c0 == 0),
                    2 => pass16::<2>(wi, xr, n / 4, a, i, c0 == 0),
                    _ => pass16::<R16>(wi, xr, n / 4, a, i, c0 == 0),
                }
                r0 += r;
            }
        }
        c0 += n;
    }
}

/// Raw sums of `R` rows over `kq` quads of one 8-bit panel, widened on the fly (one- and
/// two-row tiles: nothing to share a widened chunk with), prefetching the panel ahead.
#[inline(always)]
unsafe fn fly16<const R: usize>(
    w: *const u8,
    x: *const i8,
    stride: usize,
    kq: usize,
) -> [[__m256i; 4]; R] {
    let mut a = [[_mm256_setzero_si256(); 4]; R];
    for t in 0..kq {
        _mm_prefetch::<_MM_HINT_T0>(w.add(64 * t + PF16) as *const i8);
        let mut xv = [_mm256_setzero_si256(); R];
        for r in 0..R {
            // The quad as 4 int16, twice per 128-bit lane: a 64-bit broadcast.
            let q = _mm_set1_epi32(bcast4(x.add(r * stride + 4 * t)));
            xv[r] = _mm256_cvtepi8_epi16(q);
        }
        for h in 0..2 {
            let v = _mm256_loadu_si256(w.add(64 * t + 32 * h) as *const __m256i);
            let zero = _mm256_setzero_si256();
            let wv = [_mm256_unpacklo_epi8(v, zero), _mm256_unpackhi_epi8(v, zero)];
            for (c, wv) in wv.into_iter().enumerate() {
                for r in 0..R {
                    let ac = &mut a[r][2 * h + c];
                    *ac = _mm256_add_epi32(*ac, _mm256_madd_epi16(wv, xv[r]));
                }
            }
        }
    }
    a
}

/// `dot_tile` (`P = 1`) and `dot_tile_wide` (`P = WIDE_PANELS`): row `m`'s sums with panel
/// `i` go to `out[m * ostride + i * NR..]`.
#[target_feature(enable = "avx2")]
unsafe fn dot_w16_avx2<const P: usize>(
    panels: *const u8,
    x: &Rows<i8>,
    out: *mut i32,
    ostride: usize,
) {
    let ps = x.kp * NR;
    let kq = x.kp / 4;
    let xp = x.data.as_ptr();
    let store = |r: usize, i: usize, a: &[__m256i; 4]| {
        let [lo, hi] = columns16(a);
        let o = out.add(r * ostride + i * NR);
        _mm256_storeu_si256(o as *mut __m256i, lo);
        _mm256_storeu_si256(o.add(8) as *mut __m256i, hi);
    };
    if x.rows <= 2 {
        for i in 0..P {
            let w = panels.add(i * ps);
            if x.rows == 1 {
                let a = fly16::<1>(w, xp, x.stride, kq);
                store(0, i, &a[0]);
            } else {
                let a = fly16::<2>(w, xp, x.stride, kq);
                store(0, i, &a[0]);
                store(1, i, &a[1]);
            }
        }
        return;
    }
    let mut acc = MaybeUninit::<Acc16>::uninit();
    // SAFETY: `raw16` writes every `acc[r][i]` (r < rows, i < P) before reading it.
    let acc = &mut *acc.as_mut_ptr();
    raw16::<P>(panels, ps, xp, x.stride, x.kp, x.rows, acc);
    for r in 0..x.rows {
        for i in 0..P {
            store(r, i, &acc[r][i]);
        }
    }
}

/// One segment's float update of row `r`: `f = fma(scale, raw, f)`, then
/// `f = fma(zscale, xs, f)`, on the 16 columns at `o`.
#[inline(always)]
unsafe fn update16(
    raw: [__m256i; 2],
    scale: [__m256; 2],
    zscale: [__m256; 2],
    xs: f32,
    o: *mut f32,
) {
    let xs = _mm256_set1_ps(xs);
    for h in 0..2 {
        let mut f = _mm256_loadu_ps(o.add(8 * h));
        f = _mm256_fmadd_ps(scale[h], _mm256_cvtepi32_ps(raw[h]), f);
        f = _mm256_fmadd_ps(zscale[h], xs, f);
        _mm256_storeu_ps(o.add(8 * h), f);
    }
}

/// W8A8: the integer-mode tile over an 8-bit panel, segment by segment (the order of
/// `simd::gemm`): one or two rows widen the panel on the fly, more rows chunk by chunk.
#[target_feature(enable = "avx2,fma")]
unsafe fn linear_w8_avx2(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) {
    let segs = panel.seg_len.len();
    let rows = x.rows;
    out[..rows * NR].fill(0.0);
    let op = out.as_mut_ptr();
    // -(scale · z) == scale · (-z) exactly: rounding is symmetric in sign.
    let neg_z = panel.zero_all.map(|z| _mm256_set1_ps(-z));
    let mut acc = MaybeUninit::<Acc16>::uninit();
    // SAFETY: `raw16` writes every `acc[r][0]` (r < rows) before reading it.
    let acc = &mut *acc.as_mut_ptr();
    let (mut k0, mut b0) = (0usize, 0usize);
    for s in 0..segs {
        let len = *panel.seg_len.get_unchecked(s) as usize;
        let w = panel.codes.as_ptr().add(b0);
        let xp = x.data.as_ptr().add(k0);
        let sp = panel.scale.as_ptr().add(s * NR);
        let scale = [_mm256_loadu_ps(sp), _mm256_loadu_ps(sp.add(8))];
        let zscale = match neg_z {
            Some(nz) => [_mm256_mul_ps(scale[0], nz), _mm256_mul_ps(scale[1], nz)],
            None => {
                let zp = panel.zscale.as_ptr().add(s * NR);
                [_mm256_loadu_ps(zp), _mm256_loadu_ps(zp.add(8))]
            }
        };
        let xs = |r: usize| *xsum.get_unchecked(r * segs + s);
        let o = |r: usize| op.add(r * NR);
        match rows {
            1 => {
                let a = fly16::<1>(w, xp, x.stride, len / 4);
                update16(columns16(&a[0]), scale, zscale, xs(0), o(0));
            }
            2 => {
                let a = fly16::<2>(w, xp, x.stride, len / 4);
                for r in 0..2 {
                    update16(columns16(&a[r]), scale, zscale, xs(r), o(r));
                }
            }
            _ => {
                raw16::<1>(w, 0, xp, x.stride, len, rows, acc);
                for r in 0..rows {
                    update16(columns16(&acc[r][0]), scale, zscale, xs(r), o(r));
                }
            }
        }
        k0 += len;
        b0 += len * NR;
    }
}

/// Pairs of `k` per block of [`rows_avx2`]: the accumulators of a 16-column group stay in
/// registers over the block, and the block's `2 · RP` rows of `b` (each a page apart when a
/// row of `b` is 4 KiB) in L1 and the TLB while every group reads them. Measured at K = N =
/// 4096, one thread: 8 pairs 17 G MAC/s at M = 1 and 39 at M = 4, 32 pairs 10 and 28.
const RP: usize = 8;

/// `matmul_rows`: `R` rows of `a` against up to [`gemm::ROWS_COLS`] columns of the unpacked
/// `b`, read in place. Per pair of `k`, 16 bytes of each of the two rows of `b` are
/// interleaved (`vpunpcklbw`) and sign-extended into int16 pairs (`b[k][c]`, `b[k+1][c]`), 8
/// columns a vector, so that `vpmaddwd` against the broadcast int16 pair of `a` gives 8 exact
/// int32 column sums. Signed `a` computes `Σ a·b` and adds `128·Σa` at the end; columns past
/// the last whole group of 16 are summed in scalar code.
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2<const R: usize, const SIGNED: bool>(
    a: &[u8],
    b: &[i8],
    (k, n): (usize, usize),
    c0: usize,
    out: &mut [i32],
) {
    let w = out.len() / R;
    let av = |r: usize, kk: usize| -> i32 {
        let v = *a.get_unchecked(r * k + kk);
        if SIGNED {
            v as i8 as i32
        } else {
            v as i32
        }
    };
    // Each row's pairs of `k` as int16 pairs (the last one zero-padded when `k` is odd).
    let pairs = k.div_ceil(2);
    let mut ap = vec![0i32; R * pairs];
    for r in 0..R {
        for p in 0..pairs {
            let lo = av(r, 2 * p) as u16 as u32;
            let hi = if 2 * p + 1 < k {
                av(r, 2 * p + 1) as u16 as u32
            } else {
                0
            };
            ap[r * pairs + p] = (lo | hi << 16) as i32;
        }
    }
    let groups = w / 16;
    let bp = b.as_ptr().add(c0);
    let app = ap.as_ptr();
    let mut p0 = 0;
    while p0 < pairs {
        let p1 = (p0 + RP).min(pairs);
        for g in 0..groups {
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            if p0 > 0 {
                for r in 0..R {
                    let o = out.as_ptr().add(r * w + 16 * g);
                    acc[r] = [
                        _mm256_loadu_si256(o as *const __m256i),
                        _mm256_loadu_si256(o.add(8) as *const __m256i),
                    ];
                }
            }
            for p in p0..p1 {
                let src = bp.add(2 * p * n + 16 * g);
                let r0 = _mm_loadu_si128(src as *const __m128i);
                let r1 = if 2 * p + 1 < k {
                    _mm_loadu_si128(src.add(n) as *const __m128i)
                } else {
                    _mm_setzero_si128()
                };
                let u0 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(r0, r1));
                let u1 = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(r0, r1));
                for r in 0..R {
                    let x = _mm256_set1_epi32(*app.add(r * pairs + p));
                    acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(u0, x));
                    acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(u1, x));
                }
            }
            for r in 0..R {
                let o = out.as_mut_ptr().add(r * w + 16 * g);
                _mm256_storeu_si256(o as *mut __m256i, acc[r][0]);
                _mm256_storeu_si256(o.add(8) as *mut __m256i, acc[r][1]);
            }
        }
        p0 = p1;
    }
    for r in 0..R {
        for j in 16 * groups..w {
            let mut s = 0i32;
            for kk in 0..k {
                let bv = *b.get_unchecked(kk * n + c0 + j) as i32;
                s = s.wrapping_add(av(r, kk).wrapping_mul(bv));
            }
            *out.get_unchecked_mut(r * w + j) = s;
        }
        if SIGNED {
            let fix = (0..k)
                .fold(0i32, |s, kk| s.wrapping_add(av(r, kk)))
                .wrapping_mul(128);
            for v in out[r * w..(r + 1) * w].iter_mut() {
                *v = v.wrapping_add(fix);
            }
        }
    }
}

/// [`gemm::PackQuad4`] with AVX2: per 32 columns, the four rows' bytes interleaved into quads
/// within each 128-bit lane (`unpack` by 8 then 16 bits), then the lanes regrouped per panel.
///
/// # Safety
/// As [`gemm::PackQuad4`]; the CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn pack_quad4_avx2(src: *const i8, n: usize, dst: *mut u8, panel_stride: usize) {
    let flip = _mm256_set1_epi8(-128);
    for h in 0..2 {
        let row = |c: usize| {
            let v = _mm256_loadu_si256(src.add(c * n + 32 * h) as *const __m256i);
            _mm256_xor_si256(v, flip)
        };
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        let (t0, t1) = (_mm256_unpacklo_epi8(r0, r1), _mm256_unpackhi_epi8(r0, r1));
        let (t2, t3) = (_mm256_unpacklo_epi8(r2, r3), _mm256_unpackhi_epi8(r2, r3));
        // Lane L of u0..u3: columns 16L + 0..4, 4..8, 8..12, 12..16, as quads.
        let (u0, u1) = (_mm256_unpacklo_epi16(t0, t2), _mm256_unpackhi_epi16(t0, t2));
        let (u2, u3) = (_mm256_unpacklo_epi16(t1, t3), _mm256_unpackhi_epi16(t1, t3));
        let blocks = [
            [
                _mm256_permute2x128_si256::<0x20>(u0, u1),
                _mm256_permute2x128_si256::<0x20>(u2, u3),
            ],
            [
                _mm256_permute2x128_si256::<0x31>(u0, u1),
                _mm256_permute2x128_si256::<0x31>(u2, u3),
            ],
        ];
        for (l, b) in blocks.into_iter().enumerate() {
            let d = dst.add((2 * h + l) * panel_stride);
            _mm256_storeu_si256(d as *mut __m256i, b[0]);
            _mm256_storeu_si256(d.add(32) as *mut __m256i, b[1]);
        }
    }
}

/// [`gemm::PackPanels`] with [`pack_quad4_avx2`] for whole groups of four panels.
pub fn pack_i8_panels_avx2(
    b: &[i8],
    kn: (usize, usize),
    n0: usize,
    panels: usize,
    kp: usize,
    out: &mut [u8],
) {
    let quad4 = crate::simd::probe::has_avx2().then_some(pack_quad4_avx2 as gemm::PackQuad4);
    gemm::pack_panels_with(b, kn, n0, panels, kp, out, quad4)
}

/// The W4A8 and float-mode tiles of this file (and the AVX-512 float tile) against the scalar
/// oracle, bit for bit.
#[cfg(test)]
mod linear_tests {
    use crate::simd::gemm::{Panel, Rows, TileF32, K_ALIGN, MAX_SEGMENT, MR, NR};
    use crate::simd::scalar;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 32) as u32
        }
        fn int(&mut self, lo: i32, hi: i32) -> i32 {
            lo + (self.next() % (hi - lo + 1) as u32) as i32
        }
        fn unit(&mut self) -> f32 {
            self.next() as f32 / 4294967296.0
        }
    }

    /// How codes and activations are drawn.
    #[derive(Clone, Copy, Debug)]
    enum Data {
        Random,
        /// Every code the largest against every activation -128 (or 127), and the reverse.
        Extreme(u8, i8),
    }

    /// A panel of `bits` over segments `seg_len`, its grid (shared integer zero points when
    /// `shared`, else per-column zero points, some fractional), and `rows` rows of each kind.
    struct Case {
        bits: u32,
        seg_len: Vec<u32>,
        codes: Vec<u8>,
        scale: Vec<f32>,
        zero: Vec<f32>,
        zscale: Vec<f32>,
        zero_all: Option<f32>,
        rows: usize,
        kp: usize,
        stride: usize,
        xi: Vec<i8>,
        xsum: Vec<f32>,
        xf: Vec<f32>,
    }

    impl Case {
        fn new(
            rng: &mut Rng,
            bits: u32,
            seg_len: &[u32],
            rows: usize,
            data: Data,
            shared: bool,
        ) -> Case {
            let kp: usize = seg_len.iter().map(|&l| l as usize).sum();
            let segs = seg_len.len();
            let top = (1u32 << bits) - 1;
            let mut codes = vec![0u8; kp * NR * bits as usize / 8];
            match data {
                Data::Random => codes.iter_mut().for_each(|c| *c = rng.next() as u8),
                Data::Extreme(p, _) => {
                    let p = p.min(top as u8);
                    let byte = if bits == 4 { p | p << 4 } else { p };
                    codes.fill(byte);
                }
            }
            let scale: Vec<f32> = (0..segs * NR).map(|_| (rng.unit() + 0.01) * 0.05).collect();
            let zshared = (top / 2 + 1) as f32;
            let zero: Vec<f32> = (0..segs * NR)
                .map(|i| {
                    if shared {
                        zshared
                    } else if i % 5 == 2 {
                        rng.unit() * top as f32
                    } else {
                        rng.int(0, top as i32) as f32
                    }
                })
                .collect();
            let zscale = scale.iter().zip(&zero).map(|(s, z)| -s * z).collect();
            let stride = kp + if rows.is_multiple_of(2) { 64 } else { 8 };
            let xi: Vec<i8> = (0..rows * stride)
                .map(|_| match data {
                    Data::Random => rng.next() as i8,
                    Data::Extreme(_, x) => x,
                })
                .collect();
            let mut xsum = vec![0f32; rows * segs];
            for m in 0..rows {
                let mut k0 = 0;
                for (s, &len) in seg_len.iter().enumerate() {
                    let row = &xi[m * stride + k0..m * stride + k0 + len as usize];
                    xsum[m * segs + s] = row.iter().map(|&v| v as i32).sum::<i32>() as f32;
                    k0 += len as usize;
                }
            }
            let xf = xi
                .iter()
                .enumerate()
                .map(|(i, &v)| v as f32 * (1.0 + (i % 13) as f32 * 0.37) / 64.0)
                .collect();
            Case {
                bits,
                seg_len: seg_len.to_vec(),
                codes,
                scale,
                zero,
                zscale,
                zero_all: shared.then_some(zshared),
                rows,
                kp,
                stride,
                xi,
                xsum,
                xf,
            }
        }

        fn panel(&self) -> Panel<'_> {
            Panel {
                codes: &self.codes,
                bits: self.bits,
                seg_len: &self.seg_len,
                scale: &self.scale,
                zero: &self.zero,
                zscale: &self.zscale,
                zero_all: self.zero_all,
            }
        }

        /// Both tiles of `linear_tile` / `linear_tile_f32` against the scalar oracle's.
        fn check(
            &self,
            what: &str,
            int: Option<crate::simd::gemm::LinearTile>,
            float: crate::simd::gemm::LinearTileF32,
        ) {
            let n = self.rows * NR;
            let name = format!(
                "{what}: {} bits, segments {:?}, {} rows, zero_all {:?}",
                self.bits,
                &self.seg_len[..self.seg_len.len().min(6)],
                self.rows,
                self.zero_all
            );
            if let Some(int) = int {
                let x = Rows::strided(&self.xi, self.rows, self.kp, self.stride);
                let (mut want, mut got): (TileF32, TileF32) = ([0.0; MR * NR], [1.0; MR * NR]);
                scalar::gemm::linear_tile(&self.panel(), &x, &self.xsum, &mut want);
                int(&self.panel(), &x, &self.xsum, &mut got);
                for i in 0..n {
                    assert_eq!(
                        want[i].to_bits(),
                        got[i].to_bits(),
                        "{name}, W{}A8 output {i}: {} vs {}",
                        self.bits,
                        want[i],
                        got[i]
                    );
                }
            }
            let x = Rows::strided(&self.xf, self.rows, self.kp, self.stride);
            let (mut want, mut got): (TileF32, TileF32) = ([0.0; MR * NR], [1.0; MR * NR]);
            scalar::gemm::linear_tile_f32(&self.panel(), &x, &mut want);
            float(&self.panel(), &x, &mut got);
            for i in 0..n {
                assert_eq!(
                    want[i].to_bits(),
                    got[i].to_bits(),
                    "{name}, W{}A16 output {i}: {} vs {}",
                    self.bits,
                    want[i],
                    got[i]
                );
            }
        }
    }

    /// Segment lists: the shortest, groups of 32 and 128, shorter last groups, odd numbers of
    /// blocks, and a segment of `MAX_SEGMENT` (plus one more).
    fn segment_lists() -> Vec<Vec<u32>> {
        vec![
            vec![K_ALIGN as u32],
            vec![16],
            vec![24, 8],
            vec![32; 4],
            vec![128, 128, 40],
            vec![40, 72, 8, 256, 264],
            vec![1024],
        ]
    }

    fn run_all(
        what: &str,
        int: Option<crate::simd::gemm::LinearTile>,
        float: crate::simd::gemm::LinearTileF32,
    ) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for seg_len in segment_lists() {
            for rows in 1..=MR {
                for bits in [4, 8] {
                    for shared in [false, true] {
                        let data = [
                            Data::Random,
                            Data::Extreme(15, -128),
                            Data::Extreme(15, 127),
                            Data::Extreme(0, -128),
                            Data::Extreme(255, -128),
                        ];
                        for d in data {
                            Case::new(&mut rng, bits, &seg_len, rows, d, shared)
                                .check(what, int, float);
                        }
                    }
                }
            }
        }
        // Segments of MAX_SEGMENT: the largest int32 sums (15 · 128 · 65536).
        for rows in [1, 3, 4, 8] {
            for d in [Data::Extreme(15, -128), Data::Random] {
                let seg = [MAX_SEGMENT as u32, 8];
                Case::new(&mut rng, 4, &seg, rows, d, rows.is_multiple_of(2))
                    .check(what, int, float);
            }
        }
    }

    #[test]
    fn avx2_linear_tiles_match_scalar() {
        if !crate::simd::probe::has_avx2() {
            return;
        }
        run_all("avx2", Some(super::linear_tile), super::linear_tile_f32);
    }

    #[test]
    fn avx512_float_tile_matches_scalar() {
        if !crate::simd::probe::has_avx512() {
            return;
        }
        run_all(
            "avx512",
            None,
            crate::simd::x86_64::avx512::gemm::linear_tile_f32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::gemm::{TileF32, TileWide, WIDE_ROWS};
    use crate::simd::scalar;

    /// splitmix64.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Depths around the chunk ([`CH`]) boundaries, short and long.
    const KPS: [usize; 10] = [8, 16, 120, 128, 136, 256, 264, 392, 1024, 1032];

    /// (panel bytes, activations) of data kind `kind`: random, or every pair at one end of its
    /// range (`255 × -128` is where `vpmaddubsw` saturates, `0 × -128` where sign tricks slip).
    fn data(rng: &mut Rng, kind: usize, np: usize, nx: usize) -> (Vec<u8>, Vec<i8>) {
        let (p, x): (u8, i8) = match kind {
            1 => (255, -128),
            2 => (0, -128),
            3 => (255, 127),
            _ => {
                let x = rng.bytes(nx).into_iter().map(|v| v as i8).collect();
                return (rng.bytes(np), x);
            }
        };
        (vec![p; np], vec![x; nx])
    }

    #[test]
    fn dot_tiles_equal_scalar() {
        if !crate::simd::probe::has_avx2() {
            return;
        }
        let mut rng = Rng(16);
        for kp in KPS {
            for rows in 1..=MR {
                for (kind, pad) in [(0, 0), (1, 8), (2, 64), (3, 0), (0, 24)] {
                    let stride = kp + pad;
                    let (panels, x) = data(&mut rng, kind, WIDE_PANELS * kp * NR, rows * stride);
                    let xr = Rows::strided(&x, rows, kp, stride);
                    let what = format!("kp {kp}, rows {rows}, stride {stride}, data {kind}");
                    let (mut want, mut got) = ([0i32; MR * NR], [7i32; MR * NR]);
                    scalar::gemm::dot_tile(&panels[..kp * NR], &xr, &mut want);
                    dot_tile(&panels[..kp * NR], &xr, &mut got);
                    assert_eq!(want[..rows * NR], got[..rows * NR], "dot_tile {what}");
                    if rows <= WIDE_ROWS {
                        let mut want: TileWide = [0; WIDE_ROWS * WIDE_PANELS * NR];
                        let mut got: TileWide = [7; WIDE_ROWS * WIDE_PANELS * NR];
                        scalar::gemm::dot_tile_wide(&panels, &xr, &mut want);
                        dot_tile_wide(&panels, &xr, &mut got);
                        let n = rows * WIDE_PANELS * NR;
                        assert_eq!(want[..n], got[..n], "dot_tile_wide {what}");
                    }
                }
            }
        }
    }

    #[test]
    fn linear_w8_equals_scalar() {
        if !crate::simd::probe::has_avx2() {
            return;
        }
        let mut rng = Rng(8);
        for kp in KPS {
            // One segment, then segments of 8, 32, 136 (straddling chunks) and the rest.
            let mut splits = vec![vec![kp as u32]];
            for seg in [8usize, 32, 136] {
                let mut s = vec![seg as u32; kp / seg];
                if kp % seg != 0 {
                    s.push((kp % seg) as u32);
                }
                splits.push(s);
            }
            for seg_len in &splits {
                let segs = seg_len.len();
                for rows in 1..=MR {
                    let kind = (rows + segs) % 4;
                    let stride = kp + 8 * (rows % 3);
                    let (codes, x) = data(&mut rng, kind, kp * NR, rows * stride);
                    let xr = Rows::strided(&x, rows, kp, stride);
                    let scale: Vec<f32> = (0..segs * NR)
                        .map(|i| 1e-3 * (1 + rng.next() % 1000) as f32 * (1 + i % 3) as f32)
                        .collect();
                    let shared = rows % 2 == 0;
                    let zero: Vec<f32> = (0..segs * NR)
                        .map(|_| {
                            if shared {
                                128.0
                            } else {
                                (rng.next() % 256) as f32
                            }
                        })
                        .collect();
                    let zscale: Vec<f32> = scale.iter().zip(&zero).map(|(s, z)| -(s * z)).collect();
                    let panel = Panel {
                        codes: &codes,
                        bits: 8,
                        seg_len,
                        scale: &scale,
                        zero: &zero,
                        zscale: &zscale,
                        zero_all: shared.then_some(128.0),
                    };
                    let mut xsum = vec![0f32; rows * segs];
                    for m in 0..rows {
                        let mut k0 = 0;
                        for (s, &len) in seg_len.iter().enumerate() {
                            let row = &xr.row(m)[k0..k0 + len as usize];
                            xsum[m * segs + s] = row.iter().map(|&v| v as i32).sum::<i32>() as f32;
                            k0 += len as usize;
                        }
                    }
                    let (mut want, mut got): (TileF32, TileF32) = ([0.0; MR * NR], [7.0; MR * NR]);
                    scalar::gemm::linear_tile(&panel, &xr, &xsum, &mut want);
                    linear_tile(&panel, &xr, &xsum, &mut got);
                    let bits = |t: &TileF32| {
                        t[..rows * NR]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        bits(&want),
                        bits(&got),
                        "kp {kp}, segments {seg_len:?}, rows {rows}, data {kind}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_rows_equal_scalar() {
        if !crate::simd::probe::has_avx2() {
            return;
        }
        let mut rng = Rng(4);
        for k in [1usize, 2, 3, 63, 64, 65, 129] {
            for n in [1usize, 15, 16, 17, 100, 1100] {
                for m in 1..=gemm::ROWS_M {
                    for signed in [false, true] {
                        for kind in 0..4 {
                            let (b, a) = data(&mut rng, kind, k * n, m * k);
                            // The extremes of `a`: -128 signed, 255 unsigned.
                            let a: Vec<u8> = a.iter().map(|&v| v as u8).collect();
                            let b: Vec<i8> = b.iter().map(|&v| v as i8).collect();
                            let c0 = (rng.next() as usize) % n;
                            let w = (n - c0).min(gemm::ROWS_COLS);
                            let mut want = vec![0i32; m * w];
                            let mut got = vec![7i32; m * w];
                            scalar::gemm::matmul_rows(&a, signed, m, &b, (k, n), c0, &mut want);
                            matmul_rows(&a, signed, m, &b, (k, n), c0, &mut got);
                            assert_eq!(
                                want, got,
                                "m {m}, k {k}, n {n}, c0 {c0}, signed {signed}, data {kind}"
                            );
                        }
                    }
                }
            }
        }
    }
}

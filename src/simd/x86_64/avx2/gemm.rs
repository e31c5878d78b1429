//! AVX2 tile kernels of the integer and weight-only matrix products (layouts and the
//! accumulation order are in `simd::gemm`).
//!
//! - AVX2 (also the AVX-512 path without VNNI): `vpmaddubsw` adds pairs of `u8 × i8` products
//!   into int16 with saturation, which would be wrong for 8-bit panels (255·127·2 > 32767).
//!   So every panel byte is split into nibbles first (`p = 16·hi + lo`): a pair of nibble
//!   products is at most 15·128·2 = 3840, never saturates, and `vpmaddwd` by 1 and by 16 widens
//!   and recombines them exactly. 4-bit panels are nibbles already: the two quads of a 64-byte
//!   block share one `vpmaddwd`. Exact for every `u8` panel and `i8` activation, -128 included.
//! - W4A8 (`linear_w4_avx2`): nibble pair sums (at most 3840) of 4 blocks are added in int16
//!   (at most 30720) before one `vpmaddwd`, in passes of up to 4 rows over one 8-column half.
//! - Float mode (`linear_f32_avx2`): codes decoded with `vpshufb`, dequantized and FMA'd in
//!   the fixed order.
//!
//! Soundness: the tables holding these are only handed out after the CPU check, and each safe
//! wrapper checks again (a cached load) before entering `#[target_feature]` code.

// Register arrays indexed by row read clearer as `for r in 0..R` in these kernels.
#![allow(clippy::needless_range_loop)]

use crate::simd::gemm::{self, Panel, Rows, TileF32, TileI32, NR};
use core::arch::x86_64::*;
use core::ptr::read_unaligned;

#[inline(always)]
unsafe fn bcast4(p: *const i8) -> i32 {
    read_unaligned(p as *const i32)
}

/// Rows per pass of the AVX2 kernels (16 ymm registers); a tile is run in passes over its
/// rows, each re-reading the panel segment from L1.
const R_AVX2: usize = 2;

crate::simd::safe_wrappers! {
    cpu: crate::simd::probe::has_avx2(), else: crate::simd::scalar;

    fn dot_tile(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) => dot_avx2(panel, x, out);

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

/// Exact `Σ p·x` of one 32-byte half-quad (8 rows × 4 `k` of an 8-bit panel, split into its
/// low and high nibbles) against the broadcast quad `xb`, as 8 int32 lanes: nibble products
/// (never saturating), widened by 1 and by 16.
#[inline(always)]
unsafe fn dot8_avx2(
    lo: __m256i,
    hi: __m256i,
    xb: __m256i,
    ones: __m256i,
    sixteens: __m256i,
) -> __m256i {
    let plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xb), ones);
    let phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xb), sixteens);
    _mm256_add_epi32(plo, phi)
}

/// `raw` sums of rows `r0..r0 + rows` (`rows <= R_AVX2`) over `kq` quads of an 8-bit
/// (`NIBBLES = false`) or 4-bit panel at `w`, as two 8-lane halves per row.
#[inline(always)]
unsafe fn raw_avx2<const NIBBLES: bool>(
    w: *const u8,
    x: *const i8,
    kp: usize,
    kq: usize,
    rows: usize,
) -> [[__m256i; 2]; R_AVX2] {
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let sixteens = _mm256_set1_epi16(16);
    let mut acc = [[_mm256_setzero_si256(); 2]; R_AVX2];
    if NIBBLES {
        for t in 0..kq / 2 {
            let blk = w.add(64 * t);
            for h in 0..2 {
                let v = _mm256_loadu_si256(blk.add(32 * h) as *const __m256i);
                let w0 = _mm256_and_si256(v, low);
                let w1 = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                for (r, a) in acc.iter_mut().enumerate().take(rows) {
                    let x0 = _mm256_set1_epi32(bcast4(x.add(r * kp + 8 * t)));
                    let x1 = _mm256_set1_epi32(bcast4(x.add(r * kp + 8 * t + 4)));
                    // Each pair sum is at most 15·128·2 in magnitude, so the int16 sum of the
                    // two quads' pair sums is at most 7680: exact.
                    let p = _mm256_add_epi16(
                        _mm256_maddubs_epi16(w0, x0),
                        _mm256_maddubs_epi16(w1, x1),
                    );
                    a[h] = _mm256_add_epi32(a[h], _mm256_madd_epi16(p, ones));
                }
            }
        }
    } else {
        for t in 0..kq {
            for h in 0..2 {
                let v = _mm256_loadu_si256(w.add(64 * t + 32 * h) as *const __m256i);
                let lo = _mm256_and_si256(v, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                for (r, a) in acc.iter_mut().enumerate().take(rows) {
                    let xb = _mm256_set1_epi32(bcast4(x.add(r * kp + 4 * t)));
                    a[h] = _mm256_add_epi32(a[h], dot8_avx2(lo, hi, xb, ones, sixteens));
                }
            }
        }
    }
    acc
}

#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) {
    let mut r0 = 0;
    while r0 < x.rows {
        let rows = R_AVX2.min(x.rows - r0);
        let xp = x.data.as_ptr().add(r0 * x.stride);
        let acc = raw_avx2::<false>(panel.as_ptr(), xp, x.stride, x.kp / 4, rows);
        for (r, a) in acc.iter().enumerate().take(rows) {
            let o = out.as_mut_ptr().add((r0 + r) * NR);
            _mm256_storeu_si256(o as *mut __m256i, a[0]);
            _mm256_storeu_si256(o.add(8) as *mut __m256i, a[1]);
        }
        r0 += rows;
    }
}

/// W8A8: the integer-mode tile over an 8-bit panel.
#[target_feature(enable = "avx2,fma")]
unsafe fn linear_w8_avx2(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) {
    linear_avx2::<false>(panel, x, xsum, out)
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

#[inline(always)]
unsafe fn linear_avx2<const NIBBLES: bool>(
    panel: &Panel,
    x: &Rows<i8>,
    xsum: &[f32],
    out: &mut TileF32,
) {
    let segs = panel.seg_len.len();
    let bpk = panel.bytes_per_k();
    out[..x.rows * NR].fill(0.0);
    let mut r0 = 0;
    while r0 < x.rows {
        let rows = R_AVX2.min(x.rows - r0);
        let (mut k0, mut b0) = (0usize, 0usize);
        for s in 0..segs {
            let len = *panel.seg_len.get_unchecked(s) as usize;
            let w = panel.codes.as_ptr().add(b0);
            let xp = x.data.as_ptr().add(r0 * x.stride + k0);
            let acc = raw_avx2::<NIBBLES>(w, xp, x.stride, len / 4, rows);
            for (r, a) in acc.iter().enumerate().take(rows) {
                let xs = _mm256_set1_ps(*xsum.get_unchecked((r0 + r) * segs + s));
                for (h, ah) in a.iter().enumerate() {
                    let o = out.as_mut_ptr().add((r0 + r) * NR + 8 * h);
                    let scale = _mm256_loadu_ps(panel.scale.as_ptr().add(s * NR + 8 * h));
                    let zscale = _mm256_loadu_ps(panel.zscale.as_ptr().add(s * NR + 8 * h));
                    let mut f = _mm256_loadu_ps(o);
                    f = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(*ah), f);
                    f = _mm256_fmadd_ps(zscale, xs, f);
                    _mm256_storeu_ps(o, f);
                }
            }
            k0 += len;
            b0 += len * bpk;
        }
        r0 += rows;
    }
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

//! AVX2 tile kernels of the integer and weight-only matrix products (layouts and the
//! accumulation order are in `simd::gemm`).
//!
//! - AVX2 (also the AVX-512 path without VNNI): `vpmaddubsw` adds pairs of `u8 × i8` products
//!   into int16 with saturation, which would be wrong for 8-bit panels (255·127·2 > 32767).
//!   So every panel byte is split into nibbles first (`p = 16·hi + lo`): a pair of nibble
//!   products is at most 15·128·2 = 3840, never saturates, and `vpmaddwd` by 1 and by 16 widens
//!   and recombines them exactly. 4-bit panels are nibbles already: the two quads of a 64-byte
//!   block share one `vpmaddwd`. Exact for every `u8` panel and `i8` activation, -128 included.
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

#[target_feature(enable = "avx2,fma")]
unsafe fn linear_f32_avx2(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) {
    gemm::linear_tile_f32_body(panel, x, out)
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

/// W4A8: the integer-mode tile over a 4-bit panel.
#[target_feature(enable = "avx2,fma")]
unsafe fn linear_w4_avx2(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) {
    linear_avx2::<true>(panel, x, xsum, out)
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

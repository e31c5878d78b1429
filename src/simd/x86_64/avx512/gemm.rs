//! AVX-512 tile kernels of the integer and weight-only matrix products (layouts and the
//! accumulation order are in `simd::gemm`).
//!
//! - VNNI (the `avx512vnni` table): one `vpdpbusd` per quad of `k` and row, 64 `u8 × i8` products into 16
//!   int32 lanes, exact (no intermediate saturation). Each row keeps two int32 accumulators
//!   (even and odd quads) so that a one-row tile (GEMV) is not bound by the instruction's
//!   latency, and its float32 accumulator in a register across segments.
//! - The float-mode tile (both tables) decodes each chunk once into an L1 buffer of floats.
//! - Without VNNI the integer tiles are AVX2's (`avx2/gemm.rs`).
//!
//! Soundness: the tables holding these are only handed out after the CPU check, and each safe
//! wrapper checks again (a cached load) before entering `#[target_feature]` code.

// Register arrays indexed by row read clearer as `for r in 0..R` in these kernels.
#![allow(clippy::needless_range_loop)]

use crate::simd::gemm::{
    self, Panel, Rows, TileF32, TileI32, TileWide, NR, WIDE_PANELS, WIDE_ROWS,
};
use core::arch::x86_64::*;
use core::ptr::read_unaligned;

#[inline(always)]
unsafe fn bcast4(p: *const i8) -> i32 {
    read_unaligned(p as *const i32)
}

crate::simd::safe_wrappers! {
    cpu: crate::simd::probe::has_avx512() && crate::simd::probe::has_avx512vnni(),
    else: crate::simd::scalar;

    fn dot_tile(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) => {
        match x.rows {
            1 => dot_vnni::<1>(panel, x, out),
            2 => dot_vnni::<2>(panel, x, out),
            3 => dot_vnni::<3>(panel, x, out),
            4 => dot_vnni::<4>(panel, x, out),
            5 => dot_vnni::<5>(panel, x, out),
            6 => dot_vnni::<6>(panel, x, out),
            7 => dot_vnni::<7>(panel, x, out),
            _ => dot_vnni::<8>(panel, x, out),
        }
    };

    fn dot_tile_wide(panels: &[u8], x: &Rows<i8>, out: &mut TileWide) => {
        match x.rows {
            1 => dot_wide_vnni::<1>(panels, x, out),
            2 => dot_wide_vnni::<2>(panels, x, out),
            3 => dot_wide_vnni::<3>(panels, x, out),
            4 => dot_wide_vnni::<4>(panels, x, out),
            5 => dot_wide_vnni::<5>(panels, x, out),
            _ => dot_wide_vnni::<6>(panels, x, out),
        }
    };

    fn linear_tile(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) => {
        match (x.rows, panel.bits == 4) {
            (1, false) => linear_vnni::<1, false>(panel, x, xsum, out),
            (2, false) => linear_vnni::<2, false>(panel, x, xsum, out),
            (3, false) => linear_vnni::<3, false>(panel, x, xsum, out),
            (4, false) => linear_vnni::<4, false>(panel, x, xsum, out),
            (5, false) => linear_vnni::<5, false>(panel, x, xsum, out),
            (6, false) => linear_vnni::<6, false>(panel, x, xsum, out),
            (7, false) => linear_vnni::<7, false>(panel, x, xsum, out),
            (_, false) => linear_vnni::<8, false>(panel, x, xsum, out),
            (1, true) => linear_vnni::<1, true>(panel, x, xsum, out),
            (2, true) => linear_vnni::<2, true>(panel, x, xsum, out),
            (3, true) => linear_vnni::<3, true>(panel, x, xsum, out),
            (4, true) => linear_vnni::<4, true>(panel, x, xsum, out),
            (5, true) => linear_vnni::<5, true>(panel, x, xsum, out),
            (6, true) => linear_vnni::<6, true>(panel, x, xsum, out),
            (7, true) => linear_vnni::<7, true>(panel, x, xsum, out),
            (_, true) => linear_vnni::<8, true>(panel, x, xsum, out),
        }
    };

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
            (1, false) => rows_vnni::<1, false>(a, b, kn, c0, out),
            (2, false) => rows_vnni::<2, false>(a, b, kn, c0, out),
            (3, false) => rows_vnni::<3, false>(a, b, kn, c0, out),
            (_, false) => rows_vnni::<4, false>(a, b, kn, c0, out),
            (1, true) => rows_vnni::<1, true>(a, b, kn, c0, out),
            (2, true) => rows_vnni::<2, true>(a, b, kn, c0, out),
            (3, true) => rows_vnni::<3, true>(a, b, kn, c0, out),
            (_, true) => rows_vnni::<4, true>(a, b, kn, c0, out),
        }
    };
}

crate::simd::safe_wrappers! {
    cpu: crate::simd::probe::has_avx512(), else: crate::simd::scalar;

    fn linear_tile_f32(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) =>
        linear_f32_avx512(panel, x, out);
}

/// Values of `k` decoded at a time by the AVX-512 float tile: 256 x 64 bytes (16 KiB) of
/// float32 weights in L1, used by every row of the tile.
const F32_CHUNK: usize = 256;
/// Rows per pass over a decoded chunk (4 partial sums each: 16 accumulators).
const F32_PASS: usize = 4;

/// The float-mode tile: each chunk of a segment is decoded once (`(p - zero) * scale`, as
/// `dequantize` computes it) into an L1 buffer, then every row runs its four partial FMA
/// chains over it, [`F32_PASS`] rows at a time with their accumulators in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma")]
unsafe fn linear_f32_avx512(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) {
    if x.rows == 1 {
        return if panel.bits == 4 {
            f32_gemv_avx512::<true>(panel, x, out)
        } else {
            f32_gemv_avx512::<false>(panel, x, out)
        };
    }
    let mut buf = [_mm512_setzero_ps(); F32_CHUNK];
    let mut acc = [[_mm512_setzero_ps(); 4]; gemm::MR];
    let bpk = panel.bytes_per_k();
    let (mut k0, mut b0) = (0usize, 0usize);
    for (s, &len) in panel.seg_len.iter().enumerate() {
        let len = len as usize;
        let scale = _mm512_loadu_ps(panel.scale.as_ptr().add(s * NR));
        let zero = _mm512_loadu_ps(panel.zero.as_ptr().add(s * NR));
        let mut c0 = 0;
        while c0 < len {
            let n = F32_CHUNK.min(len - c0);
            let codes = panel.codes.as_ptr().add(b0 + c0 * bpk);
            if panel.bits == 4 {
                decode_nibbles(codes, n, scale, zero, &mut buf);
            } else {
                decode_bytes(codes, n, scale, zero, &mut buf);
            }
            let mut m0 = 0;
            while m0 < x.rows {
                let rows = (x.rows - m0).min(F32_PASS);
                let xp = x.data.as_ptr().add(m0 * x.stride + k0 + c0);
                let acc = &mut acc[m0..m0 + rows];
                match rows {
                    1 => f32_pass::<1>(&buf, n, xp, x.stride, acc),
                    2 => f32_pass::<2>(&buf, n, xp, x.stride, acc),
                    3 => f32_pass::<3>(&buf, n, xp, x.stride, acc),
                    _ => f32_pass::<4>(&buf, n, xp, x.stride, acc),
                }
                m0 += rows;
            }
            c0 += n;
        }
        k0 += len;
        b0 += len * bpk;
    }
    for (m, a) in acc.iter().enumerate().take(x.rows) {
        let sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
        _mm512_storeu_ps(out.as_mut_ptr().add(m * NR), sum);
    }
}

/// `vpshufb` control that moves byte `c` of each 32-bit word to its low byte, zeros above: the
/// code of `k = 4t + c` (or `8t + c` of a nibble plane) for all 16 columns.
#[inline(always)]
unsafe fn byte_ctl512(c: u32) -> __m512i {
    // Word j of each 128-bit lane: bytes [4j + c, zero, zero, zero] (0x80: zero).
    let w = |j: u32| ((4 * j + c) | 0x8080_8000) as i32;
    _mm512_broadcast_i32x4(_mm_setr_epi32(w(0), w(1), w(2), w(3)))
}

/// How far ahead (bytes) the one-row float tile prefetches the panel it streams.
const F32_PF: usize = 4096;

/// One row (GEMV) of the float-mode tile, with no buffer: per 64-byte block of the panel (8 `k`
/// of a 4-bit panel, 4 of an 8-bit one), one `vpshufb` per `k` (after splitting the nibbles)
/// gives the 16 columns' codes, converted, dequantized (`(p - zero) * scale`, as `dequantize`)
/// and multiplied into the row's four partial sums: per 16 weights `vpshufb` (port 5),
/// `vcvtdq2ps` (port 0), `vsubps`, `vmulps`, `vfmadd` (ports 0 and 5), plus 3/8 of the nibble
/// split: 5.4 uops over two ports, at least 2.7 cycles per 16 weights (6 multiply-adds a
/// cycle), below the read bandwidth of one core (W4A16).
#[inline(always)]
unsafe fn f32_gemv_avx512<const NIBBLES: bool>(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) {
    let low = _mm512_set1_epi8(0x0f);
    let ctl = [
        byte_ctl512(0),
        byte_ctl512(1),
        byte_ctl512(2),
        byte_ctl512(3),
    ];
    let mut acc = [_mm512_setzero_ps(); 4];
    let xp = x.data.as_ptr();
    let bpk = panel.bytes_per_k();
    let kpb = if NIBBLES { 8 } else { 4 }; // k per 64-byte block
    let (mut k0, mut b0) = (0usize, 0usize);
    for (s, &len) in panel.seg_len.iter().enumerate() {
        let len = len as usize;
        let w = panel.codes.as_ptr().add(b0);
        let scale = _mm512_loadu_ps(panel.scale.as_ptr().add(s * NR));
        let zero = _mm512_loadu_ps(panel.zero.as_ptr().add(s * NR));
        for b in 0..len / kpb {
            let blk = w.add(64 * b);
            _mm_prefetch::<_MM_HINT_T0>(blk.add(F32_PF) as *const i8);
            let xk = xp.add(k0 + kpb * b);
            let v = _mm512_loadu_si512(blk as *const _);
            if NIBBLES {
                let lo = _mm512_and_si512(v, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                for c in 0..4 {
                    let wv = dequant16(_mm512_shuffle_epi8(lo, ctl[c]), scale, zero);
                    acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(*xk.add(c)), wv, acc[c]);
                }
                for c in 0..4 {
                    let wv = dequant16(_mm512_shuffle_epi8(hi, ctl[c]), scale, zero);
                    acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(*xk.add(4 + c)), wv, acc[c]);
                }
            } else {
                for c in 0..4 {
                    let wv = dequant16(_mm512_shuffle_epi8(v, ctl[c]), scale, zero);
                    acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(*xk.add(c)), wv, acc[c]);
                }
            }
        }
        k0 += len;
        b0 += len * bpk;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_storeu_ps(out.as_mut_ptr(), sum);
}

/// `(code - zero) * scale` for 16 int32 codes.
#[inline(always)]
unsafe fn dequant16(codes: __m512i, scale: __m512, zero: __m512) -> __m512 {
    _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(codes), zero), scale)
}

/// Weights `buf[k]` (16 columns) for `k < n` of an 8-bit panel chunk: column `j`'s quad is
/// the 32-bit word `j` of each 64-byte block, byte `c` is `k = 4t + c`.
#[inline(always)]
unsafe fn decode_bytes(
    codes: *const u8,
    n: usize,
    scale: __m512,
    zero: __m512,
    buf: &mut [__m512; F32_CHUNK],
) {
    let byte = _mm512_set1_epi32(0xff);
    for t in 0..n / 4 {
        let v = _mm512_loadu_si512(codes.add(64 * t) as *const _);
        buf[4 * t] = dequant16(_mm512_and_si512(v, byte), scale, zero);
        buf[4 * t + 1] = dequant16(
            _mm512_and_si512(_mm512_srli_epi32::<8>(v), byte),
            scale,
            zero,
        );
        buf[4 * t + 2] = dequant16(
            _mm512_and_si512(_mm512_srli_epi32::<16>(v), byte),
            scale,
            zero,
        );
        buf[4 * t + 3] = dequant16(_mm512_srli_epi32::<24>(v), scale, zero);
    }
}

/// As [`decode_bytes`] for a 4-bit panel chunk: each 64-byte block holds `k = 8t..8t + 8`,
/// the low nibbles of byte `c` being `k = 8t + c` and the high ones `8t + 4 + c`.
#[inline(always)]
unsafe fn decode_nibbles(
    codes: *const u8,
    n: usize,
    scale: __m512,
    zero: __m512,
    buf: &mut [__m512; F32_CHUNK],
) {
    let nib = _mm512_set1_epi32(0x0f);
    for t in 0..n / 8 {
        let v = _mm512_loadu_si512(codes.add(64 * t) as *const _);
        let lo = _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
        let hi = _mm512_and_si512(_mm512_srli_epi32::<4>(v), _mm512_set1_epi8(0x0f));
        for (h, v) in [lo, hi].into_iter().enumerate() {
            let w = &mut buf[8 * t + 4 * h..8 * t + 4 * h + 4];
            w[0] = dequant16(_mm512_and_si512(v, nib), scale, zero);
            w[1] = dequant16(
                _mm512_and_si512(_mm512_srli_epi32::<8>(v), nib),
                scale,
                zero,
            );
            w[2] = dequant16(
                _mm512_and_si512(_mm512_srli_epi32::<16>(v), nib),
                scale,
                zero,
            );
            w[3] = dequant16(_mm512_srli_epi32::<24>(v), scale, zero);
        }
    }
}

/// `R` rows (at `x`, `stride` apart) over `n` decoded values of `k`: four partial sums per
/// row, `acc[k % 4] = fma(x[k], w[k], acc[k % 4])` (`n` is a multiple of 4 and the chunk
/// starts at a multiple of 4).
#[inline(always)]
unsafe fn f32_pass<const R: usize>(
    buf: &[__m512; F32_CHUNK],
    n: usize,
    x: *const f32,
    stride: usize,
    acc: &mut [[__m512; 4]],
) {
    let mut a = [[_mm512_setzero_ps(); 4]; R];
    a.copy_from_slice(&acc[..R]);
    for q in 0..n / 4 {
        for c in 0..4 {
            let w = buf[4 * q + c];
            for (i, ai) in a.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(i * stride + 4 * q + c));
                ai[c] = _mm512_fmadd_ps(xv, w, ai[c]);
            }
        }
    }
    acc[..R].copy_from_slice(&a);
}

/// How far ahead (bytes) the one- and two-row tiles prefetch the panel they stream: without
/// it a GEMV beyond the cache read 8.3 GB/s of 4-bit weights, with it 12.9 (DRAM: 14.5).
const PF_DIST: usize = 4096;

/// `R` rows of `raw` sums over `kq` quads of an 8-bit panel starting at `w`, rows at `x`
/// (stride `kp`), into the two accumulators of each row.
#[inline(always)]
unsafe fn quads_vnni<const R: usize>(
    w: *const u8,
    x: *const i8,
    kp: usize,
    kq: usize,
    acc: &mut [[__m512i; 2]; R],
) {
    let mut t = 0;
    while t + 2 <= kq {
        if R <= 2 {
            _mm_prefetch::<_MM_HINT_T0>(w.add(64 * t + PF_DIST) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(w.add(64 * t + 64 + PF_DIST) as *const i8);
        }
        let w0 = _mm512_loadu_si512(w.add(64 * t) as *const _);
        let w1 = _mm512_loadu_si512(w.add(64 * t + 64) as *const _);
        for r in 0..R {
            let x0 = _mm512_set1_epi32(bcast4(x.add(r * kp + 4 * t)));
            let x1 = _mm512_set1_epi32(bcast4(x.add(r * kp + 4 * t + 4)));
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, x0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w1, x1);
        }
        t += 2;
    }
    if t < kq {
        let w0 = _mm512_loadu_si512(w.add(64 * t) as *const _);
        for r in 0..R {
            let x0 = _mm512_set1_epi32(bcast4(x.add(r * kp + 4 * t)));
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, x0);
        }
    }
}

/// As `quads_vnni` over a 4-bit panel: `kq` is even, one 64-byte block per two quads.
#[inline(always)]
unsafe fn nibble_quads_vnni<const R: usize>(
    w: *const u8,
    x: *const i8,
    kp: usize,
    kq: usize,
    acc: &mut [[__m512i; 2]; R],
) {
    let low = _mm512_set1_epi8(0x0f);
    for t in 0..kq / 2 {
        if R <= 2 {
            _mm_prefetch::<_MM_HINT_T0>(w.add(64 * t + PF_DIST) as *const i8);
        }
        let v = _mm512_loadu_si512(w.add(64 * t) as *const _);
        let w0 = _mm512_and_si512(v, low);
        let w1 = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
        for r in 0..R {
            let x0 = _mm512_set1_epi32(bcast4(x.add(r * kp + 8 * t)));
            let x1 = _mm512_set1_epi32(bcast4(x.add(r * kp + 8 * t + 4)));
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, x0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w1, x1);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn dot_vnni<const R: usize>(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) {
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    quads_vnni::<R>(
        panel.as_ptr(),
        x.data.as_ptr(),
        x.stride,
        x.kp / 4,
        &mut acc,
    );
    for (r, a) in acc.iter().enumerate() {
        let sum = _mm512_add_epi32(a[0], a[1]);
        _mm512_storeu_si512(out.as_mut_ptr().add(r * NR) as *mut _, sum);
    }
}

/// `R` rows by [`WIDE_PANELS`] panels: per quad, one load per panel and one broadcast per row
/// feed `R · WIDE_PANELS` independent `vpdpbusd` (24 accumulators at `R = 6`, against 18 loads
/// per 16 in the one-panel tile).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn dot_wide_vnni<const R: usize>(panels: &[u8], x: &Rows<i8>, out: &mut TileWide) {
    const { assert!(R <= WIDE_ROWS) };
    let ps = x.kp * NR;
    let w = panels.as_ptr();
    let xp = x.data.as_ptr();
    let mut acc = [[_mm512_setzero_si512(); WIDE_PANELS]; R];
    for t in 0..x.kp / 4 {
        let mut b = [_mm512_setzero_si512(); WIDE_PANELS];
        for (i, v) in b.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(w.add(i * ps + 64 * t) as *const _);
        }
        for r in 0..R {
            let a = _mm512_set1_epi32(bcast4(xp.add(r * x.stride + 4 * t)));
            for i in 0..WIDE_PANELS {
                acc[r][i] = _mm512_dpbusd_epi32(acc[r][i], b[i], a);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (i, v) in row.iter().enumerate() {
            let dst = out.as_mut_ptr().add(r * WIDE_PANELS * NR + i * NR);
            _mm512_storeu_si512(dst as *mut _, *v);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")]
unsafe fn linear_vnni<const R: usize, const NIBBLES: bool>(
    panel: &Panel,
    x: &Rows<i8>,
    xsum: &[f32],
    out: &mut TileF32,
) {
    let segs = panel.seg_len.len();
    let bpk = panel.bytes_per_k();
    let mut facc = [_mm512_setzero_ps(); R];
    // -(scale · z) == scale · (-z) exactly: rounding is symmetric in sign.
    let zero_all = panel.zero_all.map(|z| _mm512_set1_ps(-z));
    let (mut k0, mut b0) = (0usize, 0usize);
    for s in 0..segs {
        let len = *panel.seg_len.get_unchecked(s) as usize;
        let w = panel.codes.as_ptr().add(b0);
        let xp = x.data.as_ptr().add(k0);
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        if NIBBLES {
            nibble_quads_vnni::<R>(w, xp, x.stride, len / 4, &mut acc);
        } else {
            quads_vnni::<R>(w, xp, x.stride, len / 4, &mut acc);
        }
        let scale = _mm512_loadu_ps(panel.scale.as_ptr().add(s * NR));
        let zscale = match zero_all {
            Some(neg_z) => _mm512_mul_ps(scale, neg_z),
            None => _mm512_loadu_ps(panel.zscale.as_ptr().add(s * NR)),
        };
        for r in 0..R {
            let raw = _mm512_cvtepi32_ps(_mm512_add_epi32(acc[r][0], acc[r][1]));
            facc[r] = _mm512_fmadd_ps(scale, raw, facc[r]);
            let xs = _mm512_set1_ps(*xsum.get_unchecked(r * segs + s));
            facc[r] = _mm512_fmadd_ps(zscale, xs, facc[r]);
        }
        k0 += len;
        b0 += len * bpk;
    }
    for (r, f) in facc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(r * NR), *f);
    }
}

const PACK_PF: usize = 16;

/// [`gemm::PackQuad4`] with AVX-512: bytes interleaved into quads within each 128-bit lane
/// (`unpack` by 8 then 16 bits), then a 4x4 transpose of the lanes gives one panel each.
///
/// # Safety
/// As [`gemm::PackQuad4`]; the CPU must have AVX-512 (F/BW).
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn pack_quad4_avx512(src: *const i8, n: usize, dst: *mut u8, panel_stride: usize) {
    let flip = _mm512_set1_epi8(-128);
    for c in 0..4 {
        _mm_prefetch::<_MM_HINT_T0>(src.add((4 * PACK_PF + c) * n));
    }
    let row = |c: usize| _mm512_xor_si512(_mm512_loadu_si512(src.add(c * n) as *const _), flip);
    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
    let (t0, t1) = (_mm512_unpacklo_epi8(r0, r1), _mm512_unpackhi_epi8(r0, r1));
    let (t2, t3) = (_mm512_unpacklo_epi8(r2, r3), _mm512_unpackhi_epi8(r2, r3));
    // Lane L of u0..u3: columns 16L + 0..4, 4..8, 8..12, 12..16, as (r0, r1, r2, r3) quads.
    let (u0, u1) = (_mm512_unpacklo_epi16(t0, t2), _mm512_unpackhi_epi16(t0, t2));
    let (u2, u3) = (_mm512_unpacklo_epi16(t1, t3), _mm512_unpackhi_epi16(t1, t3));
    let v0 = _mm512_shuffle_i64x2::<0x44>(u0, u1);
    let v1 = _mm512_shuffle_i64x2::<0xee>(u0, u1);
    let v2 = _mm512_shuffle_i64x2::<0x44>(u2, u3);
    let v3 = _mm512_shuffle_i64x2::<0xee>(u2, u3);
    let out = [
        _mm512_shuffle_i64x2::<0x88>(v0, v2),
        _mm512_shuffle_i64x2::<0xdd>(v0, v2),
        _mm512_shuffle_i64x2::<0x88>(v1, v3),
        _mm512_shuffle_i64x2::<0xdd>(v1, v3),
    ];
    for (i, v) in out.into_iter().enumerate() {
        _mm512_storeu_si512(dst.add(i * panel_stride) as *mut _, v);
    }
}

/// The quad of `rows` (1..=4) rows of `b` at `src` (`n` apart) in 64 columns (`mask`),
/// interleaved in registers: lane `L` of vector `q` holds columns `16L + 4q .. + 4`, each as
/// its 4 bytes (rows past `rows` read as zero); `b + 128` when `SIGNED`.
#[inline(always)]
unsafe fn interleave_quad<const SIGNED: bool>(
    src: *const i8,
    n: usize,
    rows: usize,
    mask: __mmask64,
) -> [__m512i; 4] {
    let mut v = [_mm512_setzero_si512(); 4];
    for (c, v) in v.iter_mut().enumerate().take(rows) {
        *v = _mm512_maskz_loadu_epi8(mask, src.add(c * n) as *const _);
        if SIGNED {
            *v = _mm512_xor_si512(*v, _mm512_set1_epi8(-128));
        }
    }
    let (t0, t1) = (
        _mm512_unpacklo_epi8(v[0], v[1]),
        _mm512_unpackhi_epi8(v[0], v[1]),
    );
    let (t2, t3) = (
        _mm512_unpacklo_epi8(v[2], v[3]),
        _mm512_unpackhi_epi8(v[2], v[3]),
    );
    [
        _mm512_unpacklo_epi16(t0, t2),
        _mm512_unpackhi_epi16(t0, t2),
        _mm512_unpacklo_epi16(t1, t3),
        _mm512_unpackhi_epi16(t1, t3),
    ]
}

/// `R` rows of `a` against up to [`gemm::ROWS_COLS`] columns of row-major `b`, read in place:
/// per quad of `k`, each 64 columns of the four rows are interleaved into quads in registers
/// (the first half of [`pack_quad4_avx512`]) and feed `vpdpbusd` with `a`'s quad broadcast;
/// the accumulators, one per 16 columns and row, live in L1. Their lanes come out in the
/// interleaved order and are put back in column order once, at the end.
///
/// Unsigned `a` is the `u8` operand and `b` the `s8` one, exact as they are; signed `a` is the
/// `s8` operand against `b + 128`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn rows_vnni<const R: usize, const SIGNED: bool>(
    a: &[u8],
    b: &[i8],
    (k, n): (usize, usize),
    c0: usize,
    out: &mut [i32],
) {
    let w = out.len() / R;
    let groups = w.div_ceil(64);
    let tail = w - 64 * (groups - 1); // columns in the last group, 1..=64
    let tail_mask: __mmask64 = if tail == 64 { !0 } else { (1u64 << tail) - 1 };
    let mut acc = [[_mm512_setzero_si512(); 4 * gemm::ROWS_COLS / 64]; R];
    let bp = b.as_ptr().add(c0);
    let ap = a.as_ptr();
    // Quads of `a` at `k0` (`len` values, fewer than 4 only at the end), one per row.
    let a_quads = |k0: usize, len: usize| {
        let mut aq = [0i32; R];
        for (r, q) in aq.iter_mut().enumerate() {
            *q = if len == 4 {
                read_unaligned(ap.add(r * k + k0) as *const i32)
            } else if len == 0 {
                0
            } else {
                let mut bytes = [0u8; 4];
                bytes[..len].copy_from_slice(&a[r * k + k0..r * k + k0 + len]);
                i32::from_le_bytes(bytes)
            };
        }
        aq
    };
    // Each step takes QUADS quads of `k` (two in the loop, one at a time for the tail),
    // so that every accumulator is loaded and stored once per two quads.
    let mut step = |k0: usize, len: usize| {
        let quads = len.div_ceil(4);
        let aq = [
            a_quads(k0, len.min(4)),
            a_quads(k0 + 4, len.saturating_sub(4).min(4)),
        ];
        for g in 0..groups {
            let mask = if g + 1 == groups { tail_mask } else { !0 };
            let mut u = [[_mm512_setzero_si512(); 4]; 2];
            for (h, u) in u.iter_mut().enumerate().take(quads) {
                let rows = (len - 4 * h).min(4);
                *u = interleave_quad::<SIGNED>(bp.add((k0 + 4 * h) * n + 64 * g), n, rows, mask);
            }
            for r in 0..R {
                for q in 0..4 {
                    let mut s = acc[r][4 * g + q];
                    for h in 0..quads {
                        let x = _mm512_set1_epi32(aq[h][r]);
                        s = if SIGNED {
                            _mm512_dpbusd_epi32(s, u[h][q], x)
                        } else {
                            _mm512_dpbusd_epi32(s, x, u[h][q])
                        };
                    }
                    acc[r][4 * g + q] = s;
                }
            }
        }
    };
    let mut k0 = 0;
    while k0 + 8 <= k {
        step(k0, 8);
        k0 += 8;
    }
    while k0 < k {
        let len = (k - k0).min(4);
        step(k0, len);
        k0 += len;
    }
    // Lane L of acc[4g + q] holds columns 64g + 16L + 4q .. + 4: a 4x4 transpose of the
    // 128-bit lanes puts 64g + 16i .. + 16 in vector i.
    for r in 0..R {
        for g in 0..groups {
            let u = &acc[r][4 * g..4 * g + 4];
            let v0 = _mm512_shuffle_i64x2::<0x44>(u[0], u[1]);
            let v1 = _mm512_shuffle_i64x2::<0xee>(u[0], u[1]);
            let v2 = _mm512_shuffle_i64x2::<0x44>(u[2], u[3]);
            let v3 = _mm512_shuffle_i64x2::<0xee>(u[2], u[3]);
            let cols = [
                _mm512_shuffle_i64x2::<0x88>(v0, v2),
                _mm512_shuffle_i64x2::<0xdd>(v0, v2),
                _mm512_shuffle_i64x2::<0x88>(v1, v3),
                _mm512_shuffle_i64x2::<0xdd>(v1, v3),
            ];
            let base = out.as_mut_ptr().add(r * w + 64 * g);
            let left = w - 64 * g;
            for (i, v) in cols.into_iter().enumerate() {
                if 16 * i >= left {
                    break;
                }
                let m16: __mmask16 = if left >= 16 * (i + 1) {
                    !0
                } else {
                    (1u16 << (left - 16 * i)) - 1
                };
                _mm512_mask_storeu_epi32(base.add(16 * i) as *mut _, m16, v);
            }
        }
    }
}

/// [`gemm::PackPanels`] with [`pack_quad4_avx512`] for whole groups of four panels.
pub fn pack_i8_panels_avx512(
    b: &[i8],
    kn: (usize, usize),
    n0: usize,
    panels: usize,
    kp: usize,
    out: &mut [u8],
) {
    let quad4 = crate::simd::probe::has_avx512().then_some(pack_quad4_avx512 as gemm::PackQuad4);
    gemm::pack_panels_with(b, kn, n0, panels, kp, out, quad4)
}

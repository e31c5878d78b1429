//! aarch64 tile kernels of the integer and weight-only matrix products (layouts and the
//! accumulation order are in `simd::gemm`).
//!
//! - NEON with dotprod: one `sdot` by element per quad of `k`, 16-byte panel vector and row.
//!   A panel vector holds 4 rows × 4 `k` (byte `4j + c`), exactly the 4 bytes per int32 lane
//!   that `sdot` reduces, and one 16-byte load of a row's codes holds four quads, picked by the
//!   element index. `sdot` multiplies i8 by i8: 4-bit panels (nibbles, 0..=15) go in as they
//!   are; 8-bit panels go in as `p - 128` (the byte with its top bit flipped) and each row adds
//!   back `128 · Σx`, its sum taken by one more `sdot` against ones per 16 codes. In wrapping
//!   int32 that is `Σ p·x` exactly (modulo 2^32, as the contract's wrapping sums).
//! - NEON: `vld4q_u8` de-interleaves a 64-byte quad into four vectors, one per `k`, each with
//!   the codes of the 16 rows; widened to int16 (codes are at most 255, so they keep their
//!   value), they are multiplied by the row's code of that `k` (an int16 lane) and accumulated
//!   into int32 by `smlal` by element. A product is at most 255·128 in magnitude: exact for
//!   every `u8` panel and `i8` activation, -128 included.
//!
//! Both run a tile in passes of up to [`R_PASS`] rows (16 of the 32 vector registers hold the
//! int32 accumulators), each pass re-reading the panel segment from L1. The float epilogue of
//! `linear` is the reference's, vector for vector: `scvtf` (round to nearest even, as `as f32`)
//! and fused `fmla` (as `f32::mul_add`), segment after segment, in the reference's order.
//!
//! Soundness: NEON is part of every aarch64 target with `std` (asserted at compile time in
//! `neon/quant.rs`); the dotprod wrappers check the CPU (a cached load) before entering
//! `#[target_feature(enable = "neon,dotprod")]` code, and fall back to the NEON kernels.

// Register arrays indexed by row read clearer as `for r in 0..R` in these kernels.
#![allow(clippy::needless_range_loop)]

use crate::simd::gemm::{self, Panel, Rows, TileF32, TileI32, NR};
use core::arch::aarch64::*;
use core::arch::asm;
use core::ptr::read_unaligned;

/// Rows per pass: 4 int32x4 accumulators per row, so 16 registers for a full pass, leaving the
/// other 16 to the row codes, the panel vectors and the constants.
const R_PASS: usize = 4;

/// Runs `$body` with the constant `$R` equal to `$rows` (`1..=R_PASS`): each pass size gets
/// its own monomorphized kernel, so that its accumulators stay in registers.
macro_rules! with_rows {
    ($rows:expr, $R:ident => $body:expr) => {
        match $rows {
            1 => {
                const $R: usize = 1;
                $body
            }
            2 => {
                const $R: usize = 2;
                $body
            }
            3 => {
                const $R: usize = 3;
                $body
            }
            _ => {
                const $R: usize = R_PASS;
                $body
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Safe entry points (the tables' function pointers).

crate::simd::safe_wrappers! {
    cpu: super::quant::neon_ok(), else: crate::simd::scalar;

    fn dot_tile(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) => dot_neon(panel, x, out);

    fn linear_tile(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) => {
        if panel.bits == 4 {
            linear_neon::<true>(panel, x, xsum, out)
        } else {
            linear_neon::<false>(panel, x, xsum, out)
        }
    };

    fn linear_tile_f32(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) =>
        linear_f32_neon(panel, x, out);
}

/// The `neon-dotprod` table's tiles: `sdot` where the CPU has dotprod, NEON's tiles elsewhere.
pub mod dotprod {
    use super::*;

    crate::simd::safe_wrappers! {
        cpu: crate::simd::probe::has_dotprod(), else: super;

        fn dot_tile(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) => dot_dotprod(panel, x, out);

        fn linear_tile(panel: &Panel, x: &Rows<i8>, xsum: &[f32], out: &mut TileF32) => {
            if panel.bits == 4 {
                linear_dotprod::<true>(panel, x, xsum, out)
            } else {
                linear_dotprod::<false>(panel, x, xsum, out)
            }
        };
    }
}

#[target_feature(enable = "neon")]
unsafe fn linear_f32_neon(panel: &Panel, x: &Rows<f32>, out: &mut TileF32) {
    gemm::linear_tile_f32_body(panel, x, out)
}

// ---------------------------------------------------------------------------------------------
// Shared by both paths.

/// Stores the `raw` sums of the `R` rows of a pass as rows of `NR` int32 at `out`.
#[inline(always)]
unsafe fn store_raw<const R: usize>(raw: &[[int32x4_t; 4]; R], out: *mut i32) {
    for r in 0..R {
        for v in 0..4 {
            vst1q_s32(out.add(r * NR + 4 * v), raw[r][v]);
        }
    }
}

/// One segment `s` of the reference's float accumulation for the `R` rows of a pass, whose
/// accumulators are rows of `NR` floats at `out`: `acc = fma(scale, raw as f32, acc)`, then
/// `acc = fma(zscale, xsum, acc)`, the row's `xsum` at `xsum.add(r * segs)`.
#[inline(always)]
unsafe fn segment_step<const R: usize>(
    raw: &[[int32x4_t; 4]; R],
    panel: &Panel,
    s: usize,
    xsum: *const f32,
    segs: usize,
    out: *mut f32,
) {
    for v in 0..4 {
        let scale = vld1q_f32(panel.scale.as_ptr().add(s * NR + 4 * v));
        let zscale = vld1q_f32(panel.zscale.as_ptr().add(s * NR + 4 * v));
        for r in 0..R {
            let o = out.add(r * NR + 4 * v);
            let xs = vdupq_n_f32(*xsum.add(r * segs));
            let mut f = vld1q_f32(o);
            f = vfmaq_f32(f, scale, vcvtq_f32_s32(raw[r][v]));
            f = vfmaq_f32(f, zscale, xs);
            vst1q_f32(o, f);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NEON: widening multiply-accumulate by element

/// `acc[r] += w · x[r][L]` for each row `r`: the codes of the 16 panel rows at one `k` (`w`)
/// times lane `L` of the row's widened codes, multiply-accumulated into int32.
#[inline(always)]
unsafe fn mac_k<const L: i32, const R: usize>(
    acc: &mut [[int32x4_t; 4]; R],
    w: uint8x16_t,
    x: &[int16x8_t; R],
) {
    // Codes are at most 255: as int16 they keep their value.
    let lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(w)));
    let hi = vreinterpretq_s16_u16(vmovl_high_u8(w));
    for r in 0..R {
        acc[r][0] = vmlal_laneq_s16::<L>(acc[r][0], vget_low_s16(lo), x[r]);
        acc[r][1] = vmlal_high_laneq_s16::<L>(acc[r][1], lo, x[r]);
        acc[r][2] = vmlal_laneq_s16::<L>(acc[r][2], vget_low_s16(hi), x[r]);
        acc[r][3] = vmlal_high_laneq_s16::<L>(acc[r][3], hi, x[r]);
    }
}

/// `raw` sums of `R` rows (at `x`, `stride` codes apart) over `len` values of `k` of the panel
/// segment at `w`, 8-bit (`len` a multiple of 4) or 4-bit (`NIBBLES`, `len` a multiple of 8),
/// as four int32x4 (one lane per panel row) per row. Wrapping int32.
#[inline(always)]
unsafe fn raw_neon<const R: usize, const NIBBLES: bool>(
    w: *const u8,
    x: *const i8,
    stride: usize,
    len: usize,
) -> [[int32x4_t; 4]; R] {
    let mut acc = [[vdupq_n_s32(0); 4]; R];
    let mut k = 0;
    while k + 8 <= len {
        let mut xv = [vdupq_n_s16(0); R];
        for r in 0..R {
            xv[r] = vmovl_s8(vld1_s8(x.add(r * stride + k)));
        }
        if NIBBLES {
            // One 64-byte block: quad `k..k + 4` in the low nibbles, `k + 4..k + 8` in the high.
            let q = vld4q_u8(w.add(8 * k));
            let low = vdupq_n_u8(0x0f);
            mac_k::<0, R>(&mut acc, vandq_u8(q.0, low), &xv);
            mac_k::<1, R>(&mut acc, vandq_u8(q.1, low), &xv);
            mac_k::<2, R>(&mut acc, vandq_u8(q.2, low), &xv);
            mac_k::<3, R>(&mut acc, vandq_u8(q.3, low), &xv);
            mac_k::<4, R>(&mut acc, vshrq_n_u8::<4>(q.0), &xv);
            mac_k::<5, R>(&mut acc, vshrq_n_u8::<4>(q.1), &xv);
            mac_k::<6, R>(&mut acc, vshrq_n_u8::<4>(q.2), &xv);
            mac_k::<7, R>(&mut acc, vshrq_n_u8::<4>(q.3), &xv);
        } else {
            let q = vld4q_u8(w.add(16 * k));
            mac_k::<0, R>(&mut acc, q.0, &xv);
            mac_k::<1, R>(&mut acc, q.1, &xv);
            mac_k::<2, R>(&mut acc, q.2, &xv);
            mac_k::<3, R>(&mut acc, q.3, &xv);
            let q = vld4q_u8(w.add(16 * k + 64));
            mac_k::<4, R>(&mut acc, q.0, &xv);
            mac_k::<5, R>(&mut acc, q.1, &xv);
            mac_k::<6, R>(&mut acc, q.2, &xv);
            mac_k::<7, R>(&mut acc, q.3, &xv);
        }
        k += 8;
    }
    // A last lone quad: 8-bit panels only (`dot_tile`'s `kp` is a multiple of 4; segments,
    // hence 4-bit blocks, come in multiples of 8).
    if !NIBBLES && k < len {
        let mut xv = [vdupq_n_s16(0); R];
        for r in 0..R {
            let quad = read_unaligned(x.add(r * stride + k) as *const u32);
            xv[r] = vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(quad)));
        }
        let q = vld4q_u8(w.add(16 * k));
        mac_k::<0, R>(&mut acc, q.0, &xv);
        mac_k::<1, R>(&mut acc, q.1, &xv);
        mac_k::<2, R>(&mut acc, q.2, &xv);
        mac_k::<3, R>(&mut acc, q.3, &xv);
    }
    acc
}

#[target_feature(enable = "neon")]
unsafe fn dot_neon(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) {
    let mut r0 = 0;
    while r0 < x.rows {
        let rows = R_PASS.min(x.rows - r0);
        let xp = x.data.as_ptr().add(r0 * x.stride);
        let o = out.as_mut_ptr().add(r0 * NR);
        with_rows!(rows, R => {
            let raw = raw_neon::<R, false>(panel.as_ptr(), xp, x.stride, x.kp);
            store_raw::<R>(&raw, o)
        });
        r0 += rows;
    }
}

#[target_feature(enable = "neon")]
unsafe fn linear_neon<const NIBBLES: bool>(
    panel: &Panel,
    x: &Rows<i8>,
    xsum: &[f32],
    out: &mut TileF32,
) {
    out[..x.rows * NR].fill(0.0);
    let mut r0 = 0;
    while r0 < x.rows {
        let rows = R_PASS.min(x.rows - r0);
        with_rows!(rows, R => linear_pass_neon::<R, NIBBLES>(panel, x, xsum, r0, out));
        r0 += rows;
    }
}

/// Rows `r0..r0 + R` of a `linear` tile, segment after segment.
#[inline(always)]
unsafe fn linear_pass_neon<const R: usize, const NIBBLES: bool>(
    panel: &Panel,
    x: &Rows<i8>,
    xsum: &[f32],
    r0: usize,
    out: &mut TileF32,
) {
    let segs = panel.seg_len.len();
    let bpk = panel.bytes_per_k();
    let (mut k0, mut b0) = (0usize, 0usize);
    for s in 0..segs {
        let len = *panel.seg_len.get_unchecked(s) as usize;
        let w = panel.codes.as_ptr().add(b0);
        let xp = x.data.as_ptr().add(r0 * x.stride + k0);
        let raw = raw_neon::<R, NIBBLES>(w, xp, x.stride, len);
        let xs = xsum.as_ptr().add(r0 * segs + s);
        segment_step::<R>(&raw, panel, s, xs, segs, out.as_mut_ptr().add(r0 * NR));
        k0 += len;
        b0 += len * bpk;
    }
}

// ---------------------------------------------------------------------------------------------
// NEON with dotprod: `sdot`

/// `acc[i] += Σ_c a[4i + c] · b[4I + c]` (i8 × i8 into each int32 lane): `sdot` by element.
/// Stable Rust has no `vdotq_laneq_s32` yet, hence `asm!`.
#[inline(always)]
unsafe fn sdot_lane<const I: i32>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    const { assert!(0 <= I && I < 4) };
    let mut acc = acc;
    // SAFETY: one register-to-register instruction of the dotprod extension, only ever inlined
    // into `#[target_feature(enable = "neon,dotprod")]` functions, which run after the CPU
    // check; no memory, stack or flags touched.
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.4b[{i}]",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        i = const I,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// `acc[i] += Σ_c a[4i + c] · b[4i + c]`: `sdot`, vector form (see [`sdot_lane`]).
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: as in `sdot_lane`.
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// Quad `I` of each row's 16 codes `x[r]` against the 64-byte quad of an 8-bit panel at `w`,
/// its codes `p` taken as `p - 128` (top bit flipped): `acc[r] += Σ (p - 128)·x`.
#[inline(always)]
unsafe fn quad_dot<const I: i32, const R: usize>(
    acc: &mut [[int32x4_t; 4]; R],
    w: *const u8,
    x: &[int8x16_t; R],
) {
    let flip = vdupq_n_u8(0x80);
    for v in 0..4 {
        let p = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(w.add(16 * v)), flip));
        for r in 0..R {
            acc[r][v] = sdot_lane::<I>(acc[r][v], p, x[r]);
        }
    }
}

/// Quads `LO` and `HI` of each row's 16 codes `x[r]` against the 64-byte block of a 4-bit
/// panel at `w` (low nibbles, then high nibbles): `acc[r] += Σ p·x`.
#[inline(always)]
unsafe fn block_dot<const LO: i32, const HI: i32, const R: usize>(
    acc: &mut [[int32x4_t; 4]; R],
    w: *const u8,
    x: &[int8x16_t; R],
) {
    let low = vdupq_n_u8(0x0f);
    for v in 0..4 {
        let b = vld1q_u8(w.add(16 * v));
        // Nibbles are 0..=15: valid i8 as they are.
        let p0 = vreinterpretq_s8_u8(vandq_u8(b, low));
        let p1 = vreinterpretq_s8_u8(vshrq_n_u8::<4>(b));
        for r in 0..R {
            acc[r][v] = sdot_lane::<LO>(acc[r][v], p0, x[r]);
            acc[r][v] = sdot_lane::<HI>(acc[r][v], p1, x[r]);
        }
    }
}

/// `raw` sums as [`raw_neon`] computes them, with `sdot`: 16 codes of `k` per row per step,
/// the last step's zero-padded. For 8-bit panels, `Σx` of each row is accumulated alongside
/// (`sdot` against ones) and `128 · Σx` added back at the end.
#[inline(always)]
unsafe fn raw_dotprod<const R: usize, const NIBBLES: bool>(
    w: *const u8,
    x: *const i8,
    stride: usize,
    len: usize,
) -> [[int32x4_t; 4]; R] {
    let mut acc = [[vdupq_n_s32(0); 4]; R];
    let mut xsum = [vdupq_n_s32(0); R];
    let mut k = 0;
    while k + 16 <= len {
        let mut xv = [vdupq_n_s8(0); R];
        for r in 0..R {
            xv[r] = vld1q_s8(x.add(r * stride + k));
        }
        step_dotprod::<R, NIBBLES>(&mut acc, &mut xsum, w, k, &xv, 16);
        k += 16;
    }
    if k < len {
        let n = len - k;
        let mut xv = [vdupq_n_s8(0); R];
        for r in 0..R {
            let mut buf = [0i8; 16];
            core::ptr::copy_nonoverlapping(x.add(r * stride + k), buf.as_mut_ptr(), n);
            xv[r] = vld1q_s8(buf.as_ptr());
        }
        step_dotprod::<R, NIBBLES>(&mut acc, &mut xsum, w, k, &xv, n);
    }
    if !NIBBLES {
        // Σ (p - 128)·x + 128·Σx = Σ p·x, wrapping.
        for r in 0..R {
            let fix = vdupq_n_s32(vaddvq_s32(xsum[r]).wrapping_mul(128));
            for v in 0..4 {
                acc[r][v] = vaddq_s32(acc[r][v], fix);
            }
        }
    }
    acc
}

/// One step of [`raw_dotprod`]: codes `k..k + n` (`n <= 16`; zero past `n` in `x`) of each
/// row against the panel segment at `w`, and for 8-bit panels their sum into `xsum`.
#[inline(always)]
unsafe fn step_dotprod<const R: usize, const NIBBLES: bool>(
    acc: &mut [[int32x4_t; 4]; R],
    xsum: &mut [int32x4_t; R],
    w: *const u8,
    k: usize,
    x: &[int8x16_t; R],
    n: usize,
) {
    if NIBBLES {
        // 64 bytes per 8 `k`; `n` is 8 or 16 (segments are multiples of 8).
        let w = w.add(8 * k);
        block_dot::<0, 1, R>(acc, w, x);
        if n == 16 {
            block_dot::<2, 3, R>(acc, w.add(64), x);
        }
    } else {
        // 64 bytes per quad; `n` is 4, 8, 12 or 16 (`dot_tile`'s `kp` is a multiple of 4).
        let w = w.add(16 * k);
        quad_dot::<0, R>(acc, w, x);
        if n >= 8 {
            quad_dot::<1, R>(acc, w.add(64), x);
        }
        if n >= 12 {
            quad_dot::<2, R>(acc, w.add(128), x);
        }
        if n == 16 {
            quad_dot::<3, R>(acc, w.add(192), x);
        }
        let ones = vdupq_n_s8(1);
        for r in 0..R {
            xsum[r] = sdot(xsum[r], ones, x[r]);
        }
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_dotprod(panel: &[u8], x: &Rows<i8>, out: &mut TileI32) {
    let mut r0 = 0;
    while r0 < x.rows {
        let rows = R_PASS.min(x.rows - r0);
        let xp = x.data.as_ptr().add(r0 * x.stride);
        let o = out.as_mut_ptr().add(r0 * NR);
        with_rows!(rows, R => {
            let raw = raw_dotprod::<R, false>(panel.as_ptr(), xp, x.stride, x.kp);
            store_raw::<R>(&raw, o)
        });
        r0 += rows;
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn linear_dotprod<const NIBBLES: bool>(
    panel: &Panel,
    x: &Rows<i8>,
    xsum: &[f32],
    out: &mut TileF32,
) {
    out[..x.rows * NR].fill(0.0);
    let mut r0 = 0;
    while r0 < x.rows {
        let rows = R_PASS.min(x.rows - r0);
        with_rows!(rows, R => linear_pass_dotprod::<R, NIBBLES>(panel, x, xsum, r0, out));
        r0 += rows;
    }
}

/// As [`linear_pass_neon`], with `sdot`.
#[inline(always)]
unsafe fn linear_pass_dotprod<const R: usize, const NIBBLES: bool>(
    panel: &Panel,
    x: &Rows<i8>,
    xsum: &[f32],
    r0: usize,
    out: &mut TileF32,
) {
    let segs = panel.seg_len.len();
    let bpk = panel.bytes_per_k();
    let (mut k0, mut b0) = (0usize, 0usize);
    for s in 0..segs {
        let len = *panel.seg_len.get_unchecked(s) as usize;
        let w = panel.codes.as_ptr().add(b0);
        let xp = x.data.as_ptr().add(r0 * x.stride + k0);
        let raw = raw_dotprod::<R, NIBBLES>(w, xp, x.stride, len);
        let xs = xsum.as_ptr().add(r0 * segs + s);
        segment_step::<R>(&raw, panel, s, xs, segs, out.as_mut_ptr().add(r0 * NR));
        k0 += len;
        b0 += len * bpk;
    }
}

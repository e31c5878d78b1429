//! NEON quantization kernels on 128-bit vectors, bit-identical to the scalar oracle.
//!
//! Main loops take 16 floats (or one 16-byte vector of codes) per step; the remainder goes to
//! the scalar kernel, so tails cannot disagree with it. Float operations are the oracle's own,
//! one for one: true division (`vdivq_f32`, never the reciprocal estimate), `fmaxnm`/`fminnm`
//! (which is what `f32::max`/`f32::min` compile to on aarch64, so a NaN quotient clamps to the
//! lower bound like the oracle), round-half-to-even conversion, and a separate subtract and
//! multiply (no fused multiply-add) when dequantizing.
//!
//! The GEMM tiles are in `gemm.rs`; the `neon-dotprod` table differs from the NEON one only in
//! `dot_tile` and `linear_tile` (`sdot`).

use crate::simd::{scalar, MinMax, QParams};
use std::arch::aarch64::*;
use std::arch::asm;

// The safe wrappers below call `#[target_feature(enable = "neon")]` functions after the
// compile-time check of `neon_ok`. That is sound because NEON is part of the baseline of every aarch64 target
// with `std`; this assertion turns a build for an exotic target without it into a compile
// error instead of undefined behavior.
const _: () = assert!(
    cfg!(target_feature = "neon"),
    "qfast's aarch64 kernels need the `neon` target feature"
);

/// The wrappers' CPU check: NEON is part of the baseline of every aarch64 target with `std`
/// (asserted above), so this is `true` wherever the code compiles.
#[inline(always)]
pub(super) fn neon_ok() -> bool {
    cfg!(target_feature = "neon")
}

/// Floats per main-loop step: four vectors, enough independent work to hide latencies.
const STEP: usize = 16;

const ABS_MASK: u32 = 0x7fff_ffff;

// ---------------------------------------------------------------------------------------------
// Safe entry points (the table's function pointers).

crate::simd::safe_wrappers! {
    cpu: neon_ok(), else: crate::simd::scalar;

    fn minmax(x: &[f32]) -> MinMax => minmax_neon(x);

    fn minmax_lanes(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool =>
        minmax_lanes_neon(x, min, max);

    fn quantize(x: &[f32], p: &QParams, out: &mut [u8]) => quantize_neon(x, p, out);

    /// Composed from the per-slice kernel: a direct call per group.
    fn minmax_groups(x: &[f32], group_size: usize, out: &mut [MinMax]) =>
        crate::simd::minmax_groups_with(minmax, x, group_size, out);

    /// Composed from the per-slice kernel: a direct call per group.
    fn quantize_groups(x: &[f32], group_size: usize, grid: &[QParams], out: &mut [u8]) =>
        crate::simd::quantize_groups_with(quantize, x, group_size, grid, out);

    fn quantize_lanes(
        x: &[f32],
        scale: &[f32],
        zero_point: &[i32],
        qmin: i32,
        qmax: i32,
        out: &mut [u8],
    ) => quantize_lanes_neon(x, scale, zero_point, qmin, qmax, out);

    fn dequantize(codes: &[u8], signed: bool, scale: f32, zero_point: f32, out: &mut [f32]) => {
        if signed {
            dequantize_neon::<true>(codes, scale, zero_point, out);
        } else {
            dequantize_neon::<false>(codes, scale, zero_point, out);
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
            dequantize_lanes_neon::<true>(codes, scale, zero_point, out);
        } else {
            dequantize_lanes_neon::<false>(codes, scale, zero_point, out);
        }
    };

    fn pack4(codes: &[u8], out: &mut [u8]) => pack4_neon(codes, out);

    fn unpack4(packed: &[u8], signed: bool, out: &mut [u8]) => {
        if signed {
            unpack4_neon::<true>(packed, out);
        } else {
            unpack4_neon::<false>(packed, out);
        }
    };

    fn pack2(codes: &[u8], out: &mut [u8]) => pack2_neon(codes, out);

    fn unpack2(packed: &[u8], signed: bool, out: &mut [u8]) => {
        if signed {
            unpack2_neon::<true>(packed, out);
        } else {
            unpack2_neon::<false>(packed, out);
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers, inlined into the `#[target_feature]` functions that call them.

/// Loads the four float vectors of a 16-float chunk.
///
/// # Safety
/// `p` is valid for reading 16 floats.
#[inline(always)]
unsafe fn load16(p: *const f32) -> [float32x4_t; 4] {
    [
        vld1q_f32(p),
        vld1q_f32(p.add(4)),
        vld1q_f32(p.add(8)),
        vld1q_f32(p.add(12)),
    ]
}

/// Stores four float vectors as 16 consecutive floats.
///
/// # Safety
/// `p` is valid for writing 16 floats.
#[inline(always)]
unsafe fn store16(p: *mut f32, v: [float32x4_t; 4]) {
    vst1q_f32(p, v[0]);
    vst1q_f32(p.add(4), v[1]);
    vst1q_f32(p.add(8), v[2]);
    vst1q_f32(p.add(12), v[3]);
}

/// `x` with signaling NaNs made quiet and every other value unchanged. `f32::min`/`f32::max`
/// return the number when one operand is any NaN, while FMINNM/FMAXNM return NaN for a
/// signaling one; quieting the operands first gives Rust's semantics, which is also what the
/// oracle compiles to from Rust 1.96 on (older compilers emit a bare FMINNM there, so with them
/// a signaling NaN is the one input where this path and the oracle can differ). Written as
/// `asm!` because LLVM folds `vminnmq_f32(x, x)` to `x`.
#[inline(always)]
unsafe fn quiet(x: float32x4_t) -> float32x4_t {
    let q: float32x4_t;
    // SAFETY: one register-to-register NEON instruction; no memory, stack or flags touched.
    asm!(
        "fminnm {q:v}.4s, {x:v}.4s, {x:v}.4s",
        q = lateout(vreg) q,
        x = in(vreg) x,
        options(pure, nomem, nostack, preserves_flags),
    );
    q
}

/// `|x|` as bits: at or above `scalar::NONFINITE_BITS` exactly when `x` is ±Inf or NaN.
#[inline(always)]
unsafe fn abs_bits(x: float32x4_t) -> uint32x4_t {
    vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(ABS_MASK))
}

/// One vector of `quantize_one` up to the final narrowing: the code as i32.
#[inline(always)]
unsafe fn quantize4(
    x: float32x4_t,
    scale: float32x4_t,
    zero_point: int32x4_t,
    lo: float32x4_t,
    hi: float32x4_t,
) -> int32x4_t {
    let v = vminnmq_f32(vmaxnmq_f32(vdivq_f32(x, scale), lo), hi);
    // After the clamp the value is an in-range float; FCVTNS rounds it half to even.
    vaddq_s32(vcvtnq_s32_f32(v), zero_point)
}

/// Truncates four vectors of i32 codes to 16 bytes, like `as u8` on each.
#[inline(always)]
unsafe fn narrow16(q: [int32x4_t; 4]) -> uint8x16_t {
    let a = vmovn_high_s32(vmovn_s32(q[0]), q[1]);
    let b = vmovn_high_s32(vmovn_s32(q[2]), q[3]);
    vreinterpretq_u8_s8(vmovn_high_s16(vmovn_s16(a), b))
}

/// The 16 codes of a byte vector as floats, read as i8 when `SIGNED` (all exact).
#[inline(always)]
unsafe fn widen16<const SIGNED: bool>(c: uint8x16_t) -> [float32x4_t; 4] {
    if SIGNED {
        let c = vreinterpretq_s8_u8(c);
        let lo = vmovl_s8(vget_low_s8(c));
        let hi = vmovl_high_s8(c);
        [
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
            vcvtq_f32_s32(vmovl_high_s16(lo)),
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
            vcvtq_f32_s32(vmovl_high_s16(hi)),
        ]
    } else {
        let lo = vmovl_u8(vget_low_u8(c));
        let hi = vmovl_high_u8(c);
        [
            vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))),
            vcvtq_f32_u32(vmovl_high_u16(lo)),
            vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))),
            vcvtq_f32_u32(vmovl_high_u16(hi)),
        ]
    }
}

/// `(q - zero_point) * scale`, rounded after each step as in the oracle.
#[inline(always)]
unsafe fn dequantize4(q: float32x4_t, scale: float32x4_t, zero_point: float32x4_t) -> float32x4_t {
    vmulq_f32(vsubq_f32(q, zero_point), scale)
}

/// The low `BITS` bits of each byte, sign-extended when `SIGNED` (arithmetic shift).
#[inline(always)]
unsafe fn extend<const SIGNED: bool, const BITS: i32>(v: uint8x16_t) -> uint8x16_t {
    if SIGNED {
        // Shift left then right by `8 - BITS`, spelled out per width: the shift intrinsics
        // take const immediates, and stable Rust cannot compute `8 - BITS` in that position.
        match BITS {
            2 => vreinterpretq_u8_s8(vshrq_n_s8::<6>(vshlq_n_s8::<6>(vreinterpretq_s8_u8(v)))),
            4 => vreinterpretq_u8_s8(vshrq_n_s8::<4>(vshlq_n_s8::<4>(vreinterpretq_s8_u8(v)))),
            _ => unreachable!(),
        }
    } else {
        vandq_u8(v, vdupq_n_u8(((1u16 << BITS) - 1) as u8))
    }
}

// ---------------------------------------------------------------------------------------------
// Range statistics.

#[target_feature(enable = "neon")]
unsafe fn minmax_neon(x: &[f32]) -> MinMax {
    let mut lo = [vdupq_n_f32(f32::INFINITY); 4];
    let mut hi = [vdupq_n_f32(f32::NEG_INFINITY); 4];
    let mut bits = [vdupq_n_u32(0); 4];
    let chunks = x.chunks_exact(STEP);
    let tail = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds exactly 16 floats.
        let v = load16(c.as_ptr());
        for j in 0..4 {
            let q = quiet(v[j]);
            lo[j] = vminnmq_f32(lo[j], q);
            hi[j] = vmaxnmq_f32(hi[j], q);
            bits[j] = vmaxq_u32(bits[j], abs_bits(v[j]));
        }
    }
    // min/max are exact and (with -0 ordered below +0, as FMINNM does) order-independent on
    // numbers, so reducing in another order than the oracle's gives the same result.
    let lo = vminnmq_f32(vminnmq_f32(lo[0], lo[1]), vminnmq_f32(lo[2], lo[3]));
    let hi = vmaxnmq_f32(vmaxnmq_f32(hi[0], hi[1]), vmaxnmq_f32(hi[2], hi[3]));
    let bits = vmaxq_u32(vmaxq_u32(bits[0], bits[1]), vmaxq_u32(bits[2], bits[3]));
    let head = MinMax {
        min: vminnmvq_f32(lo),
        max: vmaxnmvq_f32(hi),
        finite: vmaxvq_u32(bits) < scalar::NONFINITE_BITS,
    };
    head.merge(scalar::minmax(tail))
}

#[target_feature(enable = "neon")]
unsafe fn minmax_lanes_neon(x: &[f32], min: &mut [f32], max: &mut [f32]) -> bool {
    assert!(x.len() == min.len() && x.len() == max.len());
    let n = x.len() / STEP * STEP;
    let mut bits = vdupq_n_u32(0);
    for ((xc, lc), hc) in x[..n]
        .chunks_exact(STEP)
        .zip(min[..n].chunks_exact_mut(STEP))
        .zip(max[..n].chunks_exact_mut(STEP))
    {
        // SAFETY: each chunk holds exactly 16 floats; `lc` and `hc` are distinct `&mut`s.
        let v = load16(xc.as_ptr());
        let (l, h) = (load16(lc.as_ptr()), load16(hc.as_ptr()));
        let (mut nl, mut nh) = (l, h);
        for j in 0..4 {
            let q = quiet(v[j]);
            nl[j] = vminnmq_f32(quiet(l[j]), q);
            nh[j] = vmaxnmq_f32(quiet(h[j]), q);
            bits = vmaxq_u32(bits, abs_bits(v[j]));
        }
        // SAFETY: as above, 16 floats each.
        store16(lc.as_mut_ptr(), nl);
        store16(hc.as_mut_ptr(), nh);
    }
    let finite = vmaxvq_u32(bits) < scalar::NONFINITE_BITS;
    let tail_finite = scalar::minmax_lanes(&x[n..], &mut min[n..], &mut max[n..]);
    finite && tail_finite
}

// ---------------------------------------------------------------------------------------------
// Quantize.

#[target_feature(enable = "neon")]
unsafe fn quantize_neon(x: &[f32], p: &QParams, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    let n = x.len() / STEP * STEP;
    let scale = vdupq_n_f32(p.scale);
    let zero_point = vdupq_n_s32(p.zero_point);
    // Exactly the oracle's bounds: integers converted once, clamped against in float.
    let lo = vdupq_n_f32((p.qmin - p.zero_point) as f32);
    let hi = vdupq_n_f32((p.qmax - p.zero_point) as f32);
    for (xc, oc) in x[..n]
        .chunks_exact(STEP)
        .zip(out[..n].chunks_exact_mut(STEP))
    {
        // SAFETY: `xc` holds exactly 16 floats.
        let v = load16(xc.as_ptr());
        let q = v.map(|v| quantize4(v, scale, zero_point, lo, hi));
        // SAFETY: `oc` holds exactly 16 bytes.
        vst1q_u8(oc.as_mut_ptr(), narrow16(q));
    }
    scalar::quantize(&x[n..], p, &mut out[n..]);
}

#[target_feature(enable = "neon")]
unsafe fn quantize_lanes_neon(
    x: &[f32],
    scale: &[f32],
    zero_point: &[i32],
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) {
    assert!(x.len() == out.len() && x.len() == scale.len() && x.len() == zero_point.len());
    let n = x.len() / STEP * STEP;
    let (qmin_v, qmax_v) = (vdupq_n_s32(qmin), vdupq_n_s32(qmax));
    for (i, oc) in (0..n).step_by(STEP).zip(out[..n].chunks_exact_mut(STEP)) {
        // SAFETY: `i + 16 <= n`, and `x`, `scale`, `zero_point` all hold `n` or more elements.
        let (v, s) = (load16(x.as_ptr().add(i)), load16(scale.as_ptr().add(i)));
        let mut q = [vdupq_n_s32(0); 4];
        for j in 0..4 {
            // SAFETY: as above; this reads `zero_point[i + 4j .. i + 4j + 4]`.
            let zp = vld1q_s32(zero_point.as_ptr().add(i + 4 * j));
            // Wrapping i32 subtraction and round-to-nearest conversion, like `as f32`.
            let lo = vcvtq_f32_s32(vsubq_s32(qmin_v, zp));
            let hi = vcvtq_f32_s32(vsubq_s32(qmax_v, zp));
            q[j] = quantize4(v[j], s[j], zp, lo, hi);
        }
        // SAFETY: `oc` holds exactly 16 bytes.
        vst1q_u8(oc.as_mut_ptr(), narrow16(q));
    }
    scalar::quantize_lanes(
        &x[n..],
        &scale[n..],
        &zero_point[n..],
        qmin,
        qmax,
        &mut out[n..],
    );
}

// ---------------------------------------------------------------------------------------------
// Dequantize.

#[target_feature(enable = "neon")]
unsafe fn dequantize_neon<const SIGNED: bool>(
    codes: &[u8],
    scale: f32,
    zero_point: f32,
    out: &mut [f32],
) {
    assert_eq!(codes.len(), out.len());
    let n = codes.len() / STEP * STEP;
    let (s, z) = (vdupq_n_f32(scale), vdupq_n_f32(zero_point));
    for (cc, oc) in codes[..n]
        .chunks_exact(STEP)
        .zip(out[..n].chunks_exact_mut(STEP))
    {
        // SAFETY: `cc` holds exactly 16 bytes.
        let q = widen16::<SIGNED>(vld1q_u8(cc.as_ptr()));
        // SAFETY: `oc` holds exactly 16 floats.
        store16(oc.as_mut_ptr(), q.map(|q| dequantize4(q, s, z)));
    }
    scalar::dequantize(&codes[n..], SIGNED, scale, zero_point, &mut out[n..]);
}

#[target_feature(enable = "neon")]
unsafe fn dequantize_lanes_neon<const SIGNED: bool>(
    codes: &[u8],
    scale: &[f32],
    zero_point: &[f32],
    out: &mut [f32],
) {
    assert!(
        codes.len() == out.len() && codes.len() == scale.len() && codes.len() == zero_point.len()
    );
    let n = codes.len() / STEP * STEP;
    for (i, oc) in (0..n).step_by(STEP).zip(out[..n].chunks_exact_mut(STEP)) {
        // SAFETY: `i + 16 <= n`, and `codes`, `scale`, `zero_point` all hold `n` or more.
        let q = widen16::<SIGNED>(vld1q_u8(codes.as_ptr().add(i)));
        let s = load16(scale.as_ptr().add(i));
        let z = load16(zero_point.as_ptr().add(i));
        let r = [0, 1, 2, 3].map(|j| dequantize4(q[j], s[j], z[j]));
        // SAFETY: `oc` holds exactly 16 floats.
        store16(oc.as_mut_ptr(), r);
    }
    scalar::dequantize_lanes(
        &codes[n..],
        SIGNED,
        &scale[n..],
        &zero_point[n..],
        &mut out[n..],
    );
}

// ---------------------------------------------------------------------------------------------
// Bit packing. LD2/LD4 de-interleave the codes so that each output byte is built from the
// same lane of two (four) vectors; ST2/ST4 interleave them back when unpacking.

#[target_feature(enable = "neon")]
unsafe fn pack4_neon(codes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(2));
    let m = codes.len() / 32 * 16;
    for (cc, oc) in codes[..2 * m]
        .chunks_exact(32)
        .zip(out[..m].chunks_exact_mut(16))
    {
        // SAFETY: `cc` holds exactly 32 bytes.
        let c = vld2q_u8(cc.as_ptr());
        // SLI: (odd << 4) | (even & 0x0f).
        let packed = vsliq_n_u8::<4>(c.0, c.1);
        // SAFETY: `oc` holds exactly 16 bytes.
        vst1q_u8(oc.as_mut_ptr(), packed);
    }
    scalar::pack4(&codes[2 * m..], &mut out[m..]);
}

#[target_feature(enable = "neon")]
unsafe fn unpack4_neon<const SIGNED: bool>(packed: &[u8], out: &mut [u8]) {
    assert!(packed.len() >= out.len().div_ceil(2));
    let m = out.len() / 32 * 16;
    for (pc, oc) in packed[..m]
        .chunks_exact(16)
        .zip(out[..2 * m].chunks_exact_mut(32))
    {
        // SAFETY: `pc` holds exactly 16 bytes.
        let p = vld1q_u8(pc.as_ptr());
        let even = extend::<SIGNED, 4>(p);
        let odd = if SIGNED {
            vreinterpretq_u8_s8(vshrq_n_s8::<4>(vreinterpretq_s8_u8(p)))
        } else {
            vshrq_n_u8::<4>(p)
        };
        // SAFETY: `oc` holds exactly 32 bytes.
        vst2q_u8(oc.as_mut_ptr(), uint8x16x2_t(even, odd));
    }
    scalar::unpack4(&packed[m..], SIGNED, &mut out[2 * m..]);
}

#[target_feature(enable = "neon")]
unsafe fn pack2_neon(codes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(4));
    let m = codes.len() / 64 * 16;
    for (cc, oc) in codes[..4 * m]
        .chunks_exact(64)
        .zip(out[..m].chunks_exact_mut(16))
    {
        // SAFETY: `cc` holds exactly 64 bytes.
        let c = vld4q_u8(cc.as_ptr());
        // Three shift-left-inserts: c3 << 6 | (c2 & 3) << 4 | (c1 & 3) << 2 | (c0 & 3).
        let packed = vsliq_n_u8::<2>(c.0, vsliq_n_u8::<2>(c.1, vsliq_n_u8::<2>(c.2, c.3)));
        // SAFETY: `oc` holds exactly 16 bytes.
        vst1q_u8(oc.as_mut_ptr(), packed);
    }
    scalar::pack2(&codes[4 * m..], &mut out[m..]);
}

#[target_feature(enable = "neon")]
unsafe fn unpack2_neon<const SIGNED: bool>(packed: &[u8], out: &mut [u8]) {
    assert!(packed.len() >= out.len().div_ceil(4));
    let m = out.len() / 64 * 16;
    for (pc, oc) in packed[..m]
        .chunks_exact(16)
        .zip(out[..4 * m].chunks_exact_mut(64))
    {
        // SAFETY: `pc` holds exactly 16 bytes.
        let p = vld1q_u8(pc.as_ptr());
        let top = if SIGNED {
            vreinterpretq_u8_s8(vshrq_n_s8::<6>(vreinterpretq_s8_u8(p)))
        } else {
            vshrq_n_u8::<6>(p)
        };
        let crumbs = uint8x16x4_t(
            extend::<SIGNED, 2>(p),
            extend::<SIGNED, 2>(vshrq_n_u8::<2>(p)),
            extend::<SIGNED, 2>(vshrq_n_u8::<4>(p)),
            top,
        );
        // SAFETY: `oc` holds exactly 64 bytes.
        vst4q_u8(oc.as_mut_ptr(), crumbs);
    }
    scalar::unpack2(&packed[m..], SIGNED, &mut out[4 * m..]);
}

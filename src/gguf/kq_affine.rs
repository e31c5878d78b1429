//! ggml's quantizers of the types with a min (`d * q - m`): Q2_K, Q4_K, Q5_K, and the
//! importance-weighted Q4_1 / Q5_1, bit-exact with llama.cpp 0.3.36's `ggml-quants.c`.
//!
//! This is a Rust port of ggml's C (MIT, © the ggml authors: `ggml/src/ggml-quants.c` of the
//! llama.cpp vendored by llama-cpp-python 0.3.36), written from that code as the definition.
//! It is what `quantize_<type>(src, dst, nrow, n_per_row, quant_weights)` computes per row:
//!
//! - Q2_K / Q4_K / Q5_K without an importance matrix: `quantize_row_qN_K_ref` (the sub-block
//!   search `make_qkx2_quants`, then scales and mins rounded to 4 or 6 bits against the
//!   largest, then the codes requantized with the stored scales);
//! - with one: `quantize_row_qN_K_impl` (per-value weights `qw * sqrt(sigma2 + x²)`, where
//!   `sigma2` is the block's mean square, twice it for Q4_K / Q5_K; `make_qkx3_quants` per
//!   sub-block; `make_qp_quants` for the scales and mins, weighted by the sub-block weights);
//! - Q4_1 / Q5_1 with one: `quantize_row_q4_1_impl` / `q5_1_impl` (`sigma2` the row's mean
//!   square, `make_qkx3_quants` per block of 32).
//!
//! Bit-exactness with ggml as `llama-quantize` builds it (`-ffp-contract=off`) rests on:
//! the same float32 operations in the same order (no FMA: Rust never contracts), float32
//! throughout (ggml computes nothing here in double), `nearest_int`'s magic-number rounding
//! (round half to even, and its wrap-around for huge values), C's `MIN` / `MAX` macros
//! (`a < b ? a : b`, which differ from `f32::min` on NaN), strict `<` / `>` so that the first
//! candidate stays on ties, the conversions of C (`int` to `uint8_t` keeps the low byte), and
//! ggml's own float16 conversion (`ggml_compute_fp32_to_fp16`, rounding to nearest even, NaN
//! to `0x7E00` with the sign). Non-finite intermediates (a row of values near 1e30 squares to
//! infinity) flow through the same operations as in C and give the same bytes.
//!
//! This is the scalar oracle; faster code will live under `src/simd/<isa>/` and must match it.

use super::ggml::{fp16_to_fp32, fp32_to_fp16, nearest_int};
use super::kquants::{Q2_K_BYTES, Q4_K_BYTES, Q5_K_BYTES, QK_K};
use super::legacy::{Q4_1_BYTES, Q5_1_BYTES, QK};
use super::GgmlType;

/// The types this module implements (`rows::row_quantizer` offers only these).
pub const DONE: &[GgmlType] = &[
    GgmlType::Q2_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q4_1,
    GgmlType::Q5_1,
];

/// `GROUP_MAX_EPS`: below this the largest value of a group counts as zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Stores `v` as ggml's float16 at `out[at..at + 2]` and returns the value stored, widened.
fn put_f16(out: &mut [u8], at: usize, v: f32) -> f32 {
    let h = fp32_to_fp16(v);
    out[at..at + 2].copy_from_slice(&h.to_le_bytes());
    fp16_to_fp32(h)
}

// ---------------------------------------------------------------------------------------------
// The searches

/// C's `MAX(a, b)` macro: `a > b ? a : b`.
#[inline(always)]
fn c_max_f(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `l[i] = clamp(nearest_int(iscale * (x[i] - min)), 0, nmax)`.
#[inline(always)]
fn codes(x: &[f32], min: f32, iscale: f32, nmax: i32, l: &mut [u8]) {
    for (li, &xi) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * (xi - min)).clamp(0, nmax) as u8;
    }
}

/// `Σ w[i] * err(scale * l[i] + min - x[i])`, `err` the absolute value or the square, summed
/// in order.
#[inline(always)]
fn weighted_error(x: &[f32], w: &[f32], l: &[u8], scale: f32, min: f32, use_mad: bool) -> f32 {
    let mut err = 0f32;
    for ((&xi, &wi), &li) in x.iter().zip(w).zip(l) {
        let diff = scale * li as f32 + min - xi;
        let diff = if use_mad { diff.abs() } else { diff * diff };
        err += wi * diff;
    }
    err
}

/// The shared body of `make_qkx2_quants` and `make_qkx3_quants` (with weights): the codes
/// `L` in `0..=nmax`, and `(scale, the_min)` with `x ≈ scale * L - the_min`. The two C
/// functions differ only in the flat-group test (`max == min` and `max <= min`, the same for
/// finite `x`) and in `make_qkx3_quants`'s `x²` default weights, which no caller here uses.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn make_qkx(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    flat: fn(f32, f32) -> bool,
) -> (f32, f32) {
    let n = x.len();
    debug_assert!(weights.len() == n && l_out.len() == n && laux.len() == n);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if flat(max, min) {
        l_out.fill(0);
        return (0.0, -min);
    }
    let fnmax = nmax as f32;
    let mut iscale = fnmax / (max - min);
    let mut scale = 1.0 / iscale;
    // The codes first (independent per value), then the sums in ggml's order.
    codes(x, min, iscale, nmax, l_out);
    let mut best_error = weighted_error(x, weights, l_out, scale, min, use_mad);
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + fnmax) / (max - min);
        codes(x, min, iscale, nmax, laux);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((&xi, &w), &l) in x.iter().zip(weights).zip(laux.iter()) {
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * xi;
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error = weighted_error(x, weights, laux, this_scale, this_min, use_mad);
            if cur_error < best_error {
                l_out.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qkx2_quants` (with weights): returns `(scale, the_min)` and the codes in `l`;
/// `laux` is scratch of `x.len()` bytes.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx(
        nmax,
        x,
        weights,
        l,
        laux,
        rmin,
        rdelta,
        nstep,
        use_mad,
        |max, min| max == min,
    )
}

/// ggml's `make_qkx3_quants` with weights: returns `(scale, the_min)` and the codes in `l`;
/// `laux` is scratch of `x.len()` bytes.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx(
        nmax,
        x,
        weights,
        l,
        laux,
        rmin,
        rdelta,
        nstep,
        use_mad,
        |max, min| max <= min,
    )
}

/// ggml's `make_qp_quants`: non-negative `x` (sub-block scales or mins) on the grid
/// `scale * L`, `L` in `0..=nmax`, weighted by `quant_weights`; returns `scale`, the codes in
/// `l`. As in C, codes are stored as `uint8_t` (a negative `nearest_int` keeps its low byte)
/// while the sums use the `int` value.
pub fn make_qp_quants(nmax: i32, x: &[f32], l_out: &mut [u8], quant_weights: &[f32]) -> f32 {
    let n = x.len();
    debug_assert!(l_out.len() == n && quant_weights.len() == n);
    let mut max = 0f32;
    for &v in x {
        max = c_max_f(max, v);
    }
    if max < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let fnmax = nmax as f32;
    let mut iscale = fnmax / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += quant_weights[i] * diff * diff;
    }
    for is in -4..=4i32 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + fnmax) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += quant_weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = quant_weights[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = quant_weights[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants

/// The 6-bit scales and mins of Q4_K / Q5_K, packed as ggml does (`scales[12]`; the inverse
/// of `get_scale_min_k4`). As in C, the bytes are computed in `int` and stored truncated.
fn pack_k4_scales(ls: &[u8; 8], lm: &[u8; 8], scales: &mut [u8]) {
    for j in 0..8 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            scales[j] = ls;
            scales[j + 4] = lm;
        } else {
            scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            scales[j - 4] |= (ls >> 4) << 6;
            scales[j] |= (lm >> 4) << 6;
        }
    }
}

/// ggml's `get_scale_min_k4`.
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The requantization of Q4_K / Q5_K with the stored `d`, `dmin` and 6-bit scales: codes
/// `nearest_int((x + dm) / d)` in `0..=nmax`, per sub-block of 32 (a sub-block whose `d` is
/// zero keeps its codes from the search).
fn requantize_k4(x: &[f32], d: f32, dmin: f32, scales: &[u8], nmax: i32, l: &mut [u8; QK_K]) {
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let d = d * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
}

/// Sub-block scales and mins of Q4_K / Q5_K without an importance matrix
/// (`quantize_row_qN_K_ref`): `make_qkx2_quants` with weights `rms + |x|`, then both rounded
/// to 6 bits against the largest. Returns `(d, dmin)` (the float16 values, widened).
fn k4_scales_ref(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
    out_scales: &mut [u8],
    out_d: &mut [u8],
) -> (f32, f32) {
    let mut weights = [0f32; 32];
    let mut laux = [0u8; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    out_scales.fill(0);
    pack_k4_scales(&ls, &lm, out_scales);
    let d = put_f16(out_d, 0, max_scale / 63.0);
    let dmin = put_f16(out_d, 2, max_min / 63.0);
    (d, dmin)
}

/// Sub-block scales and mins of Q4_K / Q5_K with an importance matrix
/// (`quantize_row_qN_K_impl`): weights `qw * sqrt(sigma2 + x²)` with `sigma2 = 2 * mean(x²)`,
/// `make_qkx3_quants`, then `make_qp_quants` for the 6-bit scales and mins. `clamp63`: Q5_K
/// clamps the 6-bit codes to 63 before packing, Q4_K does not.
fn k4_scales_impl(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp63: bool,
    l: &mut [u8; QK_K],
    out_scales: &mut [u8],
    out_d: &mut [u8],
) -> (f32, f32) {
    let mut weights = [0f32; 32];
    let mut laux = [0u8; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut sw = [0f32; 8];
    let mut sum_x2 = 0f32;
    for &v in &x[..QK_K] {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let qs = &qw[32 * j..32 * j + 32];
        for ((w, &q), &v) in weights.iter_mut().zip(qs).zip(xs) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let mut sumw = 0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        let (scale, min) = make_qkx3_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            -0.9,
            0.05,
            36,
            false,
        );
        scales[j] = scale;
        mins[j] = min;
    }
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp63 {
        for v in ls.iter_mut().chain(lm.iter_mut()) {
            *v = (*v).min(63);
        }
    }
    out_scales.fill(0);
    pack_k4_scales(&ls, &lm, out_scales);
    let d = put_f16(out_d, 0, d_block);
    let dmin = put_f16(out_d, 2, m_block);
    (d, dmin)
}

/// Q4_K: `d: f16, dmin: f16, scales[12], qs[128]`.
fn quantize_block_q4_k(x: &[f32], out: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let (head, qs) = out.split_at_mut(16);
    let (dd, scales) = head.split_at_mut(4);
    let (d, dmin) = match qw {
        None => k4_scales_ref(x, 15, -1.0, 20, &mut l, scales, dd),
        Some(qw) => k4_scales_impl(x, qw, 15, false, &mut l, scales, dd),
    };
    requantize_k4(x, d, dmin, scales, 15, &mut l);
    for (c, q) in qs.chunks_exact_mut(32).enumerate() {
        let j = 64 * c;
        for (i, b) in q.iter_mut().enumerate() {
            *b = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

/// Q5_K: `d: f16, dmin: f16, scales[12], qh[32], qs[128]`.
fn quantize_block_q5_k(x: &[f32], out: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let (head, rest) = out.split_at_mut(16);
    let (dd, scales) = head.split_at_mut(4);
    let (d, dmin) = match qw {
        None => k4_scales_ref(x, 31, -0.5, 15, &mut l, scales, dd),
        Some(qw) => k4_scales_impl(x, qw, 31, true, &mut l, scales, dd),
    };
    requantize_k4(x, d, dmin, scales, 31, &mut l);
    let (qh, ql) = rest.split_at_mut(QK_K / 8);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (c, q) in ql.chunks_exact_mut(32).enumerate() {
        let n = 64 * c;
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            q[j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// Q2_K: `scales[16], qs[64], d: f16, dmin: f16`.
fn quantize_block_q2_k(x: &[f32], out: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut weights = [0f32; 16];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let (sc_out, rest) = out.split_at_mut(QK_K / 16);
    let (qs, dd) = rest.split_at_mut(QK_K / 4);
    let (dm, mm) = match qw {
        None => {
            let q4scale = 15f32;
            let mut max_scale = 0f32;
            let mut max_min = 0f32;
            for j in 0..QK_K / 16 {
                let xs = &x[16 * j..16 * j + 16];
                for (w, &v) in weights.iter_mut().zip(xs) {
                    *w = v.abs();
                }
                let (scale, min) = make_qkx2_quants(
                    3,
                    xs,
                    &weights,
                    &mut l[16 * j..16 * j + 16],
                    &mut laux,
                    -0.5,
                    0.1,
                    15,
                    true,
                );
                scales[j] = scale;
                mins[j] = min;
                if scale > max_scale {
                    max_scale = scale;
                }
                if min > max_min {
                    max_min = min;
                }
            }
            let d = if max_scale > 0.0 {
                let iscale = q4scale / max_scale;
                for j in 0..QK_K / 16 {
                    sc_out[j] = nearest_int(iscale * scales[j]) as u8;
                }
                put_f16(dd, 0, max_scale / q4scale)
            } else {
                sc_out.fill(0);
                put_f16(dd, 0, 0.0)
            };
            let m = if max_min > 0.0 {
                let iscale = q4scale / max_min;
                for j in 0..QK_K / 16 {
                    let q = nearest_int(iscale * mins[j]);
                    sc_out[j] |= (q << 4) as u8;
                }
                put_f16(dd, 2, max_min / q4scale)
            } else {
                put_f16(dd, 2, 0.0)
            };
            (d, m)
        }
        Some(qw) => {
            let mut sw = [0f32; 16];
            let mut sumx2 = 0f32;
            for &v in &x[..QK_K] {
                sumx2 += v * v;
            }
            let sigma2 = sumx2 / QK_K as f32;
            for j in 0..QK_K / 16 {
                let xs = &x[16 * j..16 * j + 16];
                let qs = &qw[16 * j..16 * j + 16];
                for ((w, &q), &v) in weights.iter_mut().zip(qs).zip(xs) {
                    *w = q * (sigma2 + v * v).sqrt();
                }
                for &w in &weights {
                    sw[j] += w;
                }
                let (scale, min) = make_qkx3_quants(
                    3,
                    xs,
                    &weights,
                    &mut l[16 * j..16 * j + 16],
                    &mut laux,
                    -0.9,
                    0.05,
                    36,
                    false,
                );
                scales[j] = scale;
                mins[j] = min;
            }
            let mut ls = [0u8; 16];
            let mut lm = [0u8; 16];
            let dm = make_qp_quants(15, &scales, &mut ls, &sw);
            let mm = make_qp_quants(15, &mins, &mut lm, &sw);
            let dm = put_f16(dd, 0, dm);
            let mm = put_f16(dd, 2, mm);
            for j in 0..QK_K / 16 {
                sc_out[j] = ls[j] | (lm[j] << 4);
            }
            (dm, mm)
        }
    };
    for j in 0..QK_K / 16 {
        let d = dm * (sc_out[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (sc_out[j] >> 4) as f32;
        for ii in 0..16 {
            let q = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3);
            l[16 * j + ii] = q as u8;
        }
    }
    for (c, q) in qs.chunks_exact_mut(32).enumerate() {
        let j = 128 * c;
        for (i, b) in q.iter_mut().enumerate() {
            *b = l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

/// Quantizes a row of whole super-blocks with `block` (one `QK_K` block each), passing each
/// block its slice of the importance matrix.
fn k_row(
    block: fn(&[f32], &mut [u8], Option<&[f32]>),
    bytes: usize,
    x: &[f32],
    out: &mut [u8],
    imatrix: Option<&[f32]>,
) {
    debug_assert!(x.len().is_multiple_of(QK_K) && out.len() == x.len() / QK_K * bytes);
    debug_assert!(imatrix.is_none_or(|w| w.len() == x.len()));
    for (i, (xb, ob)) in x
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(bytes))
        .enumerate()
    {
        block(xb, ob, imatrix.map(|w| &w[QK_K * i..QK_K * (i + 1)]));
    }
}

/// One Q2_K row: `quantize_row_q2_K_ref`, or `quantize_row_q2_K_impl` with `imatrix`.
pub fn quantize_row_q2_k(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    k_row(quantize_block_q2_k, Q2_K_BYTES, x, out, imatrix);
}

/// One Q4_K row: `quantize_row_q4_K_ref`, or `quantize_row_q4_K_impl` with `imatrix`.
pub fn quantize_row_q4_k(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    k_row(quantize_block_q4_k, Q4_K_BYTES, x, out, imatrix);
}

/// One Q5_K row: `quantize_row_q5_K_ref`, or `quantize_row_q5_K_impl` with `imatrix`.
pub fn quantize_row_q5_k(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    k_row(quantize_block_q5_k, Q5_K_BYTES, x, out, imatrix);
}

// ---------------------------------------------------------------------------------------------
// Weighted Q4_1 / Q5_1

/// `quantize_row_q4_1_impl` / `q5_1_impl` with weights: per block of 32,
/// `make_qkx3_quants(nmax)` with weights `qw * sqrt(sigma2 + x²)`, `sigma2` the row's mean
/// square; `d = scale`, `m = -the_min`. `pack` writes the codes after `d` and `m`.
fn affine_weighted_row(
    x: &[f32],
    out: &mut [u8],
    qw: &[f32],
    nmax: i32,
    bytes: usize,
    pack: fn(&[u8; QK], &mut [u8]),
) {
    debug_assert!(
        x.len().is_multiple_of(QK) && out.len() == x.len() / QK * bytes && qw.len() == x.len()
    );
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / x.len() as f32;
    let mut weight = [0f32; QK];
    let mut l = [0u8; QK];
    let mut laux = [0u8; QK];
    for ((xb, ob), qb) in x
        .chunks_exact(QK)
        .zip(out.chunks_exact_mut(bytes))
        .zip(qw.chunks_exact(QK))
    {
        for ((w, &q), &v) in weight.iter_mut().zip(qb).zip(xb) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let (d, min) =
            make_qkx3_quants(nmax, xb, &weight, &mut l, &mut laux, -0.9, 0.05, 36, false);
        put_f16(ob, 0, d);
        put_f16(ob, 2, -min);
        pack(&l, &mut ob[4..]);
    }
}

fn pack_q4_1(l: &[u8; QK], qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = l[j] | (l[j + 16] << 4);
    }
}

fn pack_q5_1(l: &[u8; QK], rest: &mut [u8]) {
    let mut qh = 0u32;
    let (qh_out, qs) = rest.split_at_mut(4);
    for j in 0..QK / 2 {
        let (xi0, xi1) = (l[j], l[j + 16]);
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    qh_out.copy_from_slice(&qh.to_le_bytes());
}

/// One Q4_1 row as `quantize_row_q4_1_impl`; without an importance matrix, ggml's reference
/// quantizer (`quantize_row_q4_1_ref`).
pub fn quantize_row_q4_1_weighted(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    match imatrix {
        Some(qw) => affine_weighted_row(x, out, qw, 15, Q4_1_BYTES, pack_q4_1),
        None => super::rows::blockwise(super::legacy::quantize_q4_1, QK, Q4_1_BYTES, x, out),
    }
}

/// One Q5_1 row as `quantize_row_q5_1_impl`; without an importance matrix, ggml's reference
/// quantizer (`quantize_row_q5_1_ref`).
pub fn quantize_row_q5_1_weighted(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    match imatrix {
        Some(qw) => affine_weighted_row(x, out, qw, 31, Q5_1_BYTES, pack_q5_1),
        None => super::rows::blockwise(super::legacy::quantize_q5_1, QK, Q5_1_BYTES, x, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Extreme rows and weights run through every quantizer without a panic (in a debug build:
    /// no arithmetic overflow).
    #[test]
    fn extremes_do_not_panic() {
        let n = 2 * QK_K;
        let rows: Vec<Vec<f32>> = vec![
            vec![0.0; n],
            vec![-0.0; n],
            (0..n)
                .map(|i| if i % 2 == 0 { f32::MAX } else { -f32::MAX })
                .collect(),
            (0..n).map(|i| f32::MAX * (i as f32 / n as f32)).collect(),
            (0..n).map(|i| 1e-45 * (i % 7) as f32).collect(),
            (0..n).map(|i| if i == 3 { 1e30 } else { 1e-3 }).collect(),
            (0..n).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect(),
        ];
        let weights: Vec<Vec<f32>> = vec![
            vec![1.0; n],
            vec![0.0; n],
            vec![f32::MAX; n],
            (0..n).map(|i| if i == 5 { 1e30 } else { 0.5 }).collect(),
        ];
        let quantizers: [(crate::gguf::rows::RowQuantizer, usize, usize); 5] = [
            (quantize_row_q2_k, QK_K, Q2_K_BYTES),
            (quantize_row_q4_k, QK_K, Q4_K_BYTES),
            (quantize_row_q5_k, QK_K, Q5_K_BYTES),
            (quantize_row_q4_1_weighted, QK, Q4_1_BYTES),
            (quantize_row_q5_1_weighted, QK, Q5_1_BYTES),
        ];
        for (q, bs, ts) in quantizers {
            let mut out = vec![0u8; n / bs * ts];
            for x in &rows {
                q(x, &mut out, None);
                for w in &weights {
                    q(x, &mut out, Some(w));
                }
            }
        }
    }

    #[test]
    fn zero_block_q4_k_is_all_zero_codes() {
        let x = [0f32; QK_K];
        let mut out = [0xAAu8; Q4_K_BYTES];
        quantize_row_q4_k(&x, &mut out, None);
        assert!(out.iter().all(|&b| b == 0), "{out:?}");
    }
}

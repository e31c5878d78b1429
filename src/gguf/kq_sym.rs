//! ggml's quantizers of the symmetric types (`d * q`): Q3_K, Q6_K, IQ4_NL, and the
//! importance-weighted Q4_0 / Q5_0, bit-exact with llama.cpp 0.3.36's `ggml-quants.c`
//! (ggml, MIT licence, by Georgi Gerganov and the ggml authors). This is qfast's own Rust,
//! written from that C as the definition of the results; it is the scalar oracle that SIMD
//! versions are checked against.
//!
//! Each function quantizes one tensor row, as `quantize_<type>(src, dst, nrow, n_per_row,
//! quant_weights)` does for each of its rows:
//!
//! - Q6_K: `quantize_row_q6_K_ref` without an importance matrix, `quantize_row_q6_K_impl`
//!   with one (which passes the imatrix itself to `make_qx_quants` as the weights).
//! - Q3_K: `quantize_row_q3_K_ref` (`make_q3_quants`) without, `quantize_row_q3_K_impl` with
//!   (weights `qw * sqrt(sigma2 + x^2)`, `sigma2 = 2 * sum(x^2) / 256` per super-block; the
//!   sixteen scales are themselves quantized by `make_qx_quants` weighted by each sub-block's
//!   summed weights).
//! - IQ4_NL: `quantize_row_iq4_nl_impl` with `ntry = 7` in both cases (that is what
//!   `quantize_iq4_nl` runs; `quantize_row_iq4_nl_ref`'s `ntry = -1` is not what
//!   `llama-quantize` writes), weights `x^2` or `qw * sqrt(sigma2 + x^2)` with
//!   `sigma2 = 2 * sum(x^2) / 32` per block.
//! - Q4_0 / Q5_0 with an importance matrix: `quantize_row_q4_0_impl` / `quantize_row_q5_0_impl`,
//!   weights `qw * sqrt(sigma2 + x^2)` with `sigma2 = sum(x^2) / n_per_row` over the whole row.
//!   (Without one, `rows` runs `legacy`'s reference quantizers.)
//!
//! Exactness: every float operation is the C's, in its order and precision (float32 sums run
//! left to right, `a*b*c` is `(a*b)*c`, divisions stay divisions; Rust never fuses a
//! multiply-add, and ggml's build uses `-ffp-contract=off`). `nearest_int` is ggml's
//! magic-number rounding (add `1.5 * 2^23`, take the low mantissa bits), kept bit for bit even
//! outside its asserted range, since ggml's release build does not check it. Comparisons keep
//! the C's strictness (so ties go the same way) and its NaN behaviour (`if (d)` is true for
//! NaN, `!d` false). float16 stores round to nearest even, as `GGML_FP32_TO_FP16`.
//!
//! Speed without changing a bit: the trial scales of `make_qx_quants` (19) and of IQ4_NL's
//! search (16) are independent until they are compared, so their sums run side by side, one
//! lane per trial, each lane summing in the C's order; the comparisons then run in the C's
//! order. IQ4_NL's nearest codebook value comes from thresholds computed at compile time from
//! `best_index_int8`'s own float test, so it needs no branches. Q3_K's high bits are packed
//! without branches.

use super::ggml::{fp32_to_fp16, nearest_int};
use super::kquants::{IQ4_KVALUES, IQ4_NL_BLOCK, IQ4_NL_BYTES, Q3_K_BYTES, Q6_K_BYTES, QK_K};
use super::legacy::{Q4_0_BYTES, Q5_0_BYTES, QK};
use super::GgmlType;
use half::f16;

/// The types this module implements (`rows::row_quantizer` offers only these).
pub const DONE: &[GgmlType] = &[
    GgmlType::Q3_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
];

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it is all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's float32 to float16 (round to nearest even), as [`f16`] for the stores below.
#[inline(always)]
fn to_f16(v: f32) -> f16 {
    f16::from_bits(fp32_to_fp16(v))
}

/// ggml's `best_index_int8(16, values, x)`: the index of the codebook value nearest `x` (the
/// upper one on a tie), by bisection.
#[inline]
fn best_index_int8(values: &[i8; 16], x: f32) -> usize {
    let v = |i: usize| f32::from(values[i]);
    if x <= v(0) {
        return 0;
    }
    if x >= v(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v(mav) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - v(mu - 1) < v(mu) - x {
        mu - 1
    } else {
        mu
    }
}

/// The value of largest magnitude (the first on ties; `0.0` and amax `0.0` when all are
/// zeros), as ggml's `if (ax > amax)` loops.
#[inline]
fn signed_amax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

#[inline(always)]
fn qx_codes<const N: usize>(nmax: i32, iscale: f32, x: &[f32; N], ls: &mut [i8; N]) {
    for i in 0..N {
        ls[i] = (nmax + nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1)) as i8;
    }
}

/// The trial scales of `make_qx_quants`: the first `-nmax / max`, then
/// `-(nmax + 0.1 is) / max` for `is = -9 ..= 9` but 0 (the C's order); one spare lane.
const QX_LANES: usize = 20;

/// ggml's `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw)` with the per-value weights `w`
/// (`qw`, or `x * x` where the C passes `NULL`: the same floats). Writes codes
/// `l + nmax` (`0 ..= 2 nmax - 1`) into `ls` and returns the scale; an all-zero group gets
/// codes 0 and scale 0.
///
/// The C computes each trial's `sum(w * x * l)` and `sum(w * l * l)` in turn; here all 19
/// trials' sums run side by side (one lane each, every lane still summing over `i` left to
/// right with the C's products `(w * x) * l` and `(w * l) * l`), then the trials are compared
/// in the C's order with its strict `>`, and the codes of the last winner are written.
fn make_qx_quants<const N: usize>(nmax: i32, x: &[f32; N], ls: &mut [i8; N], w: &[f32; N]) -> f32 {
    let (amax, max) = signed_amax(x);
    if amax < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let mut iscales = [0f32; QX_LANES];
    iscales[0] = (-nmax) as f32 / max;
    let mut k = 1;
    for is in -9i32..=9 {
        if is != 0 {
            iscales[k] = -(nmax as f32 + 0.1f32 * is as f32) / max;
            k += 1;
        }
    }
    let mut sumlx = [0f32; QX_LANES];
    let mut suml2 = [0f32; QX_LANES];
    for i in 0..N {
        let (xi, wi) = (x[i], w[i]);
        let wx = wi * xi;
        for k in 0..QX_LANES {
            let l = nearest_int(iscales[k] * xi).clamp(-nmax, nmax - 1) as f32;
            sumlx[k] += wx * l;
            suml2[k] += wi * l * l;
        }
    }
    let mut scale = if suml2[0] != 0.0 {
        sumlx[0] / suml2[0]
    } else {
        0.0
    };
    let mut best = scale * sumlx[0];
    let mut win = 0;
    for k in 1..QX_LANES - 1 {
        if suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best * suml2[k] {
            scale = sumlx[k] / suml2[k];
            best = scale * sumlx[k];
            win = k;
        }
    }
    qx_codes(nmax, iscales[win], x, ls);
    scale
}

/// ggml's `make_q3_quants(n, nmax, x, L, do_rmse = true)`: the `x * x`-weighted search with
/// up to five rounds of one-value moves. Codes `l + nmax` (all 0 for an all-zero group).
fn make_q3_quants<const N: usize>(nmax: i32, x: &[f32; N], ls: &mut [i8; N]) -> f32 {
    let (amax, max) = signed_amax(x);
    if amax < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    // The C's `w = x*x` and `w*x` (the left part of `w*x[i]*l`), the same floats.
    let mut w = [0f32; N];
    let mut wx = [0f32; N];
    for i in 0..N {
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
    }
    let iscale = (-nmax) as f32 / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..N {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        ls[i] = l as i8;
        let l = l as f32;
        sumlx += wx[i] * l;
        suml2 += w[i] * l * l;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..N {
            let lf = f32::from(ls[i]);
            let mut slx = sumlx - wx[i] * lf;
            if slx > 0.0 {
                let mut sl2 = suml2 - w[i] * lf * lf;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(ls[i]) {
                    let nl = new_l as f32;
                    slx += wx[i] * nl;
                    sl2 += w[i] * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        ls[i] = new_l as i8;
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
    for li in ls.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// ------------------------------------------------------------------------------------ Q6_K

/// Q6_K block layout: `ql[128]`, `qh[64]`, `scales: i8[16]`, `d: f16`.
const Q6_QH: usize = QK_K / 2;
const Q6_SC: usize = Q6_QH + QK_K / 4;
const Q6_D: usize = Q6_SC + QK_K / 16;

/// Quantizes one row to Q6_K (`quantize_row_q6_K_ref`, or `quantize_row_q6_K_impl` with
/// `imatrix`).
pub fn quantize_row_q6_k(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    let mut sq = [0f32; QK_K];
    for (ib, (xb, ob)) in x
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(Q6_K_BYTES))
        .enumerate()
    {
        let w: &[f32] = match imatrix {
            Some(qw) => &qw[ib * QK_K..(ib + 1) * QK_K],
            None => {
                for (s, &v) in sq.iter_mut().zip(xb) {
                    *s = v * v;
                }
                &sq
            }
        };
        quantize_block_q6_k(xb, w, ob);
    }
}

fn quantize_block_q6_k(x: &[f32], w: &[f32], y: &mut [u8]) {
    let mut ls = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (ib, ((xs, ws), lb)) in (x.as_chunks::<16>().0.iter())
        .zip(w.as_chunks::<16>().0)
        .zip(ls.as_chunks_mut::<16>().0)
        .enumerate()
    {
        let scale = make_qx_quants(32, xs, lb, ws);
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0f32 / max_scale;
    let d = to_f16(1.0 / iscale);
    y[Q6_D..Q6_D + 2].copy_from_slice(&d.to_le_bytes());
    let d = d.to_f32();
    for (ib, &s) in scales.iter().enumerate() {
        y[Q6_SC + ib] = nearest_int(iscale * s).min(127) as i8 as u8;
    }
    for (j, (xs, lb)) in x.chunks_exact(16).zip(ls.chunks_exact_mut(16)).enumerate() {
        let dl = d * f32::from(y[Q6_SC + j] as i8);
        if dl == 0.0 {
            continue;
        }
        for (li, &xi) in lb.iter_mut().zip(xs) {
            *li = (nearest_int(xi / dl).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, rest) = y.split_at_mut(Q6_QH);
    let qh = &mut rest[..QK_K / 4];
    for (lh, (qlh, qhh)) in ls
        .chunks_exact(128)
        .zip(ql.chunks_exact_mut(64).zip(qh.chunks_exact_mut(32)))
    {
        for l in 0..32 {
            let (a, b, c, e) = (
                lh[l] as u8,
                lh[l + 32] as u8,
                lh[l + 64] as u8,
                lh[l + 96] as u8,
            );
            qlh[l] = (a & 0xF) | ((c & 0xF) << 4);
            qlh[l + 32] = (b & 0xF) | ((e & 0xF) << 4);
            qhh[l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

// ------------------------------------------------------------------------------------ Q3_K

/// Q3_K block layout: `hmask[32]`, `qs[64]`, `scales[12]` (sixteen 6-bit scales), `d: f16`.
const Q3_QS: usize = QK_K / 8;
const Q3_SC: usize = Q3_QS + QK_K / 4;
const Q3_D: usize = Q3_SC + 12;

/// Quantizes one row to Q3_K (`quantize_row_q3_K_ref`, or `quantize_row_q3_K_impl` with
/// `imatrix`).
pub fn quantize_row_q3_k(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    for (ib, (xb, ob)) in x
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(Q3_K_BYTES))
        .enumerate()
    {
        match imatrix {
            Some(qw) => quantize_block_q3_k_impl(xb, &qw[ib * QK_K..(ib + 1) * QK_K], ob),
            None => quantize_block_q3_k_ref(xb, ob),
        }
    }
}

/// Packs sixteen 6-bit codes `0..=63` as Q3_K's twelve scale bytes (`j < 8`: low nibble of
/// byte `j`; else high nibble of byte `j - 8`; the top two bits into byte `8 + j % 4` at bit
/// `2 * (j / 4)`).
fn pack_q3_scales(codes: &[u8; 16], sc: &mut [u8]) {
    sc.fill(0);
    for (j, &l) in codes.iter().enumerate() {
        if j < 8 {
            sc[j] = l & 0xF;
        } else {
            sc[j - 8] |= (l & 0xF) << 4;
        }
        sc[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
}

/// The second half of both Q3_K searches: requantizes each sub-block with its stored
/// scale (unless that scale is zero: those keep the search's codes), then packs the codes.
fn finish_q3_k(x: &[f32], ls: &mut [i8; QK_K], y: &mut [u8]) {
    let d = f16::from_le_bytes([y[Q3_D], y[Q3_D + 1]]).to_f32();
    for (j, (xs, lb)) in x.chunks_exact(16).zip(ls.chunks_exact_mut(16)).enumerate() {
        let sc = &y[Q3_SC..Q3_SC + 12];
        let lo = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
        let s = i32::from(lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        let dl = d * s as f32;
        if dl == 0.0 {
            continue;
        }
        for (li, &xi) in lb.iter_mut().zip(xs) {
            *li = (nearest_int(xi / dl).clamp(-4, 3) + 4) as i8;
        }
    }
    let (hmask, rest) = y.split_at_mut(Q3_QS);
    hmask.fill(0);
    // Code `j`'s high bit is bit `j / 32` of `hmask[j % 32]` (branch-free: the codes are
    // random, a branch would mispredict).
    for (g, lg) in ls.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        for (h, li) in hmask.iter_mut().zip(lg.iter_mut()) {
            let high = u8::from(*li > 3);
            *h |= high << g;
            *li -= 4 * high as i8;
        }
    }
    let qs = &mut rest[..QK_K / 4];
    for (lh, qh) in ls.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for (l, q) in qh.iter_mut().enumerate() {
            *q = (lh[l] as u8)
                | ((lh[l + 32] as u8) << 2)
                | ((lh[l + 64] as u8) << 4)
                | ((lh[l + 96] as u8) << 6);
        }
    }
}

fn quantize_block_q3_k_ref(x: &[f32], y: &mut [u8]) {
    let mut ls = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for (j, (xs, lb)) in (x.as_chunks::<16>().0.iter())
        .zip(ls.as_chunks_mut::<16>().0)
        .enumerate()
    {
        scales[j] = make_q3_quants(4, xs, lb);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    let mut codes = [0u8; 16];
    let d = if max_scale != 0.0 {
        let iscale = -32.0f32 / max_scale;
        for (c, &s) in codes.iter_mut().zip(&scales) {
            // C: `int8_t l = nearest_int(...)`, then `MAX(-32, MIN(31, l)) + 32`.
            let l = nearest_int(iscale * s) as i8;
            *c = (i32::from(l).clamp(-32, 31) + 32) as u8;
        }
        to_f16(1.0 / iscale)
    } else {
        to_f16(0.0)
    };
    pack_q3_scales(&codes, &mut y[Q3_SC..Q3_D]);
    y[Q3_D..Q3_D + 2].copy_from_slice(&d.to_le_bytes());
    finish_q3_k(x, &mut ls, y);
}

fn quantize_block_q3_k_impl(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let mut ls = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut sw = [0f32; QK_K / 16];
    let mut weight = [0f32; 16];
    let mut sumx2 = 0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0f32 * sumx2 / QK_K as f32;
    for (j, ((xs, qs), lb)) in (x.as_chunks::<16>().0.iter())
        .zip(qw.as_chunks::<16>().0)
        .zip(ls.as_chunks_mut::<16>().0)
        .enumerate()
    {
        for ((w, &q), &v) in weight.iter_mut().zip(qs).zip(xs) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let mut sumw = 0f32;
        for &w in &weight {
            sumw += w;
        }
        sw[j] = sumw;
        scales[j] = make_qx_quants(4, xs, lb, &weight);
    }
    let mut lsc = [0i8; QK_K / 16];
    let d_block = make_qx_quants(32, &scales, &mut lsc, &sw);
    let mut codes = [0u8; 16];
    for (c, &l) in codes.iter_mut().zip(&lsc) {
        *c = l as u8;
    }
    pack_q3_scales(&codes, &mut y[Q3_SC..Q3_D]);
    y[Q3_D..Q3_D + 2].copy_from_slice(&to_f16(d_block).to_le_bytes());
    finish_q3_k(x, &mut ls, y);
}

// ---------------------------------------------------------------------------------- IQ4_NL

/// Quantizes one row to IQ4_NL, as `quantize_iq4_nl` (`quantize_row_iq4_nl_impl` per block
/// of 32, `ntry = 7`), with or without `imatrix`.
pub fn quantize_row_iq4_nl(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    let blocks = (x.as_chunks::<IQ4_NL_BLOCK>().0.iter()).zip(out.chunks_exact_mut(IQ4_NL_BYTES));
    match imatrix {
        Some(w) => {
            for ((xb, ob), wb) in blocks.zip(w.as_chunks::<IQ4_NL_BLOCK>().0) {
                quantize_block_iq4_nl(xb, Some(wb), ob);
            }
        }
        None => {
            for (xb, ob) in blocks {
                quantize_block_iq4_nl(xb, None, ob);
            }
        }
    }
}

/// A float's position in float order, as an integer (`-0.0` just below `+0.0`); its own
/// inverse.
const fn order_key(bits: i32) -> i32 {
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// For each pair of neighbours `IQ4_KVALUES[m] < IQ4_KVALUES[m + 1]`, the smallest float
/// `al` for which ggml's `best_index_int8` picks `m + 1` or above: the first `al` where
/// `al - v[m] < v[m + 1] - al` (float32, as the C rounds it) is false. That test is monotone
/// in `al` (float subtraction is), so for every float that is not NaN
/// `best_index_int8(al) == #{m : al >= IQ4_UP[m]}`; the unit test checks it around every
/// threshold.
const IQ4_UP: [f32; 15] = iq4_thresholds();

const fn iq4_thresholds() -> [f32; 15] {
    let mut up = [0f32; 15];
    let mut m = 0;
    while m < 15 {
        let lo = IQ4_KVALUES[m] as f32;
        let hi = IQ4_KVALUES[m + 1] as f32;
        // Bisect on float order: the test is false at `lo`, true at `hi`.
        // (In i64: the keys of a negative and a positive float can be more than i32::MAX
        // apart.)
        let mut a = order_key(lo.to_bits() as i32) as i64;
        let mut b = order_key(hi.to_bits() as i32) as i64;
        while b - a > 1 {
            let mid = a + (b - a) / 2;
            let al = f32::from_bits(order_key(mid as i32) as u32);
            if al - lo < hi - al {
                a = mid;
            } else {
                b = mid;
            }
        }
        up[m] = f32::from_bits(order_key(b as i32) as u32);
        m += 1;
    }
    up
}

/// `IQ4_KVALUES[best_index_int8(al)]` without branches: `v[0]` plus the steps whose threshold
/// `al` reaches (sums of small integers: exact); NaN, which every comparison of the C
/// rejects, gets the last value as in the C.
#[inline(always)]
fn iq4_value(al: f32) -> f32 {
    let mut q = f32::from(IQ4_KVALUES[0]);
    for m in 0..15 {
        let step = f32::from(IQ4_KVALUES[m + 1]) - f32::from(IQ4_KVALUES[m]);
        q += if al >= IQ4_UP[m] { step } else { 0.0 };
    }
    if al.is_nan() {
        f32::from(IQ4_KVALUES[15])
    } else {
        q
    }
}

/// The trials of `quantize_row_iq4_nl_impl` with `ntry = 7`: the first scale `1 / d`, then
/// `(itry + values[0]) / max` for `itry = -7 ..= 7`.
const IQ4_LANES: usize = 16;

fn quantize_block_iq4_nl(x: &[f32; IQ4_NL_BLOCK], qw: Option<&[f32; IQ4_NL_BLOCK]>, y: &mut [u8]) {
    const NTRY: i32 = 7;
    let values = &IQ4_KVALUES;
    let mut sigma2 = 0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0f32 / IQ4_NL_BLOCK as f32;
    let mut weight = [0f32; IQ4_NL_BLOCK];
    match qw {
        Some(qw) => {
            for ((w, &q), &v) in weight.iter_mut().zip(qw).zip(x) {
                *w = q * (sigma2 + v * v).sqrt();
            }
        }
        None => {
            for (w, &v) in weight.iter_mut().zip(x) {
                *w = v * v;
            }
        }
    }
    let (amax, max) = signed_amax(x);
    let scale = if amax < GROUP_MAX_EPS {
        0.0
    } else {
        // ntry > 0: d = -max / values[0]. (The C's codes from this first pass are
        // overwritten below, so only its sums matter.)
        let d = -max / f32::from(values[0]);
        let mut ids = [0f32; IQ4_LANES];
        ids[0] = 1.0 / d;
        for (k, itry) in (-NTRY..=NTRY).enumerate() {
            ids[k + 1] = (itry + i32::from(values[0])) as f32 / max;
        }
        // Every trial's sums side by side, each summed over `j` in the C's order with its
        // products `(w * q) * x` and `(w * q) * q`.
        let mut sumqx = [0f32; IQ4_LANES];
        let mut sumq2 = [0f32; IQ4_LANES];
        for j in 0..IQ4_NL_BLOCK {
            let (xj, wj) = (x[j], weight[j]);
            for k in 0..IQ4_LANES {
                let q = iq4_value(ids[k] * xj);
                let wq = wj * q;
                sumqx[k] += wq * xj;
                sumq2[k] += wq * q;
            }
        }
        let mut d = if sumq2[0] > 0.0 {
            sumqx[0] / sumq2[0]
        } else {
            0.0
        };
        let mut best = d * sumqx[0];
        for k in 1..IQ4_LANES {
            if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best * sumq2[k] {
                d = sumqx[k] / sumq2[k];
                best = d * sumqx[k];
            }
        }
        d
    };
    y[0..2].copy_from_slice(&to_f16(scale).to_le_bytes());
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut ls = [0u8; IQ4_NL_BLOCK];
    for (l, &v) in ls.iter_mut().zip(x) {
        *l = best_index_int8(values, id * v) as u8;
    }
    for j in 0..16 {
        y[2 + j] = ls[j] | (ls[j + 16] << 4);
    }
}

// --------------------------------------------------------------------------- Q4_0 / Q5_0

/// `sum(x^2) / n` over the row, then per block of 32 the weights `qw * sqrt(sigma2 + x^2)`
/// and `make_qx_quants(32, nmax, ...)`; `put` stores one block.
fn quantize_row_sym_weighted(
    x: &[f32],
    out: &mut [u8],
    qw: &[f32],
    nmax: i32,
    bytes: usize,
    put: fn(f32, &[i8; QK], &mut [u8]),
) {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / x.len() as f32;
    let mut weight = [0f32; QK];
    let mut ls = [0i8; QK];
    for ((xb, qb), ob) in (x.as_chunks::<QK>().0.iter())
        .zip(qw.as_chunks::<QK>().0)
        .zip(out.chunks_exact_mut(bytes))
    {
        for ((w, &q), &v) in weight.iter_mut().zip(qb).zip(xb) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let d = make_qx_quants(nmax, xb, &mut ls, &weight);
        put(d, &ls, ob);
    }
}

fn put_q4_0(d: f32, ls: &[i8; QK], y: &mut [u8]) {
    y[0..2].copy_from_slice(&to_f16(d).to_le_bytes());
    for j in 0..16 {
        y[2 + j] = (ls[j] as u8) | ((ls[j + 16] as u8) << 4);
    }
}

fn put_q5_0(d: f32, ls: &[i8; QK], y: &mut [u8]) {
    y[0..2].copy_from_slice(&to_f16(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let (a, b) = (ls[j] as u8, ls[j + 16] as u8);
        y[6 + j] = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= u32::from((a & 0x10) >> 4) << j;
        qh |= u32::from((b & 0x10) >> 4) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Quantizes one row to Q4_0 as `quantize_row_q4_0_impl`; without `imatrix`, as
/// `quantize_row_q4_0_ref` (`legacy::quantize_q4_0` per block).
pub fn quantize_row_q4_0_weighted(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    match imatrix {
        Some(qw) => quantize_row_sym_weighted(x, out, qw, 8, Q4_0_BYTES, put_q4_0),
        None => super::rows::blockwise(super::legacy::quantize_q4_0, QK, Q4_0_BYTES, x, out),
    }
}

/// Quantizes one row to Q5_0 as `quantize_row_q5_0_impl`; without `imatrix`, as
/// `quantize_row_q5_0_ref` (`legacy::quantize_q5_0` per block).
pub fn quantize_row_q5_0_weighted(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    match imatrix {
        Some(qw) => quantize_row_sym_weighted(x, out, qw, 16, Q5_0_BYTES, put_q5_0),
        None => super::rows::blockwise(super::legacy::quantize_q5_0, QK, Q5_0_BYTES, x, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_takes_the_upper_value_on_a_tie() {
        // Halfway between -10 and 1 is -4.5: the strict `<` picks 1 (index 8).
        assert_eq!(best_index_int8(&IQ4_KVALUES, -4.5), 8);
        assert_eq!(best_index_int8(&IQ4_KVALUES, -4.6), 7);
        assert_eq!(best_index_int8(&IQ4_KVALUES, f32::NAN), 15);
        assert_eq!(best_index_int8(&IQ4_KVALUES, -1000.0), 0);
    }

    #[test]
    fn iq4_thresholds_agree_with_best_index_int8() {
        let check = |al: f32| {
            let want = f32::from(IQ4_KVALUES[best_index_int8(&IQ4_KVALUES, al)]);
            assert_eq!(iq4_value(al).to_bits(), want.to_bits(), "{al:e}");
        };
        for f in [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e30,
            -1e30,
        ] {
            check(f);
        }
        // Every float within 4096 steps of each threshold and of each codebook value.
        let near = IQ4_UP
            .iter()
            .chain(&IQ4_KVALUES.map(f32::from))
            .copied()
            .collect::<Vec<_>>();
        for t in near {
            let k = order_key(t.to_bits() as i32);
            for d in -4096..=4096 {
                check(f32::from_bits(order_key(k.wrapping_add(d)) as u32));
            }
        }
        // A sweep of [-256, 256] in steps of 1/1024 plus an irrational offset.
        let mut al = -256.0f32;
        while al < 256.0 {
            check(al + 0.000_123_4);
            check(al);
            al += 1.0 / 1024.0;
        }
    }

    /// Extreme rows and weights run through every quantizer without a panic (in a debug
    /// build: no arithmetic overflow either). Their bytes are checked against ggml by
    /// tests/test_gguf_kquant_sym.py.
    #[test]
    fn extreme_rows_do_not_panic() {
        let n = 512;
        let mut rows: Vec<Vec<f32>> = vec![vec![0.0; n], vec![-0.0; n], vec![f32::MAX; n]];
        let mut state = 1u32;
        let mut rnd = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for scale in [1e-38f32, 1e-30, 1e-15, 1.0, 1e19, 1e30, 3e38] {
            rows.push((0..n).map(|_| rnd() * scale).collect());
        }
        rows.push((0..n).map(|i| if i == 7 { 1e30 } else { 1e-30 }).collect());
        let weights: [Option<Vec<f32>>; 4] = [
            None,
            Some(vec![0.0; n]),
            Some(
                (0..n)
                    .map(|i| if i == 3 { f32::MAX } else { 1.0 })
                    .collect(),
            ),
            Some((0..n).map(|_| rnd() + 0.5).collect()),
        ];
        type Q = fn(&[f32], &mut [u8], Option<&[f32]>);
        let quantizers: [(Q, usize, usize); 5] = [
            (quantize_row_q3_k, QK_K, Q3_K_BYTES),
            (quantize_row_q6_k, QK_K, Q6_K_BYTES),
            (quantize_row_iq4_nl, IQ4_NL_BLOCK, IQ4_NL_BYTES),
            (quantize_row_q4_0_weighted, QK, Q4_0_BYTES),
            (quantize_row_q5_0_weighted, QK, Q5_0_BYTES),
        ];
        for (q, bs, ts) in quantizers {
            let mut out = vec![0u8; n / bs * ts];
            for x in &rows {
                for w in &weights {
                    q(x, &mut out, w.as_deref());
                }
            }
        }
    }

    #[test]
    fn zero_rows_quantize_to_zero_scales() {
        let x = [0f32; QK_K];
        let mut out = [0xAAu8; Q6_K_BYTES];
        quantize_row_q6_k(&x, &mut out, None);
        assert!(out.iter().all(|&b| b == 0));
        let mut out = [0xAAu8; Q3_K_BYTES];
        quantize_row_q3_k(&x, &mut out, None);
        // d = 0, scales all code 0 (-32 after the offset), codes 0: hmask 0, qs 0.
        assert!(out.iter().all(|&b| b == 0));
    }
}

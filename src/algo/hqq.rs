//! HQQ, half-quadratic quantization (Badri & Shaji, 2023): a min/max grid per group whose
//! float zero point is then refined by a proximal solver of `min ||W - dequantize(W)||_p^p`,
//! `p < 1` (the reference is `optimize_weights_proximal_legacy` of mobiusml/hqq, `axis=1`).
//!
//! hqq's `scale` counts codes per unit (the inverse of the step): `q = clamp(round(w * scale +
//! zero), 0, 2^bits - 1)` and `w ~ (q - zero) / scale`. This module keeps that convention; the
//! binding inverts it for `QTensor`.
//!
//! One solver iteration is [`step`]; the caller runs the loop (early stopping looks at the
//! error of the whole tensor, and the Python loop reports progress between iterations).
//!
//! Reproducibility: every element operation is an IEEE one that every path rounds alike (no
//! FMA contraction, no approximations), and sums are kept in [`LANES`] fixed lanes folded in a
//! fixed order, so every ISA path and every thread count gives the same bits.

use crate::error::{QfastError, Result};
use crate::parallel;

use super::{pairwise_sum, tree_split};

/// hqq clamps `scale` to this (it keeps float16 copies finite); a group with `max == min`
/// gets it.
pub const MAX_SCALE: f32 = 2e4;

/// Width of the per-group accumulators: all paths sum lane `l` of every 16-value block into
/// lane `l`, whatever their vector width, so their sums are identical.
const LANES: usize = 16;

/// Values per parallel task (whole groups; at least one group per task).
const TASK_ELEMS: usize = 1 << 15;

/// `(v + 1.5 * 2^23) - 1.5 * 2^23` is `v` rounded to the nearest integer, ties to even, for
/// `|v| <= 2^22`; beyond, the result keeps its side of `[0, max_code]`, which is all the clamp
/// after it needs. Cheaper than `round_ties_even` where SSE4.1 is missing, and vectorises.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `zero` must stay this far below `f32::MAX` divided by the largest `|w * scale|`, so that
/// `w * scale + zero` cannot overflow during the iterations.
const OVERFLOW_MARGIN: f32 = 16.0;

/// The groups of a flat row-major tensor and the code range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    /// Consecutive values per group (groups never straddle rows).
    pub group_size: usize,
    /// `2^bits - 1`, hqq's `max_v`.
    pub max_code: f32,
}

impl Grid {
    /// The grid of `len` values in groups of `group_size`, with `bits`-wide codes (2 to 8).
    pub fn new(len: usize, group_size: usize, bits: u32) -> Result<Grid> {
        let bits = crate::checks::check_bits(bits)?;
        let group_size = crate::checks::check_group_size(group_size)?;
        if !len.is_multiple_of(group_size) {
            return Err(QfastError::InvalidArgument(format!(
                "{len} values do not split into groups of {group_size}"
            )));
        }
        Ok(Grid {
            group_size,
            max_code: ((1u32 << bits) - 1) as f32,
        })
    }

    fn groups_per_task(&self) -> usize {
        (TASK_ELEMS / self.group_size).max(1)
    }

    fn check_params(&self, len: usize, scale: &[f32], zero: &[f32]) -> Result<()> {
        let groups = len / self.group_size;
        if scale.len() != groups || zero.len() != groups {
            return Err(QfastError::InvalidArgument(format!(
                "{groups} groups need {groups} scales and zero points, got {} and {}",
                scale.len(),
                zero.len()
            )));
        }
        Ok(())
    }
}

/// The proximal operator of `|x|^p / beta` (generalised soft thresholding), as hqq writes it:
/// `sign(x) * relu(|x| - |x|^(p-1) / beta)`, or `sign(x) * relu(|x| - 1 / beta)` for `p == 1`.
#[derive(Clone, Copy, Debug)]
pub struct Shrink {
    /// `1 / beta` rounded to float32, as torch rounds the Python float.
    inv_beta: f32,
    /// `p - 1` rounded to float32.
    exponent: f32,
    l1: bool,
    /// Below this `|x|`, the shrink is zero with a wide margin: `|x| - |x|^(p-1) / beta <= 0`
    /// is `|x| <= beta^(-1 / (2 - p))`, and the threshold sits 0.1% under that, far beyond
    /// float32 rounding, so the shortcut gives exactly the formula's result (zero). It skips
    /// `powf` for nearly every element: quantization errors are below half a step, and in
    /// real weights rarely reach the threshold (0.17 for the defaults).
    threshold: f32,
}

impl Shrink {
    /// The operator for `beta > 0` and `0 < lp_norm <= 1`.
    pub fn new(beta: f64, lp_norm: f64) -> Result<Shrink> {
        crate::checks::check_positive(beta, "beta")?;
        if !(lp_norm > 0.0 && lp_norm <= 1.0) {
            return Err(QfastError::InvalidArgument(format!(
                "lp_norm must be in (0, 1], got {lp_norm}"
            )));
        }
        let inv_beta = (1.0 / beta) as f32;
        let zero_below = (inv_beta as f64).powf(1.0 / (2.0 - lp_norm));
        Ok(Shrink {
            inv_beta,
            exponent: (lp_norm - 1.0) as f32,
            l1: lp_norm == 1.0,
            threshold: (zero_below * (1.0 - 1e-3)) as f32,
        })
    }

    /// The operator on one value, exactly as the reference computes it in float32.
    #[inline(always)]
    fn apply(&self, x: f32) -> f32 {
        let a = x.abs();
        if a <= self.threshold {
            return 0.0;
        }
        let t = if self.l1 {
            a - self.inv_beta
        } else {
            a - self.inv_beta * a.powf(self.exponent)
        };
        let relu = if t > 0.0 { t } else { 0.0 };
        // torch.sign: 0 at 0 (f32::signum gives 1).
        if x > 0.0 {
            relu
        } else if x < 0.0 {
            -relu
        } else {
            0.0
        }
    }
}

/// hqq's initial grid of every group: `scale = min(max_code / (max - min), 2e4)`, `zero =
/// -min * scale` (rounded when `round_zero`). `shape` (the logical shape of `w`) only names
/// the position of a non-finite value in the error.
pub fn init(
    w: &[f32],
    shape: &[usize],
    grid: &Grid,
    round_zero: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let gs = grid.group_size;
    let groups = w.len() / gs;
    let (mut scale, mut zero) = (
        crate::alloc::try_vec(0f32, groups)?,
        crate::alloc::try_vec(0f32, groups)?,
    );
    let gpt = grid.groups_per_task();
    let items: Vec<_> = w
        .chunks(gpt * gs)
        .zip(scale.chunks_mut(gpt))
        .zip(zero.chunks_mut(gpt))
        .enumerate()
        .collect();
    let results = parallel::map(items, w.len(), |(task, ((w, scale), zero))| {
        for (g, x) in w.chunks_exact(gs).enumerate() {
            let at = task * gpt * gs + g * gs;
            let (lo, hi) = min_max(x).ok_or_else(|| non_finite(x, at, shape))?;
            let (s, z) = initial_grid(lo, hi, grid.max_code, round_zero)
                .ok_or_else(|| too_wide(lo, hi, at, shape))?;
            scale[g] = s;
            zero[g] = z;
        }
        Ok(())
    })?;
    // The first error in the data's order, whatever order the tasks ran in.
    results.into_iter().collect::<Result<()>>()?;
    Ok((scale, zero))
}

/// One iteration of the proximal solver on every group: returns the updated zero points and
/// the sum of `|W - W_r|` over the tensor (with `W_r` dequantized on the *incoming* zero
/// points, which is the error hqq's early stopping compares).
pub fn step(
    w: &[f32],
    grid: &Grid,
    scale: &[f32],
    zero: &[f32],
    shrink: &Shrink,
) -> Result<(Vec<f32>, f64)> {
    grid.check_params(w.len(), scale, zero)?;
    let isa = crate::simd::active()?.isa;
    let gpt = grid.groups_per_task();
    let mut new_zero = crate::alloc::try_vec(0f32, zero.len())?;
    let items: Vec<_> = w
        .chunks(gpt * grid.group_size)
        .zip(scale.chunks(gpt))
        .zip(zero.chunks(gpt))
        .zip(new_zero.chunks_mut(gpt))
        .collect();
    let sums = parallel::map(items, w.len(), |(((w, s), z), out)| {
        step_isa(isa, w, grid, s, z, out, shrink)
    })?;
    Ok((new_zero, sums.into_iter().sum()))
}

/// The final codes `clamp(round(w * scale + zero), 0, max_code)` into `out` (one per byte),
/// and the sum of `|W - (q - zero) / scale|` over the tensor.
pub fn codes(w: &[f32], grid: &Grid, scale: &[f32], zero: &[f32], out: &mut [u8]) -> Result<f64> {
    grid.check_params(w.len(), scale, zero)?;
    if out.len() != w.len() {
        return Err(QfastError::InvalidArgument(format!(
            "{} values need {} code bytes, got {}",
            w.len(),
            w.len(),
            out.len()
        )));
    }
    let isa = crate::simd::active()?.isa;
    let gpt = grid.groups_per_task();
    let items: Vec<_> = w
        .chunks(gpt * grid.group_size)
        .zip(scale.chunks(gpt))
        .zip(zero.chunks(gpt))
        .zip(out.chunks_mut(gpt * grid.group_size))
        .collect();
    let sums = parallel::map(items, w.len(), |(((w, s), z), out)| {
        codes_isa(isa, w, grid, s, z, out)
    })?;
    Ok(sums.into_iter().sum())
}

/// `mean |W - (code(W) - zero) / scale|` over the tensor as NumPy computes it in float32
/// (`np.abs(W - W_r).mean()`: one pairwise sum over all values, then a float32 division).
/// Early stopping compares consecutive errors; where they differ by less than float32
/// rounding, only this exact order decides as the NumPy transcription of hqq does.
pub fn error_f32(w: &[f32], grid: &Grid, scale: &[f32], zero: &[f32]) -> Result<f32> {
    grid.check_params(w.len(), scale, zero)?;
    let mut leaves = Vec::new();
    split_tree(0, w.len(), &mut leaves);
    let fill = |start: usize, buf: &mut [f32]| {
        let gs = grid.group_size;
        for (k, v) in buf.iter_mut().enumerate() {
            let (i, g) = (start + k, (start + k) / gs);
            let (s, z) = (scale[g], zero[g]);
            *v = (w[i] - (code(w[i], s, z, grid.max_code) - z) / s).abs();
        }
    };
    let sums = parallel::map(leaves, w.len(), |(start, n)| pairwise_by(start, n, &fill))?;
    let total = combine_tree(w.len(), &mut sums.into_iter());
    Ok(total / w.len() as f32)
}

/// Subtrees of NumPy's pairwise recursion of at most this many values are one task.
const TREE_TASK: usize = 1 << 16;

/// The `(start, len)` subtrees of at most [`TREE_TASK`] values, in order.
fn split_tree(start: usize, n: usize, out: &mut Vec<(usize, usize)>) {
    if n <= TREE_TASK {
        out.push((start, n));
    } else {
        let h = tree_split(n);
        split_tree(start, h, out);
        split_tree(start + h, n - h, out);
    }
}

/// Folds the subtree sums of [`split_tree`] back up the same tree.
fn combine_tree(n: usize, sums: &mut impl Iterator<Item = f32>) -> f32 {
    if n <= TREE_TASK {
        sums.next().expect("one sum per subtree")
    } else {
        let h = tree_split(n);
        let left = combine_tree(h, sums);
        left + combine_tree(n - h, sums)
    }
}

/// [`pairwise_sum`] of values `start..start + n` that `fill(start, buf)` computes on demand,
/// at most 128 at a time.
fn pairwise_by(start: usize, n: usize, fill: &impl Fn(usize, &mut [f32])) -> f32 {
    if n <= 128 {
        let mut buf = [0f32; 128];
        fill(start, &mut buf[..n]);
        pairwise_sum(&buf[..n])
    } else {
        let h = tree_split(n);
        pairwise_by(start, h, fill) + pairwise_by(start + h, n - h, fill)
    }
}

// --- per group ---------------------------------------------------------------------------

/// `(min, max)` of a group, or `None` when a value is not finite.
#[allow(clippy::eq_op)] // `v - v` is the finiteness test, see below
fn min_max(x: &[f32]) -> Option<(f32, f32)> {
    let (mut lo, mut hi) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
    // `v - v` is 0 for finite `v` and NaN otherwise; the sum stays 0 unless one was not.
    let mut poison = [0f32; LANES];
    let blocks = x.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for l in 0..LANES {
            let v = block[l];
            lo[l] = if v < lo[l] { v } else { lo[l] };
            hi[l] = if v > hi[l] { v } else { hi[l] };
            poison[l] += v - v;
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        lo[l] = if v < lo[l] { v } else { lo[l] };
        hi[l] = if v > hi[l] { v } else { hi[l] };
        poison[l] += v - v;
    }
    if poison.iter().any(|p| *p != 0.0) {
        return None;
    }
    let lo = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    Some((lo, hi))
}

/// hqq's `(scale, zero)` from a group's range, or `None` when the range is too wide for
/// float32 arithmetic (`max - min` overflows, or `w * scale + zero` could).
fn initial_grid(lo: f32, hi: f32, max_code: f32, round_zero: bool) -> Option<(f32, f32)> {
    let s = max_code / (hi - lo); // inf when hi == lo, clamped as hqq clamps it
    let s = if s > MAX_SCALE { MAX_SCALE } else { s };
    let z = -lo * s;
    let z = if round_zero { z.round_ties_even() } else { z };
    let reach = lo.abs().max(hi.abs()) * s * OVERFLOW_MARGIN;
    (s > 0.0 && reach.is_finite()).then_some((s, z))
}

/// hqq's quantizer: `clamp(round(x * s + z), 0, max_code)`, rounding `x * s` before adding
/// `z` as torch does (two operations, no FMA).
#[inline(always)]
fn code(x: f32, s: f32, z: f32, max_code: f32) -> f32 {
    let v = x * s + z;
    let r = (v + ROUND_MAGIC) - ROUND_MAGIC;
    let r = if r > 0.0 { r } else { 0.0 };
    if r < max_code {
        r
    } else {
        max_code
    }
}

/// A code (an integer in `0..=255` held in a float) as a byte.
#[inline(always)]
fn to_byte(q: f32) -> u8 {
    debug_assert!((0.0..=255.0).contains(&q));
    // SAFETY: `code` returns an integer-valued float clamped to [0, max_code], max_code <=
    // 255, so it is finite and fits i32; the plain conversion skips the saturation checks
    // that keep `as` from vectorising well.
    unsafe { q.to_int_unchecked::<i32>() as u8 }
}

/// Block `b` of [`LANES`] values of `v`.
#[inline(always)]
fn lanes<T>(v: &[T], b: usize) -> &[T; LANES] {
    v[b * LANES..(b + 1) * LANES]
        .try_into()
        .expect("a whole block")
}

#[inline(always)]
fn lanes_mut<T>(v: &mut [T], b: usize) -> &mut [T; LANES] {
    (&mut v[b * LANES..(b + 1) * LANES])
        .try_into()
        .expect("a whole block")
}

/// Sums the lanes in a fixed order.
#[inline(always)]
fn lane_sum(v: &[f32; LANES]) -> f64 {
    v.iter().map(|&x| x as f64).sum()
}

/// One proximal iteration on one group:
/// `W_q = code(W)`, `W_r = (W_q - z) / s`, `W_e = shrink(W - W_r)`,
/// `z' = mean(W_q - (W - W_e) * s)`. Returns `(z', sum |W - W_r|)`; `terms` (the group's
/// length) holds the mean's terms.
#[inline(always)]
fn step_group(
    x: &[f32],
    s: f32,
    z: f32,
    max_code: f32,
    shrink: &Shrink,
    terms: &mut [f32],
) -> (f32, f64) {
    let mut err = [0f32; LANES];
    // Index loops: iterator adaptors here were left as calls in the vector loop.
    for b in 0..x.len() / LANES {
        let block = lanes(x, b);
        let (mut q, mut d, mut t) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        let mut far = 0u32;
        for l in 0..LANES {
            q[l] = code(block[l], s, z, max_code);
            d[l] = block[l] - (q[l] - z) / s;
            err[l] += d[l].abs();
            far |= u32::from(d[l].abs() > shrink.threshold);
            // The term when shrink(d) == 0 (then W - W_e == W exactly): nearly always.
            t[l] = q[l] - block[l] * s;
        }
        if far != 0 {
            shrunk_terms(block, &q, &d, s, shrink, &mut t);
        }
        *lanes_mut(terms, b) = t;
    }
    let done = x.len() / LANES * LANES;
    for (l, (&v, term)) in x[done..].iter().zip(&mut terms[done..]).enumerate() {
        let q = code(v, s, z, max_code);
        let d = v - (q - z) / s;
        err[l] += d.abs();
        *term = q - (v - shrink.apply(d)) * s;
    }
    let mean = pairwise_sum(terms) / x.len() as f32;
    (mean, lane_sum(&err))
}

/// The terms `q - (w - shrink(d)) * s` of a block where some `|d|` reaches the shrink's
/// threshold (kept out of line: it calls `powf`, and is rare).
#[cold]
#[inline(never)]
fn shrunk_terms(
    x: &[f32; LANES],
    q: &[f32; LANES],
    d: &[f32; LANES],
    s: f32,
    shrink: &Shrink,
    t: &mut [f32; LANES],
) {
    for l in 0..LANES {
        t[l] = q[l] - (x[l] - shrink.apply(d[l])) * s;
    }
}

/// The codes of one group into `out`; returns `sum |W - (q - z) / s|`.
#[inline(always)]
fn codes_group(x: &[f32], s: f32, z: f32, max_code: f32, out: &mut [u8]) -> f64 {
    let mut err = [0f32; LANES];
    for b in 0..x.len() / LANES {
        let block = lanes(x, b);
        let dst = lanes_mut(out, b);
        for l in 0..LANES {
            let q = code(block[l], s, z, max_code);
            dst[l] = to_byte(q);
            err[l] += (block[l] - (q - z) / s).abs();
        }
    }
    let done = x.len() / LANES * LANES;
    for (l, (&v, dst)) in x[done..].iter().zip(&mut out[done..]).enumerate() {
        let q = code(v, s, z, max_code);
        *dst = to_byte(q);
        err[l] += (v - (q - z) / s).abs();
    }
    lane_sum(&err)
}

/// [`step_group`] over a task's groups; returns the task's error sum (groups in order).
#[inline(always)]
fn step_task(
    w: &[f32],
    grid: &Grid,
    scale: &[f32],
    zero: &[f32],
    out: &mut [f32],
    shrink: &Shrink,
) -> f64 {
    let gs = grid.group_size;
    let mut terms = vec![0f32; gs];
    let mut sum = 0.0;
    for g in 0..out.len() {
        let x = &w[g * gs..(g + 1) * gs];
        let (new_zero, err) = step_group(x, scale[g], zero[g], grid.max_code, shrink, &mut terms);
        out[g] = new_zero;
        sum += err;
    }
    sum
}

/// [`codes_group`] over a task's groups; returns the task's error sum (groups in order).
#[inline(always)]
fn codes_task(w: &[f32], grid: &Grid, scale: &[f32], zero: &[f32], out: &mut [u8]) -> f64 {
    let gs = grid.group_size;
    let mut sum = 0.0;
    for g in 0..scale.len() {
        let (x, dst) = (&w[g * gs..(g + 1) * gs], &mut out[g * gs..(g + 1) * gs]);
        sum += codes_group(x, scale[g], zero[g], grid.max_code, dst);
    }
    sum
}

// --- ISA paths -------------------------------------------------------------------------

crate::simd::per_isa!(step_isa => step_task(
    w: &[f32], grid: &Grid, s: &[f32], z: &[f32], out: &mut [f32], sh: &Shrink) -> f64);
crate::simd::per_isa!(codes_isa => codes_task(
    w: &[f32], grid: &Grid, s: &[f32], z: &[f32], out: &mut [u8]) -> f64);

// --- errors ------------------------------------------------------------------------------

/// A NumPy-style index of flat position `at` in a row-major `shape`.
fn unravel(mut at: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            index[k] = at % d;
            at /= d;
        }
    }
    index
}

/// The error of the first non-finite value of group `x`, which starts at flat position `at`.
fn non_finite(x: &[f32], at: usize, shape: &[usize]) -> QfastError {
    let i = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
    QfastError::NonFinite {
        index: unravel(at + i, shape),
        value: x[i],
    }
}

fn too_wide(lo: f32, hi: f32, at: usize, shape: &[usize]) -> QfastError {
    let start = crate::error::format_index(&unravel(at, shape));
    QfastError::Overflow(format!(
        "the group starting at index {start} spans [{lo}, {hi}], too wide for hqq's float32 \
         arithmetic; scale the weights down (e.g. divide by their largest magnitude) first"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_matches_formula_around_threshold() {
        let sh = Shrink::new(10.0, 0.7).unwrap();
        for k in 0..20_000 {
            let x = 0.05 + k as f32 * 1e-5;
            let a = x.abs();
            let t = a - sh.inv_beta * a.powf(sh.exponent);
            let want = if t > 0.0 { t } else { 0.0 };
            assert_eq!(sh.apply(x).to_bits(), want.to_bits(), "x={x}");
            assert_eq!(sh.apply(-x), -want, "x={x}");
        }
        assert_eq!(sh.apply(0.0), 0.0);
    }

    #[test]
    fn constant_group_gets_max_scale() {
        let (s, z) = initial_grid(2.5, 2.5, 15.0, false).unwrap();
        assert_eq!(s, MAX_SCALE);
        assert_eq!(code(2.5, s, z, 15.0), 0.0);
        assert!(initial_grid(-3e38, 3e38, 15.0, false).is_none());
    }

    #[test]
    fn round_magic_is_ties_to_even() {
        for v in [-2.5f32, -0.5, 0.5, 1.5, 2.5, 3.49, 14.5, 15.5, 1e9, -1e9] {
            let want = v.round_ties_even().clamp(0.0, 15.0);
            assert_eq!(code(v, 1.0, 0.0, 15.0), want, "v={v}");
        }
    }

    #[test]
    fn step_is_independent_of_tasks() {
        let w: Vec<f32> = (0..200_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5)
            .collect();
        let grid = Grid::new(w.len(), 50, 4).unwrap();
        let (s, z) = init(&w, &[w.len()], &grid, false).unwrap();
        let sh = Shrink::new(10.0, 0.7).unwrap();
        let (z1, e1) = step(&w, &grid, &s, &z, &sh).unwrap();
        let mut z2 = vec![0f32; z.len()];
        let e2 = step_task(&w, &grid, &s, &z, &mut z2, &sh);
        assert_eq!(z1, z2);
        assert!((e1 - e2).abs() <= 1e-9 * e1);
    }

    #[test]
    fn non_finite_names_first_position() {
        let mut w = vec![0.5f32; 64 * 3];
        w[100] = f32::NAN;
        w[150] = f32::INFINITY;
        let grid = Grid::new(w.len(), 32, 4).unwrap();
        match init(&w, &[3, 64], &grid, false) {
            Err(QfastError::NonFinite { index, .. }) => assert_eq!(index, vec![1, 36]),
            other => panic!("{other:?}"),
        }
    }
}

//! AWQ's inner loops (activation-aware weight quantization, Lin et al., MLSys 2024), as
//! AutoAWQ's `pseudo_quantize_tensor` and `_compute_best_clip` define them. The matrix
//! products of the scale search stay in NumPy/BLAS; this module does the per-group work
//! around them:
//!
//! - [`pseudo_quantize`]: quantize -> dequantize of every group, optionally of `w * scales`
//!   divided back by `scales` (one fused pass instead of three NumPy temporaries);
//! - [`quantize_codes`]: the same grid, returned as codes, scales and zero points;
//! - [`clip_search`]: the per (row, group) search for the clipping range.
//!
//! Every value is computed with the float32 operations of the NumPy expressions, in the same
//! order (no FMA contraction), so results are bit-identical to NumPy for `pseudo_quantize` and
//! identical on every ISA path and thread count everywhere. Rows are independent, which is
//! what makes the thread count irrelevant.

use crate::error::{QfastError, Result};
use crate::parallel;
use crate::simd::{self, Isa};

/// Logical width of the token lanes of [`clip_search`]: the per-lane error sums are added in
/// this fixed layout on every ISA path, so the errors (and the chosen clip) never depend on
/// the vector width the CPU offers.
const LANES: usize = 16;

/// Rows handed to one task of the thread pool.
const ROWS_PER_TASK: usize = 16;

/// AutoAWQ clamps the range (asymmetric) or the absolute maximum (symmetric) to this before
/// dividing by the number of levels, so a constant group gets a tiny, finite scale.
const MIN_RANGE: f32 = 1e-5;

/// The reference's initial "best error": a group keeps its full range unless some shrink
/// step has an error below this.
const INITIAL_ERROR: f32 = 1e9;

/// A quantization grid: `bits`-wide codes, symmetric (signed, no zero point) or asymmetric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub bits: u32,
    pub symmetric: bool,
}

impl Grid {
    pub fn new(bits: u32, symmetric: bool) -> Result<Grid> {
        let bits = crate::checks::check_bits(bits)?;
        Ok(Grid { bits, symmetric })
    }

    /// The code range `(qmin, qmax)` as floats (the reference clamps in float).
    fn levels(self) -> (f32, f32) {
        if self.symmetric {
            let half = (1u32 << (self.bits - 1)) as f32;
            (-half, half - 1.0)
        } else {
            (0.0, ((1u32 << self.bits) - 1) as f32)
        }
    }
}

/// The shape of a row-major `[rows, n]` weight split into groups of `group_size` along `n`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    pub rows: usize,
    pub n: usize,
    pub group_size: usize,
}

impl Layout {
    /// Checks that `group_size` divides `n` (AutoAWQ reshapes `[rows, n]` into whole groups)
    /// and that `len` elements make `rows` rows.
    pub fn new(rows: usize, n: usize, group_size: usize, len: usize) -> Result<Layout> {
        crate::checks::check_group_divides(group_size, n)?;
        if rows.checked_mul(n) != Some(len) {
            return Err(QfastError::InvalidArgument(format!(
                "{len} weights do not make {rows} rows of {n}"
            )));
        }
        Ok(Layout {
            rows,
            n,
            group_size,
        })
    }

    pub fn groups(&self) -> usize {
        self.n / self.group_size
    }
}

/// `(scale, zero)` of one group, as AutoAWQ's `pseudo_quantize_tensor` computes them
/// (`zero` is 0 on symmetric grids).
#[inline(always)]
fn group_params(w: &[f32], grid: Grid) -> (f32, f32) {
    let (_, qmax) = grid.levels();
    if grid.symmetric {
        let amax = max_abs(w);
        (amax.max(MIN_RANGE) / qmax, 0.0)
    } else {
        let (min, max) = min_max(w);
        let scale = (max - min).max(MIN_RANGE) / qmax;
        // `+ 0.0` turns a -0.0 zero point into +0.0, so the sign of zero never depends on
        // which of several zeros the reduction met first.
        let zero = (-(min / scale).round_ties_even()).clamp(0.0, qmax) + 0.0;
        (scale, zero)
    }
}

/// The code of `w` on the grid `(scale, zero)`, as a float: `clamp(rint(w / scale) + zero)`.
#[inline(always)]
fn code(w: f32, scale: f32, zero: f32, qmin: f32, qmax: f32) -> f32 {
    ((w / scale).round_ties_even() + zero).clamp(qmin, qmax)
}

/// Minimum and maximum of a non-empty slice, over fixed lanes (vectorisable; exact in any
/// order since min and max never round).
#[inline(always)]
fn min_max(w: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    let mut chunks = w.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        lo[l] = if v < lo[l] { v } else { lo[l] };
        hi[l] = if v > hi[l] { v } else { hi[l] };
    }
    let min = lo
        .iter()
        .fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
    let max = hi
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    (min, max)
}

/// Maximum of `|w|` over a slice (0 for an empty one).
#[inline(always)]
fn max_abs(w: &[f32]) -> f32 {
    let mut hi = [0.0f32; 8];
    let mut chunks = w.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            let a = c[l].abs();
            hi[l] = if a > hi[l] { a } else { hi[l] };
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        hi[l] = if v.abs() > hi[l] { v.abs() } else { hi[l] };
    }
    hi.iter().fold(0.0, |a, &b| if b > a { b } else { a })
}

/// Quantize -> dequantize of one group in place: `(code(w) - zero) * scale`.
#[inline(always)]
fn fake_quantize_group(w: &mut [f32], grid: Grid) {
    let (qmin, qmax) = grid.levels();
    let (scale, zero) = group_params(w, grid);
    for v in w.iter_mut() {
        *v = (code(*v, scale, zero, qmin, qmax) - zero) * scale;
    }
}

/// [`pseudo_quantize`] of a run of whole rows (`w` and `out` hold the same rows).
#[inline(always)]
fn pseudo_quantize_rows(
    w: &[f32],
    layout: Layout,
    grid: Grid,
    scales: Option<&[f32]>,
    out: &mut [f32],
) {
    let (g, groups) = (layout.group_size, layout.groups());
    // Group k of these rows starts at column (k % groups) * g; scales are per column.
    for (k, (src, dst)) in w.chunks_exact(g).zip(out.chunks_exact_mut(g)).enumerate() {
        dst.copy_from_slice(src);
        let s = scales.map(|s| &s[(k % groups) * g..][..g]);
        if let Some(s) = s {
            for (v, &sv) in dst.iter_mut().zip(s) {
                *v *= sv;
            }
        }
        fake_quantize_group(dst, grid);
        if let Some(s) = s {
            for (v, &sv) in dst.iter_mut().zip(s) {
                *v /= sv;
            }
        }
    }
}

/// [`quantize_codes`] of a run of whole rows: codes (low `bits` of each byte, two's
/// complement when symmetric), one scale and zero point per group.
#[inline(always)]
fn quantize_rows(w: &[f32], g: usize, grid: Grid, codes: &mut [u8], params: &mut [(f32, i32)]) {
    let (qmin, qmax) = grid.levels();
    for ((src, dst), p) in w
        .chunks_exact(g)
        .zip(codes.chunks_exact_mut(g))
        .zip(params.iter_mut())
    {
        let (scale, zero) = group_params(src, grid);
        for (c, &v) in dst.iter_mut().zip(src) {
            *c = code(v, scale, zero, qmin, qmax) as i32 as u8;
        }
        *p = (scale, zero as i32);
    }
}

/// Per-task scratch of [`clip_search`].
struct ClipScratch {
    /// `factors.len()` quantized variants of one group, one after another.
    variants: Vec<f32>,
    /// The group's unquantized partial outputs, one per token (padded to whole lanes).
    org: Vec<f32>,
    errors: Vec<f32>,
}

/// Partial outputs `sum_k x[t][k] * q_v[k]` of `V` weight vectors for one tile of
/// [`LANES`] tokens (`tile[k * LANES + l]` is input `k` of the group for token `l`).
#[inline(always)]
fn lane_dots<const V: usize>(tile: &[f32], q: [&[f32]; V]) -> [[f32; LANES]; V] {
    let mut acc = [[0.0f32; LANES]; V];
    let g = tile.len() / LANES;
    let q: [&[f32]; V] = q.map(|v| &v[..g]);
    for (k, x) in tile.chunks_exact(LANES).enumerate() {
        for v in 0..V {
            let b = q[v][k];
            for l in 0..LANES {
                acc[v][l] += x[l] * b;
            }
        }
    }
    acc
}

/// Sum over tokens of `(X_g q_v - X_g w)^2` for a block of `V` variants, `org` holding
/// `X_g w`; `xg` is the group's inputs as tiles of [`LANES`] tokens. The per-lane sums are
/// added in lane order at the end (the same order on every ISA).
#[inline(always)]
fn block_errors<const V: usize>(xg: &[f32], q: [&[f32]; V], org: &[f32]) -> [f32; V] {
    let g = q[0].len();
    let mut err = [[0.0f32; LANES]; V];
    for (tile, o) in xg.chunks_exact(g * LANES).zip(org.chunks_exact(LANES)) {
        let cur = lane_dots::<V>(tile, q);
        for v in 0..V {
            for l in 0..LANES {
                let d = cur[v][l] - o[l];
                err[v][l] += d * d;
            }
        }
    }
    err.map(|e| e.iter().fold(0.0f32, |a, &b| a + b))
}

/// Squared-error sums of every variant in `variants` (`g` values each), `V` at a time; the
/// last block repeats its last variant (computed, not used) so the kernel stays branch-free.
#[inline(always)]
fn variant_errors<const V: usize>(
    xg: &[f32],
    g: usize,
    variants: &[f32],
    org: &[f32],
    errors: &mut [f32],
) {
    let n = errors.len();
    for start in (0..n).step_by(V) {
        let q: [&[f32]; V] = std::array::from_fn(|v| {
            let j = (start + v).min(n - 1);
            &variants[j * g..(j + 1) * g]
        });
        let e = block_errors::<V>(xg, q, org);
        for (v, &ev) in e.iter().enumerate().take(n - start) {
            errors[start + v] = ev;
        }
    }
}

/// The clip search of one (row, group): returns the best `max_val`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn clip_group(
    w: &[f32],
    xg: &[f32],
    tokens: usize,
    grid: Grid,
    factors: &[f32],
    block: usize,
    s: &mut ClipScratch,
) -> f32 {
    let g = w.len();
    let org_max = max_abs(w);
    for (&f, q) in factors.iter().zip(s.variants.chunks_exact_mut(g)) {
        let max_val = org_max * f;
        for (d, &v) in q.iter_mut().zip(w) {
            // torch.clamp(w, -max_val, max_val)
            *d = v.max(-max_val).min(max_val);
        }
        fake_quantize_group(q, grid);
    }
    for (tile, o) in xg
        .chunks_exact(g * LANES)
        .zip(s.org.chunks_exact_mut(LANES))
    {
        let [dots] = lane_dots::<1>(tile, [w]);
        o.copy_from_slice(&dots);
    }
    let errors = &mut s.errors[..factors.len()];
    match block {
        8 => variant_errors::<8>(xg, g, &s.variants, &s.org, errors),
        5 => variant_errors::<5>(xg, g, &s.variants, &s.org, errors),
        _ => variant_errors::<4>(xg, g, &s.variants, &s.org, errors),
    }
    let mut best = org_max;
    let mut min_err = INITIAL_ERROR;
    for (&f, &sum) in factors.iter().zip(errors.iter()) {
        let err = sum / tokens as f32;
        if err < min_err {
            min_err = err;
            best = org_max * f;
        }
    }
    best
}

/// [`clip_search`] of a run of whole rows into `best` (`groups` values per row).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn clip_rows(
    w: &[f32],
    xt: &[f32],
    tp: usize,
    tokens: usize,
    g: usize,
    grid: Grid,
    factors: &[f32],
    block: usize,
    best: &mut [f32],
) {
    let mut s = ClipScratch {
        variants: vec![0.0; factors.len() * g],
        org: vec![0.0; tp],
        errors: vec![0.0; factors.len()],
    };
    let group_inputs = g * tp;
    for (k, (wg, b)) in w.chunks_exact(g).zip(best.iter_mut()).enumerate() {
        let groups = xt.len() / group_inputs;
        let xg = &xt[(k % groups) * group_inputs..][..group_inputs];
        *b = clip_group(wg, xg, tokens, grid, factors, block, &mut s);
    }
}

crate::simd::per_isa!(pseudo_quantize_isa => pseudo_quantize_rows(
    w: &[f32], layout: Layout, grid: Grid, scales: Option<&[f32]>, out: &mut [f32]));
crate::simd::per_isa!(quantize_isa => quantize_rows(
    w: &[f32], g: usize, grid: Grid, codes: &mut [u8], params: &mut [(f32, i32)]));
crate::simd::per_isa!(clip_isa => clip_rows(
    w: &[f32], xt: &[f32], tp: usize, tokens: usize, g: usize, grid: Grid, factors: &[f32],
    block: usize, best: &mut [f32]));

/// Splits `[rows, n]` data into tasks of [`ROWS_PER_TASK`] rows.
fn row_tasks<T>(data: &mut [T], row_len: usize) -> Vec<&mut [T]> {
    data.chunks_mut(ROWS_PER_TASK * row_len.max(1)).collect()
}

/// `out = pq(w * scales) / scales` per group of `layout.group_size` along each row (or
/// `pq(w)` without scales), where `pq` is AutoAWQ's `pseudo_quantize_tensor`:
/// asymmetric `scale = max(max - min, 1e-5) / (2^bits - 1)`, `zero = clamp(-rint(min /
/// scale), 0, 2^bits - 1)`, `(clamp(rint(w / scale) + zero, 0, 2^bits - 1) - zero) * scale`;
/// symmetric `scale = max(amax|w|, 1e-5) / (2^(bits-1) - 1)`, `clamp(rint(w / scale),
/// -2^(bits-1), 2^(bits-1) - 1) * scale`. Ties round to even; float32 throughout.
pub fn pseudo_quantize(
    w: &[f32],
    layout: Layout,
    grid: Grid,
    scales: Option<&[f32]>,
    out: &mut [f32],
) -> Result<()> {
    check_len("out", out.len(), w.len())?;
    if let Some(s) = scales {
        check_len("scales", s.len(), layout.n)?;
    }
    let isa = simd::active()?.isa;
    let n = layout.n;
    let tasks: Vec<_> = w
        .chunks(ROWS_PER_TASK * n.max(1))
        .zip(row_tasks(out, n))
        .collect();
    parallel::map(tasks, w.len(), |(src, dst)| {
        pseudo_quantize_isa(isa, src, layout, grid, scales, dst)
    })?;
    Ok(())
}

/// The codes of [`pseudo_quantize`]'s grid (without scales): `codes` gets one byte per weight
/// (the low `bits`, two's complement when symmetric); returns the float32 scale and int32
/// zero point (0 when symmetric) of each group, row-major `[rows, groups]`.
pub fn quantize_codes(
    w: &[f32],
    layout: Layout,
    grid: Grid,
    codes: &mut [u8],
) -> Result<(Vec<f32>, Vec<i32>)> {
    check_len("codes", codes.len(), w.len())?;
    let isa = simd::active()?.isa;
    let (n, g) = (layout.n, layout.group_size);
    let mut params = crate::alloc::try_vec((0.0f32, 0i32), layout.rows * layout.groups())?;
    let tasks: Vec<_> = w
        .chunks(ROWS_PER_TASK * n.max(1))
        .zip(row_tasks(codes, n))
        .zip(row_tasks(&mut params, layout.groups()))
        .collect();
    parallel::map(tasks, w.len(), |((src, dst), p)| {
        quantize_isa(isa, src, g, grid, dst, p)
    })?;
    Ok(params.into_iter().unzip())
}

/// AutoAWQ's `_compute_best_clip` on a weight `w` (`[rows, n]`, already scaled) and inputs
/// `x` (`[tokens, n]`, already scaled and subsampled): for each (row, group), with
/// `org_max = amax|w_g|`, tries `max_val = org_max * (1 - i / n_grid)` for `i` in
/// `0..n_shrink`, quantizes `clamp(w_g, -max_val, max_val)` and keeps the `max_val` with the
/// smallest `mean_t (x_tg . q_g - x_tg . w_g)^2` (strictly smaller: the first on ties,
/// starting from 1e9). Returns the best `max_val` of each (row, group), row-major.
pub fn clip_search(
    w: &[f32],
    layout: Layout,
    x: &[f32],
    grid: Grid,
    n_grid: usize,
    n_shrink: usize,
) -> Result<Vec<f32>> {
    let n = layout.n;
    if n == 0 || !x.len().is_multiple_of(n) || x.is_empty() {
        return Err(QfastError::InvalidArgument(format!(
            "{} inputs do not make whole tokens of {n}",
            x.len()
        )));
    }
    if n_grid == 0 || n_shrink == 0 {
        return Err(QfastError::InvalidArgument(
            "the clip search needs n_grid >= 1 and at least one shrink step".to_string(),
        ));
    }
    let isa = simd::active()?.isa;
    let tokens = x.len() / n;
    let (xt, tp) = tile_inputs(x, tokens, n, layout.group_size)?;
    // The reference multiplies float32 weights by a Python float: the factor is computed in
    // double and rounded to float32 once.
    let factors: Vec<f32> = (0..n_shrink)
        .map(|i| (1.0 - i as f64 / n_grid as f64) as f32)
        .collect();
    let block = variant_block(isa, n_shrink);
    let groups = layout.groups();
    let mut best = crate::alloc::try_vec(0.0f32, layout.rows * groups)?;
    let tasks: Vec<_> = w
        .chunks(ROWS_PER_TASK * n)
        .zip(row_tasks(&mut best, groups))
        .collect();
    let work = w.len().saturating_mul(tp).saturating_mul(n_shrink + 1);
    let (g, factors) = (layout.group_size, &factors[..]);
    parallel::map(tasks, work, |(src, dst)| {
        clip_isa(isa, src, &xt, tp, tokens, g, grid, factors, block, dst)
    })?;
    Ok(best)
}

/// How many variants [`clip_rows`] evaluates per pass over a group's inputs: as many as the
/// registers hold (16 lanes each: one AVX-512 register, two AVX2 / four NEON registers),
/// preferring a block that divides `n_shrink` (the default 10 shrink steps: two blocks of 5,
/// no wasted work).
fn variant_block(isa: Isa, n_shrink: usize) -> usize {
    let wide = matches!(isa, Isa::Avx512 | Isa::Avx512Vnni);
    if n_shrink.is_multiple_of(5) {
        5
    } else if wide && n_shrink > 5 {
        8
    } else {
        4
    }
}

/// `x` (`[tokens, n]`) rearranged for the clip search: per group of `g` inputs, tiles of
/// [`LANES`] tokens, each `[g][LANES]` (contiguous, so the kernel reads it in order). The
/// token count is rounded up to whole tiles (`tp`); the padding tokens are zero, so they add
/// exactly 0 to every error.
fn tile_inputs(x: &[f32], tokens: usize, n: usize, g: usize) -> Result<(Vec<f32>, usize)> {
    let tp = tokens.div_ceil(LANES) * LANES;
    let mut xt = crate::alloc::try_vec(0.0f32, n * tp)?;
    for (t, row) in x.chunks_exact(n).enumerate() {
        let (tile, l) = (t / LANES, t % LANES);
        for (group, xs) in row.chunks_exact(g).enumerate() {
            let base = (group * tp + tile * LANES) * g;
            for (k, &v) in xs.iter().enumerate() {
                xt[base + k * LANES + l] = v;
            }
        }
    }
    Ok((xt, tp))
}

fn check_len(name: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(QfastError::InvalidArgument(format!(
            "{name} has {got} elements, expected {want}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(bits: u32, symmetric: bool) -> Grid {
        Grid::new(bits, symmetric).unwrap()
    }

    #[test]
    fn asymmetric_group_matches_the_formula() {
        // min -1, max 2: scale 3/15 = 0.2, zero = -rint(-5) = 5.
        let w = [-1.0f32, 0.0, 0.3, 2.0];
        let layout = Layout::new(1, 4, 4, 4).unwrap();
        let mut out = [0.0f32; 4];
        pseudo_quantize(&w, layout, grid(4, false), None, &mut out).unwrap();
        let scale = 3.0f32 / 15.0;
        let want: Vec<f32> = w
            .iter()
            .map(|&v| (((v / scale).round_ties_even() + 5.0).clamp(0.0, 15.0) - 5.0) * scale)
            .collect();
        assert_eq!(out.to_vec(), want);
        let mut codes = [0u8; 4];
        let (s, z) = quantize_codes(&w, layout, grid(4, false), &mut codes).unwrap();
        assert_eq!((s, z), (vec![scale], vec![5]));
        assert_eq!(codes, [0, 5, 7, 15]); // 0.3 / 0.2 = 1.5 rounds to even 2
    }

    #[test]
    fn symmetric_codes_are_signed() {
        let w = [-7.0f32, 3.5, 7.0, -0.5];
        let layout = Layout::new(1, 4, 4, 4).unwrap();
        let mut codes = [0u8; 4];
        let (s, z) = quantize_codes(&w, layout, grid(4, true), &mut codes).unwrap();
        assert_eq!((s, z), (vec![1.0], vec![0]));
        assert_eq!(codes.map(|c| c as i8), [-7, 4, 7, 0]); // 3.5 -> 4, -0.5 -> -0
    }

    #[test]
    fn constant_group_gets_the_minimum_range() {
        let w = [0.25f32; 8];
        let layout = Layout::new(1, 8, 8, 8).unwrap();
        let mut codes = [0u8; 8];
        let (s, _) = quantize_codes(&w, layout, grid(8, false), &mut codes).unwrap();
        assert_eq!(s, vec![1e-5f32 / 255.0]);
    }

    #[test]
    fn group_size_must_divide() {
        assert!(Layout::new(2, 10, 4, 20).is_err());
        assert!(Layout::new(2, 8, 4, 15).is_err());
    }

    #[test]
    fn clip_keeps_full_range_for_uniform_weights() {
        // Weights on the 4-bit symmetric grid: clipping can only hurt, so the full range wins.
        let w: Vec<f32> = (0..16).map(|i| ((i % 15) as f32 - 7.0) / 7.0).collect();
        let x: Vec<f32> = (0..16 * 5).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        let layout = Layout::new(1, 16, 16, 16).unwrap();
        let best = clip_search(&w, layout, &x, grid(4, true), 20, 10).unwrap();
        assert_eq!(best, vec![1.0]);
    }

    #[test]
    fn clip_cuts_an_outlier() {
        // One large weight on a token-free channel: clipping it costs nothing and refines the
        // grid of the rest, so a shrink step wins.
        let mut w: Vec<f32> = (0..32)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
            .collect();
        w[31] = 40.0;
        let mut x: Vec<f32> = (0..32 * 8)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 4.0)
            .collect();
        for t in 0..8 {
            x[t * 32 + 31] = 0.0;
        }
        let layout = Layout::new(1, 32, 32, 32).unwrap();
        let best = clip_search(&w, layout, &x, grid(4, false), 20, 10).unwrap();
        assert!(best[0] < 40.0 && best[0] >= 40.0 * 0.55, "{best:?}");
    }
}

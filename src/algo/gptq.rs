//! GPTQ's column loop (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
//! Generative Pre-trained Transformers", 2022), one block of columns at a time, with the
//! reference grid (`quant.py`'s `Quantizer` in IST-DASLab/gptq, kept by AutoGPTQ/GPTQModel).
//!
//! The caller (`qfast.gptq`) owns the weights `W [rows, cols]` (columns already in processing
//! order), the upper Cholesky factor `U` of `H⁻¹`, and the lazy update that follows each block
//! (`W[:, i2:] -= Err @ U[i1:i2, i2:]`, a BLAS product). This kernel runs the part BLAS cannot:
//! for each column of the block, quantize it, and spread its error over the block's remaining
//! columns. Every row is independent of the others, so rows are split across threads and the
//! result does not depend on the thread count.
//!
//! Arithmetic follows the reference's float32 operations one by one, so a NumPy transcription
//! of the reference gives the same bits: `x / scale` is a true division, rounding is to
//! nearest even (`torch.round`), the error update is a product then a difference (no fused
//! multiply-add), and the MSE search sums its errors in NumPy's pairwise order.

use super::pairwise_sum;
use crate::error::{QfastError, Result};
use crate::kernels::ScaleDtype;
use crate::parallel;

/// The MSE grid search of the reference (`Quantizer(mse=True)`): shrink the range by
/// `p = 1 - i / grid` for `i < max_shrink · grid`, keep the scale with the least `Σ|q - x|^norm`.
#[derive(Clone, Copy, Debug)]
pub struct Mse {
    pub norm: f32,
    pub grid: usize,
    pub max_shrink: f64,
}

/// The reference grid: `maxq = 2^bits - 1`; symmetric grids have zero `(maxq + 1) / 2`.
/// Each scale is rounded to `scale_dtype` where it is made (the zero point, the MSE search's
/// errors and the codes then use the scale as stored; float32 leaves the reference's bits).
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub maxq: f32,
    pub symmetric: bool,
    pub mse: Option<Mse>,
    pub scale_dtype: ScaleDtype,
}

/// `(scale, zero)` of one row slice, as the reference's `find_params` computes them.
pub fn find_params(x: &[f32], g: &Grid) -> (f32, f32) {
    let (mut lo, mut hi) = (0f32, 0f32); // the range always includes 0
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if g.symmetric {
        hi = hi.max(lo.abs());
        if lo < 0.0 {
            lo = -hi;
        }
    }
    if lo == 0.0 && hi == 0.0 {
        (lo, hi) = (-1.0, 1.0);
    }
    let sym_zero = (g.maxq + 1.0) / 2.0;
    let grid_of = |lo: f32, hi: f32| {
        let scale = g.scale_dtype.round((hi - lo) / g.maxq);
        let zero = if g.symmetric {
            sym_zero
        } else {
            (-lo / scale).round_ties_even()
        };
        (scale, zero)
    };
    let (mut scale, mut zero) = grid_of(lo, hi);
    if let Some(m) = g.mse {
        let mut best = f32::INFINITY;
        let mut e = vec![0f32; x.len()];
        for i in 0..(m.max_shrink * m.grid as f64) as usize {
            let p = (1.0 - i as f64 / m.grid as f64) as f32;
            let (s1, z1) = grid_of(p * lo, p * hi);
            for (ei, &v) in e.iter_mut().zip(x) {
                *ei = (fake_quant(v, s1, z1, g.maxq) - v).abs().powf(m.norm);
            }
            let err = pairwise_sum(&e);
            if err < best {
                (best, scale, zero) = (err, s1, z1);
            }
        }
    }
    (scale, zero)
}

/// The reference's `quantize`: the code `clamp(round(x / scale) + zero, 0, maxq)`.
#[inline(always)]
fn code(x: f32, scale: f32, zero: f32, maxq: f32) -> f32 {
    ((x / scale).round_ties_even() + zero).clamp(0.0, maxq)
}

/// The value the code stands for, `scale · (q - zero)`.
#[inline(always)]
fn fake_quant(x: f32, scale: f32, zero: f32, maxq: f32) -> f32 {
    scale * (code(x, scale, zero, maxq) - zero)
}

/// Where each column's grid comes from.
#[derive(Clone, Copy, Debug)]
pub enum Groups<'a> {
    /// One grid per row for every column (`group_size=None`): `scale[r]`, `zero[r]`.
    PerRow { scale: &'a [f32], zero: &'a [f32] },
    /// A new grid each `group_size` columns of the processing order, found (as the reference
    /// does) on the weights as they stand at the start of the block, written to the outputs.
    Dynamic { group_size: usize },
    /// Grids fixed beforehand (`static_groups`): row `r`'s grid `g` is
    /// `scale[r · n_groups + g]`; column `c` (processing order) uses group `col_group[c]`.
    Static {
        scale: &'a [f32],
        zero: &'a [f32],
        n_groups: usize,
        col_group: &'a [u32],
    },
}

/// One block of columns `i1..i2` of `w` (`rows × cols`, row-major; the block's columns and
/// those after it as the previous blocks left them).
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    pub w: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// The upper Cholesky factor of `H⁻¹`, `cols × cols`, row-major.
    pub hinv: &'a [f32],
    pub i1: usize,
    pub i2: usize,
}

/// What one block writes: codes of its columns (`rows × cols`, the block's columns only), the
/// scaled errors `Err` (`rows × (i2 - i1)`) for the lazy update, and for [`Groups::Dynamic`]
/// the grids of the groups that start in the block (`rows × n_groups`).
pub struct BlockOut<'a> {
    pub codes: &'a mut [u8],
    pub err: &'a mut [f32],
    pub scale: &'a mut [f32],
    pub zero: &'a mut [f32],
    pub n_groups: usize,
}

/// Rows per parallel task (a multiple of [`LANES`]): enough work per task (a block is ~8K
/// multiply-subtracts per row) to amortise the hand-off.
const ROWS_PER_TASK: usize = 32;

/// Quantizes block `b` (see the module comment); returns its share of the loss,
/// `Σ (w - q)² / d²` over its columns (the reference's `Losses` before its halving).
pub fn quantize_block(b: &Block, grid: &Grid, groups: &Groups, out: BlockOut) -> Result<f64> {
    check(b, groups, &out)?;
    let count = b.i2 - b.i1;
    let ng = out.n_groups.max(1);
    let all = Rows {
        r0: 0,
        n: b.rows,
        codes: out.codes,
        err: out.err,
        scale: out.scale,
        zero: out.zero,
        n_groups: ng,
    };
    let tasks = all.split(ROWS_PER_TASK, b.cols, count);
    let work = b.rows * count * count / 2;
    let isa = crate::simd::active()?.isa;
    // The block's square of the factor, transposed and contiguous: row `i` holds column `i`,
    // the coefficients the column pulls from the earlier ones (and its diagonal). In place its
    // rows lie `cols` floats apart, a stride that maps them onto few cache sets.
    let hb: Vec<f32> = (b.i1..b.i2)
        .flat_map(|c| (b.i1..b.i2).map(move |k| b.hinv[k * b.cols + c]))
        .collect();
    let hb = &hb[..];
    let sums = parallel::map(tasks, work, |rows| rows_isa(isa, b, hb, grid, groups, rows))?;
    Ok(sums.into_iter().sum())
}

/// Rows `r0..r0 + n` of the outputs (a task's, or a tile's of [`LANES`]).
struct Rows<'a> {
    r0: usize,
    n: usize,
    codes: &'a mut [u8],
    err: &'a mut [f32],
    scale: &'a mut [f32],
    zero: &'a mut [f32],
    n_groups: usize,
}

impl<'a> Rows<'a> {
    /// Runs of `k` rows (the last may be shorter), rows holding `cols` codes and `count`
    /// errors.
    fn split(self, k: usize, cols: usize, count: usize) -> Vec<Rows<'a>> {
        let (r0, ng) = (self.r0, self.n_groups);
        self.codes
            .chunks_mut(k * cols)
            .zip(self.err.chunks_mut(k * count))
            .zip(self.scale.chunks_mut(k * ng))
            .zip(self.zero.chunks_mut(k * ng))
            .enumerate()
            .map(|(t, (((codes, err), scale), zero))| Rows {
                r0: r0 + t * k,
                n: codes.len() / cols,
                codes,
                err,
                scale,
                zero,
                n_groups: ng,
            })
            .collect()
    }
}

/// The block's column loop over a task's rows, [`LANES`] rows at a time; returns their loss.
#[inline(always)]
fn rows_task(b: &Block, hb: &[f32], grid: &Grid, groups: &Groups, rows: Rows) -> f64 {
    let count = b.i2 - b.i1;
    let mut w1 = vec![[0f32; LANES]; count];
    let mut loss = 0f64;
    for tile in rows.split(LANES, b.cols, count) {
        loss += quantize_tile(b, hb, grid, groups, &mut w1, tile);
    }
    loss
}

crate::simd::per_isa!(rows_isa => rows_task(
    b: &Block, hb: &[f32], grid: &Grid, groups: &Groups, rows: Rows) -> f64);

/// Rows quantized together: the error update of a column is then one vector operation per
/// later column, whatever the block's width (row by row, its loop was too short to vectorise
/// well).
const LANES: usize = 16;

/// One tile of at most [`LANES`] rows through the block; returns its loss (rows summed in
/// order). `hb` is the block's square of the factor, transposed (`count × count`); `w1`
/// scratch for the block's working copy, column by column, a lane per row (lanes past `n`
/// hold zeros and are not written out).
#[inline(always)]
fn quantize_tile(
    b: &Block,
    hb: &[f32],
    grid: &Grid,
    groups: &Groups,
    w1: &mut [[f32; LANES]],
    t: Rows,
) -> f64 {
    let count = b.i2 - b.i1;
    let row = |l: usize| &b.w[(t.r0 + l) * b.cols..(t.r0 + l + 1) * b.cols];
    w1.fill([0.0; LANES]);
    for l in 0..t.n {
        for (col, &v) in w1.iter_mut().zip(&row(l)[b.i1..b.i2]) {
            col[l] = v;
        }
    }
    // Lanes past `n` keep the grid (1, 0): finite arithmetic on their zeros.
    let (mut scale, mut zero) = ([1f32; LANES], [0f32; LANES]);
    let ng = t.n_groups;
    for l in 0..t.n {
        match groups {
            Groups::PerRow { scale: s, zero: z } => {
                (scale[l], zero[l]) = (s[t.r0 + l], z[t.r0 + l])
            }
            // A group that started in an earlier block continues here with its grid.
            Groups::Dynamic { group_size } if !b.i1.is_multiple_of(*group_size) => {
                let g = b.i1 / group_size;
                (scale[l], zero[l]) = (t.scale[l * ng + g], t.zero[l * ng + g]);
            }
            _ => {}
        }
    }
    let mut loss = [0f64; LANES];
    let (mut qs, mut es) = (vec![[0u8; LANES]; count], vec![[0f32; LANES]; count]);
    for i in 0..count {
        let c = b.i1 + i;
        for l in 0..t.n {
            match groups {
                Groups::Dynamic { group_size } if c.is_multiple_of(*group_size) => {
                    let end = (c + group_size).min(b.cols);
                    let (s, z) = find_params(&row(l)[c..end], grid);
                    let g = c / group_size;
                    (scale[l], zero[l]) = (s, z);
                    (t.scale[l * ng + g], t.zero[l * ng + g]) = (s, z);
                }
                Groups::Static {
                    scale: s,
                    zero: z,
                    n_groups,
                    col_group,
                } => {
                    let at = (t.r0 + l) * n_groups + col_group[c] as usize;
                    (scale[l], zero[l]) = (s[at], z[at]);
                }
                _ => {}
            }
        }
        // The updates of the earlier columns, pulled in their order: the same roundings as the
        // reference's push (`W1[:, i:] -= err ⊗ U[i, i:]` column after column), but a loop
        // the compiler keeps across lanes (pushed, it vectorised across columns with gathers).
        let mut w = w1[i];
        for (ek, k) in es[..i].iter().zip(0..) {
            let h = hb[i * count + k];
            for l in 0..LANES {
                w[l] -= ek[l] * h;
            }
        }
        let d = hb[i * count + i];
        let (mut q, mut e) = ([0f32; LANES], [0f32; LANES]);
        for l in 0..LANES {
            q[l] = code(w[l], scale[l], zero[l], grid.maxq);
            let deq = scale[l] * (q[l] - zero[l]);
            e[l] = (w[l] - deq) / d;
            loss[l] += f64::from((w[l] - deq) * (w[l] - deq) / (d * d));
        }
        qs[i] = q.map(|v| v as u8);
        es[i] = e;
    }
    // Out row by row (stores across the tile's rows, column by column, were scattered).
    for l in 0..t.n {
        let codes = &mut t.codes[l * b.cols + b.i1..l * b.cols + b.i2];
        for (c, q) in codes.iter_mut().zip(qs.iter()) {
            *c = q[l];
        }
        for (e, ei) in t.err[l * count..(l + 1) * count].iter_mut().zip(es.iter()) {
            *e = ei[l];
        }
    }
    loss[..t.n].iter().sum()
}

fn check(b: &Block, groups: &Groups, out: &BlockOut) -> Result<()> {
    let bad = |what: &str| Err(QfastError::InvalidArgument(format!("gptq block: {what}")));
    let count = b.i2.saturating_sub(b.i1);
    if b.i1 >= b.i2 || b.i2 > b.cols {
        return bad("columns out of range");
    }
    if b.w.len() != b.rows * b.cols || b.hinv.len() != b.cols * b.cols {
        return bad("w or hinv has the wrong size");
    }
    let ng = out.n_groups.max(1);
    if out.codes.len() != b.rows * b.cols
        || out.err.len() != b.rows * count
        || out.scale.len() != b.rows * ng
        || out.zero.len() != b.rows * ng
    {
        return bad("an output has the wrong size");
    }
    match *groups {
        Groups::PerRow { scale, zero } if scale.len() != b.rows || zero.len() != b.rows => {
            bad("per-row grids have the wrong size")
        }
        Groups::Dynamic { group_size } if group_size == 0 || b.cols.div_ceil(group_size) > ng => {
            bad("group_size does not match n_groups")
        }
        Groups::Static {
            scale,
            zero,
            n_groups,
            col_group,
        } if scale.len() != b.rows * n_groups
            || zero.len() != b.rows * n_groups
            || col_group.len() != b.cols
            || col_group.iter().any(|&g| g as usize >= n_groups) =>
        {
            bad("static grids or column groups have the wrong size")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_matches_numpy_small_and_large() {
        // Exact small sums, and the split of a long run (the halves are summed separately).
        assert_eq!(pairwise_sum(&[1.0, 2.0, 3.0]), 6.0);
        let v: Vec<f32> = (0..1000).map(|i| (i as f32).sqrt()).collect();
        let half = super::super::tree_split(1000); // 500 rounded down to a multiple of 8
        assert_eq!(
            pairwise_sum(&v),
            pairwise_sum(&v[..half]) + pairwise_sum(&v[half..])
        );
    }

    #[test]
    fn find_params_reference_grid() {
        let g = Grid {
            maxq: 15.0,
            symmetric: false,
            mse: None,
            scale_dtype: ScaleDtype::F32,
        };
        // Range [0.0, 3.0] (0 included): scale 0.2, zero 0.
        assert_eq!(find_params(&[1.0, 3.0], &g), (0.2, 0.0));
        // All zero: [-1, 1]; 1 / (2/15 in float32) = 7.4999996 rounds to 7.
        assert_eq!(find_params(&[0.0, 0.0], &g), (2.0 / 15.0, 7.0));
        let s = Grid {
            symmetric: true,
            ..g
        };
        // Symmetric: scale 2·max|x| / 15, zero 8.
        assert_eq!(find_params(&[-3.0, 1.5], &s), (6.0 / 15.0, 8.0));
        // float16 scales: the zero point is computed against the rounded scale.
        let h = Grid {
            scale_dtype: ScaleDtype::F16,
            ..g
        };
        let s16 = half::f16::from_f32(3.3 / 15.0).to_f32();
        let (scale, zero) = find_params(&[-1.1, 2.2], &h);
        assert_eq!((scale, zero), (s16, (1.1f32 / s16).round_ties_even()));
    }
}

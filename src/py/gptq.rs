//! Binding of GPTQ's column loop (`qfast.gptq` runs the factorisation, the block order and the
//! lazy BLAS updates in Python/NumPy).

use super::to_py;
use crate::algo::gptq::{self, Block, BlockOut, Grid, Groups, Mse};
use crate::kernels::ScaleDtype;
use numpy::{
    PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

fn grid(
    bits: u32,
    symmetric: bool,
    mse: Option<(f32, usize, f64)>,
    scale_dtype: &str,
) -> PyResult<Grid> {
    let scale_dtype = ScaleDtype::from_name(scale_dtype).map_err(to_py)?;
    crate::checks::check_bits(bits).map_err(to_py)?;
    Ok(Grid {
        maxq: ((1u32 << bits) - 1) as f32,
        symmetric,
        mse: mse.map(|(norm, grid, max_shrink)| Mse {
            norm,
            grid,
            max_shrink,
        }),
        scale_dtype,
    })
}

/// gptq_find_params(x, bits, symmetric, mse, scale_dtype)
/// --
///
/// The reference grid of each row of `x` (`[rows, n]` float32): `(scale, zero)`, float32
/// `[rows]` each. `mse`: `None` or `(norm, grid, max_shrink)`. Scales are rounded to
/// `scale_dtype` (float32, float16 or bfloat16) as they are made.
#[pyfunction]
#[pyo3(signature = (x, bits, symmetric, mse=None, scale_dtype="float32"))]
#[allow(clippy::type_complexity)]
pub fn gptq_find_params<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    bits: u32,
    symmetric: bool,
    mse: Option<(f32, usize, f64)>,
    scale_dtype: &str,
) -> PyResult<(
    Bound<'py, numpy::PyArray1<f32>>,
    Bound<'py, numpy::PyArray1<f32>>,
)> {
    let g = grid(bits, symmetric, mse, scale_dtype)?;
    let n = x.shape()[1];
    let xs = x.as_slice()?;
    let rows = xs.len().checked_div(n).unwrap_or(0);
    let s = super::zeros::<f32, numpy::Ix1>(py, &[rows])?;
    let z = super::zeros::<f32, numpy::Ix1>(py, &[rows])?;
    {
        let (mut s_rw, mut z_rw) = (s.readwrite(), z.readwrite());
        let (s_out, z_out) = (s_rw.as_slice_mut()?, z_rw.as_slice_mut()?);
        py.detach(|| {
            for ((row, so), zo) in xs.chunks(n.max(1)).zip(s_out).zip(z_out) {
                (*so, *zo) = gptq::find_params(row, &g);
            }
        });
    }
    Ok((s, z))
}

/// gptq_block(w, hinv, i1, i2, bits, symmetric, mse, codes, err, scale, zero, group_size,
///            static_groups, col_group, scale_dtype)
/// --
///
/// GPTQ's column loop over columns `i1..i2` of `w` (`[rows, cols]` float32, processing
/// order; `hinv` the upper Cholesky factor of `H⁻¹`). Writes the block's codes into `codes`
/// (`[rows, cols]` uint8), the scaled errors into `err` (`[rows, i2 - i1]`) and, for dynamic
/// groups, the grids of the groups that start in the block into `scale` / `zero`
/// (`[rows, n_groups]`). Grids: `group_size=None` and not `static_groups`: `scale` / `zero`
/// hold one grid per row (`[rows, 1]`), read only; `static_groups`: they hold every group's
/// grid, read only, and column `c` uses group `col_group[c]`. Dynamic groups' scales are
/// rounded to `scale_dtype` as they are made. Returns the block's loss.
#[pyfunction]
#[pyo3(signature = (w, hinv, i1, i2, bits, symmetric, mse, codes, err, scale, zero,
                    group_size, static_groups, col_group, scale_dtype="float32"))]
#[allow(clippy::too_many_arguments)]
pub fn gptq_block<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    hinv: PyReadonlyArray2<'py, f32>,
    i1: usize,
    i2: usize,
    bits: u32,
    symmetric: bool,
    mse: Option<(f32, usize, f64)>,
    mut codes: PyReadwriteArray2<'py, u8>,
    mut err: PyReadwriteArray2<'py, f32>,
    mut scale: PyReadwriteArray2<'py, f32>,
    mut zero: PyReadwriteArray2<'py, f32>,
    group_size: Option<usize>,
    static_groups: bool,
    col_group: PyReadonlyArray1<'py, u32>,
    scale_dtype: &str,
) -> PyResult<f64> {
    let g = grid(bits, symmetric, mse, scale_dtype)?;
    let (rows, cols) = (w.shape()[0], w.shape()[1]);
    let n_groups = scale.shape()[1];
    let col_group = col_group.as_slice()?;
    let (ws, hs) = (w.as_slice()?, hinv.as_slice()?);
    let (s, z) = (scale.as_slice_mut()?, zero.as_slice_mut()?);
    let (codes, err) = (codes.as_slice_mut()?, err.as_slice_mut()?);
    let block = Block {
        w: ws,
        rows,
        cols,
        hinv: hs,
        i1,
        i2,
    };
    let copy = |v: &[f32]| -> PyResult<Vec<f32>> {
        let mut c = crate::alloc::try_with_capacity(v.len()).map_err(super::to_py)?;
        c.extend_from_slice(v);
        Ok(c)
    };
    let (fixed_s, fixed_z) = (copy(s)?, copy(z)?);
    let groups = match (group_size, static_groups) {
        (_, true) => Groups::Static {
            scale: &fixed_s,
            zero: &fixed_z,
            n_groups,
            col_group,
        },
        (Some(group_size), false) => Groups::Dynamic { group_size },
        (None, false) => Groups::PerRow {
            scale: &fixed_s,
            zero: &fixed_z,
        },
    };
    let out = BlockOut {
        codes,
        err,
        scale: s,
        zero: z,
        n_groups,
    };
    py.detach(|| gptq::quantize_block(&block, &g, &groups, out))
        .map_err(to_py)
}

//! Bindings of AWQ's per-group kernels (`qfast.awq` drives them around NumPy's matmuls).

use super::to_py;
use crate::algo::awq::{self, Grid, Layout};
use numpy::{
    PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray2,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// The layout of a `[rows, n]` weight array in groups of `group_size`.
fn layout(w: &PyReadonlyArray2<'_, f32>, group_size: usize) -> PyResult<Layout> {
    let [rows, n] = w.shape() else {
        unreachable!("a 2-D array has two dimensions")
    };
    Layout::new(*rows, *n, group_size, rows * n).map_err(to_py)
}

/// awq_pseudo_quantize(w, group_size, bits, symmetric, scales, out)
/// --
///
/// Kernel entry of `qfast.awq`: `out = pq(w * scales) / scales` (or `pq(w)` without scales)
/// per group along each row of the C-contiguous float32 `w`, with AutoAWQ's
/// `pseudo_quantize_tensor` as `pq`. `out` is a C-contiguous float32 array of `w`'s shape.
#[pyfunction]
#[pyo3(signature = (w, group_size, bits, symmetric, scales, out))]
pub fn awq_pseudo_quantize(
    py: Python<'_>,
    w: PyReadonlyArray2<'_, f32>,
    group_size: usize,
    bits: u32,
    symmetric: bool,
    scales: Option<PyReadonlyArray1<'_, f32>>,
    mut out: PyReadwriteArray2<'_, f32>,
) -> PyResult<()> {
    let layout = layout(&w, group_size)?;
    let grid = Grid::new(bits, symmetric).map_err(to_py)?;
    let src = w.as_slice()?;
    let scales = scales.as_ref().map(|s| s.as_slice()).transpose()?;
    let dst = out.as_slice_mut()?;
    py.detach(|| awq::pseudo_quantize(src, layout, grid, scales, dst))
        .map_err(to_py)
}

type CodesOut<'py> = (
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<i32>>,
);

/// awq_quantize(w, group_size, bits, symmetric)
/// --
///
/// Kernel entry of `qfast.awq`: the codes of `pq(w)` (one byte each, two's complement when
/// symmetric, flat row-major), and the float32 scale and int32 zero point (0 when
/// symmetric) of each (row, group), flat row-major.
#[pyfunction]
pub fn awq_quantize<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    group_size: usize,
    bits: u32,
    symmetric: bool,
) -> PyResult<CodesOut<'py>> {
    let layout = layout(&w, group_size)?;
    let grid = Grid::new(bits, symmetric).map_err(to_py)?;
    let src = w.as_slice()?;
    let codes = super::zeros::<u8, numpy::Ix1>(py, &[src.len()])?;
    let (scale, zero) = {
        let mut rw = codes.readwrite();
        let dst = rw.as_slice_mut()?;
        py.detach(|| awq::quantize_codes(src, layout, grid, dst))
            .map_err(to_py)?
    };
    Ok((
        codes,
        super::to_numpy(py, &scale)?,
        super::to_numpy(py, &zero)?,
    ))
}

/// awq_clip_search(w, x, group_size, bits, symmetric, n_grid, n_shrink)
/// --
///
/// Kernel entry of `qfast.awq`: AutoAWQ's `_compute_best_clip` on the C-contiguous float32
/// weight `w` `[rows, n]` and inputs `x` `[tokens, n]` (both already scaled, `x`
/// subsampled). Returns the best `max_val` of each (row, group), flat row-major.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn awq_clip_search<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    x: PyReadonlyArray2<'py, f32>,
    group_size: usize,
    bits: u32,
    symmetric: bool,
    n_grid: usize,
    n_shrink: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let layout = layout(&w, group_size)?;
    let grid = Grid::new(bits, symmetric).map_err(to_py)?;
    let (ws, xs) = (w.as_slice()?, x.as_slice()?);
    let best = py
        .detach(|| awq::clip_search(ws, layout, xs, grid, n_grid, n_shrink))
        .map_err(to_py)?;
    super::to_numpy(py, &best)
}

//! Bindings of HQQ's three passes (`qfast.hqq` runs the solver loop around them, so that it
//! can stop early and report progress between iterations, with the GIL released inside each).

use super::to_py;
use crate::algo::hqq::{self, Grid, Shrink};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;

type Params<'py> = (Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<f32>>);

/// hqq_init(w, shape, group_size, bits, round_zero)
/// --
///
/// Kernel entry of `qfast.hqq`: every group's initial `(scale, zero)` in hqq's convention
/// (`scale` in codes per unit). `w` is contiguous float32 of logical `shape`.
#[pyfunction]
pub fn hqq_init<'py>(
    py: Python<'py>,
    w: PyReadonlyArray1<'py, f32>,
    shape: Vec<usize>,
    group_size: usize,
    bits: u32,
    round_zero: bool,
) -> PyResult<Params<'py>> {
    let w = w.as_slice()?;
    let grid = Grid::new(w.len(), group_size, bits).map_err(to_py)?;
    let (scale, zero) = py
        .detach(|| hqq::init(w, &shape, &grid, round_zero))
        .map_err(to_py)?;
    Ok((super::to_numpy(py, &scale)?, super::to_numpy(py, &zero)?))
}

/// hqq_step(w, group_size, bits, scale, zero, beta, lp_norm)
/// --
///
/// Kernel entry of `qfast.hqq`: one proximal iteration. Returns the new zero points and the
/// sum of `|W - W_r|` (W_r dequantized with the given zero points).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn hqq_step<'py>(
    py: Python<'py>,
    w: PyReadonlyArray1<'py, f32>,
    group_size: usize,
    bits: u32,
    scale: PyReadonlyArray1<'py, f32>,
    zero: PyReadonlyArray1<'py, f32>,
    beta: f64,
    lp_norm: f64,
) -> PyResult<(Bound<'py, PyArray1<f32>>, f64)> {
    let (w, scale, zero) = (w.as_slice()?, scale.as_slice()?, zero.as_slice()?);
    let grid = Grid::new(w.len(), group_size, bits).map_err(to_py)?;
    let shrink = Shrink::new(beta, lp_norm).map_err(to_py)?;
    let (new_zero, err) = py
        .detach(|| hqq::step(w, &grid, scale, zero, &shrink))
        .map_err(to_py)?;
    Ok((super::to_numpy(py, &new_zero)?, err))
}

/// hqq_codes(w, group_size, bits, scale, zero)
/// --
///
/// Kernel entry of `qfast.hqq`: the codes, one per byte, and the sum of `|W - W_r|`.
#[pyfunction]
pub fn hqq_codes<'py>(
    py: Python<'py>,
    w: PyReadonlyArray1<'py, f32>,
    group_size: usize,
    bits: u32,
    scale: PyReadonlyArray1<'py, f32>,
    zero: PyReadonlyArray1<'py, f32>,
) -> PyResult<(Bound<'py, PyArray1<u8>>, f64)> {
    let (w, scale, zero) = (w.as_slice()?, scale.as_slice()?, zero.as_slice()?);
    let grid = Grid::new(w.len(), group_size, bits).map_err(to_py)?;
    let out = super::zeros::<u8, numpy::Ix1>(py, &[w.len()])?;
    let err = {
        let mut rw = out.readwrite();
        let dst = rw.as_slice_mut()?;
        py.detach(|| hqq::codes(w, &grid, scale, zero, dst))
            .map_err(to_py)?
    };
    Ok((out, err))
}

/// hqq_error(w, group_size, bits, scale, zero)
/// --
///
/// Kernel entry of `qfast.hqq`: `mean |W - W_r|` summed in NumPy's float32 order (what the
/// early stopping compares when two errors are within float32 rounding of each other).
#[pyfunction]
pub fn hqq_error<'py>(
    py: Python<'py>,
    w: PyReadonlyArray1<'py, f32>,
    group_size: usize,
    bits: u32,
    scale: PyReadonlyArray1<'py, f32>,
    zero: PyReadonlyArray1<'py, f32>,
) -> PyResult<f32> {
    let (w, scale, zero) = (w.as_slice()?, scale.as_slice()?, zero.as_slice()?);
    let grid = Grid::new(w.len(), group_size, bits).map_err(to_py)?;
    py.detach(|| hqq::error_f32(w, &grid, scale, zero))
        .map_err(to_py)
}

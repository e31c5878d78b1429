//! Bindings of the GGUF block formats (`qfast.gguf` wraps them with shapes and type names).

use super::to_py;
use crate::gguf::{self, GgmlType};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;

fn ggml_type(name: &str) -> PyResult<GgmlType> {
    GgmlType::from_name(name).map_err(to_py)
}

/// gguf_type_info(type)
/// --
///
/// `(name, ggml id, values per block, bytes per block, quantize supported)`.
#[pyfunction]
pub fn gguf_type_info(name: &str) -> PyResult<(&'static str, u32, usize, usize, bool)> {
    let t = ggml_type(name)?;
    Ok((
        t.name(),
        t.id(),
        t.block_size(),
        t.type_size(),
        t.can_quantize(),
    ))
}

/// gguf_quantize(x, type)
/// --
///
/// Kernel entry of `qfast.gguf.quantize`: contiguous float32 values (whole blocks) to the
/// type's bytes.
#[pyfunction]
pub fn gguf_quantize<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f32>,
    name: &str,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let t = ggml_type(name)?;
    let xs = x.as_slice()?;
    gguf::check_blocks(t, xs.len()).map_err(to_py)?;
    let out = super::zeros::<u8, numpy::Ix1>(py, &[xs.len() / t.block_size() * t.type_size()])?;
    {
        let mut rw = out.readwrite();
        let dst = rw.as_slice_mut()?;
        py.detach(|| gguf::quantize(t, xs, dst)).map_err(to_py)?;
    }
    Ok(out)
}

/// gguf_quantize_rows(x, n_per_row, type, imatrix=None)
/// --
///
/// Kernel entry of `qfast.gguf.quantize` for the row quantizers (K-quants, IQ4_NL, and any
/// type with an importance matrix): contiguous float32 rows of `n_per_row` values to the
/// type's bytes, as ggml's `quantize_<type>` with `quant_weights = imatrix`.
#[pyfunction]
#[pyo3(signature = (x, n_per_row, name, imatrix=None))]
pub fn gguf_quantize_rows<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f32>,
    n_per_row: usize,
    name: &str,
    imatrix: Option<PyReadonlyArray1<'py, f32>>,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let t = ggml_type(name)?;
    let xs = x.as_slice()?;
    let w = match &imatrix {
        Some(a) => Some(a.as_slice()?),
        None => None,
    };
    let bs = t.block_size();
    if n_per_row == 0 || !n_per_row.is_multiple_of(bs) || !xs.len().is_multiple_of(n_per_row) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{name} rows hold whole blocks of {bs} values; got rows of {n_per_row} over {} values",
            xs.len()
        )));
    }
    let out = super::zeros::<u8, numpy::Ix1>(py, &[xs.len() / bs * t.type_size()])?;
    {
        let mut rw = out.readwrite();
        let dst = rw.as_slice_mut()?;
        py.detach(|| gguf::rows::quantize_rows(t, xs, n_per_row, w, dst))
            .map_err(to_py)?;
    }
    Ok(out)
}

/// Whether `gguf_quantize_rows` runs `type` (with an importance matrix when `weighted`).
#[pyfunction]
pub fn gguf_can_quantize_rows(name: &str, weighted: bool) -> PyResult<bool> {
    Ok(gguf::rows::row_quantizer(ggml_type(name)?, weighted).is_some())
}

/// gguf_dequantize(blocks, type)
/// --
///
/// Kernel entry of `qfast.gguf.dequantize`: contiguous bytes (whole blocks) to float32.
#[pyfunction]
pub fn gguf_dequantize<'py>(
    py: Python<'py>,
    blocks: PyReadonlyArray1<'py, u8>,
    name: &str,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let t = ggml_type(name)?;
    let bs = blocks.as_slice()?;
    let n = bs.len() / t.type_size() * t.block_size();
    let out = super::zeros::<f32, numpy::Ix1>(py, &[n])?;
    {
        let mut rw = out.readwrite();
        let dst = rw.as_slice_mut()?;
        py.detach(|| gguf::dequantize(t, bs, dst)).map_err(to_py)?;
    }
    Ok(out)
}

/// gguf_dot_q4_0_q8_0(w, x, rows)
/// --
///
/// Kernel entry of `qfast.gguf.dot`: `rows` contiguous rows of Q4_0 bytes by one Q8_0 row.
#[pyfunction]
pub fn gguf_dot_q4_0_q8_0<'py>(
    py: Python<'py>,
    w: PyReadonlyArray1<'py, u8>,
    x: PyReadonlyArray1<'py, u8>,
    rows: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (ws, xs) = (w.as_slice()?, x.as_slice()?);
    let out = super::zeros::<f32, numpy::Ix1>(py, &[rows])?;
    {
        let mut rw = out.readwrite();
        let dst = rw.as_slice_mut()?;
        py.detach(|| gguf::dot_q4_0_q8_0(ws, xs, dst))
            .map_err(to_py)?;
    }
    Ok(out)
}

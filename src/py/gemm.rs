//! Bindings of the matrix products: `matmul_int8`, the packed weight of `linear`, and the
//! integer peak used by the benchmarks.

use super::to_py;
use crate::kernels::linear::{Compute, GroupMap, PackedLinear as Packed, Weight};
use crate::kernels::matmul::{self, Lhs};
use numpy::{
    PyArray2, PyArray3, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// matmul_int8(a, b)
/// --
///
/// Kernel entry of `qfast.matmul_int8` (use that instead): C-contiguous int8 or uint8
/// `a [M, K]` by C-contiguous int8 `b [K, N]`, exact int32 `[M, N]`.
#[pyfunction]
pub fn matmul_int8<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: PyReadonlyArray2<'py, i8>,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let (k2, n) = (b.shape()[0], b.shape()[1]);
    let bs = b.as_slice()?;
    let run = |lhs: Lhs, m: usize, k: usize| -> PyResult<Bound<'py, PyArray2<i32>>> {
        if k != k2 {
            return Err(PyValueError::new_err(format!(
                "matmul_int8: a has {k} columns but b has {k2} rows"
            )));
        }
        let out = super::zeros::<i32, numpy::Ix2>(py, &[m, n])?;
        {
            let mut rw = out.readwrite();
            let dst = rw.as_slice_mut()?;
            py.detach(|| matmul::matmul_int8(lhs, bs, m, k, n, dst))
                .map_err(to_py)?;
        }
        Ok(out)
    };
    if let Ok(a) = a.cast::<PyArray2<i8>>() {
        let a = a.readonly();
        let (m, k) = (a.shape()[0], a.shape()[1]);
        run(Lhs::I8(a.as_slice()?), m, k)
    } else if let Ok(a) = a.cast::<PyArray2<u8>>() {
        let a = a.readonly();
        let (m, k) = (a.shape()[0], a.shape()[1]);
        run(Lhs::U8(a.as_slice()?), m, k)
    } else {
        Err(PyTypeError::new_err(
            "matmul_int8: a must be a 2-D int8 or uint8 array",
        ))
    }
}

/// matmul_int8_batched(a, b, ia, ib)
/// --
///
/// Kernel entry of `qfast.matmul_int8` for stacks: C-contiguous int8 or uint8 `a [Ba, M, K]`
/// and int8 `b [Bb, K, N]`; batch `i` of the int32 `[len(ia), M, N]` result is
/// `a[ia[i]] @ b[ib[i]]` (int64 index arrays, so broadcast batches are not copied).
#[pyfunction]
pub fn matmul_int8_batched<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: PyReadonlyArray3<'py, i8>,
    ia: PyReadonlyArray1<'py, i64>,
    ib: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray3<i32>>> {
    let (k2, n) = (b.shape()[1], b.shape()[2]);
    let bs = b.as_slice()?;
    let index = |v: PyReadonlyArray1<'py, i64>| -> PyResult<Vec<usize>> {
        let v = v.as_slice()?;
        let mut out = crate::alloc::try_with_capacity(v.len()).map_err(to_py)?;
        for &i in v {
            out.push(usize::try_from(i).map_err(|_| {
                PyValueError::new_err(format!("matmul_int8: negative batch index {i}"))
            })?);
        }
        Ok(out)
    };
    let (ia, ib) = (index(ia)?, index(ib)?);
    let run = |lhs: Lhs, m: usize, k: usize| -> PyResult<Bound<'py, PyArray3<i32>>> {
        if k != k2 {
            return Err(PyValueError::new_err(format!(
                "matmul_int8: a has {k} columns but b has {k2} rows"
            )));
        }
        let out = super::zeros::<i32, numpy::Ix3>(py, &[ia.len(), m, n])?;
        {
            let mut rw = out.readwrite();
            let dst = rw.as_slice_mut()?;
            py.detach(|| matmul::matmul_int8_batched(lhs, bs, &ia, &ib, m, k, n, dst))
                .map_err(to_py)?;
        }
        Ok(out)
    };
    if let Ok(a) = a.cast::<PyArray3<i8>>() {
        let a = a.readonly();
        let (m, k) = (a.shape()[1], a.shape()[2]);
        run(Lhs::I8(a.as_slice()?), m, k)
    } else if let Ok(a) = a.cast::<PyArray3<u8>>() {
        let a = a.readonly();
        let (m, k) = (a.shape()[1], a.shape()[2]);
        run(Lhs::U8(a.as_slice()?), m, k)
    } else {
        Err(PyTypeError::new_err(
            "matmul_int8: a must be a 3-D int8 or uint8 array",
        ))
    }
}

/// A quantized weight packed for `linear`'s kernels (built by `pack_linear`).
#[pyclass(frozen, module = "qfast._qfast")]
pub struct PackedLinear {
    inner: Packed,
}

#[pymethods]
impl PackedLinear {
    /// forward(x, bias, compute)
    /// --
    ///
    /// `x [M, K]` C-contiguous float32 @ W.T (+ bias), float32 `[M, N]`; `compute` is
    /// "int8" or "float".
    #[pyo3(signature = (x, bias, compute))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        bias: Option<PyReadonlyArray1<'py, f32>>,
        compute: &str,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let compute = match compute {
            "int8" => Compute::Int8,
            "float" => Compute::Float,
            other => {
                return Err(PyValueError::new_err(format!(
                    "compute must be \"int8\" or \"float\", not {other:?}"
                )))
            }
        };
        let (m, k) = (x.shape()[0], x.shape()[1]);
        if k != self.inner.in_features() {
            return Err(PyValueError::new_err(format!(
                "x has {k} features but the weight takes {}",
                self.inner.in_features()
            )));
        }
        let xs = x.as_slice()?;
        let bias = bias.as_ref().map(|b| b.as_slice()).transpose()?;
        let out = super::zeros::<f32, numpy::Ix2>(py, &[m, self.inner.out_features()])?;
        {
            let mut rw = out.readwrite();
            let dst = rw.as_slice_mut()?;
            py.detach(|| self.inner.forward(xs, m, bias, compute, dst))
                .map_err(to_py)?;
        }
        Ok(out)
    }

    #[getter]
    fn in_features(&self) -> usize {
        self.inner.in_features()
    }

    #[getter]
    fn out_features(&self) -> usize {
        self.inner.out_features()
    }

    /// Bytes of the packed weight (codes and per-segment grid).
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }
}

/// pack_linear(codes, k, bits, signed, scale, zero_point, group_size, g_idx)
/// --
///
/// Packs a weight for `linear`: `codes [N, ceil(k * bits / 8)]` as a QTensor stores them (each
/// row's `k` codes a little-endian bit stream, two's complement when signed), `scale` and
/// `zero_point` (float, or None) `[N, groups]`, groups of `group_size` consecutive columns
/// (None: one group) or given per column by `g_idx`.
#[pyfunction]
#[pyo3(signature = (codes, k, bits, signed, scale, zero_point, group_size, g_idx))]
#[allow(clippy::too_many_arguments)]
pub fn pack_linear(
    py: Python<'_>,
    codes: PyReadonlyArray2<'_, u8>,
    k: usize,
    bits: u32,
    signed: bool,
    scale: PyReadonlyArray2<'_, f32>,
    zero_point: Option<PyReadonlyArray2<'_, f32>>,
    group_size: Option<usize>,
    g_idx: Option<PyReadonlyArray1<'_, i32>>,
) -> PyResult<PackedLinear> {
    let n = codes.shape()[0];
    let groups = scale.shape()[1];
    let g_idx = g_idx.as_ref().map(|g| g.as_slice()).transpose()?;
    let map = match (g_idx, group_size) {
        (Some(g), _) => GroupMap::Indexed(g),
        (None, Some(size)) => GroupMap::Contiguous(size),
        (None, None) => GroupMap::Contiguous(k.max(1)),
    };
    if scale.shape()[0] != n {
        return Err(PyValueError::new_err(format!(
            "scale has {} rows, the weight {n}",
            scale.shape()[0]
        )));
    }
    let w = Weight {
        codes: codes.as_slice()?,
        n,
        k,
        bits,
        signed,
        scale: scale.as_slice()?,
        zero: zero_point.as_ref().map(|z| z.as_slice()).transpose()?,
        groups,
        map,
    };
    let inner = py.detach(|| Packed::new(&w)).map_err(to_py)?;
    Ok(PackedLinear { inner })
}

/// peak_gmacs(mix="int8")
/// --
///
/// The peak of one core on the active path for the inner-loop instruction mix `mix`, in
/// G MAC/s: "int8" (8-bit panels, `matmul_int8` and W8A8 `linear`) or "w4a8" (4-bit panels),
/// measured with a register-only loop of that mix on independent accumulators (about 50 ms).
/// None where the path has no such loop. For benchmarks.
#[pyfunction]
#[pyo3(signature = (mix = "int8"))]
pub fn peak_gmacs(py: Python<'_>, mix: &str) -> PyResult<Option<f64>> {
    let Some(mix) = crate::simd::probe::Mix::parse(mix) else {
        let names: Vec<_> = crate::simd::probe::Mix::ALL
            .iter()
            .map(|m| m.name())
            .collect();
        return Err(PyValueError::new_err(format!(
            "unknown mix {mix:?}; use one of {names:?}"
        )));
    };
    Ok(py.detach(|| {
        let kern = crate::simd::active().ok()?;
        let mut best = 0f64;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let macs = crate::simd::probe::peak_loop(kern.isa, mix, 1 << 20)?;
            best = best.max(macs as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        Some(best)
    }))
}

//! The binding layer: validates and converts NumPy arrays, releases the GIL around the
//! kernels, and maps errors to Python exceptions in one place. Nothing else touches PyO3.

mod awq;
mod gemm;
mod gguf;
mod gptq;
mod hqq;

use crate::error::QfastError as CoreError;
use crate::kernels::layout::{line_bytes, pack_line, unpack_line, TASK_ELEMS};
use crate::kernels::{self, Element, Granularity, ScaleDtype, Scheme, StaticParams, Strided};
use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::{PyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::{PyException, PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

pyo3::create_exception!(
    qfast,
    QfastError,
    PyException,
    "qfast could not run the operation (not an argument error)."
);

pub(crate) fn to_py(err: CoreError) -> PyErr {
    match err {
        CoreError::InvalidArgument(_) | CoreError::NonFinite { .. } | CoreError::Overflow(_) => {
            PyValueError::new_err(err.to_string())
        }
        CoreError::InvalidDtype(_) => PyTypeError::new_err(err.to_string()),
        CoreError::OutOfMemory(_) => PyMemoryError::new_err(err.to_string()),
        CoreError::UnsupportedIsa { .. } => QfastError::new_err(err.to_string()),
    }
}

/// A fresh zero-filled NumPy array of `shape`, allocated by `numpy.zeros` so that a refused
/// allocation is NumPy's `MemoryError` (or its `ValueError` for a size beyond the address
/// space), never a panic (rust-numpy's `PyArray::zeros` / `from_vec` panic when NumPy
/// returns NULL). NumPy's allocator also uses huge pages for large arrays, which cuts the
/// page-fault cost of writing fresh output.
pub(crate) fn zeros<'py, T, D>(
    py: Python<'py>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArray<T, D>>>
where
    T: numpy::Element,
    D: numpy::ndarray::Dimension,
{
    static ZEROS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let f = ZEROS.get_or_try_init(py, || {
        py.import("numpy")?.getattr("zeros").map(Bound::unbind)
    })?;
    let dims = pyo3::types::PyTuple::new(py, shape)?;
    let dtype = numpy::dtype::<T>(py);
    let array = f.bind(py).call1((dims, &dtype)).map_err(|e| {
        if e.is_instance_of::<PyMemoryError>(py) || e.is_instance_of::<PyValueError>(py) {
            PyMemoryError::new_err(format!(
                "cannot allocate the {dtype} output of shape {shape:?} ({e}); free memory or \
                 process the data in smaller pieces"
            ))
        } else {
            e
        }
    })?;
    array
        .cast_into::<PyArray<T, D>>()
        .map_err(|e| PyTypeError::new_err(e.to_string()))
}

/// `v` copied into a fresh NumPy array (allocated as [`zeros`]).
pub(crate) fn to_numpy<'py, T: numpy::Element + Copy>(
    py: Python<'py>,
    v: &[T],
) -> PyResult<Bound<'py, PyArray1<T>>> {
    let out = zeros::<T, numpy::Ix1>(py, &[v.len()])?;
    out.readwrite().as_slice_mut()?.copy_from_slice(v);
    Ok(out)
}

fn scheme(bits: u32, signed: bool, axis: Option<usize>, group_size: Option<usize>) -> Scheme {
    let granularity = match (axis, group_size) {
        (_, Some(group_size)) => Granularity::PerGroup { group_size },
        (Some(axis), None) => Granularity::PerChannel { axis },
        (None, None) => Granularity::PerTensor,
    };
    Scheme {
        bits,
        signed,
        granularity,
    }
}

/// Borrows `$x` as a NumPy array of `$elem`, reinterprets its items as `$as`, and runs
/// `$body` with the strided view `$view` bound.
macro_rules! with_view {
    ($x:expr, $elem:ty, $as:ty, |$view:ident| $body:expr) => {{
        let array = $x
            .cast::<PyArrayDyn<$elem>>()
            .map_err(|e| PyTypeError::new_err(e.to_string()))?
            .readonly();
        let nd = array.as_array();
        // SAFETY: the readonly borrow keeps the array alive and unmodified by Rust code while
        // `$view` lives; `$as` has the size and alignment of `$elem`; ndarray's strides are
        // in elements and address only elements of the array.
        let $view =
            unsafe { Strided::from_raw(nd.as_ptr() as *const $as, nd.shape(), nd.strides()) };
        $body
    }};
}

type QuantizeOut<'py> = (
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray1<f32>>,
    Option<Bound<'py, PyArray1<i32>>>,
);

/// quantize(x, dtype, bits, signed, axis, group_size, scale, zero_point, scale_dtype)
/// --
///
/// Kernel entry of `qfast.quantize` (use that instead). `x` is a float32/float64 array, or
/// a uint16 view of float16/bfloat16 data named by `dtype`. Returns the codes (flat bytes,
/// lines x line_bytes), the scales (float32 values, rounded to `scale_dtype` when computed)
/// and the zero points (None for signed codes).
#[pyfunction]
#[pyo3(signature = (x, dtype, bits, signed, axis=None, group_size=None, scale=None,
                    zero_point=None, scale_dtype="float32"))]
#[allow(clippy::too_many_arguments)]
fn quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    dtype: &str,
    bits: u32,
    signed: bool,
    axis: Option<usize>,
    group_size: Option<usize>,
    scale: Option<PyReadonlyArray1<'py, f32>>,
    zero_point: Option<PyReadonlyArray1<'py, i32>>,
    scale_dtype: &str,
) -> PyResult<QuantizeOut<'py>> {
    let scheme = scheme(bits, signed, axis, group_size);
    let sd = ScaleDtype::from_name(scale_dtype).map_err(to_py)?;
    let scale = scale.as_ref().map(|s| s.as_slice()).transpose()?;
    let zero_point = zero_point.as_ref().map(|z| z.as_slice()).transpose()?;
    let given = scale.map(|scale| StaticParams { scale, zero_point });
    match dtype {
        "float32" => with_view!(x, f32, f32, |v| quantize_view(py, &v, &scheme, given, sd)),
        "float64" => with_view!(x, f64, f64, |v| quantize_view(py, &v, &scheme, given, sd)),
        "float16" => with_view!(x, u16, f16, |v| quantize_view(py, &v, &scheme, given, sd)),
        "bfloat16" => with_view!(x, u16, bf16, |v| quantize_view(py, &v, &scheme, given, sd)),
        other => Err(PyTypeError::new_err(format!(
            "cannot quantize {other} data; pass float32, float64, float16 or bfloat16"
        ))),
    }
}

/// Quantizes into a NumPy-allocated code array (NumPy's allocator uses huge pages for large
/// arrays, which cuts the page-fault cost of writing fresh output) with the GIL released.
fn quantize_view<'py, T: Element>(
    py: Python<'py>,
    x: &Strided<T>,
    scheme: &Scheme,
    given: Option<StaticParams>,
    scale_dtype: ScaleDtype,
) -> PyResult<QuantizeOut<'py>> {
    scheme.validate(x.shape()).map_err(to_py)?;
    let count = kernels::params_len(x.shape(), scheme);
    let codes = zeros::<u8, numpy::Ix1>(py, &[kernels::codes_len(x.shape(), scheme)])?;
    let scale = zeros::<f32, numpy::Ix1>(py, &[count])?;
    let zero_point = match scheme.signed {
        true => None,
        false => Some(zeros::<i32, numpy::Ix1>(py, &[count])?),
    };
    {
        let mut codes_rw = codes.readwrite();
        let mut scale_rw = scale.readwrite();
        let mut zp_rw = zero_point.as_ref().map(|z| z.readwrite());
        let codes_out = codes_rw.as_slice_mut()?;
        let scale_out = scale_rw.as_slice_mut()?;
        let zp_out = zp_rw.as_mut().map(|z| z.as_slice_mut()).transpose()?;
        py.detach(|| {
            kernels::quantize_into_as(x, scheme, given, scale_dtype, codes_out, scale_out, zp_out)
        })
        .map_err(to_py)?;
    }
    Ok((codes, scale, zero_point))
}

/// Dequantizes into `out` (a flat, contiguous, writeable array of `A`) or a fresh NumPy array
/// (huge pages, as above), with the GIL released.
fn dequantize_array<'py, A, O>(
    py: Python<'py>,
    q: &kernels::QuantizedRef,
    out: Option<Bound<'py, PyAny>>,
    cast: impl FnOnce(&mut [A]) -> &mut [O],
) -> PyResult<Bound<'py, PyAny>>
where
    A: numpy::Element,
    O: kernels::OutElement,
{
    q.scheme.validate(q.shape).map_err(to_py)?;
    let out = match out {
        Some(o) => o
            .cast_into::<PyArray1<A>>()
            .map_err(|e| PyTypeError::new_err(format!("out has the wrong type: {e}")))?,
        None => {
            let len = crate::alloc::checked_product(q.shape, "the output").map_err(to_py)?;
            zeros::<A, numpy::Ix1>(py, &[len])?
        }
    };
    {
        let mut rw = out.readwrite();
        let dst = cast(rw.as_slice_mut()?);
        py.detach(|| kernels::dequantize_into(q, dst))
            .map_err(to_py)?;
    }
    Ok(out.into_any())
}

/// dequantize(codes, shape, bits, signed, axis, group_size, scale, zero_point, g_idx, dtype)
/// --
///
/// Kernel entry of `qfast.dequantize` (use that instead). Returns a flat float32 array, or
/// the uint16 bits of float16/bfloat16 values when `dtype` names those.
#[pyfunction]
#[pyo3(signature = (codes, shape, bits, signed, axis, group_size, scale, zero_point, g_idx, dtype, out=None))]
#[allow(clippy::too_many_arguments)]
fn dequantize<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray1<'py, u8>,
    shape: Vec<usize>,
    bits: u32,
    signed: bool,
    axis: Option<usize>,
    group_size: Option<usize>,
    scale: PyReadonlyArray1<'py, f32>,
    zero_point: Option<PyReadonlyArray1<'py, f32>>,
    g_idx: Option<PyReadonlyArray1<'py, i32>>,
    dtype: &str,
    out: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let q = kernels::QuantizedRef {
        codes: codes.as_slice()?,
        shape: &shape,
        scheme: scheme(bits, signed, axis, group_size),
        scale: scale.as_slice()?,
        zero_point: zero_point.as_ref().map(|z| z.as_slice()).transpose()?,
        g_idx: g_idx.as_ref().map(|g| g.as_slice()).transpose()?,
    };
    match dtype {
        "float32" => dequantize_array::<f32, f32>(py, &q, out, |d| d),
        "float16" => dequantize_array::<u16, f16>(py, &q, out, |d| d.reinterpret_cast_mut()),
        "bfloat16" => dequantize_array::<u16, bf16>(py, &q, out, |d| d.reinterpret_cast_mut()),
        other => Err(PyTypeError::new_err(format!(
            "cannot dequantize to {other}; pass float32, float16 or bfloat16"
        ))),
    }
}

/// Runs `f` on every line pair (`src` in lines of `a` bytes, `dst` in lines of `b`) with the
/// GIL released, across qfast's threads in tasks of whole lines (about `TASK_ELEMS` bytes of
/// the wider side each): the result does not depend on the split.
fn map_lines(
    py: Python<'_>,
    src: &[u8],
    a: usize,
    dst: &mut [u8],
    b: usize,
    f: impl Fn(&[u8], &mut [u8]) + Sync + Send,
) -> PyResult<()> {
    let per = (TASK_ELEMS / a.max(b).max(1)).max(1);
    let work = src.len().max(dst.len());
    let tasks: Vec<_> = src.chunks(per * a).zip(dst.chunks_mut(per * b)).collect();
    py.detach(|| {
        crate::parallel::map(tasks, work, |(src, dst)| {
            for (s, d) in src.chunks_exact(a).zip(dst.chunks_exact_mut(b)) {
                f(s, d);
            }
        })
    })
    .map_err(to_py)?;
    Ok(())
}

/// pack(codes, n, bits)
/// --
///
/// Packs contiguous `lines x n` byte codes (low `bits` bits used) along the last axis: each
/// line one little-endian bit stream (code `i` in bits `[i * bits, (i + 1) * bits)`), padded
/// with zero bits to a whole byte. Returns `lines x ceil(n * bits / 8)` bytes.
#[pyfunction]
fn pack<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray1<'py, u8>,
    n: usize,
    bits: u32,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    crate::checks::check_bits(bits).map_err(to_py)?;
    let codes = codes.as_slice()?;
    let k = crate::simd::active().map_err(to_py)?;
    if n == 0 {
        return zeros(py, &[0]);
    }
    if codes.len() % n != 0 {
        return Err(PyValueError::new_err(format!(
            "{} codes do not split into lines of {n}",
            codes.len()
        )));
    }
    let lb = line_bytes(n, bits);
    let lines = codes.len() / n;
    let out = zeros::<u8, numpy::Ix1>(py, &[lines * lb])?;
    {
        let mut rw = out.readwrite();
        let dst = rw.as_slice_mut()?;
        map_lines(py, codes, n, dst, lb, |s, d| pack_line(k, bits, s, d))?;
    }
    Ok(out)
}

/// unpack(packed, line_bytes, n, bits, signed)
/// --
///
/// Unpacks contiguous `lines x line_bytes` packed codes (as `pack` writes them) into
/// `lines x n` bytes (sign-extended when `signed`).
#[pyfunction]
fn unpack<'py>(
    py: Python<'py>,
    packed: PyReadonlyArray1<'py, u8>,
    line_bytes: usize,
    n: usize,
    bits: u32,
    signed: bool,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    crate::checks::check_bits(bits).map_err(to_py)?;
    let packed = packed.as_slice()?;
    let k = crate::simd::active().map_err(to_py)?;
    if kernels::layout::line_bytes(n, bits) > line_bytes {
        return Err(PyValueError::new_err(format!(
            "{line_bytes} bytes per line cannot hold {n} {bits}-bit codes"
        )));
    }
    if line_bytes == 0 || n == 0 {
        return zeros(py, &[0]);
    }
    if packed.len() % line_bytes != 0 {
        return Err(PyValueError::new_err(format!(
            "{} bytes do not split into lines of {line_bytes}",
            packed.len()
        )));
    }
    let lines = packed.len() / line_bytes;
    let len = lines.checked_mul(n).ok_or_else(|| {
        PyMemoryError::new_err(format!("{lines} lines of {n} codes do not fit in memory"))
    })?;
    let out = zeros::<u8, numpy::Ix1>(py, &[len])?;
    {
        let mut rw = out.readwrite();
        let dst = rw.as_slice_mut()?;
        map_lines(py, packed, line_bytes, dst, n, |s, d| {
            unpack_line(k, bits, s, signed, d)
        })?;
    }
    Ok(out)
}

/// cpu_info()
/// --
///
/// The CPU features qfast detected, the ISA path in use (`isa`), every path this CPU can run
/// (`available`), and the thread count.
#[pyfunction]
fn cpu_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let k = crate::simd::active().map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("isa", k.isa.name())?;
    d.set_item("features", crate::simd::cpu_features())?;
    let available: Vec<&str> = crate::simd::available().iter().map(|i| i.name()).collect();
    d.set_item("available", available)?;
    d.set_item("arch", std::env::consts::ARCH)?;
    d.set_item("num_threads", crate::parallel::num_threads())?;
    Ok(d)
}

/// set_num_threads(n)
/// --
///
/// Sets how many threads qfast's kernels use (default: `QFAST_NUM_THREADS`, else all cores),
/// at most 4 x the CPU count or 256, whichever is larger (a ValueError above). Results are
/// identical for every thread count.
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    let n = u64::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| PyValueError::new_err(format!("n must be a positive integer, got {n}")))?;
    let n = crate::parallel::check_threads(n, "num_threads").map_err(to_py)?;
    crate::parallel::set_num_threads(n).map_err(to_py)
}

/// get_num_threads()
/// --
///
/// The number of threads qfast's kernels use.
#[pyfunction]
fn get_num_threads() -> usize {
    crate::parallel::num_threads()
}

#[pymodule]
mod _qfast {
    #[pymodule_export]
    use super::awq::{awq_clip_search, awq_pseudo_quantize, awq_quantize};
    #[pymodule_export]
    use super::gemm::{matmul_int8, matmul_int8_batched, pack_linear, peak_gmacs, PackedLinear};
    #[pymodule_export]
    use super::gguf::{
        gguf_can_quantize_rows, gguf_dequantize, gguf_dot_q4_0_q8_0, gguf_quantize,
        gguf_quantize_rows, gguf_type_info,
    };
    #[pymodule_export]
    use super::gptq::{gptq_block, gptq_find_params};
    #[pymodule_export]
    use super::hqq::{hqq_codes, hqq_error, hqq_init, hqq_step};
    #[pymodule_export]
    use super::{
        cpu_info, dequantize, get_num_threads, pack, quantize, set_num_threads, unpack, QfastError,
    };

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        crate::simd::active().map_err(super::to_py)?;
        crate::parallel::check_env().map_err(super::to_py)?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}

"""qfast.dequantize vs NumPy, ONNX Runtime and X.copy(), one benchmark group per operation.

Groups: {int8 per-channel (axis=0) symmetric, int4 group-128 symmetric, int4 group-128
asymmetric, int3 group-128 asymmetric} x {float32, float16 output} x {4096x4096, 4096x14336}. In
each group: qfast on one thread and on all, NumPy's `(q.astype(float32) - zero_point) * scale`
(with the nibble unpacking for int4, the dense bit stream's for int3: benches/_bitstream.py),
ONNX Runtime's DequantizeLinear on one thread (no block-wise op for int3: ORT has no int3
type), and `X.copy()` of the float32 tensor. `-k "not 14336"` runs the fast subset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from onnx import TensorProto, helper, numpy_helper

import qfast

from ._bitstream import numpy_unpack

F32 = np.float32


@dataclass(frozen=True)
class Scheme:
    name: str
    bits: int
    symmetric: bool
    axis: int | None = None
    group_size: int | None = None


SCHEMES = {
    "int8_axis0": Scheme("int8 per-channel sym", 8, True, axis=0),
    "int4_g128_sym": Scheme("int4 g128 sym packed", 4, True, group_size=128),
    "int4_g128_asym": Scheme("int4 g128 asym packed", 4, False, group_size=128),
    "int3_g128_asym": Scheme("int3 g128 asym packed", 3, False, group_size=128),
}
IMPLS = ("qfast_1t", "qfast_all", "qfast_1t_out", "numpy", "ort_axis0", "ort_block128", "copy")
CASES = [
    pytest.param((scheme_id, impl), id=f"{scheme_id}-{impl}")
    for scheme_id, scheme in SCHEMES.items()
    for impl in IMPLS
    if impl != "ort_block128" or (scheme.group_size is not None and scheme.bits == 4)
]
DTYPES = ("float32", "float16")


@dataclass
class Inputs:
    shape: tuple[int, int]
    x32: np.ndarray  # what was quantized; also the X.copy() yardstick
    quantized: dict[str, qfast.QTensor] = field(default_factory=dict)

    def qtensor(self, scheme_id: str) -> qfast.QTensor:
        if scheme_id not in self.quantized:
            s = SCHEMES[scheme_id]
            self.quantized[scheme_id] = qfast.quantize(
                self.x32, s.bits, symmetric=s.symmetric, axis=s.axis, group_size=s.group_size
            )
        return self.quantized[scheme_id]


@pytest.fixture(
    scope="module",
    params=[
        pytest.param((4096, 4096), id="4096x4096"),
        pytest.param((4096, 14336), id="4096x14336", marks=pytest.mark.large),
    ],
)
def inputs(request: pytest.FixtureRequest) -> Iterator[Inputs]:
    """One shape at a time (a 4096x14336 float32 tensor is 235 MB), freed after its tests."""
    data = Inputs(request.param, np.random.default_rng(0).standard_normal(request.param, F32))
    yield data
    data.quantized.clear()
    data.x32 = None  # type: ignore[assignment]


def numpy_dequantize(qt: qfast.QTensor, dtype: str) -> np.ndarray:
    """`(q.astype(float32) - zero_point) * scale`, unpacking the packed codes first.

    int4: the nibbles; other widths below 8: the dense bit stream (numpy_unpack).
    """
    zero_point = None if qt.zero_point is None else qt.zero_point.astype(F32)
    if qt.group_size is None:
        q = qt.data.astype(F32)
        out = q * qt.scale if zero_point is None else (q - zero_point) * qt.scale
        return out.astype(dtype, copy=False)
    rows, n = qt.shape
    p = qt.data
    if qt.bits == 4:
        codes = np.stack([p & 0x0F, p >> 4], axis=-1).reshape(rows, n // qt.group_size, -1)
        if qt.signed:
            codes = (codes.view(np.int8) << 4) >> 4  # sign-extend the nibbles
    else:
        codes = numpy_unpack(p, n, qt.bits, qt.signed).reshape(rows, n // qt.group_size, -1)
    q = codes.astype(F32)
    if zero_point is not None:
        q = q - zero_point[..., None]
    return (q * qt.scale[..., None]).reshape(rows, n).astype(dtype, copy=False)


def _ort_out(dtype: str, shape: tuple[int, ...]) -> list[tuple[str, int, tuple[int, ...]]]:
    return [("Y", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)]


def ort_axis0(qt: qfast.QTensor, dtype: str, ort_runner: Callable[..., Any]) -> tuple:
    n = qt.shape[-1]
    if qt.bits == 8:
        codes, scale = qt.data, qt.scale.ravel()
        note = "the same op: per-row int8, the QTensor's own scales"
    else:
        codes = qfast.unpack(qt.data, n, qt.bits, signed=qt.signed)
        scale = qt.scale.max(axis=1)
        note = f"one code per byte, one scale per row (a stand-in for the int{qt.bits} op)"
    init = [numpy_helper.from_array(scale.astype(dtype), "s")]
    inputs = ["Q", "s"]
    if qt.zero_point is not None:
        init.append(numpy_helper.from_array(qt.zero_point[:, 0].astype(np.uint8), "z"))
        inputs.append("z")
    node = helper.make_node("DequantizeLinear", inputs, ["Y"], axis=0)
    run = ort_runner([node], {"Q": codes}, _ort_out(dtype, qt.shape), init)
    return run, f"ORT DequantizeLinear axis=0 {codes.dtype.name}", note


def ort_block128(qt: qfast.QTensor, dtype: str, ort_runner: Callable[..., Any]) -> tuple:
    # NumPy has no int4 dtype ORT accepts as an input, so the packed codes are an initializer
    # (graph optimisations are off: nothing is folded away). ONNX packs int4 as qfast does.
    rows, groups = qt.scale.shape
    elem = TensorProto.INT4 if qt.signed else TensorProto.UINT4
    init = [
        helper.make_tensor("Q", elem, list(qt.shape), qt.data.tobytes(), raw=True),
        numpy_helper.from_array(qt.scale.astype(dtype), "s"),
    ]
    inputs = ["Q", "s"]
    if qt.zero_point is not None:
        init.append(helper.make_tensor("z", elem, [rows, groups], qt.zero_point.ravel().tolist()))
        inputs.append("z")
    node = helper.make_node("DequantizeLinear", inputs, ["Y"], axis=1, block_size=qt.group_size)
    run = ort_runner([node], {}, _ort_out(dtype, qt.shape), init)
    kind = "int4" if qt.signed else "uint4"
    return run, f"ORT DequantizeLinear block=128 {kind}", "the same op; codes as an initializer"


ORT_BUILDERS = {"ort_axis0": ort_axis0, "ort_block128": ort_block128}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_dequantize(
    inputs: Inputs,
    case: tuple[str, str],
    dtype: str,
    run_bench: Callable[..., Any],
    all_threads: int,
    ort_runner: Callable[..., Any],
) -> None:
    scheme_id, impl = case
    qt = inputs.qtensor(scheme_id)
    common = dict(op="dequantize", scheme=SCHEMES[scheme_id].name, shape=qt.shape, dtype=dtype)
    if impl in ("qfast_1t", "qfast_all"):
        threads = 1 if impl == "qfast_1t" else all_threads
        label = f"qfast {threads} thread" + ("s" if threads > 1 else "")
        run_bench(lambda: qt.dequantize(dtype), impl=label, kind="qfast", threads=threads, **common)
    elif impl == "qfast_1t_out":
        # Into a reused array, as ONNX Runtime's IO binding does: no fresh pages to fault in.
        buf = np.empty(qt.shape, qt.dequantize(dtype).dtype)
        run_bench(
            lambda: qt.dequantize(dtype, out=buf),
            impl="qfast 1 thread, out=",
            kind="qfast_out",
            threads=1,
            **common,
        )
    elif impl == "numpy":
        got = run_bench(lambda: numpy_dequantize(qt, dtype), impl="NumPy", kind="numpy", **common)
        assert_array_equal(got, qt.dequantize(dtype))
    elif impl == "copy":
        run_bench(inputs.x32.copy, impl="X.copy() float32", kind="copy", **common)
    else:
        run, label, note = ORT_BUILDERS[impl](qt, dtype, ort_runner)
        run_bench(run, impl=label, kind="ort", note=note, **common)

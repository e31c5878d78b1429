"""qfast.quantize vs NumPy, ONNX Runtime and X.copy(), one benchmark group per operation.

Groups: {int8 per-channel (axis=0) symmetric, int4 group-128 symmetric, int4 group-128
asymmetric, int3 group-128 asymmetric} x {float32, float16 input} x {4096x4096, 4096x14336}. In
each group: qfast on one thread and on all, the straightforward NumPy expression (packed as qfast
stores the codes: nibbles for int4, the dense bit stream of benches/_bitstream.py for int3),
ONNX Runtime's closest ops on one thread (no block-wise op for int3: ORT has no int3 type), and
`X.copy()` of the float32 tensor. `-k "not 14336"` runs the fast subset.
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

from ._bitstream import numpy_pack

F32 = np.float32
TINY = np.finfo(F32).tiny


@dataclass(frozen=True)
class Scheme:
    name: str
    bits: int
    symmetric: bool
    axis: int | None = None
    group_size: int | None = None

    def qfast(self, x: np.ndarray) -> qfast.QTensor:
        return qfast.quantize(
            x, self.bits, symmetric=self.symmetric, axis=self.axis, group_size=self.group_size
        )


INT8_AXIS0 = Scheme("int8 per-channel sym", 8, True, axis=0)
INT4_G128_SYM = Scheme("int4 g128 sym packed", 4, True, group_size=128)
INT4_G128_ASYM = Scheme("int4 g128 asym packed", 4, False, group_size=128)
INT3_G128_ASYM = Scheme("int3 g128 asym packed", 3, False, group_size=128)
SCHEMES = {
    "int8_axis0": INT8_AXIS0,
    "int4_g128_sym": INT4_G128_SYM,
    "int4_g128_asym": INT4_G128_ASYM,
    "int3_g128_asym": INT3_G128_ASYM,
}
IMPLS = ("qfast_1t", "qfast_all", "numpy", "ort_dynamic", "ort_axis0", "ort_block128", "copy")
CASES = [
    pytest.param((scheme_id, impl), id=f"{scheme_id}-{impl}")
    for scheme_id, scheme in SCHEMES.items()
    for impl in IMPLS
    if impl != "ort_block128" or (scheme.group_size is not None and scheme.bits == 4)
]


@dataclass
class Inputs:
    shape: tuple[int, int]
    dtype: str
    x: np.ndarray  # in `dtype`: what every implementation quantizes
    x32: np.ndarray  # the float32 tensor, for the X.copy() yardstick
    notes: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(((4096, 4096), "float32"), id="4096x4096-float32"),
        pytest.param(((4096, 4096), "float16"), id="4096x4096-float16"),
        pytest.param(((4096, 14336), "float32"), id="4096x14336-float32", marks=pytest.mark.large),
        pytest.param(((4096, 14336), "float16"), id="4096x14336-float16", marks=pytest.mark.large),
    ],
)
def inputs(request: pytest.FixtureRequest) -> Iterator[Inputs]:
    """One input at a time (a 4096x14336 float32 tensor is 235 MB), freed after its tests."""
    shape, dtype = request.param
    x32 = np.random.default_rng(0).standard_normal(shape, dtype=F32)
    x = x32 if dtype == "float32" else x32.astype(dtype)
    # Apples to apples: qfast's int8 per-channel codes are the NumPy expression's.
    codes, scale = numpy_int8_axis0(x)
    got = INT8_AXIS0.qfast(x)
    assert_array_equal(got.data, codes)
    assert_array_equal(got.scale, scale)
    del codes, scale, got
    data = Inputs(shape, dtype, x, x32)
    yield data
    data.x = data.x32 = None  # type: ignore[assignment]


def _sanitize(scale: np.ndarray) -> np.ndarray:
    """DESIGN.md's guard (zero range -> 1, subnormal -> smallest normal); on the scales only."""
    return np.where(scale == 0, F32(1), np.maximum(scale, TINY))


def numpy_int8_axis0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(F32, copy=False)
    scale = _sanitize(np.abs(x).max(axis=1, keepdims=True) / F32(127))
    return np.clip(np.rint(x / scale), -128, 127).astype(np.int8), scale


def numpy_g128(
    x: np.ndarray, bits: int, symmetric: bool, group_size: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Group-wise codes of `bits` bits, packed as qfast stores them.

    int4: two per byte (element 2i in the low nibble); other widths: the dense little-endian
    bit stream (numpy_pack).
    """
    x = x.astype(F32, copy=False)
    rows, n = x.shape
    xg = x.reshape(rows, n // group_size, group_size)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = _sanitize(np.abs(xg).max(axis=2, keepdims=True) / F32(qmax))
        zero_point = None
        q = np.clip(np.rint(xg / scale), qmin, qmax).astype(np.int8)
    else:
        levels = 2**bits - 1
        lo = np.minimum(xg.min(axis=2, keepdims=True), 0)
        hi = np.maximum(xg.max(axis=2, keepdims=True), 0)
        scale = _sanitize((hi - lo) / F32(levels))
        zero_point = np.clip(np.rint(-lo / scale), 0, levels)
        q = np.clip(np.rint(xg / scale) + zero_point, 0, levels).astype(np.uint8)
    q = q.reshape(rows, n)
    if bits == 4:
        if symmetric:
            q = q.view(np.uint8) & 0x0F
        packed = q[:, 0::2] | (q[:, 1::2] << 4)
    else:
        packed = numpy_pack(q, bits)
    return packed, scale[..., 0], None if zero_point is None else zero_point[..., 0]


def numpy_quantize(x: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, ...]:
    if scheme.group_size is None:
        return numpy_int8_axis0(x)
    return numpy_g128(x, scheme.bits, scheme.symmetric, scheme.group_size)


def _check_same(got: tuple[np.ndarray, ...], want: qfast.QTensor) -> None:
    assert_array_equal(got[0].view(np.uint8), want.data.view(np.uint8))
    assert_array_equal(got[1], want.scale)
    if len(got) > 2 and got[2] is not None:
        assert_array_equal(got[2], want.zero_point)


def ort_dynamic(x: np.ndarray, scheme: Scheme, ort_runner: Callable[..., Any]) -> tuple:
    nodes = []
    name = "X"
    if x.dtype != F32:  # DynamicQuantizeLinear takes float32 only
        nodes.append(helper.make_node("Cast", ["X"], ["Xf"], to=TensorProto.FLOAT))
        name = "Xf"
    nodes.append(helper.make_node("DynamicQuantizeLinear", [name], ["Y", "S", "Z"]))
    outputs = [
        ("Y", TensorProto.UINT8, x.shape),
        ("S", TensorProto.FLOAT, ()),
        ("Z", TensorProto.UINT8, ()),
    ]
    note = "dynamic, per-tensor uint8 (ORT has no dynamic per-channel/per-group op)"
    if x.dtype != F32:
        note += "; float16 input cast to float32 in the graph"
    return ort_runner(nodes, {"X": x}, outputs), "ORT DynamicQuantizeLinear u8", note


def ort_axis0(x: np.ndarray, scheme: Scheme, ort_runner: Callable[..., Any]) -> tuple:
    # Static: the grid is computed here, outside the timed region.
    grid = qfast.quantize(x, 8, symmetric=scheme.symmetric, axis=0)
    init = [numpy_helper.from_array(grid.scale.ravel().astype(x.dtype), "s")]
    if scheme.symmetric:
        zero_point, out_type = np.zeros(x.shape[0], np.int8), TensorProto.INT8
    else:
        zero_point, out_type = grid.zero_point.ravel().astype(np.uint8), TensorProto.UINT8
    init.append(numpy_helper.from_array(zero_point, "z"))
    node = helper.make_node("QuantizeLinear", ["X", "s", "z"], ["Y"], axis=0)
    note = "static: per-row int8 scales/zero points precomputed outside the timed region"
    if scheme.bits != 8:
        note += f"; one code per byte, one scale per row (a stand-in for the int{scheme.bits} op)"
    run = ort_runner([node], {"X": x}, [("Y", out_type, x.shape)], init)
    kind = "i8" if scheme.symmetric else "u8"
    return run, f"ORT QuantizeLinear axis=0 {kind} (static)", note


def ort_block128(x: np.ndarray, scheme: Scheme, ort_runner: Callable[..., Any]) -> tuple:
    grid = scheme.qfast(x)  # static: scales precomputed outside the timed region
    rows, groups = grid.scale.shape
    if scheme.symmetric:
        zero_point, out_type = np.zeros(rows * groups, np.int8), TensorProto.INT4
    else:
        zero_point, out_type = grid.zero_point.ravel(), TensorProto.UINT4
    init = [
        numpy_helper.from_array(grid.scale.astype(x.dtype), "s"),
        helper.make_tensor("z", out_type, [rows, groups], zero_point.tolist()),
    ]
    node = helper.make_node(
        "QuantizeLinear", ["X", "s", "z"], ["Y"], axis=1, block_size=scheme.group_size
    )
    note = "static: group scales/zero points precomputed outside the timed region; int4 output"
    kind = "int4" if scheme.symmetric else "uint4"
    run = ort_runner([node], {"X": x}, [("Y", out_type, x.shape)], init)
    return run, f"ORT QuantizeLinear block=128 {kind} (static)", note


ORT_BUILDERS = {"ort_dynamic": ort_dynamic, "ort_axis0": ort_axis0, "ort_block128": ort_block128}


@pytest.mark.parametrize("case", CASES)
def test_quantize(
    inputs: Inputs,
    case: tuple[str, str],
    run_bench: Callable[..., Any],
    all_threads: int,
    ort_runner: Callable[..., Any],
) -> None:
    scheme_id, impl = case
    scheme = SCHEMES[scheme_id]
    x = inputs.x
    common = dict(op="quantize", scheme=scheme.name, shape=inputs.shape, dtype=inputs.dtype)
    if impl in ("qfast_1t", "qfast_all"):
        threads = 1 if impl == "qfast_1t" else all_threads
        label = f"qfast {threads} thread" + ("s" if threads > 1 else "")
        run_bench(lambda: scheme.qfast(x), impl=label, kind="qfast", threads=threads, **common)
    elif impl == "numpy":
        got = run_bench(lambda: numpy_quantize(x, scheme), impl="NumPy", kind="numpy", **common)
        _check_same(got, scheme.qfast(x))
    elif impl == "copy":
        run_bench(inputs.x32.copy, impl="X.copy() float32", kind="copy", **common)
    else:
        run, label, note = ORT_BUILDERS[impl](x, scheme, ort_runner)
        run_bench(run, impl=label, kind="ort", note=note, **common)

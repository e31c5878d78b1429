"""qfast.matmul_int8 vs ONNX Runtime's MatMulInteger and NumPy float32 matmul, in G MAC/s.

``C = A @ B`` exactly in int32, A [M, K] uint8 ("u8s8") or int8 ("s8s8"), B int8 [K, N], for M in
{1, 16, 128, 512} and (K, N) in {(4096, 4096), (4096, 14336)} (`-k "not 14336"` skips the
larger). matmul_int8 caches nothing, so B is an ordinary input everywhere: each call takes the
next of ROTATE distinct B arrays (nothing keyed on B's identity can help), ONNX Runtime's
MatMulInteger (the standard ONNX op; u8s8 only, the pairing ORT's quantizer emits: its s8s8
fallback is many times slower) gets B as a graph input, not an initializer it could prepack
(one IO binding per B, rotated alike), and NumPy multiplies the same values as float32
(``A.astype(float32) @ B.astype(float32)`` converted outside the timed region: OpenBLAS sgemm),
in a group of its own that the summary divides both groups of the same shape by. Each runs on
one thread and on all; rounds are sized to about TARGET_S seconds. qfast's and ORT's results
are checked against a float64 product (rows 0-3, exact: |sums| < 2^53).

Cold cases (M = 1, u8s8, marked ``cold``): each timed call multiplies by every one of as many
distinct B arrays as make at least 4x the last-level cache (65 int8 4096x4096 ones for a 260 MiB
LLC; NumPy's float32 copies likewise, ORT one session with one MatMulInteger per B), so B
streams from DRAM; the table sets the B bytes per second next to the DRAM read bandwidth that
benches/test_linear.py measures in the same run (see its docstring for the sizing). They run
only with --benchmark-enable or QFAST_BENCH_COLD=1 (QFAST_BENCH_COLD=0 or ``-k "not cold"``
skips them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import qfast

F32 = np.float32
M_VALUES = (1, 16, 128, 512)
ROTATE = 4  # distinct B arrays per warm benchmark
TARGET_S = 0.5
COLD_TARGET_S = 2.0
CHECK_ROWS = 4
A_DTYPES = {"u8s8": np.uint8, "s8s8": np.int8}
NUMPY_SCHEME = "float32 a @ b"
THREADS = ("1t", "all")
CASES = [
    pytest.param((scheme, impl, t), id=f"{scheme}-{impl}-{t}")
    for scheme in A_DTYPES
    for impl in ("qfast", "ort")
    for t in THREADS
    if impl != "ort" or scheme == "u8s8"
]
SHAPES = [
    pytest.param((4096, 4096), id="4096x4096"),
    pytest.param((4096, 14336), id="4096x14336", marks=pytest.mark.large),
]


class Rotation:
    """Hands out the items in turn; `last` is the one handed out most recently."""

    def __init__(self, items: list[Any]) -> None:
        self.items, self.i, self.last = items, 0, items[0]

    def next(self) -> Any:
        self.last = self.items[self.i]
        self.i = (self.i + 1) % len(self.items)
        return self.last


def _a(m: int, k: int, dtype: type) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(m).integers(info.min, info.max + 1, (m, k), dtype=dtype)


def _b(k: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (k, n), dtype=np.int8)


def _check(got: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    assert got.dtype == np.int32
    want = a[:CHECK_ROWS].astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_array_equal(got[:CHECK_ROWS], want.astype(np.int32))


def _matmul_integer_session(
    ort_session: Callable[..., Any], a_dtype: type, k: int, n: int, count: int, m: Any, threads: int
) -> ort.InferenceSession:
    """MatMulInteger Y{i} = A @ B{i} for i < count, every B a graph input."""
    a_elem = helper.np_dtype_to_tensor_dtype(np.dtype(a_dtype))
    nodes = [helper.make_node("MatMulInteger", ["A", f"B{i}"], [f"Y{i}"]) for i in range(count)]
    inputs = [("A", a_elem, [m, k])] + [(f"B{i}", TensorProto.INT8, [k, n]) for i in range(count)]
    outputs = [(f"Y{i}", TensorProto.INT32, [m, n]) for i in range(count)]
    return ort_session(nodes, inputs, outputs, threads=threads)


@dataclass
class Operands:
    k: int
    n: int
    bs: list[np.ndarray]  # ROTATE int8 [K, N]
    bs_f32: list[np.ndarray] = field(default_factory=list)
    sessions: dict[tuple[str, int], ort.InferenceSession] = field(default_factory=dict)

    def session(
        self, scheme: str, threads: int, ort_session: Callable[..., Any]
    ) -> ort.InferenceSession:
        key = (scheme, threads)
        if key not in self.sessions:
            self.sessions[key] = _matmul_integer_session(
                ort_session, A_DTYPES[scheme], self.k, self.n, 1, "M", threads
            )
        return self.sessions[key]


@pytest.fixture(scope="module", params=SHAPES)
def operands(request: pytest.FixtureRequest) -> Iterator[Operands]:
    """One (K, N) at a time, freed after its tests."""
    k, n = request.param
    data = Operands(k, n, [_b(k, n, seed) for seed in range(ROTATE)])
    yield data
    data.sessions.clear()
    data.bs.clear()
    data.bs_f32.clear()


@pytest.mark.parametrize("m", M_VALUES, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("case", CASES)
def test_matmul_int8(
    operands: Operands,
    m: int,
    case: tuple[str, str, str],
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
    peak_gmacs: dict[str, float],
    ort_session: Callable[..., Any],
    ort_bind: Callable[..., Any],
) -> None:
    scheme, impl, t = case
    threads, tlabel = thread_count(t)
    k, n, bs = operands.k, operands.n, operands.bs
    a = _a(m, k, A_DTYPES[scheme])
    common = dict(
        op="matmul_int8",
        scheme=scheme,
        shape=(m, k, n),
        dtype="warm",
        threads=threads,
        macs=m * k * n,
        weight_bytes=bs[0].nbytes,
        note=f"B rotated over {ROTATE} arrays",
        target_s=TARGET_S,
    )
    if impl == "qfast":
        rotation = Rotation(bs)
        got = run_bench(
            lambda: qfast.matmul_int8(a, rotation.next()),
            impl=f"qfast {tlabel}",
            kind="qfast",
            peak_gmacs=peak_gmacs["int8"],
            **common,
        )
        _check(got, a, rotation.last)  # the result is the last call's
    else:
        session = operands.session(scheme, threads, ort_session)
        rotation = Rotation([(b, ort_bind(session, {"A": a, "B0": b}, ["Y0"])) for b in bs])
        binding = run_bench(
            lambda: rotation.next()[1](),
            impl=f"ORT MatMulInteger {scheme} {tlabel}",
            kind="ort",
            peer="int8",
            **common,
        )
        _check(binding.copy_outputs_to_cpu()[0], a, rotation.last[0])


@pytest.mark.parametrize("m", M_VALUES, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("t", THREADS)
def test_matmul_numpy(
    operands: Operands,
    m: int,
    t: str,
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
    blas_threads: Callable[[int], Any],
) -> None:
    threads, tlabel = thread_count(t)
    k, n = operands.k, operands.n
    if not operands.bs_f32:
        operands.bs_f32 = [b.astype(F32) for b in operands.bs]
    a = _a(m, k, np.uint8)
    af = a.astype(F32)
    rotation = Rotation(operands.bs_f32)
    with blas_threads(threads) as ok:
        if not ok and threads == 1:
            pytest.skip("cannot set the BLAS's thread count")
        got = run_bench(
            lambda: af @ rotation.next(),
            op="matmul_int8",
            scheme=NUMPY_SCHEME,
            shape=(m, k, n),
            dtype="warm",
            impl=f"NumPy float32 {tlabel}" if ok else "NumPy float32 (BLAS default threads)",
            kind="numpy",
            threads=threads,
            macs=m * k * n,
            weight_bytes=operands.bs_f32[0].nbytes,
            note=f"B rotated over {ROTATE} arrays",
            target_s=TARGET_S,
        )
    want = a[:CHECK_ROWS].astype(np.float64) @ rotation.last.astype(np.float64)
    err = np.linalg.norm(got[:CHECK_ROWS] - want) / np.linalg.norm(want)
    assert err < 1e-5, f"relative error {err:.3g}"


# Cold: M = 1, u8s8, at least 4x the last-level cache of B per call.

COLD_CASES = [
    pytest.param((impl, t), id=f"u8s8-{impl}-{t}")
    for impl in ("qfast", "ort", "numpy")
    for t in THREADS
]


@dataclass
class ColdShape:
    k: int
    n: int
    b: np.ndarray


@pytest.fixture(scope="module", params=SHAPES)
def cold_shape(request: pytest.FixtureRequest, cold_enabled: bool) -> ColdShape:
    if not cold_enabled:
        pytest.skip("cold cases: pass --benchmark-enable or set QFAST_BENCH_COLD=1")
    k, n = request.param
    return ColdShape(k, n, _b(k, n, 100))


@pytest.mark.cold
@pytest.mark.parametrize("case", COLD_CASES)
def test_matmul_int8_cold(
    cold_shape: ColdShape,
    case: tuple[str, str],
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
    peak_gmacs: dict[str, float],
    cold_copies: Callable[[int], tuple[int, str]],
    blas_threads: Callable[[int], Any],
    ort_session: Callable[..., Any],
    ort_bind: Callable[..., Any],
) -> None:
    impl, t = case
    threads, tlabel = thread_count(t)
    k, n, b = cold_shape.k, cold_shape.n, cold_shape.b
    a = _a(1, k, np.uint8)
    common: dict[str, Any] = dict(
        op="matmul_int8", shape=(1, k, n), dtype="cold", threads=threads, target_s=COLD_TARGET_S
    )
    if impl == "numpy":
        copies, note = cold_copies(b.nbytes * 4)
        af = a.astype(F32)
        bs_f32 = [(b ^ np.int8(i & 0x7F)).astype(F32) for i in range(copies)]

        def run_numpy() -> np.ndarray:
            for bf in bs_f32:
                y = af @ bf
            return y

        with blas_threads(threads) as ok:
            if not ok and threads == 1:
                pytest.skip("cannot set the BLAS's thread count")
            run_bench(
                run_numpy,
                scheme=NUMPY_SCHEME,
                impl=f"NumPy float32 {tlabel}" if ok else "NumPy float32 (BLAS default threads)",
                kind="numpy",
                macs=copies * k * n,
                weight_bytes=copies * b.nbytes * 4,
                copies=copies,
                note=note,
                **common,
            )
        return

    copies, note = cold_copies(b.nbytes)
    bs = [b ^ np.int8(i & 0x7F) for i in range(copies)]
    common.update(scheme="u8s8", macs=copies * k * n, weight_bytes=copies * b.nbytes, copies=copies)
    if impl == "qfast":

        def run_qfast() -> np.ndarray:
            for bi in bs:
                y = qfast.matmul_int8(a, bi)
            return y

        run_bench(
            run_qfast,
            impl=f"qfast {tlabel}",
            kind="qfast",
            peak_gmacs=peak_gmacs["int8"],
            note=note,
            **common,
        )
        _check(qfast.matmul_int8(a, bs[-1]), a, bs[-1])
        return

    session = _matmul_integer_session(ort_session, np.uint8, k, n, copies, 1, threads)
    feeds = {"A": a, **{f"B{i}": bi for i, bi in enumerate(bs)}}
    binding = run_bench(
        ort_bind(session, feeds, [f"Y{i}" for i in range(copies)]),
        impl=f"ORT MatMulInteger u8s8 {tlabel}",
        kind="ort",
        peer="int8",
        note=f"one session, one node per B (graph inputs); {note}",
        **common,
    )
    _check(binding.copy_outputs_to_cpu()[-1], a, bs[-1])


# Batched: many tiny products in one call (the batch loop runs in Rust; it ran in Python, one
# kernel call per batch, at 39 ms for the 20,000 2x2 batches against NumPy's 0.9 ms).

BATCHED = [
    pytest.param((20000, 2, 2, 2), id="20000x2x2x2"),
    pytest.param((512, 64, 64, 64), id="512x64x64x64"),
]


@pytest.mark.parametrize("shape", BATCHED)
@pytest.mark.parametrize("impl", ["qfast", "numpy"])
def test_matmul_int8_batched(
    shape: tuple[int, int, int, int],
    impl: str,
    run_bench: Callable[..., Any],
    all_threads: int,
) -> None:
    batches, m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (batches, m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (batches, k, n), dtype=np.int8)
    common = dict(
        op="matmul_int8",
        scheme="s8s8 batched",
        shape=shape,
        dtype="warm",
        threads=all_threads,
        macs=batches * m * k * n,
        weight_bytes=b.nbytes,
        note="a[i] @ b[i] for every batch i",
        target_s=TARGET_S,
    )
    if impl == "qfast":
        got = run_bench(lambda: qfast.matmul_int8(a, b), impl="qfast all", kind="qfast", **common)
    else:
        got = run_bench(
            lambda: np.matmul(a.astype(np.int32), b.astype(np.int32)),
            impl="NumPy int32 (astype + matmul)",
            kind="numpy",
            **common,
        )
    np.testing.assert_array_equal(got, np.matmul(a.astype(np.int64), b.astype(np.int64)))

"""qfast.linear vs NumPy float32 and ONNX Runtime's quantized MatMul ops, in G MAC/s.

``y = x @ W.T`` with x float32 [M, K] and W [N, K] quantized ahead of time, for M in
{1, 16, 128, 512} and (K, N) in {(4096, 4096), (4096, 14336)} (`-k "not 14336"` skips the
larger). One benchmark group per weight format:

- W8A8 per-channel: ``quantize(W, 8, axis=0)``, ``linear(compute="int8")`` (activations quantized
  per row on the fly) vs ONNX Runtime's DynamicQuantizeMatMul (com.microsoft; what
  ``quantize_dynamic`` becomes after fusion: int8 B prepacked, per-column scales, A quantized
  per tensor to uint8 on the fly).
- W4A8 g32 / g128 (symmetric int4): ``linear(compute="int8")`` vs MatMulNBits with the same
  block size, ``accuracy_level`` 4 (A quantized to int8 per block) and 0 (float32 compute).
- W4A16 g32 / g128: ``linear(compute="float")`` (weight-only) vs MatMulNBits accuracy_level 0.
- NumPy float32: ``x @ W.T`` with the float32 W (OpenBLAS), in a group of its own that the
  summary divides every group of the same shape by.

qfast, ONNX Runtime (intra_op_num_threads) and NumPy (OpenBLAS's set_num_threads) each run on
one thread and on all. Every ORT session is created, and every QTensor used once (qfast prepacks
the weight on a QTensor's first call and caches it there), before the timed rounds; the
rounds are sized to about TARGET_S seconds. Each case's output is checked against
``x @ dequantize(W).T`` (rows 0-3), which also checks the MatMulNBits layout below.

MatMulNBits (com.microsoft, bits=4, attributes K, N, block_size, accuracy_level): B is uint8
[N, K / block_size, block_size / 2], two codes a byte along K, the first in the low nibble;
scales float32 [N, K / block_size]; without zero_points the zero point is 8. qfast's symmetric
int4 codes are two's complement nibbles packed the same way, so B = ``qt.data ^ 0x88``
(code + 8 per nibble) reshaped, and the scales are ``qt.scale`` as they are: the two dequantize
to the same floats (verified on ORT 1.32: accuracy_level 0 matches to ~1e-6 relative).

Cold cases (M = 1, marked ``cold``): each timed call runs the GEMV over several distinct
copies of the weight (separate QTensors / NumPy arrays / ORT initializers, one session with one
node per copy) whose bytes add up to at least 4x the last-level cache, so every weight byte
comes from DRAM; the table reports weight GB/s next to the DRAM read bandwidth measured in the
same run (``X.max()`` over a float32 array of 8x the LLC, on one thread and split over all).
On the machine this was written on lscpu reports one 260 MiB L3 (a 2-vCPU KVM guest shown its
host's cache) and 24 GB RAM: 4x LLC is ~1.1 GB a working set (for 4096x4096: 65 int8 weights,
104 / 123 int4 g32 / g128 ones with their scales, 17 float32 ones), ORT's session creation
briefly holds ~3 copies, and the bandwidth array is ~2.2 GB, so it fits. Elsewhere the working
set is capped at 1/8 of RAM and at 1.8 GB (a serialized ONNX model must stay under 2 GiB), and
the benchmark's note says so. They run only with --benchmark-enable or QFAST_BENCH_COLD=1
(QFAST_BENCH_COLD=0 or ``-k "not cold"`` skips them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qfast

from .conftest import MS_DOMAIN

F32 = np.float32
M_VALUES = (1, 16, 128, 512)
TARGET_S = 0.5  # timed seconds per benchmark (warm)
COLD_TARGET_S = 2.0  # timed seconds per benchmark (cold)
CHECK_ROWS = 4
INT8_TOL = 3e-2  # relative Frobenius error with int8 activations (per row or per block)
FLOAT_TOL = 1e-3  # float32 compute: accumulation order only
NUMPY_SCHEME = "float32 x @ W.T"


@dataclass(frozen=True)
class Scheme:
    name: str
    bits: int
    group_size: int | None  # None: per-channel (axis=0)
    compute: str  # qfast.linear's compute=
    peers: tuple[str, ...]

    def quantize(self, w: np.ndarray) -> qfast.QTensor:
        axis = 0 if self.group_size is None else None
        return qfast.quantize(w, self.bits, symmetric=True, axis=axis, group_size=self.group_size)

    @property
    def peak_mix(self) -> str:
        """The peak loop (``qfast._qfast.peak_gmacs``) this scheme's tile is measured against."""
        return "w4a8" if self.bits == 4 else "int8"


@dataclass(frozen=True)
class Peer:
    label: str
    compute: str  # "int8" or "float": the summary's ORT column
    accuracy_level: int = 0


SCHEMES = {
    "w8a8": Scheme("W8A8 per-channel", 8, None, "int8", ("ort_dqmm",)),
    "w4a8_g32": Scheme("W4A8 g32", 4, 32, "int8", ("ort_nbits4", "ort_nbits0")),
    "w4a8_g128": Scheme("W4A8 g128", 4, 128, "int8", ("ort_nbits4", "ort_nbits0")),
    "w4a16_g32": Scheme("W4A16 g32", 4, 32, "float", ("ort_nbits0",)),
    "w4a16_g128": Scheme("W4A16 g128", 4, 128, "float", ("ort_nbits0",)),
}
PEERS = {
    "ort_dqmm": Peer("ORT DynamicQuantizeMatMul", "int8"),
    "ort_nbits4": Peer("ORT MatMulNBits acc4", "int8", 4),
    "ort_nbits0": Peer("ORT MatMulNBits acc0", "float", 0),
}
PEER_NOTES = {
    "ort_dqmm": "int8 B prepacked, per-column scales; A quantized per tensor (uint8) per call",
    "ort_nbits4": "accuracy_level=4: A quantized to int8 per block per call",
    "ort_nbits0": "accuracy_level=0: float32 compute",
}
THREADS = ("1t", "all")
CASES = [
    pytest.param((scheme_id, impl, t), id=f"{scheme_id}-{impl}-{t}")
    for scheme_id, scheme in SCHEMES.items()
    for impl in ("qfast", *scheme.peers)
    for t in THREADS
]
SHAPES = [
    pytest.param((4096, 4096), id="4096x4096"),
    pytest.param((4096, 14336), id="4096x14336", marks=pytest.mark.large),
]


def _weight_bytes(qt: qfast.QTensor) -> int:
    zero_point = 0 if qt.zero_point is None else qt.zero_point.nbytes
    return qt.data.nbytes + qt.scale.nbytes + zero_point


def _variant(arr: np.ndarray, i: int) -> np.ndarray:
    """A copy of integer codes with every byte XORed with i: distinct memory and contents."""
    return (arr.view(np.uint8) ^ np.uint8(i & 0xFF)).view(arr.dtype)


def _qtensor_copy(qt: qfast.QTensor, i: int) -> qfast.QTensor:
    return qfast.QTensor(
        _variant(qt.data, i),
        qt.shape,
        qt.bits,
        qt.signed,
        qt.scale.copy(),
        None if qt.zero_point is None else qt.zero_point.copy(),
        axis=qt.axis,
        group_size=qt.group_size,
    )


def _check(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    got = np.asarray(got)[: len(want)]
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert err < tol, f"relative error {err:.3g} >= {tol}"


def ort_weight(
    qt: qfast.QTensor, peer_id: str, suffix: str = "", copy: int = 0
) -> tuple[Any, list[Any]]:
    """The ORT node computing Y{suffix} = A @ dequantize(qt).T, and its initializers."""
    n, k = qt.shape
    names = [f"B{suffix}", f"s{suffix}"]
    if peer_id == "ort_dqmm":
        b = np.ascontiguousarray(_variant(qt.data, copy).T)  # int8 [K, N]
        scale = qt.scale.reshape(n).astype(F32)
        node = helper.make_node(
            "DynamicQuantizeMatMul", ["A", *names], [f"Y{suffix}"], domain=MS_DOMAIN[0]
        )
    else:
        gs = qt.group_size
        assert gs is not None and qt.bits == 4 and qt.signed and qt.zero_point is None
        b = _variant(qt.data ^ np.uint8(0x88), copy).reshape(n, k // gs, gs // 2)
        scale = qt.scale.astype(F32)  # [N, K / gs]
        node = helper.make_node(
            "MatMulNBits",
            ["A", *names],
            [f"Y{suffix}"],
            domain=MS_DOMAIN[0],
            K=k,
            N=n,
            bits=4,
            block_size=gs,
            accuracy_level=PEERS[peer_id].accuracy_level,
        )
    return node, [numpy_helper.from_array(b, names[0]), numpy_helper.from_array(scale, names[1])]


@dataclass
class Weights:
    """One float32 weight [N, K], its quantized forms and ORT sessions, built on first use."""

    k: int
    n: int
    w: np.ndarray
    qtensors: dict[str, qfast.QTensor] = field(default_factory=dict)
    dequantized: dict[str, np.ndarray] = field(default_factory=dict)
    sessions: dict[tuple[str, str, int], ort.InferenceSession] = field(default_factory=dict)

    def qtensor(self, scheme_id: str) -> qfast.QTensor:
        # One QTensor per group, so each group's first call pays its own prepacking.
        if scheme_id not in self.qtensors:
            self.qtensors[scheme_id] = SCHEMES[scheme_id].quantize(self.w)
        return self.qtensors[scheme_id]

    def reference(self, scheme_id: str, x: np.ndarray) -> np.ndarray:
        s = SCHEMES[scheme_id]
        key = f"{s.bits}-{s.group_size}"
        if key not in self.dequantized:
            self.dequantized[key] = self.qtensor(scheme_id).dequantize()
        return x[:CHECK_ROWS] @ self.dequantized[key].T

    def session(
        self, scheme_id: str, peer_id: str, threads: int, ort_session: Callable[..., Any]
    ) -> ort.InferenceSession:
        s = SCHEMES[scheme_id]
        key = (f"{s.bits}-{s.group_size}", peer_id, threads)
        if key not in self.sessions:
            node, init = ort_weight(self.qtensor(scheme_id), peer_id)
            self.sessions[key] = ort_session(
                [node],
                [("A", TensorProto.FLOAT, ["M", self.k])],
                [("Y", TensorProto.FLOAT, ["M", self.n])],
                init,
                domains=[MS_DOMAIN],
                threads=threads,
            )
        return self.sessions[key]


@pytest.fixture(scope="module", params=SHAPES)
def weights(request: pytest.FixtureRequest) -> Iterator[Weights]:
    """One (K, N) at a time (a 4096x14336 float32 weight is 235 MB), freed after its tests."""
    k, n = request.param
    data = Weights(k, n, np.random.default_rng(0).standard_normal((n, k), F32))
    yield data
    data.sessions.clear()
    data.qtensors.clear()
    data.dequantized.clear()
    data.w = None  # type: ignore[assignment]


def _inputs(m: int, k: int) -> np.ndarray:
    return np.random.default_rng(m).standard_normal((m, k), F32)


@pytest.mark.parametrize("m", M_VALUES, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("case", CASES)
def test_linear(
    weights: Weights,
    m: int,
    case: tuple[str, str, str],
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
    peak_gmacs: dict[str, float],
    ort_session: Callable[..., Any],
    ort_bind: Callable[..., Any],
) -> None:
    scheme_id, impl, t = case
    scheme = SCHEMES[scheme_id]
    threads, tlabel = thread_count(t)
    k, n = weights.k, weights.n
    x = _inputs(m, k)
    qt = weights.qtensor(scheme_id)
    want = weights.reference(scheme_id, x)
    tol = INT8_TOL if scheme.compute == "int8" else FLOAT_TOL
    common = dict(
        op="linear",
        scheme=scheme.name,
        shape=(m, k, n),
        dtype="warm",
        threads=threads,
        macs=m * k * n,
        weight_bytes=_weight_bytes(qt),
        target_s=TARGET_S,
    )
    if impl == "qfast":
        got = run_bench(
            lambda: qfast.linear(x, qt, compute=scheme.compute),
            impl=f"qfast {tlabel}",
            kind="qfast",
            peak_gmacs=peak_gmacs[scheme.peak_mix],
            note=f'compute="{scheme.compute}"',
            **common,
        )
        _check(got, want, tol)
    else:
        peer = PEERS[impl]
        run = ort_bind(weights.session(scheme_id, impl, threads, ort_session), {"A": x}, ["Y"])
        binding = run_bench(
            run,
            impl=f"{peer.label} {tlabel}",
            kind="ort",
            peer=peer.compute,
            note=PEER_NOTES[impl],
            **common,
        )
        _check(binding.copy_outputs_to_cpu()[0], want, INT8_TOL if peer.compute == "int8" else tol)


@pytest.mark.parametrize("m", M_VALUES, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("t", THREADS)
def test_linear_numpy(
    weights: Weights,
    m: int,
    t: str,
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
    blas_threads: Callable[[int], Any],
) -> None:
    threads, tlabel = thread_count(t)
    k, n, w = weights.k, weights.n, weights.w
    x = _inputs(m, k)
    with blas_threads(threads) as ok:
        if not ok and threads == 1:
            pytest.skip("cannot set the BLAS's thread count")
        got = run_bench(
            lambda: x @ w.T,
            op="linear",
            scheme=NUMPY_SCHEME,
            shape=(m, k, n),
            dtype="warm",
            impl=f"NumPy float32 {tlabel}" if ok else "NumPy float32 (BLAS default threads)",
            kind="numpy",
            threads=threads,
            macs=m * k * n,
            weight_bytes=w.nbytes,
            target_s=TARGET_S,
        )
    _check(got, x[:CHECK_ROWS] @ w.T, 1e-5)


# Cold: M = 1, a weight working set of at least 4x the last-level cache per call.

COLD_CASES = [
    *CASES,
    *(pytest.param(("numpy", "numpy", t), id=f"numpy-{t}") for t in THREADS),
]


@dataclass
class ColdBase:
    k: int
    n: int
    w: np.ndarray
    qtensors: dict[str, qfast.QTensor] = field(default_factory=dict)
    # The copies of the case run last (the one- and all-thread runs share them), one at a time.
    shared_key: tuple[str, str] | None = None
    shared: Any = None

    def copies(self, key: tuple[str, str], build: Callable[[], Any]) -> Any:
        if key != self.shared_key:
            self.shared_key, self.shared = None, None  # free the last set before building
            self.shared = build()
            self.shared_key = key
        return self.shared


@pytest.fixture(scope="module", params=SHAPES)
def cold_base(request: pytest.FixtureRequest, cold_enabled: bool) -> Iterator[ColdBase]:
    if not cold_enabled:
        pytest.skip("cold cases: pass --benchmark-enable or set QFAST_BENCH_COLD=1")
    k, n = request.param
    base = ColdBase(k, n, np.random.default_rng(1).standard_normal((n, k), F32))
    yield base
    base.qtensors.clear()
    base.shared = None
    base.w = None  # type: ignore[assignment]


@pytest.mark.cold
@pytest.mark.parametrize("case", COLD_CASES)
def test_linear_cold(
    cold_base: ColdBase,
    case: tuple[str, str, str],
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
    peak_gmacs: dict[str, float],
    cold_copies: Callable[[int], tuple[int, str]],
    blas_threads: Callable[[int], Any],
    ort_model: Callable[..., bytes],
    ort_load: Callable[..., Any],
    ort_bind: Callable[..., Any],
) -> None:
    scheme_id, impl, t = case
    threads, tlabel = thread_count(t)
    k, n = cold_base.k, cold_base.n
    x = _inputs(1, k)
    common: dict[str, Any] = dict(op="linear", shape=(1, k, n), dtype="cold", threads=threads)
    if impl == "numpy":
        copies, note = cold_copies(cold_base.w.nbytes)
        ws = cold_base.copies(
            (scheme_id, impl), lambda: [cold_base.w * F32(1 + i / 1024) for i in range(copies)]
        )

        def run_numpy() -> np.ndarray:
            for w in ws:
                y = x @ w.T
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
                weight_bytes=copies * ws[0].nbytes,
                copies=copies,
                note=note,
                target_s=COLD_TARGET_S,
                **common,
            )
        _check(x @ ws[0].T, x @ cold_base.w.T, 1e-5)
        return

    scheme = SCHEMES[scheme_id]
    if scheme_id not in cold_base.qtensors:
        cold_base.qtensors[scheme_id] = scheme.quantize(cold_base.w)
    base = cold_base.qtensors[scheme_id]
    copies, note = cold_copies(_weight_bytes(base))
    want = x @ base.dequantize().T
    tol = INT8_TOL if scheme.compute == "int8" else FLOAT_TOL
    common.update(
        scheme=scheme.name,
        macs=copies * k * n,
        weight_bytes=copies * _weight_bytes(base),
        copies=copies,
        target_s=COLD_TARGET_S,
    )
    if impl == "qfast":
        qts = cold_base.copies(
            (scheme_id, impl), lambda: [_qtensor_copy(base, i) for i in range(copies)]
        )

        def run_qfast() -> np.ndarray:
            for qt in qts:
                y = qfast.linear(x, qt, compute=scheme.compute)
            return y

        run_bench(
            run_qfast,
            impl=f"qfast {tlabel}",
            kind="qfast",
            peak_gmacs=peak_gmacs[scheme.peak_mix],
            note=f'compute="{scheme.compute}"; {note}',
            **common,
        )
        _check(qfast.linear(x, qts[0], compute=scheme.compute), want, tol)
        return

    peer = PEERS[impl]
    outputs = [f"Y{i}" for i in range(copies)]

    def build_model() -> bytes:
        nodes, inits = [], []
        for i in range(copies):
            node, init = ort_weight(base, impl, suffix=str(i), copy=i)
            nodes.append(node)
            inits += init
        return ort_model(
            nodes,
            [("A", TensorProto.FLOAT, [1, k])],
            [(name, TensorProto.FLOAT, [1, n]) for name in outputs],
            inits,
            domains=[MS_DOMAIN],
            check=False,  # ~1 GB: the checker would copy it; the warm cases check the node
        )

    session = ort_load(cold_base.copies((scheme_id, impl), build_model), threads)
    binding = run_bench(
        ort_bind(session, {"A": x}, outputs),
        impl=f"{peer.label} {tlabel}",
        kind="ort",
        peer=peer.compute,
        note=f"{PEER_NOTES[impl]}; one session, one node per copy; {note}",
        **common,
    )
    _check(binding.copy_outputs_to_cpu()[0], want, INT8_TOL if peer.compute == "int8" else tol)


@pytest.fixture(scope="module")
def dram_array(cold_enabled: bool, llc_bytes: int) -> np.ndarray:
    if not cold_enabled:
        pytest.skip("DRAM bandwidth: pass --benchmark-enable or set QFAST_BENCH_COLD=1")
    nbytes = max(8 * llc_bytes, 1 << 30)
    try:
        nbytes = min(nbytes, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8)
    except (ValueError, OSError, AttributeError):
        pass
    x = np.empty(nbytes // 4, F32)
    x.fill(1.0)  # touch every page: untouched pages would all read the zero page
    return x


@pytest.mark.cold
@pytest.mark.parametrize("t", THREADS)
def test_dram_read(
    dram_array: np.ndarray,
    t: str,
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
    llc_bytes: int,
) -> None:
    """The DRAM read bandwidth the cold GEMVs are held to: X.max() over >= 8x the LLC."""
    threads, tlabel = thread_count(t)
    x = dram_array
    common: dict[str, Any] = dict(
        op="dram read",
        scheme="float32 X.max()",
        shape=(x.size,),
        dtype="cold",
        kind="dram",
        threads=threads,
        weight_bytes=x.nbytes,
        note=f"{x.nbytes / llc_bytes:.1f}x LLC",
        target_s=COLD_TARGET_S,
    )
    if threads == 1:
        got = run_bench(x.max, impl=f"X.max() {tlabel}", **common)
    else:
        chunks = np.array_split(x, threads)
        with ThreadPoolExecutor(threads) as pool:
            # NumPy's reductions release the GIL: the chunks are read in parallel.
            got = run_bench(
                lambda: max(pool.map(np.max, chunks)),
                impl=f"X.max() split over {tlabel}",
                **common,
            )
    assert got == 1.0

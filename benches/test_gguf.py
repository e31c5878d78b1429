"""qfast.gguf vs gguf-py's NumPy reference (gguf.quants) and X.copy(), one group per operation.

Groups: quantize {Q8_0, Q4_0, Q4_1, Q5_0, Q5_1} and dequantize {those, Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K, IQ4_NL, IQ4_XS}, each on a float32 tensor of 4096x4096 (64 MB: beyond L2) and one of
16384x16384 (1 GiB: several last-level caches, so every call streams from DRAM). In each group:
qfast.gguf on one thread and on all, ``gguf.quants.quantize`` / ``gguf.quants.dequantize``
(the NumPy column of the tables; 4096x4096 only, few rounds: it is slow), and ``X.copy()`` of
the float32 tensor (quantize's input, dequantize's result).

Dequantize reads qfast.gguf.quantize's blocks of the random normal tensor for the types qfast
quantizes, and random bytes with finite float16 scale fields for the others (Q2_K..IQ4_XS).
qfast's results are checked against gguf.quants: in full by the 4096x4096 gguf-py benchmarks,
and on the first and last rows of every tensor when its blocks are made. The 16384x16384 cases
(marked ``cold``) run only with --benchmark-enable or QFAST_BENCH_COLD=1, as the matmul cold
cases do (QFAST_BENCH_COLD=0 or ``-k "not cold"`` skips them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np
import pytest

import qfast.gguf as qg

from .conftest import memory_bytes

gguf = pytest.importorskip("gguf")
F32 = np.float32
GGML = gguf.GGMLQuantizationType
QUANTIZE_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
DEQUANTIZE_TYPES = (*QUANTIZE_TYPES, "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
WARM_SHAPE = (4096, 4096)
COLD_SHAPE = (16384, 16384)
COLD_RAM_FACTOR = 6  # the cold cases hold about 4 float32 tensors at once; want some room
TARGET_S = 1.0  # qfast and X.copy(): rounds sized to about this (at least 3)
COLD_TARGET_S = 3.0  # and on the 16384x16384 tensor (a call takes 0.1-1 s there)
GGUF_PY_TARGET_S = 0.3  # gguf-py: 3 rounds (it takes 0.1-0.3 s a call on 4096x4096)
CHECK_ROWS = 32  # rows checked against gguf.quants at each end of a tensor
GGUF_PY_LABEL = f"gguf.quants (gguf-py {version('gguf')})"

# Byte offsets of each type's float16 fields (d, and dmin / m) within a block.
F16_FIELDS = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
}

WARM_IMPLS = ("qfast_1t", "qfast_all", "gguf_py", "copy")
COLD_IMPLS = ("qfast_1t", "qfast_all", "copy")


def _cases(types: tuple[str, ...], impls: tuple[str, ...]) -> list:
    return [pytest.param((t, impl), id=f"{t}-{impl}") for t in types for impl in impls]


def random_blocks(t: str, rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random ``(rows, row_bytes)`` bytes of type `t` with every float16 field finite."""
    info = qg.type_info(t)
    n_blocks = rows * (n // info.block_size)
    b = rng.integers(0, 256, (n_blocks, info.type_size), dtype=np.uint8)
    for at in F16_FIELDS[t]:
        d = rng.uniform(-2, 2, n_blocks).astype(np.float16)
        b[:, at : at + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return b.reshape(rows, -1)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == F32:
        a = a.view(np.uint32)
    if b.dtype == F32:
        b = b.view(np.uint32)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _ends(rows: int) -> list[slice]:
    return [slice(0, CHECK_ROWS), slice(rows - CHECK_ROWS, rows)]


@dataclass
class Entry:
    """One type's blocks of the tensor (and, for dequantize, their float32 values)."""

    t: str
    blocks: np.ndarray
    y: np.ndarray | None = None


@dataclass
class Inputs:
    shape: tuple[int, int]
    x32: np.ndarray
    target_s: float = TARGET_S
    note: str = ""
    entry: Entry | None = None  # one type at a time (the 16384x16384 ones are large)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(1))

    def blocks(self, t: str) -> Entry:
        """`t`'s blocks, made once (and their ends checked against gguf.quants)."""
        if self.entry is not None and self.entry.t == t:
            return self.entry
        self.entry = None
        rows, n = self.shape
        if qg.type_info(t).can_quantize:
            blocks = qg.quantize(self.x32, t)
            for rs in _ends(rows):
                assert _same_bits(blocks[rs], gguf.quants.quantize(self.x32[rs], GGML[t])), t
        else:
            blocks = random_blocks(t, rows, n, self.rng)
        self.entry = Entry(t, blocks)
        return self.entry

    def values(self, t: str) -> Entry:
        """`t`'s blocks and qfast's float32 values of them (ends checked against gguf.quants)."""
        entry = self.blocks(t)
        if entry.y is None:
            y = qg.dequantize(entry.blocks, t)
            assert y.shape == self.shape
            assert y.dtype == F32
            for rs in _ends(self.shape[0]):
                want = gguf.quants.dequantize(entry.blocks[rs], GGML[t]).astype(F32)
                assert _same_bits(y[rs], want), t
            entry.y = y
        return entry


def _inputs(shape: tuple[int, int], target_s: float = TARGET_S, note: str = "") -> Inputs:
    x32 = np.random.default_rng(0).standard_normal(shape, dtype=F32)
    return Inputs(shape, x32, target_s, note)


@pytest.fixture(scope="module")
def warm() -> Inputs:
    return _inputs(WARM_SHAPE)


@pytest.fixture(scope="module")
def cold(cold_enabled: bool, llc_bytes: int) -> Inputs:
    if not cold_enabled:
        pytest.skip("cold cases: pass --benchmark-enable or set QFAST_BENCH_COLD=1")
    nbytes = int(np.prod(COLD_SHAPE)) * 4
    ram = memory_bytes()
    if ram and ram < COLD_RAM_FACTOR * nbytes:
        pytest.skip(f"{COLD_RAM_FACTOR} x {nbytes >> 20} MiB is more than this machine's memory")
    note = f"float32 tensor {nbytes / llc_bytes:.1f}x LLC"
    return _inputs(COLD_SHAPE, COLD_TARGET_S, note)


def _bench(
    op: str,
    inputs: Inputs,
    case: tuple[str, str],
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
) -> None:
    t, impl = case
    common: dict[str, Any] = dict(op=op, scheme=f"gguf {t}", shape=inputs.shape, dtype="float32")
    if inputs.note:
        common["note"] = inputs.note
    ggml = GGML[t]
    if op == "quantize":
        entry = inputs.blocks(t)
        x = inputs.x32
        want = entry.blocks

        def run_qfast() -> np.ndarray:
            return qg.quantize(x, t)

        def run_gguf_py() -> np.ndarray:
            return gguf.quants.quantize(x, ggml)

        yardstick = x.copy
    else:
        entry = inputs.values(t)
        data = entry.blocks
        assert entry.y is not None
        want = entry.y

        def run_qfast() -> np.ndarray:
            return qg.dequantize(data, t)

        def run_gguf_py() -> np.ndarray:
            return gguf.quants.dequantize(data, ggml)

        yardstick = entry.y.copy

    if impl in ("qfast_1t", "qfast_all"):
        threads, label = thread_count("1t" if impl == "qfast_1t" else "all")
        got = run_bench(
            run_qfast,
            impl=f"qfast {label}",
            kind="qfast",
            threads=threads,
            target_s=inputs.target_s,
            **common,
        )
        assert _same_bits(got, want), f"{op} {t} on {threads} thread(s)"
    elif impl == "gguf_py":
        got = run_bench(
            run_gguf_py,
            impl=GGUF_PY_LABEL,
            kind="numpy",
            target_s=GGUF_PY_TARGET_S,
            **common,
        )
        if op == "dequantize":
            got = np.asarray(got).astype(F32)
        assert _same_bits(got, want), f"{op} {t}: qfast.gguf differs from gguf.quants"
    else:
        label = "X.copy() float32" if op == "quantize" else "Y.copy() float32 (the result)"
        run_bench(yardstick, impl=label, kind="copy", target_s=inputs.target_s, **common)


@pytest.mark.parametrize("case", _cases(QUANTIZE_TYPES, WARM_IMPLS))
def test_gguf_quantize(
    warm: Inputs,
    case: tuple[str, str],
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
) -> None:
    _bench("quantize", warm, case, run_bench, thread_count)


@pytest.mark.parametrize("case", _cases(DEQUANTIZE_TYPES, WARM_IMPLS))
def test_gguf_dequantize(
    warm: Inputs,
    case: tuple[str, str],
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
) -> None:
    _bench("dequantize", warm, case, run_bench, thread_count)


@pytest.mark.cold
@pytest.mark.parametrize("case", _cases(QUANTIZE_TYPES, COLD_IMPLS))
def test_gguf_quantize_cold(
    cold: Inputs,
    case: tuple[str, str],
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
) -> None:
    _bench("quantize", cold, case, run_bench, thread_count)


@pytest.mark.cold
@pytest.mark.parametrize("case", _cases(DEQUANTIZE_TYPES, COLD_IMPLS))
def test_gguf_dequantize_cold(
    cold: Inputs,
    case: tuple[str, str],
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
) -> None:
    _bench("dequantize", cold, case, run_bench, thread_count)

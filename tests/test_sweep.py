"""The bad-input sweep: hundreds of wrong, corrupt, huge and degenerate inputs against the public
API and the ``qfast`` command (issue 11, "Must show").

Every case either gives its documented result or raises a documented exception type
(``TypeError``, ``ValueError``, ``MemoryError``, ``qfast.QfastError``, or what the function's
docstring names, e.g. ``OSError`` for files) with a non-empty message. No case may raise a
``BaseException`` that is not an ``Exception`` (pyo3's ``PanicException``), kill the process
(abort, SIGBUS), run past its time limit (10 s) or leave a file behind (each case runs in a
fresh folder whose listing, hidden files included, must not change). ``qfast`` command cases
must exit with status 2 and print exactly one line on stderr, with no traceback.

How it runs: the cases are plain functions registered in ``CASES``. A session fixture runs them
all in two worker processes (this file run as a script, ``--worker``), each under a 3 GiB
``RLIMIT_AS`` so that huge allocations fail quickly instead of taking the machine's memory. A
worker reports each case as it goes; a case that kills its worker or runs past its limit is
recorded as such (with the end of the worker's stderr), and a fresh worker goes on with the
rest. ``test_case[ID]`` then reports each case's verdict, so a crash or a hang fails one test,
not the session.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import qfast  # noqa: E402
import qfast.gguf as qg  # noqa: E402
from qfast import QTensor  # noqa: E402

# The exception types the API documents: wrong types, bad values, allocation failure, other.
DOC: tuple[type[BaseException], ...] = (TypeError, ValueError, MemoryError, qfast.QfastError)
# Functions that read or write files also raise OSError (FileNotFoundError, ...).
DOC_FILE = (*DOC, OSError)
# The address-space limit of the worker processes.
AS_LIMIT = 3 << 30
# A case may run this long.
CASE_TIMEOUT = 10.0
# Subprocesses started by a case get this long (less than CASE_TIMEOUT, so that a hang is
# reported by the case itself).
SUB_TIMEOUT = 8.0
# Cases that start a Python process (imports take a few seconds on a loaded machine).
PROCESS_TIMEOUT = 20.0
PROCESS_SUB_TIMEOUT = 15.0
WORKERS = 2

F32 = np.float32


# ============================================================================================
# the registry


@dataclass
class Case:
    """One bad input: ``fn(ctx)`` with ``ctx = setup(folder)`` (or the fresh folder itself).

    ``raises``: the exception types it must raise (with a non-empty message matching ``match``,
    a regex searched in ``str(e)``), or None when it must return; ``check(result)`` then checks
    the result (AssertionError on a wrong one). ``either``: a checked result or one of
    ``raises`` is fine."""

    id: str
    group: str
    fn: Callable[..., Any]
    raises: tuple[type[BaseException], ...] | None = None
    match: str | None = None
    check: Callable[[Any], None] | None = None
    either: bool = False
    setup: Callable[[Path], Any] | None = None
    timeout: float = CASE_TIMEOUT
    alone: bool = False  # run after the others, one at a time (it may load the whole machine)


CASES: dict[str, Case] = {}


def _add(case: Case) -> None:
    cid = f"{case.group}-{case.id}"
    assert cid not in CASES, f"duplicate case id {cid}"
    case.id = cid
    CASES[cid] = case


def bad(
    group: str,
    name: str,
    fn: Callable[..., Any],
    exc: tuple[type[BaseException], ...] | type[BaseException] = DOC,
    match: str | None = None,
    **kw: Any,
) -> None:
    """A case that must raise one of ``exc``."""
    _add(Case(name, group, fn, exc if isinstance(exc, tuple) else (exc,), match, **kw))


def good(group: str, name: str, fn: Callable[..., Any], check: Any = None, **kw: Any) -> None:
    """A case that must return (a result ``check`` accepts)."""
    _add(Case(name, group, fn, None, None, check, **kw))


def either(
    group: str,
    name: str,
    fn: Callable[..., Any],
    check: Any = None,
    exc: tuple[type[BaseException], ...] = DOC,
    **kw: Any,
) -> None:
    """A case that may return a result ``check`` accepts or raise one of ``exc``."""
    _add(Case(name, group, fn, exc, None, check, either=True, **kw))


# ============================================================================================
# data and checks


def rand(shape: tuple[int, ...] = (4, 8), dtype: Any = F32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def bf16() -> Any:
    import ml_dtypes

    return ml_dtypes.bfloat16


def big_endian(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder(">"))


def unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` whose data starts one byte past an aligned address."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned or a.dtype.itemsize == 1
    return out


def with_value(a: np.ndarray, index: tuple[int, ...], value: float) -> np.ndarray:
    out = a.copy()
    out[index] = value
    return out


def qtensor_parts(q: QTensor) -> dict[str, Any]:
    parts: dict[str, Any] = {
        "shape": q.shape,
        "bits": q.bits,
        "signed": q.signed,
        "data": np.asarray(q.data).tobytes(),
        "scale": np.asarray(q.scale, F32).tobytes(),
    }
    if q.zero_point is not None:
        parts["zero_point"] = np.asarray(q.zero_point, F32).tobytes()
    if q.g_idx is not None:
        parts["g_idx"] = np.asarray(q.g_idx).tobytes()
    return parts


def that(cond: Any, message: str) -> None:
    """An assertion usable inside a lambda."""
    if not cond:
        raise AssertionError(message)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, QTensor):
        return isinstance(b, QTensor) and qtensor_parts(a) == qtensor_parts(b)
    if isinstance(a, qfast.AWQResult):
        return all(same(x, y) for x, y in zip(a.qweights, b.qweights)) and same(a.scales, b.scales)
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def same_pair(pair: tuple[Any, Any]) -> None:
    """``(got, want)``: identical results (bit for bit)."""
    got, want = pair
    assert same(got, want), f"differs from the contiguous native-order input's result: {got!r}"


def qt_ok(shape: tuple[int, ...] | None = None) -> Callable[[Any], None]:
    """A QTensor of ``shape`` (when given) that dequantizes to finite values of that shape."""

    def check(q: Any) -> None:
        assert isinstance(q, QTensor), f"returned {type(q).__name__}, not a QTensor"
        if shape is not None:
            assert q.shape == shape, f"shape {q.shape}, expected {shape}"
        w = q.dequantize()
        assert w.shape == q.shape and np.isfinite(w).all(), "dequantize gives non-finite values"

    return check


def close_to(want: Callable[[], np.ndarray], rtol: float = 0.05) -> Callable[[Any], None]:
    """A float array within ``rtol`` (relative Frobenius norm) of ``want()``, all finite."""

    def check(got: Any) -> None:
        ref = np.asarray(want(), np.float64)
        g = np.asarray(got, np.float64)
        assert g.shape == ref.shape, f"shape {g.shape}, expected {ref.shape}"
        assert np.isfinite(g).all(), "non-finite values in the result"
        err = np.linalg.norm(g - ref) / max(np.linalg.norm(ref), 1e-30)
        assert err <= rtol, f"relative error {err:.3g} > {rtol}"

    return check


def array_ok(shape: tuple[int, ...], dtype: Any = None) -> Callable[[Any], None]:
    def check(a: Any) -> None:
        assert isinstance(a, np.ndarray), f"returned {type(a).__name__}"
        assert a.shape == shape, f"shape {a.shape}, expected {shape}"
        if dtype is not None:
            assert a.dtype == np.dtype(dtype), f"dtype {a.dtype}, expected {dtype}"

    return check


def nan_match(value: float, index: tuple[int, ...], name: str = "") -> str:
    """A regex for a message naming the non-finite ``value`` and its position."""
    kind = "nan" if np.isnan(value) else "inf"
    idx = re.escape(str(tuple(index)))
    return rf"(?is){re.escape(name)}.*{kind}.*at index {idx}"


# ============================================================================================
# arrays: NaN/Inf, empty, 0-d, huge, strided, byte order, alignment, dtypes, lists


def _gran_kwargs() -> dict[str, dict[str, Any]]:
    return {
        "tensor": {},
        "axis0": {"axis": 0},
        "axis1": {"axis": 1},
        "g4": {"group_size": 4},
        "static": {"scale": F32(0.05)},
    }


POSITIONS = {"first": (0, 0), "mid": (2, 3), "last": (3, 7)}
NONFINITE = {"nan": np.nan, "inf": np.inf, "ninf": -np.inf}

_k = 0
for _gname, _kw in _gran_kwargs().items():
    for _pname, _pos in POSITIONS.items():
        _vname, _v = list(NONFINITE.items())[_k % 3]
        _k += 1
        if _gname in ("axis0", "static") and _pname != "mid":
            continue
        if True:
            bad(
                "arrays",
                f"quantize-{_vname}-{_pname}-{_gname}",
                lambda kw=_kw, pos=_pos, v=_v: qfast.quantize(with_value(rand(), pos, v), 8, **kw),
                ValueError,
                nan_match(_v, _pos),
            )
for _dt, (_vname, _v) in zip(("float64", "float16", "bfloat16"), NONFINITE.items()):
    if True:
        bad(
            "arrays",
            f"quantize-{_vname}-{_dt}",
            lambda dt=_dt, v=_v: qfast.quantize(
                with_value(rand(), (1, 5), v).astype(bf16() if dt == "bfloat16" else dt), 4
            ),
            ValueError,
            nan_match(_v, (1, 5)),
        )
bad(
    "arrays",
    "quantize-nan-1d",
    lambda: qfast.quantize(with_value(rand((9,)), (6,), np.nan), 8),
    ValueError,
    nan_match(np.nan, (6,)),
)
bad(
    "arrays",
    "quantize-nan-3d",
    lambda: qfast.quantize(with_value(rand((2, 3, 4)), (1, 2, 3), np.nan), 4, group_size=2),
    ValueError,
    nan_match(np.nan, (1, 2, 3)),
)
bad(
    "arrays",
    "quantize-nan-0d",
    lambda: qfast.quantize(np.float32(np.nan), 8),
    ValueError,
    r"(?i)nan",
)
bad(
    "arrays",
    "quantize-nan-strided",
    lambda: qfast.quantize(with_value(rand((8, 16)), (4, 6), np.nan)[::2, ::2], 8),
    ValueError,
    nan_match(np.nan, (2, 3)),
)

# The other functions that take float arrays, with their documented position messages.
FLOAT_FUNCS: dict[str, tuple[Callable[[np.ndarray], Any], str]] = {
    "rtn": (lambda a: qfast.rtn(a, 4, group_size=4), "W"),
    "gptq-W": (lambda a: qfast.gptq(a, rand((32, 8), seed=1), group_size=4), "W"),
    "gptq-X": (lambda a: qfast.gptq(rand((3, 8), seed=1), a, group_size=4), "calibration"),
    "awq-W": (lambda a: qfast.awq(a, rand((32, 8), seed=1), group_size=4), "W"),
    "awq-X": (lambda a: qfast.awq(rand((3, 8), seed=1), a, group_size=4), "X"),
    "hqq": (lambda a: qfast.hqq(a, 4, group_size=4), ""),
    "hessian-add": (lambda a: qfast.Hessian(8).add(a), "calibration"),
    "linear-int8": (lambda a: qfast.linear(a, qfast.quantize(rand((3, 8), seed=1), 8, axis=0)), ""),
    "linear-float": (
        lambda a: qfast.linear(
            a, qfast.quantize(rand((3, 8), seed=1), 4, group_size=4), None, compute="float"
        ),
        "",
    ),
}
for _k, (_fname, (_f, _who)) in enumerate(FLOAT_FUNCS.items()):
    for _pname, _vname in ((("first", "nan"), ("mid", "inf"), ("last", "nan"))[_k % 3],):
        _pos = POSITIONS[_pname]
        if True:
            _v = NONFINITE[_vname]
            bad(
                "arrays",
                f"{_fname}-{_vname}-{_pname}",
                lambda f=_f, pos=_pos, v=_v: f(with_value(rand(), pos, v)),
                ValueError,
                nan_match(_v, _pos, _who),
            )
for (_pname, _pos), _t in zip(
    {"first": (0, 0), "mid": (1, 40), "last": (1, 63)}.items(), ("Q4_0", "Q8_0", "Q5_1")
):
    if True:
        bad(
            "arrays",
            f"gguf-quantize-{_t}-nan-{_pname}",
            lambda t=_t, pos=_pos: qg.quantize(with_value(rand((2, 64)), pos, np.nan), t),
            ValueError,
            nan_match(np.nan, _pos),
        )
good(
    "arrays",
    "gguf-quantize-F16-keeps-nan",
    lambda: qg.quantize(with_value(rand((2, 64)), (1, 3), np.nan), "F16"),
    lambda a: (array_ok((2, 64), np.float16)(a), that(np.isnan(a[1, 3]), "the NaN was lost")),
)
bad(
    "arrays",
    "linear-bias-nan",
    lambda: qfast.linear(rand(), qfast.quantize(rand((3, 8)), 8, axis=0), np.array([0, np.nan, 0])),
    ValueError,
    r"(?i)bias",
)

# --- empty and 0-d


def _empty_quantize(shape: tuple[int, ...], kw: dict[str, Any]) -> Callable[[], Any]:
    return lambda: qfast.quantize(np.zeros(shape, F32), 4, **kw)


for _shape, (_gname, _kw) in (
    ((0,), ("tensor", {})),
    ((0, 8), ("g4", {"group_size": 4})),
    ((4, 0), ("g4", {"group_size": 4})),
    ((2, 0, 3), ("axis0", {"axis": 0})),
):
    if True:
        either(
            "arrays",
            f"quantize-empty-{'x'.join(map(str, _shape))}-{_gname}",
            _empty_quantize(_shape, _kw),
            qt_ok(_shape),
        )
good("arrays", "quantize-0d", lambda: qfast.quantize(np.float32(3.0), 8), qt_ok(()))
good(
    "arrays",
    "quantize-0d-dequantize",
    lambda: qfast.quantize(np.array(-2.5, F32), 8, symmetric=False).dequantize(),
    close_to(lambda: np.array(-2.5), 0.01),
)
either(
    "arrays", "quantize-0d-group", lambda: qfast.quantize(np.float32(1), 4, group_size=2), qt_ok(())
)
good("arrays", "quantize-list", lambda: qfast.quantize([1.0, -2.0, 3.0], 8), qt_ok((3,)))
good("arrays", "quantize-int-list", lambda: qfast.quantize([[1, 2], [3, 4]], 8), qt_ok((2, 2)))
bad("arrays", "quantize-ragged-list", lambda: qfast.quantize([[1.0, 2.0], [3.0]], 8), DOC)
bad("arrays", "quantize-none", lambda: qfast.quantize(None, 8), TypeError)
bad("arrays", "quantize-str", lambda: qfast.quantize("1.0", 8), TypeError)
bad("arrays", "quantize-qtensor", lambda: qfast.quantize(qfast.quantize(rand(), 8), 8), TypeError)
bad(
    "arrays",
    "quantize-list-nan",
    lambda: qfast.quantize([1.0, float("nan")], 8),
    ValueError,
    nan_match(np.nan, (1,)),
)
bad("arrays", "rtn-empty", lambda: qfast.rtn(np.zeros((0, 8), F32)), ValueError)
bad("arrays", "rtn-1d", lambda: qfast.rtn(rand((8,))), ValueError)
bad("arrays", "gguf-quantize-0d", lambda: qg.quantize(np.float32(1), "Q8_0"), ValueError)
either(
    "arrays",
    "gguf-quantize-empty-rows",
    lambda: qg.quantize(np.zeros((0, 32), F32), "Q8_0"),
    array_ok((0, 34), np.uint8),
)
either(
    "arrays",
    "gguf-quantize-empty-row",
    lambda: qg.quantize(np.zeros((3, 0), F32), "Q4_0"),
    array_ok((3, 0), np.uint8),
)
either(
    "arrays",
    "matmul-empty-k",
    lambda: qfast.matmul_int8(np.zeros((3, 0), np.int8), np.zeros((0, 4), np.int8)),
    lambda c: (array_ok((3, 4), np.int32)(c), np.testing.assert_array_equal(c, 0)),
)
either(
    "arrays",
    "matmul-empty-m",
    lambda: qfast.matmul_int8(np.zeros((0, 5), np.int8), np.zeros((5, 4), np.int8)),
    array_ok((0, 4), np.int32),
)
either(
    "arrays",
    "linear-empty-rows",
    lambda: qfast.linear(np.zeros((0, 8), F32), qfast.quantize(rand((3, 8)), 8, axis=0)),
    array_ok((0, 3), np.float32),
)
bad(
    "arrays",
    "linear-0d",
    lambda: qfast.linear(np.float32(1), qfast.quantize(rand((3, 8)), 8, axis=0)),
    ValueError,
)
bad(
    "arrays",
    "matmul-0d-a",
    lambda: qfast.matmul_int8(np.int8(1), np.ones((1, 1), np.int8)),
    ValueError,
)

# --- huge inputs: views that cost nothing, outputs that cannot be allocated (MemoryError)

HUGE = 1 << 41
bad(
    "arrays",
    "huge-quantize",
    lambda: qfast.quantize(np.broadcast_to(F32(1), (HUGE,)), 8),
    MemoryError,
)
bad(
    "arrays",
    "huge-quantize-4bit-group",
    lambda: qfast.quantize(np.broadcast_to(F32(1), (1 << 20, 1 << 21)), 4, group_size=32),
    MemoryError,
)
bad(
    "arrays",
    "huge-quantize-axis0",
    lambda: qfast.quantize(np.broadcast_to(F32(1), (1 << 21, 1 << 20)), 8, axis=0),
    MemoryError,
)
bad(
    "arrays",
    "huge-quantize-static",
    lambda: qfast.quantize(
        np.broadcast_to(F32(1), (HUGE,)), 8, symmetric=False, scale=1.0, zero_point=0
    ),
    MemoryError,
)
bad(
    "arrays",
    "huge-dequantize",
    lambda: QTensor(np.broadcast_to(np.int8(1), (HUGE,)), (HUGE,), 8, True, F32(1)).dequantize(),
    MemoryError,
)
bad(
    "arrays",
    "huge-dequantize-packed",
    lambda: QTensor(
        np.broadcast_to(np.uint8(1), (1 << 20, 1 << 20)), (1 << 20, 1 << 21), 4, True, F32(1)
    ).dequantize(),
    MemoryError,
)
bad(
    "arrays",
    "huge-matmul-out",
    lambda: qfast.matmul_int8(
        np.broadcast_to(np.int8(1), (1 << 20, 4)), np.broadcast_to(np.int8(1), (4, 1 << 20))
    ),
    MemoryError,
)
bad(
    "arrays",
    "huge-linear-out",
    lambda: qfast.linear(
        np.broadcast_to(F32(1), (1 << 30, 8)), qfast.quantize(np.ones((1024, 8), F32), 8, axis=0)
    ),
    MemoryError,
)
bad(
    "arrays",
    "huge-gguf-quantize",
    lambda: qg.quantize(np.broadcast_to(F32(1), (1 << 38,)), "Q8_0"),
    MemoryError,
)
bad(
    "arrays",
    "huge-gguf-dequantize",
    lambda: qg.dequantize(np.broadcast_to(np.uint8(0), (1 << 20, 34 << 16)), "Q8_0"),
    MemoryError,
)
bad(
    "arrays",
    "huge-hqq",
    lambda: qfast.hqq(np.broadcast_to(F32(1), (1 << 20, 1 << 20))),
    MemoryError,
)
bad("arrays", "huge-hessian", lambda: qfast.Hessian(1 << 20), MemoryError)
bad(
    "arrays",
    "huge-pack-int4",
    lambda: qfast.pack_int4(np.broadcast_to(np.int8(0), (1 << 20, 1 << 21))),
    MemoryError,
)


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _under_limit(extra: int, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn(ctx)`` with the address space limited to what is mapped now plus ``extra`` bytes."""

    def run(ctx: Any) -> Any:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (min(_vm_size() + extra, hard), hard))
        try:
            return fn(ctx)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    return run


# Issue 11 item 1: a 256 MiB input asked the allocator for 2 GiB; under a limit that is an abort.
either(
    "arrays",
    "memlimit-quantize-group32",
    _under_limit(768 << 20, lambda x: qfast.quantize(x, 8, group_size=32)),
    qt_ok((4096, 16384)),
    (MemoryError,),
    setup=lambda tmp: np.ones((4096, 16384), F32),
)
bad(
    "arrays",
    "memlimit-tight-quantize",
    _under_limit(16 << 20, lambda x: qfast.quantize(x, 8, group_size=32)),
    MemoryError,
    setup=lambda tmp: np.ones((4096, 16384), F32),
)
bad(
    "arrays",
    "memlimit-tight-dequantize",
    _under_limit(16 << 20, lambda q: q.dequantize()),
    MemoryError,
    setup=lambda tmp: qfast.quantize(np.ones((4096, 16384), np.float16), 4, group_size=32),
)
bad(
    "arrays",
    "memlimit-tight-linear",
    _under_limit(16 << 20, lambda w: qfast.linear(np.ones((4096, 1024), F32), w)),
    MemoryError,
    setup=lambda tmp: qfast.quantize(np.ones((4096, 1024), F32), 4, group_size=32),
)
either(
    "arrays",
    "memlimit-dequantize",
    _under_limit(300 << 20, lambda q: q.dequantize()),
    array_ok((4096, 16384), np.float32),
    (MemoryError,),
    setup=lambda tmp: qfast.quantize(np.ones((4096, 16384), np.float16), 4, group_size=32),
)

# --- layouts: strided, negative strides, transposed, big-endian, unaligned (same results)

LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "strided": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
    "negstride": lambda a: a[::-1, ::-1].copy()[::-1, ::-1],
    "fortran": lambda a: np.asfortranarray(a),
    "row-strided": lambda a: np.repeat(a, 3, axis=0)[1::3],
    "bigendian": big_endian,
    "unaligned": unaligned,
}
LAYOUT_FUNCS: dict[str, Callable[[np.ndarray], Any]] = {
    "quantize-g4": lambda a: qfast.quantize(a, 4, group_size=4, symmetric=False),
    "quantize-axis1": lambda a: qfast.quantize(a, 8, axis=1),
    "rtn": lambda a: qfast.rtn(a, 4, group_size=4),
    "hqq": lambda a: qfast.hqq(a, 4, group_size=4),
    "linear": lambda a: qfast.linear(a, qfast.quantize(rand((3, 8), seed=1), 4, group_size=4)),
    "gguf-quantize": lambda a: qg.quantize(a, "Q4_1"),
    "awq": lambda a: qfast.awq(a, rand((32, 8), seed=1), group_size=4),
}
for _fname, _f in LAYOUT_FUNCS.items():
    for _lname, _l in LAYOUTS.items():
        if _fname != "quantize-g4" and (_fname, _lname) not in {
            ("quantize-axis1", "bigendian"),
            ("rtn", "negstride"),
            ("hqq", "unaligned"),
            ("hqq", "bigendian"),
            ("linear", "unaligned"),
            ("linear", "negstride"),
            ("gguf-quantize", "unaligned"),
            ("awq", "unaligned"),
            ("gguf-quantize", "strided"),
        }:
            continue
        shape = (4, 64) if _fname.startswith("gguf") else (4, 8)
        good(
            "arrays",
            f"layout-{_fname}-{_lname}",
            lambda f=_f, lay=_l, s=shape: (f(lay(rand(s))), f(rand(s))),
            same_pair,
        )
for _lname, _l in LAYOUTS.items():
    if _lname not in ("negstride", "fortran"):
        continue
    good(
        "arrays",
        f"layout-matmul-{_lname}",
        lambda lay=_l: (
            qfast.matmul_int8(lay(rand((5, 8)).astype(np.int8)), lay(rand((8, 3)).astype(np.int8))),
            rand((5, 8)).astype(np.int8).astype(np.int32)
            @ rand((8, 3)).astype(np.int8).astype(np.int32),
        ),
        same_pair,
    )
good(
    "arrays",
    "layout-float64-bigendian",
    lambda: (
        qfast.quantize(big_endian(rand().astype(np.float64)), 8),
        qfast.quantize(rand().astype(np.float64), 8),
    ),
    same_pair,
)
good(
    "arrays",
    "layout-float16-unaligned",
    lambda: (
        qfast.quantize(unaligned(rand().astype(np.float16)), 8),
        qfast.quantize(rand().astype(np.float16), 8),
    ),
    same_pair,
)

# --- wrong dtypes

BAD_DTYPES: dict[str, Callable[[tuple[int, ...]], np.ndarray]] = {
    "int8": lambda s: np.ones(s, np.int8),
    "int32": lambda s: np.ones(s, np.int32),
    "bool": lambda s: np.ones(s, bool),
    "complex64": lambda s: np.ones(s, np.complex64),
    "object": lambda s: np.ones(s, object),
    "str": lambda s: np.full(s, "1.0"),
    "datetime": lambda s: np.zeros(s, "datetime64[s]"),
}
DTYPE_FUNCS: dict[str, Callable[[np.ndarray], Any]] = {
    "quantize": lambda a: qfast.quantize(a, 8),
    "rtn": lambda a: qfast.rtn(a),
    "hqq": lambda a: qfast.hqq(a, group_size=4),
    "gptq-W": lambda a: qfast.gptq(a, rand((32, 8)), group_size=4),
    "awq-W": lambda a: qfast.awq(a, rand((32, 8)), group_size=4),
    "linear-x": lambda a: qfast.linear(a, qfast.quantize(rand((3, 8)), 8, axis=0)),
    "hessian-add": lambda a: qfast.Hessian(8).add(a),
    "gguf-quantize": lambda a: qg.quantize(a, "Q8_0"),
}
_k = 0
for _fname, _f in DTYPE_FUNCS.items():
    for _dname, _d in BAD_DTYPES.items():
        if _fname != "quantize":
            _k += 1
            if _k % 7:
                continue
        shape = (4, 32) if _fname.startswith("gguf") else (4, 8)
        bad(
            "arrays",
            f"dtype-{_fname}-{_dname}",
            lambda f=_f, d=_d, s=shape: f(d(s)),
            TypeError,
            r"\S" if _fname != "quantize" else r"float32",
        )
for _dname in ("float32", "bool"):
    bad(
        "arrays",
        f"dtype-matmul-a-{_dname}",
        lambda d=_dname: qfast.matmul_int8(np.ones((2, 3), d), np.ones((3, 2), np.int8)),
        TypeError,
    )
for _dname in ("uint8", "float32"):
    bad(
        "arrays",
        f"dtype-matmul-b-{_dname}",
        lambda d=_dname: qfast.matmul_int8(np.ones((2, 3), np.int8), np.ones((3, 2), d)),
        TypeError,
    )
good(
    "arrays",
    "dtype-quantize-bfloat16",
    lambda: (
        qfast.quantize(rand().astype(bf16()), 8),
        qfast.quantize(rand().astype(bf16()).astype(F32), 8),
    ),
    same_pair,
)
bad("arrays", "dtype-dequantize-ndarray", lambda: qfast.dequantize(rand()), TypeError)
bad(
    "arrays",
    "dtype-dequantize-dict",
    lambda: qfast.dequantize(qfast.quantize(rand(), 8).to_dict()),
    TypeError,
)
bad(
    "arrays", "dtype-unpack-int4-int8", lambda: qfast.unpack_int4(np.ones(4, np.int8), 8), TypeError
)
bad("arrays", "dtype-pack-int4-range", lambda: qfast.pack_int4(np.array([8], np.int8)), ValueError)
bad(
    "arrays",
    "dtype-unpack-int4-too-short",
    lambda: qfast.unpack_int4(np.ones(2, np.uint8), 5),
    ValueError,
)
bad(
    "arrays",
    "dtype-unpack-int4-negative-n",
    lambda: qfast.unpack_int4(np.ones(2, np.uint8), -1),
    ValueError,
)


# ============================================================================================
# arguments: bits, group_size, axis, scale, zero_point, symmetric, dtype, out=, threads

BITS_VALUES: dict[str, tuple[Any, Any]] = {
    # name: (value, expected exception; None = a result)
    "1": (1, ValueError),
    "9": (9, ValueError),
    "0": (0, ValueError),
    "neg": (-4, ValueError),
    "2pow64": (2**64, ValueError),
    "float": (4.0, TypeError),
    "str": ("4", TypeError),
    "bool": (True, TypeError),
    "none": (None, TypeError),
    "npint": (np.int64(4), None),
}
for _bname, (_bv, _exc) in BITS_VALUES.items():
    if _exc is None:
        good(
            "args",
            f"quantize-bits-{_bname}",
            lambda b=_bv: qfast.quantize(rand(), b),
            qt_ok((4, 8)),
        )
    else:
        bad(
            "args",
            f"quantize-bits-{_bname}",
            lambda b=_bv: qfast.quantize(rand(), b),
            _exc,
            r"bits",
        )
BITS_FUNCS: dict[str, Callable[[Any], Any]] = {
    "rtn": lambda b: qfast.rtn(rand(), b, group_size=4),
    "gptq": lambda b: qfast.gptq(rand(), rand((32, 8)), bits=b, group_size=4),
    "awq": lambda b: qfast.awq(rand(), rand((32, 8)), b, group_size=4),
    "hqq": lambda b: qfast.hqq(rand(), b, group_size=4),
    "from-codes": lambda b: QTensor.from_codes(
        np.zeros((4, 8), np.uint8),
        b,
        False,
        np.ones((4, 1), F32),
        np.zeros((4, 1), np.int32),
        axis=0,
    ),
    "qtensor": lambda b: QTensor(np.zeros((4, 8), np.int8), (4, 8), b, True, F32(1)),
}
_k = 0
for _fname, _f in BITS_FUNCS.items():
    for _bname in ("1", "9", "neg", "float", "str", "bool", "none"):
        _k += 1
        if _k % 3:
            continue
        _bv, _exc = BITS_VALUES[_bname]
        if _fname == "qtensor" and _bname in ("float", "str", "bool"):
            continue  # the constructor converts with int(); its checks are its own
        bad("args", f"{_fname}-bits-{_bname}", lambda f=_f, b=_bv: f(b), _exc, r"bits")

GROUP_VALUES: dict[str, tuple[Any, Any]] = {
    "0": (0, ValueError),
    "float": (2.0, TypeError),
    "str": ("4", TypeError),
    "bool": (True, TypeError),
    "list": ([4], TypeError),
    "array": (np.array([4]), TypeError),
}
for _k, (_gname, (_gv, _exc)) in enumerate(GROUP_VALUES.items()):
    bad(
        "args",
        f"quantize-group-{_gname}",
        lambda g=_gv: qfast.quantize(rand(), 4, group_size=g),
        _exc,
        r"group_size",
    )
    if _k % 3:
        continue
    bad(
        "args",
        f"rtn-group-{_gname}",
        lambda g=_gv: qfast.rtn(rand(), 4, group_size=g),
        _exc,
        r"group_size",
    )
    bad(
        "args",
        f"hqq-group-{_gname}",
        lambda g=_gv: qfast.hqq(rand(), 4, group_size=g),
        _exc,
        r"group_size",
    )
    bad(
        "args",
        f"awq-group-{_gname}",
        lambda g=_gv: qfast.awq(rand(), rand((32, 8)), 4, group_size=g),
        _exc,
        r"group_size",
    )
good(
    "args",
    "quantize-group-huge",
    lambda: qfast.quantize(rand(), 4, group_size=2**40),
    qt_ok((4, 8)),
)
good(
    "args",
    "quantize-group-npint",
    lambda: qfast.quantize(rand(), 4, group_size=np.int32(3)),
    qt_ok((4, 8)),
)
good(
    "args",
    "quantize-group-ragged",
    lambda: qfast.quantize(rand((4, 7)), 4, group_size=3),
    qt_ok((4, 7)),
)
bad(
    "args",
    "quantize-group-and-axis",
    lambda: qfast.quantize(rand(), 4, group_size=4, axis=0),
    ValueError,
)
bad(
    "args",
    "hqq-group-not-divisor",
    lambda: qfast.hqq(rand(), 4, group_size=3),
    ValueError,
    r"divide",
)
bad(
    "args",
    "awq-group-not-divisor",
    lambda: qfast.awq(rand(), rand((32, 8)), 4, group_size=3),
    ValueError,
    r"divide",
)
good("args", "rtn-group-minus1", lambda: qfast.rtn(rand(), 4, group_size=-1), qt_ok((4, 8)))

AXIS_VALUES: dict[str, tuple[Any, Any]] = {
    "float": (1.0, TypeError),
    "str": ("0", TypeError),
    "bool": (True, TypeError),
}
for _aname, (_av, _exc) in AXIS_VALUES.items():
    bad(
        "args",
        f"quantize-axis-{_aname}",
        lambda a=_av: qfast.quantize(rand(), 8, axis=a),
        _exc,
        r"axis",
    )
good("args", "quantize-axis-neg1", lambda: qfast.quantize(rand(), 8, axis=-1), qt_ok((4, 8)))

SCALE_VALUES: dict[str, tuple[Any, Any]] = {
    "zero": (0.0, ValueError),
    "nan": (float("nan"), ValueError),
    "inf": (float("inf"), ValueError),
    "str": ("0.1", TypeError),
    "object": (np.array([0.1], object), TypeError),
    "wrong-shape": (np.ones(3, F32), ValueError),
    "one-nan-of-many": (np.array([0.1, 0.1, np.nan, 0.1], F32), ValueError),
}
for _sname, (_sv, _exc) in SCALE_VALUES.items():
    bad(
        "args",
        f"quantize-scale-{_sname}",
        lambda s=_sv: qfast.quantize(rand(), 8, axis=0, scale=s),
        _exc,
        r"scale",
    )
good(
    "args",
    "quantize-scale-list",
    lambda: qfast.quantize(rand(), 8, axis=0, scale=[0.1] * 4),
    qt_ok((4, 8)),
)
ZP_VALUES: dict[str, tuple[Any, Any]] = {
    "256": (256, ValueError),
    "nan": (float("nan"), ValueError),
    "str": ("1", TypeError),
    "wrong-shape": (np.zeros(3, np.int32), ValueError),
}
for _zname, (_zv, _exc) in ZP_VALUES.items():
    bad(
        "args",
        f"quantize-zero-point-{_zname}",
        lambda z=_zv: qfast.quantize(rand(), 8, axis=0, symmetric=False, scale=0.1, zero_point=z),
        _exc,
        r"zero_point",
    )
bad(
    "args",
    "quantize-zero-point-16-4bit",
    lambda: qfast.quantize(rand(), 4, symmetric=False, scale=0.1, zero_point=16),
    ValueError,
)
bad(
    "args",
    "quantize-zero-point-symmetric",
    lambda: qfast.quantize(rand(), 8, scale=0.1, zero_point=0),
    ValueError,
)
bad(
    "args",
    "quantize-zero-point-no-scale",
    lambda: qfast.quantize(rand(), 8, symmetric=False, zero_point=3),
    ValueError,
)
bad(
    "args",
    "quantize-scale-asym-no-zero-point",
    lambda: qfast.quantize(rand(), 8, symmetric=False, scale=0.1),
    ValueError,
)

# symmetric: bools only (issue 11 item 9)
SYM_VALUES = {"str-no": "no", "int1": 1, "none": None, "list": []}
SYM_FUNCS: dict[str, Callable[[Any], Any]] = {
    "quantize": lambda s: qfast.quantize(rand(), 8, symmetric=s),
    "rtn": lambda s: qfast.rtn(rand(), 4, group_size=4, symmetric=s),
    "gptq": lambda s: qfast.gptq(rand(), rand((32, 8)), group_size=4, symmetric=s),
    "awq": lambda s: qfast.awq(rand(), rand((32, 8)), 4, group_size=4, symmetric=s),
}
for _fname, _f in SYM_FUNCS.items():
    for _sname, _sv in SYM_VALUES.items():
        if _fname != "quantize" and _sname not in ("str-no", "int1"):
            continue
        bad(
            "args",
            f"{_fname}-symmetric-{_sname}",
            lambda f=_f, s=_sv: f(s),
            TypeError,
            r"symmetric",
        )
good(
    "args",
    "quantize-symmetric-npbool",
    lambda: qfast.quantize(rand(), 8, symmetric=np.bool_(False)),
    lambda q: (qt_ok((4, 8))(q), that(not q.signed, "np.False_ gave a symmetric grid")),
)

# dequantize's dtype and out=
DEQ_DTYPES_BAD = {
    "int8": np.int8,
    "float64": np.float64,
    "none": None,
    "nonsense": "nonsense",
    "list": [F32],
}
for _dname, _dv in DEQ_DTYPES_BAD.items():
    bad(
        "args",
        f"dequantize-dtype-{_dname}",
        lambda d=_dv: qfast.quantize(rand(), 8).dequantize(d),
        TypeError,
    )
for _dname, _dv in {"str-float16": "float16", "bfloat16": "bf16"}.items():
    good(
        "args",
        f"dequantize-dtype-{_dname}",
        lambda d=_dv: qfast.quantize(rand(), 8).dequantize(bf16() if d == "bf16" else d),
        array_ok((4, 8)),
    )


def _deq_out(out: Any, dtype: Any = F32) -> Any:
    return qfast.dequantize(qfast.quantize(rand(), 4, group_size=4), dtype, out=out)


OUT_BAD: dict[str, tuple[Callable[[], Any], Any]] = {
    "wrong-dtype": (lambda: np.empty((4, 8), np.float64), TypeError),
    "wrong-shape": (lambda: np.empty((8, 4), F32), ValueError),
    "readonly": (
        lambda: (lambda a: (a.setflags(write=False), a)[1])(np.empty((4, 8), F32)),
        ValueError,
    ),
    "unaligned": (lambda: unaligned(np.zeros((4, 8), F32)), ValueError),
    "list": (lambda: [[0.0] * 8] * 4, TypeError),
}
for _oname, (_ov, _exc) in OUT_BAD.items():
    bad("args", f"dequantize-out-{_oname}", lambda o=_ov: _deq_out(o()), _exc, r"out")
either(
    "args",
    "dequantize-out-bigendian",
    lambda: (lambda o: (_deq_out(o), o.astype(F32))[1])(np.zeros((4, 8), ">f4")),
    close_to(lambda: qfast.quantize(rand(), 4, group_size=4).dequantize(), 1e-7),
)
good(
    "args",
    "dequantize-out-ok",
    lambda: _deq_out(np.full((4, 8), np.nan, F32)),
    close_to(lambda: qfast.quantize(rand(), 4, group_size=4).dequantize(), 1e-7),
)

# other numeric arguments
bad(
    "args", "gptq-damp-zero", lambda: qfast.gptq(rand(), rand((32, 8)), damp=0), ValueError, r"damp"
)
bad(
    "args",
    "gptq-damp-nan",
    lambda: qfast.gptq(rand(), rand((32, 8)), damp=float("nan")),
    ValueError,
)
either(
    "args",
    "gptq-damp-huge",
    lambda: qfast.gptq(rand(), rand((32, 8)), group_size=4, damp=1e30),
    qt_ok((4, 8)),
)
bad(
    "args",
    "gptq-block-size-zero",
    lambda: qfast.gptq(rand(), rand((32, 8)), block_size=0),
    ValueError,
)
bad(
    "args",
    "gptq-block-size-float",
    lambda: qfast.gptq(rand(), rand((32, 8)), block_size=1.5),
    TypeError,
)
bad(
    "args",
    "gptq-static-groups-no-group",
    lambda: qfast.gptq(rand(), rand((32, 8)), group_size=None, static_groups=True),
    ValueError,
)
bad(
    "args",
    "awq-n-grid-zero",
    lambda: qfast.awq(rand(), rand((32, 8)), group_size=4, n_grid=0),
    ValueError,
)
bad(
    "args",
    "awq-max-shrink-zero",
    lambda: qfast.awq(rand(), rand((32, 8)), group_size=4, max_shrink=0),
    ValueError,
)
bad(
    "args",
    "awq-max-shrink-nan",
    lambda: qfast.awq(rand(), rand((32, 8)), group_size=4, max_shrink=float("nan")),
    ValueError,
)
for _pname, _pv in {
    "lp_norm-zero": {"lp_norm": 0},
    "lp_norm-nan": {"lp_norm": float("nan")},
    "beta-inf": {"beta": float("inf")},
    "iters-neg": {"iters": -1},
    "progress-not-callable": {"progress": 3},
}.items():
    bad("args", f"hqq-{_pname}", lambda kw=_pv: qfast.hqq(rand(), 4, group_size=4, **kw), DOC)

# thread counts (issue 11 item 3): refuse absurd values, or clamp them with a warning, fast.


def _set_threads(n: Any) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qfast.set_num_threads(n)
    return n, qfast.get_num_threads(), [str(w.message) for w in caught]


def _clamped(res: Any) -> None:
    n, got, caught = res
    assert got < n, f"set_num_threads({n}) accepted {got} threads"
    assert caught, f"set_num_threads({n}) clamped to {got} without a warning"


for _tname, _tv in {"5000": 5000, "100000": 100000, "2pow40": 2**40}.items():
    # An OS failure to start the threads (under the workers' address-space limit) is not a refusal.
    _add(
        Case(
            f"threads-{_tname}",
            "args",
            lambda n=_tv: _set_threads(n),
            (ValueError,),
            r"(?s)^(?!.*os error)",
            _clamped,
            either=True,
        )
    )
for _tname, (_tv, _exc) in {
    "zero": (0, ValueError),
    "neg": (-1, DOC),
    "float": (1.5, TypeError),
    "str": ("2", TypeError),
    "none": (None, TypeError),
}.items():
    bad("args", f"threads-{_tname}", lambda n=_tv: qfast.set_num_threads(n), _exc)


def _import_with_env(**env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, **env)
    code = "import qfast; print(qfast.get_num_threads())"
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full,
        capture_output=True,
        text=True,
        timeout=PROCESS_SUB_TIMEOUT,
    )


def _import_ok_or_clean_error(max_threads: int | None = None) -> Callable[[Any], None]:
    """The import either works (with at most ``max_threads`` threads) or fails with a Python
    exception of a documented type; never a panic."""

    def check(p: subprocess.CompletedProcess[str]) -> None:
        assert "panicked" not in p.stderr and "PanicException" not in p.stderr, p.stderr[-400:]
        if p.returncode == 0:
            if max_threads is not None:
                n = int(p.stdout.split()[-1])
                assert n <= max_threads, f"{n} threads"
                assert p.stderr.strip(), f"{n} threads without a warning"
            return
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        assert re.match(
            r"(ImportError|ValueError|TypeError|qfast\.QfastError|RuntimeError)", last
        ), f"exit {p.returncode}: {last or '(no stderr)'}"

    return check


good(
    "args",
    "env-threads-100000",
    lambda: _import_with_env(QFAST_NUM_THREADS="100000"),
    _import_ok_or_clean_error(99999),
)
for _ev in ("0", "abc"):
    good(
        "args",
        f"env-threads-{_ev or 'empty'}",
        lambda v=_ev: _import_with_env(QFAST_NUM_THREADS=v),
        _import_ok_or_clean_error(),
    )
good(
    "args",
    "env-isa-bogus",
    lambda: _import_with_env(QFAST_ISA="bogus"),
    lambda p: (
        (p.returncode != 0 and "scalar" in p.stderr)
        or pytest.fail(f"QFAST_ISA=bogus: exit {p.returncode}, stderr {p.stderr[-300:]!r}")
    ),
)


# ============================================================================================
# QTensor dicts: missing and corrupt keys, wrong shapes and dtypes

PREFIX = "blk7.ffn."


def _base_dict(kind: str = "asym") -> dict[str, np.ndarray]:
    w = rand((4, 8))
    if kind == "asym":
        q = qfast.quantize(w, 4, group_size=4, symmetric=False)
    elif kind == "gptq":
        q = qfast.gptq(w, rand((64, 8), seed=3), group_size=4, act_order=True)
        assert q.g_idx is not None
    elif kind == "sym8":
        q = qfast.quantize(w, 8, axis=0)
    elif kind == "3bit":
        q = qfast.quantize(w, 3, group_size=4, symmetric=False)
    elif kind == "3bit-v1":  # format version 1: one code a byte, int32 zero points
        q = qfast.quantize(w, 3, group_size=4, symmetric=False)
        header = {
            "format_version": 1,
            "shape": list(q.shape),
            "bits": 3,
            "signed": False,
            "axis": None,
            "group_size": 4,
            "meta": {},
        }
        return {
            PREFIX + "qfast_header": np.frombuffer(json.dumps(header).encode(), np.uint8).copy(),
            PREFIX + "data": qfast.unpack(q.data, q.shape[-1], 3, signed=False),
            PREFIX + "scale": q.scale,
            PREFIX + "zero_point": q.zero_point,
        }
    else:
        raise AssertionError(kind)
    return q.to_dict(prefix=PREFIX)


def _with_header(d: dict[str, np.ndarray], header: Any) -> dict[str, np.ndarray]:
    out = dict(d)
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    out[PREFIX + "qfast_header"] = np.frombuffer(raw, np.uint8).copy()
    return out


def _header(d: dict[str, np.ndarray]) -> dict[str, Any]:
    return json.loads(bytes(d[PREFIX + "qfast_header"]))


def _edit_header(kind: str, **changes: Any) -> Callable[[], Any]:
    def run() -> Any:
        d = _base_dict(kind)
        h = _header(d)
        for k, v in changes.items():
            if v is _DROP:
                h.pop(k, None)
            else:
                h[k] = v
        return QTensor.from_dict(_with_header(d, h), prefix=PREFIX)

    return run


_DROP = object()
NAMES_TENSOR = re.escape(PREFIX.rstrip("."))  # errors name the tensor


def _dict_case(name: str, fn: Callable[[], Any], exc: Any = (ValueError, TypeError)) -> None:
    bad("qtdict", name, fn, exc, NAMES_TENSOR)


for _raw_name, _raw in {
    "not-json": b"\xff\xfe{",
    "truncated-json": b'{"format_version": 1, "sh',
    "list": b"[1, 2]",
    "null": b"null",
}.items():
    _dict_case(
        f"header-{_raw_name}",
        lambda raw=_raw: QTensor.from_dict(_with_header(_base_dict(), raw), prefix=PREFIX),
    )
for _key in ("format_version", "shape", "bits", "signed", "axis", "group_size"):
    _dict_case(f"header-missing-{_key}", _edit_header("asym", **{_key: _DROP}))
for _vname, _vv in {"99": 99, "str": "1", "none": None}.items():
    _dict_case(f"header-version-{_vname}", _edit_header("asym", format_version=_vv))
HEADER_BAD: dict[str, dict[str, Any]] = {
    "shape-str": {"shape": "4x8"},
    "shape-float": {"shape": [4.5, 8]},
    "shape-negative": {"shape": [-4, 8]},
    "shape-wrong": {"shape": [8, 4]},
    "bits-str": {"bits": "4"},
    "bits-float": {"bits": 4.5},
    "bits-wrong": {"bits": 8},
    "signed-str": {"signed": "no"},
    "signed-wrong": {"signed": True},
    "axis-and-group": {"axis": 0},
    "group-str": {"group_size": "4"},
    "group-wrong": {"group_size": 8},
    "group-float": {"group_size": 4.5},
    "meta-str": {"meta": "x"},
}
for _hname, _changes in HEADER_BAD.items():
    _dict_case(f"header-{_hname}", _edit_header("asym", **_changes))


def _edit_arrays(kind: str, **changes: Any) -> Callable[[], Any]:
    def run() -> Any:
        d = _base_dict(kind)
        for k, v in changes.items():
            if v is _DROP:
                del d[PREFIX + k]
            else:
                d[PREFIX + k] = v(d[PREFIX + k]) if callable(v) else v
        return QTensor.from_dict(d, prefix=PREFIX)

    return run


ARRAY_BAD: dict[str, tuple[str, dict[str, Any]]] = {
    "missing-data": ("asym", {"data": _DROP}),
    "missing-scale": ("asym", {"scale": _DROP}),
    "missing-zero-point": ("asym", {"zero_point": _DROP}),  # item 5
    "missing-g-idx": ("gptq", {"g_idx": _DROP}),  # item 5
    "missing-zero-point-gptq": ("gptq", {"zero_point": _DROP}),
    "data-float": ("asym", {"data": lambda a: a.astype(F32)}),
    "data-bool": ("asym", {"data": lambda a: a.astype(bool)}),
    "data-shape": ("asym", {"data": lambda a: a.reshape(-1)}),
    "data-transposed": ("sym8", {"data": lambda a: np.ascontiguousarray(a.T)}),
    "scale-shape": ("asym", {"scale": lambda a: a.reshape(-1)}),
    "scale-nan": ("asym", {"scale": lambda a: with_value(a, (1, 1), np.nan)}),  # item 6
    "scale-inf": ("asym", {"scale": lambda a: with_value(a, (0, 0), np.inf)}),  # item 6
    "scale-str": ("asym", {"scale": lambda a: a.astype(str)}),
    "zero-point-shape": ("asym", {"zero_point": lambda a: a.reshape(-1)}),
    "zero-point-nan": (
        "asym",
        {"zero_point": lambda a: with_value(a.astype(F32), (0,) * a.ndim, np.nan)},
    ),
    "zero-point-on-symmetric": ("sym8", {"zero_point": lambda a: None}),
    "g-idx-short": ("gptq", {"g_idx": lambda a: a[:-1]}),
    "g-idx-out-of-range": ("gptq", {"g_idx": lambda a: with_value(a, 3, 7)}),
    "g-idx-negative": ("gptq", {"g_idx": lambda a: with_value(a, 0, -1)}),
    "g-idx-float": ("gptq", {"g_idx": lambda a: a.astype(F32) + 0.5}),
    # item 6: only one-a-byte (version 1) codes can leave their width's range
    "codes-out-of-range-3bit": ("3bit-v1", {"data": lambda a: with_value(a, (1, 2), 100)}),
}


def _zp_on_symmetric() -> Any:
    d = _base_dict("sym8")
    d[PREFIX + "zero_point"] = np.zeros((4, 1), np.int32)
    q = QTensor.from_dict(d, prefix=PREFIX)
    return q


for _aname, (_kind, _changes) in ARRAY_BAD.items():
    if _aname == "zero-point-on-symmetric":
        continue
    _dict_case(_aname, _edit_arrays(_kind, **_changes))
either("qtdict", "zero-point-on-symmetric", _zp_on_symmetric, qt_ok((4, 8)))
bad("qtdict", "not-a-dict", lambda: QTensor.from_dict([1, 2, 3]), (TypeError, ValueError))
bad("qtdict", "none", lambda: QTensor.from_dict(None), (TypeError, ValueError))
bad(
    "qtdict",
    "prefix-int",
    lambda: QTensor.from_dict(_base_dict(), prefix=5),
    (TypeError, ValueError),
)
bad(
    "qtdict",
    "wrong-prefix",
    lambda: QTensor.from_dict(_base_dict(), prefix="other."),
    ValueError,
    r"other",
)
good(
    "qtdict",
    "round-trip-gptq",
    lambda: (
        QTensor.from_dict(_base_dict("gptq"), prefix=PREFIX),
        QTensor.from_dict(_base_dict("gptq"), prefix=PREFIX),
    ),
    same_pair,
)
good("qtdict", "extra-header-keys", _edit_header("asym", comment="hello"), qt_ok((4, 8)))

# QTensors built from arrays: codes out of range and NaN scales are refused once, wherever
# a QTensor is built (item 6), and dequantize / linear never read past their arrays.
for _bits in (3, 7):
    bad(
        "qtdict",
        f"qtensor-code-out-of-range-{_bits}bit",
        lambda b=_bits: QTensor(
            np.full((4, 8), 1 << b, np.uint8),
            (4, 8),
            b,
            False,
            np.ones((4, 1), F32),
            np.zeros((4, 1), np.int32),
            axis=0,
        ),
        ValueError,
        r"(?i)code",
    )
    bad(
        "qtdict",
        f"qtensor-signed-code-out-of-range-{_bits}bit",
        lambda b=_bits: QTensor(
            np.full((4, 8), -(1 << (b - 1)) - 1, np.int8),
            (4, 8),
            b,
            True,
            np.ones((4, 1), F32),
            axis=0,
        ),
        ValueError,
        r"(?i)code",
    )
bad(
    "qtdict",
    "from-codes-out-of-range",
    lambda: QTensor.from_codes(np.full((4, 8), 9, np.int8), 4, True, np.ones((4, 1), F32), axis=0),
    ValueError,
)
bad(
    "qtdict",
    "qtensor-scale-nan",
    lambda: QTensor(
        np.zeros((4, 8), np.int8), (4, 8), 8, True, np.full((4, 1), np.nan, F32), axis=0
    ),
    ValueError,
    r"(?i)scale",
)
bad(
    "qtdict",
    "qtensor-scale-inf",
    lambda: QTensor(
        np.zeros((4, 8), np.int8), (4, 8), 8, True, np.full((4, 1), np.inf, F32), axis=0
    ),
    ValueError,
    r"(?i)scale",
)
bad(
    "qtdict",
    "qtensor-data-float",
    lambda: QTensor(np.zeros((4, 8), F32), (4, 8), 8, True, F32(1)),
    TypeError,
)
bad(
    "qtdict",
    "qtensor-g-idx-no-group",
    lambda: QTensor(
        np.zeros((4, 8), np.int8),
        (4, 8),
        8,
        True,
        np.ones((4, 1), F32),
        axis=0,
        g_idx=np.zeros(8, np.int32),
    ),
    ValueError,
)


def _reassigned(field: str, value: Any) -> Callable[[], Any]:
    def run() -> Any:
        q = qfast.quantize(rand(), 4, group_size=4, symmetric=False)
        setattr(q, field, value)
        return q.dequantize()

    return run


for _fname, _fv in {
    "bits": 9,
    "scale": np.ones((4, 1), F32),
    "data": np.zeros((4, 8), np.uint8),
}.items():
    bad("qtdict", f"reassigned-{_fname}", _reassigned(_fname, _fv), (ValueError, TypeError))
bad(
    "qtdict",
    "dequantize-g-idx-out-of-range",
    lambda: QTensor.from_codes(
        np.zeros((4, 8), np.uint8),
        4,
        False,
        np.ones((4, 2), F32),
        np.zeros((4, 2), np.int32),
        group_size=4,
        g_idx=np.array([0, 0, 0, 0, 1, 1, 1, 9], np.int32),
    ).dequantize(),
    ValueError,
)
bad(
    "qtdict",
    "dequantize-g-idx-negative",
    lambda: QTensor.from_codes(
        np.zeros((4, 8), np.uint8),
        4,
        False,
        np.ones((4, 2), F32),
        np.zeros((4, 2), np.int32),
        group_size=4,
        g_idx=np.array([0, 0, 0, 0, 1, 1, 1, -1], np.int32),
    ).dequantize(),
    ValueError,
)


# ============================================================================================
# matmul_int8 / linear: shapes, K limits, foreign QTensors


def i8(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, shape).astype(np.int8)


SHAPES_BAD = {
    "2d-mismatch": ((2, 3), (4, 5)),
    "1d-mismatch": ((3,), (4,)),
    "1d-2d-mismatch": ((3,), (4, 2)),
    "2d-1d-mismatch": ((2, 3), (4,)),
    "batch-mismatch": ((2, 3, 4), (3, 4, 5)),
    "batch-k-mismatch": ((2, 3, 4), (2, 5, 5)),
}
for _sname, (_sa, _sb) in SHAPES_BAD.items():
    bad(
        "matmul",
        f"matmul-shape-{_sname}",
        lambda a=_sa, b=_sb: qfast.matmul_int8(i8(a), i8(b)),
        ValueError,
    )
for _sname, (_sa, _sb) in {
    "1d-1d": ((5,), (5,)),
    "1d-2d": ((5,), (5, 3)),
    "2d-1d": ((4, 5), (5,)),
    "batch": ((2, 4, 5), (2, 5, 3)),
    "broadcast": ((3, 1, 4, 5), (2, 5, 3)),
    "uint8": ((4, 5), (5, 3)),
}.items():
    good(
        "matmul",
        f"matmul-ok-{_sname}",
        lambda a=_sa, b=_sb, u=(_sname == "uint8"): (
            qfast.matmul_int8(i8(a).view(np.uint8) if u else i8(a), i8(b, 1)),
            np.matmul(
                (i8(a).view(np.uint8) if u else i8(a)).astype(np.int64), i8(b, 1).astype(np.int64)
            ).astype(np.int32),
        ),
        same_pair,
    )


def _k_case(k: int, a_dtype: Any, a_val: int, b_val: int) -> Callable[[], Any]:
    def run() -> Any:
        a = np.full((2, k), a_val, a_dtype)
        b = np.full((k, 3), b_val, np.int8)
        return qfast.matmul_int8(a, b), np.full((2, 3), a_val * b_val * k, np.int64).astype(
            np.int32
        )

    return run


good("matmul", "matmul-k-limit-uint8", _k_case(65793, np.uint8, 255, -128), same_pair)
good("matmul", "matmul-k-limit-int8", _k_case(131071, np.int8, -128, -128), same_pair)
bad("matmul", "matmul-k-over-uint8", _k_case(65794, np.uint8, 255, -128), ValueError, r"(?i)split")
bad("matmul", "matmul-k-over-int8", _k_case(131072, np.int8, -128, -128), ValueError, r"(?i)split")
bad(
    "matmul",
    "matmul-k-over-1d",
    lambda: qfast.matmul_int8(np.ones(200000, np.int8), np.ones(200000, np.int8)),
    ValueError,
    r"(?i)split",
)
bad(
    "matmul",
    "matmul-k-over-batch",
    lambda: qfast.matmul_int8(np.ones((2, 1, 140000), np.int8), np.ones((2, 140000, 1), np.int8)),
    ValueError,
    r"(?i)split",
)
bad(
    "matmul",
    "matmul-object",
    lambda: qfast.matmul_int8(np.ones((2, 2), object), i8((2, 2))),
    TypeError,
)
bad("matmul", "matmul-none", lambda: qfast.matmul_int8(None, i8((2, 2))), TypeError)


def _w(bits: int = 8, **kw: Any) -> QTensor:
    if not kw:
        kw = {"axis": 0}
    return qfast.quantize(rand((3, 8), seed=1), bits, **kw)


def _ref_linear(x: np.ndarray, w: Callable[[], QTensor]) -> Callable[[], np.ndarray]:
    """``x @ dequantize(w()).T`` in float64, computed when the check runs."""
    return lambda: x.astype(np.float64) @ w().dequantize().astype(np.float64).T


bad("linear", "w-ndarray", lambda: qfast.linear(rand(), rand((3, 8))), TypeError)
bad("linear", "w-dict", lambda: qfast.linear(rand(), _w().to_dict()), TypeError)
bad("linear", "w-none", lambda: qfast.linear(rand(), None), TypeError)
bad("linear", "w-1d", lambda: qfast.linear(rand(), qfast.quantize(rand((8,)), 8)), ValueError)
bad("linear", "w-3d", lambda: qfast.linear(rand(), qfast.quantize(rand((2, 3, 8)), 8)), ValueError)
bad("linear", "w-axis1", lambda: qfast.linear(rand(), _w(8, axis=1)), ValueError, r"axis")
bad("linear", "x-features", lambda: qfast.linear(rand((4, 7)), _w()), ValueError, r"features")
bad("linear", "x-features-1d", lambda: qfast.linear(rand((9,)), _w()), ValueError)
bad("linear", "x-list-of-str", lambda: qfast.linear(["a"] * 8, _w()), TypeError)
bad(
    "linear",
    "bias-shape",
    lambda: qfast.linear(rand(), _w(), np.zeros(4, F32)),
    ValueError,
    r"bias",
)
bad(
    "linear",
    "bias-2d",
    lambda: qfast.linear(rand(), _w(), np.zeros((1, 3), F32)),
    ValueError,
    r"bias",
)
bad("linear", "bias-inf", lambda: qfast.linear(rand(), _w(), np.array([0, np.inf, 0])), ValueError)
bad("linear", "bias-str", lambda: qfast.linear(rand(), _w(), "abc"), DOC)
bad(
    "linear",
    "compute-bad",
    lambda: qfast.linear(rand(), _w(), compute="fp32"),
    ValueError,
    r"compute",
)
bad(
    "linear",
    "compute-none",
    lambda: qfast.linear(rand(), _w(), compute=None),
    (ValueError, TypeError),
)
for _bits, _mode in (
    (2, "int8"),
    (3, "float"),
    (5, "int8"),
    (6, "float"),
    (8, "int8"),
    (4, "float"),
):
    if True:
        good(
            "linear",
            f"ok-{_bits}bit-{_mode}",
            lambda b=_bits, m=_mode: qfast.linear(
                rand(), _w(b, group_size=4, symmetric=False), compute=m
            ),
            close_to(
                _ref_linear(rand(), lambda b=_bits: _w(b, group_size=4, symmetric=False)),
                0.05 if _bits > 2 else 0.2,
            ),
        )
good(
    "linear",
    "foreign-hqq",
    lambda: qfast.linear(rand(), qfast.hqq(rand((3, 8), seed=1), 4, group_size=4)),
    close_to(_ref_linear(rand(), lambda: qfast.hqq(rand((3, 8), seed=1), 4, group_size=4))),
)
good(
    "linear",
    "foreign-gptq-g-idx",
    lambda: qfast.linear(
        rand(), qfast.gptq(rand((3, 8), seed=1), rand((64, 8), seed=3), group_size=4)
    ),
    close_to(
        _ref_linear(
            rand(), lambda: qfast.gptq(rand((3, 8), seed=1), rand((64, 8), seed=3), group_size=4)
        )
    ),
)
good(
    "linear",
    "foreign-gguf-q4-1",
    lambda: qfast.linear(
        rand((4, 64)), qg.to_qtensor(qg.quantize(rand((3, 64), seed=1), "Q4_1"), "Q4_1")
    ),
    close_to(
        _ref_linear(
            rand((4, 64)), lambda: qg.to_qtensor(qg.quantize(rand((3, 64), seed=1), "Q4_1"), "Q4_1")
        )
    ),
)
good(
    "linear",
    "foreign-per-tensor",
    lambda: qfast.linear(rand(), qfast.quantize(rand((3, 8), seed=1), 8)),
    close_to(_ref_linear(rand(), lambda: qfast.quantize(rand((3, 8), seed=1), 8))),
)
good(
    "linear",
    "foreign-float16-scale",
    lambda: qfast.linear(
        rand(), (lambda q: (setattr(q, "scale", q.scale.astype(np.float16)), q)[1])(_w())
    ),
    close_to(_ref_linear(rand(), _w), 0.05),
)


def _w_codes(bits: int, code: int, signed: bool = False) -> QTensor:
    return QTensor(
        np.full((3, 8), code, np.int8 if signed else np.uint8),
        (3, 8),
        bits,
        signed,
        np.ones((3, 1), F32),
        None if signed else np.zeros((3, 1), np.int32),
        axis=0,
    )


bad(
    "linear",
    "foreign-code-out-of-range",
    lambda: qfast.linear(rand(), _w_codes(3, 100)),
    ValueError,
)
bad(
    "linear",
    "foreign-signed-code-out-of-range",
    lambda: qfast.linear(rand(), _w_codes(5, -100, True)),
    ValueError,
)
bad(
    "linear",
    "foreign-nan-scale",
    lambda: qfast.linear(
        rand(),
        QTensor(
            np.zeros((3, 8), np.int8), (3, 8), 8, True, np.array([[1], [np.nan], [1]], F32), axis=0
        ),
    ),
    ValueError,
)
bad(
    "linear",
    "foreign-g-idx-out-of-range",
    lambda: qfast.linear(
        rand(),
        QTensor.from_codes(
            np.zeros((3, 8), np.uint8),
            4,
            False,
            np.ones((3, 2), F32),
            np.zeros((3, 2), np.int32),
            group_size=4,
            g_idx=np.array([0, 0, 0, 0, 1, 1, 1, 5], np.int32),
        ),
    ),
    ValueError,
)


def _w_extra_group() -> QTensor:
    """A g_idx weight whose scale has a group more than g_idx uses."""
    codes = np.arange(24, dtype=np.int8).reshape(3, 8) - 12
    scale = np.array([[0.5, 1.0, 2.0]] * 3, F32)
    return QTensor(
        codes, (3, 8), 8, True, scale, group_size=4, g_idx=np.array([0, 0, 0, 0, 1, 1, 1, 1])
    )


either(
    "linear",
    "foreign-scale-extra-group",
    lambda: qfast.linear(rand(), _w_extra_group()),
    close_to(_ref_linear(rand(), _w_extra_group)),
)
# Item 7: float compute with large finite inputs is an error naming the row, or finite.
either(
    "linear",
    "float-overflow",
    lambda: qfast.linear(np.full((2, 8), 3e38, F32), _w(8), compute="float"),
    lambda y: np.isfinite(y).all() or pytest.fail(f"non-finite output {y}"),
    (ValueError,),
)
either(
    "linear",
    "int8-overflow",
    lambda: qfast.linear(np.full((2, 8), 3e38, F32), _w(8)),
    lambda y: np.isfinite(y).all() or pytest.fail(f"non-finite output {y}"),
    (ValueError,),
)
# A deep K with 8-bit per-channel weights: every product 127 * 127, the INT32 sum would pass 2^31.
either(
    "linear",
    "int8-deep-k",
    lambda: qfast.linear(
        np.ones((1, 140000), F32), qfast.quantize(np.ones((2, 140000), F32), 8, axis=0)
    ),
    close_to(lambda: np.full((1, 2), 140000.0), 1e-3),
    (ValueError,),
)
either(
    "linear",
    "int8-deep-k-asym",
    lambda: qfast.linear(
        np.ones((1, 70000), F32),
        qfast.quantize(np.ones((2, 70000), F32), 8, axis=0, symmetric=False),
    ),
    close_to(lambda: np.full((1, 2), 70000.0), 1e-3),
    (ValueError,),
)


# ============================================================================================
# gptq / awq / hqq / Hessian: sizes, NaN, degenerate inputs


bad("algo", "gptq-x-width", lambda: qfast.gptq(rand(), rand((32, 7))), ValueError)
bad("algo", "gptq-x-0d", lambda: qfast.gptq(rand(), np.float32(1)), ValueError)
bad("algo", "gptq-x-empty", lambda: qfast.gptq(rand(), np.zeros((0, 8), F32)), ValueError)
bad("algo", "gptq-no-x-no-h", lambda: qfast.gptq(rand()), ValueError)
bad(
    "algo", "gptq-x-and-h", lambda: qfast.gptq(rand(), rand((32, 8)), hessian=np.eye(8)), ValueError
)
bad("algo", "gptq-h-shape", lambda: qfast.gptq(rand(), hessian=np.eye(7)), ValueError)
bad(
    "algo",
    "gptq-h-nan",
    lambda: qfast.gptq(rand(), hessian=with_value(np.eye(8), (2, 2), np.nan)),
    ValueError,
)
bad(
    "algo",
    "gptq-h-inf",
    lambda: qfast.gptq(rand(), hessian=with_value(np.eye(8), (2, 3), np.inf)),
    ValueError,
)
bad("algo", "gptq-h-str", lambda: qfast.gptq(rand(), hessian="H"), DOC)
bad(
    "algo",
    "gptq-h-other-width",
    lambda: qfast.gptq(rand(), hessian=qfast.Hessian(7).add(rand((9, 7)))),
    ValueError,
)
bad(
    "algo", "gptq-h-empty-hessian", lambda: qfast.gptq(rand(), hessian=qfast.Hessian(8)), ValueError
)
bad(
    "algo",
    "gptq-h-negative-definite",
    lambda: qfast.gptq(rand(), hessian=-np.eye(8)),
    ValueError,
    r"(?i)positive definite",
)
bad("algo", "gptq-x-overflow", lambda: qfast.gptq(rand(), np.full((32, 8), 1e30, F32)), ValueError)
bad("algo", "gptq-w-1d", lambda: qfast.gptq(rand((8,)), rand((32, 8))), ValueError)
bad("algo", "gptq-w-empty", lambda: qfast.gptq(np.zeros((0, 8), F32), rand((32, 8))), ValueError)
for _name, _fn in {
    "gptq-h-zero": lambda: qfast.gptq(rand(), hessian=np.zeros((8, 8)), group_size=4),
    "gptq-h-rank1": lambda: qfast.gptq(rand(), hessian=np.ones((8, 8)), group_size=4),
    "gptq-w-zero": lambda: qfast.gptq(np.zeros((4, 8), F32), rand((32, 8)), group_size=4),
    "gptq-x-zero": lambda: qfast.gptq(rand(), np.zeros((32, 8), F32), group_size=4),
    "gptq-x-dead-column": lambda: qfast.gptq(
        rand(), with_value(rand((32, 8)), (slice(None), 3), 0), group_size=4
    ),
    "gptq-x-one-row": lambda: qfast.gptq(rand(), rand((1, 8)), group_size=4),
    "gptq-w-one-row": lambda: qfast.gptq(rand((1, 8)), rand((32, 8)), group_size=4),
    "gptq-w-one-column": lambda: qfast.gptq(rand((4, 1)), rand((32, 1)), group_size=4),
    "gptq-one-by-one": lambda: qfast.gptq(rand((1, 1)), rand((32, 1)), group_size=None),
    "gptq-group-ragged": lambda: qfast.gptq(rand((4, 7)), rand((32, 7)), group_size=3),
    "gptq-static-ragged": lambda: qfast.gptq(
        rand((4, 7)), rand((32, 7)), group_size=3, static_groups=True
    ),
    "gptq-block-1": lambda: qfast.gptq(rand(), rand((32, 8)), group_size=4, block_size=1),
    "gptq-w-tiny": lambda: qfast.gptq(rand() * 1e-40, rand((32, 8)), group_size=4),
    "gptq-w-huge": lambda: qfast.gptq(rand() * 1e37, rand((32, 8)), group_size=4),
    "gptq-2bit": lambda: qfast.gptq(rand(), rand((32, 8)), bits=2, group_size=4),
}.items():
    shape = (
        (1, 8)
        if "w-one-row" in _name
        else (4, 1)
        if "one-column" in _name
        else (1, 1)
        if "one-by-one" in _name
        else (4, 7)
        if "ragged" in _name
        else (4, 8)
    )
    either("algo", _name, _fn, qt_ok(shape))

for _vname, _v in {"3.7": 3.7, "str": "128", "bool": True, "8.0": 8.0}.items():
    bad("algo", f"hessian-n-{_vname}", lambda v=_v: qfast.Hessian(v), TypeError)  # item 9
for _v in (0, -1):
    bad("algo", f"hessian-n-{_v}", lambda v=_v: qfast.Hessian(v), ValueError)
good(
    "algo",
    "hessian-n-npint",
    lambda: qfast.Hessian(np.int64(8)).add(rand()).matrix(),
    array_ok((8, 8), F32),
)
bad("algo", "hessian-add-width", lambda: qfast.Hessian(8).add(rand((4, 7))), ValueError)
bad("algo", "hessian-add-0d", lambda: qfast.Hessian(8).add(np.float32(1)), ValueError)
bad("algo", "hessian-add-str", lambda: qfast.Hessian(8).add("x"), TypeError)
bad("algo", "hessian-matrix-empty", lambda: qfast.Hessian(8).matrix(), ValueError)
good(
    "algo",
    "hessian-add-empty",
    lambda: qfast.Hessian(8).add(np.zeros((0, 8), F32)).n_samples,
    lambda n: n == 0 or pytest.fail(f"n_samples {n}"),
)

bad("algo", "awq-x-width", lambda: qfast.awq(rand(), rand((32, 7)), group_size=4), ValueError)
bad(
    "algo",
    "awq-x-empty",
    lambda: qfast.awq(rand(), np.zeros((0, 8), F32), group_size=4),
    ValueError,
)
bad("algo", "awq-w-empty-list", lambda: qfast.awq([], rand((32, 8)), group_size=4), ValueError)
bad(
    "algo",
    "awq-w-mismatched-group",
    lambda: qfast.awq([rand(), rand((4, 4))], rand((32, 8)), group_size=4),
    ValueError,
)
bad(
    "algo",
    "awq-w-none",
    lambda: qfast.awq(None, rand((32, 8)), group_size=4),
    (TypeError, ValueError),
)
bad(
    "algo",
    "awq-w-int-list",
    lambda: qfast.awq([[1, 2], [3, 4]], rand((32, 2)), group_size=None),
    (TypeError, ValueError),  # a list is a list of weights: each must be 2-D
)
bad(
    "algo",
    "awq-w-nan-in-group",
    lambda: qfast.awq([rand(), with_value(rand(), (3, 7), np.nan)], rand((32, 8)), group_size=4),
    ValueError,
    nan_match(np.nan, (3, 7), "W[1]"),
)


def _raise_key_error(done: int, total: int) -> None:
    raise KeyError("stop")


# A progress callback's exception aborts the run and reaches the caller as it is.
bad(
    "algo",
    "gptq-progress-raises",
    lambda: qfast.gptq(rand(), rand((32, 8)), group_size=4, progress=_raise_key_error),
    KeyError,
    "stop",
)
bad(
    "algo",
    "awq-progress-raises",
    lambda: qfast.awq(rand(), rand((32, 8)), group_size=4, progress=_raise_key_error),
    KeyError,
    "stop",
)
bad(
    "algo",
    "hqq-progress-raises",
    lambda: qfast.hqq(rand(), group_size=4, progress=_raise_key_error),
    KeyError,
    "stop",
)


def _awq_ok(shape: tuple[int, ...]) -> Callable[[Any], None]:
    def check(r: Any) -> None:
        assert isinstance(r, qfast.AWQResult), type(r)
        for q in r.qweights:
            qt_ok(shape)(q)
        assert np.isfinite(r.scales).all() and (r.scales > 0).all(), r.scales

    return check


for _name, _fn, _shape in (
    ("awq-w-zero", lambda: qfast.awq(np.zeros((4, 8), F32), rand((32, 8)), group_size=4), (4, 8)),
    ("awq-x-zero", lambda: qfast.awq(rand(), np.zeros((32, 8), F32), group_size=4), (4, 8)),
    ("awq-x-one-token", lambda: qfast.awq(rand(), rand((1, 8)), group_size=4), (4, 8)),
    ("awq-w-one-column", lambda: qfast.awq(rand((4, 1)), rand((32, 1)), group_size=None), (4, 1)),
    (
        "awq-n-grid-1-noclip",
        lambda: qfast.awq(rand(), rand((32, 8)), group_size=4, n_grid=1, clip=False),
        (4, 8),
    ),
    (
        "awq-x-column-zero",
        lambda: qfast.awq(rand(), with_value(rand((32, 8)), (slice(None), 2), 0), group_size=4),
        (4, 8),
    ),
    (
        "awq-w-3d-is-a-group",
        lambda: qfast.awq(rand((2, 4, 8)), rand((32, 8)), group_size=4),
        (4, 8),
    ),
    ("awq-w-tiny", lambda: qfast.awq(rand() * 1e-38, rand((32, 8)), group_size=4), (4, 8)),
    (
        "awq-x-huge-values",
        lambda: qfast.awq(rand(), np.full((32, 8), 3e38, F32), group_size=4),
        (4, 8),
    ),
):
    either("algo", _name, _fn, _awq_ok(_shape))

for _name, _fn, _shape in (
    ("hqq-zero", lambda: qfast.hqq(np.zeros((4, 8), F32), 4, group_size=4), (4, 8)),
    ("hqq-constant", lambda: qfast.hqq(np.full((4, 8), 3.0, F32), 4, group_size=4), (4, 8)),
    ("hqq-one-element", lambda: qfast.hqq(np.ones((1, 1), F32), 4, group_size=None), (1, 1)),
    ("hqq-1d", lambda: qfast.hqq(rand((8,)), 4, group_size=4), (8,)),
    ("hqq-tiny", lambda: qfast.hqq(rand() * 1e-38, 4, group_size=4), (4, 8)),
    ("hqq-huge", lambda: qfast.hqq(rand() * 1e37, 4, group_size=4), (4, 8)),
    ("hqq-2bit", lambda: qfast.hqq(rand(), 2, group_size=4), (4, 8)),
):
    either("algo", _name, _fn, qt_ok(_shape))
bad(
    "algo",
    "hqq-range-overflow",
    lambda: qfast.hqq(np.array([[-3e38, 3e38]], F32), 4, group_size=None),
    ValueError,
)
for _name, _fn, _shape in (
    ("rtn-zero", lambda: qfast.rtn(np.zeros((4, 8), F32), 4, group_size=4), (4, 8)),
    (
        "gptq-range-overflow",
        lambda: qfast.gptq(np.array([[-3e38, 3e38]], F32), np.ones((4, 2), F32)),
        (1, 2),
    ),
    ("rtn-one-column", lambda: qfast.rtn(rand((4, 1)), 4, group_size=4), (4, 1)),
    ("rtn-huge-values", lambda: qfast.rtn(np.full((4, 8), 3e38, F32), 4, group_size=4), (4, 8)),
    (
        "rtn-range-overflow",
        lambda: qfast.rtn(np.array([[-3e38, 3e38]], F32), 4, group_size=None),
        (1, 2),
    ),
    (
        "quantize-range-overflow",
        lambda: qfast.quantize(np.array([-3e38, 3e38], F32), 8, symmetric=False),
        (2,),
    ),
    ("quantize-subnormal", lambda: qfast.quantize(np.full(4, 1e-45, F32), 8), (4,)),
    ("quantize-max-float", lambda: qfast.quantize(np.full(4, 3.4028235e38, F32), 8), (4,)),
    ("quantize-float64-overflow", lambda: qfast.quantize(np.full(4, 1e300), 8), (4,)),
):
    either("algo", _name, _fn, qt_ok(_shape))


# ============================================================================================
# gguf: rows, truncated bytes, dtypes, types, corrupt files

bad("gguf", "quantize-rows-33", lambda: qg.quantize(rand((2, 33)), "Q4_0"), ValueError, r"32")
good(
    "gguf",
    "quantize-bfloat16",
    lambda: (
        qg.quantize(rand((2, 64)).astype(bf16()), "Q8_0"),
        qg.quantize(rand((2, 64)).astype(bf16()).astype(F32), "Q8_0"),
    ),
    same_pair,
)  # item 9
for _k, (_tname, (_tv, _exc)) in enumerate(
    {
        "unknown-name": ("Q9_9", ValueError),
        "unknown-id": (999, ValueError),
        "none": (None, TypeError),
        "float": (2.0, TypeError),
        "iq": ("IQ4_XS", ValueError),
        "id-9-q8_1": (9, ValueError),
    }.items()
):
    bad("gguf", f"quantize-type-{_tname}", lambda t=_tv: qg.quantize(rand((2, 256)), t), _exc)
    if _tname in ("unknown-name", "float"):
        bad(
            "gguf",
            f"dequantize-type-{_tname}",
            lambda t=_tv: qg.dequantize(np.zeros((2, 34), np.uint8), t),
            _exc,
        )
        bad("gguf", f"type-info-{_tname}", lambda t=_tv: qg.type_info(t), _exc)
for _k, _tname in enumerate(
    (
        "Q4_0",
        "Q4_1",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "IQ4_NL",
        "IQ4_XS",
    )
):
    if _k % 4 == 1:
        bad(
            "gguf",
            f"dequantize-truncated-{_tname}",
            lambda t=_tname: qg.dequantize(
                np.zeros((2, qg.type_info(t).type_size - 1), np.uint8), t
            ),
            ValueError,
        )
        continue
    if _k % 4:
        continue
    either(
        "gguf",
        f"dequantize-random-bytes-{_tname}",
        lambda t=_tname: qg.dequantize(
            np.random.default_rng(5).integers(
                0, 256, (3, qg.type_info(t).type_size * 2), dtype=np.uint8
            ),
            t,
        ),
        array_ok((3, 2 * qg.type_info(_tname).block_size), np.float32),
    )
bad(
    "gguf",
    "dequantize-int8-data",
    lambda: qg.dequantize(np.zeros((2, 34), np.int8), "Q8_0"),
    TypeError,
)
bad(
    "gguf",
    "dequantize-float-data",
    lambda: qg.dequantize(np.zeros((2, 34), F32), "Q8_0"),
    TypeError,
)
bad(
    "gguf",
    "dequantize-shape-mismatch",
    lambda: qg.dequantize(np.zeros((2, 34), np.uint8), "Q8_0", (3, 32)),
    ValueError,
)
bad(
    "gguf",
    "dequantize-shape-negative",
    lambda: qg.dequantize(np.zeros((2, 34), np.uint8), "Q8_0", (-2, -32)),
    ValueError,
)
either(
    "gguf",
    "dequantize-empty",
    lambda: qg.dequantize(np.zeros((0, 34), np.uint8), "Q8_0"),
    array_ok((0, 32), np.float32),
)
either(
    "gguf",
    "dequantize-nan-scale",
    lambda: qg.dequantize(
        np.concatenate([np.full((1, 2), 0xFF, np.uint8), np.ones((1, 32), np.uint8)], 1), "Q8_0"
    ),
    array_ok((1, 32), np.float32),
)
bad(
    "gguf",
    "to-qtensor-q5-0",
    lambda: qg.to_qtensor(np.zeros((2, 22), np.uint8), "Q5_0"),
    ValueError,
)
bad(
    "gguf",
    "to-qtensor-truncated",
    lambda: qg.to_qtensor(np.zeros((2, 33), np.uint8), "Q8_0"),
    ValueError,
)
bad(
    "gguf",
    "to-qtensor-shape",
    lambda: qg.to_qtensor(np.zeros((2, 34), np.uint8), "Q8_0", (4, 32)),
    ValueError,
)
bad(
    "gguf",
    "to-qtensor-nan-scale",
    lambda: qg.to_qtensor(
        np.concatenate([np.full((1, 2), 0xFF, np.uint8), np.ones((1, 32), np.uint8)], 1), "Q8_0"
    ),
    ValueError,
)  # item 6
bad("gguf", "from-qtensor-ndarray", lambda: qg.from_qtensor(np.zeros((2, 32), np.int8)), TypeError)
bad("gguf", "from-qtensor-dict", lambda: qg.from_qtensor(_w().to_dict()), TypeError)
bad(
    "gguf",
    "from-qtensor-axis",
    lambda: qg.from_qtensor(qfast.quantize(rand((2, 32)), 8, axis=0)),
    ValueError,
)
bad(
    "gguf",
    "from-qtensor-3bit",
    lambda: qg.from_qtensor(qfast.quantize(rand((2, 32)), 3, group_size=32)),
    ValueError,
)
bad(
    "gguf",
    "from-qtensor-not-float16-scale",
    lambda: qg.from_qtensor(qfast.quantize(rand((2, 32)), 8, group_size=32)),
    ValueError,
)
bad(
    "gguf",
    "from-qtensor-g-idx",
    lambda: qg.from_qtensor(qfast.gptq(rand((2, 32)), rand((64, 32)), group_size=32, bits=4)),
    ValueError,
)
bad(
    "gguf",
    "from-qtensor-hqq-zero",
    lambda: qg.from_qtensor(qfast.hqq(rand((2, 32)), 4, group_size=32)),
    ValueError,
)
good(
    "gguf",
    "q4-1-zero-block-round-trip",  # item 12
    lambda: (
        qg.from_qtensor(qg.to_qtensor(np.zeros((1, 20), np.uint8), "Q4_1"))[0],
        np.zeros((1, 20), np.uint8),
    ),
    same_pair,
)
bad(
    "gguf",
    "dot-row-mismatch",
    lambda: qg.dot(qg.quantize(rand((2, 64)), "Q4_0"), qg.quantize(rand((32,)), "Q8_0")),
    ValueError,
)
bad(
    "gguf",
    "dot-x-2d",
    lambda: qg.dot(qg.quantize(rand((2, 64)), "Q4_0"), qg.quantize(rand((2, 64)), "Q8_0")),
    ValueError,
)
bad("gguf", "dot-float", lambda: qg.dot(rand((2, 64)), rand((64,))), (TypeError, ValueError))

# --- files


def _gguf_bytes() -> bytes:
    """A small valid GGUF file: two metadata keys, a Q4_0 and an F32 tensor."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.gguf"
        x = rand((4, 64))
        qg.save(
            p,
            {"t": (qg.quantize(x, "Q4_0"), "Q4_0", x.shape), "f": np.arange(4, dtype=F32)},
            {"general.architecture": "test", "k": 5},
        )
        return p.read_bytes()


def _gguf_layout(b: bytes) -> dict[str, Any]:
    """Offsets in the file ``_gguf_bytes`` writes (kv and tensor-info sections)."""
    pos = 24
    kv = []
    n_kv = struct.unpack_from("<Q", b, 16)[0]
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    for _ in range(n_kv):
        start = pos
        klen = struct.unpack_from("<Q", b, pos)[0]
        pos += 8 + klen
        vtype = struct.unpack_from("<I", b, pos)[0]
        pos += 4
        if vtype == 8:
            vlen = struct.unpack_from("<Q", b, pos)[0]
            kv.append((start, pos - 4, pos))
            pos += 8 + vlen
        else:
            kv.append((start, pos - 4, pos))
            pos += sizes[vtype]
    infos = []
    n_t = struct.unpack_from("<Q", b, 8)[0]
    for _ in range(n_t):
        start = pos
        nlen = struct.unpack_from("<Q", b, pos)[0]
        pos += 8 + nlen
        ndims = struct.unpack_from("<I", b, pos)[0]
        info = {"start": start, "ndims": pos, "dims": pos + 4}
        pos += 4 + 8 * ndims
        info["type"] = pos
        info["offset"] = pos + 4
        pos += 12
        infos.append(info)
    return {"kv": kv, "tensors": infos, "end_of_infos": pos}


def _patch(b: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(b)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _corrupt(kind: str) -> bytes:
    b = _gguf_bytes()
    lay = _gguf_layout(b)
    t0, t1 = lay["tensors"]
    key0_len, key0_type, key0_value = lay["kv"][0]
    end_infos = lay["end_of_infos"]
    data_start = -(-end_infos // 32) * 32
    t1_off = struct.unpack_from("<Q", b, t1["offset"])[0]
    return {
        "empty": lambda: b"",
        "magic-only": lambda: b[:4],
        "3-bytes": lambda: b"GGU",
        "bad-magic": lambda: b"GGML" + b[4:],
        "text": lambda: b"hello, this is not a gguf file at all\n" * 4,
        "truncated-12": lambda: b[:12],
        "truncated-header": lambda: b[:20],
        "truncated-kv": lambda: b[: key0_value + 3],
        "truncated-infos": lambda: b[: t1["dims"] + 2],
        "truncated-before-data": lambda: b[:end_infos],
        "truncated-data": lambda: b[: data_start + t1_off + 10],  # inside the last tensor
        "truncated-first-tensor": lambda: b[: data_start + 50],
        "truncated-half": lambda: b[: len(b) // 2],
        "version-1": lambda: _patch(b, 4, "<I", 1),
        "version-99": lambda: _patch(b, 4, "<I", 99),
        "version-0": lambda: _patch(b, 4, "<I", 0),
        "big-endian": lambda: _patch(b, 4, ">I", 3),
        "n-tensors-absurd": lambda: _patch(b, 8, "<Q", 2**62),
        "n-tensors-max": lambda: _patch(b, 8, "<Q", 2**64 - 1),
        "n-tensors-extra": lambda: _patch(b, 8, "<Q", 3),
        "n-kv-absurd": lambda: _patch(b, 16, "<Q", 2**62),
        "n-kv-extra": lambda: _patch(b, 16, "<Q", 3),
        "key-length-absurd": lambda: _patch(b, key0_len, "<Q", 2**62),
        "key-length-max": lambda: _patch(b, key0_len, "<Q", 2**64 - 1),
        "value-type-unknown": lambda: _patch(b, key0_type, "<I", 99),
        "value-type-array": lambda: _patch(b, key0_type, "<I", 9),
        "string-length-absurd": lambda: _patch(b, key0_value, "<Q", 2**62),
        "tensor-name-length-absurd": lambda: _patch(b, t0["start"], "<Q", 2**62),
        "n-dims-100": lambda: _patch(b, t0["ndims"], "<I", 100),
        "n-dims-0": lambda: _patch(b, t0["ndims"], "<I", 0),
        "dim-huge": lambda: _patch(b, t0["dims"], "<Q", 2**40),
        "dim-overflow": lambda: _patch(b, t0["dims"] + 8, "<Q", 2**62),
        "dim-zero": lambda: _patch(b, t0["dims"], "<Q", 0),
        "dim-not-block-multiple": lambda: _patch(b, t0["dims"], "<Q", 33),
        "type-unknown": lambda: _patch(b, t0["type"], "<I", 99),
        "type-q8-1": lambda: _patch(b, t0["type"], "<I", 9),
        "type-bigger": lambda: _patch(b, t0["type"], "<I", 8),
        "offset-past-end": lambda: _patch(b, t0["offset"], "<Q", 2**40),
        "offset-max": lambda: _patch(b, t0["offset"], "<Q", 2**64 - 1),
        "offset-misaligned": lambda: _patch(b, t1["offset"], "<Q", 1),
        "offset-near-end": lambda: _patch(b, t1["offset"], "<Q", len(b) - end_infos),
        "garbage-after-magic": lambda: (
            b[:4] + bytes(np.random.default_rng(1).integers(0, 256, 200, np.uint8))
        ),
    }[kind]()


CORRUPT_MUST_FAIL = {
    "empty",
    "magic-only",
    "3-bytes",
    "bad-magic",
    "text",
    "truncated-12",
    "truncated-header",
    "truncated-kv",
    "truncated-infos",
    "truncated-before-data",
    "truncated-data",
    "truncated-half",
    "truncated-first-tensor",
    "version-99",
    "version-0",
    "big-endian",
    "n-tensors-absurd",
    "n-tensors-max",
    "n-kv-absurd",
    "key-length-absurd",
    "key-length-max",
    "string-length-absurd",
    "tensor-name-length-absurd",
    "dim-huge",
    "dim-overflow",
    "type-unknown",
    "offset-past-end",
    "offset-max",
    "garbage-after-magic",
    "n-tensors-extra",
    "n-kv-extra",
    "n-dims-100",
    "value-type-unknown",
    "type-bigger",
    "offset-near-end",
    "version-1",
    "dim-not-block-multiple",
}
CORRUPT_KINDS = (
    "empty bad-magic text truncated-header truncated-kv truncated-infos truncated-data "
    "truncated-first-tensor version-1 version-99 big-endian n-tensors-absurd n-kv-absurd "
    "n-kv-extra key-length-max value-type-unknown value-type-array string-length-absurd "
    "tensor-name-length-absurd n-dims-100 dim-huge dim-overflow dim-not-block-multiple "
    "type-unknown type-q8-1 type-bigger "
    "offset-past-end offset-max offset-misaligned garbage-after-magic"
).split()


def _load_all(path: Path) -> Any:
    """``qg.load`` and every tensor dequantized: what a user does with a file."""
    f = qg.load(path)
    out = {}
    for name, t in f.tensors.items():
        out[name] = t.dequantize()
    return out


def _corrupt_setup(kind: str) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        p = tmp / "bad.gguf"
        p.write_bytes(_corrupt(kind))
        return p

    return setup


for _kind in CORRUPT_KINDS:
    if _kind in CORRUPT_MUST_FAIL:
        bad(
            "gguf",
            f"load-{_kind}",
            _load_all,
            (ValueError, OSError, MemoryError),
            setup=_corrupt_setup(_kind),
        )
    else:
        either(
            "gguf",
            f"load-{_kind}",
            _load_all,
            None,
            (ValueError, OSError, MemoryError),
            setup=_corrupt_setup(_kind),
        )
for _seed in range(2):

    def _flip_setup(tmp: Path, seed: int = _seed) -> Path:
        b = bytearray(_gguf_bytes())
        rng = np.random.default_rng(100 + seed)
        end = _gguf_layout(bytes(b))["end_of_infos"]
        for i in rng.integers(4, end, 3):
            b[i] = int(rng.integers(0, 256))
        p = tmp / "flipped.gguf"
        p.write_bytes(bytes(b))
        return p

    either(
        "gguf",
        f"load-random-flips-{_seed}",
        _load_all,
        None,
        (ValueError, OSError, MemoryError),
        setup=_flip_setup,
    )
bad("gguf", "load-missing", lambda tmp: qg.load(tmp / "nope.gguf"), FileNotFoundError)
bad("gguf", "load-directory", lambda tmp: qg.load(tmp), OSError)


def _shrink_under_map(tmp: Path) -> Any:
    """Item 4: the file shrinks (to one page) while it is mapped, then its tensor is read."""
    p = tmp / "m.gguf"
    x = rand((256, 256))
    qg.save(p, {"t": (qg.quantize(x, "Q8_0"), "Q8_0", x.shape)}, SAVE_OK)
    try:
        f = qg.load(p)
        os.truncate(p, 4096)
        return {k: t.dequantize() for k, t in f.tensors.items()}
    finally:
        p.unlink()


either(
    "gguf",
    "load-shrunk-under-map",
    _shrink_under_map,
    None,
    (ValueError, OSError, qfast.QfastError),
)

SAVE_OK = {"general.architecture": "test"}


def _save(tmp: Path, tensors: Any, metadata: Any = None, **kw: Any) -> None:
    """``qg.save`` into ``tmp``; a file it writes is removed again (only leftovers count)."""
    qg.save(tmp / "out.gguf", tensors, SAVE_OK if metadata is None else metadata, **kw)
    (tmp / "out.gguf").unlink()


bad(
    "gguf",
    "save-wrong-bytes",
    lambda tmp: _save(tmp, {"t": (np.zeros((4, 17), np.uint8), "Q4_0", (4, 32))}),
    ValueError,
    r"'t'",
)
bad(
    "gguf",
    "save-shape-mismatch",
    lambda tmp: _save(tmp, {"t": (qg.quantize(rand((4, 64)), "Q4_0"), "Q4_0", (4, 32))}),
    ValueError,
)
bad(
    "gguf",
    "save-unknown-type",
    lambda tmp: _save(tmp, {"t": (np.zeros((4, 18), np.uint8), "Q9_9", (4, 32))}),
    ValueError,
)
either(
    "gguf",
    "save-int-array",
    lambda tmp: _save(tmp, {"t": np.zeros(4, np.int64)}),
    None,
    (TypeError, ValueError),
)
bad("gguf", "save-name-int", lambda tmp: _save(tmp, {5: np.zeros(4, F32)}), (TypeError, ValueError))
bad(
    "gguf",
    "save-metadata-dict-value",
    lambda tmp: _save(tmp, {}, {**SAVE_OK, "k": {"a": 1}}),
    (TypeError, ValueError),
)
bad(
    "gguf",
    "save-metadata-mixed-list",
    lambda tmp: _save(tmp, {}, {**SAVE_OK, "k": [1, "a"]}),
    (TypeError, ValueError),
)
bad(
    "gguf",
    "save-metadata-huge-int",
    lambda tmp: _save(tmp, {}, {**SAVE_OK, "k": 2**70}),
    (TypeError, ValueError),
)
bad(
    "gguf",
    "save-block-count-negative",
    lambda tmp: _save(
        tmp, {}, {"general.architecture": "llama", "llama.block_count": -1}, check=False
    ),
    ValueError,
    r"block_count",
)  # item 9
bad(
    "gguf",
    "save-missing-required",
    lambda tmp: _save(tmp, {}, {"general.architecture": "llama"}),
    ValueError,
)
bad("gguf", "save-alignment-3", lambda tmp: _save(tmp, {}, alignment=3), ValueError)
bad(
    "gguf",
    "save-value-type-bad",
    lambda tmp: _save(
        tmp, {}, {**SAVE_OK, "k": 300}, value_types={"k": __import__("gguf").GGUFValueType.UINT8}
    ),
    ValueError,
)
bad("gguf", "save-to-proc", lambda: qg.save("/proc/qfast-sweep.gguf", {}, SAVE_OK), OSError)
bad("gguf", "save-to-directory", lambda tmp: qg.save(tmp, {}, SAVE_OK), OSError)
bad("gguf", "save-missing-folder", lambda tmp: qg.save(tmp / "no" / "x.gguf", {}, SAVE_OK), OSError)
bad(
    "gguf",
    "save-parent-is-file",
    lambda tmp: qg.save(tmp / "file" / "x.gguf", {}, SAVE_OK),
    OSError,
    setup=lambda tmp: ((tmp / "file").write_bytes(b"x"), tmp)[1],
)


def _save_mode(tmp: Path) -> int:
    """Item 10: the file gets the umask's mode."""
    old = os.umask(0o022)
    try:
        qg.save(tmp / "m.gguf", {}, SAVE_OK)
        return (tmp / "m.gguf").stat().st_mode & 0o777
    finally:
        (tmp / "m.gguf").unlink(missing_ok=True)
        os.umask(old)


good(
    "gguf",
    "save-mode-umask",
    _save_mode,
    lambda m: m == 0o644 or pytest.fail(f"mode {oct(m)}, want 0o644"),
)


# ============================================================================================
# the command line


def _st_save(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    import safetensors.numpy

    safetensors.numpy.save_file(tensors, str(path), metadata)


def _model(tmp: Path, name: str = "in.safetensors", **extra: np.ndarray) -> Path:
    p = tmp / name
    _st_save(p, {"w": rand((16, 32)), "b": rand((16,)), **extra})
    return p


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from qfast.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _one_line_error(res: tuple[int, str, str]) -> None:
    code, _, err = res
    lines = err.strip().splitlines()
    assert code == 2, f"exit status {code}, stderr {err[-300:]!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err[-300:]!r}"
    assert "Traceback" not in err


def _exit_ok(res: tuple[int, str, str]) -> None:
    code, _, err = res
    assert code == 0, f"exit status {code}: {err[-300:]!r}"


def cli_bad(name: str, setup: Callable[[Path], Any], argv: Callable[[Any], list[Any]]) -> None:
    good("cli", name, lambda ctx: _cli(argv(ctx)), _one_line_error, setup=setup)


def _cli_cleaned(argv: list[Any], output: Path) -> tuple[int, str, str]:
    """``_cli(argv)``, then the output it wrote is removed (only leftovers count)."""
    res = _cli(argv)
    output.unlink(missing_ok=True)
    return res


def cli_ok(name: str, setup: Callable[[Path], Any], argv: Callable[[Any], list[Any]]) -> None:
    good("cli", name, lambda ctx: _cli_cleaned(argv(ctx), ctx[1]), _exit_ok, setup=setup)


def _in_out(tmp: Path) -> tuple[Path, Path]:
    """A model in ``tmp`` and an output path in ``tmp/out`` (which exists, empty)."""
    (tmp / "out").mkdir()
    return _model(tmp), tmp / "out" / "q.safetensors"


def _with_file(content: bytes) -> Callable[[Path], tuple[Path, Path]]:
    def setup(tmp: Path) -> tuple[Path, Path]:
        (tmp / "out").mkdir()
        p = tmp / "in.safetensors"
        p.write_bytes(content)
        return p, tmp / "out" / "q.safetensors"

    return setup


def _truncated_model(frac: float) -> Callable[[Path], tuple[Path, Path]]:
    def setup(tmp: Path) -> tuple[Path, Path]:
        src, dst = _in_out(tmp)
        b = src.read_bytes()
        src.write_bytes(b[: int(len(b) * frac)])
        return src, dst

    return setup


def _header_model(header: bytes, length: int | None = None) -> Callable[[Path], tuple[Path, Path]]:
    n = len(header) if length is None else length
    return _with_file(struct.pack("<Q", n) + header + b"\x00" * 64)


for _cmd in ("quantize", "inspect"):

    def _args(ctx: Any, cmd: str = _cmd) -> list[Any]:
        src, dst = ctx
        return [cmd, src, dst] if cmd == "quantize" else [cmd, src]

    cli_bad(
        f"{_cmd}-missing-input",
        lambda tmp: (tmp / "nope.safetensors", tmp / "q.safetensors"),
        _args,
    )
    if _cmd == "inspect":
        cli_bad(f"{_cmd}-input-truncated", _truncated_model(0.5), _args)
        cli_bad(f"{_cmd}-header-not-json", _header_model(b"{not json"), _args)
        continue
    cli_bad(
        f"{_cmd}-input-directory",
        lambda tmp: ((tmp / "d").mkdir() or tmp / "d", tmp / "q.safetensors"),
        _args,
    )
    cli_bad(f"{_cmd}-input-text", _with_file(b"not a safetensors file\n" * 10), _args)
    for _frac in (0.1, 0.99):
        cli_bad(f"{_cmd}-input-truncated-{_frac}", _truncated_model(_frac), _args)
    cli_bad(f"{_cmd}-header-length-absurd", _header_model(b"{}", 2**62), _args)
    cli_bad(f"{_cmd}-header-not-json", _header_model(b"{not json"), _args)
    cli_bad(
        f"{_cmd}-header-bad-dtype",
        _header_model(b'{"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}'),
        _args,
    )
    cli_bad(
        f"{_cmd}-header-offsets-past-end",
        _header_model(b'{"w": {"dtype": "F32", "shape": [2000], "data_offsets": [0, 8000]}}'),
        _args,
    )
    cli_bad(
        f"{_cmd}-header-shape-mismatch",
        _header_model(b'{"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 8]}}'),
        _args,
    )
    cli_bad(
        f"{_cmd}-input-is-proc-file",
        lambda tmp: (Path("/proc/self/status"), tmp / "q.safetensors"),
        _args,
    )


def _collision(tmp: Path) -> tuple[Path, Path]:
    """Item 8: ``a`` is quantized to ``a.data``, ``a.scale``..., and ``a.data`` is a tensor too."""
    (tmp / "out").mkdir()
    p = tmp / "in.safetensors"
    _st_save(p, {"a": rand((4, 8)), "a.data": np.arange(4, dtype=np.int8)})
    return p, tmp / "out" / "q.safetensors"


def _collide(ctx: tuple[Path, Path]) -> tuple[int, str, str, Any]:
    """Runs ``qfast quantize``; on success reads the output back (``qfast.load``, where there
    is one) and removes it."""
    code, out, err = _cli(["quantize", *ctx])
    loaded: Any = None
    if code == 0 and ctx[1].exists():
        try:
            loaded = sorted(qfast.load(ctx[1])) if hasattr(qfast, "load") else "no qfast.load"
        except Exception as e:
            loaded = f"unreadable: {type(e).__name__}: {e}"
        ctx[1].unlink()
    return code, out, err, loaded


def _collision_ok(res: Any) -> None:
    """Either refused (one line, status 2), or written so that every tensor reads back."""
    code, out, err, loaded = res
    if code == 2:
        _one_line_error((code, out, err))
        return
    assert code == 0, f"exit status {code}: {err[-200:]!r}"
    assert isinstance(loaded, list) and len(loaded) == 2, (
        f"exit 0, but the output reads back as {loaded}"
    )


good("cli", "quantize-name-collision", _collide, _collision_ok, setup=_collision)
good(
    "cli",
    "quantize-name-collision-scale",
    _collide,
    _collision_ok,
    setup=lambda tmp: (
        (tmp / "out").mkdir(),
        _st_save(tmp / "in.safetensors", {"a.scale": np.zeros(2, F32), "a": rand((4, 8))}),
        (tmp / "in.safetensors", tmp / "out" / "q.safetensors"),
    )[2],
)


def _nan_model(tmp: Path) -> tuple[Path, Path]:
    (tmp / "out").mkdir()
    p = tmp / "in.safetensors"
    _st_save(p, {"w": with_value(rand((4, 8)), (2, 5), np.nan)})
    return p, tmp / "out" / "q.safetensors"


cli_bad("quantize-nan-weight", _nan_model, lambda ctx: ["quantize", *ctx])
cli_bad(
    "quantize-already-quantized",
    lambda tmp: (
        (tmp / "out").mkdir(),
        _st_save(tmp / "in.safetensors", _base_dict()),
        (tmp / "in.safetensors", tmp / "out" / "q.safetensors"),
    )[2],
    lambda ctx: ["quantize", *ctx],
)
for _oname, _out in {
    "proc": "/proc/q.safetensors",
    "sys": "/sys/q.safetensors",
    "proc-itself": "/proc",
    "dev-null-dir": "/dev/null/q.safetensors",
}.items():
    cli_bad(
        f"quantize-output-{_oname}",
        lambda tmp: _model(tmp),
        lambda src, o=_out: ["quantize", src, o],
    )
cli_bad(
    "quantize-output-directory",
    lambda tmp: (_model(tmp), (tmp / "out.safetensors").mkdir())[0],
    lambda src: ["quantize", src, src.parent / "out.safetensors"],
)
cli_bad(
    "quantize-output-missing-folder",
    lambda tmp: _model(tmp),
    lambda src: ["quantize", src, src.parent / "no" / "q.safetensors"],
)
cli_bad(
    "quantize-output-parent-is-file",
    lambda tmp: (_model(tmp), (tmp / "f").write_bytes(b"x"))[0],
    lambda src: ["quantize", src, src.parent / "f" / "q.safetensors"],
)
cli_bad("quantize-output-empty-name", lambda tmp: _model(tmp), lambda src: ["quantize", src, ""])

FLAGS_BAD = {
    "bits-1": ["--bits", "1"],
    "bits-9": ["--bits", "9"],
    "bits-word": ["--bits", "four"],
    "group-0": ["--group-size", "0"],
    "group-word": ["--group-size", "abc"],
    "axis-2": ["--axis", "2"],
    "axis-neg3": ["--axis", "-3"],
    "axis-word": ["--axis", "x"],
    "axis-and-group": ["--axis", "0", "--group-size", "4"],
    "per-tensor-and-axis": ["--per-tensor", "--axis", "0"],
    "threads-0": ["--threads", "0"],
    "threads-word": ["--threads", "many"],
    "unknown-flag": ["--foo"],
    "asymmetric-value": ["--asymmetric=yes"],
}
for _fname, _flags in FLAGS_BAD.items():
    cli_bad(f"quantize-flag-{_fname}", _in_out, lambda ctx, fl=_flags: ["quantize", *ctx, *fl])


def _cli_mode(ctx: tuple[Path, Path]) -> int:
    """Item 10: the output gets the umask's mode."""
    old = os.umask(0o022)
    try:
        code, _, err = _cli(["quantize", *ctx])
        assert code == 0, err
        return ctx[1].stat().st_mode & 0o777
    finally:
        ctx[1].unlink(missing_ok=True)
        os.umask(old)


good(
    "cli",
    "quantize-output-mode-umask",
    _cli_mode,
    lambda m: that(m == 0o644, f"mode {oct(m)}, want 0o644"),
    setup=_in_out,
)
cli_ok(
    "quantize-group-bigger-than-row",
    _in_out,
    lambda ctx: ["quantize", *ctx, "--group-size", "1000"],
)
good(
    "cli",
    "quantize-threads-100000",
    lambda ctx: _cli_cleaned(["quantize", *ctx, "--threads", "100000"], ctx[1]),
    lambda r: _exit_ok(r) if r[0] == 0 else _one_line_error(r),
    setup=_in_out,
)
cli_bad("quantize-missing-output-arg", _in_out, lambda ctx: ["quantize", ctx[0]])
cli_bad("no-command", lambda tmp: None, lambda ctx: [])
cli_bad("unknown-command", lambda tmp: None, lambda ctx: ["frobnicate"])
for _fname, _flags in {
    "bits-3": ["--bits", "3"],
    "repeat-0": ["--repeat", "0"],
    "threads-word": ["--threads", "x"],
    "unknown": ["--model", "bert"],
}.items():
    cli_bad(f"demo-flag-{_fname}", lambda tmp: None, lambda ctx, fl=_flags: ["demo", *fl])


def _inspect_corrupt_qtensor(
    change: Callable[[dict[str, np.ndarray]], None],
) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        d = _base_dict()
        change(d)
        p = tmp / "q.safetensors"
        _st_save(p, d, {"format": "qfast"})
        return p

    return setup


for _iname, _change in {
    "header-not-json": lambda d: d.__setitem__(
        PREFIX + "qfast_header", np.frombuffer(b"\xff{", np.uint8).copy()
    ),
    "header-list": lambda d: d.__setitem__(
        PREFIX + "qfast_header", np.frombuffer(b"[1]", np.uint8).copy()
    ),
    "header-no-bits": lambda d: d.__setitem__(
        PREFIX + "qfast_header",
        np.frombuffer(
            json.dumps({k: v for k, v in _header(d).items() if k != "bits"}).encode(), np.uint8
        ).copy(),
    ),
    "missing-zero-point": lambda d: d.pop(PREFIX + "zero_point"),
    "version-99": lambda d: d.__setitem__(
        PREFIX + "qfast_header",
        np.frombuffer(json.dumps({**_header(d), "format_version": 99}).encode(), np.uint8).copy(),
    ),
}.items():
    cli_bad(
        f"inspect-qtensor-{_iname}", _inspect_corrupt_qtensor(_change), lambda p: ["inspect", p]
    )


# --- the real command in a process: exit status, stderr, interrupts


def _run_cli(
    argv: list[Any], cwd: Path, timeout: float = PROCESS_SUB_TIMEOUT
) -> tuple[int, str, str]:
    p = subprocess.run(
        [sys.executable, "-m", "qfast.cli", *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p.returncode, p.stdout, p.stderr


good(
    "cli",
    "process-missing-input",
    lambda tmp: _run_cli(["quantize", "nope.safetensors", "q.safetensors"], tmp),
    _one_line_error,
)
good(
    "cli",
    "process-output-proc",
    lambda src: _run_cli(["quantize", src, "/proc/q.safetensors"], src.parent),
    _one_line_error,
    setup=_model,
)  # item 11
good(
    "cli",
    "process-output-sys",
    lambda src: _run_cli(["quantize", src, "/sys/q.safetensors"], src.parent),
    _one_line_error,
    setup=_model,
)  # item 11
good(
    "cli",
    "process-bad-flag",
    lambda src: _run_cli(["quantize", src, "o.safetensors", "--bits", "x"], src.parent),
    _one_line_error,
    setup=_model,
)
good(
    "cli",
    "process-threads-100000",
    lambda ctx: (
        _run_cli(["quantize", *ctx, "--threads", "100000"], ctx[1].parent),
        ctx[1].unlink(missing_ok=True),
    )[0],
    lambda r: _exit_ok(r) if r[0] == 0 else _one_line_error(r),
    setup=_in_out,
)  # item 3


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(
    cmd: list[str], tmp: Path, watch: Path, old: Path
) -> tuple[int, str, str, list[str], bytes]:
    """Starts ``cmd``, sends SIGINT as soon as a temporary file appears in ``watch``, and
    returns the exit status, output, what is left in ``watch`` and the old file's bytes.

    On a loaded machine this process may wake up only after the child has renamed its finished
    write over the old file (the signal came too late to test anything); the old file is then
    put back and the command run again, up to 5 times (a child that replaces the file despite
    the signal fails all 5)."""
    saved = old.read_bytes()
    for _ in range(5):
        res = _interrupt_once(cmd, tmp, watch, old)
        if res[4] == saved:
            return res
        old.write_bytes(saved)
        for name in res[3]:
            (watch / name).unlink(missing_ok=True)
    return res


def _interrupt_once(
    cmd: list[str], tmp: Path, watch: Path, old: Path
) -> tuple[int, str, str, list[str], bytes]:
    before = set(os.listdir(watch))
    p = subprocess.Popen(
        cmd,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell runs background jobs with SIGINT ignored, and a child inherits that (Python
        # then installs no KeyboardInterrupt handler): give the child the default disposition.
        preexec_fn=_default_sigint if os.name == "posix" else None,
    )
    deadline = time.monotonic() + PROCESS_SUB_TIMEOUT - 1
    sent = False
    while time.monotonic() < deadline and p.poll() is None:
        if set(os.listdir(watch)) - before:
            p.send_signal(signal.SIGINT)
            sent = True
            break
        time.sleep(0.001)
    try:
        out, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError("the interrupted process did not exit") from None
    assert sent, f"the write finished before it could be interrupted (exit {p.returncode})"
    return p.returncode, out, err, sorted(set(os.listdir(watch)) - before), old.read_bytes()


def _interrupt_cli_setup(tmp: Path) -> tuple[Path, Path, bytes]:
    (tmp / "out").mkdir()
    src = tmp / "in.safetensors"
    _st_save(src, {"w": rand((64, 64)), "big": np.ones(16 << 20, F32)})
    dst = tmp / "out" / "q.safetensors"
    dst.write_bytes(b"old output")
    return src, dst, b"old output"


def _interrupt_cli(ctx: tuple[Path, Path, bytes]) -> Any:
    src, dst, old = ctx
    res = _interrupt(
        [sys.executable, "-m", "qfast.cli", "quantize", str(src), str(dst)],
        src.parent,
        dst.parent,
        dst,
    )
    return (*res, old)


def _interrupted_cleanly(res: Any) -> None:
    code, _, err, left, now, old = res
    assert not left, f"left {left} in the output folder"  # item 10
    assert now == old, "the old output file was changed"
    lines = err.strip().splitlines()
    assert code in (2, 130), f"exit status {code}"
    assert len(lines) == 1 and "Traceback" not in err, f"stderr: {err[-300:]!r}"


good(
    "cli",
    "process-sigint-mid-write",
    _interrupt_cli,
    _interrupted_cleanly,
    setup=_interrupt_cli_setup,
)


def _interrupt_gguf_setup(tmp: Path) -> tuple[Path, bytes]:
    dst = tmp / "m.gguf"
    dst.write_bytes(b"old file")
    return dst, b"old file"


def _interrupt_gguf(ctx: tuple[Path, bytes]) -> Any:
    dst, old = ctx
    code = (
        "import numpy as np, qfast.gguf as qg, sys; "
        "qg.save(sys.argv[1], {'t': np.ones(24 << 20, np.float32)}, {'general.architecture': 'x'})"
    )
    res = _interrupt([sys.executable, "-c", code, str(dst)], dst.parent, dst.parent, dst)
    return (*res, old)


def _gguf_interrupted_cleanly(res: Any) -> None:
    code, _, err, left, now, old = res
    assert not left, f"left {left} beside the file"
    assert now == old, "the old file was changed"
    assert code != 0 and "KeyboardInterrupt" in err, f"exit status {code}: {err[-300:]!r}"


good(
    "gguf",
    "save-sigint-mid-write",
    _interrupt_gguf,
    _gguf_interrupted_cleanly,
    setup=_interrupt_gguf_setup,
)


# ============================================================================================
# the worker: runs cases, reports each on a pipe


def _listing(folder: Path) -> list[tuple[str, int]]:
    out = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            try:
                size = p.stat().st_size if p.is_file() else -1
            except OSError:
                size = -2
            out.append((str(p.relative_to(folder)), size))
    return sorted(out)


def _call(fn: Callable[..., Any], ctx: Any) -> Any:
    """``fn(ctx)`` if ``fn`` has a required parameter, else ``fn()``."""
    code = fn.__code__
    if code.co_argcount - len(fn.__defaults__ or ()) >= 1:
        return fn(ctx)
    return fn()


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def judge(case: Case, folder: Path) -> tuple[bool, str]:
    """Runs one case in ``folder``: (passed, what happened)."""
    ctx = case.setup(folder) if case.setup is not None else folder
    before = _listing(folder)
    verdict: tuple[bool, str]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            result = _call(case.fn, ctx)
        except Exception as e:
            msg = str(e).strip()
            what = f"{type(e).__module__}.{type(e).__qualname__}: {_short(msg)}"
            if case.raises is None:
                verdict = (False, f"raised {what}")
            elif isinstance(e, AssertionError):
                verdict = (False, f"raised {what}")
            elif not isinstance(e, case.raises):
                want = ", ".join(t.__name__ for t in case.raises)
                verdict = (False, f"raised {what} (expected {want})")
            elif not msg:
                verdict = (False, f"raised {type(e).__name__} with an empty message")
            elif case.match and not re.search(case.match, msg):
                verdict = (False, f"raised {what}; the message does not match {case.match!r}")
            else:
                verdict = (True, f"raised {what}")
        except BaseException as e:  # PanicException, KeyboardInterrupt, SystemExit
            what = f"{type(e).__module__}.{type(e).__qualname__}: {_short(str(e))}"
            verdict = (False, f"raised a BaseException that is not an Exception: {what}")
        else:
            if case.raises is not None and not case.either:
                verdict = (False, f"returned {_short(repr(result), 200)} (expected an exception)")
            else:
                try:
                    if case.check is not None:
                        case.check(result)
                    verdict = (True, f"returned {_short(repr(result), 120)}")
                except BaseException as e:  # AssertionError, pytest.fail's Failed, errors
                    verdict = (False, f"wrong result: {type(e).__name__}: {_short(str(e))}")
    after = _listing(folder)
    if after != before and verdict[0]:
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        verdict = (False, f"left the folder changed: added {added}, removed {removed}")
    return verdict


def worker_main(base: str) -> None:
    """``python test_sweep.py --worker BASE``: runs the case ids on stdin, one folder each
    under BASE; reports ``S id`` before and ``R json`` after each case on the original stdout
    (the cases' own output goes to stderr)."""
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    threads = qfast.get_num_threads()
    ids = sys.stdin.read().split()
    for cid in ids:
        proto.write(f"S {cid}\n")
        folder = Path(tempfile.mkdtemp(prefix="c", dir=base))
        os.chdir(folder)  # relative paths a case writes land in its folder
        t0 = time.perf_counter()
        try:
            ok, detail = judge(CASES[cid], folder)
        except BaseException as e:  # a broken setup
            ok, detail = False, f"setup failed: {type(e).__name__}: {_short(str(e))}"
            traceback.print_exc()
        os.chdir(base)
        elapsed = time.perf_counter() - t0
        try:
            if qfast.get_num_threads() != threads:
                qfast.set_num_threads(threads)
        except BaseException:
            pass
        proto.write("R " + json.dumps({"id": cid, "ok": ok, "detail": detail, "s": elapsed}) + "\n")


# ============================================================================================
# the parent: runs every case in workers, restarts them after a crash or a hang


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    todo: list[str]
    err_path: Path
    current: str | None = None
    started: float = 0.0
    buf: bytes = b""


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    useful = [ln for ln in lines if not ln.startswith(("note:", "  ", "stack backtrace"))]
    return _short(" | ".join((useful or lines)[-n:]), 400)


def run_sweep(ids: list[str], base: Path, workers: int = WORKERS) -> dict[str, dict[str, Any]]:
    """Every case of ``ids``: ``workers`` processes for most, then one for the ``alone`` ones."""
    shared = [c for c in ids if not CASES[c].alone]
    alone = [c for c in ids if CASES[c].alone]
    results = _run_workers(shared, base, workers)
    results.update(_run_workers(alone, base, 1))
    return results


def _run_workers(ids: list[str], base: Path, workers: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    chunks = [ids[i::workers] for i in range(workers)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )
    env["RUST_BACKTRACE"] = "0"  # a backtrace under a memory limit can itself deadlock
    n_started = len(list(base.glob("worker*.stderr")))

    def start(todo: list[str]) -> _Worker:
        nonlocal n_started
        n_started += 1
        err_path = base / f"worker{n_started}.stderr"
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(base)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(err_path, "wb"),
            env=env,
            cwd=str(TESTS_DIR),
        )
        assert proc.stdin is not None
        proc.stdin.write("\n".join(todo).encode())
        proc.stdin.close()
        return _Worker(proc, list(todo), err_path)

    def finish(w: _Worker, how: str) -> _Worker | None:
        """The worker died or hung: record its current case, start another for the rest."""
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()
        if w.proc.stdout is not None:
            w.proc.stdout.close()
        if w.current is not None:
            results[w.current] = {"ok": False, "detail": how, "s": time.monotonic() - w.started}
            w.todo.remove(w.current)
        rest = [c for c in w.todo if c not in results]
        return start(rest) if rest else None

    active = [start(c) for c in chunks if c]
    while active:
        fds = {w.proc.stdout.fileno(): w for w in active if w.proc.stdout is not None}
        ready, _, _ = select.select(list(fds), [], [], 0.2)
        now = time.monotonic()
        for fd in ready:
            w = fds[fd]
            chunk = os.read(fd, 65536)
            if not chunk:
                rc = w.proc.wait()
                how = f"killed the process (exit status {rc}"
                if rc < 0:
                    how += f", {signal.Signals(-rc).name}"
                how += f"): {_tail(w.err_path)}"
                nxt = finish(w, how) if w.current is not None or w.todo else None
                active.remove(w)
                if nxt is not None:
                    active.append(nxt)
                continue
            w.buf += chunk
            while b"\n" in w.buf:
                line, w.buf = w.buf.split(b"\n", 1)
                text = line.decode()
                if text.startswith("S "):
                    w.current, w.started = text[2:], time.monotonic()
                elif text.startswith("R "):
                    res = json.loads(text[2:])
                    results[res["id"]] = res
                    w.todo.remove(res["id"])
                    w.current = None
        for w in list(active):
            if w.current is not None and now - w.started > CASES[w.current].timeout:
                nxt = finish(w, f"hung: still running after {CASES[w.current].timeout:.0f} s")
                active.remove(w)
                if nxt is not None:
                    active.append(nxt)
    return results


# Cases that start a Python process get longer (imports alone take seconds on a busy machine).
# Those, and the ones that may start thousands of threads or touch the memory limit, run alone
# after the others: a thread storm starves every other process of the machine.
for _c in CASES.values():
    if any(k in _c.id for k in ("-process-", "-env-", "sigint")):
        _c.timeout = PROCESS_TIMEOUT
    if any(k in _c.id for k in ("-process-", "-env-", "sigint", "threads", "memlimit", "huge-")):
        _c.alone = True

# ============================================================================================
# the tests

# Cases that check the harness (not part of the sweep).
bad("selftest", "panic", lambda: (_ for _ in ()).throw(KeyboardInterrupt()), DOC)
bad("selftest", "abort", lambda: os.abort(), DOC)
bad("selftest", "hang", lambda: time.sleep(60), DOC, timeout=1.0)
good("selftest", "file", lambda tmp: (tmp / ".x.tmp").write_bytes(b"1") and None)
bad("selftest", "ok", lambda: int("x"), ValueError, r"invalid literal")
SELFTEST = [k for k, c in CASES.items() if c.group == "selftest"]
SWEEP = [k for k, c in CASES.items() if c.group != "selftest"]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    pytest.importorskip("safetensors")
    pytest.importorskip("gguf")
    base = tmp_path_factory.mktemp("sweep")
    t0 = time.perf_counter()
    results = run_sweep(SWEEP, base)
    results["__elapsed__"] = {"s": time.perf_counter() - t0}
    report = os.environ.get("QFAST_SWEEP_REPORT")
    if report:  # every verdict as JSON, e.g. to compare two branches
        Path(report).write_text(json.dumps(results, indent=1))
    return results


@pytest.mark.parametrize("case_id", SWEEP)
def test_case(sweep: dict[str, dict[str, Any]], case_id: str) -> None:
    res = sweep.get(case_id)
    assert res is not None, "not run"
    assert res["ok"], res["detail"]


def test_sweep_size_and_time(sweep: dict[str, dict[str, Any]]) -> None:
    groups: dict[str, int] = {}
    for cid in SWEEP:
        groups[CASES[cid].group] = groups.get(CASES[cid].group, 0) + 1
    assert len(SWEEP) >= 300, groups
    assert all(n >= 20 for n in groups.values()), groups
    # The whole sweep (two workers) runs well under CI's 3 minutes once nothing hangs.
    slow = {
        k: round(v["s"], 1) for k, v in sweep.items() if k != "__elapsed__" and v.get("s", 0) > 5
    }
    assert sweep["__elapsed__"]["s"] < 150, f"{sweep['__elapsed__']['s']:.0f} s; slowest: {slow}"


def test_harness_catches_panics_crashes_and_hangs(tmp_path: Path) -> None:
    """The harness itself: a BaseException, a dead process, a hang and a file left behind are
    each a failure; a documented error is a pass."""
    res = run_sweep(sorted(SELFTEST), tmp_path, workers=1)
    assert res["selftest-ok"]["ok"], res["selftest-ok"]
    assert not res["selftest-panic"]["ok"] and "not an Exception" in res["selftest-panic"]["detail"]
    assert not res["selftest-abort"]["ok"] and "SIGABRT" in res["selftest-abort"]["detail"]
    assert not res["selftest-hang"]["ok"] and "hung" in res["selftest-hang"]["detail"]
    assert not res["selftest-file"]["ok"] and ".x.tmp" in res["selftest-file"]["detail"]
    assert len(res) == len(SELFTEST)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])

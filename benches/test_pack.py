"""qfast.pack / qfast.unpack vs NumPy and X.copy(), one benchmark group per operation.

Groups: {pack, unpack} x {3, 4, 5 bits} x {signed (int8), unsigned (uint8) codes} on a
4096x4096 code array. In each group: qfast on one thread and on all, the straightforward NumPy
bit stream (np.unpackbits / np.packbits, with the sign extension for unpack; benches/_bitstream.py)
and `codes.copy()` of the 4096x4096 code array. Before a group is timed, NumPy's bytes / codes
are asserted equal to qfast's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import qfast

from ._bitstream import numpy_pack, numpy_unpack

SHAPE = (4096, 4096)
BITS = (3, 4, 5)
CODE_DTYPES = ("int8", "uint8")  # signed, unsigned codes
OPS = ("pack", "unpack")
IMPLS = ("qfast_1t", "qfast_all", "numpy", "copy")


@dataclass
class Codes:
    """Random codes of each (bits, dtype), their packed form, and which groups were checked."""

    arrays: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    checked: set[tuple[str, int, str]] = field(default_factory=set)

    def get(self, bits: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
        key = (bits, dtype)
        if key not in self.arrays:
            signed = dtype == "int8"
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            rng = np.random.default_rng(bits)
            codes = rng.integers(lo, hi, size=SHAPE, endpoint=True, dtype=np.dtype(dtype))
            self.arrays[key] = (codes, qfast.pack(codes, bits))
        return self.arrays[key]


@pytest.fixture(scope="module")
def codes() -> Codes:
    return Codes()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", CODE_DTYPES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("op", OPS)
def test_pack(
    op: str,
    bits: int,
    dtype: str,
    impl: str,
    codes: Codes,
    run_bench: Callable[..., Any],
    all_threads: int,
) -> None:
    c, p = codes.get(bits, dtype)
    signed = dtype == "int8"
    n = c.shape[-1]
    # Apples to apples, once per group and before any of it is timed.
    if (op, bits, dtype) not in codes.checked:
        if op == "pack":
            assert_array_equal(numpy_pack(c, bits), p)
        else:
            got = numpy_unpack(p, n, bits, signed)
            assert got.dtype == c.dtype
            assert_array_equal(got, qfast.unpack(p, n, bits, signed=signed))
            assert_array_equal(got, c)
        codes.checked.add((op, bits, dtype))
    if op == "pack":

        def fast() -> Any:
            return qfast.pack(c, bits)

        def ref() -> Any:
            return numpy_pack(c, bits)
    else:

        def fast() -> Any:
            return qfast.unpack(p, n, bits, signed=signed)

        def ref() -> Any:
            return numpy_unpack(p, n, bits, signed)

    common = dict(op=op, scheme=f"{bits}-bit", shape=c.shape, dtype=dtype)
    if impl in ("qfast_1t", "qfast_all"):
        threads = 1 if impl == "qfast_1t" else all_threads
        label = f"qfast {threads} thread" + ("s" if threads > 1 else "")
        run_bench(fast, impl=label, kind="qfast", threads=threads, **common)
    elif impl == "numpy":
        run_bench(ref, impl="NumPy", kind="numpy", **common)
    else:
        run_bench(c.copy, impl=f"codes.copy() {dtype}", kind="copy", **common)

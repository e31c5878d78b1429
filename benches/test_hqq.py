"""qfast.hqq against the NumPy transcription of mobiusml/hqq (tests/hqq_reference.py).

One group: HQQ of a 4096x4096 float32 layer (normal, std 0.02, as real weights), 4-bit codes
in groups of 64, hqq's defaults (up to 20 iterations, early stopping): qfast on one thread and
on all, and the NumPy oracle (few rounds: it takes seconds). Both must run the same number of
iterations and agree on the zero points.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qfast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import hqq_reference as ref

SHAPE = (4096, 4096)
BITS, GROUP = 4, 64
TARGET_S = 3.0  # qfast: rounds sized to about this (at least 3)
IMPLS = ("qfast_1t", "qfast_all", "numpy")


@pytest.fixture(scope="module")
def layer() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32) * 0.02).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def oracle(layer: np.ndarray) -> ref.HqqResult:
    return ref.hqq_quantize(layer, BITS, GROUP)


@pytest.mark.parametrize("impl", IMPLS)
def test_hqq(
    impl: str,
    layer: np.ndarray,
    oracle: ref.HqqResult,
    run_bench: Callable[..., Any],
    thread_count: Callable[[str], tuple[int, str]],
) -> None:
    common: dict[str, Any] = dict(
        op="hqq", scheme=f"int{BITS} g{GROUP}", shape=SHAPE, dtype="float32"
    )
    if impl == "numpy":
        got = run_bench(
            lambda: ref.hqq_quantize(layer, BITS, GROUP),
            impl="NumPy transcription of hqq",
            kind="numpy",
            **common,
        )
        assert got.iters_run == oracle.iters_run
        return
    threads, label = thread_count("1t" if impl == "qfast_1t" else "all")
    q = run_bench(
        lambda: qfast.hqq(layer, BITS, GROUP),
        impl=f"qfast {label}",
        kind="qfast",
        threads=threads,
        target_s=TARGET_S,
        **common,
    )
    assert q.meta["iters_run"] == oracle.iters_run
    np.testing.assert_allclose(q.zero_point.reshape(-1, 1), oracle.zero, rtol=1e-5, atol=1e-5)

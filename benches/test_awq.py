"""qfast.awq vs the NumPy transcription of AutoAWQ (tests/awq_reference.py), one group per case.

Cases: one 4096x4096 layer with 512 calibration tokens (scale search and clip search), and a
q/k/v-like group of three 1024x1024 weights sharing 512 tokens (AutoAWQ's q/k/v settings:
one common scale search, ``clip=False``). In each group: qfast on one thread and on all, and
the oracle (the NumPy reference, on NumPy's BLAS threads; few rounds: it is slow). The oracle
is also the check: qfast's best ratio and scales must equal its.

Run: ``python -m pytest benches/test_awq.py --benchmark-enable --benchmark-only -p no:randomly``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import qfast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import awq_reference as ref

F32 = np.float32
TOKENS = 512
TARGET_S = 1.0
CASES = {
    "4096x4096": {"shapes": [(4096, 4096)], "clip": True},
    "qkv-3x1024x1024": {"shapes": [(1024, 1024)] * 3, "clip": False},
}


def _inputs(shapes):
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal(s) * 0.02).astype(F32) for s in shapes]
    x = rng.standard_normal((TOKENS, shapes[0][1])).astype(F32)
    x[:, [5, 77, 300, 901]] *= 30.0  # outlier channels, as in LLM activations
    return ws, x


@pytest.fixture(scope="module")
def oracle_results():
    return {}


@pytest.mark.parametrize("impl", ["qfast_1t", "qfast_all", "numpy"])
@pytest.mark.parametrize("case", list(CASES))
def test_awq(run_bench, thread_count, blas_threads, oracle_results, case, impl):
    spec = CASES[case]
    ws, x = _inputs(spec["shapes"])
    clip = spec["clip"]
    shape = (len(ws) * ws[0].shape[0], ws[0].shape[1])
    common = {"op": "awq", "scheme": "int4 asym g128", "shape": shape, "dtype": "float32"}
    arg = ws if len(ws) > 1 else ws[0]
    if impl == "numpy":
        with blas_threads(thread_count("all")[0]):
            want = run_bench(
                lambda: ref.awq(ws, x, 4, 128, clip=clip),
                impl="AutoAWQ NumPy transcription",
                kind="numpy",
                **common,
            )
        oracle_results[case] = want
        return
    threads, label = thread_count("1t" if impl == "qfast_1t" else "all")
    with blas_threads(threads):  # qfast.awq's matmuls run on NumPy's BLAS
        got = run_bench(
            lambda: qfast.awq(arg, x, 4, 128, clip=clip),
            impl=f"qfast ({label})",
            kind="qfast",
            threads=threads,
            target_s=TARGET_S,
            **common,
        )
    want = oracle_results.get(case) or ref.awq(ws, x, 4, 128, clip=clip)
    assert got.ratio == want["ratio"]
    np.testing.assert_allclose(got.scales, want["scales"], rtol=1e-6)

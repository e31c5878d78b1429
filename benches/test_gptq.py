"""GPTQ on one layer: qfast against the NumPy transcription of the reference
(``tests/gptq_reference.py``), with the time split into its three parts.

Shapes ``[out, in]`` 4096x4096 and 11008x4096 (a Llama-7B MLP projection), 4096 calibration
tokens, group 128, act_order, symmetric 4-bit (the AutoGPTQ defaults). Groups:

- ``gptq hessian``: ``qfast.Hessian(in).add(X)`` vs the reference's running ``add_batch``,
  with ``X.T @ Y`` (a float32 BLAS product of the same size, no symmetry) as the BLAS limit;
- ``gptq factor``: the upper Cholesky factor of the damped ``H⁻¹`` (qfast: one Cholesky and
  one triangular inverse; the reference: Cholesky, inverse, Cholesky);
- ``gptq quantize``: the whole of ``qfast.gptq`` given the Hessian (factor + column loop +
  lazy updates) vs the reference's ``fasterquant``; the loop is this minus ``factor``.

NumPy's BLAS runs on one thread in the 1-thread rows (``blas_threads``), so the ratios compare
like with like. The reference is slow (tens of seconds): one round.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qfast
from qfast.algorithms import gptq as _gptq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import gptq_reference as ref

F32 = np.float32
TOKENS = 4096
SHAPES = [(4096, 4096), (11008, 4096)]
OPTS = dict(bits=4, group_size=128, symmetric=True, act_order=True)


class Layer:
    def __init__(self, shape: tuple[int, int]) -> None:
        cols = shape[1]
        rng = np.random.default_rng(0)
        self.W = rng.standard_normal(shape, dtype=F32)
        # Correlated channels of different scales, as real activations.
        mix = rng.standard_normal((cols, 64), dtype=F32)
        z = rng.standard_normal((TOKENS, 64), dtype=F32) @ mix.T
        chan = rng.lognormal(0.0, 0.5, cols).astype(F32)
        self.X = ((z + rng.standard_normal((TOKENS, cols), dtype=F32)) * chan).astype(F32)
        self.H = qfast.Hessian(cols).add(self.X).matrix()


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def layer(request: pytest.FixtureRequest) -> Layer:
    return Layer(request.param)


def _flops_note(flops: float) -> dict[str, Any]:
    return {"gflop": round(flops / 1e9, 1)}


IMPLS = ["qfast_1t", "qfast_all", "reference"]


@pytest.mark.parametrize("impl", [*IMPLS, "blas_limit"])
def test_gptq_hessian(
    layer: Layer, impl: str, run_bench: Callable[..., Any], thread_count: Any, blas_threads: Any
) -> None:
    X = layer.X
    cols = X.shape[1]
    common = dict(op="gptq hessian", scheme=f"{TOKENS} tokens", shape=(cols, cols),
                  dtype="float32", **_flops_note(TOKENS * cols * cols))  # fmt: skip
    if impl == "reference":
        with blas_threads(1):
            run_bench(lambda: ref.hessian([X]), impl="reference add_batch (NumPy)",
                      kind="numpy", **common)  # fmt: skip
        return
    if impl == "blas_limit":
        Y = X.copy()
        with blas_threads(1):
            run_bench(lambda: X.T @ Y, impl="X.T @ Y sgemm (BLAS limit)", kind="numpy",
                      **common)  # fmt: skip
        return
    threads, label = thread_count("1t" if impl == "qfast_1t" else "all")
    with blas_threads(threads):
        run_bench(lambda: qfast.Hessian(cols).add(X), impl=f"qfast {label}", kind="qfast",
                  threads=threads, **common)  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
def test_gptq_factor(
    layer: Layer, impl: str, run_bench: Callable[..., Any], thread_count: Any, blas_threads: Any
) -> None:
    H = layer.H
    n = H.shape[0]
    common = dict(op="gptq factor", scheme="H^-1 Cholesky", shape=(n, n), dtype="float32")
    if impl == "reference":
        with blas_threads(1):
            run_bench(lambda: ref.hinv(H), impl="reference (NumPy)", kind="numpy", **common)
        return
    threads, label = thread_count("1t" if impl == "qfast_1t" else "all")
    with blas_threads(threads):
        U = run_bench(lambda: _gptq.hinv_factor(H, 0.01)[0], impl=f"qfast {label}",
                      kind="qfast", threads=threads, **common)  # fmt: skip
    Uref = ref.hinv(H)
    assert np.abs(U - Uref).max() <= 1e-3 * np.abs(Uref).max()


@pytest.mark.parametrize("impl", IMPLS)
def test_gptq_quantize(
    layer: Layer, impl: str, run_bench: Callable[..., Any], thread_count: Any, blas_threads: Any
) -> None:
    W, H = layer.W, layer.H
    common = dict(op="gptq quantize", scheme="4-bit g128 act_order sym", shape=W.shape,
                  dtype="float32")  # fmt: skip
    if impl == "reference":
        with blas_threads(1):
            run_bench(lambda: ref.fasterquant(W, H, groupsize=128, actorder=True),
                      impl="reference fasterquant (NumPy)", kind="numpy", **common)  # fmt: skip
        return
    threads, label = thread_count("1t" if impl == "qfast_1t" else "all")
    with blas_threads(threads):
        q = run_bench(lambda: qfast.gptq(W, hessian=H, **OPTS), impl=f"qfast {label}",
                      kind="qfast", threads=threads, **common)  # fmt: skip
    assert q.shape == W.shape and np.isfinite(q.dequantize()).all()

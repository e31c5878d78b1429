"""qfast.gptq_gguf: GPTQ inside GGUF's 32-value block grids.

References: ggml's own quantizer (through qfast.gguf.quantize, itself checked byte for byte
against ggml-quants.c) when the Hessian is the identity, where GPTQ's feedback is zero; a plain,
unblocked NumPy transcription of GPTQ's column loop with ggml's block rules written out here;
and the output error of RTN (ggml's quantizer) on correlated inputs, which GPTQ must beat."""

from __future__ import annotations

import numpy as np
import pytest

import qfast
from qfast.algorithms.gptq import hinv_factor

TYPES = ["Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q8_0"]
F32 = np.float32


def rows(kind: str, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((16, 128)).astype(F32)
    if kind == "zeros":
        x[:, 32:64] = 0
    elif kind == "outlier":
        x[:, 70] = 50
    elif kind == "ties":
        x = np.round(x * 4) / 4
    elif kind == "positive":
        x = np.abs(x)
    return x


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("kind", ["normal", "zeros", "outlier", "ties", "positive"])
@pytest.mark.parametrize("t", TYPES)
def test_identity_hessian_is_ggmls_quantizer(t: str, kind: str, act_order: bool) -> None:
    W = rows(kind, np.random.default_rng(1))
    H = np.diag(np.linspace(1, 2, W.shape[1])).astype(F32)  # act-order permutes every column
    got = qfast.gptq_gguf(W, hessian=H, type=t, act_order=act_order)
    np.testing.assert_array_equal(got, qfast.gguf.quantize(W, t))


def block_grid(blk: np.ndarray, t: str) -> tuple[np.ndarray, ...]:
    """ggml's grid of each row of a 32-value block: (1/d, min) for the codes, float16 d, m."""
    rows_ = blk.shape[0]
    top = {"Q4_0": 15, "Q5_0": 31, "Q4_1": 15, "Q5_1": 31}.get(t)
    if t == "Q8_0":
        d = (np.abs(blk).max(1) / F32(127)).astype(F32)
        mn = np.zeros(rows_, F32)
    elif t in ("Q4_0", "Q5_0"):
        big = blk[np.arange(rows_), np.abs(blk).argmax(1)]
        big = np.where(np.abs(big) > 0, big, F32(0))
        d = (big / F32(-(top + 1) // 2)).astype(F32)
        mn = np.zeros(rows_, F32)
    else:
        mn = blk.min(1).astype(F32)
        d = ((blk.max(1) - mn) / F32(top)).astype(F32)
    inv = np.array([F32(1) / x if x else F32(0) for x in d], F32)
    return inv, mn, d.astype(np.float16).astype(F32), mn.astype(np.float16).astype(F32)


def dequant_column(w: np.ndarray, grid: tuple[np.ndarray, ...], t: str) -> np.ndarray:
    """One column on its rows' block grids: ggml's codes (float32 1/d and min), clamped to
    the type's codes, dequantized with the float16 d (and m)."""
    inv, mn, d16, m16 = grid
    top = {"Q4_0": 15, "Q5_0": 31, "Q4_1": 15, "Q5_1": 31}.get(t)
    if t == "Q8_0":
        v = w * inv
        return np.clip(np.sign(v) * np.floor(np.abs(v) + F32(0.5)), -128, 127).astype(F32) * d16
    if t in ("Q4_0", "Q5_0"):
        half = (top + 1) // 2
        return (np.clip(np.trunc(w * inv + F32(half + 0.5)), 0, top) - half).astype(F32) * d16
    q = np.clip(np.trunc((w - mn) * inv + F32(0.5)), 0, top)
    return q.astype(F32) * d16 + m16


def reference(W: np.ndarray, H: np.ndarray, t: str, act_order: bool = False) -> np.ndarray:
    """GPTQ's column loop, one column at a time over the whole row (no lazy blocks), with
    ggml's block rules. Without act-order, block b's grid is chosen on the compensated weights
    when column 32b is reached; with it, every grid is fixed on the original weights and the
    columns run by decreasing H[i, i]."""
    W = W.astype(F32).copy()
    cols = W.shape[1]
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    grids = [block_grid(W[:, b : b + 32], t) for b in range(0, cols, 32)] if act_order else []
    U, _ = hinv_factor(H[np.ix_(perm, perm)], 0.01)
    Wp = W[:, perm]
    out = np.zeros_like(W)
    for c in range(cols):
        b = perm[c] // 32
        if not act_order and c % 32 == 0:
            grids.append(block_grid(Wp[:, c : c + 32], t))
        w = Wp[:, c]
        dq = dequant_column(w, grids[b], t)
        out[:, perm[c]] = dq
        err = (w - dq) / U[c, c]
        Wp[:, c:] -= np.outer(err, U[c, c:]).astype(F32)
    return out


@pytest.mark.parametrize("t", TYPES)
def test_column_loop_is_gptqs(t: str) -> None:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((512, 96)).astype(F32) @ rng.standard_normal((96, 96)).astype(F32)
    W = rng.standard_normal((24, 96)).astype(F32)
    H = (2 / X.shape[0] * (X.T @ X)).astype(F32)
    got = qfast.gguf.dequantize(qfast.gptq_gguf(W, hessian=H, type=t, block_size=96), t, W.shape)
    np.testing.assert_array_equal(got, reference(W, H, t))
    # the lazy blocks (32 columns at a time) move rounding only: the same layer error
    blocked = qfast.gguf.dequantize(
        qfast.gptq_gguf(W, hessian=H, type=t, block_size=32), t, W.shape
    )
    err = lambda q: float(np.linalg.norm(X @ (q - W).T))  # noqa: E731
    assert err(blocked) == pytest.approx(err(got), rel=0.05)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("t", TYPES)
def test_beats_ggmls_quantizer_on_correlated_inputs(t: str, act_order: bool) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2048, 256)).astype(F32) @ rng.standard_normal((256, 256)).astype(F32)
    X[:, 5] *= 20  # an outlier channel, as LLM activations have
    W = rng.standard_normal((64, 256)).astype(F32)
    rtn = qfast.gguf.dequantize(qfast.gguf.quantize(W, t), t, W.shape)
    gptq = qfast.gguf.dequantize(qfast.gptq_gguf(W, X, type=t, act_order=act_order), t, W.shape)
    e_rtn = np.linalg.norm(X @ (rtn - W).T)
    e_gptq = np.linalg.norm(X @ (gptq - W).T)
    assert e_gptq < 0.8 * e_rtn, (t, e_gptq / e_rtn)


def test_bad_input_says_what_to_do() -> None:
    W = np.ones((4, 64), F32)
    with pytest.raises(ValueError, match="gptq_gguf writes Q4_0"):
        qfast.gptq_gguf(W, np.ones((8, 64), F32), type="Q4_K")
    with pytest.raises(ValueError, match="blocks of 32 input columns; in_features is 40"):
        qfast.gptq_gguf(np.ones((4, 40), F32), np.ones((8, 40), F32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        qfast.gptq_gguf(np.full((4, 64), np.nan, F32), np.ones((8, 64), F32))
    with pytest.raises(ValueError, match="exactly one of X"):
        qfast.gptq_gguf(W)
    with pytest.raises(ValueError, match="multiple of 32"):
        qfast.gptq_gguf(W, np.ones((8, 64), F32), block_size=48)

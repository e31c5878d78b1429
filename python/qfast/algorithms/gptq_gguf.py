"""GPTQ inside GGUF's block grids: GPTQ's column loop and error feedback, where each block of
32 input columns gets the grid llama.cpp's own quantizer would give it, chosen on the
error-compensated weights when the loop reaches the block.

For Q4_0, Q5_0, Q4_1, Q5_1 and Q8_0 the grid of a block is ggml's reference rule
(``quantize_row_*_ref``, as ``qfast.gguf.quantize`` computes it): Q4_0 ``d = max / -8`` with
``max`` the value of largest magnitude (first on ties), codes ``min(15, trunc(x / d + 8.5))``;
Q5_0 the same with 16 / 31; Q4_1 / Q5_1 ``d = (max - min) / 15`` (``31``), ``m = min``, codes
``min(15, trunc((x - m) / d + 0.5))``; Q8_0 ``d = max|x| / 127``, codes ``round(x / d)``. As
in ggml, the codes use the float32 ``1 / d`` and the stored value is the float16 ``d`` (and
``m``): the error GPTQ spreads to the columns not yet quantized is measured against the stored,
float16 grid, ``w - dequantize(code)``. A value the feedback moves past its block's range gets
the nearest code the block holds (ggml's rule never meets one).

The blocks are GGUF's, in the original column order: a GGUF row cannot store a permutation.
With ``act_order=True`` the columns still run by decreasing Hessian diagonal (GPTQ's
``desc_act``), on grids fixed beforehand on the original weights (AutoGPTQ's static groups).
With a Hessian that is the identity (uncorrelated inputs),
GPTQ's feedback is zero and the result is exactly ``qfast.gguf.quantize(W, type)``, byte for
byte.

The result is the tensor's GGUF bytes (``uint8 [out, row_bytes]``), which
``qfast.gguf.dequantize`` / llama.cpp read as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import as_bool, check_at_least, check_positive
from .gptq import _hessian_matrix, hinv_factor

__all__ = ["GGUF_TYPES", "gptq_gguf"]

F32 = np.float32
QK = 32
#: type -> (levels - 1 (the top code), the symmetric offset or None for the types with a min)
GGUF_TYPES = {
    "Q4_0": (15, 8),
    "Q5_0": (31, 16),
    "Q4_1": (15, None),
    "Q5_1": (31, None),
    "Q8_0": (None, None),
}
_BYTES = {"Q4_0": 18, "Q5_0": 22, "Q4_1": 20, "Q5_1": 24, "Q8_0": 34}


def _grid(block: np.ndarray, t: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ggml's grid of each row of ``block`` ``[rows, 32]``: ``(id, m, d16, m16)``: the float32
    inverse scale and min the codes are computed with, and the float16-rounded ``d`` and ``m``
    the file stores (as float32); the mins are zero for the symmetric types."""
    rows = block.shape[0]
    if t == "Q8_0":
        amax = np.abs(block).max(axis=1)
        d = (amax / F32(127)).astype(F32)
        m = np.zeros(rows, F32)
    elif GGUF_TYPES[t][1] is not None:
        half = F32(GGUF_TYPES[t][1])
        # the value of largest magnitude, the first on ties (ggml's `amax < fabsf(v)` loop);
        # a block of zeros keeps ggml's initial max = +0.0
        idx = np.argmax(np.abs(block), axis=1)
        mx = block[np.arange(rows), idx]
        mx = np.where(np.abs(mx) > 0, mx, F32(0.0)).astype(F32)
        d = (mx / -half).astype(F32)
        m = np.zeros(rows, F32)
    else:
        top = F32(GGUF_TYPES[t][0])
        mn = block.min(axis=1).astype(F32)
        mx = block.max(axis=1).astype(F32)
        d = ((mx - mn) / top).astype(F32)
        m = mn
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
    d16 = d.astype(np.float16).astype(F32)
    m16 = m.astype(np.float16).astype(F32)
    return inv, m, d16, m16


def _codes(w: np.ndarray, inv: np.ndarray, m: np.ndarray, t: str) -> np.ndarray:
    """ggml's codes of one column ``w`` (one value per row) on the rows' grids, clamped to the
    type's codes: GPTQ's feedback can move a column past the range its block's grid was
    chosen on, where ggml's rule (which never sees such values) would leave the field."""
    top, off = GGUF_TYPES[t]
    if t == "Q8_0":
        v = (w * inv).astype(F32)
        q = np.sign(v) * np.floor(np.abs(v) + F32(0.5))  # roundf: ties away from zero
        return np.clip(q, -128, 127).astype(np.int32)
    if off is not None:
        v = (w * inv + F32(off + 0.5)).astype(F32)
    else:
        v = ((w - m) * inv + F32(0.5)).astype(F32)
    return np.clip(np.trunc(v), 0, top).astype(np.int32)


def _dequant(q: np.ndarray, d16: np.ndarray, m16: np.ndarray, t: str) -> np.ndarray:
    off = GGUF_TYPES[t][1]
    if t == "Q8_0":
        return (q.astype(F32) * d16).astype(F32)
    if off is not None:
        return ((q - off).astype(F32) * d16).astype(F32)
    return (q.astype(F32) * d16 + m16).astype(F32)


def _pack(codes: np.ndarray, d16: np.ndarray, m16: np.ndarray, t: str) -> np.ndarray:
    """Blocks ``[rows, nblocks]`` of codes ``[rows, nblocks, 32]`` in GGUF's layout."""
    rows, nb, _ = codes.shape
    out = np.zeros((rows, nb, _BYTES[t]), np.uint8)
    out[:, :, 0:2] = d16.astype(np.float16).reshape(rows, nb, 1).view(np.uint8)
    at = 2
    if t in ("Q4_1", "Q5_1"):
        out[:, :, 2:4] = m16.astype(np.float16).reshape(rows, nb, 1).view(np.uint8)
        at = 4
    if t == "Q8_0":
        out[:, :, 2:] = codes.astype(np.int8).view(np.uint8)
        return out.reshape(rows, -1)
    c = codes.astype(np.uint32)
    if t in ("Q5_0", "Q5_1"):
        bits = ((c >> 4) & 1) << np.arange(QK, dtype=np.uint32)
        qh = bits.sum(axis=2, dtype=np.uint32)
        out[:, :, at : at + 4] = qh.reshape(rows, nb, 1).view(np.uint8)
        at += 4
    lo = (c[:, :, :16] & 0xF) | ((c[:, :, 16:] & 0xF) << 4)
    out[:, :, at:] = lo.astype(np.uint8)
    return out.reshape(rows, -1)


def gptq_gguf(
    W: Any,
    X: Any = None,
    *,
    hessian: Any = None,
    type: str = "Q4_0",
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> np.ndarray:
    """GPTQ of a linear layer's weight into a GGUF block type (see the module's docstring).

    Args:
        W: float ``[out, in]``; ``in`` a multiple of 32.
        X: calibration inputs ``[tokens, in]`` (or ``[..., in]``); or ``hessian`` (a
            :class:`qfast.Hessian` or the ``[in, in]`` matrix).
        type: ``"Q4_0"``, ``"Q5_0"``, ``"Q4_1"``, ``"Q5_1"`` or ``"Q8_0"``.
        damp: GPTQ's ``percdamp`` (a fraction of the mean diagonal).
        block_size: columns per lazy update (a multiple of 32).
        act_order: process the columns by decreasing ``H[i, i]`` (GPTQ's ``desc_act``), each
            block's grid fixed beforehand on the original weights (static groups: a GGUF
            block cannot follow a permutation). Without it, the blocks' grids are chosen on
            the compensated weights as the loop reaches them.

    Returns:
        uint8 ``[out, in / 32 * bytes_per_block]``: the tensor's GGUF bytes.
    """
    if type not in GGUF_TYPES:
        raise ValueError(f"type {type!r}: gptq_gguf writes {', '.join(GGUF_TYPES)}")
    W = np.array(W, dtype=F32, order="C", copy=True)
    if W.ndim != 2:
        raise ValueError(f"W must be a 2-D [out, in] weight, got shape {W.shape}")
    if not np.isfinite(W).all():
        raise ValueError("W contains NaN or Inf; quantization needs finite weights")
    rows, cols = W.shape
    if cols % QK:
        raise ValueError(f"{type} stores blocks of {QK} input columns; in_features is {cols}")
    block_size = check_at_least(block_size, "block_size", QK)
    act_order = as_bool(act_order, "act_order")
    if block_size % QK:
        raise ValueError(f"block_size must be a multiple of {QK}, got {block_size}")
    damp = check_positive(damp, "damp")
    H = _hessian_matrix(hessian, X, cols)
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    nb = cols // QK
    codes = np.zeros((rows, nb, QK), np.int32)
    d_all = np.zeros((rows, nb), F32)
    m_all = np.zeros((rows, nb), F32)
    if act_order:
        # static grids: every block's ggml grid on the weights before any update, so that
        # the columns can run in any order (a GGUF row stores its blocks in column order)
        grids = [_grid(W[:, b * QK : (b + 1) * QK], type) for b in range(nb)]
        for b, (_, _, d16, m16) in enumerate(grids):
            d_all[:, b], m_all[:, b] = d16, m16
        perm = np.argsort(-np.diag(H), kind="stable")
        W = np.ascontiguousarray(W[:, perm])
        H = H[np.ix_(perm, perm)]
    else:
        perm = np.arange(cols)
    U, _ = hinv_factor(H, damp)
    del H
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].copy()
        Err = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        inv = m32 = d16 = m16 = np.zeros(rows, F32)
        for i in range(i2 - i1):
            b, j = divmod(int(perm[i1 + i]), QK)
            if act_order:
                inv, m32, d16, m16 = grids[b]
            elif j == 0:
                inv, m32, d16, m16 = _grid(W1[:, i : i + QK], type)
                d_all[:, b], m_all[:, b] = d16, m16
            w = W1[:, i]
            q = _codes(w, inv, m32, type)
            codes[:, b, j] = q
            err = (w - _dequant(q, d16, m16, type)) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:]).astype(F32)
            Err[:, i] = err
        if i2 < cols:
            W[:, i2:] -= (Err @ U[i1:i2, i2:]).astype(F32)
    return _pack(codes, d_all, m_all, type)

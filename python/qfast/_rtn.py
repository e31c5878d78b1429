"""The GPTQ reference grid, and round-to-nearest (RTN) on it.

The grid is the one IST-DASLab's ``quant.py`` (``Quantizer.find_params``) computes and
AutoGPTQ / GPTQModel keep, so that an RTN baseline and GPTQ differ only in how they round:

- the range of each row's group always includes 0: ``lo = min(min x, 0)``, ``hi = max(max x, 0)``
  (an all-zero group gets ``[-1, 1]``);
- asymmetric: ``scale = (hi - lo) / (2^b - 1)``, ``zero = round(-lo / scale)``;
- symmetric: ``hi = max(|lo|, hi)``, ``lo = -hi`` where ``lo < 0``, so
  ``scale = 2·max|x| / (2^b - 1)`` and ``zero = 2^(b-1)``. A group with no negative value keeps
  ``lo = 0``: its scale is half as wide and its top half clips, as in the reference;
- codes are unsigned, ``q = clamp(round(x / scale) + zero, 0, 2^b - 1)`` (round half to even),
  and ``x ≈ scale · (q - zero)``;
- ``mse=True``: the reference's search over shrunk ranges ``p·[lo, hi]``,
  ``p = 1 - i/grid`` for ``i < max_shrink·grid``, keeping the least ``Σ |q - x|^norm``
  (``norm=2.4, grid=100, max_shrink=0.8``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _qfast
from ._checks import (
    as_bool,
    as_int,
    check_bits,
    check_finite,
    check_group_size,
    float_input,
)
from .tensor.qtensor import QTensor, as_scale_dtype, scale_dtype_name

F32 = np.float32

# The reference's MSE grid search: norm, grid points, largest shrink.
MSE_SEARCH = (2.4, 100, 0.8)


def as_weight(W: Any, name: str = "W") -> np.ndarray:
    """A float32 C-contiguous copy of a 2-D float weight ``[out, in]``, checked finite."""
    out = np.array(float_input(W, name), dtype=F32, order="C")
    if out.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [out_features, in_features], got shape {out.shape}; "
            "reshape it (e.g. a convolution to [out, -1]) first"
        )
    if out.size == 0:
        raise ValueError(f"{name} is empty (shape {out.shape})")
    check_finite(out, name)
    return out


def rows_group_size(group_size: Any, cols: int) -> int | None:
    """``None`` (one grid per row; also -1, the reference scripts' "no groups") or a group
    size of at most ``cols``; a last group shorter than the others is allowed (``cols`` need
    not be a multiple)."""
    if group_size is None:
        return None
    g = as_int(group_size, "group_size")
    return None if g == -1 else min(check_group_size(g), cols)


def find_params(
    x: np.ndarray, bits: int, symmetric: bool, mse: bool = False, scale_dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """The reference grid of each row of ``x`` (``[rows, n]``): ``(scale, zero)``, float32,
    the scale rounded to ``scale_dtype`` (and the zero point computed against it)."""
    x = np.ascontiguousarray(x, dtype=F32)
    mse_arg = MSE_SEARCH if mse else None
    return _qfast.gptq_find_params(x, bits, symmetric, mse_arg, scale_dtype)


def grid_params(
    W: np.ndarray,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    mse: bool = False,
    scale_dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, zero)``, ``[rows, n_groups]`` float32, of each group of ``W``'s rows."""
    cols = W.shape[1]
    g = group_size or cols
    scales, zeros = [], []
    for c0 in range(0, cols, g):
        s, z = find_params(W[:, c0 : c0 + g], bits, symmetric, mse, scale_dtype)
        scales.append(s)
        zeros.append(z)
    return np.stack(scales, 1), np.stack(zeros, 1)


def grid_codes(
    W: np.ndarray, scale: np.ndarray, zero: np.ndarray, g_idx: np.ndarray, bits: int
) -> np.ndarray:
    """``clamp(round(w / scale) + zero, 0, 2^b - 1)`` with column ``c`` on group ``g_idx[c]``."""
    s, z = scale[:, g_idx], zero[:, g_idx]
    q = np.clip(np.round(W / s) + z, 0, F32(2**bits - 1))
    return q.astype(np.uint8)


def to_qtensor(
    codes: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray,
    bits: int,
    group_size: int | None,
    g_idx: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    scale_dtype: str = "float32",
) -> QTensor:
    """A QTensor over unsigned codes on the reference grid (integer zero points), its float32
    scales (already rounded to ``scale_dtype``) stored as ``scale_dtype``."""
    if not np.isfinite(scale).all():
        raise ValueError(
            f"the weights' range needs scales larger than {scale_dtype} can hold; pass "
            "scale_dtype=np.float32 (or bfloat16)"
        )
    scale = as_scale_dtype(scale, scale_dtype)
    zp = zero.astype(np.int32)
    if group_size is None:
        return QTensor.from_codes(codes, bits, False, scale, zp, axis=0, meta=meta)
    return QTensor.from_codes(
        codes, bits, False, scale, zp, group_size=group_size, g_idx=g_idx, meta=meta
    )


def rtn(
    W: Any,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = True,
    *,
    mse: bool = False,
    scale_dtype: Any = np.float32,
) -> QTensor:
    """Round-to-nearest quantization of a weight on the GPTQ reference grid.

    The baseline GPTQ is measured against: the same grid, each weight rounded on its own.

    Args:
        W: float ``[out_features, in_features]``.
        bits: code width, 2 to 8.
        group_size: one grid per this many input columns (the last group may be shorter);
            ``None`` for one grid per output row.
        symmetric: ``scale = 2·max|x| / (2^b - 1)`` with zero point ``2^(b-1)`` (AutoGPTQ's
            default, ``sym=True``); ``False``: the range ``[min(x, 0), max(x, 0)]`` with a
            rounded zero point (IST-DASLab's scripts' default).
        mse: search shrunk ranges for the least ``Σ|q - x|^2.4`` (the reference's ``--mse``).
        scale_dtype: np.float32 (default), np.float16 (as GPTQ checkpoints store scales) or
            ml_dtypes.bfloat16: each scale is rounded to it as it is found, and the zero point
            and codes are computed against the rounded scale.

    Returns:
        A :class:`QTensor` with unsigned codes and integer zero points (``scale · (q -
        zero)``).
    """
    bits = check_bits(bits)
    sdtype = scale_dtype_name(scale_dtype)
    symmetric = as_bool(symmetric, "symmetric")
    mse = as_bool(mse, "mse")
    W = as_weight(W)
    group_size = rows_group_size(group_size, W.shape[1])
    scale, zero = grid_params(W, bits, group_size, symmetric, mse, sdtype)
    g_idx = np.arange(W.shape[1]) // (group_size or W.shape[1])
    codes = grid_codes(W, scale, zero, g_idx, bits)
    meta = {"method": "rtn", "symmetric": symmetric, "mse": mse}
    return to_qtensor(codes, scale, zero, bits, group_size, meta=meta, scale_dtype=sdtype)

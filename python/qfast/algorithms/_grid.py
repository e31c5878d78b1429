"""The GPTQ reference grid that :func:`qfast.rtn` rounds to and :func:`qfast.gptq` solves on
(shared by ``rtn`` and ``gptq``; see ``rtn``'s docstring for the grid itself)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _qfast
from .._checks import (
    as_int,
    check_finite,
    check_group_size,
    float_input,
)
from ..tensor.qtensor import QTensor, as_scale_dtype

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

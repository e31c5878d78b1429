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

from .._checks import as_bool, check_bits
from ..tensor.qtensor import QTensor, scale_dtype_name
from ._grid import as_weight, grid_codes, grid_params, rows_group_size, to_qtensor


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

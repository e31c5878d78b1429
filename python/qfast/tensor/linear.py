"""Quantized matrix products: matmul_int8 (exact integer GEMM) and linear (quantized layers)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _qfast
from .._checks import float32_input
from .qtensor import QTensor, line_bytes

_COMPUTE = ("int8", "float")


def _int8_operand(x: Any, name: str, dtypes: tuple[str, ...]) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.name not in dtypes:
        allowed = " or ".join(dtypes)
        raise TypeError(
            f"matmul_int8: {name} must be {allowed}, got {arr.dtype}; convert codes explicitly "
            f"(e.g. {name}.astype(np.int8)) after checking their range"
        )
    if arr.ndim == 0:
        raise ValueError(f"matmul_int8: {name} is 0-d; matmul needs at least 1-d operands")
    return arr


def matmul_int8(a: Any, b: Any) -> np.ndarray:
    """Exact integer matrix product ``a @ b`` with INT32 accumulation.

    Shapes follow ``np.matmul``: ``a`` ``[..., M, K]`` or ``[K]``, ``b`` ``[..., K, N]`` or
    ``[K]``, leading (batch) dimensions broadcast.

    Args:
        a: int8 or uint8 array.
        b: int8 array.

    Returns:
        int32 array, equal to ``np.matmul(a.astype(np.int64), b.astype(np.int64))``.

    Raises:
        TypeError: for other dtypes.
        ValueError: for mismatched shapes, or ``K`` deeper than the worst case that fits
            int32 (65793 for uint8 ``a``, 131071 for int8 ``a``): split ``K`` and add the
            partial products in int64.
    """
    a = _int8_operand(a, "a", ("int8", "uint8"))
    b = _int8_operand(b, "b", ("int8",))
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul_int8: shapes {a.shape} and {b.shape} do not align "
            f"({a2.shape[-1]} columns vs {b2.shape[-2]} rows)"
        )
    m, n = a2.shape[-2], b2.shape[-1]
    if b2.ndim == 2:
        # One right operand: every batch of `a` is one tall matrix.
        lead = a2.shape[:-2]
        rows = int(np.prod(a2.shape[:-1], dtype=np.int64))
        flat = np.ascontiguousarray(a2.reshape(rows, a2.shape[-1]))
        out = _qfast.matmul_int8(flat, np.ascontiguousarray(b2)).reshape((*lead, m, n))
    else:
        # One call for the whole stack: each operand's own batches, once each, and per output
        # batch the index of its `a` and `b` matrix (NumPy's broadcasting, without copies).
        lead = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        a3 = np.ascontiguousarray(a2.reshape(_count(a2.shape[:-2]), *a2.shape[-2:]))
        b3 = np.ascontiguousarray(b2.reshape(_count(b2.shape[:-2]), *b2.shape[-2:]))
        ia = _batch_index(a2.shape[:-2], lead)
        ib = _batch_index(b2.shape[:-2], lead)
        out = _qfast.matmul_int8_batched(a3, b3, ia, ib).reshape((*lead, m, n))
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _batch_index(shape: tuple[int, ...], lead: tuple[int, ...]) -> np.ndarray:
    """For each batch of ``lead`` (C order), the flat index of the batch of an operand whose
    batch axes are ``shape`` (broadcast against ``lead``)."""
    own = np.arange(_count(shape), dtype=np.int64).reshape(shape)
    return np.ascontiguousarray(np.broadcast_to(own, lead)).reshape(-1)


def _weight_codes(w: QTensor) -> np.ndarray:
    """The stored codes as ``[N, line_bytes]`` uint8: each row's codes one packed bit stream,
    read by the kernel as they are (no unpacked copy of the weight)."""
    n, k = w.shape
    return np.ascontiguousarray(w.data).view(np.uint8).reshape(n, line_bytes(k, w.bits))


def _pack(w: QTensor) -> Any:
    """The packed weight for `w`, built on first use and cached on the QTensor."""
    if not isinstance(w, QTensor):
        kind = type(w).__name__
        raise TypeError(f"linear: w must be a QTensor (from qfast.quantize), got {kind}")
    arrays = w._stored
    grid = (w.shape, w.bits, w.signed, w.axis, w.group_size)
    cached = w._packed
    if cached is not None:
        c_arrays, c_grid, c_packed = cached
        if c_grid == grid and all(c is v for c, v in zip(c_arrays, arrays)):
            return c_packed
    w._check()
    if len(w.shape) != 2:
        raise ValueError(f"linear: w must be a 2-d [out, in] weight, got shape {w.shape}")
    n, k = w.shape
    if w.group_size is not None:
        groups = -(-k // w.group_size) if w.g_idx is None else None
        scale = np.asarray(w.scale, dtype=np.float32).reshape(n, -1)
        if groups is not None and scale.shape[1] != groups:
            raise ValueError(f"linear: scale has {scale.shape[1]} groups, expected {groups}")
    elif w.axis == 0:
        scale = np.asarray(w.scale, dtype=np.float32).reshape(n, 1)
    elif w.axis is None:
        scale = np.broadcast_to(np.asarray(w.scale, dtype=np.float32), (n, 1))
    else:
        raise ValueError(
            "linear: w is quantized per input column (axis=1); quantize the weight per output "
            "channel (axis=0) or per group (group_size=...) instead"
        )
    zero = None
    zero_point = w.zero_point
    if zero_point is not None:
        zero = np.broadcast_to(np.asarray(zero_point, dtype=np.float32), w.scale.shape)
        zero = np.ascontiguousarray(np.broadcast_to(zero.reshape(n, -1), scale.shape))
    packed = _qfast.pack_linear(
        _weight_codes(w),
        k,
        w.bits,
        w.signed,
        np.ascontiguousarray(scale),
        zero,
        w.group_size,
        None if w.g_idx is None else np.ascontiguousarray(w.g_idx, dtype=np.int32),
    )
    w._packed = (arrays, grid, packed)
    return packed


def linear(x: Any, w: QTensor, bias: Any = None, *, compute: str = "int8") -> np.ndarray:
    """A quantized linear layer: ``y = x @ W.T + bias``, float32 out.

    ``W`` is the ``[out, in]`` QTensor ``w`` (per output channel, ``axis=0``, or per group;
    8-bit or 2..7-bit; symmetric or asymmetric; with ``g_idx`` for GPTQ act_order). The float
    weight matrix is never built: the first call packs ``w`` for the kernels and caches the
    packed copy on ``w``, so later calls pay nothing for it. (Replace ``w``'s arrays rather
    than editing them in place, or the cache cannot see the change.)

    Args:
        x: float activations ``[..., in]`` (float32/float64/float16/bfloat16).
        w: the quantized weight.
        bias: optional ``[out]`` float bias.
        compute: ``"int8"`` (default) quantizes each row of ``x`` on the fly to symmetric
            INT8 (``qfast.quantize(row, 8)``) and multiplies integers with INT32 accumulation
            (W8A8 / W4A8); ``"float"`` keeps ``x`` in float32 and dequantizes the weights
            inside the kernel (W8A16 / W4A16): slower, as accurate as
            ``x @ qfast.dequantize(w).T``.

    Returns:
        float32 ``[..., out]``.
    """
    if compute not in _COMPUTE:
        raise ValueError(f'linear: compute must be "int8" or "float", not {compute!r}')
    packed = _pack(w)
    arr = float32_input(x, "linear: x")
    if arr.ndim == 0:
        raise ValueError("linear: x is 0-d; pass activations of shape [..., in]")
    n, k = w.shape
    if arr.shape[-1] != k:
        raise ValueError(f"linear: x has {arr.shape[-1]} features, the weight takes {k}")
    x2 = arr.reshape(-1, k)
    b = None
    if bias is not None:
        b = np.ascontiguousarray(bias, dtype=np.float32)
        if b.shape != (n,):
            raise ValueError(f"linear: bias has shape {b.shape}, expected ({n},)")
        if not np.isfinite(b).all():
            raise ValueError("linear: bias contains NaN or Inf")
    try:
        y = packed.forward(x2, b, compute)
    except ValueError as e:
        raise ValueError(f"linear: {_activation_error(e, arr.shape)}") from None
    return y.reshape((*arr.shape[:-1], n))


def _activation_error(e: ValueError, shape: tuple[int, ...]) -> str:
    """The kernel's message, with a flattened (row, column) index mapped back to `shape`."""
    msg = str(e)
    if "at index (" in msg and len(shape) != 2:
        head, _, rest = msg.partition("at index (")
        idx, _, tail = rest.partition(")")
        row, col = (int(v) for v in idx.split(","))
        lead = tuple(int(i) for i in np.unravel_index(row, shape[:-1]))
        return f"{head}at index {(*lead, col)}{tail}"
    return msg

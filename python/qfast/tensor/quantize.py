"""The public array API: quantize, dequantize, pack, unpack, pack_int4, unpack_int4."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _qfast
from .._checks import (
    as_bool,
    as_int,
    check_bits,
    check_group_size,
    check_positive_array,
    float_input,
    normalize_axis,
)
from .qtensor import (
    QTensor,
    as_scale_dtype,
    check_codes,
    code_range,
    data_shape,
    line_bytes,
    param_shape,
    round_scale,
    scale_dtype_name,
)


def _grid_array(value: Any, want: tuple[int, ...], name: str, codes: tuple[int, int]) -> np.ndarray:
    """A caller's scale (float32) or zero_point (int32 within the code range `codes`) as a flat
    array in the layout the kernels expect."""
    arr = np.asarray(value)
    size = int(np.prod(want, dtype=np.int64))
    if arr.shape == want or (arr.ndim <= 1 and arr.size == size):
        pass
    elif arr.size == 1:
        arr = np.broadcast_to(arr.reshape(()), want)
    else:
        raise ValueError(
            f"{name} has shape {arr.shape}; this granularity needs shape {want} "
            f"({size} values) or a single value"
        )
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a numeric array, got {arr.dtype}")
    if name == "zero_point":
        lo, hi = codes
        if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
            raise ValueError("zero_point must hold integer codes")
        if arr.size and (arr.min() < lo or arr.max() > hi):
            bad = arr.min() if arr.min() < lo else arr.max()
            raise ValueError(f"zero_point {bad} is outside the code range [{lo}, {hi}]")
        return np.ascontiguousarray(arr, dtype=np.int32).reshape(-1)
    out = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    check_positive_array(out, "scale")
    return out


def _rounded_given_scale(scale: np.ndarray, sdtype: str) -> np.ndarray:
    """A caller's (checked, float32) scale rounded to ``scale_dtype``, still positive finite."""
    r = round_scale(scale, sdtype)
    bad = ~np.isfinite(r)
    if bad.any():
        raise ValueError(
            f"scale {scale[bad.argmax()]!r} is too large for {sdtype}; pass "
            "scale_dtype=np.float32 (or bfloat16)"
        )
    return r


def quantize(
    x: Any,
    bits: int = 8,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
    scale: Any = None,
    zero_point: Any = None,
    scale_dtype: Any = np.float32,
) -> QTensor:
    """Quantizes a float array to ``bits``-wide integer codes.

    ``q = clamp(rint(x / scale) + zero_point, qmin, qmax)`` in float32, ties to even.

    Args:
        x: float32, float64, float16 or bfloat16 (ml_dtypes) array-like of any shape and
            strides; float64 and 16-bit inputs are converted to float32 first.
        bits: code width, 2 to 8. Codes are stored densely, ``ceil(n * bits / 8)`` bytes per
            line of ``n`` along the last axis: each line one little-endian bit stream (see
            :func:`pack`; 8-bit one byte per code, 4-bit two per byte, 3-bit eight codes in
            three bytes).
        symmetric: signed codes in ``[-2^(b-1), 2^(b-1) - 1]`` with ``scale = max|x| /
            (2^(b-1) - 1)``; else unsigned codes in ``[0, 2^b - 1]`` with a zero point.
        axis: one scale per index of this axis (per-channel); ``None`` for per-tensor.
        group_size: one scale per this many consecutive elements along the last axis (the
            last group of a row may be shorter).
        scale, zero_point: a given grid (static quantization), shaped like the result's
            ``scale``; ``zero_point`` is required for, and only allowed with,
            ``symmetric=False``.
        scale_dtype: the dtype the scales are stored in: np.float32 (default), np.float16
            or ml_dtypes.bfloat16 (or their names). Each scale is rounded (to nearest even)
            as its grid is computed, and the zero point and codes are computed against the
            rounded scale, so they are exact for the scale as stored. A given ``scale`` is
            rounded the same way first.

    Returns:
        A :class:`QTensor`.

    Raises:
        ValueError: non-finite values (the message names the first position), bad bits,
            axis, group_size or grid shapes.
        TypeError: non-float input.
    """
    bits = check_bits(bits)
    arr = float_input(x, "x")
    dtype = arr.dtype.name
    if dtype in ("float16", "bfloat16"):
        arr = arr.view(np.uint16)  # the kernels take 16-bit floats as their bits
    shape = tuple(arr.shape)
    if group_size is not None:
        if axis is not None:
            raise ValueError(
                "pass either axis (per-channel) or group_size (groups along the last axis), "
                "not both"
            )
        group_size = check_group_size(group_size)
        if group_size > 2**31:
            # Any group_size >= n means one group per row; keep it within the kernels' range.
            group_size = max(shape[-1] if shape else 1, 1)
    elif axis is not None:
        axis = normalize_axis(axis, arr.ndim)
    signed = as_bool(symmetric, "symmetric")
    if zero_point is not None and signed:
        raise ValueError("zero_point was given with symmetric=True; pass symmetric=False")
    if zero_point is not None and scale is None:
        raise ValueError("zero_point was given without scale; pass both for a static grid")
    if scale is not None and not signed and zero_point is None:
        raise ValueError("symmetric=False with a given scale also needs zero_point")
    pshape = param_shape(shape, axis, group_size)
    codes_range = code_range(bits, signed)
    sdtype = scale_dtype_name(scale_dtype)
    given_scale = None if scale is None else _grid_array(scale, pshape, "scale", codes_range)
    if given_scale is not None and sdtype != "float32":
        given_scale = _rounded_given_scale(given_scale, sdtype)
    given_zp = (
        None if zero_point is None else _grid_array(zero_point, pshape, "zero_point", codes_range)
    )
    codes, out_scale, out_zp = _qfast.quantize(
        arr, dtype, bits, signed, axis, group_size, given_scale, given_zp, sdtype
    )
    data = codes.reshape(data_shape(shape, bits))
    if signed and bits == 8:
        data = data.view(np.int8)
    return QTensor(
        data,
        shape,
        bits,
        signed,
        as_scale_dtype(out_scale.reshape(pshape), sdtype),
        None if out_zp is None else out_zp.reshape(pshape),
        axis=axis,
        group_size=group_size,
    )


def dequantize(q: QTensor, dtype: Any = np.float32, *, out: np.ndarray | None = None) -> np.ndarray:
    """``scale * (q - zero_point)`` per element, in float32 (or float16 / bfloat16).

    Args:
        q: a :class:`QTensor`.
        dtype: np.float32 (default), np.float16 or ml_dtypes.bfloat16.
        out: an existing C-contiguous array of ``q.shape`` and ``dtype`` to write into.
    """
    if not isinstance(q, QTensor):
        raise TypeError(f"dequantize expects a QTensor, got {type(q).__name__}")
    return q.dequantize(dtype, out=out)


def _lines(arr: np.ndarray) -> tuple[tuple[int, ...], int]:
    shape = arr.shape if arr.ndim else (1,)
    return shape[:-1], shape[-1]


def pack(codes: Any, bits: int, *, signed: bool | None = None) -> np.ndarray:
    """Packs integer codes of ``bits`` bits (2 to 8) densely along the last axis.

    Each line (the last axis) becomes one little-endian bit stream: code ``i`` occupies bits
    ``[i * bits, (i + 1) * bits)`` of the line's bytes, bit 0 being the least significant bit
    of byte 0; the line is padded with zero bits to a whole byte. Signed codes are stored two's
    complement in their ``bits``-wide field. For 4-bit this is element ``2i`` in the low nibble
    of byte ``i``; 8-bit codes are one byte each. This is how :class:`QTensor` stores ``data``.
    A 0-d array is one line of one code.

    Args:
        codes: integer codes, in ``[-2^(bits-1), 2^(bits-1) - 1]`` when signed, ``[0,
            2^bits - 1]`` otherwise.
        bits: the code width, 2 to 8.
        signed: the code range; by default, signed for signed integer dtypes.

    Returns:
        uint8 array of shape ``codes.shape[:-1] + (ceil(n * bits / 8),)``.

    Raises:
        TypeError: non-integer codes.
        ValueError: codes outside the range, or bits outside 2..8.
    """
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"pack expects integer codes, got {arr.dtype}; round and cast them first")
    bits = check_bits(bits)
    signed = arr.dtype.kind == "i" if signed is None else as_bool(signed, "signed")
    # Contiguous first: a broadcast view of absurd size fails here, at once, with MemoryError
    # rather than after a scan of every element.
    arr = np.ascontiguousarray(arr).reshape(arr.shape)
    check_codes(
        arr,
        bits,
        signed,
        f"; clip the codes to the range (or pass signed={not signed} if they use the other one)",
    )
    lead, n = _lines(arr)
    flat = arr.astype(np.int8 if signed else np.uint8, copy=False)
    packed = _qfast.pack(flat.view(np.uint8).reshape(-1), n, bits)
    return packed.reshape((*lead, line_bytes(n, bits)))


def unpack(p: Any, n: int, bits: int, *, signed: bool = True) -> np.ndarray:
    """Unpacks ``n`` codes of ``bits`` bits per line from the layout :func:`pack` writes.

    Args:
        p: uint8 array, ``(..., m)`` with ``m >= ceil(n * bits / 8)`` (extra bytes are
            ignored).
        n: the logical length of the last axis.
        bits: the code width, 2 to 8.
        signed: sign-extend the codes to int8 (default) or return uint8 in ``[0, 2^bits - 1]``.

    Returns:
        int8 (signed) or uint8 array of shape ``p.shape[:-1] + (n,)``.
    """
    arr = np.asarray(p)
    if arr.dtype != np.uint8:
        raise TypeError(f"unpack expects uint8 packed codes, got {arr.dtype}")
    n = as_int(n, "n")
    bits = check_bits(bits)
    signed = as_bool(signed, "signed")
    lead, m = _lines(arr)
    if n < 0 or line_bytes(n, bits) > m:
        raise ValueError(
            f"{m} packed bytes per line cannot hold n={n} {bits}-bit codes "
            f"(that needs ceil(n * {bits} / 8) = {line_bytes(max(n, 0), bits)}); pass the "
            "logical length of the last axis"
        )
    flat = np.ascontiguousarray(arr).reshape(-1)
    out = _qfast.unpack(flat, m, n, bits, signed).reshape((*lead, n))
    return out.view(np.int8) if signed else out


def pack_int4(q: Any, *, signed: bool | None = None) -> np.ndarray:
    """Packs 4-bit codes two per byte along the last axis: :func:`pack` with ``bits=4``.

    Element ``2i`` goes to the low nibble of byte ``i``, ``2i + 1`` to the high nibble; an odd
    last axis is padded with a zero code. Signed codes are stored two's complement.

    Args:
        q: integer codes, in ``[-8, 7]`` when signed, ``[0, 15]`` otherwise.
        signed: the code range; by default, signed for signed integer dtypes.

    Returns:
        uint8 array of shape ``q.shape[:-1] + (ceil(n / 2),)``.
    """
    return pack(q, 4, signed=signed)


def unpack_int4(p: Any, n: int, *, signed: bool = True) -> np.ndarray:
    """Unpacks 4-bit codes packed by :func:`pack_int4`: :func:`unpack` with ``bits=4``.

    Args:
        p: uint8 array, ``(..., m)`` with ``m >= ceil(n / 2)``.
        n: the logical length of the last axis.
        signed: sign-extend the nibbles to int8 (default) or return uint8 in ``[0, 15]``.

    Returns:
        int8 (signed) or uint8 array of shape ``p.shape[:-1] + (n,)``.
    """
    return unpack(p, n, 4, signed=signed)

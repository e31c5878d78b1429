"""Independent NumPy references for qfast's numeric conventions (float32 throughout)."""

from __future__ import annotations

import numpy as np

F32 = np.float32


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _sanitize(scale: np.ndarray) -> np.ndarray:
    scale = np.where(scale == 0, F32(1), scale)
    return np.where(scale < np.finfo(F32).tiny, np.finfo(F32).tiny, scale).astype(F32)


def _fit(scale: np.ndarray, zp: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Scales lowered one float32 step at a time until codes ``lo..hi`` dequantize finite
    (``scale * (q - zp)``): only ranges within a rounding step of float32's maximum."""
    scale = scale.copy()
    with np.errstate(over="ignore"):
        while True:
            far = np.maximum(hi - zp, zp - lo).astype(F32)
            bad = ~np.isfinite(far * scale) & np.isfinite(scale)  # an inf scale is an error
            if not bad.any():
                return scale
            scale[bad] = np.nextafter(scale[bad], F32(0))


def grid(x: np.ndarray, bits: int, signed: bool, reduce_axes) -> tuple[np.ndarray, np.ndarray]:
    """DESIGN.md's grid: scale and zero point per unit (keepdims over `reduce_axes`)."""
    x = x.astype(F32)
    qmin, qmax = code_range(bits, signed)
    if x.size == 0:
        shape = [
            1 if (reduce_axes is None or k in reduce_axes) else d for k, d in enumerate(x.shape)
        ]
        return np.ones(shape, F32), np.zeros(shape, np.int32)
    if signed:
        amax = np.max(np.abs(x), axis=reduce_axes, keepdims=True)
        scale = _sanitize(amax / F32(qmax))
        zp = np.zeros_like(scale, dtype=np.int32)
        return _fit(scale, zp, -qmax, qmax), zp
    lo = np.minimum(np.min(x, axis=reduce_axes, keepdims=True), F32(0))
    hi = np.maximum(np.max(x, axis=reduce_axes, keepdims=True), F32(0))
    scale = _sanitize((hi - lo) / F32(qmax))
    while True:  # the zero point follows a lowered scale
        zp = np.clip(np.rint(-lo / scale), qmin, qmax).astype(np.int32)
        fitted = _fit(scale, zp, qmin, qmax)
        if np.array_equal(fitted, scale):
            return scale, zp
        scale = np.where(fitted != scale, np.nextafter(scale, F32(0)), scale)


def quantize_codes(x: np.ndarray, scale, zero_point, bits: int, signed: bool) -> np.ndarray:
    """q = clamp(rint(x / scale) + zero_point, qmin, qmax), evaluated in float32."""
    qmin, qmax = code_range(bits, signed)
    x = x.astype(F32)
    v = np.rint(x / np.asarray(scale, F32)) + np.asarray(zero_point, F32)
    return np.clip(v, qmin, qmax).astype(np.int32)


def expand_groups(p: np.ndarray, group_size: int, n: int) -> np.ndarray:
    """Per-group parameters [..., n_groups] repeated to [..., n]."""
    return np.repeat(p, group_size, axis=-1)[..., :n]


def reference_quantize(x, bits=8, symmetric=True, axis=None, group_size=None):
    """(codes, scale, zero_point) as DESIGN.md defines them, codes unpacked as int32."""
    x = np.asarray(x).astype(F32)
    if x.ndim == 0:
        x1 = x.reshape(1)
    else:
        x1 = x
    signed = symmetric
    if group_size is not None:
        n = x1.shape[-1]
        ng = -(-n // group_size)
        pad = ng * group_size - n
        # Pad with copies of each group's own values so padding never changes min/max.
        xs = [x1[..., j * group_size : (j + 1) * group_size] for j in range(ng)]
        scales, zps = [], []
        for seg in xs:
            s, z = grid(seg, bits, signed, (seg.ndim - 1,))
            scales.append(s)
            zps.append(z)
        if ng == 0:
            shape = (*x1.shape[:-1], 0)
            return np.zeros(x1.shape, np.int32), np.ones(shape, F32), np.zeros(shape, np.int32)
        scale = np.concatenate(scales, axis=-1)
        zp = np.concatenate(zps, axis=-1)
        del pad
        codes = quantize_codes(
            x1,
            expand_groups(scale, group_size, n),
            expand_groups(zp, group_size, n),
            bits,
            signed,
        )
        return codes.reshape(x.shape), scale, zp
    if axis is not None:
        axis = axis % x1.ndim
        reduce_axes = tuple(k for k in range(x1.ndim) if k != axis)
    else:
        reduce_axes = None
    scale, zp = grid(x1, bits, signed, reduce_axes)
    if axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    codes = quantize_codes(x1, scale, zp, bits, signed)
    return codes.reshape(x.shape), scale, zp


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """The documented layout, built bit by bit with NumPy: each line of the last axis is one
    little-endian bit stream (code ``i`` in bits ``[i * bits, (i + 1) * bits)``, bit 0 the
    lowest bit of byte 0, two's complement for negative codes), zero-padded to whole bytes.
    A 0-d array is one line of one code."""
    c = np.asarray(codes).astype(np.int64)
    c = c.reshape(1) if c.ndim == 0 else c
    lead, n = c.shape[:-1], c.shape[-1]
    fields = ((c[..., None] >> np.arange(bits)) & 1).astype(np.uint8)  # [..., n, bits]
    stream = fields.reshape(*lead, n * bits)
    pad = -(n * bits) % 8
    stream = np.concatenate([stream, np.zeros((*lead, pad), np.uint8)], axis=-1)
    return np.packbits(stream, axis=-1, bitorder="little")


def unpack_codes(data: np.ndarray, bits: int, n: int, signed: bool) -> np.ndarray:
    """Codes as int32 from a QTensor's data (independent of qfast's unpacker): 8-bit codes one
    per byte, narrower ones read from each line's little-endian bit stream with
    ``np.unpackbits``."""
    data = np.asarray(data)
    if bits == 8:
        return data.view(np.int8 if signed else np.uint8).astype(np.int32)
    b = data.view(np.uint8)
    b = b.reshape(1) if b.ndim == 0 else b
    stream = np.unpackbits(b, axis=-1, bitorder="little")[..., : n * bits]
    fields = stream.reshape(*b.shape[:-1], n, bits).astype(np.int32)
    codes = (fields << np.arange(bits, dtype=np.int32)).sum(axis=-1, dtype=np.int32)
    if signed:
        codes = np.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)
    return codes

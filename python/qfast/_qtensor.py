"""QTensor: quantized codes plus the grid that maps them back to floats."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from . import _qfast

FORMAT_VERSION = 1

_OUT_DTYPES = ("float32", "float16", "bfloat16")


def line_bytes(n: int, bits: int) -> int:
    """Bytes of one stored line of ``n`` codes of ``bits`` bits: ``ceil(n * bits / 8)``.

    Every width is packed densely: a line's codes form one little-endian bit stream (code
    ``i`` in bits ``[i * bits, (i + 1) * bits)``, bit 0 the lowest bit of byte 0), padded with
    zero bits to a whole byte.
    """
    return -(-n * bits // 8)


def param_shape(
    shape: tuple[int, ...], axis: int | None, group_size: int | None
) -> tuple[int, ...]:
    """Shape of `scale` / `zero_point` for a granularity (axis already normalised)."""
    if group_size is not None:
        lead, n = (shape[:-1], shape[-1]) if shape else ((), 1)
        return (*lead, -(-n // group_size))
    if axis is not None:
        return tuple(d if k == axis else 1 for k, d in enumerate(shape))
    return ()


def data_shape(shape: tuple[int, ...], bits: int) -> tuple[int, ...]:
    """Shape of the stored codes: the last axis packed to :func:`line_bytes` (a 0-d tensor is
    one line of one code; 8-bit codes keep the logical shape)."""
    if bits == 8:
        return shape
    lead, n = (shape[:-1], shape[-1]) if shape else ((), 1)
    return (*lead, line_bytes(n, bits))


def _contiguous(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy or view that keeps 0-d shapes (ascontiguousarray makes them 1-d)."""
    return np.ascontiguousarray(a).reshape(a.shape)


def _dtype_name(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _OUT_DTYPES:
        raise TypeError(f"cannot dequantize to {name}; pass np.float32, np.float16 or bfloat16")
    return name


class QTensor:
    """A quantized tensor: ``dequantize() == scale * (q - zero_point)`` per element.

    Attributes:
        data: the codes as stored: int8/uint8 for 8-bit (one per byte); for 2 to 7 bits,
            uint8 packed densely along the last axis, ``ceil(n * bits / 8)`` bytes per line of
            ``n`` codes, each line one little-endian bit stream (code ``i`` in bits
            ``[i * bits, (i + 1) * bits)``, bit 0 the lowest bit of byte 0, zero padding).
            Signed codes are two's complement in their field. See :func:`qfast.pack`.
        shape: the logical shape.
        bits: the code width, 2 to 8.
        signed: whether the codes are signed (symmetric grids).
        scale: float32 (or float16), broadcastable against the logical tensor: ``()``
            per-tensor, keepdims per-channel, ``shape[:-1] + (n_groups,)`` per-group.
        zero_point: ``None`` for symmetric grids, else int32 codes (or floats where a method's
            grid has a float offset), shaped like ``scale``.
        axis: the per-channel axis, or ``None``.
        group_size: the group size along the last axis, or ``None``.
        g_idx: optional int32 ``[shape[-1]]``, the group of each input column (GPTQ act_order).
        meta: a small JSON-serialisable dict kept with the tensor.
    """

    __slots__ = (
        "_packed",
        "axis",
        "bits",
        "data",
        "g_idx",
        "group_size",
        "meta",
        "scale",
        "shape",
        "signed",
        "zero_point",
    )

    def __init__(
        self,
        data: np.ndarray,
        shape: tuple[int, ...],
        bits: int,
        signed: bool,
        scale: np.ndarray,
        zero_point: np.ndarray | None = None,
        *,
        axis: int | None = None,
        group_size: int | None = None,
        g_idx: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.data = np.asarray(data)
        self.shape = tuple(int(d) for d in shape)
        self.bits = int(bits)
        self.signed = bool(signed)
        self.scale = np.asarray(scale)
        self.zero_point = None if zero_point is None else np.asarray(zero_point)
        self.axis = None if axis is None else int(axis)
        self.group_size = None if group_size is None else int(group_size)
        self.g_idx = None if g_idx is None else np.asarray(g_idx, dtype=np.int32)
        self.meta = dict(meta or {})
        self._packed: Any = None  # linear()'s packed weight, keyed on the arrays above
        self._check()

    @classmethod
    def from_codes(
        cls,
        codes: np.ndarray,
        bits: int,
        signed: bool,
        scale: np.ndarray,
        zero_point: np.ndarray | None = None,
        **kwargs: Any,
    ) -> QTensor:
        """A QTensor over integer ``codes`` of the logical shape (one per element), packed
        as the width's storage needs (:func:`qfast.pack`: every width below 8 densely).

        Raises ValueError for codes outside the ``bits``-wide range (signed or unsigned), which
        packing would otherwise truncate silently.

        ``kwargs``: ``axis``, ``group_size``, ``g_idx``, ``meta`` as for the constructor.
        """
        from ._api import pack

        codes = np.asarray(codes)
        shape = tuple(codes.shape)
        data = pack(codes, bits, signed=bool(signed)).reshape(data_shape(shape, bits))
        if bits == 8 and signed:
            data = data.view(np.int8)
        return cls(data, shape, bits, signed, scale, zero_point, **kwargs)

    @property
    def loss(self) -> float | None:
        """The quantizer's own loss, where the method reports one (GPTQ: ``Σ (w - q)² / 2d²``
        over the weights, as the reference logs it); ``meta["loss"]``."""
        value = self.meta.get("loss")
        return None if value is None else float(value)

    def _granularity(self) -> str:
        if self.group_size is not None:
            return f"group_size={self.group_size}"
        if self.axis is not None:
            return f"axis={self.axis}"
        return "per-tensor"

    def _check(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits={self.bits} is not supported; use 2 to 8")
        if self.axis is not None:
            nd = max(len(self.shape), 1)
            if not -nd <= self.axis < nd:
                raise ValueError(f"axis={self.axis} is out of range for shape {self.shape}")
            self.axis %= nd
            if self.group_size is not None:
                raise ValueError("a QTensor has either axis or group_size, not both")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {self.group_size}")
        if self.data.dtype.kind not in "iu" or self.data.dtype.itemsize != 1:
            raise TypeError(f"data must be int8 or uint8 codes, got {self.data.dtype}")
        want = data_shape(self.shape, self.bits)
        if self.data.shape != want and not (self.shape == () and self.data.size == 1):
            raise ValueError(
                f"data has shape {self.data.shape}; {self.bits}-bit codes of logical shape "
                f"{self.shape} are stored as {want}"
            )
        if self.scale.dtype.kind != "f":
            raise TypeError(f"scale must be floating point, got {self.scale.dtype}")
        if self.zero_point is not None and self.zero_point.shape != self.scale.shape:
            raise ValueError(
                f"zero_point has shape {self.zero_point.shape}, scale {self.scale.shape}"
            )
        if self.g_idx is not None:
            n = self.shape[-1] if self.shape else 1
            if self.group_size is None or self.g_idx.shape != (n,):
                raise ValueError(f"g_idx needs group_size and shape ({n},)")
        elif self.scale.shape != param_shape(self.shape, self.axis, self.group_size):
            raise ValueError(
                f"scale has shape {self.scale.shape}; shape {self.shape} with "
                f"{self._granularity()} needs {param_shape(self.shape, self.axis, self.group_size)}"
            )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Storage in bytes: codes, scales, zero points and g_idx."""
        parts = [self.data, self.scale, self.zero_point, self.g_idx]
        return int(sum(p.nbytes for p in parts if p is not None))

    @property
    def bits_per_weight(self) -> float:
        """Average storage bits per logical element, scales and zero points included."""
        return 8.0 * self.nbytes / max(self.size, 1)

    def dequantize(self, dtype: Any = np.float32, *, out: np.ndarray | None = None) -> np.ndarray:
        """``scale * (q - zero_point)`` per element, computed in float32.

        Args:
            dtype: np.float32 (default), np.float16 or ml_dtypes.bfloat16 (rounded to
                nearest even from the float32 result).
            out: an existing C-contiguous, writeable array of this shape and dtype to write
                into (saves allocating, and the OS zeroing, fresh memory on every call).

        Returns:
            The dequantized array (``out`` when given).
        """
        name = _dtype_name(dtype)
        self._check()  # fields are public and may have been reassigned
        flat_out = None
        if out is not None:
            if not isinstance(out, np.ndarray) or out.dtype.name != name:
                raise TypeError(f"out must be a {name} ndarray, got {getattr(out, 'dtype', out)}")
            if out.shape != self.shape:
                raise ValueError(f"out has shape {out.shape}, expected {self.shape}")
            if not (out.flags.c_contiguous and out.flags.writeable and out.flags.aligned):
                raise ValueError("out must be C-contiguous, aligned and writeable")
            flat_out = out.reshape(-1)
            if name != "float32":
                flat_out = flat_out.view(np.uint16)
        zp = None if self.zero_point is None else np.ascontiguousarray(self.zero_point, np.float32)
        flat = _qfast.dequantize(
            np.ascontiguousarray(self.data).view(np.uint8).reshape(-1),
            list(self.shape),
            self.bits,
            self.signed,
            self.axis,
            self.group_size,
            np.ascontiguousarray(self.scale, np.float32).reshape(-1),
            None if zp is None else zp.reshape(-1),
            self.g_idx,
            name,
            flat_out,
        )
        if out is not None:
            return out
        out = flat.reshape(self.shape)
        if name == "float16":
            return out.view(np.float16)
        if name == "bfloat16":
            import ml_dtypes

            return out.view(ml_dtypes.bfloat16)
        return out

    def to_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """A flat dict of NumPy arrays (for safetensors); :meth:`from_dict` reads it back."""
        header = {
            "format_version": FORMAT_VERSION,
            "shape": list(self.shape),
            "bits": self.bits,
            "signed": self.signed,
            "axis": self.axis,
            "group_size": self.group_size,
            "meta": self.meta,
        }
        out = {
            prefix + "qfast_header": np.frombuffer(json.dumps(header).encode(), np.uint8).copy(),
            prefix + "data": _contiguous(self.data),
            prefix + "scale": _contiguous(self.scale),
        }
        if self.zero_point is not None:
            out[prefix + "zero_point"] = _contiguous(self.zero_point)
        if self.g_idx is not None:
            out[prefix + "g_idx"] = _contiguous(self.g_idx)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, np.ndarray], prefix: str = "") -> QTensor:
        """Rebuilds a QTensor written by :meth:`to_dict`."""
        try:
            header = json.loads(bytes(np.asarray(d[prefix + "qfast_header"], np.uint8)))
        except KeyError:
            raise ValueError(f"no {prefix}qfast_header entry: not a qfast QTensor dict") from None
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"QTensor format version {version} is not supported by this qfast "
                f"(which reads version {FORMAT_VERSION}); upgrade qfast"
            )
        return cls(
            d[prefix + "data"],
            tuple(header["shape"]),
            header["bits"],
            header["signed"],
            d[prefix + "scale"],
            d.get(prefix + "zero_point"),
            axis=header["axis"],
            group_size=header["group_size"],
            g_idx=d.get(prefix + "g_idx"),
            meta=header.get("meta") or {},
        )

    def __repr__(self) -> str:
        gran = self._granularity()
        if self.signed:
            scheme = "symmetric"
        elif self.meta.get("symmetric"):  # GPTQ's symmetric grid: unsigned codes, zero 2^(b-1)
            scheme = "symmetric grid, unsigned codes"
        else:
            scheme = "asymmetric"
        return (
            f"QTensor(shape={self.shape}, bits={self.bits}, {scheme}, {gran}, "
            f"{self.bits_per_weight:.3g} bits/weight)"
        )

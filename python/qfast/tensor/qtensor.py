"""QTensor: quantized codes plus the grid that maps them back to floats."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _qfast
from .._checks import (
    as_bool,
    as_int,
    check_bits,
    check_group_size,
    normalize_axis,
    register_qtensor_type,
)

# Version 2: scales in their own dtype, integer zero points packed at the code width, a header
# that records every field. Version 1 (float32 scales, int32 zero points, 3/5/6/7-bit codes
# one per byte) still loads.
FORMAT_VERSION = 2
_READS = (1, 2)

_OUT_DTYPES = ("float32", "float16", "bfloat16")
# The dtypes a QTensor stores its scales in (``scale_dtype``).
SCALE_DTYPES = ("float32", "float16", "bfloat16")


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


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """The codes of a ``bits``-wide field: ``[-2^(b-1), 2^(b-1) - 1]`` signed, else
    ``[0, 2^b - 1]``."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def check_codes(codes: np.ndarray, bits: int, signed: bool, hint: str = "") -> None:
    """A ValueError naming the first code outside the ``bits``-wide range (min / max first,
    so codes in range cost no temporary)."""
    lo, hi = code_range(bits, signed)
    if codes.size and (codes.min() < lo or codes.max() > hi):
        at = np.unravel_index(int(((codes < lo) | (codes > hi)).argmax()), codes.shape)
        raise ValueError(
            f"code {int(codes[at])} at index {tuple(int(i) for i in at)} is outside the "
            f"{'signed' if signed else 'unsigned'} {bits}-bit range [{lo}, {hi}]{hint}"
        )


def _pack_lines(codes: np.ndarray, n: int, bits: int, signed: bool) -> np.ndarray:
    """Flat codes (lines of ``n``, already in range) packed line by line, flat uint8."""
    typed = np.ascontiguousarray(codes.astype(np.int8 if signed else np.uint8, copy=False))
    flat = typed.view(np.uint8).reshape(-1)
    if bits == 8 or n == 0:
        return flat
    return _qfast.pack(flat, n, bits)


def _unpack_lines(packed: np.ndarray, n: int, bits: int, signed: bool) -> np.ndarray:
    """The inverse of :func:`_pack_lines`: flat int8 (signed) or uint8 codes."""
    flat = np.ascontiguousarray(packed).view(np.uint8).reshape(-1)
    if bits < 8 and n:
        m = line_bytes(n, bits)
        flat = _qfast.unpack(flat, m, n, bits, signed)
    elif not n:
        flat = flat[:0]
    return flat.view(np.int8) if signed else flat


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


def scale_dtype_name(dtype: Any) -> str:
    """``"float32"``, ``"float16"`` or ``"bfloat16"`` for a ``scale_dtype`` argument: a dtype,
    a type (``np.float16``, ``ml_dtypes.bfloat16``) or one of those names."""
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            raise TypeError(
                f"scale_dtype must be a dtype or its name, got {dtype!r}; pass np.float32, "
                "np.float16 or ml_dtypes.bfloat16"
            ) from None
    if name not in SCALE_DTYPES:
        raise ValueError(
            f"scale_dtype {name!r} is not supported; pass np.float32 (default), np.float16 "
            "or ml_dtypes.bfloat16 (or their names)"
        )
    return name


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def as_scale_dtype(scale: np.ndarray, name: str) -> np.ndarray:
    """float32 scale values (already rounded to ``name``, as the kernels return them) stored as
    ``name``: the cast is exact."""
    return np.asarray(scale).astype(_np_dtype(name), copy=False)


def round_scale(scale: np.ndarray, name: str) -> np.ndarray:
    """Scales rounded to ``name`` (to nearest, ties to even) and back to float32, as the kernels
    round the scales they compute; a positive scale never rounds to zero (it becomes the
    dtype's smallest positive value)."""
    s32 = np.asarray(scale, np.float32)
    if name == "float32":
        return s32
    with np.errstate(over="ignore"):
        r = s32.astype(_np_dtype(name)).astype(np.float32)
    tiny = np.float32(2.0**-24 if name == "float16" else 2.0**-133)
    return np.where((r == 0) & (s32 > 0), tiny, r).astype(np.float32)


def _finite(a: np.ndarray) -> np.ndarray:
    """``np.isfinite`` for any float dtype, bfloat16 included."""
    return np.isfinite(a if a.dtype.kind == "f" else a.astype(np.float32))


def _all_finite(a: np.ndarray) -> bool:
    """Whether every value is finite, without a temporary the size of ``a`` (NaN and ±Inf
    reach the minimum or the maximum): this runs on every QTensor."""
    if a.size == 0:
        return True
    lo, hi = np.float32(a.min()), np.float32(a.max())
    return bool(np.isfinite(lo) and np.isfinite(hi))


def _stored_scale(scale: Any) -> np.ndarray:
    """``scale`` as a QTensor holds it: float32/float16/bfloat16 kept, other floats float32."""
    arr = np.asarray(scale)
    if arr.dtype.kind == "f" and arr.dtype.name not in SCALE_DTYPES:
        arr = arr.astype(np.float32)
    return arr


def _check_scale(scale: np.ndarray) -> None:
    if scale.dtype.name not in SCALE_DTYPES:
        raise TypeError(f"scale must be float32, float16 or bfloat16, got {scale.dtype}")
    if not _all_finite(scale):
        at = int(np.argmin(_finite(scale).reshape(-1)))
        raise ValueError(
            f"scale {scale.reshape(-1)[at]} at flat index {at} is not finite; a QTensor's "
            "scales must be finite"
        )


def _as_g_idx(g_idx: Any) -> np.ndarray:
    """``g_idx`` as int32, refusing values int32 cannot hold (a cast would wrap them)."""
    g = np.asarray(g_idx)
    if g.dtype.kind not in "iu":
        raise TypeError(f"g_idx must be integer group indices, got {g.dtype}")
    if g.size and (g.min() < 0 or g.max() > np.iinfo(np.int32).max):
        bad = g.min() if g.min() < 0 else g.max()
        raise ValueError(f"g_idx holds group {bad}, which is not a group index")
    return g.astype(np.int32, copy=False)


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


# ``QTensor._zp_bits`` of zero points kept as assigned, not packed (a shape that does not fit).
_UNPACKED = 0


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
        scale: float32, float16 or bfloat16 (the ``scale_dtype`` it was quantized with; other
            float input is stored as float32), broadcastable against the logical tensor:
            ``()`` per-tensor, keepdims per-channel, ``shape[:-1] + (n_groups,)`` per-group.
        zero_point: ``None`` for symmetric grids; else integer codes, handed out as a
            read-only int32 array shaped like ``scale`` (stored packed at ``bits`` bits, see
            :attr:`nbytes`), or floats where a method's grid has a float offset (HQQ, GGUF
            Q4_1), stored as given. Assign a new array to change it.
        axis: the per-channel axis, or ``None``.
        group_size: the group size along the last axis, or ``None``.
        g_idx: optional int32 ``[shape[-1]]``, the group of each input column (GPTQ act_order).
        meta: a small JSON-serialisable dict kept with the tensor.

    The constructor checks the grid once: scales (and float zero points) finite, integer zero
    points within the code range, ``g_idx`` within the groups, every shape consistent.
    """

    __slots__ = (
        "_packed",
        "_zp",
        "_zp_bits",
        "axis",
        "bits",
        "data",
        "g_idx",
        "group_size",
        "meta",
        "scale",
        "shape",
        "signed",
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
        self.shape = tuple(as_int(d, "shape") for d in shape)
        if any(d < 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} has a negative dimension")
        self.bits = check_bits(bits)
        self.signed = as_bool(signed, "signed")
        self.scale = _stored_scale(scale)
        self.axis = None if axis is None else as_int(axis, "axis")
        self.group_size = None if group_size is None else check_group_size(group_size)
        self.g_idx = None if g_idx is None else _as_g_idx(g_idx)
        self.meta = dict(meta or {})
        self._packed: Any = None  # linear()'s packed weight, keyed on the arrays above
        self._zp: np.ndarray | None = None
        self._zp_bits = self.bits
        self.zero_point = zero_point
        self._check()  # codes need no range check: a packed field cannot leave its width

    @property
    def zero_point(self) -> np.ndarray | None:
        """``None``; integer zero points as a fresh read-only int32 array shaped like
        ``scale``; or the float zero points as stored."""
        zp = self._zp
        if zp is None or _is_float(zp.dtype) or self._zp_bits == _UNPACKED:
            return zp
        n, _ = self._zp_lines()
        out = _unpack_lines(zp, n, self._zp_bits, self.signed).astype(np.int32)
        out = out.reshape(self.scale.shape)
        out.flags.writeable = False
        return out

    @zero_point.setter
    def zero_point(self, value: Any) -> None:
        if value is None:
            self._zp = None
            return
        zp = np.asarray(value)
        if zp.shape != self.scale.shape:
            # Kept as given: the check (on construction, or before the next use, as for a
            # reassigned scale) reports the mismatch.
            self._zp, self._zp_bits = zp, _UNPACKED
            return
        if _is_float(zp.dtype):
            if zp.dtype.name not in SCALE_DTYPES:
                zp = zp.astype(np.float32)
            self._zp = zp
            return
        if zp.dtype.kind not in "iu":
            raise TypeError(f"zero_point must be integer or float, got {zp.dtype}")
        lo, hi = code_range(self.bits, self.signed)
        if zp.size and (zp.min() < lo or zp.max() > hi):
            bad = zp.min() if zp.min() < lo else zp.max()
            raise ValueError(
                f"zero_point {bad} is outside the {self.bits}-bit "
                f"{'signed' if self.signed else 'unsigned'} code range [{lo}, {hi}]"
            )
        n, _ = self._zp_lines()
        packed = _pack_lines(zp.reshape(-1), n, self.bits, self.signed)
        self._zp = packed.reshape(self._zp_stored_shape(self.bits))
        self._zp_bits = self.bits

    def _zp_lines(self) -> tuple[int, int]:
        """Integer zero points are packed as lines like codes: along the last axis of a
        per-group grid, as one line for a per-channel or per-tensor one. ``(n, lines)``."""
        shape = self.scale.shape
        if self.group_size is not None and shape:
            n = shape[-1]
            return n, int(np.prod(shape[:-1], dtype=np.int64))
        return int(np.prod(shape, dtype=np.int64)), 1

    def _zp_stored_shape(self, bits: int) -> tuple[int, ...]:
        n, _ = self._zp_lines()
        shape = self.scale.shape
        if self.group_size is not None and shape:
            return (*shape[:-1], line_bytes(n, bits))
        return (line_bytes(n, bits),)

    @property
    def _stored(self) -> tuple[Any, ...]:
        """The arrays as stored (``linear`` keys its packed copy on them)."""
        return (self.data, self.scale, self._zp, self.g_idx)

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
        from .quantize import pack

        codes = np.asarray(codes)
        shape = tuple(codes.shape)
        data = pack(codes, bits, signed=as_bool(signed, "signed")).reshape(data_shape(shape, bits))
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
        """Every field consistent with the others, in O(scales + columns): run by the
        constructor, and again before use (the fields are public and may be reassigned)."""
        check_bits(self.bits)
        if self.axis is not None:
            self.axis = normalize_axis(self.axis, len(self.shape))
            if self.group_size is not None:
                raise ValueError("a QTensor has either axis or group_size, not both")
        if self.group_size is not None:
            check_group_size(self.group_size)
        if self.data.dtype.kind not in "iu" or self.data.dtype.itemsize != 1:
            raise TypeError(f"data must be int8 or uint8 codes, got {self.data.dtype}")
        want = data_shape(self.shape, self.bits)
        if self.data.shape != want and not (self.shape == () and self.data.size == 1):
            raise ValueError(
                f"data has shape {self.data.shape}; {self.bits}-bit codes of logical shape "
                f"{self.shape} are stored as {want}"
            )
        _check_scale(self.scale)
        if self.g_idx is not None:
            n = self.shape[-1] if self.shape else 1
            if self.group_size is None or self.g_idx.shape != (n,):
                raise ValueError(f"g_idx needs group_size and shape ({n},)")
            lead = self.shape[:-1]
            if self.scale.ndim != len(lead) + 1 or self.scale.shape[:-1] != lead:
                raise ValueError(
                    f"scale has shape {self.scale.shape}; with g_idx it must be "
                    f"{lead} + (n_groups,)"
                )
            groups = self.scale.shape[-1]
            if n and (self.g_idx.min() < 0 or self.g_idx.max() >= groups):
                bad = self.g_idx.min() if self.g_idx.min() < 0 else self.g_idx.max()
                raise ValueError(f"g_idx holds group {bad}; scale has {groups} groups")
        elif self.scale.shape != param_shape(self.shape, self.axis, self.group_size):
            raise ValueError(
                f"scale has shape {self.scale.shape}; shape {self.shape} with "
                f"{self._granularity()} needs {param_shape(self.shape, self.axis, self.group_size)}"
            )
        zp = self._zp
        if zp is None:
            return
        if self.signed and not _is_float(zp.dtype):
            raise ValueError(
                "signed codes take no integer zero point (a symmetric grid has none); pass "
                "signed=False for codes on an asymmetric grid"
            )
        if _is_float(zp.dtype) or self._zp_bits == _UNPACKED:
            if zp.shape != self.scale.shape:
                raise ValueError(f"zero_point has shape {zp.shape}, scale {self.scale.shape}")
            if not _all_finite(zp):
                at = int(np.argmin(_finite(zp).reshape(-1)))
                raise ValueError(
                    f"zero_point {zp.reshape(-1)[at]} at flat index {at} is not finite"
                )
        elif self._zp_bits != self.bits or zp.shape != self._zp_stored_shape(self.bits):
            raise ValueError(
                f"the zero points were stored for {self._zp_bits}-bit codes and a scale of "
                f"another shape; assign zero_point again after changing bits or scale"
            )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Storage in bytes, as held: codes, scales (in their dtype), zero points (integer
        ones packed at ``bits`` bits) and g_idx."""
        return int(sum(p.nbytes for p in self._stored if p is not None))

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
        zero_point = self.zero_point
        zp = None if zero_point is None else np.ascontiguousarray(zero_point, np.float32)
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
        """A flat dict of NumPy arrays (for safetensors); :meth:`from_dict` reads it back.

        Entries ``prefix + name``: ``qfast_header`` (JSON bytes, uint8), ``data``, ``scale``
        (in its dtype; bfloat16 as its uint16 bits), ``zero_point`` (integer ones packed as
        stored; float ones in their dtype) and ``g_idx`` where present. The header (format
        version 2) records the shape, the grid, the layouts and which entries exist.
        """
        self._check()
        zp = self._zp
        zinfo: dict[str, Any] | None = None
        if zp is not None and _is_float(zp.dtype):
            zinfo = {"kind": "float", "dtype": zp.dtype.name}
        elif zp is not None:
            zinfo = {"kind": "int", "bits": self._zp_bits, "layout": "dense"}
        header = {
            "format_version": FORMAT_VERSION,
            "shape": list(self.shape),
            "bits": self.bits,
            "signed": self.signed,
            "axis": self.axis,
            "group_size": self.group_size,
            "data_layout": "dense",
            "scale_dtype": self.scale.dtype.name,
            "zero_point": zinfo,
            "g_idx": self.g_idx is not None,
            "meta": self.meta,
        }
        out = {
            prefix + "qfast_header": np.frombuffer(json.dumps(header).encode(), np.uint8).copy(),
            prefix + "data": _contiguous(self.data),
            prefix + "scale": _to_file(self.scale),
        }
        if zp is not None:
            out[prefix + "zero_point"] = _to_file(zp)
        if self.g_idx is not None:
            out[prefix + "g_idx"] = _contiguous(self.g_idx)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "") -> QTensor:
        """Rebuilds a QTensor written by :meth:`to_dict` (format version 2, or version 1 of
        earlier qfast releases, whose one-per-byte 3/5/6/7-bit codes are checked and packed).

        Raises:
            ValueError: a missing entry, a corrupt or inconsistent header, arrays whose shape
                or size disagrees with it, codes or zero points out of range, non-finite
                scales; the message names the tensor (``prefix``) and the problem.
            TypeError: entries or header fields of the wrong type.
        """
        return _Loader(d, prefix).load(cls)

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


register_qtensor_type(QTensor)  # float_input refuses QTensors (qfast._checks)


def _to_file(a: np.ndarray) -> np.ndarray:
    """An array as a file stores it: contiguous, bfloat16 as its uint16 bits."""
    a = _contiguous(a)
    return a.view(np.uint16) if a.dtype.name == "bfloat16" else a


class _Loader:
    """:meth:`QTensor.from_dict`: every entry checked against the header, each error naming
    the tensor."""

    def __init__(self, d: Any, prefix: str) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        self.where = f"QTensor {prefix!r}" if prefix else "QTensor"
        if not isinstance(d, Mapping):
            raise TypeError(
                f"{self.where}: from_dict expects a dict of arrays, got {type(d).__name__}"
            )
        self.d = d
        self.prefix = prefix

    def fail(self, what: str, kind: type[Exception] = ValueError) -> Exception:
        return kind(f"{self.where}: {what}")

    def array(self, name: str) -> np.ndarray | None:
        value = self.d.get(self.prefix + name)
        if value is None:
            return None
        if isinstance(value, np.ndarray):
            return value
        try:
            return np.asarray(value)
        except Exception as e:  # an object NumPy cannot take
            raise self.fail(
                f"entry {self.prefix + name} is not an array ({e})", TypeError
            ) from None

    def need(self, name: str, why: str) -> np.ndarray:
        arr = self.array(name)
        if arr is None:
            raise self.fail(f"no {self.prefix + name} entry, {why}; the dict is incomplete")
        return arr

    def header(self) -> dict[str, Any]:
        raw = self.array("qfast_header")
        if raw is None:
            raise ValueError(
                f"no {self.prefix}qfast_header entry: not a qfast QTensor dict (or the wrong "
                "prefix)"
            )
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise self.fail(
                f"qfast_header must be 1-d uint8 (JSON bytes), got {raw.dtype} {raw.shape}",
                TypeError,
            )
        try:
            header = json.loads(raw.tobytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self.fail(f"qfast_header is not valid JSON ({e}); the entry is corrupt") from None
        if not isinstance(header, dict):
            raise self.fail(f"qfast_header is JSON {type(header).__name__}, not an object")
        return header

    def field(self, h: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
        if key not in h:
            raise self.fail(f"the header has no {key!r} field; the entry is corrupt")
        value = h[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise self.fail(f"header field {key!r} must be {what}, got {value!r}", TypeError)
        return value

    def load(self, cls: type[QTensor]) -> QTensor:
        h = self.header()
        version = h.get("format_version")
        if isinstance(version, bool) or version not in _READS:
            raise self.fail(
                f"QTensor format version {version!r} is not supported by this qfast "
                f"(which reads versions {', '.join(map(str, _READS))}); upgrade qfast"
            )
        shape = self.field(h, "shape", (list,), "a list of sizes")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape):
            raise self.fail(f"header field 'shape' must hold sizes >= 0, got {shape!r}", TypeError)
        shape = tuple(shape)
        bits = self.field(h, "bits", (int,), "an integer from 2 to 8")
        try:
            check_bits(bits)
        except ValueError as e:
            raise self.fail(f"header field 'bits': {e}") from None
        signed = self.field(h, "signed", (bool,), "true or false")
        axis = self.field(h, "axis", (int, type(None)), "an integer or null")
        group_size = self.field(h, "group_size", (int, type(None)), "an integer or null")
        meta = h.get("meta") or {}
        if not isinstance(meta, dict):
            raise self.fail(f"header field 'meta' must be an object, got {meta!r}", TypeError)
        data = self.need("data", "which holds the codes")
        scale = self.need("scale", "which holds the scales")
        if version == 1:
            zp: Any = self.v1_zero_point(signed)
            g_idx = self.array("g_idx")
            if (
                g_idx is None
                and meta.get("method") == "gptq"
                and meta.get("act_order")
                and not meta.get("static_groups")
                and group_size is not None
            ):
                raise self.fail(
                    f"no {self.prefix}g_idx entry, which a GPTQ act_order tensor with dynamic "
                    "groups needs (its groups follow the processing order); the dict is "
                    "incomplete"
                )
            layout = "byte" if bits in (3, 5, 6, 7) else "dense"
        else:
            scale = self.v2_scale(h, scale)
            zp = self.v2_zero_point(h, bits, signed)
            has_g = self.field(h, "g_idx", (bool,), "true or false")
            g_idx = self.need("g_idx", "which the header says exists") if has_g else None
            if not has_g and self.array("g_idx") is not None:
                raise self.fail("a g_idx entry the header does not list; the dict is inconsistent")
            layout = self.field(h, "data_layout", (str,), '"dense"')
            if layout != "dense":
                raise self.fail(f"header field 'data_layout' is {layout!r}, not dense")
        if data.dtype.kind not in "iu" or data.dtype.itemsize != 1:
            raise self.fail(f"data must be int8 or uint8 codes, got {data.dtype}", TypeError)
        if g_idx is not None and g_idx.dtype.kind not in "iu":
            raise self.fail(f"g_idx must be integers, got {g_idx.dtype}", TypeError)
        if scale.shape == (1,) and axis is None and group_size is None:
            scale = scale.reshape(())  # a per-tensor grid some writers stored as (1,)
            if isinstance(zp, np.ndarray) and zp.shape == (1,):
                zp = zp.reshape(())
        kwargs: dict[str, Any] = {
            "axis": axis,
            "group_size": group_size,
            "g_idx": g_idx,
            "meta": meta,
        }
        try:
            if layout == "byte" and bits < 8:
                # One code a byte (format version 1): check the range, then pack densely.
                if data.shape != shape and not (shape == () and data.size == 1):
                    raise ValueError(
                        f"data has shape {data.shape}; {bits}-bit codes one a byte of logical "
                        f"shape {shape} are stored as {shape}"
                    )
                check_codes(data.view(np.int8 if signed else np.uint8), bits, signed)
                codes = data.reshape(shape).view(np.int8 if signed else np.uint8)
                q = cls.from_codes(codes, bits, signed, scale, None, **kwargs)
            else:
                q = cls(data, shape, bits, signed, scale, None, **kwargs)
            if isinstance(zp, _PackedZeroPoint):
                want = q._zp_stored_shape(bits)
                if zp.packed.shape != want:
                    raise ValueError(
                        f"zero_point has shape {zp.packed.shape}; {bits}-bit zero points of a "
                        f"scale of shape {q.scale.shape} are stored as {want}"
                    )
                q._zp, q._zp_bits = zp.packed, bits
            elif zp is not None:
                q.zero_point = zp
            q._check()
        except (ValueError, TypeError) as e:
            raise type(e)(f"{self.where}: {e}") from None
        return q

    def v1_zero_point(self, signed: bool) -> np.ndarray | None:
        zp = self.array("zero_point")
        if zp is None and not signed:
            raise self.fail(
                f"no {self.prefix}zero_point entry, which its unsigned codes need (every qfast "
                "producer stores one for them); the dict is incomplete"
            )
        return zp

    def v2_scale(self, h: dict[str, Any], scale: np.ndarray) -> np.ndarray:
        name = self.field(h, "scale_dtype", (str,), "float32, float16 or bfloat16")
        if name not in SCALE_DTYPES:
            raise self.fail(f"header field 'scale_dtype' is {name!r}, not one of {SCALE_DTYPES}")
        return self.typed(scale, name, "scale")

    def typed(self, arr: np.ndarray, name: str, what: str) -> np.ndarray:
        """``arr`` as dtype ``name`` (bfloat16 from its uint16 bits, as :func:`_to_file`)."""
        if arr.dtype.name == name:
            return arr
        if name == "bfloat16" and arr.dtype == np.uint16:
            return arr.view(_np_dtype("bfloat16"))
        raise self.fail(f"{what} is {arr.dtype}, but the header says {name}", TypeError)

    def v2_zero_point(self, h: dict[str, Any], bits: int, signed: bool) -> Any:
        info = h.get("zero_point", "missing")
        if info == "missing":
            raise self.fail("the header has no 'zero_point' field; the entry is corrupt")
        if info is None:
            if self.array("zero_point") is not None:
                raise self.fail(
                    "a zero_point entry the header does not list; the dict is inconsistent"
                )
            if not signed:
                raise self.fail(
                    "unsigned codes with no zero point in the header; the header is corrupt"
                )
            return None
        if not isinstance(info, dict):
            raise self.fail(
                f"header field 'zero_point' must be null or an object, got {info!r}", TypeError
            )
        kind = info.get("kind")
        zp = self.need("zero_point", f"which the header lists ({kind} zero points)")
        if kind == "float":
            dtype = info.get("dtype")
            if dtype not in SCALE_DTYPES:
                raise self.fail(f"float zero points of dtype {dtype!r} are not supported")
            return self.typed(zp, dtype, "zero_point")
        if kind != "int":
            raise self.fail(f"zero point kind {kind!r} is neither 'int' nor 'float'")
        zbits, layout = info.get("bits"), info.get("layout")
        if zbits != bits or layout != "dense":
            raise self.fail(
                f"integer zero points of {zbits!r} bits, layout {layout!r}; expected {bits} "
                "bits, dense"
            )
        if zp.dtype != np.uint8:
            raise self.fail(f"packed zero points must be uint8, got {zp.dtype}", TypeError)
        return _PackedZeroPoint(zp)


class _PackedZeroPoint:
    """Integer zero points as a file stores them, packed: checked against the tensor's grid
    and kept as they are."""

    def __init__(self, packed: np.ndarray) -> None:
        self.packed = packed

"""GGUF block formats (llama.cpp's tensor types), bit-exact with ggml's reference code and
``gguf.quants``; the package ``qfast.formats.gguf`` (``qfast.gguf``) documents them."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ... import _qfast
from ..._checks import as_shape, float_input

__all__ = [
    "TypeInfo",
    "dequantize",
    "dot",
    "from_qtensor",
    "quantize",
    "to_qtensor",
    "type_info",
]

# ggml's ids (`enum ggml_type`) of the types qfast handles, for integer / IntEnum arguments.
_IDS = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    20: "IQ4_NL",
    23: "IQ4_XS",
    30: "BF16",
}


class TypeInfo(NamedTuple):
    """A GGUF tensor type: its name, ggml id, values and bytes per block."""

    name: str
    id: int
    block_size: int
    type_size: int
    can_quantize: bool


def type_info(type: Any) -> TypeInfo:
    """The block geometry of a GGUF type (a name, ``GGMLQuantizationType`` or ggml id)."""
    name = _name(type)
    if name == "F32":
        return TypeInfo("F32", 0, 1, 4, True)
    return TypeInfo(*_qfast.gguf_type_info(name))


def _name(type: Any) -> str:
    if isinstance(type, str):
        return "F32" if type.upper() == "F32" else type
    if isinstance(type, (int, np.integer)) and not isinstance(type, bool):  # also an IntEnum
        name = _IDS.get(int(type))
        if name is None:
            label = getattr(type, "name", int(type))
            raise ValueError(
                f"GGUF type {label} is not supported; qfast.gguf handles {', '.join(_IDS.values())}"
            )
        return name
    raise TypeError(f"a GGUF type is a name such as 'Q4_0' or a GGMLQuantizationType, not {type!r}")


def quantize(x: npt.ArrayLike, type: Any, imatrix: npt.ArrayLike | None = None) -> npt.NDArray[Any]:
    """Quantizes ``x`` (float32, float64, float16 or bfloat16; last axis a multiple of the block
    size) to GGUF ``type``, row by row along the last axis.

    Without ``imatrix`` the legacy types return what ``gguf.quants.quantize(x, type)``
    returns, byte for byte; the K-quants and IQ4_NL run ggml's reference quantizers
    (``quantize_row_*_ref``). With ``imatrix`` (an importance matrix: one weight >= 0 per
    column of a row, as ``llama-imatrix`` computes) each row runs ggml's weighted search, as
    ``llama-quantize --imatrix`` does (Q8_0, F16 and BF16 ignore it). NaN or Inf in ``x`` is an
    error for the block types (F16 and BF16 store them as they are).
    """
    info = type_info(type)
    arr = float_input(x, "x")
    if info.name == "F32":
        return arr.astype(np.float32)
    if arr.ndim == 0:
        raise ValueError(
            "qfast.gguf.quantize needs at least one axis (the blocks run along the last)"
        )
    n = arr.shape[-1]
    weights = None
    if imatrix is not None and info.name not in ("F16", "BF16"):
        weights = np.ascontiguousarray(float_input(imatrix, "imatrix"), dtype=np.float32)
        if weights.shape != (n,):
            raise ValueError(
                f"imatrix has shape {weights.shape}; it holds one weight per column of a row: "
                f"({n},)"
            )
    rows = weights is not None or not info.can_quantize
    if rows and not _qfast.gguf_can_quantize_rows(info.name, weights is not None):
        with_ = " with an importance matrix" if weights is not None else ""
        raise ValueError(
            f"qfast.gguf cannot quantize to {info.name}{with_} (it can read it: use "
            "dequantize); quantize supports F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0"
            f"{_row_types()}"
        )
    if n % info.block_size:
        raise ValueError(
            f"{info.name} stores blocks of {info.block_size} values along the last axis, which "
            f"has {n}; pad it to a multiple of {info.block_size} or choose another type"
        )
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    try:
        if rows:
            out = _qfast.gguf_quantize_rows(flat, n, info.name, weights)
        else:
            out = _qfast.gguf_quantize(flat, info.name)
    except ValueError as e:
        raise ValueError(_position(str(e), arr.shape)) from None
    row_bytes = n // info.block_size * info.type_size
    out = out.reshape(*arr.shape[:-1], row_bytes)
    return out.view(np.float16) if info.name == "F16" else out


def _row_types() -> str:
    names = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL")
    more = [t for t in names if _qfast.gguf_can_quantize_rows(t, False)]
    return "".join(", " + t for t in more)


def _position(message: str, shape: tuple[int, ...]) -> str:
    """Rewrites a flat ``index (i,)`` in a kernel error as the index into ``shape``."""
    import re

    m = re.search(r"at index \((\d+),\)", message)
    if m is None:
        return message
    index = tuple(int(i) for i in np.unravel_index(int(m.group(1)), shape))
    return message.replace(m.group(0), f"at index {index}")


def dequantize(
    data: npt.ArrayLike, type: Any, shape: tuple[int, ...] | None = None
) -> npt.NDArray[np.float32]:
    """Dequantizes GGUF ``type`` data to float32, as ``gguf.quants.dequantize`` does.

    ``data``: uint8 bytes whose last axis holds whole blocks (a GGUF tensor's raw data, e.g.
    ``GGUFReader``'s ``tensor.data``), or a float16 / float32 array for F16 / F32. The result
    has shape ``data.shape[:-1] + (values per row,)``, or ``shape`` when given (the logical
    shape; it must hold as many values).
    """
    info = type_info(type)
    arr = np.asarray(data)
    if info.name in ("F32", "F16") and arr.dtype == (
        np.float32 if info.name == "F32" else np.float16
    ):
        out = arr.astype(np.float32)
        return out.reshape(shape) if shape is not None else out
    if arr.dtype != np.uint8:
        raise TypeError(
            f"{info.name} data must be uint8 bytes (a GGUF tensor's raw data), not {arr.dtype}"
        )
    if arr.ndim == 0:
        raise ValueError("GGUF data needs at least one axis")
    row_bytes = arr.shape[-1]
    if row_bytes % info.type_size:
        raise ValueError(
            f"{info.name} data rows of {row_bytes} bytes are not a whole number of "
            f"{info.type_size}-byte blocks: truncated or corrupt data, or not {info.name}"
        )
    if info.name == "F32":
        out = np.ascontiguousarray(arr).view(np.float32).copy()
    else:
        flat = np.ascontiguousarray(arr).reshape(-1)
        out = _qfast.gguf_dequantize(flat, info.name).reshape(
            *arr.shape[:-1], row_bytes // info.type_size * info.block_size
        )
    if shape is not None:
        shape = as_shape(shape)
        if int(np.prod(shape)) != out.size:
            raise ValueError(
                f"shape {shape} holds {int(np.prod(shape))} values but the data holds {out.size}"
            )
        out = out.reshape(shape)
    return out


# --- GGUF blocks <-> QTensor ------------------------------------------------------------------

_CONVERTIBLE = ("Q8_0", "Q4_0", "Q4_1")


def _blocks(data: npt.ArrayLike, info: TypeInfo) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"{info.name} data must be uint8 bytes (a GGUF tensor's raw data or "
            f"qfast.gguf.quantize's result), not {arr.dtype}"
        )
    if arr.ndim == 0 or arr.shape[-1] % info.type_size:
        raise ValueError(
            f"{info.name} data must be uint8 bytes whose last axis holds whole "
            f"{info.type_size}-byte blocks, got {arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def to_qtensor(data: npt.ArrayLike, type: Any, shape: tuple[int, ...] | None = None) -> Any:
    """A QTensor over GGUF ``data`` of type Q8_0, Q4_0 or Q4_1, without going through floats.

    The result is group-32 along the last axis and holds the blocks' own codes and float16
    scales: Q8_0 becomes signed 8-bit codes with scale ``d``; Q4_0 signed 4-bit codes
    ``q - 8`` with scale ``d`` (negative where the block's largest value was positive, as the
    format stores it); both dequantize to exactly ``gguf.quants.dequantize``'s values. Q4_1
    (``d * q + m``) becomes unsigned 4-bit codes with ``scale = d`` and a float32
    ``zero_point = -m / d`` (a block with ``d = 0``: ``scale = 1``, ``zero_point = -m``, codes
    0), which dequantizes to within float32 rounding of the format's values.
    ``qfast.linear`` takes the result directly.

    ``from_qtensor`` gives back the same bytes, byte for byte: the few blocks whose bytes the
    QTensor form cannot tell (a Q4_1 block with ``d = -0``, or ``d = 0`` and nonzero codes,
    or ``d = 1`` and all codes 0) are kept in ``meta["gguf_blocks"]`` as ``[index, hex]``.
    """
    info = type_info(type)
    if info.name not in _CONVERTIBLE:
        raise ValueError(
            f"{info.name} has no QTensor form; to_qtensor converts {', '.join(_CONVERTIBLE)} "
            "(dequantize other types)"
        )
    arr = _blocks(data, info)
    n = arr.shape[-1] // info.type_size * info.block_size
    rows = arr.shape[:-1]
    logical = as_shape(shape) if shape is not None else (*rows, n)
    if int(np.prod(logical)) != int(np.prod((*rows, n))) or (logical and logical[-1] % 32):
        raise ValueError(f"shape {logical} does not fit {info.name} data of shape {arr.shape}")
    b = arr.reshape(-1, info.type_size)
    q = _qtensor_of_blocks(b, info.name, logical)
    back, _ = _canonical_blocks(q)
    odd = np.flatnonzero(np.any(back != b, axis=1))
    if odd.size:
        q.meta["gguf_blocks"] = [[int(i), b[i].tobytes().hex()] for i in odd]
    return q


def _qtensor_of_blocks(b: np.ndarray, name: str, logical: tuple[int, ...]) -> Any:
    """The QTensor of GGUF blocks ``b`` (``[nblocks, type_size]`` bytes)."""
    from ...tensor.qtensor import QTensor
    from ...tensor.quantize import pack_int4

    groups = (*logical[:-1], logical[-1] // 32) if logical else (1,)
    d = np.ascontiguousarray(b[:, :2]).view(np.float16).reshape(groups)
    if name == "Q8_0":
        codes = np.ascontiguousarray(b[:, 2:]).view(np.int8).reshape(logical)
        return QTensor(codes, logical, 8, True, d, group_size=32, meta={"gguf_type": "Q8_0"})
    qs = b[:, 2:] if name == "Q4_0" else b[:, 4:]
    nib = np.concatenate([qs & 0x0F, qs >> 4], axis=1).reshape(logical)  # value j, then j + 16
    if name == "Q4_0":
        codes = pack_int4(nib.astype(np.int8) - 8, signed=True)
        return QTensor(codes, logical, 4, True, d, group_size=32, meta={"gguf_type": "Q4_0"})
    m = np.ascontiguousarray(b[:, 2:4]).view(np.float16).reshape(groups).astype(np.float32)
    df = d.astype(np.float32)
    dead = df == 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        zero = np.where(dead, -m, -m / np.where(dead, 1, df)).astype(np.float32)
    scale = np.where(dead, np.float16(1), d)
    nib = np.where(np.repeat(dead, 32, axis=-1).reshape(logical), 0, nib).astype(np.uint8)
    codes = pack_int4(nib, signed=False)
    return QTensor(codes, logical, 4, False, scale, zero, group_size=32, meta={"gguf_type": "Q4_1"})


def _canonical_blocks(q: Any) -> tuple[npt.NDArray[np.uint8], str]:
    """The blocks ``[nblocks, type_size]`` of a group-32 QTensor's grid, without the kept
    ``meta["gguf_blocks"]``; ValueError if it has no block form."""
    from ...tensor.quantize import unpack_int4

    if q.group_size != 32 or q.g_idx is not None or not q.shape or q.shape[-1] % 32:
        raise ValueError(
            "only group-32 QTensors (groups along the last axis, a multiple of 32 long, no "
            "g_idx) have a GGUF block form"
        )
    scale32 = np.asarray(q.scale, np.float32)
    with np.errstate(over="ignore"):
        d = scale32.astype(np.float16)
    if not np.array_equal(d.astype(np.float32), scale32, equal_nan=True):
        raise ValueError("the scales are not float16 values, which GGUF blocks store")
    lead = int(np.prod(q.shape[:-1], dtype=np.int64))
    nblocks = lead * (q.shape[-1] // 32)
    d_bytes = d.reshape(nblocks, 1).view(np.uint8)
    if q.bits == 8 and q.signed and q.zero_point is None:
        codes = np.ascontiguousarray(q.data).view(np.uint8).reshape(nblocks, 32)
        return np.concatenate([d_bytes, codes], axis=1), "Q8_0"
    if q.bits == 4 and q.signed and q.zero_point is None:
        c = unpack_int4(q.data, q.shape[-1], signed=True).reshape(nblocks, 32)
        qs = ((c[:, :16] + 8) | ((c[:, 16:] + 8) << 4)).astype(np.uint8)
        return np.concatenate([d_bytes, qs], axis=1), "Q4_0"
    if q.bits == 4 and not q.signed and q.zero_point is not None:
        zero = np.asarray(q.zero_point, np.float32).reshape(nblocks)
        df = d.astype(np.float32).reshape(nblocks)
        c = unpack_int4(q.data, q.shape[-1], signed=False).reshape(nblocks, 32)
        # to_qtensor's form of a d = 0 block (value m everywhere): scale 1, codes 0
        dead = (df == 1) & ~np.any(c, axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            m = np.where(dead, -zero, -zero * df).astype(np.float16)
        d_bytes = np.where(dead, np.float16(0), d.reshape(nblocks)).reshape(nblocks, 1)
        qs = (c[:, :16] | (c[:, 16:] << 4)).astype(np.uint8)
        m_bytes = m.reshape(nblocks, 1).view(np.uint8)
        return np.concatenate([d_bytes.view(np.uint8), m_bytes, qs], axis=1), "Q4_1"
    raise ValueError(
        f"a {q.bits}-bit {'signed' if q.signed else 'unsigned'} QTensor "
        f"{'with' if q.zero_point is not None else 'without'} zero points has no GGUF "
        "block form; Q8_0 is 8-bit signed, Q4_0 4-bit signed, Q4_1 4-bit unsigned with "
        "zero points"
    )


def _same_block(a: Any, b: Any, i: int) -> bool:
    """Whether group ``i`` of QTensors ``a`` and ``b`` (same layout) holds the same grid."""
    from ...tensor.quantize import unpack_int4

    def group(q: Any) -> list[np.ndarray]:
        out = [np.asarray(q.scale, np.float32).reshape(-1)[i : i + 1]]
        if q.zero_point is not None:
            out.append(np.asarray(q.zero_point, np.float32).reshape(-1)[i : i + 1])
        codes = (
            np.asarray(q.data) if q.bits == 8 else unpack_int4(q.data, q.shape[-1], signed=q.signed)
        )
        out.append(codes.reshape(-1, 32)[i])
        return out

    ga, gb = group(a), group(b)
    return all(
        x.shape == y.shape and np.array_equal(x.view(np.uint8), y.view(np.uint8))
        for x, y in zip(ga, gb)
    )


def from_qtensor(q: Any) -> tuple[npt.NDArray[np.uint8], str]:
    """GGUF blocks for a QTensor that is exactly a Q8_0, Q4_0 or Q4_1 grid: ``(data, type)``.

    The QTensor must be group-32 along the last axis (no ``g_idx``), with float16-exact scales:
    8-bit signed without zero point (Q8_0), 4-bit signed without zero point (Q4_0), or 4-bit
    unsigned with the float zero points ``to_qtensor`` gives Q4_1 (checked by converting
    back). Anything else is refused rather than rounded: quantize the float weights with
    ``qfast.gguf.quantize`` instead. A QTensor from ``to_qtensor`` gives back its bytes, byte
    for byte (``d = 0`` blocks, negative zeros and subnormal ``d`` / ``m`` included).
    """
    from ...tensor.qtensor import QTensor

    if not isinstance(q, QTensor):
        hint = " (QTensor.from_dict(d) makes one from a dict)" if isinstance(q, dict) else ""
        raise TypeError(
            f"from_qtensor expects a QTensor (from qfast.quantize or to_qtensor), "
            f"not {type(q).__name__}{hint}; for a float array use qfast.gguf.quantize"
        )
    out, name = _canonical_blocks(q)
    info = type_info(name)
    kept = q.meta.get("gguf_blocks") if isinstance(q.meta, dict) else None
    if kept and q.meta.get("gguf_type") == name:
        # Blocks whose bytes the grid cannot tell, kept by to_qtensor: used where the grid
        # still is the one those bytes make (the QTensor was not changed there).
        try:
            index = np.array([int(i) for i, _ in kept], np.int64)
            raw = np.frombuffer(bytes.fromhex("".join(h for _, h in kept)), np.uint8)
            raw = raw.reshape(len(kept), info.type_size)
        except (TypeError, ValueError):
            raise ValueError(
                "meta['gguf_blocks'] is corrupt: it should be [[block index, hex bytes], ...] "
                "as to_qtensor writes it; delete it to write the grid's own bytes"
            ) from None
        if index.size and (index.min() < 0 or index.max() >= out.shape[0]):
            raise ValueError("meta['gguf_blocks'] names a block this QTensor does not have")
        groups = (*q.shape[:-1], q.shape[-1] // 32)
        for j, i in enumerate(index):
            block = raw[j : j + 1]
            logical = (1,) * (len(q.shape) - 1) + (32,)
            one = _qtensor_of_blocks(block, name, logical)
            mine = _one_group(q, int(i), groups)
            if _same_block(one, mine, 0):
                out[i] = block[0]
    if name == "Q4_1":
        back = _qtensor_of_blocks(out, "Q4_1", tuple(q.shape))
        zero = np.asarray(q.zero_point, np.float32).reshape(-1)
        same = np.array_equal(
            np.asarray(back.zero_point, np.float32).reshape(-1), zero, equal_nan=True
        )
        if not same or not np.array_equal(np.asarray(back.data), np.asarray(q.data)):
            raise ValueError(
                "this QTensor's zero points are not a Q4_1 grid (d * q + m with float16 d and "
                "m); quantize the float weights with qfast.gguf.quantize(w, 'Q4_1') instead"
            )
    return out.reshape(*q.shape[:-1], -1), name


def _one_group(q: Any, i: int, groups: tuple[int, ...]) -> Any:
    """Group ``i`` of a group-32 QTensor as a QTensor of 32 values."""
    from ...tensor.qtensor import QTensor
    from ...tensor.quantize import pack_int4, unpack_int4

    logical = (1,) * (len(q.shape) - 1) + (32,)
    g = (*logical[:-1], 1)
    scale = np.asarray(q.scale).reshape(-1)[i : i + 1].reshape(g)
    zero = None
    if q.zero_point is not None:
        zero = np.asarray(q.zero_point).reshape(-1)[i : i + 1].reshape(g)
    if q.bits == 8:
        codes = np.asarray(q.data).reshape(-1, 32)[i].reshape(logical)
    else:
        c = unpack_int4(q.data, q.shape[-1], signed=q.signed).reshape(-1, 32)[i]
        codes = pack_int4(c.reshape(logical), signed=q.signed)
    return QTensor(codes, logical, q.bits, q.signed, scale, zero, group_size=32)


def dot(w: npt.ArrayLike, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``Q4_0 · Q8_0`` dot products, llama.cpp's ``vec_dot`` of those types.

    ``w``: Q4_0 bytes ``(..., row_bytes)`` (e.g. a weight matrix, one row per output); ``x``:
    Q8_0 bytes of one row of the same length (e.g. ``quantize(activations, "Q8_0")``).
    Returns float32 ``w.shape[:-1]``: per row, the exact integer sum of each block pair scaled
    by the blocks' ``d_w * d_x``, accumulated in a fixed order (the same bits on every path).
    """
    wa, xa = _blocks(w, type_info("Q4_0")), _blocks(x, type_info("Q8_0"))
    nb = xa.shape[-1] // 34
    if xa.ndim != 1 or wa.shape[-1] != nb * 18:
        raise ValueError(
            f"x must be one Q8_0 row and w Q4_0 rows of as many blocks: w has rows of "
            f"{wa.shape[-1] // 18} blocks, x has shape {xa.shape}"
        )
    rows = int(np.prod(wa.shape[:-1], dtype=np.int64))
    out = _qfast.gguf_dot_q4_0_q8_0(wa.reshape(-1), xa, rows)
    return out.reshape(wa.shape[:-1])

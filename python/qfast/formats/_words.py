"""What the GPTQ, AWQ and compressed-tensors layouts share: int32 words of packed codes, and
one linear's grid taken apart (unsigned codes, integer zero points, per-group scales).

All three formats pack codes as one little-endian bit stream per line of an int32 array:
code ``i`` of a line in bits ``[i * bits, (i + 1) * bits)`` of the line's words, word ``w``
holding stream bits ``[32 w, 32 w + 32)``. For 2, 4 and 8 bits that is ``32 / bits`` codes per
word; for 3 bits it is AutoGPTQ's layout, where codes straddle word boundaries (a code at bit
30 has its high bit in the next word). It is also how a :class:`~qfast.QTensor` stores a line
(:func:`qfast.pack`), so a line's packed bytes, read as little-endian words, are the format's
words; the formats differ in which axis is a line, in the order of codes within a word
(AWQ), and in what a zero point stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._qfast import pack as _pack_lines
from .._qfast import unpack as _unpack_lines
from ..tensor.qtensor import QTensor, line_bytes

_WORD = np.dtype("<i4")


def words(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes ``[rows, n]`` (uint8) -> int32 ``[rows, ceil(n * bits / 32)]``, each row
    one little-endian bit stream (zero bits pad the last word)."""
    rows, n = codes.shape
    n_words = -(-n * bits // 32)
    out = np.zeros((rows, n_words * 4), np.uint8)
    if rows and n:
        flat = np.ascontiguousarray(codes, np.uint8).reshape(-1)
        packed = flat if bits == 8 else _pack_lines(flat, n, bits)
        out[:, : line_bytes(n, bits)] = packed.reshape(rows, -1)
    return out.view(_WORD).astype(np.int32, copy=False)


def from_words(w: np.ndarray, n: int, bits: int) -> np.ndarray:
    """The inverse of :func:`words`: int32 ``[rows, >= ceil(n * bits / 32)]`` -> uint8
    ``[rows, n]``."""
    w = np.ascontiguousarray(w, _WORD)
    rows = w.shape[0]
    m = line_bytes(n, bits)
    raw = np.ascontiguousarray(w.view(np.uint8).reshape(rows, -1)[:, :m])
    if bits == 8 or not (rows and n):
        return raw[:, :n].copy()
    return _unpack_lines(raw.reshape(-1), m, n, bits, False).reshape(rows, n)


@dataclass(frozen=True)
class Grid:
    """One linear's quantized weight taken apart, in every format's terms.

    ``codes`` uint8 ``[out, in]`` unsigned; ``zeros`` int32 ``[out, groups]`` (a symmetric
    grid's are all ``2^(bits-1)``); ``scales`` ``[out, groups]`` as the QTensor stores them;
    ``group_size`` ``None`` for one group per row; ``g_idx`` int32 ``[in]`` or ``None`` when
    column ``i`` is in group ``i // group_size``; ``static_order``: the columns were
    quantized in activation order on groups fixed beforehand (GPTQ's ``static_groups``).
    """

    codes: np.ndarray
    zeros: np.ndarray
    scales: np.ndarray
    bits: int
    group_size: int | None
    g_idx: np.ndarray | None
    static_order: bool = False  # GPTQ act-order with static groups (no g_idx needed)

    @property
    def shape(self) -> tuple[int, int]:
        out, n_in = self.codes.shape
        return int(out), int(n_in)

    @property
    def symmetric(self) -> bool:
        """Whether every zero point is the middle code (a symmetric grid)."""
        return bool((self.zeros == 1 << (self.bits - 1)).all())

    def group_of_columns(self) -> np.ndarray:
        """int32 ``[in]``: each input column's group."""
        _, n_in = self.shape
        if self.g_idx is not None:
            return self.g_idx
        gs = self.group_size or max(n_in, 1)
        return (np.arange(n_in) // gs).astype(np.int32)


def grid(qt: Any, name: str, fmt: str) -> Grid:
    """``qt`` (a 2-D weight QTensor ``[out, in]`` on an integer grid) as a :class:`Grid`.

    Raises:
        TypeError: ``qt`` is not a QTensor.
        ValueError: a shape or grid ``fmt`` cannot hold (named ``name``), with what to do.
    """
    if not isinstance(qt, QTensor):
        raise TypeError(f"{name}: {fmt} stores quantized weights; got {type(qt).__name__}")
    if len(qt.shape) != 2:
        raise ValueError(f"{name}: {fmt} stores 2-D [out, in] weights; this one is {qt.shape}")
    zp = qt.zero_point
    if zp is not None and np.issubdtype(zp.dtype, np.floating):
        raise ValueError(
            f"{name}: its zero points are floats (an HQQ grid), which {fmt} cannot store: "
            "quantize it with rtn, gptq or awq, or save with format='qfast'"
        )
    if qt.axis is not None and qt.axis not in (0, -2):
        raise ValueError(
            f"{name}: {fmt} has one scale per output row or per group of input columns; this "
            f"QTensor has one per index of axis {qt.axis}: quantize along the output rows"
        )
    out, n_in = qt.shape
    off = 1 << (qt.bits - 1)
    codes = qt_codes(qt)
    if qt.signed:
        codes = (codes.astype(np.int16) + off).astype(np.uint8)
    n_groups = 1 if qt.group_size is None else -(-n_in // qt.group_size)
    scales = np.broadcast_to(np.asarray(qt.scale), (out, n_groups))
    if zp is None:
        zeros = np.full((out, n_groups), off if qt.signed else 0, np.int32)
    else:
        zeros = np.broadcast_to(zp.astype(np.int32) + (off if qt.signed else 0), (out, n_groups))
    g_idx = qt.g_idx
    if g_idx is not None and qt.group_size is not None:
        if np.array_equal(g_idx, np.arange(n_in) // qt.group_size):
            g_idx = None
    return Grid(
        codes=codes,
        zeros=np.ascontiguousarray(zeros, np.int32),
        scales=np.ascontiguousarray(scales),
        bits=qt.bits,
        group_size=qt.group_size,
        g_idx=g_idx,
        static_order=bool(qt.meta.get("act_order") and qt.meta.get("static_groups")),
    )


def qt_codes(qt: QTensor) -> np.ndarray:
    """The codes of a 2-D QTensor, one per element: int8 (signed) or uint8."""
    out, n_in = qt.shape
    flat = np.ascontiguousarray(qt.data).view(np.uint8).reshape(-1)
    if qt.bits < 8 and out and n_in:
        flat = _unpack_lines(flat, line_bytes(n_in, qt.bits), n_in, qt.bits, qt.signed)
    codes = flat.reshape(out, n_in)
    return codes.view(np.int8) if qt.signed else codes


def to_qtensor(g: Grid, meta: dict[str, Any] | None = None) -> QTensor:
    """The canonical QTensor of a grid: unsigned codes, int32 zero points."""
    kw: dict[str, Any] = {"meta": meta}
    if g.group_size is None:
        kw["axis"] = 0
        scales, zeros = g.scales.reshape(-1, 1), g.zeros.reshape(-1, 1)
    else:
        kw["group_size"] = g.group_size
        kw["g_idx"] = g.g_idx
        scales, zeros = g.scales, g.zeros
    return QTensor.from_codes(g.codes, g.bits, False, scales, zeros, **kw)


def canonical(qt: QTensor) -> QTensor:
    """``qt`` with unsigned codes and int32 zero points (signed codes ``c`` become ``c +
    2^(bits-1)``, a missing zero point ``2^(bits-1)``), a trivial ``g_idx`` dropped, a
    per-tensor scale spread over the rows: the form the format readers return. Dequantizes to
    the same values."""
    g = grid(qt, "tensor", "the canonical form")
    return to_qtensor(g, qt.meta)


def half_scales(scales: np.ndarray, name: str, fmt: str) -> np.ndarray:
    """Scales as float16, which GPTQ and AWQ checkpoints store; refused when float16 cannot
    hold them exactly (the codes were computed against other scales)."""
    if scales.dtype == np.float16:
        return np.ascontiguousarray(scales)
    f32 = np.asarray(scales, np.float32)
    half = f32.astype(np.float16)
    with np.errstate(invalid="ignore"):
        exact = np.array_equal(half.astype(np.float32), f32)
    if not exact:
        raise ValueError(
            f"{name}: {fmt} stores float16 scales, and this tensor's {scales.dtype} scales are "
            "not float16 values (the codes were computed against them): quantize with "
            "scale_dtype='float16' (Recipe(..., scale_dtype='float16')), or save with "
            "format='qfast' or 'compressed-tensors'"
        )
    return half


def check_bits_in(bits: int, allowed: tuple[int, ...], name: str, fmt: str, why: str) -> None:
    if bits not in allowed:
        widths = ", ".join(str(b) for b in allowed)
        raise ValueError(
            f"{name}: {fmt} holds {widths}-bit weights ({why}); this one is {bits}-bit: "
            f"quantize it to one of those widths, or save with format='qfast'"
        )


def packed_triplet(tensors: Any, name: str, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ's and AWQ's ``qweight``, ``qzeros`` (2-D int32) and ``scales`` of one linear."""
    try:
        qweight = np.asarray(tensors["qweight"])
        qzeros = np.asarray(tensors["qzeros"])
        scales = np.asarray(tensors["scales"])
    except KeyError as e:
        raise ValueError(f"{name}: the {fmt} tensor {e.args[0]!r} is missing") from None
    for key, a in (("qweight", qweight), ("qzeros", qzeros)):
        if a.dtype not in (np.int32, np.uint32) or a.ndim != 2:
            raise ValueError(f"{name}.{key}: {fmt} stores 2-D int32; got {a.dtype} {a.shape}")
    return qweight, qzeros, scales

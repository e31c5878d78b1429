"""GPTQ inside GGUF's block grids: GPTQ's column loop and error feedback, where each block of
input columns (32; a 256-column super-block for the K-quants) gets the grid llama.cpp's own
quantizer gives it, chosen on the error-compensated weights when the loop reaches the block.

Every type of llama.cpp's mixes: Q4_0, Q5_0, Q4_1, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K. By default (``imatrix=True``) a block's grid is ggml's importance-weighted search
(``qfast.gguf.quantize(block, type, imatrix=w)``, bit-exact with ``quantize_row_*_impl``, as
``llama-quantize --imatrix`` runs it) with ``w`` the Hessian's diagonal: ``Σ x²`` over the
calibration tokens, exactly what ``llama-imatrix`` collects. The grid is read back from ggml's
bytes: each sub-block's stored scale and min (float16 ``d`` / ``dmin`` times the 6- or 4-bit
sub-block scales for the K-quants; IQ4_NL's non-linear table times ``d``), a value being
``dl * T[code] - ml`` in float32 as ``dequantize_row_*`` computes it. GPTQ then takes each
column's code nearest on that stored grid (the K-quants' own requantization rule,
``nearest_int((x + ml) / dl)`` clamped to the codes; IQ4_NL's nearest table value), measures
the error against the stored value, spreads it to the columns not yet quantized, and writes the
codes into ggml's block bytes (ggml's headers kept). A sub-block whose scale is zero keeps
ggml's codes (all give the same value).

With a Hessian that is diagonal (uncorrelated inputs) GPTQ's feedback is zero: the K-quants
are then ``qfast.gguf.quantize(W, type, imatrix=diag(H))`` byte for byte (their final codes
are ggml's requantization on the stored grid). IQ4_NL and the 32-blocks' weighted searches
choose codes on the unrounded float32 scale (or jointly with it), so there GPTQ keeps ggml's
grids and codes no further from ``W`` than ggml's.

``imatrix=False`` gives ggml's unweighted grids (``llama-quantize`` without an importance
matrix). For Q4_0, Q5_0, Q4_1, Q5_1 and Q8_0 that is ggml's reference rule
(``quantize_row_*_ref``, as ``qfast.gguf.quantize`` computes it): Q4_0 ``d = max / -8`` with
``max`` the value of largest magnitude (first on ties), codes ``min(15, trunc(x / d + 8.5))``;
Q5_0 the same with 16 / 31; Q4_1 / Q5_1 ``d = (max - min) / 15`` (``31``), ``m = min``, codes
``min(15, trunc((x - m) / d + 0.5))``; Q8_0 ``d = max|x| / 127``, codes ``round(x / d)``. As
in ggml, the codes use the float32 ``1 / d`` and the stored value is the float16 ``d`` (and
``m``): the error GPTQ spreads to the columns not yet quantized is measured against the stored,
float16 grid, ``w - dequantize(code)``. A value the feedback moves past its block's range gets
the nearest code the block holds (ggml's rule never meets one). With a diagonal Hessian this is
``qfast.gguf.quantize(W, type)`` byte for byte.

The blocks are GGUF's, in the original column order: a GGUF row cannot store a permutation.
With ``act_order=True`` the columns still run by decreasing Hessian diagonal (GPTQ's
``desc_act``), on grids fixed beforehand on the original weights (AutoGPTQ's static groups).

The result is the tensor's GGUF bytes (``uint8 [out, row_bytes]``), which
``qfast.gguf.dequantize`` / llama.cpp read as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import as_bool, check_at_least, check_positive
from ..formats.gguf.blocks import quantize
from .gptq import _hessian_matrix, hinv_factor

__all__ = ["GGUF_TYPES", "gptq_gguf"]

F32 = np.float32
QK = 32
#: the reference rule's types -> (levels - 1 (the top code), the symmetric offset or None for
#: the types with a min)
_LEGACY = {
    "Q4_0": (15, 8),
    "Q5_0": (31, 16),
    "Q4_1": (15, None),
    "Q5_1": (31, None),
    "Q8_0": (None, None),
}
_BYTES = {"Q4_0": 18, "Q5_0": 22, "Q4_1": 20, "Q5_1": 24, "Q8_0": 34}


def _grid(block: np.ndarray, t: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ggml's grid of each row of ``block`` ``[rows, 32]``: ``(id, m, d16, m16)``: the float32
    inverse scale and min the codes are computed with, and the float16-rounded ``d`` and ``m``
    the file stores (as float32); the mins are zero for the symmetric types."""
    rows = block.shape[0]
    if t == "Q8_0":
        amax = np.abs(block).max(axis=1)
        d = (amax / F32(127)).astype(F32)
        m = np.zeros(rows, F32)
    elif _LEGACY[t][1] is not None:
        half = F32(_LEGACY[t][1])
        # the value of largest magnitude, the first on ties (ggml's `amax < fabsf(v)` loop);
        # a block of zeros keeps ggml's initial max = +0.0
        idx = np.argmax(np.abs(block), axis=1)
        mx = block[np.arange(rows), idx]
        mx = np.where(np.abs(mx) > 0, mx, F32(0.0)).astype(F32)
        d = (mx / -half).astype(F32)
        m = np.zeros(rows, F32)
    else:
        top = F32(_LEGACY[t][0])
        mn = block.min(axis=1).astype(F32)
        mx = block.max(axis=1).astype(F32)
        d = ((mx - mn) / top).astype(F32)
        m = mn
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
    d16 = d.astype(np.float16).astype(F32)
    m16 = m.astype(np.float16).astype(F32)
    return inv, m, d16, m16


def _codes(w: np.ndarray, inv: np.ndarray, m: np.ndarray, t: str) -> np.ndarray:
    """ggml's codes of one column ``w`` (one value per row) on the rows' grids, clamped to the
    type's codes: GPTQ's feedback can move a column past the range its block's grid was
    chosen on, where ggml's rule (which never sees such values) would leave the field."""
    top, off = _LEGACY[t]
    if t == "Q8_0":
        v = (w * inv).astype(F32)
        q = np.sign(v) * np.floor(np.abs(v) + F32(0.5))  # roundf: ties away from zero
        return np.clip(q, -128, 127).astype(np.int32)
    if off is not None:
        v = (w * inv + F32(off + 0.5)).astype(F32)
    else:
        v = ((w - m) * inv + F32(0.5)).astype(F32)
    return np.clip(np.trunc(v), 0, top).astype(np.int32)


def _dequant(q: np.ndarray, d16: np.ndarray, m16: np.ndarray, t: str) -> np.ndarray:
    off = _LEGACY[t][1]
    if t == "Q8_0":
        return (q.astype(F32) * d16).astype(F32)
    if off is not None:
        return ((q - off).astype(F32) * d16).astype(F32)
    return (q.astype(F32) * d16 + m16).astype(F32)


def _pack(codes: np.ndarray, d16: np.ndarray, m16: np.ndarray, t: str) -> np.ndarray:
    """Blocks ``[rows, nblocks]`` of codes ``[rows, nblocks, 32]`` in GGUF's layout."""
    rows, nb, _ = codes.shape
    out = np.zeros((rows, nb, _BYTES[t]), np.uint8)
    out[:, :, 0:2] = d16.astype(np.float16).reshape(rows, nb, 1).view(np.uint8)
    at = 2
    if t in ("Q4_1", "Q5_1"):
        out[:, :, 2:4] = m16.astype(np.float16).reshape(rows, nb, 1).view(np.uint8)
        at = 4
    if t == "Q8_0":
        out[:, :, 2:] = codes.astype(np.int8).view(np.uint8)
        return out.reshape(rows, -1)
    c = codes.astype(np.uint32)
    if t in ("Q5_0", "Q5_1"):
        bits = ((c >> 4) & 1) << np.arange(QK, dtype=np.uint32)
        qh = bits.sum(axis=2, dtype=np.uint32)
        out[:, :, at : at + 4] = qh.reshape(rows, nb, 1).view(np.uint8)
        at += 4
    lo = (c[:, :, :16] & 0xF) | ((c[:, :, 16:] & 0xF) << 4)
    out[:, :, at:] = lo.astype(np.uint8)
    return out.reshape(rows, -1)


# ---------------------------------------------------------------------------------------------
# Every type: a block's grid read back from ggml's bytes, codes written into them.

#: type -> (values per block, values per sub-block, bytes per block)
_GEOMETRY = {
    "Q4_0": (32, 32, 18),
    "Q5_0": (32, 32, 22),
    "Q4_1": (32, 32, 20),
    "Q5_1": (32, 32, 24),
    "Q8_0": (32, 32, 34),
    "IQ4_NL": (32, 32, 18),
    "Q2_K": (256, 16, 84),
    "Q3_K": (256, 16, 110),
    "Q4_K": (256, 32, 144),
    "Q5_K": (256, 32, 176),
    "Q6_K": (256, 16, 210),
}
#: every type gptq_gguf writes
GGUF_TYPES = tuple(_GEOMETRY)
_IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)
#: the value of each code, before the sub-block's scale and min: ``dl * T[q] - ml``
_TABLE = {
    "Q4_0": np.arange(16, dtype=F32) - 8,
    "Q5_0": np.arange(32, dtype=F32) - 16,
    "Q4_1": np.arange(16, dtype=F32),
    "Q5_1": np.arange(32, dtype=F32),
    "Q8_0": np.arange(256, dtype=F32) - 128,  # int8 codes stored as code - 128
    "IQ4_NL": _IQ4,
    "Q2_K": np.arange(4, dtype=F32),
    "Q3_K": np.arange(8, dtype=F32) - 4,
    "Q4_K": np.arange(16, dtype=F32),
    "Q5_K": np.arange(32, dtype=F32),
    "Q6_K": np.arange(64, dtype=F32) - 32,
}


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte ``at`` of every block ``b[..., bytes]``, as float32."""
    return np.ascontiguousarray(b[..., at : at + 2]).view("<f2")[..., 0].astype(F32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """``qs[..., n]`` -> ``[..., 2n]``: the low nibbles, then the high ones (ggml's
    ``l[j] | l[j + n] << 4``)."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=-1)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """Q2_K / Q3_K's 2-bit codes: ``qs[..., 32k + i]`` holds ``l[128k + 32s + i]`` at bit
    ``2s``; ``[..., 64]`` -> ``[..., 256]``."""
    q = qs.reshape(*qs.shape[:-1], 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[:, None]
    return (q & 3).reshape(*qs.shape[:-1], 256)


def _put_crumbs(c: np.ndarray) -> np.ndarray:
    c = c.reshape(*c.shape[:-1], 2, 4, 32).astype(np.uint8)
    out = c[..., 0, :] | (c[..., 1, :] << 2) | (c[..., 2, :] << 4) | (c[..., 3, :] << 6)
    return out.reshape(*c.shape[:-3], 64)


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``get_scale_min_k4`` for ``j = 0..7`` of ``scales[..., 12]``."""
    s = s.astype(np.int32)
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)], -1)
    mn = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], -1)
    return sc.astype(F32), mn.astype(F32)


def _read(b: np.ndarray, t: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid and codes of blocks ``b [rows, nb, bytes]`` of type ``t``: the sub-blocks'
    scale ``dl`` and min ``ml`` ``[rows, nb, nsub]`` (a value is ``dl * T[code] - ml`` in
    float32, as ggml's ``dequantize_row_*`` computes it) and the codes ``[rows, nb, values]``
    (indices into ``_TABLE[t]``)."""
    zeros = lambda: np.zeros((*b.shape[:-1], 1), F32)  # noqa: E731
    if t in ("Q4_0", "IQ4_NL"):
        return _f16(b, 0)[..., None], zeros(), _nibbles(b[..., 2:18])
    if t in ("Q4_1", "Q5_1", "Q5_0"):
        at = 2 if t == "Q5_0" else 4
        ml = zeros() if t == "Q5_0" else -_f16(b, 2)[..., None]
        if t == "Q4_1":
            return _f16(b, 0)[..., None], ml, _nibbles(b[..., 4:20])
        qh = np.ascontiguousarray(b[..., at : at + 4]).view("<u4")
        hi = (qh >> np.arange(32, dtype=np.uint32)) & 1
        codes = _nibbles(b[..., at + 4 : at + 20]) | (hi.astype(np.uint8) << 4)
        return _f16(b, 0)[..., None], ml, codes
    if t == "Q8_0":
        codes = b[..., 2:34].view(np.int8).astype(np.int16) + 128
        return _f16(b, 0)[..., None], zeros(), codes.astype(np.uint8)
    if t in ("Q4_K", "Q5_K"):
        d, dmin = _f16(b, 0)[..., None], _f16(b, 2)[..., None]
        sc, mn = _k4_scales(b[..., 4:16])
        at = 16 if t == "Q4_K" else 48
        q = b[..., at : at + 128].reshape(*b.shape[:-1], 4, 32)
        codes = np.stack([q & 0xF, q >> 4], axis=-2)  # [.., 4, 2, 32]: l[64c + 32h + i]
        if t == "Q5_K":
            qh = b[..., 16:48][..., None, None, :]
            bit = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
            codes = codes | (((qh >> bit[..., None]) & 1) << 4)
        return (d * sc).astype(F32), (dmin * mn).astype(F32), codes.reshape(*b.shape[:-1], 256)
    if t == "Q2_K":
        s = b[..., 0:16]
        dl = (_f16(b, 80)[..., None] * (s & 0xF).astype(F32)).astype(F32)
        ml = (_f16(b, 82)[..., None] * (s >> 4).astype(F32)).astype(F32)
        return dl, ml, _crumbs(b[..., 16:80])
    if t == "Q3_K":
        sc = b[..., 96:108].astype(np.int32)
        lo = np.concatenate([sc[..., 0:8] & 0xF, sc[..., 0:8] >> 4], -1)
        j = np.arange(16)
        hi = (sc[..., 8 + j % 4] >> (2 * (j // 4))) & 3
        s = (lo | (hi << 4)) - 32
        dl = (_f16(b, 108)[..., None] * s.astype(F32)).astype(F32)
        hm = b[..., 0:32][..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]  # [.., 8, 32]
        codes = _crumbs(b[..., 32:96]) | ((hm & 1).reshape(*b.shape[:-1], 256) << 2)
        return dl, zeros() * dl, codes
    if t == "Q6_K":
        ql = b[..., 0:128].reshape(*b.shape[:-1], 2, 2, 32)  # [h, (a|c, b|e), l]
        qh = b[..., 128:192].reshape(*b.shape[:-1], 2, 1, 32)
        low = np.stack([ql[..., 0, :] & 0xF, ql[..., 1, :] & 0xF, ql[..., 0, :] >> 4,
                        ql[..., 1, :] >> 4], axis=-2)  # fmt: skip
        high = (qh >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3
        codes = (low | (high << 4)).reshape(*b.shape[:-1], 256)
        sc = b[..., 192:208].view(np.int8).astype(F32)
        return (_f16(b, 208)[..., None] * sc).astype(F32), zeros() * sc, codes
    raise AssertionError(t)


def _write(b: np.ndarray, codes: np.ndarray, t: str) -> None:
    """Writes ``codes [rows, nb, values]`` into the blocks ``b [rows, nb, bytes]`` (in place),
    keeping their scales and mins: the inverse of :func:`_read`'s codes."""
    c = codes.astype(np.uint8)

    def nib(x: np.ndarray) -> np.ndarray:
        n = x.shape[-1] // 2
        return (x[..., :n] & 0xF) | ((x[..., n:] & 0xF) << 4)

    if t in ("Q4_0", "IQ4_NL"):
        b[..., 2:18] = nib(c)
    elif t == "Q4_1":
        b[..., 4:20] = nib(c)
    elif t in ("Q5_0", "Q5_1"):
        at = 2 if t == "Q5_0" else 4
        qh = (((c >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(
            axis=-1, dtype=np.uint32
        )
        b[..., at : at + 4] = qh[..., None].view(np.uint8)
        b[..., at + 4 : at + 20] = nib(c)
    elif t == "Q8_0":
        b[..., 2:34] = (c.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
    elif t in ("Q4_K", "Q5_K"):
        q = c.reshape(*c.shape[:-1], 4, 2, 32)
        at = 16 if t == "Q4_K" else 48
        b[..., at : at + 128] = ((q[..., 0, :] & 0xF) | ((q[..., 1, :] & 0xF) << 4)).reshape(
            *c.shape[:-1], 128
        )
        if t == "Q5_K":
            bit = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
            hb = ((q >> 4) & 1) << bit[..., None]  # [.., 4, 2, 32]
            b[..., 16:48] = hb.reshape(*c.shape[:-1], 8, 32).sum(axis=-2, dtype=np.uint8)
    elif t == "Q2_K":
        b[..., 16:80] = _put_crumbs(c)
    elif t == "Q3_K":
        b[..., 32:96] = _put_crumbs(c & 3)
        hm = ((c >> 2) & 1).reshape(*c.shape[:-1], 8, 32) << np.arange(8, dtype=np.uint8)[:, None]
        b[..., 0:32] = hm.sum(axis=-2, dtype=np.uint8)
    elif t == "Q6_K":
        q = c.reshape(*c.shape[:-1], 2, 4, 32)  # [h, (a, b, c, e), l]
        a, bb, cc, e = (q[..., k, :] for k in range(4))
        ql = np.stack([(a & 0xF) | ((cc & 0xF) << 4), (bb & 0xF) | ((e & 0xF) << 4)], axis=-2)
        b[..., 0:128] = ql.reshape(*c.shape[:-1], 128)
        qh = (a >> 4) | ((bb >> 4) << 2) | ((cc >> 4) << 4) | ((e >> 4) << 6)
        b[..., 128:192] = qh.reshape(*c.shape[:-1], 64)
    else:
        raise AssertionError(t)


_MIDS = {t: ((v[1:] + v[:-1]) / 2).astype(F32) for t, v in _TABLE.items()}


def _nearest(w: np.ndarray, dl: np.ndarray, ml: np.ndarray, keep: np.ndarray, t: str) -> np.ndarray:
    """The code of each ``w`` nearest on its sub-block's stored grid, as ggml's K-quants
    requantize (``nearest_int((x + ml) / dl)``, clamped to the codes): float32 math, ties to
    even; IQ4_NL's table by its midpoints (the upper value on a tie, as ``best_index_int8``).
    Where ``dl == 0`` every code gives the same value and ``keep`` (ggml's code) stays."""
    table = _TABLE[t]
    zero = dl == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        v = ((w + ml) / np.where(zero, F32(1), dl)).astype(F32)
    if t == "IQ4_NL":
        q = np.searchsorted(_MIDS[t], v, side="right")
    else:
        q = np.clip(np.rint(v) - table[0], 0, len(table) - 1)
    return np.where(zero, keep, q).astype(np.int32)


def _value(q: np.ndarray, dl: np.ndarray, ml: np.ndarray, t: str) -> np.ndarray:
    return ((dl * _TABLE[t][q]).astype(F32) - ml).astype(F32)


def _importance(imatrix: Any, H: np.ndarray, cols: int) -> np.ndarray | None:
    if imatrix is None or imatrix is False:
        return None
    if imatrix is True:
        return np.ascontiguousarray(np.diag(H), dtype=F32)
    if isinstance(imatrix, (bool, np.bool_)):
        raise AssertionError  # unreachable: True / False handled above
    qw = np.array(imatrix, dtype=F32).reshape(-1)
    if qw.shape != (cols,):
        raise ValueError(f"imatrix has {qw.size} weights; W has {cols} columns (one weight each)")
    if not np.isfinite(qw).all() or (qw < 0).any():
        raise ValueError("imatrix weights must be finite and >= 0 (llama-imatrix's sums of x²)")
    return qw


def gptq_gguf(
    W: Any,
    X: Any = None,
    *,
    hessian: Any = None,
    type: str = "Q4_0",
    imatrix: Any = True,
    damp: float = 0.01,
    block_size: int | None = None,
    act_order: bool = False,
) -> np.ndarray:
    """GPTQ of a linear layer's weight into a GGUF block type (see the module's docstring).

    Args:
        W: float ``[out, in]``; ``in`` a multiple of the type's block (32; 256 for the
            K-quants).
        X: calibration inputs ``[tokens, in]`` (or ``[..., in]``); or ``hessian`` (a
            :class:`qfast.Hessian` or the ``[in, in]`` matrix).
        type: ``"Q4_0"``, ``"Q5_0"``, ``"Q4_1"``, ``"Q5_1"``, ``"Q8_0"``, ``"IQ4_NL"``,
            ``"Q2_K"``, ``"Q3_K"``, ``"Q4_K"``, ``"Q5_K"`` or ``"Q6_K"``.
        imatrix: the importance weights each block's grid is searched with, as
            ``llama-quantize --imatrix``: ``True`` (default) the Hessian's diagonal (``Σ x²``
            over the calibration tokens, what ``llama-imatrix`` collects); an array of ``in``
            weights; ``False`` ggml's unweighted rule (``llama-quantize`` without an importance
            matrix; for Q4_0 .. Q8_0 its reference rule, codes as ggml computes them).
        damp: GPTQ's ``percdamp`` (a fraction of the mean diagonal).
        block_size: columns per lazy update, a multiple of the type's block (default 128, 256
            for the K-quants).
        act_order: process the columns by decreasing ``H[i, i]`` (GPTQ's ``desc_act``), each
            block's grid fixed beforehand on the original weights (static groups: a GGUF
            block cannot follow a permutation). Without it, the blocks' grids are chosen on
            the compensated weights as the loop reaches them.

    Returns:
        uint8 ``[out, in / block * bytes_per_block]``: the tensor's GGUF bytes.
    """
    if not isinstance(type, str) or type not in GGUF_TYPES:
        raise ValueError(f"type {type!r}: gptq_gguf writes {', '.join(GGUF_TYPES)}")
    S, sub, nbytes = _GEOMETRY[type]
    W = np.array(W, dtype=F32, order="C", copy=True)
    if W.ndim != 2:
        raise ValueError(f"W must be a 2-D [out, in] weight, got shape {W.shape}")
    if not np.isfinite(W).all():
        raise ValueError("W contains NaN or Inf; quantization needs finite weights")
    rows, cols = W.shape
    if cols % S:
        raise ValueError(f"{type} stores blocks of {S} input columns; in_features is {cols}")
    if block_size is None:
        block_size = max(128, S)
    block_size = check_at_least(block_size, "block_size", S)
    act_order = as_bool(act_order, "act_order")
    if block_size % S:
        raise ValueError(f"block_size must be a multiple of {S} for {type}, got {block_size}")
    damp = check_positive(damp, "damp")
    H = _hessian_matrix(hessian, X, cols)
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    qw = _importance(imatrix, H, cols)
    nb = cols // S
    codes = np.zeros((rows, cols), np.int32)
    if qw is None and type in _LEGACY:
        # ggml's reference rule for the 32-blocks: the codes by its float32 1 / d
        d_all = np.zeros((rows, nb), F32)
        m_all = np.zeros((rows, nb), F32)
        grids: list[Any] = [None] * nb

        def choose(Wb: np.ndarray, c0: int) -> None:
            for k in range(Wb.shape[1] // S):
                b = c0 // S + k
                grids[b] = _grid(Wb[:, k * S : (k + 1) * S], type)
                d_all[:, b], m_all[:, b] = grids[b][2], grids[b][3]

        def column(w: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
            inv, m32, d16, m16 = grids[c // S]
            q = _codes(w, inv, m32, type)
            return q, _dequant(q, d16, m16, type)
    else:
        out = np.zeros((rows, nb, nbytes), np.uint8)
        dl_col = np.zeros((rows, cols), F32)
        ml_col = np.zeros((rows, cols), F32)
        keep = np.zeros((rows, cols), np.int32)

        def choose(Wb: np.ndarray, c0: int) -> None:
            # ggml's own search (weighted by the importance) on these columns' current values
            Wb = np.ascontiguousarray(Wb)
            width = Wb.shape[1]
            if qw is None:
                data = quantize(Wb, type)
            else:
                data = quantize(Wb, type, imatrix=qw[c0 : c0 + width])
            b = data.reshape(rows, width // S, nbytes)
            out[:, c0 // S : (c0 + width) // S] = b
            dl, ml, kc = _read(b, type)
            dl_col[:, c0 : c0 + width] = np.repeat(dl, sub, axis=-1).reshape(rows, width)
            ml_col[:, c0 : c0 + width] = np.repeat(
                np.broadcast_to(ml, dl.shape), sub, axis=-1
            ).reshape(rows, width)
            keep[:, c0 : c0 + width] = kc.reshape(rows, width)

        def column(w: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
            dl, ml = dl_col[:, c], ml_col[:, c]
            q = _nearest(w, dl, ml, keep[:, c], type)
            return q, _value(q, dl, ml, type)

    if act_order:
        # static grids: every block's ggml grid on the weights before any update, so that
        # the columns can run in any order (a GGUF row stores its blocks in column order)
        choose(W, 0)
        perm = np.argsort(-np.diag(H), kind="stable")
        W = np.ascontiguousarray(W[:, perm])
        H = H[np.ix_(perm, perm)]
    else:
        perm = np.arange(cols)
    U, _ = hinv_factor(H, damp)
    del H
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].copy()
        Err = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = int(perm[i1 + i])
            if not act_order and c % S == 0:
                choose(W1[:, i : i + S], c)
            w = W1[:, i]
            q, dq = column(w, c)
            codes[:, c] = q
            err = (w - dq) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:]).astype(F32)
            Err[:, i] = err
        if i2 < cols:
            W[:, i2:] -= (Err @ U[i1:i2, i2:]).astype(F32)
    if qw is None and type in _LEGACY:
        return _pack(codes.reshape(rows, nb, S), d_all, m_all, type)
    _write(out, codes.reshape(rows, nb, S), type)
    return out.reshape(rows, -1)

"""AWQ GEMM checkpoints (AutoAWQ's ``WQLinear_GEMM``; transformers, vLLM), one linear at a time.

Per linear ``NAME`` (weight ``[out, in]``, 4-bit, groups of ``group_size`` input columns):

- ``NAME.qweight``: int32 ``[in, out / 8]``. Input row ``i``'s codes along the outputs, eight
  per word; nibble ``k`` (bits ``4k .. 4k+3``) of word ``j`` holds output ``8j + ORDER[k]``,
  ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`` (the order AutoAWQ's GEMM kernel dequantizes in).
- ``NAME.qzeros``: int32 ``[in / group_size, out / 8]``: the zero points (as they are, no
  offset), packed the same way.
- ``NAME.scales``: float16 ``[in / group_size, out]``.

A symmetric grid is written as zero points ``8`` (``zero_point: true``), which every AWQ
loader reads; AWQ has no ``g_idx``, so act-order weights are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..tensor.qtensor import QTensor
from ._words import (
    Grid,
    check_bits_in,
    from_words,
    grid,
    half_scales,
    packed_triplet,
    to_qtensor,
    words,
)

__all__ = ["ORDER", "pack", "unpack"]

FORMAT = "AWQ"
#: Nibble ``k`` of a word holds output ``8j + ORDER[k]``.
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_PERM = np.array(ORDER)
_INV = np.argsort(_PERM)
SUFFIXES = ("qweight", "qzeros", "scales")


def check(g: Grid, name: str) -> None:
    """Refuses a grid AWQ's GEMM layout cannot hold."""
    check_bits_in(g.bits, (4,), name, FORMAT, "AutoAWQ's GEMM layout and vLLM's AWQ kernels")
    out, n_in = g.shape
    if out % 8:
        raise ValueError(
            f"{name}: AWQ packs eight outputs per int32 word, so out_features must be a "
            f"multiple of 8; it is {out}: save with format='gptq' or 'compressed-tensors', or "
            "keep this layer in float (Recipe overrides={...: None})"
        )
    if g.group_size is None:
        raise ValueError(
            f"{name}: AWQ stores groups of input columns, not one scale per row: quantize "
            "with a group_size (such as 128), or save with format='gptq'"
        )
    if n_in % g.group_size:
        raise ValueError(
            f"{name}: AWQ needs in_features ({n_in}) to be a multiple of group_size "
            f"({g.group_size}), with no shorter last group: pick a group size that divides it"
        )
    if g.g_idx is not None:
        raise ValueError(
            f"{name}: AWQ has no g_idx, so act-order (permuted groups) cannot be stored: "
            "quantize with act_order=False, or save with format='gptq' or 'compressed-tensors'"
        )


def _interleave(a: np.ndarray) -> np.ndarray:
    """Columns reordered so that packing eight consecutive codes gives AWQ's nibble order."""
    rows, cols = a.shape
    return a.reshape(rows, cols // 8, 8)[:, :, _PERM].reshape(rows, cols)


def _deinterleave(a: np.ndarray) -> np.ndarray:
    rows, cols = a.shape
    return a.reshape(rows, cols // 8, 8)[:, :, _INV].reshape(rows, cols)


def encode(g: Grid, name: str) -> dict[str, np.ndarray]:
    """The tensors of one linear (see the module's docstring), from a grid."""
    check(g, name)
    return {
        "qweight": words(_interleave(np.ascontiguousarray(g.codes.T)), 4),
        "qzeros": words(_interleave(np.ascontiguousarray(g.zeros.T.astype(np.uint8))), 4),
        "scales": np.ascontiguousarray(half_scales(g.scales, name, FORMAT).T),
    }


def pack(qt: QTensor, name: str = "weight") -> dict[str, Any]:
    """One linear's QTensor as AWQ GEMM's ``qweight``, ``qzeros`` and ``scales``.

    Raises:
        ValueError: what AWQ cannot hold, named ``name``: not 4-bit; ``out`` not a multiple
            of 8; no groups, or groups that do not divide ``in``; act-order ``g_idx``; float
            zero points (HQQ); scales float16 cannot hold exactly.
    """
    return encode(grid(qt, name, FORMAT), name)


def unpack(
    tensors: Mapping[str, Any], *, bits: int = 4, group_size: int, name: str = "weight"
) -> QTensor:
    """The canonical QTensor (unsigned codes, int32 zero points) of AWQ GEMM's tensors."""
    check_bits_in(int(bits), (4,), name, FORMAT, "AutoAWQ's GEMM layout")
    qweight, qzeros, scales = packed_triplet(tensors, name, FORMAT)
    n_in, w = qweight.shape
    out = w * 8
    gs = int(group_size)
    if gs <= 0 or n_in % gs:
        raise ValueError(f"{name}: group_size {group_size} does not divide in_features {n_in}")
    groups = n_in // gs
    if scales.shape != (groups, out) or qzeros.shape != (groups, w):
        raise ValueError(
            f"{name}: scales {scales.shape} / qzeros {qzeros.shape} do not match qweight "
            f"{qweight.shape} with group_size {gs}"
        )
    codes = _deinterleave(from_words(qweight, out, 4)).T
    zeros = _deinterleave(from_words(qzeros, out, 4)).T.astype(np.int32)
    g = Grid(
        codes=np.ascontiguousarray(codes),
        zeros=np.ascontiguousarray(zeros),
        scales=np.ascontiguousarray(scales.T),
        bits=4,
        group_size=gs,
        g_idx=None,
    )
    return to_qtensor(g)


def config(group_size: int, float_linears: list[str]) -> dict[str, Any]:
    """``quantization_config`` for an AWQ GEMM checkpoint. Keys: AutoAWQ's export
    (``quant_method``, ``zero_point``, ``group_size``, ``bits``, ``version``,
    ``modules_to_not_convert``), read by transformers' ``AwqConfig`` and vLLM's
    ``AWQConfig.from_config`` (``w_bit`` / ``bits``, ``q_group_size`` / ``group_size``,
    ``zero_point``, ``modules_to_not_convert``)."""
    return {
        "quant_method": "awq",
        "bits": 4,
        "w_bit": 4,
        "group_size": int(group_size),
        "q_group_size": int(group_size),
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": list(float_linears) or None,
    }

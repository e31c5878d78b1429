"""GPTQ checkpoints (AutoGPTQ / optimum / GPTQModel / vLLM), one linear at a time.

Per linear ``NAME`` (weight ``[out, in]``, ``bits`` in 2, 3, 4, 8):

- ``NAME.qweight``: int32 ``[in * bits / 32, out]``. Column ``o`` is output row ``o``'s codes
  as one little-endian bit stream along the input columns (input 0 in the low bits of word
  0); 3-bit codes straddle words as AutoGPTQ's ``QuantLinear.pack`` lays them.
- ``NAME.qzeros``: int32 ``[groups, out * bits / 32]``: group ``g``'s zero points as one bit
  stream along the outputs. ``checkpoint_format: "gptq"`` (v1, AutoGPTQ's) stores
  ``zero - 1``, which the loaders add 1 back to; ``"gptq_v2"`` (GPTQModel's) stores the zero.
- ``NAME.scales``: float16 ``[groups, out]``.
- ``NAME.g_idx``: int32 ``[in]``: each input column's group, ``i // group_size`` unless
  act-order permuted them.

``group_size = -1`` (one group per row) stores one group. The codes of a symmetric grid are
unsigned with zero ``2^(bits-1)`` (``sym: true``), so both grids share these tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._qfast import __version__
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

__all__ = ["BITS", "CHECKPOINT_FORMATS", "pack", "unpack"]

FORMAT = "GPTQ"
#: The widths AutoGPTQ's packer and vLLM's GPTQ kernels take.
BITS = (2, 3, 4, 8)
#: ``quantization_config.checkpoint_format`` values: v1 stores zero - 1, v2 the zero.
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")
SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


def _check_format(checkpoint_format: str) -> bool:
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(
            f"checkpoint_format {checkpoint_format!r}: pass 'gptq' (v1, zero points stored "
            "minus 1) or 'gptq_v2' (stored as they are)"
        )
    return checkpoint_format == "gptq"


def check(g: Grid, name: str) -> None:
    """Refuses a grid GPTQ cannot hold (width, a shape the words cannot tile)."""
    check_bits_in(g.bits, BITS, name, FORMAT, "AutoGPTQ's packer and vLLM's kernels")
    out, n_in = g.shape
    for what, n in (("in_features", n_in), ("out_features", out)):
        if n % 32:
            raise ValueError(
                f"{name}: GPTQ's loaders (AutoGPTQ, GPTQModel) size qweight and qzeros as "
                f"{what} // 32 * bits words, so {what} must be a multiple of 32; it is {n}: "
                "save with format='compressed-tensors' or 'qfast', or keep this layer in float "
                "(Recipe overrides={...: None})"
            )


def v1_needs_v2(g: Grid) -> bool:
    """Whether a zero point of 0 makes this grid impossible in v1 (it stores zero - 1)."""
    return bool(g.zeros.size) and int(g.zeros.min()) == 0


def encode(g: Grid, name: str, checkpoint_format: str = "gptq") -> dict[str, np.ndarray]:
    """The tensors of one linear (see the module's docstring), from a checked grid."""
    v1 = _check_format(checkpoint_format)
    check(g, name)
    zeros = g.zeros
    if v1:
        if v1_needs_v2(g):
            r, c = np.argwhere(zeros == 0)[0]
            raise ValueError(
                f"{name}: the zero point of row {r}, group {c} is 0, which GPTQ v1 cannot "
                "store (it stores zero - 1, and its loaders read -1 back as 2^bits): pass "
                "checkpoint_format='gptq_v2' (loaded by GPTQModel and vLLM >= 0.11.1), or "
                "quantize with symmetric=True"
            )
        zeros = zeros - 1
    return {
        "qweight": np.ascontiguousarray(words(g.codes, g.bits).T),
        "qzeros": words(zeros.T.astype(np.uint8), g.bits),
        "scales": np.ascontiguousarray(half_scales(g.scales, name, FORMAT).T),
        "g_idx": np.ascontiguousarray(g.group_of_columns(), np.int32),
    }


def pack(qt: QTensor, name: str = "weight", *, checkpoint_format: str = "gptq") -> dict[str, Any]:
    """One linear's QTensor as GPTQ's ``qweight``, ``qzeros``, ``scales`` and ``g_idx``.

    Raises:
        ValueError: what GPTQ cannot hold, named ``name``: a width other than 2, 3, 4, 8;
            ``in`` or ``out`` not a whole number of words; float zero points (HQQ); scales
            float16 cannot hold exactly; a zero point of 0 in v1.
    """
    return encode(grid(qt, name, FORMAT), name, checkpoint_format)


def unpack(
    tensors: Mapping[str, Any],
    *,
    bits: int,
    group_size: int | None,
    checkpoint_format: str = "gptq",
    name: str = "weight",
) -> QTensor:
    """The canonical QTensor (unsigned codes, int32 zero points) of GPTQ's tensors.

    ``group_size`` ``-1`` or ``None``: one group per row. ``g_idx`` is kept when it is not
    ``i // group_size`` (act-order).
    """
    v1 = _check_format(checkpoint_format)
    check_bits_in(int(bits), BITS, name, FORMAT, "AutoGPTQ's packer and vLLM's kernels")
    qweight, qzeros, scales = packed_triplet(tensors, name, FORMAT)
    words_in, out = qweight.shape
    n_in = words_in * 32 // bits
    g_idx_raw = tensors.get("g_idx")
    if g_idx_raw is not None:
        g_idx = np.asarray(g_idx_raw).astype(np.int64)
        if g_idx.shape != (n_in,):
            raise ValueError(f"{name}.g_idx has shape {g_idx.shape}; qweight holds {n_in} inputs")
    if scales.ndim != 2 or scales.shape[1] != out:
        raise ValueError(f"{name}.scales has shape {scales.shape}; qweight has {out} outputs")
    n_groups = scales.shape[0]
    if qzeros.shape[0] != n_groups or qzeros.shape[1] * 32 < out * bits:
        raise ValueError(f"{name}.qzeros has shape {qzeros.shape}; scales {scales.shape}")
    per_row = group_size is None or group_size == -1 or (n_groups == 1 and group_size >= n_in)
    codes = from_words(np.ascontiguousarray(qweight.T), n_in, bits)
    zeros = from_words(qzeros, out, bits).astype(np.int32).T
    if v1:
        if zeros.size and int(zeros.max()) == (1 << bits) - 1:
            r, c = np.argwhere(zeros == (1 << bits) - 1)[0]
            raise ValueError(
                f"{name}.qzeros: row {r}, group {c} stores {(1 << bits) - 1}, which GPTQ v1's "
                f"loaders read as zero point {1 << bits}, outside the {bits}-bit codes (an "
                "exporter wrote zero - 1 for a zero of 0): re-export the model as "
                "checkpoint_format 'gptq_v2'"
            )
        zeros = zeros + 1  # v1 stores zero - 1
    gidx: np.ndarray | None = None
    gs: int | None = None
    if not per_row:
        assert group_size is not None
        gs = int(group_size)
        if g_idx_raw is not None and not np.array_equal(g_idx, np.arange(n_in) // gs):
            gidx = g_idx.astype(np.int32)
        elif -(-n_in // gs) != n_groups:
            raise ValueError(f"{name}.scales has {n_groups} groups; {n_in} inputs / {gs} need more")
    g = Grid(
        codes=codes,
        zeros=np.ascontiguousarray(zeros),
        scales=np.ascontiguousarray(scales.T),
        bits=int(bits),
        group_size=gs,
        g_idx=gidx,
    )
    return to_qtensor(g)


# -- quantization_config --------------------------------------------------------------------


def layer_args(g: Grid) -> dict[str, Any]:
    """The per-layer keys GPTQ's config (and its ``dynamic`` overrides) carry."""
    return {
        "bits": g.bits,
        "group_size": -1 if g.group_size is None else g.group_size,
        "desc_act": g.g_idx is not None,
        "sym": g.symmetric,
    }


def config(
    layers: Mapping[str, dict[str, Any]],
    float_linears: list[str],
    *,
    checkpoint_format: str,
    damp: float = 0.01,
    static_groups: bool = False,
    lm_head: bool = False,
) -> dict[str, Any]:
    """``quantization_config`` for a GPTQ checkpoint.

    ``layers``: module name -> :func:`layer_args`. The most common arguments become the
    global keys; a module that differs gets a ``dynamic`` ``"+:"`` override, and a linear
    left in float (inside the blocks) a ``"-:"`` rule, so vLLM and GPTQModel skip it.
    Keys: transformers' ``GPTQConfig`` and optimum's ``GPTQQuantizer`` (``bits``,
    ``group_size``, ``desc_act``, ``sym``, ``damp_percent``, ``true_sequential``,
    ``static_groups``, ``checkpoint_format``, ``quant_method``), vLLM's ``GPTQConfig`` /
    ``GPTQMarlinConfig.from_config`` (``bits``, ``group_size``, ``desc_act``, ``sym``,
    ``lm_head``, ``dynamic``, ``checkpoint_format``).
    """
    _check_format(checkpoint_format)
    if not layers:
        raise ValueError("no quantized linear to describe: quantize the model first")
    counts: dict[tuple[tuple[str, Any], ...], int] = {}
    for args in layers.values():
        key = tuple(sorted(args.items()))
        counts[key] = counts.get(key, 0) + 1
    common: dict[str, Any] = dict(max(counts.items(), key=lambda kv: kv[1])[0])
    dynamic: dict[str, dict[str, Any]] = {}
    for module, args in layers.items():
        diff = {k: v for k, v in args.items() if common[k] != v}
        if diff:
            dynamic["+:" + _module_regex(module)] = diff
    in_blocks = [m for m in float_linears if m != "lm_head"]
    for module in in_blocks:
        dynamic["-:" + _module_regex(module)] = {}
    out = {
        "quant_method": "gptq",
        "bits": common["bits"],
        "group_size": common["group_size"],
        "desc_act": common["desc_act"],
        "sym": common["sym"],
        "damp_percent": float(damp),
        "true_sequential": True,
        "static_groups": bool(static_groups),
        "checkpoint_format": checkpoint_format,
        "lm_head": bool(lm_head),
        "meta": {"quantizer": [f"qfast:{__version__}"]},
    }
    if in_blocks:
        # transformers (optimum's convert_model) reads no `dynamic`: it turns every linear of
        # the blocks into a GPTQ layer unless this list (of lists; names matched by suffix)
        # leaves it out. vLLM reads it too.
        out["modules_in_block_to_quantize"] = [[m for m in layers if m != "lm_head"]]
    if dynamic:
        out["dynamic"] = dynamic
    return out


# vLLM runs q/k/v as one layer (qkv_proj) and gate/up as one (gate_up_proj), and asks the
# `dynamic` rules about those fused names (vLLM's gptq_utils.get_dynamic_override).
_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj"}
_FUSED |= {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def _module_regex(module: str) -> str:
    """An anchored regex for ``module`` that also matches vLLM's fused layer holding it."""
    parent, _, leaf = module.rpartition(".")
    fused = _FUSED.get(leaf)
    head = re.escape(parent) + r"\." if parent else ""
    if fused is None:
        return f"^{head}{re.escape(leaf)}$"
    return f"^{head}(?:{re.escape(leaf)}|{fused})$"


def layer_reader(qcfg: Mapping[str, Any]) -> Any:
    """module name -> its ``(bits, group_size)`` under ``qcfg`` (``dynamic`` applied), or
    ``None`` for a module a ``"-:"`` rule keeps in float."""
    try:
        base_bits = int(qcfg["bits"])
        base_gs = int(qcfg.get("group_size", -1))
    except (KeyError, TypeError, ValueError):
        raise ValueError("quantization_config has no integer 'bits'") from None
    dynamic = qcfg.get("dynamic") or {}
    rules = []
    for pattern, over in dynamic.items():
        neg = pattern.startswith("-:")
        body = pattern[2:] if pattern[:2] in ("-:", "+:") else pattern
        rules.append((neg, re.compile(body), over or {}))

    def resolve(module: str) -> tuple[int, int] | None:
        bits, gs = base_bits, base_gs
        for neg, rx, over in rules:
            if rx.match(module):
                if neg:
                    return None
                bits = int(over.get("bits", bits))
                gs = int(over.get("group_size", gs))
                break  # GPTQModel / vLLM: the first positive match wins
        return bits, gs

    return resolve

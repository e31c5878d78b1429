"""llama.cpp's type mixes: which GGUF type each tensor of a model gets for ``Q4_K_M`` & co.

A port of ``llama_tensor_get_type`` (llama.cpp 0.3.36, ``src/llama-quant.cpp``) for the mixes
``llama-quantize`` names Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q2_K_S, Q3_K_S, Q3_K_M, Q3_K_L,
Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M and Q6_K, on dense (non-MoE) models:

- which tensors are quantized at all (2-D ``*weight`` tensors, not the norms);
- the output tensor (and the token embedding when it is tied to it): Q6_K, or Q8_0 when its
  rows do not divide into the type's blocks;
- the per-category rules: ``attn_v`` (with the layer counter's ``use_more_bits`` pattern, GQA),
  ``ffn_down`` (by layer position: the first eighth, ``use_more_bits``), ``attn_output``,
  ``attn_qkv``; an importance matrix changes Q4_0 / Q5_0's first ffn_down layers;
- the fallbacks when a row is not a whole number of blocks (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K ->
  Q8_0, Q2_K / Q3_K -> Q4_0, then F16 if even that does not divide).

``pure=True`` is ``llama-quantize --pure``: every quantizable tensor gets the mix's default
type (the fallbacks still apply).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["MIXES", "default_type", "llama_order", "tensor_types"]

#: mix name -> its default type (``llama_ftype_get_default_type``).
MIXES = {
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q8_0": "Q8_0",
    "Q2_K": "Q2_K",
    "Q2_K_S": "Q2_K",
    "Q3_K_S": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K",
    "Q4_K_M": "Q4_K",
    "Q5_K_S": "Q5_K",
    "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K",
}
_BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "IQ4_NL": 32, "F16": 1}
_BLOCK |= {t: 256 for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")}
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def default_type(mix: str) -> str:
    """The type most tensors of ``mix`` get."""
    try:
        return MIXES[mix]
    except KeyError:
        raise ValueError(
            f"unknown type mix {mix!r}; llama-quantize's mixes qfast writes: {', '.join(MIXES)}"
        ) from None


_LAYER = re.compile(r"blk\.(-?\d+)\.")


def llama_order(names: Sequence[str]) -> list[str]:
    """``names`` in the order llama.cpp's model loader keeps them (and ``llama-quantize``
    writes them): the tensors outside the blocks first, then block by block, each group
    sorted by name (``llama_model_loader::weight_name_comparer``)."""

    def key(name: str) -> tuple[int, str]:
        m = _LAYER.match(name)
        return (int(m.group(1)) if m else -1, name)

    return sorted(names, key=key)


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return cat
    return "other"


def _quantizable(name: str, ndim: int) -> bool:
    """``tensor_allows_quantization`` for the dense architectures qfast runs."""
    if ndim < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    skip = ("ffn_gate_inp.weight", "position_embd", "token_types", "ssm_conv1d")
    return not any(s in name for s in skip)


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(ncols: int, t: str) -> str:
    """``tensor_type_fallback``: a type whose blocks divide the row, else F16."""
    if ncols % _BLOCK[t] == 0:
        return t
    fb = _FALLBACK.get(t, t)
    return fb if ncols % _BLOCK[fb] == 0 else "F16"


def tensor_types(
    tensors: Sequence[tuple[str, tuple[int, ...], str]],
    mix: str,
    *,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    has_imatrix: bool = False,
    pure: bool = False,
) -> dict[str, str]:
    """The GGUF type each tensor is written as under ``mix``.

    Args:
        tensors: ``(name, shape, type)`` of every tensor (llama.cpp's names; ``shape`` in
            NumPy order, so a row is ``shape[-1]`` values; ``type`` as stored, kept by the
            tensors that are not quantized). They are visited in :func:`llama_order`, as the
            layer counters of the rules count them.
        mix: one of :data:`MIXES`.
        n_layer, n_head, n_head_kv: the model's block count and attention heads (GQA).
        has_imatrix: an importance matrix is given (``--imatrix``).
        pure: ``--pure``.
    """
    base = default_type(mix)
    names = [t[0] for t in tensors]
    tied = "output.weight" not in names
    n_attn_v = sum(_category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in names)
    n_gqa = n_head // max(n_head_kv, 1)
    is_70b = n_layer == 80 and n_head != n_head_kv  # llama.cpp's LLM_TYPE_70B for llama
    i_attn_v = i_ffn_down = 0
    out: dict[str, str] = {}
    by_name = {t[0]: t for t in tensors}
    for name, shape, stored in (by_name[n] for n in llama_order(list(by_name))):
        if not _quantizable(name, len(shape)):
            out[name] = stored
            continue
        cat = _category(name)
        ncols = shape[-1]
        t = base
        if not pure:
            if cat == "output" or (tied and cat == "token_embd"):
                if ncols % _BLOCK[t]:
                    t = "Q8_0"
                elif t != "Q8_0":
                    t = "Q6_K"
            elif cat == "token_embd":
                pass
            elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):  # attn_qkv never reaches its own rule
                t = _attn_v(mix, t, i_attn_v, n_attn_v, n_gqa, is_70b)
                i_attn_v += 1
            elif cat == "ffn_down":
                t = _ffn_down(mix, t, i_ffn_down, n_layer, has_imatrix)
                i_ffn_down += 1
            elif cat == "attn_output":
                t = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(mix, t)
        out[name] = _fallback(ncols, t)
    return out


def _attn_v(mix: str, t: str, i: int, n: int, n_gqa: int, is_70b: bool) -> str:
    if mix == "Q2_K":
        t = "Q4_K" if n_gqa >= 4 else "Q3_K"
    elif mix == "Q2_K_S" and n_gqa >= 4:
        t = "Q4_K"
    elif mix == "Q3_K_M":
        t = "Q5_K" if i < 2 else "Q4_K"
    elif mix == "Q3_K_L":
        t = "Q5_K"
    elif mix in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
        t = "Q6_K"
    elif mix == "Q4_K_S" and i < 4:
        t = "Q5_K"
    if is_70b and t in ("Q3_K", "Q4_K"):
        t = "Q5_K"
    return t


def _ffn_down(mix: str, t: str, i: int, n: int, has_imatrix: bool) -> str:
    if mix == "Q2_K":
        return "Q3_K"
    if mix == "Q2_K_S":
        return "Q4_K" if i < n // 8 else t
    if mix == "Q3_K_M":
        return "Q5_K" if i < n // 16 else "Q4_K"  # non-Falcon: always Q4_K from there
    if mix == "Q3_K_L":
        return "Q5_K"
    if mix == "Q4_K_M":
        return "Q6_K" if _use_more_bits(i, n) else t
    if mix == "Q5_K_M":
        return "Q6_K" if _use_more_bits(i, n) else t
    if mix == "Q4_K_S":
        return "Q5_K" if i < n // 8 else t
    if mix in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
        return "Q4_1" if mix == "Q4_0" else "Q5_1"
    return t

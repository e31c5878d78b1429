"""compressed-tensors ``pack-quantized`` checkpoints (llm-compressor; transformers, vLLM), one
linear at a time.

Per linear ``NAME`` (weight ``[out, in]``, ``num_bits`` 2, 4 or 8, ``type: int``):

- ``NAME.weight_packed``: int32 ``[out, ceil(in * bits / 32)]``: each output row's codes
  as one little-endian bit stream along the inputs. compressed-tensors quantizes to signed
  codes ``q`` in ``[-2^(b-1), 2^(b-1) - 1]`` and packs ``q + 2^(b-1)``.
- ``NAME.weight_scale``: ``[out, groups]`` (``groups`` 1 for ``strategy: channel``), in the
  dtype the QTensor's scales are (float16, bfloat16 or float32).
- ``NAME.weight_zero_point`` (asymmetric only): the signed zero points, packed the same way
  along the outputs (``packed_dim=0``): int32 ``[ceil(out * bits / 32), groups]``.
- ``NAME.weight_g_idx`` (``actorder: group`` only): int32 ``[in]``.
- ``NAME.weight_shape``: int64 ``[2]``, ``(out, in)``.

Dequantization is ``scale * (q - zero_point)`` with both signed, which is qfast's grid with
both shifted by ``2^(b-1)``: the packed values are qfast's unsigned codes and zero points.

compressed-tensors changed how it packs 3, 5, 6 and 7 bits (padded words before, dense bit
streams after) while 2, 4 and 8 bits tile whole words either way, so only those are written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..tensor.qtensor import QTensor
from ._words import Grid, check_bits_in, from_words, grid, to_qtensor, words

__all__ = ["BITS", "pack", "unpack"]

FORMAT = "compressed-tensors"
#: Widths whose packing is the same in every compressed-tensors version (vLLM runs 4 and 8).
BITS = (2, 4, 8)
SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape")


def check(g: Grid, name: str) -> None:
    check_bits_in(g.bits, BITS, name, FORMAT, "3, 5, 6 and 7 bits pack differently by version")


def encode(g: Grid, name: str) -> dict[str, np.ndarray]:
    """The tensors of one linear (see the module's docstring), from a grid."""
    check(g, name)
    out = {
        "weight_packed": words(g.codes, g.bits),
        "weight_scale": np.ascontiguousarray(g.scales),
        "weight_shape": np.array(g.shape, np.int64),
    }
    if not g.symmetric:
        out["weight_zero_point"] = np.ascontiguousarray(
            words(np.ascontiguousarray(g.zeros.T.astype(np.uint8)), g.bits).T
        )
    if g.g_idx is not None:
        out["weight_g_idx"] = np.ascontiguousarray(g.g_idx, np.int32)
    return out


def pack(qt: QTensor, name: str = "weight") -> dict[str, Any]:
    """One linear's QTensor as compressed-tensors ``pack-quantized`` tensors.

    Raises:
        ValueError: what the format cannot hold, named ``name``: a width other than 2, 4, 8;
            float zero points (HQQ).
    """
    return encode(grid(qt, name, FORMAT), name)


def layer_args(g: Grid) -> dict[str, Any]:
    """The ``weights`` quantization args of one linear (compressed-tensors'
    ``QuantizationArgs``)."""
    return {
        "num_bits": g.bits,
        "type": "int",
        "symmetric": g.symmetric,
        "strategy": "channel" if g.group_size is None else "group",
        "group_size": g.group_size,
        "block_structure": None,
        "dynamic": False,
        # "group": a permuted g_idx is stored; "weight": act-order on static groups
        "actorder": "group" if g.g_idx is not None else "weight" if g.static_order else None,
        "observer": "minmax",
        "observer_kwargs": {},
    }


def unpack(tensors: Mapping[str, Any], *, args: Mapping[str, Any], name: str = "weight") -> QTensor:
    """The canonical QTensor (unsigned codes, int32 zero points) of one linear's tensors,
    under its config group's ``weights`` args."""
    bits = int(args.get("num_bits", 0))
    check_bits_in(bits, BITS, name, FORMAT, "3, 5, 6 and 7 bits pack differently by version")
    if args.get("type", "int") != "int":
        raise ValueError(f"{name}: type {args.get('type')!r} is not an integer grid")
    strategy = args.get("strategy")
    if strategy not in ("channel", "group"):
        raise ValueError(
            f"{name}: strategy {strategy!r}: qfast reads 'channel' and 'group' weights"
        )
    try:
        packed = np.asarray(tensors["weight_packed"])
        scales = np.asarray(tensors["weight_scale"])
        shape = tuple(int(d) for d in np.asarray(tensors["weight_shape"]).reshape(-1))
    except KeyError as e:
        raise ValueError(f"{name}: the tensor {e.args[0]!r} is missing") from None
    if len(shape) != 2:
        raise ValueError(f"{name}.weight_shape is {shape}; a linear's is (out, in)")
    out, n_in = shape
    if packed.ndim != 2 or packed.shape[0] != out or packed.shape[1] * 32 < n_in * bits:
        raise ValueError(f"{name}.weight_packed has shape {packed.shape}; weight_shape {shape}")
    if scales.ndim == 1:
        scales = scales.reshape(-1, 1)
    groups = scales.shape[1]
    gs = None if strategy == "channel" else int(args["group_size"])
    if scales.shape[0] != out or (gs is not None and -(-n_in // gs) != groups):
        raise ValueError(f"{name}.weight_scale has shape {scales.shape}; weight_shape {shape}")
    codes = from_words(packed, n_in, bits)
    zp = tensors.get("weight_zero_point")
    if args.get("symmetric", True) or zp is None:
        if not args.get("symmetric", True):
            raise ValueError(f"{name}: asymmetric weights without weight_zero_point")
        zeros = np.full((out, groups), 1 << (bits - 1), np.int32)
    else:
        zp = np.asarray(zp)
        if zp.dtype in (np.int32, np.uint32) and zp.shape[0] * 32 >= out * bits:
            zeros = from_words(np.ascontiguousarray(zp.T), out, bits).T.astype(np.int32)
        elif zp.shape in ((out, groups), (out,)):  # older files: int8 signed, unpacked
            zeros = zp.reshape(out, groups).astype(np.int32) + (1 << (bits - 1))
        else:
            raise ValueError(f"{name}.weight_zero_point has shape {zp.shape}; weight {shape}")
    g_idx = tensors.get("weight_g_idx")
    gidx = None
    if g_idx is not None and gs is not None:
        gi = np.asarray(g_idx).astype(np.int32)
        if not np.array_equal(gi, np.arange(n_in) // gs):
            gidx = gi
    g = Grid(
        codes=codes,
        zeros=np.ascontiguousarray(zeros),
        scales=np.ascontiguousarray(scales),
        bits=bits,
        group_size=gs,
        g_idx=gidx,
    )
    return to_qtensor(g)


def config(layers: Mapping[str, dict[str, Any]], float_linears: list[str]) -> dict[str, Any]:
    """``quantization_config`` for a ``pack-quantized`` checkpoint: one config group per
    distinct ``weights`` args. When one group covers every quantized linear it targets
    ``["Linear"]`` (llm-compressor's usual scheme) and ``ignore`` lists the float linears;
    otherwise each group lists its modules as ``re:^NAME$`` targets."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    args_of: dict[tuple[Any, ...], dict[str, Any]] = {}
    for module, args in layers.items():
        key = tuple(sorted((k, repr(v)) for k, v in args.items()))
        groups.setdefault(key, []).append(module)
        args_of[key] = args
    config_groups: dict[str, Any] = {}
    for i, (key, modules) in enumerate(groups.items()):
        if len(groups) == 1:
            targets = ["Linear"]
        else:
            targets = ["re:^" + m.replace(".", r"\.") + "$" for m in modules]
        config_groups[f"group_{i}"] = {
            "targets": targets,
            "weights": args_of[key],
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": list(float_linears),
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": None,
    }


def layer_reader(qcfg: Mapping[str, Any]) -> Any:
    """module name -> its config group's ``weights`` args, or ``None`` when ignored or not
    targeted. ``Linear`` targets every linear; ``re:`` targets are regexes (matched from the
    start, as compressed-tensors' ``re.match``); other targets are exact names."""
    import re

    groups = qcfg.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError("compressed-tensors quantization_config has no config_groups")
    ignore = list(qcfg.get("ignore") or [])

    def matches(module: str, target: str) -> bool:
        if target == "Linear":
            return True
        if target.startswith("re:"):
            return re.match(target[3:], module) is not None
        return module == target

    def resolve(module: str) -> Mapping[str, Any] | None:
        if any(matches(module, t) and t != "Linear" for t in ignore):
            return None
        exact = None
        general = None
        for group in groups.values():
            for t in group.get("targets", []):
                if matches(module, t):
                    if t == "Linear":
                        general = general or group
                    else:
                        exact = exact or group
        group = exact or general
        if group is None:
            return None
        weights = group.get("weights")
        return weights if isinstance(weights, Mapping) else None

    return resolve

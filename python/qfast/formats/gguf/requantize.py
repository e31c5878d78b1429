"""``llama-quantize`` in qfast: a GGUF file in, a GGUF file of a llama.cpp type mix out.

Each tensor gets the type :func:`~qfast.formats.gguf.mixes.tensor_types` gives it (llama.cpp's
``llama_tensor_get_type``); a quantized tensor is its float32 values (dequantized first when the
source is quantized, as ``--allow-requantize`` does) run through ``qfast.gguf.quantize`` with
the tensor's importance-matrix weights when given: ggml's ``quantize_<type>`` row by row. The
tensor bytes are then the ones ``llama-quantize`` writes; the metadata is the source's with
``general.file_type`` and ``general.quantization_version`` set as it sets them.

The tensors are written in llama.cpp's order (:func:`~qfast.formats.gguf.mixes.llama_order`),
tensor by tensor (one tensor in memory at a time), atomically.

The source may also be a Hugging Face Llama checkpoint (a folder or ``.safetensors``) or a qfast
model: it is read as ``convert_hf_to_gguf.py`` would write it
(:class:`~qfast.formats.gguf.convert.ConvertedSource`, built by ``qfast.model.gguf_source``),
so the result is the file ``llama-quantize`` writes from the converter's F32 file. ``mix`` may
also be ``"F32"``, ``"F16"`` or ``"BF16"``: a plain conversion (``--outtype``; a converted
source keeps the converter's tensor order then).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .blocks import quantize
from .convert import FLOAT_TYPES, ConvertedSource, SourceTensor
from .file import GGUFFile, load, save_streamed
from .mixes import _quantizable, default_type, llama_order, tensor_types

__all__ = ["FILE_TYPES", "requantize"]

#: mix -> ``general.file_type`` (``llama_ftype``).
FILE_TYPES = {
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "Q2_K_S": 21,
}
_QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION


def _weights_of(imatrix: Any) -> Callable[[str], np.ndarray | None]:
    """tensor name -> its importance weights (one per column), or None."""
    if imatrix is None:
        return lambda name: None
    if isinstance(imatrix, Mapping):
        return lambda name: None if imatrix.get(name) is None else np.asarray(imatrix[name])
    get = getattr(imatrix, "weights", None)
    if get is None:
        raise TypeError(
            "imatrix must be a mapping of tensor name -> weights, or an importance matrix "
            f"(qfast.load_importance_matrix), not {type(imatrix).__name__}"
        )

    def weights(name: str) -> np.ndarray | None:
        try:
            return np.asarray(get(name))
        except KeyError:
            return None

    return weights


def plan(
    source: GGUFFile | ConvertedSource, mix: str, *, has_imatrix: bool = False, pure: bool = False
) -> dict[str, str]:
    """The type each tensor of ``source`` gets under ``mix`` (a tensor of a converted source
    that holds a QTensor's exact ggml blocks keeps its type)."""
    fixed = {n: t.type for n, t in source.tensors.items() if getattr(t, "fixed", False)}
    if mix in FLOAT_TYPES:  # llama-quantize / convert --outtype: every quantizable tensor
        return {
            n: fixed.get(n, mix if _quantizable(n, len(t.shape)) else t.type)
            for n, t in source.tensors.items()
        }
    m = source.metadata
    arch = source.architecture or ""
    try:
        n_layer = int(m[f"{arch}.block_count"])
        n_head = int(m[f"{arch}.attention.head_count"])
        n_kv = int(m.get(f"{arch}.attention.head_count_kv", n_head))
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{source.path}: no {arch}.block_count / attention.head_count: llama.cpp's type "
            "mixes need them"
        ) from None
    types = tensor_types(
        [(n, t.shape, t.type) for n, t in source.tensors.items()],
        mix,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_kv,
        has_imatrix=has_imatrix,
        pure=pure,
    )
    return {**types, **fixed}


def open_source(source: Any) -> GGUFFile | ConvertedSource:
    """A GGUF path -> the loaded file; a loaded file or converted source as given; a Hugging
    Face checkpoint path or a qfast model -> its converted source (``qfast.model.gguf_source``,
    imported on use: the model layer builds it)."""
    if isinstance(source, (GGUFFile, ConvertedSource)):
        return source
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_file() and (p.suffix.lower() == ".gguf" or _starts_gguf(p)):
            return load(p)
    from ...model.gguf_source import open_gguf_source

    return open_gguf_source(source)


def _starts_gguf(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def file_type(mix: str) -> int:
    """``general.file_type`` of ``mix`` (a llama.cpp mix or F32 / F16 / BF16)."""
    return FLOAT_TYPES[mix] if mix in FLOAT_TYPES else FILE_TYPES[mix]


def requantize(
    source: str | os.PathLike[str] | GGUFFile | ConvertedSource | Any,
    path: str | os.PathLike[str],
    mix: str,
    *,
    imatrix: Any = None,
    pure: bool = False,
    overwrite: bool = False,
) -> Path:
    """Writes ``source`` (a GGUF file) quantized with llama.cpp's type mix ``mix`` at ``path``.

    Args:
        source: a GGUF path or a loaded :class:`GGUFFile`; or a Hugging Face Llama checkpoint
            (a folder, a ``.safetensors`` file with ``config.json`` beside it), a qfast model,
            or a :class:`~qfast.formats.gguf.convert.ConvertedSource`: read as
            ``convert_hf_to_gguf.py`` would write it.
        path: the file to write.
        mix: ``"Q4_K_M"``, ... (:data:`~qfast.formats.gguf.mixes.MIXES`), or ``"F32"``,
            ``"F16"``, ``"BF16"``.
        imatrix: importance weights per tensor (llama.cpp names): a mapping name -> weights
            (one per column), or an importance matrix (``qfast.load_importance_matrix``). As
            ``llama-quantize --imatrix``.
        pure: ``--pure`` (every quantized tensor gets the mix's default type).
        overwrite: replace an existing ``path``.

    Raises:
        ValueError: an unknown mix, a type qfast cannot write yet, an importance matrix whose
            length does not match a tensor's rows.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    if mix not in FLOAT_TYPES:
        default_type(mix)
    out = Path(path)
    if out.exists() and not overwrite:
        raise FileExistsError(
            17, "already exists: pick a new file or pass overwrite=True", str(out)
        )
    src = open_source(source)
    weights = _weights_of(imatrix)
    types = plan(src, mix, has_imatrix=imatrix is not None, pure=pure)
    missing = sorted(
        {
            t
            for name, t in types.items()
            if t != src.tensors[name].type and not _can_write(t, weights(name) is not None)
        }
    )
    if missing:
        raise ValueError(
            f"the mix {mix} needs {', '.join(missing)}, which qfast.gguf cannot write yet"
        )
    metadata = dict(src.metadata)
    metadata["general.file_type"] = file_type(mix)
    metadata["general.quantization_version"] = _QUANTIZATION_VERSION
    names = list(src.tensors)
    if not (mix in FLOAT_TYPES and isinstance(src, ConvertedSource)):  # convert's own order
        names = llama_order(names)
    specs = [(n, types[n], src.tensors[n].shape) for n in names]

    def data(name: str) -> np.ndarray:
        t = src.tensors[name]
        want = types[name]
        if want == t.type:
            t.check_mapped()
            raw = np.asarray(t.data)
            if isinstance(t, SourceTensor):  # computed: drop the model's copy of the weight
                t.evict()
            return raw
        x = t.dequantize()
        w = weights(name)
        out = quantize(x, want, imatrix=w) if w is not None else quantize(x, want)
        t.evict()
        return out

    save_streamed(out, metadata, specs, data, value_types=src.value_types, check=False)
    return out


def _can_write(t: str, weighted: bool) -> bool:
    from ... import _qfast
    from .blocks import type_info

    info = type_info(t)
    if info.name in ("F32", "F16", "BF16"):
        return True
    if not weighted and info.can_quantize:
        return True
    return bool(_qfast.gguf_can_quantize_rows(info.name, weighted))

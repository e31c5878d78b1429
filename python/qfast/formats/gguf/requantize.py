"""``llama-quantize`` in qfast: a GGUF file in, a GGUF file of a llama.cpp type mix out.

Each tensor gets the type :func:`~qfast.formats.gguf.mixes.tensor_types` gives it (llama.cpp's
``llama_tensor_get_type``); a quantized tensor is its float32 values (dequantized first when the
source is quantized, as ``--allow-requantize`` does) run through ``qfast.gguf.quantize`` with
the tensor's importance-matrix weights when given: ggml's ``quantize_<type>`` row by row. The
tensor bytes are then the ones ``llama-quantize`` writes; the metadata is the source's with
``general.file_type`` and ``general.quantization_version`` set as it sets them.

The tensors are written in llama.cpp's order (:func:`~qfast.formats.gguf.mixes.llama_order`),
tensor by tensor (one tensor in memory at a time), atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .blocks import quantize
from .file import GGUFFile, load, save_streamed
from .mixes import default_type, llama_order, tensor_types

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
    source: GGUFFile, mix: str, *, has_imatrix: bool = False, pure: bool = False
) -> dict[str, str]:
    """The type each tensor of ``source`` gets under ``mix``."""
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
    return tensor_types(
        [(n, t.shape, t.type) for n, t in source.tensors.items()],
        mix,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_kv,
        has_imatrix=has_imatrix,
        pure=pure,
    )


def requantize(
    source: str | os.PathLike[str] | GGUFFile,
    path: str | os.PathLike[str],
    mix: str,
    *,
    imatrix: Any = None,
    pure: bool = False,
    overwrite: bool = False,
) -> Path:
    """Writes ``source`` (a GGUF file) quantized with llama.cpp's type mix ``mix`` at ``path``.

    Args:
        source: a GGUF path or a loaded :class:`GGUFFile`.
        path: the file to write.
        mix: ``"Q4_K_M"``, ... (:data:`~qfast.formats.gguf.mixes.MIXES`).
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
    default_type(mix)
    src = source if isinstance(source, GGUFFile) else load(source)
    out = Path(path)
    if out.exists() and not overwrite:
        raise FileExistsError(
            17, "already exists: pick a new file or pass overwrite=True", str(out)
        )
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
    metadata["general.file_type"] = FILE_TYPES[mix]
    metadata["general.quantization_version"] = _QUANTIZATION_VERSION
    specs = [(n, types[n], src.tensors[n].shape) for n in llama_order(list(src.tensors))]

    def data(name: str) -> np.ndarray:
        t = src.tensors[name]
        want = types[name]
        if want == t.type:
            t.check_mapped()
            return np.asarray(t.data)
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

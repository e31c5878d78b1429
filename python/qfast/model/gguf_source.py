"""A model as a GGUF source: what ``convert_hf_to_gguf.py`` would write, read tensor by tensor.

:func:`converted_source` turns a loaded Llama (a Hugging Face folder or ``.safetensors`` as
``qfast.load_model`` reads it, or a model built or quantized in memory) into a
:class:`~qfast.formats.gguf.convert.ConvertedSource`: llama.cpp's tensor names, Q / K rows
permuted to llama.cpp's layout (``LlamaModel.permute``), the converter's metadata
(:func:`~qfast.formats.gguf.convert.llama_metadata`: from the folder's ``config.json``,
``tokenizer.json`` and ``tokenizer_config.json``, or from the model's config and tokenizer), and
the types ``--outtype`` gives. Nothing is read until a tensor is asked for; each is computed
from the model's weight and dropped after use.

:func:`open_gguf_source` opens any source the GGUF writers take (a GGUF path or file, a model,
a checkpoint path), and :func:`save_gguf` is ``model.save(path, format="gguf", type=...)``.

A QTensor weight is written exactly when a ggml type holds its grid (group-32 Q8_0 / Q4_0 /
Q4_1 with float16 scales, ``qfast.gguf.from_qtensor``), with that type whatever the mix says;
any other QTensor is refused.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..formats.gguf.convert import (
    FLOAT_TYPES,
    ConvertedSource,
    SourceTensor,
    llama_metadata,
    rope_freqs,
    tensor_type,
)
from ..formats.gguf.file import GGUFFile
from ..tensor.qtensor import QTensor
from .base import Model, WeightStore

__all__ = ["converted_source", "gguf_layout", "open_gguf_source", "save_gguf"]

Source = Union[GGUFFile, ConvertedSource]
_QK = ("self_attn.q_proj", "self_attn.k_proj")


def gguf_layout(model: Model) -> Model:
    """``model`` with its Q / K rows in llama.cpp's layout (``qk_layout="gguf"``): the model
    itself when it already is (read from a GGUF file), else a Llama over the same weights whose
    q / k weights and biases (QTensors' rows included) are permuted as they are read. Both run
    the same logits."""
    if getattr(model, "qk_layout", "hf") == "gguf":
        return model
    from .arch.llama import Llama, permute_qk

    src = model.weights
    c = model.config
    heads = {_QK[0]: c.num_attention_heads, _QK[1]: c.num_key_value_heads}

    def rows(name: str) -> int | None:
        for key, n in heads.items():
            if name.endswith((key + ".weight", key + ".bias")):
                return n
        return None

    def load(name: str) -> Any:
        w = src[name]
        n = rows(name)
        if n is None or isinstance(w, QTensor):  # a QTensor's rows move with its bytes
            return w
        a = np.asarray(w)
        return permute_qk(a.reshape(a.shape[0], -1), n).reshape(a.shape)

    store = WeightStore(
        {n: src.shape(n) for n in src},
        load,
        dtypes={n: src.stored_dtype(n) for n in src},
        evict=lambda name: src.release([name]),
    )
    out = Llama(c, store, model.tokenizer, source=model.source, compute=model.compute,
                qk_layout="gguf")  # fmt: skip
    out.recipe = model.recipe
    out._gguf_rows = rows  # type: ignore[attr-defined]
    return out


def _folder(model: Model) -> Path | None:
    src = model.source
    if src is None:
        return None
    if src.is_dir():
        return src
    return src.parent if src.suffix == ".safetensors" else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix or replace it") from None


def _exact_blocks(name: str, q: QTensor) -> tuple[np.ndarray, str]:
    from ..formats.gguf.blocks import from_qtensor

    try:
        return from_qtensor(q)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{name} is a {q.bits}-bit QTensor (group_size {q.group_size}) that no GGUF type "
            f"stores exactly ({e}). GGUF writes a qfast QTensor only when it is a group-32 "
            "Q8_0 / Q4_0 / Q4_1 grid; write the float model with format='gguf' and "
            "type='Q4_K_M' (or another llama.cpp mix: qfast quantizes it as llama-quantize "
            "does), or GPTQ into GGUF's grids with qfast.model.gguf_gptq.gptq_to_gguf, or save "
            "this model with format='qfast'"
        ) from None


def converted_source(model: Model, *, outtype: str = "F32") -> ConvertedSource:
    """``model`` as ``convert_hf_to_gguf.py --outtype outtype`` would write it (see the
    module's docstring).

    Raises:
        ValueError: not a Llama (``model_type`` llama / mistral), a QTensor no GGUF type holds
            exactly, no tokenizer, or a tokenizer llama.cpp would not recognise.
    """
    if not isinstance(model, Model):
        raise TypeError(f"converted_source takes a qfast Model, not {type(model).__name__}")
    if outtype not in FLOAT_TYPES:
        raise ValueError(f"outtype must be one of {', '.join(FLOAT_TYPES)}, not {outtype!r}")
    from .checkpoint import hf_to_gguf_name
    from .export import hf_config, tokenizer_config

    if model.arch != "llama" or getattr(model.config, "model_type", None) not in (
        "llama",
        "mistral",
    ):
        kind = getattr(model.config, "model_type", model.arch)
        raise ValueError(
            f"GGUF export writes Llama models (model_type llama / mistral), not {kind!r} "
            f"({model.arch}); llama.cpp's convert_hf_to_gguf.py converts other architectures"
        )
    folder = _folder(model)
    gmodel = gguf_layout(model)
    from_gguf = model.source is not None and model.source.suffix.lower() == ".gguf"
    # the tensors, by llama.cpp name, in the converter's order (a checkpoint's names sorted)
    names: dict[str, str] = {}
    unknown = []
    for hf in sorted(gmodel.weights):
        g = hf_to_gguf_name(hf)
        if g is None:
            unknown.append(hf)
        else:
            names[g] = hf
    if unknown:
        raise ValueError(
            f"the model has tensors llama.cpp's Llama has no name for: {', '.join(unknown[:5])}"
        )
    tensors: dict[str, SourceTensor] = {}
    if from_gguf:
        config = hf_config(model)
    elif folder is not None and (folder / "config.json").is_file():
        config = _read_json(folder / "config.json")
    else:
        config = hf_config(model)
    freqs = rope_freqs(config)
    if freqs is not None:
        factors: np.ndarray = freqs
        tensors["rope_freqs.weight"] = SourceTensor(
            "rope_freqs.weight", "F32", factors.shape, lambda: factors
        )
    store = gmodel.weights
    rows_of = getattr(gmodel, "_gguf_rows", lambda name: None)
    for g, hf in names.items():
        shape = tuple(store.shape(hf))

        def release(hf: str = hf) -> None:
            store.release([hf])

        if store.stored_dtype(hf) == "qtensor":
            q = store[hf]
            assert isinstance(q, QTensor)
            _, qtype = _exact_blocks(hf, q)
            if hf not in store.replaced():
                store.release([hf])

            def raw(hf: str = hf) -> np.ndarray:
                q = store[hf]
                assert isinstance(q, QTensor)
                data, _ = _exact_blocks(hf, q)
                n = rows_of(hf)
                if n is not None:
                    from .arch.llama import permute_qk

                    data = permute_qk(data, n)
                return np.ascontiguousarray(data)

            tensors[g] = SourceTensor(g, qtype, shape, raw=raw, release=release)
            continue

        def values(hf: str = hf) -> np.ndarray:
            w = store[hf]
            if isinstance(w, QTensor):
                raise ValueError(
                    f"{hf} became a QTensor after the GGUF source was made; make it again"
                )
            return np.ascontiguousarray(w, dtype=np.float32)

        t = tensor_type(g, len(shape), outtype)
        tensors[g] = SourceTensor(g, t, shape, values, release=release)
    n_params = sum(math.prod(t.shape) for t in tensors.values())
    if from_gguf:
        metadata, value_types = _gguf_metadata(model.source)  # type: ignore[arg-type]
        metadata["general.file_type"] = FLOAT_TYPES[outtype]
    else:
        tok_json = tok_cfg = None
        if folder is not None and (folder / "tokenizer.json").is_file():
            tok_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
            if (folder / "tokenizer_config.json").is_file():
                tok_cfg = _read_json(folder / "tokenizer_config.json")
        elif model.tokenizer is not None:
            tok_json = model.tokenizer.to_json()
            tok_cfg = tokenizer_config(model.tokenizer, config)
        name = folder.name if folder is not None else (
            model.source.stem if model.source is not None else "model"
        )  # fmt: skip
        metadata, value_types = llama_metadata(
            config,
            tokenizer_json=tok_json,
            tokenizer_config=tok_cfg,
            folder=folder,
            name=name,
            file_type=FLOAT_TYPES[outtype],
            n_params=n_params,
        )
        metadata = {"general.architecture": "llama", **metadata}
    path = model.source if model.source is not None else Path("<model>")
    gmodel.compute = model.compute
    return ConvertedSource(path, metadata, value_types, tensors, model=gmodel)


def _gguf_metadata(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from ..formats.gguf.file import load

    f = load(path)
    return dict(f.metadata), dict(f.value_types)


def open_gguf_source(
    source: str | os.PathLike[str] | Source | Model, *, outtype: str = "F32"
) -> Source:
    """What the GGUF writers read: a GGUF path -> the loaded file; a :class:`GGUFFile` or a
    :class:`ConvertedSource` as given; a model -> :func:`converted_source`; another path (a
    Hugging Face folder, a ``.safetensors`` file) -> the model ``qfast.load_model`` reads
    there (float compute), converted."""
    if isinstance(source, (GGUFFile, ConvertedSource)):
        return source
    if isinstance(source, Model):
        return converted_source(source, outtype=outtype)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "a GGUF source is a path (a .gguf file, a Hugging Face folder or .safetensors), a "
            f"qfast.gguf.load result or a qfast Model, not {type(source).__name__}"
        )
    p = Path(source)
    from .checkpoint import is_gguf, load_model

    if p.is_file() and is_gguf(p):
        from ..formats.gguf.file import load

        return load(p)
    return converted_source(load_model(p, compute="float"), outtype=outtype)


def save_gguf(
    model: Model,
    path: str | os.PathLike[str],
    *,
    type: str | None = None,
    imatrix: Any = None,
    overwrite: bool = False,
) -> Path:
    """``model.save(path, format="gguf", type=...)``: the model as one GGUF file (atomic,
    tensor by tensor). ``type``: ``"F32"``, ``"F16"``, ``"BF16"`` (what ``convert_hf_to_gguf.py
    --outtype`` writes) or a llama.cpp mix (``"Q4_K_M"``, ...: ``llama-quantize``'s bytes, with
    ``imatrix`` as ``--imatrix``)."""
    from ..formats.gguf.mixes import MIXES
    from ..formats.gguf.requantize import requantize

    if type is None:
        raise ValueError(
            "format='gguf' needs type=: 'F32', 'F16' or 'BF16' (a plain conversion) or one of "
            f"llama.cpp's mixes ({', '.join(MIXES)})"
        )
    if type not in FLOAT_TYPES and type not in MIXES:
        raise ValueError(
            f"type {type!r}: pick F32, F16, BF16 or one of llama.cpp's mixes ({', '.join(MIXES)})"
        )
    out = Path(path)
    if out.exists() and not overwrite:
        raise FileExistsError(
            17, "already exists: pick a new file or pass overwrite=True", str(out)
        )
    src = converted_source(model, outtype="F32")
    return requantize(src, out, type, imatrix=imatrix, overwrite=overwrite)

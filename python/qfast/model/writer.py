"""Model folders, written as they are produced: qfast's own format, or a GPTQ, AWQ or
compressed-tensors checkpoint that transformers and vLLM load (``format=``; see
:mod:`qfast.model.layouts` for how each stores a quantized linear).

qfast's format is a folder that ``qfast.load_model`` reads back exactly:

- ``model-00001-of-000NN.safetensors`` ...: one shard per block (written as soon as the block
  is quantized), then one with the rest (embeddings, norms, the LM head). Quantized linears
  are :class:`qfast.QTensor` entries (``NAME.weight.qfast_header``, ``.data``, ``.scale``,
  ...; see ``qfast.save``); float tensors keep the dtype they had in the checkpoint (float16 /
  bfloat16 / float32; GGUF blocks and tensors a method changed, such as AWQ's norms, are
  float32);
- ``model.safetensors.index.json``: Hugging Face's shard index (``weight_map``: every entry ->
  its shard);
- ``config.json`` (the architecture's, Q / K in Hugging Face's layout), ``recipe.json``
  (:class:`qfast.Recipe`), and the tokenizer (``tokenizer.json``, ``tokenizer_config.json``;
  for a Hugging Face folder, its other small files too, such as sentence-transformers'
  pooling config).

The other formats have the same files, with each quantized linear stored as the format's
tensors (``NAME.qweight`` ...), every shard's metadata ``{"format": "pt"}`` (transformers
reads no other), and ``quantization_config`` the format's.

The folder is built as a hidden temporary folder beside the target (``.NAME.<random>.tmp``)
and renamed into place only when complete: an interrupted run (an error, Ctrl-C, a kill)
leaves no folder under the final name. A killed run's temporary folder stays behind, hidden;
the next write to the same target removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write_bytes
from ..tensor.qtensor import QTensor
from .base import Model

__all__ = ["ModelWriter", "save_model"]

INDEX = "model.safetensors.index.json"
RECIPE = "recipe.json"
# Files of a source folder that are not copied: weights (rewritten) and the config (rewritten).
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")
_REWRITTEN = {"config.json", INDEX, RECIPE}
# A source folder's subfolders with at most this many bytes are copied (sentence-transformers'
# 1_Pooling/, 2_Normalize/); larger ones (onnx/, openvino/ exports) are not.
_SMALL_FOLDER = 1 << 20


def _config(model: Model) -> dict[str, Any]:
    """The ``config.json`` dict of ``model`` (a Llama's from its config; others' from the
    source folder's config.json)."""
    cfg = model.config
    if hasattr(cfg, "to_hf"):
        from .export import hf_config

        return hf_config(model)
    folder = _source_folder(model)
    if folder is not None and (folder / "config.json").is_file():
        out = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if isinstance(out, dict):
            return out
    raise ValueError(
        f"cannot write a config.json for this {model.arch} model: it has no source folder "
        "with one; load it with qfast.load_model"
    )


def _source_folder(model: Model) -> Path | None:
    src = model.source
    if src is None:
        return None
    return src if src.is_dir() else src.parent if src.suffix == ".safetensors" else None


class ModelWriter:
    """Writes a model folder shard by shard (see the module's docstring).

    Use as a context manager: leaving the ``with`` block by an exception removes the temporary
    folder; :meth:`finish` renames it into place::

        with ModelWriter(path, model, recipe, n_shards=blocks + 1) as w:
            for i in range(blocks):
                w.write_shard({...})
            w.write_shard({...})
            w.finish()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: Model,
        recipe: Any,
        *,
        n_shards: int,
        overwrite: bool = False,
        format: str = "qfast",
        **options: Any,
    ) -> None:
        from .layouts import layout

        self.layout = layout(format, recipe, **options)
        self.target = Path(path)
        self.model = model
        self.recipe = recipe
        self.n_shards = int(n_shards)
        target = self.target
        if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
            raise FileExistsError(
                17, "already exists: pick a new folder or pass overwrite=True", str(target)
            )
        if target.exists() and not target.is_dir():
            raise FileExistsError(17, "exists and is not a folder", str(target))
        self.parent = target.parent
        if not self.parent.is_dir():
            raise FileNotFoundError(2, "no such folder to create the model in", str(self.parent))
        self.config = _config(model)  # before any file: a model it cannot describe fails now
        for stale in self.parent.glob(f".{target.name}.*.tmp"):  # a killed run's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp = self.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
        self.tmp.mkdir()
        self.shards: list[Path] = []
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0
        self.written = 0
        self.done = False

    def __enter__(self) -> ModelWriter:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if not self.done:
            self.abort()

    def abort(self) -> None:
        """Removes the temporary folder (nothing appears under the target)."""
        with contextlib.suppress(OSError):
            shutil.rmtree(self.tmp)
        self.done = True

    def write_shard(self, tensors: Mapping[str, QTensor | np.ndarray]) -> Path:
        """Writes the next shard: name -> QTensor or array (float arrays as they should be
        stored)."""
        from ..formats.safetensors import write_entries

        if self.written >= self.n_shards:
            raise ValueError(f"all {self.n_shards} shards are written")
        entries: dict[str, QTensor | np.ndarray] = {}
        for key, value in tensors.items():
            entries.update(self.layout.entries(key, value))
        change = self.layout.rewrite()
        if change is not None:
            entries = {k: v if isinstance(v, QTensor) else change(k, v) for k, v in entries.items()}
            for shard in self.shards:
                self._rewrite(shard, change)
        self.written += 1
        name = f"model-{self.written:05d}-of-{self.n_shards:05d}.safetensors"
        path = self.tmp / name
        keys = write_entries(path, entries, self._metadata(), atomic=False)
        for key in keys:
            self.weight_map[key] = name
        self.total_bytes += path.stat().st_size
        self.shards.append(path)
        return path

    def _metadata(self) -> dict[str, str]:
        return {"format": "qfast" if self.layout.name == "qfast" else "pt"}

    def _rewrite(self, path: Path, change: Any) -> None:
        """Rewrites a shard written before with ``change(key, array)`` applied to its
        entries (GPTQ's switch from v1 to v2 zero points)."""
        from ..formats.safetensors import SafetensorsFile, write_entries

        st = SafetensorsFile(path)
        entries = {k: change(k, np.array(st.raw(k))) for k in st.entries}
        del st
        before = path.stat().st_size
        write_entries(path, entries, self._metadata(), atomic=True)
        self.total_bytes += path.stat().st_size - before

    def finish(self) -> Path:
        """Writes the index, config, recipe and tokenizer, and renames the folder into place."""
        if self.written != self.n_shards:
            raise ValueError(f"{self.written} of {self.n_shards} shards written")
        tmp = self.tmp
        try:
            config = dict(self.config)
            quantized = set(self.layout.quantized)
            float_linears = [m for m in self.model.linear_names() if m not in quantized]
            self._warn_fused()
            config["quantization_config"] = self.layout.quantization_config(float_linears)
            _json(tmp / "config.json", config)
            if self.recipe is not None:
                atomic_write_bytes(tmp / RECIPE, self.recipe.to_json().encode())
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": self.weight_map}
            _json(tmp / INDEX, index)
            self._tokenizer(config)
            from .export import publish_folder

            publish_folder(tmp, self.target)
        except BaseException:
            self.abort()
            raise
        self.done = True
        return self.target

    def _warn_fused(self) -> None:
        """Warns when linears vLLM fuses into one layer (q/k/v, gate/up: a block's linear
        groups) are stored partly in float, or with different settings: vLLM refuses such a
        checkpoint ("some but not all shards"), though transformers loads it."""
        model, quantized = self.model, self.layout.quantized
        if self.layout.name == "qfast" or type(model).block_groups is Model.block_groups:
            return
        mixed = []
        for i in range(model.num_blocks):
            for group in model.block_groups(i):
                args = [quantized.get(m) for m in group.names]
                if any(a != args[0] for a in args):
                    mixed.append(", ".join(group.names))
        if mixed:
            more = ", ..." if len(mixed) > 1 else ""
            warnings.warn(
                f"{len(mixed)} groups of linears that vLLM runs as one fused layer are stored "
                f"partly in float or with different settings ({mixed[0]}{more}): "
                "vLLM refuses such a checkpoint (transformers loads it); give each group "
                "one setting in the recipe's overrides",
                UserWarning,
                stacklevel=4,
            )

    def _tokenizer(self, config: dict[str, Any]) -> None:
        tmp, model = self.tmp, self.model
        folder = _source_folder(model)
        copied = False
        if folder is not None:
            for f in folder.iterdir():
                if f.name in _REWRITTEN or f.name.startswith("."):
                    continue
                if f.is_file() and not f.name.endswith(_NOT_COPIED_SUFFIXES):
                    shutil.copyfile(f, tmp / f.name)
                    copied = copied or f.name == "tokenizer.json"
                elif f.is_dir() and _folder_size(f) <= _SMALL_FOLDER:
                    shutil.copytree(f, tmp / f.name)
        tok = model.tokenizer
        if not copied and tok is not None and hasattr(tok, "save"):
            from .export import tokenizer_config

            tok.save(str(tmp / "tokenizer.json"))
            if hasattr(tok, "bos_id"):
                _json(tmp / "tokenizer_config.json", tokenizer_config(tok, config))
        ids = ("bos_token_id", "eos_token_id", "pad_token_id")
        gen = {k: config[k] for k in ids if k in config}
        if (gen or model.kind == "causal") and not (tmp / "generation_config.json").exists():
            _json(tmp / "generation_config.json", {**gen, "_from_model_config": True})


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())


def stored_float(model: Model, name: str, value: np.ndarray) -> np.ndarray:
    """A float tensor in the dtype to store it in: the checkpoint's float16 / bfloat16 when
    it is unchanged, float32 otherwise."""
    from .export import cast

    dtype = model.weights.stored_dtype(name)
    return cast(value, dtype if dtype in ("float16", "bfloat16") else "float32")


def save_model(
    model: Model,
    path: str | os.PathLike[str],
    *,
    format: str = "qfast",
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Writes ``model`` (float or with QTensor linears) as a folder in ``format`` (see the
    module's docstring): one shard per block and one for the rest, atomically.
    ``model.recipe`` is saved as ``recipe.json`` when set.

    Raises:
        FileExistsError: ``path`` exists (and ``overwrite`` is False).
        ValueError: the model cannot be described by a config.json; a quantized linear the
            format cannot hold (named, with what to do; nothing is left at ``path``).
    """
    from .quantize import hf_layout

    model = hf_layout(model)
    weights = model.weights
    if format != "qfast" and not any(
        weights.stored_dtype(m + ".weight") == "qtensor" for m in model.linear_names()
    ):
        raise ValueError(
            f"format {format!r} stores quantized linears, and this model has none: quantize "
            "it first (qfast.quantize_model), or save a float model with format='qfast'"
        )
    blocks = model.num_blocks
    with ModelWriter(
        path,
        model,
        model.recipe,
        n_shards=blocks + 1,
        overwrite=overwrite,
        format=format,
        **options,
    ) as w:
        done: set[str] = set()
        for i in range(blocks):
            prefix = model.block_prefix(i)
            names = [n for n in model.weights if n.startswith(prefix)]
            w.write_shard({n: _stored(model, n) for n in names})
            done.update(names)
        w.write_shard({n: _stored(model, n) for n in model.weights if n not in done})
        return w.finish()


def _stored(model: Model, name: str) -> QTensor | np.ndarray:
    value = model.weights[name]
    return value if isinstance(value, QTensor) else stored_float(model, name, value)

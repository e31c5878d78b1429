"""``save_hf(model, path)``: a loaded float model as a Hugging Face folder.

The folder holds ``model.safetensors`` (Hugging Face tensor names; Q / K rows back in Hugging
Face's layout when the model came from a GGUF file), ``config.json``, ``generation_config.json``
and, when the model has a tokenizer, ``tokenizer.json`` and ``tokenizer_config.json`` (for a
GGUF model, the tokenizer built from its vocabulary). ``transformers`` and ``qfast.load_model``
load it.

Only float weights are written: a model whose linears were replaced by QTensors is saved with
``qfast.save`` (qfast's own format) or the quantized export formats instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write_bytes
from ..tensor.qtensor import QTensor
from .base import Model

__all__ = ["save_hf"]

_DTYPES = ("float32", "float16", "bfloat16", "source")
_HF_CLASS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


def hf_config(model: Model) -> dict[str, Any]:
    cfg = model.config
    if hasattr(cfg, "to_hf"):
        out = dict(cfg.to_hf())
    elif isinstance(cfg, dict):
        out = dict(cfg)
    else:
        raise TypeError(
            f"save_hf needs a model whose config has to_hf() (a Llama), not {type(cfg).__name__}"
        )
    model_type = out.get("model_type") or model.arch
    if model_type not in _HF_CLASS:
        raise ValueError(
            f"save_hf writes causal LMs of {', '.join(sorted(_HF_CLASS))}, not {model_type!r}"
        )
    out["model_type"] = model_type
    out.setdefault("architectures", [_HF_CLASS[model_type]])
    out.setdefault("hidden_act", "silu")
    tok = model.tokenizer
    for key, attr in (("bos_token_id", "bos_id"), ("eos_token_id", "eos_id")):
        value = getattr(tok, attr, None) if tok is not None else None
        if out.get(key) is None and value is not None:
            out[key] = int(value)
    return out


def _tensors(model: Model, config: dict[str, Any], dtype: str) -> tuple[dict[str, np.ndarray], str]:
    """The tensors to write, in the file's dtype, and that dtype's name for config.json."""
    qk_layout = getattr(model, "qk_layout", "hf")
    unpermute = None
    if qk_layout == "gguf":
        from .arch.llama import unpermute_qk

        unpermute = unpermute_qk
    elif qk_layout != "hf":
        raise ValueError(f"the model's qk_layout {qk_layout!r} is neither 'hf' nor 'gguf'")
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    quantized = [n for n in model.weights if isinstance(model.weights[n], QTensor)]
    if quantized:
        raise ValueError(
            f"save_hf writes float checkpoints, and {len(quantized)} weights are QTensors "
            f"({', '.join(quantized[:3])}); save a quantized model with qfast.save or a "
            "quantized export format"
        )
    out: dict[str, np.ndarray] = {}
    written = set()
    for name in model.weights:
        w = np.asarray(model.weights[name], dtype=np.float32)
        if unpermute is not None and name.endswith(
            ("self_attn.q_proj.weight", "self_attn.q_proj.bias")
        ):
            w = _unpermute(unpermute, w, heads)
        elif unpermute is not None and name.endswith(
            ("self_attn.k_proj.weight", "self_attn.k_proj.bias")
        ):
            w = _unpermute(unpermute, w, kv_heads)
        target = dtype
        if dtype == "source":
            stored = model.weights.stored_dtype(name)
            target = stored if stored in ("float16", "bfloat16") else "float32"
        written.add(target)
        out[name] = cast(w, target)
    if dtype == "source":
        dtype = written.pop() if len(written) == 1 else "float32"
    return out, dtype


def _unpermute(unpermute: Any, w: np.ndarray, n_head: int) -> np.ndarray:
    if w.ndim == 1:  # a bias: its rows move as the weight's rows do
        return np.asarray(unpermute(w.reshape(-1, 1), n_head), dtype=np.float32).reshape(-1)
    return np.asarray(unpermute(w, n_head), dtype=np.float32)


def cast(w: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return np.ascontiguousarray(w, dtype=np.float32)
    if dtype == "float16":
        return np.ascontiguousarray(w.astype(np.float16))
    import ml_dtypes

    return np.ascontiguousarray(w.astype(ml_dtypes.bfloat16))


def tokenizer_config(tok: Any, config: dict[str, Any]) -> dict[str, Any]:
    def name(i: Any) -> str | None:
        return None if i is None else tok.token(i)

    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(tok.add_bos),
        "add_eos_token": False,
        "bos_token": name(tok.bos_id),
        "eos_token": name(tok.eos_id),
        "unk_token": name(getattr(tok, "unk_id", None)),
        "pad_token": name(getattr(tok, "pad_id", None)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(config.get("max_position_embeddings") or 2048),
    }
    if getattr(tok, "chat_template", None):
        out["chat_template"] = tok.chat_template
    return out


def save_hf(
    model: Model, path: str | os.PathLike[str], *, dtype: str = "float32", overwrite: bool = False
) -> Path:
    """Writes ``model`` to the folder ``path`` as a Hugging Face checkpoint; returns the path.

    Args:
        model: a float causal LM (``qfast.load_model`` of a GGUF file or a folder).
        path: the folder to create. It is written as a temporary folder beside it and renamed
            into place at the end, so an error (or Ctrl-C) leaves no half-written checkpoint.
        dtype: ``"float32"`` (the default), ``"float16"``, ``"bfloat16"``, or ``"source"``:
            each tensor in the float dtype it was stored in (GGUF blocks: float32).
        overwrite: replace an existing ``path``; without it an existing non-empty folder is a
            FileExistsError.

    Raises:
        ValueError: the model's weights are QTensors, or it is not a causal LM qfast exports.
        FileExistsError: ``path`` exists (and ``overwrite`` is False).
        OSError: the folder cannot be written.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    if not isinstance(model, Model):
        raise TypeError(f"save_hf takes a qfast Model, not {type(model).__name__}")
    target = Path(path)
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(
            17, "already exists: pick a new folder or pass overwrite=True", str(target)
        )
    parent = target.parent
    if not parent.is_dir():
        raise FileNotFoundError(2, "no such folder to create the checkpoint in", str(parent))
    config = hf_config(model)
    tensors, file_dtype = _tensors(model, config, dtype)
    config["torch_dtype"] = file_dtype
    tmp = parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    tmp.mkdir()
    try:
        from ..formats.safetensors import safetensors_numpy

        st = safetensors_numpy()
        st.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _json(tmp / "config.json", config)
        gen = {
            k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config
        }
        _json(tmp / "generation_config.json", {**gen, "_from_model_config": True})
        if model.tokenizer is not None:
            model.tokenizer.save(tmp / "tokenizer.json")
            _json(tmp / "tokenizer_config.json", tokenizer_config(model.tokenizer, config))
        # safetensors creates its file private (0600); every file gets the mode atomic_write
        # gave config.json (what the umask implies for a new file)
        publish_folder(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return target


def publish_folder(tmp: Path, target: Path) -> None:
    """Puts a folder built at ``tmp`` (beside ``target``) in place: every file gets the mode
    ``config.json`` got (what the umask implies; the safetensors package creates its files
    0600) and is synced, then ``tmp`` is renamed to ``target`` (an existing folder is moved
    aside first and removed after), and the rename is made durable."""
    mode = stat.S_IMODE(os.stat(tmp / "config.json").st_mode)
    for f in tmp.rglob("*"):
        if f.is_file():
            with contextlib.suppress(OSError, NotImplementedError):
                os.chmod(f, mode)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(17, "exists and is not a folder", str(target))
        old = target.parent / f".{target.name}.{secrets.token_hex(8)}.old"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    sync_folder(target.parent)


def sync_folder(folder: Path) -> None:
    """Makes the rename durable (a no-op where folders cannot be synced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())

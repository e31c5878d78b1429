"""``load_model(path)``: a checkpoint on disk -> a :class:`~qfast.model.base.Model`.

What loads:

- a Hugging Face folder: ``config.json`` and ``model.safetensors``, or shards listed by
  ``model.safetensors.index.json`` (its ``weight_map``); float32, float16 or bfloat16;
- one ``.safetensors`` file with a ``config.json`` beside it;
- qfast's own quantized format: such a folder or file written by ``qfast.save`` (QTensors stored
  as their ``NAME.qfast_header`` / ``NAME.data`` / ... entries); those weights come back as
  QTensors and run through ``qfast.linear``;
- a ``.gguf`` file (llama.cpp): llama.cpp's tensor names mapped onto Hugging Face's, the
  config built from the metadata, block types dequantized to float32 when read, and the Q / K
  rows left in llama.cpp's permuted layout (the model runs llama.cpp's RoPE on them).

Tensors are memory-mapped and read when first used (a float32 tensor is a read-only view of
the map; float16 / bfloat16 / GGUF blocks are converted to float32 then). Every tensor the
architecture needs is checked (present, right shape) before anything is read; tensors the
architecture does not use are ignored (a ``UserWarning`` lists them, except buffers such as
``rotary_emb.inv_freq`` that checkpoints often carry).

The tokenizer comes from ``tokenizer.json`` beside the weights, or is built from the GGUF
vocabulary; a folder without one loads with ``model.tokenizer = None`` (anything that needs
text then says so).
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..formats.safetensors import SafetensorsFile, qtensor_prefixes
from .base import Model, Weight, WeightStore
from .layouts import reader

__all__ = ["SUPPORTED_ARCHITECTURES", "architecture", "load_model"]

#: ``model_type`` (config.json) -> the architecture module that runs it.
SUPPORTED_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "bert": "bert"}
_COMPUTE = ("int8", "float")


def architecture(model_type: Any) -> Any:
    """The :class:`Model` subclass for a config's ``model_type`` (imported on first use).

    Raises ValueError for a type qfast does not run, listing the ones it does."""
    kind = SUPPORTED_ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None
    if kind == "llama":
        from .arch.llama import Llama

        return Llama
    if kind == "bert":
        from .arch.bert import Bert

        return Bert
    raise ValueError(
        f"unknown architecture: model_type {model_type!r}; qfast runs "
        f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
    )


# -- the checkpoint's tensors, whatever the container ---------------------------------------

# Buffers, and BERT's pooler (used by classification heads, not by the encoder's output).
_IGNORED_EXTRAS = re.compile(
    r"(^|\.)(rotary_emb\.inv_freq|position_ids|masked_bias|attn\.bias|pooler\.dense\.(weight|bias))$"
)


class _Tensors:
    """Name -> (shape, stored dtype, loader) over one or more files."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.loaders: dict[str, Callable[[], Weight]] = {}
        self.evictors: dict[str, Callable[[], None]] = {}
        self.raws: dict[str, Callable[[], Any]] = {}  # an entry as stored (no conversion)

    def add(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        load: Callable[[], Weight],
        evict: Callable[[], None] | None = None,
    ) -> None:
        if name in self.shapes:
            raise ValueError(f"{self.where}: tensor {name!r} appears twice (in two shards?)")
        self.shapes[name] = tuple(int(d) for d in shape)
        self.dtypes[name] = dtype
        self.loaders[name] = load
        if evict is not None:
            self.evictors[name] = evict

    def evict(self, name: str) -> None:
        evict = self.evictors.get(name)
        if evict is not None:
            evict()


def _add_safetensors(out: _Tensors, st: SafetensorsFile) -> None:
    from ..tensor.qtensor import QTensor

    prefixes = qtensor_prefixes(st.entries)
    owned: set[str] = set()
    for prefix in prefixes:
        members = [k for k in st.entries if k.startswith(prefix)]
        owned.update(members)
        name = prefix[:-1] if prefix.endswith(".") else prefix
        header_key = prefix + "qfast_header"
        try:
            header = json.loads(bytes(st.raw(header_key)).decode("utf-8"))
            shape = tuple(int(d) for d in header["shape"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            shape = None  # an older or corrupt header: build the QTensor now to learn its shape

        def load(prefix: str = prefix, members: list[str] = members, name: str = name) -> Weight:
            try:
                return QTensor.from_dict({k: st.raw(k) for k in members}, prefix=prefix)
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(
                    f"{st.path}: tensor {name!r} is not a valid QTensor ({e}); write the file "
                    "again with qfast.save"
                ) from None

        if shape is None:
            shape = tuple(load().shape)

        def evict(members: list[str] = members) -> None:
            for k in members:
                st.evict(k)

        out.add(name, shape, "qtensor", load, evict)
    for key in st.entries:
        if key in owned:
            continue
        out.add(
            key,
            st.shape(key),
            st.dtype_name(key),
            functools.partial(st.float32, key),
            functools.partial(st.evict, key),
        )
        out.raws[key] = functools.partial(st.raw, key)


def _group_quantized(out: _Tensors, rd: Any) -> None:
    """Replaces each quantized linear's entries (GPTQ's ``NAME.qweight``, ``.qzeros``, ...;
    in any shards) by one ``NAME.weight`` that decodes them into a QTensor when read."""
    marker = "." + rd.marker
    for key in [k for k in out.shapes if k.endswith(marker)]:
        module = key[: -len(marker)]
        members = {s: f"{module}.{s}" for s in rd.suffixes if f"{module}.{s}" in out.shapes}
        name = f"{module}.weight"
        if name in out.shapes:
            raise ValueError(
                f"{out.where}: {module} has both a float weight and {rd.method} tensors; the "
                "checkpoint is inconsistent"
            )
        raws = {s: out.raws[k] for s, k in members.items()}
        shapes = {k: out.shapes[k] for k in members.values()}
        evictors = [out.evictors[k] for k in members.values() if k in out.evictors]
        try:
            shape = rd.shape(module, shapes, lambda k: out.raws[k]())
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{out.where}: {module}'s {rd.method} tensors: {e}") from None

        def load(module: str = module, raws: dict[str, Any] = raws) -> Weight:
            return rd.decode(module, {s: r() for s, r in raws.items()})

        def evict(evictors: list[Callable[[], None]] = evictors) -> None:
            for e in evictors:
                e()

        for k in members.values():
            del out.shapes[k], out.dtypes[k], out.loaders[k], out.raws[k]
            out.evictors.pop(k, None)
        out.add(name, shape, "qtensor", load, evict)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {what} is not valid JSON ({e}); fix or replace it") from None


def _hf_tensors(folder: Path, single: Path | None) -> _Tensors:
    """The tensors of a Hugging Face folder (or of ``single``, one .safetensors file)."""
    out = _Tensors(str(single or folder))
    if single is not None:
        _add_safetensors(out, SafetensorsFile(single))
        return out
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index, "the shard index")
        wmap = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise ValueError(
                f"{index}: no weight_map of tensor name -> shard file; the index is corrupt"
            )
        shards: dict[str, SafetensorsFile] = {}
        for shard in dict.fromkeys(wmap.values()):
            p = folder / shard
            if Path(shard).name != shard:
                raise ValueError(f"{index}: shard {shard!r} is not a file name in the folder")
            if not p.is_file():
                raise FileNotFoundError(
                    2,
                    f"the shard index names {shard!r}, which is not in the folder; download "
                    "every shard the index lists",
                    str(p),
                )
            shards[shard] = SafetensorsFile(p)
        for st in shards.values():
            _add_safetensors(out, st)
        stored = {k for st in shards.values() for k in st.entries}
        unlisted = [n for n in wmap if n not in stored]
        if unlisted:
            raise ValueError(
                f"{index}: the index lists {len(unlisted)} tensors its shards lack "
                f"({', '.join(unlisted[:5])}); the shards do not match the index"
            )
        return out
    st_path = folder / "model.safetensors"
    if st_path.is_file():
        _add_safetensors(out, SafetensorsFile(st_path))
        return out
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(found) == 1:
        _add_safetensors(out, SafetensorsFile(folder / found[0]))
        return out
    hint = f" (it has {', '.join(found)}: pass one of them)" if found else ""
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        hint += "; PyTorch .bin / .pt checkpoints are not read: convert them to safetensors"
    raise FileNotFoundError(
        2, f"no model.safetensors or model.safetensors.index.json in the folder{hint}", str(folder)
    )


# -- GGUF ------------------------------------------------------------------------------------

_GGUF_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")
#: ``general.architecture`` of the GGUF files qfast loads -> (model_type, HF class name).
GGUF_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
}


def gguf_tensor_name(name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name (None if qfast does not know it)."""
    if name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[name]
    m = _GGUF_BLOCK_NAME.match(name)
    if m and m.group(2) in _GGUF_BLOCK:
        return f"model.layers.{int(m.group(1))}.{_GGUF_BLOCK[m.group(2)]}"
    return None


_HF_GLOBAL = {hf: g for g, hf in _GGUF_GLOBAL.items()}
_HF_BLOCK = {hf: g for g, hf in _GGUF_BLOCK.items()}
_HF_BLOCK_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def hf_to_gguf_name(name: str) -> str | None:
    """The llama.cpp name of a Hugging Face Llama tensor name (the inverse of
    :func:`gguf_tensor_name`; None if qfast does not know it)."""
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    m = _HF_BLOCK_NAME.match(name)
    if m and m.group(2) in _HF_BLOCK:
        return f"blk.{int(m.group(1))}.{_HF_BLOCK[m.group(2)]}"
    return None


def gguf_config(metadata: Mapping[str, Any], tensor_names: Any = ()) -> dict[str, Any]:
    """A Hugging Face ``config.json`` dict from a GGUF file's metadata (``llama.*`` /
    ``qwen2.*`` keys); ``tensor_names`` (llama.cpp's) tells whether the output layer is tied
    to the embedding (no ``output.weight``).

    Raises ValueError for another architecture, a missing key, or RoPE scaling (qfast runs
    plain RoPE only)."""
    arch = metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"unknown architecture: the GGUF file's general.architecture is {arch!r}; qfast "
            f"loads GGUF files of {', '.join(sorted(GGUF_ARCHITECTURES))}"
        )
    model_type, hf_class = GGUF_ARCHITECTURES[arch]

    def get(key: str, default: Any = None, kind: type = int) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(
                f"the GGUF file lacks the metadata {arch}.{key}, which the model needs; the "
                "file is incomplete (convert it again with llama.cpp's convert_hf_to_gguf.py)"
            )
        return kind(value)

    hidden = get("embedding_length")
    heads = get("attention.head_count")
    names = set(tensor_names)
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size", len(tokens) if tokens is not None else None)
    head_dim = get("attention.key_length", hidden // heads if heads else 0)
    rope_dim = get("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise ValueError(
            f"the GGUF file rotates {rope_dim} of each head's {head_dim} dimensions (partial "
            "RoPE); qfast's Llama forward pass rotates them all"
        )
    scaling = metadata.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(
            f"the GGUF file uses RoPE scaling {scaling!r}; qfast's Llama forward pass runs "
            "plain RoPE only"
        )
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [hf_class],
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", kind=float),
        "rope_theta": get("rope.freq_base", 10000.0, kind=float),
        "max_position_embeddings": get("context_length"),
        "vocab_size": vocab,
        "hidden_act": "silu",
        "tie_word_embeddings": bool(names) and "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "torch_dtype": "float32",
    }
    if model_type == "llama":
        config["mlp_bias"] = False
    for key, hf in (
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ):
        if metadata.get(key) is not None:
            config[hf] = int(metadata[key])
    return config


def _gguf_model(path: Path, compute: str) -> Model:
    from ..formats import gguf

    f = gguf.load(path)
    config = gguf_config(f.metadata, f.tensors)
    out = _Tensors(str(path))
    unknown: list[str] = []
    for gname, t in f.tensors.items():
        hf = gguf_tensor_name(gname)
        if hf is None:
            unknown.append(gname)
            continue
        out.add(hf, t.shape, t.type, t.dequantize, t.evict)
    if unknown:
        raise ValueError(
            f"{path}: tensors qfast does not know how to run: {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}; this GGUF file holds parts of the "
            f"architecture that qfast's {config['model_type']} forward pass lacks"
        )
    tokenizer = None
    if f.metadata.get("tokenizer.ggml.model") is not None:
        from .tokenizer import Tokenizer

        try:
            tokenizer = Tokenizer.from_gguf(f.metadata)
        except ValueError as e:
            warnings.warn(f"{path}: loaded without a tokenizer: {e}", UserWarning, stacklevel=3)
    # llama.cpp's converter permutes the Q / K rows of the llama architecture for its RoPE;
    # qwen2 runs NeoX RoPE on the rows as Hugging Face stores them.
    qk_layout = "gguf" if config["model_type"] == "llama" else "hf"
    return _build(config, out, tokenizer, path, compute, qk_layout=qk_layout)


# -- assembling the model ----------------------------------------------------------------------


def _build(
    config: dict[str, Any],
    tensors: _Tensors,
    tokenizer: Any,
    source: Path,
    compute: str,
    *,
    qk_layout: str = "hf",
) -> Model:
    cls = architecture(config.get("model_type"))
    expected: dict[str, tuple[int, ...]] = {
        k: tuple(int(d) for d in v) for k, v in cls.tensor_shapes(config).items()
    }
    missing = [n for n in expected if n not in tensors.shapes]
    if missing:
        raise ValueError(
            f"{tensors.where}: {len(missing)} of the {len(expected)} tensors a "
            f"{config.get('model_type')} model with this config needs are missing: "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}. The checkpoint is "
            "incomplete, or config.json describes another model"
        )
    wrong = [
        f"{n} is {tensors.shapes[n]}, the config implies {s}"
        for n, s in expected.items()
        if tensors.shapes[n] != s
    ]
    if wrong:
        raise ValueError(
            f"{tensors.where}: {len(wrong)} tensors have the wrong shape for config.json: "
            f"{'; '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}. The config and the "
            "weights do not belong together"
        )
    extra = [
        n
        for n in tensors.shapes
        if n not in expected
        and not _IGNORED_EXTRAS.search(n)
        and not (n == "lm_head.weight" and config.get("tie_word_embeddings"))
    ]
    if extra:
        warnings.warn(
            f"{tensors.where}: {len(extra)} tensors that the {config.get('model_type')} "
            f"architecture does not use are ignored: {', '.join(extra[:6])}"
            f"{' ...' if len(extra) > 6 else ''}",
            UserWarning,
            stacklevel=3,
        )
    loaders = tensors.loaders
    store = WeightStore(
        expected,
        lambda name: loaders[name](),
        dtypes={n: tensors.dtypes[n] for n in expected},
        evict=tensors.evict,
    )
    kwargs: dict[str, Any] = {"source": source}
    if qk_layout != "hf":
        kwargs["qk_layout"] = qk_layout
    model = cls.from_config(config, store, tokenizer, **kwargs)
    model.compute = compute
    return model


def _hf_tokenizer(folder: Path) -> Any:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    from .tokenizer import Tokenizer

    return Tokenizer.from_file(path)


def is_gguf(path: Path) -> bool:
    """A ``.gguf`` name, or a file that starts with GGUF's magic."""
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def load_model(path: str | os.PathLike[str], *, compute: str | None = None) -> Model:
    """Loads the checkpoint at ``path`` (see the module's docstring for what loads).

    Args:
        path: a Hugging Face folder, a ``.safetensors`` file with ``config.json`` beside it,
            or a ``.gguf`` file.
        compute: how linears with QTensor weights run, ``"int8"`` (``qfast.linear``'s int8
            kernels) or ``"float"``; default: what the recipe of a model quantized by
            ``qfast.quantize_model`` says (``recipe.json``: ``"int8"`` for w8a8, ``"float"``
            for the weight-only methods), else ``"int8"``.

    Raises:
        FileNotFoundError: no such path, no ``config.json``, no weights, or a shard the index
            names is absent.
        ValueError: a corrupt or truncated file, an unknown architecture (the message lists
            those qfast runs), tensors missing or of the wrong shape for the config.
        TypeError: ``path`` is not a path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_model takes a path (str or os.PathLike), not {type(path).__name__}")
    if compute is not None and compute not in _COMPUTE:
        raise ValueError(f"compute must be 'int8' or 'float', not {compute!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "no such checkpoint (a folder, .safetensors or .gguf)", str(p))
    if p.is_file() and is_gguf(p):
        return _gguf_model(p, compute or "int8")
    folder, single = (p, None) if p.is_dir() else (p.parent, p)
    if single is not None and single.suffix != ".safetensors":
        raise ValueError(
            f"{p}: not a checkpoint qfast reads; pass a Hugging Face folder, a .safetensors "
            "file with config.json beside it, or a .gguf file"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        ggufs = sorted(x.name for x in folder.glob("*.gguf")) if single is None else []
        hint = f" (for the GGUF file, pass {folder / ggufs[0]})" if ggufs else ""
        raise FileNotFoundError(
            2,
            "no config.json beside the weights: qfast needs the model's config.json (from "
            f"the same checkpoint) to know its architecture{hint}",
            str(config_path),
        )
    config = _read_json(config_path, "config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: config.json is not a JSON object")
    architecture(config.get("model_type"))  # an unknown one fails before any file is opened
    recipe = _recipe(folder)
    tensors = _hf_tensors(folder, single)
    rd = reader(config)
    if rd is not None:
        _group_quantized(tensors, rd)
        if compute is None and recipe is None:
            compute = "float"  # GPTQ / AWQ / compressed-tensors weight-only checkpoints
    if compute is None:
        compute = "int8" if recipe is None else recipe.compute
    tokenizer = _hf_tokenizer(folder)
    model = _build(config, tensors, tokenizer, p, compute)
    model.recipe = recipe
    return model


def _recipe(folder: Path) -> Any:
    """The ``recipe.json`` of a folder written by ``qfast.quantize_model``, else None."""
    path = folder / "recipe.json"
    if not path.is_file():
        return None
    from .recipe import Recipe

    try:
        return Recipe.from_dict(_read_json(path, "recipe.json"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid qfast recipe ({e})") from None

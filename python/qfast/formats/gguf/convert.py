"""A Hugging Face Llama checkpoint as a GGUF source: what ``convert_hf_to_gguf.py`` writes.

The metadata follows llama.cpp 0.3.36's converter (``conversion/base.py``, ``llama.py`` and
gguf-py's ``SpecialVocab``) for a Llama (``LlamaForCausalLM`` / ``MistralForCausalLM``) with a
byte-level BPE ``tokenizer.json`` (``tokenizer.ggml.model = "gpt2"``): the same keys, in the
same order, with the same value types.

- :func:`llama_metadata`: ``general.*`` (the model card heuristics of gguf-py's ``Metadata``),
  ``llama.*`` from ``config.json``, ``general.file_type`` / ``general.quantization_version``,
  and :func:`vocab_metadata`.
- :func:`vocab_metadata`: the tokens (every id below ``vocab_size``; ids the tokenizer lacks
  become ``[PAD<i>]`` of type UNUSED), their types (NORMAL; added tokens CONTROL when special or
  when they look special, else USER_DEFINED), ``tokenizer.ggml.pre`` (the sha256 of the
  tokenizer's ids for the converter's check text, looked up in its table:
  :mod:`._pretokenizers`; a tokenizer it does not list is refused, as the converter refuses
  it), the merges, the special token ids, ``add_bos_token`` / ``add_eos_token`` and the chat
  template.
- :func:`tensor_type`: the GGUF type ``--outtype f32 / f16 / bf16`` gives a tensor (1-D tensors,
  norms and biases stay F32).
- :class:`ConvertedSource` / :class:`SourceTensor`: a GGUF file's interface
  (:class:`~qfast.formats.gguf.file.GGUFFile`: ``metadata``, ``value_types``, ``tensors`` with
  ``name``, ``type``, ``shape``, ``data``, ``dequantize()``) over tensors computed one at a
  time, so ``qfast.gguf.requantize`` and ``qfast.model.gguf_gptq`` read a checkpoint as they
  read a GGUF file. ``qfast.model.gguf_source`` builds one from a model.

SentencePiece (``tokenizer.model``) and Llama-2-style BPE with byte fallback vocabularies are
refused (the converter writes ``tokenizer.ggml.model = "llama"`` for those; convert them with
``convert_hf_to_gguf.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .blocks import dequantize, quantize

__all__ = [
    "FLOAT_TYPES",
    "ConvertedSource",
    "SourceTensor",
    "llama_metadata",
    "pre_tokenizer",
    "tensor_type",
    "vocab_metadata",
]

#: ``--outtype`` -> ``general.file_type`` (``LlamaFileType``: ALL_F32, MOSTLY_F16, MOSTLY_BF16).
FLOAT_TYPES = {"F32": 0, "F16": 1, "BF16": 32}
#: config.json ``architectures[0]`` -> what the converter writes them as (LlamaModel: "llama").
LLAMA_CLASSES = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM", "LlamaModel")
_QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
# gguf.TokenType
_NORMAL, _UNUSED, _CONTROL, _USER_DEFINED = 1, 5, 3, 4
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_TOKEN_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: gguf-py's spelling
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
}


def _gguf_types() -> Any:
    from .file import _gguf

    return _gguf().GGUFValueType


class _Meta:
    """Metadata in the order GGUFWriter keeps it: a key set again keeps its place."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.types: dict[str, Any] = {}

    def add(self, key: str, value: Any, vtype: str, element: str | None = None) -> None:
        T = _gguf_types()
        self.values[key] = value
        self.types[key] = (T.ARRAY, T[element]) if element else T[vtype]


# -- the tokenizer ----------------------------------------------------------------------------


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(
            "writing a GGUF vocabulary needs the 'tokenizers' package: "
            "pip install 'qfast-quant[models]'"
        ) from e
    return tokenizers


def pre_tokenizer(tokenizer_json: str) -> str:
    """``tokenizer.ggml.pre`` of a ``tokenizer.json`` (its text), as the converter's
    ``get_vocab_base_pre`` finds it; ValueError for a tokenizer llama.cpp does not know."""
    from ._pretokenizers import CHKTXT, PRE_HASHES

    tk = _tokenizers().Tokenizer.from_str(tokenizer_json)
    ids = tk.encode(CHKTXT, add_special_tokens=True).ids
    digest = hashlib.sha256(str(list(ids)).encode()).hexdigest()
    pre = PRE_HASHES.get(digest)
    if pre is None:
        raise ValueError(
            "the tokenizer's pre-tokenizer is not one llama.cpp 0.3.36 recognises (its ids for "
            f"convert_hf_to_gguf.py's check text hash to {digest[:16]}..., which the "
            "converter's get_vocab_base_pre does not list), so llama.cpp would not know how to "
            "split text for it; use a tokenizer.json of a model llama.cpp supports"
        )
    return pre


def _looks_special(token: str) -> bool:
    """``TextModel.does_token_look_special``."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _clean_up(text: str) -> str:
    """transformers' ``clean_up_tokenization``."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                 (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                 (" 're", "'re")):  # fmt: skip
        text = text.replace(a, b)
    return text


def _vocab(
    tk: Any, vocab_size: int | None, tokenizer_config: Mapping[str, Any]
) -> tuple[list[str], list[int]]:
    """``TextModel.get_vocab_base``'s tokens and token types."""
    vocab = tk.get_vocab(with_added_tokens=True)
    decoder = tk.get_added_tokens_decoder()
    added = {t.content: i for i, t in decoder.items()}
    size = int(vocab_size) if vocab_size is not None else len(vocab)
    top = max(vocab.values(), default=-1)
    if top >= size:
        raise ValueError(
            f"the tokenizer has token id {top}, but config.json's vocab_size is {size}: the "
            "tokenizer and the model do not belong together"
        )
    reverse = {i: t for t, i in vocab.items()}
    cleanup = tokenizer_config.get("clean_up_tokenization_spaces") is True
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(_UNUSED)
            continue
        if token in added:
            info = decoder.get(i)
            if info is not None and not info.normalized:
                ids = tk.encode(token, add_special_tokens=False).ids
                token = tk.decode(ids, skip_special_tokens=False)
                if cleanup:
                    token = _clean_up(token)
            if (info is not None and info.special) or _looks_special(token):
                types.append(_CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(_USER_DEFINED)
        else:
            types.append(_NORMAL)
        tokens.append(token)
    return tokens, types


def _merges(tokenizer: Mapping[str, Any]) -> list[str]:
    merges = tokenizer.get("model", {}).get("merges")
    if not isinstance(merges, list) or not merges:
        return []
    if isinstance(merges[0], str):
        return list(merges)
    if isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
        return [
            " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
            for pair in merges
        ]
    raise ValueError("tokenizer.json: unknown merges format; write it with a current tokenizers")


def _special_vocab(
    tokenizer: Mapping[str, Any],
    tokenizer_config: dict[str, Any] | None,
    config: Mapping[str, Any],
    folder: Path | None,
) -> tuple[dict[str, int], dict[str, bool], Any]:
    """gguf-py's ``SpecialVocab`` (0.3.36) for a folder with ``tokenizer.json``: the special
    token ids, the ``add_<type>_token`` flags and the chat template."""
    types = list(_SPECIAL_TYPES)
    ids: dict[str, int] = {}
    add: dict[str, bool] = {}
    added_tokens = tokenizer.get("added_tokens") or []
    tc = None if tokenizer_config is None else dict(tokenizer_config)

    def set_id(typ: str, tid: Any) -> None:
        if not isinstance(tid, int) or isinstance(tid, bool):
            return
        if tid < 0:
            raise ValueError(f"invalid value for special token type {typ}: {tid}")
        ids.setdefault(typ, tid)

    bos, cls_ = (tc or {}).get("bos_token"), (tc or {}).get("cls_token")
    eos, sep = (tc or {}).get("eos_token"), (tc or {}).get("sep_token")
    if not bos and cls_ and tc:
        tc["bos_token"] = bos = cls_
    if not eos and sep and tc:
        tc["eos_token"] = eos = sep
    post = tokenizer.get("post_processor")
    if post:
        for proc in post.get("processors", [post]):
            kind = proc.get("type")
            if kind == "ByteLevel":
                add.setdefault("bos", False)
                add.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                add["bos"] = add["eos"] = add["sep"] = True
                if not cls_ and tc:
                    tc["cls_token"] = cls_ = proc.get("cls", [bos])[0]
                if not sep and tc:
                    tc["sep_token"] = sep = proc.get("sep", [eos])[0]
            elif kind == "TemplateProcessing":
                single, pair = proc.get("single", []), proc.get("pair", [])
                first = last = None
                if len(single) > 1:
                    first = single[0].get("SpecialToken", {}).get("id")
                    if first:
                        if not tc:
                            bos = first
                        elif first not in (bos, cls_):
                            if not bos:
                                tc["bos_token"] = bos = first
                            if not cls_:
                                tc["cls_token"] = cls_ = first
                        add["bos"] = first in (bos, cls_)
                    last = single[-1].get("SpecialToken", {}).get("id")
                    if last:
                        if not tc:
                            eos = last
                        elif last != eos:
                            if "eot" not in types:
                                types.append("eot")
                                tc["eot_token"] = eos
                            elif "eom" not in types:
                                types.append("eom")
                                tc["eom_token"] = eos
                            tc["eos_token"] = eos = last
                        add["eos"] = last == eos
                if pair:
                    start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
                    stop = (
                        -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
                    )
                    middle = pair[slice(start, stop)]
                    if middle:
                        a = middle[0].get("Sequence", {}).get("id")
                        b = middle[-1].get("Sequence", {}).get("id")
                        middle = middle[1:-1]
                        if a == "A" and b == "B" and middle:
                            add_sep = False
                            entry = middle[0].get("SpecialToken", {}).get("id")
                            if entry and entry in (sep, eos) and not last:
                                add_sep = True
                            if len(middle) == 2:
                                entry = middle[1].get("SpecialToken", {}).get("id")
                                if entry and entry in (sep, eos):
                                    add_sep = True
                            add["sep"] = add_sep
                            if add_sep and not sep and tc:
                                tc["sep_token"] = eos
    template: Any = None
    if tc:
        alt: Any = None
        jinja = None if folder is None else folder / "chat_template.jinja"
        as_json = None if folder is None else folder / "chat_template.json"
        if jinja is not None and jinja.is_file():
            alt = jinja.read_text(encoding="utf-8")
            more = sorted((jinja.parent / "additional_chat_templates").glob("*.jinja"))
            if more:
                alt = [{"name": "default", "template": alt}] + [
                    {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in more
                ]
        elif as_json is not None and as_json.is_file():
            alt = json.loads(as_json.read_text(encoding="utf-8")).get("chat_template")
        template = tc.get("chat_template", alt)
        if template is not None and not isinstance(template, (str, list)):
            template = None
        for typ in types:
            flag = tc.get(f"add_{typ}_token")
            if isinstance(flag, bool) and typ not in add:
                add[typ] = flag
            entry = tc.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if not isinstance(content, str):
                continue
            set_id(
                typ, next((t.get("id") for t in added_tokens if t.get("content") == content), None)
            )
    for typ in types:
        tid = config.get(f"{typ}_token_id")
        if tid is None and isinstance(config.get("text_config"), dict):
            tid = config["text_config"].get(f"{typ}_token_id")
        set_id(typ, tid)
    return ids, add, template


def _normalizer_flags(normalizer: Any) -> tuple[bool | None, bool | None]:
    """SpecialVocab's ``_parse_normalizer``: (lowercase, strip_accents) of a normalizer."""
    lower: bool | None = None
    strip: bool | None = None

    def walk(n: Any) -> None:
        nonlocal lower, strip
        if not isinstance(n, dict):
            return
        kind = n.get("type")
        if kind == "Lowercase":
            lower = True
        elif kind == "StripAccents":
            strip = True
        elif kind == "BertNormalizer":
            if "lowercase" in n:
                lower = n["lowercase"]
            if "strip_accents" in n:
                strip = n["strip_accents"]
        elif kind == "Sequence":
            for m in n.get("normalizers", []):
                walk(m)

    if normalizer:
        walk(normalizer)
    return lower, strip


def vocab_metadata(
    meta: _Meta,
    config: Mapping[str, Any],
    tokenizer_json: str,
    tokenizer_config: Mapping[str, Any] | None,
    folder: Path | None = None,
) -> None:
    """Adds what the converter's ``LlamaModel.set_vocab`` writes for a byte-level BPE
    ``tokenizer.json`` (``_set_vocab_gpt2``) to ``meta``."""
    try:
        tokenizer = json.loads(tokenizer_json)
    except ValueError as e:
        raise ValueError(f"tokenizer.json is not valid JSON ({e})") from None
    model = tokenizer.get("model") or {}
    if folder is not None and (folder / "tokenizer.model").is_file():
        raise ValueError(
            f"{folder} has a SentencePiece tokenizer.model: convert_hf_to_gguf.py writes it as "
            "a 'llama' vocabulary, which qfast does not write yet; convert the folder with "
            "llama.cpp's convert_hf_to_gguf.py, then quantize that GGUF file with qfast"
        )
    is_llama3 = (
        model.get("type") == "BPE"
        and model.get("ignore_merges", False)
        and not model.get("byte_fallback", True)
    )
    decoder_type = (tokenizer.get("decoder") or {}).get("type")
    if (
        not is_llama3
        and model.get("type") == "BPE"
        and model.get("byte_fallback", False)
        and (decoder_type == "Sequence")
    ):
        raise ValueError(
            "the tokenizer is Llama-2-style BPE with byte fallback, which convert_hf_to_gguf.py "
            "writes as a 'llama' (SentencePiece) vocabulary; qfast writes byte-level BPE "
            "('gpt2') ones only: convert the folder with llama.cpp's convert_hf_to_gguf.py"
        )
    if model.get("type") != "BPE":
        raise ValueError(
            f"the tokenizer is {model.get('type')!r}, not byte-level BPE: qfast writes GGUF "
            "vocabularies of byte-level BPE tokenizers (tokenizer.ggml.model 'gpt2') only"
        )
    tc = dict(tokenizer_config or {})
    if isinstance(tc.get("add_prefix_space"), bool):
        meta.add("tokenizer.ggml.add_space_prefix", tc["add_prefix_space"], "BOOL")
    pre = pre_tokenizer(tokenizer_json)
    tk = _tokenizers().Tokenizer.from_str(tokenizer_json)
    tokens, types = _vocab(tk, config.get("vocab_size"), tc)
    meta.add("tokenizer.ggml.model", "gpt2", "STRING")
    meta.add("tokenizer.ggml.pre", pre, "STRING")
    meta.add("tokenizer.ggml.tokens", tokens, "ARRAY", "STRING")
    meta.add("tokenizer.ggml.token_type", types, "ARRAY", "INT32")
    merges = _merges(tokenizer)
    if merges:
        meta.add("tokenizer.ggml.merges", merges, "ARRAY", "STRING")
    ids, add, template = _special_vocab(
        tokenizer, None if tokenizer_config is None else tc, config, folder
    )
    for typ, tid in ids.items():
        if typ in _TOKEN_ID_KEYS:  # GGUFWriter has no add_cls_token_id: the converter skips it
            meta.add(_TOKEN_ID_KEYS[typ], tid, "UINT32")
    for typ, flag in add.items():
        if typ in ("bos", "eos", "sep"):  # GGUFWriter has add_add_{bos,eos,sep}_token only
            meta.add(f"tokenizer.ggml.add_{typ}_token", flag, "BOOL")
    if isinstance(template, list):
        names = []
        default = None
        for choice in template:
            name = "".join(
                c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", "")
            )
            body = choice.get("template")
            if name and body is not None:
                if name == "default":
                    default = body
                else:
                    names.append(name)
                    meta.add(f"tokenizer.chat_template.{name}", body, "STRING")
        if names:
            meta.add("tokenizer.chat_templates", names, "ARRAY", "STRING")
        template = default
    if isinstance(template, str):
        meta.add("tokenizer.chat_template", template, "STRING")
    lower, strip = _normalizer_flags(tokenizer.get("normalizer"))
    if lower is not None:
        meta.add("tokenizer.ggml.normalizer.lowercase", lower, "BOOL")
    if strip is not None:
        meta.add("tokenizer.ggml.normalizer.strip_accents", strip, "BOOL")
    if config.get("vocab_size", 32000) == 49152:  # the converter's rule for granite-small
        meta.add("tokenizer.ggml.add_bos_token", False, "BOOL")


# -- the model ---------------------------------------------------------------------------------


def _general(meta: _Meta, folder: Path | None, name: str, n_params: int) -> None:
    """``general.type`` and the model card keys (gguf-py's ``Metadata`` heuristics over
    ``README.md``, ``config.json`` and the folder's name, as the converter runs them)."""
    from .file import _gguf

    gguf = _gguf()
    meta.add("general.type", "model", "STRING")
    info = gguf.Metadata.load(None, folder, None, n_params)
    if info.name is None:
        info.name = name
    if info.size_label is None and n_params > 0:
        info.size_label = gguf.size_label(n_params, n_params, 0, 0)
    writer = gguf.GGUFWriter(path=None, arch="llama")
    info.set_gguf_meta_model(writer)
    for key, v in writer.kv_data[0].items():
        if key == "general.architecture":
            continue
        meta.values[key] = v.value
        meta.types[key] = (v.type, v.sub_type) if v.sub_type is not None else v.type


def _hparam(config: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((config[k] for k in keys if k in config), None)


def llama_metadata(
    config: Mapping[str, Any],
    *,
    tokenizer_json: str | None,
    tokenizer_config: Mapping[str, Any] | None = None,
    folder: str | os.PathLike[str] | None = None,
    name: str = "model",
    file_type: int = 0,
    n_params: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metadata ``convert_hf_to_gguf.py`` writes for a Llama: ``(metadata, value_types)``
    as :func:`qfast.gguf.save` takes them, in the converter's order.

    Args:
        config: the ``config.json`` dict.
        tokenizer_json: the ``tokenizer.json`` text (None: a ValueError; llama.cpp needs a
            vocabulary).
        tokenizer_config: the ``tokenizer_config.json`` dict (special tokens, ``add_bos_token``,
            the chat template), if any.
        folder: the checkpoint's folder, for ``README.md`` (model card), ``chat_template.jinja``
            and the name heuristics; None for a model that has no folder.
        name: ``general.name`` when the folder gives none.
        file_type: ``general.file_type`` (``LlamaFileType``: 0 F32, 1 F16, 32 BF16).
        n_params: the parameter count (``general.size_label``).

    Raises:
        ValueError: not a Llama, no or an unsupported tokenizer.
    """
    arch = (config.get("architectures") or [None])[0]
    if config.get("model_type") not in ("llama", "mistral") or (
        arch is not None and arch not in LLAMA_CLASSES
    ):
        raise ValueError(
            f"qfast writes GGUF metadata for Llama models (LlamaForCausalLM, "
            f"MistralForCausalLM), not model_type {config.get('model_type')!r} ({arch}); "
            "convert this one with llama.cpp's convert_hf_to_gguf.py"
        )
    if tokenizer_json is None:
        raise ValueError(
            "a GGUF file carries the model's vocabulary, and this model has no tokenizer.json: "
            "put the model's tokenizer.json (and tokenizer_config.json) beside its config.json"
        )
    where = None if folder is None else Path(folder)
    meta = _Meta()
    _general(meta, where, name, n_params)
    c = dict(config)
    meta.add("llama.block_count", int(c["num_hidden_layers"]), "UINT32")
    keys_ctx = ("max_position_embeddings", "n_ctx", "n_positions", "max_length",
                "max_sequence_length", "model_max_length")  # fmt: skip
    for key, keys in (
        ("llama.context_length", keys_ctx),
        ("llama.embedding_length", ("hidden_size", "n_embd", "dim")),
        (
            "llama.feed_forward_length",
            (
                "prefix_dense_intermediate_size",
                "dense_intermediate_size",
                "intermediate_size",
                "n_inner",
                "hidden_dim",
            ),
        ),
        ("llama.attention.head_count", ("num_attention_heads", "n_head", "n_heads")),
        ("llama.attention.head_count_kv", ("num_key_value_heads", "n_kv_heads")),
    ):
        value = _hparam(c, keys)
        if value is not None:
            meta.add(key, int(value), "UINT32")
    rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    if "rope_theta" not in rope and c.get("rope_theta") is not None:
        rope["rope_theta"] = c["rope_theta"]
    if "rope_type" not in rope and rope.get("type") is not None:
        rope["rope_type"] = rope["type"]
    kind = rope.get("rope_type")
    if kind is not None:
        factor = rope.get("factor")
        if kind == "linear" and factor is not None:
            meta.add("llama.rope.scaling.type", "linear", "STRING")
            meta.add("llama.rope.scaling.factor", float(factor), "FLOAT32")
        elif kind == "yarn" and factor is not None:
            meta.add("llama.rope.scaling.type", "yarn", "STRING")
            meta.add("llama.rope.scaling.factor", float(factor), "FLOAT32")
            meta.add(
                "llama.rope.scaling.original_context_length",
                int(rope["original_max_position_embeddings"]),
                "UINT32",
            )
    if rope.get("rope_theta") is not None:
        meta.add("llama.rope.freq_base", float(rope["rope_theta"]), "FLOAT32")
    eps = _hparam(c, ("rms_norm_eps", "norm_eps"))
    if eps is not None:
        meta.add("llama.attention.layer_norm_rms_epsilon", float(eps), "FLOAT32")
    if c.get("head_dim") is not None:
        meta.add("llama.attention.key_length", int(c["head_dim"]), "UINT32")
        meta.add("llama.attention.value_length", int(c["head_dim"]), "UINT32")
    meta.add("general.file_type", int(file_type), "UINT32")
    meta.add("llama.vocab_size", int(c["vocab_size"]), "UINT32")
    rope_dim = c.get("head_dim")
    if rope_dim is None:
        rope_dim = int(c["hidden_size"]) // int(c["num_attention_heads"])
    meta.add("llama.rope.dimension_count", int(rope_dim), "UINT32")
    meta.add("general.quantization_version", _QUANTIZATION_VERSION, "UINT32")
    vocab_metadata(meta, c, tokenizer_json, tokenizer_config, where)
    return meta.values, meta.types


def rope_freqs(config: Mapping[str, Any]) -> npt.NDArray[np.float32] | None:
    """``rope_freqs.weight`` of a ``rope_type: llama3`` model (``LlamaModel.
    generate_extra_tensors``), else None."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if str(rope.get("rope_type", rope.get("type", ""))).lower() != "llama3":
        return None
    base = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    dim = config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"])
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs.astype(np.float32):
        wavelen = 2 * math.pi / float(f)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(float(factor))
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


# -- tensors -------------------------------------------------------------------------------------


def tensor_type(name: str, ndim: int, outtype: str) -> str:
    """The type ``convert_hf_to_gguf.py --outtype`` gives a Llama tensor (llama.cpp's name):
    F32 for 1-D tensors, norms and anything not a ``.weight``; ``outtype`` for the rest."""
    if ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return "F32"
    return outtype


class SourceTensor:
    """A tensor of a :class:`ConvertedSource`: a :class:`~qfast.formats.gguf.file.GGUFTensor`'s
    interface over values computed when asked for.

    ``values()`` gives float32 values in llama.cpp's layout; ``raw`` (instead) gives a tensor's
    bytes already in ``type`` (a QTensor that is exactly a ggml grid): such a tensor is
    ``fixed``, written with its own type whatever the mix says.
    """

    def __init__(
        self,
        name: str,
        type: str,
        shape: tuple[int, ...],
        values: Callable[[], npt.NDArray[np.float32]] | None = None,
        *,
        raw: Callable[[], npt.NDArray[Any]] | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.type = type
        self.shape = tuple(int(d) for d in shape)
        self._values = values
        self._raw = raw
        self._release = release
        self.fixed = raw is not None

    @property
    def data(self) -> npt.NDArray[Any]:
        """The tensor in ``type``, as :meth:`GGUFFile.tensors[...].data` gives it."""
        if self._raw is not None:
            return self._raw()
        assert self._values is not None
        return quantize(self._values(), self.type)

    @property
    def nbytes(self) -> int:
        from .blocks import type_info

        info = type_info(self.type)
        return math.prod(self.shape[:-1]) * (self.shape[-1] // info.block_size) * info.type_size

    def check_mapped(self) -> None:
        """Nothing to check: the values are computed, not mapped."""

    def evict(self) -> None:
        """Drops what reading the tensor cached (the model's copy of its weight)."""
        if self._release is not None:
            self._release()

    def dequantize(self) -> npt.NDArray[np.float32]:
        """The values as ``type`` stores them (F16 / BF16: rounded to it), float32."""
        if self.type == "F32" and self._values is not None:
            return np.ascontiguousarray(self._values(), dtype=np.float32)
        return dequantize(self.data, self.type, self.shape)

    def __repr__(self) -> str:
        return f"SourceTensor({self.name!r}, {self.type}, shape={self.shape})"


class ConvertedSource:
    """A model as ``convert_hf_to_gguf.py`` would write it, read like a loaded GGUF file
    (``metadata``, ``value_types``, ``tensors`` in the converter's order, ``alignment``,
    ``path``, ``architecture``) without writing it: ``qfast.gguf.requantize`` and
    ``qfast.model.gguf_gptq`` take it where they take a :class:`GGUFFile`."""

    def __init__(
        self,
        path: Path,
        metadata: dict[str, Any],
        value_types: dict[str, Any],
        tensors: dict[str, SourceTensor],
        *,
        model: Any = None,
    ) -> None:
        self.path = path
        self.metadata = metadata
        self.value_types = value_types
        self.tensors = tensors
        self.alignment = 32
        #: the model (Q / K in llama.cpp's layout) the tensors are read from
        self.model = model

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def __repr__(self) -> str:
        return (
            f"ConvertedSource({str(self.path)!r}, {len(self.tensors)} tensors, "
            f"{len(self.metadata)} metadata keys)"
        )

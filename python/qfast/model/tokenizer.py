"""Text -> token ids for a loaded model: a ``tokenizers.Tokenizer`` with the model's BOS / EOS.

- :meth:`Tokenizer.from_file` reads a Hugging Face ``tokenizer.json`` (with the
  ``tokenizer_config.json`` beside it, when there is one, for ``add_bos_token`` and the names
  of the BOS / EOS tokens).
- :meth:`Tokenizer.from_gguf` builds the byte-level BPE tokenizer that llama.cpp runs for a
  GGUF file's vocabulary (``tokenizer.ggml.model == "gpt2"``): the same tokens, merges and
  pre-tokenizer regexes as ``src/llama-vocab.cpp`` of llama.cpp (the version pinned by
  ``scripts/llama_cpp.py``) for the pre-tokenizer types listed in :data:`GGUF_PRE_TYPES`; other
  types are refused rather than approximated. Control and user-defined tokens (GGUF token types
  3 and 4, e.g. ``<|im_start|>``) are added tokens, matched whole in the text.
- :meth:`Tokenizer.to_json` / :meth:`Tokenizer.save` write a ``tokenizer.json`` that the
  ``tokenizers`` package and ``transformers`` load.

Needs the optional ``tokenizers`` package (``pip install 'qfast-quant[models]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["GGUF_PRE_TYPES", "Tokenizer", "require_tokenizer"]

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp, llm_tokenizer_bpe), applied one after
# the other, each splitting the pieces the previous one left (matches and the text between them
# both kept: the "isolated" split of the ``tokenizers`` package).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS = r"\p{N}"

#: ``tokenizer.ggml.pre`` values :meth:`Tokenizer.from_gguf` builds exactly, and the regexes
#: llama.cpp applies for each (``"gpt2"`` stands for GPT-2's own byte-level regex, which
#: llama.cpp runs through a hand-written matcher that also takes trailing whitespace).
GGUF_PRE_TYPES: dict[str, tuple[str, ...]] = {
    **{
        name: ("gpt2",)
        for name in ("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "mellum", "modern-bert")
    },
    **{
        name: (_DIGITS, "gpt2")
        for name in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone")
    },
    **{name: (_QWEN2,) for name in ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez")},
}

# GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*): control and user-defined tokens are
# matched whole before the pre-tokenizer runs.
_CONTROL, _USER_DEFINED = 3, 4


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(
            "a model's tokenizer needs the 'tokenizers' package: pip install 'qfast-quant[models]'"
        ) from e
    return tokenizers


class Tokenizer:
    """Text <-> ids for a model.

    Attributes:
        bos_id / eos_id: the ids of the beginning / end-of-sequence tokens (None if unknown).
        add_bos: whether :meth:`encode` starts a sequence with ``bos_id`` (with
            ``add_special=True``).
        chat_template: the Jinja chat template the checkpoint carries, if any.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        add_bos: bool = False,
        pad_id: int | None = None,
        unk_id: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        tk = _tokenizers()
        if not isinstance(tokenizer, tk.Tokenizer):
            raise TypeError(
                f"Tokenizer wraps a tokenizers.Tokenizer, not {type(tokenizer).__name__}; use "
                "Tokenizer.from_file(path) or Tokenizer.from_gguf(metadata)"
            )
        if add_bos and bos_id is None:
            raise ValueError("add_bos=True needs bos_id: the id of the token to prepend")
        self._tk = tokenizer
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.unk_id = unk_id
        self.add_bos = bool(add_bos)
        self.chat_template = chat_template

    @property
    def vocab_size(self) -> int:
        """The number of ids, added tokens included."""
        return int(self._tk.get_vocab_size(with_added_tokens=True))

    @property
    def backend(self) -> Any:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tk

    def encode(self, text: str, *, add_special: bool = True) -> list[int]:
        """The ids of ``text``; with ``add_special``, the BOS token first when the vocabulary
        asks for it (``add_bos``) and whatever the tokenizer's post-processor adds (BERT's
        ``[CLS]`` / ``[SEP]``)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        ids = list(self._tk.encode(text, add_special_tokens=add_special).ids)
        if add_special and self.add_bos and self.bos_id is not None:
            if not ids or ids[0] != self.bos_id:
                ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """The text of ``ids`` (special tokens written out unless ``skip_special``)."""
        ids = [int(i) for i in ids]
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(
                f"token ids {bad[:5]} are outside this vocabulary (ids 0..{n - 1}); they do "
                "not come from this tokenizer"
            )
        return str(self._tk.decode(ids, skip_special_tokens=skip_special))

    def token(self, i: int) -> str | None:
        """The vocabulary entry of id ``i``."""
        out = self._tk.id_to_token(int(i))
        return None if out is None else str(out)

    def to_json(self) -> str:
        """The ``tokenizer.json`` text (the ``tokenizers`` package's format)."""
        return str(self._tk.to_str())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes :meth:`to_json` to ``path``, atomically."""
        from .._files import atomic_write_bytes

        atomic_write_bytes(path, self.to_json().encode())

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.vocab_size} ids, bos={self.bos_id}, eos={self.eos_id}, "
            f"add_bos={self.add_bos})"
        )

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Reads a Hugging Face ``tokenizer.json``; ``tokenizer_config.json`` beside it (when
        there is one) names the BOS / EOS tokens and says whether to add BOS. Padding and
        truncation set in the file are turned off (:meth:`encode` gives every id).

        Raises FileNotFoundError for a missing file, ValueError for one the ``tokenizers``
        package cannot read."""
        tk = _tokenizers()
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(2, "no tokenizer.json here", str(p))
        try:
            backend = tk.Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises its own Exception for bad JSON
            raise ValueError(
                f"{p}: not a tokenizer.json the 'tokenizers' package can read ({e}); replace it "
                "with the model's own tokenizer.json"
            ) from None
        # encode gives every id of a text: padding and truncation (windows, batches) are the
        # caller's business, not the file's
        backend.no_padding()
        backend.no_truncation()
        cfg: dict[str, Any] = {}
        cfg_path = p.with_name("tokenizer_config.json")
        if cfg_path.is_file():
            try:
                loaded = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"{cfg_path}: not valid JSON ({e}); fix or remove it") from None
            if isinstance(loaded, dict):
                cfg = loaded

        def token_id(key: str) -> int | None:
            value = cfg.get(key)
            if isinstance(value, dict):  # {"content": "<s>", ...}
                value = value.get("content")
            if not isinstance(value, str):
                return None
            i = backend.token_to_id(value)
            return None if i is None else int(i)

        bos, eos = token_id("bos_token"), token_id("eos_token")
        add_bos = bool(cfg.get("add_bos_token", False)) and bos is not None
        return cls(
            backend,
            bos_id=bos,
            eos_id=eos,
            add_bos=add_bos,
            pad_id=token_id("pad_token"),
            unk_id=token_id("unk_token"),
            chat_template=cfg.get("chat_template")
            if isinstance(cfg.get("chat_template"), str)
            else None,
        )

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """The tokenizer of a GGUF file's metadata (``qfast.gguf.load(path).metadata``).

        Builds byte-level BPE (``tokenizer.ggml.model == "gpt2"``) with llama.cpp's
        pre-tokenizer for ``tokenizer.ggml.pre`` (one of :data:`GGUF_PRE_TYPES`).

        Raises:
            ValueError: no tokenizer in the metadata, another tokenizer model (SentencePiece
                ``"llama"``, WordPiece ``"bert"``, ...) or pre-tokenizer type, or an
                inconsistent vocabulary; the message says which.
        """
        tk = _tokenizers()
        kind = metadata.get("tokenizer.ggml.model")
        if kind is None:
            raise ValueError(
                "this GGUF file has no tokenizer (no tokenizer.ggml.model): pass text already "
                "tokenized, or load the model's tokenizer.json with Tokenizer.from_file"
            )
        if kind != "gpt2":
            raise ValueError(
                f"the GGUF tokenizer model is {kind!r}; qfast builds only byte-level BPE "
                "('gpt2') tokenizers from GGUF metadata. Load the model's tokenizer.json with "
                "Tokenizer.from_file instead"
            )
        pre = metadata.get("tokenizer.ggml.pre", "default")
        if pre not in GGUF_PRE_TYPES:
            raise ValueError(
                f"the GGUF pre-tokenizer type {pre!r} is not one qfast reproduces exactly "
                f"(supported: {', '.join(sorted(GGUF_PRE_TYPES))}); load the model's "
                "tokenizer.json with Tokenizer.from_file instead"
            )
        tokens = list(_list(metadata, "tokenizer.ggml.tokens"))
        merges_raw = list(_list(metadata, "tokenizer.ggml.merges"))
        types = metadata.get("tokenizer.ggml.token_type")
        types = [1] * len(tokens) if types is None else [int(t) for t in types]
        if len(types) != len(tokens):
            raise ValueError(
                f"GGUF tokenizer: {len(tokens)} tokens but {len(types)} token types; the "
                "file's vocabulary is corrupt"
            )
        vocab: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if not isinstance(t, str):
                raise ValueError(f"GGUF tokenizer: token {i} is not a string ({t!r})")
            vocab.setdefault(t, i)
        if len(vocab) != len(tokens):
            raise ValueError(
                f"GGUF tokenizer: {len(tokens) - len(vocab)} tokens appear twice in "
                "tokenizer.ggml.tokens; qfast cannot build a BPE vocabulary from it"
            )
        merges: list[tuple[str, str]] = []
        for m in merges_raw:
            parts = m.split(" ") if isinstance(m, str) else []
            if len(parts) != 2:
                raise ValueError(f"GGUF tokenizer: merge {m!r} is not two tokens and a space")
            merges.append((parts[0], parts[1]))
        try:
            model = tk.models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
        except Exception as e:
            raise ValueError(f"GGUF tokenizer: the BPE vocabulary is inconsistent ({e})") from None
        backend = tk.Tokenizer(model)
        steps: list[Any] = []
        for expr in GGUF_PRE_TYPES[pre]:
            if expr == "gpt2":
                steps.append(tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
            else:
                steps.append(tk.pre_tokenizers.Split(tk.Regex(expr), behavior="isolated"))
        if not any(isinstance(s, tk.pre_tokenizers.ByteLevel) for s in steps):
            steps.append(tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        backend.pre_tokenizer = tk.pre_tokenizers.Sequence(steps)
        backend.decoder = tk.decoders.ByteLevel()
        special = [
            tk.AddedToken(tokens[i], special=True, normalized=False)
            for i, t in enumerate(types)
            if t in (_CONTROL, _USER_DEFINED)
        ]
        if special:
            backend.add_special_tokens(special)

        def token_id(key: str) -> int | None:
            value = metadata.get(key)
            if value is None:
                return None
            i = int(value)
            if not 0 <= i < len(tokens):
                raise ValueError(
                    f"GGUF tokenizer: {key} = {i} is not a token id (0..{len(tokens) - 1})"
                )
            return i

        bos = token_id("tokenizer.ggml.bos_token_id")
        add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
        if add_bos and bos is not None:
            name = tokens[bos]
            backend.post_processor = tk.processors.TemplateProcessing(
                single=f"{name}:0 $A:0",
                pair=f"{name}:0 $A:0 {name}:1 $B:1",
                special_tokens=[(name, bos)],
            )
        template = metadata.get("tokenizer.chat_template")
        return cls(
            backend,
            bos_id=bos,
            eos_id=token_id("tokenizer.ggml.eos_token_id"),
            add_bos=add_bos,
            pad_id=token_id("tokenizer.ggml.padding_token_id"),
            unk_id=token_id("tokenizer.ggml.unknown_token_id"),
            chat_template=template if isinstance(template, str) else None,
        )


def _list(metadata: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = metadata.get(key)
    if value is None:
        raise ValueError(f"GGUF tokenizer: the metadata has no {key}; the file is incomplete")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"GGUF tokenizer: {key} is not a list")
    return value


def require_tokenizer(model: Any, what: str = "this") -> Tokenizer:
    """``model.tokenizer``, or a ValueError that says how to give the model one."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        src = getattr(model, "source", None)
        where = f" loaded from {src}" if src is not None else ""
        raise ValueError(
            f"{what} needs a tokenizer, and the model{where} has none: put the model's "
            "tokenizer.json beside its config.json and load it again, or set "
            "model.tokenizer = qfast.model.tokenizer.Tokenizer.from_file('tokenizer.json')"
        )
    return tok

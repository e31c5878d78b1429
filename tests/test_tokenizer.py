"""qfast.model.tokenizer: SmolLM2's byte-level BPE built from its GGUF vocabulary, and
tokenizer.json files.

Expected ids are looked up in the GGUF token list itself (``tokenizer.ggml.tokens``), so each
check says which pieces the text must split into, independently of the tokenizer's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import qfast.assets
import qfast.gguf
from qfast.model.tokenizer import GGUF_PRE_TYPES, Tokenizer


@pytest.fixture(scope="module")
def metadata() -> dict[str, Any]:
    return qfast.gguf.load(qfast.assets.smollm2_gguf()).metadata


@pytest.fixture(scope="module")
def tok(metadata: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf(metadata)


def pieces(metadata: dict[str, Any], *tokens: str) -> list[int]:
    """The ids of vocabulary entries (GPT-2 byte-level spelling: Ġ is a space, Ċ a newline)."""
    vocab = metadata["tokenizer.ggml.tokens"]
    return [vocab.index(t) for t in tokens]


def test_smollm2_special_ids(tok: Tokenizer, metadata: dict[str, Any]) -> None:
    assert tok.vocab_size == len(metadata["tokenizer.ggml.tokens"]) == 49152
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    assert tok.token(1) == "<|im_start|>" and tok.token(2) == "<|im_end|>"
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template


def test_smollm2_digits_split_one_by_one(tok: Tokenizer, metadata: dict[str, Any]) -> None:
    # "smollm": every digit its own piece (and the space before a number a piece of its own),
    # then GPT-2's byte-level regex
    assert tok.encode("Hello world 12345") == pieces(
        metadata, "Hello", "Ġworld", "Ġ", "1", "2", "3", "4", "5"
    )
    assert tok.encode("in 2024.") == pieces(metadata, "in", "Ġ", "2", "0", "2", "4", ".")


def test_smollm2_special_tokens_are_matched_whole(tok: Tokenizer, metadata: dict[str, Any]) -> None:
    text = "<|im_start|>user\nHi<|im_end|>"
    assert tok.encode(text) == pieces(metadata, "<|im_start|>", "user", "Ċ", "Hi", "<|im_end|>")
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text), skip_special=True) == "user\nHi"


def test_smollm2_whitespace_and_contractions(tok: Tokenizer, metadata: dict[str, Any]) -> None:
    # \s+(?!\S): of two spaces before a word, the last one goes with the word
    assert tok.encode("  a  b\n\n c's") == pieces(metadata, "Ġ", "Ġa", "Ġ", "Ġb", "ĊĊ", "Ġc", "'s")


def test_smollm2_round_trip_on_wikipedia(tok: Tokenizer) -> None:
    text = qfast.assets.text("wikipedia-sample")
    ids = tok.encode(text)
    assert len(ids) < len(text) / 3  # BPE merges: far fewer ids than characters
    assert tok.decode(ids) == text


def test_add_bos(metadata: dict[str, Any]) -> None:
    meta = {**metadata, "tokenizer.ggml.add_bos_token": True}
    t = Tokenizer.from_gguf(meta)
    assert t.add_bos
    assert t.encode("Hi") == [1, *pieces(metadata, "Hi")]
    assert t.encode("Hi", add_special=False) == pieces(metadata, "Hi")
    # the tokenizer.json written carries it (a post-processor), for transformers too
    from tokenizers import Tokenizer as HFTokenizer

    assert HFTokenizer.from_str(t.to_json()).encode("Hi").ids == [1, *pieces(metadata, "Hi")]


def test_save_and_from_file(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False})
    )
    back = Tokenizer.from_file(path)
    text = "Numbers 3.14159 and <|im_start|>tokens\n\n  spaced"
    assert back.encode(text) == tok.encode(text)
    assert (back.bos_id, back.eos_id, back.add_bos) == (1, 2, False)


def test_minilm_tokenizer_json_adds_cls_and_sep() -> None:
    t = Tokenizer.from_file(qfast.assets.minilm_dir() / "tokenizer.json")
    ids = t.encode("Hello world")
    assert t.token(ids[0]) == "[CLS]" and t.token(ids[-1]) == "[SEP]"
    assert [t.token(i) for i in t.encode("Hello world", add_special=False)] == ["hello", "world"]


def test_unsupported_gguf_tokenizers_are_refused(metadata: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"'llama'.*tokenizer.json"):
        Tokenizer.from_gguf({**metadata, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match=r"'deepseek-llm' is not one.*smollm"):
        Tokenizer.from_gguf({**metadata, "tokenizer.ggml.pre": "deepseek-llm"})
    with pytest.raises(ValueError, match=r"no tokenizer"):
        Tokenizer.from_gguf({"general.architecture": "llama"})
    meta = {k: v for k, v in metadata.items() if k != "tokenizer.ggml.merges"}
    with pytest.raises(ValueError, match=r"tokenizer.ggml.merges"):
        Tokenizer.from_gguf(meta)
    with pytest.raises(ValueError, match=r"bos_token_id = 49152"):
        Tokenizer.from_gguf({**metadata, "tokenizer.ggml.bos_token_id": 49152})
    assert "smollm" in GGUF_PRE_TYPES and "gpt-2" in GGUF_PRE_TYPES


def test_bad_inputs(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"outside this vocabulary"):
        tok.decode([5, 49152])
    with pytest.raises(TypeError, match=r"str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"not a tokenizer.json"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(tmp_path / "missing.json")

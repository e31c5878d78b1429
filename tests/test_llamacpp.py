"""qfast against llama.cpp's own tools, on SmolLM2-135M as an F32 GGUF.

- qfast's tokenizer built from the GGUF vocabulary gives ``llama-tokenize``'s ids;
- ``qfast.evaluate(..., convention="llama.cpp")`` gives ``llama-perplexity``'s perplexity
  within 0.5%, over the same chunks of the same text file;
- against itself as the reference, qfast's llama.cpp-convention KL is llama.cpp's noise floor
  (the 16-bit storage of the base log-probabilities), with the same top token everywhere.

The tools are built by ``scripts/llama_cpp.py`` on first use (about 3 minutes cold on 2
cores, once per cache; see ``tests/llamacpp.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llamacpp import (  # noqa: F401
    llamacpp_bin,
    perplexity,
    read_kl_base,
    smollm2_f32,
    tokenize,
)

from qfast import assets
from qfast.calibration.text import heldout_paragraphs
from qfast.model.checkpoint import load_model
from qfast.model.evaluate import evaluate, llamacpp_base

# 4 chunks of 256 tokens: llama-perplexity takes seconds, qfast's forward pass a few more
N_CTX = 256
CHUNKS = 4
# held-out paragraphs in the text file: more than CHUNKS * N_CTX tokens of SmolLM2
PARAGRAPHS = 16


@pytest.fixture(scope="module")
def f32_gguf(llamacpp_bin: Path) -> Path:  # noqa: F811
    return smollm2_f32(llamacpp_bin)


@pytest.fixture(scope="module")
def smollm2(f32_gguf: Path) -> Any:
    return load_model(f32_gguf)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The held-out paragraphs, one a line, without a trailing newline (``llama-perplexity
    -f`` would drop it; qfast reads the file as it is)."""
    path = tmp_path_factory.mktemp("llamacpp") / "heldout.txt"
    path.write_bytes("\n".join(heldout_paragraphs(PARAGRAPHS)).encode("utf-8"))
    return path


EDGE_CASES = [
    "",
    " ",
    "a",
    "Hello, world!",
    "0123456789 3.14159 -42 1,000,000 2024-06-01 12:30:45 1e-10 0x1F",
    "!!! ??? ... ;;; --- ((( ))) [[]] {{}} <<>> @#$%^&*_+=|\\/~`'\"",
    "naïve café résumé Straße Ελληνικά русский 日本語 中文 한국어 العربية हिन्दी",
    "emoji 🤖🚀👍🏽 and ZWJ 👨‍👩‍👧 and combining e\u0301",
    "  two leading spaces",
    "trailing spaces   ",
    "\ttab\tseparated\tvalues\t",
    "\n\nleading newlines",
    "trailing newline\n",
    "a  b   c    d     e",
    "line one\nline two\r\nline three\n\n\nfour",
    "don't we'll I'm you're they've it's",
    "CamelCaseIdentifiers snake_case_names kebab-case-words",
    "    def f(x):\n        return x ** 2  # code\n",
]


def test_tokenizer_matches_llama_tokenize(
    llamacpp_bin: Path,  # noqa: F811
    f32_gguf: Path,
    smollm2: Any,
) -> None:
    tok = smollm2.tokenizer
    paragraphs = heldout_paragraphs(6)
    texts = [*paragraphs, "\n".join(paragraphs), *EDGE_CASES]
    for text in texts:
        expected = tokenize(llamacpp_bin, f32_gguf, text)
        assert list(tok.encode(text)) == expected, repr(text[:80])
    # special tokens written in the text: qfast's tokenizer reads them as the special tokens
    # (as Hugging Face's tokenizers do, and llama-tokenize by default); llama-perplexity reads
    # them as plain text, so evaluate's llama.cpp convention assumes text without them
    chat = "<|im_start|>user\nhi<|im_end|>"
    assert list(tok.encode(chat)) == tokenize(llamacpp_bin, f32_gguf, chat, parse_special=True)
    assert list(tok.encode(chat)) != tokenize(llamacpp_bin, f32_gguf, chat)
    for text in (paragraphs[0], EDGE_CASES[4]):
        expected = tokenize(llamacpp_bin, f32_gguf, text, bos=False)
        assert list(tok.encode(text, add_special=False)) == expected, repr(text[:80])
    # SmolLM2's vocabulary adds no BOS; qfast reads the same flag
    assert bool(tok.add_bos) is False
    assert tokenize(llamacpp_bin, f32_gguf, "a") == list(tok.encode("a"))


@pytest.fixture(scope="module")
def evaluation(smollm2: Any, text_file: Path) -> Any:
    """qfast's llama.cpp-convention evaluation of the text, against the model itself (the
    reference's logits are the model's: one forward pass gives the perplexity and the KL)."""
    text = text_file.read_text(encoding="utf-8")
    return evaluate(
        smollm2,
        text,
        smollm2,
        n_ctx=N_CTX,
        convention="llama.cpp",
        max_tokens=CHUNKS * N_CTX,
    )


def test_perplexity_matches_llama_perplexity(
    llamacpp_bin: Path,  # noqa: F811
    f32_gguf: Path,
    text_file: Path,
    evaluation: Any,
) -> None:
    ref = perplexity(llamacpp_bin, f32_gguf, text_file, n_ctx=N_CTX, chunks=CHUNKS)
    assert ref.chunks == CHUNKS
    ev = evaluation
    assert ev.windows == CHUNKS
    assert ev.tokens == CHUNKS * (N_CTX - 1 - N_CTX // 2)
    assert ev.perplexity == pytest.approx(ref.ppl, rel=0.005), (ev.perplexity, ref.ppl)
    assert ev.perplexity_error == pytest.approx(ref.ppl_error, rel=0.05)


def test_kl_against_itself_is_llamacpps_noise_floor(
    llamacpp_bin: Path,  # noqa: F811
    f32_gguf: Path,
    smollm2: Any,
    text_file: Path,
    evaluation: Any,
    tmp_path: Path,
) -> None:
    """llama.cpp stores the base log-probabilities in 16 bits (qfast's llama.cpp convention
    stores them the same way: the codes match llama.cpp's file), so a model against itself
    has a KL of about 1e-7 rather than 0, in both."""
    base = tmp_path / "base.kld"
    args: dict[str, Any] = {"n_ctx": N_CTX, "chunks": CHUNKS}
    perplexity(llamacpp_bin, f32_gguf, text_file, kl_base=base, **args)

    # the file: llama-perplexity's tokens are qfast's, its stored log-probabilities qfast's
    stored = read_kl_base(base)
    assert (stored.n_ctx, stored.n_chunk) == (N_CTX, CHUNKS)
    text = text_file.read_text(encoding="utf-8")
    ids = np.array(smollm2.tokenizer.encode(text)[: CHUNKS * N_CTX])
    assert stored.tokens.tolist() == ids.tolist()
    assert not smollm2.tokenizer.add_bos  # else each chunk's first token would become BOS
    first = N_CTX // 2
    logits = smollm2.logits(ids.reshape(CHUNKS, N_CTX))[:, first : N_CTX - 1]
    assert stored.n_vocab == logits.shape[-1]
    scale, min_log_prob, codes = llamacpp_base(logits.reshape(-1, stored.n_vocab))
    # llama.cpp's logits differ from qfast's float32 ones by up to ~0.03 (its attention runs
    # partly in float16: 0.75 of the codes agree, 1.3 codes = 3e-4 apart on average); a
    # misplaced offset or scale would be thousands of codes off
    np.testing.assert_allclose(scale, stored.scale, rtol=1e-6)
    np.testing.assert_allclose(min_log_prob, stored.min_log_prob, rtol=0, atol=0.05)
    diff = np.abs(codes.astype(np.int64) - stored.codes)
    assert diff.max() <= 512, diff.max()  # 0.12 in log-probability
    assert diff.mean() < 4, diff.mean()
    assert np.mean(diff == 0) > 0.5, np.mean(diff == 0)

    ref = perplexity(llamacpp_bin, f32_gguf, text_file, kl_base=base, kl=True, **args)
    assert ref.kld is not None and abs(ref.kld) < 1e-5
    assert ref.same_top == 1.0
    ev = evaluation
    assert ev.kl_divergence is not None and abs(ev.kl_divergence) < 1e-5
    assert ev.kl_divergence != 0.0  # the 16-bit storage, as llama.cpp computes it
    assert ev.top1_agreement == ref.same_top
    assert ev.perplexity == pytest.approx(ref.ppl, rel=0.005)
    assert ev.reference_perplexity == pytest.approx(ref.ppl_base, rel=0.005)
    # the windows convention's exact KL of a model against itself is 0
    exact = evaluate(smollm2, text, smollm2, n_ctx=64, max_tokens=128)
    assert exact.kl_divergence == 0.0 and exact.top1_agreement == 1.0


def test_f32_gguf_is_cached(llamacpp_bin: Path, f32_gguf: Path) -> None:  # noqa: F811
    assert f32_gguf.is_file() and f32_gguf.parent.parent == llamacpp_bin.parent
    assert Path(assets.smollm2_gguf()).stat().st_size < f32_gguf.stat().st_size
    assert smollm2_f32(llamacpp_bin) == f32_gguf  # keyed on the source's sha256: found again

"""qfast against llama.cpp's own tools, on SmolLM2-135M as an F32 GGUF.

- qfast's tokenizer built from the GGUF vocabulary gives ``llama-tokenize``'s ids;
- ``qfast.evaluate(..., convention="llama.cpp")`` gives ``llama-perplexity``'s perplexity
  within 0.5%, over the same chunks of the same text file;
- against itself as the reference, qfast's llama.cpp-convention KL is llama.cpp's noise floor
  (the 16-bit storage of the base log-probabilities), with the same top token everywhere.

The tools are built by ``scripts/llama_cpp.py`` on first use (about 10-15 minutes cold on 2
cores, once per cache; see ``tests/llamacpp.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llamacpp import llamacpp_bin, perplexity, smollm2_f32, tokenize  # noqa: F401

from qfast import assets
from qfast.model.checkpoint import load_model
from qfast.model.evaluate import evaluate
from qfast.models import heldout_paragraphs

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
    "<|im_start|>user\nhi<|im_end|>",  # special tokens' text, read as plain text
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
    for text in (paragraphs[0], EDGE_CASES[4]):
        expected = tokenize(llamacpp_bin, f32_gguf, text, bos=False)
        assert list(tok.encode(text, add_special=False)) == expected, repr(text[:80])
    # SmolLM2's vocabulary adds no BOS; qfast reads the same flag
    assert bool(tok.add_bos) is False
    assert tokenize(llamacpp_bin, f32_gguf, "a") == list(tok.encode("a"))


def test_perplexity_matches_llama_perplexity(
    llamacpp_bin: Path,  # noqa: F811
    f32_gguf: Path,
    smollm2: Any,
    text_file: Path,
) -> None:
    ref = perplexity(llamacpp_bin, f32_gguf, text_file, n_ctx=N_CTX, chunks=CHUNKS)
    assert ref.chunks == CHUNKS
    text = text_file.read_text(encoding="utf-8")
    ev = evaluate(smollm2, text, n_ctx=N_CTX, convention="llama.cpp", max_tokens=CHUNKS * N_CTX)
    assert ev.windows == CHUNKS
    assert ev.tokens == CHUNKS * (N_CTX - 1 - N_CTX // 2)
    assert ev.perplexity == pytest.approx(ref.ppl, rel=0.005), (ev.perplexity, ref.ppl)
    assert ev.perplexity_error == pytest.approx(ref.ppl_error, rel=0.05)
    # the windows convention counts every prediction: another, lower-context figure
    windows = evaluate(smollm2, text, n_ctx=N_CTX, max_tokens=CHUNKS * N_CTX)
    assert windows.tokens == CHUNKS * (N_CTX - 1)
    assert windows.perplexity != pytest.approx(ev.perplexity, rel=0.005)


def test_kl_against_itself_is_llamacpps_noise_floor(
    llamacpp_bin: Path,  # noqa: F811
    f32_gguf: Path,
    smollm2: Any,
    text_file: Path,
    tmp_path: Path,
) -> None:
    """llama.cpp stores the base log-probabilities in 16 bits, so a model against itself has
    a KL of about 1e-7 rather than 0; qfast's llama.cpp convention computes the same thing."""
    base = tmp_path / "base.kld"
    args: dict[str, Any] = {"n_ctx": N_CTX, "chunks": CHUNKS}
    perplexity(llamacpp_bin, f32_gguf, text_file, kl_base=base, **args)
    ref = perplexity(llamacpp_bin, f32_gguf, text_file, kl_base=base, kl=True, **args)
    assert ref.kld is not None and abs(ref.kld) < 2e-6
    assert ref.same_top == 1.0
    text = text_file.read_text(encoding="utf-8")
    ev = evaluate(
        smollm2,
        text,
        smollm2,
        n_ctx=N_CTX,
        convention="llama.cpp",
        max_tokens=CHUNKS * N_CTX,
    )
    assert ev.kl_divergence is not None and abs(ev.kl_divergence) < 2e-6
    assert ev.kl_divergence != 0.0  # the 16-bit storage, as llama.cpp computes it
    assert ev.top1_agreement == ref.same_top
    assert ev.perplexity == pytest.approx(ref.ppl, rel=0.005)
    assert ev.reference_perplexity == pytest.approx(ref.ppl_base, rel=0.005)
    # and the windows convention's exact KL of a model against itself is 0
    exact = evaluate(smollm2, text, smollm2, n_ctx=N_CTX, max_tokens=N_CTX)
    assert exact.kl_divergence == 0.0 and exact.top1_agreement == 1.0


def test_f32_gguf_is_cached(llamacpp_bin: Path, f32_gguf: Path) -> None:  # noqa: F811
    assert f32_gguf.is_file() and f32_gguf.parent.parent == llamacpp_bin.parent
    assert Path(assets.smollm2_gguf()).stat().st_size < f32_gguf.stat().st_size
    assert smollm2_f32(llamacpp_bin) == f32_gguf  # keyed on the source's sha256: found again

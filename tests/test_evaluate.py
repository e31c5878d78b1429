"""qfast.evaluate: perplexity under both conventions, KL divergence and top-1 agreement, the
encoder cosine, bits per weight and size, and the ``qfast eval`` command.

The causal checks run a tiny model defined here whose logits are known (a table lookup plus a
running mean of the context plus a position term, so that what is scored and which token
starts each window both matter), against NumPy float64 computations written independently."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qfast
from qfast.model.base import Model, WeightStore
from qfast.model.evaluate import Evaluation, evaluate, weight_stats

F32 = np.float32
F64 = np.float64
VOCAB = 37
MAX_POS = 256


class CharTokenizer:
    """One id per character (1 .. VOCAB-1); BOS is id 0."""

    bos_id = 0

    def __init__(self, add_bos: bool, shift: int = 0) -> None:
        self.add_bos = add_bos
        self.shift = shift

    def encode(self, text: str, *, add_special: bool = True) -> list[int]:
        ids = [1 + (ord(c) + self.shift) % (VOCAB - 1) for c in text]
        return [self.bos_id, *ids] if add_special and self.add_bos else ids


class Tiny(Model):
    """logits[t] = head(onehot(ids[t])) + ctx(mean of onehot(ids[0..t])) + pos[t]."""

    arch = "tiny"
    kind = "causal"

    def linear_names(self) -> list[str]:
        return ["head", "ctx"]

    def logits(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        onehot = np.eye(VOCAB, dtype=F32)[ids]
        running = np.cumsum(onehot, axis=1) / np.arange(1, ids.shape[1] + 1, dtype=F32)[:, None]
        pos = self.weights["pos"][: ids.shape[1]]
        return self.linear(onehot, "head.weight") + self.linear(running, "ctx.weight") + pos


def tiny(seed: int = 0, add_bos: bool = True, scale: float = 2.0, vocab: int = VOCAB) -> Tiny:
    rng = np.random.default_rng(seed)
    tensors = {
        "head.weight": (scale * rng.standard_normal((vocab, VOCAB))).astype(F32),
        "ctx.weight": (scale * rng.standard_normal((vocab, VOCAB))).astype(F32),
        "pos": rng.standard_normal((MAX_POS, vocab)).astype(F32),
    }
    store = WeightStore(
        {k: v.shape for k, v in tensors.items()},
        lambda name: tensors[name],
        dtypes={"pos": "float16"},  # as if the checkpoint held it in float16
    )
    return Tiny(None, store, CharTokenizer(add_bos))


def perturbed(model: Tiny, seed: int, eps: float) -> Tiny:
    other = tiny(add_bos=model.tokenizer.add_bos)
    rng = np.random.default_rng(seed)
    for name in model.weights:
        w = np.asarray(model.weights[name])
        other.weights[name] = w + eps * rng.standard_normal(w.shape).astype(F32)
    return other


TEXT = (
    "The quick brown fox jumps over the lazy dog; 12 + 30 = 42, said nobody in particular. "
    "Pack my box with five dozen liquor jugs!"
)


# --------------------------------------------------------------------------------------------
# NumPy float64 references


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(F64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def scored(model: Tiny, text: str, n_ctx: int, convention: str) -> list[tuple[np.ndarray, ...]]:
    """Per window: (log-probs of the scored rows [rows, vocab], their target ids), computed one
    window at a time."""
    ids = np.array(model.tokenizer.encode(text))
    out = []
    if convention == "windows":
        starts = range(0, len(ids), n_ctx)
        for s in starts:
            w = ids[s : s + n_ctx]
            if len(w) < 2:
                continue
            lp = log_softmax64(model.logits(w[None])[0])
            out.append((lp[:-1], w[1:]))
    else:
        first = n_ctx // 2
        for k in range(len(ids) // n_ctx):
            w = ids[k * n_ctx : (k + 1) * n_ctx].copy()
            if model.tokenizer.add_bos:
                w[0] = model.tokenizer.bos_id
            lp = log_softmax64(model.logits(w[None])[0])
            out.append((lp[first : n_ctx - 1], w[first + 1 :]))
    return out


def nll_values(model: Tiny, text: str, n_ctx: int, convention: str) -> np.ndarray:
    return np.concatenate(
        [-lp[np.arange(len(t)), t] for lp, t in scored(model, text, n_ctx, convention)]
    )


def ppl_and_error(nll: np.ndarray) -> tuple[float, float]:
    mean = nll.mean()
    ppl = math.exp(mean)
    return ppl, ppl * math.sqrt(((nll**2).mean() - mean**2) / (len(nll) - 1))


# --------------------------------------------------------------------------------------------
# perplexity


@pytest.mark.parametrize("convention", ["windows", "llama.cpp"])
def test_uniform_model_has_the_vocabulary_as_perplexity(convention: str) -> None:
    model = tiny(scale=0.0)
    model.weights["pos"] = np.zeros((MAX_POS, VOCAB), F32)
    ev = evaluate(model, TEXT, n_ctx=16, convention=convention)
    assert ev.perplexity == pytest.approx(VOCAB, rel=1e-12)
    assert ev.perplexity_error == pytest.approx(0.0, abs=1e-5)  # rounding of s2/n - mean²


@pytest.mark.parametrize("n_ctx", [16, 23, 200])
def test_windows_convention(n_ctx: int) -> None:
    model = tiny()
    n_tokens = len(model.tokenizer.encode(TEXT))
    ev = evaluate(model, TEXT, n_ctx=n_ctx)
    nll = nll_values(model, TEXT, n_ctx, "windows")
    # every token but the first of each window is predicted once, the remainder included
    windows = -(-n_tokens // n_ctx) - (n_tokens % n_ctx == 1)
    assert ev.windows == windows
    assert ev.tokens == len(nll) == n_tokens - windows - (n_tokens % n_ctx == 1)
    assert ev.text_tokens == n_tokens
    ppl, err = ppl_and_error(nll)
    assert ev.perplexity == pytest.approx(ppl, rel=1e-6)
    assert ev.perplexity_error == pytest.approx(err, rel=1e-4)
    if n_ctx < n_tokens:  # other windows, another value
        assert ev.perplexity != pytest.approx(evaluate(model, TEXT, n_ctx=n_ctx + 1).perplexity)


@pytest.mark.parametrize("n_ctx", [16, 17, 40])
def test_llamacpp_convention(n_ctx: int) -> None:
    model = tiny(add_bos=True)
    n_tokens = len(model.tokenizer.encode(TEXT))
    ev = evaluate(model, TEXT, n_ctx=n_ctx, convention="llama.cpp")
    nll = nll_values(model, TEXT, n_ctx, "llama.cpp")
    assert ev.windows == n_tokens // n_ctx
    assert ev.tokens == len(nll) == (n_tokens // n_ctx) * (n_ctx - 1 - n_ctx // 2)
    ppl, err = ppl_and_error(nll)
    assert ev.perplexity == pytest.approx(ppl, rel=1e-6)
    assert ev.perplexity_error == pytest.approx(err, rel=1e-4)


def test_llamacpp_convention_replaces_each_chunks_first_token_with_bos() -> None:
    """The running-mean term sees the window's first token: scoring without the BOS
    replacement (a vocabulary that adds none) gives a different value, and the right one for
    that vocabulary."""
    with_bos = tiny(add_bos=True)
    text = "x" + TEXT  # the same ids after BOS as `no_bos` sees, plus one
    no_bos = tiny(add_bos=False)
    a = evaluate(with_bos, TEXT, n_ctx=16, convention="llama.cpp").perplexity
    ref_a = ppl_and_error(nll_values(with_bos, TEXT, 16, "llama.cpp"))[0]
    b = evaluate(no_bos, text, n_ctx=16, convention="llama.cpp").perplexity
    ref_b = ppl_and_error(nll_values(no_bos, text, 16, "llama.cpp"))[0]
    assert a == pytest.approx(ref_a, rel=1e-6)
    assert b == pytest.approx(ref_b, rel=1e-6)
    assert a != pytest.approx(b, rel=1e-3)


def test_llamacpp_convention_needs_two_windows() -> None:
    model = tiny()
    n = len(model.tokenizer.encode(TEXT))
    with pytest.raises(ValueError, match=r"at least 2 \* n_ctx"):
        evaluate(model, TEXT, n_ctx=n // 2 + 1, convention="llama.cpp")
    evaluate(model, TEXT, n_ctx=n // 2, convention="llama.cpp")


def test_max_tokens_and_batching() -> None:
    model = tiny()
    ids = model.tokenizer.encode(TEXT)
    short = TEXT[: 100 - 1]  # 100 tokens with BOS
    assert len(model.tokenizer.encode(short)) == 100
    ev = evaluate(model, TEXT, n_ctx=16, max_tokens=100)
    assert ev.text_tokens == 100 < len(ids)
    assert ev.perplexity == pytest.approx(evaluate(model, short, n_ctx=16).perplexity, rel=1e-12)
    for convention in ("windows", "llama.cpp"):
        one = evaluate(model, TEXT, n_ctx=16, convention=convention, batch_size=1)
        many = evaluate(model, TEXT, n_ctx=16, convention=convention, batch_size=5)
        assert one.perplexity == pytest.approx(many.perplexity, rel=1e-6)  # float32 logits
        assert one.tokens == many.tokens


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    model = tiny()
    ev = evaluate(model, TEXT, n_ctx=16, progress=True)
    assert ev.perplexity == pytest.approx(evaluate(model, TEXT, n_ctx=16).perplexity)
    assert "evaluate" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# against a reference


def kl_top1(model: Tiny, reference: Tiny, n_ctx: int, convention: str) -> tuple[np.ndarray, ...]:
    q = scored(model, TEXT, n_ctx, convention)
    p = scored(reference, TEXT, n_ctx, convention)
    lq = np.concatenate([a for a, _ in q])
    lp = np.concatenate([a for a, _ in p])
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return kl, lq.argmax(axis=1) == lp.argmax(axis=1)


def test_kl_and_top1_windows() -> None:
    reference = tiny()
    model = perturbed(reference, seed=5, eps=0.3)
    ev = evaluate(model, TEXT, reference, n_ctx=20)
    kl, same = kl_top1(model, reference, 20, "windows")
    assert ev.tokens == len(kl)
    assert ev.kl_divergence == pytest.approx(kl.mean(), rel=1e-6)
    assert ev.kl_divergence_error == pytest.approx(kl.std() / math.sqrt(len(kl) - 1), rel=1e-6)
    assert 0 < same.mean() < 1
    assert ev.top1_agreement == same.mean()
    p = same.mean()
    assert ev.top1_agreement_error == pytest.approx(math.sqrt(p * (1 - p) / (len(kl) - 1)))
    ref_ppl = ppl_and_error(nll_values(reference, TEXT, 20, "windows"))[0]
    assert ev.reference_perplexity == pytest.approx(ref_ppl, rel=1e-6)
    assert ev.perplexity_ratio == pytest.approx(ev.perplexity / ref_ppl, rel=1e-6)


def test_model_against_itself() -> None:
    model = tiny()
    ev = evaluate(model, TEXT, model, n_ctx=20)
    assert ev.kl_divergence == 0.0
    assert ev.top1_agreement == 1.0
    assert ev.perplexity_ratio == 1.0
    assert ev.reference_perplexity == ev.perplexity


def llamacpp_kl_row(logits: np.ndarray, base_logits: np.ndarray) -> tuple[float, bool]:
    """perplexity.cpp's two log_softmax functions for one token, transliterated line by line
    with float32 scalars: the base's 16-bit codes (--kl-divergence-base), then the KL term."""
    f = F32
    n = len(base_logits)
    # static double log_softmax(int n_vocab, const float * logits, uint16_t * log_prob, int tok)
    max_logit = base_logits[0]
    min_logit = base_logits[0]
    for i in range(1, n):
        max_logit = max(max_logit, base_logits[i])
        min_logit = min(min_logit, base_logits[i])
    min_logit = max(min_logit, f(max_logit - f(16)))
    sum_exp = 0.0
    for i in range(n):
        sum_exp += float(np.exp(f(base_logits[i] - max_logit)))
    log_sum_exp = f(math.log(sum_exp))
    min_log_prob = f(f(min_logit - max_logit) - log_sum_exp)
    scale = f(f(max_logit - min_logit) / f(65535))
    codes = [0] * n
    if scale:
        inv_scale = f(f(1) / scale)
        for i in range(n):
            if base_logits[i] > min_logit:
                v = float(f(inv_scale * f(base_logits[i] - min_logit)))
                codes[i] = round(v)  # nearest_int: round half to even
    # static std::pair<double, float> log_softmax(..., const uint16_t * base_log_prob, ...)
    max_q = logits[0]
    imax = 0
    for i in range(1, n):
        if logits[i] > max_q:
            max_q = logits[i]
            imax = i
    sum_exp = 0.0
    for i in range(n):
        sum_exp += float(np.exp(f(logits[i] - max_q)))
    max_q = f(max_q + f(math.log(sum_exp)))
    total = 0.0
    imax_base = -1
    p_log_base_max = f(0)
    for i in range(n):
        p_log_base = f(f(scale * f(codes[i])) + min_log_prob)
        if i == 0 or p_log_base > p_log_base_max:
            p_log_base_max = p_log_base
            imax_base = i
        if p_log_base > f(-16):
            p_base = f(np.exp(p_log_base))
            total += float(f(p_base * f(f(p_log_base - logits[i]) + max_q)))
    return total, imax == imax_base


def test_kl_llamacpp_convention_is_llamacpps_computation() -> None:
    reference = tiny(add_bos=True, scale=6.0)  # peaked: some log-probs below -16
    model = perturbed(reference, seed=7, eps=0.5)
    n_ctx = 24
    ev = evaluate(model, TEXT, reference, n_ctx=n_ctx, convention="llama.cpp")
    ids = np.array(reference.tokenizer.encode(TEXT))
    kl, same = [], []
    for k in range(len(ids) // n_ctx):
        w = ids[k * n_ctx : (k + 1) * n_ctx].copy()
        w[0] = 0
        q = model.logits(w[None])[0]
        p = reference.logits(w[None])[0]
        for j in range(n_ctx // 2, n_ctx - 1):
            v, s = llamacpp_kl_row(q[j], p[j])
            kl.append(v)
            same.append(s)
    assert ev.tokens == len(kl)
    assert ev.kl_divergence == pytest.approx(np.mean(kl), rel=1e-6)
    assert ev.top1_agreement == np.mean(same)
    # and close to the exact KL: the 16-bit codes and the -16 cutoff change it a little
    exact, _ = kl_top1(model, reference, n_ctx, "llama.cpp")
    assert ev.kl_divergence == pytest.approx(exact.mean(), rel=0.02)
    assert ev.kl_divergence != exact.mean()


def test_reference_with_another_vocabulary() -> None:
    model = tiny()
    other = tiny(seed=1)
    other.tokenizer = CharTokenizer(True, shift=3)
    with pytest.raises(ValueError, match="tokenize the text differently"):
        evaluate(model, TEXT, other, n_ctx=16)
    wider = tiny(seed=1, vocab=VOCAB + 1)
    with pytest.raises(ValueError, match=r"37 columns, the reference's 38"):
        evaluate(model, TEXT, wider, n_ctx=16)


def test_bad_arguments() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="convention"):
        evaluate(model, TEXT, convention="hf")
    with pytest.raises(TypeError, match="n_ctx"):
        evaluate(model, TEXT, n_ctx=True)
    with pytest.raises(ValueError, match="n_ctx"):
        evaluate(model, TEXT, n_ctx=1)
    with pytest.raises(TypeError, match="text"):
        evaluate(model, b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2"):
        evaluate(model, "")
    with pytest.raises(TypeError, match="causal language model or an encoder"):
        evaluate(object(), TEXT)
    model.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        evaluate(model, TEXT)


# --------------------------------------------------------------------------------------------
# bits per weight and size


def test_bits_per_weight_and_size(tmp_path: Path) -> None:
    model = tiny()
    n_head = n_ctx = VOCAB * VOCAB
    n_pos = MAX_POS * VOCAB
    stats = weight_stats(model)
    assert stats["bits_per_weight_linear"] == 32.0
    assert stats["bits_per_weight"] == pytest.approx(
        (32 * (n_head + n_ctx) + 16 * n_pos) / (n_head + n_ctx + n_pos)
    )
    assert stats["weights"] == n_head + n_ctx + n_pos
    assert stats["linear_weights"] == n_head + n_ctx
    assert stats["size_kind"] == "in memory"  # no source file
    assert stats["size_bytes"] == 4 * (n_head + n_ctx) + 2 * n_pos

    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"\0" * 12345)
    model.source = source
    stats = weight_stats(model)
    assert (stats["size_kind"], stats["size_bytes"]) == ("on disk", 12345)

    qt = qfast.quantize(np.asarray(model.weights["head.weight"]), 4, group_size=16)
    model.weights["head.weight"] = qt
    ev = evaluate(model, TEXT, n_ctx=16)
    assert ev.size_kind == "in memory"  # replaced since loading
    assert ev.bits_per_weight_linear == pytest.approx((8 * qt.nbytes + 32 * n_ctx) / (2 * n_head))
    assert ev.size_bytes == qt.nbytes + 4 * n_ctx + 2 * n_pos
    assert ev.bits_per_weight == pytest.approx(8 * ev.size_bytes / ev.weights)


def test_folder_size_counts_its_tensor_files(tmp_path: Path) -> None:
    model = tiny()
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 234)
    (tmp_path / "tokenizer.json").write_text("{}")
    model.source = tmp_path
    assert weight_stats(model)["size_bytes"] == 1234


def test_gguf_block_types_count_their_bits() -> None:
    pytest.importorskip("gguf")
    from qfast.model.evaluate import _element_bits

    assert _element_bits("Q4_1") == 5.0  # 32 codes of 4 bits, a float16 scale and minimum
    assert _element_bits("Q8_0") == 8.5
    assert _element_bits("F16") == _element_bits("float16") == _element_bits("bfloat16") == 16


def test_table() -> None:
    reference = tiny()
    ev = evaluate(perturbed(reference, 3, 0.1), TEXT, reference, n_ctx=16)
    table = str(ev)
    assert table == ev.table()
    for needle in (
        "perplexity",
        "reference perplexity",
        "KL divergence",
        "top-1 agreement",
        "bits/weight (linears)",
        "bits/weight (all)",
        "size",
        "in memory",
        "seconds",
        f"{ev.perplexity:.4f}",
        f"{ev.kl_divergence:.6f}",
    ):
        assert needle in table, needle
    assert ev.seconds > 0


# --------------------------------------------------------------------------------------------
# encoders


@pytest.fixture(scope="module")
def minilm() -> Any:
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    from qfast.model.arch.bert import Bert

    return Bert.load()


def perturbed_bert(bert: Any, eps: float) -> Any:
    from qfast.model.arch.bert import Bert

    rng = np.random.default_rng(0)
    tensors = {
        k: v + eps * np.abs(v).mean() * rng.standard_normal(v.shape).astype(F32)
        if k.endswith("dense.weight")
        else v
        for k, v in bert.tensors.items()
    }
    return Bert(bert.config, tensors, bert.tokenizer)


def test_encoder_against_itself_and_a_perturbed_copy(minilm: Any) -> None:
    from qfast.calibration.text import heldout_paragraphs

    texts = [" ".join(p.split()[:30]) for p in heldout_paragraphs(8)]  # short: a fast test
    ev = evaluate(minilm, "\n".join(texts), minilm)
    assert ev.kind == "encoder" and ev.tokens == 8
    assert ev.cosine_mean == pytest.approx(1.0, abs=1e-6)
    assert ev.cosine_min == pytest.approx(1.0, abs=1e-6)

    noisy = perturbed_bert(minilm, 0.5)
    ev = evaluate(noisy, texts, minilm, batch_size=3)
    a = noisy.embed(texts).astype(F64)
    b = minilm.embed(texts).astype(F64)
    cos = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() < 0.999
    assert ev.cosine_mean == pytest.approx(cos.mean(), abs=1e-6)
    assert ev.cosine_min == pytest.approx(cos.min(), abs=1e-6)
    assert ev.bits_per_weight == 32.0
    assert "cosine (mean)" in ev.table()


def test_encoder_needs_a_reference(minilm: Any) -> None:
    with pytest.raises(ValueError, match="reference"):
        evaluate(minilm, "some text")
    with pytest.raises(ValueError, match="same kind"):
        evaluate(minilm, "some text", tiny())


# --------------------------------------------------------------------------------------------
# qfast eval


def run_eval(argv: list[str]) -> int:
    """``qfast eval ARGV`` as cli.main runs a command (parse, run, one-line errors, exit 2)."""
    from qfast.cli import evaluate as _cli_eval
    from qfast.cli._common import PROG, CLIError, Parser

    parser = Parser(prog=PROG)
    sub = parser.add_subparsers(dest="command", required=True)
    _cli_eval.add_parser(sub)
    try:
        args: argparse.Namespace = parser.parse_args(["eval", *argv])
        return int(args.func(args))
    except CLIError as e:
        import sys

        print(e, file=sys.stderr)
        return 2


@pytest.fixture
def fake_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    """``qfast eval`` loads tiny models: ``model.gguf`` a perturbed copy of ``ref.gguf``."""
    from qfast.cli import evaluate as _cli_eval

    paths = {"model": tmp_path / "model.gguf", "ref": tmp_path / "ref.gguf"}
    for p in paths.values():
        p.write_bytes(b"x" * 100)
    reference = tiny()
    models = {
        str(paths["ref"]): reference,
        str(paths["model"]): perturbed(reference, 1, 0.2),
    }

    def load(path: str) -> Any:
        if path not in models:
            raise ValueError(f"{path}: not a checkpoint qfast can read")
        return models[path]

    monkeypatch.setattr(_cli_eval, "_load_model", load)
    return paths


def test_cli_eval(capsys: pytest.CaptureFixture[str], fake_loader: dict[str, Path]) -> None:
    text = fake_loader["model"].parent / "text.txt"
    text.write_text(TEXT + "\n")
    argv = [str(fake_loader["model"]), "--reference", str(fake_loader["ref"])]
    assert run_eval([*argv, "--text", str(text), "--ctx", "20", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    model, reference = tiny(), tiny()
    expected = evaluate(perturbed(reference, 1, 0.2), TEXT + "\n", reference, n_ctx=20)
    assert f"{expected.perplexity:.4f}" in out
    assert f"{expected.kl_divergence:.6f}" in out
    assert "KL divergence" in out and "top-1 agreement" in out

    # llama.cpp's convention drops the trailing newline, as llama-perplexity -f does
    assert run_eval([*argv, "--text", str(text), "--ctx", "16", "--convention", "llama.cpp"]) == 0
    out = capsys.readouterr().out
    expected = evaluate(model, TEXT, n_ctx=16, convention="llama.cpp")
    assert f"{expected.perplexity:.4f}" in out


def test_cli_eval_default_text(
    capsys: pytest.CaptureFixture[str], fake_loader: dict[str, Path]
) -> None:
    from qfast.calibration.text import heldout_paragraphs
    from qfast.cli.evaluate import DEFAULT_PARAGRAPHS

    assert run_eval([str(fake_loader["ref"]), "--ctx", "64", "--max-tokens", "2000"]) == 0
    out = capsys.readouterr().out
    text = "\n".join(heldout_paragraphs(DEFAULT_PARAGRAPHS))
    expected = evaluate(tiny(), text, n_ctx=64, max_tokens=2000)
    assert f"{expected.perplexity:.4f}" in out
    assert "2,000" in out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["missing.gguf"], "missing.gguf: no such file or directory"),
        (["{model}", "--reference", "missing.gguf"], "missing.gguf: no such file"),
        (["{other}"], "cannot load the model .*other.gguf: .*not a checkpoint qfast can read"),
        (["{model}", "--text", "missing.txt"], "--text missing.txt: no such file"),
        (["{model}", "--text", "{empty}"], "is empty"),
        (["{model}", "--text", "{latin1}"], "not UTF-8"),
        (["{model}", "--convention", "llama.cpp", "--text", "{short}"], "at least 2 \\* n_ctx"),
        (["{model}", "--ctx", "0"], "expected a positive integer"),
        (["{model}", "--convention", "hf"], "invalid choice"),
    ],
)
def test_cli_eval_errors(
    capsys: pytest.CaptureFixture[str],
    fake_loader: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    match: str,
) -> None:
    folder = fake_loader["model"].parent
    monkeypatch.chdir(folder)
    (folder / "other.gguf").write_bytes(b"")
    (folder / "empty.txt").write_text("\n")
    (folder / "latin1.txt").write_bytes("café".encode("latin-1"))
    (folder / "short.txt").write_text("short")
    names = {
        "model": fake_loader["model"],
        "other": folder / "other.gguf",
        "empty": folder / "empty.txt",
        "latin1": folder / "latin1.txt",
        "short": folder / "short.txt",
    }
    assert run_eval([a.format(**names) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("qfast")
    import re

    assert re.search(match, lines[0]), lines[0]


def test_evaluation_defaults() -> None:
    ev = Evaluation(model="m", kind="causal")
    assert ev.kl_divergence is None and ev.notes == []
    assert "perplexity" in ev.table()

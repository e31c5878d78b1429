"""The model level on the real models: SmolLM2-135M (the GGUF the asset script fetches) and
all-MiniLM-L6-v2, against references that share no code with qfast's forward passes.

- SmolLM2's logits, from the GGUF (llama.cpp's permuted Q/K rows) and from its Hugging Face
  export (``save_hf``), match ``tests/llama_reference.py`` (a plain float64 forward pass) on
  32 tokens of held-out text, within a tolerance derived from float32 rounding as
  ``test_llama.py`` derives it (the same reference run in float32 shows how far an honest
  float32 computation strays).
- W4 (RTN, group 64) and W8 (RTN, per output channel) SmolLM2 built by hand with
  ``qfast.rtn``: with ``compute="float"`` the W4 model's logits are the reference's with the
  dequantized weights; with ``compute="int8"`` every linear of its forward pass is its input
  rounded to INT8 per row times the dequantized weight (linear by linear: see that test for
  why not at the logits); ``qfast.evaluate`` against the float model orders them sensibly.
- all-MiniLM-L6-v2 through ``qfast.evaluate`` against sentence-transformers' mean pooling over
  ONNX Runtime's forward pass of ``tests/bert_onnx.py``'s graph; a W8A8 MiniLM is lower.
- ``qfast eval`` on a W4 SmolLM2 folder in qfast's format, with the GGUF as the reference.

The figures for a longer text (4 windows of 512 tokens) come from
``scripts/real_model_table.py``, not from these tests.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from llama_reference import forward as reference_forward
from test_llama import SMOLLM2, fake_int8, float32_tolerance, llama_cpp_permute

import qfast
import qfast.assets
from qfast.calibration.text import heldout_paragraphs
from qfast.model.arch.llama import Llama
from qfast.model.checkpoint import load_model
from qfast.model.evaluate import evaluate
from qfast.model.export import save_hf

TOKENS = 32
F32_EPS = float(np.finfo(np.float32).eps)
HEADS, KV_HEADS = SMOLLM2["num_attention_heads"], SMOLLM2["num_key_value_heads"]


def hf_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permuted Q/K rows back to Hugging Face's, written here (the inverse of
    test_llama's copy of llama.cpp's permute, checked on each use)."""
    d = w.shape[0] // n_head
    out = w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(llama_cpp_permute(out, HEADS, n_head), w)
    return out


def reference_tensors(model: Any, replace: dict[str, np.ndarray] | None = None) -> dict:
    """The GGUF model's tensors by Hugging Face name, Q/K rows in Hugging Face's order (what
    the reference reads); ``replace``: float arrays to use instead, GGUF rows."""
    out = {}
    for name in model.weights:
        w = (replace or {}).get(name)
        w = np.asarray(model.weights[name]) if w is None else w
        if ".self_attn.q_proj." in name:
            w = hf_rows(w, HEADS)
        elif ".self_attn.k_proj." in name:
            w = hf_rows(w, KV_HEADS)
        out[name] = w
    return out


@pytest.fixture(scope="module")
def smollm2() -> Any:
    return load_model(qfast.assets.smollm2_gguf())


@pytest.fixture(scope="module")
def ids(smollm2: Any) -> np.ndarray:
    """The first TOKENS tokens of the first held-out paragraph."""
    ids = smollm2.tokenizer.encode(heldout_paragraphs(1)[0])
    assert len(ids) > TOKENS
    return np.array(ids[:TOKENS])


@pytest.fixture(scope="module")
def tensors(smollm2: Any) -> dict:
    return reference_tensors(smollm2)


@pytest.fixture(scope="module")
def reference(tensors: dict, ids: np.ndarray) -> tuple[np.ndarray, float]:
    """The float64 reference's logits and the float32 tolerance."""
    ref = reference_forward(SMOLLM2, tensors, list(ids))
    return ref, float32_tolerance(SMOLLM2, tensors, ids[None], [ref])


@pytest.fixture(scope="module")
def hf_folder(smollm2: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf(smollm2, tmp_path_factory.mktemp("smollm2") / "hf")


def test_smollm2_gguf_logits_match_the_reference(smollm2, ids, reference):
    ref, tol = reference
    got = smollm2.logits(ids[None])[0]
    assert smollm2.qk_layout == "gguf"
    print(f"GGUF: max |logit - reference| {np.abs(got - ref).max():.3g}, tolerance {tol:.3g}")
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    # the tolerance tells layouts apart: the permuted rows read as Hugging Face's are far off
    wrong = Llama(smollm2.config, smollm2.weights, qk_layout="hf").logits(ids[None])[0]
    assert np.abs(wrong - ref).max() > 100 * tol
    # and it is float32 rounding: a small fraction of the logits' scale
    assert tol < 1e-3 * np.abs(ref).max()


def test_smollm2_hf_export_logits_match_the_reference(hf_folder, tensors, ids, reference):
    ref, tol = reference
    model = load_model(hf_folder)
    assert model.qk_layout == "hf"
    from safetensors.numpy import load_file

    stored = load_file(str(hf_folder / "model.safetensors"))
    for name in (
        "model.layers.5.self_attn.q_proj.weight",
        "model.layers.5.self_attn.k_proj.weight",
    ):
        np.testing.assert_array_equal(stored[name], tensors[name])
    np.testing.assert_allclose(model.logits(ids[None])[0], ref, rtol=0, atol=tol)


# --------------------------------------------------------------------------------------------
# W8 and W4 models built by hand


def quantized(bits: int, group_size: int | None, compute: str = "int8") -> Any:
    """SmolLM2 with every linear replaced by qfast.rtn(W, bits, group_size)."""
    model = load_model(qfast.assets.smollm2_gguf(), compute=compute)
    for layer in model.linear_names():
        name = f"{layer}.weight"
        model.weights[name] = qfast.rtn(model.weights[name], bits=bits, group_size=group_size)
    return model


@pytest.fixture(scope="module")
def w4() -> Any:
    return quantized(4, 64)


@pytest.fixture(scope="module")
def w8() -> Any:
    return quantized(8, None)


@pytest.fixture(scope="module")
def w4_reference(w4: Any, smollm2: Any, ids: np.ndarray) -> tuple[dict, np.ndarray]:
    """The W4 model's dequantized weights (GGUF rows), the reference's tensors with them."""
    deq = {f"{n}.weight": qfast.dequantize(w4.weights[f"{n}.weight"]) for n in w4.linear_names()}
    tensors = reference_tensors(smollm2, deq)
    return deq, reference_forward(SMOLLM2, tensors, list(ids))


def test_w4_float_compute_is_the_dequantized_model(w4, smollm2, ids, reference, w4_reference):
    ref, tol = reference
    deq, ref_deq = w4_reference
    # the tolerance is the float model's: the same shapes and magnitudes, other weight values
    assert np.abs(ref_deq - ref).max() > 100 * tol  # 4-bit weights are visible
    w4.compute = "float"
    try:
        got = w4.logits(ids[None])[0]
    finally:
        w4.compute = "int8"
    np.testing.assert_allclose(got, ref_deq, rtol=0, atol=tol)
    substituted = load_model(qfast.assets.smollm2_gguf())  # float weights, dequantized W4
    for name, w in deq.items():
        substituted.weights[name] = w
    np.testing.assert_allclose(got, substituted.logits(ids[None])[0], rtol=0, atol=tol)


def test_w4_int8_compute_is_int8_activations_times_the_dequantized_weights(
    w4, ids, reference, w4_reference
):
    """compute="int8": every linear of the forward pass over real text gives its input rounded
    to INT8 per row (``qfast.quantize(x, 8, axis=0)``) times the dequantized weight, within
    float32 rounding; the logits are the int8 model's.

    Checked linear by linear, on the inputs the forward pass itself produced: through the
    whole model the int8 logits cannot be compared with the reference run with the same
    rounding applied (as test_llama.test_quantized_linears does on random weights).
    SmolLM2's GGUF weights lie on Q8_0 / Q4_1 grids, so some activations fall exactly on an
    INT8 rounding tie (observed: x / scale = -4.5 in layer 0's q_proj input), which float32
    and float64 break differently; each flipped code perturbs the inputs of the next
    quantized linears, which flip more codes, and at the logits the float32 and float64 runs
    of that reference differ by about as much (~5) as activation rounding itself moves them.
    """
    _, tol = reference
    deq, ref_deq = w4_reference
    assert w4.compute == "int8"
    calls: list[tuple[str, np.ndarray, np.ndarray]] = []
    inner = w4.linear

    def record(x: np.ndarray, name: str, *args: Any, **kw: Any) -> np.ndarray:
        y = inner(x, name, *args, **kw)
        if isinstance(w4.weights[name], qfast.QTensor):
            calls.append((name, np.array(x), np.array(y)))
        return y

    w4.linear = record  # the instance's method: the forward pass calls self.linear
    try:
        got = w4.logits(ids[None])[0]
    finally:
        del w4.linear
    assert [n for n, _, _ in calls] == list(deq)  # every linear, in order, as a QTensor
    worst, seen = 0.0, math.inf
    for name, x, y in calls:
        xq = fake_int8(x)
        w = deq[name].astype(np.float64)
        want = xq @ w.T
        # float32 rounding of the scales' products and of the sums over groups, whose terms
        # are the codes' products and the zero point's correction (scale * zero point * the
        # sum of the activation codes): those cancel where the result is near 0
        qt = w4.weights[name]
        zero = np.abs(qt.scale.astype(np.float64) * qt.zero_point)
        zero = np.repeat(zero, qt.group_size, axis=1)[:, : w.shape[1]]
        bound = 4 * F32_EPS * (np.abs(xq) @ (np.abs(w) + zero).T)
        assert (np.abs(y - want) <= bound).all(), name
        worst = max(worst, float((np.abs(y - want) / bound).max()))
        # the INT8 rounding is visible: x itself times the weight is further off
        seen = min(seen, float(np.abs(x.astype(np.float64) @ w.T - want).max() / bound.max()))
    print(f"worst linear error: {worst:.3f} of the bound; INT8 rounding >= {seen:.1f} x bound")
    assert seen > 10
    # and the int8 logits are off the float W4 model's by activation rounding, not more
    effect = np.abs(got - ref_deq).max()
    assert 10 * tol < effect < 0.2 * np.abs(ref_deq).max()


@pytest.fixture(scope="module")
def short_text() -> str:
    return "\n".join(heldout_paragraphs(8))


def test_evaluate_w8_and_w4_against_float(w8, w4, smollm2, short_text):
    """Two windows of 128 tokens: perplexity, KL and top-1 against the float model in both
    compute modes, ordered as quantization orders them. The bounds hold with a wide margin
    (observed figures in the comments) and fail for a broken kernel or weight layout, whose
    logits are noise (KL of several nats, top-1 near 0)."""
    kw = {"n_ctx": 128, "max_tokens": 256}
    ev: dict[tuple[str, str], Any] = {}
    for name, model in (("W8", w8), ("W4", w4)):
        for compute in ("float", "int8"):
            model.compute = compute
            try:
                ev[name, compute] = evaluate(model, short_text, smollm2, **kw)
            finally:
                model.compute = "int8"
    for (name, compute), e in ev.items():
        assert e.tokens == 254 and e.windows == 2, (name, compute)
        assert e.reference_perplexity == pytest.approx(ev["W8", "float"].reference_perplexity)
        print(
            f"{name} {compute}: ppl {e.perplexity:.4f} ratio {e.perplexity_ratio:.4f} "
            f"KL {e.kl_divergence:.5f} top-1 {e.top1_agreement:.4f} "
            f"bits {e.bits_per_weight_linear:.3f}"
        )
    ref_ppl = ev["W8", "float"].reference_perplexity
    assert 5 < ref_ppl < 50  # SmolLM2 on Wikipedia text (observed 23.4)
    w8f, w8i, w4f, w4i = ev["W8", "float"], ev["W8", "int8"], ev["W4", "float"], ev["W4", "int8"]
    # observed: W8 float KL 0.0039, top-1 95.3%, ratio 0.999; W8 int8 KL 0.041, top-1 89.8%
    assert 0 < w8f.kl_divergence < 0.01 and w8f.top1_agreement > 0.9
    assert abs(w8f.perplexity_ratio - 1) < 0.02
    assert 0 < w8i.kl_divergence < 0.1 and w8i.top1_agreement > 0.8
    assert w8f.kl_divergence < w8i.kl_divergence  # INT8 activations add error
    # observed: W4 float KL 0.54, top-1 58.7%, ratio 1.29; W4 int8 KL 0.58, 57.1%, 1.35
    for e in (w4f, w4i):
        assert max(w8f.kl_divergence, w8i.kl_divergence) < e.kl_divergence < 1.0
        assert 0.45 < e.top1_agreement < min(w8f.top1_agreement, w8i.top1_agreement)
        assert 1.0 < e.perplexity_ratio < 1.6
    # bits per weight of the linears: codes + float32 scales (+ 4-bit zero points per group)
    assert 8.0 < w8f.bits_per_weight_linear < 8.1  # 8 + 32 / 576 or 32 / 1536 per row
    assert 4.5 < w4f.bits_per_weight_linear < 4.6  # 4 + 32 / 64 + 4 / 64
    n = sum(math.prod(w4.weights.shape(f"{n}.weight")) for n in w4.linear_names())
    assert w4f.linear_weights == n
    nbytes = sum(w4.weights[f"{n}.weight"].nbytes for n in w4.linear_names())
    assert w4f.bits_per_weight_linear == pytest.approx(8 * nbytes / n)


# --------------------------------------------------------------------------------------------
# MiniLM against ONNX Runtime


class OnnxMiniLM:
    """sentence-transformers' all-MiniLM-L6-v2 embedding as the existing tests define it:
    ONNX Runtime's last hidden state (tests/bert_onnx.py's graph), the mean over the text's
    tokens (one text per run: no padding), L2-normalised. Tokenized by ``tokenizers`` straight
    from tokenizer.json, truncated at sentence_bert_config.json's max_seq_length."""

    kind = "encoder"
    arch = "onnxruntime"

    def __init__(self, directory: Path) -> None:
        import tokenizers
        from bert_onnx import build_bert, session
        from safetensors.numpy import load_file

        config = json.loads((directory / "config.json").read_text())
        self.session = session(build_bert(load_file(str(directory / "model.safetensors")), config))
        st = json.loads((directory / "sentence_bert_config.json").read_text())
        self.tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=int(st["max_seq_length"]))

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            ids = np.array([self.tokenizer.encode(text).ids], dtype=np.int64)
            (h,) = self.session.run(
                ["last_hidden_state"], {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            )
            mean = h[0].astype(np.float64).mean(axis=0)
            out.append(mean / np.linalg.norm(mean))
        return np.stack(out)


def test_minilm_evaluate_matches_onnxruntime():
    pytest.importorskip("onnxruntime")
    directory = qfast.assets.minilm_dir()
    reference = OnnxMiniLM(directory)
    # 12 paragraphs and one text of 8 more, truncated at 256 tokens as sentence-transformers
    # truncates it
    texts = [*heldout_paragraphs(12), " ".join(heldout_paragraphs(20)[12:])]
    model = load_model(directory)
    assert model.kind == "encoder"
    ev = evaluate(model, texts, reference)
    assert ev.tokens == 13 and ev.reference.startswith("onnxruntime")
    # float32 forward passes: hidden states within ~1e-5 of each other, so 1 - cosine is
    # O(1e-10); 1e-6 leaves room for other BLAS builds and still fails for 8-bit weights
    assert 1 - 1e-6 < ev.cosine_min <= ev.cosine_mean < 1 + 1e-9
    assert any(len(reference.tokenizer.encode(t).ids) == 256 for t in texts)  # truncation

    w8 = load_model(directory, compute="int8")
    for layer in w8.linear_names():
        name = f"{layer}.weight"
        w8.weights[name] = qfast.rtn(w8.weights[name], bits=8, group_size=None)
    q = evaluate(w8, texts, reference)
    print(f"MiniLM float: 1 - cosine mean {1 - ev.cosine_mean:.2e}, max {1 - ev.cosine_min:.2e}")
    print(f"MiniLM W8A8: cosine {q.cosine_mean:.6f} (min {q.cosine_min:.6f})")
    assert 0.99 < q.cosine_min <= q.cosine_mean < 1 - 1e-6  # lower, but close
    assert 8.0 < q.bits_per_weight_linear < 8.1 and ev.bits_per_weight_linear == 32.0


# --------------------------------------------------------------------------------------------
# qfast eval on the real model


def table_rows(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines()[3:]:
        key, _, value = line.partition("  ")
        rows[key.strip()] = value.strip()
    return rows


def test_qfast_eval_cli_on_smollm2(hf_folder, short_text, tmp_path, capsys):
    """A W4 (group 64) SmolLM2 in qfast's format against the float GGUF: the printed table's
    rows are qfast.evaluate's figures for the same models and text."""
    from qfast.cli import main

    folder = tmp_path / "smollm2-w4"
    folder.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_folder / f, folder / f)
    float_model = load_model(hf_folder)
    stored: dict[str, Any] = {n: float_model.weights[n] for n in float_model.weights}
    for layer in float_model.linear_names():
        stored[f"{layer}.weight"] = qfast.rtn(stored[f"{layer}.weight"], bits=4, group_size=64)
    qfast.save(folder / "model.safetensors", stored)
    text = tmp_path / "text.txt"
    text.write_text(short_text, encoding="utf-8")
    gguf = qfast.assets.smollm2_gguf()
    argv = ["eval", str(folder), "--reference", str(gguf), "--text", str(text)]
    assert main([*argv, "--ctx", "128", "--max-tokens", "256", "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert out.splitlines()[0] == f"llama (smollm2-w4) vs reference llama ({Path(gguf).name})"

    want = evaluate(load_model(folder), short_text, load_model(gguf), n_ctx=128, max_tokens=256)
    assert rows["tokens scored"].startswith("254 of 256 (2 windows of up to 128")
    assert rows["perplexity"].startswith(f"{want.perplexity:.4f} ± ")
    assert rows["reference perplexity"].startswith(f"{want.reference_perplexity:.4f} ± ")
    assert rows["perplexity ratio"] == f"{want.perplexity_ratio:.5f}"
    assert rows["KL divergence (mean)"].startswith(f"{want.kl_divergence:.6f} ± ")
    assert rows["top-1 agreement"].startswith(f"{100 * want.top1_agreement:.3f}% ± ")
    assert re.fullmatch(r"4\.5\d\d over 106,168,320 weights", rows["bits/weight (linears)"])
    size = (folder / "model.safetensors").stat().st_size
    assert rows["size"].endswith(f"({size:,} bytes) (on disk)")
    # the figures are a W4A8 model's: clearly off the float model, far from broken
    assert 0.1 < want.kl_divergence < 1.0 and 0.45 < want.top1_agreement < 0.9

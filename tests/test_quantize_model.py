"""qfast.quantize_model: the staged forward pass, every method on a synthetic Llama, qfast's
model format, interrupted runs, bad input, the ``qfast quantize MODEL -o OUT`` command and
all-MiniLM-L6-v2's embeddings after INT8 and GPTQ 4-bit.

The references are independent of the driver: the plain forward pass (``Llama.logits`` /
``Bert.forward``, and the float64 reference of tests/llama_reference.py), GPTQ run by hand on
inputs captured with ``Llama.block``'s capture hook, AWQ's scales searched by hand, and the
QTensors each algorithm gives on its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from llama_reference import forward as reference_forward
from test_checkpoint import TINY, tiny_tensors, write_folder, write_tiny_gguf
from test_llama import float32_tolerance, make_tensors

import qfast
import qfast.assets
import qfast.model.quantize as qm
from qfast.cli import main

from conftest import make_env

# A Llama without GQA (v -> o folds AWQ's scales), widths that groups of 16 and 32 divide.
CFG = {
    **TINY,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 96,
}
SAMPLES, SEQ = 8, 32
IDS = np.random.default_rng(7).integers(0, CFG["vocab_size"], (SAMPLES, SEQ))
EVAL = np.random.default_rng(8).integers(0, CFG["vocab_size"], (2, 24))

RECIPES = {
    "rtn": qfast.Recipe("rtn", bits=4, group_size=16),
    "gptq": qfast.Recipe(
        "gptq",
        bits=4,
        group_size=16,
        symmetric=False,
        act_order=True,
        overrides={"lm_head": {"bits": 8}, "*.down_proj": {"group_size": None}},
    ),
    "awq": qfast.Recipe("awq", bits=4, group_size=16, symmetric=False),
    "hqq": qfast.Recipe("hqq", bits=3, group_size=16),
    "w8a8": qfast.Recipe("w8a8", overrides={"model.layers.1.mlp.*": None}),
}


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    return make_tensors(CFG, seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tensors: dict) -> Path:
    return write_folder(tmp_path_factory.mktemp("llama") / "float", tensors, CFG)


def load(folder: Path) -> Any:
    return qfast.load_model(folder, compute="float")


def qfields(qt: qfast.QTensor) -> dict[str, Any]:
    return {
        "data": np.asarray(qt.data),
        "scale": np.asarray(qt.scale),
        "zero_point": None if qt.zero_point is None else np.asarray(qt.zero_point),
        "g_idx": None if qt.g_idx is None else np.asarray(qt.g_idx),
        "meta": (qt.shape, qt.bits, qt.signed, qt.group_size, qt.axis),
    }


def assert_same_qtensor(got: qfast.QTensor, want: qfast.QTensor, what: str) -> None:
    assert isinstance(got, qfast.QTensor) and isinstance(want, qfast.QTensor), what
    a, b = qfields(got), qfields(want)
    assert a["meta"] == b["meta"], what
    for key in ("data", "scale", "zero_point", "g_idx"):
        if b[key] is None:
            assert a[key] is None, f"{what}: {key}"
        else:
            assert a[key].dtype == b[key].dtype, f"{what}: {key} dtype"
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")


def no_leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# -- 2. the staged forward pass is the plain one ---------------------------------------------


def staged(model: Any, batch: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Runs calibration_batch + block_stage 0..4 per block as quantize_model does; returns
    the final CalibrationBatch and each group's input (by its linears' names)."""
    st = model.calibration_batch(batch)
    inputs: dict[str, np.ndarray] = {}
    for i in range(model.num_blocks):
        groups = model.block_groups(i)
        x = None
        for k in range(len(groups) + 1):
            x = model.block_stage(i, k, st.h, x, st.ctx)
            if k < len(groups):
                x = np.array(x)  # the driver copies each group's input out of the stage
                for name in groups[k].names:
                    inputs[name] = x
        assert x is None  # the last stage finishes the block
    return st, inputs


@pytest.mark.parametrize("name", ["llama", "llama-bias-mha", "qwen2-bias-tied-window"])
def test_llama_stages_equal_the_forward_pass(name: str) -> None:
    from test_llama import CONFIGS, build, make_ids

    cfg = CONFIGS[name]
    t = make_tensors(cfg)
    model = build(cfg, t)
    ids = make_ids(cfg, batch=3)
    captured: dict[str, np.ndarray] = {}
    want = model.logits(ids, capture=lambda n, x: captured.setdefault(n, x.copy()))
    st, inputs = staged(model, ids)
    assert st.real is None
    # the groups cover each block's linears, in execution order
    names = [n for i in range(model.num_blocks) for g in model.block_groups(i) for n in g.names]
    assert names == [n for n in model.linear_names() if n != "lm_head"]
    # the same float32 operations in the same order: bit for bit
    for n in names:
        np.testing.assert_array_equal(inputs[n].reshape(captured[n].shape), captured[n], n)
    np.testing.assert_array_equal(model.head(st.h), want)
    head = model.head_group()
    if cfg.get("tie_word_embeddings"):
        assert head is None
    else:
        assert head.names == ("lm_head",) and head.fold == "model.norm.weight"
        x = model.head_input(st.h, st.ctx)
        np.testing.assert_array_equal(x.reshape(captured["lm_head"].shape), captured["lm_head"])
    # and both are the float64 reference's, within what float32 costs
    ref = [reference_forward(cfg, t, list(row)) for row in ids]
    tol = float32_tolerance(cfg, t, ids, ref)
    np.testing.assert_allclose(model.head(st.h), np.stack(ref), rtol=0, atol=tol)


@pytest.fixture(scope="module")
def minilm() -> Any:
    return qfast.load_model(qfast.assets.minilm_dir(), compute="float")


def test_bert_stages_equal_the_forward_pass_on_padded_batches(minilm: Any) -> None:
    texts = [
        "A short one.",
        "Quantization maps float weights onto a small grid of integers, one scale per group.",
        "Two sentences of middling length. The second is here to pad the first.",
    ]
    for batch in (texts, texts[:1], texts[::-1]):
        ids, mask = minilm.tokenize(batch, 64)
        real = mask.astype(bool)
        assert real.sum() < real.size or len(batch) == 1  # padded (rows of different lengths)
        captured: dict[str, np.ndarray] = {}
        want = minilm.forward(ids, mask, capture=captured)
        st, inputs = staged(minilm, (ids, mask))
        np.testing.assert_array_equal(st.real, real)
        # every real position is the forward pass's, exactly (padding positions are free)
        np.testing.assert_array_equal(st.h[real], want[real])
        for n in minilm.linear_names():
            np.testing.assert_array_equal(inputs[n][real], captured[n], n)
        # padding does not leak: each text alone gives its rows of the padded batch
        for row, text in enumerate(batch):
            one_ids, one_mask = minilm.tokenize([text], 64)
            alone, _ = staged(minilm, (one_ids, one_mask))
            np.testing.assert_allclose(alone.h[0], st.h[row, : one_ids.shape[1]], rtol=0, atol=2e-5)


# -- 3a. every method: in memory = written = loaded ------------------------------------------


@pytest.mark.parametrize("method", list(RECIPES))
def test_each_method_in_memory_equals_the_written_folder(
    method: str, folder: Path, tensors: dict, tmp_path: Path
) -> None:
    recipe = RECIPES[method]
    calls: list[tuple[int, int, str]] = []
    mem = qfast.quantize_model(load(folder), recipe, IDS, samples=SAMPLES, seq_len=SEQ)
    out = tmp_path / "q"
    disk = qfast.quantize_model(
        load(folder),
        recipe,
        IDS,
        samples=SAMPLES,
        seq_len=SEQ,
        output=out,
        progress=lambda *a: calls.append(a),
    )
    back = qfast.load_model(out)  # compute from recipe.json
    assert calls[0] == (0, 3, recipe.describe()) and calls[-1] == (3, 3, "done")
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert no_leftovers(tmp_path, "q") == []
    # the folder: shards per block + the rest, the index, config, recipe
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert qfast.Recipe.from_json((out / "recipe.json").read_text()) == recipe
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "qfast"
    assert config["quantization_config"]["method"] == recipe.method
    for m in (mem, disk, back):
        assert m.recipe == recipe
        assert m.compute == ("int8" if method == "w8a8" else "float")
    assert mem.quantize_report.output is None and disk.quantize_report.output == out

    n_quantized = 0
    for name in mem.linear_names():
        w = name + ".weight"
        spec = recipe.resolve(name)
        if spec is None:
            for m in (mem, disk, back):
                assert isinstance(m.weights[w], np.ndarray), name
            if method != "awq":
                np.testing.assert_array_equal(disk.weights[w], tensors[w])
            continue
        n_quantized += 1
        q = mem.weights[w]
        assert q.bits == spec.bits, name
        if spec.group_size is None:  # one grid per row
            assert q.group_size in (None, q.shape[1]) and np.asarray(q.scale).size == q.shape[0]
        else:
            assert q.group_size == spec.group_size
        assert_same_qtensor(disk.weights[w], q, f"{method} {name} (written)")
        assert_same_qtensor(back.weights[w], q, f"{method} {name} (loaded)")
    assert len(mem.quantize_report.layers) == n_quantized
    for name in mem.weights:  # norms, embeddings (AWQ's folded norms too)
        if not isinstance(mem.weights[name], qfast.QTensor):
            np.testing.assert_array_equal(disk.weights[name], mem.weights[name], name)
    want = mem.logits(EVAL)
    np.testing.assert_array_equal(disk.logits(EVAL), want)
    np.testing.assert_array_equal(back.logits(EVAL), want)
    # quantized, not copied: close to the float model, not equal
    ref = load(folder).logits(EVAL)
    err = np.abs(want - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.25, err

    # the report's sizes from the shapes and the QTensors
    r = mem.quantize_report
    qparams = sum(
        np.prod(t.shape) for n, t in tensors.items() if mem.weights.stored_dtype(n) == "qtensor"
    )
    assert r.quantized_params == qparams
    assert r.float_params == sum(t.size for t in tensors.values()) - qparams
    qbytes = sum(mem.weights[n].nbytes for n in tensors if mem.weights.stored_dtype(n) == "qtensor")
    assert r.bits_per_weight == pytest.approx(8 * qbytes / qparams)
    assert r.calibration_tokens == (SAMPLES * SEQ if recipe.calibrated else 0)
    table = r.table()
    assert recipe.describe() in table and f"{r.bits_per_weight:.3f} bits/weight" in table


@pytest.mark.parametrize("method", ["rtn", "hqq", "w8a8"])
def test_weight_only_methods_are_the_algorithms_on_each_weight(
    method: str, folder: Path, tensors: dict
) -> None:
    recipe = RECIPES[method]
    q = qfast.quantize_model(load(folder), recipe)  # no calibration needed (nor read)
    for name in q.linear_names():
        spec = recipe.resolve(name)
        if spec is None:
            continue
        W = tensors[name + ".weight"]
        if method == "rtn":
            want = qfast.rtn(W, spec.bits, spec.group_size, spec.symmetric, scale_dtype="float16")
        elif method == "hqq":
            want = qfast.hqq(W, spec.bits, spec.group_size)
        else:
            want = qfast.quantize(W, 8, symmetric=True, axis=0, scale_dtype="float16")
        assert_same_qtensor(q.weights[name + ".weight"], want, name)


def test_recipe_mse_is_the_grid_search(folder: Path, tensors: dict) -> None:
    """``mse=True`` reaches the reference grid's range search: every linear is
    ``qfast.rtn(..., mse=True)``, and differs from the min / max grid somewhere."""
    recipe = qfast.Recipe("rtn", bits=3, group_size=32, mse=True)
    q = qfast.quantize_model(load(folder), recipe)
    differs = False
    for name in q.linear_names():
        spec = recipe.resolve(name)
        if spec is None:
            continue
        W = tensors[name + ".weight"]
        want = qfast.rtn(W, 3, 32, True, mse=True, scale_dtype="float16")
        assert_same_qtensor(q.weights[name + ".weight"], want, name)
        plain = qfast.rtn(W, 3, 32, True, scale_dtype="float16")
        differs |= not np.array_equal(want.dequantize(), plain.dequantize())
    assert differs


# -- 3b. GPTQ: block-sequential and true-sequential, by hand ---------------------------------


def capture(run: Any, *args: Any) -> dict[str, np.ndarray]:
    """Each linear's input in one call of ``run(*args, capture=...)``."""
    seen: dict[str, np.ndarray] = {}
    run(*args, capture=lambda n, x: seen.setdefault(n, x.copy()))
    return seen


def gptq_by_hand(model: Any, recipe: qfast.Recipe, batches: list[np.ndarray]) -> dict:
    """GPTQ over the whole model with only the plain forward pass: each group's input is
    captured (Llama.block's hook) with the groups before it quantized, over every batch."""
    W = {n: np.array(model.weights[n + ".weight"]) for n in model.linear_names()}
    hs = [model.embed(b) for b in batches]
    out = {}

    def quantize(names: list[str], rows: list[np.ndarray]) -> None:
        X = np.concatenate(rows)
        H = qfast.Hessian(X.shape[1]).add(X)
        for n in names:
            s = recipe.resolve(n)
            qt = qfast.gptq(
                W[n], hessian=H, bits=s.bits, group_size=s.group_size, symmetric=s.symmetric,
                act_order=s.act_order, damp=s.damp, scale_dtype=s.scale_dtype,
            )  # fmt: skip
            out[n] = qt
            model.weights[n + ".weight"] = qt.dequantize(np.float32)

    for i in range(model.config.num_hidden_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        for group in (
            [a + "q_proj", a + "k_proj", a + "v_proj"],
            [a + "o_proj"],
            [m + "gate_proj", m + "up_proj"],
            [m + "down_proj"],
        ):
            rows = []
            for h in hs:
                seen = capture(model.block, i, h)
                rows.append(seen[group[0]])
            quantize(group, rows)
        hs = [model.block(i, h) for h in hs]
    rows = []
    for h in hs:
        rows.append(capture(model.head, h)["lm_head"])
    quantize(["lm_head"], rows)
    return out


def test_gptq_is_block_and_true_sequential(folder: Path, monkeypatch, tmp_path: Path) -> None:
    recipe = RECIPES["gptq"]
    # 2 windows per batch: 4 batches flow through the stages
    monkeypatch.setattr(qm, "BATCH_TOKENS", 2 * SEQ)
    got = qfast.quantize_model(
        load(folder), recipe, IDS, samples=SAMPLES, seq_len=SEQ, output=tmp_path / "q"
    )
    batches = [IDS[i : i + 2] for i in range(0, SAMPLES, 2)]
    want = gptq_by_hand(load(folder), recipe, batches)
    assert sorted(want) == sorted(got.quantize_report.layers)
    for n, qt in want.items():
        assert_same_qtensor(got.weights[n + ".weight"], qt, n)
    assert got.weights["lm_head.weight"].bits == 8
    assert np.asarray(got.weights["model.layers.0.mlp.down_proj.weight"].scale).size == 32
    # and the order matters: GPTQ on the float model's inputs gives other codes
    model = load(folder)
    seen: dict[str, np.ndarray] = {}
    h = model.embed(IDS)
    model.block(0, h, capture=lambda n, x: seen.setdefault(n, x.copy()))
    name = "model.layers.0.self_attn.o_proj"
    s = recipe.resolve(name)
    naive = qfast.gptq(
        np.array(model.weights[name + ".weight"]), seen[name], bits=s.bits,
        group_size=s.group_size, symmetric=s.symmetric, act_order=s.act_order, damp=s.damp,
        scale_dtype=s.scale_dtype,
    )  # fmt: skip
    assert not np.array_equal(np.asarray(naive.data), np.asarray(want[name].data))


class Tok:
    """A character tokenizer with BOS (the calls quantize_model makes: encode, bos_id)."""

    bos_id = 1
    add_bos = True

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        assert add_special is False
        return [2 + ord(c) % 90 for c in text]


def test_gptq_text_calibration_is_cut_into_windows(folder: Path, monkeypatch) -> None:
    """Text goes through the tokenizer and is cut into consecutive windows, BOS first."""

    text = "the quick brown fox jumps over the lazy dog; " * 8
    model = load(folder)
    model.tokenizer = Tok()
    got = qfast.quantize_model(model, RECIPES["gptq"], text, samples=4, seq_len=16)
    codes = np.array([2 + ord(c) % 90 for c in text])[: 4 * 15].reshape(4, 15)
    windows = np.concatenate([np.ones((4, 1), int), codes], axis=1)
    want = qfast.quantize_model(load(folder), RECIPES["gptq"], windows, samples=4, seq_len=16)
    for n in want.quantize_report.layers:
        assert_same_qtensor(got.weights[n + ".weight"], want.weights[n + ".weight"], n)
    assert got.quantize_report.calibration_tokens == 64


# -- 3c. AWQ: folded scales ------------------------------------------------------------------


def test_awq_folds_scales_consistently(folder: Path, tensors: dict, tmp_path: Path) -> None:
    recipe = RECIPES["awq"]
    q = qfast.quantize_model(
        load(folder), recipe, IDS, samples=SAMPLES, seq_len=SEQ, output=tmp_path / "q"
    )
    bits, g = recipe.bits, recipe.group_size
    # (1) the written model is its tensors as written: dequantized linears and folded norms
    # run by the plain float forward pass give its logits
    plain = load(folder)
    for name in plain.weights:
        w = q.weights[name]
        plain.weights[name] = w.dequantize(np.float32) if isinstance(w, qfast.QTensor) else w
    want = plain.logits(EVAL)
    np.testing.assert_allclose(q.logits(EVAL), want, rtol=0, atol=1e-5 * np.abs(want).max())

    # (2) block 0's q/k/v scales, searched by hand on the float model's input: the input
    # norm is the original divided by them, and q / k are AWQ's codes (not clipped)
    f = load(folder)
    seen: dict[str, np.ndarray] = {}
    f.block(0, f.embed(IDS), capture=lambda n, x: seen.setdefault(n, x.copy()))
    a = "model.layers.0.self_attn."
    qkv = [tensors[a + t + "_proj.weight"] for t in "qkv"]
    sd = recipe.scale_dtype  # float16, as AWQ checkpoints store scales
    res = qfast.awq(qkv, seen[a + "q_proj"], bits, g, False, clip=False, scale_dtype=sd)
    norm = "model.layers.0.input_layernorm.weight"
    np.testing.assert_array_equal(q.weights[norm], tensors[norm] / res.scales)
    assert not np.allclose(res.scales, 1)  # the fold did something
    for t, qt in zip("qk", res.qweights):
        assert_same_qtensor(q.weights[f"{a}{t}_proj.weight"], qt, t)
    # v is clipped (AutoAWQ clips all but q / k): awq's own clip step on the same scales
    clipped = qfast.awq(qkv, seen[a + "q_proj"], bits, g, False, scale_dtype=sd)
    np.testing.assert_array_equal(clipped.scales, res.scales)
    v = q.weights[a + "v_proj.weight"]
    np.testing.assert_array_equal(np.asarray(v.data), np.asarray(clipped.qweights[2].data))
    np.testing.assert_array_equal(v.zero_point, clipped.qweights[2].zero_point)
    # o's scales fold into v's rows (no GQA): v's grid is AWQ's divided by o's scales
    o_in: dict[str, np.ndarray] = {}
    f.weights[norm] = tensors[norm] / res.scales
    for t, qt in zip("qkv", (*res.qweights[:2], clipped.qweights[2])):
        f.weights[f"{a}{t}_proj.weight"] = qt.dequantize(np.float32)
    f.block(0, f.embed(IDS), capture=lambda n, x: o_in.setdefault(n, x.copy()))
    o_scales = qfast.awq(
        [tensors[a + "o_proj.weight"]], o_in[a + "o_proj"], bits, g, False, clip=False
    ).scales
    want_scale = np.asarray(clipped.qweights[2].scale, np.float32) / o_scales[:, None]
    np.testing.assert_array_equal(np.asarray(v.scale), want_scale.astype(np.float16))
    # (3) every norm of the model is the original divided by positive scales, and the
    # function is kept: AWQ's error against the float model is RTN's or less (not a wrong fold)
    for name, w in tensors.items():
        if name.endswith("layernorm.weight"):
            ratio = w / q.weights[name]
            assert np.all(ratio > 0) and not np.allclose(ratio, 1), name
    # lm_head stays float (ignored): nothing folds into the final norm
    np.testing.assert_array_equal(q.weights["model.norm.weight"], tensors["model.norm.weight"])
    ref = load(folder).logits(EVAL)
    rtn = qfast.quantize_model(
        load(folder), qfast.Recipe("rtn", bits=4, group_size=16, symmetric=False)
    )
    err_awq = np.abs(q.logits(EVAL) - ref).mean()
    err_rtn = np.abs(rtn.logits(EVAL) - ref).mean()
    assert err_awq < 1.2 * err_rtn, (err_awq, err_rtn)


# -- 3c'. a small BERT: padded calibration batches, AWQ's fold into value's rows and bias --


@pytest.fixture(scope="module")
def tiny_bert(minilm: Any) -> Any:
    """A 2-layer BERT of width 32 with random weights and MiniLM's tokenizer."""
    from qfast.model.arch.bert import Bert
    from qfast.model.base import WeightStore

    config = json.loads((qfast.assets.minilm_dir() / "config.json").read_text())
    config |= {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}
    config["num_hidden_layers"] = 2
    rng = np.random.default_rng(0)
    t = {}
    for name, shape in Bert.tensor_shapes(config).items():
        if name.endswith("LayerNorm.weight"):
            a = 1 + 0.2 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            a = 0.1 * rng.standard_normal(shape)
        elif "embeddings" in name:
            a = rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[1])
        t[name] = a.astype(np.float32)

    def make() -> Any:
        store = WeightStore({n: a.shape for n, a in t.items()}, lambda n: t[n])
        return Bert.from_config(config, store, minilm.tokenizer)

    return make, t


def test_bert_gptq_and_awq_on_padded_batches(tiny_bert: Any) -> None:
    from qfast.calibration.text import calibration_paragraphs, heldout_paragraphs

    make, t = tiny_bert
    texts, calibration = heldout_paragraphs(16), calibration_paragraphs(16)
    want = make().embed(texts)

    def loss(m: Any) -> float:  # 1 - mean cosine against the float model
        g = m.embed(texts)
        cos = np.sum(g * want, axis=1) / np.linalg.norm(g, axis=1) / np.linalg.norm(want, axis=1)
        return 1 - float(cos.mean())

    rtn = qfast.quantize_model(make(), qfast.Recipe("rtn", bits=4, group_size=16, symmetric=False))
    gptq = qfast.quantize_model(make(), qfast.Recipe("gptq", bits=4, group_size=16), calibration)
    awq = qfast.quantize_model(
        make(), qfast.Recipe("awq", bits=4, group_size=16, symmetric=False), calibration
    )
    # the calibration tokens are the real ones (no padding), as the tokenizer counts them
    f = make()
    _, mask = f.tokenize(calibration, f.max_seq_length)
    assert gptq.quantize_report.calibration_tokens == int(mask.sum())
    # layer 0's query: GPTQ on the real rows captured by the plain forward pass (in text
    # order: the Hessian sums the same rows in another order, so a few codes may differ)
    x = f.capture_linear_inputs(calibration, f.max_seq_length)[
        "encoder.layer.0.attention.self.query"
    ]
    query = "encoder.layer.0.attention.self.query.weight"
    by_hand = qfast.gptq(
        t[query], x, bits=4, group_size=16, symmetric=True, act_order=False, damp=0.01,
        scale_dtype="float16",
    )  # fmt: skip
    same = np.mean(np.asarray(gptq.weights[query].data) == np.asarray(by_hand.data))
    assert same >= 0.99, same
    # AWQ's scales of attention.output.dense fold into value's rows and bias
    for i in range(2):
        bias = f"encoder.layer.{i}.attention.self.value.bias"
        ratio = t[bias] / awq.weights[bias]
        assert np.all(ratio > 0) and not np.allclose(ratio, 1), bias
    # the quality order the methods promise (a wrong fold costs AWQ ~10x RTN's loss here)
    assert loss(gptq) < 0.5 * loss(rtn), (loss(gptq), loss(rtn))
    assert loss(awq) < 1.2 * loss(rtn), (loss(awq), loss(rtn))


# -- 3d. a GGUF Llama -> a Hugging Face layout folder ----------------------------------------


@pytest.mark.parametrize("method", ["gptq", "rtn", "awq"])
def test_gguf_model_quantizes_to_a_hf_layout_folder(method: str, tmp_path: Path) -> None:
    t = tiny_tensors(TINY, seed=5)
    write_tiny_gguf(tmp_path / "m.gguf", t)
    hf = write_folder(tmp_path / "hf", t, TINY)
    recipe = qfast.Recipe(
        method, bits=4, group_size=8, symmetric=method != "awq", overrides={"lm_head": {"bits": 8}}
    )
    ids = np.random.default_rng(3).integers(0, TINY["vocab_size"], (8, 16))
    gguf = qfast.load_model(tmp_path / "m.gguf", compute="float")
    assert gguf.qk_layout == "gguf"
    mem = qfast.quantize_model(gguf, recipe, ids, samples=8, seq_len=16)
    assert mem is not gguf and mem.qk_layout == "hf"
    qfast.quantize_model(
        qfast.load_model(tmp_path / "m.gguf", compute="float"), recipe, ids, samples=8,
        seq_len=16, output=tmp_path / "out",
    )  # fmt: skip
    back = qfast.load_model(tmp_path / "out")
    assert back.qk_layout == "hf"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llama"
    x = ids[:2]
    np.testing.assert_array_equal(back.logits(x), mem.logits(x))
    if method == "awq":  # GQA: o_proj has nothing to fold into; only its clip search runs
        assert not np.array_equal(back.weights["model.layers.0.input_layernorm.weight"],
                                  t["model.layers.0.input_layernorm.weight"])  # fmt: skip
        return  # (AWQ's loss sums rows in another order: its scales may differ in the last bit)
    # the rows are Hugging Face's: the same QTensors as quantizing the Hugging Face folder
    from_hf = qfast.quantize_model(
        qfast.load_model(hf, compute="float"), recipe, ids, samples=8, seq_len=16
    )
    for name in from_hf.quantize_report.layers:
        assert_same_qtensor(back.weights[name + ".weight"], from_hf.weights[name + ".weight"], name)
    np.testing.assert_array_equal(back.logits(x), from_hf.logits(x))


# -- 4. interrupted runs ---------------------------------------------------------------------

KILLED = r"""
import sys, time
import numpy as np
import qfast
folder, target, flag = sys.argv[1:4]
def progress(done, total, what):
    if done == 1:
        open(flag, "w").close()
        time.sleep(120)  # block 1's shard is written; wait to be killed
ids = np.random.default_rng(7).integers(0, 96, (8, 32))
qfast.quantize_model(qfast.load_model(folder, compute="float"), "gptq", ids, samples=8,
                     seq_len=32, output=target, progress=progress)
"""


def test_killed_run_leaves_no_target_and_the_rerun_cleans_up(folder: Path, tmp_path: Path) -> None:
    target, flag = tmp_path / "out", tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(folder), str(target), str(flag)],
        env=make_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        shard: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            shard = list(tmp_path.glob(".out.*.tmp/model-00001-of-00003.safetensors"))
            if shard and flag.exists():
                break
            time.sleep(0.05)
        assert shard, proc.communicate(timeout=5) if proc.poll() is not None else "timed out"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    stale = no_leftovers(tmp_path, "out")
    assert len(stale) == 1 and stale[0].endswith(".tmp")
    q = qfast.quantize_model(load(folder), "gptq", IDS, samples=SAMPLES, seq_len=SEQ, output=target)
    assert no_leftovers(tmp_path, "out") == []
    assert q.quantize_report.output == target
    assert qfast.load_model(target).recipe == qfast.Recipe("gptq")


def test_error_mid_run_leaves_nothing(folder: Path, tmp_path: Path) -> None:
    def progress(done: int, total: int, what: str) -> None:
        if done == 2:
            raise RuntimeError("stop here")

    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="stop here"):
        qfast.quantize_model(load(folder), "rtn", output=target, progress=progress)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # and overwriting an existing model keeps the old one until the new one is complete
    qfast.quantize_model(load(folder), "rtn", output=target)
    before = sorted((p.name, p.stat().st_size) for p in target.iterdir())
    with pytest.raises(RuntimeError, match="stop here"):
        qfast.quantize_model(
            load(folder), RECIPES["hqq"], output=target, overwrite=True, progress=progress
        )
    assert sorted((p.name, p.stat().st_size) for p in target.iterdir()) == before
    assert no_leftovers(tmp_path, "out") == []
    assert qfast.load_model(target).recipe == qfast.Recipe("rtn")


# -- 5. bad input ----------------------------------------------------------------------------


def test_bad_input_is_a_clear_error_and_writes_nothing(folder: Path, tmp_path: Path) -> None:
    base = tmp_path / "w"
    base.mkdir()
    out = base / "out"

    def fails(error: type, match: str, model: Any, *args: Any, **kw: Any) -> None:
        with pytest.raises(error, match=match):
            qfast.quantize_model(model, *args, output=out, **kw)
        assert list(base.iterdir()) == [], match

    quantized = qfast.quantize_model(load(folder), "rtn")
    fails(ValueError, "quantized already; quantize_model starts from a float", quantized, "rtn")
    written = tmp_path / "q"
    qfast.quantize_model(load(folder), "rtn", output=written)
    fails(ValueError, "quantized already", qfast.load_model(written), "gptq", IDS)
    # groups that do not divide the input width (32 and 64 wide): AWQ and HQQ reshape rows
    for method in ("awq", "hqq"):
        r = qfast.Recipe(method, group_size=24, symmetric=False)
        fails(
            ValueError,
            f"{method} needs group_size 24 to divide every quantized",
            load(folder),
            r,
            IDS,
        )
    ok = qfast.Recipe("awq", group_size=24, symmetric=False, overrides={"*": {"group_size": 16}})
    qfast.quantize_model(load(folder), ok, IDS, samples=SAMPLES, seq_len=SEQ)  # overrides fix it
    # too little calibration data
    fails(
        ValueError,
        "fewer than the 2 asked for",
        load(folder),
        "gptq",
        np.arange(40) % 96,
        samples=2,
        seq_len=32,
    )
    fails(ValueError, "calibration ids must be", load(folder), "gptq", IDS[None])
    fails(TypeError, "calibration must be text", load(folder), "gptq", 3.5)
    for kw in ({"samples": 0}, {"seq_len": -1}, {"samples": True}, {"seq_len": 2.0}):
        fails(ValueError, "must be a positive int", load(folder), "gptq", IDS, **kw)
    fails(TypeError, "quantize_model takes a qfast Model", {"w": np.zeros((4, 4))}, "rtn")
    fails(TypeError, "recipe must be a qfast.Recipe", load(folder), 4)
    fails(ValueError, "unknown method 'fp4'", load(folder), "fp4")
    fails(ValueError, "no tokenizer, so calibration text cannot be tokenized; pass token ids",
          load(folder), "gptq", "some text to calibrate on")  # fmt: skip
    # an existing output
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        qfast.quantize_model(load(folder), "rtn", output=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in base.iterdir()) == ["out"]
    # an empty folder is fine to fill
    (out / "keep.txt").unlink()
    qfast.quantize_model(load(folder), "rtn", output=out)
    assert (out / "recipe.json").is_file()


def test_too_little_calibration_text(folder: Path, tmp_path: Path) -> None:
    model = load(folder)
    model.tokenizer = Tok()
    # 10 characters: 10 tokens, each window 15 of them after its BOS
    with pytest.raises(ValueError, match="has 10 tokens: 0 windows of 16, fewer than the 4 asked"):
        qfast.quantize_model(
            model, "gptq", "Too short.", samples=4, seq_len=16, output=tmp_path / "o"
        )
    text = ["x" * 60, "y" * 60]  # joined by a blank line: 122 tokens, 8 windows
    with pytest.raises(ValueError, match="has 122 tokens: 8 windows of 16, fewer than the 9 asked"):
        qfast.quantize_model(
            model, RECIPES["awq"], text, samples=9, seq_len=16, output=tmp_path / "o"
        )
    assert list(tmp_path.iterdir()) == []
    # the same text is enough for fewer windows (and text is ignored by weight-only methods)
    qfast.quantize_model(model, RECIPES["gptq"], text, samples=8, seq_len=16)
    qfast.quantize_model(load(folder), "rtn", "Too short.")


# -- 6. the CLI ------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_quantizes_a_model_folder(capsys, folder: Path, tmp_path: Path, tensors: dict) -> None:
    out = tmp_path / "q"
    code, stdout, err = cli(
        capsys,
        "quantize",
        folder,
        "-o",
        out,
        "--method",
        "rtn",
        "--bits",
        "4",
        "--group-size",
        "32",
    )
    assert code == 0, err
    assert "recipe       rtn INT4 symmetric g32" in stdout
    assert "bits/weight" in stdout and "time " in stdout and f"written      {out}" in stdout
    back = qfast.load_model(out)
    assert back.recipe == qfast.Recipe("rtn", bits=4, group_size=32)
    w = "model.layers.1.mlp.up_proj.weight"
    want = qfast.rtn(tensors[w], 4, 32, True, scale_dtype="float16")
    assert_same_qtensor(back.weights[w], want, w)
    # an existing OUT is refused (one line), --overwrite replaces it
    hqq = ("--method", "hqq", "--group-size", "16")
    code, _, err = cli(capsys, "quantize", folder, "-o", out, *hqq)
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    code, _, err = cli(capsys, "quantize", folder, "-o", out, *hqq, "--overwrite")
    assert code == 0, err
    assert qfast.load_model(out).recipe == qfast.Recipe("hqq", group_size=16)


def test_cli_recipe_file_with_a_flag_on_top(capsys, folder: Path, tmp_path: Path) -> None:
    recipe = qfast.Recipe(
        "rtn", bits=4, group_size=16, symmetric=False, overrides={"*.down_proj": {"bits": 8}}
    )
    path = tmp_path / "r.json"
    path.write_text(recipe.to_json())
    out = tmp_path / "q"
    code, stdout, err = cli(capsys, "quantize", folder, "-o", out, "--recipe", path, "--bits", "3")
    assert code == 0, err
    want = recipe.replace(bits=3)
    assert qfast.load_model(out).recipe == want
    assert "rtn INT3 asymmetric g16" in stdout
    back = qfast.load_model(out)
    assert back.weights["model.layers.0.mlp.down_proj.weight"].bits == 8
    assert back.weights["model.layers.0.mlp.up_proj.weight"].bits == 3


def test_cli_legacy_tensor_file_form(capsys, tmp_path: Path) -> None:
    w = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    safetensors.numpy.save_file(
        {"w": w, "b": np.zeros(8, np.float32)}, str(tmp_path / "in.safetensors")
    )
    code, _, err = cli(capsys, "quantize", tmp_path / "in.safetensors", tmp_path / "o.safetensors")
    assert code == 0, err
    back = qfast.load(tmp_path / "o.safetensors")
    assert_same_qtensor(back["w"], qfast.quantize(w, 8, symmetric=True, axis=0), "w")
    np.testing.assert_array_equal(back["b"], np.zeros(8, np.float32))


def test_cli_errors_are_one_line(capsys, folder: Path, tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"method": "fp4"}')
    cases = [
        ((folder, tmp_path / "x.safetensors", "-o", tmp_path / "o"), "give the output once"),
        ((folder, "-o", tmp_path / "o", "--axis", "0"), "--axis / --per-tensor apply to one"),
        ((tmp_path / "missing", "-o", tmp_path / "o"), "no such file or folder"),
        ((folder, "-o", tmp_path / "o", "--recipe", tmp_path / "none.json"), "--recipe"),
        ((folder, "-o", tmp_path / "o", "--recipe", bad_json), "a recipe must be JSON"),
        ((folder, "-o", tmp_path / "o", "--recipe", unknown), "unknown method 'fp4'"),
        ((folder, "-o", tmp_path / "o", "--method", "hqq", "--group-size", "24"), "divide"),
        ((folder,), "no output"),
        ((folder, "--method", "gptq"), "no output"),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, err = cli(capsys, "quantize", *argv)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("qfast quantize: error:"), err
        assert message in err, (message, err)
        assert not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "unknown.json"]


# -- 7. all-MiniLM-L6-v2: embeddings after INT8 and GPTQ 4-bit -------------------------------


@pytest.fixture(scope="module")
def minilm_cosines(minilm: Any) -> dict[str, float]:
    """Mean cosine of all-MiniLM-L6-v2's embeddings of 128 held-out paragraphs, quantized
    (calibrated on 128 paragraphs of the other side of the Wikipedia sample) vs float."""
    from qfast.calibration.text import calibration_paragraphs, heldout_paragraphs

    texts = heldout_paragraphs(128)
    calibration = calibration_paragraphs(128)
    assert not set(texts) & set(calibration)
    want = minilm.embed(texts)
    cosines = {}
    for name, recipe in (
        ("int8", qfast.Recipe("rtn", bits=8, group_size=None)),
        # GPTQ's best grid at 4-bit g128 here: asymmetric, act-order, the MSE range search
        (
            "gptq4",
            qfast.Recipe("gptq", bits=4, group_size=128, symmetric=False, act_order=True, mse=True),
        ),
    ):
        q = qfast.quantize_model(
            qfast.load_model(qfast.assets.minilm_dir(), compute="float"), recipe, calibration
        )
        assert len(q.quantize_report.layers) == 36
        got = q.embed(texts)
        cos = np.sum(got * want, axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
        )
        cosines[name] = float(cos.mean())
    print(f"MiniLM mean embedding cosine on 128 held-out paragraphs: {cosines}")
    return cosines


def test_minilm_int8_keeps_the_embeddings(minilm_cosines: dict[str, float]) -> None:
    assert minilm_cosines["int8"] >= 0.999, minilm_cosines
    # GPTQ 4-bit g128 at least keeps what it gave when this test was written (0.987; RTN 4-bit
    # g128 gives 0.940 symmetric, 0.955 asymmetric)
    assert minilm_cosines["gptq4"] >= 0.985, minilm_cosines


@pytest.mark.xfail(
    strict=True,
    reason="issue 13's must-show, not met: GPTQ 4-bit g128 gives a mean cosine of 0.987 on "
    "MiniLM at best (asymmetric, act-order, MSE grid; symmetric 0.976; asymmetric act-order "
    "g32 0.992)",
)
def test_minilm_gptq4_keeps_the_embeddings(minilm_cosines: dict[str, float]) -> None:
    assert minilm_cosines["gptq4"] >= 0.99, minilm_cosines


def test_a_model_without_stages_is_refused(tmp_path: Path) -> None:
    """A Model that only evaluates (no block stages) is a TypeError naming the protocol,
    before anything is written."""
    from qfast.model.base import Model, WeightStore

    class Flat(Model):
        arch = "flat"
        kind = "causal"

        def linear_names(self) -> list[str]:
            return ["head"]

    w = np.ones((4, 4), np.float32)
    flat = Flat(None, WeightStore({"head.weight": (4, 4)}, lambda name: w))
    with pytest.raises(TypeError, match="stage protocol"):
        qfast.quantize_model(flat, "rtn", output=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []

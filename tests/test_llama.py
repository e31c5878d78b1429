"""The Llama-family forward pass (qfast.model.arch.llama) on small synthetic checkpoints.

Logits are compared with tests/llama_reference.py, a plain float64 forward pass written
separately. The tolerance is what float32 accumulation costs: the same reference run in
float32 shows how far an honest float32 computation of the same model strays from float64,
and qfast's pass may stray a small multiple of that (other summation orders, BLAS blocking).
"""

from __future__ import annotations

import numpy as np
import pytest
from llama_reference import forward as reference_forward
from llama_reference import rope_inv_freq

import qfast
from qfast.model.arch.llama import Llama, LlamaConfig, permute_qk, unpermute_qk
from qfast.model.base import WeightStore

BASE = {
    "model_type": "llama",
    "hidden_size": 48,
    "intermediate_size": 72,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "vocab_size": 61,
    "tie_word_embeddings": False,
    "max_position_embeddings": 64,
    "hidden_act": "silu",
}

CONFIGS = {
    "llama": BASE,
    "llama-odd-tied": {
        **BASE,
        "hidden_size": 36,
        "intermediate_size": 50,
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
        "vocab_size": 53,
        "tie_word_embeddings": True,
    },
    "llama-bias-mha": {
        **BASE,
        "num_key_value_heads": 6,
        "attention_bias": True,
        "mlp_bias": True,
        "num_hidden_layers": 1,
    },
    "llama3-rope": {
        **BASE,
        "num_attention_heads": 3,
        "num_key_value_heads": 3,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    },
    "mistral-window": {
        **BASE,
        "model_type": "mistral",
        "hidden_size": 36,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 10,
        "sliding_window": 4,
    },
    "qwen2-bias-tied-window": {
        **BASE,
        "model_type": "qwen2",
        "tie_word_embeddings": True,
        "use_sliding_window": True,
        "sliding_window": 3,
        "max_window_layers": 1,
    },
}

SEQ = 11
F32_EPS = float(np.finfo(np.float32).eps)


def make_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights that keep activations O(1): linears N(0, 1/in), norms near 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in Llama.tensor_shapes(cfg).items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            t = rng.standard_normal(shape)
        elif name.endswith(".bias"):
            t = 0.5 * rng.standard_normal(shape)
        else:
            t = rng.standard_normal(shape) / np.sqrt(shape[1])
        out[name] = t.astype(np.float32)
    return out


def build(cfg: dict, tensors: dict, **kw) -> Llama:
    shapes = {n: t.shape for n, t in tensors.items()}
    return Llama.from_config(cfg, WeightStore(shapes, lambda n: tensors[n]), None, **kw)


def make_ids(cfg: dict, batch: int = 2, seq: int = SEQ, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg["vocab_size"], (batch, seq))


def float32_tolerance(cfg: dict, tensors: dict, ids: np.ndarray, ref64: list) -> float:
    """A small multiple of the float32 reference's own deviation from float64."""
    dev = max(
        np.abs(reference_forward(cfg, tensors, list(row), dtype=np.float32) - r).max()
        for row, r in zip(ids, ref64)
    )
    scale = max(np.abs(r).max() for r in ref64)
    return 4.0 * float(dev) + 8 * F32_EPS * scale


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_reference(name):
    cfg = CONFIGS[name]
    tensors = make_tensors(cfg)
    model = build(cfg, tensors)
    ids = make_ids(cfg)
    got = model.logits(ids)
    assert got.dtype == np.float32 and got.shape == (2, SEQ, cfg["vocab_size"])
    ref = [reference_forward(cfg, tensors, list(row)) for row in ids]
    tol = float32_tolerance(cfg, tensors, ids, ref)
    for b in range(len(ids)):
        np.testing.assert_allclose(got[b], ref[b], rtol=0, atol=tol)


def test_sliding_window_and_rope_scaling_change_the_logits():
    """The configs above exercise what they claim: without the window / the scaling the
    reference's logits differ by far more than the tolerance."""
    for name, drop in (
        ("mistral-window", {"sliding_window": None}),
        ("qwen2-bias-tied-window", {"use_sliding_window": False}),
        ("llama3-rope", {"rope_scaling": None}),
    ):
        cfg = CONFIGS[name]
        tensors = make_tensors(cfg)
        ids = make_ids(cfg, batch=1)
        model = build({**cfg, **drop}, tensors)
        ref = reference_forward(cfg, tensors, list(ids[0]))
        assert np.abs(model.logits(ids)[0] - ref).max() > 1e-2, name
    # llama3 scaling: this config has high (unscaled), low (scaled) and medium frequencies.
    scaled = rope_inv_freq(CONFIGS["llama3-rope"])
    plain = rope_inv_freq({**CONFIGS["llama3-rope"], "rope_scaling": None})
    ratio = plain / scaled
    assert np.any(ratio == 1.0) and np.any(np.isclose(ratio, 8.0))
    assert np.any((ratio > 1.0) & (ratio < 8.0) & ~np.isclose(ratio, 8.0))


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (vendor/llama.cpp/conversion/llama.py, 0.3.36), as is."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def test_permute_qk_is_llama_cpps():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6 * 8, 5)).astype(np.float32)
    np.testing.assert_array_equal(permute_qk(w, 6), llama_cpp_permute(w, 6, 6))
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 6), 6), w)
    k = rng.standard_normal((2 * 8, 5)).astype(np.float32)
    np.testing.assert_array_equal(permute_qk(k, 2), llama_cpp_permute(k, 6, 2))
    b = rng.standard_normal(2 * 8).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(b, 2), 2), b)
    # Row 2i of a head holds HF row i, row 2i+1 holds HF row i + d/2.
    p = permute_qk(np.arange(16), 2)
    assert list(p[:8]) == [0, 4, 1, 5, 2, 6, 3, 7]
    with pytest.raises(ValueError, match="heads"):
        permute_qk(w, 5)


@pytest.mark.parametrize("name", ["llama", "mistral-window", "qwen2-bias-tied-window"])
def test_gguf_layout_gives_the_hf_logits(name):
    cfg = CONFIGS[name]
    tensors = make_tensors(cfg)
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    permuted = dict(tensors)
    for n, t in tensors.items():
        if ".q_proj." in n:
            permuted[n] = llama_cpp_permute(t, nh, nh)
        elif ".k_proj." in n:
            permuted[n] = llama_cpp_permute(t, nh, nkv)
    ids = make_ids(cfg)
    hf = build(cfg, tensors).logits(ids)
    gguf = build(cfg, permuted, qk_layout="gguf").logits(ids)
    ref = [reference_forward(cfg, tensors, list(row)) for row in ids]
    tol = float32_tolerance(cfg, tensors, ids, ref)
    np.testing.assert_allclose(gguf, hf, rtol=0, atol=tol)
    # The permuted rows in the HF layout are a different (wrong) model.
    assert np.abs(build(cfg, permuted).logits(ids) - hf).max() > 100 * tol


def test_capture_gives_each_linears_input():
    cfg = CONFIGS["llama-bias-mha"] | {"num_hidden_layers": 2}
    tensors = make_tensors(cfg)
    model = build(cfg, tensors)
    ids = make_ids(cfg, batch=1)
    seen: list[tuple[str, np.ndarray]] = []
    logits = model.logits(ids, capture=lambda n, x: seen.append((n, x)))
    np.testing.assert_array_equal(logits, model.logits(ids))
    assert [n for n, _ in seen] == model.linear_names()
    got = dict(seen)
    for layer in range(2):
        p = f"model.layers.{layer}."
        q, k, v = (got[f"{p}self_attn.{x}_proj"] for x in "qkv")
        assert q is k is v
        assert got[p + "mlp.gate_proj"] is got[p + "mlp.up_proj"]
    record: dict[str, np.ndarray] = {}
    ref = reference_forward(cfg, tensors, list(ids[0]), record=record)
    tol = float32_tolerance(cfg, tensors, ids, [ref])
    assert set(record) == {f"{n}.weight" for n in got}  # the reference records weight names
    for n, x in seen:
        want = record[f"{n}.weight"]
        assert x.dtype == np.float32 and x.shape == want.shape
        scale = np.abs(want).max()
        np.testing.assert_allclose(x, want, rtol=0, atol=tol * max(scale, 1.0), err_msg=n)


def test_tied_models_capture_no_lm_head():
    cfg = CONFIGS["llama-odd-tied"]
    model = build(cfg, make_tensors(cfg))
    names = []
    model.logits(make_ids(cfg), capture=lambda n, x: names.append(n))
    assert names == model.linear_names()
    assert "lm_head" not in names and "lm_head.weight" not in model.weights


def test_block_by_block_equals_logits():
    cfg = CONFIGS["qwen2-bias-tied-window"]
    model = build(cfg, make_tensors(cfg))
    ids = make_ids(cfg)
    h = model.embed(ids)
    assert h.dtype == np.float32 and h.shape == (2, SEQ, cfg["hidden_size"])
    for i in range(cfg["num_hidden_layers"]):
        h = model.block(i, h)
    np.testing.assert_array_equal(model.head(h), model.logits(ids))
    assert model.forward(ids).shape == (2, SEQ, cfg["vocab_size"])


def test_batch_rows_are_independent():
    cfg = CONFIGS["mistral-window"]
    model = build(cfg, make_tensors(cfg))
    ids = make_ids(cfg, batch=3)
    both = model.logits(ids)
    ref = [reference_forward(cfg, make_tensors(cfg), list(row)) for row in ids]
    tol = float32_tolerance(cfg, make_tensors(cfg), ids, ref)
    for b in range(3):
        np.testing.assert_allclose(model.logits(ids[b : b + 1])[0], both[b], rtol=0, atol=tol)


def test_tensor_shapes_and_linear_names():
    cfg = {**BASE, "num_hidden_layers": 1, "head_dim": 10}
    shapes = Llama.tensor_shapes(cfg)
    assert shapes == {
        "model.embed_tokens.weight": (61, 48),
        "model.layers.0.input_layernorm.weight": (48,),
        "model.layers.0.self_attn.q_proj.weight": (60, 48),
        "model.layers.0.self_attn.k_proj.weight": (20, 48),
        "model.layers.0.self_attn.v_proj.weight": (20, 48),
        "model.layers.0.self_attn.o_proj.weight": (48, 60),
        "model.layers.0.post_attention_layernorm.weight": (48,),
        "model.layers.0.mlp.gate_proj.weight": (72, 48),
        "model.layers.0.mlp.up_proj.weight": (72, 48),
        "model.layers.0.mlp.down_proj.weight": (48, 72),
        "model.norm.weight": (48,),
        "lm_head.weight": (61, 48),
    }
    q = Llama.tensor_shapes({**cfg, "model_type": "qwen2", "tie_word_embeddings": True})
    assert q["model.layers.0.self_attn.k_proj.bias"] == (20,)
    assert "model.layers.0.self_attn.o_proj.bias" not in q and "lm_head.weight" not in q
    model = build(cfg, make_tensors(cfg))
    p = "model.layers.0."
    assert model.linear_names() == [
        p + "self_attn.q_proj",
        p + "self_attn.k_proj",
        p + "self_attn.v_proj",
        p + "self_attn.o_proj",
        p + "mlp.gate_proj",
        p + "mlp.up_proj",
        p + "mlp.down_proj",
        "lm_head",
    ]
    assert model.arch == "llama" and model.kind == "causal"


def fake_int8(x: np.ndarray) -> np.ndarray:
    """Each row quantized to symmetric INT8 and back, as compute="int8" does to activations."""
    x32 = np.asarray(x, dtype=np.float32)
    return qfast.dequantize(qfast.quantize(x32, 8, axis=0)).astype(np.float64)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_linears(bits):
    cfg = {**BASE, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4}
    tensors = make_tensors(cfg)
    model = build(cfg, tensors)
    deq = dict(tensors)
    names = [f"{n}.weight" for n in model.linear_names()]
    chosen = names[::2]  # q, v, gate, down of layer 0, k, o, up of layer 1, lm_head
    for n in chosen:
        qt = qfast.rtn(tensors[n], bits=bits, group_size=32)
        model.weights[n] = qt
        deq[n] = qfast.dequantize(qt)
    assert model.weights.replaced() == chosen
    ids = make_ids(cfg)
    ref = [reference_forward(cfg, deq, list(row)) for row in ids]
    tol = float32_tolerance(cfg, deq, ids, ref)
    float_model = build(cfg, tensors)
    drift = np.abs(float_model.logits(ids) - np.stack(ref)).max()
    assert drift > 100 * tol  # quantization is visible; the checks below can fail

    model.compute = "float"
    got = model.logits(ids)
    np.testing.assert_allclose(got, np.stack(ref), rtol=0, atol=tol)

    # int8: activations of the quantized linears are rounded to INT8 per row. The reference
    # with that rounding applied to the same linears' inputs is what the kernel computes;
    # a code may flip where float32 and float64 inputs straddle a rounding tie, so allow a
    # tenth of the activation-quantization effect on top of float rounding.
    model.compute = "int8"
    got = model.logits(ids)

    def act(name, x):
        return fake_int8(x) if name in chosen else x

    aq = [reference_forward(cfg, deq, list(row), act=act) for row in ids]
    aq_effect = max(np.abs(a - r).max() for a, r in zip(aq, ref))
    assert aq_effect > 10 * tol
    err = np.abs(got - np.stack(aq)).max()
    assert err <= 0.1 * aq_effect + tol, (err, aq_effect, tol)


SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "silu",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 100000,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "vocab_size": 49152,
}


def test_config_from_and_to_hf():
    c = LlamaConfig.from_hf(SMOLLM2)
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        576,
        9,
        3,
        64,
    )
    assert c.tie_word_embeddings and c.rope_theta == 100000.0 and c.rms_norm_eps == 1e-5
    assert c.layer_windows == (None,) * 30 and not c.qkv_bias
    hf = c.to_hf()
    assert hf["bos_token_id"] == 0 and hf["torch_dtype"] == "bfloat16"  # kept as given
    assert {k: hf[k] for k in SMOLLM2} == SMOLLM2 | {"rope_theta": 100000.0}
    for cfg in CONFIGS.values():
        c = LlamaConfig.from_hf(cfg)
        assert LlamaConfig.from_hf(c.to_hf()) == c
    q = LlamaConfig.from_hf(CONFIGS["qwen2-bias-tied-window"])
    assert q.qkv_bias and not q.o_bias and q.layer_windows == (None, 3)
    assert q.to_hf()["use_sliding_window"] is True and q.to_hf()["max_window_layers"] == 1
    m = LlamaConfig.from_hf(CONFIGS["mistral-window"])
    assert m.layer_windows == (4, 4) and m.head_dim == 10
    off = LlamaConfig.from_hf({**CONFIGS["qwen2-bias-tied-window"], "use_sliding_window": False})
    assert off.layer_windows == (None, None)
    assert LlamaConfig.from_hf({**BASE, "sliding_window": 4}).layer_windows == (None, None)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model_type": "gpt2"}, "llama, mistral, qwen2"),
        ({"hidden_act": "gelu"}, "silu"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}, "linear"),
        ({"rope_scaling": {"rope_type": "llama3"}}, "factor"),
        ({"num_key_value_heads": 4}, "multiple of num_key_value_heads"),
        ({"num_attention_heads": 5}, "head_dim"),
        ({"head_dim": 7}, "even"),
        ({"hidden_size": None}, "hidden_size"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"intermediate_size": 2.5}, "integer"),
        ({"rms_norm_eps": -1.0}, "rms_norm_eps"),
        ({"model_type": "mistral", "sliding_window": 0}, "sliding_window"),
    ],
)
def test_bad_configs_are_value_errors(change, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig.from_hf({**BASE, **change})


def test_checkpoint_must_match_the_config():
    tensors = make_tensors(BASE)
    with pytest.raises(ValueError, match=r"no tensor 'model\.layers\.2\."):
        build({**BASE, "num_hidden_layers": 3}, tensors)
    with pytest.raises(ValueError, match="shape"):
        build({**BASE, "intermediate_size": 70}, tensors)
    with pytest.raises(ValueError, match="qk_layout"):
        build(BASE, tensors, qk_layout="neox")


def test_bad_ids():
    model = build(BASE, make_tensors(BASE))
    with pytest.raises(TypeError, match="integer"):
        model.logits(np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="integer"):
        model.logits(np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match=r"ids\[None\]"):
        model.logits(np.arange(3))
    with pytest.raises(ValueError, match="2-d"):
        model.logits(np.zeros((1, 1, 3), np.int64))
    with pytest.raises(ValueError, match="empty"):
        model.logits(np.zeros((1, 0), np.int64))
    with pytest.raises(ValueError, match=r"0\.\.60"):
        model.logits([[1, 61]])
    with pytest.raises(ValueError, match=r"0\.\.60"):
        model.logits([[-1, 2]])
    with pytest.raises(ValueError, match="context"):
        model.logits(np.zeros((1, 65), np.int64))
    with pytest.raises(ValueError, match="layer 2"):
        model.block(2, model.embed([[1, 2]]))
    with pytest.raises(ValueError, match="float32"):
        model.block(0, np.zeros((1, 2, 48)))
    assert model.logits(np.array([[1, 60]], np.uint8)).shape == (1, 2, 61)


@pytest.mark.parametrize("rows", [1, 5, 9])
@pytest.mark.parametrize("name", ["llama", "mistral-window", "qwen2-bias-tied-window"])
def test_attention_in_blocks_of_queries(monkeypatch, name, rows):
    """Attention runs a block of query positions at a time (the default block covers these
    short sequences whole): small blocks give the reference's logits too."""
    import qfast.model.arch.llama as arch

    cfg = CONFIGS[name]
    tensors = make_tensors(cfg)
    ids = make_ids(cfg)
    whole = build(cfg, tensors).logits(ids)
    monkeypatch.setattr(arch, "_ATTENTION_ROWS", rows)
    got = build(cfg, tensors).logits(ids)
    ref = [reference_forward(cfg, tensors, list(row)) for row in ids]
    tol = float32_tolerance(cfg, tensors, ids, ref)
    np.testing.assert_allclose(got, np.stack(ref), rtol=0, atol=tol)
    np.testing.assert_allclose(got, whole, rtol=0, atol=tol)


@pytest.mark.parametrize("case", ["overflow", "underflow"])
def test_softmax_far_outside_exps_range(case):
    """Scores beyond exp's float32 range (above 88, or all below -87 in a row) still give the
    reference's softmax: the maximum is subtracted where it matters."""
    cfg = CONFIGS["qwen2-bias-tied-window"] | {"use_sliding_window": False}
    tensors = make_tensors(cfg)
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    for layer in range(cfg["num_hidden_layers"]):
        a = f"model.layers.{layer}.self_attn."
        # q and k biases along each head's slowest-rotating pair (dims d/2-1, d-1): q.k is
        # about +-1600 for every nearby pair of positions, so exp(score) is inf or 0.
        k_sign = 1 if case == "overflow" else -1
        for proj, sign, heads in (
            ("q_proj", 1, cfg["num_attention_heads"]),
            ("k_proj", k_sign, nkv),
        ):
            bias = np.zeros((heads, d), np.float32)
            bias[:, d // 2 - 1] = bias[:, d - 1] = sign * 40 / np.sqrt(2)
            tensors[a + proj + ".bias"] = bias.reshape(-1)
    model = build(cfg, tensors)
    ids = make_ids(cfg)
    captured = {}

    def hook(name, x):
        captured.setdefault(f"{name}.weight", x)

    got = model.logits(ids, capture=hook)
    ref = [reference_forward(cfg, tensors, list(row)) for row in ids]
    tol = float32_tolerance(cfg, tensors, ids, ref)
    np.testing.assert_allclose(got, np.stack(ref), rtol=0, atol=tol)
    # The scores really are out of range.
    x = captured["model.layers.0.self_attn.q_proj.weight"][:SEQ].astype(np.float64)
    q = x @ tensors["model.layers.0.self_attn.q_proj.weight"].T.astype(np.float64)
    q += tensors["model.layers.0.self_attn.q_proj.bias"]
    k = x @ tensors["model.layers.0.self_attn.k_proj.weight"].T.astype(np.float64)
    k += tensors["model.layers.0.self_attn.k_proj.bias"]
    scores = q[:, :d] @ k[:, :d].T / np.sqrt(d)  # head 0 (of kv head 0), before RoPE
    if case == "overflow":
        assert scores.min() > 150
    else:
        assert scores.max() < -150

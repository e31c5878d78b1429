"""GPTQ, AWQ and compressed-tensors checkpoints at the model level: ``model.save(path,
format=...)``, ``quantize_model(..., output=, format=)`` and ``qfast quantize --format``, read
back by ``load_model``.

The references: the in-memory quantized model (its QTensors in the canonical form the readers
return, and its logits), the checkpoint's own files read with safetensors and json, and the
tensor-level unpackers of tests/test_format_packing.py (written from each format's
definition), applied here to every linear of a written checkpoint.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from test_checkpoint import write_folder
from test_format_packing import awq_reference_unpack, ct_reference_unpack, gptq_reference_unpack
from test_llama import make_tensors
from test_quantize_model import CFG, EVAL, IDS, SAMPLES, SEQ

import qfast
import qfast.assets
from qfast.cli import main
from qfast.formats import canonical

FORMATS = ("gptq", "awq", "compressed-tensors")
# Per format: a recipe that uses what the format holds (act-order, per-channel and 8-bit
# overrides, a linear kept in float inside a block) on the synthetic Llama.
RECIPES = {
    "gptq": qfast.Recipe(
        "gptq",
        bits=4,
        group_size=16,
        symmetric=False,
        act_order=True,
        overrides={
            "lm_head": {"bits": 8},
            "*.down_proj": {"group_size": None},
            "model.layers.1.mlp.up_proj": None,
        },
    ),
    "awq": qfast.Recipe("awq", bits=4, group_size=16, symmetric=False),
    "compressed-tensors": qfast.Recipe(
        "gptq",
        bits=4,
        group_size=16,
        act_order=True,
        overrides={"*.down_proj": {"bits": 8}, "model.layers.0.self_attn.o_proj": None},
    ),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("llama") / "float", make_tensors(CFG, 3), CFG)


@pytest.fixture(scope="module")
def quantized(folder: Path) -> dict[str, Any]:
    out = {}
    for fmt, recipe in RECIPES.items():
        model = qfast.load_model(folder, compute="float")
        out[fmt] = qfast.quantize_model(model, recipe, IDS, samples=SAMPLES, seq_len=SEQ)
    return out


def assert_same_model(got: Any, want: Any) -> None:
    """Every tensor equal: QTensors in the canonical form, floats exactly."""
    assert sorted(got.weights) == sorted(want.weights)
    for name in want.weights:
        a, b = got.weights[name], want.weights[name]
        if isinstance(b, qfast.QTensor):
            assert isinstance(a, qfast.QTensor), name
            c = canonical(b)
            assert (a.shape, a.bits, a.signed, a.group_size, a.axis) == (
                c.shape,
                c.bits,
                c.signed,
                c.group_size,
                c.axis,
            ), name
            np.testing.assert_array_equal(np.asarray(a.data), np.asarray(c.data), err_msg=name)
            assert np.asarray(a.scale).dtype == np.float16, name
            np.testing.assert_array_equal(np.asarray(a.scale), np.asarray(c.scale), err_msg=name)
            np.testing.assert_array_equal(a.zero_point, c.zero_point, err_msg=name)
            if c.g_idx is None:
                assert a.g_idx is None, name
            else:
                np.testing.assert_array_equal(a.g_idx, c.g_idx, err_msg=name)
        else:
            assert not isinstance(a, qfast.QTensor), name
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def files(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(safetensors.numpy.load_file(str(f)))
    return out


def qconfig(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())["quantization_config"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_save_load_round_trip_gives_the_same_qtensors_and_logits(
    fmt: str, quantized: dict, tmp_path: Path
) -> None:
    q = quantized[fmt]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        path = q.save(tmp_path / fmt, format=fmt)
    back = qfast.load_model(path)
    assert back.compute == "float"
    assert_same_model(back, q)
    np.testing.assert_array_equal(back.logits(EVAL), q.logits(EVAL))
    # every shard is a "pt" safetensors file (transformers refuses any other), and the index
    # lists every entry of every shard
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in path.glob("*.safetensors"):
        with safetensors.safe_open(str(shard), "np") as f:
            assert f.metadata() == {"format": "pt"}
            assert {k: shard.name for k in f.keys()}.items() <= index.items()
    # a re-export of what was read is the same files
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        again = back.save(tmp_path / "again", format=fmt)
    a, b = files(path), files(again)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert a[k].dtype == b[k].dtype, k


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_linear_decodes_with_the_definition_unpackers(
    fmt: str, quantized: dict, tmp_path: Path
) -> None:
    """The written tensors, decoded by unpackers written from each format's definition (not
    by qfast's), dequantize to the in-memory model's weights."""
    q = quantized[fmt]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        path = q.save(tmp_path / fmt, format=fmt)
    t, cfg = files(path), qconfig(path)
    float_linears = []
    for module in q.linear_names():
        w = q.weights[module + ".weight"]
        if not isinstance(w, qfast.QTensor):
            float_linears.append(module)
            assert module + ".weight" in t and module + ".qweight" not in t
            continue
        want = w.dequantize(np.float32)
        mine = {k[len(module) + 1 :]: v for k, v in t.items() if k.startswith(module + ".")}
        gs = -1 if w.group_size is None else w.group_size
        if fmt == "gptq":
            bits = 8 if module == "lm_head" else 4
            ref = gptq_reference_unpack(mine, bits, gs, w.shape, cfg["checkpoint_format"])
        elif fmt == "awq":
            ref = awq_reference_unpack(mine, cfg["group_size"], w.shape)
        else:
            bits = 8 if module.endswith("down_proj") else 4
            ref = ct_reference_unpack(mine, bits, w.shape)
        g_idx = ref["g_idx"]
        if g_idx is None:
            g_idx = np.arange(w.shape[1]) // (w.shape[1] if gs == -1 else gs)
        scale = np.asarray(ref["scale"], np.float32)[:, g_idx]
        got = scale * (ref["codes"] - ref["zero"][:, g_idx]).astype(np.float32)
        np.testing.assert_array_equal(got, want, err_msg=module)
    if fmt == "compressed-tensors":
        assert sorted(cfg["ignore"]) == sorted(float_linears)
    elif fmt == "awq":
        assert cfg["modules_to_not_convert"] == (float_linears or None)


def test_gptq_v1_zero_point_of_zero_becomes_v2_with_a_warning(
    quantized: dict, tmp_path: Path
) -> None:
    q = quantized["gptq"]
    zero_zero = [
        n
        for n, w in q.weights.items()
        if isinstance(w, qfast.QTensor) and w.zero_point is not None and (w.zero_point == 0).any()
    ]
    assert zero_zero, "the fixture needs a zero point of 0"
    with pytest.warns(UserWarning, match="zero point of 0.*gptq_v2"):
        path = q.save(tmp_path / "auto", format="gptq")
    assert qconfig(path)["checkpoint_format"] == "gptq_v2"
    # the shards written before the switch were rewritten: every qzeros is v2 (true zeros)
    t = files(path)
    for n in zero_zero:
        w = q.weights[n]
        module = n[: -len(".weight")]
        mine = {k[len(module) + 1 :]: v for k, v in t.items() if k.startswith(module + ".")}
        gs = -1 if w.group_size is None else w.group_size
        ref = gptq_reference_unpack(mine, w.bits, gs, w.shape, "gptq_v2")
        np.testing.assert_array_equal(ref["zero"], canonical(w).zero_point, err_msg=n)
    assert_same_model(qfast.load_model(path), q)
    # asked for v1 explicitly: refused, naming the tensor, and nothing is left behind
    with pytest.raises(ValueError, match=r"zero point of row \d+, group \d+ is 0.*gptq_v2"):
        q.save(tmp_path / "v1", format="gptq", checkpoint_format="gptq")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto"]
    # v2 asked for: no switch to announce; the recipe's float up_proj of block 1 (gate_proj
    # quantized) is announced, since vLLM fuses gate / up into one layer
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        q.save(tmp_path / "v2", format="gptq", checkpoint_format="gptq_v2")
    messages = [str(w.message) for w in seen]
    assert not any("zero point" in m for m in messages), messages
    assert any(
        "1 groups of linears that vLLM runs as one fused layer" in m
        and "model.layers.1.mlp.gate_proj, model.layers.1.mlp.up_proj" in m
        for m in messages
    ), messages


def test_symmetric_gptq_writes_v1(folder: Path, tmp_path: Path) -> None:
    q = qfast.quantize_model(
        qfast.load_model(folder), qfast.Recipe("rtn", bits=4, group_size=16), IDS
    )
    path = q.save(tmp_path / "sym", format="gptq")
    cfg = qconfig(path)
    assert (cfg["checkpoint_format"], cfg["sym"], cfg["desc_act"]) == ("gptq", True, False)
    qz = files(path)["model.layers.0.self_attn.q_proj.qzeros"]
    assert (qz.view(np.uint32) == 0x77777777).all()  # 8 - 1 in every nibble (v1)
    assert_same_model(qfast.load_model(path), q)


def test_quantize_model_streams_each_format_and_refuses_before_work(
    folder: Path, tmp_path: Path
) -> None:
    recipe = RECIPES["compressed-tensors"]
    out = qfast.quantize_model(
        qfast.load_model(folder),
        recipe,
        IDS,
        samples=SAMPLES,
        seq_len=SEQ,
        output=tmp_path / "ct",
        format="compressed-tensors",
    )
    mem = qfast.quantize_model(qfast.load_model(folder), recipe, IDS, samples=SAMPLES, seq_len=SEQ)
    assert_same_model(out, mem)
    assert len(list((tmp_path / "ct").glob("model-*.safetensors"))) == CFG["num_hidden_layers"] + 1

    def refused(recipe: Any, fmt: str, match: str, **kw: Any) -> None:
        calls = []
        with pytest.raises(ValueError, match=match):
            qfast.quantize_model(
                qfast.load_model(folder),
                recipe,
                IDS,
                output=tmp_path / "x",
                format=fmt,
                progress=lambda *a: calls.append(a),
                **kw,
            )
        assert not calls and not (tmp_path / "x").exists()

    refused(qfast.Recipe("hqq", bits=4, group_size=16), "gptq", "hqq cannot be written as gptq")
    refused(qfast.Recipe("w8a8"), "compressed-tensors", "w8a8 cannot be written")
    refused(
        qfast.Recipe("rtn", group_size=16, scale_dtype="float32"),
        "gptq",
        "stores float16 scales.*pass scale_dtype='float16'",
    )
    refused(qfast.Recipe("gptq", bits=3, group_size=16), "awq", "AWQ holds 4-bit")
    refused(qfast.Recipe("gptq", group_size=16, act_order=True), "awq", "act-order")
    refused(qfast.Recipe("rtn", bits=3, group_size=16), "compressed-tensors", "2, 4, 8-bit")
    refused(qfast.Recipe("rtn", bits=4, group_size=16), "parquet", "format 'parquet'")
    with pytest.raises(TypeError, match="takes no option checkpoint_format"):
        qfast.quantize_model(
            qfast.load_model(folder), "rtn", output=tmp_path / "x", format="awq",
            checkpoint_format="gptq",
        )  # fmt: skip
    with pytest.raises(ValueError, match="pass output too"):
        qfast.quantize_model(qfast.load_model(folder), "rtn", format="gptq")


def test_save_refuses_what_a_format_cannot_hold_and_leaves_nothing(
    folder: Path, tmp_path: Path
) -> None:
    hqq = qfast.quantize_model(qfast.load_model(folder), qfast.Recipe("hqq", group_size=16))
    for fmt in FORMATS:
        with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight.*float"):
            hqq.save(tmp_path / fmt, format=fmt)
    f32 = qfast.quantize_model(
        qfast.load_model(folder), qfast.Recipe("rtn", group_size=16, scale_dtype="float32")
    )
    with pytest.raises(ValueError, match=r"not float16 values.*scale_dtype='float16'"):
        f32.save(tmp_path / "f32", format="awq")
    f32.save(tmp_path / "ct32", format="compressed-tensors")  # keeps the scales' dtype
    assert files(tmp_path / "ct32")["model.layers.0.mlp.up_proj.weight_scale"].dtype == np.float32
    with pytest.raises(ValueError, match=r"format='gguf' needs type="):
        f32.save(tmp_path / "g", format="gguf")
    for fmt in FORMATS:
        with pytest.raises(ValueError, match="has none: quantize it first"):
            qfast.load_model(folder).save(tmp_path / "float", format=fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct32"]


def test_cli_quantize_format(folder: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "awq"
    args = ["quantize", str(folder), "-o", str(out), "--method", "rtn", "--group-size", "16"]
    rc = main([*args, "--asymmetric", "--format", "awq"])
    assert rc == 0, capsys.readouterr()
    cfg = qconfig(out)
    assert (cfg["quant_method"], cfg["version"], cfg["group_size"]) == ("awq", "gemm", 16)
    assert "model.layers.0.mlp.down_proj.qweight" in files(out)
    assert isinstance(
        qfast.load_model(out).weights["model.layers.1.mlp.up_proj.weight"], qfast.QTensor
    )
    rc = main([*args, "--format", "awq", "--checkpoint-format", "gptq_v2", "--overwrite"])
    assert rc == 2 and "checkpoint_format" in capsys.readouterr().err
    rc = main(["quantize", "in.safetensors", "out.safetensors", "--format", "gptq"])
    assert rc == 2 and "--format" in capsys.readouterr().err


# -- SmolLM2: the real model, every format ---------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_w4() -> Any:
    model = qfast.load_model(qfast.assets.smollm2_gguf(), compute="float")
    recipe = qfast.Recipe("rtn", bits=4, group_size=64, symmetric=False)
    return qfast.quantize_model(model, recipe)


@pytest.mark.parametrize("fmt", FORMATS)
def test_smollm2_round_trip_same_qtensors_and_logits(
    fmt: str, smollm2_w4: Any, tmp_path: Path
) -> None:
    ids = smollm2_w4.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 4)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        path = smollm2_w4.save(tmp_path / fmt, format=fmt)
    back = qfast.load_model(path)
    assert_same_model(back, smollm2_w4)
    np.testing.assert_array_equal(back.logits(np.array([ids])), smollm2_w4.logits(np.array([ids])))


def test_static_groups_act_order_stores_no_permutation(folder: Path, tmp_path: Path) -> None:
    """Act-order on static groups (what current vLLM loads): no permuted g_idx, GPTQ's
    ``desc_act`` false with ``static_groups`` true, compressed-tensors' ``actorder: weight``;
    the codes are GPTQ's with ``static_groups=True`` on the same inputs."""
    recipe = qfast.Recipe("gptq", bits=4, group_size=16, act_order=True, static_groups=True)
    q = qfast.quantize_model(qfast.load_model(folder), recipe, IDS, samples=SAMPLES, seq_len=SEQ)
    assert recipe.describe().endswith("act-order static-groups")
    w = q.weights["model.layers.0.self_attn.q_proj.weight"]
    assert w.g_idx is None and w.meta["static_groups"] and w.meta["act_order"]
    path = q.save(tmp_path / "gptq", format="gptq")
    cfg = qconfig(path)
    assert (cfg["desc_act"], cfg["static_groups"]) == (False, True)
    t = files(path)
    np.testing.assert_array_equal(
        t["model.layers.0.self_attn.q_proj.g_idx"], np.arange(CFG["hidden_size"]) // 16
    )
    assert_same_model(qfast.load_model(path), q)
    path = q.save(tmp_path / "ct", format="compressed-tensors")
    (group,) = qconfig(path)["config_groups"].values()
    assert group["weights"]["actorder"] == "weight"
    assert not any(k.endswith("weight_g_idx") for k in files(path))
    assert_same_model(qfast.load_model(path), q)

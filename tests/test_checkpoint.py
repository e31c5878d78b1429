"""qfast.model.checkpoint.load_model and qfast.model.export.save_hf.

Small synthetic Llama checkpoints (written here with the ``safetensors`` package, the GGUF ones
with ``qfast.gguf.save``) check each container, dtype and error; SmolLM2-135M (the GGUF asset)
checks the name / config mapping and the Hugging Face export against llama.cpp's layout.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

import qfast
import qfast.assets
import qfast.gguf
from qfast.formats.safetensors import SafetensorsFile
from qfast.model import export
from qfast.model.checkpoint import gguf_tensor_name, load_model
from qfast.model.export import save_hf
from qfast.model.tokenizer import require_tokenizer

TINY = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "vocab_size": 40,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}


def tiny_tensors(config: dict[str, Any] = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights for ``config``, named and shaped as Hugging Face stores them (written
    out here, not taken from the Llama module)."""
    rng = np.random.default_rng(seed)
    h, ff, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    d = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (ff, h),
                p + "mlp.up_proj.weight": (ff, h),
                p + "mlp.down_proj.weight": (h, ff),
            }
        )
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, h)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    return out


def write_folder(
    folder: Path,
    tensors: dict[str, np.ndarray],
    config: dict[str, Any] = TINY,
    dtype: Any = np.float32,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    safetensors.numpy.save_file(
        {k: v.astype(dtype) for k, v in tensors.items()}, str(folder / "model.safetensors")
    )
    return folder


def ids(n: int = 7, vocab: int = 40, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(2, n))


# -- Hugging Face folders ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_folder_dtypes_round_trip(tmp_path: Path, dtype: Any) -> None:
    tensors = tiny_tensors()
    m = load_model(write_folder(tmp_path / "m", tensors, dtype=dtype))
    assert m.arch == "llama" and m.tokenizer is None
    assert set(m.weights) == set(tensors)
    for name, w in tensors.items():
        want = w.astype(dtype).astype(np.float32)  # the file's values, as float32
        got = m.weights[name]
        assert got.dtype == np.float32 and got.shape == w.shape
        np.testing.assert_array_equal(got, want)
        assert m.weights.stored_dtype(name) == np.dtype(dtype).name
    assert m.logits(ids()).shape == (2, 7, 40)


def test_tensors_are_read_lazily_through_a_map(tmp_path: Path, monkeypatch) -> None:
    folder = write_folder(tmp_path / "m", tiny_tensors())
    reads: list[str] = []
    raw = SafetensorsFile.raw

    def counting(self: SafetensorsFile, name: str) -> np.ndarray:
        reads.append(name)
        return raw(self, name)

    monkeypatch.setattr(SafetensorsFile, "raw", counting)
    m = load_model(folder)
    assert reads == []  # loading (and validating) reads no tensor data
    w = m.weights["model.layers.1.mlp.up_proj.weight"]
    assert reads == ["model.layers.1.mlp.up_proj.weight"]
    # float32 data is a read-only view of the file's memory map, not a copy
    base: Any = w
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    assert isinstance(base, mmap.mmap)
    assert not w.flags.writeable
    m.weights["model.layers.1.mlp.up_proj.weight"]
    assert len(reads) == 1  # cached once read


def test_sharded_folder(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:10],
        "model-00002-of-00002.safetensors": names[10:],
    }
    weight_map = {}
    for shard, part in shards.items():
        safetensors.numpy.save_file(
            {k: tensors[k].astype(np.float16) for k in part}, str(folder / shard)
        )
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    m = load_model(folder)
    for name, w in tensors.items():
        np.testing.assert_array_equal(m.weights[name], w.astype(np.float16).astype(np.float32))
    # an index that lists a tensor its shards lack
    bad = {"weight_map": {**weight_map, "model.extra.weight": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"lists 1 tensors its shards lack \(model.extra.weight"):
        load_model(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    # an index that names a shard the folder lacks
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model-00002-of-00002.safetensors"):
        load_model(folder)


def test_single_safetensors_file_with_config_beside(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    folder = write_folder(tmp_path / "m", tensors)
    (folder / "model.safetensors").rename(folder / "weights.safetensors")
    m = load_model(folder / "weights.safetensors")
    np.testing.assert_array_equal(m.weights["lm_head.weight"], tensors["lm_head.weight"])
    m2 = load_model(folder)  # the folder's only .safetensors file
    np.testing.assert_array_equal(m2.logits(ids()), m.logits(ids()))


def test_extra_tensors_are_listed_and_ignored(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(2, np.float32)
    tensors["vision_tower.weight"] = np.ones(3, np.float32)
    with pytest.warns(UserWarning, match=r"vision_tower.weight") as rec:
        m = load_model(write_folder(tmp_path / "m", tensors))
    assert "inv_freq" not in str(rec[0].message)
    assert "vision_tower.weight" not in m.weights


def test_qfast_format_folder_loads_qtensors(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    stored: dict[str, Any] = dict(tensors)
    linears = [n for n in tensors if n.endswith("_proj.weight")]
    for name in linears:
        stored[name] = qfast.rtn(tensors[name], bits=4, group_size=8)
    qfast.save(folder / "model.safetensors", stored)
    for compute in ("int8", "float"):
        m = load_model(folder, compute=compute)
        assert m.compute == compute
        for name in linears:
            w = m.weights[name]
            assert isinstance(w, qfast.QTensor)
            assert m.weights.stored_dtype(name) == "qtensor"
            assert m.weights.shape(name) == tensors[name].shape
            np.testing.assert_array_equal(qfast.dequantize(w), qfast.dequantize(stored[name]))
        np.testing.assert_array_equal(m.weights["model.norm.weight"], tensors["model.norm.weight"])
        assert np.isfinite(m.logits(ids())).all()
    # the same model with the dequantized weights in a float folder gives the same float logits
    float_folder = write_folder(
        tmp_path / "f",
        {
            n: (qfast.dequantize(v) if isinstance(v, qfast.QTensor) else v)
            for n, v in stored.items()
        },
    )
    want = load_model(float_folder).logits(ids())
    got = load_model(folder, compute="float").logits(ids())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


# -- bad checkpoints: each a clear error -------------------------------------------------------


def test_missing_path_and_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no such checkpoint"):
        load_model(tmp_path / "nowhere")
    folder = write_folder(tmp_path / "m", tiny_tensors())
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.json"):
        load_model(folder)
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors"):
        load_model(_empty(tmp_path))
    with pytest.raises(ValueError, match=r"compute"):
        load_model(tmp_path, compute="int4")
    with pytest.raises(TypeError, match=r"path"):
        load_model(3)  # type: ignore[arg-type]


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    return folder


def test_unknown_architecture_lists_the_supported_ones(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", tiny_tensors(), config={**TINY, "model_type": "gpt_neox"})
    with pytest.raises(
        ValueError, match=r"unknown architecture.*gpt_neox.*bert, llama, mistral, qwen2"
    ):
        load_model(folder)


def test_config_that_is_not_json(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", tiny_tensors())
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_model(folder)


def _corrupt_header(path: Path) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"#" * n + data[8 + n :])


def _huge_length(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10**12) + data[8:])


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _tiny_file(path: Path) -> None:
    path.write_bytes(b"\x01\x02")


def _bad_offsets(path: Path) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = "model.norm.weight"
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b, e - 4]  # one element short of its shape
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= n
    raw += b" " * (n - len(raw))
    path.write_bytes(data[:8] + raw + data[8 + n :])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_corrupt_header, "header is not JSON"),
        (_huge_length, "header claims"),
        (_truncate, "truncated"),
        (_tiny_file, "less than the 8-byte header length"),
        (_bad_offsets, "model.norm.weight.*needs"),
    ],
)
def test_damaged_safetensors_is_a_clear_error(tmp_path: Path, damage: Any, message: str) -> None:
    folder = write_folder(tmp_path / "m", tiny_tensors())
    damage(folder / "model.safetensors")
    with pytest.raises(ValueError, match=message) as e:
        load_model(folder)
    assert "model.safetensors" in str(e.value)


def test_missing_tensor_and_wrong_shape(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    del tensors["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match=r"missing: model.layers.1.mlp.down_proj.weight"):
        load_model(write_folder(tmp_path / "a", tensors))
    # a config that describes another model than its weights
    folder = write_folder(tmp_path / "b", tiny_tensors(), config={**TINY, "intermediate_size": 32})
    with pytest.raises(ValueError, match=r"wrong shape.*gate_proj.weight is \(24, 16\)"):
        load_model(folder)


def test_missing_tokenizer_is_none_and_then_a_clear_error(tmp_path: Path) -> None:
    m = load_model(write_folder(tmp_path / "m", tiny_tensors()))
    assert m.tokenizer is None
    with pytest.raises(ValueError, match=r"tokenizer.json"):
        require_tokenizer(m, "perplexity")


def test_broken_tokenizer_json_is_a_clear_error(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", tiny_tensors())
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"tokenizer.json"):
        load_model(folder)


# -- GGUF ----------------------------------------------------------------------------------


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, written out here."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def to_gguf_name(name: str) -> str:
    if name in GGUF_NAMES:
        return GGUF_NAMES[name]
    _, _, i, rest = name.split(".", 3)
    return f"blk.{i}.{GGUF_NAMES[rest]}"


def write_tiny_gguf(path: Path, tensors: dict[str, np.ndarray], **extra: Any) -> None:
    c = TINY
    out = {}
    for name, w in tensors.items():
        if name.endswith("q_proj.weight"):
            w = permute(w, c["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = permute(w, c["num_key_value_heads"])
        out[to_gguf_name(name)] = w
    meta = {
        "general.architecture": "llama",
        "llama.block_count": c["num_hidden_layers"],
        "llama.context_length": c["max_position_embeddings"],
        "llama.embedding_length": c["hidden_size"],
        "llama.feed_forward_length": c["intermediate_size"],
        "llama.attention.head_count": c["num_attention_heads"],
        "llama.attention.head_count_kv": c["num_key_value_heads"],
        "llama.attention.layer_norm_rms_epsilon": c["rms_norm_eps"],
        "llama.rope.freq_base": c["rope_theta"],
        "llama.vocab_size": c["vocab_size"],
        **extra,
    }
    qfast.gguf.save(path, out, meta, check=False)


def test_gguf_permuted_qk_gives_the_folders_logits_and_exports_back(
    tmp_path: Path, monkeypatch
) -> None:
    tensors = tiny_tensors()
    write_tiny_gguf(tmp_path / "m.gguf", tensors)
    reads: list[str] = []
    dequantize = qfast.gguf.GGUFTensor.dequantize

    def counting(self: Any) -> np.ndarray:
        reads.append(self.name)
        return dequantize(self)

    monkeypatch.setattr(qfast.gguf.GGUFTensor, "dequantize", counting)
    g = load_model(tmp_path / "m.gguf")
    assert reads == []  # nothing read (or dequantized) until used
    g.weights["model.layers.1.mlp.up_proj.weight"]
    assert reads == ["blk.1.ffn_up.weight"]
    assert g.qk_layout == "gguf" and g.tokenizer is None
    assert g.weights.stored_dtype("model.layers.0.self_attn.q_proj.weight") == "F32"
    hf = load_model(write_folder(tmp_path / "hf", tensors))
    want = hf.logits(ids())
    np.testing.assert_allclose(g.logits(ids()), want, rtol=0, atol=1e-5 * np.abs(want).max())
    # the export un-permutes Q / K: the file holds the Hugging Face weights again
    save_hf(g, tmp_path / "out")
    back = safetensors.numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(back) == set(tensors)
    for name, w in tensors.items():
        np.testing.assert_array_equal(back[name], w)


def test_gguf_with_an_unknown_tensor_or_architecture(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    write_tiny_gguf(tmp_path / "m.gguf", tensors)
    f = qfast.gguf.load(tmp_path / "m.gguf")
    extra = dict(f.tensors)
    extra["rope_freqs.weight"] = np.ones(2, np.float32)
    qfast.gguf.save(tmp_path / "x.gguf", extra, f.metadata, check=False)
    with pytest.raises(ValueError, match=r"rope_freqs.weight"):
        load_model(tmp_path / "x.gguf")
    meta = {k.replace("llama.", "gpt2."): v for k, v in f.metadata.items()}
    meta["general.architecture"] = "gpt2"
    qfast.gguf.save(tmp_path / "y.gguf", dict(f.tensors), meta, check=False)
    with pytest.raises(ValueError, match=r"unknown architecture.*'gpt2'.*llama, qwen2"):
        load_model(tmp_path / "y.gguf")


def test_truncated_gguf_is_a_clear_error(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "m.gguf", tiny_tensors())
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "m.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"m.gguf"):
        load_model(tmp_path / "m.gguf")


@pytest.fixture(scope="module")
def smollm2() -> Any:
    return load_model(qfast.assets.smollm2_gguf())


def test_smollm2_gguf_names_and_config(smollm2: Any) -> None:
    m = smollm2
    f = qfast.gguf.load(qfast.assets.smollm2_gguf())
    c = m.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (576, 1536, 30)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (9, 3, 64)
    assert (c.vocab_size, c.tie_word_embeddings, c.rope_theta) == (49152, True, 100000.0)
    assert c.rms_norm_eps == pytest.approx(1e-5)
    assert m.qk_layout == "gguf"
    assert len(m.weights) == len(f.tensors) == 272  # tied: no lm_head
    for gname, t in f.tensors.items():
        name = gguf_tensor_name(gname)
        assert name is not None and m.weights.shape(name) == t.shape
        assert m.weights.stored_dtype(name) == t.type
    assert m.weights.stored_dtype("model.embed_tokens.weight") == "Q8_0"
    assert m.weights.stored_dtype("model.layers.7.mlp.down_proj.weight") == "Q4_1"
    for gname, name in [
        ("blk.7.ffn_down.weight", "model.layers.7.mlp.down_proj.weight"),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ]:
        np.testing.assert_array_equal(m.weights[name], f.tensors[gname].dequantize())
    assert m.tokenizer is not None and m.tokenizer.vocab_size == 49152


def test_smollm2_hf_export_matches_the_gguf(smollm2: Any, tmp_path: Path) -> None:
    m = smollm2
    out = save_hf(m, tmp_path / "smollm2")
    files = {p.name for p in out.iterdir()}
    assert files == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    want = {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    assert {k: config[k] for k in want} == want
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["bos_token"] == "<|im_start|>" and tok_config["eos_token"] == "<|im_end|>"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    f = qfast.gguf.load(qfast.assets.smollm2_gguf())
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="np") as st:
        names = set(st.keys())
        assert len(names) == 272 and "lm_head.weight" not in names
        for gname, t in f.tensors.items():
            name = gguf_tensor_name(gname)
            assert st.get_slice(name).get_shape() == list(t.shape)
        # Q / K rows back in Hugging Face's order: pairs (2i, 2i+1) of each head -> (i, i + d/2)
        for gname, name, heads in [
            ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight", 9),
            ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight", 3),
        ]:
            g = f.tensors[gname].dequantize()
            hf = st.get_tensor(name)
            d = g.shape[0] // heads
            for h in range(heads):
                for i in range(d // 2):
                    np.testing.assert_array_equal(hf[h * d + i], g[h * d + 2 * i])
                    np.testing.assert_array_equal(hf[h * d + i + d // 2], g[h * d + 2 * i + 1])
            assert st.get_tensor("model.layers.3.self_attn.v_proj.weight").tobytes() == (
                f.tensors["blk.3.attn_v.weight"].dequantize().tobytes()
            )
    back = load_model(out)
    assert back.qk_layout == "hf"
    text = "The capital of France is Paris, and the capital of Germany is"
    assert back.tokenizer.encode(text) == m.tokenizer.encode(text)
    x = np.array([m.tokenizer.encode(text)])
    want_logits = m.logits(x)
    got = back.logits(x)
    np.testing.assert_allclose(got, want_logits, rtol=0, atol=1e-5 * np.abs(want_logits).max())
    assert m.tokenizer.decode([int(want_logits[0, -1].argmax())]) == " Berlin"


def test_save_hf_refuses_existing_folders_and_quantized_weights(tmp_path: Path) -> None:
    m = load_model(write_folder(tmp_path / "m", tiny_tensors()))
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        save_hf(m, tmp_path / "m")
    save_hf(m, tmp_path / "m", overwrite=True)
    modes = {(p.stat().st_mode & 0o777) for p in (tmp_path / "m").iterdir()}
    assert modes == {(tmp_path / "m" / "config.json").stat().st_mode & 0o777}
    assert modes != {0o600} or os.umask(os.umask(0o022)) == 0o177  # not private by accident
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    name = "model.layers.0.mlp.up_proj.weight"
    m.weights[name] = qfast.rtn(m.weights[name], bits=4, group_size=8)
    with pytest.raises(ValueError, match=r"QTensors.*qfast.save"):
        save_hf(m, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_save_hf_is_atomic(tmp_path: Path, monkeypatch) -> None:
    m = load_model(write_folder(tmp_path / "m", tiny_tensors()))

    def fail(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_json", fail)  # Ctrl-C while config.json is written
    with pytest.raises(KeyboardInterrupt):
        save_hf(m, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no folder, no temporary left


def test_qwen2_gguf_keeps_the_hf_rows_and_its_biases(tmp_path: Path) -> None:
    # llama.cpp runs Qwen2 with NeoX RoPE on the rows as Hugging Face stores them (its converter
    # permutes only the llama architecture's Q / K), and keeps the q / k / v biases
    config = {**TINY, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    tensors = tiny_tensors(config)
    rng = np.random.default_rng(5)
    for i in range(config["num_hidden_layers"]):
        for proj in "qkv":
            w = tensors[f"model.layers.{i}.self_attn.{proj}_proj.weight"]
            bias = (0.2 * rng.standard_normal(w.shape[0])).astype(np.float32)
            tensors[f"model.layers.{i}.self_attn.{proj}_proj.bias"] = bias
    names = {**GGUF_NAMES, **{f"self_attn.{p}_proj.bias": f"attn_{p}.bias" for p in "qkv"}}
    out = {}
    for name, w in tensors.items():
        if name in names:
            out[names[name]] = w
        else:
            _, _, i, rest = name.split(".", 3)
            out[f"blk.{i}.{names[rest]}"] = w
    meta = {"general.architecture": "qwen2"}
    for key, value in [
        ("block_count", 2),
        ("context_length", 64),
        ("embedding_length", 16),
        ("feed_forward_length", 24),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
        ("attention.layer_norm_rms_epsilon", 1e-5),
        ("rope.freq_base", 10000.0),
        ("vocab_size", 40),
    ]:
        meta[f"qwen2.{key}"] = value
    qfast.gguf.save(tmp_path / "q.gguf", out, meta, check=False)
    g = load_model(tmp_path / "q.gguf")
    assert g.qk_layout == "hf" and g.config.model_type == "qwen2"
    np.testing.assert_array_equal(
        g.weights["model.layers.1.self_attn.k_proj.bias"],
        tensors["model.layers.1.self_attn.k_proj.bias"],
    )
    want = load_model(write_folder(tmp_path / "hf", tensors, config=config)).logits(ids())
    np.testing.assert_array_equal(g.logits(ids()), want)


def test_sharded_qfast_format(tmp_path: Path) -> None:
    # a QTensor's entries (NAME.qfast_header, NAME.data, ...) are what the index lists
    tensors = tiny_tensors()
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    quantized = {}
    for k, part in enumerate([names[:10], names[10:]]):
        shard = f"model-0000{k + 1}-of-00002.safetensors"
        stored: dict[str, Any] = {}
        for name in part:
            if name.endswith("_proj.weight"):
                stored[name] = quantized[name] = qfast.rtn(tensors[name], bits=4, group_size=8)
            else:
                stored[name] = tensors[name]
        qfast.save(folder / shard, stored)
        weight_map.update(dict.fromkeys(safetensors.numpy.load_file(str(folder / shard)), shard))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    m = load_model(folder)
    for name, q in quantized.items():
        assert isinstance(m.weights[name], qfast.QTensor)
        np.testing.assert_array_equal(qfast.dequantize(m.weights[name]), qfast.dequantize(q))

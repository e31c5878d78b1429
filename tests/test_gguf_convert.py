"""GGUF export from a Hugging Face Llama (``qfast.formats.gguf.convert``,
``qfast.model.gguf_source``), without llama.cpp: the metadata's keys and value types, the
``--outtype`` tensor types, the Q / K layout (read back by qfast's own GGUF reader, same
logits), QTensors written exactly or refused, GPTQ into GGUF from the folder equal to GPTQ from
its F32 GGUF, the importance matrix of the folder, and the refusals (each leaving nothing on
disk). The comparisons with llama.cpp itself are in ``test_gguf_convert_llamacpp.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qfast
from qfast import assets
from qfast.cli import main
from qfast.formats.gguf.requantize import requantize
from qfast.model.arch.llama import permute_qk
from qfast.model.gguf_gptq import gptq_to_gguf


def value_type(name: str) -> Any:
    import gguf

    return gguf.GGUFValueType[name]


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer as qfast writes it for a folder (tokenizer.json and
    tokenizer_config.json), built from the GGUF asset's vocabulary."""
    from qfast.model.export import tokenizer_config
    from qfast.model.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(qfast.gguf.load(assets.smollm2_gguf()).metadata)
    out = tmp_path_factory.mktemp("tok")
    tok.save(out / "tokenizer.json")
    cfg = tokenizer_config(tok, {"max_position_embeddings": 512})
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


def synthetic_hf(
    folder: Path,
    tokenizer_from: Path | None,
    *,
    hidden: int = 64,
    ffn: int = 128,
    heads: int = 4,
    kv: int = 2,
    layers: int = 2,
    tied: bool = False,
    vocab: int = 49152,
    seed: int = 5,
    scales: tuple[float, float, float] = (1.0, 0.25, 0.06),
) -> Path:
    """A random Llama in Hugging Face's layout with ``tokenizer_from``'s tokenizer files.
    ``scales``: the embedding's, Q / K's and the other linears' (Q / K large enough that
    attention is far from uniform, so a wrong Q / K layout shows)."""
    from qfast.formats.safetensors import safetensors_numpy

    rng = np.random.default_rng(seed)
    hd = hidden // heads
    emb, qk, other = scales

    def w(*shape: int, s: float) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    t = {"model.embed_tokens.weight": w(vocab, hidden, s=emb)}
    if not tied:
        t["lm_head.weight"] = w(vocab, hidden, s=other)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + w(hidden, s=0.1)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1 + w(hidden, s=0.1)).astype(np.float32)
        t[p + "self_attn.q_proj.weight"] = w(heads * hd, hidden, s=qk)
        t[p + "self_attn.k_proj.weight"] = w(kv * hd, hidden, s=qk)
        t[p + "self_attn.v_proj.weight"] = w(kv * hd, hidden, s=other)
        t[p + "self_attn.o_proj.weight"] = w(hidden, heads * hd, s=other)
        t[p + "mlp.gate_proj.weight"] = w(ffn, hidden, s=other)
        t[p + "mlp.up_proj.weight"] = w(ffn, hidden, s=other)
        t[p + "mlp.down_proj.weight"] = w(hidden, ffn, s=other)
    t["model.norm.weight"] = np.ones(hidden, np.float32)
    folder.mkdir(parents=True)
    safetensors_numpy().save_file(t, str(folder / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "vocab_size": vocab, "tie_word_embeddings": tied, "max_position_embeddings": 512,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_bytes((tokenizer_from / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tokenizer_files: Path) -> Path:
    return synthetic_hf(tmp_path_factory.mktemp("llama") / "hf", tokenizer_files)


def test_metadata_keys_types_and_f16_tensors(folder: Path, tmp_path: Path) -> None:
    """The keys and value types convert_hf_to_gguf.py writes (gguf-py's GGUFWriter types:
    llama.* integers UINT32, floats FLOAT32, token types an INT32 array, ids UINT32, flags
    BOOL), in its order; --outtype f16: 2-D weights F16, norms F32; Q / K permuted."""
    model = qfast.load_model(folder)
    out = model.save(tmp_path / "m.gguf", format="gguf", type="F16")
    f = qfast.gguf.load(out)
    keys = [k for k in f.metadata if not k.startswith("general.") or k == "general.file_type"]
    assert keys == [
        "llama.block_count", "llama.context_length", "llama.embedding_length",
        "llama.feed_forward_length", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon", "general.file_type", "llama.vocab_size",
        "llama.rope.dimension_count", "tokenizer.ggml.model", "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.chat_template",
    ]  # fmt: skip
    assert list(f.metadata)[:3] == ["general.architecture", "general.type", "general.name"]
    assert f.metadata["general.quantization_version"] == 2
    assert f.metadata["general.file_type"] == 1 and f.metadata["llama.rope.dimension_count"] == 16
    assert f.metadata["general.size_label"] == "6.4M"  # gguf-py's label of the parameter count
    U, F, I32, S, B = (value_type(n) for n in ("UINT32", "FLOAT32", "INT32", "STRING", "BOOL"))
    A = value_type("ARRAY")
    for key, vt in f.value_types.items():
        if (
            key.startswith("llama.")
            or key.endswith("_token_id")
            or key
            in (
                "general.file_type",
                "general.quantization_version",
            )
        ):
            assert vt == (F if "eps" in key or "freq_base" in key else U), key
    assert f.value_types["tokenizer.ggml.token_type"] == (A, I32)
    assert f.value_types["tokenizer.ggml.tokens"] == (A, S)
    assert f.value_types["tokenizer.ggml.add_bos_token"] == B
    tokens = f.metadata["tokenizer.ggml.tokens"]
    types = f.metadata["tokenizer.ggml.token_type"]
    assert len(tokens) == 49152 and types[:17] == [3] * 17 and set(types[17:]) == {1}
    assert tokens[1] == "<|im_start|>" and f.metadata["tokenizer.ggml.pre"] == "smollm"
    # tensors: convert's order (sorted Hugging Face names), types and values
    assert list(f.tensors)[:3] == ["output.weight", "token_embd.weight", "blk.0.attn_norm.weight"]
    assert {n: t.type for n, t in f.tensors.items() if t.type == "F32"} == {
        n: "F32" for n in f.tensors if n.endswith("norm.weight")
    }
    for i in range(2):
        hf = f"model.layers.{i}.self_attn."
        for g, h, n in (("attn_q", "q_proj", 4), ("attn_k", "k_proj", 2), ("attn_v", "v_proj", 0)):
            w = np.asarray(model.weights[hf + h + ".weight"])
            want = permute_qk(w, n) if n else w
            got = np.asarray(f.tensors[f"blk.{i}.{g}.weight"].data)
            assert got.dtype == np.float16 and np.array_equal(got, want.astype(np.float16)), g
    bf = qfast.gguf.load(model.save(tmp_path / "bf.gguf", format="gguf", type="BF16"))
    assert bf.metadata["general.file_type"] == 32
    t = bf.tensors["blk.1.ffn_up.weight"]
    want_bf = qfast.gguf.quantize(
        np.asarray(model.weights["model.layers.1.mlp.up_proj.weight"]), "BF16"
    )
    assert t.type == "BF16" and np.array_equal(np.asarray(t.data), want_bf)


def test_the_export_runs_in_qfast_with_the_folders_logits(folder: Path, tmp_path: Path) -> None:
    """qfast's GGUF reader (llama.cpp's Q / K layout, its RoPE) gives the folder's logits on
    the exported F32 file."""
    out = requantize(folder, tmp_path / "m.gguf", "F32")
    ids = np.random.default_rng(0).integers(0, 49152, (2, 24))
    want = qfast.load_model(folder, compute="float").logits(ids)
    got = qfast.load_model(out, compute="float").logits(ids)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    # a file without the permutation does not: the layout is what makes them agree
    f = qfast.gguf.load(out)
    tensors = dict(f.tensors)
    tensors["blk.0.attn_q.weight"] = np.asarray(qfast.load_model(folder).weights[
        "model.layers.0.self_attn.q_proj.weight"])  # fmt: skip
    bad = tmp_path / "bad.gguf"
    qfast.gguf.save(bad, tensors, f.metadata, value_types=f.value_types)
    off = qfast.load_model(bad, compute="float").logits(ids)
    assert np.abs(off - want).max() > 1e-2


def test_exact_qtensors_are_written_as_their_ggml_type(folder: Path, tmp_path: Path) -> None:
    """A QTensor on a ggml grid (group 32, float16 scales) is written as that type whatever the
    mix (rows permuted for Q / K): RTN's 4-bit grid (codes and an integer zero point) is Q4_1,
    a Q4_0 block tensor read back by to_qtensor is Q4_0 with ggml's bytes; the float tensors
    get the mix's types."""
    recipe = qfast.Recipe("rtn", bits=4, group_size=32, scale_dtype="float16")
    q = qfast.quantize_model(qfast.load_model(folder), recipe)
    down = "model.layers.1.mlp.down_proj.weight"
    w = np.asarray(qfast.load_model(folder).weights[down])
    blocks = qfast.gguf.quantize(w, "Q4_0")
    q.weights[down] = qfast.gguf.to_qtensor(blocks, "Q4_0", w.shape)
    f = qfast.gguf.load(q.save(tmp_path / "q.gguf", format="gguf", type="Q8_0"))
    assert f.tensors["token_embd.weight"].type == f.tensors["output.weight"].type == "Q8_0"
    t = f.tensors["blk.1.ffn_down.weight"]
    assert t.type == "Q4_0" and np.asarray(t.data).tobytes() == blocks.tobytes()
    for g, h, n in (("attn_q", "q_proj", 4), ("attn_k", "k_proj", 2), ("attn_v", "v_proj", 0)):
        want = q.weights[f"model.layers.1.self_attn.{h}.weight"].dequantize()
        want = permute_qk(want, n) if n else want
        t = f.tensors[f"blk.1.{g}.weight"]
        assert t.type == "Q4_1" and np.array_equal(t.dequantize(), want), g


def test_refusals_leave_nothing_on_disk(folder: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # not a Llama: the MiniLM encoder
    minilm = qfast.load_model(assets.minilm_dir())
    with pytest.raises(ValueError, match="GGUF export writes Llama models"):
        minilm.save(out / "minilm.gguf", format="gguf", type="F16")
    rc = main(["quantize", str(assets.minilm_dir()), "-o", str(out / "m.gguf"), "--format",
               "gguf", "--type", "F16"])  # fmt: skip
    assert rc == 2 and "Llama models" in capsys.readouterr().err
    # a tokenizer llama.cpp does not recognise (another pre-tokenizer)
    odd = tmp_path / "odd"
    odd.mkdir()
    for p in folder.iterdir():
        (odd / p.name).write_bytes(p.read_bytes())
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                            "use_regex": True}  # fmt: skip
    (odd / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match=r"not one llama\.cpp 0\.3\.36 recognises"):
        requantize(odd, out / "odd.gguf", "Q4_0")
    # no tokenizer at all
    (odd / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        qfast.load_model(odd).save(out / "none.gguf", format="gguf", type="F32")
    # an existing output
    (out / "keep.gguf").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        qfast.load_model(folder).save(out / "keep.gguf", format="gguf", type="F32")
    with pytest.raises(FileExistsError):
        requantize(folder, out / "keep.gguf", "Q4_0")
    assert (out / "keep.gguf").read_bytes() == b"keep"
    # a QTensor no ggml type holds (group 16) and a type that is not one
    q = qfast.quantize_model(qfast.load_model(folder), qfast.Recipe("rtn", group_size=16))
    with pytest.raises(
        ValueError, match=r"layers\.0\.mlp\.down_proj\.weight is a 4-bit QTensor .*no GGUF type"
    ):
        q.save(out / "q.gguf", format="gguf", type="Q4_K_M")
    with pytest.raises(ValueError, match="needs type="):
        q.save(out / "q.gguf", format="gguf")
    with pytest.raises(ValueError, match="pick F32, F16, BF16"):
        qfast.load_model(folder).save(out / "q.gguf", format="gguf", type="Q4_Z")
    with pytest.raises(ValueError, match="type= and imatrix= are for format='gguf'"):
        qfast.load_model(folder).save(out / "q", type="F16")
    rc = main(["quantize", str(folder), "-o", str(out / "g.gguf"), "--format", "gguf", "--type",
               "F16", "--method", "gptq"])  # fmt: skip
    assert rc == 2 and "plain conversion" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.gguf"]


def test_gptq_from_the_folder_is_gptq_from_its_f32_gguf(folder: Path, tmp_path: Path) -> None:
    """gptq_to_gguf reads the folder as the converter's F32 file: the same file, byte for
    byte, as from that F32 file (the model runs in llama.cpp's Q / K layout in both)."""
    f32 = requantize(folder, tmp_path / "f32.gguf", "F32")
    ids = np.random.default_rng(3).integers(0, 49152, (8, 32))
    a = tmp_path / "from-hf.gguf"
    gptq_to_gguf(folder, a, "Q4_0", ids, samples=8, seq_len=32)
    b = tmp_path / "from-gguf.gguf"
    gptq_to_gguf(f32, b, "Q4_0", ids, samples=8, seq_len=32)
    assert a.read_bytes() == b.read_bytes()
    assert qfast.gguf.load(a).tensors["blk.0.attn_q.weight"].type == "Q4_0"
    with pytest.raises(ValueError, match="F16 is a float type"):
        gptq_to_gguf(folder, tmp_path / "f16.gguf", "F16", ids, samples=8, seq_len=32)
    assert not (tmp_path / "f16.gguf").exists()


def test_qfast_imatrix_reads_the_folder(folder: Path, tmp_path: Path) -> None:
    """``qfast imatrix HF_FOLDER``: llama.cpp's names, the sums of the folder's own F32 GGUF
    (Σx² per input column does not see the Q / K row order)."""
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    f32 = requantize(folder, tmp_path / "f32.gguf", "F32")
    for src, name in ((folder, "a.gguf"), (f32, "b.gguf")):
        args = ["imatrix", str(src), "-o", str(tmp_path / name), "--calibration", str(text)]
        assert main([*args, "--ctx", "64", "--chunks", "2"]) == 0
    a = qfast.load_importance_matrix(tmp_path / "a.gguf")
    b = qfast.load_importance_matrix(tmp_path / "b.gguf")
    assert sorted(a.sums) == sorted(b.sums) and "blk.1.attn_q.weight" in a.sums
    for k in a.sums:
        np.testing.assert_allclose(a.sums[k], b.sums[k], rtol=1e-4, err_msg=k)


def test_llama3_rope_scaling_writes_the_converters_rope_freqs(
    tokenizer_files: Path, tmp_path: Path
) -> None:
    """rope_type llama3: no rope.scaling keys, and rope_freqs.weight (first) holds the factors
    llama.cpp divides each frequency by: qfast's own scaled frequencies' ratio."""
    from qfast.model.arch.llama import _rope_frequencies

    folder = synthetic_hf(tmp_path / "hf", tokenizer_files, hidden=64, heads=2, kv=1)
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    (folder / "config.json").write_text(json.dumps(config))  # fmt: skip
    model = qfast.load_model(folder)
    f = qfast.gguf.load(requantize(folder, tmp_path / "m.gguf", "F32"))
    assert next(iter(f.tensors)) == "rope_freqs.weight"
    assert not any("rope.scaling" in k for k in f.metadata)
    plain = 1.0 / 10000.0 ** (np.arange(0, 32, 2, dtype=np.float64) / 32)
    want = plain / _rope_frequencies(model.config)
    got = np.asarray(f.tensors["rope_freqs.weight"].data)
    assert want.min() == 1 and want.max() == 8 and 1 < np.median(want) <= 8
    np.testing.assert_allclose(got, want, rtol=1e-5)

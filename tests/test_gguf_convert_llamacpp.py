"""A Hugging Face checkpoint as a GGUF source, against llama.cpp itself.

SmolLM2's GGUF (written by convert_hf_to_gguf.py) -> ``qfast.load_model`` -> ``model.save``
(a Hugging Face folder: un-permuted Q / K, tokenizer.json) -> qfast's GGUF export from that
folder: the converter's metadata (the differences listed and explained), the vocabulary arrays
identical, F32 tensors equal to ``llama-quantize ... F32``'s bit for bit; the mixes from the
folder give ``llama-quantize``'s tensor bytes (with and without an importance matrix);
llama.cpp loads the files and its perplexity and tokenizer agree. A synthetic GQA Llama with
widths that are multiples of 256 exports and runs in llama.cpp as it runs in qfast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from llamacpp import llamacpp_bin, perplexity, requantize, smollm2_f32, tokenize  # noqa: F401
from test_gguf_convert import synthetic_hf
from test_gguf_mixes import llama_quantize
from test_gguf_requantize import random_imatrix

import qfast
from qfast import assets
from qfast.cli import main
from qfast.formats.gguf.requantize import requantize as qfast_requantize

# Keys whose value differs from the original SmolLM2 GGUF, or that only one side has, and why.
# The original was converted from HuggingFaceTB/SmolLM2-135M-Instruct's own folder by an older
# convert_hf_to_gguf.py and then quantized; ours is converted from the folder qfast.load_model +
# model.save write, by llama.cpp 0.3.36's rules.
DIFFERENT = {
    # the model card (README.md) and the folder name name the model: qfast's folder has neither
    "general.name",
    # Q4_1 (mostly) there, F32 here
    "general.file_type",
}
ONLY_ORIGINAL = {
    # from the model card's front matter (README.md), which qfast's folder does not have
    "general.organization",
    "general.finetune",
    "general.basename",
    "general.license",
    "general.languages",
    # from tokenizer_config.json's add_prefix_space, which qfast's tokenizer_config.json lacks
    "tokenizer.ggml.add_space_prefix",
}
ONLY_OURS = {
    # qfast's config.json states head_dim (64 = 576 / 9, llama.cpp's default for it); the
    # converter writes key_length / value_length whenever config.json has head_dim
    "llama.attention.key_length",
    "llama.attention.value_length",
    # 0.3.36's SpecialVocab writes tokenizer_config.json's add_eos_token (False); the older
    # converter did not read it
    "tokenizer.ggml.add_eos_token",
}
TEXT = "The quick brown fox, 12345 times: ¿qué? 東京 <|im_start|>user\n  tabs\tand  spaces  \n"


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 through qfast: GGUF -> load_model -> model.save (a Hugging Face folder)."""
    folder = tmp_path_factory.mktemp("smollm2") / "hf"
    qfast.load_model(assets.smollm2_gguf()).save(folder)
    return folder


@pytest.fixture(scope="module")
def exported_f32(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf"
    return qfast_requantize(hf_folder, out, "F32")


def test_smollm2_round_trip_metadata_and_f32_tensors(
    llamacpp_bin: Path,  # noqa: F811
    hf_folder: Path,
    exported_f32: Path,
) -> None:
    config = json.loads((hf_folder / "config.json").read_text())
    assert (
        config["model_type"] == "llama"
        and "lm_head.weight"
        not in json.loads((hf_folder / "model.safetensors.index.json").read_text())["weight_map"]
    )
    ours = qfast.gguf.load(exported_f32)
    orig = qfast.gguf.load(assets.smollm2_gguf())
    f32 = qfast.gguf.load(smollm2_f32(llamacpp_bin))
    assert set(orig.metadata) - set(ours.metadata) == ONLY_ORIGINAL
    assert set(ours.metadata) - set(orig.metadata) == ONLY_OURS
    for key in ours.metadata.keys() & orig.metadata.keys():
        assert ours.value_types[key] == orig.value_types[key], key
        if key not in DIFFERENT:
            assert ours.metadata[key] == orig.metadata[key], key
    assert ours.metadata["general.file_type"] == 0  # ALL_F32
    assert ours.metadata["tokenizer.ggml.pre"] == "smollm"
    for key in ("tokens", "token_type", "merges"):
        a, b = ours.metadata[f"tokenizer.ggml.{key}"], orig.metadata[f"tokenizer.ggml.{key}"]
        assert a == b and len(a) > 40000, key
    # the converter's tensor order (the checkpoint's names, sorted), and F32's bytes
    assert list(ours.tensors) == list(orig.tensors)
    assert sorted(ours.tensors) == sorted(f32.tensors) and "output.weight" not in ours.tensors
    for name, t in f32.tensors.items():
        u = ours.tensors[name]
        assert (u.type, u.shape) == (t.type, t.shape) == ("F32", t.shape), name
        assert np.asarray(u.data).tobytes() == np.asarray(t.data).tobytes(), name


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q4_0"])
def test_smollm2_mixes_from_the_hf_folder_are_llama_quantizes(
    llamacpp_bin: Path,  # noqa: F811
    hf_folder: Path,
    mix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    f32 = smollm2_f32(llamacpp_bin)

    def same_tensors(ours: Path, theirs: Path, what: str) -> None:
        a, b = qfast.gguf.load(ours), qfast.gguf.load(theirs)
        assert list(a.tensors) == list(b.tensors), what
        for name, t in b.tensors.items():
            u = a.tensors[name]
            assert (u.type, u.shape) == (t.type, t.shape), f"{what}: {name}"
            assert np.asarray(u.data).tobytes() == np.asarray(t.data).tobytes(), f"{what}: {name}"

    out = tmp_path / f"{mix}.gguf"
    args = ["quantize", str(hf_folder), "-o", str(out), "--format", "gguf", "--type", mix]
    assert main(args) == 0, capsys.readouterr().err
    same_tensors(out, requantize(llamacpp_bin, f32, mix), mix)
    assert (
        qfast.gguf.load(out).metadata["general.file_type"]
        == qfast.gguf.load(requantize(llamacpp_bin, f32, mix)).metadata["general.file_type"]
    )
    imat_path = random_imatrix(qfast.gguf.load(f32), tmp_path / "imatrix.gguf", seed=2)
    theirs = llama_quantize(
        llamacpp_bin, f32, tmp_path / "theirs.gguf", mix, "--imatrix", str(imat_path)
    )
    out_i = tmp_path / f"{mix}-imatrix.gguf"
    assert main([*args[:3], str(out_i), *args[4:], "--imatrix", str(imat_path)]) == 0
    same_tensors(out_i, theirs, f"{mix} + imatrix")


def test_llama_cpp_runs_the_export_as_the_gguf_path(
    llamacpp_bin: Path,  # noqa: F811
    hf_folder: Path,
    exported_f32: Path,
    tmp_path: Path,
) -> None:
    """llama-perplexity gives the F32 GGUF's figure on the export (and on its Q4_K_M, the
    file from the GGUF path's), and llama-tokenize the ids qfast's tokenizer gives."""
    from qfast.calibration.text import heldout_paragraphs

    text_file = tmp_path / "heldout.txt"
    text_file.write_bytes("\n".join(heldout_paragraphs(8)).encode("utf-8"))
    f32 = smollm2_f32(llamacpp_bin)
    ref = perplexity(llamacpp_bin, f32, text_file, n_ctx=128, chunks=3)
    got = perplexity(llamacpp_bin, exported_f32, text_file, n_ctx=128, chunks=3)
    assert got.ppl == ref.ppl and got.chunks == 3, (got.ppl, ref.ppl)
    q = qfast_requantize(hf_folder, tmp_path / "q4km.gguf", "Q4_K_M")
    ref_q = perplexity(llamacpp_bin, requantize(llamacpp_bin, f32, "Q4_K_M"), text_file,
                       n_ctx=128, chunks=3)  # fmt: skip
    assert perplexity(llamacpp_bin, q, text_file, n_ctx=128, chunks=3).ppl == ref_q.ppl
    tok = qfast.load_model(hf_folder).tokenizer
    assert tok is not None
    assert tokenize(llamacpp_bin, exported_f32, TEXT, parse_special=True) == tok.encode(TEXT)


def test_synthetic_gqa_llama_exports_and_runs_in_llama_cpp(
    llamacpp_bin: Path,  # noqa: F811
    hf_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qfast.calibration.text import heldout_paragraphs

    # 256 wide, ffn 768, 8 query heads over 2 KV heads (head_dim 32, GQA 4), untied, SmolLM2's
    # tokenizer; Q / K large enough that attention is far from uniform
    folder = synthetic_hf(
        tmp_path / "synthetic", hf_folder, hidden=256, ffn=768, heads=8, kv=2, layers=4
    )
    out = tmp_path / "synthetic-f32.gguf"
    args = ["quantize", str(folder), "-o", str(out), "--format", "gguf", "--type", "F32"]
    assert main(args) == 0, capsys.readouterr().err
    f = qfast.gguf.load(out)
    assert f.metadata["llama.attention.head_count_kv"] == 2 and "output.weight" in f.tensors
    text_file = tmp_path / "heldout.txt"
    text_file.write_bytes("\n".join(heldout_paragraphs(4)).encode("utf-8"))
    ref = perplexity(llamacpp_bin, out, text_file, n_ctx=128, chunks=2)
    model = qfast.load_model(folder, compute="float")
    ev = qfast.evaluate(
        model, text_file.read_text(encoding="utf-8"), n_ctx=128, convention="llama.cpp",
        max_tokens=2 * 128,
    )  # fmt: skip
    assert ev.windows == ref.chunks == 2
    # within 1%, the harness's figure (llama.cpp keeps its KV cache in F16)
    assert ev.perplexity == pytest.approx(ref.ppl, rel=0.01), (ev.perplexity, ref.ppl)
    # the comparison sees the Q / K layout: the same file with Hugging Face's rows runs off
    from qfast.model.arch.llama import unpermute_qk

    tensors = dict(f.tensors)
    for name, t in f.tensors.items():
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            n = 8 if "attn_q" in name else 2
            tensors[name] = np.ascontiguousarray(unpermute_qk(np.asarray(t.data), n))
    wrong = tmp_path / "wrong-layout.gguf"
    qfast.gguf.save(wrong, tensors, f.metadata, value_types=f.value_types)
    off = perplexity(llamacpp_bin, wrong, text_file, n_ctx=128, chunks=2).ppl
    assert abs(off / ref.ppl - 1) > 0.03, (off, ref.ppl)
    # Q4_K (multiples of 256: the real K-quant paths) loads and runs too
    q = tmp_path / "synthetic-q4km.gguf"
    assert (
        main(["quantize", str(folder), "-o", str(q), "--format", "gguf", "--type", "Q4_K_M"]) == 0
    )
    assert qfast.gguf.load(q).tensors["blk.0.attn_q.weight"].type == "Q4_K"
    assert perplexity(llamacpp_bin, q, text_file, n_ctx=128, chunks=2).ppl == pytest.approx(
        ref.ppl, rel=0.2
    )


def test_a_model_read_from_gguf_saves_llama_quantizes_file(
    llamacpp_bin: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``model.save(format="gguf")`` of a model loaded from a GGUF file keeps that file's
    metadata (no conversion): SmolLM2 (Q4_1, dequantized) as Q4_K_M is llama-quantize's file
    from the F32 GGUF, tensors and metadata."""
    model = qfast.load_model(assets.smollm2_gguf())
    out = model.save(tmp_path / "q4km.gguf", format="gguf", type="Q4_K_M")
    a = qfast.gguf.load(out)
    b = qfast.gguf.load(requantize(llamacpp_bin, smollm2_f32(llamacpp_bin), "Q4_K_M"))
    assert list(a.tensors) == list(b.tensors) and a.metadata == b.metadata
    for name, t in b.tensors.items():
        assert np.asarray(a.tensors[name].data).tobytes() == np.asarray(t.data).tobytes(), name

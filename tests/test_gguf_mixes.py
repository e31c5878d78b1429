"""llama.cpp's type mixes (qfast.gguf.mixes.tensor_types) against llama-quantize itself: for
every mix, the type of every tensor of the files llama-quantize writes, on synthetic Llamas
whose widths are multiples of 256 (the K-quant rules run: GQA 4 and 1, tied and untied, 16
and 9 blocks for the layer-position rules) or not (288 = 9 x 32: the fallbacks), and on
SmolLM2 (576 wide: fallbacks; tied; GQA 3)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from llamacpp import llamacpp_bin, requantize, smollm2_f32  # noqa: F401

import qfast
from qfast.formats.gguf.mixes import MIXES, tensor_types

CONFIGS = {
    # name: (blocks, hidden, ffn, heads, kv heads, tied)
    "gqa4-untied-16": (16, 256, 512, 8, 2, False),
    "gqa1-tied-9": (9, 256, 768, 4, 4, True),
    "ragged-288": (4, 288, 544, 4, 2, False),
}


def synthetic(
    path: Path,
    blocks: int,
    hidden: int,
    ffn: int,
    heads: int,
    kv: int,
    tied: bool,
    scale: float = 1.0,
):
    rng = np.random.default_rng(0)
    hd = hidden // heads

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    vocab = 256
    t = {"token_embd.weight": w(vocab, hidden)}
    for i in range(blocks):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(hidden, np.float32)
        t[p + "attn_q.weight"] = w(hidden, hidden)
        t[p + "attn_k.weight"] = w(kv * hd, hidden)
        t[p + "attn_v.weight"] = w(kv * hd, hidden)
        t[p + "attn_output.weight"] = w(hidden, hidden)
        t[p + "ffn_norm.weight"] = np.ones(hidden, np.float32)
        t[p + "ffn_gate.weight"] = w(ffn, hidden)
        t[p + "ffn_up.weight"] = w(ffn, hidden)
        t[p + "ffn_down.weight"] = w(hidden, ffn)
    t["output_norm.weight"] = np.ones(hidden, np.float32)
    if not tied:
        t["output.weight"] = w(vocab, hidden)
    meta = {
        "general.architecture": "llama",
        "llama.block_count": blocks,
        "llama.context_length": 512,
        "llama.embedding_length": hidden,
        "llama.feed_forward_length": ffn,
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.freq_base": 10000.0,
        "llama.vocab_size": vocab,
    }
    qfast.gguf.save(path, t, meta, check=False)
    return path


def predicted(f: qfast.gguf.GGUFFile, mix: str, pure: bool = False) -> dict[str, str]:
    m = f.metadata
    return tensor_types(
        [(n, t.shape, t.type) for n, t in f.tensors.items()],
        mix,
        n_layer=m["llama.block_count"],
        n_head=m["llama.attention.head_count"],
        n_head_kv=m["llama.attention.head_count_kv"],
        pure=pure,
    )


def llama_quantize(bin_dir: Path, src: Path, out: Path, mix: str, *extra: str) -> Path:
    cmd = [str(bin_dir / "llama-quantize"), *extra, str(src), str(out), mix, "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mixes")
    return {k: synthetic(root / f"{k}.gguf", *c) for k, c in CONFIGS.items()}


@pytest.mark.parametrize("config", CONFIGS)
def test_every_mix_types_every_tensor_as_llama_quantize(
    llamacpp_bin: Path,  # noqa: F811
    models: dict[str, Path],
    config: str,
    tmp_path: Path,
) -> None:
    src = qfast.gguf.load(models[config])
    for mix in MIXES:
        if mix == "Q2_K_S":  # llama-quantize requires an importance matrix for it
            continue
        out = qfast.gguf.load(llama_quantize(llamacpp_bin, src.path, tmp_path / f"{mix}.gguf", mix))
        got = {n: t.type for n, t in out.tensors.items()}
        want = predicted(src, mix)
        diff = {n: (want[n], got[n]) for n in got if want.get(n) != got[n]}
        assert not diff, f"{config} {mix}: (qfast, llama-quantize): {diff}"
    pure = qfast.gguf.load(
        llama_quantize(llamacpp_bin, src.path, tmp_path / "pure.gguf", "Q4_K_M", "--pure")
    )
    assert {n: t.type for n, t in pure.tensors.items()} == predicted(src, "Q4_K_M", pure=True)


@pytest.mark.parametrize("mix", ["Q4_0", "Q4_K_M", "Q3_K_M"])
def test_smollm2_mixes_fall_back_as_llama_quantize(llamacpp_bin: Path, mix: str) -> None:  # noqa: F811
    src = qfast.gguf.load(smollm2_f32(llamacpp_bin))
    out = qfast.gguf.load(requantize(llamacpp_bin, src.path, mix))
    assert {n: t.type for n, t in out.tensors.items()} == predicted(src, mix)


def test_unknown_mix_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown type mix 'Q4_K_X'.*Q4_K_M"):
        tensor_types([], "Q4_K_X", n_layer=1, n_head=1, n_head_kv=1)

"""GPTQ into a GGUF file (qfast.model.gguf_gptq.gptq_to_gguf, ``qfast quantize --method gptq
--format gguf``) on a synthetic Llama: llama-quantize's types for the mix, llama-quantize's bytes
for every tensor GPTQ does not write, llama.cpp's loader reads the file, and the model's logits
are closer to the float model's than llama-quantize's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from llamacpp import llamacpp_bin  # noqa: F401
from test_gguf_mixes import llama_quantize, synthetic

import qfast
from qfast.algorithms.gptq_gguf import GGUF_TYPES
from qfast.model.gguf_gptq import gptq_to_gguf

# blocks, hidden, ffn, heads, kv heads, tied, weight scale (activations stay of order 1)
CONFIG = (4, 256, 512, 8, 2, False, 0.06)


@pytest.mark.parametrize("mix", ["Q4_0", "Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K"])
def test_gptq_gguf_file(llamacpp_bin: Path, mix: str, tmp_path: Path) -> None:  # noqa: F811
    src_path = synthetic(tmp_path / "f32.gguf", *CONFIG)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 256, (16, 64))
    ours = tmp_path / "gptq.gguf"
    gptq_to_gguf(src_path, ours, mix, ids, samples=16, seq_len=64)
    theirs = llama_quantize(llamacpp_bin, src_path, tmp_path / "llama.gguf", mix)
    a, b = qfast.gguf.load(ours), qfast.gguf.load(theirs)
    assert list(a.tensors) == list(b.tensors)
    assert {k: str(v) for k, v in a.metadata.items()} == {k: str(v) for k, v in b.metadata.items()}
    gptq_written = 0
    for name, t in b.tensors.items():
        u = a.tensors[name]
        assert (u.type, u.shape) == (t.type, t.shape), name
        if name.startswith("blk.") and t.type in GGUF_TYPES and len(t.shape) == 2:
            gptq_written += 1
            assert bytes(u.data) != bytes(t.data), f"{name}: GPTQ changed nothing"
        else:
            assert bytes(u.data) == bytes(t.data), name
    assert gptq_written == 7 * CONFIG[0]
    # llama.cpp's loader reads it (llama-quantize loads the model to requantize it)
    llama_quantize(llamacpp_bin, ours, tmp_path / "again.gguf", "Q8_0", "--allow-requantize")
    # closer to the float model than ggml's quantizer, on text like the calibration data
    test_ids = rng.integers(0, 256, (2, 64))
    ref = qfast.load_model(src_path).logits(test_ids)

    def err(path: Path) -> float:
        logits = qfast.load_model(path, compute="float").logits(test_ids)
        assert np.isfinite(logits).all()
        return float(np.linalg.norm((logits - ref).astype(np.float64)))

    e_ours, e_theirs = err(ours), err(theirs)
    assert e_ours < e_theirs, (e_ours, e_theirs)


def test_gptq_gguf_refuses(tmp_path: Path) -> None:
    src_path = synthetic(tmp_path / "f32.gguf", *CONFIG)
    (tmp_path / "out.gguf").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        gptq_to_gguf(src_path, tmp_path / "out.gguf", "Q4_0", np.zeros((2, 8), np.int64))
    with pytest.raises(ValueError, match="unknown type mix"):
        gptq_to_gguf(src_path, tmp_path / "o2.gguf", "Q4_Z", np.zeros((2, 8), np.int64))


def test_batches_give_the_same_model(tmp_path: Path) -> None:
    """The calibration set run in several forward batches gives, up to float rounding (which
    GPTQ's feedback spreads into a fraction of the codes), a model as close to the float one
    as one batch gives: each batch's stage outputs are its own. (A stage output kept in the
    model's reused buffer instead made every batch read the last one's: 17% further off.)"""
    src_path = synthetic(tmp_path / "f32.gguf", *CONFIG)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 256, (16, 64))
    gptq_to_gguf(src_path, tmp_path / "one.gguf", "Q4_0", ids, samples=16, seq_len=64)
    gptq_to_gguf(
        src_path, tmp_path / "four.gguf", "Q4_0", ids, samples=16, seq_len=64, batch_tokens=256
    )
    test_ids = np.random.default_rng(7).integers(0, 256, (2, 64))
    ref = qfast.load_model(src_path).logits(test_ids)

    def err(name: str) -> float:
        logits = qfast.load_model(tmp_path / name, compute="float").logits(test_ids)
        return float(np.linalg.norm((logits - ref).astype(np.float64)))

    assert err("four.gguf") == pytest.approx(err("one.gguf"), rel=0.03)

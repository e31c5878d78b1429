"""``qfast.gguf.requantize`` / ``qfast quantize --format gguf --type MIX`` write the bytes
``llama-quantize`` writes: every tensor (type and data) and the metadata, for every type mix,
on SmolLM2's F32 GGUF (576 wide: the fallbacks) and synthetic Llamas (widths that are multiples
of 256, so the K-quant types run; 288 wide).

Every type a mix gives a tensor is one qfast writes, so every mix is compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from llamacpp import llamacpp_bin, requantize, smollm2_f32  # noqa: F401
from test_gguf_mixes import CONFIGS, llama_quantize, synthetic

import qfast
from qfast.cli import main
from qfast.formats.gguf.mixes import MIXES
from qfast.formats.gguf.requantize import _can_write
from qfast.formats.gguf.requantize import requantize as qfast_requantize


def assert_same_file(ours: Path, theirs: Path, what: str) -> None:
    a, b = qfast.gguf.load(ours), qfast.gguf.load(theirs)
    assert list(a.tensors) == list(b.tensors), what
    for name, t in b.tensors.items():
        u = a.tensors[name]
        assert (u.type, u.shape) == (t.type, t.shape), f"{what}: {name}"
        np.testing.assert_array_equal(
            np.asarray(u.data).view(np.uint8), np.asarray(t.data).view(np.uint8), f"{what}: {name}"
        )
    meta = {k: v for k, v in b.metadata.items() if not k.startswith("quantize.imatrix.")}
    assert {k: str(v) for k, v in a.metadata.items()} == {k: str(v) for k, v in meta.items()}


def test_every_mix_needs_only_types_qfast_writes() -> None:
    """Every type any mix gives a tensor is one qfast.gguf writes, with and without an
    importance matrix (the mixes' file tests then compare every tensor)."""
    types = {"Q8_0", "Q6_K", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K"}
    for t in types:
        assert _can_write(t, False) and _can_write(t, True), t


@pytest.mark.parametrize("mix", [m for m in MIXES if m != "Q2_K_S"])
def test_smollm2_every_mix_is_llama_quantizes_file(
    llamacpp_bin: Path,  # noqa: F811
    mix: str,
    tmp_path: Path,
) -> None:
    src = qfast.gguf.load(smollm2_f32(llamacpp_bin))
    ours = qfast_requantize(src, tmp_path / "ours.gguf", mix)
    assert_same_file(ours, requantize(llamacpp_bin, src.path, mix), f"SmolLM2 {mix}")


@pytest.mark.parametrize("config", ["gqa4-untied-16", "ragged-288"])
@pytest.mark.parametrize("mix", [m for m in MIXES if m != "Q2_K_S"])
def test_synthetic_every_mix_is_llama_quantizes_file(
    llamacpp_bin: Path,  # noqa: F811
    config: str,
    mix: str,
    tmp_path: Path,
) -> None:
    src_path = synthetic(tmp_path / "src.gguf", *CONFIGS[config])
    src = qfast.gguf.load(src_path)
    theirs = llama_quantize(llamacpp_bin, src_path, tmp_path / "theirs.gguf", mix)
    ours = qfast_requantize(src, tmp_path / "ours.gguf", mix)
    assert_same_file(ours, theirs, f"{config} {mix}")


def test_cli_format_gguf(llamacpp_bin: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    src = smollm2_f32(llamacpp_bin)
    out = tmp_path / "q8.gguf"
    rc = main(["quantize", str(src), "-o", str(out), "--format", "gguf", "--type", "Q8_0"])
    assert rc == 0, capsys.readouterr().err
    assert_same_file(out, requantize(llamacpp_bin, src, "Q8_0"), "CLI Q8_0")
    cases = [
        (["--format", "gguf"], "needs --type"),
        (["--format", "gguf", "--type", "Q4_K_X"], "--type Q4_K_X: pick one of"),
        (["--format", "gguf", "--type", "Q4_0", "--method", "awq"], "runs --method rtn"),
        (["--type", "Q4_0"], "--type is for --format gguf"),
        (["--format", "gguf", "--type", "Q4_0"], "exists; pick a new file"),
    ]
    for extra, message in cases:
        rc = main(["quantize", str(src), "-o", str(out), *extra])
        assert rc == 2 and message in capsys.readouterr().err, extra


def test_requantize_refuses_bad_input(llamacpp_bin: Path, tmp_path: Path) -> None:  # noqa: F811
    src = smollm2_f32(llamacpp_bin)
    with pytest.raises(ValueError, match="unknown type mix"):
        qfast_requantize(src, tmp_path / "x.gguf", "Q4_Z")
    (tmp_path / "x.gguf").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        qfast_requantize(src, tmp_path / "x.gguf", "Q8_0")
    assert (tmp_path / "x.gguf").read_bytes() == b"keep"
    with pytest.raises(TypeError, match="imatrix must be a mapping"):
        qfast_requantize(src, tmp_path / "y.gguf", "Q8_0", imatrix=3)


@pytest.mark.parametrize("mix", ["Q4_0", "Q4_K_M", "Q3_K_M"])
def test_evaluate_agrees_with_llama_perplexity(
    llamacpp_bin: Path,  # noqa: F811
    mix: str,
    tmp_path: Path,
) -> None:
    """qfast.evaluate with llama.cpp's convention and weight-only compute, on llama-quantize's
    file, gives llama-perplexity's perplexity within 1% (4 chunks of 256 held-out tokens)."""
    from llamacpp import perplexity

    from qfast.calibration.text import heldout_paragraphs

    text_file = tmp_path / "heldout.txt"
    text_file.write_bytes("\n".join(heldout_paragraphs(16)).encode("utf-8"))
    path = requantize(llamacpp_bin, smollm2_f32(llamacpp_bin), mix)
    ref = perplexity(llamacpp_bin, path, text_file, n_ctx=256, chunks=4)
    model = qfast.load_model(path, compute="float")
    ev = qfast.evaluate(
        model, text_file.read_text(encoding="utf-8"), n_ctx=256, convention="llama.cpp",
        max_tokens=4 * 256,
    )  # fmt: skip
    assert ev.windows == ref.chunks == 4
    assert ev.perplexity == pytest.approx(ref.ppl, rel=0.01), (mix, ev.perplexity, ref.ppl)


def random_imatrix(src: qfast.gguf.GGUFFile, path: Path, seed: int = 0) -> Path:
    """An importance matrix over every block weight of ``src`` (random positive sums, with a
    few zero columns), saved in llama-imatrix's GGUF format."""
    rng = np.random.default_rng(seed)
    sums, counts = {}, {}
    for name, t in src.tensors.items():
        if name.startswith("blk.") and len(t.shape) == 2:
            s = (rng.gamma(0.5, 1.0, t.shape[-1]) * 100).astype(np.float32)
            s[rng.integers(0, t.shape[-1], 3)] = 0
            sums[name], counts[name] = s, np.array([100], np.int64)
    imat = qfast.ImportanceMatrix(sums=sums, counts=counts, chunks=1, chunk_size=512)
    imat.save(path)
    return path


@pytest.mark.parametrize("config", ["gqa4-untied-16", "ragged-288"])
def test_synthetic_every_mix_with_an_importance_matrix(
    llamacpp_bin: Path,  # noqa: F811
    config: str,
    tmp_path: Path,
) -> None:
    src_path = synthetic(tmp_path / "src.gguf", *CONFIGS[config])
    src = qfast.gguf.load(src_path)
    imat_path = random_imatrix(src, tmp_path / "imatrix.gguf")
    imat = qfast.load_importance_matrix(imat_path)
    for mix in MIXES:
        theirs = llama_quantize(
            llamacpp_bin, src_path, tmp_path / "theirs.gguf", mix, "--imatrix", str(imat_path)
        )
        ours = qfast_requantize(src, tmp_path / "ours.gguf", mix, imatrix=imat, overwrite=True)
        assert_same_file(ours, theirs, f"{config} {mix} + imatrix")


@pytest.mark.parametrize("mix", ["Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K_S"])
def test_smollm2_with_an_importance_matrix(
    llamacpp_bin: Path,  # noqa: F811
    mix: str,
    tmp_path: Path,
) -> None:
    src = qfast.gguf.load(smollm2_f32(llamacpp_bin))
    imat_path = random_imatrix(src, tmp_path / "imatrix.gguf", seed=1)
    theirs = llama_quantize(
        llamacpp_bin, src.path, tmp_path / "theirs.gguf", mix, "--imatrix", str(imat_path)
    )
    imat = qfast.load_importance_matrix(imat_path)
    ours = qfast_requantize(src, tmp_path / "ours.gguf", mix, imatrix=imat)
    assert_same_file(ours, theirs, f"SmolLM2 {mix} + imatrix")

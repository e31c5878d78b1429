"""The importance matrix (qfast.importance_matrix, its files) against llama-imatrix itself.

- On a tiny random Llama: the sums of x² and the counts against tests/llama_reference.py's
  float64 forward pass (independent of qfast's), BOS replacing the first token of each chunk,
  llama.cpp's rule that pieces of fewer than 16 tokens are not counted.
- The files: round trips in both formats, the legacy format's bytes written out by hand,
  corrupt files refused with a ValueError.
- Against llama.cpp (SmolLM2 as an F32 GGUF): the same tokens as llama-tokenize; the same
  statistics as llama-imatrix on the same text (counts equal, values within the figure stated
  at MAX_REL); qfast writes llama-imatrix's files byte for byte (GGUF, and the legacy format
  as llama-imatrix converts it); llama-quantize --imatrix reads qfast's files.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_reference import forward as reference_forward
from llamacpp import _run, llamacpp_bin, sha256, smollm2_f32, tokenize  # noqa: F401
from test_llama import BASE, build, make_tensors

import qfast
from qfast.calibration.text import heldout_paragraphs
from qfast.model.imatrix import (
    ImportanceMatrix,
    gguf_weight_name,
    hf_linear_name,
    importance_matrix,
    load_importance_matrix,
    schedule,
)

F32 = np.float32
KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


# -- names ---------------------------------------------------------------------------------------


def test_names_map_both_ways():
    assert gguf_weight_name("model.layers.3.self_attn.q_proj") == "blk.3.attn_q.weight"
    assert gguf_weight_name("model.layers.0.mlp.down_proj.weight") == "blk.0.ffn_down.weight"
    assert gguf_weight_name("lm_head") == "output.weight"
    assert gguf_weight_name("model.norm") is None
    for i, kind in enumerate(KINDS):
        g = f"blk.{i}.{kind}.weight"
        hf = hf_linear_name(g)
        assert hf is not None and gguf_weight_name(hf) == g
    assert hf_linear_name("token_embd.weight") is None


# -- computing, on a tiny model ------------------------------------------------------------------


class _Tok:
    """A tokenizer stub that says the vocabulary adds BOS (id 5)."""

    add_bos = True
    bos_id = 5


def _reference_sums(cfg: dict, tensors: dict, chunks: list[np.ndarray], rows: int):
    """Σx² (float64) per llama.cpp weight over the first ``rows`` positions of each chunk,
    from the plain float64 forward pass."""
    sums: dict[str, np.ndarray] = {}
    for ids in chunks:
        record: dict[str, np.ndarray] = {}
        reference_forward(cfg, tensors, list(ids), record=record)
        for name, x in record.items():
            g = gguf_weight_name(name.removesuffix(".weight"))
            if g is None or not g.startswith("blk."):
                continue
            sums[g] = sums.get(g, 0.0) + (x[:rows].astype(np.float64) ** 2).sum(axis=0)
    return sums


@pytest.mark.parametrize("bos", [False, True])
def test_sums_and_counts_match_a_float64_forward_pass(bos):
    cfg = BASE
    tensors = make_tensors(cfg)
    model = build(cfg, tensors)
    if bos:
        model.tokenizer = _Tok()
    n_ctx, chunks = 20, 3
    ids = np.random.default_rng(3).integers(6, cfg["vocab_size"], n_ctx * chunks + 7)
    calls: list[tuple[int, int]] = []
    got = importance_matrix(model, ids, n_ctx=n_ctx, progress=lambda *a: calls.append(a))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    pieces = [ids[c * n_ctx : (c + 1) * n_ctx].copy() for c in range(chunks)]
    if bos:
        for p in pieces:
            p[0] = 5
    want = _reference_sums(cfg, tensors, pieces, n_ctx)
    assert got.names == sorted(want)
    assert len(got.names) == 7 * cfg["num_hidden_layers"]  # no output.weight
    for name in got.names:
        rel = np.abs(got.sums[name] - want[name]) / want[name]
        assert rel.max() < 1e-5, (name, rel.max())
        assert got.counts[name].tolist() == [n_ctx * chunks]
        np.testing.assert_array_equal(
            got.weights(name), got.sums[name] / F32(n_ctx * chunks), err_msg=name
        )
    assert got.chunks == chunks and got.chunk_size == n_ctx and got.datasets == ["<ids>"]
    # qfast's linear names reach the same entries
    hf = "model.layers.1.mlp.down_proj"
    assert hf in got and got.hf_names["blk.1.ffn_down.weight"] == hf
    np.testing.assert_array_equal(got.weights(hf), got.weights("blk.1.ffn_down.weight"))
    with pytest.raises(KeyError, match="no entry"):
        got.weights("lm_head")
    # BOS changes the statistics (it replaces a token of every chunk)
    other = importance_matrix(build(cfg, tensors), ids, n_ctx=n_ctx) if bos else None
    if other is not None:
        assert not np.array_equal(
            other.sums["blk.0.attn_q.weight"], got.sums["blk.0.attn_q.weight"]
        )


def test_chunks_and_short_pieces():
    """--chunks caps the chunks; a chunk of 520 runs as pieces of 512 + 8 tokens and llama.cpp
    does not count the piece under 16 tokens."""
    cfg = {**BASE, "num_hidden_layers": 1, "max_position_embeddings": 1024}
    tensors = make_tensors(cfg)
    model = build(cfg, tensors)
    ids = np.random.default_rng(4).integers(0, cfg["vocab_size"], 3 * 520)
    got = importance_matrix(model, ids, n_ctx=520, chunks=2)
    assert got.counts["blk.0.attn_q.weight"].tolist() == [2 * 512]
    assert got.chunks == 2 * 512 // 520 == 1  # llama-imatrix's count: tokens // chunk size
    x: dict[str, Any] = {}

    def hook(name: str, rows: np.ndarray) -> None:
        x.setdefault(name, []).append(rows[:512].astype(np.float64))

    for c in range(2):
        model.block(0, model.embed(ids[None, c * 520 : (c + 1) * 520]), capture=hook)
    for hf, parts in x.items():
        want = sum((p**2).sum(axis=0) for p in parts)
        g = gguf_weight_name(hf)
        np.testing.assert_allclose(got.sums[g], want, rtol=1e-5, err_msg=g)


def test_several_chunks_per_decode():
    """n_batch = 3 chunks of 172 tokens: physical batches of 170 tokens of each chunk, then a
    piece of 2 x 3 tokens that llama.cpp does not count; the sums follow its row order."""
    cfg = {**BASE, "num_hidden_layers": 1, "max_position_embeddings": 1024}
    model = build(cfg, make_tensors(cfg))
    ids = np.random.default_rng(5).integers(0, cfg["vocab_size"], 4 * 172)
    got = importance_matrix(model, ids, n_ctx=172, n_batch=3 * 172)
    # 3 chunks in one decode (510 counted), then the 4th alone (172 counted)
    assert got.counts["blk.0.ffn_down.weight"].tolist() == [510 + 172]
    assert got.chunks == 682 // 172
    rows: dict[str, list[np.ndarray]] = {}

    def hook(name: str, x: np.ndarray) -> None:
        rows.setdefault(name, []).append(x)

    model.block(0, model.embed(ids[: 3 * 172].reshape(3, 172)), capture=hook)
    model.block(0, model.embed(ids[None, 3 * 172 :]), capture=hook)
    order = np.r_[0:170, 172:342, 344:514]  # chunk-major rows, each chunk's 170 first
    for hf, (x3, x1) in rows.items():
        want = np.zeros(x1.shape[1], F32)
        for row in np.concatenate([x3[order], x1]):
            want = want + row * row
        np.testing.assert_array_equal(got.sums[gguf_weight_name(hf)], want, err_msg=hf)


def test_schedule_is_llama_cpps_batch_split():
    """llama.cpp's physical batches (llama-batch.cpp split_simple / split_equal, read from the
    pinned source): one chunk per decode runs in order; several chunks per decode take
    n_ubatch // n_seqs tokens of each chunk in turn; pieces under 16 tokens are dropped."""
    np.testing.assert_array_equal(schedule(512, 1, 512), np.arange(512))
    np.testing.assert_array_equal(schedule(520, 1, 520), np.arange(512))  # 512 + 8
    np.testing.assert_array_equal(schedule(1000, 1, 256), np.arange(1000))  # -b below -c
    np.testing.assert_array_equal(schedule(528, 1, 264), np.arange(528))  # 264 + 264
    # batches of 520 tokens (-b 520, -c 1100), each 512 + 8: the 8s dropped
    np.testing.assert_array_equal(schedule(1100, 1, 520), np.r_[0:512, 520:1032, 1040:1100])
    four = schedule(512, 4, 2048)  # 4 pieces of 128 tokens of each chunk
    assert len(four) == 2048 and sorted(four) == list(range(2048))
    np.testing.assert_array_equal(four[:256], np.r_[0:128, 512:640])
    three = schedule(512, 3, 2048)  # 170 per chunk, the last 2 of each chunk dropped
    assert len(three) == 1530  # what llama-imatrix -c 512 --chunks 3 counts
    np.testing.assert_array_equal(three[:340], np.r_[0:170, 512:682])
    assert not {510, 511, 1022, 1023, 1534, 1535} & set(three.tolist())
    assert len(schedule(8, 1, 8)) == 0


def test_sums_are_float32_row_after_row():
    """The accumulation is llama-imatrix's: one float32 rounding per token (with or without
    fused multiply-add), not a float64 or pairwise sum."""
    from qfast.model.imatrix import _Accumulator

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 7)) * np.exp(rng.uniform(-3, 3, (300, 1)))).astype(F32)
    for fma in (False, True):
        acc = _Accumulator(fma)
        acc.add(["a"], x[:100])
        acc.add(["a", "b"], x[100:])
        want = np.zeros(7, F32)
        for row in x:
            if fma:  # exact product and sum, one rounding
                want = (want.astype(np.float64) + row.astype(np.float64) ** 2).astype(F32)
            else:
                want = want + row * row
        np.testing.assert_array_equal(acc.sums["b"], want)
        assert acc.counts == {"a": 300, "b": 200}


def test_bad_arguments():
    cfg = {**BASE, "num_hidden_layers": 1}
    model = build(cfg, make_tensors(cfg))
    with pytest.raises(ValueError, match="fewer than one chunk"):
        importance_matrix(model, np.arange(30) % 50, n_ctx=32)
    with pytest.raises(ValueError, match="fewer than 16 tokens"):
        importance_matrix(model, np.arange(30) % 50, n_ctx=8)
    with pytest.raises(ValueError, match="no tokenizer"):
        importance_matrix(model, "some text")
    with pytest.raises(TypeError, match="integer token ids"):
        importance_matrix(model, np.ones(40))
    with pytest.raises(ValueError, match="1-d"):
        importance_matrix(model, np.ones((2, 40), int))
    with pytest.raises(TypeError, match="no embed"):
        importance_matrix(object(), np.ones(40, int))


# -- files -----------------------------------------------------------------------------------------


def _matrix(legacy: bool = False) -> ImportanceMatrix:
    rng = np.random.default_rng(1)
    sums = {
        "blk.1.ffn_down.weight": rng.uniform(0, 5, 24).astype(F32),
        "blk.0.attn_q.weight": rng.uniform(0, 5, 16).astype(F32),
        "blk.0.ffn_down_exps.weight": rng.uniform(0, 5, (3, 8)).astype(F32),
    }
    counts = {
        "blk.1.ffn_down.weight": np.array([1500]),
        "blk.0.attn_q.weight": np.array([1000]),
        "blk.0.ffn_down_exps.weight": np.array([700, 0, 324]),
    }
    if legacy:
        sums.pop("blk.0.ffn_down_exps.weight")
        counts = {k: np.array([2]) for k in sums}
        return ImportanceMatrix(sums, counts, 2, 0, ["calib.txt"], legacy=True)
    return ImportanceMatrix(sums, counts, 2, 512, ["a.txt", "b.txt"])


def _same(a: ImportanceMatrix, b: ImportanceMatrix) -> None:
    assert a.names == b.names
    for n in a.names:
        np.testing.assert_array_equal(a.sums[n], b.sums[n], err_msg=n)
        np.testing.assert_array_equal(a.counts[n], b.counts[n], err_msg=n)
        np.testing.assert_array_equal(a.weights(n), b.weights(n), err_msg=n)


def test_gguf_round_trip(tmp_path):
    m = _matrix()
    m.save(tmp_path / "m.gguf")
    back = load_importance_matrix(tmp_path / "m.gguf")
    _same(m, back)
    assert (back.chunks, back.chunk_size, back.datasets, back.legacy) == (
        2,
        512,
        ["a.txt", "b.txt"],
        False,
    )
    # an expert with no tokens weighs 1, as llama-quantize loads it
    w = back.weights("blk.0.ffn_down_exps.weight")
    np.testing.assert_array_equal(w[1], np.ones(8, F32))
    np.testing.assert_array_equal(w[0], m.sums["blk.0.ffn_down_exps.weight"][0] / F32(700))
    # the format is the suffix's; format= overrides it; the magic decides on reading
    m.save(tmp_path / "m.imatrix", format="gguf")
    _same(m, load_importance_matrix(tmp_path / "m.imatrix"))
    with pytest.raises(ValueError, match="suffix"):
        m.save(tmp_path / "m.bin")


def test_dat_bytes_and_round_trip(tmp_path):
    """The legacy file written out by hand from llama-imatrix's save_imatrix_legacy."""
    m = _matrix()
    del m.sums["blk.0.ffn_down_exps.weight"], m.counts["blk.0.ffn_down_exps.weight"]
    m.save(tmp_path / "m.dat")
    want = struct.pack("<i", 2)
    for name in sorted(m.sums):
        count = int(m.counts[name][0])
        ncall = -(-count // 512)
        vals = [
            np.float32(np.float32(v) / np.float32(count)) * np.float32(ncall) for v in m.sums[name]
        ]
        want += struct.pack("<i", len(name)) + name.encode()
        want += struct.pack("<ii", ncall, len(vals)) + np.array(vals, "<f4").tobytes()
    want += struct.pack("<i", 2) + struct.pack("<i", 5) + b"b.txt"
    assert (tmp_path / "m.dat").read_bytes() == want
    back = load_importance_matrix(tmp_path / "m.dat")
    assert back.legacy and back.datasets == ["b.txt"] and back.chunks == 2
    for name in m.names:
        # what llama-quantize passes: the stored value over ncall
        np.testing.assert_allclose(back.weights(name), m.weights(name), rtol=2e-7)
    # a legacy matrix written back as .dat is the same file
    back.save(tmp_path / "again.dat")
    assert (tmp_path / "again.dat").read_bytes() == want


def test_legacy_to_gguf_and_back(tmp_path):
    m = _matrix(legacy=True)
    m.save(tmp_path / "l.gguf")
    g = load_importance_matrix(tmp_path / "l.gguf")
    assert not g.legacy and g.chunk_size == 512  # llama-imatrix's default -c
    for n in m.names:
        np.testing.assert_array_equal(g.counts[n], [2 * 512])
        np.testing.assert_array_equal(g.weights(n), m.weights(n))  # 512 is a power of 2
    m.save(tmp_path / "l.dat")
    _same(m, load_importance_matrix(tmp_path / "l.dat"))


def test_corrupt_files_are_value_errors(tmp_path):
    m = _matrix()
    del m.sums["blk.0.ffn_down_exps.weight"], m.counts["blk.0.ffn_down_exps.weight"]
    m.save(tmp_path / "m.dat")
    data = (tmp_path / "m.dat").read_bytes()
    bad = tmp_path / "bad.dat"
    for n in list(range(0, 60)) + list(range(60, len(data), 7)):
        bad.write_bytes(data[:n])
        try:
            load_importance_matrix(bad)
        except ValueError:
            continue
        # cut right after an entry (before the optional trailer): a valid file of its own
        assert n in (len(data) - 4 - 4 - 5, len(data) - 4 - 5), n
    bad.write_bytes(data + b"\0")
    with pytest.raises(ValueError, match="follow"):
        load_importance_matrix(bad)
    bad.write_bytes(struct.pack("<i", 1 << 30) + data[4:])
    with pytest.raises(ValueError, match="entry count"):
        load_importance_matrix(bad)
    bad.write_bytes(data[:4] + struct.pack("<i", 1 << 30) + data[8:])
    with pytest.raises(ValueError, match="corrupt"):
        load_importance_matrix(bad)
    with pytest.raises(FileNotFoundError):
        load_importance_matrix(tmp_path / "missing.gguf")
    # GGUF files that are not importance matrices
    m.save(tmp_path / "m.gguf")
    from qfast import gguf

    f = gguf.load(tmp_path / "m.gguf")
    tensors = {k: v for k, v in f.tensors.items() if not k.endswith(".counts")}
    gguf.save(
        tmp_path / "nocounts.gguf", tensors, f.metadata, value_types=f.value_types, check=False
    )
    with pytest.raises(ValueError, match="no counts"):
        load_importance_matrix(tmp_path / "nocounts.gguf")
    gguf.save(
        tmp_path / "model.gguf",
        {"token_embd.weight": np.zeros((4, 8), F32)},
        {"general.architecture": "x"},
        check=False,
    )
    with pytest.raises(ValueError, match="without an importance matrix"):
        load_importance_matrix(tmp_path / "model.gguf")
    g = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(g[: len(g) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_importance_matrix(tmp_path / "cut.gguf")


def test_cli(tmp_path, monkeypatch, capsys):
    """``qfast imatrix`` computes with importance_matrix and writes the file -o names."""
    from qfast.cli import imatrix as cli_imatrix
    from qfast.cli import main

    cfg = {**BASE, "num_hidden_layers": 1}
    tensors = make_tensors(cfg)
    model = build(cfg, tensors)

    class Tok:
        add_bos = False

        def encode(self, text: str) -> list[int]:
            return [ord(c) % cfg["vocab_size"] for c in text]

    model.tokenizer = Tok()
    monkeypatch.setattr("qfast.model.checkpoint.load_model", lambda path: model)
    text = "the calibration text, " * 5
    (tmp_path / "c.txt").write_bytes((text + "\n").encode())
    (tmp_path / "model").mkdir()
    out = tmp_path / "o.dat"
    args = ["imatrix", str(tmp_path / "model"), "-o", str(out), "--ctx", "32"]
    assert main([*args, "--calibration", str(tmp_path / "c.txt")]) == 0
    assert "wrote" in capsys.readouterr().out
    got = load_importance_matrix(out)
    want = importance_matrix(model, text, n_ctx=32)  # one trailing newline dropped
    assert got.legacy and got.datasets == [str(tmp_path / "c.txt")]
    for n in want.names:
        np.testing.assert_allclose(got.weights(n), want.weights(n), rtol=1e-6)
    assert main([*args[:3], str(tmp_path / "o.txt"), "--calibration", str(tmp_path / "c.txt")]) == 2
    assert ".gguf or .dat" in capsys.readouterr().err
    assert main([*args, "--calibration", str(tmp_path / "none.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli_imatrix.DEFAULT_PARAGRAPHS > 0


# -- against llama.cpp ----------------------------------------------------------------------------

N_CTX = 512
#: 3 chunks in llama-imatrix's default batch (-b 2048): physical batches of 170 tokens of
#: each chunk, the last 2 tokens of each chunk not counted (a piece of 6 tokens).
CHUNKS = 3
N_BATCH = 2048
COUNTED = 3 * 170 * CHUNKS
#: Held-out paragraphs in the text: more than CHUNKS * N_CTX tokens of SmolLM2.
PARAGRAPHS = 24
#: llama-imatrix's options besides -c and --chunks: attention in float32 (-fa off -ctk f32
#: -ctv f32). By default llama.cpp stores K/V in float16 (and runs flash attention in
#: float16), which moves the inputs of attn_output and of every later linear by about 4e-3
#: relative: that is llama.cpp's float16 rounding, not a different definition.
LLAMA_OPTS = ["-fa", "off", "-ctk", "f32", "-ctv", "f32", "--no-ppl"]
#: The largest relative difference per column of the mean x² allowed, by tensor kind. q/k/v
#: and gate/up (inputs: a norm of the residual stream) agree within 1e-5 (measured 1.8e-6 and
#: 1.9e-6). attn_output (the attention's output) and ffn_down (SiLU(gate) * up) carry the
#: float32 rounding of two forward passes that sum in different orders (OpenBLAS vs ggml's
#: kernels, exp implementations): measured 2.2e-5 (blk.18.attn_output, one column whose mean
#: x² is 2.7e-6 against a median of 0.05) and 9.3e-6. That is the forward pass's own float32
#: noise: qfast against itself with every linear summed in float64 (then rounded to float32)
#: differs by 3.7e-5 on that tensor. Relative to each tensor's largest value, every tensor
#: agrees within 1e-5 (measured 4e-6).
MAX_REL = {"attn_q": 1e-5, "attn_k": 1e-5, "attn_v": 1e-5, "ffn_gate": 1e-5, "ffn_up": 1e-5}
MAX_REL_REST = 1e-4


@pytest.fixture(scope="module")
def f32_gguf(llamacpp_bin: Path) -> Path:  # noqa: F811
    return smollm2_f32(llamacpp_bin)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("imatrix") / "heldout.txt"
    path.write_bytes(("\n".join(heldout_paragraphs(PARAGRAPHS)) + "\n").encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def llama_gguf(llamacpp_bin: Path, f32_gguf: Path, text_file: Path) -> Path:  # noqa: F811
    """llama-imatrix's GGUF file for the text, cached beside the tools (keyed on the model,
    the text and the options: a cold run takes about 40 s on 2 cores)."""
    key = hashlib.sha256(
        "\0".join(
            [sha256(f32_gguf), sha256(text_file), str(N_CTX), str(CHUNKS), *LLAMA_OPTS]
        ).encode()
    ).hexdigest()[:16]
    out_dir = llamacpp_bin.parent / "imatrix"
    out = out_dir / f"imatrix-{key}.gguf"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{out.name}.{os.getpid()}.part.gguf"
    try:
        _run(
            [
                str(llamacpp_bin / "llama-imatrix"),
                "-m",
                str(f32_gguf),
                "-f",
                str(text_file),
                "-o",
                str(tmp),
                "-c",
                str(N_CTX),
                "--chunks",
                str(CHUNKS),
                "-t",
                "2",
                *LLAMA_OPTS,
            ]
        )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def ours(f32_gguf: Path, text_file: Path) -> ImportanceMatrix:
    model = qfast.load_model(f32_gguf)
    text = text_file.read_bytes().decode("utf-8")[:-1]  # llama-imatrix -f drops the newline
    return importance_matrix(
        model, text, n_ctx=N_CTX, chunks=CHUNKS, n_batch=N_BATCH, dataset=text_file.name
    )


def test_tokens_are_llama_cpps(llamacpp_bin: Path, f32_gguf: Path, text_file: Path):  # noqa: F811
    text = text_file.read_bytes().decode("utf-8")[:-1]
    model = qfast.load_model(f32_gguf)
    assert list(model.tokenizer.encode(text)) == tokenize(llamacpp_bin, f32_gguf, text)


def test_matches_llama_imatrix(llama_gguf: Path, ours: ImportanceMatrix):
    ref = load_importance_matrix(llama_gguf)
    assert ref.chunks == COUNTED // N_CTX and ref.chunk_size == N_CTX
    assert ours.names == ref.names  # blk.* only: no output.weight without --process-output
    assert {n.split(".")[2] for n in ref.names} == set(KINDS)
    assert (ours.chunks, ours.chunk_size) == (ref.chunks, ref.chunk_size)
    worst: dict[str, tuple[float, str]] = {}
    for name in ref.names:
        assert ours.counts[name].tolist() == ref.counts[name].tolist() == [COUNTED]
        a, b = ours.weights(name), ref.weights(name)
        rel = float(np.max(np.abs(a - b) / np.abs(b)))
        kind = name.split(".")[2]
        worst[kind] = max(worst.get(kind, (0.0, "")), (rel, name))
        # relative to the tensor's scale: within 1e-5 everywhere
        assert np.max(np.abs(a - b)) / np.max(b) < 1e-5, name
    print("max relative difference by kind:", worst)
    for kind, (rel, name) in worst.items():
        assert rel < MAX_REL.get(kind, MAX_REL_REST), (name, rel)
    # the first block's inputs have seen only the embedding and one attention: within 1e-5
    first = [n for n in ref.names if n.startswith("blk.0.")]
    for name in first:
        a, b = ours.weights(name), ref.weights(name)
        assert np.max(np.abs(a - b) / b) < 1e-5, name


def test_writes_llama_imatrix_files_byte_for_byte(
    llamacpp_bin: Path,  # noqa: F811
    f32_gguf: Path,
    llama_gguf: Path,
    tmp_path: Path,
):
    ref = load_importance_matrix(llama_gguf)
    ref.save(tmp_path / "ours.gguf")
    assert (tmp_path / "ours.gguf").read_bytes() == llama_gguf.read_bytes()
    # llama-imatrix converts its GGUF file to the legacy format (--in-file, no text)
    tool = str(llamacpp_bin / "llama-imatrix")
    dat = tmp_path / "llama.dat"
    _run([tool, "-m", str(f32_gguf), "--in-file", str(llama_gguf), "-o", str(dat),
          "--output-format", "dat"])  # fmt: skip
    ref.save(tmp_path / "ours.dat")
    assert (tmp_path / "ours.dat").read_bytes() == dat.read_bytes()
    # ... and the legacy file back to GGUF
    back = tmp_path / "back.gguf"
    _run([tool, "-m", str(f32_gguf), "--in-file", str(dat), "-o", str(back)])
    load_importance_matrix(dat).save(tmp_path / "ours-back.gguf")
    assert (tmp_path / "ours-back.gguf").read_bytes() == back.read_bytes()


@pytest.mark.parametrize("suffix", [".gguf", ".dat"])
def test_llama_quantize_reads_ours(
    llamacpp_bin: Path,  # noqa: F811
    f32_gguf: Path,
    ours: ImportanceMatrix,
    tmp_path: Path,
    suffix: str,
):
    """llama-quantize loads qfast's file (both formats) and, quantizing SmolLM2 to Q4_K_M
    (about 6 s; --dry-run for the legacy file), finds an entry of the right size for every
    weight but token_embd (which llama-imatrix never collects either)."""
    path = tmp_path / f"ours{suffix}"
    ours.save(path)
    out_file = tmp_path / "q4km.gguf"
    where = ["--dry-run", str(f32_gguf)] if suffix == ".dat" else [str(f32_gguf), str(out_file)]
    tool = str(llamacpp_bin / "llama-quantize")
    run = _run([tool, "--imatrix", str(path), *where, "Q4_K_M", "2"])
    out = run.stdout + run.stderr
    m = re.search(
        r"loaded (\d+) importance matrix entries from (\S+) computed on (\d+) chunks", out
    )
    assert m, out[-2000:]
    assert (int(m[1]), m[2], int(m[3])) == (len(ours), str(path), ours.chunks)
    assert f"imatrix datasets=['{ours.datasets[0]}']" in out
    assert "have 210 importance matrix entries" in out
    if suffix == ".gguf":
        assert out_file.stat().st_size > 0
        assert re.findall(r"did not find weights for (\S+)", out) == ["token_embd.weight"]
        assert "is different from tensor size" not in out

"""qfast's Q3_K, Q6_K, IQ4_NL and importance-weighted Q4_0 / Q5_0 quantizers (``kq_sym.rs``)
against ggml's own (``ggml-quants.c`` of llama.cpp 0.3.36, built as llama-quantize builds it:
``tests/ggml_oracle.py``), byte for byte, without and with an importance matrix, on random
rows and on the rows where the searches' special cases and ties decide the bytes."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ggml_oracle import ggml_quantize, ggml_quants  # noqa: F401
from llamacpp import llamacpp_bin, requantize, smollm2_f32  # noqa: F401

import qfast

K_TYPES = ("Q3_K", "Q6_K")
BLOCK32_TYPES = ("IQ4_NL", "Q4_0", "Q5_0")
TYPES = K_TYPES + BLOCK32_TYPES

K_LENGTHS = (256, 512, 2048)
BLOCK32_LENGTHS = (32, 64, 96, 576, 2048)

KINDS = (
    "normal",
    "student_t",
    "zeros",
    "outlier",
    "constant",
    "grid_ties",
    "half_ties",
    "tiny",
    "huge",
    "negative",
    "positive",
    "sparse_blocks",
)

IMATRICES = (
    "none",
    "random",
    "ones",
    "with_zeros",
    "all_zeros",
    "one_huge",
    "one_large",
    "one_max",
)


def rows_of(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Three or four rows of ``n`` values of one kind (float32)."""
    shape = (3, n)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "student_t":
        x = rng.standard_t(2.0, shape)
    elif kind == "zeros":
        x = np.zeros(shape)
    elif kind == "outlier":
        x = 1e-3 * rng.standard_normal(shape)
        x[np.arange(3), rng.integers(0, n, 3)] = [100.0, -57.0, 3.0]
    elif kind == "constant":
        x = np.array([[0.7], [-0.7], [3.0]]) * np.ones(shape)
    elif kind == "grid_ties":
        # values on a coarse grid: many exactly equal magnitudes, the first one decides max
        x = rng.integers(-8, 9, shape) * 0.25
    elif kind == "half_ties":
        # small integers and halves: x * iscale lands on .5 for common scales
        x = rng.integers(-16, 17, shape) * 0.5
        x[1] = np.tile([1.0, -1.0, 0.5, -0.5], n // 4)
    elif kind == "tiny":
        x = 1e-30 * rng.standard_normal(shape)
        x[2] = 1e-12 * rng.standard_normal(n)
    elif kind == "huge":
        x = 1e30 * rng.standard_normal(shape)
        x[1, ::3] = np.finfo(np.float32).max  # x * x overflows to inf
        x[2] = 3e4 * rng.standard_normal(n)
    elif kind == "negative":
        x = -np.abs(rng.standard_normal(shape))
    elif kind == "positive":
        x = np.abs(rng.standard_normal(shape))
    elif kind == "sparse_blocks":
        # whole 16- and 32-value groups of zeros next to normal ones
        x = rng.standard_normal(shape)
        x[:, (np.arange(n) // 16) % 3 == 0] = 0.0
        x[1, : n // 2] = 0.0
    else:  # pragma: no cover
        raise AssertionError(kind)
    return np.ascontiguousarray(x, dtype=np.float32)


def imatrix_of(kind: str, n: int, rng: np.random.Generator) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "random":
        w = rng.exponential(1.0, n)
    elif kind == "ones":
        w = np.ones(n)
    elif kind == "with_zeros":
        w = rng.random(n) * 5.0
        w[rng.random(n) < 0.3] = 0.0
        w[:16] = 0.0
    elif kind == "all_zeros":
        w = np.zeros(n)
    elif kind == "one_huge":
        w = rng.random(n)
        w[rng.integers(0, n)] = 1e30
    elif kind == "one_large":
        w = rng.random(n)
        w[rng.integers(0, n)] = 1e6
    elif kind == "one_max":  # the weights overflow to inf in the searches
        w = rng.random(n)
        w[rng.integers(0, n)] = np.finfo(np.float32).max
    else:  # pragma: no cover
        raise AssertionError(kind)
    return w.astype(np.float32)


def assert_same(lib: Any, x: np.ndarray, t: str, w: np.ndarray | None, what: str) -> None:
    want = ggml_quantize(lib, x, t, w)
    got = qfast.gguf.quantize(x, t, imatrix=w)
    assert got.dtype == np.uint8 and got.shape == want.shape, (what, got.shape, want.shape)
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        r, b = bad[0]
        raise AssertionError(
            f"{what}: {len(bad)} bytes differ, first at row {r} byte {b}: "
            f"qfast {got[r, b]} ggml {want[r, b]}"
        )


def test_types_are_offered() -> None:
    for t in TYPES:
        assert qfast._qfast.gguf_can_quantize_rows(t, True), t
    for t in (*K_TYPES, "IQ4_NL"):
        assert qfast._qfast.gguf_can_quantize_rows(t, False), t


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", TYPES)
def test_matches_ggml(ggml_quants: Any, t: str, kind: str) -> None:  # noqa: F811
    seed = zlib.crc32(f"{t} {kind}".encode())
    rng = np.random.default_rng(seed)
    lengths = K_LENGTHS if t in K_TYPES else BLOCK32_LENGTHS
    for n in lengths:
        x = rows_of(kind, n, rng)
        for im in IMATRICES:
            w = imatrix_of(im, n, rng)
            assert_same(ggml_quants, x, t, w, f"{t} {kind} n={n} imatrix={im} seed={seed}")


@pytest.mark.parametrize("t", TYPES)
def test_matrix_matches_ggml(ggml_quants: Any, t: str) -> None:  # noqa: F811
    """A matrix of many rows (several parallel tasks), heavy-tailed, with one imatrix."""
    rng = np.random.default_rng(7)
    x = (rng.standard_t(3.0, (96, 2048)) * 0.02).astype(np.float32)
    w = (rng.exponential(1.0, 2048) ** 2).astype(np.float32)
    assert_same(ggml_quants, x, t, None, f"{t} matrix")
    assert_same(ggml_quants, x, t, w, f"{t} matrix imatrix")


@pytest.mark.parametrize("t", TYPES)
def test_negative_zeros(ggml_quants: Any, t: str) -> None:  # noqa: F811
    """Rows of -0.0: the searches keep +0.0 as the max, as ggml's `ax > amax` loops."""
    n = 256
    x = np.full((2, n), -0.0, np.float32)
    x[1, ::2] = 0.0
    w = np.ones(n, np.float32)
    assert_same(ggml_quants, x, t, w, f"{t} -0.0 imatrix")
    if t not in ("Q4_0", "Q5_0"):
        # (Without an imatrix Q4_0 / Q5_0 follow gguf-py, which stores d = +0.0 for a
        # block of -0.0 where ggml's C stores -0.0: tests/test_gguf.py.)
        assert_same(ggml_quants, x, t, None, f"{t} -0.0")


@pytest.mark.parametrize(
    ("mix", "types"), [("Q3_K_S", {"Q3_K", "Q4_0"}), ("Q4_K_M", {"Q6_K", "Q5_0"})]
)
def test_smollm2_matches_llama_quantize(llamacpp_bin: Path, mix: str, types: set[str]) -> None:  # noqa: F811
    """llama-quantize's own file: every SmolLM2 tensor it writes in one of these types (Q3_K /
    Q6_K on the 1536-wide rows, the Q4_0 / Q5_0 fallbacks on the 576-wide ones) is qfast's
    bytes for the same float32 weights."""
    f32 = qfast.gguf.load(smollm2_f32(llamacpp_bin))
    out = qfast.gguf.load(requantize(llamacpp_bin, f32.path, mix))
    checked: dict[str, int] = {}
    for name, t in out.tensors.items():
        if t.type not in types:
            continue
        x = np.asarray(f32.tensors[name].data, np.float32).reshape(-1, t.shape[-1])
        got = qfast.gguf.quantize(x, t.type)
        assert np.array_equal(got.reshape(-1), np.asarray(t.data).reshape(-1)), (mix, name)
        checked[t.type] = checked.get(t.type, 0) + 1
    assert set(checked) == types and min(checked.values()) >= 14, checked

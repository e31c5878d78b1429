"""qfast's quantizers of the GGUF types with a min (src/gguf/kq_affine.rs) write ggml's bytes.

Q2_K, Q4_K and Q5_K without an importance matrix (ggml's ``quantize_row_qN_K_ref``) and with
one (``quantize_row_qN_K_impl``), and Q4_1 / Q5_1 with one (``quantize_row_q4_1_impl`` /
``q5_1_impl``), compared byte for byte with ggml-quants.c of the pinned llama.cpp (the oracle of
tests/ggml_oracle.py, ``quantize_<type>(src, dst, nrow, n_per_row, quant_weights)`` as
llama-quantize runs it), on ordinary and adversarial rows and importance matrices.
"""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np
import pytest
from ggml_oracle import ggml_quantize, ggml_quants  # noqa: F401

import qfast

K_TYPES = ["Q2_K", "Q4_K", "Q5_K"]
LEGACY_TYPES = ["Q4_1", "Q5_1"]
K_LENGTHS = [256, 512, 2048]
LEGACY_LENGTHS = [32, 96, 576, 2048]
ROWS = 6


def _normal(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((ROWS, n))


def _student_t(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_t(2.0, (ROWS, n))


def _zeros(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.zeros((ROWS, n))
    x[1] = -0.0  # negative zeros
    x[2, ::2] = -0.0  # mixed signs of zero
    x[3, 1::3] = -0.0
    return x


def _outlier(rng: np.random.Generator, n: int) -> np.ndarray:
    x = 1e-3 * rng.standard_normal((ROWS, n))
    x[np.arange(ROWS), rng.integers(0, n, ROWS)] = [100.0, -100.0, 5.0, -5.0, 1e4, -1e4]
    return x


def _constant(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array([0.7, -0.7, 3.0, -3.0, 1e-3, 65504.0])[:, None] * np.ones((ROWS, n))


def _ties(rng: np.random.Generator, n: int) -> np.ndarray:
    # values on a coarse grid, so many candidate scales tie
    return rng.integers(-8, 8, (ROWS, n)) * 0.25


def _ties_small_grid(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 4, (ROWS, n)) - 1.5


def _tiny(rng: np.random.Generator, n: int) -> np.ndarray:
    return 1e-30 * rng.standard_normal((ROWS, n))


def _huge(rng: np.random.Generator, n: int) -> np.ndarray:
    return 1e30 * rng.standard_normal((ROWS, n))


def _near_f32_max(rng: np.random.Generator, n: int) -> np.ndarray:
    # x * x, sums and max - min overflow to infinity inside the searches
    return rng.choice([-1.0, 1.0], (ROWS, n)) * rng.uniform(1e38, 3.4e38, (ROWS, n))


def _subnormal(rng: np.random.Generator, n: int) -> np.ndarray:
    return 1e-40 * rng.standard_normal((ROWS, n))


def _negative(rng: np.random.Generator, n: int) -> np.ndarray:
    return -np.abs(rng.standard_normal((ROWS, n))) - 0.01


def _positive(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.abs(rng.standard_normal((ROWS, n))) + 0.01


def _sparse(rng: np.random.Generator, n: int) -> np.ndarray:
    # most values zero; whole blocks and sub-blocks of zeros beside nonzero ones
    x = rng.standard_normal((ROWS, n)) * (rng.random((ROWS, n)) < 0.1)
    x[:, : n // 2] = 0.0
    return x


CASES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "normal": _normal,
    "student_t": _student_t,
    "zeros": _zeros,
    "outlier": _outlier,
    "constant": _constant,
    "ties": _ties,
    "ties_small_grid": _ties_small_grid,
    "tiny": _tiny,
    "huge": _huge,
    "near_f32_max": _near_f32_max,
    "subnormal": _subnormal,
    "negative": _negative,
    "positive": _positive,
    "sparse": _sparse,
}


def _imatrices(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    random = rng.random(n) * 10.0
    with_zeros = random * (rng.random(n) < 0.7)
    huge = random.copy()
    huge[rng.integers(0, n)] = 1e30
    return {
        "random": random,
        "ones": np.ones(n),
        "with_zeros": with_zeros,
        "all_zeros": np.zeros(n),
        "one_huge": huge,
        "subnormal": np.full(n, 1e-40),
    }


def _check(lib, x: np.ndarray, qtype: str, imatrix: np.ndarray | None, what: str) -> None:
    x = np.asarray(x, np.float32)
    assert np.isfinite(x).all()
    w = None if imatrix is None else np.asarray(imatrix, np.float32)
    want = ggml_quantize(lib, x, qtype, w)
    got = qfast.gguf.quantize(x, qtype, imatrix=w)
    assert got.dtype == np.uint8 and got.shape == want.shape, (what, got.shape, want.shape)
    if not np.array_equal(got, want):
        row, col = np.argwhere(got != want)[0]
        n_bad = int((got != want).any(axis=1).sum())
        pytest.fail(
            f"{qtype} {what}: {n_bad} of {len(want)} rows differ from ggml, first at row {row} "
            f"byte {col}: qfast {got[row, col]}, ggml {want[row, col]}"
        )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("qtype", K_TYPES)
def test_k_quant_ref_is_ggml(ggml_quants, qtype: str, case: str) -> None:  # noqa: F811
    rng = np.random.default_rng(zlib.crc32(f"{qtype} {case}".encode()))
    for n in K_LENGTHS:
        _check(ggml_quants, CASES[case](rng, n), qtype, None, f"{case} rows of {n}")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("qtype", K_TYPES + LEGACY_TYPES)
def test_imatrix_quant_is_ggml(ggml_quants, qtype: str, case: str) -> None:  # noqa: F811
    rng = np.random.default_rng(zlib.crc32(f"{qtype} {case} imatrix".encode()))
    for n in K_LENGTHS if qtype in K_TYPES else LEGACY_LENGTHS:
        x = CASES[case](rng, n)
        for name, w in _imatrices(rng, n).items():
            _check(ggml_quants, x, qtype, w, f"{case} rows of {n}, imatrix {name}")


@pytest.mark.parametrize("qtype", K_TYPES + LEGACY_TYPES)
def test_many_random_rows_are_ggml(ggml_quants, qtype: str) -> None:  # noqa: F811
    """Many rows of mixed scales (rows in parallel, one imatrix for all)."""
    rng = np.random.default_rng(7)
    n = 512
    x = rng.standard_normal((256, n)) * np.exp(rng.normal(0, 3, (256, 1)))
    w = rng.random(n) ** 4
    if qtype in K_TYPES:
        _check(ggml_quants, x, qtype, None, "256 rows of mixed scales")
    _check(ggml_quants, x, qtype, w, "256 rows of mixed scales, imatrix")


def _sparse_blocks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16384 rows of one super-block: sparse values (1% to 30% nonzero, every other row
    non-negative) and an importance matrix that is zero on about half the columns."""
    rng = np.random.default_rng(seed)
    rows, n = 16384, 256
    dens = rng.uniform(0.01, 0.3, (rows, 1))
    x = rng.standard_normal((rows, n)) * (rng.random((rows, n)) < dens)
    x[::2] = np.abs(x[::2])
    w = rng.random(n) ** 3 * (rng.random(n) < 0.5)
    return x, w


# (seed, rows): super-blocks where make_qkx3_quants's least-squares fit returns a negative
# sub-block scale, so make_qp_quants sees values below zero. ggml then keeps the low byte of a
# negative code (uint8_t) and sums with the int; Q4_K packs such a code unclamped, Q5_K clamps
# it to 63. Found by search: each row here gives other bytes when the codes are summed as
# uint8_t (and the Q4_K rows when Q4_K clamps like Q5_K).
NEGATIVE_SCALE_ROWS = {
    "Q4_K": [(2, [12279, 13783, 14571]), (4, [13035])],
    "Q5_K": [(2, [9913]), (4, [5967, 12491])],
}


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K"])
def test_negative_subblock_scales_are_ggml(ggml_quants, qtype: str) -> None:  # noqa: F811
    for seed, rows in NEGATIVE_SCALE_ROWS[qtype]:
        x, w = _sparse_blocks(seed)
        _check(ggml_quants, x[rows], qtype, w, f"sparse super-blocks {rows} of seed {seed}")


@pytest.mark.parametrize("qtype", K_TYPES + LEGACY_TYPES)
def test_offered_with_and_without_imatrix(qtype: str) -> None:
    from qfast import _qfast

    assert _qfast.gguf_can_quantize_rows(qtype, True)
    if qtype in K_TYPES:
        assert _qfast.gguf_can_quantize_rows(qtype, False)

"""qfast.matmul_int8: exact against NumPy's int64 matmul, shapes as np.matmul, clear errors."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import qfast

I8, U8 = np.int8, np.uint8


def ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def check(a: np.ndarray, b: np.ndarray) -> None:
    got = qfast.matmul_int8(a, b)
    want = ref(a, b)
    assert got.dtype == np.int32
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.astype(np.int64), want)


def rand(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


SIZES = [1, 3, 17, 4097]


# Every combination with at most one 4097 (the rest would only be slower, not different).
MKN = [(m, k, n) for m in SIZES for k in SIZES for n in SIZES if m * k * n <= 4097 * 17 * 17]


@pytest.mark.parametrize("adt", [I8, U8])
@pytest.mark.parametrize(("m", "k", "n"), MKN)
def test_random_odd_sizes(adt, m, k, n):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    check(rand(rng, (m, k), adt), rand(rng, (k, n), I8))


@pytest.mark.parametrize("adt", [I8, U8])
def test_large(adt):
    rng = np.random.default_rng(3)
    check(rand(rng, (130, 1000), adt), rand(rng, (1000, 300), I8))


@pytest.mark.parametrize(
    ("av", "bv"),
    [(-128, -128), (-128, 127), (127, -128), (127, 127), (255, -128), (255, 127), (0, -128)],
)
@pytest.mark.parametrize("k", [1, 3, 17, 4097])
def test_extreme_operands(av, bv, k):
    adt = U8 if av > 127 or av == 0 else I8
    a = np.full((5, k), av, adt)
    b = np.full((k, 19), bv, I8)
    check(a, b)
    # Extremes mixed with their opposites, so sums cancel and every lane differs.
    rng = np.random.default_rng(k)
    a2 = np.where(rng.random((5, k)) < 0.5, av, 0 if adt == U8 else -128).astype(adt)
    b2 = np.where(rng.random((k, 19)) < 0.5, bv, 127).astype(I8)
    check(a2, b2)


def test_deepest_k_fits_int32():
    # The worst cases exactly at the documented limits are still exact.
    k = 65793  # 255 * 128 * k <= 2**31 - 1
    got = qfast.matmul_int8(np.full((1, k), 255, U8), np.full((k, 2), -128, I8))
    assert int(got[0, 0]) == -255 * 128 * k
    k = 131071  # 128 * 128 * k <= 2**31 - 1
    got = qfast.matmul_int8(np.full((1, k), -128, I8), np.full((k, 1), -128, I8))
    assert int(got[0, 0]) == 128 * 128 * k


def isa_battery() -> str:
    """Run in a subprocess per ISA path (``QFAST_ISA``): the shapes that reach each of a path's
    integer kernels (the small-M path at M <= 4; single, wide and partial panels; depths across
    the AVX2 tiles' 128-deep chunks) against NumPy's int64 product, and the deepest K allowed
    with every operand at the end of its range. Returns the path's name."""
    rng = np.random.default_rng(16)
    for m in (1, 2, 3, 4, 5, 8, 13):
        for k, n in ((1, 70), (7, 1100), (136, 83), (300, 16), (1031, 129)):
            for adt in (I8, U8):
                check(rand(rng, (m, k), adt), rand(rng, (k, n), I8))
    check(rand(rng, (130, 264), I8), rand(rng, (264, 200), I8))
    # Inside, `a` meets `b + 128` (uint8 `a` as `a - 128`): -128 x 127 and 0 x 127 put -128
    # against panel bytes of 255 all the way down.
    deepest = [(-128, -128, 131071), (-128, 127, 131071), (255, -128, 65793), (255, 127, 65793)]
    for av, bv, k in [*deepest, (0, 127, 65793), (0, -128, 999)]:
        adt = U8 if av >= 0 else I8
        for m in (1, 4, 5, 9):  # small-M, then tiles of 5 rows and of 8 + 1
            # 9 panels: on one thread, a task of a wide group and a panel, and a partial one.
            got = qfast.matmul_int8(np.full((m, k), av, adt), np.full((k, 131), bv, I8))
            want = av * bv * k
            assert (got.astype(np.int64) == want).all(), (m, k, av, bv, got.ravel()[:4], want)
    return qfast.cpu_info()["isa"]


@pytest.mark.parametrize("isa", qfast.cpu_info()["available"])
def test_every_isa_path_against_int64(isa, isa_env, run_python):
    code = "import test_matmul; print(test_matmul.isa_battery())"
    proc = run_python(["-c", code], isa_env(isa, 1), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == isa


@pytest.mark.parametrize(("adt", "k"), [(U8, 65794), (I8, 131072)])
def test_too_deep_is_refused(adt, k):
    with pytest.raises(ValueError, match="split K"):
        qfast.matmul_int8(np.zeros((1, k), adt), np.zeros((k, 1), I8))


def test_numpy_shape_semantics():
    rng = np.random.default_rng(1)
    a2, b2 = rand(rng, (4, 9), I8), rand(rng, (9, 5), I8)
    a1, b1 = rand(rng, (9,), U8), rand(rng, (9,), I8)
    a3 = rand(rng, (3, 4, 9), I8)
    b3 = rand(rng, (3, 9, 5), I8)
    for a, b in [(a1, b2), (a2, b1), (a1, b1), (a3, b2), (a3, b1), (a3, b3), (a2, b3)]:
        check(a, b)
    assert qfast.matmul_int8(a1, b1).shape == ()
    # Broadcast batch dimensions.
    check(rand(rng, (2, 1, 4, 9), I8), rand(rng, (3, 9, 5), I8))


def test_non_contiguous_inputs():
    rng = np.random.default_rng(2)
    a = rand(rng, (40, 60), U8)
    b = rand(rng, (80, 50), I8)
    check(a[::2, 1::2], b[::2, ::-1][:30])
    check(np.asfortranarray(a), b[:60])
    check(a.T[:, :33], b[:33, :7])


def test_empty():
    assert qfast.matmul_int8(np.zeros((0, 5), I8), np.zeros((5, 3), I8)).shape == (0, 3)
    assert qfast.matmul_int8(np.zeros((2, 5), I8), np.zeros((5, 0), I8)).shape == (2, 0)
    got = qfast.matmul_int8(np.zeros((2, 0), U8), np.zeros((0, 3), I8))
    np.testing.assert_array_equal(got, np.zeros((2, 3), np.int32))


@pytest.mark.parametrize(
    ("a", "b", "exc", "match"),
    [
        (np.zeros((2, 3), np.int16), np.zeros((3, 2), I8), TypeError, "int8 or uint8"),
        (np.zeros((2, 3), np.float32), np.zeros((3, 2), I8), TypeError, "astype"),
        (np.zeros((2, 3), I8), np.zeros((3, 2), U8), TypeError, "b must be int8"),
        (np.zeros((2, 3), I8), np.zeros((4, 2), I8), ValueError, "do not align"),
        (np.int8(3), np.zeros((3, 2), I8), ValueError, "0-d"),
        (np.zeros((2, 3), I8), [[1], [2], [3]], TypeError, "b must be int8"),
    ],
)
def test_errors(a, b, exc, match):
    with pytest.raises(exc, match=match):
        qfast.matmul_int8(a, b)


def test_thread_counts_and_concurrent_calls():
    rng = np.random.default_rng(4)
    a = rand(rng, (70, 700), U8)
    b = rand(rng, (700, 900), I8)
    want = ref(a, b)
    for t in (1, 2, 3):
        qfast.set_num_threads(t)
        np.testing.assert_array_equal(qfast.matmul_int8(a, b), want)
    results = [None] * 4

    def work(i):
        results[i] = qfast.matmul_int8(a, b)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for r in results:
        np.testing.assert_array_equal(r, want)


@pytest.mark.parametrize("adt", [I8, U8])
@pytest.mark.parametrize(
    ("ashape", "bshape"),
    [
        ((20000, 2, 2), (20000, 2, 2)),  # the case: many tiny batches
        ((7, 1, 5, 9), (1, 3, 9, 4)),  # broadcast on both sides
        ((3, 1, 40, 300), (4, 300, 60)),  # batches big enough for the tile kernels
        ((2, 5, 9), (9,)),  # 1-d right operand (one tall matrix)
        ((9,), (6, 9, 3)),  # 1-d left operand, stacked right
        ((0, 4, 9), (3, 1, 9, 5)),  # an empty batch axis
        ((4, 0, 9), (4, 9, 5)),  # M = 0
        ((4, 2, 0), (1, 0, 5)),  # K = 0: zeros
    ],
)
def test_batches_in_one_call(adt, ashape, bshape):
    rng = np.random.default_rng(5)
    check(rand(rng, ashape, adt), rand(rng, bshape, I8))


def test_batches_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(6)
    a, b = rand(rng, (3000, 3, 17), U8), rand(rng, (3000, 17, 5), I8)
    want = ref(a, b)
    for t in (1, 2, 3):
        qfast.set_num_threads(t)
        np.testing.assert_array_equal(qfast.matmul_int8(a, b), want)


def test_batches_too_deep_are_refused():
    with pytest.raises(ValueError, match="split K"):
        qfast.matmul_int8(np.zeros((2, 1, 140000), I8), np.zeros((2, 140000, 1), I8))


def test_many_small_batches_are_one_call(monkeypatch: pytest.MonkeyPatch):
    """20,000 2x2 batches took 39-60 ms when the batch loop ran in Python, one kernel call per
    batch (NumPy: under 1 ms). The whole batch is now one call into Rust; the speed itself is
    measured by benches/test_matmul.py::test_matmul_int8_batched."""
    from qfast.tensor import linear as _matmul

    real = _matmul._qfast
    calls: list[str] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            fn = getattr(real, name)

            def counted(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return fn(*args, **kwargs)

            return counted

    monkeypatch.setattr(_matmul, "_qfast", Counting())
    rng = np.random.default_rng(7)
    a, b = rand(rng, (20000, 2, 2), I8), rand(rng, (20000, 2, 2), I8)
    got = qfast.matmul_int8(a, b)
    np.testing.assert_array_equal(got, np.matmul(a.astype(np.int64), b).astype(np.int32))
    assert calls == ["matmul_int8_batched"]

"""qfast.hqq against a NumPy transcription of mobiusml/hqq (tests/hqq_reference.py).

qfast sums each group's zero-point mean in NumPy's order, so where no element reaches the
shrink's threshold (no ``pow``) the zero points equal the oracle's bit for bit; elsewhere NumPy's
SIMD ``pow`` and libm's may differ by an ulp. The bounds below are the brief's: the same
iteration count, zero points within 1e-5 (relative), codes equal on at least 99.9% of the
weights, and a reconstruction error no worse than plain min/max rounding, and within 0.1% of
the oracle's.
"""

from __future__ import annotations

import json
import sys

import hqq_reference as ref
import ml_dtypes
import numpy as np
import pytest

import qfast
from qfast import assets

from reference import unpack_codes

F32 = np.float32
ZERO_RTOL = 1e-5
CODES_AGREE = 0.999
ERROR_SLACK = 1.001
AVAILABLE = qfast.cpu_info()["available"]


def codes_of(q: qfast.QTensor) -> np.ndarray:
    """The unsigned codes of a QTensor, one per element, shaped like the tensor (read from the
    dense layout by NumPy, independently of qfast's unpacker)."""
    return unpack_codes(q.data, q.bits, q.shape[-1], False)


def mean_abs_error(w: np.ndarray, deq: np.ndarray) -> float:
    return float(np.abs(w.astype(np.float64) - deq).mean())


def check_against_oracle(
    w: np.ndarray, bits: int, group_size: int | None, *, beats_rtn: bool = True, **kw
) -> None:
    q = qfast.hqq(w, bits, group_size, **kw)
    opt = {k: v for k, v in kw.items() if k not in ("optimize", "round_zero")}
    want = ref.hqq_quantize(
        w, bits, group_size, optimize=kw.get("optimize", True),
        round_zero=kw.get("round_zero", False), **opt,
    )  # fmt: skip
    assert q.shape == w.shape
    assert q.bits == bits
    assert not q.signed
    assert q.meta["method"] == "hqq"
    assert q.meta["iters_run"] == want.iters_run

    zero = q.zero_point.reshape(want.zero.shape)
    assert zero.dtype == F32
    np.testing.assert_allclose(zero, want.zero, rtol=ZERO_RTOL, atol=ZERO_RTOL)
    np.testing.assert_array_equal(q.scale.reshape(want.scale.shape), F32(1) / want.scale)

    codes = codes_of(q).reshape(want.w_q.shape)
    assert codes.max() <= 2**bits - 1
    agree = float((codes == want.w_q).mean())
    assert agree >= CODES_AGREE, f"codes agree on {agree:.5f} of the weights"

    err = mean_abs_error(w, q.dequantize())
    err_oracle = mean_abs_error(w, ref.dequantize(want, w.shape))
    assert err <= err_oracle * ERROR_SLACK
    assert q.meta["error"] == pytest.approx(err, rel=1e-3)
    if beats_rtn and kw.get("optimize", True):
        rtn = qfast.hqq(w, bits, group_size, optimize=False, round_zero=kw.get("round_zero", False))
        assert err <= mean_abs_error(w, rtn.dequantize()) * ERROR_SLACK


def weights(kind: str, shape: tuple[int, int] = (48, 256), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return (rng.standard_normal(shape) * 0.05).astype(F32)
    if kind == "unit":  # wide enough groups that the shrink (and pow) takes part
        return rng.standard_normal(shape).astype(F32)
    if kind == "heavy":  # Student t with 2 degrees of freedom: large outliers
        return rng.standard_t(2, shape).astype(F32)
    if kind == "constant":  # whole constant groups (max == min) among random ones
        w = (rng.standard_normal(shape) * 0.05).astype(F32)
        w[::3] = 0.25
        w[1::3, :128] = -1.5
        w[2, :] = 0.0
        return w
    raise AssertionError(kind)


@pytest.mark.parametrize("group_size", [32, 64, 128, None])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("kind", ["normal", "unit", "heavy", "constant"])
def test_matches_oracle(kind: str, bits: int, group_size: int | None) -> None:
    # On the constant-group data the lp solver (p < 1) trades mean |error| for more exact
    # values (the 128 equal weights of a row land on a code), so it can end above plain
    # rounding in mean |error|; the oracle does exactly the same there.
    check_against_oracle(weights(kind), bits, group_size, beats_rtn=kind != "constant")


@pytest.mark.parametrize(
    "kw",
    [
        {"lp_norm": 1.0},
        {"lp_norm": 0.5, "beta": 3.0, "kappa": 1.05},
        {"early_stop": False, "iters": 30},
        {"round_zero": True},
        {"optimize": False},
        {"iters": 0},
        {"iters": 1},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_options_match_oracle(kw: dict) -> None:
    check_against_oracle(weights("unit", seed=3), 4, 64, **kw)


def test_odd_group_size_and_tails() -> None:
    # 40 is not a multiple of the kernels' 16-value blocks: each group ends in a partial block.
    check_against_oracle(weights("unit", (20, 120), seed=5), 4, 40)
    check_against_oracle(weights("unit", (9, 7), seed=6), 3, None)


@pytest.fixture(scope="module")
def minilm() -> dict[str, np.ndarray]:
    st = pytest.importorskip("safetensors.numpy")
    return st.load_file(str(assets.minilm_dir() / "model.safetensors"))


@pytest.mark.parametrize(
    "name",
    [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.intermediate.dense.weight",
    ],
)
@pytest.mark.parametrize(("bits", "group_size"), [(4, 64), (3, 128), (2, 32)])
def test_minilm_weights(
    minilm: dict[str, np.ndarray], name: str, bits: int, group_size: int
) -> None:
    w = minilm[name]
    assert w.dtype == F32
    assert w.shape[1] == 384
    check_against_oracle(w, bits, group_size)


def test_hqq_beats_rtn_on_heavy_tails() -> None:
    # Not just "no worse": on outlier-heavy weights the solver must actually help.
    w = weights("heavy", (64, 512), seed=9)
    q = qfast.hqq(w, 4, 64)
    rtn = qfast.hqq(w, 4, 64, optimize=False)
    assert mean_abs_error(w, q.dequantize()) < 0.99 * mean_abs_error(w, rtn.dequantize())
    assert q.meta["iters_run"] > 1


def test_thread_count_invariance(qsnapshot, same_bytes) -> None:
    # 1M weights: above parallel::PARALLEL_MIN_ELEMS, so two threads really split the work.
    w = weights("unit", (1024, 1024), seed=11)
    qfast.set_num_threads(1)
    one = qfast.hqq(w, 4, 64)
    qfast.set_num_threads(2)
    two = qfast.hqq(w, 4, 64)
    same_bytes(qsnapshot(two), qsnapshot(one), "hqq on 2 threads vs 1")
    assert two.meta == one.meta


ISA_SCRIPT = """
import sys
import numpy as np
import qfast
rng = np.random.default_rng(21)
out = {}
cases = [
    ("unit", rng.standard_normal((64, 384)).astype(np.float32), 4, 64),
    ("heavy", rng.standard_t(2, (33, 120)).astype(np.float32), 3, 40),
    ("small", (rng.standard_normal((40, 256)) * 0.02).astype(np.float32), 2, None),
    ("wide", rng.standard_normal((8, 1000)).astype(np.float32), 8, 200),
]
for name, w, bits, gs in cases:
    q = qfast.hqq(w, bits, gs)
    out[name + ".data"] = np.asarray(q.data)
    out[name + ".scale"] = q.scale
    out[name + ".zero"] = q.zero_point
    out[name + ".iters"] = np.array([q.meta["iters_run"]])
np.savez(sys.argv[1], isa=np.array(qfast.cpu_info()["isa"]), **out)
"""


@pytest.fixture(scope="module")
def isa_results(tmp_path_factory, isa_outputs) -> dict[str, dict[str, np.ndarray]]:
    script = tmp_path_factory.mktemp("hqq_isa") / "hqq_isa.py"
    script.write_text(ISA_SCRIPT)
    results = isa_outputs(script)
    for isa, got in results.items():
        assert str(got["isa"]) == isa
    return results


@pytest.mark.parametrize("isa", [i for i in AVAILABLE if i != "scalar"])
def test_isa_paths_identical(isa: str, isa_results, same_bytes) -> None:
    got, want = dict(isa_results[isa]), dict(isa_results["scalar"])
    got.pop("isa"), want.pop("isa")
    same_bytes(got, want, f"hqq on {isa} vs scalar")


def test_isa_paths_match_oracle(isa_results) -> None:
    # The scalar path (and so, by the test above, every path) against the oracle.
    rng = np.random.default_rng(21)
    w = rng.standard_normal((64, 384)).astype(F32)
    want = ref.hqq_quantize(w, 4, 64)
    got = isa_results["scalar"]
    assert int(got["unit.iters"][0]) == want.iters_run
    np.testing.assert_allclose(got["unit.zero"].reshape(-1, 1), want.zero, rtol=ZERO_RTOL)


def test_result_is_a_qtensor_with_hqq_grid() -> None:
    w = weights("unit", (16, 128), seed=2)
    q = qfast.hqq(w, 4, 32)
    want = ref.hqq_quantize(w, 4, 32)
    assert q.group_size == 32
    assert q.scale.shape == q.zero_point.shape == (16, 4)
    assert q.scale.dtype == q.zero_point.dtype == F32
    assert q.data.shape == (16, 64) and q.data.dtype == np.uint8  # two codes per byte
    deq = ((codes_of(q).reshape(-1, 32) - want.zero) / want.scale).reshape(w.shape)
    np.testing.assert_allclose(q.dequantize(), deq, rtol=1e-6, atol=1e-6)
    meta = json.loads(json.dumps(q.meta))
    assert meta["iters_run"] == want.iters_run and meta["lp_norm"] == 0.7
    back = qfast.QTensor.from_dict(q.to_dict())
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())
    assert back.meta == q.meta


def test_group_size_none_is_one_group_per_row() -> None:
    w = weights("normal", (6, 96))
    q = qfast.hqq(w, 4, None)
    assert q.group_size == 96 and q.scale.shape == (6, 1)
    same = qfast.hqq(w, 4, 96)
    np.testing.assert_array_equal(q.zero_point, same.zero_point)


def test_inputs_any_layout_and_float_dtype() -> None:
    base = weights("unit", (32, 256), seed=4)
    want = qfast.hqq(base, 4, 64)

    def same(q: qfast.QTensor) -> None:
        np.testing.assert_array_equal(q.data, want.data)
        np.testing.assert_array_equal(q.zero_point, want.zero_point)

    same(qfast.hqq(np.asfortranarray(base), 4, 64))
    wide = np.zeros((32, 512), F32)
    wide[:, ::2] = base
    same(qfast.hqq(wide[:, ::2], 4, 64))
    same(qfast.hqq(base.astype(np.float64), 4, 64))
    same(qfast.hqq(base.tolist(), 4, 64))
    for dt in (np.float16, ml_dtypes.bfloat16):
        low = base.astype(dt)
        np.testing.assert_array_equal(
            qfast.hqq(low, 4, 64).data, qfast.hqq(low.astype(F32), 4, 64).data
        )


def test_one_and_three_dimensional() -> None:
    w = weights("unit", (4, 128), seed=8)
    q1 = qfast.hqq(w[1], 4, 64)
    assert q1.shape == (128,) and q1.scale.shape == (2,)
    check_against_oracle(w[1], 4, 64)
    q3 = qfast.hqq(w.reshape(2, 2, 128), 4, 64)
    assert q3.scale.shape == (2, 2, 2)
    np.testing.assert_array_equal(
        q3.dequantize().reshape(w.shape), qfast.hqq(w, 4, 64).dequantize()
    )


def test_progress() -> None:
    w = weights("unit", seed=7)
    calls: list[tuple[int, int]] = []
    q = qfast.hqq(w, 4, 64, iters=12, progress=lambda done, total: calls.append((done, total)))
    k = q.meta["iters_run"]
    assert calls == [(i, 12) for i in range(1, k + 1)]

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        qfast.hqq(w, 4, 64, progress=stop)
    assert qfast.hqq(w, 4, 64, optimize=False, progress=stop).meta["iters_run"] == 0


def test_non_finite_names_first_position() -> None:
    w = weights("normal", (8, 64))
    w[5, 17] = np.inf
    w[6, 3] = np.nan
    with pytest.raises(ValueError, match=r"inf at index \(5, 17\)"):
        qfast.hqq(w)
    w[5, 17] = 0
    with pytest.raises(ValueError, match=r"NaN at index \(6, 3\)"):
        qfast.hqq(w, 4, 32)


@pytest.mark.parametrize(
    ("w", "kw", "exc", "match"),
    [
        (np.zeros((4, 64), np.int32), {}, TypeError, "float32, float64, float16 or bfloat16"),
        (np.zeros((4, 64), bool), {}, TypeError, "bool"),
        (np.array([[1, 2, 3, 4]], np.int64), {"group_size": 2}, TypeError, "int64"),
        (np.zeros((0, 64), F32), {}, ValueError, "at least one weight"),
        (np.float32(1.0), {}, ValueError, "scalar"),
        (np.zeros((4, 64), F32), {"bits": 1}, ValueError, "between 2 and 8"),
        (np.zeros((4, 64), F32), {"bits": 9}, ValueError, "between 2 and 8"),
        (np.zeros((4, 64), F32), {"bits": 4.0}, TypeError, "bits must be an integer"),
        (np.zeros((4, 100), F32), {}, ValueError, r"pass one of \[1, 2, 4, 5, 10, 20, 25, 50"),
        (np.zeros((4, 64), F32), {"group_size": 0}, ValueError, "group_size must be at least 1"),
        (np.zeros((4, 64), F32), {"lp_norm": 0.0}, ValueError, "lp_norm"),
        (np.zeros((4, 64), F32), {"lp_norm": 1.5}, ValueError, "lp_norm"),
        (np.zeros((4, 64), F32), {"beta": -1.0}, ValueError, "beta"),
        (np.zeros((4, 64), F32), {"kappa": float("nan")}, ValueError, "kappa"),
        (np.zeros((4, 64), F32), {"iters": -1}, ValueError, "iters"),
        (np.zeros((4, 64), F32), {"progress": 3}, TypeError, "progress"),
        (np.array([[-3e38, 3e38]], F32), {"group_size": None}, ValueError, "too wide"),
        (np.array([[1e36, 1e36]], F32), {"group_size": None}, ValueError, "too wide"),
    ],
)
def test_errors(w, kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        qfast.hqq(w, **kw)


def test_qtensor_input_is_rejected() -> None:
    q = qfast.quantize(np.ones((2, 8), F32), 8)
    with pytest.raises(TypeError, match="already a QTensor"):
        qfast.hqq(q)


def test_reference_transcription_is_faithful() -> None:
    # The oracle itself, on a case small enough to follow by hand: one group, 2-bit codes.
    w = np.array([[0.0, 0.1, 0.2, 0.9]], F32)
    res = ref.hqq_quantize(w, 2, None, optimize=False)
    assert res.scale[0, 0] == F32(3) / F32(0.9)
    np.testing.assert_array_equal(res.w_q, [[0, 0, 1, 3]])  # 0.333.. and 0.666.. round to 0, 1
    assert sys.modules["hqq_reference"] is ref

"""qfast.gptq / qfast.rtn / qfast.Hessian against the NumPy transcription of the reference
(``gptq_reference.py``) and against hand-derived properties of the reference grid."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import gptq_reference as ref
import numpy as np
import pytest

import qfast

from conftest import snapshot

F32 = np.float32


def layer(rows: int, cols: int, tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A weight and calibration inputs whose channels are correlated (GPTQ gains nothing on
    independent ones) and differ in scale (as real activations do, so act_order has an
    order to follow), a few of them outliers."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((rows, cols)).astype(F32)
    W[:, rng.integers(0, cols, 3)] *= F32(4)  # a few large weights per row
    mix = np.eye(cols, dtype=F32) + 2 * rng.standard_normal((cols, cols)).astype(F32) / np.sqrt(
        F32(cols)
    )
    chan = rng.lognormal(0.0, 0.5, cols).astype(F32)
    chan[rng.integers(0, cols, 2)] *= F32(8)
    X = ((rng.standard_normal((tokens, cols)).astype(F32) @ mix) * chan).astype(F32)
    return W, X


def ref_codes(W, H, **kw):
    Q, s, z, g, loss = ref.fasterquant(W, H, **kw)
    return ref.codes(Q, s, z, g), Q, s, z, g, loss


def qcodes(q: qfast.QTensor) -> np.ndarray:
    """Unsigned per-element codes of a reference-grid QTensor."""
    s = q.scale if q.g_idx is None else q.scale[:, q.g_idx]
    zp = q.zero_point if q.g_idx is None else q.zero_point[:, q.g_idx]
    if q.group_size is not None and q.g_idx is None:
        s = np.repeat(s, q.group_size, axis=1)[:, : q.shape[1]]
        zp = np.repeat(zp, q.group_size, axis=1)[:, : q.shape[1]]
    return np.round(q.dequantize() / s + zp).astype(np.int32)


def _case_id(sym: bool, bits: int, gs: int | None, ao: bool, st: bool) -> str:
    order = "ao" if ao else "seq"
    return f"{'sym' if sym else 'asym'}-{bits}b-g{gs}-{order}{'-static' if st else ''}"


CASES = [
    pytest.param(sym, bits, gs, ao, st, id=_case_id(sym, bits, gs, ao, st))
    for sym in (True, False)
    for bits in (4, 3)
    for gs in (32, 64, 128, None, 100)
    for ao in (False, True)
    for st in ((False, True) if gs else (False,))
]


@pytest.mark.parametrize(("sym", "bits", "gs", "ao", "st"), CASES)
def test_matches_reference(sym: bool, bits: int, gs: int | None, ao: bool, st: bool) -> None:
    W, X = layer(96, 384, 1024, seed=bits * 7 + (gs or 0))
    H = ref.hessian([X[:500], X[500:]])
    q = qfast.gptq(
        W, hessian=H, bits=bits, group_size=gs, symmetric=sym, act_order=ao, static_groups=st
    )
    want, Q, s, z, g, loss = ref_codes(
        W, H, bits=bits, sym=sym, groupsize=gs or -1, actorder=ao, static_groups=st
    )
    got = qcodes(q)
    same = np.mean(got == want)
    if not ao:
        assert same >= 0.999, same
    else:
        assert same >= 0.99, same
        err = np.linalg.norm(X @ (W - q.dequantize()).T) ** 2
        err_ref = np.linalg.norm(X @ (W - Q).T) ** 2
        assert abs(err - err_ref) <= 0.01 * err_ref
    # The grid the QTensor records is the reference's, group by group: exactly for static
    # groups (found before any update), else up to the rounding of the updates (the two
    # factorisations of H differ in the last bits).
    if st:
        np.testing.assert_array_equal(q.scale, s)
        np.testing.assert_array_equal(q.zero_point, z.astype(np.int32))
    elif gs is not None and not ao:
        np.testing.assert_allclose(q.scale, s, rtol=1e-5)
        assert np.mean(q.zero_point == z) >= 0.999
    if ao and gs is not None and not st:
        np.testing.assert_array_equal(q.g_idx, g)
    else:
        assert q.g_idx is None
    assert q.loss == pytest.approx(loss, rel=2e-3)  # a few codes may differ (above)
    assert q.bits == bits and not q.signed and q.shape == W.shape


@pytest.mark.parametrize("sym", [True, False])
def test_mse_grid_matches_reference(sym: bool) -> None:
    W, X = layer(24, 128, 512, seed=3)
    H = ref.hessian([X])
    q = qfast.gptq(W, hessian=H, group_size=64, symmetric=sym, act_order=False, mse=True)
    want, *_ = ref_codes(W, H, sym=sym, groupsize=64, mse=True)
    assert np.mean(qcodes(q) == want) >= 0.999
    # The search shrinks ranges: some scale must be below the plain min/max grid's.
    plain = qfast.rtn(W, group_size=64, symmetric=sym)
    assert np.all(q.scale <= plain.scale * (1 + 1e-6)) or not np.allclose(q.scale, plain.scale)


def test_rtn_is_the_reference_grid() -> None:
    W, _ = layer(16, 200, 1, seed=4)
    for sym in (True, False):
        for gs in (64, None):
            q = qfast.rtn(W, bits=4, group_size=gs, symmetric=sym)
            g = gs or W.shape[1]
            for c0 in range(0, W.shape[1], g):
                quant = ref.Quantizer(4, sym).find_params(W[:, c0 : c0 + g])
                deq = ref.quantize(W[:, c0 : c0 + g], quant.scale, quant.zero, quant.maxq)
                np.testing.assert_array_equal(q.dequantize()[:, c0 : c0 + g], deq)


def test_rtn_grid_by_hand() -> None:
    # asymmetric: range [min(x, 0), max(x, 0)] = [0, 3.75] -> scale 0.25, zero 0; the ties
    # 4.5 and 1.5 and 2.5 round to even.
    w = np.array([[1.125, 3.75, 0.375, 0.625]], F32)
    q = qfast.rtn(w, bits=4, group_size=None, symmetric=False)
    assert q.scale[0, 0] == 0.25 and q.zero_point[0, 0] == 0
    np.testing.assert_array_equal(qcodes(q), [[4, 15, 2, 2]])
    # symmetric: scale = 2·max|x| / 15 = 0.5, zero 8: -7.5 -> -8 -> code 0, 2.5 -> 2 -> 10,
    # and +7.5 -> 8 -> 16, clipped to 15 (the reference grid's top code is 2^(b-1) - 1 + 8).
    q = qfast.rtn(np.array([[-3.75, 1.25, 0.0, 3.75]], F32), bits=4, group_size=None)
    assert q.scale[0, 0] == 0.5 and q.zero_point[0, 0] == 8
    np.testing.assert_array_equal(qcodes(q), [[0, 10, 8, 15]])
    # all zero: the range becomes [-1, 1]; zeros stay exact
    q = qfast.rtn(np.zeros((2, 8), F32), group_size=4)
    np.testing.assert_array_equal(q.dequantize(), 0)


def test_identity_hessian_is_rtn() -> None:
    # With H = I the inverse factor is diagonal: no error is spread, and GPTQ rounds each
    # weight as RTN does, ties included (round half to even, from the Rust column loop).
    # Scale 0.5 (max |w| 3.75 in every group): w / scale = 0.5, 2.5, -2.5, 7.5, -7.5, 5.5, 0, -0.5.
    w = np.tile(np.array([0.25, 1.25, -1.25, 3.75, -3.75, 2.75, 0.0, -0.25], F32), (6, 8))
    w *= np.arange(1, 7, dtype=F32)[:, None]
    for gs in (16, None):
        for sym in (True, False):
            r = qfast.rtn(w, group_size=gs, symmetric=sym)
            q = qfast.gptq(w, hessian=np.eye(64, dtype=F32), group_size=gs, symmetric=sym)
            np.testing.assert_array_equal(q.data, r.data)
            np.testing.assert_array_equal(q.scale, r.scale)
            np.testing.assert_array_equal(q.zero_point, r.zero_point)


def test_gptq_beats_rtn_on_the_layer_output() -> None:
    W, X = layer(128, 256, 2048, seed=5)
    Xc, Xh = X[:1024], X[1024:]
    for ao in (False, True):
        q = qfast.gptq(W, Xc, group_size=64, symmetric=False, act_order=ao)
        r = qfast.rtn(W, group_size=64, symmetric=False)
        e_q = np.linalg.norm(Xh @ (W - q.dequantize()).T)
        e_r = np.linalg.norm(Xh @ (W - r.dequantize()).T)
        assert e_q < (0.7 if ao else 0.9) * e_r, (ao, e_q, e_r)


def test_hessian_accumulation() -> None:
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((n, 48)).astype(F32) for n in (7, 100, 1, 33)]
    h = qfast.Hessian(48)
    for x in xs:
        assert h.add(x) is h
    X = np.concatenate(xs).astype(np.float64)
    np.testing.assert_allclose(h.matrix(), 2 / len(X) * X.T @ X, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h.matrix(), ref.hessian(xs), rtol=1e-4, atol=1e-5)
    assert h.n_samples == len(X) and h.matrix().dtype == F32
    # [..., in] batches, float64 / float16 inputs, and empty batches
    h2 = qfast.Hessian(48).add(X.reshape(3, -1, 48)).add(np.zeros((0, 48), F32))
    np.testing.assert_allclose(h2.matrix(), h.matrix(), rtol=1e-5, atol=1e-6)
    # X= is the same as hessian= built from X, and gptq leaves a shared Hessian as it was
    W = rng.standard_normal((8, 48)).astype(F32)
    before = h.matrix().copy()
    a = qfast.gptq(W, hessian=h, group_size=16)
    b = qfast.gptq(W, np.concatenate(xs), group_size=16)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(h.matrix(), before)


def test_threads_do_not_change_results() -> None:
    W, X = layer(512, 256, 1024, seed=7)
    H = qfast.Hessian(256).add(X)
    runs = []
    for n in (1, 2):
        qfast.set_num_threads(n)
        q = qfast.gptq(W, hessian=H, group_size=32, act_order=True)
        runs.append((q.data.copy(), q.scale.copy(), q.zero_point.copy(), q.loss))
    for a, b in zip(runs[0][:3], runs[1][:3]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][3] == runs[1][3]


def isa_battery() -> dict[str, np.ndarray]:
    """GPTQ's outputs on cases that exercise every branch of the Rust column loop."""
    out = {}
    cases = [
        ("ao", dict(group_size=32, act_order=True)),
        ("static", dict(group_size=48, act_order=True, static_groups=True)),
        ("row", dict(group_size=None, symmetric=False, bits=3)),
        ("mse", dict(group_size=64, act_order=False, mse=True, block_size=40)),
    ]
    for name, opts in cases:
        W, X = layer(37, 192, 400, seed=len(name))
        q = qfast.gptq(W, X, **opts)
        out.update({f"{name}.{k}": v for k, v in snapshot(q).items()})
    return out


def test_every_isa_path_gives_the_same_bytes(isa_outputs, same_bytes) -> None:
    outs = isa_outputs(Path(__file__).resolve())
    for isa, got in outs.items():
        same_bytes(got, outs["scalar"], f"gptq on {isa} vs scalar")
    same_bytes(isa_battery(), outs["scalar"], "gptq here vs scalar")


def test_dead_columns() -> None:
    W, X = layer(16, 64, 256, seed=8)
    X[:, [3, 40]] = 0  # inputs that never fire: H[i, i] == 0
    q = qfast.gptq(W, X, group_size=32)
    deq = q.dequantize()
    np.testing.assert_array_equal(deq[:, [3, 40]], 0)
    want, *_ = ref_codes(W, ref.hessian([X]), groupsize=32, actorder=True)
    assert np.mean(qcodes(q) == want) >= 0.99


def test_not_positive_definite_recovery() -> None:
    rng = np.random.default_rng(9)
    W = rng.standard_normal((8, 32)).astype(F32)
    H = np.eye(32, dtype=F32)
    H[5, 5] = -0.5  # mean diagonal ~0.95: damping must reach 0.64 before H is definite
    with pytest.warns(RuntimeWarning, match="damping raised to 0.64"):
        q = qfast.gptq(W, hessian=H, group_size=16)
    assert q.meta["damp"] == pytest.approx(0.64)
    with pytest.raises(ValueError, match="not positive definite"):
        qfast.gptq(W, hessian=-np.eye(32, dtype=F32), group_size=16)


def test_progress_and_meta() -> None:
    W, X = layer(8, 300, 400, seed=10)
    seen: list[tuple[int, int]] = []
    q = qfast.gptq(W, X, block_size=128, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(128, 300), (256, 300), (300, 300)]
    assert q.meta["method"] == "gptq" and q.meta["block_size"] == 128
    assert "symmetric grid, unsigned codes" in repr(q)
    assert "asymmetric" in repr(qfast.gptq(W, X, symmetric=False))
    assert q.group_size == 128 and q.scale.shape == (8, 3)  # a ragged last group of 44


def test_linear_runs_gptq_weights() -> None:
    W, X = layer(64, 256, 512, seed=11)
    q = qfast.gptq(W, X, group_size=64, act_order=True)
    assert q.g_idx is not None
    want = X[:16] @ q.dequantize().T
    y = qfast.linear(X[:16], q, compute="float")
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-3 * np.abs(want).max())


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "awq-sym", "hqq", "hqq-3bit"])
def test_linear_runs_every_method(method: str) -> None:
    # Each method's QTensor (unsigned codes with int or float zero points, g_idx, signed
    # AWQ codes) goes straight into qfast.linear, as accurate as its dequantized weight.
    W, X = layer(48, 128, 300, seed=13)
    q = {
        "rtn": lambda: qfast.rtn(W, group_size=64),
        "gptq": lambda: qfast.gptq(W, X, group_size=64),
        "awq": lambda: qfast.awq(W, X, group_size=64).qweights[0],
        "awq-sym": lambda: qfast.awq(W, X, group_size=64, symmetric=True).qweights[0],
        "hqq": lambda: qfast.hqq(W, 4, 64),
        "hqq-3bit": lambda: qfast.hqq(W, 3, 64),
    }[method]()
    want = X[:8] @ q.dequantize().T
    got = qfast.linear(X[:8], q, compute="float")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_errors() -> None:
    W, X = layer(8, 64, 128, seed=12)
    with pytest.raises(ValueError, match="exactly one of X"):
        qfast.gptq(W)
    with pytest.raises(ValueError, match="exactly one of X"):
        qfast.gptq(W, X, hessian=qfast.Hessian(64).add(X))
    bad = X.copy()
    bad[7, 9] = np.nan
    with pytest.raises(ValueError, match=r"calibration inputs contains nan at index \(7, 9\)"):
        qfast.gptq(W, bad)
    badw = W.copy()
    badw[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"W contains inf at index \(1, 2\)"):
        qfast.gptq(badw, X)
    with pytest.raises(ValueError, match="last axis must be in_features=64"):
        qfast.gptq(W, X[:, :60])
    with pytest.raises(ValueError, match=r"hessian has shape \(60, 60\)"):
        qfast.gptq(W, hessian=np.eye(60, dtype=F32))
    with pytest.raises(ValueError, match="hessian contains NaN"):
        qfast.gptq(W, hessian=np.full((64, 64), np.nan, F32))
    with pytest.raises(ValueError, match="bits=9"):
        qfast.gptq(W, X, bits=9)
    with pytest.raises(ValueError, match="group_size must be at least 1"):
        qfast.gptq(W, X, group_size=0)
    with pytest.raises(ValueError, match="block_size must be at least 1"):
        qfast.gptq(W, X, block_size=0)
    with pytest.raises(ValueError, match="damp must be a positive"):
        qfast.gptq(W, X, damp=0)
    with pytest.raises(ValueError, match="static_groups needs a group_size"):
        qfast.gptq(W, X, group_size=None, static_groups=True)
    with pytest.raises(ValueError, match="must be 2-D"):
        qfast.gptq(W[0], X)
    with pytest.raises(TypeError, match="float array"):
        qfast.gptq(W.astype(np.int32), X)
    with pytest.raises(TypeError, match="must be a float array"):
        qfast.Hessian(64).add(X.astype(np.int64))
    with pytest.raises(ValueError, match="no samples yet"):
        qfast.Hessian(64).matrix()
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        qfast.gptq(W, X[:10])
    with pytest.raises(ValueError, match="overflows float32"):
        qfast.gptq(W, X * F32(1e20))
    # a single input column (a 1x1 Hessian) and a single row
    q = qfast.gptq(W[:, :1], X[:, :1])
    np.testing.assert_array_equal(q.dequantize(), qfast.rtn(W[:, :1]).dequantize())
    assert qfast.gptq(W[:1], X).shape == (1, 64)
    # a Hessian with far fewer rows than columns still quantizes, thanks to damping
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q = qfast.gptq(W, X[:2])
    assert np.isfinite(q.dequantize()).all()


@pytest.fixture(scope="module")
def minilm_layer0() -> dict[str, np.ndarray]:
    pytest.importorskip("tokenizers")
    from qfast.models import Bert, calibration_paragraphs

    bert = Bert.load()
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.0.intermediate.dense"]
    X = bert.capture_linear_inputs(calibration_paragraphs(12))
    out = {}
    for n in names:
        out[n + ".W"] = np.asarray(bert.linear_weight(n), F32)
        out[n + ".X"] = X[n]
    return out


@pytest.mark.parametrize("ao", [False, True])
@pytest.mark.parametrize("layer_name", ["attention.self.query", "intermediate.dense"])
def test_real_layer_matches_reference(minilm_layer0, layer_name: str, ao: bool) -> None:
    # all-MiniLM-L6-v2's weights and their real inputs (Wikipedia text through the model).
    name = f"encoder.layer.0.{layer_name}"
    W, X = minilm_layer0[name + ".W"], minilm_layer0[name + ".X"]
    H = ref.hessian([X])
    q = qfast.gptq(W, hessian=H, group_size=64, symmetric=False, act_order=ao)
    want, Q, *_ = ref_codes(W, H, sym=False, groupsize=64, actorder=ao)
    same = np.mean(qcodes(q) == want)
    assert same >= (0.99 if ao else 0.999), same
    err = np.linalg.norm(X @ (W - q.dequantize()).T) ** 2
    err_ref = np.linalg.norm(X @ (W - Q).T) ** 2
    assert abs(err - err_ref) <= 0.01 * err_ref


if __name__ == "__main__":  # the ISA-path test runs this file under each QFAST_ISA
    np.savez(sys.argv[1], **isa_battery())

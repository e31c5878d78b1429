"""qfast.linear: integer mode against a NumPy emulation of the same dynamic quantization, float
mode against ``x @ dequantize(w).T``, on random, adversarial and real (MiniLM) weights."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import qfast

from reference import reference_quantize, unpack_codes

F32 = np.float32
I8 = np.int8


def column_groups(w: qfast.QTensor) -> np.ndarray:
    k = w.shape[1]
    if w.g_idx is not None:
        return w.g_idx.astype(np.int64)
    if w.group_size is not None:
        return np.arange(k) // w.group_size
    return np.zeros(k, np.int64)


def weight_grid(w: qfast.QTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes [n, k] (int64), scale and zero point [n, groups] (float64)."""
    n, k = w.shape
    q = unpack_codes(w.data, w.bits, k, w.signed).astype(np.int64)
    if w.axis is None and w.group_size is None:  # per-tensor
        scale = np.full((n, 1), float(w.scale))
        zp = np.full((n, 1), 0.0 if w.zero_point is None else float(w.zero_point))
        return q, scale, zp
    scale = np.asarray(w.scale, np.float64).reshape(n, -1)
    zp = np.zeros_like(scale)
    if w.zero_point is not None:
        zp = np.asarray(w.zero_point, np.float64).reshape(n, -1)
    return q, scale, zp


def emulate_int8(x: np.ndarray, w: qfast.QTensor, bias=None) -> tuple[np.ndarray, np.ndarray]:
    """The integer mode in float64: per-row symmetric INT8 activations (qfast.quantize's grid),
    integer sums per group, then the scales. Returns (y, magnitude of the summed terms)."""
    n, k = w.shape
    x2 = x.reshape(-1, k).astype(F32)
    xq, sx, _ = reference_quantize(x2, 8, symmetric=True, axis=0)
    xq = xq.astype(np.int64)
    q, scale, zp = weight_grid(w)
    groups = column_groups(w)
    y = np.zeros((x2.shape[0], n))
    mag = np.zeros_like(y)
    for g in range(scale.shape[1]):
        cols = np.flatnonzero(groups == g)
        raw = xq[:, cols] @ q[:, cols].T
        xs = xq[:, cols].sum(axis=1, keepdims=True)
        y += scale[:, g] * (raw - zp[:, g] * xs)
        wmag = np.abs(q[:, cols]) + np.abs(zp[:, g : g + 1])
        mag += np.abs(scale[:, g]) * (np.abs(xq[:, cols]) @ wmag.T)
    sx = sx.astype(np.float64).reshape(-1, 1)
    y, mag = y * sx, mag * sx
    if bias is not None:
        y = y + bias
        mag = mag + np.abs(bias)
    return y.reshape(*x.shape[:-1], n), mag.reshape(*x.shape[:-1], n)


def check_int8(x, w, bias=None):
    y = qfast.linear(x, w, bias)
    want, mag = emulate_int8(x, w, bias)
    assert y.dtype == F32 and y.shape == want.shape
    segments = w.scale.size // w.shape[0] + 4
    tol = 4e-7 * segments * mag + 1e-30
    err = np.abs(y - want)
    assert (err <= tol).all(), f"max err {err.max()} vs tol {tol.flat[np.argmax(err - tol)]}"
    return y


def check_float(x, w, bias=None):
    y = qfast.linear(x, w, bias, compute="float")
    wd = w.dequantize().astype(np.float64)
    x64 = x.astype(np.float64)
    want = x64 @ wd.T + (0 if bias is None else bias)
    mag = np.abs(x64) @ np.abs(wd).T + (0 if bias is None else np.abs(bias))
    err = np.abs(y - want)
    assert (err <= 2e-6 * np.sqrt(w.shape[1]) * mag + 1e-30).all(), err.max()
    return y


SCHEMES = [
    dict(bits=8, axis=0),
    dict(bits=8, axis=0, symmetric=False),
    dict(bits=8, group_size=64),
    dict(bits=8, group_size=32, symmetric=False),
    dict(bits=4, group_size=128),
    dict(bits=4, group_size=32, symmetric=False),
    dict(bits=4, axis=0),
    dict(bits=4, group_size=48),  # ragged last group, group not a multiple of 32
    dict(bits=2, group_size=16, symmetric=False),
    dict(bits=3, group_size=64),
    dict(bits=5, axis=0, symmetric=False),
    dict(bits=8),  # per-tensor
]


@pytest.mark.parametrize("kw", SCHEMES, ids=str)
@pytest.mark.parametrize(("m", "k", "n"), [(1, 200, 33), (3, 64, 16), (19, 300, 70), (9, 1, 5)])
def test_random(kw, m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    W = rng.standard_normal((n, k)).astype(F32)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10, (m, 1))).astype(F32)
    w = qfast.quantize(W, **kw)
    check_int8(x, w)
    check_float(x, w)
    bias = rng.standard_normal(n).astype(F32)
    check_int8(x, w, bias)
    check_float(x, w, bias)


def isa_battery() -> str:
    """Run in a subprocess per ISA path (``QFAST_ISA``): W8A8 (8-bit weights, integer mode)
    against the NumPy emulation for one and two rows (the GEMV tiles), more rows (chunked
    tiles), depths across the AVX2 tiles' 128-deep chunks and every 8-bit grid, extreme codes
    included. Returns the path's name."""
    rng = np.random.default_rng(16)
    for m in (1, 2, 3, 8, 19):
        for k, n in ((136, 33), (300, 70), (1031, 17)):
            W = rng.standard_normal((n, k)).astype(F32)
            x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10, (m, 1))).astype(F32)
            x[0, ::3] = -1e3  # activations at -127 (the grid is symmetric)
            for kw in ({"axis": 0}, {"axis": 0, "symmetric": False}, {"group_size": 32}):
                check_int8(x, qfast.quantize(W, 8, **kw))
    for signed in (True, False):
        lo, hi = (-128, 127) if signed else (0, 255)
        codes = np.where(np.arange(70 * 300).reshape(70, 300) % 3 == 0, lo, hi)
        zp = None if signed else np.full((70, 1), 128, np.int32)
        w = qfast.QTensor(
            codes.astype(I8 if signed else np.uint8),
            (70, 300),
            8,
            signed,
            np.full((70, 1), 0.01, F32),
            zp,
            axis=0,
        )
        for m in (1, 2, 5):
            check_int8(np.where(rng.random((m, 300)) < 0.5, -5.0, 5.0).astype(F32), w)
    return qfast.cpu_info()["isa"]


@pytest.mark.parametrize("isa", qfast.cpu_info()["available"])
def test_w8a8_on_every_isa_path(isa, isa_env, run_python):
    code = "import test_linear; print(test_linear.isa_battery())"
    proc = run_python(["-c", code], isa_env(isa, 1), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == isa


def test_act_order_g_idx():
    # GPTQ act_order: columns visited in a permuted order, groups assigned along it.
    rng = np.random.default_rng(7)
    n, k, gs = 40, 256, 32
    W = rng.standard_normal((n, k)).astype(F32)
    perm = rng.permutation(k)
    g_idx = np.empty(k, np.int32)
    g_idx[perm] = np.arange(k) // gs
    q = qfast.quantize(W[:, perm], 4, group_size=gs, symmetric=False)
    codes = unpack_codes(q.data, 4, k, False)
    unperm = np.empty_like(codes)
    unperm[:, perm] = codes
    w = qfast.QTensor(
        qfast.pack_int4(unperm.astype(np.uint8)),
        (n, k),
        4,
        False,
        q.scale,
        q.zero_point,
        group_size=gs,
        g_idx=g_idx,
    )
    np.testing.assert_array_equal(w.dequantize(), q.dequantize()[:, np.argsort(perm)])
    x = rng.standard_normal((5, k)).astype(F32)
    check_int8(x, w)
    check_float(x, w)
    # Same layer without the permutation: the same outputs up to rounding.
    y_plain = qfast.linear(x[:, perm], q, compute="float")
    np.testing.assert_allclose(qfast.linear(x, w, compute="float"), y_plain, rtol=1e-5, atol=1e-5)


def test_adversarial_activations():
    rng = np.random.default_rng(8)
    W = rng.standard_normal((24, 96)).astype(F32)
    w = qfast.quantize(W, 4, group_size=32, symmetric=False)
    x = np.zeros((6, 96), F32)
    x[1] = 1.0  # constant row
    x[2, 5] = 1e30  # one huge outlier: every other activation quantizes to 0
    x[3] = -3.0e-39  # subnormal
    x[4] = np.where(np.arange(96) % 2, 127.5, -127.5)  # ties at the clamp
    x[5] = np.finfo(F32).max / 1e3
    check_int8(x, w)
    check_float(x, w)
    np.testing.assert_array_equal(qfast.linear(x[:1], w), np.zeros((1, 24), F32))


def test_extreme_weights_codes():
    # Every code at an end of its range, signed and unsigned, 8 and 4 bits.
    n, k = 17, 80
    x = np.random.default_rng(9).standard_normal((4, k)).astype(F32)
    for bits, signed in [(8, True), (8, False), (4, True), (4, False)]:
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        codes = np.where(np.arange(n * k).reshape(n, k) % 3 == 0, lo, hi)
        dt = np.int8 if signed else np.uint8
        data = codes.astype(dt) if bits == 8 else qfast.pack_int4(codes.astype(dt))
        scale = np.full((n, 1), 0.01, F32)
        zp = None if signed else np.full((n, 1), 2 ** (bits - 1), np.int32)
        w = qfast.QTensor(data, (n, k), bits, signed, scale, zp, axis=0)
        check_int8(x, w)
        check_float(x, w)


def test_batch_shapes_and_1d():
    rng = np.random.default_rng(10)
    w = qfast.quantize(rng.standard_normal((12, 40)).astype(F32), 4, group_size=16)
    x = rng.standard_normal((2, 3, 40)).astype(F32)
    y = check_int8(x, w)
    assert y.shape == (2, 3, 12)
    np.testing.assert_array_equal(y.reshape(6, 12), qfast.linear(x.reshape(6, 40), w))
    y1 = qfast.linear(x[0, 0], w)
    assert y1.shape == (12,)
    np.testing.assert_array_equal(y1, y[0, 0])
    # Other float dtypes and non-contiguous activations are converted.
    np.testing.assert_array_equal(qfast.linear(x.astype(np.float64), w), y)
    xt = np.asfortranarray(x[0])
    np.testing.assert_array_equal(qfast.linear(xt, w), y[0])
    assert qfast.linear(np.zeros((0, 40), F32), w).shape == (0, 12)


def test_packed_weight_is_cached_and_invalidated():
    rng = np.random.default_rng(11)
    W = rng.standard_normal((16, 64)).astype(F32)
    w = qfast.quantize(W, 8, axis=0)
    x = rng.standard_normal((2, 64)).astype(F32)
    y = qfast.linear(x, w)
    packed = w._packed[-1]
    qfast.linear(x, w)
    assert w._packed[-1] is packed
    # New arrays on the QTensor: packed again, with the new values.
    w.scale = w.scale * 2
    np.testing.assert_allclose(qfast.linear(x, w), 2 * y, rtol=1e-6)
    assert w._packed[-1] is not packed
    # The cache is not part of the saved tensor.
    assert "_packed" not in str(sorted(w.to_dict()))


def test_thread_counts_and_concurrency():
    rng = np.random.default_rng(12)
    w = qfast.quantize(rng.standard_normal((300, 512)).astype(F32), 4, group_size=64)
    x = rng.standard_normal((37, 512)).astype(F32)
    qfast.set_num_threads(1)
    want = {c: qfast.linear(x, w, compute=c) for c in ("int8", "float")}
    for t in (2, 3):
        qfast.set_num_threads(t)
        for c in want:
            np.testing.assert_array_equal(qfast.linear(x, w, compute=c), want[c])
    results = {}

    def work(i):
        c = "int8" if i % 2 else "float"
        results[i] = (c, qfast.linear(x, w, compute=c))

    fresh = qfast.quantize(rng.standard_normal((300, 512)).astype(F32), 4, group_size=64)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    # Also packing a fresh weight from several threads at once.
    threads += [threading.Thread(target=qfast.linear, args=(x, fresh)) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for c, y in results.values():
        np.testing.assert_array_equal(y, want[c])


def test_errors():
    rng = np.random.default_rng(13)
    w = qfast.quantize(rng.standard_normal((8, 32)).astype(F32), 4, group_size=16)
    x = rng.standard_normal((3, 32)).astype(F32)
    with pytest.raises(ValueError, match="features"):
        qfast.linear(x[:, :31], w)
    with pytest.raises(TypeError, match="float array"):
        qfast.linear(x.astype(np.int32), w)
    with pytest.raises(ValueError, match="0-d"):
        qfast.linear(np.float32(1.0), w)
    with pytest.raises(TypeError, match="QTensor"):
        qfast.linear(x, rng.standard_normal((8, 32)))
    with pytest.raises(ValueError, match="bias"):
        qfast.linear(x, w, np.zeros(7, F32))
    with pytest.raises(ValueError, match="compute"):
        qfast.linear(x, w, compute="int4")
    with pytest.raises(ValueError, match="2-d"):
        qfast.linear(x, qfast.quantize(np.ones((2, 8, 32), F32), 8, axis=0))
    with pytest.raises(ValueError, match="axis=0"):
        qfast.linear(x, qfast.quantize(np.ones((8, 32), F32), 8, axis=1))
    for compute in ("int8", "float"):
        bad = x.copy()
        bad[2, 17] = np.nan
        with pytest.raises(ValueError, match=r"\(2, 17\)"):
            qfast.linear(bad, w, compute=compute)
        bad3 = np.ones((2, 3, 32), F32)
        bad3[1, 2, 5] = -np.inf
        with pytest.raises(ValueError, match=r"\(1, 2, 5\)"):
            qfast.linear(bad3, w, compute=compute)
    with pytest.raises(ValueError, match="bias"):
        qfast.linear(x, w, np.full(8, np.nan, F32))


def test_tampered_qtensor_is_an_error_not_a_crash():
    rng = np.random.default_rng(14)
    w = qfast.quantize(rng.standard_normal((8, 32)).astype(F32), 8, axis=0, symmetric=False)
    w.zero_point = np.full((8, 1), np.inf, F32)
    with pytest.raises(ValueError, match="not finite"):
        qfast.linear(np.ones((1, 32), F32), w)
    w = qfast.quantize(rng.standard_normal((8, 32)).astype(F32), 4, group_size=16)
    w.g_idx = np.full(32, 5, np.int32)
    with pytest.raises(ValueError, match="g_idx"):
        qfast.linear(np.ones((1, 32), F32), w)
    w = qfast.quantize(rng.standard_normal((8, 32)).astype(F32), 3, axis=0)
    # 3-bit codes are packed densely (12 bytes per row of 32): a byte per code is refused.
    w.data = np.full((8, 32), 100, np.int8)
    with pytest.raises(ValueError, match=r"stored as \(8, 12\)"):
        qfast.linear(np.ones((1, 32), F32), w)


def test_real_minilm_layers():
    """All-MiniLM-L6-v2's FFN weights with activations of a realistic scale: integer mode is
    within a small relative error of float, float mode matches the dequantized product."""
    st = pytest.importorskip("safetensors.numpy")
    from qfast import assets

    weights = st.load_file(str(assets.minilm_dir() / "model.safetensors"))
    rng = np.random.default_rng(15)
    names = ("encoder.layer.0.intermediate.dense.weight", "encoder.layer.5.output.dense.weight")
    for name in names:
        W = weights[name]
        x = (rng.standard_normal((7, W.shape[1])) * 0.5).astype(F32)
        exact = x.astype(np.float64) @ W.astype(np.float64).T
        for kw in (dict(bits=8, axis=0), dict(bits=4, group_size=32, symmetric=False)):
            w = qfast.quantize(W, **kw)
            y = check_int8(x, w)
            check_float(x, w)
            rel = np.linalg.norm(y - exact) / np.linalg.norm(exact)
            assert rel < (0.02 if kw["bits"] == 8 else 0.15), (name, kw, rel)


@pytest.mark.parametrize("compute", ["float", "int8"])
def test_output_beyond_float32_is_an_error_naming_its_index(compute):
    """Finite activations near float32's limit used to give NaN or Inf silently."""
    w = qfast.quantize(np.ones((4, 8), F32), 8, axis=0)
    x = np.ones((2, 3, 8), F32)
    x[1, 2] = 3e38  # 8 products of 3e38 overflow
    with pytest.raises(ValueError, match=r"output at index \(1, 2, 0\) overflows float32"):
        qfast.linear(x, w, compute=compute)
    # Large values whose sums stay in range are fine.
    x[1, 2] = 3e37
    y = qfast.linear(x, w, compute=compute)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[1, 2], np.full(4, 8 * 3e37, F32), rtol=1e-2)

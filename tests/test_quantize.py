"""qfast.quantize / dequantize against the NumPy reference of DESIGN.md."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import qfast

from reference import reference_quantize, unpack_codes

RNG = np.random.default_rng(1234)

SEED_W = np.array(
    [
        [3.14159265, -2.71828183, 1.41421356, -0.57735027],
        [0.86602540, 2.23606798, -1.73205081, 0.31622777],
        [-1.61803399, 0.70710678, 2.44948974, -0.44721360],
        [1.25992105, -3.16227766, 0.52359878, 1.77245385],
    ],
    np.float32,
)
SEED_Q = np.array(
    [[255, 18, 185, 105], [163, 218, 58, 141], [63, 157, 227, 110], [179, 0, 149, 200]],
    np.uint8,
)


def test_seed_worked_example():
    # Seed 000: scale = range / 255 with the midpoint zero point 128, passed explicitly.
    scale = (np.float32(3.14159265) - np.float32(-3.16227766)) / np.float32(255)
    q = qfast.quantize(SEED_W, 8, symmetric=False, scale=scale, zero_point=128)
    np.testing.assert_array_equal(q.data, SEED_Q)
    assert q.data.dtype == np.uint8
    # The seed prints 0.02472108; 6.30387031 / 255 is 0.0247210600 (the seed rounds loosely).
    assert abs(float(q.scale) - 0.02472108) < 3e-8
    # The seed's dequantization examples: 255 -> 3.14, 18 -> -2.72.
    d = q.dequantize()
    assert round(float(d[0, 0]), 2) == 3.14 and round(float(d[0, 1]), 2) == -2.72
    # The computed asymmetric grid lands on the same zero point for this matrix.
    assert int(qfast.quantize(SEED_W, 8, symmetric=False).zero_point) == 128


def _check(x, bits, symmetric, axis=None, group_size=None):
    q = qfast.quantize(x, bits, symmetric=symmetric, axis=axis, group_size=group_size)
    codes, scale, zp = reference_quantize(x, bits, symmetric, axis, group_size)
    shape = np.shape(x)
    n = shape[-1] if shape else 1
    got = unpack_codes(q.data, bits, n, symmetric).reshape(shape)
    np.testing.assert_array_equal(got, codes)
    np.testing.assert_array_equal(q.scale, scale.reshape(q.scale.shape))
    if symmetric:
        assert q.zero_point is None
    else:
        np.testing.assert_array_equal(q.zero_point, zp.reshape(q.zero_point.shape))
    # Dequantization is scale * (q - zero_point), per element.
    s = np.asarray(q.scale, np.float32)
    z = np.float32(0) if q.zero_point is None else q.zero_point.astype(np.float32)
    if group_size is not None:
        s = np.repeat(s, group_size, axis=-1)[..., :n].reshape(shape)
        if q.zero_point is not None:
            z = np.repeat(z, group_size, axis=-1)[..., :n].reshape(shape)
    want = (codes.astype(np.float32) - z) * s
    np.testing.assert_array_equal(q.dequantize(), want)
    return q


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    ("axis", "group_size"), [(None, None), (0, None), (1, None), (-1, None), (None, 7)]
)
def test_matches_reference(bits, symmetric, axis, group_size):
    x = RNG.standard_normal((9, 33)).astype(np.float32) * 3
    _check(x, bits, symmetric, axis, group_size)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, ml_dtypes.bfloat16])
def test_input_dtypes_are_converted_to_float32_first(dtype):
    x = (RNG.standard_normal((5, 40)) * 10).astype(dtype)
    for sym in (True, False):
        q = qfast.quantize(x, 4, symmetric=sym, group_size=16)
        ref = qfast.quantize(x.astype(np.float32), 4, symmetric=sym, group_size=16)
        np.testing.assert_array_equal(q.data, ref.data)
        np.testing.assert_array_equal(q.scale, ref.scale)


def test_non_contiguous_views():
    base = RNG.standard_normal((20, 30)).astype(np.float32)
    for view in (base.T, base[::2, ::3], base[::-1, 5:], base[:, ::-2]):
        assert not view.flags.c_contiguous
        for axis, gs in ((None, None), (0, None), (1, None), (None, 4)):
            _check(view, 8, True, axis, gs)
            _check(view, 4, False, axis, gs)


def test_three_dims_every_axis():
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    for axis in range(3):
        _check(x, 8, False, axis)
        _check(x, 4, True, axis)
    _check(x, 4, True, None, 2)


def test_empty_and_scalar():
    for shape in [(0,), (0, 5), (5, 0), (2, 0, 3)]:
        x = np.zeros(shape, np.float32)
        q = qfast.quantize(x, 4, group_size=2)
        assert q.dequantize().shape == shape
        q = qfast.quantize(x, 8, axis=0, symmetric=False)
        assert q.dequantize().shape == shape
    q = qfast.quantize(np.float32(2.5))
    assert q.shape == () and float(q.dequantize()) == 2.5


def test_dequantize_16_bit_outputs():
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    q = qfast.quantize(x, 4, group_size=32)
    f32 = q.dequantize()
    np.testing.assert_array_equal(q.dequantize(np.float16), f32.astype(np.float16))
    bf = qfast.dequantize(q, ml_dtypes.bfloat16)
    assert bf.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(bf, f32.astype(ml_dtypes.bfloat16))


def test_pack_unpack_int4():
    codes = RNG.integers(-8, 8, size=(3, 7)).astype(np.int8)
    p = qfast.pack_int4(codes)
    assert p.shape == (3, 4) and p.dtype == np.uint8
    lo = codes[:, 0::2].astype(np.int32) & 0xF
    np.testing.assert_array_equal(p & 0xF, lo)
    np.testing.assert_array_equal(qfast.unpack_int4(p, 7), codes)
    u = RNG.integers(0, 16, size=(2, 6)).astype(np.uint8)
    np.testing.assert_array_equal(qfast.unpack_int4(qfast.pack_int4(u), 6, signed=False), u)
    with pytest.raises(ValueError, match="4-bit range"):
        qfast.pack_int4(np.array([8], np.int8))


def test_qtensor_dict_round_trip():
    x = RNG.standard_normal((6, 10)).astype(np.float32)
    q = qfast.quantize(x, 4, symmetric=False, group_size=4)
    q.meta["method"] = "rtn"
    r = qfast.QTensor.from_dict(q.to_dict("w."), "w.")
    np.testing.assert_array_equal(r.dequantize(), q.dequantize())
    assert r.meta == {"method": "rtn"} and r.group_size == 4 and not r.signed
    # Zero points are stored at the code width: 3 4-bit values a row take 2 bytes.
    assert q.nbytes == q.data.nbytes + q.scale.nbytes + 6 * 2


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"bits": 9}, ValueError, "bits"),
        ({"bits": 1}, ValueError, "bits"),
        ({"axis": 2}, ValueError, "axis"),
        ({"group_size": 0}, ValueError, "group_size"),
        ({"group_size": 4, "axis": 0}, ValueError, "not both"),
        ({"scale": np.ones(3, np.float32), "axis": 0}, ValueError, "scale"),
        ({"scale": 0.0}, ValueError, "positive"),
        ({"scale": 1.0, "zero_point": 3}, ValueError, "symmetric"),
        ({"scale": 1.0, "symmetric": False}, ValueError, "zero_point"),
        ({"scale": 1.0, "symmetric": False, "zero_point": 300}, ValueError, "code range"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        qfast.quantize(np.ones((4, 5), np.float32), **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_names_the_position(bad):
    x = np.ones((3, 50), np.float32)
    x[2, 17] = bad
    for kw in ({}, {"axis": 0}, {"axis": 1}, {"group_size": 8}, {"scale": 0.1}):
        with pytest.raises(ValueError, match=r"\(2, 17\)"):
            qfast.quantize(x, **kw)


def test_wrong_dtype():
    with pytest.raises(TypeError, match="float32"):
        qfast.quantize(np.ones(4, np.int32))
    with pytest.raises(TypeError, match="float32"):
        qfast.quantize(np.ones(4, np.complex64))
    with pytest.raises(TypeError):
        qfast.dequantize(np.ones(4))


def test_cpu_info():
    info = qfast.cpu_info()
    assert info["isa"] in info["available"]
    assert isinstance(info["features"], list)


def test_dequantize_into_out():
    x = RNG.standard_normal((6, 40)).astype(np.float32)
    q = qfast.quantize(x, 4, group_size=16, symmetric=False)
    out = np.full((6, 40), np.nan, np.float32)
    assert qfast.dequantize(q, out=out) is out
    np.testing.assert_array_equal(out, q.dequantize())
    h = np.empty((6, 40), np.float16)
    assert q.dequantize(np.float16, out=h) is h
    np.testing.assert_array_equal(h, q.dequantize(np.float16))
    b = np.empty((6, 40), ml_dtypes.bfloat16)
    np.testing.assert_array_equal(q.dequantize(ml_dtypes.bfloat16, out=b), q.dequantize(b.dtype))
    with pytest.raises(ValueError, match="shape"):
        q.dequantize(out=np.empty((6, 41), np.float32))
    with pytest.raises(TypeError, match="float32"):
        q.dequantize(out=np.empty((6, 40), np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        q.dequantize(out=np.empty((40, 6), np.float32).T)
    frozen = np.empty((6, 40), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        q.dequantize(out=frozen)

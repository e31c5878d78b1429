"""Dense storage of every code width 2..8: qfast.pack / qfast.unpack, QTensor.data, quantize,
dequantize and linear, all against NumPy's bit-by-bit reference of the layout (each line one
little-endian bit stream, `reference.pack_codes` / `reference.unpack_codes`)."""

from __future__ import annotations

import numpy as np
import pytest

import qfast

from reference import code_range, pack_codes, reference_quantize, unpack_codes

F32 = np.float32
BITS = range(2, 9)
SHAPES = [(), (0,), (1,), (7,), (8,), (9,), (3, 5), (2, 3, 13), (4, 16), (3, 0), (0, 5), (2, 33)]


def random_codes(rng, shape, bits, signed):
    lo, hi = code_range(bits, signed)
    c = rng.integers(lo, hi + 1, size=shape)
    return c.astype(np.int8 if signed else np.uint8)


def test_layout_bytes_by_hand():
    # 3-bit codes 1, 2, 3, 4, 5, 7 -> bits (low first) 100 010 110 001 101 111, then padding.
    p = qfast.pack(np.array([1, 2, 3, 4, 5, 7], np.uint8), 3)
    np.testing.assert_array_equal(p, np.array([0b1101_0001, 0b1101_1000, 0b0000_0011], np.uint8))
    # Signed 5-bit -1, -6: two's complement 11111, 11010 -> low bits first 11111 01011.
    np.testing.assert_array_equal(qfast.pack(np.array([-1, -6], np.int8), 5), [0x5F, 0x03])
    # 4-bit: element 2i in the low nibble of byte i, as pack_int4 always did.
    np.testing.assert_array_equal(qfast.pack(np.array([1, 15, 7], np.uint8), 4), [0xF1, 0x07])


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_matches_numpy_bit_stream(bits, signed, shape):
    rng = np.random.default_rng(bits * 100 + len(shape))
    codes = random_codes(rng, shape, bits, signed)
    n = shape[-1] if shape else 1
    p = qfast.pack(codes, bits)
    lead = shape[:-1] if shape else ()
    assert p.dtype == np.uint8 and p.shape == (*lead, -(-n * bits // 8))
    np.testing.assert_array_equal(p, pack_codes(codes, bits))
    back = qfast.unpack(p, n, bits, signed=signed)
    assert back.dtype == (np.int8 if signed else np.uint8)
    np.testing.assert_array_equal(back, codes.reshape(*lead, n))
    np.testing.assert_array_equal(unpack_codes(p, bits, n, signed), codes.reshape(*lead, n))


@pytest.mark.parametrize("bits", BITS)
def test_unpack_reads_any_bytes(bits):
    # Random bytes (padding bits set too) read as NumPy reads the stream; wider rows are fine.
    rng = np.random.default_rng(bits)
    for n in (1, 5, 8, 11, 40):
        m = -(-n * bits // 8)
        p = rng.integers(0, 256, size=(3, m + 2), dtype=np.uint8)
        for signed in (True, False):
            got = qfast.unpack(p, n, bits, signed=signed).astype(np.int32)
            want = unpack_codes(p[:, :m], bits, n, signed)
            np.testing.assert_array_equal(got, want)


def test_pack_int4_is_pack_4():
    rng = np.random.default_rng(3)
    c = rng.integers(-8, 8, size=(5, 9)).astype(np.int8)
    np.testing.assert_array_equal(qfast.pack_int4(c), qfast.pack(c, 4))
    np.testing.assert_array_equal(qfast.unpack_int4(qfast.pack_int4(c), 9), c)


def test_pack_unpack_errors():
    with pytest.raises(ValueError, match="signed 3-bit range"):
        qfast.pack(np.array([[0, 4]], np.int8), 3)
    with pytest.raises(ValueError, match=r"index \(0, 1\)"):
        qfast.pack(np.array([[0, -1]], np.int16), 3, signed=False)
    with pytest.raises(ValueError, match="unsigned 5-bit range"):
        qfast.pack(np.array([32], np.uint8), 5)
    with pytest.raises(TypeError, match="integer codes"):
        qfast.pack(np.array([1.0]), 3)
    for bad in (1, 9, 0):
        with pytest.raises(ValueError, match="between 2 and 8"):
            qfast.pack(np.array([0], np.uint8), bad)
        with pytest.raises(ValueError, match="between 2 and 8"):
            qfast.unpack(np.array([0], np.uint8), 1, bad)
    with pytest.raises(TypeError, match="bits"):
        qfast.pack(np.array([0], np.uint8), 3.0)
    with pytest.raises(TypeError, match="signed"):
        qfast.pack(np.array([0], np.uint8), 3, signed="yes")
    with pytest.raises(TypeError, match="uint8"):
        qfast.unpack(np.array([0], np.int8), 1, 3)
    with pytest.raises(ValueError, match="cannot hold n=3"):
        qfast.unpack(np.zeros((2, 1), np.uint8), 3, 3)  # 3 x 3 bits need 2 bytes
    with pytest.raises(ValueError, match="cannot hold"):
        qfast.unpack(np.zeros((2, 1), np.uint8), -1, 3)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    ("shape", "kw"),
    [
        ((), {}),
        ((13,), {}),
        ((0,), {}),
        ((3, 0), {"axis": 0}),
        ((5, 21), {"axis": 0}),
        ((5, 21), {"axis": 1}),
        ((4, 37), {"group_size": 8}),
        ((2, 3, 11), {"group_size": 5}),
    ],
    ids=str,
)
def test_quantize_stores_dense_codes(bits, symmetric, shape, kw):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal(shape).astype(F32)
    q = qfast.quantize(x, bits, symmetric=symmetric, **kw)
    codes, _, _ = reference_quantize(x, bits, symmetric, **kw)
    n = shape[-1] if shape else 1
    # The stored bytes are exactly the NumPy bit stream of the reference codes.
    assert q.data.shape == ((*shape[:-1], -(-n * bits // 8)) if bits < 8 else shape)
    np.testing.assert_array_equal(
        q.data.view(np.uint8), pack_codes(codes, bits).reshape(q.data.shape)
    )
    # Dequantize reads them back: scale * (q - zero_point) per element.
    want = np.asarray(
        qfast.QTensor.from_codes(
            codes, bits, symmetric, q.scale, q.zero_point, axis=q.axis, group_size=q.group_size
        ).dequantize()
    )
    np.testing.assert_array_equal(q.dequantize(), want)
    s = np.asarray(q.scale, F32)
    z = 0 if q.zero_point is None else np.asarray(q.zero_point, F32)
    if "group_size" in kw:
        g = kw["group_size"]
        s = np.repeat(s, g, axis=-1)[..., :n]
        z = z if q.zero_point is None else np.repeat(z, g, axis=-1)[..., :n]
    np.testing.assert_array_equal(q.dequantize(), ((codes.astype(F32) - z) * s).reshape(shape))
    # The same grid given back (static quantization) gives the same bytes.
    if x.size:
        again = qfast.quantize(
            x, bits, symmetric=symmetric, scale=q.scale, zero_point=q.zero_point, **kw
        )
        np.testing.assert_array_equal(again.data, q.data)


def test_bits_per_weight_is_dense():
    x = np.random.default_rng(0).standard_normal((64, 1024)).astype(F32)
    # float32 scales and zero points packed at the code width: 32 + bits bits per group of 128.
    for bits in BITS:
        q = qfast.quantize(x, bits, symmetric=False, group_size=128)
        assert q.data.nbytes == 64 * 1024 * bits // 8
        assert q.bits_per_weight == pytest.approx(bits + (32 + bits) / 128)


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_from_codes_packs_densely_and_refuses_out_of_range(bits):
    rng = np.random.default_rng(bits)
    for signed in (True, False):
        codes = random_codes(rng, (6, 19), bits, signed)
        q = qfast.QTensor.from_codes(
            codes,
            bits,
            signed,
            np.ones((6, 1), F32),
            None if signed else np.zeros((6, 1), np.int32),
            axis=0,
        )
        assert q.data.dtype == np.uint8
        np.testing.assert_array_equal(q.data, pack_codes(codes, bits))
        np.testing.assert_array_equal(q.dequantize(), codes.astype(F32))
    _, hi = code_range(bits, True)
    bad = np.zeros((2, 4), np.int32)
    bad[1, 2] = hi + 1  # 2^(b-1): outside the signed range, which packing would wrap
    with pytest.raises(ValueError, match=rf"outside the signed {bits}-bit range"):
        qfast.QTensor.from_codes(bad, bits, True, np.ones((), F32))
    with pytest.raises(ValueError, match="outside the unsigned"):
        qfast.QTensor.from_codes(
            bad - 2**bits, bits, False, np.ones((), F32), np.zeros((), np.int32)
        )


def test_from_codes_8bit_refuses_out_of_range():
    with pytest.raises(ValueError, match="signed 8-bit range"):
        qfast.QTensor.from_codes(np.array([200]), 8, True, np.ones((), F32))
    q = qfast.QTensor.from_codes(np.array([-128, 127]), 8, True, np.ones((), F32))
    assert q.data.dtype == np.int8
    np.testing.assert_array_equal(q.dequantize(), [-128.0, 127.0])


def test_one_byte_per_code_data_is_refused():
    """The old 3-bit layout (a byte per code) is a shape error, not silently misread."""
    q = qfast.quantize(np.ones((4, 16), F32), 3)
    assert q.data.shape == (4, 6)
    with pytest.raises(ValueError, match=r"stored as \(4, 6\)"):
        qfast.QTensor(np.zeros((4, 16), np.int8), (4, 16), 3, True, q.scale)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize(
    "kw", [{"axis": 0}, {"group_size": 16, "symmetric": False}, {"group_size": 24}], ids=str
)
def test_linear_reads_dense_weights(bits, kw):
    rng = np.random.default_rng(bits)
    W = rng.standard_normal((19, 77)).astype(F32)
    x = rng.standard_normal((5, 77)).astype(F32)
    w = qfast.quantize(W, bits, **kw)
    deq = w.dequantize().astype(np.float64)
    # The weight's codes, read independently, give the same dequantized matrix.
    codes = unpack_codes(w.data, bits, 77, w.signed)
    s = np.repeat(np.asarray(w.scale, F32), kw.get("group_size", 77), axis=-1)[:, :77]
    z = (
        0
        if w.zero_point is None
        else np.repeat(np.asarray(w.zero_point, F32), kw["group_size"], axis=-1)[:, :77]
    )
    np.testing.assert_array_equal(w.dequantize(), (codes.astype(F32) - z) * s)
    want = x.astype(np.float64) @ deq.T
    y = qfast.linear(x, w, compute="float")
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    yi = qfast.linear(x, w)  # int8 activations: within the activation rounding
    assert np.abs(yi - want).max() <= 0.05 * np.abs(want).max()


@pytest.mark.parametrize("bits", [3, 4, 5, 8])
def test_pack_unpack_threads_agree(bits: int) -> None:
    """pack / unpack split whole lines across threads (inputs over the parallel threshold):
    the bytes and codes are those of one thread and of the NumPy bit stream."""
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, (1500, 777), dtype=np.uint8)
    out = {}
    for t in (1, 2, 3):
        qfast.set_num_threads(t)
        p = qfast.pack(codes, bits)
        out[t] = (p, qfast.unpack(p, 777, bits, signed=False))
    np.testing.assert_array_equal(out[1][0], pack_codes(codes, bits))
    for t in (2, 3):
        np.testing.assert_array_equal(out[t][0], out[1][0])
        np.testing.assert_array_equal(out[t][1], codes)

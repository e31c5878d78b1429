"""qfast.gguf against the ecosystem's own reference, gguf-py's ``gguf.quants``: quantize must
give the same bytes and dequantize the same float32 bits, on random, adversarial and real
(SmolLM2's GGUF) data."""

from __future__ import annotations

import numpy as np
import pytest

import qfast
import qfast.gguf as qg

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType

QUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16"]
BLOCK_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
READ_TYPES = [*BLOCK_TYPES, "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
F32 = np.float32


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    g, w = got.view(np.uint8).reshape(-1), want.view(np.uint8).reshape(-1)
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, (
        f"{bad.size} bytes differ, first at byte {bad[0]}: {g[bad[0]]} != {w[bad[0]]}"
    )


def check_quantize(x: np.ndarray, t: str, zero_sign: bool = False) -> None:
    want = gguf.quants.quantize(x, T[t])
    got = qg.quantize(x, t)
    if zero_sign and t in ("Q4_1", "Q5_1"):
        # A block of zeros of both signs: its minimum m is a zero whose sign NumPy's min picks
        # by its SIMD reduction order (ggml's C loop keeps the first). Everything else must match.
        for arr in (want, got):
            arr.reshape(-1, qg.type_info(t).type_size)[:, 3] &= 0x7F
    assert_bits_equal(got, want)
    # and back
    assert_bits_equal(qg.dequantize(got, t), gguf.quants.dequantize(want, T[t]).astype(F32))


def adversarial(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Rows of 256 values (8 blocks of 32) built to hit each format's edge cases."""
    n = 256
    if kind == "normal":
        return rng.standard_normal((16, n)).astype(F32)
    if kind == "zeros":
        return np.zeros((4, n), F32)
    if kind == "signed_zeros":
        return np.where(rng.random((4, n)) < 0.5, F32(-0.0), F32(0.0))
    if kind == "constant":
        return np.full((4, n), F32(0.3))
    if kind == "outlier":  # one outlier per block, either sign
        x = rng.standard_normal((8, n)).astype(F32) * F32(0.01)
        at = rng.integers(0, 32, (8, n // 32)) + np.arange(0, n, 32)
        sign = np.where(rng.random(at.shape) < 0.5, -1, 1)
        np.put_along_axis(x, at, (sign * 50).astype(F32), axis=1)
        return x
    if kind == "negative_max":  # the value of largest magnitude is negative
        x = rng.uniform(-1, 1, (8, n)).astype(F32)
        x[:, ::32] = -2.0
        return x
    if kind == "max_both_signs":  # |max| reached by both signs: the first one decides d's sign
        x = rng.uniform(-1, 1, (8, n)).astype(F32)
        x[:, ::32] = 3.0
        x[:, 5::32] = -3.0
        x[1::2, ::32] = -3.0
        x[1::2, 5::32] = 3.0
        return x
    if kind == "ties":  # x / d lands on .5 boundaries of every format's rounding
        base = np.arange(-16, 16, dtype=F32) / F32(2)  # -8 .. 7.5 in halves
        x = np.tile(base, (4, n // 32))
        x[1] *= F32(-1)
        x[2] = np.tile(np.linspace(-127, 127, 32, dtype=F32), n // 32)
        x[3] = np.tile(np.arange(32, dtype=F32) + F32(0.5), n // 32)
        return x
    if kind == "tiny":  # d below float16's normal range (and subnormal float32 values)
        return (rng.standard_normal((4, n)) * 1e-6).astype(F32) * np.array(
            [[1], [1e-3], [1e-30], [1e-38]], F32
        )
    if kind == "huge":  # d beyond float16's range: stored as inf, as ggml does
        scale = np.array([[1e3], [1e5], [1e7], [1.5e38]])
        return (rng.uniform(-1, 1, (4, n)) * scale).astype(F32)
    raise ValueError(kind)


KINDS = [
    "normal",
    "zeros",
    "signed_zeros",
    "constant",
    "outlier",
    "negative_max",
    "max_both_signs",
    "ties",
    "tiny",
    "huge",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", QUANT_TYPES)
def test_quantize_matches_gguf(t: str, kind: str) -> None:
    rng = np.random.default_rng(abs(hash((t, kind))) % 2**32)
    x = adversarial(kind, rng)
    with np.errstate(all="ignore"):
        check_quantize(x, t, zero_sign=kind == "signed_zeros")


@pytest.mark.parametrize("t", QUANT_TYPES)
def test_quantize_shapes(t: str) -> None:
    rng = np.random.default_rng(1)
    for shape in [(32,), (3, 64), (2, 3, 96), (1, 1, 32)]:
        check_quantize(rng.standard_normal(shape).astype(F32), t)
    # float64 / float16 input is converted to float32 first, as gguf-py does with its input
    x = rng.standard_normal((4, 64))
    assert_bits_equal(qg.quantize(x, t), qg.quantize(x.astype(F32), t))
    # non-contiguous input
    xt = rng.standard_normal((64, 6)).astype(F32).T
    assert_bits_equal(qg.quantize(xt, t), gguf.quants.quantize(np.ascontiguousarray(xt), T[t]))


def _random_blocks(t: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes for `n_blocks` blocks, with every float16 field finite."""
    info = qg.type_info(t)
    b = rng.integers(0, 256, (n_blocks, info.type_size), dtype=np.uint8)
    # float16 fields: the block header (d, and dmin / m) of every type but Q6_K, whose d
    # closes the block. Replace them with random finite values (both signs).
    fields = {
        "Q4_0": [0],
        "Q4_1": [0, 2],
        "Q5_0": [0],
        "Q5_1": [0, 2],
        "Q8_0": [0],
        "Q2_K": [80, 82],
        "Q3_K": [108],
        "Q4_K": [0, 2],
        "Q5_K": [0, 2],
        "Q6_K": [208],
        "IQ4_NL": [0],
        "IQ4_XS": [0],
    }[t]
    for at in fields:
        d = rng.uniform(-2, 2, n_blocks).astype(np.float16)
        b[:, at : at + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return b


@pytest.mark.parametrize("t", READ_TYPES)
def test_dequantize_matches_gguf(t: str) -> None:
    rng = np.random.default_rng(7)
    info = qg.type_info(t)
    blocks = _random_blocks(t, 3000, rng)
    want = gguf.quants.dequantize(blocks, T[t])
    got = qg.dequantize(blocks, t)
    assert_bits_equal(got, want.astype(F32))
    # edge bytes: all codes 0x00 / 0xFF around finite scales
    for fill in (0x00, 0xFF):
        b = _random_blocks(t, 8, rng)
        keep = b.copy()
        b[:] = fill
        hdr = {"Q6_K": slice(208, 210), "Q2_K": slice(80, 84), "Q3_K": slice(108, 110)}.get(
            t, slice(0, 4 if t in ("Q4_1", "Q5_1", "Q4_K", "Q5_K") else 2)
        )
        b[:, hdr] = keep[:, hdr]
        assert_bits_equal(qg.dequantize(b, t), gguf.quants.dequantize(b, T[t]).astype(F32))
    # N-D data and an explicit logical shape
    two = blocks[:4].reshape(2, 2 * info.type_size)
    assert_bits_equal(qg.dequantize(two, t), gguf.quants.dequantize(two, T[t]).astype(F32))
    flat = qg.dequantize(blocks[:4], t, shape=(4 * info.block_size,))
    assert flat.shape == (4 * info.block_size,)


def test_dequantize_float_types() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 8)).astype(F32)
    assert_bits_equal(qg.dequantize(x.astype(np.float16), "F16"), x.astype(np.float16).astype(F32))
    assert_bits_equal(qg.dequantize(x, "F32"), x)
    b = gguf.quants.quantize(x, T.BF16)
    assert_bits_equal(qg.dequantize(b, "BF16"), gguf.quants.dequantize(b, T.BF16).astype(F32))
    # special values round-trip through F16 / BF16 as gguf-py stores them
    s = np.array([[np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4e38, 65520.0, -1.5]], F32)
    for t in ("F16", "BF16"):
        with np.errstate(all="ignore"):
            assert_bits_equal(qg.quantize(s, t), gguf.quants.quantize(s, T[t]))


def test_type_names_and_info() -> None:
    x = np.ones((2, 32), F32)
    ref = qg.quantize(x, "Q4_0")
    for name in (T.Q4_0, int(T.Q4_0), "q4_0", np.int32(2)):
        assert_bits_equal(qg.quantize(x, name), ref)
    info = qg.type_info("Q4_K")
    assert (info.block_size, info.type_size, info.id, info.can_quantize) == (256, 144, 12, False)
    for t in [*READ_TYPES, "F16", "BF16", "F32"]:
        bs, ts = gguf.GGML_QUANT_SIZES[T[t]]
        assert (qg.type_info(t).block_size, qg.type_info(t).type_size) == (bs, ts)
        assert qg.type_info(t).id == int(T[t])


def test_errors() -> None:
    x = np.ones((2, 48), F32)
    with pytest.raises(ValueError, match=r"blocks of 32 values.*48"):
        qg.quantize(x, "Q4_0")
    with pytest.raises(ValueError, match="cannot quantize to IQ4_XS"):
        qg.quantize(np.ones((1, 256), F32), "IQ4_XS")
    with pytest.raises(ValueError, match="unknown or unsupported GGUF type"):
        qg.quantize(np.ones((1, 32), F32), "Q9_9")
    with pytest.raises(ValueError, match="not supported"):
        qg.quantize(np.ones((1, 32), F32), T.IQ2_XXS)
    with pytest.raises(TypeError, match="GGUF type"):
        qg.quantize(np.ones((1, 32), F32), 2.5)
    with pytest.raises(TypeError, match="float array"):
        qg.quantize(np.ones((1, 32), np.int32), "Q8_0")
    bad = np.ones((3, 64), F32)
    bad[2, 40] = np.nan
    with pytest.raises(ValueError, match=r"NaN at index \(2, 40\)"):
        qg.quantize(bad, "Q8_0")
    bad[2, 40] = -np.inf
    with pytest.raises(ValueError, match=r"(-inf|-Inf) at index \(2, 40\)"):
        qg.quantize(bad, "Q5_1")
    blocks = qg.quantize(np.ones((2, 64), F32), "Q4_1")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        qg.dequantize(blocks[:, :-1], "Q4_1")
    with pytest.raises(TypeError, match="uint8 bytes"):
        qg.dequantize(blocks.astype(np.int16), "Q4_1")
    with pytest.raises(ValueError, match="data holds 128"):
        qg.dequantize(blocks, "Q4_1", shape=(3, 64))
    with pytest.raises(ValueError, match="at least one axis"):
        qg.quantize(np.float32(1), "Q8_0")


@pytest.mark.parametrize("t", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_reports_first_position(t: str, bad_value: float) -> None:
    # Two rows of 4096 blocks each: the tensor spans two parallel tasks, and the value
    # reported is the first in the data's order whatever task finds one first.
    x = np.random.default_rng(5).standard_normal((2, 4096 * 32)).astype(F32)
    x[1, 7] = bad_value
    x[1, 100_000] = np.nan
    with pytest.raises(ValueError, match=r"at index \(1, 7\)"):
        qg.quantize(x, t)
    x[1, 7] = 0.0
    x[0, 4096 * 32 - 1] = bad_value  # the last value of a block, of a row and of a task
    with pytest.raises(ValueError, match=r"at index \(0, 131071\)"):
        qg.quantize(x, t)


def test_empty() -> None:
    for t in BLOCK_TYPES:
        got = qg.quantize(np.zeros((0, 64), F32), t)
        assert got.shape == (0, 2 * qg.type_info(t).type_size)
        assert qg.dequantize(got, t).shape == (0, 64)


def test_threads_do_not_change_bytes() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 4096)).astype(F32)  # several parallel tasks
    qfast.set_num_threads(1)
    one = {t: qg.quantize(x, t) for t in BLOCK_TYPES}
    qfast.set_num_threads(2)
    for t in BLOCK_TYPES:
        assert_bits_equal(qg.quantize(x, t), one[t])
        assert_bits_equal(
            qg.dequantize(one[t], t), gguf.quants.dequantize(one[t], T[t]).astype(F32)
        )


@pytest.fixture(scope="module")
def smollm2() -> object:
    from qfast import assets

    return gguf.GGUFReader(assets.smollm2_gguf())


def test_real_gguf_dequantize(smollm2: object) -> None:
    """Every tensor of SmolLM2-135M's GGUF (Q4_1, Q8_0, F32) dequantizes to gguf-py's bits."""
    seen = set()
    for tensor in smollm2.tensors:  # type: ignore[attr-defined]
        t = T(tensor.tensor_type).name
        want = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        got = qg.dequantize(tensor.data, tensor.tensor_type)
        assert_bits_equal(got, want.astype(F32))
        seen.add(t)
    assert {"Q4_1", "Q8_0"} <= seen


@pytest.mark.parametrize("t", QUANT_TYPES)
def test_real_weights_quantize(smollm2: object, t: str) -> None:
    """Real weights (SmolLM2's, dequantized) quantize to gguf-py's bytes in every format."""
    tensors = {x.name: x for x in smollm2.tensors}  # type: ignore[attr-defined]
    for name in ("blk.0.attn_q.weight", "blk.7.ffn_down.weight", "token_embd.weight"):
        w = gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type)
        w = w[:256]
        check_quantize(np.ascontiguousarray(w, F32), t)


@pytest.mark.parametrize("t", ["Q8_0", "Q4_0", "Q4_1"])
def test_qtensor_round_trip(t: str) -> None:
    rng = np.random.default_rng(21)
    x = rng.standard_normal((6, 128)).astype(F32)
    x[1, :32] = 0.25  # a constant block: Q4_1's d = 0
    x[2, 32:64] *= 1e3
    blocks = qg.quantize(x, t)
    q = qg.to_qtensor(blocks, t)
    assert (q.bits, q.group_size, q.shape) == (8 if t == "Q8_0" else 4, 32, x.shape)
    want = gguf.quants.dequantize(blocks, T[t]).astype(F32)
    got = q.dequantize()
    if t == "Q4_1":  # d * (q - zero) against d * q + m: float32 rounding apart
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * np.abs(want).max())
        assert_bits_equal(got[1, :32], want[1, :32])  # d = 0: exactly m
    else:
        assert_bits_equal(got, want)
    back, name = qg.from_qtensor(q)
    assert name == t
    if t == "Q4_1":  # a d = 0 block comes back as d = 1 with zero codes: the same values
        assert_bits_equal(qg.dequantize(back, t), want)
    else:
        assert_bits_equal(back, blocks)
    # straight into linear: as good as the float weights it stands for
    xin = rng.standard_normal((3, 128)).astype(F32)
    ref = xin.astype(np.float64) @ want.T.astype(np.float64)
    y = qfast.linear(xin, q, compute="float")
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_qtensor_conversion_errors() -> None:
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(F32)
    with pytest.raises(ValueError, match="no QTensor form"):
        qg.to_qtensor(qg.quantize(x, "Q5_0"), "Q5_0")
    with pytest.raises(ValueError, match="group-32"):
        qg.from_qtensor(qfast.quantize(x, 8, group_size=64))
    with pytest.raises(ValueError, match="float16"):
        qg.from_qtensor(qfast.quantize(x, 8, group_size=32))  # float32 scales
    q = qg.to_qtensor(qg.quantize(x, "Q4_1"), "Q4_1")
    q.zero_point = q.zero_point + np.float32(0.1)
    with pytest.raises(ValueError, match="not a Q4_1 grid"):
        qg.from_qtensor(q)
    q = qfast.quantize(x, 3, group_size=32)
    q.scale = q.scale.astype(np.float16)
    with pytest.raises(ValueError, match="no GGUF block form"):
        qg.from_qtensor(q)
    with pytest.raises(ValueError, match="whole"):
        qg.to_qtensor(np.zeros((2, 35), np.uint8), "Q8_0")


def test_real_q4_1_weight_into_linear(smollm2: object) -> None:
    """A real Q4_1 GGUF weight goes into qfast.linear without a float round trip."""
    tensors = {x.name: x for x in smollm2.tensors}  # type: ignore[attr-defined]
    w = tensors["blk.0.attn_q.weight"]
    assert T(w.tensor_type).name == "Q4_1"
    q = qg.to_qtensor(w.data, "Q4_1")
    want = gguf.quants.dequantize(w.data, w.tensor_type).astype(F32)
    x = np.random.default_rng(0).standard_normal((4, want.shape[1])).astype(F32)
    ref = x.astype(np.float64) @ want.T.astype(np.float64)
    for compute in ("float", "int8"):
        y = qfast.linear(x, q, compute=compute)
        tol = 1e-4 if compute == "float" else 2e-2
        assert np.linalg.norm(y - ref) <= tol * np.linalg.norm(ref), compute


def _dot_reference(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy float64 of the same arithmetic: exact block sums times d_w * d_x (float32)."""
    nb = x.size // 34
    wb = w.reshape(-1, nb, 18)
    xb = x.reshape(nb, 34)
    dw = wb[..., :2].copy().view(np.float16)[..., 0].astype(F32)
    dx = xb[:, :2].copy().view(np.float16)[:, 0].astype(F32)
    qs = wb[..., 2:]
    q4 = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int64) - 8
    q8 = xb[:, 2:].view(np.int8).astype(np.int64)
    sums = (q4 * q8).sum(-1)  # exact
    return (sums * (dw * dx).astype(np.float64)).sum(-1)


def test_dot_q4_0_q8_0() -> None:
    rng = np.random.default_rng(31)
    for rows, n in [(1, 32), (3, 64), (17, 4096), (5, 4128)]:
        w = qg.quantize(rng.standard_normal((rows, n)).astype(F32), "Q4_0")
        x = qg.quantize(rng.standard_normal(n).astype(F32), "Q8_0")
        got = qg.dot(w, x)
        want = _dot_reference(w, x)
        assert got.shape == (rows,) and got.dtype == F32
        # float32 accumulation over n / 32 blocks: within a few ulps of the float64 sum
        bound = 1e-6 * np.sqrt(n / 32) * _dot_reference(np.abs(w), np.abs(x)).max() + 1e-30
        np.testing.assert_allclose(got, want, rtol=0, atol=bound * 10)
        # the same number as dequantizing both sides, up to float32 rounding
        deq = gguf.quants.dequantize(w, T.Q4_0) @ gguf.quants.dequantize(x, T.Q8_0)
        np.testing.assert_allclose(got, deq, rtol=1e-4, atol=1e-4 * np.abs(deq).max())
    # extreme codes: all 0x00 / 0xFF nibbles and int8 -128 / 127
    w = np.zeros((2, 2 * 18), np.uint8)
    w[:, [0, 18]], w[:, [1, 19]] = 0x00, 0x3C  # d = 1.0
    w[0, 2:18], w[1, 20:36] = 0xFF, 0x00
    x = np.zeros(2 * 34, np.uint8)
    x[[0, 34]], x[[1, 35]] = 0x00, 0x3C
    x[2:34], x[36:68] = 0x80, 0x7F  # -128, 127
    np.testing.assert_array_equal(qg.dot(w, x), _dot_reference(w, x).astype(F32))
    with pytest.raises(ValueError, match="one Q8_0 row"):
        qg.dot(w, x[:34])


def test_rust_fixtures_are_current() -> None:
    # tests/kernels.rs (natively and on aarch64 under QEMU) checks qfast's Rust GGUF code
    # against these gguf-py answers; they must be what gguf-py gives today.
    import gguf_fixtures

    want = gguf_fixtures.build()
    stale = [n for n, data in want.items() if (gguf_fixtures.DATA / n).read_bytes() != data]
    assert not stale, f"rerun `python tests/gguf_fixtures.py`: {stale} changed"
    assert sorted(p.name for p in gguf_fixtures.DATA.iterdir()) == sorted(want)


def test_importance_matrix_input_errors_name_the_problem() -> None:
    x = np.ones((2, 256), np.float32)
    bad = [
        (np.full(256, np.nan, np.float32), "weight 0 is NaN; weights are finite and >= 0"),
        (-np.ones(256, np.float32), "weight 0 is -1; weights are finite and >= 0"),
        (np.ones(255, np.float32), r"imatrix has shape \(255,\).*\(256,\)"),
        (np.ones((2, 256), np.float32), r"imatrix has shape \(2, 256\)"),
    ]
    for w, message in bad:
        with pytest.raises(ValueError, match=message):
            qfast.gguf.quantize(x, "Q4_K", imatrix=w)
    x[1, 7] = np.inf
    with pytest.raises(ValueError, match=r"inf at index \(1, 7\)"):
        qfast.gguf.quantize(x, "Q4_K", imatrix=np.ones(256, np.float32))
    assert qfast.gguf.quantize(np.ones((0, 256), np.float32), "Q6_K").shape == (0, 210)
    # Q8_0, F16 and BF16 take an importance matrix and ignore it, as ggml does
    y = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    for t in ("Q8_0", "F16", "BF16"):
        np.testing.assert_array_equal(
            qfast.gguf.quantize(y, t, imatrix=np.ones(64, np.float32)), qfast.gguf.quantize(y, t)
        )

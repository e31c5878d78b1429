"""QTensor storage and validation: ``scale_dtype``, zero points packed at the code width, the
version-2 dict format (and version 1 still loading), and the checks every QTensor gets when it
is built from arrays or read from a dict."""

from __future__ import annotations

import json
from typing import Any

import gptq_reference as ref
import ml_dtypes
import numpy as np
import pytest

import qfast
from qfast import QTensor
from qfast.tensor.qtensor import _unpack_lines

F32 = np.float32
BF16 = ml_dtypes.bfloat16
RNG = np.random.default_rng(11)


def codes_of(q: QTensor) -> np.ndarray:
    """The per-element codes, unpacked from ``q.data`` (int32, logical shape)."""
    n = q.shape[-1] if q.shape else 1
    flat = _unpack_lines(q.data, n, q.bits, q.signed)
    return flat.astype(np.int32).reshape(q.shape)


def expand(p: np.ndarray, q: QTensor) -> np.ndarray:
    """A scale / zero point array broadcast to every element of ``q``."""
    p = np.asarray(p)
    if q.group_size is not None:
        p = np.repeat(p, q.group_size, axis=-1)[..., : q.shape[-1]]
    return np.broadcast_to(p, q.shape)


def numpy_codes(x: np.ndarray, q: QTensor) -> np.ndarray:
    """``clamp(rint(x / scale) + zp)`` from the stored scale (in float32) and zero point."""
    s = expand(q.scale.astype(F32), q)
    zp = 0 if q.zero_point is None else expand(q.zero_point, q)
    lo, hi = (-(2 ** (q.bits - 1)), 2 ** (q.bits - 1) - 1) if q.signed else (0, 2**q.bits - 1)
    return np.clip(np.rint(x / s) + zp, lo, hi).astype(np.int32)


# Granularities, each reaching a different path of the kernels: per-tensor (two-phase),
# per-channel on a leading axis (fused blocks), on a middle axis (interleaved lines), on the
# last axis (lanes), and per-group (fused lines, a short last group).
GRANULARITIES = [
    pytest.param((6, 40), {}, id="tensor"),
    pytest.param((6, 40), {"axis": 0}, id="axis0"),
    pytest.param((3, 5, 40), {"axis": 1}, id="axis1of3"),
    pytest.param((6, 40), {"axis": 1}, id="lastaxis"),
    pytest.param((6, 40), {"group_size": 16}, id="group16"),
]


@pytest.mark.parametrize("sdtype", [np.float16, BF16, "float16", "bfloat16"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("shape", "gran"), GRANULARITIES)
def test_codes_are_exact_for_the_stored_scale(
    shape: tuple[int, ...], gran: dict[str, int], symmetric: bool, sdtype: Any
) -> None:
    x = (RNG.standard_normal(shape) * RNG.lognormal(0, 2, shape[-1])).astype(F32)
    for bits in (8, 4, 3):
        q = qfast.quantize(x, bits, symmetric=symmetric, scale_dtype=sdtype, **gran)
        name = np.dtype(sdtype).name
        assert q.scale.dtype.name == name
        np.testing.assert_array_equal(codes_of(q), numpy_codes(x, q))
        if not symmetric:
            # The zero point, too, is computed against the rounded scale.
            lo = np.minimum(x, 0)
            if "axis" in gran:
                axes = tuple(a for a in range(x.ndim) if a != gran["axis"])
                lo = lo.min(axis=axes, keepdims=True)
            elif "group_size" in gran:
                g = gran["group_size"]
                pad = -x.shape[-1] % g
                lo = np.pad(lo, [(0, 0)] * (x.ndim - 1) + [(0, pad)]).reshape(*x.shape[:-1], -1, g)
                lo = lo.min(axis=-1)
            else:
                lo = lo.min()
            zp = np.clip(np.rint(-lo / q.scale.astype(F32)), 0, 2**bits - 1)
            np.testing.assert_array_equal(q.zero_point, zp.reshape(q.scale.shape))


@pytest.mark.parametrize("sdtype", [np.float16, BF16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("shape", "gran"), GRANULARITIES)
def test_rounded_scales_cost_only_their_rounding(
    shape: tuple[int, ...], gran: dict[str, int], symmetric: bool, sdtype: Any
) -> None:
    x = RNG.standard_normal((64, *shape)).astype(F32).reshape(64 * shape[0], *shape[1:])
    eps = 2.0**-11 if sdtype is np.float16 else 2.0**-8  # relative rounding of the scale
    for bits in (8, 4):
        q32 = qfast.quantize(x, bits, symmetric=symmetric, **gran)
        q16 = qfast.quantize(x, bits, symmetric=symmetric, scale_dtype=sdtype, **gran)
        e32 = np.abs(q32.dequantize() - x)
        e16 = np.abs(q16.dequantize() - x)
        # Every element stays within the float32 grid's bound (half a step, one step at a
        # signed grid's clipped end) grown by the scale's rounding over the code range.
        qmax = 2 ** (bits - 1) - 1 if symmetric else 2**bits - 1
        step = expand(q16.scale.astype(F32), q16)
        bound = (1.0 if symmetric else 0.5) + 2 * qmax * eps
        assert np.all(e16 <= step * bound * (1 + 1e-6))
        rms16, rms32 = np.sqrt(np.mean(e16**2)), np.sqrt(np.mean(e32**2))
        assert rms16 <= rms32 * (1 + 16 * eps), (rms16, rms32)


def test_scale_dtype_arguments() -> None:
    x = RNG.standard_normal((4, 32)).astype(F32)
    for bad in ("float64", np.int8, "half16"):
        with pytest.raises(ValueError, match="scale_dtype"):
            qfast.quantize(x, 4, scale_dtype=bad)
    with pytest.raises(TypeError, match="scale_dtype"):
        qfast.quantize(x, 4, scale_dtype=object())
    # float16 cannot hold the scale of a range this wide: an error, not an infinite scale.
    with pytest.raises(ValueError, match="float16"):
        qfast.quantize(x * F32(1e8), 8, scale_dtype=np.float16)
    # Tiny values: the scale never rounds to zero.
    q = qfast.quantize(x * F32(1e-30), 8, scale_dtype=np.float16)
    assert q.scale > 0 and np.isfinite(q.dequantize()).all()
    # A given scale is rounded first; the codes follow the rounded one.
    q = qfast.quantize(x, 8, scale=0.1, scale_dtype=np.float16)
    assert q.scale == np.float16(0.1) and q.scale.dtype == np.float16
    np.testing.assert_array_equal(codes_of(q), numpy_codes(x, q))


def test_rtn_scale_dtype_matches_numpy() -> None:
    W = RNG.standard_normal((16, 200)).astype(F32)
    for sym in (True, False):
        q = qfast.rtn(W, bits=4, group_size=64, symmetric=sym, scale_dtype=np.float16)
        assert q.scale.dtype == np.float16
        s = expand(q.scale.astype(F32), q)
        z = expand(q.zero_point, q)
        want = np.clip(np.rint(W / s) + z, 0, 15)
        np.testing.assert_array_equal(codes_of(q), want)
        # The zero point of the reference grid is computed against the rounded scale.
        if not sym:
            lo = np.minimum(np.pad(W, [(0, 0), (0, 56)]).reshape(16, -1, 64).min(-1), 0)
            np.testing.assert_array_equal(q.zero_point, np.rint(-lo / q.scale.astype(F32)))
    with pytest.raises(ValueError, match="float16"):
        qfast.rtn(W * F32(1e8), bits=4, scale_dtype=np.float16)


class _Float16Quantizer(ref.Quantizer):
    """The reference's Quantizer with its scale rounded to float16 where it is found (as a
    GPTQ checkpoint stores it) before the zero point is taken."""

    def find_params(self, x: np.ndarray) -> _Float16Quantizer:
        assert not self.mse
        x = x.astype(F32)
        xmin = np.minimum(x.min(1), F32(0))
        xmax = np.maximum(x.max(1), F32(0))
        if self.sym:
            xmax = np.maximum(np.abs(xmin), xmax)
            xmin = np.where(xmin < 0, -xmax, xmin)
        dead = (xmin == 0) & (xmax == 0)
        xmin, xmax = np.where(dead, F32(-1), xmin), np.where(dead, F32(1), xmax)
        self.scale = ((xmax - xmin) / self.maxq).astype(np.float16).astype(F32)
        if self.sym:
            self.zero = np.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = np.round(-xmin / self.scale)
        self.scale = self.scale.reshape(-1, 1)
        self.zero = self.zero.reshape(-1, 1)
        return self


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("sym", [True, False])
def test_gptq_scale_dtype_matches_reference(
    monkeypatch: pytest.MonkeyPatch, sym: bool, static: bool
) -> None:
    rng = np.random.default_rng(5)
    W = rng.standard_normal((48, 256)).astype(F32)
    X = (rng.standard_normal((600, 256)) @ rng.standard_normal((256, 256)) / 16).astype(F32)
    H = ref.hessian([X])
    q = qfast.gptq(
        W, hessian=H, bits=4, group_size=64, symmetric=sym, act_order=False,
        static_groups=static, scale_dtype=np.float16,
    )  # fmt: skip
    monkeypatch.setattr(ref, "Quantizer", _Float16Quantizer)
    Q, s, z, g, _ = ref.fasterquant(W, H, bits=4, sym=sym, groupsize=64, static_groups=static)
    assert q.scale.dtype == np.float16
    # Within the float32 rounding of the updates (two factorisations of H), as in test_gptq.
    assert np.mean(codes_of(q) == ref.codes(Q, s, z, g)) >= 0.999
    assert np.mean(q.scale.astype(F32) == s) >= 0.99
    np.testing.assert_allclose(q.scale.astype(F32), s, rtol=2e-3)


def test_bits_per_weight_4bit_group128_float16() -> None:
    w = RNG.standard_normal((4096, 4096), dtype=F32)
    q = qfast.quantize(w, 4, group_size=128, symmetric=False, scale_dtype=np.float16)
    # codes 2048 B a row, 32 float16 scales, 32 4-bit zero points (16 B) a row.
    want = 4096 * (2048 + 32 * 2 + 16)
    assert q.nbytes == want
    assert q.bits_per_weight == pytest.approx(8 * want / 4096**2) and q.bits_per_weight <= 4.16
    # float32 scales, for comparison: 4 bytes a group.
    q32 = qfast.quantize(w, 4, group_size=128, symmetric=False)
    assert q32.nbytes == 4096 * (2048 + 32 * 4 + 16)


def test_bits_per_weight_3bit_group128_float16() -> None:
    w = RNG.standard_normal((4096, 4096), dtype=F32)
    q = qfast.quantize(w, 3, group_size=128, symmetric=False, scale_dtype=np.float16)
    # codes ceil(4096·3/8) = 1536 B a row, 32 float16 scales, 32 3-bit zero points (12 B).
    want = 4096 * (1536 + 32 * 2 + 12)
    assert q.nbytes == want
    assert q.bits_per_weight <= 3.16


def test_zero_points_stored_packed_handed_out_int32() -> None:
    x = RNG.standard_normal((8, 96)).astype(F32)
    q = qfast.quantize(x, 4, group_size=32, symmetric=False)
    zp = q.zero_point
    assert zp.dtype == np.int32 and zp.shape == (8, 3) and not zp.flags.writeable
    assert q._zp.dtype == np.uint8 and q._zp.shape == (8, 2)  # 3 4-bit values: 2 bytes a row
    assert q.nbytes == q.data.nbytes + q.scale.nbytes + 8 * 2
    # int32 out: subtracting never wraps, whatever the codes' dtype.
    assert (codes_of(q) - expand(zp, q)).min() >= -15
    # Per channel: one line of zero points.
    q = qfast.quantize(x, 4, axis=0, symmetric=False)
    assert q._zp.shape == (4,) and q.zero_point.shape == (8, 1)
    # Reassigning packs the new values (and checks them).
    q.zero_point = np.arange(8, dtype=np.int64).reshape(8, 1)
    np.testing.assert_array_equal(q.zero_point[:, 0], np.arange(8))
    with pytest.raises(ValueError, match="outside the 4-bit"):
        q.zero_point = np.full((8, 1), 16)
    # Float zero points (HQQ) stay float.
    h = qfast.hqq(RNG.standard_normal((8, 64)).astype(F32), bits=4, group_size=32)
    assert h.zero_point.dtype == np.float32


# --- the dict format ----------------------------------------------------------------------


def v1_dict(q: QTensor, prefix: str = "") -> dict[str, np.ndarray]:
    """What qfast's format version 1 ``to_dict`` wrote: float32 scales, int32 (or float)
    zero points shaped like the scale, and 3/5/6/7-bit codes one per byte."""
    header = {
        "format_version": 1,
        "shape": list(q.shape),
        "bits": q.bits,
        "signed": q.signed,
        "axis": q.axis,
        "group_size": q.group_size,
        "meta": q.meta,
    }
    data = q.data
    if q.bits in (3, 5, 6, 7):
        data = codes_of(q).astype(np.int8 if q.signed else np.uint8)
    out = {
        prefix + "qfast_header": np.frombuffer(json.dumps(header).encode(), np.uint8).copy(),
        prefix + "data": np.array(data),
        prefix + "scale": np.array(q.scale, F32),
    }
    if q.zero_point is not None:
        out[prefix + "zero_point"] = np.array(q.zero_point)
    if q.g_idx is not None:
        out[prefix + "g_idx"] = q.g_idx
    return out


def _gptq_ao() -> QTensor:
    rng = np.random.default_rng(2)
    W = rng.standard_normal((16, 96)).astype(F32)
    X = rng.standard_normal((256, 96)).astype(F32) * rng.lognormal(0, 1, 96).astype(F32)
    return qfast.gptq(W, X, bits=4, group_size=32, act_order=True)


def _qtensors() -> list[QTensor]:
    x = RNG.standard_normal((6, 40)).astype(F32)
    return [
        qfast.quantize(x, 8, axis=0),
        qfast.quantize(x, 4, group_size=16, symmetric=False, scale_dtype=np.float16),
        qfast.quantize(x, 3, group_size=16, symmetric=False, scale_dtype=BF16),
        qfast.quantize(x, 5, axis=1, symmetric=False),
        qfast.quantize(x, 2, symmetric=True, scale_dtype=np.float16),
        qfast.quantize(x[0, 0], 8, symmetric=False),
        qfast.hqq(x, bits=4, group_size=8),
        _gptq_ao(),
    ]


def _same(a: QTensor, b: QTensor) -> None:
    assert (a.shape, a.bits, a.signed, a.axis, a.group_size) == (
        b.shape, b.bits, b.signed, b.axis, b.group_size,
    )  # fmt: skip
    assert a.scale.dtype == b.scale.dtype
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.scale, b.scale)
    np.testing.assert_array_equal(a.zero_point, b.zero_point)
    np.testing.assert_array_equal(a.g_idx, b.g_idx)
    np.testing.assert_array_equal(a.dequantize(), b.dequantize())
    assert a.meta == b.meta


@pytest.mark.parametrize("i", range(8))
def test_dict_round_trip_v2(i: int) -> None:
    q = _qtensors()[i]
    d = q.to_dict("w.")
    assert json.loads(d["w.qfast_header"].tobytes())["format_version"] == 2
    _same(QTensor.from_dict(d, "w."), q)


@pytest.mark.parametrize("i", range(8))
def test_version_1_dicts_still_load(i: int) -> None:
    q = _qtensors()[i]
    back = QTensor.from_dict(v1_dict(q, "w."), "w.")
    # Version 1 stored float32 scales: the values are the same.
    np.testing.assert_array_equal(back.scale, q.scale.astype(F32))
    np.testing.assert_array_equal(back.data, q.data)
    np.testing.assert_array_equal(back.zero_point, q.zero_point)
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())


def test_version_1_file_written_by_the_cli_loads(tmp_path: Any) -> None:
    from safetensors.numpy import load_file, save_file

    x = RNG.standard_normal((8, 48)).astype(F32)
    q = qfast.quantize(x, 3, group_size=16, symmetric=False)
    save_file({**v1_dict(q, "a."), "b": x}, str(tmp_path / "v1.safetensors"))
    back = QTensor.from_dict(load_file(str(tmp_path / "v1.safetensors")), "a.")
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())


def test_bfloat16_scales_survive_safetensors(tmp_path: Any) -> None:
    from safetensors.numpy import load_file, save_file

    x = RNG.standard_normal((8, 48)).astype(F32)
    q = qfast.quantize(x, 4, group_size=16, symmetric=False, scale_dtype=BF16)
    save_file(q.to_dict("a."), str(tmp_path / "q.safetensors"))
    _same(QTensor.from_dict(load_file(str(tmp_path / "q.safetensors")), "a."), q)


def test_version_1_codes_out_of_range_are_refused() -> None:
    x = RNG.standard_normal((4, 16)).astype(F32)
    d = v1_dict(qfast.quantize(x, 3, axis=0, symmetric=False), "w.")
    d["w.data"] = d["w.data"].copy()
    d["w.data"][1, 2] = 100  # a 3-bit code of 100 once dequantized to 75.6
    with pytest.raises(ValueError, match=r"'w\.'.*code 100 at index \(1, 2\).*\[0, 7\]"):
        QTensor.from_dict(d, "w.")


def test_missing_zero_point_or_g_idx_is_an_error() -> None:
    q = _gptq_ao()
    for d in (q.to_dict("l.q."), v1_dict(q, "l.q.")):
        for key in ("zero_point", "g_idx"):
            broken = {k: v for k, v in d.items() if k != "l.q." + key}
            with pytest.raises(ValueError, match=rf"'l\.q\.'.*no l\.q\.{key} entry"):
                QTensor.from_dict(broken, "l.q.")
    # Unsigned codes from qfast.quantize, with the zero points dropped.
    q = qfast.quantize(RNG.standard_normal((4, 16)).astype(F32), 8, symmetric=False)
    for d in (q.to_dict(), v1_dict(q)):
        with pytest.raises(ValueError, match="zero_point"):
            QTensor.from_dict({k: v for k, v in d.items() if k != "zero_point"})


def _header(d: dict[str, np.ndarray], prefix: str = "t.") -> dict[str, Any]:
    h: dict[str, Any] = json.loads(d[prefix + "qfast_header"].tobytes())
    return h


def _with_header(d: dict[str, np.ndarray], h: Any, prefix: str = "t.") -> dict[str, np.ndarray]:
    raw = h if isinstance(h, bytes) else json.dumps(h).encode()
    return {**d, prefix + "qfast_header": np.frombuffer(raw, np.uint8).copy()}


def _corrupt_cases() -> list[Any]:
    x = RNG.standard_normal((6, 40)).astype(F32)
    q = qfast.quantize(x, 4, group_size=16, symmetric=False, scale_dtype=np.float16)
    d = q.to_dict("t.")
    h = _header(d)
    cases: list[Any] = []

    def case(name: str, dd: dict[str, Any], exc: type[Exception], match: str) -> None:
        cases.append(pytest.param(dd, exc, match, id=name))

    case("not-json", _with_header(d, b"{not json"), ValueError, "not valid JSON")
    case("not-utf8", _with_header(d, b"\xff\xfe"), ValueError, "not valid JSON")
    case("json-list", _with_header(d, [1, 2]), ValueError, "not an object")
    case("header-int32", {**d, "t.qfast_header": np.zeros(3, np.int32)}, TypeError, "uint8")
    for key in ("shape", "bits", "signed", "axis", "group_size", "scale_dtype", "zero_point",
                "g_idx", "data_layout"):  # fmt: skip
        hh = {k: v for k, v in h.items() if k != key}
        case(f"no-{key}", _with_header(d, hh), ValueError, key)
    for key, value in (("shape", "6x40"), ("shape", [6, -1]), ("bits", "4"), ("bits", 4.0),
                       ("signed", 0), ("axis", "0"), ("group_size", [16]),
                       ("scale_dtype", 16), ("g_idx", "no"), ("meta", [1])):  # fmt: skip
        case(f"{key}={value!r}", _with_header(d, {**h, key: value}), TypeError, key)
    for key, value, match in (
        ("format_version", 3, "version 3"),
        ("format_version", None, "version None"),
        ("bits", 9, "between 2 and 8"),
        ("scale_dtype", "float64", "scale_dtype"),
        ("data_layout", "bitplanes", "data_layout"),
        ("zero_point", {"kind": "complex"}, "kind"),
        ("zero_point", {"kind": "int", "bits": 8, "layout": "dense"}, "bits"),
        ("shape", [6, 41], "data has shape"),
        ("shape", [7, 40], "data has shape"),
        ("group_size", 8, "scale has shape"),
        ("axis", 0, "either axis or group_size"),
        ("zero_point", None, "zero_point entry the header does not list"),
        ("g_idx", True, "no t.g_idx entry"),
    ):
        case(f"{key}={value!r}", _with_header(d, {**h, key: value}), ValueError, match)
    case("no-data", {k: v for k, v in d.items() if k != "t.data"}, ValueError, "t.data")
    case("no-scale", {k: v for k, v in d.items() if k != "t.scale"}, ValueError, "t.scale")
    case("data-short", {**d, "t.data": d["t.data"][:, :-1]}, ValueError, "data has shape")
    case("data-flat", {**d, "t.data": d["t.data"].reshape(-1)}, ValueError, "data has shape")
    case("data-float", {**d, "t.data": d["t.data"].astype(F32)}, TypeError, "int8 or uint8")
    case("scale-f32", {**d, "t.scale": d["t.scale"].astype(F32)}, TypeError, "float16")
    case("scale-shape", {**d, "t.scale": d["t.scale"][:, :2]}, ValueError, "scale has shape")
    nan = d["t.scale"].copy()
    nan[2, 1] = np.nan
    case("scale-nan", {**d, "t.scale": nan}, ValueError, "not finite")
    case("zp-short", {**d, "t.zero_point": d["t.zero_point"][:-1]}, ValueError, "zero_point")
    case("zp-int32", {**d, "t.zero_point": d["t.zero_point"].astype(np.int32)}, TypeError,
         "uint8")  # fmt: skip
    g = _gptq_ao().to_dict("t.")
    bad_g = g["t.g_idx"].copy()
    bad_g[3] = 99
    case("g_idx-range", {**g, "t.g_idx": bad_g}, ValueError, "g_idx holds group 99")
    case("g_idx-float", {**g, "t.g_idx": bad_g.astype(F32)}, TypeError, "g_idx")
    case("g_idx-extra", {**d, "t.g_idx": bad_g}, ValueError, "g_idx entry the header")
    case("not-a-dict", [("t.data", 1)], TypeError, "dict")  # type: ignore[arg-type]
    return cases


@pytest.mark.parametrize(("d", "exc", "match"), _corrupt_cases())
def test_corrupt_dicts_are_clear_errors(d: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match) as info:
        QTensor.from_dict(d, "t.")
    if not isinstance(d, list):
        assert "'t.'" in str(info.value)  # the message names the tensor


def test_no_header_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"no w\.qfast_header entry"):
        QTensor.from_dict({"data": np.zeros(3, np.uint8)}, "w.")


# --- checks on every QTensor ----------------------------------------------------------------


def _parts() -> dict[str, Any]:
    codes = RNG.integers(0, 16, (4, 32)).astype(np.uint8)
    return {
        "codes": codes,
        "scale": np.full((4, 2), 0.1, F32),
        "zp": np.full((4, 2), 8, np.int32),
    }


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_scales_are_refused(bad: float) -> None:
    p = _parts()
    p["scale"][1, 1] = bad
    with pytest.raises(ValueError, match=r"scale .* at flat index 3 is not finite"):
        QTensor.from_codes(p["codes"], 4, False, p["scale"], p["zp"], group_size=16)
    # A QTensor whose scale was changed in place: dequantize and linear check again.
    q = QTensor.from_codes(p["codes"], 4, False, _parts()["scale"], p["zp"], group_size=16)
    q.scale[0, 0] = bad
    with pytest.raises(ValueError, match="not finite"):
        q.dequantize()
    with pytest.raises(ValueError, match="a QTensor's scales must be finite"):
        qfast.linear(np.ones((1, 32), F32), q)
    h = QTensor.from_codes(p["codes"], 4, False, _parts()["scale"], np.zeros((4, 2), F32),
                           group_size=16)  # fmt: skip
    h.zero_point = np.full((4, 2), bad, F32)
    with pytest.raises(ValueError, match=r"zero_point .* not finite"):
        h.dequantize()


def test_zero_points_and_g_idx_are_checked() -> None:
    p = _parts()
    for z in (16, -1):
        with pytest.raises(ValueError, match=rf"zero_point {z} is outside"):
            QTensor.from_codes(p["codes"], 4, False, p["scale"], np.full((4, 2), z), group_size=16)
    with pytest.raises(ValueError, match="zero_point 2 is outside the 2-bit signed"):
        QTensor.from_codes(RNG.integers(-2, 2, (4, 32)), 2, True, p["scale"],
                           np.full((4, 2), 2), group_size=16)  # fmt: skip
    g = np.zeros(32, np.int64)
    for bad in (2, -1, 2**32):
        g[5] = bad
        with pytest.raises(ValueError, match=f"g_idx holds group {bad}"):
            QTensor.from_codes(p["codes"], 4, False, p["scale"], p["zp"], group_size=16, g_idx=g)

"""GPTQ, AWQ and compressed-tensors packing, checked by unpackers written from each format's
definition (the reference packers and loaders cited at each reader), never from qfast's packer.

Every case builds a QTensor (random codes, signed and unsigned, symmetric and asymmetric grids,
per-channel and per-group, ragged last groups, act-order ``g_idx``; or qfast's own GPTQ), packs
it with ``qfast.formats.<format>.pack``, reads the tensors back with the plain-NumPy readers
below, and asserts exact equality with the codes, zero points, scales and ``g_idx`` that
generated the tensor and with ``qfast.formats.canonical(qt)``; qfast's own ``unpack`` must agree
with the readers too. Then the shapes a format cannot hold: each refusal a ValueError that names
the tensor.

The readers walk the fields one at a time (a loop over field positions, one output column per
step), as the definitions are written, not vectorised the way a packer is.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

import qfast
from qfast.formats import awq as awq_fmt
from qfast.formats import compressed_tensors as ct_fmt
from qfast.formats import gptq as gptq_fmt

NAME = "model.layers.7.mlp.up_proj"


# --------------------------------------------------------------------------------------------
# Readers, from each format's definition
# --------------------------------------------------------------------------------------------


def _u32(words: np.ndarray) -> np.ndarray:
    """int32 words as their unsigned 32-bit patterns (int64, so shifts cannot sign-extend)."""
    assert words.dtype == np.int32, words.dtype
    return words.astype(np.int64) & 0xFFFFFFFF


def gptq_read_fields(words: np.ndarray, n: int, bits: int) -> np.ndarray:
    """``n`` fields of ``bits`` bits packed along axis 0 of int32 ``words`` ``[rows, m]``, as
    AutoGPTQ's ``QuantLinear.pack`` lays them (AutoGPTQ/AutoGPTQ,
    auto_gptq/nn_modules/qlinear/qlinear_cuda.py and qlinear_cuda_old.py, ``QuantLinear.pack``;
    read back the same way by the ``wf`` shift tables in ``forward`` there and in vLLM's
    vllm/model_executor/layers/quantization/gptq.py):

    - 2, 4, 8 bits: row ``r`` holds fields ``r·(32/bits) + j`` at bits ``bits·j``, lowest index
      in the low bits;
    - 3 bits: each three rows hold 32 fields. Row 0: fields 0..9 at bits 3j, the low two bits
      of field 10 at bits 30..31. Row 1: bit 0 is bit 2 of field 10, fields 11..20 at bits
      3j + 1, the low bit of field 21 at bit 31. Row 2: bits 0..1 are bits 1..2 of field 21,
      fields 22..31 at bits 3j + 2.
    """
    w = _u32(words)
    out = np.full((n, w.shape[1]), -1, np.int64)
    mask = (1 << bits) - 1
    if bits in (2, 4, 8):
        per = 32 // bits
        assert w.shape[0] * per == n
        for r in range(w.shape[0]):
            for j in range(per):
                out[r * per + j] = (w[r] >> (bits * j)) & mask
    elif bits == 3:
        assert w.shape[0] % 3 == 0 and w.shape[0] // 3 * 32 == n
        for t in range(w.shape[0] // 3):
            w0, w1, w2 = w[3 * t], w[3 * t + 1], w[3 * t + 2]
            base = 32 * t
            for j in range(10):
                out[base + j] = (w0 >> (3 * j)) & 7
            out[base + 10] = ((w0 >> 30) & 0x3) | ((w1 & 0x1) << 2)
            for j in range(10):
                out[base + 11 + j] = (w1 >> (3 * j + 1)) & 7
            out[base + 21] = ((w1 >> 31) & 0x1) | ((w2 & 0x3) << 1)
            for j in range(10):
                out[base + 22 + j] = (w2 >> (3 * j + 2)) & 7
    else:
        raise AssertionError(f"GPTQ defines no {bits}-bit layout")
    assert (out >= 0).all()
    return out


def gptq_reference_unpack(
    t: dict[str, np.ndarray], bits: int, group_size: int, shape: tuple[int, int], fmt: str
) -> dict[str, np.ndarray]:
    """A GPTQ linear read as its definition says, in qfast's ``[out, in]`` orientation.

    - ``qweight`` int32 ``[in·bits/32, out]``, packed along in_features (AutoGPTQ
      ``QuantLinear.__init__``/``pack``, above; vLLM ``GPTQLinearMethod.create_weights``:
      ``input_size_per_partition // pack_factor``, ``packed_dim=0``);
    - ``qzeros`` int32 ``[groups, out·bits/32]``, packed along out_features the same way;
      ``checkpoint_format: "gptq"`` (v1) stores zero − 1 (AutoGPTQ ``pack``: ``zeros -= 1``;
      ``forward``: ``zeros = zeros + 1``), ``"gptq_v2"`` the true zero (ModelCloud/GPTQModel,
      gptqmodel/utils/model.py ``convert_gptq_v1_to_v2_format_module`` adds 1 to every field);
    - ``scales`` float16 ``[groups, out]``, groups = ceil(in / group_size) (AutoGPTQ:
      ``math.ceil(infeatures / self.group_size)``; group_size -1 means in_features);
    - ``g_idx`` int32 ``[in]``, the group of each input column.
    """
    out_f, in_f = shape
    gs = in_f if group_size == -1 else group_size
    groups = math.ceil(in_f / gs)
    codes = gptq_read_fields(t["qweight"], in_f, bits).T  # [in, out] -> [out, in]
    fields = gptq_read_fields(np.ascontiguousarray(t["qzeros"].T), out_f, bits)  # [out, groups]
    zeros = fields + 1 if fmt == "gptq" else fields
    assert t["scales"].shape == (groups, out_f)
    return {
        "codes": codes,
        "zero": zeros,
        "scale": np.ascontiguousarray(t["scales"].T),
        "g_idx": t["g_idx"].astype(np.int64),
    }


# AutoAWQ's interleave: packed slot i of each int32 holds output column 8·w + AWQ_ORDER[i].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def awq_read_fields(words: np.ndarray) -> np.ndarray:
    """4-bit fields packed along axis 1 of ``words`` ``[rows, cols/8]`` in AutoAWQ's order
    (casper-hansen/AutoAWQ, awq/modules/linear/gemm.py, ``WQLinear_GEMM.from_linear``:
    ``qweight[:, col] |= intweight[:, col * pack_num + order_map[i]] << (i * w_bit)`` with
    ``order_map = [0, 2, 4, 6, 1, 3, 5, 7]``; the same loop packs ``qzeros``)."""
    w = _u32(words)
    out = np.full((w.shape[0], w.shape[1] * 8), -1, np.int64)
    for col in range(w.shape[1]):
        for i in range(8):
            out[:, col * 8 + AWQ_ORDER[i]] = (w[:, col] >> (4 * i)) & 0xF
    assert (out >= 0).all()
    return out


def awq_reference_unpack(t: dict[str, np.ndarray], group_size: int, shape: tuple[int, int]):
    """An AWQ GEMM linear read as ``WQLinear_GEMM`` defines it: ``qweight`` int32
    ``[in, out/8]``, ``qzeros`` int32 ``[in/group, out/8]`` holding the true zeros (no − 1),
    ``scales`` float16 ``[in/group, out]``; ``in % group_size == 0`` (its ``__init__``
    asserts it); no g_idx."""
    out_f, in_f = shape
    gs = in_f if group_size == -1 else group_size
    assert in_f % gs == 0 and t["qweight"].shape == (in_f, out_f // 8)
    return {
        "codes": awq_read_fields(t["qweight"]).T,
        "zero": awq_read_fields(t["qzeros"]).T,
        "scale": np.ascontiguousarray(t["scales"].T),
        "g_idx": np.arange(in_f) // gs,
    }


def ct_unpack_from_int32(words: np.ndarray, bits: int, n: int, packed_dim: int) -> np.ndarray:
    """compressed-tensors' ``unpack_from_int32`` (vllm-project/compressed-tensors,
    src/compressed_tensors/compressors/quantized_compressors/pack_quantized.py): with
    ``pack_factor = 32 // bits`` fields a word (3 bits: 10, the top two bits unused), field
    ``i`` of a word at bits ``bits·i``, index ``word·pack_factor + i`` along ``packed_dim``;
    the tail padded with zeros (``pack_to_int32`` pads after the unsigned offset); returns the
    signed values ``field − 2^(bits−1)``. Also asserts that padding and unused bits are 0."""
    w = _u32(words if packed_dim == 1 else np.ascontiguousarray(words.T))
    pf = 32 // bits
    mask = (1 << bits) - 1
    assert w.shape[1] == math.ceil(n / pf), (w.shape, n, pf)
    out = np.full((w.shape[0], n), -1, np.int64)
    for word in range(w.shape[1]):
        for i in range(pf):
            field = (w[:, word] >> (bits * i)) & mask
            if word * pf + i < n:
                out[:, word * pf + i] = field
            else:
                assert (field == 0).all(), "compressed-tensors pads with zero fields"
        assert ((w[:, word] >> (bits * pf)) == 0).all(), "bits above the last field are unused"
    assert (out >= 0).all()
    signed = out - (1 << (bits - 1))
    return signed if packed_dim == 1 else signed.T


def ct_reference_unpack(t: dict[str, np.ndarray], bits: int, shape: tuple[int, int]):
    """A compressed-tensors ``pack-quantized`` linear read as its compressor and vLLM's scheme
    define it (pack_quantized.py, above: ``compress_weight`` / ``compress_module``; vLLM
    vllm/model_executor/layers/quantization/compressed_tensors/schemes/
    compressed_tensors_wNa16.py ``create_weights``):

    - ``weight_packed`` int32 ``[out, ceil(in/pack_factor)]``, packed along in_features, each
      field the signed code + 2^(bits−1);
    - ``weight_zero_point`` (asymmetric group/channel only) int32 ``[ceil(out/pack_factor),
      groups]``, the signed zero point + 2^(bits−1) packed along out_features
      (``pack_to_int32(zero_point, num_bits, packed_dim=0)``); symmetric: zero point 0;
    - ``weight_scale`` ``[out, groups]`` (groups = ceil(in/group_size), compressed-tensors
      ``initialize_qparams`` / ``strategy_cdiv``; channel: 1);
    - ``weight_g_idx`` int32 ``[in]`` with act-order; ``weight_shape`` ``[out, in]``.

    Returned in qfast's canonical form (unsigned codes, zero points ``zp + 2^(bits−1)``)."""
    out_f, in_f = shape
    off = 1 << (bits - 1)
    codes = ct_unpack_from_int32(t["weight_packed"], bits, in_f, packed_dim=1) + off
    groups = t["weight_scale"].shape[1]
    if "weight_zero_point" in t:
        zp = ct_unpack_from_int32(t["weight_zero_point"], bits, out_f, packed_dim=0)
        assert zp.shape == (out_f, groups)
    else:
        zp = np.zeros((out_f, groups), np.int64)
    g_idx = t.get("weight_g_idx")
    return {
        "codes": codes,
        "zero": zp + off,
        "scale": t["weight_scale"],
        "g_idx": None if g_idx is None else g_idx.astype(np.int64),
    }


# --------------------------------------------------------------------------------------------
# QTensors to pack, and what they hold (known independently of qfast)
# --------------------------------------------------------------------------------------------


def build(
    rng: np.random.Generator,
    out_f: int,
    in_f: int,
    bits: int,
    *,
    grid: str,
    group_size: int | None,
    act_order: bool = False,
    codes: str = "random",
    zero: int | None = None,
    zero_lo: int = 0,
) -> tuple[qfast.QTensor, dict[str, Any]]:
    """A QTensor from codes, and its canonical parts (unsigned codes, zero points, scales,
    g_idx for every column), computed here.

    ``grid``: "signed" (signed codes, no zero point), "sym" (unsigned codes, every zero point
    2^(bits−1): GPTQ's symmetric grid), "asym" (unsigned codes, random zero points in
    ``[zero_lo, 2^bits − 1]``, or all ``zero``)."""
    off = 1 << (bits - 1)
    maxq = (1 << bits) - 1
    signed = grid == "signed"
    if codes == "random":
        u = rng.integers(0, maxq + 1, size=(out_f, in_f))
    elif codes == "zeros":
        u = np.zeros((out_f, in_f), np.int64)
    elif codes == "max":
        u = np.full((out_f, in_f), maxq, np.int64)
    else:
        raise AssertionError(codes)
    groups = 1 if group_size is None else -(-in_f // group_size)
    scale = rng.uniform(1e-3, 0.1, size=(out_f, groups)).astype(np.float16)
    if grid == "asym":
        z = (
            rng.integers(zero_lo, maxq + 1, size=(out_f, groups))
            if zero is None
            else np.full((out_f, groups), zero, np.int64)
        )
    else:
        z = np.full((out_f, groups), off, np.int64)
    g_idx = None
    if act_order:
        assert group_size is not None
        g_idx = (rng.permutation(in_f) // group_size).astype(np.int32)
    kwargs: dict[str, Any] = (
        {"axis": 0} if group_size is None else {"group_size": group_size, "g_idx": g_idx}
    )
    if signed:
        qt = qfast.QTensor.from_codes((u - off).astype(np.int8), bits, True, scale, **kwargs)
    else:
        qt = qfast.QTensor.from_codes(
            u.astype(np.uint8), bits, False, scale, z.astype(np.int32), **kwargs
        )
    full_g = g_idx if g_idx is not None else np.arange(in_f) // (group_size or in_f)
    return qt, {
        "codes": u,
        "zero": z,
        "scale": scale,
        "g_idx": full_g.astype(np.int64),
        "act_order": g_idx is not None,
    }


def gptq_case(bits: int, group_size: int | None, symmetric: bool) -> tuple[qfast.QTensor, dict]:
    """qfast's own GPTQ with act_order (dynamic groups: a g_idx), float16 scales; its parts
    read from the QTensor's stored codes with ``qfast.unpack`` (the QTensor storage layout,
    tested in test_packing.py)."""
    rng = np.random.default_rng(bits)
    W = rng.standard_normal((64, 128)).astype(np.float32)
    X = rng.standard_normal((256, 128)).astype(np.float32)
    qt = qfast.gptq(
        W, X, bits=bits, group_size=group_size, act_order=True, symmetric=symmetric,
        scale_dtype=np.float16,
    )  # fmt: skip
    return qt, parts_of(qt)


def parts_of(qt: qfast.QTensor) -> dict[str, Any]:
    """The canonical parts of a QTensor, read from its fields (codes unpacked from ``data``)."""
    n = qt.shape[-1]
    if qt.bits == 8:
        codes = qt.data.view(np.int8 if qt.signed else np.uint8).astype(np.int64)
    else:
        codes = qfast.unpack(qt.data, n, qt.bits, signed=qt.signed).astype(np.int64)
    off = 1 << (qt.bits - 1)
    scale = np.asarray(qt.scale)
    if qt.signed:
        codes = codes + off
    zero = np.full(scale.shape, off, np.int64) if qt.zero_point is None else qt.zero_point
    gs = qt.group_size or n
    g_idx = qt.g_idx if qt.g_idx is not None else np.arange(n) // gs
    return {
        "codes": codes,
        "zero": np.asarray(zero, np.int64),
        "scale": scale,
        "g_idx": np.asarray(g_idx, np.int64),
        "act_order": qt.g_idx is not None,
    }


def assert_scales_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Bit-for-bit equal scale values (compared in float32, which holds float16 and bfloat16
    exactly)."""
    g = np.asarray(got).astype(np.float32)
    w = np.asarray(want).astype(np.float32)
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    np.testing.assert_array_equal(g, w, err_msg=what)


def assert_parts(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    np.testing.assert_array_equal(got["codes"], want["codes"], err_msg=f"{what}: codes")
    np.testing.assert_array_equal(got["zero"], want["zero"], err_msg=f"{what}: zero points")
    assert_scales_equal(got["scale"], want["scale"], f"{what}: scales")
    if got.get("g_idx") is not None:
        np.testing.assert_array_equal(got["g_idx"], want["g_idx"], err_msg=f"{what}: g_idx")


def check_canonical(qt: qfast.QTensor, want: dict[str, Any]) -> None:
    """``qfast.formats.canonical(qt)``: unsigned codes, integer zero points, the same scales and
    g_idx, and the same dequantized values."""
    c = qfast.formats.canonical(qt)
    assert not c.signed and c.zero_point is not None
    parts = parts_of(c)
    assert_parts(parts, want, "canonical(qt)")
    np.testing.assert_array_equal(c.dequantize(), qt.dequantize())


def check_qfast_unpack(back: qfast.QTensor, want: dict[str, Any], per_channel: bool) -> None:
    """qfast's reader gives the canonical form: unsigned codes, int32 zero points shaped like the
    scale, per-channel as axis=0, g_idx only when not trivial."""
    assert isinstance(back, qfast.QTensor)
    assert not back.signed
    if per_channel:
        assert back.axis == 0 and back.group_size is None
        assert back.scale.shape == (want["codes"].shape[0], 1)
    else:
        assert back.group_size is not None
    assert back.zero_point is not None and back.zero_point.dtype == np.int32
    if want["act_order"]:
        assert back.g_idx is not None
    elif back.g_idx is not None:  # tolerated only if it is the trivial one
        np.testing.assert_array_equal(back.g_idx, want["g_idx"])
    assert_parts(parts_of(back), want, "qfast unpack")


# --------------------------------------------------------------------------------------------
# GPTQ
# --------------------------------------------------------------------------------------------

GPTQ_BITS = (2, 3, 4, 8)
# (out, in, group_size): per-channel, whole groups, a ragged last group (96 = 64 + 32), act-order.
GPTQ_LAYOUTS = {
    "channel": (64, 96, None, False),
    "group32": (64, 128, 32, False),
    "ragged": (64, 96, 64, False),
    "act_order": (64, 128, 32, True),
    "act_order_ragged": (64, 96, 64, True),
}


def gptq_check(qt: qfast.QTensor, want: dict[str, Any], bits: int, fmt: str) -> None:
    out_f, in_f = qt.shape
    t = gptq_fmt.pack(qt, name=NAME, checkpoint_format=fmt)
    assert set(t) == {"qweight", "qzeros", "scales", "g_idx"}
    gs = -1 if qt.group_size is None else qt.group_size
    groups = math.ceil(in_f / (in_f if gs == -1 else gs))
    assert t["qweight"].dtype == np.int32 and t["qweight"].shape == (in_f * bits // 32, out_f)
    assert t["qzeros"].dtype == np.int32 and t["qzeros"].shape == (groups, out_f * bits // 32)
    assert t["scales"].dtype == np.float16 and t["scales"].shape == (groups, out_f)
    assert t["g_idx"].dtype == np.int32 and t["g_idx"].shape == (in_f,)
    got = gptq_reference_unpack(t, bits, gs, (out_f, in_f), fmt)
    assert_parts(got, want, f"GPTQ {fmt} by the reference reader")
    back = gptq_fmt.unpack(t, bits=bits, group_size=gs, checkpoint_format=fmt, name=NAME)
    check_qfast_unpack(back, got | {"act_order": want["act_order"]}, qt.group_size is None)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("grid", ["signed", "sym", "asym"])
@pytest.mark.parametrize("layout", list(GPTQ_LAYOUTS))
@pytest.mark.parametrize("bits", GPTQ_BITS)
def test_gptq_fields_match_definition(bits, layout, grid, fmt):
    out_f, in_f, gs, act = GPTQ_LAYOUTS[layout]
    rng = np.random.default_rng([bits, len(layout), len(grid), len(fmt)])
    # v1 cannot hold a zero point of 0 (zero − 1 wraps): that refusal has its own test.
    qt, want = build(
        rng, out_f, in_f, bits, grid=grid, group_size=gs, act_order=act,
        zero_lo=1 if fmt == "gptq" else 0,
    )  # fmt: skip
    check_canonical(qt, want)
    gptq_check(qt, want, bits, fmt)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("bits", GPTQ_BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_from_qfast_gptq_act_order(bits, symmetric, fmt):
    qt, want = gptq_case(bits, 32, symmetric)
    assert qt.g_idx is not None and qt.scale.dtype == np.float16
    if fmt == "gptq" and (want["zero"] == 0).any():
        with pytest.raises(ValueError, match=NAME):
            gptq_fmt.pack(qt, name=NAME, checkpoint_format=fmt)
        return
    check_canonical(qt, want)
    gptq_check(qt, want, bits, fmt)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("bits", GPTQ_BITS)
@pytest.mark.parametrize(
    ("codes", "zero"), [("zeros", None), ("max", None), ("random", "max"), ("zeros", "max")]
)
def test_gptq_extremes(bits, codes, zero, fmt):
    rng = np.random.default_rng(bits)
    maxq = (1 << bits) - 1
    qt, want = build(
        rng, 64, 128, bits, grid="asym", group_size=32, codes=codes,
        zero=maxq if zero == "max" else None, zero_lo=1,
    )  # fmt: skip
    gptq_check(qt, want, bits, fmt)


@pytest.mark.parametrize("bits", GPTQ_BITS)
def test_gptq_zero_point_zero_v1_refused_v2_kept(bits):
    rng = np.random.default_rng(bits)
    qt, want = build(rng, 64, 128, bits, grid="asym", group_size=32, zero=0)
    with pytest.raises(ValueError, match=NAME):
        gptq_fmt.pack(qt, name=NAME, checkpoint_format="gptq")
    # One zero point of 0 among others is refused as well: no silent wrong value.
    qt2, _ = build(rng, 64, 128, bits, grid="asym", group_size=32, zero_lo=1)
    z = qt2.zero_point.copy()
    z[5, 2] = 0
    qt2.zero_point = z
    with pytest.raises(ValueError, match=NAME):
        gptq_fmt.pack(qt2, name=NAME, checkpoint_format="gptq")
    gptq_check(qt, want, bits, "gptq_v2")


def test_gptq_words_by_hand():
    # 4-bit, input i of column 0 holds code i % 16: lowest input in the low nibble.
    codes = np.tile(np.arange(32) % 16, (32, 1)).astype(np.uint8)
    scale = np.ones((32, 1), np.float16)
    qt = qfast.QTensor.from_codes(codes, 4, False, scale, np.full((32, 1), 8, np.int32), axis=0)
    t = gptq_fmt.pack(qt, name=NAME, checkpoint_format="gptq")
    assert [hex(int(v)) for v in _u32(t["qweight"][:, 0])] == [
        "0x76543210", "0xfedcba98", "0x76543210", "0xfedcba98",
    ]  # fmt: skip
    # Symmetric 4-bit zero 8: v1 stores 7 in every field (the familiar 0x77777777), v2 8.
    assert (_u32(t["qzeros"]) == 0x77777777).all()
    t2 = gptq_fmt.pack(qt, name=NAME, checkpoint_format="gptq_v2")
    assert (_u32(t2["qzeros"]) == 0x88888888).all()
    np.testing.assert_array_equal(t["g_idx"], np.zeros(32, np.int32))
    # 3-bit, inputs 0..31 hold i % 8 and (5i + 3) % 8: the words AutoGPTQ's pack loop writes
    # (computed with that loop, QuantLinear.pack in qlinear_cuda.py), fields 10 and 21 split.
    c = np.stack([np.arange(32) % 8, (5 * np.arange(32) + 3) % 8] * 16).astype(np.uint8)
    z = np.full((32, 1), 4, np.int32)
    qt3 = qfast.QTensor.from_codes(c, 3, False, np.ones((32, 1), np.float16), z, axis=0)
    t3 = gptq_fmt.pack(qt3, name=NAME, checkpoint_format="gptq")
    w = _u32(t3["qweight"])
    assert [hex(int(v)) for v in w[:, 0]] == ["0x88fac688", "0xc688fac6", "0xfac688fa"]
    assert [hex(int(v)) for v in w[:, 1]] == ["0x43c67543", "0x7543c675", "0xc67543c6"]


# --------------------------------------------------------------------------------------------
# AWQ
# --------------------------------------------------------------------------------------------

# (out, in, group_size): out a multiple of 8 but not of 32; one group the width of the row
# (AutoAWQ's group_size -1); groups. qfast refuses per-channel grids (axis=0) for AWQ: vLLM's
# AWQLinearMethod sizes scales input_size // group_size, which a -1 makes negative (see
# test_awq_refuses_per_channel).
AWQ_LAYOUTS = {
    "one_group": (40, 96, 96),
    "group32": (40, 128, 32),
    "group64": (64, 128, 64),
}


def awq_check(qt: qfast.QTensor, want: dict[str, Any]) -> None:
    out_f, in_f = qt.shape
    t = awq_fmt.pack(qt, name=NAME)
    assert set(t) == {"qweight", "qzeros", "scales"}
    gs = -1 if qt.group_size is None else qt.group_size
    groups = in_f // (in_f if gs == -1 else gs)
    assert t["qweight"].dtype == np.int32 and t["qweight"].shape == (in_f, out_f // 8)
    assert t["qzeros"].dtype == np.int32 and t["qzeros"].shape == (groups, out_f // 8)
    assert t["scales"].dtype == np.float16 and t["scales"].shape == (groups, out_f)
    got = awq_reference_unpack(t, gs, (out_f, in_f))
    assert_parts(got, want, "AWQ by the reference reader")
    back = awq_fmt.unpack(t, bits=4, group_size=gs, name=NAME)
    check_qfast_unpack(back, got | {"act_order": False}, qt.group_size is None)


@pytest.mark.parametrize("grid", ["signed", "sym", "asym"])
@pytest.mark.parametrize("layout", list(AWQ_LAYOUTS))
def test_awq_fields_match_definition(layout, grid):
    out_f, in_f, gs = AWQ_LAYOUTS[layout]
    rng = np.random.default_rng([len(layout), len(grid)])
    qt, want = build(rng, out_f, in_f, 4, grid=grid, group_size=gs)
    check_canonical(qt, want)
    awq_check(qt, want)


@pytest.mark.parametrize(
    ("codes", "zero"), [("zeros", None), ("max", None), ("random", 0), ("random", 15)]
)
def test_awq_extremes(codes, zero):
    rng = np.random.default_rng(7)
    qt, want = build(rng, 40, 128, 4, grid="asym", group_size=32, codes=codes, zero=zero)
    awq_check(qt, want)


def test_awq_from_qfast_awq_grid():
    # qfast's own GPTQ-style grid without act_order (AWQ holds no g_idx), float16 scales.
    rng = np.random.default_rng(3)
    W = rng.standard_normal((48, 128)).astype(np.float32)
    qt = qfast.rtn(W, bits=4, group_size=64, symmetric=False, scale_dtype=np.float16)
    want = parts_of(qt)
    check_canonical(qt, want)
    awq_check(qt, want)


def test_awq_words_by_hand():
    # Output column j of input row 0 holds code j: slot i of the word holds column
    # AWQ_ORDER[i], so the nibbles from the low end read 0 2 4 6 1 3 5 7.
    codes = np.tile(np.arange(8), (16, 1)).T.astype(np.uint8)  # [out=8, in=16], code = out row
    z = np.arange(8, dtype=np.int32).reshape(8, 1)
    scale = np.ones((8, 1), np.float16)
    qt = qfast.QTensor.from_codes(codes, 4, False, scale, z, group_size=16)
    t = awq_fmt.pack(qt, name=NAME)
    assert (_u32(t["qweight"]) == 0x75316420).all()
    assert (_u32(t["qzeros"]) == 0x75316420).all()  # the true zeros, in the same order


# --------------------------------------------------------------------------------------------
# compressed-tensors pack-quantized
# --------------------------------------------------------------------------------------------

# (out, in, group_size, act_order): in=100 is neither a multiple of 8 (padding in the last
# word) nor of 32 (a ragged last group of 4).
CT_LAYOUTS = {
    "channel": (64, 96, None, False),
    "group32": (64, 128, 32, False),
    "ragged": (64, 100, 32, False),
    "act_order": (64, 128, 32, True),
    "act_order_ragged": (64, 100, 32, True),
}


def _refusal(pack, qt: qfast.QTensor) -> str | None:
    """The message of ``pack``'s ValueError, or None when it packs."""
    try:
        pack(qt, name=NAME)
    except ValueError as e:
        return str(e)
    return None


def ct_args(qt: qfast.QTensor, t: dict[str, np.ndarray]) -> dict[str, Any]:
    """The ``config_groups[...]["weights"]`` QuantizationArgs of this tensor (compressed-tensors
    src/compressed_tensors/quantization/quant_args.py field names)."""
    return {
        "num_bits": qt.bits,
        "type": "int",
        "symmetric": "weight_zero_point" not in t,
        "strategy": "channel" if qt.group_size is None else "group",
        "group_size": qt.group_size,
        "actorder": "group" if qt.g_idx is not None else None,
        "dynamic": False,
        "observer": None,
    }


def ct_check(qt: qfast.QTensor, want: dict[str, Any]) -> None:
    out_f, in_f = qt.shape
    bits = qt.bits
    t = ct_fmt.pack(qt, name=NAME)
    keys = {"weight_packed", "weight_scale", "weight_shape"}
    asym = not (want["zero"] == (1 << (bits - 1))).all()
    if asym:
        assert "weight_zero_point" in t  # a zero point other than the symmetric one is kept
    assert keys <= set(t) <= keys | {"weight_zero_point", "weight_g_idx"}
    assert ("weight_g_idx" in t) == want["act_order"]
    pf = 32 // bits
    groups = 1 if qt.group_size is None else math.ceil(in_f / qt.group_size)
    p = t["weight_packed"]
    assert p.dtype == np.int32 and p.shape == (out_f, math.ceil(in_f / pf))
    # vLLM's scheme and llm-compressor's torch.tensor(weight.shape) both hold it as int64.
    assert t["weight_shape"].dtype == np.int64
    np.testing.assert_array_equal(t["weight_shape"], [out_f, in_f])
    assert t["weight_scale"].shape == (out_f, groups)
    assert t["weight_scale"].dtype.name in ("float16", "bfloat16", "float32")
    if "weight_zero_point" in t:
        zp = t["weight_zero_point"]
        assert zp.dtype == np.int32 and zp.shape == (math.ceil(out_f / pf), groups)
    if "weight_g_idx" in t:
        assert t["weight_g_idx"].dtype == np.int32 and t["weight_g_idx"].shape == (in_f,)
    got = ct_reference_unpack(t, bits, (out_f, in_f))
    assert_parts(got, want, "compressed-tensors by the reference reader")
    got_g = want["g_idx"] if got["g_idx"] is None else got["g_idx"]
    back = ct_fmt.unpack(t, args=ct_args(qt, t), name=NAME)
    check_qfast_unpack(
        back, got | {"g_idx": got_g, "act_order": want["act_order"]}, qt.group_size is None
    )


@pytest.mark.parametrize("grid", ["signed", "sym", "asym"])
@pytest.mark.parametrize("layout", list(CT_LAYOUTS))
@pytest.mark.parametrize("bits", [4, 8])
def test_ct_fields_match_definition(bits, layout, grid):
    out_f, in_f, gs, act = CT_LAYOUTS[layout]
    rng = np.random.default_rng([bits, len(layout), len(grid), 5])
    qt, want = build(rng, out_f, in_f, bits, grid=grid, group_size=gs, act_order=act)
    check_canonical(qt, want)
    ct_check(qt, want)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    ("codes", "zero"), [("zeros", None), ("max", None), ("random", 0), ("random", "max")]
)
def test_ct_extremes(bits, codes, zero):
    rng = np.random.default_rng(bits)
    maxq = (1 << bits) - 1
    qt, want = build(
        rng, 64, 128, bits, grid="asym", group_size=32, codes=codes,
        zero=maxq if zero == "max" else zero,
    )  # fmt: skip
    ct_check(qt, want)


@pytest.mark.parametrize("symmetric", [True, False])
def test_ct_from_qfast_gptq_act_order(symmetric):
    qt, want = gptq_case(4, 32, symmetric)
    check_canonical(qt, want)
    ct_check(qt, want)


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7])
def test_ct_other_widths_refused_or_per_definition(bits):
    # vLLM's scheme loads 4 and 8 bits only (WNA16_SUPPORTED_BITS); compressed-tensors'
    # pack_to_int32 defines any width <= 8 (32 // bits fields a word). Either is acceptable,
    # a silently different layout is not.
    rng = np.random.default_rng(bits)
    qt, want = build(rng, 64, 128, bits, grid="asym", group_size=32)
    refusal = _refusal(ct_fmt.pack, qt)
    if refusal is not None:
        assert NAME in refusal
    else:
        ct_check(qt, want)


def test_ct_asym_out_not_a_multiple_of_the_pack_factor():
    # Zero points are packed along out_features: out=36 needs padding there. The current
    # compressed-tensors pads (transpose, pad, pack); vLLM's scheme sizes the parameter
    # out // pack_factor and could not load it. Refusing, or padding as the definition does,
    # are both acceptable.
    rng = np.random.default_rng(36)
    qt, want = build(rng, 36, 128, 4, grid="asym", group_size=32)
    refusal = _refusal(ct_fmt.pack, qt)
    if refusal is not None:
        assert NAME in refusal
    else:
        ct_check(qt, want)


def test_ct_words_by_hand():
    # Signed 4-bit codes -8..7 of inputs 0..15: stored code + 8, lowest input in the low bits.
    codes = np.tile(np.arange(-8, 8), (8, 1)).astype(np.int8)
    qt = qfast.QTensor.from_codes(codes, 4, True, np.ones((8, 1), np.float16), axis=0)
    t = ct_fmt.pack(qt, name=NAME)
    assert "weight_zero_point" not in t
    assert [hex(int(v)) for v in _u32(t["weight_packed"][0])] == ["0x76543210", "0xfedcba98"]


# --------------------------------------------------------------------------------------------
# Refusals: a ValueError that names the tensor
# --------------------------------------------------------------------------------------------


def _refused(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError, match=re.escape(NAME)) as e:
        fn(*args, name=NAME, **kwargs)
    msg = str(e.value)
    assert NAME in msg, msg
    return msg


@pytest.mark.parametrize("out_f", [36, 4, 12])
def test_awq_refuses_out_not_multiple_of_8(out_f):
    qt, _ = build(np.random.default_rng(out_f), out_f, 64, 4, grid="asym", group_size=32)
    _refused(awq_fmt.pack, qt)


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7, 8])
def test_awq_refuses_bits_other_than_4(bits):
    qt, _ = build(np.random.default_rng(bits), 64, 64, bits, grid="asym", group_size=32)
    _refused(awq_fmt.pack, qt)


def test_awq_refuses_g_idx():
    qt, _ = build(np.random.default_rng(1), 64, 128, 4, grid="asym", group_size=32, act_order=True)
    _refused(awq_fmt.pack, qt)


def test_awq_refuses_per_channel():
    qt, _ = build(np.random.default_rng(3), 64, 128, 4, grid="asym", group_size=None)
    _refused(awq_fmt.pack, qt)


def test_awq_refuses_ragged_groups():
    # WQLinear_GEMM asserts in_features % group_size == 0 (as does vLLM's AWQ loader).
    qt, _ = build(np.random.default_rng(2), 64, 96, 4, grid="asym", group_size=64)
    _refused(awq_fmt.pack, qt)


FORMATS = {"gptq": gptq_fmt, "awq": awq_fmt, "ct": ct_fmt}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_float_zero_points_refused(fmt):
    # HQQ's grid: a float offset, which none of the three formats holds.
    rng = np.random.default_rng(4)
    W = rng.standard_normal((64, 128)).astype(np.float32)
    qt = qfast.hqq(W, bits=4, group_size=64)
    assert qt.zero_point is not None and qt.zero_point.dtype.kind == "f"
    _refused(FORMATS[fmt].pack, qt)
    # The same with float16 scales (which every format holds), so the zero point alone is
    # what is refused, and the message says so.
    codes = rng.integers(0, 16, size=(64, 128)).astype(np.uint8)
    scale = rng.uniform(1e-3, 0.1, size=(64, 4)).astype(np.float16)
    zero = rng.uniform(0, 15, size=(64, 4)).astype(np.float32)
    qt2 = qfast.QTensor.from_codes(codes, 4, False, scale, zero, group_size=32)
    assert "zero" in _refused(FORMATS[fmt].pack, qt2).lower()


@pytest.mark.parametrize("bits", [5, 6, 7])
def test_gptq_refuses_unsupported_bits(bits):
    qt, _ = build(np.random.default_rng(bits), 64, 128, bits, grid="asym", group_size=32, zero_lo=1)
    for fmt in ("gptq", "gptq_v2"):
        _refused(gptq_fmt.pack, qt, checkpoint_format=fmt)


@pytest.mark.parametrize(
    ("bits", "out_f", "in_f"),
    [
        (4, 64, 36),  # 36·4 bits is not a whole number of int32 words
        (2, 64, 40),  # 40·2 likewise
        (3, 64, 48),  # 3-bit packs 32 inputs in 3 words: 48 is not a multiple of 32
        (8, 64, 66),  # 66·8 likewise
        (3, 48, 64),  # qzeros pack out_features the same way: 48·3 bits
        (2, 24, 64),  # 24·2 bits
        (4, 4, 64),  # 4·4 bits
    ],
)
def test_gptq_refuses_unpackable_shapes(bits, out_f, in_f):
    qt, _ = build(np.random.default_rng(bits), out_f, in_f, bits, grid="sym", group_size=None)
    for fmt in ("gptq", "gptq_v2"):
        _refused(gptq_fmt.pack, qt, checkpoint_format=fmt)


@pytest.mark.parametrize(
    ("bits", "out_f", "in_f"),
    [
        (4, 64, 40),  # 160 bits: 5 words by in·bits/32, but 40 // 32 · 4 = 4 rows in AutoGPTQ
        (2, 64, 48),  # 96 bits: 3 words, 48 // 32 · 2 = 2 rows
        (8, 64, 36),  # 288 bits: 9 words, 36 // 32 · 8 = 8 rows
        (4, 40, 64),  # qzeros: 40 // 32 · 4 = 4 columns for 5 words
    ],
)
def test_gptq_refuses_shapes_autogptq_sizes_otherwise(bits, out_f, in_f):
    # AutoGPTQ's QuantLinear.__init__ (qlinear_cuda.py) and GPTQModel's BaseQuantLinear
    # (gptqmodel/nn_modules/qlinear/__init__.py) register qweight [in // 32 · bits, out] and
    # qzeros [groups, out // 32 · bits]; vLLM's gptq.py sizes them in // (32 / bits). The two
    # agree only when in and out are multiples of 32; otherwise transformers' loaders (optimum
    # -> GPTQModel/AutoGPTQ) meet a shape mismatch, so the export is refused.
    qt, _ = build(np.random.default_rng(bits), out_f, in_f, bits, grid="sym", group_size=None)
    for fmt in ("gptq", "gptq_v2"):
        _refused(gptq_fmt.pack, qt, checkpoint_format=fmt)


@pytest.mark.parametrize("bits", GPTQ_BITS)
def test_gptq_v1_reader_refuses_a_wrapped_zero(bits):
    # A v1 field of all ones is zero − 1 = −1 wrapped (AutoGPTQ's pack of a zero of 0);
    # AutoGPTQ's forward reads it back as 2^bits, a zero point no code grid holds.
    qt, _ = build(np.random.default_rng(bits), 64, 128, bits, grid="sym", group_size=32)
    t = gptq_fmt.pack(qt, name=NAME, checkpoint_format="gptq")
    t["qzeros"] = np.full_like(t["qzeros"], -1)
    _refused(gptq_fmt.unpack, t, bits=bits, group_size=32, checkpoint_format="gptq")
    back = gptq_fmt.unpack(t, bits=bits, group_size=32, checkpoint_format="gptq_v2", name=NAME)
    assert (back.zero_point == (1 << bits) - 1).all()  # v2: the true zero, 2^bits − 1

"""qfast.awq against an independent NumPy transcription of AutoAWQ (tests/awq_reference.py).

Checked: the best ratio, the loss grid, the scales, the clipping bounds and the codes, for
both scale formulas, both grids, 3/4/8 bits, every group size, one weight and a group of
three sharing X; real all-MiniLM-L6-v2 weights with outlier input channels; the loss
invariants; that folding the scales into the input reproduces the loss; thread-count and
ISA-path invariance; the errors.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import awq_reference as ref
import numpy as np
import pytest

import qfast
import qfast.assets

from reference import unpack_codes

F32 = np.float32
AVAILABLE = qfast.cpu_info()["available"]


def layer_inputs(rng, tokens, n_in, outliers=(3, 17, 41), factor=30.0):
    """Activations with a few outlier channels (10-50x larger, as in LLMs)."""
    x = rng.standard_normal((tokens, n_in)).astype(F32)
    for k, c in enumerate(outliers):
        x[:, c % n_in] *= factor + 10 * k
    return x


def weights(rng, count, out, n_in):
    return [(rng.standard_normal((out, n_in)) * 0.05).astype(F32) for _ in range(count)]


def codes_of(q):
    """The integer codes of a QTensor, ``[out, in]`` int32 (read from the dense layout by
    NumPy, independently of qfast's unpacker)."""
    return unpack_codes(q.data, q.bits, q.shape[1], q.signed)


def clip_reference(got, want, weights_in, bits, symmetric):
    """The reference's codes, quantization scales and zeros for the clip bounds qfast chose.

    The clip search compares float32 losses of neighbouring bounds, and its group dots sum in
    an order that depends on the CPU and BLAS build; where two bounds' losses lie within the
    rounding error of that arithmetic, either may win. So every bound must agree with the
    reference's but those few near-ties, where the loss qfast's bound gives must equal the
    reference's best loss within the rounding bound (ref.clip_losses); the final quantization
    is then the reference's of qfast's bounds (the reference's own where no bound tipped)."""
    if want["clip_max"] is None:
        assert got.clip_max is None
        return want["codes"], want["qscales"], want["zeros"]
    group = weights_in[0].shape[1] // want["clip_max"][0].shape[1]
    codes, qscales, zeros = [], [], []
    for k, (c, wc, w) in enumerate(zip(got.clip_max, want["clip_max"], weights_in)):
        assert c.shape == wc.shape
        assert np.mean(c == wc) >= 0.999, f"{np.mean(c == wc):.5f} of the clip bounds agree"
        tipped = c != wc
        if not tipped.any():
            codes.append(want["codes"][k])
            qscales.append(want["qscales"][k])
            zeros.append(want["zeros"][k])
            continue
        scaled = w * want["scales"].reshape(1, -1)
        args = (scaled, want["x_scaled"], bits, group, not symmetric)
        n = want["n_sample_token"]
        loss_got, round_got = ref.clip_losses(*args, c, n)
        loss_want, round_want = ref.clip_losses(*args, wc, n)
        gap = np.abs(loss_got - loss_want)[tipped]
        slack = (round_got + round_want)[tipped]
        assert np.all(gap <= slack), (
            f"{tipped.sum()} clip bounds differ; loss gaps {gap} beyond rounding {slack}"
        )
        bound = np.repeat(c, group, axis=1)
        q, s, z = ref.quantize_codes(np.clip(scaled, -bound, bound), bits, group, not symmetric)
        codes.append(q)
        qscales.append(s)
        zeros.append(z)
    return codes, qscales, zeros


def assert_matches_reference(got, want, weights_in, bits, symmetric):
    assert got.ratio == pytest.approx(want["ratio"], abs=0)
    np.testing.assert_allclose(got.losses, want["losses"], rtol=1e-4)
    assert got.loss == pytest.approx(want["losses"].min(), rel=1e-4)
    np.testing.assert_allclose(got.scales, want["scales"], rtol=1e-6)
    want_codes, want_qscales, want_zeros = clip_reference(got, want, weights_in, bits, symmetric)
    assert len(got.qweights) == len(weights_in)
    for q, codes, qscale, zeros, w in zip(
        got.qweights, want_codes, want_qscales, want_zeros, weights_in
    ):
        assert q.shape == w.shape and q.bits == bits and q.signed == symmetric
        same = np.mean(codes_of(q) == codes)
        assert same >= 0.999, f"{same:.5f} of the codes agree"
        np.testing.assert_allclose(q.scale, qscale, rtol=1e-6)
        if symmetric:
            assert q.zero_point is None
        else:
            assert np.mean(q.zero_point == zeros) >= 0.999


CASES = [
    pytest.param(
        bits,
        group,
        sym,
        duo,
        count,
        id=f"b{bits}-g{group}-{'sym' if sym else 'asym'}-{'duo' if duo else 'llmawq'}-w{count}",
    )
    for bits in (3, 4, 8)
    for group in (32, 64, 128, None)
    for sym in (False, True)
    for duo in (True, False)
    for count in (1, 3)
    if (bits == 4 or (duo and count == 1))  # 3 and 8 bits: each grid and group size once
]


@pytest.mark.parametrize(("bits", "group", "sym", "duo", "count"), CASES)
def test_matches_autoawq(bits, group, sym, duo, count):
    rng = np.random.default_rng([bits, group or 0, sym, duo, count])
    ws = weights(rng, count, 48, 256)
    x = layer_inputs(rng, 200, 256)
    got = qfast.awq(ws if count > 1 else ws[0], x, bits, group, sym, duo_scaling=duo)
    want = ref.awq(ws, x, bits, group or 0, not sym, duo)
    assert_matches_reference(got, want, ws, bits, sym)


def test_subsampled_clip_and_options_match():
    """Token subsampling of the clip search, other n_grid / max_shrink, clip=False."""
    rng = np.random.default_rng(11)
    ws = weights(rng, 2, 40, 128)
    x = layer_inputs(rng, 700, 128).reshape(7, 100, 128)  # [..., in]
    kw = {"n_grid": 10, "max_shrink": 0.8, "n_sample_tokens": 64}
    got = qfast.awq(ws, x, 4, 32, **kw)
    want = ref.awq(ws, x, 4, 32, n_grid=10, max_shrink=0.8, n_sample_token=64)
    assert len(got.losses) == 10
    assert_matches_reference(got, want, ws, 4, False)
    got = qfast.awq(ws, x, 4, 32, clip=False)
    assert_matches_reference(got, ref.awq(ws, x, 4, 32, clip=False), ws, 4, False)


@pytest.fixture(scope="module")
def minilm():
    from safetensors.numpy import load_file

    path = qfast.assets.minilm_dir() / "model.safetensors"
    return load_file(str(path))


@pytest.mark.parametrize(
    ("names", "clip"),
    [
        (("query", "key", "value"), False),  # AutoAWQ's q/k/v group: q/k are not clipped
        (("intermediate",), True),
        (("output",), True),
    ],
)
def test_minilm_weights(minilm, names, clip):
    prefix = "encoder.layer.0."
    full = {
        "query": "attention.self.query.weight",
        "key": "attention.self.key.weight",
        "value": "attention.self.value.weight",
        "intermediate": "intermediate.dense.weight",
        "output": "output.dense.weight",
    }
    ws = [np.asarray(minilm[prefix + full[n]], F32) for n in names]
    rng = np.random.default_rng(5)
    x = layer_inputs(rng, 256, ws[0].shape[1], outliers=(7, 100, 200, 301))
    got = qfast.awq(ws, x, 4, 128, clip=clip)
    want = ref.awq(ws, x, 4, 128, clip=clip)
    assert_matches_reference(got, want, ws, 4, False)
    # With outlier channels AWQ beats plain RTN clearly.
    assert got.loss < 0.9 * got.losses[0]


@pytest.mark.parametrize("duo", [True, False])
def test_loss_not_above_ratio_zero(duo):
    rng = np.random.default_rng(3)
    w = weights(rng, 1, 64, 256)[0]
    x = layer_inputs(rng, 128, 256)
    r = qfast.awq(w, x, 4, 64, duo_scaling=duo, clip=False)
    assert r.loss <= r.losses[0]
    assert r.loss == r.losses.min() and r.ratio == F32(np.argmin(r.losses)) / F32(20)
    if not duo:
        # llm-awq's ratio 0 is scales == 1: plain round-to-nearest of W.
        rtn = ref.pseudo_quantize_tensor(w, 4, 64, True)[0]
        loss0 = ref.compute_loss(x @ w.T, x @ rtn.T)
        assert r.losses[0] == pytest.approx(loss0, rel=1e-5)


def test_ties_keep_the_first_ratio():
    """|X| == 1 everywhere: llm-awq's scales are 1 for every ratio, every loss is the same,
    and the reference's strict ``<`` keeps ratio 0."""
    rng = np.random.default_rng(12)
    w = weights(rng, 1, 32, 128)[0]
    x = np.where(rng.random((64, 128)) < 0.5, F32(-1), F32(1))
    r = qfast.awq(w, x, 4, 32, duo_scaling=False)
    assert np.all(r.losses == r.losses[0])
    assert r.ratio == 0.0 and np.all(r.scales == 1)


def test_folding_the_scales_gives_the_loss():
    """(X / scales) @ deq(q).T is the quantized layer; its error is the reported loss."""
    rng = np.random.default_rng(4)
    ws = weights(rng, 2, 64, 256)
    x = layer_inputs(rng, 300, 256)
    r = qfast.awq(ws, x, 4, 64, clip=False)
    folded = np.concatenate([(x / r.scales) @ q.dequantize().T for q in r.qweights], axis=1)
    exact = np.concatenate([x @ w.T for w in ws], axis=1)
    assert np.mean((folded - exact) ** 2, dtype=np.float64) == pytest.approx(r.loss, rel=1e-3)
    # Clipped weights: the dequantized values are the reference's.
    r = qfast.awq(ws, x, 4, 64)
    want = ref.awq(ws, x, 4, 64)
    for q, deq in zip(r.qweights, want["deq"]):
        assert np.mean(q.dequantize() == deq) >= 0.999


def test_progress_reports_every_step():
    rng = np.random.default_rng(6)
    ws = weights(rng, 3, 16, 64)
    x = layer_inputs(rng, 32, 64)
    calls = []
    qfast.awq(ws, x, 4, 32, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 23) for i in range(1, 24)]
    calls.clear()
    qfast.awq(ws, x, 4, 32, clip=False, n_grid=5, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(1, 6)]


def snapshot(r):
    out = {"scales": r.scales, "losses": r.losses}
    for k, q in enumerate(r.qweights):
        out[f"data{k}"] = q.data
        out[f"scale{k}"] = q.scale
        if q.zero_point is not None:
            out[f"zero{k}"] = q.zero_point
    for k, c in enumerate(r.clip_max or ()):
        out[f"clip{k}"] = c
    return out


def battery():
    """Fixed AWQ runs, large enough that the kernels use the thread pool."""
    rng = np.random.default_rng(8)
    ws = weights(rng, 2, 256, 512)
    x = layer_inputs(rng, 300, 512)
    out = {}
    for bits, group, sym in ((4, 128, False), (3, 64, True), (8, None, False)):
        r = qfast.awq(ws, x, bits, group, sym)
        out.update({f"b{bits}/{k}": v for k, v in snapshot(r).items()})
    return out


def test_thread_count_does_not_change_results(same_bytes):
    qfast.set_num_threads(1)
    one = battery()
    qfast.set_num_threads(2)
    two = battery()
    same_bytes(two, one, "2 threads vs 1")


@pytest.mark.skipif(len(AVAILABLE) < 2, reason="only one ISA path on this CPU")
def test_every_isa_path_gives_the_same_bytes(isa_outputs, same_bytes):
    outs = isa_outputs(Path(__file__).resolve(), 2)
    for isa in AVAILABLE:
        same_bytes(outs[isa], outs["scalar"], f"{isa} vs scalar")


# --- errors --------------------------------------------------------------------------------


@pytest.fixture
def small():
    rng = np.random.default_rng(9)
    return weights(rng, 1, 8, 64)[0], layer_inputs(rng, 32, 64)


@pytest.mark.parametrize(("which", "pos", "bad"), [("W", (3, 5), np.nan), ("X", (7, 9), np.inf)])
def test_non_finite_is_named(small, which, pos, bad):
    w, x = small
    (w if which == "W" else x)[pos] = bad
    with pytest.raises(
        ValueError, match=rf"{which} contains {bad} at index \({pos[0]}, {pos[1]}\)"
    ):
        qfast.awq(w, x)


def test_non_finite_in_a_group_member(small):
    w, x = small
    w2 = w.copy()
    w2[1, 2] = -np.inf
    with pytest.raises(ValueError, match=r"W\[1\] contains -inf at index \(1, 2\)"):
        qfast.awq([w, w2], x, group_size=32)


def test_shape_mismatch_names_both_shapes(small):
    w, x = small
    with pytest.raises(ValueError, match=r"X has shape \(32, 63\).*input size 64"):
        qfast.awq(w, x[:, :63], group_size=None)
    with pytest.raises(ValueError, match="share their input size"):
        qfast.awq([w, w[:, :32]], x)


def test_no_tokens_and_few_tokens(small):
    w, x = small
    with pytest.raises(ValueError, match="no tokens"):
        qfast.awq(w, x[:0], group_size=32)
    with pytest.warns(RuntimeWarning, match="only 8 tokens"):
        qfast.awq(w, x[:8], group_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qfast.awq(w, x[:16], group_size=32)


def test_group_size_must_divide(small):
    w, x = small
    with pytest.raises(ValueError, match=r"group_size=48 does not divide the input size 64.*32"):
        qfast.awq(w, x, group_size=48)
    r = qfast.awq(w, x, group_size=None)
    assert r.qweights[0].group_size == 64 and r.qweights[0].scale.shape == (8, 1)


def test_integer_inputs_are_rejected(small):
    w, x = small
    with pytest.raises(TypeError, match="W must be a float array"):
        qfast.awq(w.astype(np.int32), x, group_size=32)
    with pytest.raises(TypeError, match="X must be a float array"):
        qfast.awq(w, x.astype(np.int64), group_size=32)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"bits": 9}, "bits=9"),
        ({"n_grid": 0}, "n_grid"),
        ({"max_shrink": 0.01}, "no clip step"),
        ({"n_sample_tokens": 0}, "n_sample_tokens"),
    ],
)
def test_bad_options(small, kw, match):
    w, x = small
    with pytest.raises(ValueError, match=match):
        qfast.awq(w, x, group_size=32, **kw)


def test_result_is_frozen(small):
    r = qfast.awq(*small, group_size=32)
    with pytest.raises(AttributeError):
        r.ratio = 0.5  # type: ignore[misc]


if __name__ == "__main__":  # the ISA-path battery, run in a subprocess
    np.savez(sys.argv[1], **battery())

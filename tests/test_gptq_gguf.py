"""qfast.gptq_gguf: GPTQ inside GGUF's 32-value block grids.

References: ggml's own quantizer (through qfast.gguf.quantize, itself checked byte for byte
against ggml-quants.c) when the Hessian is the identity, where GPTQ's feedback is zero; a plain,
unblocked NumPy transcription of GPTQ's column loop with ggml's block rules written out here;
and the output error of RTN (ggml's quantizer) on correlated inputs, which GPTQ must beat."""

from __future__ import annotations

import numpy as np
import pytest

import qfast
from qfast.algorithms.gptq import hinv_factor

TYPES = ["Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q8_0"]
F32 = np.float32


def rows(kind: str, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((16, 128)).astype(F32)
    if kind == "zeros":
        x[:, 32:64] = 0
    elif kind == "outlier":
        x[:, 70] = 50
    elif kind == "ties":
        x = np.round(x * 4) / 4
    elif kind == "positive":
        x = np.abs(x)
    return x


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("kind", ["normal", "zeros", "outlier", "ties", "positive"])
@pytest.mark.parametrize("t", TYPES)
def test_identity_hessian_is_ggmls_quantizer(t: str, kind: str, act_order: bool) -> None:
    W = rows(kind, np.random.default_rng(1))
    H = np.diag(np.linspace(1, 2, W.shape[1])).astype(F32)  # act-order permutes every column
    got = qfast.gptq_gguf(W, hessian=H, type=t, act_order=act_order, imatrix=False)
    np.testing.assert_array_equal(got, qfast.gguf.quantize(W, t))


def block_grid(blk: np.ndarray, t: str) -> tuple[np.ndarray, ...]:
    """ggml's grid of each row of a 32-value block: (1/d, min) for the codes, float16 d, m."""
    rows_ = blk.shape[0]
    top = {"Q4_0": 15, "Q5_0": 31, "Q4_1": 15, "Q5_1": 31}.get(t)
    if t == "Q8_0":
        d = (np.abs(blk).max(1) / F32(127)).astype(F32)
        mn = np.zeros(rows_, F32)
    elif t in ("Q4_0", "Q5_0"):
        big = blk[np.arange(rows_), np.abs(blk).argmax(1)]
        big = np.where(np.abs(big) > 0, big, F32(0))
        d = (big / F32(-(top + 1) // 2)).astype(F32)
        mn = np.zeros(rows_, F32)
    else:
        mn = blk.min(1).astype(F32)
        d = ((blk.max(1) - mn) / F32(top)).astype(F32)
    inv = np.array([F32(1) / x if x else F32(0) for x in d], F32)
    return inv, mn, d.astype(np.float16).astype(F32), mn.astype(np.float16).astype(F32)


def dequant_column(w: np.ndarray, grid: tuple[np.ndarray, ...], t: str) -> np.ndarray:
    """One column on its rows' block grids: ggml's codes (float32 1/d and min), clamped to
    the type's codes, dequantized with the float16 d (and m)."""
    inv, mn, d16, m16 = grid
    top = {"Q4_0": 15, "Q5_0": 31, "Q4_1": 15, "Q5_1": 31}.get(t)
    if t == "Q8_0":
        v = w * inv
        return np.clip(np.sign(v) * np.floor(np.abs(v) + F32(0.5)), -128, 127).astype(F32) * d16
    if t in ("Q4_0", "Q5_0"):
        half = (top + 1) // 2
        return (np.clip(np.trunc(w * inv + F32(half + 0.5)), 0, top) - half).astype(F32) * d16
    q = np.clip(np.trunc((w - mn) * inv + F32(0.5)), 0, top)
    return q.astype(F32) * d16 + m16


def reference(W: np.ndarray, H: np.ndarray, t: str, act_order: bool = False) -> np.ndarray:
    """GPTQ's column loop, one column at a time over the whole row (no lazy blocks), with
    ggml's block rules. Without act-order, block b's grid is chosen on the compensated weights
    when column 32b is reached; with it, every grid is fixed on the original weights and the
    columns run by decreasing H[i, i]."""
    W = W.astype(F32).copy()
    cols = W.shape[1]
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    grids = [block_grid(W[:, b : b + 32], t) for b in range(0, cols, 32)] if act_order else []
    U, _ = hinv_factor(H[np.ix_(perm, perm)], 0.01)
    Wp = W[:, perm]
    out = np.zeros_like(W)
    for c in range(cols):
        b = perm[c] // 32
        if not act_order and c % 32 == 0:
            grids.append(block_grid(Wp[:, c : c + 32], t))
        w = Wp[:, c]
        dq = dequant_column(w, grids[b], t)
        out[:, perm[c]] = dq
        err = (w - dq) / U[c, c]
        Wp[:, c:] -= np.outer(err, U[c, c:]).astype(F32)
    return out


@pytest.mark.parametrize("t", TYPES)
def test_column_loop_is_gptqs(t: str) -> None:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((512, 96)).astype(F32) @ rng.standard_normal((96, 96)).astype(F32)
    W = rng.standard_normal((24, 96)).astype(F32)
    H = (2 / X.shape[0] * (X.T @ X)).astype(F32)
    got = qfast.gguf.dequantize(
        qfast.gptq_gguf(W, hessian=H, type=t, block_size=96, imatrix=False), t, W.shape
    )
    np.testing.assert_array_equal(got, reference(W, H, t))
    # the lazy blocks (32 columns at a time) move rounding only: the same layer error
    blocked = qfast.gguf.dequantize(
        qfast.gptq_gguf(W, hessian=H, type=t, block_size=32, imatrix=False), t, W.shape
    )
    err = lambda q: float(np.linalg.norm(X @ (q - W).T))  # noqa: E731
    assert err(blocked) == pytest.approx(err(got), rel=0.05)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("t", TYPES)
def test_beats_ggmls_quantizer_on_correlated_inputs(t: str, act_order: bool) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2048, 256)).astype(F32) @ rng.standard_normal((256, 256)).astype(F32)
    X[:, 5] *= 20  # an outlier channel, as LLM activations have
    W = rng.standard_normal((64, 256)).astype(F32)
    rtn = qfast.gguf.dequantize(qfast.gguf.quantize(W, t), t, W.shape)
    gptq = qfast.gguf.dequantize(qfast.gptq_gguf(W, X, type=t, act_order=act_order), t, W.shape)
    e_rtn = np.linalg.norm(X @ (rtn - W).T)
    e_gptq = np.linalg.norm(X @ (gptq - W).T)
    assert e_gptq < 0.8 * e_rtn, (t, e_gptq / e_rtn)


def test_bad_input_says_what_to_do() -> None:
    W = np.ones((4, 64), F32)
    with pytest.raises(ValueError, match="gptq_gguf writes Q4_0"):
        qfast.gptq_gguf(W, np.ones((8, 64), F32), type="Q4_Z")
    with pytest.raises(ValueError, match="blocks of 32 input columns; in_features is 40"):
        qfast.gptq_gguf(np.ones((4, 40), F32), np.ones((8, 40), F32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        qfast.gptq_gguf(np.full((4, 64), np.nan, F32), np.ones((8, 64), F32))
    with pytest.raises(ValueError, match="exactly one of X"):
        qfast.gptq_gguf(W)
    with pytest.raises(ValueError, match="multiple of 32"):
        qfast.gptq_gguf(W, np.ones((8, 64), F32), block_size=48)


# ---------------------------------------------------------------------------------------------
# The K-quants and IQ4_NL, and the grids by ggml's importance-weighted search (imatrix=True)

KTYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)


def f16(b: bytes | np.ndarray, at: int) -> F32:
    return F32(np.frombuffer(bytes(b[at : at + 2]), "<f2")[0])


def block_values(b: np.ndarray, t: str) -> list[np.ndarray]:
    """The values every code of one block's sub-blocks stands for (one array per sub-block,
    in value order), read from the block's bytes as ggml-quants.c's ``dequantize_row_*``
    reads its scales (transcribed scalar code, not qfast's unpacking)."""
    b = bytes(b)
    if t in ("Q4_K", "Q5_K"):
        d, dmin = f16(b, 0), f16(b, 2)
        q = b[4:16]
        out = []
        for j in range(8):  # get_scale_min_k4
            if j < 4:
                sc, m = q[j] & 63, q[j + 4] & 63
            else:
                sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)
                m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)
            d1, m1 = d * F32(sc), dmin * F32(m)
            n = 16 if t == "Q4_K" else 32
            out.append(d1 * np.arange(n, dtype=F32) - m1)
        return out
    if t == "Q2_K":
        d, dmin = f16(b, 80), f16(b, 82)
        return [d * F32(s & 0xF) * np.arange(4, dtype=F32) - dmin * F32(s >> 4) for s in b[:16]]
    if t == "Q3_K":
        aux = list(np.frombuffer(b[96:108], "<u4").astype(np.uint64))
        kmask1, kmask2 = 0x03030303, 0x0F0F0F0F
        tmp = aux[2]
        aux2 = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4)
        aux3 = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4)
        aux0 = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4)
        aux1 = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4)
        scales = np.array([aux0, aux1, aux2, aux3], "<u4").view(np.int8)
        d = f16(b, 108)
        return [d * F32(s - 32) * (np.arange(8, dtype=F32) - 4) for s in scales]
    if t == "Q6_K":
        d = f16(b, 208)
        sc = np.frombuffer(b[192:208], np.int8)
        return [d * F32(s) * (np.arange(64, dtype=F32) - 32) for s in sc]
    if t == "IQ4_NL":
        return [f16(b, 0) * IQ4]
    if t == "Q4_0":
        return [f16(b, 0) * (np.arange(16, dtype=F32) - 8)]
    if t == "Q5_0":
        return [f16(b, 0) * (np.arange(32, dtype=F32) - 16)]
    if t == "Q4_1":
        return [np.arange(16, dtype=F32) * f16(b, 0) + f16(b, 2)]
    if t == "Q5_1":
        return [np.arange(32, dtype=F32) * f16(b, 0) + f16(b, 2)]
    assert t == "Q8_0"
    return [np.arange(-128, 128, dtype=F32) * f16(b, 0)]


def grid_table(data: np.ndarray, t: str, cols: int) -> list[list[np.ndarray]]:
    """Per row, per column: the values of the column's sub-block grid."""
    info = qfast.gguf.type_info(t)
    out = []
    for row in data:
        per_col: list[np.ndarray] = []
        for k in range(cols // info.block_size):
            subs = block_values(row[k * info.type_size : (k + 1) * info.type_size], t)
            n = info.block_size // len(subs)
            for v in subs:
                per_col += [v] * n
        out.append(per_col)
    return out


def weighted_reference(W: np.ndarray, H: np.ndarray, t: str, act_order: bool = False) -> np.ndarray:
    """GPTQ's column loop, one column at a time over the whole row (no lazy blocks), where each
    block's grid is ggml's importance-weighted search (qfast.gguf.quantize, bit-exact with
    ggml, with H's diagonal as the importance matrix) on the block's compensated weights when
    the loop reaches it (with act-order: on the original weights, columns by decreasing
    H[i, i]), and each column takes the value of its grid nearest to it (by brute force)."""
    S = qfast.gguf.type_info(t).block_size
    W = W.astype(F32).copy()
    rows_, cols = W.shape
    qw = np.diag(H).astype(F32)
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    table: list[list[np.ndarray]] = [[np.zeros(1, F32)] * cols for _ in range(rows_)]
    if act_order:
        table = grid_table(qfast.gguf.quantize(W, t, imatrix=qw), t, cols)
    U, _ = hinv_factor(H[np.ix_(perm, perm)], 0.01)
    Wp = W[:, perm]
    out = np.zeros_like(W)
    for c in range(cols):
        col = perm[c]
        if not act_order and c % S == 0:
            data = qfast.gguf.quantize(
                np.ascontiguousarray(Wp[:, c : c + S]), t, imatrix=qw[c : c + S]
            )
            for r, g in enumerate(grid_table(data, t, S)):
                table[r][c : c + S] = g
        w = Wp[:, c]
        dq = np.array(
            [v[np.argmin(np.abs(v - x))] for v, x in zip((tr[col] for tr in table), w)], F32
        )
        out[:, col] = dq
        err = (w - dq) / U[c, c]
        Wp[:, c:] -= np.outer(err, U[c, c:]).astype(F32)
    return out


def correlated(cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((1024, cols)).astype(F32) @ rng.standard_normal((cols, cols)).astype(
        F32
    )
    X[:, 5] *= 10
    return X, (2 / X.shape[0] * (X.T @ X)).astype(F32)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("t", [*KTYPES, "IQ4_NL", *TYPES])
def test_weighted_column_loop_is_gptqs(t: str, act_order: bool) -> None:
    """Every type, grids by ggml's weighted search, against the plain transcription."""
    S = qfast.gguf.type_info(t).block_size
    cols = 2 * S if S == 256 else 96
    _, H = correlated(cols, 12)
    W = np.random.default_rng(13).standard_normal((12, cols)).astype(F32)
    data = qfast.gptq_gguf(W, hessian=H, type=t, act_order=act_order, block_size=cols)
    got = qfast.gguf.dequantize(data, t, W.shape)
    want = weighted_reference(W, H, t, act_order)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["normal", "zeros", "outlier", "ties", "positive", "tiny"])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("t", KTYPES)
def test_kquants_identity_hessian_is_ggmls_quantizer(t: str, act_order: bool, kind: str) -> None:
    """The K-quants' final codes are ggml's requantization on the stored grid
    (``nearest_int((x + dm) / d)``): with no feedback, GPTQ's codes are ggml's, byte for
    byte, with the importance matrix (the Hessian's diagonal) and without."""
    rng = np.random.default_rng(4)
    W = np.tile(rows(kind if kind != "tiny" else "normal", rng), (1, 4))  # 512 columns
    if kind == "zeros":
        W[:, 256:] = 0  # a whole super-block of zeros
    elif kind == "tiny":
        W[:, 100:116] *= 1e-6  # a sub-block far below the rest of its super-block
    diag = np.linspace(1, 2, W.shape[1]).astype(F32)
    H = np.diag(diag)
    got = qfast.gptq_gguf(W, hessian=H, type=t, act_order=act_order)
    np.testing.assert_array_equal(got, qfast.gguf.quantize(W, t, imatrix=diag))
    got = qfast.gptq_gguf(W, hessian=H, type=t, act_order=act_order, imatrix=False)
    np.testing.assert_array_equal(got, qfast.gguf.quantize(W, t))


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("kind", ["normal", "zeros", "outlier", "ties", "positive"])
@pytest.mark.parametrize("t", ["IQ4_NL", *TYPES])
def test_identity_hessian_keeps_ggmls_weighted_grid(t: str, kind: str, act_order: bool) -> None:
    """IQ4_NL and the 32-blocks' weighted searches pick codes on their float32 scale (or
    jointly with it), not on the stored float16 grid; GPTQ keeps ggml's grid (the block
    headers) and takes the nearest value on it, so it is never further from W than ggml.
    The grids: with act-order ggml's search over the original rows; without, ggml's search
    on each block as the loop reaches it (for Q4_0 .. Q5_1 ggml's σ² is then the block's,
    not the row's)."""
    W = rows(kind, np.random.default_rng(1))
    diag = np.linspace(1, 2, W.shape[1]).astype(F32)
    got = qfast.gptq_gguf(W, hessian=np.diag(diag), type=t, act_order=act_order)
    if act_order:
        want = qfast.gguf.quantize(W, t, imatrix=diag)
    else:
        want = np.concatenate(
            [
                qfast.gguf.quantize(W[:, c : c + 32].copy(), t, imatrix=diag[c : c + 32])
                for c in range(0, W.shape[1], 32)
            ],
            axis=1,
        )
    info = qfast.gguf.type_info(t)
    head = 4 if t in ("Q4_1", "Q5_1") else 2
    g, w = (x.reshape(W.shape[0], -1, info.type_size)[..., :head] for x in (got, want))
    np.testing.assert_array_equal(g, w)
    e_got = np.abs(qfast.gguf.dequantize(got, t, W.shape) - W)
    e_want = np.abs(qfast.gguf.dequantize(want, t, W.shape) - W)
    assert (e_got <= e_want * (1 + 1e-6) + 1e-30).all()


@pytest.mark.parametrize("t", [*KTYPES, "IQ4_NL", *TYPES])
def test_beats_ggmls_weighted_search_on_correlated_inputs(t: str) -> None:
    """Layer output error below ggml's quantizer with the importance matrix of the same
    inputs (llama-quantize --imatrix), with and without act-order."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2048, 512)).astype(F32) @ rng.standard_normal((512, 512)).astype(F32)
    X[:, 5] *= 20
    W = rng.standard_normal((64, 512)).astype(F32)
    imat = (X.astype(np.float64) ** 2).sum(0).astype(F32)
    err = lambda d: np.linalg.norm(X @ (qfast.gguf.dequantize(d, t, W.shape) - W).T)  # noqa: E731
    e_ggml = err(qfast.gguf.quantize(W, t, imatrix=imat))
    for act_order in (False, True):
        e = err(qfast.gptq_gguf(W, X, type=t, act_order=act_order))
        assert e < 0.9 * e_ggml, (t, act_order, e / e_ggml)


def test_kquant_refusals() -> None:
    W = np.ones((4, 512), F32)
    with pytest.raises(
        ValueError, match="Q4_K stores blocks of 256 input columns; in_features is 288"
    ):
        qfast.gptq_gguf(np.ones((4, 288), F32), np.ones((8, 288), F32), type="Q4_K")
    with pytest.raises(ValueError, match="NaN or Inf"):
        qfast.gptq_gguf(np.full((4, 256), np.nan, F32), np.ones((8, 256), F32), type="Q6_K")
    with pytest.raises(ValueError, match="multiple of 256 for Q3_K"):
        qfast.gptq_gguf(W, np.ones((8, 512), F32), type="Q3_K", block_size=384)
    with pytest.raises(ValueError, match="block_size must be at least 256"):
        qfast.gptq_gguf(W, np.ones((8, 512), F32), type="Q3_K", block_size=128)
    with pytest.raises(ValueError, match="imatrix has 3 weights; W has 512 columns"):
        qfast.gptq_gguf(W, np.ones((8, 512), F32), type="Q4_K", imatrix=np.ones(3))
    with pytest.raises(ValueError, match="finite and >= 0"):
        qfast.gptq_gguf(W, np.ones((8, 512), F32), type="Q4_K", imatrix=-np.ones(512))


@pytest.fixture(scope="module")
def smollm2_block0() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """SmolLM2's block-0 linears with their real inputs: ``{group: (W, X_calibration,
    X_heldout)}`` (64 x 128 tokens of the calibration half of the Wikipedia sample, 8 x 128 of
    the held-out half)."""
    from qfast import assets
    from qfast.calibration.text import calibration_paragraphs, heldout_paragraphs
    from qfast.model.quantize import _causal_windows

    model = qfast.load_model(assets.smollm2_gguf(), compute="float")
    out: dict[str, list[np.ndarray]] = {}
    for side, (text, n) in enumerate(
        ((calibration_paragraphs(240), 64), (heldout_paragraphs(40), 8))
    ):
        h = model.calibration_batch(_causal_windows(model, "\n".join(text), n, 128)).h
        x = np.array(model.block_stage(0, 0, h, None))
        for k, group in enumerate(model.block_groups(0), start=1):
            name = "+".join(m.split(".")[-1] for m in group.names)
            if side == 0:
                W = np.concatenate(
                    [np.asarray(model.weights[m + ".weight"], F32) for m in group.names]
                )
                out[name] = [W]
            out[name].append(x.reshape(-1, x.shape[-1]).copy())
            nxt = model.block_stage(0, k, h, x)
            x = np.array(nxt) if nxt is not None else x
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


@pytest.mark.parametrize(
    ("t", "group"),
    [("Q4_0", "q_proj+k_proj+v_proj"), ("IQ4_NL", "gate_proj+up_proj"), ("Q4_K", "down_proj"),
     ("Q3_K", "down_proj"), ("Q6_K", "down_proj"), ("Q5_0", "o_proj")],
)  # fmt: skip
def test_beats_ggmls_weighted_search_on_smollm2(
    smollm2_block0: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], t: str, group: str
) -> None:
    """On SmolLM2's real activations, measured on held-out tokens: GPTQ's output error below
    ggml's quantizer with the importance matrix of the same calibration tokens."""
    W, Xc, Xh = smollm2_block0[group]
    imat = (Xc.astype(np.float64) ** 2).sum(0).astype(F32)
    err = lambda d: np.linalg.norm(Xh @ (qfast.gguf.dequantize(d, t, W.shape) - W).T)  # noqa: E731
    e_ggml = err(qfast.gguf.quantize(W, t, imatrix=imat))
    e_gptq = err(qfast.gptq_gguf(W, Xc, type=t, act_order=True))
    assert e_gptq < e_ggml, (t, group, e_gptq / e_ggml)

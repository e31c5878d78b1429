"""An independent float32 NumPy transcription of AutoAWQ's AWQ search, the oracle of
tests/test_awq.py and benches/test_awq.py.

Written step by step from casper-hansen/AutoAWQ ``awq/quantize/quantizer.py``
(``pseudo_quantize_tensor``, ``_search_best_scale``, ``_compute_best_scale``,
``_compute_loss``, ``_compute_best_clip``) and ``awq/quantize/scale.py`` (``apply_scale``
divides the cached inputs by the scales, ``apply_clip`` clamps the weights), with NumPy
broadcasting and einsum where the reference uses torch. It shares no code with qfast.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
OC_BATCH = 256


def pseudo_quantize_tensor(w, bits, group_size, zero_point):
    """AutoAWQ ``pseudo_quantize_tensor``: (fake-quantized w, scales, zeros or None)."""
    org_shape = w.shape
    if group_size > 0:
        assert org_shape[-1] % group_size == 0
        w = w.reshape(-1, group_size)
    assert w.ndim == 2
    assert not np.isnan(w).any()
    if zero_point:
        max_val = w.max(axis=1, keepdims=True)
        min_val = w.min(axis=1, keepdims=True)
        max_int = 2**bits - 1
        min_int = 0
        scales = np.maximum(max_val - min_val, F32(1e-5)) / F32(max_int)
        zeros = np.clip(-np.round(min_val / scales), min_int, max_int)
        w = (np.clip(np.round(w / scales) + zeros, min_int, max_int) - zeros) * scales
        zeros = zeros.reshape(org_shape[0], -1)
    else:
        max_val = np.maximum(np.abs(w).max(axis=1, keepdims=True), F32(1e-5))
        max_int = 2 ** (bits - 1) - 1
        min_int = -(2 ** (bits - 1))
        scales = max_val / F32(max_int)
        zeros = None
        w = np.clip(np.round(w / scales), min_int, max_int) * scales
    assert not np.isnan(scales).any()
    scales = scales.reshape(org_shape[0], -1)
    return w.reshape(org_shape).astype(F32), scales.astype(F32), zeros


def quantize_codes(w, bits, group_size, zero_point):
    """The integer codes ``pseudo_quantize_tensor`` dequantizes (AutoAWQ's packers compute
    them the same way from its scales and zeros): ``[out, in]`` int32."""
    rows = w.shape[0]
    g = w.reshape(-1, group_size)
    _, scales, zeros = pseudo_quantize_tensor(w, bits, group_size, zero_point)
    s = scales.reshape(-1, 1)
    if zero_point:
        z = zeros.reshape(-1, 1)
        q = np.clip(np.round(g / s) + z, 0, 2**bits - 1)
    else:
        q = np.clip(np.round(g / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return q.reshape(rows, -1).astype(np.int32), scales, zeros


def search_best_scale(weights, x, bits, group_size, zero_point, duo_scaling=True, n_grid=20):
    """AutoAWQ ``_search_best_scale`` + ``_compute_best_scale`` for linears sharing ``x``
    (``module2inspect`` = the linears, no bias). Returns (best ratio, scales, history)."""
    # [STEP 1]: per-channel mean of the normalised weights, all weights concatenated.
    weight = np.concatenate(weights, axis=0)
    org_shape = weight.shape
    weight = weight.reshape(-1, group_size)
    w_scale = np.abs(weight) / (np.abs(weight).max(axis=1, keepdims=True) + F32(1e-6))
    w_scale = w_scale.reshape(org_shape)
    w_mean = w_scale.mean(axis=0, dtype=F32)
    # [STEP 2]: per-channel mean of |x| (a float32 sum divided by the token count).
    inp_flat = np.abs(x).reshape(-1, x.shape[-1])
    x_sum = inp_flat.astype(F32).sum(axis=0)
    x_mean = (x_sum / F32(inp_flat.shape[0])).astype(F32)
    # [STEP 3]: the output of the module (the concatenated linears).
    fp16_output = np.concatenate([np.einsum("ti,oi->to", x, w) for w in weights], axis=1)
    # [STEP 4]: the grid.
    history = []
    best_ratio, best_scales, best_error = -1.0, None, float("inf")
    for r in np.arange(n_grid, dtype=F32):
        ratio = r / F32(n_grid)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if duo_scaling:
                scales = np.maximum(
                    np.power(x_mean, ratio) / (np.power(w_mean, F32(1) - ratio) + F32(1e-4)),
                    F32(1e-4),
                )
            else:
                scales = np.maximum(np.power(x_mean, ratio), F32(1e-4)).reshape(-1)
            scales = scales / np.sqrt(scales.max() * scales.min())
        scales_view = scales.reshape(1, -1)
        scales[np.isinf(scales)] = 1
        scales[np.isnan(scales)] = 1
        outs = []
        for w in weights:
            wq = pseudo_quantize_tensor(w * scales_view, bits, group_size, zero_point)[0]
            wq = wq / scales_view
            outs.append(np.einsum("ti,oi->to", x, wq))
        int_w_output = np.concatenate(outs, axis=1)
        loss = compute_loss(fp16_output, int_w_output)
        history.append(loss)
        if loss < best_error:
            best_error, best_ratio, best_scales = loss, float(ratio), scales.copy()
    assert best_ratio != -1
    return best_ratio, best_scales, np.array(history)


def compute_loss(fp16_output, int_w_output):
    """AutoAWQ ``_compute_loss``: float32 sum of squared differences / element count."""
    d = (fp16_output.reshape(-1) - int_w_output.reshape(-1)).astype(F32)
    return float(np.square(d).sum()) / d.size


def group_dots(input_feat, w):
    """``(input_feat * w).sum(dim=-1)`` of the reference, ``[1, n_token, n_group, gs]`` by
    ``[co, 1, n_group, gs]`` -> ``[co, n_token, n_group]``, as one batched matmul per group
    (the same sums; NumPy's broadcasting product would need co x n_token x in floats)."""
    feat = input_feat[0].transpose(1, 0, 2)  # n_group, n_token, gs
    wg = w[:, 0].transpose(1, 2, 0)  # n_group, gs, co
    return np.matmul(feat, wg).transpose(2, 1, 0)


def compute_best_clip(
    w, input_feat, bits, group_size, zero_point, n_grid=20, max_shrink=0.5, n_sample_token=512
):
    """AutoAWQ ``_compute_best_clip``: best max_val ``[co, n_group]``, output rows in batches
    of OC_BATCH (the reference's 256, without its divisibility assertion)."""
    assert w.ndim == 2
    org_w_shape = w.shape
    group_size = group_size if group_size > 0 else org_w_shape[1]
    input_feat = input_feat.reshape(-1, input_feat.shape[-1])
    input_feat = input_feat.reshape(1, input_feat.shape[0], -1, group_size)
    step_size = max(1, input_feat.shape[1] // n_sample_token)
    input_feat = input_feat[:, ::step_size]
    w_all = w.reshape(org_w_shape[0], 1, -1, group_size)
    best_all = []
    for i_b in range(0, org_w_shape[0], OC_BATCH):  # the reference's batches bound memory
        w = w_all[i_b : i_b + OC_BATCH]
        org_max_val = np.abs(w).max(axis=-1, keepdims=True)  # co, 1, n_group, 1
        best_max_val = org_max_val.copy()
        min_errs = np.ones_like(org_max_val) * F32(1e9)
        org_out = group_dots(input_feat, w)  # co, n_token, n_group
        for i_s in range(int(max_shrink * n_grid)):
            max_val = org_max_val * (1 - i_s / n_grid)
            cur_w = np.clip(w, -max_val, max_val)
            q_w = pseudo_quantize_tensor(cur_w, bits, group_size, zero_point)[0]
            cur_out = group_dots(input_feat, q_w)
            err = np.square(cur_out - org_out).mean(axis=1, dtype=F32).reshape(min_errs.shape)
            cur_best_idx = err < min_errs
            min_errs[cur_best_idx] = err[cur_best_idx]
            best_max_val[cur_best_idx] = max_val[cur_best_idx]
        best_all.append(best_max_val)
    best_max_val = np.concatenate(best_all, axis=0)
    return best_max_val.reshape(org_w_shape[0], -1)


def _gamma(n):
    """Higham's gamma_n = n u / (1 - n u): a sum of n float32 terms, in any order and with or
    without FMA, is within gamma_{n-1} * sum |terms| of the exact sum."""
    u = float(np.finfo(F32).eps) / 2
    return n * u / (1 - n * u)


def clip_losses(w, input_feat, bits, group_size, zero_point, bounds, n_sample_token=512):
    """The clip search's loss (``compute_best_clip``'s ``err``) of the bounds ``bounds``
    ``[co, n_group]``, evaluated exactly (float64, from the same float32 fake-quantized
    weights), and a bound on the error of any float32 evaluation of it: the group dots
    (``group_size`` products, in whatever order a BLAS or SIMD kernel sums them, inputs a few
    ulps apart) and the mean over tokens. Two bounds whose losses are closer than the sum of
    their rounding bounds can be ordered either way by float32 arithmetic.

    Returns (loss, rounding), each float64 ``[co, n_group]``."""
    co, n_in = w.shape
    n_group = n_in // group_size
    feat = input_feat.reshape(-1, input_feat.shape[-1])
    feat = feat[:: max(1, feat.shape[0] // n_sample_token)].astype(np.float64)
    bound = np.repeat(bounds.reshape(co, n_group), group_size, axis=1)
    q = pseudo_quantize_tensor(np.clip(w, -bound, bound), bits, group_size, zero_point)[0]
    f = feat.reshape(feat.shape[0], n_group, group_size)
    wg = w.astype(np.float64).reshape(co, n_group, group_size)
    qg = q.astype(np.float64).reshape(co, n_group, group_size)
    d = np.einsum("tgk,cgk->ctg", f, qg - wg)  # exact up to float64 rounding
    mags = np.einsum("tgk,cgk->ctg", np.abs(f), np.abs(wg) + np.abs(qg))
    e = _gamma(group_size + 2) * mags  # both dots' errors, inputs within an ulp
    loss = np.square(d).mean(axis=1)
    rounding = (2 * np.abs(d) * e + e * e).mean(axis=1) + _gamma(d.shape[1] + 1) * loss
    return loss, rounding


def awq(
    weights,
    x,
    bits=4,
    group_size=128,
    zero_point=True,
    duo_scaling=True,
    clip=True,
    n_grid=20,
    max_shrink=0.5,
    n_sample_token=512,
):
    """The whole AutoAWQ pipeline for linears sharing ``x``: scale search, ``apply_scale``
    (weights times scales, inputs divided by them), clip search and ``apply_clip``, and
    the final ``pseudo_quantize_tensor``. Returns a dict of every intermediate result."""
    x = x.reshape(-1, x.shape[-1]).astype(F32)
    weights = [w.astype(F32) for w in weights]
    group_size = group_size if group_size else x.shape[-1]
    ratio, scales, history = search_best_scale(
        weights, x, bits, group_size, zero_point, duo_scaling, n_grid
    )
    scaled = [w * scales.reshape(1, -1) for w in weights]
    feat = x / scales.reshape(1, -1)
    clips = None
    if clip:
        clips = []
        for k, w in enumerate(scaled):
            best = compute_best_clip(
                w, feat, bits, group_size, zero_point, n_grid, max_shrink, n_sample_token
            )
            bound = np.repeat(best, group_size, axis=1)
            scaled[k] = np.clip(w, -bound, bound)
            clips.append(best)
    codes = [quantize_codes(w, bits, group_size, zero_point) for w in scaled]
    deq = [pseudo_quantize_tensor(w, bits, group_size, zero_point)[0] for w in scaled]
    return {
        "ratio": ratio,
        "scales": scales,
        "losses": history,
        "clip_max": clips,
        "scaled": scaled,
        "codes": [c[0] for c in codes],
        "qscales": [c[1] for c in codes],
        "zeros": [c[2] for c in codes],
        "deq": deq,
        "x_scaled": feat,
        "n_sample_token": n_sample_token,
    }

"""HQQ in plain NumPy float32: the oracle of tests/test_hqq.py.

A line-by-line transcription of the reference library's CPU path (mobiusml/hqq:
``hqq/core/quantize.py::Quantizer.quantize`` with ``axis=1`` and
``hqq/core/optimize.py::optimize_weights_proximal_legacy``), with torch replaced by NumPy and
every array kept float32 as torch keeps it on a CPU. It is deliberately naive (whole-tensor
temporaries, no shortcuts) so that it can be read against the reference side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32


@dataclass
class HqqResult:
    w_q: np.ndarray  # float32 codes, [n_groups, group_size]
    scale: np.ndarray  # hqq's scale (codes per unit: the inverse of the step), [n_groups, 1]
    zero: np.ndarray  # float zero point, [n_groups, 1]
    iters_run: int
    errors: list[float]  # mean |W - W_r| of every iteration run


def shrink_lp(x: np.ndarray, beta: float, lp_norm: float) -> np.ndarray:
    """The proximal operator of the lp norm (generalised soft thresholding)."""
    with np.errstate(divide="ignore"):  # |x| ** (p - 1) is inf at 0, as in torch
        if lp_norm == 1:
            return np.sign(x) * np.maximum(np.abs(x) - F32(1.0 / beta), 0)
        return np.sign(x) * np.maximum(
            np.abs(x) - F32(1.0 / beta) * np.power(np.abs(x), F32(lp_norm - 1)), 0
        )


def optimize_weights_proximal_legacy(
    w_f: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray,
    min_max: tuple[int, int],
    *,
    lp_norm: float = 0.7,
    beta: float = 1e1,
    kappa: float = 1.01,
    iters: int = 20,
    early_stop: bool = True,
) -> HqqResult:
    best_error = 1e4
    errors: list[float] = []
    i = 0
    for i in range(iters):  # noqa: B007 (i is read after the loop)
        w_q = np.clip(np.round(w_f * scale + zero), min_max[0], min_max[1])
        w_r = (w_q - zero) / scale
        w_e = shrink_lp(w_f - w_r, beta, lp_norm)
        zero = np.mean(w_q - (w_f - w_e) * scale, axis=1, keepdims=True, dtype=F32)
        beta *= kappa

        current_error = float(np.abs(w_f - w_r).mean(dtype=F32))
        errors.append(current_error)
        if early_stop:
            if current_error < best_error:
                best_error = current_error
            else:
                break
    w_q = np.clip(np.round(w_f * scale + zero), min_max[0], min_max[1])
    return HqqResult(w_q, scale, zero, i + 1 if iters else 0, errors)


def hqq_quantize(
    w: np.ndarray,
    nbits: int = 4,
    group_size: int | None = 64,
    *,
    optimize: bool = True,
    round_zero: bool = False,
    **opt_params,
) -> HqqResult:
    """Quantizer.quantize(W, nbits, group_size, optimize, round_zero, axis=1) on a CPU."""
    w = np.asarray(w, dtype=F32)
    shape = w.shape
    if group_size is not None:
        assert shape[-1] % group_size == 0  # stricter than hqq, which only needs numel
        w = w.reshape([-1, group_size])
    else:
        w = w.reshape([-1, shape[-1]])

    _min = w.min(axis=1, keepdims=True)
    _max = w.max(axis=1, keepdims=True)
    max_v = round(2**nbits - 1)
    min_max = (0, max_v)

    with np.errstate(divide="ignore"):  # max == min: inf, clamped below as torch does
        scale = np.minimum(F32(max_v) / (_max - _min), F32(2e4))
    zero = -_min * scale
    if round_zero:
        zero = np.round(zero)

    if optimize:
        return optimize_weights_proximal_legacy(w, scale, zero, min_max, **opt_params)
    w_q = np.clip(np.round(w * scale + zero), min_max[0], min_max[1])
    return HqqResult(w_q, scale, zero, 0, [])


def dequantize(res: HqqResult, shape: tuple[int, ...]) -> np.ndarray:
    """hqq's dequantization, ``(W_q - zero) / scale``, in the original shape."""
    return ((res.w_q - res.zero) / res.scale).reshape(shape)

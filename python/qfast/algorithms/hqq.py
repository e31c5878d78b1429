"""HQQ (half-quadratic quantization): a min/max grid whose float zero points are refined by
a proximal solver, with no calibration data."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import _qfast
from .._checks import (
    as_bool,
    as_float,
    check_at_least,
    check_bits,
    check_group_divides,
    check_positive,
    float32_input,
)
from ..tensor.qtensor import QTensor, param_shape

# hqq's early stopping compares against this before the first iteration (a float the first
# error is expected to beat; a tensor whose mean error is larger stops after one iteration).
_FIRST_BEST_ERROR = 1e4

# Relative gap under which two errors may compare differently in float32 than in float64: a
# float32 pairwise sum of n values is within about log2(n) * 2^-24 of the true sum (1.5e-6
# at n = 2^24); this is ten times that.
_NEAR_TIE = 1.5e-5


def _weights(w: Any) -> np.ndarray:
    """``w`` as a C-contiguous float32 array of at least one dimension and one value."""
    arr = float32_input(w, "W")
    if arr.ndim == 0:
        raise ValueError("hqq needs an array of at least one dimension, got a scalar")
    if arr.size == 0:
        raise ValueError(f"hqq needs at least one weight, got shape {arr.shape}")
    return arr


def hqq(
    W: Any,
    bits: int = 4,
    group_size: int | None = 64,
    *,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    iters: int = 20,
    early_stop: bool = True,
    optimize: bool = True,
    round_zero: bool = False,
    progress: Callable[[int, int], Any] | None = None,
) -> QTensor:
    """Quantizes weights with HQQ (Badri & Shaji, 2023): asymmetric codes in groups along the
    last axis, each group's float zero point fitted by a proximal solver of
    ``min ||W - dequantize(W)||_p^p`` (``p = lp_norm < 1`` is robust to outliers). No
    calibration data.

    This is mobiusml/hqq's ``Quantizer.quantize(W, nbits=bits, group_size=group_size,
    axis=1, optimize=optimize, round_zero=round_zero)`` with
    ``optimize_weights_proximal_legacy``, computed in float32 as hqq does on a CPU:

    - per group, ``scale = min((2**bits - 1) / (max - min), 2e4)`` (codes per unit: hqq's
      scale is the inverse of the step; a constant group gets 2e4) and
      ``zero = -min * scale``;
    - then up to ``iters`` iterations of ``W_q = clip(round(W * scale + zero), 0,
      2**bits - 1)``, ``W_r = (W_q - zero) / scale``, ``W_e = shrink_p(W - W_r, beta)``,
      ``zero = mean over the group of (W_q - (W - W_e) * scale)``, ``beta *= kappa``; the
      scale stays fixed. With ``early_stop``, the loop ends at the first iteration whose
      ``mean |W - W_r|`` over the whole tensor does not improve on the best so far (that
      iteration's zero update is kept, as hqq keeps it).

    The defaults are hqq's for its 4-bit, group-64 setting: ``lp_norm=0.7``, ``beta=10``,
    ``kappa=1.01``, ``iters=20``, early stopping on, unrounded zero points.

    Args:
        W: float32, float64, float16 or bfloat16 (ml_dtypes) weights, ``[out, in]`` (any
            strides; converted to float32). Groups run along the last axis; a 1-D array is
            one row, and an array of more dimensions is rows over all but the last axis.
        bits: code width, 2 to 8 (the widths a :class:`QTensor` stores).
        group_size: consecutive values per group along the last axis, which it must divide;
            ``None`` for one group per row.
        lp_norm: the ``p`` of the error norm, in (0, 1]; 1 is plain soft thresholding.
        beta: the initial penalty weight of the half-quadratic splitting (> 0).
        kappa: ``beta``'s growth per iteration (> 0; hqq uses > 1).
        iters: the most solver iterations (0 runs none).
        early_stop: stop when the error stops improving (hqq always does); ``False`` runs
            all ``iters``.
        optimize: run the solver; ``False`` gives hqq's plain min/max rounding.
        round_zero: round the initial zero points to integers (the solver's are floats).
        progress: called as ``progress(done, iters)`` after each iteration, with the GIL
            held and no computation pending (an exception it raises aborts); the solver
            may stop before ``done == iters``.

    Returns:
        A :class:`QTensor` of unsigned codes in ``[0, 2**bits - 1]`` (4- and 2-bit codes
        packed), ``scale = 1 / hqq_scale`` (float32, the step), and float32 ``zero_point =
        hqq_zero``, so that ``dequantize() == (q - zero) / hqq_scale`` up to float32
        rounding. ``meta`` holds ``method="hqq"``, the solver's parameters, ``iters_run`` and
        ``error`` (``mean |W - dequantize(W)|`` of the codes returned, hqq's arithmetic).

    Raises:
        ValueError: non-finite weights (the message names the first position), an empty or
            0-d array, a group size that does not divide the last axis, bad parameters, or
            a group range too wide for float32.
        TypeError: non-float weights.
    """
    arr = _weights(W)
    shape = tuple(arr.shape)
    bits = check_bits(bits)
    gs = shape[-1] if group_size is None else check_group_divides(group_size, shape[-1])
    lp_norm = as_float(lp_norm, "lp_norm")
    if not 0 < lp_norm <= 1:
        raise ValueError(f"lp_norm must be in (0, 1], got {lp_norm!r}")
    beta0, kappa = check_positive(beta, "beta"), check_positive(kappa, "kappa")
    iters = check_at_least(iters, "iters", 0)
    early_stop = as_bool(early_stop, "early_stop")
    optimize = as_bool(optimize, "optimize")
    round_zero = as_bool(round_zero, "round_zero")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable as progress(done, total), got {progress!r}")

    flat = arr.reshape(-1)
    scale, zero = _qfast.hqq_init(flat, list(shape), gs, bits, round_zero)
    iters_run = 0
    if optimize:
        zero, iters_run = _solve(
            flat, gs, bits, scale, zero, lp_norm, beta0, kappa, iters, early_stop, progress
        )
    codes, err_sum = _qfast.hqq_codes(flat, gs, bits, scale, zero)

    pshape = param_shape(shape, None, gs)
    meta = {
        "method": "hqq",
        "lp_norm": lp_norm,
        "beta": beta0,
        "kappa": kappa,
        "iters": iters,
        "early_stop": early_stop,
        "optimize": optimize,
        "round_zero": round_zero,
        "iters_run": iters_run,
        "error": err_sum / flat.size,
    }
    return QTensor.from_codes(
        codes.reshape(shape),
        bits,
        False,
        (np.float32(1) / scale).reshape(pshape),
        zero.reshape(pshape),
        group_size=gs,
        meta=meta,
    )


def _solve(
    flat: np.ndarray,
    gs: int,
    bits: int,
    scale: np.ndarray,
    zero: np.ndarray,
    lp_norm: float,
    beta: float,
    kappa: float,
    iters: int,
    early_stop: bool,
    progress: Callable[[int, int], Any] | None,
) -> tuple[np.ndarray, int]:
    """hqq's proximal loop; each iteration runs in Rust with the GIL released. Returns the
    final zero points and the number of iterations run.

    Early stopping compares the float32 mean error of consecutive iterations. Each step's
    float64 sum decides where the two differ clearly; within float32 rounding of each other
    (near convergence), both are recomputed in NumPy's float32 summation order, as the NumPy
    transcription of hqq computes them (torch's order differs again at that level)."""
    n = flat.size
    best = _FIRST_BEST_ERROR
    previous = zero  # the zero points the best iteration quantized with
    done = 0
    for done in range(1, iters + 1):
        new_zero, err_sum = _qfast.hqq_step(flat, gs, bits, scale, zero, beta, lp_norm)
        beta *= kappa
        if progress is not None:
            progress(done, iters)
        if early_stop:
            error = err_sum / n
            if abs(error - best) <= _NEAR_TIE * best:
                error = _qfast.hqq_error(flat, gs, bits, scale, zero)
                if done > 1:
                    best = _qfast.hqq_error(flat, gs, bits, scale, previous)
            if not error < best:
                return new_zero, done
            best = error
        previous, zero = zero, new_zero
    return zero, done

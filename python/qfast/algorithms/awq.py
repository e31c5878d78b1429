"""AWQ: activation-aware weight quantization (Lin et al., MLSys 2024).

Follows AutoAWQ (casper-hansen/AutoAWQ, ``awq/quantize/quantizer.py``: ``_search_best_scale``,
``_compute_best_scale``, ``_compute_best_clip``, ``pseudo_quantize_tensor``), the successor of
mit-han-lab/llm-awq (``auto_scale.py``, ``auto_clip.py``), in float32 NumPy. The matrix
products go through NumPy's BLAS; the per-group quantize -> dequantize and the clip search's
per-group errors run in qfast's Rust core (``_qfast.awq_*``), multi-threaded with results
independent of the thread count.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _qfast
from .._checks import (
    as_bool,
    as_float,
    check_at_least,
    check_bits,
    check_finite,
    check_group_divides,
    float32_input,
)
from ..tensor.qtensor import (
    QTensor,
    as_scale_dtype,
    code_range,
    round_scale,
    scale_dtype_name,
)

F32 = np.float32

# Fewer calibration tokens than this: x_mean and the loss are too noisy to rank the grid.
MIN_RELIABLE_TOKENS = 16


@dataclass(frozen=True)
class AWQResult:
    """What :func:`awq` found.

    Attributes:
        qweights: one :class:`QTensor` per weight (in the order given), of ``clip(W * scales)``
            quantized on AutoAWQ's grid, ``group_size`` along the input axis.
        scales: float32 ``[in]``. Fold them into the operation that produces the layer input:
            divide its output (the input of these weights) by ``scales``; the quantized
            weights already hold ``W * scales``.
        ratio: the best grid ratio ``i / n_grid`` (0.0 is plain round-to-nearest).
        loss: its loss, ``mean((X @ W.T - X @ Wq.T) ** 2)`` over every output of the group.
        losses: float64 ``[n_grid]``, the loss of every ratio.
        clip_max: per weight, the float32 ``[out, n_groups]`` clipping bound of each (row,
            group) of the scaled weight; ``None`` when ``clip=False``.
    """

    qweights: tuple[QTensor, ...]
    scales: np.ndarray
    ratio: float
    loss: float
    losses: np.ndarray
    clip_max: tuple[np.ndarray, ...] | None


def _weights(W: Any) -> list[np.ndarray]:
    single = isinstance(W, QTensor) or (isinstance(W, np.ndarray) and W.ndim == 2)
    items = [W] if single else list(W)
    if not items:
        raise ValueError("W is empty; pass one [out, in] weight or a sequence of them")
    out = []
    for k, w in enumerate(items):
        name = "W" if len(items) == 1 else f"W[{k}]"
        arr = float32_input(w, name)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D [out, in] weight, got shape {arr.shape}")
        check_finite(arr, name)
        out.append(arr)
    if len({w.shape[1] for w in out}) > 1:
        shapes = [w.shape for w in out]
        raise ValueError(f"the weights of a group must share their input size, got {shapes}")
    return out


def _inputs(X: Any, n_in: int) -> np.ndarray:
    x = float32_input(X, "X")
    if x.ndim < 1 or x.shape[-1] != n_in:
        raise ValueError(
            f"X has shape {x.shape} but the weights have input size {n_in}; "
            f"X must be [..., {n_in}] (the inputs of the weights, [tokens, in])"
        )
    x = x.reshape(-1, n_in)
    if x.shape[0] == 0:
        raise ValueError("X has no tokens; pass calibration inputs of shape [tokens, in]")
    check_finite(x, "X")
    if x.shape[0] < MIN_RELIABLE_TOKENS:
        warnings.warn(
            f"X has only {x.shape[0]} tokens; AWQ's search needs a few hundred "
            f"(fewer than {MIN_RELIABLE_TOKENS} makes it unreliable)",
            RuntimeWarning,
            stacklevel=3,
        )
    return x


def _w_mean(weights: list[np.ndarray], group_size: int) -> np.ndarray:
    """AutoAWQ's ``w_mean``: each group's |W| normalised by its maximum, averaged over the
    output rows of every weight of the group."""
    w = np.concatenate(weights, axis=0)
    g = np.abs(w.reshape(-1, group_size))
    w_scale = g / (g.max(axis=1, keepdims=True) + F32(1e-6))
    return w_scale.reshape(w.shape).mean(axis=0, dtype=F32)


def _grid_scales(x_mean: np.ndarray, w_mean: np.ndarray, ratio: F32, duo: bool) -> np.ndarray:
    """The per-channel scales of one grid ratio (AutoAWQ; llm-awq without ``duo_scaling``)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if duo:
            s = np.power(x_mean, ratio) / (np.power(w_mean, F32(1) - ratio) + F32(1e-4))
        else:
            s = np.power(x_mean, ratio)
        s = np.maximum(s, F32(1e-4))
        s = s / np.sqrt(s.max() * s.min())
    s[~np.isfinite(s)] = 1  # the reference sets inf and nan scales to 1
    return s.astype(F32, copy=False)


def _scale_loss(
    x: np.ndarray,
    weights: list[np.ndarray],
    outputs: list[np.ndarray],
    scales: np.ndarray,
    kernel: Callable[[np.ndarray, np.ndarray | None, np.ndarray], None],
    buffers: list[tuple[np.ndarray, np.ndarray]],
) -> float:
    """Mean squared difference over all outputs between ``X @ W.T`` and ``X @ Wq.T`` with
    ``Wq = pq(W * scales) / scales`` for every weight of the group."""
    total, count = 0.0, 0
    for w, org, (wq, out) in zip(weights, outputs, buffers):
        kernel(w, scales, wq)
        np.matmul(x, wq.T, out=out)
        out -= org
        out *= out
        total += float(out.sum())
        count += out.size
    return total / count


def awq(
    W: Any,
    X: Any,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    *,
    n_grid: int = 20,
    duo_scaling: bool = True,
    clip: bool = True,
    max_shrink: float = 0.5,
    n_sample_tokens: int = 512,
    search_scales: bool = True,
    progress: Callable[[int, int], Any] | None = None,
    scale_dtype: Any = np.float32,
) -> AWQResult:
    """Activation-aware weight quantization of one linear layer or of a group sharing X.

    Searches per-input-channel ``scales`` so that quantizing ``W * scales`` (with the layer
    input divided by ``scales``) minimises the output error on calibration inputs, then
    clips each (row, group) of the scaled weight to the range with the least output error
    and quantizes it. Follows AutoAWQ's ``_search_best_scale`` / ``_compute_best_scale`` /
    ``_compute_best_clip`` / ``pseudo_quantize_tensor`` (duo scaling, ``w_mean``, grid of
    ``n_grid`` ratios); ``duo_scaling=False`` is llm-awq's original ``x_mean ** ratio``.

    Args:
        W: a float ``[out, in]`` weight, or a sequence of them that share the input ``X``
            (q/k/v, gate/up: AutoAWQ's ``linears2scale``). A group gets one common
            ``scales``, searched on the concatenated outputs; each weight is clipped and
            quantized on its own.
        X: float calibration inputs ``[tokens, in]`` (or ``[..., in]``), the inputs of W
            before any scaling. A few hundred tokens or more; fewer than 16 warns.
        bits: code width, 2 to 8 (default 4).
        group_size: one grid per this many consecutive input channels of a row (default
            128); it must divide ``in``. ``None``: one group per row.
        symmetric: signed codes, ``scale = max|w| / (2^(bits-1) - 1)`` (AutoAWQ's
            ``zero_point=False``); default False: unsigned codes with an int32 zero point
            (``zero_point=True``, AutoAWQ's default).
        n_grid: grid size of both searches (default 20, as both references): the scale
            ratios are ``i / n_grid`` for ``i`` in ``0..n_grid``.
        duo_scaling: ``scales = x_mean**r / (w_mean**(1-r) + 1e-4)`` (AutoAWQ's default,
            True) or ``x_mean**r`` (llm-awq).
        clip: run the clip search (default True). AutoAWQ skips it for the query and key
            projections (their errors pass through the q.k product): pass ``clip=False``
            for those, e.g. for a q/k/v group.
        max_shrink: the clip search tries ``max_val = amax * (1 - i / n_grid)`` for ``i`` in
            ``0..int(max_shrink * n_grid)`` (default 0.5, as both references).
        n_sample_tokens: the clip search uses every ``max(1, tokens // n_sample_tokens)``-th
            token (default 512, as both references).
        search_scales: search the scales (default True); False keeps them all 1 (where
            nothing can absorb scales, AWQ's clip search alone: ``ratio`` 0, ``losses`` the
            one loss of unscaled weights).
        progress: called as ``progress(done, total)`` after each grid ratio and after each
            weight's clip search (``total = n_grid + len(W)`` with clipping, else ``n_grid``).
        scale_dtype: np.float32 (default), np.float16 (as AWQ checkpoints store scales, the
            way AutoAWQ's export rounds them) or ml_dtypes.bfloat16: the final grid's scales
            are rounded to it and the codes computed against the rounded scales (the zero
            points stay those of the float32 grid). The searches run in float32.

    Returns:
        An :class:`AWQResult`: the quantized weights, ``scales`` (divide the layer input by
        them), the best ratio, its loss, every ratio's loss and the clipping bounds.

    Raises:
        ValueError: non-finite values (naming the array and position), mismatched shapes, no
            tokens, a ``group_size`` that does not divide ``in``, bad ``bits``/``n_grid``.
        TypeError: integer (non-float) W or X.
    """
    bits = check_bits(bits)
    sdtype = scale_dtype_name(scale_dtype)
    sym = as_bool(symmetric, "symmetric")
    duo_scaling = as_bool(duo_scaling, "duo_scaling")
    clip = as_bool(clip, "clip")
    search_scales = as_bool(search_scales, "search_scales")
    n_grid = check_at_least(n_grid, "n_grid", 1)
    n_sample_tokens = check_at_least(n_sample_tokens, "n_sample_tokens", 1)
    max_shrink = as_float(max_shrink, "max_shrink")
    n_shrink = int(max_shrink * n_grid)
    if clip and n_shrink < 1:
        raise ValueError(
            f"max_shrink={max_shrink} with n_grid={n_grid} leaves no clip step; "
            "pass max_shrink >= 1 / n_grid or clip=False"
        )
    weights = _weights(W)
    n_in = weights[0].shape[1]
    x = _inputs(X, n_in)
    g = n_in if group_size is None else check_group_divides(group_size, n_in)
    n_scale = n_grid if search_scales else 1
    total = n_scale + (len(weights) if clip else 0)

    def kernel(w: np.ndarray, scales: np.ndarray | None, out: np.ndarray) -> None:
        _qfast.awq_pseudo_quantize(w, g, bits, sym, scales, out)

    ratio, scales, losses = _search_scales(
        x, weights, g, n_scale, duo_scaling and search_scales, kernel, (progress, total)
    )
    scaled = [w * scales for w in weights]
    clip_max = None
    if clip:
        step = max(1, x.shape[0] // n_sample_tokens)
        xs = np.ascontiguousarray(x[::step] / scales)
        clip_max = []
        for k, w in enumerate(scaled):
            best = _qfast.awq_clip_search(w, xs, g, bits, sym, n_grid, n_shrink)
            best = best.reshape(w.shape[0], -1)
            bound = np.repeat(best, g, axis=1)
            np.clip(w, -bound, bound, out=w)
            clip_max.append(best)
            if progress is not None:
                progress(n_scale + k + 1, total)
    qweights = tuple(_qtensor(w, g, bits, sym, group_size is None, sdtype) for w in scaled)
    best_i = int(np.argmin(losses))  # first minimum, as the reference's strict `<`
    return AWQResult(
        qweights=qweights,
        scales=scales,
        ratio=float(ratio),
        loss=float(losses[best_i]),
        losses=losses,
        clip_max=None if clip_max is None else tuple(clip_max),
    )


def _search_scales(
    x: np.ndarray,
    weights: list[np.ndarray],
    g: int,
    n_grid: int,
    duo: bool,
    kernel: Callable[[np.ndarray, np.ndarray | None, np.ndarray], None],
    report: tuple[Callable[[int, int], Any] | None, int],
) -> tuple[F32, np.ndarray, np.ndarray]:
    """AutoAWQ's ``_compute_best_scale``: the best ratio, its scales and every ratio's loss."""
    x_mean = np.abs(x).mean(axis=0, dtype=F32)
    w_mean = _w_mean(weights, g)
    outputs = [x @ w.T for w in weights]
    buffers = [(np.empty_like(w), np.empty_like(o)) for w, o in zip(weights, outputs)]
    progress, total = report
    losses = np.empty(n_grid)
    best: tuple[float, F32, np.ndarray] | None = None
    for i in range(n_grid):
        ratio = F32(i) / F32(n_grid)
        scales = _grid_scales(x_mean, w_mean, ratio, duo)
        losses[i] = _scale_loss(x, weights, outputs, scales, kernel, buffers)
        if best is None or losses[i] < best[0]:
            best = (losses[i], ratio, scales)
        if progress is not None:
            progress(i + 1, total)
    assert best is not None
    return best[1], best[2], losses


def _qtensor(
    w: np.ndarray, g: int, bits: int, sym: bool, per_row: bool, sdtype: str = "float32"
) -> QTensor:
    """`w` quantized on AutoAWQ's grid as a QTensor (codes packed densely below 8 bits), its
    scales rounded to ``sdtype`` and the codes computed against them."""
    rows, n = w.shape
    codes, scale, zero = _qfast.awq_quantize(w, g, bits, sym)
    codes = codes.reshape(rows, n)  # signed codes as two's complement bytes
    shape = (rows, n // g)
    scale = scale.reshape(shape)
    if sdtype != "float32":
        scale = round_scale(scale, sdtype)
        if not np.isfinite(scale).all():
            raise ValueError(
                f"the weights' range needs scales larger than {sdtype} can hold; pass "
                "scale_dtype=np.float32 (or bfloat16)"
            )
        lo, hi = code_range(bits, sym)
        q = np.rint(w.reshape(rows, n // g, g) / scale[:, :, None])
        if not sym:
            q += zero.reshape(shape)[:, :, None]
        codes = (
            np.clip(q, lo, hi).astype(np.int8 if sym else np.uint8).view(np.uint8).reshape(rows, n)
        )
        scale = as_scale_dtype(scale, sdtype)
    return QTensor.from_codes(
        codes.view(np.int8) if sym else codes,
        bits,
        sym,
        scale,
        None if sym else zero.reshape(shape),
        group_size=n if per_row else g,
        meta={"method": "awq"},
    )

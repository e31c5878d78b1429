"""Layer output error of qfast's weight quantizers on a model's real activations.

Every linear layer of the model is quantized by each method from inputs captured on
calibration text, and measured on inputs captured on held-out text (disjoint articles):
``||X W^T - X Q^T||_F^2`` over the held-out rows ``X`` (for AWQ, whose scales fold into the
layer input, ``||X W^T - (X / s) Q^T||^2``). ``python scripts/layer_error_table.py`` prints
the table the README shows.

Methods, all at the same bits and group size, asymmetric:

- ``rtn``: round to nearest on the GPTQ reference grid (the baseline);
- ``gptq``: GPTQ with ``act_order``, on the same grid;
- ``awq``: AWQ's scale and clip search (clipping skipped for attention query / key, as
  AutoAWQ does), on AWQ's grid;
- ``hqq``: HQQ (no calibration data).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

F32 = np.float32
METHODS = ("rtn", "gptq", "awq", "hqq")


@dataclass(frozen=True)
class LayerError:
    """One layer's held-out output error per method (``errors[method]``)."""

    name: str
    shape: tuple[int, int]
    errors: dict[str, float]

    def ratio(self, method: str, baseline: str = "rtn") -> float:
        return self.errors[method] / self.errors[baseline]


def _error(X: np.ndarray, W: np.ndarray, deq: np.ndarray, scales: np.ndarray | None) -> float:
    x = X.astype(np.float64)
    want = x @ W.astype(np.float64).T
    xq = x if scales is None else x / scales.astype(np.float64)
    return float(np.sum((want - xq @ deq.astype(np.float64).T) ** 2))


def _skips_clip(name: str) -> bool:
    return name.endswith(("attention.self.query", "attention.self.key"))


def quantize_layer(
    method: str, W: np.ndarray, Xc: np.ndarray, H: Any, name: str, bits: int, group_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """``method``'s dequantized weight and, for AWQ, the input scales."""
    from ..algorithms.awq import awq
    from ..algorithms.gptq import gptq
    from ..algorithms.hqq import hqq
    from ..algorithms.rtn import rtn

    if method == "rtn":
        return rtn(W, bits, group_size, symmetric=False).dequantize(), None
    if method == "gptq":
        q = gptq(W, hessian=H, bits=bits, group_size=group_size, symmetric=False)
        return q.dequantize(), None
    if method == "awq":
        r = awq(W, Xc, bits, group_size, symmetric=False, clip=not _skips_clip(name))
        return r.qweights[0].dequantize(), r.scales
    if method == "hqq":
        return hqq(W, bits, group_size).dequantize(), None
    raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")


def layer_errors(
    weights: Mapping[str, np.ndarray],
    calibration: Mapping[str, np.ndarray],
    heldout: Mapping[str, np.ndarray],
    *,
    bits: int = 4,
    group_size: int = 64,
    methods: Sequence[str] = METHODS,
    progress: Callable[[str], Any] | None = None,
) -> list[LayerError]:
    """Each layer's held-out error per method.

    Args:
        weights: layer name -> float ``[out, in]``.
        calibration, heldout: layer name -> its inputs ``[tokens, in]`` (layers that read the
            same array share one Hessian).
        bits, group_size: the grid of every method.
        methods: a subset of :data:`METHODS`.
        progress: called with each layer's name before it is quantized.
    """
    from ..calibration.hessian import Hessian

    hessians: dict[int, Any] = {}
    out = []
    for name, W in weights.items():
        if progress is not None:
            progress(name)
        Xc, Xh = calibration[name], heldout[name]
        key = id(Xc)
        if key not in hessians:
            hessians[key] = Hessian(Xc.shape[1]).add(Xc)
        errors = {}
        for m in methods:
            deq, scales = quantize_layer(m, W, Xc, hessians[key], name, bits, group_size)
            errors[m] = _error(Xh, W, deq, scales)
        out.append(LayerError(name, (W.shape[0], W.shape[1]), errors))
    return out


def summary(rows: Sequence[LayerError], baseline: str = "rtn") -> dict[str, dict[str, float]]:
    """Per method: the median over layers of the error ratio to ``baseline``, the ratio of
    the median errors, and the share of layers where the method beats the baseline."""
    methods = list(rows[0].errors)
    out = {}
    for m in methods:
        ratios = np.array([r.ratio(m, baseline) for r in rows])
        med = np.median([r.errors[m] for r in rows]) / np.median([r.errors[baseline] for r in rows])
        out[m] = {
            "median_ratio": float(np.median(ratios)),
            "ratio_of_medians": float(med),
            "better_share": float(np.mean(ratios < 1)),
        }
    return out


def markdown(rows: Sequence[LayerError], caption: str = "") -> str:
    """The per-method summary as a Markdown table."""
    s = summary(rows)
    lines = [
        caption,
        "",
        "| method | median of error / RTN | median error / RTN's | layers better than RTN |",
        "|:--|--:|--:|--:|",
    ]
    for m, v in s.items():
        lines.append(
            f"| {m} | {v['median_ratio']:.3f} | {v['ratio_of_medians']:.3f} | "
            f"{round(v['better_share'] * len(rows))}/{len(rows)} |"
        )
    return "\n".join(lines).strip() + "\n"


def minilm_layer_errors(
    calibration_paragraphs: int = 64,
    heldout_paragraphs: int = 64,
    *,
    bits: int = 4,
    group_size: int = 64,
    methods: Sequence[str] = METHODS,
    progress: Callable[[str], Any] | None = None,
) -> list[LayerError]:
    """:func:`layer_errors` over all-MiniLM-L6-v2's 36 linear layers, with inputs captured on
    ``calibration_paragraphs`` / ``heldout_paragraphs`` Wikipedia paragraphs."""
    from ..calibration.text import calibration_paragraphs as calib_text
    from ..calibration.text import heldout_paragraphs as heldout_text
    from .arch.bert import Bert

    bert = Bert.load()
    calib = bert.capture_linear_inputs(calib_text(calibration_paragraphs))
    held = bert.capture_linear_inputs(heldout_text(heldout_paragraphs))
    weights = {n: np.asarray(bert.linear_weight(n), F32) for n in bert.linear_names()}
    return layer_errors(
        weights,
        calib,
        held,
        bits=bits,
        group_size=group_size,
        methods=methods,
        progress=progress,
    )

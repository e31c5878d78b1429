"""The layer Hessian GPTQ needs, ``H = 2/n Σ x xᵀ`` over calibration inputs, batch by batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_at_least, check_finite, float32_input

F32 = np.float32


class Hessian:
    """Accumulates ``H = (2 / n) Σ x xᵀ`` over the rows ``x`` of calibration batches.

    Stream the calibration data through :meth:`add` one batch at a time (a layer's inputs
    ``[tokens, in_features]``, or ``[..., in_features]``); pass the object to
    :func:`qfast.gptq` as ``hessian=``. Layers that read the same input (q/k/v, gate/up) can
    share one: :func:`qfast.gptq` never modifies it.

    The sum ``Σ x xᵀ`` is a float32 BLAS product per batch (``X.T @ X``, which NumPy runs
    as a symmetric rank-k update), added to a float64 total, so long calibration runs do not
    lose precision; the reference rescales a float32 running mean instead, which is the
    same matrix up to rounding.

    Example:
        >>> H = qfast.Hessian(4096)
        >>> for batch in batches:
        ...     H.add(batch)
        >>> q = qfast.gptq(W_q, hessian=H)
        >>> k = qfast.gptq(W_k, hessian=H)
    """

    def __init__(self, in_features: int) -> None:
        n = check_at_least(in_features, "in_features", 1)
        self.in_features = n
        self._sum = np.zeros((n, n), np.float64)
        self.n_samples = 0

    def add(self, x: Any) -> Hessian:
        """Adds a batch of inputs ``x`` (``[..., in_features]``, any float dtype); returns self."""
        arr = float32_input(x, "calibration inputs")
        if arr.ndim == 0 or arr.shape[-1] != self.in_features:
            raise ValueError(
                f"calibration inputs have shape {arr.shape}; the last axis must be "
                f"in_features={self.in_features} (the layer's input width)"
            )
        rows = arr.reshape(-1, self.in_features)
        if rows.shape[0] == 0:
            return self
        check_finite(rows, "calibration inputs")
        with np.errstate(over="ignore"):  # too large for float32: gptq says so, by name
            self._sum += rows.T @ rows
        self.n_samples += rows.shape[0]
        return self

    def matrix(self) -> np.ndarray:
        """``H`` as float32 ``[in_features, in_features]``."""
        if self.n_samples == 0:
            raise ValueError("the Hessian has no samples yet; add() calibration inputs first")
        with np.errstate(over="ignore"):
            return (self._sum * (2.0 / self.n_samples)).astype(F32)

    def __repr__(self) -> str:
        return f"Hessian(in_features={self.in_features}, n_samples={self.n_samples})"

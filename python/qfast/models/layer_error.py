"""Kept for user code that imports ``qfast.models.layer_error``: the per-layer error tables are
:mod:`qfast.model.layer_error`."""

from __future__ import annotations

from ..model.layer_error import (
    METHODS,
    LayerError,
    layer_errors,
    markdown,
    minilm_layer_errors,
    quantize_layer,
    summary,
)

__all__ = [
    "METHODS",
    "LayerError",
    "layer_errors",
    "markdown",
    "minilm_layer_errors",
    "quantize_layer",
    "summary",
]

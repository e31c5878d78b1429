"""The algorithms floor: weight quantizers, a weight matrix in and a QTensor out, by name.

Each quantizer is a function ``quantizer(W, ...)`` of a weight ``[out, in]`` (and whatever it
learns from: ``gptq`` and ``awq`` take calibration inputs ``X``); its module is named after it
(``qfast.algorithms.gptq``). The registry maps names to these functions so that callers (the
CLI, a recipe) can choose one by name::

    quantizer = qfast.algorithms.get("gptq")
    q = quantizer(W, X, bits=4, group_size=128)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import awq as _awq
from . import gptq as _gptq
from . import hqq as _hqq
from . import rtn as _rtn

#: A weight quantizer: ``quantizer(W, ...) -> QTensor`` (AWQ: an :class:`qfast.AWQResult`).
Quantizer = Callable[..., Any]

__all__ = ["Quantizer", "get", "names", "register"]

_REGISTRY: dict[str, Quantizer] = {
    "rtn": _rtn.rtn,
    "gptq": _gptq.gptq,
    "awq": _awq.awq,
    "hqq": _hqq.hqq,
}


def _as_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"an algorithm's name must be a string, got {name!r}")
    return name.lower()


def names() -> list[str]:
    """The registered algorithms' names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> Quantizer:
    """The quantizer registered as ``name`` (case-insensitive)."""
    key = _as_name(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; pass one of {', '.join(names())}")
    return _REGISTRY[key]


def register(name: str, quantizer: Quantizer, *, replace: bool = False) -> None:
    """Registers ``quantizer`` as ``name``; an existing name needs ``replace=True``."""
    key = _as_name(name)
    if not key:
        raise ValueError("an algorithm's name must not be empty")
    if not callable(quantizer):
        raise TypeError(f"quantizer must be callable, got {type(quantizer).__name__}")
    if key in _REGISTRY and not replace:
        raise ValueError(
            f"algorithm {key!r} is already registered; pass replace=True to replace it"
        )
    _REGISTRY[key] = quantizer

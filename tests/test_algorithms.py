"""The algorithms registry (``qfast.algorithms``): name -> weight quantizer."""

from __future__ import annotations

import numpy as np
import pytest

import qfast
import qfast.algorithms as algorithms


def test_names_are_the_public_quantizers() -> None:
    assert algorithms.names() == ["awq", "gptq", "hqq", "rtn"]
    for name in algorithms.names():
        assert algorithms.get(name) is getattr(qfast, name)
    assert algorithms.get("GPTQ") is qfast.gptq


def test_a_quantizer_by_name_quantizes() -> None:
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    q = algorithms.get("rtn")(w, bits=4, group_size=32)
    want = qfast.rtn(w, bits=4, group_size=32)
    assert np.array_equal(q.dequantize(), want.dequantize())


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown algorithm 'gtpq'; pass one of awq, gptq, hqq, rtn"
    ):
        algorithms.get("gtpq")
    with pytest.raises(TypeError, match="must be a string"):
        algorithms.get(4)  # type: ignore[arg-type]


def test_register_and_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(algorithms, "_REGISTRY", dict(algorithms._REGISTRY))

    def mine(w, **kwargs):  # type: ignore[no-untyped-def]
        return qfast.rtn(w, bits=8, group_size=None)

    algorithms.register("Mine", mine)
    assert algorithms.get("mine") is mine and "mine" in algorithms.names()
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        algorithms.register("rtn", mine)
    algorithms.register("rtn", mine, replace=True)
    assert algorithms.get("rtn") is mine
    with pytest.raises(TypeError, match="must be callable"):
        algorithms.register("x", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        algorithms.register("", mine)

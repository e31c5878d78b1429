"""The issue's real-data bar: on all-MiniLM-L6-v2's 36 linear layers, calibrated on Wikipedia
paragraphs and measured on paragraphs of other articles, 4-bit asymmetric group 64: GPTQ
(act_order) at most 0.7x RTN's held-out output error, AWQ and HQQ at most RTN's (medians over
the layers). Fewer paragraphs than the README's table (scripts/layer_error_table.py), to keep
the suite quick."""

from __future__ import annotations

import numpy as np
import pytest

from qfast.model import layer_error as le

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def rows() -> list[le.LayerError]:
    return le.minilm_layer_errors(24, 24)


def test_minilm_layers_meet_the_bar(rows: list[le.LayerError]) -> None:
    assert len(rows) == 36
    s = le.summary(rows)
    assert s["gptq"]["median_ratio"] <= 0.7, s
    assert s["awq"]["median_ratio"] <= 1.0, s
    assert s["hqq"]["median_ratio"] <= 1.0, s
    # and the error is the layer's: a method that returned W itself would score 0
    assert all(r.errors["rtn"] > 0 for r in rows)
    assert "| gptq |" in le.markdown(rows)


def test_error_definition() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 8)).astype(np.float32)
    W = rng.standard_normal((4, 8)).astype(np.float32)
    assert le._error(X, W, W, None) == 0
    # AWQ's folding: (X / s) (W s)^T == X W^T
    s = rng.uniform(0.5, 2, 8).astype(np.float32)
    assert le._error(X, W, W * s, s) < 1e-6
    d = W.copy()
    d[1, 2] += 1
    assert le._error(X, W, d, None) == pytest.approx(float(np.sum(X[:, 2].astype(float) ** 2)))
    with pytest.raises(ValueError, match="unknown method"):
        le.quantize_layer("nope", W, X, None, "x", 4, 8)

"""The oracle of qfast's GGUF quantizers (tests/ggml_oracle.py: ggml-quants.c of the pinned
llama.cpp, compiled as a library) writes the bytes llama-quantize itself writes: every tensor of
SmolLM2 that ``llama-quantize`` turns into Q4_0 / Q8_0 (from the F32 GGUF), quantized by the
library from the same float32 values, is the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ggml_oracle import ggml_quantize, ggml_quants  # noqa: F401
from llamacpp import llamacpp_bin, requantize, smollm2_f32  # noqa: F401

import qfast


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_oracle_library_is_llama_quantize(llamacpp_bin: Path, ggml_quants, qtype: str) -> None:  # noqa: F811
    f32 = qfast.gguf.load(smollm2_f32(llamacpp_bin))
    out = qfast.gguf.load(requantize(llamacpp_bin, f32.path, qtype))
    checked = 0
    for name, t in out.tensors.items():
        if t.type != qtype:
            continue
        x = np.asarray(f32.tensors[name].data, np.float32).reshape(-1, t.shape[-1])
        got = ggml_quantize(ggml_quants, x, qtype)
        np.testing.assert_array_equal(got.reshape(-1), np.asarray(t.data).reshape(-1), name)
        checked += 1
    assert checked >= 7 * 30  # every linear of the 30 blocks

"""ggml's own quantizers, the oracle of qfast's GGUF quantizers.

``scripts/llama_cpp.py quants`` compiles ``ggml-quants.c`` of the pinned llama.cpp (0.3.36, the
sdist the llama.cpp harness builds from) into a shared library, as llama-quantize's build
compiles it (``-O3``, ``-ffp-contract=off``), with a small shim for the three ggml symbols it
needs (row sizes, an abort); cached. This module calls it with ctypes:

- :func:`ggml_quants`: a session fixture giving the loaded library (use it from a test module
  with ``from ggml_oracle import ggml_quants  # noqa: F401``);
- :func:`ggml_quantize`: ``quantize_<type>(src, dst, nrows, n_per_row, quant_weights)``, the
  function ``llama-quantize`` runs on each tensor (with ``--imatrix``, ``quant_weights`` is the
  tensor's importance matrix), as an array of row bytes.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llamacpp import script

# type name -> (ggml's C function, values per block, bytes per block)
FUNCTIONS = {
    "Q4_0": ("quantize_q4_0", 32, 18),
    "Q4_1": ("quantize_q4_1", 32, 20),
    "Q5_0": ("quantize_q5_0", 32, 22),
    "Q5_1": ("quantize_q5_1", 32, 24),
    "Q8_0": ("quantize_q8_0", 32, 34),
    "Q2_K": ("quantize_q2_K", 256, 84),
    "Q3_K": ("quantize_q3_K", 256, 110),
    "Q4_K": ("quantize_q4_K", 256, 144),
    "Q5_K": ("quantize_q5_K", 256, 176),
    "Q6_K": ("quantize_q6_K", 256, 210),
    "IQ4_NL": ("quantize_iq4_nl", 32, 18),
}


def load() -> ctypes.CDLL:
    """The library, built on first use (seconds; cached with the llama.cpp tools)."""
    mod = script()
    return ctypes.CDLL(str(Path(mod.build_quants())))


@pytest.fixture(scope="session")
def ggml_quants() -> ctypes.CDLL:
    if sys.platform == "win32":
        pytest.skip("ggml's quantizers are built with the llama.cpp harness (Linux, macOS)")
    mod = script()
    try:
        return load()
    except mod.BuildError as e:
        pytest.fail(f"ggml's quantizers could not be built: {e}")


def ggml_quantize(lib: Any, x: Any, type_name: str, imatrix: Any = None) -> np.ndarray:
    """ggml's bytes for ``x`` (float32 ``[rows, n_per_row]``) in ``type_name``, with the
    importance matrix ``imatrix`` (``n_per_row`` weights) when given: uint8
    ``[rows, n_per_row / block * bytes]``."""
    name, block, nbytes = FUNCTIONS[type_name]
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim == 1:
        x = x[None]
    rows, n = x.shape
    assert n % block == 0, (type_name, n)
    out = np.zeros((rows, n // block * nbytes), np.uint8)
    w = None if imatrix is None else np.ascontiguousarray(imatrix, np.float32)
    assert w is None or w.shape == (n,)
    f = getattr(lib, name)
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    size = f(x.ctypes.data, out.ctypes.data, rows, n, None if w is None else w.ctypes.data)
    assert size == out.size, (type_name, size, out.size)
    return out

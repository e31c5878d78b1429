"""GPTQ into a GGUF file: ``qfast quantize MODEL.gguf -o OUT.gguf --method gptq --format gguf
--type MIX``.

The tensors get llama.cpp's types for ``MIX`` (``qfast.gguf.tensor_types``); every block linear
(Q4_0 .. Q8_0, IQ4_NL, the K-quants) is quantized by :func:`qfast.gptq_gguf` (GPTQ's error
feedback inside ggml's grids, each block's grid ggml's importance-weighted search with the
Hessian's diagonal), true-sequentially:
block by block, and within a block group by group (q/k/v, o, gate/up, down), each group on its
input over all the calibration tokens as the already-quantized groups before it produce it. The
other tensors (the embedding / output) get ggml's quantizer, as
``llama-quantize`` (with the importance matrix when given). The file keeps the source's
metadata, tensor order and Q/K layout, so llama.cpp loads it unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..algorithms.gptq_gguf import GGUF_TYPES, gptq_gguf
from ..calibration.hessian import Hessian
from ..formats.gguf.blocks import dequantize, quantize
from ..formats.gguf.convert import FLOAT_TYPES, ConvertedSource
from ..formats.gguf.file import save_streamed
from ..formats.gguf.mixes import llama_order
from ..formats.gguf.requantize import (
    _QUANTIZATION_VERSION,
    FILE_TYPES,
    _weights_of,
    open_source,
    plan,
)
from .checkpoint import gguf_tensor_name, load_model

__all__ = ["gptq_to_gguf"]

Progress = Callable[[int, int, str], Any]


def gptq_to_gguf(
    source: str | os.PathLike[str] | Any,
    path: str | os.PathLike[str],
    mix: str,
    calibration: Any = None,
    *,
    samples: int = 128,
    seq_len: int = 512,
    imatrix: Any = None,
    damp: float = 0.01,
    act_order: bool = False,
    batch_tokens: int = 4096,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Writes the GGUF file ``source`` as ``mix`` at ``path``, its block linears by GPTQ.

    Args:
        source: a GGUF file of a Llama-family model (F32 / F16 / BF16, or quantized: its
            values are dequantized first), or a Hugging Face Llama checkpoint (folder or
            ``.safetensors``) or qfast model, read as ``convert_hf_to_gguf.py`` writes it.
        path: the file to write.
        mix: llama.cpp's type mix (``"Q4_0"``, ...).
        calibration: text or token ids, as ``qfast.quantize_model`` takes them (default:
            the calibration half of the Wikipedia sample); ``samples`` x ``seq_len`` tokens.
        imatrix: importance weights for the tensors ggml's quantizer writes (and the mix's
            importance-matrix rules), as ``qfast.gguf.requantize``.
        damp: GPTQ's damping.
        act_order: GPTQ's ``desc_act`` on static block grids (see :func:`qfast.gptq_gguf`).
        batch_tokens: tokens per forward batch (memory; the result does not depend on it
            beyond float rounding).
        overwrite: replace an existing ``path``.
        progress: called as ``progress(done, total, description)`` per block.

    Returns:
        Seconds spent: ``{"calibration", "gptq", "forward", "write", "total"}``.
    """
    from .quantize import _causal_windows

    t_start = time.perf_counter()
    out = Path(path)
    if out.exists() and not overwrite:
        raise FileExistsError(
            17, "already exists: pick a new file or pass overwrite=True", str(out)
        )
    if mix in FLOAT_TYPES:
        raise ValueError(
            f"{mix} is a float type; GPTQ into GGUF takes a quantized mix (Q4_0, Q4_K_M, ...): "
            f"for a plain conversion use qfast.gguf.requantize(source, path, {mix!r})"
        )
    # a GGUF file, or a Hugging Face checkpoint read as convert_hf_to_gguf.py writes it (its
    # model in llama.cpp's Q/K layout, so the rows below are the file's)
    src = open_source(source)
    types = plan(src, mix, has_imatrix=imatrix is not None)
    weights_of = _weights_of(imatrix)
    if isinstance(src, ConvertedSource):
        model = src.model
    else:
        model = load_model(src.path, compute="float")
    if model.arch != "llama":
        raise ValueError(f"GPTQ into GGUF runs Llama-family models, not {model.arch!r}")
    hf_to_gguf = {}
    for name in src.tensors:
        hf = gguf_tensor_name(name)
        if hf is not None:
            hf_to_gguf[hf] = name
    seconds = {"calibration": 0.0, "gptq": 0.0, "forward": 0.0, "write": 0.0}
    t0 = time.perf_counter()
    windows = _causal_windows(model, calibration, samples, seq_len)
    per = max(1, int(batch_tokens) // windows.shape[1])
    hs = [model.calibration_batch(windows[i : i + per]).h for i in range(0, len(windows), per)]
    seconds["calibration"] = time.perf_counter() - t0
    done: dict[str, np.ndarray] = {}
    blocks = model.num_blocks
    for i in range(blocks):
        t0 = time.perf_counter()
        xs = [np.array(model.block_stage(i, 0, h, None)) for h in hs]
        seconds["forward"] += time.perf_counter() - t0
        for k, group in enumerate(model.block_groups(i), start=1):
            t0 = time.perf_counter()
            H = Hessian(xs[0].shape[-1])
            for x in xs:
                H.add(x.reshape(-1, x.shape[-1]))
            # Linears that share this input and get the same GGUF type run as one GPTQ over
            # their stacked rows (rows are independent given the Hessian).
            by_type: dict[str, list[str]] = {}
            for module in group.names:
                by_type.setdefault(types[hf_to_gguf[module + ".weight"]], []).append(module)
            for t, modules in by_type.items():
                Ws = [np.asarray(model.weights[m + ".weight"], np.float32) for m in modules]
                if t in GGUF_TYPES:
                    stacked = gptq_gguf(
                        np.concatenate(Ws), hessian=H, type=t, damp=damp, act_order=act_order
                    )
                    parts = np.split(stacked, np.cumsum([w.shape[0] for w in Ws])[:-1])
                else:  # a type without a grid GPTQ runs in: ggml's quantizer, as llama-quantize
                    parts = []
                    for m, W in zip(modules, Ws):
                        w = weights_of(hf_to_gguf[m + ".weight"])
                        parts.append(quantize(W, t, imatrix=w) if w is not None else quantize(W, t))
                for m, W, data in zip(modules, Ws, parts):
                    hf = m + ".weight"
                    done[hf_to_gguf[hf]] = np.ascontiguousarray(data)
                    model.weights[hf] = dequantize(data, t, W.shape)
            seconds["gptq"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            nxt = []
            for h, x in zip(hs, xs):
                # a stage's output lives in a buffer the next call reuses: copy it at once
                out_k = model.block_stage(i, k, h, x)
                if out_k is not None:
                    nxt.append(np.array(out_k))
            xs = nxt
            seconds["forward"] += time.perf_counter() - t0
        prefix = model.block_prefix(i)
        model.weights.release([n for n in model.weights if n.startswith(prefix)])
        if progress is not None:
            progress(i + 1, blocks, f"block {i + 1}/{blocks}")
    hs.clear()
    t0 = time.perf_counter()
    metadata = dict(src.metadata)
    metadata["general.file_type"] = FILE_TYPES[mix]
    metadata["general.quantization_version"] = _QUANTIZATION_VERSION
    order = llama_order(list(src.tensors))
    specs = [(n, types[n], src.tensors[n].shape) for n in order]

    def data_of(name: str) -> np.ndarray:
        if name in done:
            return done.pop(name)
        t = src.tensors[name]
        want = types[name]
        if want == t.type:
            return np.asarray(t.data)
        w = weights_of(name)
        x = t.dequantize()
        return quantize(x, want, imatrix=w) if w is not None else quantize(x, want)

    save_streamed(out, metadata, specs, data_of, value_types=src.value_types, check=False)
    seconds["write"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    return seconds

"""GGUF (llama.cpp) tensor types, bit-exact with ggml's reference code and ``gguf.quants``.

Types are named as GGUF names them (``"Q4_0"``, case-insensitive), or given as a
``gguf.GGMLQuantizationType`` or its integer id. Shapes are in NumPy order: the blocks run along
the last axis, so its length must be a multiple of the type's block size.

- ``quantize(x, type, imatrix=None)``: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, following
  each format's own rounding rule (Q4_0's ``trunc(x / d + 8.5)`` with ``d = max / -8``, Q8_0's
  ties away from zero, ...), not qfast's ties-to-even grid; the K-quants and IQ4_NL, and any
  type with an importance matrix, as ggml's ``quantize_<type>`` (as they land).
- ``tensor_types(tensors, mix, ...)`` and ``MIXES``: llama.cpp's type mixes (``Q4_K_M``, ...):
  the type ``llama-quantize`` gives each tensor; ``requantize(src, path, mix, imatrix=None)``:
  a GGUF file quantized with a mix, the bytes ``llama-quantize`` writes (``src`` may also be a
  Hugging Face Llama checkpoint, read as ``convert_hf_to_gguf.py`` writes it: ``convert``;
  ``mix`` ``"F32"`` / ``"F16"`` / ``"BF16"`` is that plain conversion).
- ``dequantize(data, type, shape=None)``: those, plus Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL
  and IQ4_XS.
- ``to_qtensor`` / ``from_qtensor``: Q8_0, Q4_0 and Q4_1 blocks as group-32 QTensors (for
  ``qfast.linear``) and back, without a float round trip.
- ``dot(w, x)``: llama.cpp's ``Q4_0 · Q8_0`` dot products, row by row.
- ``load(path)`` / ``save(path, tensors, metadata)``: GGUF files through the ``gguf`` package,
  lazily memory-mapped; ``REQUIRED_KEYS`` lists what llama.cpp needs per architecture.

Results have the layout ``gguf.quants.quantize`` gives (and ``gguf.GGUFWriter`` takes): bytes
``uint8 (..., row_bytes)`` for block types and BF16, ``float16`` for F16, ``float32`` for F32.

The block formats live in ``blocks``, the files in ``file`` (which uses ``blocks``, never the
reverse). ``qfast.gguf`` re-exports this package.
"""

from __future__ import annotations

from .blocks import TypeInfo, dequantize, dot, from_qtensor, quantize, to_qtensor, type_info
from .file import REQUIRED_KEYS, GGUFFile, GGUFTensor, load, save
from .mixes import MIXES, tensor_types
from .requantize import requantize

__all__ = [
    "MIXES",
    "REQUIRED_KEYS",
    "GGUFFile",
    "GGUFTensor",
    "TypeInfo",
    "dequantize",
    "dot",
    "from_qtensor",
    "load",
    "quantize",
    "requantize",
    "save",
    "tensor_types",
    "to_qtensor",
    "type_info",
]

"""``qfast.gguf``: GGUF block formats and files, kept where users import them from; the code
is in :mod:`qfast.formats.gguf` (``blocks`` and ``file``)."""

from __future__ import annotations

from .formats.gguf import (
    REQUIRED_KEYS,
    GGUFFile,
    GGUFTensor,
    TypeInfo,
    dequantize,
    dot,
    from_qtensor,
    load,
    quantize,
    save,
    to_qtensor,
    type_info,
)
from .formats.gguf import __doc__ as __doc__  # help(qfast.gguf) documents the formats

__all__ = [
    "REQUIRED_KEYS",
    "GGUFFile",
    "GGUFTensor",
    "TypeInfo",
    "dequantize",
    "dot",
    "from_qtensor",
    "load",
    "quantize",
    "save",
    "to_qtensor",
    "type_info",
]

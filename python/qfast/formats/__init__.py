"""The formats floor: files that hold quantized tensors.

- ``safetensors``: qfast's own format (``qfast.save`` / ``qfast.load``): safetensors files whose
  QTensors are stored as their parts;
- ``gguf``: llama.cpp's block formats (``gguf.blocks``) and GGUF files (``gguf.file``), also
  ``qfast.gguf``;
- ``gptq``, ``awq``, ``compressed_tensors``: one linear's QTensor as the tensors of a GPTQ,
  AWQ GEMM or compressed-tensors ``pack-quantized`` checkpoint (``pack``) and back
  (``unpack``, to the :func:`canonical` form).
"""

from ._words import canonical

__all__ = ["canonical"]

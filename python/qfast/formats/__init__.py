"""The formats floor: files that hold quantized tensors.

- ``safetensors``: qfast's own format (``qfast.save`` / ``qfast.load``): safetensors files whose
  QTensors are stored as their parts;
- ``gguf``: llama.cpp's block formats (``gguf.blocks``) and GGUF files (``gguf.file``), also
  ``qfast.gguf``.
"""

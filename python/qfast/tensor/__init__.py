"""The tensor floor: :class:`QTensor` (``qtensor``), quantize / dequantize / pack / unpack
(``quantize``) and the quantized products ``matmul_int8`` / ``linear`` (``linear``).

The public names are re-exported by ``qfast``; this package re-exports nothing, so that each
module stays reachable by its name (``qfast.tensor.linear`` is the module, ``qfast.linear``
the function).
"""

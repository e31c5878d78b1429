"""NumPy references for qfast's dense code layout (README "Code layout"), for the benchmarks.

Each line (the last axis) is a little-endian bit stream: code ``i`` occupies bits
``[i * bits, (i + 1) * bits)``, bit 0 being the least significant bit of byte 0, the line padded
with zero bits to a whole byte. Written the straightforward way, with np.unpackbits /
np.packbits, as a NumPy user would; independent of qfast's kernels.
"""

from __future__ import annotations

import numpy as np


def numpy_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """int8 / uint8 codes (..., n) -> uint8 (..., ceil(n * bits / 8)), two's complement fields."""
    lead, n = codes.shape[:-1], codes.shape[-1]
    stream = np.unpackbits(codes[..., None].view(np.uint8), axis=-1, bitorder="little")
    stream = stream[..., :bits].reshape(*lead, n * bits)
    return np.packbits(stream, axis=-1, bitorder="little")


def numpy_unpack(p: np.ndarray, n: int, bits: int, signed: bool) -> np.ndarray:
    """The inverse of numpy_pack: int8 (sign-extended) or uint8 codes (..., n)."""
    lead = p.shape[:-1]
    stream = np.unpackbits(p, axis=-1, count=n * bits, bitorder="little")
    codes = np.packbits(stream.reshape(*lead, n, bits), axis=-1, bitorder="little")[..., 0]
    if not signed:
        return codes
    shift = 8 - bits
    return (codes << shift).view(np.int8) >> shift  # sign-extend the bits-wide field

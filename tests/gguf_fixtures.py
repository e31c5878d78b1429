"""GGUF reference bytes from gguf-py, for the Rust kernel tests (``tests/kernels.rs``).

The Rust test program runs on aarch64 under QEMU, where there is no Python and no gguf-py, so
it reads gguf-py's answers from ``tests/data/gguf/``:

- ``quantize_input.f32``: float32 rows of every adversarial kind of ``test_gguf.py``
  (32 values per block, little-endian), and ``<type>.quantized``: gguf-py's bytes for them;
- ``<type>.blocks``: random blocks (finite float16 fields), and ``<type>.dequantized.f32``:
  gguf-py's float32 values for them.

``python tests/gguf_fixtures.py`` rewrites the files; ``test_gguf.py`` checks that they are
what gguf-py gives now (so they cannot go stale).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "gguf"
QUANTIZE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
DEQUANTIZE = (*QUANTIZE, "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
ROW = 64  # values per input row: two blocks of the 32-value types
BLOCKS = 24  # random blocks per type for dequantize


def build() -> dict[str, bytes]:
    """Every fixture file's name and bytes, computed with gguf-py now."""
    from test_gguf import KINDS, _random_blocks, adversarial

    import gguf

    rows = []
    for i, kind in enumerate(KINDS):
        if kind == "signed_zeros":  # NumPy's min picks a zero's sign by reduction order
            continue
        x = adversarial(kind, np.random.default_rng(1000 + i))
        rows.append(x[:4, :ROW])  # four rows of each kind keep the file small
    x = np.ascontiguousarray(np.concatenate(rows), dtype="<f4")
    files = {"quantize_input.f32": x.tobytes()}
    t = gguf.GGMLQuantizationType
    with np.errstate(all="ignore"):
        for name in QUANTIZE:
            files[f"{name}.quantized"] = gguf.quants.quantize(x, t[name]).tobytes()
        for i, name in enumerate(DEQUANTIZE):
            b = _random_blocks(name, BLOCKS, np.random.default_rng(2000 + i))
            files[f"{name}.blocks"] = b.tobytes()
            out = gguf.quants.dequantize(b, t[name]).astype("<f4")
            files[f"{name}.dequantized.f32"] = out.tobytes()
    return files


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for name, data in build().items():
        (DATA / name).write_bytes(data)
    print(f"wrote {len(build())} files to {DATA}", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

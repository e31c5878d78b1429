"""SmolLM2-135M quantized by hand with qfast.rtn, measured by qfast.evaluate against the float
model: the table for the model level's notes.

    python scripts/real_model_table.py [--windows 4] [--n-ctx 512]

Models: the float model (``qfast.load_model(qfast.assets.smollm2_gguf())``, its GGUF blocks
dequantized to float32, the reference) and copies with every linear of ``linear_names()``
replaced by ``qfast.rtn(W, bits, group_size)``: W8 per output channel, W8 group 64, W4 group
64 (symmetric grids, qfast.rtn's default), each run with ``compute="float"`` (weights
dequantized inside the kernel, activations float) and ``"int8"`` (activations rounded to INT8
per row). The tied LM head (the embedding table) stays float32 in all of them.

Text: the first ``--windows * --n-ctx`` tokens of the held-out Wikipedia paragraphs,
``--windows`` windows of ``--n-ctx`` tokens, every prediction counted (qfast.evaluate's
default convention). The reference's logits are computed once and reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import qfast
import qfast.assets
from qfast.calibration.text import heldout_paragraphs


class Cached:
    """The float model with its logits remembered per batch of ids (it is every row's
    reference)."""

    kind = "causal"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.arch = model.arch
        self.source = model.source
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.memo: dict[bytes, np.ndarray] = {}

    def logits(self, ids: np.ndarray) -> np.ndarray:
        key = np.ascontiguousarray(ids).tobytes() + bytes(str(ids.shape), "ascii")
        if key not in self.memo:
            self.memo[key] = self.model.logits(ids)
        return self.memo[key]


def quantized(bits: int, group_size: int | None) -> Any:
    model = qfast.load_model(qfast.assets.smollm2_gguf())
    for layer in model.linear_names():
        name = f"{layer}.weight"
        model.weights[name] = qfast.rtn(model.weights[name], bits=bits, group_size=group_size)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--n-ctx", type=int, default=512)
    args = ap.parse_args()
    float_model = qfast.load_model(qfast.assets.smollm2_gguf())
    reference = Cached(float_model)
    tokens = args.windows * args.n_ctx
    n = 16
    while len(float_model.tokenizer.encode(text := "\n".join(heldout_paragraphs(n)))) < tokens:
        n *= 2
    kw = {"n_ctx": args.n_ctx, "max_tokens": tokens}
    rows = []
    t0 = time.perf_counter()
    ev = qfast.evaluate(float_model, text, reference, **kw)
    rows.append(("float32", "-", ev))
    for label, bits, group in (("W8 per-channel", 8, None), ("W8 g64", 8, 64), ("W4 g64", 4, 64)):
        model = quantized(bits, group)
        for compute in ("float", "int8"):
            model.compute = compute
            rows.append((label, compute, qfast.evaluate(model, text, reference, **kw)))
        print(f"{label} done, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(
        f"SmolLM2-135M (GGUF Q4_1/Q8_0 dequantized as the float model), {ev.tokens} tokens "
        f"scored: {ev.windows} windows of {args.n_ctx} of held-out Wikipedia; KL / top-1 "
        "against the float model\n"
    )
    print("| model | compute | PPL | PPL ratio | KL (mean) | top-1 | bits/weight (linears) |")
    print("|---|---|---|---|---|---|---|")
    for label, compute, e in rows:
        print(
            f"| {label} | {compute} | {e.perplexity:.3f} | {e.perplexity_ratio:.4f} | "
            f"{e.kl_divergence:.5f} ± {e.kl_divergence_error:.5f} | "
            f"{100 * e.top1_agreement:.2f}% | {e.bits_per_weight_linear:.3f} |"
        )


if __name__ == "__main__":
    main()

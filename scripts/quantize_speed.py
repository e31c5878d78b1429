"""How long ``qfast.quantize_model`` takes on SmolLM2-135M with GPTQ, against its FLOP budget.

    python scripts/quantize_speed.py [--samples 128] [--seq-len 512] [--method gptq]

The budget (issue 13): one float forward pass of the calibration tokens through the blocks'
linears (2 · tokens · weights FLOP, about 14 TFLOP for 128 x 512 tokens) plus the Hessians as
symmetric rank-k updates (tokens · in² per shared input: q/k/v, o, gate/up, down; about 7
TFLOP), divided by the sgemm rate measured in the same run: the block's own matmuls on one
4096-token batch, best of 5, with the threads OpenBLAS uses. The run writes qfast's format to
a temporary folder (time included). Prints the time split and the ratio to the budget.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import qfast
import qfast.assets


def sgemm_rate(model: qfast.model.base.Model, tokens: int = 4096) -> float:
    """FLOP/s of one block's linears (float32) on ``tokens`` rows, best of 5."""
    rng = np.random.default_rng(0)
    shapes = [model.weights.shape(f"{m}.weight") for m in model.linear_names()[:7]]
    ws = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    xs = {s[1]: rng.standard_normal((tokens, s[1]), dtype=np.float32) for s in shapes}
    outs = [np.empty((tokens, s[0]), np.float32) for s in shapes]
    flop = sum(2.0 * tokens * s[0] * s[1] for s in shapes)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for w, out in zip(ws, outs):
            np.matmul(xs[w.shape[1]], w.T, out=out)
        best = min(best, time.perf_counter() - t0)
    return flop / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--method", default="gptq")
    args = ap.parse_args()
    path = qfast.assets.smollm2_gguf()
    model = qfast.load_model(path, compute="float")
    rate = sgemm_rate(model)
    tokens = args.samples * args.seq_len
    linear = sum(int(np.prod(model.weights.shape(f"{m}.weight"))) for m in model.linear_names())
    forward = 2.0 * tokens * linear
    hessian = 0.0
    for i in range(model.num_blocks):
        for group in model.block_groups(i):
            cols = model.weights.shape(f"{group.names[0]}.weight")[1]
            hessian += float(tokens) * cols * cols
    budget = (forward + hessian) / rate
    recipe = qfast.Recipe(args.method, bits=4, group_size=64, symmetric=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        q = qfast.quantize_model(
            model, recipe, samples=args.samples, seq_len=args.seq_len, output=f"{tmp}/out"
        )
        total = time.perf_counter() - t0
    r = q.quantize_report
    print(r.table())
    print(
        f"sgemm rate {rate / 1e9:.0f} GFLOP/s ({qfast.cpu_info()['isa']}); budget: forward "
        f"{forward / 1e12:.1f} TFLOP + Hessians {hessian / 1e12:.1f} TFLOP = {budget:.0f} s; "
        f"measured {total:.0f} s = {total / budget:.2f}x the budget"
    )
    s = r.seconds
    print(
        "forward {:.0f} s ({:.2f}x its {:.0f} s), Hessians {:.0f} s ({:.2f}x its {:.0f} s), "
        "quantize {:.0f} s, write {:.1f} s, calibration data {:.1f} s".format(
            s.get("forward", 0),
            s.get("forward", 0) / (forward / rate),
            forward / rate,
            s.get("hessian", 0),
            s.get("hessian", 0) / (hessian / rate),
            hessian / rate,
            s.get("quantize", 0),
            s.get("write", 0),
            s.get("calibration", 0),
        )
    )


if __name__ == "__main__":
    main()

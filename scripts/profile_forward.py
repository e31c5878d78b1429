"""Profile the Llama forward pass: time per op class against the same matmuls run alone.

    python scripts/profile_forward.py [MODEL_PATH] [--tokens 512] [--repeats 3]

Without a path, a random-weight model of SmolLM2-135M's shapes (30 layers, hidden 576,
intermediate 1536, 9 heads / 3 KV heads of 64, vocab 49152, tied embeddings). With one, the
model is loaded through ``qfast.load_model``. One sequence of ``--tokens`` tokens, float32.

Prints the time of each op class (the block linears, the LM head, attention: scores, mask,
softmax and context; RMSNorm; RoPE; the SwiGLU activation; the embedding lookup), the
forward pass's total (an uninstrumented run), the same matmul shapes (``x @ W.T`` over all
tokens) timed alone with NumPy, and the ratio: the share of the sgemm rate the forward pass
reaches. Each figure is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import qfast
from qfast.model.arch.llama import Llama
from qfast.model.base import WeightStore

SMOLLM2 = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
    "hidden_act": "silu",
}


def random_model() -> Llama:
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}
    for name, shape in Llama.tensor_shapes(SMOLLM2).items():
        if len(shape) == 1:
            t = np.ones(shape, np.float32)
        else:
            t = rng.standard_normal(shape, dtype=np.float32)
            t *= np.float32(1.0 / np.sqrt(shape[1]))
        tensors[name] = t
    shapes = {n: t.shape for n, t in tensors.items()}
    return Llama.from_config(SMOLLM2, WeightStore(shapes, tensors.__getitem__))


def load(path: str) -> Any:
    load_model = getattr(qfast, "load_model", None)
    if load_model is None:
        sys.exit("qfast.load_model is not available in this build; run without a path")
    return load_model(path)


class Timers:
    """Wraps a model's pieces (on the instance) to add up the time spent in each."""

    def __init__(self, model: Llama) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.model = model
        head_name = "lm_head.weight" if not model.config.tie_word_embeddings else None
        tied = "model.embed_tokens.weight"

        def wrap(attr: str, label: Any) -> None:
            inner = getattr(model, attr)

            def timed(*args: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                out = inner(*args, **kw)
                key = label(args) if callable(label) else label
                self.t[key] += time.perf_counter() - t0
                return out

            setattr(model, attr, timed)

        wrap(
            "linear",
            lambda a: "lm head" if a[1] in (head_name, tied) else "linears (blocks)",
        )
        wrap("_norm", "norms")
        wrap("_rotate", "rope")
        wrap("embed", "embedding")
        wrap("_block", "blocks")
        wrap("head", "head (norm + lm head)")

        import qfast.model.arch.llama as arch

        inner_act = arch._silu_mul

        def act(gate: np.ndarray, up: np.ndarray) -> None:
            t0 = time.perf_counter()
            inner_act(gate, up)
            self.t["mlp activation"] += time.perf_counter() - t0

        arch._silu_mul = act  # type: ignore[assignment]
        self._restore = (arch, inner_act)

    def close(self) -> None:
        arch, inner = self._restore
        arch._silu_mul = inner  # type: ignore[assignment]
        for attr in ("linear", "_norm", "_rotate", "embed", "_block", "head"):
            self.model.__dict__.pop(attr, None)


def best(f: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", help="a model to load (default: random SmolLM2 shapes)")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = load(args.path) if args.path else random_model()
    c = model.config
    ids = np.random.default_rng(1).integers(0, c.vocab_size, (1, args.tokens))
    print(f"model: {args.path or 'random weights, SmolLM2-135M shapes'}; {args.tokens} tokens")
    print(f"threads: qfast {qfast.get_num_threads()}; numpy BLAS: {blas_name()}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

    # The same matmuls alone: one x @ W.T per linear over all tokens.
    n = ids.size
    rng = np.random.default_rng(2)
    names = [f"{name}.weight" for name in model.linear_names()]
    if c.tie_word_embeddings:
        names.append("model.embed_tokens.weight")
    # QTensor weights (a quantized model) are compared with sgemm on their float values.
    weights = [np.asarray(_float(model.weights[name])) for name in names]
    shapes = [tuple(w.shape) for w in weights]
    xs = {k: rng.standard_normal((n, k), dtype=np.float32) for k in {s[1] for s in shapes}}
    flops = 2.0 * n * sum(a * b for a, b in shapes)

    def matmuls() -> None:
        for w in weights:
            xs[w.shape[1]] @ w.T

    def forward() -> None:
        model.logits(ids)

    def instrumented() -> dict[str, float]:
        timers = Timers(model)
        t0 = time.perf_counter()
        model.logits(ids)
        timers.t["instrumented total"] = time.perf_counter() - t0
        timers.close()
        return dict(timers.t)

    forward()  # warm up: weights loaded, caches built
    matmuls()
    # Interleaved, best of each: on a shared machine the quietest run of each is compared.
    totals, alones, runs = [], [], []
    for _ in range(args.repeats):
        totals.append(best(forward, 1))
        alones.append(best(matmuls, 1))
        runs.append(instrumented())
    total, alone = min(totals), min(alones)
    prof = min(runs, key=lambda d: d["instrumented total"])
    attention = prof["blocks"] - (
        prof["linears (blocks)"]
        + prof["norms"]
        - (prof["head (norm + lm head)"] - prof["lm head"])
        + prof["rope"]
        + prof["mlp activation"]
    )

    rows = [
        ("linears (blocks)", prof["linears (blocks)"]),
        ("lm head", prof["lm head"]),
        ("attention (scores, mask, softmax, context)", attention),
        ("norms (RMSNorm)", prof["norms"]),
        ("rope", prof["rope"]),
        ("mlp activation (SwiGLU)", prof["mlp activation"]),
        ("embedding lookup", prof["embedding"]),
    ]
    inst = prof["instrumented total"]
    print(f"\n{'op class':44} {'ms':>9} {'share':>7}")
    for label, t in rows:
        print(f"{label:44} {t * 1e3:9.1f} {t / inst:7.1%}")
    print(f"{'instrumented total':44} {inst * 1e3:9.1f}")
    print(f"\nforward pass (uninstrumented, best of {args.repeats}): {total * 1e3:.1f} ms")
    print(f"the same matmuls alone (x @ W.T, {len(shapes)} of them): {alone * 1e3:.1f} ms")
    print(f"  {flops / 1e9:.1f} GFLOP: sgemm alone {flops / alone / 1e9:.1f} GFLOP/s, ")
    print(f"  forward pass {flops / total / 1e9:.1f} GFLOP/s (linear FLOPs only)")
    print(f"ratio (matmuls alone / forward pass): {alone / total:.1%}  (target >= 70%)")


def _float(w: Any) -> Any:
    return w if isinstance(w, np.ndarray) else w.dequantize(np.float32)


def blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode
        return "unknown"


if __name__ == "__main__":
    main()

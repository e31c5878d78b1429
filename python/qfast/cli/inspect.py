"""``qfast inspect FILE``: the tensors of a safetensors file, qfast's QTensors described."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..formats import safetensors as _st
from ..tensor.qtensor import QTensor
from ._common import PROG, CLIError, fmt_bytes, load_file


def _granularity(q: QTensor) -> str:
    if q.group_size is not None:
        return f"group-{q.group_size}" + (" act-order" if q.g_idx is not None else "")
    if q.axis is not None:
        return f"per-channel (axis {q.axis})"
    return "per-tensor"


def _describe(q: QTensor) -> str:
    return f"INT{q.bits} {'sym' if q.signed else 'asym'} {_granularity(q)}"


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    tensors, metadata = load_file(path, f"{PROG} inspect")
    try:
        items = _st.split(tensors, str(path))
    except ValueError as e:
        raise CLIError(f"{PROG} inspect: error: {e}") from None

    rows: list[tuple[str, str, str, str, str]] = []
    n_q = n_qweights = q_bytes = 0
    for name, t in items.items():
        if not isinstance(t, QTensor):
            bpw = f"{8 * t.dtype.itemsize}" if t.size else "-"
            rows.append((name, str(list(t.shape)), t.dtype.name, bpw, fmt_bytes(t.nbytes)))
            continue
        rows.append(
            (
                name,
                str(list(t.shape)),
                _describe(t),
                f"{t.bits_per_weight:.3f}",
                fmt_bytes(t.nbytes),
            )
        )
        n_q += 1
        n_qweights += t.size
        q_bytes += t.nbytes

    total = sum(a.nbytes for a in tensors.values())
    fmt = metadata.get("format", "-")
    print(
        f"{path}: {len(rows)} tensors ({n_q} quantized by qfast), {fmt_bytes(total)} of "
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


def add_parser(sub: Any) -> None:
    """Adds the ``inspect`` command to the ``qfast`` parser's subparsers."""
    p = sub.add_parser(
        "inspect",
        help="list the tensors of a safetensors file",
        description="List the tensors of a safetensors file; qfast-quantized ones with their "
        "bit width, granularity and storage bits per weight.",
    )
    p.add_argument("file", metavar="FILE.safetensors")
    p.set_defaults(func=run)

"""``qfast quantize MODEL -o OUT --method gptq ...``: a whole model quantized with a recipe.

``MODEL`` is anything ``qfast.load_model`` reads (a Hugging Face folder, a ``.safetensors``
file with its ``config.json``, a ``.gguf`` file) or the name of a registry asset
(``SmolLM2-135M-Instruct``, ``all-MiniLM-L6-v2``: fetched into the cache). The output is
qfast's model format (``qfast.model.writer``), written block by block; a summary table ends
the run (time split, size, bits per weight, peak memory, and with ``--eval`` the error against
the float model on held-out text).

The older form, ``qfast quantize IN.safetensors OUT.safetensors`` (two paths, no ``-o``),
still quantizes every 2-D float weight of one tensor file as a QTensor.
"""

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
    """Runs ``qfast quantize`` in the form its arguments ask for."""
    if args.out is not None:
        if args.legacy_output is not None:
            raise CLIError(
                f"{PROG} quantize: error: give the output once: MODEL -o OUT (a model), or "
                "IN.safetensors OUT.safetensors (one tensor file)"
            )
        if args.format == "gguf":
            from .quantize_gguf import run_gguf

            return run_gguf(args)
        for flag, value in (("--type", args.type), ("--imatrix", args.imatrix)):
            if value is not None:
                raise CLIError(f"{PROG} quantize: error: {flag} is for --format gguf")
        from .quantize_model import run_model

        return run_model(args)
    if args.legacy_output is None:
        raise CLIError(
            f"{PROG} quantize: error: no output; use {PROG} quantize MODEL -o OUT [--method "
            "gptq ...] for a model, or IN.safetensors OUT.safetensors for one tensor file"
        )
    model_only = [
        flag
        for flag, value in (
            ("--method", args.method),
            ("--recipe", args.recipe),
            ("--calibration", args.calibration),
            ("--samples", args.samples),
            ("--seq-len", args.seq_len),
            ("--act-order", args.act_order or None),
            ("--static-groups", args.static_groups or None),
            ("--eval", args.eval or None),
            ("--format", args.format),
            ("--checkpoint-format", args.checkpoint_format),
            ("--type", args.type),
            ("--imatrix", args.imatrix),
        )
        if value is not None
    ]
    if model_only:
        raise CLIError(
            f"{PROG} quantize: error: {', '.join(model_only)} quantize a model: "
            f"{PROG} quantize MODEL -o OUT ..."
        )
    return run_file(args)


def run_file(args: argparse.Namespace) -> int:
    """``qfast quantize IN.safetensors OUT.safetensors``: every 2-D float weight of one file."""
    src, dst = Path(args.input), Path(args.legacy_output)
    if args.bits is None:
        args.bits = 8
    if args.scale_dtype is None:
        args.scale_dtype = "float32"
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
        help="quantize a model with a recipe (GPTQ, AWQ, RTN, HQQ, W8A8), or one tensor file",
        description="Quantize MODEL (a Hugging Face folder, a .safetensors file with its "
        "config.json, a .gguf file, or a registry asset name such as SmolLM2-135M-Instruct) "
        "with a recipe and write it to the folder OUT (qfast's format, or --format gptq / awq / "
        "compressed-tensors for transformers and vLLM), block by block in "
        "bounded memory; then print a summary (time split, size, bits per weight, peak "
        "memory; with --eval, the error against the float model on held-out text). The older "
        "form IN.safetensors OUT.safetensors quantizes every 2-D float weight of one tensor "
        "file (default: INT8 per-channel along axis 0).",
    )
    p.add_argument("input", metavar="MODEL")
    p.add_argument("legacy_output", metavar="OUT.safetensors", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("-o", "--output", dest="out", metavar="OUT", help="the folder to write")
    p.add_argument(
        "--method",
        choices=("gptq", "awq", "rtn", "hqq", "w8a8"),
        help="the algorithm (default gptq; --recipe's when given)",
    )
    p.add_argument(
        "--bits",
        type=int,
        choices=range(2, 9),
        metavar="{2..8}",
        help="code width (default 4; w8a8 and the tensor-file form: 8)",
    )
    p.add_argument(
        "--asymmetric",
        action="store_true",
        help="unsigned codes with a zero point (default: symmetric; hqq is always asymmetric)",
    )
    gran = p.add_mutually_exclusive_group()
    gran.add_argument(
        "--group-size",
        type=positive_int,
        metavar="G",
        help="one scale per G consecutive input columns (models: default 128)",
    )
    gran.add_argument(
        "--per-channel", action="store_true", help="one scale per output row (no groups)"
    )
    gran.add_argument(
        "--axis", type=int, metavar="K", help="tensor file: one scale per index of axis K"
    )
    gran.add_argument("--per-tensor", action="store_true", help="tensor file: one scale")
    p.add_argument("--act-order", action="store_true", help="GPTQ: columns by decreasing H[i, i]")
    p.add_argument(
        "--static-groups",
        action="store_true",
        help="GPTQ: fix the groups' grids before the column loop (act-order without a "
        "permuted g_idx, which current vLLM requires)",
    )
    p.add_argument(
        "--damp", type=float, metavar="F", help="GPTQ: damping, a fraction of mean diag(H)"
    )
    p.add_argument(
        "--scale-dtype",
        choices=("float32", "float16", "bfloat16"),
        help="the dtype scales are stored in; codes are computed against the rounded scale "
        "(models: float16, hqq float32; tensor file: float32)",
    )
    p.add_argument(
        "--format",
        choices=("qfast", "gptq", "awq", "compressed-tensors", "gguf"),
        help="OUT's format (default qfast): a GPTQ, AWQ (GEMM) or compressed-tensors "
        "(pack-quantized) checkpoint loads in transformers and vLLM; gguf: a GGUF file of "
        "llama.cpp's type mix --type, as llama-quantize writes it (MODEL: a GGUF file, or a "
        "Hugging Face Llama read as convert_hf_to_gguf.py writes it)",
    )
    p.add_argument(
        "--type",
        metavar="MIX",
        help="--format gguf: llama.cpp's type mix (Q4_0, Q4_K_M, Q3_K_M, ...), or F32 / F16 / "
        "BF16 for a plain conversion (convert_hf_to_gguf.py --outtype)",
    )
    p.add_argument(
        "--imatrix",
        metavar="FILE",
        help="--format gguf: an importance matrix (llama-imatrix's .dat or .gguf, or "
        "qfast imatrix's)",
    )
    p.add_argument(
        "--checkpoint-format",
        choices=("gptq", "gptq_v2"),
        help="--format gptq: v1 (zero points stored minus 1; the default, or v2 with a warning "
        "when a zero point of 0 needs it) or v2",
    )
    p.add_argument(
        "--calibration",
        metavar="FILE.txt",
        help="UTF-8 calibration text (default: the calibration half of the Wikipedia sample)",
    )
    p.add_argument(
        "--samples", type=positive_int, metavar="N", help="calibration sequences (default 128)"
    )
    p.add_argument(
        "--seq-len", type=positive_int, metavar="N", help="tokens per sequence (default 512)"
    )
    p.add_argument(
        "--recipe",
        metavar="R.json",
        help="a recipe file (qfast.Recipe.to_json); the flags above override its fields",
    )
    p.add_argument(
        "--eval",
        action="store_true",
        help="measure the result against MODEL on held-out text (perplexity, KL, top-1; "
        "encoders: embedding cosine)",
    )
    p.add_argument(
        "--eval-windows",
        type=positive_int,
        default=8,
        metavar="N",
        help="--eval: windows of 512 tokens (default 8; encoders: N x 32 paragraphs)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal)",
    )
    p.add_argument("--threads", type=positive_int, metavar="N", help="qfast threads")
    p.set_defaults(func=run)

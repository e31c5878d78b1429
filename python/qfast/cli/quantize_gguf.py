"""``qfast quantize MODEL -o OUT.gguf --format gguf --type MIX [--imatrix F]``: a GGUF file
quantized with one of llama.cpp's type mixes, as ``llama-quantize`` writes it (see
``qfast.formats.gguf.requantize``). MODEL is a GGUF file, or a Hugging Face Llama checkpoint
(a folder, a ``.safetensors`` file with ``config.json`` beside it) read as
``convert_hf_to_gguf.py`` writes it; ``--type F32`` / ``F16`` / ``BF16`` is that plain
conversion (``convert_hf_to_gguf.py --outtype f32 / f16 / bf16``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .. import QfastError
from ._common import PROG, CLIError

_CMD = f"{PROG} quantize"


def run_gguf(args: argparse.Namespace) -> int:
    from ..formats.gguf.convert import FLOAT_TYPES
    from ..formats.gguf.mixes import MIXES
    from ..formats.gguf.requantize import requantize
    from .quantize_model import resolve_model

    types = ", ".join([*MIXES, *FLOAT_TYPES])
    if args.type is None:
        raise CLIError(f"{_CMD}: error: --format gguf needs --type, one of {types}")
    if args.type not in MIXES and args.type not in FLOAT_TYPES:
        raise CLIError(f"{_CMD}: error: --type {args.type}: pick one of {types}")
    method = args.method or "rtn"
    if method not in ("rtn", "gptq"):
        raise CLIError(
            f"{_CMD}: error: --format gguf runs --method rtn (llama-quantize's own quantizers) "
            f"or gptq (GPTQ inside GGUF's block grids), not {method}"
        )
    source = resolve_model(args.input)
    if method == "gptq" and args.type in FLOAT_TYPES:
        raise CLIError(
            f"{_CMD}: error: --type {args.type} is a plain conversion; --method gptq takes a "
            f"quantized mix ({', '.join(MIXES)})"
        )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CLIError(f"{_CMD}: error: {out} exists; pick a new file or pass --overwrite")
    imatrix: Any = None
    if args.imatrix is not None:
        from ..model.imatrix import load_importance_matrix

        try:
            imatrix = load_importance_matrix(args.imatrix)
        except (OSError, ValueError) as e:
            raise CLIError(f"{_CMD}: error: --imatrix {args.imatrix}: {e}") from None
    t0 = time.perf_counter()
    source_arg: Any = source
    if not (source.is_file() and source.suffix.lower() == ".gguf"):
        from ..model.gguf_source import open_gguf_source

        try:  # a Hugging Face checkpoint, read as convert_hf_to_gguf.py reads it
            source_arg = open_gguf_source(source)
        except MemoryError:
            raise
        except (OSError, ValueError, TypeError, ImportError, KeyError, QfastError) as e:
            reason = str(e) or type(e).__name__
            raise CLIError(
                f"{_CMD}: error: cannot read {source} as a GGUF source: {reason}"
            ) from None
    try:
        if method == "gptq":
            from ..model.gguf_gptq import gptq_to_gguf
            from ._common import read_text

            calibration = (
                None
                if args.calibration is None
                else read_text(args.calibration, "--calibration", _CMD)
            )
            kwargs: dict[str, Any] = {}
            if args.samples is not None:
                kwargs["samples"] = args.samples
            if args.seq_len is not None:
                kwargs["seq_len"] = args.seq_len
            if args.damp is not None:
                kwargs["damp"] = args.damp
            kwargs["act_order"] = bool(args.act_order)
            seconds = gptq_to_gguf(
                source_arg, out, args.type, calibration, imatrix=imatrix,
                overwrite=args.overwrite, **kwargs,
            )  # fmt: skip
            print(
                f"{_CMD}: GPTQ: calibration {seconds['calibration']:.1f} s, forward "
                f"{seconds['forward']:.1f} s, GPTQ {seconds['gptq']:.1f} s, write "
                f"{seconds['write']:.1f} s",
                file=sys.stderr,
            )
        else:
            requantize(source_arg, out, args.type, imatrix=imatrix, overwrite=args.overwrite)
    except (ValueError, TypeError, QfastError, ImportError) as e:
        raise CLIError(f"{_CMD}: error: {e}") from None
    except OSError as e:
        raise CLIError(f"{_CMD}: error: cannot write {out}: {e.strerror or e}") from None
    size = out.stat().st_size
    print(
        f"{_CMD}: {source} -> {out}: {method} {args.type}"
        f"{' with an importance matrix' if imatrix is not None else ''}, "
        f"{size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0

"""``qfast imatrix MODEL -o FILE [--calibration FILE.txt] [--ctx 512] [--chunks N]``.

Computes llama-imatrix's importance matrix of MODEL (:func:`qfast.importance_matrix`) and
writes it in llama-imatrix's GGUF format (``-o x.gguf``) or its legacy one (``-o x.dat``), for
``llama-quantize --imatrix`` or ``qfast quantize --imatrix``. As ``llama-imatrix -f``, one
trailing newline of the calibration file is dropped and the file's name is stored as the
dataset. The default text is the first :data:`DEFAULT_PARAGRAPHS` calibration Wikipedia
paragraphs (``calibration_paragraphs``), one per line. Every error prints one line on stderr
and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._qfast import QfastError
from ._common import PROG, CLIError, Threads, os_reason, positive_int

__all__ = ["DEFAULT_PARAGRAPHS", "add_parser", "run"]

#: Calibration paragraphs used when ``--calibration`` is not given.
DEFAULT_PARAGRAPHS = 128

_CMD = f"{PROG} imatrix"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``imatrix`` command to the ``qfast`` parser's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "imatrix",
        help="llama-imatrix's importance matrix of a model, for llama-quantize --imatrix",
        description="Compute the importance matrix of MODEL as llama-imatrix does (the sum of "
        "x² per input column of every block linear, over chunks of --ctx tokens of the "
        "calibration text) and write it in llama-imatrix's GGUF format (-o FILE.gguf) or its "
        "legacy format (-o FILE.dat). MODEL: a Hugging Face folder, a .safetensors file with "
        "its config.json, or a .gguf file (a Llama-family causal model).",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    p.add_argument(
        "--calibration",
        metavar="FILE.txt",
        help="UTF-8 calibration text (one trailing newline dropped, as llama-imatrix -f "
        f"does); default: the first {DEFAULT_PARAGRAPHS} calibration Wikipedia paragraphs",
    )
    p.add_argument(
        "--ctx", type=positive_int, default=512, metavar="N", help="tokens per chunk (default 512)"
    )
    p.add_argument("--chunks", type=positive_int, metavar="N", help="use at most N chunks")
    p.add_argument(
        "--batch",
        type=positive_int,
        metavar="N",
        help="llama-imatrix's -b, to reproduce its schedule exactly (default: --ctx, one chunk "
        "per decode, every token counted; llama-imatrix's own default 2048 skips a few tokens "
        "of each chunk for some chunk counts)",
    )
    p.add_argument(
        "--output-format",
        choices=("gguf", "dat"),
        help="the file format (default: from the suffix of -o, .gguf or .dat)",
    )
    p.add_argument("--threads", type=positive_int, metavar="N", help="qfast threads")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(func=run)
    return p


def _text(path: str | None) -> tuple[str, str]:
    """The calibration text and its dataset name."""
    if path is None:
        from ..calibration.text import calibration_paragraphs

        name = f"qfast calibration_paragraphs({DEFAULT_PARAGRAPHS})"
        return "\n".join(calibration_paragraphs(DEFAULT_PARAGRAPHS)), name
    try:
        data = Path(path).read_bytes()  # no newline translation: llama.cpp reads bytes
    except FileNotFoundError:
        raise CLIError(f"{_CMD}: error: --calibration {path}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"{_CMD}: error: --calibration {path}: is a directory") from None
    except OSError as e:
        raise CLIError(f"{_CMD}: error: cannot read --calibration {path}: {os_reason(e)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CLIError(
            f"{_CMD}: error: --calibration {path}: not UTF-8 text (byte {e.start}); give a "
            "UTF-8 file"
        ) from None
    if text.endswith("\n"):
        text = text[:-1]
    if not text.strip():
        raise CLIError(f"{_CMD}: error: --calibration {path} is empty; give some text")
    return text, path


def run(args: argparse.Namespace) -> int:
    """Runs ``qfast imatrix``; returns 0 (errors raise :class:`qfast.cli.CLIError`)."""
    from ..model.imatrix import importance_matrix

    out = Path(args.output)
    fmt = args.output_format
    if fmt is None and out.suffix.lower() not in (".gguf", ".dat"):
        raise CLIError(
            f"{_CMD}: error: -o {out}: name the file .gguf or .dat, or pass --output-format"
        )
    text, dataset = _text(args.calibration)
    if not Path(args.model).exists():
        raise CLIError(f"{_CMD}: error: {args.model}: no such file or directory")
    from ..model.checkpoint import load_model

    try:
        model = load_model(args.model)
    except MemoryError:
        raise
    except (OSError, ValueError, TypeError, ImportError, KeyError, QfastError) as e:
        reason = str(e) or type(e).__name__
        raise CLIError(f"{_CMD}: error: cannot load the model {args.model}: {reason}") from None
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with Threads(args.threads):
        try:
            imatrix = importance_matrix(
                model,
                text,
                n_ctx=args.ctx,
                chunks=args.chunks,
                n_batch=args.batch,
                progress=progress,
                dataset=dataset,
            )
        except (ValueError, TypeError) as e:
            raise CLIError(f"{_CMD}: error: {e}") from None
    try:
        imatrix.save(out, format=fmt)
    except ValueError as e:
        raise CLIError(f"{_CMD}: error: {e}") from None
    print(
        f"wrote {out}: {len(imatrix)} weights, {imatrix.chunks} chunks of {imatrix.chunk_size} "
        f"tokens ({imatrix.datasets[0]})"
    )
    return 0

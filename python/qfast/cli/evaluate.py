"""``qfast eval MODEL [--reference FLOAT_MODEL] [--text FILE] ...``: measure a model.

Loads MODEL (and the reference) with ``qfast.load_model`` (a Hugging Face folder, a
``.safetensors`` file with its ``config.json``, a ``.gguf`` file, or qfast's own format), runs
:func:`qfast.model.evaluate.evaluate` on the text and prints its one-table summary: perplexity
(and, with a reference, KL divergence, top-1 agreement, the reference's perplexity) for causal
language models, embedding cosine against the reference for encoders, bits per weight and size.

The default text is the first :data:`DEFAULT_PARAGRAPHS` held-out Wikipedia paragraphs
(``heldout_paragraphs``), one per line. Every error prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._qfast import QfastError
from ..model.evaluate import CONVENTIONS, evaluate
from ._common import PROG, CLIError, Threads, positive_int, read_text

__all__ = ["DEFAULT_PARAGRAPHS", "add_parser", "run"]

#: Held-out Wikipedia paragraphs evaluated when ``--text`` is not given.
DEFAULT_PARAGRAPHS = 64

_CMD = f"{PROG} eval"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``eval`` command to the ``qfast`` parser's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "eval",
        help="perplexity / KL / top-1 (causal LMs) or embedding cosine (encoders) of a model",
        description="Measure MODEL on a text and print a one-table summary. Causal language "
        "models: perplexity over non-overlapping windows of --ctx tokens, every predicted "
        "token counted (or llama-perplexity's convention: the second half of each window); "
        "with --reference, the mean KL divergence KL(reference || model) of the next-token "
        "distribution and the top-1 agreement, as llama.cpp's --kl-divergence reports them. "
        "Encoders: the cosine of each line's embedding with the reference's (mean, minimum). "
        "Always: bits per weight and size. MODEL and FLOAT_MODEL: a Hugging Face folder, a "
        ".safetensors file with its config.json, a .gguf file, or a qfast-quantized file.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--reference",
        metavar="FLOAT_MODEL",
        help="the model to compare with (the same vocabulary), usually the float original",
    )
    p.add_argument(
        "--text",
        metavar="FILE",
        help="UTF-8 text to evaluate on (encoders: one text per line); default: the first "
        f"{DEFAULT_PARAGRAPHS} held-out Wikipedia paragraphs",
    )
    p.add_argument(
        "--ctx", type=positive_int, default=512, metavar="N", help="window length (default 512)"
    )
    p.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default="windows",
        help="windows: every prediction of non-overlapping windows (default); llama.cpp: "
        "llama-perplexity's (the second half of each window, BOS first when the vocabulary "
        "adds one; one trailing newline of --text dropped, as llama-perplexity -f does)",
    )
    p.add_argument(
        "--max-tokens", type=positive_int, metavar="N", help="use only the text's first N tokens"
    )
    p.add_argument("--batch", type=positive_int, metavar="N", help="windows per forward pass")
    p.add_argument("--threads", type=positive_int, metavar="N", help="qfast threads")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(func=run)
    return p


def _load_model(path: str) -> Any:
    """``qfast.load_model(path)`` (imported on use: loading needs the optional packages)."""
    from ..model.checkpoint import load_model

    return load_model(path)


def _load(path: str, what: str) -> Any:
    if not Path(path).exists():
        raise CLIError(f"{_CMD}: error: {path}: no such file or directory")
    try:
        return _load_model(path)
    except MemoryError:
        raise
    except (OSError, ValueError, TypeError, ImportError, KeyError, QfastError) as e:
        reason = str(e) or type(e).__name__
        raise CLIError(f"{_CMD}: error: cannot load the {what} {path}: {reason}") from None


def _text(args: argparse.Namespace) -> str:
    if args.text is None:
        from ..calibration.text import heldout_paragraphs

        return "\n".join(heldout_paragraphs(DEFAULT_PARAGRAPHS))
    text = read_text(args.text, "--text", _CMD)
    if args.convention == "llama.cpp" and text.endswith("\n"):
        text = text[:-1]  # llama-perplexity -f drops one trailing newline
    if not text.strip():
        raise CLIError(f"{_CMD}: error: --text {args.text} is empty; give some text")
    return text


def run(args: argparse.Namespace) -> int:
    """Runs ``qfast eval``; returns 0 (errors raise :class:`qfast.cli.CLIError`)."""
    text = _text(args)
    model = _load(args.model, "model")
    reference = None if args.reference is None else _load(args.reference, "reference")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with Threads(args.threads):
        try:
            result = evaluate(
                model,
                text,
                reference,
                n_ctx=args.ctx,
                convention=args.convention,
                max_tokens=args.max_tokens,
                batch_size=args.batch,
                progress=progress,
            )
        except (ValueError, TypeError) as e:
            raise CLIError(f"{_CMD}: error: {e}") from None
    print(result.table())
    return 0

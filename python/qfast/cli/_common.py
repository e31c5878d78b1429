"""What the ``qfast`` commands share: the error type, the parser, reading and writing
safetensors files with one-line errors, formatting, and the ``--threads`` option."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import numpy as np

from .. import get_num_threads, set_num_threads
from ..formats import safetensors as _st

PROG = "qfast"
#: safetensors metadata ``format`` value of the files ``qfast quantize`` writes.
FILE_FORMAT = _st.FILE_FORMAT
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_F32 = np.float32


class CLIError(Exception):
    """An error the command reports as one line on stderr (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors become a one-line :class:`CLIError` instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------------------------
# helpers


def require_safetensors() -> ModuleType:
    """``safetensors.numpy``, imported on first use (an optional dependency)."""
    try:
        return _st.safetensors_numpy()
    except ImportError as e:
        raise CLIError(f"{PROG}: error: {e}") from None


def os_reason(e: OSError) -> str:
    """An OSError's reason without the path (the message names the path itself)."""
    return e.strerror or str(e) or type(e).__name__


def load_file(
    path: str | os.PathLike[str], prog: str = PROG
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All entries of a safetensors file (in file order) and its metadata."""
    require_safetensors()
    p = Path(path)
    try:
        return _st.read(p)
    except FileNotFoundError:
        raise CLIError(f"{prog}: error: {p}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"{prog}: error: {p}: is a directory, not a .safetensors file") from None
    except OSError as e:
        raise CLIError(f"{prog}: error: cannot read {p}: {os_reason(e)}") from None
    except ValueError as e:
        raise CLIError(f"{prog}: error: {e}") from None


def save_file(
    path: Path, tensors: dict[str, Any], metadata: dict[str, str], prog: str = PROG
) -> None:
    """``qfast.save``: atomically (a temporary file in the same directory, then a rename)."""
    require_safetensors()
    try:
        _st.save(path, tensors, metadata)
    except ValueError as e:
        raise CLIError(f"{prog}: error: {e}") from None
    except FileNotFoundError as e:
        if path.parent.is_dir():  # /proc: no new files there
            raise CLIError(f"{prog}: error: cannot write {path}: {os_reason(e)}") from None
        where = path.parent
        raise CLIError(f"{prog}: error: {path}: directory {where} does not exist") from None
    except IsADirectoryError:
        raise CLIError(f"{prog}: error: {path} is a directory; give a file name") from None
    except OSError as e:
        raise CLIError(f"{prog}: error: cannot write {path}: {os_reason(e)}") from None


def is_float(a: np.ndarray) -> bool:
    return a.dtype.name in FLOAT_DTYPES


def is_weight(a: np.ndarray) -> bool:
    """The tensors that ``quantize`` and ``demo`` quantize: 2-D floating point."""
    return a.ndim == 2 and is_float(a)


def fmt_bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def fmt_count(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}k"
    return str(n)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def read_text(path: str | Path, flag: str, cmd: str) -> str:
    """The UTF-8 text of a file an option names; a one-line CLIError (naming ``cmd`` and
    ``flag``) when it is missing, a folder, not UTF-8, unreadable or empty."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CLIError(f"{cmd}: error: {flag} {path}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"{cmd}: error: {flag} {path}: is a directory, not a text file") from None
    except UnicodeDecodeError as e:
        raise CLIError(
            f"{cmd}: error: {flag} {path}: not UTF-8 text (byte {e.start}); give a UTF-8 file"
        ) from None
    except OSError as e:
        raise CLIError(f"{cmd}: error: cannot read {flag} {path}: {e.strerror or e}") from None
    if not text.strip():
        raise CLIError(f"{cmd}: error: {flag} {path} is empty; give some text")
    return text


class Threads:
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

"""Atomic file writes, the one helper every qfast writer uses (``qfast.save``, ``qfast
quantize``, ``qfast.gguf.save``, the asset cache).

``atomic_write(path)`` yields a temporary path beside ``path``; when the ``with`` block ends
normally the file is flushed to disk (fsync), renamed over ``path`` and the rename itself is made
durable (fsync of the folder). If the block raises anything, ``KeyboardInterrupt`` (Ctrl-C)
included, the temporary file is removed and ``path`` is left as it was. The new file gets the
mode the umask implies for a new file (``0o666 & ~umask``), as ``open(path, "w")`` would give it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "check_writable_target"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else by
    setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable_target(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, after checking that it can be the target of :func:`atomic_write`:
    its folder exists and it is not itself a folder. Raises FileNotFoundError,
    NotADirectoryError or IsADirectoryError (OSError subclasses) naming the path."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    if not parent.exists():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(parent))
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(parent))
    return path


def _fsync_dir(folder: Path) -> None:
    """Makes a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)
    or synced (some file systems refuse with EINVAL)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _create_new(path: Path) -> None:
    """Creates ``path``, empty and private (0600), failing if it exists."""
    os.close(os.open(path, _CREATE, 0o600))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Writes ``path`` atomically: yields a temporary path in the same folder (an empty file
    already created, named ``.NAME.<16 hex digits>.tmp``) to write; on a normal exit it is
    synced and renamed over ``path``, on any exception (Ctrl-C included) removed.

    Raises OSError (FileNotFoundError, IsADirectoryError, PermissionError, ...) naming the path
    when the folder does not exist, ``path`` is a folder, or the folder is not writable.
    """
    path = check_writable_target(path)
    parent = path.parent
    # The name is chosen before the file exists, so that Ctrl-C arriving between the file's
    # creation and the next bytecode still finds it in the handler below (mkstemp's name is
    # only known once it returns). 64 random bits: a clash is retried, never removed.
    tmp = parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        while True:
            try:
                _create_new(tmp)
                break
            except FileExistsError:
                tmp = parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        yield tmp
        # After the write: the file was created 0600, and some writers (safetensors) replace the
        # file they are given with their own temporary file.
        with contextlib.suppress(OSError, NotImplementedError):  # a file system without modes
            os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` with :func:`atomic_write`."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(data)

"""``qfast.save`` / ``qfast.load``: QTensors and plain arrays in one safetensors file.

The file format is the one ``qfast quantize`` writes: a plain safetensors file (readable by any
safetensors reader) whose metadata has ``format: qfast``, in which a QTensor named ``NAME`` is
stored as the entries of ``QTensor.to_dict(prefix=NAME + ".")`` (``NAME.qfast_header``,
``NAME.data``, ``NAME.scale``, ...) and an array under its own name.

Because a QTensor owns every entry whose name starts with ``NAME.``, no other tensor's name may
start with ``NAME.`` (e.g. a QTensor ``a`` and an array ``a.data``): ``save`` refuses such a
collision with a ValueError naming both, rather than writing a file that reads back wrong.

Needs the optional ``safetensors`` package (``pip install 'qfast-quant[models]'``).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Union

import numpy as np

from .._files import atomic_write
from ..tensor.qtensor import QTensor

__all__ = ["FILE_FORMAT", "load", "save"]

#: safetensors metadata ``format`` of the files ``qfast.save`` and ``qfast quantize`` write.
FILE_FORMAT = "qfast"
_HEADER = "qfast_header"

Tensor = Union[QTensor, np.ndarray]


def safetensors_numpy() -> ModuleType:
    """``safetensors.numpy``, imported on first use (an optional dependency)."""
    try:
        import ml_dtypes  # noqa: F401  (registers bfloat16, so BF16 tensors load and save)
        import safetensors.numpy
    except ImportError as e:
        raise ImportError(
            "reading and writing .safetensors files needs the 'safetensors' and 'ml_dtypes' "
            "packages: pip install 'qfast-quant[models]'"
        ) from e
    return safetensors.numpy


def check_names(names: list[str], qtensor_names: list[str]) -> None:
    """No tensor's name may start with a QTensor's ``NAME.`` (its entries live there)."""
    ordered = sorted(names)
    for q in qtensor_names:
        prefix = q + "."
        i = bisect.bisect_left(ordered, prefix)
        if i < len(ordered) and ordered[i].startswith(prefix):
            raise ValueError(
                f"tensor names {q!r} and {ordered[i]!r} collide: the QTensor {q!r} is stored "
                f"as the entries {prefix}qfast_header, {prefix}data, {prefix}scale, ..., so no "
                f"other tensor's name may start with {prefix!r}; rename one of them"
            )


def _plain_array(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"tensor {name!r}: qfast.save stores QTensors and NumPy arrays, not "
            f"{type(value).__name__}"
        )
    if value.dtype.byteorder == ">":
        value = value.astype(value.dtype.newbyteorder("<"))
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return value if value.flags.c_contiguous else value.copy(order="C")


def _entries(tensors: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """The flat ``{key: array}`` dict to write, after the name checks."""
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"qfast.save takes a dict of name -> QTensor or ndarray, not {type(tensors).__name__}"
        )
    names: list[str] = []
    for name in tensors:
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names are non-empty str, not {name!r}")
        names.append(name)
    qnames = [n for n, v in tensors.items() if isinstance(v, QTensor)]
    check_names(names, qnames)
    for name, value in tensors.items():
        if not isinstance(value, QTensor) and (name == _HEADER or name.endswith("." + _HEADER)):
            raise ValueError(
                f"tensor name {name!r} ends in {_HEADER!r}, which marks a QTensor's entries; "
                "rename it"
            )
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if isinstance(value, QTensor):
            out.update(value.to_dict(prefix=name + "."))
        else:
            out[name] = _plain_array(name, value)
    return out


def save(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes ``tensors`` (name -> QTensor or NumPy array) to the safetensors file ``path``,
    atomically (a temporary file beside it, synced, then renamed; on any error, Ctrl-C
    included, ``path`` is left as it was).

    QTensors are stored as their ``to_dict(prefix=NAME + ".")`` entries, arrays as they are;
    ``metadata`` (str -> str) is written with ``format: qfast`` added (it replaces a
    ``format`` given). ``qfast.load`` reads the file back.

    Raises:
        ValueError: two names collide (a QTensor ``a`` and another tensor ``a.data``, ...).
        TypeError: a value is neither a QTensor nor an array, a name or metadata entry is not
            a str.
        OSError: the file cannot be written (its folder does not exist, is read-only, ...).
        ImportError: ``safetensors`` is not installed.
    """
    st = safetensors_numpy()
    meta: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"safetensors metadata is str -> str, not {k!r}: {v!r}")
        meta[k] = v
    meta["format"] = FILE_FORMAT
    entries = _entries(tensors)
    with atomic_write(path) as tmp:
        st.save_file(entries, str(tmp), metadata=meta)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All entries of a safetensors file (in file order where safetensors can tell it) and its
    metadata. OSError for a missing file or a folder, ValueError for a file that is not
    safetensors or is truncated."""
    safetensors_numpy()
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "no such file", str(p))
    if p.is_dir():
        raise IsADirectoryError(21, "is a directory, not a .safetensors file", str(p))
    with open(p, "rb"):  # PermissionError and the like as they are
        pass
    try:
        with safe_open(str(p), framework="np") as f:
            metadata = dict(f.metadata() or {})
            # offset_keys (safetensors >= 0.6): file order; keys(): sorted by name.
            keys = f.offset_keys() if hasattr(f, "offset_keys") else f.keys()
            tensors = {k: f.get_tensor(k) for k in keys}
    except MemoryError:
        raise
    except Exception as e:  # SafetensorError, an unknown dtype (TypeError), OSError
        raise ValueError(f"{p}: not a readable safetensors file ({e})") from None
    return tensors, metadata


def qtensor_prefixes(entries: Mapping[str, Any]) -> list[str]:
    """The prefixes (``NAME.``) of the QTensors stored in ``entries``, found by their
    ``qfast_header`` key."""
    return [
        key[: -len(_HEADER)] for key in entries if key == _HEADER or key.endswith("." + _HEADER)
    ]


def split(entries: Mapping[str, np.ndarray], where: str = "the file") -> dict[str, Tensor]:
    """``{name: QTensor or array}`` from a file's flat entries: every ``NAME.qfast_header``
    makes a QTensor of the entries under ``NAME.``; the other entries are arrays."""
    prefixes = qtensor_prefixes(entries)
    owner: dict[str, str] = {}
    members: dict[str, dict[str, np.ndarray]] = {p: {} for p in prefixes}
    ordered = sorted(entries)
    for prefix in prefixes:
        i = bisect.bisect_left(ordered, prefix)
        while i < len(ordered) and ordered[i].startswith(prefix):
            if ordered[i] in owner and owner[ordered[i]] != prefix:
                a, b = owner[ordered[i]], prefix
                raise ValueError(
                    f"{where}: the QTensors {a[:-1]!r} and {b[:-1]!r} both claim the entry "
                    f"{ordered[i]!r}; the file was not written by qfast.save"
                )
            owner[ordered[i]] = prefix
            members[prefix][ordered[i]] = entries[ordered[i]]
            i += 1
    out: dict[str, Tensor] = {}
    for key, value in entries.items():
        if key not in owner:
            out[key] = value
            continue
        prefix = owner[key]
        name = prefix[:-1] if prefix.endswith(".") else prefix
        if name in out:
            continue
        try:
            out[name] = QTensor.from_dict(members[prefix], prefix=prefix)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{where}: tensor {name!r} is not a valid QTensor: {e}") from None
    return out


def load(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Reads a safetensors file written by ``qfast.save`` or ``qfast quantize``: name ->
    QTensor for the quantized tensors (found by their ``NAME.qfast_header`` entries), name ->
    NumPy array for the others. Any safetensors file loads (without QTensors it is what
    ``safetensors.numpy.load_file`` returns).

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be opened.
        ValueError: the file is not safetensors, is truncated, or holds a corrupt QTensor
            (the message names it).
        ImportError: ``safetensors`` is not installed.
    """
    entries, _ = read(path)
    return split(entries, str(path))

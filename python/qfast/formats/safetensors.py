"""``qfast.save`` / ``qfast.load``: QTensors and plain arrays in one safetensors file.

The file format is the one ``qfast quantize`` writes: a plain safetensors file (readable by any
safetensors reader) whose metadata has ``format: qfast``, in which a QTensor named ``NAME`` is
stored as the entries of ``QTensor.to_dict(prefix=NAME + ".")`` (``NAME.qfast_header``,
``NAME.data``, ``NAME.scale``, ...) and an array under its own name.

Because a QTensor owns every entry whose name starts with ``NAME.``, no other tensor's name may
start with ``NAME.`` (e.g. a QTensor ``a`` and an array ``a.data``): ``save`` refuses such a
collision with a ValueError naming both, rather than writing a file that reads back wrong.

Needs the optional ``safetensors`` package (``pip install 'qfast-quant[models]'``).

:class:`SafetensorsFile` reads any safetensors file lazily (what ``qfast.load_model`` uses): its
own header parser, checked against the file size, and tensors as read-only views of a memory
map; it needs no optional package (``ml_dtypes`` only for bfloat16).
"""

from __future__ import annotations

import bisect
import json
import math
import mmap
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Union

import numpy as np

from .._files import atomic_write
from .._qfast import QfastError
from ..tensor.qtensor import QTensor

__all__ = ["FILE_FORMAT", "SafetensorsFile", "load", "save"]

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
    write_entries(path, tensors, metadata)


def write_entries(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    atomic: bool = True,
) -> list[str]:
    """:func:`save`, returning the entry names written (a QTensor's several); ``atomic=False``
    writes ``path`` directly (inside a folder that is itself renamed into place)."""
    meta: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"safetensors metadata is str -> str, not {k!r}: {v!r}")
        meta[k] = v
    meta.setdefault("format", FILE_FORMAT)  # transformers reads only "pt" files
    entries = _entries(tensors)
    if atomic:
        with atomic_write(path) as tmp:
            write_streamed(tmp, entries, meta)
    else:
        write_streamed(Path(path), entries, meta)
    return list(entries)


def _st_dtype(name: str, a: np.ndarray) -> str:
    if a.dtype.name == "bfloat16":
        return "BF16"
    for code, dt in _ST_DTYPES.items():
        if dt is not None and dt == a.dtype.newbyteorder("<"):
            return code
    raise TypeError(f"tensor {name!r}: dtype {a.dtype} has no safetensors equivalent")


def write_streamed(path: Path, entries: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> None:
    """Writes a safetensors file: the header (every offset known from the shapes), then each
    tensor's bytes straight from its array, so the file is never built in memory (the
    ``safetensors`` package copies every tensor into one buffer first)."""
    header: dict[str, Any] = {"__metadata__": dict(meta)} if meta else {}
    offset = 0
    arrays = []
    # Widest dtypes first (as the safetensors package orders them): with the header padded
    # to 8 bytes, every tensor then starts at a multiple of its itemsize, so a memory map
    # gives aligned arrays.
    ordered = sorted(entries.items(), key=lambda kv: -kv[1].dtype.itemsize)
    for name, a in ordered:
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        code = _st_dtype(name, a)
        header[name] = {
            "dtype": code,
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            if a.nbytes:
                flat = np.ascontiguousarray(a).reshape(-1)
                f.write(flat.view(np.uint8).data)


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


# -- any safetensors file, read lazily through a memory map ------------------------------------


def evict_range(mm: mmap.mmap, start: int, end: int) -> None:
    """``madvise(MADV_DONTNEED)`` over the pages of bytes ``[start, end)`` of a read-only file
    map (harmless for a neighbour sharing an edge page: it is read again from the page
    cache when used)."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None or not hasattr(mm, "madvise"):
        return
    page = mmap.PAGESIZE
    lo = (start // page) * page
    hi = min(-(-end // page) * page, len(mm))
    if hi > lo:
        try:
            mm.madvise(advice, lo, hi - lo)
        except (OSError, ValueError):
            pass


_ST_DTYPES: dict[str, np.dtype[Any] | None] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": None,  # ml_dtypes.bfloat16, resolved when needed
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors package enforces too


def _bfloat16() -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError as e:
        raise ImportError(
            "reading bfloat16 tensors needs the 'ml_dtypes' package: "
            "pip install 'qfast-quant[models]'"
        ) from e
    return np.dtype(ml_dtypes.bfloat16)


class SafetensorsFile:
    """One ``.safetensors`` file: its header parsed and checked against the file size at
    open, its tensors read through a read-only memory map on demand.

    Attributes:
        path: the file.
        entries: name -> (dtype name as safetensors writes it, shape, start, end), the byte
            range relative to the data section.
        metadata: the ``__metadata__`` str -> str map (empty if none).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(2, "no such safetensors file", str(self.path))
        if self.path.is_dir():
            raise IsADirectoryError(21, "is a folder, not a .safetensors file", str(self.path))
        self._map: mmap.mmap | None = None
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise self._corrupt(f"only {len(head)} bytes, less than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > self.size - 8:
                raise self._corrupt(
                    f"the header claims {n:,} bytes, but the file holds {self.size - 8:,} after "
                    "the length (truncated, or not safetensors)"
                )
            if n > _MAX_HEADER:
                raise self._corrupt(f"a {n:,}-byte header (the format allows {_MAX_HEADER:,})")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise self._corrupt(f"the header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise self._corrupt(f"the header is JSON {type(header).__name__}, not an object")
        self.data_start = 8 + n
        data_size = self.size - self.data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise self._corrupt("__metadata__ is not a str -> str map")
        self.metadata: dict[str, str] = meta
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            self.entries[name] = self._entry(name, info, data_size)
        spans = sorted((s, e, k) for k, (_, _, s, e) in self.entries.items() if e > s)
        for (_, e0, a), (s1, _, b) in zip(spans, spans[1:]):
            if s1 < e0:
                raise self._corrupt(f"tensors {a!r} and {b!r} overlap in the file")

    def _corrupt(self, what: str) -> ValueError:
        return ValueError(
            f"{self.path}: not a valid safetensors file: {what}. The file is corrupt or "
            "incomplete; download or write it again"
        )

    def _entry(self, name: str, info: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
        if not isinstance(info, dict):
            raise self._corrupt(f"tensor {name!r}: its header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_DTYPES:
            raise self._corrupt(
                f"tensor {name!r}: dtype {dtype!r} is not one qfast reads ({', '.join(_ST_DTYPES)})"
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise self._corrupt(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise self._corrupt(f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
        start, end = offsets
        if end > data_size:
            raise self._corrupt(
                f"tensor {name!r} ends at byte {end:,} of the data, which holds {data_size:,} "
                "(truncated)"
            )
        known = _ST_DTYPES[dtype]
        itemsize = 2 if known is None else known.itemsize
        if math.prod(shape) * itemsize != end - start:
            raise self._corrupt(
                f"tensor {name!r}: {dtype} {tuple(shape)} needs {math.prod(shape) * itemsize:,} "
                f"bytes, its data_offsets span {end - start:,}"
            )
        return dtype, tuple(shape), start, end

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype_name(self, name: str) -> str:
        """The NumPy name of a tensor's dtype (``"float16"``, ``"bfloat16"``, ...)."""
        d = self.entries[name][0]
        return "bfloat16" if d == "BF16" else str(_ST_DTYPES[d])

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored: a read-only array over the memory map (no copy)."""
        dtype_code, shape, start, end = self.entries[name]
        known = _ST_DTYPES[dtype_code]
        dtype = _bfloat16() if known is None else known
        if end == start:
            return np.zeros(shape, dtype)
        size = os.stat(self.path).st_size
        if size < self.data_start + end:
            raise QfastError(
                f"{self.path} shrank to {size:,} bytes since it was opened ({self.size:,} "
                f"then); tensor {name!r} lies up to byte {self.data_start + end:,}. Reading it "
                "through the memory map would crash the process: load the model again once "
                "the file is complete"
            )
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = (end - start) // dtype.itemsize
        arr = np.frombuffer(self._map, dtype=dtype, count=count, offset=self.data_start + start)
        return arr.reshape(shape)

    def evict(self, name: str) -> None:
        """Gives the pages of a tensor's bytes back to the OS (``madvise(MADV_DONTNEED)`` on
        the map; a read-only file map re-reads them if the tensor is used again), so a
        tensor read once stops counting in the process's RSS. A no-op where unsupported."""
        if self._map is None or name not in self.entries:
            return
        _, _, start, end = self.entries[name]
        evict_range(self._map, self.data_start + start, self.data_start + end)

    def float32(self, name: str) -> np.ndarray:
        """The tensor as float32: a view of the map for float32, a converted copy otherwise."""
        a = self.raw(name)
        return a if a.dtype == np.float32 else a.astype(np.float32)
